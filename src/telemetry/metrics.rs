//! Every metric the agent exports, grouped by what it describes: rule syncs,
//! the config, the config source, and Kubernetes Events. Each group registers
//! itself; [`Metrics`] is the registry plus the groups.
//!
//! Names are `ip_masq_agent_*` with units in the name, OpenMetrics text.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family as MetricFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

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
struct FragmentLabels {
    fragment: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceFailureLabels {
    source: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    reason: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

/// The `source` label of the API source's metrics (they exist only with
/// `--configmap`, so a file-only node shows no "disconnected" source).
const API_SOURCE: SourceLabels = SourceLabels {
    source: "kubernetes",
};

type HistogramFamily = MetricFamily<FamilyLabels, Histogram, fn() -> Histogram>;
type TimestampFamily<L> = MetricFamily<L, Gauge<f64, AtomicU64>>;

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

/// Rule syncs: how many, how long, how they failed, drift found.
struct SyncMetrics {
    syncs: MetricFamily<SyncLabels, Counter>,
    errors: MetricFamily<ErrorLabels, Counter>,
    duration: HistogramFamily,
    last_success: TimestampFamily<FamilyLabels>,
    drift_repairs: MetricFamily<FamilyLabels, Counter>,
    conflicts: MetricFamily<FamilyLabels, Gauge>,
}

impl SyncMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = SyncMetrics {
            syncs: MetricFamily::default(),
            errors: MetricFamily::default(),
            duration: HistogramFamily::new_with_constructor(sync_histogram),
            last_success: MetricFamily::default(),
            drift_repairs: MetricFamily::default(),
            conflicts: MetricFamily::default(),
        };
        registry.register(
            "ip_masq_agent_syncs",
            "Rule syncs by address family and result (applied: rules written; unchanged: the kernel already matched; failed)",
            this.syncs.clone(),
        );
        registry.register(
            "ip_masq_agent_sync_errors",
            "Failed rule syncs by address family and kind of failure (lock_held, rejected, not_found, timeout, permission, io, verify, too_large)",
            this.errors.clone(),
        );
        registry.register_with_unit(
            "ip_masq_agent_sync_duration",
            "Time to observe and, when needed, rewrite the rules of one address family",
            Unit::Seconds,
            this.duration.clone(),
        );
        registry.register_with_unit(
            "ip_masq_agent_last_successful_sync_timestamp",
            "Unix time of the last sync that left the kernel matching the config, by address family",
            Unit::Seconds,
            this.last_success.clone(),
        );
        registry.register(
            "ip_masq_agent_drift_repairs",
            "Times the rules were found changed by someone else and restored, by address family",
            this.drift_repairs.clone(),
        );
        registry.register(
            "ip_masq_agent_conflicting_rules",
            "Other programs' nat rules overriding the config's decision (masquerading an exempt destination, \
             ending the traversal before our chain, a stale upstream chain), by address family",
            this.conflicts.clone(),
        );
        this
    }

    fn record(
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
        self.duration
            .get_or_create(&FamilyLabels { family })
            .observe(elapsed.as_secs_f64());
        match (outcome, error_kind) {
            (SyncOutcome::Failed, Some(kind)) => {
                self.errors
                    .get_or_create(&ErrorLabels { family, kind })
                    .inc();
            }
            (SyncOutcome::Failed, None) => {}
            _ => {
                self.last_success
                    .get_or_create(&FamilyLabels { family })
                    .set(super::unix_now());
            }
        }
    }
}

/// The CIDR lists of a config, each counted by a gauge per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CidrList {
    /// `nonMasqueradeCIDRs`.
    NonMasquerade,
    /// `masqueradeCIDRs`.
    Masquerade,
    /// `podCIDRs`.
    Pod,
}

impl CidrList {
    pub const ALL: [CidrList; 3] = [CidrList::NonMasquerade, CidrList::Masquerade, CidrList::Pod];
}

/// The config: reads, validity, what is enforced.
struct ConfigMetrics {
    loads: MetricFamily<LoadLabels, Counter>,
    valid: Gauge,
    info: MetricFamily<ConfigLabels, Gauge>,
    cidrs: MetricFamily<FamilyLabels, Gauge>,
    masquerade_cidrs: MetricFamily<FamilyLabels, Gauge>,
    pod_cidrs: MetricFamily<FamilyLabels, Gauge>,
    fragments: MetricFamily<FragmentLabels, Gauge>,
    warnings: Counter,
}

impl ConfigMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = ConfigMetrics {
            loads: MetricFamily::default(),
            valid: Gauge::default(),
            info: MetricFamily::default(),
            cidrs: MetricFamily::default(),
            masquerade_cidrs: MetricFamily::default(),
            pod_cidrs: MetricFamily::default(),
            fragments: MetricFamily::default(),
            warnings: Counter::default(),
        };
        registry.register(
            "ip_masq_agent_non_masquerade_cidrs",
            "Non-masquerade CIDRs of the enforced config (link-local excluded), by address family",
            this.cidrs.clone(),
        );
        registry.register(
            "ip_masq_agent_masquerade_cidrs",
            "masqueradeCIDRs of the enforced config, by address family",
            this.masquerade_cidrs.clone(),
        );
        registry.register(
            "ip_masq_agent_pod_cidrs",
            "podCIDRs of the enforced config, by address family",
            this.pod_cidrs.clone(),
        );
        registry.register(
            "ip_masq_agent_config_loads",
            "Config reads by result (valid, invalid) and trigger (startup, file_event, api_event, resync, signal)",
            this.loads.clone(),
        );
        registry.register(
            "ip_masq_agent_config_valid",
            "1 if the last config read was valid, 0 if it was rejected (the last valid config stays enforced)",
            this.valid.clone(),
        );
        registry.register(
            "ip_masq_agent_config",
            "Fingerprint of the enforced config (value is always 1); equal fingerprints mean equal configs across nodes",
            this.info.clone(),
        );
        registry.register(
            "ip_masq_agent_config_warnings",
            "Warnings about an accepted config (an unknown key, a corrected value), once per distinct content",
            this.warnings.clone(),
        );
        registry.register(
            "ip_masq_agent_config_fragment_valid",
            "With several config sources, whether each part (a file, a ConfigMap key) is valid (1) or rejected (0; its last valid contents stay in force)",
            this.fragments.clone(),
        );
        this
    }

    fn list(&self, list: CidrList) -> &MetricFamily<FamilyLabels, Gauge> {
        match list {
            CidrList::NonMasquerade => &self.cidrs,
            CidrList::Masquerade => &self.masquerade_cidrs,
            CidrList::Pod => &self.pod_cidrs,
        }
    }
}

/// A watching config source (the Kubernetes API).
struct SourceMetrics {
    connected: MetricFamily<SourceLabels, Gauge>,
    last_event: TimestampFamily<SourceLabels>,
    errors: MetricFamily<SourceLabels, Counter>,
    failures: MetricFamily<SourceFailureLabels, Counter>,
}

impl SourceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = SourceMetrics {
            connected: MetricFamily::default(),
            last_event: MetricFamily::default(),
            errors: MetricFamily::default(),
            failures: MetricFamily::default(),
        };
        registry.register(
            "ip_masq_agent_config_source_connected",
            "Whether every API source's watch is healthy (1) or one is failing and retrying, or has not listed yet (0); \
             only with --configmap or --configmap-selector",
            this.connected.clone(),
        );
        registry.register_with_unit(
            "ip_masq_agent_config_source_last_event_timestamp",
            "Unix time of the last object the config source delivered (list or watch event)",
            Unit::Seconds,
            this.last_event.clone(),
        );
        registry.register(
            "ip_masq_agent_config_source_errors",
            "Failed list or watch requests of the config source (each is retried with backoff)",
            this.errors.clone(),
        );
        registry.register(
            "ip_masq_agent_config_source_failures",
            "Failed requests of the config source by kind (unreachable, tls, timeout, unauthorized, forbidden, redirect, status, not_status, too_large, bad_response, watch_closed, ...)",
            this.failures.clone(),
        );
        this
    }
}

/// Kubernetes Events the agent published (or failed to).
struct EventMetrics {
    events: MetricFamily<EventLabels, Counter>,
}

impl EventMetrics {
    fn register(registry: &mut Registry) -> Self {
        let this = EventMetrics {
            events: MetricFamily::default(),
        };
        registry.register(
            "ip_masq_agent_events",
            "Kubernetes Events by reason and result: published (created or series updated), failed, dropped",
            this.events.clone(),
        );
        this
    }
}

fn register_build_info(registry: &mut Registry) {
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
}

/// The label values the labelled counters can take, so that they are
/// exported at 0 from the start and an `increase()` alert sees the first
/// error. Each list belongs to the module that defines the values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Series<'a> {
    /// The address families this agent programs.
    pub families: &'a [Family],
    /// Every `kind` of a failed sync.
    pub error_kinds: &'a [&'static str],
    /// Every `trigger` of a config read.
    pub triggers: &'a [&'static str],
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    /// The families whose per-family series are exported.
    families: Vec<Family>,
    sync: SyncMetrics,
    config: ConfigMetrics,
    source: SourceMetrics,
    events: EventMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let sync = SyncMetrics::register(&mut registry);
        let config = ConfigMetrics::register(&mut registry);
        let source = SourceMetrics::register(&mut registry);
        let events = EventMetrics::register(&mut registry);
        register_build_info(&mut registry);
        Metrics {
            registry,
            families: vec![Family::Ipv4, Family::Ipv6],
            sync,
            config,
            source,
            events,
        }
    }

    /// Metrics whose labelled series start at 0, for the families given.
    pub fn with_series(series: Series<'_>) -> Self {
        let mut metrics = Metrics::new();
        metrics.families = series.families.to_vec();
        for family in series.families {
            let family = family.as_str();
            for outcome in [
                SyncOutcome::Applied,
                SyncOutcome::Unchanged,
                SyncOutcome::Failed,
            ] {
                let result = outcome.label();
                let _ = metrics
                    .sync
                    .syncs
                    .get_or_create(&SyncLabels { family, result });
            }
            for &kind in series.error_kinds {
                let _ = metrics
                    .sync
                    .errors
                    .get_or_create(&ErrorLabels { family, kind });
            }
            let _ = metrics
                .sync
                .drift_repairs
                .get_or_create(&FamilyLabels { family });
            let _ = metrics
                .sync
                .conflicts
                .get_or_create(&FamilyLabels { family });
            for list in CidrList::ALL {
                let _ = metrics
                    .config
                    .list(list)
                    .get_or_create(&FamilyLabels { family });
            }
        }
        for result in ["valid", "invalid"] {
            for &trigger in series.triggers {
                let _ = metrics
                    .config
                    .loads
                    .get_or_create(&LoadLabels { result, trigger });
            }
        }
        metrics
    }

    /// The API source is in use: its series, and those of the Events it
    /// publishes, exist from now on (at 0 until something happens).
    pub fn api_source_started(&self, reasons: &[&'static str], results: &[&'static str]) {
        let _ = self.source.connected.get_or_create(&API_SOURCE);
        let _ = self.source.errors.get_or_create(&API_SOURCE);
        for &reason in reasons {
            for &result in results {
                let _ = self
                    .events
                    .events
                    .get_or_create(&EventLabels { reason, result });
            }
        }
    }

    /// Every API source's watch is healthy, or not (see
    /// [`super::Telemetry::source_state`]).
    pub fn source_connected(&self, connected: bool) {
        self.source
            .connected
            .get_or_create(&API_SOURCE)
            .set(i64::from(connected));
        // Make the counter visible at 0 from the start.
        let _ = self.source.errors.get_or_create(&API_SOURCE);
    }

    pub fn source_event(&self, unix_seconds: f64) {
        self.source
            .last_event
            .get_or_create(&API_SOURCE)
            .set(unix_seconds);
    }

    /// One failed request of the API source; `kind` is a stable label.
    pub fn source_error(&self, kind: &'static str) {
        self.source.errors.get_or_create(&API_SOURCE).inc();
        self.source
            .failures
            .get_or_create(&SourceFailureLabels {
                source: API_SOURCE.source,
                kind,
            })
            .inc();
    }

    /// One Event report's fate; `result` is a stable label.
    pub fn event(&self, reason: &'static str, result: &'static str) {
        self.events
            .events
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
        self.sync.record(family, outcome, elapsed, error_kind);
    }

    pub fn drift_repaired(&self, family: Family) {
        self.sync
            .drift_repairs
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .inc();
    }

    /// How many foreign nat rules override the config in `family` now.
    pub fn conflicting_rules(&self, family: Family, count: usize) {
        self.sync
            .conflicts
            .get_or_create(&FamilyLabels {
                family: family.as_str(),
            })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Record a config read; `trigger` is a stable label.
    pub fn config_load(&self, valid: bool, trigger: &'static str) {
        self.config
            .loads
            .get_or_create(&LoadLabels {
                result: if valid { "valid" } else { "invalid" },
                trigger,
            })
            .inc();
        self.config.valid.set(i64::from(valid));
    }

    /// A warning about an accepted config was logged.
    pub fn config_warning(&self) {
        self.config.warnings.inc();
    }

    /// Whether every config part read last was valid.
    pub fn set_config_valid(&self, valid: bool) {
        self.config.valid.set(i64::from(valid));
    }

    /// One part of a merged config was read: valid or not.
    pub fn fragment_valid(&self, name: &str, valid: bool) {
        self.config
            .fragments
            .get_or_create(&FragmentLabels {
                fragment: name.to_owned(),
            })
            .set(i64::from(valid));
    }

    /// A part of a merged config is gone.
    pub fn fragment_removed(&self, name: &str) {
        self.config.fragments.remove(&FragmentLabels {
            fragment: name.to_owned(),
        });
    }

    /// Record the config now enforced; `count` says how many CIDRs a list
    /// holds in a family.
    pub fn config_enforced(&self, fingerprint: &str, count: impl Fn(CidrList, Family) -> usize) {
        self.config.info.clear();
        self.config
            .info
            .get_or_create(&ConfigLabels {
                fingerprint: fingerprint.to_owned(),
            })
            .set(1);
        for family in [Family::Ipv4, Family::Ipv6] {
            if !self.families.contains(&family) {
                continue;
            }
            for list in CidrList::ALL {
                self.config
                    .list(list)
                    .get_or_create(&FamilyLabels {
                        family: family.as_str(),
                    })
                    .set(i64::try_from(count(list, family)).unwrap_or(i64::MAX));
            }
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
        m.config_enforced("abc123", |list, family| match (list, family) {
            (CidrList::NonMasquerade, Family::Ipv4) => 3,
            (CidrList::Pod, Family::Ipv6) => 1,
            _ => 0,
        });
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
            "ip_masq_agent_masquerade_cidrs{family=\"ipv4\"} 0",
            "ip_masq_agent_pod_cidrs{family=\"ipv6\"} 1",
            "# TYPE ip_masq_agent_masquerade_cidrs gauge",
            "# TYPE ip_masq_agent_pod_cidrs gauge",
            "ip_masq_agent_drift_repairs_total{family=\"ipv6\"} 1",
            "ip_masq_agent_build_info{version=\"",
            "# EOF",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
    }

    #[test]
    fn config_info_keeps_only_the_current_fingerprint() {
        let m = Metrics::new();
        m.config_enforced("old", |_, _| 1);
        m.config_enforced("new", |_, _| 1);
        let text = m.encode();
        assert!(!text.contains("fingerprint=\"old\""));
        assert!(text.contains("fingerprint=\"new\""));
    }

    #[test]
    fn labelled_series_start_at_zero_for_the_families_in_use() {
        let m = Metrics::with_series(Series {
            families: &[Family::Ipv4],
            error_kinds: &["lock_held", "rejected"],
            triggers: &["startup", "file_event"],
        });
        let text = m.encode();
        for list in ["non_masquerade", "masquerade", "pod"] {
            let line = format!("ip_masq_agent_{list}_cidrs{{family=\"ipv4\"}} 0");
            assert!(text.contains(&line), "{line} not in\n{text}");
        }
        m.config_enforced("abc", |list, family| match (list, family) {
            (CidrList::NonMasquerade, Family::Ipv4) => 2,
            (CidrList::Masquerade, Family::Ipv4) => 1,
            (CidrList::Pod, Family::Ipv4) => 4,
            // Not exported: IPv6 is off.
            (_, Family::Ipv6) => 9,
        });
        let text = m.encode();
        for line in [
            "ip_masq_agent_syncs_total{family=\"ipv4\",result=\"failed\"} 0",
            "ip_masq_agent_sync_errors_total{family=\"ipv4\",kind=\"lock_held\"} 0",
            "ip_masq_agent_sync_errors_total{family=\"ipv4\",kind=\"rejected\"} 0",
            "ip_masq_agent_drift_repairs_total{family=\"ipv4\"} 0",
            "ip_masq_agent_conflicting_rules{family=\"ipv4\"} 0",
            "ip_masq_agent_config_loads_total{result=\"invalid\",trigger=\"file_event\"} 0",
            "ip_masq_agent_non_masquerade_cidrs{family=\"ipv4\"} 2",
            "ip_masq_agent_masquerade_cidrs{family=\"ipv4\"} 1",
            "ip_masq_agent_pod_cidrs{family=\"ipv4\"} 4",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("ipv6"), "IPv6 series with IPv6 off:\n{text}");
        assert!(
            !text.contains("config_source"),
            "API series without the API source"
        );
        m.api_source_started(&["InvalidConfig"], &["published", "failed"]);
        let text = m.encode();
        for line in [
            "ip_masq_agent_config_source_connected{source=\"kubernetes\"} 0",
            "ip_masq_agent_config_source_errors_total{source=\"kubernetes\"} 0",
            "ip_masq_agent_events_total{reason=\"InvalidConfig\",result=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }

    #[test]
    fn api_source_and_event_series() {
        let m = Metrics::new();
        m.source_connected(false);
        m.source_error("unreachable");
        m.event("InvalidConfig", "published");
        let text = m.encode();
        for line in [
            "ip_masq_agent_config_source_connected{source=\"kubernetes\"} 0",
            "ip_masq_agent_config_source_errors_total{source=\"kubernetes\"} 1",
            "ip_masq_agent_config_source_failures_total{source=\"kubernetes\",kind=\"unreachable\"} 1",
            "ip_masq_agent_events_total{reason=\"InvalidConfig\",result=\"published\"} 1",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
