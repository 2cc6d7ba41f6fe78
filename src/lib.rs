//! ip-masq-agent: keeps the node's source-NAT rules equal to the cluster's
//! non-masquerade list. A drop-in replacement for the Kubernetes agent.
//!
//! The flow runs one way (see DESIGN in the README): sources -> `config`
//! (bytes to a validated `Config`, pure) -> `plan` (desired `Ruleset` per
//! family, pure) -> `backend` (the only code that runs commands) -> logs.
#![forbid(unsafe_code)]
// Input and I/O errors are handled, never unwrapped, outside tests.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// The agent loop: events in, reconcile, record.
pub mod agent;
/// The Kubernetes API as a config source, and Events about rejections.
pub mod apisource;
/// The seam to the kernel, and its iptables implementation.
pub mod backend;
/// Go-`flag`-compatible command line parsing.
pub mod cli;
/// The subcommands (check, render, sync, cleanup, the daemon).
pub mod commands;
/// Config decoding (YAML 1.1 / JSON with Go's binding rules) and validation.
pub mod config;
/// Logging setup (text or JSON, klog-style verbosity).
pub mod logging;
/// Prometheus metrics and the health probes, served over HTTP.
pub mod metrics;
/// Config + options -> the desired ruleset per address family.
pub mod plan;
/// The masquerade decision (longest prefix, pod sources), explained and compiled flat.
pub mod policy;
/// Watching the config file's directory for kubelet's updates.
pub mod watch;

/// The version reported by `--version` and logged at start.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
