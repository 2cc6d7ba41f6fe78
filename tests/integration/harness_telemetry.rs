//! Tests of the harness parts that the telemetry and live-reload tests
//! added: a config volume whose directory is missing, vanishes and comes
//! back; reading curl's output and metrics samples; `hold_for`. None of
//! this needs root or the agent, so a red here is the harness's fault.

use std::fs;
use std::panic;
use std::time::Duration;

use crate::support::http::{parse_curl_output, parse_samples, sample};
use crate::support::volume::KEY;
use crate::support::*;

#[test]
fn config_volume_directory_can_be_missing_vanish_and_come_back() {
    let mut v = ConfigVolume::missing();
    let dir = v.dir().to_owned();
    assert!(!dir.exists(), "{} exists", dir.display());
    assert_eq!(v.path(), dir.join(KEY));
    assert!(
        dir.parent().is_some_and(|p| p.is_dir()),
        "the parent is there to create it in"
    );

    v.create_dir();
    assert!(dir.join("..data").is_dir(), "a fresh volume has ..data");
    assert!(!v.path().exists(), "and no key yet");
    v.update("first");
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "first");

    v.delete_dir();
    assert!(!dir.exists(), "the directory is gone");
    v.create_dir();
    v.update("second");
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "second");
    v.update("third");
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "third");

    // A volume that is its temp dir itself can vanish and come back too.
    let mut w = ConfigVolume::with("a");
    let wdir = w.dir().to_owned();
    w.delete_dir();
    assert!(!wdir.exists());
    w.create_dir();
    w.update("b");
    assert_eq!(fs::read_to_string(w.path()).unwrap(), "b");
}

#[test]
fn curl_output_splits_into_body_status_and_content_type() {
    let r = parse_curl_output("ok: rules in sync\n\n200\ntext/plain; charset=utf-8").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "ok: rules in sync\n");
    assert_eq!(r.content_type, "text/plain; charset=utf-8");

    let refused = parse_curl_output("\n000\n").unwrap();
    assert_eq!(refused.status, 0);
    assert_eq!(refused.body, "");
    assert!(parse_curl_output("no status line").is_none());
}

#[test]
fn metrics_samples_are_matched_by_name_and_label_set() {
    let text = r#"# HELP ip_masq_agent_syncs_total Rule syncs.
# TYPE ip_masq_agent_syncs_total counter
ip_masq_agent_syncs_total{family="ipv4",result="applied"} 3
ip_masq_agent_syncs_total{family="ipv4",result="unchanged"} 7
ip_masq_agent_config{fingerprint="a\"b,c"} 1
ip_masq_agent_config_valid 0
ip_masq_agent_last_successful_sync_timestamp_seconds{family="ipv4"} 1795697756.5468736
ip_masq_agent_sync_duration_seconds_bucket{le="+Inf",family="ipv4"} 2
# EOF
"#;
    assert_eq!(parse_samples(text).len(), 6);
    assert_eq!(
        sample(
            text,
            "ip_masq_agent_syncs_total",
            &[("result", "applied"), ("family", "ipv4")]
        ),
        Some(3.0),
        "label order does not matter"
    );
    assert_eq!(
        sample(text, "ip_masq_agent_syncs_total", &[("family", "ipv4")]),
        None,
        "the label set must match exactly"
    );
    assert_eq!(
        sample(text, "ip_masq_agent_config", &[("fingerprint", "a\"b,c")]),
        Some(1.0)
    );
    assert_eq!(sample(text, "ip_masq_agent_config_valid", &[]), Some(0.0));
    assert_eq!(sample(text, "ip_masq_agent_config", &[]), None);
    assert_eq!(
        sample(
            text,
            "ip_masq_agent_sync_duration_seconds_bucket",
            &[("le", "+Inf"), ("family", "ipv4")]
        ),
        Some(2.0)
    );
}

#[test]
fn hold_for_passes_when_it_holds_and_fails_at_the_first_violation() {
    let mut n = 0;
    hold_for(
        Duration::from_millis(250),
        "a constant",
        || {
            n += 1;
            "same"
        },
        |v| *v == "same",
    );
    assert!(n >= 2, "observed more than once: {n}");

    let mut m = 0;
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        hold_for(
            Duration::from_secs(30),
            "a value below 3",
            || {
                m += 1;
                m
            },
            |v| *v < 3,
        )
    }));
    let message = *result
        .expect_err("must fail")
        .downcast::<String>()
        .expect("panic message");
    assert!(message.contains("a value below 3"), "{message}");
    assert!(message.contains('3'), "{message}");
    assert_eq!(m, 3, "fails at the first violation, not at the deadline");
}
