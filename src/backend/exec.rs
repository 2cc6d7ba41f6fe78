//! Running the kernel tools: one function that spawns a program with fixed
//! arguments (never through a shell), feeds it stdin, bounds it in time and
//! sorts its failure into a kind the caller can act on.

use std::io;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::{BackendError, ErrorKind};

/// No tool call of ours should take this long; the xtables lock wait is 5 s.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Run `program args...`, writing `stdin` to it if given. Fails unless it
/// exits 0 within [`COMMAND_TIMEOUT`].
pub async fn run(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<Output, BackendError> {
    let command_line = display_command(program, args);
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
        // A timed-out tool must not linger holding the xtables lock.
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|err| {
        let kind = if err.kind() == io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Io
        };
        BackendError::new(kind, &command_line, err.to_string())
    })?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let text = text.to_owned();
        // Write in a task so a tool that stops reading cannot deadlock us
        // against its full stdout pipe.
        tokio::spawn(async move {
            let _ = pipe.write_all(text.as_bytes()).await;
            let _ = pipe.shutdown().await;
        });
    }
    let output = match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(err)) => {
            return Err(BackendError::new(
                ErrorKind::Io,
                &command_line,
                err.to_string(),
            ));
        }
        Err(_) => {
            return Err(BackendError::new(
                ErrorKind::Timeout,
                &command_line,
                format!("no answer within {} s", COMMAND_TIMEOUT.as_secs()),
            ));
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if output.status.success() {
        Ok(Output { stdout, stderr })
    } else {
        let kind = classify(&stderr);
        let detail = if stderr.is_empty() {
            format!("exited with {}", output.status)
        } else {
            format!("exited with {}: {stderr}", output.status)
        };
        Err(BackendError::new(kind, &command_line, detail))
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

    #[tokio::test]
    async fn stdin_reaches_the_program() {
        let out = run("cat", &[], Some("hello\n")).await.unwrap();
        assert_eq!(out.stdout, "hello\n");
    }
}
