//! Applying an overlay upper directory (a run's changes) to a copy of its base.
//!
//! overlayfs records a deletion as a character device 0/0 with the deleted name (a
//! whiteout) and a directory that replaced a lower one as a directory carrying the
//! `trusted.overlay.opaque = y` attribute. Applying the upper first performs those
//! deletions on the destination and drops the markers and overlay's own attributes
//! from the upper, then merges what is left over the destination with the worker's
//! tree copy (later wins; directories merge).

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::worker::{copy_tree, xattr, Result, WorkerError};

const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";
const OPAQUE: &[u8] = b"trusted.overlay.opaque";

/// Applies the upper directory `upper` to `dest` (a full copy of the run's base).
/// `upper` is consumed: its markers are removed along the way.
pub fn apply_upper(upper: &Path, dest: &Path, cancel: Option<&AtomicBool>) -> Result<()> {
    // The upper root carries overlay's own attributes too; they are no part of the tree.
    for (name, _) in xattr::list(upper).map_err(|e| WorkerError::io("list xattrs", upper, e))? {
        if name.as_bytes().starts_with(OVERLAY_PREFIX) {
            remove_xattr(upper, &name).map_err(|e| WorkerError::io("remove xattr", upper, e))?;
        }
    }
    apply_markers(upper, dest)?;
    copy_tree(upper, dest, cancel)
}

fn apply_markers(upper_dir: &Path, dest_dir: &Path) -> Result<()> {
    let entries = fs::read_dir(upper_dir).map_err(|e| WorkerError::io("read", upper_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| WorkerError::io("read", upper_dir, e))?;
        let path = entry.path();
        let dest = dest_dir.join(entry.file_name());
        let meta = fs::symlink_metadata(&path).map_err(|e| WorkerError::io("stat", &path, e))?;
        let ft = meta.file_type();
        if ft.is_char_device() && meta.rdev() == 0 {
            remove_any(&dest)?;
            fs::remove_file(&path).map_err(|e| WorkerError::io("remove", &path, e))?;
            continue;
        }
        if ft.is_dir() {
            let attrs = xattr::list(&path).map_err(|e| WorkerError::io("list xattrs", &path, e))?;
            let mut opaque = false;
            for (name, value) in &attrs {
                let n = name.as_bytes();
                if n.starts_with(OVERLAY_PREFIX) {
                    opaque |= n == OPAQUE && value.as_slice() == b"y";
                    remove_xattr(&path, name)
                        .map_err(|e| WorkerError::io("remove xattr", &path, e))?;
                }
            }
            if opaque {
                // The run replaced this directory: nothing of the base's stays below.
                remove_any(&dest)?;
            }
            apply_markers(&path, &dest)?;
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (not following links); missing is fine.
fn remove_any(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(path).map_err(|e| WorkerError::io("remove", path, e))
        }
        Ok(_) => fs::remove_file(path).map_err(|e| WorkerError::io("remove", path, e)),
    }
}

fn remove_xattr(path: &Path, name: &CString) -> std::io::Result<()> {
    let p = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: both are valid NUL-terminated strings.
    let rc = unsafe { libc::lremovexattr(p.as_ptr(), name.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
