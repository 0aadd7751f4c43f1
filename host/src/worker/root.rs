//! Confined path resolution: every path of a step resolves inside that step's tree.
//!
//! [`Root::resolve`] walks a path one component at a time, the way containerd's
//! `fs.RootPath` and `securejoin` do: `..` is clamped at the tree's root, and each
//! symbolic link met on the way is read and its target resolved *relative to the tree*
//! (an absolute target is re-rooted at the tree's root, a relative one continues from
//! the link's directory). The result is a host path below the root whose directory
//! components contain no symbolic link, so a later call on it cannot leave the tree.
//!
//! Trees are staging directories that only the worker writes while a step runs, so
//! nothing can swap a component between resolution and use. The final component is
//! followed only when asked; callers then open it with `O_NOFOLLOW`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, WorkerError};

/// Linux's limit on symbolic links met while resolving one path.
const MAX_SYMLINKS: usize = 40;

/// A directory treated as `/` for every path resolved through it.
#[derive(Clone, Debug)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    /// A root at the host directory `base` (which must exist for resolution to see links).
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root { base: base.into() }
    }

    /// The host directory of the root.
    pub fn path(&self) -> &Path {
        &self.base
    }

    /// Resolves `path` (absolute or relative, both taken from the root) to a host path
    /// inside the root. Symbolic links in directory components are always followed
    /// within the tree; the last component is followed only if `follow_final`.
    /// Missing components are kept as written (so the result can name a path to create).
    pub fn resolve(&self, path: impl AsRef<Path>, follow_final: bool) -> Result<PathBuf> {
        let rel = self.resolve_rel(path, follow_final)?;
        Ok(self.base.join(rel))
    }

    /// Like [`Root::resolve`] but returns the path relative to the root (empty for the
    /// root itself).
    pub fn resolve_rel(&self, path: impl AsRef<Path>, follow_final: bool) -> Result<PathBuf> {
        let path = path.as_ref();
        let mut done: Vec<OsString> = Vec::new();
        let mut pending: VecDeque<OsString> = VecDeque::new();
        push_components(&mut pending, path, false);
        let mut links = 0usize;
        let mut current = self.base.clone();
        while let Some(comp) = pending.pop_front() {
            if comp == ".." {
                if done.pop().is_some() {
                    current.pop();
                }
                continue;
            }
            current.push(&comp);
            let is_last = pending.is_empty();
            if is_last && !follow_final {
                done.push(comp);
                break;
            }
            match std::fs::symlink_metadata(&current) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(WorkerError::SymlinkLoop {
                            path: path.display().to_string(),
                        });
                    }
                    let target = std::fs::read_link(&current)
                        .map_err(|e| WorkerError::io("readlink", tree_path(&done, &comp), e))?;
                    current.pop();
                    if target.is_absolute() {
                        done.clear();
                        current = self.base.clone();
                    }
                    push_components(&mut pending, &target, true);
                }
                Ok(_) => done.push(comp),
                // Missing or under a non-directory: nothing to follow; a later call fails
                // with the real error.
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    done.push(comp)
                }
                Err(e) => return Err(WorkerError::io("stat", tree_path(&done, &comp), e)),
            }
        }
        Ok(done.iter().collect())
    }
}

/// Pushes the normal and `..` components of `p` onto `queue` (at the front if `front`,
/// keeping their order).
fn push_components(queue: &mut VecDeque<OsString>, p: &Path, front: bool) {
    let comps: Vec<OsString> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect();
    if front {
        for c in comps.into_iter().rev() {
            queue.push_front(c);
        }
    } else {
        queue.extend(comps);
    }
}

fn tree_path(done: &[OsString], last: &OsString) -> String {
    let mut p = PathBuf::from("/");
    p.extend(done);
    p.push(last);
    p.display().to_string()
}

/// Cleans a path lexically as an absolute path inside a tree: `/` + components with
/// `.` dropped and `..` clamped at the root. Returns the relative form (no leading `/`).
pub fn clean_rel(p: &str) -> PathBuf {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    for c in Path::new(p).components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "x").unwrap();
        symlink("/etc", r.join("etc-abs")).unwrap();
        symlink("../../../../../../../etc", r.join("a/etc-rel")).unwrap();
        symlink("b", r.join("a/to-b")).unwrap();
        symlink("/a/b/f", r.join("file-link")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        symlink(".", r.join("self")).unwrap();
        t
    }

    #[test]
    fn dotdot_is_clamped_at_the_root() {
        let t = tree();
        let root = Root::new(t.path());
        assert_eq!(
            root.resolve("../../etc/passwd", true).unwrap(),
            t.path().join("etc/passwd")
        );
        assert_eq!(
            root.resolve("/a/../../../etc/passwd", false).unwrap(),
            t.path().join("etc/passwd")
        );
        assert_eq!(root.resolve("/", true).unwrap(), t.path());
        assert_eq!(root.resolve("..", true).unwrap(), t.path());
    }

    #[test]
    fn absolute_symlinks_are_rerooted() {
        let t = tree();
        let root = Root::new(t.path());
        assert_eq!(
            root.resolve("/etc-abs/passwd", true).unwrap(),
            t.path().join("etc/passwd")
        );
        assert_eq!(
            root.resolve("/etc-abs", true).unwrap(),
            t.path().join("etc")
        );
        // Not following the last component keeps the link itself.
        assert_eq!(
            root.resolve("/etc-abs", false).unwrap(),
            t.path().join("etc-abs")
        );
    }

    #[test]
    fn relative_symlinks_climbing_out_are_clamped() {
        let t = tree();
        let root = Root::new(t.path());
        assert_eq!(
            root.resolve("a/etc-rel/shadow", true).unwrap(),
            t.path().join("etc/shadow")
        );
    }

    #[test]
    fn links_inside_the_tree_are_followed() {
        let t = tree();
        let root = Root::new(t.path());
        assert_eq!(
            root.resolve("a/to-b/f", true).unwrap(),
            t.path().join("a/b/f")
        );
        assert_eq!(
            root.resolve("file-link", true).unwrap(),
            t.path().join("a/b/f")
        );
        assert_eq!(
            root.resolve("self/self/a", true).unwrap(),
            t.path().join("a")
        );
        assert_eq!(
            root.resolve_rel("missing/x/../y", true).unwrap(),
            PathBuf::from("missing/y")
        );
    }

    #[test]
    fn symlink_loops_fail_with_a_loop_error() {
        let t = tree();
        let root = Root::new(t.path());
        let err = root.resolve("loop1/x", true).unwrap_err();
        assert!(matches!(err, WorkerError::SymlinkLoop { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("too many levels of symbolic links"));
        // Unfollowed final component: no loop.
        assert_eq!(
            root.resolve("loop1", false).unwrap(),
            t.path().join("loop1")
        );
    }

    #[test]
    fn clean_rel_clamps() {
        assert_eq!(clean_rel("/../a/./b/../c"), PathBuf::from("a/c"));
        assert_eq!(clean_rel("../../etc/passwd"), PathBuf::from("etc/passwd"));
        assert_eq!(clean_rel("/"), PathBuf::new());
    }
}
