//! `--authoritative` with real packets, against other programs' NAT rules
//! captured from (or written exactly as by) those programs: kube-proxy in
//! iptables and in nftables mode, the bridge CNI plugin with `ipMasq`,
//! OpenShift SDN, Docker and a stale upstream `IP-MASQ` chain
//! (`tests/integration/testdata/foreign/`).
//!
//! ```text
//! pod POD -- node (the agent, the foreign rules) -- peer 203.0.113.2, also 198.51.100.2, .3 and 10.44.3.7 on its loopback
//! ```
//!
//! (IPv6, for the stale chain's IPv6 twin: pod fd40::2, peer 2001:db8:1::2,
//! exempted 2001:db8:51::/64; no Service, the captured cluster being IPv4.)
//!
//! The config exempts 10.0.0.0/8 and 198.51.100.0/24. The pod connects to
//! the peer (must be masqueraded), to 198.51.100.2 (exempted) and to
//! kube-proxy's Service 10.0.0.51:80, whose endpoint 10.44.3.7:8080 is
//! exempted by the config, but kube-proxy marks the connection 0x4000
//! (KUBE-MARK-MASQ, the pod being outside its cluster CIDR) and must
//! masquerade it. The peer routes everything back through the node, so
//! every connection is answered and the reply names the source that
//! arrived: the node's 203.0.113.1 (masqueraded) or the pod's own.
//!
//! Each scenario: without the flag the foreign rule decides (exempted
//! traffic masqueraded anyway, where the rule set does that); with it the
//! config decides, marked traffic is still masqueraded by kube-proxy, a
//! second sync writes nothing, and the foreign rules read the same as
//! before the agent ran (ours left out). For the iptables backend a foreign
//! rule inserted ahead of our jump (as dockerd and kube-proxy do when they
//! start) is drift that the next sync repairs by moving our jump only.
//! What must stay true: `policy`'s (namespaces from the harness's guard,
//! servers killed before the namespaces go, every command and wait bounded).

use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::kernel::Kernel;
use crate::policy::{Server, link};
use crate::sandbox::{PORT, netcheck_bin};
use crate::support::agent::oneshot;
use crate::support::iptables::{Family, Mode, save};
use crate::support::netns::Netns;
use crate::support::process::{COMMAND_TIMEOUT, describe, run_bounded};
use crate::support::text::assert_text_eq;

/// The peer side of one address family.
struct Net {
    /// The peer's link address: not exempted, so masqueraded.
    peer: &'static str,
    /// What the peer sees when the node masquerades.
    node_at_peer: &'static str,
    /// The link's prefix length.
    link_len: u8,
    /// On the peer, in the config's exempted range `exempted`: keeps the
    /// pod's address.
    exempt: &'static str,
    /// Also exempted, but kube-proxy's own marking (KUBE-MARK-MASQ, or the
    /// same `meta mark set` its nftables table uses) marks the pod's
    /// packets to it 0x4000 without any DNAT: only the mark says
    /// "masquerade".
    marked: &'static str,
    exempted: &'static str,
    family: Family,
}

const NET4: Net = Net {
    peer: "203.0.113.2",
    node_at_peer: "203.0.113.1",
    link_len: 24,
    exempt: "198.51.100.2",
    marked: "198.51.100.3",
    exempted: "198.51.100.0/24",
    family: Family::V4,
};

const NET6: Net = Net {
    peer: "2001:db8:1::2",
    node_at_peer: "2001:db8:1::1",
    link_len: 64,
    exempt: "2001:db8:51::2",
    marked: "2001:db8:51::3",
    exempted: "2001:db8:51::/64",
    family: Family::V6,
};

impl Net {
    fn host_len(&self) -> u8 {
        match self.family {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    /// `-4` or `-6`, for `ip`.
    fn ip_flag(&self) -> &'static str {
        match self.family {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }
}

/// `ADDR:PORT`, bracketed for IPv6.
fn endpoint(addr: &str) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{PORT}")
    } else {
        format!("{addr}:{PORT}")
    }
}
/// kube-proxy's `default/web-np` ClusterIP; its one endpoint 10.44.3.7:8080
/// lives on the peer (a pod on another node, reached through the node).
const SERVICE: &str = "10.0.0.51:80";
const ENDPOINT: &str = "10.44.3.7";
const CONFIG: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 198.51.100.0/24]\n";
/// For the IPv6 scenario (with `--enable-ipv6`).
const CONFIG6: &str = "nonMasqueradeCIDRs: [10.0.0.0/8, 198.51.100.0/24, 2001:db8:51::/64]\n";
/// Our chain's name (the default `--masq-chain`), left out of the foreign view.
const OURS: &str = "IP-MASQ-AGENT";
/// A foreign rule set, as the file in `tests/integration/testdata/foreign/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foreign {
    KubeProxyIptables,
    KubeProxyNftables,
    BridgeCni,
    OpenShift,
    Docker,
    StaleIpMasq,
    /// The IPv6 chain of the same, beside kube-proxy's ip6tables rules.
    StaleIpMasq6,
}

impl Foreign {
    fn file(self) -> &'static str {
        match self {
            Foreign::KubeProxyIptables => "kube-proxy-iptables.save",
            Foreign::KubeProxyNftables => "kube-proxy-nftables.nft",
            Foreign::BridgeCni => "bridge-cni.save",
            Foreign::OpenShift => "openshift-sdn.save",
            Foreign::Docker => "docker.save",
            Foreign::StaleIpMasq => "stale-ip-masq.save",
            Foreign::StaleIpMasq6 => "stale-ip-masq6.save",
        }
    }

    fn net(self) -> &'static Net {
        if self == Foreign::StaleIpMasq6 {
            &NET6
        } else {
            &NET4
        }
    }

    /// The pod's and the node's addresses on their link: inside the range
    /// the rule set masquerades (the CNI's pod, OpenShift's cluster
    /// network, Docker's bridge); all outside kube-proxy's 10.44.0.0/14.
    fn pod_link(self) -> (&'static str, &'static str) {
        match self {
            Foreign::BridgeCni => ("10.22.0.2/16", "10.22.0.1/16"),
            Foreign::OpenShift => ("10.128.0.5/24", "10.128.0.1/24"),
            Foreign::Docker => ("172.17.0.2/16", "172.17.0.1/16"),
            Foreign::KubeProxyIptables | Foreign::KubeProxyNftables | Foreign::StaleIpMasq => {
                ("10.40.0.2/24", "10.40.0.1/24")
            }
            Foreign::StaleIpMasq6 => ("fd40::2/64", "fd40::1/64"),
        }
    }

    /// Whether, without `--authoritative`, the set masquerades the pod's
    /// traffic to an exempted destination (kube-proxy only masquerades what
    /// it marked).
    fn overrides_exempted(self) -> bool {
        !matches!(
            self,
            Foreign::KubeProxyIptables | Foreign::KubeProxyNftables
        )
    }
}

fn foreign_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/integration/testdata/foreign")
        .join(name)
}

/// One scenario's topology, servers and config file.
struct Node {
    kernel: Kernel,
    foreign: Foreign,
    /// The iptables variant the foreign iptables rules are loaded with;
    /// None for kube-proxy's nftables tables.
    variant: Option<Mode>,
    pod_ip: String,
    _servers: Vec<Server>,
    work: TempDir,
    // Namespaces last: they go after the processes that live in them.
    pod: Netns,
    node: Netns,
    _peer: Netns,
}

impl Node {
    /// The topology with the foreign rules loaded. `hairpin`: the pod is
    /// the Service's endpoint 10.44.3.7 itself, serving on its own port
    /// (so a connection to the Service comes back to it through the node).
    fn new(kernel: Kernel, foreign: Foreign, variant: Option<Mode>, hairpin: bool) -> Node {
        let (pod, node, peer) = (Netns::new(), Netns::new(), Netns::new());
        let (pod_cidr, node_cidr) = if hairpin {
            ("10.44.3.7/24", "10.44.3.1/24")
        } else {
            foreign.pod_link()
        };
        let net = foreign.net();
        let ip = net.ip_flag();
        link(&node, "to-pod", &[node_cidr], &pod, &[pod_cidr]);
        let node_link = format!("{}/{}", net.node_at_peer, net.link_len);
        let peer_link = format!("{}/{}", net.peer, net.link_len);
        link(&node, "to-peer", &[&node_link], &peer, &[&peer_link]);
        // The Service's endpoint is on the peer, unless the pod is it.
        let endpoint_on_peer = (!hairpin && net.family == Family::V4).then_some(ENDPOINT);
        for host in [net.exempt, net.marked].into_iter().chain(endpoint_on_peer) {
            let mut args = vec!["ip", "addr", "add", host, "dev", "lo"];
            if net.family == Family::V6 {
                args.push("nodad");
            }
            peer.run(&args);
        }
        node.run(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        ]);
        let gateway = node_cidr.split('/').next().expect("an address");
        pod.run(&["ip", ip, "route", "add", "default", "via", gateway]);
        peer.run(&["ip", ip, "route", "add", "default", "via", net.node_at_peer]);
        node.run(&["ip", ip, "route", "add", net.exempted, "via", net.peer]);
        if let Some(endpoint) = endpoint_on_peer {
            node.run(&[
                "ip",
                "route",
                "add",
                &format!("{endpoint}/32"),
                "via",
                net.peer,
            ]);
        }
        let work = tempfile::Builder::new()
            .prefix("imqe-authoritative-")
            .tempdir()
            .expect("temp dir");
        let mut servers = vec![Server::start(&peer, work.path(), "peer")];
        if hairpin {
            servers.push(Server::start(&pod, work.path(), "pod"));
        }
        let config = if net.family == Family::V6 {
            CONFIG6
        } else {
            CONFIG
        };
        fs::write(work.path().join("ip-masq-agent"), config).expect("write the config");
        let pod_ip = pod_cidr.split('/').next().expect("an address").to_owned();
        let node = Node {
            kernel,
            foreign,
            variant,
            pod_ip,
            _servers: servers,
            work,
            pod,
            node,
            _peer: peer,
        };
        node.load_foreign();
        node.mark_like_kube_proxy();
        node
    }

    /// The pod's packets to [`Net::marked`] marked for masquerading by
    /// kube-proxy's own chain (iptables) or its own statement (nftables),
    /// in PREROUTING, as kube-proxy marks Service traffic.
    fn mark_like_kube_proxy(&self) {
        let Some(mode) = self.variant else {
            let rule = format!(
                "ip daddr {} meta mark set meta mark | 0x00004000",
                NET4.marked
            );
            self.node.run(&[
                "nft",
                "insert",
                "rule",
                "ip",
                "kube-proxy",
                "nat-prerouting",
                &rule,
            ]);
            return;
        };
        let net = self.foreign.net();
        let line = format!(
            "-t nat -I PREROUTING 1 -d {}/{} -j KUBE-MARK-MASQ",
            net.marked,
            net.host_len()
        );
        crate::support::iptables::ipt(&self.node, mode, net.family, &line);
    }

    /// The foreign rule set, and kube-proxy's iptables rules with it: a
    /// node runs kube-proxy beside its CNI, and its marked Service traffic
    /// is what `--authoritative` must leave to it.
    fn load_foreign(&self) {
        let Some(mode) = self.variant else {
            let file = foreign_file(self.foreign.file());
            self.node
                .run(&["nft", "-f", file.to_str().expect("UTF-8 path")]);
            return;
        };
        crate::support::iptables::add_kube_proxy_nfacct(&self.node);
        let family = self.foreign.net().family;
        let restore = mode.tool(family, "-restore");
        let kube_proxy = match family {
            Family::V4 => Foreign::KubeProxyIptables.file(),
            Family::V6 => "kube-proxy-ip6tables.save",
        };
        let mut files = vec![self.foreign.file()];
        if self.foreign != Foreign::KubeProxyIptables {
            files.push(kube_proxy);
        }
        for name in files {
            let file = foreign_file(name);
            self.node
                .run(&[&restore, "--noflush", file.to_str().expect("UTF-8 path")]);
        }
    }

    /// The foreign rules as the node holds them, ours left out: the nat
    /// table of the variant holding them (normalised `iptables-save`, lines
    /// naming our chain dropped), or kube-proxy's nftables tables (counters
    /// dropped, they count this test's packets).
    fn foreign_state(&self) -> String {
        if let Some(mode) = self.variant {
            return save(&self.node, mode, self.foreign.net().family)
                .lines()
                .filter(|l| !l.contains(OURS))
                .map(|l| format!("{l}\n"))
                .collect();
        }
        let mut text = String::new();
        for family in ["ip", "ip6"] {
            let listed = self
                .node
                .run(&["nft", "list", "table", family, "kube-proxy"]);
            for line in listed.lines() {
                text.push_str(&strip_counters(line));
                text.push('\n');
            }
        }
        text
    }

    /// One `sync` in the node with the kernel's flags and `flags`; its log.
    fn sync(&self, flags: &[&str]) -> String {
        let config = self.work.path().join("ip-masq-agent");
        let mut all = vec![
            "--config".to_owned(),
            config.to_str().expect("UTF-8").to_owned(),
        ];
        if self.foreign.net().family == Family::V6 {
            all.push("--enable-ipv6".to_owned());
        }
        all.extend(self.kernel.agent_flags());
        all.extend(flags.iter().map(|f| (*f).to_owned()));
        all.push("sync".to_owned());
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = oneshot(&self.node, &all);
        assert!(out.status.success(), "{}", describe(&all.join(" "), &out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The source address the server behind `endpoint` saw from the pod.
    fn seen(&self, endpoint: &str) -> String {
        let mut cmd = self
            .pod
            .command(netcheck_bin().to_str().expect("netcheck path is UTF-8"));
        cmd.args(["connect", endpoint, "--timeout", "5"]);
        let out = run_bounded(&mut cmd, COMMAND_TIMEOUT);
        assert!(
            out.status.success(),
            "{}",
            describe(&format!("connect to {endpoint}"), &out)
        );
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        reply.strip_prefix("::ffff:").unwrap_or(&reply).to_owned()
    }

    /// Asserts what the peer sees for each of the pod's connections: to
    /// the peer (always masqueraded), to [`Net::exempt`] (`exempted`), and
    /// those kube-proxy marked (always masqueraded, by kube-proxy): the
    /// Service (IPv4; the captured cluster is single-stack) and
    /// [`Net::marked`].
    fn expect(&self, when: &str, exempted: &str) {
        let over = match (self.kernel, self.variant) {
            (Kernel::Nftables, Some(mode)) => format!(" over iptables-{}", mode.flag()),
            _ => String::new(),
        };
        let what = format!("{:?} under {}{over} ({when})", self.foreign, self.kernel);
        let net = self.foreign.net();
        let masqueraded = net.node_at_peer;
        let (peer, exempt, marked) = (
            endpoint(net.peer),
            endpoint(net.exempt),
            endpoint(net.marked),
        );
        assert_eq!(
            self.seen(&peer),
            masqueraded,
            "{what}: pod -> {peer} must be masqueraded"
        );
        assert_eq!(
            self.seen(&exempt),
            exempted,
            "{what}: pod -> {exempt} (exempted by the config)"
        );
        if net.family == Family::V4 {
            assert_eq!(
                self.seen(SERVICE),
                masqueraded,
                "{what}: pod -> Service {SERVICE} (marked 0x4000, DNATed)"
            );
        }
        assert_eq!(
            self.seen(&marked),
            masqueraded,
            "{what}: pod -> {marked} (marked 0x4000 only)"
        );
        eprintln!(
            "{what}: peer saw {masqueraded} from {peer}, {exempted} from {exempt}, {masqueraded} from the marked ones"
        );
    }

    /// The first foreign POSTROUTING rule deleted and inserted again at the
    /// front, as dockerd (which inserts) or a restarted CNI does.
    fn foreign_rule_jumps_ahead(&self, mode: Mode) {
        let family = self.foreign.net().family;
        let listing = self
            .node
            .run(&[&mode.tool(family, ""), "-t", "nat", "-S", "POSTROUTING"]);
        let rule = listing
            .lines()
            .find(|l| l.starts_with("-A POSTROUTING ") && !l.contains(OURS))
            .expect("a foreign POSTROUTING rule");
        // `-S` prints restore syntax, quoting included: one transaction.
        let spec = rule.trim_start_matches("-A POSTROUTING ");
        let payload = self.work.path().join("ahead.rules");
        let text = format!("*nat\n-D POSTROUTING {spec}\n-I POSTROUTING 1 {spec}\nCOMMIT\n");
        fs::write(&payload, text).expect("write the payload");
        let restore = mode.tool(family, "-restore");
        self.node
            .run(&[&restore, "--noflush", payload.to_str().expect("UTF-8 path")]);
    }
}

/// `counter packets N bytes M` as `counter`: the numbers count this
/// test's packets.
fn strip_counters(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out = Vec::with_capacity(words.len());
    let mut i = 0;
    while i < words.len() {
        out.push(words[i]);
        if words[i] == "counter"
            && words.get(i + 1) == Some(&"packets")
            && words.get(i + 3) == Some(&"bytes")
        {
            i += 5;
        } else {
            i += 1;
        }
    }
    out.join(" ")
}

/// One scenario; see the module's text.
pub fn scenario(kernel: Kernel, foreign: Foreign, variant: Option<Mode>) {
    let node = Node::new(kernel, foreign, variant, false);
    let before = node.foreign_state();
    let pod = node.pod_ip.as_str();

    node.sync(&[]);
    let masqueraded = foreign.net().node_at_peer;
    let without = if foreign.overrides_exempted() {
        masqueraded
    } else {
        pod
    };
    node.expect("without --authoritative", without);

    let first = node.sync(&["--authoritative", "-v=2"]);
    assert!(first.contains("rules applied"), "{first}");
    node.expect("with --authoritative", pod);
    let again = node.sync(&["--authoritative", "-v=2"]);
    assert!(
        again.contains("rules unchanged") && !again.contains("rules applied"),
        "{again}"
    );
    assert_text_eq(
        "the foreign rules after our syncs",
        &node.foreign_state(),
        &before,
    );

    // A foreign rule ahead of our jump: what the next sync repairs.
    if let (Some(mode), Some(_)) = (kernel.iptables(), variant) {
        node.foreign_rule_jumps_ahead(mode);
        let ahead = if foreign.overrides_exempted() {
            masqueraded
        } else {
            pod
        };
        node.expect("a foreign rule inserted ahead of our jump", ahead);
        let repaired = node.sync(&["--authoritative", "-v=2"]);
        assert!(repaired.contains("is not the first rule"), "{repaired}");
        node.expect("after the sync that moved our jump first", pod);
        assert_text_eq(
            "the foreign rules after the repair",
            &node.foreign_state(),
            &before,
        );
    }
}

/// A pod connecting to a Service whose endpoint is itself: kube-proxy must
/// masquerade the connection (to the node's 10.44.3.1) or the pod drops
/// the packet that comes back with its own address as the source. In
/// iptables mode kube-proxy marks it (KUBE-SEP's `-s 10.44.3.7/32 -j
/// KUBE-MARK-MASQ`); in nftables mode it does not mark it but masquerades
/// what its `hairpin-connections` set matches, which is why the nftables
/// backend leaves DNATed connections to exempted destinations unbound.
pub fn hairpin(kernel: Kernel, foreign: Foreign, variant: Option<Mode>) {
    let node = Node::new(kernel, foreign, variant, true);
    let before = node.foreign_state();
    for flags in [&[][..], &["--authoritative"]] {
        node.sync(flags);
        let what = format!("{foreign:?} under {kernel} ({flags:?})");
        assert_eq!(
            node.seen(SERVICE),
            "10.44.3.1",
            "{what}: the pod -> {SERVICE} -> itself"
        );
        eprintln!(
            "{what}: the pod's own server saw 10.44.3.1 from {SERVICE} (hairpin masqueraded)"
        );
    }
    assert_text_eq(
        "the foreign rules after our syncs",
        &node.foreign_state(),
        &before,
    );
}

/// `authoritative!(iptables name, Foreign::X);` declares a test per kernel
/// backend and variant of the foreign iptables rules: the iptables backends
/// with the rules in their own variant, the nftables backend with them in
/// each. `authoritative!(nftables name, Foreign::X)`: one test per backend.
macro_rules! authoritative {
    (iptables $name:ident, $foreign:expr) => {
        mod $name {
            use crate::kernel::Kernel;
            use crate::support::iptables::Mode;

            #[test]
            fn iptables_nft() {
                super::run(Kernel::IptablesNft, $foreign, Some(Mode::Nft));
            }

            #[test]
            fn iptables_legacy() {
                super::run(Kernel::IptablesLegacy, $foreign, Some(Mode::Legacy));
            }

            #[test]
            fn nftables_over_iptables_nft() {
                super::run(Kernel::Nftables, $foreign, Some(Mode::Nft));
            }

            #[test]
            fn nftables_over_iptables_legacy() {
                super::run(Kernel::Nftables, $foreign, Some(Mode::Legacy));
            }
        }
    };
    (nftables $name:ident, $foreign:expr) => {
        mod $name {
            use crate::kernel::Kernel;

            #[test]
            fn iptables_nft() {
                super::run(Kernel::IptablesNft, $foreign, None);
            }

            #[test]
            fn iptables_legacy() {
                super::run(Kernel::IptablesLegacy, $foreign, None);
            }

            #[test]
            fn nftables() {
                super::run(Kernel::Nftables, $foreign, None);
            }
        }
    };
}

/// The prerequisites (and `nfacct`), then the scenario.
fn run(kernel: Kernel, foreign: Foreign, variant: Option<Mode>) {
    if crate::prerequisites() && crate::support::env::require_tools(&["nfacct"]) {
        scenario(kernel, foreign, variant);
    }
}

authoritative!(iptables kube_proxy_iptables, super::Foreign::KubeProxyIptables);
authoritative!(nftables kube_proxy_nftables, super::Foreign::KubeProxyNftables);
authoritative!(iptables bridge_cni, super::Foreign::BridgeCni);
authoritative!(iptables openshift, super::Foreign::OpenShift);
authoritative!(iptables docker, super::Foreign::Docker);
authoritative!(iptables stale_ip_masq, super::Foreign::StaleIpMasq);
authoritative!(iptables stale_ip_masq6, super::Foreign::StaleIpMasq6);

/// The hairpin of [`hairpin`], per kube-proxy mode and backend.
mod hairpin {
    use super::Foreign::{KubeProxyIptables, KubeProxyNftables};
    use crate::kernel::Kernel;
    use crate::support::iptables::Mode;

    fn run(kernel: Kernel, foreign: super::Foreign, variant: Option<Mode>) {
        if crate::prerequisites() && crate::support::env::require_tools(&["nfacct"]) {
            super::hairpin(kernel, foreign, variant);
        }
    }

    #[test]
    fn kube_proxy_iptables_iptables_nft() {
        run(Kernel::IptablesNft, KubeProxyIptables, Some(Mode::Nft));
    }

    #[test]
    fn kube_proxy_iptables_iptables_legacy() {
        run(
            Kernel::IptablesLegacy,
            KubeProxyIptables,
            Some(Mode::Legacy),
        );
    }

    #[test]
    fn kube_proxy_iptables_nftables_over_iptables_nft() {
        run(Kernel::Nftables, KubeProxyIptables, Some(Mode::Nft));
    }

    #[test]
    fn kube_proxy_iptables_nftables_over_iptables_legacy() {
        run(Kernel::Nftables, KubeProxyIptables, Some(Mode::Legacy));
    }

    #[test]
    fn kube_proxy_nftables_iptables_nft() {
        run(Kernel::IptablesNft, KubeProxyNftables, None);
    }

    #[test]
    fn kube_proxy_nftables_iptables_legacy() {
        run(Kernel::IptablesLegacy, KubeProxyNftables, None);
    }

    #[test]
    fn kube_proxy_nftables_nftables() {
        run(Kernel::Nftables, KubeProxyNftables, None);
    }
}
