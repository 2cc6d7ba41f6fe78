//! nf_tables netlink messages as bytes: the netlink header, nfnetlink's
//! `nfgenmsg`, TLV attributes, batches, and reading replies and acks.
//!
//! Pure functions only (the socket is in `netlink.rs`), so every layout is
//! unit-tested. Layouts follow `linux/netlink.h`, `linux/netfilter/nfnetlink.h`
//! and `linux/netfilter/nf_tables.h`: headers in host byte order, nf_tables
//! integers in network byte order, attributes padded to 4 bytes, and an
//! attribute's length is a u16, so no attribute (nests included) may exceed
//! 65 535 bytes: large element lists are split over several messages.

use std::fmt;

use crate::plan::Family;

/// `NETLINK_NETFILTER`, the protocol of nfnetlink sockets.
pub const NETLINK_NETFILTER: isize = 12;

// Netlink header flags.
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP_INTR: u16 = 0x10;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an error message: extended-ack TLVs follow the echoed header.
const NLM_F_ACK_TLVS: u16 = 0x200;
/// In an error message: only the header of the request is echoed.
const NLM_F_CAPPED: u16 = 0x100;

// Control message types.
pub const NLMSG_NOOP: u16 = 1;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLMSGERR_ATTR_MSG: u16 = 1;

pub const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NFGENMSG_LEN: usize = 4;
/// The type bits of an attribute's type (the top two are flags).
const NLA_TYPE_MASK: u16 = 0x3fff;
/// Marks a nested attribute; the kernel accepts nests with or without it,
/// nft sets it, and so do we.
const NLA_F_NESTED: u16 = 0x8000;
/// An attribute's length field is a u16.
pub const MAX_ATTR_LEN: usize = u16::MAX as usize;

/// `NFNL_MSG_BATCH_BEGIN` / `END` (`NLMSG_MIN_TYPE` and the next).
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
/// nf_tables' subsystem id, in the high byte of a message type and in the
/// batch header's `res_id`.
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// Batch attribute: run the batch only if the ruleset generation still is
/// this one (else the kernel answers `ERESTART`).
pub const NFNLA_BATCH_GENID: u16 = 1;

/// `NFPROTO_*` / `AF_*`, as `nfgenmsg.nfgen_family`.
pub const NFPROTO_UNSPEC: u8 = 0;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

/// A family as nf_tables sees it: made once from [`Family`] where the
/// backend turns to the kernel, and the one form the encoder takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Ip,
    Ip6,
}

impl Proto {
    pub fn of(family: Family) -> Proto {
        match family {
            Family::Ipv4 => Proto::Ip,
            Family::Ipv6 => Proto::Ip6,
        }
    }

    /// `nfgenmsg.nfgen_family`.
    pub fn nfproto(self) -> u8 {
        match self {
            Proto::Ip => NFPROTO_IPV4,
            Proto::Ip6 => NFPROTO_IPV6,
        }
    }

    /// nft's name for the family.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Ip => "ip",
            Proto::Ip6 => "ip6",
        }
    }

    /// Bytes in an address (a set key).
    pub fn addr_len(self) -> usize {
        match self {
            Proto::Ip => 4,
            Proto::Ip6 => 16,
        }
    }
}

/// `enum nf_tables_msg_types`.
pub mod msg {
    pub const GETTABLE: u16 = 1;
    pub const GETCHAIN: u16 = 4;
    pub const GETRULE: u16 = 7;
    pub const DELRULE: u16 = 8;
    pub const GETSET: u16 = 10;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
    pub const GETGEN: u16 = 16;
}

/// Attribute numbers of `nf_tables.h`, per object.
pub mod attr {
    pub const TABLE_NAME: u16 = 1;
    /// How many chains, sets, objects and flowtables the table holds.
    pub const TABLE_USE: u16 = 3;

    pub const CHAIN_TABLE: u16 = 1;
    pub const CHAIN_NAME: u16 = 3;
    pub const CHAIN_HOOK: u16 = 4;
    pub const CHAIN_POLICY: u16 = 5;
    pub const CHAIN_TYPE: u16 = 7;
    pub const HOOK_HOOKNUM: u16 = 1;
    pub const HOOK_PRIORITY: u16 = 2;

    pub const RULE_TABLE: u16 = 1;
    pub const RULE_CHAIN: u16 = 2;
    pub const RULE_HANDLE: u16 = 3;
    pub const RULE_EXPRESSIONS: u16 = 4;
    pub const LIST_ELEM: u16 = 1;
    pub const EXPR_NAME: u16 = 1;
    pub const EXPR_DATA: u16 = 2;

    pub const SET_TABLE: u16 = 1;
    pub const SET_NAME: u16 = 2;
    pub const SET_FLAGS: u16 = 3;
    pub const SET_KEY_TYPE: u16 = 4;
    pub const SET_KEY_LEN: u16 = 5;
    pub const SET_DATA_TYPE: u16 = 6;
    pub const SET_DATA_LEN: u16 = 7;

    pub const SET_ELEM_LIST_TABLE: u16 = 1;
    pub const SET_ELEM_LIST_SET: u16 = 2;
    pub const SET_ELEM_LIST_ELEMENTS: u16 = 3;
    pub const SET_ELEM_KEY: u16 = 1;
    pub const SET_ELEM_DATA: u16 = 2;
    pub const SET_ELEM_FLAGS: u16 = 3;
    pub const SET_ELEM_USERDATA: u16 = 6;

    pub const DATA_VALUE: u16 = 1;
    pub const DATA_VERDICT: u16 = 2;
    pub const VERDICT_CODE: u16 = 1;
    pub const VERDICT_CHAIN: u16 = 2;

    pub const GEN_ID: u16 = 1;
}

/// A request or batch being built: messages appended one after another,
/// each closed before the next opens.
#[derive(Debug, Default)]
pub struct Builder {
    buf: Vec<u8>,
    message: Option<usize>,
    nests: Vec<usize>,
    /// An attribute or nest outgrew its u16 length (a caller's bug: it
    /// must split); reported by `finish`, never sent.
    oversized: bool,
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }

    /// Opens a message: netlink header, then `nfgenmsg` (version 0).
    pub fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
        self.end();
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel's
        self.buf.push(family);
        self.buf.push(0); // NFNETLINK_V0
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        self.message = Some(start);
    }

    /// Opens an nf_tables message of type `msg::…`.
    pub fn begin_nft(&mut self, nft_msg: u16, flags: u16, seq: u32, family: u8) {
        self.begin(
            (NFNL_SUBSYS_NFTABLES << 8) | nft_msg,
            NLM_F_REQUEST | flags,
            seq,
            family,
            0,
        );
    }

    /// Closes the open message (and any nest left open).
    pub fn end(&mut self) {
        while !self.nests.is_empty() {
            self.end_nest();
        }
        if let Some(start) = self.message.take() {
            let len = (self.buf.len() - start) as u32;
            self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
        }
    }

    fn header(&mut self, kind: u16, payload: usize) {
        let len = NLA_HDRLEN + payload;
        if len > MAX_ATTR_LEN {
            self.oversized = true;
        }
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    pub fn bytes(&mut self, kind: u16, payload: &[u8]) {
        self.header(kind, payload.len());
        self.buf.extend_from_slice(payload);
        self.pad();
    }

    /// A NUL-terminated string, as nf_tables names are sent.
    pub fn string(&mut self, kind: u16, value: &str) {
        self.header(kind, value.len() + 1);
        self.buf.extend_from_slice(value.as_bytes());
        self.buf.push(0);
        self.pad();
    }

    pub fn be32(&mut self, kind: u16, value: u32) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn be64(&mut self, kind: u16, value: u64) {
        self.bytes(kind, &value.to_be_bytes());
    }

    pub fn begin_nest(&mut self, kind: u16) {
        self.nests.push(self.buf.len());
        self.header(kind | NLA_F_NESTED, 0);
    }

    pub fn end_nest(&mut self) {
        if let Some(start) = self.nests.pop() {
            let len = self.buf.len() - start;
            if len > MAX_ATTR_LEN {
                self.oversized = true;
            }
            self.buf[start..start + 2].copy_from_slice(&(len as u16).to_ne_bytes());
        }
    }

    /// The bytes to send, or why they must not be sent.
    pub fn finish(mut self) -> Result<Vec<u8>, String> {
        self.end();
        if self.oversized {
            return Err("an attribute exceeds netlink's 64 KiB attribute length".into());
        }
        Ok(self.buf)
    }
}

/// A message of a batch: its sequence number and nf_tables type.
pub type Sent = (u32, u16);

/// A batch: `BATCH_BEGIN`, nf_tables messages, `BATCH_END`. The kernel runs
/// it as one transaction: all of it commits, or none of it.
#[derive(Debug)]
pub struct Batch {
    builder: Builder,
    first_seq: u32,
    next_seq: u32,
    /// Every message but begin and end (all ask for an ack).
    acked: Vec<Sent>,
}

impl Batch {
    /// `genid`: run only on this ruleset generation (optimistic
    /// concurrency against what we read).
    pub fn new(first_seq: u32, genid: Option<u32>) -> Self {
        let mut builder = Builder::new();
        builder.begin(
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        if let Some(genid) = genid {
            builder.be32(NFNLA_BATCH_GENID, genid);
        }
        builder.end();
        Batch {
            builder,
            first_seq,
            next_seq: first_seq.wrapping_add(1),
            acked: Vec::new(),
        }
    }

    /// Opens the next nf_tables message (acked, so success is confirmed
    /// message by message) and returns the builder to fill it.
    pub fn message(&mut self, nft_msg: u16, flags: u16, family: u8) -> &mut Builder {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.acked.push((seq, nft_msg));
        self.builder
            .begin_nft(nft_msg, flags | NLM_F_ACK, seq, family);
        &mut self.builder
    }

    /// The sequence number of `BATCH_BEGIN`: the kernel reports a failed
    /// commit (or a stale generation) against it.
    pub fn begin_seq(&self) -> u32 {
        self.first_seq
    }

    /// The bytes to send, and each message's sequence number and type.
    pub fn finish(mut self) -> Result<(Vec<u8>, Vec<Sent>), String> {
        self.builder.end();
        self.builder.begin(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq,
            NFPROTO_UNSPEC,
            NFNL_SUBSYS_NFTABLES,
        );
        let bytes = self.builder.finish()?;
        Ok((bytes, self.acked))
    }
}

/// One received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    /// Everything after the netlink header.
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The attributes after `nfgenmsg`.
    pub fn attrs(&self) -> Attrs<'a> {
        Attrs::new(self.payload.get(NFGENMSG_LEN..).unwrap_or(&[]))
    }
}

/// Splits a received buffer into messages.
pub fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { rest: buf }
}

#[derive(Debug, Clone)]
pub struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Messages<'a> {
    type Item = Result<Message<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let header = match self.rest.get(..NLMSG_HDRLEN) {
            Some(h) => h,
            None => {
                self.rest = &[];
                return Some(Err("truncated netlink header".into()));
            }
        };
        let len = u32::from_ne_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len < NLMSG_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(format!(
                "netlink message length {len} outside the buffer"
            )));
        }
        let message = Message {
            kind: u16::from_ne_bytes([header[4], header[5]]),
            flags: u16::from_ne_bytes([header[6], header[7]]),
            seq: u32::from_ne_bytes([header[8], header[9], header[10], header[11]]),
            payload: &self.rest[NLMSG_HDRLEN..len],
        };
        let next = align4(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Ok(message))
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Attributes of one level, in the order the kernel wrote them.
#[derive(Debug, Clone)]
pub struct Attrs<'a> {
    rest: &'a [u8],
}

impl<'a> Attrs<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Attrs { rest: buf }
    }

    /// The first attribute of `kind` at this level.
    pub fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.clone()
            .find_map(|a| a.ok().filter(|(k, _)| *k == kind).map(|(_, v)| v))
    }

    pub fn get_str(&self, kind: u16) -> Option<&'a str> {
        self.get(kind).and_then(as_str)
    }

    pub fn get_be32(&self, kind: u16) -> Option<u32> {
        self.get(kind).and_then(as_be32)
    }

    pub fn get_nested(&self, kind: u16) -> Option<Attrs<'a>> {
        self.get(kind).map(Attrs::new)
    }
}

impl<'a> Iterator for Attrs<'a> {
    /// (type without the nested / byte-order flags, payload)
    type Item = Result<(u16, &'a [u8]), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(header) = self.rest.get(..NLA_HDRLEN) else {
            self.rest = &[];
            return Some(Err("truncated attribute header".into()));
        };
        let len = u16::from_ne_bytes([header[0], header[1]]) as usize;
        let kind = u16::from_ne_bytes([header[2], header[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(format!("attribute length {len} outside its parent")));
        }
        let payload = &self.rest[NLA_HDRLEN..len];
        let next = align4(len).min(self.rest.len());
        self.rest = &self.rest[next..];
        Some(Ok((kind, payload)))
    }
}

/// A NUL-terminated (or not) string attribute.
pub fn as_str(payload: &[u8]) -> Option<&str> {
    let end = payload
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(payload.len());
    std::str::from_utf8(&payload[..end]).ok()
}

pub fn as_be32(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.try_into().ok()?))
}

pub fn as_be64(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.try_into().ok()?))
}

/// An `NLMSG_ERROR` reply: an ack (`errno == 0`) or a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The positive errno, 0 for success.
    pub errno: i32,
    /// The extended ack's message, when the kernel gave one.
    pub message: Option<String>,
}

impl Ack {
    /// Reads an `NLMSG_ERROR` message's payload: `int error`, the request's
    /// header (with its payload unless `NLM_F_CAPPED`), then extended-ack
    /// TLVs if `NLM_F_ACK_TLVS`.
    pub fn parse(message: &Message<'_>) -> Result<Ack, String> {
        let p = message.payload;
        let error = p
            .get(..4)
            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("truncated netlink error message")?;
        let mut tlv_start = 4 + NLMSG_HDRLEN;
        if message.flags & NLM_F_CAPPED == 0 {
            // The whole request was echoed: skip it by its own length.
            if let Some(b) = p.get(4..8) {
                tlv_start = 4 + align4(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize);
            }
        }
        let mut text = None;
        if message.flags & NLM_F_ACK_TLVS != 0
            && let Some(tlvs) = p.get(tlv_start..)
        {
            text = Attrs::new(tlvs)
                .get_str(NLMSGERR_ATTR_MSG)
                .map(str::to_owned);
        }
        Ok(Ack {
            errno: error.saturating_neg(),
            message: text,
        })
    }
}

/// How an errno reads, e.g. "No such file or directory (os error 2)".
pub fn describe_errno(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Hex of `bytes`, for canonical forms and messages.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A message kind as its name, for error messages.
pub struct KindName(pub u16);

impl fmt::Display for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            msg::GETTABLE => "GETTABLE",
            msg::GETCHAIN => "GETCHAIN",
            msg::GETRULE => "GETRULE",
            msg::DELRULE => "DELRULE",
            msg::GETSET => "GETSET",
            msg::NEWSETELEM => "NEWSETELEM",
            msg::GETSETELEM => "GETSETELEM",
            msg::DELSETELEM => "DELSETELEM",
            msg::GETGEN => "GETGEN",
            other => return write!(f, "nf_tables message {other}"),
        };
        write!(f, "NFT_MSG_{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `nft --debug=mnl add element ip t s2 '{ 20.0.0.0/8 }'` on nft 1.0.6
    /// printed this NEWSETELEM (type 2572, set id attribute left out here:
    /// the kernel finds an existing set by name).
    fn nft_add_20_slash_8() -> Vec<u8> {
        let mut want = Vec::new();
        let mut push = |b: &[u8]| want.extend_from_slice(b);
        push(&80u32.to_ne_bytes());
        push(&2572u16.to_ne_bytes());
        push(&(NLM_F_REQUEST | NLM_F_CREATE).to_ne_bytes());
        push(&7u32.to_ne_bytes());
        push(&0u32.to_ne_bytes());
        push(&[2, 0, 0, 0]);
        // table "t"
        push(&6u16.to_ne_bytes());
        push(&1u16.to_ne_bytes());
        push(b"t\0\0\0");
        // set "s2"
        push(&7u16.to_ne_bytes());
        push(&2u16.to_ne_bytes());
        push(b"s2\0\0");
        // elements: { key 20.0.0.0 }, { flags end, key 21.0.0.0 }
        push(&44u16.to_ne_bytes());
        push(&(3u16 | 0x8000).to_ne_bytes());
        push(&16u16.to_ne_bytes());
        push(&(1u16 | 0x8000).to_ne_bytes());
        push(&12u16.to_ne_bytes());
        push(&(1u16 | 0x8000).to_ne_bytes());
        push(&8u16.to_ne_bytes());
        push(&1u16.to_ne_bytes());
        push(&[20, 0, 0, 0]);
        push(&24u16.to_ne_bytes());
        push(&(1u16 | 0x8000).to_ne_bytes());
        push(&8u16.to_ne_bytes());
        push(&3u16.to_ne_bytes());
        push(&[0, 0, 0, 1]);
        push(&12u16.to_ne_bytes());
        push(&(1u16 | 0x8000).to_ne_bytes());
        push(&8u16.to_ne_bytes());
        push(&1u16.to_ne_bytes());
        push(&[21, 0, 0, 0]);
        want
    }

    #[test]
    fn builds_the_message_nft_sends() {
        let mut b = Builder::new();
        b.begin_nft(msg::NEWSETELEM, NLM_F_CREATE, 7, NFPROTO_IPV4);
        b.string(attr::SET_ELEM_LIST_TABLE, "t");
        b.string(attr::SET_ELEM_LIST_SET, "s2");
        b.begin_nest(attr::SET_ELEM_LIST_ELEMENTS);
        b.begin_nest(attr::LIST_ELEM);
        b.begin_nest(attr::SET_ELEM_KEY);
        b.bytes(attr::DATA_VALUE, &[20, 0, 0, 0]);
        b.end_nest();
        b.end_nest();
        b.begin_nest(attr::LIST_ELEM);
        b.be32(attr::SET_ELEM_FLAGS, 1);
        b.begin_nest(attr::SET_ELEM_KEY);
        b.bytes(attr::DATA_VALUE, &[21, 0, 0, 0]);
        b.end_nest();
        b.end_nest();
        assert_eq!(b.finish().unwrap(), nft_add_20_slash_8());
    }

    #[test]
    fn parses_what_it_builds() {
        let bytes = nft_add_20_slash_8();
        let all: Vec<Message> = messages(&bytes).map(Result::unwrap).collect();
        assert_eq!(all.len(), 1);
        let m = all[0];
        assert_eq!(m.kind, (NFNL_SUBSYS_NFTABLES << 8) | msg::NEWSETELEM);
        assert_eq!(m.seq, 7);
        let attrs = m.attrs();
        assert_eq!(attrs.get_str(attr::SET_ELEM_LIST_TABLE), Some("t"));
        assert_eq!(attrs.get_str(attr::SET_ELEM_LIST_SET), Some("s2"));
        let elems: Vec<_> = attrs
            .get_nested(attr::SET_ELEM_LIST_ELEMENTS)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(elems.len(), 2);
        let second = Attrs::new(elems[1].1);
        assert_eq!(second.get_be32(attr::SET_ELEM_FLAGS), Some(1));
        assert_eq!(
            second
                .get_nested(attr::SET_ELEM_KEY)
                .unwrap()
                .get(attr::DATA_VALUE),
            Some(&[21u8, 0, 0, 0][..])
        );
    }

    #[test]
    fn batch_is_framed_by_begin_and_end() {
        let mut batch = Batch::new(100, Some(0x1234_5678));
        batch
            .message(msg::DELSETELEM, 0, NFPROTO_IPV6)
            .string(attr::SET_ELEM_LIST_TABLE, "t");
        batch.message(msg::NEWSETELEM, NLM_F_CREATE, NFPROTO_IPV6);
        let (bytes, acked) = batch.finish().unwrap();
        assert_eq!(acked, vec![(101, msg::DELSETELEM), (102, msg::NEWSETELEM)]);
        let all: Vec<Message> = messages(&bytes).map(Result::unwrap).collect();
        let kinds: Vec<u16> = all.iter().map(|m| m.kind).collect();
        assert_eq!(kinds, vec![0x10, 0x0a0e, 0x0a0c, 0x11]);
        let seqs: Vec<u32> = all.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![100, 101, 102, 103]);
        // Begin and end: family unspec, res_id NFNL_SUBSYS_NFTABLES (big-endian).
        assert_eq!(&all[0].payload[..4], &[0, 0, 0, 10]);
        assert_eq!(&all[3].payload[..4], &[0, 0, 0, 10]);
        assert_eq!(
            all[0].attrs().get_be32(NFNLA_BATCH_GENID),
            Some(0x1234_5678)
        );
        assert_eq!(
            all[1].flags,
            NLM_F_REQUEST | NLM_F_ACK,
            "a delete asks for an ack"
        );
        assert_eq!(all[2].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(all[1].payload[0], NFPROTO_IPV6);
    }

    #[test]
    fn oversized_attributes_are_refused() {
        let mut b = Builder::new();
        b.begin_nft(msg::NEWSETELEM, 0, 1, NFPROTO_IPV4);
        b.begin_nest(attr::SET_ELEM_LIST_ELEMENTS);
        for _ in 0..7000 {
            b.bytes(attr::DATA_VALUE, &[0; 8]);
        }
        b.end_nest();
        assert!(b.finish().is_err());
    }

    #[test]
    fn reads_acks_and_errors() {
        // A capped error with an extended-ack message, as the kernel sends
        // with NETLINK_CAP_ACK and NETLINK_EXT_ACK.
        let mut buf = Vec::new();
        let text = b"set not found\0\0\0";
        let len = (NLMSG_HDRLEN + 4 + NLMSG_HDRLEN + 4 + text.len()) as u32;
        buf.extend_from_slice(&len.to_ne_bytes());
        buf.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        buf.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        buf.extend_from_slice(&5u32.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&(-2i32).to_ne_bytes());
        buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
        buf.extend_from_slice(&((4 + 14) as u16).to_ne_bytes());
        buf.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        buf.extend_from_slice(text);
        let m = messages(&buf).next().unwrap().unwrap();
        assert_eq!(m.kind, NLMSG_ERROR);
        assert_eq!(m.seq, 5);
        let ack = Ack::parse(&m).unwrap();
        assert_eq!(ack.errno, 2);
        assert_eq!(ack.message.as_deref(), Some("set not found"));
        assert!(describe_errno(ack.errno).contains("No such file or directory"));
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(messages(&[1, 2, 3]).next().unwrap().is_err());
        let mut long = 64u32.to_ne_bytes().to_vec();
        long.extend_from_slice(&[0; 12]);
        assert!(messages(&long).next().unwrap().is_err());
        let bad_attr = [200u8, 0, 1, 0, 0, 0, 0, 0];
        assert!(Attrs::new(&bad_attr).next().unwrap().is_err());
        assert_eq!(as_be32(&[1, 2, 3]), None);
        assert_eq!(as_str(b"abc\0\0"), Some("abc"));
    }
}
