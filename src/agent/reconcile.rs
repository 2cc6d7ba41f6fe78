//! One pass over every family: plan the desired rules from the enforced
//! config, let the backend make the kernel match, then record what happened.
//!
//! Applying and recording are separate steps: [`Reconciler::sync`] only
//! plans and applies; `record` turns each family's result into metrics, log
//! lines and the probes' state. The daemon and the one-shot `sync` command
//! both run exactly this.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::Trigger;
use crate::backend::conflict::Conflict;
use crate::backend::{Backend, BackendError, Outcome};
use crate::config::Config;
use crate::plan::{self, Family, Ruleset, Settings};
use crate::telemetry::{SyncOutcome, Telemetry};

/// What a sync of all families came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResult {
    /// Nothing to enforce yet (no valid config ever loaded).
    NoConfig,
    Ok,
    Failed(BackendError),
}

/// The backend and what syncing has learned so far.
pub struct Reconciler<B: Backend> {
    settings: Settings,
    pub(super) backend: B,
    pub(super) telemetry: Telemetry,
    /// What each family was last made to hold, to tell drift from change.
    applied: HashMap<Family, Ruleset>,
    /// Foreign jumps to our chain already warned about.
    foreign_jumps: HashMap<Family, Vec<String>>,
    /// Conflicting foreign nat rules already warned about (None: not
    /// looked yet), and the last failure to look, each once per change.
    conflicts: HashMap<Family, Vec<String>>,
    conflict_error: HashMap<Family, String>,
    /// What the last completed conflict check judged: the path's
    /// generation and the rules and config it was judged against. An
    /// unchanged generation with the same rules and config has the same
    /// answer, so a busy node's resyncs skip the path's reads.
    conflicts_checked: HashMap<Family, (u32, Ruleset, Config)>,
    /// Failed syncs in a row.
    failures: u32,
    /// A one-shot command reports an unchanged node at info level; the
    /// daemon, every resync, only at debug.
    once: bool,
}

impl<B: Backend> Reconciler<B> {
    pub fn new(settings: Settings, backend: B, telemetry: Telemetry) -> Self {
        Reconciler {
            settings,
            backend,
            telemetry,
            applied: HashMap::new(),
            foreign_jumps: HashMap::new(),
            conflicts: HashMap::new(),
            conflict_error: HashMap::new(),
            conflicts_checked: HashMap::new(),
            failures: 0,
            once: false,
        }
    }

    /// The rule-shaping settings this reconciler writes with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// For a one-shot command: an unchanged node is worth an info line.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Failed syncs in a row (0 after a success).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Reconcile every family with `config`. IPv6 is skipped in a cycle
    /// where IPv4 failed, as upstream does.
    pub async fn sync(&mut self, config: &Config, trigger: Trigger) -> SyncResult {
        for family in plan::families(&self.settings) {
            let desired = plan::plan(config, &self.settings, family);
            let started = Instant::now();
            let result = self.backend.reconcile(&desired).await;
            let elapsed = started.elapsed();
            // Other programs' rules are judged against what now holds.
            let found = match &result {
                Ok(_) => self.check_conflicts(&desired, config).await,
                Err(_) => None,
            };
            if let Err(err) = self.record(trigger, desired, result, elapsed) {
                self.failures = self.failures.saturating_add(1);
                return SyncResult::Failed(err);
            }
            if let Some(found) = found {
                self.record_conflicts(family, found);
            }
        }
        self.failures = 0;
        self.telemetry.health.sync_succeeded();
        SyncResult::Ok
    }

    /// Look for conflicting foreign rules, unless the path's generation,
    /// the rules and the config are what the last check judged (None then:
    /// nothing to record).
    async fn check_conflicts(
        &mut self,
        desired: &Ruleset,
        config: &Config,
    ) -> Option<Result<Vec<Conflict>, BackendError>> {
        let family = desired.family;
        let generation = self.backend.path_generation(family).await;
        if let (Some(now), Some((then, rules, judged))) =
            (generation, self.conflicts_checked.get(&family))
            && now == *then
            && rules == desired
            && judged == config
        {
            debug!(family = %family, generation = now, "nat postrouting path unchanged since the last conflict check");
            return None;
        }
        let checking = Instant::now();
        let found = self.backend.conflicts(desired, config).await;
        let elapsed_ms = checking.elapsed().as_micros() as f64 / 1000.0;
        debug!(family = %family, elapsed_ms, "nat postrouting path checked for conflicting rules");
        match (generation, &found) {
            (Some(now), Ok(_)) => {
                self.conflicts_checked
                    .insert(family, (now, desired.clone(), config.clone()));
            }
            _ => {
                self.conflicts_checked.remove(&family);
            }
        }
        Some(found)
    }

    /// Conflicting foreign rules: a WARN for each one that appeared, an
    /// info line for each one gone, the gauge and the readiness text; all
    /// only when the set changed. Failing to look is not a sync failure.
    fn record_conflicts(&mut self, family: Family, found: Result<Vec<Conflict>, BackendError>) {
        let found = match found {
            Ok(found) => {
                self.conflict_error.remove(&family);
                found
            }
            Err(err) => {
                let text = err.to_string();
                if self.conflict_error.get(&family) != Some(&text) {
                    warn!(family = %family, "cannot read the nat postrouting path to look for conflicting rules: {text}");
                    self.conflict_error.insert(family, text);
                }
                return;
            }
        };
        let lines: Vec<String> = found.iter().map(ToString::to_string).collect();
        let first = !self.conflicts.contains_key(&family);
        let known = self.conflicts.entry(family).or_default();
        if *known == lines && !first {
            return;
        }
        for line in lines.iter().filter(|l| !known.contains(l)) {
            warn!(family = %family, "conflicting nat rule: {line}");
        }
        for line in known.iter().filter(|l| !lines.contains(l)) {
            info!(family = %family, "conflicting nat rule gone: {line}");
        }
        self.telemetry
            .metrics
            .conflicting_rules(family, lines.len());
        self.telemetry.health.conflicts(family, lines.clone());
        *known = lines;
    }

    /// Metrics, logs and the probes' state for one family's result.
    fn record(
        &mut self,
        trigger: Trigger,
        desired: Ruleset,
        result: Result<Outcome, BackendError>,
        elapsed: Duration,
    ) -> Result<(), BackendError> {
        let family = desired.family;
        let trigger = trigger.as_str();
        // Microsecond precision, printed without float noise (18.058, not
        // 18.058144000000002).
        let elapsed_ms = elapsed.as_micros() as f64 / 1000.0;
        let metrics = &self.telemetry.metrics;
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(err) => {
                metrics.sync(family, SyncOutcome::Failed, elapsed, Some(err.kind.label()));
                error!(family = %family, trigger, result = "failed", kind = err.kind.label(), "sync failed: {err}");
                self.telemetry
                    .health
                    .sync_failed(format!("{family}: {err}"));
                return Err(err);
            }
        };
        if outcome.wrote {
            metrics.sync(family, SyncOutcome::Applied, elapsed, None);
            let reason = match self.applied.get(&family) {
                None => "initial",
                Some(previous) if *previous == desired => "drift",
                Some(_) => "config change",
            };
            let what = outcome.differences.join("; ");
            if reason == "drift" {
                metrics.drift_repaired(family);
                warn!(family = %family, trigger, result = "applied", elapsed_ms, "drift repaired: {what}");
            } else {
                info!(family = %family, trigger, result = "applied", reason, elapsed_ms, "rules applied: {what}");
            }
        } else {
            metrics.sync(family, SyncOutcome::Unchanged, elapsed, None);
            if self.once {
                info!(family = %family, trigger, result = "unchanged", elapsed_ms, "rules unchanged");
            } else {
                debug!(family = %family, trigger, result = "unchanged", elapsed_ms, "rules unchanged");
            }
        }
        let known = self.foreign_jumps.entry(family).or_default();
        if *known != outcome.foreign_jumps {
            for jump in &outcome.foreign_jumps {
                warn!(family = %family, rule = %jump, "another rule we do not own also jumps to {}; traffic may traverse it twice", self.settings.chain);
            }
            *known = outcome.foreign_jumps;
        }
        self.applied.insert(family, desired);
        Ok(())
    }
}
