//! The native nftables backend: the non-masquerade list in a kernel interval
//! set, so a new connection costs one set lookup whatever the list's length.
//!
//! State we own per family is one table and nothing outside it:
//! `table ip ip-masq-agent` (or `ip6`) holding the interval set
//! `no-masquerade` (and, when the config has `podCIDRs` ranges of the family,
//! the interval set `pod-sources`), the base chain `postrouting` (nat, hook postrouting,
//! priority `srcnat + 10`, so it runs after kube-proxy's and CNI chains at
//! `srcnat`, as upstream's appended jump does) and, with several `--to-ports`
//! intervals, one `share-N` chain per interval.
//!
//! What must stay true:
//! - The base chain is created once and never deleted on a sync: at equal
//!   priority the most recently created chain runs first, so recreating it
//!   would silently reorder NAT against other tables. Drift in its rules is
//!   repaired with `flush chain` + the rules, in one transaction.
//! - The set holds the aggregated list ([`crate::plan::aggregate_for_set`]), so the
//!   kernel's set equals the desired state element for element and a config
//!   change is sent as an exact delta (delete + add elements) in one kernel
//!   transaction. A set changed behind our back is rewritten (flush + add),
//!   also in one transaction.
//! - Every reconcile (but the daemon's config change, sent blind and
//!   repaired if refused) reads the live table first and writes nothing
//!   when it already matches.
//! - The masquerade rule is never live over an incomplete set: creation is
//!   gated (see `Memory::create`), and every element change is atomic.
//! - The pod-source set is small (the `podCIDRs` ranges) and changes only
//!   with the config: `nft` writes it whole, with the table or in the one
//!   transaction that repairs it; a config change that touches it is never
//!   sent as a blind element delta.
//!
//! Who does what: [`table`] plans the table, [`observe`] reads what is
//! live, [`diff`] says what must change. The set's elements (the large
//! part) are read and written over netlink ([`netlink`]: one dump, one
//! batch), because `nft` needs tens of milliseconds to list or edit 10 000
//! interval elements. The table, chains and rules (small, rarely changed)
//! are written by `nft -f`, and read over netlink as the kernel's
//! expressions, compared with a prediction (`bytecode`). Whenever that read
//! finds rules, chains or the set's type other than expected, `nft -j list
//! table` decides: its JSON is compared with a second prediction, and if
//! this nft prints our rules differently, the read-back after our own write
//! becomes the reference (as the iptables backend does), so a node is never
//! rewritten just because of formatting; only a read-back that the
//! generation id proves holds our commit alone, so a rule another writer
//! slipped in right after ours stays drift. This file holds the strategies
//! and what each family's table taught them ([`Memory`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use ipnet::IpNet;
use serde_json::Value;
use tracing::{debug, warn};

use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use super::{drift, exec};
use crate::plan::{ChainName, Family, Ruleset};
use diff::{delta_text, diff, transaction};
use netlink::{Snapshot, blocking};
use observe::parse_json;
use table::{NftRule, nft_family};

pub use observe::{Observed, ObservedChain, ObservedSet};
pub use table::{BASE_CHAIN, GATE, POD_SET, Plan, SET, TABLE, gated_script, plan_nft, script};

mod bytecode;
mod diff;
mod elements;
pub mod netlink;
mod observe;
mod table;
mod wire;

#[cfg(test)]
mod tests;

/// How much of a transaction the debug log shows.
const LOGGED_SCRIPT: usize = 4096;
/// Netlink reads tried for a consistent one (no commit by anyone while
/// reading) before `nft -j` decides instead.
const SNAPSHOT_ATTEMPTS: usize = 3;

fn is_absent(err: &BackendError) -> bool {
    err.kind == ErrorKind::Absent
}

/// Each chain's rules in the predicted `nft -j` form.
type Rules = BTreeMap<String, Vec<Value>>;

/// The rules of one plan (predicted form) and the form a read really shows
/// them in, so the same rules are never taken for drift twice.
#[derive(Debug, Clone)]
struct Reference<R> {
    predicted: Rules,
    actual: BTreeMap<String, Vec<R>>,
}

impl<R: Clone> Reference<R> {
    /// The actual form if this is for `predicted`.
    fn for_rules(reference: Option<&Self>, predicted: &Rules) -> Option<BTreeMap<String, Vec<R>>> {
        reference
            .filter(|r| r.predicted == *predicted)
            .map(|r| r.actual.clone())
    }
}

/// What one family's table has taught us, and the strategies that use it.
#[derive(Debug, Default)]
struct Memory {
    /// The set content we last wrote or found matching (None before our
    /// first look): a set that differs from it changed outside the agent.
    elements: Option<BTreeSet<IpNet>>,
    /// The pod-source set we last wrote or found matching (None before our
    /// first look; `Some(None)`: no such set).
    pods: Option<Option<Vec<IpNet>>>,
    /// The rules of the table we last wrote or found matching; None while
    /// an `nft` write is unconfirmed. While they equal the plan's, a config
    /// change is a pure set delta, sent blind.
    rules: Option<Rules>,
    /// How this nft prints our rules, read back after our own write.
    printed: Option<Reference<Value>>,
    /// How this kernel holds our rules (netlink's form), learned from a read
    /// that showed exactly our write or that `nft -j` confirmed.
    held: Option<Reference<String>>,
    /// Chains of our table we cannot remove, as last reported.
    unremovable: Vec<String>,
}

/// One reconcile's plan, with what is derived from it once.
struct Target<'a> {
    plan: &'a Plan,
    predicted: Rules,
    wanted: BTreeSet<IpNet>,
}

impl Target<'_> {
    fn family(&self) -> Family {
        self.plan.family
    }
}

fn wrote(differences: Vec<String>) -> Outcome {
    Outcome {
        wrote: true,
        differences,
        foreign_jumps: Vec::new(),
    }
}

impl Memory {
    /// Warns once per change about chains of our table we leave alone.
    fn report(&mut self, family: Family, changes: &diff::Changes) {
        if self.unremovable != changes.unremovable_chains {
            for what in &changes.unremovable_chains {
                warn!(family = %family, "{what}");
            }
            self.unremovable = changes.unremovable_chains.clone();
        }
    }

    /// The kernel now holds `target`: its elements under its rules.
    fn record(&mut self, target: &Target<'_>) {
        self.elements = Some(target.wanted.clone());
        self.pods = Some(target.plan.pod_elements().map(<[IpNet]>::to_vec));
        self.rules = Some(target.predicted.clone());
    }

    /// The element delta (remove, add) a config change needs, when the
    /// table holds our rules for this plan and only the set changes.
    fn pending_delta(&self, target: &Target<'_>) -> Option<(Vec<IpNet>, Vec<IpNet>)> {
        let previous = self.elements.as_ref()?;
        if *previous == target.wanted || self.rules.as_ref() != Some(&target.predicted) {
            return None;
        }
        if self.pods.as_ref().map(Option::as_deref) != Some(target.plan.pod_elements()) {
            return None;
        }
        let remove = previous.difference(&target.wanted).copied().collect();
        let add = target.wanted.difference(previous).copied().collect();
        Some((remove, add))
    }

    /// Our rules as a netlink read should show them: learned from this
    /// kernel for these rules, else predicted.
    fn expected_bytecode(&self, target: &Target<'_>) -> BTreeMap<String, Vec<String>> {
        Reference::for_rules(self.held.as_ref(), &target.predicted)
            .unwrap_or_else(|| target.plan.predicted_bytecode())
    }

    /// Our rules as `nft -j` should print them.
    fn expected_json(&self, target: &Target<'_>) -> Rules {
        Reference::for_rules(self.printed.as_ref(), &target.predicted)
            .unwrap_or_else(|| target.predicted.clone())
    }

    /// Takes the plan's rules in `snap` as this kernel's form of them.
    /// Callers make sure `snap` shows exactly our rules.
    fn learn(&mut self, target: &Target<'_>, snap: &Snapshot) {
        let held = per_plan_chain(target.plan, &snap.observed);
        if held != target.plan.predicted_bytecode() {
            debug!(
                family = %target.family(),
                "the kernel holds our rules in another form than predicted; using its own as the reference"
            );
        }
        self.held = Some(Reference {
            predicted: target.predicted.clone(),
            actual: held,
        });
    }

    /// Learns from `snap` if nothing committed since it was read (then
    /// `nft -j`, which just found our rules, saw the same state).
    async fn learn_if_unchanged(&mut self, target: &Target<'_>, snap: Option<&Snapshot>) {
        let Some(snap) = snap.filter(|s| s.consistent) else {
            return;
        };
        if let Ok(now) = blocking(netlink::genid).await
            && now == snap.genid
        {
            self.learn(target, snap);
        }
    }

    async fn reconcile(&mut self, target: &Target<'_>) -> Result<Outcome, BackendError> {
        let family = target.family();
        // A config change on a table we wrote or confirmed: send the element
        // delta straight away, without reading the table first. The
        // transaction is atomic and fails whole if the set is not what we
        // left (a deleted element is missing), and then the read below
        // repairs.
        if let Some((remove, add)) = self.pending_delta(target) {
            let differences = vec![delta_text(&add, &remove)];
            let write = netlink::Write {
                remove,
                add,
                ..netlink::Write::default()
            };
            match blocking(move || netlink::write_set(family, &write)).await {
                Ok(()) => {
                    self.elements = Some(target.wanted.clone());
                    return Ok(wrote(differences));
                }
                // What we left is still `elements`, so the read below sees
                // the set as changed outside the agent.
                Err(err) => {
                    debug!(family = %family, error = %err.into_backend(), "element delta refused; reading the table");
                }
            }
        }

        // Read the table over netlink and compare; write only the elements
        // when only they differ.
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let names = chain_names(target.plan);
            let snap = blocking(move || netlink::snapshot(family, &names)).await?;
            if !snap.observed.table {
                return self.create(target).await;
            }
            if !snap.consistent {
                continue;
            }
            let expected = self.expected_bytecode(target);
            let changes = diff(
                target.plan,
                &snap.observed,
                &expected,
                self.elements.as_ref(),
            );
            self.report(family, &changes);
            if changes.is_empty() {
                self.record(target);
                return Ok(Outcome::default());
            }
            let Some(mut write) = changes.element_write(target.plan) else {
                let why = changes.differences.join("; ");
                return self.reconcile_with_nft(target, Some(&snap), &why).await;
            };
            // Only onto the state just read: a delta is exact only there.
            write.genid = Some(snap.genid);
            match blocking(move || netlink::write_set(family, &write)).await {
                Ok(()) => {
                    self.record(target);
                    return Ok(wrote(changes.differences));
                }
                // Someone committed since the read: read again.
                Err(err) if err.errno == Some(netlink::ERESTART) => continue,
                Err(err) => return Err(err.into_backend()),
            }
        }
        // No consistent read (a ruleset changing all the time): nft decides.
        self.reconcile_with_nft(target, None, "no consistent netlink read")
            .await
    }

    /// A node without our table. `nft -f` creates it gated (empty set,
    /// [`GATE`] first in the base chain), then one netlink transaction
    /// fills the set and deletes the gate. Between the two the table passes
    /// all traffic untouched, as if it did not exist; the masquerade rule is
    /// never live over an incomplete set (which would NAT traffic to listed
    /// destinations). One `nft -f` with the elements would need no gate,
    /// but nft parses 10 000 elements in about 80 ms; the kernel takes them
    /// over netlink in about 20.
    async fn create(&mut self, target: &Target<'_>) -> Result<Outcome, BackendError> {
        let (plan, family) = (target.plan, target.family());
        self.rules = None;
        apply(family, &gated_script(plan)).await?;
        let names = chain_names(target.plan);
        let gated = blocking(move || netlink::snapshot(family, &names)).await?;
        let first_rule = gated
            .observed
            .chains
            .get(BASE_CHAIN)
            .and_then(|c| c.rules.first());
        let gate = first_rule.filter(|r| **r == NftRule::Gate.bytecode()).and(
            gated
                .handles
                .get(BASE_CHAIN)
                .and_then(|h| h.first())
                .copied(),
        );
        let Some(handle) = gate else {
            // Someone else wrote into the new table: repair it like drift.
            return self
                .reconcile_with_nft(target, None, "the new table is not as written")
                .await;
        };
        let write = netlink::Write {
            flush: true,
            add: plan.elements.clone(),
            delete_rule: Some((BASE_CHAIN.to_owned(), handle)),
            ..netlink::Write::default()
        };
        blocking(move || netlink::write_set(family, &write)).await?;
        self.record(target);
        let names = chain_names(target.plan);
        let after = blocking(move || netlink::snapshot(family, &names)).await?;
        verify(plan, &after.observed, &target.wanted)?;
        // One commit since the gated read, ours: `after` is our write.
        if after.consistent && after.genid == gated.genid.wrapping_add(1) {
            self.learn(target, &after);
        }
        Ok(wrote(vec![format!(
            "table {} {TABLE} missing",
            nft_family(family)
        )]))
    }

    /// The full read and repair with `nft`, used when the netlink read
    /// found the rules, chains or the set's shape other than expected (the
    /// prediction may be what is wrong), or found no consistent state.
    /// `nft -j` decides: a difference it confirms is repaired in one `nft
    /// -f` transaction; if it finds our rules, the netlink form just read
    /// becomes the reference.
    async fn reconcile_with_nft(
        &mut self,
        target: &Target<'_>,
        snap: Option<&Snapshot>,
        why: &str,
    ) -> Result<Outcome, BackendError> {
        let (plan, family) = (target.plan, target.family());
        debug!(family = %family, "reading the table with nft -j: {why}");
        let observed = observe(family).await?;
        let changes = diff(
            plan,
            &observed,
            &self.expected_json(target),
            self.elements.as_ref(),
        );
        self.report(family, &changes);
        if changes.is_empty() {
            self.learn_if_unchanged(target, snap).await;
            self.record(target);
            return Ok(Outcome::default());
        }
        if let Some(write) = changes.element_write(plan) {
            self.learn_if_unchanged(target, snap).await;
            blocking(move || netlink::write_set(family, &write)).await?;
            self.record(target);
            return Ok(wrote(changes.differences));
        }
        let script = transaction(plan, &changes);
        self.rules = None;
        let before = blocking(netlink::genid).await.ok();
        apply(family, &script).await?;
        self.record(target);

        // Rules written: read back, to verify and to learn how this nft
        // prints them and how the kernel holds them.
        if changes.create_table || changes.rewrite_rules {
            let names = chain_names(target.plan);
            let after = blocking(move || netlink::snapshot(family, &names)).await?;
            verify(plan, &after.observed, &target.wanted)?;
            // Exactly one commit since `before`, ours: the read shows our
            // write and nothing else.
            let ours_only =
                after.consistent && before.map(|g| g.wrapping_add(1)) == Some(after.genid);
            if ours_only {
                self.learn(target, &after);
            }
            let printed = per_plan_chain(plan, &observe(family).await?);
            let still_ours = ours_only && blocking(netlink::genid).await.ok() == Some(after.genid);
            if printed == target.predicted {
                self.printed = None;
            } else if still_ours {
                warn!(
                    family = %family,
                    "nft prints our rules differently than predicted; using its own form as the reference"
                );
                self.printed = Some(Reference {
                    predicted: target.predicted.clone(),
                    actual: printed,
                });
            } else {
                // Someone else committed right after our write: what we read
                // is not only ours, so it never becomes the reference (a
                // rule slipped in now would survive every resync).
                let text = plan
                    .chains
                    .iter()
                    .map(|c| {
                        let found = printed.get(&c.name).map(Vec::as_slice).unwrap_or(&[]);
                        let wanted = target
                            .predicted
                            .get(&c.name)
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        (found, wanted, &c.name)
                    })
                    .filter(|(found, wanted, _)| found != wanted)
                    .map(|(found, wanted, name)| {
                        drift::describe(name, found, wanted, Value::to_string)
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                warn!(family = %family, "right after our write, {text}; repaired at the next resync");
            }
        }
        Ok(wrote(changes.differences))
    }
}

/// The plan's chains by name, as a snapshot looks them up.
fn chain_names(plan: &Plan) -> Vec<String> {
    plan.chains.iter().map(|c| c.name.clone()).collect()
}

/// The rules `observed` holds in each of the plan's chains.
fn per_plan_chain<R: Clone>(plan: &Plan, observed: &Observed<R>) -> BTreeMap<String, Vec<R>> {
    plan.chains
        .iter()
        .map(|c| {
            let rules = observed
                .chains
                .get(&c.name)
                .map(|f| f.rules.clone())
                .unwrap_or_default();
            (c.name.clone(), rules)
        })
        .collect()
}

/// After a write: the set holds exactly `wanted` and every chain of the
/// plan exists.
fn verify(
    plan: &Plan,
    after: &Observed<String>,
    wanted: &BTreeSet<IpNet>,
) -> Result<(), BackendError> {
    let exact = |set: Option<&ObservedSet>, want: &BTreeSet<IpNet>| {
        set.is_some_and(|s| s.shape_ok && s.foreign_elements == 0 && s.elements == *want)
    };
    let pods_ok = match plan.pod_elements() {
        Some(pods) => exact(after.pod_set.as_ref(), &pods.iter().copied().collect()),
        None => after.pod_set.is_none(),
    };
    let set_ok = exact(after.set.as_ref(), wanted) && pods_ok;
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
            "after writing, set {SET} {}, set {POD_SET} {} and chains missing: [{}]",
            if exact(after.set.as_ref(), wanted) {
                "matches"
            } else {
                "differs"
            },
            if pods_ok { "matches" } else { "differs" },
            missing.join(", ")
        ),
    ))
}

/// Our table as `nft -j` lists it; an absent table is an empty read.
async fn observe(family: Family) -> Result<Observed, BackendError> {
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

/// One `nft -f -` transaction.
async fn apply(family: Family, script: &str) -> Result<(), BackendError> {
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

/// The nftables implementation of [`Backend`].
#[derive(Debug, Default)]
pub struct Nftables {
    version: Option<String>,
    memory: HashMap<Family, Memory>,
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
}

impl Backend for Nftables {
    fn describe(&self) -> String {
        match &self.version {
            Some(version) => format!("nftables {version}"),
            None => "nftables".into(),
        }
    }

    async fn probe(&mut self) -> Result<(), BackendError> {
        self.probe_version().await.map(drop)
    }

    fn apply_command(&self, _family: Family) -> &'static str {
        "nft -f -"
    }

    fn render(&self, desired: &Ruleset) -> String {
        script(&plan_nft(desired))
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        let plan = plan_nft(desired);
        let target = Target {
            predicted: plan.predicted(),
            wanted: plan.elements.iter().copied().collect(),
            plan: &plan,
        };
        self.memory
            .entry(desired.family)
            .or_default()
            .reconcile(&target)
            .await
    }

    async fn cleanup(
        &mut self,
        family: Family,
        _chain: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        let fam = nft_family(family);
        self.memory.remove(&family);
        // Looked up by name first: on a node without our table (every
        // iptables-backend node, at each start) this costs one netlink
        // request, not nft loading its cache of the whole ruleset. Should
        // netlink fail, nft decides as before.
        if let Ok(false) = blocking(move || netlink::table_exists(family)).await {
            return Ok(CleanupReport::default());
        }
        match exec::run("nft", &["delete", "table", fam, TABLE], None).await {
            Ok(_) => Ok(CleanupReport {
                removed: vec![format!("nftables {family}: removed table {fam} {TABLE}")],
                kept: Vec::new(),
            }),
            Err(err) if is_absent(&err) => Ok(CleanupReport::default()),
            Err(err) => Err(err),
        }
    }
}
