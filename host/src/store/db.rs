//! The SQLite database `<root>/kiln.db`: connection setup and the versioned schema.
//!
//! The database runs in WAL mode with a long busy timeout so that several `kiln`
//! processes share it; every write that must be atomic with a check runs in a
//! `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two writers never
//! deadlock upgrading read locks). The schema version lives in `PRAGMA user_version`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::error::StoreError;

/// The newest schema version this build writes and reads.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(120);

/// Schema version 1. Tables:
/// - `snapshots`: one row per committed snapshot directory `snapshots/<id>`.
/// - `snapshot_meta`: key/value metadata per snapshot (image config, pins, …).
/// - `snapshot_blobs`: blobs a snapshot refers to (kept while the snapshot lives).
/// - `cache_links`: BuildKit's links `(id, input, output, digest, selector) -> target`;
///   the index on `target` gives the backlinks.
/// - `cache_results`: `key -> snapshot id + created`; the index on `snapshot_id` gives
///   BuildKit's by-result bucket.
/// - `ingest_records`: for each ingest ref (hashed), the blob it last produced and the
///   validator (ETag) it had.
/// - `leases`: snapshots and blobs in use by a live owner (a process's [`super::Store`]).
/// - `kv`: namespaced key/value metadata not tied to a snapshot.
const SCHEMA_V1: &str = "
CREATE TABLE snapshots (
    id          TEXT PRIMARY KEY,
    created     INTEGER NOT NULL,
    last_used   INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    entries     INTEGER NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE TABLE snapshot_meta (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, key)
);
CREATE TABLE snapshot_blobs (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    digest      TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, digest)
);
CREATE INDEX snapshot_blobs_digest ON snapshot_blobs(digest);
CREATE TABLE cache_links (
    id       TEXT NOT NULL,
    input    INTEGER NOT NULL,
    output   INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    selector TEXT NOT NULL,
    target   TEXT NOT NULL,
    PRIMARY KEY (id, input, output, digest, selector, target)
);
CREATE INDEX cache_links_target ON cache_links(target);
CREATE TABLE cache_results (
    key         TEXT NOT NULL,
    snapshot_id TEXT NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
    created     INTEGER NOT NULL,
    PRIMARY KEY (key, snapshot_id)
);
CREATE INDEX cache_results_snapshot ON cache_results(snapshot_id);
CREATE TABLE ingest_records (
    ref_hash  TEXT PRIMARY KEY,
    digest    TEXT NOT NULL,
    size      INTEGER NOT NULL,
    validator TEXT,
    updated   INTEGER NOT NULL
);
CREATE TABLE leases (
    owner  TEXT NOT NULL,
    kind   TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (owner, kind, target)
);
CREATE INDEX leases_target ON leases(kind, target);
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     TEXT NOT NULL,
    updated   INTEGER NOT NULL,
    PRIMARY KEY (namespace, key)
);
";

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
pub(crate) fn open(path: &Path) -> Result<Connection, StoreError> {
    let err = |action: &'static str| {
        let path = path.to_path_buf();
        move |source| StoreError::Db {
            action,
            path,
            source,
        }
    };
    let mut conn = Connection::open(path).map_err(err("open"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(err("set busy timeout"))?;
    // journal_mode=WAL is persistent; switching needs a moment of exclusivity, which the
    // busy handler waits for.
    // SQLite answers SQLITE_BUSY here without calling the busy handler while another
    // process converts a fresh database at the same moment, so retry by hand.
    let started = std::time::Instant::now();
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            r => break r.map_err(err("enable WAL"))?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NoWal {
            path: path.to_path_buf(),
            mode,
        });
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
        .map_err(err("set pragmas"))?;

    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("begin schema migration"))?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err("read schema version"))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            path: path.to_path_buf(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < 1 {
        tx.execute_batch(SCHEMA_V1).map_err(err("create schema"))?;
    }
    if version < SCHEMA_VERSION {
        tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
            .map_err(err("write schema version"))?;
    }
    tx.commit().map_err(err("commit schema migration"))?;
    Ok(conn)
}
