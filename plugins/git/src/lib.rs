//! kiln's git source plugin (`io.kiln.source.v1.git`, scheme `git`).
//!
//! BuildKit's git source (`../shared/reference/buildkit-sources.md` §3.4), hardened:
//! identifiers and attributes ([`identifier`], [`url`], [`attrs`]), the git command
//! line ([`cli`]), resolution ([`resolve`]), keys and pins ([`key`]), one shared bare
//! repository per remote ([`repo`]), the checkout ([`checkout`]) and auth ([`auth`]).
//!
//! Configuration (`[plugins."io.kiln.source.v1.git".config]` in `kiln.toml`):
//!
//! ```toml
//! git = "/usr/bin/git"     # the git program (default: `git` on PATH)
//! timeout_secs = 3600      # a git call running longer is killed (default 3600)
//! allow_file_remotes = false  # allow `git.fullurl=file:///ABS/PATH` (default false)
//! ```
//!
//! `file://` remotes (BuildKit has none) read a repository on the machine running kiln,
//! so they are refused unless `allow_file_remotes = true`. An allowed one is resolved,
//! fetched, keyed and pinned like any other remote (canonical identifier
//! `git://localhost/ABS/PATH`; the path is never in the key), and only its git calls get
//! `protocol.file.allow=always`: its own `file://` submodules are then read too, while
//! submodules of network remotes stay refused from the local file system whatever the
//! switch says.
//!
//! The plugin is skipped (not failed) when the `git` program is not found, as
//! BuildKit registers its git source only when `git version` runs.

pub mod attrs;
pub mod auth;
pub mod checkout;
pub mod cli;
pub mod identifier;
pub mod key;
pub mod repo;
pub mod resolve;
pub mod url;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_plugin_api::{
    export_plugin, parse_config, CacheKey, Capabilities, Host, Job, Plugin, PluginError,
    PluginInfo, Request, Result, Snapshot, Source, SourceInstance,
};
use serde::Deserialize;

use crate::cli::GitCli;
use crate::resolve::{Memo, Resolved};

pub use identifier::{GitIdentifier, IdentifierError};

/// The plugin id.
pub const PLUGIN_ID: &str = "io.kiln.source.v1.git";
/// The scheme it serves.
pub const SCHEME: &str = "git";

/// The plugin's `config` table; unknown keys are refused.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitConfig {
    /// The git program; default: `git` on `PATH`.
    pub git: Option<PathBuf>,
    /// Seconds after which a git call is killed.
    pub timeout_secs: u64,
    /// Whether `file://` remotes (repositories on this machine) may be used.
    pub allow_file_remotes: bool,
}

impl Default for GitConfig {
    fn default() -> Self {
        Self {
            git: None,
            timeout_secs: 3600,
            allow_file_remotes: false,
        }
    }
}

/// The error for a `file://` remote while `allow_file_remotes` is off.
fn file_remotes_refused(id: &GitIdentifier) -> PluginError {
    PluginError::unsupported(format!(
        "{id}: file:// remotes ({}) are disabled; set allow_file_remotes = true in \
         [plugins.\"{PLUGIN_ID}\".config] of kiln.toml to allow them",
        id.remote
    ))
}

/// What every step of this plugin shares.
struct Shared {
    git: PathBuf,
    timeout: Duration,
    allow_file_remotes: bool,
    state: PathBuf,
    memo: Memo,
}

/// The git source.
pub struct GitSource {
    shared: Arc<Shared>,
}

/// Finds the `git` program on `PATH` (or on `path` when given) without running it, so
/// that loading the plugin costs no process start; returns its path, or a `skip` error
/// saying what to install.
pub fn find_git(path: Option<&OsStr>) -> Result<PathBuf> {
    find_in(path, "git").ok_or_else(|| {
        PluginError::skip(
            "git not found on PATH; install git (e.g. `apt-get install git`) to use git sources",
        )
    })
}

/// Finds an executable `name` on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    find_in(None, name)
}

fn find_in(path: Option<&OsStr>, name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

impl Source for GitSource {
    type Identifier = GitIdentifier;

    fn identifier(&self, request: &Request) -> Result<GitIdentifier> {
        if request.scheme != SCHEME {
            return Err(PluginError::invalid_identifier(format!(
                "the git plugin does not serve scheme {:?}",
                request.scheme
            )));
        }
        let id = GitIdentifier::parse(&request.reference, &request.attrs).map_err(|e| {
            PluginError::invalid_identifier(format!(
                "git://{}: {e}",
                url::redact(&request.reference)
            ))
        })?;
        if id.bundle.is_some() || id.checkout_bundle {
            return Err(PluginError::unsupported(format!(
                "{id}: git.bundle and git.checkoutbundle are not supported by this kiln"
            )));
        }
        if id.remote.protocol() == url::Protocol::File && !self.shared.allow_file_remotes {
            return Err(file_remotes_refused(&id));
        }
        if id.signature.is_some() {
            return Err(PluginError::unsupported(format!(
                "{id}: git.sig.* signature verification is not supported by this kiln"
            )));
        }
        Ok(id)
    }

    fn resolve(&self, id: GitIdentifier) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(GitStep {
            id,
            shared: self.shared.clone(),
            chosen: Mutex::new(None),
        }))
    }
}

/// One git source step.
struct GitStep {
    id: GitIdentifier,
    shared: Arc<Shared>,
    /// The resolution the key was computed from; the snapshot checks it out.
    chosen: Mutex<Option<Resolved>>,
}

impl GitStep {
    /// The hardened git with this job's auth (and the known-hosts file it needs).
    fn cli(&self, job: &Job<'_>) -> Result<(GitCli, auth::Cleanup)> {
        let mut cli = GitCli::new(self.shared.git.clone(), self.shared.timeout);
        // `identifier` refused file remotes unless they are allowed.
        cli.file_remote = self.id.remote.protocol() == url::Protocol::File;
        let cleanup = auth::apply(&mut cli, &self.id, job, &self.shared.state.join("tmp"))?;
        Ok((cli, cleanup))
    }

    /// Resolves once per job (see [`Memo`]); git (and the job's auth) is set up only
    /// when neither this step nor the job has resolved the ref yet.
    fn resolved(&self, job: &Job<'_>) -> Result<Resolved> {
        if let Some(r) = self
            .chosen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Ok(r);
        }
        let memo_key = format!(
            "{}#{}#{}#{}",
            self.id.remote.command_arg(),
            self.id.reference,
            self.id.checksum,
            self.id.fetch_by_commit
        );
        let r = self
            .shared
            .memo
            .get_or(&job.id(), &memo_key, || {
                let (cli, _cleanup) = self.cli(job)?;
                resolve::resolve(&cli, &self.id, job)
            })
            .map_err(|e| e.context(&self.id))?;
        *self.chosen.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.clone());
        Ok(r)
    }
}

impl SourceInstance for GitStep {
    fn cache_key(&self, _index: u32, job: &Job<'_>) -> Result<CacheKey> {
        let r = self.resolved(job)?;
        Ok(CacheKey {
            key: key::cache_key(&self.id, &r),
            pin: key::pin(&r),
            done: true,
            // For the host's --metadata-file (also on cache hits); the remote is the
            // redacted form.
            opts: self.described(&r),
        })
    }

    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot> {
        let r = self.resolved(job)?;
        let (cli, _cleanup) = self.cli(job)?;
        let fetch_task = format!("fetch {}", self.id.remote);
        job.progress_start(&fetch_task, 0);
        // git's phases (counting, compressing, receiving, resolving) one after the
        // other, each with its own counts.
        let report = |phase: &str, cur: u64, total: u64| {
            job.progress_update(&format!("{fetch_task}: {phase}"), cur, total)
        };
        let fetched = (|| {
            let repo = repo::open(
                &cli,
                &self.shared.state,
                &self.id,
                r.commit.len() == 64,
                job,
            )?;
            let local = repo::ensure(&cli, &repo, &self.id, &r, job, &report)?;
            Ok::<_, PluginError>((repo, local))
        })();
        let (repo, local) = match fetched {
            Ok(v) => {
                job.progress_finish(&fetch_task, 0, None);
                v
            }
            Err(e) => {
                job.progress_finish(&fetch_task, 0, Some(&e.message));
                return Err(e);
            }
        };
        let checkout_task = format!("checkout {}", &r.commit[..12.min(r.commit.len())]);
        job.progress_start(&checkout_task, 0);
        let report = |phase: &str, cur: u64, total: u64| {
            job.progress_update(&format!("{checkout_task}: {phase}"), cur, total)
        };
        let tmp = self.shared.state.join("tmp");
        checkout::clean_stale(&tmp);
        let done = checkout::Checkout {
            cli: &cli,
            repo: &repo,
            id: &self.id,
            resolved: &r,
            local_ref: &local,
            tmp: &tmp,
            job,
        }
        .run(dest, &report);
        job.progress_finish(
            &checkout_task,
            0,
            done.as_ref().err().map(|e| e.message.as_str()),
        );
        done?;
        let mut metadata = self.described(&r);
        metadata.push(("git.checksum".into(), r.checksum.clone()));
        Ok(Snapshot { metadata })
    }
}

impl GitStep {
    /// The remote (redacted), the full ref and the commit, as `git.*` pairs.
    fn described(&self, r: &Resolved) -> Vec<(String, String)> {
        vec![
            ("git.remote".into(), self.id.remote.to_string()),
            ("git.ref".into(), r.fullref.clone()),
            ("git.commit".into(), r.commit.clone()),
        ]
    }
}

impl Plugin for GitSource {
    fn info() -> PluginInfo {
        PluginInfo {
            id: PLUGIN_ID,
            version: env!("CARGO_PKG_VERSION"),
            schemes: &[SCHEME],
            capabilities: Capabilities::NETWORK | Capabilities::SECRETS,
            max_concurrency: 0,
        }
    }

    fn new(config: &str, host: Host) -> Result<Self> {
        let config: GitConfig = parse_config(config)?;
        let git = match &config.git {
            Some(p) if p.is_file() => p.clone(),
            Some(p) => {
                return Err(PluginError::skip(format!(
                    "the configured git program {} does not exist; install git (e.g. `apt-get install git`)",
                    p.display()
                )))
            }
            None => find_git(None)?,
        };
        if config.timeout_secs == 0 {
            return Err(PluginError::invalid_config(
                "timeout_secs must be at least 1",
            ));
        }
        tracing::debug!(git = %git.display(), "git source ready");
        Ok(Self {
            shared: Arc::new(Shared {
                git,
                timeout: Duration::from_secs(config.timeout_secs),
                allow_file_remotes: config.allow_file_remotes,
                state: host.state_dir(),
                memo: Memo::default(),
            }),
        })
    }
}

export_plugin!(GitSource);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::ErrorCode;

    fn source() -> GitSource {
        source_with(false)
    }

    fn source_with(allow_file_remotes: bool) -> GitSource {
        GitSource {
            shared: Arc::new(Shared {
                git: PathBuf::from("git"),
                timeout: Duration::from_secs(60),
                allow_file_remotes,
                state: PathBuf::from("/nonexistent"),
                memo: Memo::default(),
            }),
        }
    }

    fn request(reference: &str, attrs: &[(&str, &str)]) -> Request {
        Request {
            scheme: "git".into(),
            reference: reference.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
        }
    }

    #[test]
    fn identifier_through_the_source() {
        let id = source()
            .identifier(&request(
                "https://u:pw@github.com/moby/buildkit.git#v0.12.0:docs",
                &[],
            ))
            .unwrap();
        assert_eq!(
            id.to_string(),
            "git://github.com/moby/buildkit.git#v0.12.0:docs"
        );

        let e = source()
            .identifier(&request("https://u:pw@github.com/x.git#-bad", &[]))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_IDENTIFIER);
        assert!(
            e.message
                .starts_with("git://https://xxxxx:xxxxx@github.com/x.git#-bad: invalid git ref"),
            "{}",
            e.message
        );
        assert!(!e.message.contains("pw@"), "{}", e.message);
    }

    #[test]
    fn file_remotes_follow_the_switch() {
        let req = request(
            "localhost/srv/repo.git#main",
            &[("git.fullurl", "file:///srv/repo.git")],
        );
        let e = source().identifier(&req).unwrap_err();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert_eq!(
            e.message,
            "git://localhost/srv/repo.git#main: file:// remotes (file:///srv/repo.git) are \
             disabled; set allow_file_remotes = true in \
             [plugins.\"io.kiln.source.v1.git\".config] of kiln.toml to allow them"
        );
        let id = source_with(true).identifier(&req).unwrap();
        assert_eq!(id.remote.command_arg(), "file:///srv/repo.git");
        let c: GitConfig = parse_config("allow_file_remotes = true\n").unwrap();
        assert!(c.allow_file_remotes);
    }

    #[test]
    fn config_is_strict() {
        let c: GitConfig = parse_config("").unwrap();
        assert_eq!(c.timeout_secs, 3600);
        assert!(!c.allow_file_remotes);
        let e = parse_config::<GitConfig>("depth = 1\n").unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_CONFIG);
        assert!(e.message.contains("depth"), "{}", e.message);
    }

    #[test]
    fn git_detection() {
        let git =
            find_git(None).expect("this test needs git on PATH: install git (apt-get install git)");
        assert!(git.ends_with("git"), "{}", git.display());
        let e = find_git(Some(OsStr::new("/nonexistent-kiln-test-dir"))).unwrap_err();
        assert_eq!(e.code, ErrorCode::SKIP);
        assert!(
            e.message.starts_with("git not found on PATH"),
            "{}",
            e.message
        );
    }
}
