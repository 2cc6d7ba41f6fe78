//! Node state left by others (COMPAT §6): GKE's pre-created chain and jump,
//! the quoted jump of upstream ≤ v2.12.1, and other agents' rules in the
//! same table, which must survive every sync and cleanup byte for byte.

use super::{DEFAULT_RULES, assert_nat, assert_only_v4_of};
use crate::support::Family::V4;
use crate::support::process::describe;
use crate::support::*;

/// A GKE node as it boots: chain IP-MASQ with rules commented `ip-masq: …`
/// and GKE's own jump to it (GKE's configure-helper), before the agent runs
/// with `--masq-chain=IP-MASQ`.
fn prefill_gke(ns: &Netns, mode: Mode) {
    let nat = |line: &str| ipt(ns, mode, V4, &format!("-t nat {line}"));
    nat("-N IP-MASQ");
    nat(
        r#"-A POSTROUTING -m comment --comment "ip-masq: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ"#,
    );
    nat(
        r#"-A IP-MASQ -d 169.254.0.0/16 -m comment --comment "ip-masq: local traffic is not subject to MASQUERADE" -j RETURN"#,
    );
    nat(
        r#"-A IP-MASQ -d 10.0.0.0/8 -m comment --comment "ip-masq: RFC 1918 reserved range is not subject to MASQUERADE" -j RETURN"#,
    );
    nat(
        r#"-A IP-MASQ -m comment --comment "ip-masq: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE"#,
    );
}

/// After our sync on a GKE node: GKE's jump untouched, ours appended once,
/// the chain holding our rules only.
const GKE_AFTER_SYNC: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ - [0:0]
-A POSTROUTING -m comment --comment "ip-masq: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ
-A IP-MASQ -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

/// The contract says "report it" without fixing the words; a report must
/// at least quote the foreign rule (its comment) or call it foreign.
fn reports_gke_jump(log: &str) -> bool {
    log.to_lowercase().contains("foreign") || log.contains("ip-masq: ensure nat POSTROUTING")
}

both_modes! {
    /// `sync` on a GKE node replaces the chain's content, appends our jump
    /// once (also after a second sync), leaves GKE's jump alone, and
    /// reports that jump.
    fn gke_prefilled_chain_is_replaced(mode) {
        let ns = Netns::new();
        prefill_gke(&ns, mode);
        let volume = ConfigVolume::empty();
        let log = sync_ok(&ns, mode, &volume, &["--masq-chain=IP-MASQ"]);
        assert_nat(&ns, mode, V4, GKE_AFTER_SYNC);
        assert_only_v4_of(&ns, mode);
        sync_ok(&ns, mode, &volume, &["--masq-chain=IP-MASQ"]);
        assert_nat(&ns, mode, V4, GKE_AFTER_SYNC);
        assert!(reports_gke_jump(&log), "the sync's log does not report GKE's jump to IP-MASQ:\n{log}");
    }
}

both_modes! {
    /// The daemon on a GKE node writes the same rules and reports GKE's
    /// jump in its log.
    fn gke_foreign_jump_is_reported_by_the_daemon(mode) {
        let ns = Netns::new();
        prefill_gke(&ns, mode);
        let volume = ConfigVolume::empty();
        let mut agent = Agent::start(&ns, mode, &volume, &["--masq-chain=IP-MASQ"]);
        wait_for_text(DEADLINE, "the first sync", || save(&ns, mode, V4), GKE_AFTER_SYNC);
        wait_until(DEADLINE, "a log line reporting GKE's jump (log below)", || agent.log(), |log| reports_gke_jump(log));
        agent.assert_running();
    }
}

both_modes! {
    /// Upstream ≤ v2.12.1 wrote the jump's comment with literal quotes in it
    /// (iptables-save shows them escaped). After a sync exactly one jump is
    /// left, in today's form, and the old chain content is replaced.
    fn quoted_jump_of_old_upstream_is_replaced(mode) {
        let ns = Netns::new();
        let nat = |line: &str| ipt(&ns, mode, V4, &format!("-t nat {line}"));
        nat("-N IP-MASQ-AGENT");
        nat(concat!(
            r#"-A POSTROUTING -m comment --comment '"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL "#,
            r#"destination traffic to our custom IP-MASQ-AGENT chain"' -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT"#,
        ));
        nat(r#"-A IP-MASQ-AGENT -m comment --comment '"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)"' -j MASQUERADE"#);
        // The precondition, as iptables-save shows it on such a node.
        assert_nat(&ns, mode, V4, include_str!("../testdata/quoted-jump.save"));
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
    }
}

/// kube-proxy's and a CNI's rules in nat, as the other agents leave them:
/// a chain with a rule, a jump to it, and a DNAT in PREROUTING.
fn add_other_agents_rules(ns: &Netns, mode: Mode) {
    let nat = |line: &str| ipt(ns, mode, V4, &format!("-t nat {line}"));
    nat("-N KUBE-POSTROUTING");
    nat(
        r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#,
    );
    nat("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
    nat(
        "-A PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.7:8080",
    );
}

/// The nat table holding only `add_other_agents_rules`.
const OTHERS_ONLY: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.7:8080
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
"#;

both_modes! {
    /// Other agents' chains and rules are untouched by sync and by cleanup.
    /// Our jump is appended once and never moved: a rule appended after it
    /// by someone else stays after it across later syncs.
    fn other_rules_in_nat_are_untouched(mode) {
        let ns = Netns::new();
        add_other_agents_rules(&ns, mode);
        assert_nat(&ns, mode, V4, OTHERS_ONLY);
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.7:8080
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
"#);
        // A CNI appends its own masquerade rule after ours.
        ipt(&ns, mode, V4, "-t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE");
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.7:8080
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
"#);
        let out = crate::support::agent::subcommand(&ns, mode, &volume, &[], "cleanup");
        assert!(out.status.success(), "{}", describe("cleanup", &out));
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A PREROUTING -d 203.0.113.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 198.51.100.7:8080
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
"#);
    }
}
