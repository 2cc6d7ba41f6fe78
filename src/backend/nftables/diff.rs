//! What must change to turn the live table into the plan, and the one nft
//! transaction (or the one netlink element write) that does it. Pure.
//!
//! What must stay true: a transaction never deletes the base chain unless
//! its hook, type or priority is wrong (recreating it would reorder NAT
//! against other tables at the same priority); chains are flushed before
//! a set is replaced, so no rule refers to a set that goes; element
//! deletes come before adds, since a new element may overlap one that goes.
//! The pod-source set (a few `podCIDRs` ranges) is compared like the other
//! and, when it differs, always rewritten whole by `nft`; a table whose
//! plan has no pod-source set and holds none is compared exactly as before.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ipnet::IpNet;

use super::netlink;
use super::observe::Observed;
use super::observe::ObservedSet;
use super::table::{
    POD_SET, Plan, SET, SHARE_PREFIX, TABLE, addr_type, base_chain_spec, elements_text, nft_family,
    priority_text, script,
};
use crate::backend::drift;
use crate::logging::Escaped;

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

/// What to do with the pod-source set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PodSetChange {
    #[default]
    None,
    /// Missing: add it with its elements.
    Create,
    /// Wrong type or flags: delete and add it (its rule is rewritten too).
    Recreate,
    /// Other elements than planned: flush + add, in one transaction.
    Rewrite,
    /// No longer planned: delete it (after the rule using it is gone).
    Delete,
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
    pub pod_set: PodSetChange,
    /// Flush every chain of ours and write all rules again.
    pub rewrite_rules: bool,
    /// The base chain exists with another hook, type or priority: it cannot
    /// be changed in place, so it is deleted and added (only then).
    pub recreate_base: bool,
    /// Chains of ours to add before their rules.
    pub missing_chains: Vec<String>,
    /// Chains of our table not in the plan (`share-N` no longer used, or
    /// someone else's), removed.
    pub stale_chains: Vec<String>,
    /// Chains of our table not in the plan whose names are not safe to
    /// pass to nft: reported, never written into a script.
    pub unremovable_chains: Vec<String>,
    pub differences: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.create_table
            && self.set == SetChange::None
            && self.pod_set == PodSetChange::None
            && !self.rewrite_rules
    }

    /// The netlink transaction for these changes when only the set's
    /// elements differ (table, set, chains and rules as planned); None when
    /// `nft` must write.
    pub fn element_write(&self, plan: &Plan) -> Option<netlink::Write> {
        if self.create_table || self.rewrite_rules || self.pod_set != PodSetChange::None {
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

/// How a config change's element delta is reported.
pub(super) fn delta_text(add: &[IpNet], remove: &[IpNet]) -> String {
    format!(
        "set {SET}: {} added, {} removed",
        count(add.len(), "element"),
        remove.len()
    )
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
pub fn diff<R: PartialEq + RuleText>(
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
                changes.differences.push(delta_text(&add, &remove));
                changes.set = SetChange::Delta { remove, add };
            }
        }
    }
    diff_pod_set(plan, observed.pod_set.as_ref(), &mut changes);
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
                if chain.base && (!found.base_ok || found.priority != Some(plan.priority)) {
                    changes.rewrite_rules = true;
                    changes.recreate_base = true;
                    changes.differences.push(format!(
                        "chain {} is not a nat postrouting chain at {} with policy accept",
                        chain.name,
                        priority_text(plan.priority)
                    ));
                }
                if found.rules != want {
                    changes.rewrite_rules = true;
                    changes.differences.push(drift::describe(
                        &chain.name,
                        &found.rules,
                        want,
                        RuleText::rule_text,
                    ));
                }
            }
        }
    }
    // Every other chain in our table goes: the table is ours, so a chain we
    // did not plan is either a `share-N` no longer used or someone else's,
    // which would otherwise live on unseen (a jump to it can only come from
    // inside the table, from rules we rewrite).
    for name in observed.chains.keys() {
        if plan.chains.iter().any(|c| c.name == *name) {
            continue;
        }
        let shown = Escaped(name);
        if !is_plain_name(name) {
            // Never put a name from the kernel into a script unless it is
            // one nft reads as a name and nothing else.
            changes.unremovable_chains.push(format!(
                "chain {shown} in table {family} {TABLE} is not ours, and its name is not one the agent passes to nft: \
remove it with nft delete chain {family} {TABLE} handle N"
            ));
            continue;
        }
        changes.rewrite_rules = true;
        changes.stale_chains.push(name.clone());
        if name.starts_with(SHARE_PREFIX) {
            changes
                .differences
                .push(format!("chain {shown} no longer used"));
        } else {
            changes
                .differences
                .push(format!("chain {shown} in our table is not ours: removed"));
        }
    }
    changes
}

/// A chain name nft reads as one plain identifier (as every chain we write).
fn is_plain_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// A rule as a drift message shows it: the JSON `nft -j` printed, or a
/// netlink read's expression text.
pub trait RuleText {
    fn rule_text(&self) -> String;
}

impl RuleText for serde_json::Value {
    fn rule_text(&self) -> String {
        self.to_string()
    }
}

impl RuleText for String {
    fn rule_text(&self) -> String {
        self.clone()
    }
}

fn diff_pod_set(plan: &Plan, found: Option<&ObservedSet>, changes: &mut Changes) {
    let wanted: Option<BTreeSet<IpNet>> = plan.pod_elements().map(|p| p.iter().copied().collect());
    let (change, why) = match (wanted, found) {
        (None, None) => return,
        (None, Some(_)) => (
            PodSetChange::Delete,
            format!("set {POD_SET} no longer used"),
        ),
        (Some(_), None) => (PodSetChange::Create, format!("set {POD_SET} missing")),
        (Some(_), Some(set)) if !set.shape_ok => (
            PodSetChange::Recreate,
            format!(
                "set {POD_SET} has another type or flags than {} interval",
                addr_type(plan.family)
            ),
        ),
        (Some(want), Some(set)) if set.foreign_elements > 0 || set.elements != want => {
            let missing = want.difference(&set.elements).count();
            let extra = set.elements.difference(&want).count() + set.foreign_elements;
            (
                PodSetChange::Rewrite,
                format!(
                    "set {POD_SET}: {} missing, {extra} extra",
                    count(missing, "element")
                ),
            )
        }
        (Some(_), Some(_)) => return,
    };
    // A set a rule refers to cannot be deleted: that rule goes first.
    if matches!(change, PodSetChange::Delete | PodSetChange::Recreate) {
        changes.rewrite_rules = true;
    }
    changes.pod_set = change;
    changes.differences.push(why);
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
    let add_pod_set = |out: &mut String| {
        let _ = writeln!(
            out,
            "add set {t} {POD_SET} {{ type {}; flags interval; }}",
            addr_type(plan.family)
        );
    };
    let add_pod_elements = |out: &mut String| {
        if let Some(pods) = plan.pod_elements().filter(|p| !p.is_empty()) {
            let _ = writeln!(out, "add element {t} {POD_SET} {}", elements_text(pods));
        }
    };
    match changes.pod_set {
        PodSetChange::None => {}
        PodSetChange::Create => {
            add_pod_set(&mut out);
            add_pod_elements(&mut out);
        }
        PodSetChange::Recreate => {
            let _ = writeln!(out, "delete set {t} {POD_SET}");
            add_pod_set(&mut out);
            add_pod_elements(&mut out);
        }
        PodSetChange::Rewrite => {
            let _ = writeln!(out, "flush set {t} {POD_SET}");
            add_pod_elements(&mut out);
        }
        PodSetChange::Delete => {
            let _ = writeln!(out, "delete set {t} {POD_SET}");
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
                        base_chain_spec(plan.priority)
                    );
                } else {
                    let _ = writeln!(out, "add chain {t} {}", chain.name);
                }
            }
        }
        for chain in &plan.chains {
            for rule in &chain.rules {
                let _ = writeln!(out, "add rule {t} {} {}", chain.name, rule.text());
            }
        }
        for name in &changes.stale_chains {
            let _ = writeln!(out, "delete chain {t} {name}");
        }
    }
    out
}
