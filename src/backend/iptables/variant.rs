//! Which iptables the node uses: the three binary variants, their version,
//! and `--iptables-mode=auto`'s detection.
//!
//! What must stay true: detection follows Kubernetes' iptables-wrapper
//! (kubelet's hint chains first, nft before legacy, then rule counts with nft
//! winning a tie); it never creates or loads a table (a legacy tool is given
//! `-t` only for a table the kernel already lists); and it reads chains by
//! name, never a whole table.

use futures_util::future::join_all;
use tracing::debug;

use super::rules::count_rules;
use crate::backend::exec;
use crate::backend::{BackendError, ErrorKind};
use crate::plan::Family;

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// `iptables-nft*`: the nf_tables kernel API.
    Nft,
    /// `iptables-legacy*`: the x_tables kernel API.
    Legacy,
    /// Plain `iptables*`, for images that ship only one unsuffixed variant.
    Plain,
}

impl Variant {
    fn suffix(self) -> &'static str {
        match self {
            Variant::Nft => "-nft",
            Variant::Legacy => "-legacy",
            Variant::Plain => "",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Variant::Nft => "nft",
            Variant::Legacy => "legacy",
            Variant::Plain => "plain",
        }
    }

    pub(super) fn binary(self, family: Family, tool: Tool) -> String {
        let base = match family {
            Family::Ipv4 => "iptables",
            Family::Ipv6 => "ip6tables",
        };
        let tool = match tool {
            Tool::Main => "",
            Tool::Restore => "-restore",
        };
        format!("{base}{}{tool}", self.suffix())
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Tool {
    Main,
    Restore,
}

/// An iptables release, from `iptables --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

/// `--random-fully` appeared in iptables 1.6.2.
pub(super) const RANDOM_FULLY_SINCE: Version = Version(1, 6, 2);

/// Parse `iptables v1.8.9 (nf_tables)` and friends.
pub fn parse_version(text: &str) -> Option<Version> {
    let start = text.find(" v")? + 2;
    let mut parts = text[start..]
        .split(|c: char| !c.is_ascii_digit() && c != '.')
        .next()?
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    let major = parts.next()??;
    let minor = parts.next().flatten().unwrap_or(0);
    let patch = parts.next().flatten().unwrap_or(0);
    Some(Version(major, minor, patch))
}

/// What tells which iptables variant the rest of the node uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariantEvidence {
    /// kubelet's KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains (mangle,
    /// both families), looked up by name.
    pub nft_kubelet_chains: usize,
    pub legacy_kubelet_chains: usize,
    /// Rules in nat POSTROUTING (both families), counted only when no hint
    /// chain exists: the chain every masquerading program (kube-proxy, CNI
    /// plugins, container engines, this agent) hooks into, and short.
    pub nft_rules: usize,
    pub legacy_rules: usize,
}

/// The decision Kubernetes' iptables-wrapper makes: follow kubelet's hint
/// chains, nft first; without them the variant holding more rules wins, and
/// nft on a tie.
pub fn choose_variant(evidence: &VariantEvidence) -> Variant {
    if evidence.nft_kubelet_chains > 0 {
        Variant::Nft
    } else if evidence.legacy_kubelet_chains > 0 || evidence.legacy_rules > evidence.nft_rules {
        Variant::Legacy
    } else {
        Variant::Nft
    }
}

/// kubelet's chains in mangle that say which variant it uses.
const HINT_CHAINS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// Whether a failed `-S CHAIN` means the chain (or its table) is not there.
/// iptables-nft 1.8.9 reports a missing chain as "incompatible".
pub(super) fn is_missing_chain(err: &BackendError) -> bool {
    err.kind == ErrorKind::Rejected
        && [
            "No chain/target/match by that name",
            "does not exist",
            "is incompatible, use 'nft' tool",
        ]
        .iter()
        .any(|text| err.detail.contains(text))
}

/// Whether a legacy table is loaded in this network namespace. Naming a
/// table to a legacy tool otherwise would load its kernel module and create it.
pub(super) async fn legacy_table_present(family: Family, table: &str) -> bool {
    let names = match family {
        Family::Ipv4 => "/proc/net/ip_tables_names",
        Family::Ipv6 => "/proc/net/ip6_tables_names",
    };
    tokio::fs::read_to_string(names)
        .await
        .map(|text| text.lines().any(|l| l.trim() == table))
        .unwrap_or(false)
}

/// What one `-t TABLE -S CHAIN` lookup found.
enum Lookup {
    /// The tool is not installed.
    NoTool,
    /// The chain is not there (or the tool failed: the variant exists).
    Absent,
    Present(String),
}

async fn lookup(variant: Variant, family: Family, table: &str, chain: &str) -> Lookup {
    if variant == Variant::Legacy && !legacy_table_present(family, table).await {
        return Lookup::Absent;
    }
    let program = variant.binary(family, Tool::Main);
    match exec::run(&program, &["-w", "5", "-t", table, "-S", chain], None).await {
        Ok(out) => Lookup::Present(out.stdout),
        Err(err) if err.kind == ErrorKind::NotFound => Lookup::NoTool,
        Err(err) => {
            if !is_missing_chain(&err) {
                debug!(error = %err, "looking up {chain} for backend detection");
            }
            Lookup::Absent
        }
    }
}

/// Whether the variant's tools are installed (asks nothing of the kernel).
async fn installed(variant: Variant) -> bool {
    let program = variant.binary(Family::Ipv4, Tool::Main);
    !matches!(exec::run(&program, &["--version"], None).await, Err(err) if err.kind == ErrorKind::NotFound)
}

/// The hint chains of one variant found, both families.
async fn hint_chains(variant: Variant) -> usize {
    let jobs = [Family::Ipv4, Family::Ipv6]
        .into_iter()
        .flat_map(|family| HINT_CHAINS.map(|chain| (family, chain)))
        .map(|(family, chain)| lookup(variant, family, "mangle", chain));
    join_all(jobs)
        .await
        .iter()
        .filter(|found| matches!(found, Lookup::Present(_)))
        .count()
}

/// The rules in nat POSTROUTING of one variant, both families.
async fn postrouting_rules(variant: Variant) -> usize {
    let jobs =
        [Family::Ipv4, Family::Ipv6].map(|family| lookup(variant, family, "nat", "POSTROUTING"));
    join_all(jobs)
        .await
        .iter()
        .map(|found| match found {
            Lookup::Present(text) => count_rules(text.as_str()),
            Lookup::NoTool | Lookup::Absent => 0,
        })
        .sum()
}

/// `--iptables-mode=auto`: look at the node and pick the variant the rest of
/// it uses. Falls back to plain `iptables` when neither suffixed tool exists.
///
/// Every read is a chain looked up by name (a handful of short commands),
/// so detection costs the same on a node with 35 000 kube-proxy rules as on
/// an empty one; legacy tables are only read when already loaded.
pub async fn detect_variant() -> (Variant, VariantEvidence) {
    let mut evidence = VariantEvidence::default();
    let (nft, legacy) = tokio::join!(installed(Variant::Nft), installed(Variant::Legacy));
    match (nft, legacy) {
        (false, false) => return (Variant::Plain, evidence),
        (true, false) => return (Variant::Nft, evidence),
        (false, true) => return (Variant::Legacy, evidence),
        (true, true) => {}
    }
    (evidence.nft_kubelet_chains, evidence.legacy_kubelet_chains) =
        tokio::join!(hint_chains(Variant::Nft), hint_chains(Variant::Legacy));
    if evidence.nft_kubelet_chains == 0 && evidence.legacy_kubelet_chains == 0 {
        (evidence.nft_rules, evidence.legacy_rules) = tokio::join!(
            postrouting_rules(Variant::Nft),
            postrouting_rules(Variant::Legacy)
        );
    }
    (choose_variant(&evidence), evidence)
}
