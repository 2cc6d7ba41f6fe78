//! Go's `strconv` grammar for the values that flags carry, and Go's `%q`.
//!
//! The upstream agent parses numbers and booleans with Go's `strconv`
//! (directly, through the `flag` package, or through klog), and its error
//! messages quote values with `%q`. A drop-in must accept the same spellings
//! (`+5`, `0x10`, `1_000` where Go takes them, `TRUE` but not `yes`) and
//! print the same messages, so this module restates those rules. Everything
//! works on bytes, as Go does, and never panics on any input.

use std::fmt;

/// Why a number did not parse; the wording is Go's `strconv.NumError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumErrorKind {
    Syntax,
    Range,
}

/// Go's `*strconv.NumError`: which function failed, on what text, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumError {
    func: &'static str,
    num: String,
    pub kind: NumErrorKind,
}

impl NumError {
    fn new(func: &'static str, num: &str, kind: NumErrorKind) -> Self {
        NumError {
            func,
            num: num.to_owned(),
            kind,
        }
    }

    /// The text Go's `flag` package puts in place of a `NumError` for its
    /// own number flags (it hides the strconv detail behind two sentinels).
    pub fn flag_text(&self) -> &'static str {
        match self.kind {
            NumErrorKind::Syntax => "parse error",
            NumErrorKind::Range => "value out of range",
        }
    }
}

impl fmt::Display for NumError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let why = match self.kind {
            NumErrorKind::Syntax => "invalid syntax",
            NumErrorKind::Range => "value out of range",
        };
        write!(
            f,
            "strconv.{}: parsing {}: {why}",
            self.func,
            quote(&self.num)
        )
    }
}

/// Go's ASCII-only case fold used by strconv (`c | ('x' - 'X')`).
fn lower(c: u8) -> u8 {
    c | (b'x' - b'X')
}

/// Go's `strconv.ParseUint(s, base, bit_size)`. `base` is 0 (prefix decides:
/// `0x`, `0o`, `0b`, a bare leading `0` for octal; underscores allowed) or
/// 2..=36. Like Go, the first problem met from the left decides the error.
pub fn parse_uint(s: &str, base: u32, bit_size: u32) -> Result<u64, NumError> {
    const FUNC: &str = "ParseUint";
    let syntax = || NumError::new(FUNC, s, NumErrorKind::Syntax);
    let range = || NumError::new(FUNC, s, NumErrorKind::Range);

    let bytes = s.as_bytes();
    let Some(&first) = bytes.first() else {
        return Err(syntax());
    };
    let base0 = base == 0;
    let (base, digits): (u64, &[u8]) = if base0 {
        if first == b'0' {
            match bytes.get(1).map(|&c| lower(c)) {
                Some(b'b') if bytes.len() >= 3 => (2, &bytes[2..]),
                Some(b'o') if bytes.len() >= 3 => (8, &bytes[2..]),
                Some(b'x') if bytes.len() >= 3 => (16, &bytes[2..]),
                _ => (8, &bytes[1..]),
            }
        } else {
            (10, bytes)
        }
    } else if (2..=36).contains(&base) {
        (u64::from(base), bytes)
    } else {
        // Go reports an invalid base as its own error kind; no caller here
        // passes one, so treat it as unparsable rather than panic.
        return Err(syntax());
    };

    let max_val: u64 = if bit_size >= 64 {
        u64::MAX
    } else {
        (1u64 << bit_size) - 1
    };
    // The smallest n for which n * base overflows u64.
    let cutoff = u64::MAX / base + 1;

    let mut n: u64 = 0;
    let mut underscores = false;
    for &c in digits {
        let d = match c {
            b'_' if base0 => {
                underscores = true;
                continue;
            }
            b'0'..=b'9' => u64::from(c - b'0'),
            _ if lower(c).is_ascii_lowercase() => u64::from(lower(c) - b'a') + 10,
            _ => return Err(syntax()),
        };
        if d >= base {
            return Err(syntax());
        }
        if n >= cutoff {
            return Err(range());
        }
        n *= base;
        match n.checked_add(d) {
            Some(n1) if n1 <= max_val => n = n1,
            _ => return Err(range()),
        }
    }
    if underscores && !underscore_ok(s) {
        return Err(syntax());
    }
    Ok(n)
}

/// Go's `strconv.ParseInt(s, base, bit_size)`: an optional `+` or `-`, then
/// `parse_uint`, then the signed range of `bit_size` bits.
pub fn parse_int(s: &str, base: u32, bit_size: u32) -> Result<i64, NumError> {
    const FUNC: &str = "ParseInt";
    if s.is_empty() {
        return Err(NumError::new(FUNC, s, NumErrorKind::Syntax));
    }
    let (neg, magnitude) = match s.as_bytes()[0] {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let un = match parse_uint(magnitude, base, bit_size) {
        Ok(un) => un,
        // An overflow of the magnitude is still reported as ParseInt's range
        // error below; anything else is a syntax error on the whole text.
        Err(e) if e.kind == NumErrorKind::Range => u64::MAX,
        Err(_) => return Err(NumError::new(FUNC, s, NumErrorKind::Syntax)),
    };
    let bit_size = bit_size.clamp(1, 64);
    let cutoff: u64 = 1u64 << (bit_size - 1);
    if (!neg && un >= cutoff) || (neg && un > cutoff) {
        return Err(NumError::new(FUNC, s, NumErrorKind::Range));
    }
    // In range: |value| <= 2^63, so the i128 detour cannot overflow.
    let value = if neg { -i128::from(un) } else { i128::from(un) };
    i64::try_from(value).map_err(|_| NumError::new(FUNC, s, NumErrorKind::Range))
}

/// Go's `strconv.Atoi` on a 64-bit platform: `ParseInt(s, 10, 64)` whose
/// errors name `Atoi`.
pub fn atoi(s: &str) -> Result<i64, NumError> {
    parse_int(s, 10, 64).map_err(|e| NumError { func: "Atoi", ..e })
}

/// Go's `strconv.ParseBool`: exactly these twelve spellings.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Go's rule for where `_` may stand in a base-0 number literal: only
/// between digits, or between a base prefix and a digit.
fn underscore_ok(s: &str) -> bool {
    let mut s = s.as_bytes();
    if let Some((b'-' | b'+', rest)) = s.split_first() {
        s = rest;
    }
    // What was seen last: '^' start, '0' digit or prefix, '_' underscore,
    // '!' anything else.
    let mut saw = b'^';
    let mut i = 0;
    let mut hex = false;
    if s.len() >= 2 && s[0] == b'0' && matches!(lower(s[1]), b'b' | b'o' | b'x') {
        i = 2;
        saw = b'0';
        hex = lower(s[1]) == b'x';
    }
    for &c in &s[i..] {
        if c.is_ascii_digit() || (hex && (b'a'..=b'f').contains(&lower(c))) {
            saw = b'0';
            continue;
        }
        if c == b'_' {
            if saw != b'0' {
                return false;
            }
            saw = b'_';
            continue;
        }
        if saw == b'_' {
            return false;
        }
        saw = b'!';
    }
    saw != b'_'
}

/// Go's `strconv.Quote` (what `%q` prints): one implementation serves the
/// flag errors here and the config errors.
pub use crate::config::gostr::quote;

#[cfg(test)]
mod tests {
    use super::*;

    fn err(r: Result<impl fmt::Debug, NumError>) -> String {
        match r {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parse_int_base10_like_go() {
        assert_eq!(parse_int("2", 10, 32), Ok(2));
        assert_eq!(parse_int("+3", 10, 32), Ok(3));
        assert_eq!(parse_int("-1", 10, 32), Ok(-1));
        assert_eq!(parse_int("007", 10, 32), Ok(7));
        assert_eq!(parse_int("2147483647", 10, 32), Ok(2147483647));
        assert_eq!(parse_int("-2147483648", 10, 32), Ok(-2147483648));
        assert_eq!(
            err(parse_int("2147483648", 10, 32)),
            "strconv.ParseInt: parsing \"2147483648\": value out of range"
        );
        assert_eq!(
            err(parse_int("0x10", 10, 32)),
            "strconv.ParseInt: parsing \"0x10\": invalid syntax"
        );
        assert_eq!(
            err(parse_int("", 10, 32)),
            "strconv.ParseInt: parsing \"\": invalid syntax"
        );
        assert_eq!(
            err(parse_int("-", 10, 32)),
            "strconv.ParseInt: parsing \"-\": invalid syntax"
        );
        assert_eq!(
            err(parse_int("1_000", 10, 32)),
            "strconv.ParseInt: parsing \"1_000\": invalid syntax"
        );
        assert_eq!(
            err(parse_int(" 1", 10, 32)),
            "strconv.ParseInt: parsing \" 1\": invalid syntax"
        );
        // Go stops at the first problem from the left: overflow wins here.
        assert_eq!(
            err(parse_int("99999999999999999999x", 10, 64)),
            "strconv.ParseInt: parsing \"99999999999999999999x\": value out of range"
        );
    }

    #[test]
    fn parse_int_64_bit_edges() {
        assert_eq!(parse_int("9223372036854775807", 10, 64), Ok(i64::MAX));
        assert_eq!(parse_int("-9223372036854775808", 10, 64), Ok(i64::MIN));
        assert_eq!(
            parse_int("9223372036854775808", 10, 64).map_err(|e| e.kind),
            Err(NumErrorKind::Range)
        );
    }

    #[test]
    fn parse_uint_base0_like_go() {
        assert_eq!(parse_uint("1800", 0, 64), Ok(1800));
        assert_eq!(parse_uint("0x10", 0, 64), Ok(16));
        assert_eq!(parse_uint("0X1f", 0, 64), Ok(31));
        assert_eq!(parse_uint("0o17", 0, 64), Ok(15));
        assert_eq!(parse_uint("017", 0, 64), Ok(15));
        assert_eq!(parse_uint("0b101", 0, 64), Ok(5));
        assert_eq!(parse_uint("0", 0, 64), Ok(0));
        assert_eq!(parse_uint("1_000", 0, 64), Ok(1000));
        assert_eq!(parse_uint("0x_1", 0, 64), Ok(1));
        assert_eq!(parse_uint("18446744073709551615", 0, 64), Ok(u64::MAX));
        for bad in ["", "+1", "-1", "08", "0x", "1__0", "_1", "1_", "abc", "1 "] {
            assert_eq!(
                parse_uint(bad, 0, 64).map_err(|e| e.kind),
                Err(NumErrorKind::Syntax),
                "{bad:?}"
            );
        }
        assert_eq!(
            err(parse_uint("18446744073709551616", 0, 64)),
            "strconv.ParseUint: parsing \"18446744073709551616\": value out of range"
        );
        assert_eq!(
            parse_uint("256", 10, 8).map_err(|e| e.kind),
            Err(NumErrorKind::Range)
        );
    }

    #[test]
    fn atoi_names_itself() {
        assert_eq!(atoi("+80"), Ok(80));
        assert_eq!(
            err(atoi("x")),
            "strconv.Atoi: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            err(atoi("99999999999999999999")),
            "strconv.Atoi: parsing \"99999999999999999999\": value out of range"
        );
    }

    #[test]
    fn flag_package_hides_strconv_detail() {
        let e = parse_uint("x", 0, 64).unwrap_err();
        assert_eq!(e.flag_text(), "parse error");
        let e = parse_uint("99999999999999999999", 0, 64).unwrap_err();
        assert_eq!(e.flag_text(), "value out of range");
    }

    #[test]
    fn bool_spellings_are_go_s_twelve() {
        for s in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(s), Some(true), "{s}");
        }
        for s in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(s), Some(false), "{s}");
        }
        for s in [
            "", "yes", "no", "on", "off", "y", "tRUE", "truE", " true", "2",
        ] {
            assert_eq!(parse_bool(s), None, "{s}");
        }
    }

    #[test]
    fn quote_matches_go_percent_q() {
        assert_eq!(quote("x"), r#""x""#);
        assert_eq!(quote(""), r#""""#);
        assert_eq!(quote(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(
            quote("a\tb\nc\r\u{7}\u{8}\u{b}\u{c}"),
            r#""a\tb\nc\r\a\b\v\f""#
        );
        assert_eq!(quote("\0\u{1b}\u{7f}"), r#""\x00\x1b\x7f""#);
        assert_eq!(quote("héllo ☃"), "\"héllo ☃\"");
        assert_eq!(quote("\u{a0}\u{200b}\u{feff}"), r#""\u00a0\u200b\ufeff""#);
        assert_eq!(quote("\u{85}"), r#""\u0085""#);
        assert_eq!(quote("\u{10ffff}"), r#""\U0010ffff""#);
    }
}
