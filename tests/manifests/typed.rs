//! YAML documents into typed Kubernetes objects, failing on any field the
//! type does not know.
//!
//! The YAML is read with `serde-saphyr` into untyped values (YAML 1.1
//! scalars, as `kubectl` reads them; duplicate keys are an error), then each
//! document is deserialized into the `k8s-openapi` type its `apiVersion` and
//! `kind` name, through `serde_ignored`: k8s-openapi skips fields it does not
//! know, and `serde_ignored` reports every field skipped, so a misspelled
//! field (`hostNetwrok`) or one at the wrong level fails here instead of
//! being dropped silently by the API server. PodMonitor and PrometheusRule
//! are CRDs, not in k8s-openapi: they go through the strict structs of
//! `podmonitor` and `prometheusrule`.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::podmonitor::PodMonitor;
use crate::prometheusrule::PrometheusRule;

/// One parsed object, of a kind these manifests contain. Another kind is an
/// error until it is added here and in `parse_object` (k8s-openapi has them
/// all). ClusterRole and ClusterRoleBinding are here so that the RBAC check
/// can name one that must not be there (`kube_api`).
#[derive(Debug)]
pub enum Object {
    DaemonSet(Box<DaemonSet>),
    ConfigMap(Box<ConfigMap>),
    PodMonitor(Box<PodMonitor>),
    PrometheusRule(Box<PrometheusRule>),
    ServiceAccount(Box<ServiceAccount>),
    Role(Box<Role>),
    RoleBinding(Box<RoleBinding>),
    ClusterRole(Box<ClusterRole>),
    ClusterRoleBinding(Box<ClusterRoleBinding>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::DaemonSet(_) => "DaemonSet",
            Object::ConfigMap(_) => "ConfigMap",
            Object::PodMonitor(_) => "PodMonitor",
            Object::PrometheusRule(_) => "PrometheusRule",
            Object::ServiceAccount(_) => "ServiceAccount",
            Object::Role(_) => "Role",
            Object::RoleBinding(_) => "RoleBinding",
            Object::ClusterRole(_) => "ClusterRole",
            Object::ClusterRoleBinding(_) => "ClusterRoleBinding",
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Object::DaemonSet(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
            Object::PodMonitor(o) => &o.metadata,
            Object::PrometheusRule(o) => &o.metadata,
            Object::ServiceAccount(o) => &o.metadata,
            Object::Role(o) => &o.metadata,
            Object::RoleBinding(o) => &o.metadata,
            Object::ClusterRole(o) => &o.metadata,
            Object::ClusterRoleBinding(o) => &o.metadata,
        }
    }
}

/// Every non-empty document of `text` as a typed object. `origin` names the
/// text in error messages. All problems of all documents are reported
/// together, one per line.
pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<Object>, String> {
    let documents: Vec<Value> =
        serde_saphyr::from_multiple(text).map_err(|err| format!("{origin}: not YAML: {err}"))?;
    let mut objects = Vec::new();
    let mut problems = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        let label = format!("{origin}: document {} ({})", index + 1, describe(&document));
        match parse_object(document) {
            Ok(object) => objects.push(object),
            Err(err) => problems.push(format!("{label}: {err}")),
        }
    }
    if problems.is_empty() {
        Ok(objects)
    } else {
        Err(problems.join("\n"))
    }
}

/// `Kind namespace/name` of an untyped document, for messages.
fn describe(document: &Value) -> String {
    let field = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned()
    };
    let metadata = document.get("metadata").cloned().unwrap_or(Value::Null);
    let name = field(&metadata, "name");
    match metadata.get("namespace").and_then(Value::as_str) {
        Some(namespace) => format!("{} {namespace}/{name}", field(document, "kind")),
        None => format!("{} {name}", field(document, "kind")),
    }
}

const RBAC_V1: &str = "rbac.authorization.k8s.io/v1";

/// One document into the type its `apiVersion` and `kind` name.
pub fn parse_object(document: Value) -> Result<Object, String> {
    let api_version = document.get("apiVersion").and_then(Value::as_str);
    let kind = document.get("kind").and_then(Value::as_str);
    match (api_version, kind) {
        (Some("apps/v1"), Some("DaemonSet")) => strict(document).map(Object::DaemonSet),
        (Some("v1"), Some("ConfigMap")) => strict(document).map(Object::ConfigMap),
        (Some("monitoring.coreos.com/v1"), Some("PodMonitor")) => {
            strict(document).map(Object::PodMonitor)
        }
        (Some("monitoring.coreos.com/v1"), Some("PrometheusRule")) => {
            strict(document).map(Object::PrometheusRule)
        }
        (Some("v1"), Some("ServiceAccount")) => strict(document).map(Object::ServiceAccount),
        (Some(RBAC_V1), Some("Role")) => strict(document).map(Object::Role),
        (Some(RBAC_V1), Some("RoleBinding")) => strict(document).map(Object::RoleBinding),
        (Some(RBAC_V1), Some("ClusterRole")) => strict(document).map(Object::ClusterRole),
        (Some(RBAC_V1), Some("ClusterRoleBinding")) => {
            strict(document).map(Object::ClusterRoleBinding)
        }
        (api_version, kind) => Err(format!(
            "apiVersion {api_version:?}, kind {kind:?} is not a type this test knows; \
             add it to tests/manifests/typed.rs (parse_object)"
        )),
    }
}

/// Deserialize `value` into `T`, failing on every field `T` skipped.
pub fn strict<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    let mut unknown = Vec::new();
    let result: Result<T, _> =
        serde_ignored::deserialize(value, |path| unknown.push(dotted(&path)));
    let parsed = result.map_err(|err| err.to_string())?;
    if unknown.is_empty() {
        Ok(parsed)
    } else {
        Err(unknown
            .iter()
            .map(|path| format!("unknown field `{path}`"))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// `spec.template.spec.containers.0.name`: the path without serde_ignored's
/// `?` markers for options and newtypes.
fn dotted(path: &serde_ignored::Path<'_>) -> String {
    fn walk(path: &serde_ignored::Path<'_>, parts: &mut Vec<String>) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, parts);
                parts.push(index.to_string());
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, parts);
                parts.push(key.clone());
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, parts),
        }
    }
    let mut parts = Vec::new();
    walk(path, &mut parts);
    parts.join(".")
}
