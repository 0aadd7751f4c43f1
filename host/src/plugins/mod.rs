//! The plugin registry: loads every configured plugin at start-up, records a status
//! for each, and hands the loaded ones to the SourceManager.

mod host_services;
mod loader;
pub mod schema;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use abi_stable::std_types::RResult;
use kiln_plugin_api::abi::{Capabilities, SourceBox};
use kiln_plugin_api::ErrorCode;
use serde::Serialize;

pub use host_services::{HostContext, JobContextImpl};
pub use schema::Schema;

use crate::config::{Config, ConfigError};

/// How many calls run at once in one plugin when it does not say.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 8;

/// The outcome of loading one configured plugin.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Loaded and serving its schemes.
    Loaded,
    /// The plugin asked to be skipped (e.g. a program it needs is missing).
    Skipped,
    /// Listed in `disabled_plugins`.
    Disabled,
    /// Could not be loaded; see the reason.
    Failed,
}

/// One row of `kiln plugins list`.
#[derive(Clone, Debug, Serialize)]
pub struct PluginStatus {
    /// The configured id.
    pub id: String,
    /// The file.
    pub path: PathBuf,
    /// The file's sha256 when computed (pinned, or asked for by `plugins list`).
    pub sha256: Option<String>,
    /// The plugin's own version, once described.
    pub version: Option<String>,
    /// The plugin-api version it was built against, once read.
    pub api_version: Option<String>,
    /// Its schemes, once described.
    pub schemes: Vec<String>,
    /// Loaded, skipped, disabled or failed.
    pub status: Status,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Its capability names, once described.
    pub capabilities: Vec<&'static str>,
    /// Calls the host runs at once in it (0 until described: the host's default).
    pub max_concurrency: u32,
    /// The attributes it declares, once described (`null`: it declares none).
    pub attributes: Schema,
    /// The id the file itself declares, once described.
    #[serde(skip)]
    pub declared_id: Option<String>,
}

/// A loaded plugin: its description and its source object.
pub struct LoadedPlugin {
    /// The configured id.
    pub id: String,
    /// The file it came from.
    pub path: PathBuf,
    /// Its own version.
    pub version: String,
    /// Schemes it serves.
    pub schemes: Vec<String>,
    /// Capability bits.
    pub capabilities: Capabilities,
    /// At most this many calls at once.
    pub max_concurrency: u32,
    /// The attributes it declares; checked before each `identifier` call.
    pub schema: Schema,
    /// The source object inside the plugin.
    pub source: SourceBox,
    poisoned: AtomicBool,
}

impl LoadedPlugin {
    /// Whether the plugin panicked earlier; a poisoned plugin is not called again.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Acquire)
    }

    /// Marks the plugin poisoned after a panic.
    pub fn poison(&self) {
        if !self.poisoned.swap(true, Ordering::AcqRel) {
            tracing::error!(plugin = %self.id, path = %self.path.display(), "plugin panicked; it is poisoned and will not be called again in this process");
        }
    }
}

/// The result of loading the configured plugins.
pub struct Registry {
    /// A status for every configured plugin, sorted by id.
    pub statuses: Vec<PluginStatus>,
    /// The loaded plugins.
    pub loaded: Vec<Arc<LoadedPlugin>>,
}

/// Options of [`load`].
#[derive(Default, Clone, Copy)]
pub struct LoadOptions {
    /// Hash every plugin file (for `plugins list`), not just the pinned ones.
    pub hash_all: bool,
    /// The command only reads (`plugins list`, `config check`): plugins get their
    /// state directory's path, but it is not created, so that such a command on a
    /// root that does not exist creates nothing.
    pub read_only: bool,
}

/// Loads every configured plugin. Per-plugin problems become statuses; problems of the
/// configuration as a whole (a required plugin not loaded, two plugins claiming one
/// scheme or id) are errors.
pub fn load(
    config: &Config,
    host: &Arc<HostContext>,
    opts: LoadOptions,
) -> Result<Registry, ConfigError> {
    let mut statuses = Vec::new();
    let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::new();
    for pc in &config.plugins {
        let mut status = PluginStatus {
            id: pc.id.clone(),
            path: pc.path.clone(),
            sha256: pc.sha256.clone(),
            version: None,
            api_version: None,
            schemes: Vec::new(),
            status: Status::Failed,
            reason: None,
            capabilities: Vec::new(),
            max_concurrency: 0,
            attributes: Schema::default(),
            declared_id: None,
        };
        if pc.disabled {
            status.status = Status::Disabled;
            statuses.push(status);
            continue;
        }
        let started = std::time::Instant::now();
        match load_one(pc, config, host, opts, &mut status) {
            Ok(plugin) => {
                status.status = Status::Loaded;
                tracing::debug!(plugin = %pc.id, elapsed = ?started.elapsed(), "plugin loaded");
                loaded.push(Arc::new(plugin));
            }
            Err((st, reason)) => {
                status.status = st;
                // A required plugin's failure is the command's error; don't say it twice.
                match st {
                    _ if pc.required => {
                        tracing::debug!(plugin = %pc.id, "required plugin did not load: {reason}")
                    }
                    Status::Skipped => tracing::info!(plugin = %pc.id, "plugin skipped: {reason}"),
                    _ => {
                        tracing::warn!(plugin = %pc.id, path = %pc.path.display(), "plugin failed to load: {reason}")
                    }
                }
                status.reason = Some(reason);
            }
        }
        statuses.push(status);
    }

    let mut by_id: BTreeMap<&str, &PluginStatus> = BTreeMap::new();
    for st in &statuses {
        let Some(declared) = st.declared_id.as_deref() else {
            continue;
        };
        if let Some(other) = by_id.insert(declared, st) {
            return Err(config_error(
                config,
                format!(
                    "plugins {:?} ({}) and {:?} ({}) both declare the plugin id {declared:?}",
                    other.id,
                    other.path.display(),
                    st.id,
                    st.path.display()
                ),
            ));
        }
    }
    let mut by_scheme: BTreeMap<&str, &LoadedPlugin> = BTreeMap::new();
    for p in &loaded {
        for s in &p.schemes {
            if let Some(other) = by_scheme.insert(s, p) {
                return Err(config_error(
                    config,
                    format!(
                        "plugins {:?} ({}) and {:?} ({}) both claim the scheme {s:?}",
                        other.id,
                        other.path.display(),
                        p.id,
                        p.path.display()
                    ),
                ));
            }
        }
    }
    for pc in config.plugins.iter().filter(|p| p.required) {
        let st = statuses
            .iter()
            .find(|s| s.id == pc.id)
            .expect("status per plugin");
        if st.status != Status::Loaded {
            return Err(config_error(
                config,
                format!(
                    "required plugin {:?} ({}) did not load: {}",
                    pc.id,
                    pc.path.display(),
                    st.reason.as_deref().unwrap_or("disabled")
                ),
            ));
        }
    }
    Ok(Registry { statuses, loaded })
}

fn config_error(config: &Config, msg: String) -> ConfigError {
    ConfigError::from_message(format!("{}: {msg}", config.source))
}

fn load_one(
    pc: &crate::config::PluginConfig,
    config: &Config,
    host: &Arc<HostContext>,
    opts: LoadOptions,
    status: &mut PluginStatus,
) -> Result<LoadedPlugin, (Status, String)> {
    let failed = |r: String| (Status::Failed, r);
    let opened =
        loader::open_plugin(&pc.path, pc.sha256.as_deref(), opts.hash_all).map_err(|e| {
            status.api_version = e.api_version.clone();
            if let Some(d) = &e.detail {
                tracing::debug!(plugin = %pc.id, "plugin load detail: {d}");
            }
            failed(e.reason)
        })?;
    status.sha256 = opened.sha256.clone();
    status.api_version = Some(opened.api_version.clone());
    let d = (opened.module.describe())();
    if let Some(e) = d
        .extra
        .iter()
        .find(|kv| kv.key.as_str() == kiln_plugin_api::DESCRIBE_ERROR)
    {
        return Err(failed(format!("its describe() failed: {}", e.value)));
    }
    status.declared_id = Some(d.id.to_string());
    status.version = Some(d.version.to_string());
    status.schemes = d.schemes.iter().map(|s| s.to_string()).collect();
    status.capabilities = Capabilities(d.capabilities).names();
    status.max_concurrency = if d.max_concurrency == 0 {
        DEFAULT_MAX_CONCURRENCY
    } else {
        d.max_concurrency
    };
    status.attributes = Schema::from_extra(&d.extra);
    if d.id.as_str() != pc.id {
        return Err(failed(format!(
            "the file declares plugin id {:?}, but it is configured as {:?}",
            d.id.as_str(),
            pc.id
        )));
    }
    if !d.panic_unwind {
        return Err(failed(
            "built with panic = \"abort\"; kiln needs plugins built with panic = \"unwind\"".into(),
        ));
    }
    if d.schemes.is_empty() {
        return Err(failed("declares no schemes".into()));
    }
    let new_source = opened.module.new_source();
    let services = host_services::services_for(host, &pc.id);
    match new_source(pc.config_toml.as_str().into(), services) {
        RResult::ROk(source) => Ok(LoadedPlugin {
            id: pc.id.clone(),
            path: pc.path.clone(),
            version: d.version.to_string(),
            schemes: status.schemes.clone(),
            capabilities: Capabilities(d.capabilities),
            max_concurrency: status.max_concurrency,
            schema: status.attributes.clone(),
            source,
            poisoned: AtomicBool::new(false),
        }),
        RResult::RErr(e) if e.code == ErrorCode::SKIP => {
            Err((Status::Skipped, e.message.to_string()))
        }
        RResult::RErr(e) if e.code == ErrorCode::INVALID_CONFIG => {
            Err(failed(config_error_message(config, &pc.id, &e.message)))
        }
        RResult::RErr(e) => Err(failed(format!("{}: {}", e.code, e.message))),
    }
}

/// A plugin's `invalid config` error, pointed at the line and column in `kiln.toml` of
/// the key it is about (see [`kiln_plugin_api::config_error`]), or of the plugin's
/// `config` table when it names no key it can be found by.
fn config_error_message(config: &Config, id: &str, message: &str) -> String {
    let (key, rest) = kiln_plugin_api::config_error_key(message).unwrap_or(("", message));
    let at = locate_config_key(&config.text, id, key)
        .map(|(line, col)| format!(" at line {line}, column {col}"))
        .unwrap_or_default();
    let what = if key.is_empty() {
        "config".to_string()
    } else {
        format!("config key `{key}`")
    };
    let rest = rest.strip_prefix("config: ").unwrap_or(rest);
    format!(
        "invalid config: {}{at}: plugin {id:?}: {what}: {rest}",
        config.source
    )
}

/// The 1-based line and column in `text` of `[plugins."ID".config]` key `key` (a
/// dotted path): the deepest part of the path that exists, else the `config` key,
/// else the plugin's own key.
fn locate_config_key(text: &str, id: &str, key: &str) -> Option<(usize, usize)> {
    use toml_edit::{ImDocument, Item};
    let doc = ImDocument::parse(text).ok()?;
    let (plugin_key, plugin) = doc
        .get_key_value("plugins")?
        .1
        .as_table_like()?
        .get_key_value(id)?;
    let mut span = plugin_key.span().or_else(|| plugin.span());
    let mut cur: &Item = plugin;
    let segments = std::iter::once("config").chain(key.split('.').filter(|s| !s.is_empty()));
    for seg in segments {
        let seg = seg.trim().trim_matches('"');
        let Some((k, item)) = cur.as_table_like().and_then(|t| t.get_key_value(seg)) else {
            break;
        };
        span = k.span().or_else(|| item.span()).or(span);
        cur = item;
    }
    span.map(|s| crate::text::line_col(text, s.start))
}

#[cfg(test)]
mod tests {
    use super::locate_config_key;

    #[test]
    fn config_keys_are_found_in_every_toml_form() {
        let text = "version = 1\n[plugins.\"a.b\"]\npath = \"p\"\n[plugins.\"a.b\".config]\ngreeting = \"x\"\n  retries = \"three\"\n[plugins.\"a.b\".config.proxy]\nurl = 5\n";
        assert_eq!(locate_config_key(text, "a.b", "retries"), Some((6, 3)));
        assert_eq!(locate_config_key(text, "a.b", "proxy.url"), Some((8, 1)));
        // An unknown key: the deepest part that exists (the config table).
        assert_eq!(locate_config_key(text, "a.b", "nope"), Some((4, 16)));
        let inline = "version = 1\n[plugins.x]\npath = \"p\"\nconfig = { a = 1, b = \"2\" }\n";
        assert_eq!(locate_config_key(inline, "x", "b"), Some((4, 19)));
        // No config table at all: the plugin's own key.
        let bare = "version = 1\n[plugins.x]\npath = \"p\"\n";
        assert_eq!(locate_config_key(bare, "x", ""), Some((2, 10)));
        assert_eq!(locate_config_key(bare, "y", ""), None);
    }
}
