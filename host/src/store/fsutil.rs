//! Small filesystem helpers: durable renames, tree removal and sizing, random names.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch, now.
pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `n` random bytes from the kernel, as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    while filled < n {
        // SAFETY: writes at most `n - filled` bytes into the live buffer.
        let rc = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), n - filled, 0) };
        if rc > 0 {
            filled += rc as usize;
        } else if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // getrandom cannot fail on Linux >= 3.17 other than EINTR; fall back to
            // something unique per process and moment rather than panicking.
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let seed = format!(
                "{}-{}-{:?}",
                std::process::id(),
                t.as_nanos(),
                std::thread::current().id()
            );
            use sha2::Digest;
            let h = sha2::Sha256::digest(seed.as_bytes());
            let take = (n - filled).min(h.len());
            buf[filled..filled + take].copy_from_slice(&h[..take]);
            filled += take;
        }
    }
    hex::encode(buf)
}

/// fsyncs a directory so that renames and creations inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Flushes the whole filesystem holding `path` (`syncfs(2)`): one call instead of one
/// `fsync` per file of a freshly written tree.
pub(crate) fn syncfs(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    // SAFETY: syncfs on a valid open descriptor.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Trees with at most this many entries are flushed file by file; larger ones with one
/// `syncfs(2)`.
const FSYNC_EACH_MAX: u64 = 16;

/// Makes a freshly written tree of `entries` entries durable. A small tree is flushed
/// file by file, so that the cost is its own data only (`syncfs` would also wait for
/// every other process's dirty data on the filesystem, e.g. a large download being
/// written next door); a large tree takes one `syncfs` instead of thousands of
/// `fsync`s. Anything unreadable file by file falls back to `syncfs`.
pub(crate) fn flush_tree(path: &Path, entries: u64) -> io::Result<()> {
    if entries <= FSYNC_EACH_MAX && fsync_each(path).is_ok() {
        return Ok(());
    }
    syncfs(path)
}

/// fsyncs every regular file and directory below `path` (directories after their
/// entries), never following symlinks.
fn fsync_each(path: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in fs::read_dir(path)? {
            fsync_each(&entry?.path())?;
        }
        File::open(path)?.sync_all()
    } else if meta.is_file() {
        File::open(path)?.sync_all()
    } else {
        Ok(())
    }
}

/// Removes `path` and everything below it, whatever the modes inside (snapshot trees may
/// hold read-only directories). A missing path is not an error. Symlinks are removed,
/// never followed.
pub(crate) fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        };
    }
    if meta.permissions().mode() & 0o700 != 0o700 {
        fs::set_permissions(
            path,
            fs::Permissions::from_mode(meta.permissions().mode() | 0o700),
        )?;
    }
    for entry in fs::read_dir(path)? {
        remove_tree(&entry?.path())?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Apparent size of a tree: the lengths of its regular files and symlinks, plus the
/// number of entries. A missing path counts as empty.
pub(crate) fn tree_size(path: &Path) -> io::Result<(u64, u64)> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok((meta.len(), 1));
    }
    let mut bytes = 0;
    let mut entries = 1;
    let rd = match fs::read_dir(path) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    for entry in rd {
        let entry = entry?;
        let (b, n) = tree_size(&entry.path())?;
        bytes += b;
        entries += n;
    }
    Ok((bytes, entries))
}

/// Modification time of `path` in seconds since the epoch (0 when unknown).
pub(crate) fn mtime_secs(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Access time of `path` in seconds since the epoch (0 when unknown).
pub(crate) fn atime_secs(meta: &fs::Metadata) -> i64 {
    meta.accessed()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Sets the access time of `path` to now: blobs record their last use this way. Only
/// the access time: a snapshot may share a blob's inode (the http source links its
/// file to the blob), and a snapshot's modification times never change.
pub(crate) fn touch(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    f.set_times(fs::FileTimes::new().set_accessed(std::time::SystemTime::now()))
}
