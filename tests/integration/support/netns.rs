//! A network namespace owned by one test, deleted when its guard drops.
//!
//! Names are `imqa-<pid>-<n>`: the pid keeps parallel runs (and a developer's
//! run next to CI's) apart, `n` keeps tests of one run apart. A registry of
//! live names lets the harness test prove that no finished test leaked one.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::process::{COMMAND_TIMEOUT, describe, run_bounded, try_run_bounded};

/// Prefix of every namespace this suite creates, in any run.
pub const PREFIX: &str = "imqa-";

static NEXT: AtomicUsize = AtomicUsize::new(0);
static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// `imqa-<pid>-`: the prefix of this run's namespaces.
pub fn own_prefix() -> String {
    format!("{PREFIX}{}-", std::process::id())
}

/// A namespace created by this test; `Drop` deletes it, also on panic.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a fresh namespace with its loopback up (as on a node).
    pub fn new() -> Netns {
        Netns::try_new().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like `new`, but reports failure instead of panicking (used to probe
    /// whether namespaces can be made at all).
    pub fn try_new() -> Result<Netns, String> {
        let name = format!("{}{}", own_prefix(), NEXT.fetch_add(1, Ordering::Relaxed));
        // Registered before it exists, so a concurrent leak check never sees
        // one of ours that the registry does not know.
        live().insert(name.clone());
        let add = run_bounded(
            Command::new("ip").args(["netns", "add", &name]),
            COMMAND_TIMEOUT,
        );
        if !add.status.success() {
            live().remove(&name);
            return Err(describe(&format!("ip netns add {name}"), &add));
        }
        let ns = Netns { name };
        let lo = ns.exec(&["ip", "link", "set", "lo", "up"]);
        if !lo.status.success() {
            return Err(describe("ip link set lo up", &lo));
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside the namespace. `ip netns exec`
    /// execs the program in place, so a spawned child's pid is the program's
    /// own pid (signals sent to it reach the agent itself).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `args` inside the namespace, bounded, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command to run");
        run_bounded(self.command(program).args(rest), COMMAND_TIMEOUT)
    }

    /// Runs `args` inside the namespace and returns stdout; panics with the
    /// full output if it fails (a setup step that failed makes the test
    /// meaningless).
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("in {}: {}", self.name, args.join(" ")), &out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Never panic here: this may run during a panic, and a double panic
        // aborts the whole suite. A failure is printed for the log instead.
        match try_run_bounded(
            Command::new("ip").args(["netns", "del", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not delete namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("could not delete namespace {}: {e}", self.name),
        }
        live().remove(&self.name);
    }
}

fn live() -> std::sync::MutexGuard<'static, BTreeSet<String>> {
    // A test that panicked while holding the lock does not make the set
    // wrong: each operation is a single insert or remove.
    LIVE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Names of this run's namespaces whose guard is alive right now.
pub fn live_names() -> BTreeSet<String> {
    live().clone()
}

/// Names listed by `ip netns list` (its lines read `name` or `name (id: N)`).
pub fn listed() -> Vec<String> {
    let out = run_bounded(Command::new("ip").args(["netns", "list"]), COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", describe("ip netns list", &out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}
