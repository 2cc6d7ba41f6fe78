//! The Kubernetes API as config source (`--configmap`): the real agent, in
//! a namespace of the test's own, watches a ConfigMap on the in-process API
//! server (`support::apiserver`, listening inside that namespace) and
//! writes real rules, read back with `iptables-save`. The agent only gets a
//! kubeconfig: it cannot tell the server from a kube-apiserver.
//!
//! Covered: the initial list, a live update, an invalid update (one
//! Warning Event on the ConfigMap, rules unchanged), the same invalid
//! content seen again (no second Event), deletion (defaults), a server
//! restart mid-watch, a 410 that forces a relist, persistent sync failures
//! (a SyncFailed Event on the agent's Pod), and the source's state in
//! `/readyz` and `/metrics`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use tempfile::TempDir;

use crate::support::Family::V4;
use crate::support::apiserver::{FakeApiServer, listen_in_netns};
use crate::support::http::{get, sample};
use crate::support::*;

const NS: &str = "kube-system";
const NAME: &str = "ip-masq-agent";
const NODE: &str = "node-a";
const POD: &str = "ip-masq-agent-x7k2p";

const TEN_ONLY: &str = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\n";
const VPN: &str = "nonMasqueradeCIDRs:\n  - 10.10.0.0/16\n  - 10.40.0.0/14\nmasqLinkLocal: true\n";
/// Not aligned: rejected with upstream's text.
const INVALID: &str = "nonMasqueradeCIDRs:\n  - 10.0.0.1/8\nmasqLinkLocal: true\n";
const INVALID_TOO: &str = "nonMasqueradeCIDRs: [10.0.0.0/8]\ncidrLimit: 0\nmasqLinkLocal: true\n";

/// What the file next to the agent says: never used with `--configmap`.
const FILE_CONFIG: &str = "nonMasqueradeCIDRs:\n  - 192.0.2.0/24\nmasqLinkLocal: true\n";

fn data(text: &str) -> BTreeMap<String, String> {
    BTreeMap::from([("config".to_owned(), text.to_owned())])
}

/// The `RETURN` destinations of our chain, in order.
fn returns(ns: &Netns) -> Vec<String> {
    save(ns, Mode::Nft, V4)
        .lines()
        .filter(|l| l.starts_with("-A IP-MASQ-AGENT -d "))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect()
}

/// A namespace, the API server listening inside it, and the agent there
/// reading `NS/NAME` through it (iptables-nft).
struct Cluster {
    server: FakeApiServer,
    agent: Agent,
    ns: Netns,
    _volume: ConfigVolume,
    _dir: TempDir,
}

impl Cluster {
    fn start(initial: Option<&str>) -> Cluster {
        Self::start_with(initial, &[])
    }

    fn start_with(initial: Option<&str>, env: &[(&str, &str)]) -> Cluster {
        let ns = Netns::new();
        let server =
            FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
        if let Some(text) = initial {
            server.put_configmap(NS, NAME, data(text));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig: PathBuf = dir.path().join("kubeconfig");
        server
            .write_kubeconfig(&kubeconfig)
            .expect("write kubeconfig");
        let volume = ConfigVolume::with(FILE_CONFIG);
        let mut all_env = vec![
            ("NODE_NAME", NODE),
            ("POD_NAME", POD),
            ("POD_NAMESPACE", NS),
            ("POD_UID", "0f0e0d0c-0000-4000-8000-000000000001"),
        ];
        all_env.extend_from_slice(env);
        let agent = Agent::start_with_env(
            &ns,
            Mode::Nft,
            &volume,
            &[
                &format!("--configmap={NS}/{NAME}"),
                &format!("--kubeconfig={}", kubeconfig.display()),
            ],
            &all_env,
        );
        Cluster {
            server,
            agent,
            ns,
            _volume: volume,
            _dir: dir,
        }
    }

    fn wait_returns(&mut self, expected: &[&str], what: &str) {
        let Cluster { agent, ns, .. } = self;
        wait_until(
            DEADLINE,
            what,
            || {
                agent.assert_running();
                returns(ns).join(" ")
            },
            |live| *live == expected.join(" "),
        );
    }

    fn events(&self, reason: &str) -> Vec<Event> {
        self.server
            .events()
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .collect()
    }

    fn wait_events(&mut self, reason: &str, n: usize) -> Vec<Event> {
        let server = &self.server;
        let agent = &mut self.agent;
        wait_until(
            DEADLINE,
            &format!("{n} {reason} event(s)"),
            || {
                agent.assert_running();
                server
                    .events()
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some(reason))
                    .count()
            },
            |count| *count >= n,
        );
        self.events(reason)
    }
}

#[test]
fn initial_list_live_update_and_deletion() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start(Some(TEN_ONLY));
    // The API's config, not the file's.
    c.wait_returns(
        &["10.0.0.0/8"],
        "the ConfigMap's rules after the initial list",
    );
    let lists: Vec<_> = c
        .server
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && !r.is_watch() && r.path.ends_with("/configmaps"))
        .collect();
    assert!(!lists.is_empty(), "no list request");
    // RBAC can restrict list/watch to the one name only with this selector.
    for r in c
        .server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/configmaps"))
    {
        assert_eq!(
            r.param("fieldSelector"),
            Some("metadata.name=ip-masq-agent"),
            "{r}"
        );
    }

    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(
        &["10.10.0.0/16", "10.40.0.0/14"],
        "the edited ConfigMap's rules",
    );

    assert!(c.server.delete_configmap(NS, NAME));
    c.wait_returns(
        &[
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ],
        "the defaults after the ConfigMap is deleted",
    );
    c.agent.wait_for_log("defaults (no configmap or key)");
    assert!(c.server.events().is_empty(), "{:?}", c.server.events());
}

#[test]
fn absent_configmap_means_defaults() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start(None);
    c.wait_returns(
        &[
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ],
        "the defaults without a ConfigMap",
    );
    c.server.put_configmap(NS, NAME, data(TEN_ONLY));
    c.wait_returns(&["10.0.0.0/8"], "the created ConfigMap's rules");
}

#[test]
fn invalid_update_is_one_event_and_keeps_the_rules() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start(Some(TEN_ONLY));
    c.wait_returns(&["10.0.0.0/8"], "the first sync");

    c.server.put_configmap(NS, NAME, data(INVALID));
    let events = c.wait_events("InvalidConfig", 1);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    assert_eq!(e.type_.as_deref(), Some("Warning"));
    assert_eq!(e.reporting_controller.as_deref(), Some("ip-masq-agent"));
    assert_eq!(e.reporting_instance.as_deref(), Some(NODE));
    assert_eq!(e.action.as_deref(), Some("LoadConfig"));
    let note = e.note.as_deref().unwrap_or_default();
    assert!(note.contains("10.0.0.1/8"), "{note}");
    assert!(
        note.contains("keeps enforcing its last valid config"),
        "{note}"
    );
    let regarding = e.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("ConfigMap"));
    assert_eq!(regarding.namespace.as_deref(), Some(NS));
    assert_eq!(regarding.name.as_deref(), Some(NAME));
    let uid = c.server.configmap(NS, NAME).and_then(|cm| cm.metadata.uid);
    assert_eq!(regarding.uid, uid, "describe matches events by uid");
    assert!(e.series.is_none());
    assert_eq!(returns(&c.ns), ["10.0.0.0/8"], "rules unchanged");

    // The same content again: a relist after 410 delivers it anew, and a
    // label edit sends it as a modification. Neither is a new problem.
    c.server.expire_watches();
    let mut object =
        serde_json::to_value(c.server.configmap(NS, NAME).expect("object")).expect("json");
    object["metadata"]["labels"] = serde_json::json!({"edited": "yes"});
    c.server.put_configmap_object(NS, NAME, object);
    // A different invalid config is a new Event; the publisher is in order,
    // so once it is there, a duplicate of the first would be too.
    c.server.put_configmap(NS, NAME, data(INVALID_TOO));
    let events = c.wait_events("InvalidConfig", 2);
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        events.iter().all(|e| e.series.is_none()),
        "no repeat was counted: {events:?}"
    );
    assert!(
        events.iter().any(|e| e
            .note
            .as_deref()
            .unwrap_or_default()
            .contains("can only accept up to 0 CIDRs")),
        "{events:?}"
    );
    assert_eq!(returns(&c.ns), ["10.0.0.0/8"], "rules unchanged");

    // The first invalid content once more, after a valid one: the same
    // problem again, counted on its Event's series.
    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(&["10.10.0.0/16", "10.40.0.0/14"], "the valid config");
    c.server.put_configmap(NS, NAME, data(INVALID));
    let server = &c.server;
    wait_until(
        DEADLINE,
        "the first InvalidConfig event's series to count 2",
        || {
            server
                .events()
                .iter()
                .filter_map(|e| e.series.as_ref().map(|s| s.count))
                .max()
                .unwrap_or(0)
        },
        |count| *count == 2,
    );
    assert_eq!(c.events("InvalidConfig").len(), 2);
    assert_eq!(returns(&c.ns), ["10.10.0.0/16", "10.40.0.0/14"]);
    let describe = c.server.describe_events_for("ConfigMap", NS, NAME);
    assert!(describe.contains("Warning  InvalidConfig"), "{describe}");
    // What `kubectl describe configmap` shows (the README quotes it).
    eprintln!("{describe}");
}

#[test]
fn server_restart_and_410_relist_keep_following_the_configmap() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start(Some(TEN_ONLY));
    c.wait_returns(&["10.0.0.0/8"], "the first sync");
    let server = &c.server;
    wait_until(
        DEADLINE,
        "an open watch",
        || server.watch_count(),
        |n| *n >= 1,
    );

    // Connections reset mid-watch; the agent resumes from its resourceVersion.
    c.server.restart();
    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(
        &["10.10.0.0/16", "10.40.0.0/14"],
        "an edit made across a server restart",
    );

    // History compacted: the watch gets 410 Gone and the agent relists.
    let lists_before = c
        .server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch() && r.path.ends_with("/configmaps"))
        .count();
    c.server.expire_watches();
    c.server.put_configmap(NS, NAME, data(TEN_ONLY));
    c.wait_returns(&["10.0.0.0/8"], "an edit made after a 410");
    let server = &c.server;
    wait_until(
        DEADLINE,
        "a relist after the 410",
        || {
            server
                .requests()
                .iter()
                .filter(|r| r.method == "GET" && !r.is_watch() && r.path.ends_with("/configmaps"))
                .count()
        },
        |n| *n > lists_before,
    );
    assert!(c.server.events().is_empty(), "{:?}", c.server.events());

    // The API down: rules stay, readiness says why but stays ready.
    c.server.take_down();
    let ns = &c.ns;
    let readyz = wait_until(
        Duration::from_secs(30),
        "readiness to report the unreachable API",
        || get(ns, "http://127.0.0.1:9557/readyz", &[]).body,
        |body| body.contains("API unreachable"),
    );
    assert!(
        readyz
            .starts_with("ok: rules in sync; configmap kube-system/ip-masq-agent: API unreachable"),
        "{readyz}"
    );
    let metrics = get(ns, "http://127.0.0.1:9557/metrics", &[]).body;
    assert_eq!(
        sample(
            &metrics,
            "ip_masq_agent_config_source_connected",
            &[("source", "kubernetes")]
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "ip_masq_agent_config_source_errors_total",
            &[("source", "kubernetes")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    assert_eq!(returns(&c.ns), ["10.0.0.0/8"], "the last good config stays");
    c.server.bring_up();
    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(
        &["10.10.0.0/16", "10.40.0.0/14"],
        "an edit once the API is back",
    );
    let metrics = get(&c.ns, "http://127.0.0.1:9557/metrics", &[]).body;
    assert_eq!(
        sample(
            &metrics,
            "ip_masq_agent_config_source_connected",
            &[("source", "kubernetes")]
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[test]
fn persistent_sync_failures_are_one_event_on_the_pod() {
    if !require_root_and_tools() {
        return;
    }
    // No iptables on the agent's PATH: every sync fails (and is retried).
    let mut c = Cluster::start_with(Some(TEN_ONLY), &[("PATH", "/nonexistent")]);
    let events = c.wait_events("SyncFailed", 1);
    assert_eq!(events.len(), 1, "{events:?}");
    let e = &events[0];
    let regarding = e.regarding.as_ref().expect("regarding");
    assert_eq!(regarding.kind.as_deref(), Some("Pod"));
    assert_eq!(regarding.namespace.as_deref(), Some(NS));
    assert_eq!(regarding.name.as_deref(), Some(POD));
    assert_eq!(
        regarding.uid.as_deref(),
        Some("0f0e0d0c-0000-4000-8000-000000000001")
    );
    assert_eq!(e.reporting_instance.as_deref(), Some(NODE));
    let note = e.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("rule sync keeps failing (not_found)"),
        "{note}"
    );
    // More failed retries follow; they are held for the series, not new Events.
    c.agent.wait_for_lines("sync failed", 4);
    assert_eq!(c.events("SyncFailed").len(), 1);
    assert!(c.events("InvalidConfig").is_empty());
}

#[test]
fn one_shot_commands_read_the_configmap_once() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    server.put_configmap(NS, NAME, data(TEN_ONLY));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    let configmap = format!("--configmap={NS}/{NAME}");
    let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
    let flags = [
        configmap.as_str(),
        kubeconfig.as_str(),
        "--iptables-mode=nft",
    ];

    let run = |sub: &str| {
        let mut args = flags.to_vec();
        args.push(sub);
        oneshot(&ns, &args)
    };
    let out = run("sync");
    assert!(
        out.status.success(),
        "{}",
        crate::support::process::describe("sync", &out)
    );
    assert_eq!(returns(&ns), ["10.0.0.0/8"]);

    let out = run("check");
    assert!(
        out.status.success(),
        "{}",
        crate::support::process::describe("check", &out)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("configmap kube-system/ip-masq-agent key config: valid\n"),
        "{stdout}"
    );

    server.put_configmap(NS, NAME, data(INVALID));
    let out = run("check");
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        crate::support::process::describe("check", &out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("configmap kube-system/ip-masq-agent key config: invalid: CIDR \"10.0.0.1/8\" is not aligned"),
        "{stderr}"
    );
    // A one-shot command reports, it does not publish Events.
    assert!(server.events().is_empty());
}
