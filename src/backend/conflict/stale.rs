//! `cleanup --stale-chains`: remove the chains an earlier agent left under
//! another `--masq-chain` name, and their jumps, and nothing else.
//!
//! A stale chain is one that an upstream-style jump (POSTROUTING rule
//! whose comment starts `ip-masq-agent:`) enters while it is not our
//! `--masq-chain`. It is removed only when every rule in it carries an
//! `ip-masq-agent:` comment too (upstream writes nothing else there) and no
//! other POSTROUTING rule enters it; otherwise it is kept and the report
//! says why. The jump and the chain go in one `iptables-restore
//! --noflush` transaction per variant and family.

use std::fmt::Write as _;

use super::iptables::parse_listing;
use super::rules::{Rule, UPSTREAM_COMMENT_PREFIX};
use crate::backend::iptables::{self, Variant};
use crate::backend::{BackendError, CleanupReport};
use crate::plan::{ChainName, Family};

/// One stale chain found: its jumps in POSTROUTING and its own rules
/// (None: the chain is not there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale {
    pub chain: String,
    pub jumps: Vec<Rule>,
    pub rules: Option<Vec<Rule>>,
}

/// The upstream-style jumps of POSTROUTING to chains other than ours,
/// grouped by chain in order of appearance. Pure.
pub fn stale_jumps(postrouting: &[Rule], ours: &ChainName) -> Vec<(String, Vec<Rule>)> {
    let mut found: Vec<(String, Vec<Rule>)> = Vec::new();
    for rule in postrouting {
        let Some(target) = rule.upstream_jump() else {
            continue;
        };
        // Only a name iptables could hold as a user chain ever reaches a
        // restore payload.
        if target == ours.as_str() || target.parse::<ChainName>().is_err() {
            continue;
        }
        match found.iter_mut().find(|(c, _)| c == target) {
            Some((_, jumps)) => jumps.push(rule.clone()),
            None => found.push((target.to_owned(), vec![rule.clone()])),
        }
    }
    found
}

/// The removal transaction (None: nothing to do) and the report. Pure.
pub fn removal(
    postrouting: &[Rule],
    stale: &[Stale],
    name: &str,
) -> (Option<String>, CleanupReport) {
    let mut payload = String::from("*nat\n");
    let mut report = CleanupReport::default();
    for s in stale {
        let others: Vec<&Rule> = postrouting
            .iter()
            .filter(|r| r.chain_target() == Some(s.chain.as_str()) && !s.jumps.contains(r))
            .collect();
        let foreign_rules = s.rules.as_ref().is_some_and(|rules| {
            rules.iter().any(|r| {
                !r.comment
                    .as_deref()
                    .is_some_and(|c| c.starts_with(UPSTREAM_COMMENT_PREFIX))
            })
        });
        if foreign_rules {
            report.kept.push(format!(
                "{name}: kept stale chain {} and its jump: it holds rules without an ip-masq-agent comment",
                s.chain
            ));
            continue;
        }
        for jump in &s.jumps {
            let spec = jump.text.trim_start_matches("-A POSTROUTING ");
            let _ = writeln!(payload, "-D POSTROUTING {spec}");
            report
                .removed
                .push(format!("{name}: removed stale jump to {}", s.chain));
        }
        match (&s.rules, others.is_empty()) {
            (None, _) => {}
            (Some(_), true) => {
                let _ = writeln!(payload, "-F {0}\n-X {0}", s.chain);
                report
                    .removed
                    .push(format!("{name}: removed stale chain {}", s.chain));
            }
            (Some(_), false) => report.kept.push(format!(
                "{name}: kept stale chain {}: still entered by rules we do not own: {}",
                s.chain,
                others
                    .iter()
                    .map(|r| r.text.as_str())
                    .collect::<Vec<_>>()
                    .join(" | ")
            )),
        }
    }
    if payload == "*nat\n" {
        return (None, report);
    }
    payload.push_str("COMMIT\n");
    (Some(payload), report)
}

/// Find and remove the stale chains of one variant and family.
pub async fn remove(
    variant: Variant,
    family: Family,
    ours: &ChainName,
) -> Result<CleanupReport, BackendError> {
    let name = format!("{} {family}", variant.label());
    let Some(listing) = iptables::list_nat(variant, family, "POSTROUTING").await? else {
        return Ok(CleanupReport::default());
    };
    let postrouting = parse_listing(&listing, "POSTROUTING");
    let mut stale = Vec::new();
    for (chain, jumps) in stale_jumps(&postrouting, ours) {
        let rules = iptables::list_nat(variant, family, &chain)
            .await?
            .map(|text| parse_listing(&text, &chain));
        stale.push(Stale {
            chain,
            jumps,
            rules,
        });
    }
    let (payload, report) = removal(&postrouting, &stale, &name);
    if let Some(payload) = payload {
        iptables::restore_nat(variant, family, &payload).await?;
    }
    Ok(report)
}
