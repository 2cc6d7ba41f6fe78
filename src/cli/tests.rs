//! Tests of the whole command line through [`parse`]: Go's flag grammar,
//! subcommands, the typed options and their errors, and the flag listing.
//! The klog grammars and the usage layout are tested beside their code,
//! with the helpers here.

use std::net::IpAddr;

use super::*;

pub(super) fn ok(args: &[&str]) -> Invocation {
    match parse(args.iter().copied()) {
        Ok(inv) => inv,
        Err(e) => panic!("{args:?} rejected: {e:?}"),
    }
}

pub(super) fn opts(args: &[&str]) -> Options {
    ok(args).options
}

/// The message and exit code of a rejected command line.
pub(super) fn fail(args: &[&str]) -> (String, u8) {
    match parse(args.iter().copied()) {
        Ok(inv) => panic!("{args:?} accepted: {inv:?}"),
        Err(e) => (e.to_string(), e.exit_code()),
    }
}

pub(super) fn flag_value(inv: &Invocation, name: &str) -> String {
    match inv.flags.iter().find(|(n, _)| n == name) {
        Some((_, v)) => v.clone(),
        None => panic!("flag {name} not listed"),
    }
}

fn pr(first: u16, last: u16) -> PortRange {
    PortRange { first, last }
}

#[test]
fn no_arguments_run_with_defaults() {
    let inv = ok(&[]);
    assert_eq!(inv.command, Command::Run);
    let o = inv.options;
    assert_eq!(o.masq_chain.as_str(), "IP-MASQ-AGENT");
    assert!(!o.nomasq_all_reserved_ranges);
    assert!(!o.enable_ipv6);
    assert!(o.random_fully);
    assert!(!o.authoritative);
    assert_eq!(o.to_ports, vec![]);
    assert_eq!(o.config, [PathBuf::from("/etc/config/ip-masq-agent")]);
    assert_eq!(o.log_format, LogFormat::Text);
    assert_eq!(o.verbosity, 0);
    assert_eq!(o.iptables_mode, IptablesMode::Auto);
    assert_eq!(o.backend, BackendKind::Iptables);
}

#[test]
fn one_or_two_dashes_equals_or_space() {
    for args in [
        &["-masq-chain=IP-MASQ"][..],
        &["--masq-chain=IP-MASQ"],
        &["-masq-chain", "IP-MASQ"],
        &["--masq-chain", "IP-MASQ"],
    ] {
        assert_eq!(opts(args).masq_chain.as_str(), "IP-MASQ", "{args:?}");
    }
    for args in [&["-v=2"][..], &["--v=2"], &["-v", "2"], &["--v", "2"]] {
        assert_eq!(opts(args).verbosity, 2, "{args:?}");
    }
    for args in [
        &["-enable-ipv6"][..],
        &["--enable-ipv6"],
        &["--enable-ipv6=true"],
    ] {
        assert!(opts(args).enable_ipv6, "{args:?}");
    }
}

#[test]
fn value_may_contain_equals_and_start_with_dash() {
    assert_eq!(opts(&["--config=/a=b"]).config, [PathBuf::from("/a=b")]);
    // The next argument is the value whatever it looks like.
    assert_eq!(
        opts(&["--config", "--enable-ipv6"]).config,
        [PathBuf::from("--enable-ipv6")]
    );
    assert!(!opts(&["--config", "--enable-ipv6"]).enable_ipv6);
}

#[test]
fn the_twelve_bool_spellings() {
    for (text, want) in [
        ("1", true),
        ("t", true),
        ("T", true),
        ("true", true),
        ("TRUE", true),
        ("True", true),
        ("0", false),
        ("f", false),
        ("F", false),
        ("false", false),
        ("FALSE", false),
        ("False", false),
    ] {
        let arg = format!("--random-fully={text}");
        assert_eq!(opts(&[&arg]).random_fully, want, "{arg}");
        let arg = format!("-enable-ipv6={text}");
        assert_eq!(opts(&[&arg]).enable_ipv6, want, "{arg}");
    }
}

#[test]
fn other_bool_spellings_are_usage_errors() {
    assert_eq!(
        fail(&["--enable-ipv6=x"]),
        (
            "invalid boolean value \"x\" for -enable-ipv6: parse error".into(),
            2
        )
    );
    for (arg, message) in [
        (
            "--enable-ipv6=yes",
            "invalid boolean value \"yes\" for -enable-ipv6: parse error",
        ),
        (
            "-random-fully=on",
            "invalid boolean value \"on\" for -random-fully: parse error",
        ),
        (
            "--logtostderr=tRUE",
            "invalid boolean value \"tRUE\" for -logtostderr: parse error",
        ),
        (
            "--version=",
            "invalid boolean value \"\" for -version: parse error",
        ),
        (
            "--one_output= true",
            "invalid boolean value \" true\" for -one_output: parse error",
        ),
    ] {
        assert_eq!(fail(&[arg]), (message.to_owned(), 2), "{arg}");
    }
}

#[test]
fn bool_does_not_take_the_next_argument() {
    // `false` is left as the first positional: here, the check FILE.
    let inv = ok(&["check", "--enable-ipv6", "false"]);
    assert!(inv.options.enable_ipv6);
    assert_eq!(
        inv.command,
        Command::Check {
            file: Some(PathBuf::from("false"))
        }
    );
    // At the top it becomes the command word.
    assert_eq!(
        fail(&["--enable-ipv6", "false"]),
        (
            "unknown command \"false\"; commands are: check, render, explain, sync, cleanup, version, help".into(),
            2
        )
    );
}

#[test]
fn double_dash_ends_flags_and_is_consumed() {
    assert_eq!(ok(&["--"]).command, Command::Run);
    let inv = ok(&["--enable-ipv6", "--", "check", "FILE"]);
    assert!(inv.options.enable_ipv6);
    assert_eq!(
        inv.command,
        Command::Check {
            file: Some(PathBuf::from("FILE"))
        }
    );
    // A `--` before the command ends only the flags before it: flag
    // parsing starts again after the command word.
    assert_eq!(
        fail(&["--", "check", "-x"]),
        ("flag provided but not defined: -x".into(), 2)
    );
    assert_eq!(
        ok(&["--", "check", "--", "-x"]).command,
        Command::Check {
            file: Some(PathBuf::from("-x"))
        }
    );
    let inv = ok(&["check", "--", "--enable-ipv6"]);
    assert!(!inv.options.enable_ipv6);
    assert_eq!(
        inv.command,
        Command::Check {
            file: Some(PathBuf::from("--enable-ipv6"))
        }
    );
}

#[test]
fn parsing_stops_at_the_first_non_flag() {
    // A lone "-" is a non-flag argument (a FILE here).
    assert_eq!(
        ok(&["check", "-"]).command,
        Command::Check {
            file: Some(PathBuf::from("-"))
        }
    );
    // `check` also takes flags after its FILE, as the README shows...
    let inv = ok(&["check", "a.yaml", "--enable-ipv6", "--strict"]);
    assert!(inv.options.enable_ipv6 && inv.options.strict);
    assert_eq!(
        inv.command,
        Command::Check {
            file: Some(PathBuf::from("a.yaml"))
        }
    );
    // ...but after `--` everything is an argument.
    assert_eq!(
        fail(&["check", "--", "a.yaml", "--enable-ipv6"]),
        (
            "command \"check\" takes at most one FILE, got another argument \"--enable-ipv6\" \
             (flags go before the command's arguments)"
                .into(),
            2
        )
    );
    assert_eq!(fail(&["check", "a.yaml", "--nope"]).1, 2);
    assert_eq!(
        fail(&["-"]),
        (
            "unknown command \"-\"; commands are: check, render, explain, sync, cleanup, version, help"
                .into(),
            2
        )
    );
}

#[test]
fn flags_before_and_after_the_subcommand() {
    let want = Command::Check {
        file: Some(PathBuf::from("FILE")),
    };
    for args in [
        &["check", "--enable-ipv6", "FILE"][..],
        &["--enable-ipv6", "check", "FILE"],
        &["-enable-ipv6", "check", "--", "FILE"],
    ] {
        let inv = ok(args);
        assert!(inv.options.enable_ipv6, "{args:?}");
        assert_eq!(inv.command, want, "{args:?}");
    }
    let inv = ok(&["--v=1", "render", "--masq-chain", "IP-MASQ", "-v", "3"]);
    assert_eq!(inv.command, Command::Render);
    assert_eq!(inv.options.masq_chain.as_str(), "IP-MASQ");
    assert_eq!(inv.options.verbosity, 3);
}

#[test]
fn subcommands() {
    assert_eq!(ok(&["check"]).command, Command::Check { file: None });
    assert_eq!(ok(&["render"]).command, Command::Render);
    assert_eq!(ok(&["sync"]).command, Command::Sync);
    assert_eq!(
        ok(&["cleanup"]).command,
        Command::Cleanup {
            stale_chains: false
        }
    );
    assert_eq!(
        ok(&["cleanup", "--stale-chains"]).command,
        Command::Cleanup { stale_chains: true }
    );
    assert_eq!(ok(&["version"]).command, Command::Version);
    assert_eq!(
        fail(&["render", "x"]),
        ("command \"render\" takes no arguments, got \"x\"".into(), 2)
    );
    assert_eq!(
        fail(&["check", "a", "b"]),
        (
            "command \"check\" takes at most one FILE, got another argument \"b\"".into(),
            2
        )
    );
    assert_eq!(
        fail(&["run"]),
        (
            "unknown command \"run\"; commands are: check, render, explain, sync, cleanup, version, help"
                .into(),
            2
        )
    );
    // The unknown command is named before its flags are looked at.
    assert_eq!(
        fail(&["bogus", "--nope"]).0,
        "unknown command \"bogus\"; commands are: check, render, explain, sync, cleanup, version, help"
    );
}

fn ips(list: &[&str]) -> Vec<IpAddr> {
    list.iter().map(|a| a.parse().unwrap()).collect()
}

#[test]
fn explain_takes_addresses_a_source_and_an_output_format() {
    assert_eq!(
        ok(&["explain", "10.9.5.9", "fd00::1"]).command,
        Command::Explain {
            source: None,
            addresses: ips(&["10.9.5.9", "fd00::1"]),
            output: OutputFormat::Text,
            live: false,
        }
    );
    let inv = ok(&[
        "--config",
        "/tmp/c",
        "explain",
        "--from",
        "192.0.2.7",
        "--output=json",
        "10.9.5.9",
    ]);
    assert_eq!(
        inv.command,
        Command::Explain {
            source: Some("192.0.2.7".parse().unwrap()),
            addresses: ips(&["10.9.5.9"]),
            output: OutputFormat::Json,
            live: false,
        }
    );
    assert_eq!(inv.options.config, [PathBuf::from("/tmp/c")]);
    assert!(
        ok(&[
            "explain",
            "--configmap",
            "kube-system/ip-masq-agent",
            "10.0.0.1"
        ])
        .options
        .api_sources
        .len()
            == 1
    );
}

#[test]
fn explain_errors_name_the_argument() {
    assert_eq!(
        fail(&["explain"]),
        (
            "command \"explain\" needs at least one ADDRESS (a destination, e.g. 10.9.5.9)".into(),
            2
        )
    );
    assert_eq!(
        fail(&["explain", "10.0.0.1", "10.0.0.0/8"]),
        ("explain: argument 2 (\"10.0.0.0/8\") is not an IP address (give one address, not a CIDR)".into(), 1)
    );
    assert_eq!(
        fail(&["explain", "nope"]),
        (
            "explain: argument 1 (\"nope\") is not an IP address".into(),
            1
        )
    );
    assert_eq!(
        fail(&["explain", "10.0.0.1", "--from=10.4.0.1"]),
        (
            "explain: argument 2 (\"--from=10.4.0.1\") is not an IP address (flags go before the command's arguments)".into(),
            1
        )
    );
    assert_eq!(
        fail(&["explain", "--from", "pod", "10.0.0.1"]),
        (
            "invalid value \"pod\" for --from: not an IP address".into(),
            1
        )
    );
    assert_eq!(
        fail(&["explain", "--from", "10.4.0.1", "fd00::1"]),
        (
            "explain: argument 1 (\"fd00::1\"): source 10.4.0.1 is ipv4 but destination fd00::1 is ipv6; a packet has one address family".into(),
            1
        )
    );
    assert_eq!(
        fail(&["explain", "--output=yaml", "10.0.0.1"]),
        (
            "invalid value \"yaml\" for flag -output: must be text or json".into(),
            2
        )
    );
    assert_eq!(
        fail(&["--from=10.0.0.1", "render"]),
        ("flag -from is only for the explain command".into(), 2)
    );
    assert_eq!(
        fail(&["--output=json"]),
        ("flag -output is only for the explain command".into(), 2)
    );
    assert_eq!(
        fail(&["--live", "sync"]),
        ("flag -live is only for the explain command".into(), 2)
    );
    assert_eq!(
        fail(&["--stale-chains", "explain", "10.0.0.1"]),
        (
            "flag -stale-chains is only for the cleanup command".into(),
            2
        )
    );
    assert_eq!(
        ok(&["explain", "--live", "10.0.0.1"]).command,
        Command::Explain {
            source: None,
            addresses: ips(&["10.0.0.1"]),
            output: OutputFormat::Text,
            live: true,
        }
    );
}

#[test]
fn version_flag_selects_version() {
    assert_eq!(ok(&["--version"]).command, Command::Version);
    assert_eq!(ok(&["-version=true", "sync"]).command, Command::Version);
    assert_eq!(ok(&["--version=false"]).command, Command::Run);
}

#[test]
fn undefined_flag_is_a_usage_error_with_usage() {
    let err = parse(["--nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert_eq!(err.to_string(), "flag provided but not defined: -nope");
    match err {
        CliError::Usage { usage: text, .. } => assert_eq!(text, usage()),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fail(&["-x=1"]),
        ("flag provided but not defined: -x".into(), 2)
    );
    // Names are case-sensitive, as in Go.
    assert_eq!(
        fail(&["--Enable-IPv6"]),
        ("flag provided but not defined: -Enable-IPv6".into(), 2)
    );
    assert_eq!(
        fail(&["check", "--nope"]),
        ("flag provided but not defined: -nope".into(), 2)
    );
}

#[test]
fn bad_flag_syntax() {
    for arg in ["---x", "-=x", "--=x", "---", "-=", "--=true"] {
        assert_eq!(fail(&[arg]), (format!("bad flag syntax: {arg}"), 2));
    }
}

#[test]
fn missing_value() {
    assert_eq!(
        fail(&["--masq-chain"]),
        ("flag needs an argument: -masq-chain".into(), 2)
    );
    assert_eq!(
        fail(&["check", "-v"]),
        ("flag needs an argument: -v".into(), 2)
    );
}

#[test]
fn help_exits_zero_with_usage() {
    for args in [
        &["-h"][..],
        &["-help"],
        &["--help"],
        &["--h"],
        &["-help=false"],
        &["--enable-ipv6", "-h", "--nope"],
        &["check", "--help"],
        &["check", "FILE", "--help"],
        &["help"],
        &["--enable-ipv6", "help"],
    ] {
        let err = parse(args.iter().copied()).unwrap_err();
        assert_eq!(err.exit_code(), 0, "{args:?}");
        assert_eq!(err, CliError::Help(usage()), "{args:?}");
    }
    // An error met before the help flag wins, as in Go.
    assert_eq!(fail(&["--nope", "-h"]).1, 2);
}

#[test]
fn to_ports_upstream_example_and_single_ports() {
    assert_eq!(
        opts(&["--to-ports=1024-29999,32768-65535"]).to_ports,
        vec![pr(1024, 29999), pr(32768, 65535)]
    );
    assert_eq!(opts(&["--to-ports", "8080"]).to_ports, vec![pr(8080, 8080)]);
    assert_eq!(
        opts(&["--to-ports=80,90-100,1-1,+443"]).to_ports,
        vec![pr(80, 80), pr(90, 100), pr(1, 1), pr(443, 443)]
    );
    assert_eq!(opts(&["--to-ports="]).to_ports, vec![]);
    // The last occurrence wins; only it is checked.
    assert_eq!(
        opts(&["--to-ports=x", "--to-ports=1-2"]).to_ports,
        vec![pr(1, 2)]
    );
}

#[test]
fn to_ports_errors_exit_one() {
    for (value, why) in [
        ("1-2-3", "invalid interval \"1-2-3\""),
        ("30000-1024", "first is greater than last in \"30000-1024\""),
        ("x", "strconv.Atoi: parsing \"x\": invalid syntax"),
        ("1024-", "strconv.Atoi: parsing \"\": invalid syntax"),
        ("-5", "strconv.Atoi: parsing \"\": invalid syntax"),
        ("80,", "strconv.Atoi: parsing \"\": invalid syntax"),
        (" 80", "strconv.Atoi: parsing \" 80\": invalid syntax"),
        ("80, 90", "strconv.Atoi: parsing \" 90\": invalid syntax"),
        (
            "99999999999999999999",
            "strconv.Atoi: parsing \"99999999999999999999\": value out of range",
        ),
        ("0", "port 0 in \"0\" is out of range; ports are 1-65535"),
        (
            "0-10",
            "port 0 in \"0-10\" is out of range; ports are 1-65535",
        ),
        (
            "1024-70000",
            "port 70000 in \"1024-70000\" is out of range; ports are 1-65535",
        ),
    ] {
        let arg = format!("--to-ports={value}");
        let (message, code) = fail(&[&arg]);
        assert_eq!(
            message,
            format!("invalid value {} for --to-ports: {why}", quote(value)),
            "{arg}"
        );
        assert_eq!(code, 1, "{arg}");
    }
}

#[test]
fn bad_masq_chain_is_invalid_and_names_the_flag() {
    let (message, code) = fail(&["--masq-chain=RETURN"]);
    assert_eq!(code, 1);
    assert_eq!(
        message,
        "invalid value for --masq-chain: chain name \"RETURN\" is a built-in chain or target name"
    );
    let (message, code) = fail(&["--masq-chain="]);
    assert_eq!(code, 1);
    assert_eq!(
        message,
        "invalid value for --masq-chain: chain name must not be empty"
    );
}

#[test]
fn empty_config_path_is_invalid() {
    assert_eq!(
        fail(&["--config="]),
        (
            "invalid value for --config: the path must not be empty".into(),
            1
        )
    );
    assert_eq!(
        opts(&["--config", "/tmp/x"]).config,
        [PathBuf::from("/tmp/x")]
    );
    // Repeated, each value adds a source; the default is replaced, not kept.
    assert_eq!(
        opts(&["--config=/a", "-config", "/b"]).config,
        [PathBuf::from("/a"), PathBuf::from("/b")]
    );
}

#[test]
fn configmap_source_flags() {
    let o = opts(&[]);
    assert_eq!(o.api_sources, []);
    assert_eq!(o.configmap_key.as_str(), "config");
    let o = opts(&[
        "--configmap=kube-system/ip-masq-agent",
        "--configmap-key=ip-masq-agent.yaml",
        "--kubeconfig=/etc/kubeconfig",
    ]);
    let [source] = o.api_sources.as_slice() else {
        panic!("one source: {:?}", o.api_sources);
    };
    assert_eq!(source.configmap.to_string(), "kube-system/ip-masq-agent");
    assert_eq!(source.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
    assert_eq!(o.configmap_key.as_str(), "ip-masq-agent.yaml");
    // Empty means "use the file", as for every string flag.
    assert_eq!(opts(&["--configmap="]).api_sources, []);
    assert_eq!(opts(&["--configmap=a/b"]).api_sources[0].kubeconfig, None);
    // With --configmap the files are not read, even when given.
    assert!(opts(&["--configmap=a/b"]).config.is_empty());
    let o = opts(&["--configmap=a/b", "--configmap=a/c", "--config=/etc/x"]);
    assert_eq!(o.api_sources.len(), 2);
    assert!(o.config.is_empty());
    let (text, code) = fail(&["--configmap=ip-masq-agent"]);
    assert_eq!(code, 1);
    assert_eq!(
        text,
        "invalid value \"ip-masq-agent\" for --configmap: must be NAMESPACE/NAME"
    );
    let (text, code) = fail(&["--configmap=kube-system/IP"]);
    assert_eq!(code, 1);
    assert!(
        text.contains("for --configmap: name \"IP\" must consist of lower case"),
        "{text}"
    );
    let (text, code) = fail(&["--configmap-key=a/b"]);
    assert_eq!(code, 1);
    assert!(
        text.starts_with("invalid value \"a/b\" for --configmap-key: "),
        "{text}"
    );
}

#[test]
fn configmap_selector_flags() {
    assert_eq!(opts(&[]).api_selectors, []);
    let o = opts(&[
        "--configmap-selector=kube-system/example.com/masq-part in (platform, users)",
        "--configmap-selector=tenants/masq",
        "--kubeconfig=/etc/kubeconfig",
        "--config=/etc/x",
    ]);
    let [first, second] = o.api_selectors.as_slice() else {
        panic!("two selectors: {:?}", o.api_selectors);
    };
    // Parsed into the canonical form; only that ever reaches the API.
    assert_eq!(
        first.selector.to_string(),
        "kube-system/example.com/masq-part in (platform,users)"
    );
    assert_eq!(second.selector.to_string(), "tenants/masq");
    assert_eq!(first.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
    // As with --configmap, the files are not read.
    assert!(o.config.is_empty());
    assert_eq!(opts(&["--configmap-selector="]).api_selectors, []);
    for (bad, expected) in [
        (
            "masq=x",
            "invalid value \"masq=x\" for --configmap-selector: must be NAMESPACE/LABELSELECTOR",
        ),
        (
            "Kube/masq",
            "invalid value \"Kube/masq\" for --configmap-selector: namespace \"Kube\" must consist of",
        ),
        (
            "kube-system/",
            "invalid value \"kube-system/\" for --configmap-selector: the label selector must not be empty",
        ),
        (
            "kube-system/a in (b",
            "invalid value \"kube-system/a in (b\" for --configmap-selector: the set is not closed",
        ),
        (
            "kube-system/a=b&watch=false",
            "invalid value \"kube-system/a=b&watch=false\" for --configmap-selector: unexpected character '&'",
        ),
        (
            "kube-system/-a",
            "invalid value \"kube-system/-a\" for --configmap-selector: the name of label key \"-a\"",
        ),
    ] {
        let (text, code) = fail(&[&format!("--configmap-selector={bad}")]);
        assert_eq!(code, 1, "{bad}");
        assert!(text.starts_with(expected), "{bad}: {text}");
    }
}

#[test]
fn enum_flags() {
    assert_eq!(opts(&["--log-format=json"]).log_format, LogFormat::Json);
    assert_eq!(opts(&["--log-format", "text"]).log_format, LogFormat::Text);
    assert_eq!(
        opts(&["--iptables-mode=nft"]).iptables_mode,
        IptablesMode::Nft
    );
    assert_eq!(
        opts(&["-iptables-mode", "legacy"]).iptables_mode,
        IptablesMode::Legacy
    );
    assert_eq!(opts(&["--backend=nftables"]).backend, BackendKind::Nftables);
    assert_eq!(
        opts(&["-backend", "iptables"]).backend,
        BackendKind::Iptables
    );
    assert_eq!(
        fail(&["--backend=nft"]),
        (
            "invalid value \"nft\" for flag -backend: must be iptables or nftables".into(),
            2
        )
    );
    assert_eq!(
        fail(&["--log-format=xml"]),
        (
            "invalid value \"xml\" for flag -log-format: must be text or json".into(),
            2
        )
    );
    assert_eq!(
        fail(&["--iptables-mode=NFT"]),
        (
            "invalid value \"NFT\" for flag -iptables-mode: must be auto, nft or legacy".into(),
            2
        )
    );
}

#[test]
fn repeated_flags_last_wins() {
    let o = opts(&["--random-fully=false", "--random-fully", "-v=9", "-v=1"]);
    assert!(o.random_fully);
    assert_eq!(o.verbosity, 1);
}

#[test]
fn flags_list_is_sorted_and_complete_with_effective_values() {
    let inv = ok(&[]);
    let names: Vec<&str> = inv.flags.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        vec![
            "add_dir_header",
            "alsologtostderr",
            "authoritative",
            "backend",
            "config",
            "configmap",
            "configmap-key",
            "configmap-selector",
            "enable-ipv6",
            "from",
            "iptables-mode",
            "kubeconfig",
            "legacy_stderr_threshold_behavior",
            "live",
            "log-format",
            "log_backtrace_at",
            "log_dir",
            "log_file",
            "log_file_max_size",
            "logtostderr",
            "masq-chain",
            "metrics-address",
            "nomasq-all-reserved-ranges",
            "one_output",
            "output",
            "random-fully",
            "skip_headers",
            "skip_log_headers",
            "stale-chains",
            "stderrthreshold",
            "strict",
            "to-ports",
            "v",
            "version",
            "vmodule",
        ]
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    let defaults = &inv.flags;
    for (name, value) in [
        ("random-fully", "true"),
        ("masq-chain", "IP-MASQ-AGENT"),
        ("config", "/etc/config/ip-masq-agent"),
        ("to-ports", ""),
        ("v", "0"),
        ("stderrthreshold", "2"),
        ("log_file_max_size", "1800"),
        ("logtostderr", "true"),
        ("log_backtrace_at", ":0"),
        ("log-format", "text"),
        ("iptables-mode", "auto"),
        ("backend", "iptables"),
        ("metrics-address", ":9557"),
        ("configmap", ""),
        ("configmap-key", "config"),
        ("kubeconfig", ""),
        ("version", "false"),
    ] {
        assert!(
            defaults.contains(&(name.to_owned(), value.to_owned())),
            "{name}={value} not in {defaults:?}"
        );
    }
    let inv = ok(&[
        "--random-fully=false",
        "--to-ports=1024-29999,32768-65535",
        "--log-format=json",
    ]);
    assert_eq!(flag_value(&inv, "random-fully"), "false");
    assert_eq!(flag_value(&inv, "to-ports"), "1024-29999,32768-65535");
    assert_eq!(flag_value(&inv, "log-format"), "json");
}

#[test]
fn non_ascii_arguments_do_not_break_parsing() {
    assert_eq!(
        fail(&["-é=1"]),
        ("flag provided but not defined: -é".into(), 2)
    );
    assert_eq!(
        fail(&["--é"]),
        ("flag provided but not defined: -é".into(), 2)
    );
    assert_eq!(
        fail(&["-v=\u{1}é"]),
        (
            "invalid value \"\\x01é\" for flag -v: strconv.ParseInt: parsing \"\\x01é\": invalid syntax"
                .into(),
            2
        )
    );
}

#[test]
fn exit_codes() {
    assert_eq!(CliError::Help(String::new()).exit_code(), 0);
    assert_eq!(
        CliError::Usage {
            message: String::new(),
            usage: String::new()
        }
        .exit_code(),
        2
    );
    assert_eq!(CliError::Invalid(String::new()).exit_code(), 1);
}
