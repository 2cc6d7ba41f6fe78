//! Where the agent reports: Prometheus metrics, the probes' state, and the
//! HTTP listener that serves both.
//!
//! The loop and the config sources write into one [`Telemetry`]; the HTTP
//! side only reads it. Nothing here decides anything about rules.

pub mod health;
pub mod http;
pub mod metrics;

use std::sync::Arc;
use std::time::SystemTime;

pub use health::{Health, SourceState};
pub use metrics::{CidrList, Metrics, Series, SyncOutcome};

/// Metrics and the probes' state, shared by the loop, the sources and the
/// HTTP server.
#[derive(Clone, Default)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub health: Health,
}

impl Telemetry {
    /// Telemetry whose labelled series start at 0 (see [`Series`]).
    pub fn new(series: Series<'_>) -> Self {
        Telemetry {
            metrics: Arc::new(Metrics::with_series(series)),
            health: Health::default(),
        }
    }
}

/// An API source's state goes to the readiness text under its own name and
/// to `config_source_connected{source="kubernetes"}`, which is 1 only while
/// every API source is connected: one stuck source is not hidden by another.
impl Telemetry {
    /// The API source `name` (`configmap NS/NAME`, `configmaps NS/SELECTOR`)
    /// is configured; until it lists, the agent is not ready.
    pub fn api_source(&self, name: &str) {
        self.health
            .source_added(name, |all| self.metrics.source_connected(all));
    }

    /// The API source `name` changed state.
    pub fn source_state(&self, name: &str, state: &SourceState) {
        self.health
            .source_state(name, state, |all| self.metrics.source_connected(all));
    }

    /// The API source `name` delivered its objects (a list or an event).
    pub fn source_event(&self, name: &str) {
        self.metrics.source_event(unix_now());
        self.health.source_event(name);
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(t: &Telemetry) -> bool {
        t.metrics
            .encode()
            .contains("ip_masq_agent_config_source_connected{source=\"kubernetes\"} 1")
    }

    /// The gauge is 1 only while every API source is connected, whichever
    /// reported last.
    #[test]
    fn connected_needs_every_api_source() {
        let t = Telemetry::default();
        let (a, b) = ("configmap kube-system/a", "configmaps kube-system/app=x");
        t.api_source(a);
        t.api_source(b);
        t.source_event(a);
        t.source_state(a, &SourceState::Connected);
        assert!(!connected(&t), "b has not listed");
        t.source_event(b);
        t.source_state(b, &SourceState::Connected);
        assert!(connected(&t));
        t.source_state(b, &SourceState::Failing("403".into()));
        t.source_state(a, &SourceState::Connected);
        assert!(!connected(&t), "a reporting again must not hide b");
        t.source_state(b, &SourceState::Connected);
        assert!(connected(&t));
    }
}
