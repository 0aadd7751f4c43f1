//! # kiln-source-http
//!
//! The `http://` and `https://` source plugin of kiln (`io.kiln.source.v1.http`),
//! with BuildKit's cache keys byte for byte (`reference/buildkit-sources.md` §3.5):
//!
//! - key = `sha256:` of Go's JSON `{"Filename","Perm","UID","GID","Checksum"}` plus
//!   `LastModTime`, `AuthHeaderSecret` and `Header` when set; pin = content digest;
//!   one key (`done` at index 0). With `http.checksum`, no request at key time.
//! - revalidation by ETag (`HEAD` + `If-None-Match`), scoped by a hash of the URL and
//!   the attributes; odd servers fall back to a full GET, never to a failure;
//! - downloads stream into the host's content store, resume with `Range` after a cut
//!   or a killed process, retry with backoff; one process at a time per URL;
//! - secrets `HTTP_AUTH_HEADER_<host>`, `HTTP_AUTH_TOKEN_<host>` or the one named by
//!   `http.authheadersecret`; credentials never shown;
//! - `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY` as Go reads them, unless the config
//!   names a proxy.
//!
//! Configuration: see [`config`].

pub mod client;
pub mod config;
pub mod fetch;
pub mod filename;
pub mod gojson;
pub mod ident;
pub mod index;
pub use kiln_source_net::proxy;
pub mod step;

use std::sync::Arc;

use kiln_plugin_api::{
    export_plugin, Capabilities, Host, Plugin, PluginInfo, Request, Result, Source, SourceInstance,
};

use crate::config::Config;
use crate::fetch::Semaphore;
use crate::ident::HttpIdentifier;
use crate::step::{HttpStep, Memo, Shared};

/// The plugin's id.
pub const PLUGIN_ID: &str = "io.kiln.source.v1.http";

/// The http source.
pub struct HttpSource {
    shared: Arc<Shared>,
}

impl Source for HttpSource {
    type Identifier = HttpIdentifier;

    fn identifier(&self, request: &Request) -> Result<HttpIdentifier> {
        HttpIdentifier::parse(request)
    }

    fn resolve(&self, id: HttpIdentifier) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(HttpStep::new(self.shared.clone(), id)))
    }
}

impl Plugin for HttpSource {
    fn info() -> PluginInfo {
        PluginInfo {
            id: PLUGIN_ID,
            version: env!("CARGO_PKG_VERSION"),
            schemes: &["http", "https"],
            capabilities: Capabilities::NETWORK
                | Capabilities::SECRETS
                | Capabilities::CONTENT_STORE,
            max_concurrency: 0,
        }
    }

    fn attributes() -> Vec<kiln_plugin_api::AttrSpec> {
        ident::attributes()
    }

    fn new(config: &str, host: Host) -> Result<Self> {
        let cfg = Config::parse(config)?;
        let agents = cfg.agents()?;
        let slots = Semaphore::new(cfg.max_concurrent_downloads);
        Ok(HttpSource {
            shared: Arc::new(Shared {
                cfg,
                agents,
                host,
                index: Default::default(),
                slots,
                memo: Memo::default(),
            }),
        })
    }
}

export_plugin!(HttpSource);
