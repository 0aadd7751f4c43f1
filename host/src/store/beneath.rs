//! Opening files under the kiln root without following symlinks.
//!
//! Anyone who can write into the root could plant a symlink (say `locks/key-…` →
//! `/etc/passwd`) and make kiln create or truncate a file elsewhere. So every file the
//! store opens or creates under its root is opened relative to a handle on the root
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`: no component below the root
//! may be a symlink, and the path cannot leave the root. On kernels without `openat2`
//! (before 5.6) the path is walked one component at a time with `O_NOFOLLOW`.
//! The root itself is opened as the user named it (it may sit behind a link).

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

/// Opens `path`, which must lie under `root`, with `open(2)` `flags` (`O_CLOEXEC` and
/// `O_NOFOLLOW` are added) and `mode` for a created file. A symlink anywhere below the
/// root is refused with an error that says so.
pub(crate) fn open(root: &Path, path: &Path, flags: libc::c_int, mode: u32) -> io::Result<File> {
    let rel = path.strip_prefix(root).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not under the kiln root {}",
                path.display(),
                root.display()
            ),
        )
    })?;
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a plain path under the kiln root", path.display()),
        ));
    }
    let root_fd = open_raw(
        libc::AT_FDCWD,
        root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        0,
    )?;
    let flags = flags | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let fd = match openat2(&root_fd, rel.as_os_str().as_bytes(), flags, mode) {
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => walk(root_fd, rel, flags, mode),
        other => other,
    }
    .map_err(explain)?;
    Ok(File::from(fd))
}

/// Creates the folder `rel` under `root` with its missing parents, refusing any
/// component that is a symlink (where `create_dir_all` would create folders wherever
/// the link points).
pub(crate) fn create_dirs(root: &Path, rel: &str) -> io::Result<()> {
    let mut p = root.to_path_buf();
    for part in Path::new(rel).iter() {
        p.push(part);
        match std::fs::create_dir(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        let m = std::fs::symlink_metadata(&p)?;
        if m.file_type().is_symlink() {
            return Err(explain(io::Error::from_raw_os_error(libc::ELOOP)));
        }
        if !m.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ));
        }
    }
    Ok(())
}

/// ELOOP means a symlink was met: say so in words.
fn explain(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) || e.raw_os_error() == Some(libc::EXDEV) {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            "refusing to follow a symlink under the kiln root (remove the link, or run `kiln cache prune`)",
        )
    } else {
        e
    }
}

fn cstr(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn open_raw(dir: libc::c_int, name: &[u8], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    loop {
        // SAFETY: a valid C string and flags; the returned descriptor is owned below.
        let fd = unsafe { libc::openat(dir, c.as_ptr(), flags, mode as libc::c_uint) };
        if fd >= 0 {
            // SAFETY: fd was just returned by openat and is owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn openat2(dir: &OwnedFd, rel: &[u8], flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(rel)?;
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    // The mode must be 0 unless a file may be created.
    how.mode = if flags & (libc::O_CREAT | libc::O_TMPFILE) != 0 {
        mode as u64
    } else {
        0
    };
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    loop {
        // SAFETY: openat2 with a valid directory descriptor, C string and open_how.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd >= 0 {
            // SAFETY: a fresh descriptor owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) && e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
    }
}

/// The fallback: each directory component opened with `O_NOFOLLOW` relative to the
/// previous one, then the last with `flags`.
fn walk(root: OwnedFd, rel: &Path, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    let parts: Vec<&[u8]> = rel.iter().map(|c| c.as_bytes()).collect();
    let Some((last, dirs)) = parts.split_last() else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    };
    let mut dir = root;
    for d in dirs {
        dir = open_raw(
            dir.as_raw_fd(),
            d,
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        )?;
    }
    open_raw(dir.as_raw_fd(), last, flags, mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_below_the_root_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("locks")).unwrap();
        let outside = t.path().join("outside");
        std::os::unix::fs::symlink(&outside, root.join("locks/key-x")).unwrap();
        let e = open(
            &root,
            &root.join("locks/key-x"),
            libc::O_RDWR | libc::O_CREAT,
            0o644,
        )
        .unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!outside.exists());
        // A linked directory on the way is refused too, with openat2 and with the walk.
        std::fs::create_dir(t.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(t.path().join("elsewhere"), root.join("tmp")).unwrap();
        assert!(open(
            &root,
            &root.join("tmp/f"),
            libc::O_RDWR | libc::O_CREAT,
            0o644
        )
        .is_err());
        let fd = open_raw(
            libc::AT_FDCWD,
            root.as_os_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )
        .unwrap();
        assert!(walk(fd, Path::new("tmp/f"), libc::O_RDWR | libc::O_CREAT, 0o644).is_err());
        assert!(!t.path().join("elsewhere/f").exists());
        // Plain files are fine.
        open(
            &root,
            &root.join("locks/key-y"),
            libc::O_RDWR | libc::O_CREAT,
            0o644,
        )
        .unwrap();
        assert!(root.join("locks/key-y").is_file());
    }
}
