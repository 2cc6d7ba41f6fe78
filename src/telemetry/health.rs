//! What the probes answer: liveness (the loop makes progress) and readiness
//! (the rules were written and the last sync succeeded), with a reason an
//! operator can read in `kubectl describe pod`.
//!
//! A config source's state is part of the readiness text but never makes the
//! agent unready: a node that cannot reach the API keeps enforcing its last
//! good config, which is the right state to be in.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::plan::Family;

/// The state of a watching config source, for readiness and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceState {
    /// Listing for the first time.
    Connecting,
    Connected,
    /// The last request failed; the watcher retries with backoff.
    Failing(String),
}

/// A loop iteration older than this means the loop is wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct HealthState {
    heartbeat: Instant,
    first_success: bool,
    last_failure: Option<String>,
    waiting_for_config: Option<String>,
    /// The API source, when configured: what it watches and how it fares.
    source: Option<SourceHealth>,
    /// Foreign nat rules overriding the config, per family (never a
    /// readiness failure: the agent's own rules are right).
    conflicts: BTreeMap<Family, Vec<String>>,
}

#[derive(Debug)]
struct SourceHealth {
    object: String,
    state: SourceState,
    since: Instant,
    last_event: Option<Instant>,
}

/// What the probes answer, shared between the loop and the HTTP server.
#[derive(Debug, Clone)]
pub struct Health(Arc<Mutex<HealthState>>);

impl Health {
    pub fn new() -> Self {
        Health(Arc::new(Mutex::new(HealthState {
            heartbeat: Instant::now(),
            first_success: false,
            last_failure: None,
            waiting_for_config: None,
            source: None,
            conflicts: BTreeMap::new(),
        })))
    }

    fn with<T>(&self, f: impl FnOnce(&mut HealthState) -> T) -> T {
        // A poisoned lock only means a panic elsewhere; the data is plain.
        let mut guard = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    }

    /// The loop is alive.
    pub fn beat(&self) {
        self.with(|s| s.heartbeat = Instant::now());
    }

    pub fn sync_succeeded(&self) {
        self.with(|s| {
            s.first_success = true;
            s.last_failure = None;
            s.waiting_for_config = None;
        });
    }

    pub fn sync_failed(&self, reason: String) {
        self.with(|s| s.last_failure = Some(reason));
    }

    /// The foreign nat rules overriding the config in `family` now.
    pub fn conflicts(&self, family: Family, lines: Vec<String>) {
        self.with(|s| {
            if lines.is_empty() {
                s.conflicts.remove(&family);
            } else {
                s.conflicts.insert(family, lines);
            }
        });
    }

    /// No valid config has been loaded yet.
    pub fn no_config(&self, reason: String) {
        self.with(|s| s.waiting_for_config = Some(reason));
    }

    /// The API source changed state.
    pub fn source_state(&self, object: &str, state: &SourceState) {
        self.with(|s| {
            let last_event = s.source.as_ref().and_then(|h| h.last_event);
            s.source = Some(SourceHealth {
                object: object.to_owned(),
                state: state.clone(),
                since: Instant::now(),
                last_event,
            });
        });
    }

    /// The API source delivered an object.
    pub fn source_event(&self) {
        self.with(|s| {
            if let Some(source) = &mut s.source {
                source.last_event = Some(Instant::now());
            }
        });
    }
}

/// The API source's part of the readiness text (empty without one).
fn source_text(s: &HealthState) -> String {
    let Some(h) = &s.source else {
        return String::new();
    };
    let last = match h.last_event {
        Some(at) => format!("last object {} s ago", at.elapsed().as_secs()),
        None => "no object yet".to_owned(),
    };
    match &h.state {
        SourceState::Connecting => format!("; configmap {}: connecting, {last}", h.object),
        SourceState::Connected => format!("; configmap {}: watching, {last}", h.object),
        SourceState::Failing(err) => format!(
            "; configmap {}: API unreachable for {} s ({err}), enforcing the last good config, {last}",
            h.object,
            h.since.elapsed().as_secs()
        ),
    }
}

impl Health {
    /// (healthy, reason)
    pub fn liveness(&self) -> (bool, String) {
        self.with(|s| {
            let age = s.heartbeat.elapsed();
            if age > WEDGED_AFTER {
                (
                    false,
                    format!("loop wedged: no progress for {} s", age.as_secs()),
                )
            } else {
                (true, "ok: loop alive".to_owned())
            }
        })
    }

    /// (ready, reason)
    ///
    /// An unreachable API server does not make the agent unready: the node
    /// keeps enforcing its last good config, which is the right state; the
    /// text says so, and the source metrics alert on it.
    pub fn readiness(&self) -> (bool, String) {
        self.with(|s| {
            let mut source = source_text(s);
            for (family, lines) in &s.conflicts {
                for line in lines {
                    source.push_str(&format!("\nconflicting nat rule ({family}): {line}"));
                }
            }
            if let Some(reason) = &s.last_failure {
                (false, format!("last sync failed: {reason}{source}"))
            } else if let Some(reason) = &s.waiting_for_config {
                (false, format!("no valid config yet: {reason}{source}"))
            } else if !s.first_success {
                (false, format!("first sync not done yet{source}"))
            } else {
                (true, format!("ok: rules in sync{source}"))
            }
        })
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_syncs() {
        let h = Health::new();
        assert!(!h.readiness().0);
        h.sync_succeeded();
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
        h.sync_failed("lock held".into());
        assert!(!h.readiness().0);
        assert!(h.liveness().0);
    }

    #[test]
    fn conflicts_are_a_line_each_and_never_unready() {
        let h = Health::new();
        h.sync_succeeded();
        h.conflicts(Family::Ipv4, vec!["rule X masquerades 10.0.0.0/8".into()]);
        assert_eq!(
            h.readiness(),
            (
                true,
                "ok: rules in sync\nconflicting nat rule (ipv4): rule X masquerades 10.0.0.0/8"
                    .to_owned()
            )
        );
        h.conflicts(Family::Ipv4, Vec::new());
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
    }

    #[test]
    fn readiness_tells_the_api_source_state_without_failing_on_it() {
        let h = Health::new();
        h.sync_succeeded();
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
        h.source_state("kube-system/ip-masq-agent", &SourceState::Connected);
        h.source_event();
        let (ready, text) = h.readiness();
        assert!(ready);
        assert!(
            text.starts_with("ok: rules in sync; configmap kube-system/ip-masq-agent: watching, last object 0 s ago"),
            "{text}"
        );
        h.source_state(
            "kube-system/ip-masq-agent",
            &SourceState::Failing("connection refused".into()),
        );
        let (ready, text) = h.readiness();
        assert!(ready, "the last good config is still enforced");
        assert!(text.contains("API unreachable for 0 s (connection refused), enforcing the last good config, last object 0 s ago"), "{text}");
    }
}
