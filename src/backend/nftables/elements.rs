//! The `no-masquerade` set's elements as the kernel holds them, and back to
//! CIDRs. Pure functions.
//!
//! An interval set stores boundaries, not prefixes: a start element (the
//! first address) and an end element flagged `NFT_SET_ELEM_INTERVAL_END`
//! whose key is the last address + 1. What nft 1.0.6 writes, and so what we
//! write (checked against the kernel in `tests/integration`):
//! - a range reaching the top of the address space has no end element; its
//!   start carries libnftnl's element user data "interval open";
//! - adjacent ranges keep both boundaries: an end and a start element with
//!   the same key;
//! - when elements go into an empty set and the first range does not start
//!   at zero, an end element with key zero comes first (nft's "first
//!   segment"; harmless to the lookup, and never shown by `nft list`).
//!
//! Reading accepts exactly that shape. Anything else (a range that is not a
//! prefix, an element with a timeout, comment, counter or data, a stray
//! boundary) counts as a foreign element, which makes the agent rewrite the
//! set: our sets always read back as the prefixes we wrote.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::wire::{Attrs, Builder, Proto, as_be32, attr};

/// `NFT_SET_ELEM_INTERVAL_END`.
const ELEM_INTERVAL_END: u32 = 1;
/// libnftnl's element user data: TLV type `NFTNL_UDATA_SET_ELEM_FLAGS`
/// holding a host-order u32 with `NFTNL_SET_ELEM_F_INTERVAL_OPEN`.
const UDATA_ELEM_FLAGS: u8 = 1;
const ELEM_F_INTERVAL_OPEN: u32 = 1;

/// One element as sent to or read from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Elem {
    /// The address as an integer (IPv4 in the low 32 bits).
    pub key: u128,
    /// `NFT_SET_ELEM_INTERVAL_END`.
    pub end: bool,
    /// The start of a range that runs to the top of the address space.
    pub open: bool,
}

fn width(family: Proto) -> usize {
    family.addr_len()
}

fn top(family: Proto) -> u128 {
    match family {
        Proto::Ip => u128::from(u32::MAX),
        Proto::Ip6 => u128::MAX,
    }
}

fn key_bytes(family: Proto, key: u128) -> Vec<u8> {
    let all = key.to_be_bytes();
    all[16 - width(family)..].to_vec()
}

fn key_from(family: Proto, bytes: &[u8]) -> Option<u128> {
    if bytes.len() != width(family) {
        return None;
    }
    let mut all = [0u8; 16];
    all[16 - bytes.len()..].copy_from_slice(bytes);
    Some(u128::from_be_bytes(all))
}

/// First and last address of `net`.
fn bounds(net: &IpNet) -> (u128, u128) {
    match net {
        IpNet::V4(n) => (
            u128::from(u32::from(n.network())),
            u128::from(u32::from(n.broadcast())),
        ),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The prefix covering exactly `first..=last`, if there is one.
fn prefix(family: Proto, first: u128, last: u128) -> Option<IpNet> {
    if last < first || last > top(family) {
        return None;
    }
    let host = last - first;
    // A prefix's host part is all ones, and its start has none of them.
    if host & host.wrapping_add(1) != 0 || first & host != 0 {
        return None;
    }
    let len = u8::try_from(width(family) * 8 - host.count_ones() as usize).ok()?;
    match family {
        Proto::Ip => {
            let addr = Ipv4Addr::from(u32::try_from(first).ok()?);
            Ipv4Net::new(addr, len).ok().map(IpNet::V4)
        }
        Proto::Ip6 => Ipv6Net::new(Ipv6Addr::from(first), len).ok().map(IpNet::V6),
    }
}

/// The elements that add `nets` (sorted, disjoint: the aggregated list).
/// `into_empty`: the set is empty when they arrive (a full write), which is
/// when nft prepends its zero end element.
pub fn for_add(nets: &[IpNet], family: Proto, into_empty: bool) -> Vec<Elem> {
    let mut out = Vec::with_capacity(nets.len() * 2 + 1);
    if into_empty && nets.first().is_some_and(|n| bounds(n).0 != 0) {
        out.push(Elem {
            key: 0,
            end: true,
            open: false,
        });
    }
    for net in nets {
        let (first, last) = bounds(net);
        let open = last == top(family);
        out.push(Elem {
            key: first,
            end: false,
            open,
        });
        if !open {
            out.push(Elem {
                key: last + 1,
                end: true,
                open: false,
            });
        }
    }
    out
}

/// The elements that delete `nets`: both boundaries of each (the kernel
/// matches key and end flag; user data plays no part).
pub fn for_delete(nets: &[IpNet], family: Proto) -> Vec<Elem> {
    let mut out = for_add(nets, family, false);
    for e in &mut out {
        e.open = false;
    }
    out
}

/// Bytes `put` adds for `e`, so callers can split a list before a nest
/// outgrows its u16 length.
pub fn encoded_len(e: &Elem, family: Proto) -> usize {
    let key = 4 + 4 + width(family);
    4 + key + if e.end { 8 } else { 0 } + if e.open { 12 } else { 0 }
}

/// Appends `e` as one `NFTA_LIST_ELEM`, attributes in nft's order.
pub fn put(b: &mut Builder, e: &Elem, family: Proto) {
    b.begin_nest(attr::LIST_ELEM);
    if e.end {
        b.be32(attr::SET_ELEM_FLAGS, ELEM_INTERVAL_END);
    }
    b.begin_nest(attr::SET_ELEM_KEY);
    b.bytes(attr::DATA_VALUE, &key_bytes(family, e.key));
    b.end_nest();
    if e.open {
        let mut udata = vec![UDATA_ELEM_FLAGS, 4];
        udata.extend_from_slice(&ELEM_F_INTERVAL_OPEN.to_ne_bytes());
        b.bytes(attr::SET_ELEM_USERDATA, &udata);
    }
    b.end_nest();
}

/// One dumped element: the boundary it is, or why it is not ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dumped {
    pub elem: Option<Elem>,
    /// Carries something we never write (data, timeout, expiration,
    /// comment, expressions, another flag, a key of another length).
    pub foreign: bool,
}

/// Reads one `NFTA_LIST_ELEM` payload.
pub fn parse(payload: &[u8], family: Proto) -> Dumped {
    let mut key = None;
    let mut end = false;
    let mut open = false;
    let mut foreign = false;
    for item in Attrs::new(payload) {
        let Ok((kind, value)) = item else {
            foreign = true;
            break;
        };
        match kind {
            attr::SET_ELEM_KEY => {
                key = Attrs::new(value)
                    .get(attr::DATA_VALUE)
                    .and_then(|k| key_from(family, k));
            }
            attr::SET_ELEM_FLAGS => match as_be32(value) {
                Some(0) => {}
                Some(ELEM_INTERVAL_END) => end = true,
                _ => foreign = true,
            },
            attr::SET_ELEM_USERDATA => {
                let mut want = vec![UDATA_ELEM_FLAGS, 4];
                want.extend_from_slice(&ELEM_F_INTERVAL_OPEN.to_ne_bytes());
                if value == want.as_slice() {
                    open = true;
                } else {
                    foreign = true;
                }
            }
            _ => foreign = true,
        }
    }
    Dumped {
        elem: key.map(|key| Elem { key, end, open }),
        foreign: foreign || key.is_none(),
    }
}

/// The prefixes a dumped set holds, and how many of its elements are not
/// ours (see the module doc).
pub fn decode(dumped: &[Dumped], family: Proto) -> (BTreeSet<IpNet>, usize) {
    let mut nets = BTreeSet::new();
    let mut foreign = 0;
    let mut sorted: Vec<(Elem, bool)> = Vec::with_capacity(dumped.len());
    for d in dumped {
        match d.elem {
            Some(e) => sorted.push((e, d.foreign)),
            None => foreign += 1,
        }
    }
    // By key; at one key the end of a range sorts before the start of the
    // next (adjacent ranges).
    sorted.sort_unstable_by_key(|(e, _)| (e.key, !e.end));
    // (first, last, readable as ours)
    let mut ranges: Vec<(u128, u128, bool)> = Vec::with_capacity(sorted.len() / 2);
    // The start whose end has not come yet: (key, foreign, open flag).
    let mut pending: Option<(u128, bool, bool)> = None;
    for (e, bad) in sorted {
        if e.end {
            match pending.take() {
                // The open flag belongs only on a range without an end.
                Some((first, start_bad, flag)) => {
                    ranges.push((first, e.key - 1, !(start_bad || bad || flag)))
                }
                None if e.key == 0 && !bad => {} // nft's first segment
                None => foreign += 1,            // a stray end
            }
        } else {
            if pending.is_some() {
                // Two starts in a row: a shape nft never writes to a named
                // set, so the first range cannot be read back exactly.
                foreign += 1;
            }
            pending = Some((e.key, bad, e.open));
        }
    }
    if let Some((first, bad, flag)) = pending {
        ranges.push((first, top(family), !bad && flag));
    }
    for (first, last, ours) in ranges {
        match prefix(family, first, last) {
            Some(net) if ours => {
                nets.insert(net);
            }
            _ => foreign += 1,
        }
    }
    (nets, foreign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn dumped(elems: &[Elem]) -> Vec<Dumped> {
        elems
            .iter()
            .map(|e| Dumped {
                elem: Some(*e),
                foreign: false,
            })
            .collect()
    }

    fn start(key: u128) -> Elem {
        Elem {
            key,
            end: false,
            open: false,
        }
    }

    fn end(key: u128) -> Elem {
        Elem {
            key,
            end: true,
            open: false,
        }
    }

    fn v4(a: [u8; 4]) -> u128 {
        u128::from(u32::from_be_bytes(a))
    }

    #[test]
    fn adds_what_nft_adds_into_an_empty_set() {
        // `nft --debug=netlink add element ip t s { 10.0.0.0/8, 192.168.0.0/16 }`
        // into an empty set: 0 [end], 10.0.0.0, 11.0.0.0 [end],
        // 192.168.0.0, 192.169.0.0 [end].
        let got = for_add(&nets(&["10.0.0.0/8", "192.168.0.0/16"]), Proto::Ip, true);
        assert_eq!(
            got,
            vec![
                end(0),
                start(v4([10, 0, 0, 0])),
                end(v4([11, 0, 0, 0])),
                start(v4([192, 168, 0, 0])),
                end(v4([192, 169, 0, 0])),
            ]
        );
        // Into a set that holds elements: no first segment.
        assert_eq!(for_add(&nets(&["10.0.0.0/8"]), Proto::Ip, false).len(), 2);
        // Starting at zero: none either.
        assert_eq!(
            for_add(&nets(&["0.0.0.0/8"]), Proto::Ip, true),
            vec![start(0), end(v4([1, 0, 0, 0]))]
        );
    }

    #[test]
    fn a_range_to_the_top_is_open() {
        // `nft add element ip t s2 { 10.0.0.0/8, 128.0.0.0/1 }`: the last
        // start has no end and carries the "interval open" user data.
        let got = for_add(&nets(&["10.0.0.0/8", "128.0.0.0/1"]), Proto::Ip, true);
        assert_eq!(
            got.last(),
            Some(&Elem {
                key: v4([128, 0, 0, 0]),
                end: false,
                open: true
            })
        );
        let all = for_add(&nets(&["::/0"]), Proto::Ip6, true);
        assert_eq!(
            all,
            vec![Elem {
                key: 0,
                end: false,
                open: true
            }]
        );
        let mut b = Builder::new();
        put(&mut b, &all[0], Proto::Ip6);
        let bytes = b.finish().unwrap();
        assert_eq!(bytes.len(), encoded_len(&all[0], Proto::Ip6));
        // The user data nft printed as `\x01\x04\x01\x00\x00\x00`.
        assert!(
            bytes
                .windows(6)
                .any(|w| w == [1, 4, 1, 0, 0, 0] || w == [1, 4, 0, 0, 0, 1])
        );
    }

    #[test]
    fn encoded_len_matches_the_bytes() {
        for family in [Proto::Ip, Proto::Ip6] {
            for e in [start(0), end(1)] {
                let mut b = Builder::new();
                put(&mut b, &e, family);
                assert_eq!(b.finish().unwrap().len(), encoded_len(&e, family));
            }
        }
    }

    #[test]
    fn round_trips_edge_cases() {
        let cases: &[(Proto, &[&str])] = &[
            (Proto::Ip, &["10.0.0.0/8", "192.168.0.0/16"]),
            (Proto::Ip, &["0.0.0.0/8", "10.0.0.0/8"]),
            (Proto::Ip, &["0.0.0.0/0"]),
            (Proto::Ip, &["255.255.255.255/32"]),
            (Proto::Ip, &["0.0.0.0/32", "255.255.255.0/24"]),
            // Adjacent, not mergeable into one prefix.
            (Proto::Ip, &["10.0.0.0/9", "10.128.0.0/10"]),
            (Proto::Ip6, &["::/0"]),
            (Proto::Ip6, &["::/128", "fe80::/10"]),
            (Proto::Ip6, &["fd00::/8", "ffff:ffff:ffff:ffff::/64"]),
        ];
        for (family, list) in cases {
            let list = nets(list);
            for into_empty in [true, false] {
                let elems = for_add(&list, *family, into_empty);
                let (got, foreign) = decode(&dumped(&elems), *family);
                assert_eq!(foreign, 0, "{list:?}");
                assert_eq!(got.into_iter().collect::<Vec<_>>(), list);
            }
        }
    }

    #[test]
    fn reads_the_kernel_order_and_shared_keys() {
        // The kernel dumps an rbtree set from the highest key down; the end
        // of 10.0.0.0/9 and the start of 10.128.0.0/10 share a key.
        let elems = [
            end(v4([10, 192, 0, 0])),
            start(v4([10, 128, 0, 0])),
            end(v4([10, 128, 0, 0])),
            start(v4([10, 0, 0, 0])),
            end(0),
        ];
        let (got, foreign) = decode(&dumped(&elems), Proto::Ip);
        assert_eq!(foreign, 0);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            nets(&["10.0.0.0/9", "10.128.0.0/10"])
        );
    }

    #[test]
    fn what_we_never_write_is_foreign() {
        let fam = Proto::Ip;
        // A range that is not a prefix: 192.0.2.5-192.0.2.9.
        let range = [start(v4([192, 0, 2, 5])), end(v4([192, 0, 2, 10]))];
        assert_eq!(decode(&dumped(&range), fam), (BTreeSet::new(), 1));
        // A stray end, two starts in a row, a closed range flagged open,
        // a range to the top without the flag.
        assert_eq!(decode(&dumped(&[end(5)]), fam).1, 1);
        let two = [start(8), start(16), end(32)];
        let (got, foreign) = decode(&dumped(&two), fam);
        assert_eq!((got.len(), foreign), (1, 1));
        let flagged = [
            Elem {
                key: 8,
                end: false,
                open: true,
            },
            end(16),
        ];
        assert_eq!(decode(&dumped(&flagged), fam).1, 1);
        assert_eq!(decode(&dumped(&[start(v4([128, 0, 0, 0]))]), fam).1, 1);
        // An element carrying something else (say a timeout).
        let mut with_timeout = dumped(&[start(8), end(16)]);
        with_timeout[0].foreign = true;
        assert_eq!(decode(&with_timeout, fam), (BTreeSet::new(), 1));
        // A key of the wrong length.
        let bad = [Dumped {
            elem: None,
            foreign: true,
        }];
        assert_eq!(decode(&bad, fam).1, 1);
    }

    #[test]
    fn parses_dumped_elements() {
        let fam = Proto::Ip6;
        let e = Elem {
            key: 1 << 100,
            end: true,
            open: false,
        };
        let mut b = Builder::new();
        put(&mut b, &e, fam);
        let bytes = b.finish().unwrap();
        let list_elem = Attrs::new(&bytes).next().unwrap().unwrap().1;
        assert_eq!(
            parse(list_elem, fam),
            Dumped {
                elem: Some(e),
                foreign: false
            }
        );
        // The same bytes read as IPv4: the key has the wrong length.
        assert!(parse(list_elem, Proto::Ip).foreign);
        // A comment in the user data (TLV type 0) is not ours.
        let mut b = Builder::new();
        b.begin_nest(attr::LIST_ELEM);
        b.begin_nest(attr::SET_ELEM_KEY);
        b.bytes(attr::DATA_VALUE, &[10, 0, 0, 0]);
        b.end_nest();
        b.bytes(attr::SET_ELEM_USERDATA, &[0, 3, b'h', b'i', 0]);
        b.end_nest();
        let bytes = b.finish().unwrap();
        let list_elem = Attrs::new(&bytes).next().unwrap().unwrap().1;
        assert!(parse(list_elem, Proto::Ip).foreign);
    }
}
