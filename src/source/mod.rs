//! Where the config comes from: files and directories (mounted ConfigMaps)
//! and ConfigMaps read through the Kubernetes API, any number of each.
//!
//! A [`Source`] owns what it watches and what it last delivered; the agent
//! only asks it for its parts now ([`Source::read`]: one per file or
//! ConfigMap key), waits for it to change ([`Source::changed`]), and hands
//! it problems to report where that source's readers look (Events on the
//! ConfigMap). [`Sources`] is the set the agent runs with. Decoding,
//! validation and merging are not here: every part goes through the same
//! `config` functions, so all sources accept and reject the same text.

pub mod api;
pub mod file;

use std::fmt;

use futures_util::future::select_all;

use api::ConfigMapSource;
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
        }
    }

    /// Whether the source holds one whole config (a file, or one ConfigMap
    /// key), read as upstream reads its one file.
    fn is_whole(&self) -> bool {
        match self {
            Source::File(file) => file.is_whole(),
            Source::ConfigMap(_) => true,
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
        }
    }

    /// Where an accepted config came from, for the "using config" log line.
    pub fn origin(&self, content: &Content) -> &'static str {
        match (self, content) {
            (Source::File(_), Content::Bytes(_)) => "file",
            (Source::ConfigMap(_), Content::Bytes(_)) => "configmap",
            (Source::File(_), Content::Absent) => "defaults (no config file)",
            (Source::ConfigMap(_), Content::Absent) => "defaults (no configmap or key)",
        }
    }

    /// Where in the file an error in part `name` is, for a ConfigMap
    /// manifest given as a file (whose positions count from its data).
    pub fn locate(&self, name: &str, error: &crate::config::ConfigError) -> Option<String> {
        match self {
            Source::File(file) => file.locate(name, error),
            Source::ConfigMap(_) => None,
        }
    }

    /// Tell the source's readers that this node rejected `content`.
    pub fn report_invalid(&self, content: &Content, error: &str) {
        if let Source::ConfigMap(configmap) = self {
            configmap.report_invalid(content_digest(content), error);
        }
    }

    /// Tell the source's readers that rule syncs keep failing.
    pub fn report_sync_failure(&self, error: String) {
        if let Source::ConfigMap(configmap) = self {
            configmap.report_sync_failure(error);
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(file) => write!(f, "{}", file.path().display()),
            Source::ConfigMap(configmap) => f.write_str(&self_name(configmap)),
        }
    }
}

fn self_name(configmap: &ConfigMapSource) -> String {
    format!(
        "configmap {} key {}",
        configmap.configmap(),
        configmap.key()
    )
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

    /// Every part of every source, each with the index of its source.
    pub fn read(&mut self) -> Vec<(usize, Part)> {
        let mut parts = Vec::new();
        for (index, source) in self.0.iter_mut().enumerate() {
            parts.extend(source.read().into_iter().map(|part| (index, part)));
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
            .find(|s| matches!(s, Source::ConfigMap(_)))
            .or(self.0.first())
            .map(Source::waiting_reason)
            .unwrap_or_else(|| "no config source".to_owned())
    }

    /// Tell every source's readers that rule syncs keep failing.
    pub fn report_sync_failure(&self, error: String) {
        for source in &self.0 {
            source.report_sync_failure(error.clone());
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
