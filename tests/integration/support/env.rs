//! What the kernel tests need from the machine, and what to do without it.
//!
//! TESTING.md: outside CI a test lacking root or a tool may skip, saying why;
//! under `CI=true` it must fail, because a skipped kernel test is a hidden red.

use std::path::Path;
use std::sync::OnceLock;

/// Every tool a kernel test or the agent runs. Both iptables backends are
/// needed because every rule test runs under both.
const TOOLS: &[&str] = &[
    "ip",
    "iptables-nft",
    "iptables-nft-save",
    "iptables-nft-restore",
    "ip6tables-nft",
    "ip6tables-nft-save",
    "ip6tables-nft-restore",
    "iptables-legacy",
    "iptables-legacy-save",
    "iptables-legacy-restore",
    "ip6tables-legacy",
    "ip6tables-legacy-save",
    "ip6tables-legacy-restore",
    "nft",
    "bash",
    "kill",
];

/// True under the CI runner, where skipping is not allowed.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// True when the effective uid is 0 (read from /proc, to need no libc).
pub fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// Whether root, the tools and namespace creation are all available, with
/// the reason when not. Computed once per run.
pub fn kernel_available() -> Result<(), String> {
    static CHECK: OnceLock<Result<(), String>> = OnceLock::new();
    CHECK.get_or_init(check).clone()
}

/// Call first in every kernel test: `if !require_root_and_tools() { return; }`.
/// Returns false (after printing why) when the test should skip; panics
/// instead under `CI=true`.
pub fn require_root_and_tools() -> bool {
    match kernel_available() {
        Ok(()) => true,
        Err(why) if in_ci() => {
            panic!("CI=true, so this kernel test fails instead of skipping: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED (kernel test): {why}; under CI=true this is a failure");
            false
        }
    }
}

/// For a kernel test that also runs other programs (`curl`, `promtool`,
/// `prometheus`): `require_root_and_tools`, then `tools` on PATH too. Skips
/// (returns false, saying why) or, under `CI=true`, fails.
pub fn require_tools(tools: &[&str]) -> bool {
    if !require_root_and_tools() {
        return false;
    }
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "missing tools on PATH: {} (Debian packages curl, prometheus, nfacct; see scripts/install-deps.sh)",
        missing.join(", ")
    );
    if in_ci() {
        panic!("CI=true, so this kernel test fails instead of skipping: {why}");
    }
    eprintln!("SKIPPED (kernel test): {why}; under CI=true this is a failure");
    false
}

fn check() -> Result<(), String> {
    if !is_root() {
        return Err("not running as root".into());
    }
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        return Err(format!(
            "missing tools on PATH: {} (Debian packages iptables, nftables, iproute2)",
            missing.join(", ")
        ));
    }
    // Root in a container without CAP_SYS_ADMIN cannot make namespaces; find
    // out here rather than in the middle of a test. The probe is an ordinary
    // namespace of this suite, dropped at once.
    drop(
        super::netns::Netns::try_new()
            .map_err(|e| format!("cannot create a network namespace: {e}"))?,
    );
    Ok(())
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
