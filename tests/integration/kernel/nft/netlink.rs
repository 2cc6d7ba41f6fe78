//! The nftables backend's netlink layer against the real kernel and the
//! real `nft`: sets written by nft read back exactly through netlink and
//! the other way round (IPv4 and IPv6, ranges at either end of the address
//! space, adjacent ranges), the element layout equal to nft's own, deltas,
//! 50 000-element batches, errors, all-or-nothing batches, the generation
//! check, and the predicted rule bytecode equal to what the kernel holds
//! after nft wrote our table.
//!
//! The library's netlink calls work in the calling thread's network
//! namespace, so each runs on a thread that first joins the test's
//! namespace (`in_ns`) and proves it did before doing anything.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use ip_masq_agent::backend::ErrorKind;
use ip_masq_agent::backend::nftables::netlink::{self, ERESTART, NlError, Snapshot, Write};
use ip_masq_agent::backend::nftables::{gated_script, plan_nft, script};
use ip_masq_agent::plan::{Family as PlanFamily, PortRange, Ruleset};
use ipnet::IpNet;
use serde_json::Value;

use crate::support::*;

/// Runs `f` on a new thread inside `ns`'s network namespace. The thread
/// checks that its namespace is `ns`'s before `f` runs, so nothing here can
/// touch the machine's own namespace.
pub(crate) fn in_ns<T: Send + 'static>(ns: &Netns, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{}", ns.name());
    let thread = std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        let want = fs::metadata(&path).expect("namespace file");
        let now = fs::metadata("/proc/thread-self/ns/net").expect("own namespace");
        assert_eq!(
            (want.dev(), want.ino()),
            (now.dev(), now.ino()),
            "this thread did not join {path}"
        );
        f()
    });
    thread
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

fn fam(family: PlanFamily) -> &'static str {
    match family {
        PlanFamily::Ipv4 => "ip",
        PlanFamily::Ipv6 => "ip6",
    }
}

fn addr_type(family: PlanFamily) -> &'static str {
    match family {
        PlanFamily::Ipv4 => "ipv4_addr",
        PlanFamily::Ipv6 => "ipv6_addr",
    }
}

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().expect("a CIDR")).collect()
}

/// `nft -f` of `text` in `ns`.
fn nft_script(ns: &Netns, text: &str) {
    let file = tempfile::Builder::new()
        .prefix("imqa-nft-")
        .tempfile()
        .expect("temp file");
    fs::write(file.path(), text).expect("write the script");
    ns.run(&["nft", "-f", file.path().to_str().expect("UTF-8 path")]);
}

/// Our table with an empty set and nothing else.
fn empty_set(ns: &Netns, family: PlanFamily) {
    nft_script(
        ns,
        &format!(
            "table {} ip-masq-agent {{\n\tset no-masquerade {{\n\t\ttype {}\n\t\tflags interval\n\t}}\n}}\n",
            fam(family),
            addr_type(family)
        ),
    );
}

fn nft_add(ns: &Netns, family: PlanFamily, list: &[IpNet]) {
    let items: Vec<String> = list.iter().map(ToString::to_string).collect();
    nft_script(
        ns,
        &format!(
            "add element {} ip-masq-agent no-masquerade {{ {} }}\n",
            fam(family),
            items.join(", ")
        ),
    );
}

/// The set's elements as `nft -j` lists them, as CIDRs (a bare address is
/// a host prefix; a range is shown as `a-b`, which never equals a CIDR).
fn nft_listed(ns: &Netns, family: PlanFamily) -> Vec<String> {
    let text = ns.run(&[
        "nft",
        "-j",
        "list",
        "set",
        fam(family),
        "ip-masq-agent",
        "no-masquerade",
    ]);
    let json: Value = serde_json::from_str(&text).expect("nft -j prints JSON");
    let set = json["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i.get("set")))
        .expect("a set in the listing")
        .clone();
    let host = match family {
        PlanFamily::Ipv4 => 32,
        PlanFamily::Ipv6 => 128,
    };
    set.get("elem")
        .and_then(Value::as_array)
        .map(|elems| {
            elems
                .iter()
                .map(|e| match e {
                    Value::String(addr) => format!("{addr}/{host}"),
                    other if other.get("prefix").is_some() => format!(
                        "{}/{}",
                        other["prefix"]["addr"].as_str().unwrap_or("?"),
                        other["prefix"]["len"]
                    ),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The kernel's elements as nft receives them (`--debug=netlink`: key,
/// flags, user data), for comparing two sets boundary by boundary.
fn raw_elements(ns: &Netns, family: PlanFamily) -> Vec<String> {
    let text = ns.run(&[
        "nft",
        "--debug=netlink",
        "list",
        "set",
        fam(family),
        "ip-masq-agent",
        "no-masquerade",
    ]);
    let mut items: Vec<String> = text
        .split("element ")
        .skip(1)
        .map(|e| {
            e.split("table ")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    items.sort();
    items
}

fn strings(list: &[IpNet]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// A snapshot looking up our base chain by name, as the backend's plan
/// without `--to-ports` intervals does.
fn snapshot(ns: &Netns, family: PlanFamily) -> Snapshot {
    in_ns(ns, move || {
        netlink::snapshot(family, &["postrouting".to_owned()])
    })
    .expect("netlink snapshot")
}

fn write(ns: &Netns, family: PlanFamily, w: Write) -> Result<(), NlError> {
    in_ns(ns, move || netlink::write_set(family, &w))
}

/// Lists at the edges of each family's address space.
fn edge_cases() -> Vec<(PlanFamily, Vec<IpNet>)> {
    vec![
        (PlanFamily::Ipv4, nets(&["10.0.0.0/8", "192.168.0.0/16"])),
        (PlanFamily::Ipv4, nets(&["0.0.0.0/8", "10.0.0.0/8"])),
        (PlanFamily::Ipv4, nets(&["0.0.0.0/0"])),
        (
            PlanFamily::Ipv4,
            nets(&["0.0.0.0/32", "255.255.255.255/32"]),
        ),
        (PlanFamily::Ipv4, nets(&["10.0.0.0/8", "128.0.0.0/1"])),
        // Adjacent, and not one prefix together (the agent keeps both).
        (
            PlanFamily::Ipv4,
            nets(&["10.0.0.0/9", "10.128.0.0/10", "192.0.2.1/32"]),
        ),
        (PlanFamily::Ipv6, nets(&["::/0"])),
        (PlanFamily::Ipv6, nets(&["::/128", "fe80::/10"])),
        (
            PlanFamily::Ipv6,
            nets(&["fd00::/8", "fe80::/10", "ffff:ffff:ffff:ffff::/64"]),
        ),
        (PlanFamily::Ipv6, nets(&["8000::/1"])),
    ]
}

#[test]
fn sets_written_by_nft_read_back_exactly() {
    if !require_root_and_tools() {
        return;
    }
    for (family, list) in edge_cases() {
        let ns = Netns::new();
        empty_set(&ns, family);
        nft_add(&ns, family, &list);
        let snap = snapshot(&ns, family);
        let set = snap.observed.set.expect("the set");
        assert!(set.shape_ok, "{list:?}");
        assert_eq!(set.foreign_elements, 0, "{list:?}");
        assert_eq!(
            set.elements.into_iter().collect::<Vec<_>>(),
            list,
            "nft wrote {list:?}"
        );
    }
}

#[test]
fn sets_written_over_netlink_are_what_nft_writes() {
    if !require_root_and_tools() {
        return;
    }
    for (family, list) in edge_cases() {
        // nft's own layout of the list, boundary by boundary.
        let by_nft = Netns::new();
        empty_set(&by_nft, family);
        nft_add(&by_nft, family, &list);
        let expected = raw_elements(&by_nft, family);

        let ns = Netns::new();
        empty_set(&ns, family);
        let w = Write {
            flush: true,
            add: list.clone(),
            ..Write::default()
        };
        write(&ns, family, w).expect("netlink write");
        assert_eq!(
            nft_listed(&ns, family),
            strings(&list),
            "nft lists {list:?}"
        );
        assert_eq!(
            raw_elements(&ns, family),
            expected,
            "kernel elements for {list:?}"
        );
        let set = snapshot(&ns, family).observed.set.expect("the set");
        assert_eq!(set.elements.into_iter().collect::<Vec<_>>(), list);
    }
}

#[test]
fn deltas_change_exactly_their_elements() {
    if !require_root_and_tools() {
        return;
    }
    let family = PlanFamily::Ipv4;
    let ns = Netns::new();
    empty_set(&ns, family);
    let first = nets(&["10.0.0.0/9", "172.16.0.0/12", "198.51.100.0/24"]);
    write(
        &ns,
        family,
        Write {
            flush: true,
            add: first,
            ..Write::default()
        },
    )
    .expect("fill");
    // Grow 10.0.0.0/9 into /8, drop one, add one adjacent to a kept one.
    let w = Write {
        remove: nets(&["10.0.0.0/9", "198.51.100.0/24"]),
        add: nets(&["10.0.0.0/8", "172.32.0.0/12"]),
        ..Write::default()
    };
    write(&ns, family, w).expect("delta");
    assert_eq!(
        nft_listed(&ns, family),
        vec!["10.0.0.0/8", "172.16.0.0/12", "172.32.0.0/12"]
    );
    // nft reads and edits what we wrote: its own delta on top.
    ns.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "ip-masq-agent",
        "no-masquerade",
        "{ 172.32.0.0/12 }",
    ]);
    nft_add(&ns, family, &nets(&["0.0.0.0/8"]));
    let set = snapshot(&ns, family).observed.set.expect("the set");
    assert_eq!(set.foreign_elements, 0);
    assert_eq!(
        strings(&set.elements.into_iter().collect::<Vec<_>>()),
        vec!["0.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12"]
    );
}

/// Every other /24 (IPv4) or /64 (IPv6), so none merge.
fn many(family: PlanFamily, n: u32) -> Vec<IpNet> {
    (0..n)
        .map(|i| match family {
            PlanFamily::Ipv4 => format!(
                "{}.{}.{}.0/24",
                20 + (i >> 15),
                (i >> 7) & 255,
                (i & 127) * 2
            ),
            PlanFamily::Ipv6 => format!("2001:db8:{:x}:{:x}::/64", i >> 15, (i & 32767) * 2),
        })
        .map(|s| s.parse().expect("a CIDR"))
        .collect()
}

#[test]
fn fifty_thousand_elements_in_one_batch() {
    if !require_root_and_tools() {
        return;
    }
    for family in [PlanFamily::Ipv4, PlanFamily::Ipv6] {
        let ns = Netns::new();
        empty_set(&ns, family);
        let list = many(family, 50_000);
        let started = Instant::now();
        write(
            &ns,
            family,
            Write {
                flush: true,
                add: list.clone(),
                ..Write::default()
            },
        )
        .expect("50 000 elements");
        let wrote = started.elapsed();
        let started = Instant::now();
        let snap = snapshot(&ns, family);
        let read = started.elapsed();
        let set = snap.observed.set.expect("the set");
        assert_eq!(set.foreign_elements, 0);
        assert_eq!(set.elements.into_iter().collect::<Vec<_>>(), list);
        assert_eq!(nft_listed(&ns, family).len(), 50_000);
        // Replace all of them in one transaction too.
        let other: Vec<IpNet> = many(family, 50_001).into_iter().skip(1).collect();
        write(
            &ns,
            family,
            Write {
                flush: true,
                add: other.clone(),
                ..Write::default()
            },
        )
        .expect("flush + 50 000");
        let set = snapshot(&ns, family).observed.set.expect("the set");
        assert_eq!(set.elements.len(), 50_000);
        assert!(set.elements.contains(&other[49_999]) && !set.elements.contains(&list[0]));
        // Printed, not asserted (TESTING.md: timing belongs to benchmarks).
        eprintln!("{family}: 50 000 elements written in {wrote:?}, read in {read:?}");
    }
}

#[test]
fn errors_name_what_is_missing() {
    if !require_root_and_tools() {
        return;
    }
    let family = PlanFamily::Ipv4;
    let ns = Netns::new();
    // No table: the snapshot says so, a write fails as absent.
    let snap = snapshot(&ns, family);
    assert!(!snap.observed.table);
    let add = Write {
        add: nets(&["10.0.0.0/8"]),
        ..Write::default()
    };
    let err = write(&ns, family, add.clone()).expect_err("no table");
    assert_eq!(err.errno, Some(2), "{err:?}");
    // A table without the set.
    ns.run(&["nft", "add", "table", "ip", "ip-masq-agent"]);
    let snap = snapshot(&ns, family);
    assert!(snap.observed.table && snap.observed.set.is_none());
    let err = write(&ns, family, add).expect_err("no set");
    assert_eq!(err.errno, Some(2), "{err:?}");
    let backend = err.into_backend();
    assert_eq!(backend.kind, ErrorKind::Absent);
    assert!(
        backend.detail.contains("No such file or directory")
            && backend.command.contains("no-masquerade"),
        "{backend}"
    );
    // Deleting an element that is not there.
    ns.run(&["nft", "delete", "table", "ip", "ip-masq-agent"]);
    empty_set(&ns, family);
    let remove = Write {
        remove: nets(&["10.0.0.0/8"]),
        ..Write::default()
    };
    let err = write(&ns, family, remove).expect_err("no such element");
    assert_eq!(err.errno, Some(2), "{err:?}");
}

#[test]
fn a_failing_batch_changes_nothing() {
    if !require_root_and_tools() {
        return;
    }
    let family = PlanFamily::Ipv6;
    let ns = Netns::new();
    empty_set(&ns, family);
    let kept = nets(&["fd00::/8", "fe80::/10"]);
    nft_add(&ns, family, &kept);
    let before = raw_elements(&ns, family);
    // Valid adds, then one delete of an element that is not there.
    let w = Write {
        remove: nets(&["2001:db8::/32"]),
        add: many(family, 1000),
        ..Write::default()
    };
    write(&ns, family, w).expect_err("the delete fails");
    assert_eq!(raw_elements(&ns, family), before);
    // A flush, then overlapping adds: the flush does not happen either.
    let w = Write {
        flush: true,
        add: nets(&["2001:db8::/32", "2001:db8:1::/48"]),
        ..Write::default()
    };
    write(&ns, family, w).expect_err("overlapping elements");
    assert_eq!(raw_elements(&ns, family), before);
    assert_eq!(nft_listed(&ns, family), strings(&kept));
}

#[test]
fn a_stale_generation_is_refused() {
    if !require_root_and_tools() {
        return;
    }
    let family = PlanFamily::Ipv4;
    let ns = Netns::new();
    empty_set(&ns, family);
    let snap = snapshot(&ns, family);
    assert!(snap.consistent);
    // Anyone's commit moves the generation on.
    ns.run(&["nft", "add", "table", "ip", "someone-else"]);
    let w = Write {
        add: nets(&["10.0.0.0/8"]),
        genid: Some(snap.genid),
        ..Write::default()
    };
    let err = write(&ns, family, w.clone()).expect_err("stale generation");
    assert_eq!(err.errno, Some(ERESTART), "{err:?}");
    assert!(nft_listed(&ns, family).is_empty());
    let now = snapshot(&ns, family).genid;
    assert_eq!(now, snap.genid.wrapping_add(1));
    let fresh = Write {
        genid: Some(now),
        ..w
    };
    write(&ns, family, fresh).expect("current generation");
    assert_eq!(nft_listed(&ns, family), vec!["10.0.0.0/8"]);
}

fn ruleset(family: PlanFamily, list: &[&str], random_fully: bool, ports: &[(u16, u16)]) -> Ruleset {
    let ranges: Vec<PortRange> = ports
        .iter()
        .map(|&(first, last)| PortRange { first, last })
        .collect();
    Ruleset {
        family,
        chain: "IP-MASQ-AGENT".parse().expect("a chain name"),
        no_masquerade: nets(list),
        pod_sources: None,
        random_fully,
        authoritative: false,
        to_ports: ranges,
    }
}

/// Each shape of our table, as `nft -f` writes it, reads back over netlink
/// with exactly the predicted rules (so a one-shot `sync` on a matching
/// node writes nothing without asking nft).
#[test]
fn predicted_rules_are_what_the_kernel_holds() {
    if !require_root_and_tools() {
        return;
    }
    let shapes = [
        ruleset(PlanFamily::Ipv4, &["10.0.0.0/8"], true, &[]),
        ruleset(PlanFamily::Ipv4, &["10.0.0.0/8"], false, &[]),
        ruleset(PlanFamily::Ipv6, &["fd00::/8"], true, &[]),
        ruleset(PlanFamily::Ipv4, &["10.0.0.0/8"], true, &[(1024, 29999)]),
        ruleset(PlanFamily::Ipv6, &[], false, &[(40000, 40000)]),
        ruleset(
            PlanFamily::Ipv4,
            &["10.0.0.0/8", "192.0.2.1/32"],
            false,
            &[(1024, 29999), (32768, 65535)],
        ),
        ruleset(
            PlanFamily::Ipv4,
            &[],
            true,
            &[(1000, 1000), (2000, 2999), (50000, 50009)],
        ),
    ];
    // `--authoritative`'s rules too, in both families and with port shares.
    let authoritative = shapes.clone().into_iter().map(|rs| Ruleset {
        authoritative: true,
        ..rs
    });
    for rs in shapes.clone().into_iter().chain(authoritative) {
        let plan = plan_nft(&rs);
        let ns = Netns::new();
        nft_script(&ns, &script(&plan));
        let snap = snapshot(&ns, rs.family);
        assert!(snap.consistent);
        let got: std::collections::BTreeMap<String, Vec<String>> = snap
            .observed
            .chains
            .iter()
            .map(|(name, chain)| (name.clone(), chain.rules.clone()))
            .collect();
        assert_eq!(got, plan.predicted_bytecode(), "{}", script(&plan));
        let set = snap.observed.set.expect("the set");
        assert!(set.shape_ok);
        assert_eq!(
            set.elements.into_iter().collect::<Vec<_>>(),
            plan.elements()
        );
        assert!(snap.observed.chains.values().filter(|c| c.base_ok).count() == 1);
    }
}

/// The agent's way of creating the table: nft writes it gated, one netlink
/// batch fills the set and removes the gate; the result is exactly the
/// table `render` prints.
#[test]
fn gated_creation_ends_in_the_rendered_table() {
    if !require_root_and_tools() {
        return;
    }
    let rs = ruleset(
        PlanFamily::Ipv4,
        &["10.0.0.0/8", "192.168.0.0/16"],
        true,
        &[],
    );
    let plan = plan_nft(&rs);
    let ns = Netns::new();
    nft_script(&ns, &gated_script(&plan));
    let gated = snapshot(&ns, rs.family);
    let handle = gated.handles["postrouting"][0];
    assert_eq!(
        gated.observed.chains["postrouting"].rules[0],
        "[ immediate reg 0 return ]"
    );
    let w = Write {
        flush: true,
        add: plan.elements().to_vec(),
        delete_rule: Some(("postrouting".into(), handle)),
        ..Write::default()
    };
    write(&ns, rs.family, w).expect("fill and open");
    let expected = Netns::new();
    nft_script(&expected, &script(&plan));
    let list = |ns: &Netns| ns.run(&["nft", "list", "table", "ip", "ip-masq-agent"]);
    assert_text_eq("the created table", &list(&ns), &list(&expected));
    assert_eq!(
        raw_elements(&ns, rs.family),
        raw_elements(&expected, rs.family)
    );
}

/// A snapshot that `nft` changes meanwhile is not mistaken for one state:
/// the generation before and after differ.
#[test]
fn a_snapshot_knows_its_generation() {
    if !require_root_and_tools() {
        return;
    }
    let family = PlanFamily::Ipv4;
    let ns = Netns::new();
    empty_set(&ns, family);
    let a = snapshot(&ns, family);
    let b = snapshot(&ns, family);
    assert!(a.consistent && b.consistent);
    assert_eq!(a.genid, b.genid, "reads do not move the generation");
    nft_add(&ns, family, &nets(&["10.0.0.0/8"]));
    assert_eq!(snapshot(&ns, family).genid, a.genid.wrapping_add(1));
    let err: Result<u32, NlError> = in_ns(&ns, netlink::genid);
    assert_eq!(err.ok(), Some(a.genid.wrapping_add(1)));
}
