//! What is ours but no longer in use, and what someone else hooked onto
//! ours: our chain in the iptables variant the agent does not use (a node
//! that switched between iptables-nft and iptables-legacy), a chain someone
//! added inside our nftables table, and `cleanup` facing a rule of someone
//! else's that still jumps to our chain.

use super::nft::{DEFAULT_TABLE, NFT, our_table};
use super::{COMPAT_EXAMPLE_CONFIG, DEFAULT_RULES, EMPTY_NAT, assert_nat};
use crate::support::Family::V4;
use crate::support::agent::subcommand;
use crate::support::process::{describe, texts};
use crate::support::*;

both_modes! {
    /// The node used the other variant with another config; now it uses
    /// this one: the first sync removes our chain and jump from the other
    /// variant (its old exemptions would otherwise keep applying) and says so.
    fn the_other_variants_chain_is_removed(mode) {
        let ns = Netns::new();
        let before = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        sync_ok(&ns, mode.other(), &before, &[]);
        assert_ne!(save(&ns, mode.other(), V4), EMPTY_NAT, "precondition: the other variant holds our chain");

        let log = sync_ok(&ns, mode, &ConfigVolume::empty(), &[]);
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
        assert_nat(&ns, mode.other(), V4, EMPTY_NAT);
        let other = mode.other().flag();
        for line in [
            format!("iptables ({other}) is not in use here; {other} ipv4: removed jump to IP-MASQ-AGENT"),
            format!("iptables ({other}) is not in use here; {other} ipv4: removed chain IP-MASQ-AGENT"),
        ] {
            assert!(log.contains(&line), "no {line:?} in\n{log}");
        }
        // Nothing left to say on the next run.
        let log = sync_ok(&ns, mode, &ConfigVolume::empty(), &[]);
        assert!(!log.contains("is not in use here"), "{log}");
    }
}

both_modes! {
    /// A rule we do not own jumps to our chain: `cleanup` removes our jump,
    /// keeps the chain (removing it would break that rule), says which rule
    /// keeps it, and exits non-zero: the node is not clean.
    fn cleanup_that_must_keep_our_chain_fails_and_says_why(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &[]);
        ipt(&ns, mode, V4, "-t nat -A POSTROUTING -s 198.51.100.0/24 -j IP-MASQ-AGENT");

        let out = subcommand(&ns, mode, &volume, &[], "cleanup");
        let (stdout, stderr) = texts(&out);
        assert!(!out.status.success(), "{}", describe("cleanup", &out));
        assert!(stdout.contains(&format!("{mode} ipv4: removed jump to IP-MASQ-AGENT")), "{stdout}");
        let kept = format!(
            "cleanup incomplete: {mode} ipv4: kept chain IP-MASQ-AGENT: still entered by 1 rule(s) we do not own, \
in nat POSTROUTING: [-s 198.51.100.0/24 -j IP-MASQ-AGENT]"
        );
        assert!(stderr.contains(&kept), "no {kept:?} in\n{stderr}");
        let save = save(&ns, mode, V4);
        assert!(save.contains(":IP-MASQ-AGENT - [0:0]"), "{save}");
        assert!(!save.contains("ip-masq-agent: ensure nat POSTROUTING"), "{save}");
    }
}

/// A chain someone added to our nftables table, entered from our base
/// chain: the next sync removes both and names the chain.
#[test]
fn a_foreign_chain_in_our_nftables_table_is_removed() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    ns.run(&["nft", "add chain ip ip-masq-agent sneaky"]);
    ns.run(&[
        "nft",
        "add rule ip ip-masq-agent sneaky ip daddr 198.51.100.0/24 counter return",
    ]);
    ns.run(&[
        "nft",
        "insert rule ip ip-masq-agent postrouting jump sneaky",
    ]);

    let log = sync_ok(&ns, Mode::Nft, &volume, &[NFT]);
    assert!(
        log.contains("chain sneaky in our table is not ours: removed"),
        "{log}"
    );
    assert_text_eq(
        "our table after a sync",
        &our_table(&ns, V4).unwrap_or_default(),
        DEFAULT_TABLE,
    );
}
