//! Extended attributes (`security.capability`, `user.*`, …), read and written without
//! following symlinks. Filesystems or callers that cannot hold one are tolerated, as
//! BuildKit does: such an attribute is skipped.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTSUP) | Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::ENODATA)
    )
}

/// The attributes of `path` as (name, value) pairs; empty where none or unsupported.
pub fn list(path: &Path) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let c = cpath(path)?;
    let mut names = vec![0u8; 1024];
    let len = loop {
        // SAFETY: `c` is NUL-terminated; `names` is a writable buffer of the given size.
        let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => names.resize(names.len() * 4, 0),
            _ if unsupported(&e) => return Ok(Vec::new()),
            _ => return Err(e),
        }
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = CString::new(name).expect("no interior NUL");
        if let Some(v) = get(&c, &name)? {
            out.push((name, v));
        }
    }
    Ok(out)
}

fn get(path: &CStr, name: &CStr) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both strings are NUL-terminated; `buf` is writable for its length.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n >= 0 {
            buf.truncate(n as usize);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ERANGE) => buf.resize(buf.len() * 4, 0),
            _ if unsupported(&e) => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Sets one attribute; an attribute the filesystem or the caller cannot set is skipped.
pub fn set(path: &Path, name: &CStr, value: &[u8]) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: both strings are NUL-terminated; `value` is readable for its length.
    let rc = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if unsupported(&e) {
        tracing::debug!(path = %path.display(), name = ?name, "extended attribute not kept: {e}");
        return Ok(());
    }
    Err(e)
}

/// Copies every attribute of `src` to `dst`.
pub fn copy(src: &Path, dst: &Path) -> io::Result<()> {
    for (name, value) in list(src)? {
        set(dst, &name, &value)?;
    }
    Ok(())
}
