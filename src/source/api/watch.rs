//! The list/watch loop of one ConfigMap (`--configmap`) or of the ConfigMaps
//! a label selector picks (`--configmap-selector`: one list and one watch
//! for all of them, not one per object), owned here rather than left to
//! kube-runtime's watcher so that every failure is bounded, counted and said
//! once.
//!
//! The loop: list (field selector on the name, or the label selector),
//! publish, then watch from the list's resourceVersion until the watch
//! ends. A watch that ends after a while is resumed from the last
//! resourceVersion; a 410 relists; any failure waits out the backoff (0.8 s
//! doubling to 30 s, jittered) and relists. A list replaces the selection
//! whole, so what a broken watch missed is caught up.
//!
//! What must stay true:
//! - Only an object named exactly `NAMESPACE/NAME` is ever published; for a
//!   selector, only objects of its namespace whose labels match it (checked
//!   here on every item: a server could send anything). An object of the
//!   namespace that stops matching leaves the selection; anything else the
//!   server sends is ignored, and said once.
//! - A selection holds at most [`MAX_SELECTED`] ConfigMaps; a server that
//!   sends more is a failure (the last published selection stays).
//! - Connected means a list completed: the first one at startup, and after a
//!   failure, a list plus a watch that stayed up for [`RECOVERED_AFTER`] (or
//!   delivered our object). A failing cycle never flaps to connected.
//! - One log line per state change (a failure kind differing from the last
//!   one, or recovery), never per retry; every failure is counted.
//! - The backoff resets only after a watch stayed up for [`HEALTHY_AFTER`].
//! - Every request has a deadline; bodies and lines are capped
//!   ([`BODY_LIMIT`]).

use std::collections::BTreeMap;
use std::fmt;
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
use super::selector::ConfigMapSelector;
use super::{Snapshot, snapshot_of};
use crate::telemetry::{SourceState, Telemetry};

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
/// ConfigMaps one selector may pick: far more than a cluster's owners of
/// the list, and a bound on what a selection holds in memory.
pub const MAX_SELECTED: usize = 100;

/// What a list and watch are about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// `--configmap`: one object, by name.
    Object(ObjectName),
    /// `--configmap-selector`: every object of a namespace that matches.
    Selector(ConfigMapSelector),
}

/// Where an object the server sent stands with a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Selected,
    /// Of the selector's namespace, but its labels do not match.
    Unselected,
    /// Not asked for at all (another name or namespace).
    Foreign,
}

impl Query {
    pub fn namespace(&self) -> &str {
        match self {
            Query::Object(name) => name.namespace(),
            Query::Selector(selector) => selector.namespace(),
        }
    }

    /// The collection URI with this query's selector, canonical and
    /// percent-encoded.
    fn collection(&self) -> String {
        match self {
            Query::Object(configmap) => format!(
                "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}",
                configmap.namespace(),
                configmap.name()
            ),
            Query::Selector(selector) => format!(
                "/api/v1/namespaces/{}/configmaps?labelSelector={}",
                selector.namespace(),
                selector.selector().query_value()
            ),
        }
    }

    fn standing(&self, object: &ConfigMap) -> Standing {
        let meta = &object.metadata;
        if meta.namespace.as_deref() != Some(self.namespace())
            || meta.name.as_deref().is_none_or(str::is_empty)
        {
            return Standing::Foreign;
        }
        match self {
            Query::Object(configmap) if meta.name.as_deref() == Some(configmap.name()) => {
                Standing::Selected
            }
            Query::Object(_) => Standing::Foreign,
            Query::Selector(selector) => {
                let labels = meta.labels.clone().unwrap_or_default();
                if selector.selector().matches(&labels) {
                    Standing::Selected
                } else {
                    Standing::Unselected
                }
            }
        }
    }

    /// How readiness names this source: "configmap NS/NAME",
    /// "configmaps NS/SELECTOR" (the log lines' `configmap` field, with what
    /// it is).
    pub fn source_name(&self) -> String {
        match self {
            Query::Object(_) => format!("configmap {self}"),
            Query::Selector(_) => format!("configmaps {self}"),
        }
    }

    /// "configmap NS/NAME", "configmaps of NS selected by SELECTOR".
    pub fn describe(&self) -> String {
        match self {
            Query::Object(configmap) => format!("configmap {configmap}"),
            Query::Selector(selector) => format!(
                "configmaps of namespace {} selected by {}",
                selector.namespace(),
                selector.selector()
            ),
        }
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Query::Object(configmap) => write!(f, "{configmap}"),
            Query::Selector(selector) => write!(f, "{selector}"),
        }
    }
}

/// The selected ConfigMaps' snapshots, by object name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection(pub BTreeMap<String, Snapshot>);

/// What the watch task publishes, made from what is selected now.
pub trait Publish: Clone + PartialEq + Send + Sync + 'static {
    fn from_selected(selected: &BTreeMap<String, Snapshot>) -> Self;
}

/// One ConfigMap: its snapshot, or "no object" (the defaults).
impl Publish for Snapshot {
    fn from_selected(selected: &BTreeMap<String, Snapshot>) -> Self {
        selected.values().next().cloned().unwrap_or(Snapshot {
            bytes: None,
            object: None,
        })
    }
}

impl Publish for Selection {
    fn from_selected(selected: &BTreeMap<String, Snapshot>) -> Self {
        Selection(selected.clone())
    }
}

/// One completed list.
#[derive(Debug)]
pub struct Listing {
    /// The objects selected, by name.
    pub selected: BTreeMap<String, ConfigMap>,
    pub resource_version: String,
    /// Other objects the server listed (it ignored the selector).
    pub ignored: Vec<String>,
}

impl Listing {
    /// The selected objects' snapshots of `key`.
    pub fn snapshots(&self, key: &ConfigMapKey) -> BTreeMap<String, Snapshot> {
        self.selected
            .iter()
            .map(|(name, object)| (name.clone(), snapshot_of(object, key)))
            .collect()
    }

    /// The one object of a `--configmap` list, or "no object".
    pub fn snapshot(&self, key: &ConfigMapKey) -> Snapshot {
        Snapshot::from_selected(&self.snapshots(key))
    }
}

fn name_of(object: &ConfigMap) -> String {
    escape(&format!(
        "{}/{}",
        object.metadata.namespace.as_deref().unwrap_or(""),
        object.metadata.name.as_deref().unwrap_or("")
    ))
}

/// List the query's ConfigMaps once. `cached`: served from the API server's
/// watch cache (`resourceVersion=0`), which is what a relist of every node
/// of a cluster should cost; otherwise a consistent read.
pub async fn list(
    endpoint: &Endpoint,
    query: &Query,
    cached: bool,
    budget: Duration,
) -> Result<Listing, Failure> {
    let mut uri = query.collection();
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
    let mut selected = BTreeMap::new();
    let mut ignored = Vec::new();
    for item in list.items {
        match (query.standing(&item), item.metadata.name.clone()) {
            (Standing::Selected, Some(name)) => {
                selected.insert(name, item);
            }
            _ => ignored.push(name_of(&item)),
        }
    }
    if selected.len() > MAX_SELECTED {
        return Err(Failure::TooMany(MAX_SELECTED));
    }
    Ok(Listing {
        selected,
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
pub struct Watcher<P: Publish> {
    pub endpoint: Endpoint,
    pub query: Query,
    pub key: ConfigMapKey,
    pub telemetry: Telemetry,
    pub tx: watch::Sender<Option<P>>,
    /// The source's name in readiness ([`Query::source_name`]).
    name: String,
    /// What is selected now, by object name (for `--configmap`, at most the
    /// one object).
    selected: BTreeMap<String, Snapshot>,
    state: SourceState,
    /// The kind of the failure last logged, while failing.
    failing: Option<&'static str>,
    /// Other objects already said to be ignored (each said once).
    ignored_said: bool,
    backoff: Backoff,
}

impl<P: Publish> Watcher<P> {
    pub fn new(
        endpoint: Endpoint,
        query: Query,
        key: ConfigMapKey,
        telemetry: Telemetry,
        tx: watch::Sender<Option<P>>,
    ) -> Self {
        Watcher {
            endpoint,
            name: query.source_name(),
            query,
            key,
            telemetry,
            tx,
            selected: BTreeMap::new(),
            state: SourceState::Connecting,
            failing: None,
            ignored_said: false,
            backoff: Backoff::new(),
        }
    }

    /// Runs until the receiver is gone.
    pub async fn run(mut self) {
        self.telemetry.source_state(&self.name, &self.state);
        while !self.tx.is_closed() {
            let listing = match list(&self.endpoint, &self.query, true, LIST_TIMEOUT).await {
                Ok(listing) => listing,
                Err(failure) => {
                    self.failed(&failure, Step::List);
                    self.pause().await;
                    continue;
                }
            };
            self.say_ignored(&listing.ignored);
            self.selected = listing.snapshots(&self.key);
            self.publish();
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
                        debug!(configmap = %self.query, "resourceVersion expired (410); listing again");
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
            self.query.collection()
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
        let standing = self.query.standing(&object);
        let name = object.metadata.name.clone().unwrap_or_default();
        match (standing, deleted) {
            (Standing::Foreign, _) => {
                self.say_ignored(&[name_of(&object)]);
                return Ok(false);
            }
            (Standing::Selected, false) => {
                if !self.selected.contains_key(&name) && self.selected.len() >= MAX_SELECTED {
                    return Err(WatchEnd::Failed(Failure::TooMany(MAX_SELECTED)));
                }
                self.selected.insert(name, snapshot_of(&object, &self.key));
            }
            // The server sends DELETED for an object that stops matching;
            // one that says otherwise is not believed about the labels.
            (Standing::Unselected, false) if !self.selected.contains_key(&name) => {
                self.say_ignored(&[name_of(&object)]);
                return Ok(false);
            }
            (Standing::Selected | Standing::Unselected, _) => {
                self.selected.remove(&name);
            }
        }
        self.publish();
        Ok(true)
    }

    fn say_ignored(&mut self, names: &[String]) {
        if names.is_empty() || self.ignored_said {
            return;
        }
        self.ignored_said = true;
        let what = match &self.query {
            Query::Object(_) => "every object of another name",
            Query::Selector(_) => "every object of another namespace or whose labels do not match",
        };
        warn!(
            configmap = %self.query,
            "the API server sent configmap {} though only {} was asked for; ignoring {what}",
            names.join(", "),
            self.query.describe()
        );
    }

    fn publish(&mut self) {
        let snapshot = P::from_selected(&self.selected);
        self.telemetry.source_event(&self.name);
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
            info!(configmap = %self.query, "Kubernetes API watch recovered");
        }
        self.state = SourceState::Connected;
        self.failing = None;
        self.telemetry.source_state(&self.name, &self.state);
    }

    fn failed(&mut self, failure: &Failure, step: Step) {
        let kind = failure.kind();
        self.telemetry.metrics.source_error(kind);
        if self.failing == Some(kind) {
            return;
        }
        let doing = match step {
            Step::List => Doing::Listing(&self.query),
            Step::Watch => Doing::Watching(&self.query),
        };
        let text = failure.describe(&self.endpoint.server, doing);
        warn!(configmap = %self.query, kind, "Kubernetes API watch failed: {text}; keeping the last good config and retrying with backoff");
        self.failing = Some(kind);
        self.state = SourceState::Failing(text);
        self.telemetry.source_state(&self.name, &self.state);
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn configmap(namespace: &str, name: &str, labels: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(namespace.into()),
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn collections_carry_the_canonical_selector_percent_encoded() {
        let object = Query::Object("kube-system/ip-masq-agent".parse().unwrap());
        assert_eq!(
            object.collection(),
            "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dip-masq-agent"
        );
        let selector = Query::Selector(
            "kube-system/ tier in (b,a) , example.com/part"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            selector.collection(),
            "/api/v1/namespaces/kube-system/configmaps?labelSelector=example.com%2Fpart%2Ctier%20in%20%28a%2Cb%29"
        );
        assert_eq!(
            selector.to_string(),
            "kube-system/example.com/part,tier in (a,b)"
        );
        assert_eq!(
            selector.describe(),
            "configmaps of namespace kube-system selected by example.com/part,tier in (a,b)"
        );
    }

    #[test]
    fn every_object_is_checked_against_the_query() {
        let selector = Query::Selector("kube-system/part".parse().unwrap());
        let cases = [
            (
                configmap("kube-system", "a", &[("part", "x")]),
                Standing::Selected,
            ),
            (
                configmap("kube-system", "a", &[("other", "x")]),
                Standing::Unselected,
            ),
            (
                configmap("default", "a", &[("part", "x")]),
                Standing::Foreign,
            ),
            (
                configmap("kube-system", "", &[("part", "x")]),
                Standing::Foreign,
            ),
        ];
        for (object, standing) in &cases {
            assert_eq!(
                selector.standing(object),
                *standing,
                "{:?}",
                object.metadata
            );
        }
        let mut unnamed = configmap("kube-system", "a", &[("part", "x")]);
        unnamed.metadata.name = None;
        assert_eq!(selector.standing(&unnamed), Standing::Foreign);
        let object = Query::Object("kube-system/a".parse().unwrap());
        assert_eq!(
            object.standing(&configmap("kube-system", "a", &[])),
            Standing::Selected
        );
        assert_eq!(
            object.standing(&configmap("kube-system", "b", &[])),
            Standing::Foreign
        );
        assert_eq!(
            object.standing(&configmap("default", "a", &[])),
            Standing::Foreign
        );
    }

    #[test]
    fn one_object_publishes_as_before_and_a_selection_publishes_all() {
        let key: ConfigMapKey = "config".parse().unwrap();
        let mut selected = BTreeMap::new();
        assert_eq!(
            Snapshot::from_selected(&selected),
            Snapshot {
                bytes: None,
                object: None
            }
        );
        assert_eq!(Selection::from_selected(&selected), Selection::default());
        let mut object = configmap("kube-system", "a", &[]);
        object.data = Some([("config".to_owned(), "cidrLimit: 1\n".to_owned())].into());
        selected.insert("a".to_owned(), snapshot_of(&object, &key));
        assert_eq!(
            Snapshot::from_selected(&selected).bytes.as_deref(),
            Some(&b"cidrLimit: 1\n"[..])
        );
        assert_eq!(Selection::from_selected(&selected).0.len(), 1);
    }
}
