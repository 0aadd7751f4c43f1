//! Mount-point stubs: files and directories that only exist because the runtime
//! needed somewhere to mount `/proc`, `/etc/hosts` or a step's mounts. Like BuildKit,
//! kiln removes them after the run when they are still empty, so they never show up
//! in the step's result.

use std::path::{Path, PathBuf};

use crate::worker::Root;

/// The paths (relative to the root) that did not exist before the run.
pub struct Stubs(Vec<PathBuf>);

impl Stubs {
    /// Records which components of each of `targets` are missing in `rootfs` now.
    pub fn record(rootfs: &Path, targets: &[&str]) -> Stubs {
        let root = Root::new(rootfs);
        let mut missing = Vec::new();
        for t in targets {
            let mut prefix = PathBuf::from("/");
            for c in Path::new(t).components().skip(1) {
                prefix.push(c);
                let Ok(rel) = root.resolve_rel(&prefix, true) else {
                    break;
                };
                if std::fs::symlink_metadata(rootfs.join(&rel)).is_err()
                    && !rel.as_os_str().is_empty()
                {
                    missing.push(rel);
                }
            }
        }
        // Deepest first, so a directory is empty by the time its turn comes.
        missing.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        missing.dedup();
        Stubs(missing)
    }

    /// Removes the recorded paths from `dir` (an upper directory or the result
    /// tree) where they are empty directories or empty files.
    ///
    /// The command has exited, so nothing changes `dir` meanwhile; but it may have
    /// replaced a folder on the way with a symlink (`mv /a /b && ln -s /host/dir /a`).
    /// A stub is removed only when every folder above it is a real folder inside `dir`,
    /// so no link can lead the removal outside (BuildKit's CVE-2024-23652).
    pub fn remove_from(&self, dir: &Path) {
        for rel in &self.0 {
            if !parents_are_real_dirs(dir, rel) {
                continue;
            }
            let p = dir.join(rel);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                let _ = std::fs::remove_dir(&p);
            } else if meta.is_file() && meta.len() == 0 {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// Whether every folder between `dir` and `dir/rel` is a directory (not a link).
fn parents_are_real_dirs(dir: &Path, rel: &Path) -> bool {
    let mut at = dir.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            _ => return false,
        }
    }
    true
}
