//! The loop above the seam, against the recording fake backend.

use std::path::Path;
use std::time::Duration;

use tokio::sync::watch;

use super::*;
use crate::backend::ErrorKind;
use crate::backend::fake::Fake;
use crate::config::LoadOptions;
use crate::plan::{Family, Settings};
use crate::source::api::events::{EventSink, Report};
use crate::source::api::{ConfigMapSource, ObjectInfo, Snapshot};
use crate::source::file::FileSource;
use crate::source::{Source, Sources};
use crate::telemetry::Telemetry;

fn agent(dir: &Path, ipv6: bool) -> Agent<Fake> {
    Agent::new(
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: ipv6,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        },
        LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6: ipv6,
        },
        Sources::new(vec![Source::File(FileSource::new(
            dir.join("ip-masq-agent"),
        ))]),
        Fake::default(),
        Telemetry::default(),
    )
}

fn cidrs(agent: &Agent<Fake>, family: Family) -> Vec<String> {
    agent.reconciler.backend.cidrs(family)
}

#[tokio::test]
async fn writes_once_then_only_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip-masq-agent");
    std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.0/8]\n").unwrap();
    let mut a = agent(dir.path(), false);
    assert!(a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::Ok);
    assert_eq!(a.reconciler.backend.writes, 1);
    assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
    assert!(!a.reload(Trigger::Resync));
    a.sync(Trigger::Resync).await;
    assert_eq!(
        a.reconciler.backend.writes, 1,
        "an unchanged node must see no write"
    );
    std::fs::write(
        &file,
        "nonMasqueradeCIDRs: [10.0.0.0/8, 192.168.0.0/16]\nmasqLinkLocal: true\n",
    )
    .unwrap();
    assert!(a.reload(Trigger::FileChange));
    a.sync(Trigger::FileChange).await;
    assert_eq!(a.reconciler.backend.writes, 2);
    assert_eq!(cidrs(&a, Family::Ipv4), ["10.0.0.0/8", "192.168.0.0/16"]);
}

#[tokio::test]
async fn conflicts_reach_the_gauge_and_the_readiness_text_and_go() {
    use crate::backend::conflict::{Conflict, ConflictKind, Origin};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ip-masq-agent"),
        "nonMasqueradeCIDRs: [10.0.0.0/8]\n",
    )
    .unwrap();
    let mut a = agent(dir.path(), false);
    let gauge = |a: &Agent<Fake>| {
        a.telemetry()
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("ip_masq_agent_conflicting_rules{"))
            .map(str::to_owned)
    };
    a.reconciler.backend.conflicts = vec![Conflict {
        kind: ConflictKind::Masquerades,
        origin: Origin::Iptables { variant: "nft" },
        chain: "CNI-x".into(),
        rule: "`-A CNI-x -j MASQUERADE`".into(),
        cidrs: vec!["10.0.0.0/8".into()],
        unsure: Vec::new(),
        ours: "IP-MASQ-AGENT".into(),
    }];
    assert!(a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::Ok);
    assert_eq!(
        gauge(&a).as_deref(),
        Some("ip_masq_agent_conflicting_rules{family=\"ipv4\"} 1")
    );
    let (ready, text) = a.telemetry().health.readiness();
    assert!(ready, "a conflict is not a readiness failure");
    assert_eq!(
        text,
        "ok: rules in sync\nconflicting nat rule (ipv4): iptables-nft nat chain CNI-x rule `-A CNI-x -j MASQUERADE` \
         masquerades pod traffic to 10.0.0.0/8 that the config exempts"
    );
    a.reconciler.backend.conflicts.clear();
    a.sync(Trigger::Resync).await;
    assert_eq!(
        gauge(&a).as_deref(),
        Some("ip_masq_agent_conflicting_rules{family=\"ipv4\"} 0")
    );
    assert_eq!(
        a.telemetry().health.readiness(),
        (true, "ok: rules in sync".to_owned())
    );
}

#[tokio::test]
async fn invalid_config_keeps_enforcing_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip-masq-agent");
    std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.0/8]\n").unwrap();
    let mut a = agent(dir.path(), false);
    a.reload(Trigger::Startup);
    a.sync(Trigger::Startup).await;
    std::fs::write(&file, "nonMasqueradeCIDRs: [10.0.0.1/8]\n").unwrap();
    assert!(!a.reload(Trigger::FileChange));
    assert!(a.loaded.first_error().unwrap().contains("is not aligned"));
    // Someone flushes the rules: the last good config is put back.
    a.reconciler.backend.kernel.clear();
    a.sync(Trigger::Resync).await;
    assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
    assert_eq!(a.reconciler.backend.writes, 2);
}

#[tokio::test]
async fn invalid_at_start_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ip-masq-agent"), "cidrLimit: \"64\"\n").unwrap();
    let mut a = agent(dir.path(), false);
    assert!(!a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
    assert_eq!(a.reconciler.backend.writes, 0);
    std::fs::write(dir.path().join("ip-masq-agent"), "cidrLimit: 64\n").unwrap();
    assert!(a.reload(Trigger::Resync));
}

#[tokio::test]
async fn absent_file_means_defaults_and_ipv6_follows_ipv4() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = agent(dir.path(), true);
    assert!(a.reload(Trigger::Startup));
    a.sync(Trigger::Startup).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16"
        ]
    );
    assert_eq!(cidrs(&a, Family::Ipv6), ["fe80::/10"]);
}

#[tokio::test]
async fn ipv4_failure_skips_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = agent(dir.path(), true);
    a.reload(Trigger::Startup);
    a.reconciler.backend.fail = Some(ErrorKind::LockHeld);
    assert!(
        matches!(a.sync(Trigger::Startup).await, SyncResult::Failed(e) if e.kind == ErrorKind::LockHeld)
    );
    assert!(a.reconciler.backend.kernel.is_empty());
}

/// An agent on the API source, with the sender standing in for the
/// watch and the receiver collecting Event reports.
fn api_agent() -> (
    Agent<Fake>,
    watch::Sender<Option<Snapshot>>,
    tokio::sync::mpsc::Receiver<Report>,
) {
    let (tx, rx) = watch::channel(None);
    let telemetry = Telemetry::default();
    let (sink, reports) = EventSink::capture(telemetry.metrics.clone());
    let agent = Agent::new(
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: false,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        },
        LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6: false,
        },
        Sources::new(vec![Source::ConfigMap(ConfigMapSource::new(
            "kube-system/ip-masq-agent".parse().unwrap(),
            "config".parse().unwrap(),
            rx,
            Some(sink),
        ))]),
        Fake::default(),
        telemetry,
    );
    (agent, tx, reports)
}

fn object(text: &str, rv: u32) -> Option<Snapshot> {
    Some(Snapshot {
        bytes: Some(text.as_bytes().to_vec()),
        object: Some(ObjectInfo {
            namespace: "kube-system".into(),
            name: "ip-masq-agent".into(),
            uid: Some("u-1".into()),
            resource_version: Some(rv.to_string()),
        }),
    })
}

#[tokio::test]
async fn api_source_writes_nothing_before_the_first_list() {
    let (mut a, tx, _reports) = api_agent();
    assert!(!a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
    assert_eq!(a.reconciler.backend.writes, 0);
    let (ready, reason) = a.reconciler.telemetry.health.readiness();
    assert!(!ready);
    assert!(
        reason
            .contains("waiting for the Kubernetes API to list configmap kube-system/ip-masq-agent"),
        "{reason}"
    );
    tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
    assert!(a.reload(Trigger::ApiChange));
    assert_eq!(a.sync(Trigger::ApiChange).await, SyncResult::Ok);
    assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
}

#[tokio::test]
async fn api_source_reports_each_distinct_rejection_once() {
    let (mut a, tx, mut reports) = api_agent();
    tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
    a.reload(Trigger::Startup);
    a.sync(Trigger::Startup).await;
    tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.1/8]\n", 2));
    assert!(!a.reload(Trigger::ApiChange));
    let Ok(Report::InvalidConfig {
        configmap, error, ..
    }) = reports.try_recv()
    else {
        panic!("no InvalidConfig report");
    };
    assert_eq!(configmap.uid.as_deref(), Some("u-1"));
    assert_eq!(configmap.resource_version.as_deref(), Some("2"));
    assert!(error.contains("is not aligned"), "{error}");
    // The same content again (a label edit, a relist): no new report.
    tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.1/8]\n", 3));
    assert!(!a.reload(Trigger::ApiChange));
    assert!(reports.try_recv().is_err());
    // The last good config stays enforced.
    a.sync(Trigger::Resync).await;
    assert_eq!(cidrs(&a, Family::Ipv4), ["169.254.0.0/16", "10.0.0.0/8"]);
    // Deleted: defaults, as for an absent file.
    tx.send_replace(Some(Snapshot {
        bytes: None,
        object: None,
    }));
    assert!(a.reload(Trigger::ApiChange));
    a.sync(Trigger::ApiChange).await;
    assert_eq!(cidrs(&a, Family::Ipv4).len(), 4);
    assert!(reports.try_recv().is_err());
}

#[tokio::test]
async fn api_source_reports_sync_failures_that_persist() {
    let (mut a, tx, mut reports) = api_agent();
    tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
    a.reload(Trigger::Startup);
    a.reconciler.backend.fail = Some(ErrorKind::LockHeld);
    for _ in 1..SYNC_FAILED_AFTER {
        a.sync(Trigger::Retry).await;
    }
    assert!(reports.try_recv().is_err(), "one failure is not a pattern");
    a.sync(Trigger::Retry).await;
    let Ok(Report::SyncFailed { error }) = reports.try_recv() else {
        panic!("no SyncFailed report");
    };
    assert!(error.contains("refused"), "{error}");
    a.reconciler.backend.fail = None;
    assert_eq!(a.sync(Trigger::Retry).await, SyncResult::Ok);
    a.reconciler.backend.fail = Some(ErrorKind::LockHeld);
    a.sync(Trigger::Retry).await;
    assert!(reports.try_recv().is_err(), "a success resets the count");
}

#[test]
fn backoff_grows_and_caps() {
    let mut b = Backoff::new();
    let first = b.next_delay();
    assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1000));
    let second = b.next_delay();
    assert!(second >= Duration::from_millis(1600) && second <= Duration::from_millis(2000));
    for _ in 0..20 {
        assert!(b.next_delay() <= Duration::from_secs(30));
    }
    b.reset();
    assert!(b.next_delay() <= Duration::from_millis(1000));
}

#[tokio::test]
async fn the_same_valid_content_after_a_read_error_is_valid_again() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip-masq-agent");
    let text = "nonMasqueradeCIDRs: [10.0.0.0/8]\n";
    std::fs::write(&file, text).unwrap();
    let mut a = agent(dir.path(), false);
    let valid = |a: &Agent<Fake>| {
        a.reconciler
            .telemetry
            .metrics
            .encode()
            .lines()
            .any(|l| l == "ip_masq_agent_config_valid 1")
    };
    assert!(a.reload(Trigger::Startup));
    assert!(valid(&a));
    // A file too large to read: rejected without being parsed.
    std::fs::write(&file, vec![b'#'; 2 << 20]).unwrap();
    assert!(!a.reload(Trigger::FileChange));
    assert!(!valid(&a));
    assert!(a.loaded.first_error().is_some());
    // The same bytes as before come back: valid again, nothing to sync.
    std::fs::write(&file, text).unwrap();
    assert!(
        !a.reload(Trigger::FileChange),
        "the enforced config did not change"
    );
    assert!(valid(&a), "config_valid stuck at 0");
    assert!(a.loaded.first_error().is_none());
}

/// An agent merging every file of `dir` (a ConfigMap volume with several
/// keys), and a second path beside it.
fn merging_agent(dir: &Path, extra: &Path) -> Agent<Fake> {
    Agent::new(
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: false,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        },
        LoadOptions::default(),
        Sources::new(vec![
            Source::File(FileSource::new(dir.to_path_buf())),
            Source::File(FileSource::new(extra.to_path_buf())),
        ]),
        Fake::default(),
        Telemetry::default(),
    )
}

#[tokio::test]
async fn fragments_merge_and_a_broken_one_keeps_its_last_good_contents() {
    let volume = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let extra = other.path().join("users");
    std::fs::write(
        volume.path().join("platform"),
        "nonMasqueradeCIDRs: [10.0.0.0/8]\n",
    )
    .unwrap();
    std::fs::write(
        volume.path().join(".hidden"),
        "nonMasqueradeCIDRs: [1.0.0.0/8]\n",
    )
    .unwrap();
    std::fs::write(
        &extra,
        "nonMasqueradeCIDRs: [192.168.0.0/16]\nmasqLinkLocal: true\n",
    )
    .unwrap();
    let mut a = merging_agent(volume.path(), &extra);
    assert!(a.reload(Trigger::Startup));
    a.sync(Trigger::Startup).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        ["10.0.0.0/8", "192.168.0.0/16"],
        "link-local OR-ed on, dot files ignored"
    );

    // The users' part breaks: the platform's change still applies, the
    // users' last good contents stay.
    std::fs::write(&extra, "nonMasqueradeCIDRs: [192.168.0.1/16]\n").unwrap();
    std::fs::write(
        volume.path().join("platform"),
        "nonMasqueradeCIDRs: [10.0.0.0/8, 172.16.0.0/12]\n",
    )
    .unwrap();
    assert!(a.reload(Trigger::FileChange));
    a.sync(Trigger::FileChange).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]
    );
    let error = a.loaded.first_error().unwrap();
    assert!(
        error.starts_with(&extra.display().to_string()) && error.contains("is not aligned"),
        "{error}"
    );
    let metrics = a.reconciler.telemetry.metrics.encode();
    let line = format!(
        "ip_masq_agent_config_fragment_valid{{fragment=\"{}\"}} 0",
        extra.display()
    );
    assert!(metrics.contains(&line), "{line} not in\n{metrics}");

    // A second key appears in the volume; then the users' file goes away
    // and takes its contribution with it.
    std::fs::write(
        volume.path().join("vpn"),
        "masqueradeCIDRs: [10.9.0.0/16]\n",
    )
    .unwrap();
    std::fs::remove_file(&extra).unwrap();
    assert!(a.reload(Trigger::FileChange));
    a.sync(Trigger::FileChange).await;
    assert_eq!(
        a.reconciler.backend.kernel[&Family::Ipv4].family,
        Family::Ipv4
    );
    let config = a.loaded.config.clone().unwrap();
    assert_eq!(
        config
            .masquerade_cidrs
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>(),
        ["10.9.0.0/16"]
    );
    assert!(
        !config.masq_link_local,
        "the users' masqLinkLocal went with their file"
    );
    assert!(
        a.loaded.first_error().is_none(),
        "an absent file is not an error"
    );

    // Every part gone: the defaults.
    std::fs::remove_file(volume.path().join("platform")).unwrap();
    std::fs::remove_file(volume.path().join("vpn")).unwrap();
    assert!(a.reload(Trigger::FileChange));
    assert_eq!(a.loaded.config, Some(Config::defaults(false)));
}

#[tokio::test]
async fn a_conflict_between_fragments_keeps_the_last_merged_config() {
    let volume = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let extra = other.path().join("users");
    std::fs::write(
        volume.path().join("platform"),
        "nonMasqueradeCIDRs: [10.9.0.0/16]\n",
    )
    .unwrap();
    let mut a = merging_agent(volume.path(), &extra);
    assert!(a.reload(Trigger::Startup));
    let before = a.loaded.config.clone();
    std::fs::write(&extra, "masqueradeCIDRs: [10.9.0.0/16]\n").unwrap();
    assert!(!a.reload(Trigger::FileChange));
    assert_eq!(a.loaded.config, before);
    let error = a.loaded.merge_error.clone().unwrap();
    assert!(
        error.contains("in nonMasqueradeCIDRs of") && error.contains("in masqueradeCIDRs of"),
        "{error}"
    );
    std::fs::remove_file(&extra).unwrap();
    assert!(
        !a.reload(Trigger::FileChange),
        "back to the same merged config"
    );
    assert!(a.loaded.merge_error.is_none());
}

#[tokio::test]
async fn a_typo_is_logged_and_counted_once_per_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ip-masq-agent");
    std::fs::write(&file, "nonMasqueradeCIDR: [10.40.0.0/14]\n").unwrap();
    let mut a = agent(dir.path(), false);
    let count = |a: &Agent<Fake>| {
        a.reconciler
            .telemetry
            .metrics
            .encode()
            .lines()
            .find_map(|l| {
                l.strip_prefix("ip_masq_agent_config_warnings_total ")
                    .map(str::to_owned)
            })
    };
    assert!(
        a.reload(Trigger::Startup),
        "accepted: unknown keys stay allowed"
    );
    assert_eq!(count(&a).as_deref(), Some("1"));
    // Read again unchanged: no second warning.
    assert!(!a.reload(Trigger::Resync));
    assert_eq!(count(&a).as_deref(), Some("1"));
}

/// A selection of ConfigMaps as the watch publishes it.
fn selection(objects: &[(&str, &str, u32)]) -> Option<crate::source::api::Selection> {
    Some(crate::source::api::Selection(
        objects
            .iter()
            .map(|(name, text, rv)| {
                let snapshot = Snapshot {
                    bytes: Some(text.as_bytes().to_vec()),
                    object: Some(ObjectInfo {
                        namespace: "kube-system".into(),
                        name: (*name).into(),
                        uid: Some(format!("uid-{name}")),
                        resource_version: Some(rv.to_string()),
                    }),
                };
                ((*name).to_owned(), snapshot)
            })
            .collect(),
    ))
}

/// `--configmap=kube-system/ip-masq-agent` beside a selector: parts come
/// and go with the selection, one object named by both counts once, and a
/// rejection is reported on the rejected ConfigMap.
#[tokio::test]
async fn selector_parts_come_and_go_and_count_once() {
    use crate::source::api::SelectorSource;

    let (one_tx, one_rx) = watch::channel(None);
    let (sel_tx, sel_rx) = watch::channel(None);
    let telemetry = Telemetry::default();
    let (sink, mut reports) = EventSink::capture(telemetry.metrics.clone());
    let sources = Sources::new(vec![
        Source::ConfigMap(ConfigMapSource::new(
            "kube-system/ip-masq-agent".parse().unwrap(),
            "config".parse().unwrap(),
            one_rx,
            None,
        )),
        Source::Selector(SelectorSource::new(
            "kube-system/masq".parse().unwrap(),
            "config".parse().unwrap(),
            sel_rx,
            Some(sink),
        )),
    ]);
    let mut a = Agent::new(
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: false,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        },
        LoadOptions {
            all_reserved_ranges: false,
            enable_ipv6: false,
        },
        sources,
        Fake::default(),
        telemetry,
    );
    one_tx.send_replace(object("nonMasqueradeCIDRs: [10.0.0.0/8]\n", 1));
    // The selector has not listed yet: nothing is enforced.
    assert!(!a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
    let (_, reason) = a.reconciler.telemetry.health.readiness();
    assert!(
        reason.contains("list the configmaps of namespace kube-system selected by masq"),
        "{reason}"
    );

    // The selector picks the same object (with other bytes, as a relist
    // in between could) and a second one: the first source's part stands.
    sel_tx.send_replace(selection(&[
        ("ip-masq-agent", "nonMasqueradeCIDRs: [10.99.0.0/16]\n", 1),
        ("users", "nonMasqueradeCIDRs: [192.168.0.0/16]\n", 1),
    ]));
    assert!(a.reload(Trigger::ApiChange));
    a.sync(Trigger::ApiChange).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        ["169.254.0.0/16", "10.0.0.0/8", "192.168.0.0/16"]
    );
    let names: Vec<&str> = a.loaded.parts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "configmap kube-system/ip-masq-agent key config",
            "configmap kube-system/users key config"
        ]
    );

    // A third joins; then the users' turns bad and keeps its last good.
    sel_tx.send_replace(selection(&[
        ("users", "nonMasqueradeCIDRs: [192.168.0.1/16]\n", 2),
        ("vpn", "nonMasqueradeCIDRs: [172.16.0.0/12]\n", 1),
    ]));
    assert!(a.reload(Trigger::ApiChange));
    a.sync(Trigger::ApiChange).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        [
            "169.254.0.0/16",
            "10.0.0.0/8",
            "192.168.0.0/16",
            "172.16.0.0/12"
        ]
    );
    let Ok(Report::InvalidConfig {
        configmap, error, ..
    }) = reports.try_recv()
    else {
        panic!("no InvalidConfig report");
    };
    assert_eq!(
        (configmap.name.as_str(), configmap.uid.as_deref()),
        ("users", Some("uid-users"))
    );
    assert!(error.contains("is not aligned"), "{error}");
    let metrics = a.reconciler.telemetry.metrics.encode();
    assert!(
        metrics.contains("ip_masq_agent_config_fragment_valid{fragment=\"configmap kube-system/users key config\"} 0"),
        "{metrics}"
    );

    // The users' ConfigMap leaves the selection: its last good goes too.
    sel_tx.send_replace(selection(&[(
        "vpn",
        "nonMasqueradeCIDRs: [172.16.0.0/12]\n",
        1,
    )]));
    assert!(a.reload(Trigger::ApiChange));
    a.sync(Trigger::ApiChange).await;
    assert_eq!(
        cidrs(&a, Family::Ipv4),
        ["169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12"]
    );
    let metrics = a.reconciler.telemetry.metrics.encode();
    assert!(!metrics.contains("kube-system/users"), "{metrics}");
    assert!(reports.try_recv().is_err());
}

/// Two `--configmap` sources: the one that has not listed keeps the agent
/// unready and is the one named, though the other listed and is
/// connected; once both listed, the merged config is enforced and its
/// lists counted by the gauges.
#[tokio::test]
async fn every_api_source_must_list_and_the_merged_lists_are_counted() {
    let (one_tx, one_rx) = watch::channel(None);
    let (two_tx, two_rx) = watch::channel(None);
    let telemetry = Telemetry::new(crate::telemetry::Series {
        families: &[Family::Ipv4],
        ..Default::default()
    });
    let (one, two) = (
        "configmap kube-system/ip-masq-agent",
        "configmap tenants/ip-masq-extra",
    );
    // What the daemon and the watch tasks tell telemetry.
    telemetry.api_source(one);
    telemetry.api_source(two);
    let sources = Sources::new(vec![
        Source::ConfigMap(ConfigMapSource::new(
            "kube-system/ip-masq-agent".parse().unwrap(),
            "config".parse().unwrap(),
            one_rx,
            None,
        )),
        Source::ConfigMap(ConfigMapSource::new(
            "tenants/ip-masq-extra".parse().unwrap(),
            "config".parse().unwrap(),
            two_rx,
            None,
        )),
    ]);
    let mut a = Agent::new(
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: false,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        },
        LoadOptions::default(),
        sources,
        Fake::default(),
        telemetry.clone(),
    );
    one_tx.send_replace(object(
        "nonMasqueradeCIDRs: [10.0.0.0/8]\nmasqueradeCIDRs: [10.9.0.0/16]\npodCIDRs: [10.4.0.0/14]\n",
        1,
    ));
    telemetry.source_event(one);
    telemetry.source_state(one, &crate::source::api::SourceState::Connected);
    telemetry.source_state(
        two,
        &crate::source::api::SourceState::Failing("403 Forbidden".into()),
    );
    assert!(!a.reload(Trigger::Startup));
    assert_eq!(a.sync(Trigger::Startup).await, SyncResult::NoConfig);
    assert_eq!(a.reconciler.backend.writes, 0);
    let (ready, reason) = telemetry.health.readiness();
    assert!(!ready);
    assert!(
        reason.starts_with(
            "no valid config yet: waiting for the Kubernetes API to list configmap tenants/ip-masq-extra\n"
        ),
        "{reason}"
    );
    assert!(
        reason.contains("\nconfigmap kube-system/ip-masq-agent: watching"),
        "{reason}"
    );
    let metrics = telemetry.metrics.encode();
    assert!(
        metrics.contains("ip_masq_agent_config_source_connected{source=\"kubernetes\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ip_masq_agent_pod_cidrs{family=\"ipv4\"} 0"),
        "at 0 before any config: {metrics}"
    );

    two_tx.send_replace(object(
        "nonMasqueradeCIDRs: [192.168.0.0/16]\npodCIDRs: [192.168.128.0/17]\n",
        1,
    ));
    telemetry.source_event(two);
    telemetry.source_state(two, &crate::source::api::SourceState::Connected);
    assert!(a.reload(Trigger::ApiChange));
    assert_eq!(a.sync(Trigger::ApiChange).await, SyncResult::Ok);
    let (ready, reason) = telemetry.health.readiness();
    assert!(ready, "{reason}");
    assert!(
        reason.contains("\nconfigmap tenants/ip-masq-extra: watching"),
        "{reason}"
    );
    let metrics = telemetry.metrics.encode();
    for line in [
        "ip_masq_agent_config_source_connected{source=\"kubernetes\"} 1",
        "ip_masq_agent_non_masquerade_cidrs{family=\"ipv4\"} 2",
        "ip_masq_agent_masquerade_cidrs{family=\"ipv4\"} 1",
        "ip_masq_agent_pod_cidrs{family=\"ipv4\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
    assert!(!metrics.contains("ipv6"), "{metrics}");
}
