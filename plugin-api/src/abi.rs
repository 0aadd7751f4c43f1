//! The ABI: the types and trait objects that cross between the host and a plugin.
//!
//! Plugin authors do not use this module directly: the SDK ([`crate::Source`],
//! [`crate::SourceInstance`], [`crate::export_plugin!`]) adapts plain Rust types to it.
//! The host uses it to call plugins. Only `abi_stable` types cross: no `std`
//! collections, no `Path`, nothing async.
//!
//! Evolution rules: the root module [`SourcePluginMod`] and the `#[sabi_trait]`
//! vtables are prefix types that may only grow at the end; the plain structs are
//! frozen and carry `extra` key/value bags for later additions.

#![allow(non_camel_case_types, non_local_definitions)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RBox, ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

use crate::error::PluginError;

/// A key/value pair of strings (attributes, metadata, options).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyValue {
    /// The key.
    pub key: RString,
    /// The value.
    pub value: RString,
}

impl KeyValue {
    /// A pair from anything string-like.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            key: RString::from(key.into()),
            value: RString::from(value.into()),
        }
    }
}

/// What a plugin says about itself before anything else runs.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginDescriptor {
    /// `io.kiln.source.v1.<name>`.
    pub id: RString,
    /// The plugin's own version.
    pub version: RString,
    /// The plugin-api version the plugin was built against.
    pub api_version: RString,
    /// The identifier schemes it serves (`git`, `http`, …).
    pub schemes: RVec<RString>,
    /// [`Capabilities`] bits.
    pub capabilities: u64,
    /// Whether the plugin was built with `panic = "unwind"` (its panics can be caught).
    pub panic_unwind: bool,
    /// How many calls the host may run in this plugin at once (0: the host's default).
    pub max_concurrency: u32,
    /// Room for later additions.
    pub extra: RVec<KeyValue>,
}

/// Capability bits of a plugin ([`PluginDescriptor::capabilities`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
pub struct Capabilities(pub u64);

impl Capabilities {
    /// The plugin talks to the network.
    pub const NETWORK: Self = Self(1);
    /// The plugin may read secrets.
    pub const SECRETS: Self = Self(1 << 1);
    /// The plugin reads local directories that the host maps by name.
    pub const LOCAL_DIRS: Self = Self(1 << 2);
    /// `cache_key` can answer more than one index (`done = false` at index 0).
    pub const MULTI_INDEX: Self = Self(1 << 3);
    /// The plugin stores blobs in the host's content store.
    pub const CONTENT_STORE: Self = Self(1 << 4);

    const NAMES: [(Capabilities, &'static str); 5] = [
        (Self::NETWORK, "network"),
        (Self::SECRETS, "secrets"),
        (Self::LOCAL_DIRS, "local-dirs"),
        (Self::MULTI_INDEX, "multi-index"),
        (Self::CONTENT_STORE, "content-store"),
    ];

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The names of the known bits that are set.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(c, _)| self.contains(*c))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::ops::BitOr for Capabilities {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// What `identifier` and `resolve` receive: the text of an identifier, cut by the host
/// at the first `://`, and the step's attributes and platform.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct IdentifierRequest {
    /// The scheme before `://`.
    pub scheme: RString,
    /// Everything after `://`.
    pub reference: RString,
    /// Attributes, sorted by key, each key at most once.
    pub attrs: RVec<KeyValue>,
    /// `os/arch[/variant]`, if the step set one.
    pub platform: ROption<RString>,
}

/// The answer of `cache_key`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct CacheKeyResult {
    /// The plugin's key string; the host hashes it (`buildkit.source.v0:` + key).
    pub key: RString,
    /// The immutable resolved version (commit, digest); the first one returned wins.
    pub pin: RString,
    /// `false`: a stronger key exists at `index + 1`.
    pub done: bool,
    /// Load hints that are not part of the key.
    pub opts: RVec<KeyValue>,
}

/// The answer of `snapshot`.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, Default)]
pub struct SnapshotResult {
    /// Metadata about the written tree (e.g. an image config), stored by the host.
    pub metadata: RVec<KeyValue>,
}

/// The severity of a log record, as in `tracing` (1 = error … 5 = trace).
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogLevel(pub u8);

impl LogLevel {
    /// `tracing::Level::ERROR`.
    pub const ERROR: Self = Self(1);
    /// `tracing::Level::WARN`.
    pub const WARN: Self = Self(2);
    /// `tracing::Level::INFO`.
    pub const INFO: Self = Self(3);
    /// `tracing::Level::DEBUG`.
    pub const DEBUG: Self = Self(4);
    /// `tracing::Level::TRACE`.
    pub const TRACE: Self = Self(5);
}

/// One log event of a plugin, forwarded to the host's subscriber.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct LogRecord {
    /// Severity.
    pub level: LogLevel,
    /// The plugin's module path (its `tracing` target).
    pub target: RString,
    /// The formatted message, with the event's fields as `key=value` after it.
    pub message: RString,
    /// Source file, if known.
    pub file: RString,
    /// Source line, 0 if unknown.
    pub line: u32,
}

/// What a progress event reports.
#[repr(transparent)]
#[derive(StableAbi, Copy, Clone, Debug, PartialEq, Eq)]
pub struct ProgressKind(pub u8);

impl ProgressKind {
    /// A task started.
    pub const START: Self = Self(1);
    /// A task moved on (`current` of `total`).
    pub const UPDATE: Self = Self(2);
    /// A task finished (with `error` if it failed).
    pub const FINISH: Self = Self(3);
}

/// A progress event of a plugin task (a download, a checkout).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct ProgressEvent {
    /// A name for the task, unique within the call (`"GET https://host/file"`).
    pub task: RString,
    /// Start, update or finish.
    pub kind: ProgressKind,
    /// Units done so far (bytes for transfers).
    pub current: u64,
    /// Units in all; 0 when unknown.
    pub total: u64,
    /// Set on a failed finish.
    pub error: ROption<RString>,
}

/// Services the host gives a plugin for the lifetime of a source (`new_source`).
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Whether a record at `level` for `target` would be shown (the host's filter).
    fn log_enabled(&self, level: LogLevel, target: RStr<'_>) -> bool;
    /// Emits a record through the host's `tracing` subscriber.
    fn log(&self, record: &LogRecord);
    /// A directory under the kiln root owned by this plugin for its own state
    /// (e.g. shared bare git repositories); created by the host.
    fn state_dir(&self) -> RString;
    /// The path of a committed blob with this digest (`sha256:<hex>`), if the store has it.
    /// The file is immutable: read it, never write it.
    fn blob_path(&self, digest: RStr<'_>) -> ROption<RString>;
    /// Opens (or re-opens, to resume) the ingest named `ingest_ref`: a temporary blob
    /// the host hashes while it is written and commits only when its digest is right.
    /// Only one writer holds a given ingest at a time; a second caller waits.
    #[sabi(last_prefix_field)]
    fn blob_writer(&self, ingest_ref: RStr<'_>) -> RResult<BlobWriterBox, PluginError>;
}

/// The owned form of [`HostServices`] that crosses the boundary.
pub type HostServicesBox = HostServices_TO<'static, RBox<()>>;

/// A blob being written into the host's content store.
///
/// Dropping the writer without `commit` keeps the bytes written so far (and the
/// validator), so that a later `blob_writer` with the same ingest ref can resume.
#[sabi_trait]
pub trait BlobWriter: Send {
    /// Bytes already present (from an earlier, interrupted ingest).
    fn offset(&self) -> u64;
    /// The validator saved with the partial data (e.g. an HTTP ETag), empty if none.
    fn validator(&self) -> RString;
    /// Saves a validator with the partial data.
    fn set_validator(&mut self, validator: RStr<'_>) -> RResult<(), PluginError>;
    /// Throws away the partial data and starts again at offset 0.
    fn reset(&mut self) -> RResult<(), PluginError>;
    /// Appends bytes; the host hashes them as they come.
    fn write(&mut self, data: RSlice<'_, u8>) -> RResult<(), PluginError>;
    /// Commits the blob. With `expected` (`sha256:<hex>`), a different digest is a
    /// checksum-mismatch error and nothing is stored. Returns the digest and the
    /// committed blob's path.
    fn commit(&mut self, expected: ROption<RStr<'_>>) -> RResult<BlobInfo, PluginError>;
    /// Removes the partial data.
    #[sabi(last_prefix_field)]
    fn discard(&mut self);
}

/// The owned form of [`BlobWriter`].
pub type BlobWriterBox = BlobWriter_TO<'static, RBox<()>>;

/// A committed blob.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct BlobInfo {
    /// `sha256:<hex>`.
    pub digest: RString,
    /// Where the immutable blob lives.
    pub path: RString,
    /// Its size in bytes.
    pub size: u64,
}

/// The job (build) a call belongs to: cancellation, progress, secrets, local directories.
#[sabi_trait]
pub trait JobContext: Send + Sync {
    /// An id unique to the build; resolution done under one id is reused by the same id.
    fn job_id(&self) -> RString;
    /// Whether the host asked to stop; plugins poll this at I/O boundaries.
    fn is_cancelled(&self) -> bool;
    /// The value of a secret given with `--secret`, if there is one by that name.
    fn secret(&self, name: RStr<'_>) -> ROption<RVec<u8>>;
    /// The directory mapped to a local name with `--local NAME=DIR`.
    fn local_dir(&self, name: RStr<'_>) -> ROption<RString>;
    /// Reports progress of a task.
    #[sabi(last_prefix_field)]
    fn progress(&self, event: &ProgressEvent);
}

/// The owned form of [`JobContext`], passed by reference into each call.
pub type JobContextBox = JobContext_TO<'static, RBox<()>>;

/// A source type (one per plugin): parses identifiers and resolves them to instances.
#[sabi_trait]
pub trait SourceAbi: Send + Sync {
    /// Parses and validates an identifier and its attributes; no I/O. Returns the
    /// canonical identifier (`scheme://…`).
    fn identifier(&self, request: &IdentifierRequest) -> RResult<RString, PluginError>;
    /// Builds the instance for one source step; no network work.
    #[sabi(last_prefix_field)]
    fn resolve(&self, request: &IdentifierRequest) -> RResult<SourceInstanceBox, PluginError>;
}

/// The owned form of [`SourceAbi`].
pub type SourceBox = SourceAbi_TO<'static, RBox<()>>;

/// One source step: its cache keys and its content.
#[sabi_trait]
pub trait SourceInstanceAbi: Send + Sync {
    /// The key and pin at `index` (BuildKit's multi-index protocol).
    fn cache_key(&self, index: u32, job: &JobContextBox) -> RResult<CacheKeyResult, PluginError>;
    /// Writes the content into `staging_dir`, an empty directory the host created on
    /// its own filesystem.
    #[sabi(last_prefix_field)]
    fn snapshot(
        &self,
        staging_dir: RStr<'_>,
        job: &JobContextBox,
    ) -> RResult<SnapshotResult, PluginError>;
}

/// The owned form of [`SourceInstanceAbi`].
pub type SourceInstanceBox = SourceInstanceAbi_TO<'static, RBox<()>>;

/// The root module every plugin exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = SourcePluginRef)))]
#[sabi(missing_field(panic))]
pub struct SourcePluginMod {
    /// Describes the plugin; cheap, no side effects.
    pub describe: extern "C" fn() -> PluginDescriptor,
    /// Creates the source from the plugin's `config` table (as TOML text) and the
    /// host's services.
    #[sabi(last_prefix_field)]
    pub new_source: extern "C" fn(
        config_toml: RStr<'_>,
        host: HostServicesBox,
    ) -> RResult<SourceBox, PluginError>,
}

impl RootModule for SourcePluginRef {
    declare_root_module_statics! {SourcePluginRef}
    const BASE_NAME: &'static str = "kiln_source";
    const NAME: &'static str = "kiln source plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The name of the plain symbol every kiln plugin exports beside abi_stable's header.
/// The host reads it right after loading the file and before calling into the plugin,
/// to refuse a file that is not a kiln plugin or was built for another plugin-api with
/// a short message.
pub const DECLARATION_SYMBOL: &str = "kiln_plugin_declaration";

/// The magic bytes at the start of [`PluginDeclaration`].
pub const DECLARATION_MAGIC: [u8; 16] = *b"kiln-source-plug";

/// The plain, C-layout static every kiln plugin exports as [`DECLARATION_SYMBOL`].
#[repr(C)]
#[derive(Copy, Clone)]
pub struct PluginDeclaration {
    /// [`DECLARATION_MAGIC`].
    pub magic: [u8; 16],
    /// The plugin-api version the plugin was built against, NUL-padded.
    pub api_version: [u8; 32],
}

impl PluginDeclaration {
    /// A declaration for `api_version` (at most 31 bytes).
    pub const fn new(api_version: &str) -> Self {
        let src = api_version.as_bytes();
        assert!(src.len() < 32, "api version too long");
        let mut api = [0u8; 32];
        let mut i = 0;
        while i < src.len() {
            api[i] = src[i];
            i += 1;
        }
        Self {
            magic: DECLARATION_MAGIC,
            api_version: api,
        }
    }

    /// The declared version as text (empty if not UTF-8).
    pub fn api_version(&self) -> &str {
        let end = self.api_version.iter().position(|&b| b == 0).unwrap_or(32);
        std::str::from_utf8(&self.api_version[..end]).unwrap_or("")
    }
}

/// Whether a plugin built against plugin-api `plugin` can be loaded by a host that
/// provides plugin-api `host`: same major version, and the plugin's minor version
/// not newer than the host's (it may call host services the host lacks otherwise).
pub fn api_compatible(host: &str, plugin: &str) -> bool {
    fn parse(v: &str) -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        Some((major, minor))
    }
    match (parse(host), parse(plugin)) {
        (Some((hm, hn)), Some((pm, pn))) => hm == pm && pn <= hn,
        _ => false,
    }
}
