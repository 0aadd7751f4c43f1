//! PLACEHOLDER layer unpacker, replaced by the real one (branch `unpack`) at merge.
//! Same API; naive: whiteouts by lexical paths, no hardening beyond refusing `..` and
//! absolute names.

use std::fmt;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest as _, Sha256};

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression of an OCI or Docker layer media type.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Some(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Some(Self::Zstd),
            _ => None,
        }
    }
}

/// Options of [`apply_layer`].
#[derive(Clone, Debug, Default)]
pub struct UnpackOptions {
    /// As root: chown entries and create device nodes.
    pub same_owner: bool,
}

/// What one applied layer held.
#[derive(Clone, Debug)]
pub struct LayerStats {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Entries in the tar.
    pub entries: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_bytes: u64,
}

/// Why a layer could not be applied: `<entry path>: <reason>`.
#[derive(Debug)]
pub struct UnpackError {
    entry: String,
    reason: String,
}

impl fmt::Display for UnpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.entry, self.reason)
    }
}

impl std::error::Error for UnpackError {}

fn err(entry: impl Into<String>, reason: impl fmt::Display) -> UnpackError {
    UnpackError {
        entry: entry.into(),
        reason: reason.to_string(),
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Applies one layer tar stream on top of the tree at `root`; reads `reader` to EOF.
pub fn apply_layer<R: Read>(
    root: &Path,
    reader: R,
    compression: Compression,
    opts: &UnpackOptions,
) -> Result<LayerStats, UnpackError> {
    let mut reader = reader;
    let result = {
        let decoded: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut reader),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&mut reader)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::new(&mut reader).map_err(|e| err("<layer>", e))?,
            ),
        };
        let mut hashing = HashingReader {
            inner: decoded,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let entries = apply_tar(root, &mut hashing, opts)?;
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| err("<layer>", e))?;
        LayerStats {
            diff_id: format!("sha256:{}", hex::encode(hashing.hasher.finalize())),
            entries,
            uncompressed_bytes: hashing.bytes,
        }
    };
    io::copy(&mut reader, &mut io::sink()).map_err(|e| err("<layer>", e))?;
    Ok(result)
}

fn clean(path: &Path, name: &str) -> Result<PathBuf, UnpackError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            _ => return Err(err(name, "path leaves the root")),
        }
    }
    Ok(out)
}

fn remove_all(p: &Path) {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = std::fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn apply_tar<R: Read>(root: &Path, r: R, opts: &UnpackOptions) -> Result<u64, UnpackError> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_preserve_ownerships(opts.same_owner);
    ar.set_overwrite(true);
    let mut n = 0;
    for entry in ar.entries().map_err(|e| err("<layer>", e))? {
        let mut entry = entry.map_err(|e| err("<layer>", e))?;
        n += 1;
        let raw = entry.path().map_err(|e| err("<entry>", e))?.into_owned();
        let name = raw.display().to_string();
        let rel = clean(&raw, &name)?;
        let file = rel
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = root.join(rel.parent().unwrap_or(Path::new("")));
        if file == ".wh..wh..opq" {
            if let Ok(rd) = std::fs::read_dir(&parent) {
                for e in rd.flatten() {
                    remove_all(&e.path());
                }
            }
            continue;
        }
        if let Some(target) = file.strip_prefix(".wh.") {
            remove_all(&parent.join(target));
            continue;
        }
        let dest = root.join(&rel);
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if !(m.is_dir() && entry.header().entry_type().is_dir()) {
                remove_all(&dest);
            }
        }
        entry.unpack_in(root).map_err(|e| err(&name, e))?;
    }
    Ok(n)
}
