//! Where the config comes from: files and directories (mounted ConfigMaps),
//! ConfigMaps read through the Kubernetes API, and the ConfigMaps a label
//! selector picks, any number of each.
//!
//! A [`Source`] owns what it watches and what it last delivered; the agent
//! only asks it for its parts now ([`Source::read`]: one per file or
//! ConfigMap key, so a selector's parts come and go with its objects; a
//! ConfigMap that two sources name is one part, read once), waits for it
//! to change ([`Source::changed`]), and hands it problems to report where
//! that source's readers look (Events on the ConfigMap). [`Sources`] is the set the agent runs with. Decoding,
//! validation and merging are not here: every part goes through the same
//! `config` functions, so all sources accept and reject the same text.

pub mod api;
pub mod file;

use std::fmt;

use futures_util::future::select_all;

use api::{ConfigMapSource, SelectorSource};
use file::FileSource;

/// The config a source holds right now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Content {
    Bytes(Vec<u8>),
    /// No file, no ConfigMap, or no key in it: the built-in defaults.
    Absent,
}

/// The outcome of asking a source for its config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    Ready(Content),
    /// The source has not delivered anything yet (the API's first list is
    /// still under way); nothing is known, so nothing may be written.
    NotYet,
    /// The source exists but cannot be read (a directory, no permission,
    /// too large); the last good config stays enforced.
    Failed(String),
}

/// One config document of a source: a file, a file of a directory, or a
/// ConfigMap's key. Its name is how logs, metrics and `check` call it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub read: Read,
}

/// What kind of change woke the loop, for logs and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    File,
    Api,
}

/// The config source of a running agent.
pub enum Source {
    File(FileSource),
    ConfigMap(ConfigMapSource),
    Selector(SelectorSource),
}

impl Source {
    /// The source's parts now.
    pub fn read(&mut self) -> Vec<Part> {
        match self {
            Source::File(file) => file.read(),
            Source::ConfigMap(configmap) => vec![Part {
                name: self_name(configmap),
                read: configmap.read(),
            }],
            Source::Selector(selector) => selector.read(),
        }
    }

    /// Whether the source holds one whole config (a file, or one ConfigMap
    /// key), read as upstream reads its one file.
    fn is_whole(&self) -> bool {
        match self {
            Source::File(file) => file.is_whole(),
            Source::ConfigMap(_) => true,
            // A set of fragments, however many it holds now.
            Source::Selector(_) => false,
        }
    }

    /// Begin watching; call once before waiting on [`Source::changed`].
    pub fn start(&mut self) {
        if let Source::File(file) = self {
            file.start();
        }
    }

    /// Resolves when the config may have changed. Cancel-safe, so it can
    /// race signals and timers.
    pub async fn changed(&mut self) -> ChangeKind {
        match self {
            Source::File(file) => {
                file.changed().await;
                ChangeKind::File
            }
            Source::ConfigMap(configmap) => {
                configmap.changed().await;
                ChangeKind::Api
            }
            Source::Selector(selector) => {
                selector.changed().await;
                ChangeKind::Api
            }
        }
    }

    /// Why nothing is enforced yet, when no config was ever valid.
    pub fn waiting_reason(&self) -> String {
        match self {
            Source::File(_) => "not loaded".to_owned(),
            Source::ConfigMap(configmap) => {
                format!(
                    "waiting for the Kubernetes API to list configmap {}",
                    configmap.configmap()
                )
            }
            Source::Selector(selector) => format!(
                "waiting for the Kubernetes API to list the configmaps of namespace {} selected by {}",
                selector.selector().namespace(),
                selector.selector().selector()
            ),
        }
    }

    /// Where an accepted config came from, for the "using config" log line.
    pub fn origin(&self, content: &Content) -> &'static str {
        match (self, content) {
            (Source::File(_), Content::Bytes(_)) => "file",
            (Source::ConfigMap(_) | Source::Selector(_), Content::Bytes(_)) => "configmap",
            (Source::File(_), Content::Absent) => "defaults (no config file)",
            (Source::ConfigMap(_) | Source::Selector(_), Content::Absent) => {
                "defaults (no configmap or key)"
            }
        }
    }

    /// Where in the file an error in part `name` is, for a ConfigMap
    /// manifest given as a file (whose positions count from its data).
    pub fn locate(&self, name: &str, error: &crate::config::ConfigError) -> Option<String> {
        match self {
            Source::File(file) => file.locate(name, error),
            Source::ConfigMap(_) | Source::Selector(_) => None,
        }
    }

    /// Tell the readers of part `part` that this node rejected `content`.
    pub fn report_invalid(&self, part: &str, content: &Content, error: &str) {
        match self {
            Source::File(_) => {}
            Source::ConfigMap(configmap) => {
                configmap.report_invalid(content_digest(content), error)
            }
            Source::Selector(selector) => {
                selector.report_invalid(part, content_digest(content), error)
            }
        }
    }

    /// Tell the source's readers that rule syncs keep failing; false when
    /// it has no readers to tell (a file).
    pub fn report_sync_failure(&self, error: String) -> bool {
        match self {
            Source::File(_) => false,
            Source::ConfigMap(configmap) => {
                configmap.report_sync_failure(error);
                true
            }
            Source::Selector(selector) => {
                selector.report_sync_failure(error);
                true
            }
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(file) => write!(f, "{}", file.path().display()),
            Source::ConfigMap(configmap) => f.write_str(&self_name(configmap)),
            Source::Selector(selector) => write!(f, "configmaps {}", selector.selector()),
        }
    }
}

fn self_name(configmap: &ConfigMapSource) -> String {
    let object = configmap.configmap();
    api::part_name(object.namespace(), object.name(), configmap.key())
}

/// Every source the agent reads, in the order given on the command line.
pub struct Sources(Vec<Source>);

impl Sources {
    pub fn new(sources: Vec<Source>) -> Self {
        Sources(sources)
    }

    /// One source holding one whole config: read exactly as upstream reads
    /// its file (unset keys take the defaults). Anything else is merged
    /// from fragments.
    pub fn is_whole(&self) -> bool {
        matches!(self.0.as_slice(), [one] if one.is_whole())
    }

    /// Every part of every source, each with the index of its source. A
    /// part named twice (a ConfigMap given by `--configmap` and picked by a
    /// selector, or by two selectors) counts once, from its first source.
    pub fn read(&mut self) -> Vec<(usize, Part)> {
        let mut parts: Vec<(usize, Part)> = Vec::new();
        for (index, source) in self.0.iter_mut().enumerate() {
            for part in source.read() {
                if !parts.iter().any(|(_, seen)| seen.name == part.name) {
                    parts.push((index, part));
                }
            }
        }
        parts
    }

    pub fn start(&mut self) {
        for source in &mut self.0 {
            source.start();
        }
    }

    /// Resolves when any source may have changed. Cancel-safe, as each
    /// source's own `changed` is.
    pub async fn changed(&mut self) -> ChangeKind {
        if self.0.is_empty() {
            return std::future::pending().await;
        }
        let waits = self.0.iter_mut().map(|source| Box::pin(source.changed()));
        select_all(waits).await.0
    }

    pub fn get(&self, index: usize) -> Option<&Source> {
        self.0.get(index)
    }

    /// Why nothing is enforced yet: the first source that has not spoken.
    pub fn waiting_reason(&self) -> String {
        self.0
            .iter()
            .find(|s| match s {
                Source::File(_) => false,
                Source::ConfigMap(configmap) => configmap.is_waiting(),
                Source::Selector(selector) => selector.is_waiting(),
            })
            .or(self.0.first())
            .map(Source::waiting_reason)
            .unwrap_or_else(|| "no config source".to_owned())
    }

    /// Tell readers that rule syncs keep failing: one Event on the Pod,
    /// through the first source that writes Events.
    pub fn report_sync_failure(&self, error: String) {
        for source in &self.0 {
            if source.report_sync_failure(error.clone()) {
                return;
            }
        }
    }
}

impl fmt::Display for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, source) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{source}")?;
        }
        Ok(())
    }
}

/// Identifies rejected content for Event deduplication (in-process only).
fn content_digest(content: &Content) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
