//! A real registry for the image tests and benchmark: Debian's `docker-registry`
//! (distribution 2.x) started on a free loopback port with a generated config, plain or
//! behind TLS with a CA made by `openssl`, open, with basic auth (htpasswd) or with
//! bearer tokens from a small token server of the tests ([`TokenServer`]). Images are
//! pushed with the distribution API; what the registry served is read back from its
//! JSON request log. [`SlowProxy`] forwards to it at a limited rate.

pub mod image;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use image::{Image, Layer};

pub use crate::free_port;

/// Runs a program, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// How the registry authenticates.
#[derive(Clone, Debug, Default)]
pub enum Auth {
    /// Open.
    #[default]
    None,
    /// Basic auth for `user` / `password` (requires TLS).
    Basic(String, String),
    /// Bearer tokens from the token server at `realm`, signed by `cert`.
    Token {
        /// The token endpoint URL.
        realm: String,
        /// The signing certificate (PEM file).
        cert: PathBuf,
    },
}

/// A CA and a server certificate for 127.0.0.1, made with `openssl`.
pub struct Tls {
    /// The CA certificate (PEM), for the client's `ca = [...]`.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl Tls {
    /// Makes a CA and a certificate for IP 127.0.0.1 under `dir`.
    pub fn make(dir: &Path) -> Self {
        crate::require_program("openssl", "openssl");
        std::fs::create_dir_all(dir).expect("mkdir");
        let p = |n: &str| dir.join(n);
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln test CA",
            ])
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.pem")));
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
            ])
            .arg("-keyout")
            .arg(p("srv.key"))
            .arg("-out")
            .arg(p("srv.csr")));
        std::fs::write(
            p("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write");
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("srv.csr"))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("srv.pem")));
        Self {
            ca: p("ca.pem"),
            cert: p("srv.pem"),
            key: p("srv.key"),
        }
    }
}

/// What the registry answered to one request (from its log).
#[derive(Clone, Debug)]
pub struct Served {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request URI.
    pub uri: String,
    /// The status.
    pub status: u64,
    /// Body bytes written.
    pub written: u64,
}

/// A registry to push to over plain HTTP (see [`Remote::attach`]); a [`Registry`]
/// derefs to its own.
pub struct Remote {
    /// `127.0.0.1:<port>`.
    pub host: String,
    tls: bool,
}

/// A running `docker-registry`.
pub struct Registry {
    child: Child,
    remote: Remote,
    /// Its storage directory.
    pub storage: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Registry {
    type Target = Remote;
    fn deref(&self) -> &Remote {
        &self.remote
    }
}

impl Registry {
    /// An open plain-HTTP registry with fresh storage.
    pub fn start() -> Self {
        Self::start_with(None, None, Auth::None)
    }

    /// A registry over `storage` (fresh when `None`), with TLS and auth as given.
    pub fn start_with(storage: Option<&Path>, tls: Option<&Tls>, auth: Auth) -> Self {
        crate::require_program("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir()
            .expect("tempdir");
        let storage = storage
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("data"));
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: json\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n",
            storage.display()
        );
        if let Some(t) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                t.cert.display(),
                t.key.display()
            ));
        }
        match &auth {
            Auth::None => {}
            Auth::Basic(user, pass) => {
                crate::require_program("htpasswd", "apache2-utils");
                let out = run(Command::new("htpasswd").args(["-Bbn", user, pass]));
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out).expect("write htpasswd");
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                ));
            }
            Auth::Token { realm, cert } => cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: kiln-registry\n    issuer: kiln-test-issuer\n    rootcertbundle: {}\n",
                cert.display()
            )),
        }
        let conf = dir.path().join("config.yml");
        std::fs::write(&conf, cfg).expect("write config");
        let log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).expect("log"))
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start docker-registry");
        let r = Self {
            child,
            remote: Remote {
                host: format!("127.0.0.1:{port}"),
                tls: tls.is_some(),
            },
            storage,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {}: {}",
                r.host,
                std::fs::read_to_string(&r.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Every request the registry logged so far.
    pub fn served(&self) -> Vec<Served> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| {
                v["msg"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("response completed"))
            })
            .map(|v| Served {
                method: v["http.request.method"].as_str().unwrap_or("").to_string(),
                uri: v["http.request.uri"].as_str().unwrap_or("").to_string(),
                status: v["http.response.status"].as_u64().unwrap_or(0),
                written: v["http.response.written"].as_u64().unwrap_or(0),
            })
            .collect()
    }

    /// Requests for blob `digest` so far.
    pub fn blob_requests(&self, digest: &str) -> Vec<Served> {
        self.served()
            .into_iter()
            .filter(|s| s.uri.contains("/blobs/sha256:") && s.uri.ends_with(digest))
            .collect()
    }

    /// Where the registry keeps blob `digest`'s bytes (to corrupt it in a test).
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Remote {
    /// A registry already running at `host` (plain HTTP).
    pub fn attach(host: &str) -> Self {
        Self {
            host: host.to_string(),
            tls: false,
        }
    }

    fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, Vec<(String, String)>) {
        assert!(
            !self.tls,
            "push to the registry before it is restarted with TLS"
        );
        http_request(&self.host, method, path, headers, body)
    }

    /// Uploads a blob (monolithic upload).
    pub fn push_blob(&self, repo: &str, bytes: &[u8]) {
        let d = image::digest(bytes);
        let (code, h) = self.http("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], &[]);
        assert_eq!(code, 202, "start upload of {d}");
        let loc = h
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("location"))
            .map(|(_, v)| v.clone())
            .expect("Location");
        let loc = loc
            .split_once(&self.host)
            .map_or(loc.as_str(), |(_, p)| p)
            .to_string();
        let sep = if loc.contains('?') { '&' } else { '?' };
        let (code, _) = self.http(
            "PUT",
            &format!("{loc}{sep}digest={d}"),
            &[("Content-Type", "application/octet-stream")],
            bytes,
        );
        assert_eq!(code, 201, "upload of {d}");
    }

    /// Uploads a manifest or index document under `reference` (a tag or digest).
    pub fn push_manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let (code, _) = self.http(
            "PUT",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("Content-Type", media_type)],
            bytes,
        );
        assert_eq!(code, 201, "push manifest {repo}:{reference}");
    }

    /// Pushes `img` (layers, config, manifest) as `repo:tag`.
    pub fn push_image(&self, repo: &str, tag: &str, img: &Image) {
        self.push_parts(repo, &img.layers, img);
        self.push_manifest(
            repo,
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &img.manifest,
        );
    }

    fn push_parts(&self, repo: &str, layers: &[Layer], img: &Image) {
        for l in layers {
            self.push_blob(repo, &l.blob);
        }
        self.push_blob(repo, &img.config);
    }

    /// Pushes several platform images and an index of them as `repo:tag`; returns the
    /// index digest.
    pub fn push_index(&self, repo: &str, tag: &str, images: &[&Image]) -> String {
        for i in images {
            self.push_parts(repo, &i.layers, i);
            self.push_manifest(
                repo,
                &i.manifest_digest,
                "application/vnd.oci.image.manifest.v1+json",
                &i.manifest,
            );
        }
        let (bytes, d) = image::index(images);
        self.push_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &bytes);
        d
    }
}

impl Registry {
    /// Stops the registry.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request over a fresh connection; returns the status and headers (the
/// body is read and dropped).
pub fn http_request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>) {
    let mut s = TcpStream::connect(host).expect("connect");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("write");
    s.write_all(body).expect("write");
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut hs = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line).expect("header");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            hs.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let _ = std::io::copy(&mut r, &mut std::io::sink());
    (code, hs)
}

fn b64(bytes: &[u8], url: bool) -> String {
    let table: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
        if !url {
            for _ in c.len()..3 {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 (for `auth` values in docker's config.json).
pub fn base64(bytes: &[u8]) -> String {
    b64(bytes, false)
}

/// The refresh token ([`TokenServer::refresh_token`]) the server accepts for a login.
fn refresh_token_for(basic: &str) -> String {
    format!("refresh-{}", &digest_hex(basic.as_bytes())[..32])
}

fn digest_hex(b: &[u8]) -> String {
    image::digest(b).trim_start_matches("sha256:").to_string()
}

/// A token server for distribution's `token` auth: `GET /token?service=…&scope=…`
/// answers a JWT (RS256, signed with `openssl`, the certificate in `x5c`) granting
/// pull on the scope's repository, after checking basic credentials when `login` is set.
pub struct TokenServer {
    /// The realm URL to configure on the registry.
    pub realm: String,
    /// The signing certificate (the registry's `rootcertbundle`).
    pub cert: PathBuf,
    /// Token requests answered.
    pub issued: Arc<AtomicUsize>,
    /// Requests refused (bad credentials).
    pub refused: Arc<AtomicUsize>,
    /// An OAuth2 refresh token accepted in place of the login (for `identitytoken`).
    pub refresh_token: Option<String>,
    stop: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// Starts the server; `login` = required `user:password`, if any.
    pub fn start(login: Option<(&str, &str)>) -> Self {
        crate::require_program("openssl", "openssl");
        let dir = tempfile::Builder::new()
            .prefix("kiln-token-")
            .tempdir()
            .expect("tempdir");
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=kiln token signer",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let der = run(Command::new("openssl")
            .args(["x509", "-outform", "der", "-in"])
            .arg(&cert));
        let x5c = base64(&der);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let want = login.map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
        let refresh_token = want.as_deref().map(refresh_token_for);
        let (i2, r2, s2) = (issued.clone(), refused.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let (stream, _) = match listener.accept() {
                    Ok(c) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                stream.set_nonblocking(false).ok();
                let _ = serve_token(stream, &key, &x5c, want.as_deref(), &i2, &r2);
            }
        });
        Self {
            realm: format!("http://127.0.0.1:{port}/token"),
            cert,
            issued,
            refused,
            refresh_token,
            stop,
            _dir: dir,
        }
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_token(
    stream: TcpStream,
    key: &Path,
    x5c: &str,
    want: Option<&str>,
    issued: &AtomicUsize,
    refused: &AtomicUsize,
) -> std::io::Result<()> {
    let mut r = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let method = line.split_whitespace().next().unwrap_or("").to_string();
    let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut auth = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut w = stream;
    // An OAuth2 refresh-token grant (docker's `identitytoken`): POST with a form body.
    let mut form = vec![0u8; length.min(1 << 16)];
    r.read_exact(&mut form)?;
    let form = String::from_utf8_lossy(&form).to_string();
    let refresh_ok = method == "POST"
        && want.is_some_and(|w| {
            form.split('&')
                .any(|kv| kv == format!("refresh_token={}", refresh_token_for(w)))
        })
        && form.split('&').any(|kv| kv == "grant_type=refresh_token");
    if want.is_some() && auth.as_deref() != want && !refresh_ok {
        refused.fetch_add(1, Ordering::SeqCst);
        w.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let query = if method == "POST" {
        form.as_str()
    } else {
        target.split_once('?').map_or("", |(_, q)| q)
    };
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .map(|v| {
                v.replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%3a", ":")
                    .replace("%2f", "/")
            })
            .unwrap_or_default()
    };
    let scope = param("scope");
    let repo = scope.split(':').nth(1).unwrap_or("").to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "kiln-test-issuer", "sub": "kiln", "aud": param("service"),
        "exp": now + 600, "nbf": now - 60, "iat": now - 60, "jti": format!("t{now}"),
        "access": [{"type": "repository", "name": repo, "actions": ["pull"]}],
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), true),
        b64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())?;
    let mut sig = Vec::new();
    child.stdout.take().expect("stdout").read_to_end(&mut sig)?;
    child.wait()?;
    let token = format!("{signing_input}.{}", b64(&sig, true));
    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
    issued.fetch_add(1, Ordering::SeqCst);
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A TCP forwarder to `upstream` that passes at most `bytes_per_sec` downstream per
/// connection (to stop a pull in the middle of a layer).
pub struct SlowProxy {
    /// `127.0.0.1:<port>`.
    pub host: String,
    stop: Arc<AtomicBool>,
}

impl SlowProxy {
    /// Starts forwarding.
    pub fn start(upstream: &str, bytes_per_sec: usize) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let host = format!("127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                client.set_nonblocking(false).ok();
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (mut c_r, mut s_w) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_r, &mut s_w);
                });
                let (mut s_r, mut c_w, s3) = (server, client, s2.clone());
                std::thread::spawn(move || {
                    let chunk = (bytes_per_sec / 20).max(1);
                    let mut buf = vec![0u8; chunk];
                    while !s3.load(Ordering::Relaxed) {
                        let n = match s_r.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if c_w.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                });
            }
        });
        Self { host, stop }
    }
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
