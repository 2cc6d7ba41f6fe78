//! The command line: `check`, `render`, flag errors and `--version`, against
//! the contract's exit codes and COMPAT's texts. No root is needed.
//!
//! Safety: a binary whose flag parsing is broken could fall through into the
//! daemon and program iptables. So as root every invocation runs inside a
//! throwaway namespace; without root it cannot change iptables anyway. Every
//! invocation names a harmless subcommand where the flags allow one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::support::env::{is_root, kernel_available};
use crate::support::process::{describe, run_bounded, run_bounded_with_stdin, texts};
use crate::support::text::contains_block;
use crate::support::{Netns, agent_bin, assert_text_eq};

/// A broken binary stuck in its daemon loop is killed after this.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

fn cli(args: &[&str]) -> Output {
    if is_root() {
        if kernel_available().is_ok() {
            let ns = Netns::new();
            return crate::support::oneshot(&ns, args);
        }
        // Root without namespaces: hide the iptables tools instead.
        let mut cmd = Command::new(agent_bin());
        cmd.args(args).env("PATH", "/nonexistent");
        return run_bounded(&mut cmd, CLI_TIMEOUT);
    }
    run_bounded(Command::new(agent_bin()).args(args), CLI_TIMEOUT)
}

/// As [`cli`], with `input` as the agent's stdin.
fn cli_with_stdin(args: &[&str], input: &Path) -> Output {
    let stdin = || {
        std::fs::File::open(input)
            .expect("open the stdin file")
            .into()
    };
    if is_root() && kernel_available().is_ok() {
        let ns = Netns::new();
        let bin = agent_bin();
        let mut cmd = ns.command(bin.to_str().expect("UTF-8 binary path"));
        return run_bounded_with_stdin(cmd.args(args), CLI_TIMEOUT, stdin());
    }
    let mut cmd = Command::new(agent_bin());
    cmd.args(args).env("PATH", "/nonexistent");
    run_bounded_with_stdin(&mut cmd, CLI_TIMEOUT, stdin())
}

/// A config file in a fresh directory (kept alive by the returned guard).
fn file(text: &str) -> (TempDir, PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix("imqa-cli-")
        .tempdir()
        .expect("temp dir");
    let path = dir.path().join("config");
    std::fs::write(&path, text).expect("write the config");
    (dir, path)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// A path that does not exist, so `render` uses the defaults and never reads
/// the machine's own /etc/config/ip-masq-agent.
const NO_CONFIG: &str = "/nonexistent/imqa/ip-masq-agent";

fn expect_exit(out: &Output, code: i32, what: &str) -> (String, String) {
    assert_eq!(out.status.code(), Some(code), "{}", describe(what, out));
    texts(out)
}

/// `render` for no config file and default flags: COMPAT §4 step 3 with the
/// RFC 1918 list, after the family header.
const RENDER_DEFAULTS: &str = r#"# ipv4: iptables-restore --noflush
*nat
:IP-MASQ-AGENT - [0:0]
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 169.254.0.0/16 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 10.0.0.0/8 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 172.16.0.0/12 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 192.168.0.0/16 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

/// The COMPAT §4 example config, as a bare file.
const EXAMPLE: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\nmasqLinkLocal: true\n";

/// `render` (and the rules part of `check`) for `EXAMPLE`.
const RENDER_EXAMPLE: &str = r#"# ipv4: iptables-restore --noflush
*nat
:IP-MASQ-AGENT - [0:0]
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 10.0.0.0/8 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 192.168.0.0/16 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

#[test]
fn render_defaults_is_the_compat_payload() {
    let out = cli(&["--config", NO_CONFIG, "render"]);
    let (stdout, _) = expect_exit(&out, 0, "render");
    assert_text_eq("render, defaults", &stdout, RENDER_DEFAULTS);
}

#[test]
fn render_custom_config_is_the_compat_payload() {
    let (_dir, path) = file(EXAMPLE);
    let out = cli(&["--config", s(&path), "render"]);
    let (stdout, _) = expect_exit(&out, 0, "render");
    assert_text_eq("render, COMPAT example", &stdout, RENDER_EXAMPLE);
}

#[test]
fn render_ipv6_prints_both_families() {
    let (_dir, path) = file("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - fd00::/8\n");
    let out = cli(&["--config", s(&path), "--enable-ipv6", "render"]);
    let (stdout, _) = expect_exit(&out, 0, "render --enable-ipv6");
    assert_text_eq(
        "render --enable-ipv6",
        &stdout,
        r#"# ipv4: iptables-restore --noflush
*nat
:IP-MASQ-AGENT - [0:0]
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 169.254.0.0/16 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 10.0.0.0/8 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
# ipv6: ip6tables-restore --noflush
*nat
:IP-MASQ-AGENT - [0:0]
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d fe80::/10 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d fd00::/8 -j RETURN
-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#,
    );
}

#[test]
fn render_to_ports_weights_the_intervals() {
    // COMPAT §4.4: P = 28976 / (28976 + 32768), shortest round-trip form.
    let out = cli(&[
        "--config",
        NO_CONFIG,
        "--to-ports=1024-29999,32768-65535",
        "render",
    ]);
    let (stdout, _) = expect_exit(&out, 0, "render --to-ports");
    assert_text_eq(
        "render --to-ports",
        &stdout,
        include_str!("testdata/render-to-ports.txt"),
    );
}

#[test]
fn render_accepts_flags_after_the_subcommand() {
    let out = cli(&[
        "render",
        "--config",
        NO_CONFIG,
        "--masq-chain=IP-MASQ",
        "--random-fully=false",
    ]);
    let (stdout, _) = expect_exit(&out, 0, "render with flags after it");
    assert_text_eq(
        "render --masq-chain=IP-MASQ --random-fully=false",
        &stdout,
        r#"# ipv4: iptables-restore --noflush
*nat
:IP-MASQ - [0:0]
-A IP-MASQ -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 169.254.0.0/16 -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 10.0.0.0/8 -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 172.16.0.0/12 -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -d 192.168.0.0/16 -j RETURN
-A IP-MASQ -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE
COMMIT
"#,
    );
}

/// The first JSON object in `stdout` (check prints the effective config as
/// JSON, then the rules).
fn first_json(stdout: &str) -> Value {
    let start = stdout
        .find('{')
        .unwrap_or_else(|| panic!("no JSON object in check's output:\n{stdout}"));
    serde_json::Deserializer::from_str(&stdout[start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .unwrap_or_else(|| panic!("check's JSON does not parse:\n{stdout}"))
}

/// A key of the effective config. The contract fixes no spelling, so the
/// config file's own key names are matched ignoring case.
fn key<'a>(json: &'a Value, name: &str) -> &'a Value {
    json.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no key {name:?} in check's JSON:\n{json:#}"))
}

#[test]
fn check_valid_file_prints_effective_config_and_rules() {
    let (_dir, path) = file(EXAMPLE);
    let out = cli(&["check", s(&path)]);
    let (stdout, _) = expect_exit(&out, 0, "check on a valid file");
    let json = first_json(&stdout);
    assert_eq!(
        key(&json, "nonMasqueradeCIDRs"),
        &serde_json::json!(["10.0.0.0/8", "192.168.0.0/16"]),
        "{json:#}"
    );
    assert_eq!(key(&json, "masqLinkLocal"), &Value::Bool(true), "{json:#}");
    assert_eq!(
        key(&json, "masqLinkLocalIPv6"),
        &Value::Bool(false),
        "{json:#}"
    );
    assert_eq!(key(&json, "cidrLimit"), &serde_json::json!(64), "{json:#}");
    // Present, but its spelling ("60s" or Go's "1m0s") is not in the contract.
    let _ = key(&json, "resyncInterval");
    assert!(
        contains_block(&stdout, RENDER_EXAMPLE),
        "check's output lacks the rules render prints:\n{stdout}"
    );
}

#[test]
fn check_without_file_reads_the_config_flag() {
    let (_dir, path) = file(EXAMPLE);
    let out = cli(&["--config", s(&path), "check"]);
    let (stdout, _) = expect_exit(&out, 0, "check with --config");
    assert!(contains_block(&stdout, RENDER_EXAMPLE), "{stdout}");
}

#[test]
fn check_invalid_file_exits_1_with_the_upstream_error() {
    // COMPAT §3's texts, one per kind of error.
    let cases = [
        (
            "nonMasqueradeCIDRs: [10.0.0.1/8]\n",
            r#"CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#,
        ),
        (
            "nonMasqueradeCIDRs: [abcdefg]\n",
            r#"CIDR "abcdefg" could not be parsed, invalid CIDR address: abcdefg"#,
        ),
        (
            "nonMasqueradeCIDRs:\n  - fc00::/7\n",
            "ipv6 is not enabled, but ipv6 cidr fc00::/7 provided. Enable ipv6 using --enable-ipv6 agent flag",
        ),
        (
            "cidrLimit: 2\nnonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]\n",
            "the daemon can only accept up to 2 CIDRs (excluding link-local), but got 3 CIDRs (excluding link local)",
        ),
    ];
    let mut failures = Vec::new();
    for (config, error) in cases {
        let (_dir, path) = file(config);
        let out = cli(&["check", s(&path)]);
        let (_, stderr) = texts(&out);
        if out.status.code() != Some(1) || !stderr.contains(error) {
            failures.push(format!(
                "config {config:?}: want exit 1 and {error:?} on stderr\n{}",
                describe("check", &out)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

const MANIFEST: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: ip-masq-agent
  namespace: kube-system
data:
  config: |
    nonMasqueradeCIDRs:
      - 10.0.0.0/8
      - 192.168.0.0/16
    masqLinkLocal: true
"#;

#[test]
fn check_configmap_manifest_uses_data_config() {
    let (_dir, path) = file(MANIFEST);
    let out = cli(&["check", s(&path)]);
    let (stdout, _) = expect_exit(&out, 0, "check on a ConfigMap manifest");
    assert!(
        contains_block(&stdout, RENDER_EXAMPLE),
        "the manifest's data.config was not what check used:\n{stdout}"
    );

    let broken = MANIFEST.replace("10.0.0.0/8", "10.0.0.1/8");
    let (_dir2, path2) = file(&broken);
    let out = cli(&["check", s(&path2)]);
    let (_, stderr) = expect_exit(&out, 1, "check on an invalid ConfigMap manifest");
    assert!(
        stderr.contains(r#"CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#),
        "{stderr}"
    );
}

/// The VPN incident from a typo: the key is ignored (as upstream ignores
/// it), but `check` says so, and `--strict` fails on it; the same for a
/// ConfigMap the DaemonSet does not mount.
#[test]
fn check_names_unknown_keys_and_strict_fails_on_them() {
    let (_dir, path) = file("nonMasqueradeCIDR: [10.40.0.0/14]\n");
    let out = cli(&["check", s(&path)]);
    let (stdout, _) = expect_exit(&out, 0, "check of a config with a typo");
    assert!(
        stdout.contains(r#"warning: unknown key "nonMasqueradeCIDR" ignored (did you mean "nonMasqueradeCIDRs"?)"#),
        "{stdout}"
    );
    let out = cli(&["--strict", "check", s(&path)]);
    let (_, stderr) = expect_exit(&out, 1, "check --strict of a config with a typo");
    assert!(
        stderr.contains("check --strict: 1 warning(s), failing"),
        "{stderr}"
    );

    let other = MANIFEST.replace("name: ip-masq-agent", "name: ip-masq");
    let (_dir2, path2) = file(&other);
    let out = cli(&["--strict", "check", s(&path2)]);
    let (stdout, _) = expect_exit(&out, 1, "check --strict of another ConfigMap");
    assert!(
        stdout
            .contains("warning: ConfigMap kube-system/ip-masq is not the one the DaemonSet mounts"),
        "{stdout}"
    );
    let (_dir3, clean) = file("nonMasqueradeCIDRs: [10.40.0.0/14]\n");
    expect_exit(
        &cli(&["--strict", "check", s(&clean)]),
        0,
        "check --strict of a clean config",
    );
}

#[test]
fn unknown_flag_exits_2_like_go_flag() {
    for args in [&["--bogus", "render"][..], &["render", "-bogus"][..]] {
        let out = cli(args);
        let (_, stderr) = expect_exit(&out, 2, &format!("{args:?}"));
        assert!(
            stderr.contains("flag provided but not defined: -bogus"),
            "{args:?}:\n{stderr}"
        );
    }
}

#[test]
fn inverted_to_ports_exits_1() {
    let out = cli(&["--config", NO_CONFIG, "--to-ports", "30000-1024", "render"]);
    let (stdout, stderr) = expect_exit(&out, 1, "--to-ports 30000-1024");
    assert!(!stderr.trim().is_empty(), "no error message on stderr");
    assert!(
        !stdout.contains("*nat"),
        "rules printed despite the error:\n{stdout}"
    );
}

#[test]
fn version_flag_and_subcommand_print_the_version() {
    let want = format!("ip-masq-agent {}", env!("CARGO_PKG_VERSION"));
    for args in [&["--version"][..], &["version"][..]] {
        let out = cli(args);
        let (stdout, _) = expect_exit(&out, 0, &format!("{args:?}"));
        assert_eq!(stdout.trim(), want, "{args:?}");
    }
}

/// `--authoritative` changes what is rendered, and only with it: without
/// the flag both backends render, for the defaults and for a config that
/// uses every rule-shaping key and flag, exactly what the agent rendered
/// before the flag existed (the `default-*` and `rich-*` files were written
/// by that agent); with it, the `*-authoritative` files.
#[test]
fn render_without_authoritative_is_unchanged_and_with_it_as_pinned() {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/testdata/authoritative");
    let rich = dir.join("rich.yaml");
    for backend in ["iptables", "nftables"] {
        let backend_flag = format!("--backend={backend}");
        for (name, args) in [
            ("default", vec!["--config", NO_CONFIG]),
            (
                "rich",
                vec![
                    "--config",
                    s(&rich),
                    "--enable-ipv6",
                    "--to-ports=1024-29999,32768-65535",
                ],
            ),
        ] {
            for (suffix, flag) in [("", None), ("-authoritative", Some("--authoritative"))] {
                let mut all = args.clone();
                all.push(&backend_flag);
                all.extend(flag);
                all.push("render");
                let out = cli(&all);
                let (stdout, _) = expect_exit(&out, 0, &all.join(" "));
                let file = dir.join(format!("{name}-{backend}{suffix}.txt"));
                let want = std::fs::read_to_string(&file)
                    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                assert_text_eq(&all.join(" "), &stdout, &want);
            }
        }
    }
}

/// Asked-for usage is output: stdout, exit 0, nothing on stderr. A usage
/// error stays on stderr with exit 2.
#[test]
fn help_goes_to_stdout_when_asked_for() {
    for args in [&["--help"][..], &["-h"], &["help"], &["check", "--help"]] {
        let out = cli(args);
        let (stdout, stderr) = expect_exit(&out, 0, &format!("{args:?}"));
        assert!(
            stdout.starts_with("Usage of ip-masq-agent:\n"),
            "{args:?}: {stdout}"
        );
        assert!(
            stdout.contains("\n  help "),
            "{args:?}: the help command is listed"
        );
        assert_eq!(stderr, "", "{args:?}");
    }
    let out = cli(&["--bogus", "render"]);
    let (stdout, stderr) = expect_exit(&out, 2, "an unknown flag");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("flag provided but not defined: -bogus"),
        "{stderr}"
    );
}

/// `check -` reads stdin, with the same 1 MiB cap as a file; `check FILE
/// --flag` takes the flag.
#[test]
fn check_reads_stdin_and_takes_flags_after_file() {
    let (_dir, path) = file(EXAMPLE);
    let out = cli_with_stdin(&["check", "-"], &path);
    let (stdout, _) = expect_exit(&out, 0, "check - with a valid config on stdin");
    assert!(stdout.starts_with("stdin: valid config file\n"), "{stdout}");
    assert!(contains_block(&stdout, RENDER_EXAMPLE), "{stdout}");

    let (_big_dir, big) = file(&format!("# {}\n", "x".repeat(1 << 20)));
    let out = cli_with_stdin(&["check", "-"], &big);
    let (_, stderr) = expect_exit(&out, 1, "check - with 1 MiB and more on stdin");
    assert!(
        stderr.contains("config file stdin is larger than 1048576 bytes"),
        "{stderr}"
    );

    let (_typo_dir, typo) = file("nonMasqueradeCIDR: [10.40.0.0/14]\n");
    let out = cli(&["check", s(&typo), "--strict"]);
    let (_, stderr) = expect_exit(&out, 1, "check FILE --strict of a typo");
    assert!(
        stderr.contains("check --strict: 1 warning(s), failing"),
        "{stderr}"
    );
    let (_v6_dir, v6) = file("nonMasqueradeCIDRs: [fd00::/8]\n");
    let out = cli(&["check", s(&v6), "--enable-ipv6"]);
    let (stdout, _) = expect_exit(&out, 0, "check FILE --enable-ipv6 of an IPv6 config");
    assert!(
        stdout.contains("# ipv6: ip6tables-restore --noflush"),
        "{stdout}"
    );
}

/// The fingerprint `check` prints counts the rule-changing flags, so nodes
/// writing different rules from one config never share it; with default
/// flags it stays the config's own (the README's value for vpn.yaml).
#[test]
fn fingerprint_counts_the_rule_changing_flags() {
    let vpn = Path::new(env!("CARGO_MANIFEST_DIR")).join("configmap-examples/vpn.yaml");
    let fingerprint = |flags: &[&str]| {
        let mut args = flags.to_vec();
        args.extend(["check", s(&vpn)]);
        let out = cli(&args);
        let (stdout, _) = expect_exit(&out, 0, &format!("check with {flags:?}"));
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("fingerprint: "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or_else(|| panic!("no fingerprint line:\n{stdout}"))
            .to_owned()
    };
    let default = fingerprint(&[]);
    assert_eq!(
        default, "e9e48b643da131f1",
        "the fingerprint of default flags changed"
    );
    let mut all = vec![default];
    for flags in [
        &["--to-ports=1024-29999"][..],
        &["--masq-chain=IP-MASQ"],
        &["--random-fully=false"],
        &["--enable-ipv6"],
        &["--nomasq-all-reserved-ranges"],
        &["--backend=nftables"],
    ] {
        let got = fingerprint(flags);
        assert!(
            !all.contains(&got),
            "{flags:?} gives a fingerprint already seen: {got}"
        );
        all.push(got);
    }
    // Flags that change nothing in the rules change nothing here.
    assert_eq!(fingerprint(&["--v=3", "--log-format=json"]), all[0]);
}

const MANIFEST_TEN_NINE: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: ip-masq-agent
  namespace: kube-system
data:
  config: |
    nonMasqueradeCIDRs:
      - 10.9.0.0/16
";

/// `render` of a ConfigMap manifest given to `--config` (alone or in a
/// directory) uses its data key, as `check` does, and says so; a missing key
/// is refused with what to pass; a plain config is read as before.
#[test]
fn render_reads_a_configmap_manifest_by_its_data_key() {
    let (dir, path) = file(MANIFEST_TEN_NINE);
    let out = cli(&["--config", s(&path), "render"]);
    let (stdout, stderr) = expect_exit(&out, 0, "render of a manifest");
    assert!(stdout.contains("-d 10.9.0.0/16 -j RETURN"), "{stdout}");
    assert!(
        !stdout.contains("172.16.0.0/12"),
        "the defaults were rendered:\n{stdout}"
    );
    let notice = format!(
        "config file is a ConfigMap manifest; using its data.config file={}",
        s(&path)
    );
    assert_eq!(stderr.matches(&notice).count(), 1, "{stderr}");

    let out = cli(&["--config", s(dir.path()), "render"]);
    let (stdout, _) = expect_exit(&out, 0, "render of a directory holding a manifest");
    assert!(stdout.contains("-d 10.9.0.0/16 -j RETURN"), "{stdout}");

    let out = cli(&[
        "--config",
        s(&path),
        "--configmap-key=ip-masq-agent",
        "render",
    ]);
    let (stdout, stderr) = expect_exit(&out, 1, "render of a manifest without the key");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains(&format!(
            "{} is a ConfigMap manifest, but ConfigMap data key \"ip-masq-agent\" is missing (data has: config); pass --configmap-key",
            s(&path)
        )),
        "{stderr}"
    );

    let (_plain_dir, plain) = file(EXAMPLE);
    let out = cli(&["--config", s(&plain), "render"]);
    let (stdout, stderr) = expect_exit(&out, 0, "render of a plain config");
    assert_text_eq("render of a plain config", &stdout, RENDER_EXAMPLE);
    assert!(!stderr.contains("ConfigMap"), "{stderr}");
}

/// Error texts: an OS error once, the file named once; CIDR errors keep
/// upstream's text and add a hint line; a YAML position inside a manifest
/// is also given as the file's line.
#[test]
fn errors_say_it_once_and_hint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let looped = dir.path().join("loop");
    std::os::unix::fs::symlink(&looped, &looped).expect("a symlink loop");
    for args in [
        &["check", s(&looped)][..],
        &["--config", s(&looped), "render"],
    ] {
        let out = cli(args);
        let (_, stderr) = expect_exit(&out, 1, &format!("{args:?}"));
        assert_eq!(
            stderr,
            format!(
                "error: cannot read config file {}: Too many levels of symbolic links (os error 40)\n",
                s(&looped)
            ),
            "{args:?}"
        );
    }

    let (_d1, misaligned) = file("nonMasqueradeCIDRs: [10.0.0.1/8]\n");
    let out = cli(&["check", s(&misaligned)]);
    let (_, stderr) = expect_exit(&out, 1, "check of a misaligned CIDR");
    assert_eq!(
        stderr,
        format!(
            "{}: invalid config file: CIDR \"10.0.0.1/8\" is not aligned to a CIDR block, ip: \"10.0.0.1\" network: \"10.0.0.0/8\"\n\
             hint: did you mean 10.0.0.0/8? (10.0.0.1/8 is not a network address; 10.0.0.1/32 is the one address)\n",
            s(&misaligned)
        )
    );
    let (_d2, bare) = file("nonMasqueradeCIDRs: [10.1.2.3, fd00::1]\n");
    let out = cli(&["--config", s(&bare), "render"]);
    let (_, stderr) = expect_exit(&out, 1, "render of an address without a prefix");
    assert!(
        stderr.ends_with(
            "CIDR \"10.1.2.3\" could not be parsed, invalid CIDR address: 10.1.2.3\nhint: did you mean 10.1.2.3/32? a CIDR needs a prefix length\n"
        ),
        "{stderr}"
    );

    let broken = MANIFEST_TEN_NINE.replace(
        "      - 10.9.0.0/16\n",
        "      - [10.9.0.0/16\n    cidrLimit: 3\n",
    );
    let (d3, manifest) = file(&broken);
    let out = cli(&["check", s(&manifest)]);
    let (_, stderr) = expect_exit(&out, 1, "check of a manifest with broken YAML");
    assert!(
        stderr.contains("invalid ConfigMap data.config: invalid YAML:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3"),
        "the position inside data.config: {stderr}"
    );
    assert!(
        stderr.trim_end().ends_with(&format!(
            "(data.config line 3 is line 10 of {})",
            s(&manifest)
        )),
        "{stderr}"
    );
    // render, and check of a directory, name the file's line the same way.
    for (args, what) in [
        (
            ["--config", s(&manifest), "render"],
            "render of a manifest with broken YAML",
        ),
        (
            ["--config", s(d3.path()), "check"],
            "check of a directory holding it",
        ),
    ] {
        let out = cli(&args);
        let (_, stderr) = expect_exit(&out, 1, what);
        assert!(
            stderr.trim_end().ends_with(&format!(
                "(data.config line 3 is line 10 of {})",
                s(&manifest)
            )),
            "{what}: {stderr}"
        );
    }
}
