//! The agent's config: the file upstream's users already have, read with
//! upstream's exact semantics, checked, and handed on as a typed [`Config`].
//!
//! The flow is one way and, but for [`read`], free of I/O:
//! bytes → `decode` (JSON or YAML 1.1 into an untyped tree, within size,
//! depth and alias budgets) → `bind` (Go `encoding/json` rules onto the
//! defaults) → `validate` (upstream's checks and messages, in upstream's
//! order) → [`Config`]. Where upstream is defective (a zero resync interval
//! spins; no size or alias limits) we fix it and say so in
//! [`Loaded::warnings`] or an error. The contract is COMPAT.md §1-3; our
//! keys `masqueradeCIDRs` and `podCIDRs` are read by the same rules, and a
//! config without them decodes exactly as upstream's does.

use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};

mod bind;
mod budget;
mod cidr;
mod configmap;
mod decode;
pub mod duration;
mod error;
pub(crate) mod gostr;
mod json;
mod merge;
mod validate;
mod value;
mod yaml;
mod yaml11;

#[cfg(test)]
mod tests;

pub use duration::DurationError;
pub use error::ConfigError;
pub use merge::{Fragment, Merged, Origins, merge, parse_fragment};

/// Largest config accepted: the ConfigMap size limit (1 MiB).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A validated agent config. CIDRs are parsed once, here, and never again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Config order, duplicates kept, IPv4 and IPv6 mixed.
    pub non_masquerade_cidrs: Vec<IpNet>,
    /// `masqueradeCIDRs` (ours): destinations masqueraded even inside a
    /// non-masquerade range, by longest prefix (see `policy`). Config order,
    /// duplicates kept; never equal to a `non_masquerade_cidrs` network.
    /// Empty by default.
    pub masquerade_cidrs: Vec<IpNet>,
    /// `podCIDRs` (ours): when it holds ranges of a family, only sources
    /// inside them are masqueraded, and destinations inside them are not
    /// (see `policy`). Config order, duplicates kept. Empty by default.
    pub pod_cidrs: Vec<IpNet>,
    pub cidr_limit: i64,
    pub masq_link_local: bool,
    pub masq_link_local_ipv6: bool,
    /// Already floored to the 1 s minimum.
    pub resync_interval: Duration,
}

/// Flags that change how a config file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// `--nomasq-all-reserved-ranges`: the default list is every reserved
    /// IPv4 range instead of RFC 1918 only.
    pub all_reserved_ranges: bool,
    /// `--enable-ipv6`: IPv6 CIDRs are allowed.
    pub enable_ipv6: bool,
}

/// Where a loaded config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Read from the config file.
    File,
    /// No file: the defaults (upstream behaviour, not an error).
    Absent,
}

/// A config accepted for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub config: Config,
    pub source: Source,
    /// Things we corrected rather than rejected, worth logging.
    pub warnings: Vec<String>,
}

/// The default non-masquerade ranges, as (address, prefix).
const RFC1918: [([u8; 4], u8); 3] = [
    ([10, 0, 0, 0], 8),     // RFC 1918
    ([172, 16, 0, 0], 12),  // RFC 1918
    ([192, 168, 0, 0], 16), // RFC 1918
];
const OTHER_RESERVED: [([u8; 4], u8); 8] = [
    ([100, 64, 0, 0], 10),   // RFC 6598 shared address space
    ([192, 0, 0, 0], 24),    // RFC 6890 IETF protocol assignments
    ([192, 0, 2, 0], 24),    // RFC 5737 TEST-NET-1
    ([192, 88, 99, 0], 24),  // RFC 7526 6to4 relay anycast
    ([198, 18, 0, 0], 15),   // RFC 6815 benchmarking
    ([198, 51, 100, 0], 24), // RFC 5737 TEST-NET-2
    ([203, 0, 113, 0], 24),  // RFC 5737 TEST-NET-3
    ([240, 0, 0, 0], 4),     // RFC 5735 former class E
];

const DEFAULT_CIDR_LIMIT: i64 = 64;
const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

impl Config {
    /// Upstream's defaults, used when there is no file and as the base a
    /// file's keys are bound onto.
    pub fn defaults(all_reserved_ranges: bool) -> Config {
        let extra: &[([u8; 4], u8)] = if all_reserved_ranges {
            &OTHER_RESERVED
        } else {
            &[]
        };
        let non_masquerade_cidrs = RFC1918
            .iter()
            .chain(extra)
            .filter_map(|&(addr, prefix)| Ipv4Net::new(addr.into(), prefix).ok())
            .map(IpNet::V4)
            .collect();
        Config {
            non_masquerade_cidrs,
            masquerade_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            cidr_limit: DEFAULT_CIDR_LIMIT,
            masq_link_local: false,
            masq_link_local_ipv6: false,
            resync_interval: DEFAULT_RESYNC,
        }
    }

    /// Compact JSON with upstream's key names and order, the duration in
    /// Go's `Duration.String` form. Our keys follow upstream's, each only
    /// when non-empty, so a config without them prints (and fingerprints)
    /// exactly as before they existed.
    pub fn to_json(&self) -> String {
        let list = |nets: &[IpNet]| {
            let quoted: Vec<String> = nets.iter().map(|net| format!("\"{net}\"")).collect();
            quoted.join(",")
        };
        let mut ours = String::new();
        for (key, nets) in [
            ("masqueradeCIDRs", &self.masquerade_cidrs),
            ("podCIDRs", &self.pod_cidrs),
        ] {
            if !nets.is_empty() {
                ours.push_str(&format!(",\"{key}\":[{}]", list(nets)));
            }
        }
        let nanos = i64::try_from(self.resync_interval.as_nanos()).unwrap_or(i64::MAX);
        format!(
            "{{\"nonMasqueradeCIDRs\":[{}],\"cidrLimit\":{},\"masqLinkLocal\":{},\"masqLinkLocalIPv6\":{},\"resyncInterval\":\"{}\"{ours}}}",
            list(&self.non_masquerade_cidrs),
            self.cidr_limit,
            self.masq_link_local,
            self.masq_link_local_ipv6,
            duration::format(nanos)
        )
    }

    /// A short, stable identifier of this config and of `rule_flags` (the
    /// rule-changing flags that differ from their defaults, in a fixed
    /// form; see `plan::fingerprint`) for logs and metrics: FNV-1a 64 of
    /// [`Config::to_json`], then a space and the flags when there are any,
    /// as 16 hex digits. Without such flags it is the config's alone.
    pub fn fingerprint_with_flags(&self, rule_flags: &str) -> String {
        let mut text = self.to_json();
        if !rule_flags.is_empty() {
            text.push(' ');
            text.push_str(rule_flags);
        }
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// The defaults as the binder's starting point (CIDRs as text).
fn raw_defaults(all_reserved_ranges: bool) -> bind::Raw {
    let defaults = Config::defaults(all_reserved_ranges);
    bind::Raw {
        cidrs: defaults
            .non_masquerade_cidrs
            .iter()
            .map(ToString::to_string)
            .collect(),
        masquerade_cidrs: Vec::new(),
        pod_cidrs: Vec::new(),
        cidr_limit: defaults.cidr_limit,
        masq_link_local: defaults.masq_link_local,
        masq_link_local_ipv6: defaults.masq_link_local_ipv6,
        resync_nanos: i64::try_from(defaults.resync_interval.as_nanos()).unwrap_or(i64::MAX),
    }
}

/// Pure: the bytes of a config file to a validated config. No I/O.
pub fn parse(bytes: &[u8], opts: &LoadOptions) -> Result<Loaded, ConfigError> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge {
            len: bytes.len(),
            max: MAX_CONFIG_BYTES,
        });
    }
    let tree = decode::decode(bytes)?;
    let raw = bind::bind(&tree, raw_defaults(opts.all_reserved_ranges))?;
    let (config, mut warnings) = validate::validate(raw, opts)?;
    warnings.splice(0..0, bind::unknown_keys(&tree));
    Ok(Loaded {
        config,
        source: Source::File,
        warnings,
    })
}

/// Read the config file: `None` if it does not exist (a dangling symlink
/// included). A file over [`MAX_CONFIG_BYTES`] is refused after reading at
/// most one byte more than that.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, ConfigError> {
    let read_error = |error| ConfigError::Read {
        path: path.to_owned(),
        error,
    };
    // Non-blocking, so a FIFO (or a device) put where the config belongs
    // cannot stall the agent in open(); anything but a regular file is
    // refused before it is read.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_error(e)),
    };
    let kind = file.metadata().map_err(read_error)?.file_type();
    if !kind.is_file() {
        return Err(ConfigError::NotAFile {
            path: path.to_owned(),
            kind: describe_file_type(kind),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::FileTooLarge {
            path: path.to_owned(),
            max: MAX_CONFIG_BYTES,
        });
    }
    Ok(Some(bytes))
}

/// Read a config from a stream (`check -` reads stdin), refused past
/// [`MAX_CONFIG_BYTES`] as a file is, after reading at most one byte more.
pub fn read_stream(reader: impl std::io::Read, name: &str) -> Result<Vec<u8>, ConfigError> {
    let mut bytes = Vec::new();
    reader
        .take(MAX_CONFIG_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| ConfigError::Read {
            path: name.into(),
            error,
        })?;
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::FileTooLarge {
            path: name.into(),
            max: MAX_CONFIG_BYTES,
        });
    }
    Ok(bytes)
}

fn describe_file_type(kind: std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

impl Loaded {
    /// No config at all (no file, no ConfigMap or key): the defaults.
    pub fn absent(opts: &LoadOptions) -> Loaded {
        Loaded {
            config: Config::defaults(opts.all_reserved_ranges),
            source: Source::Absent,
            warnings: Vec::new(),
        }
    }
}

/// For `ip-masq-agent check FILE`: if `bytes` are a Kubernetes ConfigMap
/// manifest (a YAML or JSON object with `kind: ConfigMap`, possibly one of
/// several YAML documents), the bytes of `data[key]`, or an error naming the
/// key if it is missing; `None` for anything else (a bare config file).
pub fn configmap_data(bytes: &[u8], key: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    configmap::data(bytes, key)
}

/// For `check` of a ConfigMap manifest: a warning when it is not the
/// ConfigMap the manifests mount (`kube-system/ip-masq-agent`), since
/// applying it would change nothing on the nodes.
pub fn configmap_warnings(bytes: &[u8]) -> Vec<String> {
    configmap::warnings(bytes)
}

/// For an error in the config held by a ConfigMap manifest's `data.<key>`
/// (whose positions count from the start of that text): the line of the
/// manifest file it points at, when the text is a literal block (`key: |`).
pub fn manifest_line(file: &[u8], key: &str, data: &[u8], error: &ConfigError) -> Option<usize> {
    file_line(manifest_data_line(file, key, data)?, error)
}

/// The manifest file's line where the text of `data.<key>` (`data`) starts,
/// when it is a literal block whose lines are the file's.
pub fn manifest_data_line(file: &[u8], key: &str, data: &[u8]) -> Option<usize> {
    configmap::data_start_line(file, key, data)
}

/// The file line of `error`'s position, for a text starting at file line `start`.
pub fn file_line(start: usize, error: &ConfigError) -> Option<usize> {
    Some(start + error.line()? - 1)
}
