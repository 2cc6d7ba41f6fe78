//! Bytes to the untyped [`Value`] tree: picks JSON or YAML as upstream does,
//! checks the text encoding, and gives each input one [`Budget`] (the
//! decoding limits, owned by `budget`) shared by all its documents.
//!
//! Upstream's rule: if the first non-whitespace character is `{` the file is
//! JSON, read strictly; otherwise it is YAML 1.1 (which also covers JSON
//! that does not start with `{`). YAML must be UTF-8 or carry a UTF-16 byte
//! order mark, and, as in go-yaml, may not contain control characters
//! other than tab, newline and carriage return.

use std::borrow::Cow;

use super::ConfigError;
use super::budget::Budget;
use super::value::Value;
use super::{json, yaml};

/// The two syntaxes upstream accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Syntax {
    Json,
    Yaml,
}

/// Upstream's test: skip leading Unicode whitespace, then look for `{`.
pub(crate) fn detect(bytes: &[u8]) -> Syntax {
    let prefix = match std::str::from_utf8(bytes) {
        Ok(text) => text,
        // Only the valid start matters: the scan stops at the first
        // non-space anyway.
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    };
    match prefix
        .trim_start_matches(char::is_whitespace)
        .chars()
        .next()
    {
        Some('{') => Syntax::Json,
        _ => Syntax::Yaml,
    }
}

/// Decode the config document: the JSON value, or the first YAML document
/// (null for an empty stream).
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, ConfigError> {
    let mut budget = Budget::new();
    match detect(bytes) {
        Syntax::Json => json::parse(bytes, &mut budget),
        Syntax::Yaml => {
            let text = yaml_text(bytes)?;
            Ok(yaml::Documents::new(&text)
                .next_document(&mut budget)?
                .unwrap_or(Value::Null))
        }
    }
}

/// Decode documents in turn until `found` returns something (a manifest
/// file may hold several YAML documents). Stops at the first error.
pub(crate) fn find_document<T>(
    bytes: &[u8],
    mut found: impl FnMut(&Value) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    let mut budget = Budget::new();
    match detect(bytes) {
        Syntax::Json => Ok(found(&json::parse(bytes, &mut budget)?)),
        Syntax::Yaml => {
            let text = yaml_text(bytes)?;
            let mut docs = yaml::Documents::new(&text);
            while let Some(doc) = docs.next_document(&mut budget)? {
                if let Some(hit) = found(&doc) {
                    return Ok(Some(hit));
                }
            }
            Ok(None)
        }
    }
}

/// The YAML text: UTF-8, or UTF-16 with a byte order mark (as go-yaml
/// accepts); then go-yaml's check for characters YAML forbids.
fn yaml_text(bytes: &[u8]) -> Result<Cow<'_, str>, ConfigError> {
    let text = match bytes {
        [0xFF, 0xFE, rest @ ..] => Cow::Owned(utf16(rest, u16::from_le_bytes)?),
        [0xFE, 0xFF, rest @ ..] => Cow::Owned(utf16(rest, u16::from_be_bytes)?),
        _ => Cow::Borrowed(
            std::str::from_utf8(bytes).map_err(|e| ConfigError::NotUtf8 {
                offset: e.valid_up_to(),
            })?,
        ),
    };
    if let Some((offset, c)) = text.char_indices().find(|&(_, c)| !yaml_allowed(c)) {
        return Err(ConfigError::ControlChar {
            code: u32::from(c),
            offset,
        });
    }
    Ok(text)
}

fn utf16(bytes: &[u8], unit: fn([u8; 2]) -> u16) -> Result<String, ConfigError> {
    let bad = |offset| ConfigError::NotUtf8 { offset };
    if !bytes.len().is_multiple_of(2) {
        return Err(bad(bytes.len() + 1));
    }
    let units = bytes.chunks_exact(2).map(|pair| unit([pair[0], pair[1]]));
    let mut text = String::with_capacity(bytes.len() / 2);
    for (i, c) in char::decode_utf16(units).enumerate() {
        // Offsets count from the start of the file, byte order mark included.
        text.push(c.map_err(|_| bad(2 + 2 * i))?);
    }
    Ok(text)
}

/// The characters go-yaml's reader lets through.
fn yaml_allowed(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\r' | ' '..='~' | '\u{85}' | '\u{a0}'..='\u{d7ff}'
        | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::value::Str;

    #[test]
    fn detects_json_like_upstream() {
        assert_eq!(detect(b"{}"), Syntax::Json);
        assert_eq!(detect(b" \t\r\n{\"a\":1}"), Syntax::Json);
        assert_eq!(detect("\u{a0}\u{2003}{".as_bytes()), Syntax::Json);
        assert_eq!(detect(b"\x0b{"), Syntax::Json);
        assert_eq!(detect(b"a: 1"), Syntax::Yaml);
        assert_eq!(detect(b"[1]"), Syntax::Yaml);
        assert_eq!(detect(b""), Syntax::Yaml);
        assert_eq!(detect(b"# {\n{}"), Syntax::Yaml);
        assert_eq!(detect("\u{feff}{}".as_bytes()), Syntax::Yaml);
        assert_eq!(detect(b"\xff{"), Syntax::Yaml);
    }

    #[test]
    fn json_detected_then_read_strictly() {
        // Go's JSON reader does not take \v as whitespace.
        assert!(matches!(decode(b"\x0b{}"), Err(ConfigError::Json { .. })));
        // A flow mapping after a BOM is YAML, read as YAML.
        assert_eq!(
            decode("\u{feff}{a: yes}".as_bytes()).unwrap(),
            Value::Map(vec![("a".into(), Value::Bool(true))])
        );
    }

    #[test]
    fn utf16_with_bom_is_read() {
        let mut le = vec![0xFF, 0xFE];
        le.extend("a: 1\n".encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(
            decode(&le).unwrap(),
            Value::Map(vec![("a".into(), Value::Number("1".into()))])
        );
        let mut be = vec![0xFE, 0xFF];
        be.extend("a: x\n".encode_utf16().flat_map(u16::to_be_bytes));
        assert_eq!(
            decode(&be).unwrap(),
            Value::Map(vec![("a".into(), Value::Str(Str::plain("x".into())))])
        );
        assert!(matches!(
            decode(&[0xFF, 0xFE, 0x61]),
            Err(ConfigError::NotUtf8 { .. })
        ));
        assert!(matches!(
            decode(&[0xFF, 0xFE, 0x00, 0xD8]),
            Err(ConfigError::NotUtf8 { offset: 2 })
        ));
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(
            decode(b"a: 1\n\xff"),
            Err(ConfigError::NotUtf8 { offset: 5 })
        ));
        assert_eq!(
            decode(b"a: 1\n\x01b: 2").unwrap_err().to_string(),
            "config contains the control character U+0001 at byte 5, which YAML does not allow"
        );
        assert!(decode(b"a: \x7f").is_err());
        assert!(decode(b"a: \t1").is_ok());
    }
}
