//! Several config sources merged into one rule set: a kubelet ConfigMap
//! volume with several keys (`--config DIR`, followed through kubelet's
//! atomic `..data` swaps) beside a second `--config` file. Each part is
//! validated on its own: a broken one keeps its last valid contents while
//! the others apply, a removed one takes its contribution with it.

use std::fs;
use std::time::Duration;

use crate::support::Family::V4;
use crate::support::*;

/// A watched change is applied within milliseconds; this leaves a wide
/// margin for a loaded machine, far below the 60 s resync.
const RELOAD_DEADLINE: Duration = Duration::from_secs(5);

const PLATFORM: &str = "nonMasqueradeCIDRs: [10.0.0.0/8]\n";
const PLATFORM_WIDER: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 100.64.0.0/10]\n";
const USERS: &str = "nonMasqueradeCIDRs: [192.168.0.0/16]\nmasqLinkLocal: true\n";
/// Host bits set: rejected, with upstream's text.
const USERS_BROKEN: &str = "nonMasqueradeCIDRs: [192.168.0.1/16]\nmasqLinkLocal: true\n";
const NODE_LOCAL: &str = "nonMasqueradeCIDRs: [172.16.0.0/12]\n";

/// The `RETURN` destinations of our chain, in order.
pub(super) fn returns(ns: &Netns, mode: Mode) -> String {
    save(ns, mode, V4)
        .lines()
        .filter(|l| l.starts_with("-A IP-MASQ-AGENT -d "))
        .filter_map(|l| l.split_whitespace().nth(3))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(super) fn wait_returns(agent: &mut Agent, ns: &Netns, mode: Mode, expected: &str, what: &str) {
    wait_for_text(
        RELOAD_DEADLINE,
        what,
        || {
            agent.assert_running();
            returns(ns, mode)
        },
        expected,
    );
}

both_modes! {
    /// Two keys of one volume and a second file: united in order (the
    /// volume's keys by name, then the file), link-local OR-ed; a broken
    /// key keeps its last good contents, a removed key's go.
    fn a_volume_of_keys_and_a_file_merge(mode) {
        let ns = Netns::new();
        let mut volume = ConfigVolume::empty();
        volume.update_keys(&[("platform", PLATFORM), ("users", USERS)]);
        let other = tempfile::tempdir().expect("temp dir");
        let node_local = other.path().join("node-local");
        fs::write(&node_local, NODE_LOCAL).expect("write the second source");
        let mut agent = Agent::start_sources(
            &ns,
            mode,
            &[volume.dir().to_path_buf(), node_local.clone()],
            &[],
        );
        wait_returns(
            &mut agent, &ns, mode,
            "10.0.0.0/8 192.168.0.0/16 172.16.0.0/12",
            "all three parts, link-local masqueraded (the users' masqLinkLocal)",
        );

        // One swap: the users' key breaks, the platform's widens.
        volume.update_keys(&[("platform", PLATFORM_WIDER), ("users", USERS_BROKEN)]);
        wait_returns(
            &mut agent, &ns, mode,
            "10.0.0.0/8 100.64.0.0/10 192.168.0.0/16 172.16.0.0/12",
            "the platform's change applies; the users' last good contents stay",
        );
        let users = volume.dir().join("users").display().to_string();
        let log = agent.log();
        assert!(
            log.lines().any(|l| l.contains("Error syncing configuration")
                && l.contains(&users)
                && l.contains("is not aligned")
                && l.contains("keeping its last valid contents")),
            "the rejection names the part:\n{log}"
        );

        // The users' key is removed from the ConfigMap: its CIDR and its
        // masqLinkLocal go, so link-local is exempt again.
        volume.update_keys(&[("platform", PLATFORM_WIDER)]);
        wait_returns(
            &mut agent, &ns, mode,
            "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10 172.16.0.0/12",
            "the removed key takes its contribution with it",
        );

        // The second file goes too: only the volume's key is left.
        fs::remove_file(&node_local).expect("remove the second source");
        wait_returns(
            &mut agent, &ns, mode,
            "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10",
            "a vanished file takes its contribution with it",
        );
        agent.assert_running();
    }
}

both_modes! {
    /// One `--config` file behaves exactly as before: unset keys take the
    /// defaults (here the default list), where a fragment would add none.
    fn one_file_keeps_upstream_defaults(mode) {
        let ns = Netns::new();
        let volume = ConfigVolume::with("masqLinkLocal: true\n");
        let mut agent = Agent::start(&ns, mode, &volume, &[]);
        wait_returns(
            &mut agent, &ns, mode,
            "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16",
            "a lone file without nonMasqueradeCIDRs gets the default list",
        );
    }
}

/// Two ConfigMaps (`--configmap` twice) on the in-process API server: both
/// merge; an invalid update of one keeps its last good contents (and is an
/// Event on that ConfigMap only); deleting one takes its contribution away.
#[test]
fn two_configmaps_merge_through_the_api() {
    use std::collections::BTreeMap;

    use crate::support::apiserver::{FakeApiServer, listen_in_netns};

    if !require_root_and_tools() {
        return;
    }
    let data = |text: &str| BTreeMap::from([("config".to_owned(), text.to_owned())]);
    let ns = Netns::new();
    let server = FakeApiServer::start(listen_in_netns(ns.name()).expect("listen in the namespace"));
    server.put_configmap("kube-system", "ip-masq-platform", data(PLATFORM));
    server.put_configmap("kube-system", "ip-masq-users", data(USERS));
    let dir = tempfile::tempdir().expect("temp dir");
    let kubeconfig = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kubeconfig)
        .expect("write kubeconfig");
    // The file beside the agent is not read with --configmap.
    let volume = ConfigVolume::with(NODE_LOCAL);
    let mut agent = Agent::start_with_env(
        &ns,
        Mode::Nft,
        &volume,
        &[
            "--configmap=kube-system/ip-masq-platform",
            "--configmap=kube-system/ip-masq-users",
            &format!("--kubeconfig={}", kubeconfig.display()),
        ],
        &[("NODE_NAME", "node-a")],
    );
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "10.0.0.0/8 192.168.0.0/16",
        "both ConfigMaps, not the file",
    );

    server.put_configmap("kube-system", "ip-masq-users", data(USERS_BROKEN));
    server.put_configmap("kube-system", "ip-masq-platform", data(PLATFORM_WIDER));
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "10.0.0.0/8 100.64.0.0/10 192.168.0.0/16",
        "the platform's change applies, the users' last good contents stay",
    );
    wait_until(
        DEADLINE,
        "one InvalidConfig Event, on the users' ConfigMap",
        || {
            let events = server.events();
            let found = events.iter().any(|e| {
                e.reason.as_deref() == Some("InvalidConfig")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("ip-masq-users")
            });
            format!("found: {found}; events: {events:?}")
        },
        |text| text.starts_with("found: true"),
    );
    assert!(
        !server
            .events()
            .iter()
            .any(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref())
                == Some("ip-masq-platform")),
        "no Event on the valid ConfigMap"
    );

    server.delete_configmap("kube-system", "ip-masq-users");
    wait_returns(
        &mut agent,
        &ns,
        Mode::Nft,
        "169.254.0.0/16 10.0.0.0/8 100.64.0.0/10",
        "the deleted ConfigMap takes its contribution (and masqLinkLocal) with it",
    );
}
