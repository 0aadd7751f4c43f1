//! Snapshots: immutable trees under `snapshots/<id>/`, made through staging directories.
//!
//! [`Store::stage`] hands out a fresh directory under `<root>/tmp/` (same filesystem).
//! The producer fills it, then [`Store::commit`] flushes it to disk,
//! measures the tree, and — inside one SQLite write transaction — renames the directory
//! to `snapshots/<id>` and records it (with its metadata and a lease for this owner).
//! A crash before the rename leaves a staging directory of a dead owner; a crash between
//! rename and commit leaves an unrecorded snapshot directory. Both are invisible to
//! lookups and removed by prune.
//!
//! Snapshots are immutable by contract: readers (exporters, copy ops, tests) may read
//! them, nobody writes to them. Their modes are left as produced, so that exporters see
//! the modes the source asked for.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::error::{IoContext, StoreError};
use super::fsutil;
use super::{lease_snapshot_tx, Store, LEASE_SNAPSHOT};

/// The id of a committed snapshot: 32 lowercase hex digits (random).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SnapshotId(String);

impl SnapshotId {
    /// Checks and wraps a snapshot id read from elsewhere (e.g. solver state).
    pub fn parse(s: &str) -> Result<SnapshotId, StoreError> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(SnapshotId(s.to_string()))
        } else {
            Err(StoreError::InvalidName {
                what: "snapshot id",
                name: s.to_string(),
                reason: "a snapshot id is 32 lowercase hex digits",
            })
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn new_random() -> SnapshotId {
        SnapshotId(fsutil::random_hex(16))
    }
}

impl fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SnapshotId {
    type Error = StoreError;
    fn try_from(s: String) -> Result<Self, StoreError> {
        SnapshotId::parse(&s)
    }
}

impl From<SnapshotId> for String {
    fn from(id: SnapshotId) -> String {
        id.0
    }
}

/// What to record with a snapshot at commit.
#[derive(Debug, Clone, Default)]
pub struct SnapshotMeta {
    /// A human-readable description (e.g. the redacted identifier it came from).
    pub description: String,
    /// Key/value metadata (e.g. `image.config` JSON, `source.pin`).
    pub metadata: BTreeMap<String, String>,
    /// Digests (`sha256:<hex>`) of blobs this snapshot refers to; prune keeps them while
    /// the snapshot lives.
    pub blobs: Vec<String>,
}

/// A recorded snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotInfo {
    /// Its id.
    pub id: SnapshotId,
    /// Its directory.
    pub path: PathBuf,
    /// When it was committed (seconds since the Unix epoch).
    pub created: i64,
    /// When it was last leased (seconds since the Unix epoch).
    pub last_used: i64,
    /// Apparent size: the lengths of its regular files and symlinks.
    pub size: u64,
    /// Number of entries in the tree (the root included).
    pub entries: u64,
    /// The description given at commit.
    pub description: String,
}

/// The metadata key under which [`Store::commit`] records a snapshot's content hash
/// (`sha256:<hex>`, the contenthash of its whole tree). Reserved: callers' metadata
/// under this key is replaced, and [`Store::snapshot_metadata`] leaves it out (read it
/// with [`Store::snapshot_content_hash`]).
pub const CONTENT_HASH_META: &str = "kiln.contenthash";

/// A staging directory being filled. Dropping it without [`Store::commit`] removes it.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    committed: bool,
}

impl Staging {
    /// The directory to write the tree into.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fsutil::remove_tree(&self.path);
        }
    }
}

impl Store {
    /// A fresh, empty staging directory under `<root>/tmp/`, owned by this store (prune
    /// leaves it alone while this store lives).
    pub fn stage(&self) -> Result<Staging, StoreError> {
        let path = self.tmp_path("stage");
        fs::create_dir(&path).ctx("create staging directory", &path)?;
        Ok(Staging {
            path,
            committed: false,
        })
    }

    /// A fresh name under `<root>/tmp/` carrying this owner's name.
    pub(crate) fn tmp_path(&self, kind: &str) -> PathBuf {
        self.inner.root.join("tmp").join(format!(
            "{}.{kind}.{}",
            self.inner.owner,
            fsutil::random_hex(8)
        ))
    }

    /// Commits a filled staging directory as an immutable snapshot and leases it to this
    /// owner. See the module docs for the crash-safety argument.
    pub fn commit(&self, staging: Staging, meta: SnapshotMeta) -> Result<SnapshotId, StoreError> {
        self.commit_hashed(staging, meta, None).map(|(id, _)| id)
    }

    /// [`Store::commit`], recording the tree's content hash: `tree` when the caller has
    /// already hashed the staged tree, else computed here (one read of every file).
    /// Returns the hash too, so the caller can reuse it for selection checksums.
    pub fn commit_hashed(
        &self,
        mut staging: Staging,
        meta: SnapshotMeta,
        tree: Option<std::sync::Arc<crate::contenthash::TreeHash>>,
    ) -> Result<(SnapshotId, std::sync::Arc<crate::contenthash::TreeHash>), StoreError> {
        for b in &meta.blobs {
            super::content::sha256_hex(b)?;
        }
        let (size, entries) =
            fsutil::tree_size(&staging.path).ctx("measure staging directory", &staging.path)?;
        if self
            .inner
            .sync_snapshots
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            fsutil::flush_tree(&staging.path, entries)
                .ctx("flush staging directory", &staging.path)?;
        }
        // The tree's content hash (BuildKit's contenthash of "/"), recorded so that
        // `kiln cache verify` can tell a tree changed on disk after its commit.
        let tree = match tree {
            Some(t) => t,
            None => std::sync::Arc::new(
                crate::contenthash::TreeHash::compute(&staging.path)
                    .map_err(|e| StoreError::io("hash staging directory", &e.path, e.source))?,
            ),
        };
        let content_hash = tree.root_digest();
        let id = SnapshotId::new_random();
        let dest = self.snapshot_dir(&id);
        let owner = self.inner.owner.clone();
        let now = fsutil::now_secs();
        self.inner
            .write_with("record snapshot", |tx| {
                fs::rename(&staging.path, &dest).ctx("move staging directory to", &dest)?;
                staging.committed = true;
                let parent = dest.parent().expect("snapshot dir has a parent");
                let db = |source| self.inner.db_err("record snapshot", source);
                let result =
                    (|| {
                        fsutil::fsync_dir(parent).ctx("fsync directory", parent)?;
                        tx.execute(
                    "INSERT INTO snapshots(id, created, last_used, size, entries, description)
                     VALUES (?1, ?2, ?2, ?3, ?4, ?5)",
                    params![id.as_str(), now, size as i64, entries as i64, meta.description],
                )
                .map_err(db)?;
                        for (k, v) in &meta.metadata {
                            tx.execute(
                        "INSERT INTO snapshot_meta(snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                        params![id.as_str(), k, v],
                    )
                    .map_err(db)?;
                        }
                        tx.execute(
                            "INSERT OR REPLACE INTO snapshot_meta(snapshot_id, key, value) VALUES (?1, ?2, ?3)",
                            params![id.as_str(), CONTENT_HASH_META, content_hash],
                        )
                        .map_err(db)?;
                        for b in &meta.blobs {
                            tx.execute(
                        "INSERT OR IGNORE INTO snapshot_blobs(snapshot_id, digest) VALUES (?1, ?2)",
                        params![id.as_str(), b],
                    )
                    .map_err(db)?;
                        }
                        tx.execute(
                            "INSERT OR IGNORE INTO leases(owner, kind, target) VALUES (?1, ?2, ?3)",
                            params![owner, LEASE_SNAPSHOT, id.as_str()],
                        )
                        .map_err(db)?;
                        Ok(())
                    })();
                if result.is_err() {
                    // Not recorded: take the directory back out of snapshots/.
                    let _ = fsutil::remove_tree(&dest);
                }
                result
            })
            .inspect_err(|_| {
                // The transaction may have failed at commit; the directory is unrecorded.
                if staging.committed && !self.snapshot_recorded(&id) {
                    let _ = fsutil::remove_tree(&dest);
                }
            })?;
        Ok((id, tree))
    }

    fn snapshot_recorded(&self, id: &SnapshotId) -> bool {
        self.inner
            .read("read snapshot", |c| {
                c.query_row(
                    "SELECT 1 FROM snapshots WHERE id = ?1",
                    params![id.as_str()],
                    |_| Ok(()),
                )
                .optional()
            })
            .map(|r| r.is_some())
            .unwrap_or(true)
    }

    pub(crate) fn snapshot_dir(&self, id: &SnapshotId) -> PathBuf {
        self.inner.root.join("snapshots").join(id.as_str())
    }

    /// The directory of snapshot `id`, if it is recorded. Lease it (or get it from
    /// [`Store::load_result`]) before relying on it across a long operation.
    pub fn snapshot_path(&self, id: &SnapshotId) -> Result<Option<PathBuf>, StoreError> {
        Ok(self.snapshot_info(id)?.map(|i| i.path))
    }

    /// What the store knows about snapshot `id`.
    pub fn snapshot_info(&self, id: &SnapshotId) -> Result<Option<SnapshotInfo>, StoreError> {
        let row = self.inner.read("read snapshot", |c| {
            c.query_row(
                "SELECT created, last_used, size, entries, description FROM snapshots WHERE id = ?1",
                params![id.as_str()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
        })?;
        Ok(row.map(
            |(created, last_used, size, entries, description)| SnapshotInfo {
                path: self.snapshot_dir(id),
                id: id.clone(),
                created,
                last_used,
                size: size as u64,
                entries: entries as u64,
                description,
            },
        ))
    }

    /// All recorded snapshots, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, StoreError> {
        let rows: Vec<(String, i64, i64, i64, i64, String)> = self.inner.read("list snapshots", |c| {
            let mut st = c.prepare(
                "SELECT id, created, last_used, size, entries, description FROM snapshots ORDER BY created, id",
            )?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(id, created, last_used, size, entries, description)| {
                let id = SnapshotId::parse(&id)?;
                Ok(SnapshotInfo {
                    path: self.snapshot_dir(&id),
                    id,
                    created,
                    last_used,
                    size: size as u64,
                    entries: entries as u64,
                    description,
                })
            })
            .collect()
    }

    /// The key/value metadata of snapshot `id` (empty if none or unknown).
    pub fn snapshot_metadata(
        &self,
        id: &SnapshotId,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        self.inner.read("read snapshot metadata", |c| {
            let mut st = c.prepare(
                "SELECT key, value FROM snapshot_meta WHERE snapshot_id = ?1 AND key != ?2",
            )?;
            let rows = st.query_map(params![id.as_str(), CONTENT_HASH_META], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
            rows.collect()
        })
    }

    /// The content hash recorded when the snapshot was committed (`None` for one
    /// committed by a kiln that did not record it, or an unknown id).
    pub fn snapshot_content_hash(&self, id: &SnapshotId) -> Result<Option<String>, StoreError> {
        self.inner.read("read snapshot content hash", |c| {
            c.query_row(
                "SELECT value FROM snapshot_meta WHERE snapshot_id = ?1 AND key = ?2",
                params![id.as_str(), CONTENT_HASH_META],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Sets one metadata value of a recorded snapshot (the tree stays immutable; its
    /// metadata may grow, e.g. with a pin learnt later).
    pub fn set_snapshot_metadata(
        &self,
        id: &SnapshotId,
        key: &str,
        value: &str,
    ) -> Result<(), StoreError> {
        let found = self.inner.write("write snapshot metadata", |tx| {
            let exists = tx
                .query_row(
                    "SELECT 1 FROM snapshots WHERE id = ?1",
                    params![id.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if exists {
                tx.execute(
                    "INSERT INTO snapshot_meta(snapshot_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(snapshot_id, key) DO UPDATE SET value = excluded.value",
                    params![id.as_str(), key, value],
                )?;
            }
            Ok(exists)
        })?;
        if found {
            Ok(())
        } else {
            Err(StoreError::SnapshotNotFound { id: id.to_string() })
        }
    }

    /// Leases snapshot `id` inside an existing write transaction (cache lookups).
    pub(crate) fn lease_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: &str,
    ) -> rusqlite::Result<bool> {
        lease_snapshot_tx(tx, &self.inner.owner, id)
    }
}
