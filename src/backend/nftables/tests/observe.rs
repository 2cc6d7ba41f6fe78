//! `nft -j` output parsed, against output captured from nft 1.0.6.

use super::super::observe::Hook;
use super::*;

/// `nft -j list table ip ip-masq-agent` after `sync` with the defaults,
/// captured from nft 1.0.6 in a test namespace.
const DEFAULTS_JSON: &str = include_str!("../testdata/defaults.json");

/// The same after `sync --to-ports=1024-29999,32768-65535
/// --random-fully=false` with `[10.0.0.0/8, 192.0.2.1/32]` and
/// `masqLinkLocal: true`.
const TWO_INTERVALS_JSON: &str = include_str!("../testdata/two-intervals.json");

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

/// The same after `sync` with `nonMasqueradeCIDRs: [10.0.0.0/8,
/// 10.9.5.128/25]`, `masqueradeCIDRs: [10.9.0.0/16]` and `podCIDRs:
/// [10.40.0.0/24]`.
const POD_SOURCES_JSON: &str = include_str!("../testdata/pod-sources.json");

#[test]
fn parse_the_pod_source_set() {
    let observed = parse_json(POD_SOURCES_JSON, Family::Ipv4).unwrap();
    let pods = observed.pod_set.unwrap();
    assert!(pods.shape_ok);
    assert_eq!(
        pods.elements.iter().copied().collect::<Vec<_>>(),
        nets(&["10.40.0.0/24"])
    );
    assert_eq!(observed.set.unwrap().elements.len(), 10);
    assert_eq!(observed.chains[BASE_CHAIN].rules.len(), 4);
    assert_eq!(
        parse_json(DEFAULTS_JSON, Family::Ipv4).unwrap().pod_set,
        None
    );
}

#[test]
fn predictions_equal_what_nft_prints() {
    for (rs, captured) in [
        (defaults(), DEFAULTS_JSON),
        (two_intervals(), TWO_INTERVALS_JSON),
        (pod_sources(), POD_SOURCES_JSON),
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
    let json = include_str!("../testdata/foreign-range.json");
    let observed = parse_json(json, Family::Ipv4).unwrap();
    let set = observed.set.unwrap();
    assert_eq!(set.foreign_elements, 1);
    assert_eq!(set.elements.len(), 1);
    assert!(parse_json("not json", Family::Ipv4).is_err());
    assert!(parse_json("{}", Family::Ipv4).is_err());
}

#[test]
fn only_our_hook_makes_the_base_chain() {
    let ours = Hook {
        kind: Some("nat"),
        hook: Some("postrouting"),
        priority: Some(110),
        policy: Some("accept"),
    };
    assert!(ours.is_ours());
    for other in [
        Hook {
            policy: Some("drop"),
            ..ours
        },
        Hook {
            priority: Some(100),
            ..ours
        },
        Hook {
            hook: Some("output"),
            ..ours
        },
        Hook {
            kind: Some("filter"),
            ..ours
        },
        Hook::default(),
    ] {
        assert!(!other.is_ours(), "{other:?}");
    }
}

/// `nft -j list table ip ip-masq-agent` after `sync --authoritative` with
/// the config of [`POD_SOURCES_JSON`], captured from nft 1.0.6.
const AUTHORITATIVE_JSON: &str = include_str!("../testdata/authoritative.json");

#[test]
fn the_authoritative_rules_read_back_as_predicted() {
    let rs = Ruleset {
        authoritative: true,
        ..pod_sources()
    };
    let plan = plan_nft(&rs);
    let observed = parse_json(AUTHORITATIVE_JSON, Family::Ipv4).unwrap();
    let chain = &observed.chains[BASE_CHAIN];
    assert!(chain.base_ok);
    assert_eq!(chain.priority, Some(90));
    assert_eq!(chain.rules, plan.predicted()[BASE_CHAIN]);
    let expected = plan.predicted();
    assert!(diff(&plan, &observed, &expected, None).is_empty());
    // The same table is drift for a plan without the flag: other rules,
    // and a base chain at the other priority, recreated.
    let upstream = plan_nft(&pod_sources());
    let changes = diff(&upstream, &observed, &upstream.predicted(), None);
    assert!(
        changes.rewrite_rules && changes.recreate_base,
        "{changes:?}"
    );
    assert!(
        changes.differences[0].contains("not a nat postrouting chain at srcnat + 10"),
        "{changes:?}"
    );
}
