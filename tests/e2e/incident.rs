//! The incident and its fix: (a) without the agent a pod cannot talk to the
//! VPN peer, because the peer gets the pod's address and has no route back;
//! (b) with the shipped VPN example the VPN peer sees the node's address and
//! answers, while the VPC, which routes pods back, still sees the pod.

use crate::configs::{VPN_EXAMPLE_RULES, vpn_example};
use crate::kernel::Kernel;
use crate::sandbox::{POD_IP, PORT, Peer, Sandbox};
use crate::support::text::assert_text_eq;

/// Counts, in `ns` (a peer), the TCP SYNs to our port that arrive from the
/// pod's own address, before any routing decision (nft, hook prerouting at
/// raw priority). The peer's instrumentation is nft for every backend: it is
/// not under test, and it lives in a namespace the agent never touches.
fn count_syns_from_pod(sandbox: &Sandbox, peer: Peer) -> impl Fn() -> u64 + '_ {
    let ns = sandbox.peer_ns(peer);
    ns.run(&["nft", "add", "table", "ip", "e2e"]);
    ns.run(&[
        "nft",
        "add",
        "chain",
        "ip",
        "e2e",
        "syns",
        "{ type filter hook prerouting priority -300; }",
    ]);
    let port = PORT.to_string();
    ns.run(&[
        "nft",
        "add",
        "rule",
        "ip",
        "e2e",
        "syns",
        "ip",
        "saddr",
        POD_IP,
        "tcp",
        "dport",
        &port,
        "tcp",
        "flags",
        "&",
        "(syn|ack)",
        "==",
        "syn",
        "counter",
    ]);
    move || {
        let listing = ns.run(&["nft", "list", "chain", "ip", "e2e", "syns"]);
        listing
            .split_once("counter packets ")
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no counter in:\n{listing}"))
    }
}

per_kernel!(a_without_agent_vpn_peer_times_out_as_in_the_incident);

/// (a) No agent: the node forwards the pod's packets unchanged. The VPC
/// answers (it routes the pod range back); the VPN peer receives the
/// SYN from the pod's address, has no route to answer it, and the
/// connection times out: the original incident.
fn a_without_agent_vpn_peer_times_out_as_in_the_incident(kernel: Kernel) {
    let sandbox = Sandbox::new(kernel, &vpn_example());
    for kernel in Kernel::ALL {
        assert_text_eq(
            &format!("the node's {kernel} state with no agent"),
            &sandbox.state_of(kernel),
            kernel.empty(),
        );
    }

    sandbox.expect_source(
        Peer::Vpc,
        POD_IP,
        "no agent: the VPC sees the pod and answers it",
    );

    let syns = count_syns_from_pod(&sandbox, Peer::Vpn);
    assert_eq!(syns(), 0);
    sandbox.expect_timeout(
        Peer::Vpn,
        "no agent: the VPN peer cannot answer a pod address",
    );
    let seen = syns();
    assert!(
        seen >= 1,
        "the VPN peer never received a SYN from {POD_IP}: the timeout has another cause"
    );
    let route = sandbox
        .peer_ns(Peer::Vpn)
        .exec(&["ip", "route", "get", POD_IP]);
    assert!(
        !route.status.success(),
        "the VPN peer must have no route back to the pod, but has: {}",
        String::from_utf8_lossy(&route.stdout)
    );
    sandbox.expect_timeout(
        Peer::Internet,
        "no agent: the internet host cannot answer a pod address either",
    );
}

per_kernel!(b_vpn_example_masquerades_the_vpn_but_not_the_vpc);

/// (b) The agent enforcing the shipped VPN example: the VPN peer and the
/// internet host see the node's address and answer; the VPC keeps
/// seeing the pod's.
fn b_vpn_example_masquerades_the_vpn_but_not_the_vpc(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example());
    sandbox.start_agent();
    sandbox.wait_started(
        &sandbox.expected(&VPN_EXAMPLE_RULES),
        "the VPN example's rules",
    );
    sandbox.expect_vpn_example_behaviour("with the VPN example");
    sandbox.agent().assert_running();
    let syns = count_syns_from_pod(&sandbox, Peer::Vpn);
    sandbox.expect_source(Peer::Vpn, Peer::Vpn.node_addr(), "still masqueraded");
    assert_eq!(
        syns(),
        0,
        "a SYN reached the VPN peer with the pod's address"
    );
}
