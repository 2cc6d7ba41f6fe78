//! The HTTP listener: `/metrics` (OpenMetrics for Prometheus, the classic
//! text format for everyone else), `/healthz` and `/readyz`.
//!
//! Handlers only read [`Telemetry`]; a slow or hostile client never touches
//! the loop's state, and the listener bounds what clients can hold: a few
//! connections at once, a deadline for the headers and for the whole
//! connection, so a flood of idle connections costs neither memory nor the
//! descriptors the agent needs for its real work.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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

/// Bind the listener (errors surface at start, not later).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// What one client, or a flood of them, can hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; beyond this a new one is closed at once.
    /// The probes and one scraper need a handful: the cap keeps a flood
    /// from taking the file descriptors the agent needs to read its config
    /// and run iptables.
    pub connections: usize,
    /// A client must send its request headers within this.
    pub headers: Duration,
    /// No connection lives longer than this, whatever it does.
    pub connection: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 32,
            headers: Duration::from_secs(5),
            connection: Duration::from_secs(30),
        }
    }
}

/// After a failed accept (out of descriptors), wait this long before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve /metrics, /healthz and /readyz until the process ends, one request
/// per connection, within `limits`.
pub async fn serve(
    listener: TcpListener,
    telemetry: Telemetry,
    limits: Limits,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(telemetry);
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // EMFILE and friends pass; a busy loop on them would not.
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.headers)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection, connection).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

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

    const SHORT: Limits = Limits {
        connections: 4,
        headers: Duration::from_millis(300),
        connection: Duration::from_secs(2),
    };

    async fn server() -> SocketAddr {
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, Telemetry::default(), SHORT));
        addr
    }

    async fn get_healthz(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr).await?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await?;
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut reply))
            .await
            .map_err(|_| std::io::Error::other("no answer"))??;
        Ok(reply)
    }

    /// Whether the server closed `stream` (EOF or reset) within `within`.
    async fn closed(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 64];
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => false,
        }
    }

    #[tokio::test]
    async fn answers_one_request_per_connection() {
        let addr = server().await;
        let reply = get_healthz(addr).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
        assert!(reply.ends_with("ok: loop alive\n"), "{reply}");
    }

    #[tokio::test]
    async fn connections_past_the_cap_are_closed_at_once() {
        let addr = server().await;
        let mut idle = Vec::new();
        for _ in 0..SHORT.connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        // Let the server take up the idle ones before the next arrives.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut extra = TcpStream::connect(addr).await.unwrap();
        assert!(closed(&mut extra, Duration::from_millis(200)).await);
        // Idle connections are dropped at the header deadline, and the
        // listener serves again.
        for stream in &mut idle {
            assert!(
                closed(stream, Duration::from_secs(2)).await,
                "idle connection kept"
            );
        }
        let reply = get_healthz(addr).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    }

    #[tokio::test]
    async fn a_slow_client_cannot_hold_a_connection() {
        let addr = server().await;
        let mut slow = TcpStream::connect(addr).await.unwrap();
        // Headers that never end, a byte at a time.
        for _ in 0..3 {
            let _ = slow.write_all(b"G").await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert!(closed(&mut slow, Duration::from_secs(2)).await);
    }
}
