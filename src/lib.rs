//! ip-masq-agent: keeps the node's source-NAT rules equal to the cluster's
//! non-masquerade list. A drop-in replacement for the Kubernetes agent.
//!
//! The flow runs one way (see Design in the README): `source` (bytes) ->
//! `config` (a validated `Config`, pure) -> `plan` (the desired `Ruleset`
//! per family, pure) -> `backend` (the only code that changes the kernel) ->
//! record (`telemetry`: metrics and probes; logs; Events). `agent` is the
//! loop that drives it; `commands` wires it up; `cli` turns the command
//! line into typed options. Imports only point down this list.
#![forbid(unsafe_code)]
// Input and I/O errors are handled, never unwrapped, outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// The agent loop: next trigger, reload, sync, record.
pub mod agent;
/// The seam to the kernel, and its iptables and nftables implementations.
pub mod backend;
/// Go-`flag`-compatible command line parsing.
pub mod cli;
/// The subcommands (check, render, sync, cleanup, the daemon).
pub mod commands;
/// Config decoding (YAML 1.1 / JSON with Go's binding rules) and validation.
pub mod config;
/// Logging setup (text or JSON, klog-style verbosity).
pub mod logging;
/// Config + options -> the desired ruleset per address family.
pub mod plan;
/// The masquerade decision (longest prefix, pod sources), explained and compiled flat.
pub mod policy;
/// Where the config comes from: a watched file, or a ConfigMap through the API.
pub mod source;
/// Metrics, the probes' state, and the HTTP listener serving them.
pub mod telemetry;

/// The version reported by `--version` and logged at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
