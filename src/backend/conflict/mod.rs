//! Other programs' NAT rules on the path our decision lives on: what nat
//! POSTROUTING really does to pod traffic, read from the node and judged
//! against the config.
//!
//! A packet leaving the node crosses every nat base chain hooked at
//! postrouting, in priority order: the iptables `nat` table of each variant
//! (iptables-nft's is an nftables chain too) and nftables tables such as
//! kube-proxy's. The first rule that masquerades or SNATs binds the
//! connection's NAT for good; an ACCEPT ends only the chain (table) it is
//! in, so in iptables it can keep a packet from reaching our jump, while in
//! nftables the next base chain still runs. Two kinds of foreign rules
//! override us: one that masquerades a destination the config exempts, and
//! one that ends the traversal before our chain for a destination we must
//! masquerade. An upstream-style jump (`ip-masq-agent:` comment) to a chain
//! other than `--masq-chain` is reported on its own: a stale chain from an
//! earlier agent, which `cleanup --stale-chains` removes.
//!
//! What must stay true: reads are bounded by the path (POSTROUTING and the
//! chains it jumps to, never a whole table; the nftables chains hooked at
//! postrouting with type nat and the chains they jump to); nothing here ever
//! writes but [`stale`]'s removal, which touches only upstream-style jumps to
//! another chain and those chains; a match that cannot be evaluated makes
//! a rule "may match", and every answer says so rather than guessing.
//!
//! Who does what: [`rules`] is the typed model, [`iptables`] and [`nft`]
//! parse the two listings into it, [`walk`] follows a packet (or a class of
//! packets) through it and judges conflicts, [`read`] is the I/O that
//! gathers the path, [`stale`] plans and runs the removal.

pub mod iptables;
pub mod nft;
pub mod read;
pub mod rules;
pub mod stale;
pub mod walk;

#[cfg(test)]
mod tests;

pub use read::{path_generation, read_path};
pub use rules::{Hooked, Match, Origin, Rule, Target};
pub use walk::{
    Addrs, Conflict, ConflictKind, Decider, Effect, Expectation, OurPlace, Packet, Step, Trace,
    detect, trace,
};

use crate::backend::BackendError;
use crate::config::Config;
use crate::plan::Family;

/// Read `family`'s nat postrouting path and judge it against `config`.
pub async fn find(
    family: Family,
    place: &OurPlace,
    config: &Config,
) -> Result<Vec<Conflict>, BackendError> {
    let path = read_path(family, place).await?;
    let expected = Expectation::new(config, family, &path);
    Ok(detect(&path, &expected, place))
}
