//! The three ways the agent can hold a node's rules, and how a scenario reads,
//! checks and breaks each: the iptables backend through `iptables-nft` or
//! `iptables-legacy` (a chain in the nat table, read with `iptables-save`),
//! and the native nftables backend (`--backend=nftables`: one table
//! `ip ip-masq-agent`, read with `nft list table`).
//!
//! The scenarios' data-path expectations are the same for all three; only
//! the kernel state they assert and the way they tamper with it differ.

use std::fmt;

use crate::configs::Enforced;
use crate::sandbox::Peer;
use crate::support::iptables::{Family, Mode, normalise};
use crate::support::netns::Netns;

/// A kernel backend of the agent under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// `--backend=iptables --iptables-mode=nft` (the default backend).
    IptablesNft,
    /// `--backend=iptables --iptables-mode=legacy`.
    IptablesLegacy,
    /// `--backend=nftables`.
    Nftables,
}

/// What the nftables state reads when our table does not exist.
pub const NO_TABLE: &str = "(no table ip ip-masq-agent)\n";

/// The nftables table name, as `nft` takes it.
const TABLE: [&str; 2] = ["ip", "ip-masq-agent"];

/// One way to break the node's rules behind the agent's back, and what the
/// pod's next connection to `peer` reports while the break lasts.
pub struct Break {
    pub what: &'static str,
    /// The command, run in the node namespace.
    pub command: Vec<String>,
    pub peer: Peer,
    /// `timeout` (the peer got the pod's address and cannot answer) or the
    /// source address the peer sees.
    pub broken: &'static str,
}

/// Our jump, exactly as iptables-save prints it (COMPAT §4).
const JUMP: &str = concat!(
    r#"-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL "#,
    r#"destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT"#,
);

impl Kernel {
    pub const ALL: [Kernel; 3] = [
        Kernel::IptablesNft,
        Kernel::IptablesLegacy,
        Kernel::Nftables,
    ];

    /// The iptables variant, for the iptables backend.
    pub fn iptables(self) -> Option<Mode> {
        match self {
            Kernel::IptablesNft => Some(Mode::Nft),
            Kernel::IptablesLegacy => Some(Mode::Legacy),
            Kernel::Nftables => None,
        }
    }

    /// The agent's flags selecting this backend, as a DaemonSet passes them.
    pub fn agent_flags(self) -> Vec<String> {
        match self.iptables() {
            Some(mode) => vec![mode.agent_arg()],
            None => vec!["--backend=nftables".to_owned()],
        }
    }

    /// The agent's state in `node`, normalised: `iptables-save -t nat`
    /// (comments dropped, chain counters zeroed), or `nft list table ip
    /// ip-masq-agent` (no handles, tabs as four spaces; `NO_TABLE` if absent).
    pub fn state(self, node: &Netns) -> String {
        match self.iptables() {
            Some(mode) => normalise(&node.run(&[&mode.tool(Family::V4, "-save"), "-t", "nat"])),
            None => nft_table(node, false),
        }
    }

    /// The state with everything that a rewrite changes: `iptables-save -c`
    /// (every counter; comment lines dropped), or `nft -a list table`
    /// (table, set, chain and rule handles). Equal before and after means
    /// nothing was rewritten.
    pub fn state_exact(self, node: &Netns) -> String {
        match self.iptables() {
            Some(mode) => node
                .run(&[&mode.tool(Family::V4, "-save"), "-c", "-t", "nat"])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect(),
            None => nft_table(node, true),
        }
    }

    /// The state of a node whose agent enforces `rules` with the defaults
    /// (link-local exempt, `--random-fully`).
    pub fn expected(self, rules: &Enforced) -> String {
        match self.iptables() {
            Some(_) => crate::configs::nat_for(rules.cidrs),
            None => rules.table.to_owned(),
        }
    }

    /// The state of a node nobody wrote to.
    pub fn empty(self) -> &'static str {
        match self.iptables() {
            Some(_) => crate::configs::EMPTY_NAT,
            None => NO_TABLE,
        }
    }

    /// The other two kernels, which the agent must leave untouched.
    pub fn others(self) -> impl Iterator<Item = Kernel> {
        Kernel::ALL.into_iter().filter(move |k| *k != self)
    }

    /// Ways to break a node that enforces the VPN example (see `Break`):
    /// iptables: the flushed chain and the deleted jump; nftables: the
    /// flushed base chain, a deleted set element (the VPC's) and the
    /// deleted table.
    pub fn breaks(self) -> Vec<Break> {
        let words = |line: &str| crate::support::iptables::shell_words(line);
        match self.iptables() {
            Some(mode) => {
                let ipt = |args: &str| {
                    let mut command = vec![mode.tool(Family::V4, ""), "-w".into(), "5".into()];
                    command.extend(words(args));
                    command
                };
                vec![
                    Break {
                        what: "the flushed chain",
                        command: ipt("-t nat -F IP-MASQ-AGENT"),
                        peer: Peer::Vpn,
                        broken: "timeout",
                    },
                    Break {
                        what: "the deleted jump",
                        command: ipt(&format!(
                            "-t nat {}",
                            JUMP.replacen("-A POSTROUTING", "-D POSTROUTING", 1)
                        )),
                        peer: Peer::Vpn,
                        broken: "timeout",
                    },
                ]
            }
            None => vec![
                Break {
                    what: "the flushed base chain",
                    command: words("nft flush chain ip ip-masq-agent postrouting"),
                    peer: Peer::Vpn,
                    broken: "timeout",
                },
                Break {
                    what: "the VPC's set element deleted",
                    command: words(
                        "nft delete element ip ip-masq-agent no-masquerade '{ 10.10.0.0/24 }'",
                    ),
                    peer: Peer::Vpc,
                    broken: Peer::Vpc.node_addr(),
                },
                Break {
                    what: "the deleted table",
                    command: words("nft delete table ip ip-masq-agent"),
                    peer: Peer::Vpn,
                    broken: "timeout",
                },
            ],
        }
    }

    /// After a restart on a node enforcing `rules`: one set of our rules,
    /// not two. iptables: exactly one jump to our chain in POSTROUTING;
    /// nftables: exactly one table in the node (ours), its set equal to the
    /// config and its base chain holding exactly its three rules (the whole
    /// listing equals `rules`). Returns a description of what is wrong.
    pub fn check_single(self, node: &Netns, rules: &Enforced) -> Result<(), String> {
        let state = self.state(node);
        match self.iptables() {
            Some(_) => {
                let jumps = state
                    .lines()
                    .filter(|l| l.starts_with("-A POSTROUTING ") && l.ends_with("-j IP-MASQ-AGENT"))
                    .count();
                if jumps == 1 {
                    Ok(())
                } else {
                    Err(format!("{jumps} jumps:\n{state}"))
                }
            }
            None => {
                let tables = node.run(&["nft", "list", "tables"]);
                if tables != "table ip ip-masq-agent\n" {
                    return Err(format!("tables in the node:\n{tables}"));
                }
                if state != rules.table {
                    return Err(format!("the table:\n{state}"));
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kernel::IptablesNft => "iptables-nft",
            Kernel::IptablesLegacy => "iptables-legacy",
            Kernel::Nftables => "nftables",
        })
    }
}

/// `nft [-a] list table ip ip-masq-agent` in `node`, tabs as four spaces;
/// `NO_TABLE` when the table does not exist.
fn nft_table(node: &Netns, handles: bool) -> String {
    let mut args = vec!["nft"];
    if handles {
        args.push("-a");
    }
    args.extend(["list", "table"]);
    args.extend(TABLE);
    let out = node.exec(&args);
    if out.status.success() {
        String::from_utf8_lossy(&out.stdout).replace('\t', "    ")
    } else if String::from_utf8_lossy(&out.stderr).contains("No such file or directory") {
        NO_TABLE.to_owned()
    } else {
        panic!(
            "{}",
            crate::support::process::describe(
                &format!("in {}: {}", node.name(), args.join(" ")),
                &out
            )
        )
    }
}
