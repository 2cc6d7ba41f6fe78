//! Unit tests of the iptables backend: rendering, prediction, parsing, diff
//! and variant choice, without the kernel.

use super::rules::{
    PortShare, count_rules, diff_placed, jump_save_line, port_shares, saved_probability,
};
use super::variant::is_missing_chain;
use super::*;
use crate::plan::{PortRange, Protocol};

fn chain(name: &str) -> ChainName {
    name.parse().unwrap()
}

fn ruleset(nets: &[&str]) -> Ruleset {
    Ruleset {
        family: Family::Ipv4,
        chain: chain("IP-MASQ-AGENT"),
        no_masquerade: nets.iter().map(|n| n.parse().unwrap()).collect(),
        pod_sources: None,
        random_fully: true,
        authoritative: false,
        to_ports: Vec::new(),
    }
}

fn lines(text: &str) -> Vec<String> {
    text.lines().map(str::to_owned).collect()
}

#[test]
fn version_text() {
    assert_eq!(
        parse_version("iptables v1.8.9 (nf_tables)\n"),
        Some(Version(1, 8, 9))
    );
    assert_eq!(
        parse_version("ip6tables-legacy v1.6.1\n"),
        Some(Version(1, 6, 1))
    );
    assert_eq!(parse_version("iptables v1.8\n"), Some(Version(1, 8, 0)));
    assert_eq!(parse_version("nonsense"), None);
}

#[test]
fn render_is_the_upstream_payload() {
    let backend = Iptables::new(Variant::Nft);
    let text = backend.render(&ruleset(&["169.254.0.0/16", "10.0.0.0/8"]));
    assert_eq!(
        text,
        "*nat\n\
:IP-MASQ-AGENT - [0:0]\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 169.254.0.0/16 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 10.0.0.0/8 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully\n\
COMMIT\n"
    );
}

#[test]
fn render_to_ports() {
    let mut rs = ruleset(&[]);
    rs.to_ports = vec![
        PortRange {
            first: 1024,
            last: 29999,
        },
        PortRange {
            first: 32768,
            last: 65535,
        },
    ];
    let text = Iptables::new(Variant::Nft).render(&rs);
    let got = lines(&text);
    assert_eq!(got.len(), 10);
    assert_eq!(
        got[2],
        concat!(
            "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" ",
            "-j MASQUERADE --random-fully -p tcp -m statistic --mode random --probability 0.469292562840114 --to-ports 1024-29999"
        )
    );
    assert_eq!(
        got[3],
        "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully -p tcp --to-ports 32768-65535"
    );
    assert!(got[4].contains(" -p udp "));
    assert!(got[6].contains(" -p sctp "));
}

#[test]
fn predicted_save_form() {
    let mut rs = ruleset(&["10.0.0.0/8", "0.0.0.0/0"]);
    rs.to_ports = vec![
        PortRange {
            first: 1024,
            last: 29999,
        },
        PortRange {
            first: 40000,
            last: 40000,
        },
    ];
    rs.random_fully = false;
    let got = predicted_chain_rules(&rs, false);
    assert_eq!(
        got,
        lines(include_str!("testdata/two-intervals-chain.rules"))
    );
}

#[test]
fn probability_as_iptables_prints_it() {
    assert_eq!(saved_probability(28976.0 / 61744.0), "0.46929256292");
    assert_eq!(saved_probability(0.5), "0.50000000000");
}

/// `iptables -t nat -S IP-MASQ-AGENT`.
const CHAIN_LISTING: &str = "-N IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 10.0.0.0/8 -j RETURN
";

/// `iptables -t nat -S POSTROUTING` of a node with two of our jumps, the
/// quoted one of old upstream releases, GKE's and a jump to a chain whose
/// name starts like ours.
const POSTROUTING_LISTING: &str = include_str!("testdata/postrouting-listing.txt");

fn listed(c: &ChainName) -> Observed {
    parse_listing(c, Some(CHAIN_LISTING), POSTROUTING_LISTING)
}

#[test]
fn parse_finds_only_our_objects() {
    let c = chain("IP-MASQ-AGENT");
    let observed = listed(&c);
    assert!(observed.chain_exists);
    assert_eq!(
        observed.chain_rules,
        vec!["-A IP-MASQ-AGENT -d 10.0.0.0/8 -j RETURN"]
    );
    assert_eq!(observed.jumps.len(), 4);
    let missing = parse_listing(&c, None, "-P POSTROUTING ACCEPT\n");
    assert_eq!(missing, Observed::default());
    assert_eq!(count_rules(POSTROUTING_LISTING), 6);
}

#[test]
fn removal_keeps_a_chain_others_enter() {
    let c = chain("IP-MASQ-AGENT");
    let (payload, report) = removal(&listed(&c), &c, "nft ipv4");
    let payload = payload.unwrap();
    assert_eq!(payload.matches("-D POSTROUTING ").count(), 3, "{payload}");
    assert!(!payload.contains("-X "), "{payload}");
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert_eq!(report.kept.len(), 1, "{report:?}");
    assert!(
        report.kept[0].contains("kept chain IP-MASQ-AGENT: still entered by "),
        "{report:?}"
    );
    let alone = Observed {
        chain_exists: true,
        chain_rules: Vec::new(),
        jumps: vec![jump_save_line(&c)],
        first_rule: None,
    };
    let (payload, report) = removal(&alone, &c, "nft ipv4");
    assert!(
        payload
            .unwrap()
            .ends_with("-F IP-MASQ-AGENT\n-X IP-MASQ-AGENT\nCOMMIT\n")
    );
    assert_eq!(report.removed.len(), 2);
    assert!(report.kept.is_empty());
    assert_eq!(
        removal(&Observed::default(), &c, "nft ipv4"),
        (None, CleanupReport::default())
    );
}

#[test]
fn missing_chain_errors() {
    let err = |detail: &str| BackendError::new(ErrorKind::Rejected, "iptables -S X", detail);
    assert!(is_missing_chain(&err(
        "exited with exit status: 1: iptables v1.8.9 (nf_tables): chain `X' in table `nat' is incompatible, use 'nft' tool."
    )));
    assert!(is_missing_chain(&err(
        "exited with exit status: 1: iptables: No chain/target/match by that name."
    )));
    assert!(!is_missing_chain(&err(
        "exited with exit status: 4: iptables: Permission denied"
    )));
}

#[test]
fn diff_sorts_jumps() {
    let c = chain("IP-MASQ-AGENT");
    let observed = listed(&c);
    let changes = diff(&observed, &c, &observed.chain_rules.clone());
    assert!(!changes.rewrite_chain);
    assert!(!changes.add_jump);
    assert_eq!(changes.delete_jumps.len(), 2, "{changes:?}");
    assert!(changes.delete_jumps[0].starts_with("-m comment --comment \"\\\"ip-masq-agent"));
    assert_eq!(
        changes.foreign_jumps,
        vec!["-A POSTROUTING -m comment --comment \"ip-masq: gke\" -j IP-MASQ-AGENT"]
    );
}

#[test]
fn empty_node_needs_everything() {
    let c = chain("IP-MASQ-AGENT");
    let changes = diff(&Observed::default(), &c, &[]);
    assert!(changes.rewrite_chain && changes.add_jump);
    let text = transaction(&ruleset(&[]), true, &changes);
    assert!(text.starts_with("*nat\n:IP-MASQ-AGENT - [0:0]\n"));
    assert!(text.ends_with(
        concat!(
            "-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination ",
            "traffic to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT\nCOMMIT\n"
        )
    ));
}

#[test]
fn matching_node_needs_nothing() {
    let c = chain("IP-MASQ-AGENT");
    let rs = ruleset(&["10.0.0.0/8"]);
    let rules = predicted_chain_rules(&rs, true);
    let observed = Observed {
        chain_exists: true,
        chain_rules: rules.clone(),
        jumps: vec![jump_save_line(&c)],
        first_rule: None,
    };
    assert!(diff(&observed, &c, &rules).is_empty());
}

#[test]
fn variant_choice_follows_the_wrapper() {
    let e = |a, b, c, d| VariantEvidence {
        nft_kubelet_chains: a,
        legacy_kubelet_chains: b,
        nft_rules: c,
        legacy_rules: d,
    };
    assert_eq!(choose_variant(&e(1, 1, 0, 100)), Variant::Nft);
    assert_eq!(choose_variant(&e(0, 1, 100, 0)), Variant::Legacy);
    assert_eq!(choose_variant(&e(0, 0, 3, 10)), Variant::Legacy);
    assert_eq!(choose_variant(&e(0, 0, 10, 10)), Variant::Nft);
    assert_eq!(choose_variant(&e(0, 0, 0, 0)), Variant::Nft);
}

#[test]
fn binaries_per_variant() {
    assert_eq!(
        Variant::Nft.binary(Family::Ipv6, Tool::Restore),
        "ip6tables-nft-restore"
    );
    assert_eq!(
        Variant::Legacy.binary(Family::Ipv4, Tool::Main),
        "iptables-legacy"
    );
    assert_eq!(Variant::Plain.binary(Family::Ipv4, Tool::Main), "iptables");
}

fn pr(first: u16, last: u16) -> PortRange {
    PortRange { first, last }
}

#[test]
fn port_shares_split_by_size() {
    let shares = port_shares(&[pr(1024, 29999), pr(32768, 65535)]);
    assert_eq!(shares.len(), 6);
    assert_eq!(shares[0].protocol, Protocol::Tcp);
    assert_eq!(shares[0].probability, Some(28976.0 / 61744.0));
    assert_eq!(
        format!("{}", shares[0].probability.unwrap()),
        "0.469292562840114"
    );
    assert_eq!(shares[1].probability, None);
    assert_eq!(shares[2].protocol, Protocol::Udp);
    assert_eq!(shares[4].protocol, Protocol::Sctp);
}

#[test]
fn three_way_split_is_uniform_over_ports() {
    let shares = port_shares(&[pr(1, 10), pr(11, 20), pr(21, 30)]);
    let p: Vec<_> = shares[..3].iter().map(|s| s.probability).collect();
    assert_eq!(p, vec![Some(1.0 / 3.0), Some(0.5), None]);
}

#[test]
fn no_ranges_no_shares() {
    let none: Vec<PortShare> = port_shares(&[]);
    assert!(none.is_empty());
}

/// `nonMasqueradeCIDRs: [10.0.0.0/8]`, the exception `10.0.0.0/9`, and
/// `podCIDRs` as given, planned as the agent plans it.
fn with_pods(pods: &[&str]) -> Ruleset {
    let mut config = crate::config::Config::defaults(false);
    config.non_masquerade_cidrs = vec!["10.0.0.0/8".parse().unwrap()];
    config.masquerade_cidrs = vec!["10.0.0.0/9".parse().unwrap()];
    config.pod_cidrs = pods.iter().map(|p| p.parse().unwrap()).collect();
    let settings = crate::plan::Settings {
        chain: chain("IP-MASQ-AGENT"),
        enable_ipv6: false,
        random_fully: true,
        authoritative: false,
        to_ports: Vec::new(),
    };
    crate::plan::plan(&config, &settings, Family::Ipv4)
}

#[test]
fn pod_sources_return_first_then_the_compiled_list() {
    let backend = Iptables::new(Variant::Nft);
    let rs = with_pods(&["10.200.0.0/16"]);
    assert_eq!(
        backend.render(&rs),
        "*nat\n\
:IP-MASQ-AGENT - [0:0]\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: traffic from outside podCIDRs is not subject to MASQUERADE\" ! -s 10.200.0.0/16 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 10.128.0.0/9 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 169.254.0.0/16 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully\n\
COMMIT\n"
    );
    assert_eq!(
        predicted_chain_rules(&rs, false)[0],
        "-A IP-MASQ-AGENT ! -s 10.200.0.0/16 -m comment --comment \"ip-masq-agent: traffic from outside podCIDRs is not subject to MASQUERADE\" -j RETURN"
    );
    // Two pod ranges that are not one CIDR: a RETURN per CIDR outside them.
    let two = predicted_chain_rules(&with_pods(&["0.0.0.0/2", "128.0.0.0/2"]), false);
    let sources: Vec<&str> = two
        .iter()
        .filter(|r| r.contains("podCIDRs"))
        .map(|r| r.split(' ').nth(3).unwrap())
        .collect();
    assert_eq!(sources, ["64.0.0.0/2", "192.0.0.0/2"]);
    assert!(two.iter().all(|r| !r.contains("! -s")));
}

const KUBE_JUMP: &str =
    "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING";

#[test]
fn authoritative_chain_returns_marked_packets_first_and_accepts_exempted() {
    let rs = Ruleset {
        authoritative: true,
        ..ruleset(&["169.254.0.0/16", "10.0.0.0/8"])
    };
    let rules = predicted_chain_rules(&rs, true);
    assert_eq!(
        rules,
        [
            "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: traffic kube-proxy marked for masquerading is left to KUBE-POSTROUTING\" -m mark --mark 0x4000/0x4000 -j RETURN",
            "-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j ACCEPT",
            "-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j ACCEPT",
            "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully",
        ]
    );
    // The jump of an empty node is inserted first, not appended.
    let c = chain("IP-MASQ-AGENT");
    let changes = diff_placed(&Observed::default(), &c, &[], true);
    let text = transaction(&rs, true, &changes);
    assert!(
        text.contains("\n-I POSTROUTING 1 -m comment --comment \"ip-masq-agent: ensure"),
        "{text}"
    );
    assert!(!text.contains("-A POSTROUTING"), "{text}");
}

#[test]
fn authoritative_moves_only_our_jump_back_to_the_front() {
    let c = chain("IP-MASQ-AGENT");
    let rs = Ruleset {
        authoritative: true,
        ..ruleset(&["10.0.0.0/8"])
    };
    let rules = predicted_chain_rules(&rs, true);
    let ours = jump_save_line(&c);
    let listing = |lines: &[&str]| format!("-P POSTROUTING ACCEPT\n{}\n", lines.join("\n"));
    let chain_listing = format!("-N IP-MASQ-AGENT\n{}\n", rules.join("\n"));
    let read = |lines: &[&str]| parse_listing(&c, Some(&chain_listing), &listing(lines));

    // First: nothing to do, with or without the flag.
    let first = read(&[&ours, KUBE_JUMP]);
    assert_eq!(first.first_rule.as_deref(), Some(ours.as_str()));
    assert!(diff_placed(&first, &c, &rules, true).is_empty());

    // kube-proxy inserted its jump ahead of ours: drift for --authoritative
    // only; our jump is deleted and inserted first, kube-proxy's is kept.
    let behind = read(&[KUBE_JUMP, &ours]);
    assert!(diff_placed(&behind, &c, &rules, false).is_empty());
    let changes = diff_placed(&behind, &c, &rules, true);
    assert!(changes.add_jump && !changes.rewrite_chain, "{changes:?}");
    let spec = ours.trim_start_matches("-A POSTROUTING ");
    assert_eq!(changes.delete_jumps, [spec]);
    assert!(
        changes.differences[0].contains("is not the first rule (first: -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\""),
        "{changes:?}"
    );
    let text = transaction(&rs, true, &changes);
    assert_eq!(
        text,
        format!("*nat\n-D POSTROUTING {spec}\n-I POSTROUTING 1 {spec}\nCOMMIT\n")
    );
    assert!(!text.contains("KUBE-POSTROUTING"));

    // Two copies of ours, neither first: both go, one comes back first.
    let twice = read(&[KUBE_JUMP, &ours, &ours]);
    let changes = diff_placed(&twice, &c, &rules, true);
    assert_eq!(changes.delete_jumps, [spec, spec]);
    assert!(changes.add_jump);
    // One first and a copy behind: `-D` would take the first, so both go.
    let front_and_back = read(&[&ours, KUBE_JUMP, &ours]);
    let changes = diff_placed(&front_and_back, &c, &rules, true);
    assert_eq!(changes.delete_jumps, [spec, spec]);
    assert!(changes.add_jump);
}
