//! Applying image layers (tar streams, possibly gzip- or zstd-compressed) to a rootfs tree.
//!
//! [`apply_layer`] reads a layer in one streaming pass: decompress, hash the uncompressed
//! tar (its sha256 is the layer's diff ID), and write each entry into the tree. After the
//! tar's end-of-archive it reads both the decompressed stream and the caller's reader to
//! EOF, so a hashing tee around the reader sees every byte of the blob.
//!
//! # What is applied
//! - Regular files, directories, symlinks, hard links (to entries inside the tree), FIFOs,
//!   and with [`UnpackOptions::same_owner`] also ownership and character/block devices.
//! - Modes (setuid, setgid and sticky included), modification times (directories last,
//!   after their children are written), and extended attributes from PAX
//!   `SCHILY.xattr.<name>` records (`security.capability`, `user.*`, …).
//! - OCI whiteouts: `.wh.<name>` removes `<name>` of lower layers; `.wh..wh..opq` makes its
//!   directory opaque (every lower-layer child is removed; entries of the same layer stay,
//!   whether they come before or after the marker in the stream). Neither marker is left in
//!   the tree; other `.wh..wh.*` names (AUFS metadata) are ignored.
//! - An entry replaces whatever is at its path, except that a directory over a directory
//!   merges (as Docker and containerd do). The root entry (`./`) is left alone.
//!
//! # Confinement
//! Nothing outside `root` is ever created, changed or removed:
//! - Entry names and hard link targets are cleaned lexically (`.` and empty components
//!   dropped, `a/../b` is `b`, a leading `/` taken relative to the root as containerd
//!   does); a name that climbs out of the root with `..` is refused.
//! - Parent directories are resolved by the kernel inside the root (`openat2` with
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`): a symlink met on the way, whether this layer
//!   or a lower one planted it, absolute or relative, is followed as if `root` were `/`.
//!   Symlink loops fail with `ELOOP` and name the entry. Missing parents are made (0755);
//!   when a parent is a dangling symlink (`lib -> usr/lib` before `usr/lib` exists), its
//!   target is made, inside the root, as containerd does.
//! - The entry itself is created with `*at()` calls on the parent's fd that never follow
//!   it: an existing symlink at that name is replaced, not written through.
//! - Symlink *targets* are stored data and are written as the layer has them (absolute
//!   targets included): they are only ever resolved inside the root by this module, and by
//!   a container whose root is this tree.
//! - Hard links are made with `linkat` without `AT_SYMLINK_FOLLOW` from a target resolved
//!   inside the root, so they can only join files of the tree.
//! - Extension headers (long names, PAX records) are bounded to 1 MiB and names to 4096
//!   bytes, so a hostile layer cannot make the unpacker buffer without limit.
//!
//! A refused or failed entry ends the layer with an [`UnpackError`] naming it; the tree is
//! then partly applied, so callers unpack into a scratch directory they discard on error.

mod stream;
mod tar;
mod tree;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ffi::CStr;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc;

use rustix::fs::{
    chmodat, chownat, fchmod, fchown, fsetxattr, fstat, futimens, linkat, lsetxattr, makedev,
    mkdirat, mknodat, openat, symlinkat, utimensat, AtFlags, FileType, Mode, OFlags, Timestamps,
    XattrFlags,
};
use rustix::fs::{Gid, Uid};
use rustix::io::Errno;
use sha2::{Digest, Sha256};

use self::stream::ChunkReader;
use self::tar::{DataError, Header, Kind, TarError, TarReader, Time};
use self::tree::{ioerr, Tree, DIR_FLAGS};

/// Size of the read buffers (compressed input and uncompressed tar): large enough that a
/// file's data reaches `write(2)` in big pieces.
const BUF_SIZE: usize = 256 * 1024;

/// The longest entry name accepted (Linux `PATH_MAX`).
const MAX_NAME: usize = 4096;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (one or more members).
    Gzip,
    /// zstd (one or more frames).
    Zstd,
}

impl Compression {
    /// The compression of a layer media type: the OCI layer types (`tar`, `tar+gzip`,
    /// `tar+zstd` and their `nondistributable` variants) and Docker's
    /// (`application/vnd.docker.image.rootfs.diff.tar[.gzip|.zstd]`, `…foreign.diff.tar.gzip`).
    /// Parameters after `;` are ignored. `None` for anything else (e.g. encrypted layers).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let mt = media_type.split(';').next().unwrap_or("").trim();
        match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// How a layer is applied.
#[derive(Debug, Clone, Default)]
pub struct UnpackOptions {
    /// Apply ownership and create character/block devices (needs root). When false, both
    /// are skipped with one log line per layer.
    pub same_owner: bool,
}

impl UnpackOptions {
    /// `same_owner` when running as root (effective uid 0), as `tar` decides by default.
    pub fn for_current_user() -> UnpackOptions {
        UnpackOptions {
            same_owner: rustix::process::geteuid().is_root(),
        }
    }
}

/// What applying one layer found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerStats {
    /// `sha256:<hex>` of the uncompressed tar stream (the layer's diff ID).
    pub diff_id: String,
    /// Tar entries read (whiteouts included; extension headers not).
    pub entries: u64,
    /// Length of the uncompressed tar stream.
    pub uncompressed_bytes: u64,
}

/// A layer that could not be applied: which entry, and why. The caller adds the image and
/// the layer digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackError {
    kind: UnpackErrorKind,
    entry: String,
    reason: String,
}

/// What kind of failure an [`UnpackError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnpackErrorKind {
    /// The layer tried something refused: a name or link leaving the root, a symlink loop,
    /// a name or extension header past the limits, an invalid whiteout.
    Refused,
    /// The stream could not be read or is not a valid (compressed) tar: corrupt, truncated,
    /// an unsupported entry type, or the reader failed.
    Stream,
    /// Writing the tree failed (disk full, permissions, …).
    Filesystem,
}

impl UnpackError {
    fn new(kind: UnpackErrorKind, entry: impl Into<String>, reason: impl Into<String>) -> Self {
        UnpackError {
            kind,
            entry: entry.into(),
            reason: reason.into(),
        }
    }

    /// Which kind of failure this is.
    pub fn kind(&self) -> UnpackErrorKind {
        self.kind
    }

    /// The entry (as named in the layer, control characters escaped), or a description of
    /// where in the stream the error happened.
    pub fn entry(&self) -> &str {
        &self.entry
    }

    /// Why it failed.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl std::fmt::Display for UnpackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.entry, self.reason)
    }
}

impl std::error::Error for UnpackError {}

/// Applies one layer tar stream (compressed as `compression`) on top of the tree at `root`,
/// confined to `root`; reads `reader` to EOF (so a hashing tee around it sees every byte).
pub fn apply_layer<R: Read>(
    root: &Path,
    reader: R,
    compression: Compression,
    opts: &UnpackOptions,
) -> Result<LayerStats, UnpackError> {
    let tree = Tree::open(root).map_err(|e| {
        UnpackError::new(
            UnpackErrorKind::Filesystem,
            root.display().to_string(),
            format!("opening the unpack directory: {e}"),
        )
    })?;
    let (tx, rx) = mpsc::sync_channel::<stream::Chunk>(stream::IN_FLIGHT);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    let mut digest = stream::Digested {
        hasher: Sha256::new(),
        bytes: 0,
    };
    let (pumped, applied) = std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("kiln-unpack".into())
            .spawn_scoped(scope, move || {
                let mut applier = Applier::new(tree, opts);
                applier.apply_tar(ChunkReader::new(rx, recycle_tx))
            });
        let worker = match worker {
            Ok(w) => w,
            Err(e) => {
                let err = UnpackError::new(
                    UnpackErrorKind::Filesystem,
                    "layer stream",
                    format!("starting the unpack thread: {e}"),
                );
                return (Ok(()), Err(err));
            }
        };
        let pumped = decompress_into(reader, compression, &tx, &recycle_rx, &mut digest);
        drop(tx); // end of stream for the worker
        let applied = match worker.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (pumped, applied)
    });
    // The worker's error names the entry; it comes first.
    let entries = applied?;
    match pumped {
        Ok(()) => {}
        Err(stream::PumpError::Read(e)) => {
            return Err(UnpackError::new(
                UnpackErrorKind::Stream,
                "layer stream",
                format!("reading after the end of the tar: {e}"),
            ))
        }
        Err(stream::PumpError::WorkerGone) => {
            return Err(UnpackError::new(
                UnpackErrorKind::Filesystem,
                "layer stream",
                "the unpack thread stopped early",
            ))
        }
    }
    Ok(LayerStats {
        diff_id: format!("sha256:{}", hex::encode(digest.hasher.finalize())),
        entries,
        uncompressed_bytes: digest.bytes,
    })
}

/// The producer half: decompresses `reader` into the channel, hashing as it goes, then
/// reads the compressed reader to its EOF.
fn decompress_into<R: Read>(
    reader: R,
    compression: Compression,
    tx: &mpsc::SyncSender<stream::Chunk>,
    recycled: &mpsc::Receiver<Vec<u8>>,
    digest: &mut stream::Digested,
) -> Result<(), stream::PumpError> {
    use stream::PumpError::Read as ReadErr;
    match compression {
        Compression::None => {
            let mut reader = reader;
            stream::pump(&mut reader, tx, recycled, digest)
        }
        Compression::Gzip => {
            let mut dec =
                flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(BUF_SIZE, reader));
            stream::pump(&mut dec, tx, recycled, digest)?;
            io::copy(&mut dec.into_inner(), &mut io::sink()).map_err(ReadErr)?;
            Ok(())
        }
        Compression::Zstd => {
            let dec = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                BUF_SIZE, reader,
            ));
            let mut dec = match dec {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::new(e.kind(), format!("zstd: {e}"))));
                    return Err(ReadErr(e));
                }
            };
            stream::pump(&mut dec, tx, recycled, digest)?;
            io::copy(&mut dec.finish(), &mut io::sink()).map_err(ReadErr)?;
            Ok(())
        }
    }
}

/// Metadata of a directory applied after the whole layer is written.
struct DirMeta {
    mode: u32,
    /// `None` for a lower-layer directory only made writable for a while.
    mtime: Option<Time>,
    /// The mode still has to be set (it was widened to let a non-root user write children).
    mode_pending: bool,
}

/// The state of one layer application.
struct Applier<'o> {
    tree: Tree,
    opts: &'o UnpackOptions,
    /// Running as root: directory modes can be set at once (root writes into any dir).
    is_root: bool,
    /// Cleaned path of the current entry (reused buffer).
    path: Vec<u8>,
    /// Cleaned hard link target (reused buffer).
    link: Vec<u8>,
    /// Hashes of the paths this layer wrote (and their ancestors): what an opaque marker
    /// or a whiteout must keep.
    layer: HashSet<u64>,
    hasher: RandomState,
    dirs: HashMap<Vec<u8>, DirMeta>,
    /// The directory [`Applier::ensure_writable`] looked at last.
    writable_checked: Option<Vec<u8>>,
    skipped_owners: u64,
    skipped_devices: u64,
    skipped_xattrs: u64,
    first_xattr_skip: Option<String>,
}

impl<'o> Applier<'o> {
    fn new(tree: Tree, opts: &'o UnpackOptions) -> Self {
        Applier {
            tree,
            opts,
            is_root: rustix::process::geteuid().is_root(),
            path: Vec::with_capacity(256),
            link: Vec::with_capacity(256),
            layer: HashSet::new(),
            hasher: RandomState::new(),
            dirs: HashMap::new(),
            writable_checked: None,
            skipped_owners: 0,
            skipped_devices: 0,
            skipped_xattrs: 0,
            first_xattr_skip: None,
        }
    }

    /// Reads the uncompressed tar stream to its end and applies every entry; the number of
    /// entries read.
    fn apply_tar(&mut self, src: ChunkReader) -> Result<u64, UnpackError> {
        let mut entries: u64 = 0;
        let mut tar = TarReader::new(src);
        let mut h = Header::default();
        loop {
            match tar.next(&mut h) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let at = if entries == 0 {
                        "layer stream (first tar header)".to_string()
                    } else {
                        format!("tar header after {}", display_path(&h.path))
                    };
                    let fail = tar_fail(e);
                    return Err(UnpackError::new(fail.kind, at, fail.reason));
                }
            }
            entries += 1;
            self.entry(&h, &mut tar)
                .map_err(|f| UnpackError::new(f.kind, display_path(&h.path), f.reason))?;
        }
        // After the end-of-archive: the rest of the stream (padding to a record, trailing
        // zero blocks) is read too; the producer hashes it into the diff ID.
        tar.get_mut().drain().map_err(|e| {
            UnpackError::new(
                UnpackErrorKind::Stream,
                "layer stream",
                format!("reading after the end of the tar: {e}"),
            )
        })?;
        self.finish_dirs()?;
        self.log_skips();
        Ok(entries)
    }

    /// Applies one entry; the error is the reason (the caller names the entry).
    fn entry<R: io::BufRead>(&mut self, h: &Header, tar: &mut TarReader<R>) -> Result<(), Fail> {
        clean_path(&h.path, &mut self.path).map_err(refused)?;
        if self.path.is_empty() {
            return Ok(()); // the root itself
        }
        let path = std::mem::take(&mut self.path);
        let result = self.entry_at(h, tar, &path);
        self.path = path;
        result
    }

    fn entry_at<R: io::BufRead>(
        &mut self,
        h: &Header,
        tar: &mut TarReader<R>,
        path: &[u8],
    ) -> Result<(), Fail> {
        let (parent, base) = split_path(path);

        // Whiteouts.
        if base == b".wh..wh..opq" {
            self.mark(parent);
            return self.opaque(parent);
        }
        if base.starts_with(b".wh..wh.") {
            return Ok(()); // AUFS metadata (hard link directories etc.): not part of the rootfs
        }
        if let Some(name) = base.strip_prefix(b".wh.") {
            if name.is_empty() || name == b"." || name == b".." {
                return Err(refused("invalid whiteout name"));
            }
            self.mark(parent);
            return self.whiteout(parent, name);
        }

        let dir = self
            .tree
            .dir(parent, true)
            .map_err(|e| resolve_fail("resolving its parent directory", e))?
            .ok_or_else(|| "parent directory missing".to_string())?;
        self.ensure_writable(parent, dir.as_fd())?;
        self.mark(path);

        match h.kind {
            Kind::Dir => {
                let fd = self.make_dir(dir.as_fd(), base, h)?;
                let meta = DirMeta {
                    mode: h.mode,
                    mtime: Some(h.mtime),
                    mode_pending: !self.is_root,
                };
                self.dirs.insert(path.to_vec(), meta);
                // The next entries are most likely this directory's children.
                self.tree.keep(path, fd);
                return Ok(());
            }
            Kind::File => self.make_file(dir.as_fd(), base, h, tar)?,
            Kind::Symlink => {
                if h.link.is_empty() || h.link.contains(&0) {
                    return Err(refused("symlink with an empty target or a NUL byte in it"));
                }
                self.create(dir.as_fd(), base, |d| symlinkat(h.link.as_slice(), d, base))
                    .map_err(|e| format!("creating symlink: {e}"))?;
                self.meta_at(dir.as_fd(), base, h, false)?;
            }
            Kind::HardLink => self.make_hardlink(dir.as_fd(), base, path, h)?,
            Kind::Char | Kind::Block => {
                if !self.opts.same_owner {
                    self.skipped_devices += 1;
                } else {
                    let ft = if h.kind == Kind::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    let dev = makedev(h.dev_major, h.dev_minor);
                    let made = self.create(dir.as_fd(), base, |d| {
                        mknodat(d, base, ft, Mode::from_raw_mode(0o600), dev)
                    });
                    match made {
                        Ok(()) => self.meta_at(dir.as_fd(), base, h, true)?,
                        // Root without CAP_MKNOD (a user namespace): skipped, as containerd does.
                        Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
                            self.skipped_devices += 1
                        }
                        Err(e) => return Err(format!("creating device node: {e}").into()),
                    }
                }
            }
            Kind::Fifo => {
                self.create(dir.as_fd(), base, |d| {
                    mknodat(d, base, FileType::Fifo, Mode::from_raw_mode(0o600), 0)
                })
                .map_err(|e| format!("creating FIFO: {e}"))?;
                self.meta_at(dir.as_fd(), base, h, true)?;
            }
        }
        self.tree.keep(parent, dir);
        Ok(())
    }

    /// As non-root: a lower-layer directory the user owns but may not write into (mode
    /// 0555, say) is made owner-writable while the layer is applied, and its mode is put
    /// back at the end. Root writes anywhere; nothing to do.
    fn ensure_writable(&mut self, path: &[u8], dir: BorrowedFd<'_>) -> Result<(), Fail> {
        if self.is_root || self.writable_checked.as_deref() == Some(path) {
            return Ok(());
        }
        let st = fstat(dir).map_err(|e| format!("inspecting its directory: {}", ioerr(e)))?;
        let mode = st.st_mode & 0o7777;
        if mode & 0o700 != 0o700 && st.st_uid == rustix::process::geteuid().as_raw() {
            fchmod(dir, Mode::from_raw_mode(mode | 0o700))
                .map_err(|e| format!("making its directory writable: {}", ioerr(e)))?;
            self.dirs.entry(path.to_vec()).or_insert(DirMeta {
                mode,
                mtime: None,
                mode_pending: true,
            });
        }
        match &mut self.writable_checked {
            Some(p) => {
                p.clear();
                p.extend_from_slice(path);
            }
            None => self.writable_checked = Some(path.to_vec()),
        }
        Ok(())
    }

    /// Records `path` and its ancestors as written by this layer.
    fn mark(&mut self, path: &[u8]) {
        let mut p = path;
        while !p.is_empty() {
            if !self.layer.insert(self.hasher.hash_one(p)) {
                break; // ancestors are in already
            }
            p = split_path(p).0;
        }
    }

    fn in_layer(&self, path: &[u8]) -> bool {
        self.layer.contains(&self.hasher.hash_one(path))
    }

    /// Runs `make(dir)`; if the name is taken, removes what is there and runs it again.
    fn create(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        mut make: impl FnMut(BorrowedFd<'_>) -> rustix::io::Result<()>,
    ) -> io::Result<()> {
        match make(dir) {
            Err(Errno::EXIST) => {
                self.tree.invalidate();
                tree::remove_if_exists(dir, base)?;
                make(dir).map_err(ioerr)
            }
            r => r.map_err(ioerr),
        }
    }

    fn make_dir(&mut self, dir: BorrowedFd<'_>, base: &[u8], h: &Header) -> Result<OwnedFd, Fail> {
        let initial = Mode::from_raw_mode(0o700);
        match mkdirat(dir, base, initial) {
            Ok(()) => {}
            Err(Errno::EXIST) => match tree::kind_at(dir, base).map_err(|e| e.to_string())? {
                Some(FileType::Directory) => {} // merge
                _ => {
                    self.tree.invalidate();
                    tree::remove_if_exists(dir, base)
                        .map_err(|e| format!("replacing what was there: {e}"))?;
                    mkdirat(dir, base, initial)
                        .map_err(|e| format!("creating directory: {}", ioerr(e)))?;
                }
            },
            Err(e) => return Err(format!("creating directory: {}", ioerr(e)).into()),
        }
        let fd = openat(dir, base, DIR_FLAGS, Mode::empty())
            .map_err(|e| format!("opening directory: {}", ioerr(e)))?;
        self.owner_fd(fd.as_fd(), h)?;
        // As non-root, keep the directory writable until its children are in; the real
        // mode comes with the mtime at the end of the layer.
        let mode = if self.is_root { h.mode } else { h.mode | 0o700 };
        fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| format!("setting mode: {}", ioerr(e)))?;
        self.xattrs_fd(fd.as_fd(), h)?;
        Ok(fd)
    }

    fn make_file<R: io::BufRead>(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        h: &Header,
        tar: &mut TarReader<R>,
    ) -> Result<(), Fail> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mode = Mode::from_raw_mode(0o600);
        let fd = match openat(dir, base, flags, mode) {
            Err(Errno::EXIST) => {
                self.tree.invalidate();
                tree::remove_if_exists(dir, base)
                    .map_err(|e| format!("replacing what was there: {e}"))?;
                openat(dir, base, flags, mode)
            }
            r => r,
        }
        .map_err(|e| format!("creating file: {}", ioerr(e)))?;
        let mut file = std::fs::File::from(fd);
        if h.size > 0 {
            tar.copy_data(h.size, &mut file).map_err(|e| match e {
                DataError::Read(_) => Fail {
                    kind: UnpackErrorKind::Stream,
                    reason: e.to_string(),
                },
                DataError::Write(_) => Fail::from(e.to_string()),
            })?;
        }
        self.owner_fd(file.as_fd(), h)?;
        fchmod(&file, Mode::from_raw_mode(h.mode))
            .map_err(|e| format!("setting mode: {}", ioerr(e)))?;
        self.xattrs_fd(file.as_fd(), h)?;
        futimens(&file, &timestamps(h.mtime))
            .map_err(|e| format!("setting mtime: {}", ioerr(e)).into())
    }

    fn make_hardlink(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        path: &[u8],
        h: &Header,
    ) -> Result<(), Fail> {
        let mut link = std::mem::take(&mut self.link);
        let result = (|| {
            clean_path(&h.link, &mut link)
                .map_err(|e| refused(format!("hard link target {}: {e}", display_path(&h.link))))?;
            if link.is_empty() {
                return Err(refused("hard link to the root directory"));
            }
            if link == path {
                return Err(refused("hard link to itself"));
            }
            let (lparent, lbase) = split_path(&link);
            let missing = || {
                refused(format!(
                    "hard link target {} does not exist",
                    display_path(&h.link)
                ))
            };
            let ldir = match self.tree.resolve_existing_dir(lparent) {
                Ok(fd) => fd,
                Err(e) if matches!(e.raw_os_error(), Some(c) if c == Errno::NOENT.raw_os_error() || c == Errno::NOTDIR.raw_os_error()) => {
                    return Err(missing())
                }
                Err(e) => {
                    return Err(resolve_fail(
                        &format!("resolving hard link target {}", display_path(&h.link)),
                        e,
                    ))
                }
            };
            let r = self.create(dir, base, |d| {
                linkat(&ldir, lbase, d, base, AtFlags::empty())
            });
            match r {
                Ok(()) => Ok(()),
                Err(e) if e.raw_os_error() == Some(Errno::NOENT.raw_os_error()) => Err(missing()),
                Err(e) if e.raw_os_error() == Some(Errno::PERM.raw_os_error()) => {
                    Err(refused(format!(
                        "hard link target {} cannot be linked (a directory?): {e}",
                        display_path(&h.link)
                    )))
                }
                Err(e) => Err(format!("creating hard link: {e}").into()),
            }
        })();
        self.link = link;
        result
    }

    /// `.wh.<name>` in `parent`: removes `<name>` unless this layer wrote it.
    fn whiteout(&mut self, parent: &[u8], name: &[u8]) -> Result<(), Fail> {
        let mut target = Vec::with_capacity(parent.len() + 1 + name.len());
        if !parent.is_empty() {
            target.extend_from_slice(parent);
            target.push(b'/');
        }
        target.extend_from_slice(name);
        if self.in_layer(&target) {
            return Ok(()); // whiteouts apply to lower layers only
        }
        let Some(dir) = self
            .tree
            .dir(parent, false)
            .map_err(|e| resolve_fail("resolving its directory", e))?
        else {
            return Ok(()); // nothing below to hide
        };
        self.ensure_writable(parent, dir.as_fd())?;
        self.tree.invalidate();
        tree::remove_if_exists(dir.as_fd(), name)
            .map_err(|e| format!("removing {}: {e}", display_path(&target)))?;
        self.tree.keep(parent, dir);
        Ok(())
    }

    /// `.wh..wh..opq` in `dir_path`: removes every child that this layer did not write.
    fn opaque(&mut self, dir_path: &[u8]) -> Result<(), Fail> {
        let Some(dir) = self
            .tree
            .dir(dir_path, false)
            .map_err(|e| resolve_fail("resolving the opaque directory", e))?
        else {
            return Ok(());
        };
        self.ensure_writable(dir_path, dir.as_fd())?;
        self.tree.invalidate();
        let mut path = dir_path.to_vec();
        let keep_fd = dir.try_clone().map_err(|e| e.to_string())?;
        self.prune_lower(dir, &mut path)
            .map_err(|e| format!("clearing the opaque directory: {e}"))?;
        self.tree.keep(dir_path, keep_fd);
        Ok(())
    }

    /// Removes what this layer did not write below `dir` (at `path`), recursively.
    fn prune_lower(&self, dir: OwnedFd, path: &mut Vec<u8>) -> io::Result<()> {
        let mut inner_err = None;
        tree::clear_dir(dir, &mut |name: &CStr, fd: BorrowedFd<'_>| {
            let len = path.len();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(name.to_bytes());
            let keep = self.in_layer(path);
            if keep {
                // A directory this layer wrote into: its lower children go too.
                if let Ok(sub) = openat(fd, name, DIR_FLAGS, Mode::empty()) {
                    if let Err(e) = self.prune_lower(sub, path) {
                        inner_err.get_or_insert(e);
                    }
                }
            }
            path.truncate(len);
            keep
        })?;
        inner_err.map_or(Ok(()), Err)
    }

    /// Ownership on an open file or directory.
    fn owner_fd(&mut self, fd: BorrowedFd<'_>, h: &Header) -> Result<(), Fail> {
        if let Some((uid, gid)) = self.owner(h)? {
            fchown(fd, Some(uid), Some(gid)).map_err(|e| format!("setting owner: {}", ioerr(e)))?;
        }
        Ok(())
    }

    fn owner(&mut self, h: &Header) -> Result<Option<(Uid, Gid)>, Fail> {
        if !self.opts.same_owner {
            if h.uid != 0 || h.gid != 0 {
                self.skipped_owners += 1;
            }
            return Ok(None);
        }
        let id = |v: u64, what: &str| {
            u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| format!("{what} {v} out of range"))
        };
        Ok(Some((
            Uid::from_raw(id(h.uid, "uid")?),
            Gid::from_raw(id(h.gid, "gid")?),
        )))
    }

    /// Owner, mode (when `set_mode`), xattrs and mtime of a just-created object that is not
    /// opened (symlink, device, FIFO), by name in `dir`, never following it.
    fn meta_at(
        &mut self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        h: &Header,
        set_mode: bool,
    ) -> Result<(), Fail> {
        if let Some((uid, gid)) = self.owner(h)? {
            chownat(dir, base, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| format!("setting owner: {}", ioerr(e)))?;
        }
        if set_mode {
            // Only for devices and FIFOs this function just created (never symlinks), so
            // fchmodat following the name is fine.
            chmodat(dir, base, Mode::from_raw_mode(h.mode), AtFlags::empty())
                .map_err(|e| format!("setting mode: {}", ioerr(e)))?;
        }
        if !h.xattrs.is_empty() {
            // lsetxattr through the parent's /proc/self/fd entry: the name is not followed.
            let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            p.extend_from_slice(base);
            for (name, value) in &h.xattrs {
                let r = lsetxattr(p.as_slice(), name.as_slice(), value, XattrFlags::empty());
                self.xattr_result(name, r)?;
            }
        }
        utimensat(dir, base, &timestamps(h.mtime), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| format!("setting mtime: {}", ioerr(e)).into())
    }

    fn xattrs_fd(&mut self, fd: BorrowedFd<'_>, h: &Header) -> Result<(), Fail> {
        for (name, value) in &h.xattrs {
            let r = fsetxattr(fd, name.as_slice(), value, XattrFlags::empty());
            self.xattr_result(name, r)?;
        }
        Ok(())
    }

    /// An xattr the filesystem does not support, or that the user may not set (`security.*`
    /// or `trusted.*` without the capability, `user.*` on a symlink), is skipped (counted,
    /// logged once per layer); any other failure fails the entry.
    fn xattr_result(&mut self, name: &[u8], r: rustix::io::Result<()>) -> Result<(), Fail> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e == Errno::OPNOTSUPP || e == Errno::PERM => {
                self.skipped_xattrs += 1;
                self.first_xattr_skip.get_or_insert_with(|| {
                    format!("{}: {}", String::from_utf8_lossy(name), ioerr(e))
                });
                Ok(())
            }
            Err(e) => Err(format!(
                "setting extended attribute {}: {}",
                String::from_utf8_lossy(name),
                ioerr(e)
            )
            .into()),
        }
    }

    /// Directory modes and mtimes, deepest first, once nothing more is written into them.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        self.tree.invalidate();
        let mut dirs: Vec<(Vec<u8>, DirMeta)> = self.dirs.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.iter().filter(|&&b| b == b'/').count()));
        for (path, meta) in dirs {
            // Gone or replaced by a non-directory later in the layer: nothing to do.
            let Ok(fd) = self.tree.open_dir_nofollow(&path) else {
                continue;
            };
            let fail = |what: &str, e: Errno| {
                UnpackError::new(
                    UnpackErrorKind::Filesystem,
                    display_path(&path),
                    format!("setting {what}: {}", ioerr(e)),
                )
            };
            if meta.mode_pending {
                fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(|e| fail("mode", e))?;
            }
            if let Some(mtime) = meta.mtime {
                futimens(&fd, &timestamps(mtime)).map_err(|e| fail("mtime", e))?;
            }
        }
        Ok(())
    }

    fn log_skips(&self) {
        if self.skipped_owners > 0 || self.skipped_devices > 0 {
            tracing::info!(
                entries_with_owner = self.skipped_owners,
                device_nodes = self.skipped_devices,
                "layer unpacked without ownership and device nodes (not unpacking as root): {} entries keep the unpacking user as owner, {} device nodes skipped",
                self.skipped_owners,
                self.skipped_devices
            );
        }
        if self.skipped_xattrs > 0 {
            tracing::warn!(
                "layer unpacked without {} extended attributes the filesystem or user cannot set (first: {})",
                self.skipped_xattrs,
                self.first_xattr_skip.as_deref().unwrap_or("?")
            );
        }
    }
}

/// Why an entry failed, before the entry is named.
struct Fail {
    kind: UnpackErrorKind,
    reason: String,
}

/// A filesystem failure (the common case, hence the `?` conversion).
impl From<String> for Fail {
    fn from(reason: String) -> Self {
        Fail {
            kind: UnpackErrorKind::Filesystem,
            reason,
        }
    }
}

fn refused(reason: impl Into<String>) -> Fail {
    Fail {
        kind: UnpackErrorKind::Refused,
        reason: reason.into(),
    }
}

/// A failure to resolve a directory: a symlink loop is the layer's doing.
fn resolve_fail(what: &str, e: io::Error) -> Fail {
    let reason = format!("{what}: {e}");
    if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) {
        refused(reason)
    } else {
        Fail::from(reason)
    }
}

/// Cleans an archive path into `out`: no leading `/` or `./`, no `.` or empty
/// components, `..` applied lexically. Refuses names climbing out of the root and names
/// longer than [`MAX_NAME`].
fn clean_path(raw: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    out.clear();
    if raw.len() > MAX_NAME {
        return Err(format!(
            "name of {} bytes is longer than the limit of {MAX_NAME}",
            raw.len()
        ));
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte".into());
    }
    // An absolute name (`umoci insert` writes the root entry as `/`, some tools write
    // `/bin/sh`) is taken relative to the root, as docker and containerd take it; it
    // can no more leave the root than a relative one.
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if out.is_empty() {
                    return Err("name climbs out of the root with '..'".into());
                }
                let cut = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(cut);
            }
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(comp);
            }
        }
    }
    Ok(())
}

/// (parent, last component) of a cleaned, non-empty path.
fn split_path(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// An entry name for messages: lossy UTF-8, control characters escaped (one line),
/// shortened past 300 characters.
fn display_path(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(s.len().min(310));
    for (i, c) in s.chars().enumerate() {
        if i == 300 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if out.is_empty() {
        out.push_str("(empty name)");
    }
    out
}

fn tar_fail(e: TarError) -> Fail {
    match e {
        TarError::Io(e) => Fail {
            kind: UnpackErrorKind::Stream,
            reason: format!("reading the layer: {e}"),
        },
        TarError::Format(reason) => Fail {
            kind: UnpackErrorKind::Stream,
            reason,
        },
        TarError::Limit(reason) => refused(reason),
    }
}

fn timestamps(t: Time) -> Timestamps {
    let ts = rustix::fs::Timespec {
        tv_sec: t.secs,
        tv_nsec: t.nanos.into(),
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}
