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
pub use metrics::{Metrics, Series, SyncOutcome};

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

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
