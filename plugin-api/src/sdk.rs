//! The SDK: plain Rust traits a plugin implements, and the adapters that expose them
//! through the ABI with a panic guard around every entry point.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};

use crate::abi::{
    BlobInfo, BlobWriterBox, CacheKeyResult, Capabilities, HostServicesBox, IdentifierRequest,
    JobContextBox, KeyValue, PluginDescriptor, ProgressEvent, ProgressKind, SnapshotResult,
    SourceAbi, SourceAbi_TO, SourceBox, SourceInstanceAbi, SourceInstanceAbi_TO, SourceInstanceBox,
};
use crate::error::{ErrorCode, PluginError, Result};

/// What a plugin declares about itself (see [`Plugin::info`]).
#[derive(Clone, Debug)]
pub struct PluginInfo {
    /// `io.kiln.source.v1.<name>`.
    pub id: &'static str,
    /// The plugin's version, usually `env!("CARGO_PKG_VERSION")`.
    pub version: &'static str,
    /// The schemes it serves.
    pub schemes: &'static [&'static str],
    /// Capability bits.
    pub capabilities: Capabilities,
    /// Calls the host may run at once in this plugin (0: the host's default).
    pub max_concurrency: u32,
}

/// A parsed identifier request, with attributes as a sorted map and platform as text.
#[derive(Clone, Debug, Default)]
pub struct Request {
    /// The scheme before `://`.
    pub scheme: String,
    /// Everything after `://`.
    pub reference: String,
    /// The step's attributes.
    pub attrs: BTreeMap<String, String>,
    /// `os/arch[/variant]`, if set.
    pub platform: Option<String>,
}

impl Request {
    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    /// Converts to the ABI form.
    pub fn to_abi(&self) -> IdentifierRequest {
        IdentifierRequest {
            scheme: self.scheme.as_str().into(),
            reference: self.reference.as_str().into(),
            attrs: self
                .attrs
                .iter()
                .map(|(k, v)| KeyValue::new(k.as_str(), v.as_str()))
                .collect(),
            platform: self.platform.as_deref().map(RString::from).into(),
        }
    }

    /// Converts from the ABI form.
    pub fn from_abi(r: &IdentifierRequest) -> Self {
        Self {
            scheme: r.scheme.to_string(),
            reference: r.reference.to_string(),
            attrs: r
                .attrs
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect(),
            platform: r.platform.as_ref().map(|p| p.to_string()).into_option(),
        }
    }
}

/// A cache key answer (see [`crate::abi::CacheKeyResult`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheKey {
    /// The key string.
    pub key: String,
    /// The resolved, immutable version.
    pub pin: String,
    /// `false`: a stronger key exists at the next index.
    pub done: bool,
    /// Load hints, not part of the key.
    pub opts: Vec<(String, String)>,
}

/// A snapshot answer: metadata about the tree written.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Key/value metadata stored by the host with the snapshot.
    pub metadata: Vec<(String, String)>,
}

/// A source type. One value lives for the whole process; it must be `Send + Sync`.
pub trait Source: Send + Sync + 'static {
    /// The parsed form of an identifier; its `Display` is the canonical identifier.
    type Identifier: Display + Send + Sync + 'static;

    /// Parses and validates the identifier and its attributes. No I/O.
    fn identifier(&self, request: &Request) -> Result<Self::Identifier>;

    /// Builds the instance for one source step. No network work.
    fn resolve(&self, id: Self::Identifier) -> Result<Box<dyn SourceInstance>>;
}

/// One source step.
pub trait SourceInstance: Send + Sync + 'static {
    /// The key and pin at `index`.
    fn cache_key(&self, index: u32, job: &Job<'_>) -> Result<CacheKey>;

    /// Writes the content into `dest`, an empty directory created by the host.
    fn snapshot(&self, dest: &Path, job: &Job<'_>) -> Result<Snapshot>;
}

/// A plugin: a [`Source`] with a description and a constructor. Export it with
/// [`crate::export_plugin!`].
pub trait Plugin: Source + Sized {
    /// The description the host reads first.
    fn info() -> PluginInfo;

    /// Creates the source. `config` is the plugin's `config` table from `kiln.toml`
    /// as TOML text (empty when there is none); see [`parse_config`].
    ///
    /// Return [`PluginError::skip`] when the plugin cannot work on this machine.
    fn new(config: &str, host: Host) -> Result<Self>;
}

/// Parses the plugin's configuration text into `T`; errors name line and column.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T> {
    toml::from_str(config)
        .map_err(|e| PluginError::invalid_config(e.to_string().trim_end().replace('\n', " ")))
}

/// The host's services, as given to [`Plugin::new`]. Cheap to clone.
#[derive(Clone)]
pub struct Host {
    inner: Arc<HostServicesBox>,
}

impl Host {
    /// Wraps the ABI object.
    pub fn from_abi(inner: HostServicesBox) -> Self {
        Self {
            inner: Arc::new(inner),
        }
    }

    pub(crate) fn abi(&self) -> &HostServicesBox {
        &self.inner
    }

    /// This plugin's own state directory under the kiln root.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.inner.state_dir().as_str())
    }

    /// The path of the committed blob with `digest`, if the store has it.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        self.inner
            .blob_path(digest.into())
            .into_option()
            .map(|p| PathBuf::from(p.as_str()))
    }

    /// Opens or resumes the ingest `ingest_ref` (waits while another process holds it).
    pub fn blob_writer(&self, ingest_ref: &str) -> Result<BlobWriter> {
        self.inner
            .blob_writer(ingest_ref.into())
            .into_result()
            .map(|inner| BlobWriter { inner })
    }
}

/// A blob being written into the host's content store; see [`Host::blob_writer`].
pub struct BlobWriter {
    inner: BlobWriterBox,
}

impl BlobWriter {
    /// Bytes already present from an interrupted ingest.
    pub fn offset(&self) -> u64 {
        self.inner.offset()
    }
    /// The validator saved with the partial data.
    pub fn validator(&self) -> String {
        self.inner.validator().into_string()
    }
    /// Saves a validator with the partial data.
    pub fn set_validator(&mut self, validator: &str) -> Result<()> {
        self.inner.set_validator(validator.into()).into_result()
    }
    /// Starts again at offset 0.
    pub fn reset(&mut self) -> Result<()> {
        self.inner.reset().into_result()
    }
    /// Appends bytes.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.write(RSlice::from_slice(data)).into_result()
    }
    /// Commits, verifying `expected` if given.
    pub fn commit(mut self, expected: Option<&str>) -> Result<BlobInfo> {
        self.inner
            .commit(expected.map(RStr::from).into())
            .into_result()
    }
    /// Removes the partial data.
    pub fn discard(mut self) {
        self.inner.discard()
    }
}

impl std::io::Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        BlobWriter::write(self, buf)
            .map(|()| buf.len())
            .map_err(|e| std::io::Error::other(e.message.to_string()))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lookup-name prefix under which the host answers `--oci-layout NAME=DIR`.
pub const OCI_LAYOUT_PREFIX: &str = "oci-layout:";
/// The lookup-name prefix under which the host answers `--ssh ID[=SOCKET]`.
pub const SSH_PREFIX: &str = "ssh:";

/// The job a call belongs to (see [`crate::abi::JobContext`]).
pub struct Job<'a> {
    inner: &'a JobContextBox,
}

impl<'a> Job<'a> {
    /// Wraps the ABI object.
    pub fn from_abi(inner: &'a JobContextBox) -> Self {
        Self { inner }
    }
    /// The build's id.
    pub fn id(&self) -> String {
        self.inner.job_id().into_string()
    }
    /// Whether the host asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.inner.is_cancelled()
    }
    /// `Err(cancelled)` if the host asked to stop.
    pub fn check_cancelled(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(PluginError::cancelled())
        } else {
            Ok(())
        }
    }
    /// A secret's value.
    pub fn secret(&self, name: &str) -> Option<Vec<u8>> {
        self.inner
            .secret(name.into())
            .into_option()
            .map(RVec::into_vec)
    }
    /// The directory mapped to `name` with `--local`.
    pub fn local_dir(&self, name: &str) -> Option<PathBuf> {
        self.inner
            .local_dir(name.into())
            .into_option()
            .map(|p| PathBuf::from(p.as_str()))
    }
    /// The OCI image layout directory given with `--oci-layout NAME=DIR`.
    ///
    /// The host answers it through the same lookup as [`Job::local_dir`], under the
    /// name `oci-layout:NAME` ([`OCI_LAYOUT_PREFIX`]), so the ABI needs no new call.
    pub fn oci_layout_dir(&self, name: &str) -> Option<PathBuf> {
        self.local_dir(&format!("{OCI_LAYOUT_PREFIX}{name}"))
    }
    /// The ssh-agent socket given with `--ssh ID[=SOCKET]` (`$SSH_AUTH_SOCK` when no
    /// socket is named), looked up as `ssh:ID` ([`SSH_PREFIX`]) like
    /// [`Job::oci_layout_dir`].
    pub fn ssh_socket(&self, id: &str) -> Option<PathBuf> {
        self.local_dir(&format!("{SSH_PREFIX}{id}"))
    }
    /// Reports a task's start.
    pub fn progress_start(&self, task: &str, total: u64) {
        self.progress(task, ProgressKind::START, 0, total, None)
    }
    /// Reports a task's progress.
    pub fn progress_update(&self, task: &str, current: u64, total: u64) {
        self.progress(task, ProgressKind::UPDATE, current, total, None)
    }
    /// Reports a task's end.
    pub fn progress_finish(&self, task: &str, current: u64, error: Option<&str>) {
        self.progress(task, ProgressKind::FINISH, current, current, error)
    }
    fn progress(
        &self,
        task: &str,
        kind: ProgressKind,
        current: u64,
        total: u64,
        error: Option<&str>,
    ) {
        self.inner.progress(&ProgressEvent {
            task: task.into(),
            kind,
            current,
            total,
            error: error.map(RString::from).into(),
        })
    }
}

/// Runs `f`, turning a panic into a `panicked` error.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic payload".to_string());
            Err(PluginError::new(
                ErrorCode::PANICKED,
                format!("plugin panicked in {what}: {msg}"),
            ))
        }
    }
}

fn to_rresult<T>(r: Result<T>) -> RResult<T, PluginError> {
    r.into()
}

/// Holds the plugin's source; its drop runs under the panic guard too (a panic in a
/// destructor must not unwind into the host).
struct SourceAdapter<S: Source>(Option<S>);

impl<S: Source> SourceAdapter<S> {
    fn get(&self) -> &S {
        self.0.as_ref().expect("present until dropped")
    }
}

impl<S: Source> Drop for SourceAdapter<S> {
    fn drop(&mut self) {
        let inner = self.0.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
    }
}

impl<S: Source> SourceAbi for SourceAdapter<S> {
    fn identifier(&self, request: &IdentifierRequest) -> RResult<RString, PluginError> {
        to_rresult(guard("identifier", || {
            let id = self.get().identifier(&Request::from_abi(request))?;
            Ok(RString::from(id.to_string()))
        }))
    }

    fn resolve(&self, request: &IdentifierRequest) -> RResult<SourceInstanceBox, PluginError> {
        to_rresult(guard("resolve", || {
            let id = self.get().identifier(&Request::from_abi(request))?;
            let instance = self.get().resolve(id)?;
            Ok(SourceInstanceAbi_TO::from_value(
                InstanceAdapter(Some(instance)),
                TD_Opaque,
            ))
        }))
    }
}

/// Holds one instance; dropped under the panic guard like [`SourceAdapter`].
struct InstanceAdapter(Option<Box<dyn SourceInstance>>);

impl InstanceAdapter {
    fn get(&self) -> &dyn SourceInstance {
        self.0.as_deref().expect("present until dropped")
    }
}

impl Drop for InstanceAdapter {
    fn drop(&mut self) {
        let inner = self.0.take();
        let _ = catch_unwind(AssertUnwindSafe(move || drop(inner)));
    }
}

impl SourceInstanceAbi for InstanceAdapter {
    fn cache_key(&self, index: u32, job: &JobContextBox) -> RResult<CacheKeyResult, PluginError> {
        to_rresult(guard("cache_key", || {
            let k = self.get().cache_key(index, &Job::from_abi(job))?;
            Ok(CacheKeyResult {
                key: k.key.into(),
                pin: k.pin.into(),
                done: k.done,
                opts: k
                    .opts
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            })
        }))
    }

    fn snapshot(
        &self,
        staging_dir: RStr<'_>,
        job: &JobContextBox,
    ) -> RResult<SnapshotResult, PluginError> {
        to_rresult(guard("snapshot", || {
            let s = self
                .get()
                .snapshot(Path::new(staging_dir.as_str()), &Job::from_abi(job))?;
            Ok(SnapshotResult {
                metadata: s
                    .metadata
                    .into_iter()
                    .map(|(k, v)| KeyValue::new(k, v))
                    .collect(),
            })
        }))
    }
}

/// The key of [`PluginDescriptor::extra`] that carries why `describe` failed.
pub const DESCRIBE_ERROR: &str = "describe.error";

#[doc(hidden)]
pub fn describe_impl<P: Plugin>(api_version: &str) -> PluginDescriptor {
    let mut d = PluginDescriptor {
        id: RString::new(),
        version: RString::new(),
        api_version: api_version.into(),
        schemes: RVec::new(),
        capabilities: 0,
        panic_unwind: cfg!(panic = "unwind"),
        max_concurrency: 0,
        extra: RVec::new(),
    };
    // A panic must not cross the `extern "C"` boundary: an empty descriptor with the
    // reason is refused by the host instead.
    match guard("describe", || Ok(P::info())) {
        Ok(info) => {
            d.id = info.id.into();
            d.version = info.version.into();
            d.schemes = info.schemes.iter().map(|s| RString::from(*s)).collect();
            d.capabilities = info.capabilities.0;
            d.max_concurrency = info.max_concurrency;
        }
        Err(e) => d
            .extra
            .push(KeyValue::new(DESCRIBE_ERROR, e.message.as_str())),
    }
    d
}

#[doc(hidden)]
pub fn new_source_impl<P: Plugin>(
    config: RStr<'_>,
    host: HostServicesBox,
) -> RResult<SourceBox, PluginError> {
    to_rresult(guard("new_source", || {
        let host = Host::from_abi(host);
        crate::log_bridge::install(&host, P::info().id);
        let source = P::new(config.as_str(), host)?;
        Ok(SourceAbi_TO::from_value(
            SourceAdapter(Some(source)),
            TD_Opaque,
        ))
    }))
}
