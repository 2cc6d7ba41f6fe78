//! What the agent tells Prometheus and the kubelet: metrics of every sync and
//! config load, and the `/healthz` and `/readyz` probes, on one HTTP listener.
//!
//! The loop records into [`Metrics`] and [`Health`]; the HTTP side only reads.
//! Names are `ip_masq_agent_*` with units in the name, OpenMetrics text.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::apisource::SourceState;
use crate::plan::Family;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FamilyLabels {
    family: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SyncLabels {
    family: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    family: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoadLabels {
    result: &'static str,
    trigger: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigLabels {
    fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    reason: &'static str,
    result: &'static str,
}

/// The `source` label of the API source's metrics (they exist only with
/// `--configmap`, so a file-only node shows no "disconnected" source).
const API_SOURCE: SourceLabels = SourceLabels {
    source: "kubernetes",
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type HistogramFamily = MetricFamily<FamilyLabels, Histogram, fn() -> Histogram>;

fn sync_histogram() -> Histogram {
    // 1 ms to ~33 s: a sync is tens of ms, a held xtables lock seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// The result of one family's sync, as a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncOutcome {
    Applied,
    Unchanged,
    Failed,
}

impl SyncOutcome {
    fn label(self) -> &'static str {
        match self {
            SyncOutcome::Applied => "applied",
            SyncOutcome::Unchanged => "unchanged",
            SyncOutcome::Failed => "failed",
        }
    }
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    syncs: MetricFamily<SyncLabels, Counter>,
    sync_errors: MetricFamily<ErrorLabels, Counter>,
    sync_duration: HistogramFamily,
    last_success: MetricFamily<FamilyLabels, Gauge<f64, AtomicU64>>,
    drift_repairs: MetricFamily<FamilyLabels, Counter>,
    cidrs: MetricFamily<FamilyLabels, Gauge>,
    config_loads: MetricFamily<LoadLabels, Counter>,
    config_valid: Gauge,
    config_info: MetricFamily<ConfigLabels, Gauge>,
    source_connected: MetricFamily<SourceLabels, Gauge>,
    source_last_event: MetricFamily<SourceLabels, Gauge<f64, AtomicU64>>,
    source_errors: MetricFamily<SourceLabels, Counter>,
    events: MetricFamily<EventLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let syncs = MetricFamily::<SyncLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_syncs",
            "Rule syncs by address family and result (applied: rules written; unchanged: the kernel already matched; failed)",
            syncs.clone(),
        );
        let sync_errors = MetricFamily::<ErrorLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_sync_errors",
            "Failed rule syncs by address family and kind of failure (lock_held, rejected, not_found, timeout, permission, io, verify)",
            sync_errors.clone(),
        );
        let sync_duration = HistogramFamily::new_with_constructor(sync_histogram);
        registry.register_with_unit(
            "ip_masq_agent_sync_duration",
            "Time to observe and, when needed, rewrite the rules of one address family",
            Unit::Seconds,
            sync_duration.clone(),
        );
        let last_success = MetricFamily::<FamilyLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "ip_masq_agent_last_successful_sync_timestamp",
            "Unix time of the last sync that left the kernel matching the config, by address family",
            Unit::Seconds,
            last_success.clone(),
        );
        let drift_repairs = MetricFamily::<FamilyLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_drift_repairs",
            "Times the rules were found changed by someone else and restored, by address family",
            drift_repairs.clone(),
        );
        let cidrs = MetricFamily::<FamilyLabels, Gauge>::default();
        registry.register(
            "ip_masq_agent_non_masquerade_cidrs",
            "Non-masquerade CIDRs of the enforced config (link-local excluded), by address family",
            cidrs.clone(),
        );
        let config_loads = MetricFamily::<LoadLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_config_loads",
            "Config reads by result (valid, invalid) and trigger (startup, file_event, resync, signal)",
            config_loads.clone(),
        );
        let config_valid = Gauge::default();
        registry.register(
            "ip_masq_agent_config_valid",
            "1 if the last config read was valid, 0 if it was rejected (the last valid config stays enforced)",
            config_valid.clone(),
        );
        let config_info = MetricFamily::<ConfigLabels, Gauge>::default();
        registry.register(
            "ip_masq_agent_config",
            "Fingerprint of the enforced config (value is always 1); equal fingerprints mean equal configs across nodes",
            config_info.clone(),
        );
        let source_connected = MetricFamily::<SourceLabels, Gauge>::default();
        registry.register(
            "ip_masq_agent_config_source_connected",
            "Whether the config source's watch is healthy (1) or failing and retrying (0); only with --configmap",
            source_connected.clone(),
        );
        let source_last_event = MetricFamily::<SourceLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "ip_masq_agent_config_source_last_event_timestamp",
            "Unix time of the last object the config source delivered (list or watch event)",
            Unit::Seconds,
            source_last_event.clone(),
        );
        let source_errors = MetricFamily::<SourceLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_config_source_errors",
            "Failed list or watch requests of the config source (each is retried with backoff)",
            source_errors.clone(),
        );
        let events = MetricFamily::<EventLabels, Counter>::default();
        registry.register(
            "ip_masq_agent_events",
            "Kubernetes Events by reason and result: published (created or series updated), failed, dropped",
            events.clone(),
        );
        // A gauge rather than OpenMetrics' info type, which the classic
        // Prometheus text parsers (promtool among them) reject.
        let build_info = MetricFamily::<BuildLabels, Gauge>::default();
        build_info
            .get_or_create(&BuildLabels {
                version: crate::VERSION,
            })
            .set(1);
        registry.register(
            "ip_masq_agent_build_info",
            "Build information (value is always 1)",
            build_info,
        );
        Metrics {
            registry,
            syncs,
            sync_errors,
            sync_duration,
            last_success,
            drift_repairs,
            cidrs,
            config_loads,
            config_valid,
            config_info,
            source_connected,
            source_last_event,
            source_errors,
            events,
        }
    }

    /// The API source's watch is (not) healthy.
    pub fn source_connected(&self, connected: bool) {
        self.source_connected
            .get_or_create(&API_SOURCE)
            .set(i64::from(connected));
        // Make the counter visible at 0 from the start.
        let _ = self.source_errors.get_or_create(&API_SOURCE);
    }

    pub fn source_event(&self, unix_seconds: f64) {
        self.source_last_event
            .get_or_create(&API_SOURCE)
            .set(unix_seconds);
    }

    pub fn source_error(&self) {
        self.source_errors.get_or_create(&API_SOURCE).inc();
    }

    /// One Event report's fate; `result` is a stable label.
    pub fn event(&self, reason: &'static str, result: &'static str) {
        self.events
            .get_or_create(&EventLabels { reason, result })
            .inc();
    }

    /// Record one family's sync.
    pub fn sync(
        &self,
        family: Family,
        outcome: SyncOutcome,
        elapsed: Duration,
        error_kind: Option<&'static str>,
    ) {
        let family = family.as_str();
        self.syncs
            .get_or_create(&SyncLabels {
                family,
                result: outcome.label(),
            })
            .inc();
        self.sync_duration
            .get_or_create(&FamilyLabels { family })
            .observe(elapsed.as_secs_f64());
        match (outcome, error_kind) {
            (SyncOutcome::Failed, Some(kind)) => {
                self.sync_errors
                    .get_or_create(&ErrorLabels { family, kind })
                    .inc();
            }
            (SyncOutcome::Failed, None) => {}
            _ => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                self.last_success
                    .get_or_create(&FamilyLabels { family })
                    .set(now);
            }
        }
    }

    pub fn drift_repaired(&self, family: Family) {
        self.drift_repairs
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .inc();
    }

    /// Record a config read; `trigger` is a stable label.
    pub fn config_load(&self, valid: bool, trigger: &'static str) {
        self.config_loads
            .get_or_create(&LoadLabels {
                result: if valid { "valid" } else { "invalid" },
                trigger,
            })
            .inc();
        self.config_valid.set(i64::from(valid));
    }

    /// Record the config now enforced.
    pub fn config_enforced(&self, fingerprint: &str, cidrs_v4: usize, cidrs_v6: usize) {
        self.config_info.clear();
        self.config_info
            .get_or_create(&ConfigLabels {
                fingerprint: fingerprint.to_owned(),
            })
            .set(1);
        for (family, n) in [(Family::Ipv4, cidrs_v4), (Family::Ipv6, cidrs_v6)] {
            self.cidrs
                .get_or_create(&FamilyLabels {
                    family: family.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A loop iteration older than this means the loop is wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct HealthState {
    heartbeat: Instant,
    first_success: bool,
    last_failure: Option<String>,
    waiting_for_config: Option<String>,
    /// The API source, when configured: what it watches and how it fares.
    source: Option<SourceHealth>,
}

#[derive(Debug)]
struct SourceHealth {
    object: String,
    state: SourceState,
    since: Instant,
    last_event: Option<Instant>,
}

/// What the probes answer, shared between the loop and the HTTP server.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<HealthState>>);

impl Health {
    pub fn new() -> Self {
        Health(Arc::new(Mutex::new(HealthState {
            heartbeat: Instant::now(),
            first_success: false,
            last_failure: None,
            waiting_for_config: None,
            source: None,
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The loop is alive.
    pub fn beat(&self) {
        self.with(|s| s.heartbeat = Instant::now());
    }

    pub fn sync_succeeded(&self) {
        self.with(|s| {
            s.first_success = true;
            s.last_failure = None;
            s.waiting_for_config = None;
        });
    }

    pub fn sync_failed(&self, reason: String) {
        self.with(|s| s.last_failure = Some(reason));
    }

    /// No valid config has been loaded yet.
    pub fn no_config(&self, reason: String) {
        self.with(|s| s.waiting_for_config = Some(reason));
    }

    /// The API source changed state.
    pub fn source_state(&self, object: &str, state: &SourceState) {
        self.with(|s| {
            let last_event = s.source.as_ref().and_then(|h| h.last_event);
            s.source = Some(SourceHealth {
                object: object.to_owned(),
                state: state.clone(),
                since: Instant::now(),
                last_event,
            });
        });
    }

    /// The API source delivered an object.
    pub fn source_event(&self) {
        self.with(|s| {
            if let Some(source) = &mut s.source {
                source.last_event = Some(Instant::now());
            }
        });
    }
}

/// The API source's part of the readiness text (empty without one).
fn source_text(s: &HealthState) -> String {
    let Some(h) = &s.source else {
        return String::new();
    };
    let last = match h.last_event {
        Some(at) => format!("last object {} s ago", at.elapsed().as_secs()),
        None => "no object yet".to_owned(),
    };
    match &h.state {
        SourceState::Connecting => format!("; configmap {}: connecting, {last}", h.object),
        SourceState::Connected => format!("; configmap {}: watching, {last}", h.object),
        SourceState::Failing(err) => format!(
            "; configmap {}: API unreachable for {} s ({err}), enforcing the last good config, {last}",
            h.object,
            h.since.elapsed().as_secs()
        ),
    }
}

impl Health {
    /// (healthy, reason)
    pub fn liveness(&self) -> (bool, String) {
        self.with(|s| {
            let age = s.heartbeat.elapsed();
            if age > WEDGED_AFTER {
                (
                    false,
                    format!("loop wedged: no progress for {} s", age.as_secs()),
                )
            } else {
                (true, "ok: loop alive".to_owned())
            }
        })
    }

    /// (ready, reason)
    ///
    /// An unreachable API server does not make the agent unready: the node
    /// keeps enforcing its last good config, which is the right state; the
    /// text says so, and the source metrics alert on it.
    pub fn readiness(&self) -> (bool, String) {
        self.with(|s| {
            let source = source_text(s);
            if let Some(reason) = &s.last_failure {
                (false, format!("last sync failed: {reason}{source}"))
            } else if let Some(reason) = &s.waiting_for_config {
                (false, format!("no valid config yet: {reason}{source}"))
            } else if !s.first_success {
                (false, format!("first sync not done yet{source}"))
            } else {
                (true, format!("ok: rules in sync{source}"))
            }
        })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Health,
}

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics for clients that ask for it (Prometheus does); the classic
/// text format for everyone else (curl, promtool, older scrapers).
async fn metrics_handler(State(shared): State<Shared>, headers: HeaderMap) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = shared.metrics.encode();
    if wants_openmetrics {
        ([(header::CONTENT_TYPE, OPENMETRICS)], body)
    } else {
        (
            [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
            to_prometheus_text(&body),
        )
    }
}

/// Rewrite our OpenMetrics exposition in the classic Prometheus text format:
/// a counter's HELP and TYPE lines name it with its `_total` suffix, and the
/// OpenMetrics-only `# UNIT` and `# EOF` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut pending_help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        if line.starts_with("# HELP ") {
            pending_help = Some(line);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some(help) = pending_help.take() {
                let text = help
                    .strip_prefix("# HELP ")
                    .and_then(|h| h.strip_prefix(name))
                    .unwrap_or("");
                out.push_str(&format!("# HELP {name}{suffix}{text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if let Some(help) = pending_help.take() {
            out.push_str(help);
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn probe((ok, reason): (bool, String)) -> (StatusCode, String) {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, reason + "\n")
}

async fn healthz(State(shared): State<Shared>) -> impl IntoResponse {
    probe(shared.health.liveness())
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    probe(shared.health.readiness())
}

/// Parse `--metrics-address`: Go style `:PORT` means all addresses.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    let full = if text.starts_with(':') {
        format!("0.0.0.0{text}")
    } else {
        text.to_owned()
    };
    full.parse::<SocketAddr>()
        .map_err(|_| format!("invalid listen address {text:?}: use HOST:PORT, [V6]:PORT or :PORT"))
}

/// Bind the listener (errors surface at start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serve /metrics, /healthz and /readyz until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { metrics, health });
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_and_types() {
        let m = Metrics::new();
        m.sync(
            Family::Ipv4,
            SyncOutcome::Applied,
            Duration::from_millis(3),
            None,
        );
        m.sync(
            Family::Ipv4,
            SyncOutcome::Failed,
            Duration::from_millis(3),
            Some("lock_held"),
        );
        m.config_load(false, "file_event");
        m.config_enforced("abc123", 3, 0);
        m.drift_repaired(Family::Ipv6);
        let text = m.encode();
        for needle in [
            "# TYPE ip_masq_agent_syncs counter",
            "ip_masq_agent_syncs_total{family=\"ipv4\",result=\"applied\"} 1",
            "ip_masq_agent_sync_errors_total{family=\"ipv4\",kind=\"lock_held\"} 1",
            "# TYPE ip_masq_agent_sync_duration_seconds histogram",
            "# TYPE ip_masq_agent_last_successful_sync_timestamp_seconds gauge",
            "ip_masq_agent_config_loads_total{result=\"invalid\",trigger=\"file_event\"} 1",
            "ip_masq_agent_config_valid 0",
            "ip_masq_agent_config{fingerprint=\"abc123\"} 1",
            "ip_masq_agent_non_masquerade_cidrs{family=\"ipv4\"} 3",
            "ip_masq_agent_drift_repairs_total{family=\"ipv6\"} 1",
            "ip_masq_agent_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn classic_text_names_counters_with_total() {
        let m = Metrics::new();
        m.sync(
            Family::Ipv4,
            SyncOutcome::Unchanged,
            Duration::from_millis(1),
            None,
        );
        let text = to_prometheus_text(&m.encode());
        assert!(text.contains("# HELP ip_masq_agent_syncs_total Rule syncs"));
        assert!(text.contains("# TYPE ip_masq_agent_syncs_total counter\n"));
        assert!(text.contains("# TYPE ip_masq_agent_sync_duration_seconds histogram\n"));
        assert!(!text.contains("# EOF"));
        assert!(!text.contains("# UNIT"));
    }

    #[test]
    fn config_info_keeps_only_the_current_fingerprint() {
        let m = Metrics::new();
        m.config_enforced("old", 1, 0);
        m.config_enforced("new", 1, 0);
        let text = m.encode();
        assert!(!text.contains("fingerprint=\"old\""));
        assert!(text.contains("fingerprint=\"new\""));
    }

    #[test]
    fn readiness_follows_syncs() {
        let h = Health::new();
        assert!(!h.readiness().0);
        h.sync_succeeded();
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
        h.sync_failed("lock held".into());
        assert!(!h.readiness().0);
        assert!(h.liveness().0);
    }

    #[test]
    fn readiness_tells_the_api_source_state_without_failing_on_it() {
        let h = Health::new();
        h.sync_succeeded();
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
        h.source_state("kube-system/ip-masq-agent", &SourceState::Connected);
        h.source_event();
        let (ready, text) = h.readiness();
        assert!(ready);
        assert!(
            text.starts_with("ok: rules in sync; configmap kube-system/ip-masq-agent: watching, last object 0 s ago"),
            "{text}"
        );
        h.source_state(
            "kube-system/ip-masq-agent",
            &SourceState::Failing("connection refused".into()),
        );
        let (ready, text) = h.readiness();
        assert!(ready, "the last good config is still enforced");
        assert!(text.contains("API unreachable for 0 s (connection refused), enforcing the last good config, last object 0 s ago"), "{text}");
        let m = Metrics::new();
        m.source_connected(false);
        m.source_error();
        m.event("InvalidConfig", "published");
        let text = m.encode();
        for line in [
            "ip_masq_agent_config_source_connected{source=\"kubernetes\"} 0",
            "ip_masq_agent_config_source_errors_total{source=\"kubernetes\"} 1",
            "ip_masq_agent_events_total{reason=\"InvalidConfig\",result=\"published\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address(":9557").unwrap().to_string(), "0.0.0.0:9557");
        assert_eq!(parse_address("127.0.0.1:1").unwrap().port(), 1);
        assert_eq!(parse_address("[::1]:80").unwrap().port(), 80);
        assert!(parse_address("nope").is_err());
    }
}
