//! The `local://NAME` source plugin of kiln (`io.kiln.source.v1.local`).
//!
//! A local source is a directory of the client, mapped to a name for one job with
//! `--local NAME=DIR` (BuildKit's session file sync). The plugin:
//!
//! - parses `local://NAME` and the `local.*` attributes ([`identifier`]): the JSON
//!   lists `local.includepattern` (also spelled `local.includepatterns`),
//!   `local.excludepatterns` and `local.followpaths`, and `local.session`,
//!   `local.unique`, `local.sharedkeyhint`, `local.differ`;
//! - answers BuildKit's session-scoped cache key ([`key`]): `session:<name>:<d>`,
//!   which the host turns into a `random:` digest, so reuse comes from content
//!   hashes downstream;
//! - snapshots by copying the selected part of the directory into the host's staging
//!   directory ([`copy`]), keeping modes, owners (as root), mtimes, extended
//!   attributes, symlinks as links and hardlinks as hardlinks. `local.followpaths`
//!   adds the named paths and the targets of the symlinks on the way ([`follow`]);
//!   an ignore file (`local.ignorefile`, default `.dockerignore`) adds exclude
//!   patterns ([`ignore`]);
//! - with `local.differ=metadata` (the default), takes the files whose stat did not
//!   change since the last snapshot of the same context from its kept copy instead of
//!   copying them again ([`kept`] explains how and why that is safe);
//!   `local.differ=none` copies everything.

pub mod copy;
pub mod follow;
pub mod identifier;
pub mod ignore;
pub mod kept;
pub mod key;

use std::path::Path;

use kiln_plugin_api::patterns::PathFilter;
use kiln_plugin_api::{
    export_plugin, CacheKey, Capabilities, Host, Job, Plugin, PluginError, PluginInfo, Request,
    Result, Snapshot, Source, SourceInstance,
};

use crate::copy::{copy_tree, copy_tree_kept, CopyError, CopyOptions};
use crate::identifier::{Differ, LocalId};
use crate::kept::Kept;

/// Threads that write file contents during a snapshot.
const COPY_THREADS: usize = 2;

/// The least time between two progress updates of a snapshot, in milliseconds.
const PROGRESS_EVERY_MS: u64 = 100;

/// The local source.
pub struct LocalSource {
    host: Host,
}

impl Source for LocalSource {
    type Identifier = LocalId;

    fn identifier(&self, request: &Request) -> Result<LocalId> {
        LocalId::parse(request)
    }

    fn resolve(&self, id: LocalId) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(LocalStep {
            id,
            host: self.host.clone(),
        }))
    }
}

/// One `local://NAME` step.
struct LocalStep {
    id: LocalId,
    host: Host,
}

/// Whether `dest` is a staging directory of the store under the kiln root that holds
/// `state_dir` (`<root>/plugins/<id>`): `<root>/tmp/…`, which the host commits as an
/// immutable snapshot or deletes. Only such a directory may share inodes with the
/// kept copy; any other destination (e.g. `kiln source fetch --dest DIR`) may be
/// edited later.
fn is_store_staging(dest: &Path, state_dir: &Path) -> bool {
    let Some(root) = state_dir.parent().and_then(Path::parent) else {
        return false;
    };
    match (dest.canonicalize(), root.join("tmp").canonicalize()) {
        (Ok(d), Ok(tmp)) => d.starts_with(&tmp) && d != tmp,
        _ => false,
    }
}

impl LocalStep {
    fn session(&self, job: &Job<'_>) -> Result<String> {
        let session = match &self.id.session {
            Some(s) => s.clone(),
            None => job.id(),
        };
        if session.is_empty() {
            return Err(PluginError::invalid_identifier(format!(
                "{}: could not access local files without a session (the job has no id)",
                self.id
            )));
        }
        Ok(session)
    }
}

impl SourceInstance for LocalStep {
    fn cache_key(&self, _index: u32, job: &Job<'_>) -> Result<CacheKey> {
        let (key, pin) = key::cache_key(&self.session(job)?, &self.id);
        Ok(CacheKey {
            key,
            pin,
            done: true,
            opts: vec![],
        })
    }

    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot> {
        let id = &self.id;
        let name = &id.key_name;
        let Some(dir) = job.local_dir(name) else {
            return Err(PluginError::not_found(format!(
                "{id}: no local directory is mapped to the name {name:?} (pass --local {name}=DIR)"
            )));
        };
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(PluginError::not_found(format!(
                    "{id}: {} (mapped to {name:?}) is not a directory",
                    dir.display()
                )))
            }
            Err(e) => {
                return Err(PluginError::not_found(format!(
                    "{id}: cannot open directory {} (mapped to {name:?}): {e}",
                    dir.display()
                )))
            }
        }
        job.check_cancelled()?;

        let mut include = id.include.clone().unwrap_or_default();
        if let Some(follow) = &id.follow {
            let resolved = follow::resolve(&dir, follow)
                .map_err(|e| PluginError::internal(format!("{id}: {e}")))?;
            include.extend(resolved);
        }
        let mut exclude = Vec::new();
        if let Some(name) = &id.ignore_file {
            let path = dir.join(name);
            match ignore::read(&path) {
                Ok(Some(patterns)) => {
                    PathFilter::new::<String>(&[], &patterns).map_err(|e| {
                        PluginError::invalid_identifier(format!(
                            "{id}: ignore file {}: {e}",
                            path.display()
                        ))
                    })?;
                    exclude = patterns;
                }
                Ok(None) if id.ignore_file_explicit => {
                    return Err(PluginError::not_found(format!(
                        "{id}: the ignore file {} (local.ignorefile) does not exist",
                        path.display()
                    )))
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(PluginError::invalid_identifier(format!(
                        "{id}: cannot read the ignore file {}: {e}",
                        path.display()
                    )))
                }
            }
        }
        exclude.extend(id.exclude.iter().flatten().cloned());
        let filter = PathFilter::new(&include, &exclude)
            .map_err(|e| PluginError::invalid_identifier(format!("{id}: {e}")))?;
        let kept = self.kept(&dir, dest);

        let task = format!("transferring {}", id.name);
        job.progress_start(&task, 0);
        let cancelled = || job.is_cancelled();
        // At most one update per PROGRESS_EVERY_MS (the copy reports every batch).
        let started = std::time::Instant::now();
        let last_ms = std::sync::atomic::AtomicU64::new(0);
        let progress = |done: u64, total: u64| {
            let now = started.elapsed().as_millis() as u64;
            let last = last_ms.load(std::sync::atomic::Ordering::Relaxed);
            if now >= last + PROGRESS_EVERY_MS || (total > 0 && done == total) {
                last_ms.store(now, std::sync::atomic::Ordering::Relaxed);
                job.progress_update(&task, done, total);
            }
        };
        let opts = CopyOptions {
            filter,
            threads: COPY_THREADS,
            cancelled: &cancelled,
            progress: &progress,
        };
        let result = match kept {
            Some((kept, key)) => {
                let r = copy_tree_kept(&dir, dest, &opts, kept);
                if r.is_ok() {
                    let state = self.host.state_dir();
                    match kept::sweep(&state, &key, kept::UNUSED_CONTEXT_AGE) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::debug!(removed = n, "kept copies of unused contexts removed")
                        }
                        Err(e) => tracing::debug!("cannot sweep unused contexts: {e}"),
                    }
                }
                r
            }
            None => copy_tree(&dir, dest, &opts),
        };
        let stats = match result {
            Ok(stats) => stats,
            Err(e) => {
                job.progress_finish(&task, 0, Some(&e.to_string()));
                return Err(match e {
                    CopyError::Cancelled => PluginError::cancelled(),
                    e => PluginError::internal(format!("{id}: {e}")),
                });
            }
        };
        job.progress_finish(&task, stats.files + stats.hardlinks + stats.symlinks, None);
        tracing::debug!(
            name = %id.name,
            files = stats.files,
            dirs = stats.dirs,
            symlinks = stats.symlinks,
            hardlinks = stats.hardlinks,
            bytes = stats.bytes,
            skipped = stats.skipped,
            reused = stats.reused,
            vanished = stats.vanished,
            "local source copied"
        );
        Ok(Snapshot {
            metadata: vec![
                ("local.name".into(), id.name.clone()),
                ("local.files".into(), stats.files.to_string()),
                ("local.bytes".into(), stats.bytes.to_string()),
                ("local.reused".into(), stats.reused.to_string()),
            ],
        })
    }
}

impl LocalStep {
    /// The kept state of this context (and its key) when this snapshot may use it:
    /// the `metadata` differ, a store staging directory as `dest`, and no other
    /// snapshot of the same context running. Problems with the state only cost speed
    /// (logged at debug).
    fn kept(&self, dir: &Path, dest: &Path) -> Option<(Kept, String)> {
        if self.id.differ == Differ::None {
            return None;
        }
        let state = self.host.state_dir();
        if !is_store_staging(dest, &state) {
            return None;
        }
        let key = kept::context_key(&self.id.key_name, self.id.shared_key_hint.as_deref(), dir);
        match Kept::open(&state, &key, dir) {
            Ok(Some(k)) => Some((k, key)),
            Ok(None) => {
                tracing::debug!(name = %self.id.name, "context in use by another snapshot: full copy");
                None
            }
            Err(e) => {
                tracing::debug!(name = %self.id.name, "kept copy unusable, full copy: {e}");
                None
            }
        }
    }
}

impl Plugin for LocalSource {
    fn info() -> PluginInfo {
        PluginInfo {
            id: "io.kiln.source.v1.local",
            version: env!("CARGO_PKG_VERSION"),
            schemes: &["local"],
            capabilities: Capabilities::LOCAL_DIRS,
            max_concurrency: 0,
        }
    }

    fn new(_config: &str, host: Host) -> Result<Self> {
        Ok(LocalSource { host })
    }

    fn attributes() -> Vec<kiln_plugin_api::AttrSpec> {
        identifier::attributes()
    }
}

export_plugin!(LocalSource);
