//! The host's side of the plugin services: logging into the host's `tracing`
//! subscriber, the plugin's state directory, the content store, and the per-call job
//! context (secrets, local directories, cancellation, progress).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use abi_stable::sabi_trait::TD_Opaque;
use std::io::Write as _;

use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use kiln_plugin_api::abi::{
    BlobInfo, BlobWriter, BlobWriterBox, BlobWriter_TO, HostServices, HostServicesBox,
    HostServices_TO, JobContext, JobContextBox, JobContext_TO, LogLevel, LogRecord, ProgressEvent,
    ProgressKind,
};
use kiln_plugin_api::PluginError;

use crate::job::{Job, ProgressUpdate};
use crate::store::{Ingest, Store, StoreError};

/// What the host shares with every plugin: the root (the store is opened on first
/// use, so commands that need no store never create one) and the log level.
pub struct HostContext {
    root: PathBuf,
    max_level: AtomicU8,
    store: OnceLock<Result<Arc<Store>, String>>,
    /// State directories are handed out but not created (see [`HostContext::read_only`]).
    read_only: bool,
}

impl HostContext {
    /// A context for `root`, forwarding plugin records up to `max_level`
    /// (1 = error … 5 = trace).
    pub fn new(root: PathBuf, max_level: u8) -> Self {
        Self {
            root,
            max_level: AtomicU8::new(max_level),
            store: OnceLock::new(),
            read_only: false,
        }
    }

    /// For commands that only read: plugins' state directories are not created (the
    /// standard plugins create what they write into when they write).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// The kiln root.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The store under the root, opened (and created) on first use.
    pub fn store(&self) -> Result<Arc<Store>, String> {
        self.store
            .get_or_init(|| {
                Store::open(&self.root)
                    .map(Arc::new)
                    .map_err(|e| format!("cannot open the kiln root {}: {e}", self.root.display()))
            })
            .clone()
    }
}

/// The services object handed to plugin `id`.
pub fn services_for(host: &Arc<HostContext>, id: &str) -> HostServicesBox {
    HostServices_TO::from_value(
        Services {
            host: host.clone(),
            plugin_id: id.to_string(),
        },
        TD_Opaque,
    )
}

struct Services {
    host: Arc<HostContext>,
    plugin_id: String,
}

impl HostServices for Services {
    fn log_enabled(&self, level: LogLevel, _target: RStr<'_>) -> bool {
        level.0 <= self.host.max_level.load(Ordering::Relaxed)
    }

    fn log(&self, r: &LogRecord) {
        // A plugin's message echoes identifiers and server replies: shortened and
        // escaped before it reaches the terminal.
        let (plugin, target, msg) = (
            self.plugin_id.as_str(),
            r.target.as_str(),
            crate::text::one_line(r.message.as_str()),
        );
        match r.level {
            LogLevel::ERROR => tracing::error!(target: "kiln::plugin", plugin, target, "{msg}"),
            LogLevel::WARN => tracing::warn!(target: "kiln::plugin", plugin, target, "{msg}"),
            LogLevel::INFO => tracing::info!(target: "kiln::plugin", plugin, target, "{msg}"),
            LogLevel::DEBUG => tracing::debug!(target: "kiln::plugin", plugin, target, "{msg}"),
            _ => tracing::trace!(target: "kiln::plugin", plugin, target, "{msg}"),
        }
    }

    fn state_dir(&self) -> RString {
        if self.host.read_only {
            // The id is a plain name (checked when the configuration was read).
            let d = self.host.root.join("plugins").join(&self.plugin_id);
            return d.to_string_lossy().into_owned().into();
        }
        // Computed without opening the store: plugins ask for it at start-up.
        match Store::plugin_state_dir_in(&self.host.root, &self.plugin_id) {
            Ok(d) => d.to_string_lossy().into_owned().into(),
            Err(e) => {
                // The plugin's own I/O in this directory will fail and say so.
                tracing::warn!(plugin = %self.plugin_id, "no state directory: {e}");
                let d = self.host.root.join("plugins").join(&self.plugin_id);
                d.to_string_lossy().into_owned().into()
            }
        }
    }

    fn blob_path(&self, digest: RStr<'_>) -> ROption<RString> {
        let Ok(store) = self.host.store() else {
            return ROption::RNone;
        };
        // Lease first, so that a prune in another process cannot remove the blob
        // between this answer and the plugin reading it.
        match store.lease_blob(digest.as_str()) {
            Ok(true) => store
                .blob_path(digest.as_str())
                .map(|p| RString::from(p.to_string_lossy().into_owned()))
                .into(),
            _ => ROption::RNone,
        }
    }

    fn blob_writer(&self, ingest_ref: RStr<'_>) -> RResult<BlobWriterBox, PluginError> {
        let result = (|| {
            let store = self.host.store().map_err(PluginError::internal)?;
            // Ingest refs are scoped by plugin, so two plugins never share partial data.
            let scoped = format!("{}:{}", self.plugin_id, ingest_ref.as_str());
            let ingest = store.ingest(&scoped).map_err(store_err)?;
            Ok(BlobWriter_TO::from_value(
                Writer {
                    ingest: Some(ingest),
                },
                TD_Opaque,
            ))
        })();
        result.into()
    }
}

/// The plugin-facing writer over one of the store's ingests.
struct Writer {
    ingest: Option<Ingest>,
}

impl Writer {
    fn ingest(&mut self) -> Result<&mut Ingest, PluginError> {
        self.ingest.as_mut().ok_or_else(|| {
            PluginError::internal("the blob writer was already committed or discarded")
        })
    }
}

fn store_err(e: impl std::fmt::Display) -> PluginError {
    PluginError::internal(format!("content store: {e}"))
}

impl BlobWriter for Writer {
    fn offset(&self) -> u64 {
        self.ingest.as_ref().map_or(0, Ingest::offset)
    }

    fn validator(&self) -> RString {
        self.ingest
            .as_ref()
            .and_then(|i| i.validator().ok().flatten())
            .map(RString::from)
            .unwrap_or_default()
    }

    fn set_validator(&mut self, validator: RStr<'_>) -> RResult<(), PluginError> {
        (|| {
            self.ingest()?
                .set_validator(validator.as_str())
                .map_err(store_err)
        })()
        .into()
    }

    fn reset(&mut self) -> RResult<(), PluginError> {
        (|| self.ingest()?.reset().map_err(store_err))().into()
    }

    fn write(&mut self, data: RSlice<'_, u8>) -> RResult<(), PluginError> {
        (|| self.ingest()?.write_all(data.as_slice()).map_err(store_err))().into()
    }

    fn commit(&mut self, expected: ROption<RStr<'_>>) -> RResult<BlobInfo, PluginError> {
        (|| {
            let ingest = self
                .ingest
                .take()
                .ok_or_else(|| PluginError::internal("the blob writer was already committed"))?;
            let expected = expected.into_option().map(|s| s.as_str().to_string());
            match ingest.commit(expected.as_deref()) {
                Ok(info) => Ok(BlobInfo {
                    digest: info.digest.into(),
                    path: info.path.to_string_lossy().into_owned().into(),
                    size: info.size,
                }),
                Err(e @ StoreError::ChecksumMismatch { .. }) => {
                    Err(PluginError::checksum_mismatch(e.to_string()))
                }
                Err(e) => Err(store_err(e)),
            }
        })()
        .into()
    }

    fn discard(&mut self) {
        if let Some(i) = self.ingest.take() {
            i.abort();
        }
    }
}

/// The job context handed to one plugin call: the job plus the step it serves.
pub struct JobContextImpl {
    job: Arc<Job>,
    step: String,
}

impl JobContextImpl {
    /// The ABI object for a call made for `step` of `job`.
    pub fn boxed(job: Arc<Job>, step: String) -> JobContextBox {
        JobContext_TO::from_value(JobContextImpl { job, step }, TD_Opaque)
    }
}

impl JobContext for JobContextImpl {
    fn job_id(&self) -> RString {
        self.job.id.as_str().into()
    }

    fn is_cancelled(&self) -> bool {
        self.job.is_cancelled()
    }

    fn secret(&self, name: RStr<'_>) -> ROption<RVec<u8>> {
        self.job
            .secrets
            .get(name.as_str())
            .map(|v| RVec::from(v.clone()))
            .into()
    }

    fn local_dir(&self, name: RStr<'_>) -> ROption<RString> {
        self.job
            .locals
            .get(name.as_str())
            .map(|p| RString::from(p.to_string_lossy().into_owned()))
            .into()
    }

    fn progress(&self, e: &ProgressEvent) {
        let task = e.task.to_string();
        let update = match e.kind {
            ProgressKind::START => ProgressUpdate::TaskStart {
                task,
                total: e.total,
            },
            ProgressKind::FINISH => ProgressUpdate::TaskFinish {
                task,
                current: e.current,
                total: e.total,
                error: e.error.as_ref().map(|s| s.to_string()).into_option(),
            },
            _ => ProgressUpdate::TaskUpdate {
                task,
                current: e.current,
                total: e.total,
            },
        };
        self.job.progress.event(&self.step, update);
    }
}
