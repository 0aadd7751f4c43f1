//! The OCI runtime (runc or crun), one bundle per run, and the reaping of bundles
//! that a killed `kiln` left behind.

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::overlay::{mount_overlay, mount_tmpfs, mounts_under, unmount};
use super::rootless::Rootless;
use super::spec::{self, SpecMount};
use super::stubs::Stubs;
use super::{mkdir_private, Changes, ExecContext, ExecError, ExecSpec, Mount, OutputSink, Tail};
use crate::store::FileLock;
use crate::worker::Root;

/// The runtimes kiln knows, in the order it looks for them.
pub const KNOWN: &[&str] = &["runc", "crun"];

/// An OCI runtime binary.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// Its path.
    pub path: PathBuf,
}

impl Runtime {
    /// `configured` (a name on PATH or a path), else the first of [`KNOWN`] on PATH.
    pub fn find(configured: Option<&str>) -> Result<Runtime, ExecError> {
        let names: Vec<&str> = match configured {
            Some(c) => vec![c],
            None => KNOWN.to_vec(),
        };
        for name in &names {
            if name.contains('/') {
                if Path::new(name).is_file() {
                    return Ok(Runtime { path: name.into() });
                }
                continue;
            }
            if let Some(p) = on_path(name) {
                return Ok(Runtime { path: p });
            }
        }
        Err(ExecError::Setup(format!(
            "no OCI runtime found (looked for {}); install runc or crun (Debian packages \
             `runc`, `crun`), or set [worker] runtime in kiln.toml",
            names.join(", ")
        )))
    }

    fn cmd(&self, state: &Path) -> Command {
        let mut c = Command::new(&self.path);
        c.arg("--root").arg(state);
        c.stdin(Stdio::null());
        c
    }

    /// Whether this is runc (whose `--rootless` flag crun does not share).
    fn is_runc(&self) -> bool {
        self.path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("runc"))
    }

    /// Force-deletes container `id` (kills it first); errors are ignored: it may not exist.
    fn delete(&self, state: &Path, id: &str) {
        let _ = self
            .cmd(state)
            .args(["delete", "--force", "--", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path =
        std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/sbin:/usr/bin:/sbin:/bin"));
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The kiln root that `<root>/exec` is in (lock files are opened beneath it).
fn kiln_root(exec_dir: &Path) -> &Path {
    exec_dir.parent().unwrap_or(exec_dir)
}

fn state_dir(exec_dir: &Path) -> PathBuf {
    exec_dir.join("state")
}

fn bundles_dir(exec_dir: &Path) -> PathBuf {
    exec_dir.join("bundles")
}

/// One run's directory, locked while it exists. Dropping it unmounts and removes
/// everything in it.
#[derive(Debug)]
pub struct Bundle {
    id: String,
    dir: PathBuf,
    lock: Option<FileLock>,
}

impl Bundle {
    /// Creates a new, locked bundle directory under `exec_dir`.
    pub fn create(exec_dir: &Path) -> Result<Bundle, ExecError> {
        let bundles = bundles_dir(exec_dir);
        mkdir_private(&bundles)?;
        mkdir_private(&state_dir(exec_dir))?;
        let id = format!("kiln-{}", crate::job::new_job_id());
        let dir = bundles.join(&id);
        let lock = FileLock::acquire(kiln_root(exec_dir), &bundles.join(format!("{id}.lock")))
            .map_err(|e| ExecError::setup("lock the run's bundle", e))?;
        mkdir_private(&dir)?;
        Ok(Bundle {
            id,
            dir,
            lock: Some(lock),
        })
    }

    /// The bundle directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// A private folder `name` inside the bundle for the caller's own files (removed
    /// with the bundle, and reaped with it after a `kill -9`).
    pub fn scratch(&self, name: &str) -> Result<PathBuf, ExecError> {
        let d = self.dir.join("scratch").join(name);
        mkdir_private(&d)?;
        Ok(d)
    }

    /// Runs `spec` over `base` in this bundle.
    pub(super) fn run(
        &self,
        ctx: &ExecContext,
        base: Option<&Path>,
        spec: &ExecSpec,
        cancel: &AtomicBool,
        out: &dyn OutputSink,
    ) -> Result<Changes, ExecError> {
        let rootless = Rootless::detect()?;
        if let Some(r) = &rootless {
            r.check_user(&spec.user)?;
        }
        let rootfs = self.dir.join("rootfs");
        let upper = self.dir.join("upper");
        let work = self.dir.join("work");
        for d in [&rootfs, &upper, &work] {
            mkdir_private(d)?;
        }
        let empty = self.dir.join("empty");
        let lower = match base {
            Some(b) => b.to_path_buf(),
            None => {
                mkdir_private(&empty)?;
                empty.clone()
            }
        };
        let overlay = if rootless.is_some() {
            // An unprivileged process cannot mount here, so the base is copied.
            tracing::info!("rootless run: copying the base tree (no overlay mount)");
            Err(None)
        } else {
            mount_overlay(&lower, &upper, &work, &rootfs).map_err(Some)
        };
        let changes = match overlay {
            Ok(()) => Changes::Upper(upper.clone()),
            Err(e) => {
                if let Some(e) = e {
                    tracing::warn!(
                        "overlay mount failed ({e}); copying the base tree for this run instead"
                    );
                }
                if let Some(b) = base {
                    crate::worker::copy_tree(b, &rootfs, Some(cancel))
                        .map_err(|e| ExecError::setup("copy the base tree", e))?;
                }
                Changes::Full(rootfs.clone())
            }
        };
        // The root directory of a run is world-readable like any image's.
        set_mode(&rootfs, 0o755)?;

        // Mount points the run creates but the base did not have are removed again.
        let mut targets: Vec<&str> = spec::SYSTEM_TARGETS.to_vec();
        targets.extend(spec.mounts.iter().map(Mount::target));
        let stubs = Stubs::record(&rootfs, &targets);

        let mut spec_mounts = Vec::new();
        self.write_etc_files(&mut spec_mounts)?;
        // Secret files first (on their tmpfs), then every mount in the declared order,
        // so a secret under another mount's target is mounted after it, not hidden.
        let mut secret_files = self.write_secrets(spec, rootless.is_some())?.into_iter();
        for m in &spec.mounts {
            match m {
                Mount::Bind {
                    source,
                    target,
                    readonly,
                } => spec_mounts.push(SpecMount::bind(source, target, *readonly)),
                Mount::Cache { dir, target } => {
                    spec_mounts.push(SpecMount::bind(dir, target, false))
                }
                Mount::Tmpfs { target } => spec_mounts.push(SpecMount::tmpfs(target)),
                Mount::Ssh { socket, target } => {
                    spec_mounts.push(SpecMount::bind(socket, target, true))
                }
                Mount::Secret { target, .. } => {
                    let file = secret_files.next().expect("one file per secret mount");
                    spec_mounts.push(SpecMount::bind(&file, target, true))
                }
            }
        }
        make_workdir(&rootfs, &spec.cwd)?;
        let config = spec::config(spec, "kiln", &spec_mounts, rootless);
        let bytes = serde_json::to_vec_pretty(&config).expect("JSON encodes");
        fs::write(self.dir.join("config.json"), bytes)
            .map_err(|e| ExecError::setup("write config.json", e))?;

        let result = self.start_and_wait(ctx, spec, rootless.is_some(), cancel, out);
        // Tear down in every case; then remove what only the mounts needed.
        if rootless.is_none() {
            unmount(&self.dir.join("secrets"))?;
            unmount(&rootfs)?;
        }
        result?;
        if let Changes::Upper(u) = &changes {
            stubs.remove_from(u);
        } else {
            stubs.remove_from(&rootfs);
        }
        Ok(changes)
    }

    fn write_etc_files(&self, mounts: &mut Vec<SpecMount>) -> Result<(), ExecError> {
        let hosts = self.dir.join("hosts");
        fs::write(
            &hosts,
            "127.0.0.1\tlocalhost kiln\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        )
        .map_err(|e| ExecError::setup("write /etc/hosts", e))?;
        let resolv = self.dir.join("resolv.conf");
        let host_resolv = fs::read("/etc/resolv.conf").unwrap_or_default();
        fs::write(&resolv, host_resolv).map_err(|e| ExecError::setup("write resolv.conf", e))?;
        for p in [&hosts, &resolv] {
            set_mode(p, 0o644)?;
        }
        mounts.push(SpecMount::bind(&hosts, "/etc/hosts", true));
        mounts.push(SpecMount::bind(&resolv, "/etc/resolv.conf", true));
        Ok(())
    }

    /// Writes each secret mount's value into a file, in the order of the mounts, and
    /// returns the files (bound read-only into the container). As root they live on a
    /// private tmpfs, owned by the run's user; rootless (no mount allowed) they are
    /// written into the private bundle directory and removed with it, owned by the
    /// caller, who is root inside.
    fn write_secrets(&self, spec: &ExecSpec, rootless: bool) -> Result<Vec<PathBuf>, ExecError> {
        let secrets: Vec<&Vec<u8>> = spec
            .mounts
            .iter()
            .filter_map(|m| match m {
                Mount::Secret { data, .. } => Some(data),
                _ => None,
            })
            .collect();
        if secrets.is_empty() {
            return Ok(Vec::new());
        }
        let dir = self.dir.join("secrets");
        mkdir_private(&dir)?;
        if !rootless {
            mount_tmpfs(&dir).map_err(|e| ExecError::setup("mount the secrets tmpfs", e))?;
        }
        let mut files = Vec::with_capacity(secrets.len());
        for (i, data) in secrets.into_iter().enumerate() {
            let file = dir.join(i.to_string());
            write_private(&file, data).map_err(|e| ExecError::setup("write a secret", e))?;
            if !rootless {
                std::os::unix::fs::chown(&file, Some(spec.user.uid), Some(spec.user.gid))
                    .map_err(|e| ExecError::setup("chown a secret", e))?;
            }
            set_mode(&file, 0o400)?;
            files.push(file);
        }
        // The container's user must reach the files through the tmpfs root.
        set_mode(&dir, 0o711)?;
        Ok(files)
    }

    fn start_and_wait(
        &self,
        ctx: &ExecContext,
        spec: &ExecSpec,
        rootless: bool,
        cancel: &AtomicBool,
        out: &dyn OutputSink,
    ) -> Result<(), ExecError> {
        let state = state_dir(&ctx.dir);
        let (reader, writer) = pipe().map_err(|e| ExecError::setup("create an output pipe", e))?;
        let writer2 = writer
            .try_clone()
            .map_err(|e| ExecError::setup("create an output pipe", e))?;
        let mut cmd = ctx.runtime.cmd(&state);
        if rootless && ctx.runtime.is_runc() {
            // Ignore cgroup permission errors: the spec has no resources to set.
            cmd.args(["--rootless", "true"]);
        }
        cmd.arg("run")
            .arg("--bundle")
            .arg(&self.dir)
            .arg("--")
            .arg(&self.id)
            .stdout(writer)
            .stderr(writer2)
            // Its own process group: a terminal's Ctrl-C reaches kiln, which cancels.
            .process_group(0);
        // The runtime makes mount points and the command inherits its umask: 022, as
        // Docker has it, whatever kiln's own is, so results do not depend on it.
        // SAFETY: umask is async-signal-safe and touches no memory.
        unsafe {
            cmd.pre_exec(|| {
                libc::umask(0o022);
                Ok(())
            })
        };
        let mut child = cmd
            .spawn()
            .map_err(|e| ExecError::setup(format!("start {}", ctx.runtime.path.display()), e))?;
        drop(cmd);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let lines = std::thread::scope(|scope| {
            let tail2 = tail.clone();
            let reading = scope.spawn(move || {
                let mut r = BufReader::new(reader);
                let mut buf = Vec::new();
                while read_line_bounded(&mut r, &mut buf) {
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    out.line(line);
                    tail2.lock().expect("tail lock").push(line);
                }
            });
            let status = loop {
                if cancel.load(Ordering::Relaxed) {
                    ctx.runtime.delete(&state, &self.id);
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                match child.try_wait() {
                    Ok(Some(s)) => break Some(s),
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                    Err(_) => {
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                }
            };
            // The runtime exited; nothing else holds the pipe's write end, unless the
            // container left a process behind — deleting it closes that too.
            ctx.runtime.delete(&state, &self.id);
            let _ = reading.join();
            status
        });
        let Some(status) = lines else {
            return Err(ExecError::Cancelled);
        };
        if status.success() {
            return Ok(());
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        let tail = tail.lock().expect("tail lock").lines();
        Err(ExecError::Failed {
            what: crate::exec::describe_args(&spec.args),
            code,
            tail,
        })
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        for m in mounts_under(&self.dir) {
            let _ = unmount(&m);
        }
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(lock) = self.lock.take() {
            lock.remove();
        }
    }
}

/// The longest line of output passed on whole; a longer one is cut into pieces of
/// this size, so a command printing without newlines cannot fill kiln's memory.
pub const MAX_LINE: usize = 64 << 10;

/// Reads the next line of `r` into `buf` (cleared first), at most [`MAX_LINE`] bytes;
/// `false` at the end of the stream.
fn read_line_bounded(r: &mut impl BufRead, buf: &mut Vec<u8>) -> bool {
    buf.clear();
    loop {
        let chunk = match r.fill_buf() {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return !buf.is_empty(),
        };
        if chunk.is_empty() {
            return !buf.is_empty();
        }
        let room = MAX_LINE - buf.len();
        let (take, done) = match chunk.iter().take(room).position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len().min(room), chunk.len() >= room),
        };
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            return true;
        }
    }
}

/// A pipe (read end, write end), both close-on-exec.
fn pipe() -> std::io::Result<(fs::File, fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
    Ok(unsafe { (fs::File::from_raw_fd(fds[0]), fs::File::from_raw_fd(fds[1])) })
}

/// Writes a new file that only its owner can read, from the start.
fn write_private(p: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(p)?
        .write_all(data)
}

fn set_mode(p: &Path, mode: u32) -> Result<(), ExecError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .map_err(|e| ExecError::setup(format!("chmod {}", p.display()), e))
}

/// Creates the working directory inside the run's root (links resolve in the root).
/// Folders it makes are 0755 whatever kiln's umask is, so results do not depend on it.
fn make_workdir(rootfs: &Path, cwd: &str) -> Result<(), ExecError> {
    let host = Root::new(rootfs)
        .resolve(cwd, true)
        .map_err(|e| ExecError::setup(format!("workdir {cwd:?}"), e))?;
    let rel = host.strip_prefix(rootfs).unwrap_or(Path::new(""));
    let mut at = rootfs.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(ExecError::Setup(format!(
                    "workdir {cwd:?}: {} is not a directory",
                    at.display()
                )))
            }
            Err(_) => {
                fs::create_dir(&at)
                    .map_err(|e| ExecError::setup(format!("create workdir {cwd:?}"), e))?;
                set_mode(&at, 0o755)?;
            }
        }
    }
    Ok(())
}

/// Deletes containers, mounts and bundles that a killed `kiln` left under `exec_dir`
/// (bundles whose lock nobody holds). Bundles of running processes are left alone.
pub fn reap_stale(exec_dir: &Path, runtime: Option<&Runtime>) {
    let bundles = bundles_dir(exec_dir);
    let Ok(entries) = fs::read_dir(&bundles) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_suffix(".lock") else {
            continue;
        };
        let Ok(Some(lock)) = FileLock::try_existing(kiln_root(exec_dir), &e.path()) else {
            continue;
        };
        tracing::info!("removing the run {id} that an earlier kiln left behind");
        if let Some(rt) = runtime {
            rt.delete(&state_dir(exec_dir), id);
        }
        let dir = bundles.join(id);
        for m in mounts_under(&dir) {
            let _ = unmount(&m);
        }
        let _ = fs::remove_dir_all(&dir);
        lock.remove();
    }
    // A container whose bundle is gone altogether (a cancel that raced its creation):
    // nobody can hold its lock, so it is deleted too.
    if let Some(rt) = runtime {
        let state = state_dir(exec_dir);
        let listed = rt
            .cmd(&state)
            .args(["list", "-q"])
            .stderr(std::process::Stdio::null())
            .output();
        if let Ok(out) = listed {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if id.starts_with("kiln-") && !bundles.join(format!("{id}.lock")).exists() {
                    tracing::info!("removing the container {id} that has no run left");
                    rt.delete(&state, id);
                }
            }
        }
    }
}
