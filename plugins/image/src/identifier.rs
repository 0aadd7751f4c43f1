//! The image identifiers: `docker-image://REF` and `oci-layout://REF@DIGEST`, with
//! their attributes and platform, parsed by BuildKit's rules
//! (`source/containerimage/identifier.go`, `client/llb/source.go`), without I/O.
//!
//! - `docker-image`: the reference is normalised as `llb.Image` does
//!   (`ParseNormalizedNamed` + `TagNameOnly`): `busybox` →
//!   `docker.io/library/busybox:latest`. Attributes: `image.resolvemode`,
//!   `image.recordtype`, `image.layerlimit`, `image.checksum`.
//! - `oci-layout`: the reference is kept as written and must carry a digest (BuildKit's
//!   resolver refuses it later; kiln refuses it here). Attributes: `oci.session`,
//!   `oci.store`, `oci.layerlimit`.
//!
//! The platform defaults to the host's ([`Platform::host`]).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use crate::digest::Digest;
use crate::reference::{Reference, ReferenceError};
use kiln_plugin_api::platform::{Platform, PlatformError};

/// `image.resolvemode`.
pub const RESOLVE_MODE: &str = "image.resolvemode";
/// `image.recordtype`.
pub const RECORD_TYPE: &str = "image.recordtype";
/// `image.layerlimit`.
pub const LAYER_LIMIT: &str = "image.layerlimit";
/// `image.checksum`.
pub const CHECKSUM: &str = "image.checksum";
/// `oci.session`.
pub const OCI_SESSION: &str = "oci.session";
/// `oci.store`.
pub const OCI_STORE: &str = "oci.store";
/// `oci.layerlimit`.
pub const OCI_LAYER_LIMIT: &str = "oci.layerlimit";

/// The attributes of `docker-image` sources.
pub const IMAGE_ATTRS: &[&str] = &[RESOLVE_MODE, RECORD_TYPE, LAYER_LIMIT, CHECKSUM];
/// The attributes of `oci-layout` sources.
pub const OCI_ATTRS: &[&str] = &[OCI_SESSION, OCI_STORE, OCI_LAYER_LIMIT];

/// The `docker-image` scheme.
pub const DOCKER_IMAGE_SCHEME: &str = "docker-image";
/// The `oci-layout` scheme.
pub const OCI_LAYOUT_SCHEME: &str = "oci-layout";

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The reference does not parse.
    #[error("invalid image reference {input:?}: {source}")]
    Reference {
        /// The text after `scheme://`.
        input: String,
        /// The cause.
        source: ReferenceError,
    },
    /// An `oci-layout` reference with neither a tag nor `@sha256:…`.
    #[error("oci-layout reference {0:?} must have a tag or a digest (NAME:TAG or NAME@sha256:<64 hex digits>)")]
    DigestRequired(String),
    /// The platform does not parse.
    #[error(transparent)]
    Platform(#[from] PlatformError),
    /// An attribute value is malformed.
    #[error("attribute {key}: {message}")]
    Attr {
        /// The attribute.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An attribute this scheme does not take.
    #[error("unknown attribute {key:?} for a {scheme} source (known: {known})")]
    UnknownAttr {
        /// The attribute.
        key: String,
        /// The scheme.
        scheme: &'static str,
        /// The attributes it takes.
        known: String,
    },
    /// A scheme this plugin does not serve.
    #[error("the image plugin does not serve scheme {0:?} (docker-image, oci-layout)")]
    Scheme(String),
}

fn attr_err(key: &'static str, message: impl Into<String>) -> IdentifierError {
    IdentifierError::Attr {
        key,
        message: message.into(),
    }
}

/// `image.resolvemode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResolveMode {
    /// Registry first, then the local image store (`default`, or empty).
    #[default]
    Default,
    /// Registry only (`pull`).
    ForcePull,
    /// Local image store first (`local`).
    PreferLocal,
}

impl ResolveMode {
    /// Parses the attribute value.
    pub fn parse(v: &str) -> Result<Self, IdentifierError> {
        match v {
            "" | "default" => Ok(Self::Default),
            "pull" => Ok(Self::ForcePull),
            "local" => Ok(Self::PreferLocal),
            _ => Err(attr_err(
                RESOLVE_MODE,
                format!("invalid resolvemode {v:?} (expected \"default\", \"pull\" or \"local\")"),
            )),
        }
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::ForcePull => "pull",
            Self::PreferLocal => "local",
        }
    }
}

/// `image.recordtype`: how the pulled snapshot is accounted in `cache du`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecordType {
    /// `regular` (or empty).
    #[default]
    Regular,
    /// `internal`.
    Internal,
    /// `frontend`.
    Frontend,
}

impl RecordType {
    /// Parses the attribute value.
    pub fn parse(v: &str) -> Result<Self, IdentifierError> {
        match v {
            "" | "regular" => Ok(Self::Regular),
            "internal" => Ok(Self::Internal),
            "frontend" => Ok(Self::Frontend),
            _ => Err(attr_err(
                RECORD_TYPE,
                format!("invalid record type {v:?} (expected \"regular\", \"internal\" or \"frontend\")"),
            )),
        }
    }

    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Regular => "regular",
            Self::Internal => "internal",
            Self::Frontend => "frontend",
        }
    }
}

fn parse_layer_limit(key: &'static str, v: &str) -> Result<u32, IdentifierError> {
    match v.parse::<u32>() {
        Ok(n) if n > 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(attr_err(
            key,
            format!("invalid layer limit {v:?} (expected an integer greater than 0)"),
        )),
    }
}

fn parse_name(key: &'static str, v: &str) -> Result<String, IdentifierError> {
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(attr_err(
            key,
            format!("{v:?} is not a valid name (no spaces or control characters)"),
        ));
    }
    Ok(v.to_string())
}

/// A `docker-image://` identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageIdentifier {
    /// The normalised reference; always has a tag or a digest.
    pub reference: Reference,
    /// The platform to select from a multi-platform index.
    pub platform: Platform,
    /// `image.resolvemode`.
    pub resolve_mode: ResolveMode,
    /// `image.recordtype`.
    pub record_type: RecordType,
    /// `image.layerlimit`: keep only the first N layers.
    pub layer_limit: Option<u32>,
    /// `image.checksum`: the top-level manifest or index digest must equal it.
    pub checksum: Option<Digest>,
}

/// An `oci-layout://` identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciIdentifier {
    /// The reference as written; always has a digest.
    pub reference: Reference,
    /// The platform to select from a multi-platform index.
    pub platform: Platform,
    /// `oci.session` (empty: none).
    pub session: String,
    /// `oci.store`: the store name (empty: none).
    pub store: String,
    /// `oci.layerlimit`.
    pub layer_limit: Option<u32>,
}

impl OciIdentifier {
    /// The manifest or index digest the reference pins (none: resolve the tag
    /// through the layout's `index.json`).
    pub fn digest(&self) -> Option<&Digest> {
        self.reference.digest()
    }
}

/// Either kind of image identifier.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identifier {
    /// `docker-image://`
    Image(ImageIdentifier),
    /// `oci-layout://`
    Oci(OciIdentifier),
}

/// The canonical form: `docker-image://<normalised ref>` or `oci-layout://<ref>`.
impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Image(i) => write!(f, "{DOCKER_IMAGE_SCHEME}://{}", i.reference),
            Self::Oci(o) => write!(f, "{OCI_LAYOUT_SCHEME}://{}", o.reference),
        }
    }
}

impl Identifier {
    /// Parses `scheme://reference` parts, the attributes and the platform (`None`: the
    /// host's).
    pub fn parse(
        scheme: &str,
        reference: &str,
        attrs: &BTreeMap<String, String>,
        platform: Option<&str>,
    ) -> Result<Self, IdentifierError> {
        let platform = match platform {
            Some(p) => Platform::parse(p)?,
            None => Platform::host(),
        };
        let ref_err = |source| IdentifierError::Reference {
            input: reference.to_string(),
            source,
        };
        match scheme {
            DOCKER_IMAGE_SCHEME => {
                let reference = Reference::parse_normalized_named(reference)
                    .map_err(ref_err)?
                    .tag_name_only();
                let mut id = ImageIdentifier {
                    reference,
                    platform,
                    resolve_mode: ResolveMode::Default,
                    record_type: RecordType::Regular,
                    layer_limit: None,
                    checksum: None,
                };
                for (k, v) in attrs {
                    match k.as_str() {
                        RESOLVE_MODE => id.resolve_mode = ResolveMode::parse(v)?,
                        RECORD_TYPE => id.record_type = RecordType::parse(v)?,
                        LAYER_LIMIT => id.layer_limit = Some(parse_layer_limit(LAYER_LIMIT, v)?),
                        CHECKSUM => {
                            id.checksum = Some(Digest::parse(v).map_err(|e| {
                                attr_err(CHECKSUM, format!("invalid image checksum: {e}"))
                            })?)
                        }
                        _ => return Err(unknown(k, DOCKER_IMAGE_SCHEME, IMAGE_ATTRS)),
                    }
                }
                Ok(Self::Image(id))
            }
            OCI_LAYOUT_SCHEME => {
                let parsed = Reference::parse(reference).map_err(ref_err)?;
                if parsed.digest().is_none() && parsed.tag().is_none() {
                    return Err(IdentifierError::DigestRequired(reference.to_string()));
                }
                let mut id = OciIdentifier {
                    reference: parsed,
                    platform,
                    session: String::new(),
                    store: String::new(),
                    layer_limit: None,
                };
                for (k, v) in attrs {
                    match k.as_str() {
                        OCI_SESSION => id.session = parse_name(OCI_SESSION, v)?,
                        OCI_STORE => id.store = parse_name(OCI_STORE, v)?,
                        OCI_LAYER_LIMIT => {
                            id.layer_limit = Some(parse_layer_limit(OCI_LAYER_LIMIT, v)?)
                        }
                        _ => return Err(unknown(k, OCI_LAYOUT_SCHEME, OCI_ATTRS)),
                    }
                }
                Ok(Self::Oci(id))
            }
            other => Err(IdentifierError::Scheme(other.to_string())),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &Platform {
        match self {
            Self::Image(i) => &i.platform,
            Self::Oci(o) => &o.platform,
        }
    }

    /// The reference.
    pub fn reference(&self) -> &Reference {
        match self {
            Self::Image(i) => &i.reference,
            Self::Oci(o) => &o.reference,
        }
    }
}

fn unknown(key: &str, scheme: &'static str, known: &[&str]) -> IdentifierError {
    IdentifierError::UnknownAttr {
        key: key.to_string(),
        scheme,
        known: known.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn image(r: &str) -> Result<Identifier, IdentifierError> {
        Identifier::parse("docker-image", r, &BTreeMap::new(), None)
    }

    #[test]
    fn docker_image_canonical_forms() {
        for (input, want) in [
            (
                "busybox",
                "docker-image://docker.io/library/busybox:latest".to_string(),
            ),
            (
                "user/x",
                "docker-image://docker.io/user/x:latest".to_string(),
            ),
            (
                "localhost:5000/x",
                "docker-image://localhost:5000/x:latest".to_string(),
            ),
            (
                "127.0.0.1:5000/test/busybox:1",
                "docker-image://127.0.0.1:5000/test/busybox:1".to_string(),
            ),
            (
                "docker.io/library/alpine:3.20",
                "docker-image://docker.io/library/alpine:3.20".to_string(),
            ),
            (
                &format!("busybox@{D}"),
                format!("docker-image://docker.io/library/busybox@{D}"),
            ),
            (
                &format!("busybox:1.36@{D}"),
                format!("docker-image://docker.io/library/busybox:1.36@{D}"),
            ),
        ] {
            let id = image(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.to_string(), want, "{input}");
            // The canonical form parses back to itself.
            let again = image(want.strip_prefix("docker-image://").unwrap()).unwrap();
            assert_eq!(again, id);
        }
        let Identifier::Image(i) = image("busybox").unwrap() else {
            panic!()
        };
        assert_eq!(i.resolve_mode, ResolveMode::Default);
        assert_eq!(i.record_type, RecordType::Regular);
        assert_eq!((i.layer_limit, i.checksum), (None, None));
        assert_eq!(i.platform, Platform::host());
    }

    #[test]
    fn docker_image_errors() {
        let e = image("Busybox").unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid image reference \"Busybox\": invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert!(image("").is_err());
        assert!(image("busybox:").is_err());
        assert!(image("busybox@sha256:1234")
            .unwrap_err()
            .to_string()
            .contains("64 lowercase hex digits"));
        assert!(image("a b").is_err());
    }

    #[test]
    fn platforms() {
        let p = |s: Option<&str>| Identifier::parse("docker-image", "busybox", &BTreeMap::new(), s);
        assert_eq!(
            p(Some("linux/arm64/v8")).unwrap().platform().to_string(),
            "linux/arm64"
        );
        assert_eq!(
            p(Some("linux/armhf")).unwrap().platform().to_string(),
            "linux/arm/v7"
        );
        assert_eq!(
            p(Some("linux/x86_64")).unwrap().platform().to_string(),
            "linux/amd64"
        );
        assert_eq!(p(None).unwrap().platform(), &Platform::host());
        let e = p(Some("linux")).unwrap_err().to_string();
        assert!(e.contains("expected OS/ARCH[/VARIANT]"), "{e}");
        assert!(p(Some("linux/amd46")).is_err());
    }

    #[test]
    fn every_image_attribute() {
        let a = attrs(&[
            ("image.resolvemode", "pull"),
            ("image.recordtype", "internal"),
            ("image.layerlimit", "2"),
            ("image.checksum", D),
        ]);
        let Identifier::Image(i) =
            Identifier::parse("docker-image", "busybox:1", &a, Some("linux/amd64")).unwrap()
        else {
            panic!()
        };
        assert_eq!(i.resolve_mode, ResolveMode::ForcePull);
        assert_eq!(i.record_type, RecordType::Internal);
        assert_eq!(i.layer_limit, Some(2));
        assert_eq!(i.checksum.unwrap().to_string(), D);
        for (k, v, want) in [
            ("image.resolvemode", "local", ResolveMode::PreferLocal),
            ("image.resolvemode", "default", ResolveMode::Default),
            ("image.resolvemode", "", ResolveMode::Default),
        ] {
            let Identifier::Image(i) =
                Identifier::parse("docker-image", "x", &attrs(&[(k, v)]), None).unwrap()
            else {
                panic!()
            };
            assert_eq!(i.resolve_mode, want);
        }
        for v in ["regular", "", "frontend"] {
            Identifier::parse(
                "docker-image",
                "x",
                &attrs(&[("image.recordtype", v)]),
                None,
            )
            .unwrap();
        }
    }

    #[test]
    fn every_attribute_error() {
        let cases: &[(&str, &str, &str, &str)] = &[
            (
                "docker-image",
                "image.resolvemode",
                "always",
                "attribute image.resolvemode: invalid resolvemode \"always\"",
            ),
            (
                "docker-image",
                "image.recordtype",
                "cache",
                "attribute image.recordtype: invalid record type \"cache\"",
            ),
            (
                "docker-image",
                "image.layerlimit",
                "0",
                "attribute image.layerlimit: invalid layer limit \"0\"",
            ),
            (
                "docker-image",
                "image.layerlimit",
                "-1",
                "invalid layer limit \"-1\"",
            ),
            (
                "docker-image",
                "image.layerlimit",
                "two",
                "invalid layer limit \"two\"",
            ),
            (
                "docker-image",
                "image.layerlimit",
                "+2",
                "invalid layer limit \"+2\"",
            ),
            (
                "docker-image",
                "image.layerlimit",
                "99999999999",
                "invalid layer limit",
            ),
            (
                "docker-image",
                "image.checksum",
                "sha256:abc",
                "attribute image.checksum: invalid image checksum",
            ),
            (
                "docker-image",
                "image.checksum",
                "abc",
                "attribute image.checksum: invalid image checksum",
            ),
            (
                "docker-image",
                "image.checksum",
                &format!("md5:{}", "a".repeat(32)),
                "unsupported digest algorithm",
            ),
            (
                "docker-image",
                "oci.store",
                "x",
                "unknown attribute \"oci.store\" for a docker-image source",
            ),
            (
                "docker-image",
                "image.pull",
                "x",
                "unknown attribute \"image.pull\"",
            ),
            (
                "oci-layout",
                "oci.layerlimit",
                "0",
                "attribute oci.layerlimit: invalid layer limit \"0\"",
            ),
            ("oci-layout", "oci.store", "a b", "attribute oci.store"),
            ("oci-layout", "oci.session", "a\nb", "attribute oci.session"),
            (
                "oci-layout",
                "image.checksum",
                D,
                "unknown attribute \"image.checksum\" for a oci-layout source",
            ),
        ];
        for (scheme, k, v, want) in cases {
            let r = if *scheme == "oci-layout" {
                format!("not/real@{D}")
            } else {
                "busybox".to_string()
            };
            let e = Identifier::parse(scheme, &r, &attrs(&[(k, v)]), None)
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{scheme} {k}={v:?}: {e}");
        }
    }

    #[test]
    fn oci_layout() {
        let a = attrs(&[
            ("oci.store", "mystore"),
            ("oci.session", "s1"),
            ("oci.layerlimit", "1"),
        ]);
        let id = Identifier::parse(
            "oci-layout",
            &format!("not/real@{D}"),
            &a,
            Some("linux/arm64"),
        )
        .unwrap();
        assert_eq!(id.to_string(), format!("oci-layout://not/real@{D}"));
        let Identifier::Oci(o) = &id else { panic!() };
        assert_eq!(
            (o.store.as_str(), o.session.as_str(), o.layer_limit),
            ("mystore", "s1", Some(1))
        );
        assert_eq!(o.digest().unwrap().to_string(), D);
        assert_eq!(o.platform.to_string(), "linux/arm64");
        // No docker.io normalisation for OCI layouts; tag and digest both kept.
        let id = Identifier::parse(
            "oci-layout",
            &format!("local/app:v1@{D}"),
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        assert_eq!(id.to_string(), format!("oci-layout://local/app:v1@{D}"));

        let e = Identifier::parse("oci-layout", "not/real", &BTreeMap::new(), None).unwrap_err();
        assert_eq!(e, IdentifierError::DigestRequired("not/real".into()));
        assert!(e.to_string().contains("must have a tag or a digest"));
        assert!(Identifier::parse("oci-layout", "not/real:tag", &BTreeMap::new(), None).is_ok());
        assert!(
            Identifier::parse("oci-layout", "Not/Real@sha256:00", &BTreeMap::new(), None).is_err()
        );
    }

    #[test]
    fn wrong_scheme() {
        let e = Identifier::parse("docker-image+blob", "x", &BTreeMap::new(), None).unwrap_err();
        assert!(matches!(e, IdentifierError::Scheme(_)));
    }
}
