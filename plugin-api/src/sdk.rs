//! The SDK: plain Rust traits a plugin implements, and the adapters that expose them
//! through the ABI with a panic guard around every entry point.

use std::collections::BTreeMap;
use std::fmt::{self, Display};
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
use crate::attrs::AttrSpec;
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
    /// A request for `identifier` (`scheme://reference`; without `://`, all of it is
    /// the reference and the scheme is empty), with no attributes: for tests.
    pub fn new(identifier: &str) -> Self {
        let (scheme, reference) = identifier.split_once("://").unwrap_or(("", identifier));
        Self {
            scheme: scheme.to_string(),
            reference: reference.to_string(),
            ..Self::default()
        }
    }

    /// This request with attribute `key` set to `value`.
    pub fn with_attr(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.attrs.insert(key.into(), value.into());
        self
    }

    /// This request with a platform.
    pub fn with_platform(mut self, platform: impl Into<String>) -> Self {
        self.platform = Some(platform.into());
        self
    }

    /// The value of attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.get(key).map(String::as_str)
    }

    fn typed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> std::result::Result<T, String>,
    ) -> Result<Option<T>> {
        self.attr(key)
            .map(|v| {
                parse(v).map_err(|e| {
                    PluginError::invalid_identifier(format!(
                        "{}: attribute {key}: {e}",
                        self.shown()
                    ))
                })
            })
            .transpose()
    }

    /// The identifier as shown in errors, with URL credentials replaced by `xxxxx`.
    fn shown(&self) -> String {
        let rest = &self.reference;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        match rest[..end].rfind('@') {
            Some(at) => format!("{}://xxxxx{}", self.scheme, &rest[at..]),
            None => format!("{}://{rest}", self.scheme),
        }
    }

    /// Attribute `key` as a non-negative integer (Go's base prefixes: `42`, `0x2a`,
    /// `052`); `None` if unset; an `invalid identifier` error naming the attribute if
    /// the value is not one.
    pub fn attr_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, crate::attrs::parse_u64)
    }

    /// Attribute `key` as a boolean (Go's `strconv.ParseBool` spellings).
    pub fn attr_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, crate::attrs::parse_bool)
    }

    /// Attribute `key` as a file mode in `0..=0o7777` (`0644` is octal, `420` decimal,
    /// as in BuildKit's `http.perm`).
    pub fn attr_octal(&self, key: &str) -> Result<Option<u32>> {
        self.typed(key, crate::attrs::parse_mode)
    }

    /// Attribute `key` as a JSON list of strings (how a TOML array in a build
    /// definition arrives); `None` if unset or JSON `null`.
    pub fn attr_list(&self, key: &str) -> Result<Option<Vec<String>>> {
        Ok(self.typed(key, crate::attrs::parse_list)?.flatten())
    }

    /// Refuses any attribute that starts with `prefix` (e.g. `"http."`) and is not in
    /// `known` (entries ending in `.*` admit a family, like `http.header.*`). The
    /// error names the attribute and lists the known ones. The host's schema check
    /// ([`Plugin::attributes`]) does the same before the plugin is called; this keeps
    /// a plugin strict when it is loaded by a host that does not check.
    pub fn deny_unknown(&self, prefix: &str, known: &[&str]) -> Result<()> {
        for key in self.attrs.keys().filter(|k| k.starts_with(prefix)) {
            let declared = known.iter().any(|k| {
                crate::attrs::AttrSpec::new(*k, crate::attrs::AttrType::String, "").matches(key)
            });
            if !declared {
                return Err(PluginError::invalid_identifier(format!(
                    "{}: unknown attribute {key} (known: {})",
                    self.shown(),
                    known.join(", ")
                )));
            }
        }
        Ok(())
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
///
/// ## What goes into a key
///
/// - **`key` must contain everything that changes the content** `snapshot` writes:
///   the resolved immutable version (commit, content digest), and every attribute that
///   alters the tree (file name, mode, owner, sub-directory, …). Two steps with the
///   same key must produce the same tree: the host reuses one for the other.
/// - **`key` must not contain** secrets, tokens, URL credentials or anything else a
///   user would not want in a build log: keys are stored in the cache index, shown by
///   `kiln source resolve` and exported. Name a secret (`authheadersecret=NAME`), never
///   its value. Nothing random either (time, temp paths), unless the step is meant to
///   run every time: then start the key with `session:` (the digest becomes
///   `random:…`, never reused across builds).
/// - The host hashes the key as BuildKit does (`sha256("buildkit.source.v0:" + key)`),
///   which is the digest `source resolve` shows, and mixes **the plugin's id** into the
///   cache index as well: a plugin cannot hit another plugin's entries by returning the
///   same key string, so no key needs the plugin's name in it.
/// - `pin` is the immutable version the step resolved to (a commit, a manifest or
///   content digest), recorded in build metadata so a build can be repeated exactly;
///   the first pin of a step wins. Like the key, never a secret.
/// - `opts` are load hints that are **not** part of the key and never change the
///   content (e.g. a mirror to try first, a size estimate); they are not stored.
/// - `done = false` says a stronger key exists at `index + 1` (BuildKit's
///   multi-index protocol: the host asks for the next index only on a cache miss).
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

    /// The attributes this source accepts (the schema). When it is not empty, the host
    /// refuses a step with an undeclared attribute or a value that does not parse as
    /// its type before calling the plugin, and `kiln plugins show` lists it. The
    /// default declares nothing and the host checks nothing.
    fn attributes() -> Vec<AttrSpec> {
        Vec::new()
    }
}

/// Parses the plugin's configuration text into `T`.
///
/// An error names the key it is about (`config key `timeout`: invalid type…`, see
/// [`config_error`]), which the host turns into the line and column in `kiln.toml`.
pub fn parse_config<T: serde::de::DeserializeOwned>(config: &str) -> Result<T> {
    toml::from_str(config).map_err(|e| {
        let msg = e.message().trim_end().replace('\n', " ");
        let key = e
            .span()
            .map(|s| key_at(config, s.start))
            .unwrap_or_default();
        config_error(&key, msg)
    })
}

/// An `invalid config` error about `key` (a dotted path inside the plugin's `config`
/// table; empty: the table as a whole). The host reads the key back
/// ([`config_error_key`]) to point at its line and column in `kiln.toml`.
pub fn config_error(key: &str, message: impl fmt::Display) -> PluginError {
    if key.is_empty() {
        PluginError::invalid_config(format!("config: {message}"))
    } else {
        PluginError::invalid_config(format!("config key `{key}`: {message}"))
    }
}

/// The key an [`config_error`] message is about, and the rest of the message.
pub fn config_error_key(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("config key `")?;
    let (key, rest) = rest.split_once("`: ")?;
    Some((key, rest))
}

/// The dotted key path at byte `offset` of TOML text of the simple shape the host
/// hands a plugin (`[table]` / `[[array]]` headers and `key = value` lines): the
/// innermost table header above the offset, plus the key of the offset's line.
fn key_at(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    let header = |l: &str| {
        let l = l.trim();
        l.strip_prefix("[[")
            .and_then(|r| r.strip_suffix("]]"))
            .or_else(|| l.strip_prefix('[').and_then(|r| r.strip_suffix(']')))
            .map(|h| h.trim().to_string())
    };
    if let Some(h) = header(line) {
        return h;
    }
    let table = text[..line_start]
        .lines()
        .rev()
        .find_map(header)
        .unwrap_or_default();
    let key = line.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
    match (table.is_empty(), key.is_empty()) {
        (_, true) => table,
        (true, false) => key.to_string(),
        (false, false) => format!("{table}.{key}"),
    }
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
    /// Reports a task's end with the units done (`total` is taken to be the same).
    pub fn progress_finish(&self, task: &str, current: u64, error: Option<&str>) {
        self.progress(task, ProgressKind::FINISH, current, current, error)
    }
    /// Reports a task's end with both counts (e.g. a transfer that stopped early).
    pub fn progress_finish_of(&self, task: &str, current: u64, total: u64, error: Option<&str>) {
        self.progress(task, ProgressKind::FINISH, current, total, error)
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
            match guard("attributes", || Ok(P::attributes())) {
                Ok(schema) => d.extra.extend(schema.iter().map(AttrSpec::to_extra)),
                Err(e) => d
                    .extra
                    .push(KeyValue::new(DESCRIBE_ERROR, e.message.as_str())),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Conf {
        timeout: Option<u64>,
        #[serde(default)]
        proxy: Option<Proxy>,
    }
    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Proxy {
        url: String,
    }

    #[test]
    fn config_errors_name_the_key() {
        let e = parse_config::<Conf>("timeout = \"x\"\n").unwrap_err();
        assert_eq!(config_error_key(&e.message).unwrap().0, "timeout", "{e}");
        let e = parse_config::<Conf>("timeout = 1\n[proxy]\nurl = 5\n").unwrap_err();
        assert_eq!(config_error_key(&e.message).unwrap().0, "proxy.url", "{e}");
        let e = parse_config::<Conf>("[proxy]\n").unwrap_err();
        assert!(e.message.contains("url"), "{e}");
        let e = parse_config::<Conf>("bogus = 1\n").unwrap_err();
        assert_eq!(config_error_key(&e.message).unwrap().0, "bogus", "{e}");
        assert_eq!(e.code, ErrorCode::INVALID_CONFIG);
    }

    #[test]
    fn typed_attributes() {
        let r = Request::new("https://user:pw@h/f")
            .with_attr("http.perm", "0644")
            .with_attr("http.uid", "0x10")
            .with_attr("x.flag", "true")
            .with_attr("x.list", r#"["a"]"#)
            .with_attr("http.header.accept", "a");
        assert_eq!(r.attr_octal("http.perm").unwrap(), Some(0o644));
        assert_eq!(r.attr_u64("http.uid").unwrap(), Some(16));
        assert_eq!(r.attr_bool("x.flag").unwrap(), Some(true));
        assert_eq!(r.attr_list("x.list").unwrap(), Some(vec!["a".to_string()]));
        assert_eq!(r.attr_u64("missing").unwrap(), None);
        let e = r.attr_u64("x.flag").unwrap_err();
        assert_eq!(e.code, ErrorCode::INVALID_IDENTIFIER);
        assert!(
            e.message.starts_with("https://xxxxx@h/f: attribute x.flag"),
            "{e}"
        );
        assert!(!e.message.contains("pw"));
        r.deny_unknown("http.", &["http.perm", "http.uid", "http.header.*"])
            .unwrap();
        let e = r.deny_unknown("http.", &["http.perm"]).unwrap_err();
        assert!(
            e.message.contains("unknown attribute http.header.accept"),
            "{e}"
        );
    }
}
