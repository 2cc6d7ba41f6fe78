//! The seam between the agent and the kernel.
//!
//! A backend has one job: make the kernel hold a [`Ruleset`] for one family,
//! touching nothing but what the agent owns. `reconcile` observes the live
//! state first and writes only when it differs, in one atomic transaction;
//! `render` shows the transaction a fresh node would get; `cleanup` removes
//! what we own. Everything above this module speaks `Ruleset` and
//! [`ErrorKind`], never tool text: each backend renders its own rules and
//! names its own commands. [`select`] picks one; [`fake`] stands in for
//! both in the unit tests of the layers above.

pub mod conflict;
pub mod drift;
pub mod exec;
#[cfg(test)]
pub mod fake;
pub mod iptables;
pub mod nftables;
pub mod select;

use std::fmt;

use crate::config::Config;
use crate::plan::{ChainName, Family, Ruleset};

/// What a reconcile found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Whether anything was written to the kernel.
    pub wrote: bool,
    /// What differed from the desired state (empty when unchanged), in words
    /// an operator can act on, e.g. "jump from POSTROUTING missing".
    pub differences: Vec<String>,
    /// Rules we do not own that also jump to our chain (reported, never touched).
    pub foreign_jumps: Vec<String>,
}

/// Why a backend call failed, so callers (and metrics) ask a question
/// instead of matching strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The tool is not installed.
    NotFound,
    /// Another process held the xtables lock past our wait.
    LockHeld,
    /// Not allowed (not root / missing NET_ADMIN).
    Permission,
    /// The tool rejected what we sent.
    Rejected,
    /// What was asked about does not exist (no such table, chain or set).
    Absent,
    /// The tool did not answer in time.
    Timeout,
    /// Spawning or talking to the tool failed.
    Io,
    /// The live state reads back differently from what we just wrote.
    Verify,
    /// The tool printed more than the agent reads from any tool.
    TooLarge,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::NotFound,
        ErrorKind::LockHeld,
        ErrorKind::Permission,
        ErrorKind::Rejected,
        ErrorKind::Absent,
        ErrorKind::Timeout,
        ErrorKind::Io,
        ErrorKind::Verify,
        ErrorKind::TooLarge,
    ];

    /// A short stable label (logs, metrics).
    pub fn label(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::LockHeld => "lock_held",
            ErrorKind::Permission => "permission",
            ErrorKind::Rejected => "rejected",
            ErrorKind::Absent => "absent",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Io => "io",
            ErrorKind::Verify => "verify",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

/// A failed kernel operation: which command, and what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendError {
    pub kind: ErrorKind,
    pub command: String,
    pub detail: String,
}

impl BackendError {
    pub fn new(kind: ErrorKind, command: &str, detail: impl Into<String>) -> Self {
        BackendError {
            kind,
            command: command.to_owned(),
            detail: detail.into(),
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.command,
            self.kind.label(),
            self.detail
        )
    }
}

impl std::error::Error for BackendError {}

/// What `cleanup` did, one line per object, for the operator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub removed: Vec<String>,
    /// Objects of ours left in place, each with why and what to do (a rule
    /// we do not own still enters our chain): the node is not clean.
    pub kept: Vec<String>,
}

impl CleanupReport {
    pub fn is_empty(&self) -> bool {
        self.removed.is_empty() && self.kept.is_empty()
    }
}

/// The kernel seam. One value serves both families.
#[allow(async_fn_in_trait)] // used generically inside this crate only
pub trait Backend {
    /// e.g. "iptables (nf_tables) v1.8.9"; logged at start.
    fn describe(&self) -> String;

    /// Ask the tool for its version: it is logged at start, and iptables
    /// needs it to decide `--random-fully`.
    async fn probe(&mut self) -> Result<(), BackendError>;

    /// The command `render`'s text is fed to, for `render`'s header.
    fn apply_command(&self, family: Family) -> &'static str;

    /// The transaction a node without any of our state would receive.
    fn render(&self, desired: &Ruleset) -> String;

    /// Make the kernel hold `desired`; write nothing if it already does.
    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError>;

    /// Remove our jump(s) and chain for `family`.
    async fn cleanup(
        &mut self,
        family: Family,
        chain: &ChainName,
    ) -> Result<CleanupReport, BackendError>;

    /// Other programs' nat rules that override what `desired` decides for
    /// `config`'s pod traffic ([`conflict`]): read-only, bounded by the nat
    /// postrouting path. A backend without a kernel finds none.
    async fn conflicts(
        &mut self,
        desired: &Ruleset,
        config: &Config,
    ) -> Result<Vec<conflict::Conflict>, BackendError> {
        let _ = (desired, config);
        Ok(Vec::new())
    }

    /// A cheap token that changes whenever `family`'s nat postrouting path
    /// may have: an unchanged token means [`Backend::conflicts`] would read
    /// the same path. None: no such token, the path must be read.
    async fn path_generation(&self, family: Family) -> Option<u32> {
        let _ = family;
        None
    }
}
