//! The iptables backend: the upstream agent's exact rules, written the safe way.
//!
//! State we own per family: the nat chain (`--masq-chain`) and one jump to it
//! at the end of POSTROUTING. A reconcile reads `iptables-save -t nat`,
//! compares our chain and jump with what the ruleset wants, and when they
//! differ sends one `iptables-restore --noflush` transaction: the chain line
//! `:CHAIN - [0:0]` flushes only our chain, so its new content appears
//! atomically, and jump fixes ride in the same transaction. Nothing else in the
//! table is read for more than finding our objects, and nothing else is written.
//!
//! Expected state is predicted in `iptables-save` form (which reorders matches
//! and rounds probabilities); if a given iptables prints differently, the
//! read-back after our own write becomes the reference, so a node is never
//! rewritten just because of formatting.
//!
//! This file does the I/O (probe, reconcile, cleanup); `rules` is the pure
//! text and diff, `variant` picks the binaries.

mod rules;
mod variant;

use std::collections::HashMap;
use std::fmt::Write as _;

use tracing::{debug, warn};

use super::exec::{self, Output};
use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use crate::plan::{ChainName, Family, Ruleset};
use rules::{
    Observed, diff, jump_save_line, legacy_jump_save_line, parse_save, predicted_chain_rules,
    restore_chain_lines, transaction,
};
use variant::{RANDOM_FULLY_SINCE, Tool};

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

/// The iptables implementation of [`Backend`].
#[derive(Debug)]
pub struct Iptables {
    variant: Variant,
    version: Option<Version>,
    read_back: HashMap<Family, ReadBack>,
}

impl Iptables {
    pub fn new(variant: Variant) -> Self {
        Iptables {
            variant,
            version: None,
            read_back: HashMap::new(),
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
        if self.version.is_none_or(|v| v >= RANDOM_FULLY_SINCE) {
            vec!["-w", LOCK_WAIT, "--noflush"]
        } else {
            vec!["--noflush"]
        }
    }

    async fn save(&self, family: Family) -> Result<Output, BackendError> {
        let program = self.variant.binary(family, Tool::Save);
        exec::run(&program, &["-t", "nat"], None).await
    }

    async fn observe(&self, family: Family, chain: &ChainName) -> Result<Observed, BackendError> {
        Ok(parse_save(&self.save(family).await?.stdout, chain))
    }

    async fn restore(&self, family: Family, payload: &str) -> Result<(), BackendError> {
        let program = self.variant.binary(family, Tool::Restore);
        let args = self.restore_args();
        debug!(family = %family, command = %program, payload, "iptables-restore");
        exec::run(&program, &args, Some(payload)).await.map(drop)
    }

    /// Whether the legacy nat table is loaded in this network namespace.
    /// Reading it otherwise would load the kernel module and create it.
    async fn legacy_table_present(family: Family) -> bool {
        let names = match family {
            Family::Ipv4 => "/proc/net/ip_tables_names",
            Family::Ipv6 => "/proc/net/ip6_tables_names",
        };
        tokio::fs::read_to_string(names)
            .await
            .map(|text| text.lines().any(|l| l.trim() == "nat"))
            .unwrap_or(false)
    }
}

impl Backend for Iptables {
    fn describe(&self) -> String {
        match self.version {
            Some(Version(a, b, c)) => format!("iptables ({}) v{a}.{b}.{c}", self.variant.label()),
            None => format!("iptables ({})", self.variant.label()),
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
        let random_fully = self.random_fully(desired);
        let predicted = predicted_chain_rules(desired, random_fully);
        let expected = match self.read_back.get(&family) {
            Some(rb) if rb.predicted == predicted => rb.actual.clone(),
            _ => predicted.clone(),
        };

        let observed = self.observe(family, chain).await?;
        let changes = diff(&observed, chain, &expected);
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
        let check = diff(&after, chain, &after.chain_rules);
        if !after.chain_exists || check.add_jump || !check.delete_jumps.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Verify,
                &self.variant.binary(family, Tool::Save),
                format!("after writing, {}", check.differences.join("; ")),
            ));
        }
        if changes.rewrite_chain {
            if after.chain_rules != predicted {
                warn!(
                    family = %family,
                    "iptables prints our rules differently than predicted; using its own form as the reference"
                );
            }
            self.read_back.insert(
                family,
                ReadBack {
                    predicted,
                    actual: after.chain_rules,
                },
            );
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
        let mut report = Vec::new();
        let name = format!("{} {}", self.variant.label(), family);
        if self.variant == Variant::Legacy && !Self::legacy_table_present(family).await {
            return Ok(report);
        }
        let observed = match self.observe(family, chain).await {
            Ok(observed) => observed,
            Err(err) if err.kind == ErrorKind::NotFound => return Ok(report),
            Err(err) => return Err(err),
        };
        let ours = jump_save_line(chain);
        let legacy = legacy_jump_save_line(chain);
        let mut payload = String::from("*nat\n");
        let mut foreign = Vec::new();
        for jump in &observed.jumps {
            if *jump == ours || *jump == legacy {
                let _ = writeln!(
                    payload,
                    "-D POSTROUTING {}",
                    jump.trim_start_matches("-A POSTROUTING ")
                );
                report.push(format!("{name}: removed jump to {chain}"));
            } else {
                foreign.push(jump.clone());
            }
        }
        if observed.chain_exists {
            if foreign.is_empty() {
                let _ = writeln!(payload, "-F {chain}\n-X {chain}");
                report.push(format!("{name}: removed chain {chain}"));
            } else {
                report.push(format!(
                    "{name}: kept chain {chain}: still entered by rules we do not own: {}",
                    foreign.join(" | ")
                ));
            }
        }
        if report.is_empty() {
            return Ok(report);
        }
        payload.push_str("COMMIT\n");
        self.probe_version().await?;
        self.restore(family, &payload).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests;
