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
//!   adds the named paths and the targets of the symlinks on the way ([`follow`]).
//!
//! Every snapshot is a full copy of the current files, whatever `local.differ` says
//! (there is no earlier transfer to compare with), so a snapshot never holds stale
//! content.

pub mod copy;
pub mod follow;
pub mod identifier;
pub mod key;

use std::path::Path;

use kiln_plugin_api::patterns::PathFilter;
use kiln_plugin_api::{
    export_plugin, CacheKey, Capabilities, Host, Job, Plugin, PluginError, PluginInfo, Request,
    Result, Snapshot, Source, SourceInstance,
};

use crate::copy::{copy_tree, CopyError, CopyOptions};
use crate::identifier::LocalId;

/// Threads that write file contents during a snapshot.
const COPY_THREADS: usize = 2;

/// The local source.
pub struct LocalSource;

impl Source for LocalSource {
    type Identifier = LocalId;

    fn identifier(&self, request: &Request) -> Result<LocalId> {
        LocalId::parse(request)
    }

    fn resolve(&self, id: LocalId) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(LocalStep { id }))
    }
}

/// One `local://NAME` step.
struct LocalStep {
    id: LocalId,
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
        let exclude = id.exclude.clone().unwrap_or_default();
        let filter = PathFilter::new(&include, &exclude)
            .map_err(|e| PluginError::invalid_identifier(format!("{id}: {e}")))?;

        let task = format!("transferring {}", id.name);
        job.progress_start(&task, 0);
        let cancelled = || job.is_cancelled();
        let progress = |done: u64, total: u64| job.progress_update(&task, done, total);
        let opts = CopyOptions {
            filter,
            threads: COPY_THREADS,
            cancelled: &cancelled,
            progress: &progress,
        };
        let stats = match copy_tree(&dir, dest, &opts) {
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
            "local source copied"
        );
        Ok(Snapshot {
            metadata: vec![
                ("local.name".into(), id.name.clone()),
                ("local.files".into(), stats.files.to_string()),
                ("local.bytes".into(), stats.bytes.to_string()),
            ],
        })
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

    fn new(_config: &str, _host: Host) -> Result<Self> {
        Ok(LocalSource)
    }

    fn attributes() -> Vec<kiln_plugin_api::AttrSpec> {
        identifier::attributes()
    }
}

export_plugin!(LocalSource);
