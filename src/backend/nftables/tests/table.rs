//! Scripts rendered from a plan, and the plan's set elements.

use super::*;

#[test]
fn render_defaults() {
    assert_eq!(
        Nftables::new().render(&defaults()),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn creation_is_gated_and_without_elements() {
    assert_eq!(
        gated_script(&plan_nft(&defaults())),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\treturn
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn render_ipv6_without_elements() {
    let rs = ruleset(Family::Ipv6, &[]);
    assert_eq!(
        Nftables::new().render(&rs),
        "table ip6 ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv6_addr
\t\tflags interval
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip6 daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
"
    );
}

#[test]
fn render_one_port_interval() {
    let mut rs = ruleset(Family::Ipv4, &["10.0.0.0/8"]);
    rs.to_ports = vec![PortRange {
        first: 1024,
        last: 29999,
    }];
    let text = Nftables::new().render(&rs);
    assert!(
        text.contains(
            "\t\tip daddr @no-masquerade return
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :1024-29999 fully-random
\t\tmasquerade fully-random
"
        ),
        "{text}"
    );
    assert!(!text.contains("share-"), "{text}");
    rs.to_ports = vec![PortRange {
        first: 40000,
        last: 40000,
    }];
    assert!(
        Nftables::new()
            .render(&rs)
            .contains("meta l4proto { tcp, udp, sctp } masquerade to :40000 fully-random\n")
    );
}

#[test]
fn render_two_port_intervals() {
    assert_eq!(
        Nftables::new().render(&two_intervals()),
        "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/8, 192.0.2.1/32 }
\t}
\tchain share-0 {
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :1024-29999
\t}
\tchain share-1 {
\t\tmeta l4proto { tcp, udp, sctp } masquerade to :32768-65535
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip daddr @no-masquerade return
\t\tmeta l4proto { tcp, udp, sctp } numgen random mod 61744 vmap { 0-28975 : jump share-0, 28976-61743 : jump share-1 }
\t\tmasquerade
\t}
}
"
    );
}

#[test]
fn set_elements_are_aggregated() {
    let rs = ruleset(
        Family::Ipv4,
        &[
            "10.0.0.0/9",
            "10.128.0.0/9",
            "10.1.0.0/16",
            "192.168.0.0/16",
            "192.168.0.0/16",
        ],
    );
    assert_eq!(
        plan_nft(&rs).elements,
        nets(&["10.0.0.0/8", "192.168.0.0/16"])
    );
}

#[test]
fn pod_sources_add_a_set_and_a_source_rule_before_the_lookup() {
    let rendered = "table ip ip-masq-agent {
\tset no-masquerade {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.0.0.0/13, 10.8.0.0/16, 10.9.5.128/25, 10.10.0.0/15, 10.12.0.0/14, 10.16.0.0/12, 10.32.0.0/11, 10.64.0.0/10, 10.128.0.0/9, 169.254.0.0/16 }
\t}
\tset pod-sources {
\t\ttype ipv4_addr
\t\tflags interval
\t\telements = { 10.40.0.0/24 }
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat + 10; policy accept;
\t\tfib daddr type local return
\t\tip saddr != @pod-sources return
\t\tip daddr @no-masquerade return
\t\tmasquerade fully-random
\t}
}
";
    assert_eq!(Nftables::new().render(&pod_sources()), rendered);
    // Created gated: the small pod set whole, the large one filled later.
    let gated = gated_script(&plan_nft(&pod_sources()));
    assert!(gated.contains("\tset pod-sources {\n\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements = { 10.40.0.0/24 }\n\t}\n"));
    assert!(gated.contains(
        "\t\treturn\n\t\tfib daddr type local return\n\t\tip saddr != @pod-sources return\n"
    ));
    assert!(!gated.contains("10.0.0.0/13"));
}

#[test]
fn the_ipv6_source_rule() {
    let rule = NftRule::ForeignSourceReturn(Family::Ipv6);
    assert_eq!(rule.text(), "ip6 saddr != @pod-sources return");
    assert_eq!(
        rule.bytecode(),
        "[ payload load 16b @ network header + 8 => reg 1 ] [ lookup reg 1 set pod-sources invert ] [ immediate reg 0 return ]"
    );
    assert_eq!(
        NftRule::ForeignSourceReturn(Family::Ipv4).bytecode(),
        "[ payload load 4b @ network header + 12 => reg 1 ] [ lookup reg 1 set pod-sources invert ] [ immediate reg 0 return ]"
    );
}

#[test]
fn authoritative_runs_before_srcnat_and_binds_exempted_traffic() {
    let rs = Ruleset {
        authoritative: true,
        ..pod_sources()
    };
    let plan = plan_nft(&rs);
    let text = script(&plan);
    assert!(
        text.contains(
            "\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\tfib daddr type local return
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr != @pod-sources return
\t\tct status dnat ip daddr @no-masquerade return
\t\tip daddr @no-masquerade snat to ip saddr
\t\tmasquerade fully-random
\t}
"
        ),
        "{text}"
    );
    // Created gated like any other table: nothing binds before the set is full.
    assert!(gated_script(&plan).contains("policy accept;\n\t\treturn\n\t\tfib daddr"));
    let v6 = plan_nft(&Ruleset {
        authoritative: true,
        ..ruleset(Family::Ipv6, &["fd00::/8"])
    });
    assert!(script(&v6).contains("\t\tip6 daddr @no-masquerade snat to ip6 saddr\n"));
    // Without the flag: the table of before, at srcnat + 10.
    assert!(!script(&plan_nft(&pod_sources())).contains("mark"));
}
