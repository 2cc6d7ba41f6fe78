//! The raw-args stage: the agent's own flags, and Go's `FlagSet.Parse`.
//!
//! [`LowArgs`] holds every flag value (ours and klog's) the way its Go type
//! holds it, before anything is checked beyond what Go's `flag` checks; the
//! typed options are built from it afterwards. Each flag is one entry of a
//! [`flag_set!`] table, ours here and klog's in `klog.rs`, and Go's grammar
//! is applied exactly: `-name` and `--name` alike, `-name=value` and
//! `-name value` (booleans only take `=value`), parsing stops at the first
//! non-flag argument or after `--`. What must stay true: flag names are
//! unique across both tables, and every listing is sorted by name, as Go's.

use super::OutputFormat;
use super::goflag::{FlagDef, FlagValue, Kind, Repeated, Spec, flag_set};
use super::klog::{KLOG_FLAGS, KlogFlags};
use super::strconv::quote;
use crate::backend::select::{BackendKind, IptablesMode};
use crate::logging::LogFormat;

/// Default listen address of the metrics and health endpoints: all addresses,
/// since the pod shares the node's network.
pub const DEFAULT_METRICS_ADDRESS: &str = ":9557";
/// The ConfigMap key upstream's manifests mount as the config file's name.
pub const DEFAULT_CONFIGMAP_KEY: &str = "config";

flag_set! {
    /// Values of the agent's own flags: upstream's and ours.
    pub struct AgentFlags;
    /// Sorted by name (byte order), as Go prints and visits them.
    pub const AGENT_FLAGS;

    "authoritative" => authoritative: bool = false,
        "Make the masquerade decision final against the node's other NAT rules: \
         the iptables jump goes first in POSTROUTING, exempted traffic ends the nat traversal \
         (packets kube-proxy marked 0x4000 excepted); nftables binds it to its own address";
    "backend" => backend: BackendKind = BackendKind::Iptables,
        "Kernel `backend`: iptables (the upstream agent's rules) or nftables \
         (a native table with the list in an interval set)";
    "config" => config: Repeated = "/etc/config/ip-masq-agent",
        "Path of the config `file` (YAML or JSON), or of a directory whose files are \
         merged; repeat to merge several; if a lone file is absent, defaults apply";
    "configmap" => configmap: Repeated = "",
        "Read the config from this ConfigMap through the Kubernetes API \
         (`namespace/name`) instead of --config; repeat to merge several";
    "configmap-key" => configmap_key: String = DEFAULT_CONFIGMAP_KEY,
        "The `key` in the ConfigMap's data that holds the config";
    "configmap-selector" => configmap_selector: Repeated = "",
        "Read the config from every ConfigMap of a namespace that a label selector picks, \
         as they come and go (`namespace/selector`, e.g. kube-system/example.com/masq-part); \
         repeat for several; merged with --configmap";
    "enable-ipv6" => enable_ipv6: bool = false,
        "Also program IPv6 rules (ip6tables) and accept IPv6 CIDRs in the config";
    "from" => from: String = "",
        "explain: the packets' source `address` (default: a pod, i.e. a source inside podCIDRs)";
    "iptables-mode" => iptables_mode: IptablesMode = IptablesMode::Auto,
        "iptables `mode`: auto (use what the node uses), nft or legacy";
    "kubeconfig" => kubeconfig: String = "",
        "Kubeconfig `file` for --configmap; empty: the in-cluster service account, \
         else $KUBECONFIG or ~/.kube/config";
    "live" => live: bool = false,
        "explain: walk this node's actual nat POSTROUTING path (iptables and nftables) and name the rule that decides; needs root";
    "log-format" => log_format: LogFormat = LogFormat::Text, "Log line `format`: text or json";
    "masq-chain" => masq_chain: String = "IP-MASQ-AGENT",
        "Name of the nat `chain` that holds the masquerade rules";
    "metrics-address" => metrics_address: String = DEFAULT_METRICS_ADDRESS,
        "Listen `address` for /metrics, /healthz and /readyz (HOST:PORT, or :PORT for all addresses); empty disables";
    "nomasq-all-reserved-ranges" => nomasq_all_reserved_ranges: bool = false,
        "Default the non-masquerade list to all reserved IPv4 ranges, not only RFC 1918";
    "output" => output: OutputFormat = OutputFormat::Text,
        "explain: output `format`, text (one line per address) or json (one object per line)";
    "random-fully" => random_fully: bool = true,
        "Add --random-fully to MASQUERADE rules when iptables supports it (1.6.2 and later)";
    "stale-chains" => stale_chains: bool = false,
        "cleanup: remove only the chains (and their POSTROUTING jumps) that an earlier ip-masq-agent left under another --masq-chain name";
    "strict" => strict: bool = false,
        "check: exit 1 on any warning (an unknown key, a ConfigMap the DaemonSet does not mount)";
    "to-ports" => to_ports: String = "",
        "Source port `ranges` for masqueraded tcp, udp and sctp, comma-separated \
         (e.g. 1024-29999,32768-65535); empty leaves the choice to the kernel";
    "version" => version: bool = false, "Print the version and exit (same as the version command)";
}

/// Our enums as custom `flag.Value`s; each type parses its own spelling.
/// Their zero prints as "", as the string a Go program would keep them in,
/// so usage always shows their default.
macro_rules! choice_flag_value {
    ($($ty:ty),*) => {$(
        impl FlagValue for $ty {
            const KIND: Kind = Kind::Other;
            const ZERO: &'static str = "";

            fn parse(text: &str) -> Result<Self, String> {
                text.parse()
            }

            fn text(&self) -> String {
                self.as_str().to_owned()
            }
        }
    )*};
}

choice_flag_value!(BackendKind, IptablesMode, LogFormat, OutputFormat);

/// Every flag value of one command line, as set so far.
#[derive(Debug, Clone, Default)]
pub struct LowArgs {
    pub agent: AgentFlags,
    pub klog: KlogFlags,
}

/// One defined flag, from either table.
#[derive(Clone, Copy)]
pub enum Entry {
    Agent(&'static FlagDef<AgentFlags>),
    Klog(&'static FlagDef<KlogFlags>),
}

impl Entry {
    pub fn spec(self) -> &'static Spec {
        match self {
            Entry::Agent(def) => &def.spec,
            Entry::Klog(def) => &def.spec,
        }
    }

    fn set(self, args: &mut LowArgs, text: &str) -> Result<(), String> {
        match self {
            Entry::Agent(def) => (def.set)(&mut args.agent, text),
            Entry::Klog(def) => (def.set)(&mut args.klog, text),
        }
    }

    /// The flag's value in `args`, as Go prints it.
    pub fn text(self, args: &LowArgs) -> String {
        match self {
            Entry::Agent(def) => (def.text)(&args.agent),
            Entry::Klog(def) => (def.text)(&args.klog),
        }
    }
}

/// Every defined flag, sorted by name (Go's `VisitAll` order).
pub fn entries() -> Vec<Entry> {
    let mut all: Vec<Entry> = AGENT_FLAGS
        .iter()
        .map(Entry::Agent)
        .chain(KLOG_FLAGS.iter().map(Entry::Klog))
        .collect();
    all.sort_unstable_by_key(|entry| entry.spec().name);
    all
}

fn lookup(name: &str) -> Option<Entry> {
    let agent = AGENT_FLAGS.iter().find(|def| def.spec.name == name);
    let klog = || KLOG_FLAGS.iter().find(|def| def.spec.name == name);
    agent.map(Entry::Agent).or_else(|| klog().map(Entry::Klog))
}

/// Why Go's `FlagSet.Parse` stopped with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagError {
    /// `-h` or `-help`, not being defined, asks for usage.
    Help,
    /// Go's message, to be followed by the usage text.
    Syntax(String),
}

impl LowArgs {
    /// Every defined flag with its value, sorted by name.
    pub fn visit(&self) -> Vec<(String, String)> {
        entries()
            .into_iter()
            .map(|entry| (entry.spec().name.to_owned(), entry.text(self)))
            .collect()
    }

    /// Parse flags from the front of `args` as Go's `FlagSet.Parse` does and
    /// return the arguments after them: parsing stops before the first
    /// non-flag argument (one not starting with `-`, or `-` alone) and after
    /// `--`, which is consumed.
    pub fn parse_flags<'a>(&mut self, mut args: &'a [String]) -> Result<&'a [String], FlagError> {
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
                return Err(FlagError::Syntax(format!("bad flag syntax: {arg}")));
            }
            args = rest;
            // The name is never empty, so an '=' is searched from its 2nd byte.
            let (name, inline_value) = match body.as_bytes()[1..].iter().position(|&b| b == b'=') {
                Some(i) => (&body[..=i], Some(&body[i + 2..])),
                None => (body, None),
            };
            let Some(entry) = lookup(name) else {
                if name == "help" || name == "h" {
                    return Err(FlagError::Help);
                }
                return Err(FlagError::Syntax(format!(
                    "flag provided but not defined: -{name}"
                )));
            };
            if entry.spec().kind == Kind::Bool {
                // A boolean never takes the next argument: `-x false` would
                // change meaning if a file were named "false".
                let value = inline_value.unwrap_or("true");
                entry.set(self, value).map_err(|e| {
                    FlagError::Syntax(format!(
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
                        return Err(FlagError::Syntax(format!(
                            "flag needs an argument: -{name}"
                        )));
                    }
                },
            };
            entry.set(self, value).map_err(|e| {
                FlagError::Syntax(format!(
                    "invalid value {} for flag -{name}: {e}",
                    quote(value)
                ))
            })?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_each_table_is_sorted() {
        let names: Vec<&str> = entries().iter().map(|e| e.spec().name).collect();
        assert_eq!(names.len(), 35);
        assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
        let agent: Vec<&str> = AGENT_FLAGS.iter().map(|d| d.spec.name).collect();
        let klog: Vec<&str> = KLOG_FLAGS.iter().map(|d| d.spec.name).collect();
        assert!(agent.is_sorted(), "{agent:?}");
        assert!(klog.is_sorted(), "{klog:?}");
    }

    #[test]
    fn each_flag_reads_back_what_it_was_set_to() {
        let mut args = LowArgs::default();
        for (name, text) in [
            ("backend", "nftables"),
            ("iptables-mode", "legacy"),
            ("log-format", "json"),
            ("output", "json"),
            ("from", "10.4.0.1"),
            ("masq-chain", "IP-MASQ"),
            ("random-fully", "false"),
            ("authoritative", "true"),
            ("v", "3"),
            ("log_file_max_size", "7"),
        ] {
            let entry = lookup(name).unwrap();
            entry.set(&mut args, text).unwrap();
            assert_eq!(entry.text(&args), text, "{name}");
        }
        assert_eq!(args.agent.backend, BackendKind::Nftables);
        assert_eq!(args.klog.log_file_max_size, 7);
    }
}
