//! Go's string conventions that leak into upstream's behaviour and messages:
//! `%q` quoting (`strconv.Quote`), `json.Marshal`'s string escaping, the
//! case folding `encoding/json` uses to match keys to fields, and UTF-8
//! decoding that, like Go, turns each invalid byte into U+FFFD.

use std::fmt::Write as _;

/// Decode one rune at the start of `s` the way Go's `utf8.DecodeRune` does:
/// `None` with width 1 for an invalid or truncated sequence. `s` is non-empty.
pub(crate) fn decode_rune(s: &[u8]) -> (Option<char>, usize) {
    let Some(&first) = s.first() else {
        return (None, 0);
    };
    if first < 0x80 {
        return (Some(char::from(first)), 1);
    }
    let width = match first {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (None, 1),
    };
    match s.get(..width).map(std::str::from_utf8) {
        Some(Ok(text)) => (text.chars().next(), width),
        _ => (None, 1),
    }
}

/// Go's `unicode.IsPrint` for a non-ASCII rune. Rust's debug escaping uses
/// the same definition (letters, marks, numbers, punctuation, symbols); the
/// leading `a` keeps it from escaping combining marks, which Go prints.
fn is_print_non_ascii(c: char) -> bool {
    let mut probe = String::with_capacity(5);
    probe.push('a');
    probe.push(c);
    probe.escape_debug().nth(1) != Some('\\')
}

/// Go's `strconv.Quote` (what `%q` prints for a string).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            '\0'..='\u{1f}' | '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            _ if is_print_non_ascii(c) => out.push(c),
            _ if u32::from(c) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            _ => {
                let _ = write!(out, "\\U{:08x}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// The body (without the surrounding quotes) of Go's `json.Marshal` of a
/// string: HTML-sensitive `<`, `>` and `&` escaped, control characters
/// escaped, U+2028 and U+2029 escaped.
pub(crate) fn json_string_body(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\u{1f}' | '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            _ => out.push(c),
        }
    }
    out
}

/// Fold a key the way `encoding/json` does before its case-insensitive field
/// match: upper-case ASCII, and map each other rune through Go's simple
/// lower-then-upper mapping. Only the results that can equal an ASCII field
/// name matter, so the four non-ASCII runes that fold to ASCII letters are
/// mapped and every other rune is kept as it is.
pub(crate) fn fold_name(key: &str) -> String {
    key.chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            // LATIN SMALL LETTER LONG S, DOTLESS I, CAPITAL I WITH DOT, KELVIN SIGN
            '\u{17f}' => 'S',
            '\u{131}' | '\u{130}' => 'I',
            '\u{212a}' => 'K',
            _ => c,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_matches_go() {
        assert_eq!(quote("abcdefg"), r#""abcdefg""#);
        assert_eq!(quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(quote("\n\t\r\u{7}\u{8}\u{c}\u{b}"), r#""\n\t\r\a\b\f\v""#);
        assert_eq!(quote("\u{1}\u{7f}"), r#""\x01\x7f""#);
        assert_eq!(quote("é✓"), "\"é✓\"");
        assert_eq!(quote("\u{a0}\u{ad}\u{feff}"), r#""\u00a0\u00ad\ufeff""#);
        assert_eq!(quote("e\u{301}"), "\"e\u{301}\"");
        assert_eq!(quote("\u{e0001}"), r#""\U000e0001""#);
        assert_eq!(quote("\u{fffd}"), "\"\u{fffd}\"");
    }

    #[test]
    fn json_body_matches_go_marshal() {
        assert_eq!(json_string_body("60s"), "60s");
        assert_eq!(json_string_body("<a&b>"), "\\u003ca\\u0026b\\u003e");
        assert_eq!(
            json_string_body("\"\\\n\u{1}\u{7f}"),
            "\\\"\\\\\\n\\u0001\u{7f}"
        );
        assert_eq!(json_string_body("\u{2028}µ"), "\\u2028µ");
    }

    #[test]
    fn fold_matches_go() {
        assert_eq!(fold_name("cidrLimit"), "CIDRLIMIT");
        assert_eq!(fold_name("cıdrLimit"), "CIDRLIMIT");
        assert_eq!(fold_name("nonMasqueradeCIDRſ"), "NONMASQUERADECIDRS");
        assert_eq!(fold_name("\u{212a}"), "K");
        assert_eq!(fold_name("é"), "é");
    }

    #[test]
    fn decode_rune_like_go() {
        assert_eq!(decode_rune(b"a"), (Some('a'), 1));
        assert_eq!(decode_rune("µs".as_bytes()), (Some('µ'), 2));
        assert_eq!(decode_rune(b"\xff"), (None, 1));
        assert_eq!(decode_rune(b"\xe2\x82"), (None, 1));
        assert_eq!(decode_rune(b"\xed\xa0\x80"), (None, 1)); // surrogate
        assert_eq!(decode_rune(b"\xc0\x80"), (None, 1)); // overlong
    }
}
