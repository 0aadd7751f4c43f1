//! The kept copy of a named local context: what makes the second snapshot of an
//! unchanged context cheap (BuildKit's `metadata` differ, done with hard links).
//!
//! # The problem
//!
//! The host hands the plugin an **empty** staging directory for every snapshot and
//! commits it as an immutable snapshot (or drops it when its content checksum is
//! already in the cache). "Copy only what changed" therefore cannot mean "update the
//! previous snapshot in place": each snapshot is a new tree, and the previous one may be
//! in the store, in use, or gone.
//!
//! # The design
//!
//! For each context, keyed like BuildKit's shared key (the name as looked up, the
//! `local.sharedkeyhint`, and the directory's canonical path), the plugin keeps under
//! its state directory (`<root>/plugins/io.kiln.source.v1.local/contexts/<key>/`):
//!
//! - `objects/`: one hard link to every regular file it wrote into the last snapshot,
//!   under a number that is never reused (one flat folder, linked to and from through
//!   one open handle, so that each link resolves a single name);
//! - `manifest`: for each file of the last snapshot, its path in the context, the
//!   source's stat (device, inode, size, mtime, ctime, mode, owner) as seen by that walk,
//!   and its object number.
//!
//! The next snapshot walks the context again. A regular file whose stat equals the
//! recorded one is **hard-linked from its object** into the new staging directory (one
//! `link` instead of open/copy/chmod/utimes/close); anything else is copied from the
//! context as before, and the new copy is hard-linked into `objects/` under a new number.
//! Directories, symlinks and FIFOs are always recreated (as cheap as a link). Objects
//! the new snapshot no longer uses are unlinked, then the new manifest is written.
//!
//! # Why sharing inodes is safe here
//!
//! A kept object and the snapshot file it is linked to are the same inode. That is
//! sound because **no one ever writes to either**:
//!
//! - snapshots are immutable by the store's contract (readers copy out of them; the
//!   store keeps the modes as produced and never rewrites files);
//! - the plugin never opens an object for writing, never chmods, chowns or touches it:
//!   a changed file always gets a *new* inode (a fresh copy) and a new object number;
//!   an old object is only ever unlinked;
//! - the user's context is never linked to: every object is a copy the plugin made, so
//!   an edit in the context cannot reach a snapshot.
//!
//! Only staging directories of the store under the same kiln root get links (the host's
//! `<root>/tmp/`, same filesystem as the state directory). Any other destination, such
//! as `kiln source fetch --dest DIR` (a directory the user will edit), gets a full copy
//! and leaves the kept state alone, as does `local.differ=none`.
//!
//! Within a snapshot, hard links of the context stay hard links (both names are linked
//! from one object); an object's extra link outside the tree is invisible to the
//! checksum, the exporters and the copy ops, which pair hard links by inode only among
//! the tree's own entries.
//!
//! # When the record is not trusted
//!
//! - No manifest, a manifest of another format, another context path, or another boot
//!   (`/proc/sys/kernel/random/boot_id`: after a crash, unflushed objects may have lost
//!   data): everything is copied and the objects are cleared first.
//! - The manifest is deleted before a snapshot starts changing `objects/`, and written
//!   again (to a temporary name, then renamed) only after it finished; a snapshot that
//!   fails or is killed half-way leaves no manifest, so the next one starts clean.
//! - A file changed in the same clock tick as the walk that recorded it could change
//!   again without changing its times (git's "racy clean" problem): a record whose
//!   mtime or ctime is not older than that walk's start is not reused. On filesystems
//!   with whole-second times the margin is two seconds.
//! - Another build snapshotting the same context at the same time holds the lock; this
//!   one then makes a full copy without the kept state instead of waiting.
//!
//! # Space
//!
//! While the snapshots made from it are in the store, the kept copy costs no extra
//! space (the same inodes). Once they are pruned it is one copy of each context; a
//! context not snapshotted for [`UNUSED_CONTEXT_AGE`] is removed by the next snapshot
//! of any context ([`sweep`]).
//!
//! The host checksums the staged tree after every snapshot (to find the snapshot in the
//! cache); the plugin API has no way to hand it the checksums of unchanged files, so
//! that part is not incremental yet.

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

const MAGIC: &[u8] = b"kiln-local-kept 2\n";

/// A context whose kept copy was not used for this long is removed by [`sweep`].
pub const UNUSED_CONTEXT_AGE: std::time::Duration = std::time::Duration::from_secs(7 * 86400);

/// What the walk saw of a source file: the fields that decide "unchanged".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// Device and inode.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// mtime (seconds, nanoseconds).
    pub mtime: (i64, i64),
    /// ctime (seconds, nanoseconds): changes with every chmod, chown, xattr or link.
    pub ctime: (i64, i64),
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

impl Stat {
    /// The stat of `m`.
    pub fn of(m: &fs::Metadata) -> Self {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        for v in [
            self.dev,
            self.ino,
            self.size,
            self.mtime.0 as u64,
            self.mtime.1 as u64,
            self.ctime.0 as u64,
            self.ctime.1 as u64,
            self.mode as u64,
            self.uid as u64,
            self.gid as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn decode(b: &[u8]) -> Self {
        let v = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap());
        Stat {
            dev: v(0),
            ino: v(1),
            size: v(2),
            mtime: (v(3) as i64, v(4) as i64),
            ctime: (v(5) as i64, v(6) as i64),
            mode: v(7) as u32,
            uid: v(8) as u32,
            gid: v(9) as u32,
        }
    }
}

const STAT_LEN: usize = 80;

/// One file of a snapshot: the source's stat and the object holding its copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// The source's stat when it was copied.
    pub stat: Stat,
    /// The object number.
    pub obj: u64,
}

/// The key directory name of a context: sha256 of name, hint and canonical path.
pub fn context_key(name: &str, hint: Option<&str>, dir: &Path) -> String {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(hint.unwrap_or("").as_bytes());
    h.update([0]);
    h.update(dir.as_os_str().as_bytes());
    hex::encode(h.finalize())
}

fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The coarse realtime clock the kernel stamps file times with.
fn coarse_now() -> (i64, i64) {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    #[allow(clippy::unnecessary_cast)] // time_t and c_long are i64 only on 64-bit targets
    (ts.tv_sec as i64, ts.tv_nsec as i64)
}

/// The kept state of one context, locked for one snapshot.
pub struct Kept {
    dir: PathBuf,
    objects: PathBuf,
    /// `objects/`, opened once: links to and from it resolve one name, not a path.
    objects_fd: OwnedFd,
    /// The last snapshot's files, by path relative to the context (raw bytes).
    prev: HashMap<Vec<u8>, Record>,
    /// When the last snapshot's walk started (coarse clock).
    prev_started: (i64, i64),
    /// When this snapshot's walk started.
    started: (i64, i64),
    next_obj: AtomicU64,
    source: Vec<u8>,
    boot: String,
    /// Held for the snapshot's lifetime (flock).
    _lock: File,
}

impl Kept {
    /// Opens and locks the kept state of the context `key` (see [`context_key`]) for
    /// the directory `source` under `state_dir`. `Ok(None)` when another snapshot of the
    /// same context holds it. An unusable state (no manifest, another format, path or
    /// boot) is cleared, so every file will be copied.
    pub fn open(state_dir: &Path, key: &str, source: &Path) -> io::Result<Option<Kept>> {
        let dir = state_dir.join("contexts").join(key);
        fs::create_dir_all(&dir)?;
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        // SAFETY: the descriptor is open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Ok(None);
            }
            return Err(e);
        }
        // Marks the context as used now (see `sweep`).
        // SAFETY: the descriptor is open; a null times pointer means "now".
        unsafe { libc::futimens(lock.as_raw_fd(), std::ptr::null()) };
        let started = coarse_now();
        let boot = boot_id();
        let source = source.as_os_str().as_bytes().to_vec();
        let objects = dir.join("objects");
        let manifest = dir.join("manifest");
        let loaded = match fs::read(&manifest) {
            Ok(bytes) => parse_manifest(&bytes, &source, &boot),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        // From here on `objects/` changes: no manifest until the snapshot is done.
        match fs::remove_file(&manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (prev, prev_started, next_obj) = match loaded {
            Some(m) => m,
            None => {
                match fs::remove_dir_all(&objects) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
                (HashMap::new(), (0, 0), 0)
            }
        };
        fs::create_dir_all(&objects)?;
        let objects_fd = open_dir_path(&objects)?;
        Ok(Some(Kept {
            dir,
            objects,
            objects_fd,
            prev,
            prev_started,
            started,
            next_obj: AtomicU64::new(next_obj),
            source,
            boot,
            _lock: lock,
        }))
    }

    /// The object of the last snapshot that holds the file at `rel` when the source
    /// still has the stat `st` (and the record is not racy).
    pub fn reusable(&self, rel: &[u8], st: &Stat) -> Option<Record> {
        let rec = self.prev.get(rel)?;
        if rec.stat != *st || self.is_racy(&rec.stat) {
            return None;
        }
        Some(*rec)
    }

    fn is_racy(&self, st: &Stat) -> bool {
        let newest = st.mtime.max(st.ctime);
        let whole_seconds = st.mtime.1 == 0 && st.ctime.1 == 0;
        let limit = if whole_seconds {
            (self.prev_started.0 - 2, self.prev_started.1)
        } else {
            self.prev_started
        };
        newest >= limit
    }

    /// A new, never used object number.
    pub fn new_object(&self) -> u64 {
        self.next_obj.fetch_add(1, Ordering::Relaxed)
    }

    /// Where object `obj` lives.
    pub fn object_path(&self, obj: u64) -> PathBuf {
        self.objects.join(format!("{obj:x}"))
    }

    fn object_name(obj: u64) -> CString {
        CString::new(format!("{obj:x}")).expect("hex has no NUL")
    }

    /// Hard-links object `obj` as `dest` (a new name in a staging directory).
    pub fn link_object(&self, obj: u64, dest: &Path) -> io::Result<()> {
        let name = Self::object_name(obj);
        let dest = path_cstr(dest)?;
        // SAFETY: both strings are valid C strings; objects_fd is an open directory.
        check(unsafe {
            libc::linkat(
                self.objects_fd.as_raw_fd(),
                name.as_ptr(),
                libc::AT_FDCWD,
                dest.as_ptr(),
                0,
            )
        })
    }

    /// Hard-links the finished copy `file` as object `obj`.
    pub fn keep(&self, file: &Path, obj: u64) -> io::Result<()> {
        let name = Self::object_name(obj);
        let file = path_cstr(file)?;
        // SAFETY: both strings are valid C strings; objects_fd is an open directory.
        check(unsafe {
            libc::linkat(
                libc::AT_FDCWD,
                file.as_ptr(),
                self.objects_fd.as_raw_fd(),
                name.as_ptr(),
                0,
            )
        })
    }

    /// Ends a successful snapshot whose files are `records` (objects in `failed` were
    /// not made and are left out): unlinks the objects no longer used, then writes the
    /// manifest.
    pub fn finish(self, records: Vec<(Vec<u8>, Record)>, failed: &HashSet<u64>) -> io::Result<()> {
        let records: Vec<_> = records
            .into_iter()
            .filter(|(_, r)| !failed.contains(&r.obj))
            .collect();
        let used: HashSet<u64> = records.iter().map(|(_, r)| r.obj).collect();
        let stale: HashSet<u64> = self
            .prev
            .values()
            .map(|r| r.obj)
            .filter(|o| !used.contains(o))
            .collect();
        for obj in stale.iter().chain(failed.iter()) {
            let name = Self::object_name(*obj);
            // SAFETY: name is a valid C string; objects_fd is an open directory.
            match check(unsafe { libc::unlinkat(self.objects_fd.as_raw_fd(), name.as_ptr(), 0) }) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let mut out = Vec::with_capacity(64 + records.len() * (STAT_LEN + 48));
        out.extend_from_slice(MAGIC);
        let field = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        field(&mut out, &self.source);
        field(&mut out, self.boot.as_bytes());
        for v in [
            self.started.0 as u64,
            self.started.1 as u64,
            self.next_obj.load(Ordering::Relaxed),
            records.len() as u64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for (rel, r) in &records {
            field(&mut out, rel);
            r.stat.encode(&mut out);
            out.extend_from_slice(&r.obj.to_le_bytes());
        }
        let tmp = self.dir.join("manifest.tmp");
        {
            let mut w = BufWriter::new(File::create(&tmp)?);
            w.write_all(&out)?;
            w.flush()?;
        }
        fs::rename(&tmp, self.dir.join("manifest"))
    }
}

fn path_cstr(p: &Path) -> io::Result<CString> {
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

/// Opens directory `p` as a handle for `*at` calls.
fn open_dir_path(p: &Path) -> io::Result<OwnedFd> {
    let c = path_cstr(p)?;
    // SAFETY: c is a valid C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads a manifest; `None` when it is not one for `source` written in this boot.
#[allow(clippy::type_complexity)]
fn parse_manifest(
    bytes: &[u8],
    source: &[u8],
    boot: &str,
) -> Option<(HashMap<Vec<u8>, Record>, (i64, i64), u64)> {
    let mut cur = Cursor {
        b: bytes.strip_prefix(MAGIC)?,
    };
    if cur.field()? != source || cur.field()? != boot.as_bytes() {
        return None;
    }
    let started = (cur.u64()? as i64, cur.u64()? as i64);
    let next_obj = cur.u64()?;
    let count = cur.u64()? as usize;
    let mut prev = HashMap::with_capacity(count.min(1 << 22));
    for _ in 0..count {
        let rel = cur.field()?.to_vec();
        let stat = Stat::decode(cur.take(STAT_LEN)?);
        let obj = cur.u64()?;
        if obj >= next_obj {
            return None;
        }
        prev.insert(rel, Record { stat, obj });
    }
    if !cur.b.is_empty() {
        return None;
    }
    Some((prev, started, next_obj))
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.b.len() < n {
            return None;
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn field(&mut self) -> Option<&'a [u8]> {
        let n = self.take(4)?;
        let n = u32::from_le_bytes(n.try_into().unwrap()) as usize;
        self.take(n)
    }
}

/// Removes the kept copies under `state_dir` (other than `current`) whose last
/// snapshot is older than `max_age`, skipping any that a snapshot holds right now.
/// Returns how many it removed.
pub fn sweep(state_dir: &Path, current: &str, max_age: std::time::Duration) -> io::Result<usize> {
    let contexts = state_dir.join("contexts");
    let now = std::time::SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(&contexts)? {
        let entry = entry?;
        let dir = entry.path();
        if entry.file_name().as_bytes() == current.as_bytes() {
            continue;
        }
        // The lock file's mtime: set when a snapshot of this context last started.
        let used = fs::metadata(dir.join("lock"))
            .or_else(|_| entry.metadata())
            .and_then(|m| m.modified())?;
        if now.duration_since(used).unwrap_or_default() < max_age {
            continue;
        }
        let Ok(lock) = File::options().write(true).open(dir.join("lock")) else {
            continue;
        };
        // SAFETY: the descriptor is open.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        // Out of the way first, so that no half-removed state is ever opened.
        let trash = contexts.join(format!(".trash-{}", entry.file_name().to_string_lossy()));
        fs::rename(&dir, &trash)?;
        drop(lock);
        fs::remove_dir_all(&trash)?;
        removed += 1;
    }
    Ok(removed)
}

#[cfg(test)]
#[path = "kept_tests.rs"]
mod tests;
