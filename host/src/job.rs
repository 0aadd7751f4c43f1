//! A job: one build (or one `kiln source` command) and what its calls share —
//! its id, secrets, local directories, cancellation and progress sink.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What a progress event reports about a step or a task inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProgressUpdate {
    /// A task (a download, a checkout) started.
    TaskStart {
        /// The task's name, e.g. `GET https://host/file`.
        task: String,
        /// Units in all; 0 when unknown.
        total: u64,
    },
    /// A task moved on.
    TaskUpdate {
        /// The task's name.
        task: String,
        /// Units done.
        current: u64,
        /// Units in all; 0 when unknown.
        total: u64,
    },
    /// A task finished.
    TaskFinish {
        /// The task's name.
        task: String,
        /// Units done, as the plugin reported them.
        current: u64,
        /// Units in all, as the plugin reported them (0: unknown).
        total: u64,
        /// Set when the task failed.
        error: Option<String>,
    },
}

/// Where progress of plugin tasks goes (the solver's progress display, or nowhere).
pub trait ProgressSink: Send + Sync {
    /// Receives one event for `step` (a step name, or a source identifier).
    fn event(&self, step: &str, event: ProgressUpdate);
}

/// A sink that drops everything.
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn event(&self, _step: &str, _event: ProgressUpdate) {}
}

/// One build's shared context.
pub struct Job {
    /// Unique per job; plugins memoise per-build resolution under it.
    pub id: String,
    /// Secrets by id (`--secret id=ID,…`). Never logged.
    pub secrets: HashMap<String, Vec<u8>>,
    /// Directories and sockets plugins look up by name: `--local NAME=DIR` under NAME,
    /// `--oci-layout NAME=DIR` under `oci-layout:NAME` and `--ssh ID=SOCKET` under
    /// `ssh:ID` (see [`Job::with_oci_layouts`], [`Job::with_ssh`]).
    pub locals: HashMap<String, PathBuf>,
    /// Set to ask running calls to stop.
    pub cancel: Arc<AtomicBool>,
    /// Where task progress goes.
    pub progress: Arc<dyn ProgressSink>,
}

impl Job {
    /// A job with a fresh random id and no progress display.
    pub fn new(secrets: HashMap<String, Vec<u8>>, locals: HashMap<String, PathBuf>) -> Self {
        let cancel = Arc::new(AtomicBool::new(false));
        // SIGINT/SIGTERM cancel every job (crate::signals).
        crate::signals::watch(&cancel);
        Self {
            id: new_job_id(),
            secrets,
            locals,
            cancel,
            progress: Arc::new(NoProgress),
        }
    }

    /// Replaces the progress sink.
    pub fn with_progress(mut self, progress: Arc<dyn ProgressSink>) -> Self {
        self.progress = progress;
        self
    }

    /// Adds `--oci-layout NAME=DIR` mappings, answered to plugins as the named
    /// directory `oci-layout:NAME` (the SDK's `Job::oci_layout_dir`).
    pub fn with_oci_layouts(mut self, layouts: HashMap<String, PathBuf>) -> Self {
        for (name, dir) in layouts {
            self.locals
                .insert(format!("{}{name}", kiln_plugin_api::OCI_LAYOUT_PREFIX), dir);
        }
        self
    }

    /// Adds `--ssh ID=SOCKET` mappings, answered to plugins as the named directory
    /// `ssh:ID` (the SDK's `Job::ssh_socket`).
    pub fn with_ssh(mut self, sockets: HashMap<String, PathBuf>) -> Self {
        for (id, socket) in sockets {
            self.locals
                .insert(format!("{}{id}", kiln_plugin_api::SSH_PREFIX), socket);
        }
        self
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("locals", &self.locals)
            .finish_non_exhaustive()
    }
}

/// A random 128-bit id as hex, from the kernel's random source.
pub fn new_job_id() -> String {
    let mut bytes = [0u8; 16];
    // getrandom(2) never fails for 16 bytes once the pool is initialised; fall back to
    // time and pid if it does, since uniqueness here is a convenience, not security.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&(t ^ (std::process::id() as u128) << 64).to_le_bytes());
    }
    hex::encode(bytes)
}
