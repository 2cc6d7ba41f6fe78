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
