//! Deterministic tars of a tree: `type=tar`, and the layer of `type=oci`.
//!
//! Entries come in sorted order (by name bytes, parents before children) with the
//! tree's own modes, owners and modification times and nothing else (no user or group
//! names, no access times), so one tree always gives the same bytes. Hard links inside
//! the tree become tar hard links; long names use GNU long-name records.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ExportError, TarDest};

/// A writer that hashes (sha256) and counts what passes through.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wraps `inner`.
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` of the bytes written and their count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the contents of `root` as a tar to `out` and returns `out` (the archive is
/// finished: the two zero blocks are written).
pub fn write_tree_tar<W: Write>(root: &Path, out: W) -> Result<W, ExportError> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    let mut links = HashMap::new();
    walk(&mut b, root, Path::new(""), &mut links)?;
    b.into_inner()
        .map_err(|e| ExportError::io("write tar", root, e))
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ExportError> {
    let rd = fs::read_dir(dir).map_err(|e| ExportError::io("read folder", dir, e))?;
    let mut entries = rd
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| ExportError::io("read folder", dir, e))?;
    entries.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in entries {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let m = fs::symlink_metadata(&path).map_err(|e| ExportError::io("stat", &path, e))?;
        let io_err = |e: io::Error| ExportError::io("write tar entry", &path, e);
        let mut h = tar::Header::new_gnu();
        h.set_mode(m.mode() & 0o7777);
        h.set_uid(m.uid() as u64);
        h.set_gid(m.gid() as u64);
        h.set_mtime(m.mtime().max(0) as u64);
        h.set_size(0);
        let xattrs = crate::worker::xattr::list(&path)
            .map_err(|e| ExportError::io("read extended attributes of", &path, e))?;
        if !xattrs.is_empty() {
            let records: Vec<(String, &[u8])> = xattrs
                .iter()
                .map(|(n, v)| {
                    (
                        format!("SCHILY.xattr.{}", n.to_string_lossy()),
                        v.as_slice(),
                    )
                })
                .collect();
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .map_err(|e| ExportError::io("write tar entry", &path, e))?;
        }
        let ft = m.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, &rel, io::empty()).map_err(io_err)?;
            walk(b, &path, &rel, links)?;
        } else if ft.is_file() {
            if m.nlink() > 1 {
                let key = (m.dev(), m.ino());
                if let Some(first) = links.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    b.append_link(&mut h, &rel, first).map_err(io_err)?;
                    continue;
                }
                links.insert(key, rel.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(m.len());
            let f = File::open(&path).map_err(|e| ExportError::io("open", &path, e))?;
            b.append_data(&mut h, &rel, f).map_err(io_err)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(|e| ExportError::io("readlink", &path, e))?;
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, &rel, &target).map_err(io_err)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            if !ft.is_fifo() {
                let rdev = m.rdev() as libc::dev_t;
                h.set_device_major(libc::major(rdev)).map_err(io_err)?;
                h.set_device_minor(libc::minor(rdev)).map_err(io_err)?;
            }
            b.append_data(&mut h, &rel, io::empty()).map_err(io_err)?;
        }
        // Sockets have no archive form; they are left out.
    }
    Ok(())
}

/// `type=tar`: writes the tree's tar to `dest` (a file replaced atomically, or
/// standard output) and returns the digest of the stream.
pub fn export_tar(tree: &Path, dest: &TarDest) -> Result<String, ExportError> {
    match dest {
        TarDest::Stdout => {
            let out = io::BufWriter::with_capacity(256 * 1024, io::stdout().lock());
            let w = write_tree_tar(tree, HashingWriter::new(out))?;
            let (mut out, digest, _) = w.finish();
            out.flush()
                .map_err(|e| ExportError::io("write", "standard output", e))?;
            Ok(digest)
        }
        TarDest::File(path) => {
            let (tmp, finish) = atomic_file(path)?;
            let out = io::BufWriter::with_capacity(256 * 1024, tmp);
            let w = write_tree_tar(tree, HashingWriter::new(out))?;
            let (out, digest, _) = w.finish();
            let file = out
                .into_inner()
                .map_err(|e| ExportError::io("write", path, e.into_error()))?;
            finish(file)?;
            Ok(digest)
        }
    }
}

type Finish = Box<dyn FnOnce(tempfile::NamedTempFile) -> Result<(), ExportError>>;

/// A temporary file beside `path` and the function that syncs it and renames it over
/// `path` (so a reader never sees a half-written output).
pub(crate) fn atomic_file(path: &Path) -> Result<(tempfile::NamedTempFile, Finish), ExportError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| ExportError::io("create folder", &dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-export-")
        .tempfile_in(&dir)
        .map_err(|e| ExportError::io("create", path, e))?;
    let target = path.to_path_buf();
    let finish: Finish = Box::new(move |tmp: tempfile::NamedTempFile| {
        tmp.as_file()
            .sync_all()
            .map_err(|e| ExportError::io("sync", &target, e))?;
        // Outputs are ordinary files (a temp file starts as 0600).
        set_default_mode(tmp.path()).map_err(|e| ExportError::io("chmod", &target, e))?;
        tmp.persist(&target)
            .map_err(|e| ExportError::io("rename into place", &target, e.error))?;
        Ok(())
    });
    Ok((tmp, finish))
}

fn set_default_mode(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}
