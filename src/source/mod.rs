//! Where the config comes from: a file (a mounted ConfigMap) or a ConfigMap
//! read through the Kubernetes API.
//!
//! A [`Source`] owns what it watches and what it last delivered; the agent
//! only asks it for the bytes now ([`Source::read`]), waits for it to change
//! ([`Source::changed`]), and hands it problems to report where that source's
//! readers look (Events on the ConfigMap). Decoding and validation are not
//! here: every source's bytes go through the same `config::parse`, so all
//! of them accept and reject exactly the same text.

pub mod api;
pub mod file;

use std::fmt;

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
    /// The config bytes now.
    pub fn read(&mut self) -> Read {
        match self {
            Source::File(file) => file.read(),
            Source::ConfigMap(configmap) => configmap.read(),
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
            Source::ConfigMap(configmap) => write!(
                f,
                "configmap {} key {}",
                configmap.configmap(),
                configmap.key()
            ),
        }
    }
}

/// Identifies rejected content for Event deduplication (in-process only).
fn content_digest(content: &Content) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    content.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}
