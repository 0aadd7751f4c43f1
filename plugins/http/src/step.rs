//! One http source step: its cache key (resolving the URL at most once per build) and
//! its snapshot (the stored blob copied into the staging directory with the file
//! name, mode, owner and mtime rules).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, FileTimes, OpenOptions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_plugin_api::{CacheKey, Host, Job, PluginError, Result, Snapshot, SourceInstance};

use crate::client::{self, etag_value};
use crate::config::Config;
use crate::fetch::{get_into_store, Ctx, GetOutcome, Semaphore};
use crate::filename::file_name;
use crate::gojson;
use crate::ident::HttpIdentifier;
use crate::index::{Entry, EtagIndex};
use crate::proxy::Agents;

/// Jobs whose resolutions are remembered.
const MEMO_JOBS: usize = 32;

/// What a URL resolved to within one build.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// The effective file name.
    pub filename: String,
    /// `Last-Modified` as the server sent it.
    pub last_modified: Option<String>,
    /// The stored blob, when known.
    pub blob: Option<PathBuf>,
}

type Slot = Arc<Mutex<Option<Arc<Resolved>>>>;

/// Per-build memo of resolutions: job id → URL hash → result.
#[derive(Default)]
pub struct Memo {
    jobs: Mutex<VecDeque<(String, HashMap<String, Slot>)>>,
}

impl Memo {
    fn slot(&self, job: &str, url_hash: &str) -> Slot {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        let pos = match jobs.iter().position(|(j, _)| j == job) {
            Some(p) => p,
            None => {
                if jobs.len() >= MEMO_JOBS {
                    jobs.pop_front();
                }
                jobs.push_back((job.to_string(), HashMap::new()));
                jobs.len() - 1
            }
        };
        jobs[pos].1.entry(url_hash.to_string()).or_default().clone()
    }
}

/// State shared by every step of the plugin.
pub struct Shared {
    /// Configuration.
    pub cfg: Config,
    /// HTTP agents (connection pools), direct and proxied.
    pub agents: Agents,
    /// Host services.
    pub host: Host,
    /// The ETag index, opened on first use (loading the plugin touches no disk).
    pub index: std::sync::OnceLock<EtagIndex>,
    /// Download slots.
    pub slots: Semaphore,
    /// Per-build resolutions.
    pub memo: Memo,
}

impl Shared {
    /// The ETag index in the plugin's state directory.
    pub fn index(&self) -> &EtagIndex {
        self.index
            .get_or_init(|| EtagIndex::new(&self.host.state_dir()))
    }
}

/// One `http(s)://` step.
pub struct HttpStep {
    shared: Arc<Shared>,
    id: HttpIdentifier,
    url_hash: String,
}

impl HttpStep {
    /// A step for `id`.
    pub fn new(shared: Arc<Shared>, id: HttpIdentifier) -> Self {
        let url_hash = id.url_hash();
        Self {
            shared,
            id,
            url_hash,
        }
    }

    fn ctx<'a, 'j>(&'a self, auth: Option<&'a str>, job: &'a Job<'j>) -> Ctx<'a, 'j> {
        Ctx {
            cfg: &self.shared.cfg,
            agents: &self.shared.agents,
            host: &self.shared.host,
            id: &self.id,
            auth,
            job,
            slots: &self.shared.slots,
        }
    }

    fn name(&self, content_disposition: Option<&str>) -> String {
        file_name(
            self.id.filename.as_deref(),
            content_disposition,
            self.id.url.path(),
        )
    }

    /// The resolution for this build: from the checksum attribute (no request), from
    /// the memo, or from the network.
    fn resolve(&self, job: &Job<'_>) -> Result<Arc<Resolved>> {
        if let Some(c) = &self.id.checksum {
            return Ok(Arc::new(Resolved {
                digest: c.clone(),
                filename: self.name(None),
                last_modified: None,
                blob: None,
            }));
        }
        let slot = self.shared.memo.slot(&job.id(), &self.url_hash);
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = guard.as_ref() {
            return Ok(r.clone());
        }
        let r = Arc::new(self.resolve_network(job)?);
        *guard = Some(r.clone());
        Ok(r)
    }

    fn resolve_network(&self, job: &Job<'_>) -> Result<Resolved> {
        let s = &self.shared;
        let id = &self.id;
        let auth = client::authorization(id, job)?;
        let _lock = s.index().lock(&self.url_hash, job)?;
        let candidates: Vec<(Entry, PathBuf)> = s
            .index()
            .load(&self.url_hash)
            .into_iter()
            .filter_map(|e| s.host.blob_path(&e.digest).map(|p| (e, p)))
            .collect();
        let inm = candidates
            .iter()
            .map(|(e, _)| e.etag.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let only = (candidates.len() == 1).then(|| candidates[0].0.etag.clone());
        let reuse = |etag: Option<String>, cd: Option<&str>| -> Option<Resolved> {
            let etag = etag.or_else(|| only.clone())?;
            let (e, p) = candidates.iter().find(|(e, _)| e.etag == etag)?;
            Some(Resolved {
                digest: e.digest.clone(),
                filename: self.name(cd),
                last_modified: e.last_modified.clone(),
                blob: Some(p.clone()),
            })
        };
        if !candidates.is_empty() {
            match client::send(
                &s.agents,
                id,
                auth.as_deref(),
                "HEAD",
                &[("If-None-Match", &inm), ("Accept-Encoding", "gzip")],
            ) {
                Ok(resp) if resp.status() == 200 || resp.status() == 304 => {
                    let etag = resp
                        .header("ETag")
                        .map(|v| etag_value(&v))
                        .filter(|v| !v.is_empty());
                    let etag = if etag.is_none() && resp.status() == 200 {
                        Some(String::new())
                    } else {
                        etag
                    };
                    if let Some(r) = reuse(etag, resp.header("Content-Disposition").as_deref()) {
                        tracing::debug!("{id}: not modified; reusing {}", r.digest);
                        return Ok(r);
                    }
                }
                Ok(resp) => {
                    tracing::debug!("{id}: HEAD answered {}; falling back to GET", resp.status())
                }
                Err(e) => tracing::debug!("{id}: HEAD failed ({e}); falling back to GET"),
            }
        }
        let ctx = self.ctx(auth.as_deref(), job);
        let fetched = match get_into_store(&ctx, (!inm.is_empty()).then_some(inm.as_str()), None)? {
            GetOutcome::Fetched(f) => f,
            GetOutcome::NotModified {
                etag,
                content_disposition,
            } => {
                if let Some(r) = reuse(etag, content_disposition.as_deref()) {
                    return Ok(r);
                }
                tracing::warn!("{id}: the server answered 304 with an ETag it did not send before; downloading again");
                match get_into_store(&ctx, None, None)? {
                    GetOutcome::Fetched(f) => f,
                    GetOutcome::NotModified { .. } => {
                        return Err(PluginError::internal(format!(
                            "{id}: the server answered 304 to an unconditional GET"
                        )))
                    }
                }
            }
        };
        if let Some(etag) = &fetched.etag {
            let entry = Entry {
                etag: etag.clone(),
                digest: fetched.digest.clone(),
                last_modified: fetched.last_modified.clone(),
            };
            if let Err(e) = s.index().add(&self.url_hash, entry) {
                tracing::warn!("{id}: could not record the ETag: {e}");
            }
        }
        Ok(Resolved {
            digest: fetched.digest,
            filename: self.name(fetched.content_disposition.as_deref()),
            last_modified: fetched.last_modified,
            blob: Some(fetched.path),
        })
    }

    /// The stored blob for `r`, downloading (and verifying against `r.digest`) when
    /// the store does not have it. Also returns the `Last-Modified` to use.
    fn blob_for(&self, r: &Resolved, job: &Job<'_>) -> Result<(PathBuf, Option<String>)> {
        let s = &self.shared;
        if let Some(p) = r
            .blob
            .as_ref()
            .filter(|p| p.exists())
            .cloned()
            .or_else(|| s.host.blob_path(&r.digest))
        {
            return Ok((p, r.last_modified.clone()));
        }
        let auth = client::authorization(&self.id, job)?;
        let _lock = s.index().lock(&self.url_hash, job)?;
        // Another process may have fetched it while this one waited for the lock.
        if let Some(p) = s.host.blob_path(&r.digest) {
            return Ok((p, r.last_modified.clone()));
        }
        match get_into_store(&self.ctx(auth.as_deref(), job), None, Some(&r.digest))? {
            GetOutcome::Fetched(f) => {
                if let Some(etag) = &f.etag {
                    let entry = Entry {
                        etag: etag.clone(),
                        digest: f.digest.clone(),
                        last_modified: f.last_modified.clone(),
                    };
                    if let Err(e) = s.index().add(&self.url_hash, entry) {
                        tracing::warn!("{}: could not record the ETag: {e}", self.id);
                    }
                }
                Ok((f.path, r.last_modified.clone().or(f.last_modified)))
            }
            GetOutcome::NotModified { .. } => Err(PluginError::internal(format!(
                "{}: the server answered 304 to an unconditional GET",
                self.id
            ))),
        }
    }

    fn last_modified_for_checksum(&self, digest: &str) -> Option<String> {
        self.shared
            .index()
            .load(&self.url_hash)
            .into_iter()
            .find(|e| e.digest == digest)
            .and_then(|e| e.last_modified)
    }
}

/// `Last-Modified` → the key's `LastModTime` (Go's `http.TimeFormat`), if it parses.
pub fn key_time(last_modified: Option<&str>) -> Option<String> {
    let t = httpdate::parse_http_date(last_modified?.trim()).ok()?;
    Some(httpdate::fmt_http_date(t))
}

fn mtime(last_modified: Option<&str>) -> SystemTime {
    last_modified
        .and_then(|v| httpdate::parse_http_date(v.trim()).ok())
        .unwrap_or(UNIX_EPOCH + Duration::ZERO)
}

/// Links `blob` as `target` when no other file shares the blob's inode yet, so that the
/// snapshot's file *is* the committed blob and the bytes hit the disk once. Returns
/// false (leaving nothing behind) when the link is impossible or shared; a concurrent
/// linker is detected by the link count and falls back to a copy.
fn link_unshared_blob(blob: &Path, target: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if std::fs::hard_link(blob, target).is_err() {
        return false;
    }
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.nlink() == 2 => true,
        _ => {
            let _ = std::fs::remove_file(target);
            false
        }
    }
}

/// Whether the snapshot's file may be the blob itself: its metadata is then the
/// blob's, so only a mode the store can still read the blob with (owner read, no
/// set-id or sticky bit) and no change of owner qualify.
fn may_link(mode: u32, uid: u32, gid: u32) -> bool {
    mode & 0o400 != 0 && mode & 0o7000 == 0 && uid == 0 && gid == 0
}

/// Writes `dest/name` with the content of `blob` and `mode`, owner and mtime: a hard
/// link to the blob when that is safe (see [`may_link`]) and no snapshot shares it
/// yet, else an in-kernel copy. A linked file gets its mode and modification time;
/// its access time is left alone (the store reads a blob's last use from it).
pub fn write_file(
    blob: &Path,
    dest: &Path,
    name: &str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: SystemTime,
) -> Result<()> {
    let target = dest.join(name);
    let ctx = |what: &str, e: std::io::Error| {
        PluginError::internal(format!("{what} {}: {e}", target.display()))
    };
    if may_link(mode, uid, gid) && link_unshared_blob(blob, &target) {
        let out = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&target)
            .map_err(|e| ctx("opening", e))?;
        out.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| ctx("chmod", e))?;
        out.set_times(FileTimes::new().set_modified(mtime))
            .map_err(|e| ctx("setting mtime of", e))?;
        return Ok(());
    }
    let mut src = File::open(blob)
        .map_err(|e| PluginError::internal(format!("opening blob {}: {e}", blob.display())))?;
    let mut out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&target)
        .map_err(|e| ctx("creating", e))?;
    std::io::copy(&mut src, &mut out).map_err(|e| ctx("writing", e))?;
    if uid != 0 || gid != 0 {
        std::os::unix::fs::fchown(&out, Some(uid), Some(gid))
            .map_err(|e| ctx(&format!("chown {uid}:{gid}"), e))?;
    }
    // After the chown, which clears set-id bits.
    out.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| ctx("chmod", e))?;
    out.set_times(FileTimes::new().set_accessed(mtime).set_modified(mtime))
        .map_err(|e| ctx("setting mtime of", e))?;
    Ok(())
}

impl SourceInstance for HttpStep {
    fn cache_key(&self, _index: u32, job: &Job<'_>) -> Result<CacheKey> {
        let r = self.resolve(job)?;
        let lm = key_time(r.last_modified.as_deref());
        let key = gojson::cache_key(&r.filename, &r.digest, lm.as_deref(), &self.id.key_attrs());
        Ok(CacheKey {
            key,
            pin: r.digest.clone(),
            done: true,
            opts: vec![],
        })
    }

    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot> {
        let r = self.resolve(job)?;
        let (blob, lm) = self.blob_for(&r, job)?;
        let lm = if self.id.checksum.is_some() {
            lm.or_else(|| self.last_modified_for_checksum(&r.digest))
        } else {
            lm
        };
        write_file(
            &blob,
            dest,
            &r.filename,
            self.id.file_mode(),
            self.id.uid as u32,
            self.id.gid as u32,
            mtime(lm.as_deref()),
        )
        .map_err(|e| e.context(&self.id))?;
        Ok(Snapshot {
            metadata: vec![
                ("http.url".into(), self.id.shown.clone()),
                ("http.digest".into(), r.digest.clone()),
                ("http.filename".into(), r.filename.clone()),
            ],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn key_time_formats_like_go() {
        assert_eq!(
            key_time(Some("Sun, 06 Nov 1994 08:49:37 GMT")).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(
            key_time(Some("Sunday, 06-Nov-94 08:49:37 GMT")).as_deref(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(key_time(Some("garbage")), None);
        assert_eq!(key_time(None), None);
    }

    #[test]
    fn writes_file_with_mode_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"content1").unwrap();
        let dest = dir.path().join("stage");
        std::fs::create_dir(&dest).unwrap();
        let t = mtime(Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        write_file(&blob, &dest, "foo", 0o640, 0, 0, t).unwrap();
        let md = std::fs::metadata(dest.join("foo")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(md.mtime(), 784111777);
        assert_eq!(std::fs::read(dest.join("foo")).unwrap(), b"content1");
        assert_eq!(mtime(None), UNIX_EPOCH);
        // never overwrites or follows what is there
        assert!(write_file(&blob, &dest, "foo", 0o600, 0, 0, t).is_err());

        // The first snapshot of a blob is the blob (one write to disk); a second one
        // with other metadata is a copy, and the first keeps its mode and time.
        let blob_md = std::fs::metadata(&blob).unwrap();
        assert_eq!(md.ino(), blob_md.ino());
        // Only the modification time moved: the access time is the store's.
        assert_ne!(blob_md.atime(), 784111777);
        let dest2 = dir.path().join("stage2");
        std::fs::create_dir(&dest2).unwrap();
        write_file(&blob, &dest2, "foo", 0o600, 0, 0, mtime(None)).unwrap();
        let md2 = std::fs::metadata(dest2.join("foo")).unwrap();
        assert_ne!(md2.ino(), md.ino());
        assert_eq!(md2.mode() & 0o7777, 0o600);
        assert_eq!(std::fs::read(dest2.join("foo")).unwrap(), b"content1");
        let md = std::fs::metadata(dest.join("foo")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o640, 784111777));
    }

    /// A blob as the store leaves it: read-only, last used at `used`.
    fn stored_blob(dir: &Path, name: &str, used: SystemTime) -> PathBuf {
        let blob = dir.join(name);
        std::fs::write(&blob, b"blob data").unwrap();
        std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o444)).unwrap();
        File::open(&blob)
            .unwrap()
            .set_times(FileTimes::new().set_accessed(used).set_modified(used))
            .unwrap();
        blob
    }

    #[test]
    fn a_linked_snapshot_keeps_the_blobs_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let used = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let blob = stored_blob(dir.path(), "blob", used);
        let t = mtime(Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        write_file(&blob, dir.path(), "out", 0o644, 0, 0, t).unwrap();
        // Metadata only (reading the file could move its atime under relatime).
        let md = std::fs::metadata(dir.path().join("out")).unwrap();
        let blob_md = std::fs::metadata(&blob).unwrap();
        assert_eq!(md.ino(), blob_md.ino(), "linked");
        assert_eq!((md.mode() & 0o7777, md.mtime()), (0o644, 784111777));
        assert_eq!(blob_md.atime(), 1_700_000_000, "the store's last-use time");
    }

    #[test]
    fn unsafe_metadata_is_never_set_on_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let used = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let t = mtime(Some("Sun, 06 Nov 1994 08:49:37 GMT"));
        // SAFETY: plain getters.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        // Root may give the file any owner; others only their own (non-zero) ids.
        let (uid, gid) = if euid == 0 {
            (1000, 1000)
        } else {
            (euid, egid)
        };
        let cases = [
            ("no-owner-read", 0o044, 0, 0),
            ("none", 0o000, 0, 0),
            ("setuid", 0o4755, 0, 0),
            ("owned", 0o644, uid, gid),
        ];
        for (name, mode, uid, gid) in cases {
            let blob = stored_blob(dir.path(), &format!("blob-{name}"), used);
            write_file(&blob, dir.path(), name, mode, uid, gid, t).unwrap();
            let md = std::fs::metadata(dir.path().join(name)).unwrap();
            let blob_md = std::fs::metadata(&blob).unwrap();
            assert_ne!(md.ino(), blob_md.ino(), "{name}: copied, not linked");
            assert_eq!(
                (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime()),
                (mode, uid, gid, 784111777),
                "{name}: the snapshot's file"
            );
            assert_eq!(
                (blob_md.mode() & 0o7777, blob_md.uid(), blob_md.gid()),
                (0o444, euid, egid),
                "{name}: the blob is untouched"
            );
            // (Copying reads it, which may move its atime forward: a use.)
            assert!(blob_md.atime() >= 1_700_000_000, "{name}");
            assert_eq!(
                (blob_md.mtime(), blob_md.nlink()),
                (1_700_000_000, 1),
                "{name}"
            );
        }
    }
}
