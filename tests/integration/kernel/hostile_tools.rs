//! Tools that misbehave, as a broken or compromised image's would: one
//! that prints without end (a 400 MB `iptables -S` once took the agent to
//! 789 MB), one that leaves a sleeping child behind holding its output, one
//! that leaves a detached child. The agent stops reading at its cap and
//! says so, and no child of a tool outlives the call.

use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};

use super::DEFAULT_RULES;
use crate::support::Family::V4;
use crate::support::agent::oneshot_with_env;
use crate::support::process::describe;
use crate::support::shim::Shims;
use crate::support::*;

/// A shim for `iptables-nft` that answers `--version` truly and does
/// `body` for everything else.
fn iptables_nft_shim(shims: &Shims, body: &str) {
    shims.install(
        "iptables-nft",
        &format!("if [ \"$1\" = --version ]; then exec \"$REAL\" \"$@\"; fi\n{body}"),
    );
}

fn sync_with(ns: &Netns, shims: &Shims, volume: &ConfigVolume) -> std::process::Output {
    let config = volume.path();
    let path = shims.path();
    oneshot_with_env(
        ns,
        &[("PATH", &path)],
        &[
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--iptables-mode=nft",
            "sync",
        ],
    )
}

/// Whether `pid` runs (a zombie does not: only its parent may reap it).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_tool_that_prints_400_mb_is_stopped_at_the_cap() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let shims = Shims::new();
    iptables_nft_shim(&shims, "head -c 400000000 /dev/zero\nexit 0");
    let out = sync_with(&ns, &shims, &ConfigVolume::empty());
    let (_, stderr) = crate::support::process::texts(&out);
    assert!(!out.status.success(), "{}", describe("sync", &out));
    assert!(
        stderr.contains("kind=\"too_large\"") && stderr.contains("printed more than 32 MiB"),
        "{stderr}"
    );
    // Every child of this test process (one per test under nextest), the
    // agent and the tools it ran included: the largest peak.
    let peak_kib = getrusage(UsageWho::RUSAGE_CHILDREN)
        .expect("getrusage")
        .max_rss();
    assert!(peak_kib < 100 * 1024, "peak RSS {peak_kib} KiB");
}

#[test]
fn children_a_tool_leaves_behind_are_killed() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let shims = Shims::new();
    let pids = shims.dir().join("strays");
    // One stray keeps the tool's stdout open (the agent's read would wait
    // for it), one is detached from it (it would just live on).
    iptables_nft_shim(
        &shims,
        &format!(
            "sleep 300 & echo $! >> {p}\nsleep 300 </dev/null >/dev/null 2>&1 & echo $! >> {p}\nexec \"$REAL\" \"$@\"",
            p = pids.display()
        ),
    );
    let started = Instant::now();
    let out = sync_with(&ns, &shims, &ConfigVolume::empty());
    assert!(out.status.success(), "{}", describe("sync", &out));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "sync took {:?}",
        started.elapsed()
    );
    assert_eq!(save(&ns, Mode::Nft, V4), DEFAULT_RULES);
    let strays = std::fs::read_to_string(&pids).expect("the shim ran");
    assert!(strays.lines().count() >= 2, "{strays}");
    wait_until(
        DEADLINE,
        "every child the tool left behind to be gone",
        || {
            strays
                .lines()
                .filter(|pid| alive(pid))
                .collect::<Vec<_>>()
                .join(" ")
        },
        String::is_empty,
    );
}
