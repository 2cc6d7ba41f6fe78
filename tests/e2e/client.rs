//! A long-lived client in the pod: one bash process running a few loops in
//! parallel, each running `netcheck connect` back to back against fixed
//! peers, one line per connection, `ADDR:PORT REPLY`, appended to a file
//! the test reads while it runs. Parallel loops because `netcheck serve`
//! polls for new connections every 20 ms: one loop alone would wait on that
//! poll, several are served in the same round.
//!
//! Bounded three ways: a connection count per loop, a lifetime in seconds,
//! and a stop file the test creates. It runs in its own process group,
//! which the guard kills on drop, so no connection outlives the test.

use std::fs::{self, File};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sandbox::{Peer, Sandbox, netcheck_bin};
use crate::support::process::{COMMAND_TIMEOUT, try_run_bounded};

/// The loops. Arguments: NETCHECK STOP_FILE MAX_PER_LOOP LIFETIME_SECS
/// LOOPS OUT_FILE ENDPOINT...; each connection has its own 2 s timeout.
/// Lines are appended (O_APPEND, one short write each), so the loops never
/// interleave within a line.
const SCRIPT: &str = r#"
netcheck=$1 stop=$2 max=$3 lifetime=$4 loops=$5 out=$6
shift 6
connect_loop() {
    local n=0 endpoint reply
    while (( n < max && SECONDS < lifetime )) && [[ ! -e $stop ]]; do
        for endpoint in "$@"; do
            reply=$("$netcheck" connect "$endpoint" --timeout 2 2>&1)
            printf '%s %s\n' "$endpoint" "${reply//$'\n'/ }" >>"$out"
            n=$((n + 1))
        done
    done
}
for ((k = 0; k < loops; k++)); do
    connect_loop "$@" &
done
wait
"#;

pub struct Client {
    child: Child,
    out: PathBuf,
    stop: PathBuf,
    exited: bool,
}

impl Client {
    /// Starts `loops` loops in the pod, each connecting to `peers` in turn
    /// at most `max` times.
    pub fn start(
        sandbox: &Sandbox,
        peers: &[Peer],
        loops: usize,
        max: usize,
        lifetime: Duration,
    ) -> Client {
        use std::os::unix::process::CommandExt;

        let out = sandbox.work_dir().join("client.out");
        let stop = sandbox.work_dir().join("client.stop");
        File::create(&out).expect("client output file");
        let bin = netcheck_bin();
        let mut cmd = sandbox.pod.command("bash");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg("client")
            .arg(&bin)
            .arg(&stop)
            .arg(max.to_string())
            .arg(lifetime.as_secs().max(1).to_string())
            .arg(loops.to_string())
            .arg(&out)
            .args(peers.iter().map(|p| p.endpoint()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the client loop {cmd:?}: {e}"));
        Client {
            child,
            out,
            stop,
            exited: false,
        }
    }

    /// Every connection so far: (endpoint, reply).
    pub fn results(&self) -> Vec<(String, String)> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| match l.split_once(' ') {
                Some((endpoint, reply)) => (endpoint.to_owned(), reply.to_owned()),
                None => (l.to_owned(), String::new()),
            })
            .collect()
    }

    /// How many connections have finished so far.
    pub fn count(&self) -> usize {
        fs::read(&self.out)
            .map(|b| b.iter().filter(|&&c| c == b'\n').count())
            .unwrap_or(0)
    }

    /// The pid of the bash process leading the group.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the loops still run.
    pub fn running(&mut self) -> bool {
        !self.exited && matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the loops to stop after its current round, waits for it (bounded)
    /// and returns every result.
    pub fn stop(mut self) -> Vec<(String, String)> {
        File::create(&self.stop).expect("create the client's stop file");
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.running() {
            assert!(
                Instant::now() < deadline,
                "the client loop did not stop within 15 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.exited = true;
        self.results()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // The whole group: bash and a `netcheck connect` it may be running.
        let group = format!("-{}", self.child.id());
        let _ = try_run_bounded(
            Command::new("kill").args(["-s", "KILL", "--", &group]),
            COMMAND_TIMEOUT,
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
