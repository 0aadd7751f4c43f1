//! The exec op's runtime: runs one command in a step's filesystem through an OCI
//! runtime (runc or crun), isolated in its own namespaces.
//!
//! A run works in a *bundle* directory under `<root>/exec/`:
//!
//! - `rootfs/` is an overlay mount: the base snapshot is the read-only lower layer and
//!   `upper/` collects every change the command makes, so the snapshot is never
//!   modified and the step's changes are exactly `upper/` ([`overlay`]). Where overlay
//!   cannot be mounted, the base is copied into `rootfs/` instead (logged once).
//! - `config.json` is the OCI runtime spec ([`spec`]): fresh mount, PID, IPC and UTS
//!   namespaces (and a network namespace for `network = "none"`), Docker's default
//!   capabilities, `no_new_privs`, Docker's masked and read-only paths, `/proc`, a
//!   small `/dev`, and read-only `/etc/hosts` and `/etc/resolv.conf`.
//! - `secrets/` is a private tmpfs holding secret files (mode 0400, owned by the run's
//!   user), bind-mounted read-only into the container: secrets never touch the disk.
//!
//! When `kiln` is not root the run is rootless ([`rootless`]): a user namespace maps
//! container 0:0 to the caller, the base is copied (no mount is allowed), the spec has
//! no cgroup section and binds the host's `/sys`, and secrets are 0400 files in the
//! private bundle directory.
//!
//! Each bundle is held under an exclusive lock for as long as its run lasts, so a
//! later `kiln` can tell a bundle left by a killed process from one in use, and
//! [`reap_stale`] deletes the former's container, mounts and files.
//!
//! Everything here blocks; callers use a blocking thread.

mod cache_mount;
mod overlay;
mod rootless;
mod runtime;
mod spec;
mod stubs;
mod upper;
mod user;

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

pub use cache_mount::{CacheMount, Sharing};
pub use runtime::{reap_stale, Runtime};
pub use upper::apply_upper;
pub use user::{resolve_user, User};

/// How many lines of output an error quotes.
pub const TAIL_LINES: usize = 20;

/// The network a run sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// The host's network namespace (buildkitd's host mode).
    Host,
    /// A namespace with only loopback.
    None,
}

/// One mount of a run, with host-side sources already resolved. Its `Debug` form
/// never shows a secret's value.
#[derive(Clone)]
pub enum Mount {
    /// A host directory or file (another step's tree) at `target`.
    Bind {
        /// The host path.
        source: PathBuf,
        /// Where it appears inside.
        target: String,
        /// Mounted read-only.
        readonly: bool,
    },
    /// A persistent cache directory (see [`CacheMount`]), read-write.
    Cache {
        /// The locked cache directory.
        dir: PathBuf,
        /// Where it appears inside.
        target: String,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Where it appears inside.
        target: String,
    },
    /// A secret's bytes as a read-only file, mode 0400, owned by the run's user.
    Secret {
        /// The secret's value (never logged).
        data: Vec<u8>,
        /// Where the file appears inside.
        target: String,
    },
    /// An ssh-agent socket.
    Ssh {
        /// The host socket.
        socket: PathBuf,
        /// Where it appears inside.
        target: String,
    },
}

impl std::fmt::Debug for Mount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mount::Secret { data, target } => f
                .debug_struct("Secret")
                .field("data", &format_args!("<{} bytes>", data.len()))
                .field("target", target)
                .finish(),
            Mount::Bind {
                source,
                target,
                readonly,
            } => f
                .debug_struct("Bind")
                .field("source", source)
                .field("target", target)
                .field("readonly", readonly)
                .finish(),
            Mount::Cache { dir, target } => f
                .debug_struct("Cache")
                .field("dir", dir)
                .field("target", target)
                .finish(),
            Mount::Tmpfs { target } => f.debug_struct("Tmpfs").field("target", target).finish(),
            Mount::Ssh { socket, target } => f
                .debug_struct("Ssh")
                .field("socket", socket)
                .field("target", target)
                .finish(),
        }
    }
}

impl Mount {
    /// The path inside the container.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. }
            | Mount::Cache { target, .. }
            | Mount::Tmpfs { target }
            | Mount::Secret { target, .. }
            | Mount::Ssh { target, .. } => target,
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct ExecSpec {
    /// argv; `args[0]` is looked up in the container's `PATH` by the runtime.
    pub args: Vec<String>,
    /// The environment, `KEY=VALUE`.
    pub env: Vec<String>,
    /// The working directory (absolute; created if missing).
    pub cwd: String,
    /// The user the command runs as.
    pub user: User,
    /// Host or no network.
    pub network: Network,
    /// Extra mounts, applied in order.
    pub mounts: Vec<Mount>,
}

/// Where a run keeps its files and which runtime runs it.
#[derive(Clone, Debug)]
pub struct ExecContext {
    /// The runtime binary.
    pub runtime: Runtime,
    /// `<root>/exec`: bundles and the runtime's state live here.
    pub dir: PathBuf,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The command ran and exited non-zero (or was killed by a signal).
    #[error("{what} exited with code {code}{}", tail_text(.tail))]
    Failed {
        /// The command, shortened.
        what: String,
        /// Its exit code (128 + signal when killed).
        code: i32,
        /// The last lines of its output.
        tail: Vec<String>,
    },
    /// The run was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// Setting up or tearing down the container failed.
    #[error("{0}")]
    Setup(String),
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last lines of output:\n  {}", tail.join("\n  "))
    }
}

impl ExecError {
    pub(crate) fn setup(what: impl std::fmt::Display, err: impl std::fmt::Display) -> Self {
        ExecError::Setup(format!("{what}: {err}"))
    }
}

/// The outcome of a successful run: the directory holding the command's changes
/// (an overlay upper directory, with overlay whiteouts) or, when overlay was not
/// available, the whole new tree.
#[derive(Debug)]
pub enum Changes {
    /// The overlay upper directory: apply it to a copy of the base with
    /// [`apply_upper`].
    Upper(PathBuf),
    /// The full result tree (the base was copied and changed in place).
    Full(PathBuf),
}

/// Receives the command's output, line by line (stdout and stderr interleaved).
pub trait OutputSink: Send + Sync {
    /// One line, without its newline.
    fn line(&self, line: &str);
}

/// Runs `spec` on top of `base` (`None`: an empty root) and returns the changes,
/// which live in `bundle` until it is dropped.
pub fn run(
    ctx: &ExecContext,
    base: Option<&Path>,
    spec: &ExecSpec,
    cancel: &AtomicBool,
    out: &dyn OutputSink,
) -> Result<(Bundle, Changes), ExecError> {
    let bundle = Bundle::create(&ctx.dir)?;
    let changes = run_in(&bundle, ctx, base, spec, cancel, out)?;
    Ok((bundle, changes))
}

/// [`run`] in a bundle the caller created first ([`Bundle::create`]), e.g. to keep
/// private copies for read-write bind mounts inside it (under [`Bundle::scratch`]).
pub fn run_in(
    bundle: &Bundle,
    ctx: &ExecContext,
    base: Option<&Path>,
    spec: &ExecSpec,
    cancel: &AtomicBool,
    out: &dyn OutputSink,
) -> Result<Changes, ExecError> {
    bundle.run(ctx, base, spec, cancel, out)
}

pub use runtime::Bundle;

/// Keeps the last [`TAIL_LINES`] lines.
#[derive(Default)]
pub(crate) struct Tail(VecDeque<String>);

impl Tail {
    pub(crate) fn push(&mut self, line: &str) {
        if self.0.len() == TAIL_LINES {
            self.0.pop_front();
        }
        self.0.push_back(line.to_string());
    }
    pub(crate) fn lines(&self) -> Vec<String> {
        self.0.iter().cloned().collect()
    }
}

/// Creates `path` and its parents with mode 0700.
pub(crate) fn mkdir_private(path: &Path) -> Result<(), ExecError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(|e| ExecError::setup(format!("create {}", path.display()), e))
}

#[cfg(test)]
mod tests;

/// The command as shown in messages: its words joined, shortened past 200 characters.
pub fn describe_args(args: &[String]) -> String {
    let s = args.join(" ");
    if s.chars().count() <= 200 {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(120).collect();
    let tail: String = s
        .chars()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("\"{head} … {tail}\"")
}
