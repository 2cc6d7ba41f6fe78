//! Everything that can go wrong turning a config file into a [`Config`].
//!
//! The validation messages are upstream's texts byte for byte (operators
//! grep for them); the others are ours and say what was wrong and where.
//!
//! [`Config`]: super::Config

use std::path::PathBuf;

use thiserror::Error;

use super::budget::{Exhausted, MAX_EXPANDED_BYTES, MAX_NODES};
use super::gostr::quote;

/// Why a config file could not be read, decoded or accepted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The OS error is part of the message and deliberately not a
    /// `source()`, so a `{:#}` chain does not print it twice.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {} is {kind}, not a regular file; refusing to read it", path.display())]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "config file {} is larger than {max} bytes (the ConfigMap size limit); refusing to read it",
        path.display()
    )]
    FileTooLarge { path: PathBuf, max: usize },
    #[error("config is {len} bytes, larger than the {max}-byte limit (the ConfigMap size limit)")]
    TooLarge { len: usize, max: usize },
    #[error("config is not valid UTF-8 (at byte {offset}); save it as UTF-8")]
    NotUtf8 { offset: usize },
    #[error(
        "config contains the control character U+{code:04X} at byte {offset}, which YAML does not allow"
    )]
    ControlChar { code: u32, offset: usize },
    #[error("invalid YAML: {message}")]
    Yaml { message: String },
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config nests lists and mappings deeper than {max} levels")]
    TooDeep { max: usize },
    #[error(
        "config holds more than {max_nodes} values or {max_bytes} bytes of text (YAML aliases counted as expanded); refusing it"
    )]
    TooComplex { max_nodes: usize, max_bytes: usize },
    #[error("config must be a mapping of settings (such as `cidrLimit: 64`), got {got}")]
    NotAMapping { got: String },
    /// A field of the wrong type, or a bad `resyncInterval`.
    #[error("config field {}: {message}", quote(.field))]
    Field { field: String, message: String },

    // Upstream's validation texts, verbatim.
    #[error(
        "the daemon can only accept up to {limit} CIDRs (excluding link-local), but got {count} CIDRs (excluding link local)"
    )]
    TooManyCidrs { limit: i64, count: usize },
    #[error("CIDR {} could not be parsed, invalid CIDR address: {cidr}", quote(.cidr))]
    UnparsableCidr { cidr: String },
    #[error(
        "CIDR {} is not aligned to a CIDR block, ip: {} network: {}",
        quote(.cidr),
        quote(.ip),
        quote(.network)
    )]
    MisalignedCidr {
        cidr: String,
        ip: String,
        network: String,
    },
    #[error(
        "CIDR {} is an IPv4-mapped IPv6 range, which means the IPv4 range {ipv4}; write {ipv4} if that is what you mean",
        quote(.cidr)
    )]
    MappedCidr { cidr: String, ipv4: String },
    #[error(
        "ipv6 is not enabled, but ipv6 cidr {cidr} provided. Enable ipv6 using --enable-ipv6 agent flag"
    )]
    Ipv6NotEnabled { cidr: String },

    // Ours: upstream's texts above, for the lists upstream does not have.
    /// A CIDR of `masqueradeCIDRs` or `podCIDRs` failed one of the checks
    /// above; the text is upstream's, prefixed by the key.
    #[error("{key}: {error}")]
    InList {
        key: &'static str,
        error: Box<ConfigError>,
    },
    #[error(
        "CIDR {} is in both nonMasqueradeCIDRs and masqueradeCIDRs; a destination cannot be both masqueraded and not, so remove it from one of them",
        quote(.cidr)
    )]
    CidrInBothLists { cidr: String },
    #[error(
        "CIDR {} is in nonMasqueradeCIDRs of {non_masquerade} and in masqueradeCIDRs of {masquerade}; a destination cannot be both masqueraded and not, so remove it from one of them",
        quote(.cidr)
    )]
    CidrInBothSources {
        cidr: String,
        non_masquerade: String,
        masquerade: String,
    },

    #[error("ConfigMap data key {} {problem}", quote(.key))]
    ConfigMapKey { key: String, problem: String },
}

impl From<Exhausted> for ConfigError {
    fn from(_: Exhausted) -> Self {
        ConfigError::TooComplex {
            max_nodes: MAX_NODES,
            max_bytes: MAX_EXPANDED_BYTES,
        }
    }
}

impl ConfigError {
    /// What a rejected CIDR was probably meant to be, said after upstream's
    /// text (which stays as it is): the network, or the one address.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::InList { error, .. } => error.hint(),
            ConfigError::MisalignedCidr { cidr, ip, network } => {
                let host = if ip.contains(':') { 128 } else { 32 };
                Some(format!(
                    "did you mean {network}? ({cidr} is not a network address; {ip}/{host} is the one address)"
                ))
            }
            ConfigError::UnparsableCidr { cidr } => match cidr.trim().parse::<std::net::IpAddr>() {
                Ok(ip) => Some(format!(
                    "did you mean {ip}/{}? a CIDR needs a prefix length",
                    if ip.is_ipv4() { 32 } else { 128 }
                )),
                Err(_) => None,
            },
            _ => None,
        }
    }

    /// The 1-based line of the config text this error points at, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            ConfigError::Json { line, .. } => Some(*line),
            ConfigError::Yaml { message } => {
                let at = message.find("line ")? + "line ".len();
                let digits: String = message[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            }
            _ => None,
        }
    }

    /// A stable, low-cardinality label for metrics and structured logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } | ConfigError::NotAFile { .. } => "read",
            ConfigError::FileTooLarge { .. } | ConfigError::TooLarge { .. } => "too_large",
            ConfigError::NotUtf8 { .. }
            | ConfigError::ControlChar { .. }
            | ConfigError::Yaml { .. }
            | ConfigError::Json { .. } => "syntax",
            ConfigError::TooDeep { .. } | ConfigError::TooComplex { .. } => "too_complex",
            ConfigError::NotAMapping { .. } | ConfigError::Field { .. } => "type",
            ConfigError::TooManyCidrs { .. }
            | ConfigError::UnparsableCidr { .. }
            | ConfigError::MisalignedCidr { .. }
            | ConfigError::MappedCidr { .. }
            | ConfigError::Ipv6NotEnabled { .. }
            | ConfigError::InList { .. }
            | ConfigError::CidrInBothLists { .. }
            | ConfigError::CidrInBothSources { .. } => "invalid",
            ConfigError::ConfigMapKey { .. } => "configmap",
        }
    }
}
