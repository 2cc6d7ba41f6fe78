//! Others' hands on the node: (f) a flushed chain or a deleted jump is
//! repaired at the next resync; (g) an agent killed with SIGKILL, at rest or
//! in the middle of an update, and restarted leaves consistent rules and
//! exactly one jump.

use std::thread;
use std::time::Duration;

use crate::configs::{
    EMPTY_NAT, FLIPPED, FLIPPED_CIDRS, VPN_EXAMPLE_CIDRS, nat_for, vpn_example, vpn_example_fast,
};
use crate::sandbox::{Peer, Sandbox, wait_fast};
use crate::support::iptables::{Family, Mode, ipt};
use crate::support::text::assert_text_eq;
use crate::support::wait::DEADLINE;

/// Our jump, exactly as iptables-save prints it (COMPAT §4).
const JUMP: &str = r#"-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT"#;

/// How long the probe right after a break waits for an answer. Short, so it
/// ends before the agent's next resync (1 s away) can repair the break.
const BREAK_PROBE: Duration = Duration::from_millis(500);

/// Breaks the node's rules with `iptables ARGS` right after a resync and
/// proves the break is real: the pod's next connection to the VPN peer
/// leaves unmasqueraded and times out. If the agent repaired the rules
/// before the probe could see the break (a loaded machine), tries again, at
/// most three times. Returns the number of drift repairs logged before the
/// break that showed.
fn break_rules(sandbox: &mut Sandbox, args: &str) -> usize {
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
        ipt(&sandbox.node, sandbox.mode, Family::V4, args);
        let got = sandbox.connect(Peer::Vpn, BREAK_PROBE);
        if got == "timeout" {
            return repairs;
        }
        // Answered: only acceptable if the agent already repaired the rules.
        eprintln!(
            "`iptables {args}`: the VPN peer answered ({got}); expecting a repair, then again"
        );
        let agent = sandbox.agent();
        wait_fast(
            Duration::from_secs(3),
            &format!(
                "a drift repair explaining why the VPN peer answered ({got}) right after `iptables {args}`"
            ),
            || match agent.count_lines("drift repaired") {
                n if n > repairs => Ok(()),
                n => Err(format!("{n} drift repair(s) logged")),
            },
        );
    }
    panic!("`iptables {args}`: the agent repaired the rules before the probe three times in a row");
}

per_mode!(f_flushed_chain_or_deleted_jump_is_repaired_at_the_next_resync);

/// (f) Someone flushes the agent's chain, then someone deletes its jump
/// from POSTROUTING: each time the VPN peer stops answering (the pod's
/// address leaves again), and after the next resync (1 s here) it
/// answers the node's address again, with the exact rules back and a
/// `drift repaired` line logged for the resync.
fn f_flushed_chain_or_deleted_jump_is_repaired_at_the_next_resync(mode: Mode) {
    let mut sandbox = Sandbox::new(mode, &vpn_example_fast());
    sandbox.start_agent();
    let rules = nat_for(VPN_EXAMPLE_CIDRS);
    sandbox.wait_started(&rules, "the VPN example's rules");
    sandbox.expect_vpn_example_behaviour("before the break");

    for (what, args) in [
        ("the flushed chain", "-t nat -F IP-MASQ-AGENT".to_owned()),
        (
            "the deleted jump",
            format!(
                "-t nat {}",
                JUMP.replacen("-A POSTROUTING", "-D POSTROUTING", 1)
            ),
        ),
    ] {
        let repairs = break_rules(&mut sandbox, &args);
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
            &format!("the node's nat table after {what} was repaired"),
            &sandbox.nat(),
            &rules,
        );
    }
    sandbox.agent().assert_running();
}

/// How many jumps to our chain POSTROUTING holds.
fn jumps(nat: &str) -> usize {
    nat.lines()
        .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with("-j IP-MASQ-AGENT"))
        .count()
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

per_mode!(g_sigkill_and_restart_leave_consistent_rules_and_one_jump);

/// (g) SIGKILL gives the agent no chance to tidy up. Killed at rest:
/// the rules stay and keep working, and the restarted agent finds them
/// matching and rewrites nothing (counters intact). Killed at several
/// points of an update (0 to 50 ms after kubelet's swap: before the
/// reload, while `iptables-restore` runs, after it; the test prints which):
/// the kernel holds the old rules or the new ones, nothing in between,
/// and the restarted agent converges on the file, with exactly one jump
/// every time and nothing written to the other iptables backend.
fn g_sigkill_and_restart_leave_consistent_rules_and_one_jump(mode: Mode) {
    let vpn_rules = nat_for(VPN_EXAMPLE_CIDRS);
    let flipped_rules = nat_for(FLIPPED_CIDRS);
    let mut sandbox = Sandbox::new(mode, &vpn_example());
    sandbox.start_agent();
    sandbox.wait_started(&vpn_rules, "the VPN example's rules");
    sandbox.expect_vpn_example_behaviour("before the kill");

    sandbox.kill_agent();
    sandbox.expect_vpn_example_behaviour("with the agent dead");
    let counted = sandbox.nat_with_counters();
    sandbox.start_agent();
    sandbox.wait_started(&vpn_rules, "the rules after the restart");
    let log = sandbox.agent().log();
    assert!(
        log.lines()
            .any(|l| l.contains("rules unchanged") && l.contains(r#"trigger="startup""#)),
        "the restarted agent did not find the rules matching:\n{log}"
    );
    assert_text_eq(
        "iptables-save -c -t nat after a restart on matching rules (counters included)",
        &sandbox.nat_with_counters(),
        &counted,
    );

    let vpn_text = vpn_example();
    let steps = [(FLIPPED, &flipped_rules), (vpn_text.as_str(), &vpn_rules)];
    let mut current = &vpn_rules;
    let mut kills = Vec::new();
    for (n, delay_ms) in [0u64, 2, 4, 6, 9, 12, 20, 50].into_iter().enumerate() {
        let (text, rules) = steps[n % 2];
        sandbox.volume().update(text);
        thread::sleep(Duration::from_millis(delay_ms));
        sandbox.kill_agent();
        kills.push(format!(
            "{delay_ms} ms: {}",
            phase(&sandbox.killed_agent_log())
        ));
        let nat = sandbox.nat();
        assert!(
            nat == *current || nat == *rules,
            "killed {delay_ms} ms after an update: the nat table is neither the old rules nor the new ones:\n{nat}"
        );
        sandbox.start_agent();
        sandbox.wait_started(
            rules,
            &format!("the rules after the restart {delay_ms} ms into an update"),
        );
        assert_eq!(
            jumps(&sandbox.nat()),
            1,
            "jumps after restart {n}:\n{}",
            sandbox.nat()
        );
        current = rules;
    }
    eprintln!(
        "SIGKILL after kubelet's swap, by delay: {}",
        kills.join(", ")
    );
    assert_eq!(current, &vpn_rules);
    sandbox.expect_vpn_example_behaviour("after the kills and restarts");
    assert_text_eq(
        &format!("the {} backend's nat table, untouched", mode.other()),
        &sandbox.save("nat", mode.other()),
        EMPTY_NAT,
    );
    sandbox.agent().assert_running();
}
