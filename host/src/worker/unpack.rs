//! `copy … unpack = true`: extracting a tar archive (plain, gzip, zstd or xz, detected by
//! content like BuildKit's ADD) into a directory, safely.
//!
//! Every entry's name is cleaned and must stay inside the destination; its parent is
//! resolved through a [`Root`] at the destination, so a symlink planted by an earlier
//! entry (`link -> /etc`, then `link/passwd`) re-roots inside the destination instead of
//! reaching the host. Hard links must name an earlier entry inside the destination.
//! Files are created with `O_NOFOLLOW | O_EXCL` after whatever was there is removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::error::{IoContext, Result, WorkerError};
use super::root::Root;
use super::tree::{mknod, remove_existing, set_mtime_nofollow};

/// How an archive's bytes are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// Zstandard.
    Zstd,
    /// xz.
    Xz,
}

const GZIP: &[u8] = &[0x1f, 0x8b];
const ZSTD: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];

fn decoder<'a>(c: Compression, r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let r = BufReader::with_capacity(256 * 1024, r);
    Ok(match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(r)),
    })
}

/// Whether `block` is a tar header with a valid checksum.
fn is_tar_header(block: &[u8]) -> bool {
    if block.len() < 512 || block.iter().all(|b| *b == 0) {
        return false;
    }
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|b| **b != 0 && **b != b' ')
        .map(|b| *b as char)
        .collect();
    let stored = match u32::from_str_radix(text.trim(), 8) {
        Ok(v) => v,
        Err(_) => return false,
    };
    let sum: u32 = block[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                b' ' as u32
            } else {
                *b as u32
            }
        })
        .sum();
    sum == stored
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the stream).
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Detects a tar archive by content: returns its compression, or `None` when the file
/// is not an archive (and is then copied as it is).
pub fn detect(path: &Path) -> io::Result<Option<Compression>> {
    let mut f = File::open(path)?;
    let mut magic = [0u8; 6];
    let n = read_full(&mut f, &mut magic)?;
    let magic = &magic[..n];
    let c = if magic.starts_with(GZIP) {
        Compression::Gzip
    } else if magic.starts_with(ZSTD) {
        Compression::Zstd
    } else if magic.starts_with(XZ) {
        Compression::Xz
    } else {
        Compression::None
    };
    f.seek(SeekFrom::Start(0))?;
    let mut r = decoder(c, f)?;
    let mut block = vec![0u8; 512];
    // A compressed stream that is not a tar is copied as it is, like BuildKit does.
    let n = match read_full(&mut r, &mut block) {
        Ok(n) => n,
        Err(_) if c != Compression::None => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(is_tar_header(&block[..n]).then_some(c))
}

/// Cleans an archive entry name to a relative path; `None` if it climbs out.
fn clean_entry(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

/// Creates the missing directories of `path` (a host path below `base` whose existing
/// components contain no symlink) with mode 0755 and `owner`.
pub(crate) fn mkdir_all(base: &Path, path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    let rel = path.strip_prefix(base).unwrap_or(Path::new(""));
    let mut cur = base.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(WorkerError::io(
                    "mkdir",
                    &cur,
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(WorkerError::io("stat", &cur, e)),
        }
        fs::create_dir(&cur).ctx("mkdir", &cur)?;
        fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).ctx("chmod", &cur)?;
        if let Some((u, g)) = owner {
            std::os::unix::fs::lchown(&cur, Some(u), Some(g)).ctx("chown", &cur)?;
        }
    }
    Ok(())
}

/// Extracts the archive at `archive` (host path; `shown` is its path for messages) into
/// the existing directory `dest`. `owner` overrides the owners the archive records.
pub fn unpack(
    archive: &Path,
    shown: &str,
    compression: Compression,
    dest: &Path,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let bad = |message: String| WorkerError::Archive {
        archive: shown.to_string(),
        message,
    };
    let file = File::open(archive).ctx("open", shown)?;
    let reader = decoder(compression, file).ctx("open", shown)?;
    let mut ar = tar::Archive::new(reader);
    let root = Root::new(dest);
    // SAFETY: plain getter.
    let is_root = unsafe { libc::geteuid() } == 0;
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    for entry in ar.entries().map_err(|e| bad(e.to_string()))? {
        let mut entry = entry.map_err(|e| bad(format!("reading entry: {e}")))?;
        let raw = entry
            .path()
            .map_err(|e| bad(format!("entry name: {e}")))?
            .into_owned();
        let rel = clean_entry(&raw)
            .ok_or_else(|| bad(format!("entry {} escapes the destination", raw.display())))?;
        let name = match rel.file_name() {
            Some(n) => n.to_owned(),
            None => continue, // the archive's root ("./")
        };
        let xattrs: Vec<(std::ffi::CString, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(exts)) => exts
                .filter_map(|x| x.ok())
                .filter_map(|x| {
                    let key = x.key().ok()?.strip_prefix("SCHILY.xattr.")?;
                    Some((std::ffi::CString::new(key).ok()?, x.value_bytes().to_vec()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let mtime = header.mtime().unwrap_or(0) as i64;
        let (uid, gid) = match owner {
            Some(o) => o,
            None => (
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            ),
        };
        let parent = root.resolve(rel.parent().unwrap_or(Path::new("")), true)?;
        mkdir_all(dest, &parent, owner)?;
        let target = parent.join(&name);
        let shown_entry = || rel.display().to_string();
        match kind {
            tar::EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    _ => {
                        remove_existing(&target)?;
                        fs::create_dir(&target).ctx("mkdir", shown_entry())?;
                    }
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .ctx("chmod", shown_entry())?;
                chown(&target, uid, gid, is_root, owner.is_some())?;
                dir_times.push((target.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                remove_existing(&target)?;
                let mut out = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .ctx("create", shown_entry())?;
                io::copy(&mut entry, &mut out)
                    .map_err(|e| bad(format!("{}: {e}", shown_entry())))?;
                drop(out);
                chown(&target, uid, gid, is_root, owner.is_some())?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .ctx("chmod", shown_entry())?;
                set_mtime_nofollow(&target, (mtime, 0), (mtime, 0))
                    .ctx("set times of", shown_entry())?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(|e| bad(format!("{}: {e}", shown_entry())))?
                    .ok_or_else(|| bad(format!("symlink {} has no target", shown_entry())))?
                    .into_owned();
                remove_existing(&target)?;
                std::os::unix::fs::symlink(&link, &target).ctx("symlink", shown_entry())?;
                chown(&target, uid, gid, is_root, owner.is_some())?;
                set_mtime_nofollow(&target, (mtime, 0), (mtime, 0))
                    .ctx("set times of", shown_entry())?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| bad(format!("{}: {e}", shown_entry())))?
                    .ok_or_else(|| bad(format!("hard link {} has no target", shown_entry())))?
                    .into_owned();
                let link_rel = clean_entry(&link).ok_or_else(|| {
                    bad(format!(
                        "hard link {} -> {} escapes the destination",
                        shown_entry(),
                        link.display()
                    ))
                })?;
                let src = root.resolve(&link_rel, false)?;
                match fs::symlink_metadata(&src) {
                    Ok(m) if !m.is_dir() => {}
                    _ => {
                        return Err(bad(format!(
                            "hard link {} -> {}: target is not an earlier file of the archive",
                            shown_entry(),
                            link.display()
                        )))
                    }
                }
                remove_existing(&target)?;
                fs::hard_link(&src, &target).ctx("hard link", shown_entry())?;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let ty = match kind {
                    tar::EntryType::Char => libc::S_IFCHR,
                    tar::EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                remove_existing(&target)?;
                mknod(&target, ty | mode, libc::makedev(major, minor))?;
                chown(&target, uid, gid, is_root, owner.is_some())?;
                set_mtime_nofollow(&target, (mtime, 0), (mtime, 0))
                    .ctx("set times of", shown_entry())?;
            }
            // PAX and GNU long-name records are consumed by the tar reader; other
            // types (sparse, volume labels) carry nothing to extract.
            _ => tracing::debug!(entry = %shown_entry(), ?kind, "skipping tar entry"),
        }
        for (name, value) in &xattrs {
            if fs::symlink_metadata(&target).is_ok() {
                super::xattr::set(&target, name, value)
                    .ctx("set extended attribute on", shown_entry())?;
            }
        }
    }
    finish_unpack(dir_times)
}

fn finish_unpack(dir_times: Vec<(PathBuf, i64)>) -> Result<()> {
    for (dir, mtime) in dir_times.into_iter().rev() {
        set_mtime_nofollow(&dir, (mtime, 0), (mtime, 0)).ctx("set times of", &dir)?;
    }
    Ok(())
}

fn chown(path: &Path, uid: u32, gid: u32, is_root: bool, explicit: bool) -> Result<()> {
    match std::os::unix::fs::lchown(path, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if !is_root && !explicit && e.raw_os_error() == Some(libc::EPERM) => Ok(()),
        Err(e) => Err(WorkerError::io("chown", path, e)),
    }
}
