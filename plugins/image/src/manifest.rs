//! The OCI and Docker v2 document shapes kiln reads (image index / manifest list,
//! image manifest, image config), as plain serde types, and platform selection from an
//! index by containerd's matching rules.
//!
//! kiln uses its own small serde types rather than the `oci-spec` crate: it reads only
//! a handful of fields, and `oci-spec` brings builder, getter and enum-string macro
//! crates (and their compile time) into every build of the plugin for no gain here.

use serde::Deserialize;

use kiln_plugin_api::platform::Platform;

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker v2 manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker v2 schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema 1 (refused).
pub const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Docker schema 1, signed (refused).
pub const DOCKER_SCHEMA1_SIGNED: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The `Accept` header of manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Manifests and indexes larger than this are refused (containerd's limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Image configs larger than this are refused.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

/// A content descriptor.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The platform (index entries).
    #[serde(default)]
    pub platform: Option<DescPlatform>,
    /// Annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// The platform of an index entry.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct DescPlatform {
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Architecture.
    #[serde(default)]
    pub architecture: String,
    /// Variant.
    #[serde(default)]
    pub variant: Option<String>,
}

/// What a manifest-like document is, by its `mediaType` field or the response's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An OCI index or Docker manifest list.
    Index,
    /// An OCI or Docker v2 image manifest.
    Manifest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sniff {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    layers: Option<serde_json::Value>,
    #[serde(default)]
    fs_layers: Option<serde_json::Value>,
}

/// Tells an index from a manifest: the document's `mediaType`, else the transport's
/// `content_type`, else its shape. Schema 1 is refused.
pub fn kind_of(bytes: &[u8], content_type: Option<&str>) -> Result<Kind, String> {
    let s: Sniff = serde_json::from_slice(bytes).map_err(|e| format!("not a manifest: {e}"))?;
    let content_type = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let mt = s
        .media_type
        .as_deref()
        .filter(|m| !m.is_empty())
        .or(content_type);
    if s.schema_version == Some(1)
        || s.fs_layers.is_some()
        || matches!(mt, Some(DOCKER_SCHEMA1 | DOCKER_SCHEMA1_SIGNED))
    {
        return Err("Docker schema 1 manifests are not supported (the image must be pushed again with a current docker or skopeo)".into());
    }
    match mt {
        Some(OCI_INDEX | DOCKER_LIST) => Ok(Kind::Index),
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => Ok(Kind::Manifest),
        _ if s.manifests.is_some() => Ok(Kind::Index),
        _ if s.layers.is_some() => Ok(Kind::Manifest),
        Some(other) => Err(format!("unsupported manifest media type {other:?}")),
        None => Err("a document with neither manifests nor layers".into()),
    }
}

/// An OCI index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    /// The entries.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI or Docker v2 image manifest.
#[derive(Clone, Debug, Deserialize)]
pub struct Manifest {
    /// The config descriptor.
    pub config: Descriptor,
    /// The layers, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config kiln reads.
#[derive(Clone, Debug, Deserialize)]
pub struct ImageConfig {
    /// The root filesystem.
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, Deserialize)]
pub struct RootFs {
    /// Must be `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The uncompressed digests of the layers, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// The platforms `want` accepts, best first (containerd's `platforms.Only`: an exact
/// match, then older variants of the same architecture, then the 32-bit relative that
/// such machines also run).
pub fn compatible(want: &Platform) -> Vec<Platform> {
    let p = |arch: &str, variant: Option<&str>| Platform {
        os: want.os.clone(),
        architecture: arch.to_string(),
        variant: variant.map(str::to_string),
    };
    let mut out = vec![want.clone()];
    let vnum = want
        .variant
        .as_deref()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|n| n.parse::<u32>().ok());
    match want.architecture.as_str() {
        "amd64" => {
            for n in (1..vnum.unwrap_or(1)).rev() {
                out.push(if n == 1 {
                    p("amd64", None)
                } else {
                    p("amd64", Some(&format!("v{n}")))
                });
            }
            if want.variant.is_some() {
                out.push(p("amd64", None));
            }
            out.push(p("386", None));
        }
        "arm64" => {
            for n in (5..=8).rev() {
                out.push(p("arm", Some(&format!("v{n}"))));
            }
        }
        "arm" => {
            for n in (5..vnum.unwrap_or(7)).rev() {
                out.push(p("arm", Some(&format!("v{n}"))));
            }
        }
        _ => {}
    }
    out.dedup();
    out
}

/// The entry of `index` for `want`: the best by [`compatible`], the first of equals.
pub fn select<'a>(index: &'a Index, want: &Platform) -> Option<&'a Descriptor> {
    let order = compatible(want);
    index
        .manifests
        .iter()
        .filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | ""))
        .filter_map(|d| {
            let dp = d.platform.as_ref()?;
            let text = match &dp.variant {
                Some(v) if !v.is_empty() => format!("{}/{}/{}", dp.os, dp.architecture, v),
                _ => format!("{}/{}", dp.os, dp.architecture),
            };
            let got = Platform::parse(&text).ok()?;
            let rank = order.iter().position(|o| *o == got)?;
            Some((rank, d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(platforms: &[&str]) -> Index {
        Index {
            manifests: platforms
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let mut parts = p.split('/');
                    Descriptor {
                        media_type: OCI_MANIFEST.into(),
                        digest: format!("sha256:{i:064}"),
                        size: 1,
                        platform: Some(DescPlatform {
                            os: parts.next().unwrap().into(),
                            architecture: parts.next().unwrap().into(),
                            variant: parts.next().map(str::to_string),
                        }),
                        annotations: Default::default(),
                    }
                })
                .collect(),
        }
    }

    fn pick(idx: &Index, want: &str) -> Option<usize> {
        let d = select(idx, &Platform::parse(want).unwrap())?;
        idx.manifests.iter().position(|m| m == d)
    }

    #[test]
    fn exact_and_normalised_variants() {
        let idx = index(&[
            "linux/amd64",
            "linux/arm64/v8",
            "linux/arm/v7",
            "linux/arm/v6",
        ]);
        assert_eq!(pick(&idx, "linux/amd64"), Some(0));
        assert_eq!(pick(&idx, "linux/arm64"), Some(1));
        assert_eq!(pick(&idx, "linux/aarch64"), Some(1));
        assert_eq!(pick(&idx, "linux/arm"), Some(2));
        assert_eq!(pick(&idx, "linux/arm/v6"), Some(3));
        assert_eq!(pick(&idx, "linux/s390x"), None);
        assert_eq!(pick(&idx, "windows/amd64"), None);
    }

    #[test]
    fn fallbacks() {
        let idx = index(&["linux/386", "linux/arm/v6", "unknown/unknown"]);
        assert_eq!(pick(&idx, "linux/amd64"), Some(0));
        assert_eq!(pick(&idx, "linux/arm/v7"), Some(1));
        assert_eq!(pick(&idx, "linux/arm64"), Some(1));
        assert_eq!(pick(&idx, "linux/arm/v5"), None);
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind_of(
                br#"{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#,
                None
            ),
            Ok(Kind::Index)
        );
        assert_eq!(kind_of(br#"{"layers":[]}"#, None), Ok(Kind::Manifest));
        assert_eq!(
            kind_of(br#"{"schemaVersion":2}"#, Some(DOCKER_MANIFEST)),
            Ok(Kind::Manifest)
        );
        let e = kind_of(br#"{"schemaVersion":1,"fsLayers":[]}"#, None).unwrap_err();
        assert!(e.contains("schema 1"), "{e}");
    }
}
