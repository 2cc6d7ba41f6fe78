//! Integration tests: the real `ip-masq-agent` binary against the real kernel.
//!
//! One test binary (`tests/integration/main.rs`, ripgrep's layout), so the
//! harness is compiled once:
//! - `support`: the harness (namespaces, kubelet-style config volumes, the
//!   agent runner, normalised `iptables-save`, bounded waits, text diffs);
//! - `harness`: tests of the harness itself, so a red kernel test is never
//!   the harness's fault;
//! - `cli`: the command line, needing no root;
//! - `explain`: the masquerade decision asked through the binary, no root;
//! - `kernel`: rules written by `sync`, the daemon loop, live reload and
//!   `cleanup`, each in a network namespace of its own and run once per
//!   iptables backend;
//! - `telemetry`: the metrics and probe endpoints, checked with `promtool` and
//!   scraped by a real Prometheus server inside the namespace;
//! - `harness_telemetry`: tests of the HTTP helpers, needing no root;
//! - `apiserver`: tests of the fake kube-apiserver (`support::apiserver`)
//!   with the real kube client, watcher and event recorder;
//! - `layout`: the module layering of `src/`, read from the source.
//!
//! Kernel tests need root and the tools (see `support::env`). Outside CI they
//! skip with a printed reason; under `CI=true` they fail instead, because a
//! skipped kernel test is a hidden red. `IP_MASQ_AGENT_BIN` may point the
//! suite at another build of the binary (e.g. a colleague's work tree).

mod apiserver;
mod cli;
mod explain;
mod harness;
mod harness_telemetry;
mod kernel;
mod layout;
mod support;
mod telemetry;
