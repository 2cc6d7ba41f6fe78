//! The masquerade decision: for a packet's source and destination, whether
//! the agent masquerades it and why. One pure function, [`decide`], is the
//! definition; `explain` prints it and [`compile`] turns it into the flat
//! structures the kernel evaluates, which are tested against it.
//!
//! The rules, per address family (a packet is matched only against the
//! entries of its own family):
//! 1. Pod sources. When `podCIDRs` holds ranges of the family, a packet
//!    whose source is outside all of them is never masqueraded (inbound
//!    traffic to a pod keeps its client address; traffic the node forwards
//!    for others is left alone). A family without `podCIDRs` ranges has no
//!    source condition. Checked first, as the kernel checks it first.
//! 2. Longest prefix. The destination is looked up, by longest prefix,
//!    among `nonMasqueradeCIDRs` (no masquerade), `masqueradeCIDRs`
//!    (masquerade), `podCIDRs` (no masquerade: pod-to-pod) and the implicit
//!    link-local entry (169.254.0.0/16, or fe80::/10 for IPv6; no
//!    masquerade, present unless `masqLinkLocal` / `masqLinkLocalIPv6` is
//!    true). The longest matching entry decides; its verdict is the answer.
//! 3. Equal prefix length means the same network. The same network in
//!    `nonMasqueradeCIDRs` and `masqueradeCIDRs` is refused by validation;
//!    for any other tie (a `masqueradeCIDRs` network that is also a
//!    `podCIDRs` network or the link-local entry) no masquerade wins: a pod
//!    destination or link-local range stays unmasqueraded unless a longer
//!    `masqueradeCIDRs` entry carves a part out of it (or `masqLinkLocal`
//!    is set). Of several no-masquerade entries with the same network, the
//!    reason names `nonMasqueradeCIDRs` first, then `podCIDRs`, then
//!    link-local.
//! 4. No entry matches: masquerade (`default: in no list`).
//!
//! Worked example: `nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]` and
//! `masqueradeCIDRs: [10.9.0.0/16]`. 10.9.5.9 is in 10.0.0.0/8 and
//! 10.9.0.0/16; the /16 is longer, so it is masqueraded. 10.9.5.200 is also
//! in 10.9.5.128/25, longer still, so it is not. 10.1.1.1 is only in
//! 10.0.0.0/8: not masqueraded. The order of entries in the lists never
//! matters (a first-match reading would get 10.9.5.9 wrong).
//!
//! [`decide`] answers for a family the agent programs; IPv6 is programmed
//! only with `--enable-ipv6`, which callers check (without it the agent
//! leaves IPv6 traffic alone).

use std::fmt;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::config::Config;

mod compile;
mod explain;
#[cfg(test)]
mod tests;

pub use compile::{Compiled, PodSources, SourceReturns, compile};

/// An address family; the agent programs each one separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// Stable lower-case name used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }

    /// The family of an address.
    pub fn of(addr: IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// Whether `net` belongs to this family. An IPv4-mapped IPv6 network
    /// never reaches here: validation already turned it into IPv4.
    pub fn contains(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::Ipv4, IpNet::V4(_)) | (Family::Ipv6, IpNet::V6(_))
        )
    }

    /// The link-local range that is exempt from masquerading unless the
    /// config says otherwise (RFC 3927 for IPv4, RFC 4291 for IPv6).
    pub fn link_local(self) -> IpNet {
        match self {
            Family::Ipv4 => IpNet::V4(Ipv4Net::new_assert([169, 254, 0, 0].into(), 16)),
            Family::Ipv6 => IpNet::V6(Ipv6Net::new_assert(
                [0xfe80, 0, 0, 0, 0, 0, 0, 0].into(),
                10,
            )),
        }
    }

    /// Whether the config leaves this family's link-local range to be
    /// masqueraded (`masqLinkLocal` / `masqLinkLocalIPv6`).
    fn masq_link_local(self, config: &Config) -> bool {
        match self {
            Family::Ipv4 => config.masq_link_local,
            Family::Ipv6 => config.masq_link_local_ipv6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    Masquerade,
    NoMasquerade,
}

impl Verdict {
    /// `masquerade` or `no-masquerade`, as `explain` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Masquerade => "masquerade",
            Verdict::NoMasquerade => "no-masquerade",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a destination entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    /// `nonMasqueradeCIDRs`.
    NonMasquerade,
    /// `masqueradeCIDRs`.
    Masquerade,
    /// `podCIDRs`, as destinations.
    Pod,
    /// The implicit link-local entry (`masqLinkLocal` / `masqLinkLocalIPv6`
    /// false).
    LinkLocal,
}

impl List {
    /// The config key, or `link-local` for the implicit entry.
    pub fn key(self) -> &'static str {
        match self {
            List::NonMasquerade => "nonMasqueradeCIDRs",
            List::Masquerade => "masqueradeCIDRs",
            List::Pod => "podCIDRs",
            List::LinkLocal => "link-local",
        }
    }

    /// The verdict for a destination this entry decides.
    pub fn verdict(self) -> Verdict {
        match self {
            List::Masquerade => Verdict::Masquerade,
            List::NonMasquerade | List::Pod | List::LinkLocal => Verdict::NoMasquerade,
        }
    }
}

/// One destination entry of the longest-prefix lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub list: List,
    pub cidr: IpNet,
}

/// Why a packet gets its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The longest matching destination entry, and the longest matching
    /// entry of the other verdict that it beat (shorter, or the same
    /// network: see the tie rule in the module doc), if any.
    Cidr { decided: Entry, over: Option<Entry> },
    /// `podCIDRs` holds ranges of this family and the source is in none.
    PodSource,
    /// No entry matches the destination.
    Default,
}

/// The answer for one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub destination: IpAddr,
    /// `None`: asked about the destination alone, i.e. for a source inside
    /// `podCIDRs` (or any source, for a family without `podCIDRs`).
    pub source: Option<IpAddr>,
    pub verdict: Verdict,
    pub reason: Reason,
}

/// A source and a destination of different families: no such packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixedFamilies {
    pub source: IpAddr,
    pub destination: IpAddr,
}

impl fmt::Display for MixedFamilies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "source {} is {} but destination {} is {}; a packet has one address family",
            self.source,
            Family::of(self.source),
            self.destination,
            Family::of(self.destination)
        )
    }
}

impl std::error::Error for MixedFamilies {}

/// The destination entries of one family, in the order the reason names
/// equal networks: `nonMasqueradeCIDRs`, `podCIDRs`, link-local, then
/// `masqueradeCIDRs`; each list in config order, duplicates kept.
pub fn entries(config: &Config, family: Family) -> Vec<Entry> {
    let of = |list: List, nets: &[IpNet]| {
        nets.iter()
            .filter(|net| family.contains(net))
            .map(move |&cidr| Entry { list, cidr })
            .collect::<Vec<_>>()
    };
    let mut out = of(List::NonMasquerade, &config.non_masquerade_cidrs);
    out.extend(of(List::Pod, &config.pod_cidrs));
    if !family.masq_link_local(config) {
        out.push(Entry {
            list: List::LinkLocal,
            cidr: family.link_local(),
        });
    }
    out.extend(of(List::Masquerade, &config.masquerade_cidrs));
    out
}

/// The `podCIDRs` networks of one family, in config order.
pub fn pod_sources(config: &Config, family: Family) -> Vec<IpNet> {
    config
        .pod_cidrs
        .iter()
        .filter(|net| family.contains(net))
        .copied()
        .collect()
}

/// The decision for a packet from `source` (or, with `None`, from a pod) to
/// `destination`; see the module doc for the rules.
pub fn decide(
    config: &Config,
    source: Option<IpAddr>,
    destination: IpAddr,
) -> Result<Decision, MixedFamilies> {
    let family = Family::of(destination);
    let decision = |verdict, reason| Decision {
        destination,
        source,
        verdict,
        reason,
    };
    if let Some(source) = source {
        if Family::of(source) != family {
            return Err(MixedFamilies {
                source,
                destination,
            });
        }
        let pods = pod_sources(config, family);
        if !pods.is_empty() && !pods.iter().any(|net| net.contains(&source)) {
            return Ok(decision(Verdict::NoMasquerade, Reason::PodSource));
        }
    }
    let matching: Vec<Entry> = entries(config, family)
        .into_iter()
        .filter(|e| e.cidr.contains(&destination))
        .collect();
    // Longest prefix; at equal length no masquerade; then the first listed.
    let rank = |e: &Entry| {
        (
            e.cidr.prefix_len(),
            e.list.verdict() == Verdict::NoMasquerade,
        )
    };
    let Some(decided) = matching
        .iter()
        .copied()
        .reduce(|best, e| if rank(&e) > rank(&best) { e } else { best })
    else {
        return Ok(decision(Verdict::Masquerade, Reason::Default));
    };
    let verdict = decided.list.verdict();
    let over = matching
        .iter()
        .copied()
        .filter(|e| e.list.verdict() != verdict)
        .reduce(|best, e| {
            if e.cidr.prefix_len() > best.cidr.prefix_len() {
                e
            } else {
                best
            }
        });
    Ok(decision(verdict, Reason::Cidr { decided, over }))
}
