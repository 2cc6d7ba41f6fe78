//! Others' hands on the node: (f) a flushed chain or a deleted jump (with
//! nftables: a flushed base chain, a deleted set element, the deleted
//! table) is repaired at the next resync; (g) an agent killed with SIGKILL,
//! at rest or in the middle of an update, and restarted leaves consistent
//! rules and exactly one jump (with nftables: one table).

use std::thread;
use std::time::Duration;

use crate::configs::{FLIPPED, FLIPPED_RULES, VPN_EXAMPLE_RULES, vpn_example, vpn_example_fast};
use crate::kernel::{Break, Kernel};
use crate::sandbox::{Sandbox, wait_fast};
use crate::support::text::assert_text_eq;
use crate::support::wait::DEADLINE;

/// How long the probe right after a break waits for an answer. Short, so it
/// ends before the agent's next resync (1 s away) can repair the break.
const BREAK_PROBE: Duration = Duration::from_millis(500);

/// Breaks the node's rules with `brk.command` right after a resync and
/// proves the break is real: the pod's next connection to `brk.peer` shows
/// it (the VPN peer times out, or the VPC sees the node's address). If the
/// agent repaired the rules before the probe could see the break (a loaded
/// machine), tries again, at most three times. Returns the number of drift
/// repairs logged before the break that showed.
fn break_rules(sandbox: &mut Sandbox, brk: &Break) -> usize {
    let args: Vec<&str> = brk.command.iter().map(String::as_str).collect();
    let shown = brk.command.join(" ");
    for _ in 0..3 {
        let agent = sandbox.agent();
        let resyncs = agent.count_lines("rules unchanged");
        wait_fast(DEADLINE, "the next resync", || {
            agent.assert_running();
            match agent.count_lines("rules unchanged") {
                n if n > resyncs => Ok(()),
                n => Err(format!("{n} unchanged resync(s) logged")),
            }
        });
        let repairs = agent.count_lines("drift repaired");
        sandbox.node.run(&args);
        let got = sandbox.connect(brk.peer, BREAK_PROBE);
        if got == brk.broken {
            return repairs;
        }
        // Not broken: only acceptable if the agent already repaired the rules.
        eprintln!(
            "`{shown}`: {:?} reported {got} instead of {}; expecting a repair, then again",
            brk.peer, brk.broken
        );
        let agent = sandbox.agent();
        wait_fast(
            Duration::from_secs(3),
            &format!(
                "a drift repair explaining why {:?} reported {got} right after `{shown}`",
                brk.peer
            ),
            || match agent.count_lines("drift repaired") {
                n if n > repairs => Ok(()),
                n => Err(format!("{n} drift repair(s) logged")),
            },
        );
    }
    panic!("`{shown}`: the agent repaired the rules before the probe three times in a row");
}

per_kernel!(f_flushed_chain_or_deleted_jump_is_repaired_at_the_next_resync);

/// (f) Someone flushes the agent's chain, then someone deletes its jump
/// from POSTROUTING (nftables: flushes the base chain, deletes the VPC's
/// set element, deletes the table): each time the data path shows it (the
/// VPN peer stops answering as the pod's address leaves again, or the VPC
/// sees the node's address), and after the next resync (1 s here) every
/// peer sees what the VPN example gives again, with the exact rules back
/// and a `drift repaired` line logged for the resync.
fn f_flushed_chain_or_deleted_jump_is_repaired_at_the_next_resync(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example_fast());
    sandbox.start_agent();
    let rules = sandbox.expected(&VPN_EXAMPLE_RULES);
    sandbox.wait_started(&rules, "the VPN example's rules");
    sandbox.expect_vpn_example_behaviour("before the break");

    for brk in kernel.breaks() {
        let what = brk.what;
        let repairs = break_rules(&mut sandbox, &brk);
        let agent = sandbox.agent();
        agent.wait_for_lines("drift repaired", repairs + 1);
        let log = agent.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("drift repaired"))
            .expect("a drift line");
        assert!(
            line.contains(r#"trigger="resync""#),
            "{what} was not repaired by a resync: {line}"
        );
        sandbox.expect_vpn_example_behaviour(&format!("after {what} was repaired"));
        assert_text_eq(
            &format!("the node's state after {what} was repaired"),
            &sandbox.state(),
            &rules,
        );
    }
    sandbox.agent().assert_running();
}

/// Where in handling kubelet's swap a killed agent was, from its log.
fn phase(log: &str) -> &'static str {
    let event = |needle: &str| {
        log.lines()
            .any(|l| l.contains(needle) && l.contains(r#"trigger="file_event""#))
    };
    if event("rules applied") {
        "after the apply"
    } else if event("using config") {
        "during the apply"
    } else {
        "before the reload"
    }
}

per_kernel!(g_sigkill_and_restart_leave_consistent_rules_and_one_jump);

/// (g) SIGKILL gives the agent no chance to tidy up. Killed at rest:
/// the rules stay and keep working, and the restarted agent finds them
/// matching and rewrites nothing (counters intact). Killed at several
/// points of an update (0 to 50 ms after kubelet's swap: before the
/// reload, while `iptables-restore` or `nft` runs, after it; the test
/// prints which): the kernel holds the old rules or the new ones, nothing
/// in between, and the restarted agent converges on the file, with exactly
/// one jump (nftables: one table, the set equal to the config, the base
/// chain holding exactly its rules) every time and nothing written to the
/// other backends.
fn g_sigkill_and_restart_leave_consistent_rules_and_one_jump(kernel: Kernel) {
    let mut sandbox = Sandbox::new(kernel, &vpn_example());
    let vpn_rules = sandbox.expected(&VPN_EXAMPLE_RULES);
    let flipped_rules = sandbox.expected(&FLIPPED_RULES);
    sandbox.start_agent();
    sandbox.wait_started(&vpn_rules, "the VPN example's rules");
    sandbox.expect_vpn_example_behaviour("before the kill");

    sandbox.kill_agent();
    sandbox.expect_vpn_example_behaviour("with the agent dead");
    let counted = sandbox.state_exact();
    sandbox.start_agent();
    sandbox.wait_started(&vpn_rules, "the rules after the restart");
    let log = sandbox.agent().log();
    assert!(
        log.lines()
            .any(|l| l.contains("rules unchanged") && l.contains(r#"trigger="startup""#)),
        "the restarted agent did not find the rules matching:\n{log}"
    );
    assert_text_eq(
        "the node's state after a restart on matching rules (counters or handles included)",
        &sandbox.state_exact(),
        &counted,
    );

    let vpn_text = vpn_example();
    let steps = [
        (FLIPPED, &flipped_rules, &FLIPPED_RULES),
        (vpn_text.as_str(), &vpn_rules, &VPN_EXAMPLE_RULES),
    ];
    let mut current = &vpn_rules;
    let mut kills = Vec::new();
    for (n, delay_ms) in [0u64, 2, 4, 6, 9, 12, 20, 50].into_iter().enumerate() {
        let (text, rules, enforced) = steps[n % 2];
        sandbox.volume().update(text);
        thread::sleep(Duration::from_millis(delay_ms));
        sandbox.kill_agent();
        kills.push(format!(
            "{delay_ms} ms: {}",
            phase(&sandbox.killed_agent_log())
        ));
        let state = sandbox.state();
        assert!(
            state == *current || state == *rules,
            "killed {delay_ms} ms after an update: the node's state is neither the old rules nor the new ones:\n{state}"
        );
        sandbox.start_agent();
        sandbox.wait_started(
            rules,
            &format!("the rules after the restart {delay_ms} ms into an update"),
        );
        if let Err(wrong) = kernel.check_single(&sandbox.node, enforced) {
            panic!("after restart {n}, not exactly one set of rules: {wrong}");
        }
        current = rules;
    }
    eprintln!(
        "SIGKILL after kubelet's swap, by delay: {}",
        kills.join(", ")
    );
    assert_eq!(current, &vpn_rules);
    sandbox.expect_vpn_example_behaviour("after the kills and restarts");
    for other in kernel.others() {
        assert_text_eq(
            &format!("the {other} state, untouched"),
            &sandbox.state_of(other),
            other.empty(),
        );
    }
    sandbox.agent().assert_running();
}
