//! Recognising a Kubernetes ConfigMap manifest, so `ip-masq-agent check`
//! can be pointed at the manifest that will be applied as well as at the
//! mounted config file itself.
//!
//! A manifest is a JSON object, or one document of a YAML stream (manifests
//! often hold several, `---`-separated), with `kind: ConfigMap`; the config
//! is the string under `data.<key>`. Anything else is taken to be a bare
//! config file, left for the config parser to judge.

use super::ConfigError;
use super::decode;
use super::value::Value;

/// See [`super::configmap_data`].
pub(crate) fn data(bytes: &[u8], key: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    let found = decode::find_document(bytes, |doc| {
        matches!(doc.get("kind"), Some(Value::Str(s)) if s.text == "ConfigMap")
            .then(|| lookup(doc, key))
    });
    match found {
        Ok(Some(result)) => result.map(Some),
        // Not a manifest, or not decodable at all: a bare config file, which
        // the config parser will accept or explain.
        Ok(None) | Err(_) => Ok(None),
    }
}

/// The namespace and name of the ConfigMap the manifests mount.
pub const MOUNTED: (&str, &str) = ("kube-system", "ip-masq-agent");

/// See [`super::configmap_warnings`].
pub(crate) fn warnings(bytes: &[u8]) -> Vec<String> {
    let found = decode::find_document(bytes, |doc| {
        matches!(doc.get("kind"), Some(Value::Str(s)) if s.text == "ConfigMap").then(|| {
            let field = |name: &str| match doc.get("metadata").and_then(|m| m.get(name)) {
                Some(Value::Str(s)) => Some(s.text.clone()),
                _ => None,
            };
            (field("namespace"), field("name"))
        })
    });
    let Ok(Some((namespace, name))) = found else {
        return Vec::new();
    };
    let (mounted_ns, mounted_name) = MOUNTED;
    let name = name.unwrap_or_default();
    match namespace {
        None => vec![format!(
            "ConfigMap {name:?} has no namespace: kubectl applies it to the current namespace, \
             while the DaemonSet mounts {mounted_ns}/{mounted_name}"
        )],
        Some(namespace) if namespace != mounted_ns || name != mounted_name => vec![format!(
            "ConfigMap {namespace}/{name} is not the one the DaemonSet mounts ({mounted_ns}/{mounted_name}): \
             applying it changes nothing on the nodes"
        )],
        Some(_) => Vec::new(),
    }
}

/// See [`super::manifest_line`]. Only a literal block (`key: |`) keeps its
/// lines one to one; its lines must match the file's, after the block's
/// indentation, for exactly one `key:` line, or there is no answer.
pub(crate) fn data_start_line(file: &[u8], key: &str, data: &[u8]) -> Option<usize> {
    let file = std::str::from_utf8(file).ok()?;
    let data = std::str::from_utf8(data).ok()?;
    let lines: Vec<&str> = file.lines().collect();
    let data_lines: Vec<&str> = data.lines().collect();
    let heads = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    let mut found = None;
    for (i, line) in lines.iter().enumerate() {
        let body = line.trim_start();
        let Some(rest) = heads
            .iter()
            .find_map(|head| body.strip_prefix(head.as_str()))
        else {
            continue;
        };
        if !rest.trim_start().starts_with('|') {
            continue;
        }
        let Some(block) = lines.get(i + 1..i + 1 + data_lines.len()) else {
            continue;
        };
        let matches = block.len() == data_lines.len()
            && block
                .iter()
                .zip(&data_lines)
                .all(|(file_line, data_line)| file_line.trim_end().ends_with(data_line.trim_end()));
        if matches {
            if found.is_some() {
                return None;
            }
            // Line 1 of the data is the file line after `key: |` (1-based i + 2).
            found = Some(i + 2);
        }
    }
    found
}

fn lookup(doc: &Value, key: &str) -> Result<Vec<u8>, ConfigError> {
    let data = doc.get("data");
    match data.and_then(|d| d.get(key)) {
        Some(Value::Str(s)) => Ok(s.text.clone().into_bytes()),
        Some(other) => Err(ConfigError::ConfigMapKey {
            key: key.to_owned(),
            problem: format!("holds {}, not a string", other.describe()),
        }),
        None => {
            let present: Vec<&str> = match data {
                Some(Value::Map(entries)) => entries.iter().map(|(k, _)| k.as_str()).collect(),
                _ => Vec::new(),
            };
            let problem = if present.is_empty() {
                "is missing (the ConfigMap has no data)".to_owned()
            } else {
                format!("is missing (data has: {})", present.join(", "))
            };
            Err(ConfigError::ConfigMapKey {
                key: key.to_owned(),
                problem,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: ip-masq-agent
  namespace: kube-system
data:
  config: |
    nonMasqueradeCIDRs:
      - 10.0.0.0/8
    masqLinkLocal: true
";

    #[test]
    fn extracts_the_key_from_a_yaml_manifest() {
        let got = data(MANIFEST.as_bytes(), "config").unwrap();
        assert_eq!(
            got.as_deref(),
            Some(b"nonMasqueradeCIDRs:\n  - 10.0.0.0/8\nmasqLinkLocal: true\n".as_slice())
        );
    }

    #[test]
    fn finds_the_configmap_among_several_documents() {
        let text =
            format!("apiVersion: apps/v1\nkind: DaemonSet\n---\n{MANIFEST}---\nkind: Other\n");
        assert!(data(text.as_bytes(), "config").unwrap().is_some());
    }

    #[test]
    fn json_manifest() {
        let text = r#"{"kind": "ConfigMap", "data": {"config": "{\"cidrLimit\": 5}"}}"#;
        assert_eq!(
            data(text.as_bytes(), "config").unwrap().as_deref(),
            Some(br#"{"cidrLimit": 5}"#.as_slice())
        );
    }

    #[test]
    fn missing_key_is_named() {
        let err = data(MANIFEST.as_bytes(), "ip-masq-agent").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"ConfigMap data key "ip-masq-agent" is missing (data has: config)"#
        );
        let err = data(b"kind: ConfigMap\nmetadata: {name: x}\n", "config").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"ConfigMap data key "config" is missing (the ConfigMap has no data)"#
        );
        let err = data(b"kind: ConfigMap\ndata: {config: [1]}\n", "config").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"ConfigMap data key "config" holds a list, not a string"#
        );
    }

    #[test]
    fn bare_configs_are_not_manifests() {
        assert_eq!(
            data(b"nonMasqueradeCIDRs: [10.0.0.0/8]\n", "config").unwrap(),
            None
        );
        assert_eq!(data(b"{\"cidrLimit\": 5}", "config").unwrap(), None);
        assert_eq!(data(b"", "config").unwrap(), None);
        assert_eq!(data(b"kind: configmap\n", "config").unwrap(), None);
        assert_eq!(data(b"a: [\n", "config").unwrap(), None);
    }

    #[test]
    fn the_data_block_is_found_in_the_file() {
        let data = data(MANIFEST.as_bytes(), "config").unwrap().unwrap();
        assert_eq!(
            data_start_line(MANIFEST.as_bytes(), "config", &data),
            Some(8)
        );
        // A quoted string does not keep lines: no answer.
        let json = r#"{"kind": "ConfigMap", "data": {"config": "a: 1\nb: [\n"}}"#;
        let data = super::data(json.as_bytes(), "config").unwrap().unwrap();
        assert_eq!(data_start_line(json.as_bytes(), "config", &data), None);
    }

    #[test]
    fn a_configmap_other_than_the_mounted_one_is_named() {
        assert!(warnings(MANIFEST.as_bytes()).is_empty());
        let other = MANIFEST.replace("name: ip-masq-agent", "name: ip-masq-agent-config");
        assert_eq!(
            warnings(other.as_bytes()),
            [
                "ConfigMap kube-system/ip-masq-agent-config is not the one the DaemonSet mounts \
              (kube-system/ip-masq-agent): applying it changes nothing on the nodes"
            ]
        );
        let no_namespace = MANIFEST.replace("  namespace: kube-system\n", "");
        assert!(warnings(no_namespace.as_bytes())[0].contains("has no namespace"));
        assert!(
            warnings(b"nonMasqueradeCIDRs: []\n").is_empty(),
            "a bare config"
        );
    }
}
