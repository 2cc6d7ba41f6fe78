//! Bounded polling: the daemon acts on its own clock, so tests wait for an
//! observable state, never for a fixed sleep, and never without a deadline.

use std::fmt::Display;
use std::thread;
use std::time::{Duration, Instant};

use super::text::mismatch;

/// Default deadline for the daemon to reach a state: a 1 s resync interval
/// (or an immediate reaction to a file change or a signal) plus a wide margin
/// for a loaded machine.
pub const DEADLINE: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(100);

/// Polls `observe` until `done` accepts its value, which it returns. After
/// `timeout`, panics naming `what` and showing the last observed value.
pub fn wait_until<T: Display>(
    timeout: Duration,
    what: &str,
    mut observe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> T {
    match poll(timeout, &mut observe, &mut done) {
        Ok(v) => v,
        Err(last) => {
            panic!("timed out after {timeout:?} waiting for {what}; last observed:\n{last}")
        }
    }
}

/// Polls until `observe` returns exactly `expected` (line-wise); on timeout
/// panics with a diff against the last observed text.
pub fn wait_for_text(
    timeout: Duration,
    what: &str,
    mut observe: impl FnMut() -> String,
    expected: &str,
) {
    let same = |t: &String| mismatch("", t, expected).is_none();
    if let Err(last) = poll(timeout, &mut observe, same) {
        let report = mismatch(what, &last, expected).unwrap_or_default();
        panic!("timed out after {timeout:?} waiting for {what}\n{report}");
    }
}

/// The opposite of `wait_until`, for asserting that something does *not*
/// happen: observes every poll period for the whole of `period` and panics,
/// naming `what` and showing the observation, as soon as `ok` rejects one.
/// Use only after a positive sign that the cause has had its chance (and
/// say why the period is long enough), since absence alone proves little.
pub fn hold_for<T: Display>(
    period: Duration,
    what: &str,
    mut observe: impl FnMut() -> T,
    mut ok: impl FnMut(&T) -> bool,
) {
    let deadline = Instant::now() + period;
    loop {
        let value = observe();
        if !ok(&value) {
            panic!("{what} no longer holds; observed:\n{value}");
        }
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(POLL);
    }
}

fn poll<T>(
    timeout: Duration,
    mut observe: impl FnMut() -> T,
    mut done: impl FnMut(&T) -> bool,
) -> Result<T, T> {
    let deadline = Instant::now() + timeout;
    loop {
        let value = observe();
        if done(&value) {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(value);
        }
        thread::sleep(POLL);
    }
}
