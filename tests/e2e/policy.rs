//! The masquerade policy with real packets: `masqueradeCIDRs` exceptions by
//! longest prefix, `podCIDRs`' source condition, in both families, and the
//! kernel's answer compared with `explain`'s on random configs.
//!
//! Topology (its own, smaller than `sandbox`'s, dual-stack):
//!
//! ```text
//! pod 10.40.0.2 fd40::2 -- node -- peer 198.51.100.2 2001:db8:51::2, also 10.9.5.9 10.9.5.200 10.1.1.1
//!                           |           fd09:5::9 fd09:5::c8 fd01::1 and the property test's 172.16.0.0/12 hosts
//!                           +----- lan 192.0.2.2 2001:db8:2::2 (a host the node forwards for, not a pod)
//! ```
//!
//! Every namespace routes back through the node, so a connection is always
//! answered and the reply says which source arrived: the node's address on
//! the peer link (masqueraded) or the sender's own (not). The agent runs as
//! one-shot `sync`s in the node, and each test starts its own topology;
//! what must stay true is the `sandbox`'s: namespaces from the harness's
//! guard, servers killed before the namespaces go, every wait bounded.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::kernel::Kernel;
use crate::sandbox::{PORT, netcheck_bin};
use crate::support::agent::oneshot;
use crate::support::netns::Netns;
use crate::support::process::{COMMAND_TIMEOUT, describe, run_bounded};
use crate::support::wait::wait_until;

const POD: &str = "10.40.0.2";
const POD6: &str = "fd40::2";
const PEER: &str = "198.51.100.2";
const PEER6: &str = "2001:db8:51::2";
/// The node's addresses on the peer link: what the peer sees when masqueraded.
const NODE_AT_PEER: &str = "198.51.100.1";
const NODE_AT_PEER6: &str = "2001:db8:51::1";
/// The node's addresses on the pod link: what the pod sees when masqueraded.
const NODE_AT_POD: &str = "10.40.0.1";
const NODE_AT_POD6: &str = "fd40::1";
const LAN: &str = "192.0.2.2";
const LAN6: &str = "2001:db8:2::2";

/// The destinations the peer answers on besides its link address.
const PEER_HOSTS: [&str; 6] = [
    "10.9.5.9",
    "10.9.5.200",
    "10.1.1.1",
    "fd09:5::9",
    "fd09:5::c8",
    "fd01::1",
];

/// `netcheck serve [::]:PORT` in one namespace (both families); killed on drop.
pub struct Server {
    child: Child,
    out: PathBuf,
}

impl Server {
    pub fn start(ns: &Netns, dir: &Path, name: &str) -> Server {
        let out = dir.join(format!("serve-{name}.out"));
        let mut cmd = ns.command(netcheck_bin().to_str().expect("netcheck path is UTF-8"));
        cmd.args(["serve", &format!("[::]:{PORT}"), "--timeout", "300"])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("server stdout file"))
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut server = Server { child, out };
        wait_until(
            Duration::from_secs(10),
            &format!("netcheck serve in the {name} namespace to listen"),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!("netcheck serve in the {name} namespace exited ({status})");
                }
                fs::read_to_string(&server.out).unwrap_or_default()
            },
            |out| out.starts_with("listening on "),
        );
        server
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topology of one test, its servers and its config file.
pub struct Net {
    kernel: Kernel,
    servers: Vec<Server>,
    work: TempDir,
    // Namespaces last: they go after the processes that live in them.
    pod: Netns,
    node: Netns,
    peer: Netns,
    lan: Netns,
}

/// A veth from `node` (`node_if`, with `node_addrs`) to `eth0` in `other`
/// (with `other_addrs`), both ends up; IPv6 addresses without duplicate
/// address detection, so they are usable at once.
pub fn link(node: &Netns, node_if: &str, node_addrs: &[&str], other: &Netns, other_addrs: &[&str]) {
    node.run(&[
        "ip",
        "link",
        "add",
        node_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        other.name(),
    ]);
    for (ns, dev, addrs) in [(node, node_if, node_addrs), (other, "eth0", other_addrs)] {
        for addr in addrs {
            let mut args = vec!["ip", "addr", "add", addr, "dev", dev];
            if addr.contains(':') {
                args.push("nodad");
            }
            ns.run(&args);
        }
        ns.run(&["ip", "link", "set", dev, "up"]);
    }
}

impl Net {
    pub fn new(kernel: Kernel) -> Net {
        let (pod, node, peer, lan) = (Netns::new(), Netns::new(), Netns::new(), Netns::new());
        link(
            &node,
            "to-pod",
            &["10.40.0.1/24", "fd40::1/64"],
            &pod,
            &["10.40.0.2/24", "fd40::2/64"],
        );
        link(
            &node,
            "to-peer",
            &["198.51.100.1/24", "2001:db8:51::1/64"],
            &peer,
            &["198.51.100.2/24", "2001:db8:51::2/64"],
        );
        // On loopback, so the peer's own connections never take one of them
        // as their source (it prefers the outgoing interface's address).
        for host in PEER_HOSTS {
            let mut args = vec!["ip", "addr", "add", host, "dev", "lo"];
            if host.contains(':') {
                args.push("nodad");
            }
            peer.run(&args);
        }
        link(
            &node,
            "to-lan",
            &["192.0.2.1/24", "2001:db8:2::1/64"],
            &lan,
            &["192.0.2.2/24", "2001:db8:2::2/64"],
        );
        node.run(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]);
        for (ns, v4, v6) in [
            (&pod, "10.40.0.1", "fd40::1"),
            (&peer, "198.51.100.1", "2001:db8:51::1"),
            (&lan, "192.0.2.1", "2001:db8:2::1"),
        ] {
            ns.run(&["ip", "route", "add", "default", "via", v4]);
            ns.run(&["ip", "-6", "route", "add", "default", "via", v6]);
        }
        for dst in ["10.9.0.0/16", "10.1.0.0/16", "172.16.0.0/12"] {
            node.run(&["ip", "route", "add", dst, "via", PEER]);
        }
        for dst in ["fd09::/16", "fd01::/16"] {
            node.run(&["ip", "-6", "route", "add", dst, "via", PEER6]);
        }
        let work = tempfile::Builder::new()
            .prefix("imqe-policy-")
            .tempdir()
            .expect("temp dir");
        let mut net = Net {
            kernel,
            servers: Vec::new(),
            work,
            pod,
            node,
            peer,
            lan,
        };
        let servers = vec![
            Server::start(&net.peer, net.work.path(), "peer"),
            Server::start(&net.pod, net.work.path(), "pod"),
        ];
        net.servers = servers;
        net
    }

    fn config_path(&self) -> PathBuf {
        self.work.path().join("ip-masq-agent")
    }

    /// `--config FILE --enable-ipv6` and the kernel's flags, then `args`.
    fn agent(&self, args: &[&str]) -> std::process::Output {
        let config = self.config_path();
        let mut all = vec![
            "--config".to_owned(),
            config.to_str().expect("config path is UTF-8").to_owned(),
            "--enable-ipv6".to_owned(),
        ];
        all.extend(self.kernel.agent_flags());
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        oneshot(&self.node, &all)
    }

    /// Writes `config` and applies it with one `sync` in the node.
    pub fn sync(&self, config: &str) {
        fs::write(self.config_path(), config).expect("write the config");
        let out = self.agent(&["sync"]);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("sync of\n{config}"), &out)
        );
    }

    /// `explain` of the config last synced, for a pod's packets (`source`
    /// None) or `source`'s: each address's verdict.
    pub fn explain(&self, source: Option<&str>, addresses: &[&str]) -> Vec<String> {
        let mut args = vec!["explain"];
        let from;
        if let Some(source) = source {
            from = format!("--from={source}");
            args.push(&from);
        }
        args.extend_from_slice(addresses);
        let out = self.agent(&args);
        assert!(out.status.success(), "{}", describe("explain", &out));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let verdicts: Vec<String> = text
            .lines()
            .zip(addresses)
            .map(|(line, addr)| {
                let mut fields = line.split(' ');
                assert_eq!(
                    fields.next(),
                    Some(*addr),
                    "explain's line for {addr}: {line}"
                );
                fields.next().unwrap_or_default().to_owned()
            })
            .collect();
        assert_eq!(verdicts.len(), addresses.len(), "explain printed:\n{text}");
        verdicts
    }

    /// Connects from `from` to `addr` and returns the source address the
    /// server saw (IPv4 shown plainly, not as `::ffff:`-mapped).
    fn seen(&self, from: &Netns, addr: &str) -> String {
        let endpoint = if addr.contains(':') {
            format!("[{addr}]:{PORT}")
        } else {
            format!("{addr}:{PORT}")
        };
        let mut cmd = from.command(netcheck_bin().to_str().expect("netcheck path is UTF-8"));
        cmd.args(["connect", &endpoint, "--timeout", "5"]);
        let out = run_bounded(&mut cmd, COMMAND_TIMEOUT);
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("connect to {endpoint}"), &out)
        );
        reply.strip_prefix("::ffff:").unwrap_or(&reply).to_owned()
    }

    /// The pod's packets to `addr` on the peer: `masquerade` if the peer saw
    /// the node, `no-masquerade` if it saw the pod.
    pub fn pod_to_peer(&self, addr: &str) -> &'static str {
        let seen = self.seen(&self.pod, addr);
        verdict(
            &seen,
            if addr.contains(':') {
                (NODE_AT_PEER6, POD6)
            } else {
                (NODE_AT_PEER, POD)
            },
        )
    }

    /// The lan host's packets to `addr` on the peer, forwarded by the node.
    pub fn lan_to_peer(&self, addr: &str) -> &'static str {
        let seen = self.seen(&self.lan, addr);
        verdict(
            &seen,
            if addr.contains(':') {
                (NODE_AT_PEER6, LAN6)
            } else {
                (NODE_AT_PEER, LAN)
            },
        )
    }

    /// The peer's packets to the pod (inbound, e.g. from a load balancer).
    pub fn peer_to_pod(&self, v6: bool) -> &'static str {
        let (addr, pair) = if v6 {
            (POD6, (NODE_AT_POD6, PEER6))
        } else {
            (POD, (NODE_AT_POD, PEER))
        };
        verdict(&self.seen(&self.peer, addr), pair)
    }

    /// Adds `hosts` (IPv4 addresses in 172.16.0.0/12) to the peer.
    pub fn add_peer_hosts(&self, hosts: &[String]) {
        let mut batch = String::new();
        for host in hosts {
            batch.push_str(&format!("addr add {host}/32 dev lo\n"));
        }
        let path = self.work.path().join("hosts.batch");
        fs::write(&path, batch).expect("write the ip batch");
        self.peer
            .run(&["ip", "-batch", path.to_str().expect("path is UTF-8")]);
    }
}

/// `masquerade` when the server saw `masqueraded`, `no-masquerade` when it
/// saw `kept`; anything else is a broken topology.
fn verdict(seen: &str, (masqueraded, kept): (&str, &str)) -> &'static str {
    if seen == masqueraded {
        "masquerade"
    } else if seen == kept {
        "no-masquerade"
    } else {
        panic!("the server saw {seen}, neither {masqueraded} (masqueraded) nor {kept} (kept)")
    }
}

/// The issue's worked example in both families: an exception inside a
/// non-masquerade range, and a longer non-masquerade range inside it.
const EXCEPTIONS: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 10.9.5.128/25, fd00::/8, fd09:5::80/121]
masqueradeCIDRs: [10.9.0.0/16, fd09::/16]
";

fn a_exceptions_by_longest_prefix(kernel: Kernel) {
    let net = Net::new(kernel);
    net.sync(EXCEPTIONS);
    let cases = [
        (
            "10.9.5.9",
            "masquerade",
            "in the masqueradeCIDRs exception 10.9.0.0/16 of 10.0.0.0/8",
        ),
        (
            "10.9.5.200",
            "no-masquerade",
            "in 10.9.5.128/25, longer than the exception",
        ),
        ("10.1.1.1", "no-masquerade", "in 10.0.0.0/8 only"),
        (PEER, "masquerade", "in no list"),
        (
            "fd09:5::9",
            "masquerade",
            "in the exception fd09::/16 of fd00::/8",
        ),
        (
            "fd09:5::c8",
            "no-masquerade",
            "in fd09:5::80/121, longer than the exception",
        ),
        ("fd01::1", "no-masquerade", "in fd00::/8 only"),
        (PEER6, "masquerade", "in no list"),
    ];
    let addresses: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let explained = net.explain(None, &addresses);
    for ((addr, want, why), explained) in cases.iter().zip(explained) {
        assert_eq!(net.pod_to_peer(addr), *want, "pod -> {addr} ({why})");
        assert_eq!(explained, *want, "explain {addr}");
    }
}
per_kernel!(a_exceptions_by_longest_prefix);

/// Only the pod range's own destinations listed: without `podCIDRs` the node
/// masquerades everything else, also what it only forwards.
const WITHOUT_POD_CIDRS: &str = "nonMasqueradeCIDRs: [10.9.0.0/16, fd09::/16]\n";
const WITH_POD_CIDRS: &str =
    "nonMasqueradeCIDRs: [10.9.0.0/16, fd09::/16]\npodCIDRs: [10.40.0.0/24, fd40::/64]\n";

fn b_pod_cidrs_keep_inbound_and_forwarded_sources(kernel: Kernel) {
    let net = Net::new(kernel);
    net.sync(WITHOUT_POD_CIDRS);
    for (v6, peer) in [(false, PEER), (true, PEER6)] {
        assert_eq!(
            net.lan_to_peer(peer),
            "masquerade",
            "without podCIDRs: forwarded lan traffic to {peer}"
        );
        assert_eq!(
            net.peer_to_pod(v6),
            "masquerade",
            "without podCIDRs: {peer} -> the pod loses its address"
        );
    }
    net.sync(WITH_POD_CIDRS);
    for (v6, peer, lan) in [(false, PEER, LAN), (true, PEER6, LAN6)] {
        assert_eq!(
            net.lan_to_peer(peer),
            "no-masquerade",
            "podCIDRs: forwarded lan traffic to {peer} is left alone"
        );
        assert_eq!(
            net.peer_to_pod(v6),
            "no-masquerade",
            "podCIDRs: the pod sees the client {peer}"
        );
        assert_eq!(
            net.pod_to_peer(peer),
            "masquerade",
            "podCIDRs: the pod's own traffic to {peer}"
        );
        assert_eq!(
            net.explain(Some(lan), &[peer]),
            ["no-masquerade"],
            "explain --from={lan}"
        );
        assert_eq!(
            net.explain(Some(peer), &[if v6 { POD6 } else { POD }]),
            ["no-masquerade"]
        );
    }
}
per_kernel!(b_pod_cidrs_keep_inbound_and_forwarded_sources);

/// A fixed-seed xorshift, so a failing config reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random IPv4 network inside 172.16.0.0/12, /12 to /32.
fn random_net(rng: &mut Rng) -> (u32, u8) {
    let len = 12 + rng.below(21) as u8;
    let base = 0xac10_0000_u32 | (rng.next() as u32 & 0x000f_ffff);
    let mask = u32::MAX << (32 - u32::from(len));
    (base & mask, len)
}

fn show(addr: u32) -> String {
    std::net::Ipv4Addr::from(addr).to_string()
}

/// One random config (nested and overlapping lists in 172.16.0.0/12, the
/// pod range as a source or not) and destinations in and around its CIDRs.
fn random_case(rng: &mut Rng) -> (String, Vec<String>) {
    let mut pick =
        |n: u64| -> Vec<(u32, u8)> { (0..1 + rng.below(n)).map(|_| random_net(rng)).collect() };
    let non_masq = pick(5);
    let mut masq = pick(4);
    masq.retain(|m| !non_masq.contains(m));
    let pods = pick(2);
    let mut hosts: Vec<u32> = Vec::new();
    for &(start, len) in non_masq.iter().chain(&masq).chain(&pods) {
        let size = if len == 32 {
            1
        } else {
            1_u64 << (32 - u32::from(len))
        };
        hosts.push(start + rng.below(size) as u32);
        hosts.push(start);
    }
    hosts.push(0xac10_0000 | (rng.next() as u32 & 0x000f_ffff));
    hosts.sort_unstable();
    hosts.dedup();
    // A handful per config keeps the run short; which ones is random too.
    while hosts.len() > 8 {
        hosts.remove(rng.below(hosts.len() as u64) as usize);
    }
    let list = |nets: &[(u32, u8)]| {
        nets.iter()
            .map(|&(s, l)| format!("{}/{l}", show(s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut pod_list = list(&pods);
    // Mostly the pod is a pod; sometimes podCIDRs leave it out (a source the
    // agent leaves alone), sometimes there are none (no source condition).
    match rng.below(4) {
        0 => {}
        1 => pod_list = format!("10.40.0.128/25, {pod_list}"),
        _ => pod_list = format!("10.40.0.0/24, {pod_list}"),
    }
    let mut config = format!(
        "nonMasqueradeCIDRs: [{}]\nmasqueradeCIDRs: [{}]\n",
        list(&non_masq),
        list(&masq)
    );
    if rng.below(5) != 0 {
        config.push_str(&format!("podCIDRs: [{pod_list}]\n"));
    }
    if rng.below(3) == 0 {
        config.push_str("masqLinkLocal: true\n");
    }
    (config, hosts.into_iter().map(show).collect())
}

/// Random configs and destinations: the kernel's answer to real packets
/// (the pod's, and a forwarded host's) equals `explain`'s, for every one.
fn c_kernel_agrees_with_explain_on_random_configs(kernel: Kernel) {
    let net = Net::new(kernel);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let cases: Vec<(String, Vec<String>)> = (0..12).map(|_| random_case(&mut rng)).collect();
    let mut all_hosts: Vec<String> = cases.iter().flat_map(|c| c.1.clone()).collect();
    all_hosts.sort();
    all_hosts.dedup();
    net.add_peer_hosts(&all_hosts);
    let mut seen_both = (false, false);
    for (config, hosts) in &cases {
        net.sync(config);
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let explained = net.explain(Some(POD), &hosts);
        for (host, explained) in hosts.iter().zip(explained) {
            let kernel_says = net.pod_to_peer(host);
            assert_eq!(
                kernel_says, explained,
                "{kernel}: pod -> {host} with config\n{config}"
            );
            match kernel_says {
                "masquerade" => seen_both.0 = true,
                _ => seen_both.1 = true,
            }
        }
        // A host the node only forwards for, for a few of them.
        let some = &hosts[..hosts.len().min(2)];
        for (host, explained) in some.iter().zip(net.explain(Some(LAN), some)) {
            let kernel_says = net.lan_to_peer(host);
            assert_eq!(
                kernel_says, explained,
                "{kernel}: lan -> {host} with config\n{config}"
            );
        }
    }
    assert!(
        seen_both.0 && seen_both.1,
        "the sample decided only one way: {seen_both:?}"
    );
}
per_kernel!(c_kernel_agrees_with_explain_on_random_configs);
