//! The cache index, modelled on BuildKit's cache storage (buildkit-sources.md §4).
//!
//! A cache key is a node id (a string: `sha256:<hex>` or `random:<hex>` for root keys,
//! any id the solver picks for others). Nodes are joined by *links*
//! `(id, input, output, digest, selector) -> target`; the reverse direction gives the
//! *backlinks*. A key has *results*: snapshot ids with a creation time. A key exists
//! while it has results or outgoing links. Results can only name recorded snapshots, and
//! disappear with them.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::error::StoreError;
use super::fsutil;
use super::snapshot::SnapshotId;
use super::Store;

/// A link between two cache keys: "input `input` of an op with CacheMap digest `digest`,
/// taking output `output` of the source key through `selector`".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct CacheLink {
    /// Input index of the target op.
    pub input: u32,
    /// Output index of the target op.
    pub output: u32,
    /// The target op's CacheMap digest.
    pub digest: String,
    /// Selector digest (empty if none).
    pub selector: String,
}

/// One result stored under a cache key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CacheResult {
    /// The snapshot holding the result.
    pub snapshot: SnapshotId,
    /// When the result was saved (seconds since the Unix epoch).
    pub created: i64,
}

/// BuildKit's root key id: `sha256("<digest>@<output>")`, keeping a `random:` prefix.
pub fn root_key(digest: &str, output: u32) -> String {
    let hex = hex::encode(Sha256::digest(format!("{digest}@{output}").as_bytes()));
    if digest.starts_with("random:") {
        format!("random:{hex}")
    } else {
        format!("sha256:{hex}")
    }
}

impl Store {
    /// The root key for an op with no inputs and CacheMap digest `digest`, if the index
    /// knows it (it has results or links).
    pub fn query_root(&self, digest: &str, output: u32) -> Result<Option<String>, StoreError> {
        let id = root_key(digest, output);
        Ok(self.key_exists(&id)?.then_some(id))
    }

    /// Whether key `id` has results or outgoing links.
    pub fn key_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.inner.read("look up cache key", |c| {
            let found = c
                .query_row(
                    "SELECT 1 WHERE EXISTS (SELECT 1 FROM cache_results WHERE key = ?1)
                        OR EXISTS (SELECT 1 FROM cache_links WHERE id = ?1)",
                    params![id],
                    |_| Ok(()),
                )
                .optional()?;
            Ok(found.is_some())
        })
    }

    /// Records the link `id --link--> target` (idempotent).
    pub fn add_link(&self, id: &str, link: &CacheLink, target: &str) -> Result<(), StoreError> {
        self.inner.write("add cache link", |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO cache_links(id, input, output, digest, selector, target)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    id,
                    link.input,
                    link.output,
                    link.digest,
                    link.selector,
                    target
                ],
            )?;
            Ok(())
        })
    }

    /// Whether the link `id --link--> target` is recorded.
    pub fn has_link(&self, id: &str, link: &CacheLink, target: &str) -> Result<bool, StoreError> {
        self.inner.read("look up cache link", |c| {
            Ok(c.query_row(
                "SELECT 1 FROM cache_links WHERE id = ?1 AND input = ?2 AND output = ?3
                   AND digest = ?4 AND selector = ?5 AND target = ?6",
                params![
                    id,
                    link.input,
                    link.output,
                    link.digest,
                    link.selector,
                    target
                ],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
        })
    }

    /// The targets reachable from `id` through `link`, sorted.
    pub fn walk_links(&self, id: &str, link: &CacheLink) -> Result<Vec<String>, StoreError> {
        self.inner.read("walk cache links", |c| {
            let mut st = c.prepare_cached(
                "SELECT target FROM cache_links WHERE id = ?1 AND input = ?2 AND output = ?3
                   AND digest = ?4 AND selector = ?5 ORDER BY target",
            )?;
            let rows = st.query_map(
                params![id, link.input, link.output, link.digest, link.selector],
                |r| r.get(0),
            )?;
            rows.collect()
        })
    }

    /// The links pointing at `target`: `(source id, link)` pairs, sorted.
    pub fn walk_backlinks(&self, target: &str) -> Result<Vec<(String, CacheLink)>, StoreError> {
        self.inner.read("walk cache backlinks", |c| {
            let mut st = c.prepare_cached(
                "SELECT id, input, output, digest, selector FROM cache_links WHERE target = ?1
                 ORDER BY id, input, output, digest, selector",
            )?;
            let rows = st.query_map(params![target], |r| {
                Ok((
                    r.get(0)?,
                    CacheLink {
                        input: r.get(1)?,
                        output: r.get(2)?,
                        digest: r.get(3)?,
                        selector: r.get(4)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Saves `snapshot` as a result of key `key` (created now; idempotent).
    /// Fails with [`StoreError::SnapshotNotFound`] if the snapshot is not recorded.
    pub fn save_result(&self, key: &str, snapshot: &SnapshotId) -> Result<(), StoreError> {
        let saved = self.inner.write("save cache result", |tx| {
            let exists = tx
                .query_row("SELECT 1 FROM snapshots WHERE id = ?1", params![snapshot.as_str()], |_| Ok(()))
                .optional()?
                .is_some();
            if exists {
                tx.execute(
                    "INSERT OR IGNORE INTO cache_results(key, snapshot_id, created) VALUES (?1, ?2, ?3)",
                    params![key, snapshot.as_str(), fsutil::now_secs()],
                )?;
            }
            Ok(exists)
        })?;
        if saved {
            Ok(())
        } else {
            Err(StoreError::SnapshotNotFound {
                id: snapshot.to_string(),
            })
        }
    }

    /// The results of key `key`, newest first. Only recorded snapshots appear.
    pub fn results(&self, key: &str) -> Result<Vec<CacheResult>, StoreError> {
        let rows: Vec<(String, i64)> = self.inner.read("list cache results", |c| {
            let mut st = c.prepare_cached(
                "SELECT snapshot_id, created FROM cache_results WHERE key = ?1 ORDER BY created DESC, snapshot_id",
            )?;
            let rows = st.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(id, created)| {
                Ok(CacheResult {
                    snapshot: SnapshotId::parse(&id)?,
                    created,
                })
            })
            .collect()
    }

    /// The newest result of `key`, leased to this owner in the same transaction (so a
    /// concurrent prune cannot remove it in between), or `None`.
    pub fn load_result(&self, key: &str) -> Result<Option<CacheResult>, StoreError> {
        let row: Option<(String, i64)> = self.inner.write("load cache result", |tx| {
            let row: Option<(String, i64)> = tx
                .query_row(
                    "SELECT snapshot_id, created FROM cache_results WHERE key = ?1
                     ORDER BY created DESC, snapshot_id LIMIT 1",
                    params![key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, _)) = &row {
                if !self.lease_in(tx, id)? {
                    return Ok(None);
                }
            }
            Ok(row)
        })?;
        row.map(|(id, created)| {
            Ok(CacheResult {
                snapshot: SnapshotId::parse(&id)?,
                created,
            })
        })
        .transpose()
    }

    /// The keys that have `snapshot` as a result, sorted.
    pub fn keys_for_result(&self, snapshot: &SnapshotId) -> Result<Vec<String>, StoreError> {
        self.inner.read("list keys of a result", |c| {
            let mut st = c.prepare_cached(
                "SELECT key FROM cache_results WHERE snapshot_id = ?1 ORDER BY key",
            )?;
            let rows = st.query_map(params![snapshot.as_str()], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Removes `snapshot` from every key's results, then drops keys left with neither
    /// results nor links (and the links leading to them, recursively), as BuildKit's
    /// `Release` does. The snapshot itself stays until prune.
    pub fn release(&self, snapshot: &SnapshotId) -> Result<(), StoreError> {
        self.inner.write("release cache result", |tx| {
            release_tx(tx, snapshot.as_str())
        })
    }
}

/// [`Store::release`] inside a transaction.
pub(crate) fn release_tx(tx: &rusqlite::Transaction<'_>, snapshot: &str) -> rusqlite::Result<()> {
    let keys: Vec<String> = {
        let mut st = tx.prepare_cached("SELECT key FROM cache_results WHERE snapshot_id = ?1")?;
        let rows = st.query_map(params![snapshot], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    tx.execute(
        "DELETE FROM cache_results WHERE snapshot_id = ?1",
        params![snapshot],
    )?;
    let mut work = keys;
    while let Some(key) = work.pop() {
        let empty = tx
            .query_row(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM cache_results WHERE key = ?1)
                    OR EXISTS (SELECT 1 FROM cache_links WHERE id = ?1)",
                params![key],
                |_| Ok(()),
            )
            .optional()?
            .is_none();
        if !empty {
            continue;
        }
        let parents: Vec<String> = {
            let mut st =
                tx.prepare_cached("SELECT DISTINCT id FROM cache_links WHERE target = ?1")?;
            let rows = st.query_map(params![key], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        tx.execute("DELETE FROM cache_links WHERE target = ?1", params![key])?;
        work.extend(parents);
    }
    Ok(())
}
