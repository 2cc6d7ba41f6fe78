//! The iptables backend: the upstream agent's exact rules, written the safe way.
//!
//! State we own per family: the nat chain (`--masq-chain`) and one jump to it
//! at the end of POSTROUTING. A reconcile reads `iptables-save -t nat`,
//! compares our chain and jump with what the ruleset wants, and when they
//! differ sends one `iptables-restore --noflush` transaction: the chain line
//! `:CHAIN - [0:0]` flushes only our chain, so its new content appears
//! atomically, and jump fixes ride in the same transaction. Nothing else in the
//! table is read for more than finding our objects, and nothing else is written.
//!
//! Expected state is predicted in `iptables-save` form (which reorders matches
//! and rounds probabilities); if a given iptables prints differently, the
//! read-back after our own write becomes the reference, so a node is never
//! rewritten just because of formatting.

use std::collections::HashMap;
use std::fmt::Write as _;

use ipnet::IpNet;
use tracing::{debug, warn};

use super::exec::{self, Output};
use super::{Backend, BackendError, CleanupReport, ErrorKind, Outcome};
use crate::plan::{ChainName, Family, PortShare, Ruleset};

const RETURN_COMMENT: &str = "ip-masq-agent: local traffic is not subject to MASQUERADE";
const MASQUERADE_COMMENT: &str =
    "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)";

/// Seconds to wait for the xtables lock, as upstream.
const LOCK_WAIT: &str = "5";

fn jump_comment(chain: &ChainName) -> String {
    format!(
        "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom {chain} chain"
    )
}

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

    fn binary(self, family: Family, tool: Tool) -> String {
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
enum Tool {
    Main,
    Save,
    Restore,
}

/// An iptables release, from `iptables --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version(pub u32, pub u32, pub u32);

/// `--random-fully` appeared in iptables 1.6.2.
const RANDOM_FULLY_SINCE: Version = Version(1, 6, 2);

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

/// Our objects as found in one `iptables-save -t nat` dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub chain_exists: bool,
    /// `-A CHAIN ...` lines in order.
    pub chain_rules: Vec<String>,
    /// `-A POSTROUTING ... -j CHAIN` (or `-g CHAIN`) lines in order.
    pub jumps: Vec<String>,
}

/// Find our chain and every POSTROUTING rule that enters it.
pub fn parse_save(dump: &str, chain: &ChainName) -> Observed {
    let declaration = format!(":{chain} ");
    let rule_prefix = format!("-A {chain} ");
    let mut observed = Observed::default();
    let mut in_nat = false;
    for line in dump.lines() {
        let line = line.trim_end();
        if let Some(table) = line.strip_prefix('*') {
            in_nat = table == "nat";
            continue;
        }
        if !in_nat {
            continue;
        }
        if line.starts_with(&declaration) {
            observed.chain_exists = true;
        } else if line.starts_with(&rule_prefix) {
            observed.chain_rules.push(line.to_owned());
        } else if line.starts_with("-A POSTROUTING ") && enters_chain(line, chain) {
            observed.jumps.push(line.to_owned());
        }
    }
    observed
}

fn enters_chain(line: &str, chain: &ChainName) -> bool {
    let mut tokens = line.split_ascii_whitespace().rev();
    let last = tokens.next();
    let verb = tokens.next();
    last == Some(chain.as_str()) && matches!(verb, Some("-j" | "-g"))
}

/// Our jump as iptables-save prints it.
fn jump_save_line(chain: &ChainName) -> String {
    format!(
        "-A POSTROUTING -m comment --comment \"{}\" -m addrtype ! --dst-type LOCAL -j {chain}",
        jump_comment(chain)
    )
}

/// The jump written by upstream releases before v2.12.2, whose comment held
/// literal quote characters, as iptables-save prints it.
fn legacy_jump_save_line(chain: &ChainName) -> String {
    format!(
        "-A POSTROUTING -m comment --comment \"\\\"{}\\\"\" -m addrtype ! --dst-type LOCAL -j {chain}",
        jump_comment(chain)
    )
}

fn destination(net: &IpNet) -> String {
    // iptables leaves out a match-everything destination.
    if net.prefix_len() == 0 {
        String::new()
    } else {
        format!(" -d {net}")
    }
}

/// iptables stores the statistic probability as a 31-bit fraction and prints
/// it back with 11 decimals.
fn saved_probability(p: f64) -> String {
    let scale = f64::from(0x8000_0000u32);
    let stored = (p * scale).round();
    format!("{:.11}", stored / scale)
}

fn saved_ports(share: &PortShare) -> String {
    if share.range.first == share.range.last {
        share.range.first.to_string()
    } else {
        share.range.to_string()
    }
}

/// The chain's rules as iptables-save will print them.
pub fn predicted_chain_rules(desired: &Ruleset, random_fully: bool) -> Vec<String> {
    let chain = &desired.chain;
    let random = if random_fully { " --random-fully" } else { "" };
    let mut rules = Vec::with_capacity(desired.no_masquerade.len() + desired.port_shares.len() + 1);
    for net in &desired.no_masquerade {
        rules.push(format!(
            "-A {chain}{} -m comment --comment \"{RETURN_COMMENT}\" -j RETURN",
            destination(net)
        ));
    }
    for share in &desired.port_shares {
        let statistic = share
            .probability
            .map(|p| {
                format!(
                    " -m statistic --mode random --probability {}",
                    saved_probability(p)
                )
            })
            .unwrap_or_default();
        rules.push(format!(
            "-A {chain} -p {} -m comment --comment \"{MASQUERADE_COMMENT}\"{statistic} -j MASQUERADE --to-ports {}{random}",
            share.protocol.as_str(),
            saved_ports(share)
        ));
    }
    rules.push(format!(
        "-A {chain} -m comment --comment \"{MASQUERADE_COMMENT}\" -j MASQUERADE{random}"
    ));
    rules
}

/// The restore lines that define the chain's content, in upstream's
/// argument order (the payload of COMPAT §4).
fn restore_chain_lines(desired: &Ruleset, random_fully: bool, out: &mut String) {
    let chain = &desired.chain;
    let random = if random_fully { " --random-fully" } else { "" };
    let masquerade = format!("-m comment --comment \"{MASQUERADE_COMMENT}\" -j MASQUERADE{random}");
    let _ = writeln!(out, ":{chain} - [0:0]");
    for net in &desired.no_masquerade {
        let _ = writeln!(
            out,
            "-A {chain} -m comment --comment \"{RETURN_COMMENT}\" -d {net} -j RETURN"
        );
    }
    for share in &desired.port_shares {
        let _ = write!(
            out,
            "-A {chain} {masquerade} -p {}",
            share.protocol.as_str()
        );
        if let Some(p) = share.probability {
            // Shortest form that reads back as the same f64, as upstream prints.
            let _ = write!(out, " -m statistic --mode random --probability {p}");
        }
        let _ = writeln!(out, " --to-ports {}", share.range);
    }
    let _ = writeln!(out, "-A {chain} {masquerade}");
}

/// What must change to turn `observed` into the desired state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub rewrite_chain: bool,
    pub add_jump: bool,
    /// Rule specs (after `-A POSTROUTING `) to delete, in order.
    pub delete_jumps: Vec<String>,
    pub differences: Vec<String>,
    pub foreign_jumps: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.rewrite_chain && !self.add_jump && self.delete_jumps.is_empty()
    }
}

/// Compare what is live with what is wanted. Pure.
pub fn diff(observed: &Observed, chain: &ChainName, expected_rules: &[String]) -> Changes {
    let mut changes = Changes::default();
    if !observed.chain_exists {
        changes.rewrite_chain = true;
        changes.differences.push(format!("chain {chain} missing"));
    } else if observed.chain_rules != expected_rules {
        changes.rewrite_chain = true;
        changes.differences.push(format!(
            "chain {chain} holds {} rule(s) that differ from the {} wanted",
            observed.chain_rules.len(),
            expected_rules.len()
        ));
    }
    let ours = jump_save_line(chain);
    let legacy = legacy_jump_save_line(chain);
    let mut seen_ours = false;
    for jump in &observed.jumps {
        let spec = jump.trim_start_matches("-A POSTROUTING ").to_owned();
        if *jump == ours {
            if seen_ours {
                changes.delete_jumps.push(spec);
                changes
                    .differences
                    .push("duplicate jump from POSTROUTING removed".to_owned());
            }
            seen_ours = true;
        } else if *jump == legacy {
            changes.delete_jumps.push(spec);
            changes.differences.push(
                "jump with the quoted comment of upstream releases before v2.12.2 replaced"
                    .to_owned(),
            );
        } else {
            changes.foreign_jumps.push(jump.clone());
        }
    }
    if !seen_ours {
        changes.add_jump = true;
        changes
            .differences
            .push(format!("jump from POSTROUTING to {chain} missing"));
    }
    changes
}

/// The one restore transaction that applies `changes`.
fn transaction(desired: &Ruleset, random_fully: bool, changes: &Changes) -> String {
    let mut out = String::from("*nat\n");
    if changes.rewrite_chain {
        restore_chain_lines(desired, random_fully, &mut out);
    }
    for spec in &changes.delete_jumps {
        let _ = writeln!(out, "-D POSTROUTING {spec}");
    }
    if changes.add_jump {
        // Written as the check-then-append upstream does: at the end of
        // POSTROUTING, after kube-proxy's and CNI rules, and never moved.
        let _ = writeln!(
            out,
            "-A POSTROUTING -m comment --comment \"{}\" -m addrtype ! --dst-type LOCAL -j {}",
            jump_comment(&desired.chain),
            desired.chain
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// What we learned reading back our own write, per family.
#[derive(Debug, Clone)]
struct ReadBack {
    predicted: Vec<String>,
    actual: Vec<String>,
}

/// The iptables implementation of [`Backend`].
#[derive(Debug)]
pub struct Iptables {
    variant: Variant,
    version: Option<Version>,
    read_back: HashMap<Family, ReadBack>,
}

impl Iptables {
    pub fn new(variant: Variant) -> Self {
        Iptables {
            variant,
            version: None,
            read_back: HashMap::new(),
        }
    }

    /// Ask the binary for its version once; a failure is retried next time.
    pub async fn probe_version(&mut self) -> Result<Version, BackendError> {
        if let Some(version) = self.version {
            return Ok(version);
        }
        let program = self.variant.binary(Family::Ipv4, Tool::Main);
        let out = exec::run(&program, &["--version"], None).await?;
        let version = parse_version(&out.stdout).ok_or_else(|| {
            BackendError::new(
                ErrorKind::Rejected,
                &format!("{program} --version"),
                format!("unrecognised version text {:?}", out.stdout.trim()),
            )
        })?;
        self.version = Some(version);
        Ok(version)
    }

    /// `--random-fully` only where the binary knows it; an unknown version
    /// (render without iptables installed) assumes a current one.
    fn random_fully(&self, desired: &Ruleset) -> bool {
        desired.random_fully && self.version.is_none_or(|v| v >= RANDOM_FULLY_SINCE)
    }

    fn restore_args(&self) -> Vec<&'static str> {
        // `-w` on restore appeared with --random-fully's release.
        if self.version.is_none_or(|v| v >= RANDOM_FULLY_SINCE) {
            vec!["-w", LOCK_WAIT, "--noflush"]
        } else {
            vec!["--noflush"]
        }
    }

    async fn save(&self, family: Family) -> Result<Output, BackendError> {
        let program = self.variant.binary(family, Tool::Save);
        exec::run(&program, &["-t", "nat"], None).await
    }

    async fn observe(&self, family: Family, chain: &ChainName) -> Result<Observed, BackendError> {
        Ok(parse_save(&self.save(family).await?.stdout, chain))
    }

    async fn restore(&self, family: Family, payload: &str) -> Result<(), BackendError> {
        let program = self.variant.binary(family, Tool::Restore);
        let args = self.restore_args();
        debug!(family = %family, command = %program, payload, "iptables-restore");
        exec::run(&program, &args, Some(payload)).await.map(drop)
    }

    /// Whether the legacy nat table is loaded in this network namespace.
    /// Reading it otherwise would load the kernel module and create it.
    async fn legacy_table_present(family: Family) -> bool {
        let names = match family {
            Family::Ipv4 => "/proc/net/ip_tables_names",
            Family::Ipv6 => "/proc/net/ip6_tables_names",
        };
        tokio::fs::read_to_string(names)
            .await
            .map(|text| text.lines().any(|l| l.trim() == "nat"))
            .unwrap_or(false)
    }
}

impl Backend for Iptables {
    fn describe(&self) -> String {
        match self.version {
            Some(Version(a, b, c)) => format!("iptables ({}) v{a}.{b}.{c}", self.variant.label()),
            None => format!("iptables ({})", self.variant.label()),
        }
    }

    async fn probe(&mut self) -> Result<(), BackendError> {
        self.probe_version().await.map(drop)
    }

    fn apply_command(&self, family: Family) -> &'static str {
        match family {
            Family::Ipv4 => "iptables-restore --noflush",
            Family::Ipv6 => "ip6tables-restore --noflush",
        }
    }

    fn render(&self, desired: &Ruleset) -> String {
        let mut out = String::from("*nat\n");
        restore_chain_lines(desired, self.random_fully(desired), &mut out);
        out.push_str("COMMIT\n");
        out
    }

    async fn reconcile(&mut self, desired: &Ruleset) -> Result<Outcome, BackendError> {
        self.probe_version().await?;
        let family = desired.family;
        let chain = &desired.chain;
        let random_fully = self.random_fully(desired);
        let predicted = predicted_chain_rules(desired, random_fully);
        let expected = match self.read_back.get(&family) {
            Some(rb) if rb.predicted == predicted => rb.actual.clone(),
            _ => predicted.clone(),
        };

        let observed = self.observe(family, chain).await?;
        let changes = diff(&observed, chain, &expected);
        if changes.is_empty() {
            return Ok(Outcome {
                wrote: false,
                differences: Vec::new(),
                foreign_jumps: changes.foreign_jumps,
            });
        }
        let payload = transaction(desired, random_fully, &changes);
        self.restore(family, &payload).await?;

        // Read back: the write must have produced one jump and our chain.
        let after = self.observe(family, chain).await?;
        let check = diff(&after, chain, &after.chain_rules);
        if !after.chain_exists || check.add_jump || !check.delete_jumps.is_empty() {
            return Err(BackendError::new(
                ErrorKind::Verify,
                &self.variant.binary(family, Tool::Save),
                format!("after writing, {}", check.differences.join("; ")),
            ));
        }
        if changes.rewrite_chain {
            if after.chain_rules != predicted {
                warn!(
                    family = %family,
                    "iptables prints our rules differently than predicted; using its own form as the reference"
                );
            }
            self.read_back.insert(
                family,
                ReadBack {
                    predicted,
                    actual: after.chain_rules,
                },
            );
        }
        Ok(Outcome {
            wrote: true,
            differences: changes.differences,
            foreign_jumps: changes.foreign_jumps,
        })
    }

    async fn cleanup(
        &mut self,
        family: Family,
        chain: &ChainName,
    ) -> Result<CleanupReport, BackendError> {
        let mut report = Vec::new();
        let name = format!("{} {}", self.variant.label(), family);
        if self.variant == Variant::Legacy && !Self::legacy_table_present(family).await {
            return Ok(report);
        }
        let observed = match self.observe(family, chain).await {
            Ok(observed) => observed,
            Err(err) if err.kind == ErrorKind::NotFound => return Ok(report),
            Err(err) => return Err(err),
        };
        let ours = jump_save_line(chain);
        let legacy = legacy_jump_save_line(chain);
        let mut payload = String::from("*nat\n");
        let mut foreign = Vec::new();
        for jump in &observed.jumps {
            if *jump == ours || *jump == legacy {
                let _ = writeln!(
                    payload,
                    "-D POSTROUTING {}",
                    jump.trim_start_matches("-A POSTROUTING ")
                );
                report.push(format!("{name}: removed jump to {chain}"));
            } else {
                foreign.push(jump.clone());
            }
        }
        if observed.chain_exists {
            if foreign.is_empty() {
                let _ = writeln!(payload, "-F {chain}\n-X {chain}");
                report.push(format!("{name}: removed chain {chain}"));
            } else {
                report.push(format!(
                    "{name}: kept chain {chain}: still entered by rules we do not own: {}",
                    foreign.join(" | ")
                ));
            }
        }
        if report.is_empty() {
            return Ok(report);
        }
        payload.push_str("COMMIT\n");
        self.probe_version().await?;
        self.restore(family, &payload).await?;
        Ok(report)
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{PortRange, port_shares};

    fn chain(name: &str) -> ChainName {
        name.parse().unwrap()
    }

    fn ruleset(nets: &[&str]) -> Ruleset {
        Ruleset {
            family: Family::Ipv4,
            chain: chain("IP-MASQ-AGENT"),
            no_masquerade: nets.iter().map(|n| n.parse().unwrap()).collect(),
            pod_sources: None,
            random_fully: true,
            port_shares: Vec::new(),
        }
    }

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn version_text() {
        assert_eq!(
            parse_version("iptables v1.8.9 (nf_tables)\n"),
            Some(Version(1, 8, 9))
        );
        assert_eq!(
            parse_version("ip6tables-legacy v1.6.1\n"),
            Some(Version(1, 6, 1))
        );
        assert_eq!(parse_version("iptables v1.8\n"), Some(Version(1, 8, 0)));
        assert_eq!(parse_version("nonsense"), None);
    }

    #[test]
    fn render_is_the_upstream_payload() {
        let backend = Iptables::new(Variant::Nft);
        let text = backend.render(&ruleset(&["169.254.0.0/16", "10.0.0.0/8"]));
        assert_eq!(
            text,
            "*nat\n\
:IP-MASQ-AGENT - [0:0]\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 169.254.0.0/16 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -d 10.0.0.0/8 -j RETURN\n\
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully\n\
COMMIT\n"
        );
    }

    #[test]
    fn render_to_ports() {
        let mut rs = ruleset(&[]);
        rs.port_shares = port_shares(&[
            PortRange {
                first: 1024,
                last: 29999,
            },
            PortRange {
                first: 32768,
                last: 65535,
            },
        ]);
        let text = Iptables::new(Variant::Nft).render(&rs);
        let got = lines(&text);
        assert_eq!(got.len(), 10);
        assert_eq!(
            got[2],
            "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully -p tcp -m statistic --mode random --probability 0.469292562840114 --to-ports 1024-29999"
        );
        assert_eq!(
            got[3],
            "-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --random-fully -p tcp --to-ports 32768-65535"
        );
        assert!(got[4].contains(" -p udp "));
        assert!(got[6].contains(" -p sctp "));
    }

    #[test]
    fn predicted_save_form() {
        let mut rs = ruleset(&["10.0.0.0/8", "0.0.0.0/0"]);
        rs.port_shares = port_shares(&[
            PortRange {
                first: 1024,
                last: 29999,
            },
            PortRange {
                first: 40000,
                last: 40000,
            },
        ]);
        rs.random_fully = false;
        let got = predicted_chain_rules(&rs, false);
        assert_eq!(
            got,
            lines(
                "-A IP-MASQ-AGENT -d 10.0.0.0/8 -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN
-A IP-MASQ-AGENT -p tcp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -m statistic --mode random --probability 0.99996548984 -j MASQUERADE --to-ports 1024-29999
-A IP-MASQ-AGENT -p tcp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --to-ports 40000
-A IP-MASQ-AGENT -p udp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -m statistic --mode random --probability 0.99996548984 -j MASQUERADE --to-ports 1024-29999
-A IP-MASQ-AGENT -p udp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --to-ports 40000
-A IP-MASQ-AGENT -p sctp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -m statistic --mode random --probability 0.99996548984 -j MASQUERADE --to-ports 1024-29999
-A IP-MASQ-AGENT -p sctp -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE --to-ports 40000
-A IP-MASQ-AGENT -m comment --comment \"ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)\" -j MASQUERADE"
            )
        );
    }

    #[test]
    fn probability_as_iptables_prints_it() {
        assert_eq!(saved_probability(28976.0 / 61744.0), "0.46929256292");
        assert_eq!(saved_probability(0.5), "0.50000000000");
    }

    const DUMP: &str = "# Generated by iptables-save v1.8.9 on Thu Nov 26 12:17:42 2026
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
:IP-MASQ-AGENT - [0:0]
:IP-MASQ-AGENT-2 - [0:0]
-A POSTROUTING -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment \"\\\"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain\\\"\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A POSTROUTING -m comment --comment \"ip-masq: gke\" -j IP-MASQ-AGENT
-A POSTROUTING -j IP-MASQ-AGENT-2
-A IP-MASQ-AGENT -d 10.0.0.0/8 -j RETURN
-A IP-MASQ-AGENT-2 -j RETURN
COMMIT
*filter
:IP-MASQ-AGENT - [0:0]
-A IP-MASQ-AGENT -j ACCEPT
COMMIT
";

    #[test]
    fn parse_finds_only_our_objects_in_nat() {
        let observed = parse_save(DUMP, &chain("IP-MASQ-AGENT"));
        assert!(observed.chain_exists);
        assert_eq!(
            observed.chain_rules,
            vec!["-A IP-MASQ-AGENT -d 10.0.0.0/8 -j RETURN"]
        );
        assert_eq!(observed.jumps.len(), 4);
    }

    #[test]
    fn diff_sorts_jumps() {
        let c = chain("IP-MASQ-AGENT");
        let observed = parse_save(DUMP, &c);
        let changes = diff(&observed, &c, &observed.chain_rules.clone());
        assert!(!changes.rewrite_chain);
        assert!(!changes.add_jump);
        assert_eq!(changes.delete_jumps.len(), 2, "{changes:?}");
        assert!(changes.delete_jumps[0].starts_with("-m comment --comment \"\\\"ip-masq-agent"));
        assert_eq!(
            changes.foreign_jumps,
            vec!["-A POSTROUTING -m comment --comment \"ip-masq: gke\" -j IP-MASQ-AGENT"]
        );
    }

    #[test]
    fn empty_node_needs_everything() {
        let c = chain("IP-MASQ-AGENT");
        let changes = diff(&Observed::default(), &c, &[]);
        assert!(changes.rewrite_chain && changes.add_jump);
        let text = transaction(&ruleset(&[]), true, &changes);
        assert!(text.starts_with("*nat\n:IP-MASQ-AGENT - [0:0]\n"));
        assert!(text.ends_with(
            "-A POSTROUTING -m comment --comment \"ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain\" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT\nCOMMIT\n"
        ));
    }

    #[test]
    fn matching_node_needs_nothing() {
        let c = chain("IP-MASQ-AGENT");
        let rs = ruleset(&["10.0.0.0/8"]);
        let rules = predicted_chain_rules(&rs, true);
        let observed = Observed {
            chain_exists: true,
            chain_rules: rules.clone(),
            jumps: vec![jump_save_line(&c)],
        };
        assert!(diff(&observed, &c, &rules).is_empty());
    }

    #[test]
    fn variant_choice_follows_the_wrapper() {
        let e = |a, b, c, d| VariantEvidence {
            nft_kubelet_chains: a,
            legacy_kubelet_chains: b,
            nft_rules: c,
            legacy_rules: d,
        };
        assert_eq!(choose_variant(&e(1, 1, 0, 100)), Variant::Nft);
        assert_eq!(choose_variant(&e(0, 1, 100, 0)), Variant::Legacy);
        assert_eq!(choose_variant(&e(0, 0, 3, 10)), Variant::Legacy);
        assert_eq!(choose_variant(&e(0, 0, 10, 10)), Variant::Nft);
        assert_eq!(choose_variant(&e(0, 0, 0, 0)), Variant::Nft);
    }

    #[test]
    fn binaries_per_variant() {
        assert_eq!(
            Variant::Nft.binary(Family::Ipv6, Tool::Restore),
            "ip6tables-nft-restore"
        );
        assert_eq!(
            Variant::Legacy.binary(Family::Ipv4, Tool::Save),
            "iptables-legacy-save"
        );
        assert_eq!(Variant::Plain.binary(Family::Ipv4, Tool::Main), "iptables");
    }
}
