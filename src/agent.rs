//! The agent loop: triggers in, reconcile, record.
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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, error, info, warn};

use crate::apisource::events::{EventSink, Report};
use crate::apisource::{ObjectInfo, ObjectName, Snapshot};
use crate::backend::{Backend, BackendError};
use crate::config::{self, Config, LoadOptions, Loaded, Source};
use crate::plan::{self, Family, Ruleset, Settings};
use crate::telemetry::{SyncOutcome, Telemetry};
use crate::watch::ConfigWatch;

/// How often the config file's identity is checked between resyncs, so an
/// edit (or a fix after an invalid file) is picked up within this delay.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// After a directory event, wait this long for the rest of the burst (a
/// kubelet update is several renames and unlinks within microseconds).
pub const COALESCE: Duration = Duration::from_millis(5);

/// After this many failed syncs in a row, a `SyncFailed` Event is reported
/// (with the API source): one failure is often a passing lock conflict.
pub const SYNC_FAILED_AFTER: u32 = 3;

/// Why a reload happened (logs; later also metrics labels).
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

/// Retry delays after a failed sync: 0.8 s doubling to 30 s, with jitter,
/// reset after a success (the shape kube-runtime's watcher uses).
#[derive(Debug, Clone)]
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

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Identity of the config file as the kubelet changes it: a ConfigMap update
/// swaps a symlink, so the resolved inode changes even if size and mtime match.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileStamp {
    Absent,
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        modified: Option<SystemTime>,
    },
    Unreadable(String),
}

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(path) {
        Ok(meta) => FileStamp::Present {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => FileStamp::Absent,
        Err(err) => FileStamp::Unreadable(err.kind().to_string()),
    }
}

/// What the last sync of all families came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncResult {
    /// Nothing to enforce yet (no valid config ever loaded).
    NoConfig,
    Ok,
    Failed(BackendError),
}

/// Where the config comes from.
pub enum Input {
    /// A file (a mounted ConfigMap): watched, and polled as a fallback.
    File(PathBuf),
    /// One key of a ConfigMap, watched through the Kubernetes API. With it,
    /// rejections and persistent sync failures are also reported as Events.
    Api {
        configmap: ObjectName,
        key: String,
        /// `None` until the first list completes.
        snapshots: watch::Receiver<Option<Snapshot>>,
        events: Option<EventSink>,
    },
}

impl std::fmt::Display for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Input::File(path) => write!(f, "{}", path.display()),
            Input::Api { configmap, key, .. } => write!(f, "configmap {configmap} key {key}"),
        }
    }
}

/// Identifies rejected content for Event deduplication (in-process only).
fn content_digest(bytes: &Option<Vec<u8>>) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// The agent: settings, the backend, and what it has learned so far.
pub struct Agent<B: Backend> {
    settings: Settings,
    load_options: LoadOptions,
    input: Input,
    backend: B,
    telemetry: Telemetry,
    /// The bytes last read (`Some(None)`: no file), so an event that leaves
    /// the content as it was costs no parse and no sync.
    last_bytes: Option<Option<Vec<u8>>>,
    config: Option<Config>,
    last_config_error: Option<String>,
    last_warnings: Vec<String>,
    applied: HashMap<Family, Ruleset>,
    foreign_jumps: HashMap<Family, Vec<String>>,
    file_stamp: Option<FileStamp>,
    /// The ConfigMap as last delivered by the API source.
    api_object: Option<ObjectInfo>,
    failed_syncs: u32,
}

impl<B: Backend> Agent<B> {
    pub fn new(
        settings: Settings,
        load_options: LoadOptions,
        input: Input,
        backend: B,
        telemetry: Telemetry,
    ) -> Self {
        Agent {
            settings,
            load_options,
            input,
            backend,
            telemetry,
            last_bytes: None,
            config: None,
            last_config_error: None,
            last_warnings: Vec::new(),
            applied: HashMap::new(),
            foreign_jumps: HashMap::new(),
            file_stamp: None,
            api_object: None,
            failed_syncs: 0,
        }
    }

    /// The current bytes of the config: `Ok(None)` when absent (defaults),
    /// `Err(None)` while the API source has not listed yet.
    fn read_input(&mut self) -> Result<Option<Vec<u8>>, Option<String>> {
        match &mut self.input {
            Input::File(path) => {
                self.file_stamp = Some(stamp(path));
                config::read(path).map_err(|err| Some(err.to_string()))
            }
            Input::Api { snapshots, .. } => {
                let Some(snapshot) = snapshots.borrow_and_update().clone() else {
                    return Err(None);
                };
                self.api_object = snapshot.object;
                Ok(snapshot.bytes)
            }
        }
    }

    /// Re-read the config file. Returns whether the enforced config changed.
    /// Unchanged bytes are not parsed again; an invalid file keeps the
    /// previous config and is logged once per distinct error.
    pub fn reload(&mut self, trigger: Trigger) -> bool {
        let bytes = match self.read_input() {
            Ok(bytes) => bytes,
            Err(Some(err)) => {
                self.rejected(trigger, err);
                return false;
            }
            Err(None) => return false,
        };
        if self.last_bytes.as_ref() == Some(&bytes) {
            return false;
        }
        let result = match &bytes {
            Some(bytes) => config::parse(bytes, &self.load_options),
            None => Ok(Loaded::absent(&self.load_options)),
        };
        let digest = content_digest(&bytes);
        self.last_bytes = Some(bytes);
        match result {
            Ok(loaded) => self.accepted(trigger, loaded),
            Err(err) => {
                let text = err.to_string();
                self.report_invalid(digest, &text);
                self.rejected(trigger, text);
                false
            }
        }
    }

    /// With the API source, tell the ConfigMap's readers that this node
    /// rejected it (once per distinct content and error; the sink counts
    /// repeats as a series).
    fn report_invalid(&self, content: String, error: &str) {
        if let (
            Input::Api {
                events: Some(sink), ..
            },
            Some(configmap),
        ) = (&self.input, &self.api_object)
        {
            sink.report(Report::InvalidConfig {
                configmap: configmap.clone(),
                content,
                error: error.to_owned(),
            });
        }
    }

    fn report_sync_failure(&self, error: &BackendError) {
        if self.failed_syncs < SYNC_FAILED_AFTER {
            return;
        }
        if let Input::Api {
            events: Some(sink), ..
        } = &self.input
        {
            sink.report(Report::SyncFailed {
                error: format!("rule sync keeps failing ({}): {error}", error.kind.label()),
            });
        }
    }

    fn accepted(&mut self, trigger: Trigger, loaded: Loaded) -> bool {
        self.telemetry.metrics.config_load(true, trigger.as_str());
        if let Some(previous) = self.last_config_error.take() {
            info!(trigger = trigger.as_str(), previous_error = %previous, "config is valid again");
        }
        if loaded.warnings != self.last_warnings {
            for warning in &loaded.warnings {
                warn!(source = %self.input, "{warning}");
            }
            self.last_warnings = loaded.warnings;
        }
        if self.config.as_ref() == Some(&loaded.config) {
            return false;
        }
        let source = match (loaded.source, &self.input) {
            (Source::File, Input::File(_)) => "file",
            (Source::File, Input::Api { .. }) => "configmap",
            (Source::Absent, Input::File(_)) => "defaults (no config file)",
            (Source::Absent, Input::Api { .. }) => "defaults (no configmap or key)",
        };
        let fingerprint = loaded.config.fingerprint();
        info!(
            trigger = trigger.as_str(),
            from = %self.input,
            source,
            fingerprint = %fingerprint,
            config = %loaded.config.to_json(),
            "using config"
        );
        let count = |family: Family| {
            loaded
                .config
                .non_masquerade_cidrs
                .iter()
                .filter(|net| family.contains(net))
                .count()
        };
        self.telemetry.metrics.config_enforced(
            &fingerprint,
            count(Family::Ipv4),
            count(Family::Ipv6),
        );
        self.config = Some(loaded.config);
        true
    }

    fn rejected(&mut self, trigger: Trigger, text: String) {
        self.telemetry.metrics.config_load(false, trigger.as_str());
        if self.last_config_error.as_deref() == Some(text.as_str()) {
            return;
        }
        match &self.config {
            Some(current) => error!(
                trigger = trigger.as_str(),
                source = %self.input,
                keeping = %current.fingerprint(),
                "Error syncing configuration: {text}; keeping the last valid config"
            ),
            None => error!(
                trigger = trigger.as_str(),
                source = %self.input,
                "Error syncing configuration: {text}; no valid config yet, writing nothing"
            ),
        }
        self.last_config_error = Some(text);
    }

    /// Whether the config file looks different from when it was last read.
    fn file_changed(&self) -> bool {
        match &self.input {
            Input::File(path) => self.file_stamp.as_ref() != Some(&stamp(path)),
            Input::Api { .. } => false,
        }
    }

    /// Reconcile every family with the enforced config. IPv6 is skipped in a
    /// cycle where IPv4 failed, as upstream does.
    pub async fn sync(&mut self, trigger: Trigger) -> SyncResult {
        let Some(config) = self.config.clone() else {
            let reason = match (&self.last_config_error, &self.input) {
                (Some(error), _) => error.clone(),
                (None, Input::Api { configmap, .. }) => {
                    format!("waiting for the Kubernetes API to list configmap {configmap}")
                }
                (None, Input::File(_)) => "not loaded".to_owned(),
            };
            self.telemetry.health.no_config(reason);
            return SyncResult::NoConfig;
        };
        for family in plan::families(&self.settings) {
            let desired = plan::plan(&config, &self.settings, family);
            let started = Instant::now();
            let result = self.backend.reconcile(&desired).await;
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_secs_f64() * 1000.0;
            let metrics = &self.telemetry.metrics;
            match result {
                Ok(outcome) => {
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
                            warn!(family = %family, trigger = trigger.as_str(), result = "applied", elapsed_ms, "drift repaired: {what}");
                        } else {
                            info!(family = %family, trigger = trigger.as_str(), result = "applied", reason, elapsed_ms, "rules applied: {what}");
                        }
                    } else {
                        metrics.sync(family, SyncOutcome::Unchanged, elapsed, None);
                        debug!(family = %family, trigger = trigger.as_str(), result = "unchanged", elapsed_ms, "rules unchanged");
                    }
                    let known = self.foreign_jumps.entry(family).or_default();
                    if *known != outcome.foreign_jumps {
                        for jump in &outcome.foreign_jumps {
                            warn!(family = %family, rule = %jump, "another rule we do not own also jumps to {}; traffic may traverse it twice", self.settings.chain);
                        }
                        *known = outcome.foreign_jumps;
                    }
                    self.applied.insert(family, desired);
                }
                Err(err) => {
                    metrics.sync(family, SyncOutcome::Failed, elapsed, Some(err.kind.label()));
                    error!(family = %family, trigger = trigger.as_str(), result = "failed", kind = err.kind.label(), "sync failed: {err}");
                    self.telemetry
                        .health
                        .sync_failed(format!("{family}: {err}"));
                    self.failed_syncs = self.failed_syncs.saturating_add(1);
                    self.report_sync_failure(&err);
                    return SyncResult::Failed(err);
                }
            }
        }
        self.failed_syncs = 0;
        self.telemetry.health.sync_succeeded();
        SyncResult::Ok
    }

    fn resync_period(&self) -> Duration {
        self.config
            .as_ref()
            .map(|c| c.resync_interval)
            .unwrap_or_else(|| Config::defaults(false).resync_interval)
    }

    /// Run until SIGTERM or SIGINT.
    pub async fn run(mut self) -> std::io::Result<()> {
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sighup = signal(SignalKind::hangup())?;
        let (mut watch, mut file_events) = match &self.input {
            Input::File(path) => {
                let (mut watch, events) = ConfigWatch::new(path);
                watch.ensure();
                (Some(watch), Some(events))
            }
            Input::Api { .. } => (None, None),
        };
        let mut api_changes = match &self.input {
            Input::Api { snapshots, .. } => Some(snapshots.clone()),
            Input::File(_) => None,
        };

        let mut backoff = Backoff::new();
        let mut retry_at: Option<Instant>;
        let mut period = self.resync_period();
        let mut resync = new_ticker(period);
        let mut poll = tokio::time::interval(FILE_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Skip);

        let mut trigger = Trigger::Startup;
        loop {
            self.telemetry.health.beat();
            let changed = trigger != Trigger::Retry && self.reload(trigger);
            // A file event that left the content as it was needs no sync;
            // the resync timer keeps checking the kernel.
            let skip = matches!(trigger, Trigger::FileChange | Trigger::ApiChange) && !changed;
            if !skip {
                let result = tokio::select! {
                    result = self.sync(trigger) => result,
                    _ = sigterm.recv() => return stopping("SIGTERM"),
                    _ = sigint.recv() => return stopping("SIGINT"),
                };
                match result {
                    SyncResult::Failed(_) => {
                        let delay = backoff.next_delay();
                        info!(
                            retry_in_ms = delay.as_millis() as u64,
                            "will retry the sync"
                        );
                        retry_at = Some(Instant::now() + delay);
                    }
                    SyncResult::Ok | SyncResult::NoConfig => {
                        backoff.reset();
                        retry_at = None;
                    }
                }
            } else {
                retry_at = None;
            }
            if self.resync_period() != period {
                period = self.resync_period();
                let nanos = i64::try_from(period.as_nanos()).unwrap_or(i64::MAX);
                info!(resync_interval = %config::duration::format(nanos), "resync interval changed");
                resync = new_ticker(period);
            }

            trigger = loop {
                let retry = async {
                    match retry_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sigterm.recv() => return stopping("SIGTERM"),
                    _ = sigint.recv() => return stopping("SIGINT"),
                    _ = sighup.recv() => {
                        info!("SIGHUP: reloading now");
                        break Trigger::Signal;
                    }
                    Some(()) = next_file_event(&mut file_events) => {
                        tokio::time::sleep(COALESCE).await;
                        if let Some(events) = &mut file_events {
                            while events.try_recv().is_ok() {}
                        }
                        break Trigger::FileChange;
                    }
                    changed = next_api_change(&mut api_changes) => {
                        if changed {
                            break Trigger::ApiChange;
                        }
                        // The watch task ended (it never should): keep
                        // enforcing the last config rather than spin.
                        error!("the Kubernetes API source stopped; enforcing the last good config");
                        api_changes = None;
                    }
                    _ = resync.tick() => break Trigger::Resync,
                    _ = retry => break Trigger::Retry,
                    _ = poll.tick() => {
                        self.telemetry.health.beat();
                        // Re-watch a directory that appeared or was replaced,
                        // and poll the file itself as the fallback.
                        if let Some(watch) = &mut watch
                            && (watch.ensure() || self.file_changed())
                        {
                            break Trigger::FileChange;
                        }
                    }
                }
            };
        }
    }
}

/// The next file event; never, without a file source.
async fn next_file_event(events: &mut Option<tokio::sync::mpsc::Receiver<()>>) -> Option<()> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}

/// Whether the API source sent something new (`false`: it is gone); never,
/// without an API source.
async fn next_api_change(changes: &mut Option<watch::Receiver<Option<Snapshot>>>) -> bool {
    match changes {
        Some(changes) => changes.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

fn new_ticker(period: Duration) -> tokio::time::Interval {
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::backend::{CleanupReport, ErrorKind, Outcome};
    use crate::plan::ChainName;

    /// A backend that keeps "the kernel" in memory and applies all or nothing,
    /// so the loop above the seam is tested without root.
    #[derive(Default)]
    struct Fake {
        kernel: HashMap<Family, Ruleset>,
        writes: usize,
        fail: Option<ErrorKind>,
    }

    impl Backend for Fake {
        fn describe(&self) -> String {
            "fake".into()
        }
        fn render(&self, desired: &Ruleset) -> String {
            format!("{desired:?}")
        }
        async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
            if let Some(kind) = self.fail {
                return Err(BackendError::new(kind, "fake-restore", "refused"));
            }
            if self.kernel.get(&desired.family) == Some(desired) {
                return Ok(Outcome::default());
            }
            self.kernel.insert(desired.family, desired.clone());
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
            self.kernel.remove(&family);
            Ok(Vec::new())
        }
    }

    fn agent(dir: &Path, ipv6: bool) -> Agent<Fake> {
        Agent::new(
            Settings {
                chain: "IP-MASQ-AGENT".parse().unwrap(),
                enable_ipv6: ipv6,
                random_fully: true,
                to_ports: Vec::new(),
            },
            LoadOptions {
                all_reserved_ranges: false,
                enable_ipv6: ipv6,
            },
            Input::File(dir.join("ip-masq-agent")),
            Fake::default(),
            Telemetry::default(),
        )
    }

    fn cidrs(agent: &Agent<Fake>, family: Family) -> Vec<String> {
        agent.backend.kernel[&family]
            .no_masquerade
            .iter()
            .map(|n| n.to_string())
            .collect()
    }

    #[tokio::test]
    async fn writes_once_then_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ip-masq-agent");
        std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.0/8]\n").unwrap();
        let mut a = agent(dir.path(), false);
        assert!(a.reload(Trigger::Startup));
        assert_eq!(a.sync(Trigger::Startup).await, SyncResult::Ok);
        assert_eq!(a.backend.writes, 1);
        assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
        assert!(!a.reload(Trigger::Resync));
        a.sync(Trigger::Resync).await;
        assert_eq!(a.backend.writes, 1, "an unchanged node must see no write");
        std::fs::write(
            &file,
            "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\nmasqLinkLocal: true\n",
        )
        .unwrap();
        assert!(a.reload(Trigger::FileChange));
        a.sync(Trigger::FileChange).await;
        assert_eq!(a.backend.writes, 2);
        assert_eq!(cidrs(&a, Family::Ipv4), ["10.0.0.0/8", "192.168.0.0/16"]);
    }

    #[tokio::test]
    async fn invalid_config_keeps_enforcing_the_last_good_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ip-masq-agent");
        std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.0/8]\n").unwrap();
        let mut a = agent(dir.path(), false);
        a.reload(Trigger::Startup);
        a.sync(Trigger::Startup).await;
        std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.1/8]\n").unwrap();
        assert!(!a.reload(Trigger::FileChange));
        assert!(
            a.last_config_error
                .as_deref()
                .unwrap()
                .contains("is not aligned")
        );
        // Someone flushes the rules: the last good config is put back.
        a.backend.kernel.clear();
        a.sync(Trigger::Resync).await;
        assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
        assert_eq!(a.backend.writes, 2);
    }

    #[tokio::test]
    async fn invalid_at_start_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ip-masq-agent"), "cidrLimit: \"64\"\n").unwrap();
        let mut a = agent(dir.path(), false);
        assert!(!a.reload(Trigger::Startup));
        assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
        assert_eq!(a.backend.writes, 0);
        std::fs::write(dir.path().join("ip-masq-agent"), "cidrLimit: 64\n").unwrap();
        assert!(a.file_changed() || a.reload(Trigger::Resync));
    }

    #[tokio::test]
    async fn absent_file_means_defaults_and_ipv6_follows_ipv4() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = agent(dir.path(), true);
        assert!(a.reload(Trigger::Startup));
        a.sync(Trigger::Startup).await;
        assert_eq!(
            cidrs(&a, Family::Ipv4),
            [
                "169.254.0.0/16",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16"
            ]
        );
        assert_eq!(cidrs(&a, Family::Ipv6), ["fe80::/10"]);
    }

    #[tokio::test]
    async fn ipv4_failure_skips_ipv6() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = agent(dir.path(), true);
        a.reload(Trigger::Startup);
        a.backend.fail = Some(ErrorKind::LockHeld);
        assert!(
            matches!(a.sync(Trigger::Startup).await, SyncResult::Failed(e) if e.kind == ErrorKind::LockHeld)
        );
        assert!(a.backend.kernel.is_empty());
    }

    /// An agent on the API source, with the sender standing in for the
    /// watch and the receiver collecting Event reports.
    fn api_agent() -> (
        Agent<Fake>,
        watch::Sender<Option<Snapshot>>,
        tokio::sync::mpsc::Receiver<Report>,
    ) {
        let (tx, rx) = watch::channel(None);
        let telemetry = Telemetry::default();
        let (sink, reports) = EventSink::capture(telemetry.metrics.clone());
        let agent = Agent::new(
            Settings {
                chain: "IP-MASQ-AGENT".parse().unwrap(),
                enable_ipv6: false,
                random_fully: true,
                to_ports: Vec::new(),
            },
            LoadOptions {
                all_reserved_ranges: false,
                enable_ipv6: false,
            },
            Input::Api {
                configmap: "kube-system/ip-masq-agent".parse().unwrap(),
                key: "config".into(),
                snapshots: rx,
                events: Some(sink),
            },
            Fake::default(),
            telemetry,
        );
        (agent, tx, reports)
    }

    fn object(text: &str, rv: u32) -> Option<Snapshot> {
        Some(Snapshot {
            bytes: Some(text.as_bytes().to_vec()),
            object: Some(ObjectInfo {
                namespace: "kube-system".into(),
                name: "ip-masq-agent".into(),
                uid: Some("u-1".into()),
                resource_version: Some(rv.to_string()),
            }),
        })
    }

    #[tokio::test]
    async fn api_source_writes_nothing_before_the_first_list() {
        let (mut a, tx, _reports) = api_agent();
        assert!(!a.reload(Trigger::Startup));
        assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
        assert_eq!(a.backend.writes, 0);
        let (ready, reason) = a.telemetry.health.readiness();
        assert!(!ready);
        assert!(
            reason.contains(
                "waiting for the Kubernetes API to list configmap kube-system/ip-masq-agent"
            ),
            "{reason}"
        );
        tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
        assert!(a.reload(Trigger::ApiChange));
        assert_eq!(a.sync(Trigger::ApiChange).await, SyncResult::Ok);
        assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
    }

    #[tokio::test]
    async fn api_source_reports_each_distinct_rejection_once() {
        let (mut a, tx, mut reports) = api_agent();
        tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
        a.reload(Trigger::Startup);
        a.sync(Trigger::Startup).await;
        tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.1/8]\n", 2));
        assert!(!a.reload(Trigger::ApiChange));
        let Ok(Report::InvalidConfig {
            configmap, error, ..
        }) = reports.try_recv()
        else {
            panic!("no InvalidConfig report");
        };
        assert_eq!(configmap.uid.as_deref(), Some("u-1"));
        assert_eq!(configmap.resource_version.as_deref(), Some("2"));
        assert!(error.contains("is not aligned"), "{error}");
        // The same content again (a label edit, a relist): no new report.
        tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.1/8]\n", 3));
        assert!(!a.reload(Trigger::ApiChange));
        assert!(reports.try_recv().is_err());
        // The last good config stays enforced.
        a.sync(Trigger::Resync).await;
        assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
        // Deleted: defaults, as for an absent file.
        tx.send_replace(Some(Snapshot {
            bytes: None,
            object: None,
        }));
        assert!(a.reload(Trigger::ApiChange));
        a.sync(Trigger::ApiChange).await;
        assert_eq!(cidrs(&a, Family::Ipv4).len(), 4);
        assert!(reports.try_recv().is_err());
    }

    #[tokio::test]
    async fn api_source_reports_sync_failures_that_persist() {
        let (mut a, tx, mut reports) = api_agent();
        tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
        a.reload(Trigger::Startup);
        a.backend.fail = Some(ErrorKind::LockHeld);
        for _ in 1..SYNC_FAILED_AFTER {
            a.sync(Trigger::Retry).await;
        }
        assert!(reports.try_recv().is_err(), "one failure is not a pattern");
        a.sync(Trigger::Retry).await;
        let Ok(Report::SyncFailed { error }) = reports.try_recv() else {
            panic!("no SyncFailed report");
        };
        assert!(error.contains("refused"), "{error}");
        a.backend.fail = None;
        assert_eq!(a.sync(Trigger::Retry).await, SyncResult::Ok);
        a.backend.fail = Some(ErrorKind::LockHeld);
        a.sync(Trigger::Retry).await;
        assert!(reports.try_recv().is_err(), "a success resets the count");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1000));
        let second = b.next_delay();
        assert!(second >= Duration::from_millis(1600) && second <= Duration::from_millis(2000));
        for _ in 0..20 {
            assert!(b.next_delay() <= Duration::from_secs(30));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1000));
    }

    #[test]
    fn stamp_sees_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = stamp(&link);
        let tmp = dir.path().join("tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(first, stamp(&link));
        std::fs::remove_file(&link).unwrap();
        assert_eq!(stamp(&link), FileStamp::Absent);
    }
}
