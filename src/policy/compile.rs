//! The decision of [`super::decide`] compiled, per family, into the flat
//! structures each backend hands the kernel: no nesting, no per-packet walk
//! of the lists, and the same answer as `decide` for every packet.
//!
//! How: the destination entries (which, being CIDRs, are nested or
//! disjoint) are swept once in address order with a stack of enclosing
//! entries, giving the disjoint address ranges each decided by its longest
//! entry. The no-masquerade ranges, adjacent ones merged, are covered by
//! the fewest CIDRs (each maximal range split greedily into aligned
//! blocks). That cover is the nftables set; first-match RETURN rules over it
//! followed by the catch-all MASQUERADE are the iptables chain.
//!
//! What must stay true:
//! - A family without `masqueradeCIDRs` and `podCIDRs` entries gets, for
//!   iptables, exactly upstream's list: link-local first (unless
//!   masqueraded), then the family's `nonMasqueradeCIDRs` in config order,
//!   duplicates kept, so the rules stay byte-identical; its nftables set is
//!   the list's aggregation, element for element what the backend sets
//!   today.
//! - Time is O(n log n) in the number of entries; the output has at most
//!   2 × (address bits) CIDRs per decided range.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Entry, Family, List, Verdict, entries, pod_sources};
use crate::config::Config;

/// One family's policy as the kernel evaluates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub family: Family,
    /// iptables: the destinations of the RETURN rules, in rule order; the
    /// catch-all MASQUERADE (with its port shares) follows them. Disjoint
    /// except in the upstream-identical case (see the module doc).
    pub iptables_returns: Vec<IpNet>,
    /// nftables: the elements of the no-masquerade destination interval
    /// set, disjoint, adjacent ranges merged, sorted by address. One lookup
    /// decides: member → return, else masquerade.
    pub nft_no_masquerade: Vec<IpNet>,
    /// The source condition, when `podCIDRs` holds ranges of this family.
    pub pod_sources: Option<PodSources>,
}

/// The pod-source rule of one family: packets whose source is outside
/// these ranges are never masqueraded. Both backends evaluate it before the
/// destination lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSources {
    /// nftables: the elements of a second interval set (disjoint, merged,
    /// sorted), used as `ip saddr != @pod-sources return` (`ip6` for IPv6)
    /// ahead of the destination lookup.
    pub nft_set: Vec<IpNet>,
    /// iptables: the rules that return non-pod sources, ahead of the
    /// destination RETURN rules.
    pub iptables: SourceReturns,
}

/// How the iptables chain returns packets from outside `podCIDRs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceReturns {
    /// The pod ranges are one CIDR: one rule `! -s CIDR -j RETURN`.
    NotIn(IpNet),
    /// Otherwise the fewest CIDRs covering everything outside the pod
    /// ranges, one rule `-s CIDR -j RETURN` each (a negated match takes one
    /// network only, and a sub-chain would nest).
    In(Vec<IpNet>),
}

/// Compile `config`'s decision for `family`; see the module doc.
pub fn compile(config: &Config, family: Family) -> Compiled {
    let all = entries(config, family);
    let spans = decided_spans(&all, family);
    let nft_no_masquerade = cover_spans(&spans, Verdict::NoMasquerade, family);
    let upstream_only = all
        .iter()
        .all(|e| e.list.verdict() == Verdict::NoMasquerade)
        && pod_sources(config, family).is_empty();
    let iptables_returns = if upstream_only {
        // `entries` lists nonMasqueradeCIDRs before link-local; upstream's
        // rules have link-local first.
        let (link_local, listed): (Vec<Entry>, Vec<Entry>) =
            all.into_iter().partition(|e| e.list == List::LinkLocal);
        link_local.iter().chain(&listed).map(|e| e.cidr).collect()
    } else {
        nft_no_masquerade.clone()
    };
    Compiled {
        family,
        iptables_returns,
        nft_no_masquerade,
        pod_sources: compile_pod_sources(config, family),
    }
}

fn compile_pod_sources(config: &Config, family: Family) -> Option<PodSources> {
    let pods = pod_sources(config, family);
    if pods.is_empty() {
        return None;
    }
    let ranges = union(pods.iter().map(|net| bounds(net, family)));
    let nft_set = cover_ranges(&ranges, family);
    let iptables = match nft_set.as_slice() {
        [one] => SourceReturns::NotIn(*one),
        _ => SourceReturns::In(cover_ranges(&complement(&ranges, family), family)),
    };
    Some(PodSources { nft_set, iptables })
}

/// Inclusive address range `[start, end]` as integers of the family's width.
type Range = (u128, u128);

/// A range and the verdict of the entry deciding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u128,
    end: u128,
    verdict: Verdict,
}

fn bits(family: Family) -> u32 {
    match family {
        Family::Ipv4 => 32,
        Family::Ipv6 => 128,
    }
}

/// The mask of the low `len` bits.
fn low_mask(len: u32) -> u128 {
    if len >= 128 {
        u128::MAX
    } else {
        (1 << len) - 1
    }
}

fn bounds(net: &IpNet, family: Family) -> Range {
    let start = addr_bits(net.network());
    let host = bits(family) - u32::from(net.prefix_len());
    (start, start | low_mask(host))
}

fn addr_bits(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn to_net(start: u128, prefix: u8, family: Family) -> IpNet {
    match family {
        // Both fit by construction: starts are addresses of the family and
        // prefixes at most its width.
        Family::Ipv4 => IpNet::V4(Ipv4Net::new_assert(
            u32::try_from(start).unwrap_or(u32::MAX).into(),
            prefix,
        )),
        Family::Ipv6 => IpNet::V6(Ipv6Net::new_assert(start.into(), prefix)),
    }
}

/// The disjoint ranges decided by some entry, in address order, each with
/// its verdict (longest prefix; at equal networks no masquerade), adjacent
/// ranges of one verdict merged. Addresses in no range are masqueraded.
fn decided_spans(all: &[Entry], family: Family) -> Vec<Span> {
    // (start, prefix, masquerade?): sorting puts the enclosing network
    // before those inside it, and no-masquerade first among equal networks,
    // which dedup then keeps.
    let mut nets: Vec<(u128, u8, bool, u128)> = all
        .iter()
        .map(|e| {
            let (start, end) = bounds(&e.cidr, family);
            (
                start,
                e.cidr.prefix_len(),
                e.list.verdict() == Verdict::Masquerade,
                end,
            )
        })
        .collect();
    nets.sort_unstable();
    nets.dedup_by_key(|&mut (start, prefix, _, _)| (start, prefix));

    let mut out: Vec<Span> = Vec::new();
    let verdict = |masq: bool| {
        if masq {
            Verdict::Masquerade
        } else {
            Verdict::NoMasquerade
        }
    };
    // Enclosing entries still open: (end, verdict), innermost last.
    let mut stack: Vec<(u128, Verdict)> = Vec::new();
    // The next address not yet assigned; None once past the last address.
    let mut cursor: Option<u128> = Some(0);
    for &(start, _, masq, end) in &nets {
        while let Some(&(open_end, v)) = stack.last() {
            if open_end >= start {
                break;
            }
            emit(&mut out, cursor, open_end, v);
            cursor = open_end.checked_add(1);
            stack.pop();
        }
        if let (Some(&(_, v)), Some(c)) = (stack.last(), cursor)
            && c < start
        {
            emit(&mut out, Some(c), start - 1, v);
        }
        cursor = Some(start);
        stack.push((end, verdict(masq)));
    }
    while let Some((open_end, v)) = stack.pop() {
        emit(&mut out, cursor, open_end, v);
        cursor = open_end.checked_add(1);
    }
    out
}

/// Append `[from, to]` with `verdict`, merged into the last span when it
/// continues it.
fn emit(out: &mut Vec<Span>, from: Option<u128>, to: u128, verdict: Verdict) {
    let Some(from) = from.filter(|&f| f <= to) else {
        return;
    };
    if let Some(last) = out.last_mut()
        && last.verdict == verdict
        && last.end.checked_add(1) == Some(from)
    {
        last.end = to;
        return;
    }
    out.push(Span {
        start: from,
        end: to,
        verdict,
    });
}

/// The fewest CIDRs covering the spans with `verdict`, adjacent ones merged.
fn cover_spans(spans: &[Span], verdict: Verdict, family: Family) -> Vec<IpNet> {
    let mut ranges: Vec<Range> = Vec::new();
    for s in spans.iter().filter(|s| s.verdict == verdict) {
        match ranges.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(s.start) => last.1 = s.end,
            _ => ranges.push((s.start, s.end)),
        }
    }
    cover_ranges(&ranges, family)
}

/// The union of ranges that are nested or disjoint (as CIDRs are): sorted,
/// disjoint, adjacent ones merged.
fn union(ranges: impl Iterator<Item = Range>) -> Vec<Range> {
    let mut sorted: Vec<Range> = ranges.collect();
    sorted.sort_unstable();
    let mut out: Vec<Range> = Vec::with_capacity(sorted.len());
    for (start, end) in sorted {
        match out.last_mut() {
            Some(last) if last.1.checked_add(1).is_none_or(|next| next >= start) => {
                last.1 = last.1.max(end);
            }
            _ => out.push((start, end)),
        }
    }
    out
}

/// Everything of the family outside sorted disjoint `ranges`.
fn complement(ranges: &[Range], family: Family) -> Vec<Range> {
    let top = low_mask(bits(family));
    let mut out = Vec::with_capacity(ranges.len() + 1);
    let mut next = Some(0_u128);
    for &(start, end) in ranges {
        if let Some(n) = next
            && n < start
        {
            out.push((n, start - 1));
        }
        next = end.checked_add(1).filter(|&n| n <= top);
    }
    if let Some(n) = next {
        out.push((n, top));
    }
    out
}

/// Each range split greedily into the largest aligned blocks: the fewest
/// CIDRs whose union is exactly the range.
fn cover_ranges(ranges: &[Range], family: Family) -> Vec<IpNet> {
    let width = bits(family);
    let mut out = Vec::new();
    for &(first, last) in ranges {
        let mut start = first;
        loop {
            let aligned = if start == 0 {
                width
            } else {
                start.trailing_zeros().min(width)
            };
            let span = last - start;
            // floor(log2(span + 1)), the largest block that fits.
            let fits = match span.checked_add(1) {
                Some(size) => 127 - size.leading_zeros(),
                None => 128,
            };
            let host = aligned.min(fits);
            // host <= width, so the prefix fits in a u8.
            let prefix = u8::try_from(width - host).unwrap_or(0);
            out.push(to_net(start, prefix, family));
            let block_end = start + low_mask(host);
            if block_end >= last {
                break;
            }
            start = block_end + 1;
        }
    }
    out
}
