//! The kube-api-selector component (`manifests/components/kube-api-selector`,
//! rendered in `manifests/overlays/kube-api-selector`): on top of kube-api,
//! the RBAC a label selector needs and no more (list and watch on
//! configmaps of kube-system, which resourceNames cannot narrow for a
//! label-selector list), and the `--configmap-selector` arg. kube-api's own
//! objects stay exactly as that component makes them.
//!
//! As in `kube_api`, the checks return what is wrong, and the negative
//! cases show each one catching what it is for; the expected rule is
//! literal text here.

use std::path::PathBuf;

use crate::kube_api::{assert_none, has_wildcard, id, rbac_problems, rule_text};
use crate::typed::{self, Object};
use crate::{agent_container, manifests, objects, only_daemonset, read, rendered};

/// The selector Role's one rule: no get, no resourceNames, no writes.
const RULE: &str = r#"apiGroups [""] resources [configmaps] verbs [list watch]"#;
const NAME: &str = "kube-system/ip-masq-agent-selector";
const SELECTOR_ARG: &str = "--configmap-selector=kube-system/ip-masq-agent/fragment";

fn component() -> PathBuf {
    manifests().join("components/kube-api-selector")
}

/// Everything wrong with the selector's RBAC among `objects` (kube-api's
/// objects are checked by `rbac_problems`): exactly one Role and one
/// RoleBinding `kube-system/ip-masq-agent-selector`, the Role holding
/// `RULE`, bound to kube-api's ServiceAccount, nothing cluster-wide.
fn selector_rbac_problems(objects: &[Object]) -> Vec<String> {
    let mut problems = Vec::new();
    for object in objects {
        match object {
            Object::ClusterRole(_) | Object::ClusterRoleBinding(_) => problems.push(format!(
                "{} {}: nothing cluster-wide, a Role in kube-system is enough",
                object.kind(),
                id(object)
            )),
            Object::Role(role) => {
                if id(object) != NAME {
                    problems.push(format!("Role {} is not {NAME}", id(object)));
                }
                let rules = role.rules.as_deref().unwrap_or_default();
                for rule in rules.iter().filter(|r| has_wildcard(r)) {
                    problems.push(format!(
                        "Role {}: wildcard in rule `{}`",
                        id(object),
                        rule_text(rule)
                    ));
                }
                let texts: Vec<String> = rules.iter().map(rule_text).collect();
                if texts != [RULE] {
                    problems.push(format!(
                        "Role {} rules are {texts:?}, expected [{RULE}]",
                        id(object)
                    ));
                }
            }
            Object::RoleBinding(binding) => {
                if id(object) != NAME {
                    problems.push(format!("RoleBinding {} is not {NAME}", id(object)));
                }
                let role_ref = &binding.role_ref;
                let shown = format!(
                    "{} {} {}",
                    role_ref.api_group.as_deref().unwrap_or("?"),
                    role_ref.kind,
                    role_ref.name
                );
                if shown != "rbac.authorization.k8s.io Role ip-masq-agent-selector" {
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
                        "RoleBinding {} subjects are {subjects:?}",
                        id(object)
                    ));
                }
            }
            other => problems.push(format!("{} {}: not RBAC", other.kind(), id(other))),
        }
    }
    let count = |kind: &str| objects.iter().filter(|o| o.kind() == kind).count();
    if count("Role") != 1 || count("RoleBinding") != 1 {
        problems.push(format!(
            "{} Roles and {} RoleBindings, expected one of each",
            count("Role"),
            count("RoleBinding")
        ));
    }
    problems
}

/// The component's rbac.yaml with `from` replaced by `to` (each `from`
/// exactly once), parsed and checked.
fn problems_with(replacements: &[(&str, &str)]) -> Vec<String> {
    let mut rbac = read(&component().join("rbac.yaml"));
    for (from, to) in replacements {
        assert_eq!(rbac.matches(from).count(), 1, "{from:?} in rbac.yaml");
        rbac = rbac.replace(from, to);
    }
    let parsed = typed::parse_documents(&rbac, "rbac.yaml (changed)")
        .unwrap_or_else(|problems| panic!("{problems}"));
    selector_rbac_problems(&parsed)
}

#[test]
fn the_selector_overlay_adds_list_and_watch_and_the_arg_only() {
    let Some(overlay) = rendered(&manifests().join("overlays/kube-api-selector")) else {
        return;
    };
    let Some(kube_api) = rendered(&manifests().join("overlays/kube-api")) else {
        return;
    };
    crate::assert_all_in_kube_system(&overlay);
    let (selector, rest): (Vec<Object>, Vec<Object>) =
        overlay.into_iter().partition(|o| id(o) == NAME);
    assert_none(selector_rbac_problems(&selector));
    // kube-api's objects are as that component alone makes them.
    assert_none(rbac_problems(&rest));
    let mut kinds: Vec<_> = rest.iter().map(Object::kind).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        ["DaemonSet", "Role", "RoleBinding", "ServiceAccount"]
    );

    // The DaemonSet is kube-api's with the selector arg appended.
    let ds = only_daemonset(&rest);
    let args = agent_container(ds).args.clone().unwrap_or_default();
    let mut expected = agent_container(only_daemonset(&kube_api))
        .args
        .clone()
        .unwrap_or_default();
    expected.push(SELECTOR_ARG.to_owned());
    assert_eq!(args, expected);
    let mut reverted = ds.clone();
    reverted.spec.template.spec.as_mut().unwrap().containers[0].args =
        agent_container(only_daemonset(&kube_api)).args.clone();
    assert_eq!(
        &reverted,
        only_daemonset(&kube_api),
        "nothing else differs from kube-api's DaemonSet"
    );

    // The agent accepts the rendered args (`version` needs no API server).
    let output = std::process::Command::new(crate::AGENT)
        .args(&args)
        .arg("version")
        .output()
        .expect("running the agent");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_selector_sources_pass_the_rbac_check_without_kubectl() {
    assert_none(problems_with(&[]));
    // The arg in the component is a selector the agent accepts.
    let text = read(&component().join("kustomization.yaml"));
    assert!(text.contains(&format!("value: {SELECTOR_ARG}\n")), "{text}");
    let output = std::process::Command::new(crate::AGENT)
        .args([SELECTOR_ARG, "version"])
        .output()
        .expect("running the agent");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_selector_rbac_check_rejects_more_than_list_and_watch() {
    for (from, to, expected) in [
        (
            "verbs: [list, watch]",
            "verbs: [get, list, watch]",
            "rules are",
        ),
        (
            "verbs: [list, watch]",
            "verbs: [list, watch, update]",
            "rules are",
        ),
        (
            "verbs: [list, watch]",
            r#"verbs: ["*"]"#,
            "wildcard in rule",
        ),
        (
            "resources: [configmaps]",
            "resources: [configmaps, secrets]",
            "rules are",
        ),
        // resourceNames cannot authorise a label-selector list: the agent
        // would be denied, so this is a broken Role, not a tighter one.
        (
            "    verbs: [list, watch]\n",
            "    resourceNames: [ip-masq-agent]\n    verbs: [list, watch]\n",
            "rules are",
        ),
        (
            "\nkind: Role\n",
            "\nkind: ClusterRole\n",
            "nothing cluster-wide",
        ),
        (
            "kind: RoleBinding\n",
            "kind: ClusterRoleBinding\n",
            "nothing cluster-wide",
        ),
        (
            "    name: ip-masq-agent\n    namespace: kube-system\n",
            "    name: default\n    namespace: kube-system\n",
            "subjects are",
        ),
    ] {
        let problems = problems_with(&[(from, to)]);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "{to}: expected {expected:?} in {problems:#?}"
        );
    }
    let problems = problems_with(&[(
        "  name: ip-masq-agent-selector\n  namespace: kube-system\n  labels:\n    k8s-app: ip-masq-agent\nrules:",
        "  name: ip-masq-agent-selector\n  namespace: default\n  labels:\n    k8s-app: ip-masq-agent\nrules:",
    )]);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("Role default/ip-masq-agent-selector is not")),
        "{problems:?}"
    );
    // Parsed from its own file, the kube-api ServiceAccount is not RBAC.
    let account = objects(
        &read(&crate::kube_api::component().join("serviceaccount.yaml")),
        "sa",
    );
    assert!(
        selector_rbac_problems(&account)
            .iter()
            .any(|p| p.contains("not RBAC"))
    );
}
