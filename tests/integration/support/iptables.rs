//! The two iptables backends and reading back what the kernel holds.
//!
//! Results are read with `iptables-save`, never compared with the text the
//! agent sent: save output is what a node operator sees, and it reorders
//! matches and rounds numbers (COMPAT §4).

use std::fmt;

use super::netns::Netns;
use super::process::{COMMAND_TIMEOUT, describe, run_bounded};

/// An iptables backend; every rule test runs once per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nft,
    Legacy,
}

/// An address family: `iptables` or `ip6tables`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Mode {
    /// The value of the agent's `--iptables-mode`.
    pub fn flag(self) -> &'static str {
        match self {
            Mode::Nft => "nft",
            Mode::Legacy => "legacy",
        }
    }

    /// `--iptables-mode=nft` or `--iptables-mode=legacy`.
    pub fn agent_arg(self) -> String {
        format!("--iptables-mode={}", self.flag())
    }

    /// The backend the agent must leave alone in this test.
    pub fn other(self) -> Mode {
        match self {
            Mode::Nft => Mode::Legacy,
            Mode::Legacy => Mode::Nft,
        }
    }

    /// e.g. `ip6tables-legacy` (suffix "") or `iptables-nft-save` (suffix
    /// "-save"): the explicit variant, never the alternatives symlink.
    pub fn tool(self, family: Family, suffix: &str) -> String {
        let base = match family {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        };
        format!("{base}-{}{suffix}", self.flag())
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

/// Runs `iptables-<mode> -w 5 LINE` (or ip6tables) in `ns`; panics if it
/// fails. `line` is split like a shell would (see `shell_words`), so setup
/// steps read as the iptables commands an operator would type. `-w` because
/// legacy's lock is shared with the agent under test.
pub fn ipt(ns: &Netns, mode: Mode, family: Family, line: &str) {
    let words = shell_words(line);
    let tool = mode.tool(family, "");
    let mut args = vec![tool.as_str(), "-w", "5"];
    args.extend(words.iter().map(String::as_str));
    ns.run(&args);
}

/// Splits a command line into words: whitespace separates words except
/// inside '…' or "…", which are taken literally (no escapes), so
/// `--comment '"quoted"'` passes the quotes through. Panics on an unclosed
/// quote: these lines are test literals.
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some(q) if q == c => break,
                        Some(other) => w.push(other),
                        None => panic!("unclosed {c} in {line:?}"),
                    }
                }
            }
            c if c.is_whitespace() => words.extend(word.take()),
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    words
}

/// `iptables-save -t nat` of that backend and family, normalised: comment
/// lines (timestamps, version banners, "legacy tables present" warnings)
/// dropped and chain counters set to `[0:0]`; every other byte verbatim.
pub fn save(ns: &Netns, mode: Mode, family: Family) -> String {
    normalise(&raw_save(ns, mode, family, false))
}

/// `iptables-save -c -t nat` with comment lines dropped but every counter
/// kept, to observe whether the agent rewrote a rule.
pub fn save_with_counters(ns: &Netns, mode: Mode, family: Family) -> String {
    raw_save(ns, mode, family, true)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Loads `from`'s nat table of `family` into `to` (whole, replacing it):
/// a node where both variants hold our chain, which a sync by the agent no
/// longer leaves behind (it removes ours from the variant it does not use).
pub fn copy_nat(ns: &Netns, from: Mode, to: Mode, family: Family) {
    let file = tempfile::NamedTempFile::new().expect("temp file for the copy");
    std::fs::write(file.path(), save(ns, from, family)).expect("write the copy");
    let tool = to.tool(family, "-restore");
    let out = run_bounded(ns.command(&tool).arg(file.path()), COMMAND_TIMEOUT);
    assert!(out.status.success(), "{}", describe(&tool, &out));
}

fn raw_save(ns: &Netns, mode: Mode, family: Family, counters: bool) -> String {
    let tool = mode.tool(family, "-save");
    let mut args = vec![tool.as_str()];
    if counters {
        args.push("-c");
    }
    args.extend_from_slice(&["-t", "nat"]);
    let out = ns.exec(&args);
    assert!(
        out.status.success(),
        "{}",
        describe(&format!("in {}: {}", ns.name(), args.join(" ")), &out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// See `save`. Only chain lines (`:NAME POLICY [packets:bytes]`) carry
/// counters in output without `-c`; legacy counts real packets there.
pub fn normalise(raw: &str) -> String {
    raw.lines()
        .filter(|l| !l.starts_with('#'))
        .map(
            |l| match l.strip_prefix(':').and_then(|_| l.rsplit_once(' ')) {
                Some((head, counters)) if is_counter(counters) => format!("{head} [0:0]\n"),
                _ => format!("{l}\n"),
            },
        )
        .collect()
}

/// `[N:M]` with decimal N and M.
pub fn is_counter(token: &str) -> bool {
    token
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .and_then(|t| t.split_once(':'))
        .is_some_and(|(p, b)| {
            !p.is_empty()
                && !b.is_empty()
                && p.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        })
}

/// The packet count of the first rule line (in `save_with_counters` output)
/// that contains `needle`, e.g. `-j MASQUERADE`.
pub fn packets_of(save_c: &str, needle: &str) -> Option<u64> {
    save_c
        .lines()
        .find(|l| l.starts_with('[') && l.contains(needle))
        .and_then(|l| l.split_once(' '))
        .and_then(|(counter, _)| counter.strip_prefix('['))
        .and_then(|c| c.split_once(':'))
        .and_then(|(packets, _)| packets.parse().ok())
}

/// The nfacct objects kube-proxy's captured iptables rules count into
/// (`-m nfacct --nfacct-name`); kube-proxy creates them itself, so a node
/// holding its rules has them, and `iptables-restore` of those rules fails
/// without them.
pub const KUBE_PROXY_NFACCT: [&str; 2] = [
    "ct_state_invalid_dropped_pkts",
    "localhost_nps_accepted_pkts",
];

/// Creates [`KUBE_PROXY_NFACCT`] in `ns` (needs the `nfacct` tool).
pub fn add_kube_proxy_nfacct(ns: &Netns) {
    for name in KUBE_PROXY_NFACCT {
        ns.run(&["nfacct", "add", name]);
    }
}
