//! Noticing config changes the moment they happen.
//!
//! A kubelet ConfigMap volume never edits the file in place: it writes a new
//! timestamped directory and renames a `..data` symlink over the old one. So
//! we watch the file's parent directory (inotify, through `notify`), not the
//! file, and treat any event there as "look again". The agent decides whether
//! the content really changed.
//!
//! The watch can be unavailable: the directory does not exist yet (the
//! ConfigMap volume is optional), it vanished, or the node ran out of inotify
//! watches. Then the agent falls back to polling the file's identity, says so
//! once, and `ensure` re-establishes the watch when it can.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// How the config file is being observed right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// inotify on the parent directory.
    Watching,
    /// Polling, with the reason the watch is not possible.
    Polling(String),
}

/// A watch on the config file's directory that can re-establish itself.
pub struct ConfigWatch {
    dir: PathBuf,
    /// (dev, inode) of the directory we watch: a replaced directory needs a
    /// new watch even though the path is the same.
    watched: Option<(u64, u64)>,
    watcher: Option<RecommendedWatcher>,
    /// Set by the event handler when the watched directory itself goes away
    /// (a new one may reuse the inode number, so identity alone can't tell).
    lost: Arc<AtomicBool>,
    tx: mpsc::Sender<()>,
    mode: Option<Mode>,
}

impl ConfigWatch {
    /// Prepare a watch for `config_path`; events arrive on the receiver, one
    /// pending notification at most (a burst coalesces into one).
    pub fn new(config_path: &Path) -> (Self, mpsc::Receiver<()>) {
        let dir = match config_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tx, rx) = mpsc::channel(1);
        let watch = ConfigWatch {
            dir,
            watched: None,
            watcher: None,
            lost: Arc::new(AtomicBool::new(false)),
            tx,
            mode: None,
        };
        (watch, rx)
    }

    /// The current mode.
    pub fn mode(&self) -> Option<&Mode> {
        self.mode.as_ref()
    }

    /// Make sure a watch is in place if one can be; log every change of mode
    /// once. Cheap to call on every poll tick. Returns true when a new watch
    /// was just established (the caller should look at the file once, since
    /// events before the watch were missed).
    pub fn ensure(&mut self) -> bool {
        let current = std::fs::metadata(&self.dir)
            .ok()
            .filter(|meta| meta.is_dir())
            .map(|meta| (meta.dev(), meta.ino()));
        let lost = self.lost.swap(false, Ordering::SeqCst);
        if !lost && current.is_some() && current == self.watched && self.watcher.is_some() {
            return false;
        }
        self.watcher = None;
        self.watched = None;
        let Some(identity) = current else {
            self.set_mode(Mode::Polling(format!(
                "config directory {} does not exist",
                self.dir.display()
            )));
            return false;
        };
        match self.start() {
            Ok(watcher) => {
                self.watcher = Some(watcher);
                self.watched = Some(identity);
                self.set_mode(Mode::Watching);
                true
            }
            Err(err) => {
                self.set_mode(Mode::Polling(polling_reason(&err, &self.dir)));
                false
            }
        }
    }

    fn start(&self) -> notify::Result<RecommendedWatcher> {
        let tx = self.tx.clone();
        let lost = Arc::clone(&self.lost);
        let dir = self.dir.clone();
        let handler = move |event: notify::Result<notify::Event>| {
            // Opening or reading the file (our own reload does) changes
            // nothing; reacting to it would make every read trigger the next.
            if let Ok(event) = &event
                && event.kind.is_access()
            {
                return;
            }
            if let Ok(event) = &event
                && event.kind.is_remove()
                && event.paths.contains(&dir)
            {
                lost.store(true, Ordering::SeqCst);
            }
            // Any event, even an error, is a reason to look again; a full
            // channel already holds a pending look.
            let _ = tx.try_send(());
        };
        let mut watcher = notify::recommended_watcher(handler)?;
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    fn set_mode(&mut self, mode: Mode) {
        if self.mode.as_ref() == Some(&mode) {
            return;
        }
        match &mode {
            Mode::Watching => {
                info!(dir = %self.dir.display(), "watching the config directory for changes")
            }
            Mode::Polling(reason) => warn!(
                dir = %self.dir.display(),
                "{reason}; polling the config file every {} s instead",
                crate::agent::FILE_POLL.as_secs()
            ),
        }
        self.mode = Some(mode);
    }
}

/// Why a watch could not be set up, in words that point at the fix.
fn polling_reason(err: &notify::Error, dir: &Path) -> String {
    let limit = matches!(err.kind, notify::ErrorKind::MaxFilesWatch)
        || matches!(&err.kind, notify::ErrorKind::Io(io) if io.raw_os_error() == Some(libc_emfile()));
    if limit {
        "the node's inotify limits are reached (fs.inotify.max_user_watches / max_user_instances)"
            .to_owned()
    } else {
        format!("cannot watch {}: {err}", dir.display())
    }
}

/// EMFILE: inotify_init fails with it when max_user_instances is reached.
const fn libc_emfile() -> i32 {
    24
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn next(rx: &mut mpsc::Receiver<()>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn sees_a_kubelet_style_swap() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).unwrap();
        std::fs::write(root.join("..v1/ip-masq-agent"), "a").unwrap();
        std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/ip-masq-agent", root.join("ip-masq-agent")).unwrap();

        let (mut watch, mut rx) = ConfigWatch::new(&root.join("ip-masq-agent"));
        assert!(watch.ensure());
        assert_eq!(watch.mode(), Some(&Mode::Watching));
        assert!(!watch.ensure(), "an established watch is kept");

        std::fs::create_dir(root.join("..v2")).unwrap();
        std::fs::write(root.join("..v2/ip-masq-agent"), "b").unwrap();
        std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        assert!(next(&mut rx).await, "no event for the swap");
    }

    #[test]
    fn inotify_limits_are_named() {
        let dir = Path::new("/etc/config");
        let watches = notify::Error::new(notify::ErrorKind::MaxFilesWatch);
        assert!(polling_reason(&watches, dir).contains("inotify limits are reached"));
        let instances = notify::Error::io(std::io::Error::from_raw_os_error(24));
        assert!(polling_reason(&instances, dir).contains("inotify limits are reached"));
        let other = notify::Error::path_not_found();
        assert!(polling_reason(&other, dir).starts_with("cannot watch /etc/config"));
    }

    #[tokio::test]
    async fn reading_the_file_is_not_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ip-masq-agent");
        std::fs::write(&file, "a").unwrap();
        let (mut watch, mut rx) = ConfigWatch::new(&file);
        assert!(watch.ensure());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a");
        let quiet = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await;
        assert!(quiet.is_err(), "a read was reported as a change");
        std::fs::write(&file, "b").unwrap();
        assert!(next(&mut rx).await);
    }

    #[tokio::test]
    async fn missing_directory_polls_then_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("config");
        let (mut watch, mut rx) = ConfigWatch::new(&config_dir.join("ip-masq-agent"));
        assert!(!watch.ensure());
        assert!(matches!(watch.mode(), Some(Mode::Polling(_))));
        std::fs::create_dir(&config_dir).unwrap();
        assert!(watch.ensure());
        std::fs::write(config_dir.join("ip-masq-agent"), "x").unwrap();
        assert!(next(&mut rx).await);
        // The directory is replaced (possibly reusing the inode number): the
        // watch follows the new one once the removal has been seen.
        std::fs::remove_dir_all(&config_dir).unwrap();
        std::fs::create_dir(&config_dir).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !watch.ensure() {
            assert!(
                std::time::Instant::now() < deadline,
                "watch not re-established"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        while rx.try_recv().is_ok() {}
        std::fs::write(config_dir.join("ip-masq-agent"), "y").unwrap();
        assert!(next(&mut rx).await);
    }
}
