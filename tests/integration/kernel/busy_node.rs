//! Issue #12: on a busy node the agent's reads stay the size of its own
//! objects. The namespace holds what kube-proxy writes for 5 000 Services
//! (about 36 000 nat rules, `support::busy_node`); the agent runs with every
//! iptables and nft binary behind a recording shim on its PATH, which runs
//! the real tool and logs its arguments and how many bytes it printed. A
//! full-table read (an `iptables-save`, or any answer the size of
//! kube-proxy's rules) fails the test, and so does a run that recorded no
//! read at all. Conflict detection, which runs in every sync, is held to
//! the same bound: it reads POSTROUTING and the chains it jumps to.

use std::fs;

use super::nft::netlink::in_ns;
use crate::support::Family::{V4, V6};
use crate::support::agent::oneshot;
use crate::support::busy_node::{SERVICES, Size, restore_text};
use crate::support::process::{COMMAND_TIMEOUT, describe, run_bounded};
use crate::support::shim::{Shims, real_path};
use crate::support::*;

/// The tools the agent may run, each shimmed when installed.
const TOOLS: &[&str] = &[
    "iptables",
    "ip6tables",
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-nft",
    "ip6tables-nft",
    "iptables-nft-save",
    "ip6tables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft-restore",
    "iptables-legacy",
    "ip6tables-legacy",
    "iptables-legacy-save",
    "ip6tables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy-restore",
    "nft",
];

/// The nat chains of the busy node.
const SIZE_CHAINS: usize = 13_754;

/// The largest answer a read of our own objects can give: our chain with a
/// few rules, and POSTROUTING with kube-proxy's one jump and ours. The busy
/// nat table prints about 5 MB.
const MAX_READ_BYTES: u64 = 16 * 1024;

/// One recorded tool run.
#[derive(Debug)]
struct Call {
    bytes: u64,
    argv: String,
}

/// The recording shims, to be put first on the agent's PATH.
struct Recorder {
    shims: Shims,
}

impl Recorder {
    fn new() -> Recorder {
        let shims = Shims::new();
        let log = shims.dir().join("calls.log");
        for tool in TOOLS {
            if real_path(tool).is_none() {
                continue;
            }
            // The real tool's stdout goes to a file first, so its size is
            // known; stdin, stderr and the exit status pass through.
            let body = format!(
                "out=$(mktemp) || exit 97\n\"$REAL\" \"$@\" >\"$out\"\nrc=$?\n\
printf '%s\\t%s\\n' \"$(stat -c %s \"$out\")\" \"{tool} $*\" >>\"{}\"\ncat \"$out\"\nrm -f \"$out\"\nexit \"$rc\"",
                log.display()
            );
            shims.install(tool, &body);
        }
        Recorder { shims }
    }

    /// `PATH` with the shims first.
    fn path(&self) -> String {
        self.shims.path()
    }

    /// Every call so far, and forgets them.
    fn take(&self) -> Vec<Call> {
        let log = self.shims.dir().join("calls.log");
        let text = fs::read_to_string(&log).unwrap_or_default();
        let _ = fs::remove_file(&log);
        text.lines()
            .filter_map(|line| {
                let (bytes, argv) = line.split_once('\t')?;
                Some(Call {
                    bytes: bytes.parse().ok()?,
                    argv: argv.to_owned(),
                })
            })
            .collect()
    }
}

/// Loads the busy node into `mode`'s tables (IPv4; IPv6 gets kubelet's hint
/// chains only, as on a single-stack node).
fn load_busy_node(ns: &Netns, mode: Mode) {
    let (text, size) = restore_text(SERVICES);
    assert!(size.rules > 35_000, "{size:?}");
    let file = tempfile::NamedTempFile::new().expect("temp file for the busy node");
    fs::write(file.path(), text).expect("write the busy node");
    let tool = mode.tool(V4, "-restore");
    let out = run_bounded(ns.command(&tool).arg(file.path()), COMMAND_TIMEOUT * 4);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("{tool} <busy node>"), &out)
    );
    ipt(ns, mode, V6, "-t mangle -N KUBE-IPTABLES-HINT");
    let rules = ns
        .run(&[&mode.tool(V4, "-save"), "-t", "nat"])
        .lines()
        .filter(|l| l.starts_with("-A "))
        .count();
    assert_eq!(rules, size.rules, "the busy node did not load");
}

/// Runs the agent once with the shims on its PATH and checks what it read.
fn run_recorded(ns: &Netns, rec: &Recorder, args: &[&str]) -> Vec<Call> {
    let path = format!("PATH={}", rec.path());
    let bin = agent_bin();
    let mut full = vec![path.as_str(), bin.to_str().expect("binary path is UTF-8")];
    full.extend_from_slice(args);
    let out = run_bounded(ns.command("env").args(&full), COMMAND_TIMEOUT * 2);
    assert!(out.status.success(), "{}", describe(&args.join(" "), &out));
    let calls = rec.take();
    assert!(
        !calls.is_empty(),
        "{}: the shims recorded no tool run",
        args.join(" ")
    );
    for call in &calls {
        assert!(
            !call
                .argv
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .ends_with("-save"),
            "{}: a whole-table read: {}",
            args.join(" "),
            call.argv
        );
        assert!(
            call.bytes <= MAX_READ_BYTES,
            "{}: `{}` printed {} bytes, more than our own objects can be (every call: {calls:#?})",
            args.join(" "),
            call.argv,
            call.bytes
        );
    }
    calls
}

fn ran(calls: &[Call], needle: &str) -> bool {
    calls.iter().any(|c| c.argv.contains(needle))
}

both_modes! {
    /// The iptables backend on a busy node: mode detection, the first sync
    /// (write and read-back), an unchanged sync, and cleanup read only our
    /// chain, POSTROUTING and kubelet's hint chains; the rules land.
    fn iptables_reads_stay_small_on_a_busy_node(mode) {
        let ns = Netns::new();
        load_busy_node(&ns, mode);
        let volume = ConfigVolume::empty();
        let config = volume.path();
        let config = config.to_str().expect("config path is UTF-8");
        let rec = Recorder::new();

        let first = run_recorded(&ns, &rec, &["--config", config, "--iptables-mode=auto", "sync"]);
        assert!(ran(&first, "-t mangle -S KUBE-IPTABLES-HINT"), "{first:#?}");
        assert!(ran(&first, "-t nat -S IP-MASQ-AGENT"), "{first:#?}");
        // Conflict detection follows POSTROUTING's jumps, one chain each.
        assert!(ran(&first, "-t nat -S KUBE-POSTROUTING"), "{first:#?}");
        assert!(ran(&first, "-restore"), "the first sync wrote nothing: {first:#?}");
        let ours = format!("{}-restore", mode.tool(V4, ""));
        assert!(ran(&first, &ours), "auto did not pick {mode}: {first:#?}");
        let saved = save(&ns, mode, V4);
        assert!(saved.contains(":IP-MASQ-AGENT - [0:0]"), "{saved}");

        // No nftables table of ours exists, which one netlink request by
        // name tells; `nft` would load its cache of the whole busy ruleset.
        assert!(!first.iter().any(|c| c.argv.starts_with("nft ")), "nft run for an absent table: {first:#?}");

        let mode_arg = mode.agent_arg();
        let unchanged = run_recorded(&ns, &rec, &["--config", config, &mode_arg, "sync"]);
        assert!(!ran(&unchanged, "-restore"), "an unchanged sync wrote: {unchanged:#?}");

        let cleanup = run_recorded(&ns, &rec, &["--config", config, &mode_arg, "cleanup"]);
        assert!(ran(&cleanup, "-restore"), "cleanup removed nothing: {cleanup:#?}");
        assert!(!save(&ns, mode, V4).contains("IP-MASQ-AGENT"));
    }
}

/// The nftables backend on a node whose iptables-nft tables are busy: its
/// look for the iptables backend's leftovers is by name and stays small.
#[test]
fn nftables_leftover_lookup_stays_small_on_a_busy_node() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    load_busy_node(&ns, Mode::Nft);
    // A loaded legacy nat table must be looked at too, and cheaply.
    ipt(&ns, Mode::Legacy, V4, "-t nat -N KUBE-POSTROUTING");
    let volume = ConfigVolume::empty();
    let config = volume.path();
    let config = config.to_str().expect("config path is UTF-8");
    let rec = Recorder::new();
    let calls = run_recorded(
        &ns,
        &rec,
        &["--config", config, "--backend=nftables", "sync"],
    );
    for tool in ["iptables-nft", "ip6tables-nft", "iptables-legacy"] {
        assert!(
            ran(&calls, &format!("{tool} -w 5 -t nat -S IP-MASQ-AGENT")),
            "{tool} not asked for our chain by name: {calls:#?}"
        );
    }
    // Conflict detection read the iptables path by chain name too.
    assert!(
        ran(&calls, "iptables-nft -w 5 -t nat -S KUBE-POSTROUTING"),
        "{calls:#?}"
    );
    let tables = ns.run(&["nft", "list", "tables"]);
    assert!(tables.contains("table ip ip-masq-agent"), "{tables}");
    let listing = oneshot(&ns, &["--config", config, "--backend=nftables", "cleanup"]);
    assert!(
        listing.status.success(),
        "{}",
        describe("cleanup", &listing)
    );
}

/// The nftables backend's netlink read of its own table on a busy
/// iptables-nft node: our chains are fetched by name and the rules dump is
/// filtered to our table by the kernel, so the read receives a few dozen
/// messages, not the family's 14 000 chains. A chain someone added to our
/// table shows in the table's use count, and only then are the chains
/// dumped (which hands over every chain of the family: the kernel does not
/// filter chain dumps by table).
#[test]
fn nftables_snapshot_stays_small_on_a_busy_node() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    load_busy_node(&ns, Mode::Nft);
    let volume = ConfigVolume::empty();
    sync_ok(&ns, Mode::Nft, &volume, &["--backend=nftables"]);
    let read = |ns: &Netns| {
        in_ns(ns, || {
            ip_masq_agent::backend::nftables::netlink::snapshot(
                ip_masq_agent::plan::Family::Ipv4,
                &["postrouting".to_owned()],
            )
        })
        .expect("netlink snapshot")
    };
    let snap = read(&ns);
    assert!(snap.consistent && snap.observed.table, "{snap:?}");
    assert_eq!(
        snap.observed.chains.keys().collect::<Vec<_>>(),
        ["postrouting"]
    );
    assert!(
        snap.received < 50,
        "our table's read received {} messages",
        snap.received
    );

    ns.run(&["nft", "add chain ip ip-masq-agent sneaky"]);
    let snap = read(&ns);
    assert!(
        snap.observed.chains.contains_key("sneaky"),
        "{:?}",
        snap.observed.chains.keys()
    );
    assert!(
        snap.received > SIZE_CHAINS,
        "the chain dump received only {} messages",
        snap.received
    );
}

/// Conflict detection's look for nftables nat chains at postrouting on a
/// busy iptables-nft node: the tables are only iptables-nft's and ours, so
/// their postrouting chains are asked for by name, not dumped with the
/// family's 14 000 chains. Another table (kube-proxy's in nftables mode, a
/// CNI's) means the chain dump, and its chain is found.
#[test]
fn nat_hook_lookup_stays_small_on_a_busy_node() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    load_busy_node(&ns, Mode::Nft);
    sync_ok(
        &ns,
        Mode::Nft,
        &ConfigVolume::empty(),
        &["--backend=nftables"],
    );
    let read = |ns: &Netns| {
        in_ns(ns, || {
            ip_masq_agent::backend::nftables::netlink::nat_postrouting_chains(
                ip_masq_agent::plan::Family::Ipv4,
            )
        })
        .expect("nat hook lookup")
    };
    let names = |found: &ip_masq_agent::backend::nftables::netlink::NatHooks| {
        let mut names: Vec<String> = found
            .hooks
            .iter()
            .map(|h| format!("{} {} {} {}", h.family, h.table, h.chain, h.priority))
            .collect();
        names.sort();
        names
    };
    let found = read(&ns);
    assert_eq!(
        names(&found),
        ["ip ip-masq-agent postrouting 110", "ip nat POSTROUTING 100"]
    );
    assert!(
        found.received < 20,
        "the lookup received {} messages",
        found.received
    );

    ns.run(&["nft", "add table ip cni"]);
    ns.run(&[
        "nft",
        "add chain ip cni post { type nat hook postrouting priority 50; }",
    ]);
    let found = read(&ns);
    assert!(
        names(&found).contains(&"ip cni post 50".to_owned()),
        "{:?}",
        names(&found)
    );
    assert!(
        found.received > SIZE_CHAINS,
        "the chain dump received only {} messages",
        found.received
    );
}

/// The generator itself (no root): kube-proxy's shape at issue #12's scale,
/// no chain name used twice.
#[test]
fn the_generated_node_is_busy() {
    let (text, size) = restore_text(SERVICES);
    assert_eq!(
        size,
        Size {
            chains: SIZE_CHAINS,
            rules: 36_258
        }
    );
    assert_eq!(
        text.lines().filter(|l| l.starts_with("-A ")).count(),
        size.rules
    );
    let declared = text.lines().filter(|l| l.starts_with(":KUBE-")).count();
    // The three mangle chains are kubelet's and kube-proxy's, not nat's.
    assert_eq!(declared - 3, size.chains);
    let mut names: Vec<&str> = text.lines().filter(|l| l.starts_with(":KUBE-S")).collect();
    let all = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), all, "chain names collide");
}
