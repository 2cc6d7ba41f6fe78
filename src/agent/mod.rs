//! The agent loop: next trigger, reload, sync, record.
//!
//! Invariants an operator relies on:
//! - The last valid config is enforced until a new valid one replaces it; an
//!   invalid config is reported once per distinct error and never written.
//! - Every resync observes the kernel and writes only when it differs, so an
//!   unchanged node sees no writes (and no xtables lock contention).
//! - The resync period runs start to start, whatever a sync costs.
//! - A failed kernel write is retried with backoff; the loop never exits on it.
//! - SIGTERM/SIGINT stop the loop promptly, even mid-sync, and leave the rules
//!   in place (a rolling update must not change traffic). SIGHUP reloads now.

mod reconcile;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{error, info, warn};

pub use reconcile::{Reconciler, SyncResult};

use crate::backend::Backend;
use crate::config::{self, Config, Fragment, LoadOptions, Loaded};
use crate::logging::Escaped;
use crate::plan::{Family, Settings};
use crate::source::{ChangeKind, Content, Part, Read, Sources};
use crate::telemetry::{CidrList, Telemetry};

/// After this many failed syncs in a row, a `SyncFailed` Event is reported
/// (with the API source): one failure is often a passing lock conflict.
pub const SYNC_FAILED_AFTER: u32 = 3;

/// How often the loop proves it is alive to the liveness probe while idle.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Why a reload happened: the `trigger` of logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Startup,
    Resync,
    FileChange,
    ApiChange,
    Signal,
    Retry,
}

impl Trigger {
    /// The triggers that read the config (a retry only writes again).
    pub const READS: [Trigger; 5] = [
        Trigger::Startup,
        Trigger::Resync,
        Trigger::FileChange,
        Trigger::ApiChange,
        Trigger::Signal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Resync => "resync",
            Trigger::FileChange => "file_event",
            Trigger::ApiChange => "api_event",
            Trigger::Signal => "signal",
            Trigger::Retry => "retry",
        }
    }
}

impl From<ChangeKind> for Trigger {
    fn from(kind: ChangeKind) -> Self {
        match kind {
            ChangeKind::File => Trigger::FileChange,
            ChangeKind::Api => Trigger::ApiChange,
        }
    }
}

/// Retry delays after a failed sync: 0.8 s doubling to 30 s, with jitter,
/// reset after a success (the shape kube-runtime's watcher uses).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    const INITIAL: Duration = Duration::from_millis(800);
    const MAX: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Backoff { failures: 0 }
    }

    /// The delay before the next attempt, given how many failed in a row.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.failures.min(8);
        self.failures = self.failures.saturating_add(1);
        let base = Self::INITIAL.saturating_mul(1 << exp).min(Self::MAX);
        // Up to +25 % jitter so a fleet does not retry in lockstep.
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = base.mul_f64(f64::from(nanos % 1000) / 4000.0);
        (base + jitter).min(Self::MAX)
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What loading learned about one part (a file, a ConfigMap key): what was
/// read last, so unchanged bytes cost no parse; its last valid contents,
/// which stay in force while it is invalid; what was already reported.
#[derive(Default)]
struct PartMemory {
    content: Option<Content>,
    good: Option<Good>,
    error: Option<String>,
    warnings: Vec<String>,
}

/// A part's last valid contents: a whole config (one source, read as
/// upstream reads its file) or a fragment to merge.
enum Good {
    Whole(Config),
    Fragment(Fragment),
}

/// What loading has learned: each part's memory in the sources' order, the
/// enforced config, and a merge conflict already reported.
#[derive(Default)]
struct LoadMemory {
    parts: Vec<(String, PartMemory)>,
    config: Option<Config>,
    merge_error: Option<String>,
}

impl LoadMemory {
    /// The first problem a part has, for the readiness text.
    fn first_error(&self) -> Option<String> {
        self.parts
            .iter()
            .find_map(|(name, part)| part.error.as_ref().map(|e| format!("{name}: {e}")))
            .or_else(|| self.merge_error.clone())
    }
}

/// The agent: the config sources, what loading learned, and the reconciler.
pub struct Agent<B: Backend> {
    load_options: LoadOptions,
    /// `--backend`'s value, which the fingerprint counts.
    backend_flag: &'static str,
    /// The resync period before any config was loaded.
    default_period: Duration,
    sources: Sources,
    loaded: LoadMemory,
    reconciler: Reconciler<B>,
}

impl<B: Backend> Agent<B> {
    pub fn new(
        settings: Settings,
        load_options: LoadOptions,
        sources: Sources,
        backend: B,
        telemetry: Telemetry,
    ) -> Self {
        Agent {
            backend_flag: crate::plan::DEFAULT_BACKEND,
            default_period: Config::defaults(load_options.all_reserved_ranges).resync_interval,
            load_options,
            sources,
            loaded: LoadMemory::default(),
            reconciler: Reconciler::new(settings, backend, telemetry),
        }
    }

    fn telemetry(&self) -> &Telemetry {
        &self.reconciler.telemetry
    }

    /// Read every source again. Returns whether the enforced config changed.
    /// Unchanged parts are not parsed again; an invalid part keeps its last
    /// valid contents in force and is logged once per distinct error; a part
    /// that disappeared takes its contents with it. Nothing is enforced
    /// until every source has delivered once.
    pub fn reload(&mut self, trigger: Trigger) -> bool {
        let read = self.sources.read();
        if read.iter().any(|(_, part)| part.read == Read::NotYet) {
            return false;
        }
        let whole = self.sources.is_whole();
        let mut previous: Vec<(String, PartMemory)> = std::mem::take(&mut self.loaded.parts);
        let mut changed = previous.len() != read.len();
        for (index, part) in read {
            let mut memory = match previous.iter().position(|(name, _)| *name == part.name) {
                Some(at) => previous.swap_remove(at).1,
                None => {
                    changed = true;
                    PartMemory::default()
                }
            };
            changed |= self.load_part(trigger, index, &part, &mut memory, whole);
            self.loaded.parts.push((part.name, memory));
        }
        for (name, _) in &previous {
            info!(trigger = trigger.as_str(), source = %Escaped(name), "config source gone; its contribution is removed");
            self.telemetry().metrics.fragment_removed(name);
        }
        let all_valid = self
            .loaded
            .parts
            .iter()
            .all(|(_, part)| part.error.is_none());
        self.telemetry().metrics.set_config_valid(all_valid);
        if !changed {
            return false;
        }
        let Some(config) = self.effective(trigger, whole) else {
            return false;
        };
        self.enforce(trigger, whole, config)
    }

    /// Read and (when its bytes changed) parse one part. Returns whether
    /// its valid contents changed.
    fn load_part(
        &self,
        trigger: Trigger,
        index: usize,
        part: &Part,
        memory: &mut PartMemory,
        whole: bool,
    ) -> bool {
        let content = match &part.read {
            Read::Ready(content) => content,
            Read::Failed(err) => {
                // Forget what was read before, so that the same valid
                // content coming back is accepted again (and says so).
                memory.content = None;
                self.rejected(trigger, &part.name, memory, err.clone());
                return false;
            }
            Read::NotYet => return false,
        };
        if memory.content.as_ref() == Some(content) {
            return false;
        }
        memory.content = Some(content.clone());
        let parsed = match (content, whole) {
            (Content::Bytes(bytes), true) => config::parse(bytes, &self.load_options)
                .map(|l| (Some(Good::Whole(l.config)), l.warnings)),
            (Content::Absent, true) => Ok((
                Some(Good::Whole(Loaded::absent(&self.load_options).config)),
                Vec::new(),
            )),
            (Content::Bytes(bytes), false) => config::parse_fragment(bytes, &self.load_options)
                .map(|f| (Some(Good::Fragment(f.clone())), f.warnings)),
            // A fragment that is not there contributes nothing.
            (Content::Absent, false) => Ok((None, Vec::new())),
        };
        match parsed {
            Ok((good, warnings)) => {
                self.telemetry().metrics.config_load(true, trigger.as_str());
                if !whole {
                    self.telemetry().metrics.fragment_valid(&part.name, true);
                }
                if let Some(previous) = memory.error.take() {
                    info!(trigger = trigger.as_str(), source = %Escaped(&part.name), previous_error = %Escaped(&previous), "config is valid again");
                }
                if warnings != memory.warnings {
                    for warning in &warnings {
                        warn!(source = %Escaped(&part.name), "{}", Escaped(warning));
                        self.telemetry().metrics.config_warning();
                    }
                    memory.warnings = warnings;
                }
                memory.good = good;
                true
            }
            Err(err) => {
                // Upstream's text first, where in the file (a manifest's data
                // counts its own lines), then what it probably meant.
                let mut text = err.to_string();
                if let Some(place) = self
                    .sources
                    .get(index)
                    .and_then(|s| s.locate(&part.name, &err))
                {
                    text.push_str(&format!(" ({place})"));
                }
                if let Some(hint) = err.hint() {
                    text.push_str(&format!("; hint: {hint}"));
                }
                if let Some(source) = self.sources.get(index) {
                    source.report_invalid(&part.name, content, &text);
                }
                self.rejected(trigger, &part.name, memory, text);
                false
            }
        }
    }

    fn rejected(&self, trigger: Trigger, name: &str, memory: &mut PartMemory, text: String) {
        let metrics = &self.telemetry().metrics;
        metrics.config_load(false, trigger.as_str());
        if !self.sources.is_whole() {
            metrics.fragment_valid(name, false);
        }
        if memory.error.as_deref() == Some(text.as_str()) {
            return;
        }
        let keeping = match (&memory.good, &self.loaded.config) {
            (Some(_), _) if !self.sources.is_whole() => {
                Some("keeping its last valid contents".to_owned())
            }
            (_, Some(current)) => Some(format!(
                "keeping the last valid config {}",
                self.fingerprint(current)
            )),
            _ => None,
        };
        match keeping {
            Some(keeping) => error!(
                trigger = trigger.as_str(),
                source = %Escaped(name),
                "Error syncing configuration: {}; {keeping}",
                Escaped(&text)
            ),
            None => error!(
                trigger = trigger.as_str(),
                source = %Escaped(name),
                "Error syncing configuration: {}; no valid config yet, writing nothing",
                Escaped(&text)
            ),
        }
        memory.error = Some(text);
    }

    /// The config every part's valid contents add up to; `None` when there
    /// is none yet, or the union is a conflict (reported once).
    fn effective(&mut self, trigger: Trigger, whole: bool) -> Option<Config> {
        if whole {
            return match self.loaded.parts.first() {
                Some((
                    _,
                    PartMemory {
                        good: Some(Good::Whole(config)),
                        ..
                    },
                )) => Some(config.clone()),
                _ => None,
            };
        }
        let fragments: Vec<(String, &Fragment)> = self
            .loaded
            .parts
            .iter()
            .filter_map(|(name, part)| match &part.good {
                Some(Good::Fragment(fragment)) => Some((name.clone(), fragment)),
                _ => None,
            })
            .collect();
        match config::merge(&fragments, &self.load_options) {
            Ok(merged) => {
                if let Some(previous) = self.loaded.merge_error.take() {
                    info!(trigger = trigger.as_str(), previous_error = %Escaped(&previous), "merged config is valid again");
                }
                Some(merged.config)
            }
            Err(err) => {
                let text = err.to_string();
                self.telemetry().metrics.set_config_valid(false);
                if self.loaded.merge_error.as_deref() != Some(text.as_str()) {
                    error!(
                        trigger = trigger.as_str(),
                        sources = %self.sources,
                        "Error merging the config sources: {}; keeping the last valid config",
                        Escaped(&text)
                    );
                    self.loaded.merge_error = Some(text);
                }
                None
            }
        }
    }

    /// Name the `--backend` in use, for the fingerprint.
    pub fn backend_flag(mut self, backend: &'static str) -> Self {
        self.backend_flag = backend;
        self
    }

    /// The fingerprint of `config` as this node enforces it (flags included).
    fn fingerprint(&self, config: &Config) -> String {
        let settings = self.reconciler.settings();
        let all_reserved = self.load_options.all_reserved_ranges;
        crate::plan::fingerprint(config, settings, all_reserved, self.backend_flag)
    }

    /// Make `config` the enforced one. Returns whether it changed.
    fn enforce(&mut self, trigger: Trigger, whole: bool, config: Config) -> bool {
        if self.loaded.config.as_ref() == Some(&config) {
            return false;
        }
        let fingerprint = self.fingerprint(&config);
        let origin = match (whole, self.loaded.parts.first()) {
            (true, Some((_, part))) => match (&part.content, self.sources.get(0)) {
                (Some(content), Some(source)) => source.origin(content),
                _ => "file",
            },
            _ => "merged",
        };
        info!(
            trigger = trigger.as_str(),
            from = %self.sources,
            source = origin,
            fingerprint = %fingerprint,
            config = %config.to_json(),
            "using config"
        );
        let count = |list: CidrList, family: Family| {
            let cidrs = match list {
                CidrList::NonMasquerade => &config.non_masquerade_cidrs,
                CidrList::Masquerade => &config.masquerade_cidrs,
                CidrList::Pod => &config.pod_cidrs,
            };
            cidrs.iter().filter(|net| family.contains(net)).count()
        };
        self.telemetry()
            .metrics
            .config_enforced(&fingerprint, count);
        self.loaded.config = Some(config);
        true
    }

    /// Make the kernel hold the enforced config; with none yet, say why in
    /// the readiness text and write nothing.
    pub async fn sync(&mut self, trigger: Trigger) -> SyncResult {
        let Some(config) = &self.loaded.config else {
            let reason = match self.loaded.first_error() {
                Some(error) => error,
                None => self.sources.waiting_reason(),
            };
            self.telemetry().health.no_config(reason);
            return SyncResult::NoConfig;
        };
        let result = self.reconciler.sync(config, trigger).await;
        if let SyncResult::Failed(err) = &result
            && self.reconciler.failures() >= SYNC_FAILED_AFTER
        {
            self.sources.report_sync_failure(format!(
                "rule sync keeps failing ({}): {err}",
                err.kind.label()
            ));
        }
        result
    }

    fn resync_period(&self) -> Duration {
        match &self.loaded.config {
            Some(config) => config.resync_interval,
            None => self.default_period,
        }
    }

    /// One turn of the loop: reload (unless retrying a failed write), then
    /// sync unless a change event left the config as it was. `None`: skipped.
    async fn pass(&mut self, trigger: Trigger) -> Option<SyncResult> {
        self.telemetry().health.beat();
        let changed = trigger != Trigger::Retry && self.reload(trigger);
        // A change event that left the content as it was needs no sync; the
        // resync timer keeps checking the kernel.
        let skip = matches!(trigger, Trigger::FileChange | Trigger::ApiChange) && !changed;
        if skip {
            None
        } else {
            Some(self.sync(trigger).await)
        }
    }

    /// Wait for the next reason to run a pass.
    async fn next_trigger(&mut self, timers: &mut Timers, sighup: &mut Signal) -> Trigger {
        loop {
            let retry = async {
                match timers.retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading now");
                    return Trigger::Signal;
                }
                kind = self.sources.changed() => return kind.into(),
                _ = timers.resync.tick() => return Trigger::Resync,
                _ = retry => return Trigger::Retry,
                _ = timers.heartbeat.tick() => self.reconciler.telemetry.health.beat(),
            }
        }
    }

    /// Run until SIGTERM or SIGINT.
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut shutdown = Shutdown::new()?;
        let mut sighup = signal(SignalKind::hangup())?;
        self.sources.start();
        let mut timers = Timers::new(self.resync_period());
        let mut trigger = Trigger::Startup;
        loop {
            let result = tokio::select! {
                result = self.pass(trigger) => result,
                name = shutdown.wait() => return stopping(name),
            };
            timers.after(result);
            timers.follow(self.resync_period());
            trigger = tokio::select! {
                trigger = self.next_trigger(&mut timers, &mut sighup) => trigger,
                name = shutdown.wait() => return stopping(name),
            };
        }
    }
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT. One place, so every
/// wait in the loop can be cut short by it the same way.
struct Shutdown {
    sigterm: Signal,
    sigint: Signal,
}

impl Shutdown {
    fn new() -> std::io::Result<Self> {
        Ok(Shutdown {
            sigterm: signal(SignalKind::terminate())?,
            sigint: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves with the signal's name. Cancel-safe.
    async fn wait(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigterm.recv() => "SIGTERM",
            _ = self.sigint.recv() => "SIGINT",
        }
    }
}

/// The loop's clocks: the resync period, a pending retry, the heartbeat.
struct Timers {
    period: Duration,
    resync: Interval,
    retry_at: Option<Instant>,
    backoff: Backoff,
    heartbeat: Interval,
}

impl Timers {
    fn new(period: Duration) -> Self {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
        Timers {
            period,
            resync: new_ticker(period),
            retry_at: None,
            backoff: Backoff::new(),
            heartbeat,
        }
    }

    /// Arm or clear the retry after a pass.
    fn after(&mut self, result: Option<SyncResult>) {
        match result {
            Some(SyncResult::Failed(_)) => {
                let delay = self.backoff.next_delay();
                info!(
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "will retry the sync"
                );
                self.retry_at = Some(Instant::now() + delay);
            }
            Some(SyncResult::Ok | SyncResult::NoConfig) => {
                self.backoff.reset();
                self.retry_at = None;
            }
            None => self.retry_at = None,
        }
    }

    /// Re-arm the resync timer when the config changed its interval.
    fn follow(&mut self, period: Duration) {
        if period != self.period {
            self.period = period;
            let nanos = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
            info!(resync_interval = %config::duration::format(nanos), "resync interval changed");
            self.resync = new_ticker(period);
        }
    }
}

fn new_ticker(period: Duration) -> Interval {
    // Start to start: the first tick is one period from now (the sync that
    // just ran counts as this period's), and a slow sync delays only itself.
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticker
}

fn stopping(signal: &str) -> std::io::Result<()> {
    info!(signal, "stopping; rules stay in place");
    Ok(())
}
