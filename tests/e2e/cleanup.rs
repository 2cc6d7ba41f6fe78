//! The sandbox's own guarantee: nothing outlives a failed test.

use std::panic;
use std::time::Duration;

use crate::client::Client;
use crate::configs::vpn_example;
use crate::kernel::Kernel;
use crate::sandbox::{Peer, Sandbox, process_alive};
use crate::support::netns::listed;

per_kernel!(sandbox_removes_namespaces_and_processes_when_a_step_fails);

/// A step fails (here: a deliberate panic) with the whole sandbox running,
/// agent and client loops included: afterwards none of its namespaces is
/// listed and none of its processes is alive.
fn sandbox_removes_namespaces_and_processes_when_a_step_fails(kernel: Kernel) {
    let mut names = Vec::new();
    let mut pids = Vec::new();
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let mut sandbox = Sandbox::new(kernel, &vpn_example());
        sandbox.start_agent();
        let client = Client::start(&sandbox, &[Peer::Vpc], 2, 1000, Duration::from_secs(30));
        names = sandbox.namespace_names();
        pids = sandbox.pids();
        pids.push(client.pid());
        assert!(names.iter().all(|n| listed().contains(n)), "{names:?}");
        assert!(pids.iter().all(|&p| process_alive(p)), "{pids:?}");
        panic!("deliberate failure with the sandbox, the agent and a client running");
    }));
    assert!(result.is_err(), "the deliberate panic did not happen");
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(
        pids.len(),
        5,
        "three servers, the agent, the client: {pids:?}"
    );
    let left: Vec<String> = listed().into_iter().filter(|n| names.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_alive(p)).collect();
    assert!(alive.is_empty(), "processes left running: {alive:?}");
}
