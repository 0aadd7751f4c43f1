//! `kiln cache verify [--repair]`: blobs against their digests, snapshots against the
//! content hash recorded at commit.
//!
//! Verification only reads. With `repair`, what failed is dropped the way prune drops
//! things (rows first, inside a write transaction; the directory or file after it
//! commits), so the next build fetches or builds it again. A snapshot a live build has
//! leased is reported but not removed.

use std::fmt;
use std::fs;
use std::io;
use std::path::PathBuf;

use rusqlite::params;
use serde::Serialize;
use sha2::Digest;

use super::cache::release_tx;
use super::error::{IoContext, StoreError};
use super::fsutil;
use super::gc::Owners;
use super::snapshot::CONTENT_HASH_META;
use super::{Store, LEASE_SNAPSHOT};

/// One item that failed verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// `sha256:<hex>` of a blob, or a snapshot id.
    pub item: String,
    /// What is wrong.
    pub reason: String,
    /// Whether `--repair` removed it.
    pub removed: bool,
}

/// What `kiln cache verify` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Blobs hashed.
    pub blobs_checked: u64,
    /// Blobs whose content does not match their name.
    pub blobs_failed: Vec<Failure>,
    /// Snapshots hashed.
    pub snapshots_checked: u64,
    /// Snapshots whose tree does not match the recorded hash (or whose tree is gone).
    pub snapshots_failed: Vec<Failure>,
    /// Snapshots recorded without a content hash (by an older kiln): not checkable.
    pub snapshots_without_hash: u64,
}

impl VerifyReport {
    /// Whether everything checked was intact.
    pub fn ok(&self) -> bool {
        self.blobs_failed.is_empty() && self.snapshots_failed.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "blobs:     {} checked, {} failed",
            self.blobs_checked,
            self.blobs_failed.len()
        )?;
        writeln!(
            f,
            "snapshots: {} checked, {} failed, {} without a recorded hash",
            self.snapshots_checked,
            self.snapshots_failed.len(),
            self.snapshots_without_hash
        )?;
        for x in self.blobs_failed.iter().chain(&self.snapshots_failed) {
            writeln!(
                f,
                "  {}: {}{}",
                x.item,
                x.reason,
                if x.removed { " (removed)" } else { "" }
            )?;
        }
        Ok(())
    }
}

fn file_sha256(path: &std::path::Path) -> io::Result<String> {
    let (h, _) = super::content::hash_prefix(&mut fs::File::open(path)?)?;
    Ok(hex::encode(h.finalize()))
}

impl Store {
    /// Whether a live owner (a running build) holds a lease on snapshot `id`.
    fn leased_by_live_owner(&self, owners: &mut Owners<'_>, id: &str) -> Result<bool, StoreError> {
        let holders: Vec<String> = self.inner.read("read leases", |c| {
            let mut st = c.prepare("SELECT owner FROM leases WHERE kind = ?1 AND target = ?2")?;
            let rows = st.query_map(params![LEASE_SNAPSHOT, id], |r| r.get(0))?;
            rows.collect()
        })?;
        for h in holders {
            if h != self.inner.owner && owners.alive(&h)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Checks every blob against its digest and every snapshot against its recorded
    /// content hash; with `repair`, drops what failed (see the module docs).
    pub fn verify(&self, repair: bool) -> Result<VerifyReport, StoreError> {
        let root = self.inner.root.clone();
        let mut report = VerifyReport::default();

        // Blobs: the file name is the digest.
        let blob_dir = root.join("content/blobs/sha256");
        let mut bad_blobs: Vec<(String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(&blob_dir).ctx("read folder", &blob_dir)? {
            let entry = entry.ctx("read folder", &blob_dir)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            report.blobs_checked += 1;
            let reason = match file_sha256(&path) {
                Ok(actual) if actual == name => continue,
                Ok(actual) => format!("content has digest sha256:{actual}"),
                Err(e) => format!("cannot read: {e}"),
            };
            bad_blobs.push((name.clone(), path));
            report.blobs_failed.push(Failure {
                item: format!("sha256:{name}"),
                reason,
                removed: false,
            });
        }

        // Snapshots: the recorded hash against the tree as it is now.
        let snaps: Vec<(String, Option<String>)> = self.inner.read("read snapshots", |c| {
            let mut st = c.prepare(
                "SELECT s.id,
                    (SELECT m.value FROM snapshot_meta m WHERE m.snapshot_id = s.id AND m.key = ?1)
                 FROM snapshots s ORDER BY s.id",
            )?;
            let rows = st.query_map(params![CONTENT_HASH_META], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut owners = Owners::new(self, false);
        let mut bad_snaps: Vec<(usize, String)> = Vec::new();
        for (id, recorded) in snaps {
            let Some(recorded) = recorded else {
                report.snapshots_without_hash += 1;
                continue;
            };
            report.snapshots_checked += 1;
            let dir = root.join("snapshots").join(&id);
            let reason = match crate::contenthash::TreeHash::compute(&dir) {
                Ok(t) if t.root_digest() == recorded => continue,
                Ok(t) => format!(
                    "tree has content hash {}, recorded {recorded}",
                    t.root_digest()
                ),
                Err(e) if e.path == dir && e.source.kind() == io::ErrorKind::NotFound => {
                    "its folder is missing".to_string()
                }
                Err(e) => format!("cannot read {}: {}", e.path.display(), e.source),
            };
            let leased = self.leased_by_live_owner(&mut owners, &id)?;
            let reason = if leased && repair {
                format!("{reason}; in use by a running build, not removed")
            } else {
                reason
            };
            if !leased {
                bad_snaps.push((report.snapshots_failed.len(), id.clone()));
            }
            report.snapshots_failed.push(Failure {
                item: id,
                reason,
                removed: false,
            });
        }

        if !repair {
            return Ok(report);
        }
        // Rows first, under the write lock; files after the commit.
        let mut doomed_dirs = Vec::new();
        self.inner
            .write_with("drop what failed verification", |tx| {
                let db = |source| self.inner.db_err("drop what failed verification", source);
                for (i, id) in &bad_snaps {
                    // Leases of dead owners go with the snapshot.
                    tx.execute(
                        "DELETE FROM leases WHERE kind = ?1 AND target = ?2",
                        params![LEASE_SNAPSHOT, id],
                    )
                    .map_err(db)?;
                    release_tx(tx, id).map_err(db)?;
                    tx.execute("DELETE FROM snapshots WHERE id = ?1", params![id])
                        .map_err(db)?;
                    doomed_dirs.push(root.join("snapshots").join(id));
                    report.snapshots_failed[*i].removed = true;
                }
                for (name, _) in &bad_blobs {
                    tx.execute(
                        "DELETE FROM ingest_records WHERE digest = ?1",
                        params![format!("sha256:{name}")],
                    )
                    .map_err(db)?;
                }
                Ok(())
            })?;
        for dir in doomed_dirs {
            let trash = self.tmp_path("trash");
            match fs::rename(&dir, &trash) {
                Ok(()) => fsutil::remove_tree(&trash).ctx("remove", &trash)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(StoreError::io("move snapshot to trash", &dir, e)),
            }
        }
        for ((_, path), failure) in bad_blobs.iter().zip(report.blobs_failed.iter_mut()) {
            match fs::remove_file(path) {
                Ok(()) => failure.removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => failure.removed = true,
                Err(e) => return Err(StoreError::io("remove blob", path, e)),
            }
        }
        Ok(report)
    }
}
