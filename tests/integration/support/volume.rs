//! A config directory laid out exactly as kubelet mounts a ConfigMap volume.
//!
//! The agent must follow kubelet's atomic updates, so the tests reproduce
//! them step by step rather than rewriting a file in place:
//! ```text
//! DIR/..2026_11_26_10_00_00.123/ip-masq-agent   the data
//! DIR/..data -> ..2026_11_26_10_00_00.123        swapped atomically on update
//! DIR/ip-masq-agent -> ..data/ip-masq-agent      what --config points at
//! ```
//! An update writes a new timestamped directory, points a `..data_tmp`
//! symlink at it, renames that over `..data`, then deletes the old directory.
//! A removed key loses its user-visible symlink the same way.
//!
//! For the live-reload tests the directory itself can also be missing at
//! start (`missing`), vanish (`delete_dir`) and come back (`create_dir`).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// The ConfigMap key upstream reads, i.e. the file name under the mount.
pub const KEY: &str = "ip-masq-agent";

#[derive(Debug)]
pub struct ConfigVolume {
    /// Owns the temporary directory (deleted on drop). The volume is this
    /// directory itself, or for `missing()` a subdirectory of it.
    _base: TempDir,
    /// The volume's directory (the mount point); it may not exist.
    dir: PathBuf,
    /// Name of the timestamped directory `..data` points at.
    current: Option<String>,
    /// Makes every timestamped name unique within this volume.
    generation: u32,
    /// The keys whose user-visible symlinks exist.
    visible: Vec<String>,
}

fn temp_base() -> TempDir {
    tempfile::Builder::new()
        .prefix("imqa-volume-")
        .tempdir()
        .expect("temp dir for the config volume")
}

impl ConfigVolume {
    /// A mounted optional volume whose ConfigMap has no `ip-masq-agent` key:
    /// `--config` points at a path that does not exist (the agent must use
    /// the defaults).
    pub fn empty() -> ConfigVolume {
        let base = temp_base();
        let dir = base.path().to_owned();
        let mut v = ConfigVolume {
            _base: base,
            dir,
            current: None,
            generation: 0,
            visible: Vec::new(),
        };
        v.write(None);
        v
    }

    /// A volume whose directory does not exist (yet): `--config` points into
    /// a missing directory. `create_dir` makes it appear.
    pub fn missing() -> ConfigVolume {
        let base = temp_base();
        let dir = base.path().join("volume");
        ConfigVolume {
            _base: base,
            dir,
            current: None,
            generation: 0,
            visible: Vec::new(),
        }
    }

    /// A volume holding `text` under the key.
    pub fn with(text: &str) -> ConfigVolume {
        let mut v = ConfigVolume::empty();
        v.update(text);
        v
    }

    /// The directory (the volume's mount point).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What to pass as `--config`: `DIR/ip-masq-agent`, a symlink while the
    /// key exists.
    pub fn path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    /// kubelet's update after the ConfigMap changed to `text`.
    pub fn update(&mut self, text: &str) {
        self.write(Some(text));
    }

    /// kubelet's update after the key (or the whole optional ConfigMap) was
    /// deleted: the user-visible symlink disappears.
    pub fn remove(&mut self) {
        self.write(None);
    }

    /// The whole volume directory disappears (unmounted, or deleted by
    /// someone): the directory and everything in it.
    pub fn delete_dir(&mut self) {
        fs::remove_dir_all(&self.dir).expect("delete the volume directory");
        self.current = None;
        self.visible.clear();
    }

    /// The volume directory (re)appears as kubelet lays out a fresh volume
    /// without the key: the directory, a timestamped directory and `..data`.
    /// `update` then adds the key as usual.
    pub fn create_dir(&mut self) {
        fs::create_dir(&self.dir).expect("create the volume directory");
        self.write(None);
    }

    /// kubelet's update of a ConfigMap with several keys (or a projected
    /// volume of several ConfigMaps): every key in `keys` gets its file,
    /// keys not listed lose theirs, all in one `..data` swap.
    #[allow(dead_code)] // the end-to-end suite compiles this file too
    pub fn update_keys(&mut self, keys: &[(&str, &str)]) {
        self.write_keys(keys);
    }

    fn write(&mut self, content: Option<&str>) {
        match content {
            Some(text) => self.write_keys(&[(KEY, text)]),
            None => self.write_keys(&[]),
        }
    }

    fn write_keys(&mut self, keys: &[(&str, &str)]) {
        let root = self.dir.as_path();
        self.generation += 1;
        let g = self.generation;
        // kubelet's format: ..YYYY_MM_DD_HH_MM_SS.<nanos>; only uniqueness
        // matters to the reader.
        let stamp = format!("..2026_11_26_10_{:02}_{:02}.{:09}", g / 60, g % 60, 123 + g);
        let new_dir = root.join(&stamp);
        fs::create_dir(&new_dir).expect("create the timestamped directory");
        for (key, text) in keys {
            fs::write(new_dir.join(key), text).expect("write a key into the new directory");
        }
        let tmp = root.join("..data_tmp");
        symlink(&stamp, &tmp).expect("create ..data_tmp");
        fs::rename(&tmp, root.join("..data")).expect("rename ..data_tmp over ..data");
        for (key, _) in keys {
            let visible = root.join(key);
            if visible.symlink_metadata().is_err() {
                symlink(format!("..data/{key}"), &visible).expect("create the key's symlink");
            }
        }
        for old in self.visible.drain(..) {
            if !keys.iter().any(|(key, _)| *key == old) {
                fs::remove_file(root.join(&old)).expect("remove the key's symlink");
            }
        }
        self.visible = keys.iter().map(|(key, _)| key.to_string()).collect();
        if let Some(old) = self.current.replace(stamp) {
            fs::remove_dir_all(root.join(old)).expect("delete the old timestamped directory");
        }
    }
}
