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
//!
//! And a server that misbehaves (issue #17): a refused port, then accepted;
//! 302 on list and watch; a watch that closes at once, or streams bad lines
//! or one endless line; 403, an HTML error page, bad JSON and a 300 MiB
//! body on list; a list that never answers; a server that ignores the name
//! selector. Each must come to one log line that names the server and the
//! cause, a failure counted by kind, retries that back off, and
//! "connected" only after a list completed. One-shot commands say 401, TLS,
//! 403 and a refused port in their own words.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use tempfile::TempDir;

use crate::support::Family::V4;
use crate::support::apiserver::{
    FakeApiServer, ListFault, LoggedRequest, TOKEN, USER, WatchFault, listen_in_netns,
};
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

const METRICS: &str = "http://127.0.0.1:9557/metrics";

/// Long enough for a retry at the backoff's longer steps.
const SLOW: Duration = Duration::from_secs(40);

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
        Self::start_prepared(initial, env, |_| {})
    }

    /// As `start_with`, with `prepare` done to the server before the agent
    /// starts (a fault, the listener down, other objects).
    fn start_prepared(
        initial: Option<&str>,
        env: &[(&str, &str)],
        prepare: impl FnOnce(&FakeApiServer),
    ) -> Cluster {
        Self::start_with_args(initial, env, &[], prepare)
    }

    /// As `start_prepared`, with `args` after `--configmap=NS/NAME`.
    fn start_with_args(
        initial: Option<&str>,
        env: &[(&str, &str)],
        args: &[&str],
        prepare: impl FnOnce(&FakeApiServer),
    ) -> Cluster {
        let ns = Netns::new();
        let server =
            FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
        if let Some(text) = initial {
            server.put_configmap(NS, NAME, data(text));
        }
        prepare(&server);
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
        let configmap = format!("--configmap={NS}/{NAME}");
        let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
        let mut all_args = vec![configmap.as_str(), kubeconfig.as_str()];
        all_args.extend_from_slice(args);
        let agent = Agent::start_with_env(&ns, Mode::Nft, &volume, &all_args, &all_env);
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

    /// A sample of the agent's `/metrics`, `source="kubernetes"` plus `labels`.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut all = vec![("source", "kubernetes")];
        all.extend_from_slice(labels);
        sample(&get(&self.ns, METRICS, &[]).body, name, &all)
    }

    fn wait_connected(&self, connected: bool) {
        let want = if connected { 1.0 } else { 0.0 };
        wait_until(
            SLOW,
            &format!("config_source_connected {want}"),
            || {
                self.metric("ip_masq_agent_config_source_connected", &[])
                    .unwrap_or(-1.0)
            },
            |v| *v == want,
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
        |body| body.contains("requests failing"),
    );
    assert!(
        readyz.starts_with(
            "ok: rules in sync\nconfigmap kube-system/ip-masq-agent: requests failing for "
        ),
        "{readyz}"
    );
    assert!(
        readyz.contains("enforcing the last good config"),
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
    c.wait_connected(true);
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

/// Lines of the agent's log that say the source failed.
const FAILED: &str = "Kubernetes API watch failed";
const RECOVERED: &str = "Kubernetes API watch recovered";

/// The requests of the window so far that match `is`.
fn count_requests(server: &FakeApiServer, is: impl Fn(&LoggedRequest) -> bool) -> usize {
    server.requests().iter().filter(|r| is(r)).count()
}

fn is_list(r: &LoggedRequest) -> bool {
    r.method == "GET" && !r.is_watch() && r.path.ends_with("/configmaps")
}

fn is_watch(r: &LoggedRequest) -> bool {
    r.method == "GET" && r.is_watch() && r.path.ends_with("/configmaps")
}

/// Every log line is one record: nothing from the server started a line of
/// its own, and no response was copied whole.
fn assert_log_lines_are_bounded(agent: &Agent) {
    let log = agent.log();
    for line in log.lines() {
        assert!(
            line.len() <= 2000,
            "a log line of {} bytes: {:.300}",
            line.len(),
            line
        );
        let lower = line.to_lowercase();
        assert!(
            !(lower.starts_with('<') || lower.starts_with("xxxx")),
            "a raw server text as a log line: {line:.300}"
        );
    }
    assert!(
        !log.contains("failed with error"),
        "a transport error logged by the client library too:\n{log}"
    );
}

/// What one misbehaviour must come to: one log line that names the server
/// and the cause, the failure counted by kind, not connected, the rules of
/// the last good list kept, and retries that back off (a handful of
/// requests in 8 s, where a retry per second, or a hot loop, would be 8 to
/// thousands).
fn misbehaviour(
    initial: Option<&str>,
    prepare: impl FnOnce(&FakeApiServer),
    needle: &str,
    kind: &str,
    retried: fn(&LoggedRequest) -> bool,
) -> Cluster {
    let mut c = Cluster::start_prepared(initial, &[], prepare);
    c.agent.wait_for_log(needle);
    let before = count_requests(&c.server, retried);
    std::thread::sleep(Duration::from_secs(8));
    let during = count_requests(&c.server, retried) - before;
    assert!(
        during <= 5,
        "{during} retries in 8 s after {kind}:\n{}",
        c.agent.log()
    );
    assert_eq!(c.agent.count_lines(FAILED), 1, "{}", c.agent.log());
    assert_eq!(c.agent.count_lines(RECOVERED), 0, "{}", c.agent.log());
    let failures = c
        .metric(
            "ip_masq_agent_config_source_failures_total",
            &[("kind", kind)],
        )
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "{kind} counted {failures} times");
    assert_eq!(
        c.metric("ip_masq_agent_config_source_connected", &[]),
        Some(0.0)
    );
    assert_log_lines_are_bounded(&c.agent);
    c.agent.assert_running();
    c
}

#[test]
fn a_refused_port_backs_off_and_recovers_only_after_a_list() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start_prepared(Some(TEN_ONLY), &[], |server| server.take_down());
    let url = c.server.url();
    c.agent.wait_for_log(&format!(
        "cannot reach {url} (connection refused) listing configmap kube-system/ip-masq-agent"
    ));
    std::thread::sleep(Duration::from_secs(8));
    // 0.8 s doubling with ±25 %: at most 5 attempts in the first 8 s
    // (the first at once); a retry per second would be 9.
    let attempts = c
        .metric(
            "ip_masq_agent_config_source_failures_total",
            &[("kind", "unreachable")],
        )
        .unwrap_or(0.0);
    assert!(
        (2.0..=5.0).contains(&attempts),
        "{attempts} attempts in 8 s:\n{}",
        c.agent.log()
    );
    assert_eq!(c.agent.count_lines(FAILED), 1, "{}", c.agent.log());
    assert_eq!(c.agent.count_lines(RECOVERED), 0, "nothing connected yet");
    assert_eq!(
        c.metric("ip_masq_agent_config_source_connected", &[]),
        Some(0.0)
    );
    assert_log_lines_are_bounded(&c.agent);

    // The server comes back: the next attempt lists, and only then the
    // source is connected and says it recovered, without any change to the
    // ConfigMap.
    c.server.bring_up();
    let Cluster { agent, ns, .. } = &mut c;
    wait_until(
        SLOW,
        "the ConfigMap's rules once the API is up",
        || {
            agent.assert_running();
            returns(ns).join(" ")
        },
        |live| live == "10.0.0.0/8",
    );
    c.wait_connected(true);
    assert_eq!(c.agent.count_lines(RECOVERED), 1, "{}", c.agent.log());
    assert!(count_requests(&c.server, is_list) >= 1);
    let log = c.agent.log();
    let listed_at = log.find("using config").expect("the config was used");
    let recovered_at = log.find(RECOVERED).expect("recovered");
    assert!(listed_at < recovered_at, "recovered before a list:\n{log}");
}

#[test]
fn a_redirected_watch_is_not_a_hot_loop() {
    if !require_root_and_tools() {
        return;
    }
    let c = misbehaviour(
        Some(TEN_ONLY),
        |s| s.set_watch_fault(Some(WatchFault::Redirect)),
        "redirected (302 to http://127.0.0.1:1/api/v1/elsewhere) watching configmap kube-system/ip-masq-agent",
        "redirect",
        is_watch,
    );
    assert_eq!(returns(&c.ns), ["10.0.0.0/8"], "the listed config applies");
}

#[test]
fn a_watch_that_closes_at_once_backs_off() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = misbehaviour(
        Some(TEN_ONLY),
        |s| s.set_watch_fault(Some(WatchFault::ClosesAtOnce)),
        "closed the watch at once, without an event, watching configmap kube-system/ip-masq-agent",
        "watch_closed",
        is_watch,
    );
    // Healed: a list and a watch that stays up, then connected, said once.
    c.server.set_watch_fault(None);
    c.wait_connected(true);
    c.agent.wait_for_log(RECOVERED);
    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(&["10.10.0.0/16", "10.40.0.0/14"], "an edit once healed");
}

#[test]
fn a_watch_of_bad_lines_is_dropped_and_retried_with_backoff() {
    if !require_root_and_tools() {
        return;
    }
    let c = misbehaviour(
        Some(TEN_ONLY),
        |s| s.set_watch_fault(Some(WatchFault::BadLines)),
        "sent a watch line that is not a watch event",
        "bad_response",
        is_watch,
    );
    assert!(
        c.agent
            .log()
            .contains("beginning \"<html>not a watch event</html>\" watching"),
        "{}",
        c.agent.log()
    );
}

#[test]
fn a_huge_watch_line_is_cut_off_at_the_cap() {
    if !require_root_and_tools() {
        return;
    }
    let c = misbehaviour(
        Some(TEN_ONLY),
        |s| s.set_watch_fault(Some(WatchFault::HugeLine(300 << 20))),
        "exceeds 8 MiB and was cut off",
        "too_large",
        is_watch,
    );
    // The cap bounds what is held: far below the 300 MiB sent.
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.agent.pid()))
        .expect("the agent's status");
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    assert!(peak_kib < 150 << 10, "peak RSS {peak_kib} KiB");
}

#[test]
fn forbidden_html_and_bad_json_lists_are_said_once_with_backoff() {
    if !require_root_and_tools() {
        return;
    }
    // 403: which verb on which resource, and the RBAC that grants it.
    let mut c = misbehaviour(
        None,
        |s| s.deny("list", "configmaps"),
        "forbids it (403 Forbidden) listing configmap kube-system/ip-masq-agent: may not list configmaps in namespace kube-system",
        "forbidden",
        |r| is_list(r) && r.status == 403,
    );
    for needle in ["resourceNames [ip-masq-agent]", "verbs [list, watch]", USER] {
        assert!(
            c.agent.log().contains(needle),
            "{needle}: {}",
            c.agent.log()
        );
    }
    c.server.allow_all();
    c.server.put_configmap(NS, NAME, data(TEN_ONLY));
    let Cluster { agent, ns, .. } = &mut c;
    wait_until(
        SLOW,
        "the rules once RBAC allows the list",
        || {
            agent.assert_running();
            returns(ns).join(" ")
        },
        |live| live == "10.0.0.0/8",
    );
    c.wait_connected(true);

    // A proxy's HTML page: an excerpt, escaped, on the one failure line.
    let c = misbehaviour(
        None,
        |s| s.set_list_fault(Some(ListFault::HtmlError)),
        "answered HTTP 502 with text/html, not a Kubernetes Status, listing configmap kube-system/ip-masq-agent: \"<html>\\r\\n<head>",
        "not_status",
        is_list,
    );
    assert_eq!(c.agent.count_lines("Bad Gateway"), 1, "{}", c.agent.log());

    // 5 MB that is not JSON: one bounded excerpt, not the body.
    let c = misbehaviour(
        None,
        |s| s.set_list_fault(Some(ListFault::BadJson(5 << 20))),
        "a list answer that is not a ConfigMapList",
        "bad_response",
        is_list,
    );
    assert!(
        c.agent.log().len() < 64 << 10,
        "{} bytes of log",
        c.agent.log().len()
    );
}

#[test]
fn a_huge_or_redirected_list_is_refused() {
    if !require_root_and_tools() {
        return;
    }
    misbehaviour(
        None,
        |s| s.set_list_fault(Some(ListFault::Huge(300 << 20))),
        "listing configmap kube-system/ip-masq-agent exceeds 8 MiB and was cut off",
        "too_large",
        is_list,
    );
    misbehaviour(
        None,
        |s| s.set_list_fault(Some(ListFault::Redirect)),
        "redirected (302 to http://127.0.0.1:1/api/v1/elsewhere) listing configmap",
        "redirect",
        is_list,
    );
}

#[test]
fn a_list_that_hangs_times_out() {
    if !require_root_and_tools() {
        return;
    }
    let mut c = Cluster::start_prepared(Some(TEN_ONLY), &[], |s| {
        s.set_list_fault(Some(ListFault::Hang))
    });
    let url = c.server.url();
    let needle =
        format!("no answer from {url} within 20 s listing configmap kube-system/ip-masq-agent");
    let agent = &mut c.agent;
    wait_until(
        SLOW,
        "the hanging list to time out",
        || {
            agent.assert_running();
            agent.count_lines(&needle)
        },
        |n| *n == 1,
    );
    assert_eq!(c.agent.count_lines(FAILED), 1);
    c.server.set_list_fault(None);
    c.wait_returns(&["10.0.0.0/8"], "the rules once the list answers");
    c.wait_connected(true);
}

#[test]
fn only_the_named_configmap_is_applied() {
    if !require_root_and_tools() {
        return;
    }
    // A server that ignores the name selector sends every ConfigMap of the
    // namespace; "other" sorts after ours, so it would come last.
    let mut c = Cluster::start_prepared(Some(TEN_ONLY), &[], |s| {
        s.ignore_name_selector(true);
        s.put_configmap(NS, "other", data(VPN));
    });
    c.wait_returns(&["10.0.0.0/8"], "our ConfigMap's rules, not other's");
    c.agent
        .wait_for_log("ignoring every object of another name");
    // Watched changes of another object change nothing, not even a deletion.
    c.server.put_configmap(NS, "other", data(INVALID));
    c.server.put_configmap(NS, "other", data(INVALID_TOO));
    assert!(c.server.delete_configmap(NS, "other"));
    c.server.put_configmap(NS, NAME, data(VPN));
    c.wait_returns(&["10.10.0.0/16", "10.40.0.0/14"], "our edit");
    assert!(
        c.events("InvalidConfig").is_empty(),
        "{:?}",
        c.events("InvalidConfig")
    );
    assert_eq!(
        c.agent.count_lines("ignoring every object of another name"),
        1
    );
    assert_eq!(c.agent.count_lines("defaults (no configmap or key)"), 0);
}

#[test]
fn one_shot_errors_name_the_server_and_the_cause() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    server.put_configmap(NS, NAME, data(TEN_ONLY));
    let dir = tempfile::tempdir().expect("temp dir");
    let check = |kubeconfig_text: String| {
        let path = dir.path().join("kubeconfig");
        std::fs::write(&path, kubeconfig_text).expect("write kubeconfig");
        let kubeconfig = format!("--kubeconfig={}", path.display());
        let out = oneshot(
            &ns,
            &[&format!("--configmap={NS}/{NAME}"), &kubeconfig, "check"],
        );
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let url = server.url();
    let base = server.kubeconfig_yaml();

    let stderr = check(base.replace(TOKEN, "not-the-token"));
    assert!(
        stderr.contains(&format!("{url} rejected the credentials (401 Unauthorized) listing configmap kube-system/ip-masq-agent")),
        "{stderr}"
    );
    // https to a plain-http server: the handshake fails.
    let tls_url = url.replace("http://", "https://");
    let stderr = check(base.replace(&url, &tls_url));
    assert!(
        stderr.contains(&format!("TLS with {tls_url} failed (")),
        "{stderr}"
    );
    server.deny("list", "configmaps");
    let stderr = check(base.clone());
    assert!(
        stderr.contains("forbids it (403 Forbidden) listing configmap kube-system/ip-masq-agent: may not list configmaps"),
        "{stderr}"
    );
    server.take_down();
    let stderr = check(base);
    assert!(
        stderr.contains(&format!(
            "cannot reach {url} (connection refused) listing configmap kube-system/ip-masq-agent"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("failed with error"), "{stderr}");
}

/// Two `--configmap`: one in a namespace RBAC refuses (403), beside one
/// that works. The working one's state does not hide the refused one's:
/// `/readyz` stays 503 naming it, on a line of its own, and
/// `config_source_connected` stays 0, with nothing written. Once RBAC
/// allows it, both are merged and enforced, ready, and connected is 1.
#[test]
fn a_refused_configmap_beside_a_working_one_is_named_until_it_lists() {
    if !require_root_and_tools() {
        return;
    }
    const TENANTS: &str = "tenants";
    const EXTRA: &str = "ip-masq-extra";
    const READYZ: &str = "http://127.0.0.1:9557/readyz";
    let extra = format!("--configmap={TENANTS}/{EXTRA}");
    let mut c = Cluster::start_with_args(Some(TEN_ONLY), &[], &[&extra], |server| {
        server.create_namespace(TENANTS);
        server.put_configmap(
            TENANTS,
            EXTRA,
            data("nonMasqueradeCIDRs: [192.168.0.0/16]\n"),
        );
        server.deny_in("list", "configmaps", TENANTS);
    });
    let ns = &c.ns;
    let refused = wait_until(
        DEADLINE,
        "readiness to name the refused ConfigMap beside the watched one",
        || get(ns, READYZ, &[]),
        |r| {
            r.body
                .contains("configmap tenants/ip-masq-extra: requests failing")
                && r.body
                    .contains("configmap kube-system/ip-masq-agent: watching")
        },
    );
    assert_eq!(refused.status, 503, "{refused}");
    let lines: Vec<&str> = refused.body.lines().collect();
    assert_eq!(
        lines[0],
        "no valid config yet: waiting for the Kubernetes API to list configmap tenants/ip-masq-extra",
        "{refused}"
    );
    assert!(
        lines[1].starts_with("configmap kube-system/ip-masq-agent: watching, last object "),
        "{refused}"
    );
    assert!(
        lines[2].starts_with("configmap tenants/ip-masq-extra: requests failing for ")
            && lines[2].contains("403")
            && lines[2].ends_with("not listed yet"),
        "{refused}"
    );
    assert_eq!(
        c.metric("ip_masq_agent_config_source_connected", &[]),
        Some(0.0),
        "one source refused"
    );
    assert!(
        c.metric(
            "ip_masq_agent_config_source_failures_total",
            &[("kind", "forbidden")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        returns(&c.ns).is_empty(),
        "nothing written before every source listed"
    );

    c.server.allow_all();
    c.wait_returns(&["10.0.0.0/8", "192.168.0.0/16"], "both ConfigMaps merged");
    c.wait_connected(true);
    let ns = &c.ns;
    let ready = wait_until(
        DEADLINE,
        "readiness with both sources watching",
        || get(ns, READYZ, &[]),
        |r| r.status == 200 && !r.body.contains("failing"),
    );
    assert_eq!(
        ready
            .body
            .lines()
            .map(|l| l.split(", last").next().unwrap_or(l))
            .collect::<Vec<_>>(),
        [
            "ok: rules in sync",
            "configmap kube-system/ip-masq-agent: watching",
            "configmap tenants/ip-masq-extra: watching",
        ],
        "{ready}"
    );
    c.agent.assert_running();
}
