//! The untyped tree that both decoders produce and the binder consumes.
//!
//! It is the JSON document upstream's Go code hands to `encoding/json`: a YAML
//! file is first turned into the JSON that Go's `sigs.k8s.io/yaml` would
//! produce (numbers already in Go's JSON spelling, map keys deduplicated and
//! sorted), a JSON file is kept as written (duplicate keys and document order
//! preserved). Binding then walks map entries in the order stored here.

use super::gostr;

/// One decoded value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    /// A JSON number literal exactly as Go's decoder would see it (for YAML
    /// input: as Go's `json.Marshal` would have written it).
    Number(String),
    Str(Str),
    Seq(Vec<Value>),
    /// Entries in binding order (see the module doc).
    Map(Vec<(String, Value)>),
}

/// A string value, with the raw JSON text upstream's duration field sees.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Str {
    /// The decoded text.
    pub text: String,
    /// For JSON input, the bytes between the quotes, escapes not decoded:
    /// upstream's `resyncInterval` parser reads those raw bytes. `None` for
    /// YAML input, where the raw form is Go's JSON encoding of `text`.
    pub raw: Option<Vec<u8>>,
}

impl Str {
    pub fn plain(text: String) -> Str {
        Str { text, raw: None }
    }

    /// The bytes upstream's `Duration.UnmarshalJSON` passes to
    /// `time.ParseDuration`.
    pub fn json_raw(&self) -> Vec<u8> {
        match &self.raw {
            Some(raw) => raw.clone(),
            None => gostr::json_string_body(&self.text).into_bytes(),
        }
    }
}

/// Longest string value shown in an error message before it is cut.
const SHOWN_CHARS: usize = 80;

impl Value {
    /// A short description for error messages: its type and, for scalars,
    /// the value itself.
    pub fn describe(&self) -> String {
        match self {
            Value::Null => "null".to_owned(),
            Value::Bool(b) => format!("boolean {b}"),
            Value::Number(n) => format!("number {n}"),
            Value::Str(s) => {
                let mut shown: String = s.text.chars().take(SHOWN_CHARS).collect();
                if shown.len() < s.text.len() {
                    shown.push('…');
                }
                format!("string {}", gostr::quote(&shown))
            }
            Value::Seq(_) => "a list".to_owned(),
            Value::Map(_) => "a mapping".to_owned(),
        }
    }

    /// The last value stored under exactly `key`, if this is a map.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(entries) => entries.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_values() {
        assert_eq!(Value::Null.describe(), "null");
        assert_eq!(Value::Bool(true).describe(), "boolean true");
        assert_eq!(Value::Number("64.5".into()).describe(), "number 64.5");
        assert_eq!(
            Value::Str(Str::plain("64".into())).describe(),
            "string \"64\""
        );
        assert_eq!(Value::Seq(vec![]).describe(), "a list");
        assert_eq!(Value::Map(vec![]).describe(), "a mapping");
        let long = Value::Str(Str::plain("x".repeat(100)));
        assert_eq!(long.describe(), format!("string \"{}…\"", "x".repeat(80)));
    }

    #[test]
    fn raw_json_of_yaml_strings_is_go_encoding() {
        assert_eq!(Str::plain("1s<".into()).json_raw(), b"1s\\u003c".to_vec());
        let from_json = Str {
            text: "1s".into(),
            raw: Some(b"1\\u0073".to_vec()),
        };
        assert_eq!(from_json.json_raw(), b"1\\u0073".to_vec());
    }

    #[test]
    fn get_takes_the_last_duplicate() {
        let map = Value::Map(vec![
            ("a".into(), Value::Bool(false)),
            ("a".into(), Value::Bool(true)),
        ]);
        assert_eq!(map.get("a"), Some(&Value::Bool(true)));
        assert_eq!(map.get("b"), None);
        assert_eq!(Value::Null.get("a"), None);
    }
}
