//! The nftables backend's `pod-sources` set against the kernel: written
//! with the table, read back (over netlink and by `nft -j`) as ours so a
//! second `sync` changes nothing, repaired when changed behind the agent's
//! back, and removed with its rule when `podCIDRs` leaves the config. The
//! expected tables are literals of what `nft list table` printed (tabs as
//! four spaces), reviewed: the destination set is the longest-prefix
//! decision compiled (10.0.0.0/8 minus 10.9.0.0/16, plus 10.9.5.128/25 and
//! link-local), and the source rule sits before the destination lookup.

use crate::support::process::describe;
use crate::support::*;

fn sync(ns: &Netns, volume: &ConfigVolume) -> String {
    let config = volume.path();
    let args = [
        "--config",
        config.to_str().expect("config path is UTF-8"),
        "--backend=nftables",
        "-v=4",
        "sync",
    ];
    let out = oneshot(ns, &args);
    assert!(
        out.status.success(),
        "{}",
        describe("sync --backend=nftables", &out)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn table(ns: &Netns) -> String {
    ns.run(&["nft", "list", "table", "ip", "ip-masq-agent"])
        .replace('\t', "    ")
}

const CONFIG: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]
masqueradeCIDRs: [10.9.0.0/16]
podCIDRs: [10.40.0.0/24, 10.41.0.0/24]
";

const TABLE: &str = "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/13, 10.8.0.0/16,
                 10.9.5.128/25, 10.10.0.0/15,
                 10.12.0.0/14, 10.16.0.0/12,
                 10.32.0.0/11, 10.64.0.0/10,
                 10.128.0.0/9, 169.254.0.0/16 }
    }

    set pod-sources {
        type ipv4_addr
        flags interval
        elements = { 10.40.0.0/24, 10.41.0.0/24 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip saddr != @pod-sources return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
";

const WITHOUT_PODS: &str = "table ip ip-masq-agent {
    set no-masquerade {
        type ipv4_addr
        flags interval
        elements = { 10.0.0.0/13, 10.8.0.0/16,
                 10.9.5.128/25, 10.10.0.0/15,
                 10.12.0.0/14, 10.16.0.0/12,
                 10.32.0.0/11, 10.64.0.0/10,
                 10.128.0.0/9, 169.254.0.0/16 }
    }

    chain postrouting {
        type nat hook postrouting priority srcnat + 10; policy accept;
        fib daddr type local return
        ip daddr @no-masquerade return
        masquerade fully-random
    }
}
";

#[test]
fn the_pod_source_set_is_written_read_back_repaired_and_removed() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let mut volume = ConfigVolume::with(CONFIG);
    sync(&ns, &volume);
    assert_text_eq("the table", &table(&ns), TABLE);

    // Read back as exactly ours over netlink: no nft -j, nothing written.
    let again = sync(&ns, &volume);
    assert!(again.contains("rules unchanged"), "{again}");
    assert!(!again.contains("reading the table with nft -j"), "{again}");

    ns.run(&[
        "nft",
        "delete",
        "element",
        "ip",
        "ip-masq-agent",
        "pod-sources",
        "{ 10.41.0.0/24 }",
    ]);
    let repaired = sync(&ns, &volume);
    assert!(
        repaired.contains("set pod-sources: 1 element missing, 0 extra"),
        "{repaired}"
    );
    assert_text_eq("the repaired table", &table(&ns), TABLE);

    volume.update(
        "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25]\nmasqueradeCIDRs: [10.9.0.0/16]\n",
    );
    let removed = sync(&ns, &volume);
    assert!(
        removed.contains("set pod-sources no longer used"),
        "{removed}"
    );
    assert_text_eq("the table without podCIDRs", &table(&ns), WITHOUT_PODS);
}
