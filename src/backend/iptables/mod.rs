//! The iptables backend: the upstream agent's exact rules, written the safe way.
//!
//! State we own per family: the nat chain (`--masq-chain`) and one jump to it
//! at the end of POSTROUTING (first, with `--authoritative`). A reconcile reads just those, by name
//! (`iptables -t nat -S CHAIN` and `-S POSTROUTING`, never the whole table,
//! so its cost does not grow with other programs' rules), compares them with
//! what the ruleset wants, and when they differ sends one
//! `iptables-restore --noflush` transaction: the chain line `:CHAIN - [0:0]`
//! flushes only our chain, so its new content appears atomically, and jump
//! fixes ride in the same transaction. Nothing else is written.
//!
//! Expected state is predicted in the form iptables prints (which reorders
//! matches and rounds probabilities); if a given iptables prints differently, the
//! read-back after our own write becomes the reference, so a node is never
//! rewritten just because of formatting, but only when it is our rules in
//! another form (`drift::same_form`): a rule another writer slipped in
//! right after our write stays drift.
//!
//! This file does the I/O (probe, reconcile, cleanup); `rules` is the pure
//! text and diff, `variant` picks the binaries.

mod form;
mod rules;
mod variant;

use std::collections::{HashMap, HashSet};

use tracing::{debug, warn};

use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use super::{drift, exec};
use crate::plan::{ChainName, Family, Ruleset};
use form::same_form;
#[cfg(test)]
use rules::diff;
use rules::{
    Observed, diff_placed, parse_listing, predicted_chain_rules, removal, restore_chain_lines,
    transaction,
};
use variant::{RANDOM_FULLY_SINCE, Tool, is_missing_chain, legacy_table_present};

pub use variant::{
    Variant, VariantEvidence, Version, choose_variant, detect_variant, parse_version,
};

/// Seconds to wait for the xtables lock, as upstream.
const LOCK_WAIT: &str = "5";

/// What we learned reading back our own write, per family.
#[derive(Debug, Clone)]
struct ReadBack {
    predicted: Vec<String>,
    actual: Vec<String>,
}

/// `iptables -w 5 -t nat -S CHAIN` of one variant and family, for the
/// readers of other programs' rules (conflict detection): one chain by
/// name; None when the chain, the table or the tool is not there. A legacy
/// table is only read when the kernel already has it.
pub async fn list_nat(
    variant: Variant,
    family: Family,
    chain: &str,
) -> Result<Option<String>, BackendError> {
    if variant == Variant::Legacy && !legacy_table_present(family, "nat").await {
        return Ok(None);
    }
    let program = variant.binary(family, Tool::Main);
    match exec::run(&program, &["-w", LOCK_WAIT, "-t", "nat", "-S", chain], None).await {
        Ok(out) => Ok(Some(out.stdout)),
        Err(err) if is_missing_chain(&err) || err.kind == ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

/// Whether the legacy nat table of `family` exists in this namespace (read
/// from procfs: asking the legacy tool would create it).
pub async fn legacy_nat_present(family: Family) -> bool {
    legacy_table_present(family, "nat").await
}

/// One `iptables-restore -w 5 --noflush` transaction of one variant and
/// family (the stale-chain removal's write).
pub async fn restore_nat(
    variant: Variant,
    family: Family,
    payload: &str,
) -> Result<(), BackendError> {
    let program = variant.binary(family, Tool::Restore);
    debug!(family = %family, command = %program, payload, "iptables-restore");
    exec::run(&program, &["-w", LOCK_WAIT, "--noflush"], Some(payload))
        .await
        .map(drop)
}

/// The iptables implementation of [`Backend`].
#[derive(Debug)]
pub struct Iptables {
    variant: Variant,
    version: Option<Version>,
    read_back: HashMap<Family, ReadBack>,
    /// Families whose other variant was searched for our objects.
    swept: HashSet<Family>,
}

impl Iptables {
    /// The variant this backend drives.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    pub fn new(variant: Variant) -> Self {
        Iptables {
            variant,
            version: None,
            read_back: HashMap::new(),
            swept: HashSet::new(),
        }
    }

    /// Ask the binary for its version once; a failure is retried next time.
    pub async fn probe_version(&mut self) -> Result<Version, BackendError> {
        if let Some(version) = self.version {
            return Ok(version);
        }
        let program = self.variant.binary(Family::Ipv4, Tool::Main);
        let out = exec::run(&program, &["--version"], None).await?;
        let version = parse_version(&out.stdout).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Rejected,
                &format!("{program} --version"),
                format!("unrecognised version text {:?}", out.stdout.trim()),
            )
        })?;
        self.version = Some(version);
        Ok(version)
    }

    /// `--random-fully` only where the binary knows it; an unknown version
    /// (render without iptables installed) assumes a current one.
    fn random_fully(&self, desired: &Ruleset) -> bool {
        desired.random_fully && self.version.is_none_or(|v| v >= RANDOM_FULLY_SINCE)
    }

    fn restore_args(&self) -> Vec<&'static str> {
        // `-w` on restore appeared with --random-fully's release.
        let mut args = self.lock_args();
        args.push("--noflush");
        args
    }

    /// `iptables -t nat -S CHAIN`: one chain's rules, None when the chain
    /// does not exist. The cost is bounded by that chain, not by the table
    /// (for iptables-nft; the legacy kernel API only hands out whole tables).
    async fn list(&self, family: Family, chain: &str) -> Result<Option<String>, BackendError> {
        let program = self.variant.binary(family, Tool::Main);
        let mut args = self.lock_args();
        args.extend(["-t", "nat", "-S", chain]);
        match exec::run(&program, &args, None).await {
            Ok(out) => Ok(Some(out.stdout)),
            Err(err) if is_missing_chain(&err) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Our chain and the POSTROUTING rules that enter it. iptables-nft
    /// reads just the chain asked for, so both reads run at once; a legacy
    /// read copies the whole table out of the kernel (the x_tables API has
    /// no other), so those run one after the other: on a busy node two
    /// whole-table copies at once would double the peak memory.
    async fn observe(&self, family: Family, chain: &ChainName) -> Result<Observed, BackendError> {
        let (listing, postrouting) = if self.variant == Variant::Nft {
            tokio::join!(
                self.list(family, chain.as_str()),
                self.list(family, "POSTROUTING")
            )
        } else {
            let listing = self.list(family, chain.as_str()).await;
            (listing, self.list(family, "POSTROUTING").await)
        };
        let postrouting = postrouting?.unwrap_or_default();
        Ok(parse_listing(chain, listing?.as_deref(), &postrouting))
    }

    fn lock_args(&self) -> Vec<&'static str> {
        if self.version.is_none_or(|v| v >= RANDOM_FULLY_SINCE) {
            vec!["-w", LOCK_WAIT]
        } else {
            Vec::new()
        }
    }

    /// What the read-back after our chain write teaches. It is compared
    /// with what we wanted, never taken as is: a rule another writer slipped
    /// in right after our write would otherwise become the reference and
    /// survive every resync as "unchanged".
    fn learn(
        &mut self,
        family: Family,
        chain: &ChainName,
        predicted: Vec<String>,
        actual: Vec<String>,
    ) {
        if actual == predicted {
            self.read_back.remove(&family);
        } else if same_form(&predicted, &actual) {
            warn!(
                family = %family,
                "iptables prints our rules differently than predicted; using its own form as the reference"
            );
            self.read_back
                .insert(family, ReadBack { predicted, actual });
        } else {
            // Not ours: drift, repaired at the next resync.
            warn!(
                family = %family,
                "right after our write, {}; repaired at the next resync",
                drift::describe(chain.as_str(), &actual, &predicted, String::clone)
            );
            self.read_back.remove(&family);
        }
    }

    /// Our chain and jump in the variant we do not use (a node that
    /// switched between iptables-nft and iptables-legacy) would keep
    /// masquerading with the old exemptions, unseen: removed once per
    /// family, before our first write, looked up by name.
    async fn sweep_other_variant(&mut self, family: Family, chain: &ChainName) {
        let other = match self.variant {
            Variant::Nft => Variant::Legacy,
            Variant::Legacy => Variant::Nft,
            // Plain is one of the two, and which one is not known.
            Variant::Plain => return,
        };
        if self.swept.contains(&family) {
            return;
        }
        match Iptables::new(other).cleanup(family, chain).await {
            Ok(report) => {
                for line in &report.removed {
                    warn!(family = %family, "iptables ({}) is not in use here; {line}", other.label());
                }
                for line in &report.kept {
                    warn!(family = %family, "iptables ({}) is not in use here, but {line}", other.label());
                }
                self.swept.insert(family);
            }
            Err(err) if err.kind == ErrorKind::NotFound => {
                self.swept.insert(family);
            }
            // Tried again at the next reconcile.
            Err(err) => warn!(
                family = %family,
                "cannot look for our chain in iptables ({}), which is not in use here: {err}",
                other.label()
            ),
        }
    }

    async fn restore(&self, family: Family, payload: &str) -> Result<(), BackendError> {
        let program = self.variant.binary(family, Tool::Restore);
        let args = self.restore_args();
        debug!(family = %family, command = %program, payload, "iptables-restore");
        exec::run(&program, &args, Some(payload)).await.map(drop)
    }
}

impl Backend for Iptables {
    fn describe(&self) -> String {
        match self.version {
            Some(Version(a, b, c)) => format!("iptables ({}) v{a}.{b}.{c}", self.variant.label()),
            None => format!("iptables ({})", self.variant.label()),
        }
    }

    async fn probe(&mut self) -> Result<(), BackendError> {
        self.probe_version().await.map(drop)
    }

    fn apply_command(&self, family: Family) -> &'static str {
        match family {
            Family::Ipv4 => "iptables-restore --noflush",
            Family::Ipv6 => "ip6tables-restore --noflush",
        }
    }

    fn render(&self, desired: &Ruleset) -> String {
        let mut out = String::from("*nat\n");
        restore_chain_lines(desired, self.random_fully(desired), &mut out);
        out.push_str("COMMIT\n");
        out
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        self.probe_version().await?;
        let family = desired.family;
        let chain = &desired.chain;
        self.sweep_other_variant(family, chain).await;
        let random_fully = self.random_fully(desired);
        let predicted = predicted_chain_rules(desired, random_fully);
        let expected = match self.read_back.get(&family) {
            Some(rb) if rb.predicted == predicted => rb.actual.clone(),
            _ => predicted.clone(),
        };

        let observed = self.observe(family, chain).await?;
        let changes = diff_placed(&observed, chain, &expected, desired.authoritative);
        if changes.is_empty() {
            return Ok(Outcome {
                wrote: false,
                differences: Vec::new(),
                foreign_jumps: changes.foreign_jumps,
            });
        }
        let payload = transaction(desired, random_fully, &changes);
        self.restore(family, &payload).await?;

        // Read back: the write must have produced one jump and our chain.
        let after = self.observe(family, chain).await?;
        let check = diff_placed(&after, chain, &after.chain_rules, desired.authoritative);
        if !after.chain_exists || check.add_jump || !check.delete_jumps.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Verify,
                &self.variant.binary(family, Tool::Main),
                format!("after writing, {}", check.differences.join("; ")),
            ));
        }
        if changes.rewrite_chain {
            self.learn(family, chain, predicted, after.chain_rules);
        }
        Ok(Outcome {
            wrote: true,
            differences: changes.differences,
            foreign_jumps: changes.foreign_jumps,
        })
    }

    async fn cleanup(
        &mut self,
        family: Family,
        chain: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        let name = format!("{} {}", self.variant.label(), family);
        if self.variant == Variant::Legacy && !legacy_table_present(family, "nat").await {
            return Ok(CleanupReport::default());
        }
        // Looked up by name: on a node without our chain this is one
        // short command, however many rules other programs keep.
        let observed = match self.list(family, chain.as_str()).await {
            Ok(None) => return Ok(CleanupReport::default()),
            Ok(Some(listing)) => {
                let postrouting = self.list(family, "POSTROUTING").await?;
                parse_listing(chain, Some(&listing), &postrouting.unwrap_or_default())
            }
            Err(err) if err.kind == ErrorKind::NotFound => return Ok(CleanupReport::default()),
            Err(err) => return Err(err),
        };
        let (payload, report) = removal(&observed, chain, &name);
        let Some(payload) = payload else {
            return Ok(report);
        };
        self.probe_version().await?;
        self.restore(family, &payload).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
