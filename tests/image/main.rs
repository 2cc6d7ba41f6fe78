//! The container image, built from exactly the build context `.dockerignore`
//! lets through and run exactly as `manifests/base/daemonset.yaml` runs it,
//! inside network namespaces these tests create. Needs root and podman (with
//! runc); outside CI the tests skip without them, under `CI=true` they fail.
//!
//! - `context`: the build context of a clean clone (`git ls-files` filtered
//!   by `.dockerignore`'s rules, as the engine applies them) is copied to a
//!   fresh directory and built there with `scripts/image-build.sh`; the image
//!   holds only what the agent runs and stays within its size budget.
//! - `pod`: the DaemonSet's pod spec turned into a `podman run` (capabilities,
//!   read-only root, no privilege escalation, the ConfigMap volume read-only
//!   in kubelet's layout, the host's xtables lock, host network = the node
//!   namespace of the test), and the container checked from outside: rules
//!   in the node namespace, `--iptables-mode=auto` following kubelet's hint,
//!   a ConfigMap edit applied, SIGTERM ending it with status 0.
//!
//! What must stay true: nothing runs in the machine's own network namespace
//! (every container joins a namespace of ours through `--network ns:`), and
//! every container and namespace is removed by a drop guard.

mod context;
mod pod;

// The integration harness's modules that these tests share: namespaces,
// bounded commands and waits, kubelet-style volumes, iptables-save. At the
// crate root, because they name each other as `super::`.
#[allow(dead_code)]
#[path = "../integration/support/env.rs"]
mod env;
#[allow(dead_code)]
#[path = "../integration/support/http.rs"]
mod http;
#[allow(dead_code)]
#[path = "../integration/support/iptables.rs"]
mod iptables;
#[allow(dead_code)]
#[path = "../integration/support/netns.rs"]
mod netns;
#[allow(dead_code)]
#[path = "../integration/support/process.rs"]
mod process;
#[allow(dead_code)]
#[path = "../integration/support/text.rs"]
mod text;
#[allow(dead_code)]
#[path = "../integration/support/volume.rs"]
mod volume;
#[allow(dead_code)]
#[path = "../integration/support/wait.rs"]
mod wait;

use std::path::Path;

use env::{in_ci, require_root_and_tools};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Root, the kernel tools and podman with runc; skips (false) or, under
/// `CI=true`, fails without them.
fn require_podman() -> bool {
    if !require_root_and_tools() {
        return false;
    }
    let missing: Vec<&str> = ["podman", "runc", "git", "flock", "curl"]
        .into_iter()
        .filter(|tool| {
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|out| !out.status.success())
                .unwrap_or(true)
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing {} (apt-get install podman buildah runc debootstrap; .ci/run installs them)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("CI=true, so this image test fails instead of skipping: {why}");
    }
    eprintln!("SKIPPED (image test): {why}; under CI=true this is a failure");
    false
}
