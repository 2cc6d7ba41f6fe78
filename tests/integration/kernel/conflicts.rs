//! Other programs' NAT rules on the nat postrouting path, loaded as real
//! programs wrote them (testdata/foreign): the running agent names each
//! rule that overrides its config once (WARN), counts them
//! (`ip_masq_agent_conflicting_rules`), says so in `/readyz` while staying
//! ready; `explain --live` names the rule that really decides; foreign
//! rules are never modified; `cleanup --stale-chains` removes an earlier
//! agent's chain and jump and nothing else.

use std::path::PathBuf;

use crate::support::Family::{V4, V6};
use crate::support::http::{get, sample};
use crate::support::process::describe;
use crate::support::*;

const METRICS: &str = "http://127.0.0.1:9557/metrics";
const READYZ: &str = "http://127.0.0.1:9557/readyz";

fn foreign(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/testdata/foreign")
        .join(name)
}

/// `<mode>-restore --noflush FILE` (`-T nat`: only the nat table) in `ns`.
fn restore(ns: &Netns, mode: Mode, family: Family, name: &str, nat_only: bool) {
    let tool = mode.tool(family, "-restore");
    let path = foreign(name);
    let path = path.to_str().expect("UTF-8 path");
    let mut args = vec![tool.as_str(), "-w", "5", "--noflush"];
    if nat_only {
        args.extend(["-T", "nat"]);
    }
    args.push(path);
    ns.run(&args);
}

/// The nat table without our chain and jump: what other programs own.
fn theirs(ns: &Netns, mode: Mode, family: Family) -> String {
    save(ns, mode, family)
        .lines()
        .filter(|l| !l.contains("IP-MASQ-AGENT"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn label(mode: Mode) -> &'static str {
    match mode {
        Mode::Nft => "nft",
        Mode::Legacy => "legacy",
    }
}

fn gauge(ns: &Netns, family: &str) -> Option<f64> {
    sample(
        &get(ns, METRICS, &[]).body,
        "ip_masq_agent_conflicting_rules",
        &[("family", family)],
    )
}

/// Starts the agent and waits for its first conflict report and one
/// resync after it (the config's `resyncInterval: 1s`).
fn agent_reporting(ns: &Netns, mode: Mode, volume: &ConfigVolume, flags: &[&str]) -> Agent {
    let mut agent = Agent::start(ns, mode, volume, flags);
    agent.wait_for_log("conflicting nat rule:");
    agent.wait_for_lines("rules unchanged", 2);
    agent
}

/// The WARN lines' messages, in order.
fn warnings(agent: &Agent) -> Vec<String> {
    agent
        .log()
        .lines()
        .filter(|l| l.contains(" WARN ") && l.contains("conflicting nat rule: "))
        .filter_map(|l| {
            l.split_once("conflicting nat rule: ")
                .map(|(_, m)| m.rsplit_once(" family=").map_or(m, |(m, _)| m).to_owned())
        })
        .collect()
}

/// `explain --live ADDRESS...` with `flags` (after `--config` and the
/// mode); its stdout.
fn explain_live(
    ns: &Netns,
    mode: Mode,
    volume: &ConfigVolume,
    flags: &[&str],
    addresses: &[&str],
) -> String {
    let config = volume.path();
    let mode_arg = mode.agent_arg();
    let mut args = vec![
        "--config",
        config.to_str().expect("UTF-8 path"),
        mode_arg.as_str(),
    ];
    args.extend(flags);
    args.extend(["explain", "--live"]);
    args.extend(addresses);
    let out = oneshot(ns, &args);
    assert!(out.status.success(), "{}", describe(&args.join(" "), &out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The rule lines the agent must report, ready and with the gauge at `n`.
fn assert_reported(ns: &Netns, agent: &Agent, family: &str, expected: &[String]) {
    assert_eq!(warnings(agent), expected, "{}", agent.log());
    assert_eq!(gauge(ns, family), Some(expected.len() as f64));
    let ready = get(ns, READYZ, &[]);
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        ready.body.starts_with("ok: rules in sync"),
        "{}",
        ready.body
    );
    for line in expected {
        assert!(
            ready
                .body
                .contains(&format!("\nconflicting nat rule ({family}): {line}")),
            "{line} not in {}",
            ready.body
        );
    }
}

const CNI_MASQUERADE: &str = r#"-A CNI-efe7027ce740cec505e00d4d ! -d 224.0.0.0/4 -m comment --comment "name: \"podnet\" id: \"capture1\"" -j MASQUERADE"#;

both_modes! {
    /// The bridge plugin's `ipMasq` chain masquerades pod traffic to a
    /// range the config exempts, before our jump (upstream issue #35).
    fn bridge_cni_masquerades_an_exempt_range(mode) {
        let ns = Netns::new();
        restore(&ns, mode, V4, "bridge-cni.save", false);
        let before = theirs(&ns, mode, V4);
        let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.22.0.2/32]\nresyncInterval: 1s\n");
        let agent = agent_reporting(&ns, mode, &volume, &[]);
        let m = label(mode);
        let expected = format!(
            "iptables-{m} nat chain CNI-efe7027ce740cec505e00d4d rule `{CNI_MASQUERADE}` masquerades pod traffic to 10.0.0.0/8, 169.254.0.0/16 that the config exempts"
        );
        assert_reported(&ns, &agent, "ipv4", std::slice::from_ref(&expected));
        let text = explain_live(&ns, mode, &volume, &["--from", "10.22.0.2"], &["10.1.2.3", "8.8.8.8"]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(
            lines,
            [
                format!("10.1.2.3 masquerade another's: iptables-{m} nat chain CNI-efe7027ce740cec505e00d4d rule `{CNI_MASQUERADE}` (ours would say: no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)"),
                format!("8.8.8.8 masquerade another's: iptables-{m} nat chain CNI-efe7027ce740cec505e00d4d rule `{CNI_MASQUERADE}` (ours would say: masquerade default: in no list)"),
            ],
            "{text}"
        );
        assert_text_eq("the plugin's rules", &theirs(&ns, mode, V4), &before);
    }
}

both_modes! {
    /// OpenShift SDN's OPENSHIFT-MASQUERADE (upstream issue #26): prepended
    /// to POSTROUTING, it masquerades everything leaving the cluster network.
    fn openshift_masquerades_before_us(mode) {
        let ns = Netns::new();
        restore(&ns, mode, V4, "openshift-sdn.save", false);
        let before = theirs(&ns, mode, V4);
        let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.128.0.0/14]\nresyncInterval: 1s\n");
        let agent = agent_reporting(&ns, mode, &volume, &[]);
        let m = label(mode);
        let expected = format!(
            "iptables-{m} nat chain OPENSHIFT-MASQUERADE-2 rule `-A OPENSHIFT-MASQUERADE-2 -j MASQUERADE` masquerades pod traffic to 10.0.0.0/8, 169.254.0.0/16 that the config exempts"
        );
        assert_reported(&ns, &agent, "ipv4", std::slice::from_ref(&expected));
        let text = explain_live(&ns, mode, &volume, &["--from", "10.128.0.5"], &["10.1.2.3"]);
        let decided = format!(
            "10.1.2.3 masquerade another's: iptables-{m} nat chain OPENSHIFT-MASQUERADE-2 rule `-A OPENSHIFT-MASQUERADE-2 -j MASQUERADE` \
             (ours would say: no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)"
        );
        assert_eq!(
            text.lines().next(),
            Some(decided.as_str()),
            "{text}"
        );
        // Pod-to-pod traffic returns in OpenShift's chain and reaches ours.
        let text = explain_live(&ns, mode, &volume, &["--from", "10.128.0.5"], &["10.129.0.9"]);
        assert!(text.starts_with("10.129.0.9 no-masquerade ours: IP-MASQ-AGENT decides (no-masquerade podCIDRs 10.128.0.0/14)\n"), "{text}");
        assert_text_eq("OpenShift's rules", &theirs(&ns, mode, V4), &before);
    }
}

both_modes! {
    /// Docker's bridge masquerade: it depends on the output interface, so
    /// detection says "may"; `explain --live` asks the kernel's routing.
    fn docker_masquerades_unless_the_interface_is_its_bridge(mode) {
        let ns = Netns::new();
        // An uplink, so the kernel can route the destinations asked about.
        for step in [
            "ip link add eth0 type veth peer name eth0-peer",
            "ip addr add 192.0.2.1/24 dev eth0",
            "ip link set eth0-peer up",
            "ip link set eth0 up",
            "ip route add default via 192.0.2.254",
        ] {
            ns.run(&step.split(' ').collect::<Vec<_>>());
        }
        restore(&ns, mode, V4, "docker.save", false);
        let before = theirs(&ns, mode, V4);
        let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [172.17.0.0/16]\nresyncInterval: 1s\n");
        let agent = agent_reporting(&ns, mode, &volume, &[]);
        let m = label(mode);
        let expected = format!(
            "iptables-{m} nat chain POSTROUTING rule `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE` may masquerade pod traffic to \
             10.0.0.0/8, 172.17.0.0/16, 169.254.0.0/16 that the config exempts (not known here: output interface not docker0)"
        );
        assert_reported(&ns, &agent, "ipv4", std::slice::from_ref(&expected));
        let text = explain_live(&ns, mode, &volume, &["--from", "172.17.0.5"], &["10.1.2.3"]);
        assert_eq!(
            text,
            format!(
                "10.1.2.3 masquerade another's: iptables-{m} nat chain POSTROUTING rule `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE` \
                 (ours would say: no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)\n  iptables-{m} nat chain POSTROUTING rule \
                 `-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`: masquerades\n"
            )
        );
        assert_text_eq("Docker's rule", &theirs(&ns, mode, V4), &before);
    }
}

both_modes! {
    /// A node first run with the docs' `--masq-chain=IP-MASQ`, now with
    /// the default chain: the stale chain decides first until `cleanup
    /// --stale-chains` removes it (and only it), in both families.
    fn a_stale_upstream_chain_is_named_and_cleaned(mode) {
        let ns = Netns::new();
        restore(&ns, mode, V4, "stale-ip-masq.save", false);
        restore(&ns, mode, V6, "stale-ip-masq6.save", false);
        let volume = ConfigVolume::with(
            "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10]\nresyncInterval: 1s\n",
        );
        let mut agent = Agent::start(&ns, mode, &volume, &["--enable-ipv6"]);
        agent.wait_for_lines("conflicting nat rule:", 3);
        agent.wait_for_lines("rules unchanged", 4);
        let m = label(mode);
        let jump = "-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ chain\" \
                    -m addrtype ! --dst-type LOCAL -j IP-MASQ";
        let masquerade = "-A IP-MASQ -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully";
        let stale = format!(
            "iptables-{m} nat chain POSTROUTING rule `{jump}`: stale chain IP-MASQ from an earlier agent decides first; run `ip-masq-agent cleanup --stale-chains`"
        );
        let v4 = [
            format!("iptables-{m} nat chain IP-MASQ rule `{masquerade}` masquerades pod traffic to 100.64.0.0/10 that the config exempts"),
            stale.clone(),
        ];
        let v6 = [stale];
        let mut all: Vec<String> = v4.to_vec();
        all.extend(v6.iter().cloned());
        assert_eq!(warnings(&agent), all, "{}", agent.log());
        assert_eq!(gauge(&ns, "ipv4"), Some(2.0));
        assert_eq!(gauge(&ns, "ipv6"), Some(1.0));
        let ready = get(&ns, READYZ, &[]);
        assert_eq!(ready.status, 200, "{}", ready.body);
        for (family, lines) in [("ipv4", &v4[..]), ("ipv6", &v6[..])] {
            for line in lines {
                assert!(ready.body.contains(&format!("\nconflicting nat rule ({family}): {line}")), "{line} not in {}", ready.body);
            }
        }
        let text = explain_live(&ns, mode, &volume, &["--enable-ipv6"], &["100.64.1.1", "10.1.2.3"]);
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
        assert_eq!(
            lines,
            [
                format!("100.64.1.1 masquerade another's: iptables-{m} nat chain IP-MASQ rule `{masquerade}` (ours would say: no-masquerade nonMasqueradeCIDRs 100.64.0.0/10)"),
                "10.1.2.3 no-masquerade ours: IP-MASQ-AGENT decides (no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)".to_owned(),
            ],
            "{text}"
        );

        // Everything but the stale chain and its jump must survive cleanup.
        let keep = |text: String| -> String {
            text.lines()
                .filter(|l| !(l.starts_with(":IP-MASQ ") || l.starts_with("-A IP-MASQ ") || l.ends_with("-j IP-MASQ")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        let (before4, before6) = (keep(save(&ns, mode, V4)), keep(save(&ns, mode, V6)));
        assert!(before4.contains(":IP-MASQ-AGENT - [0:0]"), "{before4}");
        let out = oneshot(&ns, &["--masq-chain=IP-MASQ-AGENT", "cleanup", "--stale-chains"]);
        assert!(out.status.success(), "{}", describe("cleanup --stale-chains", &out));
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "{m} ipv4: removed stale jump to IP-MASQ\n{m} ipv4: removed stale chain IP-MASQ\n{m} ipv6: removed stale jump to IP-MASQ\n{m} ipv6: removed stale chain IP-MASQ\n"
            )
        );
        assert_text_eq("IPv4 nat after cleanup --stale-chains", &save(&ns, mode, V4), &before4);
        assert_text_eq("IPv6 nat after cleanup --stale-chains", &save(&ns, mode, V6), &before6);
        // The agent sees the conflicts go.
        wait_until(DEADLINE, "the gauges at 0", || format!("{:?} {:?}", gauge(&ns, "ipv4"), gauge(&ns, "ipv6")), |t| t == "Some(0.0) Some(0.0)");
        agent.wait_for_lines("conflicting nat rule gone:", 3);
        let ready = get(&ns, READYZ, &[]);
        assert_eq!(ready.body, "ok: rules in sync\n");
        // Nothing stale is left: a second run removes nothing.
        let again = oneshot(&ns, &["cleanup", "--stale-chains"]);
        assert_eq!(String::from_utf8_lossy(&again.stdout), "nothing to remove: no upstream-style jump to a chain other than IP-MASQ-AGENT\n");
    }
}

/// kube-proxy's nat table, loaded as it wrote it; its nfacct counters
/// must exist first, as kube-proxy creates them.
fn load_kube_proxy(ns: &Netns, mode: Mode) {
    for counter in [
        "localhost_nps_accepted_pkts",
        "ct_state_invalid_dropped_pkts",
    ] {
        ns.run(&["nfacct", "add", counter]);
    }
    restore(ns, mode, V4, "kube-proxy-iptables.save", true);
    restore(ns, mode, V6, "kube-proxy-ip6tables.save", true);
}

both_modes! {
    /// kube-proxy (iptables mode) masquerades only what it marked: plain
    /// pod traffic passes its chain, no conflict, and ours decides.
    fn kube_proxy_iptables_mode_is_no_conflict(mode) {
        if !require_tools(&["nfacct"]) {
            return;
        }
        let ns = Netns::new();
        load_kube_proxy(&ns, mode);
        let before = (theirs(&ns, mode, V4), theirs(&ns, mode, V6));
        let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.44.0.0/14]\nresyncInterval: 1s\n");
        let mut agent = Agent::start(&ns, mode, &volume, &["--enable-ipv6"]);
        agent.wait_for_lines("rules unchanged", 4);
        assert_eq!(warnings(&agent), Vec::<String>::new(), "{}", agent.log());
        assert_eq!((gauge(&ns, "ipv4"), gauge(&ns, "ipv6")), (Some(0.0), Some(0.0)));
        assert_eq!(get(&ns, READYZ, &[]).body, "ok: rules in sync\n");
        let text = explain_live(&ns, mode, &volume, &["--from", "10.44.3.7"], &["10.1.2.3"]);
        let m = label(mode);
        assert!(text.starts_with("10.1.2.3 no-masquerade ours: IP-MASQ-AGENT decides (no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)\n"), "{text}");
        assert!(
            text.contains(&format!("  iptables-{m} nat chain KUBE-POSTROUTING rule `-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`: passes\n")),
            "{text}"
        );
        assert_eq!((theirs(&ns, mode, V4), theirs(&ns, mode, V6)), before);
    }
}

/// The nftables backend beside kube-proxy in nftables mode (no conflict:
/// its `masquerading` chain takes only marked packets) and the bridge
/// plugin's iptables-nft chain, which at srcnat runs before our table at
/// srcnat + 10 and masquerades first.
#[test]
fn nftables_backend_beside_kube_proxy_nftables_and_a_cni_chain() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let kube_proxy = foreign("kube-proxy-nftables.nft");
    ns.run(&["nft", "-f", kube_proxy.to_str().expect("UTF-8 path")]);
    // kube-proxy's pods and the bridge plugin's.
    let volume = ConfigVolume::with(
        "nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.44.0.0/14, 10.22.0.0/16]\nresyncInterval: 1s\n",
    );
    let flags = ["--backend=nftables"];
    let mut agent = Agent::start_with_flags(&ns, &volume, &flags);
    agent.wait_for_lines("rules unchanged", 2);
    assert_eq!(warnings(&agent), Vec::<String>::new(), "{}", agent.log());
    assert_eq!(gauge(&ns, "ipv4"), Some(0.0));
    let config = volume.path();
    let live = |from: &str, to: &str| {
        let args = [
            "--config",
            config.to_str().expect("UTF-8"),
            "--backend=nftables",
            "--from",
            from,
            "explain",
            "--live",
            to,
        ];
        let out = oneshot(&ns, &args);
        assert!(out.status.success(), "{}", describe("explain --live", &out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        without_handles(&live("10.44.3.7", "8.8.8.8")),
        "8.8.8.8 masquerade ours: nftables table ip-masq-agent decides (masquerade default: in no list)\n  \
         nftables table ip kube-proxy chain nat-postrouting rule `[handle N] jump masquerading`: passes\n  \
         nftables table ip ip-masq-agent chain postrouting rule `our chain postrouting`: ours\n"
    );
    let before = ns.run(&["nft", "list", "table", "ip", "kube-proxy"]);

    restore(&ns, Mode::Nft, V4, "bridge-cni.save", false);
    agent.wait_for_log("conflicting nat rule:");
    let expected = [format!(
        "iptables-nft nat chain CNI-efe7027ce740cec505e00d4d rule `{CNI_MASQUERADE}` may masquerade pod traffic to 10.0.0.0/8, 10.44.0.0/14, 169.254.0.0/16 \
         that the config exempts (not known here: source in 10.22.0.2/32)"
    )];
    agent.wait_for_lines("rules unchanged", 4);
    assert_eq!(warnings(&agent), expected, "{}", agent.log());
    assert_eq!(gauge(&ns, "ipv4"), Some(1.0));
    let text = live("10.22.0.2", "10.1.2.3");
    assert!(
        text.starts_with(&format!(
            "10.1.2.3 masquerade another's: iptables-nft nat chain CNI-efe7027ce740cec505e00d4d rule `{CNI_MASQUERADE}` (ours would say: no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)\n"
        )),
        "{text}"
    );
    assert_eq!(
        ns.run(&["nft", "list", "table", "ip", "kube-proxy"]),
        before
    );
}

/// `[handle 38]` as `[handle N]`: handles depend on the namespace's history.
fn without_handles(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("[handle ") {
        out.push_str(&rest[..at]);
        out.push_str("[handle N]");
        rest = rest[at..].split_once(']').map_or("", |(_, after)| after);
    }
    out.push_str(rest);
    out
}

/// Docker's nftables table (its driver's own golden file) beside the
/// nftables backend: at srcnat it runs before our table and reaches its
/// masquerade through verdict maps keyed by the interfaces.
#[test]
fn docker_nftables_masquerades_before_our_table() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    // Docker's bridge (a veth under its name is enough for routing) and an uplink.
    for step in [
        "ip link add br-dummy type veth peer name br-dummy-peer",
        "ip addr add 192.168.0.1/24 dev br-dummy",
        "ip link set br-dummy-peer up",
        "ip link set br-dummy up",
        "ip link add eth0 type veth peer name eth0-peer",
        "ip addr add 192.0.2.1/24 dev eth0",
        "ip link set eth0-peer up",
        "ip link set eth0 up",
        "ip route add default via 192.0.2.254",
    ] {
        ns.run(&step.split(' ').collect::<Vec<_>>());
    }
    let docker = foreign("docker-nftables.nft");
    ns.run(&["nft", "-f", docker.to_str().expect("UTF-8 path")]);
    let before = ns.run(&["nft", "list", "table", "ip", "docker-bridges"]);
    let volume = ConfigVolume::with(
        "nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [192.168.0.0/24]\nresyncInterval: 1s\n",
    );
    let mut agent = Agent::start_with_flags(&ns, &volume, &["--backend=nftables"]);
    agent.wait_for_log("conflicting nat rule:");
    agent.wait_for_lines("rules unchanged", 2);
    let rule = "oifname != br-dummy saddr == 192.168.0.0/24 masquerade comment \"MASQUERADE\"";
    let found = warnings(&agent);
    assert_eq!(found.len(), 1, "{}", agent.log());
    assert!(
        without_handles(&found[0]).starts_with(&format!(
            "nftables table ip docker-bridges chain nat-postrouting-out__br-dummy rule `[handle N] {rule}` may masquerade pod traffic to \
             10.0.0.0/8, 192.168.0.0/24, 169.254.0.0/16 that the config exempts (not known here: input interface br-dummy; output interface not br-dummy)"
        )),
        "{found:?}"
    );
    assert_eq!(gauge(&ns, "ipv4"), Some(1.0));
    let config = volume.path();
    let args = [
        "--config",
        config.to_str().expect("UTF-8"),
        "--backend=nftables",
        "--from",
        "192.168.0.2",
        "explain",
        "--live",
        "10.1.2.3",
    ];
    let out = oneshot(&ns, &args);
    assert!(out.status.success(), "{}", describe("explain --live", &out));
    let text = without_handles(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(
        text.lines().next(),
        Some(
            format!(
                "10.1.2.3 masquerade another's: nftables table ip docker-bridges chain nat-postrouting-out__br-dummy rule `[handle N] {rule}` \
                 (ours would say: no-masquerade nonMasqueradeCIDRs 10.0.0.0/8)"
            )
            .as_str()
        ),
        "{text}"
    );
    assert_eq!(
        ns.run(&["nft", "list", "table", "ip", "docker-bridges"]),
        before
    );
}

both_modes! {
    /// A conflict that appears while the agent runs is reported at the next
    /// resync and its end too. Between changes an iptables-nft node's path
    /// is not read again (the nftables generation says it is unchanged); a
    /// legacy nat table has no generation, so there it is read every time.
    fn a_rule_added_while_running_is_reported_and_its_removal_too(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.22.0.0/16]\nresyncInterval: 1s\n");
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        agent.wait_for_lines("rules unchanged", 2);
        let skipped = "nat postrouting path unchanged since the last conflict check";
        match mode {
            Mode::Nft => assert!(agent.count_lines(skipped) >= 1, "{}", agent.log()),
            Mode::Legacy => assert_eq!(agent.count_lines(skipped), 0, "{}", agent.log()),
        }
        assert!(warnings(&agent).is_empty(), "{}", agent.log());
        let rule = "-t nat -I POSTROUTING 1 -s 10.22.0.0/16 -d 10.0.0.0/8 -j MASQUERADE";
        ipt(&ns, mode, V4, rule);
        agent.wait_for_log("conflicting nat rule:");
        let m = label(mode);
        let expected = format!(
            "iptables-{m} nat chain POSTROUTING rule `-A POSTROUTING -s 10.22.0.0/16 -d 10.0.0.0/8 -j MASQUERADE` \
             masquerades pod traffic to 10.0.0.0/8, 10.22.0.0/16 that the config exempts"
        );
        assert_reported(&ns, &agent, "ipv4", std::slice::from_ref(&expected));
        ipt(&ns, mode, V4, &rule.replace("-I POSTROUTING 1", "-D POSTROUTING"));
        agent.wait_for_log("conflicting nat rule gone:");
        assert_eq!(gauge(&ns, "ipv4"), Some(0.0));
    }
}
