//! The parsers and the walk on rule sets real programs wrote
//! (tests/integration/testdata/foreign, and nft's JSON of kube-proxy's
//! nftables chains in testdata/).

use std::collections::BTreeMap;

use super::iptables::{parse_rule, words};
use super::nft::parse_chain;
use super::rules::{Hooked, Match, Origin, Target};
use super::stale::{Stale, removal, stale_jumps};
use super::walk::{
    Addrs, ConflictKind, Decider, Effect, Expectation, OurPlace, Packet, detect, trace,
};
use crate::config::{Config, LoadOptions};
use crate::plan::{ChainName, Family};
use crate::policy::Verdict;

const BRIDGE_CNI: &str =
    include_str!("../../../tests/integration/testdata/foreign/bridge-cni.save");
const DOCKER: &str = include_str!("../../../tests/integration/testdata/foreign/docker.save");
const OPENSHIFT: &str =
    include_str!("../../../tests/integration/testdata/foreign/openshift-sdn.save");
const STALE: &str = include_str!("../../../tests/integration/testdata/foreign/stale-ip-masq.save");
const KUBE_PROXY: &str =
    include_str!("../../../tests/integration/testdata/foreign/kube-proxy-iptables.save");
const KP_POSTROUTING: &str = include_str!("testdata/kube-proxy-nat-postrouting.json");
const KP_MASQUERADING: &str = include_str!("testdata/kube-proxy-masquerading.json");

/// Our jump, as iptables prints it.
const OUR_JUMP: &str = "-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination \
                        traffic to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT";

/// The nat section of a save file as the path's iptables part, with our
/// jump appended to POSTROUTING as the agent appends it.
fn iptables_path(save: &str) -> Hooked {
    let mut hook = Hooked::iptables("nft", 100);
    hook.chains.insert("POSTROUTING".into(), Vec::new());
    let mut in_nat = false;
    for line in save.lines() {
        if line.starts_with('*') {
            in_nat = line == "*nat";
        }
        if !in_nat {
            continue;
        }
        if let Some((chain, rule)) = parse_rule(line) {
            hook.chains.entry(chain).or_default().push(rule);
        }
    }
    let (_, ours) = parse_rule(OUR_JUMP).unwrap();
    hook.chains.get_mut("POSTROUTING").unwrap().push(ours);
    hook
}

fn config(text: &str) -> Config {
    let opts = LoadOptions {
        all_reserved_ranges: false,
        enable_ipv6: true,
    };
    crate::config::parse(text.as_bytes(), &opts).unwrap().config
}

fn ours() -> OurPlace {
    OurPlace::Iptables {
        variant: "nft",
        chain: "IP-MASQ-AGENT".parse().unwrap(),
    }
}

fn messages(path: &[Hooked], config: &Config, place: &OurPlace) -> Vec<String> {
    let expected = Expectation::new(config, Family::Ipv4, path);
    detect(path, &expected, place)
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn words_undo_iptables_quoting() {
    assert_eq!(
        words(r#"-A X -m comment --comment "name: \"podnet\" id: \"c1\"" -j ACCEPT"#),
        [
            "-A",
            "X",
            "-m",
            "comment",
            "--comment",
            "name: \"podnet\" id: \"c1\"",
            "-j",
            "ACCEPT"
        ]
    );
}

#[test]
fn iptables_rules_become_typed_matches() {
    let (chain, rule) =
        parse_rule("-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE").unwrap();
    assert_eq!(chain, "POSTROUTING");
    assert_eq!(
        rule.matches,
        [
            Match::Source {
                neg: false,
                nets: vec!["172.17.0.0/16".parse().unwrap()]
            },
            Match::OutInterface {
                neg: true,
                names: vec!["docker0".into()]
            },
        ]
    );
    assert_eq!(rule.target, Target::Nat("MASQUERADE".into()));
    let (_, rule) =
        parse_rule("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN").unwrap();
    assert_eq!(
        rule.matches,
        [Match::Mark {
            neg: true,
            value: 0x4000,
            mask: 0x4000
        }]
    );
    assert_eq!(rule.target, Target::Return);
    let (_, rule) = parse_rule(
        "-A X -p tcp -m physdev --physdev-is-bridged -m tcp --dport 80 -j KUBE-MARK-MASQ",
    )
    .unwrap();
    assert_eq!(rule.target, Target::Jump("KUBE-MARK-MASQ".into()));
    assert_eq!(
        rule.matches
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        [
            "-p tcp",
            "-m physdev --physdev-is-bridged",
            "-m tcp --dport 80"
        ]
    );
    assert!(parse_rule("-P POSTROUTING ACCEPT").is_none());
    let (_, stale) = parse_rule(
        STALE
            .lines()
            .find(|l| l.starts_with("-A POSTROUTING"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(stale.upstream_jump(), Some("IP-MASQ"));
}

#[test]
fn kube_proxy_alone_is_no_conflict() {
    let path = [iptables_path(KUBE_PROXY)];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.44.0.0/14]\n");
    assert_eq!(messages(&path, &c, &ours()), Vec::<String>::new());
}

#[test]
fn the_bridge_plugins_chain_masquerades_what_we_exempt() {
    let path = [iptables_path(BRIDGE_CNI)];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.22.0.0/16]\n");
    assert_eq!(
        messages(&path, &c, &ours()),
        [format!(
            "iptables-nft nat chain CNI-efe7027ce740cec505e00d4d rule `{}` may masquerade pod traffic to 10.0.0.0/8, 169.254.0.0/16 that the config exempts \
             (not known here: source in 10.22.0.2/32)",
            r#"-A CNI-efe7027ce740cec505e00d4d ! -d 224.0.0.0/4 -m comment --comment "name: \"podnet\" id: \"capture1\"" -j MASQUERADE"#
        )]
    );
    // For that one pod the answer is certain.
    let pod = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.22.0.2/32]\n");
    let found = messages(&path, &pod, &ours());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains(" masquerades pod traffic to 10.0.0.0/8, 169.254.0.0/16 that"),
        "{found:?}"
    );
}

#[test]
fn an_accept_before_our_jump_keeps_masqueraded_traffic_from_us() {
    // The bridge plugin's ACCEPT for its own subnet: with that subnet not
    // exempt, traffic there never reaches our chain.
    let path = [iptables_path(BRIDGE_CNI)];
    let c = config("nonMasqueradeCIDRs: [192.168.0.0/16]\npodCIDRs: [10.22.0.2/32]\n");
    let found = detect(&path, &Expectation::new(&c, Family::Ipv4, &path), &ours());
    let ends: Vec<_> = found
        .iter()
        .filter(|c| c.kind == ConflictKind::EndsBefore)
        .collect();
    assert_eq!(ends.len(), 1, "{found:#?}");
    assert_eq!(ends[0].cidrs, ["10.22.0.0/16"]);
    assert!(
        ends[0].to_string().contains(
            "ends the nat traversal before IP-MASQ-AGENT for pod traffic to 10.22.0.0/16"
        )
    );
}

#[test]
fn openshift_masquerades_cluster_external_traffic_before_us() {
    let path = [iptables_path(OPENSHIFT)];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12]\npodCIDRs: [10.128.0.0/14]\n");
    let found = messages(&path, &c, &ours());
    assert_eq!(
        found,
        [
            "iptables-nft nat chain OPENSHIFT-MASQUERADE-2 rule `-A OPENSHIFT-MASQUERADE-2 -j MASQUERADE` masquerades pod traffic to \
          10.0.0.0/8, 172.16.0.0/12, 169.254.0.0/16 that the config exempts"
        ]
    );
}

#[test]
fn docker_depends_on_the_interface() {
    let path = [iptables_path(DOCKER)];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [172.17.0.0/16]\n");
    let found = messages(&path, &c, &ours());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with(
            "may masquerade pod traffic to 10.0.0.0/8, 172.17.0.0/16, 169.254.0.0/16 that the config exempts (not known here: output interface not docker0)"
        ),
        "{found:?}"
    );
    // Pods elsewhere are not Docker's.
    let other = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.44.0.0/14]\n");
    assert!(messages(&path, &other, &ours()).is_empty());
    // A packet whose interface is known is answered for sure.
    let packet = Packet {
        family: Family::Ipv4,
        source: Addrs::In(vec!["172.17.0.5/32".parse().unwrap()]),
        destination: Addrs::In(vec!["10.1.2.3/32".parse().unwrap()]),
        out_interface: Some("eth0".into()),
        in_interface: Some("docker0".into()),
        source_is_pod: true,
    };
    let t = trace(&path, &packet, &ours(), Verdict::NoMasquerade);
    assert_eq!(t.decider, Decider::Foreign(0));
    assert_eq!(
        t.steps[0].rule.text,
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE"
    );
    let home = Packet {
        out_interface: Some("docker0".into()),
        ..packet
    };
    let t = trace(&path, &home, &ours(), Verdict::NoMasquerade);
    assert_eq!(t.decider, Decider::Ours(Verdict::NoMasquerade));
    assert_eq!(t.steps.last().map(|s| s.effect), Some(Effect::Ours));
}

#[test]
fn a_stale_upstream_chain_is_its_own_conflict() {
    let path = [iptables_path(STALE)];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n");
    assert_eq!(
        messages(&path, &c, &ours()),
        [format!(
            "iptables-nft nat chain POSTROUTING rule `{}`: stale chain IP-MASQ from an earlier agent decides first; run `ip-masq-agent cleanup --stale-chains`",
            STALE
                .lines()
                .find(|l| l.starts_with("-A POSTROUTING"))
                .unwrap()
        )]
    );
    // A range we exempt and the stale chain does not: it masquerades it first.
    let more = config("nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]\n");
    let found = messages(&path, &more, &ours());
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("chain IP-MASQ rule")
            && found[0].contains("masquerades pod traffic to 100.64.0.0/10 that"),
        "{found:?}"
    );
    // Under its own name it is ours, not stale.
    let as_ours = OurPlace::Iptables {
        variant: "nft",
        chain: "IP-MASQ".parse().unwrap(),
    };
    let mut hook = iptables_path(STALE);
    hook.chains.get_mut("POSTROUTING").unwrap().pop();
    hook.chains.remove("IP-MASQ");
    assert!(messages(&[hook], &c, &as_ours).is_empty());
}

#[test]
fn stale_removal_takes_the_jump_and_the_chain_only() {
    let hook = iptables_path(STALE);
    let postrouting = hook.chains["POSTROUTING"].clone();
    let ours: ChainName = "IP-MASQ-AGENT".parse().unwrap();
    let found = stale_jumps(&postrouting, &ours);
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].0, "IP-MASQ");
    let stale = [Stale {
        chain: "IP-MASQ".into(),
        jumps: found[0].1.clone(),
        rules: Some(hook.chains["IP-MASQ"].clone()),
    }];
    let (payload, report) = removal(&postrouting, &stale, "nft ipv4");
    assert_eq!(
        payload.unwrap(),
        format!(
            "*nat\n-D POSTROUTING {}\n-F IP-MASQ\n-X IP-MASQ\nCOMMIT\n",
            STALE
                .lines()
                .find(|l| l.starts_with("-A POSTROUTING"))
                .unwrap()
                .trim_start_matches("-A POSTROUTING ")
        )
    );
    assert!(report.kept.is_empty(), "{report:?}");
    assert_eq!(
        report.removed,
        [
            "nft ipv4: removed stale jump to IP-MASQ",
            "nft ipv4: removed stale chain IP-MASQ"
        ]
    );
    // A chain holding someone else's rule is not ours to remove.
    let mut foreign = stale.clone();
    foreign[0]
        .rules
        .as_mut()
        .unwrap()
        .push(parse_rule("-A IP-MASQ -j ACCEPT").unwrap().1);
    let (payload, report) = removal(&postrouting, &foreign, "nft ipv4");
    assert_eq!(payload, None);
    assert!(report.removed.is_empty(), "{report:?}");
    assert!(
        report.kept[0].contains("kept stale chain IP-MASQ"),
        "{report:?}"
    );
    // Our own chain is never stale; under another name, ours would be.
    let upstream_only = &postrouting[..postrouting.len() - 1];
    assert!(stale_jumps(upstream_only, &"IP-MASQ".parse().unwrap()).is_empty());
    let ours_as_stale = stale_jumps(&postrouting, &"IP-MASQ".parse().unwrap());
    assert_eq!(ours_as_stale.len(), 1);
    assert_eq!(ours_as_stale[0].0, "IP-MASQ-AGENT");
}

fn nft_place() -> OurPlace {
    OurPlace::Nftables {
        chain: "IP-MASQ-AGENT".parse().unwrap(),
    }
}

fn kube_proxy_nft() -> Hooked {
    let base = parse_chain(KP_POSTROUTING).unwrap();
    assert_eq!(
        (base.kind.as_deref(), base.hook.as_deref(), base.priority),
        (Some("nat"), Some("postrouting"), Some(100))
    );
    let masquerading = parse_chain(KP_MASQUERADING).unwrap();
    Hooked {
        origin: Origin::Nftables {
            family: "ip".into(),
            table: "kube-proxy".into(),
        },
        priority: 100,
        base: "nat-postrouting".into(),
        chains: BTreeMap::from([
            ("nat-postrouting".into(), base.rules),
            ("masquerading".into(), masquerading.rules),
        ]),
        ours: false,
        unread: Vec::new(),
    }
}

#[test]
fn kube_proxys_nftables_chains_parse_and_leave_pod_traffic_alone() {
    let kp = kube_proxy_nft();
    let rules = &kp.chains["masquerading"];
    assert_eq!(
        rules[0].matches,
        [Match::Mark {
            neg: true,
            value: 0,
            mask: 0x4000
        }]
    );
    assert_eq!(rules[0].target, Target::Nat("masquerade".into()));
    assert_eq!(
        rules[0].text,
        "[handle 45] meta mark & 0x4000 != 0x0 masquerade"
    );
    assert_eq!(rules[1].matches[0], Match::Dnat { neg: false });
    let ours_nft = Hooked {
        origin: Origin::Nftables {
            family: "ip".into(),
            table: "ip-masq-agent".into(),
        },
        priority: 110,
        base: "postrouting".into(),
        chains: BTreeMap::new(),
        ours: true,
        unread: Vec::new(),
    };
    let path = [kp, ours_nft];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [10.44.0.0/14]\n");
    assert!(messages(&path, &c, &nft_place()).is_empty());
    // A service-marked packet would be kube-proxy's; unmarked pod traffic reaches ours.
    let packet = Packet {
        family: Family::Ipv4,
        source: Addrs::In(vec!["10.44.3.7/32".parse().unwrap()]),
        destination: Addrs::In(vec!["8.8.8.8/32".parse().unwrap()]),
        out_interface: None,
        in_interface: None,
        source_is_pod: true,
    };
    let t = trace(&path, &packet, &nft_place(), Verdict::Masquerade);
    assert_eq!(t.decider, Decider::Ours(Verdict::Masquerade));
    // An nftables accept does not stop the next base chain.
    let mut accepting = path.clone();
    accepting[0].chains.get_mut("nat-postrouting").unwrap()[0].target = Target::Accept;
    let t = trace(&accepting, &packet, &nft_place(), Verdict::Masquerade);
    assert_eq!(t.decider, Decider::Ours(Verdict::Masquerade));
}

#[test]
fn a_long_list_of_affected_cidrs_is_cut_short() {
    let path = [iptables_path(OPENSHIFT)];
    let nets: Vec<String> = (0..20).map(|i| format!("192.168.{i}.0/24")).collect();
    let c = config(&format!(
        "nonMasqueradeCIDRs: [{}]\npodCIDRs: [10.128.0.0/14]\n",
        nets.join(", ")
    ));
    let found = messages(&path, &c, &ours());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("192.168.6.0/24, 192.168.7.0/24 and 13 more that the config exempts"),
        "{found:?}"
    );
}

#[test]
fn a_config_of_fifty_thousand_cidrs_beside_kube_proxy_has_no_conflict() {
    let path = [iptables_path(KUBE_PROXY)];
    let nets: Vec<String> = (0..50_000u32)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let c = config(&format!(
        "nonMasqueradeCIDRs: [{}]\ncidrLimit: 60000\npodCIDRs: [10.44.0.0/14]\n",
        nets.join(", ")
    ));
    let expected = Expectation::new(&c, Family::Ipv4, &path);
    assert!(expected.probes.len() > 50_000);
    assert!(detect(&path, &expected, &ours()).is_empty());
}

/// Docker's nftables table (its driver's own golden file, loaded into nft):
/// the base chain reaches the masquerade only through verdict maps.
#[test]
fn dockers_nftables_verdict_maps_lead_to_its_masquerade() {
    use super::nft::{expand_verdict_map, parse_verdict_map};
    let base = parse_chain(include_str!("testdata/docker-nat-postrouting.json")).unwrap();
    assert_eq!(base.priority, Some(100));
    let mut rules = Vec::new();
    for rule in &base.rules {
        let Target::VerdictMap { output, map } = &rule.target else {
            panic!("{rule:?}");
        };
        let text = match map.as_str() {
            "nat-postrouting-out-jumps" => {
                include_str!("testdata/docker-nat-postrouting-out-jumps.json")
            }
            "nat-postrouting-in-jumps" => {
                include_str!("testdata/docker-nat-postrouting-in-jumps.json")
            }
            other => panic!("{other}"),
        };
        let (elements, other) = parse_verdict_map(text).unwrap();
        assert_eq!(other, 0);
        rules.extend(expand_verdict_map(rule, *output, &elements));
    }
    assert_eq!(
        rules.iter().map(|r| r.text.as_str()).collect::<Vec<_>>(),
        [
            "[handle 18] iifname vmap @nat-postrouting-out-jumps { \"br-dummy\" : jump nat-postrouting-out__br-dummy }",
            "[handle 19] oifname vmap @nat-postrouting-in-jumps { \"br-dummy\" : jump nat-postrouting-in__br-dummy }",
        ]
    );
    let out = parse_chain(include_str!("testdata/docker-nat-postrouting-out.json")).unwrap();
    assert_eq!(
        out.rules[0].text,
        "[handle 29] oifname != br-dummy saddr == 192.168.0.0/24 masquerade comment \"MASQUERADE\""
    );
    let inbound = parse_chain(include_str!("testdata/docker-nat-postrouting-in.json")).unwrap();
    let docker = Hooked {
        origin: Origin::Nftables {
            family: "ip".into(),
            table: "docker-bridges".into(),
        },
        priority: 100,
        base: "nat-POSTROUTING".into(),
        chains: BTreeMap::from([
            ("nat-POSTROUTING".into(), rules),
            ("nat-postrouting-out__br-dummy".into(), out.rules),
            ("nat-postrouting-in__br-dummy".into(), inbound.rules),
        ]),
        ours: false,
        unread: Vec::new(),
    };
    let ours_nft = Hooked {
        origin: Origin::Nftables {
            family: "ip".into(),
            table: "ip-masq-agent".into(),
        },
        priority: 110,
        base: "postrouting".into(),
        chains: BTreeMap::new(),
        ours: true,
        unread: Vec::new(),
    };
    let path = [docker, ours_nft];
    let c = config("nonMasqueradeCIDRs: [10.0.0.0/8]\npodCIDRs: [192.168.0.0/24]\n");
    assert_eq!(
        messages(&path, &c, &nft_place()),
        [
            "nftables table ip docker-bridges chain nat-postrouting-out__br-dummy rule \
          `[handle 29] oifname != br-dummy saddr == 192.168.0.0/24 masquerade comment \"MASQUERADE\"` may masquerade pod traffic to \
          10.0.0.0/8, 192.168.0.0/24, 169.254.0.0/16 that the config exempts (not known here: input interface br-dummy; output interface not br-dummy)"
        ]
    );
}
