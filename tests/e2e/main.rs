//! End-to-end tests: the real agent on a node namespace, real TCP
//! connections from a pod namespace, and peers that report the source
//! address they saw. They prove what an operator cares about (can the pod
//! reach the VPN peer, does the VPC still see pod addresses) rather than
//! which rules were written, though they check those too.
//!
//! - `sandbox`: the topology (pod, node, VPC, VPN, internet host), the
//!   servers, the config volume and the agent, all behind one drop guard;
//! - `client`: long-lived connection loops in the pod, for the swap test;
//! - `configs`: the configs applied and the rules they produce;
//! - `kernel`: the three kernel backends the scenarios run under, and how
//!   each is read, checked and broken;
//! - `incident`, `live_config`, `repair`: the scenarios (a) to (g) of the
//!   issue, each once per kernel backend (h): the iptables backend through
//!   iptables-nft and iptables-legacy, and the native nftables backend, named
//!   `<file>::<letter>_<what>::iptables_nft`, `...::iptables_legacy` or
//!   `...::nftables`;
//! - `policy`: `masqueradeCIDRs`, `podCIDRs` and `explain` against the
//!   kernel's answer, in a dual-stack topology of its own;
//! - `authoritative`: `--authoritative` against other programs' captured NAT
//!   rules (kube-proxy in both modes, bridge CNI, OpenShift, Docker, a stale
//!   `IP-MASQ` chain), per backend and iptables variant, in a topology of its own;
//! - `cleanup`: the sandbox leaves nothing behind when a step fails.
//!
//! The harness is the integration suite's (`support`), compiled in here.
//! Like the kernel tests, these need root, the tools and the `netcheck`
//! example; outside CI they skip without root or tools, under `CI=true` they
//! fail. A missing `netcheck` always fails: it is built by
//! `cargo build --examples` (and by `cargo test`/`cargo nextest run`).

#[allow(dead_code)]
mod support;

mod client;
mod configs;
mod kernel;
mod sandbox;

/// `per_kernel!(scenario);` next to `fn scenario(kernel: Kernel)` declares
/// `mod scenario { #[test] fn iptables_nft(); #[test] fn iptables_legacy();
/// #[test] fn nftables() }`, each test checking the prerequisites first, so
/// a failure names the scenario and the backend:
/// `live_config::c_configmap_edit_flips_masquerading_live::nftables`.
macro_rules! per_kernel {
    ($name:ident) => {
        mod $name {
            #[test]
            fn iptables_nft() {
                if crate::prerequisites() {
                    super::$name(crate::kernel::Kernel::IptablesNft);
                }
            }

            #[test]
            fn iptables_legacy() {
                if crate::prerequisites() {
                    super::$name(crate::kernel::Kernel::IptablesLegacy);
                }
            }

            #[test]
            fn nftables() {
                if crate::prerequisites() {
                    super::$name(crate::kernel::Kernel::Nftables);
                }
            }
        }
    };
}

mod authoritative;
mod cleanup;
mod incident;
mod live_config;
mod policy;
mod repair;

/// Root, the tools and namespaces (skip outside CI, fail under `CI=true`),
/// then the probe binary (always a failure when missing).
fn prerequisites() -> bool {
    if !support::env::require_root_and_tools() {
        return false;
    }
    sandbox::require_netcheck();
    true
}
