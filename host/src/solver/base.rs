//! The image a step's result derives from: the image source its base chain starts at,
//! described by the `opts` of that source's cache-key answers (IMAGE_CONTRACT):
//!
//! - `image.ref`: the canonical reference, without credentials;
//! - `image.config`: the digest of the image config, a blob of the content store;
//! - `image.layers`: the layer descriptors used (after `image.layerlimit`), bottom first.
//!
//! Configs are stored per manifest in the content store, never in a snapshot's metadata
//! (a snapshot is shared by every manifest with the same chain ID).

use std::collections::BTreeMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::graph::NodeResult;
use crate::build::{Definition, Step};
use crate::export::{BaseImage, BaseLayer};
use crate::store::Store;

/// The opts key of an image source's canonical reference.
pub const OPT_REF: &str = "image.ref";
/// The opts key of an image source's config digest.
pub const OPT_CONFIG: &str = "image.config";
/// The opts key of an image source's layer descriptors (a JSON array).
pub const OPT_LAYERS: &str = "image.layers";

/// Follows `base` (file and run steps) and the bottom layer (merges) down to a source
/// step.
pub(crate) fn base_chain_source<'a>(def: &'a Definition, mut step: &'a str) -> Option<&'a str> {
    for _ in 0..def.steps.len() + 1 {
        match def.steps.get(step)? {
            Step::Source(_) => return Some(step),
            Step::File(f) => step = f.base.as_deref()?,
            Step::Merge(m) => step = m.inputs.first()?,
            Step::Run(r) => step = r.base.as_deref()?,
        }
    }
    None
}

#[derive(serde::Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: String,
    size: u64,
}

/// The image `step`'s result derives from, if its base chain starts at an image source
/// (one whose opts name an `image.config`). Blocking: reads the config from the content
/// store (checking its digest) and leases the layer blobs for this process, so no prune
/// removes them while they are exported. A layer blob the store lacks is `None`.
pub(crate) fn base_image(
    store: &Store,
    def: &Definition,
    results: &BTreeMap<String, Arc<NodeResult>>,
    step: &str,
) -> Result<Option<BaseImage>, String> {
    let Some(source) = base_chain_source(def, step) else {
        return Ok(None);
    };
    match results.get(source) {
        Some(r) => image_of(store, source, r),
        None => Ok(None),
    }
}

/// The image a source step's result `r` is, if it is one (its opts name an
/// `image.config`): config read and checked, layer blobs leased, rootfs the snapshot.
pub(crate) fn image_of(
    store: &Store,
    source: &str,
    r: &NodeResult,
) -> Result<Option<BaseImage>, String> {
    let Some(config_digest) = r.opts.get(OPT_CONFIG) else {
        return Ok(None);
    };
    let reference = r
        .opts
        .get(OPT_REF)
        .cloned()
        .or_else(|| r.source.as_ref().map(|(id, _)| id.clone()))
        .unwrap_or_else(|| source.to_string());
    let what = format!("base image {reference} (step `{source}`)");
    let config = read_config(store, config_digest).map_err(|e| format!("{what}: {e}"))?;
    // Without its layer list the image cannot be extended layer by layer: the export
    // squashes it (rootfs unknown).
    let Some(text) = r.opts.get(OPT_LAYERS) else {
        return Ok(Some(BaseImage {
            reference,
            config,
            layers: Vec::new(),
            rootfs: None,
        }));
    };
    let layers: Vec<Descriptor> = serde_json::from_str(text)
        .map_err(|e| format!("{what}: the source's {OPT_LAYERS} is not a descriptor list: {e}"))?;
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        let present = store
            .lease_blob(&l.digest)
            .map_err(|e| format!("{what}: layer {}: {e}", l.digest))?;
        out.push(BaseLayer {
            blob: present.then(|| store.blob_path(&l.digest)).flatten(),
            media_type: l.media_type,
            digest: l.digest,
            size: l.size,
        });
    }
    Ok(Some(BaseImage {
        reference,
        config,
        layers: out,
        rootfs: Some(r.path.clone()),
    }))
}

/// The config blob `digest`, checked against it.
fn read_config(store: &Store, digest: &str) -> Result<Vec<u8>, String> {
    let path = store
        .blob_path(digest)
        .ok_or_else(|| format!("its config {digest} is not in the content store"))?;
    let bytes =
        std::fs::read(&path).map_err(|e| format!("cannot read its config {digest}: {e}"))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    if got != digest {
        return Err(format!(
            "its config in the content store has digest {got}, expected {digest}"
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SnapshotId;

    fn commit(store: &Store, bytes: &[u8]) -> String {
        let mut i = store.ingest(&hex::encode(Sha256::digest(bytes))).unwrap();
        i.copy_from(&mut &bytes[..]).unwrap();
        i.commit(None).unwrap().digest
    }

    fn source_result(path: &std::path::Path, opts: &[(&str, String)]) -> Arc<NodeResult> {
        Arc::new(NodeResult {
            key: "k".into(),
            snapshot: SnapshotId::parse(&"0".repeat(32)).unwrap(),
            path: path.to_path_buf(),
            cached: true,
            source: Some(("docker-image://example.com/base:1".into(), None)),
            opts: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })
    }

    const DEF: &str = r#"
version = 1
[steps.base]
source = "docker-image://example.com/base:1"
[steps.ctx]
base = "scratch"
actions = [{ mkfile = { path = "/x", data = "x" } }]
[steps.app]
base = "base"
actions = [{ mkfile = { path = "/y", data = "y" } }]
[steps.all]
merge = ["app", "ctx"]
[steps.other]
merge = ["ctx", "app"]
[output]
step = "all"
"#;

    #[test]
    fn the_base_image_comes_from_the_chain_source_opts_and_the_content_store() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("root")).unwrap();
        let def = Definition::parse(DEF, t.path().to_path_buf()).unwrap();
        let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"]}}"#;
        let config_digest = commit(&store, config);
        let layer = commit(&store, b"layer bytes");
        let pruned = format!("sha256:{}", "2".repeat(64));
        let layers = serde_json::json!([
            { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 11 },
            { "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": pruned, "size": 5 },
        ]);
        let rootfs = t.path().join("rootfs");
        let opts = [
            (OPT_REF, "example.com/base:1".to_string()),
            (OPT_CONFIG, config_digest.clone()),
            (OPT_LAYERS, layers.to_string()),
        ];
        let mut results = BTreeMap::new();
        results.insert("base".to_string(), source_result(&rootfs, &opts));

        // Through a file step and a merge's bottom layer; not through a merge's top.
        let b = base_image(&store, &def, &results, "all").unwrap().unwrap();
        assert_eq!(b.reference, "example.com/base:1");
        assert_eq!(b.config, config);
        assert_eq!(b.rootfs.as_deref(), Some(rootfs.as_path()));
        assert_eq!(b.layers.len(), 2);
        assert_eq!(b.layers[0].blob, store.blob_path(&layer));
        assert_eq!(b.layers[0].size, 11);
        assert_eq!(b.layers[1].blob, None);
        assert!(base_image(&store, &def, &results, "other")
            .unwrap()
            .is_none());
        assert!(base_image(&store, &def, &results, "ctx").unwrap().is_none());

        // Without a layer list: the config, but no rootfs (the export squashes).
        let opts = [
            (OPT_REF, "example.com/base:1".to_string()),
            (OPT_CONFIG, config_digest.clone()),
        ];
        results.insert("base".to_string(), source_result(&rootfs, &opts));
        let b = base_image(&store, &def, &results, "app").unwrap().unwrap();
        assert_eq!(b.config, config);
        assert!(b.rootfs.is_none() && b.layers.is_empty());

        // A source without image opts is no image.
        results.insert("base".to_string(), source_result(&rootfs, &[]));
        assert!(base_image(&store, &def, &results, "app").unwrap().is_none());

        // A config the store lacks: an error naming the image, the step and the digest.
        let missing = format!("sha256:{}", "3".repeat(64));
        let opts = [
            (OPT_REF, "example.com/base:1".to_string()),
            (OPT_CONFIG, missing.clone()),
        ];
        results.insert("base".to_string(), source_result(&rootfs, &opts));
        let err = base_image(&store, &def, &results, "app").unwrap_err();
        assert!(
            err.contains("example.com/base:1") && err.contains("`base`") && err.contains(&missing),
            "{err}"
        );
    }
}
