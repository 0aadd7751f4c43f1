//! The store: everything kiln keeps under its root directory (DESIGN §7).
//!
//! # Layout
//!
//! ```text
//! <root>/kiln.db                         SQLite (WAL): snapshots, cache index, leases, metadata
//! <root>/content/blobs/sha256/<hex>      verified blobs, read-only, named by digest
//! <root>/content/ingest/<ref-hash>/data  a partial download (resumable), with `validator`
//! <root>/snapshots/<id>/                 immutable trees
//! <root>/tmp/<owner>.<kind>.<rand>       staging and trash, on the same filesystem
//! <root>/locks/                          flock files: owners/<owner>, key-<hash>, ingest-<hash>
//! <root>/plugins/<id>/                   plugin state directories
//! <root>/git/                            reserved for per-remote bare repositories
//! ```
//!
//! # Crash safety
//!
//! Data is always written first and recorded second:
//! - a blob is hashed while it is written into its ingest, fsynced, verified, then renamed
//!   into `blobs/` (blob files exist only with the right content);
//! - a snapshot is written into a staging directory under `tmp/`, flushed (file by file
//!   when small, else `syncfs`),
//!   renamed into `snapshots/<id>` and recorded in SQLite inside one write transaction;
//!   a cache result can only name a recorded snapshot (foreign key).
//!
//! `kill -9` at any point leaves at worst an unrecorded directory under `snapshots/`, a
//! staging or trash directory under `tmp/`, or a partial ingest. None of them is ever
//! used as a result; [`Store::prune`] removes them (an interrupted ingest is resumed by the
//! next [`Store::ingest`] of the same ref instead).
//!
//! # Several processes, one root
//!
//! SQLite arbitrates the index. Each [`Store`] is an *owner*: it holds an exclusive
//! `flock` on `locks/owners/<owner>` for its whole life, so any process can tell whether
//! an owner is alive. Staging directories carry their owner's name, and *leases*
//! (rows naming an owner and a snapshot or blob) protect what a running build uses:
//! [`Store::prune`] in another process never removes a leased item of a live owner, and
//! drops the leases of dead ones. Leasing and pruning check each other inside SQLite
//! write transactions, so a snapshot is either leased before prune looks or gone before
//! the lease is taken (then the lease fails and the caller rebuilds).
//!
//! Per-key file locks ([`Store::lock_key`]) make two processes computing the same cache
//! key produce it once: the second waits, then finds the first one's result. Ingests
//! are locked per ref the same way.
//!
//! All calls block (file I/O, flock, SQLite); async code calls them on tokio's blocking
//! pool.

mod beneath;
mod cache;
mod content;
mod db;
mod error;
mod fsutil;
mod gc;
mod lock;
mod reserve;
mod snapshot;
mod verify;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use sha2::{Digest, Sha256};

pub use cache::{root_key, CacheLink, CacheResult};
pub use content::{BlobInfo, Ingest, IngestRecord};
pub use error::StoreError;
pub use gc::{DuReport, PruneOptions, PruneReport, Usage};
pub use lock::FileLock;
pub use snapshot::{SnapshotId, SnapshotInfo, SnapshotMeta, Staging, CONTENT_HASH_META};
pub use verify::VerifyReport;

use error::IoContext;
use lock::Wait;

/// A lock on a named key, released when dropped. See [`Store::lock_key`].
pub type KeyLock = FileLock;

/// Lease kind for snapshots in the `leases` table.
const LEASE_SNAPSHOT: &str = "snapshot";
/// Lease kind for blobs in the `leases` table.
const LEASE_BLOB: &str = "blob";

/// The store under one root directory. `Clone` is cheap (clones share one owner, one
/// database connection); `Send + Sync`. Dropping the last clone releases this owner's
/// leases.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The shared state of a [`Store`] and its clones.
struct Inner {
    root: PathBuf,
    db_path: PathBuf,
    conn: Mutex<Connection>,
    owner: String,
    owner_lock: Option<FileLock>,
    /// Flush snapshot trees to disk before recording them (see [`Store::set_sync_snapshots`]).
    sync_snapshots: AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Store {
    /// Opens the store at `root`, creating the layout and the database if needed.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(root).ctx("create store root", root)?;
        let root = root.canonicalize().ctx("resolve store root", root)?;
        for dir in [
            "content/blobs/sha256",
            "content/ingest",
            "snapshots",
            "tmp",
            "locks/owners",
            "plugins",
            "git",
        ] {
            let p = root.join(dir);
            beneath::create_dirs(&root, dir).ctx("create directory", &p)?;
        }
        // Trees hold whatever builds made, setuid files and device nodes of run steps
        // included: only kiln's user may reach them (moby's CVE-2021-41091).
        for dir in ["snapshots", "tmp"] {
            let p = root.join(dir);
            let private = fs::Permissions::from_mode(0o700);
            fs::set_permissions(&p, private).ctx("restrict the permissions of", &p)?;
        }

        // Become an owner: lock a fresh file under a temporary name, then rename it into
        // place, so the final name is never seen unlocked while this owner lives.
        let owner = fsutil::random_hex(12);
        let owners = root.join("locks/owners");
        let tmp_name = owners.join(format!(".new-{owner}"));
        let lock = FileLock::try_acquire(&root, &tmp_name)?
            .expect("a freshly named lock file is not held by anyone");
        let final_name = owners.join(&owner);
        fs::rename(&tmp_name, &final_name).ctx("rename owner lock into", &final_name)?;
        let lock = lock.renamed(final_name);

        let db_path = root.join("kiln.db");
        let conn = match db::open(&db_path) {
            // A full disk leaves SQLite no room for its log: free the reserve and
            // try once more, so that at least `kiln cache prune` can run.
            Err(e) if e.is_no_space(&root) => {
                // Staging of dead builds has no rows: it can go before the database
                // opens.
                let freed =
                    reserve::release(&root) as u64 * reserve::SIZE + gc::remove_dead_staging(&root);
                if freed == 0 {
                    return Err(e);
                }
                tracing::warn!(
                    "the disk holding {} is full: freed {freed} bytes (kiln's space reserve and dead builds' staging); run `kiln cache prune` to free more",
                    root.display()
                );
                db::open(&db_path)?
            }
            r => r?,
        };
        reserve::ensure(&root);
        let inner = Inner {
            root,
            db_path,
            conn: Mutex::new(conn),
            owner,
            owner_lock: Some(lock),
            sync_snapshots: AtomicBool::new(true),
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Whether [`Store::commit`] flushes a snapshot's tree to disk before
    /// recording it. On by default. Turning it off keeps every guarantee against a killed
    /// process (the kernel keeps the written data) but not against a power loss, which
    /// could then leave a recorded snapshot with unwritten file contents.
    pub fn set_sync_snapshots(&self, on: bool) {
        self.inner
            .sync_snapshots
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The root directory (canonical).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// This store's owner name (unique per [`Store::open`]); leases and staging
    /// directories carry it.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// The directory reserved for per-remote bare git repositories (`<root>/git`).
    pub fn git_dir(&self) -> PathBuf {
        self.inner.root.join("git")
    }

    /// The state directory of plugin `id` (`<root>/plugins/<id>/`), created if missing.
    /// `id` must be a plain name: ASCII letters, digits, `.`, `-`, `_`, not starting
    /// with `.`.
    pub fn plugin_state_dir(&self, id: &str) -> Result<PathBuf, StoreError> {
        Self::plugin_state_dir_in(&self.inner.root, id)
    }

    /// [`Store::plugin_state_dir`] for the root `root`, without opening the store (the
    /// plugin host hands state directories out at start-up, when no store is needed).
    /// In a root without a database yet, the folder is not created.
    pub fn plugin_state_dir_in(root: &Path, id: &str) -> Result<PathBuf, StoreError> {
        check_plain_name("plugin id", id)?;
        let p = root.join("plugins").join(id);
        // A root that was never set up stays untouched (read-only commands such as
        // `plugins list` create nothing; a plugin makes the folder when it first
        // writes). In a set-up root, the folder is made without following a planted
        // link (`plugins` → elsewhere).
        if !root.join("kiln.db").exists() {
            return Ok(p);
        }
        beneath::create_dirs(root, &format!("plugins/{id}"))
            .ctx("create plugin state directory", &p)?;
        Ok(p)
    }

    /// Takes the lock named `name` (any string; it is hashed into
    /// `locks/key-<sha256>`), blocking while another thread or process holds it.
    /// Typical use: lock the cache key, look for a result, build only if none, save,
    /// unlock. Call from a blocking thread.
    pub fn lock_key(&self, name: &str) -> Result<KeyLock, StoreError> {
        FileLock::acquire(&self.inner.root, &self.key_lock_path(name))
    }

    /// Like [`Store::lock_key`], but gives up with [`StoreError::Cancelled`] once
    /// `cancel` becomes true (polled every few milliseconds while waiting).
    pub fn lock_key_cancellable(
        &self,
        name: &str,
        cancel: &AtomicBool,
    ) -> Result<KeyLock, StoreError> {
        let lock = FileLock::acquire_with(
            &self.inner.root,
            &self.key_lock_path(name),
            Wait::Cancellable(cancel, name),
        )?;
        Ok(lock.expect("a cancellable wait returns a lock or an error"))
    }

    /// Takes the lock named `name` only if it is free now.
    pub fn try_lock_key(&self, name: &str) -> Result<Option<KeyLock>, StoreError> {
        FileLock::try_acquire(&self.inner.root, &self.key_lock_path(name))
    }

    fn key_lock_path(&self, name: &str) -> PathBuf {
        self.inner.root.join("locks").join(format!(
            "key-{}",
            hex::encode(Sha256::digest(name.as_bytes()))
        ))
    }

    /// Leases snapshot `id` for this owner, so that no prune removes it while this
    /// store is open, and marks it used now. `false` if the snapshot is not (or no
    /// longer) in the store.
    pub fn lease_snapshot(&self, id: &SnapshotId) -> Result<bool, StoreError> {
        let owner = self.inner.owner.clone();
        self.inner.write("lease snapshot", |tx| {
            lease_snapshot_tx(tx, &owner, id.as_str())
        })
    }

    /// Leases blob `digest` for this owner and marks it used now. `false` if the blob
    /// is not in the store.
    pub fn lease_blob(&self, digest: &str) -> Result<bool, StoreError> {
        let path = self.blob_file(digest)?;
        self.inner.write("lease blob", |tx| {
            if !path.exists() {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR IGNORE INTO leases(owner, kind, target) VALUES (?1, ?2, ?3)",
                params![self.inner.owner, LEASE_BLOB, digest],
            )?;
            let _ = fsutil::touch(&path);
            Ok(true)
        })
    }

    /// Drops every lease this owner holds (also done when the store is dropped).
    pub fn release_leases(&self) -> Result<(), StoreError> {
        self.inner.write("release leases", |tx| {
            tx.execute(
                "DELETE FROM leases WHERE owner = ?1",
                params![self.inner.owner],
            )?;
            Ok(())
        })
    }

    /// Reads a value of the namespaced key/value metadata (pins, resolver state, …).
    pub fn meta_get(&self, namespace: &str, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.read("read metadata", |c| {
            c.query_row(
                "SELECT value FROM kv WHERE namespace = ?1 AND key = ?2",
                params![namespace, key],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Writes (replaces) a value of the namespaced key/value metadata.
    pub fn meta_set(&self, namespace: &str, key: &str, value: &str) -> Result<(), StoreError> {
        self.inner.write("write metadata", |tx| {
            tx.execute(
                "INSERT INTO kv(namespace, key, value, updated) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(namespace, key) DO UPDATE SET value = excluded.value, updated = excluded.updated",
                params![namespace, key, value, fsutil::now_secs()],
            )?;
            Ok(())
        })
    }

    /// Removes a key of the namespaced metadata; `true` if it existed.
    pub fn meta_remove(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        self.inner.write("remove metadata", |tx| {
            Ok(tx.execute(
                "DELETE FROM kv WHERE namespace = ?1 AND key = ?2",
                params![namespace, key],
            )? > 0)
        })
    }

    /// All keys and values of one metadata namespace.
    pub fn meta_list(&self, namespace: &str) -> Result<BTreeMap<String, String>, StoreError> {
        self.inner.read("list metadata", |c| {
            let mut st = c.prepare("SELECT key, value FROM kv WHERE namespace = ?1")?;
            let rows = st.query_map(params![namespace], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }
}

impl Inner {
    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the connection leaves no open transaction behind
        // (rusqlite rolls back on drop), so the connection is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the connection (reads).
    fn read<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let conn = self.conn();
        f(&conn).map_err(|source| self.db_err(action, source))
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction and commits it.
    fn write<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        self.write_with(action, |tx| {
            f(tx).map_err(|source| self.db_err(action, source))
        })
    }

    /// Like [`Store::write`], for bodies that also do filesystem work.
    fn write_with<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.db_err(action, source))?;
        let out = f(&tx)?;
        tx.commit().map_err(|source| self.db_err(action, source))?;
        Ok(out)
    }

    fn db_err(&self, action: &'static str, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            action,
            path: self.db_path.clone(),
            source,
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let owner = self.owner.clone();
        let _ = self.write("release leases", |tx| {
            tx.execute("DELETE FROM leases WHERE owner = ?1", params![owner])
        });
        if let Some(lock) = self.owner_lock.take() {
            lock.remove();
        }
    }
}

/// Inserts a lease on a recorded snapshot and marks it used; `false` if not recorded.
fn lease_snapshot_tx(tx: &Transaction<'_>, owner: &str, id: &str) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE snapshots SET last_used = ?2 WHERE id = ?1",
        params![id, fsutil::now_secs()],
    )?;
    if n == 0 {
        return Ok(false);
    }
    tx.execute(
        "INSERT OR IGNORE INTO leases(owner, kind, target) VALUES (?1, ?2, ?3)",
        params![owner, LEASE_SNAPSHOT, id],
    )?;
    Ok(true)
}

/// Refuses names that could escape a directory or hide as dot files.
fn check_plain_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let bad = |reason| {
        Err(StoreError::InvalidName {
            what,
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 200 {
        return bad("it is longer than 200 bytes");
    }
    if name.starts_with('.') {
        return bad("it starts with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        return bad("only ASCII letters, digits, '.', '-' and '_' are allowed");
    }
    Ok(())
}
