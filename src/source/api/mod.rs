//! The Kubernetes API as a config source (`--configmap=NAMESPACE/NAME`, and
//! `--configmap-selector=NAMESPACE/LABELSELECTOR` for every ConfigMap a
//! label selector picks).
//!
//! A mounted ConfigMap reaches a node only when the kubelet refreshes the
//! volume; watching the object reaches every node as soon as the API server
//! sends the change. This module owns the client (`client`: bounded
//! requests, errors in words), the list/watch loop of that one object or of
//! one selector's objects (`watch`: field selector on its name or the label
//! selector, relist on 410, jittered backoff), and hands the agent loop only
//! what the file source would: the bytes of one key, or "absent", per
//! object. Decoding and validation stay in `config`, so both
//! sources accept and reject exactly the same text.
//!
//! [`ConfigMapSource`] is what the agent loop holds: the watch's latest
//! snapshot, the object last delivered (to name it in Events), and the Event
//! sink; [`SelectorSource`] the same for a selection, one part per object,
//! named as a `--configmap` part would be. The node's identity for Events
//! comes from the downward API.

mod backoff;
mod client;
pub mod events;
mod names;
pub mod selector;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use tracing::{error, info, warn};

use self::events::{EventSink, Report};
use self::selector::ConfigMapSelector;
use super::{Content, Part, Read};
pub use crate::telemetry::SourceState;
use crate::telemetry::Telemetry;

pub use client::{Endpoint, client};
pub use names::{ConfigMapKey, ObjectName};
pub use watch::{MAX_SELECTED, Query, Selection};

/// How a ConfigMap's key is named as a part in logs, metrics, `check` and
/// Events, whichever flag brought it: one object has one name, so a
/// ConfigMap given twice counts once.
pub fn part_name(namespace: &str, name: &str, key: &ConfigMapKey) -> String {
    format!("configmap {namespace}/{name} key {key}")
}

/// The ConfigMap to read through the API, and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSource {
    pub configmap: ObjectName,
    /// `None`: in-cluster credentials, else the default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

impl ApiSource {
    /// From `namespace/name` and a kubeconfig path, empty meaning none. The
    /// error is about the ConfigMap's name, the only part that can fail.
    pub fn parse(configmap: &str, kubeconfig: &str) -> Result<Self, String> {
        Ok(ApiSource {
            configmap: configmap.parse()?,
            kubeconfig: (!kubeconfig.is_empty()).then(|| PathBuf::from(kubeconfig)),
        })
    }
}

/// `--configmap-selector`: which ConfigMaps, and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSelector {
    pub selector: ConfigMapSelector,
    /// `None`: in-cluster credentials, else the default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

impl ApiSelector {
    /// From `namespace/selector` and a kubeconfig path, empty meaning none.
    pub fn parse(selector: &str, kubeconfig: &str) -> Result<Self, String> {
        Ok(ApiSelector {
            selector: selector.parse()?,
            kubeconfig: (!kubeconfig.is_empty()).then(|| PathBuf::from(kubeconfig)),
        })
    }
}

/// Tell telemetry every API source before any watch starts, so that
/// readiness and `config_source_connected` wait for all of them, not only
/// those connected so far.
pub fn announce(telemetry: &Telemetry, sources: &[ApiSource], selectors: &[ApiSelector]) {
    let objects = sources.iter().map(|s| Query::Object(s.configmap.clone()));
    let selections = selectors
        .iter()
        .map(|s| Query::Selector(s.selector.clone()));
    for query in objects.chain(selections) {
        telemetry.api_source(&query.source_name());
    }
}

/// Where a source's credentials come from (`--kubeconfig`, else in-cluster).
pub trait Credentials {
    fn kubeconfig(&self) -> Option<&std::path::Path>;
}

impl Credentials for ApiSource {
    fn kubeconfig(&self) -> Option<&std::path::Path> {
        self.kubeconfig.as_deref()
    }
}

impl Credentials for ApiSelector {
    fn kubeconfig(&self) -> Option<&std::path::Path> {
        self.kubeconfig.as_deref()
    }
}

/// One key of a ConfigMap, watched through the Kubernetes API. With it,
/// rejections and persistent sync failures are also reported as Events.
pub struct ConfigMapSource {
    configmap: ObjectName,
    key: ConfigMapKey,
    /// `None` until the first list completes.
    snapshots: tokio::sync::watch::Receiver<Option<Snapshot>>,
    events: Option<EventSink>,
    /// The ConfigMap as last delivered, to name it in an Event.
    object: Option<ObjectInfo>,
    /// The watch task ended (it never should).
    ended: bool,
}

impl ConfigMapSource {
    /// A source fed by `snapshots` (the watch task's, or a test's).
    pub fn new(
        configmap: ObjectName,
        key: ConfigMapKey,
        snapshots: tokio::sync::watch::Receiver<Option<Snapshot>>,
        events: Option<EventSink>,
    ) -> Self {
        ConfigMapSource {
            configmap,
            key,
            snapshots,
            events,
            object: None,
            ended: false,
        }
    }

    /// Connect: credentials, the watch, and the Event sink. Bad or missing
    /// credentials are an error (a deployment problem the pod should show).
    pub async fn connect(
        source: &ApiSource,
        key: &ConfigMapKey,
        telemetry: &Telemetry,
    ) -> Result<Self, String> {
        let (endpoint, events, node) =
            open(source, &Query::Object(source.configmap.clone()), telemetry).await?;
        info!(configmap = %source.configmap, key = %key, node = %node, "reading the config through the Kubernetes API; --config is not used");
        let snapshots = spawn_watch(endpoint, source, key, telemetry.clone());
        Ok(Self::new(
            source.configmap.clone(),
            key.clone(),
            snapshots,
            Some(events),
        ))
    }

    pub fn configmap(&self) -> &ObjectName {
        &self.configmap
    }

    pub fn key(&self) -> &ConfigMapKey {
        &self.key
    }

    /// Whether the first list has not completed yet.
    pub fn is_waiting(&self) -> bool {
        self.snapshots.borrow().is_none()
    }

    /// The latest snapshot; `NotYet` before the first list completed.
    pub fn read(&mut self) -> Read {
        let Some(snapshot) = self.snapshots.borrow_and_update().clone() else {
            return Read::NotYet;
        };
        self.object = snapshot.object;
        Read::Ready(match snapshot.bytes {
            Some(bytes) => Content::Bytes(bytes),
            None => Content::Absent,
        })
    }

    /// Resolves when the watch delivered something new. Cancel-safe.
    pub async fn changed(&mut self) {
        if !self.ended && self.snapshots.changed().await.is_ok() {
            return;
        }
        if !self.ended {
            // Keep enforcing the last config rather than spin.
            error!("the Kubernetes API source stopped; enforcing the last good config");
            self.ended = true;
        }
        std::future::pending().await
    }

    /// This node rejected the ConfigMap (once per distinct content and
    /// error; the sink counts repeats as a series).
    pub fn report_invalid(&self, content: String, error: &str) {
        report_invalid(self.events.as_ref(), self.object.as_ref(), content, error);
    }

    /// Rule syncs keep failing on this node.
    pub fn report_sync_failure(&self, error: String) {
        report_sync_failure(self.events.as_ref(), error);
    }
}

/// What every API source starts with: credentials, its metric series and
/// readiness line, and the Event sink; the node's name for its log line.
async fn open(
    source: &impl Credentials,
    query: &Query,
    telemetry: &Telemetry,
) -> Result<(Endpoint, EventSink, String), String> {
    let endpoint = client(source).await?;
    telemetry.metrics.api_source_started(
        &[events::INVALID_CONFIG, events::SYNC_FAILED],
        &events::RESULTS,
    );
    let (node, pod) = identity();
    telemetry.api_source(&query.source_name());
    let events = EventSink::spawn(
        endpoint.clone(),
        node.clone(),
        pod,
        telemetry.metrics.clone(),
    );
    Ok((endpoint, events, node))
}

/// This node's name, and the agent's Pod for `SyncFailed` Events, from the
/// downward API (`NODE_NAME`, `POD_NAMESPACE`, `POD_NAME`, `POD_UID`).
fn identity() -> (String, Option<ObjectReference>) {
    let node = std::env::var("NODE_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    let pod = match (std::env::var("POD_NAMESPACE"), std::env::var("POD_NAME")) {
        (Ok(namespace), Ok(name)) if !namespace.is_empty() && !name.is_empty() => {
            Some(ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                namespace: Some(namespace),
                name: Some(name),
                uid: std::env::var("POD_UID").ok().filter(|u| !u.is_empty()),
                ..Default::default()
            })
        }
        _ => {
            warn!(
                "POD_NAME and POD_NAMESPACE are not set (downward API); SyncFailed events are only logged"
            );
            None
        }
    };
    (node, pod)
}

/// The ConfigMap as last seen, enough to name it in an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
    pub resource_version: Option<String>,
}

impl ObjectInfo {
    /// The reference an Event's `regarding` carries; `kubectl describe`
    /// finds events by kind, namespace, name and uid.
    pub fn reference(&self) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("ConfigMap".into()),
            namespace: Some(self.namespace.clone()),
            name: Some(self.name.clone()),
            uid: self.uid.clone(),
            resource_version: self.resource_version.clone(),
            field_path: None,
        }
    }
}

/// What the API says the config is: the key's bytes (`None` when the object
/// or the key is absent, which means defaults, as a missing file does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub bytes: Option<Vec<u8>>,
    /// `None` when the object does not exist.
    pub object: Option<ObjectInfo>,
}

/// The config a ConfigMap carries under `key`: `data` first, then
/// `binaryData` (a mounted volume shows both as files).
pub fn snapshot_of(configmap: &ConfigMap, key: &ConfigMapKey) -> Snapshot {
    let key = key.as_str();
    let bytes = configmap
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|text| text.as_bytes().to_vec())
        .or_else(|| {
            configmap
                .binary_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|bytes| bytes.0.clone())
        });
    let meta = &configmap.metadata;
    Snapshot {
        bytes,
        object: Some(ObjectInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
        }),
    }
}

/// How long `sync`, `render` and `check` wait for the API server.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read the ConfigMap once (for `sync`, `render` and `check`): one list,
/// as the daemon's, so the same RBAC serves both.
pub async fn fetch(
    endpoint: Endpoint,
    source: &ApiSource,
    key: &ConfigMapKey,
) -> Result<Snapshot, String> {
    let query = Query::Object(source.configmap.clone());
    let listing = watch::list(&endpoint, &query, false, FETCH_TIMEOUT)
        .await
        .map_err(|failure| failure.describe(&endpoint.server, client::Doing::Listing(&query)))?;
    if !listing.ignored.is_empty() {
        warn!(
            "the API server listed configmap {} though only {} was asked for; ignored",
            listing.ignored.join(", "),
            source.configmap
        );
    }
    Ok(listing.snapshot(key))
}

/// Watch the ConfigMap and publish each new snapshot. The receiver holds
/// `None` until the first list completes, so the agent writes nothing before
/// it knows the config. The task runs for the life of the process.
pub fn spawn_watch(
    endpoint: Endpoint,
    source: &ApiSource,
    key: &ConfigMapKey,
    telemetry: Telemetry,
) -> tokio::sync::watch::Receiver<Option<Snapshot>> {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let watcher = watch::Watcher::<Snapshot>::new(
        endpoint,
        Query::Object(source.configmap.clone()),
        key.clone(),
        telemetry,
        tx,
    );
    tokio::spawn(watcher.run());
    rx
}

/// The parts of a selection: one per selected ConfigMap, by its name.
fn selection_parts(selection: &Selection, key: &ConfigMapKey) -> Vec<(Part, Option<ObjectInfo>)> {
    selection
        .0
        .iter()
        .map(|(name, snapshot)| {
            let namespace = snapshot
                .object
                .as_ref()
                .map_or("", |o| o.namespace.as_str());
            let part = Part {
                name: part_name(namespace, name, key),
                read: Read::Ready(match &snapshot.bytes {
                    Some(bytes) => Content::Bytes(bytes.clone()),
                    None => Content::Absent,
                }),
            };
            (part, snapshot.object.clone())
        })
        .collect()
}

/// Read a selector's ConfigMaps once (for `sync`, `render` and `check`):
/// one list, as the daemon's, so the same RBAC serves both.
pub async fn fetch_selected(
    endpoint: Endpoint,
    source: &ApiSelector,
    key: &ConfigMapKey,
) -> Result<Vec<Part>, String> {
    let query = Query::Selector(source.selector.clone());
    let listing = watch::list(&endpoint, &query, false, FETCH_TIMEOUT)
        .await
        .map_err(|failure| failure.describe(&endpoint.server, client::Doing::Listing(&query)))?;
    if !listing.ignored.is_empty() {
        warn!(
            "the API server listed configmap {} though only {} were asked for; ignored",
            listing.ignored.join(", "),
            query.describe()
        );
    }
    let selection = Selection(listing.snapshots(key));
    Ok(selection_parts(&selection, key)
        .into_iter()
        .map(|(part, _)| part)
        .collect())
}

/// The ConfigMaps a label selector picks, each one's key a part of the
/// config, as they come and go. One list and one watch serve them all.
pub struct SelectorSource {
    selector: ConfigMapSelector,
    key: ConfigMapKey,
    /// `None` until the first list completes.
    selections: tokio::sync::watch::Receiver<Option<Selection>>,
    events: Option<EventSink>,
    /// The objects as last delivered, by part name, to name them in Events.
    objects: BTreeMap<String, ObjectInfo>,
    ended: bool,
}

impl SelectorSource {
    /// A source fed by `selections` (the watch task's, or a test's).
    pub fn new(
        selector: ConfigMapSelector,
        key: ConfigMapKey,
        selections: tokio::sync::watch::Receiver<Option<Selection>>,
        events: Option<EventSink>,
    ) -> Self {
        SelectorSource {
            selector,
            key,
            selections,
            events,
            objects: BTreeMap::new(),
            ended: false,
        }
    }

    /// Connect: credentials, the watch, and the Event sink, as
    /// [`ConfigMapSource::connect`].
    pub async fn connect(
        source: &ApiSelector,
        key: &ConfigMapKey,
        telemetry: &Telemetry,
    ) -> Result<Self, String> {
        let (endpoint, events, node) =
            open(source, &Query::Selector(source.selector.clone()), telemetry).await?;
        info!(selector = %source.selector, key = %key, node = %node, "reading the config of every selected ConfigMap through the Kubernetes API; --config is not used");
        let (tx, rx) = tokio::sync::watch::channel(None);
        let watcher = watch::Watcher::<Selection>::new(
            endpoint,
            Query::Selector(source.selector.clone()),
            key.clone(),
            telemetry.clone(),
            tx,
        );
        tokio::spawn(watcher.run());
        Ok(Self::new(
            source.selector.clone(),
            key.clone(),
            rx,
            Some(events),
        ))
    }

    pub fn selector(&self) -> &ConfigMapSelector {
        &self.selector
    }

    /// Whether the first list has not completed yet.
    pub fn is_waiting(&self) -> bool {
        self.selections.borrow().is_none()
    }

    /// One part per selected ConfigMap; before the first list completed,
    /// one part that is not there yet.
    pub fn read(&mut self) -> Vec<Part> {
        let Some(selection) = self.selections.borrow_and_update().clone() else {
            return vec![Part {
                name: format!("configmaps {} key {}", self.selector, self.key),
                read: Read::NotYet,
            }];
        };
        let parts = selection_parts(&selection, &self.key);
        self.objects = parts
            .iter()
            .filter_map(|(part, object)| Some((part.name.clone(), object.clone()?)))
            .collect();
        parts.into_iter().map(|(part, _)| part).collect()
    }

    /// Resolves when the watch delivered something new. Cancel-safe.
    pub async fn changed(&mut self) {
        if !self.ended && self.selections.changed().await.is_ok() {
            return;
        }
        if !self.ended {
            error!(selector = %self.selector, "the Kubernetes API source stopped; enforcing the last good config");
            self.ended = true;
        }
        std::future::pending().await
    }

    /// This node rejected the part `part` (an Event on that ConfigMap).
    pub fn report_invalid(&self, part: &str, content: String, error: &str) {
        report_invalid(self.events.as_ref(), self.objects.get(part), content, error);
    }

    /// Rule syncs keep failing on this node.
    pub fn report_sync_failure(&self, error: String) {
        report_sync_failure(self.events.as_ref(), error);
    }
}

/// An `InvalidConfig` Event on `configmap`, when there is a sink and the
/// object is known (once per distinct content and error; the sink counts
/// repeats as a series).
fn report_invalid(
    sink: Option<&EventSink>,
    configmap: Option<&ObjectInfo>,
    content: String,
    error: &str,
) {
    if let (Some(sink), Some(configmap)) = (sink, configmap) {
        sink.report(Report::InvalidConfig {
            configmap: configmap.clone(),
            content,
            error: error.to_owned(),
        });
    }
}

/// A `SyncFailed` Event on the agent's Pod, when there is a sink.
fn report_sync_failure(sink: Option<&EventSink>, error: String) {
    if let Some(sink) = sink {
        sink.report(Report::SyncFailed { error });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn configmap(data: &[(&str, &str)], binary: &[(&str, &[u8])]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("kube-system".into()),
                name: Some("ip-masq-agent".into()),
                uid: Some("u-1".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            binary_data: Some(
                binary
                    .iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_takes_the_key_from_data_then_binary_data() {
        let key: ConfigMapKey = "config".parse().unwrap();
        let s = snapshot_of(&configmap(&[("config", "cidrLimit: 1\n")], &[]), &key);
        assert_eq!(s.bytes.as_deref(), Some(&b"cidrLimit: 1\n"[..]));
        let object = s.object.unwrap();
        assert_eq!(object.uid.as_deref(), Some("u-1"));
        let reference = object.reference();
        assert_eq!(reference.kind.as_deref(), Some("ConfigMap"));
        assert_eq!(reference.namespace.as_deref(), Some("kube-system"));
        let s = snapshot_of(&configmap(&[], &[("config", b"cidrLimit: 2")]), &key);
        assert_eq!(s.bytes.as_deref(), Some(&b"cidrLimit: 2"[..]));
        // The object exists but not the key: defaults, as a missing file.
        let s = snapshot_of(&configmap(&[("other", "x")], &[]), &key);
        assert_eq!(s.bytes, None);
        assert!(s.object.is_some());
    }

    #[test]
    fn api_source_from_flag_text() {
        let source = ApiSource::parse("kube-system/ip-masq-agent", "").unwrap();
        assert_eq!(source.configmap.to_string(), "kube-system/ip-masq-agent");
        assert_eq!(source.kubeconfig, None);
        let source = ApiSource::parse("a/b", "/etc/kubeconfig").unwrap();
        assert_eq!(source.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(
            ApiSource::parse("ip-masq-agent", "/k"),
            Err("must be NAMESPACE/NAME".into())
        );
    }
}
