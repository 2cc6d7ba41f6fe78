//! The HTTP side of the API source: the client, one bounded request, and
//! what went wrong in an operator's words.
//!
//! What must stay true: every request has a deadline; no response body, and
//! no line of a watch stream, is held beyond [`BODY_LIMIT`]; nothing the
//! server sent reaches a log line except as an escaped, bounded excerpt; a
//! failure names the server and what was being done, and says what to fix
//! where we can tell (TLS, 401, 403, a redirect).
//!
//! The client is kube's pieces (base URI, credentials with token refresh,
//! impersonation headers, rustls) without kube's default stack: that stack
//! retries 429/503/504 by itself for minutes, below our own backoff, and logs
//! every transport error at ERROR with no server named.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::Client;
use kube::client::{Body, ConfigExt};
use tokio::time::Instant;
use tower::{BoxError, ServiceBuilder};

use super::Credentials;
use super::watch::Query;

/// Responses, and each line of a watch stream, are cut off beyond this: a
/// ConfigMap holds at most 1 MiB, which JSON escaping can grow a few times.
pub const BODY_LIMIT: usize = 8 << 20;

/// How much of a bad response a log line or error shows.
const EXCERPT: usize = 160;

/// Establishing a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client and the server it talks to, as error texts name it.
#[derive(Clone)]
pub struct Endpoint {
    pub client: Client,
    /// `scheme://host:port` of the API server.
    pub server: String,
}

/// Build a client the way Kubernetes clients find credentials: an explicit
/// `--kubeconfig` first, then the in-cluster service account, then
/// `$KUBECONFIG` or `~/.kube/config`.
pub async fn client(source: &impl Credentials) -> Result<Endpoint, String> {
    let config = match source.kubeconfig() {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("reading --kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .map_err(|e| format!("using --kubeconfig {}: {e}", path.display()))?
        }
        None => match kube::Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => kube::Config::from_kubeconfig(&Default::default())
                .await
                .map_err(|kubeconfig| {
                    format!(
                        "no Kubernetes credentials: not in a cluster ({in_cluster}) \
                         and no kubeconfig ({kubeconfig})"
                    )
                })?,
        },
    };
    let server = server_of(&config.cluster_url);
    let built = (|| -> Result<Client, kube::Error> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = config.rustls_https_connector_with_connector(http)?;
        let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(BoxError::from)
            .service(hyper);
        Ok(Client::new(service, config.default_namespace.clone()))
    })();
    let client = built.map_err(|e| {
        format!(
            "building the Kubernetes client for {server}: {}",
            escape(&e.to_string())
        )
    })?;
    Ok(Endpoint { client, server })
}

/// `scheme://host:port`, the port spelled out even when it is the default.
fn server_of(url: &http::Uri) -> String {
    let scheme = url.scheme_str().unwrap_or("https");
    let host = url.host().unwrap_or("");
    let port = url
        .port_u16()
        .unwrap_or(if scheme == "http" { 80 } else { 443 });
    format!("{scheme}://{host}:{port}")
}

/// What was being done, for error texts: "listing configmap NS/NAME".
#[derive(Debug, Clone, Copy)]
pub enum Doing<'a> {
    Listing(&'a Query),
    Watching(&'a Query),
    /// Writing an Event: the verb (create, patch) and its namespace.
    Event(&'static str, &'a str),
}

impl fmt::Display for Doing<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Doing::Listing(query) => write!(f, "listing {}", query.describe()),
            Doing::Watching(query) => write!(f, "watching {}", query.describe()),
            Doing::Event(verb, ns) => {
                let doing = if *verb == "create" {
                    "creating"
                } else {
                    "updating"
                };
                write!(f, "{doing} an event in namespace {ns}")
            }
        }
    }
}

impl Doing<'_> {
    /// "may not VERB RESOURCE in namespace NS; grant …": the RBAC to add.
    fn rbac(&self) -> String {
        match self {
            Doing::Listing(name) | Doing::Watching(name) => format!(
                "may not {verb} configmaps in namespace {ns}",
                verb = if matches!(self, Doing::Listing(_)) {
                    "list"
                } else {
                    "watch"
                },
                ns = name.namespace(),
            ),
            Doing::Event(verb, ns) => {
                format!("may not {verb} events.events.k8s.io in namespace {ns}")
            }
        }
    }

    fn grant(&self) -> String {
        match self {
            Doing::Listing(Query::Object(name)) | Doing::Watching(Query::Object(name)) => format!(
                "grant the agent's ServiceAccount a Role in {ns} with verbs [list, watch] on \
                 configmaps, resourceNames [{name}], and a RoleBinding to it",
                ns = name.namespace(),
                name = name.name(),
            ),
            // A list by label cannot be authorised by resourceNames.
            Doing::Listing(Query::Selector(selector))
            | Doing::Watching(Query::Selector(selector)) => format!(
                "grant the agent's ServiceAccount a Role in {ns} with verbs [list, watch] on \
                 configmaps without resourceNames (a label selector cannot be authorised by \
                 name; the kube-api-selector component has it), and a RoleBinding to it",
                ns = selector.namespace(),
            ),
            Doing::Event(_, ns) => format!(
                "grant the agent's ServiceAccount verbs [create, patch] on events in API group \
                 events.k8s.io in {ns}"
            ),
        }
    }
}

/// Why a request failed. Texts from the server are already escaped and
/// bounded here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, unreachable, no answer to the handshake.
    Unreachable(String),
    Tls(String),
    /// No (complete) answer within the request's budget.
    Timeout(Duration),
    /// The connection broke while the answer was being read.
    Broken(String),
    Unauthorized,
    /// 403, with the server's message.
    Forbidden(String),
    Redirect {
        code: u16,
        location: String,
    },
    /// A Kubernetes `Status` other than the above.
    Status {
        code: u16,
        reason: String,
        message: String,
    },
    /// An error status whose body is not a `Status` (a proxy's HTML page).
    NotStatus {
        code: u16,
        content_type: String,
        excerpt: String,
    },
    TooLarge,
    /// A selector picked more ConfigMaps than one source may hold.
    TooMany(usize),
    /// The answer is not what was asked for (bad JSON, wrong kind).
    BadResponse(String),
    /// The watch ended cleanly before it delivered anything worthwhile.
    WatchClosed,
}

impl Failure {
    /// A stable label for metrics, and what decides whether the state
    /// changed (one log line per change, not per retry).
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Tls(_) => "tls",
            Failure::Timeout(_) => "timeout",
            Failure::Broken(_) => "connection_broken",
            Failure::Unauthorized => "unauthorized",
            Failure::Forbidden(_) => "forbidden",
            Failure::Redirect { .. } => "redirect",
            Failure::Status { .. } => "status",
            Failure::NotStatus { .. } => "not_status",
            Failure::TooLarge => "too_large",
            Failure::TooMany(_) => "too_many_objects",
            Failure::BadResponse(_) => "bad_response",
            Failure::WatchClosed => "watch_closed",
        }
    }

    /// The whole story: server, cause, what was being done, what to fix.
    pub fn describe(&self, server: &str, doing: Doing<'_>) -> String {
        match self {
            Failure::Unreachable(cause) => format!("cannot reach {server} ({cause}) {doing}"),
            Failure::Tls(cause) => format!(
                "TLS with {server} failed ({cause}) {doing}: check the server address and the \
                 cluster CA of the kubeconfig or service account"
            ),
            Failure::Timeout(after) => format!(
                "no answer from {server} within {} s {doing}",
                after.as_secs_f64().round()
            ),
            Failure::Broken(cause) => {
                format!("the connection to {server} broke ({cause}) {doing}")
            }
            Failure::Unauthorized => format!(
                "{server} rejected the credentials (401 Unauthorized) {doing}: the token or \
                 client certificate is missing, expired or from another cluster"
            ),
            Failure::Forbidden(message) => format!(
                "{server} forbids it (403 Forbidden) {doing}: {} ({message}); {}",
                doing.rbac(),
                doing.grant()
            ),
            Failure::Redirect { code, location } => format!(
                "{server} redirected ({code} to {location}) {doing}; redirects are not followed: \
                 point the kubeconfig at the API server itself"
            ),
            Failure::Status {
                code,
                reason,
                message,
            } => format!("{server} answered {code} {reason} {doing}: {message}"),
            Failure::NotStatus {
                code,
                content_type,
                excerpt,
            } => format!(
                "{server} answered HTTP {code} with {content_type}, not a Kubernetes Status, \
                 {doing}: {excerpt}"
            ),
            Failure::TooLarge => format!(
                "the answer from {server} {doing} exceeds {} MiB and was cut off (a ConfigMap \
                 holds at most 1 MiB)",
                BODY_LIMIT >> 20
            ),
            Failure::TooMany(limit) => format!(
                "{server} sent more than {limit} matching configmaps {doing}; the selection is \
                 kept as it was: narrow the selector"
            ),
            Failure::BadResponse(what) => format!("{server} sent {what} {doing}"),
            Failure::WatchClosed => {
                format!("{server} closed the watch at once, without an event, {doing}")
            }
        }
    }
}

/// Send `request`; the response head must arrive by `deadline`. Non-2xx
/// answers become failures (their body read up to [`BODY_LIMIT`]).
pub async fn send(
    endpoint: &Endpoint,
    request: Request<Vec<u8>>,
    deadline: Instant,
) -> Result<http::Response<Body>, Failure> {
    let started = Instant::now();
    let sent = tokio::time::timeout_at(deadline, endpoint.client.send(request.map(Body::from)))
        .await
        .map_err(|_| Failure::Timeout(deadline.saturating_duration_since(started)))?;
    let response = sent.map_err(|e| transport_failure(&e, &endpoint.server))?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let headers = response.headers();
    let header_text = |name| {
        headers
            .get(name)
            .map(|v: &http::HeaderValue| escape(&bounded(&String::from_utf8_lossy(v.as_bytes()))))
    };
    let location = header_text(header::LOCATION);
    let content_type =
        header_text(header::CONTENT_TYPE).unwrap_or_else(|| "no content type".into());
    if status.is_redirection() {
        return Err(Failure::Redirect {
            code: status.as_u16(),
            location: location.unwrap_or_else(|| "nowhere".into()),
        });
    }
    let (body, _) = read_body(response.into_body(), deadline, started).await?;
    Err(error_status(status, &content_type, &body))
}

/// An error answer as a failure: the `Status` the API server sends, or
/// whatever else is there, excerpted.
fn error_status(status: StatusCode, content_type: &str, body: &[u8]) -> Failure {
    let code = status.as_u16();
    match serde_json::from_slice::<kube::core::Status>(body) {
        Ok(s) if code == 401 || s.code == 401 => Failure::Unauthorized,
        Ok(s) if code == 403 => Failure::Forbidden(escape(&bounded(&s.message))),
        Ok(s) => Failure::Status {
            code,
            reason: escape(&bounded(&s.reason)),
            message: escape(&bounded(&s.message)),
        },
        Err(_) if code == 401 => Failure::Unauthorized,
        Err(_) => Failure::NotStatus {
            code,
            content_type: content_type.to_owned(),
            excerpt: excerpt(body),
        },
    }
}

/// Send a write and read its answer (bounded, then dropped: only the
/// status matters).
pub async fn write(
    endpoint: &Endpoint,
    request: Request<Vec<u8>>,
    budget: Duration,
) -> Result<(), Failure> {
    let started = Instant::now();
    let deadline = started + budget;
    let response = send(endpoint, request, deadline).await?;
    read_body(response.into_body(), deadline, started).await?;
    Ok(())
}

/// Read a whole body, at most [`BODY_LIMIT`] bytes, by `deadline`. The
/// second value is false when the body was cut off there (the caller
/// decides whether a cut-off answer is usable).
pub async fn read_body(
    mut body: Body,
    deadline: Instant,
    started: Instant,
) -> Result<(Vec<u8>, bool), Failure> {
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| Failure::Timeout(deadline.saturating_duration_since(started)))?;
        let Some(frame) = frame else {
            return Ok((out, true));
        };
        let frame = frame.map_err(|e| Failure::Broken(cause_text(&e)))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > BODY_LIMIT {
                let room = BODY_LIMIT - out.len();
                out.extend_from_slice(&data[..room]);
                return Ok((out, false));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// The next chunk of a streaming body, by `deadline` (`Ok(None)`: the end).
pub async fn next_chunk(
    body: &mut Body,
    deadline: Instant,
) -> Result<Result<Option<Bytes>, Failure>, tokio::time::error::Elapsed> {
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await? {
            None => return Ok(Ok(None)),
            Some(Err(e)) => return Ok(Err(Failure::Broken(cause_text(&e)))),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Ok(Some(data)));
                }
            }
        }
    }
}

/// A transport error (no HTTP answer) in words: the innermost cause.
fn transport_failure(err: &kube::Error, server: &str) -> Failure {
    let cause = cause_text(err);
    let mut source: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return Failure::Unreachable("connection refused".into()),
                TimedOut => return Failure::Unreachable("connect timed out".into()),
                HostUnreachable => return Failure::Unreachable("host unreachable".into()),
                NetworkUnreachable => return Failure::Unreachable("network unreachable".into()),
                // rustls reports handshake failures as invalid data.
                InvalidData if server.starts_with("https:") => return Failure::Tls(cause),
                _ => {}
            }
        }
        source = e.source();
    }
    let lower = cause.to_ascii_lowercase();
    let connecting = chain_has(err, |e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
    });
    // The TCP connection stood (no socket error at the root): over https,
    // what failed is the handshake.
    let mut innermost: &(dyn StdError + 'static) = err;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    // (An io::Error that wraps another error is not from the socket: rustls
    // reports handshake failures that way.)
    let socket_error = innermost
        .downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.get_ref().is_none())
        || lower.contains("lookup")
        || lower.contains("dns");
    let https = server.starts_with("https:");
    if https
        && (lower.contains("certificate") || lower.contains("tls") || (connecting && !socket_error))
    {
        Failure::Tls(cause)
    } else if connecting {
        Failure::Unreachable(cause)
    } else {
        Failure::Broken(cause)
    }
}

fn chain_has(
    err: &(dyn StdError + 'static),
    is: impl Fn(&(dyn StdError + 'static)) -> bool,
) -> bool {
    let mut source = Some(err);
    while let Some(e) = source {
        if is(e) {
            return true;
        }
        source = e.source();
    }
    false
}

/// The innermost error's text (the outer ones only say "client error").
fn cause_text(err: &(dyn StdError + 'static)) -> String {
    let mut innermost = err;
    while let Some(next) = innermost.source() {
        innermost = next;
    }
    escape(&bounded(&innermost.to_string()))
}

/// At most [`EXCERPT`] bytes of `text`, on a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= EXCERPT {
        return text.to_owned();
    }
    let mut end = EXCERPT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
}

/// The start of `bytes` as escaped text, for a log line.
pub fn excerpt(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(EXCERPT)];
    let mut text = escape(&String::from_utf8_lossy(head));
    if bytes.len() > EXCERPT {
        text.push_str(&format!("… ({} bytes)", bytes.len()));
    }
    format!("\"{text}\"")
}

/// `text` with control characters (newlines included) escaped, so a value
/// from the API never starts a log line of its own.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> Query {
        Query::Object("kube-system/ip-masq-agent".parse().unwrap())
    }

    #[test]
    fn texts_from_the_server_cannot_break_a_log_line() {
        assert_eq!(
            escape("a\nb\r\tc\\d\u{1b}[31m"),
            "a\\nb\\r\\tc\\\\d\\u{1b}[31m"
        );
        let long = "x".repeat(10_000);
        let e = excerpt(long.as_bytes());
        assert!(e.len() < 200, "{e}");
        assert!(e.ends_with("… (10000 bytes)\""), "{e}");
        assert_eq!(excerpt(b"<html>\n"), "\"<html>\\n\"");
        // Not valid UTF-8, cut inside a character: still text.
        assert_eq!(excerpt(&[0xff, b'a']), "\"\u{fffd}a\"");
    }

    #[test]
    fn failures_name_server_cause_and_action() {
        let n = name();
        let server = "https://10.0.0.1:443";
        assert_eq!(
            Failure::Unreachable("connection refused".into()).describe(server, Doing::Listing(&n)),
            "cannot reach https://10.0.0.1:443 (connection refused) listing configmap kube-system/ip-masq-agent"
        );
        let forbidden = Failure::Forbidden("User \"x\" cannot watch".into())
            .describe(server, Doing::Watching(&n));
        for needle in [
            "403 Forbidden",
            "may not watch configmaps in namespace kube-system",
            "verbs [list, watch]",
            "resourceNames [ip-masq-agent]",
            "RoleBinding",
        ] {
            assert!(forbidden.contains(needle), "{needle}: {forbidden}");
        }
        assert!(
            Failure::Unauthorized
                .describe(server, Doing::Listing(&n))
                .contains("rejected the credentials (401 Unauthorized)")
        );
        assert!(
            Failure::Tls("invalid peer certificate: UnknownIssuer".into())
                .describe(server, Doing::Listing(&n))
                .starts_with("TLS with https://10.0.0.1:443 failed (invalid peer certificate")
        );
    }

    #[test]
    fn a_forbidden_selector_asks_for_list_and_watch_without_names() {
        let query = Query::Selector("kube-system/example.com/part=users".parse().unwrap());
        let text = Failure::Forbidden("cannot list".into())
            .describe("https://h:443", Doing::Listing(&query));
        for needle in [
            "listing configmaps of namespace kube-system selected by example.com/part=users",
            "may not list configmaps in namespace kube-system",
            "verbs [list, watch] on configmaps without resourceNames",
            "kube-api-selector",
        ] {
            assert!(text.contains(needle), "{needle}: {text}");
        }
        let many = Failure::TooMany(100).describe("https://h:443", Doing::Watching(&query));
        assert!(
            many.contains(
                "more than 100 matching configmaps watching configmaps of namespace kube-system"
            ),
            "{many}"
        );
    }

    #[test]
    fn error_answers_are_sorted_by_what_they_are() {
        let status = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"configmaps is forbidden:\nUser","reason":"Forbidden","code":403}"#;
        assert_eq!(
            error_status(StatusCode::FORBIDDEN, "application/json", status),
            Failure::Forbidden("configmaps is forbidden:\\nUser".into())
        );
        assert_eq!(
            error_status(StatusCode::UNAUTHORIZED, "text/plain", b"nope"),
            Failure::Unauthorized
        );
        let html = error_status(
            StatusCode::BAD_GATEWAY,
            "text/html",
            b"<html>\n<body>502 Bad Gateway</body></html>",
        );
        assert_eq!(html.kind(), "not_status");
        assert!(
            html.describe("http://h:80", Doing::Listing(&name()))
                .contains("HTTP 502 with text/html, not a Kubernetes Status")
        );
    }

    #[test]
    fn server_urls_spell_the_port() {
        assert_eq!(
            server_of(&"https://10.96.0.1".parse().unwrap()),
            "https://10.96.0.1:443"
        );
        assert_eq!(
            server_of(&"http://127.0.0.1:8080/".parse().unwrap()),
            "http://127.0.0.1:8080"
        );
    }
}
