//! Confined filesystem operations on the tree a layer is applied to.
//!
//! Every path is resolved by the kernel with `openat2(root, path, RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)`: symlinks met on the way (planted by this layer or a lower one,
//! absolute or relative, with or without `..`) are followed as if `root` were `/`, so the
//! result is always inside the tree, whatever the links say. Only *parent directories* are
//! resolved that way; the last component is then created, replaced or removed with `*at()`
//! calls relative to the parent's fd that never follow it (`O_NOFOLLOW | O_EXCL`,
//! `AT_SYMLINK_NOFOLLOW`, `unlinkat`, `linkat` without `AT_SYMLINK_FOLLOW`).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{
    openat, openat2, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags,
};

/// How every path below the root is resolved.
const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);

/// Flags to open a directory to work in.
pub(crate) const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NOFOLLOW);

/// The root of the tree and a one-entry cache of the last directory worked in.
pub(crate) struct Tree {
    root: OwnedFd,
    cached: Option<(Vec<u8>, OwnedFd)>,
}

/// Converts a rustix errno to an `io::Error`.
pub(crate) fn ioerr(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl Tree {
    /// Opens the root directory.
    pub(crate) fn open(root: &Path) -> io::Result<Tree> {
        let root = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(ioerr)?;
        Ok(Tree { root, cached: None })
    }

    /// The root directory's fd.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Forgets the cached directory (after anything was removed or replaced, a cached path
    /// may no longer lead where it did).
    pub(crate) fn invalidate(&mut self) {
        self.cached = None;
    }

    /// Remembers `fd` as the directory at (cleaned) `path`.
    pub(crate) fn keep(&mut self, path: &[u8], fd: OwnedFd) {
        match &mut self.cached {
            Some((p, f)) => {
                p.clear();
                p.extend_from_slice(path);
                *f = fd;
            }
            None => self.cached = Some((path.to_vec(), fd)),
        }
    }

    /// Resolves the directory at cleaned `path` ("" is the root) inside the tree. With
    /// `create`, missing directories are made (mode 0755, as containerd does); without it a
    /// missing one is `Ok(None)`. The fd is the caller's; hand it back with [`Tree::keep`].
    pub(crate) fn dir(&mut self, path: &[u8], create: bool) -> io::Result<Option<OwnedFd>> {
        if let Some((p, _)) = &self.cached {
            if p.as_slice() == path {
                return Ok(self.cached.take().map(|(_, fd)| fd));
            }
        }
        if path.is_empty() {
            return self.root.try_clone().map(Some);
        }
        match resolve_dir(self.root(), path) {
            Ok(fd) => Ok(Some(fd)),
            Err(e) if e.raw_os_error() == Some(libc_enoent()) => {
                if create {
                    self.make_dirs(path, 0).map(Some)
                } else {
                    Ok(None)
                }
            }
            Err(e) if !create && e.raw_os_error() == Some(libc_enotdir()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Resolves `path` component by component, making what is missing. A dangling symlink
    /// on the way (say `lib -> usr/lib` before `usr/lib` exists) gets its target made, inside
    /// the root, as containerd does.
    fn make_dirs(&self, path: &[u8], depth: u32) -> io::Result<OwnedFd> {
        // As the kernel: at most 40 links followed for one path.
        if depth > 40 {
            return Err(ioerr(rustix::io::Errno::LOOP));
        }
        let mut parent = self.root.try_clone()?;
        let mut offset = 0;
        for comp in path.split(|&b| b == b'/') {
            let start = offset;
            let end = start + comp.len();
            let prefix = &path[..end];
            offset = end + 1;
            let fd = match resolve_dir(self.root(), prefix) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc_enoent()) => {
                    match rustix::fs::mkdirat(&parent, comp, Mode::from_raw_mode(0o755)) {
                        Ok(()) => {}
                        Err(rustix::io::Errno::EXIST) => {
                            if let Ok(target) = rustix::fs::readlinkat(&parent, comp, Vec::new()) {
                                let target = target.to_bytes();
                                let base = if target.starts_with(b"/") {
                                    &[][..]
                                } else {
                                    &path[..start.saturating_sub(1)]
                                };
                                let mut dest = Vec::with_capacity(base.len() + target.len() + 1);
                                join_in_root(base, target, &mut dest);
                                if !dest.is_empty() {
                                    self.make_dirs(&dest, depth + 1)?;
                                }
                            }
                        }
                        Err(e) => return Err(ioerr(e)),
                    }
                    // Resolve again from the root, whatever the name turned out to be.
                    resolve_dir(self.root(), prefix)?
                }
                Err(e) => return Err(e),
            };
            parent = fd;
        }
        Ok(parent)
    }

    /// Resolves a path for reading (a hard link's target): its parent directory inside the
    /// tree, without touching the cache.
    pub(crate) fn resolve_existing_dir(&self, path: &[u8]) -> io::Result<OwnedFd> {
        if path.is_empty() {
            return self.root.try_clone();
        }
        resolve_dir(self.root(), path)
    }

    /// Opens the directory at `path` (its last component must be a directory, not a link).
    pub(crate) fn open_dir_nofollow(&self, path: &[u8]) -> io::Result<OwnedFd> {
        if path.is_empty() {
            return self.root.try_clone();
        }
        openat2_retry(self.root(), path, DIR_FLAGS)
    }
}

/// `base` (a cleaned path) joined with a symlink `target`, cleaned into `out`; `..` stops
/// at the root, as it does for a process whose root is the tree.
fn join_in_root(base: &[u8], target: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(base);
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
}

fn libc_enoent() -> i32 {
    rustix::io::Errno::NOENT.raw_os_error()
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}

/// `openat2` in the root, retried on `EAGAIN` (a concurrent rename somewhere in the tree).
fn openat2_retry(root: BorrowedFd<'_>, path: &[u8], flags: OFlags) -> io::Result<OwnedFd> {
    let mut tries = 0;
    loop {
        match openat2(root, path, flags, Mode::empty(), RESOLVE) {
            Err(rustix::io::Errno::AGAIN) if tries < 16 => tries += 1,
            Err(rustix::io::Errno::NOSYS) => return Err(io::Error::other(
                "openat2 is not available (Linux 5.6 or later is needed to unpack images safely)",
            )),
            r => return r.map_err(ioerr),
        }
    }
}

/// Resolves a directory (following links, confined to the root).
fn resolve_dir(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    openat2_retry(
        root,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
    )
}

/// What is at `name` in `dir`, without following a link; `None` if nothing.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(ioerr(e)),
    }
}

/// Removes `name` in `dir` whatever it is (a directory with all its contents). Nothing is
/// followed: a symlink is removed, not its target.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &[u8], kind: FileType) -> io::Result<()> {
    if kind == FileType::Directory {
        // A read-only directory (from a lower layer) must be readable and writable to be
        // emptied by a non-root owner; it goes away, so its mode does not matter. The name
        // was just seen to be a directory (not a link). A failure shows at the open below.
        if !rustix::process::geteuid().is_root() {
            let _ = rustix::fs::chmodat(dir, name, Mode::from_raw_mode(0o700), AtFlags::empty());
        }
        let sub = openat(dir, name, DIR_FLAGS, Mode::empty()).map_err(ioerr)?;
        clear_dir(sub, &mut |_, _| false)?;
        unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(ioerr)
    } else {
        unlinkat(dir, name, AtFlags::empty()).map_err(ioerr)
    }
}

/// Removes `name` in `dir` if it exists.
pub(crate) fn remove_if_exists(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<bool> {
    match kind_at(dir, name)? {
        Some(kind) => remove_at(dir, name, kind).map(|()| true),
        None => Ok(false),
    }
}

/// Removes the children of the directory `dir` for which `keep(name, is_dir)` is false
/// (recursively). `keep` is also asked, and may recurse itself, for children it keeps.
pub(crate) fn clear_dir(
    dir: OwnedFd,
    keep: &mut dyn FnMut(&CStr, BorrowedFd<'_>) -> bool,
) -> io::Result<()> {
    // Names first, then removal: no reliance on getdents behaviour during unlinks.
    let mut names: Vec<(CString, FileType)> = Vec::new();
    let mut reader = Dir::new(dir).map_err(ioerr)?;
    while let Some(ent) = reader.read() {
        let ent = ent.map_err(ioerr)?;
        let name = ent.file_name();
        if name.to_bytes() == b"." || name.to_bytes() == b".." {
            continue;
        }
        names.push((name.to_owned(), ent.file_type()));
    }
    let fd = reader.fd().map_err(ioerr)?;
    for (name, mut kind) in names {
        if keep(&name, fd) {
            continue;
        }
        if kind == FileType::Unknown {
            match kind_at(fd, name.to_bytes())? {
                Some(k) => kind = k,
                None => continue,
            }
        }
        remove_at(fd, name.to_bytes(), kind)?;
    }
    Ok(())
}
