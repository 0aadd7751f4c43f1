//! A few MiB kept in reserve in the root, so that kiln can always free its own space.
//!
//! SQLite needs room to write: its write-ahead log and shared-memory files when a
//! connection opens, log pages when prune deletes rows. On a file system filled to the
//! last block (by a download, or by anything else) that room is gone, and without it
//! not even `kiln cache prune` could run. So [`Store::open`](super::Store::open) keeps
//! `<root>/reserve`, a file with real blocks, while there is plenty of space; opening
//! the database on a full disk releases it and tries again, and prune releases it
//! before it starts and makes it again after it freed space.

use std::io::{self, Write};
use std::path::Path;

use super::beneath;

/// The reserve file's name under the root.
pub(crate) const NAME: &str = "reserve";
/// Its size.
pub(crate) const SIZE: u64 = 1 << 20;
/// Free space the file system must keep besides the reserve before it is made.
const HEADROOM: u64 = 2 * SIZE;

/// Bytes available to this user on the file system holding `root`.
pub(crate) fn available(root: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(root.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and an out pointer to a zeroed statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}

/// Whether the file system holding `root` is (nearly) out of space.
pub(crate) fn disk_full(root: &Path) -> bool {
    available(root).is_ok_and(|a| a < SIZE)
}

/// Makes the reserve if it is missing and there is room for it and more. Best effort:
/// a failure only means there is no reserve yet.
pub(crate) fn ensure(root: &Path) {
    let path = root.join(NAME);
    if path.exists() || available(root).map_or(true, |a| a < SIZE + HEADROOM) {
        return;
    }
    let tmp = root.join(format!("{NAME}.tmp"));
    let made = (|| -> io::Result<()> {
        let mut f = beneath::open(
            root,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o600,
        )?;
        // Real blocks, not a sparse file: fallocate, or zeros where it is unsupported.
        // SAFETY: fallocate on an open descriptor.
        let rc = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&f),
                0,
                0,
                SIZE as libc::off_t,
            )
        };
        if rc != 0 {
            let zeros = vec![0u8; 64 << 10];
            for _ in 0..SIZE / zeros.len() as u64 {
                f.write_all(&zeros)?;
            }
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        tracing::debug!("no space reserve in {}: {e}", root.display());
    }
}

/// Deletes the reserve (and a half-made one); true if space was freed.
pub(crate) fn release(root: &Path) -> bool {
    let _ = std::fs::remove_file(root.join(format!("{NAME}.tmp")));
    std::fs::remove_file(root.join(NAME)).is_ok()
}
