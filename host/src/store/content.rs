//! The content store: verified blobs named by digest, and resumable ingests.
//!
//! An ingest is a partial blob being written under a caller-chosen *ref* (e.g. a hash of
//! a URL): `content/ingest/<sha256(ref)>/data`, plus an optional `validator` (e.g. the
//! HTTP ETag the partial data came from). One ingest per ref exists at a time: opening it
//! takes the flock `locks/ingest-<sha256(ref)>`, blocking while another thread or process
//! writes it. Data is hashed while written; reopening an interrupted ingest rehashes the
//! prefix already on disk and continues at its end. Commit fsyncs, verifies the digest and
//! renames the data into `content/blobs/sha256/<hex>`; on a mismatch nothing is stored and
//! the ingest is removed.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::{IoContext, StoreError};
use super::fsutil;
use super::lock::{FileLock, Wait};
use super::{Store, LEASE_BLOB};

/// Read and write buffer size for hashing and streaming.
const BUF: usize = 1 << 20;

/// A committed blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Where the blob lives (read-only; never modify it).
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

/// What the last successful commit of an ingest ref produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IngestRecord {
    /// The blob's digest, `sha256:<hex>`.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The validator (e.g. ETag) set on the ingest when it was committed.
    pub validator: Option<String>,
    /// When it was committed, in seconds since the Unix epoch.
    pub updated: i64,
}

/// Checks that `digest` is `sha256:` followed by 64 lowercase hex digits; returns the hex.
pub fn sha256_hex(digest: &str) -> Result<&str, StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidDigest {
            digest: digest.to_string(),
            reason,
        })
    };
    let Some(hex) = digest.strip_prefix("sha256:") else {
        return bad("only sha256:<hex> digests are supported");
    };
    if hex.len() != 64 {
        return bad("a sha256 digest has 64 hex digits");
    }
    if !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return bad("the hex part must be lowercase hex digits");
    }
    Ok(hex)
}

impl Store {
    /// The path of blob `digest` if the store has it (committed blobs are always
    /// complete and verified). A malformed digest gives `None`.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        let path = self.blob_file(digest).ok()?;
        path.is_file().then_some(path)
    }

    /// Where blob `digest` lives or would live.
    pub(crate) fn blob_file(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let hex = sha256_hex(digest)?;
        Ok(self.inner.root.join("content/blobs/sha256").join(hex))
    }

    /// Opens the ingest for `reference` (any string: a URL, a hash; it is hashed before
    /// it touches a path), blocking while another thread or process has it open.
    /// Interrupted data from an earlier run is kept: [`Ingest::offset`] says how much.
    pub fn ingest(&self, reference: &str) -> Result<Ingest, StoreError> {
        self.ingest_with(reference, Wait::Block)
    }

    /// Like [`Store::ingest`], but gives up with [`StoreError::Cancelled`] once `cancel`
    /// becomes true while waiting for another holder.
    pub fn ingest_cancellable(
        &self,
        reference: &str,
        cancel: &AtomicBool,
    ) -> Result<Ingest, StoreError> {
        self.ingest_with(reference, Wait::Cancellable(cancel, "an ingest"))
    }

    fn ingest_with(&self, reference: &str, wait: Wait<'_>) -> Result<Ingest, StoreError> {
        let ref_hash = hex::encode(Sha256::digest(reference.as_bytes()));
        let lock_path = self
            .inner
            .root
            .join("locks")
            .join(format!("ingest-{ref_hash}"));
        let lock = FileLock::acquire_with(&self.inner.root, &lock_path, wait)?
            .expect("waiting lock returns a lock");
        let dir = self.inner.root.join("content/ingest").join(&ref_hash);
        fs::create_dir_all(&dir).ctx("create ingest directory", &dir)?;
        let data_path = dir.join("data");
        let mut file = super::beneath::open(
            &self.inner.root,
            &data_path,
            libc::O_RDWR | libc::O_CREAT,
            0o644,
        )
        .ctx("open ingest data", &data_path)?;
        let (hasher, offset) = hash_prefix(&mut file).ctx("read ingest data", &data_path)?;
        // Drop anything past what was read (a concurrent truncation cannot happen: we
        // hold the lock), and continue writing at the end.
        file.set_len(offset)
            .ctx("truncate ingest data", &data_path)?;
        file.seek(SeekFrom::Start(offset))
            .ctx("seek ingest data", &data_path)?;
        Ok(Ingest {
            store: self.clone(),
            ref_hash,
            dir,
            data_path,
            file: Some(BufWriter::with_capacity(BUF, file)),
            hasher,
            offset,
            writeback_from: offset,
            lock: Some(lock),
        })
    }

    /// What the last successful commit of an ingest for `reference` produced, if that
    /// blob is still in the store. Lets a downloader revalidate (ETag) instead of
    /// downloading again.
    pub fn ingest_record(&self, reference: &str) -> Result<Option<IngestRecord>, StoreError> {
        let ref_hash = hex::encode(Sha256::digest(reference.as_bytes()));
        let rec = self.inner.read("read ingest record", |c| {
            c.query_row(
                "SELECT digest, size, validator, updated FROM ingest_records WHERE ref_hash = ?1",
                params![ref_hash],
                |r| {
                    Ok(IngestRecord {
                        digest: r.get(0)?,
                        size: r.get::<_, i64>(1)? as u64,
                        validator: r.get(2)?,
                        updated: r.get(3)?,
                    })
                },
            )
            .optional()
        })?;
        Ok(rec.filter(|r| self.blob_path(&r.digest).is_some()))
    }
}

/// Hashes everything in `file` from its start; returns the hasher and the length read.
pub(super) fn hash_prefix(file: &mut File) -> io::Result<(Sha256, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    let mut total = 0u64;
    file.seek(SeekFrom::Start(0))?;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher, total))
}

/// How many written bytes an ingest lets accumulate before it asks the kernel to start
/// writing them back (`sync_file_range`), overlapping the disk with the download.
const WRITEBACK_CHUNK: u64 = 16 << 20;

/// An open, exclusively held ingest. Write to it (it implements [`Write`]), then
/// [`Ingest::commit`]. Dropping it without commit keeps the data for a later resume.
pub struct Ingest {
    store: Store,
    ref_hash: String,
    dir: PathBuf,
    data_path: PathBuf,
    file: Option<BufWriter<File>>,
    hasher: Sha256,
    offset: u64,
    /// Bytes already handed to the kernel's writeback (see [`WRITEBACK_CHUNK`]).
    writeback_from: u64,
    lock: Option<FileLock>,
}

impl std::fmt::Debug for Ingest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingest")
            .field("dir", &self.dir)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Ingest {
    /// Bytes already in the ingest (written now or by an interrupted earlier run).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The validator stored with the partial data (e.g. the ETag it came from), if any.
    pub fn validator(&self) -> Result<Option<String>, StoreError> {
        let p = self.dir.join("validator");
        let read = super::beneath::open(&self.store.inner.root, &p, libc::O_RDONLY, 0)
            .and_then(io::read_to_string);
        match read {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::io("read ingest validator", &p, e)),
        }
    }

    /// Stores `validator` with the data (atomically replacing any earlier one).
    pub fn set_validator(&mut self, validator: &str) -> Result<(), StoreError> {
        let p = self.dir.join("validator");
        let tmp = self.dir.join("validator.tmp");
        super::beneath::open(
            &self.store.inner.root,
            &tmp,
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
            0o644,
        )
        .and_then(|mut f| f.write_all(validator.as_bytes()))
        .ctx("write ingest validator", &tmp)?;
        fs::rename(&tmp, &p).ctx("write ingest validator", &p)?;
        Ok(())
    }

    /// Discards the data and validator; the ingest starts again at offset 0.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        let data_path = self.data_path.clone();
        // What is still buffered is discarded, not flushed: the data is being thrown
        // away, and on a full disk the flush is what fails (ENOSPC), which must not
        // stop the truncation that frees the space.
        let Some(buffered) = self.file.take() else {
            return Err(StoreError::io(
                "write ingest data",
                &data_path,
                io::Error::other("the ingest was already finished"),
            ));
        };
        let (mut f, _discarded) = buffered.into_parts();
        let truncated = f
            .set_len(0)
            .and_then(|_| f.seek(SeekFrom::Start(0)).map(|_| ()));
        self.file = Some(BufWriter::with_capacity(BUF, f));
        truncated.ctx("truncate ingest data", &data_path)?;
        self.hasher = Sha256::new();
        self.offset = 0;
        // The writeback mark is an offset too: a reset after a megabyte or more had
        // been written would otherwise underflow `offset - writeback_from`.
        self.writeback_from = 0;
        let p = self.dir.join("validator");
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::io("remove ingest validator", &p, e))
            }
            _ => Ok(()),
        }
    }

    /// Copies everything from `reader` into the ingest (1 MiB buffer); returns the bytes
    /// copied.
    pub fn copy_from(&mut self, reader: &mut dyn Read) -> Result<u64, StoreError> {
        let mut buf = vec![0u8; BUF];
        let mut total = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("read data for ingest", &self.data_path, e)),
            };
            self.write_all(&buf[..n])
                .ctx("write ingest data", &self.data_path)?;
            total += n as u64;
        }
    }

    /// The data file, for writers that must write through a path. After writing through
    /// it, only [`Ingest::commit`] may follow (it rehashes when the file changed size
    /// behind the ingest's back).
    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// Finishes the ingest: flushes and fsyncs the data, checks it against `expected`
    /// (`sha256:<hex>`) if given, and moves it into the blob store (if the blob is
    /// already there, the data is dropped). On a mismatch the error names both digests
    /// and the ingest is removed, so nothing of it stays in the store. The blob is leased
    /// to this store's owner.
    pub fn commit(mut self, expected: Option<&str>) -> Result<BlobInfo, StoreError> {
        if let Some(e) = expected {
            sha256_hex(e)?;
        }
        let mut file = self
            .file
            .take()
            .expect("file is present until commit")
            .into_inner()
            .map_err(|e| {
                StoreError::io(
                    "write ingest data",
                    &self.data_path,
                    io::Error::new(e.error().kind(), e.error().to_string()),
                )
            })?;
        let len = file
            .metadata()
            .ctx("stat ingest data", &self.data_path)?
            .len();
        let (hasher, size) = if len != self.offset {
            hash_prefix(&mut file).ctx("read ingest data", &self.data_path)?
        } else {
            (std::mem::take(&mut self.hasher), self.offset)
        };
        file.sync_all().ctx("fsync ingest data", &self.data_path)?;
        drop(file);
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(expected) = expected {
            if expected != actual {
                self.remove_dir();
                if let Some(lock) = self.lock.take() {
                    lock.remove();
                }
                return Err(StoreError::ChecksumMismatch {
                    expected: expected.to_string(),
                    actual,
                });
            }
        }
        let validator = self.validator().ok().flatten();
        let target = self.store.blob_file(&actual)?;
        let owner = self.store.inner.owner.clone();
        let (data_path, ref_hash) = (self.data_path.clone(), self.ref_hash.clone());
        // Move and record under the database's write lock: a concurrent prune either
        // runs before (and cannot see the blob) or after (and sees the lease).
        self.store.inner.write_with("record blob", |tx| {
            if !target.is_file() {
                fs::set_permissions(&data_path, fs::Permissions::from_mode(0o444))
                    .ctx("make blob read-only", &data_path)?;
                fs::rename(&data_path, &target).ctx("move blob into", &target)?;
                let parent = target.parent().expect("blob path has a parent");
                fsutil::fsync_dir(parent).ctx("fsync directory", parent)?;
            } // else: the same content is there already; the data is dropped below.
            let db = |source| self.store.inner.db_err("record blob", source);
            tx.execute(
                "INSERT INTO ingest_records(ref_hash, digest, size, validator, updated) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(ref_hash) DO UPDATE SET digest = excluded.digest, size = excluded.size,
                   validator = excluded.validator, updated = excluded.updated",
                params![ref_hash, actual, size as i64, validator, fsutil::now_secs()],
            )
            .map_err(db)?;
            tx.execute(
                "INSERT OR IGNORE INTO leases(owner, kind, target) VALUES (?1, ?2, ?3)",
                params![owner, LEASE_BLOB, actual],
            )
            .map_err(db)?;
            Ok(())
        })?;
        self.remove_dir();
        let _ = fsutil::touch(&target);
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
        Ok(BlobInfo {
            digest: actual,
            path: target,
            size,
        })
    }

    /// Throws the partial data away and releases the ingest.
    pub fn abort(mut self) {
        self.file = None;
        self.remove_dir();
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }

    fn remove_dir(&mut self) {
        self.file = None;
        let _ = fsutil::remove_tree(&self.dir);
    }
}

impl Write for Ingest {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some(file) = self.file.as_mut() else {
            return Err(io::Error::other("the ingest was already finished"));
        };
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.offset += n as u64;
        if self.offset - self.writeback_from >= WRITEBACK_CHUNK {
            // Start writing the finished chunk to disk now, in the background, so
            // that the fsync at commit finds little left to do.
            file.flush()?;
            let fd = file.get_ref().as_raw_fd();
            let len = self.offset - self.writeback_from;
            // SAFETY: a plain syscall on a descriptor this ingest owns.
            unsafe {
                libc::sync_file_range(
                    fd,
                    self.writeback_from as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
            self.writeback_from = self.offset;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // Keep what was written for a later resume; the lock goes with `self.lock`.
        if let Some(mut f) = self.file.take() {
            let _ = f.flush();
        }
    }
}
