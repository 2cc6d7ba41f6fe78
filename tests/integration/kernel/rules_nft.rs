//! The scenarios of `rules.rs` under the native nftables backend
//! (`--backend=nftables`): one `sync` in an empty namespace writes exactly
//! the expected table for each config and flag combination, and nothing in
//! the nat table of either iptables variant.
//!
//! The expected tables are literals of what `nft list table` printed (tabs
//! shown as four spaces), reviewed against the semantics of `rules.rs`'s
//! iptables chains: link-local is in the set unless `masqLinkLocal`, the
//! elements are aggregated, deduplicated and sorted (nft's order, not the
//! config's), `fully-random` only with `--random-fully`, `--to-ports`
//! splits tcp, udp and sctp between the ranges by their sizes, and
//! `--masq-chain` has no effect on the table. Tests are named
//! `kernel::rules_nft::<scenario>::nftables`.

use super::{COMPAT_EXAMPLE_CONFIG, EMPTY_NAT, assert_nat};
use crate::support::Family::{V4, V6};
use crate::support::process::describe;
use crate::support::*;

/// Declares `mod NAME { fn body() BODY; #[test] fn nftables() }`; the test
/// first checks root and tools (skip or, under CI, fail).
macro_rules! nftables_backend {
    ($(#[doc = $doc:literal])* fn $name:ident() $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body() $body

            #[test]
            fn nftables() {
                if crate::support::require_root_and_tools() {
                    body();
                }
            }
        }
    };
}

fn fam(family: Family) -> &'static str {
    match family {
        V4 => "ip",
        V6 => "ip6",
    }
}

/// `ip-masq-agent --config VOLUME --backend=nftables FLAGS... sync` in
/// `ns`, which must succeed; returns its log. No `--iptables-mode`: the
/// nftables backend has no use for it.
fn sync_nftables(ns: &Netns, volume: &ConfigVolume, flags: &[&str]) -> String {
    let config = volume.path();
    let mut args = vec![
        "--config",
        config.to_str().expect("config path is UTF-8"),
        "--backend=nftables",
    ];
    args.extend_from_slice(flags);
    args.push("sync");
    let out = oneshot(ns, &args);
    assert!(
        out.status.success(),
        "{}",
        describe(
            &format!("sync --backend=nftables {}", flags.join(" ")),
            &out
        )
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `nft [-a] list table FAMILY ip-masq-agent`, tabs as four spaces, or
/// None when the table does not exist.
fn table(ns: &Netns, family: Family, handles: bool) -> Option<String> {
    let mut args = vec!["nft"];
    if handles {
        args.push("-a");
    }
    args.extend(["list", "table", fam(family), "ip-masq-agent"]);
    let out = ns.exec(&args);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).replace('\t', "    "))
}

/// Our `family` table in `ns` equals `expected`.
fn assert_table(ns: &Netns, family: Family, expected: &str) {
    assert_text_eq(
        &format!(
            "nft list table {} ip-masq-agent in {}",
            fam(family),
            ns.name()
        ),
        &table(ns, family, false).unwrap_or_else(|| "(no table)\n".to_owned()),
        expected,
    );
}

/// The tables in `ns` are exactly `expected` (`nft list tables`): no ip6
/// table without `--enable-ipv6`, none named after `--masq-chain`.
fn assert_tables(ns: &Netns, expected: &str) {
    assert_text_eq(
        &format!("nft list tables in {}", ns.name()),
        &ns.run(&["nft", "list", "tables"]),
        expected,
    );
}

/// Nothing in the nat table of either iptables variant, in either family.
fn assert_iptables_untouched(ns: &Netns) {
    for mode in [Mode::Nft, Mode::Legacy] {
        for family in [V4, V6] {
            assert_nat(ns, mode, family, EMPTY_NAT);
        }
    }
}

/// `rules.rs`'s `DEFAULT_RULES` as a table: link-local and the RFC 1918
/// ranges in the set, sorted.
const DEFAULT_TABLE: &str = "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 172.16.0.0/12, 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
";

const ONLY_V4: &str = "table ip ip-masq-agent\n";

nftables_backend! {
    /// No config file: the RFC 1918 defaults plus the link-local range. A
    /// second sync finds the table matching and rewrites nothing (every
    /// handle the same).
    fn defaults_without_config_file() {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_nftables(&ns, &volume, &[]);
        assert_table(&ns, V4, DEFAULT_TABLE);
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
        let before = table(&ns, V4, true);
        let log = sync_nftables(&ns, &volume, &[]);
        assert!(log.contains("rules unchanged"), "{log}");
        assert_eq!(table(&ns, V4, true), before, "the second sync rewrote the table");
    }
}

nftables_backend! {
    /// The COMPAT §4 example (`masqLinkLocal: true`): only the two listed
    /// ranges in the set, link-local masqueraded.
    fn compat_example_config() {
        let ns = Netns::new();
        let volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        sync_nftables(&ns, &volume, &[]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
");
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
    }
}

nftables_backend! {
    /// `masqLinkLocal: false` with a custom list (a duplicate included): the
    /// set holds link-local and each range once, sorted; order and
    /// duplicates, which the iptables chain keeps, mean nothing in a set.
    fn custom_list_with_link_local_and_a_duplicate() {
        let ns = Netns::new();
        let volume = ConfigVolume::with(
            "nonMasqueradeCIDRs:\n  - 100.64.0.0/10\n  - 10.0.0.0/8\n  - 100.64.0.0/10\nmasqLinkLocal: false\n",
        );
        sync_nftables(&ns, &volume, &[]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 100.64.0.0/10,
                 169.254.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
");
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
    }
}

nftables_backend! {
    /// `--enable-ipv6` with a mixed list: one table per family, each set
    /// with its own CIDRs and its own link-local range (fe80::/10 for IPv6).
    fn ipv6_mixed_list_splits_by_family() {
        let ns = Netns::new();
        let volume = ConfigVolume::with(
            "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - fd00::/8\n  - 192.168.0.0/16\n  - 2001:db8::/32\n",
        );
        sync_nftables(&ns, &volume, &["--enable-ipv6"]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
");
        assert_table(&ns, V6, "table ip6 ip-masq-agent {
    set no-masquerade {
        type ipv6_addr
        flags interval
        elements = { 2001:db8::/32,
                 fd00::/8,
                 fe80::/10 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip6 daddr @no-masquerade return
        masquerade fully-random
    }
}
");
        assert_tables(&ns, "table ip ip-masq-agent\ntable ip6 ip-masq-agent\n");
        assert_iptables_untouched(&ns);
    }
}

nftables_backend! {
    /// `--to-ports`: tcp, udp and sctp are split between the two ranges in
    /// proportion to their sizes (28 976 and 32 768 of 61 744 ports, the
    /// iptables chain's probability 0.46929256292), each share in a chain of
    /// its own; every other protocol falls through to the plain catch-all.
    fn to_ports_without_config() {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_nftables(&ns, &volume, &["--to-ports=1024-29999,32768-65535"]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 172.16.0.0/12, 192.168.0.0/16 }
    }

    chain share-0 {
        meta l4proto { tcp, udp, sctp } masquerade to :1024-29999 fully-random
    }

    chain share-1 {
        meta l4proto { tcp, udp, sctp } masquerade to :32768-65535 fully-random
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        meta l4proto { tcp, udp, sctp } numgen random mod 61744 vmap { 0-28975 : jump share-0, 28976-61743 : jump share-1 }
        masquerade fully-random
    }
}
");
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
    }
}

nftables_backend! {
    /// GKE's flags: `--masq-chain` names an iptables chain and changes
    /// nothing in the table (its name stays `ip-masq-agent`);
    /// `--random-fully=false` drops `fully-random`.
    fn masq_chain_and_random_fully_false() {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_nftables(&ns, &volume, &["--masq-chain=IP-MASQ", "--random-fully=false"]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 172.16.0.0/12, 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade
    }
}
");
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
    }
}

nftables_backend! {
    /// `--nomasq-all-reserved-ranges`: the 11 reserved ranges and
    /// link-local, 12 elements, sorted (none adjacent, so none merged).
    fn nomasq_all_reserved_ranges() {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_nftables(&ns, &volume, &["--nomasq-all-reserved-ranges"]);
        assert_table(&ns, V4, "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 100.64.0.0/10,
                 169.254.0.0/16, 172.16.0.0/12,
                 192.0.0.0/24, 192.0.2.0/24,
                 192.88.99.0/24, 192.168.0.0/16,
                 198.18.0.0/15, 198.51.100.0/24,
                 203.0.113.0/24, 240.0.0.0/4 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
");
        assert_tables(&ns, ONLY_V4);
        assert_iptables_untouched(&ns);
    }
}

/// `--authoritative`'s table with no config file.
const AUTHORITATIVE_TABLE: &str = "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/8, 169.254.0.0/16,
                 172.16.0.0/12, 192.168.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat - 10; policy accept;
        fib daddr type local return
        meta mark & 0x00004000 == 0x00004000 return
        ct status dnat ip daddr @no-masquerade return
        ip daddr @no-masquerade snat to ip saddr
        masquerade fully-random
    }
}
";

nftables_backend! {
    /// `--authoritative` on a node with the table of before: the base chain
    /// is recreated at `srcnat - 10`; a second sync writes nothing; what
    /// others change in the new rules or the set is drift that a sync
    /// repairs; without the flag again, the table of before comes back.
    fn authoritative_table_is_written_kept_and_repaired() {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_nftables(&ns, &volume, &[]);
        let switched = sync_nftables(&ns, &volume, &["--authoritative"]);
        assert!(switched.contains("chain postrouting is not a nat postrouting chain at srcnat - 10"), "{switched}");
        assert_table(&ns, V4, AUTHORITATIVE_TABLE);
        let again = sync_nftables(&ns, &volume, &["--authoritative", "-v=2"]);
        assert!(again.contains("rules unchanged") && !again.contains("nft -j"), "{again}");
        for (change, reported) in [
            ("flush chain ip ip-masq-agent postrouting", "chain postrouting: 5 missing"),
            ("insert rule ip ip-masq-agent postrouting masquerade", "chain postrouting: 1 unexpected"),
            ("add rule ip ip-masq-agent postrouting ip daddr 10.0.0.0/8 snat to 10.9.9.9", "chain postrouting: 1 unexpected"),
            ("delete element ip ip-masq-agent no-masquerade { 10.0.0.0/8 }", "set no-masquerade"),
        ] {
            ns.run(&["nft", change]);
            let log = sync_nftables(&ns, &volume, &["--authoritative"]);
            assert!(log.contains(reported), "after `{change}`:\n{log}");
            assert_table(&ns, V4, AUTHORITATIVE_TABLE);
        }
        let off = sync_nftables(&ns, &volume, &[]);
        assert!(off.contains("chain postrouting is not a nat postrouting chain at srcnat + 10"), "{off}");
        assert!(table(&ns, V4, false).is_some_and(|t| t.contains("priority srcnat + 10;") && !t.contains("snat to")));
    }
}
