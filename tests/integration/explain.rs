//! `explain` through the binary: the shipped exceptions example, the
//! manifest and bare-file forms, `--output=json`, and the errors with their
//! exit codes. No root is needed, and none is used: every run has an empty
//! `PATH`, so even a binary that fell through into the daemon could not
//! reach iptables.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::support::agent_bin;
use crate::support::process::{describe, run_bounded};

/// A broken binary stuck in its daemon loop is killed after this.
const TIMEOUT: Duration = Duration::from_secs(10);

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("configmap-examples/exceptions.yaml")
}

fn explain(args: &[&str]) -> Output {
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).env("PATH", "/nonexistent");
    run_bounded(&mut cmd, TIMEOUT)
}

fn stdout_ok(args: &[&str]) -> String {
    let out = explain(args);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("{args:?}"), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_exceptions_example_explained() {
    let config = example();
    let config = config.to_str().unwrap();
    assert_eq!(
        stdout_ok(&["--config", config, "explain", "10.11.0.7", "10.11.0.200", "10.20.1.1", "8.8.8.8", "fd00::1"]),
        "10.11.0.7 masquerade masqueradeCIDRs 10.11.0.0/24, longer than nonMasqueradeCIDRs 10.0.0.0/8
10.11.0.200 no-masquerade nonMasqueradeCIDRs 10.11.0.128/25, longer than masqueradeCIDRs 10.11.0.0/24
10.20.1.1 no-masquerade nonMasqueradeCIDRs 10.0.0.0/8
8.8.8.8 masquerade default: in no list
fd00::1 no-masquerade ipv6 not enabled (--enable-ipv6): the agent leaves IPv6 traffic alone
"
    );
    assert_eq!(
        stdout_ok(&[
            "--config",
            config,
            "explain",
            "--from",
            "203.0.113.9",
            "10.11.0.7"
        ]),
        "10.11.0.7 no-masquerade pod source rule: the source is outside podCIDRs\n"
    );
    let json = stdout_ok(&[
        "--config",
        config,
        "explain",
        "--output=json",
        "--from=10.40.0.9",
        "10.11.0.7",
        "8.8.8.8",
    ]);
    let objects: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0]["address"], "10.11.0.7");
    assert_eq!(objects[0]["verdict"], "masquerade");
    assert_eq!(objects[0]["source"], "10.40.0.9");
    assert_eq!(objects[0]["decided"]["cidr"], "10.11.0.0/24");
    assert_eq!(objects[0]["over"]["list"], "nonMasqueradeCIDRs");
    assert_eq!(objects[1]["rule"], "default");
}

#[test]
fn a_bare_file_an_absent_one_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bare = dir.path().join("config");
    std::fs::write(
        &bare,
        "nonMasqueradeCIDRs: [fd00::/8]\nmasqueradeCIDRs: [fd00:9::/32]\n",
    )
    .unwrap();
    let bare = bare.to_str().unwrap();
    assert_eq!(
        stdout_ok(&[
            "--config",
            bare,
            "--enable-ipv6",
            "explain",
            "fd00:9::1",
            "fd00:8::1"
        ]),
        "fd00:9::1 masquerade masqueradeCIDRs fd00:9::/32, longer than nonMasqueradeCIDRs fd00::/8
fd00:8::1 no-masquerade nonMasqueradeCIDRs fd00::/8
"
    );
    // No file: the defaults, as the agent enforces them.
    let absent = dir.path().join("absent");
    assert_eq!(
        stdout_ok(&[
            "--config",
            absent.to_str().unwrap(),
            "explain",
            "172.16.0.1",
            "169.254.169.254"
        ]),
        "172.16.0.1 no-masquerade nonMasqueradeCIDRs 172.16.0.0/12
169.254.169.254 no-masquerade link-local 169.254.0.0/16 (masqLinkLocal is false)
"
    );
    // An invalid config is refused with the agent's own message, exit 1.
    let out = explain(&["--config", bare, "explain", "10.0.0.1"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{bare}: invalid config: ")),
        "{stderr}"
    );
    assert!(
        stderr.contains("ipv6 is not enabled, but ipv6 cidr fd00::/8 provided"),
        "{stderr}"
    );
    // A bad address is named, exit 1; none at all is a usage error, exit 2.
    let out = explain(&["--config", bare, "explain", "10.0.0.1", "10.0.0.300"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "explain: argument 2 (\"10.0.0.300\") is not an IP address\n"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(explain(&["explain"]).status.code(), Some(2));
}
