//! The native nftables backend: the non-masquerade list in a kernel interval
//! set, so a new connection costs one set lookup whatever the list's length.
//!
//! State we own per family is one table and nothing outside it:
//! `table ip ip-masq-agent` (or `ip6`) holding the interval set
//! `no-masquerade`, the base chain `postrouting` (nat, hook postrouting,
//! priority `srcnat + 10`, so it runs after kube-proxy's and CNI chains at
//! `srcnat`, as upstream's appended jump does) and, with several `--to-ports`
//! intervals, one `share-N` chain per interval.
//!
//! What must stay true:
//! - The base chain is created once and never deleted on a sync: at equal
//!   priority the most recently created chain runs first, so recreating it
//!   would silently reorder NAT against other tables. Drift in its rules is
//!   repaired with `flush chain` + the rules, in one transaction.
//! - The set holds the aggregated list ([`plan::aggregate_for_set`]), so the
//!   kernel's set equals the desired state element for element and a config
//!   change is sent as an exact delta (delete + add elements) in one kernel
//!   transaction. A set changed behind our back is rewritten (flush + add),
//!   also in one transaction.
//! - Every reconcile (but the daemon's config change, sent blind and
//!   repaired if refused) reads the live table first and writes nothing
//!   when it already matches.
//! - The masquerade rule is never live over an incomplete set: creation is
//!   gated (see `Nftables::create`), and every element change is atomic.
//!
//! Who does what: the set's elements (the large part) are read and written
//! over netlink ([`netlink`]: one dump, one batch), because `nft` needs tens
//! of milliseconds to list or edit 10 000 interval elements. The table,
//! chains and rules (small, rarely changed) are written by `nft -f`, and
//! read over netlink as the kernel's expressions, compared with a
//! prediction (`bytecode`). Whenever that read finds rules, chains or the
//! set's type other than expected, `nft -j list table` decides, as before
//! netlink was used: its JSON is compared with a second prediction, and if
//! this nft prints our rules differently, the read-back after our own
//! write becomes the reference (as the iptables backend does), so a node
//! is never rewritten just because of formatting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::exec;
use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use crate::plan::{self, ChainName, Family, PortRange, Ruleset};
use bytecode::predict;
use netlink::{NlError, Snapshot};

mod bytecode;
mod elements;
pub mod netlink;
mod wire;

/// Our table's name, the same in both families.
pub const TABLE: &str = "ip-masq-agent";
/// The interval set of destinations that keep their source address.
pub const SET: &str = "no-masquerade";
/// The base chain.
pub const BASE_CHAIN: &str = "postrouting";
/// Prefix of the per-interval chains of `--to-ports`.
const SHARE_PREFIX: &str = "share-";
/// `srcnat + 10` as the kernel stores it (srcnat is 100 in ip and ip6).
const BASE_PRIORITY: i64 = 110;
/// How much of a transaction the debug log shows.
const LOGGED_SCRIPT: usize = 4096;
/// What nft prints when the table, set or chain does not exist.
const ABSENT: &str = "No such file or directory";

/// nft's name for the family.
pub fn nft_family(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    }
}

fn addr_type(family: Family) -> &'static str {
    match family {
        Family::Ipv4 => "ipv4_addr",
        Family::Ipv6 => "ipv6_addr",
    }
}

/// One rule: the text we send, the JSON `nft -j` is predicted to print,
/// and the expressions the kernel is predicted to hold (`bytecode`'s form).
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    text: String,
    json: Value,
    bytecode: String,
}

/// One of our chains and its rules in order.
#[derive(Debug, Clone, PartialEq)]
struct Chain {
    name: String,
    base: bool,
    rules: Vec<Rule>,
}

/// A `Ruleset` in nftables terms: the set's elements and our chains.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    family: Family,
    /// Aggregated, sorted by address.
    elements: Vec<IpNet>,
    /// Share chains first (so a script defines them before the jump to
    /// them), the base chain last.
    chains: Vec<Chain>,
}

impl Plan {
    /// Predicted rules per chain, as compared with what `nft -j` shows.
    fn predicted(&self) -> BTreeMap<String, Vec<Value>> {
        self.chains
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.rules.iter().map(|r| r.json.clone()).collect(),
                )
            })
            .collect()
    }

    /// Predicted rules per chain as a netlink read shows them
    /// ([`netlink::snapshot`]).
    pub fn predicted_bytecode(&self) -> BTreeMap<String, Vec<String>> {
        self.chains
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.rules.iter().map(|r| r.bytecode.clone()).collect(),
                )
            })
            .collect()
    }

    /// The set's elements: the aggregated list, sorted.
    pub fn elements(&self) -> &[IpNet] {
        &self.elements
    }
}

/// `meta l4proto { tcp, udp, sctp }`: the protocols `--to-ports` applies to
/// (the port mapping is only valid after a transport protocol match).
fn l4proto_text() -> String {
    let names: Vec<&str> = plan::PORT_PROTOCOLS.iter().map(|p| p.as_str()).collect();
    format!("meta l4proto {{ {} }}", names.join(", "))
}

fn l4proto_json() -> Value {
    let names: Vec<&str> = plan::PORT_PROTOCOLS.iter().map(|p| p.as_str()).collect();
    json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": names}}})
}

fn masquerade_rule(ports: Option<PortRange>, random_fully: bool) -> Rule {
    let mut text = String::new();
    let mut expr = Vec::new();
    let mut statement = serde_json::Map::new();
    let mut bytecode = String::new();
    if ports.is_some() {
        text.push_str(&l4proto_text());
        text.push(' ');
        expr.push(l4proto_json());
        bytecode.push_str(&predict::l4proto_in(&plan::PORT_PROTOCOLS));
        bytecode.push(' ');
    }
    bytecode.push_str(&predict::masquerade(ports, random_fully));
    text.push_str("masquerade");
    if let Some(range) = ports {
        if range.first == range.last {
            let _ = write!(text, " to :{}", range.first);
            statement.insert("port".into(), json!(range.first));
        } else {
            let _ = write!(text, " to :{range}");
            statement.insert("port".into(), json!({"range": [range.first, range.last]}));
        }
    }
    if random_fully {
        text.push_str(" fully-random");
        statement.insert("flags".into(), json!("fully-random"));
    }
    let statement = if statement.is_empty() {
        Value::Null
    } else {
        Value::Object(statement)
    };
    expr.push(json!({ "masquerade": statement }));
    Rule {
        text,
        json: Value::Array(expr),
        bytecode,
    }
}

/// Turn the family's `Ruleset` into our table's content.
pub fn plan_nft(desired: &Ruleset) -> Plan {
    let family = desired.family;
    let random = desired.random_fully;
    let mut chains = Vec::new();
    let mut base = vec![
        // `-m addrtype ! --dst-type LOCAL` on upstream's jump, as a return.
        Rule {
            text: "fib daddr type local return".into(),
            json: json!([
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
                {"return": null}
            ]),
            bytecode: predict::fib_local_return(),
        },
        Rule {
            text: format!("{} daddr @{SET} return", nft_family(family)),
            json: json!([
                {"match": {"op": "==", "left": {"payload": {"protocol": nft_family(family), "field": "daddr"}}, "right": format!("@{SET}")}},
                {"return": null}
            ]),
            bytecode: predict::daddr_in_set_return(family, SET),
        },
    ];
    match desired.to_ports.as_slice() {
        [] => {}
        [only] => base.push(masquerade_rule(Some(*only), random)),
        several => {
            // Weighted by interval size, like iptables' statistic rules: a
            // random number below the total picks the interval whose slice
            // holds it. (`masquerade to :numgen map` is broken in nft 1.0.6.)
            let mut offset: u64 = 0;
            let mut text_map = Vec::new();
            let mut json_map = Vec::new();
            let mut slices = Vec::new();
            for (i, range) in several.iter().enumerate() {
                let name = format!("{SHARE_PREFIX}{i}");
                let size = u64::from(range.size());
                let (lo, hi) = (offset, offset + size - 1);
                offset += size;
                slices.push((lo, name.clone()));
                if lo == hi {
                    text_map.push(format!("{lo} : jump {name}"));
                    json_map.push(json!([lo, {"jump": {"target": name}}]));
                } else {
                    text_map.push(format!("{lo}-{hi} : jump {name}"));
                    json_map.push(json!([{"range": [lo, hi]}, {"jump": {"target": name}}]));
                }
                chains.push(Chain {
                    name,
                    base: false,
                    rules: vec![masquerade_rule(Some(*range), random)],
                });
            }
            base.push(Rule {
                text: format!(
                    "{} numgen random mod {offset} vmap {{ {} }}",
                    l4proto_text(),
                    text_map.join(", ")
                ),
                json: json!([
                    l4proto_json(),
                    {"vmap": {"key": {"numgen": {"mode": "random", "mod": offset, "offset": 0}}, "data": {"set": json_map}}}
                ]),
                bytecode: format!(
                    "{} {}",
                    predict::l4proto_in(&plan::PORT_PROTOCOLS),
                    predict::numgen_vmap(offset, &slices)
                ),
            });
        }
    }
    // Everything not returned above, other protocols included.
    base.push(masquerade_rule(None, random));
    chains.push(Chain {
        name: BASE_CHAIN.into(),
        base: true,
        rules: base,
    });
    Plan {
        family,
        elements: plan::aggregate_for_set(&desired.no_masquerade),
        chains,
    }
}

fn base_chain_spec() -> String {
    "type nat hook postrouting priority srcnat + 10; policy accept;".into()
}

fn elements_text(elements: &[IpNet]) -> String {
    let items: Vec<String> = elements.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The whole table, declaratively: what a node without our table receives
/// (and what `render` prints).
pub fn script(plan: &Plan) -> String {
    table_script(plan, true)
}

/// The table without its elements and with [`GATE`] first in the base
/// chain: how the agent creates it (see `Nftables::create`).
pub fn gated_script(plan: &Plan) -> String {
    table_script(plan, false)
}

/// The rule that keeps a freshly created table from masquerading anything
/// until its set is filled: the base chain returns at once (its policy is
/// accept), as if the table did not exist yet.
pub const GATE: &str = "return";

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
    for chain in &plan.chains {
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        if chain.base {
            let _ = writeln!(out, "\t\t{}", base_chain_spec());
            if !with_elements {
                let _ = writeln!(out, "\t\t{GATE}");
            }
        }
        for rule in &chain.rules {
            let _ = writeln!(out, "\t\t{}", rule.text);
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}

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
/// array `nft -j` prints, or [`netlink::snapshot`]'s expression text.
#[derive(Debug, Clone, PartialEq)]
pub struct ObservedChain<R = Value> {
    /// `type nat hook postrouting priority srcnat + 10; policy accept`.
    pub base_ok: bool,
    /// Each rule, in order.
    pub rules: Vec<R>,
}

impl<R> Default for ObservedChain<R> {
    fn default() -> Self {
        ObservedChain {
            base_ok: false,
            rules: Vec::new(),
        }
    }
}

/// Our table as found in one read (`nft -j list table`, or a netlink
/// snapshot).
#[derive(Debug, Clone, PartialEq)]
pub struct Observed<R = Value> {
    pub table: bool,
    pub set: Option<ObservedSet>,
    pub chains: BTreeMap<String, ObservedChain<R>>,
}

impl<R> Default for Observed<R> {
    fn default() -> Self {
        Observed {
            table: false,
            set: None,
            chains: BTreeMap::new(),
        }
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
            if !ours(set) || set.get("name").and_then(Value::as_str) != Some(SET) {
                continue;
            }
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
            for element in set
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match parse_element(element) {
                    Some(net) if Family::contains(family, &net) => {
                        found.elements.insert(net);
                    }
                    _ => found.foreign_elements += 1,
                }
            }
            observed.set = Some(found);
        } else if let Some(chain) = item.get("chain") {
            if chain.get("table").and_then(Value::as_str) != Some(TABLE) || !ours(chain) {
                continue;
            }
            let Some(name) = chain.get("name").and_then(Value::as_str) else {
                continue;
            };
            let field = |key: &str| chain.get(key).and_then(Value::as_str);
            let entry = observed.chains.entry(name.to_owned()).or_default();
            entry.base_ok = field("type") == Some("nat")
                && field("hook") == Some("postrouting")
                && chain.get("prio").and_then(Value::as_i64) == Some(BASE_PRIORITY)
                && field("policy") == Some("accept");
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

/// What to do with the set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum SetChange {
    #[default]
    None,
    /// Missing: add it with all elements.
    Create,
    /// Wrong type or flags: delete and add it (its rule is rewritten too).
    Recreate,
    /// Changed behind our back or holding foreign elements: flush + add.
    Rewrite,
    /// A config change: exactly these elements go and come.
    Delta { remove: Vec<IpNet>, add: Vec<IpNet> },
}

/// Past this many removals an `nft` delta costs more than rewriting the
/// set: nft (1.0.6) re-reads and re-splits the interval set for each
/// deleted element, so shrinking 10 000 elements to one took 22 s. Only the
/// `nft` transaction (the rare repair path) heeds it; a netlink delta costs
/// the kernel's share only, whatever its size.
pub const MAX_DELTA_REMOVALS: usize = 64;

/// What must change to turn the live table into the plan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub create_table: bool,
    pub set: SetChange,
    /// Flush every chain of ours and write all rules again.
    pub rewrite_rules: bool,
    /// The base chain exists with another hook, type or priority: it cannot
    /// be changed in place, so it is deleted and added (only then).
    pub recreate_base: bool,
    /// Chains of ours to add before their rules.
    pub missing_chains: Vec<String>,
    /// `share-N` chains no longer used.
    pub stale_chains: Vec<String>,
    pub differences: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.create_table && self.set == SetChange::None && !self.rewrite_rules
    }

    /// The netlink transaction for these changes when only the set's
    /// elements differ (table, set, chains and rules as planned); None when
    /// `nft` must write.
    pub fn element_write(&self, plan: &Plan) -> Option<netlink::Write> {
        if self.create_table || self.rewrite_rules {
            return None;
        }
        match &self.set {
            SetChange::Rewrite => Some(netlink::Write {
                flush: true,
                add: plan.elements.clone(),
                ..netlink::Write::default()
            }),
            SetChange::Delta { remove, add } => Some(netlink::Write {
                remove: remove.clone(),
                add: add.clone(),
                ..netlink::Write::default()
            }),
            SetChange::None | SetChange::Create | SetChange::Recreate => None,
        }
    }
}

fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Compare what is live with the plan. `expected` is each chain's rules in
/// the form this nft prints; `last_written` is the set content we last left
/// (None before our first look), which tells drift from a config change.
pub fn diff<R: PartialEq>(
    plan: &Plan,
    observed: &Observed<R>,
    expected: &BTreeMap<String, Vec<R>>,
    last_written: Option<&BTreeSet<IpNet>>,
) -> Changes {
    let mut changes = Changes::default();
    let family = nft_family(plan.family);
    if !observed.table {
        changes.create_table = true;
        changes
            .differences
            .push(format!("table {family} {TABLE} missing"));
        return changes;
    }
    let wanted: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
    match &observed.set {
        None => {
            changes.set = SetChange::Create;
            changes.differences.push(format!("set {SET} missing"));
        }
        Some(set) if !set.shape_ok => {
            changes.set = SetChange::Recreate;
            changes.rewrite_rules = true;
            changes.differences.push(format!(
                "set {SET} has another type or flags than {} interval",
                addr_type(plan.family)
            ));
        }
        Some(set) if set.foreign_elements > 0 => {
            changes.set = SetChange::Rewrite;
            changes.differences.push(format!(
                "set {SET} holds {} we did not write (ranges or elements with options)",
                count(set.foreign_elements, "element")
            ));
        }
        Some(set) if set.elements == wanted => {}
        Some(set) => {
            let add: Vec<IpNet> = wanted.difference(&set.elements).copied().collect();
            let remove: Vec<IpNet> = set.elements.difference(&wanted).copied().collect();
            if last_written.is_some_and(|w| *w != set.elements) {
                changes.set = SetChange::Rewrite;
                changes.differences.push(format!(
                    "set {SET} changed outside the agent: {} missing, {} extra",
                    count(add.len(), "element"),
                    remove.len()
                ));
            } else {
                changes.differences.push(format!(
                    "set {SET}: {} added, {} removed",
                    count(add.len(), "element"),
                    remove.len()
                ));
                changes.set = SetChange::Delta { remove, add };
            }
        }
    }
    for chain in &plan.chains {
        let want = expected.get(&chain.name).map(Vec::as_slice).unwrap_or(&[]);
        match observed.chains.get(&chain.name) {
            None => {
                changes.rewrite_rules = true;
                changes.missing_chains.push(chain.name.clone());
                changes
                    .differences
                    .push(format!("chain {} missing", chain.name));
            }
            Some(found) => {
                if chain.base && !found.base_ok {
                    changes.rewrite_rules = true;
                    changes.recreate_base = true;
                    changes.differences.push(format!(
                        "chain {} is not a nat postrouting chain at srcnat + 10 with policy accept",
                        chain.name
                    ));
                }
                if found.rules != want {
                    changes.rewrite_rules = true;
                    changes
                        .differences
                        .push(format!("chain {} rules differ", chain.name));
                }
            }
        }
    }
    for name in observed.chains.keys() {
        if name.starts_with(SHARE_PREFIX) && !plan.chains.iter().any(|c| c.name == *name) {
            changes.rewrite_rules = true;
            changes.stale_chains.push(name.clone());
            changes
                .differences
                .push(format!("chain {name} no longer used"));
        }
    }
    changes
}

/// The one `nft -f -` transaction that applies `changes` to a live table.
pub fn transaction(plan: &Plan, changes: &Changes) -> String {
    if changes.create_table {
        return script(plan);
    }
    let t = format!("{} {TABLE}", nft_family(plan.family));
    let mut out = String::new();
    let add_all = |out: &mut String| {
        if !plan.elements.is_empty() {
            let _ = writeln!(
                out,
                "add element {t} {SET} {}",
                elements_text(&plan.elements)
            );
        }
    };
    // First empty every chain we rewrite: that also drops the rule's
    // reference to the set, should the set itself have to be replaced.
    if changes.rewrite_rules {
        for chain in &plan.chains {
            if changes.missing_chains.contains(&chain.name) {
                continue;
            }
            let _ = writeln!(out, "flush chain {t} {}", chain.name);
            if changes.recreate_base && chain.base {
                let _ = writeln!(out, "delete chain {t} {}", chain.name);
            }
        }
        for name in &changes.stale_chains {
            let _ = writeln!(out, "flush chain {t} {name}");
        }
    }
    match &changes.set {
        SetChange::None => {}
        SetChange::Create | SetChange::Recreate => {
            if changes.set == SetChange::Recreate {
                let _ = writeln!(out, "delete set {t} {SET}");
            }
            let _ = writeln!(
                out,
                "add set {t} {SET} {{ type {}; flags interval; }}",
                addr_type(plan.family)
            );
            add_all(&mut out);
        }
        SetChange::Rewrite => {
            let _ = writeln!(out, "flush set {t} {SET}");
            add_all(&mut out);
        }
        SetChange::Delta { remove, .. } if remove.len() > MAX_DELTA_REMOVALS => {
            let _ = writeln!(out, "flush set {t} {SET}");
            add_all(&mut out);
        }
        SetChange::Delta { remove, add } => {
            // Deletes first: a new element may overlap one that goes.
            if !remove.is_empty() {
                let _ = writeln!(out, "delete element {t} {SET} {}", elements_text(remove));
            }
            if !add.is_empty() {
                let _ = writeln!(out, "add element {t} {SET} {}", elements_text(add));
            }
        }
    }
    if changes.rewrite_rules {
        for chain in &plan.chains {
            let recreate = changes.recreate_base && chain.base;
            if changes.missing_chains.contains(&chain.name) || recreate {
                if chain.base {
                    let _ = writeln!(
                        out,
                        "add chain {t} {} {{ {} }}",
                        chain.name,
                        base_chain_spec()
                    );
                } else {
                    let _ = writeln!(out, "add chain {t} {}", chain.name);
                }
            }
        }
        for chain in &plan.chains {
            for rule in &chain.rules {
                let _ = writeln!(out, "add rule {t} {} {}", chain.name, rule.text);
            }
        }
        for name in &changes.stale_chains {
            let _ = writeln!(out, "delete chain {t} {name}");
        }
    }
    out
}

fn is_absent(err: &BackendError) -> bool {
    err.kind == ErrorKind::Rejected && err.detail.contains(ABSENT)
}

/// What we learned reading back our own write, per family.
#[derive(Debug, Clone)]
struct ReadBack {
    predicted: BTreeMap<String, Vec<Value>>,
    actual: BTreeMap<String, Vec<Value>>,
}

/// How the kernel holds one plan's rules (netlink's form), learned from a
/// read that showed exactly our write or that `nft -j` confirmed.
#[derive(Debug, Clone)]
struct Learned {
    /// The plan's rules this is for.
    predicted: BTreeMap<String, Vec<Value>>,
    bytecode: BTreeMap<String, Vec<String>>,
}

/// Netlink reads tried for a consistent one (no commit by anyone while
/// reading) before `nft -j` decides instead.
const SNAPSHOT_ATTEMPTS: usize = 3;

/// Runs blocking netlink I/O off the runtime's thread.
async fn blocking<T, F>(f: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NlError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(NlError::into_backend),
        Err(err) => Err(BackendError::new(
            ErrorKind::Io,
            "netlink",
            format!("the netlink task failed: {err}"),
        )),
    }
}

/// After a write: the set holds exactly `wanted` and every chain of the
/// plan exists.
fn verify(
    plan: &Plan,
    after: &Observed<String>,
    wanted: &BTreeSet<IpNet>,
) -> Result<(), BackendError> {
    let set_ok = after
        .set
        .as_ref()
        .is_some_and(|s| s.shape_ok && s.foreign_elements == 0 && s.elements == *wanted);
    let missing: Vec<&str> = plan
        .chains
        .iter()
        .filter(|c| !after.chains.contains_key(&c.name))
        .map(|c| c.name.as_str())
        .collect();
    if set_ok && missing.is_empty() {
        return Ok(());
    }
    Err(BackendError::new(
        ErrorKind::Verify,
        &format!("netlink: list table {} {TABLE}", nft_family(plan.family)),
        format!(
            "after writing, set {SET} {} and chains missing: [{}]",
            if set_ok { "matches" } else { "differs" },
            missing.join(", ")
        ),
    ))
}

/// The nftables implementation of [`Backend`].
#[derive(Debug, Default)]
pub struct Nftables {
    version: Option<String>,
    /// The set content we last wrote or found matching, per family.
    last_written: HashMap<Family, BTreeSet<IpNet>>,
    /// The rules (predicted form) of the table we last wrote or found
    /// matching: while they stay the same, a config change is a pure set delta.
    last_rules: HashMap<Family, BTreeMap<String, Vec<Value>>>,
    read_back: HashMap<Family, ReadBack>,
    learned: HashMap<Family, Learned>,
}

impl Nftables {
    pub fn new() -> Self {
        Nftables::default()
    }

    /// Ask `nft --version` once; a failure is retried next time.
    pub async fn probe_version(&mut self) -> Result<String, BackendError> {
        if let Some(version) = &self.version {
            return Ok(version.clone());
        }
        let out = exec::run("nft", &["--version"], None).await?;
        // "nftables v1.0.6 (Lester Gooch #5)"
        let version = out
            .stdout
            .split_whitespace()
            .find(|w| w.starts_with('v'))
            .unwrap_or("unknown")
            .to_owned();
        self.version = Some(version.clone());
        Ok(version)
    }

    async fn observe(&self, family: Family) -> Result<Observed, BackendError> {
        let fam = nft_family(family);
        match exec::run("nft", &["-j", "list", "table", fam, TABLE], None).await {
            Ok(out) => parse_json(&out.stdout, family).map_err(|detail| {
                BackendError::new(
                    ErrorKind::Rejected,
                    &format!("nft -j list table {fam} {TABLE}"),
                    detail,
                )
            }),
            Err(err) if is_absent(&err) => Ok(Observed::default()),
            Err(err) => Err(err),
        }
    }

    async fn apply(&self, family: Family, script: &str) -> Result<(), BackendError> {
        // A 50 000-element script is 800 kB: log its head and its size.
        let shown = match script.get(..LOGGED_SCRIPT) {
            Some(head) if script.len() > LOGGED_SCRIPT => {
                format!("{head}... ({} bytes in all)", script.len())
            }
            _ => script.to_owned(),
        };
        debug!(family = %family, payload = %shown, "nft -f -");
        exec::run("nft", &["-f", "-"], Some(script)).await.map(drop)
    }

    /// Our rules as a netlink read should show them: learned from this
    /// kernel for these rules, else predicted.
    fn expected_bytecode(
        &self,
        family: Family,
        plan: &Plan,
        predicted: &BTreeMap<String, Vec<Value>>,
    ) -> BTreeMap<String, Vec<String>> {
        match self.learned.get(&family) {
            Some(l) if l.predicted == *predicted => l.bytecode.clone(),
            _ => plan.predicted_bytecode(),
        }
    }

    /// The kernel now holds `wanted` under the plan's rules.
    fn record(
        &mut self,
        family: Family,
        wanted: BTreeSet<IpNet>,
        predicted: BTreeMap<String, Vec<Value>>,
    ) {
        self.last_written.insert(family, wanted);
        self.last_rules.insert(family, predicted);
    }

    /// Takes the plan's rules in `snap` as this kernel's form of them.
    /// Callers make sure `snap` shows exactly our rules.
    fn learn(
        &mut self,
        family: Family,
        plan: &Plan,
        predicted: &BTreeMap<String, Vec<Value>>,
        snap: &Snapshot,
    ) {
        let bytecode: BTreeMap<String, Vec<String>> = plan
            .chains
            .iter()
            .map(|c| {
                let rules = snap
                    .observed
                    .chains
                    .get(&c.name)
                    .map(|f| f.rules.clone())
                    .unwrap_or_default();
                (c.name.clone(), rules)
            })
            .collect();
        if bytecode != plan.predicted_bytecode() {
            debug!(
                family = %family,
                "the kernel holds our rules in another form than predicted; using its own as the reference"
            );
        }
        self.learned.insert(
            family,
            Learned {
                predicted: predicted.clone(),
                bytecode,
            },
        );
    }

    /// Learns from `snap` if nothing committed since it was read (then
    /// `nft -j`, which just found our rules, saw the same state).
    async fn learn_if_unchanged(
        &mut self,
        family: Family,
        plan: &Plan,
        predicted: &BTreeMap<String, Vec<Value>>,
        snap: Option<&Snapshot>,
    ) {
        let Some(snap) = snap.filter(|s| s.consistent) else {
            return;
        };
        if let Ok(now) = blocking(netlink::genid).await
            && now == snap.genid
        {
            self.learn(family, plan, predicted, snap);
        }
    }

    /// A node without our table. `nft -f` creates it gated (empty set,
    /// [`GATE`] first in the base chain), then one netlink transaction
    /// fills the set and deletes the gate. Between the two the table passes
    /// all traffic untouched, as before it existed; the masquerade rule is
    /// never live over an incomplete set (which would NAT traffic to listed
    /// destinations). One `nft -f` with the elements would need no gate,
    /// but nft parses 10 000 elements in about 80 ms; the kernel takes them
    /// over netlink in about 20.
    async fn create(
        &mut self,
        plan: &Plan,
        predicted: BTreeMap<String, Vec<Value>>,
        wanted: BTreeSet<IpNet>,
    ) -> Result<Outcome, BackendError> {
        let family = plan.family;
        self.last_rules.remove(&family);
        self.apply(family, &gated_script(plan)).await?;
        let gated = blocking(move || netlink::snapshot(family)).await?;
        let gate = gated
            .observed
            .chains
            .get(BASE_CHAIN)
            .and_then(|c| c.rules.first())
            .filter(|r| **r == predict::gate())
            .and(
                gated
                    .handles
                    .get(BASE_CHAIN)
                    .and_then(|h| h.first())
                    .copied(),
            );
        let Some(handle) = gate else {
            // Someone else wrote into the new table: repair it like drift.
            let why = "the new table is not as written";
            return self
                .reconcile_with_nft(plan, predicted, wanted, None, why)
                .await;
        };
        let write = netlink::Write {
            flush: true,
            add: plan.elements.clone(),
            delete_rule: Some((BASE_CHAIN.to_owned(), handle)),
            ..netlink::Write::default()
        };
        blocking(move || netlink::write_set(family, &write)).await?;
        self.record(family, wanted.clone(), predicted.clone());
        let after = blocking(move || netlink::snapshot(family)).await?;
        verify(plan, &after.observed, &wanted)?;
        // One commit since the gated read, ours: `after` is our write.
        if after.consistent && after.genid == gated.genid.wrapping_add(1) {
            self.learn(family, plan, &predicted, &after);
        }
        Ok(Outcome {
            wrote: true,
            differences: vec![format!("table {} {TABLE} missing", nft_family(family))],
            foreign_jumps: Vec::new(),
        })
    }

    /// The full read and repair with `nft`, used when the netlink read
    /// found the rules, chains or the set's shape other than expected (the
    /// prediction may be what is wrong), or found no consistent state.
    /// `nft -j` decides, as it always has: a difference it confirms is
    /// repaired in one `nft -f` transaction; if it finds our rules, the
    /// netlink form just read becomes the reference.
    async fn reconcile_with_nft(
        &mut self,
        plan: &Plan,
        predicted: BTreeMap<String, Vec<Value>>,
        wanted: BTreeSet<IpNet>,
        snap: Option<&Snapshot>,
        why: &str,
    ) -> Result<Outcome, BackendError> {
        let family = plan.family;
        debug!(family = %family, "reading the table with nft -j: {why}");
        let expected = match self.read_back.get(&family) {
            Some(rb) if rb.predicted == predicted => rb.actual.clone(),
            _ => predicted.clone(),
        };
        let observed = self.observe(family).await?;
        let changes = diff(plan, &observed, &expected, self.last_written.get(&family));
        if changes.is_empty() {
            self.learn_if_unchanged(family, plan, &predicted, snap)
                .await;
            self.record(family, wanted, predicted);
            return Ok(Outcome::default());
        }
        if let Some(write) = changes.element_write(plan) {
            self.learn_if_unchanged(family, plan, &predicted, snap)
                .await;
            blocking(move || netlink::write_set(family, &write)).await?;
            self.record(family, wanted, predicted);
            return Ok(Outcome {
                wrote: true,
                differences: changes.differences,
                foreign_jumps: Vec::new(),
            });
        }
        let script = transaction(plan, &changes);
        self.last_rules.remove(&family);
        let before = blocking(netlink::genid).await.ok();
        self.apply(family, &script).await?;
        self.record(family, wanted.clone(), predicted.clone());

        // Rules written: read back, to verify and to learn how this nft
        // prints them and how the kernel holds them.
        if changes.create_table || changes.rewrite_rules {
            let after = blocking(move || netlink::snapshot(family)).await?;
            verify(plan, &after.observed, &wanted)?;
            if after.consistent && before.map(|g| g.wrapping_add(1)) == Some(after.genid) {
                self.learn(family, plan, &predicted, &after);
            }
            let printed = self.observe(family).await?;
            let actual: BTreeMap<String, Vec<Value>> = plan
                .chains
                .iter()
                .map(|c| {
                    let rules = printed
                        .chains
                        .get(&c.name)
                        .map(|f| f.rules.clone())
                        .unwrap_or_default();
                    (c.name.clone(), rules)
                })
                .collect();
            if actual != predicted {
                warn!(
                    family = %family,
                    "nft prints our rules differently than predicted; using its own form as the reference"
                );
            }
            self.read_back
                .insert(family, ReadBack { predicted, actual });
        }
        Ok(Outcome {
            wrote: true,
            differences: changes.differences,
            foreign_jumps: Vec::new(),
        })
    }
}

impl Backend for Nftables {
    fn describe(&self) -> String {
        match &self.version {
            Some(version) => format!("nftables {version}"),
            None => "nftables".into(),
        }
    }

    fn render(&self, desired: &Ruleset) -> String {
        script(&plan_nft(desired))
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        let family = desired.family;
        let plan = plan_nft(desired);
        let predicted = plan.predicted();
        let wanted: BTreeSet<IpNet> = plan.elements.iter().copied().collect();

        // A config change on a table we wrote or confirmed: send the element
        // delta straight away, without reading the table first. The
        // transaction is atomic and fails whole if the set is not what we
        // left (a deleted element is missing), and then the read below
        // repairs.
        if let Some(previous) = self.last_written.get(&family)
            && *previous != wanted
            && self.last_rules.get(&family) == Some(&predicted)
        {
            let remove: Vec<IpNet> = previous.difference(&wanted).copied().collect();
            let add: Vec<IpNet> = wanted.difference(previous).copied().collect();
            let differences = vec![format!(
                "set {SET}: {} added, {} removed",
                count(add.len(), "element"),
                remove.len()
            )];
            let write = netlink::Write {
                remove,
                add,
                ..netlink::Write::default()
            };
            match blocking(move || netlink::write_set(family, &write)).await {
                Ok(()) => {
                    self.last_written.insert(family, wanted);
                    return Ok(Outcome {
                        wrote: true,
                        differences,
                        foreign_jumps: Vec::new(),
                    });
                }
                // What we left is still `last_written`, so the read below
                // sees the set as changed outside the agent.
                Err(err) => {
                    debug!(family = %family, error = %err, "element delta refused; reading the table");
                }
            }
        }

        // Read the table over netlink and compare; write only the elements
        // when only they differ.
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let snap = blocking(move || netlink::snapshot(family)).await?;
            if !snap.observed.table {
                return self.create(&plan, predicted, wanted).await;
            }
            if !snap.consistent {
                continue;
            }
            let expected = self.expected_bytecode(family, &plan, &predicted);
            let changes = diff(
                &plan,
                &snap.observed,
                &expected,
                self.last_written.get(&family),
            );
            if changes.is_empty() {
                self.record(family, wanted, predicted);
                return Ok(Outcome::default());
            }
            let Some(mut write) = changes.element_write(&plan) else {
                let why = changes.differences.join("; ");
                return self
                    .reconcile_with_nft(&plan, predicted, wanted, Some(&snap), &why)
                    .await;
            };
            // Only onto the state just read: a delta is exact only there.
            write.genid = Some(snap.genid);
            match netlink_write(family, write).await {
                Ok(()) => {
                    self.record(family, wanted, predicted);
                    return Ok(Outcome {
                        wrote: true,
                        differences: changes.differences,
                        foreign_jumps: Vec::new(),
                    });
                }
                // Someone committed since the read: read again.
                Err(err) if err.errno == Some(netlink::ERESTART) => continue,
                Err(err) => return Err(err.into_backend()),
            }
        }
        // No consistent read (a ruleset changing all the time): nft decides.
        self.reconcile_with_nft(&plan, predicted, wanted, None, "no consistent netlink read")
            .await
    }

    async fn cleanup(
        &mut self,
        family: Family,
        _chain: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        let fam = nft_family(family);
        self.last_written.remove(&family);
        self.last_rules.remove(&family);
        self.read_back.remove(&family);
        self.learned.remove(&family);
        match exec::run("nft", &["delete", "table", fam, TABLE], None).await {
            Ok(_) => Ok(vec![format!(
                "nftables {family}: removed table {fam} {TABLE}"
            )]),
            Err(err) if is_absent(&err) => Ok(Vec::new()),
            Err(err) => Err(err),
        }
    }
}

/// `netlink::write_set` off the runtime's thread, keeping the errno (a
/// stale generation is retried, not reported).
async fn netlink_write(family: Family, write: netlink::Write) -> Result<(), NlError> {
    match tokio::task::spawn_blocking(move || netlink::write_set(family, &write)).await {
        Ok(result) => result,
        Err(err) => Err(NlError {
            op: "netlink task".into(),
            errno: None,
            detail: err.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_shrinks_rewrite_the_set_only_through_nft() {
        let nets = |n: u32| -> Vec<IpNet> {
            (0..n)
                .map(|i| IpNet::V4(ipnet::Ipv4Net::new_assert((0x0a00_0000 + i * 4).into(), 30)))
                .collect()
        };
        let plan = plan_nft(&ruleset(Family::Ipv4, &["192.0.2.0/24"]));
        let shrink = |n: u32| Changes {
            set: SetChange::Delta {
                remove: nets(n),
                add: Vec::new(),
            },
            ..Changes::default()
        };
        assert!(transaction(&plan, &shrink(64)).starts_with("delete element"));
        assert!(transaction(&plan, &shrink(65)).starts_with("flush set"));
        // Over netlink a delta stays a delta, whatever its size.
        let write = shrink(10_000).element_write(&plan).unwrap();
        assert_eq!((write.flush, write.remove.len()), (false, 10_000));
    }
    use crate::plan::PortRange;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn ruleset(family: Family, list: &[&str]) -> Ruleset {
        Ruleset {
            family,
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            no_masquerade: nets(list),
            random_fully: true,
            to_ports: Vec::new(),
        }
    }

    fn defaults() -> Ruleset {
        ruleset(
            Family::Ipv4,
            &[
                "169.254.0.0/16",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
            ],
        )
    }

    fn two_intervals() -> Ruleset {
        let mut rs = ruleset(Family::Ipv4, &["10.0.0.0/8", "192.0.2.1/32"]);
        rs.random_fully = false;
        rs.to_ports = vec![
            PortRange {
                first: 1024,
                last: 29999,
            },
            PortRange {
                first: 32768,
                last: 65535,
            },
        ];
        rs
    }

    /// `nft -j list table ip ip-masq-agent` after `sync` with the defaults,
    /// captured from nft 1.0.6 in a test namespace.
    const DEFAULTS_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "ip-masq-agent", "handle": 1}}, {"set": {"family": "ip", "name": "no-masquerade", "table": "ip-masq-agent", "type": "ipv4_addr", "handle": 2, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"prefix": {"addr": "169.254.0.0", "len": 16}}, {"prefix": {"addr": "172.16.0.0", "len": 12}}, {"prefix": {"addr": "192.168.0.0", "len": 16}}]}}, {"chain": {"family": "ip", "table": "ip-masq-agent", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 110, "policy": "accept"}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 3, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"return": null}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@no-masquerade"}}, {"return": null}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 5, "expr": [{"masquerade": {"flags": "fully-random"}}]}}]}"#;

    /// The same after `sync --to-ports=1024-29999,32768-65535
    /// --random-fully=false` with `[10.0.0.0/8, 192.0.2.1/32]` and
    /// `masqLinkLocal: true`.
    const TWO_INTERVALS_JSON: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "ip-masq-agent", "handle": 2}}, {"set": {"family": "ip", "name": "no-masquerade", "table": "ip-masq-agent", "type": "ipv4_addr", "handle": 4, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.1"]}}, {"chain": {"family": "ip", "table": "ip-masq-agent", "name": "share-0", "handle": 1}}, {"chain": {"family": "ip", "table": "ip-masq-agent", "name": "share-1", "handle": 2}}, {"chain": {"family": "ip", "table": "ip-masq-agent", "name": "postrouting", "handle": 3, "type": "nat", "hook": "postrouting", "prio": 110, "policy": "accept"}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "share-0", "handle": 6, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp", "sctp"]}}}, {"masquerade": {"port": {"range": [1024, 29999]}}}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "share-1", "handle": 8, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp", "sctp"]}}}, {"masquerade": {"port": {"range": [32768, 65535]}}}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 9, "expr": [{"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}, {"return": null}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 10, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@no-masquerade"}}, {"return": null}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 13, "expr": [{"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp", "sctp"]}}}, {"vmap": {"key": {"numgen": {"mode": "random", "mod": 61744, "offset": 0}}, "data": {"set": [[{"range": [0, 28975]}, {"jump": {"target": "share-0"}}], [{"range": [28976, 61743]}, {"jump": {"target": "share-1"}}]]}}}]}}, {"rule": {"family": "ip", "table": "ip-masq-agent", "chain": "postrouting", "handle": 14, "expr": [{"masquerade": null}]}}]}"#;

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
    fn only_element_changes_go_over_netlink() {
        let rs = defaults();
        let plan = plan_nft(&rs);
        let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
        let mut drifted = live(&rs);
        if let Some(set) = drifted.set.as_mut() {
            set.elements.remove(&"10.0.0.0/8".parse().unwrap());
        }
        let changes = diff(&plan, &drifted, &plan.predicted(), Some(&written));
        let write = changes.element_write(&plan).unwrap();
        assert!(write.flush && write.remove.is_empty());
        assert_eq!(write.add, plan.elements);
        if let Some(chain) = drifted.chains.get_mut(BASE_CHAIN) {
            chain.rules.pop();
        }
        let changes = diff(&plan, &drifted, &plan.predicted(), Some(&written));
        assert_eq!(changes.element_write(&plan), None, "rules go through nft");
        let changes = diff(&plan, &Observed::default(), &plan.predicted(), None);
        assert_eq!(changes.element_write(&plan), None, "so does a new table");
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
    fn parse_captured_defaults() {
        let observed = parse_json(DEFAULTS_JSON, Family::Ipv4).unwrap();
        assert!(observed.table);
        let set = observed.set.clone().unwrap();
        assert!(set.shape_ok);
        assert_eq!(set.foreign_elements, 0);
        assert_eq!(
            set.elements.iter().copied().collect::<Vec<_>>(),
            nets(&[
                "10.0.0.0/8",
                "169.254.0.0/16",
                "172.16.0.0/12",
                "192.168.0.0/16"
            ])
        );
        assert_eq!(observed.chains.len(), 1);
        let chain = &observed.chains[BASE_CHAIN];
        assert!(chain.base_ok);
        assert_eq!(chain.rules.len(), 3);
        // The ip6 table's view of the same text finds nothing of ours.
        assert!(!parse_json(DEFAULTS_JSON, Family::Ipv6).unwrap().table);
    }

    #[test]
    fn predictions_equal_what_nft_prints() {
        for (rs, captured) in [
            (defaults(), DEFAULTS_JSON),
            (two_intervals(), TWO_INTERVALS_JSON),
        ] {
            let plan = plan_nft(&rs);
            let observed = parse_json(captured, Family::Ipv4).unwrap();
            let changes = diff(&plan, &observed, &plan.predicted(), None);
            assert!(changes.is_empty(), "{changes:?}");
            assert_eq!(
                observed.set.unwrap().elements,
                plan.elements.iter().copied().collect()
            );
        }
    }

    #[test]
    fn parse_rejects_what_is_not_ours() {
        let json = r#"{"nftables": [{"table": {"family": "ip", "name": "ip-masq-agent", "handle": 1}}, {"set": {"family": "ip", "name": "no-masquerade", "table": "ip-masq-agent", "type": "ipv4_addr", "handle": 2, "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, {"range": ["192.0.2.5", "192.0.2.9"]}]}}]}"#;
        let observed = parse_json(json, Family::Ipv4).unwrap();
        let set = observed.set.unwrap();
        assert_eq!(set.foreign_elements, 1);
        assert_eq!(set.elements.len(), 1);
        assert!(parse_json("not json", Family::Ipv4).is_err());
        assert!(parse_json("{}", Family::Ipv4).is_err());
    }

    fn live(rs: &Ruleset) -> Observed {
        // What the kernel holds right after `rs` was applied.
        let plan = plan_nft(rs);
        Observed {
            table: true,
            set: Some(ObservedSet {
                shape_ok: true,
                elements: plan.elements.iter().copied().collect(),
                foreign_elements: 0,
            }),
            chains: plan
                .chains
                .iter()
                .map(|c| {
                    let chain = ObservedChain {
                        base_ok: c.base,
                        rules: c.rules.iter().map(|r| r.json.clone()).collect(),
                    };
                    (c.name.clone(), chain)
                })
                .collect(),
        }
    }

    #[test]
    fn missing_table_gets_the_whole_script() {
        let plan = plan_nft(&defaults());
        let changes = diff(&plan, &Observed::default(), &plan.predicted(), None);
        assert!(changes.create_table);
        assert_eq!(changes.differences, vec!["table ip ip-masq-agent missing"]);
        assert_eq!(transaction(&plan, &changes), script(&plan));
    }

    #[test]
    fn config_change_sends_only_the_delta() {
        let old = ruleset(Family::Ipv4, &["10.0.0.0/9", "192.168.0.0/16"]);
        let new = ruleset(
            Family::Ipv4,
            &["10.0.0.0/9", "10.128.0.0/9", "203.0.113.0/24"],
        );
        let observed = live(&old);
        let written: BTreeSet<IpNet> = plan_nft(&old).elements.into_iter().collect();
        let plan = plan_nft(&new);
        let changes = diff(&plan, &observed, &plan.predicted(), Some(&written));
        assert_eq!(
            changes.set,
            SetChange::Delta {
                remove: nets(&["10.0.0.0/9", "192.168.0.0/16"]),
                add: nets(&["10.0.0.0/8", "203.0.113.0/24"]),
            }
        );
        assert!(!changes.rewrite_rules);
        assert_eq!(
            changes.differences,
            vec!["set no-masquerade: 2 elements added, 2 removed"]
        );
        assert_eq!(
            transaction(&plan, &changes),
            "delete element ip ip-masq-agent no-masquerade { 10.0.0.0/9, 192.168.0.0/16 }
add element ip ip-masq-agent no-masquerade { 10.0.0.0/8, 203.0.113.0/24 }
"
        );
        // Unknown history (agent just started): the same exact delta.
        assert_eq!(
            diff(&plan, &observed, &plan.predicted(), None).set,
            changes.set
        );
    }

    #[test]
    fn matching_node_needs_nothing() {
        let rs = two_intervals();
        let plan = plan_nft(&rs);
        let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
        let changes = diff(&plan, &live(&rs), &plan.predicted(), Some(&written));
        assert!(changes.is_empty(), "{changes:?}");
        assert!(changes.differences.is_empty());
    }

    #[test]
    fn set_drift_rewrites_the_set() {
        let rs = defaults();
        let plan = plan_nft(&rs);
        let written: BTreeSet<IpNet> = plan.elements.iter().copied().collect();
        let mut observed = live(&rs);
        if let Some(set) = observed.set.as_mut() {
            set.elements.remove(&"10.0.0.0/8".parse().unwrap());
        }
        let changes = diff(&plan, &observed, &plan.predicted(), Some(&written));
        assert_eq!(changes.set, SetChange::Rewrite);
        assert_eq!(
            changes.differences,
            vec!["set no-masquerade changed outside the agent: 1 element missing, 0 extra"]
        );
        assert_eq!(
            transaction(&plan, &changes),
            "flush set ip ip-masq-agent no-masquerade
add element ip ip-masq-agent no-masquerade { 10.0.0.0/8, 169.254.0.0/16, 172.16.0.0/12, 192.168.0.0/16 }
"
        );
    }

    #[test]
    fn rule_drift_flushes_and_refills_the_chain_never_recreates_it() {
        let rs = defaults();
        let plan = plan_nft(&rs);
        let mut observed = live(&rs);
        if let Some(chain) = observed.chains.get_mut(BASE_CHAIN) {
            chain.rules.remove(1);
        }
        let changes = diff(&plan, &observed, &plan.predicted(), None);
        assert_eq!(changes.set, SetChange::None);
        assert_eq!(changes.differences, vec!["chain postrouting rules differ"]);
        assert_eq!(
            transaction(&plan, &changes),
            "flush chain ip ip-masq-agent postrouting
add rule ip ip-masq-agent postrouting fib daddr type local return
add rule ip ip-masq-agent postrouting ip daddr @no-masquerade return
add rule ip ip-masq-agent postrouting masquerade fully-random
"
        );
    }

    #[test]
    fn wrong_set_type_is_replaced_after_its_rule_is_gone() {
        let rs = defaults();
        let plan = plan_nft(&rs);
        let mut observed = live(&rs);
        if let Some(set) = observed.set.as_mut() {
            set.shape_ok = false;
        }
        let changes = diff(&plan, &observed, &plan.predicted(), None);
        let text = transaction(&plan, &changes);
        let flush = text
            .find("flush chain ip ip-masq-agent postrouting")
            .unwrap();
        let delete = text
            .find("delete set ip ip-masq-agent no-masquerade")
            .unwrap();
        let add = text
            .find("add set ip ip-masq-agent no-masquerade { type ipv4_addr; flags interval; }")
            .unwrap();
        let rule = text
            .find("add rule ip ip-masq-agent postrouting ip daddr")
            .unwrap();
        assert!(flush < delete && delete < add && add < rule, "{text}");
    }

    #[test]
    fn unused_share_chains_are_removed() {
        let old = two_intervals();
        let mut new = old.clone();
        new.to_ports.clear();
        let plan = plan_nft(&new);
        let changes = diff(&plan, &live(&old), &plan.predicted(), None);
        assert_eq!(changes.stale_chains, vec!["share-0", "share-1"]);
        let text = transaction(&plan, &changes);
        assert!(
            text.starts_with("flush chain ip ip-masq-agent postrouting\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "delete chain ip ip-masq-agent share-0\ndelete chain ip ip-masq-agent share-1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn absent_is_recognised() {
        let err = BackendError::new(
            ErrorKind::Rejected,
            "nft delete table ip ip-masq-agent",
            "exited with exit status: 1: Error: Could not process rule: No such file or directory",
        );
        assert!(is_absent(&err));
        let other = BackendError::new(ErrorKind::Rejected, "nft", "Operation not permitted");
        assert!(!is_absent(&other));
    }
}
