//! Rules as the kernel holds them (nf_tables expressions), as text we can
//! compare: read from a netlink rule dump, and predicted for our own rules.
//! Pure functions.
//!
//! A one-shot `sync` has no memory of what it wrote before, and listing the
//! rules with `nft` costs as much as listing the whole set (nft loads every
//! element first), so the rules are read over netlink and compared with a
//! prediction. The text resembles `nft --debug=netlink` (`[ payload load 4b
//! @ network header + 16 => reg 1 ]`), and it is exact: every attribute the
//! kernel dumps appears in it (an unknown one as hex), and an anonymous set
//! a rule looks up (`{ tcp, udp, sctp }`, the numgen map) is shown inline
//! with its elements, because its kernel name (`__set0`) changes whenever
//! the rule is written again. A prediction that misses (another nft
//! version's bytecode) costs time, never correctness: the agent then asks
//! `nft -j` and learns the form this kernel shows.

use std::collections::BTreeMap;

use super::wire::{Attrs, as_be32, as_str, attr, hex};
use crate::plan::{Family, PortRange, Protocol};

/// `NFT_SET_ANONYMOUS`.
pub const SET_ANONYMOUS: u32 = 0x1;
/// `NFT_DATA_VERDICT`, a map's data type for verdicts.
const DATA_VERDICT: u32 = 0xffff_ff00;

/// A set's shape, from a set dump.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetInfo {
    pub flags: u32,
    pub key_type: u32,
    pub key_len: u32,
    pub data_type: Option<u32>,
    pub data_len: Option<u32>,
}

impl SetInfo {
    /// Reads a NEWSET message's attributes.
    pub fn parse(attrs: &Attrs<'_>) -> SetInfo {
        SetInfo {
            flags: attrs.get_be32(attr::SET_FLAGS).unwrap_or(0),
            key_type: attrs.get_be32(attr::SET_KEY_TYPE).unwrap_or(0),
            key_len: attrs.get_be32(attr::SET_KEY_LEN).unwrap_or(0),
            data_type: attrs.get_be32(attr::SET_DATA_TYPE),
            data_len: attrs.get_be32(attr::SET_DATA_LEN),
        }
    }

    pub fn anonymous(&self) -> bool {
        self.flags & SET_ANONYMOUS != 0
    }
}

/// An anonymous set inline: its shape and its elements (each one
/// `NFTA_LIST_ELEM` payload from its element dump), sorted.
pub fn render_set(info: &SetInfo, elements: &[Vec<u8>]) -> String {
    let mut items: Vec<String> = elements.iter().map(|e| render_elem(e)).collect();
    items.sort();
    let mut out = format!(
        "{{ flags {:#x} key {}/{}",
        info.flags, info.key_type, info.key_len
    );
    match info.data_type {
        Some(DATA_VERDICT) => out.push_str(" data verdict"),
        Some(t) => out.push_str(&format!(" data {t}")),
        None => {}
    }
    if let Some(len) = info.data_len {
        out.push_str(&format!("/{len}"));
    }
    out.push_str(" elements ");
    out.push_str(&items.join(", "));
    out.push_str(" }");
    out
}

fn render_elem(payload: &[u8]) -> String {
    let mut f = Fields::new(payload);
    let key = f
        .take(attr::SET_ELEM_KEY)
        .and_then(|k| Attrs::new(k).get(attr::DATA_VALUE))
        .map(hex)
        .unwrap_or_else(|| "?".into());
    let mut out = key;
    match f.take(attr::SET_ELEM_FLAGS).and_then(as_be32) {
        None | Some(0) => {}
        Some(1) => out.push_str(" end"),
        Some(other) => out.push_str(&format!(" flags {other:#x}")),
    }
    if let Some(data) = f.take(attr::SET_ELEM_DATA) {
        out.push_str(" : ");
        out.push_str(&render_data(data));
    }
    out.push_str(&f.rest());
    out
}

/// `NFTA_DATA_VALUE` as hex, or a verdict in words.
fn render_data(payload: &[u8]) -> String {
    let data = Attrs::new(payload);
    if let Some(value) = data.get(attr::DATA_VALUE) {
        return format!("0x{}", hex(value));
    }
    if let Some(verdict) = data.get_nested(attr::DATA_VERDICT) {
        let code = verdict
            .get_be32(attr::VERDICT_CODE)
            .map(|c| c as i32)
            .unwrap_or(i32::MIN);
        let chain = verdict.get_str(attr::VERDICT_CHAIN).unwrap_or("?");
        return match code {
            0 => "drop".into(),
            1 => "accept".into(),
            -1 => "continue".into(),
            -2 => "break".into(),
            -3 => format!("jump {chain}"),
            -4 => format!("goto {chain}"),
            -5 => "return".into(),
            other => format!("verdict {other}"),
        };
    }
    format!("data 0x{}", hex(payload))
}

/// The names of the sets a rule's expressions look up.
pub fn looked_up_sets(expressions: &[u8]) -> Vec<String> {
    let mut names = Vec::new();
    for (_, expr) in Attrs::new(expressions).flatten() {
        let expr = Attrs::new(expr);
        if expr.get_str(attr::EXPR_NAME) == Some("lookup")
            && let Some(name) = expr
                .get_nested(attr::EXPR_DATA)
                .and_then(|d| d.get_str(LOOKUP_SET))
        {
            names.push(name.to_owned());
        }
    }
    names
}

/// One rule as text: its expressions in order, then any user data (a
/// comment) or compat data, which our rules never carry. `anonymous` maps
/// an anonymous set's kernel name to its inline rendering.
pub fn render_rule(rule: &Attrs<'_>, anonymous: &BTreeMap<String, String>) -> String {
    let mut parts = Vec::new();
    if let Some(expressions) = rule.get(attr::RULE_EXPRESSIONS) {
        for item in Attrs::new(expressions) {
            match item {
                Ok((_, expr)) => parts.push(render_expr(expr, anonymous)),
                Err(e) => parts.push(format!("[ malformed: {e} ]")),
            }
        }
    }
    for (kind, name) in [(RULE_COMPAT, "compat"), (RULE_USERDATA, "userdata")] {
        if let Some(value) = rule.get(kind) {
            parts.push(format!("{name} 0x{}", hex(value)));
        }
    }
    parts.join(" ")
}

const RULE_COMPAT: u16 = 5;
const RULE_USERDATA: u16 = 7;
const LOOKUP_SET: u16 = 1;

/// The attributes of one expression, taken one by one; what is left is
/// shown raw, so nothing the kernel said is lost.
struct Fields<'a> {
    items: Vec<(u16, &'a [u8])>,
}

impl<'a> Fields<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Fields {
            items: Attrs::new(payload).flatten().collect(),
        }
    }

    fn take(&mut self, kind: u16) -> Option<&'a [u8]> {
        let at = self.items.iter().position(|(k, _)| *k == kind)?;
        Some(self.items.remove(at).1)
    }

    /// A be32 attribute; one of another length stays for `rest`.
    fn u32(&mut self, kind: u16) -> Option<u32> {
        let at = self
            .items
            .iter()
            .position(|(k, v)| *k == kind && v.len() == 4)?;
        as_be32(self.items.remove(at).1)
    }

    fn reg(&mut self, kind: u16) -> String {
        self.u32(kind)
            .map_or_else(|| "reg ?".into(), |r| format!("reg {r}"))
    }

    fn rest(self) -> String {
        self.items
            .iter()
            .map(|(k, v)| format!(" attr{k}=0x{}", hex(v)))
            .collect()
    }
}

fn render_expr(payload: &[u8], anonymous: &BTreeMap<String, String>) -> String {
    let expr = Attrs::new(payload);
    let name = expr.get_str(attr::EXPR_NAME).unwrap_or("?");
    let data = expr.get(attr::EXPR_DATA).unwrap_or(&[]);
    let mut f = Fields::new(data);
    let body = match name {
        "immediate" => {
            let dreg = f.reg(1);
            let value = f.take(2).map_or_else(|| "?".into(), render_data);
            format!("immediate {dreg} {value}")
        }
        "cmp" => {
            let sreg = f.reg(1);
            let op = match f.u32(2) {
                Some(0) => "eq".to_owned(),
                Some(1) => "neq".into(),
                Some(2) => "lt".into(),
                Some(3) => "lte".into(),
                Some(4) => "gt".into(),
                Some(5) => "gte".into(),
                other => format!("op {other:?}"),
            };
            let value = f.take(3).map_or_else(|| "?".into(), render_data);
            format!("cmp {op} {sreg} {value}")
        }
        "payload" if f.items.iter().any(|(k, _)| *k == 1) => {
            let dreg = f.reg(1);
            let base = match f.u32(2) {
                Some(0) => "link".to_owned(),
                Some(1) => "network".into(),
                Some(2) => "transport".into(),
                other => format!("base {other:?}"),
            };
            let offset = f.u32(3).unwrap_or(u32::MAX);
            let len = f.u32(4).unwrap_or(u32::MAX);
            format!("payload load {len}b @ {base} header + {offset} => {dreg}")
        }
        "meta" if f.items.iter().any(|(k, _)| *k == 1) => {
            let dreg = f.reg(1);
            let key = match f.u32(2) {
                Some(3) => "mark".to_owned(),
                Some(15) => "nfproto".to_owned(),
                Some(16) => "l4proto".into(),
                other => format!("key {other:?}"),
            };
            format!("meta load {key} => {dreg}")
        }
        "ct" if f.items.iter().any(|(k, _)| *k == 1) => {
            let dreg = f.reg(1);
            let key = match f.u32(2) {
                Some(2) => "status".to_owned(),
                other => format!("key {other:?}"),
            };
            format!("ct load {key} => {dreg}")
        }
        "bitwise" => {
            let sreg = f.reg(1);
            let dreg = f.reg(2);
            // NFT_BITWISE_BOOL (0), the only operation with mask and xor,
            // is what nft writes for `&`; the length is the data's.
            if f.items
                .iter()
                .any(|(k, v)| *k == 6 && as_be32(v) == Some(0))
            {
                f.take(6);
            }
            let _ = f.u32(3);
            let mask = f.take(4).map_or_else(|| "?".into(), render_data);
            let xor = f.take(5).map_or_else(|| "?".into(), render_data);
            format!("bitwise {dreg} = ( {sreg} & {mask} ) ^ {xor}")
        }
        "nat" => {
            let kind = match f.u32(1) {
                Some(0) => "snat".to_owned(),
                Some(1) => "dnat".into(),
                other => format!("type {other:?}"),
            };
            let family = match f.u32(2) {
                Some(2) => "ip".to_owned(),
                Some(10) => "ip6".into(),
                other => format!("family {other:?}"),
            };
            let mut text = format!("nat {kind} {family}");
            for (kind, name) in [
                (3, "addr_min"),
                (4, "addr_max"),
                (5, "proto_min"),
                (6, "proto_max"),
            ] {
                if f.items.iter().any(|(k, _)| *k == kind) {
                    text.push_str(&format!(" {name} {}", f.reg(kind)));
                }
            }
            if let Some(flags) = f.u32(7) {
                text.push_str(&format!(" flags {flags:#x}"));
            }
            text
        }
        "lookup" => {
            let set = f.take(LOOKUP_SET).and_then(as_str).unwrap_or("?");
            let set = anonymous
                .get(set)
                .cloned()
                .unwrap_or_else(|| set.to_owned());
            let sreg = f.reg(2);
            let mut text = format!("lookup {sreg} set {set}");
            if f.items.iter().any(|(k, _)| *k == 3) {
                text.push_str(&format!(" d{}", f.reg(3)));
            }
            match f.u32(5) {
                None | Some(0) => {}
                Some(1) => text.push_str(" invert"),
                Some(other) => text.push_str(&format!(" flags {other:#x}")),
            }
            text
        }
        "masq" => {
            let mut text = "masq".to_owned();
            if let Some(flags) = f.u32(1) {
                text.push_str(&format!(" flags {flags:#x}"));
            }
            if f.items.iter().any(|(k, _)| *k == 2) {
                text.push_str(&format!(" proto_min {}", f.reg(2)));
            }
            if f.items.iter().any(|(k, _)| *k == 3) {
                text.push_str(&format!(" proto_max {}", f.reg(3)));
            }
            text
        }
        "fib" => {
            let dreg = f.reg(1);
            let result = match f.u32(2) {
                Some(1) => "oif".to_owned(),
                Some(2) => "oifname".into(),
                Some(3) => "type".into(),
                other => format!("result {other:?}"),
            };
            let flags = f.u32(3).unwrap_or(0);
            let mut words: Vec<String> = Vec::new();
            for (bit, word) in [
                (1, "saddr"),
                (2, "daddr"),
                (4, "mark"),
                (8, "iif"),
                (16, "oif"),
                (32, "present"),
            ] {
                if flags & bit != 0 {
                    words.push(word.into());
                }
            }
            if flags & !63 != 0 {
                words.push(format!("flags {:#x}", flags & !63));
            }
            format!("fib {} {result} => {dreg}", words.join(" "))
        }
        "numgen" => {
            let dreg = f.reg(1);
            let modulus = f.u32(2).unwrap_or(0);
            let kind = match f.u32(3) {
                Some(0) => "inc".to_owned(),
                Some(1) => "random".into(),
                other => format!("type {other:?}"),
            };
            let mut text = format!("numgen {dreg} = {kind} mod {modulus}");
            if let Some(offset) = f.u32(4) {
                text.push_str(&format!(" offset {offset}"));
            }
            text
        }
        "byteorder" => {
            let sreg = f.reg(1);
            let dreg = f.reg(2);
            let op = match f.u32(3) {
                Some(0) => "ntoh".to_owned(),
                Some(1) => "hton".into(),
                other => format!("op {other:?}"),
            };
            let len = f.u32(4).unwrap_or(0);
            let size = f.u32(5).unwrap_or(0);
            format!("byteorder {dreg} = {op}({sreg}, {size}, {len})")
        }
        other => other.to_owned(),
    };
    format!("[ {body}{} ]", f.rest())
}

/// Predictions: the text `render_rule` gives for our rules as nft 1.0.6
/// writes them (checked against the kernel in `tests/integration`).
pub mod predict {
    use super::*;

    /// `return`: the gate of a table being created.
    pub fn gate() -> String {
        "[ immediate reg 0 return ]".to_owned()
    }

    /// `RTN_LOCAL`, compared in host byte order as fib stores it.
    fn rtn_local() -> String {
        format!("0x{}", hex(&2u32.to_ne_bytes()))
    }

    /// `fib daddr type local return`.
    pub fn fib_local_return() -> String {
        format!(
            "[ fib daddr type => reg 1 ] [ cmp eq reg 1 {} ] [ immediate reg 0 return ]",
            rtn_local()
        )
    }

    /// `ip daddr @SET return` / `ip6 daddr @SET return`.
    pub fn daddr_in_set_return(family: Family, set: &str) -> String {
        let (len, offset) = match family {
            Family::Ipv4 => (4, 16),
            Family::Ipv6 => (16, 24),
        };
        format!(
            "[ payload load {len}b @ network header + {offset} => reg 1 ] [ lookup reg 1 set {set} ] [ immediate reg 0 return ]"
        )
    }

    /// `ip saddr != @SET return` / `ip6 saddr != @SET return`.
    pub fn saddr_not_in_set_return(family: Family, set: &str) -> String {
        let (len, offset) = match family {
            Family::Ipv4 => (4, 12),
            Family::Ipv6 => (16, 8),
        };
        format!(
            "[ payload load {len}b @ network header + {offset} => reg 1 ] [ lookup reg 1 set {set} invert ] [ immediate reg 0 return ]"
        )
    }

    /// A u32 as the kernel compares meta and ct values: host byte order.
    fn host_u32(value: u32) -> String {
        format!("0x{}", hex(&value.to_ne_bytes()))
    }

    /// `meta mark & MARK == MARK return`.
    pub fn mark_return(mark: u32) -> String {
        format!(
            "[ meta load mark => reg 1 ] [ bitwise reg 1 = ( reg 1 & {m} ) ^ {zero} ] [ cmp eq reg 1 {m} ] [ immediate reg 0 return ]",
            m = host_u32(mark),
            zero = host_u32(0)
        )
    }

    /// `(ip|ip6) daddr` loaded into register 1.
    fn daddr(family: Family) -> &'static str {
        match family {
            Family::Ipv4 => "[ payload load 4b @ network header + 16 => reg 1 ]",
            Family::Ipv6 => "[ payload load 16b @ network header + 24 => reg 1 ]",
        }
    }

    /// `ct status dnat ip daddr @SET return` (`IPS_DST_NAT` is 0x20).
    pub fn dnat_daddr_in_set_return(family: Family, set: &str) -> String {
        format!(
            "[ ct load status => reg 1 ] [ bitwise reg 1 = ( reg 1 & {} ) ^ {zero} ] [ cmp neq reg 1 {zero} ] {} [ lookup reg 1 set {set} ] [ immediate reg 0 return ]",
            host_u32(0x20),
            daddr(family),
            zero = host_u32(0)
        )
    }

    /// `ip daddr @SET snat to ip saddr` (`ip6` for IPv6): a NAT binding to
    /// the packet's own source; flags 0x1 is `NF_NAT_RANGE_MAP_IPS`.
    pub fn daddr_in_set_keep_saddr(family: Family, set: &str) -> String {
        let (saddr, name) = match family {
            Family::Ipv4 => ("[ payload load 4b @ network header + 12 => reg 1 ]", "ip"),
            Family::Ipv6 => ("[ payload load 16b @ network header + 8 => reg 1 ]", "ip6"),
        };
        format!(
            "{} [ lookup reg 1 set {set} ] {saddr} [ nat snat {name} addr_min reg 1 addr_max reg 1 flags 0x1 ]",
            daddr(family)
        )
    }

    fn protocol_number(p: Protocol) -> u8 {
        match p {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// `meta l4proto { tcp, udp, sctp }`: an anonymous constant set of
    /// type inet_proto (nft's type 12), one byte per key.
    pub fn l4proto_in(protocols: &[Protocol]) -> String {
        let mut keys: Vec<String> = protocols
            .iter()
            .map(|p| hex(&[protocol_number(*p)]))
            .collect();
        keys.sort();
        format!(
            "[ meta load l4proto => reg 1 ] [ lookup reg 1 set {{ flags 0x3 key 12/1 elements {} }} ]",
            keys.join(", ")
        )
    }

    /// `masquerade [to :PORTS] [fully-random]` (after `l4proto_in` when
    /// ports are given). `NF_NAT_RANGE_PROTO_SPECIFIED` is 0x2,
    /// `NF_NAT_RANGE_PROTO_RANDOM_FULLY` 0x10.
    pub fn masquerade(ports: Option<PortRange>, random_fully: bool) -> String {
        let mut flags = if random_fully { 0x10 } else { 0 };
        let mut out = String::new();
        let mut regs = String::new();
        if let Some(range) = ports {
            flags |= 0x2;
            out.push_str(&format!(
                "[ immediate reg 1 0x{} ] ",
                hex(&range.first.to_be_bytes())
            ));
            if range.first == range.last {
                regs.push_str(" proto_min reg 1 proto_max reg 1");
            } else {
                out.push_str(&format!(
                    "[ immediate reg 2 0x{} ] ",
                    hex(&range.last.to_be_bytes())
                ));
                regs.push_str(" proto_min reg 1 proto_max reg 2");
            }
        }
        out.push_str("[ masq");
        if flags != 0 {
            out.push_str(&format!(" flags {flags:#x}"));
        }
        out.push_str(&regs);
        out.push_str(" ]");
        out
    }

    /// `numgen random mod TOTAL vmap { LO-HI : jump CHAIN, ... }`, after
    /// `l4proto_in`: an anonymous interval map (flags anonymous, constant,
    /// interval, map) from a big-endian u32 (nft's integer type 4) to a
    /// verdict. Adjacent ranges share a boundary, so only the last one has
    /// an end element.
    pub fn numgen_vmap(total: u64, slices: &[(u64, String)]) -> String {
        let mut items: Vec<String> = slices
            .iter()
            .map(|(lo, chain)| format!("{} : jump {chain}", hex(&(*lo as u32).to_be_bytes())))
            .collect();
        items.push(format!("{} end", hex(&(total as u32).to_be_bytes())));
        items.sort();
        format!(
            "[ numgen reg 1 = random mod {total} offset 0 ] [ byteorder reg 1 = hton(reg 1, 4, 4) ] [ lookup reg 1 set {{ flags 0xf key 4/4 data verdict/16 elements {} }} dreg 0 ]",
            items.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::nftables::wire::Builder;

    /// An expression: its name and what writes its attributes.
    type Expr<'a> = (&'a str, &'a dyn Fn(&mut Builder));

    /// Builds a rule's attributes from its expressions.
    fn rule(exprs: &[Expr<'_>], userdata: Option<&[u8]>) -> Vec<u8> {
        let mut b = Builder::new();
        b.string(attr::RULE_TABLE, "ip-masq-agent");
        b.string(attr::RULE_CHAIN, "postrouting");
        b.be64(attr::RULE_HANDLE, 4);
        b.begin_nest(attr::RULE_EXPRESSIONS);
        for (name, body) in exprs {
            b.begin_nest(attr::LIST_ELEM);
            b.string(attr::EXPR_NAME, name);
            b.begin_nest(attr::EXPR_DATA);
            body(&mut b);
            b.end_nest();
            b.end_nest();
        }
        b.end_nest();
        if let Some(u) = userdata {
            b.bytes(RULE_USERDATA, u);
        }
        b.finish().unwrap()
    }

    fn verdict(b: &mut Builder, code: i32) {
        b.be32(1, 0);
        b.begin_nest(2);
        b.begin_nest(attr::DATA_VERDICT);
        b.be32(attr::VERDICT_CODE, code as u32);
        b.end_nest();
        b.end_nest();
    }

    fn lookup_return() -> Vec<u8> {
        rule(
            &[
                ("payload", &|b| {
                    b.be32(1, 1);
                    b.be32(2, 1);
                    b.be32(3, 16);
                    b.be32(4, 4);
                }),
                ("lookup", &|b| {
                    b.string(1, "no-masquerade");
                    b.be32(2, 1);
                    b.be32(5, 0);
                }),
                ("immediate", &|b| verdict(b, -5)),
            ],
            None,
        )
    }

    #[test]
    fn renders_and_predicts_the_set_lookup() {
        let bytes = lookup_return();
        let text = render_rule(&Attrs::new(&bytes), &BTreeMap::new());
        assert_eq!(
            text,
            "[ payload load 4b @ network header + 16 => reg 1 ] [ lookup reg 1 set no-masquerade ] [ immediate reg 0 return ]"
        );
        assert_eq!(
            text,
            predict::daddr_in_set_return(Family::Ipv4, "no-masquerade")
        );
        assert_eq!(
            looked_up_sets(Attrs::new(&bytes).get(attr::RULE_EXPRESSIONS).unwrap()),
            vec!["no-masquerade"]
        );
    }

    #[test]
    fn renders_the_fib_rule() {
        let bytes = rule(
            &[
                ("fib", &|b| {
                    b.be32(1, 1);
                    b.be32(2, 3);
                    b.be32(3, 2);
                }),
                ("cmp", &|b| {
                    b.be32(1, 1);
                    b.be32(2, 0);
                    b.begin_nest(3);
                    b.bytes(attr::DATA_VALUE, &2u32.to_ne_bytes());
                    b.end_nest();
                }),
                ("immediate", &|b| verdict(b, -5)),
            ],
            None,
        );
        assert_eq!(
            render_rule(&Attrs::new(&bytes), &BTreeMap::new()),
            predict::fib_local_return()
        );
    }

    #[test]
    fn anything_unexpected_shows() {
        // A comment, an unknown expression, an unknown attribute.
        let bytes = rule(
            &[
                ("counter", &|b| {
                    b.be64(1, 7);
                    b.be64(2, 9);
                }),
                ("masq", &|b| {
                    b.be32(1, 0x10);
                    b.be32(9, 1);
                }),
            ],
            Some(b"\x00\x03hi\x00"),
        );
        let text = render_rule(&Attrs::new(&bytes), &BTreeMap::new());
        assert_eq!(
            text,
            "[ counter attr1=0x0000000000000007 attr2=0x0000000000000009 ] [ masq flags 0x10 attr9=0x00000001 ] userdata 0x0003686900"
        );
        assert_ne!(text, predict::masquerade(None, true));
    }

    #[test]
    fn anonymous_sets_are_shown_inline() {
        let l4 = SetInfo {
            flags: 0x3,
            key_type: 12,
            key_len: 1,
            data_type: None,
            data_len: None,
        };
        let elem = |key: u8| {
            let mut b = Builder::new();
            b.begin_nest(attr::SET_ELEM_KEY);
            b.bytes(attr::DATA_VALUE, &[key]);
            b.end_nest();
            b.finish().unwrap()
        };
        // Dumped in hash order; shown sorted.
        let inline = render_set(&l4, &[elem(0x84), elem(6), elem(0x11)]);
        assert_eq!(inline, "{ flags 0x3 key 12/1 elements 06, 11, 84 }");
        let mut anonymous = BTreeMap::new();
        anonymous.insert("__set0".to_owned(), inline);
        let bytes = rule(
            &[
                ("meta", &|b| {
                    b.be32(2, 16);
                    b.be32(1, 1);
                }),
                ("lookup", &|b| {
                    b.string(1, "__set0");
                    b.be32(2, 1);
                    b.be32(5, 0);
                }),
            ],
            None,
        );
        assert_eq!(
            render_rule(&Attrs::new(&bytes), &anonymous),
            predict::l4proto_in(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp])
        );
    }

    #[test]
    fn port_predictions() {
        assert_eq!(predict::masquerade(None, false), "[ masq ]");
        assert_eq!(predict::masquerade(None, true), "[ masq flags 0x10 ]");
        assert_eq!(
            predict::masquerade(
                Some(PortRange {
                    first: 1024,
                    last: 29999
                }),
                false
            ),
            "[ immediate reg 1 0x0400 ] [ immediate reg 2 0x752f ] [ masq flags 0x2 proto_min reg 1 proto_max reg 2 ]"
        );
        assert_eq!(
            predict::numgen_vmap(61744, &[(0, "share-0".into()), (28976, "share-1".into())]),
            concat!(
                "[ numgen reg 1 = random mod 61744 offset 0 ] [ byteorder reg 1 = hton(reg 1, 4, 4) ] ",
                "[ lookup reg 1 set { flags 0xf key 4/4 data verdict/16 elements ",
                "00000000 : jump share-0, 00007130 : jump share-1, 0000f130 end } dreg 0 ]"
            )
        );
    }
}
