//! `type=local`: the tree copied into a folder.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::ExportError;
use crate::worker::{Copier, CopyOptions};

/// Copies the contents of `tree` into `dest` (created with its parents if missing).
///
/// `/`, the kiln root that holds `tree` (the folder with `kiln.db` above it), any folder
/// that contains that root and any folder inside it are refused before anything is
/// written: merging a result there would overwrite the system or the store itself.
pub fn export_local(
    tree: &Path,
    dest: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<(), ExportError> {
    check_dest(tree, dest)?;
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

fn refuse(dest: &Path, why: String) -> ExportError {
    ExportError::io(
        "refused",
        dest,
        io::Error::new(io::ErrorKind::InvalidInput, why),
    )
}

/// Refuses `/`, the store and what contains it or lies inside it.
fn check_dest(tree: &Path, dest: &Path) -> Result<(), ExportError> {
    let real = resolve_lenient(dest).map_err(|e| ExportError::io("resolve", dest, e))?;
    if real == Path::new("/") {
        return Err(refuse(
            dest,
            "type=local cannot write into / (name a folder for the result)".into(),
        ));
    }
    let tree = fs::canonicalize(tree).map_err(|e| ExportError::io("resolve", tree, e))?;
    // The kiln root is the nearest folder above the tree that holds the database;
    // without one (a tree outside a store) the tree itself is protected.
    let protected = tree
        .ancestors()
        .skip(1)
        .find(|a| a.join("kiln.db").is_file())
        .unwrap_or(&tree)
        .to_path_buf();
    if protected.starts_with(&real) {
        return Err(refuse(
            dest,
            format!(
                "it is or contains the kiln store {} (name a folder outside it)",
                protected.display()
            ),
        ));
    }
    if real.starts_with(&protected) {
        return Err(refuse(
            dest,
            format!(
                "it is inside the kiln store {} (name a folder outside it)",
                protected.display()
            ),
        ));
    }
    Ok(())
}

/// The absolute, link-free form of `path` even when its tail does not exist yet: the
/// longest existing prefix is canonicalised and the rest is appended (`..` in the
/// missing part is applied lexically).
fn resolve_lenient(path: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(path)?;
    let mut existing = abs.clone();
    let mut rest: Vec<OsString> = Vec::new();
    loop {
        match fs::canonicalize(&existing) {
            Ok(real) => {
                let mut out = real;
                for c in rest.iter().rev() {
                    if c == ".." {
                        out.pop();
                    } else if c != "." {
                        out.push(c);
                    }
                }
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let Some(name) = existing.components().next_back() else {
                    return Err(e);
                };
                rest.push(name.as_os_str().to_os_string());
                if !existing.pop() {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}
