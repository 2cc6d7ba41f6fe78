//! Running a command to completion with a deadline, capturing its output.
//!
//! `Command::output` waits forever; a hung `iptables -w` or a binary that
//! fell into its daemon loop by mistake must fail the test, not stall the
//! suite. So every command here is killed when its deadline passes.

use std::io::Read;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Generous for any single tool call; a slow, shared machine must not turn
/// into a red test, only a hang must.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` with no stdin and returns its output, killing it and panicking
/// (with what it printed so far) if it is still running after `timeout`.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Output {
    try_run_bounded(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Like `run_bounded`, but a command that cannot start or that times out is
/// an `Err` instead of a panic (for drop guards, which must never panic).
pub fn try_run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Output, String> {
    try_run_bounded_with_stdin(cmd, timeout, Stdio::null())
}

/// Like `run_bounded`, with `stdin` (a file, say) as the command's input.
pub fn run_bounded_with_stdin(cmd: &mut Command, timeout: Duration, stdin: Stdio) -> Output {
    try_run_bounded_with_stdin(cmd, timeout, stdin).unwrap_or_else(|e| panic!("{e}"))
}

fn try_run_bounded_with_stdin(
    cmd: &mut Command,
    timeout: Duration,
    stdin: Stdio,
) -> Result<Output, String> {
    cmd.stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    // Drain both pipes on threads: a child that fills one pipe while we wait
    // on the other would otherwise block forever.
    let out_reader = drain(child.stdout.take());
    let err_reader = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("waiting for {cmd:?}: {e}"));
            }
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Output {
            status,
            stdout,
            stderr,
        }),
        None => Err(format!(
            "{cmd:?} still running after {timeout:?}, killed\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        )),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// Stdout and stderr as text, for assertions and failure messages.
pub fn texts(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Describes a finished command for a failure message.
pub fn describe(what: &str, output: &Output) -> String {
    let (stdout, stderr) = texts(output);
    format!(
        "{what}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        status_text(&output.status)
    )
}

/// `exit 0`, `exit 1` or `killed by signal` (the numeric form std prints is
/// less clear about a signal).
pub fn status_text(status: &ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit {code}"),
        None => format!("no exit code ({status})"),
    }
}
