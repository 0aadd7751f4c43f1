//! The worker's error type.

use std::io;
use std::path::Path;

/// A file operation failed. Paths in messages are the paths a build definition names
/// (inside a step's tree), never the host's staging paths, unless noted.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A filesystem call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`copy`, `mkdir`, `read`, …).
        op: &'static str,
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Resolving a path met too many symbolic links (a loop).
    #[error("resolving {path}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The path being resolved.
        path: String,
    },
    /// A path or wildcard named nothing.
    #[error("{op} {path}: not found")]
    NotFound {
        /// The action.
        op: &'static str,
        /// The path or pattern.
        path: String,
    },
    /// An action is not valid as written (a bad pattern, an owner that cannot be set, …).
    #[error("{op}: {message}")]
    Invalid {
        /// The action.
        op: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An archive could not be extracted safely.
    #[error("unpack {archive}: {message}")]
    Archive {
        /// The archive's path in its tree.
        archive: String,
        /// What is wrong (the entry and the reason).
        message: String,
    },
    /// Action number `index` (from 1) of a step failed.
    #[error("action {index} ({action}): {source}")]
    Action {
        /// 1-based position in the step's action list.
        index: usize,
        /// A short description of the action.
        action: String,
        /// The failure.
        #[source]
        source: Box<WorkerError>,
    },
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// Shorthand result.
pub type Result<T, E = WorkerError> = std::result::Result<T, E>;

impl WorkerError {
    /// An I/O error on `path` while doing `op`.
    pub fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        WorkerError::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Attaches an operation and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: &'static str, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| WorkerError::io(op, path, e))
    }
}
