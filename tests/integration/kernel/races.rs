//! A foreign writer that races the agent: right after the agent's own
//! write, a shim around the tool it writes with inserts a rule of its own
//! into our chain (once). What the agent reads back then is not what it
//! wrote, and must never become its reference: the next resync repairs it.

use super::DEFAULT_RULES;
use super::nft::{DEFAULT_TABLE, NFT, our_table, wait_table};
use crate::support::Family::V4;
use crate::support::shim::Shims;
use crate::support::*;

/// Defaults, resynced every second.
const DEFAULTS_FAST: &str = "resyncInterval: 1s\n";

/// A shim for `tool` that runs the real one and then, if the file `armed`
/// exists in the shim directory and `trigger` holds for its arguments,
/// runs `race` (a shell command line) and then deletes `armed`.
fn racing_shim(shims: &Shims, tool: &str, trigger: &str, race: &str) {
    let armed = shims.dir().join("armed");
    shims.install(
        tool,
        &format!(
            "\"$REAL\" \"$@\"\nrc=$?\nif [ \"$rc\" = 0 ] && {trigger} && [ -e \"{armed}\" ]; then {race}; rm -f \"{armed}\"; fi\nexit \"$rc\"",
            armed = armed.display()
        ),
    );
}

fn arm(shims: &Shims) {
    std::fs::write(shims.dir().join("armed"), "").expect("arm the racing shim");
}

/// Waits until the shim has raced the agent (its rule is in).
fn wait_raced(agent: &mut Agent, shims: &Shims) {
    let armed = shims.dir().join("armed");
    wait_until(
        DEADLINE,
        "the shim to race the agent",
        || {
            agent.assert_running();
            armed.exists()
        },
        |armed| !*armed,
    );
}

both_modes! {
    /// The first write of our chain is raced by `-I IP-MASQ-AGENT 2 ... -j
    /// RETURN`: the next resync removes it and says which rule it was.
    fn rule_slipped_in_after_our_write_is_repaired(mode) {
        let ns = Netns::new();
        let shims = Shims::new();
        let main = mode.tool(V4, "");
        racing_shim(
            &shims,
            &mode.tool(V4, "-restore"),
            "true",
            &format!("{main} -w 5 -t nat -I IP-MASQ-AGENT 2 -d 203.0.113.0/24 -j RETURN"),
        );
        arm(&shims);
        let volume = ConfigVolume::with(DEFAULTS_FAST);
        let path = shims.path();
        let mut agent = Agent::start_with_env(&ns, mode, &volume, &[], &[("PATH", &path)]);
        wait_raced(&mut agent, &shims);
        wait_for_text(
            DEADLINE,
            "the rule slipped in after the first write to be removed",
            || {
                agent.assert_running();
                save(&ns, mode, V4)
            },
            DEFAULT_RULES,
        );
        agent.wait_for_log("right after our write, chain IP-MASQ-AGENT: 1 unexpected [-A IP-MASQ-AGENT -d 203.0.113.0/24 -j RETURN]");
        agent.wait_for_log("drift repaired: chain IP-MASQ-AGENT: 1 unexpected [-A IP-MASQ-AGENT -d 203.0.113.0/24 -j RETURN]");
        let seen = agent.count_lines("rules unchanged");
        agent.wait_for_lines("rules unchanged", seen + 2);
        assert_eq!(save(&ns, mode, V4), DEFAULT_RULES, "the repair holds");
    }
}

/// nftables: drift makes the agent rewrite our chain with `nft -f`, and a
/// rule slipped in right after that write is repaired at the next resync,
/// not taken for how this nft prints our rules.
#[test]
fn nftables_rule_slipped_in_after_our_write_is_repaired() {
    if !require_root_and_tools() {
        return;
    }
    let ns = Netns::new();
    let shims = Shims::new();
    racing_shim(
        &shims,
        "nft",
        "[ \"$1\" = -f ]",
        "\"$REAL\" insert rule ip ip-masq-agent postrouting ip daddr 203.0.113.0/24 return",
    );
    let volume = ConfigVolume::with(DEFAULTS_FAST);
    let path = shims.path();
    let mut agent = Agent::start_with_env(&ns, Mode::Nft, &volume, &[NFT], &[("PATH", &path)]);
    wait_table(&mut agent, &ns, DEFAULT_TABLE, "the first sync");
    arm(&shims);
    ns.run(&[
        "nft",
        "insert",
        "rule",
        "ip",
        "ip-masq-agent",
        "postrouting",
        "ip",
        "daddr",
        "198.51.100.0/24",
        "return",
    ]);
    wait_raced(&mut agent, &shims);
    wait_table(
        &mut agent,
        &ns,
        DEFAULT_TABLE,
        "the rule slipped in after the repair to be removed",
    );
    agent.wait_for_log("right after our write, chain postrouting: 1 unexpected");
    agent.wait_for_log("drift repaired: chain postrouting: 1 unexpected");
    let seen = agent.count_lines("rules unchanged");
    agent.wait_for_lines("rules unchanged", seen + 2);
    assert_eq!(
        our_table(&ns, V4).as_deref(),
        Some(DEFAULT_TABLE),
        "the repair holds"
    );
}
