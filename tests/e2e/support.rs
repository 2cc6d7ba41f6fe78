//! The integration suite's harness, compiled into this binary unchanged:
//! namespace guards, kubelet-style config volumes, the daemon runner,
//! normalised `iptables-save`, bounded commands and waits, text diffs.
//!
//! The files are included by path, read-only: they belong to
//! `tests/integration/`, and anything the end-to-end tests need beyond them
//! lives next to this file in `tests/e2e/`. Not every helper is used here,
//! hence the `dead_code` allowance where this module is declared.

#[path = "../integration/support/agent.rs"]
pub mod agent;
#[path = "../integration/support/env.rs"]
pub mod env;
#[path = "../integration/support/iptables.rs"]
pub mod iptables;
#[path = "../integration/support/netns.rs"]
pub mod netns;
#[path = "../integration/support/process.rs"]
pub mod process;
#[path = "../integration/support/text.rs"]
pub mod text;
#[path = "../integration/support/volume.rs"]
pub mod volume;
#[path = "../integration/support/wait.rs"]
pub mod wait;
