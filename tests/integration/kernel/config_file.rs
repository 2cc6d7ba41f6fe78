//! The `--config` file as operators really handle it: edited in place by a
//! writer that truncates first and writes after, a ConfigMap manifest put
//! where the config belongs, and the messages a node operator reads when
//! `sync` cannot work (no CAP_NET_ADMIN, a tool failing in several lines).

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use super::{COMPAT_EXAMPLE_CONFIG, COMPAT_EXAMPLE_RULES};
use crate::support::Family::V4;
use crate::support::http::get;
use crate::support::process::{COMMAND_TIMEOUT, describe, run_bounded, texts};
use crate::support::*;

/// A change is applied well within this on a loaded machine (the watch
/// reacts in milliseconds, the truncation settle is 250 ms).
const APPLY_DEADLINE: Duration = Duration::from_secs(5);

/// Only 10.9.0.0/16 exempt: a list that shares nothing with the defaults.
const TEN_NINE: &str = "nonMasqueradeCIDRs: [10.9.0.0/16]\n";

/// The RFC 1918 range that only the defaults (of these configs) hold.
const DEFAULTS_MARK: &str = "172.16.0.0/12";

/// Rewrite `path` in place as a careless editor or `>` does: truncate,
/// pause `gap`, write, close; the inode stays the same.
fn write_in_place(path: &Path, text: &str, gap: Duration) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .expect("open the config for writing");
    thread::sleep(gap);
    file.write_all(text.as_bytes()).expect("write the config");
}

fn wait_rules_contain(
    agent: &mut Agent,
    ns: &Netns,
    mode: Mode,
    needle: &str,
    what: &str,
) -> String {
    wait_until(
        APPLY_DEADLINE,
        what,
        || {
            agent.assert_running();
            save(ns, mode, V4)
        },
        |text| text.contains(needle),
    )
}

/// A hand-managed file rewritten in place, with 50 ms between truncation
/// and write, four times: the empty moment is never taken for "no settings"
/// (the defaults), neither in the rules (sampled all along) nor in what the
/// agent says it uses. A file emptied for good does get the defaults, once
/// it has stayed empty for the settle time.
#[test]
fn truncate_then_write_never_applies_the_defaults() {
    if !require_root_and_tools() {
        return;
    }
    let mode = Mode::Nft;
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("ip-masq-agent");
    std::fs::write(&path, COMPAT_EXAMPLE_CONFIG).expect("write the config");
    let mut agent = Agent::start_sources(&ns, mode, std::slice::from_ref(&path), &[]);
    wait_for_text(
        APPLY_DEADLINE,
        "the first sync",
        || save(&ns, mode, V4),
        COMPAT_EXAMPLE_RULES,
    );

    // Sample the rules all through the rewrites.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = Arc::clone(&stop);
        let name = ns.name().to_owned();
        thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let out = run_bounded(
                    std::process::Command::new("ip").args([
                        "netns",
                        "exec",
                        &name,
                        &mode.tool(V4, "-save"),
                        "-t",
                        "nat",
                    ]),
                    COMMAND_TIMEOUT,
                );
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.contains(DEFAULTS_MARK) {
                    seen.push(text);
                }
                thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    for round in 0..4 {
        let (text, mark) = if round % 2 == 0 {
            (TEN_NINE, "-d 10.9.0.0/16")
        } else {
            (COMPAT_EXAMPLE_CONFIG, "-d 192.168.0.0/16")
        };
        write_in_place(&path, text, Duration::from_millis(50));
        wait_rules_contain(
            &mut agent,
            &ns,
            mode,
            mark,
            &format!("round {round}: the rewritten config's rules"),
        );
    }
    stop.store(true, Ordering::SeqCst);
    let defaults_seen = sampler.join().expect("the sampler thread");
    let log = agent.log();
    let used_defaults: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("using config") && l.contains(DEFAULTS_MARK))
        .collect();
    assert!(
        used_defaults.is_empty(),
        "the agent used the defaults mid-rewrite:\n{}",
        used_defaults.join("\n")
    );
    assert!(
        defaults_seen.is_empty(),
        "the defaults were written mid-rewrite:\n{}",
        defaults_seen.join("\n")
    );
    assert_eq!(
        log.matches("using config").count(),
        5,
        "one config per rewrite, nothing between:\n{log}"
    );
    // Durations are logged rounded, without float noise (18.058144000000002).
    for word in log
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("elapsed_ms="))
    {
        let decimals = word.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(
            decimals <= 3 && word.parse::<f64>().is_ok(),
            "elapsed_ms={word}"
        );
    }

    // Emptied for good: the defaults (upstream's reading of an empty file),
    // after the settle time.
    let emptied = Instant::now();
    write_in_place(&path, "", Duration::ZERO);
    wait_rules_contain(
        &mut agent,
        &ns,
        mode,
        DEFAULTS_MARK,
        "the defaults for a file that stays empty",
    );
    let took = emptied.elapsed();
    eprintln!("an emptied file took {took:?} to apply the defaults");
    assert!(
        took >= Duration::from_millis(250),
        "the emptiness was believed at once ({took:?})"
    );
}

const MANIFEST: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: ip-masq-agent
  namespace: kube-system
data:
  config: |
    nonMasqueradeCIDRs:
      - 10.9.0.0/16
";

/// A ConfigMap manifest given to `--config`: `sync` and the daemon use its
/// `data.config` (as `check` does) and say so once, instead of applying
/// the defaults; the daemon's fingerprint metric is the one `check` prints
/// for the same file and rule flags.
#[test]
fn sync_and_the_daemon_read_a_manifest_by_its_data_key() {
    if !require_root_and_tools() || !require_tools(&["curl"]) {
        return;
    }
    let mode = Mode::Nft;
    let ns = Netns::new();
    let volume = ConfigVolume::with(MANIFEST);
    let log = sync_ok(&ns, mode, &volume, &[]);
    assert_eq!(
        log.matches("config file is a ConfigMap manifest; using its data.config")
            .count(),
        1,
        "{log}"
    );
    let rules = save(&ns, mode, V4);
    assert!(
        rules.contains("-d 10.9.0.0/16") && !rules.contains(DEFAULTS_MARK),
        "{rules}"
    );

    let flags = ["--to-ports=1024-29999"];
    let mut agent = Agent::start(&ns, mode, &volume, &flags);
    wait_rules_contain(
        &mut agent,
        &ns,
        mode,
        "--to-ports 1024-29999",
        "the daemon's rules with --to-ports",
    );
    assert_metric_is_checks_fingerprint(&ns, &volume, &flags);
    let log = agent.log();
    assert_eq!(
        log.matches("config file is a ConfigMap manifest").count(),
        1,
        "{log}"
    );

    // A misaligned CIDR in the manifest: upstream's text, then the hint, on
    // the one log line.
    let mut volume = volume;
    volume.update(&MANIFEST.replace("10.9.0.0/16", "10.9.0.1/16"));
    agent.wait_for_log(
        r#"CIDR "10.9.0.1/16" is not aligned to a CIDR block, ip: "10.9.0.1" network: "10.9.0.0/16"; hint: did you mean 10.9.0.0/16?"#,
    );
    // Broken YAML in the manifest's data: its position in the file too.
    volume.update(&MANIFEST.replace(
        "      - 10.9.0.0/16\n",
        "      - [10.9.0.0/16\n    cidrLimit: 3\n",
    ));
    agent.wait_for_log(&format!(
        "illegal placement of ':' indicator at byte 46 line 3 column 10 (data.config line 3 is line 10 of {})",
        volume.path().display()
    ));
}

/// The fingerprint counts `--backend` too: a daemon on the nftables backend
/// exports the fingerprint `check --backend=nftables` prints, not the
/// iptables one.
#[test]
fn the_nftables_daemon_exports_checks_fingerprint() {
    if !require_root_and_tools() || !require_tools(&["curl"]) {
        return;
    }
    let ns = Netns::new();
    let volume = ConfigVolume::with(MANIFEST);
    let flags = ["--backend=nftables"];
    let mut agent = Agent::start_with_flags(&ns, &volume, &flags);
    wait_until(
        APPLY_DEADLINE,
        "the nftables table",
        || {
            agent.assert_running();
            texts(&ns.exec(&["nft", "list", "table", "ip", "ip-masq-agent"])).0
        },
        |text| text.contains("10.9.0.0/16"),
    );
    let nft = assert_metric_is_checks_fingerprint(&ns, &volume, &flags);
    let iptables = checks_fingerprint(&ns, &volume, &[]);
    assert_ne!(nft, iptables, "the backend must change the fingerprint");
}

/// The fingerprint `check FILE` prints with `flags`.
fn checks_fingerprint(ns: &Netns, volume: &ConfigVolume, flags: &[&str]) -> String {
    let mut args = flags.to_vec();
    let file = volume.path();
    args.extend(["check", file.to_str().expect("UTF-8 path")]);
    let out = oneshot(ns, &args);
    let (stdout, _) = texts(&out);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint: "))
        .and_then(|l| l.split(' ').next())
        .unwrap_or_else(|| panic!("{}", describe("check", &out)))
        .to_owned()
}

/// Waits until the daemon in `ns` exports the fingerprint `check` prints
/// for the same file and flags; returns it.
fn assert_metric_is_checks_fingerprint(
    ns: &Netns,
    volume: &ConfigVolume,
    flags: &[&str],
) -> String {
    let want = checks_fingerprint(ns, volume, flags);
    let metric = format!("ip_masq_agent_config{{fingerprint=\"{want}\"}} 1");
    wait_until(
        APPLY_DEADLINE,
        &format!("the metric {metric}"),
        || get(ns, "http://127.0.0.1:9557/metrics", &[]).body,
        |body| body.contains(&metric),
    );
    want
}

/// `sync` without CAP_NET_ADMIN (root with every capability dropped) says
/// that, first and only, instead of a WARN per tool that failed.
#[test]
fn sync_without_cap_net_admin_says_so_first_and_only() {
    if !require_root_and_tools() || !require_tools(&["setpriv"]) {
        return;
    }
    let ns = Netns::new();
    let bin = agent_bin();
    let out = run_bounded(
        ns.command("setpriv")
            .args(["--inh-caps=-all", "--bounding-set=-all"])
            .arg(&bin)
            .args(["sync", "--config", "/nonexistent/imqa/ip-masq-agent"]),
        COMMAND_TIMEOUT,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("sync without capabilities", &out)
    );
    let (_, stderr) = texts(&out);
    assert_eq!(
        stderr,
        "error: sync changes the kernel's nat rules and needs CAP_NET_ADMIN: run it as root \
         (or with the NET_ADMIN capability); render and check need no privileges\n"
    );
    assert_eq!(
        save(&ns, Mode::Nft, V4),
        super::EMPTY_NAT,
        "nothing may have been written"
    );
}

/// A tool that fails with several lines on stderr (as iptables and nft do)
/// still gives one log line per event: line-based shippers see one record.
#[test]
fn a_failing_tool_logs_one_line_per_event() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let shims = tempfile::tempdir().expect("temp dir for the shim");
    let shim = shims.path().join("iptables-nft");
    std::fs::write(
        &shim,
        "#!/bin/sh\necho 'iptables v1.8.9 (nf_tables): Could not fetch rule set generation id' >&2\n\
         echo 'netlink: Error: cache initialization failed' >&2\nexit 4\n",
    )
    .expect("write the shim");
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the shim");
    let path = format!(
        "PATH={}:{}",
        shims.path().display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
    );
    let bin = agent_bin();
    let out = run_bounded(
        ns.command("env").arg(path).arg(&bin).args([
            "--iptables-mode=nft",
            "sync",
            "--config",
            "/nonexistent/imqa/ip-masq-agent",
        ]),
        COMMAND_TIMEOUT,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        describe("sync with a failing iptables", &out)
    );
    let (_, stderr) = texts(&out);
    assert!(
        stderr.contains(
            "Could not fetch rule set generation id\\nnetlink: Error: cache initialization failed"
        ),
        "the tool's two lines should be one escaped log line:\n{stderr}"
    );
    for line in stderr.lines() {
        assert!(
            line.starts_with("20"),
            "a log line without its timestamp (a split event): {line:?}\n{stderr}"
        );
    }
}

/// Kubelet's atomic `..data` swaps replace the file, so the truncation
/// settle never delays them: a settle would put every swap past 250 ms, so
/// the median stays below that even on a loaded machine (on an idle one a
/// swap is live in about 10 ms; see "How fast an edit goes live").
#[test]
fn kubelet_swaps_are_not_delayed_by_the_settle() {
    if !require_root_and_tools() {
        return;
    }
    let mode = Mode::Nft;
    let ns = Netns::new();
    let mut volume = ConfigVolume::with(COMPAT_EXAMPLE_CONFIG);
    let mut agent = Agent::start(&ns, mode, &volume, &[]);
    wait_for_text(
        APPLY_DEADLINE,
        "the first sync",
        || save(&ns, mode, V4),
        COMPAT_EXAMPLE_RULES,
    );
    let mut took = Vec::new();
    for round in 0..10 {
        let (text, mark) = if round % 2 == 0 {
            (TEN_NINE, "-d 10.9.0.0/16")
        } else {
            (COMPAT_EXAMPLE_CONFIG, "-d 192.168.0.0/16")
        };
        let swapped = Instant::now();
        volume.update(text);
        wait_rules_contain(
            &mut agent,
            &ns,
            mode,
            mark,
            &format!("swap {round}: the new config's rules"),
        );
        took.push(swapped.elapsed());
    }
    took.sort();
    let median = took[took.len() / 2];
    eprintln!(
        "kubelet swap to rules live: median {median:?}, max {:?}",
        took[took.len() - 1]
    );
    assert!(median < Duration::from_millis(250), "swaps took {took:?}");
}
