//! Live reload without signals: the daemon follows its config file through
//! kubelet's atomic updates, the file appearing and disappearing, and its
//! directory missing at start or vanishing while it runs (it polls the file
//! meanwhile, says so, and watches the directory again once it is back).
//!
//! Every config here leaves `resyncInterval` at the 60 s default and no
//! test sends a signal, so only the directory watch (or the 1 s identity
//! poll that stands in for it) can explain a change seen within
//! `RELOAD_DEADLINE`.

use std::time::Duration;

use super::{
    COMPAT_EXAMPLE_CONFIG, COMPAT_EXAMPLE_RULES, DEFAULT_RULES, assert_nat, send_probe_datagram,
};
use crate::support::Family::V4;
use crate::support::http::{get, sample};
use crate::support::iptables::packets_of;
use crate::support::*;

/// A watched change is applied within milliseconds and a polled one within
/// the 1 s poll; this leaves a wide margin for a loaded machine while
/// staying far below the 60 s resync.
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

/// Only 10.0.0.0/8 exempt, link-local masqueraded; default resync (60 s).
const TEN_ONLY: &str = "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\n";

/// What `TEN_ONLY` writes (COMPAT §4 shape).
const TEN_ONLY_RULES: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

/// Log texts of the agent this file relies on.
const WATCHING: &str = "watching the config directory";
const POLLING: &str = "polling the config file";
const FROM_FILE_EVENT: &str = r#"trigger="file_event""#;
const NO_FILE: &str = r#"source="defaults (no config file)""#;

/// Waits (up to `RELOAD_DEADLINE`) until the IPv4 nat table of `mode`
/// reads `expected`; fails at once, with the log, if the agent exits.
fn wait_nat(agent: &mut Agent, ns: &Netns, mode: Mode, expected: &str, what: &str) {
    let observe = || {
        agent.assert_running();
        save(ns, mode, V4)
    };
    wait_for_text(RELOAD_DEADLINE, what, observe, expected);
}

/// How many log lines contain every one of `needles` (case-sensitive).
fn lines_with(log: &str, needles: &[&str]) -> usize {
    log.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .count()
}

/// Waits until some log line contains every one of `needles`.
fn wait_for_line(agent: &mut Agent, needles: &[&str]) {
    wait_until(
        RELOAD_DEADLINE,
        &format!("a log line containing all of {needles:?} (the log follows)"),
        || {
            agent.assert_running();
            agent.log()
        },
        |log| lines_with(log, needles) > 0,
    );
}

/// The rule lines of `save_with_counters` output, with their counters
/// (`[packets:bytes] -A …`). Chain lines are left out: legacy also counts
/// the test's own HTTP requests to the metrics endpoint in the built-in
/// chains' policy counters, which the agent does not own.
fn rule_lines(save_c: &str) -> String {
    save_c
        .lines()
        .filter(|l| l.starts_with('['))
        .map(|l| format!("{l}\n"))
        .collect()
}

both_modes! {
    /// Started with an empty volume (no key: the defaults), then kubelet
    /// adds the file: its rules are applied on the file event.
    fn config_file_appearing_is_applied(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::empty();
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the defaults (no config file yet)");
        wait_for_line(&mut agent, &["using config", r#"trigger="startup""#, NO_FILE]);
        wait_for_line(&mut agent, &[WATCHING]);

        volume.update(TEN_ONLY);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the new file's rules, with no signal and no resync");
        wait_for_line(&mut agent, &["using config", FROM_FILE_EVENT, r#"source="file""#]);
        wait_for_line(&mut agent, &["rules applied", FROM_FILE_EVENT, r#"reason="config change""#]);
        agent.assert_running();
    }
}

both_modes! {
    /// kubelet swaps in a changed file: applied, and the log names the
    /// trigger `file_event`; the directory stayed watched (no polling).
    fn config_file_change_is_applied_on_the_file_event(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, COMPAT_EXAMPLE_RULES, "the first sync");
        wait_for_line(&mut agent, &[WATCHING]);

        volume.update(TEN_ONLY);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the changed file's rules, with no signal and no resync");
        wait_for_line(&mut agent, &["using config", FROM_FILE_EVENT, r#"source="file""#]);
        wait_for_line(&mut agent, &["rules applied", FROM_FILE_EVENT, r#"reason="config change""#]);
        assert_eq!(
            agent.count_lines(POLLING),
            0,
            "the directory existed throughout, so it should have been watched, never polled:\n{}",
            agent.log()
        );
        agent.assert_running();
    }
}

both_modes! {
    /// kubelet removes the key's symlink: back to the defaults at once.
    fn config_file_removal_means_defaults(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(TEN_ONLY);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the first sync");
        wait_for_line(&mut agent, &[WATCHING]);

        volume.remove();
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the defaults after the file was removed");
        wait_for_line(&mut agent, &["using config", FROM_FILE_EVENT, NO_FILE]);
        agent.assert_running();
    }
}

both_modes! {
    /// `--config` points into a directory that does not exist: the
    /// defaults apply and the log says the file is polled; when the
    /// directory appears with a config (kubelet-style), the config is
    /// applied and the log says the directory is watched.
    fn missing_directory_is_polled_then_watched_once_it_appears(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::missing();
        assert!(!volume.dir().exists(), "{} must not exist yet", volume.dir().display());
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the defaults while the config directory is missing");
        let dir = volume.dir().display().to_string();
        wait_for_line(&mut agent, &[POLLING, &dir]);
        assert_eq!(agent.count_lines(WATCHING), 0, "nothing to watch yet:\n{}", agent.log());

        volume.create_dir();
        volume.update(TEN_ONLY);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the config once its directory appeared");
        wait_for_line(&mut agent, &[WATCHING, &dir]);

        // And the new watch keeps following kubelet's updates.
        volume.update(COMPAT_EXAMPLE_CONFIG);
        wait_nat(&mut agent, &ns, mode, COMPAT_EXAMPLE_RULES, "the next update in the new directory");
        agent.assert_running();
    }
}

both_modes! {
    /// The whole volume directory vanishes while the agent runs: the file is
    /// absent, so the defaults apply, and the agent falls back to polling;
    /// when the directory comes back with a config, it is applied and the
    /// directory is watched again.
    fn vanished_directory_means_defaults_until_it_is_back(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(TEN_ONLY);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the first sync");
        wait_for_line(&mut agent, &[WATCHING]);

        volume.delete_dir();
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the defaults after the directory vanished");
        wait_for_line(&mut agent, &[POLLING]);

        volume.create_dir();
        volume.update(TEN_ONLY);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the config once the directory is back");
        wait_until(
            RELOAD_DEADLINE,
            &format!("a second {WATCHING:?} log line (the log follows)"),
            || {
                agent.assert_running();
                agent.log()
            },
            |log| lines_with(log, &[WATCHING]) >= 2,
        );

        volume.update(COMPAT_EXAMPLE_CONFIG);
        wait_nat(&mut agent, &ns, mode, COMPAT_EXAMPLE_RULES, "the next update in the recreated directory");
        agent.assert_running();
    }
}

both_modes! {
    /// kubelet re-publishes the same text (as it does when another key of
    /// the ConfigMap changes): nothing is written, so no `rules applied`
    /// line and the MASQUERADE rule keeps its packet counter.
    fn republished_same_content_writes_nothing(mode) {
        if !require_tools(&["curl"]) {
            return;
        }
        const PORT: u16 = 20610;
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(TEN_ONLY);
        let mut agent = Agent::start(&ns, mode, &volume, &[&format!("--metrics-address=127.0.0.1:{PORT}")]);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the first sync");
        wait_for_line(&mut agent, &["rules applied", r#"trigger="startup""#]);
        wait_for_line(&mut agent, &[WATCHING]);

        send_probe_datagram(&ns);
        let before = save_with_counters(&ns, mode, V4);
        let packets = packets_of(&before, "-j MASQUERADE");
        assert!(
            packets.is_some_and(|p| p >= 1),
            "the probe datagram was not counted by our MASQUERADE rule:\n{before}"
        );
        let applied = agent.count_lines("rules applied");
        let unchanged_state = || format!("`rules applied` lines: {applied}\n{}", rule_lines(&before));
        let observe = |agent: &Agent| {
            format!(
                "`rules applied` lines: {}\n{}",
                agent.count_lines("rules applied"),
                rule_lines(&save_with_counters(&ns, mode, V4))
            )
        };

        volume.update(TEN_ONLY);
        // The agent reacts to a directory event within milliseconds, and
        // its 1 s identity poll would notice the new file even without
        // one; 2.5 s spans two poll periods, so the re-published file has
        // certainly been looked at by the end.
        hold_for(
            Duration::from_millis(2500),
            &format!("no write after re-publishing the same text; expected:\n{}", unchanged_state()),
            || {
                agent.assert_running();
                observe(&agent)
            },
            |now| *now == unchanged_state(),
        );

        // A positive sign that the loop is processing file events: a
        // comment-only edit (a valid load of an equal config, counted in
        // the metrics), which must not write either.
        volume.update(&format!("{TEN_ONLY}# re-published with a comment\n"));
        let loads = wait_until(
            RELOAD_DEADLINE,
            "the comment-only edit to be loaded (config_loads_total{result=\"valid\",trigger=\"file_event\"})",
            || {
                agent.assert_running();
                get(&ns, &format!("http://127.0.0.1:{PORT}/metrics"), &[])
            },
            |r| {
                sample(&r.body, "ip_masq_agent_config_loads_total", &[("result", "valid"), ("trigger", "file_event")])
                    .is_some_and(|n| n >= 1.0)
            },
        );
        assert_eq!(
            sample(&loads.body, "ip_masq_agent_syncs_total", &[("family", "ipv4"), ("result", "applied")]),
            Some(1.0),
            "only the startup sync may have written:\n{loads}"
        );
        assert_text_eq(
            "rules-applied count and iptables-save -c -t nat after both edits",
            &observe(&agent),
            &unchanged_state(),
        );
        assert_nat(&ns, mode, V4, TEN_ONLY_RULES);
        agent.assert_running();
    }
}
