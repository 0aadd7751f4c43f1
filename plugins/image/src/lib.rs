//! kiln's image source plugin (`io.kiln.source.v1.image`, schemes `docker-image` and
//! `oci-layout`).
//!
//! Identifiers, attributes and platforms are parsed by BuildKit's rules
//! ([`identifier`], [`reference`], [`digest`]); [`registry`] speaks the OCI
//! distribution protocol with [`credentials`] as docker and podman keep them; [`pull`]
//! resolves index → manifest → config into the host's content store and writes the
//! rootfs with [`unpack`]; [`keys`] gives BuildKit's two cache keys. The `config`
//! table is [`config::ImageConfig`].

pub mod config;
pub mod credentials;
pub mod digest;
pub mod identifier;
pub mod keys;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod state;
pub mod tls;
pub mod unpack;

use std::path::Path;
use std::sync::{Arc, Mutex};

use kiln_plugin_api::{
    export_plugin, parse_config, CacheKey, Capabilities, Host, Job, Plugin, PluginError,
    PluginInfo, Request, Result, Snapshot, Source, SourceInstance,
};

pub use config::ImageConfig;
pub use identifier::{Identifier, IdentifierError, ImageIdentifier, OciIdentifier};
pub use kiln_plugin_api::platform::Platform;
pub use reference::Reference;

use identifier::ResolveMode;
use pull::{Origin, Resolved};
use registry::{Client, Repo};
use state::State;

/// The plugin id.
pub const PLUGIN_ID: &str = "io.kiln.source.v1.image";

/// The image source.
pub struct ImageSource {
    config: Arc<ImageConfig>,
    host: Host,
    state: State,
}

impl Source for ImageSource {
    type Identifier = Identifier;

    fn identifier(&self, request: &Request) -> Result<Identifier> {
        Identifier::parse(
            &request.scheme,
            &request.reference,
            &request.attrs,
            request.platform.as_deref(),
        )
        .map_err(|e| {
            PluginError::invalid_identifier(format!(
                "{}://{}: {e}",
                request.scheme, request.reference
            ))
        })
    }

    fn resolve(&self, id: Identifier) -> Result<Box<dyn SourceInstance>> {
        Ok(Box::new(ImageStep {
            id,
            config: self.config.clone(),
            host: self.host.clone(),
            state: self.state.clone(),
            resolved: Mutex::new(None),
        }))
    }
}

/// One image source step. The resolution (documents, keys) is made once and reused by
/// later key indexes and the snapshot.
struct ImageStep {
    id: Identifier,
    config: Arc<ImageConfig>,
    host: Host,
    state: State,
    resolved: Mutex<Option<(Arc<Origin>, Resolved)>>,
}

impl ImageStep {
    /// The reference text for messages and `image.ref` (never holds credentials).
    fn name(&self) -> String {
        self.id.to_string()
    }

    fn resolved(&self, job: &Job<'_>) -> Result<(Arc<Origin>, Resolved)> {
        let mut g = self.resolved.lock().expect("resolved lock");
        if let Some(r) = g.as_ref() {
            return Ok(r.clone());
        }
        let r = match &self.id {
            Identifier::Image(i) => self.resolve_image(i)?,
            Identifier::Oci(o) => self.resolve_layout(o, job)?,
        };
        *g = Some(r.clone());
        Ok(r)
    }

    fn resolve_image(&self, i: &ImageIdentifier) -> Result<(Arc<Origin>, Resolved)> {
        let name = self.name();
        let r = &i.reference;
        let repo = Repo {
            host: r.domain().unwrap_or("docker.io").to_string(),
            path: r.path().to_string(),
        };
        let repo_name = r.name();
        let client = Client::new(self.config.clone());
        let mut top_doc = None;
        let top = if let Some(d) = r.digest() {
            let d = d.to_string();
            if self.host.blob_path(&d).is_none() || !self.state.has_source(&repo_name, &d) {
                let (bytes, ctype, _) = fetch_top(&client, &repo, &d, Some(&d), &name)?;
                top_doc = Some((bytes, ctype));
            }
            d
        } else {
            let tag = r.tag().unwrap_or("latest");
            let name_tag = format!("{repo_name}:{tag}");
            // The digest this tag last resolved to, if its manifest is still stored.
            let recorded = || {
                self.state
                    .tag(&name_tag)
                    .filter(|d| self.host.blob_path(d).is_some())
            };
            let local = match i.resolve_mode {
                ResolveMode::PreferLocal => recorded(),
                _ => None,
            };
            match local {
                Some(d) => {
                    tracing::debug!("{name}: resolvemode=local: using {d}, recorded earlier");
                    d
                }
                None => match fetch_top(&client, &repo, tag, None, &name) {
                    Ok((bytes, ctype, d)) => {
                        self.state.set_tag(&name_tag, &d);
                        top_doc = Some((bytes, ctype));
                        d
                    }
                    // BuildKit's default mode falls back to the local store when the
                    // registry cannot be reached.
                    Err(e)
                        if i.resolve_mode == ResolveMode::Default
                            && e.code == kiln_plugin_api::ErrorCode::NETWORK =>
                    {
                        let d = recorded().ok_or(e.clone())?;
                        tracing::warn!("{name}: the registry cannot be reached ({e}); using {d}, recorded earlier");
                        d
                    }
                    Err(e) => return Err(e),
                },
            }
        };
        if let Some(c) = &i.checksum {
            if c.to_string() != top {
                return Err(PluginError::checksum_mismatch(format!(
                    "image digest {top} for {name} does not match expected checksum {c}"
                )));
            }
        }
        if let Some((bytes, _)) = &top_doc {
            pull::commit_small(&self.host, &top, bytes)?;
            // Only a fetch from this repository proves it serves the digest.
            self.state.set_source(&repo_name, &top);
        }
        let origin = Origin::Registry { client, repo };
        let res = pull::resolve_from(
            &self.host,
            &origin,
            &top,
            top_doc,
            &i.platform,
            i.layer_limit,
            &name,
        )?;
        Ok((Arc::new(origin), res))
    }

    fn resolve_layout(&self, o: &OciIdentifier, job: &Job<'_>) -> Result<(Arc<Origin>, Resolved)> {
        let name = self.name();
        let layout_name = o.reference.name();
        let dir = job.oci_layout_dir(&layout_name).ok_or_else(|| {
            PluginError::not_found(format!(
                "{name}: no OCI layout directory named {layout_name:?} was given (use --oci-layout {layout_name}=DIR)"
            ))
        })?;
        let top = match o.digest() {
            Some(d) => d.to_string(),
            None => pull::layout_tag(&dir, &layout_name, o.reference.tag().unwrap_or("latest"))?,
        };
        let origin = Origin::Layout { dir };
        let res = pull::resolve_from(
            &self.host,
            &origin,
            &top,
            None,
            &o.platform,
            o.layer_limit,
            &name,
        )?;
        Ok((Arc::new(origin), res))
    }
}

/// GETs the top-level manifest or index by tag or digest and verifies it: against the
/// digest asked for, else against `Docker-Content-Digest` when the registry sends one.
/// Returns the bytes, their content type and their digest.
fn fetch_top(
    client: &Client,
    repo: &Repo,
    reference: &str,
    want: Option<&str>,
    name: &str,
) -> Result<(Vec<u8>, Option<String>, String)> {
    let r = client.manifest(repo, reference)?;
    let got = keys::sha256_digest(&r.bytes);
    let expected = want
        .map(str::to_string)
        .or_else(|| r.digest_header.clone().filter(|h| h.starts_with("sha256:")));
    if let Some(e) = expected {
        if e != got {
            return Err(PluginError::checksum_mismatch(format!(
                "{name}: manifest: checksum mismatch: expected {e}, got {got}"
            )));
        }
    }
    Ok((r.bytes, r.content_type, got))
}

impl SourceInstance for ImageStep {
    fn cache_key(&self, index: u32, job: &Job<'_>) -> Result<CacheKey> {
        let (_, r) = self.resolved(job)?;
        let opts = r.opts(&self.id.reference().to_string());
        let (key, done) = match (index, &r.chain_id) {
            (0, _) | (_, None) => (r.manifest_key.clone(), index > 0),
            (_, Some(c)) => (c.clone(), true),
        };
        Ok(CacheKey {
            key,
            pin: r.top.clone(),
            done,
            opts,
        })
    }

    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot> {
        let (origin, r) = self.resolved(job)?;
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            tracing::info!(
                "{}: not running as root: file owners and device nodes of the image are not kept",
                self.name()
            );
        }
        let name = self.name();
        let puller = pull::Puller {
            host: &self.host,
            origin: &origin,
            job,
            name: &name,
            concurrency: self.config.max_concurrent_downloads,
        };
        puller.pull(
            dest,
            &r.layers,
            &r.diff_ids,
            &unpack::UnpackOptions { same_owner: root },
        )?;
        let metadata = r
            .chain_id
            .iter()
            .map(|c| ("image.chainid".to_string(), c.clone()))
            .collect();
        Ok(Snapshot { metadata })
    }
}

impl Plugin for ImageSource {
    fn info() -> PluginInfo {
        PluginInfo {
            id: PLUGIN_ID,
            version: env!("CARGO_PKG_VERSION"),
            schemes: &[
                identifier::DOCKER_IMAGE_SCHEME,
                identifier::OCI_LAYOUT_SCHEME,
            ],
            capabilities: Capabilities::NETWORK
                | Capabilities::MULTI_INDEX
                | Capabilities::CONTENT_STORE,
            max_concurrency: 0,
        }
    }

    fn new(config: &str, host: Host) -> Result<Self> {
        let config: ImageConfig = parse_config(config)?;
        config.validate().map_err(PluginError::invalid_config)?;
        let state = State::new(host.state_dir());
        Ok(Self {
            config: Arc::new(config),
            host,
            state,
        })
    }
}

export_plugin!(ImageSource);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_strict() {
        parse_config::<ImageConfig>("").unwrap();
        let e = parse_config::<ImageConfig>("mirror = \"x\"").unwrap_err();
        assert_eq!(e.code, kiln_plugin_api::ErrorCode::INVALID_CONFIG);
        assert!(e.message.contains("mirror"), "{}", e.message);
    }
}
