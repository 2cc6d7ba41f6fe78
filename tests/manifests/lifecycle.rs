//! The way in, through and out, as the README tells an operator: the install
//! overlay of its recipe, the monitoring rules and dashboard, and the
//! cleanup DaemonSet for decommissioning.
//!
//! - The install recipe is read from README.md itself (the heredoc of its
//!   Install block), written next to a copy of `manifests/` as a fresh clone
//!   has it, and rendered with `kubectl kustomize`: the image it names must
//!   reach the DaemonSet.
//! - The PrometheusRule's `spec` is a Prometheus rule file: `promtool check
//!   rules` and `promtool test rules` with testdata/alerts-test.yaml, which
//!   must test every alert. Without promtool these skip outside CI and fail
//!   under `CI=true`.
//! - The dashboard is JSON whose every query names only metrics the README
//!   documents (tests/image checks them against the image's own /metrics).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use serde_json::Value;

use crate::typed::Object;
use crate::{
    AGENT, agent_container, kustomize, manifests, objects, only_daemonset, pod_spec, read,
    rendered, repo,
};

/// The README's `## Install` section.
fn install_section() -> String {
    let readme = read(&repo().join("README.md"));
    let start = readme
        .find("\n## Install\n")
        .expect("README has an ## Install section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_owned()
}

/// The first `cat > DIR/kustomization.yaml <<'EOF' ... EOF` of the section:
/// the directory and the file's text.
fn recipe_overlay(section: &str) -> (String, String) {
    let marker = "/kustomization.yaml <<'EOF'\n";
    let at = section
        .find(marker)
        .expect("the Install recipe writes an overlay with a heredoc");
    let line_start = section[..at].rfind('\n').map_or(0, |i| i + 1);
    let command = &section[line_start..at];
    let dir = command.rsplit(' ').next().expect("cat > DIR").to_owned();
    let body_start = at + marker.len();
    let body_len = section[body_start..]
        .find("\nEOF\n")
        .expect("the heredoc ends with EOF");
    (
        dir,
        section[body_start..body_start + body_len + 1].to_owned(),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_readme_install_overlay_sets_the_image_with_plain_kubectl() {
    let Some(kubectl) = kustomize::kubectl() else {
        return;
    };
    let section = install_section();
    assert!(
        !section.contains("kustomize edit"),
        "the recipe needs no standalone kustomize"
    );
    let (dir, overlay) = recipe_overlay(&section);
    assert!(
        section.contains(&format!("kubectl apply -k {dir}")),
        "the recipe applies its overlay with kubectl"
    );

    // As in a fresh clone: the overlay beside manifests/.
    let clone = tempfile::tempdir().unwrap();
    copy_tree(&manifests(), &clone.path().join("manifests"));
    let overlay_dir = clone.path().join(&dir);
    std::fs::create_dir_all(&overlay_dir).unwrap();
    std::fs::write(overlay_dir.join("kustomization.yaml"), &overlay).unwrap();
    let parsed = crate::kustomization(&overlay_dir);
    let image = parsed
        .images
        .iter()
        .find(|i| i.name == "ip-masq-agent")
        .expect("images: ip-masq-agent");
    let expected = format!(
        "{}:{}",
        image.new_name.as_deref().expect("newName: your registry"),
        image.new_tag.as_deref().expect("newTag")
    );
    assert_eq!(
        image.new_tag.as_deref(),
        Some(env!("CARGO_PKG_VERSION")),
        "the recipe names this release"
    );
    assert!(
        parsed
            .resources
            .iter()
            .any(|r| r.starts_with("../manifests/overlays/")),
        "the overlay builds on manifests/overlays/…: {:?}",
        parsed.resources
    );

    let text = kustomize::render(&kubectl, &overlay_dir);
    let objects = objects(&text, &format!("kubectl kustomize {dir}"));
    let ds = only_daemonset(&objects);
    assert_eq!(
        agent_container(ds).image.as_deref(),
        Some(expected.as_str())
    );
    let base = rendered(&manifests().join("overlays/default")).expect("kubectl is there");
    let mut without_image = ds.clone();
    without_image
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers[0]
        .image = agent_container(only_daemonset(&base)).image.clone();
    assert_eq!(
        &without_image,
        only_daemonset(&base),
        "the overlay changes only the image"
    );
}

#[test]
fn the_cleanup_daemonset_runs_cleanup_everywhere_with_the_agents_privileges() {
    let Some(cleanup) = rendered(&manifests().join("cleanup")) else {
        return;
    };
    let Some(agent) = rendered(&manifests()) else {
        return;
    };
    let kinds: Vec<_> = cleanup.iter().map(Object::kind).collect();
    assert_eq!(kinds, ["DaemonSet"]);
    let ds: &DaemonSet = only_daemonset(&cleanup);
    let agent_ds = only_daemonset(&agent);
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
    assert_eq!(ds.metadata.name.as_deref(), Some("ip-masq-agent-cleanup"));
    // Its own selector: it must never adopt the agent's pods.
    assert_ne!(ds.spec.selector, agent_ds.spec.selector);

    let pod = pod_spec(ds);
    let agent_pod = pod_spec(agent_ds);
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        pod.tolerations, agent_pod.tolerations,
        "every node, as the agent"
    );
    assert_eq!(pod.node_selector, agent_pod.node_selector);
    assert_eq!(pod.automount_service_account_token, Some(false));

    let init = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1, "one init container runs cleanup");
    let agent_container = agent_container(agent_ds);
    assert_eq!(init[0].image, agent_container.image, "the agent's image");
    assert_eq!(
        init[0].security_context, agent_container.security_context,
        "the agent's security context"
    );
    let args = init[0].args.clone().unwrap_or_default();
    assert_eq!(args.last().map(String::as_str), Some("cleanup"));
    assert_eq!(
        crate::arg(&init[0], "masq-chain"),
        crate::arg(agent_container, "masq-chain")
    );
    let lock = |mounts: &Option<Vec<_>>| {
        mounts
            .iter()
            .flatten()
            .map(|m: &k8s_openapi::api::core::v1::VolumeMount| m.mount_path.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(lock(&init[0].volume_mounts), ["/run/xtables.lock"]);

    // The flags parse (`version` instead of `cleanup`, which needs root).
    let flags = &args[..args.len() - 1];
    let output = Command::new(AGENT)
        .args(flags)
        .arg("version")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{flags:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The idle container holds nothing: no capabilities, not root.
    assert_eq!(pod.containers.len(), 1);
    let idle = pod.containers[0]
        .security_context
        .as_ref()
        .expect("securityContext");
    assert_eq!(idle.capabilities.as_ref().and_then(|c| c.add.clone()), None);
    assert_eq!(idle.run_as_non_root, Some(true));
    assert_eq!(idle.allow_privilege_escalation, Some(false));
}

/// `promtool` on PATH, or `None` outside CI (after saying why).
fn promtool() -> Option<String> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("promtool".into());
    }
    let reason =
        "promtool not found (Debian package prometheus; scripts/install-deps.sh installs it)";
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{reason}; under CI=true this check must run");
    }
    eprintln!("skipped: {reason}");
    None
}

fn prometheus_rule() -> crate::prometheusrule::PrometheusRule {
    let path = manifests().join("monitoring/prometheusrule.yaml");
    let mut parsed = objects(&read(&path), &path.display().to_string());
    assert_eq!(parsed.len(), 1, "one object");
    match parsed.remove(0) {
        Object::PrometheusRule(rule) => *rule,
        other => panic!("expected a PrometheusRule, got {}", other.kind()),
    }
}

#[test]
fn the_alerts_pass_promtool_against_recorded_series() {
    let rule = prometheus_rule();
    assert_eq!(rule.metadata.namespace.as_deref(), Some("kube-system"));
    let tests = read(&repo().join("tests/manifests/testdata/alerts-test.yaml"));
    for group in &rule.spec.groups {
        for alert in &group.rules {
            assert!(
                tests.contains(&format!("alertname: {}\n", alert.alert)),
                "{} has no promtool test",
                alert.alert
            );
            assert!(
                alert.labels.contains_key("severity"),
                "{}: severity label",
                alert.alert
            );
            assert!(
                alert.annotations.contains_key("summary"),
                "{}: summary",
                alert.alert
            );
        }
    }
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.json"),
        serde_json::to_string_pretty(&rule.spec).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("test.yaml"),
        format!("rule_files:\n  - rules.json\n{tests}"),
    )
    .unwrap();
    for args in [
        &["check", "rules", "rules.json"][..],
        &["test", "rules", "test.yaml"][..],
    ] {
        let output = Command::new(&promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The `ip_masq_agent_*` names a PromQL expression reads, with the suffixes
/// of a counter's or histogram's samples taken off (the family's name).
pub fn metric_families(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(found) = expr[i..].find("ip_masq_agent_") {
        let start = i + found;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let family = ["_total", "_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        names.insert(family.to_owned());
        i = end;
    }
    names
}

/// Every `expr` of the dashboard's panels.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty(), "the dashboard has panels");
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().expect("every panel has a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("a numeric id")),
            "{title}: duplicate id"
        );
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: targets"));
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                !metric_families(expr).is_empty(),
                "{title}: {expr} reads no agent metric"
            );
            assert_eq!(
                target["datasource"]["uid"], "${datasource}",
                "{title}: the datasource variable"
            );
            queries.push(expr.to_owned());
        }
    }
    queries
}

#[test]
fn the_dashboard_is_json_whose_queries_read_documented_metrics() {
    let text = read(&manifests().join("monitoring/grafana-dashboard.json"));
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "ip-masq-agent");
    let readme = read(&repo().join("README.md"));
    let documented = metric_families(&readme);
    let rule = prometheus_rule();
    let alert_exprs = rule
        .spec
        .groups
        .iter()
        .flat_map(|g| g.rules.iter().map(|r| r.expr.clone()));
    for expr in dashboard_queries(&dashboard).into_iter().chain(alert_exprs) {
        for family in metric_families(&expr) {
            assert!(
                documented.contains(&family),
                "{family} (in {expr}) is not in the README's Metrics table"
            );
        }
    }

    // The ConfigMap Grafana's sidecar loads carries the file as it is, under
    // a name that does not change with its content.
    let kustomization = crate::kustomization(&manifests().join("monitoring"));
    let generator = kustomization
        .config_map_generator
        .iter()
        .find(|g| g.name == "ip-masq-agent-dashboard")
        .expect("the dashboard's configMapGenerator");
    assert_eq!(generator.files, ["grafana-dashboard.json"]);
    let options = generator.options.as_ref().expect("generator options");
    assert_eq!(options.disable_name_suffix_hash, Some(true));
    let Some(objects) = rendered(&manifests().join("monitoring")) else {
        return;
    };
    let configmap = objects
        .iter()
        .find_map(|o| match o {
            Object::ConfigMap(cm) => Some(cm),
            _ => None,
        })
        .expect("the dashboard's ConfigMap");
    let labels = configmap.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        labels.get("grafana_dashboard").map(String::as_str),
        Some("1")
    );
    let data = configmap.data.clone().unwrap_or_default();
    assert_eq!(data.get("grafana-dashboard.json"), Some(&text));
}
