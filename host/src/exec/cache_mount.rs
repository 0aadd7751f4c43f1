//! Cache mounts: directories that persist across builds and processes under
//! `<root>/cache-mounts/`, shared between runs as their `sharing` mode says
//! (BuildKit's `shared`, `private` and `locked`). Their contents never enter a key.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{mkdir_private, ExecError};
use crate::store::FileLock;

/// How concurrent runs share one cache id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Every run uses the same directory at once.
    Shared,
    /// A run that finds the directory in use gets another instance of its own.
    Private,
    /// Runs take turns: one waits until the other is done.
    Locked,
}

impl Sharing {
    /// Parses `shared`, `private` or `locked`.
    pub fn parse(s: &str) -> Option<Sharing> {
        match s {
            "shared" => Some(Sharing::Shared),
            "private" => Some(Sharing::Private),
            "locked" => Some(Sharing::Locked),
            _ => None,
        }
    }
}

/// A cache directory held for one run (with its lock, for `private` and `locked`).
#[derive(Debug)]
pub struct CacheMount {
    /// The directory to bind into the run.
    pub dir: PathBuf,
    _lock: Option<FileLock>,
}

impl CacheMount {
    /// Takes the cache `id` under `base` (`<root>/cache-mounts`) for one run.
    pub fn acquire(
        base: &Path,
        id: &str,
        sharing: Sharing,
        cancel: &AtomicBool,
    ) -> Result<CacheMount, ExecError> {
        mkdir_private(base)?;
        // Lock files are opened beneath the kiln root that `base` is in.
        let root = base.parent().unwrap_or(base);
        // The id is user text: a hash names the folder.
        let name = hex::encode(Sha256::digest(id.as_bytes()));
        let lock_err = |e| ExecError::setup(format!("lock cache mount {id:?}"), e);
        let (dir, lock) = match sharing {
            Sharing::Shared => (base.join(&name), None),
            Sharing::Locked => {
                let lock_path = base.join(format!("{name}.lock"));
                let lock = loop {
                    if let Some(l) = FileLock::try_acquire(root, &lock_path).map_err(lock_err)? {
                        break l;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(ExecError::Cancelled);
                    }
                    std::thread::sleep(Duration::from_millis(25));
                };
                (base.join(&name), Some(lock))
            }
            Sharing::Private => {
                let mut n = 0u32;
                loop {
                    let instance = if n == 0 {
                        name.clone()
                    } else {
                        format!("{name}-{n}")
                    };
                    let lock_path = base.join(format!("{instance}.lock"));
                    if let Some(l) = FileLock::try_acquire(root, &lock_path).map_err(lock_err)? {
                        break (base.join(instance), Some(l));
                    }
                    n += 1;
                }
            }
        };
        if !dir.is_dir() {
            std::fs::create_dir(&dir)
                .or_else(|e| if dir.is_dir() { Ok(()) } else { Err(e) })
                .map_err(|e| ExecError::setup(format!("create cache mount {id:?}"), e))?;
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755));
        }
        Ok(CacheMount { dir, _lock: lock })
    }
}
