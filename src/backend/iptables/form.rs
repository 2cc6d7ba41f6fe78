//! Whether a read-back of our chain differs from the prediction in form
//! only, pure.
//!
//! What must stay true: a read-back becomes the reference only when every
//! rule is the predicted one with its words reordered or its numbers
//! printed with another precision. A rule someone added, removed or
//! replaced right after our write is drift, never a new reference.

/// A rule's words, a quoted string being one word.
fn words(rule: &str) -> Vec<&str> {
    let mut words = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        let end = if let Some(quoted) = rest.strip_prefix('"') {
            // Up to the closing quote that is not escaped.
            let mut escaped = false;
            let close = quoted.char_indices().find_map(|(i, c)| match c {
                '\\' if !escaped => {
                    escaped = true;
                    None
                }
                '"' if !escaped => Some(i + 2),
                _ => {
                    escaped = false;
                    None
                }
            });
            close.unwrap_or(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        words.push(&rest[..end]);
        rest = rest[end..].trim_start();
    }
    words
}

/// The same word, or the same number printed another way (`0.5` and
/// `0.50000000000`).
fn same_word(a: &str, b: &str) -> bool {
    a == b || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y)) if (x - y).abs() < 1e-6)
}

/// Whether `actual` is `predicted` in another form only: as many rules, in
/// the same order, each with the same words (matches may be reordered).
pub fn same_form(predicted: &[String], actual: &[String]) -> bool {
    predicted.len() == actual.len()
        && predicted.iter().zip(actual).all(|(p, a)| {
            let mut left = words(a);
            let want = words(p);
            if left.len() != want.len() {
                return false;
            }
            want.iter()
                .all(|w| match left.iter().position(|l| same_word(w, l)) {
                    Some(i) => {
                        left.swap_remove(i);
                        true
                    }
                    None => false,
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn reordered_matches_and_rounding_are_form_only() {
        let predicted = rules(&[
            r#"-A C -d 10.0.0.0/8 -m comment --comment "a b" -j RETURN"#,
            r#"-A C -p tcp -m statistic --mode random --probability 0.50000000000 -j MASQUERADE"#,
        ]);
        let actual = rules(&[
            r#"-A C -m comment --comment "a b" -d 10.0.0.0/8 -j RETURN"#,
            r#"-A C -p tcp -m statistic --mode random --probability 0.5 -j MASQUERADE"#,
        ]);
        assert!(same_form(&predicted, &actual));
    }

    #[test]
    fn an_added_or_replaced_rule_is_not_form() {
        let predicted = rules(&[
            r#"-A C -d 10.0.0.0/8 -m comment --comment "a b" -j RETURN"#,
            "-A C -j MASQUERADE",
        ]);
        let mut added = predicted.clone();
        added.insert(1, "-A C -j RETURN".into());
        assert!(!same_form(&predicted, &added));
        let replaced = rules(&[
            r#"-A C -d 10.0.0.0/8 -m comment --comment "a b" -j RETURN"#,
            "-A C -j RETURN",
        ]);
        assert!(!same_form(&predicted, &replaced));
        // A comment's words are one word: moving text in or out of it differs.
        let comment = rules(&[
            r#"-A C -d 10.0.0.0/8 -m comment --comment "a" b -j RETURN"#,
            "-A C -j MASQUERADE",
        ]);
        assert!(!same_form(&predicted, &comment));
    }
}
