//! `type=oci`: an OCI image layout (image-spec v1.1) in a tar archive.
//!
//! The archive holds `oci-layout`, `index.json` and three blobs under
//! `blobs/sha256/`: the layer (the whole tree as one gzip tar; its diff_id is the
//! sha256 of the uncompressed tar, both computed while streaming), the image config
//! and the manifest. The config carries the base image's runtime config and history
//! when one is given; it has no `created` time, so the same tree gives the same
//! manifest digest.

use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::tarball::{atomic_file, write_tree_tar, HashingWriter};
use super::{ExportError, ExportOptions};

const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub use kiln_plugin_api::platform::Platform;

/// Checks an image reference enough to be safe in annotations: non-empty, no spaces or
/// control characters, no URL credentials.
pub(crate) fn check_ref(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("name= is empty".into());
    }
    if r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("name {r:?} contains spaces or control characters"));
    }
    if r.contains("://") || r.contains('@') && !r.contains("@sha256:") {
        return Err(format!(
            "name {r:?} is not an image reference like registry/repo:tag"
        ));
    }
    Ok(())
}

/// The tag of a reference: what follows the last `:` after the last `/`, else `latest`.
fn tag_of(r: &str) -> String {
    let r = r.split('@').next().unwrap_or(r);
    let last = r.rsplit('/').next().unwrap_or(r);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_string(),
        _ => "latest".to_string(),
    }
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Builds the image config JSON.
fn image_config(platform: &Platform, base: Option<&Value>, diff_id: &str) -> Value {
    let mut cfg = Map::new();
    cfg.insert("architecture".into(), json!(platform.architecture));
    cfg.insert("os".into(), json!(platform.os));
    if let Some(v) = &platform.variant {
        cfg.insert("variant".into(), json!(v));
    }
    let mut history: Vec<Value> = Vec::new();
    if let Some(base) = base {
        if let Some(c) = base.get("config").filter(|c| c.is_object()) {
            cfg.insert("config".into(), c.clone());
        }
        if let Some(Value::Array(h)) = base.get("history") {
            // The base's layers are squashed into the one layer below: its history
            // entries stay as a record, marked as adding no layer of their own.
            for entry in h {
                let mut e = entry.as_object().cloned().unwrap_or_default();
                e.insert("empty_layer".into(), json!(true));
                history.push(Value::Object(e));
            }
        }
    }
    history
        .push(json!({ "created_by": "kiln build", "comment": "the build's result as one layer" }));
    cfg.insert("history".into(), Value::Array(history));
    cfg.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": [diff_id] }),
    );
    Value::Object(cfg)
}

/// Writes the archive; returns the manifest digest.
pub fn export_oci(
    tree: &Path,
    dest: &Path,
    name: Option<&str>,
    opts: &ExportOptions<'_>,
) -> Result<String, ExportError> {
    let base: Option<Value> = match opts.base_config {
        Some(bytes) => {
            let v: Value = serde_json::from_slice(bytes)
                .map_err(|e| ExportError::BaseConfig(e.to_string()))?;
            if !v.is_object() {
                return Err(ExportError::BaseConfig("not a JSON object".into()));
            }
            Some(v)
        }
        None => None,
    };
    let platform = match (opts.platform, &base) {
        (Some(p), _) => Platform::parse(p).map_err(|e| ExportError::Platform(e.to_string()))?,
        (None, Some(b)) if b.get("os").is_some() && b.get("architecture").is_some() => Platform {
            os: b["os"].as_str().unwrap_or("linux").to_string(),
            architecture: b["architecture"].as_str().unwrap_or("amd64").to_string(),
            variant: b
                .get("variant")
                .and_then(|v| v.as_str())
                .map(str::to_string),
        },
        _ => Platform::host(),
    };

    // The layer, streamed once: tree -> tar -> (diff_id) -> gzip -> (digest) -> temp file.
    let mut layer = tempfile::tempfile_in(
        dest.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .or_else(|_| tempfile::tempfile())
    .map_err(|e| ExportError::io("create temporary layer for", dest, e))?;
    let (diff_id, layer_digest, layer_size) = {
        let compressed = HashingWriter::new(BufWriter::with_capacity(256 * 1024, &mut layer));
        let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
        let raw = write_tree_tar(tree, HashingWriter::new(gz))?;
        let (gz, diff_id, _) = raw.finish();
        let compressed = gz
            .finish()
            .map_err(|e| ExportError::io("compress layer for", dest, e))?;
        let (mut buf, digest, size) = compressed.finish();
        buf.flush()
            .map_err(|e| ExportError::io("write layer for", dest, e))?;
        (diff_id, digest, size)
    };

    let config = serde_json::to_vec(&image_config(&platform, base.as_ref(), &diff_id))
        .expect("config serialises");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": { "mediaType": MT_CONFIG, "digest": config_digest, "size": config.len() },
        "layers": [{ "mediaType": MT_LAYER, "digest": layer_digest, "size": layer_size }],
    }))
    .expect("manifest serialises");
    let manifest_digest = sha256(&manifest);
    let mut desc = json!({
        "mediaType": MT_MANIFEST,
        "digest": manifest_digest,
        "size": manifest.len(),
        "platform": {
            "architecture": platform.architecture,
            "os": platform.os,
        },
    });
    if let Some(v) = &platform.variant {
        desc["platform"]["variant"] = json!(v);
    }
    if let Some(n) = name {
        desc["annotations"] = json!({
            "io.containerd.image.name": n,
            "org.opencontainers.image.ref.name": tag_of(n),
        });
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [desc],
    }))
    .expect("index serialises");

    let (tmp, finish) = atomic_file(dest)?;
    let mut out = tar::Builder::new(BufWriter::with_capacity(256 * 1024, tmp));
    let werr = |e: io::Error| ExportError::io("write", dest, e);
    add_dir(&mut out, "blobs/").map_err(werr)?;
    add_dir(&mut out, "blobs/sha256/").map_err(werr)?;
    add_bytes(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;
    add_bytes(&mut out, "index.json", &index).map_err(werr)?;
    add_bytes(&mut out, &blob_path(&manifest_digest), &manifest).map_err(werr)?;
    add_bytes(&mut out, &blob_path(&config_digest), &config).map_err(werr)?;
    layer.seek(SeekFrom::Start(0)).map_err(werr)?;
    let mut h = file_header(layer_size);
    out.append_data(&mut h, blob_path(&layer_digest), &mut layer)
        .map_err(werr)?;
    let buf = out.into_inner().map_err(werr)?;
    let tmp = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    finish(tmp)?;
    Ok(manifest_digest)
}

fn blob_path(digest: &str) -> String {
    format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"))
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    h
}

fn add_bytes<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    let mut h = file_header(data.len() as u64);
    b.append_data(&mut h, path, data)
}

fn add_dir<W: Write>(b: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    h.set_mtime(0);
    b.append_data(&mut h, path, io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_and_refs() {
        assert_eq!(tag_of("example.com:5000/app:1.2"), "1.2");
        assert_eq!(tag_of("example.com:5000/app"), "latest");
        assert_eq!(tag_of("app"), "latest");
        assert_eq!(tag_of("app:v1@sha256:abcd"), "v1");
        assert!(check_ref("").is_err());
        assert!(check_ref("a b").is_err());
        assert!(check_ref("https://user:pw@host/x").is_err());
        assert!(check_ref("host:5000/a/b:tag").is_ok());
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap(),
            Platform {
                os: "linux".into(),
                architecture: "arm".into(),
                variant: Some("v7".into())
            }
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//x").is_err());
    }
}
