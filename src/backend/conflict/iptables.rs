//! `iptables -t nat -S CHAIN` lines into typed rules. Pure.
//!
//! The listing is the kernel's, printed by iptables: hostile until parsed.
//! Addresses become [`IpNet`]s, names are kept only as data; a match or
//! option this parser does not know becomes [`Match::Unknown`] (the rule
//! "may match"), never an error, so one exotic rule cannot hide the rest.

use std::net::IpAddr;

use ipnet::IpNet;

use super::rules::{Match, Rule, Target};

/// Targets that end or change nothing about the traversal but are not
/// chains (so no `-S` read is spent on them).
const CONTINUE_TARGETS: &[&str] = &[
    "MARK",
    "CONNMARK",
    "LOG",
    "NFLOG",
    "TRACE",
    "CT",
    "NOTRACK",
    "TOS",
    "DSCP",
    "TTL",
    "HL",
    "CLASSIFY",
    "AUDIT",
    "CHECKSUM",
    "SECMARK",
    "CONNSECMARK",
    "TCPMSS",
    "IDLETIMER",
    "LED",
    "NFQUEUE",
];

/// Split a `-S` line into words, undoing iptables' quoting of comments
/// (`"name: \"podnet\""` is one word).
pub fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = line.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let mut word = String::new();
        if c == '"' {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            word.push(next);
                        }
                    }
                    '"' => break,
                    _ => word.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                word.push(c);
                chars.next();
            }
        }
        out.push(word);
    }
    out
}

fn parse_net(text: &str) -> Option<IpNet> {
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
}

fn parse_u32(text: &str) -> Option<u32> {
    match text.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// `V` or `V/M` of `--mark`.
fn parse_mark(text: &str) -> Option<(u32, u32)> {
    match text.split_once('/') {
        Some((v, m)) => Some((parse_u32(v)?, parse_u32(m)?)),
        None => Some((parse_u32(text)?, u32::MAX)),
    }
}

/// Whether a word is an option name (`-x` or `--xx`), not a value.
fn is_option(word: &str) -> bool {
    (word.starts_with("--") && word.len() > 2) || (word.len() == 2 && word.starts_with('-'))
}

/// One `-A CHAIN ...` line (None for any other line: `-P`, `-N`).
pub fn parse_rule(line: &str) -> Option<(String, Rule)> {
    let words = words(line.trim_end());
    let mut it = words.iter().map(String::as_str).peekable();
    if it.next() != Some("-A") {
        return None;
    }
    let chain = it.next()?.to_owned();
    let mut rule = Rule {
        text: line.trim_end().to_owned(),
        matches: Vec::new(),
        target: Target::Continue,
        comment: None,
    };
    let mut neg = false;
    let mut module = String::new();
    while let Some(word) = it.next() {
        if word == "!" {
            neg = true;
            continue;
        }
        let negated = std::mem::take(&mut neg);
        macro_rules! value {
            () => {
                it.next().unwrap_or_default().to_owned()
            };
        }
        match word {
            "-s" | "--source" | "-d" | "--destination" => {
                let text = value!();
                let m = match parse_net(&text) {
                    Some(net) if word.starts_with("-s") || word == "--source" => Match::Source {
                        neg: negated,
                        nets: vec![net],
                    },
                    Some(net) => Match::Destination {
                        neg: negated,
                        nets: vec![net],
                    },
                    None => Match::Unknown(format!("{word} {text}")),
                };
                rule.matches.push(m);
            }
            "-o" | "--out-interface" => rule.matches.push(Match::OutInterface {
                neg: negated,
                names: vec![value!()],
            }),
            "-i" | "--in-interface" => rule.matches.push(Match::InInterface {
                neg: negated,
                names: vec![value!()],
            }),
            "-p" | "--protocol" => {
                let proto = value!();
                if proto != "all" {
                    rule.matches.push(Match::Unknown(format!(
                        "{}-p {proto}",
                        if negated { "! " } else { "" }
                    )));
                }
            }
            "-m" | "--match" => module = value!(),
            "-j" | "--jump" => {
                let target = value!();
                rule.target = match target.as_str() {
                    "MASQUERADE" | "SNAT" | "NETMAP" => Target::Nat(target),
                    "ACCEPT" => Target::Accept,
                    "RETURN" => Target::Return,
                    "DROP" | "REJECT" => Target::Drop,
                    t if CONTINUE_TARGETS.contains(&t) => Target::Continue,
                    _ => Target::Jump(target),
                };
                // Target options (--random-fully, --to-source, --set-xmark) follow; they decide nothing here.
                break;
            }
            "-g" | "--goto" => {
                rule.target = Target::Goto(value!());
                break;
            }
            "--comment" if module == "comment" => rule.comment = Some(value!()),
            "--mark" if module == "mark" => {
                let text = value!();
                rule.matches.push(match parse_mark(&text) {
                    Some((value, mask)) => Match::Mark {
                        neg: negated,
                        value,
                        mask,
                    },
                    None => Match::Unknown(format!("--mark {text}")),
                });
            }
            "--ctstate" if module == "conntrack" && it.peek() == Some(&"DNAT") => {
                it.next();
                rule.matches.push(Match::Dnat { neg: negated });
            }
            "--dst-type" | "--src-type" if module == "addrtype" => {
                let kind = value!();
                let m = match (word, kind.as_str()) {
                    ("--dst-type", "LOCAL") => Match::DestinationLocal { neg: negated },
                    ("--src-type", "LOCAL") => Match::SourceLocal { neg: negated },
                    _ => Match::Unknown(format!(
                        "-m addrtype {}{word} {kind}",
                        if negated { "! " } else { "" }
                    )),
                };
                rule.matches.push(m);
            }
            _ => {
                // An option of a module we do not evaluate (physdev,
                // conntrack, statistic, tcp ports, ...): keep it, with its
                // values, as one unknown match.
                let mut text = format!("-m {module} {}{word}", if negated { "! " } else { "" });
                while let Some(next) = it.peek() {
                    if *next == "!" || is_option(next) {
                        break;
                    }
                    text.push(' ');
                    text.push_str(next);
                    it.next();
                }
                rule.matches.push(Match::Unknown(text));
            }
        }
    }
    Some((chain, rule))
}

/// The rules of `chain` in one `-S CHAIN` listing, in order.
pub fn parse_listing(listing: &str, chain: &str) -> Vec<Rule> {
    listing
        .lines()
        .filter_map(parse_rule)
        .filter(|(c, _)| c == chain)
        .map(|(_, rule)| rule)
        .collect()
}
