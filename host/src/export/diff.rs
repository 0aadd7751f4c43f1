//! The diff layer of an image-based result: what changed between the base image's
//! rootfs and the result's tree, as one OCI layer tar (image-spec "layer changesets").
//!
//! [`changes`] compares the two trees; [`write_layer`] writes the changeset:
//!
//! - added or changed entries with the result's modes, owners, times and extended
//!   attributes; a changed directory is written without its unchanged children, and
//!   every directory above a change is written too (as containerd's differ does), so
//!   its metadata is the result's;
//! - a removed entry as an empty `.wh.<name>` file beside it; a directory whose every
//!   entry was removed (at least two) as one `.wh..wh..opq` marker instead, written
//!   before the directory's new entries;
//! - hard links: when any path of a hard-linked file is written, every path of it is
//!   (the first as the file, the rest as tar hard links to it), so the links survive;
//! - an entry whose type changed is written as the new entry (appliers replace it).
//!
//! Entries compare by type, mode, owner, size, modification time (with nanoseconds),
//! device numbers, link target, link count and extended attributes; regular files whose
//! metadata agree compare by content (unless they are the same inode), since a copy can
//! keep the time and size of what it replaced.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::ExportError;

/// The prefix of a whiteout entry's name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// The name of an opaque-directory marker.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// One entry of a changeset, by its path relative to the roots.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change {
    /// Hides the lower layers' contents of this directory (`dir/.wh..wh..opq`).
    Opaque(PathBuf),
    /// Removes this path of the lower layers (`parent/.wh.<name>`).
    Whiteout(PathBuf),
    /// The result's entry at this path (a directory without its children).
    Entry(PathBuf),
}

impl Change {
    /// The path the entry has in the layer tar.
    pub fn tar_path(&self) -> PathBuf {
        match self {
            Change::Opaque(dir) => dir.join(OPAQUE_MARKER),
            Change::Whiteout(p) => {
                let mut name = OsString::from(WHITEOUT_PREFIX);
                name.push(p.file_name().unwrap_or_default());
                p.with_file_name(name)
            }
            Change::Entry(p) => p.clone(),
        }
    }

    /// The order of the layer: parents before children, siblings by name bytes,
    /// with a directory's opaque marker and whiteouts before its entries.
    fn sort_key(&self) -> Vec<(u8, Vec<u8>)> {
        let (path, rank) = match self {
            Change::Opaque(d) => (d.join(OPAQUE_MARKER), 0),
            Change::Whiteout(_) => (self.tar_path(), 1),
            Change::Entry(p) => (p.clone(), 2),
        };
        let parts: Vec<&OsStr> = path.iter().collect();
        let last = parts.len().saturating_sub(1);
        parts
            .iter()
            .enumerate()
            .map(|(i, c)| (if i == last { rank } else { 2 }, c.as_bytes().to_vec()))
            .collect()
    }
}

/// What [`changes`] found: the changeset in layer order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changeset {
    /// The entries, in the order they go into the tar.
    pub changes: Vec<Change>,
}

impl Changeset {
    /// Whether the result equals the base (no layer is needed).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

struct Walk<'a> {
    cancel: Option<&'a AtomicBool>,
    /// Non-directory entries and new or changed directories to write.
    entries: HashSet<PathBuf>,
    whiteouts: Vec<PathBuf>,
    opaques: Vec<PathBuf>,
    /// Every path of each hard-linked regular file of the result.
    links: HashMap<(u64, u64), Vec<PathBuf>>,
    /// Regular files whose metadata agree with the base's: (relative path, result
    /// file, base file, size), compared by content after the walk, in parallel.
    to_compare: Vec<(PathBuf, PathBuf, PathBuf, u64)>,
}

/// Whether a non-directory entry is unchanged.
enum Same {
    Yes,
    No,
    /// Same metadata, other inode: the contents decide.
    IfContentEqual,
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExportError + 'a {
    move |e| ExportError::io(op, path, e)
}

/// Names in `dir`, sorted by bytes; sockets have no archive form and are left out.
fn list(dir: &Path) -> Result<Vec<OsString>, ExportError> {
    let mut names = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("read folder", dir))? {
        let e = e.map_err(io_err("read folder", dir))?;
        if e.file_type().is_ok_and(|t| t.is_socket()) {
            continue;
        }
        names.push(e.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Compares the base rootfs `base` with the result `tree` and returns the changeset
/// that turns the one into the other. Blocking; polls `cancel` per directory.
pub fn changes(
    base: &Path,
    tree: &Path,
    cancel: Option<&AtomicBool>,
) -> Result<Changeset, ExportError> {
    let mut w = Walk {
        cancel,
        entries: HashSet::new(),
        whiteouts: Vec::new(),
        opaques: Vec::new(),
        links: HashMap::new(),
        to_compare: Vec::new(),
    };
    w.dir(Some(base), tree, Path::new(""))?;
    let pending = std::mem::take(&mut w.to_compare);
    w.entries.extend(differing(pending, cancel)?);

    // A hard-linked file written once is written under all of its names.
    for paths in w.links.values() {
        if paths.iter().any(|p| w.entries.contains(p)) {
            w.entries.extend(paths.iter().cloned());
        }
    }
    // Every directory above a change is written too.
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut add_parents = |p: &Path| {
        let mut cur = p.parent();
        while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
            if !dirs.insert(d.to_path_buf()) {
                break;
            }
            cur = d.parent();
        }
    };
    for p in w.entries.iter().chain(&w.whiteouts) {
        add_parents(p);
    }
    for d in &w.opaques {
        add_parents(&d.join(OPAQUE_MARKER));
    }
    let mut all: Vec<Change> = w
        .entries
        .into_iter()
        .chain(dirs)
        .collect::<HashSet<_>>()
        .into_iter()
        .map(Change::Entry)
        .chain(w.whiteouts.into_iter().map(Change::Whiteout))
        .chain(w.opaques.into_iter().map(Change::Opaque))
        .collect();
    all.sort_by_cached_key(Change::sort_key);
    Ok(Changeset { changes: all })
}

impl Walk<'_> {
    /// Compares directory `tree` (at `rel`) with `base` (`None`: everything is new).
    fn dir(&mut self, base: Option<&Path>, tree: &Path, rel: &Path) -> Result<(), ExportError> {
        if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(ExportError::io(
                "diff",
                tree,
                io::Error::new(io::ErrorKind::Interrupted, "cancelled"),
            ));
        }
        let names = list(tree)?;
        let mut base_names: Vec<OsString> = match base {
            Some(b) => list(b)?,
            None => Vec::new(),
        };
        let present: HashSet<&OsString> = names.iter().collect();
        let removed: Vec<&OsString> = base_names.iter().filter(|n| !present.contains(n)).collect();
        let mut base = base;
        if removed.len() >= 2 && removed.len() == base_names.len() {
            // Everything of the base is gone: one opaque marker, and all is new.
            self.opaques.push(rel.to_path_buf());
            base = None;
            base_names.clear();
        } else {
            for n in removed {
                self.whiteouts.push(rel.join(n));
            }
        }
        let in_base: HashSet<&OsString> = base_names.iter().collect();
        for name in &names {
            if name.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(ExportError::io(
                    "diff",
                    tree.join(name),
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "names starting with .wh. are reserved for whiteouts in image layers",
                    ),
                ));
            }
            let path = tree.join(name);
            let rel = rel.join(name);
            let tm = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
            let bpath = base
                .filter(|_| in_base.contains(name))
                .map(|b| b.join(name));
            let bm = match &bpath {
                Some(p) => Some(fs::symlink_metadata(p).map_err(io_err("stat", p))?),
                None => None,
            };
            if tm.is_file() && tm.nlink() > 1 {
                self.links
                    .entry((tm.dev(), tm.ino()))
                    .or_default()
                    .push(rel.clone());
            }
            if tm.is_dir() {
                match (&bpath, &bm) {
                    (Some(bp), Some(bm)) if bm.is_dir() => {
                        if !same_meta(&path, &tm, bp, bm)? {
                            self.entries.insert(rel.clone());
                        }
                        self.dir(Some(bp), &path, &rel)?;
                    }
                    _ => {
                        self.entries.insert(rel.clone());
                        self.dir(None, &path, &rel)?;
                    }
                }
            } else {
                let same = match (&bpath, &bm) {
                    (Some(bp), Some(bm)) => same_entry(&path, &tm, bp, bm)?,
                    _ => Same::No,
                };
                match same {
                    Same::Yes => {}
                    Same::No => {
                        self.entries.insert(rel);
                    }
                    Same::IfContentEqual => {
                        let bp = bpath.expect("compared against a base entry");
                        self.to_compare.push((rel, path, bp, tm.size()));
                    }
                }
            }
        }
        Ok(())
    }
}

fn kind(m: &Metadata) -> u8 {
    let t = m.file_type();
    if t.is_dir() {
        1
    } else if t.is_file() {
        2
    } else if t.is_symlink() {
        3
    } else if t.is_char_device() {
        4
    } else if t.is_block_device() {
        5
    } else if t.is_fifo() {
        6
    } else {
        7
    }
}

/// Type, mode, owner, time and extended attributes agree.
fn same_meta(a: &Path, am: &Metadata, b: &Path, bm: &Metadata) -> Result<bool, ExportError> {
    if kind(am) != kind(bm)
        || am.mode() != bm.mode()
        || am.uid() != bm.uid()
        || am.gid() != bm.gid()
        || am.mtime() != bm.mtime()
        || am.mtime_nsec() != bm.mtime_nsec()
    {
        return Ok(false);
    }
    let ax = crate::worker::xattr::list(a).map_err(io_err("read extended attributes of", a))?;
    let bx = crate::worker::xattr::list(b).map_err(io_err("read extended attributes of", b))?;
    Ok(ax == bx)
}

/// Whether a non-directory entry is unchanged: same metadata, and same link target,
/// device numbers or (decided later) content.
fn same_entry(a: &Path, am: &Metadata, b: &Path, bm: &Metadata) -> Result<Same, ExportError> {
    let yes_if = |c: bool| if c { Same::Yes } else { Same::No };
    if !same_meta(a, am, b, bm)? || am.size() != bm.size() || am.nlink() != bm.nlink() {
        return Ok(Same::No);
    }
    let t = am.file_type();
    if t.is_symlink() {
        let at = fs::read_link(a).map_err(io_err("readlink", a))?;
        let bt = fs::read_link(b).map_err(io_err("readlink", b))?;
        return Ok(yes_if(at == bt));
    }
    if t.is_char_device() || t.is_block_device() {
        return Ok(yes_if(am.rdev() == bm.rdev()));
    }
    if t.is_file() && am.size() > 0 && (am.dev(), am.ino()) != (bm.dev(), bm.ino()) {
        return Ok(Same::IfContentEqual);
    }
    Ok(Same::Yes)
}

/// The relative paths of the `pending` files whose contents differ from their base
/// file's, compared on a few threads (reading dominates).
fn differing(
    pending: Vec<(PathBuf, PathBuf, PathBuf, u64)>,
    cancel: Option<&AtomicBool>,
) -> Result<Vec<PathBuf>, ExportError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4)
        .min(pending.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let work = |_: usize| -> Result<Vec<PathBuf>, ExportError> {
        let mut out = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((rel, a, b, size)) = pending.get(i) else {
                return Ok(out);
            };
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                return Err(ExportError::io(
                    "diff",
                    a,
                    io::Error::new(io::ErrorKind::Interrupted, "cancelled"),
                ));
            }
            if !same_content(a, b, *size)? {
                out.push(rel.clone());
            }
        }
    };
    if threads <= 1 {
        return work(0);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|t| s.spawn(move || work(t))).collect();
        let mut all = work(0)?;
        for h in handles {
            let part = h.join().map_err(|_| {
                ExportError::io(
                    "diff",
                    Path::new("."),
                    io::Error::other("a comparison thread panicked"),
                )
            })??;
            all.extend(part);
        }
        Ok(all)
    })
}

fn same_content(a: &Path, b: &Path, size: u64) -> Result<bool, ExportError> {
    if size == 0 {
        return Ok(true);
    }
    let mut fa = File::open(a).map_err(io_err("open", a))?;
    let mut fb = File::open(b).map_err(io_err("open", b))?;
    let mut ba = vec![0u8; 128 * 1024];
    let mut bb = vec![0u8; 128 * 1024];
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(io_err("read", a))?;
        let m = read_full(&mut fb, &mut bb).map_err(io_err("read", b))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `set` as a layer tar (finished with its two zero blocks) to `out`, reading
/// the entries from the result `tree`, and returns `out`.
pub fn write_layer<W: Write>(tree: &Path, set: &Changeset, out: W) -> Result<W, ExportError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut written: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for c in &set.changes {
        let rel = c.tar_path();
        match c {
            Change::Opaque(_) | Change::Whiteout(_) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(0);
                h.set_mtime(0);
                b.append_data(&mut h, &rel, io::empty())
                    .map_err(io_err("write whiteout", &rel))?;
            }
            Change::Entry(p) => {
                let path = tree.join(p);
                let m = fs::symlink_metadata(&path).map_err(io_err("stat", &path))?;
                super::tarball::append_entry(&mut b, &path, &rel, &m, &mut written, true)?
            }
        }
    }
    b.into_inner().map_err(io_err("write layer of", tree))
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;
