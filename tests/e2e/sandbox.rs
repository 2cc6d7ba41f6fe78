//! The data-plane sandbox: five network namespaces wired as a node with a pod
//! and three kinds of peer, the agent running on the node, and a TCP server
//! on every peer that answers with the source address it saw.
//!
//! ```text
//! pod 10.40.0.2 -- 10.40.0.1 node 10.10.0.1   -- 10.10.0.2   vpc      (routes 10.40.0.0/14 back via the node)
//!   default via the node          10.11.0.1   -- 10.11.0.2   vpn      (knows only its own /24)
//!                                 203.0.113.1 -- 203.0.113.2 internet (knows only its own /24)
//! ```
//!
//! The addressing is `scripts/demo.sh`'s, plus the internet host. What must
//! stay true: every namespace is made by the harness's `Netns` guard (named
//! `imqa-<pid>-<n>`), every process started in one (servers, the agent,
//! clients) is killed and reaped before the namespaces go, also when a step
//! panics (fields drop in declaration order, processes first); traffic only
//! flows between these namespaces over veth pairs made here; every command,
//! connection and wait has a deadline.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::configs::Enforced;
use crate::kernel::Kernel;
use crate::support::agent::Agent;
use crate::support::iptables::Family;
use crate::support::netns::Netns;
use crate::support::process::{COMMAND_TIMEOUT, describe, run_bounded, try_run_bounded};
use crate::support::volume::ConfigVolume;
use crate::support::wait::{DEADLINE, wait_for_text, wait_until};

/// The port every peer serves on.
pub const PORT: u16 = 8080;
/// The pod's address: what a peer sees when the node does not masquerade.
pub const POD_IP: &str = "10.40.0.2";
/// How long a connection that must succeed may take. Replies on a veth take
/// well under a millisecond; this only has to outlast a loaded machine.
pub const CONNECT_OK: Duration = Duration::from_secs(5);
/// How long a connection that must fail is given. No answer ever comes
/// (nothing routes back), so this only decides how long the proof takes;
/// it covers the first SYN retransmission (1 s).
pub const CONNECT_FAIL: Duration = Duration::from_millis(1500);
/// How long a server lives at most: longer than any scenario, so it is only
/// a backstop (the guard kills it when the test ends).
const SERVER_LIFETIME_SECS: &str = "300";
/// More connections than any scenario makes, so no server ends early.
const SERVER_COUNT: &str = "1000000";

/// A namespace behind the node, running `netcheck serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Part of the VPC: routes the pod range back through the node.
    Vpc,
    /// Across a VPN: no route to the pod range (the incident).
    Vpn,
    /// A host on the internet: no route to the pod range either.
    Internet,
}

impl Peer {
    pub const ALL: [Peer; 3] = [Peer::Vpc, Peer::Vpn, Peer::Internet];

    /// The peer's own address.
    pub fn addr(self) -> &'static str {
        match self {
            Peer::Vpc => "10.10.0.2",
            Peer::Vpn => "10.11.0.2",
            Peer::Internet => "203.0.113.2",
        }
    }

    /// The node's address on the link to this peer: what the peer sees when
    /// the node masquerades.
    pub fn node_addr(self) -> &'static str {
        match self {
            Peer::Vpc => "10.10.0.1",
            Peer::Vpn => "10.11.0.1",
            Peer::Internet => "203.0.113.1",
        }
    }

    /// `ADDR:PORT` to connect to.
    pub fn endpoint(self) -> String {
        format!("{}:{PORT}", self.addr())
    }

    fn name(self) -> &'static str {
        match self {
            Peer::Vpc => "vpc",
            Peer::Vpn => "vpn",
            Peer::Internet => "internet",
        }
    }

    /// The node's end of the veth to this peer (at most 15 bytes).
    fn node_if(self) -> &'static str {
        match self {
            Peer::Vpc => "to-vpc",
            Peer::Vpn => "to-vpn",
            Peer::Internet => "to-internet",
        }
    }
}

/// `target/<profile>/examples/netcheck`, next to the directory holding this
/// test binary (`target/<profile>/deps/`), unless `NETCHECK_BIN` names one.
pub fn netcheck_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NETCHECK_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("examples").join("netcheck"))
        .expect("the test binary lives in target/<profile>/deps/")
}

/// Panics with what to do when the probe is not built.
pub fn require_netcheck() {
    let bin = netcheck_bin();
    assert!(
        bin.is_file(),
        "the TCP probe {} is missing: run `cargo build --examples` (cargo test and \
         cargo nextest build it with --all-targets), or set NETCHECK_BIN",
        bin.display()
    );
}

/// One `netcheck serve` in a peer namespace; killed and reaped on drop.
struct Server {
    peer: Peer,
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Server {
    fn start(ns: &Netns, peer: Peer, dir: &Path) -> Server {
        let out = dir.join(format!("serve-{}.out", peer.name()));
        let err = dir.join(format!("serve-{}.err", peer.name()));
        let bin = netcheck_bin();
        let mut cmd = ns.command(bin.to_str().expect("netcheck path is UTF-8"));
        cmd.args(["serve", &peer.endpoint(), "--count", SERVER_COUNT])
            .args(["--timeout", SERVER_LIFETIME_SECS])
            .stdin(Stdio::null())
            .stdout(File::create(&out).expect("server stdout file"))
            .stderr(File::create(&err).expect("server stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut server = Server {
            peer,
            child,
            out,
            err,
        };
        wait_until(
            Duration::from_secs(10),
            &format!("netcheck serve on the {} peer to listen", peer.name()),
            || {
                if let Ok(Some(status)) = server.child.try_wait() {
                    panic!(
                        "netcheck serve on the {} peer exited ({status}):\n{}",
                        peer.name(),
                        server.logs()
                    );
                }
                fs::read_to_string(&server.out).unwrap_or_default()
            },
            |out| out.starts_with("listening on "),
        );
        server
    }

    fn logs(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let seen = read(&self.out);
        let tail: Vec<&str> = seen.lines().rev().take(5).collect();
        format!(
            "--- {} server: {} line(s) on stdout, the last: {:?}\n--- its stderr\n{}",
            self.peer.name(),
            seen.lines().count(),
            tail,
            read(&self.err)
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The topology, the servers, the config volume and the agent of one test.
pub struct Sandbox {
    pub kernel: Kernel,
    /// The running agent, if started; dropped (killed) first.
    agent: Option<Agent>,
    /// Agents killed earlier in the test; kept so a failure prints their logs.
    retired: Vec<Agent>,
    servers: Vec<Server>,
    volume: ConfigVolume,
    work: TempDir,
    // Namespaces last: they go after every process that lives in them.
    pub pod: Netns,
    pub node: Netns,
    vpc: Netns,
    vpn: Netns,
    internet: Netns,
}

impl Sandbox {
    /// Builds the topology with `config` in the kubelet-style volume and
    /// starts a server on every peer. No agent yet.
    pub fn new(kernel: Kernel, config: &str) -> Sandbox {
        let pod = Netns::new();
        let node = Netns::new();
        let vpc = Netns::new();
        let vpn = Netns::new();
        let internet = Netns::new();
        link(&node, "to-pod", "10.40.0.1/24", &pod, "10.40.0.2/24");
        for (peer, ns, node_cidr, peer_cidr) in [
            (Peer::Vpc, &vpc, "10.10.0.1/24", "10.10.0.2/24"),
            (Peer::Vpn, &vpn, "10.11.0.1/24", "10.11.0.2/24"),
            (
                Peer::Internet,
                &internet,
                "203.0.113.1/24",
                "203.0.113.2/24",
            ),
        ] {
            link(&node, peer.node_if(), node_cidr, ns, peer_cidr);
        }
        node.run(&["bash", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]);
        pod.run(&["ip", "route", "add", "default", "via", "10.40.0.1"]);
        // Only the VPC knows the pod range; the VPN peer and the internet
        // host know their own /24 and nothing else.
        vpc.run(&["ip", "route", "add", "10.40.0.0/14", "via", "10.10.0.1"]);

        let work = tempfile::Builder::new()
            .prefix("imqe-work-")
            .tempdir()
            .expect("temp dir for server logs");
        let volume = ConfigVolume::with(config);
        let mut sandbox = Sandbox {
            kernel,
            agent: None,
            retired: Vec::new(),
            servers: Vec::new(),
            volume,
            work,
            pod,
            node,
            vpc,
            vpn,
            internet,
        };
        for peer in Peer::ALL {
            let server = Server::start(sandbox.peer_ns(peer), peer, sandbox.work.path());
            sandbox.servers.push(server);
        }
        sandbox
    }

    pub fn peer_ns(&self, peer: Peer) -> &Netns {
        match peer {
            Peer::Vpc => &self.vpc,
            Peer::Vpn => &self.vpn,
            Peer::Internet => &self.internet,
        }
    }

    /// A private directory for this test's files (removed with the sandbox).
    pub fn work_dir(&self) -> &Path {
        self.work.path()
    }

    /// Every namespace of the sandbox, for the cleanup test.
    pub fn namespace_names(&self) -> Vec<String> {
        [&self.pod, &self.node, &self.vpc, &self.vpn, &self.internet]
            .iter()
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// Pids of every process the sandbox started that is still its own.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.servers.iter().map(|s| s.child.id()).collect();
        pids.extend(self.agent.as_ref().map(Agent::pid));
        pids
    }

    pub fn volume(&mut self) -> &mut ConfigVolume {
        &mut self.volume
    }

    /// Starts the daemon in the node namespace, the way the DaemonSet runs
    /// it: `--config VOLUME/ip-masq-agent` and the kernel's flags
    /// (`--iptables-mode=MODE` or `--backend=nftables`), no metrics listener
    /// (`-v=2` is the harness's, so every sync result is logged).
    pub fn start_agent(&mut self) -> &mut Agent {
        assert!(self.agent.is_none(), "an agent is already running");
        let mut flags = self.kernel.agent_flags();
        flags.push("--metrics-address=".to_owned());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let agent = Agent::start_with_flags(&self.node, &self.volume, &flags);
        self.agent.insert(agent)
    }

    /// The running agent.
    pub fn agent(&mut self) -> &mut Agent {
        self.agent.as_mut().expect("the agent was started")
    }

    /// SIGKILL to the agent (no chance to clean up or finish a write); waits
    /// until it is reaped.
    pub fn kill_agent(&mut self) {
        let mut agent = self.agent.take().expect("the agent was started");
        agent.signal("KILL");
        let status = agent
            .wait_exit(Duration::from_secs(10))
            .expect("the agent still runs 10 s after SIGKILL");
        assert_eq!(status.code(), None, "SIGKILL ended the agent with {status}");
        self.retired.push(agent);
    }

    /// The log of the agent killed last.
    pub fn killed_agent_log(&self) -> String {
        self.retired.last().map(Agent::log).unwrap_or_default()
    }

    /// The node's state in this sandbox's kernel backend, normalised: the
    /// nat table, or our nftables table (see `Kernel::state`).
    pub fn state(&self) -> String {
        self.kernel.state(&self.node)
    }

    /// The node's state with counters or handles: equal before and after
    /// means nothing was rewritten (see `Kernel::state_exact`).
    pub fn state_exact(&self) -> String {
        self.kernel.state_exact(&self.node)
    }

    /// What the node holds when this sandbox's backend enforces `rules`.
    pub fn expected(&self, rules: &Enforced) -> String {
        self.kernel.expected(rules)
    }

    /// After `start_agent`: waits until the node's state reads
    /// `expected` and the agent has logged its startup sync (that line comes
    /// after the write, so log lines counted afterwards start from a settled
    /// state). Fails at once if the agent exits.
    pub fn wait_started(&mut self, expected: &str, what: &str) {
        let observe = || {
            self.agent().assert_running();
            self.state()
        };
        wait_for_text(DEADLINE, what, observe, expected);
        let agent = self.agent();
        wait_until(
            DEADLINE,
            &format!("the log line of the sync that wrote {what} (the log follows)"),
            || {
                agent.assert_running();
                agent.log()
            },
            |log| {
                log.lines().any(|l| {
                    l.contains(r#"trigger="startup""#)
                        && (l.contains("rules applied") || l.contains("rules unchanged"))
                })
            },
        );
    }

    /// The node's state in another kernel backend (see `Kernel::state`).
    pub fn state_of(&self, kernel: Kernel) -> String {
        kernel.state(&self.node)
    }

    /// The pod connects to `peer` and returns what the peer reported as the
    /// source address, or `timeout`, or `error: ...`.
    pub fn connect(&self, peer: Peer, timeout: Duration) -> String {
        let bin = netcheck_bin();
        let mut cmd = self
            .pod
            .command(bin.to_str().expect("netcheck path is UTF-8"));
        cmd.args(["connect", &peer.endpoint(), "--timeout"])
            .arg(format!("{}", timeout.as_secs_f64()));
        let out = run_bounded(&mut cmd, timeout + COMMAND_TIMEOUT);
        let reply = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if reply.is_empty() {
            describe("netcheck connect printed nothing", &out)
        } else {
            reply
        }
    }

    /// The pod reaches `peer`, which sees `want` as the source address.
    pub fn expect_source(&self, peer: Peer, want: &str, why: &str) {
        let got = self.connect(peer, CONNECT_OK);
        assert_eq!(got, want, "pod -> {} ({}): {why}", peer.addr(), peer.name());
    }

    /// The pod's connection to `peer` times out: the peer cannot answer.
    pub fn expect_timeout(&self, peer: Peer, why: &str) {
        let got = self.connect(peer, CONNECT_FAIL);
        assert_eq!(
            got,
            "timeout",
            "pod -> {} ({}): {why}",
            peer.addr(),
            peer.name()
        );
    }

    /// The data path of a node enforcing the VPN example: the VPN peer and
    /// the internet see the node, the VPC sees the pod.
    pub fn expect_vpn_example_behaviour(&self, when: &str) {
        self.expect_source(
            Peer::Vpn,
            Peer::Vpn.node_addr(),
            &format!("{when}: masqueraded, so the VPN peer can answer"),
        );
        self.expect_source(
            Peer::Vpc,
            POD_IP,
            &format!("{when}: not masqueraded, the VPC routes pods back"),
        );
        self.expect_source(
            Peer::Internet,
            Peer::Internet.node_addr(),
            &format!("{when}: masqueraded, the internet host sees the node"),
        );
    }

    /// Polls `peer` (with connections that must not time out) until it
    /// reports `want`, within `deadline`; returns how long it took.
    pub fn wait_for_source(&self, peer: Peer, want: &str, deadline: Duration) -> Duration {
        let start = Instant::now();
        wait_until(
            deadline,
            &format!("pod -> {} to be seen as {want}", peer.addr()),
            || self.connect(peer, CONNECT_OK),
            |got| got == want,
        );
        start.elapsed()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !thread::panicking() {
            return;
        }
        // Evidence for the failure; nothing here may panic.
        let mut report = format!(
            "--- sandbox ({}): pod {} node {} vpc {} vpn {} internet {}\n",
            self.kernel,
            self.pod.name(),
            self.node.name(),
            self.vpc.name(),
            self.vpn.name(),
            self.internet.name()
        );
        let tool = match self.kernel.iptables() {
            Some(mode) => vec![
                mode.tool(Family::V4, "-save"),
                "-c".into(),
                "-t".into(),
                "nat".into(),
            ],
            None => vec!["nft".into(), "-a".into(), "list".into(), "ruleset".into()],
        };
        let mut save = self.node.command(&tool[0]);
        save.args(&tool[1..]);
        match try_run_bounded(&mut save, COMMAND_TIMEOUT) {
            Ok(out) => report.push_str(&format!(
                "--- {} in the node\n{}{}",
                tool.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )),
            Err(e) => report.push_str(&format!("--- {}: {e}\n", tool.join(" "))),
        }
        for server in &self.servers {
            report.push_str(&server.logs());
        }
        eprintln!("{report}");
    }
}

/// A veth from `node` (named `node_if`, at `node_cidr`) to `eth0` in `other`
/// (at `other_cidr`), both ends up.
fn link(node: &Netns, node_if: &str, node_cidr: &str, other: &Netns, other_cidr: &str) {
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
    node.run(&["ip", "addr", "add", node_cidr, "dev", node_if]);
    node.run(&["ip", "link", "set", node_if, "up"]);
    other.run(&["ip", "addr", "add", other_cidr, "dev", "eth0"]);
    other.run(&["ip", "link", "set", "eth0", "up"]);
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// Polls `check` every few milliseconds until it returns `Ok`; after
/// `timeout`, panics naming `what` with the last `Err` it returned. For the
/// swap loop, where the harness's 100 ms poll would dominate the run time.
pub fn wait_fast(timeout: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}")
            }
            Err(_) => thread::sleep(Duration::from_millis(2)),
        }
    }
}
