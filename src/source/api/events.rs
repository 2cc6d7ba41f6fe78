//! Warning Events (events.k8s.io/v1) where operators look: `InvalidConfig`
//! on the ConfigMap a node rejected, `SyncFailed` on the agent's own Pod.
//!
//! One Event per node per distinct problem: a repeat of the same config and
//! error (or the same sync error) bumps the Event's `series` instead of
//! writing another, and a persisting sync failure updates the series at most
//! every [`SERIES_INTERVAL`]. The agent loop only queues a report; a task
//! talks to the API, so a slow or failing API server never holds up rules.
//! (kube-runtime's `Recorder` keys events without the note, so a second,
//! different rejection would only bump the first one's count and keep its
//! stale message; hence this small publisher.)

use std::collections::HashMap;
use std::time::Duration;

use http::{Request, header};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::ObjectInfo;
use super::client::{self, Doing, Endpoint, Failure};
use crate::telemetry::Metrics;

/// `reportingController` of every Event we write.
pub const CONTROLLER: &str = "ip-masq-agent";
pub const INVALID_CONFIG: &str = "InvalidConfig";
pub const SYNC_FAILED: &str = "SyncFailed";
/// What can become of a report, as the `result` label of its metric.
pub const RESULTS: [&str; 3] = ["published", "failed", "dropped"];
/// The API server refuses notes longer than this (bytes).
const NOTE_LIMIT: usize = 1024;
/// A problem that keeps recurring updates its Event's series at most this
/// often (the kubelet's event correlator uses the same order of magnitude).
pub const SERIES_INTERVAL: Duration = Duration::from_secs(300);
/// Distinct problems remembered for deduplication; the oldest is forgotten.
const REMEMBERED: usize = 256;
/// Reports queued for the publisher; beyond this they are dropped (and
/// counted), never waited for.
const QUEUE: usize = 64;
/// One API request's budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A problem to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// This node rejected the ConfigMap's content.
    InvalidConfig {
        configmap: ObjectInfo,
        /// Identifies the rejected content (a digest of the bytes).
        content: String,
        error: String,
    },
    /// Rule syncs keep failing on this node.
    SyncFailed { error: String },
}

impl Report {
    fn reason(&self) -> &'static str {
        match self {
            Report::InvalidConfig { .. } => INVALID_CONFIG,
            Report::SyncFailed { .. } => SYNC_FAILED,
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Report::InvalidConfig { .. } => "LoadConfig",
            Report::SyncFailed { .. } => "SyncRules",
        }
    }

    fn note(&self) -> String {
        let text = match self {
            Report::InvalidConfig { error, .. } => {
                format!("{error}; this node keeps enforcing its last valid config")
            }
            Report::SyncFailed { error } => error.clone(),
        };
        truncate(text, NOTE_LIMIT)
    }
}

/// Cut `text` to at most `limit` bytes on a character boundary.
fn truncate(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit - '…'.len_utf8();
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// What makes two reports "the same problem".
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    reason: &'static str,
    regarding: (Option<String>, Option<String>, Option<String>),
    detail: String,
}

#[derive(Debug, Clone)]
struct Series {
    namespace: String,
    name: String,
    count: i32,
    last_sent: Instant,
    seq: u64,
}

/// What to do with a report.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Create,
    Bump {
        namespace: String,
        name: String,
        count: i32,
    },
    /// Counted; the series is updated later.
    Hold,
}

/// Deduplication state: pure, so its rules are unit-tested without an API.
#[derive(Debug, Default)]
struct Dedup {
    known: HashMap<Key, Series>,
    seq: u64,
}

impl Dedup {
    fn decide(&mut self, key: &Key, now: Instant, interval: Duration) -> Action {
        let Some(series) = self.known.get_mut(key) else {
            return Action::Create;
        };
        series.count = series.count.saturating_add(1);
        if now.duration_since(series.last_sent) < interval {
            return Action::Hold;
        }
        Action::Bump {
            namespace: series.namespace.clone(),
            name: series.name.clone(),
            count: series.count,
        }
    }

    fn created(&mut self, key: Key, namespace: String, name: String, now: Instant) {
        if self.known.len() >= REMEMBERED
            && let Some(oldest) = self
                .known
                .iter()
                .min_by_key(|(_, s)| s.seq)
                .map(|(k, _)| k.clone())
        {
            self.known.remove(&oldest);
        }
        self.seq += 1;
        self.known.insert(
            key,
            Series {
                namespace,
                name,
                count: 1,
                last_sent: now,
                seq: self.seq,
            },
        );
    }

    fn bumped(&mut self, key: &Key, now: Instant) {
        if let Some(series) = self.known.get_mut(key) {
            series.last_sent = now;
        }
    }

    fn forget(&mut self, key: &Key) {
        self.known.remove(key);
    }
}

/// Where the agent loop drops reports. Cloning is cheap.
#[derive(Clone)]
pub struct EventSink {
    tx: mpsc::Sender<Report>,
    metrics: std::sync::Arc<Metrics>,
}

impl EventSink {
    /// Start the publisher. `instance` is the node name (`reportingInstance`);
    /// `pod` the agent's own Pod, `None` when the downward API does not say
    /// (then `SyncFailed` is only logged).
    pub fn spawn(
        endpoint: Endpoint,
        instance: String,
        pod: Option<ObjectReference>,
        metrics: std::sync::Arc<Metrics>,
    ) -> EventSink {
        let (tx, rx) = mpsc::channel(QUEUE);
        let publisher = Publisher {
            endpoint,
            instance,
            pod,
            metrics: metrics.clone(),
            dedup: Dedup::default(),
        };
        tokio::spawn(publisher.run(rx));
        EventSink { tx, metrics }
    }

    /// A sink whose reports land in the returned receiver (tests of the
    /// loop above the publisher).
    #[cfg(test)]
    pub fn capture(metrics: std::sync::Arc<Metrics>) -> (EventSink, mpsc::Receiver<Report>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (EventSink { tx, metrics }, rx)
    }

    /// Queue a report; never waits.
    pub fn report(&self, report: Report) {
        let reason = report.reason();
        if let Err(err) = self.tx.try_send(report) {
            debug!(reason, "event queue full or closed, dropping: {err}");
            self.metrics.event(reason, "dropped");
        }
    }
}

struct Publisher {
    endpoint: Endpoint,
    instance: String,
    pod: Option<ObjectReference>,
    metrics: std::sync::Arc<Metrics>,
    dedup: Dedup,
}

impl Publisher {
    async fn run(mut self, mut rx: mpsc::Receiver<Report>) {
        while let Some(report) = rx.recv().await {
            let reason = report.reason();
            let result = self.publish(&report).await;
            match result {
                Ok(Some(what)) => {
                    debug!(reason, "event {what}");
                    self.metrics.event(reason, "published");
                }
                Ok(None) => {}
                Err(err) => {
                    warn!(reason, "publishing the event failed: {err}");
                    self.metrics.event(reason, "failed");
                }
            }
        }
    }

    fn regarding(&self, report: &Report) -> Option<ObjectReference> {
        match report {
            Report::InvalidConfig { configmap, .. } => Some(configmap.reference()),
            Report::SyncFailed { .. } => self.pod.clone(),
        }
    }

    /// Returns what was written (`None`: nothing, held or no Pod to name).
    async fn publish(&mut self, report: &Report) -> Result<Option<&'static str>, String> {
        let Some(regarding) = self.regarding(report) else {
            return Ok(None);
        };
        let (detail, interval) = match report {
            // Same content and same error: one Event, every repeat counted.
            Report::InvalidConfig { content, error, .. } => {
                (format!("{content}\n{error}"), Duration::ZERO)
            }
            Report::SyncFailed { error } => (error.clone(), SERIES_INTERVAL),
        };
        let key = Key {
            reason: report.reason(),
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
            ),
            detail,
        };
        let now = Instant::now();
        match self.dedup.decide(&key, now, interval) {
            Action::Hold => Ok(None),
            Action::Create => {
                let (namespace, name) = self.create(report, &regarding).await?;
                self.dedup.created(key, namespace, name, now);
                Ok(Some("created"))
            }
            Action::Bump {
                namespace,
                name,
                count,
            } => match self.bump(&namespace, &name, count).await {
                Ok(()) => {
                    self.dedup.bumped(&key, now);
                    Ok(Some("series updated"))
                }
                // Expired (events live an hour by default): start afresh.
                Err(Failure::Status { code: 404, .. }) => {
                    self.dedup.forget(&key);
                    let (namespace, name) = self.create(report, &regarding).await?;
                    self.dedup.created(key, namespace, name, now);
                    Ok(Some("created"))
                }
                Err(failure) => {
                    Err(failure.describe(&self.endpoint.server, Doing::Event("patch", &namespace)))
                }
            },
        }
    }

    async fn create(
        &self,
        report: &Report,
        regarding: &ObjectReference,
    ) -> Result<(String, String), String> {
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(CONTROLLER),
            now.as_nanosecond()
        );
        let event = K8sEvent {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some(report.action().into()),
            reason: Some(report.reason().into()),
            note: Some(report.note()),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some("Warning".into()),
            ..Default::default()
        };
        let body = serde_json::to_vec(&event).map_err(|e| format!("encoding the event: {e}"))?;
        let request = Request::post(format!(
            "/apis/events.k8s.io/v1/namespaces/{namespace}/events"
        ))
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .map_err(|e| format!("building the event request: {e}"))?;
        client::write(&self.endpoint, request, REQUEST_TIMEOUT)
            .await
            .map_err(|failure| {
                failure.describe(&self.endpoint.server, Doing::Event("create", &namespace))
            })?;
        Ok((namespace, name))
    }

    async fn bump(&self, namespace: &str, name: &str, count: i32) -> Result<(), Failure> {
        let patch = serde_json::json!({
            "series": {
                "count": count,
                "lastObservedTime": MicroTime(Timestamp::now()),
            }
        });
        let request = Request::patch(format!(
            "/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}"
        ))
        .header(header::CONTENT_TYPE, "application/merge-patch+json")
        .body(patch.to_string().into_bytes())
        .map_err(|e| Failure::BadResponse(format!("no request ({e})")))?;
        client::write(&self.endpoint, request, REQUEST_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(detail: &str) -> Key {
        Key {
            reason: INVALID_CONFIG,
            regarding: (Some("kube-system".into()), Some("cm".into()), None),
            detail: detail.into(),
        }
    }

    #[test]
    fn the_same_problem_is_one_event_with_a_growing_series() {
        let mut dedup = Dedup::default();
        let t0 = Instant::now();
        assert_eq!(dedup.decide(&key("a"), t0, Duration::ZERO), Action::Create);
        dedup.created(key("a"), "kube-system".into(), "cm.1".into(), t0);
        assert_eq!(
            dedup.decide(&key("a"), t0, Duration::ZERO),
            Action::Bump {
                namespace: "kube-system".into(),
                name: "cm.1".into(),
                count: 2
            }
        );
        dedup.bumped(&key("a"), t0);
        // A different problem is a different Event.
        assert_eq!(dedup.decide(&key("b"), t0, Duration::ZERO), Action::Create);
    }

    #[test]
    fn a_persisting_problem_updates_its_series_at_most_once_per_interval() {
        let mut dedup = Dedup::default();
        let t0 = Instant::now();
        let interval = Duration::from_secs(300);
        dedup.created(key("x"), "ns".into(), "e".into(), t0);
        for _ in 0..5 {
            assert_eq!(
                dedup.decide(&key("x"), t0 + Duration::from_secs(10), interval),
                Action::Hold
            );
        }
        // Every held occurrence is counted in the next update.
        assert_eq!(
            dedup.decide(&key("x"), t0 + interval, interval),
            Action::Bump {
                namespace: "ns".into(),
                name: "e".into(),
                count: 7
            }
        );
    }

    #[test]
    fn memory_is_bounded() {
        let mut dedup = Dedup::default();
        let t0 = Instant::now();
        for i in 0..(REMEMBERED + 10) {
            dedup.created(key(&i.to_string()), "ns".into(), format!("e{i}"), t0);
        }
        assert_eq!(dedup.known.len(), REMEMBERED);
        // The oldest went first.
        assert_eq!(dedup.decide(&key("0"), t0, Duration::ZERO), Action::Create);
        assert!(matches!(
            dedup.decide(&key(&(REMEMBERED + 9).to_string()), t0, Duration::ZERO),
            Action::Bump { .. }
        ));
    }

    #[test]
    fn notes_fit_the_api_limit_on_a_character_boundary() {
        let long = "é".repeat(2000);
        let note = Report::SyncFailed { error: long }.note();
        assert!(note.len() <= NOTE_LIMIT, "{}", note.len());
        assert!(note.ends_with('…'));
        let short = Report::SyncFailed {
            error: "iptables-restore: exit 4".into(),
        }
        .note();
        assert_eq!(short, "iptables-restore: exit 4");
    }
}
