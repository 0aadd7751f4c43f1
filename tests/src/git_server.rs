//! Git servers for the git source tests and benchmark, on loopback:
//!
//! - [`GitDaemon`]: `git daemon` serving a directory over `git://`;
//! - [`GitHttp`]: a small HTTP/1.1 server that runs `git http-backend` as a CGI
//!   program (smart HTTP, protocol v2 when the client asks for it), with an optional
//!   token-protected prefix, a request log, a hook run before each request, and a
//!   throttle for responses;
//! - [`Repo`]: a scratch repository to build served repositories from.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Runs `git ARGS` in `dir` with a clean, fixed identity and no user config; panics
/// with git's output on failure; returns stdout trimmed.
pub fn git(dir: &Path, args: &[&str]) -> String {
    crate::require_program("git", "git");
    let out = Command::new("git")
        .args([
            "-c",
            "protocol.file.allow=always",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("HOME", "/nonexistent")
        .env("GIT_AUTHOR_NAME", "kiln test")
        .env("GIT_AUTHOR_EMAIL", "test@kiln.invalid")
        .env("GIT_COMMITTER_NAME", "kiln test")
        .env("GIT_COMMITTER_EMAIL", "test@kiln.invalid")
        .stdin(Stdio::null())
        .output()
        .expect("run git");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed:\n{}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A working repository that pushes into a bare repository under a served directory.
pub struct Repo {
    /// The working tree.
    pub work: PathBuf,
    /// The bare repository served.
    pub bare: PathBuf,
}

impl Repo {
    /// Creates `served/<name>` (bare, exported) and a working tree `work/<name>`.
    pub fn new(served: &Path, work: &Path, name: &str) -> Self {
        let bare = served.join(name);
        let wt = work.join(name.trim_end_matches(".git"));
        std::fs::create_dir_all(&bare).expect("mkdir bare");
        std::fs::create_dir_all(&wt).expect("mkdir work");
        git(&bare, &["init", "-q", "--bare"]);
        // Let clients fetch any reachable commit by sha, as the big hosts do.
        git(
            &bare,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        git(&bare, &["config", "http.receivepack", "true"]);
        std::fs::write(bare.join("git-daemon-export-ok"), b"").expect("export-ok");
        git(&wt, &["init", "-q"]);
        Self { work: wt, bare }
    }

    /// Writes a file in the working tree (creating parents).
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) -> &Self {
        let p = self.work.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
        self
    }

    /// `git add -A && git commit`; returns the new commit.
    pub fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "-q", "--allow-empty", "-m", message],
        );
        self.head()
    }

    /// The working tree's HEAD commit.
    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// `git ARGS` in the working tree.
    pub fn git(&self, args: &[&str]) -> String {
        git(&self.work, args)
    }

    /// Pushes everything (branches and tags, forced) to the bare repository.
    pub fn push(&self) {
        let bare = self.bare.display().to_string();
        git(
            &self.work,
            &["push", "-q", "--force", &bare, "refs/heads/*:refs/heads/*"],
        );
        git(
            &self.work,
            &["push", "-q", "--force", &bare, "refs/tags/*:refs/tags/*"],
        );
    }
}

/// `git daemon` on a free loopback port; killed when dropped (or by [`GitDaemon::stop`]).
pub struct GitDaemon {
    port: u16,
    child: Option<Child>,
}

impl GitDaemon {
    /// Serves every repository under `base` as `git://127.0.0.1:PORT/<path>`.
    pub fn start(base: &Path) -> Self {
        crate::require_program("git", "git");
        let port = crate::free_port();
        // The daemon program itself: `git daemon` would run it as a child that
        // outlives a kill of `git`.
        let exec_path = git(base, &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon (apt-get install git)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not start on port {port}"
            );
            thread::sleep(Duration::from_millis(20));
        }
        Self {
            port,
            child: Some(child),
        }
    }

    /// `git://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "git://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the daemon now (its port refuses connections afterwards).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One request seen by [`GitHttp`].
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET` or `POST`.
    pub method: String,
    /// The path with the query.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The request body (decompressed if gzip).
    pub body: Vec<u8>,
}

impl Seen {
    /// Whether this request is an upload-pack `fetch` (not a ref listing).
    pub fn is_fetch(&self) -> bool {
        self.method == "POST"
            && self.target.ends_with("/git-upload-pack")
            && !contains(&self.body, b"command=ls-refs")
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

type Hook = Box<dyn Fn(&Seen) + Send + Sync>;

#[derive(Default)]
struct HttpState {
    root: PathBuf,
    /// (path prefix, the exact Authorization value required).
    protected: Mutex<Option<(String, String)>>,
    seen: Mutex<Vec<Seen>>,
    hook: Mutex<Option<Hook>>,
    /// Sleep this many microseconds after each 16 KiB of a response body.
    throttle_us: AtomicU64,
    sent: AtomicU64,
    /// Git LFS objects by sha256 hex oid.
    lfs: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    stop: AtomicBool,
}

/// Smart HTTP through `git http-backend`; stops when dropped.
pub struct GitHttp {
    port: u16,
    state: Arc<HttpState>,
}

impl GitHttp {
    /// Serves the repositories under `root` as `http://127.0.0.1:PORT/<path>`.
    pub fn start(root: &Path) -> Self {
        crate::require_program("git", "git");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(HttpState {
            root: root.to_path_buf(),
            ..Default::default()
        });
        let st = state.clone();
        thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = conn {
                    let st = st.clone();
                    thread::spawn(move || {
                        let _ = serve(stream, &st);
                    });
                }
            }
        });
        Self { port, state }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!(
            "http://127.0.0.1:{}/{}",
            self.port,
            path.trim_start_matches('/')
        )
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests under `prefix` need `Authorization: <value>` exactly, else 401.
    pub fn protect(&self, prefix: &str, value: &str) {
        *self.state.protected.lock().unwrap() = Some((prefix.to_string(), value.to_string()));
    }

    /// Runs `hook` before serving each request.
    pub fn on_request(&self, hook: impl Fn(&Seen) + Send + Sync + 'static) {
        *self.state.hook.lock().unwrap() = Some(Box::new(hook));
    }

    /// Serves `data` as the Git LFS object `oid` (sha256 hex) through the LFS batch API
    /// (`<repo>/info/lfs/objects/batch`, basic transfer).
    pub fn add_lfs_object(&self, oid: &str, data: Vec<u8>) {
        self.state.lfs.lock().unwrap().insert(oid.to_string(), data);
    }

    /// Slows response bodies down: `micros` of sleep after each 16 KiB (0: off).
    pub fn throttle(&self, micros: u64) {
        self.state.throttle_us.store(micros, Ordering::SeqCst);
    }

    /// Response body bytes sent so far.
    pub fn sent(&self) -> u64 {
        self.state.sent.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Forgets the requests seen.
    pub fn reset(&self) {
        self.state.seen.lock().unwrap().clear();
    }
}

impl Drop for GitHttp {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: TcpStream, st: &HttpState) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        let header = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut body = Vec::new();
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                    .unwrap_or(0);
                let mut chunk = vec![0; n + 2];
                reader.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        }
        let gzip = header("content-encoding").is_some_and(|v| v.contains("gzip"));
        let seen = Seen {
            method: method.clone(),
            target: target.clone(),
            authorization: header("authorization"),
            body: if gzip { gunzip(&body) } else { body.clone() },
        };
        st.seen.lock().unwrap().push(seen.clone());
        if let Some(h) = st.hook.lock().unwrap().as_ref() {
            h(&seen);
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if let Some((prefix, want)) = st.protected.lock().unwrap().clone() {
            if path.starts_with(&prefix) && seen.authorization.as_deref() != Some(want.as_str()) {
                out.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"kiln-test\"\r\nContent-Length: 0\r\n\r\n",
                )?;
                continue;
            }
        }
        if path.ends_with("/info/lfs/objects/batch") || path.starts_with("/lfs-objects/") {
            lfs(
                &mut out,
                st,
                &method,
                path,
                &seen.body,
                header("host").unwrap_or_default(),
            )?;
            continue;
        }
        let mut cgi = Command::new("git");
        cgi.arg("http-backend")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_PROJECT_ROOT", &st.root)
            .env("GIT_HTTP_EXPORT_ALL", "1")
            .env("REQUEST_METHOD", &method)
            .env("PATH_INFO", path)
            .env("QUERY_STRING", query)
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("CONTENT_LENGTH", body.len().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(v) = header("content-type") {
            cgi.env("CONTENT_TYPE", v);
        }
        if let Some(v) = header("git-protocol") {
            cgi.env("GIT_PROTOCOL", v);
        }
        if gzip {
            cgi.env("HTTP_CONTENT_ENCODING", "gzip");
        }
        let mut child = cgi.spawn()?;
        let mut stdin = child.stdin.take().expect("stdin");
        let feed = thread::spawn(move || {
            let _ = stdin.write_all(&body);
        });
        let mut cgi_out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut status = "200 OK".to_string();
        let mut resp_headers = String::new();
        loop {
            let mut h = String::new();
            if cgi_out.read_line(&mut h)? == 0 {
                break;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            match h.split_once(':') {
                Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
                _ => {
                    resp_headers.push_str(h);
                    resp_headers.push_str("\r\n");
                }
            }
        }
        out.write_all(
            format!("HTTP/1.1 {status}\r\n{resp_headers}Transfer-Encoding: chunked\r\n\r\n")
                .as_bytes(),
        )?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = cgi_out.read(&mut buf)?;
            if n == 0 {
                break;
            }
            out.write_all(format!("{n:x}\r\n").as_bytes())?;
            out.write_all(&buf[..n])?;
            out.write_all(b"\r\n")?;
            out.flush()?;
            st.sent.fetch_add(n as u64, Ordering::SeqCst);
            let t = st.throttle_us.load(Ordering::SeqCst);
            if t > 0 {
                thread::sleep(Duration::from_micros(t));
            }
        }
        out.write_all(b"0\r\n\r\n")?;
        let _ = feed.join();
        let _ = child.wait();
    }
}

/// The Git LFS batch API and object downloads.
fn lfs(
    out: &mut TcpStream,
    st: &HttpState,
    method: &str,
    path: &str,
    body: &[u8],
    host: String,
) -> std::io::Result<()> {
    let (status, ctype, reply) = if method == "POST" {
        let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let store = st.lfs.lock().unwrap();
        let objects: Vec<serde_json::Value> = req["objects"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .map(|o| {
                let oid = o["oid"].as_str().unwrap_or_default().to_string();
                if store.contains_key(&oid) {
                    serde_json::json!({
                        "oid": oid, "size": o["size"], "authenticated": true,
                        "actions": {"download": {"href": format!("http://{host}/lfs-objects/{oid}")}}
                    })
                } else {
                    serde_json::json!({"oid": oid, "size": o["size"],
                        "error": {"code": 404, "message": "object not found"}})
                }
            })
            .collect();
        let reply = serde_json::json!({"transfer": "basic", "objects": objects});
        (
            "200 OK",
            "application/vnd.git-lfs+json",
            reply.to_string().into_bytes(),
        )
    } else {
        let oid = path.trim_start_matches("/lfs-objects/");
        match st.lfs.lock().unwrap().get(oid) {
            Some(d) => ("200 OK", "application/octet-stream", d.clone()),
            None => ("404 Not Found", "text/plain", b"no such object".to_vec()),
        }
    };
    out.write_all(
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            reply.len()
        )
        .as_bytes(),
    )?;
    out.write_all(&reply)
}

/// Decompresses a gzip request body.
fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("a gzip request body");
    out
}

/// `sshd` on a free loopback port letting the current user in with one key, and an
/// `ssh-agent` holding that key; both killed when dropped.
pub struct SshServer {
    port: u16,
    sshd: Child,
    agent: Child,
    /// The agent's socket.
    pub agent_socket: PathBuf,
    /// The server's host key line for a known_hosts file (`[127.0.0.1]:PORT ssh-ed25519 …`).
    pub known_host: String,
}

impl SshServer {
    /// Starts both in `dir` (a scratch directory).
    pub fn start(dir: &Path) -> Self {
        crate::require_program("ssh-keygen", "openssh-client");
        crate::require_program("ssh-agent", "openssh-client");
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.is_file(),
            "this test needs sshd: install it with `apt-get install openssh-server`"
        );
        std::fs::create_dir_all(dir).expect("mkdir");
        let keygen = |name: &str| {
            let st = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
                .arg(dir.join(name))
                .stdin(Stdio::null())
                .status()
                .expect("ssh-keygen");
            assert!(st.success(), "ssh-keygen failed");
        };
        keygen("host_key");
        keygen("user_key");
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).expect("copy");
        // sshd as root wants its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let port = crate::free_port();
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nStrictModes no\n\
                 UsePAM no\nPidFile none\n",
                dir.join("host_key").display(),
                dir.join("authorized_keys").display()
            ),
        )
        .expect("write sshd_config");
        let sshd = Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sshd");
        let agent_socket = dir.join("agent.sock");
        let agent = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&agent_socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !agent_socket.exists() || TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd or ssh-agent did not start");
            thread::sleep(Duration::from_millis(20));
        }
        let st = Command::new("ssh-add")
            .arg("-q")
            .arg(dir.join("user_key"))
            .env("SSH_AUTH_SOCK", &agent_socket)
            .stdin(Stdio::null())
            .status()
            .expect("ssh-add");
        assert!(st.success(), "ssh-add failed");
        let host_pub = std::fs::read_to_string(dir.join("host_key.pub")).expect("host key");
        let mut parts = host_pub.split_whitespace();
        let known_host = format!(
            "[127.0.0.1]:{port} {} {}",
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default()
        );
        Self {
            port,
            sshd,
            agent,
            agent_socket,
            known_host,
        }
    }

    /// `ssh://USER@127.0.0.1:PORT<abs path>` for the current user.
    pub fn url(&self, path: &Path) -> String {
        let user = std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(&Command::new("id").arg("-un").output().expect("id").stdout)
                    .trim()
                    .to_string()
            });
        format!("ssh://{user}@127.0.0.1:{}{}", self.port, path.display())
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
        let _ = self.agent.kill();
        let _ = self.agent.wait();
    }
}
