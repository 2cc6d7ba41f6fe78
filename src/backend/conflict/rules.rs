//! The typed model of the nat postrouting path: rules as matches and a
//! target, chains by name, base chains by where they live and their
//! priority. Both parsers produce it; the walk reads only it.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;

use crate::plan::Family;

/// One condition of a rule. `neg` is iptables' `!` (nft's `!=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// `-s` / `ip saddr`: the source is in one of `nets`.
    Source { neg: bool, nets: Vec<IpNet> },
    /// `-d` / `ip daddr`.
    Destination { neg: bool, nets: Vec<IpNet> },
    /// `-o` / `oifname`; a trailing `+` (iptables) or `*` (nft) is a prefix.
    OutInterface { neg: bool, names: Vec<String> },
    /// `-i` / `iifname`.
    InInterface { neg: bool, names: Vec<String> },
    /// `(mark & mask) == value` (`-m mark --mark V/M`, `meta mark & M == V`).
    Mark { neg: bool, value: u32, mask: u32 },
    /// `-m addrtype --dst-type LOCAL` / `fib daddr type local`.
    DestinationLocal { neg: bool },
    /// `-m addrtype --src-type LOCAL` / `fib saddr type local`.
    SourceLocal { neg: bool },
    /// `ct status dnat` / `-m conntrack --ctstate DNAT`: the connection
    /// was DNATed (sent to a Service).
    Dnat { neg: bool },
    /// `meta nfproto ipv4` in an inet table.
    Nfproto { neg: bool, family: Family },
    /// Anything else: it may or may not match; the text says what it was.
    Unknown(String),
}

impl fmt::Display for Match {
    /// Neutral words for a match, for "may match" notes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let not = |neg: bool| if neg { "not " } else { "" };
        let nets = |nets: &[IpNet]| {
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Match::Source { neg, nets: n } => write!(f, "source {}in {}", not(*neg), nets(n)),
            Match::Destination { neg, nets: n } => {
                write!(f, "destination {}in {}", not(*neg), nets(n))
            }
            Match::OutInterface { neg, names } => {
                write!(f, "output interface {}{}", not(*neg), names.join(","))
            }
            Match::InInterface { neg, names } => {
                write!(f, "input interface {}{}", not(*neg), names.join(","))
            }
            Match::Mark { neg, value, mask } => write!(
                f,
                "mark & {mask:#x} {}{value:#x}",
                if *neg { "!= " } else { "== " }
            ),
            Match::DestinationLocal { neg } => write!(f, "destination {}local", not(*neg)),
            Match::SourceLocal { neg } => write!(f, "source {}local", not(*neg)),
            Match::Nfproto { neg, family } => write!(f, "family {}{family}", not(*neg)),
            Match::Dnat { neg } => write!(f, "connection {}DNATed", not(*neg)),
            Match::Unknown(text) => f.write_str(text),
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// MASQUERADE, SNAT, NETMAP: binds the source NAT; the decision is made.
    Nat(String),
    /// ACCEPT: ends this base chain's traversal.
    Accept,
    /// RETURN: back to the calling chain (in a base chain: its policy).
    Return,
    /// DROP, REJECT.
    Drop,
    Jump(String),
    Goto(String),
    /// MARK, LOG, counters: the traversal goes on.
    Continue,
    /// nft's `iifname vmap @MAP` / `oifname vmap @MAP`: a named verdict
    /// map keyed by the interface (`output`: oifname). The reader replaces
    /// it by one rule per element; unread, it decides nothing.
    VerdictMap {
        output: bool,
        map: String,
    },
}

/// One rule: where it was read, how it printed, what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The rule as the tool printed it (`-A CHAIN ...`), or a rendering of
    /// nft's JSON when that is where it came from.
    pub text: String,
    pub matches: Vec<Match>,
    pub target: Target,
    /// The comment, if any (`-m comment --comment` / nft's `comment`).
    pub comment: Option<String>,
}

/// Which program's tables a base chain lives in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Origin {
    /// iptables' nat table of one variant (`nft` or `legacy`).
    Iptables { variant: &'static str },
    /// An nftables table (`ip kube-proxy`, `inet foo`).
    Nftables { family: String, table: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Iptables { variant } => write!(f, "iptables-{variant} nat"),
            Origin::Nftables { family, table } => write!(f, "nftables table {family} {table}"),
        }
    }
}

/// One base chain hooked at nat postrouting and the chains it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hooked {
    pub origin: Origin,
    /// The hook priority (srcnat is 100).
    pub priority: i32,
    /// The base chain's name (`POSTROUTING` for iptables).
    pub base: String,
    /// Every chain read, by name, rules in order.
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// This is our nftables table: reaching it means our decision.
    pub ours: bool,
    /// Chains jumped to that could not be read (absent, or past the bound).
    pub unread: Vec<String>,
}

impl Hooked {
    /// An iptables variant's nat POSTROUTING.
    pub fn iptables(variant: &'static str, priority: i32) -> Hooked {
        Hooked {
            origin: Origin::Iptables { variant },
            priority,
            base: "POSTROUTING".to_owned(),
            chains: BTreeMap::new(),
            ours: false,
            unread: Vec::new(),
        }
    }
}

/// The comment upstream's agent (and ours) puts on its POSTROUTING jump.
pub const UPSTREAM_COMMENT_PREFIX: &str = "ip-masq-agent:";

impl Rule {
    /// The rule's text for messages: in backquotes, control characters
    /// escaped (it is the kernel's, printed by a tool).
    pub fn shown(&self) -> String {
        let text: String = self
            .text
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect();
        format!("`{text}`")
    }

    /// The chain this rule jumps or goes to, if any.
    pub fn chain_target(&self) -> Option<&str> {
        match &self.target {
            Target::Jump(chain) | Target::Goto(chain) => Some(chain),
            _ => None,
        }
    }

    /// An upstream-style jump (comment starting `ip-masq-agent:`) to a chain.
    pub fn upstream_jump(&self) -> Option<&str> {
        let comment = self.comment.as_deref()?;
        let chain = self.chain_target()?;
        comment
            .trim_matches('"')
            .starts_with(UPSTREAM_COMMENT_PREFIX)
            .then_some(chain)
    }
}
