//! The kube-api overlay (`manifests/overlays/kube-api`, built from
//! `manifests/components/kube-api`): the agent reads its ConfigMap through
//! the Kubernetes API and writes Events, with the least RBAC for that and
//! nothing outside kube-system.
//!
//! The checks are functions that return what is wrong (`rbac_problems`,
//! `daemonset_problems`), so the negative cases below can show that each
//! one catches what it is for: a wildcard verb, a ClusterRole, a dropped
//! `resourceNames`, a lost base arg, a wrong `fieldPath`. What the overlay
//! must hold is written out here as literal text, not read from the
//! component.

use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::EnvVar;
use k8s_openapi::api::rbac::v1::PolicyRule;

use crate::typed::{self, Object};
use crate::{
    agent_container, kustomize, manifests, objects, only_daemonset, pod_spec, read, rendered,
};

/// The Role's rules, one line each, sorted (see `rule_text`):
/// - the ConfigMap: get, and list/watch, which RBAC authorizes against
///   `resourceNames` only when the request carries the field selector
///   `metadata.name=ip-masq-agent` (the agent's watch does);
/// - Events through events.k8s.io only, create and patch: what
///   kube-runtime's Recorder sends (POST, then a merge PATCH for a repeat).
const RULES: [&str; 2] = [
    r#"apiGroups [""] resources [configmaps] resourceNames [ip-masq-agent] verbs [get list watch]"#,
    "apiGroups [events.k8s.io] resources [events] verbs [create patch]",
];

/// The agent container's environment: its identity, from the downward API.
const ENV: [&str; 4] = [
    "NODE_NAME from fieldRef spec.nodeName",
    "POD_NAME from fieldRef metadata.name",
    "POD_NAMESPACE from fieldRef metadata.namespace",
    "POD_UID from fieldRef metadata.uid",
];

const CONFIGMAP_ARG: &str = "--configmap=kube-system/ip-masq-agent";

pub fn component() -> PathBuf {
    manifests().join("components/kube-api")
}

/// `apiGroups [..] resources [..] resourceNames [..] verbs [..]`, each list
/// sorted, empty lists left out, the core group shown as `""`.
pub fn rule_text(rule: &PolicyRule) -> String {
    let fields = [
        ("apiGroups", rule.api_groups.clone()),
        ("resources", rule.resources.clone()),
        ("resourceNames", rule.resource_names.clone()),
        ("nonResourceURLs", rule.non_resource_urls.clone()),
        ("verbs", Some(rule.verbs.clone())),
    ];
    let mut parts = Vec::new();
    for (name, values) in fields {
        let mut values = values.unwrap_or_default();
        if values.is_empty() {
            continue;
        }
        values.sort();
        let shown: Vec<String> = values
            .iter()
            .map(|v| {
                if v.is_empty() {
                    r#""""#.to_owned()
                } else {
                    v.clone()
                }
            })
            .collect();
        parts.push(format!("{name} [{}]", shown.join(" ")));
    }
    parts.join(" ")
}

pub fn has_wildcard(rule: &PolicyRule) -> bool {
    [
        &rule.api_groups,
        &rule.resources,
        &rule.resource_names,
        &rule.non_resource_urls,
    ]
    .into_iter()
    .flatten()
    .chain(std::iter::once(&rule.verbs))
    .flatten()
    .any(|value| value.contains('*'))
}

/// `namespace/name` of an object's metadata, `?` for what is missing.
pub fn id(object: &Object) -> String {
    let meta = object.metadata();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("?"),
        meta.name.as_deref().unwrap_or("?")
    )
}

/// Everything wrong with the RBAC among `objects`; empty when it is exactly
/// one ServiceAccount, one Role with `RULES` and one RoleBinding joining
/// them, all `kube-system/ip-masq-agent`, and nothing cluster-wide.
pub fn rbac_problems(objects: &[Object]) -> Vec<String> {
    let expected_id = "kube-system/ip-masq-agent";
    let mut problems = Vec::new();
    let of_kind =
        |kind: &str| -> Vec<&Object> { objects.iter().filter(|o| o.kind() == kind).collect() };

    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        for object in of_kind(kind) {
            problems.push(format!(
                "{kind} {}: nothing cluster-wide, a Role in kube-system is enough",
                id(object)
            ));
        }
    }

    for kind in ["ServiceAccount", "Role", "RoleBinding"] {
        let ids: Vec<String> = of_kind(kind).into_iter().map(id).collect();
        if ids != [expected_id] {
            problems.push(format!("{kind}s are {ids:?}, expected [{expected_id:?}]"));
        }
    }

    for object in objects {
        match object {
            Object::Role(role) => {
                let rules = role.rules.as_deref().unwrap_or_default();
                for rule in rules.iter().filter(|r| has_wildcard(r)) {
                    problems.push(format!(
                        "Role {}: wildcard in rule `{}`",
                        id(object),
                        rule_text(rule)
                    ));
                }
                let mut texts: Vec<String> = rules.iter().map(rule_text).collect();
                texts.sort();
                if texts != RULES {
                    problems.push(format!(
                        "Role {} rules are\n  {}\nexpected\n  {}",
                        id(object),
                        texts.join("\n  "),
                        RULES.join("\n  ")
                    ));
                }
            }
            Object::RoleBinding(binding) => {
                let role_ref = &binding.role_ref;
                let shown = format!(
                    "{} {} {}",
                    role_ref.api_group.as_deref().unwrap_or("?"),
                    role_ref.kind,
                    role_ref.name
                );
                if shown != "rbac.authorization.k8s.io Role ip-masq-agent" {
                    problems.push(format!("RoleBinding {} roleRef is {shown}", id(object)));
                }
                let subjects: Vec<String> = binding
                    .subjects
                    .iter()
                    .flatten()
                    .map(|s| {
                        format!(
                            "{} {}/{}",
                            s.kind,
                            s.namespace.as_deref().unwrap_or("?"),
                            s.name
                        )
                    })
                    .collect();
                if subjects != ["ServiceAccount kube-system/ip-masq-agent"] {
                    problems.push(format!(
                        "RoleBinding {} subjects are {subjects:?}, expected the \
                         ServiceAccount kube-system/ip-masq-agent only",
                        id(object)
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// `NAME from fieldRef PATH`, or what else the variable is.
fn env_text(var: &EnvVar) -> String {
    let field = var.value_from.as_ref().and_then(|from| {
        let only_field_ref = from.config_map_key_ref.is_none()
            && from.secret_key_ref.is_none()
            && from.resource_field_ref.is_none()
            && from.file_key_ref.is_none();
        let field_ref = from.field_ref.as_ref()?;
        let v1 = matches!(field_ref.api_version.as_deref(), None | Some("v1"));
        (only_field_ref && v1).then_some(&field_ref.field_path)
    });
    match (&var.value, field) {
        (None, Some(path)) => format!("{} from fieldRef {path}", var.name),
        _ => format!("{} is {:?}", var.name, var),
    }
}

/// Everything wrong with the overlay's DaemonSet `ds`, compared with the
/// base's: it must run as the ServiceAccount with its token, carry `ENV`,
/// the base args plus `CONFIGMAP_ARG` once, no config volume or mount, and
/// be the base's DaemonSet in every other field.
pub fn daemonset_problems(ds: &DaemonSet, base: &DaemonSet) -> Vec<String> {
    let mut problems = Vec::new();
    let pod = pod_spec(ds);
    let base_pod = pod_spec(base);
    let container = agent_container(ds);
    let base_container = agent_container(base);

    if pod.service_account_name.as_deref() != Some("ip-masq-agent") {
        problems.push(format!(
            "serviceAccountName is {:?}, expected ip-masq-agent",
            pod.service_account_name
        ));
    }
    if pod.service_account.is_some() {
        problems.push("the deprecated serviceAccount is set".to_owned());
    }
    if pod.automount_service_account_token != Some(true) {
        problems.push(format!(
            "automountServiceAccountToken is {:?}: the ServiceAccount does not \
             mount its token, the pod must ask for it",
            pod.automount_service_account_token
        ));
    }

    let env: Vec<String> = container.env.iter().flatten().map(env_text).collect();
    if env != ENV {
        problems.push(format!("env is {env:?}, expected {ENV:?}"));
    }

    let args = container.args.clone().unwrap_or_default();
    let base_args = base_container.args.clone().unwrap_or_default();
    for arg in &base_args {
        if !args.contains(arg) {
            problems.push(format!("the base arg {arg} is gone"));
        }
    }
    let configmap_args: Vec<&String> = args
        .iter()
        .filter(|a| a.starts_with("--configmap=") || *a == "--configmap")
        .collect();
    if configmap_args != [CONFIGMAP_ARG] {
        problems.push(format!(
            "--configmap args are {configmap_args:?}, expected {CONFIGMAP_ARG} once"
        ));
    }
    let mut expected_args = base_args.clone();
    expected_args.push(CONFIGMAP_ARG.to_owned());
    if args != expected_args {
        problems.push(format!("args are {args:?}, expected {expected_args:?}"));
    }

    // The config volume and its mount go; everything else stays.
    let mut kept_volumes = base_pod.volumes.clone().unwrap_or_default();
    kept_volumes.retain(|v| v.config_map.is_none());
    if pod.volumes.clone().unwrap_or_default() != kept_volumes {
        problems.push(format!(
            "volumes are {:?}, expected the base's without the ConfigMap volume",
            pod.volumes
        ));
    }
    let mut kept_mounts = base_container.volume_mounts.clone().unwrap_or_default();
    kept_mounts.retain(|m| m.mount_path != "/etc/config");
    if container.volume_mounts.clone().unwrap_or_default() != kept_mounts {
        problems.push(format!(
            "volumeMounts are {:?}, expected the base's without /etc/config",
            container.volume_mounts
        ));
    }

    // With the fields above put back as the base has them, nothing differs.
    let mut reverted = ds.clone();
    let pod = reverted.spec.template.spec.as_mut().unwrap();
    pod.service_account_name = base_pod.service_account_name.clone();
    pod.service_account = base_pod.service_account.clone();
    pod.automount_service_account_token = base_pod.automount_service_account_token;
    pod.volumes = base_pod.volumes.clone();
    if let Some(container) = pod.containers.first_mut() {
        container.env = base_container.env.clone();
        container.args = base_container.args.clone();
        container.volume_mounts = base_container.volume_mounts.clone();
    }
    if &reverted != base {
        problems.push(format!(
            "the DaemonSet differs from the base beyond what the component changes:\n\
             {reverted:#?}\nbase:\n{base:#?}"
        ));
    }
    problems
}

pub fn assert_none(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The component's RBAC sources with `from` replaced by `to` (each `from`
/// must occur exactly once), parsed and checked.
fn rbac_problems_with(replacements: &[(&str, &str)]) -> Vec<String> {
    let mut rbac = read(&component().join("rbac.yaml"));
    for (from, to) in replacements {
        assert_eq!(rbac.matches(from).count(), 1, "{from:?} in rbac.yaml");
        rbac = rbac.replace(from, to);
    }
    let mut all = objects(&read(&component().join("serviceaccount.yaml")), "sa");
    all.extend(
        typed::parse_documents(&rbac, "rbac.yaml (changed)")
            .unwrap_or_else(|problems| panic!("{problems}")),
    );
    rbac_problems(&all)
}

#[test]
fn kube_api_overlay_adds_least_privilege_rbac_and_the_api_source() {
    let Some(overlay) = rendered(&manifests().join("overlays/kube-api")) else {
        return;
    };
    let Some(base) = rendered(&manifests()) else {
        return;
    };
    let mut kinds: Vec<_> = overlay.iter().map(Object::kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["DaemonSet", "Role", "RoleBinding", "ServiceAccount"],
        "the base's DaemonSet plus the component's objects"
    );
    crate::assert_all_in_kube_system(&overlay);
    assert_none(rbac_problems(&overlay));
    assert_none(daemonset_problems(
        only_daemonset(&overlay),
        only_daemonset(&base),
    ));

    // Tokens only where asked for: the ServiceAccount does not mount them.
    let account = overlay.iter().find_map(|o| match o {
        Object::ServiceAccount(sa) => Some(sa),
        _ => None,
    });
    assert_eq!(
        account.and_then(|sa| sa.automount_service_account_token),
        Some(false)
    );
}

/// `to` relative to the directory `from`: kustomize takes no absolute
/// paths.
fn relative(from: &Path, to: &Path) -> PathBuf {
    let from = from.canonicalize().unwrap();
    let to = to.canonicalize().unwrap();
    let mut path: PathBuf = std::iter::repeat_n("..", from.components().count() - 1).collect();
    path.push(to.strip_prefix("/").unwrap());
    path
}

#[test]
fn kube_api_and_podmonitor_components_compose_in_either_order() {
    let Some(kubectl) = kustomize::kubectl() else {
        return;
    };
    let Some(overlay) = rendered(&manifests().join("overlays/kube-api")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| {
        relative(dir.path(), &manifests().join(p))
            .display()
            .to_string()
    };
    let orders = [
        ["components/kube-api", "components/podmonitor"],
        ["components/podmonitor", "components/kube-api"],
    ];
    for order in orders {
        let text = format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n\
             resources:\n  - {}\ncomponents:\n  - {}\n  - {}\n",
            path("base"),
            path(order[0]),
            path(order[1])
        );
        std::fs::write(dir.path().join("kustomization.yaml"), text).unwrap();
        let rendered = kustomize::render(&kubectl, dir.path());
        let composed = objects(&rendered, &format!("components {order:?}"));
        let mut kinds: Vec<_> = composed.iter().map(Object::kind).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "DaemonSet",
                "PodMonitor",
                "Role",
                "RoleBinding",
                "ServiceAccount"
            ],
            "{order:?}"
        );
        assert_none(rbac_problems(&composed));
        assert_eq!(
            only_daemonset(&composed),
            only_daemonset(&overlay),
            "{order:?}: the PodMonitor changes nothing in the DaemonSet"
        );
    }
}

#[test]
fn kube_api_sources_pass_the_rbac_check_without_kubectl() {
    assert_none(rbac_problems_with(&[]));
}

#[test]
fn rbac_check_rejects_a_wildcard_verb() {
    let problems = rbac_problems_with(&[("verbs: [create, patch]", r#"verbs: ["*"]"#)]);
    assert!(
        problems.iter().any(|p| p.contains("wildcard in rule")),
        "{problems:?}"
    );
}

#[test]
fn rbac_check_rejects_a_wildcard_resource() {
    let problems = rbac_problems_with(&[("resources: [events]", r#"resources: ["*"]"#)]);
    assert!(
        problems.iter().any(|p| p.contains("wildcard in rule")),
        "{problems:?}"
    );
}

#[test]
fn rbac_check_rejects_a_cluster_role() {
    let problems = rbac_problems_with(&[
        ("\nkind: Role\n", "\nkind: ClusterRole\n"),
        ("  kind: Role\n", "  kind: ClusterRole\n"),
    ]);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("ClusterRole kube-system/ip-masq-agent: nothing cluster-wide")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("roleRef is")),
        "{problems:?}"
    );
}

#[test]
fn rbac_check_rejects_a_cluster_role_binding() {
    let problems = rbac_problems_with(&[("kind: RoleBinding\n", "kind: ClusterRoleBinding\n")]);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("ClusterRoleBinding kube-system/ip-masq-agent")),
        "{problems:?}"
    );
}

#[test]
fn rbac_check_rejects_reading_every_configmap() {
    // Without resourceNames the agent could read every ConfigMap in
    // kube-system.
    let problems = rbac_problems_with(&[("    resourceNames: [ip-masq-agent]\n", "")]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("apiGroups [\"\"] resources [configmaps] verbs [get list watch]")),
        "{problems:?}"
    );
}

#[test]
fn rbac_check_rejects_verbs_and_groups_the_recorder_does_not_use() {
    for (from, to) in [
        ("verbs: [create, patch]", "verbs: [create, patch, update]"),
        ("verbs: [create, patch]", "verbs: [create, patch, delete]"),
        (
            "apiGroups: [events.k8s.io]",
            r#"apiGroups: ["", events.k8s.io]"#,
        ),
        (
            "verbs: [get, list, watch]",
            "verbs: [get, list, watch, update]",
        ),
    ] {
        let problems = rbac_problems_with(&[(from, to)]);
        assert!(
            problems.iter().any(|p| p.contains("rules are")),
            "{to}: {problems:?}"
        );
    }
}

#[test]
fn rbac_check_rejects_another_namespace() {
    let problems = rbac_problems_with(&[(
        "kind: Role\nmetadata:\n  name: ip-masq-agent\n  namespace: kube-system\n",
        "kind: Role\nmetadata:\n  name: ip-masq-agent\n  namespace: default\n",
    )]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(r#"Roles are ["default/ip-masq-agent"]"#)),
        "{problems:?}"
    );

    let problems =
        rbac_problems_with(&[("    namespace: kube-system\n", "    namespace: default\n")]);
    assert!(
        problems.iter().any(|p| p.contains("subjects are")),
        "{problems:?}"
    );
}

#[test]
fn daemonset_check_rejects_what_the_component_must_not_do() {
    let Some(overlay) = rendered(&manifests().join("overlays/kube-api")) else {
        return;
    };
    let Some(base) = rendered(&manifests()) else {
        return;
    };
    let good = only_daemonset(&overlay);
    let base = only_daemonset(&base);

    type Change = fn(&mut DaemonSet);
    let cases: [(&str, Change, &str); 8] = [
        (
            "the args replaced instead of appended to",
            |ds| container(ds).args = Some(vec![CONFIGMAP_ARG.to_owned()]),
            "the base arg --masq-chain=IP-MASQ-AGENT is gone",
        ),
        (
            "the arg twice",
            |ds| {
                let args = container(ds).args.as_mut().unwrap();
                args.push(CONFIGMAP_ARG.to_owned());
            },
            "expected --configmap=kube-system/ip-masq-agent once",
        ),
        (
            "no token",
            |ds| pod(ds).automount_service_account_token = None,
            "automountServiceAccountToken is None",
        ),
        (
            "the default ServiceAccount",
            |ds| pod(ds).service_account_name = None,
            "serviceAccountName is None",
        ),
        (
            "a wrong fieldPath",
            |ds| {
                let env = container(ds).env.as_mut().unwrap();
                let field = env[1].value_from.as_mut().unwrap().field_ref.as_mut();
                field.unwrap().field_path = "metadata.uid".to_owned();
            },
            "POD_NAME from fieldRef metadata.uid",
        ),
        (
            "a literal value instead of the downward API",
            |ds| {
                let env = container(ds).env.as_mut().unwrap();
                env[0].value_from = None;
                env[0].value = Some("node-1".to_owned());
            },
            "env is",
        ),
        (
            "the xtables lock dropped with the config volume",
            |ds| pod(ds).volumes = Some(Vec::new()),
            "volumes are",
        ),
        (
            "another change",
            |ds| pod(ds).host_network = Some(false),
            "differs from the base beyond what the component changes",
        ),
    ];
    assert_none(daemonset_problems(good, base));
    for (what, change, expected) in cases {
        let mut ds = good.clone();
        change(&mut ds);
        let problems = daemonset_problems(&ds, base);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{what}: expected a problem containing {expected:?}, got {problems:#?}"
        );
    }
}

fn pod(ds: &mut DaemonSet) -> &mut k8s_openapi::api::core::v1::PodSpec {
    ds.spec.template.spec.as_mut().unwrap()
}

fn container(ds: &mut DaemonSet) -> &mut k8s_openapi::api::core::v1::Container {
    &mut pod(ds).containers[0]
}
