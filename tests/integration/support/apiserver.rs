//! A fake kube-apiserver that runs in the test process and speaks the real
//! HTTP protocol, for the agent's Kubernetes config source (issue #6).
//!
//! It serves ConfigMaps (`/api/v1/…/configmaps`) and events.k8s.io/v1
//! Events (`/apis/events.k8s.io/v1/…/events`) the way kube-apiserver does:
//! JSON objects with `resourceVersion`, `uid` and `creationTimestamp`; lists
//! with `ListMeta`, field and label selectors, `limit`/`continue`, and the
//! `resourceVersion`/`resourceVersionMatch` rules; watches as a chunked
//! stream of newline-delimited `{"type","object"}` events with bookmarks,
//! `timeoutSeconds`, `sendInitialEvents`, and `410 Gone` (`Expired`) once a
//! resourceVersion has been compacted away; writes (create, update, JSON
//! merge patch, delete) with optimistic concurrency and the Event
//! validation of the real server; failures as `Status` objects. The code
//! under test only gets a kubeconfig and cannot tell it from a real server.
//!
//! Misbehaviour on demand, for the client's failure handling: ConfigMap
//! lists and watches can redirect, hang, send HTML, bad JSON, huge bodies,
//! close at once or stream bad lines (`set_list_fault`, `set_watch_fault`),
//! or ignore the name selector (`ignore_name_selector`), or answer every
//! ConfigMap list and watch with every ConfigMap of every namespace
//! (`send_every_configmap`).
//!
//! Tests drive it through a synchronous control API (`put_configmap`,
//! `expire_watches`, `restart`, …) from plain `#[test]` functions and read
//! back what was written (`events`, `describe_events_for`, `requests`).
//! For an agent inside a test network namespace:
//!
//! ```text
//! let server = FakeApiServer::start(listen_in_netns(ns.name())?);
//! server.write_kubeconfig(&dir.join("kubeconfig"))?;   // http://127.0.0.1:PORT
//! ip netns exec NS ip-masq-agent --kubeconfig DIR/kubeconfig --configmap kube-system/ip-masq-agent
//! ```
//!
//! Not modelled: TLS and client certificates (bearer token over http only),
//! discovery (`/api`, `/apis`), core/v1 `events` (kubectl's view of them:
//! `describe_events_for` renders it instead), JSON patch and server-side
//! apply (415), `deletecollection`, `dryRun`, `fieldManager` and
//! managedFields, protobuf, HTTP/2, watch-cache staleness, Event TTL.
//! Strategic merge patch is treated as JSON merge patch (the same for
//! ConfigMap and Event data). kube's client retries 429/503/504 by itself,
//! with backoff, for minutes: a test of `set_unavailable` waits for that.
//!
//! What must stay true:
//! - One global `resourceVersion`, bumped by every write of any resource (as
//!   etcd's revision is). Every change since the last compaction is kept, so
//!   a watch can resume from any resourceVersion not older than that.
//! - A change is recorded and sent to every open watch under one lock, so a
//!   watch started from resourceVersion N sees every later change once.
//! - Each serving generation owns its own tokio runtime on its own thread;
//!   dropping that runtime drops every connection at once (`restart`).
//! - Self-contained (std, tokio, axum, serde_json, k8s-openapi,
//!   futures-util, nix), so a benchmark can include this file by `#[path]`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures_util::stream;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use nix::sched::{CloneFlags, setns};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot, watch};

/// The bearer token of the kubeconfig; any other (or none) gets `401`.
pub const TOKEN: &str = "imqa-fake-apiserver-token";

/// The user that token authenticates as, named in `403` messages.
pub const USER: &str = "system:serviceaccount:kube-system:ip-masq-agent";

/// Namespaces that exist from the start, as in a fresh cluster.
const NAMESPACES: [&str; 4] = ["default", "kube-node-lease", "kube-public", "kube-system"];

/// How long a request for a resourceVersion the server has not reached yet
/// waits for it (the watch cache's 3 s) before `504 Timeout`.
const TOO_LARGE_WAIT: Duration = Duration::from_secs(3);

/// Watch duration when the client sets no `timeoutSeconds`
/// (kube-apiserver's `--min-request-timeout`).
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

/// Periodic bookmark interval of the watch cache.
const DEFAULT_BOOKMARK_INTERVAL: Duration = Duration::from_secs(60);

/// The real server also sends a bookmark this long before a watch times out.
const PRE_TIMEOUT_BOOKMARK: Duration = Duration::from_secs(2);

/// Changes kept for resuming watches; older ones are compacted away (as the
/// watch cache's capacity and etcd compaction do).
const HISTORY_CAPACITY: usize = 10_000;

/// How long `bring_up` retries binding the old address.
const REBIND_DEADLINE: Duration = Duration::from_secs(10);

/// A running fake apiserver. Dropping it stops serving and closes every
/// connection.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// The network namespace the listener lives in, when it is not this
    /// thread's own: `bring_up` binds the address again in there.
    netns: Option<OwnedFd>,
    serving: Mutex<Option<Serving>>,
}

/// One serving generation: a thread running a tokio runtime with the
/// listener and every connection on it.
struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

impl FakeApiServer {
    /// Serves on `listener` (e.g. from `listen_in_netns`) from a background
    /// thread. Panics if the listener cannot be used.
    pub fn start(listener: TcpListener) -> FakeApiServer {
        let addr = listener.local_addr().expect("the listener's address");
        let netns = foreign_netns(&listener);
        let (rv_tx, _) = watch::channel(1);
        let store = Store {
            rv: 1,
            compacted: 1,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            namespaces: NAMESPACES.iter().map(|s| s.to_string()).collect(),
            watchers: Vec::new(),
            next_watcher: 0,
            requests: Vec::new(),
            unavailable: false,
            denied: BTreeSet::new(),
            denied_in: BTreeSet::new(),
            list_fault: None,
            watch_fault: None,
            ignore_name_selector: false,
            send_every_configmap: false,
            bookmark_interval: DEFAULT_BOOKMARK_INTERVAL,
            rv_tx,
        };
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
        });
        let serving = spawn_serving(shared.clone(), listener).expect("start serving");
        FakeApiServer {
            shared,
            addr,
            netns,
            serving: Mutex::new(Some(serving)),
        }
    }

    /// Serves on a fresh port of 127.0.0.1 in this process's namespace.
    pub fn start_local() -> FakeApiServer {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        FakeApiServer::start(listener)
    }

    /// The address served on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, the cluster's server URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig whose current context reaches this server with `TOKEN`
    /// (plain http: kube's client accepts http server URLs).
    pub fn kubeconfig_yaml(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: fake
  cluster:
    server: {url}
contexts:
- name: fake
  context:
    cluster: fake
    user: fake
    namespace: kube-system
current-context: fake
users:
- name: fake
  user:
    token: {TOKEN}
preferences: {{}}
",
            url = self.url()
        )
    }

    /// Writes `kubeconfig_yaml` to `path` (for `--kubeconfig` or `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &Path) -> io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml())
    }

    /// Creates or updates ConfigMap `ns/name` holding `data` (labels and
    /// other fields kept), as `kubectl apply` would; creates the namespace if
    /// needed. Returns the object's resourceVersion, which is unchanged when
    /// `data` already was the content (the real server skips no-op updates).
    pub fn put_configmap(&self, ns: &str, name: &str, data: BTreeMap<String, String>) -> u64 {
        let mut store = self.shared.lock();
        let key = (Resource::ConfigMaps, ns.to_owned(), name.to_owned());
        let mut object = store
            .objects
            .get(&key)
            .cloned()
            .unwrap_or_else(|| Resource::ConfigMaps.skeleton(ns, name));
        object["data"] = json!(data);
        store.namespaces.insert(ns.to_owned());
        store.put_checked(key, object)
    }

    /// Creates or replaces ConfigMap `ns/name` with `object`'s `data`,
    /// `binaryData`, `immutable` and `metadata.labels`/`annotations`; the
    /// server sets name, namespace, uid, creationTimestamp and
    /// resourceVersion. Panics on what the real server would reject (an
    /// invalid key, over 1 MiB, a change to an immutable ConfigMap).
    pub fn put_configmap_object(&self, ns: &str, name: &str, object: Value) -> u64 {
        let mut store = self.shared.lock();
        let key = (Resource::ConfigMaps, ns.to_owned(), name.to_owned());
        let mut new = Resource::ConfigMaps.skeleton(ns, name);
        for field in ["data", "binaryData", "immutable"] {
            if let Some(v) = object.get(field) {
                new[field] = v.clone();
            }
        }
        for field in ["labels", "annotations"] {
            if let Some(v) = object.pointer(&format!("/metadata/{field}")) {
                new["metadata"][field] = v.clone();
            }
        }
        store.namespaces.insert(ns.to_owned());
        store.put_checked(key, new)
    }

    /// Deletes ConfigMap `ns/name` (watchers get DELETED); false if absent.
    pub fn delete_configmap(&self, ns: &str, name: &str) -> bool {
        let mut store = self.shared.lock();
        let key = (Resource::ConfigMaps, ns.to_owned(), name.to_owned());
        if !store.objects.contains_key(&key) {
            return false;
        }
        store.commit(key, None);
        true
    }

    /// ConfigMap `ns/name` as stored, if it exists.
    pub fn configmap(&self, ns: &str, name: &str) -> Option<ConfigMap> {
        let store = self.shared.lock();
        let key = (Resource::ConfigMaps, ns.to_owned(), name.to_owned());
        let object = store.objects.get(&key)?.clone();
        Some(serde_json::from_value(object).expect("a stored ConfigMap decodes"))
    }

    /// Makes namespace `ns` exist (objects can only be created in one).
    pub fn create_namespace(&self, ns: &str) {
        self.shared.lock().namespaces.insert(ns.to_owned());
    }

    /// The current (global) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Sends a BOOKMARK at the current resourceVersion to every open watch
    /// that asked for bookmarks (`allowWatchBookmarks=true`).
    pub fn send_bookmark(&self) {
        let store = self.shared.lock();
        for w in store.watchers.iter().filter(|w| w.bookmarks) {
            let _ = w.tx.send(WatchMsg::Line(bookmark_line(
                w.filter.resource,
                store.rv,
                false,
            )));
        }
    }

    /// Sets the periodic bookmark interval for watches started from now on
    /// (real servers: about a minute).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        self.shared.lock().bookmark_interval = interval;
    }

    /// Compacts all history, as etcd does: every open watch ends with an
    /// ERROR event carrying a `410 Expired` Status ("too old resource
    /// version"), and every watch, exact list or continue token from an
    /// older resourceVersion gets `410` too, until the client lists again.
    pub fn expire_watches(&self) {
        let mut store = self.shared.lock();
        store.compacted = store.rv;
        store.history.clear();
        let compacted = store.compacted;
        for w in store.watchers.drain(..) {
            let status = expired_status(w.sent_rv, compacted);
            let _ = w.tx.send(WatchMsg::Line(error_line(&status)));
            let _ = w.tx.send(WatchMsg::Close);
        }
    }

    /// Simulates an apiserver restart: every connection (open watches
    /// included) is dropped, then the same address is served again. State
    /// (objects, resourceVersions, history) is kept, as etcd keeps it.
    pub fn restart(&self) {
        self.take_down();
        self.bring_up();
    }

    /// Stops serving: the listener is closed (connecting is refused) and
    /// every open connection is dropped. No-op if already down.
    pub fn take_down(&self) {
        let serving = self.serving_lock().take();
        if let Some(serving) = serving {
            let _ = serving.stop.send(());
            let _ = serving.thread.join();
        }
    }

    /// Serves the same address again after `take_down` (in the network
    /// namespace the listener was made in). No-op if already serving.
    pub fn bring_up(&self) {
        let mut serving = self.serving_lock();
        if serving.is_some() {
            return;
        }
        let started = Instant::now();
        let listener = loop {
            match bind_in(self.netns.as_ref(), self.addr) {
                Ok(l) => break l,
                Err(e) if started.elapsed() < REBIND_DEADLINE => {
                    eprintln!("fake apiserver: rebinding {}: {e}; retrying", self.addr);
                    thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("fake apiserver: cannot bind {} again: {e}", self.addr),
            }
        };
        *serving = Some(spawn_serving(self.shared.clone(), listener).expect("serve again"));
    }

    /// While true, every request (probes aside) gets `503 ServiceUnavailable`;
    /// open watches continue.
    pub fn set_unavailable(&self, unavailable: bool) {
        self.shared.lock().unavailable = unavailable;
    }

    /// Makes RBAC deny `verb` (get, list, watch, create, update, patch,
    /// delete) on `resource` (plural: configmaps, events) with `403`.
    pub fn deny(&self, verb: &str, resource: &str) {
        let mut store = self.shared.lock();
        store.denied.insert((verb.to_owned(), resource.to_owned()));
    }

    /// Makes every ConfigMap list misbehave as `fault` says (`None`: serve
    /// normally again). Watches are not affected.
    pub fn set_list_fault(&self, fault: Option<ListFault>) {
        self.shared.lock().list_fault = fault;
    }

    /// Makes every ConfigMap watch misbehave as `fault` says (`None`: serve
    /// normally again). Lists are not affected.
    pub fn set_watch_fault(&self, fault: Option<WatchFault>) {
        self.shared.lock().watch_fault = fault;
    }

    /// While true, ConfigMap lists and watches ignore a `metadata.name`
    /// field selector (as a broken proxy or an old server might) and serve
    /// every ConfigMap of the namespace.
    pub fn ignore_name_selector(&self, ignore: bool) {
        self.shared.lock().ignore_name_selector = ignore;
    }

    /// Lists and watches of ConfigMaps ignore the namespace and every
    /// selector: a server that sends anything.
    pub fn send_every_configmap(&self, every: bool) {
        self.shared.lock().send_every_configmap = every;
    }

    /// Makes RBAC deny `verb` on `resource` in `namespace` only with `403`,
    /// as a cluster whose Role grants it in the other namespaces.
    pub fn deny_in(&self, verb: &str, resource: &str, namespace: &str) {
        let mut store = self.shared.lock();
        store
            .denied_in
            .insert((verb.to_owned(), resource.to_owned(), namespace.to_owned()));
    }

    /// Lifts every `deny` and `deny_in`.
    pub fn allow_all(&self) {
        let mut store = self.shared.lock();
        store.denied.clear();
        store.denied_in.clear();
    }

    /// Every request served so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.shared.lock().requests.clone()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Watch streams open right now.
    pub fn watch_count(&self) -> usize {
        self.shared.lock().watchers.len()
    }

    /// Every stored events.k8s.io/v1 Event, by namespace and name.
    pub fn events(&self) -> Vec<Event> {
        self.events_json()
            .into_iter()
            .map(|v| serde_json::from_value(v).expect("a stored Event decodes"))
            .collect()
    }

    /// Every stored Event as the JSON the server returns for it.
    pub fn events_json(&self) -> Vec<Value> {
        let store = self.shared.lock();
        store
            .objects
            .iter()
            .filter(|(k, _)| k.0 == Resource::Events)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The `Events:` section `kubectl describe KIND -n NS NAME` would print
    /// for the object, from the Events stored now.
    pub fn describe_events_for(&self, kind: &str, ns: &str, name: &str) -> String {
        let events: Vec<Event> = self
            .events()
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind)
                        && r.namespace.as_deref().unwrap_or("") == ns
                        && r.name.as_deref() == Some(name)
                })
            })
            .collect();
        render_events_table(&events, Timestamp::now())
    }

    fn serving_lock(&self) -> MutexGuard<'_, Option<Serving>> {
        self.serving.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.take_down();
    }
}

/// How ConfigMap lists misbehave (`set_list_fault`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListFault {
    /// `302 Found` to another address, empty body.
    Redirect,
    /// `502` with a proxy's HTML error page (lines and all).
    HtmlError,
    /// `200` with a JSON document cut off after this many bytes of filler.
    BadJson(usize),
    /// `200`, a well-formed list padded to this many bytes, streamed.
    Huge(usize),
    /// Accepts the request and never answers.
    Hang,
}

/// How ConfigMap watches misbehave (`set_watch_fault`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchFault {
    /// `302 Found` to another address, empty body.
    Redirect,
    /// `200` and the stream ends at once, without a line.
    ClosesAtOnce,
    /// `200`, then a line that is not JSON every 10 ms, without end.
    BadLines,
    /// `200`, then this many bytes without a newline.
    HugeLine(usize),
}

/// Where fault redirects point: a port nothing listens on.
const REDIRECT_TO: &str = "http://127.0.0.1:1/api/v1/elsewhere";

/// Filler streamed `total` bytes long, in 64 KiB chunks, after `head`.
fn filler_body(head: String, total: usize, tail: &'static str) -> Body {
    const CHUNK: usize = 64 << 10;
    let pad = total.saturating_sub(head.len() + tail.len());
    let chunks = (0..pad.div_ceil(CHUNK)).map(move |i| {
        let n = CHUNK.min(pad - i * CHUNK);
        Ok::<_, Infallible>(Bytes::from(vec![b'x'; n]))
    });
    let all = std::iter::once(Ok(Bytes::from(head)))
        .chain(chunks)
        .chain(std::iter::once(Ok(Bytes::from_static(tail.as_bytes()))));
    Body::from_stream(stream::iter(all))
}

fn redirect_response() -> Response {
    Response::builder()
        .status(302)
        .header(header::LOCATION, REDIRECT_TO)
        .body(Body::empty())
        .expect("a valid redirect")
}

/// The answer to a ConfigMap list under `fault`.
async fn faulty_list(fault: ListFault) -> Response {
    match fault {
        ListFault::Redirect => redirect_response(),
        ListFault::HtmlError => Response::builder()
            .status(502)
            .header(header::CONTENT_TYPE, "text/html")
            .body(Body::from(
                "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n",
            ))
            .expect("a valid response"),
        ListFault::BadJson(filler) => Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .body(filler_body(
                "{\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"items\":[{\"data\":\"".into(),
                filler,
                "\n",
            ))
            .expect("a valid response"),
        ListFault::Huge(total) => Response::builder()
            .status(200)
            .header(header::CONTENT_TYPE, "application/json")
            .body(filler_body(
                "{\"kind\":\"ConfigMapList\",\"apiVersion\":\"v1\",\"metadata\":{\"resourceVersion\":\"1\"},\"items\":[],\"padding\":\"".into(),
                total,
                "\"}",
            ))
            .expect("a valid response"),
        ListFault::Hang => std::future::pending().await,
    }
}

/// The answer to a ConfigMap watch under `fault`.
fn faulty_watch(fault: WatchFault) -> Response {
    match fault {
        WatchFault::Redirect => redirect_response(),
        WatchFault::ClosesAtOnce => watch_response(Body::empty()),
        WatchFault::BadLines => {
            let lines = stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Some((
                    Ok::<_, Infallible>(Bytes::from_static(b"<html>not a watch event</html>\n")),
                    (),
                ))
            });
            watch_response(Body::from_stream(lines))
        }
        WatchFault::HugeLine(total) => watch_response(filler_body(String::new(), total, "")),
    }
}

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    /// Query parameters, decoded, in order (empty pieces dropped).
    pub query: Vec<(String, String)>,
    pub content_type: Option<String>,
    /// The request body, for requests that have one.
    pub body: String,
    /// The response status (for a watch: of the response head).
    pub status: u16,
}

impl LoggedRequest {
    /// The value of query parameter `key`, if given.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True for a watch request (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        self.param("watch")
            .is_some_and(|v| parse_bool(v) == Some(true))
    }
}

impl fmt::Display for LoggedRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            write!(f, "{}{k}={v}", if i == 0 { '?' } else { '&' })?;
        }
        if let Some(ct) = &self.content_type {
            write!(f, " ({ct})")?;
        }
        write!(f, " -> {}", self.status)
    }
}

/// A TCP listener on 127.0.0.1 (fresh port) inside network namespace
/// `/run/netns/NAME`: a socket stays in the namespace it was made in, so a
/// process run with `ip netns exec NAME` reaches it and the root namespace
/// does not. Needs root.
pub fn listen_in_netns(netns_name: &str) -> io::Result<TcpListener> {
    let ns = File::open(format!("/run/netns/{netns_name}"))?;
    bind_in(
        Some(&OwnedFd::from(ns)),
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
    )
}

/// Binds `addr` in namespace `netns` (or this thread's own), from a
/// short-lived thread that enters the namespace: `setns` changes only the
/// calling thread, and the socket keeps the namespace it was made in.
fn bind_in(netns: Option<&OwnedFd>, addr: SocketAddr) -> io::Result<TcpListener> {
    let Some(ns) = netns else {
        return TcpListener::bind(addr);
    };
    let ns = ns.try_clone()?;
    thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        TcpListener::bind(addr)
    })
    .join()
    .map_err(|_| io::Error::other("the binding thread panicked"))?
}

// SIOCGSKNS (linux/sockios.h): a new descriptor for the socket's network
// namespace (Linux 4.9+; needs CAP_NET_ADMIN there).
nix::ioctl_none_bad!(siocgskns, 0x894C);

/// The network namespace `listener` lives in, when it is not this thread's;
/// None when it is, or when that cannot be told (no CAP_NET_ADMIN, so no
/// test namespaces either).
fn foreign_netns(listener: &TcpListener) -> Option<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument; it only reads the socket.
    let raw = unsafe { siocgskns(listener.as_raw_fd()) }.ok()?;
    // SAFETY: on success the ioctl returned a new descriptor owned by no one.
    let theirs = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    let theirs_meta = theirs.metadata().ok()?;
    let ours = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    let same = (theirs_meta.dev(), theirs_meta.ino()) == (ours.dev(), ours.ino());
    (!same).then(|| OwnedFd::from(theirs))
}

fn spawn_serving(shared: Arc<Shared>, listener: TcpListener) -> io::Result<Serving> {
    listener.set_nonblocking(true)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = thread::Builder::new()
        .name("fake-apiserver".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the fake apiserver");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener)
                    .expect("a tokio listener from the std one");
                let app = Router::new().fallback(handle).with_state(shared);
                let serve = std::future::IntoFuture::into_future(axum::serve(listener, app));
                tokio::select! {
                    result = serve => {
                        if let Err(e) = result {
                            eprintln!("fake apiserver stopped: {e}");
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Dropping the runtime drops every connection task: their
            // sockets close now, as when a real apiserver process dies.
            drop(runtime);
        })?;
    Ok(Serving { stop, thread })
}

// ---------------------------------------------------------------------------
// State

/// The resources served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Resource {
    ConfigMaps,
    Events,
}

impl Resource {
    fn plural(self) -> &'static str {
        match self {
            Resource::ConfigMaps => "configmaps",
            Resource::Events => "events",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Resource::ConfigMaps => "",
            Resource::Events => "events.k8s.io",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::ConfigMaps => "v1",
            Resource::Events => "events.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::ConfigMaps => "ConfigMap",
            Resource::Events => "Event",
        }
    }

    /// `configmaps`, `events.events.k8s.io`: how Status messages name it.
    fn qualified(self) -> String {
        match self.group() {
            "" => self.plural().to_owned(),
            group => format!("{}.{group}", self.plural()),
        }
    }

    /// `ConfigMap`, `Event.events.k8s.io`: as in "… is invalid" messages.
    fn qualified_kind(self) -> String {
        match self.group() {
            "" => self.kind().to_owned(),
            group => format!("{}.{group}", self.kind()),
        }
    }

    /// The field selectors the real server supports for it.
    fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::ConfigMaps => &["metadata.name", "metadata.namespace"],
            Resource::Events => &[
                "metadata.name",
                "metadata.namespace",
                "regarding.kind",
                "regarding.namespace",
                "regarding.name",
                "regarding.uid",
                "regarding.apiVersion",
                "regarding.resourceVersion",
                "regarding.fieldPath",
                "reason",
                "reportingController",
                "type",
            ],
        }
    }

    /// Whether PUT to a missing name creates it (true for Events only).
    fn creates_on_update(self) -> bool {
        self == Resource::Events
    }

    fn skeleton(self, ns: &str, name: &str) -> Value {
        json!({
            "apiVersion": self.api_version(),
            "kind": self.kind(),
            "metadata": {"name": name, "namespace": ns},
        })
    }

    /// Decodes `value` as this resource's type and encodes it again, as the
    /// real server does: unknown fields go, times get their wire precision
    /// (MicroTime: microseconds), apiVersion and kind are set.
    fn normalize(self, value: Value) -> Result<Value, String> {
        fn roundtrip<
            T: k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize,
        >(
            value: Value,
        ) -> Result<Value, String> {
            let typed: T = serde_json::from_value(value).map_err(|e| e.to_string())?;
            serde_json::to_value(typed).map_err(|e| e.to_string())
        }
        match self {
            Resource::ConfigMaps => roundtrip::<ConfigMap>(value),
            Resource::Events => roundtrip::<Event>(value),
        }
    }

    fn validate_create(self, object: &Value) -> Vec<FieldError> {
        match self {
            Resource::ConfigMaps => validate_configmap(object),
            Resource::Events => validate_event(object),
        }
    }

    fn validate_update(self, new: &Value, old: &Value) -> Vec<FieldError> {
        match self {
            Resource::ConfigMaps => {
                let mut errs = validate_configmap(new);
                errs.extend(validate_configmap_update(new, old));
                errs
            }
            Resource::Events => {
                let mut errs = validate_event(new);
                errs.extend(validate_event_update(new, old));
                errs
            }
        }
    }
}

/// (resource, namespace, name).
type Key = (Resource, String, String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One write, as kept for watches resuming from an older resourceVersion.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: ChangeKind,
    key: Key,
    /// The new state; for a deletion, the last state with the deletion's rv.
    object: Value,
    /// The state before (None for an addition).
    prev: Option<Value>,
}

enum WatchMsg {
    Line(Bytes),
    Close,
}

struct Watcher {
    id: u64,
    filter: Filter,
    bookmarks: bool,
    /// The resourceVersion of the last event sent (for the 410 message).
    sent_rv: u64,
    tx: mpsc::UnboundedSender<WatchMsg>,
}

struct Shared {
    store: Mutex<Store>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // Each operation leaves the store consistent before it can panic.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Store {
    rv: u64,
    /// Changes after this resourceVersion are all in `history`; anything
    /// older is gone (410).
    compacted: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Change>,
    namespaces: BTreeSet<String>,
    watchers: Vec<Watcher>,
    next_watcher: u64,
    requests: Vec<LoggedRequest>,
    unavailable: bool,
    denied: BTreeSet<(String, String)>,
    /// Denied in one namespace: verb, resource, namespace.
    denied_in: BTreeSet<(String, String, String)>,
    list_fault: Option<ListFault>,
    watch_fault: Option<WatchFault>,
    /// Lists and watches of ConfigMaps ignore `metadata.name` selectors.
    ignore_name_selector: bool,
    /// Lists and watches of ConfigMaps ignore namespace and selectors.
    send_every_configmap: bool,
    bookmark_interval: Duration,
    /// The current rv, for requests waiting for a future one.
    rv_tx: watch::Sender<u64>,
}

impl Store {
    /// Records a write of `key` (`None`: deletion), sends it to the
    /// matching watches and returns the new resourceVersion.
    fn commit(&mut self, key: Key, new: Option<Value>) -> u64 {
        let prev = self.objects.get(&key).cloned();
        let kind = match (&prev, &new) {
            (None, Some(_)) => ChangeKind::Added,
            (Some(_), Some(_)) => ChangeKind::Modified,
            (Some(_), None) => ChangeKind::Deleted,
            (None, None) => return self.rv,
        };
        self.rv += 1;
        let rv = self.rv;
        let object = match new {
            Some(mut object) => {
                set_rv(&mut object, rv);
                self.objects.insert(key.clone(), object.clone());
                object
            }
            None => {
                self.objects.remove(&key);
                let mut last = prev.clone().expect("a deleted object existed");
                set_rv(&mut last, rv);
                last
            }
        };
        let change = Change {
            rv,
            kind,
            key,
            object,
            prev,
        };
        for w in &mut self.watchers {
            if let Some(event) = w.filter.event_for(&change) {
                w.sent_rv = rv;
                let _ = w.tx.send(WatchMsg::Line(line(&event)));
            }
        }
        self.watchers.retain(|w| !w.tx.is_closed());
        self.history.push_back(change);
        while self.history.len() > HISTORY_CAPACITY {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.rv_tx.send_replace(rv);
        rv
    }

    /// A write from the control API: validated like an API write (a test
    /// cannot make what a real cluster would refuse), skipped if nothing
    /// changes. Returns the object's resourceVersion.
    fn put_checked(&mut self, key: Key, mut object: Value) -> u64 {
        let resource = key.0;
        let old = self.objects.get(&key).cloned();
        if let Some(old) = &old {
            for field in ["uid", "creationTimestamp", "resourceVersion"] {
                object["metadata"][field] = old["metadata"][field].clone();
            }
        } else {
            object["metadata"]["uid"] = json!(new_uid());
            object["metadata"]["creationTimestamp"] = json!(Time(Timestamp::now()));
        }
        let object = resource
            .normalize(object)
            .unwrap_or_else(|e| panic!("not a valid {}: {e}", resource.kind()));
        let errs = match &old {
            Some(old) => resource.validate_update(&object, old),
            None => resource.validate_create(&object),
        };
        assert!(
            errs.is_empty(),
            "the real server would refuse this {}: {}",
            resource.kind(),
            join_errors(&errs)
        );
        match old {
            Some(old) if old == object => object_rv(&old),
            _ => self.commit(key, Some(object)),
        }
    }

    /// Every object as of resourceVersion `rv` (`compacted <= rv <= self.rv`),
    /// by undoing the later changes.
    fn objects_at(&self, rv: u64) -> BTreeMap<Key, Value> {
        let mut objects = self.objects.clone();
        for change in self.history.iter().rev().take_while(|c| c.rv > rv) {
            match &change.prev {
                Some(prev) => objects.insert(change.key.clone(), prev.clone()),
                None => objects.remove(&change.key),
            };
        }
        objects
    }

    fn log(&mut self, request: LoggedRequest) {
        self.requests.push(request);
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
}

fn object_rv(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Selectors

#[derive(Clone, Debug)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

#[derive(Clone, Debug)]
enum LabelReq {
    Equal(String, String),
    NotEqual(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// Which objects a list or watch is about.
#[derive(Clone, Debug)]
struct Filter {
    resource: Resource,
    namespace: Option<String>,
    fields: Vec<FieldReq>,
    labels: Vec<LabelReq>,
}

impl Filter {
    fn matches(&self, key: &Key, object: &Value) -> bool {
        key.0 == self.resource
            && self.namespace.as_ref().is_none_or(|ns| *ns == key.1)
            && self.fields.iter().all(|f| {
                let actual = object
                    .pointer(&format!("/{}", f.field.replace('.', "/")))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                (actual == f.value) == f.equal
            })
            && self.labels.iter().all(|l| {
                let labels = object.pointer("/metadata/labels");
                let get = |k: &str| labels.and_then(|m| m.get(k)).and_then(Value::as_str);
                match l {
                    LabelReq::Equal(k, v) => get(k) == Some(v),
                    LabelReq::NotEqual(k, v) => get(k) != Some(v),
                    LabelReq::In(k, set) => get(k).is_some_and(|v| set.contains(v)),
                    LabelReq::NotIn(k, set) => !get(k).is_some_and(|v| set.contains(v)),
                    LabelReq::Exists(k) => get(k).is_some(),
                    LabelReq::NotExists(k) => get(k).is_none(),
                }
            })
    }

    /// The watch event `change` becomes for this filter, if any: an object
    /// that starts matching is ADDED, one that stops matching is DELETED
    /// (its previous state at the new resourceVersion), as the watch cache
    /// does.
    fn event_for(&self, change: &Change) -> Option<Value> {
        let key = &change.key;
        let now = change.kind != ChangeKind::Deleted && self.matches(key, &change.object);
        let was = change.prev.as_ref().is_some_and(|p| self.matches(key, p));
        let (kind, object) = match (was, now) {
            (true, true) => ("MODIFIED", change.object.clone()),
            (false, true) => ("ADDED", change.object.clone()),
            (true, false) => {
                let mut last = change.prev.clone().expect("was matching, so existed");
                set_rv(&mut last, change.rv);
                ("DELETED", last)
            }
            (false, false) => return None,
        };
        Some(json!({"type": kind, "object": object}))
    }
}

fn parse_field_selector(resource: Resource, text: &str) -> Result<Vec<FieldReq>, String> {
    let mut reqs = Vec::new();
    for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==") {
            (f, v, true)
        } else if let Some((f, v)) = term.split_once('=') {
            (f, v, true)
        } else {
            return Err(format!(
                "invalid selector: '{text}'; can't understand '{term}'"
            ));
        };
        let field = field.trim();
        if !resource.field_labels().contains(&field) {
            return Err(format!(
                "\"{field}\" is not a known field selector: only \"{}\"",
                resource.field_labels().join("\", \"")
            ));
        }
        reqs.push(FieldReq {
            field: field.to_owned(),
            value: value.trim().to_owned(),
            equal,
        });
    }
    Ok(reqs)
}

fn parse_label_selector(text: &str) -> Result<Vec<LabelReq>, String> {
    // Split on commas outside parentheses (`k in (a,b)` keeps its set).
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    // Keys and values are validated as the real server validates them
    // (`labels.NewRequirement`): a 400 for what it would refuse.
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
        let prefix_ok = prefix.is_none_or(|p| {
            !p.is_empty()
                && p.len() <= 253
                && p.split('.').all(|part| {
                    !part.is_empty()
                        && part
                            .chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !part.starts_with('-')
                        && !part.ends_with('-')
                })
        });
        if !prefix_ok || name.is_empty() || !label_name_ok(name) {
            return Err(format!(
                "unable to parse requirement: key: Invalid value: \"{k}\": name part must consist of alphanumeric \
                 characters, '-', '_' or '.', and must start and end with an alphanumeric character"
            ));
        }
        Ok(k.to_owned())
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if !v.is_empty() && !label_name_ok(v) {
            return Err(format!(
                "unable to parse requirement: values[0][{v}]: Invalid value: \"{v}\": a valid label must be an empty \
                 string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                 alphanumeric character"
            ));
        }
        Ok(v.to_owned())
    };
    let set = |s: &str| -> Result<BTreeSet<String>, String> {
        let inner = s
            .trim()
            .strip_prefix('(')
            .and_then(|s| s.strip_suffix(')'))
            .ok_or_else(|| format!("unable to parse requirement: expected a set in '{s}'"))?;
        let values: BTreeSet<String> = inner.split(',').map(value).collect::<Result<_, _>>()?;
        if inner.trim().is_empty() {
            return Err("unable to parse requirement: for 'in', 'notin' operators, values set can't be empty".into());
        }
        Ok(values)
    };
    let mut reqs = Vec::new();
    for term in terms.into_iter().map(str::trim).filter(|t| !t.is_empty()) {
        // `k in(a)` and `k in (a)` alike, as the server's lexer reads them.
        let spaced = term.replace('(', " (");
        let term = spaced.as_str();
        let req = if let Some(k) = term.strip_prefix('!') {
            LabelReq::NotExists(key(k)?)
        } else if let Some((k, v)) = term.split_once(" notin ") {
            LabelReq::NotIn(key(k)?, set(v)?)
        } else if let Some((k, v)) = term.split_once(" in ") {
            LabelReq::In(key(k)?, set(v)?)
        } else if let Some((k, v)) = term.split_once("!=") {
            LabelReq::NotEqual(key(k)?, value(v)?)
        } else if let Some((k, v)) = term.split_once("==") {
            LabelReq::Equal(key(k)?, value(v)?)
        } else if let Some((k, v)) = term.split_once('=') {
            LabelReq::Equal(key(k)?, value(v)?)
        } else {
            LabelReq::Exists(key(term)?)
        };
        reqs.push(req);
    }
    Ok(reqs)
}

/// A label value, or the name part of a key: at most 63 of
/// `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_name_ok(text: &str) -> bool {
    text.len() <= 63
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.ends_with(|c: char| c.is_ascii_alphanumeric())
}

// ---------------------------------------------------------------------------
// HTTP

/// What a request path names.
struct Target {
    resource: Resource,
    namespace: Option<String>,
    name: Option<String>,
    /// The deprecated `/watch/` path form.
    watch_path: bool,
}

/// `/api/v1[/watch]/namespaces/NS/configmaps[/NAME]`, `/api/v1/configmaps`,
/// and the same under `/apis/events.k8s.io/v1` for events.
fn route(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (resources, mut rest): (&[Resource], &[&str]) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => (&[Resource::ConfigMaps], rest),
        ["apis", "events.k8s.io", "v1", rest @ ..] => (&[Resource::Events], rest),
        _ => return None,
    };
    let watch_path = rest.first() == Some(&"watch");
    if watch_path {
        rest = &rest[1..];
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name) = match rest {
        [plural] => (*plural, None),
        [plural, name] if namespace.is_some() => (*plural, Some(name.to_string())),
        _ => return None,
    };
    let resource = *resources.iter().find(|r| r.plural() == plural)?;
    Some(Target {
        resource,
        namespace,
        name,
        watch_path,
    })
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = parse_query(uri.query().unwrap_or(""));
    let response = dispatch(&shared, &method, uri.path(), &query, &headers, &body).await;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    shared.lock().log(LoggedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
        status: response.status().as_u16(),
    });
    response
}

async fn dispatch(
    shared: &Arc<Shared>,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    // Probes and version are public, as with the default RBAC.
    match path {
        "/healthz" | "/livez" | "/readyz" => return text_response(200, "ok"),
        "/version" => {
            return json_response(
                200,
                &json!({"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake",
                        "platform": "linux/amd64"}),
            );
        }
        _ => {}
    }
    let (unavailable, denied, denied_in) = {
        let store = shared.lock();
        (
            store.unavailable,
            store.denied.clone(),
            store.denied_in.clone(),
        )
    };
    if unavailable {
        return status_response(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
            None,
        );
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(TOKEN) {
        return status_response(401, "Unauthorized", "Unauthorized", None);
    }
    let Some(target) = route(path) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
            Some(json!({})),
        );
    };
    let params = match Params::parse(target.resource, query) {
        Ok(p) => p,
        Err(status) => return status_body_response(&status),
    };
    let is_watch = target.watch_path || params.watch;
    let has_name = target.name.is_some();
    let verb = match (method, has_name, is_watch) {
        (&Method::GET, _, true) => "watch",
        (&Method::GET, true, false) => "get",
        (&Method::GET, false, false) => "list",
        (&Method::POST, false, false) => "create",
        (&Method::PUT, true, false) => "update",
        (&Method::PATCH, true, false) => "patch",
        (&Method::DELETE, true, false) => "delete",
        _ => return method_not_allowed(),
    };
    if verb != "watch" && verb != "list" && verb != "get" && target.namespace.is_none() {
        return method_not_allowed();
    }
    if denied.contains(&(verb.to_owned(), target.resource.plural().to_owned())) {
        return forbidden(&target, verb);
    }
    if let Some(namespace) = &target.namespace
        && denied_in.contains(&(
            verb.to_owned(),
            target.resource.plural().to_owned(),
            namespace.clone(),
        ))
    {
        return forbidden(&target, verb);
    }
    if target.resource == Resource::ConfigMaps {
        let (list_fault, watch_fault) = {
            let store = shared.lock();
            (store.list_fault.clone(), store.watch_fault.clone())
        };
        match (verb, list_fault, watch_fault) {
            ("list", Some(fault), _) => return faulty_list(fault).await,
            ("watch", _, Some(fault)) => return faulty_watch(fault),
            _ => {}
        }
    }
    match verb {
        "get" => get(shared, &target),
        "list" => list(shared, &target, &params).await,
        "watch" => watch_objects(shared, &target, &params).await,
        "create" => create(shared, &target, body),
        "update" => update(shared, &target, body),
        "patch" => patch(shared, &target, headers, body),
        _ => delete(shared, &target),
    }
}

/// The query parameters lists and watches use, checked.
struct Params {
    watch: bool,
    /// None when unset or empty.
    resource_version: Option<u64>,
    version_match: Option<String>,
    limit: Option<usize>,
    continue_token: Option<String>,
    fields: Vec<FieldReq>,
    labels: Vec<LabelReq>,
    timeout: Option<Duration>,
    bookmarks: bool,
    send_initial_events: Option<bool>,
}

impl Params {
    /// Err: the Status to answer with.
    fn parse(resource: Resource, query: &[(String, String)]) -> Result<Params, Value> {
        let bad = |message: String| status_value(400, "BadRequest", &message, None);
        let get = |key: &str| {
            query
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let boolean = |key: &str| -> Result<Option<bool>, Value> {
            match get(key) {
                None | Some("") => Ok(None),
                Some(v) => parse_bool(v)
                    .map(Some)
                    .ok_or_else(|| bad(format!("{key}: invalid boolean value: {v:?}"))),
            }
        };
        let number = |key: &str| -> Result<Option<u64>, Value> {
            match get(key) {
                None | Some("") => Ok(None),
                Some(v) => v
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(format!("{key}: invalid value {v:?}"))),
            }
        };
        let resource_version = match get("resourceVersion") {
            None | Some("") => None,
            Some(v) => Some(
                v.parse()
                    .map_err(|_| bad(format!("invalid resource version: {v:?}")))?,
            ),
        };
        Ok(Params {
            watch: boolean("watch")?.unwrap_or(false),
            resource_version,
            version_match: get("resourceVersionMatch")
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            limit: number("limit")?.map(|l| l as usize).filter(|l| *l > 0),
            continue_token: get("continue").filter(|v| !v.is_empty()).map(str::to_owned),
            fields: parse_field_selector(resource, get("fieldSelector").unwrap_or(""))
                .map_err(bad)?,
            labels: parse_label_selector(get("labelSelector").unwrap_or("")).map_err(bad)?,
            timeout: number("timeoutSeconds")?.map(Duration::from_secs),
            bookmarks: boolean("allowWatchBookmarks")?.unwrap_or(false),
            send_initial_events: boolean("sendInitialEvents")?,
        })
    }

    fn filter(&self, target: &Target) -> Filter {
        let mut fields = self.fields.clone();
        if let Some(name) = &target.name {
            fields.push(FieldReq {
                field: "metadata.name".into(),
                value: name.clone(),
                equal: true,
            });
        }
        Filter {
            resource: target.resource,
            namespace: target.namespace.clone(),
            fields,
            labels: self.labels.clone(),
        }
    }
}

/// The filter of a list or watch, without its name selector while the
/// server is told to ignore it (`ignore_name_selector`), or without
/// namespace and selectors (`send_every_configmap`).
fn selector_filter(store: &Store, p: &Params, target: &Target) -> Filter {
    let mut filter = p.filter(target);
    if target.name.is_none() && store.ignore_name_selector {
        filter.fields.retain(|f| f.field != "metadata.name");
    }
    if target.name.is_none()
        && store.send_every_configmap
        && target.resource == Resource::ConfigMaps
    {
        filter.namespace = None;
        filter.fields.clear();
        filter.labels.clear();
    }
    filter
}

/// Waits (up to the watch cache's 3 s) until the store reaches `rv`.
async fn wait_fresh(shared: &Shared, rv: u64) -> bool {
    let mut current = shared.lock().rv_tx.subscribe();
    tokio::time::timeout(TOO_LARGE_WAIT, current.wait_for(|now| *now >= rv))
        .await
        .is_ok_and(|r| r.is_ok())
}

fn too_large(requested: u64, current: u64) -> Value {
    status_value(
        504,
        "Timeout",
        &format!("Too large resource version: {requested}, current: {current}"),
        Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        })),
    )
}

fn get(shared: &Shared, target: &Target) -> Response {
    let store = shared.lock();
    let key = key_of(target);
    match store.objects.get(&key) {
        Some(object) => json_response(200, object),
        None => not_found(target.resource, &key.2),
    }
}

async fn list(shared: &Shared, target: &Target, p: &Params) -> Response {
    let invalid = |detail: &str| invalid_options("ListOptions", detail);
    let exact = match (p.version_match.as_deref(), p.resource_version) {
        (Some(_), None) => {
            return invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            );
        }
        (Some(_), Some(_)) if p.continue_token.is_some() => {
            return invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden when continue is provided",
            );
        }
        (Some("Exact"), Some(0)) => {
            return invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
            );
        }
        (Some("Exact"), Some(_)) => true,
        (Some("NotOlderThan"), Some(_)) => false,
        (Some(other), Some(_)) => {
            return invalid(&format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            ));
        }
        // Legacy rule: a resourceVersion with a limit means Exact.
        (None, Some(rv)) => rv > 0 && p.limit.is_some(),
        (None, None) => false,
    };
    if p.continue_token.is_some() && p.resource_version.is_some_and(|rv| rv > 0) {
        return invalid(
            "resourceVersion: Forbidden: specifying resource version is not allowed when using continue",
        );
    }
    if let Some(rv) = p.resource_version.filter(|rv| *rv > 0)
        && !wait_fresh(shared, rv).await
    {
        let current = shared.lock().rv;
        return status_body_response(&too_large(rv, current));
    }

    let store = shared.lock();
    let (snapshot, start_after) = if let Some(token) = &p.continue_token {
        let Some((rv, start)) = decode_continue(token) else {
            return status_response(
                400,
                "BadRequest",
                "continue key is not valid: the token could not be decoded",
                None,
            );
        };
        if rv < store.compacted {
            return status_response(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.",
                None,
            );
        }
        (rv, Some(start))
    } else if exact {
        let rv = p.resource_version.unwrap_or(0);
        if rv < store.compacted {
            return status_response(
                410,
                "Expired",
                "The resourceVersion for the provided list is too old.",
                None,
            );
        }
        (rv, None)
    } else {
        (store.rv, None)
    };
    let filter = selector_filter(&store, p, target);
    let mut matching: Vec<(Key, Value)> = store
        .objects_at(snapshot)
        .into_iter()
        .filter(|(k, v)| filter.matches(k, v))
        .filter(|(k, _)| {
            start_after
                .as_ref()
                .is_none_or(|s| format!("{}/{}", k.1, k.2).as_str() > s.as_str())
        })
        .collect();
    drop(store);

    // resourceVersion=0 is served whole from the watch cache: no paging.
    let limit = match (p.resource_version, &p.continue_token) {
        (Some(0), None) => None,
        _ => p.limit,
    };
    let mut metadata = json!({"resourceVersion": snapshot.to_string()});
    if let Some(limit) = limit
        && matching.len() > limit
    {
        let remaining = matching.len() - limit;
        matching.truncate(limit);
        let last = &matching[limit - 1].0;
        metadata["continue"] = json!(encode_continue(snapshot, &format!("{}/{}", last.1, last.2)));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = matching
        .into_iter()
        .map(|(_, mut v)| {
            // List items carry no apiVersion/kind on the wire.
            if let Some(m) = v.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            v
        })
        .collect();
    json_response(
        200,
        &json!({
            "kind": format!("{}List", target.resource.kind()),
            "apiVersion": target.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    )
}

/// Where a watch starts.
enum Start {
    /// Synthetic ADDED for every matching object now, then changes; with
    /// `end_bookmark`, a BOOKMARK annotated `k8s.io/initial-events-end`
    /// after them (`sendInitialEvents=true`).
    Initial { end_bookmark: bool },
    /// Only changes from now on.
    Now,
    /// Changes after this resourceVersion.
    After(u64),
}

async fn watch_objects(shared: &Arc<Shared>, target: &Target, p: &Params) -> Response {
    let invalid = |detail: &str| invalid_options("ListOptions", detail);
    let start = match (p.send_initial_events, p.version_match.as_deref()) {
        (Some(true), Some("NotOlderThan")) if !p.bookmarks => {
            return invalid(
                "allowWatchBookmarks: Forbidden: allowWatchBookmarks required when sendInitialEvents is set",
            );
        }
        (Some(true), Some("NotOlderThan")) => Start::Initial { end_bookmark: true },
        (Some(_), Some("NotOlderThan")) | (Some(false), None) => match p.resource_version {
            None | Some(0) => Start::Now,
            Some(rv) => Start::After(rv),
        },
        (Some(_), _) => {
            return invalid(
                "resourceVersionMatch: Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
            );
        }
        (None, Some(_)) => {
            return invalid(
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            );
        }
        (None, None) => match p.resource_version {
            None | Some(0) => Start::Initial {
                end_bookmark: false,
            },
            Some(rv) => Start::After(rv),
        },
    };
    if let Some(rv) = p.resource_version.filter(|rv| *rv > 0)
        && !wait_fresh(shared, rv).await
    {
        let current = shared.lock().rv;
        return watch_response(single_line(error_line(&too_large(rv, current))));
    }

    let filter = selector_filter(&shared.lock(), p, target);
    let (tx, rx) = mpsc::unbounded_channel();
    let mut backlog = VecDeque::new();
    let mut store = shared.lock();
    let mut sent_rv = store.rv;
    match start {
        Start::Initial { end_bookmark } => {
            for (key, object) in &store.objects {
                if filter.matches(key, object) {
                    backlog.push_back(line(&json!({"type": "ADDED", "object": object})));
                }
            }
            if end_bookmark {
                backlog.push_back(bookmark_line(target.resource, store.rv, true));
            }
        }
        Start::Now => {}
        Start::After(rv) if rv < store.compacted => {
            let status = expired_status(rv, store.compacted);
            return watch_response(single_line(error_line(&status)));
        }
        Start::After(rv) => {
            sent_rv = rv;
            for change in store.history.iter().filter(|c| c.rv > rv) {
                if let Some(event) = filter.event_for(change) {
                    backlog.push_back(line(&event));
                    sent_rv = change.rv;
                }
            }
        }
    }
    let id = store.next_watcher;
    store.next_watcher += 1;
    store.watchers.push(Watcher {
        id,
        filter,
        bookmarks: p.bookmarks,
        sent_rv,
        tx,
    });
    let bookmark_interval = store.bookmark_interval;
    drop(store);

    let now = tokio::time::Instant::now();
    let deadline = now + p.timeout.unwrap_or(DEFAULT_WATCH_TIMEOUT);
    let stream = WatchStream {
        backlog,
        rx,
        deadline,
        bookmarks: p.bookmarks,
        bookmark_interval,
        next_bookmark: next_bookmark_time(now, bookmark_interval, deadline),
        resource: target.resource,
        guard: WatchGuard {
            shared: shared.clone(),
            id,
        },
    };
    watch_response(Body::from_stream(stream::unfold(stream, WatchStream::next)))
}

/// The state of one open watch response.
struct WatchStream {
    backlog: VecDeque<Bytes>,
    rx: mpsc::UnboundedReceiver<WatchMsg>,
    deadline: tokio::time::Instant,
    bookmarks: bool,
    bookmark_interval: Duration,
    next_bookmark: tokio::time::Instant,
    resource: Resource,
    guard: WatchGuard,
}

impl WatchStream {
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, WatchStream)> {
        if let Some(line) = self.backlog.pop_front() {
            return Some((Ok(line), self));
        }
        tokio::select! {
            msg = self.rx.recv() => match msg {
                Some(WatchMsg::Line(line)) => Some((Ok(line), self)),
                Some(WatchMsg::Close) | None => None,
            },
            () = tokio::time::sleep_until(self.deadline) => None,
            () = tokio::time::sleep_until(self.next_bookmark), if self.bookmarks => {
                let rv = self.guard.shared.lock().rv;
                let now = tokio::time::Instant::now();
                self.next_bookmark = next_bookmark_time(now, self.bookmark_interval, self.deadline);
                Some((Ok(bookmark_line(self.resource, rv, false)), self))
            }
        }
    }
}

/// Every `interval`, and once shortly before the deadline (as the watch
/// cache does, so a client resumes from a fresh resourceVersion).
fn next_bookmark_time(
    now: tokio::time::Instant,
    interval: Duration,
    deadline: tokio::time::Instant,
) -> tokio::time::Instant {
    let heartbeat = now + interval;
    match deadline.checked_sub(PRE_TIMEOUT_BOOKMARK) {
        Some(pre) if pre > now && pre < heartbeat => pre,
        _ => heartbeat,
    }
}

/// Unregisters a watch when its response is dropped (ended, or the
/// connection went away).
struct WatchGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.shared.lock().watchers.retain(|w| w.id != self.id);
    }
}

fn create(shared: &Shared, target: &Target, body: &[u8]) -> Response {
    let resource = target.resource;
    let ns = target.namespace.clone().unwrap_or_default();
    let mut object = match decode_body(resource, body) {
        Ok(v) => v,
        Err(status) => return status_body_response(&status),
    };
    if let Err(status) = check_namespace(&mut object, &ns) {
        return status_body_response(&status);
    }
    if object_rv(&object) != 0 {
        return status_response(
            500,
            "InternalError",
            "resourceVersion should not be set on objects to be created",
            None,
        );
    }
    let mut store = shared.lock();
    let name = match object.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => name.to_owned(),
        _ => match object
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        {
            Some(prefix) if !prefix.is_empty() => generate_name(prefix),
            _ => {
                let errs = [FieldError::required(
                    "metadata.name",
                    "name or generateName is required",
                )];
                return invalid_object(resource, "", &errs);
            }
        },
    };
    object["metadata"]["name"] = json!(name);
    object["metadata"]["uid"] = json!(new_uid());
    object["metadata"]["creationTimestamp"] = json!(Time(Timestamp::now()));
    let errs = resource.validate_create(&object);
    if !errs.is_empty() {
        return invalid_object(resource, &name, &errs);
    }
    if !store.namespaces.contains(&ns) {
        return namespace_not_found(&ns);
    }
    let key = (resource, ns, name.clone());
    if store.objects.contains_key(&key) {
        return status_response(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", resource.qualified()),
            Some(details(resource, &name)),
        );
    }
    store.commit(key.clone(), Some(object));
    json_response(201, &store.objects[&key])
}

fn update(shared: &Shared, target: &Target, body: &[u8]) -> Response {
    let object = match decode_body(target.resource, body) {
        Ok(v) => v,
        Err(status) => return status_body_response(&status),
    };
    let mut store = shared.lock();
    write_update(&mut store, target, object)
}

fn patch(shared: &Shared, target: &Target, headers: &HeaderMap, body: &[u8]) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = content_type.split(';').next().unwrap_or("").trim();
    // Strategic merge differs from JSON merge only for lists with merge
    // keys, which neither ConfigMap nor Event data has.
    if media != "application/merge-patch+json" && media != "application/strategic-merge-patch+json"
    {
        return status_response(
            415,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: \
                 application/merge-patch+json, application/strategic-merge-patch+json \
                 (the fake apiserver does not model {media:?})"
            ),
            None,
        );
    }
    let patch: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) | Err(_) => {
            return status_response(
                400,
                "BadRequest",
                "error decoding patch: expected a JSON object",
                None,
            );
        }
    };
    let mut store = shared.lock();
    let key = key_of(target);
    let Some(mut object) = store.objects.get(&key).cloned() else {
        return not_found(target.resource, &key.2);
    };
    merge_patch(&mut object, &patch);
    let object = match target.resource.normalize(object) {
        Ok(v) => v,
        Err(e) => return status_response(422, "Invalid", &e, None),
    };
    write_update(&mut store, target, object)
}

/// PUT semantics for `new` (also the result of a patch): the name and
/// namespace must match the URL, a resourceVersion in it must be current
/// (409 otherwise), identity fields are kept, a no-op writes nothing.
fn write_update(store: &mut Store, target: &Target, mut new: Value) -> Response {
    let resource = target.resource;
    let (_, ns, name) = key_of(target);
    if let Err(status) = check_namespace(&mut new, &ns) {
        return status_body_response(&status);
    }
    match new.pointer("/metadata/name").and_then(Value::as_str) {
        None | Some("") => new["metadata"]["name"] = json!(name),
        Some(n) if n == name => {}
        Some(n) => {
            return status_response(
                400,
                "BadRequest",
                &format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                ),
                None,
            );
        }
    }
    let key = (resource, ns.clone(), name.clone());
    let Some(old) = store.objects.get(&key).cloned() else {
        if !resource.creates_on_update() {
            return not_found(resource, &name);
        }
        if !store.namespaces.contains(&ns) {
            return namespace_not_found(&ns);
        }
        new["metadata"]["uid"] = json!(new_uid());
        new["metadata"]["creationTimestamp"] = json!(Time(Timestamp::now()));
        if let Some(m) = new["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let errs = resource.validate_create(&new);
        if !errs.is_empty() {
            return invalid_object(resource, &name, &errs);
        }
        store.commit(key.clone(), Some(new));
        return json_response(201, &store.objects[&key]);
    };
    let wanted = object_rv(&new);
    if wanted != 0 && wanted != object_rv(&old) {
        return status_response(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                resource.qualified()
            ),
            Some(details(resource, &name)),
        );
    }
    for field in ["uid", "creationTimestamp", "resourceVersion"] {
        new["metadata"][field] = old["metadata"][field].clone();
    }
    let errs = resource.validate_update(&new, &old);
    if !errs.is_empty() {
        return invalid_object(resource, &name, &errs);
    }
    if new != old {
        store.commit(key.clone(), Some(new));
    }
    json_response(200, &store.objects[&key])
}

fn delete(shared: &Shared, target: &Target) -> Response {
    let mut store = shared.lock();
    let key = key_of(target);
    let Some(old) = store.objects.get(&key).cloned() else {
        return not_found(target.resource, &key.2);
    };
    store.commit(key.clone(), None);
    let mut d = details(target.resource, &key.2);
    d["uid"] = old["metadata"]["uid"].clone();
    json_response(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Success", "details": d}),
    )
}

fn key_of(target: &Target) -> Key {
    (
        target.resource,
        target.namespace.clone().unwrap_or_default(),
        target.name.clone().unwrap_or_default(),
    )
}

/// Decodes a write's body as `resource`, as the real server decodes it
/// (wrong apiVersion/kind or a malformed field: 400); Err: the Status
/// to answer with.
fn decode_body(resource: Resource, body: &[u8]) -> Result<Value, Value> {
    let bad = |e: String| {
        status_value(
            400,
            "BadRequest",
            &format!(
                "{} in version \"v1\" cannot be handled as a {}: {e}",
                resource.kind(),
                resource.kind()
            ),
            None,
        )
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if !value.is_object() {
        return Err(bad("expected a JSON object".into()));
    }
    resource.normalize(value).map_err(bad)
}

/// Err: the Status to answer with.
fn check_namespace(object: &mut Value, ns: &str) -> Result<(), Value> {
    match object
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
    {
        None | Some("") => {
            object["metadata"]["namespace"] = json!(ns);
            Ok(())
        }
        Some(n) if n == ns => Ok(()),
        Some(_) => Err(status_value(
            400,
            "BadRequest",
            "the namespace of the provided object does not match the namespace sent on the request",
            None,
        )),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(target) = target else {
        return;
    };
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            merge_patch(target.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

// ---------------------------------------------------------------------------
// Validation (the rules of the real server that a client can trip over)

struct FieldError {
    field: String,
    reason: &'static str,
    text: String,
}

impl FieldError {
    fn required(field: &str, detail: &str) -> FieldError {
        let text = if detail.is_empty() {
            format!("{field}: Required value")
        } else {
            format!("{field}: Required value: {detail}")
        };
        FieldError {
            field: field.into(),
            reason: "FieldValueRequired",
            text,
        }
    }

    fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueInvalid",
            text: format!("{field}: Invalid value: {value}: {detail}"),
        }
    }

    fn forbidden(field: &str, detail: &str) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueForbidden",
            text: format!("{field}: Forbidden: {detail}"),
        }
    }

    fn too_long(field: &str, max: usize) -> FieldError {
        FieldError {
            field: field.into(),
            reason: "FieldValueTooLong",
            text: format!("{field}: Too long: must have at most {max} bytes"),
        }
    }
}

fn join_errors(errs: &[FieldError]) -> String {
    match errs {
        [one] => one.text.clone(),
        many => format!(
            "[{}]",
            many.iter()
                .map(|e| e.text.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

const DNS1123_SUBDOMAIN: &str = concat!(
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', ",
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is ",
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
);

fn is_dns1123_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    prefix.is_none_or(is_dns1123_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && edge(name.chars().next())
        && edge(name.chars().last())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn validate_name(object: &Value) -> Vec<FieldError> {
    let name = str_at(object, "/metadata/name");
    if is_dns1123_subdomain(name) {
        Vec::new()
    } else {
        vec![FieldError::invalid(
            "metadata.name",
            &json!(name),
            DNS1123_SUBDOMAIN,
        )]
    }
}

/// ConfigMap validation: name, keys, 1 MiB total.
fn validate_configmap(object: &Value) -> Vec<FieldError> {
    const MAX: usize = 1024 * 1024;
    let mut errs = validate_name(object);
    let mut total = 0;
    let mut seen = BTreeSet::new();
    for field in ["data", "binaryData"] {
        let Some(map) = object.get(field).and_then(Value::as_object) else {
            continue;
        };
        for (key, value) in map {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                errs.push(FieldError::invalid(
                    &format!("{field}[{key}]"),
                    &json!(key),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
                ));
            }
            if !seen.insert(key.clone()) {
                errs.push(FieldError::invalid(
                    &format!("{field}[{key}]"),
                    &json!(key),
                    "duplicate of key present in data",
                ));
            }
            total += key.len() + value.as_str().map_or(0, str::len);
        }
    }
    if total > MAX {
        errs.push(FieldError::too_long("", MAX));
    }
    errs
}

fn validate_configmap_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old.get("immutable") == Some(&json!(true)) {
        if new.get("immutable") != Some(&json!(true)) {
            errs.push(FieldError::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
        for field in ["data", "binaryData"] {
            if new.get(field) != old.get(field) {
                errs.push(FieldError::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
    }
    errs
}

/// events.k8s.io/v1 Event validation on create (and, again, on update).
fn validate_event(object: &Value) -> Vec<FieldError> {
    let mut errs = validate_name(object);
    let ns = str_at(object, "/metadata/namespace");
    let len = |p: &str| str_at(object, p).len();
    if object.get("eventTime").is_none_or(Value::is_null) {
        errs.push(FieldError::required("eventTime", ""));
    } else if str_at(object, "/regarding/namespace").is_empty()
        && ns != "default"
        && ns != "kube-system"
    {
        errs.push(FieldError::invalid(
            "involvedObject.namespace",
            &json!(""),
            "does not match event.namespace",
        ));
    }
    let controller = str_at(object, "/reportingController");
    if controller.is_empty() {
        errs.push(FieldError::required("reportingController", ""));
    } else if !is_qualified_name(controller) {
        errs.push(FieldError::invalid(
            "reportingController",
            &json!(controller),
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character",
        ));
    }
    for (pointer, field, max) in [
        ("/reportingInstance", "reportingInstance", 128),
        ("/action", "action", 128),
        ("/reason", "reason", 128),
    ] {
        if len(pointer) == 0 {
            errs.push(FieldError::required(field, ""));
        } else if len(pointer) > max {
            errs.push(FieldError::invalid(
                field,
                &json!(""),
                &format!("can have at most {max} characters"),
            ));
        }
    }
    if len("/note") > 1024 {
        errs.push(FieldError::invalid(
            "message",
            &json!(""),
            "can have at most 1024 characters",
        ));
    }
    let type_ = str_at(object, "/type");
    if type_ != "Normal" && type_ != "Warning" {
        errs.push(FieldError::invalid(
            "type",
            &json!(""),
            &format!("has invalid value: {type_}"),
        ));
    }
    if let Some(series) = object.get("series").filter(|s| !s.is_null()) {
        if series.get("count").and_then(Value::as_i64).unwrap_or(0) < 2 {
            errs.push(FieldError::invalid(
                "series.count",
                &json!(""),
                "should be at least 2",
            ));
        }
        if series.get("lastObservedTime").is_none_or(Value::is_null) {
            errs.push(FieldError::required("series.lastObservedTime", ""));
        }
    }
    for field in [
        "deprecatedFirstTimestamp",
        "deprecatedLastTimestamp",
        "deprecatedCount",
        "deprecatedSource",
    ] {
        if object.get(field).is_some_and(|v| !v.is_null()) {
            errs.push(FieldError::invalid(field, &json!(""), "needs to be unset"));
        }
    }
    errs
}

/// On update, everything but the series (and metadata) is immutable.
fn validate_event_update(new: &Value, old: &Value) -> Vec<FieldError> {
    [
        "regarding",
        "reason",
        "note",
        "type",
        "eventTime",
        "action",
        "related",
        "reportingController",
        "reportingInstance",
    ]
    .into_iter()
    .filter(|f| new.get(f).filter(|v| !v.is_null()) != old.get(f).filter(|v| !v.is_null()))
    .map(|f| FieldError::invalid(f, new.get(f).unwrap_or(&Value::Null), "field is immutable"))
    .collect()
}

// ---------------------------------------------------------------------------
// Responses

fn json_response(code: u16, value: &Value) -> Response {
    let body = serde_json::to_vec(value).expect("JSON values serialise");
    let mut response = Response::new(Body::from(body));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn text_response(code: u16, text: &'static str) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A watch response: 200, chunked, one JSON event per line.
fn watch_response(body: Body) -> Response {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn single_line(line: Bytes) -> Body {
    Body::from_stream(stream::iter([Ok::<_, Infallible>(line)]))
}

fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(details) = details {
        status["details"] = details;
    }
    status
}

fn status_response(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response {
    status_body_response(&status_value(code, reason, message, details))
}

/// A Status as the response, with `Retry-After` when it suggests one (as
/// the real server sets it from `details.retryAfterSeconds`).
fn status_body_response(status: &Value) -> Response {
    let code = status["code"].as_u64().unwrap_or(500) as u16;
    let mut response = json_response(code, status);
    if let Some(secs) = status
        .pointer("/details/retryAfterSeconds")
        .and_then(Value::as_u64)
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn details(resource: Resource, name: &str) -> Value {
    let mut d = json!({"name": name, "kind": resource.plural()});
    if !resource.group().is_empty() {
        d["group"] = json!(resource.group());
    }
    d
}

fn not_found(resource: Resource, name: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", resource.qualified()),
        Some(details(resource, name)),
    )
}

fn namespace_not_found(ns: &str) -> Response {
    status_response(
        404,
        "NotFound",
        &format!("namespaces \"{ns}\" not found"),
        Some(json!({"name": ns, "kind": "namespaces"})),
    )
}

fn method_not_allowed() -> Response {
    status_response(
        405,
        "MethodNotAllowed",
        "the server does not allow this method on the requested resource",
        Some(json!({})),
    )
}

fn forbidden(target: &Target, verb: &str) -> Response {
    let resource = target.resource;
    let name = target
        .name
        .as_ref()
        .map(|n| format!(" \"{n}\""))
        .unwrap_or_default();
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_owned(),
    };
    status_response(
        403,
        "Forbidden",
        &format!(
            "{}{name} is forbidden: User \"{USER}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
            resource.qualified(),
            resource.plural(),
            resource.group()
        ),
        Some(details(resource, target.name.as_deref().unwrap_or(""))),
    )
}

fn invalid_object(resource: Resource, name: &str, errs: &[FieldError]) -> Response {
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| json!({"reason": e.reason, "message": e.text, "field": e.field}))
        .collect();
    let mut d = details(resource, name);
    d["kind"] = json!(resource.kind());
    d["causes"] = json!(causes);
    status_response(
        422,
        "Invalid",
        &format!(
            "{} \"{name}\" is invalid: {}",
            resource.qualified_kind(),
            join_errors(errs)
        ),
        Some(d),
    )
}

fn invalid_options(kind: &str, detail: &str) -> Response {
    status_response(
        422,
        "Invalid",
        &format!("{kind}.meta.k8s.io \"\" is invalid: {detail}"),
        Some(json!({"group": "meta.k8s.io", "kind": kind})),
    )
}

fn expired_status(requested: u64, oldest: u64) -> Value {
    status_value(
        410,
        "Expired",
        &format!("too old resource version: {requested} ({oldest})"),
        None,
    )
}

fn line(event: &Value) -> Bytes {
    let mut bytes = serde_json::to_vec(event).expect("JSON values serialise");
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn error_line(status: &Value) -> Bytes {
    line(&json!({"type": "ERROR", "object": status}))
}

fn bookmark_line(resource: Resource, rv: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": {
            "kind": resource.kind(),
            "apiVersion": resource.api_version(),
            "metadata": metadata,
        },
    }))
}

// ---------------------------------------------------------------------------
// Small helpers

/// Go's strconv.ParseBool.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// `a=1&b=x%3Dy` → pairs, percent-decoded; empty pieces (kube's `?&…`)
/// are skipped.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Continue tokens are opaque to clients; here hex of `RV/NS/NAME`.
fn encode_continue(rv: u64, start_after: &str) -> String {
    format!("{rv}/{start_after}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(token: &str) -> Option<(u64, String)> {
    if !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..token.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (rv, start) = text.split_once('/')?;
    Some((rv.parse().ok()?, start.to_owned()))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish()
}

/// A random (version 4) UUID.
fn new_uid() -> String {
    let (a, b) = (random_u64(), random_u64());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        ((b >> 48) & 0x3fff) | 0x8000,
        b & 0xffff_ffff_ffff
    )
}

/// `generateName` plus five characters from the real server's alphabet.
fn generate_name(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut n = random_u64();
    let mut name = prefix.to_owned();
    for _ in 0..5 {
        name.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    name
}

// ---------------------------------------------------------------------------
// kubectl describe

/// The `Events:` section of `kubectl describe` for `events` as of `now`:
/// columns Type, Reason, Age, From, Message aligned the way kubectl's
/// tabwriter aligns them (width of the widest cell plus two), Age as
/// `5s`, or `5s (x3 over 2m10s)` for a series; `Events:  <none>` if empty.
pub fn render_events_table(events: &[Event], now: Timestamp) -> String {
    if events.is_empty() {
        return "Events:  <none>\n".to_owned();
    }
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|e| last_seen(e).map(|t| t.as_nanosecond()));
    let mut rows: Vec<[String; 5]> = vec![
        [
            "  Type".into(),
            "Reason".into(),
            "Age".into(),
            "From".into(),
            "Message".into(),
        ],
        [
            "  ----".into(),
            "------".into(),
            "----".into(),
            "----".into(),
            "-------".into(),
        ],
    ];
    for e in sorted {
        let first = since(e.event_time.as_ref().map(|t| t.0), now);
        let age = match &e.series {
            Some(s) => format!(
                "{} (x{} over {first})",
                since(Some(s.last_observed_time.0), now),
                s.count
            ),
            None => first,
        };
        let from = e
            .deprecated_source
            .as_ref()
            .and_then(|s| s.component.clone())
            .filter(|c| !c.is_empty())
            .or_else(|| e.reporting_controller.clone())
            .unwrap_or_default();
        rows.push([
            format!("  {}", e.type_.clone().unwrap_or_default()),
            e.reason.clone().unwrap_or_default(),
            age,
            from,
            e.note.clone().unwrap_or_default().trim().to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0) + 2)
        .collect();
    let mut out = String::from("Events:\n");
    for row in &rows {
        for (cell, width) in row.iter().zip(&widths) {
            out.push_str(&format!("{cell:<width$}"));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

fn last_seen(e: &Event) -> Option<Timestamp> {
    e.series
        .as_ref()
        .map(|s| s.last_observed_time.0)
        .or_else(|| e.event_time.as_ref().map(|t| t.0))
}

fn since(t: Option<Timestamp>, now: Timestamp) -> String {
    match t {
        None => "<unknown>".into(),
        Some(t) => human_duration(now.as_nanosecond() - t.as_nanosecond()),
    }
}

/// apimachinery's `duration.HumanDuration`, from nanoseconds.
fn human_duration(nanos: i128) -> String {
    let seconds = nanos / 1_000_000_000;
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = seconds / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        return if dy == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{dy}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}
