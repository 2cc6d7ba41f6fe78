//! Config paths that are not what they should be. A FIFO where the config
//! file belongs once froze the whole agent (its HTTP endpoints too) and made
//! it ignore SIGTERM; now anything but a regular file is refused without
//! being opened for a blocking read, and the agent stays responsive.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_fifo_as_the_config_is_refused_and_sigterm_still_works() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let fifo = dir.path().join("ip-masq-agent");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success(), "mkfifo failed");
    let mut agent = Agent::start_sources(&ns, Mode::Nft, std::slice::from_ref(&fifo), &[]);
    agent.wait_for_log("is a FIFO, not a regular file; refusing to read it");
    // Nothing valid was ever read, so nothing was written.
    let nat = save(&ns, Mode::Nft, Family::V4);
    assert!(
        !nat.contains("IP-MASQ-AGENT"),
        "rules written without a valid config:\n{nat}"
    );
    agent.signal("TERM");
    let status = agent.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "SIGTERM not honoured: {status:?}\n{}",
        agent.log()
    );
}
