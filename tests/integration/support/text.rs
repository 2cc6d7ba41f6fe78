//! Comparing multi-line texts with a readable diff on failure.
//!
//! Save outputs are long lines that differ in one token; a plain
//! `assert_eq!` of two strings hides where. This prints a line diff
//! (`-` expected only, `+` actual only) and then both texts in full.

/// Panics unless `actual` and `expected` have the same lines (a missing
/// final newline is not a difference).
pub fn assert_text_eq(what: &str, actual: &str, expected: &str) {
    if let Some(report) = mismatch(what, actual, expected) {
        panic!("{report}");
    }
}

/// The failure report of `assert_text_eq`, or `None` when equal.
pub fn mismatch(what: &str, actual: &str, expected: &str) -> Option<String> {
    let a: Vec<&str> = actual.lines().collect();
    let e: Vec<&str> = expected.lines().collect();
    if a == e {
        return None;
    }
    Some(format!(
        "{what}: text differs (- expected, + actual)\n{}\n--- expected, in full\n{expected}\n--- actual, in full\n{actual}",
        diff(&e, &a)
    ))
}

/// A line diff from a longest-common-subsequence table; the texts here are
/// tens of lines, so the quadratic table is fine.
pub fn diff(expected: &[&str], actual: &[&str]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            out.push_str(&format!("  {}\n", expected[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", actual[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", expected[i]));
            i += 1;
        }
    }
    out
}

/// Whether `block`'s lines appear consecutively among `text`'s lines.
pub fn contains_block(text: &str, block: &str) -> bool {
    let t: Vec<&str> = text.lines().collect();
    let b: Vec<&str> = block.lines().collect();
    b.is_empty() || t.windows(b.len()).any(|w| w == b.as_slice())
}
