//! Disk usage (`kiln cache du`) and pruning (`kiln cache prune`).
//!
//! Prune never removes what a live owner uses: its staging and trash directories under
//! `tmp/`, snapshots and blobs it leased, ingests it holds open. Snapshots are decided
//! inside one SQLite write transaction (blobs in a second one after it), so that commits,
//! leases and prune exclude each other. Only rows change inside it: directories are
//! renamed into trash and deleted after it commits, so a failure or a kill at any point
//! leaves every recorded snapshot with its directory (a directory without a record is
//! harmless, and collected by the next prune). A failure to remove one thing does not
//! stop the rest; the first error is returned at the end.
//!
//! What goes:
//! - always: staging/trash directories of dead owners, unrecorded snapshot directories
//!   (a crash between rename and record), records whose directory vanished, leases of
//!   dead owners, unused lock files, snapshots that no cache result refers to and no
//!   lease protects, ingests untouched for [`STALE_INGEST`];
//! - with `keep_duration`: unleased snapshots not used for that long (with their cache
//!   results), unleased blobs no snapshot refers to and not used for that long, and
//!   ingests untouched for that long;
//! - with `all`: every unleased snapshot, blob and ingest not currently open.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::params;
use serde::Serialize;

use super::cache::release_tx;
use super::error::{IoContext, StoreError};
use super::fsutil;
use super::lock::FileLock;
use super::{Store, LEASE_BLOB, LEASE_SNAPSHOT};

/// An ingest nobody touched for this long is removed by every prune.
pub const STALE_INGEST: Duration = Duration::from_secs(24 * 3600);

/// A `.new-` owner lock file older than this whose process is gone is removed.
const STALE_NEW_OWNER: i64 = 60;

/// How many items and how many bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Number of items.
    pub count: u64,
    /// Apparent size in bytes.
    pub bytes: u64,
}

impl Usage {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// What the store holds (`kiln cache du`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DuReport {
    /// The store root.
    pub root: PathBuf,
    /// Everything below, in bytes (database included).
    pub total_bytes: u64,
    /// Recorded snapshots.
    pub snapshots: Usage,
    /// Recorded snapshots currently leased by a live build.
    pub snapshots_in_use: Usage,
    /// Recorded snapshots no cache result refers to.
    pub snapshots_unreferenced: Usage,
    /// Verified blobs in the content store.
    pub blobs: Usage,
    /// Partial downloads (resumable ingests).
    pub ingests: Usage,
    /// Staging and trash directories of live builds.
    pub staging_in_use: Usage,
    /// Orphaned staging and trash directories left by dead builds.
    pub staging_orphaned: Usage,
    /// Snapshot directories without a record (a build died while committing).
    pub snapshots_unrecorded: Usage,
    /// Plugin state directories.
    pub plugin_state: Usage,
    /// Bytes of the SQLite database and its WAL.
    pub database_bytes: u64,
    /// What `kiln cache prune` (no flags) would free now, in bytes.
    pub reclaimable_bytes: u64,
    /// What `kiln cache prune --all` would free now, in bytes.
    pub reclaimable_all_bytes: u64,
}

impl fmt::Display for DuReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, name: &str, u: &Usage| {
            writeln!(f, "{name:<24}{:>8}  {:>12}", u.count, human(u.bytes))
        };
        writeln!(f, "root: {}", self.root.display())?;
        writeln!(f, "{:<24}{:>8}  {:>12}", "", "COUNT", "SIZE")?;
        row(f, "snapshots", &self.snapshots)?;
        row(f, "  in use", &self.snapshots_in_use)?;
        row(f, "  unreferenced", &self.snapshots_unreferenced)?;
        row(f, "blobs", &self.blobs)?;
        row(f, "partial downloads", &self.ingests)?;
        row(f, "staging in use", &self.staging_in_use)?;
        row(f, "orphaned staging", &self.staging_orphaned)?;
        row(f, "unrecorded snapshots", &self.snapshots_unrecorded)?;
        row(f, "plugin state", &self.plugin_state)?;
        writeln!(
            f,
            "{:<24}{:>8}  {:>12}",
            "database",
            "",
            human(self.database_bytes)
        )?;
        writeln!(f, "total: {}", human(self.total_bytes))?;
        writeln!(
            f,
            "reclaimable: {} (prune), {} (prune --all)",
            human(self.reclaimable_bytes),
            human(self.reclaimable_all_bytes)
        )
    }
}

/// Formats a byte count with a binary unit.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// What to prune (`kiln cache prune [--all] [--keep-duration DUR]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneOptions {
    /// Remove every snapshot, blob and ingest that no live build uses.
    pub all: bool,
    /// Also remove what was not used for this long.
    pub keep_duration: Option<Duration>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    /// Recorded snapshots removed (with their cache results).
    pub snapshots: Usage,
    /// Blobs removed.
    pub blobs: Usage,
    /// Partial downloads removed.
    pub ingests: Usage,
    /// Orphaned staging and trash directories removed.
    pub staging: Usage,
    /// Unrecorded snapshot directories removed.
    pub unrecorded: Usage,
    /// Records whose snapshot directory had vanished.
    pub dangling_records: u64,
    /// Leases of dead owners dropped.
    pub dead_leases: u64,
    /// Bytes freed in all.
    pub freed_bytes: u64,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "removed {} snapshots ({})",
            self.snapshots.count,
            human(self.snapshots.bytes)
        )?;
        writeln!(
            f,
            "removed {} blobs ({})",
            self.blobs.count,
            human(self.blobs.bytes)
        )?;
        writeln!(
            f,
            "removed {} partial downloads ({})",
            self.ingests.count,
            human(self.ingests.bytes)
        )?;
        writeln!(
            f,
            "removed {} orphaned staging directories ({})",
            self.staging.count,
            human(self.staging.bytes)
        )?;
        writeln!(
            f,
            "removed {} unrecorded snapshot directories ({})",
            self.unrecorded.count,
            human(self.unrecorded.bytes)
        )?;
        writeln!(f, "total freed: {}", human(self.freed_bytes))
    }
}

/// Whether owners are alive, probed once per owner.
pub(super) struct Owners<'a> {
    root: &'a Path,
    dir: PathBuf,
    me: &'a str,
    known: HashMap<String, bool>,
    /// Remove the lock files of dead owners while probing.
    reap: bool,
}

impl<'a> Owners<'a> {
    pub(super) fn new(store: &'a Store, reap: bool) -> Self {
        Owners {
            root: &store.inner.root,
            dir: store.inner.root.join("locks/owners"),
            me: &store.inner.owner,
            known: HashMap::new(),
            reap,
        }
    }

    pub(super) fn alive(&mut self, owner: &str) -> Result<bool, StoreError> {
        if owner == self.me {
            return Ok(true);
        }
        if let Some(&a) = self.known.get(owner) {
            return Ok(a);
        }
        let alive = if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_hexdigit()) {
            false
        } else {
            let path = self.dir.join(owner);
            match FileLock::try_existing(self.root, &path)? {
                Some(lock) => {
                    if self.reap {
                        lock.remove();
                    }
                    false
                }
                // Held by someone (alive) or missing (dead).
                None => path.exists(),
            }
        };
        self.known.insert(owner.to_string(), alive);
        Ok(alive)
    }
}

/// The owner part of a `tmp/` entry name (`<owner>.<kind>.<rand>`).
fn tmp_owner(name: &str) -> &str {
    name.split('.').next().unwrap_or("")
}

fn list_dir(dir: &Path) -> Result<Vec<(String, PathBuf, fs::Metadata)>, StoreError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io("list directory", dir, e)),
    };
    for entry in rd {
        let entry = entry.ctx("list directory", dir)?;
        let path = entry.path();
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io("stat", &path, e)),
        };
        out.push((entry.file_name().to_string_lossy().into_owned(), path, meta));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// When an ingest was last written: its data file's mtime (appending does not touch
/// the directory's), else the directory's.
fn ingest_mtime(dir: &Path, dir_meta: &fs::Metadata) -> i64 {
    match fs::metadata(dir.join("data")) {
        Ok(m) => fsutil::mtime_secs(&m).max(fsutil::mtime_secs(dir_meta)),
        Err(_) => fsutil::mtime_secs(dir_meta),
    }
}

fn size_of(path: &Path) -> Result<u64, StoreError> {
    Ok(fsutil::tree_size(path).ctx("measure", path)?.0)
}

impl Store {
    /// One string column of a query without parameters.
    fn strings(&self, sql: &str) -> Result<BTreeSet<String>, StoreError> {
        self.inner.read("measure the store", |c| {
            let mut st = c.prepare(sql)?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Targets of `kind` leased by live owners.
    fn live_leases(
        &self,
        kind: &str,
        owners: &mut Owners<'_>,
    ) -> Result<BTreeSet<String>, StoreError> {
        let leases: Vec<(String, String)> = self.inner.read("measure leases", |c| {
            let mut st = c.prepare("SELECT owner, target FROM leases WHERE kind = ?1")?;
            let rows = st.query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let mut live = BTreeSet::new();
        for (owner, target) in leases {
            if owners.alive(&owner)? {
                live.insert(target);
            }
        }
        Ok(live)
    }

    /// Measures what the store holds. Read-only: it removes nothing.
    pub fn du(&self) -> Result<DuReport, StoreError> {
        let root = &self.inner.root;
        let mut r = DuReport {
            root: root.clone(),
            ..Default::default()
        };
        let mut owners = Owners::new(self, false);

        let snaps: Vec<(String, i64)> = self.inner.read("measure snapshots", |c| {
            let mut st = c.prepare("SELECT id, size FROM snapshots")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })?;
        let referenced = self.strings("SELECT DISTINCT snapshot_id FROM cache_results")?;
        let live_leased = self.live_leases(LEASE_SNAPSHOT, &mut owners)?;
        let recorded: BTreeSet<&str> = snaps.iter().map(|s| s.0.as_str()).collect();
        for (id, size) in &snaps {
            let size = *size as u64;
            r.snapshots.add(size);
            if live_leased.contains(id) {
                r.snapshots_in_use.add(size);
            } else {
                r.reclaimable_all_bytes += size;
                if !referenced.contains(id) {
                    r.snapshots_unreferenced.add(size);
                    r.reclaimable_bytes += size;
                }
            }
        }
        for (name, path, _) in list_dir(&root.join("snapshots"))? {
            if !recorded.contains(name.as_str()) {
                let b = size_of(&path)?;
                r.snapshots_unrecorded.add(b);
                r.reclaimable_bytes += b;
                r.reclaimable_all_bytes += b;
            }
        }

        let referenced_blobs = self.strings("SELECT DISTINCT digest FROM snapshot_blobs")?;
        let live_blobs = self.live_leases(LEASE_BLOB, &mut owners)?;
        for (name, _, meta) in list_dir(&root.join("content/blobs/sha256"))? {
            r.blobs.add(meta.len());
            let digest = format!("sha256:{name}");
            if !live_blobs.contains(&digest) && !referenced_blobs.contains(&digest) {
                r.reclaimable_all_bytes += meta.len();
            }
        }
        let now = fsutil::now_secs();
        for (_, path, meta) in list_dir(&root.join("content/ingest"))? {
            let b = size_of(&path)?;
            r.ingests.add(b);
            r.reclaimable_all_bytes += b;
            if now - ingest_mtime(&path, &meta) > STALE_INGEST.as_secs() as i64 {
                r.reclaimable_bytes += b;
            }
        }
        for (name, path, _) in list_dir(&root.join("tmp"))? {
            let b = size_of(&path)?;
            if owners.alive(tmp_owner(&name))? {
                r.staging_in_use.add(b);
            } else {
                r.staging_orphaned.add(b);
                r.reclaimable_bytes += b;
                r.reclaimable_all_bytes += b;
            }
        }
        for (_, path, _) in list_dir(&root.join("plugins"))? {
            r.plugin_state.add(size_of(&path)?);
        }
        for name in ["kiln.db", "kiln.db-wal", "kiln.db-shm"] {
            if let Ok(m) = fs::metadata(root.join(name)) {
                r.database_bytes += m.len();
            }
        }
        r.total_bytes = r.snapshots.bytes
            + r.snapshots_unrecorded.bytes
            + r.blobs.bytes
            + r.ingests.bytes
            + r.staging_in_use.bytes
            + r.staging_orphaned.bytes
            + r.plugin_state.bytes
            + r.database_bytes;
        Ok(r)
    }

    /// Removes what no live build uses, as `opts` says (see the module docs).
    pub fn prune(&self, opts: PruneOptions) -> Result<PruneReport, StoreError> {
        let root = self.inner.root.clone();
        // Room for SQLite's log on a full disk; made again below once space is freed.
        super::reserve::release(&root);
        let result = self.prune_inner(&root, opts);
        super::reserve::ensure(&root);
        result
    }

    fn prune_inner(&self, root: &Path, opts: PruneOptions) -> Result<PruneReport, StoreError> {
        let root = root.to_path_buf();
        let mut report = PruneReport::default();
        let mut owners = Owners::new(self, true);
        let now = fsutil::now_secs();
        let keep = opts.keep_duration.map(|d| d.as_secs() as i64);
        let expired = |last_used: i64| opts.all || keep.is_some_and(|k| now - last_used > k);

        // Dead owners' `.new-` lock files (a process killed inside Store::open).
        for (name, path, meta) in list_dir(&root.join("locks/owners"))? {
            if name.starts_with(".new-") && now - fsutil::mtime_secs(&meta) > STALE_NEW_OWNER {
                if let Some(lock) = FileLock::try_existing(&root, &path)? {
                    lock.remove();
                }
            }
        }

        // Snapshot directories to remove once the records are gone (committed).
        let mut unrecorded: Vec<PathBuf> = Vec::new();
        let mut removed: Vec<(PathBuf, u64)> = Vec::new();
        self.inner.write_with("prune", |tx| {
            let db = |source| self.inner.db_err("prune", source);
            // 1. Leases of dead owners.
            let lease_owners: Vec<String> = {
                let mut st = tx
                    .prepare("SELECT DISTINCT owner FROM leases")
                    .map_err(db)?;
                let rows = st.query_map([], |r| r.get(0)).map_err(db)?;
                rows.collect::<rusqlite::Result<_>>().map_err(db)?
            };
            for owner in lease_owners {
                if !owners.alive(&owner)? {
                    report.dead_leases += tx
                        .execute("DELETE FROM leases WHERE owner = ?1", params![owner])
                        .map_err(db)? as u64;
                }
            }

            // 2. Snapshot directories versus records. Only rows change here: a directory
            // is moved after the commit, so a rollback (an error, a kill) can never leave
            // a record whose directory is gone.
            let snaps: Vec<(String, i64, i64, bool, bool)> = {
                let mut st = tx
                    .prepare(
                        "SELECT s.id, s.size, s.last_used,
                            EXISTS (SELECT 1 FROM leases l WHERE l.kind = ?1 AND l.target = s.id),
                            EXISTS (SELECT 1 FROM cache_results c WHERE c.snapshot_id = s.id)
                         FROM snapshots s ORDER BY s.id",
                    )
                    .map_err(db)?;
                let rows = st
                    .query_map(params![LEASE_SNAPSHOT], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })
                    .map_err(db)?;
                rows.collect::<rusqlite::Result<_>>().map_err(db)?
            };
            let recorded: BTreeSet<&str> = snaps.iter().map(|s| s.0.as_str()).collect();
            let snap_root = root.join("snapshots");
            // Commits move a directory in and record it under this write lock, and ids
            // are random: a directory unrecorded now stays unrecorded.
            for (name, path, _) in list_dir(&snap_root)? {
                if !recorded.contains(name.as_str()) {
                    unrecorded.push(path);
                }
            }
            for (id, size, last_used, leased, referenced) in &snaps {
                let path = snap_root.join(id);
                let vanished = !path.is_dir();
                let remove = vanished || (!leased && (!referenced || expired(*last_used)));
                if !remove {
                    continue;
                }
                release_tx(tx, id).map_err(db)?;
                tx.execute(
                    "DELETE FROM leases WHERE kind = ?1 AND target = ?2",
                    params![LEASE_SNAPSHOT, id],
                )
                .map_err(db)?;
                tx.execute("DELETE FROM snapshots WHERE id = ?1", params![id])
                    .map_err(db)?;
                if vanished {
                    report.dangling_records += 1;
                } else {
                    removed.push((path, *size as u64));
                }
            }
            Ok(())
        })?;

        // From here on, a failure is remembered and the rest still runs: what is left
        // behind is unrecorded, and the next prune collects it.
        let mut first_err: Option<StoreError> = None;
        let mut note = |r: Result<(), StoreError>| {
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        };

        // The directories of the records just removed, and unrecorded ones: into our
        // trash (atomic; a kill leaves them in tmp/ under our dead owner name), then gone.
        let mut trash: Vec<PathBuf> = Vec::new();
        for (path, recorded_size) in unrecorded
            .iter()
            .map(|p| (p, None))
            .chain(removed.iter().map(|(p, s)| (p, Some(*s))))
        {
            note((|| {
                let bytes = match recorded_size {
                    Some(s) => s,
                    None => size_of(path)?,
                };
                let t = self.tmp_path("trash");
                match fs::rename(path, &t) {
                    Ok(()) => {}
                    // Gone already (a failed commit cleaning up after itself).
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => {
                        return Err(StoreError::io("move snapshot directory to trash", path, e))
                    }
                }
                trash.push(t);
                match recorded_size {
                    Some(_) => report.snapshots.add(bytes),
                    None => report.unrecorded.add(bytes),
                }
                Ok(())
            })());
        }

        // 3. Blobs no snapshot refers to and no live build leases. Checked and removed
        // under the write lock, so that an ingest committing the same digest or a build
        // leasing it waits; the only rows changed are ingest records of removed blobs,
        // and a record whose blob is missing is ignored (`Store::ingest_record`), so a
        // rollback after a removal leaves nothing wrong behind.
        if opts.all || keep.is_some() {
            let blob_errs = self.inner.write_with("prune blobs", |tx| {
                let db = |source| self.inner.db_err("prune blobs", source);
                let keep_blobs: BTreeSet<String> = {
                    let mut st = tx
                        .prepare(
                            "SELECT digest FROM snapshot_blobs UNION SELECT target FROM leases WHERE kind = ?1",
                        )
                        .map_err(db)?;
                    let rows = st.query_map(params![LEASE_BLOB], |r| r.get(0)).map_err(db)?;
                    rows.collect::<rusqlite::Result<_>>().map_err(db)?
                };
                let mut errs = Vec::new();
                for (name, path, meta) in list_dir(&root.join("content/blobs/sha256"))? {
                    let digest = format!("sha256:{name}");
                    let last_used = fsutil::atime_secs(&meta).max(fsutil::mtime_secs(&meta));
                    if keep_blobs.contains(&digest) || !expired(last_used) {
                        continue;
                    }
                    match fs::remove_file(&path) {
                        Ok(()) => report.blobs.add(meta.len()),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            errs.push(StoreError::io("remove blob", &path, e));
                            continue;
                        }
                    }
                    tx.execute("DELETE FROM ingest_records WHERE digest = ?1", params![digest]).map_err(db)?;
                }
                Ok(errs)
            });
            match blob_errs {
                Ok(errs) => errs.into_iter().for_each(|e| note(Err(e))),
                Err(e) => note(Err(e)),
            }
        }

        // 4. Staging and trash of dead owners (and our own trash, below).
        for (name, path, _) in list_dir(&root.join("tmp"))? {
            if owners.alive(tmp_owner(&name))? {
                continue;
            }
            note((|| {
                let b = size_of(&path)?;
                fsutil::remove_tree(&path).ctx("remove orphaned staging directory", &path)?;
                report.staging.add(b);
                Ok(())
            })());
        }
        for t in &trash {
            note(fsutil::remove_tree(t).ctx("remove", t));
        }
        // 5. Ingests nobody holds open.
        let stale = keep
            .unwrap_or(STALE_INGEST.as_secs() as i64)
            .min(STALE_INGEST.as_secs() as i64);
        for (name, path, meta) in list_dir(&root.join("content/ingest"))? {
            let old = opts.all || now - ingest_mtime(&path, &meta) > stale;
            if !old {
                continue;
            }
            let lock_path = root.join("locks").join(format!("ingest-{name}"));
            if let Some(lock) = FileLock::try_acquire(&root, &lock_path)? {
                report.ingests.add(size_of(&path)?);
                fsutil::remove_tree(&path).ctx("remove partial download", &path)?;
                lock.remove();
            }
        }

        // 6. Lock files nobody holds (ingest locks only once their ingest is gone).
        for (name, path, _) in list_dir(&root.join("locks"))? {
            let removable = name.starts_with("key-")
                || name
                    .strip_prefix("ingest-")
                    .is_some_and(|h| !root.join("content/ingest").join(h).exists());
            if removable && meta_is_symlink(&path) {
                // Planted, never made by kiln (lock files are opened without following
                // links): remove the link itself.
                fs::remove_file(&path).ctx("remove symlinked lock file", &path)?;
            } else if removable {
                if let Some(lock) = FileLock::try_existing(&root, &path)? {
                    lock.remove();
                }
            }
        }

        report.freed_bytes = report.snapshots.bytes
            + report.blobs.bytes
            + report.ingests.bytes
            + report.staging.bytes
            + report.unrecorded.bytes;
        match first_err {
            Some(e) => Err(e),
            None => Ok(report),
        }
    }
}

/// Removes the staging and trash directories of dead owners under `<root>/tmp/`
/// without the database: the way to free space when the disk is too full for SQLite
/// to open (these directories have no rows). Returns the bytes freed.
pub(super) fn remove_dead_staging(root: &Path) -> u64 {
    let mut freed = 0;
    let Ok(entries) = list_dir(&root.join("tmp")) else {
        return 0;
    };
    for (name, path, _) in entries {
        let owner = tmp_owner(&name);
        if owner.is_empty() || !owner.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let lock_path = root.join("locks/owners").join(owner);
        let dead = match FileLock::try_existing(root, &lock_path) {
            // We got the lock: its holder is gone.
            Ok(Some(_)) => true,
            // Held (alive), or missing (dead).
            Ok(None) => !lock_path.exists(),
            Err(_) => false,
        };
        if dead {
            let bytes = size_of(&path).unwrap_or(0);
            if fsutil::remove_tree(&path).is_ok() {
                freed += bytes;
            }
        }
    }
    freed
}

/// Whether `path` itself is a symlink (not followed).
fn meta_is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}
