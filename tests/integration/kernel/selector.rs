//! `--configmap-selector`: the real agent, in a namespace of the test's
//! own, lists and watches the ConfigMaps a label selector picks on the
//! in-process API server (`support::apiserver`) and merges every one's key
//! into real rules, read back with `iptables-save`.
//!
//! Covered: two picked ConfigMaps merged; a third created later joins; a
//! bad one keeps its own last good contents while a good one's change
//! applies, with the Event on the bad ConfigMap and the fragment metric
//! naming it; one relabelled out of the selection leaves, one deleted
//! leaves; a ConfigMap also given by `--configmap` counts once (and stays
//! when it leaves the selection); one watch for the whole selection; a
//! server that sends every ConfigMap of every namespace cannot add a part;
//! a relist (after the server was down, or a 410) replaces the selection;
//! more than 100 picked ConfigMaps are refused; `sync` and `check` read the
//! selection once; a bad selector flag is refused at startup.

use std::path::Path;

use serde_json::{Value, json};
use tempfile::TempDir;

use super::merged::{returns, wait_returns};
use crate::support::Family::V4;
use crate::support::apiserver::{FakeApiServer, listen_in_netns};
use crate::support::http::{get, sample};
use crate::support::process::describe;
use crate::support::*;

const NS: &str = "kube-system";
const PART: &str = "example.com/masq-part";
/// Two requirements, spelled loosely: the agent sends the canonical form.
const SELECTOR: &str = "kube-system/ tier notin (test), example.com/masq-part";
const CANONICAL: &str = "example.com/masq-part,tier notin (test)";
const METRICS: &str = "http://127.0.0.1:9557/metrics";

const PLATFORM: &str = "nonMasqueradeCIDRs: [10.0.0.0/8]\n";
const PLATFORM_WIDER: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]\n";
const USERS: &str = "nonMasqueradeCIDRs: [192.168.0.0/16]\nmasqLinkLocal: true\n";
/// Host bits set: rejected, with upstream's text.
const USERS_BROKEN: &str = "nonMasqueradeCIDRs: [192.168.0.1/16]\nmasqLinkLocal: true\n";
const VPN: &str = "nonMasqueradeCIDRs: [172.16.0.0/12]\n";
/// What ConfigMaps the selector must not pick carry.
const STRAY: &str = "nonMasqueradeCIDRs: [198.51.100.0/24]\n";
/// The file beside the agent: never read with an API source.
const FILE_CONFIG: &str = "nonMasqueradeCIDRs: [192.0.2.0/24]\n";

/// A ConfigMap object with `labels` and the config under the default key.
fn object(labels: Value, config: &str) -> Value {
    json!({"metadata": {"labels": labels}, "data": {"config": config}})
}

fn part(name: &str) -> String {
    format!("configmap {NS}/{name} key config")
}

/// The agent in `ns`, reading the API through `server` with `flags`.
fn start_agent(
    ns: &Netns,
    server: &FakeApiServer,
    dir: &Path,
    flags: &[&str],
) -> (Agent, ConfigVolume) {
    let kubeconfig = dir.join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    let volume = ConfigVolume::with(FILE_CONFIG);
    let mut args: Vec<String> = flags.iter().map(|f| f.to_string()).collect();
    args.push(format!("--kubeconfig={}", kubeconfig.display()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start_with_env(ns, Mode::Nft, &volume, &args, &[("NODE_NAME", "node-a")]);
    (agent, volume)
}

/// Every `config_fragment_valid` series: (fragment, value), by name.
fn fragments(ns: &Netns) -> Vec<(String, f64)> {
    let body = get(ns, METRICS, &[]).body;
    let mut series: Vec<(String, f64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("ip_masq_agent_config_fragment_valid{fragment=\""))
        .filter_map(|l| {
            let (name, rest) = l.split_once("\"}")?;
            Some((name.to_owned(), rest.trim().parse().ok()?))
        })
        .collect();
    series.sort_by(|a, b| a.0.cmp(&b.0));
    series
}

fn invalid_config_on(server: &FakeApiServer, name: &str) -> usize {
    server
        .events()
        .iter()
        .filter(|e| {
            e.reason.as_deref() == Some("InvalidConfig")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .count()
}

/// An API server in `ns` holding the platform's selected ConfigMap.
fn server_with_platform(ns: &Netns) -> FakeApiServer {
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    server.put_configmap_object(
        NS,
        "ip-masq-platform",
        object(json!({PART: "platform"}), PLATFORM),
    );
    server
}

#[test]
fn a_selection_follows_configmaps_as_they_come_and_go() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = server_with_platform(&ns);
    server.put_configmap_object(NS, "ip-masq-users", object(json!({PART: "users"}), USERS));
    // Not picked: no label, or another namespace.
    server.put_configmap_object(NS, "coredns-extra", object(json!({"app": "dns"}), STRAY));
    server.create_namespace("tenants");
    server.put_configmap_object(
        "tenants",
        "ip-masq-tenant",
        object(json!({PART: "tenant"}), STRAY),
    );
    let dir: TempDir = tempfile::tempdir().expect("temp dir");
    let (mut agent, _volume) = start_agent(
        &ns,
        &server,
        dir.path(),
        &[
            "--configmap=kube-system/ip-masq-platform",
            &format!("--configmap-selector={SELECTOR}"),
        ],
    );
    let mode = Mode::Nft;
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "10.0.0.0/8 192.168.0.0/16",
        "both picked ConfigMaps merged (link-local masqueraded by the users' part), no stray one, no file",
    );
    // The platform's ConfigMap is given twice and counts once.
    assert_eq!(
        fragments(&ns),
        [
            (part("ip-masq-platform"), 1.0),
            (part("ip-masq-users"), 1.0)
        ],
        "one series per ConfigMap"
    );
    // One watch for the selection, its selector in the canonical form.
    let selector_watches: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.is_watch() && r.param("labelSelector").is_some())
        .collect();
    assert!(!selector_watches.is_empty(), "the selection is watched");
    for watch in &selector_watches {
        assert_eq!(watch.param("labelSelector"), Some(CANONICAL), "{watch}");
        assert_eq!(
            watch.path, "/api/v1/namespaces/kube-system/configmaps",
            "{watch}"
        );
    }

    // A third ConfigMap, created later, joins.
    server.put_configmap_object(NS, "ip-masq-vpn", object(json!({PART: "vpn"}), VPN));
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "10.0.0.0/8 192.168.0.0/16 172.16.0.0/12",
        "the new ConfigMap joins",
    );
    assert_eq!(
        server.watch_count(),
        2,
        "one watch for --configmap, one for the whole selection"
    );

    // The users' ConfigMap breaks while the platform's widens.
    server.put_configmap_object(
        NS,
        "ip-masq-users",
        object(json!({PART: "users"}), USERS_BROKEN),
    );
    server.put_configmap_object(
        NS,
        "ip-masq-platform",
        object(json!({PART: "platform"}), PLATFORM_WIDER),
    );
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "10.0.0.0/8 100.64.0.0/10 192.168.0.0/16 172.16.0.0/12",
        "the platform's change applies; the users' last good contents stay",
    );
    wait_until(
        DEADLINE,
        "an InvalidConfig Event on the users' ConfigMap",
        || invalid_config_on(&server, "ip-masq-users"),
        |n| *n == 1,
    );
    for other in ["ip-masq-platform", "ip-masq-vpn"] {
        assert_eq!(invalid_config_on(&server, other), 0, "no Event on {other}");
    }
    wait_until(
        DEADLINE,
        "the fragment metric names the bad ConfigMap",
        || format!("{:?}", fragments(&ns)),
        |text| text.contains(&format!("({:?}, 0.0)", part("ip-masq-users"))),
    );
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("Error syncing configuration")
                && l.contains(&part("ip-masq-users"))
                && l.contains("keeping its last valid contents")),
        "the rejection names the ConfigMap:\n{log}"
    );

    // Relabelled out of the selection: its contribution (and its
    // masqLinkLocal) leaves, so link-local is exempt again.
    server.put_configmap_object(
        NS,
        "ip-masq-users",
        object(json!({PART: "users", "tier": "test"}), USERS_BROKEN),
    );
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10 172.16.0.0/12",
        "a ConfigMap relabelled out of the selection leaves",
    );
    wait_until(
        DEADLINE,
        "the left ConfigMap's series is gone",
        || format!("{:?}", fragments(&ns)),
        |text| !text.contains("ip-masq-users"),
    );

    // Deleted: it leaves.
    assert!(server.delete_configmap(NS, "ip-masq-vpn"));
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10",
        "a deleted ConfigMap leaves",
    );

    // The platform's ConfigMap, given twice, breaks: one rejection, one
    // Event (two sources reading one object must not report it twice).
    // Events are written by a task of their own, so a second one would
    // come within moments of the first: wait a while before counting.
    server.put_configmap_object(
        NS,
        "ip-masq-platform",
        object(json!({PART: "platform"}), USERS_BROKEN),
    );
    wait_until(
        DEADLINE,
        "an InvalidConfig Event on the platform's ConfigMap",
        || invalid_config_on(&server, "ip-masq-platform"),
        |n| *n >= 1,
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        invalid_config_on(&server, "ip-masq-platform"),
        1,
        "{:?}",
        server.events()
    );
    let rejections = agent
        .log()
        .lines()
        .filter(|l| {
            l.contains("Error syncing configuration") && l.contains(&part("ip-masq-platform"))
        })
        .count();
    assert_eq!(
        rejections,
        1,
        "one rejection of the platform's part:\n{}",
        agent.log()
    );
    assert_eq!(
        returns(&ns, mode),
        "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10",
        "its last good contents stay"
    );

    // The platform's ConfigMap leaves the selection but is still given by
    // --configmap: it stays. (The users' comes back after it, so once the
    // users' CIDR is there, the platform's change was seen too.)
    server.put_configmap_object(
        NS,
        "ip-masq-platform",
        object(json!({"tier": "test"}), PLATFORM_WIDER),
    );
    server.put_configmap_object(NS, "ip-masq-users", object(json!({PART: "users"}), USERS));
    wait_returns(
        &mut agent,
        &ns,
        mode,
        "10.0.0.0/8 100.64.0.0/10 192.168.0.0/16",
        "the --configmap part stays; the users' ConfigMap is picked again",
    );
    assert_eq!(
        fragments(&ns),
        [
            (part("ip-masq-platform"), 1.0),
            (part("ip-masq-users"), 1.0)
        ]
    );
    assert!(
        !returns(&ns, mode).contains("198.51.100.0/24"),
        "no stray ConfigMap ever"
    );
    agent.assert_running();
}

/// A server that answers the selector with every ConfigMap of every
/// namespace: only objects of the selector's namespace whose labels match
/// become parts, on the list and on the watch alike.
#[test]
fn a_server_that_sends_everything_adds_no_part() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = server_with_platform(&ns);
    server.put_configmap_object(NS, "coredns-extra", object(json!({"app": "dns"}), STRAY));
    server.create_namespace("tenants");
    server.put_configmap_object(
        "tenants",
        "ip-masq-tenant",
        object(json!({PART: "tenant"}), STRAY),
    );
    server.send_every_configmap(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut agent, _volume) = start_agent(
        &ns,
        &server,
        dir.path(),
        &[&format!("--configmap-selector={NS}/{PART}")],
    );
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "169.254.0.0/16 10.0.0.0/8",
        "only the matching ConfigMap of kube-system",
    );
    agent.wait_for_log("ignoring every object of another namespace or whose labels do not match");

    // On the watch: a stray object, then a matching one; once the second
    // is applied, the first was seen and ignored.
    server.put_configmap_object(NS, "kube-proxy-extra", object(json!({}), STRAY));
    server.put_configmap_object(NS, "ip-masq-vpn", object(json!({PART: "vpn"}), VPN));
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "169.254.0.0/16 10.0.0.0/8 172.16.0.0/12",
        "the matching one joins",
    );
    assert_eq!(
        fragments(&ns),
        [(part("ip-masq-platform"), 1.0), (part("ip-masq-vpn"), 1.0)]
    );
    // A picked object that the server now sends without its label (as
    // MODIFIED, not as the DELETED a real server sends) leaves all the same.
    server.put_configmap_object(NS, "ip-masq-vpn", object(json!({}), VPN));
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "169.254.0.0/16 10.0.0.0/8",
        "an object that no longer matches leaves",
    );
    agent.assert_running();
}

/// A selector the API server would refuse never reaches it: the agent
/// exits at startup naming the flag, the value and what is wrong.
#[test]
fn a_bad_selector_is_refused_at_startup() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    for (value, why) in [
        ("kube-system", "must be NAMESPACE/LABELSELECTOR"),
        ("kube-system/", "the label selector must not be empty"),
        ("kube_system/app", "namespace \"kube_system\""),
        ("kube-system/app in (a", "the set is not closed"),
        ("kube-system/app=a&watch=false", "unexpected character '&'"),
        ("kube-system/app=-a", "label value \"-a\""),
    ] {
        let flag = format!("--configmap-selector={value}");
        let out = oneshot(&ns, &[&flag]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{}", describe(&flag, &out));
        let expected = format!("invalid value {value:?} for --configmap-selector: {why}");
        assert!(
            stderr.contains(&expected),
            "{expected}\n{}",
            describe(&flag, &out)
        );
    }
    assert_eq!(
        save(&ns, Mode::Nft, V4)
            .lines()
            .filter(|l| l.contains("IP-MASQ-AGENT"))
            .count(),
        0
    );
}

/// The selection's source is connected once its first list completed, as
/// `--configmap`'s is, and `/readyz` names it.
#[test]
fn the_selection_is_connected_after_its_first_list() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = server_with_platform(&ns);
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut agent, _volume) = start_agent(
        &ns,
        &server,
        dir.path(),
        &[&format!("--configmap-selector={NS}/{PART}")],
    );
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "169.254.0.0/16 10.0.0.0/8",
        "the picked ConfigMap",
    );
    let connected = wait_until(
        DEADLINE,
        "config_source_connected 1",
        || {
            sample(
                &get(&ns, METRICS, &[]).body,
                "ip_masq_agent_config_source_connected",
                &[("source", "kubernetes")],
            )
            .unwrap_or(-1.0)
        },
        |v| *v == 1.0,
    );
    assert_eq!(connected, 1.0);
    let ready = get(&ns, "http://127.0.0.1:9557/readyz", &[]);
    assert!(
        ready
            .body
            .contains("\nconfigmaps kube-system/example.com/masq-part: watching, last object "),
        "{}",
        ready.body
    );
}

/// `sync`, `check` and `render` read the selection once (one list), merged
/// as the daemon merges it, with `--configmap` beside it counted once.
#[test]
fn one_shot_commands_read_the_selection_once() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = server_with_platform(&ns);
    server.put_configmap_object(NS, "ip-masq-vpn", object(json!({PART: "vpn"}), VPN));
    server.put_configmap_object(NS, "coredns-extra", object(json!({"app": "dns"}), STRAY));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    let kubeconfig = format!("--kubeconfig={}", kubeconfig.display());
    let selector = format!("--configmap-selector={NS}/{PART}");
    let run = |extra: &[&str], sub: &str| {
        let mut args = vec![
            kubeconfig.as_str(),
            selector.as_str(),
            "--iptables-mode=nft",
        ];
        args.extend_from_slice(extra);
        args.push(sub);
        oneshot(&ns, &args)
    };

    let out = run(&[], "sync");
    assert!(out.status.success(), "{}", describe("sync", &out));
    assert_eq!(
        returns(&ns, Mode::Nft),
        "169.254.0.0/16 10.0.0.0/8 172.16.0.0/12"
    );

    let out = run(&["--configmap=kube-system/ip-masq-platform"], "check");
    assert!(out.status.success(), "{}", describe("check", &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["ip-masq-platform", "ip-masq-vpn"] {
        let line = format!("{}: valid config fragment", part(name));
        assert_eq!(stdout.matches(&line).count(), 1, "{line} once:\n{stdout}");
    }
    assert!(!stdout.contains("coredns-extra"), "{stdout}");
    let lists = server
        .requests()
        .into_iter()
        .filter(|r| r.param("labelSelector") == Some(PART))
        .count();
    assert_eq!(lists, 2, "one list per command");

    // A bad selected ConfigMap fails `check`, naming it.
    server.put_configmap_object(
        NS,
        "ip-masq-vpn",
        object(json!({PART: "vpn"}), USERS_BROKEN),
    );
    let out = run(&[], "check");
    assert_eq!(out.status.code(), Some(1), "{}", describe("check", &out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: invalid config fragment", part("ip-masq-vpn"))),
        "{stderr}"
    );
}

/// A selection is capped at 100 ConfigMaps: a server that lists more is a
/// failure, said once, counted by kind, never applied; once the selection
/// is back under the cap, it applies.
#[test]
fn more_than_a_hundred_configmaps_are_refused() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    for i in 0..101 {
        let config = format!("nonMasqueradeCIDRs: [10.{i}.0.0/16]\n");
        server.put_configmap_object(
            NS,
            &format!("part-{i:03}"),
            object(json!({PART: "many"}), &config),
        );
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut agent, _volume) = start_agent(
        &ns,
        &server,
        dir.path(),
        &[&format!("--configmap-selector={NS}/{PART}")],
    );
    agent.wait_for_log(
        "more than 100 matching configmaps listing configmaps of namespace kube-system selected by",
    );
    let failures = |ns: &Netns| {
        sample(
            &get(ns, METRICS, &[]).body,
            "ip_masq_agent_config_source_failures_total",
            &[("source", "kubernetes"), ("kind", "too_many_objects")],
        )
    };
    wait_until(
        DEADLINE,
        "a too_many_objects failure counted",
        || failures(&ns).unwrap_or(0.0),
        |n| *n >= 1.0,
    );
    assert_eq!(
        returns(&ns, Mode::Nft),
        "",
        "nothing written from an over-large selection"
    );
    assert_eq!(
        agent.count_lines("more than 100 matching configmaps"),
        1,
        "said once, not per retry"
    );

    assert!(server.delete_configmap(NS, "part-100"));
    let expected: Vec<String> = std::iter::once("169.254.0.0/16".to_owned())
        .chain((0..100).map(|i| format!("10.{i}.0.0/16")))
        .collect();
    wait_until(
        std::time::Duration::from_secs(40),
        "the hundred ConfigMaps applied after the next relist",
        || {
            agent.assert_running();
            returns(&ns, Mode::Nft)
        },
        |live| *live == expected.join(" "),
    );
}

/// Changes the watch missed (the server down, its history compacted) are
/// caught by the relist: the selection is replaced whole, so a ConfigMap
/// deleted meanwhile leaves and one created meanwhile joins. A watch ended
/// by 410 Expired relists too.
#[test]
fn a_relist_replaces_the_selection() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let server = server_with_platform(&ns);
    server.put_configmap_object(NS, "ip-masq-users", object(json!({PART: "users"}), USERS));
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut agent, _volume) = start_agent(
        &ns,
        &server,
        dir.path(),
        &[&format!("--configmap-selector={NS}/{PART}")],
    );
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "10.0.0.0/8 192.168.0.0/16",
        "both picked",
    );

    server.take_down();
    assert!(server.delete_configmap(NS, "ip-masq-users"));
    server.put_configmap_object(NS, "ip-masq-vpn", object(json!({PART: "vpn"}), VPN));
    server.expire_watches();
    server.bring_up();
    wait_until(
        std::time::Duration::from_secs(40),
        "the relisted selection in the rules",
        || {
            agent.assert_running();
            returns(&ns, Mode::Nft)
        },
        |live| live == "169.254.0.0/16 10.0.0.0/8 172.16.0.0/12",
    );
    let lists = || {
        server
            .requests()
            .into_iter()
            .filter(|r| !r.is_watch() && r.param("labelSelector") == Some(PART))
            .count()
    };
    let before = lists();
    assert!(
        before >= 2,
        "listed at start and again after the server came back"
    );

    // 410 on the open watch: listed again, and what follows is followed.
    wait_until(
        DEADLINE,
        "the selection watched again",
        || server.watch_count(),
        |n| *n >= 1,
    );
    server.expire_watches();
    wait_until(DEADLINE, "a relist after the 410", lists, |n| *n > before);
    server.put_configmap_object(NS, "ip-masq-users", object(json!({PART: "users"}), USERS));
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "10.0.0.0/8 192.168.0.0/16 172.16.0.0/12",
        "followed after the relist",
    );
}
