//! The test harness: everything the tests need to drive the real binary in
//! network namespaces they own, and to compare what the kernel then holds.
//!
//! What must stay true: every namespace is created here, named
//! `imqa-<pid>-<n>`, and deleted by a drop guard (also on panic); every
//! process and every wait has a deadline; nothing here runs iptables outside
//! a namespace of ours.

pub mod agent;
pub mod apiserver;
pub mod busy_node;
pub mod env;
pub mod http;
pub mod iptables;
pub mod netns;
pub mod process;
pub mod shim;
pub mod text;
pub mod volume;
pub mod wait;

pub use agent::{Agent, agent_bin, oneshot, sync_ok};
pub use env::{require_root_and_tools, require_tools};
pub use iptables::{Family, Mode, ipt, save, save_with_counters};
pub use netns::Netns;
pub use text::assert_text_eq;
pub use volume::ConfigVolume;
pub use wait::{DEADLINE, hold_for, wait_for_text, wait_until};
