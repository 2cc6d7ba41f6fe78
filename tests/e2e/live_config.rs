//! Config changes while traffic flows: (c) a kubelet-style ConfigMap edit
//! flips who is masqueraded, live; (d) 200 swaps between two configs that
//! treat the destination alike drop no connection; (e) an invalid edit
//! changes nothing on the data path.

use std::thread;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::configs::{
    FLIPPED, FLIPPED_RULES, INVALID_EDITS, VPN_EXAMPLE_RULES, VPN_PLUS_UNRELATED,
    VPN_PLUS_UNRELATED_RULES, vpn_example,
};
use crate::kernel::Kernel;
use crate::sandbox::{POD_IP, Peer, Sandbox, wait_fast};
use crate::support::text::assert_text_eq;

/// How long a live edit may take to show on the data path. The agent reacts
/// to kubelet's swap within milliseconds; the margin is for a loaded machine
/// (the configs here resync every 60 s, so a pass cannot be a resync).
const EDIT_DEADLINE: Duration = Duration::from_secs(30);

/// Config swaps in (d).
const SWAPS: usize = 200;
/// Parallel connection loops in (d).
const CLIENT_LOOPS: usize = 4;

per_kernel!(c_configmap_edit_flips_masquerading_live);

/// (c) With the VPN example enforced, kubelet swaps in a config that
/// exempts the VPN range and not the VPC: the same agent, without a
/// restart, flips both; swapping the example back flips them back.
fn c_configmap_edit_flips_masquerading_live(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example());
    let pid = sandbox.start_agent().pid();
    sandbox.wait_started(
        &sandbox.expected(&VPN_EXAMPLE_RULES),
        "the VPN example's rules",
    );
    sandbox.expect_vpn_example_behaviour("before the edit");

    sandbox.volume().update(FLIPPED);
    let took = sandbox.wait_for_source(Peer::Vpc, Peer::Vpc.node_addr(), EDIT_DEADLINE);
    eprintln!("the edit reached the data path in {took:?}");
    sandbox.expect_timeout(
        Peer::Vpn,
        "after the edit the VPN range keeps the pod's address again: the incident",
    );
    sandbox.expect_source(
        Peer::Internet,
        Peer::Internet.node_addr(),
        "the edit left the internet host masqueraded",
    );
    assert_text_eq(
        "the node's state after the edit",
        &sandbox.state(),
        &sandbox.expected(&FLIPPED_RULES),
    );

    sandbox.volume().update(&vpn_example());
    let took = sandbox.wait_for_source(Peer::Vpc, POD_IP, EDIT_DEADLINE);
    eprintln!("the edit back reached the data path in {took:?}");
    sandbox.expect_vpn_example_behaviour("after the edit back");
    assert_text_eq(
        "the node's state after the edit back",
        &sandbox.state(),
        &sandbox.expected(&VPN_EXAMPLE_RULES),
    );

    let agent = sandbox.agent();
    agent.assert_running();
    assert_eq!(agent.pid(), pid, "the edits were applied by the same agent");
}

per_kernel!(d_two_hundred_config_swaps_fail_no_connection);

/// (d) A client in the pod (four loops) connects back to back to the
/// internet host (masqueraded in both configs) and the VPC (in neither)
/// while kubelet swaps the config 200 times between the VPN example and
/// the example plus an unrelated range. Every swap is applied before
/// the next, and at least one connection completes between swaps. Not
/// one connection may fail or see an unexpected source address: the
/// chain (or, with nftables, the set) is replaced atomically, never
/// emptied on the way.
fn d_two_hundred_config_swaps_fail_no_connection(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example());
    sandbox.start_agent();
    sandbox.wait_started(
        &sandbox.expected(&VPN_EXAMPLE_RULES),
        "the VPN example's rules",
    );
    let peers = [Peer::Internet, Peer::Vpc];
    let expected = |endpoint: &str| match endpoint {
        e if e == Peer::Internet.endpoint() => Peer::Internet.node_addr(),
        e if e == Peer::Vpc.endpoint() => POD_IP,
        other => panic!("the client connected to {other}"),
    };

    let mut client = Client::start(
        &sandbox,
        &peers,
        CLIENT_LOOPS,
        100_000,
        Duration::from_secs(150),
    );
    wait_fast(
        Duration::from_secs(10),
        "the client's first connections",
        || match client.count() {
            n if n >= 10 => Ok(()),
            n => Err(format!("{n} connection(s)")),
        },
    );
    let configs = [vpn_example(), VPN_PLUS_UNRELATED.to_owned()];
    let applied_before = sandbox.agent().count_lines("rules applied");
    let connections_before = client.count();
    let started = Instant::now();
    for swap in 1..=SWAPS {
        let seen = client.count();
        sandbox.volume().update(&configs[swap % 2]);
        let agent = sandbox.agent();
        wait_fast(
            Duration::from_secs(10),
            &format!("swap {swap} to be applied and a connection to complete after it"),
            || {
                agent.assert_running();
                if !client.running() {
                    return Err("the client loop ended".into());
                }
                let applied = agent.count_lines("rules applied") - applied_before;
                let done = client.count() - seen;
                if applied >= swap && done >= 1 {
                    Ok(())
                } else {
                    Err(format!(
                        "{applied} swap(s) applied, {done} connection(s) since the swap"
                    ))
                }
            },
        );
        if swap == 1 {
            assert_text_eq(
                "the node's state after the first swap",
                &sandbox.state(),
                &sandbox.expected(&VPN_PLUS_UNRELATED_RULES),
            );
        }
    }
    let swapping = started.elapsed();
    let during = client.count() - connections_before;
    let results = client.stop();
    let failed: Vec<String> = results
        .iter()
        .filter(|(endpoint, reply)| reply != expected(endpoint))
        .map(|(endpoint, reply)| format!("{endpoint}: {reply}"))
        .collect();
    eprintln!(
        "{SWAPS} swaps in {swapping:?}; {during} connections during them, {} in all, {} failed",
        results.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} of {} connections failed or saw the wrong source; the first: {:#?}",
        failed.len(),
        results.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(
        during >= SWAPS,
        "only {during} connections during {SWAPS} swaps"
    );
    assert_eq!(
        sandbox.agent().count_lines("rules applied") - applied_before,
        SWAPS,
        "every swap applied exactly once"
    );
    assert_text_eq(
        "the node's state after the swaps",
        &sandbox.state(),
        &sandbox.expected(&VPN_EXAMPLE_RULES),
    );
}

per_kernel!(e_invalid_edit_changes_nothing_on_the_data_path);

/// (e) Invalid edits, each of which would change who is masqueraded if
/// any of it were applied: the agent logs the rejection, the rules are
/// not rewritten (iptables: every packet counter intact; nftables:
/// every handle and element intact; no `rules applied` line), and every
/// peer sees what it saw before. A valid edit afterwards still applies.
fn e_invalid_edit_changes_nothing_on_the_data_path(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example());
    sandbox.start_agent();
    sandbox.wait_started(
        &sandbox.expected(&VPN_EXAMPLE_RULES),
        "the VPN example's rules",
    );
    sandbox.expect_vpn_example_behaviour("before the invalid edits");

    for (n, (text, error)) in INVALID_EDITS.iter().enumerate() {
        let rejections = sandbox.agent().count_lines("Error syncing configuration");
        let counted = sandbox.state_exact();
        let applied = sandbox.agent().count_lines("rules applied");
        sandbox.volume().update(text);
        let agent = sandbox.agent();
        agent.wait_for_lines("Error syncing configuration", rejections + 1);
        assert!(
            agent.log().contains(error),
            "edit {n}: no {error:?} in the log"
        );
        // A write would follow the rejection within the same cycle, if
        // at all: give it a moment, then nothing may have changed.
        thread::sleep(Duration::from_millis(300));
        agent.assert_running();
        assert_eq!(
            agent.count_lines("rules applied"),
            applied,
            "edit {n}: rules were applied after the rejection"
        );
        assert_text_eq(
            &format!("the node's state after invalid edit {n} (counters or handles included)"),
            &sandbox.state_exact(),
            &counted,
        );
        sandbox.expect_vpn_example_behaviour(&format!("after invalid edit {n}"));
    }

    sandbox.volume().update(FLIPPED);
    sandbox.wait_for_source(Peer::Vpc, Peer::Vpc.node_addr(), EDIT_DEADLINE);
    sandbox.expect_timeout(Peer::Vpn, "the valid edit after the invalid ones applies");
}
