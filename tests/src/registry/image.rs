//! Test images built in Rust: layers as (gzip-compressed) tars with any entry a test
//! needs (whiteouts, opaque directories, hostile names), image configs, manifests,
//! indexes and OCI layouts, every blob with its real digest.

use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let h = Sha256::digest(bytes);
    let mut s = String::from("sha256:");
    for b in h {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// One tar entry of a test layer.
#[derive(Clone, Debug)]
pub enum Entry {
    /// A directory (mode 0755).
    Dir(String),
    /// A regular file with contents and mode.
    File(String, Vec<u8>, u32),
    /// A symbolic link: path, target.
    Symlink(String, String),
    /// A hard link: path, target (a path inside the layer).
    Hardlink(String, String),
    /// Removes `path` from lower layers (`.wh.<name>`).
    Whiteout(String),
    /// Hides everything lower layers have in the directory (`.wh..wh..opq`).
    Opaque(String),
    /// A regular file whose tar name is written verbatim (no checks): for hostile layers.
    RawName(Vec<u8>, Vec<u8>),
}

/// How a layer is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
}

/// A built layer.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob (compressed).
    pub blob: Vec<u8>,
    /// The blob's digest.
    pub digest: String,
    /// The uncompressed tar's digest.
    pub diff_id: String,
    /// The media type.
    pub media_type: &'static str,
}

fn header(kind: tar::EntryType, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_700_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

/// The uncompressed tar of `entries`.
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::Dir(p) => {
                let mut h = header(tar::EntryType::Directory, 0, 0o755);
                b.append_data(&mut h, p, std::io::empty()).expect("dir");
            }
            Entry::File(p, data, mode) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, *mode);
                b.append_data(&mut h, p, &data[..]).expect("file");
            }
            Entry::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0, 0o777);
                b.append_link(&mut h, p, target).expect("symlink");
            }
            Entry::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0, 0o644);
                b.append_link(&mut h, p, target).expect("hardlink");
            }
            Entry::Whiteout(p) => {
                let path = Path::new(p);
                let name = path.file_name().expect("name").to_string_lossy();
                let wh = path.with_file_name(format!(".wh.{name}"));
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                b.append_data(&mut h, wh, std::io::empty())
                    .expect("whiteout");
            }
            Entry::Opaque(dir) => {
                let mut h = header(tar::EntryType::Regular, 0, 0o644);
                b.append_data(
                    &mut h,
                    Path::new(dir).join(".wh..wh..opq"),
                    std::io::empty(),
                )
                .expect("opaque");
            }
            Entry::RawName(name, data) => {
                let mut h = header(tar::EntryType::Regular, data.len() as u64, 0o644);
                let field = &mut h.as_old_mut().name;
                field.fill(0);
                field[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, &data[..]).expect("raw entry");
            }
        }
    }
    b.into_inner().expect("tar")
}

/// A layer of `entries`.
pub fn layer(entries: &[Entry], compression: Compression) -> Layer {
    layer_from_tar(tar_of(entries), compression)
}

/// A layer from an uncompressed tar.
pub fn layer_from_tar(tar: Vec<u8>, compression: Compression) -> Layer {
    let diff_id = digest(&tar);
    let (blob, media_type) = match compression {
        Compression::None => (tar, "application/vnd.oci.image.layer.v1.tar"),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&tar).expect("gzip");
            (
                e.finish().expect("gzip"),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
    };
    Layer {
        digest: digest(&blob),
        blob,
        diff_id,
        media_type,
    }
}

/// A built single-platform image.
#[derive(Clone, Debug)]
pub struct Image {
    /// The layers, bottom first.
    pub layers: Vec<Layer>,
    /// The config JSON.
    pub config: Vec<u8>,
    /// Its digest.
    pub config_digest: String,
    /// The manifest JSON.
    pub manifest: Vec<u8>,
    /// Its digest.
    pub manifest_digest: String,
    /// `os/arch[/variant]`.
    pub platform: String,
}

/// An OCI image of `layers` for `platform` (`os/arch[/variant]`), with `env` in its config.
pub fn image(layers: Vec<Layer>, platform: &str, env: &[&str]) -> Image {
    let mut parts = platform.split('/');
    let (os, arch, variant) = (parts.next().unwrap(), parts.next().unwrap(), parts.next());
    let mut config = serde_json::json!({
        "architecture": arch,
        "os": os,
        "config": {"Env": env, "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "kiln test"})).collect::<Vec<_>>(),
    });
    if let Some(v) = variant {
        config["variant"] = v.into();
    }
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = digest(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers.iter().map(|l| serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.blob.len()})).collect::<Vec<_>>(),
    }))
    .expect("json");
    Image {
        manifest_digest: digest(&manifest),
        manifest,
        config,
        config_digest,
        layers,
        platform: platform.to_string(),
    }
}

/// An OCI index of `images`: its JSON and digest.
pub fn index(images: &[&Image]) -> (Vec<u8>, String) {
    let manifests: Vec<_> = images
        .iter()
        .map(|i| {
            let mut parts = i.platform.split('/');
            let mut p = serde_json::json!({"os": parts.next().unwrap(), "architecture": parts.next().unwrap()});
            if let Some(v) = parts.next() {
                p["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": i.manifest_digest, "size": i.manifest.len(), "platform": p,
            })
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .expect("json");
    let d = digest(&bytes);
    (bytes, d)
}

/// Writes `img` into an OCI image layout at `dir`, its manifest named `tag` in
/// `index.json`.
pub fn write_layout(dir: &Path, img: &Image, tag: &str) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("mkdir");
    let put = |d: &str, b: &[u8]| {
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), b).expect("write blob")
    };
    for l in &img.layers {
        put(&l.digest, &l.blob);
    }
    put(&img.config_digest, &img.config);
    put(&img.manifest_digest, &img.manifest);
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": img.manifest_digest, "size": img.manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&index).expect("json"),
    )
    .expect("write");
}
