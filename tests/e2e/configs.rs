//! The configs the scenarios apply and the nat tables they must produce.
//!
//! The VPN config is the shipped example itself (`configmap-examples/vpn.yaml`,
//! its `data.config`), so the suite proves what operators are told to apply.
//! Expected `iptables-save` texts are spelled out here from COMPAT §4's rule
//! lines, and expected `nft list table` texts as literals (what the kernel
//! printed for the nftables backend, reviewed: the CIDRs plus link-local in
//! the set, sorted; `fully-random`), never taken from the agent's own
//! constants.

/// What a node enforcing one config holds: the CIDRs in config order (the
/// iptables chain's RETURN rules, after link-local's) and the nftables
/// backend's table, as `nft list table ip ip-masq-agent` prints it (tabs as
/// four spaces).
pub struct Enforced {
    pub cidrs: &'static [&'static str],
    pub table: &'static str,
}

/// `configmap-examples/vpn.yaml`, as shipped.
const VPN_EXAMPLE_MANIFEST: &str = include_str!("../../configmap-examples/vpn.yaml");

/// The VPN example enforced: the pods and the VPC exempt.
pub const VPN_EXAMPLE_RULES: Enforced = Enforced {
    cidrs: &["10.40.0.0/14", "10.10.0.0/24"],
    table: "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.10.0.0/24, 10.40.0.0/14,
                 169.254.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
",
};

/// The VPN example's `data.config`: the block under `config: |`, dedented.
pub fn vpn_example() -> String {
    let mut lines = VPN_EXAMPLE_MANIFEST.lines();
    lines
        .by_ref()
        .find(|l| l.trim_end() == "  config: |")
        .expect("configmap-examples/vpn.yaml has a `  config: |` block");
    let block: String = lines
        .take_while(|l| l.starts_with("    ") || l.trim().is_empty())
        .map(|l| format!("{}\n", l.get(4..).unwrap_or("")))
        .collect();
    assert!(
        block.contains("nonMasqueradeCIDRs:") && block.contains("resyncInterval: 60s"),
        "unexpected data.config in configmap-examples/vpn.yaml:\n{block}"
    );
    block
}

/// The VPN example resynced every second instead of every minute, for the
/// scenarios that wait for a resync.
pub fn vpn_example_fast() -> String {
    vpn_example().replace("resyncInterval: 60s", "resyncInterval: 1s")
}

/// Flipped: the VPN range keeps the pod's address (as with the defaults, the
/// original incident) and the VPC sees the node's.
pub const FLIPPED: &str = "nonMasqueradeCIDRs:\n  - 10.40.0.0/14\n  - 10.11.0.0/24\n";
pub const FLIPPED_RULES: Enforced = Enforced {
    cidrs: &["10.40.0.0/14", "10.11.0.0/24"],
    table: "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.11.0.0/24, 10.40.0.0/14,
                 169.254.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
",
};

/// The VPN example plus a range none of the peers is in: swapping between
/// the two must not disturb any connection.
pub const VPN_PLUS_UNRELATED: &str = "nonMasqueradeCIDRs:\n  - 10.40.0.0/14   # pods\n  - 10.10.0.0/24   # VPC\n  - 192.168.100.0/24   # unrelated\nresyncInterval: 60s\n";
pub const VPN_PLUS_UNRELATED_RULES: Enforced = Enforced {
    cidrs: &["10.40.0.0/14", "10.10.0.0/24", "192.168.100.0/24"],
    table: "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.10.0.0/24, 10.40.0.0/14,
                 169.254.0.0/16, 192.168.100.0/24 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
",
};

/// Invalid edits, each of which would change the data path if any part of
/// it were applied: with the VPN range listed, the VPN peer would lose
/// masquerading; with the list emptied, the VPC would gain it.
pub const INVALID_EDITS: &[(&str, &str)] = &[
    (
        "nonMasqueradeCIDRs:\n  - 10.40.0.0/14\n  - 10.10.0.0/24\n  - 10.11.0.0/24\n  - 10.11.0.1/24\n",
        r#"CIDR "10.11.0.1/24" is not aligned to a CIDR block, ip: "10.11.0.1" network: "10.11.0.0/24""#,
    ),
    (
        "nonMasqueradeCIDRs: []\ncidrLimit: \"64\"\n",
        "Error syncing configuration",
    ),
    (
        "nonMasqueradeCIDRs: [10.40.0.0/14, 10.11.0.0/24\n",
        "Error syncing configuration",
    ),
];

/// `iptables-save -t nat` (normalised) of a node whose agent enforces
/// exactly `cidrs`, with link-local exempt and the default flags.
pub fn nat_for(cidrs: &[&str]) -> String {
    let mut text = String::from(
        "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic \
  to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN
",
    );
    for cidr in cidrs {
        text.push_str(&format!(
            "-A IP-MASQ-AGENT -d {cidr} -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN\n"
        ));
    }
    text.push_str("-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully\nCOMMIT\n");
    text
}

/// The nat table of a node nobody wrote to (both backends list the
/// built-in chains).
pub const EMPTY_NAT: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";
