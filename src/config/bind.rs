//! Binding the decoded tree onto the defaults, with Go `encoding/json`'s
//! rules for upstream's config struct.
//!
//! - Entries are applied in the tree's order; a key matches a field by exact
//!   name first, else case-insensitively (Go's folding); unknown keys are
//!   ignored; absent keys keep the defaults; a repeated key applies again.
//! - Types are strict. `cidrLimit` takes a JSON integer literal in `i64`
//!   range (YAML floats arrive already spelled as Go would, so `64.0` is `64`
//!   but `64.5` is refused); booleans take booleans; each CIDR list
//!   (`nonMasqueradeCIDRs`, and our `masqueradeCIDRs` and `podCIDRs`) takes a
//!   list of strings and replaces its default entirely.
//! - `null` leaves a boolean or the limit unchanged and empties a list; for
//!   `resyncInterval` it is an error, as is any non-string.
//! - Like Go, a type mismatch is remembered and binding goes on, the first
//!   one being reported at the end; a bad `resyncInterval` (upstream's own
//!   decoder) stops at once.

use super::ConfigError;
use super::duration;
use super::gostr;
use super::value::Value;

/// The config as decoded, before validation: CIDRs still text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raw {
    pub cidrs: Vec<String>,
    /// `masqueradeCIDRs`: empty by default.
    pub masquerade_cidrs: Vec<String>,
    /// `podCIDRs`: empty by default.
    pub pod_cidrs: Vec<String>,
    pub cidr_limit: i64,
    pub masq_link_local: bool,
    pub masq_link_local_ipv6: bool,
    pub resync_nanos: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Cidrs,
    MasqCidrs,
    PodCidrs,
    Limit,
    LinkLocal,
    LinkLocalIpv6,
    Resync,
}

const FIELDS: [(&str, Field); 7] = [
    ("nonMasqueradeCIDRs", Field::Cidrs),
    ("masqueradeCIDRs", Field::MasqCidrs),
    ("podCIDRs", Field::PodCidrs),
    ("cidrLimit", Field::Limit),
    ("masqLinkLocal", Field::LinkLocal),
    ("masqLinkLocalIPv6", Field::LinkLocalIpv6),
    ("resyncInterval", Field::Resync),
];

fn field_for(key: &str) -> Option<Field> {
    if let Some(&(_, f)) = FIELDS.iter().find(|(name, _)| *name == key) {
        return Some(f);
    }
    let folded = gostr::fold_name(key);
    FIELDS
        .iter()
        .find(|(name, _)| gostr::fold_name(name) == folded)
        .map(|&(_, f)| f)
}

fn mismatch(key: &str, expected: &str, got: &Value) -> ConfigError {
    ConfigError::Field {
        field: key.to_owned(),
        message: format!("expected {expected}, got {}", got.describe()),
    }
}

/// Warnings for the keys `bind` ignores: upstream accepts unknown keys, so
/// a typo (`nonMasqueradeCIDR`) silently leaves the defaults in force; say
/// so, with the key it was probably meant to be. A Kubernetes object given
/// as a config (a `kind: List`, say) gets one warning of its own.
pub(crate) fn unknown_keys(root: &Value) -> Vec<String> {
    let Value::Map(entries) = root else {
        return Vec::new();
    };
    if let Some(Value::Str(kind)) = root.get("kind")
        && root.get("apiVersion").is_some()
    {
        return vec![format!(
            "this is a Kubernetes object (kind: {}), not an ip-masq-agent config: none of its keys are \
             settings, so the defaults apply; give the config itself (a ConfigMap's data.config)",
            gostr::quote(&kind.text)
        )];
    }
    entries
        .iter()
        .filter(|(key, _)| field_for(key).is_none())
        .map(|(key, _)| {
            let quoted = gostr::quote(key);
            match suggestion(key) {
                Some(name) => format!("unknown key {quoted} ignored (did you mean \"{name}\"?)"),
                None => format!("unknown key {quoted} ignored"),
            }
        })
        .collect()
}

/// The setting an unknown key most likely meant: within two edits of it,
/// ignoring case, or one a prefix of the other.
fn suggestion(key: &str) -> Option<&'static str> {
    let key = key.to_ascii_lowercase();
    FIELDS
        .iter()
        .map(|(name, _)| (*name, distance(&key, &name.to_ascii_lowercase())))
        .filter(|(name, d)| {
            *d <= 2 || (key.len() >= 4 && name.to_ascii_lowercase().starts_with(&key))
        })
        .min_by_key(|(_, d)| *d)
        .map(|(name, _)| name)
}

/// Levenshtein distance, for short keys only.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Whether `root` sets `resyncInterval` (matched as `bind` matches keys).
pub(crate) fn sets_resync(root: &Value) -> bool {
    match root {
        Value::Map(entries) => entries
            .iter()
            .any(|(key, _)| field_for(key) == Some(Field::Resync)),
        _ => false,
    }
}

/// Apply `root` onto `raw` (which holds the defaults).
pub(crate) fn bind(root: &Value, mut raw: Raw) -> Result<Raw, ConfigError> {
    let entries = match root {
        Value::Null => return Ok(raw),
        Value::Map(entries) => entries,
        other => {
            return Err(ConfigError::NotAMapping {
                got: other.describe(),
            });
        }
    };
    let mut first_mismatch: Option<ConfigError> = None;
    let mut remember = |e: ConfigError| {
        first_mismatch.get_or_insert(e);
    };
    for (key, value) in entries {
        let Some(field) = field_for(key) else {
            continue;
        };
        match (field, value) {
            (Field::Limit | Field::LinkLocal | Field::LinkLocalIpv6, Value::Null) => {}
            (Field::Limit, Value::Number(n)) => match n.parse::<i64>() {
                Ok(limit) => raw.cidr_limit = limit,
                Err(_) => remember(mismatch(key, "an integer", value)),
            },
            (Field::Limit, other) => remember(mismatch(key, "an integer", other)),
            (Field::LinkLocal, Value::Bool(b)) => raw.masq_link_local = *b,
            (Field::LinkLocalIpv6, Value::Bool(b)) => raw.masq_link_local_ipv6 = *b,
            (Field::LinkLocal | Field::LinkLocalIpv6, other) => {
                remember(mismatch(key, "true or false", other));
            }
            (Field::Cidrs | Field::MasqCidrs | Field::PodCidrs, _) => {
                let list = match field {
                    Field::MasqCidrs => &mut raw.masquerade_cidrs,
                    Field::PodCidrs => &mut raw.pod_cidrs,
                    _ => &mut raw.cidrs,
                };
                bind_list(key, value, list, &mut remember);
            }
            (Field::Resync, Value::Str(s)) => {
                // Upstream parses the raw JSON text between the quotes.
                raw.resync_nanos =
                    duration::parse_bytes(&s.json_raw()).map_err(|e| ConfigError::Field {
                        field: key.clone(),
                        message: e.to_string(),
                    })?;
            }
            (Field::Resync, other) => {
                return Err(mismatch(key, "a duration string such as \"60s\"", other));
            }
        }
    }
    match first_mismatch {
        Some(e) => Err(e),
        None => Ok(raw),
    }
}

/// A CIDR list field: `null` empties it, a list of strings replaces it,
/// anything else (or a non-string element, named by index) is a mismatch.
fn bind_list(
    key: &str,
    value: &Value,
    list: &mut Vec<String>,
    remember: &mut impl FnMut(ConfigError),
) {
    match value {
        Value::Null => list.clear(),
        Value::Seq(items) => {
            *list = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Str(s) => list.push(s.text.clone()),
                    other => remember(mismatch(&format!("{key}[{i}]"), "a CIDR string", other)),
                }
            }
        }
        other => remember(mismatch(key, "a list of CIDR strings", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::Str;

    fn defaults() -> Raw {
        Raw {
            cidrs: vec!["10.0.0.0/8".into()],
            masquerade_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            cidr_limit: 64,
            masq_link_local: false,
            masq_link_local_ipv6: false,
            resync_nanos: 60_000_000_000,
        }
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        )
    }

    fn s(text: &str) -> Value {
        Value::Str(Str::plain(text.into()))
    }

    fn n(text: &str) -> Value {
        Value::Number(text.into())
    }

    #[test]
    fn fields_match_exactly_then_folded() {
        assert_eq!(field_for("cidrLimit"), Some(Field::Limit));
        assert_eq!(field_for("CIDRLIMIT"), Some(Field::Limit));
        assert_eq!(field_for("NonMasqueradeCIDRs"), Some(Field::Cidrs));
        assert_eq!(field_for("masqlinklocalipv6"), Some(Field::LinkLocalIpv6));
        assert_eq!(field_for("masq_link_local"), None);
        assert_eq!(field_for("cidr-limit"), None);
        assert_eq!(field_for("masqueradeCIDRs"), Some(Field::MasqCidrs));
        assert_eq!(field_for("MasqueradeCidrs"), Some(Field::MasqCidrs));
        assert_eq!(field_for("podCIDRs"), Some(Field::PodCidrs));
        assert_eq!(field_for("PODCIDRS"), Some(Field::PodCidrs));
        assert_eq!(field_for("podCIDR"), None);
    }

    #[test]
    fn repeated_keys_apply_in_order() {
        let raw = bind(
            &map(vec![("cidrLimit", n("5")), ("CIDRLIMIT", n("7"))]),
            defaults(),
        )
        .unwrap();
        assert_eq!(raw.cidr_limit, 7);
        // An earlier bad duplicate still fails the file, as in Go.
        let err = bind(
            &map(vec![("cidrLimit", s("5")), ("cidrLimit", n("7"))]),
            defaults(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "cidrLimit": expected an integer, got string "5""#
        );
    }

    #[test]
    fn first_mismatch_is_reported_but_duration_errors_stop_at_once() {
        let err = bind(
            &map(vec![("cidrLimit", s("x")), ("masqLinkLocal", n("1"))]),
            defaults(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("cidrLimit"), "{err}");
        let err = bind(
            &map(vec![("cidrLimit", s("x")), ("resyncInterval", s("abc"))]),
            defaults(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "resyncInterval": time: invalid duration "abc""#
        );
    }

    #[test]
    fn list_element_errors_name_the_index() {
        let err = bind(
            &map(vec![(
                "nonMasqueradeCIDRs",
                Value::Seq(vec![s("10.0.0.0/8"), n("5"), Value::Null]),
            )]),
            defaults(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "nonMasqueradeCIDRs[1]": expected a CIDR string, got number 5"#
        );
    }

    #[test]
    fn new_lists_bind_like_the_upstream_list() {
        let raw = bind(
            &map(vec![
                ("masqueradeCIDRs", Value::Seq(vec![s("10.9.0.0/16")])),
                (
                    "podCIDRs",
                    Value::Seq(vec![s("10.4.0.0/14"), s("10.8.0.0/16")]),
                ),
            ]),
            defaults(),
        )
        .unwrap();
        assert_eq!(raw.cidrs, ["10.0.0.0/8"]);
        assert_eq!(raw.masquerade_cidrs, ["10.9.0.0/16"]);
        assert_eq!(raw.pod_cidrs, ["10.4.0.0/14", "10.8.0.0/16"]);
        let mut start = defaults();
        start.pod_cidrs = vec!["10.4.0.0/14".into()];
        let raw = bind(&map(vec![("podCIDRs", Value::Null)]), start).unwrap();
        assert!(raw.pod_cidrs.is_empty());
        let err = bind(&map(vec![("podCIDRs", s("10.4.0.0/14"))]), defaults()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "podCIDRs": expected a list of CIDR strings, got string "10.4.0.0/14""#
        );
        let err = bind(
            &map(vec![(
                "masqueradeCIDRs",
                Value::Seq(vec![s("10.9.0.0/16"), Value::Bool(true)]),
            )]),
            defaults(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "masqueradeCIDRs[1]": expected a CIDR string, got boolean true"#
        );
    }

    #[test]
    fn duration_reads_the_raw_json_text() {
        let escaped = Value::Str(Str {
            text: "1s".into(),
            raw: Some(br"1\u0073".to_vec()),
        });
        let err = bind(&map(vec![("resyncInterval", escaped)]), defaults()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config field "resyncInterval": time: unknown unit "\\u" in duration "1\\u0073""#
        );
    }

    #[test]
    fn top_level_must_be_a_mapping() {
        assert_eq!(bind(&Value::Null, defaults()).unwrap(), defaults());
        let err = bind(&s("hello"), defaults()).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"config must be a mapping of settings (such as `cidrLimit: 64`), got string "hello""#
        );
        assert!(bind(&Value::Seq(vec![]), defaults()).is_err());
        assert!(bind(&n("5"), defaults()).is_err());
    }
}
