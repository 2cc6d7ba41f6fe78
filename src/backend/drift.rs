//! How drift is told, pure: which rules of one of our chains are
//! unexpected and which are missing, named (bounded: the first few, then a
//! count) and escaped, since they are text from the kernel and may hold
//! anything a foreign writer put there.

use std::fmt::Write as _;

use crate::logging::Escaped;

/// Rules named per kind in one difference; the rest are counted.
pub const NAMED_RULES: usize = 5;

/// Each item of `listed` not matched one for one in `other`, in order.
fn not_in<'a, T: PartialEq>(listed: &'a [T], other: &[T]) -> Vec<&'a T> {
    let mut pool: Vec<&T> = other.iter().collect();
    let mut left = Vec::new();
    for item in listed {
        match pool.iter().position(|r| *r == item) {
            Some(i) => {
                pool.swap_remove(i);
            }
            None => left.push(item),
        }
    }
    left
}

/// `[a | b | and 3 more]`: the first of `total` items, each escaped.
pub fn named(first: &[String], total: usize) -> String {
    let mut out = String::from("[");
    for (i, item) in first.iter().take(NAMED_RULES).enumerate() {
        if i > 0 {
            out.push_str(" | ");
        }
        let _ = write!(out, "{}", Escaped(item));
    }
    if total > NAMED_RULES {
        let _ = write!(out, " | and {} more", total - NAMED_RULES);
    }
    out.push(']');
    out
}

/// What differs between the rules `found` in `chain` and those `wanted`,
/// each rule shown as `text` makes it.
pub fn describe<T: PartialEq>(
    chain: &str,
    found: &[T],
    wanted: &[T],
    text: impl Fn(&T) -> String,
) -> String {
    let shown = |items: Vec<&T>| {
        items
            .into_iter()
            .take(NAMED_RULES)
            .map(&text)
            .collect::<Vec<_>>()
    };
    let unexpected = not_in(found, wanted);
    let missing = not_in(wanted, found);
    let mut out = format!("chain {}:", Escaped(chain));
    if unexpected.is_empty() && missing.is_empty() {
        out.push_str(" the wanted rules in another order");
        return out;
    }
    let (n_unexpected, n_missing) = (unexpected.len(), missing.len());
    if n_unexpected > 0 {
        let _ = write!(
            out,
            " {n_unexpected} unexpected {}",
            named(&shown(unexpected), n_unexpected)
        );
    }
    if n_missing > 0 {
        if n_unexpected > 0 {
            out.push(';');
        }
        let _ = write!(
            out,
            " {n_missing} missing {}",
            named(&shown(missing), n_missing)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| (*l).to_owned()).collect()
    }

    #[test]
    fn drift_names_the_rules_bounded_and_escaped() {
        let wanted = rules(&["-A C -d 10.0.0.0/8 -j RETURN", "-A C -j MASQUERADE"]);
        let mut found = wanted.clone();
        found.insert(
            0,
            "-A C -s 1.2.3.4/32 -m comment --comment \"x\ny\" -j RETURN".into(),
        );
        found.pop();
        assert_eq!(
            describe("C", &found, &wanted, String::clone),
            r#"chain C: 1 unexpected [-A C -s 1.2.3.4/32 -m comment --comment "x\ny" -j RETURN]; 1 missing [-A C -j MASQUERADE]"#
        );
        let many: Vec<String> = (0..8)
            .map(|i| format!("-A C -s 10.0.0.{i}/32 -j RETURN"))
            .collect();
        let text = describe("C", &many, &[], String::clone);
        assert!(
            text.ends_with("-A C -s 10.0.0.4/32 -j RETURN | and 3 more]"),
            "{text}"
        );
        assert!(text.starts_with("chain C: 8 unexpected ["), "{text}");
        let swapped: Vec<String> = wanted.iter().rev().cloned().collect();
        assert_eq!(
            describe("C", &swapped, &wanted, String::clone),
            "chain C: the wanted rules in another order"
        );
    }
}
