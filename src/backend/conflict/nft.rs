//! `nft -j list chain FAMILY TABLE CHAIN` into typed rules. Pure.
//!
//! nft's JSON is the kernel's state in nft's words, hostile until parsed:
//! addresses become [`IpNet`]s, everything this parser does not evaluate
//! becomes [`Match::Unknown`] with a short rendering, so the rule "may
//! match" and the report says why.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::Value;

use super::rules::{Match, Rule, Target};
use crate::plan::Family;

/// A chain as listed: its hook (base chains only) and its rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listed {
    /// `type` and `hook` of a base chain.
    pub kind: Option<String>,
    pub hook: Option<String>,
    pub priority: Option<i32>,
    pub rules: Vec<Rule>,
}

fn net_of(value: &Value) -> Option<Vec<IpNet>> {
    if let Some(text) = value.as_str() {
        return text.parse::<IpAddr>().ok().map(|a| vec![IpNet::from(a)]);
    }
    if let Some(prefix) = value.get("prefix") {
        let addr = prefix.get("addr")?.as_str()?.parse::<IpAddr>().ok()?;
        let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
        return IpNet::new(addr, len).ok().map(|n| vec![n.trunc()]);
    }
    if let Some(set) = value.get("set").and_then(Value::as_array) {
        let mut nets = Vec::new();
        for item in set {
            nets.extend(net_of(item)?);
        }
        return Some(nets);
    }
    None
}

fn names_of(value: &Value) -> Option<Vec<String>> {
    if let Some(text) = value.as_str() {
        return Some(vec![text.to_owned()]);
    }
    let set = value.get("set")?.as_array()?;
    set.iter().map(|v| v.as_str().map(str::to_owned)).collect()
}

fn number(value: &Value) -> Option<u32> {
    u32::try_from(value.as_u64()?).ok()
}

/// A compact rendering of a JSON fragment for messages.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.len() > 120 {
        format!(
            "{}...",
            &text[..text
                .char_indices()
                .take(117)
                .last()
                .map_or(0, |(i, c)| i + c.len_utf8())]
        )
    } else {
        text
    }
}

/// One `match` statement.
fn parse_match(m: &Value) -> Match {
    let unknown = || Match::Unknown(short(m));
    let op = m.get("op").and_then(Value::as_str).unwrap_or("==");
    let neg = match op {
        "==" | "in" => false,
        "!=" => true,
        _ => return unknown(),
    };
    let (Some(left), Some(right)) = (m.get("left"), m.get("right")) else {
        return unknown();
    };
    if let Some(payload) = left.get("payload") {
        let field = payload.get("field").and_then(Value::as_str);
        let proto = payload.get("protocol").and_then(Value::as_str);
        if matches!(proto, Some("ip" | "ip6")) {
            let Some(nets) = net_of(right) else {
                return unknown();
            };
            return match field {
                Some("saddr") => Match::Source { neg, nets },
                Some("daddr") => Match::Destination { neg, nets },
                _ => unknown(),
            };
        }
        return unknown();
    }
    if let Some(key) = left
        .get("meta")
        .and_then(|meta| meta.get("key"))
        .and_then(Value::as_str)
    {
        return match key {
            "oifname" | "iifname" => match names_of(right) {
                Some(names) if key == "oifname" => Match::OutInterface { neg, names },
                Some(names) => Match::InInterface { neg, names },
                None => unknown(),
            },
            "mark" => match number(right) {
                Some(value) => Match::Mark {
                    neg,
                    value,
                    mask: u32::MAX,
                },
                None => unknown(),
            },
            "nfproto" => match right.as_str() {
                Some("ipv4") => Match::Nfproto {
                    neg,
                    family: Family::Ipv4,
                },
                Some("ipv6") => Match::Nfproto {
                    neg,
                    family: Family::Ipv6,
                },
                _ => unknown(),
            },
            _ => unknown(),
        };
    }
    if let Some([lhs, mask]) = left.get("&").and_then(Value::as_array).map(Vec::as_slice)
        && lhs
            .get("meta")
            .and_then(|meta| meta.get("key"))
            .and_then(Value::as_str)
            == Some("mark")
        && let (Some(mask), Some(value)) = (number(mask), number(right))
    {
        return Match::Mark { neg, value, mask };
    }
    if left
        .get("ct")
        .and_then(|ct| ct.get("key"))
        .and_then(Value::as_str)
        == Some("status")
        && right.as_str() == Some("dnat")
    {
        return Match::Dnat { neg };
    }
    if let Some(fib) = left.get("fib") {
        let flags: Vec<&str> = fib
            .get("flags")
            .and_then(Value::as_array)
            .map(|f| f.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if fib.get("result").and_then(Value::as_str) == Some("type")
            && right.as_str() == Some("local")
        {
            if flags == ["daddr"] {
                return Match::DestinationLocal { neg };
            }
            if flags == ["saddr"] {
                return Match::SourceLocal { neg };
            }
        }
    }
    unknown()
}

/// One rule's `expr` list.
fn parse_rule(rule: &Value) -> Rule {
    let handle = rule.get("handle").and_then(Value::as_u64).unwrap_or(0);
    let comment = rule
        .get("comment")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut matches = Vec::new();
    let mut target = Target::Continue;
    let exprs = rule
        .get("expr")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for expr in exprs {
        let Some((name, body)) = expr.as_object().and_then(|o| o.iter().next()) else {
            continue;
        };
        match name.as_str() {
            "match" => {
                matches.push(parse_match(body));
            }
            "masquerade" | "snat" => target = Target::Nat(name.clone()),
            "accept" => target = Target::Accept,
            "return" => target = Target::Return,
            "drop" | "reject" => target = Target::Drop,
            "jump" | "goto" => {
                let Some(chain) = body.get("target").and_then(Value::as_str) else {
                    matches.push(Match::Unknown(short(expr)));
                    continue;
                };
                target = if name == "jump" {
                    Target::Jump(chain.to_owned())
                } else {
                    Target::Goto(chain.to_owned())
                };
            }
            "vmap" => {
                let key = body
                    .get("key")
                    .and_then(|k| k.get("meta"))
                    .and_then(|m| m.get("key"))
                    .and_then(Value::as_str);
                let map = body
                    .get("data")
                    .and_then(Value::as_str)
                    .and_then(|d| d.strip_prefix('@'));
                match (key, map) {
                    (Some(key @ ("iifname" | "oifname")), Some(map)) => {
                        target = Target::VerdictMap {
                            output: key == "oifname",
                            map: map.to_owned(),
                        };
                    }
                    _ => matches.push(Match::Unknown(short(expr))),
                }
            }
            "xt" => {
                // iptables-nft's compat expressions seen through nft.
                let kind = body.get("type").and_then(Value::as_str);
                let xt = body.get("name").and_then(Value::as_str).unwrap_or_default();
                match (kind, xt) {
                    (Some("match"), "comment") => {}
                    (Some("target"), "MASQUERADE" | "SNAT") => target = Target::Nat(xt.to_owned()),
                    _ => matches.push(Match::Unknown(short(expr))),
                }
            }
            // Statements that neither match nor decide.
            "counter" | "log" | "mangle" => {}
            _ => matches.push(Match::Unknown(short(expr))),
        }
    }
    let verdict = match &target {
        Target::Nat(n) => n.clone(),
        Target::Accept => "accept".into(),
        Target::Return => "return".into(),
        Target::Drop => "drop".into(),
        Target::Jump(c) => format!("jump {c}"),
        Target::Goto(c) => format!("goto {c}"),
        Target::Continue => String::new(),
        Target::VerdictMap { output, map } => format!(
            "{} vmap @{map}",
            if *output { "oifname" } else { "iifname" }
        ),
    };
    let mut text = format!("[handle {handle}]");
    for piece in render(&matches) {
        text.push(' ');
        text.push_str(&piece);
    }
    if !verdict.is_empty() {
        text.push(' ');
        text.push_str(&verdict);
    }
    if let Some(c) = &comment {
        text.push_str(&format!(" comment {c:?}"));
    }
    Rule {
        text,
        matches,
        target,
        comment,
    }
}

/// nft-like words for the matches, for messages.
fn render(matches: &[Match]) -> Vec<String> {
    let op = |neg: bool| if neg { "!=" } else { "==" };
    let nets = |nets: &[IpNet]| {
        nets.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    matches
        .iter()
        .map(|m| match m {
            Match::Source { neg, nets: n } => format!("saddr {} {}", op(*neg), nets(n)),
            Match::Destination { neg, nets: n } => format!("daddr {} {}", op(*neg), nets(n)),
            Match::OutInterface { neg, names } => {
                format!("oifname {} {}", op(*neg), names.join(","))
            }
            Match::InInterface { neg, names } => {
                format!("iifname {} {}", op(*neg), names.join(","))
            }
            Match::Mark { neg, value, mask } => {
                format!("meta mark & {mask:#x} {} {value:#x}", op(*neg))
            }
            Match::DestinationLocal { neg } => format!("fib daddr type {} local", op(*neg)),
            Match::SourceLocal { neg } => format!("fib saddr type {} local", op(*neg)),
            Match::Nfproto { neg, family } => format!("meta nfproto {} {family}", op(*neg)),
            Match::Dnat { neg } => format!("ct status {} dnat", op(*neg)),
            Match::Unknown(text) => text.clone(),
        })
        .collect()
}

/// The chain and rules of one `nft -j list chain` answer.
pub fn parse_chain(text: &str) -> Result<Listed, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not nft JSON: {e}"))?;
    let items = value
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut listed = Listed::default();
    for item in items {
        if let Some(chain) = item.get("chain") {
            listed.kind = chain.get("type").and_then(Value::as_str).map(str::to_owned);
            listed.hook = chain.get("hook").and_then(Value::as_str).map(str::to_owned);
            listed.priority = chain
                .get("prio")
                .and_then(Value::as_i64)
                .and_then(|p| i32::try_from(p).ok());
        } else if let Some(rule) = item.get("rule") {
            listed.rules.push(parse_rule(rule));
        }
    }
    Ok(listed)
}

/// The verdict of one map element (`{"jump": {"target": "X"}}`, `"accept"`).
fn verdict_of(value: &Value) -> Option<Target> {
    if let Some(word) = value.as_str() {
        return match word {
            "accept" => Some(Target::Accept),
            "return" => Some(Target::Return),
            "drop" => Some(Target::Drop),
            "continue" => Some(Target::Continue),
            _ => None,
        };
    }
    let (name, body) = value.as_object()?.iter().next()?;
    let chain = body
        .get("target")
        .and_then(Value::as_str)
        .map(str::to_owned);
    match name.as_str() {
        "jump" => chain.map(Target::Jump),
        "goto" => chain.map(Target::Goto),
        "accept" => Some(Target::Accept),
        "return" => Some(Target::Return),
        "drop" => Some(Target::Drop),
        _ => None,
    }
}

/// The interface-keyed elements of one `nft -j list map` answer: each
/// key (an interface name) and its verdict. Elements of another shape are
/// counted, not guessed.
pub fn parse_verdict_map(text: &str) -> Result<(Vec<(String, Target)>, usize), String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not nft JSON: {e}"))?;
    let items = value
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or("no \"nftables\" array")?;
    let mut elements = Vec::new();
    let mut other = 0;
    for map in items.iter().filter_map(|i| i.get("map")) {
        for elem in map
            .get("elem")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            match elem.as_array().map(Vec::as_slice) {
                Some([key, verdict]) => match (key.as_str(), verdict_of(verdict)) {
                    (Some(key), Some(target)) => elements.push((key.to_owned(), target)),
                    _ => other += 1,
                },
                _ => other += 1,
            }
        }
    }
    Ok((elements, other))
}

/// A verdict-map rule as one rule per element: the rule's matches, the
/// element's interface, the element's verdict.
pub fn expand_verdict_map(rule: &Rule, output: bool, elements: &[(String, Target)]) -> Vec<Rule> {
    elements
        .iter()
        .map(|(key, target)| {
            let mut matches = rule.matches.clone();
            let names = vec![key.clone()];
            matches.push(if output {
                Match::OutInterface { neg: false, names }
            } else {
                Match::InInterface { neg: false, names }
            });
            let verdict = match target {
                Target::Jump(c) => format!("jump {c}"),
                Target::Goto(c) => format!("goto {c}"),
                Target::Accept => "accept".into(),
                Target::Return => "return".into(),
                Target::Drop => "drop".into(),
                _ => "continue".into(),
            };
            Rule {
                text: format!("{} {{ {key:?} : {verdict} }}", rule.text),
                matches,
                target: target.clone(),
                comment: rule.comment.clone(),
            }
        })
        .collect()
}
