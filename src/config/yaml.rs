//! YAML input: saphyr-parser's events turned into the [`Value`] tree that
//! upstream's Go pipeline (go-yaml v2, then `sigs.k8s.io/yaml`'s conversion
//! to JSON) would produce.
//!
//! What that means, and what must stay true here:
//! - scalars resolve by YAML 1.1 rules ([`yaml11`]);
//! - within a mapping the last duplicate key wins, `<<` merge keys are
//!   applied where they stand (go-yaml's order: a later explicit key
//!   overrides a merged one, an earlier one is overridden), and the finished
//!   mapping is sorted by key bytes, the order Go's `json.Marshal` gives it;
//! - non-string keys become their JSON text (`true`, `12`); a null key, an
//!   unsigned 64-bit key or a collection key is an error, as is a NaN or
//!   infinite number anywhere (Go's JSON encoder refuses them);
//! - aliases are expanded, within the caller's [`Budget`] of values and
//!   bytes, so an alias bomb is refused after a bounded amount of work;
//!   nesting, aliases included, is bounded by [`MAX_DEPTH`].

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle, ScanError, Span, StrInput, Tag};

use super::ConfigError;
use super::budget::{Budget, MAX_DEPTH};
use super::value::{Str, Value};
use super::yaml11::{self, Scalar};

/// Reads the documents of one YAML stream in turn.
pub(crate) struct Documents<'a> {
    parser: Parser<'a, StrInput<'a>>,
    done: bool,
}

impl<'a> Documents<'a> {
    pub fn new(text: &'a str) -> Self {
        Documents {
            parser: Parser::new_from_str(text),
            done: false,
        }
    }

    /// The next document's tree, or `None` at the end of the stream. Nothing
    /// past the end of the returned document is read.
    pub fn next_document(&mut self, budget: &mut Budget) -> Result<Option<Value>, ConfigError> {
        if self.done {
            return Ok(None);
        }
        loop {
            match self.next_event()? {
                (Event::StreamEnd, _) => {
                    self.done = true;
                    return Ok(None);
                }
                (Event::DocumentStart(_), _) => break,
                _ => {}
            }
        }
        let mut builder = Builder::default();
        loop {
            let (event, span) = self.next_event()?;
            match event {
                Event::DocumentEnd => break,
                Event::StreamEnd => {
                    self.done = true;
                    break;
                }
                other => builder.event(other, span, budget)?,
            }
        }
        builder.finish().map(Some)
    }

    fn next_event(&mut self) -> Result<(Event<'a>, Span), ConfigError> {
        match self.parser.next_event() {
            Some(Ok(pair)) => Ok(pair),
            Some(Err(e)) => Err(scan_error(&e)),
            None => Ok((Event::StreamEnd, Span::default())),
        }
    }
}

fn scan_error(e: &ScanError) -> ConfigError {
    ConfigError::Yaml {
        message: e.to_string(),
    }
}

/// How a finished node can serve as a mapping key.
#[derive(Debug, Clone)]
enum KeyForm {
    Text(String),
    /// `<<`, plain or tagged `!!merge`.
    Merge,
    /// Unusable as a JSON key; the text says why (reported after parsing,
    /// as upstream's conversion runs after its YAML parse).
    Bad(String),
    Collection,
}

/// A finished node with what the budget and depth checks need.
#[derive(Debug, Clone)]
struct Node {
    value: Value,
    key: KeyForm,
    /// Values in the subtree, for charging alias copies.
    nodes: usize,
    /// Text bytes in the subtree.
    bytes: usize,
    /// Collection nesting inside this node (0 for a scalar).
    depth: usize,
    /// For a NaN or infinite scalar: the error to report if it is used as a
    /// value (as a key it is fine: it becomes text).
    not_json: Option<String>,
}

enum Pending {
    Key(String),
    Merge,
    /// The key was unusable; drop the value.
    Skip,
}

enum Body {
    Seq(Vec<Value>),
    Map {
        entries: Vec<(String, Value)>,
        index: HashMap<String, usize>,
        pending: Option<Pending>,
    },
}

struct Frame {
    body: Body,
    anchor: usize,
    nodes: usize,
    bytes: usize,
    child_depth: usize,
    line: usize,
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    /// First unusable key, then first NaN/infinity: reported once the
    /// document parsed, in that order, like upstream.
    bad_key: Option<String>,
    bad_number: Option<String>,
}

impl Builder {
    fn event(
        &mut self,
        event: Event<'_>,
        span: Span,
        budget: &mut Budget,
    ) -> Result<(), ConfigError> {
        let line = span.start.line();
        match event {
            Event::Scalar(text, style, anchor, tag) => {
                budget.take(1, text.len())?;
                let node = self.scalar(&text, style, tag.as_deref(), line)?;
                self.finish_node(node, anchor, budget)
            }
            Event::SequenceStart(anchor, _) => {
                self.open(Body::Seq(Vec::new()), anchor, line, budget)
            }
            Event::MappingStart(anchor, _) => self.open(
                Body::Map {
                    entries: Vec::new(),
                    index: HashMap::new(),
                    pending: None,
                },
                anchor,
                line,
                budget,
            ),
            Event::SequenceEnd | Event::MappingEnd => self.close(budget),
            Event::Alias(id) => {
                let node = self
                    .anchors
                    .get(&id)
                    .cloned()
                    .ok_or_else(|| ConfigError::Yaml {
                        message: format!(
                            "line {line}: an alias refers to the node that contains it"
                        ),
                    })?;
                budget.take(node.nodes, node.bytes)?;
                self.attach(node)
            }
            _ => Ok(()),
        }
    }

    fn scalar(
        &mut self,
        text: &str,
        style: ScalarStyle,
        tag: Option<&Tag>,
        line: usize,
    ) -> Result<Node, ConfigError> {
        let full_tag = tag.map(|t| format!("{}{}", t.handle, t.suffix));
        let plain = style == ScalarStyle::Plain;
        let is_merge = text == "<<"
            && ((plain && full_tag.is_none())
                || full_tag.as_deref() == Some("tag:yaml.org,2002:merge"));
        let scalar = yaml11::resolve(text, plain, full_tag.as_deref()).map_err(|message| {
            ConfigError::Yaml {
                message: format!("line {line}: {message}"),
            }
        })?;
        let key = if is_merge {
            KeyForm::Merge
        } else {
            key_form(&scalar, line)
        };
        let mut not_json = None;
        let value = match scalar {
            Scalar::Null => Value::Null,
            Scalar::Bool(b) => Value::Bool(b),
            Scalar::Int(i) => Value::Number(i.to_string()),
            Scalar::Uint(u) => Value::Number(u.to_string()),
            Scalar::Float(f) if f.is_finite() => Value::Number(yaml11::go_json_float(f)),
            Scalar::Float(_) => {
                not_json = Some(format!(
                    "line {line}: {text} cannot be represented in JSON (NaN and infinities are not allowed)"
                ));
                Value::Null
            }
            Scalar::Str(s) => Value::Str(Str::plain(s)),
        };
        Ok(Node {
            value,
            key,
            nodes: 1,
            bytes: text.len(),
            depth: 0,
            not_json,
        })
    }

    fn open(
        &mut self,
        body: Body,
        anchor: usize,
        line: usize,
        budget: &mut Budget,
    ) -> Result<(), ConfigError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(ConfigError::TooDeep { max: MAX_DEPTH });
        }
        budget.take(1, 0)?;
        self.stack.push(Frame {
            body,
            anchor,
            nodes: 1,
            bytes: 0,
            child_depth: 0,
            line,
        });
        Ok(())
    }

    fn close(&mut self, budget: &mut Budget) -> Result<(), ConfigError> {
        let Some(frame) = self.stack.pop() else {
            return Ok(());
        };
        let value = match frame.body {
            Body::Seq(items) => Value::Seq(items),
            Body::Map { mut entries, .. } => {
                // Go's json.Marshal writes map keys sorted by their bytes.
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Map(entries)
            }
        };
        let node = Node {
            value,
            key: KeyForm::Collection,
            nodes: frame.nodes,
            bytes: frame.bytes,
            depth: frame.child_depth + 1,
            not_json: None,
        };
        self.finish_node(node, frame.anchor, budget)
    }

    /// Record an anchored node (its stored copy is charged too), then attach.
    fn finish_node(
        &mut self,
        node: Node,
        anchor: usize,
        budget: &mut Budget,
    ) -> Result<(), ConfigError> {
        if anchor != 0 {
            budget.take(node.nodes, node.bytes)?;
            self.anchors.insert(anchor, node.clone());
        }
        self.attach(node)
    }

    fn attach(&mut self, node: Node) -> Result<(), ConfigError> {
        if self.stack.len() + node.depth > MAX_DEPTH {
            return Err(ConfigError::TooDeep { max: MAX_DEPTH });
        }
        let Some(frame) = self.stack.last_mut() else {
            if let Some(why) = node.not_json.clone() {
                self.bad_number.get_or_insert(why);
            }
            self.root = Some(node);
            return Ok(());
        };
        frame.nodes += node.nodes;
        frame.bytes += node.bytes;
        frame.child_depth = frame.child_depth.max(node.depth);
        let line = frame.line;
        let is_key = matches!(&frame.body, Body::Map { pending: None, .. });
        if let (false, Some(why)) = (is_key, node.not_json) {
            self.bad_number.get_or_insert(why);
        }
        match &mut frame.body {
            Body::Seq(items) => items.push(node.value),
            Body::Map {
                entries,
                index,
                pending,
            } => match pending.take() {
                None => {
                    *pending = Some(match node.key {
                        KeyForm::Text(k) => Pending::Key(k),
                        KeyForm::Merge => Pending::Merge,
                        KeyForm::Bad(why) => {
                            self.bad_key.get_or_insert(why);
                            Pending::Skip
                        }
                        KeyForm::Collection => {
                            return Err(ConfigError::Yaml {
                                message: format!(
                                    "mapping starting at line {line}: a list or mapping cannot be a key"
                                ),
                            });
                        }
                    });
                }
                Some(Pending::Key(k)) => insert(entries, index, k, node.value),
                Some(Pending::Skip) => {}
                Some(Pending::Merge) => merge(entries, index, node.value).map_err(|()| {
                    ConfigError::Yaml {
                        message: format!(
                            "mapping starting at line {line}: map merge requires map or sequence of maps as the value"
                        ),
                    }
                })?,
            },
        }
        Ok(())
    }

    fn finish(self) -> Result<Value, ConfigError> {
        if let Some(message) = self.bad_key.or(self.bad_number) {
            return Err(ConfigError::Yaml { message });
        }
        Ok(self.root.map_or(Value::Null, |n| n.value))
    }
}

/// A key as `sigs.k8s.io/yaml` turns it into JSON object key text.
fn key_form(scalar: &Scalar, line: usize) -> KeyForm {
    match scalar {
        Scalar::Str(s) => KeyForm::Text(s.clone()),
        Scalar::Int(i) => KeyForm::Text(i.to_string()),
        Scalar::Bool(b) => KeyForm::Text(b.to_string()),
        Scalar::Float(f) if f.is_nan() => KeyForm::Text(".nan".into()),
        Scalar::Float(f) if f.is_infinite() => {
            KeyForm::Text(if *f > 0.0 { ".inf" } else { "-.inf" }.into())
        }
        Scalar::Float(f) => KeyForm::Text(yaml11::go_json_float(*f)),
        Scalar::Null => KeyForm::Bad(format!("line {line}: a null mapping key is not allowed")),
        Scalar::Uint(u) => KeyForm::Bad(format!(
            "line {line}: mapping key {u} is too large (keys must fit in a signed 64-bit integer)"
        )),
    }
}

/// Last write wins, keeping the first position (order is re-sorted anyway).
fn insert(
    entries: &mut Vec<(String, Value)>,
    index: &mut HashMap<String, usize>,
    key: String,
    value: Value,
) {
    match index.get(&key) {
        Some(&at) => entries[at].1 = value,
        None => {
            index.insert(key.clone(), entries.len());
            entries.push((key, value));
        }
    }
}

/// Apply a `<<` value: a mapping, or a list of mappings where earlier ones
/// take precedence (go-yaml applies them last to first).
fn merge(
    entries: &mut Vec<(String, Value)>,
    index: &mut HashMap<String, usize>,
    value: Value,
) -> Result<(), ()> {
    match value {
        Value::Map(source) => {
            for (k, v) in source {
                insert(entries, index, k, v);
            }
            Ok(())
        }
        Value::Seq(items) => {
            if !items.iter().all(|v| matches!(v, Value::Map(_))) {
                return Err(());
            }
            for item in items.into_iter().rev() {
                if let Value::Map(source) = item {
                    for (k, v) in source {
                        insert(entries, index, k, v);
                    }
                }
            }
            Ok(())
        }
        _ => Err(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(text: &str) -> Result<Value, ConfigError> {
        let mut budget = Budget::new();
        Ok(Documents::new(text)
            .next_document(&mut budget)?
            .unwrap_or(Value::Null))
    }

    fn s(text: &str) -> Value {
        Value::Str(Str::plain(text.into()))
    }

    fn n(text: &str) -> Value {
        Value::Number(text.into())
    }

    #[test]
    fn mapping_is_deduplicated_and_sorted() {
        let v = first("b: 1\na: x\nB: 2\nb: 3\n").unwrap();
        assert_eq!(
            v,
            Value::Map(vec![
                ("B".into(), n("2")),
                ("a".into(), s("x")),
                ("b".into(), n("3")),
            ])
        );
    }

    #[test]
    fn scalars_and_keys() {
        let v = first("list: [yes, '10.0.0.0/8', 0x40, 1.0, ~, \"\"]\n12: a\ntrue: b\n").unwrap();
        assert_eq!(
            v,
            Value::Map(vec![
                ("12".into(), s("a")),
                (
                    "list".into(),
                    Value::Seq(vec![
                        Value::Bool(true),
                        s("10.0.0.0/8"),
                        n("64"),
                        n("1"),
                        Value::Null,
                        s(""),
                    ])
                ),
                ("true".into(), s("b")),
            ])
        );
    }

    #[test]
    fn merge_keys_follow_go_yaml() {
        let v = first("base: &b {p: 1, q: 1}\nm:\n  p: 0\n  <<: *b\n  q: 2\n").unwrap();
        assert_eq!(
            v.get("m"),
            Some(&Value::Map(vec![
                ("p".into(), n("1")),
                ("q".into(), n("2"))
            ]))
        );
        let v = first("a: &a {p: 1}\nb: &b {p: 2, q: 2}\nm:\n  <<: [*a, *b]\n").unwrap();
        assert_eq!(
            v.get("m"),
            Some(&Value::Map(vec![
                ("p".into(), n("1")),
                ("q".into(), n("2"))
            ]))
        );
        // YAML 1.1: an unquoted `y` key is the boolean true.
        let v = first("{y: 1}").unwrap();
        assert_eq!(v, Value::Map(vec![("true".into(), n("1"))]));
        // A quoted "<<" is an ordinary key.
        let v = first("'<<': {x: 1}\n").unwrap();
        assert!(v.get("<<").is_some());
        assert!(matches!(first("<<: 5\n"), Err(ConfigError::Yaml { .. })));
        assert!(matches!(
            first("<<: [{a: 1}, 2]\n"),
            Err(ConfigError::Yaml { .. })
        ));
    }

    #[test]
    fn bad_keys_and_numbers() {
        let err = first("~: 1\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid YAML: line 1: a null mapping key is not allowed"
        );
        assert!(first("? [1]\n: 2\n").is_err());
        assert!(first("18446744073709551615: 1\n").is_err());
        let err = first("x: .nan\n").unwrap_err().to_string();
        assert_eq!(
            err,
            "invalid YAML: line 1: .nan cannot be represented in JSON (NaN and infinities are not allowed)"
        );
        // The key error is reported first, wherever it stands.
        let err = first("x: .inf\n~: 1\n").unwrap_err().to_string();
        assert!(err.contains("null mapping key"), "{err}");
        // Infinite keys are fine (they become text).
        assert!(first(".inf: 1\n").is_ok());
    }

    #[test]
    fn aliases_expand() {
        let v = first("a: &x [1, 2]\nb: *x\n").unwrap();
        assert_eq!(v.get("b"), Some(&Value::Seq(vec![n("1"), n("2")])));
        assert!(first("a: &x [1, *x]\n").is_err());
        assert!(first("a: *nope\n").is_err());
    }

    #[test]
    fn only_the_first_document() {
        let mut budget = Budget::new();
        let mut docs = Documents::new("a: 1\n---\nb: [\n");
        assert_eq!(
            docs.next_document(&mut budget).unwrap(),
            Some(Value::Map(vec![("a".into(), n("1"))]))
        );
        assert!(docs.next_document(&mut budget).is_err());
        assert_eq!(first("").unwrap(), Value::Null);
        assert_eq!(first("# just a comment\n").unwrap(), Value::Null);
        assert_eq!(first("---\n").unwrap(), Value::Null);
    }

    #[test]
    fn depth_counts_through_aliases() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        assert!(first(&deep(64)).is_ok());
        assert!(matches!(
            first(&deep(65)),
            Err(ConfigError::TooDeep { max: 64 })
        ));
        // 40 levels inside an anchor, used 40 levels down: 80 in all.
        let text = format!(
            "a: &x {}\nb: {}*x{}\n",
            deep(40),
            "[".repeat(40),
            "]".repeat(40)
        );
        assert!(matches!(first(&text), Err(ConfigError::TooDeep { .. })));
    }
}
