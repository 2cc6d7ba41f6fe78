//! The list/watch loop of the one ConfigMap, owned here rather than left to
//! kube-runtime's watcher so that every failure is bounded, counted and said
//! once.
//!
//! The loop: list (field selector on the name), publish, then watch from the
//! list's resourceVersion until the watch ends. A watch that ends after a
//! while is resumed from the last resourceVersion; a 410 relists; any
//! failure waits out the backoff (0.8 s doubling to 30 s, jittered) and
//! relists.
//!
//! What must stay true:
//! - Only an object named exactly `NAMESPACE/NAME` is ever published;
//!   anything else the server sends is ignored, and said once.
//! - Connected means a list completed: the first one at startup, and after a
//!   failure, a list plus a watch that stayed up for [`RECOVERED_AFTER`] (or
//!   delivered our object). A failing cycle never flaps to connected.
//! - One log line per state change (a failure kind differing from the last
//!   one, or recovery), never per retry; every failure is counted.
//! - The backoff resets only after a watch stayed up for [`HEALTHY_AFTER`].
//! - Every request has a deadline; bodies and lines are capped
//!   ([`BODY_LIMIT`]).

use std::time::Duration;

use http::Request;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::{ObjectList, WatchEvent};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backoff::{Backoff, random_unit};
use super::client::{self, BODY_LIMIT, Doing, Endpoint, Failure, escape, excerpt};
use super::names::{ConfigMapKey, ObjectName};
use super::{Snapshot, snapshot_of};
use crate::telemetry::{SourceState, Telemetry, unix_now};

/// A list of one object: its whole answer is due within this.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(20);
/// A watch's response head is due within this.
const WATCH_HEAD_TIMEOUT: Duration = Duration::from_secs(20);
/// The server ends a watch after `timeoutSeconds` from this range (spread,
/// so a cluster's nodes do not all re-watch together).
const WATCH_SECONDS: (u64, u64) = (240, 300);
/// The client gives up on a watch this long after the server should have
/// ended it.
const WATCH_GRACE: Duration = Duration::from_secs(30);
/// A watch that ends sooner than this without an event was closed "at once".
const MIN_WATCH: Duration = Duration::from_secs(10);
/// After a failure: a watch up this long (with a completed list before it)
/// means recovered.
pub const RECOVERED_AFTER: Duration = Duration::from_secs(5);
/// A watch up this long resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// One completed list.
#[derive(Debug)]
pub struct Listing {
    /// The object named as asked, if it exists.
    pub object: Option<ConfigMap>,
    pub resource_version: String,
    /// Other objects the server listed (it ignored the field selector).
    pub ignored: Vec<String>,
}

impl Listing {
    pub fn snapshot(&self, key: &ConfigMapKey) -> Snapshot {
        match &self.object {
            Some(object) => snapshot_of(object, key),
            None => Snapshot {
                bytes: None,
                object: None,
            },
        }
    }
}

fn collection(configmap: &ObjectName) -> String {
    format!(
        "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}",
        configmap.namespace(),
        configmap.name()
    )
}

/// Whether `object` is the one asked for (a server may send others).
fn is_ours(object: &ConfigMap, configmap: &ObjectName) -> bool {
    object.metadata.name.as_deref() == Some(configmap.name())
        && object.metadata.namespace.as_deref() == Some(configmap.namespace())
}

fn name_of(object: &ConfigMap) -> String {
    escape(&format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or(""),
        object.metadata.name.as_deref().unwrap_or("")
    ))
}

/// List the ConfigMap once. `cached`: served from the API server's watch
/// cache (`resourceVersion=0`), which is what a relist of every node of a
/// cluster should cost; otherwise a consistent read.
pub async fn list(
    endpoint: &Endpoint,
    configmap: &ObjectName,
    cached: bool,
    budget: Duration,
) -> Result<Listing, Failure> {
    let mut uri = collection(configmap);
    if cached {
        uri.push_str("&resourceVersion=0");
    }
    let request = Request::get(uri)
        .body(Vec::new())
        .map_err(|e| Failure::BadResponse(format!("no request ({e})")))?;
    let started = Instant::now();
    let deadline = started + budget;
    let response = client::send(endpoint, request, deadline).await?;
    let (body, complete) = client::read_body(response.into_body(), deadline, started).await?;
    if !complete {
        return Err(Failure::TooLarge);
    }
    let list: ObjectList<ConfigMap> = serde_json::from_slice(&body).map_err(|e| {
        Failure::BadResponse(format!(
            "a list answer that is not a ConfigMapList ({}), beginning {}",
            escape(&e.to_string()),
            excerpt(&body)
        ))
    })?;
    let resource_version = list
        .metadata
        .resource_version
        .clone()
        .filter(|rv| !rv.is_empty())
        .ok_or_else(|| Failure::BadResponse("a ConfigMapList without a resourceVersion".into()))?;
    let mut object = None;
    let mut ignored = Vec::new();
    for item in list.items {
        if is_ours(&item, configmap) {
            object = Some(item);
        } else {
            ignored.push(name_of(&item));
        }
    }
    Ok(Listing {
        object,
        resource_version,
        ignored,
    })
}

/// Which request failed.
#[derive(Clone, Copy)]
enum Step {
    List,
    Watch,
}

/// How a watch ended.
enum WatchEnd {
    /// The server (or our deadline) ended it; resume from the last rv.
    Ended {
        events: bool,
    },
    /// 410: the resourceVersion is gone; relist.
    Expired,
    Failed(Failure),
}

/// The watch task's state, and what it tells metrics, health and the log.
pub struct Watcher {
    pub endpoint: Endpoint,
    pub configmap: ObjectName,
    pub key: ConfigMapKey,
    pub telemetry: Telemetry,
    pub tx: watch::Sender<Option<Snapshot>>,
    state: SourceState,
    /// The kind of the failure last logged, while failing.
    failing: Option<&'static str>,
    /// Other objects already said to be ignored (each said once).
    ignored_said: bool,
    backoff: Backoff,
}

impl Watcher {
    pub fn new(
        endpoint: Endpoint,
        configmap: ObjectName,
        key: ConfigMapKey,
        telemetry: Telemetry,
        tx: watch::Sender<Option<Snapshot>>,
    ) -> Self {
        Watcher {
            endpoint,
            configmap,
            key,
            telemetry,
            tx,
            state: SourceState::Connecting,
            failing: None,
            ignored_said: false,
            backoff: Backoff::new(),
        }
    }

    /// Runs until the receiver is gone.
    pub async fn run(mut self) {
        let object = self.configmap.to_string();
        self.telemetry.health.source_state(&object, &self.state);
        self.telemetry.metrics.source_connected(false);
        while !self.tx.is_closed() {
            let listing = match list(&self.endpoint, &self.configmap, true, LIST_TIMEOUT).await {
                Ok(listing) => listing,
                Err(failure) => {
                    self.failed(&failure, Step::List);
                    self.pause().await;
                    continue;
                }
            };
            self.say_ignored(&listing.ignored);
            self.publish(listing.snapshot(&self.key));
            if self.state == SourceState::Connecting {
                self.connected();
            }
            let mut rv = listing.resource_version;
            loop {
                let started = Instant::now();
                let end = self.watch(&mut rv).await;
                let lasted = started.elapsed();
                if lasted >= HEALTHY_AFTER {
                    self.backoff.reset();
                }
                match end {
                    // A long watch ending, even by a dropped connection (an
                    // API server restarting), is resumed; if the server is
                    // gone, that attempt says so.
                    WatchEnd::Ended { .. } | WatchEnd::Failed(Failure::Broken(_))
                        if lasted >= MIN_WATCH =>
                    {
                        continue;
                    }
                    WatchEnd::Ended { events: true } => {
                        self.pause().await;
                        continue;
                    }
                    WatchEnd::Ended { events: false } => {
                        self.failed(&Failure::WatchClosed, Step::Watch);
                        self.pause().await;
                    }
                    WatchEnd::Expired => {
                        debug!(configmap = %self.configmap, "resourceVersion expired (410); listing again");
                        if lasted < MIN_WATCH {
                            self.pause().await;
                        }
                    }
                    WatchEnd::Failed(failure) => {
                        self.failed(&failure, Step::Watch);
                        self.pause().await;
                    }
                }
                break;
            }
        }
    }

    async fn pause(&mut self) {
        tokio::time::sleep(self.backoff.next_delay(random_unit())).await;
    }

    /// One watch from `rv`, which follows the events.
    async fn watch(&mut self, rv: &mut String) -> WatchEnd {
        let (low, high) = WATCH_SECONDS;
        let seconds = low + ((high - low) as f64 * random_unit()) as u64;
        let uri = format!(
            "{}&watch=true&allowWatchBookmarks=true&timeoutSeconds={seconds}&resourceVersion={rv}",
            collection(&self.configmap)
        );
        let request = match Request::get(uri).body(Vec::new()) {
            Ok(request) => request,
            Err(e) => return WatchEnd::Failed(Failure::BadResponse(format!("no request ({e})"))),
        };
        let started = Instant::now();
        let response =
            match client::send(&self.endpoint, request, started + WATCH_HEAD_TIMEOUT).await {
                Ok(response) => response,
                Err(failure) => return WatchEnd::Failed(failure),
            };
        let deadline = started + Duration::from_secs(seconds) + WATCH_GRACE;
        let mut recover_at =
            (self.state != SourceState::Connected).then(|| started + RECOVERED_AFTER);
        let mut body = response.into_body();
        let mut buffer: Vec<u8> = Vec::new();
        // Bytes of `buffer` known to hold no newline.
        let mut scanned = 0;
        let mut events = false;
        // The watch stayed up long enough; recovered at the next good line
        // (not in the middle of a line that may still prove bad).
        let mut recovery_due = false;
        loop {
            let wake = recover_at.map_or(deadline, |at| at.min(deadline));
            let chunk = match client::next_chunk(&mut body, wake).await {
                Ok(chunk) => chunk,
                Err(_) if Instant::now() < deadline => {
                    recover_at = None;
                    if buffer.is_empty() {
                        self.connected();
                    } else {
                        recovery_due = true;
                    }
                    continue;
                }
                Err(_) => return WatchEnd::Ended { events },
            };
            let chunk = match chunk {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return WatchEnd::Ended { events },
                Err(failure) => return WatchEnd::Failed(failure),
            };
            buffer.extend_from_slice(&chunk);
            while let Some(at) = buffer[scanned..].iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buffer.drain(..=scanned + at).collect();
                scanned = 0;
                let line = line.trim_ascii();
                if line.is_empty() {
                    continue;
                }
                let ours = match self.event(line, rv) {
                    Ok(ours) => ours,
                    Err(end) => return end,
                };
                events |= ours;
                if (ours && recover_at.is_some()) || recovery_due {
                    recover_at = None;
                    recovery_due = false;
                    self.connected();
                }
            }
            scanned = buffer.len();
            if buffer.len() > BODY_LIMIT {
                return WatchEnd::Failed(Failure::TooLarge);
            }
        }
    }

    /// Apply one watch line; `Ok(true)` when it was about our object.
    fn event(&mut self, line: &[u8], rv: &mut String) -> Result<bool, WatchEnd> {
        let event: WatchEvent<ConfigMap> = serde_json::from_slice(line).map_err(|e| {
            WatchEnd::Failed(Failure::BadResponse(format!(
                "a watch line that is not a watch event ({}), beginning {}",
                escape(&e.to_string()),
                excerpt(line)
            )))
        })?;
        let (object, deleted) = match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => (object, false),
            WatchEvent::Deleted(object) => (object, true),
            WatchEvent::Bookmark(bookmark) => {
                *rv = bookmark.metadata.resource_version;
                return Ok(false);
            }
            WatchEvent::Error(status) if status.code == 410 => return Err(WatchEnd::Expired),
            WatchEvent::Error(status) => {
                return Err(WatchEnd::Failed(Failure::Status {
                    code: status.code,
                    reason: escape(&status.reason),
                    message: escape(&status.message),
                }));
            }
        };
        if let Some(version) = object.metadata.resource_version.clone() {
            *rv = version;
        }
        if !is_ours(&object, &self.configmap) {
            self.say_ignored(&[name_of(&object)]);
            return Ok(false);
        }
        self.publish(if deleted {
            Snapshot {
                bytes: None,
                object: None,
            }
        } else {
            snapshot_of(&object, &self.key)
        });
        Ok(true)
    }

    fn say_ignored(&mut self, names: &[String]) {
        if names.is_empty() || self.ignored_said {
            return;
        }
        self.ignored_said = true;
        warn!(
            configmap = %self.configmap,
            "the API server sent configmap {} though only {} was asked for; ignoring every object of another name",
            names.join(", "),
            self.configmap
        );
    }

    fn publish(&mut self, snapshot: Snapshot) {
        self.telemetry.metrics.source_event(unix_now());
        self.telemetry.health.source_event();
        // A relist that changes nothing must not wake the loop.
        self.tx.send_if_modified(|current| {
            if current.as_ref() == Some(&snapshot) {
                false
            } else {
                *current = Some(snapshot);
                true
            }
        });
    }

    fn connected(&mut self) {
        if self.state == SourceState::Connected {
            return;
        }
        if matches!(self.state, SourceState::Failing(_)) {
            info!(configmap = %self.configmap, "Kubernetes API watch recovered");
        }
        self.state = SourceState::Connected;
        self.failing = None;
        self.telemetry.metrics.source_connected(true);
        self.telemetry
            .health
            .source_state(&self.configmap.to_string(), &self.state);
    }

    fn failed(&mut self, failure: &Failure, step: Step) {
        let kind = failure.kind();
        self.telemetry.metrics.source_error(kind);
        if self.failing == Some(kind) {
            return;
        }
        let doing = match step {
            Step::List => Doing::Listing(&self.configmap),
            Step::Watch => Doing::Watching(&self.configmap),
        };
        let text = failure.describe(&self.endpoint.server, doing);
        warn!(configmap = %self.configmap, kind, "Kubernetes API watch failed: {text}; keeping the last good config and retrying with backoff");
        self.failing = Some(kind);
        self.state = SourceState::Failing(text);
        self.telemetry.metrics.source_connected(false);
        self.telemetry
            .health
            .source_state(&self.configmap.to_string(), &self.state);
    }
}
