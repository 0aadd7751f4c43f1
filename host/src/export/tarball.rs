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
        append_entry(b, &path, &rel, &m, links, false)?;
        if m.is_dir() {
            walk(b, &path, &rel, links)?;
        }
    }
    Ok(())
}

/// Appends the entry at `path` (metadata `m`) to `b` as `rel`: mode, owner, mtime and
/// extended attributes (PAX `SCHILY.xattr.*`); a file that shares its inode with one
/// already written (`links`) becomes a hard link to it; a folder is named `rel/` with
/// `dir_slash` (as docker and containerd write layers) and its children are the
/// caller's. Sockets have no archive form and are left out.
pub(crate) fn append_entry<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    rel: &Path,
    m: &fs::Metadata,
    links: &mut HashMap<(u64, u64), PathBuf>,
    dir_slash: bool,
) -> Result<(), ExportError> {
    let io_err = |e: io::Error| ExportError::io("write tar entry", path, e);
    let ft = m.file_type();
    if ft.is_socket() {
        return Ok(());
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(m.mode() & 0o7777);
    h.set_uid(m.uid() as u64);
    h.set_gid(m.gid() as u64);
    h.set_mtime(m.mtime().max(0) as u64);
    h.set_size(0);
    let xattrs = crate::worker::xattr::list(path)
        .map_err(|e| ExportError::io("read extended attributes of", path, e))?;
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
            .map_err(io_err)?;
    }
    if ft.is_dir() {
        h.set_entry_type(tar::EntryType::Directory);
        let mut name = rel.as_os_str().to_os_string();
        if dir_slash {
            name.push("/");
        }
        b.append_data(&mut h, Path::new(&name), io::empty())
            .map_err(io_err)
    } else if ft.is_file() {
        if m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = links.get(&key) {
                h.set_entry_type(tar::EntryType::Link);
                return b.append_link(&mut h, rel, first).map_err(io_err);
            }
            links.insert(key, rel.to_path_buf());
        }
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(m.len());
        let f = File::open(path).map_err(|e| ExportError::io("open", path, e))?;
        b.append_data(&mut h, rel, f).map_err(io_err)
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(|e| ExportError::io("readlink", path, e))?;
        h.set_entry_type(tar::EntryType::Symlink);
        b.append_link(&mut h, rel, &target).map_err(io_err)
    } else {
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
        b.append_data(&mut h, rel, io::empty()).map_err(io_err)
    }
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

type Finish = Box<dyn FnOnce(OutputFile) -> Result<(), ExportError>>;

/// Where a file output's bytes go while it is written.
///
/// A regular file (or a path that does not exist yet) is written to a temporary file
/// beside it and renamed into place at the end, so a reader never sees half an output.
/// Anything else that already exists (a character device such as `/dev/null`, a FIFO,
/// a socket, `/dev/stdout` on a pipe or terminal) is opened and written as a stream:
/// renaming over it would replace the device node or FIFO itself.
pub(crate) enum OutputFile {
    /// A temporary file renamed over the destination by [`Finish`].
    Atomic(tempfile::NamedTempFile),
    /// The destination itself, written in place.
    Stream(File),
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            OutputFile::Atomic(f) => f.write(buf),
            OutputFile::Stream(f) => f.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            OutputFile::Atomic(f) => f.flush(),
            OutputFile::Stream(f) => f.flush(),
        }
    }
}

impl io::Seek for OutputFile {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        match self {
            OutputFile::Atomic(f) => f.seek(pos),
            OutputFile::Stream(f) => f.seek(pos),
        }
    }
}

/// How a destination path is written.
enum DestKind {
    /// Replace the regular file (or create the file) at this path atomically.
    Replace(PathBuf),
    /// Open the existing non-regular file and write it as a stream.
    Stream,
}

/// Decides how `path` is written. A link is followed: the file it names is replaced,
/// not the link (so `/dev/stdout` redirected to a file never replaces `/dev/stdout`).
/// Folders are refused.
fn dest_kind(path: &Path) -> Result<DestKind, ExportError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(DestKind::Replace(path.to_path_buf()))
        }
        Err(e) => return Err(ExportError::io("stat", path, e)),
    };
    if meta.is_dir() {
        return Err(ExportError::io(
            "write",
            path,
            io::Error::new(
                io::ErrorKind::IsADirectory,
                "is a folder (expected a file, a device or a FIFO)",
            ),
        ));
    }
    if !meta.is_file() {
        return Ok(DestKind::Stream);
    }
    let is_link = fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false);
    if !is_link {
        return Ok(DestKind::Replace(path.to_path_buf()));
    }
    match fs::canonicalize(path) {
        // `/dev/stdout` → `/proc/self/fd/1` → a file that may be gone or unnamed: the
        // open descriptor is the only sure way to it.
        Ok(real) if !real.starts_with("/proc") && !real.starts_with("/dev") => {
            Ok(DestKind::Replace(real))
        }
        _ => Ok(DestKind::Stream),
    }
}

/// A writer for the output file `path` and the function that completes it: for a
/// regular file, a temporary file beside it that is synced and renamed over `path`;
/// for an existing device, FIFO or socket, the destination itself, flushed at the end
/// (a write error such as ENOSPC or EPIPE fails the export).
pub(crate) fn atomic_file(path: &Path) -> Result<(OutputFile, Finish), ExportError> {
    let target = match dest_kind(path)? {
        DestKind::Stream => {
            let f = fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| ExportError::io("open", path, e))?;
            let target = path.to_path_buf();
            let finish: Finish = Box::new(move |out: OutputFile| {
                let mut out = out;
                out.flush()
                    .map_err(|e| ExportError::io("write", &target, e))
            });
            return Ok((OutputFile::Stream(f), finish));
        }
        DestKind::Replace(target) => target,
    };
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| ExportError::io("create folder", &dir, e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".kiln-export-")
        .tempfile_in(&dir)
        .map_err(|e| ExportError::io("create", &target, e))?;
    let finish: Finish = Box::new(move |out: OutputFile| {
        let tmp = match out {
            OutputFile::Atomic(t) => t,
            OutputFile::Stream(mut f) => {
                return f.flush().map_err(|e| ExportError::io("write", &target, e))
            }
        };
        tmp.as_file()
            .sync_all()
            .map_err(|e| ExportError::io("sync", &target, e))?;
        // Outputs are ordinary files (a temp file starts as 0600).
        set_default_mode(tmp.path()).map_err(|e| ExportError::io("chmod", &target, e))?;
        tmp.persist(&target)
            .map_err(|e| ExportError::io("rename into place", &target, e.error))?;
        Ok(())
    });
    Ok((OutputFile::Atomic(tmp), finish))
}

/// Writes `bytes` to the output file `path` the way exports are written (atomically for
/// a regular file, as a stream for a device or FIFO). `--metadata-file` uses it.
pub fn write_output_file(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let (mut out, finish) = atomic_file(path)?;
    out.write_all(bytes)
        .map_err(|e| ExportError::io("write", path, e))?;
    finish(out)
}

fn set_default_mode(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}
