//! What the probes answer: liveness (the loop makes progress) and readiness
//! (the rules were written and the last sync succeeded), with a reason an
//! operator can read in `kubectl describe pod`.
//!
//! Each API source's state is a line of the readiness text. One that never
//! completed its first list keeps the agent unready (nothing is known from
//! it, so nothing was written); one failing after that does not: a node that
//! cannot reach the API keeps enforcing its last good config, which is the
//! right state to be in.

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
    /// The API sources (`--configmap`, `--configmap-selector`), in the order
    /// they were announced: what each watches and how it fares.
    sources: Vec<SourceHealth>,
    /// Foreign nat rules overriding the config, per family (never a
    /// readiness failure: the agent's own rules are right).
    conflicts: BTreeMap<Family, Vec<String>>,
}

#[derive(Debug)]
struct SourceHealth {
    /// `configmap NS/NAME` or `configmaps NS/SELECTOR`.
    name: String,
    state: SourceState,
    since: Instant,
    /// `None` until its first list completed.
    last_event: Option<Instant>,
}

impl HealthState {
    fn source(&mut self, name: &str) -> &mut SourceHealth {
        let at = match self.sources.iter().position(|h| h.name == name) {
            Some(at) => at,
            None => {
                self.sources.push(SourceHealth {
                    name: name.to_owned(),
                    state: SourceState::Connecting,
                    since: Instant::now(),
                    last_event: None,
                });
                self.sources.len() - 1
            }
        };
        &mut self.sources[at]
    }

    fn all_connected(&self) -> bool {
        self.sources
            .iter()
            .all(|h| h.state == SourceState::Connected)
    }
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
            sources: Vec::new(),
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

    /// An API source exists (connecting until it says otherwise). `connected`
    /// learns whether every API source is connected, under the same lock as
    /// the change, so two sources reporting at once cannot leave it stale.
    pub fn source_added(&self, name: &str, connected: impl FnOnce(bool)) {
        self.with(|s| {
            s.source(name);
            connected(s.all_connected());
        });
    }

    /// The API source `name` changed state; `connected` as for
    /// [`Health::source_added`].
    pub fn source_state(&self, name: &str, state: &SourceState, connected: impl FnOnce(bool)) {
        self.with(|s| {
            let source = s.source(name);
            source.state = state.clone();
            source.since = Instant::now();
            connected(s.all_connected());
        });
    }

    /// The API source `name` delivered its objects (a list or an event).
    pub fn source_event(&self, name: &str) {
        self.with(|s| s.source(name).last_event = Some(Instant::now()));
    }
}

/// The API sources' lines of the readiness text (none without one).
fn source_text(s: &HealthState) -> String {
    let mut text = String::new();
    for h in &s.sources {
        let last = match h.last_event {
            Some(at) => format!("last object {} s ago", at.elapsed().as_secs()),
            None => "not listed yet".to_owned(),
        };
        let state = match &h.state {
            SourceState::Connecting => format!("connecting, {last}"),
            SourceState::Connected => format!("watching, {last}"),
            SourceState::Failing(err) if h.last_event.is_some() => format!(
                "requests failing for {} s ({err}), enforcing the last good config, {last}",
                h.since.elapsed().as_secs()
            ),
            SourceState::Failing(err) => format!(
                "requests failing for {} s ({err}), {last}",
                h.since.elapsed().as_secs()
            ),
        };
        text.push_str(&format!("\n{}: {state}", h.name));
    }
    text
}

/// The API sources whose first list has not completed, named.
fn unlisted(s: &HealthState) -> Option<String> {
    let names: Vec<&str> = s
        .sources
        .iter()
        .filter(|h| h.last_event.is_none())
        .map(|h| h.name.as_str())
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
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
    /// An API source that never completed a list makes the agent unready, as
    /// no config is known from it; one failing after that does not: the node
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
            } else if let Some(names) = unlisted(s) {
                (
                    false,
                    format!("no valid config yet: waiting for the Kubernetes API to list {names}{source}"),
                )
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

    /// Records what `connected` was told.
    fn connected_into(cell: &std::cell::Cell<Option<bool>>) -> impl FnOnce(bool) + '_ {
        |all| cell.set(Some(all))
    }

    #[test]
    fn readiness_tells_the_api_source_state_without_failing_on_it() {
        let h = Health::new();
        let all = std::cell::Cell::new(None);
        h.sync_succeeded();
        assert_eq!(h.readiness(), (true, "ok: rules in sync".to_owned()));
        let name = "configmap kube-system/ip-masq-agent";
        h.source_state(name, &SourceState::Connected, connected_into(&all));
        assert_eq!(all.get(), Some(true));
        h.source_event(name);
        assert_eq!(
            h.readiness(),
            (
                true,
                "ok: rules in sync\nconfigmap kube-system/ip-masq-agent: watching, last object 0 s ago".to_owned()
            )
        );
        h.source_state(
            name,
            &SourceState::Failing("connection refused".into()),
            connected_into(&all),
        );
        assert_eq!(all.get(), Some(false));
        let (ready, text) = h.readiness();
        assert!(ready, "the last good config is still enforced");
        assert_eq!(
            text,
            "ok: rules in sync\nconfigmap kube-system/ip-masq-agent: requests failing for 0 s (connection refused), \
             enforcing the last good config, last object 0 s ago"
        );
    }

    /// Each API source has its own line and state; one that never listed
    /// keeps the agent unready and is named, whatever the others do, and
    /// "connected" needs every one.
    #[test]
    fn each_api_source_has_its_own_state() {
        let h = Health::new();
        let all = std::cell::Cell::new(None);
        let (one, two, selector) = (
            "configmap kube-system/ip-masq-agent",
            "configmap tenants/ip-masq-extra",
            "configmaps kube-system/example.com/masq-part",
        );
        for name in [one, two, selector] {
            h.source_added(name, connected_into(&all));
            assert_eq!(all.get(), Some(false));
        }
        h.source_state(one, &SourceState::Connected, connected_into(&all));
        h.source_event(one);
        h.source_state(
            two,
            &SourceState::Failing("403 Forbidden".into()),
            connected_into(&all),
        );
        assert_eq!(all.get(), Some(false), "one source failing");
        // The agent succeeding with what it has does not hide the others.
        h.sync_succeeded();
        assert_eq!(
            h.readiness(),
            (
                false,
                "no valid config yet: waiting for the Kubernetes API to list configmap tenants/ip-masq-extra, \
                 configmaps kube-system/example.com/masq-part\n\
                 configmap kube-system/ip-masq-agent: watching, last object 0 s ago\n\
                 configmap tenants/ip-masq-extra: requests failing for 0 s (403 Forbidden), not listed yet\n\
                 configmaps kube-system/example.com/masq-part: connecting, not listed yet"
                    .to_owned()
            )
        );
        // The one that connected reporting again does not win over the rest.
        h.source_state(one, &SourceState::Connected, connected_into(&all));
        assert_eq!(all.get(), Some(false));
        h.source_event(selector);
        h.source_state(selector, &SourceState::Connected, connected_into(&all));
        let (ready, text) = h.readiness();
        assert!(!ready);
        assert!(
            text.starts_with("no valid config yet: waiting for the Kubernetes API to list configmap tenants/ip-masq-extra\n"),
            "{text}"
        );
        // A source listed but not yet recovered: ready, not connected.
        h.source_event(two);
        let (ready, text) = h.readiness();
        assert!(ready, "{text}");
        assert!(text.contains("\nconfigmap tenants/ip-masq-extra: requests failing for 0 s (403 Forbidden), enforcing the last good config"), "{text}");
        assert_eq!(all.get(), Some(false));
        h.source_state(two, &SourceState::Connected, connected_into(&all));
        assert_eq!(all.get(), Some(true));
        // Announced again (the same flag twice): still one line.
        h.source_added(one, connected_into(&all));
        assert_eq!(all.get(), Some(true));
        assert_eq!(
            h.readiness()
                .1
                .matches("configmap kube-system/ip-masq-agent:")
                .count(),
            1
        );
    }
}
