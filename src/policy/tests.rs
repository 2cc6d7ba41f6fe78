//! The decision's worked examples, its text and JSON forms, and property
//! tests: on random configs (nested and overlapping CIDRs of every length,
//! both families, ties, link-local on and off) and random packets, the
//! compiled iptables list read first-match and the nftables sets both give
//! exactly [`decide`]'s verdict, and `decide` agrees with an independent
//! statement of the rules. Randomness is a fixed-seed PRNG, so a failure
//! reproduces.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::json;

use super::*;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn config(non_masq: &[&str], masq: &[&str], pods: &[&str]) -> Config {
    let mut c = Config::defaults(false);
    c.non_masquerade_cidrs = nets(non_masq);
    c.masquerade_cidrs = nets(masq);
    c.pod_cidrs = nets(pods);
    c
}

fn line(c: &Config, source: Option<&str>, dst: &str) -> String {
    decide(c, source.map(ip), ip(dst)).unwrap().to_string()
}

#[test]
fn the_worked_example() {
    let c = config(&["10.0.0.0/8", "10.9.5.128/25"], &["10.9.0.0/16"], &[]);
    assert_eq!(
        line(&c, None, "10.9.5.9"),
        "10.9.5.9 masquerade masqueradeCIDRs 10.9.0.0/16, longer than nonMasqueradeCIDRs 10.0.0.0/8"
    );
    assert_eq!(
        line(&c, None, "10.9.5.200"),
        "10.9.5.200 no-masquerade nonMasqueradeCIDRs 10.9.5.128/25, longer than masqueradeCIDRs 10.9.0.0/16"
    );
    assert_eq!(
        line(&c, None, "10.1.1.1"),
        "10.1.1.1 no-masquerade nonMasqueradeCIDRs 10.0.0.0/8"
    );
    assert_eq!(
        line(&c, None, "8.8.8.8"),
        "8.8.8.8 masquerade default: in no list"
    );
    // The order within and across the lists never matters.
    let reordered = config(&["10.9.5.128/25", "10.0.0.0/8"], &["10.9.0.0/16"], &[]);
    for dst in ["10.9.5.9", "10.9.5.200", "10.1.1.1"] {
        assert_eq!(line(&c, None, dst), line(&reordered, None, dst));
    }
    // Flat rules for it: 10.0.0.0/8 minus 10.9.0.0/16, plus the /25, plus link-local.
    let compiled = compile(&c, Family::Ipv4);
    assert_eq!(
        compiled.iptables_returns,
        nets(&[
            "10.0.0.0/13",
            "10.8.0.0/16",
            "10.9.5.128/25",
            "10.10.0.0/15",
            "10.12.0.0/14",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9",
            "169.254.0.0/16",
        ])
    );
    assert_eq!(compiled.nft_no_masquerade, compiled.iptables_returns);
    assert_eq!(compiled.pod_sources, None);
}

#[test]
fn link_local_is_an_entry_of_its_own_length() {
    let c = config(&["10.0.0.0/8"], &["169.254.169.254/32"], &[]);
    assert_eq!(
        line(&c, None, "169.254.1.1"),
        "169.254.1.1 no-masquerade link-local 169.254.0.0/16 (masqLinkLocal is false)"
    );
    assert_eq!(
        line(&c, None, "169.254.169.254"),
        "169.254.169.254 masquerade masqueradeCIDRs 169.254.169.254/32, longer than link-local 169.254.0.0/16"
    );
    assert_eq!(
        line(&c, None, "fe80::1"),
        "fe80::1 no-masquerade link-local fe80::/10 (masqLinkLocalIPv6 is false)"
    );
    // Equal to the link-local entry: no masquerade wins the tie.
    let tie = config(&[], &["169.254.0.0/16"], &[]);
    assert_eq!(
        line(&tie, None, "169.254.3.4"),
        "169.254.3.4 no-masquerade link-local 169.254.0.0/16 (masqLinkLocal is false), equal to masqueradeCIDRs 169.254.0.0/16 (no-masquerade wins a tie)"
    );
    let mut on = tie.clone();
    on.masq_link_local = true;
    assert_eq!(
        line(&on, None, "169.254.3.4"),
        "169.254.3.4 masquerade masqueradeCIDRs 169.254.0.0/16"
    );
    on.masquerade_cidrs.clear();
    assert_eq!(
        line(&on, None, "169.254.3.4"),
        "169.254.3.4 masquerade default: in no list"
    );
    // The user's own entry is named before the implicit one.
    let listed = config(&["169.254.0.0/16"], &[], &[]);
    assert_eq!(
        line(&listed, None, "169.254.3.4"),
        "169.254.3.4 no-masquerade nonMasqueradeCIDRs 169.254.0.0/16"
    );
}

#[test]
fn pod_sources_and_pod_destinations() {
    let c = config(
        &["192.168.0.0/16"],
        &["10.4.7.0/24", "10.8.0.0/16"],
        &["10.4.0.0/14", "10.8.0.0/16"],
    );
    // From a pod: the destination decides.
    assert_eq!(
        line(&c, Some("10.4.0.5"), "10.5.1.1"),
        "10.5.1.1 no-masquerade podCIDRs 10.4.0.0/14"
    );
    assert_eq!(
        line(&c, Some("10.4.0.5"), "10.4.7.1"),
        "10.4.7.1 masquerade masqueradeCIDRs 10.4.7.0/24, longer than podCIDRs 10.4.0.0/14"
    );
    assert_eq!(
        line(&c, Some("10.4.0.5"), "10.8.1.1"),
        "10.8.1.1 no-masquerade podCIDRs 10.8.0.0/16, equal to masqueradeCIDRs 10.8.0.0/16 (no-masquerade wins a tie)"
    );
    assert_eq!(
        line(&c, Some("10.4.0.5"), "1.1.1.1"),
        "1.1.1.1 masquerade default: in no list"
    );
    // Not from a pod: never masqueraded by us.
    assert_eq!(
        line(&c, Some("203.0.113.9"), "1.1.1.1"),
        "1.1.1.1 no-masquerade pod source rule: the source is outside podCIDRs"
    );
    // Without a source, the destination alone (as for a pod source).
    assert_eq!(
        line(&c, None, "1.1.1.1"),
        "1.1.1.1 masquerade default: in no list"
    );
    // A family without podCIDRs has no source condition.
    let mut v6 = c.clone();
    v6.non_masquerade_cidrs = nets(&["fd00::/8"]);
    assert_eq!(
        line(&v6, Some("2001:db8::1"), "2001:db8:1::1"),
        "2001:db8:1::1 masquerade default: in no list"
    );
    let e = decide(&c, Some(ip("10.4.0.5")), ip("2001:db8::1")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "source 10.4.0.5 is ipv4 but destination 2001:db8::1 is ipv6; a packet has one address family"
    );

    let compiled = compile(&c, Family::Ipv4);
    let pods = compiled.pod_sources.unwrap();
    assert_eq!(pods.nft_set, nets(&["10.4.0.0/14", "10.8.0.0/16"]));
    assert_eq!(
        pods.iptables,
        SourceReturns::In(nets(&[
            "0.0.0.0/5",
            "8.0.0.0/7",
            "10.0.0.0/14",
            "10.9.0.0/16",
            "10.10.0.0/15",
            "10.12.0.0/14",
            "10.16.0.0/12",
            "10.32.0.0/11",
            "10.64.0.0/10",
            "10.128.0.0/9",
            "11.0.0.0/8",
            "12.0.0.0/6",
            "16.0.0.0/4",
            "32.0.0.0/3",
            "64.0.0.0/2",
            "128.0.0.0/1",
        ]))
    );
    let one = config(&[], &[], &["10.4.0.0/15", "10.6.0.0/15", "10.4.0.0/16"]);
    let pods = compile(&one, Family::Ipv4).pod_sources.unwrap();
    assert_eq!(
        pods.iptables,
        SourceReturns::NotIn("10.4.0.0/14".parse().unwrap())
    );
    assert_eq!(pods.nft_set, nets(&["10.4.0.0/14"]));
    assert_eq!(compile(&one, Family::Ipv6).pod_sources, None);
}

#[test]
fn json_carries_the_same_facts() {
    let c = config(&["10.0.0.0/8"], &["10.9.0.0/16"], &["10.4.0.0/14"]);
    let d = decide(&c, Some(ip("10.4.0.1")), ip("10.9.5.9")).unwrap();
    assert_eq!(
        d.to_json(),
        json!({
            "address": "10.9.5.9",
            "source": "10.4.0.1",
            "verdict": "masquerade",
            "rule": "cidr",
            "decided": {"list": "masqueradeCIDRs", "cidr": "10.9.0.0/16"},
            "over": {"list": "nonMasqueradeCIDRs", "cidr": "10.0.0.0/8"},
            "why": "masqueradeCIDRs 10.9.0.0/16, longer than nonMasqueradeCIDRs 10.0.0.0/8",
        })
    );
    let d = decide(&c, Some(ip("192.0.2.1")), ip("10.9.5.9")).unwrap();
    assert_eq!(
        d.to_json(),
        json!({
            "address": "10.9.5.9",
            "source": "192.0.2.1",
            "verdict": "no-masquerade",
            "rule": "pod-source",
            "why": "pod source rule: the source is outside podCIDRs",
        })
    );
    let d = decide(&c, None, ip("8.8.8.8")).unwrap();
    assert_eq!(
        d.to_json(),
        json!({"address": "8.8.8.8", "verdict": "masquerade", "rule": "default", "why": "default: in no list"})
    );
}

#[test]
fn without_the_new_keys_the_rules_are_upstreams() {
    let mut c = config(
        &[
            "192.168.0.0/16",
            "10.0.0.0/8",
            "fd00::/8",
            "10.1.0.0/16",
            "10.0.0.0/8",
        ],
        &[],
        &[],
    );
    let v4 = compile(&c, Family::Ipv4);
    assert_eq!(
        v4.iptables_returns,
        nets(&[
            "169.254.0.0/16",
            "192.168.0.0/16",
            "10.0.0.0/8",
            "10.1.0.0/16",
            "10.0.0.0/8"
        ])
    );
    assert_eq!(
        v4.nft_no_masquerade,
        nets(&["10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"])
    );
    let v6 = compile(&c, Family::Ipv6);
    assert_eq!(v6.iptables_returns, nets(&["fe80::/10", "fd00::/8"]));
    assert_eq!(v6.nft_no_masquerade, nets(&["fd00::/8", "fe80::/10"]));
    c.masq_link_local = true;
    c.non_masquerade_cidrs.clear();
    let v4 = compile(&c, Family::Ipv4);
    assert!(v4.iptables_returns.is_empty());
    assert!(v4.nft_no_masquerade.is_empty());
    // New keys of the other family only: this family keeps upstream's list.
    c.masquerade_cidrs = nets(&["fd00:1::/32"]);
    c.non_masquerade_cidrs = nets(&["10.0.0.0/8", "10.0.0.0/8"]);
    assert_eq!(
        compile(&c, Family::Ipv4).iptables_returns,
        nets(&["10.0.0.0/8", "10.0.0.0/8"])
    );
}

#[test]
fn whole_address_space_entries() {
    let c = config(
        &["0.0.0.0/0", "::/0"],
        &["10.0.0.0/8", "2001:db8::/32"],
        &["::/0"],
    );
    let v4 = compile(&c, Family::Ipv4);
    assert_eq!(
        v4.nft_no_masquerade,
        nets(&[
            "0.0.0.0/5",
            "8.0.0.0/7",
            "11.0.0.0/8",
            "12.0.0.0/6",
            "16.0.0.0/4",
            "32.0.0.0/3",
            "64.0.0.0/2",
            "128.0.0.0/1"
        ])
    );
    let v6 = compile(&c, Family::Ipv6);
    assert_eq!(v6.nft_no_masquerade.len(), 32);
    assert_eq!(
        v6.pod_sources.unwrap().iptables,
        SourceReturns::NotIn("::/0".parse().unwrap())
    );
    let all = config(&["::/0"], &[], &[]);
    assert_eq!(
        compile(&all, Family::Ipv6).nft_no_masquerade,
        nets(&["::/0"])
    );
}

/// splitmix64: small, fixed-seed, good enough to spread test cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn wide(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

fn addr(family: Family, bits: u128) -> IpAddr {
    match family {
        Family::Ipv4 => IpAddr::V4(u32::try_from(bits & u128::from(u32::MAX)).unwrap().into()),
        Family::Ipv6 => IpAddr::V6(bits.into()),
    }
}

fn width(family: Family) -> u32 {
    match family {
        Family::Ipv4 => 32,
        Family::Ipv6 => 128,
    }
}

/// Anchors that make random entries nest, touch and overlap.
fn anchors(rng: &mut Rng, family: Family) -> Vec<u128> {
    let mut out: Vec<u128> = (0..3).map(|_| rng.wide()).collect();
    out.push(bits_of(family.link_local().network()));
    out.push(0);
    out.iter().map(|a| a & low(width(family))).collect()
}

fn bits_of(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn low(len: u32) -> u128 {
    if len >= 128 {
        u128::MAX
    } else {
        (1 << len) - 1
    }
}

fn random_net(rng: &mut Rng, family: Family, anchors: &[u128]) -> IpNet {
    let w = width(family);
    let anchor = anchors[usize::try_from(rng.below(anchors.len() as u64)).unwrap()];
    // Entries of one anchor share the bits above `spread`, so they nest.
    let spread = u32::try_from(rng.below(u64::from(w) + 1)).unwrap();
    let bits = anchor ^ (rng.wide() & low(spread));
    let prefix = match rng.below(20) {
        0 => 0,
        1 => w,
        _ => (w - spread + u32::try_from(rng.below(u64::from(spread) + 1)).unwrap())
            .saturating_sub(u32::try_from(rng.below(4)).unwrap()),
    };
    IpNet::new(addr(family, bits), u8::try_from(prefix).unwrap())
        .unwrap()
        .trunc()
}

fn random_config(rng: &mut Rng) -> Config {
    let mut c = Config::defaults(false);
    c.non_masquerade_cidrs.clear();
    c.masq_link_local = rng.below(2) == 0;
    c.masq_link_local_ipv6 = rng.below(2) == 0;
    for family in [Family::Ipv4, Family::Ipv6] {
        let a = anchors(rng, family);
        for _ in 0..rng.below(9) {
            c.non_masquerade_cidrs.push(random_net(rng, family, &a));
        }
        for _ in 0..rng.below(7) {
            c.masquerade_cidrs.push(random_net(rng, family, &a));
        }
        if rng.below(2) == 0 {
            for _ in 0..rng.below(4) {
                c.pod_cidrs.push(random_net(rng, family, &a));
            }
        }
    }
    c
}

/// Addresses worth asking about: every entry's edges and their neighbours,
/// and random ones near the anchors.
fn probes(rng: &mut Rng, c: &Config, family: Family) -> Vec<IpAddr> {
    let top = low(width(family));
    let mut out = Vec::new();
    for e in entries(c, family)
        .iter()
        .map(|e| e.cidr)
        .chain(pod_sources(c, family))
    {
        let start = bits_of(e.network());
        let end = bits_of(e.broadcast());
        for b in [
            start,
            end,
            start.wrapping_sub(1) & top,
            end.wrapping_add(1) & top,
        ] {
            out.push(addr(family, b));
        }
    }
    let a = anchors(rng, family);
    for _ in 0..64 {
        let net = random_net(rng, family, &a);
        let host = rng.wide() & low(width(family) - u32::from(net.prefix_len()));
        out.push(addr(family, bits_of(net.network()) | host));
    }
    out
}

/// The iptables chain as the kernel reads it: the source rules, then the
/// RETURN rules first match, then the catch-all MASQUERADE.
fn iptables_verdict(compiled: &Compiled, source: Option<IpAddr>, dst: IpAddr) -> Verdict {
    if let (Some(pods), Some(src)) = (&compiled.pod_sources, source) {
        let returned = match &pods.iptables {
            SourceReturns::NotIn(net) => !net.contains(&src),
            SourceReturns::In(list) => list.iter().any(|n| n.contains(&src)),
        };
        if returned {
            return Verdict::NoMasquerade;
        }
    }
    if compiled.iptables_returns.iter().any(|n| n.contains(&dst)) {
        Verdict::NoMasquerade
    } else {
        Verdict::Masquerade
    }
}

/// The nftables chain: source set, then one destination set lookup.
fn nft_verdict(compiled: &Compiled, source: Option<IpAddr>, dst: IpAddr) -> Verdict {
    if let (Some(pods), Some(src)) = (&compiled.pod_sources, source)
        && !pods.nft_set.iter().any(|n| n.contains(&src))
    {
        return Verdict::NoMasquerade;
    }
    if compiled.nft_no_masquerade.iter().any(|n| n.contains(&dst)) {
        Verdict::NoMasquerade
    } else {
        Verdict::Masquerade
    }
}

/// The rules restated another way: sort by prefix length (longest first,
/// no masquerade first at equal length) and take the first match.
fn reference_verdict(c: &Config, source: Option<IpAddr>, dst: IpAddr) -> Verdict {
    let family = Family::of(dst);
    let pods = pod_sources(c, family);
    if let Some(src) = source
        && !pods.is_empty()
        && !pods.iter().any(|n| n.contains(&src))
    {
        return Verdict::NoMasquerade;
    }
    let mut all = entries(c, family);
    all.sort_by_key(|e| {
        (
            std::cmp::Reverse(e.cidr.prefix_len()),
            e.list.verdict() == Verdict::Masquerade,
        )
    });
    all.iter()
        .find(|e| e.cidr.contains(&dst))
        .map_or(Verdict::Masquerade, |e| e.list.verdict())
}

/// The reason names entries that exist, contain the destination and have
/// the right verdicts and lengths; and nothing longer contradicts it.
fn assert_reason_is_consistent(d: &Decision, c: &Config) {
    let all = entries(c, Family::of(d.destination));
    match d.reason {
        Reason::Cidr { decided, over } => {
            assert!(all.contains(&decided), "{d}");
            assert!(decided.cidr.contains(&d.destination), "{d}");
            assert_eq!(decided.list.verdict(), d.verdict, "{d}");
            if let Some(o) = over {
                assert!(all.contains(&o) && o.cidr.contains(&d.destination), "{d}");
                assert_ne!(o.list.verdict(), d.verdict, "{d}");
                assert!(o.cidr.prefix_len() <= decided.cidr.prefix_len(), "{d}");
            }
            let longest_other = all
                .iter()
                .filter(|e| e.cidr.contains(&d.destination) && e.list.verdict() != d.verdict)
                .map(|e| e.cidr.prefix_len())
                .max();
            assert_eq!(longest_other, over.map(|o| o.cidr.prefix_len()), "{d}");
        }
        Reason::PodSource => assert_eq!(d.verdict, Verdict::NoMasquerade, "{d}"),
        Reason::Default => {
            assert_eq!(d.verdict, Verdict::Masquerade, "{d}");
            assert!(!all.iter().any(|e| e.cidr.contains(&d.destination)), "{d}");
        }
    }
}

fn assert_sorted_disjoint_minimal(list: &[IpNet], what: &str) {
    assert_eq!(
        IpNet::aggregate(&list.to_vec()),
        list,
        "{what} is not the minimal sorted cover"
    );
}

#[test]
fn compiled_structures_equal_the_decision_on_random_configs() {
    let mut rng = Rng(0x1b4d_5eed);
    let mut checked = 0_u64;
    for round in 0..400 {
        let c = random_config(&mut rng);
        for family in [Family::Ipv4, Family::Ipv6] {
            let compiled = compile(&c, family);
            assert_sorted_disjoint_minimal(&compiled.nft_no_masquerade, "nft set");
            if let Some(pods) = &compiled.pod_sources {
                assert_sorted_disjoint_minimal(&pods.nft_set, "pod set");
                if let SourceReturns::In(list) = &pods.iptables {
                    assert_sorted_disjoint_minimal(list, "pod complement");
                }
            }
            let pods = pod_sources(&c, family);
            let probes = probes(&mut rng, &c, family);
            for &dst in &probes {
                let pick = usize::try_from(rng.below(probes.len() as u64)).unwrap();
                let sources = [None, Some(probes[pick]), pods.first().map(|p| p.network())];
                for source in sources {
                    let d = decide(&c, source, dst).unwrap();
                    let ctx = || {
                        format!(
                            "round {round} {family} src {source:?} dst {dst}: {d}\nconfig {}",
                            c.to_json()
                        )
                    };
                    assert_eq!(
                        d.verdict,
                        reference_verdict(&c, source, dst),
                        "reference: {}",
                        ctx()
                    );
                    assert_reason_is_consistent(&d, &c);
                    assert_eq!(
                        d.verdict,
                        iptables_verdict(&compiled, source, dst),
                        "iptables: {}",
                        ctx()
                    );
                    assert_eq!(
                        d.verdict,
                        nft_verdict(&compiled, source, dst),
                        "nftables: {}",
                        ctx()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 100_000, "only {checked} packets checked");
}

#[test]
fn random_configs_without_new_keys_compile_to_upstreams_list() {
    let mut rng = Rng(0x0dd_ba11);
    for _ in 0..300 {
        let mut c = random_config(&mut rng);
        c.masquerade_cidrs.clear();
        c.pod_cidrs.clear();
        for family in [Family::Ipv4, Family::Ipv6] {
            let compiled = compile(&c, family);
            let mut expected = Vec::new();
            let masq_ll = match family {
                Family::Ipv4 => c.masq_link_local,
                Family::Ipv6 => c.masq_link_local_ipv6,
            };
            if !masq_ll {
                expected.push(family.link_local());
            }
            expected.extend(c.non_masquerade_cidrs.iter().filter(|n| family.contains(n)));
            assert_eq!(compiled.iptables_returns, expected);
            assert_eq!(compiled.nft_no_masquerade, IpNet::aggregate(&expected));
            assert_eq!(compiled.pod_sources, None);
        }
    }
}
