//! The native nftables backend (`--backend=nftables`) against the real
//! kernel, each test in a namespace of its own: the table it writes, the
//! element delta on a config change (the base chain and its rules keep their
//! handles), drift repair, no write on an unchanged node, coexistence with
//! another table at `srcnat`, switching backends both ways, `cleanup`, IPv6,
//! 50 000 CIDRs, and one packet through the NAT path.
//!
//! Expected tables are literals of what `nft list table` prints (tabs shown
//! as four spaces), never assembled from the agent's own constants.

pub(super) mod netlink;

use std::time::Instant;

use serde_json::Value;

use super::{DEFAULT_RULES, EMPTY_NAT, assert_nat};
use crate::support::Family::{V4, V6};
use crate::support::agent::subcommand;
use crate::support::process::describe;
use crate::support::*;

pub(super) const NFT: &str = "--backend=nftables";

/// `nft list table ip ip-masq-agent` after a sync with no config file.
pub(super) const DEFAULT_TABLE: &str = "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 172.16.0.0/12, 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
";

/// `nft list table ip6 ip-masq-agent` for `[10.0.0.0/8, fd00::/8]` with
/// `--enable-ipv6`.
const IPV6_TABLE: &str = "table ip6 ip-masq-agent {
    set no-masquerade {
        type ipv6_addr
        flags interval
        elements = { fd00::/8,
                 fe80::/10 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip6 daddr @no-masquerade return
        masquerade fully-random
    }
}
";

/// A kube-proxy (nftables mode) like table with its own nat chain at
/// `srcnat`, which our agent must never touch.
const KUBE_PROXY_TABLE: &str = "table ip kube-proxy {
    chain nat-postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x00004000 == 0x00004000 masquerade
    }
}
";

fn fam(family: Family) -> &'static str {
    match family {
        V4 => "ip",
        V6 => "ip6",
    }
}

/// `nft ARGS` in `ns`, stdout with tabs as four spaces.
fn nft(ns: &Netns, args: &[&str]) -> String {
    let mut all = vec!["nft"];
    all.extend_from_slice(args);
    ns.run(&all).replace('\t', "    ")
}

/// Our table as `nft list table` prints it, or None when it does not exist.
pub(super) fn our_table(ns: &Netns, family: Family) -> Option<String> {
    let out = ns.exec(&["nft", "list", "table", fam(family), "ip-masq-agent"]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).replace('\t', "    "))
}

/// The base chain with its handle and its rules' handles: equal before and
/// after a sync iff that sync neither recreated the chain nor rewrote a rule.
fn chain_with_handles(ns: &Netns) -> String {
    nft(
        ns,
        &["-a", "list", "chain", "ip", "ip-masq-agent", "postrouting"],
    )
}

/// The set's elements as nft holds them (`10.0.0.0/8`, or a bare address
/// for a /32), in nft's order.
fn elements(ns: &Netns, family: Family) -> Vec<String> {
    let text = ns.run(&[
        "nft",
        "-j",
        "list",
        "set",
        fam(family),
        "ip-masq-agent",
        "no-masquerade",
    ]);
    let json: Value = serde_json::from_str(&text).expect("nft -j prints JSON");
    let set = json["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i.get("set")))
        .expect("a set in the listing");
    set.get("elem")
        .and_then(Value::as_array)
        .map(|elems| {
            elems
                .iter()
                .map(|e| match e {
                    Value::String(addr) => addr.clone(),
                    other => format!(
                        "{}/{}",
                        other["prefix"]["addr"].as_str().unwrap_or("?"),
                        other["prefix"]["len"]
                    ),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// `nft -f` of `script` (four spaces read as a tab) in `ns`.
fn apply_script(ns: &Netns, script: &str) {
    let file = tempfile::Builder::new()
        .prefix("imqa-nft-")
        .tempfile()
        .expect("temp file for an nft script");
    std::fs::write(file.path(), script.replace("    ", "\t")).expect("write the script");
    ns.run(&["nft", "-f", file.path().to_str().expect("UTF-8 path")]);
}

pub(super) fn wait_table(agent: &mut Agent, ns: &Netns, expected: &str, what: &str) {
    wait_for_text(
        DEADLINE,
        what,
        || {
            agent.assert_running();
            our_table(ns, V4).unwrap_or_default()
        },
        expected,
    );
}

#[test]
fn defaults_write_the_expected_table_and_nothing_else() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    assert_text_eq(
        "our table",
        &our_table(&ns, V4).unwrap_or_default(),
        DEFAULT_TABLE,
    );
    assert_eq!(
        our_table(&ns, V6),
        None,
        "no ip6 table without --enable-ipv6"
    );
    // The iptables backends were not written to.
    for mode in [Mode::Nft, Mode::Legacy] {
        assert_nat(&ns, mode, V4, EMPTY_NAT);
    }
    let before = chain_with_handles(&ns);
    let log = sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    assert!(log.contains("rules unchanged"), "{log}");
    assert_text_eq(
        "chain after a second sync",
        &chain_with_handles(&ns),
        &before,
    );
}

#[test]
fn config_change_sends_only_the_element_delta() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let mut volume = ConfigVolume::with("resyncInterval: 1s\n");
    let mut agent = Agent::start(&ns, Mode::Nft, &volume, &[NFT]);
    wait_table(&mut agent, &ns, DEFAULT_TABLE, "the first sync");
    let before = chain_with_handles(&ns);

    // Two halves of 10/8 (merged into one element) and a new range.
    volume.update(
        "nonMasqueradeCIDRs: [10.0.0.0/9, 10.128.0.0/9, 203.0.113.0/24, 10.0.0.0/9]\nresyncInterval: 1s\n",
    );
    let want = strings(&["10.0.0.0/8", "169.254.0.0/16", "203.0.113.0/24"]);
    wait_until(
        DEADLINE,
        "the set to hold the new aggregated list",
        || {
            agent.assert_running();
            format!("{:?}", elements(&ns, V4))
        },
        |got| *got == format!("{want:?}"),
    );
    agent.wait_for_log("set no-masquerade: 1 element added, 2 removed");
    assert_text_eq(
        "base chain and rule handles across a config change",
        &chain_with_handles(&ns),
        &before,
    );
}

#[test]
fn drift_in_set_and_chain_is_repaired() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::with("resyncInterval: 1s\n");
    let mut agent = Agent::start(&ns, Mode::Nft, &volume, &[NFT]);
    wait_table(&mut agent, &ns, DEFAULT_TABLE, "the first sync");
    let chain_handle = |ns: &Netns| {
        chain_with_handles(ns)
            .lines()
            .find(|l| l.contains("chain postrouting"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let handle = chain_handle(&ns);

    ns.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "ip-masq-agent",
        "no-masquerade",
        "{ 10.0.0.0/8 }",
    ]);
    wait_table(
        &mut agent,
        &ns,
        DEFAULT_TABLE,
        "the deleted element to come back",
    );
    agent.wait_for_log("drift repaired: set no-masquerade changed outside the agent");

    ns.run(&[
        "nft",
        "flush",
        "chain",
        "ip",
        "ip-masq-agent",
        "postrouting",
    ]);
    wait_table(
        &mut agent,
        &ns,
        DEFAULT_TABLE,
        "the flushed chain to be refilled",
    );
    agent.wait_for_log("drift repaired: chain postrouting: 3 missing [");

    ns.run(&[
        "nft",
        "insert",
        "rule",
        "ip",
        "ip-masq-agent",
        "postrouting",
        "ip",
        "daddr",
        "198.51.100.0/24",
        "return",
    ]);
    wait_table(
        &mut agent,
        &ns,
        DEFAULT_TABLE,
        "the foreign rule to be removed",
    );
    assert_eq!(
        chain_handle(&ns),
        handle,
        "the base chain was never recreated"
    );
    agent.assert_running();
}

#[test]
fn unchanged_node_sees_no_write() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::with("resyncInterval: 1s\n");
    let mut agent = Agent::start(&ns, Mode::Nft, &volume, &[NFT]);
    wait_table(&mut agent, &ns, DEFAULT_TABLE, "the first sync");
    let before = chain_with_handles(&ns);
    agent.wait_for_lines("rules unchanged", 3);
    assert_text_eq(
        "chain after three resyncs",
        &chain_with_handles(&ns),
        &before,
    );
    assert_eq!(agent.count_lines("rules applied"), 1, "{}", agent.log());
}

#[test]
fn another_table_at_srcnat_is_never_touched() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    apply_script(&ns, KUBE_PROXY_TABLE);
    let kube = || nft(&ns, &["-a", "list", "table", "ip", "kube-proxy"]);
    let before = kube();
    assert!(before.contains("masquerade # handle"), "{before}");

    let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8]\n");
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    assert_text_eq("kube-proxy's table after our syncs", &kube(), &before);
    let out = subcommand(&ns, Mode::Nft, &volume, &[], "cleanup");
    assert!(out.status.success(), "{}", describe("cleanup", &out));
    assert_text_eq("kube-proxy's table after cleanup", &kube(), &before);
    assert_text_eq(
        "kube-proxy's table without handles",
        &nft(&ns, &["list", "table", "ip", "kube-proxy"]),
        KUBE_PROXY_TABLE,
    );
    assert_eq!(our_table(&ns, V4), None);
}

#[test]
fn switching_backends_removes_the_other_state() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    // A sync removes ours from the iptables variant it does not use:
    // legacy gets a copy.
    sync_ok(&ns, Mode::Nft, &volume, &[]);
    crate::support::iptables::copy_nat(&ns, Mode::Nft, Mode::Legacy, V4);
    for mode in [Mode::Nft, Mode::Legacy] {
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
    }

    let log = sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    for mode in [Mode::Nft, Mode::Legacy] {
        assert_nat(&ns, mode, V4, EMPTY_NAT);
    }
    assert!(
        log.contains("removed the other backend's state: nft ipv4: removed chain IP-MASQ-AGENT")
            && log.contains(
                "removed the other backend's state: legacy ipv4: removed jump to IP-MASQ-AGENT"
            ),
        "{log}"
    );
    assert_text_eq(
        "our table",
        &our_table(&ns, V4).unwrap_or_default(),
        DEFAULT_TABLE,
    );

    let log = sync_ok(&ns, Mode::Nft, &volume, &["--backend=iptables"]);
    assert_eq!(
        our_table(&ns, V4),
        None,
        "nft table left after switching back"
    );
    assert!(
        log.contains(
            "removed the other backend's state: nftables ipv4: removed table ip ip-masq-agent"
        ),
        "{log}"
    );
    assert_nat(&ns, Mode::Nft, V4, DEFAULT_RULES);
    assert_nat(&ns, Mode::Legacy, V4, EMPTY_NAT);
}

#[test]
fn cleanup_removes_both_backends() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8]\n");
    sync_ok(&ns, Mode::Nft, &volume, &["--enable-ipv6"]);
    // A `--backend=nftables` sync would remove the iptables state, so the
    // nft tables are made from `render`, as a node mid-migration may hold
    // both.
    let rendered = subcommand(&ns, Mode::Nft, &volume, &[NFT, "--enable-ipv6"], "render");
    assert!(
        rendered.status.success(),
        "{}",
        describe("render", &rendered)
    );
    let text = String::from_utf8_lossy(&rendered.stdout).into_owned();
    for part in text.split("# ipv").skip(1) {
        let body: String = part.lines().skip(1).map(|l| format!("{l}\n")).collect();
        apply_script(&ns, &body);
    }
    assert!(our_table(&ns, V4).is_some() && our_table(&ns, V6).is_some());
    assert_ne!(save(&ns, Mode::Nft, V4), EMPTY_NAT);

    let out = subcommand(&ns, Mode::Nft, &volume, &[], "cleanup");
    assert!(out.status.success(), "{}", describe("cleanup", &out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("nftables ipv4: removed table ip ip-masq-agent")
            && stdout.contains("nftables ipv6: removed table ip6 ip-masq-agent")
            && stdout.contains("nft ipv4: removed chain IP-MASQ-AGENT"),
        "{stdout}"
    );
    assert_eq!(our_table(&ns, V4), None);
    assert_eq!(our_table(&ns, V6), None);
    assert_nat(&ns, Mode::Nft, V4, EMPTY_NAT);
    assert_nat(&ns, Mode::Nft, V6, EMPTY_NAT);

    let out = subcommand(&ns, Mode::Nft, &volume, &[], "cleanup");
    assert!(out.status.success(), "{}", describe("cleanup again", &out));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("nothing to remove"),
        "{}",
        describe("cleanup again", &out)
    );
}

#[test]
fn ipv6_table_with_enable_ipv6() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8, fd00::/8]\n");
    sync_ok(&ns, Mode::Nft, &volume, &[NFT, "--enable-ipv6"]);
    assert_text_eq(
        "our ip6 table",
        &our_table(&ns, V6).unwrap_or_default(),
        IPV6_TABLE,
    );
    assert_eq!(
        elements(&ns, V4),
        strings(&["10.0.0.0/8", "169.254.0.0/16"])
    );
}

/// Every other /24 from 20.0.0.0 on, so aggregation keeps each one.
fn many_cidrs(n: u32, last: &str) -> String {
    let mut text = format!("cidrLimit: {n}\nnonMasqueradeCIDRs:\n");
    for i in 0..n - 1 {
        let base = (20u32 << 24) + i * 512;
        text.push_str(&format!(
            "  - {}.{}.{}.0/24\n",
            base >> 24,
            (base >> 16) & 255,
            (base >> 8) & 255
        ));
    }
    text.push_str(&format!("  - {last}\n"));
    text
}

#[test]
fn fifty_thousand_cidrs_apply_and_change_by_delta() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let mut volume = ConfigVolume::with(&many_cidrs(50_000, "198.51.100.0/24"));
    let started = Instant::now();
    sync_ok(&ns, Mode::Nft, &volume, &[NFT, "--v=2"]);
    let full = started.elapsed();
    let got = elements(&ns, V4);
    assert_eq!(got.len(), 50_001, "50 000 CIDRs and link-local");
    assert!(got.contains(&"198.51.100.0/24".to_owned()));
    let before = chain_with_handles(&ns);

    volume.update(&many_cidrs(50_000, "203.0.113.0/24"));
    let started = Instant::now();
    let log = sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    let change = started.elapsed();
    assert!(
        log.contains("set no-masquerade: 1 element added, 1 removed"),
        "{log}"
    );
    let got = elements(&ns, V4);
    assert_eq!(got.len(), 50_001);
    assert!(
        got.contains(&"203.0.113.0/24".to_owned()) && !got.contains(&"198.51.100.0/24".to_owned())
    );
    assert_text_eq("chain after the delta", &chain_with_handles(&ns), &before);
    // Printed, not asserted (TESTING.md: timing belongs to benchmarks).
    eprintln!(
        "50 000 CIDRs, whole `sync` process (config parse included): full apply {full:?}, one-CIDR change {change:?}"
    );
}

#[test]
fn packets_to_outside_are_masqueraded_and_listed_ones_are_not() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    // An uplink with 192.0.2.254 and a pod-like source address 198.51.100.7
    // that the routes to the probe targets use, so masquerading is visible
    // as a changed source. Nothing leaves the namespace.
    for args in [
        "ip link add imqa0 type veth peer name imqa1",
        "ip addr add 192.0.2.254/24 dev imqa0",
        "ip link set imqa0 up",
        "ip link set imqa1 up",
        "ip addr add 198.51.100.7/32 dev lo",
        "ip route add 192.0.2.1/32 dev imqa0 src 198.51.100.7",
        "ip route add 192.0.2.2/32 dev imqa0 src 198.51.100.7",
    ] {
        ns.run(&args.split(' ').collect::<Vec<_>>());
    }
    // An observer after every NAT chain: counts by source as it leaves.
    for line in [
        "add table ip observer",
        "add chain ip observer out { type filter hook postrouting priority 300; policy accept; }",
        "add rule ip observer out ip daddr 192.0.2.0/24 ip saddr 192.0.2.254 counter comment masqueraded",
        "add rule ip observer out ip daddr 192.0.2.0/24 ip saddr 198.51.100.7 counter comment kept",
    ] {
        let mut args = vec!["nft"];
        args.extend(line.split(' '));
        ns.run(&args);
    }
    let counts = |ns: &Netns| {
        let text = nft(ns, &["list", "chain", "ip", "observer", "out"]);
        let packets = |comment: &str| {
            text.lines()
                .find(|l| l.contains(comment))
                .and_then(|l| l.split("packets ").nth(1))
                .and_then(|rest| rest.split(' ').next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(u64::MAX)
        };
        (packets("\"masqueraded\""), packets("\"kept\""))
    };
    let volume = ConfigVolume::with("nonMasqueradeCIDRs: [192.0.2.2/32]\nmasqLinkLocal: true\n");
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    assert_eq!(counts(&ns), (0, 0));
    ns.run(&["bash", "-c", "echo probe > /dev/udp/192.0.2.1/9"]);
    assert_eq!(
        counts(&ns),
        (1, 0),
        "to 192.0.2.1: masqueraded to the uplink address"
    );
    ns.run(&["bash", "-c", "echo probe > /dev/udp/192.0.2.2/9"]);
    assert_eq!(counts(&ns), (1, 1), "to 192.0.2.2 (listed): source kept");
}

/// A config change is sent as an element delta without listing the table
/// first; if someone removed an element the delta would delete, the atomic
/// transaction fails whole and the agent falls back to reading the table and
/// repairing it, so the result is still exactly the new config.
#[test]
fn element_delta_on_a_changed_set_falls_back_and_repairs() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    // A long resync, so only the config change (not a resync) can repair.
    let mut volume = ConfigVolume::with("nonMasqueradeCIDRs: [10.0.0.0/8, 198.51.100.0/24]\n");
    let mut agent = Agent::start(&ns, Mode::Nft, &volume, &[NFT]);
    let first = strings(&["10.0.0.0/8", "169.254.0.0/16", "198.51.100.0/24"]);
    wait_until(
        DEADLINE,
        "the first sync",
        || {
            agent.assert_running();
            our_table(&ns, V4)
                .map(|_| format!("{:?}", elements(&ns, V4)))
                .unwrap_or_default()
        },
        |got| *got == format!("{first:?}"),
    );
    // Someone removes the element the next config drops.
    ns.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "ip-masq-agent",
        "no-masquerade",
        "{ 198.51.100.0/24 }",
    ]);
    volume.update("nonMasqueradeCIDRs: [10.0.0.0/8, 203.0.113.0/24]\n");
    let want = strings(&["10.0.0.0/8", "169.254.0.0/16", "203.0.113.0/24"]);
    wait_until(
        DEADLINE,
        "the set to hold exactly the new list",
        || {
            agent.assert_running();
            format!("{:?}", elements(&ns, V4))
        },
        |got| *got == format!("{want:?}"),
    );
    agent.wait_for_log("changed outside the agent");
}

/// Whether a `--v=2` log shows `nft` reading or writing our table.
fn ran_nft(log: &str) -> bool {
    log.contains("nft -f -") || log.contains("reading the table with nft -j")
}

/// A one-shot `sync` reads the table over netlink and runs `nft` only to
/// create it: on a matching node it writes nothing and asks nft nothing,
/// and a config change goes out as a netlink element delta, for every
/// shape of our table (the rules read back exactly as predicted).
#[test]
fn one_shot_syncs_read_over_netlink_and_write_only_the_delta() {
    if !require_root_and_tools() {
        return;
    }
    let shapes: [(&str, &[&str], Family); 3] = [
        ("nonMasqueradeCIDRs: [10.0.0.0/8", &[], V4),
        (
            "nonMasqueradeCIDRs: [10.0.0.0/8",
            &["--to-ports=1024-29999,32768-65535", "--random-fully=false"],
            V4,
        ),
        (
            "nonMasqueradeCIDRs: [fd00::/8",
            &["--enable-ipv6", "--to-ports=40000"],
            V6,
        ),
    ];
    for (list, extra, family) in shapes {
        let ns = Netns::new();
        let mut flags = vec![NFT, "--v=2"];
        flags.extend_from_slice(extra);
        let mut volume = ConfigVolume::with(&format!("{list}]\n"));
        let log = sync_ok(&ns, Mode::Nft, &volume, &flags);
        assert!(log.contains("table") && log.contains("missing"), "{log}");
        let table = our_table(&ns, family).expect("our table");
        let handles = nft(&ns, &["-a", "list", "table", fam(family), "ip-masq-agent"]);

        let log = sync_ok(&ns, Mode::Nft, &volume, &flags);
        assert!(log.contains("rules unchanged"), "{log}");
        assert!(!ran_nft(&log), "nft ran on a matching node:\n{log}");

        let added = match family {
            V4 => "198.51.100.0/24",
            V6 => "2001:db8::/32",
        };
        volume.update(&format!("{list}, {added}]\n"));
        let log = sync_ok(&ns, Mode::Nft, &volume, &flags);
        assert!(
            log.contains("set no-masquerade: 1 element added, 0 removed"),
            "{log}"
        );
        assert!(!ran_nft(&log), "nft ran for an element delta:\n{log}");
        assert!(elements(&ns, family).contains(&added.to_owned()));
        let after = our_table(&ns, family).expect("our table");
        let chains = |t: &str| t[t.find("    chain ").unwrap_or(0)..].to_owned();
        assert_eq!(chains(&after), chains(&table), "only the set changed");
        // The chains and rules kept their handles.
        let now = nft(&ns, &["-a", "list", "table", fam(family), "ip-masq-agent"]);
        let rules = |text: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.contains("# handle"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(rules(&now), rules(&handles));
    }
}

/// A one-shot `sync` repairs what others changed in our table: a foreign
/// element (one with a comment), a missing element, a flushed chain, an
/// inserted rule; each time the table ends exactly as written, and the
/// base chain is never recreated.
#[test]
fn one_shot_sync_repairs_drift() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    let chain_line = |ns: &Netns| {
        chain_with_handles(ns)
            .lines()
            .find(|l| l.contains("chain postrouting"))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let chain = chain_line(&ns);
    let drifts: [(&str, &str); 4] = [
        (
            "add element ip ip-masq-agent no-masquerade { 203.0.113.0/24 comment \"not ours\" }",
            "holds 1 element we did not write",
        ),
        (
            "delete element ip ip-masq-agent no-masquerade { 172.16.0.0/12 }",
            "set no-masquerade: 1 element added, 0 removed",
        ),
        (
            "flush chain ip ip-masq-agent postrouting",
            "chain postrouting: 3 missing [",
        ),
        (
            "insert rule ip ip-masq-agent postrouting ip daddr 198.51.100.0/24 return",
            r#"chain postrouting: 1 unexpected [[{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":{"prefix":{"addr":"198.51.100.0","len":24}}}},{"return":null}]]"#,
        ),
    ];
    for (change, reported) in drifts {
        let mut args = vec!["nft"];
        args.push(change);
        ns.run(&args);
        assert_ne!(our_table(&ns, V4).as_deref(), Some(DEFAULT_TABLE));
        let log = sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
        assert!(log.contains(reported), "after `{change}`:\n{log}");
        assert_text_eq(
            &format!("our table after `{change}` and a sync"),
            &our_table(&ns, V4).unwrap_or_default(),
            DEFAULT_TABLE,
        );
        assert_eq!(chain_line(&ns), chain, "the base chain was never recreated");
    }
}
