//! A strict JSON reader with Go `encoding/json`'s acceptance rules, building
//! the untyped [`Value`] tree.
//!
//! Written here rather than taken from serde_json because the binder needs
//! what Go sees: every object entry in document order, duplicates included
//! (Go applies each in turn, so the last wins and an earlier bad one still
//! fails the file); the raw bytes of each string (upstream parses
//! `resyncInterval` from them, escapes undecoded); invalid UTF-8 inside
//! strings accepted and replaced by U+FFFD; lone surrogate escapes replaced
//! by U+FFFD. Nesting depth and total size are bounded by the caller's
//! [`Budget`].

use super::ConfigError;
use super::budget::{Budget, MAX_DEPTH};
use super::gostr;
use super::value::{Str, Value};

/// Parse one JSON document (surrounding whitespace allowed, nothing else).
pub(crate) fn parse(input: &[u8], budget: &mut Budget) -> Result<Value, ConfigError> {
    let mut reader = Reader {
        s: input,
        i: 0,
        budget,
    };
    reader.skip_ws();
    let value = reader.value(0)?;
    reader.skip_ws();
    if reader.i < reader.s.len() {
        return Err(reader.unexpected("after the top-level value"));
    }
    Ok(value)
}

struct Reader<'a, 'b> {
    s: &'a [u8],
    i: usize,
    budget: &'b mut Budget,
}

impl Reader<'_, '_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn error(&self, message: String) -> ConfigError {
        let before = &self.s[..self.i.min(self.s.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        let column = String::from_utf8_lossy(&before[line_start..])
            .chars()
            .count()
            + 1;
        ConfigError::Json {
            line,
            column,
            message,
        }
    }

    /// "invalid character 'x' <context>" or "unexpected end of input".
    fn unexpected(&self, context: &str) -> ConfigError {
        match self.s.get(self.i..) {
            Some(rest) if !rest.is_empty() => {
                let shown = match gostr::decode_rune(rest) {
                    (Some(c), _) => format!("{c:?}"),
                    (None, _) => format!("byte 0x{:02x}", rest[0]),
                };
                self.error(format!("invalid character {shown} {context}"))
            }
            _ => self.error("unexpected end of JSON input".to_owned()),
        }
    }

    fn expect(&mut self, byte: u8, context: &str) -> Result<(), ConfigError> {
        if self.peek() == Some(byte) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(context))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, ConfigError> {
        self.budget.take(1, 0)?;
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => {
                let s = self.string()?;
                self.budget.take(0, s.text.len())?;
                Ok(Value::Str(s))
            }
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            _ => Err(self.unexpected("looking for the beginning of a value")),
        }
    }

    fn literal(&mut self, word: &str, value: Value) -> Result<Value, ConfigError> {
        for &expected in word.as_bytes() {
            if self.peek() != Some(expected) {
                return Err(self.unexpected(&format!("in literal {word}")));
            }
            self.i += 1;
        }
        Ok(value)
    }

    fn object(&mut self, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::TooDeep { max: MAX_DEPTH });
        }
        self.i += 1; // '{'
        let mut entries = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Map(entries));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("looking for the beginning of an object key"));
            }
            let key = self.string()?.text;
            self.budget.take(0, key.len())?;
            self.skip_ws();
            self.expect(b':', "after an object key")?;
            self.skip_ws();
            let value = self.value(depth)?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Map(entries));
                }
                _ => return Err(self.unexpected("after an object key:value pair")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, ConfigError> {
        if depth > MAX_DEPTH {
            return Err(ConfigError::TooDeep { max: MAX_DEPTH });
        }
        self.i += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Seq(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Seq(items));
                }
                _ => return Err(self.unexpected("after an array element")),
            }
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, kept as text.
    fn number(&mut self) -> Result<Value, ConfigError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.unexpected("in numeric literal")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.unexpected("after decimal point in numeric literal"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.unexpected("in exponent of numeric literal"));
            }
            self.digits();
        }
        // Only ASCII was consumed.
        let text = String::from_utf8_lossy(&self.s[start..self.i]).into_owned();
        Ok(Value::Number(text))
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
    }

    fn hex4(&mut self) -> Result<u32, ConfigError> {
        let mut v = 0u32;
        for _ in 0..4 {
            let digit = self
                .peek()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| self.unexpected("in \\u hexadecimal character escape"))?;
            v = v * 16 + digit;
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<Str, ConfigError> {
        self.i += 1; // opening quote
        let start = self.i;
        let mut text = String::new();
        loop {
            let Some(b) = self.peek() else {
                return Err(self.error("unexpected end of JSON input in a string".to_owned()));
            };
            match b {
                b'"' => {
                    let raw = self.s[start..self.i].to_vec();
                    self.i += 1;
                    return Ok(Str {
                        text,
                        raw: Some(raw),
                    });
                }
                b'\\' => {
                    self.i += 1;
                    let escaped = match self.peek() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            self.i += 1;
                            let c = self.unicode_escape()?;
                            text.push(c);
                            continue;
                        }
                        _ => return Err(self.unexpected("in string escape code")),
                    };
                    self.i += 1;
                    text.push(escaped);
                }
                0..=0x1f => return Err(self.unexpected("in string literal")),
                _ => {
                    let (rune, width) = gostr::decode_rune(&self.s[self.i..]);
                    text.push(rune.unwrap_or(char::REPLACEMENT_CHARACTER));
                    self.i += width;
                }
            }
        }
    }

    /// After `\u`: one escape, or a surrogate pair written as two.
    fn unicode_escape(&mut self) -> Result<char, ConfigError> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first)
            && self.s.get(self.i..self.i + 2) == Some(b"\\u".as_slice())
        {
            // Only consume the second escape if it completes the pair.
            let save = self.i;
            self.i += 2;
            let second = self.hex4()?;
            if (0xDC00..0xE000).contains(&second) {
                let c = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
                return Ok(char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER));
            }
            self.i = save;
        }
        Ok(char::from_u32(first).unwrap_or(char::REPLACEMENT_CHARACTER))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Value, ConfigError> {
        parse(s.as_bytes(), &mut Budget::new())
    }

    fn s(text: &str) -> Value {
        Value::Str(Str::plain(text.into()))
    }

    fn strip_raw(v: Value) -> Value {
        match v {
            Value::Str(st) => Value::Str(Str::plain(st.text)),
            Value::Seq(items) => Value::Seq(items.into_iter().map(strip_raw).collect()),
            Value::Map(e) => Value::Map(e.into_iter().map(|(k, v)| (k, strip_raw(v))).collect()),
            other => other,
        }
    }

    #[test]
    fn keeps_duplicates_in_document_order() {
        let v = strip_raw(parse_str(r#"{"b": 1, "a": [true, null, "x"], "b": 2.5e1}"#).unwrap());
        assert_eq!(
            v,
            Value::Map(vec![
                ("b".into(), Value::Number("1".into())),
                (
                    "a".into(),
                    Value::Seq(vec![Value::Bool(true), Value::Null, s("x")])
                ),
                ("b".into(), Value::Number("2.5e1".into())),
            ])
        );
    }

    #[test]
    fn strings_decode_like_go() {
        let v = parse_str(r#"{"k": "a\u00e9\n\/\ud83d\ude00\ud800x"}"#).unwrap();
        let Some(Value::Str(st)) = v.get("k") else {
            panic!("{v:?}")
        };
        assert_eq!(st.text, "aé\n/😀\u{fffd}x");
        assert_eq!(
            st.raw.as_deref(),
            Some(br"a\u00e9\n\/\ud83d\ude00\ud800x".as_slice())
        );
        // Invalid UTF-8 inside a string becomes U+FFFD, as in Go.
        let v = parse(b"{\"k\": \"a\xffb\"}", &mut Budget::new()).unwrap();
        assert_eq!(strip_raw(v).get("k"), Some(&s("a\u{fffd}b")));
        // A lone high surrogate before another escape keeps that escape.
        let v = parse_str(r#"{"k": "\ud800\u0041"}"#).unwrap();
        assert_eq!(strip_raw(v).get("k"), Some(&s("\u{fffd}A")));
    }

    #[test]
    fn rejects_what_go_rejects() {
        for bad in [
            "{",
            "{\"a\" 1}",
            "{\"a\": 1,}",
            "{\"a\": [1,]}",
            "{\"a\": 01}",
            "{\"a\": 1.}",
            "{\"a\": .5}",
            "{\"a\": +1}",
            "{\"a\": 1e}",
            "{\"a\": True}",
            "{\"a\": nul}",
            "{\"a\": \"\t\"}",
            "{\"a\": \"\\x\"}",
            "{\"a\": \"\\u12G4\"}",
            "{a: 1}",
            "{'a': 1}",
            "{\"a\": 1} x",
            "{\"a\": 1}{}",
            "{\"a\": NaN}",
        ] {
            assert!(
                matches!(parse_str(bad), Err(ConfigError::Json { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn errors_have_positions() {
        let err = parse_str("{\n  \"a\": 1,\n  \"b\": x\n}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 3, column 8: invalid character 'x' looking for the beginning of a value"
        );
        let err = parse_str("{\"a\": ").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid JSON at line 1, column 7: unexpected end of JSON input"
        );
    }

    #[test]
    fn depth_is_bounded() {
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse_str(&ok).is_ok());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(matches!(
            parse_str(&deep),
            Err(ConfigError::TooDeep { max: 64 })
        ));
        // A huge nesting fails fast, without recursing through it.
        let huge = "[".repeat(1 << 20);
        assert!(matches!(parse_str(&huge), Err(ConfigError::TooDeep { .. })));
    }
}
