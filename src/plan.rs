//! Desired state, per address family, as plain values.
//!
//! `plan` turns a validated [`Config`] and the agent's [`Settings`] into one
//! [`Ruleset`] per enabled family. The masquerade decision itself is
//! [`crate::policy`]'s, compiled there into flat lists; a `Ruleset` carries
//! them. Nothing here knows about iptables or nft syntax: a backend renders a
//! `Ruleset` into its own language. Every address in a `Ruleset` is a typed
//! [`IpNet`] that came through validation, so no text from the config file
//! can reach a command line. What must stay true: a config without
//! `masqueradeCIDRs` and `podCIDRs` plans exactly upstream's list (link-local
//! first, then the family's `nonMasqueradeCIDRs` in config order, duplicates
//! kept) and no source condition, so both backends render what they always
//! rendered.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::config::Config;
use crate::policy;

pub use crate::policy::{Family, PodSources, SourceReturns};

/// A validated nat chain name (`--masq-chain`).
///
/// The rules embed the name in a comment and in restore payloads, so it is
/// restricted to what iptables accepts as a user chain name and what cannot
/// break a quoted string: at most 28 printable ASCII characters, no
/// whitespace, no quotes or backslashes, not starting with `-` or `!`, and not
/// a built-in target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChainName(String);

/// iptables' limit: XT_EXTENSION_MAXNAMELEN (29) including the NUL.
pub const MAX_CHAIN_NAME_LEN: usize = 28;

const RESERVED_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "QUEUE",
    "RETURN",
    "MASQUERADE",
    "SNAT",
    "DNAT",
    "REDIRECT",
    "PREROUTING",
    "INPUT",
    "FORWARD",
    "OUTPUT",
    "POSTROUTING",
];

impl ChainName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ChainName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("chain name must not be empty".into());
        }
        if s.len() > MAX_CHAIN_NAME_LEN {
            return Err(format!(
                "chain name {s:?} is {} characters long; iptables allows at most {MAX_CHAIN_NAME_LEN}",
                s.len()
            ));
        }
        if s.starts_with('-') || s.starts_with('!') {
            return Err(format!("chain name {s:?} must not start with '-' or '!'"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\'))
        {
            return Err(format!(
                "chain name {s:?} contains {c:?}; use printable ASCII without whitespace, quotes or backslashes"
            ));
        }
        if RESERVED_TARGETS.contains(&s) {
            return Err(format!(
                "chain name {s:?} is a built-in chain or target name"
            ));
        }
        Ok(ChainName(s.to_owned()))
    }
}

impl fmt::Display for ChainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One source port interval for `--to-ports`, inclusive on both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Number of ports in the interval.
    pub fn size(self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Transport protocols that get explicit `--to-ports` rules, in rule order.
pub const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Agent-wide settings that shape the rules (from flags, not from the config
/// file). Passed in explicitly; nothing reads flags from globals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub chain: ChainName,
    pub enable_ipv6: bool,
    pub random_fully: bool,
    /// `--authoritative`: render rules whose decision later NAT rules of
    /// other programs cannot override (see the backends).
    pub authoritative: bool,
    pub to_ports: Vec<PortRange>,
}

/// Everything a backend needs to program one address family.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    pub family: Family,
    pub chain: ChainName,
    /// Destinations that keep their source address, in evaluation order
    /// (first match returns, everything else is masqueraded): the
    /// longest-prefix decision compiled by [`policy::compile`]. Without
    /// `masqueradeCIDRs` and `podCIDRs` it is upstream's list: the
    /// link-local range first (unless masqueraded), then the config's CIDRs
    /// of this family in config order, duplicates kept (upstream writes them
    /// all); otherwise disjoint CIDRs sorted by address.
    pub no_masquerade: Vec<IpNet>,
    /// `podCIDRs` of this family: packets from other sources are never
    /// masqueraded, checked before the destinations. None when the config
    /// has no `podCIDRs` range of this family (no source condition at all).
    pub pod_sources: Option<PodSources>,
    /// Add `--random-fully` (fully randomised source ports) if the backend
    /// supports it.
    pub random_fully: bool,
    /// Make the decision final against other programs' NAT rules: the
    /// iptables jump first and exempted traffic accepted, the nftables
    /// chain before `srcnat` and exempted traffic bound to its own address;
    /// in both, packets kube-proxy marked for masquerading (0x4000) are
    /// left to it. False renders exactly what the agent always rendered.
    pub authoritative: bool,
    /// Source port intervals (`--to-ports`) for tcp, udp and sctp, in
    /// order; connections are spread over them in proportion to their sizes,
    /// before the catch-all masquerade.
    pub to_ports: Vec<PortRange>,
}

/// The families the agent programs with these settings, in sync order.
pub fn families(settings: &Settings) -> Vec<Family> {
    if settings.enable_ipv6 {
        vec![Family::Ipv4, Family::Ipv6]
    } else {
        vec![Family::Ipv4]
    }
}

/// Plan the desired state of one family.
pub fn plan(config: &Config, settings: &Settings, family: Family) -> Ruleset {
    let compiled = policy::compile(config, family);
    Ruleset {
        family,
        chain: settings.chain.clone(),
        no_masquerade: compiled.iptables_returns,
        pod_sources: compiled.pod_sources,
        random_fully: settings.random_fully,
        authoritative: settings.authoritative,
        to_ports: settings.to_ports.clone(),
    }
}

/// The non-masquerade list as one interval set holds it: overlapping and
/// adjacent networks merged, duplicates gone, sorted by address.
///
/// An nftables interval set rejects overlapping elements (without
/// `auto-merge`, which we avoid so the kernel's set is exactly what we
/// computed and a delta against it is exact). Matching is unchanged: an
/// address is in the result iff it is in one of `nets`.
pub fn aggregate_for_set(nets: &[IpNet]) -> Vec<IpNet> {
    IpNet::aggregate(&nets.to_vec())
}

/// The chain upstream's agent writes when `--masq-chain` is not given.
const DEFAULT_CHAIN: &str = "IP-MASQ-AGENT";

/// The backend upstream's agent has (`--backend`'s default).
pub const DEFAULT_BACKEND: &str = "iptables";

/// The rule-changing flags that differ from their defaults, in a fixed
/// order and spelling: `--backend` (given as its value), `--masq-chain`,
/// `--enable-ipv6`, `--random-fully`, `--to-ports`,
/// `--nomasq-all-reserved-ranges`. Empty with the defaults.
pub fn rule_flags(settings: &Settings, all_reserved_ranges: bool, backend: &str) -> String {
    let mut flags = Vec::new();
    if backend != DEFAULT_BACKEND {
        flags.push(format!("--backend={backend}"));
    }
    if settings.chain.as_str() != DEFAULT_CHAIN {
        flags.push(format!("--masq-chain={}", settings.chain));
    }
    if settings.enable_ipv6 {
        flags.push("--enable-ipv6=true".to_owned());
    }
    if !settings.random_fully {
        flags.push("--random-fully=false".to_owned());
    }
    if !settings.to_ports.is_empty() {
        let ports: Vec<String> = settings.to_ports.iter().map(ToString::to_string).collect();
        flags.push(format!("--to-ports={}", ports.join(",")));
    }
    if all_reserved_ranges {
        flags.push("--nomasq-all-reserved-ranges=true".to_owned());
    }
    if settings.authoritative {
        flags.push("--authoritative=true".to_owned());
    }
    flags.join(" ")
}

/// The fingerprint of what a node enforces (the `ip_masq_agent_config`
/// metric, `check`'s): the config and the flags that change the rules
/// written from it, so two nodes writing different rules never look alike.
/// With default flags it is the config's alone, as before flags counted.
pub fn fingerprint(
    config: &Config,
    settings: &Settings,
    all_reserved_ranges: bool,
    backend: &str,
) -> String {
    config.fingerprint_with_flags(&rule_flags(settings, all_reserved_ranges, backend))
}

#[cfg(test)]
mod fingerprint_tests {
    use super::*;

    fn settings(flags: &[&str]) -> Settings {
        let mut settings = Settings {
            chain: DEFAULT_CHAIN.parse().unwrap(),
            enable_ipv6: false,
            random_fully: true,
            to_ports: Vec::new(),
            authoritative: false,
        };
        for flag in flags {
            match *flag {
                "chain" => settings.chain = "IP-MASQ".parse().unwrap(),
                "ipv6" => settings.enable_ipv6 = true,
                "random" => settings.random_fully = false,
                "ports" => {
                    settings.to_ports = vec![PortRange {
                        first: 1024,
                        last: 29999,
                    }]
                }
                "authoritative" => settings.authoritative = true,
                _ => unreachable!(),
            }
        }
        settings
    }

    #[test]
    fn every_rule_changing_flag_changes_the_fingerprint() {
        let config = Config::defaults(false);
        let plain = fingerprint(&config, &settings(&[]), false, DEFAULT_BACKEND);
        assert_eq!(
            plain,
            config.fingerprint_with_flags(""),
            "default flags add nothing"
        );
        let mut seen = vec![plain];
        for flags in [
            &["chain"][..],
            &["ipv6"],
            &["random"],
            &["ports"],
            &["authoritative"],
        ] {
            seen.push(fingerprint(
                &config,
                &settings(flags),
                false,
                DEFAULT_BACKEND,
            ));
        }
        seen.push(fingerprint(&config, &settings(&[]), true, DEFAULT_BACKEND));
        seen.push(fingerprint(&config, &settings(&[]), false, "nftables"));
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len(), "{seen:?}");
        assert_eq!(
            rule_flags(
                &settings(&["chain", "ipv6", "random", "ports", "authoritative"]),
                true,
                "nftables"
            ),
            concat!(
                "--backend=nftables --masq-chain=IP-MASQ --enable-ipv6=true --random-fully=false ",
                "--to-ports=1024-29999 --nomasq-all-reserved-ranges=true --authoritative=true"
            )
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_name_rules() {
        assert!("IP-MASQ-AGENT".parse::<ChainName>().is_ok());
        assert!("IP-MASQ".parse::<ChainName>().is_ok());
        assert!("A".repeat(28).parse::<ChainName>().is_ok());
        for bad in [
            "",
            "-X",
            "!X",
            "A B",
            "A\"B",
            "A\\B",
            "RETURN",
            "MASQUERADE",
        ] {
            assert!(bad.parse::<ChainName>().is_err(), "{bad:?} accepted");
        }
        assert!("A".repeat(29).parse::<ChainName>().is_err());
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn aggregation_merges_halves_overlaps_and_duplicates() {
        assert_eq!(
            aggregate_for_set(&nets(&["10.0.0.0/9", "10.128.0.0/9"])),
            nets(&["10.0.0.0/8"])
        );
        assert_eq!(
            aggregate_for_set(&nets(&[
                "192.168.0.0/16",
                "169.254.0.0/16",
                "10.0.0.0/8",
                "10.1.0.0/16",
                "10.0.0.0/8",
                "192.168.4.0/24",
            ])),
            nets(&["10.0.0.0/8", "169.254.0.0/16", "192.168.0.0/16"])
        );
        // Adjacent but not a single prefix: two elements, no gap, no overlap.
        assert_eq!(
            aggregate_for_set(&nets(&["10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"])),
            nets(&["10.0.0.0/7", "12.0.0.0/8"])
        );
        assert_eq!(
            aggregate_for_set(&nets(&["fe80::/10", "fd00::/8", "fd00::/16"])),
            nets(&["fd00::/8", "fe80::/10"])
        );
        assert!(aggregate_for_set(&[]).is_empty());
    }

    fn settings() -> Settings {
        Settings {
            chain: "IP-MASQ-AGENT".parse().unwrap(),
            enable_ipv6: true,
            random_fully: true,
            authoritative: false,
            to_ports: Vec::new(),
        }
    }

    #[test]
    fn a_config_without_the_new_keys_plans_upstreams_list() {
        let mut config = Config::defaults(false);
        config.non_masquerade_cidrs =
            nets(&["192.168.0.0/16", "10.0.0.0/8", "fd00::/8", "10.0.0.0/8"]);
        let v4 = plan(&config, &settings(), Family::Ipv4);
        assert_eq!(
            v4.no_masquerade,
            nets(&[
                "169.254.0.0/16",
                "192.168.0.0/16",
                "10.0.0.0/8",
                "10.0.0.0/8"
            ])
        );
        assert_eq!(v4.pod_sources, None);
        let v6 = plan(&config, &settings(), Family::Ipv6);
        assert_eq!(v6.no_masquerade, nets(&["fe80::/10", "fd00::/8"]));
        config.masq_link_local = true;
        assert_eq!(
            plan(&config, &settings(), Family::Ipv4).no_masquerade,
            nets(&["192.168.0.0/16", "10.0.0.0/8", "10.0.0.0/8"])
        );
    }

    #[test]
    fn the_new_keys_plan_the_compiled_decision() {
        let mut config = Config::defaults(false);
        config.non_masquerade_cidrs = nets(&["10.0.0.0/8", "10.9.5.128/25"]);
        config.masquerade_cidrs = nets(&["10.9.0.0/16"]);
        config.pod_cidrs = nets(&["10.4.0.0/14", "fd40::/64"]);
        for family in [Family::Ipv4, Family::Ipv6] {
            let planned = plan(&config, &settings(), family);
            let compiled = policy::compile(&config, family);
            assert_eq!(planned.no_masquerade, compiled.iptables_returns);
            assert_eq!(planned.pod_sources, compiled.pod_sources);
            // The nftables backend aggregates the list: the compiled set.
            assert_eq!(
                aggregate_for_set(&planned.no_masquerade),
                compiled.nft_no_masquerade
            );
        }
        let v4 = plan(&config, &settings(), Family::Ipv4);
        assert_eq!(
            v4.pod_sources.map(|p| p.iptables),
            Some(SourceReturns::NotIn("10.4.0.0/14".parse().unwrap()))
        );
    }
}
