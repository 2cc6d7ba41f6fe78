//! Rendering with `kubectl kustomize`, and the kustomization files as data.
//!
//! kubectl comes with the machine image of this project's machines (the
//! `kubectl` Debian package of the Google Cloud CLI repository, kustomize
//! v5). Debian bookworm's own `kubernetes-client` is kubectl 1.20, whose
//! kustomize predates components, so it is no substitute. Without kubectl
//! the rendering tests skip with a printed reason, and fail under `CI=true`.
//! `KUBECTL=PATH` picks another binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// The kubectl to run, or `None` (after printing why) when the test should
/// skip. Panics under `CI=true` when there is none: a skipped check there
/// would be a hidden red.
pub fn kubectl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return Some(PathBuf::from(path));
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubectl"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let reason = "kubectl not found in PATH (set KUBECTL=PATH to point at one)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{reason}; under CI=true this check must run");
        }
        eprintln!("skipped: {reason}");
    }
    found
}

/// `kubectl kustomize DIR`: the rendered multi-document YAML.
pub fn render(kubectl: &Path, dir: &Path) -> String {
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|err| panic!("running {} kustomize: {err}", kubectl.display()));
    assert!(
        output.status.success(),
        "{} kustomize {} failed ({}):\n{}",
        kubectl.display(),
        dir.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize printed UTF-8")
}

/// The fields of a `kustomization.yaml` (Kustomization or Component) that
/// these manifests use; anything else is an error, so a misspelled key
/// (`resource:`) is caught without kubectl. Add fields here when a
/// kustomization starts using them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Kustomization {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub components: Vec<String>,
    #[serde(default)]
    pub images: Vec<Image>,
    #[serde(default)]
    pub patches: Vec<Patch>,
    #[serde(default)]
    pub config_map_generator: Vec<ConfigMapGenerator>,
}

/// A `configMapGenerator:` entry (manifests/monitoring's dashboard).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConfigMapGenerator {
    pub name: String,
    #[serde(default)]
    pub files: Vec<String>,
    pub options: Option<GeneratorOptions>,
}

/// A generator's `options:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct GeneratorOptions {
    pub disable_name_suffix_hash: Option<bool>,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
}

/// An `images:` entry; `kustomize edit set image` writes `newName` and
/// `newTag` (or `digest`), which the tests need not read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct Image {
    pub name: String,
    pub new_name: Option<String>,
    pub new_tag: Option<String>,
    pub digest: Option<String>,
}

/// A `patches:` entry: a patch file (`path`) or an inline patch (`patch`),
/// optionally for the objects `target` selects. A file with no target is a
/// strategic merge patch naming its object itself.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Patch {
    pub path: Option<String>,
    pub patch: Option<String>,
    pub target: Option<PatchTarget>,
}

/// Which objects a patch applies to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
pub struct PatchTarget {
    pub group: Option<String>,
    pub version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
}
