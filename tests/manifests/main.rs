//! The deployment files: `manifests/` (kustomize base, overlay, component),
//! `configmap-examples/` and the `Dockerfile`'s build context. Needs no root.
//!
//! - Rendering: `kubectl kustomize` on the base and on the overlays; every
//!   rendered object is deserialized into its k8s-openapi type (PodMonitor:
//!   `podmonitor`'s strict structs) and any field the type does not know
//!   fails the test (`typed`). The DaemonSet is then checked against what
//!   the README promises (upstream layout, privileges, probes, ports; no
//!   ServiceAccount token in the base). Without kubectl these skip with a
//!   reason, under `CI=true` they fail (`kustomize`).
//! - The kube-api overlay (`kube_api`): least-privilege RBAC in kube-system
//!   only, and the DaemonSet changed only where the component says; the
//!   kube-api-selector overlay (`kube_api_selector`): list and watch on
//!   configmaps for `--configmap-selector`, and nothing more.
//! - Sources: every kustomization and every file it lists, typed the same
//!   way without kubectl, and no YAML file under manifests/ left unused.
//! - Examples: `ip-masq-agent check` accepts every ConfigMap in
//!   configmap-examples/, with the flags of its `# check-flags:` line.
//! - The way in and out (`lifecycle`): the README's install overlay, the
//!   cleanup DaemonSet, and the monitoring rules (`promtool test rules`) and
//!   dashboard.

mod kube_api;
mod kube_api_selector;
mod kustomize;
mod lifecycle;
mod podmonitor;
mod prometheusrule;
mod typed;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use kustomize::Kustomization;
use podmonitor::PodMonitor;
use typed::Object;

const AGENT: &str = env!("CARGO_BIN_EXE_ip-masq-agent");
/// The agent's default `--config`, which the DaemonSet relies on.
const DEFAULT_CONFIG: &str = "/etc/config/ip-masq-agent";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifests() -> PathBuf {
    repo().join("manifests")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {}: {err}", path.display()))
}

/// Parse or panic with every problem found.
fn objects(text: &str, origin: &str) -> Vec<Object> {
    typed::parse_documents(text, origin).unwrap_or_else(|problems| panic!("{problems}"))
}

/// `kubectl kustomize DIR`, typed; `None` when kubectl is missing outside CI.
fn rendered(dir: &Path) -> Option<Vec<Object>> {
    let kubectl = kustomize::kubectl()?;
    let text = kustomize::render(&kubectl, dir);
    Some(objects(
        &text,
        &format!("kubectl kustomize {}", dir.display()),
    ))
}

fn only_daemonset(objects: &[Object]) -> &DaemonSet {
    let daemonsets: Vec<&DaemonSet> = objects
        .iter()
        .filter_map(|object| match object {
            Object::DaemonSet(ds) => Some(ds.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(daemonsets.len(), 1, "expected exactly one DaemonSet");
    daemonsets[0]
}

fn pod_spec(ds: &DaemonSet) -> &PodSpec {
    ds.spec.template.spec.as_ref().expect("pod template spec")
}

fn agent_container(ds: &DaemonSet) -> &Container {
    let containers = &pod_spec(ds).containers;
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// The value of `--name=value` among the container's args.
fn arg<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    let prefix = format!("--{name}=");
    container
        .args
        .iter()
        .flatten()
        .find_map(|arg| arg.strip_prefix(&prefix))
}

/// `16Mi`, `1Gi`, `64M` in bytes (the suffixes a memory quantity uses here).
fn memory_bytes(quantity: &str) -> u64 {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (number, suffix) = quantity.split_at(split);
    let number: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("memory {quantity}"));
    let unit = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("memory suffix {other:?} in {quantity}"),
    };
    number * unit
}

fn assert_all_in_kube_system(objects: &[Object]) {
    for object in objects {
        let meta = object.metadata();
        assert_eq!(
            meta.namespace.as_deref(),
            Some("kube-system"),
            "{} {:?}",
            object.kind(),
            meta.name
        );
    }
}

/// What the README's install table promises about the DaemonSet.
fn assert_daemonset_contract(ds: &DaemonSet) {
    let upstream_labels = BTreeMap::from([("k8s-app".to_owned(), "ip-masq-agent".to_owned())]);

    // Upstream's name, namespace and selector: applying is an in-place update.
    assert_eq!(ds.metadata.name.as_deref(), Some("ip-masq-agent"));
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    let spec = &ds.spec;
    assert_eq!(spec.selector.match_labels.as_ref(), Some(&upstream_labels));
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref());
    assert_eq!(template_labels, Some(&upstream_labels));
    let strategy = spec.update_strategy.as_ref().expect("updateStrategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));

    let pod = pod_spec(ds);
    assert_eq!(pod.host_network, Some(true), "hostNetwork");
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        tolerates_all,
        "a toleration for every taint (operator: Exists, no key)"
    );

    let container = agent_container(ds);
    assert_eq!(
        container.image.as_deref(),
        Some(format!("ip-masq-agent:{}", env!("CARGO_PKG_VERSION")).as_str()),
        "the image tag in manifests/base/kustomization.yaml is the crate's version"
    );

    // Not privileged: NET_ADMIN and NET_RAW only, read-only root.
    let security = container
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_ne!(security.privileged, Some(true), "privileged");
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    let capabilities = security.capabilities.as_ref().expect("capabilities");
    let mut added = capabilities.add.clone().unwrap_or_default();
    added.sort();
    assert_eq!(added, ["NET_ADMIN", "NET_RAW"]);
    assert_eq!(capabilities.drop.as_deref(), Some(&["ALL".to_owned()][..]));

    // The upstream config layout: ConfigMap ip-masq-agent, key config, at
    // the agent's default --config, optional.
    assert_eq!(
        arg(container, "config"),
        None,
        "the default --config is used"
    );
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.config_map.is_some())
        .expect("a ConfigMap volume");
    let source = volume.config_map.as_ref().unwrap();
    assert_eq!(source.name, "ip-masq-agent");
    assert_eq!(source.optional, Some(true), "the ConfigMap is optional");
    let items = source.items.as_deref().unwrap_or_default();
    assert_eq!(items.len(), 1, "one item");
    assert_eq!(items[0].key, "config");
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume.name)
        .expect("the config volume is mounted");
    assert_eq!(mount.read_only, Some(true));
    assert_eq!(
        format!("{}/{}", mount.mount_path, items[0].path),
        DEFAULT_CONFIG
    );

    // Metrics: the port named `metrics` is the one --metrics-address serves,
    // and both probes use it.
    let address = arg(container, "metrics-address").expect("--metrics-address");
    let port: i32 = address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or_else(|| panic!("--metrics-address={address}"));
    let metrics = container
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a container port named metrics");
    assert_eq!(metrics.container_port, port);
    assert_eq!(metrics.protocol.as_deref(), Some("TCP"));
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("an httpGet probe on {path}"));
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String("metrics".to_owned()));
    }

    // Resources: requests and a memory limit above them.
    let resources = container.resources.as_ref().expect("resources");
    let requests = resources.requests.as_ref().expect("requests");
    let limits = resources.limits.as_ref().expect("limits");
    assert!(requests.contains_key("cpu"), "cpu request");
    let request = memory_bytes(&requests.get("memory").expect("memory request").0);
    let limit = memory_bytes(&limits.get("memory").expect("memory limit").0);
    assert!(
        request <= limit,
        "memory request {request} above limit {limit}"
    );
}

#[test]
fn base_renders_to_typed_objects_as_the_readme_describes() {
    let Some(objects) = rendered(&manifests()) else {
        return;
    };
    let kinds: Vec<_> = objects.iter().map(Object::kind).collect();
    assert_eq!(kinds, ["DaemonSet"], "the base holds only the DaemonSet");
    assert_all_in_kube_system(&objects);
    let ds = only_daemonset(&objects);
    assert_daemonset_contract(ds);

    // Credential-free: no ServiceAccount of its own, no token mounted, no
    // API config source (the kube-api component adds those).
    let pod = pod_spec(ds);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name, None);
    assert_eq!(pod.service_account, None, "the deprecated alias too");
    let container = agent_container(ds);
    assert_eq!(arg(container, "configmap"), None);
    assert_eq!(container.env, None);
}

#[test]
fn podmonitor_overlay_renders_and_scrapes_the_metrics_port() {
    let Some(overlay) = rendered(&manifests().join("overlays/with-podmonitor")) else {
        return;
    };
    let Some(base) = rendered(&manifests()) else {
        return;
    };
    let ds = only_daemonset(&overlay);
    assert_eq!(
        ds,
        only_daemonset(&base),
        "the overlay keeps the base's DaemonSet"
    );

    let monitors: Vec<&PodMonitor> = overlay
        .iter()
        .filter_map(|object| match object {
            Object::PodMonitor(pm) => Some(pm.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(monitors.len(), 1, "one PodMonitor");
    let monitor = monitors[0];
    assert_eq!(monitor.metadata.namespace, ds.metadata.namespace);

    let pod_labels = ds.spec.template.metadata.as_ref().unwrap().labels.clone();
    let selector = monitor
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default();
    assert!(!selector.is_empty(), "the PodMonitor selects by label");
    let pod_labels = pod_labels.unwrap_or_default();
    for (key, value) in &selector {
        assert_eq!(pod_labels.get(key), Some(value), "selector {key}={value}");
    }
    let container = agent_container(ds);
    assert!(!monitor.spec.pod_metrics_endpoints.is_empty());
    for endpoint in &monitor.spec.pod_metrics_endpoints {
        let named = container
            .ports
            .iter()
            .flatten()
            .any(|p| p.name.as_deref() == Some(endpoint.port.as_str()));
        assert!(
            named,
            "PodMonitor port {} is a container port",
            endpoint.port
        );
        assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
    }
}

#[test]
fn the_daemonset_args_are_flags_the_agent_accepts() {
    let Some(objects) = rendered(&manifests()) else {
        return;
    };
    agent_accepts_args_of(
        &objects,
        &["render", "--config", "/nonexistent/ip-masq-agent"],
    );
    // The API overlay's flags parse too (`version` needs no API server).
    let Some(objects) = rendered(&manifests().join("overlays/kube-api")) else {
        return;
    };
    agent_accepts_args_of(&objects, &["version"]);
}

/// Runs the agent with the rendered DaemonSet's args, then `extra`; it must
/// succeed.
fn agent_accepts_args_of(objects: &[Object], extra: &[&str]) {
    let args = agent_container(only_daemonset(objects))
        .args
        .clone()
        .unwrap_or_default();
    let output = Command::new(AGENT)
        .args(&args)
        .args(extra)
        .output()
        .expect("running the agent");
    assert!(
        output.status.success(),
        "ip-masq-agent {args:?} {extra:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A kustomization.yaml, strictly, with its kind checked.
fn kustomization(dir: &Path) -> Kustomization {
    let path = dir.join("kustomization.yaml");
    let value: Value = serde_saphyr::from_str(&read(&path))
        .unwrap_or_else(|err| panic!("{}: not YAML: {err}", path.display()));
    let parsed: Kustomization =
        typed::strict(value).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    let expected = match parsed.kind.as_str() {
        "Kustomization" => "kustomize.config.k8s.io/v1beta1",
        "Component" => "kustomize.config.k8s.io/v1alpha1",
        other => panic!("{}: kind {other}", path.display()),
    };
    assert_eq!(parsed.api_version, expected, "{}", path.display());
    parsed
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            yaml_files(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        ) {
            out.push(path);
        }
    }
}

#[test]
fn manifest_sources_are_typed_and_all_used_without_kubectl() {
    let mut files = Vec::new();
    yaml_files(&manifests(), &mut files);
    let mut used = BTreeSet::new();
    let mut resources = 0;
    for file in &files {
        if file.file_name().and_then(|n| n.to_str()) != Some("kustomization.yaml") {
            continue;
        }
        let dir = file.parent().unwrap();
        used.insert(file.clone());
        let k = kustomization(dir);
        for entry in &k.resources {
            let path = dir.join(entry);
            if path.is_dir() {
                assert_eq!(
                    kustomization(&path).kind,
                    "Kustomization",
                    "{}",
                    path.display()
                );
            } else {
                objects(&read(&path), &path.display().to_string());
                used.insert(path.canonicalize().unwrap());
                resources += 1;
            }
        }
        for entry in &k.components {
            let path = dir.join(entry);
            assert_eq!(kustomization(&path).kind, "Component", "{}", path.display());
        }
        // Patches are partial objects, so they are not typed here; the
        // rendering tests type what they produce.
        for patch in &k.patches {
            let (text, shown) = match (&patch.path, &patch.patch) {
                (Some(entry), None) => {
                    let path = dir.join(entry);
                    used.insert(path.canonicalize().unwrap());
                    (read(&path), path.display().to_string())
                }
                (None, Some(inline)) => (inline.clone(), format!("{}: patch", file.display())),
                _ => panic!("{}: a patch needs one of path and patch", file.display()),
            };
            let value: Value = serde_saphyr::from_str(&text)
                .unwrap_or_else(|err| panic!("{shown}: not YAML: {err}"));
            // A list under a target is a JSON patch (RFC 6902).
            if let (Some(_), Value::Array(operations)) = (&patch.target, &value) {
                for operation in operations {
                    let op = operation.get("op").and_then(Value::as_str);
                    let path = operation.get("path").and_then(Value::as_str);
                    assert!(
                        matches!(
                            op,
                            Some("add" | "remove" | "replace" | "move" | "copy" | "test")
                        ) && path.is_some_and(|p| p.starts_with('/')),
                        "{shown}: not a JSON patch operation: {operation}"
                    );
                }
            }
        }
    }
    assert!(
        resources >= 4,
        "the DaemonSet, the PodMonitor, the ServiceAccount and the RBAC at least"
    );
    for file in &files {
        let canonical = file.canonicalize().unwrap();
        assert!(
            used.contains(file) || used.contains(&canonical),
            "{} is in no kustomization's resources",
            file.display()
        );
    }

    // The namespace and the release's image tag.
    let base = kustomization(&manifests().join("base"));
    assert_eq!(base.namespace.as_deref(), Some("kube-system"));
    let image = base.images.iter().find(|i| i.name == "ip-masq-agent");
    assert_eq!(
        image.and_then(|i| i.new_tag.as_deref()),
        Some(env!("CARGO_PKG_VERSION")),
        "manifests/base/kustomization.yaml images: newTag is the crate's version"
    );
}

/// The base DaemonSet with one field misspelled.
fn misspelled_daemonset() -> String {
    let text = read(&manifests().join("base/daemonset.yaml"));
    assert!(text.contains("\n      hostNetwork: true\n"));
    text.replace("\n      hostNetwork: true\n", "\n      hostNetwrok: true\n")
}

#[test]
fn a_misspelled_field_is_reported() {
    let err = typed::parse_documents(&misspelled_daemonset(), "typo.yaml").unwrap_err();
    assert!(
        err.contains("unknown field `spec.template.spec.hostNetwrok`"),
        "got: {err}"
    );
    assert!(
        err.contains("typo.yaml: document 1 (DaemonSet kube-system/ip-masq-agent)"),
        "got: {err}"
    );

    // Deeper, and in a list.
    let text =
        read(&manifests().join("base/daemonset.yaml")).replace("readinessProbe:", "readinesProbe:");
    let err = typed::parse_documents(&text, "typo.yaml").unwrap_err();
    assert!(
        err.contains("unknown field `spec.template.spec.containers.0.readinesProbe`"),
        "got: {err}"
    );

    // A wrong type is an error too.
    let text = read(&manifests().join("base/daemonset.yaml"))
        .replace("containerPort: 9557", "containerPort: nine");
    assert!(typed::parse_documents(&text, "typo.yaml").is_err());

    // The CRD, through its strict structs.
    let text = read(&manifests().join("components/podmonitor/podmonitor.yaml"))
        .replace("podMetricsEndpoints:", "podMetricEndpoints:");
    let err = typed::parse_documents(&text, "typo.yaml").unwrap_err();
    assert!(err.contains("podMetricEndpoints"), "got: {err}");

    // A kind this test has no type for.
    let err = typed::parse_documents("apiVersion: v1\nkind: Sevrice\n", "x.yaml").unwrap_err();
    assert!(err.contains("not a type this test knows"), "got: {err}");
}

#[test]
fn a_misspelled_field_survives_kustomize_and_is_reported_after_it() {
    let Some(kubectl) = kustomize::kubectl() else {
        return;
    };
    // kustomize passes unknown fields through; the typed parse must not.
    let copy = tempfile::tempdir().unwrap();
    let base = copy.path().join("base");
    std::fs::create_dir(&base).unwrap();
    std::fs::copy(
        manifests().join("base/kustomization.yaml"),
        base.join("kustomization.yaml"),
    )
    .unwrap();
    std::fs::write(base.join("daemonset.yaml"), misspelled_daemonset()).unwrap();
    let text = kustomize::render(&kubectl, &base);
    assert!(text.contains("hostNetwrok: true"));
    let err = typed::parse_documents(&text, "rendered").unwrap_err();
    assert!(
        err.contains("unknown field `spec.template.spec.hostNetwrok`"),
        "got: {err}"
    );
}

/// The flags of a `# check-flags: ...` line, if any.
fn check_flags(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# check-flags:"))
        .flat_map(|flags| flags.split_whitespace().map(str::to_owned))
        .collect()
}

fn run_check(flags: &[String], file: &Path) -> std::process::Output {
    Command::new(AGENT)
        .args(flags)
        .arg("check")
        .arg(file)
        .output()
        .expect("running ip-masq-agent check")
}

#[test]
fn configmap_examples_are_valid_configmaps_that_check_accepts() {
    let dir = repo().join("configmap-examples");
    let mut files = Vec::new();
    yaml_files(&dir, &mut files);
    files.sort();
    let names: BTreeSet<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "defaults.yaml",
        "gke.yaml",
        "vpn.yaml",
        "dual-stack.yaml",
        "cluster-only.yaml",
        "to-ports.yaml",
        "exceptions.yaml",
    ] {
        assert!(names.contains(expected), "configmap-examples/{expected}");
    }

    for file in &files {
        let text = read(file);
        let shown = file.display().to_string();

        // A ConfigMap the DaemonSet mounts: name, namespace, key.
        let objects = objects(&text, &shown);
        let [Object::ConfigMap(cm)] = objects.as_slice() else {
            panic!("{shown}: expected exactly one ConfigMap");
        };
        let cm: &ConfigMap = cm;
        assert_eq!(
            cm.metadata.name.as_deref(),
            Some("ip-masq-agent"),
            "{shown}"
        );
        assert_eq!(
            cm.metadata.namespace.as_deref(),
            Some("kube-system"),
            "{shown}"
        );
        let keys: Vec<_> = cm.data.iter().flatten().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            ["config"],
            "{shown}: data holds the key `config` only"
        );

        let flags = check_flags(&text);
        let output = run_check(&flags, file);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "ip-masq-agent {flags:?} check {shown}: {}\n{}{stdout}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.starts_with(&format!("{shown}: valid ConfigMap data.config")),
            "{stdout}"
        );

        // The marker matters: without --enable-ipv6 an IPv6 example fails.
        if flags.iter().any(|f| f == "--enable-ipv6") {
            let without: Vec<String> = flags
                .iter()
                .filter(|f| *f != "--enable-ipv6")
                .cloned()
                .collect();
            let output = run_check(&without, file);
            assert_eq!(
                output.status.code(),
                Some(1),
                "{shown} without --enable-ipv6"
            );
            assert!(String::from_utf8_lossy(&output.stderr).contains("ipv6 is not enabled"));
        }
    }
}

#[test]
fn the_dockerfile_copies_only_what_exists_and_the_context_keeps() {
    let dockerfile = read(&repo().join("Dockerfile"));
    let ignore = read(&repo().join(".dockerignore"));
    // .dockerignore is an allow-list: `*`, then `!PATH` for what the build needs.
    let lines: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"*"), ".dockerignore starts with `*`");
    let kept: BTreeSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    let mut copied = 0;
    for line in dockerfile.lines() {
        let Some(rest) = line.strip_prefix("COPY ") else {
            continue;
        };
        if rest.starts_with("--from=") {
            continue;
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(repo().join(source).exists(), "COPY {source}: no such path");
            assert!(
                kept.contains(source),
                "COPY {source}: excluded by .dockerignore"
            );
            copied += 1;
        }
    }
    assert!(copied > 0, "the Dockerfile copies the sources");
    for kept in &kept {
        assert!(
            repo().join(kept).exists(),
            ".dockerignore keeps {kept}: no such path"
        );
    }
}
