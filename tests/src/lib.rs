//! Support for kiln's end-to-end tests: finding the built `kiln` binary and plugin
//! files, running commands against a scratch root, and requiring external programs.
//!
//! The tests run the real binary and the real `.so` files that `cargo build --workspace`
//! put in `target/<profile>/` (the README's test command builds them first).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// `target/<profile>/`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("deps dir");
    deps.parent().expect("profile dir").to_path_buf()
}

/// The built `kiln` binary; panics with what to run if it is missing.
pub fn kiln_bin() -> PathBuf {
    let p = target_dir().join("kiln");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` (the README's test command does) before the tests",
        p.display()
    );
    p
}

/// A built plugin file `lib<name>.so` in the target directory.
pub fn plugin_file(lib_name: &str) -> PathBuf {
    let p = target_dir().join(format!("lib{lib_name}.so"));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

/// The path of `program` on PATH; panics naming the Debian package that provides it.
pub fn require_program(program: &str, apt_package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "this test needs `{program}`: install it with `apt-get install {apt_package}` (the README's test command does)"
            )
        })
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The result of one `kiln` run.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Everything printed on stdout.
    pub stdout: String,
    /// Everything printed on stderr.
    pub stderr: String,
}

impl Run {
    /// Parses stdout as JSON; panics with both streams if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Every JSON document on stdout, in order: a command run with `--json` that
    /// fails after printing its result (e.g. `plugins list` with a failed plugin)
    /// prints the result, then `{"error": {…}}`. Panics with both streams if stdout is
    /// not a sequence of JSON documents.
    pub fn json_docs(&self) -> Vec<serde_json::Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<serde_json::Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|e| {
                panic!(
                    "stdout is not a sequence of JSON documents ({e}):\n{}\nstderr:\n{}",
                    self.stdout, self.stderr
                )
            })
    }

    /// Panics with both streams unless the exit code is `code`.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the run succeeded.
    #[track_caller]
    pub fn success(&self) -> &Self {
        self.expect_code(0)
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A scratch kiln environment: a root, and no config from the machine leaking in.
pub struct Env {
    /// Holds the temporary directory alive.
    pub dir: tempfile::TempDir,
}

impl Env {
    /// A fresh environment under the system temp dir.
    pub fn new() -> Self {
        Self {
            dir: tempfile::Builder::new()
                .prefix("kiln-e2e-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    /// The kiln root of this environment.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// A path inside the environment.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// A `kiln` command with `--root` set and the user's config ignored.
    pub fn command(&self) -> Command {
        let mut c = Command::new(kiln_bin());
        c.arg("--root").arg(self.root());
        c.env_remove("KILN_CONFIG")
            .env_remove("KILN_ROOT")
            .env_remove("KILN_LOG")
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .stdin(Stdio::null());
        c
    }

    /// Runs `kiln ARGS...` and collects its output.
    pub fn kiln<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command().args(args).output().expect("run kiln").into()
    }

    /// Writes a file (creating parents) and returns its path.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, contents).expect("write");
        p
    }
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

/// Copies a file with its permissions (for tests that need a private plugin copy).
pub fn copy_file(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}

/// The loopback HTTP server of the http source tests and benchmark.
pub mod http_server;

/// Git servers (`git daemon`, smart HTTP) and scratch repositories for the git tests.
pub mod git_server;
/// A registry (docker-registry), a token server and test images for the image source.
pub mod registry;
