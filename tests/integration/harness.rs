//! Tests of the harness itself: namespaces are really created and really
//! deleted (also on panic), the config volume matches kubelet's layout, save
//! output is normalised as documented, waits end, diffs point at the line,
//! and the probe packet of the counter test really hits a MASQUERADE rule.
//! None of this needs the agent, so a red here is the harness's fault.

use std::fs;
use std::panic;
use std::path::Path;
use std::time::Duration;

use crate::support::iptables::{is_counter, normalise, packets_of, shell_words};
use crate::support::netns::{PREFIX, listed, live_names, own_prefix};
use crate::support::text::{contains_block, mismatch};
use crate::support::volume::KEY;
use crate::support::*;

#[test]
fn netns_guard_creates_then_deletes_the_namespace() {
    if !require_root_and_tools() {
        return;
    }
    let name = {
        let ns = Netns::new();
        assert!(ns.name().starts_with(&own_prefix()), "{}", ns.name());
        assert!(
            listed().contains(&ns.name().to_owned()),
            "{} not in ip netns list",
            ns.name()
        );
        // A fresh namespace has only its loopback: proof that commands run
        // there and not in the machine's namespace.
        let links = ns.run(&["ip", "-o", "link", "show"]);
        assert_eq!(
            links.lines().count(),
            1,
            "links in a fresh namespace:\n{links}"
        );
        assert!(links.contains(": lo:"), "{links}");
        ns.name().to_owned()
    };
    assert!(!listed().contains(&name), "{name} still listed after drop");
}

#[test]
fn netns_guard_deletes_the_namespace_when_the_test_panics() {
    if !require_root_and_tools() {
        return;
    }
    let mut name = String::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let ns = Netns::new();
        name = ns.name().to_owned();
        panic!("deliberate panic with {} alive", ns.name());
    }));
    assert!(result.is_err());
    assert!(!name.is_empty());
    assert!(
        !listed().contains(&name),
        "{name} survived a panicking test"
    );
}

#[test]
fn no_namespace_of_this_run_outlives_its_guard() {
    if !require_root_and_tools() {
        return;
    }
    // Other tests run in parallel, so their live namespaces may be listed;
    // any other name with this run's prefix was leaked by a finished test.
    // A guard may be between its bookkeeping and `ip netns delete` (or
    // `add`) while we look, so a name counts as leaked only if two listings
    // show it and it is live in neither snapshot taken around them.
    let mine = own_prefix();
    let live_before = live_names();
    let first = listed();
    let second = listed();
    let live_after = live_names();
    let leaked: Vec<String> = first
        .into_iter()
        .filter(|n| n.starts_with(&mine) && second.contains(n))
        .filter(|n| !live_before.contains(n) && !live_after.contains(n))
        .collect();
    assert!(
        leaked.is_empty(),
        "namespaces leaked by finished tests: {leaked:?}"
    );
    // Left over by an earlier run that was killed: not ours to delete, but
    // worth a line in the log.
    let stale: Vec<String> = listed()
        .into_iter()
        .filter(|n| n.starts_with(PREFIX) && !n.starts_with(&mine))
        .collect();
    if !stale.is_empty() {
        eprintln!("namespaces from an earlier run of this suite: {stale:?}");
    }
}

fn link_target(p: &Path) -> String {
    fs::read_link(p)
        .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

fn timestamped_dirs(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .expect("read the volume")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.starts_with("..2026_"))
        .collect();
    v.sort();
    v
}

#[test]
fn config_volume_follows_kubelet_atomic_writer() {
    let mut v = ConfigVolume::with("first");
    let dir = v.dir().to_owned();
    assert_eq!(v.path(), dir.join(KEY));
    assert_eq!(link_target(&v.path()), "..data/ip-masq-agent");
    let data = link_target(&dir.join("..data"));
    assert!(data.starts_with("..2026_11_26_10_"), "..data -> {data}");
    assert_eq!(timestamped_dirs(&dir), vec![data.clone()]);
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "first");

    v.update("second");
    let data2 = link_target(&dir.join("..data"));
    assert_ne!(data, data2, "an update must swap in a new directory");
    assert_eq!(
        timestamped_dirs(&dir),
        vec![data2.clone()],
        "old directory deleted"
    );
    assert!(!dir.join("..data_tmp").exists(), "..data_tmp renamed away");
    assert_eq!(link_target(&v.path()), "..data/ip-masq-agent");
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "second");

    v.remove();
    assert!(v.path().symlink_metadata().is_err(), "key symlink removed");
    let data3 = link_target(&dir.join("..data"));
    assert_eq!(timestamped_dirs(&dir), vec![data3]);

    v.update("third");
    assert_eq!(fs::read_to_string(v.path()).unwrap(), "third");

    let empty = ConfigVolume::empty();
    assert!(!empty.path().exists(), "an empty volume has no config file");
    assert!(empty.dir().join("..data").exists());
}

#[test]
fn normalise_drops_comments_and_chain_counters_only() {
    let raw = "# Generated by iptables-save v1.8.9 on Thu Nov 26 12:22:50 2026\n\
               *nat\n\
               :PREROUTING ACCEPT [12:345]\n\
               :X - [0:0]\n\
               -A X -m comment --comment \"a [1:2] b\" -j RETURN\n\
               COMMIT\n\
               # Completed on Thu Nov 26 12:22:50 2026\n\
               # Warning: iptables-legacy tables present, use iptables-legacy-save to see them\n";
    assert_text_eq(
        "normalised",
        &normalise(raw),
        "*nat\n:PREROUTING ACCEPT [0:0]\n:X - [0:0]\n-A X -m comment --comment \"a [1:2] b\" -j RETURN\nCOMMIT\n",
    );
    assert!(is_counter("[0:0]") && is_counter("[17:2040]"));
    assert!(!is_counter("[:]") && !is_counter("[1:x]") && !is_counter("0:0"));
    let counted = "*nat\n:POSTROUTING ACCEPT [0:0]\n[0:0] -A POSTROUTING -j X\n[3:90] -A X -m comment --comment x -j MASQUERADE --random-fully\n";
    assert_eq!(packets_of(counted, "-j MASQUERADE"), Some(3));
    assert_eq!(packets_of(counted, "-j X"), Some(0));
    assert_eq!(packets_of(counted, "-j SNAT"), None);
}

#[test]
fn shell_words_splits_like_a_shell() {
    assert_eq!(
        shell_words(r#"-A X -m comment --comment "a b" -j RETURN"#),
        [
            "-A",
            "X",
            "-m",
            "comment",
            "--comment",
            "a b",
            "-j",
            "RETURN"
        ]
    );
    // Single quotes keep double quotes: the old upstream's quoted comment.
    assert_eq!(
        shell_words(r#"--comment '"quoted words"'  ! x"#),
        ["--comment", "\"quoted words\"", "!", "x"]
    );
    assert_eq!(shell_words(r#"a""b ''"#), ["ab", ""]);
    assert!(panic::catch_unwind(|| shell_words("\"open")).is_err());
}

#[test]
fn text_diff_points_at_the_differing_line() {
    let report = mismatch("rules", "a\nb\nc\n", "a\nB\nc").expect("texts differ");
    assert!(
        report.contains("- B\n+ b\n") || report.contains("+ b\n- B\n"),
        "{report}"
    );
    assert!(
        report.contains("  a\n") && report.contains("  c\n"),
        "{report}"
    );
    assert!(
        mismatch("same", "a\nb\n", "a\nb").is_none(),
        "final newline is not a difference"
    );
    assert!(contains_block("x\na\nb\ny\n", "a\nb\n"));
    assert!(!contains_block("x\na\ny\nb\n", "a\nb\n"));
}

#[test]
fn wait_until_gives_up_at_the_deadline_showing_the_last_value() {
    let mut n = 0;
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        wait_until(
            Duration::from_millis(300),
            "a value that never comes",
            || {
                n += 1;
                format!("observation {n}")
            },
            |_| false,
        )
    }));
    let message = *result
        .expect_err("must time out")
        .downcast::<String>()
        .expect("panic message");
    assert!(message.contains("a value that never comes"), "{message}");
    assert!(message.contains(&format!("observation {n}")), "{message}");
    assert!(n >= 2, "polled more than once");
}

/// The counter test (`daemon::unchanged_node_is_not_rewritten`) relies on a
/// UDP datagram sent inside the namespace traversing nat POSTROUTING. Prove
/// it with hand-made rules, in each backend, without the agent.
mod probe_packet_hits_masquerade {
    use super::*;

    fn body(mode: Mode) {
        let ns = Netns::new();
        ipt(&ns, mode, Family::V4, "-t nat -N PROBE");
        ipt(&ns, mode, Family::V4, "-t nat -A POSTROUTING -j PROBE");
        ipt(
            &ns,
            mode,
            Family::V4,
            "-t nat -A PROBE -j MASQUERADE --random-fully",
        );
        crate::kernel::send_probe_datagram(&ns);
        let counted = save_with_counters(&ns, mode, Family::V4);
        assert_eq!(
            packets_of(&counted, "-j MASQUERADE"),
            Some(1),
            "one datagram, one new connection, one nat traversal:\n{counted}"
        );
    }

    #[test]
    fn nft() {
        if require_root_and_tools() {
            body(Mode::Nft);
        }
    }

    #[test]
    fn legacy() {
        if require_root_and_tools() {
            body(Mode::Legacy);
        }
    }
}
