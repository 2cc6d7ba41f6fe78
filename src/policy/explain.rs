//! How a [`Decision`] is shown to a person (`explain`'s text line) and to a
//! program (its JSON object). Pure formatting: the decision is made in
//! [`super::decide`] and nothing here changes it.
//!
//! What must stay true: the line's first two space-separated fields are
//! the address and the verdict (`masquerade` / `no-masquerade`), so scripts
//! can cut them; the JSON object carries the same facts, and its `why` is
//! the line's third part verbatim.

use std::fmt;

use serde_json::{Value, json};

use super::{Decision, Entry, List, Reason};

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.list.key(), self.cidr)
    }
}

impl Entry {
    fn to_json(self) -> Value {
        json!({"list": self.list.key(), "cidr": self.cidr.to_string()})
    }
}

impl fmt::Display for Reason {
    /// The "why" of an `explain` line, e.g. `masqueradeCIDRs 10.9.0.0/16,
    /// longer than nonMasqueradeCIDRs 10.0.0.0/8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Cidr { decided, over } => {
                write!(f, "{decided}")?;
                if decided.list == List::LinkLocal {
                    let key = match decided.cidr {
                        ipnet::IpNet::V4(_) => "masqLinkLocal",
                        ipnet::IpNet::V6(_) => "masqLinkLocalIPv6",
                    };
                    write!(f, " ({key} is false)")?;
                }
                match over {
                    Some(o) if o.cidr.prefix_len() < decided.cidr.prefix_len() => {
                        write!(f, ", longer than {o}")
                    }
                    Some(o) => write!(f, ", equal to {o} (no-masquerade wins a tie)"),
                    None => Ok(()),
                }
            }
            Reason::PodSource => f.write_str("pod source rule: the source is outside podCIDRs"),
            Reason::Default => f.write_str("default: in no list"),
        }
    }
}

impl fmt::Display for Decision {
    /// One `explain` line: `ADDRESS VERDICT WHY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.destination, self.verdict, self.reason)
    }
}

impl Decision {
    /// `explain --output=json`: one object per address, e.g.
    /// `{"address":"10.9.5.9","verdict":"masquerade","rule":"cidr",
    /// "decided":{"list":"masqueradeCIDRs","cidr":"10.9.0.0/16"},
    /// "over":{"list":"nonMasqueradeCIDRs","cidr":"10.0.0.0/8"},"why":"…"}`.
    /// `rule` is `cidr`, `pod-source` or `default`; `decided` and `over`
    /// appear only for `cidr` (`over` only when an entry was beaten);
    /// `source` only when one was given.
    pub fn to_json(&self) -> Value {
        let mut out = json!({
            "address": self.destination.to_string(),
            "verdict": self.verdict.as_str(),
        });
        if let Some(source) = self.source {
            out["source"] = json!(source.to_string());
        }
        match self.reason {
            Reason::Cidr { decided, over } => {
                out["rule"] = json!("cidr");
                out["decided"] = decided.to_json();
                if let Some(over) = over {
                    out["over"] = over.to_json();
                }
            }
            Reason::PodSource => out["rule"] = json!("pod-source"),
            Reason::Default => out["rule"] = json!("default"),
        }
        out["why"] = json!(self.reason.to_string());
        out
    }
}
