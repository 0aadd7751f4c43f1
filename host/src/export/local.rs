//! `type=local`: the tree copied into a folder.

use std::fs;
use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::ExportError;
use crate::worker::{Copier, CopyOptions};

/// Copies the contents of `tree` into `dest` (created with its parents if missing).
pub fn export_local(
    tree: &Path,
    dest: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<(), ExportError> {
    fs::create_dir_all(dest).map_err(|e| ExportError::io("create folder", dest, e))?;
    // The user's path may be a link to a folder: write into the folder it names.
    let dest = fs::canonicalize(dest).map_err(|e| ExportError::io("resolve", dest, e))?;
    let mut c = Copier::new(CopyOptions {
        cancel,
        ..Default::default()
    });
    c.copy_contents(tree, &dest)?;
    Ok(())
}
