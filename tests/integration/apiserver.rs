//! Tests of the fake kube-apiserver (`support::apiserver`), driven by the
//! real kube client, watcher and event recorder (the code the agent uses),
//! plus raw HTTP where the wire format itself is the point. If these are
//! green, a red agent test against the fake server is the agent's fault.
//!
//! Only the network-namespace test needs root; the rest serve on the root
//! namespace's 127.0.0.1 and change nothing there.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, VersionMatch};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::runtime::{WatchStreamExt, watcher as watch};
use kube::{Client, Resource};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::support::apiserver::listen_in_netns;
use crate::support::apiserver::{FakeApiServer, LoggedRequest, TOKEN, render_events_table};
use crate::support::{Netns, require_tools};

const NS: &str = "kube-system";
const NAME: &str = "ip-masq-agent";

/// Generous: these machines are shared and slow at times; a healthy run
/// takes milliseconds per step.
const STEP: Duration = Duration::from_secs(20);

fn data(text: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("config".to_owned(), text.to_owned())])
}

async fn client_for(server: &FakeApiServer) -> Client {
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig_yaml()).expect("kubeconfig parses");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("kube accepts the kubeconfig");
    Client::try_from(config).expect("a client")
}

/// What a watcher yields, with errors as text (they are not Clone).
type Seen = Result<WatchEvent<ConfigMap>, String>;

/// Runs `stream` in a task and hands its items over a channel, so the test
/// can drive the server while the watch is open.
fn spawn_watch<S>(stream: S) -> mpsc::UnboundedReceiver<Seen>
where
    S: Stream<Item = Result<WatchEvent<ConfigMap>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            if tx.send(item.map_err(|e| e.to_string())).is_err() {
                break;
            }
        }
    });
    rx
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>, what: &str) -> Seen {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no watcher event within {STEP:?}, waiting for {what}"))
        .expect("the watcher task ended")
}

/// `Init`, `InitApply(...)`, `InitDone`: the objects listed.
async fn expect_init(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Vec<ConfigMap> {
    let mut listed = Vec::new();
    match next(rx, "Init").await {
        Ok(WatchEvent::Init) => {}
        other => panic!("expected Init, got {}", show(&other)),
    }
    loop {
        match next(rx, "InitApply or InitDone").await {
            Ok(WatchEvent::InitApply(cm)) => listed.push(cm),
            Ok(WatchEvent::InitDone) => return listed,
            other => panic!("expected InitApply or InitDone, got {}", show(&other)),
        }
    }
}

fn show(seen: &Seen) -> String {
    match seen {
        Ok(WatchEvent::Init) => "Init".into(),
        Ok(WatchEvent::InitApply(cm)) => format!("InitApply({})", describe_cm(cm)),
        Ok(WatchEvent::InitDone) => "InitDone".into(),
        Ok(WatchEvent::Apply(cm)) => format!("Apply({})", describe_cm(cm)),
        Ok(WatchEvent::Delete(cm)) => format!("Delete({})", describe_cm(cm)),
        Err(e) => format!("Err({e})"),
    }
}

fn describe_cm(cm: &ConfigMap) -> String {
    format!(
        "{} rv={} data={:?}",
        cm.metadata.name.as_deref().unwrap_or(""),
        cm.metadata.resource_version.as_deref().unwrap_or(""),
        cm.data
    )
}

fn config_of(cm: &ConfigMap) -> &str {
    cm.data
        .as_ref()
        .and_then(|d| d.get("config"))
        .map_or("", String::as_str)
}

/// Polls `done` (which may read the server) until true, or panics.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {STEP:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn requests_matching(
    server: &FakeApiServer,
    pred: impl Fn(&LoggedRequest) -> bool,
) -> Vec<LoggedRequest> {
    server.requests().into_iter().filter(pred).collect()
}

fn is_list(r: &LoggedRequest) -> bool {
    r.method == "GET" && r.path.ends_with("/configmaps") && !r.is_watch()
}

fn api_status(err: kube::Error) -> (u16, String, String) {
    match err {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error (Status), got {other}"),
    }
}

/// An HTTP/1.1 GET over a plain socket (`Connection: close`), for checking
/// the wire format itself: (status line and headers, de-chunked body).
fn raw_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (String, String) {
    let mut stream = TcpStream::connect_timeout(&addr, STEP).expect("connect");
    stream.set_read_timeout(Some(STEP)).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (head.to_owned(), body)
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

fn lines(body: &str) -> Vec<Value> {
    body.lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON event"))
        .collect()
}

#[tokio::test]
async fn lists_gets_and_failures_have_the_real_shapes() {
    let server = FakeApiServer::start_local();
    let first_rv = server.put_configmap(NS, NAME, data("a"));
    server.put_configmap(NS, "other", data("x"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NS);

    let list = api
        .list(&ListParams::default().fields(&format!("metadata.name={NAME}")))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.metadata.resource_version,
        Some(server.resource_version().to_string()),
        "a list carries the current resourceVersion"
    );
    let cm = &list.items[0];
    assert_eq!(config_of(cm), "a");
    assert_eq!(cm.metadata.resource_version, Some(first_rv.to_string()));
    assert!(cm.metadata.uid.is_some() && cm.metadata.creation_timestamp.is_some());

    // The same content again is a no-op, as on a real server.
    assert_eq!(server.put_configmap(NS, NAME, data("a")), first_rv);

    assert_eq!(config_of(&api.get(NAME).await.unwrap()), "a");
    let (code, reason, message) = api_status(api.get("missing").await.unwrap_err());
    assert_eq!(
        (code, reason.as_str(), message.as_str()),
        (404, "NotFound", "configmaps \"missing\" not found")
    );

    // Pages: limit and continue over one consistent snapshot.
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.metadata.remaining_item_count, Some(1));
    let token = page.metadata.continue_.clone().expect("a continue token");
    server.put_configmap(NS, "zzz-later", data("y"));
    let rest = api
        .list(&ListParams::default().limit(1).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1, "the snapshot ends before zzz-later");
    assert_eq!(rest.metadata.continue_, None);
    assert_eq!(
        rest.metadata.resource_version,
        page.metadata.resource_version
    );

    // Exact reads the past; once compacted, 410.
    server.put_configmap(NS, NAME, data("b"));
    let at_first = ListParams::default()
        .fields(&format!("metadata.name={NAME}"))
        .at(&first_rv.to_string())
        .matching(VersionMatch::Exact);
    let old = api.list(&at_first).await.unwrap();
    assert_eq!(config_of(&old.items[0]), "a");
    server.expire_watches();
    let (code, reason, _) = api_status(api.list(&at_first).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (410, "Expired"));
    let (code, reason, _) = api_status(
        api.list(&ListParams::default().limit(1).continue_token(&token))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (410, "Expired"));

    // An unsupported field selector is refused, as the real server does.
    let (code, _, message) = api_status(
        api.list(&ListParams::default().fields("data.config=a"))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 400, "{message}");

    // Unknown paths, RBAC, unavailability: Status objects with real codes.
    let unknown = axum::http::Request::get("/apis/example.com/v1/widgets")
        .body(Vec::new())
        .unwrap();
    let (code, reason, _) = api_status(client.request_text(unknown).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (404, "NotFound"));
    server.deny("get", "configmaps");
    let (code, reason, message) = api_status(api.get(NAME).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));
    assert!(
        message.contains(
            "cannot get resource \"configmaps\" in API group \"\" in the namespace \"kube-system\""
        ),
        "{message}"
    );
    server.allow_all();

    // 503: kube's client retries it (with backoff, for minutes), so a get
    // issued while unavailable succeeds once the server is back.
    server.set_unavailable(true);
    let (head, _) = raw_get(
        server.addr(),
        "/api/v1/namespaces/kube-system/configmaps",
        Some(TOKEN),
    );
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let pending = tokio::spawn(async move { api.get(NAME).await });
    let unavailable = |r: &LoggedRequest| r.status == 503 && r.path.ends_with(NAME);
    eventually("kube retried the 503", || {
        requests_matching(&server, unavailable).len() >= 2
    })
    .await;
    server.set_unavailable(false);
    let cm = tokio::time::timeout(STEP, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(config_of(&cm), "b");

    // Without the kubeconfig's token: 401.
    let (head, body) = raw_get(
        server.addr(),
        "/api/v1/namespaces/kube-system/configmaps",
        None,
    );
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Unauthorized");
}

#[tokio::test]
async fn watcher_sees_the_object_its_updates_and_its_deletion() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut rx = spawn_watch(watch(api, config));

    let listed = expect_init(&mut rx).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(config_of(&listed[0]), "a");
    eventually("the watch is open", || server.watch_count() == 1).await;

    // Another object in the namespace is filtered out by the field selector.
    server.put_configmap(NS, "other", data("x"));
    server.put_configmap(NS, NAME, data("b"));
    match next(&mut rx, "Apply(b)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "b"),
        other => panic!("expected Apply(b), got {}", show(&other)),
    }
    assert!(server.delete_configmap(NS, NAME));
    match next(&mut rx, "Delete").await {
        Ok(WatchEvent::Delete(cm)) => {
            assert_eq!(config_of(&cm), "b");
            assert_eq!(
                cm.metadata.resource_version,
                Some(server.resource_version().to_string()),
                "a deletion carries its own resourceVersion"
            );
        }
        other => panic!("expected Delete, got {}", show(&other)),
    }
    server.put_configmap(NS, NAME, data("c"));
    match next(&mut rx, "Apply(c)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "c"),
        other => panic!("expected Apply(c), got {}", show(&other)),
    }

    let lists = requests_matching(&server, is_list);
    assert_eq!(lists.len(), 1, "one list, then only watches: {lists:?}");
    assert_eq!(
        lists[0].param("fieldSelector"),
        Some("metadata.name=ip-masq-agent")
    );
    let watches = requests_matching(&server, LoggedRequest::is_watch);
    assert_eq!(watches[0].param("allowWatchBookmarks"), Some("true"));
    assert_eq!(
        watches[0].param("fieldSelector"),
        Some("metadata.name=ip-masq-agent")
    );
}

#[tokio::test]
async fn a_bookmark_moves_the_point_the_watcher_resumes_from() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    // A 1 s server-side timeout: the watcher re-watches every second from
    // the last resourceVersion it knows.
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .timeout(1);
    let mut rx = spawn_watch(watch(api, config));
    expect_init(&mut rx).await;

    // A write the watch does not see; only a bookmark tells the watcher
    // that the resourceVersion moved past it.
    let unseen = server.put_configmap(NS, "other", data("x")).to_string();
    server.clear_requests();
    let resumed_from_bookmark = |server: &FakeApiServer| {
        requests_matching(server, LoggedRequest::is_watch)
            .iter()
            .any(|r| r.param("resourceVersion") == Some(unseen.as_str()))
    };
    let deadline = tokio::time::Instant::now() + STEP;
    while !resumed_from_bookmark(&server) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never resumed from the bookmark's resourceVersion {unseen}: {:#?}",
            server.requests()
        );
        // A watch may be between two requests; send until one gets it.
        server.send_bookmark();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        requests_matching(&server, is_list).is_empty(),
        "a bookmark never forces a relist"
    );
    server.put_configmap(NS, NAME, data("b"));
    match next(&mut rx, "Apply(b)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "b"),
        other => panic!("expected Apply(b), got {}", show(&other)),
    }
}

#[tokio::test]
async fn expired_watches_make_the_watcher_relist_and_go_on() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut rx = spawn_watch(watch(api, config));
    expect_init(&mut rx).await;
    eventually("the watch is open", || server.watch_count() == 1).await;

    server.put_configmap(NS, NAME, data("b"));
    match next(&mut rx, "Apply(b)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "b"),
        other => panic!("expected Apply(b), got {}", show(&other)),
    }
    let before = server.resource_version();
    server.expire_watches();
    match next(&mut rx, "the 410 error").await {
        Err(e) => assert!(e.contains("too old resource version"), "{e}"),
        other => panic!("expected the 410 error, got {}", show(&other)),
    }
    let relisted = expect_init(&mut rx).await;
    assert_eq!(relisted.len(), 1);
    assert_eq!(config_of(&relisted[0]), "b");
    assert_eq!(requests_matching(&server, is_list).len(), 2, "one relist");
    server.put_configmap(NS, NAME, data("c"));
    match next(&mut rx, "Apply(c)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "c"),
        other => panic!("expected Apply(c), got {}", show(&other)),
    }

    // On the wire: a watch from before the compaction is answered 200 with
    // one ERROR event carrying a 410 Status, then ends.
    let path = format!(
        "/api/v1/namespaces/kube-system/configmaps?&watch=true&resourceVersion={}",
        before - 1
    );
    let (head, body) = raw_get(server.addr(), &path, Some(TOKEN));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let events = lines(&body);
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "ERROR");
    assert_eq!(events[0]["object"]["kind"], "Status");
    assert_eq!(events[0]["object"]["code"], 410);
    assert_eq!(events[0]["object"]["reason"], "Expired");
}

#[tokio::test]
async fn after_a_restart_mid_watch_the_watcher_reconnects_and_follows() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut rx = spawn_watch(watch(api, config).default_backoff());
    expect_init(&mut rx).await;
    eventually("the watch is open", || server.watch_count() == 1).await;

    // Down: the port refuses connections and the open watch is cut.
    server.take_down();
    let refused = TcpStream::connect_timeout(&server.addr(), STEP).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert_eq!(server.watch_count(), 0);
    // A change while down (as etcd keeps taking writes from others).
    server.put_configmap(NS, NAME, data("b"));
    server.bring_up();

    // The watcher may report the cut first; then it resumes from its
    // resourceVersion and gets the change, without a relist.
    loop {
        match next(&mut rx, "Apply(b) after the restart").await {
            Ok(WatchEvent::Apply(cm)) => {
                assert_eq!(config_of(&cm), "b");
                break;
            }
            Err(_) => continue,
            other => panic!("expected Apply(b), got {}", show(&other)),
        }
    }
    assert_eq!(requests_matching(&server, is_list).len(), 1, "no relist");

    // And once more with a plain restart: later changes still arrive.
    eventually("the watch is open again", || server.watch_count() == 1).await;
    server.restart();
    server.put_configmap(NS, NAME, data("c"));
    loop {
        match next(&mut rx, "Apply(c) after the restart").await {
            Ok(WatchEvent::Apply(cm)) => {
                assert_eq!(config_of(&cm), "c");
                break;
            }
            Err(_) => continue,
            other => panic!("expected Apply(c), got {}", show(&other)),
        }
    }
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_initial_events_and_their_end() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let client = client_for(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client, NS);
    let config = watcher::Config::default()
        .fields(&format!("metadata.name={NAME}"))
        .streaming_lists();
    let mut rx = spawn_watch(watch(api, config));
    let listed = expect_init(&mut rx).await;
    assert_eq!(listed.len(), 1);
    server.put_configmap(NS, NAME, data("b"));
    match next(&mut rx, "Apply(b)").await {
        Ok(WatchEvent::Apply(cm)) => assert_eq!(config_of(&cm), "b"),
        other => panic!("expected Apply(b), got {}", show(&other)),
    }
    let first = &requests_matching(&server, LoggedRequest::is_watch)[0];
    assert_eq!(first.param("sendInitialEvents"), Some("true"));
    assert_eq!(first.param("resourceVersionMatch"), Some("NotOlderThan"));
    assert!(requests_matching(&server, is_list).is_empty());
}

#[test]
fn the_watch_stream_is_chunked_json_lines_with_selector_transitions_and_bookmarks() {
    let server = FakeApiServer::start_local();
    let start = server.resource_version();
    let labeled =
        |app: &str| json!({"metadata": {"labels": {"app": app}}, "data": {"config": app}});
    server.put_configmap_object(NS, NAME, labeled("a"));
    server.put_configmap_object(NS, NAME, labeled("b"));
    server.put_configmap_object(NS, NAME, labeled("a"));
    assert!(server.delete_configmap(NS, NAME));
    server.set_bookmark_interval(Duration::from_millis(200));
    assert!(server.configmap(NS, NAME).is_none());
    server.put_configmap_object(NS, "kept", labeled("c"));
    let kept = server.configmap(NS, "kept").unwrap();
    assert_eq!(kept.metadata.labels.unwrap()["app"], "c");

    // Replayed from `start`: entering the selection is ADDED, leaving it is
    // DELETED; then periodic bookmarks until timeoutSeconds ends the stream.
    let path = format!(
        "/api/v1/watch/namespaces/kube-system/configmaps?labelSelector=app%3Da&resourceVersion={start}&allowWatchBookmarks=1&timeoutSeconds=1"
    );
    let (head, body) = raw_get(server.addr(), &path, Some(TOKEN));
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let events = lines(&body);
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_owned(),
                e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )
        })
        .collect();
    let rv = |n: u64| (start + n).to_string();
    assert_eq!(
        summary[..4],
        [
            ("ADDED".to_owned(), rv(1)),
            ("DELETED".to_owned(), rv(2)),
            ("ADDED".to_owned(), rv(3)),
            ("DELETED".to_owned(), rv(4)),
        ],
        "{body}"
    );
    assert_eq!(
        events[1]["object"]["data"]["config"], "a",
        "leaving shows the old state"
    );
    assert_eq!(events[0]["object"]["kind"], "ConfigMap");
    let bookmarks = &events[4..];
    assert!(
        !bookmarks.is_empty(),
        "a bookmark within 1 s at 200 ms: {body}"
    );
    for b in bookmarks {
        assert_eq!(b["type"], "BOOKMARK", "{body}");
        assert_eq!(b["object"]["metadata"]["resourceVersion"], rv(5));
        assert_eq!(b["object"]["kind"], "ConfigMap");
    }
    assert_eq!(server.watch_count(), 0, "the timed-out watch is gone");
}

#[tokio::test]
async fn the_recorder_creates_one_event_then_patches_its_series() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("bad"));
    let client = client_for(&server).await;
    let cm = Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get(NAME)
        .await
        .unwrap();
    let reference = cm.object_ref(&());
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "ip-masq-agent".into(),
            instance: Some("node-1".into()),
        },
    );
    let invalid = Event {
        type_: EventType::Warning,
        reason: "InvalidConfig".into(),
        note: Some("config: nonMasqueradeCIDRs[0]: invalid CIDR \"10.0.0.0/33\"".into()),
        action: "LoadConfig".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder.publish(&invalid, &reference).await.unwrap();
    }

    let events = server.events();
    assert_eq!(events.len(), 1, "{:#?}", server.events_json());
    let e = &events[0];
    assert_eq!(e.reason.as_deref(), Some("InvalidConfig"));
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.series.as_ref().map(|s| s.count), Some(3));
    assert_eq!(e.reporting_controller.as_deref(), Some("ip-masq-agent"));
    assert_eq!(e.reporting_instance.as_deref(), Some("node-1"));
    let regarding = e.regarding.as_ref().unwrap();
    assert_eq!(regarding.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(regarding.uid, cm.metadata.uid);

    let writes: Vec<String> = requests_matching(&server, |r| r.method != "GET")
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r.method,
                r.path.replace(e.metadata.name.as_deref().unwrap(), "NAME"),
                r.content_type.as_deref().unwrap_or("-"),
                r.status
            )
        })
        .collect();
    assert_eq!(
        writes,
        [
            "POST /apis/events.k8s.io/v1/namespaces/kube-system/events application/json 201",
            "PATCH /apis/events.k8s.io/v1/namespaces/kube-system/events/NAME application/merge-patch+json 200",
            "PATCH /apis/events.k8s.io/v1/namespaces/kube-system/events/NAME application/merge-patch+json 200",
        ]
    );

    let described = server.describe_events_for("ConfigMap", NS, NAME);
    let rows: Vec<&str> = described.lines().collect();
    assert_eq!(rows.len(), 4, "{described}");
    assert_eq!(rows[0], "Events:");
    // The Age column's width depends on the clock; the rest is literal.
    assert!(
        rows[1].starts_with("  Type     Reason         Age  "),
        "{described}"
    );
    assert!(
        rows[2].starts_with("  ----     ------         ----  "),
        "{described}"
    );
    assert!(
        rows[3].starts_with("  Warning  InvalidConfig  ") && rows[3].contains(" (x3 over "),
        "{described}"
    );
    let from = rows[1].find("From").unwrap();
    assert_eq!(rows[1][from..], *"From           Message", "{described}");
    assert_eq!(
        rows[3][from..],
        *"ip-masq-agent  config: nonMasqueradeCIDRs[0]: invalid CIDR \"10.0.0.0/33\"",
        "{described}"
    );
    assert_eq!(
        server.describe_events_for("ConfigMap", NS, "other"),
        "Events:  <none>\n"
    );

    // What the real server refuses, the fake refuses: a note over 1 kB.
    let long = Event {
        reason: "TooLong".into(),
        note: Some("x".repeat(1025)),
        ..invalid
    };
    let (code, reason, message) =
        api_status(recorder.publish(&long, &reference).await.unwrap_err());
    assert_eq!((code, reason.as_str()), (422, "Invalid"), "{message}");
}

#[tokio::test]
async fn event_writes_follow_the_real_servers_rules() {
    let server = FakeApiServer::start_local();
    let client = client_for(&server).await;
    let events: Api<K8sEvent> = Api::namespaced(client, NS);
    let now = Timestamp::now();
    let event = K8sEvent {
        metadata: kube::api::ObjectMeta {
            generate_name: Some("ip-masq-agent.".into()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        reporting_controller: Some("ip-masq-agent".into()),
        reporting_instance: Some("node-1".into()),
        action: Some("LoadConfig".into()),
        reason: Some("ConfigApplied".into()),
        type_: Some("Normal".into()),
        note: Some("rules in sync".into()),
        regarding: Some(ObjectReference {
            kind: Some("ConfigMap".into()),
            namespace: Some(NS.into()),
            name: Some(NAME.into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = events.create(&PostParams::default(), &event).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("ip-masq-agent.") && name.len() == "ip-masq-agent.".len() + 5);
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());

    let mut missing = event.clone();
    missing.reporting_controller = None;
    let (code, _, message) = api_status(
        events
            .create(&PostParams::default(), &missing)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        message.contains("reportingController: Required value"),
        "{message}"
    );

    let mut same_name = event.clone();
    same_name.metadata.name = Some(name.clone());
    let (code, reason, _) = api_status(
        events
            .create(&PostParams::default(), &same_name)
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    // The note is immutable; the series is what a repeat may change.
    let note = json!({"note": "something else"});
    let (code, _, message) = api_status(
        events
            .patch(&name, &PatchParams::default(), &Patch::Merge(&note))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(message.contains("note: Invalid value"), "{message}");
    let series = EventSeries {
        count: 2,
        last_observed_time: MicroTime(now + SignedDuration::from_secs(5)),
    };
    let patched = events
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(&json!({"series": series})),
        )
        .await
        .unwrap();
    assert_eq!(patched.series.map(|s| s.count), Some(2));
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    // A stale resourceVersion in the patch: 409 Conflict.
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version},
                       "series": {"count": 3, "lastObservedTime": "2030-01-01T00:00:00.000000Z"}});
    let (code, reason, _) = api_status(
        events
            .patch(&name, &PatchParams::default(), &Patch::Merge(&stale))
            .await
            .unwrap_err(),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // Objects are created only in namespaces that exist.
    let elsewhere: Api<K8sEvent> = Api::namespaced(events.clone().into_client(), "ip-masq");
    let mut there = event.clone();
    there.regarding.as_mut().unwrap().namespace = Some("ip-masq".into());
    let (code, _, message) = api_status(
        elsewhere
            .create(&PostParams::default(), &there)
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (404, "namespaces \"ip-masq\" not found")
    );
    server.create_namespace("ip-masq");
    elsewhere
        .create(&PostParams::default(), &there)
        .await
        .unwrap();
    elsewhere
        .delete_collection(&Default::default(), &Default::default())
        .await
        .unwrap_err();

    let list = events.list(&ListParams::default()).await.unwrap();
    assert_eq!(list.items.len(), 1);
    let (code, _, message) = api_status(events.get("nope").await.unwrap_err());
    assert_eq!(
        (code, message.as_str()),
        (404, "events.events.k8s.io \"nope\" not found")
    );
    events
        .delete("nope", &Default::default())
        .await
        .unwrap_err();
    events.delete(&name, &Default::default()).await.unwrap();
    assert_eq!(server.events().len(), 1, "only the one in ip-masq is left");
}

#[test]
fn events_render_as_kubectl_describe_prints_them() {
    let now = Timestamp::from_second(2_000_000_000).unwrap();
    let at = |secs_ago: i64| MicroTime(now - SignedDuration::from_secs(secs_ago));
    let event = |type_: &str, reason: &str, note: &str| K8sEvent {
        type_: Some(type_.into()),
        reason: Some(reason.into()),
        note: Some(note.into()),
        reporting_controller: Some("ip-masq-agent".into()),
        ..Default::default()
    };
    let repeated = K8sEvent {
        event_time: Some(at(130)),
        series: Some(EventSeries {
            count: 3,
            last_observed_time: at(5),
        }),
        ..event(
            "Warning",
            "InvalidConfig",
            "config: nonMasqueradeCIDRs[0]: invalid CIDR \"10.0.0.0/33\"\n",
        )
    };
    let once = K8sEvent {
        event_time: Some(at(11 * 60)),
        ..event("Normal", "ConfigApplied", "rules in sync")
    };
    let text = render_events_table(&[repeated, once], now);
    assert_eq!(
        text,
        "Events:
  Type     Reason         Age                 From           Message
  ----     ------         ----                ----           -------
  Normal   ConfigApplied  11m                 ip-masq-agent  rules in sync
  Warning  InvalidConfig  5s (x3 over 2m10s)  ip-masq-agent  config: nonMasqueradeCIDRs[0]: invalid CIDR \"10.0.0.0/33\"
"
    );
    assert_eq!(render_events_table(&[], now), "Events:  <none>\n");
}

/// The agent runs in a network namespace, so the server must listen in
/// there: reachable with `ip netns exec`, not from the root namespace, and
/// on the same address again after a restart. The root namespace is only
/// read (`/proc/net/tcp`) and connected to, never configured.
#[test]
fn a_listener_made_in_a_namespace_serves_only_inside_it() {
    if !require_tools(&["curl"]) {
        return;
    }
    let ns = Netns::new();
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    server.put_configmap(NS, NAME, data("a"));
    let url = format!(
        "{}/api/v1/namespaces/kube-system/configmaps/{NAME}",
        server.url()
    );
    let auth = format!("Authorization: Bearer {TOKEN}");
    let curl = || ns.run(&["curl", "-sS", "--max-time", "10", "-H", &auth, &url]);
    let cm: Value = serde_json::from_str(&curl()).expect("JSON from inside the namespace");
    assert_eq!(cm["data"]["config"], "a");

    // Our listening socket is in the namespace's TCP table and not in the
    // root namespace's (each process reads its own namespace's table).
    let port = server.addr().port();
    let ours = own_socket_inodes();
    let inside = listening_inodes(&ns.run(&["cat", "/proc/net/tcp"]), port);
    assert!(
        inside.iter().any(|i| ours.contains(i)),
        "not listening inside: {inside:?}"
    );
    let root_table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let in_root = listening_inodes(&root_table, port);
    assert!(
        !in_root.iter().any(|i| ours.contains(i)),
        "listening in the root namespace"
    );
    // So connecting from here is refused (unless some other program happens
    // to listen on that port here, which the table shows).
    match TcpStream::connect_timeout(&server.addr(), Duration::from_secs(5)) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => assert!(!in_root.is_empty(), "connected, yet nothing listens here"),
    }

    server.restart();
    let cm: Value = serde_json::from_str(&curl()).expect("served again after the restart");
    assert_eq!(cm["data"]["config"], "a");
    let inside = listening_inodes(&ns.run(&["cat", "/proc/net/tcp"]), port);
    assert!(
        inside.iter().any(|i| own_socket_inodes().contains(i)),
        "after the restart, the same port is listened on inside again"
    );
}

/// Inodes of the sockets in a `/proc/net/tcp` table that listen (state
/// 0A) on 127.0.0.1 or 0.0.0.0 at `port`.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    let wanted = [
        format!("0100007F:{port:04X}"),
        format!("00000000:{port:04X}"),
    ];
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listens = f.len() > 9 && wanted.iter().any(|w| w == f[1]) && f[3] == "0A";
            listens.then(|| f[9].parse().ok()).flatten()
        })
        .collect()
}

/// Inodes of every socket this process has open.
fn own_socket_inodes() -> Vec<u64> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

#[tokio::test]
async fn the_kubeconfig_file_reaches_the_server_with_its_token() {
    let server = FakeApiServer::start_local();
    server.put_configmap(NS, NAME, data("a"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    server.write_kubeconfig(&path).unwrap();
    // What `--kubeconfig PATH` or `KUBECONFIG=PATH` reads.
    let kubeconfig = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    assert_eq!(config.cluster_url.to_string(), format!("{}/", server.url()));
    assert_eq!(config.default_namespace, NS);
    let client = Client::try_from(config).unwrap();
    let cm = Api::<ConfigMap>::default_namespaced(client)
        .get(NAME)
        .await
        .unwrap();
    assert_eq!(config_of(&cm), "a");
    let get = &server.requests()[0];
    assert_eq!(
        get.to_string(),
        "GET /api/v1/namespaces/kube-system/configmaps/ip-masq-agent -> 200"
    );
}

/// Label selectors as kube-apiserver reads them: every operator, `in(` with
/// or without a space, a 400 for what it refuses, and the
/// `send_every_configmap` misbehaviour that ignores namespace and selector.
#[test]
fn label_selectors_filter_lists_and_bad_ones_are_refused() {
    let server = FakeApiServer::start_local();
    let labeled = |labels: Value| json!({"metadata": {"labels": labels}, "data": {"config": "x"}});
    server.put_configmap_object(
        NS,
        "platform",
        labeled(json!({"example.com/masq-part": "platform"})),
    );
    server.put_configmap_object(
        NS,
        "users",
        labeled(json!({"example.com/masq-part": "users", "legacy": ""})),
    );
    server.put_configmap_object(NS, "other", labeled(json!({"app": "dns"})));
    server.create_namespace("tenants");
    server.put_configmap_object(
        "tenants",
        "platform",
        labeled(json!({"example.com/masq-part": "platform"})),
    );
    let names = |selector: &str| -> (String, Vec<String>) {
        let path = format!("/api/v1/namespaces/{NS}/configmaps?labelSelector={selector}");
        let (head, body) = raw_get(server.addr(), &path, Some(TOKEN));
        let status = head.split_whitespace().nth(1).unwrap_or("").to_owned();
        let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let items = body["items"].as_array().cloned().unwrap_or_default();
        let names = items
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or("").to_owned())
            .collect();
        (status, names)
    };
    let ok = |names: &[&str]| {
        (
            "200".to_owned(),
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(names("example.com%2Fmasq-part"), ok(&["platform", "users"]));
    assert_eq!(names("example.com%2Fmasq-part%3Dusers"), ok(&["users"]));
    assert_eq!(
        names("example.com%2Fmasq-part%20in%20%28platform%2Cusers%29"),
        ok(&["platform", "users"])
    );
    assert_eq!(
        names("example.com%2Fmasq-part%20in%28platform%29"),
        ok(&["platform"])
    );
    assert_eq!(
        names("example.com%2Fmasq-part%2C%21legacy"),
        ok(&["platform"])
    );
    assert_eq!(
        names("example.com%2Fmasq-part%20notin%20%28users%29"),
        ok(&["other", "platform"])
    );
    assert_eq!(names("app%21%3Ddns"), ok(&["platform", "users"]));
    for bad in [
        "-a%3Db",
        "a%3D-b",
        "Example.com%2Fa",
        "a%20in%20%28%29",
        "a%2Fb%2Fc",
    ] {
        assert_eq!(names(bad).0, "400", "{bad}");
    }
    server.send_every_configmap(true);
    let (_, every) = names("example.com%2Fmasq-part%3Dusers");
    assert_eq!(
        every.len(),
        4,
        "every ConfigMap of every namespace: {every:?}"
    );
}
