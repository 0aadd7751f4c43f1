//! Test doubles for plugin unit tests (feature `testing`): a [`FakeJob`] and a
//! [`FakeHost`] that stand in for the `kiln` host, so that `cache_key` and `snapshot`
//! run in plain `#[test]` functions.
//!
//! They go through the same ABI objects as the real host (the SDK's [`Job`] and
//! [`Host`] wrap them), so a plugin sees exactly what it would see inside `kiln`:
//!
//! ```
//! # #[cfg(feature = "testing")] {
//! use kiln_plugin_api::testing::{FakeHost, FakeJob};
//!
//! let host = FakeHost::new();
//! let job = FakeJob::new()
//!     .with_secret("token", b"s3cret")
//!     .with_local_dir("context", host.root());
//! assert_eq!(job.job().secret("token").as_deref(), Some(&b"s3cret"[..]));
//! let dest = host.staging_dir(); // an empty directory to snapshot into
//! assert!(std::fs::read_dir(&dest).unwrap().next().is_none());
//! # }
//! ```
//!
//! Add it to a plugin's dev-dependencies:
//! `kiln-plugin-api = { version = "1", features = ["testing"] }`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use sha2::{Digest, Sha256};

use crate::abi::{
    BlobInfo, BlobWriter, BlobWriter_TO, HostServices, HostServices_TO, JobContext, JobContextBox,
    JobContext_TO, LogLevel, LogRecord, ProgressEvent, ProgressKind,
};
use crate::{Host, Job, PluginError};

/// One progress event a plugin reported, as recorded by [`FakeJob`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedProgress {
    /// The task name.
    pub task: String,
    /// `"start"`, `"update"` or `"finish"`.
    pub kind: &'static str,
    /// Units done.
    pub current: u64,
    /// Units in all (0: unknown).
    pub total: u64,
    /// The error of a failed finish.
    pub error: Option<String>,
}

#[derive(Default)]
struct JobState {
    id: String,
    cancelled: Arc<AtomicBool>,
    secrets: HashMap<String, Vec<u8>>,
    dirs: HashMap<String, String>,
    progress: Mutex<Vec<RecordedProgress>>,
}

#[derive(Clone)]
struct JobShared(Arc<JobState>);

impl JobContext for JobShared {
    fn job_id(&self) -> RString {
        self.0.id.as_str().into()
    }
    fn is_cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }
    fn secret(&self, name: RStr<'_>) -> ROption<RVec<u8>> {
        self.0
            .secrets
            .get(name.as_str())
            .map(|v| RVec::from(v.clone()))
            .into()
    }
    fn local_dir(&self, name: RStr<'_>) -> ROption<RString> {
        self.0
            .dirs
            .get(name.as_str())
            .map(|d| RString::from(d.as_str()))
            .into()
    }
    fn progress(&self, e: &ProgressEvent) {
        let kind = match e.kind {
            ProgressKind::START => "start",
            ProgressKind::FINISH => "finish",
            _ => "update",
        };
        self.0
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RecordedProgress {
                task: e.task.to_string(),
                kind,
                current: e.current,
                total: e.total,
                error: e.error.as_ref().map(|s| s.to_string()).into_option(),
            });
    }
}

/// A fake build job: secrets and local directories you set, progress it records, and
/// a cancellation switch. Build it with the `with_*` methods, then hand
/// [`FakeJob::job`] to `cache_key` and `snapshot`.
pub struct FakeJob {
    state: Arc<JobState>,
    boxed: OnceLock<JobContextBox>,
}

impl Default for FakeJob {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeJob {
    /// A job with id `test-job`, no secrets, no local directories.
    pub fn new() -> Self {
        Self {
            state: Arc::new(JobState {
                id: "test-job".into(),
                ..JobState::default()
            }),
            boxed: OnceLock::new(),
        }
    }

    fn state_mut(&mut self) -> &mut JobState {
        Arc::get_mut(&mut self.state).expect("configure a FakeJob before its first job()")
    }

    /// Sets the job id.
    pub fn with_id(mut self, id: &str) -> Self {
        self.state_mut().id = id.to_string();
        self
    }

    /// Adds a secret, as `--secret id=NAME` would.
    pub fn with_secret(mut self, name: &str, value: &[u8]) -> Self {
        self.state_mut()
            .secrets
            .insert(name.to_string(), value.to_vec());
        self
    }

    /// Maps a local name to a directory, as `--local NAME=DIR` would.
    pub fn with_local_dir(mut self, name: &str, dir: impl AsRef<Path>) -> Self {
        self.state_mut().dirs.insert(
            name.to_string(),
            dir.as_ref().to_string_lossy().into_owned(),
        );
        self
    }

    /// Maps an OCI layout name, as `--oci-layout NAME=DIR` would.
    pub fn with_oci_layout(self, name: &str, dir: impl AsRef<Path>) -> Self {
        self.with_local_dir(&format!("{}{name}", crate::OCI_LAYOUT_PREFIX), dir)
    }

    /// Maps an ssh-agent socket, as `--ssh ID=SOCKET` would.
    pub fn with_ssh_socket(self, id: &str, socket: impl AsRef<Path>) -> Self {
        self.with_local_dir(&format!("{}{id}", crate::SSH_PREFIX), socket)
    }

    /// The SDK view of this job, for `cache_key` and `snapshot`.
    pub fn job(&self) -> Job<'_> {
        Job::from_abi(
            self.boxed.get_or_init(|| {
                JobContext_TO::from_value(JobShared(self.state.clone()), TD_Opaque)
            }),
        )
    }

    fn shared(&self) -> &JobState {
        &self.state
    }

    /// Asks the plugin to stop: [`Job::is_cancelled`] answers true from now on.
    pub fn cancel(&self) {
        self.shared().cancelled.store(true, Ordering::SeqCst);
    }

    /// A handle that cancels this job from another thread.
    pub fn canceller(&self) -> Arc<AtomicBool> {
        self.shared().cancelled.clone()
    }

    /// Every progress event reported so far, in order.
    pub fn progress(&self) -> Vec<RecordedProgress> {
        self.shared()
            .progress
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A fake host: a temporary directory with the plugin's state directory and a content
/// store that verifies digests like the real one. Dropping it removes everything.
pub struct FakeHost {
    dir: tempfile::TempDir,
    shared: Arc<HostShared>,
    staged: AtomicU64,
}

struct HostShared {
    root: PathBuf,
    logs: Mutex<Vec<(LogLevel, String)>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    /// A fresh host in a new temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("kiln-fake-host-")
            .tempdir()
            .expect("create a temporary directory for FakeHost");
        let root = dir.path().to_path_buf();
        for sub in ["state", "blobs/sha256", "ingest", "staging"] {
            fs::create_dir_all(root.join(sub)).expect("create FakeHost directories");
        }
        Self {
            shared: Arc::new(HostShared {
                root,
                logs: Mutex::new(Vec::new()),
            }),
            dir,
            staged: AtomicU64::new(0),
        }
    }

    /// The temporary directory everything lives in.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The SDK view of this host, for [`crate::Plugin::new`].
    pub fn host(&self) -> Host {
        Host::from_abi(HostServices_TO::from_value(
            HostRef(self.shared.clone()),
            TD_Opaque,
        ))
    }

    /// A new, empty directory to pass to `snapshot` (what the host's staging is).
    pub fn staging_dir(&self) -> PathBuf {
        let n = self.staged.fetch_add(1, Ordering::SeqCst);
        let p = self.dir.path().join("staging").join(n.to_string());
        fs::create_dir_all(&p).expect("create a staging directory");
        p
    }

    /// The path of the committed blob `sha256:<hex>`, if the store has it.
    pub fn blob(&self, digest: &str) -> Option<PathBuf> {
        blob_path(&self.shared.root, digest)
    }

    /// Log records sent through the host's log service, as `(level, message)`.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.shared
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn blob_path(root: &Path, digest: &str) -> Option<PathBuf> {
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let p = root.join("blobs/sha256").join(hex);
    p.is_file().then_some(p)
}

#[derive(Clone)]
struct HostRef(Arc<HostShared>);

impl HostServices for HostRef {
    fn log_enabled(&self, _level: LogLevel, _target: RStr<'_>) -> bool {
        true
    }
    fn log(&self, record: &LogRecord) {
        self.0
            .logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((record.level, record.message.to_string()));
    }
    fn state_dir(&self) -> RString {
        self.0.root.join("state").to_string_lossy().as_ref().into()
    }
    fn blob_path(&self, digest: RStr<'_>) -> ROption<RString> {
        blob_path(&self.0.root, digest.as_str())
            .map(|p| RString::from(p.to_string_lossy().as_ref()))
            .into()
    }
    fn blob_writer(&self, ingest_ref: RStr<'_>) -> RResult<crate::abi::BlobWriterBox, PluginError> {
        let name: String = ingest_ref
            .as_str()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let data = self.0.root.join("ingest").join(format!("{name}.data"));
        let result = (|| -> std::io::Result<FakeBlobWriter> {
            let file = OpenOptions::new().create(true).append(true).open(&data)?;
            let offset = file.metadata()?.len();
            Ok(FakeBlobWriter {
                root: self.0.root.clone(),
                validator_path: data.with_extension("validator"),
                data,
                file: Some(file),
                offset,
            })
        })();
        match result {
            Ok(w) => RResult::ROk(BlobWriter_TO::from_value(w, TD_Opaque)),
            Err(e) => RResult::RErr(PluginError::internal(format!(
                "fake content store: ingest {}: {e}",
                ingest_ref.as_str()
            ))),
        }
    }
}

struct FakeBlobWriter {
    root: PathBuf,
    data: PathBuf,
    validator_path: PathBuf,
    file: Option<File>,
    offset: u64,
}

fn io_err(e: std::io::Error) -> PluginError {
    PluginError::internal(format!("fake content store: {e}"))
}

impl BlobWriter for FakeBlobWriter {
    fn offset(&self) -> u64 {
        self.offset
    }
    fn validator(&self) -> RString {
        fs::read_to_string(&self.validator_path)
            .unwrap_or_default()
            .into()
    }
    fn set_validator(&mut self, validator: RStr<'_>) -> RResult<(), PluginError> {
        fs::write(&self.validator_path, validator.as_str())
            .map_err(io_err)
            .into()
    }
    fn reset(&mut self) -> RResult<(), PluginError> {
        let r = (|| {
            self.file = Some(File::create(&self.data)?);
            let _ = fs::remove_file(&self.validator_path);
            self.offset = 0;
            Ok(())
        })();
        r.map_err(io_err).into()
    }
    fn write(&mut self, data: RSlice<'_, u8>) -> RResult<(), PluginError> {
        let Some(f) = self.file.as_mut() else {
            return RResult::RErr(PluginError::internal("fake content store: writer closed"));
        };
        let r = f.write_all(data.as_slice());
        self.offset += data.len() as u64;
        r.map_err(io_err).into()
    }
    fn commit(&mut self, expected: ROption<RStr<'_>>) -> RResult<BlobInfo, PluginError> {
        let r = (|| -> Result<BlobInfo, PluginError> {
            if let Some(mut f) = self.file.take() {
                f.flush().map_err(io_err)?;
            }
            let mut hasher = Sha256::new();
            let mut f = File::open(&self.data).map_err(io_err)?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut size = 0u64;
            loop {
                let n = f.read(&mut buf).map_err(io_err)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                size += n as u64;
            }
            let digest = format!("sha256:{:x}", hasher.finalize());
            if let ROption::RSome(want) = expected {
                if want.as_str() != digest {
                    let _ = fs::remove_file(&self.data);
                    let _ = fs::remove_file(&self.validator_path);
                    return Err(PluginError::checksum_mismatch(format!(
                        "expected {}, got {digest}",
                        want.as_str()
                    )));
                }
            }
            let dest = self
                .root
                .join("blobs/sha256")
                .join(&digest["sha256:".len()..]);
            fs::rename(&self.data, &dest).map_err(io_err)?;
            let _ = fs::remove_file(&self.validator_path);
            Ok(BlobInfo {
                digest: digest.into(),
                path: dest.to_string_lossy().as_ref().into(),
                size,
            })
        })();
        r.into()
    }
    fn discard(&mut self) {
        self.file = None;
        let _ = fs::remove_file(&self.data);
        let _ = fs::remove_file(&self.validator_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_answers_and_records() {
        let fake = FakeJob::new()
            .with_secret("s", b"v")
            .with_local_dir("ctx", "/tmp/x")
            .with_oci_layout("img", "/tmp/l");
        {
            let job = fake.job();
            assert_eq!(job.secret("s"), Some(b"v".to_vec()));
            assert_eq!(job.secret("t"), None);
            assert_eq!(job.local_dir("ctx"), Some(PathBuf::from("/tmp/x")));
            assert_eq!(job.oci_layout_dir("img"), Some(PathBuf::from("/tmp/l")));
            assert!(job.check_cancelled().is_ok());
            job.progress_start("dl", 10);
            job.progress_update("dl", 4, 10);
            job.progress_finish_of("dl", 7, 10, Some("boom"));
        }
        fake.cancel();
        assert!(fake.job().check_cancelled().is_err());
        let p = fake.progress();
        let kinds: Vec<_> = p.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["start", "update", "finish"]);
        assert_eq!((p[2].current, p[2].total), (7, 10));
        assert_eq!(p[2].error.as_deref(), Some("boom"));
    }

    #[test]
    fn content_store_verifies_and_resumes() {
        let fake = FakeHost::new();
        let host = fake.host();
        assert!(host.state_dir().is_dir());
        let mut w = host.blob_writer("r1").unwrap();
        w.write(b"hello ").unwrap();
        w.set_validator("etag-1").unwrap();
        drop(w);
        let mut w = host.blob_writer("r1").unwrap();
        assert_eq!((w.offset(), w.validator().as_str()), (6, "etag-1"));
        w.write(b"world").unwrap();
        let want = format!("sha256:{:x}", Sha256::digest(b"hello world"));
        let info = w.commit(Some(&want)).unwrap();
        assert_eq!(info.size, 11);
        assert_eq!(host.blob_path(&want), fake.blob(&want));
        assert!(fake.blob(&want).is_some());

        let mut w = host.blob_writer("r2").unwrap();
        w.write(b"other").unwrap();
        let e = w.commit(Some(&want)).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::CHECKSUM_MISMATCH);
        assert_eq!(host.blob_writer("r2").unwrap().offset(), 0);
        let d = fake.staging_dir();
        assert!(d.is_dir() && d != fake.staging_dir());
    }
}
