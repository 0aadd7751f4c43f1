//! Advisory file locks (`flock(2)`) shared between threads and processes.
//!
//! A lock is an open file description of a lock file with `LOCK_EX` held on it. Every
//! acquisition opens the file anew, so two threads of one process exclude each other just
//! as two processes do. The kernel drops the lock when the holder dies, including by
//! `kill -9`, so a lock never outlives its process.
//!
//! Lock files may be deleted while locked (prune does, and so do ingests when they finish):
//! after taking the lock, the holder checks that the path still names the inode it locked
//! and starts over if not. So "I hold the lock on this path" is always true of the file
//! currently at the path.

use std::fs::File;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::beneath;
use super::error::{IoContext, StoreError};

/// How often a cancellable wait polls for the lock.
const POLL: Duration = Duration::from_millis(25);

/// An exclusive lock on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    /// Held open for the lock's lifetime; closing it releases the lock.
    _file: File,
    path: PathBuf,
}

/// How to wait for a lock that someone else holds.
pub(crate) enum Wait<'a> {
    /// Block until it is free.
    Block,
    /// Give up at once.
    No,
    /// Poll until it is free or the flag becomes true.
    Cancellable(&'a AtomicBool, &'a str),
}

impl FileLock {
    /// Takes the lock on `path` under the kiln root `root` (creating the file), blocking while another holder has it.
    pub fn acquire(root: &Path, path: &Path) -> Result<FileLock, StoreError> {
        Ok(Self::acquire_with(root, path, Wait::Block)?.expect("blocking lock returns a lock"))
    }

    /// Takes the lock on `path` if it is free now; `None` if someone else holds it.
    pub fn try_acquire(root: &Path, path: &Path) -> Result<Option<FileLock>, StoreError> {
        Self::acquire_with(root, path, Wait::No)
    }

    /// Takes the lock on an existing file only; `None` if the file does not exist or is
    /// held by someone else. Used to probe other processes' locks without creating files.
    pub(crate) fn try_existing(root: &Path, path: &Path) -> Result<Option<FileLock>, StoreError> {
        loop {
            let file = match beneath::open(root, path, libc::O_RDONLY, 0) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StoreError::io("open lock file", path, e)),
            };
            if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).ctx("lock", path)? {
                return Ok(None);
            }
            if still_at_path(&file, path).ctx("check lock file", path)? {
                return Ok(Some(FileLock {
                    _file: file,
                    path: path.to_path_buf(),
                }));
            }
        }
    }

    pub(crate) fn acquire_with(
        root: &Path,
        path: &Path,
        wait: Wait<'_>,
    ) -> Result<Option<FileLock>, StoreError> {
        loop {
            // Relative to the root, refusing symlinks: a planted link must not make
            // kiln create a file elsewhere.
            let file = beneath::open(root, path, libc::O_RDWR | libc::O_CREAT, 0o644)
                .ctx("open lock file", path)?;
            let locked = match wait {
                Wait::Block => flock(&file, libc::LOCK_EX).ctx("lock", path)?,
                Wait::No => flock(&file, libc::LOCK_EX | libc::LOCK_NB).ctx("lock", path)?,
                Wait::Cancellable(cancel, what) => loop {
                    if flock(&file, libc::LOCK_EX | libc::LOCK_NB).ctx("lock", path)? {
                        break true;
                    }
                    if cancel.load(Ordering::Relaxed) {
                        return Err(StoreError::Cancelled {
                            what: what.to_string(),
                        });
                    }
                    std::thread::sleep(POLL);
                },
            };
            if !locked {
                return Ok(None);
            }
            // The previous holder may have deleted the file before we got the lock.
            if still_at_path(&file, path).ctx("check lock file", path)? {
                return Ok(Some(FileLock {
                    _file: file,
                    path: path.to_path_buf(),
                }));
            }
        }
    }

    /// The same lock, known under the new path its file was renamed to.
    pub(crate) fn renamed(mut self, path: PathBuf) -> FileLock {
        self.path = path;
        self
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Deletes the lock file while still holding the lock, then releases it. Waiters
    /// notice and lock the next file at that path.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `flock` with `op`; `Ok(false)` when non-blocking and already held elsewhere.
fn flock(file: &File, op: libc::c_int) -> io::Result<bool> {
    loop {
        // SAFETY: flock on a valid, open file descriptor owned by `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Whether `path` still names the inode open as `file`.
fn still_at_path(file: &File, path: &Path) -> io::Result<bool> {
    let open = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.dev() == open.dev() && m.ino() == open.ino()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
