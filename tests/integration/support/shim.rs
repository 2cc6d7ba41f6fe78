//! Stand-ins for the agent's tools: a directory of bash scripts put first
//! on the agent's PATH. A shim usually runs the real tool (`$REAL`) and then
//! does what the test needs (record the call, race the agent with a write
//! of its own); a hostile one does what a broken or malicious tool would.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A directory of shims; deleted on drop.
pub struct Shims {
    dir: TempDir,
}

impl Shims {
    pub fn new() -> Shims {
        let dir = tempfile::Builder::new()
            .prefix("imqa-shims-")
            .tempdir()
            .expect("temp dir for the shims");
        Shims { dir }
    }

    /// The directory (for files the shims share with the test).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Installs `tool` as `#!/bin/bash` + `body`, with `REAL` set to the
    /// real tool's path (empty when it is not installed).
    pub fn install(&self, tool: &str, body: &str) {
        let real = real_path(tool)
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let script = format!("#!/bin/bash\nREAL=\"{real}\"\n{body}\n");
        let path = self.dir.path().join(tool);
        fs::write(&path, script).expect("write a shim");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod a shim");
    }

    /// `PATH` with the shims first.
    pub fn path(&self) -> String {
        let rest = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        format!("{}:{rest}", self.dir.path().display())
    }
}

/// Where the real `tool` is installed.
pub fn real_path(tool: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.exists())
}
