//! The nf_tables netlink socket: one consistent snapshot of our table, and
//! the set's elements written in one batch (one kernel transaction).
//!
//! This is the edge: blocking socket I/O, and errnos sorted into the
//! backend's error kinds. The family becomes a [`Proto`] once, at each entry
//! point; the bytes are built and read by `wire`, `elements` and
//! `bytecode`, and the kernel's numbers (hooks, policies) are named in nft's
//! words for `observe`, which decides what is ours. The socket belongs to
//! the network namespace of the thread that opens it: the agent's own,
//! where `ip netns exec` or the pod put it.
//!
//! Why netlink and not `nft`: at 10 000 elements `nft -j list table` takes
//! 50-80 ms and nft re-reads the whole interval set before any element
//! change; the same dump over netlink takes a few milliseconds, and an
//! element change costs the kernel's share only. `nft` keeps writing the
//! table, chains and rules (small, rarely changed).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::Duration;

use ipnet::IpNet;
use netlink_sys::{Socket, SocketAddr};
use rustix::io::Errno;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{RecvFlags, SendFlags};

use super::bytecode::{self, SetInfo};
use super::elements;
use super::observe::{Hook, Observed, ObservedSet};
use super::table::{BASE_CHAIN, POD_SET, SET, TABLE};
use super::wire::{
    self, Ack, Attrs, Batch, Builder, KindName, Message, NLM_F_CREATE, NLM_F_DUMP, NLM_F_DUMP_INTR,
    NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, Proto, attr, msg,
};
use crate::backend::{BackendError, ErrorKind};
use crate::plan::Family;

/// The kernel's answer when a batch's generation check fails: someone
/// committed since we read.
pub const ERESTART: i32 = 85;
/// The kernel's answer for an object that does not exist.
const ENOENT: i32 = 2;
/// Large enough for any one reply: the kernel fills dump messages up to
/// 32 KiB.
const RECV_BUF: usize = 64 * 1024;
/// No reply of the kernel's should take this long; bounds every wait.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of elements per NEWSETELEM / DELSETELEM message, well below the
/// 64 KiB an attribute can hold.
const ELEMENT_BYTES_PER_MESSAGE: usize = 32 * 1024;

/// A failed netlink operation: what we asked, and the errno if the kernel
/// (or the socket) gave one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NlError {
    pub op: String,
    pub errno: Option<i32>,
    pub detail: String,
}

impl NlError {
    fn io(op: &str, err: io::Error) -> Self {
        let errno = err.raw_os_error();
        let detail = if err.kind() == io::ErrorKind::WouldBlock {
            format!("no answer within {} s", TIMEOUT.as_secs())
        } else {
            err.to_string()
        };
        NlError {
            op: op.to_owned(),
            errno,
            detail,
        }
    }

    fn errno(op: &str, errno: Errno) -> Self {
        NlError::io(op, io::Error::from_raw_os_error(errno.raw_os_error()))
    }

    fn kernel(op: &str, ack: Ack) -> Self {
        let mut detail = wire::describe_errno(ack.errno);
        if let Some(text) = ack.message {
            detail = format!("{detail}: {text}");
        }
        NlError {
            op: op.to_owned(),
            errno: Some(ack.errno),
            detail,
        }
    }

    fn protocol(op: &str, detail: impl Into<String>) -> Self {
        NlError {
            op: op.to_owned(),
            errno: None,
            detail: detail.into(),
        }
    }

    /// Sorted like the `nft` command's failures, so callers ask one
    /// question whichever path failed.
    pub fn kind(&self) -> ErrorKind {
        match self.errno {
            Some(1 | 13) => ErrorKind::Permission, // EPERM, EACCES
            Some(11) => ErrorKind::Timeout,        // EAGAIN: the receive timeout
            Some(93 | 97) => ErrorKind::NotFound,  // no nfnetlink in this kernel
            Some(2) => ErrorKind::Absent,          // ENOENT: no such table, chain or set
            // E2BIG, EBUSY, EEXIST, EINVAL, ENOSPC, ERANGE, ENOTEMPTY, ELOOP,
            // ERESTART, EMSGSIZE, EOPNOTSUPP
            Some(7 | 16 | 17 | 22 | 28 | 34 | 39 | 40 | 85 | 90 | 95) => ErrorKind::Rejected,
            // ENOMEM, ENOBUFS, a reply we could not read, ...
            Some(_) | None => ErrorKind::Io,
        }
    }

    pub fn into_backend(self) -> BackendError {
        BackendError::new(self.kind(), &format!("netlink: {}", self.op), self.detail)
    }
}

impl From<NlError> for BackendError {
    fn from(err: NlError) -> Self {
        err.into_backend()
    }
}

/// Runs blocking netlink I/O off the runtime's thread, keeping the errno
/// (a stale generation is retried, not reported).
pub async fn blocking<T, F>(f: F) -> Result<T, NlError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NlError> + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(NlError::protocol("run the netlink task", err.to_string())),
    }
}

/// One nfnetlink socket.
struct Conn {
    /// Always `Some` until dropped.
    sock: Option<Socket>,
    seq: u32,
    buf: Vec<u8>,
    len: usize,
    sndbuf: usize,
    /// Object messages received (gets and dump entries), whatever their
    /// table: what a read cost, so a test can tell a bounded read.
    received: usize,
}

impl Conn {
    fn open() -> Result<Conn, NlError> {
        let op = "open an nfnetlink socket";
        let mut sock = Socket::new(wire::NETLINK_NETFILTER).map_err(|e| NlError::io(op, e))?;
        sock.bind_auto().map_err(|e| NlError::io(op, e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| NlError::io(op, e))?;
        // Errors echo only the request's header, not a 32 KiB element list.
        sock.set_cap_ack(true).map_err(|e| NlError::io(op, e))?;
        // The kernel's reason in words, where it gives one (best effort).
        let _ = sock.set_ext_ack(true);
        sockopt::set_socket_timeout(&sock, Timeout::Recv, Some(TIMEOUT))
            .map_err(|e| NlError::errno(op, e))?;
        let sndbuf = sockopt::socket_send_buffer_size(&sock).unwrap_or(0);
        Ok(Conn {
            sock: Some(sock),
            seq: 1,
            buf: vec![0; RECV_BUF],
            len: 0,
            sndbuf,
            received: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        let seq = self.seq;
        self.seq = self.seq.wrapping_add(1);
        seq
    }

    fn send(&mut self, op: &str, bytes: &[u8]) -> Result<(), NlError> {
        // A batch is one datagram (the kernel reads a transaction from one
        // message); it must fit the socket's send buffer, which needs
        // CAP_NET_ADMIN past the system's maximum, as nft does.
        let Some(sock) = self.sock.as_ref() else {
            return Err(NlError::protocol(op, "the socket is closed"));
        };
        if bytes.len() + 4096 > self.sndbuf {
            let want = bytes.len() + 4096;
            if sockopt::set_socket_send_buffer_size_force(sock, want).is_err() {
                let _ = sockopt::set_socket_send_buffer_size(sock, want);
            }
            self.sndbuf = sockopt::socket_send_buffer_size(sock).unwrap_or(0);
        }
        loop {
            match rustix::net::send(sock, bytes, SendFlags::empty()) {
                Ok(n) if n == bytes.len() => return Ok(()),
                Ok(n) => {
                    return Err(NlError::protocol(
                        op,
                        format!("sent {n} of {} bytes", bytes.len()),
                    ));
                }
                Err(Errno::INTR) => continue,
                Err(e) => return Err(NlError::errno(op, e)),
            }
        }
    }

    /// Receives one datagram; `Ok(false)` when `wait` is false and nothing
    /// is queued.
    fn recv(&mut self, op: &str, wait: bool) -> Result<bool, NlError> {
        let flags = if wait {
            RecvFlags::TRUNC
        } else {
            RecvFlags::TRUNC | RecvFlags::DONTWAIT
        };
        let Some(sock) = self.sock.as_ref() else {
            return Err(NlError::protocol(op, "the socket is closed"));
        };
        loop {
            match rustix::net::recv(sock, &mut self.buf[..], flags) {
                Ok((n, full)) if full > n => {
                    return Err(NlError::protocol(
                        op,
                        format!("a reply of {full} bytes exceeds the {n}-byte buffer"),
                    ));
                }
                Ok((n, _)) => {
                    self.len = n;
                    return Ok(true);
                }
                Err(Errno::INTR) => continue,
                Err(Errno::AGAIN) if !wait => return Ok(false),
                Err(e) => return Err(NlError::errno(op, e)),
            }
        }
    }

    /// One GET request answered by one message (or an error): its
    /// attributes, copied.
    fn get(
        &mut self,
        op: &str,
        nft_msg: u16,
        family: u8,
        fill: impl FnOnce(&mut Builder),
    ) -> Result<Vec<u8>, NlError> {
        let seq = self.next_seq();
        let mut b = Builder::new();
        b.begin_nft(nft_msg, 0, seq, family);
        fill(&mut b);
        let bytes = b.finish().map_err(|e| NlError::protocol(op, e))?;
        self.send(op, &bytes)?;
        loop {
            self.recv(op, true)?;
            for m in wire::messages(&self.buf[..self.len]) {
                let m = m.map_err(|e| NlError::protocol(op, e))?;
                if m.seq != seq {
                    continue;
                }
                if m.kind == NLMSG_ERROR {
                    let ack = Ack::parse(&m).map_err(|e| NlError::protocol(op, e))?;
                    if ack.errno != 0 {
                        return Err(NlError::kernel(op, ack));
                    }
                    continue;
                }
                self.received += 1;
                return Ok(m.payload.get(4..).unwrap_or(&[]).to_vec());
            }
        }
    }

    /// A dump: every object message goes to `each`. Returns whether the
    /// kernel flagged the dump as interrupted by a concurrent change.
    fn dump(
        &mut self,
        op: &str,
        nft_msg: u16,
        family: u8,
        fill: impl FnOnce(&mut Builder),
        mut each: impl FnMut(&Message<'_>) -> Result<(), NlError>,
    ) -> Result<bool, NlError> {
        let seq = self.next_seq();
        let mut b = Builder::new();
        b.begin_nft(nft_msg, NLM_F_DUMP, seq, family);
        fill(&mut b);
        let bytes = b.finish().map_err(|e| NlError::protocol(op, e))?;
        self.send(op, &bytes)?;
        let mut interrupted = false;
        loop {
            self.recv(op, true)?;
            for m in wire::messages(&self.buf[..self.len]) {
                let m = m.map_err(|e| NlError::protocol(op, e))?;
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => {
                        // DONE carries the dump's final status.
                        let status = m
                            .payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(0);
                        if status < 0 {
                            let ack = Ack {
                                errno: -status,
                                message: None,
                            };
                            return Err(NlError::kernel(op, ack));
                        }
                        return Ok(interrupted);
                    }
                    NLMSG_ERROR => {
                        let ack = Ack::parse(&m).map_err(|e| NlError::protocol(op, e))?;
                        if ack.errno != 0 {
                            return Err(NlError::kernel(op, ack));
                        }
                    }
                    NLMSG_NOOP => {}
                    _ => {
                        self.received += 1;
                        each(&m)?;
                    }
                }
            }
        }
    }

    /// The ruleset's generation: it changes with every committed
    /// transaction, by anyone.
    fn genid(&mut self) -> Result<u32, NlError> {
        let op = "get the ruleset generation";
        let attrs = self.get(op, msg::GETGEN, wire::NFPROTO_UNSPEC, |_| {})?;
        Attrs::new(&attrs)
            .get_be32(attr::GEN_ID)
            .ok_or_else(|| NlError::protocol(op, "no generation id in the reply"))
    }

    /// Sends a batch and reads every reply: each message's ack, and any
    /// error (a message refused, a failed commit or a stale generation,
    /// the last two reported against `BATCH_BEGIN`). All of it applied, or
    /// none of it.
    fn batch(&mut self, op: &str, batch: Batch) -> Result<(), NlError> {
        let begin = batch.begin_seq();
        let (bytes, acked) = batch.finish().map_err(|e| NlError::protocol(op, e))?;
        let kinds: BTreeMap<u32, u16> = acked.iter().copied().collect();
        let mut pending: BTreeSet<u32> = kinds.keys().copied().collect();
        self.send(op, &bytes)?;
        let mut failure: Option<(u32, Ack)> = None;
        let mut whole_batch = false;
        // The kernel runs the batch inside our send, so every reply is
        // queued already; the blocking reads are bounded by the timeout.
        let mut wait = true;
        loop {
            if wait && (pending.is_empty() || whole_batch) {
                // Then whatever else is queued, without waiting.
                wait = false;
            }
            if !self.recv(op, wait)? {
                break;
            }
            for m in wire::messages(&self.buf[..self.len]) {
                let m = m.map_err(|e| NlError::protocol(op, e))?;
                if m.kind != NLMSG_ERROR || (m.seq != begin && !kinds.contains_key(&m.seq)) {
                    continue;
                }
                let ack = Ack::parse(&m).map_err(|e| NlError::protocol(op, e))?;
                pending.remove(&m.seq);
                if ack.errno != 0 {
                    whole_batch |= m.seq == begin;
                    if failure.is_none() {
                        failure = Some((m.seq, ack));
                    }
                }
            }
        }
        match failure {
            Some((seq, ack)) => {
                let what = match kinds.get(&seq) {
                    Some(kind) => format!("{op} ({})", KindName(*kind)),
                    None => format!("{op} (the transaction)"),
                };
                Err(NlError::kernel(&what, ack))
            }
            None if !pending.is_empty() => Err(NlError::protocol(
                op,
                format!(
                    "{} messages of the batch were not acknowledged",
                    pending.len()
                ),
            )),
            None => Ok(()),
        }
    }
}

impl Drop for Conn {
    /// Closing an nfnetlink socket waits until the kernel has released
    /// recently committed transactions (an RCU grace period, about 10 ms
    /// here), so a thread does the waiting: a config change is applied when
    /// its batch is acked, not when the socket is gone.
    fn drop(&mut self) {
        if let Some(sock) = self.sock.take() {
            // If no thread can be started, the closure (and the socket)
            // is dropped right here instead.
            let _ = std::thread::Builder::new()
                .name("nfnetlink-close".into())
                .spawn(move || drop(sock));
        }
    }
}

fn table_op(proto: Proto, what: &str) -> String {
    format!("{what} {} {TABLE}", proto.name())
}

/// `enum nf_inet_hooks`, by number.
fn hook_name(hooknum: u32) -> Option<&'static str> {
    ["prerouting", "input", "forward", "output", "postrouting"]
        .get(usize::try_from(hooknum).ok()?)
        .copied()
}

/// `NF_DROP`, `NF_ACCEPT`.
fn policy_name(policy: u32) -> Option<&'static str> {
    ["drop", "accept"]
        .get(usize::try_from(policy).ok()?)
        .copied()
}

/// A NEWCHAIN message's hook, in nft's words.
fn chain_hook<'a>(a: &Attrs<'a>) -> Hook<'a> {
    let hook = a.get_nested(attr::CHAIN_HOOK);
    let hook_u32 = |kind| hook.as_ref().and_then(|h| h.get_be32(kind));
    Hook {
        kind: a.get_str(attr::CHAIN_TYPE),
        hook: hook_u32(attr::HOOK_HOOKNUM).and_then(hook_name),
        priority: hook_u32(attr::HOOK_PRIORITY).map(|p| i64::from(p as i32)),
        policy: a.get_be32(attr::CHAIN_POLICY).and_then(policy_name),
    }
}

/// Our table as one netlink read.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The ruleset generation it was read at.
    pub genid: u32,
    /// No transaction committed while it was read, so it is one state.
    pub consistent: bool,
    /// Rules in `bytecode`'s text form.
    pub observed: Observed<String>,
    /// Each chain's rule handles, in order.
    pub handles: BTreeMap<String, Vec<u64>>,
    /// Netlink object messages the read received (its cost).
    pub received: usize,
}

/// A rule as dumped: its chain, handle and attributes.
struct RawRule {
    chain: String,
    handle: u64,
    attrs: Vec<u8>,
}

/// The dumps of one read of our table, and whether a commit interrupted
/// any of them.
struct TableDump<'c> {
    conn: &'c mut Conn,
    proto: Proto,
    interrupted: bool,
}

impl TableDump<'_> {
    /// Every object of kind `nft_msg` in our table (`table_attr` names the
    /// table, in the request and in each reply) that `each` reads.
    fn objects<T>(
        &mut self,
        what: &str,
        nft_msg: u16,
        table_attr: u16,
        mut each: impl FnMut(&Attrs<'_>, &Message<'_>) -> Option<T>,
    ) -> Result<Vec<T>, NlError> {
        let mut found = Vec::new();
        self.interrupted |= self.conn.dump(
            &table_op(self.proto, what),
            nft_msg,
            self.proto.nfproto(),
            |b| b.string(table_attr, TABLE),
            |m| {
                let a = m.attrs();
                if a.get_str(table_attr) == Some(TABLE)
                    && let Some(object) = each(&a, m)
                {
                    found.push(object);
                }
                Ok(())
            },
        )?;
        Ok(found)
    }

    /// One set's elements, each `NFTA_LIST_ELEM` payload handed to `each`.
    fn elements(&mut self, set: &str, mut each: impl FnMut(&[u8])) -> Result<(), NlError> {
        let op = format!("list set {} {TABLE} {set}", self.proto.name());
        self.interrupted |= self.conn.dump(
            &op,
            msg::GETSETELEM,
            self.proto.nfproto(),
            |b| {
                b.string(attr::SET_ELEM_LIST_TABLE, TABLE);
                b.string(attr::SET_ELEM_LIST_SET, set);
            },
            |m| {
                if let Some(list) = m.attrs().get_nested(attr::SET_ELEM_LIST_ELEMENTS) {
                    for item in list {
                        let (_, payload) = item.map_err(|e| NlError::protocol(&op, e))?;
                        each(payload);
                    }
                }
                Ok(())
            },
        )?;
        Ok(())
    }
}

/// Whether our table exists in `family`: one GETTABLE by name, whatever
/// else the ruleset holds (nft itself would load its whole cache first).
pub fn table_exists(family: Family) -> Result<bool, NlError> {
    Ok(table_use(&mut Conn::open()?, Proto::of(family))?.is_some())
}

/// Our table's use count (its chains, sets, objects and flowtables), None
/// when there is no such table: one GETTABLE by name.
fn table_use(conn: &mut Conn, proto: Proto) -> Result<Option<u32>, NlError> {
    let op = table_op(proto, "get table");
    let found = conn.get(&op, msg::GETTABLE, proto.nfproto(), |b| {
        b.string(attr::TABLE_NAME, TABLE)
    });
    match found {
        Ok(attrs) => Attrs::new(&attrs)
            .get_be32(attr::TABLE_USE)
            .map(Some)
            .ok_or_else(|| NlError::protocol(&op, "no use count in the reply")),
        Err(e) if e.errno == Some(ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One chain of our table by name (a GETCHAIN that is no dump: the kernel
/// does not filter chain dumps by table, so a dump would hand over every
/// chain of the family, 15 000 on a busy iptables-nft node): its priority
/// when it is our base chain (Some(None): another chain), None when it
/// does not exist.
fn chain_by_name(
    conn: &mut Conn,
    proto: Proto,
    name: &str,
) -> Result<Option<Option<i64>>, NlError> {
    let op = format!("get chain {} {TABLE} {name}", proto.name());
    let found = conn.get(&op, msg::GETCHAIN, proto.nfproto(), |b| {
        b.string(attr::CHAIN_TABLE, TABLE);
        b.string(attr::CHAIN_NAME, name);
    });
    match found {
        Ok(attrs) => Ok(Some(chain_hook(&Attrs::new(&attrs)).our_priority())),
        Err(e) if e.errno == Some(ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads our table (`table`, set shape and elements, chains, rules) for
/// `family`, with the generation before and after to tell whether it is
/// one consistent state. `chains` are the chains the plan has, looked up
/// by name; any other chain in the table is found through the table's use
/// count, and only then are the chains of the family dumped.
pub fn snapshot(family: Family, chains: &[String]) -> Result<Snapshot, NlError> {
    let proto = Proto::of(family);
    let mut conn = Conn::open()?;
    let genid = conn.genid()?;
    let mut snap = Snapshot {
        genid,
        consistent: true,
        ..Snapshot::default()
    };
    let Some(table_use) = table_use(&mut conn, proto)? else {
        snap.received = conn.received;
        return Ok(snap);
    };
    snap.observed.table = true;
    let mut dump = TableDump {
        conn: &mut conn,
        proto,
        interrupted: false,
    };
    let sets: BTreeMap<String, SetInfo> = dump
        .objects("list sets of", msg::GETSET, attr::SET_TABLE, |a, _| {
            Some((a.get_str(attr::SET_NAME)?.to_owned(), SetInfo::parse(a)))
        })?
        .into_iter()
        .collect();
    let mut found = Vec::new();
    for name in chains {
        if let Some(priority) = chain_by_name(dump.conn, proto, name)? {
            found.push((name.clone(), priority));
        }
    }
    // The table counts its chains, sets (anonymous ones too), objects and
    // flowtables: more than ours and the sets means a chain (or object) we
    // did not look up by name, so the chains are listed after all.
    let counted = found.len() + sets.len();
    if usize::try_from(table_use).map_or(true, |n| n > counted) {
        found = dump.objects(
            "list chains of",
            msg::GETCHAIN,
            attr::CHAIN_TABLE,
            |a, _| {
                Some((
                    a.get_str(attr::CHAIN_NAME)?.to_owned(),
                    chain_hook(a).our_priority(),
                ))
            },
        )?;
    }
    for (name, priority) in found {
        let found = snap.observed.chains.entry(name).or_default();
        found.base_ok = priority.is_some();
        found.priority = priority;
    }
    let rules = dump.objects("list rules of", msg::GETRULE, attr::RULE_TABLE, |a, m| {
        Some(RawRule {
            chain: a.get_str(attr::RULE_CHAIN).unwrap_or_default().to_owned(),
            handle: a
                .get(attr::RULE_HANDLE)
                .and_then(wire::as_be64)
                .unwrap_or(0),
            attrs: m.payload.get(4..).unwrap_or(&[]).to_vec(),
        })
    })?;

    // Anonymous sets the rules look up, rendered inline.
    let mut anonymous: BTreeMap<String, String> = BTreeMap::new();
    for rule in &rules {
        let attrs = Attrs::new(&rule.attrs);
        let looked_up = attrs
            .get(attr::RULE_EXPRESSIONS)
            .map(bytecode::looked_up_sets)
            .unwrap_or_default();
        for name in looked_up {
            let Some(info) = sets.get(&name).filter(|i| i.anonymous()) else {
                continue;
            };
            if anonymous.contains_key(&name) {
                continue;
            }
            let mut elems: Vec<Vec<u8>> = Vec::new();
            dump.elements(&name, |payload| elems.push(payload.to_vec()))?;
            anonymous.insert(name, bytecode::render_set(info, &elems));
        }
    }
    for rule in &rules {
        let text = bytecode::render_rule(&Attrs::new(&rule.attrs), &anonymous);
        let chain = snap.observed.chains.entry(rule.chain.clone()).or_default();
        chain.rules.push(text);
        snap.handles
            .entry(rule.chain.clone())
            .or_default()
            .push(rule.handle);
    }

    for (name, slot) in [
        (SET, &mut snap.observed.set),
        (POD_SET, &mut snap.observed.pod_set),
    ] {
        let Some(info) = sets.get(name) else {
            continue;
        };
        let mut dumped = Vec::new();
        dump.elements(name, |payload| dumped.push(elements::parse(payload, proto)))?;
        let (nets, foreign) = elements::decode(&dumped, proto);
        *slot = Some(ObservedSet {
            shape_ok: our_set_shape(info, proto),
            elements: nets,
            foreign_elements: foreign,
        });
    }
    let interrupted = dump.interrupted;
    snap.consistent = !interrupted && conn.genid()? == genid;
    snap.received = conn.received;
    Ok(snap)
}

/// `NFT_SET_INTERVAL`: the only flag our set has.
const SET_INTERVAL: u32 = 0x4;

/// The set is `type ipvX_addr; flags interval;` and no map.
fn our_set_shape(info: &SetInfo, proto: Proto) -> bool {
    // nft's ipv4_addr and ipv6_addr types.
    let key_type = match proto {
        Proto::Ip => 7,
        Proto::Ip6 => 8,
    };
    info.key_type == key_type
        && usize::try_from(info.key_len).ok() == Some(proto.addr_len())
        && info.flags == SET_INTERVAL
        && info.data_type.is_none()
}

/// A base chain hooked at nat postrouting, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatHook {
    /// nft's family word: `ip`, `ip6` or `inet`.
    pub family: &'static str,
    pub table: String,
    pub chain: String,
    pub priority: i32,
}

/// `NFPROTO_INET`: tables whose chains see both families.
const NFPROTO_INET: u8 = 1;

/// The tables iptables-nft creates, named after the xtables tables; their
/// chains are read through iptables, and on a busy node `nat` holds
/// kube-proxy's 15 000 chains, which a chain dump would hand over whole.
const XTABLES: [&str; 5] = ["nat", "filter", "mangle", "raw", "security"];

/// Every base chain of type nat at the postrouting hook that packets of
/// `family` cross: the family's own tables' and inet tables'. The tables
/// are listed first: when they are only iptables-nft's and ours, the chains
/// that can be nat postrouting chains are asked for by name (the kernel
/// does not filter a chain dump by table); any other table means a chain
/// dump, names and hooks only, never rules.
pub fn nat_postrouting_chains(family: Family) -> Result<NatHooks, NlError> {
    let proto = Proto::of(family);
    let mut conn = Conn::open()?;
    let mut found = Vec::new();
    for (nfproto, name) in [(proto.nfproto(), proto.name()), (NFPROTO_INET, "inet")] {
        let mut tables = Vec::new();
        conn.dump(
            &format!("list tables {name}"),
            msg::GETTABLE,
            nfproto,
            |_| {},
            |m| {
                if let Some(table) = m.attrs().get_str(attr::TABLE_NAME) {
                    tables.push(table.to_owned());
                }
                Ok(())
            },
        )?;
        let known =
            |t: &String| nfproto != NFPROTO_INET && (t == TABLE || XTABLES.contains(&t.as_str()));
        let push = |a: &Attrs<'_>, found: &mut Vec<NatHook>| {
            let hook = chain_hook(a);
            if hook.kind == Some("nat")
                && hook.hook == Some("postrouting")
                && let (Some(table), Some(chain), Some(priority)) = (
                    a.get_str(attr::CHAIN_TABLE),
                    a.get_str(attr::CHAIN_NAME),
                    hook.priority,
                )
            {
                found.push(NatHook {
                    family: name,
                    table: table.to_owned(),
                    chain: chain.to_owned(),
                    priority: i32::try_from(priority).unwrap_or(i32::MAX),
                });
            }
        };
        if tables.iter().all(known) {
            for table in &tables {
                let chain = match table.as_str() {
                    TABLE => BASE_CHAIN,
                    "nat" => "POSTROUTING",
                    _ => continue,
                };
                let op = format!("get chain {name} {table} {chain}");
                match conn.get(&op, msg::GETCHAIN, nfproto, |b| {
                    b.string(attr::CHAIN_TABLE, table);
                    b.string(attr::CHAIN_NAME, chain);
                }) {
                    Ok(attrs) => push(&Attrs::new(&attrs), &mut found),
                    Err(e) if e.errno == Some(ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
            continue;
        }
        conn.dump(
            &format!("list chains {name}"),
            msg::GETCHAIN,
            nfproto,
            |_| {},
            |m| {
                push(&m.attrs(), &mut found);
                Ok(())
            },
        )?;
    }
    Ok(NatHooks {
        hooks: found,
        received: conn.received,
    })
}

/// The nat postrouting base chains found, and what finding them cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatHooks {
    pub hooks: Vec<NatHook>,
    /// Netlink object messages the lookup received.
    pub received: usize,
}

/// The ruleset generation now.
pub fn genid() -> Result<u32, NlError> {
    Conn::open()?.genid()
}

/// One transaction on the set's elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Write {
    /// Empty the set first (`flush set`); the adds then go into an empty
    /// set, written as nft writes a full set.
    pub flush: bool,
    /// Removed before the adds (both boundaries of each).
    pub remove: Vec<IpNet>,
    pub add: Vec<IpNet>,
    /// A rule deleted in the same transaction (chain, handle): the gate of
    /// a table just created.
    pub delete_rule: Option<(String, u64)>,
    /// Apply only on this ruleset generation (what we read); `ERESTART`
    /// otherwise.
    pub genid: Option<u32>,
}

impl Write {
    /// e.g. "flush, 10 000 added, 0 removed".
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.flush {
            parts.push("flush".to_owned());
        }
        parts.push(format!("{} added", self.add.len()));
        parts.push(format!("{} removed", self.remove.len()));
        if self.delete_rule.is_some() {
            parts.push("gate rule deleted".to_owned());
        }
        parts.join(", ")
    }
}

/// Appends element messages of `kind` for `elems`, split so no message's
/// element list outgrows an attribute.
fn element_messages(batch: &mut Batch, kind: u16, proto: Proto, elems: &[elements::Elem]) {
    let flags = if kind == msg::NEWSETELEM {
        NLM_F_CREATE
    } else {
        0
    };
    let mut rest = elems;
    while !rest.is_empty() {
        let mut bytes = 0;
        let n = rest
            .iter()
            .take_while(|e| {
                bytes += elements::encoded_len(e, proto);
                bytes <= ELEMENT_BYTES_PER_MESSAGE
            })
            .count()
            .max(1);
        let b = batch.message(kind, flags, proto.nfproto());
        b.string(attr::SET_ELEM_LIST_TABLE, TABLE);
        b.string(attr::SET_ELEM_LIST_SET, SET);
        b.begin_nest(attr::SET_ELEM_LIST_ELEMENTS);
        for e in &rest[..n] {
            elements::put(b, e, proto);
        }
        b.end_nest();
        rest = &rest[n..];
    }
}

/// Builds the batch for `write` (pure; `write_set` sends it).
fn build(proto: Proto, write: &Write, first_seq: u32) -> Batch {
    let mut batch = Batch::new(first_seq, write.genid);
    if write.flush {
        // DELSETELEM without elements empties the set.
        let b = batch.message(msg::DELSETELEM, 0, proto.nfproto());
        b.string(attr::SET_ELEM_LIST_TABLE, TABLE);
        b.string(attr::SET_ELEM_LIST_SET, SET);
    }
    // Removals first: an added range may overlap one that goes.
    let remove = elements::for_delete(&write.remove, proto);
    element_messages(&mut batch, msg::DELSETELEM, proto, &remove);
    let add = elements::for_add(&write.add, proto, write.flush);
    element_messages(&mut batch, msg::NEWSETELEM, proto, &add);
    if let Some((chain, handle)) = &write.delete_rule {
        let b = batch.message(msg::DELRULE, 0, proto.nfproto());
        b.string(attr::RULE_TABLE, TABLE);
        b.string(attr::RULE_CHAIN, chain);
        b.be64(attr::RULE_HANDLE, *handle);
    }
    batch
}

/// Applies `write` as one kernel transaction.
pub fn write_set(family: Family, write: &Write) -> Result<(), NlError> {
    let proto = Proto::of(family);
    let mut conn = Conn::open()?;
    let batch = build(proto, write, conn.seq);
    let op = format!(
        "update set {} {TABLE} {SET} ({})",
        proto.name(),
        write.describe()
    );
    conn.batch(&op, batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn a_delta_deletes_before_it_adds() {
        let write = Write {
            remove: nets(&["10.0.0.0/9"]),
            add: nets(&["10.0.0.0/8"]),
            ..Write::default()
        };
        let (bytes, acked) = build(Proto::Ip, &write, 1).finish().unwrap();
        let kinds: Vec<u16> = acked.iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds, vec![msg::DELSETELEM, msg::NEWSETELEM]);
        let all: Vec<_> = wire::messages(&bytes).map(Result::unwrap).collect();
        assert_eq!(all.len(), 4, "begin, delete, add, end");
        assert_eq!(all[0].attrs().get(wire::NFNLA_BATCH_GENID), None);
    }

    #[test]
    fn a_flush_is_a_delete_without_elements() {
        let write = Write {
            flush: true,
            add: nets(&["10.0.0.0/8"]),
            delete_rule: Some(("postrouting".into(), 7)),
            genid: Some(42),
            ..Write::default()
        };
        let (bytes, acked) = build(Proto::Ip, &write, 1).finish().unwrap();
        let kinds: Vec<u16> = acked.iter().map(|(_, k)| *k).collect();
        assert_eq!(kinds, vec![msg::DELSETELEM, msg::NEWSETELEM, msg::DELRULE]);
        let all: Vec<_> = wire::messages(&bytes).map(Result::unwrap).collect();
        assert_eq!(all[0].attrs().get_be32(wire::NFNLA_BATCH_GENID), Some(42));
        assert_eq!(all[1].attrs().get(attr::SET_ELEM_LIST_ELEMENTS), None);
        // Into an empty set: nft's zero end element, then start and end.
        let added = all[2]
            .attrs()
            .get_nested(attr::SET_ELEM_LIST_ELEMENTS)
            .unwrap()
            .count();
        assert_eq!(added, 3);
        let rule = all[3].attrs();
        assert_eq!(rule.get_str(attr::RULE_CHAIN), Some("postrouting"));
        assert_eq!(rule.get(attr::RULE_HANDLE).and_then(wire::as_be64), Some(7));
    }

    #[test]
    fn large_lists_are_split_into_messages_that_fit() {
        // 50 000 IPv6 prefixes: 100 001 elements, about 3 MiB.
        let list: Vec<IpNet> = (0..50_000u128)
            .map(|i| {
                IpNet::V6(
                    ipnet::Ipv6Net::new((0x2001_0db8u128 << 96 | i << 64).into(), 64).unwrap(),
                )
            })
            .collect();
        let write = Write {
            flush: true,
            add: list,
            ..Write::default()
        };
        let (bytes, acked) = build(Proto::Ip6, &write, 1).finish().unwrap();
        assert!(acked.len() > 50, "{}", acked.len());
        let mut elements = 0;
        for m in wire::messages(&bytes) {
            let m = m.unwrap();
            assert!(m.payload.len() < 40 * 1024);
            if let Some(list) = m.attrs().get_nested(attr::SET_ELEM_LIST_ELEMENTS) {
                elements += list.count();
            }
        }
        assert_eq!(elements, 100_001);
    }

    #[test]
    fn errors_sort_like_nft_failures() {
        let e = |errno| NlError {
            op: "x".into(),
            errno: Some(errno),
            detail: wire::describe_errno(errno),
        };
        assert_eq!(e(1).kind(), ErrorKind::Permission);
        assert_eq!(e(2).kind(), ErrorKind::Absent);
        assert_eq!(e(ERESTART).kind(), ErrorKind::Rejected);
        assert_eq!(e(12).kind(), ErrorKind::Io);
        let backend = e(2).into_backend();
        assert!(super::super::is_absent(&backend), "{backend}");
        assert!(backend.command.starts_with("netlink: "));
    }

    #[test]
    fn hooks_and_policies_are_named_as_nft_names_them() {
        assert_eq!(hook_name(4), Some("postrouting"));
        assert_eq!(hook_name(0), Some("prerouting"));
        assert_eq!(hook_name(5), None);
        assert_eq!(policy_name(1), Some("accept"));
        assert_eq!(policy_name(0), Some("drop"));
        assert_eq!(policy_name(2), None);
    }
}
