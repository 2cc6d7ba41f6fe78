//! YAML 1.1 scalar resolution as upstream's YAML library (go-yaml v2) does
//! it, and Go's JSON spelling of the numbers it yields.
//!
//! Plain scalars: `y Y yes Yes YES n N no No NO true True TRUE false False
//! FALSE on On ON off Off OFF` are booleans, `~ null Null NULL` and the empty
//! scalar are null, `.inf .nan` and friends are floats; a scalar starting
//! with a digit or sign is tried as a Go integer literal (underscores
//! dropped; `0x` hex, `0o`/leading-`0` octal, `0b` binary), then as an
//! unsigned one, then as a float (`1.5`, `1e3`, `08`); one starting with `.`
//! as a float. Everything else, and every quoted or block scalar, is a
//! string. Core-schema tags (`!!str !!int !!float !!bool !!null
//! !!timestamp`) force or check the type as go-yaml does; any other tag
//! leaves the text a string.

/// A resolved scalar.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    /// Only for values above `i64::MAX` (go-yaml yields `uint64` then).
    Uint(u64),
    Float(f64),
    Str(String),
}

const CORE_PREFIX: &str = "tag:yaml.org,2002:";

/// Resolve one scalar. `plain` is false for quoted and block scalars; `tag`
/// is the full tag (`tag:yaml.org,2002:int` for `!!int`). The error is
/// go-yaml's wording.
pub(crate) fn resolve(text: &str, plain: bool, tag: Option<&str>) -> Result<Scalar, String> {
    let wanted = match tag {
        None if !plain => return Ok(Scalar::Str(text.to_owned())),
        None => "",
        Some(full) => match full.strip_prefix(CORE_PREFIX) {
            Some(short @ ("str" | "bool" | "int" | "float" | "null" | "timestamp")) => short,
            Some("binary") => {
                return Err("the !!binary tag is not supported; write the value as text".into());
            }
            // Any other tag: go-yaml keeps the text as a string.
            _ => return Ok(Scalar::Str(text.to_owned())),
        },
    };
    if wanted == "str" {
        return Ok(Scalar::Str(text.to_owned()));
    }
    let (found, value) = resolve_implicit(text, wanted);
    match (wanted, found) {
        ("", _) => Ok(value),
        (w, f) if w == f => Ok(value),
        ("float", "int") => match value {
            Scalar::Int(i) => Ok(Scalar::Float(i as f64)),
            Scalar::Uint(u) => Ok(Scalar::Float(u as f64)),
            other => Ok(other),
        },
        (w, f) => Err(format!("cannot decode !!{f} `{text}` as a !!{w}")),
    }
}

/// What an untagged plain scalar resolves to, with go-yaml's short tag name.
fn resolve_implicit(text: &str, wanted: &str) -> (&'static str, Scalar) {
    let hint = match text.as_bytes().first() {
        None => b'N',
        Some(b'+' | b'-') => b'S',
        Some(b'0'..=b'9') => b'D',
        Some(b'y' | b'Y' | b'n' | b'N' | b't' | b'T' | b'f' | b'F' | b'o' | b'O' | b'~') => b'M',
        Some(b'.') => b'.',
        Some(_) => return ("str", Scalar::Str(text.to_owned())),
    };
    if let Some(known) = lookup(text) {
        return known;
    }
    match hint {
        b'.' => {
            if let Some(f) = parse_dot_float(text) {
                return ("float", Scalar::Float(f));
            }
        }
        b'D' | b'S' => {
            if (wanted.is_empty() || wanted == "timestamp") && looks_like_timestamp(text) {
                // go-yaml hands timestamps to an untyped target as the text.
                return ("timestamp", Scalar::Str(text.to_owned()));
            }
            let plain: String = text.chars().filter(|&c| c != '_').collect();
            if let Some(i) = parse_int_base0(&plain) {
                return ("int", Scalar::Int(i));
            }
            if let Some(u) = parse_uint_base0(&plain) {
                return ("int", Scalar::Uint(u));
            }
            if let Some(f) = Some(&plain)
                .filter(|p| is_yaml_float(p))
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|f| f.is_finite())
            {
                return ("float", Scalar::Float(f));
            }
            // go-yaml's own binary fallback, reached only by odd spellings
            // such as `0b-101` that Go's integer parser refuses.
            if let Some(rest) = plain.strip_prefix("0b") {
                if let Some(i) = parse_int_radix(rest, 2) {
                    return ("int", Scalar::Int(i));
                }
                if let Some(u) = parse_digits(rest, 2) {
                    return ("int", Scalar::Uint(u));
                }
            } else if let Some(i) = plain
                .strip_prefix("-0b")
                .and_then(|rest| parse_int_radix(&format!("-{rest}"), 2))
            {
                return ("int", Scalar::Int(i));
            }
        }
        _ => {}
    }
    ("str", Scalar::Str(text.to_owned()))
}

fn lookup(text: &str) -> Option<(&'static str, Scalar)> {
    Some(match text {
        "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
            ("bool", Scalar::Bool(true))
        }
        "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => {
            ("bool", Scalar::Bool(false))
        }
        "" | "~" | "null" | "Null" | "NULL" => ("null", Scalar::Null),
        ".nan" | ".NaN" | ".NAN" => ("float", Scalar::Float(f64::NAN)),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            ("float", Scalar::Float(f64::INFINITY))
        }
        "-.inf" | "-.Inf" | "-.INF" => ("float", Scalar::Float(f64::NEG_INFINITY)),
        _ => return None,
    })
}

/// go-yaml's quick test (`YYYY-`) before it tries its timestamp layouts.
/// Anything passing it and failing the layouts would end up a string too,
/// so the layouts themselves are not needed for an untyped target; only an
/// explicit `!!timestamp` tag is checked this loosely.
fn looks_like_timestamp(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() > 4 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// Go's `strconv.ParseInt(s, 0, 64)` on text without underscores.
pub(crate) fn parse_int_base0(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_uint_base0(body)?;
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Go's `strconv.ParseUint(s, 0, 64)` on text without underscores.
fn parse_uint_base0(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.is_empty() {
        return None;
    }
    if b[0] == b'0' {
        if b.len() >= 3 {
            let radix = match b[1].to_ascii_lowercase() {
                b'x' => Some(16),
                b'o' => Some(8),
                b'b' => Some(2),
                _ => None,
            };
            if let Some(radix) = radix {
                return parse_digits(&s[2..], radix);
            }
        }
        if b.len() == 1 {
            return Some(0);
        }
        return parse_digits(&s[1..], 8);
    }
    parse_digits(s, 10)
}

/// Go's `strconv.ParseInt(s, radix, 64)`: optional sign, then digits.
fn parse_int_radix(s: &str, radix: u32) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = parse_digits(body, radix)?;
    if neg {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// One or more digits of `radix`, fitting in a `u64`.
fn parse_digits(s: &str, radix: u32) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.chars().try_fold(0u64, |acc, c| {
        let digit = c.to_digit(radix)?;
        acc.checked_mul(u64::from(radix))?
            .checked_add(u64::from(digit))
    })
}

/// go-yaml's float pattern: `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`.
fn is_yaml_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if b.get(i) == Some(&b'.') {
            i += 1;
            digits(&mut i);
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Go's `strconv.ParseFloat` for text starting with `.`: `.5`, `.5e3`, with
/// underscores allowed only between digits.
fn parse_dot_float(s: &str) -> Option<f64> {
    if s.contains('_') && !underscores_ok(s) {
        return None;
    }
    let plain: String = s.chars().filter(|&c| c != '_').collect();
    let b = plain.as_bytes();
    let mut i = 1; // the '.'
    let frac_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    if i == frac_start {
        return None;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return None;
        }
    }
    if i != b.len() {
        return None;
    }
    plain.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// Go's rule for `_` in a decimal number: only between two digits.
fn underscores_ok(s: &str) -> bool {
    let mut prev_digit = false;
    let mut prev_underscore = false;
    for c in s.chars() {
        if c == '_' {
            if !prev_digit {
                return false;
            }
            prev_underscore = true;
            prev_digit = false;
        } else if c.is_ascii_digit() {
            prev_digit = true;
            prev_underscore = false;
        } else {
            if prev_underscore {
                return false;
            }
            prev_digit = false;
        }
    }
    !prev_underscore
}

/// How Go's `json.Marshal` writes a finite float64: shortest round-trip
/// digits, plain decimal unless below 1e-6 or from 1e21 on (then `1e+21`,
/// `1.5e-7`). An integral value in range is written as a plain integer
/// (`64`), which is why `cidrLimit: 64.0` is accepted upstream.
pub(crate) fn go_json_float(f: f64) -> String {
    let abs = f.abs();
    if abs != 0.0 && !(1e-6..1e21).contains(&abs) {
        let text = format!("{f:e}");
        match text.split_once('e') {
            Some((mantissa, exp)) if !exp.starts_with('-') => format!("{mantissa}e+{exp}"),
            _ => text,
        }
    } else {
        format!("{f}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Scalar {
        resolve(text, true, None).unwrap()
    }

    fn int_tag(text: &str) -> Result<Scalar, String> {
        resolve(text, true, Some("tag:yaml.org,2002:int"))
    }

    #[test]
    fn booleans() {
        for t in [
            "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON",
        ] {
            assert_eq!(plain(t), Scalar::Bool(true), "{t}");
        }
        for f in [
            "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF",
        ] {
            assert_eq!(plain(f), Scalar::Bool(false), "{f}");
        }
        for s in ["tRUE", "yES", "oN", "nO", "faLse", "OfF", "t", "f", "1"] {
            assert!(!matches!(plain(s), Scalar::Bool(_)), "{s}");
        }
        assert_eq!(plain("tRUE"), Scalar::Str("tRUE".into()));
    }

    #[test]
    fn nulls() {
        for n in ["", "~", "null", "Null", "NULL"] {
            assert_eq!(plain(n), Scalar::Null, "{n:?}");
        }
        assert_eq!(plain("nULL"), Scalar::Str("nULL".into()));
    }

    #[test]
    fn integers() {
        let cases: &[(&str, i64)] = &[
            ("0", 0),
            ("64", 64),
            ("+64", 64),
            ("-64", -64),
            ("0100", 64),
            ("0o100", 64),
            ("0x40", 64),
            ("0X40", 64),
            ("-0x40", -64),
            ("0b1000000", 64),
            ("-0b1000000", -64),
            ("1_000", 1000),
            ("0x_4_0", 64),
            ("0b-101", -5),
            ("9223372036854775807", i64::MAX),
            ("-9223372036854775808", i64::MIN),
        ];
        for &(text, want) in cases {
            assert_eq!(plain(text), Scalar::Int(want), "{text}");
        }
        assert_eq!(plain("9223372036854775808"), Scalar::Uint(1 << 63));
        assert_eq!(plain("18446744073709551615"), Scalar::Uint(u64::MAX));
    }

    #[test]
    fn floats() {
        let cases: &[(&str, f64)] = &[
            ("1.5", 1.5),
            ("64.0", 64.0),
            ("1e3", 1000.0),
            ("-1.5E-3", -0.0015),
            ("1.", 1.0),
            ("08", 8.0),
            ("09.5", 9.5),
            (".5", 0.5),
            (".5e1", 5.0),
            (".5_5", 0.55),
            ("-.5", -0.5),
            ("18446744073709551616", 18446744073709551616.0),
            ("1_0.5", 10.5),
        ];
        for &(text, want) in cases {
            assert_eq!(plain(text), Scalar::Float(want), "{text}");
        }
        assert_eq!(plain(".inf"), Scalar::Float(f64::INFINITY));
        assert_eq!(plain("-.Inf"), Scalar::Float(f64::NEG_INFINITY));
        assert!(matches!(plain(".nan"), Scalar::Float(f) if f.is_nan()));
        // Out of float64 range, or not Go float syntax: strings.
        for s in [
            "1e400", ".", ".e5", "._5", "1.2.3", "0x1p-2", ".iNf", "1e", "0x", "-", "+",
        ] {
            assert_eq!(plain(s), Scalar::Str(s.into()), "{s}");
        }
    }

    #[test]
    fn strings() {
        for s in [
            "10.0.0.0/8",
            "60s",
            "abc",
            "<<",
            "2001-12-14",
            "1:20",
            "0x1G",
            "_1",
        ] {
            assert_eq!(plain(s), Scalar::Str(s.into()), "{s}");
        }
        // Quoted and block scalars are strings unless tagged.
        assert_eq!(resolve("yes", false, None), Ok(Scalar::Str("yes".into())));
        assert_eq!(resolve("64", false, None), Ok(Scalar::Str("64".into())));
    }

    #[test]
    fn tags() {
        assert_eq!(int_tag("0x40"), Ok(Scalar::Int(64)));
        assert_eq!(
            resolve("64", false, Some("tag:yaml.org,2002:int")),
            Ok(Scalar::Int(64))
        );
        assert_eq!(
            int_tag("abc"),
            Err("cannot decode !!str `abc` as a !!int".into())
        );
        assert_eq!(
            int_tag("1.5"),
            Err("cannot decode !!float `1.5` as a !!int".into())
        );
        assert_eq!(
            resolve("64", true, Some("tag:yaml.org,2002:float")),
            Ok(Scalar::Float(64.0))
        );
        assert_eq!(
            resolve("64", true, Some("tag:yaml.org,2002:str")),
            Ok(Scalar::Str("64".into()))
        );
        assert_eq!(
            resolve("yes", false, Some("tag:yaml.org,2002:bool")),
            Ok(Scalar::Bool(true))
        );
        assert_eq!(
            resolve("", false, Some("tag:yaml.org,2002:null")),
            Ok(Scalar::Null)
        );
        assert_eq!(
            resolve("x", true, Some("tag:yaml.org,2002:null")),
            Err("cannot decode !!str `x` as a !!null".into())
        );
        assert_eq!(
            resolve("5", true, Some("!foo")),
            Ok(Scalar::Str("5".into()))
        );
        assert_eq!(resolve("5", true, Some("!")), Ok(Scalar::Str("5".into())));
        assert!(resolve("aGk=", true, Some("tag:yaml.org,2002:binary")).is_err());
    }

    #[test]
    fn go_json_float_spelling() {
        assert_eq!(go_json_float(64.0), "64");
        assert_eq!(go_json_float(64.5), "64.5");
        assert_eq!(go_json_float(-0.0), "-0");
        assert_eq!(go_json_float(1e20), "100000000000000000000");
        assert_eq!(go_json_float(1e21), "1e+21");
        assert_eq!(go_json_float(1.5e-7), "1.5e-7");
        assert_eq!(go_json_float(0.000001), "0.000001");
        assert_eq!(go_json_float(1.2345e-10), "1.2345e-10");
        assert_eq!(go_json_float(-3e300), "-3e+300");
    }
}
