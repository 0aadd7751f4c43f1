//! The application context every command works in: the configuration, the loaded
//! plugins behind a SourceManager, and the kiln root with its store.

use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::plugins::{self, HostContext, LoadOptions, PluginStatus};
use crate::source_manager::SourceManager;
use crate::store::Store;

/// What a command needs: config, plugins, SourceManager and the root.
pub struct AppContext {
    /// The configuration in force.
    pub config: Config,
    /// The kiln root.
    pub root: PathBuf,
    /// A status per configured plugin.
    pub plugin_statuses: Vec<PluginStatus>,
    /// Routes identifiers to plugins.
    pub sources: Arc<SourceManager>,
    host: Arc<HostContext>,
}

impl AppContext {
    /// Loads the plugins of `config` with the root `root` and the plugin log level.
    pub fn new(
        config: Config,
        root: PathBuf,
        max_log_level: u8,
        opts: LoadOptions,
    ) -> Result<Self, ConfigError> {
        let host = HostContext::new(root.clone(), max_log_level);
        let host = Arc::new(if opts.read_only {
            host.read_only()
        } else {
            host
        });
        let registry = plugins::load(&config, &host, opts)?;
        let sources =
            Arc::new(SourceManager::new(&registry.loaded).with_unavailable(&registry.statuses));
        Ok(Self {
            config,
            root,
            plugin_statuses: registry.statuses,
            sources,
            host,
        })
    }

    /// The store under the root, opened (and created) on first use.
    pub fn store(&self) -> Result<Arc<Store>, String> {
        self.host.store()
    }
}
