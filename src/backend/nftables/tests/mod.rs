//! Unit tests of the backend's pure parts, one file per module they cover,
//! and the fixtures they share. Expected text is literal, never built from
//! the backend's constants.

use super::*;
use crate::plan::PortRange;

mod diff;
mod observe;
mod table;

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn ruleset(family: Family, list: &[&str]) -> Ruleset {
    Ruleset {
        family,
        chain: "IP-MASQ-AGENT".parse().unwrap(),
        no_masquerade: nets(list),
        pod_sources: None,
        random_fully: true,
        authoritative: false,
        to_ports: Vec::new(),
    }
}

fn defaults() -> Ruleset {
    ruleset(
        Family::Ipv4,
        &[
            "169.254.0.0/16",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
        ],
    )
}

fn two_intervals() -> Ruleset {
    let mut rs = ruleset(Family::Ipv4, &["10.0.0.0/8", "192.0.2.1/32"]);
    rs.random_fully = false;
    rs.to_ports = vec![
        PortRange {
            first: 1024,
            last: 29999,
        },
        PortRange {
            first: 32768,
            last: 65535,
        },
    ];
    rs
}

/// `[10.0.0.0/8, 10.9.5.128/25]` with the exception `masqueradeCIDRs:
/// [10.9.0.0/16]` and `podCIDRs: [10.40.0.0/24]`, as `plan` makes it.
fn pod_sources() -> Ruleset {
    let mut config = crate::config::Config::defaults(false);
    config.non_masquerade_cidrs = nets(&["10.0.0.0/8", "10.9.5.128/25"]);
    config.masquerade_cidrs = nets(&["10.9.0.0/16"]);
    config.pod_cidrs = nets(&["10.40.0.0/24"]);
    let settings = crate::plan::Settings {
        chain: "IP-MASQ-AGENT".parse().unwrap(),
        enable_ipv6: false,
        random_fully: true,
        authoritative: false,
        to_ports: Vec::new(),
    };
    crate::plan::plan(&config, &settings, Family::Ipv4)
}

fn live(rs: &Ruleset) -> Observed {
    // What the kernel holds right after `rs` was applied.
    let plan = plan_nft(rs);
    Observed {
        table: true,
        set: Some(ObservedSet {
            shape_ok: true,
            elements: plan.elements.iter().copied().collect(),
            foreign_elements: 0,
        }),
        pod_set: plan.pod_elements.as_ref().map(|pods| ObservedSet {
            shape_ok: true,
            elements: pods.iter().copied().collect(),
            foreign_elements: 0,
        }),
        chains: plan
            .chains
            .iter()
            .map(|c| {
                let chain = ObservedChain {
                    base_ok: c.base,
                    priority: c.base.then_some(plan.priority),
                    rules: c.rules.iter().map(NftRule::json).collect(),
                };
                (c.name.clone(), chain)
            })
            .collect(),
    }
}

#[tokio::test]
async fn absent_is_recognised() {
    // What nft prints for a table that is not there, sorted where commands run.
    let err = exec::run(
        "sh",
        &[
            "-c",
            "echo 'Error: Could not process rule: No such file or directory' >&2; exit 1",
        ],
        None,
    )
    .await
    .unwrap_err();
    assert!(is_absent(&err), "{err}");
    let other = BackendError::new(ErrorKind::Rejected, "nft", "Operation not permitted");
    assert!(!is_absent(&other));
}
