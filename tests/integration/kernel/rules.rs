//! One `sync` in an empty namespace writes exactly the COMPAT §4 rules for
//! each config and flag combination, and nothing anywhere else.

use super::{
    COMPAT_EXAMPLE_CONFIG, COMPAT_EXAMPLE_RULES, DEFAULT_RULES, EMPTY_NAT, assert_nat,
    assert_only_v4_of,
};
use crate::support::Family::{V4, V6};
use crate::support::*;

both_modes! {
    /// No config file: the RFC 1918 defaults plus the link-local range.
    fn defaults_without_config_file(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
        assert_only_v4_of(&ns, mode);
        // Check-then-append: a second sync adds no second jump.
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
    }
}

both_modes! {
    /// The COMPAT §4 example, compared with its iptables-save text verbatim.
    fn compat_example_config(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, COMPAT_EXAMPLE_RULES);
        assert_only_v4_of(&ns, mode);
    }
}

both_modes! {
    /// `masqLinkLocal: false` with a custom list: the link-local RETURN comes
    /// first, then the list in config order, duplicates kept (COMPAT §3).
    fn custom_list_keeps_link_local_first_and_config_order(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with(
            "nonMasqueradeCIDRs:\n  - 100.64.0.0/10\n  - 10.0.0.0/8\n  - 100.64.0.0/10\nmasqLinkLocal: false\n",
        );
        sync_ok(&ns, mode, &volume, &[]);
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 100.64.0.0/10 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 100.64.0.0/10 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#);
        assert_only_v4_of(&ns, mode);
    }
}

both_modes! {
    /// `--enable-ipv6` with a mixed list: each family gets its own CIDRs in
    /// config order, IPv6 after its own link-local range fe80::/10.
    fn ipv6_mixed_list_splits_by_family(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with(
            "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - fd00::/8\n  - 192.168.0.0/16\n  - 2001:db8::/32\n",
        );
        sync_ok(&ns, mode, &volume, &["--enable-ipv6"]);
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#);
        assert_nat(&ns, mode, V6, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d fe80::/10 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d fd00::/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 2001:db8::/32 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#);
        assert_nat(&ns, mode.other(), V4, EMPTY_NAT);
        assert_nat(&ns, mode.other(), V6, EMPTY_NAT);
    }
}

both_modes! {
    /// `--to-ports`: per protocol tcp, udp, sctp a weighted pair, then the
    /// catch-all; iptables-save prints the probability rounded
    /// (0.46929256292, COMPAT §4).
    fn to_ports_without_config(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &["--to-ports=1024-29999,32768-65535"]);
        assert_nat(&ns, mode, V4, include_str!("../testdata/to-ports.save"));
        assert_only_v4_of(&ns, mode);
    }
}

both_modes! {
    /// GKE's flags: another chain name (also in the jump's comment), and
    /// MASQUERADE without `--random-fully`.
    fn masq_chain_and_random_fully_false(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &["--masq-chain=IP-MASQ", "--random-fully=false"]);
        assert_nat(&ns, mode, V4, r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ
-A IP-MASQ -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 172.16.0.0/12 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -d 192.168.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE
COMMIT
"#);
        assert_only_v4_of(&ns, mode);
    }
}

both_modes! {
    /// `--nomasq-all-reserved-ranges`: the 11 reserved ranges, in COMPAT §1's
    /// order, after the link-local range.
    fn nomasq_all_reserved_ranges(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::empty();
        sync_ok(&ns, mode, &volume, &["--nomasq-all-reserved-ranges"]);
        assert_nat(&ns, mode, V4, r#"*nat
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
-A IP-MASQ-AGENT -d 100.64.0.0/10 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.0.0.0/24 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.0.2.0/24 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 192.88.99.0/24 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 198.18.0.0/15 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 198.51.100.0/24 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 203.0.113.0/24 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -d 240.0.0.0/4 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#);
        assert_only_v4_of(&ns, mode);
    }
}

both_modes! {
    /// `--iptables-mode=auto` follows kubelet: its KUBE-IPTABLES-HINT chain
    /// (mangle table) marks the backend the node uses, even when the other
    /// backend holds more rules.
    fn auto_mode_follows_kubelet_hint(mode) {
        let ns = Netns::new();
        ipt(&ns, mode, V4, "-t mangle -N KUBE-IPTABLES-HINT");
        // Decoy rules in the other backend: "more rules" must not win over
        // kubelet's hint.
        for port in ["81", "82", "83"] {
            ipt(&ns, mode.other(), V4, &format!("-t filter -A INPUT -p tcp --dport {port} -j ACCEPT"));
        }
        let volume = ConfigVolume::empty();
        let config = volume.path();
        let out = oneshot(&ns, &["--config", config.to_str().unwrap(), "--iptables-mode=auto", "sync"]);
        assert!(out.status.success(), "{}", crate::support::process::describe("sync --iptables-mode=auto", &out));
        assert_nat(&ns, mode, V4, DEFAULT_RULES);
        assert_nat(&ns, mode.other(), V4, EMPTY_NAT);
    }
}

#[test]
fn auto_mode_defaults_to_nft_on_an_empty_node() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    let config = volume.path();
    let out = oneshot(
        &ns,
        &[
            "--config",
            config.to_str().unwrap(),
            "--iptables-mode=auto",
            "sync",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        crate::support::process::describe("sync --iptables-mode=auto", &out)
    );
    assert_nat(&ns, Mode::Nft, V4, DEFAULT_RULES);
    assert_nat(&ns, Mode::Legacy, V4, EMPTY_NAT);
}

both_modes! {
    /// `--authoritative` on a node holding kube-proxy's rules, both
    /// families, the config and flags of the render test: the jump goes
    /// first (before `KUBE-POSTROUTING`), the chain prints as predicted
    /// (this variant's comment quoting included: no warning, and a second
    /// sync writes nothing), and switching the flag off again rewrites the
    /// chain to upstream's rules and leaves the jump where it is.
    fn authoritative_jump_first_and_rules_as_predicted(mode) {
        if !require_tools(&["nfacct"]) {
            return;
        }
        let ns = Netns::new();
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/testdata");
        crate::support::iptables::add_kube_proxy_nfacct(&ns);
        for (family, file) in [(V4, "kube-proxy-iptables.save"), (V6, "kube-proxy-ip6tables.save")] {
            let path = data.join("foreign").join(file);
            ns.run(&[&mode.tool(family, "-restore"), path.to_str().expect("UTF-8 path")]);
        }
        let config = std::fs::read_to_string(data.join("authoritative/rich.yaml")).expect("rich.yaml");
        let volume = ConfigVolume::with(&config);
        let flags = ["--enable-ipv6", "--to-ports=1024-29999,32768-65535", "--authoritative", "-v=2"];
        let first = sync_ok(&ns, mode, &volume, &flags);
        assert!(!first.contains("differently than predicted"), "{first}");
        for (family, file) in [(V4, "rich-authoritative-v4.save"), (V6, "rich-authoritative-v6.save")] {
            let want = std::fs::read_to_string(data.join("authoritative").join(file)).expect("expected save");
            assert_nat(&ns, mode, family, &want);
        }
        let second = sync_ok(&ns, mode, &volume, &flags);
        assert_eq!(second.matches("rules unchanged").count(), 2, "{second}");
        assert!(!second.contains("rules applied"), "{second}");

        let off = sync_ok(&ns, mode, &volume, &flags[..2]);
        assert_eq!(off.matches("rules applied").count(), 2, "{off}");
        let v4 = save(&ns, mode, V4);
        let postrouting: Vec<&str> = v4.lines().filter(|l| l.starts_with("-A POSTROUTING")).collect();
        assert!(postrouting[0].ends_with("-j IP-MASQ-AGENT"), "{v4}");
        assert!(!v4.contains("-j ACCEPT") && !v4.contains("left to KUBE-POSTROUTING"), "{v4}");
    }
}
