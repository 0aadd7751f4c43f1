//! Copies a directory tree into a staging directory: filtered, with modes, owners
//! (when running as root), mtimes, extended attributes, symlinks (never followed)
//! and hardlinks (kept as hardlinks within the copied set).
//!
//! The walk runs on the calling thread and creates directories as it goes; it hands
//! regular files, symlinks and FIFOs in batches to `threads - 1` worker threads,
//! which write them while the walk goes on, and the calling thread joins them when
//! the walk is done. Hardlinks are linked afterwards, and directory modes and times
//! are set last, deepest first, so that writing their contents does not change them
//! again.
//!
//! With a [`Kept`] state ([`copy_tree_kept`]), a regular file whose stat is unchanged
//! since the last snapshot is hard-linked from the kept object instead of copied, and
//! every copied file is kept for the next time (see [`crate::kept`] for why that is
//! safe). A file or directory that vanishes between the walk and its copy is skipped.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use kiln_plugin_api::patterns::{FilterState, PathFilter};

use crate::kept::{Kept, Record, Stat};

/// Why a copy failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// An I/O failure on one path (the source path when reading it failed).
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done: `read`, `list directory`, `create`, …
        action: &'static str,
        /// The path concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The caller asked to stop.
    #[error("cancelled")]
    Cancelled,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What the copy wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files written with their content.
    pub files: u64,
    /// Extra names of a hardlinked file.
    pub hardlinks: u64,
    /// Directories created.
    pub dirs: u64,
    /// Symlinks created.
    pub symlinks: u64,
    /// FIFOs created.
    pub fifos: u64,
    /// Sockets and devices left out.
    pub skipped: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Regular files hard-linked from the kept copy of the last snapshot (unchanged).
    pub reused: u64,
    /// Entries that vanished between the walk and their copy (skipped).
    pub vanished: u64,
}

/// How to copy.
pub struct CopyOptions<'a> {
    /// Which paths to copy.
    pub filter: PathFilter,
    /// Worker threads for file contents (at least 1).
    pub threads: usize,
    /// Polled between entries; `true` stops the copy with [`CopyError::Cancelled`].
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
    /// Called from the calling thread now and then with `(done, total)` entries.
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
}

/// The metadata applied to a created entry.
#[derive(Clone, Copy, Debug)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: libc::timespec,
}

impl Meta {
    fn of(m: &fs::Metadata) -> Self {
        Meta {
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: libc::timespec {
                tv_sec: m.mtime() as libc::time_t,
                tv_nsec: m.mtime_nsec() as _,
            },
        }
    }
}

#[derive(Clone, Copy)]
enum Kind {
    File = 0,
    Symlink = 1,
    Fifo = 2,
}

/// An entry for the workers.
struct Item {
    kind: Kind,
    src: PathBuf,
    dest: PathBuf,
    meta: Meta,
    /// The size seen by the walk: what is copied (a file growing meanwhile is cut
    /// there, consistent with the mtime copied).
    size: u64,
    /// With a kept state: the object number, and whether it already holds this file
    /// (link it) or is to be made from the new copy.
    obj: Option<(u64, bool)>,
}

/// What one worker call did.
enum Done {
    /// Wrote (or linked) the entry; bytes of content copied.
    Wrote(u64),
    /// Linked an unchanged file from its kept object.
    Reused,
    /// The source was gone.
    Vanished,
}

/// Whether `e` says the source entry no longer exists.
fn is_gone(e: &CopyError) -> bool {
    matches!(e, CopyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
}

/// A directory met by the walk.
struct DirNode {
    src: PathBuf,
    dest: PathBuf,
    rel: String,
    meta: Meta,
    parent: Option<usize>,
    created: bool,
    state: FilterState,
}

/// Facts about this process that decide which calls are needed.
struct Env {
    /// Running as root: owners are copied.
    root: bool,
    euid: u32,
    egid: u32,
    /// The process umask, if known (then `fchmod` is skipped when it changes nothing).
    umask: Option<u32>,
}

impl Env {
    fn detect() -> Self {
        // SAFETY: these calls have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let umask = fs::read_to_string("/proc/self/status").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        });
        Env {
            root: euid == 0,
            euid,
            egid,
            umask,
        }
    }

    fn needs_chown(&self, m: &Meta) -> bool {
        self.root && (m.uid != self.euid || m.gid != self.egid)
    }

    /// Whether the mode given to `open`/`mkfifo` may not be the final one.
    fn needs_chmod(&self, m: &Meta, chowned: bool) -> bool {
        chowned || m.mode & 0o7000 != 0 || self.umask.is_none_or(|u| m.mode & u != 0)
    }
}

fn cstr(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ignores the failures of setting an owner that a user namespace or a non-root
/// process cannot avoid.
fn chown_result(r: io::Result<()>, path: &Path) -> Result<(), CopyError> {
    match r {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EINVAL)) => {
            tracing::debug!(path = %path.display(), "cannot set owner: {e}");
            Ok(())
        }
        r => r.map_err(io_err("set the owner of", path)),
    }
}

/// Copies the extended attributes of `src` (an fd, or a path when `fd` is `None`,
/// without following symlinks) to `dst`. Attributes the target refuses are left
/// out with a debug log.
fn copy_xattrs(
    src_fd: Option<i32>,
    src: &Path,
    dst_fd: Option<i32>,
    dst: &Path,
) -> Result<(), CopyError> {
    let src_c = cstr(src).map_err(io_err("read", src))?;
    let dst_c = cstr(dst).map_err(io_err("create", dst))?;
    let list = |buf: *mut libc::c_char, len: usize| -> isize {
        // SAFETY: buf is valid for len bytes (or null with len 0).
        unsafe {
            match src_fd {
                Some(fd) => libc::flistxattr(fd, buf, len),
                None => libc::llistxattr(src_c.as_ptr(), buf, len),
            }
        }
    };
    let size = list(std::ptr::null_mut(), 0);
    if size <= 0 {
        let e = io::Error::last_os_error();
        return match (size, e.raw_os_error()) {
            (0, _) | (_, Some(libc::ENOTSUP)) => Ok(()),
            _ => Err(io_err("list extended attributes of", src)(e)),
        };
    }
    let mut names = vec![0u8; size as usize];
    let size = list(names.as_mut_ptr().cast(), names.len());
    if size < 0 {
        return Err(io_err("list extended attributes of", src)(
            io::Error::last_os_error(),
        ));
    }
    names.truncate(size as usize);
    let mut value = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name_c) = CString::new(name) else {
            continue;
        };
        let get = |buf: *mut libc::c_void, len: usize| -> isize {
            // SAFETY: buf is valid for len bytes (or null with len 0).
            unsafe {
                match src_fd {
                    Some(fd) => libc::fgetxattr(fd, name_c.as_ptr(), buf, len),
                    None => libc::lgetxattr(src_c.as_ptr(), name_c.as_ptr(), buf, len),
                }
            }
        };
        let len = get(std::ptr::null_mut(), 0);
        if len < 0 {
            return Err(io_err("read extended attributes of", src)(
                io::Error::last_os_error(),
            ));
        }
        value.resize(len as usize, 0);
        let len = get(value.as_mut_ptr().cast(), value.len());
        if len < 0 {
            return Err(io_err("read extended attributes of", src)(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: the value buffer holds len initialised bytes.
        let rc = unsafe {
            match dst_fd {
                Some(fd) => {
                    libc::fsetxattr(fd, name_c.as_ptr(), value.as_ptr().cast(), len as usize, 0)
                }
                None => libc::lsetxattr(
                    dst_c.as_ptr(),
                    name_c.as_ptr(),
                    value.as_ptr().cast(),
                    len as usize,
                    0,
                ),
            }
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::ENOTSUP) | Some(libc::EACCES) => {
                    tracing::debug!(path = %dst.display(), attr = %String::from_utf8_lossy(name), "extended attribute left out: {e}");
                }
                _ => return Err(io_err("set extended attributes of", dst)(e)),
            }
        }
    }
    Ok(())
}

fn set_times_path(path: &Path, m: &Meta) -> Result<(), CopyError> {
    let c = cstr(path).map_err(io_err("set the times of", path))?;
    let times = [m.mtime, m.mtime];
    // SAFETY: c is a valid C string, times has two entries.
    check(unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map_err(io_err("set the times of", path))
}

/// Per-worker state: a reusable buffer for the read/write fallback.
struct Worker<'a> {
    env: &'a Env,
    kept: Option<&'a Kept>,
    shared: &'a Shared,
    buf: Vec<u8>,
    /// `copy_file_range` works between these filesystems (cleared on the first refusal).
    range_ok: bool,
}

impl Worker<'_> {
    fn run(&mut self, item: &Item) -> Result<Done, CopyError> {
        let r = match item.kind {
            Kind::File => return self.kept_file(item),
            Kind::Symlink => self.symlink(item).map(|()| Done::Wrote(0)),
            Kind::Fifo => self.fifo(item).map(|()| Done::Wrote(0)),
        };
        match r {
            Err(e) if is_gone(&e) && !item.dest.exists() => Ok(Done::Vanished),
            r => r,
        }
    }

    /// A regular file: linked from its kept object when unchanged, else copied (and
    /// kept, with a kept state).
    fn kept_file(&mut self, item: &Item) -> Result<Done, CopyError> {
        let (Some(kept), Some((obj, reuse))) = (self.kept, item.obj) else {
            return match self.file(item) {
                Ok(n) => Ok(Done::Wrote(n)),
                Err(e) if is_gone(&e) => Ok(Done::Vanished),
                Err(e) => Err(e),
            };
        };
        let mut keep_as = obj;
        if reuse {
            match kept.link_object(obj, &item.dest) {
                Ok(()) => return Ok(Done::Reused),
                Err(e) => {
                    // A missing object or a full link count: copy, and keep the copy
                    // under a new number.
                    tracing::debug!(path = %item.dest.display(), "kept object not linked: {e}");
                    keep_as = kept.new_object();
                }
            }
        }
        match self.file(item) {
            Ok(n) => {
                match kept.keep(&item.dest, keep_as) {
                    Ok(()) if keep_as != obj => {
                        self.shared.renumbered.lock().unwrap().insert(obj, keep_as);
                    }
                    Ok(()) => {}
                    Err(e) => {
                        tracing::debug!(path = %item.dest.display(), "copy not kept: {e}");
                        self.shared.failed.lock().unwrap().insert(obj);
                    }
                }
                Ok(Done::Wrote(n))
            }
            Err(e) if is_gone(&e) => {
                self.shared.failed.lock().unwrap().insert(obj);
                Ok(Done::Vanished)
            }
            Err(e) => Err(e),
        }
    }

    fn file(&mut self, item: &Item) -> Result<u64, CopyError> {
        let m = &item.meta;
        let src = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&item.src)
            .map_err(io_err("read", &item.src))?;
        let dst = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(m.mode & 0o777)
            .open(&item.dest)
            .map_err(io_err("create", &item.dest))?;
        let bytes = self.contents(&src, &dst, item)?;
        let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
        copy_xattrs(Some(sfd), &item.src, Some(dfd), &item.dest)?;
        let chowned = self.env.needs_chown(m);
        if chowned {
            // SAFETY: dfd is an open descriptor.
            chown_result(
                check(unsafe { libc::fchown(dfd, m.uid, m.gid) }),
                &item.dest,
            )?;
        }
        if self.env.needs_chmod(m, chowned) {
            // SAFETY: dfd is an open descriptor.
            check(unsafe { libc::fchmod(dfd, m.mode) })
                .map_err(io_err("set the mode of", &item.dest))?;
        }
        let times = [m.mtime, m.mtime];
        // SAFETY: dfd is open, times has two entries.
        check(unsafe { libc::futimens(dfd, times.as_ptr()) })
            .map_err(io_err("set the times of", &item.dest))?;
        Ok(bytes)
    }

    /// Copies up to `item.size` bytes, with `copy_file_range` when the filesystems
    /// allow it.
    fn contents(&mut self, mut src: &File, mut dst: &File, item: &Item) -> Result<u64, CopyError> {
        let mut total = 0u64;
        if self.range_ok {
            while total < item.size {
                // SAFETY: both descriptors are open; null offsets use the file positions.
                let n = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        std::ptr::null_mut(),
                        dst.as_raw_fd(),
                        std::ptr::null_mut(),
                        (item.size - total).min(1 << 30) as usize,
                        0,
                    )
                };
                if n > 0 {
                    total += n as u64;
                    continue;
                }
                if n == 0 {
                    return Ok(total);
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EXDEV)
                    | Some(libc::ENOSYS)
                    | Some(libc::EOPNOTSUPP)
                    | Some(libc::EINVAL)
                        if total == 0 =>
                    {
                        self.range_ok = false;
                        break;
                    }
                    Some(libc::EINTR) => continue,
                    // The error is the source's unless the target failed (no space…).
                    Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => {
                        return Err(io_err("write", &item.dest)(e))
                    }
                    _ => return Err(io_err("read", &item.src)(e)),
                }
            }
            if self.range_ok {
                return Ok(total);
            }
        }
        if self.buf.is_empty() {
            self.buf = vec![0; 128 * 1024];
        }
        while total < item.size {
            let want = (item.size - total).min(self.buf.len() as u64) as usize;
            let n = match src.read(&mut self.buf[..want]) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", &item.src)(e)),
            };
            dst.write_all(&self.buf[..n])
                .map_err(io_err("write", &item.dest))?;
            total += n as u64;
        }
        Ok(total)
    }

    fn symlink(&mut self, item: &Item) -> Result<(), CopyError> {
        let target = fs::read_link(&item.src).map_err(io_err("read", &item.src))?;
        std::os::unix::fs::symlink(&target, &item.dest).map_err(io_err("create", &item.dest))?;
        copy_xattrs(None, &item.src, None, &item.dest)?;
        if self.env.needs_chown(&item.meta) {
            let c = cstr(&item.dest).map_err(io_err("create", &item.dest))?;
            // SAFETY: c is a valid C string.
            chown_result(
                check(unsafe { libc::lchown(c.as_ptr(), item.meta.uid, item.meta.gid) }),
                &item.dest,
            )?;
        }
        set_times_path(&item.dest, &item.meta)
    }

    fn fifo(&mut self, item: &Item) -> Result<(), CopyError> {
        let c = cstr(&item.dest).map_err(io_err("create", &item.dest))?;
        // SAFETY: c is a valid C string.
        check(unsafe { libc::mkfifo(c.as_ptr(), item.meta.mode & 0o777) })
            .map_err(io_err("create", &item.dest))?;
        finish_node(self.env, &item.src, &item.dest, &item.meta)
    }
}

/// Owner, mode, xattrs and times of a directory or FIFO, by path.
fn finish_node(env: &Env, src: &Path, dest: &Path, m: &Meta) -> Result<(), CopyError> {
    copy_xattrs(None, src, None, dest)?;
    let c = cstr(dest).map_err(io_err("create", dest))?;
    let chowned = env.needs_chown(m);
    if chowned {
        // SAFETY: c is a valid C string.
        chown_result(
            check(unsafe { libc::lchown(c.as_ptr(), m.uid, m.gid) }),
            dest,
        )?;
    }
    // SAFETY: c is a valid C string.
    check(unsafe { libc::chmod(c.as_ptr(), m.mode) }).map_err(io_err("set the mode of", dest))?;
    set_times_path(dest, m)
}

/// The walk's output.
struct Plan {
    dirs: Vec<DirNode>,
    /// Entries handed to the workers.
    items: u64,
    /// `(existing copy, new name)` pairs for hardlinks.
    links: Vec<(PathBuf, PathBuf)>,
    skipped: u64,
    /// Entries gone between their listing and their stat.
    vanished: u64,
}

struct Walker<'a> {
    filter: &'a PathFilter,
    opts: &'a CopyOptions<'a>,
    plan: Plan,
    /// First copy of each multiply-linked file, by `(dev, ino)`, and its object.
    inodes: HashMap<(u64, u64), (PathBuf, Option<u64>)>,
    /// The kept state, if the copy is incremental.
    kept: Option<&'a Kept>,
    /// The files of this snapshot for the next manifest (with a kept state).
    records: Vec<(Vec<u8>, Record)>,
    /// Length of the source root path plus the separator: cut off for manifest paths.
    root_len: usize,
    seen: u64,
    /// Entries not yet sent to the workers.
    batch: Vec<Item>,
    tx: mpsc::Sender<Vec<Item>>,
    shared: &'a Shared,
}

impl Walker<'_> {
    /// Creates directory `idx` and every not yet created parent, top-down.
    fn materialize(&mut self, idx: usize) -> Result<(), CopyError> {
        let mut chain = Vec::new();
        let mut cur = Some(idx);
        while let Some(i) = cur {
            if self.plan.dirs[i].created {
                break;
            }
            chain.push(i);
            cur = self.plan.dirs[i].parent;
        }
        for &i in chain.iter().rev() {
            let d = &mut self.plan.dirs[i];
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&d.dest)
                .map_err(io_err("create", &d.dest))?;
            d.created = true;
        }
        Ok(())
    }

    fn walk(&mut self) -> Result<(), CopyError> {
        let mut stack = vec![0usize];
        while let Some(idx) = stack.pop() {
            let (src, dest, rel, state) = {
                let d = &self.plan.dirs[idx];
                (
                    d.src.clone(),
                    d.dest.clone(),
                    d.rel.clone(),
                    d.state.clone(),
                )
            };
            let mut entries = Vec::new();
            let listing = match fs::read_dir(&src) {
                Ok(l) => l,
                // Removed since its parent was listed: skipped, as a vanished file is.
                Err(e) if idx != 0 && e.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(path = %src.display(), "vanished during the walk");
                    self.plan.vanished += 1;
                    continue;
                }
                Err(e) => return Err(io_err("list directory", &src)(e)),
            };
            for entry in listing {
                let entry = entry.map_err(io_err("list directory", &src))?;
                entries.push((entry.file_name(), entry));
            }
            entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (name, entry) in entries {
                self.seen += 1;
                if self.seen % 256 == 0 {
                    if self.shared.stop.load(Ordering::Relaxed) {
                        return Ok(()); // a worker failed; its error is reported
                    }
                    if (self.opts.cancelled)() {
                        return Err(CopyError::Cancelled);
                    }
                }
                let esrc = src.join(&name);
                let meta = match entry.metadata() {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        tracing::debug!(path = %esrc.display(), "vanished during the walk");
                        self.plan.vanished += 1;
                        continue;
                    }
                    Err(e) => return Err(io_err("read", &esrc)(e)),
                };
                let erel = if rel.is_empty() {
                    name.to_string_lossy().into_owned()
                } else {
                    format!("{rel}/{}", name.to_string_lossy())
                };
                let edest = dest.join(&name);
                let ft = meta.file_type();
                let verdict = self.filter.check(&erel, ft.is_dir(), &state);
                if ft.is_dir() {
                    if !verdict.selected && !verdict.descend {
                        continue;
                    }
                    let child = self.plan.dirs.len();
                    self.plan.dirs.push(DirNode {
                        src: esrc,
                        dest: edest,
                        rel: erel,
                        meta: Meta::of(&meta),
                        parent: Some(idx),
                        created: false,
                        state: verdict.state.unwrap_or_default(),
                    });
                    if verdict.selected {
                        self.materialize(child)?;
                    }
                    if verdict.descend {
                        stack.push(child);
                    }
                    continue;
                }
                if !verdict.selected {
                    continue;
                }
                let kind = if ft.is_file() {
                    Kind::File
                } else if ft.is_symlink() {
                    Kind::Symlink
                } else if ft.is_fifo() {
                    Kind::Fifo
                } else {
                    tracing::debug!(path = %esrc.display(), "socket or device left out");
                    self.plan.skipped += 1;
                    continue;
                };
                self.materialize(idx)?;
                let mut obj = None;
                if let (Kind::File, Some(kept)) = (kind, self.kept) {
                    let stat = Stat::of(&meta);
                    let rel = esrc.as_os_str().as_bytes()[self.root_len..].to_vec();
                    let first = meta
                        .nlink()
                        .gt(&1)
                        .then(|| self.inodes.get(&(stat.dev, stat.ino)))
                        .flatten();
                    let (id, reuse) = match first {
                        Some((_, Some(id))) => (*id, true),
                        _ => match kept.reusable(&rel, &stat) {
                            Some(r) => (r.obj, true),
                            None => (kept.new_object(), false),
                        },
                    };
                    self.records.push((rel, Record { stat, obj: id }));
                    obj = Some((id, reuse));
                }
                if matches!(kind, Kind::File) && meta.nlink() > 1 {
                    match self.inodes.get(&(meta.dev(), meta.ino())) {
                        Some((first, _)) => {
                            self.plan.links.push((first.clone(), edest));
                            continue;
                        }
                        None => {
                            self.inodes.insert(
                                (meta.dev(), meta.ino()),
                                (edest.clone(), obj.map(|o| o.0)),
                            );
                        }
                    }
                }
                self.plan.items += 1;
                self.batch.push(Item {
                    kind,
                    src: esrc,
                    dest: edest,
                    meta: Meta::of(&meta),
                    size: meta.len(),
                    obj,
                });
                if self.batch.len() >= BATCH {
                    self.flush();
                }
            }
        }
        self.flush();
        Ok(())
    }

    /// Hands the pending entries to the workers.
    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
            // The receiver lives until every worker is done; a send cannot fail.
            let _ = self.tx.send(batch);
        }
    }
}

/// Entries per batch sent from the walk to the workers.
const BATCH: usize = 32;

/// What the walk and the workers share.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    first_error: Mutex<Option<CopyError>>,
    bytes: AtomicU64,
    done: AtomicU64,
    counts: [AtomicU64; 3],
    reused: AtomicU64,
    vanished: AtomicU64,
    /// Object numbers not made or not linkable: left out of the next manifest.
    failed: Mutex<HashSet<u64>>,
    /// Kept objects that could not be linked and were copied again: old → new number.
    renumbered: Mutex<HashMap<u64, u64>>,
}

impl Shared {
    fn fail(&self, e: CopyError) {
        let mut slot = self.first_error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Takes batches from `rx` until it is closed or the copy stops. The calling
/// thread's worker (`opts` set) also polls cancellation and reports progress.
fn work(
    env: &Env,
    kept: Option<&Kept>,
    rx: &Mutex<mpsc::Receiver<Vec<Item>>>,
    shared: &Shared,
    opts: Option<&CopyOptions<'_>>,
) {
    let mut w = Worker {
        env,
        kept,
        shared,
        buf: Vec::new(),
        range_ok: true,
    };
    let mut bytes = 0u64;
    let mut counts = [0u64; 3];
    let (mut reused, mut vanished) = (0u64, 0u64);
    while !shared.stop.load(Ordering::Relaxed) {
        let batch = match rx.lock().unwrap().recv() {
            Ok(b) => b,
            Err(_) => break,
        };
        if let Some(o) = opts {
            if (o.cancelled)() {
                shared.fail(CopyError::Cancelled);
                break;
            }
            (o.progress)(shared.done.load(Ordering::Relaxed), 0);
        }
        for item in &batch {
            match w.run(item) {
                Ok(Done::Wrote(n)) => {
                    bytes += n;
                    counts[item.kind as usize] += 1;
                }
                Ok(Done::Reused) => {
                    reused += 1;
                    counts[item.kind as usize] += 1;
                }
                Ok(Done::Vanished) => {
                    tracing::debug!(path = %item.src.display(), "vanished before its copy");
                    vanished += 1;
                }
                Err(e) => {
                    shared.fail(e);
                    break;
                }
            }
        }
        shared.done.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    shared.bytes.fetch_add(bytes, Ordering::Relaxed);
    shared.reused.fetch_add(reused, Ordering::Relaxed);
    shared.vanished.fetch_add(vanished, Ordering::Relaxed);
    for (c, n) in shared.counts.iter().zip(counts) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Copies what `opts.filter` selects of directory `src` into the existing, empty
/// directory `dest`. `dest` itself keeps its own mode and times.
pub fn copy_tree(src: &Path, dest: &Path, opts: &CopyOptions<'_>) -> Result<CopyStats, CopyError> {
    copy_inner(src, dest, opts, None).map(|(stats, _, _)| stats)
}

/// [`copy_tree`], linking unchanged files from `kept` (the kept copy of the last
/// snapshot of this context) and keeping the copied ones for the next snapshot. The
/// kept state is saved only when the whole copy succeeded; failing to save it is
/// logged, not an error.
pub fn copy_tree_kept(
    src: &Path,
    dest: &Path,
    opts: &CopyOptions<'_>,
    kept: Kept,
) -> Result<CopyStats, CopyError> {
    let (stats, records, failed) = copy_inner(src, dest, opts, Some(&kept))?;
    // The snapshot is complete either way; a kept state that could not be saved only
    // makes the next snapshot a full copy.
    if let Err(e) = kept.finish(records, &failed) {
        tracing::warn!(path = %src.display(), "cannot save the kept copy of this context (the next snapshot copies everything): {e}");
    }
    Ok(stats)
}

type Outcome = (CopyStats, Vec<(Vec<u8>, Record)>, HashSet<u64>);

fn copy_inner(
    src: &Path,
    dest: &Path,
    opts: &CopyOptions<'_>,
    kept: Option<&Kept>,
) -> Result<Outcome, CopyError> {
    let env = Env::detect();
    let root_meta = fs::metadata(src).map_err(io_err("read", src))?;
    let shared = Shared::default();
    let (tx, rx) = mpsc::channel();
    let rx = Mutex::new(rx);
    let plan = std::thread::scope(|s| {
        for _ in 1..opts.threads.max(1) {
            s.spawn(|| work(&env, kept, &rx, &shared, None));
        }
        let mut walker = Walker {
            filter: &opts.filter,
            opts,
            plan: Plan {
                dirs: vec![DirNode {
                    src: src.to_path_buf(),
                    dest: dest.to_path_buf(),
                    rel: String::new(),
                    meta: Meta::of(&root_meta),
                    parent: None,
                    created: true,
                    state: FilterState::default(),
                }],
                items: 0,
                links: Vec::new(),
                skipped: 0,
                vanished: 0,
            },
            inodes: HashMap::new(),
            kept,
            records: Vec::new(),
            root_len: src.as_os_str().len() + 1,
            seen: 0,
            batch: Vec::with_capacity(BATCH),
            tx,
            shared: &shared,
        };
        if let Err(e) = walker.walk() {
            shared.fail(e);
        }
        let Walker {
            plan, tx, records, ..
        } = walker;
        drop(tx); // the workers stop when the queue is empty
        work(&env, kept, &rx, &shared, Some(opts));
        (plan, records)
    });
    let (plan, records) = plan;
    if let Some(e) = shared.first_error.into_inner().unwrap() {
        return Err(e);
    }
    let counts = shared.counts;
    (opts.progress)(plan.items, plan.items);

    let mut links = 0;
    for (existing, new) in &plan.links {
        match fs::hard_link(existing, new) {
            Ok(()) => links += 1,
            // The first name vanished before its copy: so did this one, as far as the
            // snapshot can tell.
            Err(e) if e.kind() == io::ErrorKind::NotFound && !existing.exists() => {}
            Err(e) => return Err(io_err("create", new)(e)),
        }
    }
    let mut dirs = 0;
    for d in plan.dirs.iter().skip(1).rev().filter(|d| d.created) {
        match finish_node(&env, &d.src, &d.dest, &d.meta) {
            // Removed during the copy: it keeps the walk's mode and times unset.
            Err(e) if is_gone(&e) && !d.src.exists() => continue,
            r => r?,
        }
        dirs += 1;
    }
    let stats = CopyStats {
        files: counts[Kind::File as usize].load(Ordering::Relaxed),
        hardlinks: links,
        dirs,
        symlinks: counts[Kind::Symlink as usize].load(Ordering::Relaxed),
        fifos: counts[Kind::Fifo as usize].load(Ordering::Relaxed),
        skipped: plan.skipped,
        bytes: shared.bytes.load(Ordering::Relaxed),
        reused: shared.reused.load(Ordering::Relaxed),
        vanished: plan.vanished + shared.vanished.load(Ordering::Relaxed),
    };
    let failed = shared.failed.into_inner().unwrap();
    let renumbered = shared.renumbered.into_inner().unwrap();
    let mut records = records;
    if !renumbered.is_empty() {
        for (_, r) in &mut records {
            if let Some(new) = renumbered.get(&r.obj) {
                r.obj = *new;
            }
        }
    }
    Ok((stats, records, failed))
}

#[cfg(test)]
#[path = "copy_tests.rs"]
mod tests;
