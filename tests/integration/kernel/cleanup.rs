//! `cleanup` removes our jump and chain from all four tables (IPv4, IPv6 ×
//! nft, legacy), whatever `--iptables-mode` and `--enable-ipv6` say, and
//! nothing else; it is safe to run twice and on a node we never touched.

use super::{EMPTY_NAT, assert_nat};
use crate::support::Family::{V4, V6};
use crate::support::agent::subcommand;
use crate::support::iptables::copy_nat;
use crate::support::process::describe;
use crate::support::*;

const BACKENDS: [(Mode, Family); 4] = [
    (Mode::Nft, V4),
    (Mode::Nft, V6),
    (Mode::Legacy, V4),
    (Mode::Legacy, V6),
];

/// Each of the four tables before our agent ran: kube-proxy's chain and jump.
const OTHERS_ONLY: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
COMMIT
"#;

const OUR_JUMP: &str = concat!(
    r#"-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL "#,
    r#"destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT"#,
);

both_modes! {
    /// Both backends populated for both families, then `cleanup` (with this
    /// test's `--iptables-mode`, which must not narrow it): every table is
    /// back to the other agents' rules alone; a second run is a no-op.
    fn cleanup_removes_ours_from_all_four_tables(mode) {
        let ns = Netns::new();
        for (m, family) in BACKENDS {
            let nat = |line: &str| ipt(&ns, m, family, &format!("-t nat {line}"));
            nat("-N KUBE-POSTROUTING");
            nat(r#"-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING"#);
            nat("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN");
        }
        let volume = ConfigVolume::with("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - fd00::/8\n");
        // A sync removes ours from the variant it does not use: legacy
        // gets a copy of what the agent wrote with nft.
        sync_ok(&ns, Mode::Nft, &volume, &["--enable-ipv6"]);
        for family in [V4, V6] {
            copy_nat(&ns, Mode::Nft, Mode::Legacy, family);
        }
        for (m, family) in BACKENDS {
            let text = save(&ns, m, family);
            assert!(
                text.contains(":IP-MASQ-AGENT - [0:0]") && text.contains(OUR_JUMP),
                "precondition: {} holds our chain and jump:\n{text}",
                m.tool(family, "-save")
            );
        }

        for round in 1..=2 {
            let out = subcommand(&ns, mode, &volume, &[], "cleanup");
            assert!(out.status.success(), "{}", describe(&format!("cleanup, run {round}"), &out));
            for (m, family) in BACKENDS {
                assert_nat(&ns, m, family, OTHERS_ONLY);
            }
        }
    }
}

both_modes! {
    /// `cleanup` where nothing was ever written: exit 0, nothing created.
    fn cleanup_on_a_pristine_node(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        let out = subcommand(&ns, mode, &volume, &[], "cleanup");
        assert!(out.status.success(), "{}", describe("cleanup", &out));
        for (m, family) in BACKENDS {
            assert_nat(&ns, m, family, EMPTY_NAT);
        }
    }
}
