//! The hardened git command line (BuildKit's `util/gitutil/git_cli.go`, made stricter).
//!
//! Every call:
//! - starts with `-c protocol.file.allow=user -c protocol.ext.allow=never
//!   -c core.hooksPath=/dev/null` and friends, so `file://` submodules, `ext::`
//!   transports and hooks never run;
//! - gets an environment rebuilt from scratch: `PATH`, the proxy variables,
//!   `GIT_TERMINAL_PROMPT=0`, `GIT_CONFIG_NOSYSTEM=1`, `HOME` and
//!   `GIT_CONFIG_GLOBAL` pointed at `/dev/null`, `LC_ALL=C`, ssh without the user's
//!   config, plus the job's own config entries as `GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`
//!   (so auth headers never appear in argv);
//! - runs in its own process group, killed (SIGTERM, then SIGKILL) on cancel or timeout,
//!   and killed by the kernel if the thread that started it dies;
//! - callers put `--` before every positional argument.
//!
//! The one exception is [`GitCli::file_remote`]: the calls for a `file://` remote the
//! plugin's `allow_file_remotes` switch let through add `-c protocol.file.allow=always`
//! after the hardening (a later `-c` wins), so the remote, and `file://` submodules of
//! that local repository, can be read. Calls for any other remote keep `user`, which
//! refuses `file://` submodules.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_plugin_api::{Job, PluginError, Result};

use crate::url::redact;

/// Options given to every git call; always first on the command line.
const HARDENING: &[&str] = &[
    "-c",
    "protocol.file.allow=user",
    "-c",
    "protocol.ext.allow=never",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "core.fsmonitor=false",
    "-c",
    "gc.auto=0",
    "-c",
    "maintenance.auto=false",
    "-c",
    "advice.detachedHead=false",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "credential.helper=",
];

/// Environment variables passed through from the host's environment.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
];

/// How long a cancelled git gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(10);

/// A git invocation context: the program, the limits, and per-job settings.
#[derive(Clone, Debug)]
pub struct GitCli {
    /// The git program.
    pub git: PathBuf,
    /// Kill a git process that runs longer than this.
    pub timeout: Duration,
    /// `-c KEY=VALUE` entries sent through the environment (never argv): auth headers.
    pub config: Vec<(String, String)>,
    /// `SSH_AUTH_SOCK` for the ssh transport.
    pub ssh_auth_sock: Option<PathBuf>,
    /// A known_hosts file for ssh (else host keys are not checked, as in BuildKit).
    pub known_hosts: Option<PathBuf>,
    /// Extra environment entries (e.g. `GIT_INDEX_FILE`).
    pub extra_env: Vec<(OsString, OsString)>,
    /// The calls are for an allowed `file://` remote: `protocol.file.allow=always`.
    pub file_remote: bool,
}

/// What a finished git call printed.
#[derive(Debug)]
pub struct Output {
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Progress reported while a git call runs: `(current, total)` of git's
/// "Receiving objects" / "Updating files" counters.
pub type ProgressFn<'a> = &'a dyn Fn(&str, u64, u64);

impl GitCli {
    /// A context with no job settings.
    pub fn new(git: PathBuf, timeout: Duration) -> Self {
        Self {
            git,
            timeout,
            config: Vec::new(),
            ssh_auth_sock: None,
            known_hosts: None,
            extra_env: Vec::new(),
            file_remote: false,
        }
    }

    /// The command with hardened arguments and environment, before `args`.
    pub fn command(&self, dir: Option<&Path>) -> Command {
        let mut c = Command::new(&self.git);
        c.env_clear();
        for name in PASS_THROUGH {
            if let Some(v) = std::env::var_os(name) {
                c.env(name, v);
            }
        }
        c.env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("HOME", "/dev/null")
            .env("LC_ALL", "C");
        let mut ssh = String::from("ssh -F /dev/null -o BatchMode=yes");
        match &self.known_hosts {
            Some(p) => {
                ssh.push_str(" -o StrictHostKeyChecking=yes -o UserKnownHostsFile=");
                ssh.push_str(&shell_quote(&p.to_string_lossy()));
            }
            None => ssh.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
        }
        c.env("GIT_SSH_COMMAND", ssh);
        if let Some(sock) = &self.ssh_auth_sock {
            c.env("SSH_AUTH_SOCK", sock);
        }
        if !self.config.is_empty() {
            c.env("GIT_CONFIG_COUNT", self.config.len().to_string());
            for (i, (k, v)) in self.config.iter().enumerate() {
                c.env(format!("GIT_CONFIG_KEY_{i}"), k);
                c.env(format!("GIT_CONFIG_VALUE_{i}"), v);
            }
        }
        for (k, v) in &self.extra_env {
            c.env(k, v);
        }
        c.args(HARDENING);
        if self.file_remote {
            c.args(["-c", "protocol.file.allow=always"]);
        }
        match dir {
            Some(d) => {
                c.arg("-C").arg(d);
            }
            // Never the repository of the caller's working directory (its config could
            // redirect URLs or set an ssh command).
            None => {
                c.current_dir("/");
            }
        }
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.process_group(0);
        // SAFETY: prctl and umask are async-signal-safe and touch no memory of ours.
        unsafe {
            c.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::umask(0o022);
                Ok(())
            });
        }
        c
    }

    /// Runs `git [-C dir] ARGS`, polling `job` for cancellation; a non-zero exit is an
    /// error naming `what` with git's (redacted) message.
    pub fn run<S: AsRef<OsStr>>(
        &self,
        job: Option<&Job<'_>>,
        dir: Option<&Path>,
        args: &[S],
        what: &str,
    ) -> Result<Output> {
        self.run_with_progress(job, dir, args, what, None)
    }

    /// Like [`GitCli::run`], calling `progress` with git's `--progress` counters.
    pub fn run_with_progress<S: AsRef<OsStr>>(
        &self,
        job: Option<&Job<'_>>,
        dir: Option<&Path>,
        args: &[S],
        what: &str,
        progress: Option<ProgressFn<'_>>,
    ) -> Result<Output> {
        let mut cmd = self.command(dir);
        cmd.args(args);
        let mut child = cmd.spawn().map_err(|e| {
            PluginError::internal(format!("{what}: cannot run {}: {e}", self.git.display()))
        })?;
        let pgid = child.id() as libc::pid_t;
        let mut out = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = out.read_to_end(&mut s);
            s
        });
        let (tx, rx) = std::sync::mpsc::channel::<(String, u64, u64)>();
        let stderr = std::thread::spawn(move || read_stderr(&mut err, &tx));
        let started = Instant::now();
        let mut killed: Option<(&str, Instant)> = None;
        // Short calls end in a few milliseconds: poll fast first, then every 25 ms.
        let mut pause = Duration::from_millis(1);
        let status = loop {
            for (task, cur, total) in rx.try_iter() {
                if let Some(p) = progress {
                    p(&task, cur, total);
                }
            }
            if let Some(st) = child.try_wait().map_err(|e| {
                PluginError::internal(format!("{what}: waiting for git failed: {e}"))
            })? {
                break st;
            }
            match killed {
                None => {
                    let reason = if job.is_some_and(|j| j.is_cancelled()) {
                        Some("cancelled")
                    } else if started.elapsed() > self.timeout {
                        Some("timed out")
                    } else {
                        None
                    };
                    if let Some(r) = reason {
                        // SAFETY: signals our own child's process group.
                        unsafe { libc::kill(-pgid, libc::SIGTERM) };
                        killed = Some((r, Instant::now()));
                    }
                }
                Some((_, at)) if at.elapsed() > KILL_GRACE => {
                    // SAFETY: as above.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                Some(_) => {}
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(25));
        };
        // Whatever the outcome, nothing of this call may keep running.
        // SAFETY: as above; the group may already be gone.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        let stderr = stderr.join().unwrap_or_default();
        for (task, cur, total) in rx.try_iter() {
            if let Some(p) = progress {
                p(&task, cur, total);
            }
        }
        if let Some((reason, _)) = killed {
            if reason == "cancelled" {
                return Err(PluginError::cancelled());
            }
            return Err(PluginError::network(format!(
                "{what}: git {reason} after {} s",
                self.timeout.as_secs()
            ))
            .retryable(true));
        }
        if !status.success() {
            return Err(classify(what, &stderr));
        }
        Ok(Output { stdout, stderr })
    }
}

/// Reads git's stderr to the end, forwarding `--progress` counters (lines end in `\r`)
/// and returning the text without them.
fn read_stderr(r: &mut impl Read, tx: &std::sync::mpsc::Sender<(String, u64, u64)>) -> String {
    let mut text = String::new();
    let mut line = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\r' || b == b'\n' {
                let l = String::from_utf8_lossy(&line).into_owned();
                line.clear();
                // A progress line goes to the display, never into the error text.
                if let Some((task, cur, total)) = parse_progress(&l) {
                    let _ = tx.send((task, cur, total));
                    continue;
                }
                if !l.trim().is_empty() {
                    text.push_str(&l);
                    text.push('\n');
                }
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        text.push_str(&String::from_utf8_lossy(&line));
    }
    text
}

/// Parses `remote: Counting objects:  50% (5/10)` or `Receiving objects:  45% (9/20), 1 MiB`
/// into `("Receiving objects", 9, 20)`.
pub fn parse_progress(line: &str) -> Option<(String, u64, u64)> {
    let line = line.trim().strip_prefix("remote:").unwrap_or(line).trim();
    let (task, rest) = line.split_once(':')?;
    let open = rest.find('(')?;
    let close = open + rest[open..].find(')')?;
    let (cur, total) = rest[open + 1..close].split_once('/')?;
    Some((
        task.trim().to_string(),
        cur.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

/// Turns git's failure text into an error with a fitting code; credentials redacted.
fn classify(what: &str, stderr: &str) -> PluginError {
    let msg: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
        .collect();
    let msg = redact(&msg.join("; "));
    let lower = msg.to_ascii_lowercase();
    let text = format!("{what}: {msg}");
    if lower.contains("detected dubious ownership") {
        // A local (file://) repository of another user. git's own hint (a --global
        // safe.directory) cannot apply: kiln's git reads no global config.
        let repo = msg
            .split("dubious ownership in repository at ")
            .nth(1)
            .and_then(|r| r.split(';').next())
            .unwrap_or("the repository");
        return PluginError::unauthorized(format!(
            "{what}: git refuses to read {repo}: it is owned by another user than the one \
             kiln runs as (git's safe.directory check; kiln's git reads no global config); \
             run kiln as that user or give the repository to kiln's user"
        ));
    }
    if lower.contains("could not read username") || lower.contains("authentication failed") {
        PluginError::unauthorized(format!(
            "{text} (the remote wants credentials: give a token or header with --secret \
             id=GIT_AUTH_TOKEN.<host> or id=GIT_AUTH_HEADER.<host>, or forward ssh with --ssh)"
        ))
    } else if lower.contains("permission denied")
        || lower.contains(" 401")
        || lower.contains(" 403")
    {
        PluginError::unauthorized(text)
    } else if lower.contains("could not resolve host")
        || lower.contains("connection refused")
        || lower.contains("unable to connect")
        || lower.contains("failed to connect")
        || lower.contains("connection reset")
        || lower.contains("timed out")
        || lower.contains("the remote end hung up")
        || lower.contains("early eof")
    {
        PluginError::network(text).retryable(true)
    } else if lower.contains("not found")
        || lower.contains("does not appear to be a git repository")
        || lower.contains("couldn't find remote ref")
    {
        PluginError::not_found(text)
    } else {
        PluginError::internal(text)
    }
}

/// Single-quotes `s` for the shell that runs `GIT_SSH_COMMAND`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(
            parse_progress("Receiving objects:  45% (9/20), 1.00 MiB | 2 MiB/s"),
            Some(("Receiving objects".into(), 9, 20))
        );
        assert_eq!(
            parse_progress("remote: Counting objects: 100% (3/3), done."),
            Some(("Counting objects".into(), 3, 3))
        );
        assert_eq!(parse_progress("fatal: bad"), None);
    }

    #[test]
    fn hardened_environment() {
        let cli = GitCli::new(
            crate::find_git(None).expect("needs git: apt-get install git"),
            Duration::from_secs(30),
        );
        let out = cli
            .run::<&str>(None, None, &["config", "--list", "--show-origin"], "config")
            .unwrap();
        // Only the command line's settings: no system, global or GIT_DIR config.
        assert!(
            out.stdout.contains("protocol.file.allow=user"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.contains("core.hookspath=/dev/null"),
            "{}",
            out.stdout
        );
        assert!(
            out.stdout.lines().all(|l| l.starts_with("command line:")),
            "{}",
            out.stdout
        );
    }

    #[test]
    fn file_remotes_get_the_file_protocol_always() {
        let mut cli = GitCli::new(
            crate::find_git(None).expect("needs git: apt-get install git"),
            Duration::from_secs(30),
        );
        let get = |cli: &GitCli| {
            cli.run::<&str>(
                None,
                None,
                &["config", "--get", "protocol.file.allow"],
                "config",
            )
            .unwrap()
            .stdout
            .trim()
            .to_string()
        };
        assert_eq!(get(&cli), "user");
        cli.file_remote = true;
        assert_eq!(get(&cli), "always");
    }

    #[test]
    fn config_travels_in_the_environment() {
        let mut cli = GitCli::new(
            crate::find_git(None).expect("needs git: apt-get install git"),
            Duration::from_secs(30),
        );
        cli.config.push((
            "http.https://h/x.extraheader".into(),
            "Authorization: secret".into(),
        ));
        let out = cli
            .run::<&str>(
                None,
                None,
                &["config", "--get-regexp", "extraheader"],
                "config",
            )
            .unwrap();
        assert_eq!(
            out.stdout.trim(),
            "http.https://h/x.extraheader Authorization: secret"
        );
        let cmd = cli.command(None);
        assert!(!cmd
            .get_args()
            .any(|a| a.to_string_lossy().contains("secret")));
    }

    #[test]
    fn a_repository_of_another_user_is_explained() {
        let e = classify(
            "resolving ref \"main\" of file:///srv/r.git",
            "fatal: detected dubious ownership in repository at '/srv/r.git'\n\
             To add an exception for this directory, call:\n\n\
             \tgit config --global --add safe.directory /srv/r.git\n\
             fatal: Could not read from remote repository.\n",
        );
        assert_eq!(e.code, kiln_plugin_api::ErrorCode::UNAUTHORIZED);
        assert_eq!(
            e.message,
            "resolving ref \"main\" of file:///srv/r.git: git refuses to read '/srv/r.git': it \
             is owned by another user than the one kiln runs as (git's safe.directory check; \
             kiln's git reads no global config); run kiln as that user or give the \
             repository to kiln's user"
        );
    }

    #[test]
    fn failures_are_redacted() {
        let e = classify(
            "fetch",
            "fatal: unable to access 'https://u:pw@h/x/': Could not resolve host: h\n",
        );
        assert!(!e.message.contains("pw"), "{}", e.message);
        assert_eq!(e.code, kiln_plugin_api::ErrorCode::NETWORK);
    }
}
