//! Following packets through the nat postrouting path, and judging what
//! the foreign rules on it do to the config's decision. Pure.
//!
//! A packet is a class: its sources and destinations are address sets
//! (the pod ranges and one config CIDR when detecting, one address each
//! when explaining). A match is then true, false or "maybe" (the class is
//! split by it, or it tests what is not known here: an interface, a port,
//! conntrack). A terminal rule that matches for sure ends what it ends; one
//! that may match is recorded and the walk goes on as if it had not, so
//! every rule that can touch the class is seen. Assumptions, stated once:
//! pod traffic carries no packet mark (kube-proxy marks only service
//! traffic), it was not DNATed (not sent to a Service), its destinations
//! are not local addresses and its source is not a local address.

use std::collections::BTreeSet;
use std::fmt;

use ipnet::IpNet;

use super::rules::{Hooked, Match, Origin, Rule, Target};
use crate::config::Config;
use crate::plan::{ChainName, Family};
use crate::policy::{self, Verdict};

/// How deep jumps are followed (kube-proxy's path is two deep).
pub const MAX_DEPTH: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

impl Tri {
    fn flip(self, neg: bool) -> Tri {
        match (self, neg) {
            (Tri::Yes, true) => Tri::No,
            (Tri::No, true) => Tri::Yes,
            (t, _) => t,
        }
    }

    fn of(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
}

/// A set of addresses of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addrs {
    /// The union of these networks.
    In(Vec<IpNet>),
    /// Every address of the family outside these networks.
    Except(Vec<IpNet>),
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

impl Addrs {
    /// Whether the set lies inside `nets` (Yes), outside (No) or across.
    fn within(&self, nets: &[IpNet]) -> Tri {
        match self {
            Addrs::In(own) => {
                let inside = own.iter().all(|n| nets.iter().any(|m| m.contains(n)));
                let outside = own.iter().all(|n| !nets.iter().any(|m| overlaps(m, n)));
                match (inside, outside) {
                    (true, _) => Tri::Yes,
                    (_, true) => Tri::No,
                    _ => Tri::Maybe,
                }
            }
            Addrs::Except(excluded) => {
                if nets.iter().any(|m| m.prefix_len() == 0) {
                    Tri::Yes
                } else if nets.iter().all(|m| excluded.iter().any(|e| e.contains(m))) {
                    Tri::No
                } else {
                    Tri::Maybe
                }
            }
        }
    }
}

/// The packets asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub family: Family,
    pub source: Addrs,
    pub destination: Addrs,
    /// The interfaces, when known (`ip route get`).
    pub out_interface: Option<String>,
    pub in_interface: Option<String>,
    /// The source is a pod, so not a local address.
    pub source_is_pod: bool,
}

fn interface_matches(name: &str, patterns: &[String]) -> bool {
    patterns.iter().any(
        |p| match p.strip_suffix('+').or_else(|| p.strip_suffix('*')) {
            Some(prefix) => name.starts_with(prefix),
            None => name == p,
        },
    )
}

fn evaluate(m: &Match, p: &Packet) -> Tri {
    match m {
        Match::Source { neg, nets } => p.source.within(nets).flip(*neg),
        Match::Destination { neg, nets } => p.destination.within(nets).flip(*neg),
        Match::OutInterface { neg, names } => match &p.out_interface {
            Some(name) => Tri::of(interface_matches(name, names)).flip(*neg),
            None => Tri::Maybe,
        },
        Match::InInterface { neg, names } => match &p.in_interface {
            Some(name) => Tri::of(interface_matches(name, names)).flip(*neg),
            None => Tri::Maybe,
        },
        // Unmarked: (0 & mask) == value holds only for value 0.
        Match::Mark { neg, value, .. } => Tri::of(*value == 0).flip(*neg),
        Match::DestinationLocal { neg } => Tri::No.flip(*neg),
        Match::SourceLocal { neg } if p.source_is_pod => Tri::No.flip(*neg),
        Match::SourceLocal { .. } => Tri::Maybe,
        Match::Nfproto { neg, family } => Tri::of(*family == p.family).flip(*neg),
        // Pod traffic to a destination of the config is not a Service's.
        Match::Dnat { neg } => Tri::No.flip(*neg),
        Match::Unknown(_) => Tri::Maybe,
    }
}

/// Whether the rule matches, and the matches that made it uncertain.
fn rule_matches(rule: &Rule, p: &Packet) -> (Tri, Vec<String>) {
    let mut result = Tri::Yes;
    let mut unsure = Vec::new();
    for m in &rule.matches {
        match evaluate(m, p) {
            Tri::No => return (Tri::No, Vec::new()),
            Tri::Maybe => {
                result = Tri::Maybe;
                unsure.push(m.to_string());
            }
            Tri::Yes => {}
        }
    }
    (result, unsure)
}

/// What a matched rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Masquerade or SNAT: the NAT is bound.
    Nat,
    /// Ends the traversal of its base chain (ACCEPT, or RETURN in the base).
    Ends,
    Drop,
    /// A jump or goto, a RETURN from a called chain, a MARK.
    Passes,
    /// Our jump (iptables) or our table's chain (nftables).
    Ours,
}

/// One rule that matched (for sure or maybe).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub origin: Origin,
    pub chain: String,
    pub rule: Rule,
    pub effect: Effect,
    /// The matches (here and in the jumps that led here) that may not hold.
    pub unsure: Vec<String>,
}

impl Step {
    pub fn certain(&self) -> bool {
        self.unsure.is_empty()
    }
}

/// Who decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    /// A foreign rule (the step at this index) bound the NAT or dropped.
    Foreign(usize),
    /// Our chain: masqueraded, or exempted and nothing after it masqueraded.
    Ours(Verdict),
    /// No rule masqueraded and our chain was never reached: the step at
    /// this index (if any) ended the traversal before it.
    NotReached(Option<usize>),
}

/// A packet's way through the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    pub steps: Vec<Step>,
    pub decider: Decider,
}

/// Where our own decision is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OurPlace {
    /// The jump to this chain in this iptables variant's POSTROUTING.
    Iptables {
        variant: &'static str,
        chain: ChainName,
    },
    /// Our nftables table (the hook marked `ours`); `chain` is
    /// `--masq-chain`, whose upstream-style jump is ours, not stale.
    Nftables { chain: ChainName },
}

enum Flow {
    /// A terminal rule fired (index of its step).
    Nat(usize),
    Drop(usize),
    Ends(usize),
    /// Back to the caller (RETURN or the chain's end).
    Back,
}

struct Walker<'a> {
    packet: &'a Packet,
    place: &'a OurPlace,
    desired: Verdict,
    steps: Vec<Step>,
    ours_reached: bool,
}

impl Walker<'_> {
    fn chain(&mut self, hook: &Hooked, chain: &str, inherited: &[String], depth: usize) -> Flow {
        let Some(rules) = hook.chains.get(chain) else {
            return Flow::Back;
        };
        for rule in rules {
            let (tri, unsure) = rule_matches(rule, self.packet);
            if tri == Tri::No {
                continue;
            }
            let mut all_unsure = inherited.to_vec();
            all_unsure.extend(unsure);
            let sure = tri == Tri::Yes;
            let is_ours = match (self.place, &hook.origin, rule.chain_target()) {
                (
                    OurPlace::Iptables {
                        variant,
                        chain: ours,
                    },
                    Origin::Iptables { variant: v },
                    Some(target),
                ) => v == variant && target == ours.as_str(),
                _ => false,
            };
            let effect = if is_ours {
                Effect::Ours
            } else {
                match &rule.target {
                    Target::Nat(_) => Effect::Nat,
                    Target::Accept => Effect::Ends,
                    Target::Return if depth == 0 => Effect::Ends,
                    Target::Drop => Effect::Drop,
                    _ => Effect::Passes,
                }
            };
            let index = self.steps.len();
            self.steps.push(Step {
                origin: hook.origin.clone(),
                chain: chain.to_owned(),
                rule: rule.clone(),
                effect,
                unsure: all_unsure.clone(),
            });
            if is_ours {
                if all_unsure.is_empty() {
                    self.ours_reached = true;
                }
                if self.desired == Verdict::Masquerade && sure {
                    return Flow::Nat(index);
                }
                continue;
            }
            match &rule.target {
                Target::Nat(_) if sure => return Flow::Nat(index),
                Target::Drop if sure => return Flow::Drop(index),
                Target::Accept if sure => return Flow::Ends(index),
                Target::Return if sure => {
                    return if depth == 0 {
                        Flow::Ends(index)
                    } else {
                        Flow::Back
                    };
                }
                Target::Jump(next) | Target::Goto(next) if depth < MAX_DEPTH => {
                    let flow = self.chain(hook, next, &all_unsure, depth + 1);
                    let goto = matches!(rule.target, Target::Goto(_));
                    match flow {
                        // A jump that may not be taken: what it would do is recorded, the walk goes on.
                        _ if !sure => {}
                        Flow::Back if goto => return Flow::Back,
                        Flow::Back => {}
                        decided => return decided,
                    }
                }
                _ => {}
            }
        }
        Flow::Back
    }
}

/// Follow `packet` through `path` (sorted by priority here). `desired` is
/// what our own chain decides for it.
pub fn trace(path: &[Hooked], packet: &Packet, place: &OurPlace, desired: Verdict) -> Trace {
    let mut hooks: Vec<&Hooked> = path.iter().collect();
    hooks.sort_by_key(|h| h.priority);
    let mut w = Walker {
        packet,
        place,
        desired,
        steps: Vec::new(),
        ours_reached: false,
    };
    let mut ended = None;
    for hook in hooks {
        if hook.ours {
            if !matches!(place, OurPlace::Nftables { .. }) {
                continue;
            }
            w.ours_reached = true;
            w.steps.push(Step {
                origin: hook.origin.clone(),
                chain: hook.base.clone(),
                rule: Rule {
                    text: format!("our chain {}", hook.base),
                    matches: Vec::new(),
                    target: Target::Continue,
                    comment: None,
                },
                effect: Effect::Ours,
                unsure: Vec::new(),
            });
            if desired == Verdict::Masquerade {
                return Trace {
                    steps: w.steps,
                    decider: Decider::Ours(Verdict::Masquerade),
                };
            }
            continue;
        }
        let base = hook.base.clone();
        match w.chain(hook, &base, &[], 0) {
            Flow::Nat(i) if w.steps[i].effect == Effect::Ours => {
                return Trace {
                    steps: w.steps,
                    decider: Decider::Ours(Verdict::Masquerade),
                };
            }
            Flow::Nat(i) | Flow::Drop(i) => {
                return Trace {
                    steps: w.steps,
                    decider: Decider::Foreign(i),
                };
            }
            Flow::Ends(i) => {
                if !w.ours_reached {
                    ended = Some(i);
                }
            }
            Flow::Back => {}
        }
    }
    let decider = if w.ours_reached {
        Decider::Ours(Verdict::NoMasquerade)
    } else {
        Decider::NotReached(ended)
    };
    Trace {
        steps: w.steps,
        decider,
    }
}

/// One class of pod traffic the config decides: a destination range, what
/// the config wants for it, and how to name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub destination: Addrs,
    pub desired: Verdict,
    pub label: String,
}

/// What the config expects of pod traffic in one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub family: Family,
    /// The pod ranges (`podCIDRs`), or every address when unknown.
    pub sources: Addrs,
    pub probes: Vec<Probe>,
}

impl Expectation {
    /// The config's destination ranges of `family`, each with its own
    /// verdict; then every destination network a rule on `path` tests
    /// (decided as the config decides its first address); then all other
    /// destinations (masqueraded).
    pub fn new(config: &Config, family: Family, path: &[Hooked]) -> Expectation {
        let mut probes: Vec<Probe> = Vec::new();
        // A set: a config may hold tens of thousands of CIDRs.
        let mut seen: BTreeSet<IpNet> = BTreeSet::new();
        for entry in policy::entries(config, family) {
            if !seen.insert(entry.cidr) {
                continue;
            }
            probes.push(Probe {
                destination: Addrs::In(vec![entry.cidr]),
                desired: entry.list.verdict(),
                label: entry.cidr.to_string(),
            });
        }
        let foreign = path
            .iter()
            .flat_map(|h| h.chains.values())
            .flatten()
            .flat_map(|r| &r.matches)
            .filter_map(|m| match m {
                Match::Destination { nets, .. } => Some(nets),
                _ => None,
            });
        for net in foreign.flatten() {
            if !family.contains(net) || net.prefix_len() == 0 || !seen.insert(*net) {
                continue;
            }
            let desired = policy::decide(config, None, net.network())
                .map(|d| d.verdict)
                .unwrap_or(Verdict::Masquerade);
            probes.push(Probe {
                destination: Addrs::In(vec![*net]),
                desired,
                label: net.to_string(),
            });
        }
        probes.push(Probe {
            destination: Addrs::Except(seen.into_iter().collect()),
            desired: Verdict::Masquerade,
            label: "all other destinations".to_owned(),
        });
        let pods = policy::pod_sources(config, family);
        let sources = if pods.is_empty() {
            Addrs::In(vec![match family {
                Family::Ipv4 => IpNet::V4(Default::default()),
                Family::Ipv6 => IpNet::V6(Default::default()),
            }])
        } else {
            Addrs::In(pods)
        };
        Expectation {
            family,
            sources,
            probes,
        }
    }
}

/// What kind of override a foreign rule is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum ConflictKind {
    /// It masquerades (or SNATs) destinations the config exempts.
    Masquerades,
    /// It ends the nat traversal before our chain for destinations the
    /// config masquerades.
    EndsBefore,
    /// An upstream-style jump to this chain, not ours.
    StaleChain(String),
}

/// One foreign rule that overrides the config, and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub kind: ConflictKind,
    pub origin: Origin,
    pub chain: String,
    /// The rule as shown in messages ([`Rule::shown`]).
    pub rule: String,
    /// The config's destinations it affects.
    pub cidrs: Vec<String>,
    /// Why it only may apply (empty: it applies for sure).
    pub unsure: Vec<String>,
    /// Our chain's name, for the message.
    pub ours: String,
}

/// CIDRs named in one message; a longer list ends with how many more.
const LISTED_CIDRS: usize = 8;

impl Conflict {
    fn cidr_list(&self) -> String {
        let mut text = self
            .cidrs
            .iter()
            .take(LISTED_CIDRS)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if self.cidrs.len() > LISTED_CIDRS {
            text.push_str(&format!(" and {} more", self.cidrs.len() - LISTED_CIDRS));
        }
        text
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = format!("{} chain {} rule {}", self.origin, self.chain, self.rule);
        match &self.kind {
            ConflictKind::StaleChain(chain) => write!(
                f,
                "{at}: stale chain {chain} from an earlier agent decides first; run `ip-masq-agent cleanup --stale-chains`"
            )?,
            ConflictKind::Masquerades => write!(
                f,
                "{at} {} pod traffic to {} that the config exempts",
                if self.unsure.is_empty() {
                    "masquerades"
                } else {
                    "may masquerade"
                },
                self.cidr_list()
            )?,
            ConflictKind::EndsBefore => write!(
                f,
                "{at} {} the nat traversal before {} for pod traffic to {} that the config masquerades",
                if self.unsure.is_empty() {
                    "ends"
                } else {
                    "may end"
                },
                self.ours,
                self.cidr_list()
            )?,
        }
        if !self.unsure.is_empty() {
            write!(f, " (not known here: {})", self.unsure.join("; "))?;
        }
        Ok(())
    }
}

/// Every foreign rule on `path` that overrides what `expected` wants, one
/// entry per rule with all the destinations it affects, sorted.
pub fn detect(path: &[Hooked], expected: &Expectation, place: &OurPlace) -> Vec<Conflict> {
    let (ours, masq_chain) = match place {
        OurPlace::Iptables { chain, .. } => (chain.to_string(), chain.as_str()),
        OurPlace::Nftables { chain } => ("our nftables chain".to_owned(), chain.as_str()),
    };
    let mut found: Vec<Conflict> = Vec::new();
    let mut add = |kind: ConflictKind, step: &Step, label: Option<&str>| {
        let shown = step.rule.shown();
        let key = |c: &Conflict| {
            c.kind == kind && c.origin == step.origin && c.chain == step.chain && c.rule == shown
        };
        let entry = match found.iter_mut().position(|c| key(c)) {
            Some(i) => &mut found[i],
            None => {
                found.push(Conflict {
                    kind: kind.clone(),
                    origin: step.origin.clone(),
                    chain: step.chain.clone(),
                    rule: shown.clone(),
                    cidrs: Vec::new(),
                    unsure: step.unsure.clone(),
                    ours: ours.clone(),
                });
                let last = found.len() - 1;
                &mut found[last]
            }
        };
        // Probes come one at a time, so a repeat is the last one added.
        if let Some(label) = label
            && entry.cidrs.last().map(String::as_str) != Some(label)
        {
            entry.cidrs.push(label.to_owned());
        }
        if step.unsure.is_empty() {
            entry.unsure.clear();
        }
    };
    // Stale upstream-style jumps, wherever the iptables path holds one.
    for hook in path {
        if !matches!(hook.origin, Origin::Iptables { .. }) {
            continue;
        }
        for rule in hook.chains.get(&hook.base).into_iter().flatten() {
            if let Some(target) = rule.upstream_jump()
                && target != masq_chain
            {
                let step = Step {
                    origin: hook.origin.clone(),
                    chain: hook.base.clone(),
                    rule: rule.clone(),
                    effect: Effect::Passes,
                    unsure: Vec::new(),
                };
                add(ConflictKind::StaleChain(target.to_owned()), &step, None);
            }
        }
    }
    // Nothing foreign on the path: nothing can override us (and a config
    // of 50 000 CIDRs costs no walk at all).
    let anything_foreign = path.iter().filter(|h| !h.ours).any(|h| {
        h.chains
            .values()
            .flatten()
            .any(|r| match (place, &h.origin) {
                (OurPlace::Iptables { variant, chain }, Origin::Iptables { variant: v })
                    if v == variant =>
                {
                    r.chain_target() != Some(chain.as_str())
                }
                _ => true,
            })
    });
    if !anything_foreign {
        found.sort();
        return found;
    }
    for probe in &expected.probes {
        let packet = Packet {
            family: expected.family,
            source: expected.sources.clone(),
            destination: probe.destination.clone(),
            out_interface: None,
            in_interface: None,
            source_is_pod: true,
        };
        let t = trace(path, &packet, place, probe.desired);
        let mut ours_seen = false;
        for (i, step) in t.steps.iter().enumerate() {
            match step.effect {
                Effect::Ours => ours_seen = true,
                Effect::Nat if probe.desired == Verdict::NoMasquerade => {
                    add(ConflictKind::Masquerades, step, Some(&probe.label));
                }
                Effect::Ends
                    if probe.desired == Verdict::Masquerade
                        && !ours_seen
                        && in_our_hook(step, place) =>
                {
                    if step.certain() && t.decider != Decider::NotReached(Some(i)) {
                        continue;
                    }
                    add(ConflictKind::EndsBefore, step, Some(&probe.label));
                }
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// Whether an ACCEPT in this step's base chain keeps packets from our chain:
/// only in our own iptables variant (an nftables accept ends one table).
fn in_our_hook(step: &Step, place: &OurPlace) -> bool {
    matches!((place, &step.origin), (OurPlace::Iptables { variant, .. }, Origin::Iptables { variant: v }) if v == variant)
}
