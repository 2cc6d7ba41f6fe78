//! The DaemonSet's pod, run by podman in a node namespace of the test.
//!
//! `run_options` reads `manifests/base/daemonset.yaml` and turns each field
//! of the pod spec that shapes the container into the podman option that
//! does the same, so the test runs what the manifest says rather than a
//! copy of it: a field it does not know how to reproduce fails the test.
//! The result is checked from outside the container, in the kernel's own
//! words: `/proc/PID/status` for capabilities and no_new_privs,
//! `/proc/PID/mountinfo` for read-only mounts, `/proc/PID/ns/net` for the
//! namespace, `iptables-save` in the node namespace for the rules.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Container, PodSpec};

use crate::context::{self, TAG};
use crate::http;
use crate::iptables::{Family, Mode, save};
use crate::netns::Netns;
use crate::process::{COMMAND_TIMEOUT, describe, run_bounded, try_run_bounded};
use crate::repo;
use crate::volume::ConfigVolume;
use crate::wait::{DEADLINE, wait_for_text, wait_until};

/// Starting a container and its first sync on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// `podman` with the runtime these machines need: crun cannot handle their
/// hybrid cgroup hierarchy.
pub fn podman() -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["--runtime", "runc"]);
    cmd
}

/// The soft limit of `resource` ("Max open files") from /proc/self/limits,
/// capped: runc refuses an nproc above 32768 on these machines even below
/// the host's limit.
fn limit(resource: &str, cap: u64) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("reading /proc/self/limits");
    let soft = limits
        .lines()
        .find_map(|line| line.strip_prefix(resource))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("{resource} in /proc/self/limits"));
    match soft {
        "unlimited" => cap,
        n => n
            .parse::<u64>()
            .unwrap_or_else(|_| panic!("{resource}: {n}"))
            .min(cap),
    }
}

/// Explicit ulimits no higher than this process's own: podman's defaults
/// exceed what these machines allow.
pub fn ulimits() -> Vec<String> {
    let nofile = limit("Max open files", 65536);
    let nproc = limit("Max processes", 32768);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// A DaemonSet of `manifests/`, e.g. `base/daemonset.yaml`.
pub fn daemonset(file: &str) -> DaemonSet {
    let path = repo().join("manifests").join(file);
    let text = std::fs::read_to_string(&path).expect("reading the DaemonSet");
    let value: serde_json::Value = serde_saphyr::from_str(&text).expect("the DaemonSet is YAML");
    serde_json::from_value(value).expect("the DaemonSet is a DaemonSet")
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("a pod spec")
}

fn container(ds: &DaemonSet) -> &Container {
    let pod = pod_spec(ds);
    assert_eq!(pod.containers.len(), 1, "one container");
    &pod.containers[0]
}

/// The `podman run` options that reproduce `container` of the pod spec, with
/// the node namespace `ns` as the host network and `config_dir` as the
/// ConfigMap volume as kubelet lays it out.
pub fn run_options(
    pod: &PodSpec,
    container: &Container,
    ns: &Netns,
    config_dir: Option<&Path>,
) -> Vec<String> {
    let mut options = Vec::new();

    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent runs in the node's network namespace"
    );
    options.push(format!("--network=ns:/run/netns/{}", ns.name()));
    assert_eq!(
        container.command, None,
        "the image's entrypoint is the agent"
    );
    assert_eq!(
        container.env, None,
        "an env entry would need reproducing here"
    );

    let security = container
        .security_context
        .as_ref()
        .expect("a securityContext");
    assert_ne!(security.privileged, Some(true), "privileged");
    if security.allow_privilege_escalation == Some(false) {
        options.push("--security-opt=no-new-privileges".into());
    }
    if security.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts no tmpfs of its own on a read-only root.
        options.extend(["--read-only".into(), "--read-only-tmpfs=false".into()]);
    }
    if let Some(seccomp) = &security.seccomp_profile {
        // podman's default profile is the runtime's default.
        assert_eq!(seccomp.type_, "RuntimeDefault", "seccomp profile");
    }
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    for drop in capabilities.drop.iter().flatten() {
        options.push(format!("--cap-drop={}", drop.to_lowercase()));
    }
    for add in capabilities.add.iter().flatten() {
        options.push(format!("--cap-add={add}"));
    }

    let volumes = pod.volumes.as_deref().unwrap_or_default();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|v| v.name == mount.name)
            .unwrap_or_else(|| panic!("volumeMount {} has no volume", mount.name));
        let ro = if mount.read_only == Some(true) {
            ":ro"
        } else {
            ""
        };
        if volume.config_map.is_some() {
            assert_eq!(ro, ":ro", "kubelet mounts a ConfigMap read-only");
            let dir = config_dir.expect("a ConfigMap volume for this container");
            options.push(format!(
                "--volume={}:{}:ro",
                dir.display(),
                mount.mount_path
            ));
        } else if let Some(host) = &volume.host_path {
            assert_eq!(
                host.path, "/run/xtables.lock",
                "the one host path the agent needs"
            );
            if host.type_.as_deref() == Some("FileOrCreate") && !Path::new(&host.path).exists() {
                // What kubelet does for FileOrCreate; iptables creates the
                // same file itself.
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&host.path)
                    .unwrap_or_else(|e| panic!("creating {}: {e}", host.path));
            }
            options.push(format!("--volume={}:{}{ro}", host.path, mount.mount_path));
        } else {
            panic!(
                "volume {}: only configMap and hostPath are reproduced here",
                volume.name
            );
        }
    }
    options
}

/// The port `--metrics-address` serves, from the container's `metrics` port.
fn metrics_port(ds: &DaemonSet) -> i32 {
    container(ds)
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a metrics port")
        .container_port
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running container of the image; `Drop` removes it, also on panic.
pub struct Pod {
    name: String,
    port: i32,
}

impl Pod {
    pub fn start(ds: &DaemonSet, ns: &Netns, volume: &ConfigVolume) -> Pod {
        let name = format!(
            "imqa-pod-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let args = container(ds).args.clone().unwrap_or_default();
        let out = run_bounded(
            podman()
                .args(["run", "--detach", "--pull=never", "--name", &name])
                .args(ulimits())
                .args(run_options(
                    pod_spec(ds),
                    container(ds),
                    ns,
                    Some(volume.dir()),
                ))
                .arg(TAG)
                .args(&args),
            COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "{}", describe("podman run", &out));
        Pod {
            name,
            port: metrics_port(ds),
        }
    }

    fn inspect(&self, format: &str) -> String {
        let out = run_bounded(
            podman().args(["inspect", "--format", format, &self.name]),
            COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "{}", describe("podman inspect", &out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn logs(&self) -> String {
        let out = run_bounded(podman().args(["logs", &self.name]), COMMAND_TIMEOUT);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    /// The agent's pid on the host.
    pub fn pid(&self) -> u32 {
        let pid = self.inspect("{{.State.Pid}}");
        pid.parse()
            .unwrap_or_else(|_| panic!("pid {pid:?}; logs:\n{}", self.logs()))
    }

    /// Waits until `/readyz` answers 200 in the node namespace.
    pub fn wait_ready(&self, ns: &Netns) {
        let url = format!("http://127.0.0.1:{}/readyz", self.port);
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let response = http::get(ns, &url, &[]);
            if response.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered 200 in {START_DEADLINE:?}; last: {response}\ncontainer logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGTERM, as the kubelet sends it, and the container's exit status.
    pub fn terminate(&self) -> i64 {
        let out = run_bounded(
            podman().args(["kill", "--signal=TERM", &self.name]),
            COMMAND_TIMEOUT,
        );
        assert!(out.status.success(), "{}", describe("podman kill", &out));
        let out = run_bounded(podman().args(["wait", &self.name]), COMMAND_TIMEOUT);
        assert!(out.status.success(), "{}", describe("podman wait", &out));
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        code.parse()
            .unwrap_or_else(|_| panic!("podman wait printed {code:?}"))
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Never panic here (this may run during a panic).
        match try_run_bounded(
            podman().args(["rm", "--force", "--time=0", &self.name]),
            COMMAND_TIMEOUT,
        ) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not remove container {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("could not remove container {}: {e}", self.name),
        }
    }
}

/// `Field:\tvalue` of /proc/PID/status.
fn status_field(pid: u32, field: &str) -> String {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

const RULES_HEAD: &str = r#"*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:IP-MASQ-AGENT - [0:0]
-A POSTROUTING -m comment --comment "ip-masq-agent: ensure nat POSTROUTING directs all non-LOCAL destination traffic to our custom IP-MASQ-AGENT chain" -m addrtype ! --dst-type LOCAL -j IP-MASQ-AGENT
-A IP-MASQ-AGENT -d 169.254.0.0/16 -m comment --comment "ip-masq-agent: local traffic is not subject to MASQUERADE" -j RETURN
"#;
const RULES_TAIL: &str = r#"-A IP-MASQ-AGENT -m comment --comment "ip-masq-agent: outbound traffic is subject to MASQUERADE (must be last in chain)" -j MASQUERADE --random-fully
COMMIT
"#;

fn expected_rules(cidr: &str) -> String {
    format!(
        "{RULES_HEAD}-A IP-MASQ-AGENT -d {cidr} -m comment --comment \"ip-masq-agent: local traffic is not subject to MASQUERADE\" -j RETURN\n{RULES_TAIL}"
    )
}

fn config(cidr: &str) -> String {
    format!("nonMasqueradeCIDRs:\n  - {cidr}\nmasqLinkLocal: false\nresyncInterval: 60s\n")
}

#[test]
fn the_daemonset_pod_syncs_reloads_and_stops_cleanly_in_its_node_namespace() {
    if !crate::require_podman() {
        return;
    }
    context::build();
    let ds = daemonset("base/daemonset.yaml");
    let ns = Netns::new();
    let mut volume = ConfigVolume::with(&config("198.51.100.0/24"));
    let pod = Pod::start(&ds, &ns, &volume);
    pod.wait_ready(&ns);

    // The rules are in the node namespace (nft: no hint, no legacy rules).
    let rules = save(&ns, Mode::Nft, Family::V4);
    assert_eq!(
        rules,
        expected_rules("198.51.100.0/24"),
        "logs:\n{}",
        pod.logs()
    );
    assert!(!save(&ns, Mode::Legacy, Family::V4).contains("IP-MASQ-AGENT"));

    // The kernel's view of the process: in that namespace, with NET_ADMIN
    // and NET_RAW only (bits 12 and 13), no_new_privs, and its config and
    // root read-only.
    let pid = pod.pid();
    let agent_net = std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("the agent's netns");
    let node_inode = std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .expect("the node netns")
        .ino();
    assert_eq!(agent_net.to_string_lossy(), format!("net:[{node_inode}]"));
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(status_field(pid, set), "0000000000003000", "{set}");
    }
    assert_eq!(status_field(pid, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    for mount_point in ["/", "/etc/config"] {
        let line = mountinfo
            .lines()
            .find(|l| l.split(' ').nth(4) == Some(mount_point))
            .unwrap_or_else(|| panic!("{mount_point} in mountinfo:\n{mountinfo}"));
        let options = line.split(' ').nth(5).unwrap_or_default();
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{mount_point} is not read-only: {line}"
        );
    }
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some("/run/xtables.lock")),
        "the xtables lock is mounted"
    );

    // Every metric the dashboard and the alerts read is in the agent's own
    // /metrics, except the families that appear only with their first
    // series; those must really be absent, so the list stays exact.
    let metrics = http::get(&ns, &format!("http://127.0.0.1:{}/metrics", pod.port), &[]);
    assert_eq!(metrics.status, 200, "{metrics}");
    let exported = exported_families(&metrics.body);
    for (origin, expr) in monitoring_queries() {
        for family in metric_families(&expr) {
            let lazy = FIRST_SAMPLE_FAMILIES.contains(&family.as_str());
            assert!(
                exported.contains(&family) != lazy,
                "{origin}: {family} (listed as appearing with its first sample: {lazy}) in the agent's /metrics:\n{}",
                metrics.body
            );
        }
    }

    // kubelet's atomic ..data swap reaches the agent through the read-only
    // bind mount.
    volume.update(&config("203.0.113.0/24"));
    wait_for_text(
        DEADLINE,
        "the edited ConfigMap's rules",
        || save(&ns, Mode::Nft, Family::V4),
        &expected_rules("203.0.113.0/24"),
    );

    // SIGTERM: status 0, rules left in place.
    let code = pod.terminate();
    assert_eq!(code, 0, "exit status after SIGTERM; logs:\n{}", pod.logs());
    assert_eq!(
        save(&ns, Mode::Nft, Family::V4),
        expected_rules("203.0.113.0/24")
    );
}

/// kubelet creates `KUBE-IPTABLES-HINT` in mangle with the variant it uses;
/// `--iptables-mode=auto` (the DaemonSet's default) must write there.
fn auto_mode_follows_the_hint(hint: Mode) {
    if !crate::require_podman() {
        return;
    }
    context::build();
    let ds = daemonset("base/daemonset.yaml");
    let ns = Netns::new();
    ns.run(&[
        &hint.tool(Family::V4, ""),
        "-t",
        "mangle",
        "-N",
        "KUBE-IPTABLES-HINT",
    ]);
    let volume = ConfigVolume::with(&config("198.51.100.0/24"));
    let pod = Pod::start(&ds, &ns, &volume);
    pod.wait_ready(&ns);
    let rules = wait_until(
        DEADLINE,
        &format!("rules in iptables-{hint}"),
        || save(&ns, hint, Family::V4),
        |text| text.contains(":IP-MASQ-AGENT - [0:0]"),
    );
    assert!(rules.contains("-d 198.51.100.0/24"), "{rules}");
    let other = save(&ns, hint.other(), Family::V4);
    assert!(
        !other.contains("IP-MASQ-AGENT"),
        "iptables-{} has our chain too:\n{other}\nlogs:\n{}",
        hint.other(),
        pod.logs()
    );
    assert_eq!(pod.terminate(), 0, "logs:\n{}", pod.logs());
}

#[test]
fn auto_mode_picks_legacy_on_a_node_whose_kubelet_marked_legacy() {
    auto_mode_follows_the_hint(Mode::Legacy);
}

#[test]
fn auto_mode_picks_nft_on_a_node_whose_kubelet_marked_nft() {
    auto_mode_follows_the_hint(Mode::Nft);
}

#[test]
fn the_cleanup_daemonset_removes_the_rules_the_agent_left() {
    if !crate::require_podman() {
        return;
    }
    context::build();
    let ds = daemonset("base/daemonset.yaml");
    let ns = Netns::new();
    let volume = ConfigVolume::with(&config("198.51.100.0/24"));
    let pod = Pod::start(&ds, &ns, &volume);
    pod.wait_ready(&ns);
    assert_eq!(pod.terminate(), 0, "logs:\n{}", pod.logs());
    assert_eq!(
        save(&ns, Mode::Nft, Family::V4),
        expected_rules("198.51.100.0/24")
    );

    // The cleanup DaemonSet's init container, as its pod spec runs it.
    let cleanup = daemonset("cleanup/daemonset.yaml");
    let spec = pod_spec(&cleanup);
    let init = spec.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "one init container");
    let name = format!(
        "imqa-pod-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let out = run_bounded(
        podman()
            .args(["run", "--rm", "--pull=never", "--name", &name])
            .args(ulimits())
            .args(run_options(spec, &init[0], &ns, None))
            .arg(TAG)
            .args(init[0].args.iter().flatten()),
        COMMAND_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        describe("the cleanup container", &out)
    );
    let left = save(&ns, Mode::Nft, Family::V4);
    assert!(!left.contains("IP-MASQ-AGENT"), "after cleanup:\n{left}");
    assert!(!save(&ns, Mode::Legacy, Family::V4).contains("IP-MASQ-AGENT"));
}

/// Families the agent exports only with the API source (no `--configmap`
/// in this test); every other family exists from the start, labelled
/// counters at 0, so an `increase()` over them sees the first error.
const FIRST_SAMPLE_FAMILIES: &[&str] = &[
    "ip_masq_agent_config_source_connected",
    "ip_masq_agent_config_source_last_event_timestamp_seconds",
    "ip_masq_agent_config_source_errors",
];

/// The `ip_masq_agent_*` names a PromQL expression (or an exposition line)
/// names, with the sample suffixes of counters and histograms taken off.
fn metric_families(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("ip_masq_agent_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        rest = &tail[end..];
    }
    names
}

/// The families of `# TYPE` lines of an exposition.
fn exported_families(body: &str) -> BTreeSet<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .flat_map(metric_families)
        .collect()
}

/// Every query of manifests/monitoring: the dashboard's panel targets and
/// the PrometheusRule's expressions, each with where it came from.
fn monitoring_queries() -> Vec<(String, String)> {
    let dir = repo().join("manifests/monitoring");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("grafana-dashboard.json")).expect("the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queries.push((
                format!("dashboard panel {}", panel["title"]),
                expr.to_owned(),
            ));
        }
    }
    let rule: serde_json::Value = serde_saphyr::from_str(
        &std::fs::read_to_string(dir.join("prometheusrule.yaml")).expect("the PrometheusRule"),
    )
    .expect("the PrometheusRule is YAML");
    for group in rule["spec"]["groups"].as_array().expect("groups") {
        for alert in group["rules"].as_array().expect("rules") {
            let expr = alert["expr"].as_str().expect("expr");
            queries.push((format!("alert {}", alert["alert"]), expr.to_owned()));
        }
    }
    assert!(
        queries.len() > 5,
        "the dashboard and the alerts have queries"
    );
    queries
}
