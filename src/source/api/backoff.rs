//! The retry delay of the API source: 0.8 s doubling to 30 s, each delay
//! jittered so that the nodes of a cluster, which all lost the API server at
//! the same moment, do not all come back at the same moment.
//!
//! Pure: the random source is passed in, so tests see exact delays.

use std::time::Duration;

pub const INITIAL: Duration = Duration::from_millis(800);
pub const MAX: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter; `reset` after a healthy stretch.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { next: INITIAL }
    }

    /// The delay before the next attempt. `unit` is a random number in
    /// `[0, 1)`; the delay is the current step scaled by 0.75 to 1.25.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let unit = unit.clamp(0.0, 1.0);
        let delay = self.next.mul_f64(0.75 + 0.5 * unit);
        self.next = (self.next * 2).min(MAX);
        delay
    }

    pub fn reset(&mut self) {
        self.next = INITIAL;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A random number in `[0, 1)`: std's per-process random hash keys over a
/// counter, enough to spread retries (nothing here needs to be secret).
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let bits = RandomState::new().hash_one(n);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_0_8_s_to_30_s() {
        let mut b = Backoff::new();
        let steps: Vec<u64> = (0..8)
            .map(|_| b.next_delay(0.5).as_millis() as u64)
            .collect();
        assert_eq!(steps, [800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]);
        b.reset();
        assert_eq!(b.next_delay(0.5), INITIAL);
    }

    #[test]
    fn jitter_spreads_each_step_by_a_quarter() {
        let mut low = Backoff::new();
        let mut high = Backoff::new();
        assert_eq!(low.next_delay(0.0), Duration::from_millis(600));
        assert_eq!(high.next_delay(1.0), Duration::from_millis(1000));
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u), "{u}");
        }
        let distinct: std::collections::BTreeSet<u64> =
            (0..100).map(|_| random_unit().to_bits()).collect();
        assert!(distinct.len() > 90);
    }
}
