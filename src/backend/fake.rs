//! A recording backend for the unit tests of the layers above the seam: it
//! keeps "the kernel" in memory, applies all or nothing, counts writes, can
//! be told to fail, and dumps its state as text. The real backends are
//! tested against the real kernel instead.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::conflict::Conflict;
use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use crate::config::Config;
use crate::plan::{ChainName, Family, Ruleset};

#[derive(Debug, Default)]
pub struct Fake {
    /// What each family holds now.
    pub kernel: BTreeMap<Family, Ruleset>,
    /// Transactions applied so far.
    pub writes: usize,
    /// The last ruleset written.
    pub last: Option<Ruleset>,
    /// When set, every reconcile fails with this kind and changes nothing.
    pub fail: Option<ErrorKind>,
    /// What every conflict check finds.
    pub conflicts: Vec<Conflict>,
}

impl Fake {
    /// The no-masquerade CIDRs `family` holds, as text.
    pub fn cidrs(&self, family: Family) -> Vec<String> {
        self.kernel
            .get(&family)
            .map(|r| r.no_masquerade.iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }

    /// The whole state, one line per family.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for family in self.kernel.keys() {
            let _ = writeln!(out, "{family}: {}", self.cidrs(*family).join(" "));
        }
        out
    }
}

impl Backend for Fake {
    fn describe(&self) -> String {
        "fake".into()
    }

    async fn probe(&mut self) -> Result<(), BackendError> {
        match self.fail {
            Some(kind) => Err(BackendError::new(kind, "fake --version", "refused")),
            None => Ok(()),
        }
    }

    fn apply_command(&self, _family: Family) -> &'static str {
        "fake-restore"
    }

    fn render(&self, desired: &Ruleset) -> String {
        format!("{desired:?}\n")
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        if let Some(kind) = self.fail {
            return Err(BackendError::new(kind, "fake-restore", "refused"));
        }
        if self.kernel.get(&desired.family) == Some(desired) {
            return Ok(Outcome::default());
        }
        self.kernel.insert(desired.family, desired.clone());
        self.last = Some(desired.clone());
        self.writes += 1;
        Ok(Outcome {
            wrote: true,
            differences: vec!["differs".into()],
            foreign_jumps: Vec::new(),
        })
    }

    async fn cleanup(
        &mut self,
        family: Family,
        _: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        Ok(CleanupReport {
            removed: match self.kernel.remove(&family) {
                Some(_) => vec![format!("{family}: removed")],
                None => Vec::new(),
            },
            kept: Vec::new(),
        })
    }

    async fn conflicts(&mut self, _: &Ruleset, _: &Config) -> Result<Vec<Conflict>, BackendError> {
        Ok(self.conflicts.clone())
    }
}
