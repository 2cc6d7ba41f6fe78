//! Kernel tests: the real agent writes real rules in a namespace of the
//! test's own, read back with `iptables-save`.
//!
//! Every test body runs once per iptables backend through `both_modes!`, so
//! a failure is named `kernel::<file>::<test>::nft` or `...::legacy`.
//! Expected save texts are literals copied from COMPAT.md §4 (and from the
//! node states of §6), never assembled from the agent's own constants.
//! `nft` and `rules_nft` run the native nftables backend
//! (`--backend=nftables`), read back with `nft list table`; `rules_nft`
//! repeats `rules`'s scenarios as `kernel::rules_nft::<test>::nftables`.

use crate::support::Netns;

/// Declares `mod NAME { fn body(MODE: Mode) BODY; #[test] fn nft(); #[test]
/// fn legacy() }`. Each test first checks root and tools (skip or, under
/// CI, fail).
macro_rules! both_modes {
    ($(#[doc = $doc:literal])* fn $name:ident($mode:ident) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($mode: crate::support::Mode) $body

            #[test]
            fn nft() {
                if crate::support::require_root_and_tools() {
                    body(crate::support::Mode::Nft);
                }
            }

            #[test]
            fn legacy() {
                if crate::support::require_root_and_tools() {
                    body(crate::support::Mode::Legacy);
                }
            }
        }
    };
}

pub(crate) use both_modes;

mod api_source;
mod busy_node;
mod cleanup;
mod config_file;
mod conflicts;
mod daemon;
mod hostile_files;
mod hostile_tools;
mod leftovers;
mod merged;
mod nft;
mod node_state;
mod policy_nft;
mod races;
mod reload;
mod rules;
mod rules_nft;
mod selector;

/// The nat table of a namespace nobody wrote to, as both backends print it
/// (they always list the built-in chains).
pub const EMPTY_NAT: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
"#;

/// Gives `ns` an uplink (a veth with 192.0.2.254/24, a documentation range)
/// and sends one UDP datagram to 192.0.2.1, which leaves through nat
/// POSTROUTING once. Nothing answers, and nothing leaves the namespace: the
/// veth's peer is in the same namespace and has no address.
pub fn send_probe_datagram(ns: &Netns) {
    ns.run(&[
        "ip", "link", "add", "imqa0", "type", "veth", "peer", "name", "imqa1",
    ]);
    ns.run(&["ip", "addr", "add", "192.0.2.254/24", "dev", "imqa0"]);
    ns.run(&["ip", "link", "set", "imqa0", "up"]);
    ns.run(&["ip", "link", "set", "imqa1", "up"]);
    ns.run(&["bash", "-c", "echo probe > /dev/udp/192.0.2.1/9"]);
}

/// COMPAT §4 with no config file and default flags: link-local and the
/// RFC 1918 ranges return, everything else is masqueraded.
pub const DEFAULT_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

/// The COMPAT §4 example: `nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]`,
/// `masqLinkLocal: true`, default flags.
pub const COMPAT_EXAMPLE_CONFIG: &str =
    "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\nmasqLinkLocal: true\n";

/// What `iptables-save -t nat` shows after `COMPAT_EXAMPLE_CONFIG` is synced
/// in an empty namespace (COMPAT §4, verbatim).
pub const COMPAT_EXAMPLE_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

/// Asserts the nat table of `mode`/`family` in `ns` equals `expected`.
pub fn assert_nat(
    ns: &Netns,
    mode: crate::support::Mode,
    family: crate::support::Family,
    expected: &str,
) {
    let what = format!("{} -t nat in {}", mode.tool(family, "-save"), ns.name());
    crate::support::assert_text_eq(&what, &crate::support::save(ns, mode, family), expected);
}

/// Asserts that nothing was written where the agent had no business: the
/// other backend (both families) and, unless IPv6 is enabled, this backend's
/// IPv6 table.
pub fn assert_only_v4_of(ns: &Netns, mode: crate::support::Mode) {
    use crate::support::Family::{V4, V6};
    assert_nat(ns, mode, V6, EMPTY_NAT);
    assert_nat(ns, mode.other(), V4, EMPTY_NAT);
    assert_nat(ns, mode.other(), V6, EMPTY_NAT);
}
