//! The ETag index: for each URL hash, the ETags seen with the digest of the body they
//! came with. One small JSON file per URL hash in the plugin's state directory,
//! replaced atomically (temp file + fsync + rename), with a lock file that also makes
//! a URL resolve in one process at a time.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_plugin_api::{Job, PluginError, Result};
use serde::{Deserialize, Serialize};

/// How many ETags are remembered per URL hash.
const MAX_ENTRIES: usize = 8;

/// One remembered response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The ETag with any `W/` prefix removed, quotes kept.
    pub etag: String,
    /// `sha256:<hex>` of the body.
    pub digest: String,
    /// The `Last-Modified` header as sent, if any.
    pub last_modified: Option<String>,
}

/// The index under a state directory.
#[derive(Clone, Debug)]
pub struct EtagIndex {
    dir: PathBuf,
}

/// An exclusive lock on one URL hash, released on drop.
pub struct UrlLock {
    _file: File,
}

impl EtagIndex {
    /// The index stored in `state_dir/etags`.
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("etags"),
        }
    }

    fn path(&self, url_hash: &str) -> PathBuf {
        self.dir.join(format!("{url_hash}.json"))
    }

    /// Takes the lock of `url_hash`, waiting (and polling for cancellation) while
    /// another thread or process holds it.
    pub fn lock(&self, url_hash: &str, job: &Job<'_>) -> Result<UrlLock> {
        fs::create_dir_all(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let path = self.dir.join(format!("{url_hash}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        loop {
            // SAFETY: flock on a descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(UrlLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.kind() != std::io::ErrorKind::Interrupted
            {
                return Err(io_err(&path, err));
            }
            job.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The entries for `url_hash` (empty when none or unreadable).
    pub fn load(&self, url_hash: &str) -> Vec<Entry> {
        match fs::read(self.path(url_hash)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!("ignoring unreadable ETag index {url_hash}: {e}");
                Vec::new()
            }),
            Err(_) => Vec::new(),
        }
    }

    /// Records `entry` for `url_hash` (call with the lock held). The newest entry
    /// comes first; an older one with the same ETag is replaced.
    pub fn add(&self, url_hash: &str, entry: Entry) -> Result<()> {
        let mut entries = self.load(url_hash);
        entries.retain(|e| e.etag != entry.etag);
        entries.insert(0, entry);
        entries.truncate(MAX_ENTRIES);
        let path = self.path(url_hash);
        let tmp = self
            .dir
            .join(format!(".{url_hash}.{}.tmp", std::process::id()));
        let bytes =
            serde_json::to_vec(&entries).map_err(|e| PluginError::internal(e.to_string()))?;
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err(&path, e)
        })
    }
}

fn io_err(path: &Path, e: std::io::Error) -> PluginError {
    PluginError::internal(format!("http plugin state {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_replaces_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let idx = EtagIndex::new(dir.path());
        assert!(idx.load("h").is_empty());
        fs::create_dir_all(dir.path().join("etags")).unwrap();
        for i in 0..12 {
            idx.add(
                "h",
                Entry {
                    etag: format!("\"e{i}\""),
                    digest: format!("sha256:{i}"),
                    last_modified: None,
                },
            )
            .unwrap();
        }
        idx.add(
            "h",
            Entry {
                etag: "\"e11\"".into(),
                digest: "sha256:new".into(),
                last_modified: Some("x".into()),
            },
        )
        .unwrap();
        let got = idx.load("h");
        assert_eq!(got.len(), MAX_ENTRIES);
        assert_eq!(got[0].digest, "sha256:new");
        assert_eq!(got.iter().filter(|e| e.etag == "\"e11\"").count(), 1);
        assert!(idx.load("other").is_empty());
    }
}
