//! `type=oci`: an OCI image layout (image-spec v1.1) in a tar archive.
//!
//! The archive holds `oci-layout`, `index.json`, the manifest, the image config and
//! the layers under `blobs/sha256/`. Layer diff_ids (sha256 of the uncompressed tar)
//! and digests are computed while streaming.
//!
//! - A result derived from an image ([`BaseImage`]) keeps the base image's config
//!   (runtime config, labels, history) and its layers as the same blobs (copied from
//!   the content store, checked against their digests; Docker layer media types are
//!   written as their OCI names), with the build's changes as one new gzip layer on
//!   top ([`diff`]), its diff_id and a history entry appended. No changes, no new layer.
//! - If a base blob is gone from the content store, or for results not derived from an
//!   image, the whole tree is one gzip layer (the base's runtime config still carries
//!   over; a warning says why a base was squashed).
//!
//! Configs have no `created` time, so the same inputs give the same manifest digest.

use std::io::{self, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::tarball::{atomic_file, write_tree_tar, HashingWriter};
use super::{diff, BaseImage, BaseLayer, ExportError, ExportOptions};

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

/// Builds the config of a squashed image: the tree as one layer, the base image's
/// runtime config and history (marked as adding no layer) kept.
fn squashed_config(platform: &Platform, base: Option<&Value>, diff_id: &str) -> Value {
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

/// Builds the config of a layered image: the base image's config with the platform
/// set, the diff_ids and history of the `used` base layers, then the new layer's.
fn layered_config(
    platform: &Platform,
    base: &Value,
    used: usize,
    new_diff_id: Option<&str>,
) -> Result<Value, ExportError> {
    let mut cfg = base.as_object().cloned().unwrap_or_default();
    // No build time: the same inputs give the same digest.
    cfg.remove("created");
    cfg.insert("architecture".into(), json!(platform.architecture));
    cfg.insert("os".into(), json!(platform.os));
    match &platform.variant {
        Some(v) => cfg.insert("variant".into(), json!(v)),
        None => cfg.remove("variant"),
    };
    let base_ids: Vec<Value> = base
        .pointer("/rootfs/diff_ids")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if base_ids.len() < used || base_ids[..used].iter().any(|d| !d.is_string()) {
        return Err(ExportError::BaseConfig(format!(
            "rootfs.diff_ids lists {} layers but the image uses {used}",
            base_ids.len()
        )));
    }
    let mut diff_ids = base_ids[..used].to_vec();
    let mut history: Vec<Value> = base
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if used < base_ids.len() {
        // image.layerlimit: keep the history up to the last layer used.
        let mut layers = 0;
        history.retain(|e| {
            if e.get("empty_layer").and_then(Value::as_bool) != Some(true) {
                layers += 1;
            }
            layers <= used
        });
    }
    // One history entry per layer: a base image with less history (or none) gets
    // placeholders for its first layers, so the new layer's entry lines up with it.
    let described = history
        .iter()
        .filter(|e| e.get("empty_layer").and_then(Value::as_bool) != Some(true))
        .count();
    if described < used {
        let missing = std::iter::repeat_n(
            json!({ "comment": "no history in the base image for this layer" }),
            used - described,
        );
        history.splice(0..0, missing);
    }
    if let Some(d) = new_diff_id {
        diff_ids.push(json!(d));
        history.push(json!({ "created_by": "kiln build", "comment": "the build's changes" }));
    }
    cfg.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    if !history.is_empty() {
        cfg.insert("history".into(), Value::Array(history));
    }
    Ok(Value::Object(cfg))
}

/// The OCI media type of a layer blob (Docker's types name the same bytes).
fn oci_layer_type(media_type: &str) -> &str {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => MT_LAYER,
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
}

/// The diff layer of a layered export, in a temporary file.
struct NewLayer {
    file: std::fs::File,
    diff_id: String,
    digest: String,
    size: u64,
}

fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Appends a layer this export wrote to a temporary file.
fn append_temp<W: Write>(
    out: &mut tar::Builder<W>,
    file: &mut std::fs::File,
    digest: &str,
    size: u64,
) -> io::Result<()> {
    file.seek(SeekFrom::Start(0))?;
    out.append_data(&mut file_header(size), blob_path(digest), file)
}

/// Copies the base image's layer blobs into the archive (a blob listed twice, such as
/// an empty layer, once).
fn copy_base_blobs<W: Write>(
    out: &mut tar::Builder<W>,
    base: &BaseImage,
    dest: &Path,
) -> Result<(), ExportError> {
    let mut seen = std::collections::HashSet::new();
    for l in &base.layers {
        if seen.insert(l.digest.as_str()) {
            append_blob(out, &mut file_header(l.size), l, &base.reference, dest)?;
        }
    }
    Ok(())
}

/// Why a base image cannot be exported as layers (then it is squashed), if it cannot.
fn squash_reason(base: &BaseImage) -> Option<String> {
    if base.rootfs.is_none() {
        return Some("the image source did not describe its layers".into());
    }
    base.layers.iter().find(|l| l.blob.is_none()).map(|l| {
        format!(
            "layer {} is no longer in the content store (pruned)",
            l.digest
        )
    })
}

/// A temporary file for a layer, beside `dest` when possible.
fn temp_layer(dest: &Path) -> Result<std::fs::File, ExportError> {
    tempfile::tempfile_in(
        dest.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    )
    .or_else(|_| tempfile::tempfile())
    .map_err(|e| ExportError::io("create temporary layer for", dest, e))
}

/// Streams a layer tar (written by `write`) through gzip into `file`, once: the
/// diff_id, digest and size are computed on the way. Returns (diff_id, digest, size).
fn gzip_layer(
    file: &mut std::fs::File,
    dest: &Path,
    write: impl FnOnce(
        HashingWriter<flate2::write::GzEncoder<HashingWriter<BufWriter<&mut std::fs::File>>>>,
    ) -> Result<
        HashingWriter<flate2::write::GzEncoder<HashingWriter<BufWriter<&mut std::fs::File>>>>,
        ExportError,
    >,
) -> Result<(String, String, u64), ExportError> {
    let compressed = HashingWriter::new(BufWriter::with_capacity(256 * 1024, file));
    let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::fast());
    let raw = write(HashingWriter::new(gz))?;
    let (gz, diff_id, _) = raw.finish();
    let compressed = gz
        .finish()
        .map_err(|e| ExportError::io("compress layer for", dest, e))?;
    let (mut buf, digest, size) = compressed.finish();
    buf.flush()
        .map_err(|e| ExportError::io("write layer for", dest, e))?;
    Ok((diff_id, digest, size))
}

/// Writes the archive; returns the manifest digest.
pub fn export_oci(
    tree: &Path,
    dest: &Path,
    name: Option<&str>,
    opts: &ExportOptions<'_>,
) -> Result<String, ExportError> {
    let base: Option<Value> = match opts.base {
        Some(b) => {
            let v: Value = serde_json::from_slice(&b.config)
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

    let layered = match (opts.base, &base) {
        (Some(b), Some(cfg)) => match squash_reason(b) {
            None => Some((b, cfg)),
            Some(why) => {
                tracing::warn!(
                    "exporting {} as one squashed layer instead of on top of base image {}: {why}",
                    dest.display(),
                    b.reference
                );
                None
            }
        },
        _ => None,
    };
    let (tmp, finish) = atomic_file(dest)?;
    let mut out = tar::Builder::new(BufWriter::with_capacity(256 * 1024, tmp));
    let werr = |e: io::Error| ExportError::io("write", dest, e);
    add_dir(&mut out, "blobs/").map_err(werr)?;
    add_dir(&mut out, "blobs/sha256/").map_err(werr)?;
    add_bytes(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(werr)?;

    // The layers go into the archive first; the config, manifest and index (which name
    // them) after.
    let mut layers: Vec<Value> = Vec::new();
    let config = match layered {
        Some((b, cfg)) => {
            let rootfs = b.rootfs.as_deref().expect("checked by squash_reason");
            // The diff layer is computed (walk, compare, tar, gzip) while the base
            // blobs are copied into the archive.
            let new = std::thread::scope(|s| {
                let diff = s.spawn(|| -> Result<Option<NewLayer>, ExportError> {
                    let set = diff::changes(rootfs, tree, opts.cancel)?;
                    if set.is_empty() {
                        return Ok(None);
                    }
                    let mut file = temp_layer(dest)?;
                    let (diff_id, digest, size) =
                        gzip_layer(&mut file, dest, |w| diff::write_layer(tree, &set, w))?;
                    Ok(Some(NewLayer {
                        file,
                        diff_id,
                        digest,
                        size,
                    }))
                });
                let copied = copy_base_blobs(&mut out, b, dest);
                let new = diff.join().map_err(|_| {
                    ExportError::io("diff", tree, io::Error::other("the diff thread panicked"))
                })?;
                copied.and(new)
            })?;
            for l in &b.layers {
                layers.push(descriptor(oci_layer_type(&l.media_type), &l.digest, l.size));
            }
            let new_diff_id = match new {
                Some(mut n) => {
                    append_temp(&mut out, &mut n.file, &n.digest, n.size).map_err(werr)?;
                    layers.push(descriptor(MT_LAYER, &n.digest, n.size));
                    Some(n.diff_id)
                }
                None => None,
            };
            layered_config(&platform, cfg, b.layers.len(), new_diff_id.as_deref())?
        }
        None => {
            // The layer, streamed once: tree -> tar -> (diff_id) -> gzip -> (digest) -> file.
            let mut file = temp_layer(dest)?;
            let (diff_id, digest, size) = gzip_layer(&mut file, dest, |w| write_tree_tar(tree, w))?;
            append_temp(&mut out, &mut file, &digest, size).map_err(werr)?;
            layers.push(descriptor(MT_LAYER, &digest, size));
            squashed_config(&platform, base.as_ref(), &diff_id)
        }
    };

    let config = serde_json::to_vec(&config).expect("config serialises");
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": descriptor(MT_CONFIG, &config_digest, config.len() as u64),
        "layers": layers,
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
    add_bytes(&mut out, &blob_path(&config_digest), &config).map_err(werr)?;
    add_bytes(&mut out, &blob_path(&manifest_digest), &manifest).map_err(werr)?;
    add_bytes(&mut out, "index.json", &index).map_err(werr)?;
    let buf = out.into_inner().map_err(werr)?;
    let tmp = buf.into_inner().map_err(|e| werr(e.into_error()))?;
    finish(tmp)?;
    Ok(manifest_digest)
}

/// Copies a base layer's blob from the content store into the archive, checking its
/// size and digest on the way (the archive is dropped on a mismatch).
fn append_blob<W: Write>(
    out: &mut tar::Builder<W>,
    h: &mut tar::Header,
    layer: &BaseLayer,
    reference: &str,
    dest: &Path,
) -> Result<(), ExportError> {
    let path = layer.blob.as_deref().expect("checked by squash_reason");
    let bad = |what: String| {
        ExportError::BaseLayer(format!("{reference}, layer {}: {what}", layer.digest))
    };
    let file = std::fs::File::open(path).map_err(|e| ExportError::io("open", path, e))?;
    let len = file
        .metadata()
        .map_err(|e| ExportError::io("stat", path, e))?
        .len();
    if len != layer.size {
        return Err(bad(format!(
            "the blob in the content store has {len} bytes, the manifest says {}",
            layer.size
        )));
    }
    let mut reader = HashingReader {
        inner: file,
        hasher: Sha256::new(),
    };
    out.append_data(h, blob_path(&layer.digest), &mut reader)
        .map_err(|e| ExportError::io("write", dest, e))?;
    let got = format!("sha256:{}", hex::encode(reader.hasher.finalize()));
    if got != layer.digest {
        return Err(bad(format!(
            "the blob in the content store has digest {got}"
        )));
    }
    Ok(())
}

struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
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
    fn layered_configs_line_history_up_with_layers() {
        let p = Platform::parse("linux/arm64").unwrap();
        let base = json!({
            "created": "2020-01-01T00:00:00Z",
            "architecture": "arm64", "os": "linux", "variant": "v8",
            "config": { "Env": ["A=1"] },
            "rootfs": { "type": "layers", "diff_ids": ["sha256:a", "sha256:b", "sha256:c"] },
            "history": [
                { "created_by": "1" },
                { "created_by": "env", "empty_layer": true },
                { "created_by": "2" },
                { "created_by": "label", "empty_layer": true },
                { "created_by": "3" },
            ],
        });
        let c = layered_config(&p, &base, 3, Some("sha256:new")).unwrap();
        assert_eq!(c.get("created"), None);
        assert_eq!(c.get("variant"), None);
        assert_eq!(c["config"]["Env"], json!(["A=1"]));
        assert_eq!(
            c["rootfs"]["diff_ids"],
            json!(["sha256:a", "sha256:b", "sha256:c", "sha256:new"])
        );
        assert_eq!(c["history"].as_array().unwrap().len(), 6);
        // A layer limit of 2 keeps the history up to the second layer's config entries.
        let c = layered_config(&p, &base, 2, None).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:a", "sha256:b"]));
        let by: Vec<&str> = c["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created_by"].as_str().unwrap())
            .collect();
        assert_eq!(by, ["1", "env", "2", "label"]);
        // No history: placeholders for the base layers, then the new layer's entry.
        let mut bare = base.clone();
        bare.as_object_mut().unwrap().remove("history");
        let c = layered_config(&p, &bare, 3, Some("sha256:new")).unwrap();
        let h = c["history"].as_array().unwrap();
        assert_eq!(h.len(), 4);
        assert_eq!(h[3]["created_by"], "kiln build");
        // diff_ids shorter than the layers used: refused, naming both counts.
        let err = layered_config(&p, &base, 4, None).unwrap_err().to_string();
        assert!(err.contains("lists 3 layers but the image uses 4"), "{err}");
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
