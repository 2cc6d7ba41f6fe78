//! Our table as found in the kernel, whichever way it was read: parsed
//! from `nft -j list table`, or assembled by a netlink snapshot. Pure.
//!
//! What must stay true: only objects in our table count, and anything in
//! it that we would not have written (a foreign element, a comment on a
//! rule, another hook or policy on the base chain) shows as a difference,
//! never as a match. Whether a chain is our base chain is decided here
//! ([`Hook::is_ours`]), for both reads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::table::{
    AUTHORITATIVE_PRIORITY, BASE_PRIORITY, POD_SET, SET, TABLE, addr_type, nft_family,
};
use crate::plan::Family;

/// The set as found in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedSet {
    /// `type` and `flags` are what we create (ipvX_addr, interval only).
    pub shape_ok: bool,
    /// Elements that are plain prefixes or addresses.
    pub elements: BTreeSet<IpNet>,
    /// Elements of another form (a non-prefix range, or one carrying a
    /// comment, timeout or counter): never ours, so the set is rewritten.
    pub foreign_elements: usize,
}

/// A chain as found in the kernel. `R` is a rule's form: the JSON `expr`
/// array `nft -j` prints, or a netlink snapshot's expression text.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedChain<R = Value> {
    /// `type nat hook postrouting priority srcnat + 10; policy accept`
    /// (or `srcnat - 10`, `--authoritative`'s).
    pub base_ok: bool,
    /// The base chain's priority, when `base_ok`: which of the two.
    pub priority: Option<i64>,
    /// Each rule, in order.
    pub rules: Vec<R>,
}

impl<R> Default for ObservedChain<R> {
    fn default() -> Self {
        ObservedChain {
            base_ok: false,
            priority: None,
            rules: Vec::new(),
        }
    }
}

/// Our table as found in one read.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<R = Value> {
    pub table: bool,
    pub set: Option<ObservedSet>,
    /// The pod-source set, read like the other.
    pub pod_set: Option<ObservedSet>,
    pub chains: BTreeMap<String, ObservedChain<R>>,
}

impl<R> Default for Observed<R> {
    fn default() -> Self {
        Observed {
            table: false,
            set: None,
            pod_set: None,
            chains: BTreeMap::new(),
        }
    }
}

/// A chain's type, hook, priority and policy as read, in nft's words
/// (None where the chain has none: a regular chain).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hook<'a> {
    pub kind: Option<&'a str>,
    pub hook: Option<&'a str>,
    pub priority: Option<i64>,
    pub policy: Option<&'a str>,
}

impl Hook<'_> {
    /// Our base chain's: `type nat hook postrouting priority srcnat + 10;
    /// policy accept`, or `srcnat - 10` (`--authoritative`; the plan says
    /// which, see `diff`).
    pub fn is_ours(&self) -> bool {
        self.kind == Some("nat")
            && self.hook == Some("postrouting")
            && matches!(self.priority, Some(BASE_PRIORITY | AUTHORITATIVE_PRIORITY))
            && self.policy == Some("accept")
    }

    /// The priority of a chain that [`Hook::is_ours`].
    pub fn our_priority(&self) -> Option<i64> {
        self.priority.filter(|_| self.is_ours())
    }
}

fn parse_addr(value: &Value) -> Option<IpAddr> {
    value.as_str()?.parse().ok()
}

fn parse_element(value: &Value) -> Option<IpNet> {
    if let Some(addr) = parse_addr(value) {
        return Some(IpNet::from(addr));
    }
    let prefix = value.get("prefix")?;
    let addr = parse_addr(prefix.get("addr")?)?;
    let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
    IpNet::new(addr, len).ok()
}

fn parse_set(set: &Value, family: Family) -> ObservedSet {
    let flags: Vec<&str> = set
        .get("flags")
        .and_then(Value::as_array)
        .map(|f| f.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut found = ObservedSet {
        shape_ok: set.get("type").and_then(Value::as_str) == Some(addr_type(family))
            && flags == ["interval"],
        ..ObservedSet::default()
    };
    let elements = set
        .get("elem")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for element in elements {
        match parse_element(element) {
            Some(net) if Family::contains(family, &net) => {
                found.elements.insert(net);
            }
            _ => found.foreign_elements += 1,
        }
    }
    found
}

/// Read our objects out of `nft -j list table FAMILY ip-masq-agent`.
pub fn parse_json(text: &str, family: Family) -> Result<Observed, String> {
    let root: Value =
        serde_json::from_str(text).map_err(|e| format!("nft printed invalid JSON: {e}"))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("nft JSON has no \"nftables\" array")?;
    let ours = |object: &Value| {
        object.get("family").and_then(Value::as_str) == Some(nft_family(family))
            && object
                .get("table")
                .or_else(|| object.get("name"))
                .and_then(Value::as_str)
                == Some(TABLE)
    };
    let mut observed = Observed::default();
    for item in items {
        if let Some(table) = item.get("table") {
            observed.table |= ours(table);
        } else if let Some(set) = item.get("set") {
            if !ours(set) {
                continue;
            }
            match set.get("name").and_then(Value::as_str) {
                Some(SET) => observed.set = Some(parse_set(set, family)),
                Some(POD_SET) => observed.pod_set = Some(parse_set(set, family)),
                _ => {}
            }
        } else if let Some(chain) = item.get("chain") {
            if chain.get("table").and_then(Value::as_str) != Some(TABLE) || !ours(chain) {
                continue;
            }
            let Some(name) = chain.get("name").and_then(Value::as_str) else {
                continue;
            };
            let field = |key: &str| chain.get(key).and_then(Value::as_str);
            let hook = Hook {
                kind: field("type"),
                hook: field("hook"),
                priority: chain.get("prio").and_then(Value::as_i64),
                policy: field("policy"),
            };
            let found = observed.chains.entry(name.to_owned()).or_default();
            found.base_ok = hook.is_ours();
            found.priority = hook.our_priority();
        } else if let Some(rule) = item.get("rule") {
            if !ours(rule) {
                continue;
            }
            let Some(chain) = rule.get("chain").and_then(Value::as_str) else {
                continue;
            };
            let mut expr = rule.get("expr").cloned().unwrap_or(Value::Null);
            // A comment someone added makes the rule not ours.
            if let Some(comment) = rule.get("comment") {
                expr = json!({"expr": expr, "comment": comment});
            }
            observed
                .chains
                .entry(chain.to_owned())
                .or_default()
                .rules
                .push(expr);
        }
    }
    Ok(observed)
}
