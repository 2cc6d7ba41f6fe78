//! What the diff finds and the transactions it turns into.

use super::super::diff::{Changes, PodSetChange, SetChange};
use super::*;

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
    assert_eq!(
        changes.differences,
        vec![
            r#"chain postrouting: 1 missing [[{"match":{"left":{"payload":{"field":"daddr","protocol":"ip"}},"op":"==","right":"@no-masquerade"}},{"return":null}]]"#
        ]
    );
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
    new.to_ports.clear();
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
fn the_pod_source_set_is_diffed_and_rewritten_whole_by_nft() {
    let rs = pod_sources();
    let plan = plan_nft(&rs);
    let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
    assert!(diff(&plan, &live(&rs), &plan.predicted(), Some(&written)).is_empty());

    // An element added behind our back: flush and refill, rules untouched.
    let mut drifted = live(&rs);
    if let Some(pods) = drifted.pod_set.as_mut() {
        pods.elements.insert("192.0.2.0/24".parse().unwrap());
    }
    let changes = diff(&plan, &drifted, &plan.predicted(), Some(&written));
    assert_eq!(changes.pod_set, PodSetChange::Rewrite);
    assert!(!changes.rewrite_rules);
    assert_eq!(
        changes.differences,
        vec!["set pod-sources: 0 elements missing, 1 extra"]
    );
    assert_eq!(changes.element_write(&plan), None, "nft writes the pod set");
    assert_eq!(
        transaction(&plan, &changes),
        "flush set ip ip-masq-agent pod-sources\nadd element ip ip-masq-agent pod-sources { 10.40.0.0/24 }\n"
    );

    // Deleted: created again.
    let mut gone = live(&rs);
    gone.pod_set = None;
    let changes = diff(&plan, &gone, &plan.predicted(), Some(&written));
    assert_eq!(changes.pod_set, PodSetChange::Create);
    assert!(transaction(&plan, &changes).starts_with(
        "add set ip ip-masq-agent pod-sources { type ipv4_addr; flags interval; }\nadd element ip ip-masq-agent pod-sources { 10.40.0.0/24 }\n"
    ));

    // podCIDRs removed from the config: the rule goes first, then the set.
    let without = plan_nft(&ruleset(Family::Ipv4, &["169.254.0.0/16", "10.0.0.0/8"]));
    let changes = diff(&without, &live(&rs), &without.predicted(), Some(&written));
    assert_eq!(changes.pod_set, PodSetChange::Delete);
    assert!(changes.rewrite_rules);
    let script = transaction(&without, &changes);
    let flush = script
        .find("flush chain ip ip-masq-agent postrouting")
        .unwrap();
    let delete = script
        .find("delete set ip ip-masq-agent pod-sources")
        .unwrap();
    let rules = script
        .find("add rule ip ip-masq-agent postrouting")
        .unwrap();
    assert!(flush < delete && delete < rules, "{script}");
    assert!(!script.contains("saddr"), "{script}");

    // A table without podCIDRs holding no pod set compares as before.
    let plain = defaults();
    let plain_plan = plan_nft(&plain);
    let changes = diff(&plain_plan, &live(&plain), &plain_plan.predicted(), None);
    assert!(changes.is_empty(), "{changes:?}");
}

#[test]
fn a_foreign_chain_in_our_table_is_removed_and_named() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let mut observed = live(&rs);
    observed.chains.insert("sneaky".into(), Default::default());
    let changes = diff(&plan, &observed, &plan.predicted(), None);
    assert_eq!(
        changes.differences,
        vec!["chain sneaky in our table is not ours: removed"]
    );
    let script = transaction(&plan, &changes);
    assert!(
        script.starts_with(
            "flush chain ip ip-masq-agent postrouting\nflush chain ip ip-masq-agent sneaky\n"
        ),
        "{script}"
    );
    assert!(
        script.ends_with("delete chain ip ip-masq-agent sneaky\n"),
        "{script}"
    );
}

#[test]
fn a_chain_name_nft_could_misread_never_reaches_a_script() {
    let rs = defaults();
    let plan = plan_nft(&rs);
    let mut observed = live(&rs);
    observed
        .chains
        .insert("x; flush ruleset\n".into(), Default::default());
    let changes = diff(&plan, &observed, &plan.predicted(), None);
    assert!(changes.is_empty(), "{changes:?}");
    assert_eq!(
        changes.unremovable_chains,
        vec![
            "chain x; flush ruleset\\n in table ip ip-masq-agent is not ours, and its name is not one the agent passes to nft: \
remove it with nft delete chain ip ip-masq-agent handle N"
        ]
    );
}
