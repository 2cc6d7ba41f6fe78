//! Gathering the nat postrouting path from the node: the I/O edge of
//! conflict detection.
//!
//! Bounded by the path, never by the tables: per iptables variant one
//! `-S POSTROUTING`, then one `-S CHAIN` per chain it jumps to (and they
//! jump to), at most [`MAX_CHAINS`] chains; for nftables one netlink chain
//! dump (names and hooks, no rules) says which base chains are hooked at
//! postrouting with type nat, and each foreign one is read with
//! `nft -j list chain`, again following jumps within its table. On a node
//! with kube-proxy's 35 000 nat rules this reads POSTROUTING and
//! KUBE-POSTROUTING: a few lines.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tracing::debug;

use super::iptables::parse_listing;
use super::nft::{expand_verdict_map, parse_chain, parse_verdict_map};
use super::rules::{Hooked, Match, Origin, Rule, Target};
use super::walk::OurPlace;
use crate::backend::exec;
use crate::backend::iptables::{self, Variant};
use crate::backend::nftables::{self, netlink};
use crate::backend::{BackendError, ErrorKind};
use crate::plan::Family;

/// Chains read per base chain, at most.
pub const MAX_CHAINS: usize = 16;

/// srcnat: where iptables' nat POSTROUTING hooks (NF_IP_PRI_NAT_SRC).
const SRCNAT: i32 = 100;

/// A name nft's command line can carry as one word: nft parses its
/// arguments as a command, so anything else is never passed to it.
fn nft_word(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Read `base` and the chains its rules jump to, breadth first, within the
/// bound; `read` answers one chain (None: not there).
async fn follow<F, Fut>(
    hook: &mut Hooked,
    skip: Option<&str>,
    mut read: F,
) -> Result<(), BackendError>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Option<Vec<Rule>>, BackendError>>,
{
    let mut queue = VecDeque::from([hook.base.clone()]);
    let mut seen = BTreeSet::from([hook.base.clone()]);
    while let Some(chain) = queue.pop_front() {
        if hook.chains.len() >= MAX_CHAINS {
            hook.unread.push(chain);
            continue;
        }
        let Some(rules) = read(chain.clone()).await? else {
            if chain != hook.base {
                hook.unread.push(chain);
            }
            continue;
        };
        for rule in &rules {
            if let Some(next) = rule.chain_target()
                && Some(next) != skip
                && seen.insert(next.to_owned())
            {
                queue.push_back(next.to_owned());
            }
        }
        hook.chains.insert(chain, rules);
    }
    Ok(())
}

/// One iptables variant's nat POSTROUTING path (None: no such table/tool).
async fn read_iptables(
    variant: Variant,
    family: Family,
    place: &OurPlace,
) -> Result<Option<Hooked>, BackendError> {
    let label = variant.label();
    let ours = match place {
        OurPlace::Iptables { variant: v, chain } if *v == label => Some(chain.as_str().to_owned()),
        _ => None,
    };
    let mut hook = Hooked::iptables(label, SRCNAT);
    follow(&mut hook, ours.as_deref(), |chain| async move {
        let listing = iptables::list_nat(variant, family, &chain).await?;
        Ok(listing.map(|text| parse_listing(&text, &chain)))
    })
    .await?;
    Ok((!hook.chains.is_empty()).then_some(hook))
}

/// `nft -j list chain FAMILY TABLE CHAIN`'s rules (None: not there).
async fn nft_chain(
    family: &str,
    table: &str,
    chain: &str,
) -> Result<Option<Vec<Rule>>, BackendError> {
    if !nft_word(chain) {
        return Ok(None);
    }
    let command = format!("nft -j list chain {family} {table} {chain}");
    let rules = match exec::run("nft", &["-j", "list", "chain", family, table, chain], None).await {
        Ok(out) => parse_chain(&out.stdout)
            .map(|listed| listed.rules)
            .map_err(|e| BackendError::new(ErrorKind::Rejected, &command, e))?,
        Err(err) if err.kind == ErrorKind::Absent => return Ok(None),
        Err(err) => return Err(err),
    };
    let mut out = Vec::with_capacity(rules.len());
    for rule in rules {
        let Target::VerdictMap { output, map } = &rule.target else {
            out.push(rule);
            continue;
        };
        match nft_map(family, table, map).await? {
            Some((elements, 0)) => out.extend(expand_verdict_map(&rule, *output, &elements)),
            // A map that cannot be read, or holds what is not evaluated
            // here: the rule may do anything.
            _ => {
                let unknown = Match::Unknown(format!("verdict map @{map} not evaluated"));
                out.push(Rule {
                    matches: vec![unknown],
                    target: Target::Continue,
                    ..rule
                });
            }
        }
    }
    Ok(Some(out))
}

/// `nft -j list map FAMILY TABLE MAP`: a verdict map's elements (and how
/// many of another shape), None when it is not there.
async fn nft_map(
    family: &str,
    table: &str,
    map: &str,
) -> Result<Option<(Vec<(String, Target)>, usize)>, BackendError> {
    if !nft_word(map) {
        return Ok(None);
    }
    let command = format!("nft -j list map {family} {table} {map}");
    match exec::run("nft", &["-j", "list", "map", family, table, map], None).await {
        Ok(out) => parse_verdict_map(&out.stdout)
            .map(Some)
            .map_err(|e| BackendError::new(ErrorKind::Rejected, &command, e)),
        Err(err) if err.kind == ErrorKind::Absent => Ok(None),
        Err(err) => Err(err),
    }
}

/// The nftables base chains of type nat at postrouting for `family`, ours
/// marked, iptables-nft's own `nat` table left to the iptables read.
async fn read_nftables(
    family: Family,
    iptables_nft_read: bool,
) -> Result<Vec<Hooked>, BackendError> {
    let hooks = netlink::blocking(move || netlink::nat_postrouting_chains(family))
        .await
        .map_err(netlink::NlError::into_backend)?
        .hooks;
    let own_family = match family {
        Family::Ipv4 => "ip",
        Family::Ipv6 => "ip6",
    };
    let mut out = Vec::new();
    for h in hooks {
        if iptables_nft_read
            && h.family == own_family
            && h.table == "nat"
            && h.chain == "POSTROUTING"
        {
            continue;
        }
        let mut hooked = Hooked {
            origin: Origin::Nftables {
                family: h.family.to_owned(),
                table: h.table.clone(),
            },
            priority: h.priority,
            base: h.chain.clone(),
            chains: BTreeMap::new(),
            ours: h.family == own_family
                && h.table == nftables::TABLE
                && h.chain == nftables::BASE_CHAIN,
            unread: Vec::new(),
        };
        if !hooked.ours {
            if !nft_word(&h.table) {
                debug!(table = %h.table.escape_debug(), "nat table name not safe for nft's command line; not read");
                hooked.unread.push(h.chain.clone());
                out.push(hooked);
                continue;
            }
            let (fam, table) = (h.family, h.table.clone());
            follow(&mut hooked, None, |chain| {
                let table = table.clone();
                async move { nft_chain(fam, &table, &chain).await }
            })
            .await?;
        }
        out.push(hooked);
    }
    Ok(out)
}

/// The whole nat postrouting path of `family`: both iptables variants'
/// POSTROUTING (where present) and the nftables nat chains at postrouting.
pub async fn read_path(family: Family, place: &OurPlace) -> Result<Vec<Hooked>, BackendError> {
    let mut path = Vec::new();
    let mut nft_read = false;
    for variant in [Variant::Nft, Variant::Legacy] {
        if let Some(hook) = read_iptables(variant, family, place).await? {
            nft_read |= variant == Variant::Nft;
            path.push(hook);
        }
    }
    match read_nftables(family, nft_read).await {
        Ok(hooks) => path.extend(hooks),
        // No nf_tables in this kernel: only the legacy path exists.
        Err(err) if err.kind == ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    Ok(path)
}

/// A cheap fingerprint of `family`'s nat postrouting path: the nftables
/// ruleset generation, which every nftables commit moves (iptables-nft's
/// too). None when the path has a part without one, a legacy nat table
/// (the legacy kernel interface keeps no generation), or nf_tables cannot
/// be asked: then only reading the path tells.
pub async fn path_generation(family: Family) -> Option<u32> {
    if iptables::legacy_nat_present(family).await {
        return None;
    }
    netlink::blocking(netlink::genid).await.ok()
}
