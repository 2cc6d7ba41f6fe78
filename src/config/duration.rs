//! Go's `time.ParseDuration` and `time.Duration.String`, to the byte.
//!
//! `resyncInterval` is written in Go's duration syntax and upstream reports
//! Go's own error texts, so both directions are ported rather than
//! approximated: the grammar (optional sign, then numbers with optional
//! fraction and a unit from `ns us µs μs ms s m h`, or a lone `0`), the
//! overflow rules, the float arithmetic for fractions, the error wording and
//! Go's quoting of the offending text (non-ASCII bytes as `\xNN`). Values are
//! nanoseconds in an `i64`, like Go's `Duration`.

use std::fmt::Write as _;

use thiserror::Error;

use super::gostr;

/// A duration that Go's `time.ParseDuration` rejects; the text is Go's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct DurationError(String);

/// Parse `s` as Go's `time.ParseDuration` does, into nanoseconds.
pub fn parse(s: &str) -> Result<i64, DurationError> {
    parse_bytes(s.as_bytes())
}

const TWO_63: u64 = 1 << 63;

/// Nanoseconds per unit, for the unit names Go accepts.
fn unit_nanos(unit: &[u8]) -> Option<u64> {
    Some(match unit {
        b"ns" => 1,
        // "us", "µs" (U+00B5 micro sign), "μs" (U+03BC Greek mu)
        b"us" | b"\xc2\xb5s" | b"\xce\xbcs" => 1_000,
        b"ms" => 1_000_000,
        b"s" => 1_000_000_000,
        b"m" => 60_000_000_000,
        b"h" => 3_600_000_000_000,
        _ => return None,
    })
}

/// The same as [`parse`], on bytes that need not be UTF-8 (upstream hands
/// the raw bytes of a JSON string to the parser).
pub(crate) fn parse_bytes(orig: &[u8]) -> Result<i64, DurationError> {
    let invalid = || DurationError(format!("time: invalid duration {}", quote(orig)));
    let mut s = orig;
    let mut neg = false;
    if let Some(&c @ (b'-' | b'+')) = s.first() {
        neg = c == b'-';
        s = &s[1..];
    }
    if s == b"0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while let Some(&first) = s.first() {
        if !(first == b'.' || first.is_ascii_digit()) {
            return Err(invalid());
        }
        let before = s.len();
        let (whole, rest) = leading_int(s).ok_or_else(invalid)?;
        s = rest;
        let pre = before != s.len();

        let (mut frac, mut scale, mut post) = (0u64, 1f64, false);
        if s.first() == Some(&b'.') {
            s = &s[1..];
            let before = s.len();
            (frac, scale, s) = leading_fraction(s);
            post = before != s.len();
        }
        if !pre && !post {
            return Err(invalid());
        }

        let unit_len = s
            .iter()
            .position(|&c| c == b'.' || c.is_ascii_digit())
            .unwrap_or(s.len());
        if unit_len == 0 {
            return Err(DurationError(format!(
                "time: missing unit in duration {}",
                quote(orig)
            )));
        }
        let (unit_text, rest) = s.split_at(unit_len);
        s = rest;
        let Some(unit) = unit_nanos(unit_text) else {
            return Err(DurationError(format!(
                "time: unknown unit {} in duration {}",
                quote(unit_text),
                quote(orig)
            )));
        };
        if whole > TWO_63 / unit {
            return Err(invalid());
        }
        let mut v = whole * unit;
        if frac > 0 {
            // Go computes the fraction in float64 (nanosecond-exact for
            // every unit); the same IEEE operations give the same result.
            v += (frac as f64 * (unit as f64 / scale)) as u64;
            if v > TWO_63 {
                return Err(invalid());
            }
        }
        // Go adds in uint64 without an overflow check here (both terms are at
        // most 2^63, so only exactly 2^64 can wrap, to 0); keep that.
        total = total.wrapping_add(v);
        if total > TWO_63 {
            return Err(invalid());
        }
    }
    if neg {
        // -Duration(d): 2^63 becomes i64::MIN, as in Go.
        return Ok((total as i64).wrapping_neg());
    }
    i64::try_from(total).map_err(|_| invalid())
}

/// Consume leading decimal digits; `None` on overflow past 2^63.
fn leading_int(s: &[u8]) -> Option<(u64, &[u8])> {
    let mut x: u64 = 0;
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        if x > TWO_63 / 10 {
            return None;
        }
        x = x * 10 + u64::from(c - b'0');
        if x > TWO_63 {
            return None;
        }
        i += 1;
    }
    Some((x, &s[i..]))
}

/// Consume leading fraction digits, keeping as many as fit (no error).
fn leading_fraction(s: &[u8]) -> (u64, f64, &[u8]) {
    let mut x: u64 = 0;
    let mut scale = 1f64;
    let mut overflow = false;
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if !c.is_ascii_digit() {
            break;
        }
        i += 1;
        if overflow {
            continue;
        }
        if x > (TWO_63 - 1) / 10 {
            overflow = true;
            continue;
        }
        let y = x * 10 + u64::from(c - b'0');
        if y > TWO_63 {
            overflow = true;
            continue;
        }
        x = y;
        scale *= 10.0;
    }
    (x, scale, &s[i..])
}

/// Go's private `quote` in package time: like `%q` for ASCII, but every byte
/// of a control or non-ASCII rune (or of invalid UTF-8) printed as `\xNN`.
fn quote(s: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut i = 0;
    while i < s.len() {
        let (rune, width) = gostr::decode_rune(&s[i..]);
        match rune {
            Some(c) if (' '..='\u{7f}').contains(&c) => {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            _ => {
                for b in &s[i..i + width] {
                    let _ = write!(out, "\\x{b:02x}");
                }
            }
        }
        i += width;
    }
    out.push('"');
    out
}

/// Go's `time.Duration.String`: `1h2m3.5s`, `1.5µs`, `0s`, `-1s`.
pub fn format(nanos: i64) -> String {
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();
    // Built back to front, like Go, then reversed.
    let mut rev: Vec<char> = Vec::with_capacity(32);
    if u < 1_000_000_000 {
        // Under a second: one smaller unit with a fraction, e.g. 1.2ms.
        rev.push('s');
        let prec = match u {
            0 => return "0s".to_owned(),
            1..=999 => {
                rev.push('n');
                0
            }
            1_000..=999_999 => {
                rev.push('µ');
                3
            }
            _ => {
                rev.push('m');
                6
            }
        };
        u = push_frac(&mut rev, u, prec);
        push_int(&mut rev, u);
    } else {
        rev.push('s');
        u = push_frac(&mut rev, u, 9);
        push_int(&mut rev, u % 60);
        u /= 60;
        if u > 0 {
            rev.push('m');
            push_int(&mut rev, u % 60);
            u /= 60;
            // Hours are the largest unit: days vary in length.
            if u > 0 {
                rev.push('h');
                push_int(&mut rev, u);
            }
        }
    }
    if neg {
        rev.push('-');
    }
    rev.iter().rev().collect()
}

/// Push the `prec` fractional digits of `v` (reversed), without trailing
/// zeros and without the point when they are all zero; return the whole part.
fn push_frac(rev: &mut Vec<char>, mut v: u64, prec: u32) -> u64 {
    let mut print = false;
    for _ in 0..prec {
        let digit = v % 10;
        print = print || digit != 0;
        if print {
            rev.push(digit_char(digit));
        }
        v /= 10;
    }
    if print {
        rev.push('.');
    }
    v
}

fn push_int(rev: &mut Vec<char>, mut v: u64) {
    loop {
        rev.push(digit_char(v % 10));
        v /= 10;
        if v == 0 {
            break;
        }
    }
}

fn digit_char(d: u64) -> char {
    char::from(b'0' + (d % 10) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: i64 = 1;
    const US: i64 = 1_000;
    const MS: i64 = 1_000_000;
    const S: i64 = 1_000_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;

    /// Go's parseDurationTests (src/time/time_test.go).
    #[test]
    fn parses_like_go() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("5s", 5 * S),
            ("30s", 30 * S),
            ("1478s", 1478 * S),
            ("-5s", -5 * S),
            ("+5s", 5 * S),
            ("-0", 0),
            ("+0", 0),
            ("5.0s", 5 * S),
            ("5.6s", 5 * S + 600 * MS),
            ("5.s", 5 * S),
            (".5s", 500 * MS),
            ("1.0s", S),
            ("1.00s", S),
            ("1.004s", S + 4 * MS),
            ("1.0040s", S + 4 * MS),
            ("100.00100s", 100 * S + MS),
            ("10ns", 10 * NS),
            ("11us", 11 * US),
            ("12µs", 12 * US),
            ("12μs", 12 * US),
            ("13ms", 13 * MS),
            ("14s", 14 * S),
            ("15m", 15 * M),
            ("16h", 16 * H),
            ("3h30m", 3 * H + 30 * M),
            ("10.5s4m", 4 * M + 10 * S + 500 * MS),
            ("-2m3.4s", -(2 * M + 3 * S + 400 * MS)),
            (
                "1h2m3s4ms5us6ns",
                H + 2 * M + 3 * S + 4 * MS + 5 * US + 6 * NS,
            ),
            ("39h9m14.425s", 39 * H + 9 * M + 14 * S + 425 * MS),
            ("52763797000ns", 52763797000),
            ("0.3333333333333333333h", 20 * M),
            ("9007199254740993ns", (1 << 53) + 1),
            ("9223372036854775807ns", i64::MAX),
            ("9223372036854775.807us", i64::MAX),
            ("9223372036s854ms775us807ns", i64::MAX),
            ("-9223372036854775808ns", i64::MIN),
            ("-9223372036854775.808us", i64::MIN),
            ("-9223372036s854ms775us808ns", i64::MIN),
            ("-2562047h47m16.854775808s", i64::MIN),
            ("0.100000000000000000000h", 6 * M),
            ("0.830103483285477580700h", 49 * M + 48 * S + 372539827),
        ];
        for &(input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input:?}");
        }
    }

    /// Go's parseDurationErrorTests: the error must contain the quoted text.
    #[test]
    fn rejects_like_go() {
        let cases: &[(&[u8], &str)] = &[
            (b"", r#""""#),
            (b"3", r#""3""#),
            (b"-", r#""-""#),
            (b"s", r#""s""#),
            (b".", r#"".""#),
            (b"-.", r#""-.""#),
            (b".s", r#"".s""#),
            (b"+.s", r#""+.s""#),
            (b"1d", r#""1d""#),
            (b"\x85\x85", r#""\x85\x85""#),
            (b"\xffff", r#""\xffff""#),
            (b"hello \xffff world", r#""hello \xffff world""#),
            ("\u{FFFD}".as_bytes(), r#""\xef\xbf\xbd""#),
            (
                "\u{FFFD} hello \u{FFFD} world".as_bytes(),
                r#""\xef\xbf\xbd hello \xef\xbf\xbd world""#,
            ),
            (b"9223372036854775810ns", r#""9223372036854775810ns""#),
            (b"9223372036854775808ns", r#""9223372036854775808ns""#),
            (b"-9223372036854775809ns", r#""-9223372036854775809ns""#),
            (b"9223372036854776us", r#""9223372036854776us""#),
            (b"3000000h", r#""3000000h""#),
            (b"9223372036854775.808us", r#""9223372036854775.808us""#),
            (
                b"9223372036854ms775us808ns",
                r#""9223372036854ms775us808ns""#,
            ),
        ];
        for &(input, expect) in cases {
            let err = parse_bytes(input).expect_err(&format!("{input:?} accepted"));
            assert!(err.to_string().contains(expect), "{input:?}: {err}");
        }
    }

    #[test]
    fn error_texts_are_gos() {
        let text = |s: &str| parse(s).unwrap_err().to_string();
        assert_eq!(text("abc"), r#"time: invalid duration "abc""#);
        assert_eq!(text("1"), r#"time: missing unit in duration "1""#);
        assert_eq!(text("1x"), r#"time: unknown unit "x" in duration "1x""#);
        assert_eq!(text("1d"), r#"time: unknown unit "d" in duration "1d""#);
        assert_eq!(text("1 s"), r#"time: unknown unit " s" in duration "1 s""#);
        assert_eq!(text("1s "), r#"time: unknown unit "s " in duration "1s ""#);
        assert_eq!(
            text("1µ"),
            r#"time: unknown unit "\xc2\xb5" in duration "1\xc2\xb5""#
        );
        assert_eq!(
            text("1\"x"),
            r#"time: unknown unit "\"x" in duration "1\"x""#
        );
        assert_eq!(
            text("1\ts"),
            r#"time: unknown unit "\x09s" in duration "1\x09s""#
        );
        assert_eq!(
            text("1h-1m"),
            r#"time: unknown unit "h-" in duration "1h-1m""#
        );
    }

    #[test]
    fn go_wraparound_quirk_is_kept() {
        // Two components of exactly 2^63 ns add up to 2^64, which Go's
        // uint64 sum wraps to 0 without an error.
        assert_eq!(parse("9223372036854775808ns9223372036854775808ns"), Ok(0));
    }

    /// Go's durationTests (String), each also negated.
    #[test]
    fn formats_like_go() {
        let cases: &[(&str, i64)] = &[
            ("0s", 0),
            ("1ns", NS),
            ("1.1µs", 1100 * NS),
            ("2.2ms", 2200 * US),
            ("3.3s", 3300 * MS),
            ("4m5s", 4 * M + 5 * S),
            ("4m5.001s", 4 * M + 5001 * MS),
            ("5h6m7.001s", 5 * H + 6 * M + 7001 * MS),
            ("8m0.000000001s", 8 * M + NS),
            ("2562047h47m16.854775807s", i64::MAX),
            ("-2562047h47m16.854775808s", i64::MIN),
        ];
        for &(want, d) in cases {
            assert_eq!(format(d), want, "{d}");
            if d > 0 {
                assert_eq!(format(-d), format!("-{want}"), "{}", -d);
            }
        }
        assert_eq!(format(60 * S), "1m0s");
        assert_eq!(format(H + 2 * M + 3500 * MS), "1h2m3.5s");
        assert_eq!(format(1500), "1.5µs");
        assert_eq!(format(-S), "-1s");
        assert_eq!(format(H), "1h0m0s");
    }

    #[test]
    fn round_trips() {
        for d in [
            0,
            1,
            999,
            1000,
            1001,
            999_999_999,
            S,
            61 * S + 5,
            H + 1,
            i64::MAX,
            i64::MIN,
            -1,
        ] {
            assert_eq!(parse(&format(d)), Ok(d), "{d}");
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = x as i64;
            assert_eq!(parse(&format(d)), Ok(d), "{d}");
        }
    }
}
