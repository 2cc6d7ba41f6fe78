//! Types the command line fills for other modules, without logic of cli's.
//!
//! [`BackendKind`] and [`IptablesMode`] are the choice of kernel backend,
//! [`ApiSource`] is the ConfigMap the API source reads. Each type parses its
//! own flag text (`FromStr`, [`ApiSource::parse`]), with the messages the
//! command line prints after `invalid value "x" for flag -name: `, so the
//! command line only routes text to them and adds the flag's name.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::apisource::ObjectName;

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

/// The ConfigMap to read through the API, and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSource {
    pub configmap: ObjectName,
    /// `None`: in-cluster credentials, else the default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

impl ApiSource {
    /// From `namespace/name` and a kubeconfig path, empty meaning none. The
    /// error is about the ConfigMap's name, the only part that can fail.
    pub fn parse(configmap: &str, kubeconfig: &str) -> Result<Self, String> {
        Ok(ApiSource {
            configmap: configmap.parse()?,
            kubeconfig: (!kubeconfig.is_empty()).then(|| PathBuf::from(kubeconfig)),
        })
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

    #[test]
    fn api_source_from_flag_text() {
        let source = ApiSource::parse("kube-system/ip-masq-agent", "").unwrap();
        assert_eq!(source.configmap.to_string(), "kube-system/ip-masq-agent");
        assert_eq!(source.kubeconfig, None);
        let source = ApiSource::parse("a/b", "/etc/kubeconfig").unwrap();
        assert_eq!(source.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(
            ApiSource::parse("ip-masq-agent", "/k"),
            Err("must be NAMESPACE/NAME".into())
        );
    }
}
