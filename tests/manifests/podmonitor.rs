//! The fields of prometheus-operator's `monitoring.coreos.com/v1` PodMonitor
//! that manifests/components/podmonitor uses, and no others.
//!
//! PodMonitor is a CRD, so k8s-openapi has no type for it. Every level
//! denies unknown fields: a misspelled field fails the test, and so does a
//! real PodMonitor field not listed here (add it, with the operator's
//! spelling, when the component starts using it). Fields the assertions do
//! not read are there for their shape only, hence `allow(dead_code)`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PodMonitor {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PodMonitorSpec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodMonitorSpec {
    pub selector: LabelSelector,
    pub pod_metrics_endpoints: Vec<PodMetricsEndpoint>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PodMetricsEndpoint {
    /// Name of a container port of the selected pods.
    pub port: String,
    pub path: Option<String>,
    pub interval: Option<String>,
    #[serde(default)]
    pub relabelings: Vec<RelabelConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct RelabelConfig {
    #[serde(default)]
    pub source_labels: Vec<String>,
    pub target_label: Option<String>,
}
