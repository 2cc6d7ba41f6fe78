//! The commands that look at the node's other NAT rules: `explain --live`
//! (which rule really decides a packet's source address) and `cleanup
//! --stale-chains` (remove the chains an earlier agent left under another
//! `--masq-chain` name). Both need root; `explain --live` only reads.
//!
//! What must stay true: `explain --live` prints, per address, one line whose
//! first two fields are the address and the verdict the packet really gets
//! (`masquerade` / `no-masquerade`), as offline `explain` does; the rules
//! that matched follow on indented lines (JSON: a `steps` array), so scripts
//! that cut the first two fields of unindented lines keep working.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde_json::{Value, json};
use tracing::error;

use super::explain::load;
use super::oneshot::print;
use crate::backend::conflict::{self, Addrs, Decider, Effect, Hooked, OurPlace, Packet, Trace};
use crate::backend::exec;
use crate::backend::iptables::Variant;
use crate::backend::select::AnyBackend;
use crate::cli::{Options, OutputFormat};
use crate::config::Config;
use crate::plan::Family;
use crate::policy::{self, Verdict};

/// Reading other programs' nat rules needs CAP_NET_ADMIN; say so first
/// rather than after a tool's own words.
fn require_root(what: &str) -> Result<()> {
    // /proc/self belongs to the process's effective user.
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .context("reading /proc/self")?;
    if uid != 0 {
        bail!("{what} needs root (it reads the node's nat rules); running as uid {uid}");
    }
    Ok(())
}

/// A Linux interface name as `ip` may print it: nothing else is kept.
fn interface_name(text: &str) -> Option<String> {
    let ok = !text.is_empty()
        && text.len() <= 15
        && text.chars().all(|c| c.is_ascii_graphic() && c != '/');
    ok.then(|| text.to_owned())
}

/// The interface the kernel routes `address` out of (`ip -j route get`),
/// if it answers.
async fn route_device(address: IpAddr) -> Option<String> {
    let text = address.to_string();
    let out = exec::run("ip", &["-j", "route", "get", &text], None)
        .await
        .ok()?;
    let value: Value = serde_json::from_str(&out.stdout).ok()?;
    interface_name(value.get(0)?.get("dev")?.as_str()?)
}

/// Everything known about the packets asked about: their class, and what
/// our own chain decides for them.
async fn packet(config: &Config, source: Option<IpAddr>, destination: IpAddr) -> Packet {
    let family = Family::of(destination);
    let sources = match source {
        Some(addr) => Addrs::In(vec![IpNet::from(addr)]),
        None => {
            let pods = policy::pod_sources(config, family);
            if pods.is_empty() {
                Addrs::In(vec![match family {
                    Family::Ipv4 => IpNet::V4(Default::default()),
                    Family::Ipv6 => IpNet::V6(Default::default()),
                }])
            } else {
                Addrs::In(pods)
            }
        }
    };
    let in_interface = match source {
        Some(addr) => route_device(addr).await,
        None => None,
    };
    Packet {
        family,
        source: sources,
        destination: Addrs::In(vec![IpNet::from(destination)]),
        out_interface: route_device(destination).await,
        in_interface,
        // A given source may be the node's own; without one, a pod's.
        source_is_pod: source.is_none(),
    }
}

/// The verdict the packet really gets and why, from its trace.
fn outcome(trace: &Trace, ours_say: &str, chain: &str) -> (Verdict, String) {
    let at = |i: usize| {
        let step = &trace.steps[i];
        format!(
            "{} chain {} rule {}",
            step.origin,
            step.chain,
            step.rule.shown()
        )
    };
    match trace.decider {
        Decider::Ours(verdict) => (verdict, format!("ours: {chain} decides ({ours_say})")),
        Decider::Foreign(i) if trace.steps[i].effect == Effect::Drop => (
            Verdict::NoMasquerade,
            format!(
                "another's: dropped by {} (ours would say: {ours_say})",
                at(i)
            ),
        ),
        Decider::Foreign(i) => (
            Verdict::Masquerade,
            format!("another's: {} (ours would say: {ours_say})", at(i)),
        ),
        Decider::NotReached(Some(i)) => (
            Verdict::NoMasquerade,
            format!(
                "another's: {} ends the nat traversal before {chain} (ours would say: {ours_say})",
                at(i)
            ),
        ),
        Decider::NotReached(None) => (
            Verdict::NoMasquerade,
            format!(
                "no rule masquerades it and {chain} is not on its path (ours would say: {ours_say})"
            ),
        ),
    }
}

fn step_line(step: &conflict::Step) -> String {
    let what = match step.effect {
        Effect::Nat => "masquerades",
        Effect::Ends => "ends the traversal",
        Effect::Drop => "drops",
        Effect::Passes => "passes",
        Effect::Ours => "ours",
    };
    let mut line = format!(
        "{} chain {} rule {}: {what}",
        step.origin,
        step.chain,
        step.rule.shown()
    );
    if !step.certain() {
        let _ = write!(
            line,
            " (may match; not known here: {})",
            step.unsure.join("; ")
        );
    }
    line
}

/// `explain --live`: each address's real path through nat postrouting.
pub async fn explain_live(
    options: &Options,
    source: Option<IpAddr>,
    addresses: &[IpAddr],
    output: OutputFormat,
) -> Result<ExitCode> {
    require_root("explain --live")?;
    let config = load(options).await?;
    let backend = AnyBackend::select(options.backend, options.iptables_mode).await;
    let chain = options.masq_chain.to_string();
    let place = backend.our_place(&options.masq_chain);
    let ours_name = match place {
        OurPlace::Iptables { .. } => chain.clone(),
        OurPlace::Nftables { .. } => format!("nftables table {}", crate::backend::nftables::TABLE),
    };
    let mut paths: BTreeMap<Family, Vec<Hooked>> = BTreeMap::new();
    let mut out = String::new();
    for &address in addresses {
        let family = Family::of(address);
        let path = match paths.entry(family) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => entry.insert(
                conflict::read_path(family, &place)
                    .await
                    .with_context(|| format!("reading the {family} nat postrouting path"))?,
            ),
        };
        let (desired, ours_say) = if family == Family::Ipv6 && !options.enable_ipv6 {
            (
                Verdict::NoMasquerade,
                "ipv6 not enabled (--enable-ipv6): no IPv6 rules of ours".to_owned(),
            )
        } else {
            let decision = policy::decide(&config, source, address)?;
            (
                decision.verdict,
                format!("{} {}", decision.verdict, decision.reason),
            )
        };
        let packet = packet(&config, source, address).await;
        let trace = conflict::trace(path, &packet, &place, desired);
        let (verdict, why) = outcome(&trace, &ours_say, &ours_name);
        match output {
            OutputFormat::Text => {
                let _ = writeln!(out, "{address} {verdict} {why}");
                for step in &trace.steps {
                    let _ = writeln!(out, "  {}", step_line(step));
                }
            }
            OutputFormat::Json => {
                let mut object = json!({
                    "address": address.to_string(),
                    "verdict": verdict.as_str(),
                    "ours": desired.as_str(),
                    "decided_by": match trace.decider { Decider::Ours(_) => "ours", _ => "another" },
                    "why": why,
                    "steps": trace.steps.iter().map(step_line).collect::<Vec<_>>(),
                });
                if let Some(source) = source {
                    object["source"] = json!(source.to_string());
                }
                let _ = writeln!(out, "{object}");
            }
        }
    }
    print(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// `cleanup --stale-chains`: both iptables variants, both families.
pub async fn cleanup_stale(options: &Options) -> Result<ExitCode> {
    require_root("cleanup --stale-chains")?;
    let chain = &options.masq_chain;
    let mut failed = false;
    let mut any = false;
    for variant in [Variant::Nft, Variant::Legacy] {
        for family in [Family::Ipv4, Family::Ipv6] {
            match conflict::stale::remove(variant, family, chain).await {
                Ok(report) => {
                    for line in report.removed {
                        any = true;
                        print(&format!("{line}\n"))?;
                    }
                    // Not clean: the operator must look at what kept it.
                    for line in report.kept {
                        any = true;
                        failed = true;
                        eprintln!("{line}");
                    }
                }
                Err(err) if err.kind == crate::backend::ErrorKind::NotFound => {}
                Err(err) => {
                    error!(
                        "cleanup --stale-chains failed ({} {family}): {err}",
                        variant.label()
                    );
                    failed = true;
                }
            }
        }
    }
    if !any && !failed {
        print(&format!(
            "nothing to remove: no upstream-style jump to a chain other than {chain}\n"
        ))?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
