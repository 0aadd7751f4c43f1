//! Source results in the store: the snapshot of a source op, found by its cache keys or
//! made once (per key, across processes) and saved under every key it produced.
//!
//! Both `kiln source fetch` and the solver's source steps go through
//! [`snapshot_source`], so a source fetched once is a cache hit for a build and the
//! other way round.

use std::sync::Arc;

use kiln_plugin_api::ErrorCode;
use sha2::{Digest, Sha256};

use crate::job::Job;
use crate::source_manager::{CacheMap, SourceError, SourceOp};
use crate::store::{root_key, SnapshotId, SnapshotMeta, Store};

/// The metadata key under which a source snapshot records its pin.
pub const META_PIN: &str = "kiln.source.pin";
/// The metadata key under which a source snapshot records its canonical identifier.
pub const META_IDENTIFIER: &str = "kiln.source.identifier";

/// A source result in the store.
#[derive(Clone, Debug)]
pub struct SourceSnapshot {
    /// The snapshot.
    pub id: SnapshotId,
    /// True when it was found in the cache (no snapshot was made).
    pub cached: bool,
}

fn store_error(op: &SourceOp, e: impl std::fmt::Display) -> SourceError {
    SourceError::new(
        ErrorCode::INTERNAL,
        format!("source {}: store: {e}", op.identifier().canonical),
    )
}

/// The digest under which the cache index files a source result: BuildKit's source
/// digest (`sha256("buildkit.source.v0:" + key)`) mixed with the id of the plugin that
/// answered the key, `sha256("kiln.source.index.v1\0" + plugin_id + "\0" + digest)`.
///
/// The BuildKit digest itself stays what `source resolve` shows; only the index is
/// scoped, so a plugin that answers another plugin's key string (by accident or on
/// purpose) cannot be served, or serve, the other plugin's content. A `random:`
/// (session) digest keeps its prefix and is never looked up.
pub fn index_digest(plugin_id: &str, digest: &str) -> String {
    let hex = hex::encode(Sha256::digest(
        format!("kiln.source.index.v1\0{plugin_id}\0{digest}").as_bytes(),
    ));
    if digest.starts_with("random:") {
        format!("random:{hex}")
    } else {
        format!("sha256:{hex}")
    }
}

/// The root keys (output 0) of the cacheable index digests of `maps`; `random:`
/// digests (session-scoped sources) are never looked up or saved.
pub fn cacheable_root_keys(maps: &[CacheMap]) -> Vec<String> {
    maps.iter()
        .filter(|m| m.index_digest.starts_with("sha256:"))
        .map(|m| root_key(&m.index_digest, 0))
        .collect()
}

/// Finds the newest result saved under any of `keys` (in order), leased to this
/// process so that a concurrent prune keeps it.
pub fn lookup(
    store: &Store,
    keys: &[String],
) -> Result<Option<SnapshotId>, crate::store::StoreError> {
    for k in keys {
        if let Some(r) = store.load_result(k)? {
            return Ok(Some(r.snapshot));
        }
    }
    Ok(None)
}

/// The snapshot of `op` for the cache maps `maps` (at least one cacheable): from the
/// cache, or made by the plugin into a staging directory, committed, and saved under
/// every key. A per-key lock makes two processes produce it once.
pub async fn snapshot_source(
    store: &Arc<Store>,
    op: &SourceOp,
    maps: &[CacheMap],
    job: &Arc<Job>,
    step: &str,
) -> Result<SourceSnapshot, SourceError> {
    let keys = cacheable_root_keys(maps);
    // The strongest key is the lock, as in the solver's source steps, so that a fetch
    // and a build of one source in two processes produce it once.
    let Some(lock_name) = keys.last().cloned() else {
        return Err(SourceError::new(
            ErrorCode::INTERNAL,
            format!("source {}: no cacheable key", op.identifier().canonical),
        ));
    };
    let (s, k, cancel) = (store.clone(), keys.clone(), job.cancel.clone());
    let found = tokio::task::spawn_blocking(move || -> Result<_, crate::store::StoreError> {
        let hit = match lookup(&s, &k)? {
            Some(id) => Some(id),
            // Not there: take the key lock, then look again (another process may have
            // made it meanwhile).
            None => {
                let lock = s.lock_key_cancellable(&lock_name, &cancel)?;
                match lookup(&s, &k)? {
                    Some(id) => Some(id),
                    None => return Ok((None, Some(lock))),
                }
            }
        };
        // A hit under one key is saved under every key (BuildKit: a result is found
        // by each of its keys from then on).
        if let Some(id) = &hit {
            for key in &k {
                s.save_result(key, id)?;
            }
        }
        Ok((hit, None))
    })
    .await
    .map_err(|e| store_error(op, e))?
    .map_err(|e| store_error(op, e))?;
    let (hit, _lock) = found;
    if let Some(id) = hit {
        return Ok(SourceSnapshot { id, cached: true });
    }

    let s = store.clone();
    let staging = tokio::task::spawn_blocking(move || s.stage())
        .await
        .map_err(|e| store_error(op, e))?
        .map_err(|e| store_error(op, e))?;
    let metadata = op.snapshot(staging.path(), job, step).await?;
    let mut meta = SnapshotMeta {
        description: op.identifier().canonical.clone(),
        ..Default::default()
    };
    meta.metadata.extend(metadata);
    meta.metadata.insert(
        META_IDENTIFIER.to_string(),
        op.identifier().canonical.clone(),
    );
    if let Some(pin) = op.pin() {
        meta.metadata.insert(META_PIN.to_string(), pin);
    }
    let s = store.clone();
    let id =
        tokio::task::spawn_blocking(move || -> Result<SnapshotId, crate::store::StoreError> {
            let id = s.commit(staging, meta)?;
            for k in &keys {
                s.save_result(k, &id)?;
            }
            s.lease_snapshot(&id)?;
            Ok(id)
        })
        .await
        .map_err(|e| store_error(op, e))?
        .map_err(|e| store_error(op, e))?;
    Ok(SourceSnapshot { id, cached: false })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_digests_are_scoped_by_plugin() {
        let d = crate::source_manager::source_key_digest("testsrc:a");
        let a = index_digest("io.example.a", &d);
        let b = index_digest("io.example.b", &d);
        assert_ne!(a, b);
        assert_ne!(a, d);
        assert!(a.starts_with("sha256:") && a.len() == 71, "{a}");
        let want = hex::encode(Sha256::digest(
            format!("kiln.source.index.v1\0io.example.a\0{d}").as_bytes(),
        ));
        assert_eq!(a, format!("sha256:{want}"));
        let r = crate::source_manager::source_key_digest("session:x");
        assert!(index_digest("io.example.a", &r).starts_with("random:"));
    }
}
