//! The worker: the file operations of build steps on plain directory trees.
//!
//! A step's result is built in a staging directory that the store created: first its
//! base is materialised there ([`materialize`], a full copy that keeps modes, owners,
//! times, symlinks and hard links, never sharing inodes with the immutable snapshot),
//! then its actions run in order ([`apply`]); a merge step stacks layers instead
//! ([`merge`]). Every path an action names resolves inside the step's own tree
//! ([`Root`]): `..` is clamped at the root and symbolic links, absolute or relative,
//! resolve relative to the tree, so no action can read or write a file of the host.
//!
//! Everything here blocks; the solver calls it on tokio's blocking pool.

mod error;
mod ops;
pub mod pattern;
mod root;
mod tree;
mod unpack;
pub mod xattr;

use std::path::Path;
use std::sync::atomic::AtomicBool;

pub use error::{Result, WorkerError};
pub use ops::{apply, describe, resolve_wildcards};
pub use root::{clean_rel, Root};
pub use tree::{copy_tree, Copier, CopyOptions};
pub use unpack::{detect as detect_archive, unpack, Compression};

/// Fills the empty staging directory `staging` with a copy of the tree `base`
/// (`None`: scratch, nothing to copy).
pub fn materialize(base: Option<&Path>, staging: &Path, cancel: Option<&AtomicBool>) -> Result<()> {
    match base {
        Some(b) => copy_tree(b, staging, cancel),
        None => Ok(()),
    }
}

/// Stacks `layers` (host directories of step trees) in order into `staging`: later
/// layers win; a file replaces a folder and the other way round, as in an overlay
/// without whiteouts; folders merge.
pub fn merge(layers: &[&Path], staging: &Path, cancel: Option<&AtomicBool>) -> Result<()> {
    for layer in layers {
        copy_tree(layer, staging, cancel)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
