//! Tree copies: the one engine behind materialising a base, `copy`, `merge` and the
//! local exporter.
//!
//! A copy keeps modes, owners, modification times, symbolic links (verbatim) and hard
//! links (files sharing an inode in the source share one in the copy). File data moves
//! with `copy_file_range` (through `std::io::copy` between files), so filesystems that
//! support it share extents instead of copying bytes. Nothing at the destination is ever
//! followed: an existing entry is replaced (a file replaces a directory and the other
//! way round, as in an overlay without whiteouts), and directories merge.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs::{self, Metadata, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{IoContext, Result, WorkerError};
use kiln_plugin_api::patterns::{FilterState, PathFilter};

/// Options of one tree copy.
#[derive(Default)]
pub struct CopyOptions<'a> {
    /// Override the owner of every copied entry.
    pub owner: Option<(u32, u32)>,
    /// Override the permission bits of every copied entry (not of symlinks).
    pub mode: Option<u32>,
    /// Only copy what the include/exclude lists select (paths relative to the source).
    pub filter: Option<&'a PathFilter>,
    /// Polled between entries.
    pub cancel: Option<&'a AtomicBool>,
}

struct PendingDir {
    src: Option<PathBuf>,
    dst: PathBuf,
    meta: Metadata,
    created: bool,
    /// Set on a directory that existed before the copy and was named as the target:
    /// its own metadata is left alone (BuildKit's behaviour for an existing dest).
    keep_meta: bool,
    /// The mode an existing directory had before it was made writable to copy into it.
    restore_mode: Option<u32>,
}

/// Copies trees; one instance per operation so hard links are tracked across it.
pub struct Copier<'a> {
    opts: CopyOptions<'a>,
    links: HashMap<(u64, u64), PathBuf>,
    is_root: bool,
    euid: u32,
    egid: u32,
    pending: Vec<PendingDir>,
    count: usize,
}

impl<'a> Copier<'a> {
    /// A copier with `opts`.
    pub fn new(opts: CopyOptions<'a>) -> Self {
        // SAFETY: plain getters with no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        Copier {
            opts,
            links: HashMap::new(),
            is_root: euid == 0,
            euid,
            egid,
            pending: Vec::new(),
            count: 0,
        }
    }

    /// Copies the entry `src` (not followed if it is a symlink) to `dst`. A directory
    /// copies recursively and merges into an existing directory at `dst`; anything else
    /// at `dst` is replaced. The parent of `dst` must exist.
    pub fn copy(&mut self, src: &Path, dst: &Path) -> Result<()> {
        let meta = fs::symlink_metadata(src).ctx("stat", src)?;
        self.copy_entry(
            src,
            dst,
            Path::new(""),
            &meta,
            &FilterState::default(),
            true,
        )
    }

    /// Copies what is inside the directory `src` into the directory `dst` (created if
    /// missing, with `src`'s metadata; an existing `dst` keeps its own).
    pub fn copy_contents(&mut self, src: &Path, dst: &Path) -> Result<()> {
        self.copy_dir_root(src, dst, true)
    }

    /// Copies the directory `src` onto `dst`; `keep_dst_meta`: an existing `dst` keeps
    /// its own metadata instead of taking `src`'s.
    fn copy_dir_root(&mut self, src: &Path, dst: &Path, keep_dst_meta: bool) -> Result<()> {
        let meta = fs::symlink_metadata(src).ctx("stat", src)?;
        if !meta.is_dir() {
            return Err(WorkerError::io(
                "copy",
                src,
                io::Error::from_raw_os_error(libc::ENOTDIR),
            ));
        }
        self.copy_entry(
            src,
            dst,
            Path::new(""),
            &meta,
            &FilterState::default(),
            keep_dst_meta,
        )
    }

    fn check_cancel(&mut self) -> Result<()> {
        self.count += 1;
        if self.count % 256 == 0 {
            if let Some(c) = self.opts.cancel {
                if c.load(Ordering::Relaxed) {
                    return Err(WorkerError::Cancelled);
                }
            }
        }
        Ok(())
    }

    fn copy_entry(
        &mut self,
        src: &Path,
        dst: &Path,
        rel: &Path,
        meta: &Metadata,
        parent_state: &FilterState,
        top: bool,
    ) -> Result<()> {
        self.check_cancel()?;
        let ft = meta.file_type();
        // (selected, walk inside, state for the children)
        let (selected, state) = match (self.opts.filter, top) {
            (Some(f), false) => {
                let rel_str = rel.to_string_lossy();
                let v = f.check(&rel_str, ft.is_dir(), parent_state);
                if !v.selected && !v.descend {
                    return Ok(());
                }
                (v.selected, v.state.unwrap_or_default())
            }
            _ => (true, FilterState::default()),
        };
        if ft.is_dir() {
            let keep_meta = top
                && fs::symlink_metadata(dst)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
            self.pending.push(PendingDir {
                src: Some(src.to_path_buf()),
                dst: dst.to_path_buf(),
                meta: meta.clone(),
                created: false,
                keep_meta,
                restore_mode: None,
            });
            // With a filter, a directory that is only walked appears only if something
            // inside it is copied; the top directory always appears.
            if selected || top {
                self.create_pending()?;
            }
            let result = self.copy_children(src, dst, rel, &state);
            let dir = self.pending.pop().expect("pending directory");
            result?;
            return self.finish_dir(&dir);
        }
        self.create_pending()?;
        remove_existing(dst)?;
        if ft.is_symlink() {
            let target = fs::read_link(src).ctx("readlink", src)?;
            std::os::unix::fs::symlink(&target, dst).ctx("symlink", dst)?;
            self.set_owner(dst, meta)?;
            super::xattr::copy(src, dst).ctx("copy extended attributes to", dst)?;
            set_times_nofollow(dst, meta).ctx("set times of", dst)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key) {
                    fs::hard_link(first, dst).ctx("hard link", dst)?;
                    return Ok(());
                }
                self.links.insert(key, dst.to_path_buf());
            }
            self.copy_file(src, dst, meta)?;
        } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
            mknod(dst, meta.mode(), meta.rdev())?;
            self.set_owner(dst, meta)?;
            self.set_mode(dst, meta)?;
            set_times_nofollow(dst, meta).ctx("set times of", dst)?;
        } else {
            // Sockets cannot be copied meaningfully; BuildKit skips them too.
            tracing::debug!(path = %src.display(), "skipping socket");
        }
        Ok(())
    }

    fn copy_children(
        &mut self,
        src: &Path,
        dst: &Path,
        rel: &Path,
        state: &FilterState,
    ) -> Result<()> {
        for entry in fs::read_dir(src).ctx("read directory", src)? {
            let entry = entry.ctx("read directory", src)?;
            let name = entry.file_name();
            let meta = entry.metadata().ctx("stat", entry.path())?;
            self.copy_entry(
                &src.join(&name),
                &dst.join(&name),
                &rel.join(&name),
                &meta,
                state,
                false,
            )?;
        }
        Ok(())
    }

    /// Creates the directories walked but not yet created, outermost first. They stay
    /// writable by us (new ones are 0700; an existing one of ours without owner
    /// permissions gets them) until [`Copier::finish_dir`] gives them their final owner
    /// and mode once their children are in: a read-only directory must not refuse its
    /// own children to a user without CAP_DAC_OVERRIDE.
    fn create_pending(&mut self) -> Result<()> {
        let start = match self.pending.iter().position(|d| !d.created) {
            Some(i) => i,
            None => return Ok(()),
        };
        for i in start..self.pending.len() {
            let dst = self.pending[i].dst.clone();
            match fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {
                    let mode = m.mode() & 0o7777;
                    if mode & 0o700 != 0o700 && m.uid() == self.euid {
                        fs::set_permissions(
                            &dst,
                            std::os::unix::fs::PermissionsExt::from_mode(mode | 0o700),
                        )
                        .ctx("chmod", &dst)?;
                        self.pending[i].restore_mode = Some(mode);
                    }
                }
                Ok(_) => {
                    remove_existing(&dst)?;
                    make_dir(&dst)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&dst)?,
                Err(e) => return Err(WorkerError::io("stat", &dst, e)),
            }
            self.pending[i].created = true;
        }
        Ok(())
    }

    /// Gives a directory whose children are all copied its final owner, extended
    /// attributes, mode and times (or, for a kept existing directory, its own mode back).
    fn finish_dir(&self, dir: &PendingDir) -> Result<()> {
        if !dir.created {
            return Ok(());
        }
        let dst = &dir.dst;
        if dir.keep_meta {
            if let Some(mode) = dir.restore_mode {
                fs::set_permissions(dst, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .ctx("chmod", dst)?;
            }
            return Ok(());
        }
        self.set_owner(dst, &dir.meta)?;
        // Before the mode: setting an extended attribute needs write permission.
        if let Some(src) = &dir.src {
            super::xattr::copy(src, dst).ctx("copy extended attributes to", dst)?;
        }
        self.set_mode(dst, &dir.meta)?;
        set_times_nofollow(dst, &dir.meta).ctx("set times of", dst)
    }

    fn copy_file(&mut self, src: &Path, dst: &Path, meta: &Metadata) -> Result<()> {
        let mut from = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .ctx("open", src)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .ctx("create", dst)?;
        io::copy(&mut from, &mut to).ctx("copy to", dst)?;
        let (uid, gid) = self.opts.owner.unwrap_or((meta.uid(), meta.gid()));
        if (uid, gid) != (self.euid, self.egid) {
            match std::os::unix::fs::fchown(&to, Some(uid), Some(gid)) {
                Ok(()) => {}
                Err(e) => self.chown_failed(dst, e)?,
            }
        }
        let mode = self.opts.mode.unwrap_or(meta.mode() & 0o7777);
        to.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .ctx("chmod", dst)?;
        // After chown and chmod, which would clear `security.capability`.
        super::xattr::copy(src, dst).ctx("copy extended attributes to", dst)?;
        to.set_times(file_times(meta)).ctx("set times of", dst)?;
        Ok(())
    }

    fn set_owner(&self, path: &Path, meta: &Metadata) -> Result<()> {
        let (uid, gid) = self.opts.owner.unwrap_or((meta.uid(), meta.gid()));
        if (uid, gid) == (self.euid, self.egid) {
            return Ok(());
        }
        match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
            Ok(()) => Ok(()),
            Err(e) => self.chown_failed(path, e),
        }
    }

    fn chown_failed(&self, path: &Path, e: io::Error) -> Result<()> {
        // Without root, keeping foreign owners is impossible; an explicit owner is an error.
        if !self.is_root && e.raw_os_error() == Some(libc::EPERM) && self.opts.owner.is_none() {
            return Ok(());
        }
        Err(WorkerError::io("chown", path, e))
    }

    fn set_mode(&self, path: &Path, meta: &Metadata) -> Result<()> {
        let mode = self.opts.mode.unwrap_or(meta.mode() & 0o7777);
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            .ctx("chmod", path)
    }
}

fn make_dir(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .ctx("mkdir", path)
}

/// Removes whatever is at `path` (not followed); nothing there is fine.
pub fn remove_existing(path: &Path) -> Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).ctx("remove", path),
        Ok(_) => fs::remove_file(path).ctx("remove", path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(WorkerError::io("stat", path, e)),
    }
}

fn file_times(meta: &Metadata) -> fs::FileTimes {
    let mut t = fs::FileTimes::new();
    if let Ok(a) = meta.accessed() {
        t = t.set_accessed(a);
    }
    if let Ok(m) = meta.modified() {
        t = t.set_modified(m);
    }
    t
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Sets access and modification times from `meta` without following a symlink.
pub fn set_times_nofollow(path: &Path, meta: &Metadata) -> io::Result<()> {
    set_mtime_nofollow(
        path,
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    )
}

/// Sets access and modification times (seconds, nanoseconds) without following a symlink.
pub fn set_mtime_nofollow(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let c = cpath(path)?;
    let times = [
        libc::timespec {
            tv_sec: atime.0 as libc::time_t,
            tv_nsec: atime.1 as _,
        },
        libc::timespec {
            tv_sec: mtime.0 as libc::time_t,
            tv_nsec: mtime.1 as _,
        },
    ];
    // SAFETY: `c` is a valid NUL-terminated path and `times` holds two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Creates a device node or FIFO (`mode` includes the file type bits).
pub fn mknod(path: &Path, mode: u32, rdev: u64) -> Result<()> {
    let c = cpath(path).ctx("mknod", path)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), mode as libc::mode_t, rdev as libc::dev_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(WorkerError::io("mknod", path, io::Error::last_os_error()))
    }
}

/// Makes `dst` a copy of the tree `src` (BuildKit's "materialise the base"): `dst` is
/// created if missing and takes `src`'s metadata.
pub fn copy_tree(src: &Path, dst: &Path, cancel: Option<&AtomicBool>) -> Result<()> {
    let mut c = Copier::new(CopyOptions {
        cancel,
        ..Default::default()
    });
    // The root takes the source's metadata even when `dst` exists (an empty staging dir).
    c.copy_dir_root(src, dst, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn copy_tree_keeps_modes_links_times_and_hardlinks() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("d/f"), "hello").unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o751)).unwrap();
        fs::hard_link(src.join("d/f"), src.join("hl")).unwrap();
        symlink("/etc/passwd", src.join("abs")).unwrap();
        symlink("d/f", src.join("rel")).unwrap();
        fs::set_permissions(src.join("d/e"), fs::Permissions::from_mode(0o700)).unwrap();
        set_mtime_nofollow(&src.join("d/f"), (1, 0), (1_000_000, 5)).unwrap();
        set_mtime_nofollow(&src.join("abs"), (1, 0), (2_000_000, 0)).unwrap();
        set_mtime_nofollow(&src.join("d"), (1, 0), (3_000_000, 0)).unwrap();
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst, None).unwrap();
        let f = fs::symlink_metadata(dst.join("d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o751);
        assert_eq!(f.mtime(), 1_000_000);
        assert_eq!(f.mtime_nsec(), 5);
        assert_eq!(fs::read(dst.join("d/f")).unwrap(), b"hello");
        let h = fs::symlink_metadata(dst.join("hl")).unwrap();
        assert_eq!(h.ino(), f.ino(), "hard link kept");
        assert_ne!(
            f.ino(),
            fs::metadata(src.join("d/f")).unwrap().ino(),
            "not linked to the source"
        );
        assert_eq!(
            fs::read_link(dst.join("abs")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::symlink_metadata(dst.join("abs")).unwrap().mtime(),
            2_000_000
        );
        assert_eq!(fs::read_link(dst.join("rel")).unwrap(), Path::new("d/f"));
        assert_eq!(
            fs::symlink_metadata(dst.join("d/e")).unwrap().mode() & 0o7777,
            0o700
        );
        assert_eq!(
            fs::symlink_metadata(dst.join("d")).unwrap().mtime(),
            3_000_000
        );
    }

    #[test]
    fn copy_tree_keeps_extended_attributes() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), "x").unwrap();
        let name = CString::new("user.kiln.test").unwrap();
        if let Err(e) = crate::worker::xattr::set(&src.join("f"), &name, b"v1") {
            panic!("setting a user xattr on the temp folder's filesystem: {e}");
        }
        if crate::worker::xattr::list(&src.join("f"))
            .unwrap()
            .is_empty()
        {
            eprintln!("the temp filesystem holds no user xattrs; nothing to check");
            return;
        }
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst, None).unwrap();
        assert_eq!(
            crate::worker::xattr::list(&dst.join("f")).unwrap(),
            vec![(name, b"v1".to_vec())]
        );
    }

    #[test]
    fn replaces_files_with_dirs_and_dirs_with_files_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let lower = t.path().join("lower");
        fs::create_dir_all(lower.join("x")).unwrap();
        fs::write(lower.join("x/inner"), "").unwrap();
        fs::write(lower.join("y"), "file").unwrap();
        let upper = t.path().join("upper");
        fs::create_dir_all(upper.join("y")).unwrap();
        fs::write(upper.join("y/z"), "z").unwrap();
        fs::write(upper.join("x"), "now a file").unwrap();
        // A symlink in the destination must be replaced, never written through.
        fs::create_dir_all(upper.join("link")).unwrap();
        fs::write(upper.join("link/escaped"), "no").unwrap();
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        copy_tree(&lower, &dst, None).unwrap();
        symlink(&outside, dst.join("link")).unwrap();
        Copier::new(CopyOptions::default())
            .copy_contents(&upper, &dst)
            .unwrap();
        assert_eq!(fs::read(dst.join("x")).unwrap(), b"now a file");
        assert_eq!(fs::read(dst.join("y/z")).unwrap(), b"z");
        assert!(fs::symlink_metadata(dst.join("link")).unwrap().is_dir());
        assert!(!outside.join("escaped").exists());
    }
}
