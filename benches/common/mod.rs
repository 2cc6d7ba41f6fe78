//! Support shared by the benches (`mod common;` in each): signals, the
//! bounded command runner, and the drop guards for network namespaces and
//! process groups. Messages are prefixed with the including bench's
//! `crate::BENCH` (`bench-reload`, `bench-scale`).

use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use crate::BENCH;

/// Any short tool call (`ip netns add`, a save, `cat`, ...).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping process gets for SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Set by SIGINT/SIGTERM/SIGHUP: the run stops and the guards clean up.
static STOP: AtomicBool = AtomicBool::new(false);

pub fn env_or<T: FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => text
            .trim()
            .parse()
            .map_err(|_| format!("{name}={text:?} is not a valid value")),
        _ => Ok(default),
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Sleep, in slices, unless a signal asks us to stop.
pub fn pause(total: Duration) -> Result<(), String> {
    let until = Instant::now() + total;
    loop {
        check_stop()?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        thread::sleep(left.min(Duration::from_millis(50)));
    }
}

pub fn check_stop() -> Result<(), String> {
    if STOP.load(Ordering::SeqCst) {
        Err("interrupted by a signal; cleaned up".to_owned())
    } else {
        Ok(())
    }
}

/// SIGINT, SIGTERM or SIGHUP set [`STOP`] instead of killing the process, so
/// the guards still run. The children are in their own process groups, so a
/// Ctrl-C at the terminal reaches only this process.
pub fn catch_signals() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("signal runtime: {e}"))?;
    let (mut int, mut term, mut hup) = {
        let _context = rt.enter();
        let register = |kind| signal(kind).map_err(|e| format!("signal handler: {e}"));
        (
            register(SignalKind::interrupt())?,
            register(SignalKind::terminate())?,
            register(SignalKind::hangup())?,
        )
    };
    thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
        });
        eprintln!("{BENCH}: signal received, stopping and cleaning up");
        STOP.store(true, Ordering::SeqCst);
    });
    Ok(())
}

pub fn is_root() -> bool {
    // Effective uid: the second field of `Uid:` in /proc/self/status.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// A finished command: exit status, output, and spawn-to-exit time.
pub struct Timed {
    pub status_ok: bool,
    pub stdout: String,
    pub stderr: String,
    /// Read by the scale bench only.
    #[allow(dead_code)]
    pub elapsed: Duration,
}

/// Runs a command to completion, killing it after `timeout`. The end is
/// taken when both pipes close (the process exited) and the child is reaped,
/// so the time is exact, not a poll period late.
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> Result<Timed, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let (tx, rx) = mpsc::channel::<(bool, Vec<u8>)>();
    let drain = |pipe: Option<Box<dyn Read + Send>>, is_out: bool| {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            let _ = tx.send((is_out, buf));
        });
    };
    drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        true,
    );
    drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        false,
    );
    drop(tx);
    let deadline = started + timeout;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, buf)) => stdout = buf,
            Ok((false, buf)) => stderr = buf,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{cmd:?} still running after {} s, killed",
                    timeout.as_secs()
                ));
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))?;
    let elapsed = started.elapsed();
    Ok(Timed {
        status_ok: status.success(),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        elapsed,
    })
}

/// A network namespace created here; `Drop` deletes it, also on panic.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns, String> {
        let out = run_timed(
            Command::new("ip").args(["netns", "add", name]),
            COMMAND_TIMEOUT,
        )?;
        if !out.status_ok {
            // Not ours (or not made): no guard, so nothing of anyone else's is deleted.
            return Err(format!("ip netns add {name}: {}", out.stderr.trim()));
        }
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip netns exec NS program`: ip execs the program in place, so the
    /// child's pid is the program's own.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args` in the namespace; stdout if it succeeded.
    pub fn run(&self, args: &[&str]) -> Result<String, String> {
        let (program, rest) = args.split_first().expect("a command");
        let out = run_timed(self.command(program).args(rest), COMMAND_TIMEOUT)?;
        if !out.status_ok {
            return Err(format!(
                "in {}: {} failed: {}",
                self.name,
                args.join(" "),
                out.stderr.trim()
            ));
        }
        Ok(out.stdout)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this may run while unwinding.
        match run_timed(
            Command::new("ip").args(["netns", "del", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            Ok(out) if out.status_ok => {}
            Ok(out) => eprintln!(
                "{BENCH}: could not delete namespace {}: {}",
                self.name,
                out.stderr.trim()
            ),
            Err(e) => eprintln!("{BENCH}: could not delete namespace {}: {e}", self.name),
        }
    }
}

/// A long-running child in its own process group; `Drop` ends the group
/// (SIGTERM first when `graceful`, then SIGKILL after a grace period) and
/// reaps the child.
pub struct Proc {
    pub child: Child,
    name: &'static str,
    graceful: bool,
    reaped: bool,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: &'static str, graceful: bool) -> Result<Proc, String> {
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start the {name} ({cmd:?}): {e}"))?;
        Ok(Proc {
            child,
            name,
            graceful,
            reaped: false,
        })
    }

    pub fn alive(&mut self) -> bool {
        if self.reaped {
            return false;
        }
        match self.child.try_wait() {
            Ok(None) => true,
            _ => {
                self.reaped = true;
                false
            }
        }
    }

    /// Signals the process group whose id is the child's pid (only while the
    /// child is unreaped, so the id cannot have been reused).
    fn signal_group(&self, signal: &str) {
        if self.reaped {
            return;
        }
        let _ = Command::new("kill")
            .args([signal, "--", &format!("-{}", self.child.id())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.graceful && self.alive() {
            self.signal_group("-TERM");
            let until = Instant::now() + STOP_GRACE;
            while self.alive() && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
        }
        if self.alive() {
            self.signal_group("-KILL");
            let _ = self.child.kill();
        }
        if !self.reaped {
            if let Err(e) = self.child.wait() {
                eprintln!("{BENCH}: waiting for the {}: {e}", self.name);
            }
            self.reaped = true;
        }
    }
}

/// One line a child printed, stamped when it arrived.
pub struct Line {
    pub at: Instant,
    pub text: String,
}

/// Reads `pipe` (a child's stdout or stderr) on a thread, stamping each line
/// on arrival.
pub fn read_lines(pipe: impl Read + Send + 'static) -> Receiver<Line> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut buf = String::new();
        loop {
            buf.clear();
            match reader.read_line(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = Instant::now();
                    let text = buf.trim_end_matches('\n').to_owned();
                    if tx.send(Line { at, text }).is_err() {
                        break;
                    }
                }
            }
        }
    });
    rx
}
