//! `--configmap-selector=NAMESPACE/LABELSELECTOR`: a label selector parsed
//! into typed requirements with the API server's own grammar and rules, so a
//! typo fails at startup instead of as a watch that never matches.
//!
//! What must stay true:
//! - Only text that parses here reaches the API, and only as the canonical
//!   form ([`LabelSelector`]'s `Display`), percent-encoded
//!   ([`LabelSelector::query_value`]), never as the flag's raw text.
//! - [`LabelSelector::matches`] is the server's matching, so the watch can
//!   check every object the server sends (a server could send anything).
//! - An empty selector is refused: it would select every ConfigMap of the
//!   namespace.
//!
//! The grammar is `k8s.io/apimachinery/pkg/labels`' for list and watch:
//! requirements joined by `,` (AND), each `k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k` or `!k`, with spaces allowed between
//! tokens. Keys are an optional DNS-subdomain prefix and `/`, then a name of
//! at most 63 characters; values have at most 63. Both are `[A-Za-z0-9._-]`,
//! beginning and ending alphanumeric (a value may be empty).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use super::names::check_label;

/// A label's key: `[prefix/]name`, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelKey(String);

impl LabelKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A label's value (may be empty), checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabelValue(String);

impl fmt::Display for LabelValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Requirement {
    Exists(LabelKey),
    NotExists(LabelKey),
    Equals(LabelKey, LabelValue),
    NotEquals(LabelKey, LabelValue),
    In(LabelKey, BTreeSet<LabelValue>),
    NotIn(LabelKey, BTreeSet<LabelValue>),
}

impl Requirement {
    fn key(&self) -> &LabelKey {
        match self {
            Requirement::Exists(k)
            | Requirement::NotExists(k)
            | Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _) => k,
        }
    }

    /// The server's rule: `!=` and `notin` also match an absent key.
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &LabelKey| labels.get(k.as_str()).map(String::as_str);
        match self {
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
            Requirement::Equals(k, v) => get(k) == Some(v.0.as_str()),
            Requirement::NotEquals(k, v) => get(k) != Some(v.0.as_str()),
            Requirement::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s.0 == v)),
            Requirement::NotIn(k, set) => !get(k).is_some_and(|v| set.iter().any(|s| s.0 == v)),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |f: &mut fmt::Formatter<'_>, values: &BTreeSet<LabelValue>| {
            let joined: Vec<&str> = values.iter().map(|v| v.0.as_str()).collect();
            write!(f, "({})", joined.join(","))
        };
        match self {
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::NotExists(k) => write!(f, "!{k}"),
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, values) => {
                write!(f, "{k} in ")?;
                set(f, values)
            }
            Requirement::NotIn(k, values) => {
                write!(f, "{k} notin ")?;
                set(f, values)
            }
        }
    }
}

/// A parsed label selector: at least one requirement, all of which must
/// hold. Its `Display` is the canonical form (requirements sorted, sets
/// sorted, `==` written `=`), which parses back to the same value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// The canonical form, percent-encoded for the `labelSelector` query
    /// parameter (everything but RFC 3986's unreserved characters).
    pub fn query_value(&self) -> String {
        percent_encode(&self.to_string())
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.0
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The tokens of the selector grammar (the server's lexer).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Comma,
    Open,
    Close,
    Not,
    Equals,
    DoubleEquals,
    NotEquals,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Word(w) => write!(f, "{w:?}"),
            Token::Comma => f.write_str("','"),
            Token::Open => f.write_str("'('"),
            Token::Close => f.write_str("')'"),
            Token::Not => f.write_str("'!'"),
            Token::Equals => f.write_str("'='"),
            Token::DoubleEquals => f.write_str("'=='"),
            Token::NotEquals => f.write_str("'!='"),
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((at, c)) = chars.next() {
        let token = match c {
            ' ' | '\t' => continue,
            ',' => Token::Comma,
            '(' => Token::Open,
            ')' => Token::Close,
            '!' if chars.next_if(|&(_, n)| n == '=').is_some() => Token::NotEquals,
            '!' => Token::Not,
            '=' if chars.next_if(|&(_, n)| n == '=').is_some() => Token::DoubleEquals,
            '=' => Token::Equals,
            c if is_word_char(c) => {
                let mut word = String::from(c);
                while let Some((_, n)) = chars.next_if(|&(_, n)| is_word_char(n)) {
                    word.push(n);
                }
                Token::Word(word)
            }
            c => {
                return Err(format!(
                    "unexpected character {c:?} at byte {at} (only letters, digits, '-', '_', '.', '/', \
                     ',', '(', ')', '!', '=' and spaces belong in a label selector)"
                ));
            }
        };
        tokens.push(token);
    }
    Ok(tokens)
}

fn is_alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

/// The name part of a key, or a value: `[A-Za-z0-9._-]`, alphanumeric at
/// both ends, at most 63 characters.
fn check_name(what: &str, text: &str) -> Result<(), String> {
    if text.len() > 63 {
        return Err(format!("{what} {text:?} must be at most 63 characters"));
    }
    let ok = text
        .chars()
        .all(|c| is_alnum(c) || matches!(c, '-' | '_' | '.'))
        && text.starts_with(is_alnum)
        && text.ends_with(is_alnum);
    if !ok {
        return Err(format!(
            "{what} {text:?} must consist of alphanumeric characters, '-', '_' or '.', \
             and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

fn parse_key(text: &str) -> Result<LabelKey, String> {
    let (prefix, name) = match text.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, text),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && part.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && part.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            });
        if !ok {
            return Err(format!(
                "the prefix {prefix:?} of label key {text:?} must be a DNS subdomain: at most 253 \
                 lower case alphanumeric characters, '-' or '.', each part starting and ending \
                 with an alphanumeric character"
            ));
        }
    }
    if name.is_empty() {
        return Err(format!("label key {text:?} has no name"));
    }
    check_name(&format!("the name of label key {text:?},"), name)?;
    Ok(LabelKey(text.to_owned()))
}

fn parse_value(text: &str) -> Result<LabelValue, String> {
    if !text.is_empty() {
        check_name("label value", text)?;
    }
    Ok(LabelValue(text.to_owned()))
}

/// A cursor over the tokens of one selector.
struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        let negated = self.peek() == Some(&Token::Not);
        if negated {
            self.at += 1;
        }
        let key = match self.next() {
            Some(Token::Word(word)) => parse_key(&word)?,
            Some(other) => return Err(format!("expected a label key, found {other}")),
            None => return Err("expected a label key, found the end".into()),
        };
        if negated {
            return match self.peek() {
                None | Some(Token::Comma) => Ok(Requirement::NotExists(key)),
                Some(other) => Err(format!(
                    "expected ',' or the end after !{key}, found {other}"
                )),
            };
        }
        match self.next() {
            None => Ok(Requirement::Exists(key)),
            Some(Token::Comma) => {
                self.at -= 1;
                Ok(Requirement::Exists(key))
            }
            Some(Token::Equals | Token::DoubleEquals) => {
                Ok(Requirement::Equals(key, self.value()?))
            }
            Some(Token::NotEquals) => Ok(Requirement::NotEquals(key, self.value()?)),
            Some(Token::Word(op)) if op == "in" => Ok(Requirement::In(key, self.set()?)),
            Some(Token::Word(op)) if op == "notin" => Ok(Requirement::NotIn(key, self.set()?)),
            Some(other) => Err(format!(
                "expected one of '=', '==', '!=', 'in', 'notin', ',' or the end after {key}, found {other}"
            )),
        }
    }

    /// A value after `=`, `==` or `!=`; nothing (the end, a comma) is the
    /// empty value, as the server reads it.
    fn value(&mut self) -> Result<LabelValue, String> {
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(LabelValue(String::new())),
            Some(Token::Word(word)) => {
                self.at += 1;
                parse_value(&word)
            }
            Some(other) => Err(format!("expected a label value, found {other}")),
        }
    }

    /// `(v1, v2, …)`, not empty; an element left out (`(a,)`) is the empty
    /// value.
    fn set(&mut self) -> Result<BTreeSet<LabelValue>, String> {
        match self.next() {
            Some(Token::Open) => {}
            Some(other) => return Err(format!("expected '(' after in or notin, found {other}")),
            None => return Err("expected '(' after in or notin, found the end".into()),
        }
        if self.peek() == Some(&Token::Close) {
            return Err("the set of values of in or notin must not be empty".into());
        }
        let mut values = BTreeSet::new();
        loop {
            values.insert(match self.peek().cloned() {
                Some(Token::Word(word)) => {
                    self.at += 1;
                    parse_value(&word)?
                }
                Some(Token::Comma | Token::Close) => LabelValue(String::new()),
                Some(other) => {
                    return Err(format!("expected a label value in the set, found {other}"));
                }
                None => return Err("the set is not closed with ')'".into()),
            });
            match self.next() {
                Some(Token::Comma) => {}
                Some(Token::Close) => return Ok(values),
                Some(other) => {
                    return Err(format!("expected ',' or ')' in the set, found {other}"));
                }
                None => return Err("the set is not closed with ')'".into()),
            }
        }
    }
}

impl FromStr for LabelSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let tokens = lex(text)?;
        if tokens.is_empty() {
            return Err("the label selector must not be empty (it would select every ConfigMap of the namespace)".into());
        }
        let mut parser = Parser { tokens, at: 0 };
        let mut requirements = Vec::new();
        loop {
            requirements.push(parser.requirement()?);
            match parser.next() {
                None => break,
                Some(Token::Comma) => {}
                Some(other) => return Err(format!("expected ',' or the end, found {other}")),
            }
        }
        // The server sorts by key; values and duplicates as well here, so
        // one selection has one spelling.
        requirements.sort_by(|a, b| a.key().cmp(b.key()).then_with(|| a.cmp(b)));
        requirements.dedup();
        Ok(LabelSelector(requirements))
    }
}

/// `NAMESPACE/LABELSELECTOR`: every ConfigMap of the namespace whose labels
/// the selector matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapSelector {
    namespace: String,
    selector: LabelSelector,
}

impl ConfigMapSelector {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn selector(&self) -> &LabelSelector {
        &self.selector
    }
}

impl fmt::Display for ConfigMapSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.selector)
    }
}

impl FromStr for ConfigMapSelector {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        // A namespace has no '/'; a label key may.
        let Some((namespace, selector)) = text.split_once('/') else {
            return Err("must be NAMESPACE/LABELSELECTOR".into());
        };
        check_label("namespace", namespace)?;
        Ok(ConfigMapSelector {
            namespace: namespace.to_owned(),
            selector: selector.parse()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn canonical(text: &str) -> String {
        text.parse::<LabelSelector>()
            .unwrap_or_else(|e| panic!("{text}: {e}"))
            .to_string()
    }

    #[test]
    fn every_operator_parses_to_its_canonical_form() {
        for (text, expected) in [
            ("app=ip-masq", "app=ip-masq"),
            ("app == ip-masq", "app=ip-masq"),
            ("app!=x", "app!=x"),
            ("tier in (b, a,c)", "tier in (a,b,c)"),
            ("tier notin (a)", "tier notin (a)"),
            ("tier in(a,b)", "tier in (a,b)"),
            (
                "ip-masq-agent.example.com/part",
                "ip-masq-agent.example.com/part",
            ),
            ("!legacy", "!legacy"),
            (" ! legacy ", "!legacy"),
            ("z=1,a=2,m", "a=2,m,z=1"),
            ("a=", "a="),
            ("a=,b", "a=,b"),
            ("a in (x,)", "a in (,x)"),
            ("a=1,a=1", "a=1"),
            ("A_b.C-9=Val_1.x-Y", "A_b.C-9=Val_1.x-Y"),
        ] {
            assert_eq!(canonical(text), expected, "{text}");
            // The canonical form is a fixed point.
            assert_eq!(canonical(expected), expected, "{expected}");
        }
    }

    #[test]
    fn bad_selectors_are_refused_with_what_is_wrong() {
        let long = "a".repeat(64);
        let long_key = format!("{long}=x");
        let long_value = format!("k={long}");
        let long_prefix = format!("{}/k", "a".repeat(254));
        for (bad, needle) in [
            ("", "must not be empty"),
            ("  ", "must not be empty"),
            ("a=b=c", "expected ',' or the end, found '='"),
            ("a>1", "unexpected character '>'"),
            ("a in a,b", "expected '(' after in"),
            ("a in ()", "must not be empty"),
            ("a in (x", "not closed"),
            ("a notin", "expected '(' after in or notin, found the end"),
            ("=x", "expected a label key, found '='"),
            ("a,", "expected a label key, found the end"),
            (",a", "expected a label key, found ','"),
            ("a b", "expected one of"),
            ("!a=b", "expected ',' or the end after !a"),
            ("-a=b", "must start and end with an alphanumeric"),
            ("a=-b", "label value \"-b\""),
            ("Example.com/a=b", "prefix \"Example.com\""),
            ("/a=b", "prefix \"\""),
            ("example.com/=b", "has no name"),
            ("a/b/c=d", "the name of label key \"a/b/c\""),
            (long_key.as_str(), "at most 63"),
            (long_value.as_str(), "at most 63"),
            (long_prefix.as_str(), "DNS subdomain"),
            ("a=b\n", "unexpected character '\\n'"),
            ("a=b;rm", "unexpected character ';'"),
            ("a=%41", "unexpected character '%'"),
            ("a=ü", "unexpected character 'ü'"),
        ] {
            let err = bad.parse::<LabelSelector>().unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn matching_is_the_servers() {
        let s: LabelSelector = "app=masq,tier in (a,b),env!=prod,stage notin (x),owner,!legacy"
            .parse()
            .unwrap();
        let good = labels(&[("app", "masq"), ("tier", "a"), ("owner", "platform")]);
        assert!(s.matches(&good));
        // `!=` and `notin` match an absent key; set membership is exact.
        let mut more = good.clone();
        more.insert("env".into(), "dev".into());
        more.insert("stage".into(), "y".into());
        assert!(s.matches(&more));
        for (key, value) in [
            ("env", "prod"),
            ("stage", "x"),
            ("tier", "c"),
            ("app", "Masq"),
            ("legacy", ""),
        ] {
            let mut l = good.clone();
            l.insert(key.into(), value.into());
            assert!(!s.matches(&l), "{key}={value}");
        }
        for key in ["app", "tier", "owner"] {
            let mut l = good.clone();
            l.remove(key);
            assert!(!s.matches(&l), "without {key}");
        }
        let empty_value: LabelSelector = "a=".parse().unwrap();
        assert!(empty_value.matches(&labels(&[("a", "")])));
        assert!(!empty_value.matches(&labels(&[])));
    }

    #[test]
    fn the_query_value_is_the_canonical_form_percent_encoded() {
        let s: LabelSelector = "tier in (b,a), example.com/x!=y,!z".parse().unwrap();
        assert_eq!(s.to_string(), "example.com/x!=y,tier in (a,b),!z");
        assert_eq!(
            s.query_value(),
            "example.com%2Fx%21%3Dy%2Ctier%20in%20%28a%2Cb%29%2C%21z"
        );
    }

    #[test]
    fn configmap_selectors() {
        let s: ConfigMapSelector = "kube-system/example.com/part=users".parse().unwrap();
        assert_eq!(s.namespace(), "kube-system");
        assert_eq!(s.selector().to_string(), "example.com/part=users");
        assert_eq!(s.to_string(), "kube-system/example.com/part=users");
        for (bad, needle) in [
            ("app=x", "NAMESPACE/LABELSELECTOR"),
            ("/app=x", "namespace \"\""),
            ("Kube-System/app=x", "namespace \"Kube-System\""),
            ("kube-system/", "must not be empty"),
            ("kube-system/app in", "expected '('"),
        ] {
            let err = bad.parse::<ConfigMapSelector>().unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
