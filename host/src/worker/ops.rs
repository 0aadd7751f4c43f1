//! The file actions of a step (`copy`, `mkdir`, `mkfile`, `rm`, `symlink`) applied to a
//! staging tree, with BuildKit FileOp's semantics. Every path goes through [`Root`].

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::error::{IoContext, Result, WorkerError};
use super::pattern::{check_component, glob_component, has_wildcards};
use super::root::{clean_rel, Root};
use super::tree::{remove_existing, Copier, CopyOptions};
use super::unpack::{self, mkdir_all};
use crate::definition::{Action, Copy, Mkdir, Mkfile, Rm, Symlink};
use kiln_plugin_api::patterns::PathFilter;

/// Applies `actions` in order to the tree at `target`. `inputs` maps a copy's `from`
/// step name to the host directory of that step's (immutable) tree. Blocking: call it
/// from a blocking thread. A failure names the action (its 1-based index and a short
/// description) and the path inside the tree.
pub fn apply(
    actions: &[Action],
    target: &Path,
    inputs: &dyn Fn(&str) -> Option<PathBuf>,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    for (i, action) in actions.iter().enumerate() {
        if cancel.is_some_and(|c| c.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(WorkerError::Cancelled);
        }
        apply_one(action, target, inputs, cancel).map_err(|e| match e {
            WorkerError::Cancelled => e,
            e => WorkerError::Action {
                index: i + 1,
                action: describe(action),
                source: Box::new(e),
            },
        })?;
    }
    Ok(())
}

/// A one-line description of an action for messages.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Copy(c) => format!("copy {}:{} to {}", c.from, c.src, c.dest),
        Action::Mkdir(m) => format!("mkdir {}", m.path),
        Action::Mkfile(m) => format!("mkfile {}", m.path),
        Action::Rm(r) => format!("rm {}", r.path),
        Action::Symlink(s) => format!("symlink {} -> {}", s.path, s.target),
    }
}

fn apply_one(
    action: &Action,
    target: &Path,
    inputs: &dyn Fn(&str) -> Option<PathBuf>,
    cancel: Option<&AtomicBool>,
) -> Result<()> {
    let root = Root::new(target);
    match action {
        Action::Copy(c) => {
            let src = inputs(&c.from).ok_or_else(|| WorkerError::Invalid {
                op: "copy",
                message: format!("no tree for step {:?}", c.from),
            })?;
            copy(c, &Root::new(src), &root, cancel)
        }
        Action::Mkdir(m) => mkdir(m, &root),
        Action::Mkfile(m) => mkfile(m, &root),
        Action::Rm(r) => rm(r, &root),
        Action::Symlink(s) => symlink(s, &root),
    }
}

fn owner_of(o: &Option<crate::definition::Owner>) -> Option<(u32, u32)> {
    o.as_ref().map(|o| (o.uid, o.gid))
}

/// Expands a wildcard path inside `root`: the components before the first wildcard are
/// resolved (links followed inside the tree), the rest are matched one directory level
/// each. Returns tree-relative paths, sorted; links in matched directories are followed
/// inside the tree when more components remain.
pub fn resolve_wildcards(root: &Root, pattern: &str) -> Result<Vec<PathBuf>> {
    let rel = clean_rel(pattern);
    let comps: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let first = comps
        .iter()
        .position(|c| has_wildcards(c))
        .unwrap_or(comps.len());
    let base: PathBuf = comps[..first].iter().collect();
    for c in &comps[first..] {
        check_component(c).map_err(|e| WorkerError::Invalid {
            op: "wildcard",
            message: format!("{pattern:?}: {e}"),
        })?;
    }
    let base = root.resolve_rel(&base, true)?;
    let mut found = vec![base];
    for comp in &comps[first..] {
        let mut next = Vec::new();
        for dir in &found {
            // Matches are returned under the resolved folder, so joining them to the
            // root never walks through a link.
            let dir = &root.resolve_rel(dir, true)?;
            let host = root.path().join(dir);
            let entries = match fs::read_dir(&host) {
                Ok(e) => e,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTDIR) =>
                {
                    continue
                }
                Err(e) => {
                    return Err(WorkerError::io(
                        "read directory",
                        Path::new("/").join(dir),
                        e,
                    ))
                }
            };
            let mut names: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.file_name()))
                .filter(|n| glob_component(comp.as_bytes(), n.as_encoded_bytes()))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        found = next;
    }
    Ok(found)
}

/// Whether a path as written names a directory (`dir/` or `dir/.`).
fn names_dir(p: &str) -> bool {
    p.ends_with('/') || p.ends_with("/.") || p == "."
}

/// `copy`: BuildKit's FileOp copy (fsutil `Copy` semantics).
fn copy(c: &Copy, src_root: &Root, dst_root: &Root, cancel: Option<&AtomicBool>) -> Result<()> {
    let owner = owner_of(&c.owner);
    let filter = PathFilter::new(&c.include, &c.exclude).map_err(|e| WorkerError::Invalid {
        op: "copy",
        message: e.to_string(),
    })?;
    let filter = (!filter.selects_all()).then_some(filter);
    if !c.create_dest_path {
        let parent_rel = clean_rel(&c.dest);
        let parent = dst_root.resolve(parent_rel.parent().unwrap_or(Path::new("")), true)?;
        if !parent.is_dir() {
            return Err(WorkerError::NotFound {
                op: "copy: destination folder",
                path: format!(
                    "/{}",
                    parent_rel.parent().unwrap_or(Path::new("")).display()
                ),
            });
        }
    }
    let sources = if c.allow_wildcard && has_wildcards(&c.src) {
        let m = resolve_wildcards(src_root, &c.src)?;
        if m.is_empty() {
            return Err(WorkerError::NotFound {
                op: "copy: no source matches",
                path: c.src.clone(),
            });
        }
        m
    } else {
        vec![clean_rel(&c.src)]
    };
    // A destination written as a folder (`/app/`) is created first, so sources go inside.
    let dest_rel = clean_rel(&c.dest);
    let ensure = if names_dir(&c.dest) {
        Some(dest_rel.clone())
    } else {
        dest_rel.parent().map(Path::to_path_buf)
    };
    if let Some(e) = ensure {
        let host = dst_root.resolve(&e, true)?;
        mkdir_all(dst_root.path(), &host, owner)?;
    }
    let mut copier = Copier::new(CopyOptions {
        owner,
        mode: c.mode,
        filter: filter.as_ref(),
        cancel,
    });
    for s in sources {
        let shown = format!("/{}", s.display());
        let src_host = src_root.resolve(&s, c.follow_symlinks)?;
        let src_meta = match fs::symlink_metadata(&src_host) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(WorkerError::NotFound {
                    op: "copy: source",
                    path: shown,
                })
            }
            Err(e) => return Err(WorkerError::io("stat", shown, e)),
        };
        // Like ADD, an archive named through a symlink is still an archive.
        let archive = if c.unpack && !src_meta.is_dir() {
            let followed = src_root.resolve(&s, true)?;
            fs::symlink_metadata(&followed)
                .is_ok_and(|m| m.is_file())
                .then_some(followed)
        } else {
            None
        };
        if let Some(archive) = archive {
            if let Some(comp) = unpack::detect(&archive).ctx("read", &shown)? {
                let dest = dst_root.resolve(&dest_rel, true)?;
                mkdir_all(dst_root.path(), &dest, owner)?;
                unpack::unpack(&archive, &shown, comp, &dest, owner)?;
                continue;
            }
        }
        let mut dest = dst_root.resolve(&dest_rel, true)?;
        let dest_meta = fs::symlink_metadata(&dest).ok();
        let dest_is_dir = dest_meta.as_ref().is_some_and(|m| m.is_dir());
        if (src_meta.is_dir() && !c.dir_contents && dest_meta.is_some())
            || (!src_meta.is_dir() && dest_is_dir)
        {
            if let Some(name) = s.file_name() {
                dest = dest.join(name);
            }
        }
        if let Some(parent) = dest.parent() {
            if parent.starts_with(dst_root.path()) {
                mkdir_all(dst_root.path(), parent, owner)?;
            }
        }
        if src_meta.is_dir() && c.dir_contents {
            copier.copy_contents(&src_host, &dest)?;
        } else if src_meta.is_dir() && dest == dst_root.path() {
            // Copying a folder onto the root merges it with the root.
            copier.copy_contents(&src_host, &dest)?;
        } else {
            copier.copy(&src_host, &dest)?;
        }
    }
    Ok(())
}

fn chown(path: &Path, owner: Option<(u32, u32)>, shown: &str) -> Result<()> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::lchown(path, Some(u), Some(g)).ctx("chown", shown)?;
    }
    Ok(())
}

/// `mkdir`: BuildKit's mkdir; `parents` creates missing parents (0755, the owner).
fn mkdir(m: &Mkdir, root: &Root) -> Result<()> {
    let shown = format!("/{}", clean_rel(&m.path).display());
    let p = root.resolve(&m.path, true)?;
    let owner = owner_of(&m.owner);
    if m.parents {
        if let Some(parent) = p.parent() {
            if parent.starts_with(root.path()) {
                mkdir_all(root.path(), parent, owner)?;
            }
        }
    }
    match fs::create_dir(&p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if fs::symlink_metadata(&p).is_ok_and(|md| md.is_dir()) {
                // An existing folder is fine (BuildKit); its metadata is left alone.
                return Ok(());
            }
            return Err(WorkerError::io(
                "mkdir",
                shown,
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WorkerError::NotFound {
                op: "mkdir: parent folder of",
                path: shown,
            })
        }
        Err(e) => return Err(WorkerError::io("mkdir", shown, e)),
    }
    chown(&p, owner, &shown)?;
    fs::set_permissions(&p, fs::Permissions::from_mode(m.mode)).ctx("chmod", &shown)
}

/// `mkfile`: create or truncate a file with `data`, `mode` and `owner`.
fn mkfile(m: &Mkfile, root: &Root) -> Result<()> {
    let shown = format!("/{}", clean_rel(&m.path).display());
    let p = root.resolve(&m.path, true)?;
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(m.mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => WorkerError::NotFound {
                op: "mkfile: parent folder of",
                path: shown.clone(),
            },
            _ => WorkerError::io("mkfile", &shown, e),
        })?;
    f.write_all(m.data.as_bytes()).ctx("write", &shown)?;
    if let Some((u, g)) = owner_of(&m.owner) {
        std::os::unix::fs::fchown(&f, Some(u), Some(g)).ctx("chown", &shown)?;
    }
    f.set_permissions(fs::Permissions::from_mode(m.mode))
        .ctx("chmod", &shown)
}

/// `rm`: remove a path (recursively); the last component is not followed.
fn rm(r: &Rm, root: &Root) -> Result<()> {
    let targets = if r.allow_wildcard && has_wildcards(&r.path) {
        resolve_wildcards(root, &r.path)?
    } else {
        vec![root.resolve_rel(&r.path, false)?]
    };
    let mut removed = false;
    for rel in targets {
        let rel = root.resolve_rel(&rel, false)?;
        let host = root.path().join(&rel);
        if rel.as_os_str().is_empty() {
            // `rm /`: empty the tree, never remove the staging folder itself.
            for e in fs::read_dir(&host).ctx("read directory", "/")? {
                let e = e.ctx("read directory", "/")?;
                remove_existing(&e.path())?;
            }
            removed = true;
            continue;
        }
        match fs::symlink_metadata(&host) {
            Ok(_) => {
                remove_existing(&host)?;
                removed = true;
            }
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) => {}
            Err(e) => return Err(WorkerError::io("stat", format!("/{}", rel.display()), e)),
        }
    }
    if !removed && !r.allow_not_found {
        return Err(WorkerError::NotFound {
            op: "rm",
            path: r.path.clone(),
        });
    }
    Ok(())
}

/// `symlink`: create `path` pointing at `target` (stored verbatim; resolution is
/// confined whenever the tree is used).
fn symlink(s: &Symlink, root: &Root) -> Result<()> {
    let shown = format!("/{}", clean_rel(&s.path).display());
    let p = root.resolve(&s.path, false)?;
    if p == root.path() {
        return Err(WorkerError::Invalid {
            op: "symlink",
            message: "cannot replace the root of the tree".into(),
        });
    }
    std::os::unix::fs::symlink(&s.target, &p).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => WorkerError::NotFound {
            op: "symlink: parent folder of",
            path: shown.clone(),
        },
        _ => WorkerError::io("symlink", &shown, e),
    })
}
