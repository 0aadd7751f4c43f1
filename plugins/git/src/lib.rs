//! kiln's git source plugin (`io.kiln.source.v1.git`, scheme `git`).
//!
//! This version parses and validates identifiers and attributes by BuildKit's rules
//! ([`identifier`], [`url`], [`attrs`]); cache keys and snapshots answer
//! `unsupported` until the fetching code lands next to these modules.
//!
//! Configuration (`[plugins."io.kiln.source.v1.git".config]` in `kiln.toml`): no keys
//! yet; an unknown key is an error.
//!
//! The plugin is skipped (not failed) when the `git` program is not on `PATH`, as
//! BuildKit registers its git source only when `git version` runs.

pub mod attrs;
pub mod identifier;
pub mod url;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use kiln_plugin_api::{
    export_plugin, parse_config, CacheKey, Capabilities, Host, Job, Plugin, PluginError,
    PluginInfo, Request, Result, Snapshot, Source, SourceInstance,
};
use serde::Deserialize;

pub use identifier::{GitIdentifier, IdentifierError};

/// The plugin id.
pub const PLUGIN_ID: &str = "io.kiln.source.v1.git";
/// The scheme it serves.
pub const SCHEME: &str = "git";

/// The plugin's `config` table. No keys yet; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitConfig {}

/// The git source.
pub struct GitSource {
    /// The `git` program found on `PATH` at start-up.
    pub git: PathBuf,
    #[allow(dead_code)]
    config: GitConfig,
}

/// Finds the `git` program on `PATH` (or on `path` when given) without running it, so
/// that loading the plugin costs no process start; returns its path, or a `skip` error
/// saying what to install.
pub fn find_git(path: Option<&OsStr>) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("git"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            PluginError::skip(
                "git not found on PATH; install git (e.g. `apt-get install git`) to use git sources",
            )
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
        GitIdentifier::parse(&request.reference, &request.attrs).map_err(|e| {
            PluginError::invalid_identifier(format!(
                "git://{}: {e}",
                url::redact(&request.reference)
            ))
        })
    }

    fn resolve(&self, id: GitIdentifier) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(GitStep { id }))
    }
}

/// One git source step.
struct GitStep {
    id: GitIdentifier,
}

impl GitStep {
    fn unsupported(&self, what: &str) -> PluginError {
        PluginError::unsupported(format!(
            "git: {what} are not implemented yet in this kiln (identifier parsing only); cannot fetch {}",
            self.id
        ))
    }
}

impl SourceInstance for GitStep {
    fn cache_key(&self, _index: u32, _job: &Job<'_>) -> Result<CacheKey> {
        Err(self.unsupported("cache keys and snapshots"))
    }

    fn snapshot(&self, _dest: &Path, _job: &Job<'_>) -> Result<Snapshot> {
        Err(self.unsupported("cache keys and snapshots"))
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

    fn new(config: &str, _host: Host) -> Result<Self> {
        let config: GitConfig = parse_config(config)?;
        let git = find_git(None)?;
        tracing::debug!(git = %git.display(), "git source ready");
        Ok(Self { git, config })
    }
}

export_plugin!(GitSource);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::ErrorCode;

    fn source() -> GitSource {
        GitSource {
            git: PathBuf::from("git"),
            config: GitConfig::default(),
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
    fn cache_key_and_snapshot_say_unsupported() {
        let id = source()
            .identifier(&request("github.com/x/y.git", &[]))
            .unwrap();
        let step = GitStep { id };
        let e = step.unsupported("cache keys and snapshots");
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert!(e
            .message
            .contains("not implemented yet in this kiln (identifier parsing only)"));
        assert!(e.message.contains("git://github.com/x/y.git"));
    }

    #[test]
    fn config_is_strict() {
        let c: GitConfig = parse_config("").unwrap();
        let _ = c;
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
