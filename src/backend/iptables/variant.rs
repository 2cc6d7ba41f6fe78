//! Which iptables the node uses: the three binary variants, their version,
//! and `--iptables-mode=auto`'s detection.
//!
//! What must stay true: detection follows Kubernetes' iptables-wrapper
//! (kubelet's hint chains first, nft before legacy, then rule counts with nft
//! winning a tie), and it never creates or loads a table: the legacy tools are
//! never given `-t`.

use tracing::debug;

use crate::backend::ErrorKind;
use crate::backend::exec;
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
            Tool::Save => "-save",
            Tool::Restore => "-restore",
        };
        format!("{base}{}{tool}", self.suffix())
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Tool {
    Main,
    Save,
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

/// Rule counts that tell which iptables variant the rest of the node uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VariantEvidence {
    /// kubelet's KUBE-IPTABLES-HINT / KUBE-KUBELET-CANARY chains.
    pub nft_kubelet_chains: usize,
    pub legacy_kubelet_chains: usize,
    /// Rules of any kind (`-A` lines).
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

fn count_evidence(dump: &str) -> (usize, usize) {
    let hints = dump
        .lines()
        .filter(|l| l.starts_with(":KUBE-IPTABLES-HINT ") || l.starts_with(":KUBE-KUBELET-CANARY "))
        .count();
    let rules = dump.lines().filter(|l| l.starts_with("-A ")).count();
    (hints, rules)
}

async fn dump_all(variant: Variant, table: Option<&str>) -> Option<String> {
    let mut text = String::new();
    let mut any = false;
    for family in [Family::Ipv4, Family::Ipv6] {
        let program = variant.binary(family, Tool::Save);
        let args: Vec<&str> = table.map(|t| vec!["-t", t]).unwrap_or_default();
        match exec::run(&program, &args, None).await {
            Ok(out) => {
                any = true;
                text.push_str(&out.stdout);
            }
            Err(err) if err.kind == ErrorKind::NotFound => {}
            Err(err) => {
                // A failing save still proves the variant exists.
                any = true;
                debug!(error = %err, "reading rules for backend detection");
            }
        }
    }
    any.then_some(text)
}

/// `--iptables-mode=auto`: look at the node and pick the variant the rest of
/// it uses. Falls back to plain `iptables` when neither suffixed tool exists.
pub async fn detect_variant() -> (Variant, VariantEvidence) {
    let mut evidence = VariantEvidence::default();
    // mangle is where kubelet keeps its hint chains; the nft save of one
    // table is cheap and creates nothing.
    let nft_mangle = dump_all(Variant::Nft, Some("mangle")).await;
    // Never pass -t to legacy save: it would load the table's module.
    let legacy_all = dump_all(Variant::Legacy, None).await;
    if nft_mangle.is_none() && legacy_all.is_none() {
        return (Variant::Plain, evidence);
    }
    if let Some(text) = &nft_mangle {
        evidence.nft_kubelet_chains = count_evidence(text).0;
    }
    if let Some(text) = &legacy_all {
        (evidence.legacy_kubelet_chains, evidence.legacy_rules) = count_evidence(text);
    }
    if evidence.nft_kubelet_chains == 0
        && evidence.legacy_kubelet_chains == 0
        && let Some(text) = dump_all(Variant::Nft, None).await
    {
        evidence.nft_rules = count_evidence(&text).1;
    }
    let variant = match (nft_mangle.is_some(), legacy_all.is_some()) {
        (true, false) => Variant::Nft,
        (false, true) => Variant::Legacy,
        _ => choose_variant(&evidence),
    };
    (variant, evidence)
}
