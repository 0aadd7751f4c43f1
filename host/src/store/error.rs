//! The store's error type.

use std::io;
use std::path::{Path, PathBuf};

/// Everything that can go wrong in the store. Each variant names what failed and where;
/// none of them carries secrets (refs given to [`super::Store::ingest`] are hashed
/// before they reach a path, and are never part of an error).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("store: cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "create directory".
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A database operation failed.
    #[error("store database {}: cannot {action}: {source}{}", path.display(), no_space_hint(path, source))]
    Db {
        /// What was being done, e.g. "save cache result".
        action: &'static str,
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database could not be switched to write-ahead logging (needed for sharing a
    /// root between processes), e.g. on a filesystem without shared memory.
    #[error("store database {}: cannot enable write-ahead logging (journal mode stays {mode:?}); put the root on a local filesystem", path.display())]
    NoWal {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        mode: String,
    },
    /// The database was written by a newer kiln with a schema this one does not know.
    #[error(
        "store database {}: schema version {found} is newer than the newest this kiln supports ({supported}); use a newer kiln or another --root",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The schema version found in the file.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// A blob's content did not have the digest it was expected to have. Nothing was stored.
    #[error("checksum mismatch: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// The digest the caller expected.
        expected: String,
        /// The digest of the data actually received.
        actual: String,
    },
    /// A digest string is malformed or uses an algorithm the store does not support.
    #[error("invalid digest {digest:?}: {reason}")]
    InvalidDigest {
        /// The offending digest.
        digest: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A name used to build a path (plugin id, snapshot id) is not acceptable.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name, e.g. "plugin id".
        what: &'static str,
        /// The offending name.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// A snapshot id is not (or no longer) recorded in the store.
    #[error("snapshot {id} is not in the store")]
    SnapshotNotFound {
        /// The snapshot id.
        id: String,
    },
    /// Waiting for a lock was cancelled by the caller.
    #[error("cancelled while waiting for the lock on {what}")]
    Cancelled {
        /// What was being waited for.
        what: String,
    },
}

impl StoreError {
    /// Whether this error comes from a full disk: ENOSPC/EDQUOT, SQLite's "database or
    /// disk is full", or an SQLite I/O error while the file system holding `root` has
    /// no space left.
    pub fn is_no_space(&self, root: &Path) -> bool {
        match self {
            StoreError::Io { source, .. } => {
                matches!(
                    source.raw_os_error(),
                    Some(libc::ENOSPC) | Some(libc::EDQUOT)
                )
            }
            StoreError::Db { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DiskFull) => true,
                Some(
                    rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
                    | rusqlite::ErrorCode::DatabaseBusy,
                ) => super::reserve::disk_full(root),
                _ => false,
            },
            _ => false,
        }
    }

    /// Builds an [`StoreError::Io`] for `path`.
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> Self {
        StoreError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// ": no space left on device …" when SQLite failed for lack of space.
fn no_space_hint(db: &Path, e: &rusqlite::Error) -> &'static str {
    let root = db.parent().unwrap_or(db);
    let full = match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => true,
        Some(rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::CannotOpen) => {
            super::reserve::disk_full(root)
        }
        _ => false,
    };
    if full {
        " (no space left on device: run `kiln cache prune` or free space on that disk)"
    } else {
        ""
    }
}

/// Attaches a filesystem context to an `io::Result`.
pub(crate) trait IoContext<T> {
    /// Maps the error into [`StoreError::Io`] with `action` and `path`.
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, action: &'static str, path: &Path) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(action, path, e))
    }
}
