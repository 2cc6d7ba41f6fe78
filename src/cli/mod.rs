//! The command line, parsed with the grammar of Go's `flag` package.
//!
//! Clusters swap the upstream image for ours and keep their DaemonSet
//! arguments, so this module accepts exactly what Go's `flag` accepts and
//! rejects what it rejects, with Go's messages: `-name` and `--name` alike,
//! `-name=value` and `-name value` (booleans only take `=value`), parsing
//! stops at the first non-flag argument or after `--`. It owns the flag table
//! (upstream's flags, the klog flags upstream registers, and ours), the usage
//! text, the choice of subcommand, and the check of every value. What it
//! returns is typed and validated; nothing downstream parses a flag again.
//! Errors carry their exit code: help 0, usage 2 (as Go's `flag` exits),
//! a well-formed but unusable value 1 (a startup error, as upstream).

mod strconv;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::apisource::{ConfigMapKey, ObjectName};
use crate::logging::LogFormat;
use crate::plan::{ChainName, PortRange};

pub use strconv::quote as go_quote;

/// Default listen address of the metrics and health endpoints: all addresses,
/// since the pod shares the node's network.
pub const DEFAULT_METRICS_ADDRESS: &str = ":9557";
/// The ConfigMap key upstream's manifests mount as the config file's name.
pub const DEFAULT_CONFIGMAP_KEY: &str = "config";
use strconv::{atoi, parse_bool, parse_int, parse_uint, quote};

/// The program name Go's usage text starts with.
const PROGRAM: &str = "ip-masq-agent";

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

/// Validated settings from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub masq_chain: ChainName,
    pub nomasq_all_reserved_ranges: bool,
    pub enable_ipv6: bool,
    pub random_fully: bool,
    /// Empty: no explicit source ports.
    pub to_ports: Vec<PortRange>,
    pub config: PathBuf,
    pub log_format: LogFormat,
    /// klog's `-v`, negative values as 0 and large ones as 255.
    pub verbosity: u8,
    pub iptables_mode: IptablesMode,
    pub backend: BackendKind,
    /// Where to serve metrics and probes; `None` when disabled (empty flag).
    pub metrics_address: Option<SocketAddr>,
    /// `--configmap`: read the config through the Kubernetes API; `None`:
    /// from the `config` file.
    pub api_source: Option<ApiSource>,
    /// The ConfigMap key holding the config (`--configmap`, and `check` of
    /// a ConfigMap manifest).
    pub configmap_key: ConfigMapKey,
}

/// The ConfigMap to read through the API, and how to reach the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSource {
    pub configmap: ObjectName,
    /// `None`: in-cluster credentials, else the default kubeconfig.
    pub kubeconfig: Option<PathBuf>,
}

/// What the invocation asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// No subcommand: run the agent.
    Run,
    /// Validate a config file (`None`: the `--config` path) and exit.
    Check { file: Option<PathBuf> },
    /// Print the rules the config would produce and exit.
    Render,
    /// Apply the rules once and exit.
    Sync,
    /// Remove this agent's rules and exit.
    Cleanup,
    /// Print the version and exit (`version` or `--version`).
    Version,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub options: Options,
    pub command: Command,
    /// Every defined flag, sorted by name (like Go's `flag.VisitAll`), with
    /// its effective value as Go would print it, for logging
    /// `FLAG: --name="value"` at start (quote with [`go_quote`]).
    pub flags: Vec<(String, String)>,
}

/// Why the command line was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// `-h`, `-help` or `--help`: print this usage text to stderr, exit 0.
    Help(String),
    /// Not a command line Go's `flag` (or our subcommand grammar) accepts:
    /// print the message, then the usage text, exit 2.
    Usage { message: String, usage: String },
    /// Well-formed, but the value cannot be used: print it, exit 1.
    Invalid(String),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Help(_) => 0,
            CliError::Usage { .. } => 2,
            CliError::Invalid(_) => 1,
        }
    }

    fn usage(message: String) -> Self {
        CliError::Usage {
            message,
            usage: usage(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Help(text) => f.write_str(text),
            CliError::Usage { message, .. } => f.write_str(message),
            CliError::Invalid(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for CliError {}

/// Every flag the agent defines. Upstream's klog flags are accepted so that
/// existing DaemonSets keep working; only `v` has an effect, the others are
/// still checked as klog checks them, so what upstream refuses we refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flag {
    AddDirHeader,
    AlsoLogToStderr,
    Backend,
    Config,
    Configmap,
    ConfigmapKey,
    EnableIpv6,
    IptablesMode,
    Kubeconfig,
    LegacyStderrThresholdBehavior,
    LogFormat,
    LogBacktraceAt,
    LogDir,
    LogFile,
    LogFileMaxSize,
    LogToStderr,
    MasqChain,
    MetricsAddress,
    NomasqAllReservedRanges,
    OneOutput,
    RandomFully,
    SkipHeaders,
    SkipLogHeaders,
    StderrThreshold,
    ToPorts,
    V,
    Version,
    Vmodule,
}

/// How Go's `flag` package treats a flag's value: whether it needs one, what
/// usage calls its type, and how its default is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    String,
    Uint,
    /// A custom `flag.Value` (klog's levels, our enums).
    Value,
}

impl Flag {
    fn kind(self) -> Kind {
        match self {
            Flag::AddDirHeader
            | Flag::AlsoLogToStderr
            | Flag::EnableIpv6
            | Flag::LegacyStderrThresholdBehavior
            | Flag::LogToStderr
            | Flag::NomasqAllReservedRanges
            | Flag::OneOutput
            | Flag::RandomFully
            | Flag::SkipHeaders
            | Flag::SkipLogHeaders
            | Flag::Version => Kind::Bool,
            Flag::Config
            | Flag::Configmap
            | Flag::ConfigmapKey
            | Flag::Kubeconfig
            | Flag::LogDir
            | Flag::LogFile
            | Flag::MasqChain
            | Flag::MetricsAddress
            | Flag::ToPorts => Kind::String,
            Flag::LogFileMaxSize => Kind::Uint,
            Flag::Backend
            | Flag::IptablesMode
            | Flag::LogFormat
            | Flag::LogBacktraceAt
            | Flag::StderrThreshold
            | Flag::V
            | Flag::Vmodule => Kind::Value,
        }
    }

    /// What the value's type prints for its zero value; Go's usage shows a
    /// default only when it differs from this.
    fn zero_text(self) -> &'static str {
        match self {
            Flag::LogBacktraceAt => ":0",
            _ => match self.kind() {
                Kind::Bool => "false",
                Kind::Uint => "0",
                Kind::String => "",
                Kind::Value if matches!(self, Flag::V | Flag::StderrThreshold) => "0",
                Kind::Value => "",
            },
        }
    }
}

struct FlagSpec {
    flag: Flag,
    name: &'static str,
    /// As in Go, the first back-quoted word names the value in usage.
    help: &'static str,
}

const KLOG_IGNORED: &str = "klog flag, accepted for compatibility; no effect";

/// Sorted by name (byte order), which is the order Go prints and visits.
const FLAGS: [FlagSpec; 28] = [
    FlagSpec {
        flag: Flag::AddDirHeader,
        name: "add_dir_header",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::AlsoLogToStderr,
        name: "alsologtostderr",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::Backend,
        name: "backend",
        help: "Kernel `backend`: iptables (the upstream agent's rules) or nftables \
               (a native table with the list in an interval set)",
    },
    FlagSpec {
        flag: Flag::Config,
        name: "config",
        help: "Path of the config `file` (YAML or JSON); if it is absent, defaults apply",
    },
    FlagSpec {
        flag: Flag::Configmap,
        name: "configmap",
        help: "Read the config from this ConfigMap through the Kubernetes API \
               (`namespace/name`) instead of --config; empty: use the file",
    },
    FlagSpec {
        flag: Flag::ConfigmapKey,
        name: "configmap-key",
        help: "The `key` in the ConfigMap's data that holds the config",
    },
    FlagSpec {
        flag: Flag::EnableIpv6,
        name: "enable-ipv6",
        help: "Also program IPv6 rules (ip6tables) and accept IPv6 CIDRs in the config",
    },
    FlagSpec {
        flag: Flag::IptablesMode,
        name: "iptables-mode",
        help: "iptables `mode`: auto (use what the node uses), nft or legacy",
    },
    FlagSpec {
        flag: Flag::Kubeconfig,
        name: "kubeconfig",
        help: "Kubeconfig `file` for --configmap; empty: the in-cluster service account, \
               else $KUBECONFIG or ~/.kube/config",
    },
    FlagSpec {
        flag: Flag::LegacyStderrThresholdBehavior,
        name: "legacy_stderr_threshold_behavior",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::LogFormat,
        name: "log-format",
        help: "Log line `format`: text or json",
    },
    FlagSpec {
        flag: Flag::LogBacktraceAt,
        name: "log_backtrace_at",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::LogDir,
        name: "log_dir",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::LogFile,
        name: "log_file",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::LogFileMaxSize,
        name: "log_file_max_size",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::LogToStderr,
        name: "logtostderr",
        help: "klog flag, accepted for compatibility; logs always go to standard error",
    },
    FlagSpec {
        flag: Flag::MasqChain,
        name: "masq-chain",
        help: "Name of the nat `chain` that holds the masquerade rules",
    },
    FlagSpec {
        flag: Flag::MetricsAddress,
        name: "metrics-address",
        help: "Listen `address` for /metrics, /healthz and /readyz (HOST:PORT, or :PORT for all addresses); empty disables",
    },
    FlagSpec {
        flag: Flag::NomasqAllReservedRanges,
        name: "nomasq-all-reserved-ranges",
        help: "Default the non-masquerade list to all reserved IPv4 ranges, not only RFC 1918",
    },
    FlagSpec {
        flag: Flag::OneOutput,
        name: "one_output",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::RandomFully,
        name: "random-fully",
        help: "Add --random-fully to MASQUERADE rules when iptables supports it (1.6.2 and later)",
    },
    FlagSpec {
        flag: Flag::SkipHeaders,
        name: "skip_headers",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::SkipLogHeaders,
        name: "skip_log_headers",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::StderrThreshold,
        name: "stderrthreshold",
        help: KLOG_IGNORED,
    },
    FlagSpec {
        flag: Flag::ToPorts,
        name: "to-ports",
        help: "Source port `ranges` for masqueraded tcp, udp and sctp, comma-separated \
               (e.g. 1024-29999,32768-65535); empty leaves the choice to the kernel",
    },
    FlagSpec {
        flag: Flag::V,
        name: "v",
        help: "Log verbosity `level`; higher logs more detail",
    },
    FlagSpec {
        flag: Flag::Version,
        name: "version",
        help: "Print the version and exit (same as the version command)",
    },
    FlagSpec {
        flag: Flag::Vmodule,
        name: "vmodule",
        help: KLOG_IGNORED,
    },
];

fn lookup(name: &str) -> Option<&'static FlagSpec> {
    FLAGS.iter().find(|spec| spec.name == name)
}

/// Flag values as set so far, each held the way its Go type holds it.
#[derive(Debug, Clone)]
struct Values {
    add_dir_header: bool,
    alsologtostderr: bool,
    backend: BackendKind,
    config: String,
    configmap: String,
    configmap_key: String,
    enable_ipv6: bool,
    iptables_mode: IptablesMode,
    kubeconfig: String,
    legacy_stderr_threshold_behavior: bool,
    log_format: LogFormat,
    /// klog's trace location: file and line, ("", 0) when unset.
    log_backtrace_at: (String, i64),
    log_dir: String,
    log_file: String,
    log_file_max_size: u64,
    logtostderr: bool,
    masq_chain: String,
    metrics_address: String,
    nomasq_all_reserved_ranges: bool,
    one_output: bool,
    random_fully: bool,
    skip_headers: bool,
    skip_log_headers: bool,
    /// klog severity: 0 INFO, 1 WARNING, 2 ERROR, 3 FATAL (any int32 goes).
    stderrthreshold: i32,
    to_ports: String,
    v: i32,
    version: bool,
    /// Patterns with a non-zero level, in the order given.
    vmodule: Vec<(String, i32)>,
}

impl Default for Values {
    fn default() -> Self {
        Values {
            add_dir_header: false,
            alsologtostderr: false,
            backend: BackendKind::Iptables,
            config: "/etc/config/ip-masq-agent".into(),
            configmap: String::new(),
            configmap_key: DEFAULT_CONFIGMAP_KEY.into(),
            enable_ipv6: false,
            iptables_mode: IptablesMode::Auto,
            kubeconfig: String::new(),
            legacy_stderr_threshold_behavior: true,
            log_format: LogFormat::Text,
            log_backtrace_at: (String::new(), 0),
            log_dir: String::new(),
            log_file: String::new(),
            log_file_max_size: 1800,
            logtostderr: true,
            masq_chain: "IP-MASQ-AGENT".into(),
            metrics_address: DEFAULT_METRICS_ADDRESS.into(),
            nomasq_all_reserved_ranges: false,
            one_output: false,
            random_fully: true,
            skip_headers: false,
            skip_log_headers: false,
            stderrthreshold: 2,
            to_ports: String::new(),
            v: 0,
            version: false,
            vmodule: Vec::new(),
        }
    }
}

impl Values {
    /// Go's `Value.Set`. The error text is what Go prints after
    /// `invalid value "x" for flag -name: `.
    fn set(&mut self, flag: Flag, value: &str) -> Result<(), String> {
        let bool_value = || parse_bool(value).ok_or_else(|| "parse error".to_owned());
        // klog's Level and severity hand strconv's error through unchanged;
        // a bit size of 32 keeps the value within i32, so the cast is exact.
        let int32 = || {
            parse_int(value, 10, 32)
                .map(|v| v as i32)
                .map_err(|e| e.to_string())
        };
        match flag {
            Flag::AddDirHeader => self.add_dir_header = bool_value()?,
            Flag::AlsoLogToStderr => self.alsologtostderr = bool_value()?,
            Flag::EnableIpv6 => self.enable_ipv6 = bool_value()?,
            Flag::LegacyStderrThresholdBehavior => {
                self.legacy_stderr_threshold_behavior = bool_value()?
            }
            Flag::LogToStderr => self.logtostderr = bool_value()?,
            Flag::NomasqAllReservedRanges => self.nomasq_all_reserved_ranges = bool_value()?,
            Flag::OneOutput => self.one_output = bool_value()?,
            Flag::RandomFully => self.random_fully = bool_value()?,
            Flag::SkipHeaders => self.skip_headers = bool_value()?,
            Flag::SkipLogHeaders => self.skip_log_headers = bool_value()?,
            Flag::Version => self.version = bool_value()?,
            Flag::Config => self.config = value.to_owned(),
            Flag::Configmap => self.configmap = value.to_owned(),
            Flag::ConfigmapKey => self.configmap_key = value.to_owned(),
            Flag::Kubeconfig => self.kubeconfig = value.to_owned(),
            Flag::LogDir => self.log_dir = value.to_owned(),
            Flag::LogFile => self.log_file = value.to_owned(),
            Flag::MasqChain => self.masq_chain = value.to_owned(),
            Flag::MetricsAddress => self.metrics_address = value.to_owned(),
            Flag::ToPorts => self.to_ports = value.to_owned(),
            // Go's uint64 flag: base 0, strconv detail hidden.
            Flag::LogFileMaxSize => {
                self.log_file_max_size =
                    parse_uint(value, 0, 64).map_err(|e| e.flag_text().to_owned())?
            }
            Flag::V => self.v = int32()?,
            Flag::StderrThreshold => {
                self.stderrthreshold = match severity_by_name(value) {
                    Some(level) => level,
                    None => int32()?,
                }
            }
            Flag::Vmodule => self.vmodule = parse_vmodule(value)?,
            Flag::LogBacktraceAt => self.log_backtrace_at = parse_backtrace_at(value)?,
            Flag::LogFormat => self.log_format = value.parse()?,
            Flag::Backend => {
                self.backend = match value {
                    "iptables" => BackendKind::Iptables,
                    "nftables" => BackendKind::Nftables,
                    _ => return Err("must be iptables or nftables".into()),
                }
            }
            Flag::IptablesMode => {
                self.iptables_mode = match value {
                    "auto" => IptablesMode::Auto,
                    "nft" => IptablesMode::Nft,
                    "legacy" => IptablesMode::Legacy,
                    _ => return Err("must be auto, nft or legacy".into()),
                }
            }
        }
        Ok(())
    }

    /// Go's `Value.String`: the effective value as Go logs it.
    fn text(&self, flag: Flag) -> String {
        let b = |v: bool| if v { "true" } else { "false" }.to_owned();
        match flag {
            Flag::AddDirHeader => b(self.add_dir_header),
            Flag::AlsoLogToStderr => b(self.alsologtostderr),
            Flag::EnableIpv6 => b(self.enable_ipv6),
            Flag::LegacyStderrThresholdBehavior => b(self.legacy_stderr_threshold_behavior),
            Flag::LogToStderr => b(self.logtostderr),
            Flag::NomasqAllReservedRanges => b(self.nomasq_all_reserved_ranges),
            Flag::OneOutput => b(self.one_output),
            Flag::RandomFully => b(self.random_fully),
            Flag::SkipHeaders => b(self.skip_headers),
            Flag::SkipLogHeaders => b(self.skip_log_headers),
            Flag::Version => b(self.version),
            Flag::Config => self.config.clone(),
            Flag::Configmap => self.configmap.clone(),
            Flag::ConfigmapKey => self.configmap_key.clone(),
            Flag::Kubeconfig => self.kubeconfig.clone(),
            Flag::LogDir => self.log_dir.clone(),
            Flag::LogFile => self.log_file.clone(),
            Flag::MasqChain => self.masq_chain.clone(),
            Flag::MetricsAddress => self.metrics_address.clone(),
            Flag::ToPorts => self.to_ports.clone(),
            Flag::LogFileMaxSize => self.log_file_max_size.to_string(),
            Flag::V => self.v.to_string(),
            Flag::StderrThreshold => self.stderrthreshold.to_string(),
            Flag::Vmodule => self
                .vmodule
                .iter()
                .map(|(pattern, level)| format!("{pattern}={level}"))
                .collect::<Vec<_>>()
                .join(","),
            Flag::LogBacktraceAt => {
                format!("{}:{}", self.log_backtrace_at.0, self.log_backtrace_at.1)
            }
            Flag::LogFormat => self.log_format.as_str().to_owned(),
            Flag::IptablesMode => self.iptables_mode.as_str().to_owned(),
            Flag::Backend => self.backend.as_str().to_owned(),
        }
    }
}

/// klog's severity names, matched after Go's `strings.ToUpper`.
fn severity_by_name(value: &str) -> Option<i32> {
    // Go's ToUpper maps each character alone (simple case mapping), so
    // keep characters whose full uppercase is more than one character.
    let upper: String = value
        .chars()
        .map(|c| {
            let mut up = c.to_uppercase();
            match (up.next(), up.next()) {
                (Some(u), None) => u,
                _ => c,
            }
        })
        .collect();
    match upper.as_str() {
        "INFO" => Some(0),
        "WARNING" => Some(1),
        "ERROR" => Some(2),
        "FATAL" => Some(3),
        _ => None,
    }
}

const VMODULE_SYNTAX: &str = "syntax error: expect comma-separated list of filename=N";

/// klog's `-vmodule` grammar: `pattern=N,...`, N a non-negative int32;
/// empty items are skipped and level 0 entries dropped.
fn parse_vmodule(value: &str) -> Result<Vec<(String, i32)>, String> {
    let mut filter = Vec::new();
    for item in value.split(',').filter(|item| !item.is_empty()) {
        let parts: Vec<&str> = item.split('=').collect();
        let [pattern, level] = parts[..] else {
            return Err(VMODULE_SYNTAX.into());
        };
        if pattern.is_empty() || level.is_empty() {
            return Err(VMODULE_SYNTAX.into());
        }
        // Bit size 32: the casts below are exact.
        let level = parse_int(level, 10, 32).map_err(|_| VMODULE_SYNTAX.to_owned())?;
        if level < 0 {
            return Err("negative value for vmodule level".into());
        }
        if level > 0 {
            filter.push((pattern.to_owned(), level as i32));
        }
    }
    Ok(filter)
}

const BACKTRACE_SYNTAX: &str = "syntax error: expect file.go:234";

/// klog's `-log_backtrace_at` grammar: `file.ext:N` with N > 0, or empty.
fn parse_backtrace_at(value: &str) -> Result<(String, i64), String> {
    if value.is_empty() {
        return Ok((String::new(), 0));
    }
    let parts: Vec<&str> = value.split(':').collect();
    let [file, line] = parts[..] else {
        return Err(BACKTRACE_SYNTAX.into());
    };
    if !file.contains('.') {
        return Err(BACKTRACE_SYNTAX.into());
    }
    let line = atoi(line).map_err(|_| BACKTRACE_SYNTAX.to_owned())?;
    if line <= 0 {
        return Err("negative or zero value for level".into());
    }
    Ok((file.to_owned(), line))
}

/// Parse flags from the front of `args` as Go's `FlagSet.Parse` does and
/// return the arguments after them: parsing stops before the first
/// non-flag argument (one not starting with `-`, or `-` alone) and after
/// `--`, which is consumed.
fn parse_flags<'a>(values: &mut Values, mut args: &'a [String]) -> Result<&'a [String], CliError> {
    loop {
        let Some((arg, rest)) = args.split_first() else {
            return Ok(args);
        };
        let bytes = arg.as_bytes();
        if bytes.len() < 2 || bytes[0] != b'-' {
            return Ok(args);
        }
        let minuses = if bytes[1] == b'-' {
            if bytes.len() == 2 {
                return Ok(rest);
            }
            2
        } else {
            1
        };
        // Both cut points below are at ASCII bytes, so slicing is safe
        // whatever the rest of the argument holds.
        let body = &arg[minuses..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(CliError::usage(format!("bad flag syntax: {arg}")));
        }
        args = rest;
        // The name is never empty, so an '=' is searched from its 2nd byte.
        let (name, inline_value) = match body.as_bytes()[1..].iter().position(|&b| b == b'=') {
            Some(i) => (&body[..=i], Some(&body[i + 2..])),
            None => (body, None),
        };
        let Some(spec) = lookup(name) else {
            if name == "help" || name == "h" {
                return Err(CliError::Help(usage()));
            }
            return Err(CliError::usage(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        if spec.flag.kind() == Kind::Bool {
            // A boolean never takes the next argument: `-x false` would
            // change meaning if a file were named "false".
            let value = inline_value.unwrap_or("true");
            values.set(spec.flag, value).map_err(|e| {
                CliError::usage(format!(
                    "invalid boolean value {} for -{name}: {e}",
                    quote(value)
                ))
            })?;
            continue;
        }
        let value = match inline_value {
            Some(value) => value,
            None => match args.split_first() {
                // Taken whatever it looks like, even "-x", as Go does.
                Some((next, rest)) => {
                    args = rest;
                    next.as_str()
                }
                None => {
                    return Err(CliError::usage(format!("flag needs an argument: -{name}")));
                }
            },
        };
        values.set(spec.flag, value).map_err(|e| {
            CliError::usage(format!(
                "invalid value {} for flag -{name}: {e}",
                quote(value)
            ))
        })?;
    }
}

/// Subcommand names, in the order usage lists them.
const COMMANDS: [&str; 5] = ["check", "render", "sync", "cleanup", "version"];

/// Pick the command from its name and the positional arguments after the
/// command's own flags.
fn select_command(word: &str, positionals: &[String]) -> Result<Command, CliError> {
    let takes_none = |command: Command| match positionals.first() {
        None => Ok(command),
        Some(extra) => Err(CliError::usage(format!(
            "command {} takes no arguments, got {}{}",
            quote(word),
            quote(extra),
            flag_hint(extra)
        ))),
    };
    match word {
        "check" => match positionals {
            [] => Ok(Command::Check { file: None }),
            [file] => Ok(Command::Check {
                file: Some(PathBuf::from(file)),
            }),
            [_, extra, ..] => Err(CliError::usage(format!(
                "command \"check\" takes at most one FILE, got another argument {}{}",
                quote(extra),
                flag_hint(extra)
            ))),
        },
        "render" => takes_none(Command::Render),
        "sync" => takes_none(Command::Sync),
        "cleanup" => takes_none(Command::Cleanup),
        "version" => takes_none(Command::Version),
        _ => Err(unknown_command(word)),
    }
}

fn unknown_command(word: &str) -> CliError {
    CliError::usage(format!(
        "unknown command {}; commands are: {}",
        quote(word),
        COMMANDS.join(", ")
    ))
}

/// Flag parsing stops at the first positional argument, so a flag after
/// one arrives here as an argument; say so.
fn flag_hint(arg: &str) -> &'static str {
    if arg.starts_with('-') && arg.len() > 1 {
        " (flags go before the command's arguments)"
    } else {
        ""
    }
}

/// Parse the command line, without the program name.
///
/// Flags come first; the first non-flag argument names the subcommand
/// (none: run the agent); flags may follow it again, then its arguments.
pub fn parse<I, S>(args: I) -> Result<Invocation, CliError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let args: Vec<String> = args.into_iter().map(Into::into).collect();
    let mut values = Values::default();

    let rest = parse_flags(&mut values, &args)?;
    let mut command = match rest.split_first() {
        None => Command::Run,
        Some((word, after)) => {
            // Name the unknown command before complaining about its flags.
            if !COMMANDS.contains(&word.as_str()) {
                return Err(unknown_command(word));
            }
            let positionals = parse_flags(&mut values, after)?;
            select_command(word, positionals)?
        }
    };
    // Like a version flag in Go programs: print and exit before anything.
    if values.version {
        command = Command::Version;
    }

    let options = options(&values)?;
    let flags = FLAGS
        .iter()
        .map(|spec| (spec.name.to_owned(), values.text(spec.flag)))
        .collect();
    Ok(Invocation {
        options,
        command,
        flags,
    })
}

/// Turn flag values into typed options; what fails here is a startup error.
fn options(values: &Values) -> Result<Options, CliError> {
    let masq_chain = values
        .masq_chain
        .parse::<ChainName>()
        .map_err(|e| CliError::Invalid(format!("invalid value for --masq-chain: {e}")))?;
    let to_ports = parse_to_ports(&values.to_ports).map_err(|e| {
        CliError::Invalid(format!(
            "invalid value {} for --to-ports: {e}",
            quote(&values.to_ports)
        ))
    })?;
    let metrics_address = if values.metrics_address.is_empty() {
        None
    } else {
        Some(
            crate::metrics::parse_address(&values.metrics_address).map_err(|e| {
                CliError::Invalid(format!("invalid value for --metrics-address: {e}"))
            })?,
        )
    };
    // An empty path would read as "no file" and silently mean defaults.
    if values.config.is_empty() {
        return Err(CliError::Invalid(
            "invalid value for --config: the path must not be empty".into(),
        ));
    }
    let configmap_key = values.configmap_key.parse::<ConfigMapKey>().map_err(|e| {
        CliError::Invalid(format!(
            "invalid value {} for --configmap-key: {e}",
            quote(&values.configmap_key)
        ))
    })?;
    let api_source = if values.configmap.is_empty() {
        None
    } else {
        let configmap = values.configmap.parse::<ObjectName>().map_err(|e| {
            CliError::Invalid(format!(
                "invalid value {} for --configmap: {e}",
                quote(&values.configmap)
            ))
        })?;
        let kubeconfig = (!values.kubeconfig.is_empty()).then(|| PathBuf::from(&values.kubeconfig));
        Some(ApiSource {
            configmap,
            kubeconfig,
        })
    };
    Ok(Options {
        masq_chain,
        nomasq_all_reserved_ranges: values.nomasq_all_reserved_ranges,
        enable_ipv6: values.enable_ipv6,
        random_fully: values.random_fully,
        to_ports,
        config: PathBuf::from(&values.config),
        log_format: values.log_format,
        verbosity: u8::try_from(values.v.clamp(0, i32::from(u8::MAX))).unwrap_or(u8::MAX),
        iptables_mode: values.iptables_mode,
        backend: values.backend,
        metrics_address,
        api_source,
        configmap_key,
    })
}

/// Upstream's interval list: `A-B` or `A` items separated by commas, each
/// number as Go's `strconv.Atoi` reads it, nothing trimmed. Empty: none.
/// We also require every port to be 1..=65535, which upstream leaves to
/// iptables to reject at the first sync.
fn parse_to_ports(text: &str) -> Result<Vec<PortRange>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split(',').map(parse_port_interval).collect()
}

fn parse_port_interval(item: &str) -> Result<PortRange, String> {
    let parts: Vec<&str> = item.split('-').collect();
    let (first, last) = match parts[..] {
        [single] => {
            let port = atoi(single).map_err(|e| e.to_string())?;
            (port, port)
        }
        [first, last] => {
            let first = atoi(first).map_err(|e| e.to_string())?;
            let last = atoi(last).map_err(|e| e.to_string())?;
            (first, last)
        }
        _ => return Err(format!("invalid interval {}", quote(item))),
    };
    if first > last {
        return Err(format!("first is greater than last in {}", quote(item)));
    }
    let port = |n: i64| {
        u16::try_from(n).ok().filter(|&p| p != 0).ok_or_else(|| {
            format!(
                "port {n} in {} is out of range; ports are 1-65535",
                quote(item)
            )
        })
    };
    Ok(PortRange {
        first: port(first)?,
        last: port(last)?,
    })
}

/// The usage text: Go's `PrintDefaults` layout for the flags, then the
/// subcommands.
pub fn usage() -> String {
    let defaults = Values::default();
    let mut out = format!("Usage of {PROGRAM}:\n");
    for spec in &FLAGS {
        let (value_name, help) = unquote_usage(spec);
        let mut line = format!("  -{}", spec.name);
        if !value_name.is_empty() {
            line.push(' ');
            line.push_str(&value_name);
        }
        // Go keeps a one-letter boolean's help on its line.
        if line.len() <= 4 {
            line.push('\t');
        } else {
            line.push_str("\n    \t");
        }
        line.push_str(&help.replace('\n', "\n    \t"));
        let default = defaults.text(spec.flag);
        if default != spec.flag.zero_text() {
            if spec.flag.kind() == Kind::String {
                line.push_str(&format!(" (default {})", quote(&default)));
            } else {
                line.push_str(&format!(" (default {default})"));
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(COMMANDS_USAGE);
    out
}

const COMMANDS_USAGE: &str = "
Commands (without one, the agent runs and keeps the rules in place):
  check [FILE]  validate a config file (default: the --config path) and exit
  render        print the rules the config would produce and exit
  sync          apply the rules once and exit
  cleanup       remove this agent's chain and jump rules and exit
  version       print the version and exit
Flags may come before and after the command:
  ip-masq-agent [flags] [command [flags] [FILE]]
";

/// Go's `flag.UnquoteUsage`: the first back-quoted word in the help names
/// the value (and loses its quotes); otherwise the type does.
fn unquote_usage(spec: &FlagSpec) -> (String, String) {
    let help = spec.help;
    if let Some(open) = help.find('`')
        && let Some(len) = help[open + 1..].find('`')
    {
        let name = &help[open + 1..open + 1 + len];
        let unquoted = format!("{}{}{}", &help[..open], name, &help[open + 2 + len..]);
        return (name.to_owned(), unquoted);
    }
    let name = match spec.flag.kind() {
        Kind::Bool => "",
        Kind::String => "string",
        Kind::Uint => "uint",
        Kind::Value => "value",
    };
    (name.to_owned(), help.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(args: &[&str]) -> Invocation {
        match parse(args.iter().copied()) {
            Ok(inv) => inv,
            Err(e) => panic!("{args:?} rejected: {e:?}"),
        }
    }

    fn opts(args: &[&str]) -> Options {
        ok(args).options
    }

    /// The message and exit code of a rejected command line.
    fn fail(args: &[&str]) -> (String, u8) {
        match parse(args.iter().copied()) {
            Ok(inv) => panic!("{args:?} accepted: {inv:?}"),
            Err(e) => (e.to_string(), e.exit_code()),
        }
    }

    fn flag_value(inv: &Invocation, name: &str) -> String {
        match inv.flags.iter().find(|(n, _)| n == name) {
            Some((_, v)) => v.clone(),
            None => panic!("flag {name} not listed"),
        }
    }

    fn pr(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn no_arguments_run_with_defaults() {
        let inv = ok(&[]);
        assert_eq!(inv.command, Command::Run);
        let o = inv.options;
        assert_eq!(o.masq_chain.as_str(), "IP-MASQ-AGENT");
        assert!(!o.nomasq_all_reserved_ranges);
        assert!(!o.enable_ipv6);
        assert!(o.random_fully);
        assert_eq!(o.to_ports, vec![]);
        assert_eq!(o.config, PathBuf::from("/etc/config/ip-masq-agent"));
        assert_eq!(o.log_format, LogFormat::Text);
        assert_eq!(o.verbosity, 0);
        assert_eq!(o.iptables_mode, IptablesMode::Auto);
        assert_eq!(o.backend, BackendKind::Iptables);
    }

    #[test]
    fn one_or_two_dashes_equals_or_space() {
        for args in [
            &["-masq-chain=IP-MASQ"][..],
            &["--masq-chain=IP-MASQ"],
            &["-masq-chain", "IP-MASQ"],
            &["--masq-chain", "IP-MASQ"],
        ] {
            assert_eq!(opts(args).masq_chain.as_str(), "IP-MASQ", "{args:?}");
        }
        for args in [&["-v=2"][..], &["--v=2"], &["-v", "2"], &["--v", "2"]] {
            assert_eq!(opts(args).verbosity, 2, "{args:?}");
        }
        for args in [
            &["-enable-ipv6"][..],
            &["--enable-ipv6"],
            &["--enable-ipv6=true"],
        ] {
            assert!(opts(args).enable_ipv6, "{args:?}");
        }
    }

    #[test]
    fn value_may_contain_equals_and_start_with_dash() {
        assert_eq!(opts(&["--config=/a=b"]).config, PathBuf::from("/a=b"));
        // The next argument is the value whatever it looks like.
        assert_eq!(
            opts(&["--config", "--enable-ipv6"]).config,
            PathBuf::from("--enable-ipv6")
        );
        assert!(!opts(&["--config", "--enable-ipv6"]).enable_ipv6);
    }

    #[test]
    fn the_twelve_bool_spellings() {
        for (text, want) in [
            ("1", true),
            ("t", true),
            ("T", true),
            ("true", true),
            ("TRUE", true),
            ("True", true),
            ("0", false),
            ("f", false),
            ("F", false),
            ("false", false),
            ("FALSE", false),
            ("False", false),
        ] {
            let arg = format!("--random-fully={text}");
            assert_eq!(opts(&[&arg]).random_fully, want, "{arg}");
            let arg = format!("-enable-ipv6={text}");
            assert_eq!(opts(&[&arg]).enable_ipv6, want, "{arg}");
        }
    }

    #[test]
    fn other_bool_spellings_are_usage_errors() {
        assert_eq!(
            fail(&["--enable-ipv6=x"]),
            (
                "invalid boolean value \"x\" for -enable-ipv6: parse error".into(),
                2
            )
        );
        for (arg, message) in [
            (
                "--enable-ipv6=yes",
                "invalid boolean value \"yes\" for -enable-ipv6: parse error",
            ),
            (
                "-random-fully=on",
                "invalid boolean value \"on\" for -random-fully: parse error",
            ),
            (
                "--logtostderr=tRUE",
                "invalid boolean value \"tRUE\" for -logtostderr: parse error",
            ),
            (
                "--version=",
                "invalid boolean value \"\" for -version: parse error",
            ),
            (
                "--one_output= true",
                "invalid boolean value \" true\" for -one_output: parse error",
            ),
        ] {
            assert_eq!(fail(&[arg]), (message.to_owned(), 2), "{arg}");
        }
    }

    #[test]
    fn bool_does_not_take_the_next_argument() {
        // `false` is left as the first positional: here, the check FILE.
        let inv = ok(&["check", "--enable-ipv6", "false"]);
        assert!(inv.options.enable_ipv6);
        assert_eq!(
            inv.command,
            Command::Check {
                file: Some(PathBuf::from("false"))
            }
        );
        // At the top it becomes the command word.
        assert_eq!(
            fail(&["--enable-ipv6", "false"]),
            (
                "unknown command \"false\"; commands are: check, render, sync, cleanup, version"
                    .into(),
                2
            )
        );
    }

    #[test]
    fn double_dash_ends_flags_and_is_consumed() {
        assert_eq!(ok(&["--"]).command, Command::Run);
        let inv = ok(&["--enable-ipv6", "--", "check", "FILE"]);
        assert!(inv.options.enable_ipv6);
        assert_eq!(
            inv.command,
            Command::Check {
                file: Some(PathBuf::from("FILE"))
            }
        );
        // A `--` before the command ends only the flags before it: flag
        // parsing starts again after the command word.
        assert_eq!(
            fail(&["--", "check", "-x"]),
            ("flag provided but not defined: -x".into(), 2)
        );
        assert_eq!(
            ok(&["--", "check", "--", "-x"]).command,
            Command::Check {
                file: Some(PathBuf::from("-x"))
            }
        );
        let inv = ok(&["check", "--", "--enable-ipv6"]);
        assert!(!inv.options.enable_ipv6);
        assert_eq!(
            inv.command,
            Command::Check {
                file: Some(PathBuf::from("--enable-ipv6"))
            }
        );
    }

    #[test]
    fn parsing_stops_at_the_first_non_flag() {
        // A lone "-" is a non-flag argument (a FILE here).
        assert_eq!(
            ok(&["check", "-"]).command,
            Command::Check {
                file: Some(PathBuf::from("-"))
            }
        );
        assert_eq!(
            fail(&["check", "a.yaml", "--enable-ipv6"]),
            (
                "command \"check\" takes at most one FILE, got another argument \"--enable-ipv6\" \
                 (flags go before the command's arguments)"
                    .into(),
                2
            )
        );
        assert_eq!(
            fail(&["-"]),
            (
                "unknown command \"-\"; commands are: check, render, sync, cleanup, version".into(),
                2
            )
        );
    }

    #[test]
    fn flags_before_and_after_the_subcommand() {
        let want = Command::Check {
            file: Some(PathBuf::from("FILE")),
        };
        for args in [
            &["check", "--enable-ipv6", "FILE"][..],
            &["--enable-ipv6", "check", "FILE"],
            &["-enable-ipv6", "check", "--", "FILE"],
        ] {
            let inv = ok(args);
            assert!(inv.options.enable_ipv6, "{args:?}");
            assert_eq!(inv.command, want, "{args:?}");
        }
        let inv = ok(&["--v=1", "render", "--masq-chain", "IP-MASQ", "-v", "3"]);
        assert_eq!(inv.command, Command::Render);
        assert_eq!(inv.options.masq_chain.as_str(), "IP-MASQ");
        assert_eq!(inv.options.verbosity, 3);
    }

    #[test]
    fn subcommands() {
        assert_eq!(ok(&["check"]).command, Command::Check { file: None });
        assert_eq!(ok(&["render"]).command, Command::Render);
        assert_eq!(ok(&["sync"]).command, Command::Sync);
        assert_eq!(ok(&["cleanup"]).command, Command::Cleanup);
        assert_eq!(ok(&["version"]).command, Command::Version);
        assert_eq!(
            fail(&["render", "x"]),
            ("command \"render\" takes no arguments, got \"x\"".into(), 2)
        );
        assert_eq!(
            fail(&["check", "a", "b"]),
            (
                "command \"check\" takes at most one FILE, got another argument \"b\"".into(),
                2
            )
        );
        assert_eq!(
            fail(&["run"]),
            (
                "unknown command \"run\"; commands are: check, render, sync, cleanup, version"
                    .into(),
                2
            )
        );
        // The unknown command is named before its flags are looked at.
        assert_eq!(
            fail(&["bogus", "--nope"]).0,
            "unknown command \"bogus\"; commands are: check, render, sync, cleanup, version"
        );
    }

    #[test]
    fn version_flag_selects_version() {
        assert_eq!(ok(&["--version"]).command, Command::Version);
        assert_eq!(ok(&["-version=true", "sync"]).command, Command::Version);
        assert_eq!(ok(&["--version=false"]).command, Command::Run);
    }

    #[test]
    fn undefined_flag_is_a_usage_error_with_usage() {
        let err = parse(["--nope"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(err.to_string(), "flag provided but not defined: -nope");
        match err {
            CliError::Usage { usage: text, .. } => assert_eq!(text, usage()),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fail(&["-x=1"]),
            ("flag provided but not defined: -x".into(), 2)
        );
        // Names are case-sensitive, as in Go.
        assert_eq!(
            fail(&["--Enable-IPv6"]),
            ("flag provided but not defined: -Enable-IPv6".into(), 2)
        );
        assert_eq!(
            fail(&["check", "--nope"]),
            ("flag provided but not defined: -nope".into(), 2)
        );
    }

    #[test]
    fn bad_flag_syntax() {
        for arg in ["---x", "-=x", "--=x", "---", "-=", "--=true"] {
            assert_eq!(fail(&[arg]), (format!("bad flag syntax: {arg}"), 2));
        }
    }

    #[test]
    fn missing_value() {
        assert_eq!(
            fail(&["--masq-chain"]),
            ("flag needs an argument: -masq-chain".into(), 2)
        );
        assert_eq!(
            fail(&["check", "-v"]),
            ("flag needs an argument: -v".into(), 2)
        );
    }

    #[test]
    fn help_exits_zero_with_usage() {
        for args in [
            &["-h"][..],
            &["-help"],
            &["--help"],
            &["--h"],
            &["-help=false"],
            &["--enable-ipv6", "-h", "--nope"],
            &["check", "--help"],
        ] {
            let err = parse(args.iter().copied()).unwrap_err();
            assert_eq!(err.exit_code(), 0, "{args:?}");
            assert_eq!(err, CliError::Help(usage()), "{args:?}");
        }
        // An error met before the help flag wins, as in Go.
        assert_eq!(fail(&["--nope", "-h"]).1, 2);
    }

    #[test]
    fn to_ports_upstream_example_and_single_ports() {
        assert_eq!(
            opts(&["--to-ports=1024-29999,32768-65535"]).to_ports,
            vec![pr(1024, 29999), pr(32768, 65535)]
        );
        assert_eq!(opts(&["--to-ports", "8080"]).to_ports, vec![pr(8080, 8080)]);
        assert_eq!(
            opts(&["--to-ports=80,90-100,1-1,+443"]).to_ports,
            vec![pr(80, 80), pr(90, 100), pr(1, 1), pr(443, 443)]
        );
        assert_eq!(opts(&["--to-ports="]).to_ports, vec![]);
        // The last occurrence wins; only it is checked.
        assert_eq!(
            opts(&["--to-ports=x", "--to-ports=1-2"]).to_ports,
            vec![pr(1, 2)]
        );
    }

    #[test]
    fn to_ports_errors_exit_one() {
        for (value, why) in [
            ("1-2-3", "invalid interval \"1-2-3\""),
            ("30000-1024", "first is greater than last in \"30000-1024\""),
            ("x", "strconv.Atoi: parsing \"x\": invalid syntax"),
            ("1024-", "strconv.Atoi: parsing \"\": invalid syntax"),
            ("-5", "strconv.Atoi: parsing \"\": invalid syntax"),
            ("80,", "strconv.Atoi: parsing \"\": invalid syntax"),
            (" 80", "strconv.Atoi: parsing \" 80\": invalid syntax"),
            ("80, 90", "strconv.Atoi: parsing \" 90\": invalid syntax"),
            (
                "99999999999999999999",
                "strconv.Atoi: parsing \"99999999999999999999\": value out of range",
            ),
            ("0", "port 0 in \"0\" is out of range; ports are 1-65535"),
            (
                "0-10",
                "port 0 in \"0-10\" is out of range; ports are 1-65535",
            ),
            (
                "1024-70000",
                "port 70000 in \"1024-70000\" is out of range; ports are 1-65535",
            ),
        ] {
            let arg = format!("--to-ports={value}");
            let (message, code) = fail(&[&arg]);
            assert_eq!(
                message,
                format!("invalid value {} for --to-ports: {why}", quote(value)),
                "{arg}"
            );
            assert_eq!(code, 1, "{arg}");
        }
    }

    #[test]
    fn bad_masq_chain_is_invalid_and_names_the_flag() {
        let (message, code) = fail(&["--masq-chain=RETURN"]);
        assert_eq!(code, 1);
        assert_eq!(
            message,
            "invalid value for --masq-chain: chain name \"RETURN\" is a built-in chain or target name"
        );
        let (message, code) = fail(&["--masq-chain="]);
        assert_eq!(code, 1);
        assert_eq!(
            message,
            "invalid value for --masq-chain: chain name must not be empty"
        );
    }

    #[test]
    fn empty_config_path_is_invalid() {
        assert_eq!(
            fail(&["--config="]),
            (
                "invalid value for --config: the path must not be empty".into(),
                1
            )
        );
        assert_eq!(
            opts(&["--config", "/tmp/x"]).config,
            PathBuf::from("/tmp/x")
        );
    }

    #[test]
    fn configmap_source_flags() {
        let o = opts(&[]);
        assert_eq!(o.api_source, None);
        assert_eq!(o.configmap_key.as_str(), "config");
        let o = opts(&[
            "--configmap=kube-system/ip-masq-agent",
            "--configmap-key=ip-masq-agent.yaml",
            "--kubeconfig=/etc/kubeconfig",
        ]);
        let source = o.api_source.unwrap();
        assert_eq!(source.configmap.to_string(), "kube-system/ip-masq-agent");
        assert_eq!(source.kubeconfig, Some(PathBuf::from("/etc/kubeconfig")));
        assert_eq!(o.configmap_key.as_str(), "ip-masq-agent.yaml");
        // Empty means "use the file", as for every string flag.
        assert_eq!(opts(&["--configmap="]).api_source, None);
        assert_eq!(
            opts(&["--configmap=a/b"]).api_source.unwrap().kubeconfig,
            None
        );
        let (text, code) = fail(&["--configmap=ip-masq-agent"]);
        assert_eq!(code, 1);
        assert_eq!(
            text,
            "invalid value \"ip-masq-agent\" for --configmap: must be NAMESPACE/NAME"
        );
        let (text, code) = fail(&["--configmap=kube-system/IP"]);
        assert_eq!(code, 1);
        assert!(
            text.contains("for --configmap: name \"IP\" must consist of lower case"),
            "{text}"
        );
        let (text, code) = fail(&["--configmap-key=a/b"]);
        assert_eq!(code, 1);
        assert!(
            text.starts_with("invalid value \"a/b\" for --configmap-key: "),
            "{text}"
        );
    }

    #[test]
    fn enum_flags() {
        assert_eq!(opts(&["--log-format=json"]).log_format, LogFormat::Json);
        assert_eq!(opts(&["--log-format", "text"]).log_format, LogFormat::Text);
        assert_eq!(
            opts(&["--iptables-mode=nft"]).iptables_mode,
            IptablesMode::Nft
        );
        assert_eq!(
            opts(&["-iptables-mode", "legacy"]).iptables_mode,
            IptablesMode::Legacy
        );
        assert_eq!(opts(&["--backend=nftables"]).backend, BackendKind::Nftables);
        assert_eq!(
            opts(&["-backend", "iptables"]).backend,
            BackendKind::Iptables
        );
        assert_eq!(
            fail(&["--backend=nft"]),
            (
                "invalid value \"nft\" for flag -backend: must be iptables or nftables".into(),
                2
            )
        );
        assert_eq!(
            fail(&["--log-format=xml"]),
            (
                "invalid value \"xml\" for flag -log-format: must be text or json".into(),
                2
            )
        );
        assert_eq!(
            fail(&["--iptables-mode=NFT"]),
            (
                "invalid value \"NFT\" for flag -iptables-mode: must be auto, nft or legacy".into(),
                2
            )
        );
    }

    #[test]
    fn klog_flags_from_daemonsets_are_accepted() {
        let inv = ok(&[
            "--logtostderr",
            "--alsologtostderr=false",
            "--stderrthreshold=INFO",
            "--log_dir=/var/log",
            "--log_file=/var/log/agent.log",
            "--log_file_max_size=0x10",
            "--vmodule=sync=4,zero=0,,loop*=2",
            "--log_backtrace_at=main.go:12",
            "--add_dir_header",
            "--skip_headers=true",
            "--skip_log_headers",
            "--one_output=1",
            "--legacy_stderr_threshold_behavior=false",
            "--v=4",
            "--nomasq-all-reserved-ranges",
            "--masq-chain=IP-MASQ",
        ]);
        assert_eq!(inv.command, Command::Run);
        assert_eq!(inv.options.verbosity, 4);
        assert!(inv.options.nomasq_all_reserved_ranges);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "0");
        assert_eq!(flag_value(&inv, "log_file_max_size"), "16");
        assert_eq!(flag_value(&inv, "vmodule"), "sync=4,loop*=2");
        assert_eq!(flag_value(&inv, "log_backtrace_at"), "main.go:12");
        assert_eq!(
            flag_value(&inv, "legacy_stderr_threshold_behavior"),
            "false"
        );
        assert_eq!(flag_value(&inv, "log_dir"), "/var/log");
        // Severity names in any case; numbers as int32.
        let inv = ok(&["--stderrthreshold", "warning"]);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "1");
        let inv = ok(&["--stderrthreshold=7"]);
        assert_eq!(flag_value(&inv, "stderrthreshold"), "7");
        let inv = ok(&["--log_backtrace_at="]);
        assert_eq!(flag_value(&inv, "log_backtrace_at"), ":0");
    }

    #[test]
    fn klog_values_are_checked_as_klog_checks_them() {
        for (arg, message) in [
            (
                "-v=x",
                "invalid value \"x\" for flag -v: strconv.ParseInt: parsing \"x\": invalid syntax",
            ),
            // klog's Level is base 10: no 0x prefix, unlike Go's int flags.
            (
                "-v=0x10",
                "invalid value \"0x10\" for flag -v: strconv.ParseInt: parsing \"0x10\": invalid syntax",
            ),
            (
                "-v=2147483648",
                "invalid value \"2147483648\" for flag -v: strconv.ParseInt: parsing \"2147483648\": value out of range",
            ),
            (
                "--stderrthreshold=bogus",
                "invalid value \"bogus\" for flag -stderrthreshold: strconv.ParseInt: parsing \"bogus\": invalid syntax",
            ),
            (
                "--vmodule=foo",
                "invalid value \"foo\" for flag -vmodule: syntax error: expect comma-separated list of filename=N",
            ),
            (
                "--vmodule=a=x",
                "invalid value \"a=x\" for flag -vmodule: syntax error: expect comma-separated list of filename=N",
            ),
            (
                "--vmodule=a=-1",
                "invalid value \"a=-1\" for flag -vmodule: negative value for vmodule level",
            ),
            (
                "--log_backtrace_at=main:12",
                "invalid value \"main:12\" for flag -log_backtrace_at: syntax error: expect file.go:234",
            ),
            (
                "--log_backtrace_at=main.go:0",
                "invalid value \"main.go:0\" for flag -log_backtrace_at: negative or zero value for level",
            ),
            (
                "--log_file_max_size=-1",
                "invalid value \"-1\" for flag -log_file_max_size: parse error",
            ),
            (
                "--log_file_max_size=99999999999999999999",
                "invalid value \"99999999999999999999\" for flag -log_file_max_size: value out of range",
            ),
        ] {
            assert_eq!(fail(&[arg]), (message.to_owned(), 2), "{arg}");
        }
    }

    #[test]
    fn v_maps_into_u8() {
        for (arg, want) in [
            ("-v=0", 0),
            ("-v=-1", 0),
            ("-v=-2147483648", 0),
            ("-v=+3", 3),
            ("-v=007", 7),
            ("-v=255", 255),
            ("-v=256", 255),
            ("-v=2147483647", 255),
        ] {
            assert_eq!(opts(&[arg]).verbosity, want, "{arg}");
        }
        // The flag list keeps Go's value, not the clamped one.
        assert_eq!(flag_value(&ok(&["-v=-1"]), "v"), "-1");
        assert_eq!(flag_value(&ok(&["-v=007"]), "v"), "7");
    }

    #[test]
    fn repeated_flags_last_wins() {
        let o = opts(&["--random-fully=false", "--random-fully", "-v=9", "-v=1"]);
        assert!(o.random_fully);
        assert_eq!(o.verbosity, 1);
    }

    #[test]
    fn flags_list_is_sorted_and_complete_with_effective_values() {
        let inv = ok(&[]);
        let names: Vec<&str> = inv.flags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "add_dir_header",
                "alsologtostderr",
                "backend",
                "config",
                "configmap",
                "configmap-key",
                "enable-ipv6",
                "iptables-mode",
                "kubeconfig",
                "legacy_stderr_threshold_behavior",
                "log-format",
                "log_backtrace_at",
                "log_dir",
                "log_file",
                "log_file_max_size",
                "logtostderr",
                "masq-chain",
                "metrics-address",
                "nomasq-all-reserved-ranges",
                "one_output",
                "random-fully",
                "skip_headers",
                "skip_log_headers",
                "stderrthreshold",
                "to-ports",
                "v",
                "version",
                "vmodule",
            ]
        );
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let defaults = &inv.flags;
        for (name, value) in [
            ("random-fully", "true"),
            ("masq-chain", "IP-MASQ-AGENT"),
            ("config", "/etc/config/ip-masq-agent"),
            ("to-ports", ""),
            ("v", "0"),
            ("stderrthreshold", "2"),
            ("log_file_max_size", "1800"),
            ("logtostderr", "true"),
            ("log_backtrace_at", ":0"),
            ("log-format", "text"),
            ("iptables-mode", "auto"),
            ("backend", "iptables"),
            ("metrics-address", ":9557"),
            ("configmap", ""),
            ("configmap-key", "config"),
            ("kubeconfig", ""),
            ("version", "false"),
        ] {
            assert!(
                defaults.contains(&(name.to_owned(), value.to_owned())),
                "{name}={value} not in {defaults:?}"
            );
        }
        let inv = ok(&[
            "--random-fully=false",
            "--to-ports=1024-29999,32768-65535",
            "--log-format=json",
        ]);
        assert_eq!(flag_value(&inv, "random-fully"), "false");
        assert_eq!(flag_value(&inv, "to-ports"), "1024-29999,32768-65535");
        assert_eq!(flag_value(&inv, "log-format"), "json");
    }

    #[test]
    fn usage_lists_every_flag_in_go_layout() {
        let text = usage();
        assert!(text.starts_with("Usage of ip-masq-agent:\n  -add_dir_header\n"));
        for spec in &FLAGS {
            assert!(
                text.contains(&format!("\n  -{}", spec.name)),
                "{} missing",
                spec.name
            );
        }
        for expected in [
            "  -config file\n    \tPath of the config file (YAML or JSON); if it is absent, defaults apply (default \"/etc/config/ip-masq-agent\")\n",
            "  -enable-ipv6\n    \tAlso program IPv6 rules (ip6tables) and accept IPv6 CIDRs in the config\n",
            "  -backend backend\n    \tKernel backend: iptables (the upstream agent's rules) or nftables (a native table with the list in an interval set) (default iptables)\n",
            "  -iptables-mode mode\n    \tiptables mode: auto (use what the node uses), nft or legacy (default auto)\n",
            "  -log_file_max_size uint\n    \tklog flag, accepted for compatibility; no effect (default 1800)\n",
            "  -logtostderr\n    \tklog flag, accepted for compatibility; logs always go to standard error (default true)\n",
            "  -masq-chain chain\n    \tName of the nat chain that holds the masquerade rules (default \"IP-MASQ-AGENT\")\n",
            "  -random-fully\n    \tAdd --random-fully to MASQUERADE rules when iptables supports it (1.6.2 and later) (default true)\n",
            "  -stderrthreshold value\n    \tklog flag, accepted for compatibility; no effect (default 2)\n",
            "  -to-ports ranges\n    \tSource port ranges for masqueraded tcp, udp and sctp, comma-separated (e.g. 1024-29999,32768-65535); empty leaves the choice to the kernel\n",
            "  -v level\n    \tLog verbosity level; higher logs more detail\n",
            "  -vmodule value\n    \tklog flag, accepted for compatibility; no effect\n",
            "  check [FILE]  validate a config file (default: the --config path) and exit\n",
        ] {
            assert!(text.contains(expected), "{expected:?} not in:\n{text}");
        }
    }

    #[test]
    fn non_ascii_arguments_do_not_break_parsing() {
        assert_eq!(
            fail(&["-é=1"]),
            ("flag provided but not defined: -é".into(), 2)
        );
        assert_eq!(
            fail(&["--é"]),
            ("flag provided but not defined: -é".into(), 2)
        );
        assert_eq!(
            fail(&["-v=\u{1}é"]),
            (
                "invalid value \"\\x01é\" for flag -v: strconv.ParseInt: parsing \"\\x01é\": invalid syntax"
                    .into(),
                2
            )
        );
        // Go's ToUpper turns a dotless i into I, so klog takes this as INFO.
        assert_eq!(
            flag_value(&ok(&["--stderrthreshold=ınfo"]), "stderrthreshold"),
            "0"
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(CliError::Help(String::new()).exit_code(), 0);
        assert_eq!(
            CliError::Usage {
                message: String::new(),
                usage: String::new()
            }
            .exit_code(),
            2
        );
        assert_eq!(CliError::Invalid(String::new()).exit_code(), 1);
    }
}
