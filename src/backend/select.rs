//! Which backend runs: the `--backend` and `--iptables-mode` choices, the
//! iptables variant a node uses, and removing what the backend not chosen
//! left behind (a node switching backends).

use std::fmt;
use std::str::FromStr;

use futures_util::future::join_all;
use tracing::{info, warn};

use super::conflict::{self, Conflict, OurPlace};
use super::iptables::{self, Iptables, Variant};
use super::nftables::Nftables;
use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use crate::config::Config;
use crate::plan::{ChainName, Family, Ruleset};

/// Which kernel backend programs the rules (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The upstream agent's iptables rules (the drop-in default).
    Iptables,
    /// A native nftables table with the list in an interval set.
    Nftables,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Iptables => "iptables",
            BackendKind::Nftables => "nftables",
        }
    }

    fn other(self) -> BackendKind {
        match self {
            BackendKind::Iptables => BackendKind::Nftables,
            BackendKind::Nftables => BackendKind::Iptables,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    /// The spellings `as_str` prints, exactly.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "iptables" => Ok(BackendKind::Iptables),
            "nftables" => Ok(BackendKind::Nftables),
            _ => Err("must be iptables or nftables".into()),
        }
    }
}

/// Which iptables flavour to drive (`--iptables-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesMode {
    /// Detect what the node already uses.
    Auto,
    Nft,
    Legacy,
}

impl IptablesMode {
    pub fn as_str(self) -> &'static str {
        match self {
            IptablesMode::Auto => "auto",
            IptablesMode::Nft => "nft",
            IptablesMode::Legacy => "legacy",
        }
    }
}

impl fmt::Display for IptablesMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IptablesMode {
    type Err = String;

    /// The spellings `as_str` prints, exactly.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "auto" => Ok(IptablesMode::Auto),
            "nft" => Ok(IptablesMode::Nft),
            "legacy" => Ok(IptablesMode::Legacy),
            _ => Err("must be auto, nft or legacy".into()),
        }
    }
}

/// Whichever backend `--backend` chose, so the agent loop stays generic over
/// one type while either implementation runs underneath.
#[derive(Debug)]
pub enum AnyBackend {
    Iptables(Iptables),
    Nftables(Nftables),
}

impl AnyBackend {
    /// The backend asked for, ready to use (`auto` detects the variant).
    pub async fn select(kind: BackendKind, mode: IptablesMode) -> AnyBackend {
        match kind {
            BackendKind::Iptables => AnyBackend::Iptables(choose_iptables(mode).await),
            BackendKind::Nftables => AnyBackend::Nftables(Nftables::new()),
        }
    }

    /// The backend for rendering, which needs neither root nor the tools:
    /// `auto` renders as iptables-nft, and without iptables here a current
    /// release is assumed (the version decides `--random-fully`).
    pub async fn for_render(kind: BackendKind, mode: IptablesMode) -> AnyBackend {
        match kind {
            BackendKind::Iptables => {
                let mut backend = Iptables::new(match mode {
                    IptablesMode::Legacy => Variant::Legacy,
                    IptablesMode::Auto | IptablesMode::Nft => Variant::Nft,
                });
                let _ = backend.probe().await;
                AnyBackend::Iptables(backend)
            }
            BackendKind::Nftables => AnyBackend::Nftables(Nftables::new()),
        }
    }
}

impl Backend for AnyBackend {
    fn describe(&self) -> String {
        match self {
            AnyBackend::Iptables(b) => b.describe(),
            AnyBackend::Nftables(b) => b.describe(),
        }
    }

    async fn probe(&mut self) -> Result<(), BackendError> {
        match self {
            AnyBackend::Iptables(b) => b.probe().await,
            AnyBackend::Nftables(b) => b.probe().await,
        }
    }

    fn apply_command(&self, family: Family) -> &'static str {
        match self {
            AnyBackend::Iptables(b) => b.apply_command(family),
            AnyBackend::Nftables(b) => b.apply_command(family),
        }
    }

    fn render(&self, desired: &Ruleset) -> String {
        match self {
            AnyBackend::Iptables(b) => b.render(desired),
            AnyBackend::Nftables(b) => b.render(desired),
        }
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        match self {
            AnyBackend::Iptables(b) => b.reconcile(desired).await,
            AnyBackend::Nftables(b) => b.reconcile(desired).await,
        }
    }

    async fn cleanup(
        &mut self,
        family: Family,
        chain: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        match self {
            AnyBackend::Iptables(b) => b.cleanup(family, chain).await,
            AnyBackend::Nftables(b) => b.cleanup(family, chain).await,
        }
    }

    async fn conflicts(
        &mut self,
        desired: &Ruleset,
        config: &Config,
    ) -> Result<Vec<Conflict>, BackendError> {
        conflict::find(desired.family, &self.our_place(&desired.chain), config).await
    }

    async fn path_generation(&self, family: Family) -> Option<u32> {
        conflict::path_generation(family).await
    }
}

impl AnyBackend {
    /// Where our decision is made on the nat postrouting path.
    pub fn our_place(&self, chain: &ChainName) -> OurPlace {
        match self {
            AnyBackend::Iptables(b) => OurPlace::Iptables {
                variant: b.variant().label(),
                chain: chain.clone(),
            },
            AnyBackend::Nftables(_) => OurPlace::Nftables {
                chain: chain.clone(),
            },
        }
    }
}

/// The iptables variant to use: the flag's, or what the node uses.
async fn choose_iptables(mode: IptablesMode) -> Iptables {
    let variant = match mode {
        IptablesMode::Nft => Variant::Nft,
        IptablesMode::Legacy => Variant::Legacy,
        IptablesMode::Auto => {
            let (variant, evidence) = iptables::detect_variant().await;
            info!(
                variant = variant.label(),
                nft_kubelet_chains = evidence.nft_kubelet_chains,
                legacy_kubelet_chains = evidence.legacy_kubelet_chains,
                nft_rules = evidence.nft_rules,
                legacy_rules = evidence.legacy_rules,
                "iptables mode detected"
            );
            variant
        }
    };
    Iptables::new(variant)
}

/// What removing one backend's state came to: the objects removed, and the
/// failures (each naming where it happened).
#[derive(Debug, Default)]
pub struct Removal {
    pub removed: Vec<String>,
    /// Objects of ours left in place, with why.
    pub kept: Vec<String>,
    pub failures: Vec<String>,
}

impl Removal {
    fn record(
        &mut self,
        result: Result<CleanupReport, BackendError>,
        what: impl FnOnce() -> String,
    ) {
        match result {
            Ok(report) => {
                self.removed.extend(report.removed);
                self.kept.extend(report.kept);
            }
            // The tool is not installed: nothing of ours can be there.
            Err(err) if err.kind == ErrorKind::NotFound => {}
            Err(err) => self.failures.push(format!("{}: {err}", what())),
        }
    }
}

/// Remove our state from one backend, both families, every iptables
/// variant. Only what is present is touched. The places are independent
/// (separate tables), so they are examined concurrently.
pub async fn remove_state(kind: BackendKind, chain: &ChainName) -> Removal {
    let families = [Family::Ipv4, Family::Ipv6];
    let mut removal = Removal::default();
    match kind {
        BackendKind::Iptables => {
            let jobs = [Variant::Nft, Variant::Legacy]
                .into_iter()
                .flat_map(|variant| families.map(|family| (variant, family)))
                .map(|(variant, family)| async move {
                    let result = Iptables::new(variant).cleanup(family, chain).await;
                    (variant, family, result)
                });
            for (variant, family, result) in join_all(jobs).await {
                removal.record(result, || {
                    format!("iptables ({}) {family}", variant.label())
                });
            }
        }
        BackendKind::Nftables => {
            let jobs = families.map(|family| async move {
                (family, Nftables::new().cleanup(family, chain).await)
            });
            for (family, result) in join_all(jobs).await {
                removal.record(result, || format!("nftables {family}"));
            }
        }
    }
    removal
}

/// Remove what the backend not chosen left behind, before the chosen one
/// writes: two backends masquerading the same traffic would be harmless,
/// but a stale exemption list in the other one would not follow config
/// changes. A failure is logged and does not stop enforcement.
pub async fn remove_other(chosen: BackendKind, chain: &ChainName) {
    let removal = remove_state(chosen.other(), chain).await;
    for line in removal.removed {
        info!(backend = %chosen, "removed the other backend's state: {line}");
    }
    for line in removal.kept {
        warn!(backend = %chosen, "the other backend's state stays: {line}");
    }
    for failure in removal.failures {
        warn!("cannot remove the other backend's state ({failure})");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for kind in [BackendKind::Iptables, BackendKind::Nftables] {
            assert_eq!(kind.as_str().parse::<BackendKind>(), Ok(kind));
        }
        for mode in [IptablesMode::Auto, IptablesMode::Nft, IptablesMode::Legacy] {
            assert_eq!(mode.as_str().parse::<IptablesMode>(), Ok(mode));
        }
    }
}
