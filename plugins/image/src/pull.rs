//! Resolving an image (index → manifest → config, every document verified against its
//! digest and committed into the host's content store) and writing its rootfs (layers
//! downloaded in parallel into the store, applied in order; the next layer to apply is
//! streamed download → store → decompress → unpack in one pass).

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use kiln_plugin_api::{ErrorCode, Host, Job, PluginError, Result};
use serde::Deserialize;

use crate::keys::{chain_id, manifest_key, sha256_digest};
use crate::manifest::{self, Descriptor, ImageConfig, Index, Kind, Manifest};
use crate::registry::{BlobReader, Client, Repo};
use crate::unpack::{apply_layer, Compression, UnpackOptions};

/// Where an image's documents and blobs come from.
pub enum Origin {
    /// A registry repository.
    Registry {
        /// The client (tokens live as long as it).
        client: Client,
        /// The repository.
        repo: Repo,
    },
    /// An OCI image layout directory.
    Layout {
        /// The directory (holds `index.json` and `blobs/`).
        dir: PathBuf,
    },
}

/// A resolved image: what the keys, the pin and the snapshot need.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The top-level digest (index or manifest): the pin.
    pub top: String,
    /// The platform manifest chosen.
    pub manifest: String,
    /// The image config's digest.
    pub config: String,
    /// The layers used (after the layer limit), bottom first.
    pub layers: Vec<Descriptor>,
    /// Their diff IDs.
    pub diff_ids: Vec<String>,
    /// Key index 0.
    pub manifest_key: String,
    /// Key index 1 (none for an image without layers).
    pub chain_id: Option<String>,
}

impl Resolved {
    /// The `opts` of the key answers (see IMAGE_CONTRACT.md).
    pub fn opts(&self, canonical_ref: &str) -> Vec<(String, String)> {
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({"mediaType": l.media_type, "digest": l.digest, "size": l.size})
            })
            .collect();
        vec![
            ("image.ref".into(), canonical_ref.to_string()),
            ("image.manifest".into(), self.manifest.clone()),
            ("image.config".into(), self.config.clone()),
            (
                "image.layers".into(),
                serde_json::Value::Array(layers).to_string(),
            ),
        ]
    }
}

/// Commits `bytes` (already verified to have `digest`) into the content store unless
/// it is there.
pub fn commit_small(host: &Host, digest: &str, bytes: &[u8]) -> Result<()> {
    if host.blob_path(digest).is_some() {
        return Ok(());
    }
    let mut w = host.blob_writer(digest)?;
    if host.blob_path(digest).is_some() {
        w.discard();
        return Ok(());
    }
    if w.offset() > 0 {
        w.reset()?;
    }
    w.write(bytes)?;
    w.commit(Some(digest))?;
    Ok(())
}

/// Reads a whole blob into memory from the store if present, else from `origin`;
/// verifies it against `digest`.
fn small_blob(
    host: &Host,
    origin: &Origin,
    digest: &str,
    max: u64,
    what: &str,
    manifest_endpoint: bool,
) -> Result<(Vec<u8>, Option<String>)> {
    if let Some(p) = host.blob_path(digest) {
        return Ok((std::fs::read(&p)?, None));
    }
    let (bytes, ctype) = match origin {
        Origin::Registry { client, repo } => {
            if manifest_endpoint {
                let r = client.manifest(repo, digest)?;
                (r.bytes, r.content_type)
            } else {
                let (mut body, _) = client.open_blob(repo, digest, 0)?;
                let mut v = Vec::new();
                (&mut body)
                    .take(max + 1)
                    .read_to_end(&mut v)
                    .map_err(|e| PluginError::network(format!("{repo}: {what} {digest}: {e}")))?;
                (v, None)
            }
        }
        Origin::Layout { dir } => (read_layout_blob(dir, digest, max)?, None),
    };
    if bytes.len() as u64 > max {
        return Err(PluginError::internal(format!(
            "{what} {digest} is larger than {max} bytes"
        )));
    }
    let got = sha256_digest(&bytes);
    if got != digest {
        return Err(PluginError::checksum_mismatch(format!(
            "{what}: checksum mismatch: expected {digest}, got {got}"
        )));
    }
    commit_small(host, digest, &bytes)?;
    Ok((bytes, ctype))
}

fn layout_blob_path(dir: &Path, digest: &str) -> Result<PathBuf> {
    let d = crate::digest::Digest::parse(digest)
        .map_err(|e| PluginError::invalid_identifier(e.to_string()))?;
    Ok(dir.join("blobs").join(d.algorithm().as_str()).join(d.hex()))
}

fn read_layout_blob(dir: &Path, digest: &str, max: u64) -> Result<Vec<u8>> {
    let p = layout_blob_path(dir, digest)?;
    let f = std::fs::File::open(&p).map_err(|e| {
        PluginError::not_found(format!("OCI layout {}: blob {digest}: {e}", dir.display()))
    })?;
    let mut v = Vec::new();
    f.take(max + 1).read_to_end(&mut v)?;
    Ok(v)
}

#[derive(Deserialize)]
struct LayoutIndex {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// The digest `tag` names in the layout's `index.json`
/// (`org.opencontainers.image.ref.name` equal to the tag or to `NAME:TAG`).
pub fn layout_tag(dir: &Path, name: &str, tag: &str) -> Result<String> {
    let p = dir.join("index.json");
    let bytes = std::fs::read(&p)
        .map_err(|e| PluginError::not_found(format!("OCI layout {}: {e}", p.display())))?;
    let idx: LayoutIndex = serde_json::from_slice(&bytes)
        .map_err(|e| PluginError::invalid_identifier(format!("OCI layout {}: {e}", p.display())))?;
    let full = format!("{name}:{tag}");
    idx.manifests
        .iter()
        .find(|d| {
            d.annotations
                .get("org.opencontainers.image.ref.name")
                .is_some_and(|r| r == tag || *r == full)
        })
        .map(|d| d.digest.clone())
        .ok_or_else(|| {
            PluginError::not_found(format!(
                "OCI layout {}: no manifest with the ref name {tag:?} in index.json",
                dir.display()
            ))
        })
}

/// Walks `top` → (index → platform manifest) → config.
pub fn resolve_from(
    host: &Host,
    origin: &Origin,
    top: &str,
    top_doc: Option<(Vec<u8>, Option<String>)>,
    platform: &kiln_plugin_api::platform::Platform,
    limit: Option<u32>,
    name: &str,
) -> Result<Resolved> {
    let (bytes, ctype) = match top_doc {
        Some(d) => d,
        None => small_blob(
            host,
            origin,
            top,
            manifest::MAX_MANIFEST_BYTES,
            "manifest",
            true,
        )?,
    };
    let kind = manifest::kind_of(&bytes, ctype.as_deref())
        .map_err(|e| PluginError::unsupported(format!("{name}: {top}: {e}")))?;
    let (mdigest, mbytes) = match kind {
        Kind::Manifest => (top.to_string(), bytes),
        Kind::Index => {
            let idx: Index = serde_json::from_slice(&bytes)
                .map_err(|e| PluginError::internal(format!("{name}: index {top}: {e}")))?;
            let d = manifest::select(&idx, platform).ok_or_else(|| {
                let have: Vec<String> = idx
                    .manifests
                    .iter()
                    .filter_map(|m| m.platform.as_ref())
                    .map(|p| match &p.variant {
                        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
                        _ => format!("{}/{}", p.os, p.architecture),
                    })
                    .collect();
                PluginError::not_found(format!(
                    "{name}: no manifest for platform {platform} in index {top} (it has {})",
                    have.join(", ")
                ))
            })?;
            let (b, ct) = small_blob(
                host,
                origin,
                &d.digest,
                manifest::MAX_MANIFEST_BYTES,
                "manifest",
                true,
            )?;
            if manifest::kind_of(&b, ct.as_deref().or(Some(&d.media_type)))
                .map_err(|e| PluginError::unsupported(format!("{name}: {}: {e}", d.digest)))?
                != Kind::Manifest
            {
                return Err(PluginError::unsupported(format!(
                    "{name}: {} is an index inside an index",
                    d.digest
                )));
            }
            (d.digest.clone(), b)
        }
    };
    let m: Manifest = serde_json::from_slice(&mbytes)
        .map_err(|e| PluginError::internal(format!("{name}: manifest {mdigest}: {e}")))?;
    let (cbytes, _) = small_blob(
        host,
        origin,
        &m.config.digest,
        manifest::MAX_CONFIG_BYTES,
        "image config",
        false,
    )
    .map_err(|e| e.context(name))?;
    let cfg: ImageConfig = serde_json::from_slice(&cbytes).map_err(|e| {
        PluginError::internal(format!("{name}: image config {}: {e}", m.config.digest))
    })?;
    let diff_ids = cfg.rootfs.map(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != m.layers.len() {
        return Err(PluginError::internal(format!(
            "{name}: manifest {mdigest} has {} layers but its config lists {} diff_ids",
            m.layers.len(),
            diff_ids.len()
        )));
    }
    let mut layers = m.layers;
    let mut diff_ids = diff_ids;
    if let Some(l) = limit {
        if l as usize > layers.len() {
            return Err(PluginError::internal(format!(
                "{name}: invalid layer limit {l}: the image has only {} layers",
                layers.len()
            )));
        }
        layers.truncate(l as usize);
        diff_ids.truncate(l as usize);
    }
    for l in &layers {
        if Compression::from_media_type(&l.media_type).is_none() {
            return Err(PluginError::unsupported(format!(
                "{name}: layer {} has the unsupported media type {:?}",
                l.digest, l.media_type
            )));
        }
        crate::digest::Digest::parse(&l.digest)
            .map_err(|e| PluginError::internal(format!("{name}: layer: {e}")))?;
    }
    Ok(Resolved {
        top: top.to_string(),
        manifest: mdigest,
        config: m.config.digest,
        manifest_key: manifest_key(top, platform, limit),
        chain_id: chain_id(&diff_ids),
        layers,
        diff_ids,
    })
}

/// Copies bytes read into the blob writer and reports progress.
struct Tee<'a, R> {
    src: R,
    writer: &'a mut kiln_plugin_api::BlobWriter,
    job: &'a Job<'a>,
    task: &'a str,
    total: u64,
    done: u64,
    reported: u64,
    /// Why reading the download failed, if it did (the partial data is then kept for
    /// a resume rather than committed).
    failed: Option<String>,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.job.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let n = self.src.read(buf).inspect_err(|e| {
            self.failed.get_or_insert_with(|| e.to_string());
        })?;
        self.writer
            .write(&buf[..n])
            .map_err(|e| io::Error::other(e.message.to_string()))?;
        self.done += n as u64;
        if self.done - self.reported >= (1 << 20) || (n == 0 && self.done != self.reported) {
            self.reported = self.done;
            self.job.progress_update(self.task, self.done, self.total);
        }
        Ok(n)
    }
}

enum Slot {
    Pending,
    Taken,
    Done(Result<()>),
}

/// Pulls and applies one image's layers into `dest`.
pub struct Puller<'a> {
    /// The host.
    pub host: &'a Host,
    /// The origin.
    pub origin: &'a Origin,
    /// The job.
    pub job: &'a Job<'a>,
    /// The image, for messages.
    pub name: &'a str,
    /// Downloads at once.
    pub concurrency: usize,
}

impl Puller<'_> {
    fn open<'s>(
        &'s self,
        l: &'s Descriptor,
        offset: u64,
    ) -> Result<Option<Box<dyn Read + Send + 's>>> {
        match self.origin {
            Origin::Registry { client, repo } => {
                Ok(BlobReader::open(client, repo, &l.digest, l.size, offset)?
                    .map(|r| Box::new(r) as Box<dyn Read + Send + 's>))
            }
            Origin::Layout { dir } => {
                use std::io::Seek;
                let p = layout_blob_path(dir, &l.digest)?;
                let mut f = std::fs::File::open(&p).map_err(|e| {
                    PluginError::not_found(format!(
                        "OCI layout {}: layer {}: {e}",
                        dir.display(),
                        l.digest
                    ))
                })?;
                f.seek(io::SeekFrom::Start(offset))?;
                Ok(Some(Box::new(f.take(l.size + 1 - offset.min(l.size)))))
            }
        }
    }

    fn layer_err(&self, l: &Descriptor, e: impl std::fmt::Display) -> PluginError {
        PluginError::internal(format!("{}: layer {}: {e}", self.name, l.digest))
    }

    /// Downloads layer `l` into the content store (resuming an interrupted ingest).
    fn download(&self, l: &Descriptor) -> Result<()> {
        if self.host.blob_path(&l.digest).is_some() {
            return Ok(());
        }
        let mut w = self.host.blob_writer(&l.digest)?;
        if self.host.blob_path(&l.digest).is_some() {
            w.discard();
            return Ok(());
        }
        let task = format!("download {}", short(&l.digest));
        let mut offset = w.offset();
        if offset > l.size {
            w.reset()?;
            offset = 0;
        }
        self.job.progress_start(&task, l.size);
        let body = match self.open(l, offset)? {
            Some(b) => b,
            None => {
                w.reset()?;
                offset = 0;
                self.open(l, 0)?.expect("offset 0 always opens")
            }
        };
        if offset > 0 {
            tracing::info!(
                "{}: layer {}: resuming at byte {offset}",
                self.name,
                l.digest
            );
        }
        let mut tee = Tee {
            src: body,
            writer: &mut w,
            job: self.job,
            task: &task,
            total: l.size,
            done: offset,
            reported: offset,
            failed: None,
        };
        let r = drain(&mut tee);
        self.job
            .progress_finish(&task, tee.done, r.as_ref().err().map(|_| "failed"));
        self.job.check_cancelled()?;
        r.map_err(|e| PluginError::network(format!("{}: layer {}: {e}", self.name, l.digest)))?;
        w.commit(Some(&l.digest))
            .map_err(|e| e.context(format!("{}: layer {}", self.name, l.digest)))?;
        Ok(())
    }

    fn check_diff_id(&self, l: &Descriptor, want: &str, got: &str) -> Result<()> {
        if want != got {
            return Err(PluginError::checksum_mismatch(format!(
                "{}: layer {}: the uncompressed content has digest {got}, but the image config's diff_id is {want}",
                self.name, l.digest
            )));
        }
        Ok(())
    }

    fn apply_stored(
        &self,
        dest: &Path,
        l: &Descriptor,
        diff_id: &str,
        opts: &UnpackOptions,
    ) -> Result<()> {
        let p = self
            .host
            .blob_path(&l.digest)
            .ok_or_else(|| self.layer_err(l, "vanished from the content store"))?;
        let f = std::fs::File::open(&p)?;
        let task = format!("unpack {}", short(&l.digest));
        self.job.progress_start(&task, l.size);
        let comp = Compression::from_media_type(&l.media_type).expect("checked at resolve");
        let stats = apply_layer(dest, io::BufReader::with_capacity(1 << 20, f), comp, opts)
            .map_err(|e| self.hostile(l, e));
        self.job
            .progress_finish(&task, l.size, stats.as_ref().err().map(|_| "failed"));
        self.check_diff_id(l, diff_id, &stats?.diff_id)
    }

    fn hostile(&self, l: &Descriptor, e: crate::unpack::UnpackError) -> PluginError {
        PluginError::new(
            ErrorCode::INTERNAL,
            format!("{}: layer {}: refused: {e}", self.name, l.digest),
        )
    }

    /// Streams layer `l` from the origin into the store and the tree at once.
    fn stream_apply(
        &self,
        dest: &Path,
        l: &Descriptor,
        diff_id: &str,
        opts: &UnpackOptions,
    ) -> Result<()> {
        let mut w = self.host.blob_writer(&l.digest)?;
        if self.host.blob_path(&l.digest).is_some() || w.offset() > 0 {
            // Stored meanwhile, or a partial download to resume: finish it first.
            drop(w);
            self.download(l)?;
            return self.apply_stored(dest, l, diff_id, opts);
        }
        let body = self.open(l, 0)?.expect("offset 0 always opens");
        let task = format!("pull {}", short(&l.digest));
        self.job.progress_start(&task, l.size);
        let comp = Compression::from_media_type(&l.media_type).expect("checked at resolve");
        let mut tee = Tee {
            src: body,
            writer: &mut w,
            job: self.job,
            task: &task,
            total: l.size,
            done: 0,
            reported: 0,
            failed: None,
        };
        let applied = apply_layer(dest, &mut tee, comp, opts);
        if applied.is_err() {
            // Read the rest so that a corrupt download is told apart from a hostile layer.
            let _ = drain(&mut tee);
        }
        let done = tee.done;
        if let Some(why) = tee.failed.take() {
            // Keep what arrived: the next pull resumes it with a Range request.
            drop(w);
            self.job
                .progress_finish(&task, done, Some("download failed"));
            self.job.check_cancelled()?;
            return Err(PluginError::network(format!(
                "{}: layer {}: the download broke off at byte {done} of {}: {why}",
                self.name, l.digest, l.size
            )));
        }
        self.job.check_cancelled()?;
        let committed = w.commit(Some(&l.digest));
        self.job.progress_finish(
            &task,
            done,
            (applied.is_err() || committed.is_err()).then_some("failed"),
        );
        if let Err(e) = committed {
            if e.code == ErrorCode::CHECKSUM_MISMATCH {
                return Err(e.context(format!("{}: layer {}", self.name, l.digest)));
            }
            if applied.is_ok() {
                return Err(e.context(format!("{}: layer {}", self.name, l.digest)));
            }
        }
        let stats = applied.map_err(|e| self.hostile(l, e))?;
        self.check_diff_id(l, diff_id, &stats.diff_id)
    }

    /// Downloads (in parallel) and applies (in order) `layers` into `dest`.
    pub fn pull(
        &self,
        dest: &Path,
        layers: &[Descriptor],
        diff_ids: &[String],
        opts: &UnpackOptions,
    ) -> Result<()> {
        let slots: Vec<Slot> = layers
            .iter()
            .map(|l| {
                if self.host.blob_path(&l.digest).is_some() {
                    Slot::Done(Ok(()))
                } else {
                    Slot::Pending
                }
            })
            .collect();
        let slots = Mutex::new(slots);
        let cv = Condvar::new();
        let applying = AtomicUsize::new(0);
        let stop = AtomicBool::new(false);
        let workers = self.concurrency.saturating_sub(1).min(layers.len());
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    if stop.load(Ordering::Relaxed) || self.job.is_cancelled() {
                        return;
                    }
                    let i = {
                        let mut g = slots.lock().expect("slots");
                        let from = applying.load(Ordering::SeqCst) + 1;
                        match (from..g.len()).find(|&i| matches!(g[i], Slot::Pending)) {
                            Some(i) => {
                                g[i] = Slot::Taken;
                                i
                            }
                            None => return,
                        }
                    };
                    let r = self.download(&layers[i]);
                    slots.lock().expect("slots")[i] = Slot::Done(r);
                    cv.notify_all();
                });
            }
            let result = (|| {
                for (i, l) in layers.iter().enumerate() {
                    applying.store(i, Ordering::SeqCst);
                    self.job.check_cancelled()?;
                    let mut g = slots.lock().expect("slots");
                    match &g[i] {
                        Slot::Pending => {
                            g[i] = Slot::Taken;
                            drop(g);
                            self.stream_apply(dest, l, &diff_ids[i], opts)?;
                            slots.lock().expect("slots")[i] = Slot::Done(Ok(()));
                        }
                        _ => {
                            while matches!(g[i], Slot::Taken) {
                                g = cv.wait(g).expect("slots");
                            }
                            let Slot::Done(r) = std::mem::replace(&mut g[i], Slot::Done(Ok(())))
                            else {
                                unreachable!()
                            };
                            drop(g);
                            r?;
                            self.apply_stored(dest, l, &diff_ids[i], opts)?;
                        }
                    }
                }
                Ok(())
            })();
            stop.store(true, Ordering::Relaxed);
            result
        })
    }
}

/// Reads `r` to its end in 1 MiB steps (each step is one write into the store).
fn drain(r: &mut impl Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn short(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    &hex[..hex.len().min(12)]
}
