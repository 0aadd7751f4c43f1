//! Mounting and unmounting: the overlay root file system and the secrets tmpfs.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::ExecError;

fn cstr(p: &Path) -> Result<CString, ExecError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| ExecError::Setup(format!("{}: path has a NUL byte", p.display())))
}

/// Escapes a path for an overlay option (`,`, `:` and `\` are separators there).
fn escape_option(p: &Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> std::io::Result<()> {
    let source = CString::new(source).expect("no NUL");
    let target = CString::new(target.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let fstype = CString::new(fstype).expect("no NUL");
    let data = CString::new(data).map_err(std::io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mounts an overlay at `target`: `lower` read-only below, changes into `upper`.
pub fn mount_overlay(
    lower: &Path,
    upper: &Path,
    work: &Path,
    target: &Path,
) -> std::io::Result<()> {
    // No redirects and no metadata-only copy-ups: the upper directory must hold whole
    // entries for the run's changes to be read from it.
    let data = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        escape_option(lower),
        escape_option(upper),
        escape_option(work)
    );
    mount("overlay", target, "overlay", &data)
}

/// Mounts a small private tmpfs at `target` (for secrets: never written to disk).
pub fn mount_tmpfs(target: &Path) -> std::io::Result<()> {
    mount("tmpfs", target, "tmpfs", "mode=0700,size=16m")
}

/// Detaches the mount at `target`; not mounted is fine.
pub fn unmount(target: &Path) -> Result<(), ExecError> {
    let c = cstr(target)?;
    // SAFETY: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EINVAL) | Some(libc::ENOENT) => Ok(()),
        _ => Err(ExecError::setup(
            format!("unmount {}", target.display()),
            err,
        )),
    }
}

/// Mount points at or below `dir`, deepest first, read from `/proc/self/mountinfo`.
pub fn mounts_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<std::path::PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(std::path::PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_mountinfo_escapes() {
        assert_eq!(escape_option(Path::new("/a,b:c")), "/a\\,b\\:c");
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
    }
}
