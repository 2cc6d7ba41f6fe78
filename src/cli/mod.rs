//! The command line, parsed with the grammar of Go's `flag` package.
//!
//! Clusters swap the upstream image for ours and keep their DaemonSet
//! arguments, so this module accepts exactly what Go's `flag` accepts and
//! rejects what it rejects, with Go's messages. Two stages, as ripgrep has
//! them: `flags` (with `klog`) fills raw flag values the way Go holds them,
//! then `options()` turns them into typed [`Options`] whose values belong to
//! the modules they feed (a `ChainName`, `PortRange`s, a `SocketAddr`, a
//! `LogFormat`, the backend choice, the API source). This file owns that
//! second stage, the choice of subcommand and the errors; nothing downstream
//! parses a flag again. Errors carry their exit code: help 0, usage 2 (as
//! Go's `flag` exits), a well-formed but unusable value 1 (a startup error,
//! as upstream).

mod address;
mod flags;
mod goflag;
mod klog;
mod ports;
mod strconv;
#[cfg(test)]
mod tests;
mod usage;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;

use crate::backend::select::{BackendKind, IptablesMode};
use crate::logging::LogFormat;
use crate::plan::{ChainName, PortRange};
use crate::source::api::{ApiSelector, ApiSource, ConfigMapKey};

use flags::{FlagError, LowArgs};
use strconv::quote;

pub use flags::{DEFAULT_CONFIGMAP_KEY, DEFAULT_METRICS_ADDRESS};
pub use strconv::quote as go_quote;
pub use usage::usage;

/// Validated settings from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub masq_chain: ChainName,
    pub nomasq_all_reserved_ranges: bool,
    pub enable_ipv6: bool,
    pub random_fully: bool,
    /// `--authoritative`: our decision is final against other NAT rules.
    pub authoritative: bool,
    /// Empty: no explicit source ports.
    pub to_ports: Vec<PortRange>,
    /// `--config` paths, files or directories, in the order given; empty
    /// with `--configmap` alone.
    pub config: Vec<PathBuf>,
    pub log_format: LogFormat,
    /// klog's `-v`, negative values as 0 and large ones as 255.
    pub verbosity: u8,
    pub iptables_mode: IptablesMode,
    pub backend: BackendKind,
    /// Where to serve metrics and probes; `None` when disabled (empty flag).
    pub metrics_address: Option<SocketAddr>,
    /// `--configmap`: the ConfigMaps read through the Kubernetes API, in
    /// the order given; empty: only the `config` files.
    pub api_sources: Vec<ApiSource>,
    /// `--configmap-selector`: every ConfigMap each selector picks, in the
    /// order given.
    pub api_selectors: Vec<ApiSelector>,
    /// The ConfigMap key holding the config (`--configmap`, and `check` of
    /// a ConfigMap manifest).
    pub configmap_key: ConfigMapKey,
    /// `check --strict`: any warning fails the check.
    pub strict: bool,
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
    /// Remove this agent's rules and exit; with `--stale-chains`, only the
    /// chains an earlier agent left under another `--masq-chain` name.
    Cleanup { stale_chains: bool },
    /// Print the masquerade decision for each destination and exit.
    Explain {
        /// `--from`: the packets' source; None asks about a pod's packets.
        source: Option<IpAddr>,
        /// At least one, in the order given.
        addresses: Vec<IpAddr>,
        output: OutputFormat,
        /// `--live`: walk the node's nat path instead of the config alone.
        live: bool,
    },
    /// Print the version and exit (`version` or `--version`).
    Version,
}

/// How `explain` prints its answers (`--output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// One line per address: `ADDRESS VERDICT WHY`.
    #[default]
    Text,
    /// One JSON object per address, one per line.
    Json,
}

impl OutputFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Text => "text",
            OutputFormat::Json => "json",
        }
    }
}

impl FromStr for OutputFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "text" => Ok(OutputFormat::Text),
            "json" => Ok(OutputFormat::Json),
            _ => Err("must be text or json".into()),
        }
    }
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
    /// `-h`, `-help`, `--help` or the `help` command: the usage text was
    /// asked for, so it goes to stdout (pipeable into a pager), exit 0.
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

impl From<FlagError> for CliError {
    fn from(error: FlagError) -> Self {
        match error {
            FlagError::Help => CliError::Help(usage()),
            FlagError::Syntax(message) => CliError::usage(message),
        }
    }
}

/// Subcommand names, in the order usage lists them.
const COMMANDS: [&str; 7] = [
    "check", "render", "explain", "sync", "cleanup", "version", "help",
];

/// Pick the command from its name and the positional arguments after the
/// command's own flags.
fn select_command(word: &str, positionals: &[String], low: &LowArgs) -> Result<Command, CliError> {
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
        "explain" => explain(positionals, low),
        "sync" => takes_none(Command::Sync),
        "cleanup" => takes_none(Command::Cleanup {
            stale_chains: low.agent.stale_chains,
        }),
        "version" => takes_none(Command::Version),
        _ => Err(unknown_command(word)),
    }
}

/// `explain [--from SOURCE] ADDRESS...`: every address parsed here, so a
/// bad one is named before any config is read.
fn explain(positionals: &[String], low: &LowArgs) -> Result<Command, CliError> {
    if positionals.is_empty() {
        return Err(CliError::usage(
            "command \"explain\" needs at least one ADDRESS (a destination, e.g. 10.9.5.9)".into(),
        ));
    }
    let from = &low.agent.from;
    let source = if from.is_empty() {
        None
    } else {
        Some(from.parse::<IpAddr>().map_err(|_| {
            CliError::Invalid(format!(
                "invalid value {} for --from: not an IP address{}",
                quote(from),
                cidr_hint(from)
            ))
        })?)
    };
    let mut addresses = Vec::with_capacity(positionals.len());
    for (i, arg) in positionals.iter().enumerate() {
        let addr = arg.parse::<IpAddr>().map_err(|_| {
            CliError::Invalid(format!(
                "explain: argument {} ({}) is not an IP address{}{}",
                i + 1,
                quote(arg),
                cidr_hint(arg),
                flag_hint(arg)
            ))
        })?;
        if let Some(source) = source
            && source.is_ipv4() != addr.is_ipv4()
        {
            return Err(CliError::Invalid(format!(
                "explain: argument {} ({}): {}",
                i + 1,
                quote(arg),
                crate::policy::MixedFamilies {
                    source,
                    destination: addr
                }
            )));
        }
        addresses.push(addr);
    }
    Ok(Command::Explain {
        source,
        addresses,
        output: low.agent.output,
        live: low.agent.live,
    })
}

/// A CIDR where an address belongs: say what is asked for.
fn cidr_hint(arg: &str) -> &'static str {
    if arg.contains('/') {
        " (give one address, not a CIDR)"
    } else {
        ""
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

/// `check FILE --strict`: flags may also follow the command's one
/// argument (Go's parser would stop at FILE); after `--` everything is an
/// argument.
fn interleaved(low: &mut LowArgs, mut args: &[String]) -> Result<Vec<String>, CliError> {
    let mut positionals = Vec::new();
    loop {
        let rest = low.parse_flags(args)?;
        let consumed = args.len() - rest.len();
        if consumed > 0 && args[consumed - 1] == "--" {
            positionals.extend(rest.iter().cloned());
            return Ok(positionals);
        }
        let Some((first, more)) = rest.split_first() else {
            return Ok(positionals);
        };
        positionals.push(first.clone());
        args = more;
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
    let mut low = LowArgs::default();

    let rest = low.parse_flags(&args)?;
    let mut command = match rest.split_first() {
        None => Command::Run,
        // Asked for, as `-h` is: usage on stdout, exit 0.
        Some((word, _)) if word == "help" => return Err(CliError::Help(usage())),
        Some((word, after)) => {
            // Name the unknown command before complaining about its flags.
            if !COMMANDS.contains(&word.as_str()) {
                return Err(unknown_command(word));
            }
            let positionals = if word == "check" {
                interleaved(&mut low, after)?
            } else {
                low.parse_flags(after)?.to_vec()
            };
            select_command(word, &positionals, &low)?
        }
    };
    // Explain's flags mean nothing elsewhere; silently ignoring one would
    // hide a mistyped command line.
    if !matches!(command, Command::Explain { .. }) {
        for (name, set) in [
            ("from", !low.agent.from.is_empty()),
            ("output", low.agent.output != OutputFormat::Text),
            ("live", low.agent.live),
        ] {
            if set {
                return Err(CliError::usage(format!(
                    "flag -{name} is only for the explain command"
                )));
            }
        }
    }
    if low.agent.stale_chains && !matches!(command, Command::Cleanup { .. }) {
        return Err(CliError::usage(
            "flag -stale-chains is only for the cleanup command".into(),
        ));
    }
    // Like a version flag in Go programs: print and exit before anything.
    if low.agent.version {
        command = Command::Version;
    }

    Ok(Invocation {
        options: options(&low)?,
        command,
        flags: low.visit(),
    })
}

/// Turn flag values into typed options; what fails here is a startup error.
fn options(low: &LowArgs) -> Result<Options, CliError> {
    let agent = &low.agent;
    let masq_chain = agent
        .masq_chain
        .parse::<ChainName>()
        .map_err(|e| CliError::Invalid(format!("invalid value for --masq-chain: {e}")))?;
    let to_ports = ports::parse_to_ports(&agent.to_ports).map_err(|e| {
        CliError::Invalid(format!(
            "invalid value {} for --to-ports: {e}",
            quote(&agent.to_ports)
        ))
    })?;
    let metrics_address =
        if agent.metrics_address.is_empty() {
            None
        } else {
            Some(address::parse_address(&agent.metrics_address).map_err(|e| {
                CliError::Invalid(format!("invalid value for --metrics-address: {e}"))
            })?)
        };
    // An empty path would read as "no file" and silently mean defaults.
    if agent.config.values.iter().any(String::is_empty) {
        return Err(CliError::Invalid(
            "invalid value for --config: the path must not be empty".into(),
        ));
    }
    let configmap_key = agent.configmap_key.parse::<ConfigMapKey>().map_err(|e| {
        CliError::Invalid(format!(
            "invalid value {} for --configmap-key: {e}",
            quote(&agent.configmap_key)
        ))
    })?;
    // Empty means "use the file", as for every string flag.
    let mut api_sources = Vec::new();
    for configmap in agent.configmap.values.iter().filter(|c| !c.is_empty()) {
        api_sources.push(ApiSource::parse(configmap, &agent.kubeconfig).map_err(|e| {
            CliError::Invalid(format!(
                "invalid value {} for --configmap: {e}",
                quote(configmap)
            ))
        })?);
    }
    let mut api_selectors = Vec::new();
    for selector in agent
        .configmap_selector
        .values
        .iter()
        .filter(|c| !c.is_empty())
    {
        api_selectors.push(
            ApiSelector::parse(selector, &agent.kubeconfig).map_err(|e| {
                CliError::Invalid(format!(
                    "invalid value {} for --configmap-selector: {e}",
                    quote(selector)
                ))
            })?,
        );
    }
    // With --configmap the files are not read at all, as before several
    // sources existed: one kind of source of truth per node.
    let config = if api_sources.is_empty() && api_selectors.is_empty() {
        agent.config.values.iter().map(PathBuf::from).collect()
    } else {
        Vec::new()
    };
    Ok(Options {
        masq_chain,
        nomasq_all_reserved_ranges: agent.nomasq_all_reserved_ranges,
        enable_ipv6: agent.enable_ipv6,
        random_fully: agent.random_fully,
        authoritative: agent.authoritative,
        to_ports,
        config,
        log_format: agent.log_format,
        verbosity: low.klog.v.verbosity(),
        iptables_mode: agent.iptables_mode,
        backend: agent.backend,
        metrics_address,
        api_sources,
        api_selectors,
        configmap_key,
        strict: agent.strict,
    })
}
