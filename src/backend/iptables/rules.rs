//! The iptables rules, pure: what our chain and jump look like in the restore
//! language we write and in the form iptables prints back, how to find our
//! objects in what was read, the difference between the two, and the one
//! transaction that removes it.
//!
//! What must stay true: the restore text is upstream's payload (COMPAT §4),
//! byte for byte; the predicted form is what `iptables -S` prints for it
//! (matches reordered, probabilities rounded); only our chain and the
//! POSTROUTING rules that enter it are ever looked at or changed. With
//! `podCIDRs` the chain starts with the pod-source RETURN rules (the policy's
//! [`SourceReturns`]); without, it holds exactly what it always held.
//! With `--authoritative` the jump is inserted first in POSTROUTING and kept
//! there, the chain starts with a RETURN of packets kube-proxy marked for
//! masquerading (so they still reach its KUBE-POSTROUTING), and exempted
//! destinations end the nat traversal with ACCEPT instead of RETURN; without
//! the flag every line is what it was.

use std::fmt::Write as _;

use ipnet::IpNet;

use crate::backend::CleanupReport;
use crate::plan::{ChainName, PORT_PROTOCOLS, PortRange, Protocol, Ruleset, SourceReturns};

const RETURN_COMMENT: &str = "ip-masq-agent: local traffic is not subject to MASQUERADE";
const POD_SOURCE_COMMENT: &str =
    "ip-masq-agent: traffic from outside podCIDRs is not subject to MASQUERADE";
const MASQUERADE_COMMENT: &str =
    "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)";
const MARKED_COMMENT: &str =
    "ip-masq-agent: traffic kube-proxy marked for masquerading is left to KUBE-POSTROUTING";
/// kube-proxy's KUBE-MARK-MASQ bit, as `-m mark` takes and prints it.
const KUBE_MARK_MASQ: &str = "0x4000/0x4000";

/// What a rule for an exempted destination does: RETURN (upstream's: the
/// rest of POSTROUTING still runs) or, with `--authoritative`, ACCEPT (the
/// nat table's traversal ends here).
fn exempt_verdict(desired: &Ruleset) -> &'static str {
    if desired.authoritative {
        "ACCEPT"
    } else {
        "RETURN"
    }
}

pub(super) fn jump_comment(chain: &ChainName) -> String {
    format!(
        "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom {chain} chain"
    )
}

/// Our objects as read from the kernel: `iptables -t nat -S CHAIN` and
/// `iptables -t nat -S POSTROUTING`, never the whole table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub chain_exists: bool,
    /// `-A CHAIN ...` lines in order.
    pub chain_rules: Vec<String>,
    /// `-A POSTROUTING ... -j CHAIN` (or `-g CHAIN`) lines in order.
    pub jumps: Vec<String>,
    /// The first `-A POSTROUTING` line, whatever it does (`--authoritative`
    /// wants it to be our jump).
    pub first_rule: Option<String>,
}

/// Our objects from the two listings: `chain` is what `-S CHAIN` printed
/// (None when the chain does not exist), `postrouting` what `-S POSTROUTING`
/// printed. A rule prints the same way in `-S` as in `iptables-save`.
pub fn parse_listing(chain: &ChainName, listing: Option<&str>, postrouting: &str) -> Observed {
    let rule_prefix = format!("-A {chain} ");
    let mut observed = Observed {
        chain_exists: listing.is_some(),
        ..Observed::default()
    };
    for line in listing.unwrap_or_default().lines() {
        let line = line.trim_end();
        if line.starts_with(&rule_prefix) {
            observed.chain_rules.push(line.to_owned());
        }
    }
    for line in postrouting.lines() {
        let line = line.trim_end();
        if !line.starts_with("-A POSTROUTING ") {
            continue;
        }
        if observed.first_rule.is_none() {
            observed.first_rule = Some(line.to_owned());
        }
        if enters_chain(line, chain) {
            observed.jumps.push(line.to_owned());
        }
    }
    observed
}

/// The rules of `-S CHAIN`'s output, whatever chain it lists.
pub fn count_rules(listing: &str) -> usize {
    listing.lines().filter(|l| l.starts_with("-A ")).count()
}

pub(super) fn enters_chain(line: &str, chain: &ChainName) -> bool {
    let mut tokens = line.split_ascii_whitespace().rev();
    let last = tokens.next();
    let verb = tokens.next();
    last == Some(chain.as_str()) && matches!(verb, Some("-j" | "-g"))
}

/// Our jump as iptables prints it.
pub(super) fn jump_save_line(chain: &ChainName) -> String {
    format!(
        "-A POSTROUTING -m comment --comment \"{}\" -m addrtype ! --dst-type LOCAL -j {chain}",
        jump_comment(chain)
    )
}

/// The jump written by upstream releases before v2.12.2, whose comment held
/// literal quote characters, as iptables prints it.
pub(super) fn legacy_jump_save_line(chain: &ChainName) -> String {
    format!(
        "-A POSTROUTING -m comment --comment \"\\\"{}\\\"\" -m addrtype ! --dst-type LOCAL -j {chain}",
        jump_comment(chain)
    )
}

pub(super) fn destination(net: &IpNet) -> String {
    // iptables leaves out a match-everything destination.
    if net.prefix_len() == 0 {
        String::new()
    } else {
        format!(" -d {net}")
    }
}

/// iptables stores the statistic probability as a 31-bit fraction and prints
/// it back with 11 decimals.
pub(super) fn saved_probability(p: f64) -> String {
    let scale = f64::from(0x8000_0000u32);
    let stored = (p * scale).round();
    format!("{:.11}", stored / scale)
}

pub(super) fn saved_ports(share: &PortShare) -> String {
    if share.range.first == share.range.last {
        share.range.first.to_string()
    } else {
        share.range.to_string()
    }
}

/// The source matches of the pod-source rules, in rule order: `! -s POD`
/// when the pod ranges are one CIDR, else `-s CIDR` per CIDR outside them.
/// Empty without `podCIDRs` (the chain is upstream's) and when the pod
/// range is everything (no source is outside it).
fn source_matches(desired: &Ruleset) -> Vec<String> {
    match desired.pod_sources.as_ref().map(|p| &p.iptables) {
        None => Vec::new(),
        Some(SourceReturns::NotIn(net)) if net.prefix_len() == 0 => Vec::new(),
        Some(SourceReturns::NotIn(net)) => vec![format!("! -s {net}")],
        Some(SourceReturns::In(nets)) => nets.iter().map(|net| format!("-s {net}")).collect(),
    }
}

/// The chain's rules as iptables will print them.
pub fn predicted_chain_rules(desired: &Ruleset, random_fully: bool) -> Vec<String> {
    let chain = &desired.chain;
    let random = if random_fully { " --random-fully" } else { "" };
    let mut rules = Vec::with_capacity(
        desired.no_masquerade.len() + desired.to_ports.len() * PORT_PROTOCOLS.len() + 2,
    );
    if desired.authoritative {
        rules.push(format!(
            "-A {chain} -m comment --comment \"{MARKED_COMMENT}\" -m mark --mark {KUBE_MARK_MASQ} -j RETURN"
        ));
    }
    for source in source_matches(desired) {
        rules.push(format!(
            "-A {chain} {source} -m comment --comment \"{POD_SOURCE_COMMENT}\" -j RETURN"
        ));
    }
    let verdict = exempt_verdict(desired);
    for net in &desired.no_masquerade {
        rules.push(format!(
            "-A {chain}{} -m comment --comment \"{RETURN_COMMENT}\" -j {verdict}",
            destination(net)
        ));
    }
    for share in &port_shares(&desired.to_ports) {
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
pub(super) fn restore_chain_lines(desired: &Ruleset, random_fully: bool, out: &mut String) {
    let chain = &desired.chain;
    let random = if random_fully { " --random-fully" } else { "" };
    let masquerade = format!("-m comment --comment \"{MASQUERADE_COMMENT}\" -j MASQUERADE{random}");
    let _ = writeln!(out, ":{chain} - [0:0]");
    // Authoritative: kube-proxy's masquerade decision (its mark) goes
    // first, and is carried out by its KUBE-POSTROUTING after our chain.
    if desired.authoritative {
        let _ = writeln!(
            out,
            "-A {chain} -m comment --comment \"{MARKED_COMMENT}\" -m mark --mark {KUBE_MARK_MASQ} -j RETURN"
        );
    }
    // Then: a packet from outside podCIDRs is never masqueraded.
    for source in source_matches(desired) {
        let _ = writeln!(
            out,
            "-A {chain} -m comment --comment \"{POD_SOURCE_COMMENT}\" {source} -j RETURN"
        );
    }
    let verdict = exempt_verdict(desired);
    for net in &desired.no_masquerade {
        let _ = writeln!(
            out,
            "-A {chain} -m comment --comment \"{RETURN_COMMENT}\" -d {net} -j {verdict}"
        );
    }
    for share in &port_shares(&desired.to_ports) {
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

/// Compare what is live with what is wanted (the jump anywhere in
/// POSTROUTING, as upstream's check-then-append). Pure.
#[cfg(test)]
pub fn diff(observed: &Observed, chain: &ChainName, expected_rules: &[String]) -> Changes {
    diff_placed(observed, chain, expected_rules, false)
}

/// [`diff`], and with `first` (`--authoritative`) our jump must also be the
/// first rule of POSTROUTING: a rule of others inserted ahead of it is
/// drift, repaired by moving our own jump (deleted and inserted again at
/// position 1 in the same transaction); the other rule is never touched.
pub fn diff_placed(
    observed: &Observed,
    chain: &ChainName,
    expected_rules: &[String],
    first: bool,
) -> Changes {
    let mut changes = Changes::default();
    if !observed.chain_exists {
        changes.rewrite_chain = true;
        changes.differences.push(format!("chain {chain} missing"));
    } else if observed.chain_rules != expected_rules {
        changes.rewrite_chain = true;
        changes.differences.push(crate::backend::drift::describe(
            chain.as_str(),
            &observed.chain_rules,
            expected_rules,
            String::clone,
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
    } else if first {
        // `-D` deletes the first rule that matches, so a duplicate cannot
        // be deleted without taking the copy in front: every copy of ours
        // goes and one comes back first.
        let copies = observed.jumps.iter().filter(|j| **j == ours).count();
        let in_front = observed.first_rule.as_ref() == Some(&ours);
        if !in_front || copies > 1 {
            let spec = ours.trim_start_matches("-A POSTROUTING ").to_owned();
            changes.delete_jumps.retain(|s| *s != spec);
            changes
                .delete_jumps
                .extend(std::iter::repeat_n(spec, copies));
            changes.add_jump = true;
        }
        if !in_front {
            changes.differences.push(format!(
                "jump from POSTROUTING to {chain} is not the first rule (first: {}); moved first",
                observed.first_rule.as_deref().unwrap_or("none")
            ));
        }
    }
    changes
}

/// The one restore transaction that applies `changes`.
pub(super) fn transaction(desired: &Ruleset, random_fully: bool, changes: &Changes) -> String {
    let mut out = String::from("*nat\n");
    if changes.rewrite_chain {
        restore_chain_lines(desired, random_fully, &mut out);
    }
    for spec in &changes.delete_jumps {
        let _ = writeln!(out, "-D POSTROUTING {spec}");
    }
    if changes.add_jump {
        // Written as the check-then-append upstream does: at the end of
        // POSTROUTING, after kube-proxy's and CNI rules, and never moved;
        // with `--authoritative`, first, before every other program's.
        let verb = if desired.authoritative {
            "-I POSTROUTING 1"
        } else {
            "-A POSTROUTING"
        };
        let _ = writeln!(
            out,
            "{verb} -m comment --comment \"{}\" -m addrtype ! --dst-type LOCAL -j {}",
            jump_comment(&desired.chain),
            desired.chain
        );
    }
    out.push_str("COMMIT\n");
    out
}

/// One port share of the masquerade: connections of `protocol` that reach
/// this rule are sent to `range` with probability `probability` (None for the
/// last share of a protocol, which takes all that remain). This is the
/// `-m statistic --mode random --probability` of the restore text.
#[derive(Debug, Clone, PartialEq)]
pub struct PortShare {
    pub protocol: Protocol,
    pub range: PortRange,
    pub probability: Option<f64>,
}

/// Split connections over the port intervals in proportion to their sizes.
///
/// Rules are evaluated in order, so the rule for interval i must take
/// size(i) / (size(i) + size(i+1) + ...) of what reaches it; the last
/// interval of each protocol takes the rest unconditionally.
pub fn port_shares(ranges: &[PortRange]) -> Vec<PortShare> {
    let mut shares = Vec::with_capacity(ranges.len() * PORT_PROTOCOLS.len());
    for protocol in PORT_PROTOCOLS {
        let mut remaining: u64 = ranges.iter().map(|r| u64::from(r.size())).sum();
        for (i, range) in ranges.iter().enumerate() {
            let size = u64::from(range.size());
            let probability = if i + 1 < ranges.len() {
                Some(size as f64 / remaining as f64)
            } else {
                None
            };
            remaining -= size;
            shares.push(PortShare {
                protocol,
                range: *range,
                probability,
            });
        }
    }
    shares
}

/// What `cleanup` does to a node holding `observed`: the restore payload
/// (None when nothing is ours) and one line per object for the operator.
/// Our jumps go; the chain goes only when nothing else enters it, and is
/// otherwise reported as kept, with the rules that enter it.
pub fn removal(
    observed: &Observed,
    chain: &ChainName,
    name: &str,
) -> (Option<String>, CleanupReport) {
    let mut report = CleanupReport::default();
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
            report
                .removed
                .push(format!("{name}: removed jump to {chain}"));
        } else {
            foreign.push(jump.clone());
        }
    }
    if observed.chain_exists {
        if foreign.is_empty() {
            let _ = writeln!(payload, "-F {chain}\n-X {chain}");
            report
                .removed
                .push(format!("{name}: removed chain {chain}"));
        } else {
            let rules: Vec<String> = foreign
                .iter()
                .map(|r| r.trim_start_matches("-A POSTROUTING ").to_owned())
                .collect();
            report.kept.push(format!(
                "{name}: kept chain {chain}: still entered by {} rule(s) we do not own, in nat POSTROUTING: {}; \
delete them (iptables -t nat -D POSTROUTING RULE) and run cleanup again",
                foreign.len(),
                crate::backend::drift::named(&rules, rules.len())
            ));
        }
    }
    if payload == "*nat\n" {
        return (None, report);
    }
    payload.push_str("COMMIT\n");
    (Some(payload), report)
}
