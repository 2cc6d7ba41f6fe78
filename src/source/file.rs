//! The config file source (`--config`): reading it, and noticing changes
//! the moment they happen.
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
//!
//! [`FileSource`] owns all of it: the path, the watch, the poll, and the
//! file's identity at the last read.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{info, warn};

use super::{Content, Part, Read};
use crate::config;
use crate::logging::Escaped;

/// How often the config file's identity is checked besides the watch, so an
/// edit (or a fix after an invalid file) is picked up within this delay even
/// when inotify is unavailable.
pub const FILE_POLL: Duration = Duration::from_secs(1);

/// After a directory event, wait this long for the rest of the burst (a
/// kubelet update is several renames and unlinks within microseconds).
pub const COALESCE: Duration = Duration::from_millis(5);

/// A file that was emptied in place (same inode, had content) is not
/// believed until it stays empty this long: an editor or `>` redirection
/// truncates first and writes after, and the moment between must not apply
/// the defaults. Kubelet's swaps replace the file, so they never wait.
pub const TRUNCATION_SETTLE: Duration = Duration::from_millis(250);

/// The data key read from a ConfigMap manifest given as a file, unless the
/// caller names another (`--configmap-key`): the key the manifests use.
pub const DEFAULT_MANIFEST_KEY: &str = "config";

/// A `--config` path: one file, watched through its directory, or a
/// directory (a ConfigMap volume with several keys, a projected volume),
/// watched itself; polled as a fallback either way.
pub struct FileSource {
    path: PathBuf,
    watch: ConfigWatch,
    events: mpsc::Receiver<()>,
    poll: Option<Interval>,
    /// The file's identity when it was last read.
    stamp: Option<FileStamp>,
    /// An event arrived and its burst is still being waited out; kept here
    /// so that a caller dropping `changed()` mid-wait loses nothing.
    pending: bool,
    /// The ConfigMap data key used when a file is a ConfigMap manifest.
    manifest_key: String,
    /// Per file, what the last read found: (dev, inode, non-empty).
    seen: HashMap<PathBuf, (u64, u64, bool)>,
    /// Files emptied in place, and when their emptiness may be believed.
    settling: HashMap<PathBuf, Instant>,
    /// Files read as ConfigMap manifests (said once while they stay so),
    /// with the file line where their data starts, when known.
    manifests: HashMap<PathBuf, Option<usize>>,
}

impl FileSource {
    pub fn new(path: PathBuf) -> Self {
        // A directory is watched itself; a file (or nothing yet) through
        // its parent, where kubelet swaps the `..data` symlink.
        let (watch, events) = if path.is_dir() {
            ConfigWatch::on_dir(path.clone())
        } else {
            ConfigWatch::new(&path)
        };
        FileSource {
            path,
            watch,
            events,
            poll: None,
            stamp: None,
            pending: false,
            manifest_key: DEFAULT_MANIFEST_KEY.to_owned(),
            seen: HashMap::new(),
            settling: HashMap::new(),
            manifests: HashMap::new(),
        }
    }

    /// Read a file that is a ConfigMap manifest by this data key.
    pub fn manifest_key(mut self, key: &str) -> Self {
        key.clone_into(&mut self.manifest_key);
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the path holds one whole config (a file, or nothing), as
    /// opposed to a directory of fragments.
    pub fn is_whole(&self) -> bool {
        !self.path.is_dir()
    }

    /// What the path holds now: for a file, one part (a missing file is
    /// `Absent`, the defaults); for a directory, one part per regular file
    /// in it (symlinks followed) whose name does not start with `.`, in name
    /// order, which is what kubelet projects for each ConfigMap key.
    pub fn read(&mut self) -> Vec<Part> {
        self.stamp = Some(stamp(&self.path));
        if !self.path.is_dir() {
            let path = self.path.clone();
            return vec![Part {
                name: path.display().to_string(),
                read: self.read_file(&path),
            }];
        }
        match fragment_files(&self.path) {
            Ok(files) => {
                // What is remembered per file is only for files still there.
                self.seen.retain(|path, _| files.contains(path));
                self.settling.retain(|path, _| files.contains(path));
                self.manifests.retain(|path, _| files.contains(path));
                files
                    .into_iter()
                    .map(|file| Part {
                        name: file.display().to_string(),
                        read: self.read_file(&file),
                    })
                    .collect()
            }
            Err(err) => vec![Part {
                name: self.path.display().to_string(),
                read: Read::Failed(format!(
                    "cannot list config directory {}: {err}",
                    self.path.display()
                )),
            }],
        }
    }

    /// Resolves when the file may have changed: a directory event (after
    /// its burst), a watch just (re)established, or a poll that finds the
    /// file's identity different from the last read. Cancel-safe.
    pub async fn changed(&mut self) {
        let poll = self.poll.get_or_insert_with(|| {
            let mut poll = tokio::time::interval(FILE_POLL);
            poll.set_missed_tick_behavior(MissedTickBehavior::Skip);
            poll
        });
        loop {
            // A file emptied in place is looked at again once it settled.
            let settle = self.settling.values().min().copied();
            if self.pending {
                tokio::time::sleep(COALESCE).await;
                while self.events.try_recv().is_ok() {}
                self.pending = false;
                return;
            }
            tokio::select! {
                Some(()) = self.events.recv() => self.pending = true,
                () = sleep_until(settle) => return,
                _ = poll.tick() => {
                    // Re-watch a directory that appeared or was replaced,
                    // and poll the file itself as the fallback.
                    if self.watch.ensure() || self.stamp.as_ref() != Some(&stamp(&self.path)) {
                        return;
                    }
                }
            }
        }
    }

    /// Start watching (a missing directory is polled until it appears).
    pub fn start(&mut self) {
        self.watch.ensure();
    }
}

impl FileSource {
    /// One file's config: its bytes, or a ConfigMap manifest's data key (said
    /// once), or `NotYet` while a file emptied in place settles.
    fn read_file(&mut self, path: &Path) -> Read {
        let bytes = match config::read(path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                self.seen.remove(path);
                self.settling.remove(path);
                return Read::Ready(Content::Absent);
            }
            Err(err) => return Read::Failed(err.to_string()),
        };
        if self.unsettled(path, bytes.is_empty()) {
            return Read::NotYet;
        }
        match config::configmap_data(&bytes, &self.manifest_key) {
            Ok(None) => {
                self.manifests.remove(path);
                Read::Ready(Content::Bytes(bytes))
            }
            Ok(Some(data)) => {
                let start = config::manifest_data_line(&bytes, &self.manifest_key, &data);
                if self.manifests.insert(path.to_owned(), start).is_none() {
                    info!(
                        file = %Escaped(&path.display().to_string()),
                        key = %self.manifest_key,
                        "config file is a ConfigMap manifest; using its data.{}",
                        self.manifest_key
                    );
                }
                Read::Ready(Content::Bytes(data))
            }
            Err(err) => Read::Failed(format!(
                "{} is a ConfigMap manifest, but {err}; pass --configmap-key naming the key that holds the config, \
                 or point --config at the file the ConfigMap is mounted as",
                path.display()
            )),
        }
    }

    /// Where in the file an error in part `name` is, when that part is a
    /// ConfigMap manifest: its positions count from the start of the data.
    pub fn locate(&self, name: &str, error: &config::ConfigError) -> Option<String> {
        let (path, start) = self
            .manifests
            .iter()
            .find(|(path, _)| path.display().to_string() == name)?;
        let line = config::file_line((*start)?, error)?;
        Some(format!(
            "data.{} line {} is line {line} of {}",
            self.manifest_key,
            error.line()?,
            path.display()
        ))
    }

    /// Whether `path`, read now (`empty` or not), was emptied in place and is
    /// still within [`TRUNCATION_SETTLE`] of that: same inode as a read that
    /// had content, so a writer truncated it and may be about to write.
    fn unsettled(&mut self, path: &Path, empty: bool) -> bool {
        let identity = std::fs::metadata(path)
            .ok()
            .map(|meta| (meta.dev(), meta.ino()));
        let emptied = empty
            && identity.is_some_and(|(dev, ino)| self.seen.get(path) == Some(&(dev, ino, true)));
        if emptied {
            let now = Instant::now();
            let until = *self
                .settling
                .entry(path.to_owned())
                .or_insert(now + TRUNCATION_SETTLE);
            if now < until {
                return true;
            }
        }
        self.settling.remove(path);
        match identity {
            Some((dev, ino)) => self.seen.insert(path.to_owned(), (dev, ino, !empty)),
            None => self.seen.remove(path),
        };
        false
    }
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The regular files of `dir` (after following symlinks) whose names do not
/// start with `.`, sorted by name: kubelet's `..data` and timestamped
/// directories are hidden, the keys' symlinks are not.
fn fragment_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|meta| meta.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Identity of the config file as the kubelet changes it: a ConfigMap update
/// swaps a symlink, so the resolved inode changes even if size and mtime match.
/// A directory's identity is that of each of its fragment files.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileStamp {
    Absent,
    Dir(Vec<(PathBuf, FileStamp)>),
    Present {
        dev: u64,
        ino: u64,
        len: u64,
        modified: Option<SystemTime>,
    },
    Unreadable(String),
}

fn stamp(path: &Path) -> FileStamp {
    if path.is_dir() {
        return match fragment_files(path) {
            Ok(files) => FileStamp::Dir(
                files
                    .into_iter()
                    .map(|file| {
                        let stamp = stamp(&file);
                        (file, stamp)
                    })
                    .collect(),
            ),
            Err(err) => FileStamp::Unreadable(err.kind().to_string()),
        };
    }
    match std::fs::metadata(path) {
        Ok(meta) => FileStamp::Present {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            modified: meta.modified().ok(),
        },
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => FileStamp::Absent,
        Err(err) => FileStamp::Unreadable(err.kind().to_string()),
    }
}

/// How the config file is being observed right now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// inotify on the parent directory.
    Watching,
    /// Polling, with the reason the watch is not possible.
    Polling(String),
}

/// A watch on the config file's directory that can re-establish itself.
struct ConfigWatch {
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
        Self::on_dir(dir)
    }

    /// Prepare a watch on `dir` itself.
    pub fn on_dir(dir: PathBuf) -> (Self, mpsc::Receiver<()>) {
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
    #[cfg(test)]
    fn mode(&self) -> Option<&Mode> {
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
                FILE_POLL.as_secs()
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

    fn only(parts: Vec<Part>) -> Read {
        let [part] = <[Part; 1]>::try_from(parts).unwrap();
        part.read
    }

    #[tokio::test]
    async fn a_file_emptied_in_place_settles_before_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, "cidrLimit: 5\n").unwrap();
        let mut source = FileSource::new(path.clone());
        assert_eq!(
            only(source.read()),
            Read::Ready(Content::Bytes(b"cidrLimit: 5\n".to_vec()))
        );
        // Truncated in place: not believed yet, and `changed` looks again
        // once the settle time is over.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        assert_eq!(only(source.read()), Read::NotYet);
        let started = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), source.changed())
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        // Still empty after the settle time: the empty file it is.
        tokio::time::sleep_until(started + TRUNCATION_SETTLE).await;
        assert_eq!(only(source.read()), Read::Ready(Content::Bytes(Vec::new())));
        assert_eq!(only(source.read()), Read::Ready(Content::Bytes(Vec::new())));
        // Written within the settle time: the new content at once.
        std::fs::write(&path, "cidrLimit: 6\n").unwrap();
        assert!(matches!(only(source.read()), Read::Ready(Content::Bytes(b)) if !b.is_empty()));
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        assert_eq!(only(source.read()), Read::NotYet);
        std::fs::write(&path, "cidrLimit: 7\n").unwrap();
        assert_eq!(
            only(source.read()),
            Read::Ready(Content::Bytes(b"cidrLimit: 7\n".to_vec()))
        );
        // An empty file put in place by a rename (a new inode) is not a
        // truncation: believed at once.
        let new = dir.path().join("new");
        std::fs::write(&new, "").unwrap();
        std::fs::rename(&new, &path).unwrap();
        assert_eq!(only(source.read()), Read::Ready(Content::Bytes(Vec::new())));
    }

    #[test]
    fn a_manifest_is_read_by_its_data_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(
            &path,
            "kind: ConfigMap\ndata:\n  other: |\n    cidrLimit: 5\n",
        )
        .unwrap();
        let mut source = FileSource::new(path.clone()).manifest_key("other");
        assert_eq!(
            only(source.read()),
            Read::Ready(Content::Bytes(b"cidrLimit: 5\n".to_vec()))
        );
        let mut source = FileSource::new(path.clone());
        let Read::Failed(err) = only(source.read()) else {
            panic!("a manifest without the key was accepted");
        };
        assert!(
            err.contains(
                r#"ConfigMap data key "config" is missing (data has: other); pass --configmap-key"#
            ),
            "{err}"
        );
    }

    #[test]
    fn stamp_sees_a_symlink_swap() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        std::fs::write(&a, "x").unwrap();
        std::fs::write(&b, "y").unwrap();
        let link = dir.path().join("config");
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let first = stamp(&link);
        let tmp = dir.path().join("tmp");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert_ne!(first, stamp(&link));
        std::fs::remove_file(&link).unwrap();
        assert_eq!(stamp(&link), FileStamp::Absent);
    }
}
