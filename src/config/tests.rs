//! End-to-end tests of the config module's public API: file bytes in,
//! `Loaded` or the exact error text out. Expected values are literal text.

use std::time::{Duration, Instant};

use super::*;

const V4: LoadOptions = LoadOptions {
    all_reserved_ranges: false,
    enable_ipv6: false,
};
const V6: LoadOptions = LoadOptions {
    all_reserved_ranges: false,
    enable_ipv6: true,
};

fn ok(text: &str) -> Config {
    ok_with(text, &V4)
}

fn ok_with(text: &str, opts: &LoadOptions) -> Config {
    match parse(text.as_bytes(), opts) {
        Ok(loaded) => {
            assert_eq!(loaded.source, Source::File);
            loaded.config
        }
        Err(e) => panic!("{text:?} rejected: {e}"),
    }
}

fn err(text: &str) -> String {
    err_with(text, &V4)
}

fn err_with(text: &str, opts: &LoadOptions) -> String {
    match parse(text.as_bytes(), opts) {
        Ok(loaded) => panic!("{text:?} accepted: {loaded:?}"),
        Err(e) => e.to_string(),
    }
}

fn cidrs(config: &Config) -> Vec<String> {
    config
        .non_masquerade_cidrs
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn defaults_are_upstreams() {
    let rfc1918 = Config::defaults(false);
    assert_eq!(
        rfc1918.to_json(),
        r#"{"nonMasqueradeCIDRs":["10.0.0.0/8","172.16.0.0/12","192.168.0.0/16"],"cidrLimit":64,"masqLinkLocal":false,"masqLinkLocalIPv6":false,"resyncInterval":"1m0s"}"#
    );
    assert_eq!(
        cidrs(&Config::defaults(true)),
        [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "192.0.0.0/24",
            "192.0.2.0/24",
            "192.88.99.0/24",
            "198.18.0.0/15",
            "198.51.100.0/24",
            "203.0.113.0/24",
            "240.0.0.0/4",
        ]
    );
}

#[test]
fn to_json_and_fingerprint() {
    let config = ok_with(
        "nonMasqueradeCIDRs: [fc00::/7, 10.0.0.0/8]\nmasqLinkLocalIPv6: true\nresyncInterval: 1h2m3.5s\ncidrLimit: 5\n",
        &V6,
    );
    assert_eq!(
        config.to_json(),
        r#"{"nonMasqueradeCIDRs":["fc00::/7","10.0.0.0/8"],"cidrLimit":5,"masqLinkLocal":false,"masqLinkLocalIPv6":true,"resyncInterval":"1h2m3.5s"}"#
    );
    let fp = Config::defaults(false).fingerprint_with_flags("");
    assert_eq!(fp.len(), 16);
    assert!(fp.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(fp, Config::defaults(false).fingerprint_with_flags(""));
    assert_ne!(fp, Config::defaults(true).fingerprint_with_flags(""));
    assert_ne!(fp, config.fingerprint_with_flags(""));
}

#[test]
fn empty_and_null_files_mean_defaults() {
    for text in [
        "",
        "   \n\n",
        "# only a comment\n",
        "null",
        "~",
        "---\n",
        "Null\n",
        "--- ~\n",
    ] {
        assert_eq!(ok(text), Config::defaults(false), "{text:?}");
    }
    assert_eq!(
        ok_with(
            "",
            &LoadOptions {
                all_reserved_ranges: true,
                enable_ipv6: false
            }
        ),
        Config::defaults(true)
    );
}

#[test]
fn a_typical_yaml_file() {
    let config = ok(
        "nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  - 192.168.0.0/16\nmasqLinkLocal: true\nresyncInterval: 30s\n",
    );
    assert_eq!(cidrs(&config), ["10.0.0.0/8", "192.168.0.0/16"]);
    assert!(config.masq_link_local);
    assert!(!config.masq_link_local_ipv6);
    assert_eq!(config.cidr_limit, 64);
    assert_eq!(config.resync_interval, Duration::from_secs(30));
}

#[test]
fn json_files() {
    let config = ok(
        r#"  {"nonMasqueradeCIDRs": ["10.0.0.0/8"], "masqLinkLocal": true, "resyncInterval": "1m30s"}"#,
    );
    assert_eq!(cidrs(&config), ["10.0.0.0/8"]);
    assert!(config.masq_link_local);
    assert_eq!(config.resync_interval, Duration::from_secs(90));
    // JSON is strict: no YAML spellings inside.
    assert!(err(r#"{"masqLinkLocal": yes}"#).starts_with("invalid JSON at line 1, column 19: "));
    // A JSON-looking file that does not start with '{' is read as YAML.
    let config = ok("# comment\n{\"cidrLimit\": 5, \"masqLinkLocal\": yes}");
    assert_eq!(config.cidr_limit, 5);
    assert!(config.masq_link_local);
    assert_eq!(
        err("[]\n"),
        "config must be a mapping of settings (such as `cidrLimit: 64`), got a list"
    );
}

#[test]
fn json_numbers_are_integers_only() {
    assert_eq!(ok(r#"{"cidrLimit": 10}"#).cidr_limit, 10);
    assert_eq!(
        ok(r#"{"cidrLimit": -0, "nonMasqueradeCIDRs": []}"#).cidr_limit,
        0
    );
    assert_eq!(
        err(r#"{"cidrLimit": 64.0}"#),
        r#"config field "cidrLimit": expected an integer, got number 64.0"#
    );
    assert_eq!(
        err(r#"{"cidrLimit": 1e2}"#),
        r#"config field "cidrLimit": expected an integer, got number 1e2"#
    );
    assert_eq!(
        err(r#"{"cidrLimit": 9223372036854775808}"#),
        r#"config field "cidrLimit": expected an integer, got number 9223372036854775808"#
    );
}

#[test]
fn every_yaml_11_boolean() {
    for word in [
        "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
    ] {
        assert!(
            ok(&format!("masqLinkLocal: {word}\n")).masq_link_local,
            "{word}"
        );
    }
    for word in [
        "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
    ] {
        let config = ok(&format!(
            "masqLinkLocal: true\nmasqLinkLocalIPv6: {word}\nMASQLINKLOCAL: {word}\n"
        ));
        assert!(!config.masq_link_local_ipv6, "{word}");
        // Sorted key order: MASQLINKLOCAL, then masqLinkLocal wins.
        assert!(config.masq_link_local, "{word}");
    }
    assert_eq!(
        err("masqLinkLocal: tRUE\n"),
        r#"config field "masqLinkLocal": expected true or false, got string "tRUE""#
    );
    assert_eq!(
        err("masqLinkLocal: \"yes\"\n"),
        r#"config field "masqLinkLocal": expected true or false, got string "yes""#
    );
    assert_eq!(
        err("masqLinkLocal: \"true\"\n"),
        r#"config field "masqLinkLocal": expected true or false, got string "true""#
    );
    assert_eq!(
        err("masqLinkLocalIPv6: 1\n"),
        r#"config field "masqLinkLocalIPv6": expected true or false, got number 1"#
    );
}

#[test]
fn yaml_integers() {
    let limit = |v: &str| ok(&format!("cidrLimit: {v}\n")).cidr_limit;
    assert_eq!(limit("0100"), 64);
    assert_eq!(limit("0o100"), 64);
    assert_eq!(limit("0x40"), 64);
    assert_eq!(limit("0b1000000"), 64);
    assert_eq!(limit("1_000"), 1000);
    assert_eq!(limit("+64"), 64);
    assert_eq!(limit("64.0"), 64);
    assert_eq!(limit("1e3"), 1000);
    assert_eq!(limit("08"), 8);
    assert_eq!(limit("!!int \"12\""), 12);
    assert_eq!(limit("!!float 12"), 12);
    assert_eq!(limit("~"), 64);
    assert_eq!(limit("9223372036854775807"), i64::MAX);
    assert_eq!(
        err("cidrLimit: \"64\"\n"),
        r#"config field "cidrLimit": expected an integer, got string "64""#
    );
    assert_eq!(
        err("cidrLimit: 64.5\n"),
        r#"config field "cidrLimit": expected an integer, got number 64.5"#
    );
    assert_eq!(
        err("cidrLimit: 9223372036854775808\n"),
        r#"config field "cidrLimit": expected an integer, got number 9223372036854775808"#
    );
    assert_eq!(
        err("cidrLimit: 1e21\n"),
        r#"config field "cidrLimit": expected an integer, got number 1e+21"#
    );
    assert_eq!(
        err("cidrLimit: true\n"),
        r#"config field "cidrLimit": expected an integer, got boolean true"#
    );
    assert_eq!(
        err("cidrLimit: [1]\n"),
        r#"config field "cidrLimit": expected an integer, got a list"#
    );
    assert_eq!(
        err("cidrLimit: !!int abc\n"),
        "invalid YAML: line 1: cannot decode !!str `abc` as a !!int"
    );
    assert_eq!(
        err("cidrLimit: .inf\n"),
        "invalid YAML: line 1: .inf cannot be represented in JSON (NaN and infinities are not allowed)"
    );
}

#[test]
fn keys_match_case_insensitively_unknown_keys_ignored() {
    let config = ok(
        "NonMasqueradeCIDRs: [10.0.0.0/8]\nCIDRLIMIT: 5\nsomethingElse: {a: [1, 2]}\nresync_interval: bad\n",
    );
    assert_eq!(cidrs(&config), ["10.0.0.0/8"]);
    assert_eq!(config.cidr_limit, 5);
    assert_eq!(config.resync_interval, Duration::from_secs(60));
    // Go's folding also maps a few non-ASCII letters.
    assert_eq!(ok(r#"{"cıdrLimit": 5}"#).cidr_limit, 5);
}

#[test]
fn duplicate_keys_last_wins_in_each_syntax_order() {
    // YAML: last duplicate wins, then keys apply in sorted byte order.
    assert_eq!(ok("cidrLimit: 5\ncidrLimit: 6\n").cidr_limit, 6);
    assert_eq!(ok("cidrLimit: 5\nCIDRLIMIT: 7\n").cidr_limit, 5);
    assert_eq!(ok("CIDRLIMIT: 7\ncidrLimit: 5\n").cidr_limit, 5);
    // JSON: document order, every occurrence applied.
    assert_eq!(ok(r#"{"cidrLimit": 5, "cidrLimit": 6}"#).cidr_limit, 6);
    assert_eq!(ok(r#"{"cidrLimit": 5, "CIDRLIMIT": 7}"#).cidr_limit, 7);
    assert_eq!(ok(r#"{"CIDRLIMIT": 7, "cidrLimit": 5}"#).cidr_limit, 5);
    // A bad earlier duplicate still rejects a JSON file; YAML drops it.
    assert!(parse(br#"{"cidrLimit": "x", "cidrLimit": 6}"#, &V4).is_err());
    assert_eq!(ok("cidrLimit: x\ncidrLimit: 6\n").cidr_limit, 6);
}

#[test]
fn nulls_per_field() {
    let config =
        ok(r#"{"masqLinkLocal": true, "masqLinkLocal": null, "cidrLimit": 5, "cidrLimit": null}"#);
    assert!(config.masq_link_local);
    assert_eq!(config.cidr_limit, 5);
    assert!(
        ok("nonMasqueradeCIDRs: null\n")
            .non_masquerade_cidrs
            .is_empty()
    );
    assert!(ok("nonMasqueradeCIDRs:\n").non_masquerade_cidrs.is_empty());
    assert!(
        ok("nonMasqueradeCIDRs: []\n")
            .non_masquerade_cidrs
            .is_empty()
    );
    assert_eq!(
        ok("masqLinkLocal:\ncidrLimit: ~\n"),
        Config::defaults(false)
    );
    assert_eq!(
        err("resyncInterval: null\n"),
        r#"config field "resyncInterval": expected a duration string such as "60s", got null"#
    );
    assert_eq!(
        err("resyncInterval:\n"),
        r#"config field "resyncInterval": expected a duration string such as "60s", got null"#
    );
}

#[test]
fn list_types() {
    assert_eq!(
        err("nonMasqueradeCIDRs: 10.0.0.0/8\n"),
        r#"config field "nonMasqueradeCIDRs": expected a list of CIDR strings, got string "10.0.0.0/8""#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [10.0.0.0/8, 5]\n"),
        r#"config field "nonMasqueradeCIDRs[1]": expected a CIDR string, got number 5"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs:\n  - 10.0.0.0/8\n  -\n"),
        r#"config field "nonMasqueradeCIDRs[1]": expected a CIDR string, got null"#
    );
    assert_eq!(
        err(r#"{"nonMasqueradeCIDRs": [null]}"#),
        r#"config field "nonMasqueradeCIDRs[0]": expected a CIDR string, got null"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: {a: 1}\n"),
        r#"config field "nonMasqueradeCIDRs": expected a list of CIDR strings, got a mapping"#
    );
}

#[test]
fn list_replaces_defaults_keeps_order_and_duplicates() {
    let config = ok("nonMasqueradeCIDRs: [192.168.0.0/16, 10.0.0.0/8, 192.168.0.0/16]\n");
    assert_eq!(
        cidrs(&config),
        ["192.168.0.0/16", "10.0.0.0/8", "192.168.0.0/16"]
    );
    let all = LoadOptions {
        all_reserved_ranges: true,
        enable_ipv6: false,
    };
    assert_eq!(
        cidrs(&ok_with("nonMasqueradeCIDRs: [10.0.0.0/8]\n", &all)),
        ["10.0.0.0/8"]
    );
    assert_eq!(
        ok_with("cidrLimit: 64\n", &all).non_masquerade_cidrs.len(),
        11
    );
}

#[test]
fn resync_interval() {
    let resync = |v: &str| ok(&format!("resyncInterval: {v}\n")).resync_interval;
    assert_eq!(resync("30s"), Duration::from_secs(30));
    assert_eq!(resync("1m30s"), Duration::from_secs(90));
    assert_eq!(resync("1.5h"), Duration::from_secs(5400));
    assert_eq!(resync("\"2m\""), Duration::from_secs(120));
    assert_eq!(resync("1500ms"), Duration::from_millis(1500));
    assert_eq!(
        err("resyncInterval: abc\n"),
        r#"config field "resyncInterval": time: invalid duration "abc""#
    );
    assert_eq!(
        err("resyncInterval: 60\n"),
        r#"config field "resyncInterval": expected a duration string such as "60s", got number 60"#
    );
    assert_eq!(
        err("resyncInterval: 1d\n"),
        r#"config field "resyncInterval": time: unknown unit "d" in duration "1d""#
    );
    // The text Go's JSON encoder would have produced is what gets parsed.
    assert_eq!(
        err("resyncInterval: 1s<\n"),
        r#"config field "resyncInterval": time: unknown unit "s\\u" in duration "1s\\u003c""#
    );
    assert_eq!(
        err(r#"{"resyncInterval": "1\u0073"}"#),
        r#"config field "resyncInterval": time: unknown unit "\\u" in duration "1\\u0073""#
    );
    assert_eq!(resync("12µs5s"), Duration::from_nanos(5_000_012_000));
}

#[test]
fn short_resync_is_floored_with_a_warning() {
    for (text, shown) in [
        ("0s", "0s"),
        ("\"0\"", "0s"),
        ("-1s", "-1s"),
        ("500ms", "500ms"),
    ] {
        let loaded = parse(format!("resyncInterval: {text}\n").as_bytes(), &V4).unwrap();
        assert_eq!(
            loaded.config.resync_interval,
            Duration::from_secs(1),
            "{text}"
        );
        assert_eq!(
            loaded.warnings,
            [format!(
                "resyncInterval {shown} is below the 1s minimum; using 1s"
            )]
        );
    }
    assert!(
        parse(b"resyncInterval: 1s\n", &V4)
            .unwrap()
            .warnings
            .is_empty()
    );
}

#[test]
fn validation_texts_are_upstreams() {
    let many: Vec<String> = (0..65).map(|i| format!("  - 10.{i}.0.0/16")).collect();
    assert_eq!(
        err(&format!("nonMasqueradeCIDRs:\n{}\n", many.join("\n"))),
        "the daemon can only accept up to 64 CIDRs (excluding link-local), but got 65 CIDRs (excluding link local)"
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [abcdefg]\n"),
        r#"CIDR "abcdefg" could not be parsed, invalid CIDR address: abcdefg"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [10.0.0.1/8]\n"),
        r#"CIDR "10.0.0.1/8" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [fc00::/7]\n"),
        "ipv6 is not enabled, but ipv6 cidr fc00::/7 provided. Enable ipv6 using --enable-ipv6 agent flag"
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [010.0.0.0/8]\n"),
        r#"CIDR "010.0.0.0/8" could not be parsed, invalid CIDR address: 010.0.0.0/8"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [\"fe80::1%eth0/64\"]\n"),
        r#"CIDR "fe80::1%eth0/64" could not be parsed, invalid CIDR address: fe80::1%eth0/64"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [\"a\\tb\"]\n"),
        "CIDR \"a\\tb\" could not be parsed, invalid CIDR address: a\tb"
    );
    // The count comes first, before any CIDR is parsed.
    assert_eq!(
        err("cidrLimit: 1\nnonMasqueradeCIDRs: [abcdefg, xyz]\n"),
        "the daemon can only accept up to 1 CIDRs (excluding link-local), but got 2 CIDRs (excluding link local)"
    );
    // Then the CIDRs in order.
    assert_eq!(
        err("nonMasqueradeCIDRs: [fc00::/7, abcdefg]\n"),
        "ipv6 is not enabled, but ipv6 cidr fc00::/7 provided. Enable ipv6 using --enable-ipv6 agent flag"
    );
}

#[test]
fn ipv6_needs_the_flag() {
    let text = "nonMasqueradeCIDRs: [10.0.0.0/8, FC00::/7, 192.168.0.0/16, 2001:db8::/32]\n";
    assert!(parse(text.as_bytes(), &V4).is_err());
    assert_eq!(
        cidrs(&ok_with(text, &V6)),
        ["10.0.0.0/8", "fc00::/7", "192.168.0.0/16", "2001:db8::/32"]
    );
    assert_eq!(
        err_with("nonMasqueradeCIDRs: [\"fc00::1/7\"]\n", &V6),
        r#"CIDR "fc00::1/7" is not aligned to a CIDR block, ip: "fc00::1" network: "fc00::/7""#
    );
}

#[test]
fn ipv4_mapped_cidrs_are_refused() {
    // Upstream counts these as IPv4 and then fails in iptables; read as IPv4,
    // ::ffff:0:0/96 would exempt every IPv4 destination. Refused, even
    // without --enable-ipv6, naming the IPv4 range meant.
    assert_eq!(
        err("nonMasqueradeCIDRs: [\"::ffff:10.0.0.0/104\"]\n"),
        r#"CIDR "::ffff:10.0.0.0/104" is an IPv4-mapped IPv6 range, which means the IPv4 range 10.0.0.0/8; write 10.0.0.0/8 if that is what you mean"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [\"::ffff:0:0/96\"]\n"),
        r#"CIDR "::ffff:0:0/96" is an IPv4-mapped IPv6 range, which means the IPv4 range 0.0.0.0/0; write 0.0.0.0/0 if that is what you mean"#
    );
    assert_eq!(
        err("nonMasqueradeCIDRs: [\"::ffff:10.0.0.1/104\"]\n"),
        r#"CIDR "::ffff:10.0.0.1/104" is not aligned to a CIDR block, ip: "10.0.0.1" network: "10.0.0.0/8""#
    );
}

#[test]
fn cidr_limit_from_the_same_file() {
    // The link-local ranges are never in the list, so never counted.
    let one = ok("cidrLimit: 1\nnonMasqueradeCIDRs: [10.0.0.0/8]\nmasqLinkLocal: false\n");
    assert_eq!(one.non_masquerade_cidrs.len(), 1);
    // Raised well past the default.
    let many: Vec<String> = (0..300)
        .map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256))
        .collect();
    let config = ok(&format!(
        "cidrLimit: 50000\nnonMasqueradeCIDRs: [{}]\n",
        many.join(",")
    ));
    assert_eq!(config.non_masquerade_cidrs.len(), 300);
    assert_eq!(config.cidr_limit, 50000);
    // Lowered below the default list.
    assert_eq!(
        err("cidrLimit: 2\n"),
        "the daemon can only accept up to 2 CIDRs (excluding link-local), but got 3 CIDRs (excluding link local)"
    );
    assert_eq!(ok("cidrLimit: 0\nnonMasqueradeCIDRs: []\n").cidr_limit, 0);
}

#[test]
fn only_the_first_yaml_document_counts() {
    let config = ok("cidrLimit: 5\n---\ncidrLimit: 6\n---\n: : [\n");
    assert_eq!(config.cidr_limit, 5);
    assert!(ok("---\nmasqLinkLocal: on\n...\n").masq_link_local);
}

#[test]
fn top_level_must_be_a_mapping() {
    assert_eq!(
        err("- 10.0.0.0/8\n"),
        "config must be a mapping of settings (such as `cidrLimit: 64`), got a list"
    );
    assert_eq!(
        err("hello\n"),
        r#"config must be a mapping of settings (such as `cidrLimit: 64`), got string "hello""#
    );
    assert!(err("5\n").starts_with("config must be a mapping"));
    assert!(err("\"\"\n").starts_with("config must be a mapping"));
}

#[test]
fn yaml_syntax_errors_are_reported() {
    let e = err("nonMasqueradeCIDRs: [10.0.0.0/8\n");
    assert!(e.starts_with("invalid YAML: "), "{e}");
    let e = err("a: 'unterminated\n");
    assert!(e.starts_with("invalid YAML: "), "{e}");
}

#[test]
fn merge_keys_work_at_the_top_level() {
    let config = ok("common: &c {cidrLimit: 5, masqLinkLocal: yes}\n<<: *c\ncidrLimit: 7\n");
    assert_eq!(config.cidr_limit, 7);
    assert!(config.masq_link_local);
}

#[test]
fn size_cap() {
    let mut exact = b"cidrLimit: 5\n#".to_vec();
    exact.resize(MAX_CONFIG_BYTES, b'x');
    assert_eq!(parse(&exact, &V4).unwrap().config.cidr_limit, 5);
    exact.push(b'x');
    assert_eq!(
        parse(&exact, &V4).unwrap_err().to_string(),
        "config is 1048577 bytes, larger than the 1048576-byte limit (the ConfigMap size limit)"
    );
}

#[test]
fn alias_bomb_is_rejected_quickly() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        text.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    let started = Instant::now();
    let e = err(&text);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        e,
        "config holds more than 100000 values or 16777216 bytes of text (YAML aliases counted as expanded); refusing it"
    );
    // A long string aliased many times hits the byte budget instead.
    let long = "x".repeat(500_000);
    let refs = vec!["*s"; 40].join(",");
    let e = err(&format!("s: &s {long}\nl: [{refs}]\n"));
    assert!(e.starts_with("config holds more than"), "{e}");
}

#[test]
fn deep_nesting_is_rejected() {
    let yaml = format!("a: {}{}\n", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        err(&yaml),
        "config nests lists and mappings deeper than 64 levels"
    );
    let json = format!("{{\"a\": {}{}}}", "[".repeat(200), "]".repeat(200));
    assert_eq!(
        err(&json),
        "config nests lists and mappings deeper than 64 levels"
    );
    // The whole 1 MiB of brackets is refused as quickly.
    let huge = "[".repeat(MAX_CONFIG_BYTES);
    let started = Instant::now();
    assert!(parse(huge.as_bytes(), &V4).is_err());
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn configmap_manifest_then_parse() {
    let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ip-masq-agent\ndata:\n  config: |\n    nonMasqueradeCIDRs:\n      - 10.0.0.0/8\n    resyncInterval: 30s\n";
    let data = configmap_data(manifest.as_bytes(), "config")
        .unwrap()
        .unwrap();
    let config = parse(&data, &V4).unwrap().config;
    assert_eq!(cidrs(&config), ["10.0.0.0/8"]);
    assert_eq!(config.resync_interval, Duration::from_secs(30));
    assert_eq!(
        configmap_data(b"nonMasqueradeCIDRs: []\n", "config").unwrap(),
        None
    );
    assert_eq!(
        configmap_data(manifest.as_bytes(), "ip-masq-agent")
            .unwrap_err()
            .to_string(),
        r#"ConfigMap data key "ip-masq-agent" is missing (data has: config)"#
    );
}

#[test]
fn read_then_parse_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ip-masq-agent");
    assert_eq!(read(&path).unwrap(), None);
    let loaded = Loaded::absent(&V4);
    assert_eq!(loaded.source, Source::Absent);
    assert_eq!(loaded.config, Config::defaults(false));

    std::fs::write(&path, "cidrLimit: 5\n").unwrap();
    assert_eq!(
        read(&path).unwrap().as_deref(),
        Some(b"cidrLimit: 5\n".as_slice())
    );
    let loaded = parse(&read(&path).unwrap().unwrap(), &V4).unwrap();
    assert_eq!(loaded.source, Source::File);
    assert_eq!(loaded.config.cidr_limit, 5);

    // A dangling symlink (a ConfigMap volume mid-swap) reads as absent.
    let link = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
    assert_eq!(read(&link).unwrap(), None);

    let big = dir.path().join("big");
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES + 1]).unwrap();
    let e = read(&big).unwrap_err();
    assert_eq!(e.metric_label(), "too_large");
    assert!(
        e.to_string().ends_with(
            "is larger than 1048576 bytes (the ConfigMap size limit); refusing to read it"
        )
    );
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES]).unwrap();
    assert_eq!(read(&big).unwrap().map(|b| b.len()), Some(MAX_CONFIG_BYTES));

    // A directory is an error, not "absent".
    assert_eq!(read(dir.path()).unwrap_err().metric_label(), "read");

    std::fs::write(&path, "cidrLimit: \"5\"\n").unwrap();
    let bytes = read(&path).unwrap().unwrap();
    assert_eq!(parse(&bytes, &V4).unwrap_err().metric_label(), "type");
}

#[test]
fn duration_api() {
    assert_eq!(duration::parse("1m"), Ok(60_000_000_000));
    assert_eq!(duration::format(60_000_000_000), "1m0s");
    assert_eq!(
        duration::parse("x").unwrap_err().to_string(),
        r#"time: invalid duration "x""#
    );
}

#[test]
fn masquerade_and_pod_lists_in_a_file() {
    let text = "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]\nmasqueradeCIDRs: [10.9.0.0/16]\npodCIDRs:\n  - 10.4.0.0/14\n  - fd00:10::/64\n";
    let config = ok_with(text, &V6);
    let show = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect::<Vec<_>>();
    assert_eq!(cidrs(&config), ["10.0.0.0/8", "10.9.5.128/25"]);
    assert_eq!(show(&config.masquerade_cidrs), ["10.9.0.0/16"]);
    assert_eq!(show(&config.pod_cidrs), ["10.4.0.0/14", "fd00:10::/64"]);
    assert_eq!(
        config.to_json(),
        concat!(
            r#"{"nonMasqueradeCIDRs":["10.0.0.0/8","10.9.5.128/25"],"cidrLimit":64,"masqLinkLocal":false,"masqLinkLocalIPv6":false,"#,
            r#""resyncInterval":"1m0s","masqueradeCIDRs":["10.9.0.0/16"],"podCIDRs":["10.4.0.0/14","fd00:10::/64"]}"#
        )
    );
    // The JSON form reads back as the same config, and differs in fingerprint.
    assert_eq!(ok_with(&config.to_json(), &V6), config);
    let without = ok("nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]\n");
    assert_ne!(
        config.fingerprint_with_flags(""),
        without.fingerprint_with_flags("")
    );
    // Key names fold like upstream's; JSON files take them too.
    let folded = ok(r#"{"MasqueradeCIDRs": ["10.9.0.0/16"], "PODCIDRS": []}"#);
    assert_eq!(show(&folded.masquerade_cidrs), ["10.9.0.0/16"]);
    assert!(folded.pod_cidrs.is_empty());
    assert_eq!(
        err("masqueradeCIDRs: [10.0.0.0/8]\n"),
        r#"CIDR "10.0.0.0/8" is in both nonMasqueradeCIDRs and masqueradeCIDRs; a destination cannot be both masqueraded and not, so remove it from one of them"#
    );
    assert_eq!(
        err("podCIDRs: [fd00:10::/64]\n"),
        "podCIDRs: ipv6 is not enabled, but ipv6 cidr fd00:10::/64 provided. Enable ipv6 using --enable-ipv6 agent flag"
    );
    // cidrLimit counts every list: 3 defaults + 1 + 1 is over 4.
    assert_eq!(
        err("cidrLimit: 4\nmasqueradeCIDRs: [10.9.0.0/16]\npodCIDRs: [10.4.0.0/14]\n"),
        "the daemon can only accept up to 4 CIDRs (excluding link-local), but got 5 CIDRs (excluding link local)"
    );
}

#[test]
fn configs_without_the_new_keys_are_unchanged() {
    for text in [
        "",
        "nonMasqueradeCIDRs: [10.0.0.0/8]\n",
        "{\"masqLinkLocal\": true}",
        "masqueradeCIDRs: null\npodCIDRs: []\n",
    ] {
        let config = ok(text);
        assert!(config.masquerade_cidrs.is_empty(), "{text:?}");
        assert!(config.pod_cidrs.is_empty(), "{text:?}");
        assert!(!config.to_json().contains("masqueradeCIDRs"), "{text:?}");
        assert!(!config.to_json().contains("podCIDRs"), "{text:?}");
    }
    assert_eq!(
        ok("masqueradeCIDRs: []\npodCIDRs: null\n"),
        Config::defaults(false)
    );
}

#[test]
fn only_regular_files_are_read_and_a_fifo_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ip-masq-agent");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // No writer ever opens the FIFO: a blocking open would hang here.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || tx.send(read(&path).map_err(|e| e.to_string())));
    let result = rx
        .recv_timeout(std::time::Duration::from_secs(5))
        .expect("reading a FIFO blocked");
    assert_eq!(
        result.unwrap_err(),
        format!(
            "config file {} is a FIFO, not a regular file; refusing to read it",
            fifo.display()
        )
    );
    let err = read(dir.path()).unwrap_err().to_string();
    assert!(
        err.ends_with("is a directory, not a regular file; refusing to read it"),
        "{err}"
    );
    // A symlink to a regular file is read as the file (kubelet's layout).
    let real = dir.path().join("real");
    std::fs::write(&real, "cidrLimit: 1\n").unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    assert_eq!(
        read(&link).unwrap().as_deref(),
        Some(&b"cidrLimit: 1\n"[..])
    );
}

#[test]
fn unknown_keys_are_accepted_but_named_with_a_suggestion() {
    let warnings = |text: &str| parse(text.as_bytes(), &V4).unwrap().warnings;
    // The VPN incident: a missing "s" leaves the defaults in force.
    assert_eq!(
        warnings("nonMasqueradeCIDR: [10.40.0.0/14]\n"),
        [r#"unknown key "nonMasqueradeCIDR" ignored (did you mean "nonMasqueradeCIDRs"?)"#]
    );
    assert_eq!(
        warnings("resyncIntervall: 10s\nfoo: 1\n"),
        [
            r#"unknown key "foo" ignored"#,
            r#"unknown key "resyncIntervall" ignored (did you mean "resyncInterval"?)"#,
        ]
    );
    // Go's case folding still binds these: no warning.
    assert!(warnings("NONMASQUERADECIDRS: [10.0.0.0/8]\n").is_empty());
    assert_eq!(
        warnings("apiVersion: v1\nkind: List\nitems: []\n"),
        [
            r#"this is a Kubernetes object (kind: "List"), not an ip-masq-agent config: none of its keys are settings, so the defaults apply; give the config itself (a ConfigMap's data.config)"#
        ]
    );
    // A fragment says the same.
    let fragment = parse_fragment(b"masqLinkLocall: true\n", &V4).unwrap();
    assert_eq!(
        fragment.warnings,
        [r#"unknown key "masqLinkLocall" ignored (did you mean "masqLinkLocal"?)"#]
    );
}

#[test]
fn rejected_cidrs_get_a_hint_after_upstreams_text() {
    let opts = LoadOptions {
        all_reserved_ranges: false,
        enable_ipv6: true,
    };
    let hint = |text: &str| parse(text.as_bytes(), &opts).unwrap_err().hint();
    assert_eq!(
        hint("nonMasqueradeCIDRs: [10.0.0.1/8]\n").as_deref(),
        Some(
            "did you mean 10.0.0.0/8? (10.0.0.1/8 is not a network address; 10.0.0.1/32 is the one address)"
        )
    );
    assert_eq!(
        hint("nonMasqueradeCIDRs: [\"fd00::1/8\"]\n").as_deref(),
        Some(
            "did you mean fd00::/8? (fd00::1/8 is not a network address; fd00::1/128 is the one address)"
        )
    );
    assert_eq!(
        hint("nonMasqueradeCIDRs: [fd00::1]\n").as_deref(),
        Some("did you mean fd00::1/128? a CIDR needs a prefix length")
    );
    assert_eq!(
        hint("masqueradeCIDRs: [10.9.0.1]\n").as_deref(),
        Some("did you mean 10.9.0.1/32? a CIDR needs a prefix length"),
        "the lists of ours too"
    );
    assert_eq!(hint("nonMasqueradeCIDRs: [abcdefg]\n"), None);
    assert_eq!(hint("cidrLimit: x\n"), None);
}

#[test]
fn error_positions_are_found_for_the_file_line() {
    let opts = LoadOptions::default();
    let yaml = parse(b"a: 1\nb: [\n", &opts).unwrap_err();
    assert!(yaml.line().is_some(), "{yaml}");
    let json = parse(b"{\n\"cidrLimit\": }", &opts).unwrap_err();
    assert_eq!(json.line(), Some(2), "{json}");
    let manifest = "kind: ConfigMap\ndata:\n  config: |\n    a: 1\n    b: [\n";
    let data = configmap_data(manifest.as_bytes(), "config")
        .unwrap()
        .unwrap();
    let err = parse(&data, &opts).unwrap_err();
    let line = manifest_line(manifest.as_bytes(), "config", &data, &err).unwrap();
    assert_eq!(line, 3 + err.line().unwrap(), "{err}");
}
