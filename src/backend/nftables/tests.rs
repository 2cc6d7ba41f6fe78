//! The backend's pure parts: rendered scripts, the plan, `nft -j` parsing
//! against output captured from nft 1.0.6 (`testdata/`), the diff and the
//! transactions. Expected text is literal, never built from the constants.

use super::diff::{Changes, SetChange};
use super::*;
use crate::plan::{PortRange, port_shares};

#[test]
fn large_shrinks_rewrite_the_set_only_through_nft() {
    let nets = |n: u32| -> Vec<IpNet> {
        (0..n)
            .map(|i| IpNet::V4(ipnet::Ipv4Net::new_assert((0x0a00_0000 + i * 4).into(), 30)))
            .collect()
    };
    let plan = plan_nft(&ruleset(Family::Ipv4, &["192.0.2.0/24"]));
    let shrink = |n: u32| Changes {
        set: SetChange::Delta {
            remove: nets(n),
            add: Vec::new(),
        },
        ..Changes::default()
    };
    assert!(transaction(&plan, &shrink(64)).starts_with("delete element"));
    assert!(transaction(&plan, &shrink(65)).starts_with("flush set"));
    // Over netlink a delta stays a delta, whatever its size.
    let write = shrink(10_000).element_write(&plan).unwrap();
    assert_eq!((write.flush, write.remove.len()), (false, 10_000));
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn ruleset(family: Family, list: &[&str]) -> Ruleset {
    Ruleset {
        family,
        chain: "IP-MASQ-AGENT".parse().unwrap(),
        no_masquerade: nets(list),
        random_fully: true,
        port_shares: Vec::new(),
    }
}

fn defaults() -> Ruleset {
    ruleset(
        Family::Ipv4,
        &[
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ],
    )
}

fn two_intervals() -> Ruleset {
    let mut rs = ruleset(Family::Ipv4, &["10.0.0.0/8", "192.0.2.1/32"]);
    rs.random_fully = false;
    rs.port_shares = port_shares(&[
        PortRange {
            first: 1024,
            last: 29999,
        },
        PortRange {
            first: 32768,
            last: 65535,
        },
    ]);
    rs
}

/// `nft -j list table ip ip-masq-agent` after `sync` with the defaults,
/// captured from nft 1.0.6 in a test namespace.
const DEFAULTS_JSON: &str = include_str!("testdata/defaults.json");

/// The same after `sync --to-ports=1024-29999,32768-65535
/// --random-fully=false` with `[10.0.0.0/8, 192.0.2.1/32]` and
/// `masqLinkLocal: true`.
const TWO_INTERVALS_JSON: &str = include_str!("testdata/two-intervals.json");

#[test]
fn render_defaults() {
    assert_eq!(
        Nftables::new().render(&defaults()),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn creation_is_gated_and_without_elements() {
    assert_eq!(
        gated_script(&plan_nft(&defaults())),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\treturn
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn only_element_changes_go_over_netlink() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
    let mut drifted = live(&rs);
    if let Some(set) = drifted.set.as_mut() {
        set.elements.remove(&"10.0.0.0/8".parse().unwrap());
    }
    let changes = diff(&plan, &drifted, &plan.predicted(), Some(&written));
    let write = changes.element_write(&plan).unwrap();
    assert!(write.flush && write.remove.is_empty());
    assert_eq!(write.add, plan.elements);
    if let Some(chain) = drifted.chains.get_mut(BASE_CHAIN) {
        chain.rules.pop();
    }
    let changes = diff(&plan, &drifted, &plan.predicted(), Some(&written));
    assert_eq!(changes.element_write(&plan), None, "rules go through nft");
    let changes = diff(&plan, &Observed::default(), &plan.predicted(), None);
    assert_eq!(changes.element_write(&plan), None, "so does a new table");
}

#[test]
fn render_ipv6_without_elements() {
    let rs = ruleset(Family::Ipv6, &[]);
    assert_eq!(
        Nftables::new().render(&rs),
        "table ip6 ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv6_addr
\t\tflags interval
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip6 daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn render_one_port_interval() {
    let mut rs = ruleset(Family::Ipv4, &["10.0.0.0/8"]);
    rs.port_shares = port_shares(&[PortRange {
        first: 1024,
        last: 29999,
    }]);
    let text = Nftables::new().render(&rs);
    assert!(
        text.contains(
            "\t\tip daddr @no-masquerade return
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :1024-29999 fully-random
\t\tmasquerade fully-random
"
        ),
        "{text}"
    );
    assert!(!text.contains("share-"), "{text}");
    rs.port_shares = port_shares(&[PortRange {
        first: 40000,
        last: 40000,
    }]);
    assert!(
        Nftables::new()
            .render(&rs)
            .contains("meta l4proto { tcp, udp, sctp } masquerade to :40000 fully-random\n")
    );
}

#[test]
fn render_two_port_intervals() {
    assert_eq!(
        Nftables::new().render(&two_intervals()),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 192.0.2.1/32 }
\t}
\tchain share-0 {
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :1024-29999
\t}
\tchain share-1 {
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :32768-65535
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmeta l4proto { tcp, udp, sctp } numgen random mod 61744 vmap { 0-28975 : jump share-0, 28976-61743 : jump share-1 }
\t\tmasquerade
\t}
}
"
    );
}

#[test]
fn set_elements_are_aggregated() {
    let rs = ruleset(
        Family::Ipv4,
        &[
            "10.0.0.0/9",
            "10.128.0.0/9",
            "10.1.0.0/16",
            "192.168.0.0/16",
            "192.168.0.0/16",
        ],
    );
    assert_eq!(
        plan_nft(&rs).elements,
        nets(&["10.0.0.0/8", "192.168.0.0/16"])
    );
}

#[test]
fn parse_captured_defaults() {
    let observed = parse_json(DEFAULTS_JSON, Family::Ipv4).unwrap();
    assert!(observed.table);
    let set = observed.set.clone().unwrap();
    assert!(set.shape_ok);
    assert_eq!(set.foreign_elements, 0);
    assert_eq!(
        set.elements.iter().copied().collect::<Vec<_>>(),
        nets(&[
            "10.0.0.0/8",
            "169.254.0.0/16",
            "172.16.0.0/12",
            "192.168.0.0/16"
        ])
    );
    assert_eq!(observed.chains.len(), 1);
    let chain = &observed.chains[BASE_CHAIN];
    assert!(chain.base_ok);
    assert_eq!(chain.rules.len(), 3);
    // The ip6 table's view of the same text finds nothing of ours.
    assert!(!parse_json(DEFAULTS_JSON, Family::Ipv6).unwrap().table);
}

#[test]
fn predictions_equal_what_nft_prints() {
    for (rs, captured) in [
        (defaults(), DEFAULTS_JSON),
        (two_intervals(), TWO_INTERVALS_JSON),
    ] {
        let plan = plan_nft(&rs);
        let observed = parse_json(captured, Family::Ipv4).unwrap();
        let changes = diff(&plan, &observed, &plan.predicted(), None);
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(
            observed.set.unwrap().elements,
            plan.elements.iter().copied().collect()
        );
    }
}

#[test]
fn parse_rejects_what_is_not_ours() {
    let json = include_str!("testdata/foreign-range.json");
    let observed = parse_json(json, Family::Ipv4).unwrap();
    let set = observed.set.unwrap();
    assert_eq!(set.foreign_elements, 1);
    assert_eq!(set.elements.len(), 1);
    assert!(parse_json("not json", Family::Ipv4).is_err());
    assert!(parse_json("{}", Family::Ipv4).is_err());
}

fn live(rs: &Ruleset) -> Observed {
    // What the kernel holds right after `rs` was applied.
    let plan = plan_nft(rs);
    Observed {
        table: true,
        set: Some(ObservedSet {
            shape_ok: true,
            elements: plan.elements.iter().copied().collect(),
            foreign_elements: 0,
        }),
        chains: plan
            .chains
            .iter()
            .map(|c| {
                let chain = ObservedChain {
                    base_ok: c.base,
                    rules: c.rules.iter().map(NftRule::json).collect(),
                };
                (c.name.clone(), chain)
            })
            .collect(),
    }
}

#[test]
fn missing_table_gets_the_whole_script() {
    let plan = plan_nft(&defaults());
    let changes = diff(&plan, &Observed::default(), &plan.predicted(), None);
    assert!(changes.create_table);
    assert_eq!(changes.differences, vec!["table ip ip-masq-agent missing"]);
    assert_eq!(transaction(&plan, &changes), script(&plan));
}

#[test]
fn config_change_sends_only_the_delta() {
    let old = ruleset(Family::Ipv4, &["10.0.0.0/9", "192.168.0.0/16"]);
    let new = ruleset(
        Family::Ipv4,
        &["10.0.0.0/9", "10.128.0.0/9", "203.0.113.0/24"],
    );
    let observed = live(&old);
    let written: BTreeSet<IpNet> = plan_nft(&old).elements.into_iter().collect();
    let plan = plan_nft(&new);
    let changes = diff(&plan, &observed, &plan.predicted(), Some(&written));
    assert_eq!(
        changes.set,
        SetChange::Delta {
            remove: nets(&["10.0.0.0/9", "192.168.0.0/16"]),
            add: nets(&["10.0.0.0/8", "203.0.113.0/24"]),
        }
    );
    assert!(!changes.rewrite_rules);
    assert_eq!(
        changes.differences,
        vec!["set no-masquerade: 2 elements added, 2 removed"]
    );
    assert_eq!(
        transaction(&plan, &changes),
        "delete element ip ip-masq-agent no-masquerade { 10.0.0.0/9, 192.168.0.0/16 }
add element ip ip-masq-agent no-masquerade { 10.0.0.0/8, 203.0.113.0/24 }
"
    );
    // Unknown history (agent just started): the same exact delta.
    assert_eq!(
        diff(&plan, &observed, &plan.predicted(), None).set,
        changes.set
    );
}

#[test]
fn matching_node_needs_nothing() {
    let rs = two_intervals();
    let plan = plan_nft(&rs);
    let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
    let changes = diff(&plan, &live(&rs), &plan.predicted(), Some(&written));
    assert!(changes.is_empty(), "{changes:?}");
    assert!(changes.differences.is_empty());
}

#[test]
fn set_drift_rewrites_the_set() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
    let mut observed = live(&rs);
    if let Some(set) = observed.set.as_mut() {
        set.elements.remove(&"10.0.0.0/8".parse().unwrap());
    }
    let changes = diff(&plan, &observed, &plan.predicted(), Some(&written));
    assert_eq!(changes.set, SetChange::Rewrite);
    assert_eq!(
        changes.differences,
        vec!["set no-masquerade changed outside the agent: 1 element missing, 0 extra"]
    );
    assert_eq!(
        transaction(&plan, &changes),
        "flush set ip ip-masq-agent no-masquerade
add element ip ip-masq-agent no-masquerade { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }
"
    );
}

#[test]
fn rule_drift_flushes_and_refills_the_chain_never_recreates_it() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let mut observed = live(&rs);
    if let Some(chain) = observed.chains.get_mut(BASE_CHAIN) {
        chain.rules.remove(1);
    }
    let changes = diff(&plan, &observed, &plan.predicted(), None);
    assert_eq!(changes.set, SetChange::None);
    assert_eq!(changes.differences, vec!["chain postrouting rules differ"]);
    assert_eq!(
        transaction(&plan, &changes),
        "flush chain ip ip-masq-agent postrouting
add rule ip ip-masq-agent postrouting fib daddr type local return
add rule ip ip-masq-agent postrouting ip daddr @no-masquerade return
add rule ip ip-masq-agent postrouting masquerade fully-random
"
    );
}

#[test]
fn wrong_set_type_is_replaced_after_its_rule_is_gone() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let mut observed = live(&rs);
    if let Some(set) = observed.set.as_mut() {
        set.shape_ok = false;
    }
    let changes = diff(&plan, &observed, &plan.predicted(), None);
    let text = transaction(&plan, &changes);
    let flush = text
        .find("flush chain ip ip-masq-agent postrouting")
        .unwrap();
    let delete = text
        .find("delete set ip ip-masq-agent no-masquerade")
        .unwrap();
    let add = text
        .find("add set ip ip-masq-agent no-masquerade { type ipv4_addr; flags interval; }")
        .unwrap();
    let rule = text
        .find("add rule ip ip-masq-agent postrouting ip daddr")
        .unwrap();
    assert!(flush < delete && delete < add && add < rule, "{text}");
}

#[test]
fn unused_share_chains_are_removed() {
    let old = two_intervals();
    let mut new = old.clone();
    new.port_shares.clear();
    let plan = plan_nft(&new);
    let changes = diff(&plan, &live(&old), &plan.predicted(), None);
    assert_eq!(changes.stale_chains, vec!["share-0", "share-1"]);
    let text = transaction(&plan, &changes);
    assert!(
        text.starts_with("flush chain ip ip-masq-agent postrouting\n"),
        "{text}"
    );
    assert!(
        text.ends_with(
            "delete chain ip ip-masq-agent share-0\ndelete chain ip ip-masq-agent share-1\n"
        ),
        "{text}"
    );
}

#[test]
fn absent_is_recognised() {
    let err = BackendError::new(
        ErrorKind::Rejected,
        "nft delete table ip ip-masq-agent",
        "exited with exit status: 1: Error: Could not process rule: No such file or directory",
    );
    assert!(is_absent(&err));
    let other = BackendError::new(ErrorKind::Rejected, "nft", "Operation not permitted");
    assert!(!is_absent(&other));
}
