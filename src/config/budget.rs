//! The limits that keep a hostile config from costing more than a bounded
//! amount of time and memory to decode: nesting depth, and the values and
//! bytes of text a document may hold once YAML aliases are expanded.
//!
//! A leaf: it imports nothing from the rest of `config`, so the decoders
//! (`json`, `yaml`) and their dispatcher (`decode`) all depend on it and on
//! nothing of each other. Running out is [`Exhausted`], which `error` turns
//! into the user-facing `ConfigError::TooComplex`.

/// Deepest nesting of lists and mappings accepted (aliases included).
pub(crate) const MAX_DEPTH: usize = 64;
/// Most values a config may hold once YAML aliases are expanded.
pub(crate) const MAX_NODES: usize = 100_000;
/// Most bytes of text a config may hold once YAML aliases are expanded.
pub(crate) const MAX_EXPANDED_BYTES: usize = 16 << 20;

/// What is left of the decoding limits; shared by every document read from
/// one input.
#[derive(Debug)]
pub(crate) struct Budget {
    nodes: usize,
    bytes: usize,
}

/// The budget ran out: the input holds more than [`MAX_NODES`] values or
/// [`MAX_EXPANDED_BYTES`] bytes of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted;

impl Budget {
    pub fn new() -> Self {
        Budget {
            nodes: MAX_NODES,
            bytes: MAX_EXPANDED_BYTES,
        }
    }

    /// Charge `nodes` values and `bytes` bytes of text, or fail once over.
    pub fn take(&mut self, nodes: usize, bytes: usize) -> Result<(), Exhausted> {
        match (self.nodes.checked_sub(nodes), self.bytes.checked_sub(bytes)) {
            (Some(n), Some(b)) => {
                self.nodes = n;
                self.bytes = b;
                Ok(())
            }
            _ => Err(Exhausted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_counts_down() {
        let mut budget = Budget::new();
        assert!(budget.take(MAX_NODES, 0).is_ok());
        assert_eq!(budget.take(1, 0), Err(Exhausted));
        let mut budget = Budget::new();
        assert_eq!(budget.take(0, MAX_EXPANDED_BYTES + 1), Err(Exhausted));
        let mut budget = Budget::new();
        assert!(budget.take(0, MAX_EXPANDED_BYTES).is_ok());
        assert!(budget.take(MAX_NODES, 0).is_ok());
        assert!(budget.take(0, 0).is_ok());
    }
}
