//! Exporters: where a build's result goes (`--output`).
//!
//! - `type=local,dest=DIR`: the tree copied into DIR (created if missing; what is
//!   there is merged, entries of the result replace entries of the same name).
//! - `type=tar,dest=FILE|-`: a deterministic tar of the tree (sorted, with the
//!   tree's modes, owners and times) written to FILE or standard output.
//! - `type=oci,dest=FILE[,name=REF]`: an OCI image layout in a tar archive. A result
//!   that derives from an image ([`BaseImage`]) keeps the base image's config and its
//!   layers as the same blobs, with the build's changes as one new gzip layer on top
//!   (the diff of the base rootfs and the result, [`diff`]); any other result is one
//!   gzip layer holding the tree. `skopeo inspect oci-archive:FILE` and `umoci unpack`
//!   read it.
//!
//! [`OutputSpec`] parses the CLI's spec; [`export`] writes it and returns the digest
//! that `--metadata-file` records.

pub mod diff;
mod local;
mod oci;
mod tarball;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

pub use oci::Platform;
pub use tarball::{write_output_file, write_tree_tar, HashingWriter};

use crate::worker::WorkerError;

/// An exporter failure.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The `--output` spec is malformed.
    #[error("invalid --output {spec:?}: {message}")]
    Spec {
        /// The spec as given.
        spec: String,
        /// What is wrong.
        message: String,
    },
    /// Writing the output failed.
    #[error("export to {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The path involved (the destination or a file of the tree).
        path: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Copying the tree failed.
    #[error("export: {0}")]
    Copy(#[from] WorkerError),
    /// The base image's config is not usable.
    #[error("export: base image config: {0}")]
    BaseConfig(String),
    /// A base image's layer blob is not usable.
    #[error("export: base image {0}")]
    BaseLayer(String),
    /// The platform is not `os/arch[/variant]` (the message says why).
    #[error("export: {0}")]
    Platform(String),
}

impl ExportError {
    pub(crate) fn io(op: &'static str, path: impl AsRef<Path>, source: io::Error) -> Self {
        ExportError::Io {
            op,
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// Where a tar goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarDest {
    /// A file (replaced atomically).
    File(PathBuf),
    /// Standard output (`dest=-`).
    Stdout,
}

/// One `--output` spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutputSpec {
    /// `type=local,dest=DIR`.
    Local {
        /// The destination folder.
        dest: PathBuf,
    },
    /// `type=tar,dest=FILE|-`.
    Tar {
        /// The destination.
        dest: TarDest,
    },
    /// `type=oci,dest=FILE[,name=REF]`.
    Oci {
        /// The archive to write.
        dest: PathBuf,
        /// The image reference recorded in the index (`io.containerd.image.name`, and
        /// its tag as `org.opencontainers.image.ref.name`).
        name: Option<String>,
    },
}

impl FromStr for OutputSpec {
    type Err = ExportError;

    /// Parses `type=…,dest=…[,name=…]`. As with buildx, a bare `DIR` means
    /// `type=local,dest=DIR` and a bare `-` means `type=tar,dest=-`.
    fn from_str(spec: &str) -> Result<Self, ExportError> {
        let err = |message: String| ExportError::Spec {
            spec: spec.to_string(),
            message,
        };
        if spec.is_empty() {
            return Err(err("empty spec".into()));
        }
        if !spec.contains('=') {
            return Ok(if spec == "-" {
                OutputSpec::Tar {
                    dest: TarDest::Stdout,
                }
            } else {
                OutputSpec::Local {
                    dest: PathBuf::from(spec),
                }
            });
        }
        let (mut kind, mut dest, mut name) = (None, None, None);
        for field in spec.split(',') {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| err(format!("{field:?} is not key=value")))?;
            let v = v.trim().trim_matches('"');
            let slot = match k.trim() {
                "type" => &mut kind,
                "dest" => &mut dest,
                "name" => &mut name,
                other => {
                    return Err(err(format!(
                        "unknown key {other:?} (expected type, dest, name)"
                    )))
                }
            };
            if slot.replace(v.to_string()).is_some() {
                return Err(err(format!("{} given twice", k.trim())));
            }
        }
        let kind = kind.ok_or_else(|| err("missing type= (local, tar or oci)".into()))?;
        let dest = dest.filter(|d| !d.is_empty());
        let need_dest = || {
            dest.clone()
                .ok_or_else(|| err(format!("type={kind} needs dest=")))
        };
        if name.is_some() && kind != "oci" {
            return Err(err(format!(
                "name= is only valid with type=oci, not type={kind}"
            )));
        }
        match kind.as_str() {
            "local" => Ok(OutputSpec::Local {
                dest: need_dest()?.into(),
            }),
            "tar" => {
                let d = need_dest()?;
                Ok(OutputSpec::Tar {
                    dest: if d == "-" {
                        TarDest::Stdout
                    } else {
                        TarDest::File(d.into())
                    },
                })
            }
            "oci" => {
                let d = need_dest()?;
                if d == "-" {
                    return Err(err("type=oci writes to a file, not standard output".into()));
                }
                if let Some(n) = &name {
                    oci::check_ref(n).map_err(err)?;
                }
                Ok(OutputSpec::Oci {
                    dest: d.into(),
                    name: name.filter(|n| !n.is_empty()),
                })
            }
            other => Err(err(format!(
                "unknown type {other:?} (expected local, tar or oci)"
            ))),
        }
    }
}

impl fmt::Display for OutputSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutputSpec::Local { dest } => write!(f, "type=local,dest={}", dest.display()),
            OutputSpec::Tar {
                dest: TarDest::Stdout,
            } => write!(f, "type=tar,dest=-"),
            OutputSpec::Tar {
                dest: TarDest::File(p),
            } => write!(f, "type=tar,dest={}", p.display()),
            OutputSpec::Oci { dest, name } => {
                write!(f, "type=oci,dest={}", dest.display())?;
                if let Some(n) = name {
                    write!(f, ",name={n}")?;
                }
                Ok(())
            }
        }
    }
}

/// One layer of a base image: its descriptor as the image's manifest has it, and
/// where its blob is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseLayer {
    /// The media type (OCI or Docker, gzip, zstd or uncompressed).
    pub media_type: String,
    /// `sha256:<hex>` of the (compressed) blob.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// The verified blob in the content store; `None` when the store lacks it
    /// (pruned), which makes the OCI exporter squash the result into one layer.
    pub blob: Option<PathBuf>,
}

/// The image a result derives from: the image source its base chain starts at.
#[derive(Clone, Debug, Default)]
pub struct BaseImage {
    /// The canonical reference, without credentials (for messages).
    pub reference: String,
    /// The image config JSON (OCI or Docker image config), verified against its digest.
    pub config: Vec<u8>,
    /// The layers the image source used (after `image.layerlimit`), bottom first.
    pub layers: Vec<BaseLayer>,
    /// The image's rootfs (the source's snapshot), which the new layer is a diff
    /// against; `None` (the source did not list its layers) squashes the result into
    /// one layer.
    pub rootfs: Option<PathBuf>,
}

/// What the exporters need besides the tree.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions<'a> {
    /// The image platform (`os/arch[/variant]`); default: the base image's, else the host's.
    pub platform: Option<&'a str>,
    /// The image the result derives from: its config carries over, and (for `oci`) its
    /// layers are reused with the build's changes as one new layer on top.
    pub base: Option<&'a BaseImage>,
    /// Polled while copying.
    pub cancel: Option<&'a AtomicBool>,
}

/// What an export produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exported {
    /// `sha256:<hex>`: the manifest digest for `oci`, the digest of the tar stream for
    /// `tar`; `None` for `local`.
    pub digest: Option<String>,
}

/// Writes the tree at `tree` as `spec` says. Blocking.
pub fn export(
    tree: &Path,
    spec: &OutputSpec,
    opts: &ExportOptions<'_>,
) -> Result<Exported, ExportError> {
    match spec {
        OutputSpec::Local { dest } => {
            local::export_local(tree, dest, opts.cancel)?;
            Ok(Exported { digest: None })
        }
        OutputSpec::Tar { dest } => {
            let d = tarball::export_tar(tree, dest)?;
            Ok(Exported { digest: Some(d) })
        }
        OutputSpec::Oci { dest, name } => {
            let d = oci::export_oci(tree, dest, name.as_deref(), opts)?;
            Ok(Exported { digest: Some(d) })
        }
    }
}

#[cfg(test)]
mod tests;
