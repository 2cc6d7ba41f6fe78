//! Reload latency: from kubelet's ConfigMap symlink swap to the new rules live
//! in the kernel, with the release agent running in a network namespace.
//!
//! `make bench-reload` (root). What one swap measures:
//! - the config volume is laid out as kubelet mounts it (`..<timestamp>/`,
//!   `..data ->`, `ip-masq-agent -> ..data/ip-masq-agent`); an update writes a
//!   new timestamped directory, points `..data_tmp` at it, renames that over
//!   `..data` and deletes the old directory;
//! - each update carries a unique marker CIDR; the clock starts just before
//!   the rename and stops when the first rule holding the marker is seen:
//!   with `--iptables-mode=nft`, the arrival of `nft monitor rules`' event (sent
//!   by the kernel when the transaction commits); with `MODE=legacy`, where
//!   x_tables sends no events, the first `iptables-legacy-save` of a tight
//!   poll loop in the namespace that shows it (an upper bound by at most one
//!   poll period, which is printed).
//!
//! With `SOURCE=api` (`make bench-api`) the config comes through the
//! Kubernetes API instead (`--configmap`): an in-process API server
//! (the tests' `support/apiserver.rs`, listening inside the namespace)
//! holds the ConfigMap; the clock starts just before the server records the
//! modified object and sends it to the agent's open watch, and stops as
//! above.
//!
//! Benchmarks are not tests: this prints the figures and whether they meet the
//! targets; it exits non-zero only when it could not measure.
//!
//! Environment: `SWAPS` (60), `MODE` (`nft` or `legacy`), `SOURCE` (`file`
//! or `api`),
//! `UPSTREAM_RESYNC_SECONDS` (60), `IP_MASQ_AGENT` (the agent binary; default
//! the release binary cargo built), `AGENT_V` (the agent's `-v`, 0),
//! `AGENT_LOG` (keep the agent's log at this path), `VERBOSE=1` (every swap).
//!
//! Only a namespace created here (`imq-bench-<pid>`) is touched; it, the
//! processes started in it and the temporary directory are removed by drop
//! guards on every exit path, including a panic and SIGINT/SIGTERM/SIGHUP.

#[path = "../tests/integration/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;
mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{
    Line, Netns, Proc, catch_signals, check_stop, env_or, is_root, ms, pause, read_lines, which,
};

/// Prefix of this bench's messages (also used by `common`).
const BENCH: &str = "bench-reload";

/// The issue's targets.
const TARGET_MEDIAN_MS: f64 = 100.0;
const TARGET_P99_MS: f64 = 250.0;
/// The issue asks for at least this many swaps.
const MIN_SWAPS: usize = 50;

/// A swap whose rules are not live by then counts as a failure.
const SWAP_DEADLINE: Duration = Duration::from_secs(5);
/// Swaps start this far apart (and never sooner than SETTLE after the
/// previous one landed), so each one is measured on an idle agent.
const SPACING: Duration = Duration::from_millis(200);
const SETTLE: Duration = Duration::from_millis(50);
/// The agent's first sync, and the watcher's readiness.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

/// The ConfigMap key, i.e. the file name under the volume.
const KEY: &str = "ip-masq-agent";
/// Non-masquerade CIDRs every swap carries besides its marker.
const FIXED_CIDRS: &[&str] = &[
    "10.240.0.0/12",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];
/// nft table used once to prove `nft monitor` is listening.
const PROBE_TABLE: &str = "imq_bench_probe";

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; there is nothing else to parse.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-reload: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Nft,
    Legacy,
}

impl Mode {
    fn flag(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Mode::Nft => "iptables-nft-save",
            Mode::Legacy => "iptables-legacy-save",
        }
    }

    /// Whether a watcher line shows a rule for `marker` being live.
    fn shows(self, line: &str, marker: &str) -> bool {
        match self {
            // add rule ip nat IP-MASQ-AGENT handle 8 ip daddr 10.99.7.0/24  counter ...
            Mode::Nft => {
                line.starts_with("add rule ") && line.contains(&format!("daddr {marker} "))
            }
            // -A IP-MASQ-AGENT -d 10.99.7.0/24 -m comment ...
            Mode::Legacy => line.starts_with("-A ") && line.contains(&format!(" -d {marker} ")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKind {
    File,
    Api,
}

/// Where each new config goes: the kubelet-style volume, or the API.
enum Source {
    File(Volume),
    Api(apiserver::FakeApiServer),
}

/// The ConfigMap the API source watches.
const CM_NAMESPACE: &str = "kube-system";
const CM_NAME: &str = "ip-masq-agent";

impl Source {
    /// Publish `text`; returns the instant the change was made.
    fn publish(&mut self, text: &str) -> Result<Instant, String> {
        match self {
            Source::File(volume) => volume.swap(text),
            Source::Api(server) => {
                let data =
                    std::collections::BTreeMap::from([("config".to_owned(), text.to_owned())]);
                let sent = Instant::now();
                server.put_configmap(CM_NAMESPACE, CM_NAME, data);
                Ok(sent)
            }
        }
    }
}

struct Settings {
    source: SourceKind,
    mode: Mode,
    swaps: usize,
    upstream_resync_s: f64,
    agent: PathBuf,
    verbosity: u8,
    agent_log: Option<PathBuf>,
    verbose: bool,
}

fn settings() -> Result<Settings, String> {
    let mode = match env_or("MODE", "nft".to_owned())?.as_str() {
        "nft" => Mode::Nft,
        "legacy" => Mode::Legacy,
        other => return Err(format!("MODE={other:?}: expected nft or legacy")),
    };
    let source = match env_or("SOURCE", "file".to_owned())?.as_str() {
        "file" => SourceKind::File,
        "api" => SourceKind::Api,
        other => return Err(format!("SOURCE={other:?}: expected file or api")),
    };
    let swaps: usize = env_or("SWAPS", 60)?;
    if !(1..=10_000).contains(&swaps) {
        return Err(format!("SWAPS={swaps}: expected 1 to 10000"));
    }
    let upstream_resync_s: f64 = env_or("UPSTREAM_RESYNC_SECONDS", 60.0)?;
    if !(upstream_resync_s.is_finite() && upstream_resync_s > 0.0) {
        return Err("UPSTREAM_RESYNC_SECONDS must be a positive number".to_owned());
    }
    let agent = match std::env::var_os("IP_MASQ_AGENT") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_ip-masq-agent")),
    };
    Ok(Settings {
        source,
        mode,
        swaps,
        upstream_resync_s,
        agent,
        verbosity: env_or("AGENT_V", 0)?,
        agent_log: std::env::var_os("AGENT_LOG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from),
        verbose: env_or("VERBOSE", 0u8)? != 0,
    })
}

fn run() -> Result<(), String> {
    let s = settings()?;
    if !is_root() {
        return Err(
            "needs root (network namespaces, iptables): run `sudo make bench-reload` \
             (or `sudo env \"PATH=$PATH\" make bench-reload` if sudo cannot find cargo)"
                .to_owned(),
        );
    }
    let tools: &[&str] = match s.mode {
        Mode::Nft => &["ip", "nft", "iptables-nft-save", "iptables-nft-restore"],
        Mode::Legacy => &[
            "ip",
            "sh",
            "grep",
            "iptables-legacy-save",
            "iptables-legacy-restore",
        ],
    };
    for tool in tools {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} not found in PATH (see scripts/install-deps.sh)"
            ));
        }
    }
    if !s.agent.is_file() {
        return Err(format!(
            "agent binary {} not found (build it with `cargo build --release`, or set IP_MASQ_AGENT)",
            s.agent.display()
        ));
    }
    catch_signals()?;

    // Declared first, dropped last: the processes go before the namespace,
    // the namespace before the directory.
    let tmp = tempfile::Builder::new()
        .prefix("imq-bench-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let ns = Netns::create(&format!("imq-bench-{}", std::process::id()))?;
    let volume = Volume::new(tmp.path().join("volume"))?;
    let config_path = volume.config_path();
    let mut source = match s.source {
        SourceKind::File => Source::File(volume),
        SourceKind::Api => {
            let listener = apiserver::listen_in_netns(&ns.name)
                .map_err(|e| format!("API server listener in {}: {e}", ns.name))?;
            let server = apiserver::FakeApiServer::start(listener);
            server
                .write_kubeconfig(&tmp.path().join("kubeconfig"))
                .map_err(|e| format!("kubeconfig: {e}"))?;
            Source::Api(server)
        }
    };
    let agent_log = s
        .agent_log
        .clone()
        .unwrap_or_else(|| tmp.path().join("agent.log"));

    match s.source {
        SourceKind::File => println!(
            "reload latency: kubelet ..data swap -> new rule live in the kernel ({} mode)",
            s.mode.flag()
        ),
        SourceKind::Api => println!(
            "API latency: API server sends the modified ConfigMap -> new rule live in the kernel ({} mode)",
            s.mode.flag()
        ),
    }
    println!(
        "  agent      {} --iptables-mode={} -v={}",
        s.agent.display(),
        s.mode.flag(),
        s.verbosity
    );
    println!(
        "  namespace  {}; {} swaps, {} ms apart, deadline {} ms each",
        ns.name,
        s.swaps,
        SPACING.as_millis(),
        SWAP_DEADLINE.as_millis()
    );

    let mut watcher = Watcher::start(&ns, s.mode, tmp.path())?;
    match s.mode {
        Mode::Nft => {
            println!(
                "  observed   `nft monitor rules` in the namespace: arrival of the first rule event with the marker"
            );
        }
        Mode::Legacy => {
            println!(
                "  observed   x_tables sends no events: a tight `iptables-legacy-save -t nat` loop in the namespace"
            );
        }
    }

    // The agent starts on a config with its own marker: its first sync proves
    // the whole chain (agent -> kernel -> watcher) works before timing starts.
    let initial = "10.98.255.0/24";
    source.publish(&config_text(initial))?;
    let log_file =
        fs::File::create(&agent_log).map_err(|e| format!("{}: {e}", agent_log.display()))?;
    let mut agent_cmd = ns.command(&s.agent.to_string_lossy());
    agent_cmd
        .arg("--config")
        .arg(&config_path)
        .arg(format!("--iptables-mode={}", s.mode.flag()))
        .arg("--metrics-address=")
        .arg(format!("-v={}", s.verbosity))
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
    if s.source == SourceKind::Api {
        agent_cmd
            .arg(format!("--configmap={CM_NAMESPACE}/{CM_NAME}"))
            .arg(format!(
                "--kubeconfig={}",
                tmp.path().join("kubeconfig").display()
            ));
    }
    let mut agent = Proc::spawn(&mut agent_cmd, "agent", true)?;
    let started = Instant::now();
    match watcher.wait_for(s.mode, initial, started + STARTUP_DEADLINE, &mut agent)? {
        Some(at) => println!(
            "  startup    first rules live {:.1} ms after the agent was started",
            ms(at - started)
        ),
        None => {
            return Err(format!(
                "the agent's first rules did not appear within {} s\n{}",
                STARTUP_DEADLINE.as_secs(),
                log_tail(&agent_log)
            ));
        }
    }
    pause(SPACING)?;

    // None: timed out.
    let mut results: Vec<Option<f64>> = Vec::with_capacity(s.swaps);
    for i in 0..s.swaps {
        let marker = marker(i);
        watcher.drain();
        let swapped = source.publish(&config_text(&marker))?;
        let seen = watcher.wait_for(s.mode, &marker, swapped + SWAP_DEADLINE, &mut agent)?;
        let latency = seen.map(|at| ms(at - swapped));
        if s.verbose {
            // Wall clock too, to line the swap up with the agent's log.
            let wall = SystemTime::now() - swapped.elapsed();
            let result = latency.map_or_else(|| "timeout".to_owned(), |v| format!("{v:.2} ms"));
            println!(
                "  swap {i:>4}  {marker:<15} {result:>10}   (rename at {} UTC)",
                clock_of_day(wall)
            );
        }
        if i == 0 && seen.is_some() {
            // Once: the event really means the rule is in the table.
            let saved = ns.run(&[s.mode.save(), "-t", "nat"])?;
            let wanted = format!(" -d {marker} ");
            if !saved
                .lines()
                .any(|l| l.starts_with("-A ") && l.contains(&wanted))
            {
                return Err(format!(
                    "interpretation check failed: the watcher saw {marker} but `{} -t nat` does not hold it:\n{saved}",
                    s.mode.save()
                ));
            }
            println!(
                "  verified   after the first swap's event, `{} -t nat` holds -d {marker}",
                s.mode.save()
            );
        }
        results.push(latency);
        let next = (swapped + SPACING).max(seen.unwrap_or(swapped) + SETTLE);
        pause(next.saturating_duration_since(Instant::now()))?;
    }
    if !agent.alive() {
        return Err(format!(
            "the agent exited during the run\n{}",
            log_tail(&agent_log)
        ));
    }

    println!();
    report(&s, &results, watcher.poll_period());
    if let Some(path) = &s.agent_log {
        println!("  agent log kept at {}", path.display());
    }
    drop(agent);
    drop(watcher);
    drop(ns);
    drop(tmp);
    Ok(())
}

/// `10.99.0.0/24`, `10.99.1.0/24`, ...: unique per swap.
fn marker(i: usize) -> String {
    format!("10.{}.{}.0/24", 99 + i / 256, i % 256)
}

fn config_text(marker: &str) -> String {
    let mut text = String::from("nonMasqueradeCIDRs:\n");
    for cidr in FIXED_CIDRS.iter().copied().chain([marker]) {
        text.push_str("  - ");
        text.push_str(cidr);
        text.push('\n');
    }
    text.push_str("resyncInterval: 60s\n");
    text
}

fn report(s: &Settings, results: &[Option<f64>], poll_period: Option<f64>) {
    let n = results.len();
    let failures = results.iter().filter(|r| r.is_none()).count();
    // A timeout ranks above every measured swap.
    let mut sorted: Vec<f64> = results.iter().map(|r| r.unwrap_or(f64::INFINITY)).collect();
    sorted.sort_by(f64::total_cmp);
    let measured: Vec<f64> = sorted.iter().copied().filter(|v| v.is_finite()).collect();
    let median = median(&sorted);
    let p90 = nearest_rank(&sorted, 0.90);
    let p99 = nearest_rank(&sorted, 0.99);
    let mean = if measured.is_empty() {
        f64::NAN
    } else {
        measured.iter().sum::<f64>() / measured.len() as f64
    };

    println!(
        "  swaps {n}   failures {failures} (not live within {} s)",
        SWAP_DEADLINE.as_secs()
    );
    println!(
        "  this agent   min {}  median {}  p90 {}  p99 {}  max {}  ms   (mean of measured {:.2} ms)",
        fmt_ms(sorted.first().copied()),
        fmt_ms(Some(median)),
        fmt_ms(p90),
        fmt_ms(p99),
        fmt_ms(sorted.last().copied()),
        mean
    );
    if let Some(period) = poll_period {
        println!(
            "               (legacy: measured by polling every {period:.1} ms on average; each figure is late by up to one poll)"
        );
    }
    let median_ok = median <= TARGET_MEDIAN_MS;
    let p99_ok = p99.is_some_and(|v| v <= TARGET_P99_MS);
    let enough = n >= MIN_SWAPS;
    println!(
        "  target       median <= {TARGET_MEDIAN_MS} ms: {}   p99 <= {TARGET_P99_MS} ms: {}   >= {MIN_SWAPS} swaps: {}   => {}",
        yes_no(median_ok),
        yes_no(p99_ok),
        yes_no(enough),
        if median_ok && p99_ok && enough && failures == 0 {
            "MET"
        } else {
            "NOT MET"
        }
    );

    // Upstream re-reads the file only on its resync timer, so a change waits
    // for the next tick: uniform in [0, T) after kubelet's update (plus its
    // own sync time, which is ignored here).
    if s.source == SourceKind::Api {
        println!(
            "  upstream     has no API source: an edit first waits for the kubelet's volume refresh \
             (its sync period, 1 min by default, plus the ConfigMap cache TTL), then for the resync below"
        );
    }
    let t = s.upstream_resync_s;
    println!(
        "  upstream-eq  min {}  median {}  p90 {}  p99 {}  max {}  s   (re-reads only every resyncInterval = {t} s: wait ~ uniform[0, {t} s))",
        secs(0.0),
        secs(0.5 * t),
        secs(0.9 * t),
        secs(0.99 * t),
        secs(t)
    );
    println!(
        "               context: docs/COMPAT.md §5 measured upstream at resyncInterval 60 s: mean 27 s, max 52 s"
    );
    if median.is_finite() && median > 0.0 {
        println!(
            "               median: upstream-equivalent / this agent = {:.0}x",
            0.5 * t * 1000.0 / median
        );
    }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The smallest sample with at least `q` of all samples at or below it.
fn nearest_rank(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        Some(v) if v.is_infinite() => "timeout".to_owned(),
        _ => "-".to_owned(),
    }
}

fn secs(v: f64) -> String {
    format!("{v:.1}")
}

fn yes_no(ok: bool) -> &'static str {
    if ok { "yes" } else { "no" }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(20);
    format!(
        "--- last lines of the agent's log ({}; AGENT_LOG=PATH keeps it)\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}

/// What reports rule changes in the namespace, line by line.
struct Watcher {
    lines: Receiver<Line>,
    /// Legacy only: (arrival, iterations so far) of the loop's counters.
    polls: Vec<(Instant, u64)>,
    _proc: Proc,
}

/// The legacy poll loop: print the chain whenever it changes, `ready` once,
/// and an iteration count every 100 iterations (for the poll period). The
/// count bounds the loop (about an hour at 2 ms per poll).
const LEGACY_LOOP: &str = r#"n=0; prev=
while [ "$n" -lt 2000000 ]; do
  cur=$(iptables-legacy-save -t nat 2>/dev/null | grep -e '^-A IP-MASQ-AGENT ')
  if [ "$cur" != "$prev" ]; then printf '%s\n' "$cur"; prev=$cur; fi
  [ "$n" -eq 0 ] && echo ready
  n=$((n + 1))
  [ $((n % 100)) -eq 0 ] && echo "poll $n"
done
"#;

impl Watcher {
    fn start(ns: &Netns, mode: Mode, tmp: &Path) -> Result<Watcher, String> {
        let stderr_path = tmp.join("watcher.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(|e| format!("{}: {e}", stderr_path.display()))?;
        let mut cmd = match mode {
            Mode::Nft => {
                let mut cmd = ns.command("nft");
                cmd.args(["monitor", "rules"]);
                cmd
            }
            Mode::Legacy => {
                let mut cmd = ns.command("sh");
                cmd.args(["-c", LEGACY_LOOP]);
                cmd
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut proc = Proc::spawn(&mut cmd, "watcher", false)?;
        let stdout = proc.child.stdout.take().expect("piped stdout");
        let mut watcher = Watcher {
            lines: read_lines(stdout),
            polls: Vec::new(),
            _proc: proc,
        };
        let until = Instant::now() + STARTUP_DEADLINE;
        match mode {
            Mode::Nft => watcher.nft_handshake(ns, until)?,
            Mode::Legacy => loop {
                match watcher.next(until)? {
                    Some(line) if line.text == "ready" => break,
                    Some(_) => {}
                    None => return Err("the legacy poll loop did not start".to_owned()),
                }
            },
        }
        watcher.drain();
        Ok(watcher)
    }

    /// `nft monitor` subscribes asynchronously: add probe rules until one is
    /// reported, so no event of the agent's can be missed.
    fn nft_handshake(&mut self, ns: &Netns, until: Instant) -> Result<(), String> {
        ns.run(&["nft", "add", "table", "ip", PROBE_TABLE])?;
        ns.run(&["nft", "add", "chain", "ip", PROBE_TABLE, "probe"])?;
        let prefix = format!("add rule ip {PROBE_TABLE} ");
        'probe: loop {
            ns.run(&["nft", "add", "rule", "ip", PROBE_TABLE, "probe", "counter"])?;
            let attempt = (Instant::now() + Duration::from_millis(200)).min(until);
            while let Some(line) = self.next(attempt)? {
                if line.text.starts_with(&prefix) {
                    break 'probe;
                }
            }
            if Instant::now() >= until {
                return Err("`nft monitor rules` reported nothing".to_owned());
            }
        }
        ns.run(&["nft", "delete", "table", "ip", PROBE_TABLE])?;
        Ok(())
    }

    /// The next line before `until` (None: deadline). Stops on a signal, and
    /// fails if the watcher exited.
    fn next(&mut self, until: Instant) -> Result<Option<Line>, String> {
        loop {
            check_stop()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    if self.counted(&line) {
                        continue;
                    }
                    return Ok(Some(line));
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err("the watcher exited (see its stderr)".to_owned());
                }
            }
        }
    }

    /// Arrival time of the first line showing `marker` live, or None at the
    /// deadline. Fails early if the agent exits.
    fn wait_for(
        &mut self,
        mode: Mode,
        marker: &str,
        until: Instant,
        agent: &mut Proc,
    ) -> Result<Option<Instant>, String> {
        loop {
            let slice = (Instant::now() + Duration::from_millis(250)).min(until);
            match self.next(slice)? {
                Some(line) if mode.shows(&line.text, marker) => return Ok(Some(line.at)),
                Some(_) => {}
                None if Instant::now() >= until => return Ok(None),
                None => {
                    if !agent.alive() {
                        return Err("the agent exited".to_owned());
                    }
                }
            }
        }
    }

    /// Drops lines already printed (they belong to an earlier swap).
    fn drain(&mut self) {
        while let Ok(line) = self.lines.try_recv() {
            self.counted(&line);
        }
    }

    /// Records a legacy iteration counter; true if the line was one.
    fn counted(&mut self, line: &Line) -> bool {
        match line.text.strip_prefix("poll ").map(str::parse::<u64>) {
            Some(Ok(n)) => {
                self.polls.push((line.at, n));
                true
            }
            _ => false,
        }
    }

    /// Mean time per legacy poll over the run, in ms.
    fn poll_period(&self) -> Option<f64> {
        let (first, last) = (self.polls.first()?, self.polls.last()?);
        (last.1 > first.1).then(|| ms(last.0 - first.0) / (last.1 - first.1) as f64)
    }
}

/// A config directory laid out as kubelet mounts a ConfigMap volume.
struct Volume {
    dir: PathBuf,
    /// The timestamped directory `..data` points at.
    current: Option<String>,
}

impl Volume {
    fn new(dir: PathBuf) -> Result<Volume, String> {
        fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Volume { dir, current: None })
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    /// kubelet's update to `text`; returns the instant just before the
    /// rename that makes it visible.
    fn swap(&mut self, text: &str) -> Result<Instant, String> {
        let io = |what: &str, e: std::io::Error| format!("config volume: {what}: {e}");
        let name = kubelet_dir_name(SystemTime::now());
        let new_dir = self.dir.join(&name);
        fs::create_dir(&new_dir).map_err(|e| io("create the timestamped directory", e))?;
        fs::write(new_dir.join(KEY), text).map_err(|e| io("write the config", e))?;
        let tmp = self.dir.join("..data_tmp");
        symlink(&name, &tmp).map_err(|e| io("create ..data_tmp", e))?;
        let at = Instant::now();
        fs::rename(&tmp, self.dir.join("..data")).map_err(|e| io("rename ..data_tmp", e))?;
        let visible = self.config_path();
        if visible.symlink_metadata().is_err() {
            symlink(format!("..data/{KEY}"), &visible)
                .map_err(|e| io("create the key's symlink", e))?;
        }
        if let Some(old) = self.current.replace(name) {
            fs::remove_dir_all(self.dir.join(old))
                .map_err(|e| io("delete the old directory", e))?;
        }
        Ok(at)
    }
}

/// `HH:MM:SS.micros` of `t`, UTC, as the agent's log prints it.
fn clock_of_day(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let rem = since.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_micros()
    )
}

/// kubelet's `..2006_01_02_15_04_05.<suffix>` in UTC (the suffix is random
/// there; nanoseconds here).
fn kubelet_dir_name(now: SystemTime) -> String {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "..{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}.{:09}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_nanos()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
