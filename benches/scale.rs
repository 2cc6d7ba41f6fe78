//! Scale: what a long non-masquerade list costs, per backend, side by side.
//!
//! `make bench-scale` (root). For each list size (64, 1 000, 10 000 and
//! 50 000 CIDRs by default) and each backend (`iptables` through
//! `--iptables-mode=nft`, and the native `nftables` one), in namespaces
//! created here:
//! - full apply: `ip-masq-agent sync` of the whole list into a fresh
//!   namespace, timed as a process from spawn to exit (so config parsing and
//!   the tools it runs count); REPEAT fresh namespaces. Also the daemon's own
//!   `elapsed_ms` for its initial apply after a `cleanup`;
//! - one-CIDR change: the CIDR in the middle of the list replaced by a new
//!   one, through `sync` (process time) and through the daemon (a config file
//!   renamed over the old one: the daemon's `elapsed_ms`, and the wall time
//!   from the rename to its log line);
//! - kernel memory added by a full apply, read before and after it, each
//!   read once the figure has settled, two ways: the kernel memory charged
//!   to this process's memory cgroup (the agent and its tools run in it; the
//!   kernel charges nf_tables objects and x_tables blobs to the allocating
//!   task; session-scoped, so other work on the machine does not show), and
//!   `SUnreclaim + VmallocUsed + Percpu` from `/proc/meminfo` (machine-wide,
//!   so anything else allocating at the same time is noise);
//! - agent peak memory: the daemon's `VmHWM` after its initial apply and the
//!   changes; and the `sync` process tree's peak RSS (`/usr/bin/time %M`: the
//!   largest of the agent and the tools it runs, iptables-restore or nft);
//! - new-connection rate through a router namespace running the rules:
//!   client -> router (ip_forward) -> sink, fresh UDP 5-tuples (a new
//!   source/destination port pair per datagram, never repeated within a
//!   router) from a tight sender to a destination outside the list (every
//!   new flow walks the whole list: the worst case), for FLOOD_SECONDS or
//!   until 3/4 of the router's `nf_conntrack_max` flows were sent, whichever
//!   comes first (a full table would mean early drops, measuring the table).
//!   The router's conntrack table is emptied before each run (removing and
//!   re-adding the masquerade address makes the kernel delete the
//!   connections masqueraded to it). A flow counts when its datagram reaches
//!   the sink (the sink's `Ip InReceives`; it drops everything at
//!   prerouting). Each datagram is a new conntrack entry, so it traverses the
//!   nat POSTROUTING hook once: exactly the per-connection cost. The sender's
//!   datagrams are forwarded in its own softirq context, so the path's cost
//!   paces it. The one-CIDR rate is measured in the same router, interleaved
//!   with the full list's runs (N, 1, N, 1, ...; each state applied from
//!   empty: `cleanup`, then `sync`); the relative rate is the median of the
//!   pairs' ratios.
//!
//! Benchmarks are not tests: this prints medians and spread, and whether the
//! nftables targets are met; it exits non-zero only when it could not
//! measure at all.
//!
//! Environment: `SIZES` (`64,1000,10000,50000`), `BACKENDS`
//! (`iptables,nftables`), `REPEAT` (3: fresh-namespace applies and daemon
//! starts), `RATE_RUNS` (5 interleaved pairs of rate runs), `CHANGES` (5
//! one-CIDR changes per path),
//! `FLOOD_SECONDS` (2), `MODE` (`nft` or `legacy`: the iptables backend's
//! `--iptables-mode`), `IP_MASQ_AGENT` (the agent binary; default the release
//! binary cargo built), `VERBOSE=1` (every sample as it is taken),
//! `POD_SOURCE=1` (every config also sets `podCIDRs` to the client's range,
//! so each flow pays the source condition too).
//!
//! Only namespaces created here (`imq-scale-<pid>-...`) are touched; they,
//! the processes started in them and the temporary directory are removed by
//! drop guards on every exit path, including a panic and SIGINT/SIGTERM/SIGHUP.
//! The bench re-executes itself in the client namespace as the sender
//! (`--udp-flood`), so `harness = false` gives it a plain `main`.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{
    COMMAND_TIMEOUT, Line, Netns, Proc, catch_signals, check_stop, env_or, is_root, ms, pause,
    read_lines, run_timed, which,
};

/// Prefix of this bench's messages (also used by `common`).
const BENCH: &str = "bench-scale";

/// The issue's targets for the nftables backend.
const TARGET_RATE_RATIO: f64 = 0.9;
const TARGET_RATE_SIZE: usize = 50_000;
const TARGET_APPLY_SIZE: usize = 10_000;
const TARGET_APPLY_MS: f64 = 250.0;
const TARGET_CHANGE_MS: f64 = 100.0;
const STRETCH_APPLY_MS: f64 = 50.0;
const STRETCH_CHANGE_MS: f64 = 10.0;

/// The agent's config-file size limit (a ConfigMap's).
const CONFIG_MAX_BYTES: usize = 1 << 20;
/// The issue's raised limit; more when a larger size is asked for.
const CIDR_LIMIT: usize = 50_000;

/// One agent `sync` or `cleanup` (iptables-legacy at 50 000 rules is slow).
const SYNC_TIMEOUT: Duration = Duration::from_secs(300);
/// The daemon's initial apply, or a change, must be logged by then.
const DAEMON_DEADLINE: Duration = Duration::from_secs(300);
/// Kernel memory is read once SETTLE_READS consecutive reads SETTLE_STEP
/// apart each moved by less than SETTLE_KIB, or at SETTLE_DEADLINE.
const SETTLE_STEP: Duration = Duration::from_millis(150);
const SETTLE_READS: usize = 3;
const SETTLE_KIB: i64 = 64;
const SETTLE_DEADLINE: Duration = Duration::from_secs(5);
/// Between rate runs, the router's conntrack table is flushed to this many
/// entries at most, within the deadline.
const CT_DRAINED: u64 = 64;
const CT_DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// The sender's sockets per run: tuples available = SOCKETS x 64 512.
const FLOOD_SOCKETS: u16 = 32;
const FLOOD_PORT_BASE: u16 = 10_000;
const FLOOD_FIRST_DPORT: u16 = 1024;

/// Addresses, all in documentation ranges, only inside our namespaces.
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The client's range: `podCIDRs` with `POD_SOURCE=1`.
const CLIENT_NET: &str = "198.51.100.0/24";
const ROUTER_CLIENT_SIDE: &str = "198.51.100.1";
const ROUTER_SINK_SIDE: &str = "203.0.113.1/24";
const SINK_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

/// Generated CIDRs: /30s every 8 addresses from 100.64.0.0 (a gap after each,
/// so aggregation cannot merge them); replacements count down from the top
/// of 100.64.0.0/10, far from the list.
const LIST_BASE: u32 = u32::from_be_bytes([100, 64, 0, 0]);
const LIST_TOP: u32 = u32::from_be_bytes([100, 127, 255, 0]);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The sender, re-executed in the client namespace.
    if args.first().map(String::as_str) == Some("--udp-flood") {
        return match flood(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("udp-flood: {err}");
                ExitCode::FAILURE
            }
        };
    }
    // Otherwise `cargo bench` passes `--bench`; there is nothing else to parse.
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-scale: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    Iptables,
    Nftables,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        }
    }
}

struct Settings {
    /// `POD_SOURCE=1`: every config also has `podCIDRs` (the client's range).
    pod_source: bool,
    sizes: Vec<usize>,
    backends: Vec<Backend>,
    repeat: usize,
    rate_runs: usize,
    changes: usize,
    flood: Duration,
    mode: String,
    agent: PathBuf,
    time: Option<PathBuf>,
    verbose: bool,
    /// Whether the agent knows `--backend` (before the nftables backend
    /// existed it did not; iptables then runs without the flag).
    backend_flag: bool,
    /// Why a backend cannot be measured with this agent.
    unavailable: BTreeMap<Backend, String>,
}

impl Settings {
    /// The agent's flags for `backend`, before the subcommand.
    fn agent_flags(&self, backend: Backend) -> Vec<String> {
        let mut flags = Vec::new();
        if self.backend_flag {
            flags.push(format!("--backend={}", backend.name()));
        }
        flags.push(format!("--iptables-mode={}", self.mode));
        flags.push("--log-format=json".to_owned());
        flags
    }
}

fn settings() -> Result<Settings, String> {
    let sizes_text = env_or("SIZES", "64,1000,10000,50000".to_owned())?;
    let mut sizes = Vec::new();
    for item in sizes_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let n: usize = item
            .parse()
            .map_err(|_| format!("SIZES: {item:?} is not a number"))?;
        if !(2..=60_000).contains(&n) {
            return Err(format!(
                "SIZES: {n}: expected 2 to 60000 (the config file must stay under 1 MiB)"
            ));
        }
        if !sizes.contains(&n) {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        return Err("SIZES is empty".to_owned());
    }
    let backends_text = env_or("BACKENDS", "iptables,nftables".to_owned())?;
    let mut backends = Vec::new();
    for item in backends_text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let backend = match item {
            "iptables" => Backend::Iptables,
            "nftables" => Backend::Nftables,
            other => {
                return Err(format!(
                    "BACKENDS: {other:?}: expected iptables and/or nftables"
                ));
            }
        };
        if !backends.contains(&backend) {
            backends.push(backend);
        }
    }
    if backends.is_empty() {
        return Err("BACKENDS is empty".to_owned());
    }
    let repeat: usize = env_or("REPEAT", 3)?;
    if !(1..=50).contains(&repeat) {
        return Err(format!("REPEAT={repeat}: expected 1 to 50"));
    }
    let rate_runs: usize = env_or("RATE_RUNS", 5)?;
    if !(1..=50).contains(&rate_runs) {
        return Err(format!("RATE_RUNS={rate_runs}: expected 1 to 50"));
    }
    let changes: usize = env_or("CHANGES", 5)?;
    if !(1..=200).contains(&changes) {
        return Err(format!("CHANGES={changes}: expected 1 to 200"));
    }
    let flood_s: f64 = env_or("FLOOD_SECONDS", 2.0)?;
    if !(flood_s.is_finite() && (0.2..=30.0).contains(&flood_s)) {
        return Err("FLOOD_SECONDS: expected 0.2 to 30".to_owned());
    }
    let mode = env_or("MODE", "nft".to_owned())?;
    if mode != "nft" && mode != "legacy" {
        return Err(format!("MODE={mode:?}: expected nft or legacy"));
    }
    let agent = match std::env::var_os("IP_MASQ_AGENT") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(env!("CARGO_BIN_EXE_ip-masq-agent")),
    };
    let time = Some(PathBuf::from("/usr/bin/time")).filter(|p| p.is_file());
    Ok(Settings {
        sizes,
        backends,
        repeat,
        rate_runs,
        changes,
        flood: Duration::from_secs_f64(flood_s),
        mode,
        agent,
        time,
        verbose: env_or("VERBOSE", 0u8)? != 0,
        pod_source: env_or("POD_SOURCE", 0u8)? != 0,
        backend_flag: false,
        unavailable: BTreeMap::new(),
    })
}

/// Every sample of one (size, backend).
#[derive(Default)]
struct Row {
    full_sync_ms: Vec<f64>,
    full_sync_agent_ms: Vec<f64>,
    full_daemon_ms: Vec<f64>,
    change_sync_ms: Vec<f64>,
    change_sync_agent_ms: Vec<f64>,
    change_daemon_ms: Vec<f64>,
    change_daemon_wall_ms: Vec<f64>,
    kmem_cgroup_kib: Vec<f64>,
    kmem_meminfo_kib: Vec<f64>,
    sync_rss_kib: Vec<f64>,
    daemon_hwm_kib: Vec<f64>,
    rate_n: Vec<f64>,
    rate_1: Vec<f64>,
    /// Each run's full-list rate over the one-CIDR rate right after it.
    rate_pairs: Vec<f64>,
    /// Sum of the router's conntrack drop, early_drop and insert_failed
    /// counters over the rate runs: non-zero means the table, not the
    /// rules, limited some runs.
    ct_trouble: u64,
    /// Why the measurement stopped early.
    error: Option<String>,
}

fn run() -> Result<(), String> {
    let mut s = settings()?;
    if !is_root() {
        return Err(
            "needs root (network namespaces, iptables, nft): run `sudo make bench-scale` \
             (or `sudo env \"PATH=$PATH\" make bench-scale` if sudo cannot find cargo)"
                .to_owned(),
        );
    }
    let mut tools = vec!["ip", "cat", "sysctl", "nft"];
    tools.extend(if s.mode == "nft" {
        ["iptables-nft-save", "iptables-nft-restore"]
    } else {
        ["iptables-legacy-save", "iptables-legacy-restore"]
    });
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
    probe_agent(&mut s)?;
    catch_signals()?;

    let me = std::env::current_exe().map_err(|e| format!("this program's path: {e}"))?;
    let tmp = tempfile::Builder::new()
        .prefix("imq-scale-")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;

    println!("scale: non-masquerade list size vs apply time, memory and new-connection rate");
    println!(
        "  agent      {} (iptables backend: --iptables-mode={})",
        s.agent.display(),
        s.mode
    );
    println!(
        "  sizes      {:?}; backends {}; REPEAT {}; CHANGES {}; RATE_RUNS {}; FLOOD_SECONDS {}",
        s.sizes,
        s.backends
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        s.repeat,
        s.changes,
        s.rate_runs,
        s.flood.as_secs_f64()
    );
    for (backend, why) in &s.unavailable {
        println!("  {:<10} not measured: {why}", backend.name());
    }
    if s.time.is_none() {
        println!("  note       /usr/bin/time missing (Debian package `time`): no sync peak RSS");
    }
    let overhead = launch_overhead(&s, tmp.path())?;
    println!(
        "  note       launching through `ip netns exec`{}: {overhead:.1} ms (median), included in the sync times",
        if s.time.is_some() {
            " + /usr/bin/time"
        } else {
            ""
        }
    );
    println!();

    let mut rows: BTreeMap<(usize, Backend), Row> = BTreeMap::new();
    let pid = std::process::id();
    let mut serial = 0usize;
    for &size in &s.sizes {
        for &backend in &s.backends {
            if s.unavailable.contains_key(&backend) {
                continue;
            }
            check_stop()?;
            let started = Instant::now();
            let ctx = Ctx {
                s: &s,
                me: &me,
                tmp: tmp.path(),
                pid,
            };
            // What was measured before a failure is kept and printed.
            let mut row = Row::default();
            if let Err(err) = measure(&ctx, size, backend, &mut serial, &mut row) {
                check_stop()?;
                eprintln!("bench-scale: {size} CIDRs, {}: {err}", backend.name());
                row.error = Some(err);
            }
            if s.verbose {
                println!(
                    "  [{size} CIDRs, {} took {:.1} s]",
                    backend.name(),
                    started.elapsed().as_secs_f64()
                );
            }
            rows.insert((size, backend), row);
        }
    }
    report(&s, &rows);
    drop(tmp);
    Ok(())
}

/// Whether the agent takes `--backend`, and which backends it can run.
fn probe_agent(s: &mut Settings) -> Result<(), String> {
    let agent = s.agent.to_string_lossy().into_owned();
    let version = run_timed(Command::new(&agent).arg("version"), COMMAND_TIMEOUT)?;
    if !version.status_ok {
        return Err(format!(
            "`{agent} version` failed: {}",
            version.stderr.trim()
        ));
    }
    let probe = |backend: Backend| -> Result<bool, String> {
        let out = run_timed(
            Command::new(&agent).args([&format!("--backend={}", backend.name()), "version"]),
            COMMAND_TIMEOUT,
        )?;
        Ok(out.status_ok)
    };
    s.backend_flag = probe(Backend::Iptables)?;
    if !s.backend_flag {
        s.unavailable.insert(
            Backend::Nftables,
            "this agent has no --backend flag yet (nftables column pending)".to_owned(),
        );
    } else if !probe(Backend::Nftables)? {
        s.unavailable.insert(
            Backend::Nftables,
            "this agent rejects --backend=nftables (column pending)".to_owned(),
        );
    }
    if s.backends.iter().all(|b| s.unavailable.contains_key(b)) {
        return Err("no requested backend can be measured with this agent".to_owned());
    }
    Ok(())
}

struct Ctx<'a> {
    s: &'a Settings,
    me: &'a Path,
    tmp: &'a Path,
    pid: u32,
}

/// The list of `n` generated CIDRs; `replaced` swaps the middle one for the
/// `replaced`-th replacement (1-based).
fn cidrs(n: usize, replaced: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let addr = if replaced > 0 && i == n / 2 {
                LIST_TOP - 8 * (replaced as u32 - 1)
            } else {
                LIST_BASE + 8 * i as u32
            };
            format!("{}/30", Ipv4Addr::from(addr))
        })
        .collect()
}

/// The config of `list`; with `pod_source`, `podCIDRs` holds the client's
/// range, so every flow passes the source condition (a lookup in the
/// `pod-sources` set or its iptables rule) before the destination lookup.
fn config_text(list: &[String], pod_source: bool) -> String {
    let pods = if pod_source {
        format!("podCIDRs: [{CLIENT_NET}]\n")
    } else {
        String::new()
    };
    format!(
        "cidrLimit: {}\nresyncInterval: 1h\nnonMasqueradeCIDRs: [{}]\n{pods}",
        CIDR_LIMIT.max(list.len() + 1),
        list.join(",")
    )
}

/// Writes `text` to `path` atomically (a temporary file renamed over it);
/// returns the instant just before the rename.
fn write_config(path: &Path, text: &str) -> Result<Instant, String> {
    if text.len() > CONFIG_MAX_BYTES {
        return Err(format!(
            "the generated config is {} bytes, over the agent's 1 MiB limit",
            text.len()
        ));
    }
    // The temporary file lives outside the watched directory, so the daemon
    // sees one event: the rename.
    let dir = path.parent().ok_or("a config path without a directory")?;
    let tmp = dir.parent().unwrap_or(dir).join(format!(
        ".{}.{}.tmp",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let at = Instant::now();
    fs::rename(&tmp, path).map_err(|e| format!("rename to {}: {e}", path.display()))?;
    Ok(at)
}

/// All measurements for one size and backend.
fn measure(
    ctx: &Ctx,
    size: usize,
    backend: Backend,
    serial: &mut usize,
    row: &mut Row,
) -> Result<(), String> {
    let s = ctx.s;
    let tag = format!("{}{}", size, &backend.name()[..3]);
    let dir = ctx.tmp.join(&tag);
    fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // The daemon watches this file's directory; sync reads it too.
    let config = dir.join("ip-masq-agent");
    let full = config_text(&cidrs(size, 0), s.pod_source);
    write_config(&config, &full)?;
    let one = dir.join("one-cidr").join("ip-masq-agent");
    fs::create_dir(one.parent().expect("a parent"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    write_config(&one, &config_text(&cidrs(1, 0), s.pod_source))?;
    let verbose = |what: &str, v: f64, unit: &str| {
        if s.verbose {
            println!(
                "    {size:>6} {:<9} {what:<28} {v:>10.2} {unit}",
                backend.name()
            );
        }
    };

    // Full applies into fresh namespaces; the last one becomes the router.
    let mut router = None;
    for r in 0..s.repeat {
        check_stop()?;
        *serial += 1;
        let ns = Netns::create(&format!("imq-scale-{}-{}", ctx.pid, *serial))?;
        let before = settled_kernel_mem()?;
        let sync = agent_sync(ctx, &ns, backend, &config, &dir)?;
        let after = settled_kernel_mem()?;
        row.full_sync_ms.push(sync.ms);
        verbose("full apply, sync", sync.ms, "ms");
        if let Some(v) = sync.agent_ms {
            row.full_sync_agent_ms.push(v);
        }
        if let Some(v) = sync.rss_kib {
            row.sync_rss_kib.push(v);
        }
        if let (Some(a), Some(b)) = (after.cgroup, before.cgroup) {
            row.kmem_cgroup_kib.push((a - b) as f64);
            verbose(
                "kernel memory added, cgroup",
                (a - b) as f64 / 1024.0,
                "MiB",
            );
        }
        let meminfo = (after.meminfo - before.meminfo) as f64;
        row.kmem_meminfo_kib.push(meminfo);
        verbose("kernel memory added, meminfo", meminfo / 1024.0, "MiB");
        if r == 0 {
            verify(&ns, backend, &s.mode, size)?;
        }
        if r + 1 == s.repeat {
            router = Some(ns);
        }
    }
    let router = router.expect("REPEAT >= 1");

    // One-CIDR changes through sync.
    for c in 1..=s.changes {
        check_stop()?;
        write_config(&config, &config_text(&cidrs(size, c), s.pod_source))?;
        let sync = agent_sync(ctx, &router, backend, &config, &dir)?;
        row.change_sync_ms.push(sync.ms);
        verbose("one-CIDR change, sync", sync.ms, "ms");
        if let Some(v) = sync.agent_ms {
            row.change_sync_agent_ms.push(v);
        }
        if let Some(v) = sync.rss_kib {
            row.sync_rss_kib.push(v);
        }
    }
    verify(&router, backend, &s.mode, size)?;
    let last_list = config_text(&cidrs(size, s.changes), s.pod_source);

    // The daemon: its own elapsed_ms for a full apply (after a cleanup) and
    // for changes arriving as a renamed file; its peak memory.
    write_config(&config, &last_list)?;
    for r in 0..s.repeat {
        check_stop()?;
        agent_cleanup(ctx, &router, backend)?;
        let mut daemon = Daemon::start(ctx, &router, backend, &config)?;
        let (initial, _) = daemon.wait_applied("initial")?;
        row.full_daemon_ms.push(initial);
        verbose("full apply, daemon elapsed", initial, "ms");
        if r + 1 == s.repeat {
            for c in 1..=s.changes {
                check_stop()?;
                // Each a replacement for the middle CIDR not used before.
                let list = cidrs(size, s.changes + 1 + c);
                let renamed = write_config(&config, &config_text(&list, s.pod_source))?;
                let (elapsed, at) = daemon.wait_applied("config change")?;
                let wall = ms(at.saturating_duration_since(renamed));
                row.change_daemon_ms.push(elapsed);
                row.change_daemon_wall_ms.push(wall);
                verbose("one-CIDR change, daemon", elapsed, "ms");
                verbose("  rename -> applied (log line)", wall, "ms");
                // Let inotify's and the agent's debounce settle.
                pause(Duration::from_millis(100))?;
            }
            verify(&router, backend, &s.mode, size)?;
        }
        row.daemon_hwm_kib.push(daemon.hwm_kib()? as f64);
        daemon.stop();
    }

    // New-connection rate: the full list and one CIDR, interleaved.
    {
        *serial += 1;
        let topo = Topology::build(ctx, &router, *serial)?;
        // Neighbours resolved, caches warm.
        topo.flood(ctx, 0.5, 0)?;
        let mut flood_index = 1;
        for r in 0..s.rate_runs {
            for (list_size, cfg) in [(size, &config), (1, &one)] {
                check_stop()?;
                // From empty each time, so both states are exactly what a
                // fresh apply leaves, whichever path a backend would take
                // from one list to the other.
                agent_cleanup(ctx, &router, backend)?;
                agent_sync(ctx, &router, backend, cfg, &dir)?;
                if r == 0 {
                    verify(&router, backend, &s.mode, list_size)?;
                }
                topo.flush_conntrack()?;
                let trouble_before = topo.conntrack_trouble()?;
                let run = topo.flood(ctx, s.flood.as_secs_f64(), flood_index)?;
                flood_index += 1;
                row.ct_trouble += topo.conntrack_trouble()? - trouble_before;
                let rate = run.rate();
                if s.verbose {
                    println!(
                        "    sender: {} sent in {:.2} s, {} reached the sink",
                        run.sent, run.seconds, run.arrived
                    );
                }
                if list_size == 1 {
                    if let Some(n) = row.rate_n.last() {
                        row.rate_pairs.push(n / rate);
                    }
                    row.rate_1.push(rate);
                    verbose("flows/s, one CIDR", rate, "/s");
                } else {
                    row.rate_n.push(rate);
                    verbose("flows/s, full list", rate, "/s");
                }
            }
        }
        drop(topo);
    }

    drop(router);
    // The namespaces' memory is freed asynchronously: let that finish
    // before the next size's first "before" read.
    pause(Duration::from_secs(1))?;
    settled_kernel_mem()?;
    Ok(())
}

/// What one `sync` took.
struct SyncRun {
    ms: f64,
    /// The agent's own `elapsed_ms`, summed over families, when it logs one.
    agent_ms: Option<f64>,
    rss_kib: Option<f64>,
}

fn agent_sync(
    ctx: &Ctx,
    ns: &Netns,
    backend: Backend,
    config: &Path,
    dir: &Path,
) -> Result<SyncRun, String> {
    let s = ctx.s;
    let rss_file = dir.join("sync.rss");
    let _ = fs::remove_file(&rss_file);
    let mut cmd = match &s.time {
        Some(time) => {
            let mut cmd = ns.command(&time.to_string_lossy());
            cmd.args(["-f", "%M", "-o"]).arg(&rss_file).arg(&s.agent);
            cmd
        }
        None => ns.command(&s.agent.to_string_lossy()),
    };
    cmd.args(s.agent_flags(backend))
        .arg("sync")
        .arg("--config")
        .arg(config);
    let out = run_timed(&mut cmd, SYNC_TIMEOUT)?;
    if !out.status_ok {
        return Err(format!(
            "agent sync failed ({} CIDR config): {}",
            config.display(),
            tail(&out.stderr, 10)
        ));
    }
    let mut agent_ms = None;
    for line in out.stderr.lines() {
        if let Some(v) = json_line(line).and_then(|v| v.get("elapsed_ms")?.as_f64()) {
            *agent_ms.get_or_insert(0.0) += v;
        }
    }
    let rss_kib = fs::read_to_string(&rss_file)
        .ok()
        .and_then(|t| t.lines().last()?.trim().parse::<f64>().ok());
    Ok(SyncRun {
        ms: ms(out.elapsed),
        agent_ms,
        rss_kib,
    })
}

/// `ip-masq-agent cleanup` in `ns`: none of the agent's state is left.
fn agent_cleanup(ctx: &Ctx, ns: &Netns, backend: Backend) -> Result<(), String> {
    let s = ctx.s;
    let out = run_timed(
        ns.command(&s.agent.to_string_lossy())
            .args(s.agent_flags(backend))
            .arg("cleanup"),
        SYNC_TIMEOUT,
    )?;
    if !out.status_ok {
        return Err(format!("agent cleanup failed: {}", tail(&out.stderr, 10)));
    }
    Ok(())
}

/// The rules in `ns` hold exactly the `size` generated /30s.
fn verify(ns: &Netns, backend: Backend, mode: &str, size: usize) -> Result<(), String> {
    let (count, what) = match backend {
        Backend::Iptables => {
            let save = format!("iptables-{mode}-save");
            let text = ns.run(&[&save, "-t", "nat"])?;
            let n = text
                .lines()
                .filter(|l| l.starts_with("-A IP-MASQ-AGENT ") && l.contains("/30 "))
                .count();
            (
                n,
                format!("`{save} -t nat`: -A IP-MASQ-AGENT -d x/30 rules"),
            )
        }
        Backend::Nftables => {
            let text = ns.run(&["nft", "list", "set", "ip", "ip-masq-agent", "no-masquerade"])?;
            let n = text.matches("/30").count();
            (
                n,
                "`nft list set ip ip-masq-agent no-masquerade`: /30 elements".to_owned(),
            )
        }
    };
    if count != size {
        return Err(format!(
            "interpretation check failed: expected {size} in {what}, found {count}"
        ));
    }
    Ok(())
}

/// Median of `ip netns exec NS [time] true`, in ms.
fn launch_overhead(s: &Settings, tmp: &Path) -> Result<f64, String> {
    let ns = Netns::create(&format!("imq-scale-{}-0", std::process::id()))?;
    let truth = which("true").ok_or("`true` not found in PATH")?;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let mut cmd = match &s.time {
            Some(time) => {
                let mut cmd = ns.command(&time.to_string_lossy());
                cmd.args(["-f", "%M", "-o"])
                    .arg(tmp.join("true.rss"))
                    .arg(&truth);
                cmd
            }
            None => ns.command(&truth.to_string_lossy()),
        };
        samples.push(ms(run_timed(&mut cmd, COMMAND_TIMEOUT)?.elapsed));
    }
    Ok(Stats::of(&samples).map_or(f64::NAN, |st| st.median))
}

/// client -> router -> sink, around an existing router namespace.
struct Topology<'a> {
    router: &'a Netns,
    // Dropped before the router by the caller's scope (the veths go with them).
    client: Netns,
    sink: Netns,
    /// Flows per run at most.
    max_flows: u64,
}

/// One sender run.
struct Flood {
    sent: u64,
    arrived: u64,
    seconds: f64,
}

impl Flood {
    /// New flows per second that reached the sink.
    fn rate(&self) -> f64 {
        self.arrived as f64 / self.seconds
    }
}

impl<'a> Topology<'a> {
    fn build(ctx: &Ctx, router: &'a Netns, serial: usize) -> Result<Topology<'a>, String> {
        let client = Netns::create(&format!("imq-scale-{}-{serial}c", ctx.pid))?;
        let sink = Netns::create(&format!("imq-scale-{}-{serial}s", ctx.pid))?;
        // Links are made from inside the router, their peers placed straight
        // into our other namespaces: nothing is created in the root namespace.
        router.run(&[
            "ip",
            "link",
            "add",
            "r-c",
            "type",
            "veth",
            "peer",
            "name",
            "c-r",
            "netns",
            &client.name,
        ])?;
        router.run(&[
            "ip", "link", "add", "r-s", "type", "veth", "peer", "name", "s-r", "netns", &sink.name,
        ])?;
        let rc = format!("{ROUTER_CLIENT_SIDE}/24");
        router.run(&["ip", "addr", "add", &rc, "dev", "r-c"])?;
        router.run(&["ip", "addr", "add", ROUTER_SINK_SIDE, "dev", "r-s"])?;
        router.run(&["ip", "link", "set", "r-c", "up"])?;
        router.run(&["ip", "link", "set", "r-s", "up"])?;
        router.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let client_ip = format!("{CLIENT_IP}/24");
        client.run(&["ip", "addr", "add", &client_ip, "dev", "c-r"])?;
        client.run(&["ip", "link", "set", "c-r", "up"])?;
        client.run(&["ip", "route", "add", "default", "via", ROUTER_CLIENT_SIDE])?;
        let sink_ip = format!("{SINK_IP}/24");
        sink.run(&["ip", "addr", "add", &sink_ip, "dev", "s-r"])?;
        sink.run(&["ip", "link", "set", "s-r", "up"])?;
        // Count at InReceives (before any hook), then drop: no socket work,
        // no ICMP back.
        sink.run(&["nft", "add", "table", "ip", "imq_sink"])?;
        sink.run(&[
            "nft",
            "add chain ip imq_sink pre { type filter hook prerouting priority -300; policy drop; }",
        ])?;
        // Each run stops before the router's conntrack table could fill
        // (a full table means early drops: then the table, not the rules,
        // would be measured).
        let ct_max: u64 = router
            .run(&["cat", "/proc/sys/net/netfilter/nf_conntrack_max"])?
            .trim()
            .parse()
            .map_err(|_| "unreadable nf_conntrack_max in the router".to_owned())?;
        Ok(Topology {
            router,
            client,
            sink,
            max_flows: (ct_max / 4 * 3).max(10_000),
        })
    }

    /// Runs the sender for `seconds` (or `max_flows`, whichever ends first).
    /// `index` picks the source ports, so no 5-tuple repeats.
    fn flood(&self, ctx: &Ctx, seconds: f64, index: usize) -> Result<Flood, String> {
        let base = FLOOD_PORT_BASE as usize + index * FLOOD_SOCKETS as usize;
        if base + FLOOD_SOCKETS as usize > 65_535 {
            return Err("out of source ports for fresh tuples".to_owned());
        }
        let before = self.sink_received()?;
        let out = run_timed(
            self.client
                .command(&ctx.me.to_string_lossy())
                .arg("--udp-flood")
                .arg(CLIENT_IP.to_string())
                .arg(SINK_IP.to_string())
                .arg(base.to_string())
                .arg(FLOOD_SOCKETS.to_string())
                .arg(seconds.to_string())
                .arg(self.max_flows.to_string()),
            Duration::from_secs_f64(seconds) + COMMAND_TIMEOUT,
        )?;
        if !out.status_ok {
            return Err(format!("the sender failed: {}", out.stderr.trim()));
        }
        // "sent N errors E seconds S"
        let fields: Vec<&str> = out.stdout.split_whitespace().collect();
        let (sent, seconds) = match fields.as_slice() {
            ["sent", n, "errors", _, "seconds", s] => n.parse::<u64>().ok().zip(s.parse().ok()),
            _ => None,
        }
        .ok_or_else(|| format!("the sender printed {:?}", out.stdout.trim()))?;
        // In-flight datagrams land within microseconds; give them a moment.
        pause(Duration::from_millis(50))?;
        let after = self.sink_received()?;
        Ok(Flood {
            sent,
            arrived: after.saturating_sub(before),
            seconds,
        })
    }

    fn sink_received(&self) -> Result<u64, String> {
        let snmp = self.sink.run(&["cat", "/proc/net/snmp"])?;
        snmp_field(&snmp, "Ip:", "InReceives")
            .ok_or_else(|| "no Ip InReceives in the sink's /proc/net/snmp".to_owned())
    }

    fn conntrack_count(&self) -> Result<Option<u64>, String> {
        let text = self
            .router
            .run(&["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
            .ok();
        Ok(text.and_then(|t| t.trim().parse().ok()))
    }

    /// Empties the router's conntrack table of our flows: removing the
    /// masquerade address makes the kernel delete every connection
    /// masqueraded to it (and the UDP entries would otherwise stay for 30 s,
    /// the garbage collector being slower still). Then waits for it.
    fn flush_conntrack(&self) -> Result<(), String> {
        self.router
            .run(&["ip", "addr", "del", ROUTER_SINK_SIDE, "dev", "r-s"])?;
        self.router
            .run(&["ip", "addr", "add", ROUTER_SINK_SIDE, "dev", "r-s"])?;
        let until = Instant::now() + CT_DRAIN_DEADLINE;
        while let Some(n) = self.conntrack_count()? {
            if n <= CT_DRAINED {
                break;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "the router's conntrack table still holds {n} entries after {} s",
                    CT_DRAIN_DEADLINE.as_secs()
                ));
            }
            pause(Duration::from_millis(20))?;
        }
        Ok(())
    }

    /// drop + early_drop + insert_failed in the router's conntrack stats.
    fn conntrack_trouble(&self) -> Result<u64, String> {
        let Ok(text) = self.router.run(&["cat", "/proc/net/stat/nf_conntrack"]) else {
            return Ok(0);
        };
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
        let wanted: Vec<usize> = header
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(**h, "drop" | "early_drop" | "insert_failed"))
            .map(|(i, _)| i)
            .collect();
        let mut total = 0;
        for line in lines {
            let cols: Vec<&str> = line.split_whitespace().collect();
            for &i in &wanted {
                total += cols
                    .get(i)
                    .and_then(|c| u64::from_str_radix(c, 16).ok())
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }
}

/// `/proc/net/snmp`: the value of `field` in the `prefix` table.
fn snmp_field(text: &str, prefix: &str, field: &str) -> Option<u64> {
    let mut rows = text.lines().filter(|l| l.starts_with(prefix));
    let header = rows.next()?;
    let values = rows.next()?;
    let i = header.split_whitespace().position(|h| h == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// The sender: `--udp-flood SRC DST PORT_BASE SOCKETS SECONDS MAX`.
/// SOCKETS sockets bound to SRC:PORT_BASE.., sending one tiny datagram after
/// another to DST, the destination port advancing once per round over the
/// sockets, so every datagram is a new 5-tuple; for SECONDS or MAX datagrams.
/// Prints `sent N errors E seconds S`.
fn flood(args: &[String]) -> Result<(), String> {
    let [src, dst, base, sockets, seconds, max] = args else {
        return Err("usage: --udp-flood SRC DST PORT_BASE SOCKETS SECONDS MAX".to_owned());
    };
    let parse_err = |what: &str| format!("bad {what}");
    let src: Ipv4Addr = src.parse().map_err(|_| parse_err("SRC"))?;
    let dst: Ipv4Addr = dst.parse().map_err(|_| parse_err("DST"))?;
    let base: u16 = base.parse().map_err(|_| parse_err("PORT_BASE"))?;
    let sockets: u16 = sockets.parse().map_err(|_| parse_err("SOCKETS"))?;
    let seconds: f64 = seconds.parse().map_err(|_| parse_err("SECONDS"))?;
    let max: u64 = max.parse().map_err(|_| parse_err("MAX"))?;
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= 60.0) {
        return Err("SECONDS must be in (0, 60]".to_owned());
    }
    let mut socks = Vec::new();
    for k in 0..sockets {
        let port = base.checked_add(k).ok_or_else(|| parse_err("PORT_BASE"))?;
        let sock = UdpSocket::bind(SocketAddrV4::new(src, port))
            .map_err(|e| format!("bind {src}:{port}: {e}"))?;
        socks.push(sock);
    }
    let payload = [0u8; 16];
    let (mut sent, mut errors) = (0u64, 0u64);
    let started = Instant::now();
    let stop_at = started + Duration::from_secs_f64(seconds);
    let mut dport = FLOOD_FIRST_DPORT;
    'outer: loop {
        for sock in &socks {
            match sock.send_to(&payload, SocketAddrV4::new(dst, dport)) {
                Ok(_) => sent += 1,
                Err(_) => errors += 1,
            }
            if (sent + errors) % 256 == 0 && (Instant::now() >= stop_at || sent >= max) {
                break 'outer;
            }
        }
        dport = match dport.checked_add(1) {
            Some(p) => p,
            // Tuples exhausted: stop rather than repeat one.
            None => break,
        };
    }
    let secs = started.elapsed().as_secs_f64();
    println!("sent {sent} errors {errors} seconds {secs:.6}");
    Ok(())
}

/// The agent as a daemon in a namespace, its JSON log read line by line.
struct Daemon {
    proc: Proc,
    lines: Receiver<Line>,
    tail: Vec<String>,
}

impl Daemon {
    fn start(ctx: &Ctx, ns: &Netns, backend: Backend, config: &Path) -> Result<Daemon, String> {
        let s = ctx.s;
        let mut cmd = ns.command(&s.agent.to_string_lossy());
        cmd.args(s.agent_flags(backend))
            .arg("--config")
            .arg(config)
            .arg("--metrics-address=")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut proc = Proc::spawn(&mut cmd, "agent", true)?;
        let stderr = proc.child.stderr.take().expect("piped stderr");
        Ok(Daemon {
            proc,
            lines: read_lines(stderr),
            tail: Vec::new(),
        })
    }

    /// Waits for the "rules applied" line with `reason`; its `elapsed_ms`
    /// and when the line arrived.
    fn wait_applied(&mut self, reason: &str) -> Result<(f64, Instant), String> {
        let until = Instant::now() + DAEMON_DEADLINE;
        loop {
            check_stop()?;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the daemon logged no \"rules applied\" ({reason}) within {} s\n{}",
                    DAEMON_DEADLINE.as_secs(),
                    self.tail.join("\n")
                ));
            }
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(Line { at, text }) => {
                    let hit = json_line(&text).and_then(|v| {
                        let message = v.get("message")?.as_str()?;
                        (message.starts_with("rules applied")
                            && v.get("reason")?.as_str()? == reason)
                            .then(|| v.get("elapsed_ms")?.as_f64())?
                    });
                    self.tail.push(text);
                    if self.tail.len() > 20 {
                        self.tail.remove(0);
                    }
                    if let Some(elapsed) = hit {
                        return Ok((elapsed, at));
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if !self.proc.alive() {
                        return Err(format!("the daemon exited\n{}", self.tail.join("\n")));
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the daemon closed its log\n{}",
                        self.tail.join("\n")
                    ));
                }
            }
        }
    }

    /// The daemon's peak RSS (`VmHWM`), KiB. `ip netns exec` execs the agent
    /// in place, so the child's pid is the agent's.
    fn hwm_kib(&mut self) -> Result<u64, String> {
        if !self.proc.alive() {
            return Err("the daemon exited".to_owned());
        }
        let path = format!("/proc/{}/status", self.proc.child.id());
        let status = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| format!("no VmHWM in {path}"))
    }

    fn stop(self) {
        drop(self.proc);
    }
}

fn json_line(line: &str) -> Option<serde_json::Value> {
    let start = line.find('{')?;
    serde_json::from_str(&line[start..]).ok()
}

#[derive(Clone, Copy)]
struct KernelMem {
    /// Kernel memory charged to this process's memory cgroup (where the
    /// agent and its tools run too): cgroup v1 `memory.kmem.usage_in_bytes`,
    /// or v2 `memory.stat` `kernel`. Session-scoped, so other work on the
    /// machine does not show; it holds what the kernel accounts to the
    /// allocating task (nf_tables objects, x_tables blobs; not percpu
    /// counters).
    cgroup: Option<i64>,
    /// Machine-wide `SUnreclaim + VmallocUsed + Percpu` from /proc/meminfo.
    meminfo: i64,
}

/// [`KernelMem`] once it has settled (frees after a commit, a process exit
/// or a namespace deletion are deferred).
fn settled_kernel_mem() -> Result<KernelMem, String> {
    let until = Instant::now() + SETTLE_DEADLINE;
    let mut prev = kernel_mem()?;
    let mut still = 0;
    loop {
        pause(SETTLE_STEP)?;
        let now = kernel_mem()?;
        let moved = match (now.cgroup, prev.cgroup) {
            (Some(a), Some(b)) => a - b,
            _ => now.meminfo - prev.meminfo,
        };
        still = if moved.abs() < SETTLE_KIB {
            still + 1
        } else {
            0
        };
        if still >= SETTLE_READS || Instant::now() >= until {
            return Ok(now);
        }
        prev = now;
    }
}

fn kernel_mem() -> Result<KernelMem, String> {
    let text = fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
    let mut meminfo = 0;
    for key in ["SUnreclaim:", "VmallocUsed:", "Percpu:"] {
        meminfo += text
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
            .ok_or_else(|| format!("no {key} in /proc/meminfo"))?;
    }
    Ok(KernelMem {
        cgroup: cgroup_kmem_kib(),
        meminfo,
    })
}

/// See [`KernelMem::cgroup`]; None when neither file is readable.
fn cgroup_kmem_kib() -> Option<i64> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let file = Path::new("/sys/fs/cgroup/memory")
                .join(path)
                .join("memory.kmem.usage_in_bytes");
            if let Some(bytes) = fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse::<i64>().ok())
            {
                return Some(bytes / 1024);
            }
        } else if controllers.is_empty() {
            let file = Path::new("/sys/fs/cgroup").join(path).join("memory.stat");
            if let Some(bytes) = fs::read_to_string(file).ok().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("kernel "))
                    .and_then(|v| v.trim().parse::<i64>().ok())
            }) {
                return Some(bytes / 1024);
            }
        }
    }
    None
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

impl Stats {
    fn of(samples: &[f64]) -> Option<Stats> {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|v| v.is_finite()).collect();
        if sorted.is_empty() {
            return None;
        }
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: sorted[0],
            max: sorted[n - 1],
            n,
        })
    }
}

/// `median [min-max]`, scaled by `div`, with `prec` decimals.
fn cell(samples: &[f64], div: f64, prec: usize) -> String {
    match Stats::of(samples) {
        None => "-".to_owned(),
        Some(st) if st.n == 1 => format!("{:.prec$}", st.median / div),
        Some(st) => format!(
            "{:.prec$} [{:.prec$}-{:.prec$}]",
            st.median / div,
            st.min / div,
            st.max / div
        ),
    }
}

fn median_of(samples: &[f64]) -> Option<f64> {
    Stats::of(samples).map(|st| st.median)
}

fn report(s: &Settings, rows: &BTreeMap<(usize, Backend), Row>) {
    let backends: Vec<Backend> = s
        .backends
        .iter()
        .copied()
        .filter(|b| !s.unavailable.contains_key(b))
        .collect();
    const LABEL: usize = 40;
    const COL: usize = 30;
    type Metric = (&'static str, fn(&Row) -> String);
    let metrics: &[Metric] = &[
        ("full apply, sync process (ms)", |r| {
            cell(&r.full_sync_ms, 1.0, 1)
        }),
        ("full apply, sync elapsed_ms (agent)", |r| {
            cell(&r.full_sync_agent_ms, 1.0, 1)
        }),
        ("full apply, daemon elapsed_ms", |r| {
            cell(&r.full_daemon_ms, 1.0, 1)
        }),
        ("one-CIDR change, sync process (ms)", |r| {
            cell(&r.change_sync_ms, 1.0, 1)
        }),
        ("one-CIDR change, sync elapsed_ms", |r| {
            cell(&r.change_sync_agent_ms, 1.0, 1)
        }),
        ("one-CIDR change, daemon elapsed_ms", |r| {
            cell(&r.change_daemon_ms, 1.0, 1)
        }),
        ("one-CIDR change, rename->applied (ms)", |r| {
            cell(&r.change_daemon_wall_ms, 1.0, 1)
        }),
        ("kernel memory added, cgroup (MiB)", |r| {
            cell(&r.kmem_cgroup_kib, 1024.0, 2)
        }),
        ("kernel memory added, meminfo (MiB)", |r| {
            cell(&r.kmem_meminfo_kib, 1024.0, 2)
        }),
        ("agent peak RSS, daemon VmHWM (MiB)", |r| {
            cell(&r.daemon_hwm_kib, 1024.0, 1)
        }),
        ("sync peak RSS, agent or tool (MiB)", |r| {
            cell(&r.sync_rss_kib, 1024.0, 1)
        }),
        ("new flows/s, this list (k/s)", |r| {
            cell(&r.rate_n, 1000.0, 1)
        }),
        ("new flows/s, one CIDR (k/s)", |r| {
            cell(&r.rate_1, 1000.0, 1)
        }),
        ("rate relative to one CIDR", |r| {
            match (ratio(r), Stats::of(&r.rate_pairs)) {
                (Some(v), Some(p)) if p.n > 1 => format!("{v:.3}x [{:.2}-{:.2}]", p.min, p.max),
                (Some(v), _) => format!("{v:.3}x"),
                _ => "-".to_owned(),
            }
        }),
    ];
    for &size in &s.sizes {
        println!();
        let mut header = format!("{:<LABEL$}", format!("== {size} CIDRs"));
        for b in &backends {
            let name = match b {
                Backend::Iptables => format!("iptables ({})", s.mode),
                Backend::Nftables => "nftables".to_owned(),
            };
            header.push_str(&format!("{name:<COL$}"));
        }
        println!("{}", header.trim_end());
        for (label, f) in metrics {
            let cells: Vec<String> = backends
                .iter()
                .map(|b| rows.get(&(size, *b)).map_or("-".to_owned(), f))
                .collect();
            // A figure no backend's agent logs (e.g. `sync` printing no
            // elapsed_ms) is left out rather than printed as a row of dashes.
            if cells.iter().all(|c| c == "-") {
                continue;
            }
            let mut line = format!("  {label:<w$}", w = LABEL - 2);
            for text in cells {
                line.push_str(&format!("{text:<COL$}"));
            }
            println!("{}", line.trim_end());
        }
        for b in &backends {
            let Some(row) = rows.get(&(size, *b)) else {
                continue;
            };
            if row.ct_trouble > 0 {
                println!(
                    "  ({}: the router's conntrack dropped or evicted {} entries during rate runs; those runs measure the table too)",
                    b.name(),
                    row.ct_trouble
                );
            }
            if let Some(err) = &row.error {
                println!(
                    "  ({}: stopped early, '-' from there on: {})",
                    b.name(),
                    err.lines().next().unwrap_or_default()
                );
            }
        }
    }
    println!();
    println!(
        "  cells: median [min-max]; the sync figures include launching through `ip netns exec`; '-' = not measured or not logged"
    );
    println!(
        "  rate relative to one CIDR: of {} interleaved pairs (list run, then one-CIDR run), the median [min-max] of their ratios",
        s.rate_runs
    );
    println!(
        "  kernel memory, around a full apply into a fresh namespace: cgroup = kernel memory charged to this session's memory cgroup"
    );
    println!(
        "    (v1 memory.kmem.usage_in_bytes / v2 memory.stat kernel; not percpu counters); meminfo = SUnreclaim + VmallocUsed + Percpu,"
    );
    println!("    machine-wide, so other work on the machine is noise (see the spread)");

    println!();
    if !backends.contains(&Backend::Nftables) {
        let why = s
            .unavailable
            .get(&Backend::Nftables)
            .map_or("not in BACKENDS", String::as_str);
        println!("targets (nftables): pending, nftables not measured ({why})");
        return;
    }
    println!("targets (nftables):");
    let nft = |size: usize| rows.get(&(size, Backend::Nftables));
    match nft(TARGET_RATE_SIZE).and_then(ratio) {
        Some(v) => println!(
            "  new-connection rate at {TARGET_RATE_SIZE} CIDRs >= {TARGET_RATE_RATIO}x one CIDR: {v:.3}x  {}",
            met(v >= TARGET_RATE_RATIO)
        ),
        None => println!(
            "  new-connection rate at {TARGET_RATE_SIZE} CIDRs >= {TARGET_RATE_RATIO}x one CIDR: not measured"
        ),
    }
    // Every path must meet it: the worst median over the paths measured.
    let worst = |paths: &[(&str, &Vec<f64>)]| -> Option<(f64, String)> {
        let mut parts = Vec::new();
        let mut worst: Option<f64> = None;
        for (name, samples) in paths {
            if let Some(m) = median_of(samples) {
                parts.push(format!("{name} {m:.1}"));
                worst = Some(worst.map_or(m, |w: f64| w.max(m)));
            }
        }
        worst.map(|w| (w, parts.join(", ")))
    };
    for size in s.sizes.iter().copied().filter(|&n| n >= TARGET_APPLY_SIZE) {
        let Some(row) = nft(size) else {
            continue;
        };
        let target = size == TARGET_APPLY_SIZE;
        let tag = if target { "" } else { " (for information)" };
        if let Some((w, parts)) = worst(&[
            ("sync process", &row.full_sync_ms),
            ("daemon", &row.full_daemon_ms),
        ]) {
            println!(
                "  full apply of {size} CIDRs <= {TARGET_APPLY_MS} ms{tag}: worst path {w:.1} ms ({parts} ms)  {}  stretch <= {STRETCH_APPLY_MS} ms: {}",
                met(w <= TARGET_APPLY_MS),
                met(w <= STRETCH_APPLY_MS)
            );
        }
        if let Some((w, parts)) = worst(&[
            ("sync process", &row.change_sync_ms),
            ("daemon", &row.change_daemon_ms),
            ("rename->applied", &row.change_daemon_wall_ms),
        ]) {
            println!(
                "  one-CIDR change at {size} CIDRs <= {TARGET_CHANGE_MS} ms{tag}: worst path {w:.1} ms ({parts} ms)  {}  stretch <= {STRETCH_CHANGE_MS} ms: {}",
                met(w <= TARGET_CHANGE_MS),
                met(w <= STRETCH_CHANGE_MS)
            );
        }
    }
    if nft(TARGET_APPLY_SIZE).is_none() {
        println!("  full apply / one-CIDR change at {TARGET_APPLY_SIZE} CIDRs: not measured");
    }
}

/// The median of the interleaved pairs' ratios (a pair's two runs are
/// seconds apart, so drift in the machine's load mostly cancels).
fn ratio(row: &Row) -> Option<f64> {
    median_of(&row.rate_pairs)
}

fn met(ok: bool) -> &'static str {
    if ok { "MET" } else { "NOT MET" }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
