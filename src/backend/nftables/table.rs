//! Our table as data: the names we own, the plan of one family's table
//! (its set's elements and its chains of typed rules), and the nft scripts
//! that create it. Pure.
//!
//! What must stay true: every rule is one [`NftRule`] value, and its three
//! forms (the nft text we send, the JSON `nft -j` prints, the expressions
//! the kernel holds) are rendered from that one value, so they cannot
//! disagree about what the rule is. Share chains come before the base chain
//! in a plan, so a script defines them before the jump to them. A table
//! without `podCIDRs` ranges has no [`POD_SET`] and no rule for it, so its
//! script is what it was before the source condition existed, and a plan
//! without `--authoritative` has exactly the chain and rules it always had.
//!
//! `--authoritative`: in nftables an `accept` ends only its own base chain;
//! every nat base chain at the hook still runs, until one binds the
//! connection's NAT (the kernel's `nf_nat_inet_fn` stops walking the nat
//! hooks once `nf_nat_initialized`). So our base chain runs at `srcnat - 10`,
//! before iptables' nat tables and kube-proxy's table (all at `srcnat`), and
//! decides by binding: `masquerade`, or for an exempted destination `snat to
//! ip saddr`, a binding to the address the packet already has (what the
//! kernel's own null binding does when no rule NATs), after which no later
//! nat chain is consulted. Left unbound for the later chains: packets
//! kube-proxy marked for masquerading (0x4000), and connections a DNAT
//! rewrote whose destination is exempted (Services: kube-proxy's nftables
//! hairpin masquerade must still see them).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::bytecode::predict;
use super::wire::Proto;
use crate::plan::{self, Family, PortRange, Ruleset};

/// Our table's name, the same in both families.
pub const TABLE: &str = "ip-masq-agent";
/// The interval set of destinations that keep their source address.
pub const SET: &str = "no-masquerade";
/// The interval set of pod sources (`podCIDRs`); only when the config has
/// ranges of the family.
pub const POD_SET: &str = "pod-sources";
/// The base chain.
pub const BASE_CHAIN: &str = "postrouting";
/// Prefix of the per-interval chains of `--to-ports`.
pub(super) const SHARE_PREFIX: &str = "share-";
/// `srcnat + 10` as the kernel stores it (srcnat is 100 in ip and ip6).
pub(super) const BASE_PRIORITY: i64 = 110;
/// `srcnat - 10`: `--authoritative`'s base chain, before every nat chain at
/// `srcnat` (iptables' nat tables, kube-proxy's nftables table).
pub(super) const AUTHORITATIVE_PRIORITY: i64 = 90;
/// kube-proxy's KUBE-MARK-MASQ bit.
pub(super) const KUBE_MARK_MASQ: u32 = 0x4000;
/// The rule that keeps a freshly created table from masquerading anything
/// until its set is filled: the base chain returns at once (its policy is
/// accept), as if the table did not exist yet.
pub const GATE: &str = "return";

/// nft's name for the family.
pub fn nft_family(family: Family) -> &'static str {
    Proto::of(family).name()
}

/// nft's type of the set's keys.
pub(super) fn addr_type(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ipv4_addr",
        Family::Ipv6 => "ipv6_addr",
    }
}

/// One interval of the `--to-ports` vmap: random numbers `lo..=hi` jump
/// to `chain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Slice {
    pub lo: u64,
    pub hi: u64,
    pub chain: String,
}

/// One rule of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum NftRule {
    /// [`GATE`], first in the base chain of a table being created.
    Gate,
    /// `fib daddr type local return`: upstream's `-m addrtype ! --dst-type
    /// LOCAL` on its jump, as a return.
    LocalReturn,
    /// `ip saddr != @pod-sources return` (`ip6` for IPv6): packets from
    /// outside `podCIDRs` are left alone, before the destination lookup.
    ForeignSourceReturn(Family),
    /// `ip daddr @no-masquerade return` (`ip6` for IPv6).
    ListedReturn(Family),
    /// `meta mark & 0x00004000 == 0x00004000 return` (`--authoritative`):
    /// kube-proxy's masquerade mark is left to its own chain.
    MarkedReturn,
    /// `ct status dnat ip daddr @no-masquerade return` (`--authoritative`):
    /// a DNATed connection to an exempted destination is left unbound.
    DnatListedReturn(Family),
    /// `ip daddr @no-masquerade snat to ip saddr` (`--authoritative`): the
    /// connection is bound to its own source address, final.
    ListedKeep(Family),
    /// `masquerade`, with `--to-ports` after a transport protocol match
    /// (the port mapping is only valid after one).
    Masquerade {
        ports: Option<PortRange>,
        random_fully: bool,
    },
    /// Several `--to-ports` intervals, weighted by size like iptables'
    /// statistic rules: a random number below `modulus` picks the share
    /// chain whose slice holds it.
    Shares { modulus: u64, slices: Vec<Slice> },
}

impl NftRule {
    /// The rule as written in an nft script.
    pub fn text(&self) -> String {
        match self {
            NftRule::Gate => GATE.to_owned(),
            NftRule::LocalReturn => "fib daddr type local return".to_owned(),
            NftRule::ForeignSourceReturn(family) => {
                format!("{} saddr != @{POD_SET} return", nft_family(*family))
            }
            NftRule::ListedReturn(family) => format!("{} daddr @{SET} return", nft_family(*family)),
            NftRule::MarkedReturn => {
                format!("meta mark & {KUBE_MARK_MASQ:#010x} == {KUBE_MARK_MASQ:#010x} return")
            }
            NftRule::DnatListedReturn(family) => {
                format!("ct status dnat {} daddr @{SET} return", nft_family(*family))
            }
            NftRule::ListedKeep(family) => {
                let fam = nft_family(*family);
                format!("{fam} daddr @{SET} snat to {fam} saddr")
            }
            NftRule::Masquerade {
                ports,
                random_fully,
            } => {
                let mut text = String::new();
                if let Some(range) = ports {
                    let _ = write!(text, "{} masquerade to :", l4proto_text());
                    if range.first == range.last {
                        let _ = write!(text, "{}", range.first);
                    } else {
                        let _ = write!(text, "{range}");
                    }
                } else {
                    text.push_str("masquerade");
                }
                if *random_fully {
                    text.push_str(" fully-random");
                }
                text
            }
            NftRule::Shares { modulus, slices } => {
                let map: Vec<String> = slices
                    .iter()
                    .map(|s| {
                        if s.lo == s.hi {
                            format!("{} : jump {}", s.lo, s.chain)
                        } else {
                            format!("{}-{} : jump {}", s.lo, s.hi, s.chain)
                        }
                    })
                    .collect();
                format!(
                    "{} numgen random mod {modulus} vmap {{ {} }}",
                    l4proto_text(),
                    map.join(", ")
                )
            }
        }
    }

    /// The rule's `expr` array as `nft -j` prints it.
    pub fn json(&self) -> Value {
        match self {
            NftRule::Gate => json!([{"return": null}]),
            NftRule::LocalReturn => json!([
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                {"return": null}
            ]),
            NftRule::ForeignSourceReturn(family) => json!([
                {"match": {"op": "!=", "left": {"payload": {"protocol": nft_family(*family), "field": "saddr"}}, "right": format!("@{POD_SET}")}},
                {"return": null}
            ]),
            NftRule::ListedReturn(family) => json!([listed_json(*family), {"return": null}]),
            NftRule::MarkedReturn => json!([
                {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, KUBE_MARK_MASQ]}, "right": KUBE_MARK_MASQ}},
                {"return": null}
            ]),
            NftRule::DnatListedReturn(family) => json!([
                {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}},
                listed_json(*family),
                {"return": null}
            ]),
            NftRule::ListedKeep(family) => json!([
                listed_json(*family),
                {"snat": {"addr": {"payload": {"protocol": nft_family(*family), "field": "saddr"}}}}
            ]),
            NftRule::Masquerade {
                ports,
                random_fully,
            } => {
                let mut expr = Vec::new();
                let mut statement = serde_json::Map::new();
                if let Some(range) = ports {
                    expr.push(l4proto_json());
                    let port = if range.first == range.last {
                        json!(range.first)
                    } else {
                        json!({"range": [range.first, range.last]})
                    };
                    statement.insert("port".into(), port);
                }
                if *random_fully {
                    statement.insert("flags".into(), json!("fully-random"));
                }
                let statement = if statement.is_empty() {
                    Value::Null
                } else {
                    Value::Object(statement)
                };
                expr.push(json!({ "masquerade": statement }));
                Value::Array(expr)
            }
            NftRule::Shares { modulus, slices } => {
                let map: Vec<Value> = slices
                    .iter()
                    .map(|s| {
                        let key = if s.lo == s.hi {
                            json!(s.lo)
                        } else {
                            json!({"range": [s.lo, s.hi]})
                        };
                        json!([key, {"jump": {"target": s.chain}}])
                    })
                    .collect();
                json!([
                    l4proto_json(),
                    {"vmap": {"key": {"numgen": {"mode": "random", "mod": modulus, "offset": 0}}, "data": {"set": map}}}
                ])
            }
        }
    }

    /// The rule's expressions as a netlink read shows them (`bytecode`).
    pub fn bytecode(&self) -> String {
        match self {
            NftRule::Gate => predict::gate(),
            NftRule::LocalReturn => predict::fib_local_return(),
            NftRule::ForeignSourceReturn(family) => {
                predict::saddr_not_in_set_return(*family, POD_SET)
            }
            NftRule::ListedReturn(family) => predict::daddr_in_set_return(*family, SET),
            NftRule::MarkedReturn => predict::mark_return(KUBE_MARK_MASQ),
            NftRule::DnatListedReturn(family) => predict::dnat_daddr_in_set_return(*family, SET),
            NftRule::ListedKeep(family) => predict::daddr_in_set_keep_saddr(*family, SET),
            NftRule::Masquerade {
                ports,
                random_fully,
            } => {
                let masquerade = predict::masquerade(*ports, *random_fully);
                match ports {
                    Some(_) => format!(
                        "{} {masquerade}",
                        predict::l4proto_in(&plan::PORT_PROTOCOLS)
                    ),
                    None => masquerade,
                }
            }
            NftRule::Shares { modulus, slices } => {
                let starts: Vec<(u64, String)> =
                    slices.iter().map(|s| (s.lo, s.chain.clone())).collect();
                format!(
                    "{} {}",
                    predict::l4proto_in(&plan::PORT_PROTOCOLS),
                    predict::numgen_vmap(*modulus, &starts)
                )
            }
        }
    }
}

/// `ip daddr @no-masquerade` (`ip6` for IPv6) as `nft -j` prints it.
fn listed_json(family: Family) -> Value {
    json!({"match": {"op": "==", "left": {"payload": {"protocol": nft_family(family), "field": "daddr"}}, "right": format!("@{SET}")}})
}

/// `meta l4proto { tcp, udp, sctp }`: the protocols `--to-ports` applies to.
fn l4proto_text() -> String {
    let names: Vec<&str> = plan::PORT_PROTOCOLS.iter().map(|p| p.as_str()).collect();
    format!("meta l4proto {{ {} }}", names.join(", "))
}

fn l4proto_json() -> Value {
    let names: Vec<&str> = plan::PORT_PROTOCOLS.iter().map(|p| p.as_str()).collect();
    json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": names}}})
}

/// One of our chains and its rules in order.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Chain {
    pub name: String,
    pub base: bool,
    pub rules: Vec<NftRule>,
}

/// A `Ruleset` in nftables terms: the set's elements and our chains.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub(super) family: Family,
    /// Aggregated, sorted by address.
    pub(super) elements: Vec<IpNet>,
    /// [`POD_SET`]'s elements (disjoint, sorted), when the family has
    /// `podCIDRs` ranges; None: no such set and no source rule.
    pub(super) pod_elements: Option<Vec<IpNet>>,
    /// Share chains first, the base chain last.
    pub(super) chains: Vec<Chain>,
    /// The base chain's priority: [`BASE_PRIORITY`], or
    /// [`AUTHORITATIVE_PRIORITY`] with `--authoritative`.
    pub(super) priority: i64,
}

impl Plan {
    /// Predicted rules per chain, as compared with what `nft -j` shows.
    pub(super) fn predicted(&self) -> BTreeMap<String, Vec<Value>> {
        self.per_chain(NftRule::json)
    }

    /// Predicted rules per chain as a netlink read shows them
    /// ([`super::netlink::snapshot`]).
    pub fn predicted_bytecode(&self) -> BTreeMap<String, Vec<String>> {
        self.per_chain(NftRule::bytecode)
    }

    fn per_chain<R>(&self, form: impl Fn(&NftRule) -> R) -> BTreeMap<String, Vec<R>> {
        self.chains
            .iter()
            .map(|c| (c.name.clone(), c.rules.iter().map(&form).collect()))
            .collect()
    }

    /// The set's elements: the aggregated list, sorted.
    pub fn elements(&self) -> &[IpNet] {
        &self.elements
    }

    /// The pod-source set's elements, if the plan has that set.
    pub fn pod_elements(&self) -> Option<&[IpNet]> {
        self.pod_elements.as_deref()
    }
}

/// Turn the family's `Ruleset` into our table's content.
pub fn plan_nft(desired: &Ruleset) -> Plan {
    let family = desired.family;
    let random_fully = desired.random_fully;
    let masquerade = |ports| NftRule::Masquerade {
        ports,
        random_fully,
    };
    let mut chains = Vec::new();
    let mut base = vec![NftRule::LocalReturn];
    if desired.authoritative {
        base.push(NftRule::MarkedReturn);
    }
    if desired.pod_sources.is_some() {
        base.push(NftRule::ForeignSourceReturn(family));
    }
    if desired.authoritative {
        base.push(NftRule::DnatListedReturn(family));
        base.push(NftRule::ListedKeep(family));
    } else {
        base.push(NftRule::ListedReturn(family));
    }
    match desired.to_ports.as_slice() {
        [] => {}
        [only] => base.push(masquerade(Some(*only))),
        // `masquerade to :numgen map` is broken in nft 1.0.6, hence a
        // chain per interval.
        several => {
            let mut modulus: u64 = 0;
            let mut slices = Vec::new();
            for (i, range) in several.iter().enumerate() {
                let chain = format!("{SHARE_PREFIX}{i}");
                let size = u64::from(range.size());
                slices.push(Slice {
                    lo: modulus,
                    hi: modulus + size - 1,
                    chain: chain.clone(),
                });
                modulus += size;
                chains.push(Chain {
                    name: chain,
                    base: false,
                    rules: vec![masquerade(Some(*range))],
                });
            }
            base.push(NftRule::Shares { modulus, slices });
        }
    }
    // Everything not returned above, other protocols included.
    base.push(masquerade(None));
    chains.push(Chain {
        name: BASE_CHAIN.into(),
        base: true,
        rules: base,
    });
    Plan {
        family,
        elements: plan::aggregate_for_set(&desired.no_masquerade),
        pod_elements: desired.pod_sources.as_ref().map(|p| p.nft_set.clone()),
        chains,
        priority: if desired.authoritative {
            AUTHORITATIVE_PRIORITY
        } else {
            BASE_PRIORITY
        },
    }
}

/// A priority of ours in nft's words (`srcnat` is 100).
pub(super) fn priority_text(priority: i64) -> String {
    match priority - 100 {
        0 => "srcnat".to_owned(),
        d if d > 0 => format!("srcnat + {d}"),
        d => format!("srcnat - {}", -d),
    }
}

pub(super) fn base_chain_spec(priority: i64) -> String {
    format!(
        "type nat hook postrouting priority {}; policy accept;",
        priority_text(priority)
    )
}

/// `{ a, b, ... }`.
pub(super) fn elements_text(elements: &[IpNet]) -> String {
    let items: Vec<String> = elements.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The whole table, declaratively: what a node without our table receives
/// (and what `render` prints).
pub fn script(plan: &Plan) -> String {
    table_script(plan, true)
}

/// The table without its [`SET`] elements and with [`GATE`] first in the
/// base chain: how the agent creates it (see `Nftables::create`). The
/// pod-source set, a few `podCIDRs` ranges, is written whole here.
pub fn gated_script(plan: &Plan) -> String {
    table_script(plan, false)
}

fn table_script(plan: &Plan, with_elements: bool) -> String {
    let family = plan.family;
    let mut out = format!("table {} {TABLE} {{\n", nft_family(family));
    let _ = writeln!(out, "\tset {SET} {{");
    let _ = writeln!(out, "\t\ttype {}", addr_type(family));
    let _ = writeln!(out, "\t\tflags interval");
    if with_elements && !plan.elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {}", elements_text(&plan.elements));
    }
    let _ = writeln!(out, "\t}}");
    if let Some(pods) = &plan.pod_elements {
        let _ = writeln!(out, "\tset {POD_SET} {{");
        let _ = writeln!(out, "\t\ttype {}", addr_type(family));
        let _ = writeln!(out, "\t\tflags interval");
        let _ = writeln!(out, "\t\telements = {}", elements_text(pods));
        let _ = writeln!(out, "\t}}");
    }
    for chain in &plan.chains {
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        if chain.base {
            let _ = writeln!(out, "\t\t{}", base_chain_spec(plan.priority));
            if !with_elements {
                let _ = writeln!(out, "\t\t{}", NftRule::Gate.text());
            }
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{}", rule.text());
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}
