//! Running the kernel tools: one function that spawns a program with fixed
//! arguments (never through a shell), feeds it stdin, bounds it in time and
//! in what it may print, and sorts its failure into a kind the caller can
//! act on.
//!
//! What must stay true: a tool runs in a process group of its own, and
//! whatever is left of that group when the tool exits, times out or prints
//! too much is killed and, where it became ours to reap (the agent as a
//! container's PID 1), reaped. What is read from a tool is capped far above
//! what our own objects print; past the cap the tool is killed, nothing
//! more is read, and the error says so.

use std::io;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitOptions, kill_process_group, waitpgid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio::time::{Instant, sleep, sleep_until, timeout};

use super::{BackendError, ErrorKind};

/// No tool call of ours should take this long; the xtables lock wait is 5 s.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a tool may print on stdout. Our largest read, a chain or table
/// holding 50 000 CIDRs, prints about 6 MB; a hostile or runaway tool
/// (400 MB of `iptables-save`) is stopped here instead of filling memory.
pub const STDOUT_LIMIT: usize = 32 << 20;

/// What is kept of a tool's stderr (the rest is read and dropped): enough
/// for any error message.
const STDERR_KEPT: usize = 64 << 10;

/// After a tool exits, how long a process it started may keep its output
/// open before the read gives up.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How long to reap what a killed process group leaves.
const REAP_WINDOW: Duration = Duration::from_millis(100);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// How far one call may go.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub stdout: usize,
}

impl Limits {
    pub const DEFAULT: Limits = Limits {
        timeout: COMMAND_TIMEOUT,
        stdout: STDOUT_LIMIT,
    };
}

/// Run `program args...`, writing `stdin` to it if given. Fails unless it
/// exits 0 within [`COMMAND_TIMEOUT`], having printed at most
/// [`STDOUT_LIMIT`].
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, BackendError> {
    run_limited(program, args, stdin, Limits::DEFAULT).await
}

/// A tool's process group, killed (and what of it became ours, reaped)
/// when this goes out of scope, also when the caller stops waiting.
struct Group(Option<Pid>);

impl Group {
    fn kill(&self) {
        // Never kill(-1): that would signal every process we may signal.
        if let Some(pgid) = self.0.filter(|p| p.as_raw_nonzero().get() > 1) {
            // ESRCH: nothing of the group is left.
            let _ = kill_process_group(pgid, Signal::KILL);
        }
    }

    /// Reaps killed members that were handed to us (orphans go to PID 1,
    /// which the agent is in its container); ECHILD at once otherwise.
    /// The group is done with afterwards: its id is never signalled again
    /// (it could be reused once nothing of the group is left).
    async fn reap(&mut self) {
        let Some(pgid) = self.0.filter(|p| p.as_raw_nonzero().get() > 1) else {
            return;
        };
        self.0 = None;
        let until = Instant::now() + REAP_WINDOW;
        while Instant::now() < until {
            match waitpgid(pgid, WaitOptions::NOHANG) {
                Ok(Some(_)) => continue,
                Ok(None) => sleep(Duration::from_millis(5)).await,
                Err(_) => return,
            }
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `pipe` to its end; Err(bytes read) once it passes `limit`.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>, limit: usize) -> Result<Vec<u8>, usize> {
    let mut buf = Vec::new();
    let Some(mut pipe) = pipe else {
        return Ok(buf);
    };
    loop {
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return Ok(buf),
            Ok(_) if buf.len() > limit => return Err(buf.len()),
            Ok(_) => {}
        }
    }
}

/// Reads `pipe` to its end, keeping the first [`STDERR_KEPT`] bytes.
async fn read_kept(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = STDERR_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

fn mib(bytes: usize) -> usize {
    bytes >> 20
}

/// [`run`] with other limits (the tests of the limits themselves).
pub async fn run_limited(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
    limits: Limits,
) -> Result<Output, BackendError> {
    let command_line = display_command(program, args);
    let fail = |kind, detail: String| BackendError::new(kind, &command_line, detail);
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so that it and whatever it starts end together.
        .process_group(0)
        // A timed-out tool must not linger holding the xtables lock.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| {
        let kind = if err.kind() == io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        fail(kind, err.to_string())
    })?;
    let mut group = Group(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw),
    );
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        // Write in a task so a tool that stops reading cannot deadlock us
        // against its full stdout pipe.
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
            let _ = pipe.shutdown().await;
        });
    }
    let deadline = Instant::now() + limits.timeout;
    let mut out_read = std::pin::pin!(read_capped(child.stdout.take(), limits.stdout));
    let mut err_read = std::pin::pin!(read_kept(child.stderr.take()));
    let (mut out, mut err): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let ended: Result<io::Result<ExitStatus>, BackendError> = loop {
        tokio::select! {
            status = child.wait() => break Ok(status),
            read = &mut out_read, if out.is_none() => match read {
                Ok(bytes) => out = Some(bytes),
                Err(read) => break Err(fail(
                    ErrorKind::TooLarge,
                    format!(
                        "printed more than {} MiB ({read} bytes read) on stdout, far more than our own objects; stopped it",
                        mib(limits.stdout)
                    ),
                )),
            },
            read = &mut err_read, if err.is_none() => err = Some(read),
            () = sleep_until(deadline) => break Err(fail(
                ErrorKind::Timeout,
                format!("no answer within {} s; stopped it", limits.timeout.as_secs()),
            )),
        }
    };
    // Whatever is left of its group: a stray child of the tool, or the tool
    // itself when it timed out or printed too much.
    group.kill();
    if ended.is_err() {
        let _ = timeout(Duration::from_secs(1), child.wait()).await;
    }
    group.reap().await;
    let status = ended?.map_err(|e| fail(ErrorKind::Io, e.to_string()))?;
    // The tool exited: its output ends as soon as nothing else holds it.
    let drained = timeout(DRAIN_GRACE, async {
        if out.is_none() {
            out = Some((&mut out_read).await.unwrap_or_default());
        }
        if err.is_none() {
            err = Some((&mut err_read).await);
        }
    })
    .await;
    if drained.is_err() {
        return Err(fail(
            ErrorKind::Io,
            format!(
                "exited, but a process it started kept its output open for {} s more; output dropped",
                DRAIN_GRACE.as_secs()
            ),
        ));
    }
    let stdout = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.unwrap_or_default())
        .trim()
        .to_owned();
    if status.success() {
        Ok(Output { stdout, stderr })
    } else {
        let kind = classify(&stderr);
        let detail = if stderr.is_empty() {
            format!("exited with {status}")
        } else {
            format!("exited with {status}: {stderr}")
        };
        Err(fail(kind, detail))
    }
}

/// Sort a failed iptables or nft call by what it said, so callers never
/// match strings themselves.
fn classify(stderr: &str) -> ErrorKind {
    if stderr.contains("xtables lock") || stderr.contains("Resource temporarily unavailable") {
        ErrorKind::LockHeld
    } else if stderr.contains("Permission denied") || stderr.contains("you must be root") {
        ErrorKind::Permission
    } else if stderr.contains("No such file or directory") {
        // nft's ENOENT: the table, chain or set asked about does not exist.
        ErrorKind::Absent
    } else {
        ErrorKind::Rejected
    }
}

fn display_command(program: &str, args: &[&str]) -> String {
    let mut line = program.to_owned();
    for arg in args {
        line.push(' ');
        line.push_str(arg);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lock_and_rejection() {
        assert_eq!(
            classify(
                "Another app is currently holding the xtables lock. Stopped waiting after 5s."
            ),
            ErrorKind::LockHeld
        );
        assert_eq!(
            classify("iptables-restore: line 3 failed"),
            ErrorKind::Rejected
        );
        assert_eq!(
            classify("Error: No such file or directory\nlist table ip ip-masq-agent"),
            ErrorKind::Absent
        );
        assert_eq!(
            classify(
                "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)"
            ),
            ErrorKind::Permission
        );
    }

    #[tokio::test]
    async fn missing_binary_is_not_found() {
        let err = run("/nonexistent/ip-masq-agent-tool", &[], None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn failure_carries_stderr() {
        let err = run("sh", &["-c", "echo boom >&2; exit 3"], None)
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Rejected);
        assert!(err.to_string().contains("boom"), "{err}");
    }

    fn limits(timeout_ms: u64, stdout: usize) -> Limits {
        Limits {
            timeout: Duration::from_millis(timeout_ms),
            stdout,
        }
    }

    #[tokio::test]
    async fn output_past_the_limit_is_a_named_error() {
        let err = run_limited(
            "sh",
            &["-c", "head -c 100000 /dev/zero"],
            None,
            limits(10_000, 4096),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::TooLarge);
        assert!(err.to_string().contains("on stdout"), "{err}");
        let ok = run_limited(
            "sh",
            &["-c", "head -c 4096 /dev/zero"],
            None,
            limits(10_000, 4096),
        )
        .await;
        assert_eq!(ok.map(|o| o.stdout.len()).ok(), Some(4096));
    }

    /// The pid a shell wrote to `file`, once it is there.
    fn pid_in(file: &std::path::Path) -> i32 {
        std::fs::read_to_string(file)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn alive(pid: i32) -> bool {
        // A zombie is dead; only its parent (not us) can reap it.
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn a_stray_child_of_the_tool_is_killed_when_it_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        // The stray holds the tool's stdout open: without the group kill
        // the read would wait for it.
        let script = format!("sleep 300 & echo $! > {}; echo done", pidfile.display());
        let started = Instant::now();
        let out = run_limited("sh", &["-c", &script], None, limits(10_000, 4096))
            .await
            .unwrap();
        assert_eq!(out.stdout, "done\n");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid = pid_in(&pidfile);
        for _ in 0..200 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the stray child {pid} still runs");
    }

    #[tokio::test]
    async fn a_hanging_tool_and_its_children_are_killed_on_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 300 >/dev/null 2>&1 & echo $! > {}; sleep 300",
            pidfile.display()
        );
        let err = run_limited("sh", &["-c", &script], None, limits(300, 4096))
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout);
        let pid = pid_in(&pidfile);
        for _ in 0..200 {
            if !alive(pid) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the child {pid} of the timed-out tool still runs");
    }

    #[tokio::test]
    async fn stdin_reaches_the_program() {
        let out = run("cat", &[], Some("hello\n")).await.unwrap();
        assert_eq!(out.stdout, "hello\n");
    }
}
