//! The SourceManager: routes identifiers to plugins by scheme and turns a plugin's
//! answers into the source op's cache map (BuildKit's `sourceOp.CacheMap`).
//!
//! It knows nothing of any source type. Every call into a plugin runs on tokio's
//! blocking pool, at most `max_concurrency` at once per plugin; a plugin that panicked is
//! poisoned and later calls fail at once with a clear error.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use abi_stable::std_types::RResult;
use kiln_plugin_api::abi::{SnapshotResult, SourceInstanceBox};
use kiln_plugin_api::{ErrorCode, PluginError, Request};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::job::Job;
use crate::plugins::{JobContextImpl, LoadedPlugin};

/// BuildKit's source cache type, the prefix of every source key digest.
pub const SOURCE_CACHE_TYPE: &str = "buildkit.source.v0";

/// A failure of the SourceManager or of a plugin call. Its message names the
/// identifier (credentials redacted by the plugin) and the plugin.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// The plugin's error code, or the manager's own classification.
    pub code: ErrorCode,
    /// One readable paragraph.
    pub message: String,
    /// The id of the plugin that failed, when a plugin did.
    pub plugin: Option<String>,
}

impl SourceError {
    /// An error with no plugin named.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            plugin: None,
        }
    }

    fn plugin(mut self, id: &str) -> Self {
        self.plugin = Some(id.to_string());
        self
    }

    /// Whether this is the user's mistake (bad identifier, unknown scheme, bad
    /// attribute): `kiln` exits with code 2 for these.
    pub fn is_usage(&self) -> bool {
        self.code == ErrorCode::INVALID_IDENTIFIER
    }
}

/// The digest of a source op's key: `sha256("buildkit.source.v0:" + key)`, written
/// `sha256:<hex>`, or `random:<hex>` for keys that start with `session:`.
pub fn source_key_digest(key: &str) -> String {
    let hex = hex::encode(Sha256::digest(
        format!("{SOURCE_CACHE_TYPE}:{key}").as_bytes(),
    ));
    if key.starts_with("session:") {
        format!("random:{hex}")
    } else {
        format!("sha256:{hex}")
    }
}

struct Plugin {
    loaded: Arc<LoadedPlugin>,
    permits: Arc<Semaphore>,
}

impl Plugin {
    /// Runs `f` against the plugin on the blocking pool, within its concurrency limit.
    async fn call<T, F>(self: &Arc<Self>, what: &str, f: F) -> Result<T, SourceError>
    where
        T: Send + 'static,
        F: FnOnce(&LoadedPlugin) -> RResult<T, PluginError> + Send + 'static,
    {
        let id = &self.loaded.id;
        if self.loaded.is_poisoned() {
            return Err(SourceError::new(
                ErrorCode::PANICKED,
                format!("plugin {id} is poisoned: it panicked earlier in this process and is no longer called"),
            )
            .plugin(id));
        }
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| SourceError::new(ErrorCode::INTERNAL, "plugin pool closed"))?;
        let plugin = self.loaded.clone();
        // The permit moves into the blocking call: if the caller gives up waiting, the
        // call still counts against the plugin's limit until it really returns.
        let result = tokio::task::spawn_blocking(move || {
            let r = f(&plugin);
            drop(permit);
            r
        })
        .await
        .map_err(|e| {
            SourceError::new(
                ErrorCode::INTERNAL,
                format!("plugin {id}: {what} did not finish: {e}"),
            )
        })?;
        match result {
            RResult::ROk(v) => Ok(v),
            RResult::RErr(e) => {
                let code = e.code.known();
                if code == ErrorCode::PANICKED {
                    self.loaded.poison();
                }
                Err(SourceError::new(code, format!("plugin {id}: {}", e.message)).plugin(id))
            }
        }
    }
}

/// The scheme → plugin table.
pub struct SourceManager {
    by_scheme: BTreeMap<String, Arc<Plugin>>,
    /// Configured plugins that are not serving: the schemes each would serve and a
    /// sentence saying which plugin it is and why it is not loaded.
    unavailable: Vec<(Vec<String>, String)>,
}

/// A parsed identifier: what the plugin made of it.
#[derive(Clone)]
pub struct SourceIdentifier {
    /// The scheme before `://`.
    pub scheme: String,
    /// The canonical identifier the plugin returned.
    pub canonical: String,
    /// The request as the plugin received it (identifier text, attrs, platform).
    pub request: Request,
    plugin: Arc<Plugin>,
}

impl std::fmt::Debug for SourceIdentifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceIdentifier")
            .field("canonical", &self.canonical)
            .field("plugin", &self.plugin.loaded.id)
            .finish()
    }
}

impl SourceIdentifier {
    /// The id of the plugin that serves it.
    pub fn plugin_id(&self) -> &str {
        &self.plugin.loaded.id
    }
}

/// One answer of [`SourceOp::cache_map`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheMap {
    /// The index asked for.
    pub index: u32,
    /// The plugin's key string.
    pub key: String,
    /// `sha256:<hex>` or `random:<hex>` (see [`source_key_digest`]): BuildKit's digest,
    /// what `source resolve` shows.
    pub digest: String,
    /// The digest the host's cache index files this key under: `digest` mixed with the
    /// plugin's id ([`crate::source_cache::index_digest`]), so that two plugins
    /// answering the same key string never share an entry.
    pub index_digest: String,
    /// The pin the plugin returned with this key.
    pub pin: String,
    /// `false`: a stronger key exists at `index + 1`.
    pub done: bool,
    /// Load hints.
    pub opts: Vec<(String, String)>,
}

/// One source step, resolved: BuildKit's `sourceOp`.
pub struct SourceOp {
    id: SourceIdentifier,
    instance: Arc<SourceInstanceBox>,
    pin: Mutex<Option<String>>,
}

impl SourceManager {
    /// A manager serving the loaded plugins' schemes.
    pub fn new(plugins: &[Arc<LoadedPlugin>]) -> Self {
        let mut by_scheme = BTreeMap::new();
        for p in plugins {
            let plugin = Arc::new(Plugin {
                loaded: p.clone(),
                permits: Arc::new(Semaphore::new(p.max_concurrency.max(1) as usize)),
            });
            for s in &p.schemes {
                by_scheme.insert(s.clone(), plugin.clone());
            }
        }
        Self {
            by_scheme,
            unavailable: Vec::new(),
        }
    }

    /// Remembers the configured plugins that failed or are disabled, so that an
    /// identifier of a scheme one of them would serve names it and why it is not
    /// loaded. Its schemes are the ones its file declared, else the last part of its
    /// id (the `io.kiln.source.v1.<scheme>` convention).
    pub fn with_unavailable(mut self, statuses: &[crate::plugins::PluginStatus]) -> Self {
        use crate::plugins::Status;
        for st in statuses {
            let why = match st.status {
                Status::Loaded => continue,
                Status::Disabled => "is listed in disabled_plugins".to_string(),
                Status::Skipped => format!(
                    "was skipped: {}",
                    st.reason.as_deref().unwrap_or("no reason given")
                ),
                Status::Failed => format!(
                    "failed to load: {}",
                    st.reason.as_deref().unwrap_or("no reason given")
                ),
            };
            let schemes = if st.schemes.is_empty() {
                st.id
                    .rsplit('.')
                    .next()
                    .map(str::to_string)
                    .into_iter()
                    .collect()
            } else {
                st.schemes.clone()
            };
            let text = format!("plugin {:?} ({}) {why}", st.id, st.path.display());
            self.unavailable.push((schemes, text));
        }
        self
    }

    /// The schemes served, sorted.
    pub fn schemes(&self) -> Vec<&str> {
        self.by_scheme.keys().map(String::as_str).collect()
    }

    /// Splits `identifier` at the first `://` and asks the scheme's plugin to parse it
    /// with `attrs` and `platform`.
    pub async fn identifier(
        &self,
        identifier: &str,
        attrs: &BTreeMap<String, String>,
        platform: Option<&str>,
    ) -> Result<SourceIdentifier, SourceError> {
        let Some((scheme, rest)) = identifier.split_once("://") else {
            return Err(SourceError::new(
                ErrorCode::INVALID_IDENTIFIER,
                format!(
                    "invalid source identifier {:?}: it has no scheme (expected SCHEME://…; known schemes: {})",
                    redact_userinfo(identifier),
                    self.schemes().join(", ")
                ),
            ));
        };
        let Some(plugin) = self.by_scheme.get(scheme) else {
            if let Some((_, why)) = self
                .unavailable
                .iter()
                .find(|(schemes, _)| schemes.iter().any(|s| s == scheme))
            {
                return Err(SourceError::new(
                    ErrorCode::INVALID_IDENTIFIER,
                    format!(
                        "unknown scheme {scheme:?} in source identifier {:?}: {why}",
                        redact_userinfo(identifier)
                    ),
                ));
            }
            return Err(SourceError::new(
                ErrorCode::INVALID_IDENTIFIER,
                format!(
                    "unknown scheme {scheme:?} in source identifier {:?} (known schemes: {})",
                    redact_userinfo(identifier),
                    if self.by_scheme.is_empty() {
                        "none: no source plugin is loaded".to_string()
                    } else {
                        self.schemes().join(", ")
                    }
                ),
            ));
        };
        let request = Request {
            scheme: scheme.to_string(),
            reference: rest.to_string(),
            attrs: attrs.clone(),
            platform: platform.map(str::to_string),
        };
        plugin
            .loaded
            .schema
            .check(&plugin.loaded.id, &request)
            .map_err(|m| {
                SourceError::new(ErrorCode::INVALID_IDENTIFIER, m).plugin(&plugin.loaded.id)
            })?;
        let abi = request.to_abi();
        let canonical = plugin
            .call("identifier", move |p| p.source.identifier(&abi))
            .await?
            .into_string();
        Ok(SourceIdentifier {
            scheme: scheme.to_string(),
            canonical,
            request,
            plugin: plugin.clone(),
        })
    }

    /// Builds the source op for a parsed identifier (no network work).
    pub async fn resolve(&self, id: &SourceIdentifier) -> Result<SourceOp, SourceError> {
        let abi = id.request.to_abi();
        let instance = id
            .plugin
            .call("resolve", move |p| p.source.resolve(&abi))
            .await
            .map_err(|e| e.with_identifier(&id.canonical))?;
        Ok(SourceOp {
            id: id.clone(),
            instance: Arc::new(instance),
            pin: Mutex::new(None),
        })
    }
}

impl SourceError {
    fn with_identifier(mut self, identifier: &str) -> Self {
        self.message = format!("source {identifier}: {}", self.message);
        self
    }
}

impl SourceOp {
    /// The identifier this op was resolved from.
    pub fn identifier(&self) -> &SourceIdentifier {
        &self.id
    }

    /// The cache map at `index`, for step `step` of `job`. The first pin returned
    /// (at any index) is kept as the op's pin.
    pub async fn cache_map(
        &self,
        index: u32,
        job: &Arc<Job>,
        step: &str,
    ) -> Result<CacheMap, SourceError> {
        let instance = self.instance.clone();
        let ctx = JobContextImpl::boxed(job.clone(), step.to_string());
        let r = self
            .id
            .plugin
            .call("cache_key", move |_| instance.cache_key(index, &ctx))
            .await
            .map_err(|e| e.with_identifier(&self.id.canonical))?;
        let pin = r.pin.into_string();
        {
            let mut stored = self.pin.lock().unwrap_or_else(|e| e.into_inner());
            if stored.is_none() && !pin.is_empty() {
                *stored = Some(pin.clone());
            }
        }
        let key = r.key.into_string();
        let digest = source_key_digest(&key);
        Ok(CacheMap {
            index,
            index_digest: crate::source_cache::index_digest(self.id.plugin_id(), &digest),
            digest,
            key,
            pin,
            done: r.done,
            opts: r
                .opts
                .into_iter()
                .map(|kv| (kv.key.into_string(), kv.value.into_string()))
                .collect(),
        })
    }

    /// Every cache map from index 0 until the plugin says `done` (at most 16).
    pub async fn all_cache_maps(
        &self,
        job: &Arc<Job>,
        step: &str,
    ) -> Result<Vec<CacheMap>, SourceError> {
        let mut maps = Vec::new();
        for index in 0..16 {
            let m = self.cache_map(index, job, step).await?;
            let done = m.done;
            maps.push(m);
            if done {
                return Ok(maps);
            }
        }
        Err(SourceError::new(
            ErrorCode::INTERNAL,
            format!(
                "source {}: the plugin never answered done=true",
                self.id.canonical
            ),
        ))
    }

    /// The first pin returned by `cache_map`, if any.
    pub fn pin(&self) -> Option<String> {
        self.pin.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Asks the plugin to write the content into `staging_dir` (an empty directory
    /// the host created). Returns the plugin's metadata.
    pub async fn snapshot(
        &self,
        staging_dir: &Path,
        job: &Arc<Job>,
        step: &str,
    ) -> Result<HashMap<String, String>, SourceError> {
        let instance = self.instance.clone();
        let ctx = JobContextImpl::boxed(job.clone(), step.to_string());
        let dir = staging_dir.to_string_lossy().into_owned();
        let r: SnapshotResult = self
            .id
            .plugin
            .call("snapshot", move |_| {
                instance.snapshot(dir.as_str().into(), &ctx)
            })
            .await
            .map_err(|e| e.with_identifier(&self.id.canonical))?;
        Ok(r.metadata
            .into_iter()
            .map(|kv| (kv.key.into_string(), kv.value.into_string()))
            .collect())
    }
}

/// `scheme://user:pass@host/…` → `scheme://xxxxx:xxxxx@host/…` (for messages about
/// identifiers a plugin has not parsed).
pub fn redact_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let red = if userinfo.contains(':') {
                "xxxxx:xxxxx"
            } else {
                "xxxxx"
            };
            format!("{scheme}://{red}{}", &rest[at..])
        }
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_rules() {
        let d = source_key_digest("abc");
        let want = hex::encode(Sha256::digest(b"buildkit.source.v0:abc"));
        assert_eq!(d, format!("sha256:{want}"));
        let r = source_key_digest("session:ctx:sha256:00");
        assert!(r.starts_with("random:"));
        assert_eq!(
            r["random:".len()..],
            hex::encode(Sha256::digest(b"buildkit.source.v0:session:ctx:sha256:00"))
        );
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact_userinfo("https://u:p@h/x@y"),
            "https://xxxxx:xxxxx@h/x@y"
        );
        assert_eq!(redact_userinfo("https://tok@h/x"), "https://xxxxx@h/x");
        assert_eq!(redact_userinfo("https://h/x"), "https://h/x");
    }
}
