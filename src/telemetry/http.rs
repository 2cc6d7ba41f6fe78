//! The HTTP listener: `/metrics` (OpenMetrics for Prometheus, the classic
//! text format for everyone else), `/healthz` and `/readyz`.
//!
//! Handlers only read [`Telemetry`]; a slow or hostile client never touches
//! the loop's state.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Telemetry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics for clients that ask for it (Prometheus does); the classic
/// text format for everyone else (curl, promtool, older scrapers).
async fn metrics_handler(
    State(telemetry): State<Telemetry>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let wants_openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let body = telemetry.metrics.encode();
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

async fn healthz(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    probe(telemetry.health.liveness())
}

async fn readyz(State(telemetry): State<Telemetry>) -> impl IntoResponse {
    probe(telemetry.health.readiness())
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
pub async fn serve(listener: tokio::net::TcpListener, telemetry: Telemetry) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plan::Family;
    use crate::telemetry::{Metrics, SyncOutcome};

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
    fn addresses() {
        assert_eq!(parse_address(":9557").unwrap().to_string(), "0.0.0.0:9557");
        assert_eq!(parse_address("127.0.0.1:1").unwrap().port(), 1);
        assert_eq!(parse_address("[::1]:80").unwrap().port(), 80);
        assert!(parse_address("nope").is_err());
    }
}
