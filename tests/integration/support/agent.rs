//! Running the agent under test inside a namespace: one-shot subcommands
//! and the daemon.
//!
//! The daemon writes stderr to a file the test reads while it runs (log
//! lines are part of the contract: `drift`, `unchanged`, error texts). The
//! guard kills it on drop and, when the test is failing, prints its log.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::iptables::Mode;
use super::netns::Netns;
use super::process::{COMMAND_TIMEOUT, describe, run_bounded};
use super::volume::ConfigVolume;
use super::wait::{DEADLINE, wait_until};

/// The binary under test: this crate's, unless `IP_MASQ_AGENT_BIN` names
/// another build (for running this suite against a work tree in progress).
pub fn agent_bin() -> PathBuf {
    match std::env::var_os("IP_MASQ_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_ip-masq-agent")),
    }
}

fn agent_command(ns: &Netns) -> Command {
    let bin = agent_bin();
    ns.command(bin.to_str().expect("binary path is UTF-8"))
}

/// Runs the agent once inside `ns` with exactly `args`, bounded.
pub fn oneshot(ns: &Netns, args: &[&str]) -> Output {
    run_bounded(agent_command(ns).args(args), COMMAND_TIMEOUT)
}

/// As [`oneshot`], with extra environment variables for the agent (through
/// `env`, so `ip netns exec` itself still finds its tools).
pub fn oneshot_with_env(ns: &Netns, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = ns.command("env");
    cmd.args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(agent_bin())
        .args(args);
    run_bounded(&mut cmd, COMMAND_TIMEOUT)
}

/// `ip-masq-agent --config VOLUME --iptables-mode=MODE FLAGS... SUBCOMMAND`
/// inside `ns`. Flags go first, as Go's flag package requires upstream.
pub fn subcommand(
    ns: &Netns,
    mode: Mode,
    volume: &ConfigVolume,
    flags: &[&str],
    sub: &str,
) -> Output {
    let config = volume.path();
    let mode_arg = mode.agent_arg();
    let mut args = vec![
        "--config",
        config.to_str().expect("config path is UTF-8"),
        &mode_arg,
    ];
    args.extend_from_slice(flags);
    args.push(sub);
    oneshot(ns, &args)
}

/// One `sync` that must succeed; returns its stderr (the log).
pub fn sync_ok(ns: &Netns, mode: Mode, volume: &ConfigVolume, flags: &[&str]) -> String {
    let out = subcommand(ns, mode, volume, flags, "sync");
    assert!(
        out.status.success(),
        "{}",
        describe(
            &format!("sync {} {}", mode.agent_arg(), flags.join(" ")),
            &out
        )
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The agent running as a daemon inside a namespace; killed on drop.
pub struct Agent {
    child: Child,
    exited: Option<ExitStatus>,
    logs: TempDir,
    args: Vec<String>,
}

impl Agent {
    /// Starts `ip-masq-agent --config VOLUME --iptables-mode=MODE -v=2
    /// FLAGS...` in `ns`. `-v=2` makes every sync result visible in the log
    /// (the `unchanged` lines some tests count).
    pub fn start(ns: &Netns, mode: Mode, volume: &ConfigVolume, flags: &[&str]) -> Agent {
        Self::start_with_env(ns, mode, volume, flags, &[])
    }

    /// As [`Agent::start`], with extra environment variables for the agent
    /// (through `env`, so `ip netns exec` itself still finds its tools).
    pub fn start_with_env(
        ns: &Netns,
        mode: Mode,
        volume: &ConfigVolume,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let mut args = vec![mode.agent_arg()];
        args.extend(flags.iter().map(|s| s.to_string()));
        Self::spawn(ns, &[volume.path()], args, env)
    }

    /// Starts `ip-masq-agent --config VOLUME -v=2 FLAGS...` in `ns`, with no
    /// `--iptables-mode` (for `--backend=nftables`, which has no use for it).
    /// Used by the end-to-end suite, which compiles this file too.
    #[allow(dead_code)]
    pub fn start_with_flags(ns: &Netns, volume: &ConfigVolume, flags: &[&str]) -> Agent {
        Self::spawn(
            ns,
            &[volume.path()],
            flags.iter().map(|s| s.to_string()).collect(),
            &[],
        )
    }

    /// Starts `ip-masq-agent --config PATH... --iptables-mode=MODE -v=2
    /// FLAGS...` in `ns`: several config sources, merged.
    #[allow(dead_code)] // the end-to-end suite compiles this file too
    pub fn start_sources(ns: &Netns, mode: Mode, configs: &[PathBuf], flags: &[&str]) -> Agent {
        let mut args = vec![mode.agent_arg()];
        args.extend(flags.iter().map(|s| s.to_string()));
        Self::spawn(ns, configs, args, &[])
    }

    /// Spawns `ip-masq-agent --config CONFIG... -v=2 FLAGS...` in `ns`.
    fn spawn(ns: &Netns, configs: &[PathBuf], flags: Vec<String>, env: &[(&str, &str)]) -> Agent {
        let logs = tempfile::Builder::new()
            .prefix("imqa-agent-log-")
            .tempdir()
            .expect("temp dir for the agent's logs");
        let stderr = File::create(logs.path().join("stderr")).expect("agent stderr file");
        let stdout = File::create(logs.path().join("stdout")).expect("agent stdout file");
        let mut args: Vec<String> = Vec::new();
        for config in configs {
            args.push("--config".into());
            args.push(config.to_str().expect("config path is UTF-8").into());
        }
        args.push("-v=2".into());
        args.extend(flags);
        let mut cmd = if env.is_empty() {
            agent_command(ns)
        } else {
            let mut cmd = ns.command("env");
            cmd.args(env.iter().map(|(k, v)| format!("{k}={v}")))
                .arg(agent_bin());
            cmd
        };
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Agent {
            child,
            exited: None,
            logs,
            args,
        }
    }

    /// The agent's own pid (`ip netns exec` execs it in place).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap_or_default()
    }

    /// How many log lines contain `needle`, ignoring case.
    pub fn count_lines(&self, needle: &str) -> usize {
        let needle = needle.to_lowercase();
        self.log()
            .lines()
            .filter(|l| l.to_lowercase().contains(&needle))
            .count()
    }

    /// Waits until some log line contains `needle` (ignoring case); fails at
    /// once if the agent exits first.
    pub fn wait_for_log(&mut self, needle: &str) {
        let lower = needle.to_lowercase();
        wait_until(
            DEADLINE,
            &format!("a log line containing {needle:?}"),
            || {
                self.assert_running();
                self.log()
            },
            |log| log.to_lowercase().contains(&lower),
        );
    }

    /// Waits until at least `n` log lines contain `needle` (ignoring case);
    /// returns the count. Fails at once if the agent exits first.
    pub fn wait_for_lines(&mut self, needle: &str, n: usize) -> usize {
        wait_until(
            DEADLINE,
            &format!("{n} log lines containing {needle:?} (showing the count; the log follows)"),
            || {
                self.assert_running();
                self.count_lines(needle)
            },
            |c| *c >= n,
        )
    }

    /// Sends `signal` (a name such as `TERM` or `HUP`) with kill(1). The
    /// child is not reaped before `wait_exit`, so its pid cannot be reused.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        let out = run_bounded(
            Command::new("kill").args(["-s", signal, &pid]),
            COMMAND_TIMEOUT,
        );
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("kill -s {signal} {pid}"), &out)
        );
    }

    /// The exit status if the agent ends within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Panics (with the log) if the agent has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.try_exit() {
            panic!(
                "the agent exited ({status}) but should still run\n--- its stderr\n{}",
                self.log()
            );
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait on the agent");
        }
        self.exited
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- agent {} {}\n--- its stderr\n{}--- its stdout\n{}---",
                agent_bin().display(),
                self.args.join(" "),
                self.log(),
                self.stdout()
            );
        }
    }
}
