//! kiln's image source plugin (`io.kiln.source.v1.image`, schemes `docker-image` and
//! `oci-layout`).
//!
//! This version parses and validates identifiers, attributes and platforms by
//! BuildKit's rules ([`identifier`], [`reference`], [`digest`], and `kiln_plugin_api::platform`); cache keys
//! and snapshots answer `unsupported` until the pulling code lands next to these
//! modules.
//!
//! Configuration (`[plugins."io.kiln.source.v1.image".config]` in `kiln.toml`): no
//! keys yet; an unknown key is an error.

pub mod digest;
pub mod identifier;
pub mod reference;
pub mod unpack;

use std::path::Path;

use kiln_plugin_api::{
    export_plugin, parse_config, CacheKey, Capabilities, Host, Job, Plugin, PluginError,
    PluginInfo, Request, Result, Snapshot, Source, SourceInstance,
};
use serde::Deserialize;

pub use identifier::{Identifier, IdentifierError, ImageIdentifier, OciIdentifier};
pub use kiln_plugin_api::platform::Platform;
pub use reference::Reference;

/// The plugin id.
pub const PLUGIN_ID: &str = "io.kiln.source.v1.image";

/// The plugin's `config` table. No keys yet; unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {}

/// The image source.
pub struct ImageSource {
    #[allow(dead_code)]
    config: ImageConfig,
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
        Ok(Box::new(ImageStep { id }))
    }
}

/// One image source step.
struct ImageStep {
    id: Identifier,
}

impl ImageStep {
    fn unsupported(&self) -> PluginError {
        PluginError::unsupported(format!(
            "image: cache keys and snapshots are not implemented yet in this kiln (identifier parsing only); cannot pull {} for {}",
            self.id,
            self.id.platform()
        ))
    }
}

impl SourceInstance for ImageStep {
    fn cache_key(&self, _index: u32, _job: &Job<'_>) -> Result<CacheKey> {
        Err(self.unsupported())
    }

    fn snapshot(&self, _dest: &Path, _job: &Job<'_>) -> Result<Snapshot> {
        Err(self.unsupported())
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

    fn new(config: &str, _host: Host) -> Result<Self> {
        let config: ImageConfig = parse_config(config)?;
        Ok(Self { config })
    }
}

export_plugin!(ImageSource);

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_plugin_api::ErrorCode;

    fn source() -> ImageSource {
        ImageSource {
            config: ImageConfig::default(),
        }
    }

    fn request(scheme: &str, reference: &str, platform: Option<&str>) -> Request {
        Request {
            scheme: scheme.into(),
            reference: reference.into(),
            attrs: Default::default(),
            platform: platform.map(str::to_string),
        }
    }

    #[test]
    fn identifier_through_the_source() {
        let id = source()
            .identifier(&request("docker-image", "busybox", Some("linux/aarch64")))
            .unwrap();
        assert_eq!(
            id.to_string(),
            "docker-image://docker.io/library/busybox:latest"
        );
        assert_eq!(id.platform().to_string(), "linux/arm64");

        let e = source()
            .identifier(&request("docker-image", "BusyBox", None))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_IDENTIFIER);
        assert!(
            e.message
                .starts_with("docker-image://BusyBox: invalid image reference"),
            "{}",
            e.message
        );

        let e = source()
            .identifier(&request("oci-layout", "local/app:v1", None))
            .unwrap_err();
        assert!(e.message.contains("must have a digest"), "{}", e.message);
    }

    #[test]
    fn steps_say_unsupported() {
        let id = source()
            .identifier(&request("docker-image", "busybox", Some("linux/amd64")))
            .unwrap();
        let e = ImageStep { id }.unsupported();
        assert_eq!(e.code, ErrorCode::UNSUPPORTED);
        assert!(e
            .message
            .contains("not implemented yet in this kiln (identifier parsing only)"));
        assert!(e
            .message
            .contains("docker-image://docker.io/library/busybox:latest for linux/amd64"));
    }

    #[test]
    fn config_is_strict() {
        parse_config::<ImageConfig>("").unwrap();
        let e = parse_config::<ImageConfig>("mirror = \"x\"").unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_CONFIG);
        assert!(e.message.contains("mirror"), "{}", e.message);
    }
}
