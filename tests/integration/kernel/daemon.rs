//! The daemon loop: it repairs drift, keeps the last good rules through an
//! invalid config, follows kubelet's config updates and removals, writes
//! nothing when nothing changed, and stops on SIGTERM/SIGINT leaving its
//! rules in place (COMPAT §5, contract "Kernel effect").
//!
//! Configs here set `resyncInterval: 1s` where a test waits for a resync, so
//! `DEADLINE` (10 s) is ten periods of margin.

use std::thread;
use std::time::Duration;

use super::{
    COMPAT_EXAMPLE_CONFIG, COMPAT_EXAMPLE_RULES, DEFAULT_RULES, EMPTY_NAT, assert_nat,
    assert_only_v4_of, send_probe_datagram,
};
use crate::support::Family::V4;
use crate::support::iptables::packets_of;
use crate::support::process::describe;
use crate::support::*;

/// Defaults, resynced every second.
const DEFAULTS_FAST: &str = "resyncInterval: 1s\n";

/// Only 10.0.0.0/8 exempt, link-local masqueraded, resynced every second.
const TEN_ONLY_FAST: &str =
    "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\nresyncInterval: 1s\n";

/// What `TEN_ONLY_FAST` (or the same list at the default interval) writes.
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

/// Waits until the IPv4 nat table of `mode` reads `expected`. Fails at
/// once, with the agent's log, if the agent exits meanwhile: waiting out the
/// deadline for a dead daemon only hides the cause.
fn wait_nat(agent: &mut Agent, ns: &Netns, mode: Mode, expected: &str, what: &str) {
    let observe = || {
        agent.assert_running();
        save(ns, mode, V4)
    };
    wait_for_text(DEADLINE, what, observe, expected);
}

both_modes! {
    /// Someone flushes our chain, deletes our jump, or adds a rule to our
    /// chain: the next resync puts it back and logs `drift`.
    fn drift_is_repaired(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with(DEFAULTS_FAST);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the first sync");

        ipt(&ns, mode, V4, "-t nat -F IP-MASQ-AGENT");
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the flushed chain to be refilled");

        ipt(&ns, mode, V4, concat!(
            r#"-t nat -D POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all "#,
            r#"non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT"#,
        ));
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the deleted jump to be re-added");

        ipt(&ns, mode, V4, "-t nat -I IP-MASQ-AGENT 1 -d 203.0.113.0/24 -j RETURN");
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the foreign rule in our chain to be removed");

        agent.wait_for_log("drift");
        agent.assert_running();
    }
}

both_modes! {
    /// A config that turns invalid keeps the last good rules, and they keep
    /// being enforced (the COMPAT §5 fix: upstream stops healing).
    fn invalid_update_keeps_and_heals_last_good_rules(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(TEN_ONLY_FAST);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the first sync");

        volume.update("nonMasqueradeCIDRs:\n  - 10.0.0.1/8\nmasqLinkLocal: true\nresyncInterval: 1s\n");
        agent.wait_for_log(r#"CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#);
        // Absence of a change cannot be polled for: give it two more resync
        // periods with the bad file in place, then look.
        thread::sleep(Duration::from_millis(2500));
        assert_nat(&ns, mode, V4, TEN_ONLY_RULES);
        agent.assert_running();

        ipt(&ns, mode, V4, "-t nat -F IP-MASQ-AGENT");
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the last good rules to come back after a flush");
        agent.assert_running();
    }
}

both_modes! {
    /// Invalid at first start: nothing is written anywhere and the agent
    /// keeps running; once kubelet swaps in a valid file the rules appear.
    fn invalid_at_start_writes_nothing_until_fixed(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with("nonMasqueradeCIDRs:\n  - abcdefg\n");
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        agent.wait_for_log(r#"CIDR "abcdefg" could not be parsed, invalid CIDR address: abcdefg"#);
        assert_nat(&ns, mode, V4, EMPTY_NAT);
        assert_only_v4_of(&ns, mode);
        agent.assert_running();

        volume.update(TEN_ONLY_FAST);
        // The invalid file could not set resyncInterval, so the timer still
        // runs at the 60 s default. SIGHUP makes the reload immediate, so
        // this test does not depend on the file watch (tested on its own in
        // `valid_update_is_applied_without_waiting_for_resync`).
        agent.signal("HUP");
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the fixed config to be applied after SIGHUP");
        agent.assert_running();
    }
}

both_modes! {
    /// The COMPAT §5 fix: an update is applied when kubelet swaps the file,
    /// not at the next resync (60 s by default here, far beyond DEADLINE).
    fn valid_update_is_applied_without_waiting_for_resync(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, COMPAT_EXAMPLE_RULES, "the first sync");
        volume.update("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\n");
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the updated config, well before the 60 s resync");
        agent.assert_running();
    }
}

both_modes! {
    /// kubelet removes the key's symlink (ConfigMap or key deleted): back to
    /// the defaults; when it comes back, its rules come back.
    fn removed_config_file_means_defaults(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::with(TEN_ONLY_FAST);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the first sync");
        volume.remove();
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the defaults after the file was removed");
        // The defaults resync every 60 s, so this also needs the file watch.
        volume.update(TEN_ONLY_FAST);
        wait_nat(&mut agent, &ns, mode, TEN_ONLY_RULES, "the config again after the file came back");
        agent.assert_running();
    }
}

both_modes! {
    /// An unchanged node is not rewritten: the MASQUERADE rule's packet
    /// counter survives two resyncs that log `unchanged` (a rewrite would
    /// reset it to 0).
    fn unchanged_node_is_not_rewritten(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with(DEFAULTS_FAST);
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the first sync");

        send_probe_datagram(&ns);
        let before = save_with_counters(&ns, mode, V4);
        assert!(
            packets_of(&before, "-j MASQUERADE").is_some_and(|p| p >= 1),
            "the probe datagram was not counted by our MASQUERADE rule:\n{before}"
        );
        let seen = agent.count_lines("unchanged");
        agent.wait_for_lines("unchanged", seen + 2);
        let after = save_with_counters(&ns, mode, V4);
        assert_text_eq("iptables-save -c -t nat after two unchanged resyncs", &after, &before);
        agent.assert_running();
    }
}

/// Sends `signal` to a running, synced daemon: it must exit 0 within 1 s
/// (the contract; kubelet's grace period is not the agent's to use up) and
/// leave its rules in place, so traffic does not change during a rollout.
fn stops_on(mode: Mode, signal: &str) {
    let ns = Netns::new();
    let volume = ConfigVolume::empty();
    let mut agent = Agent::start(&ns, mode, &volume, &[]);
    wait_nat(&mut agent, &ns, mode, DEFAULT_RULES, "the first sync");
    agent.signal(signal);
    match agent.wait_exit(Duration::from_secs(1)) {
        Some(status) => assert_eq!(
            status.code(),
            Some(0),
            "SIG{signal}: {status}\n--- agent stderr\n{}",
            agent.log()
        ),
        None => panic!(
            "still running 1 s after SIG{signal}\n--- agent stderr\n{}",
            agent.log()
        ),
    }
    assert_nat(&ns, mode, V4, DEFAULT_RULES);
}

both_modes! {
    fn sigterm_exits_0_and_keeps_rules(mode) {
        stops_on(mode, "TERM");
    }
}

both_modes! {
    fn sigint_exits_0_and_keeps_rules(mode) {
        stops_on(mode, "INT");
    }
}

both_modes! {
    /// Startup logs the version and every flag as `FLAG: --name="value"`
    /// (COMPAT §1), which operators grep for when comparing with upstream.
    fn startup_logs_version_and_flags(mode) {
        let ns = Netns::new();
        let version = oneshot(&ns, &["version"]);
        assert!(version.status.success(), "{}", describe("version", &version));
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let semver = version.strip_prefix("ip-masq-agent ").unwrap_or(&version).to_owned();

        let volume = ConfigVolume::empty();
        let mut agent = Agent::start(&ns, mode, &volume, &["--masq-chain=IP-MASQ"]);
        wait_until(DEADLINE, "the rules in chain IP-MASQ", || save(&ns, mode, V4), |s| s.contains(":IP-MASQ - [0:0]"));
        for needle in [
            semver.as_str(),
            r#"FLAG: --masq-chain="IP-MASQ""#,
            r#"FLAG: --nomasq-all-reserved-ranges="false""#,
            r#"FLAG: --enable-ipv6="false""#,
            r#"FLAG: --random-fully="true""#,
            r#"FLAG: --to-ports="""#,
        ] {
            agent.wait_for_log(needle);
        }
        assert!(
            agent.log().contains(&format!(r#"FLAG: --iptables-mode="{}""#, mode.flag())),
            "no FLAG line for --iptables-mode:\n{}",
            agent.log()
        );
        agent.assert_running();
    }
}

both_modes! {
    /// The iptables tools are missing (a broken image, a node without the
    /// package): the daemon logs the failure with its cause, retries with
    /// backoff, stays alive and writes nothing. It must never exit on it.
    fn missing_iptables_is_retried_never_fatal(mode) {
        let ns = Netns::new();
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        let volume = ConfigVolume::with(DEFAULTS_FAST);
        let mut agent = Agent::start_with_env(
            &ns,
            mode,
            &volume,
            &["--metrics-address=127.0.0.1:9561"],
            &[("PATH", "/nonexistent")],
        );
        agent.wait_for_log("not_found");
        // A second failure proves the retry (backoff starts at 0.8 s).
        agent.wait_for_lines("will retry the sync", 2);
        agent.assert_running();
        assert_nat(&ns, mode, V4, EMPTY_NAT);
        let ready = ns.exec(&[
            "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
            "http://127.0.0.1:9561/readyz",
        ]);
        assert_eq!(String::from_utf8_lossy(&ready.stdout), "503", "readyz while iptables is missing");
    }
}
