//! The OCI distribution client: manifests and blobs of one repository, through its
//! mirrors then the registry itself, with bearer-token (`WWW-Authenticate`) and basic
//! auth, token reuse for the whole pull, redirects with `Authorization` kept only on
//! the same host, and retries with backoff for connection errors, timeouts, 429 and 5xx.
//!
//! Nothing here puts a credential or token into an error or a log line.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use kiln_plugin_api::{ErrorCode, PluginError, Result};

use kiln_source_net::proxy::{Agents, ProxyEnv};

use crate::config::ImageConfig;
use crate::credentials::{self, Credential};
use crate::manifest::{MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};

/// One repository: `host` as in the reference (`docker.io` for Docker Hub) and its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repo {
    /// The registry host as named in references.
    pub host: String,
    /// `library/busybox`.
    pub path: String,
}

impl std::fmt::Display for Repo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.path)
    }
}

/// A host requests go to, with its base URL.
#[derive(Clone, Debug)]
struct Endpoint {
    host: String,
    base: String,
    mirror: bool,
}

/// What the server answered for a manifest.
pub struct ManifestResponse {
    /// The body.
    pub bytes: Vec<u8>,
    /// `Content-Type`.
    pub content_type: Option<String>,
    /// `Docker-Content-Digest`, if sent.
    pub digest_header: Option<String>,
}

/// A registry client for one pull (tokens and credentials are cached for its life).
pub struct Client {
    cfg: Arc<ImageConfig>,
    agents: Mutex<HashMap<String, Arc<Agents>>>,
    /// `Authorization` values by host (the last one that worked).
    auth: Mutex<HashMap<String, String>>,
    creds: Mutex<HashMap<String, Option<Credential>>>,
}

/// A request failure, before it becomes a [`PluginError`].
enum Fail {
    Status(u16),
    Transport(String),
    Other(PluginError),
}

impl Client {
    /// A client with `cfg`'s registry settings.
    pub fn new(cfg: Arc<ImageConfig>) -> Self {
        Self {
            cfg,
            agents: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
        }
    }

    fn endpoints(&self, repo: &Repo) -> Vec<Endpoint> {
        let mut out = Vec::new();
        let mk = |host: &str, mirror: bool| {
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            let scheme = if self.cfg.plain_http(&host) {
                "http"
            } else {
                "https"
            };
            Endpoint {
                base: format!("{scheme}://{host}"),
                host,
                mirror,
            }
        };
        for m in self.cfg.registry(&repo.host).mirrors {
            out.push(mk(&m, true));
        }
        let origin = if repo.host == "docker.io" {
            "registry-1.docker.io"
        } else {
            repo.host.as_str()
        };
        out.push(mk(origin, false));
        out
    }

    /// The agent for `url` (a URL on `host`): TLS as configured for the host, and the
    /// proxy the environment names for the URL (none for loopback or `NO_PROXY`).
    fn agent(&self, host: &str, url: &str) -> Result<ureq::Agent> {
        let parsed = url::Url::parse(url)
            .map_err(|e| PluginError::internal(format!("invalid URL {url}: {e}")))?;
        let mut agents = self.agents.lock().expect("agents lock");
        if let Some(a) = agents.get(host) {
            return Ok(a.for_url(&parsed).clone());
        }
        let rc = self.cfg.registry(host);
        let tls = if self.cfg.plain_http(host) {
            None
        } else {
            Some(
                crate::tls::client_config(&rc.ca, rc.insecure)
                    .map_err(|e| PluginError::invalid_config(format!("registry {host}: {e}")))?,
            )
        };
        let builder = || {
            let b = ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(self.cfg.connect_timeout_secs))
                .timeout_read(Duration::from_secs(self.cfg.read_timeout_secs))
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .max_idle_connections_per_host(16)
                .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                .try_proxy_from_env(false);
            match &tls {
                Some(t) => b.tls_config(t.clone()),
                None => b,
            }
        };
        let a = Arc::new(Agents::from_env(builder, ProxyEnv::from_env()));
        agents.insert(host.to_string(), a.clone());
        Ok(a.for_url(&parsed).clone())
    }

    fn credential(&self, host: &str) -> Result<Option<Credential>> {
        let mut creds = self.creds.lock().expect("creds lock");
        if let Some(c) = creds.get(host) {
            return Ok(c.clone());
        }
        // Each host (a mirror, the registry) has its own credentials.
        let found = credentials::lookup(host)
            .map_err(|e| PluginError::unauthorized(format!("registry credentials: {e}")))?;
        if let Some(f) = &found {
            tracing::debug!("registry {host}: using credentials from {}", f.origin);
        }
        let c = found.map(|f| f.credential);
        creds.insert(host.to_string(), c.clone());
        Ok(c)
    }

    /// Sends one request with retries and auth; returns the response of status < 400.
    fn send(
        &self,
        ep: &Endpoint,
        repo: &Repo,
        method: &str,
        url: &str,
        headers: &[(&str, String)],
    ) -> std::result::Result<ureq::Response, Fail> {
        let agent = self.agent(&ep.host, url).map_err(Fail::Other)?;
        let mut attempt = 0u32;
        let mut authed_retry = false;
        loop {
            let mut req = agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.auth.lock().expect("auth lock").get(&ep.host) {
                req = req.set("Authorization", a);
            }
            let err = match req.call() {
                Ok(r) => return Ok(r),
                Err(ureq::Error::Status(401, r)) if !authed_retry => {
                    authed_retry = true;
                    let challenge = r.header("WWW-Authenticate").map(str::to_string);
                    drop(r.into_string());
                    self.authenticate(ep, repo, challenge.as_deref())
                        .map_err(Fail::Other)?;
                    continue;
                }
                Err(ureq::Error::Status(code, r)) => {
                    drop(r.into_string());
                    Fail::Status(code)
                }
                Err(ureq::Error::Transport(t)) => Fail::Transport(transport_text(&t)),
            };
            let transient = match &err {
                Fail::Status(c) => *c == 429 || (*c >= 500 && *c != 501),
                Fail::Transport(_) => true,
                Fail::Other(_) => false,
            };
            if !transient || attempt >= self.cfg.retries {
                return Err(err);
            }
            let delay = self
                .cfg
                .retry_backoff_ms
                .saturating_mul(1 << attempt.min(10));
            tracing::debug!(
                "registry {}: {method} {} failed ({}), retry {} in {delay} ms",
                ep.host,
                path_of(url),
                fail_text(&err),
                attempt + 1
            );
            std::thread::sleep(Duration::from_millis(delay));
            attempt += 1;
        }
    }

    /// Answers a 401: a bearer token from the challenge's realm, or basic auth.
    fn authenticate(&self, ep: &Endpoint, repo: &Repo, challenge: Option<&str>) -> Result<()> {
        let cred = self.credential(&ep.host)?;
        let challenge = challenge.unwrap_or("");
        let (scheme, params) = parse_challenge(challenge);
        let value = if scheme.eq_ignore_ascii_case("bearer") {
            let realm = params.get("realm").ok_or_else(|| {
                PluginError::unauthorized(format!(
                    "registry {}: a Bearer challenge without a realm",
                    ep.host
                ))
            })?;
            let scope = params
                .get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", repo.path));
            let token =
                self.fetch_token(ep, realm, params.get("service"), &scope, cred.as_ref())?;
            format!("Bearer {token}")
        } else if scheme.eq_ignore_ascii_case("basic")
            || (scheme.is_empty() && matches!(cred, Some(Credential::Basic { .. })))
        {
            // A 401 without a challenge: basic auth is all a client can offer.
            match cred {
                Some(Credential::Basic { username, password }) => format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
                ),
                Some(Credential::IdentityToken(_)) => {
                    return Err(PluginError::unauthorized(format!(
                        "registry {} asks for basic auth, but the stored credential is an identity token",
                        ep.host
                    )))
                }
                None => {
                    return Err(PluginError::unauthorized(format!(
                        "registry {} requires a login (no credentials for it in docker's config.json, a credential helper or containers' auth.json)",
                        ep.host
                    )))
                }
            }
        } else {
            return Err(PluginError::unauthorized(format!(
                "registry {}: unauthorized, with an unsupported challenge {:?}",
                ep.host, scheme
            )));
        };
        self.auth
            .lock()
            .expect("auth lock")
            .insert(ep.host.clone(), value);
        Ok(())
    }

    fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&String>,
        scope: &str,
        cred: Option<&Credential>,
    ) -> Result<String> {
        let mut url = url::Url::parse(realm).map_err(|e| {
            PluginError::unauthorized(format!("registry {}: invalid token realm: {e}", ep.host))
        })?;
        let realm_host = url.host_str().unwrap_or("").to_string()
            + &url.port().map(|p| format!(":{p}")).unwrap_or_default();
        let agent = self.agent(&realm_host, realm)?;
        let resp = match cred {
            Some(Credential::IdentityToken(t)) => {
                let mut form = vec![
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t.as_str()),
                    ("client_id", "kiln"),
                    ("scope", scope),
                ];
                if let Some(s) = service {
                    form.push(("service", s.as_str()));
                }
                agent.request_url("POST", &url).send_form(&form)
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", scope);
                }
                let mut req = agent.request_url("GET", &url);
                if let Some(Credential::Basic { username, password }) = cred {
                    req = req.set(
                        "Authorization",
                        &format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD
                                .encode(format!("{username}:{password}"))
                        ),
                    );
                }
                req.call()
            }
        };
        let where_ = format!("registry {}: token request to {}", ep.host, realm_host);
        let resp = match resp {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => {
                let msg = format!("{where_}: status {code}");
                return Err(if matches!(code, 401 | 403) {
                    PluginError::unauthorized(format!("{msg} (wrong or missing credentials)"))
                } else {
                    PluginError::network(msg)
                });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(PluginError::network(format!(
                    "{where_}: {}",
                    transport_text(&t)
                )))
            }
        };
        #[derive(serde::Deserialize)]
        struct Tok {
            #[serde(default)]
            token: String,
            #[serde(default)]
            access_token: String,
        }
        let mut body = Vec::new();
        resp.into_reader()
            .take(1 << 20)
            .read_to_end(&mut body)
            .map_err(|e| PluginError::network(format!("{where_}: {e}")))?;
        let t: Tok = serde_json::from_slice(&body)
            .map_err(|_| PluginError::unauthorized(format!("{where_}: not a token response")))?;
        let tok = if t.token.is_empty() {
            t.access_token
        } else {
            t.token
        };
        if tok.is_empty() || tok.contains(['\r', '\n']) {
            return Err(PluginError::unauthorized(format!(
                "{where_}: no usable token in the answer"
            )));
        }
        Ok(tok)
    }

    /// Runs `f` against each endpoint in turn (mirrors first); the first success wins.
    fn each_endpoint<T>(
        &self,
        repo: &Repo,
        what: &str,
        mut f: impl FnMut(&Endpoint) -> std::result::Result<T, Fail>,
    ) -> Result<T> {
        let eps = self.endpoints(repo);
        let mut last = None;
        for ep in &eps {
            match f(ep) {
                Ok(v) => return Ok(v),
                Err(e) if ep.mirror => {
                    tracing::info!(
                        "mirror {} failed for {what} of {repo}: {}; trying the next",
                        ep.host,
                        fail_text(&e)
                    );
                    last = Some((ep.clone(), e));
                }
                Err(e) => {
                    last = Some((ep.clone(), e));
                    break;
                }
            }
        }
        let (ep, e) = last.expect("at least one endpoint");
        Err(to_error(&ep, repo, what, e))
    }

    /// GETs the manifest or index `reference` (a tag or a digest).
    pub fn manifest(&self, repo: &Repo, reference: &str) -> Result<ManifestResponse> {
        let what = format!("manifest {reference}");
        self.each_endpoint(repo, &what, |ep| {
            let url = format!("{}/v2/{}/manifests/{}", ep.base, repo.path, reference);
            let r = self.send(
                ep,
                repo,
                "GET",
                &url,
                &[("Accept", MANIFEST_ACCEPT.to_string())],
            )?;
            let content_type = r.header("Content-Type").map(str::to_string);
            let digest_header = r.header("Docker-Content-Digest").map(str::to_string);
            let mut bytes = Vec::new();
            r.into_reader()
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Fail::Transport(e.to_string()))?;
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(Fail::Other(PluginError::new(
                    ErrorCode::INTERNAL,
                    format!("{repo}: {what} is larger than {MAX_MANIFEST_BYTES} bytes"),
                )));
            }
            Ok(ManifestResponse {
                bytes,
                content_type,
                digest_header,
            })
        })
    }

    /// Opens blob `digest` from byte `offset`; returns the body and whether the server
    /// honoured the range (`false`: the body starts at byte 0).
    pub fn open_blob(
        &self,
        repo: &Repo,
        digest: &str,
        offset: u64,
    ) -> Result<(Box<dyn Read + Send>, bool)> {
        let what = format!("blob {digest}");
        self.each_endpoint(repo, &what, |ep| {
            let url = format!("{}/v2/{}/blobs/{}", ep.base, repo.path, digest);
            let mut h = Vec::new();
            if offset > 0 {
                h.push(("Range", format!("bytes={offset}-")));
            }
            let r = self.send(ep, repo, "GET", &url, &h)?;
            let ranged = offset > 0 && r.status() == 206;
            Ok((Box::new(r.into_reader()) as Box<dyn Read + Send>, ranged))
        })
    }
}

/// A blob body that reconnects with a `Range` request when the connection breaks, up
/// to the configured retries, and refuses more than `size` bytes.
pub struct BlobReader<'a> {
    client: &'a Client,
    repo: &'a Repo,
    digest: &'a str,
    size: u64,
    pos: u64,
    inner: Option<Box<dyn Read + Send>>,
    retries: u32,
}

impl<'a> BlobReader<'a> {
    /// Reads blob `digest` of `size` bytes from `offset`. Fails at once if the server
    /// cannot start there (`Ok(None)`: it ignored the range; start from 0 instead).
    pub fn open(
        client: &'a Client,
        repo: &'a Repo,
        digest: &'a str,
        size: u64,
        offset: u64,
    ) -> Result<Option<Self>> {
        let (inner, ranged) = client.open_blob(repo, digest, offset)?;
        if offset > 0 && !ranged {
            return Ok(None);
        }
        Ok(Some(Self {
            client,
            repo,
            digest,
            size,
            pos: offset,
            inner: Some(inner),
            retries: 0,
        }))
    }
}

impl Read for BlobReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.inner.is_none() {
                let (r, ranged) = self
                    .client
                    .open_blob(self.repo, self.digest, self.pos)
                    .map_err(|e| io::Error::other(e.message.to_string()))?;
                if self.pos > 0 && !ranged {
                    return Err(io::Error::other(format!(
                        "the registry cannot resume blob {} at byte {} (no Range support)",
                        self.digest, self.pos
                    )));
                }
                self.inner = Some(r);
            }
            let inner = self.inner.as_mut().expect("just set");
            match inner.read(buf) {
                Ok(n) => {
                    self.pos += n as u64;
                    if self.pos > self.size {
                        return Err(io::Error::other(format!(
                            "blob {} is larger than the {} bytes its descriptor says",
                            self.digest, self.size
                        )));
                    }
                    if n == 0 && self.pos < self.size && self.retries < self.client.cfg.retries {
                        self.retries += 1;
                        self.inner = None;
                        continue;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.retries < self.client.cfg.retries => {
                    tracing::debug!("blob {}: {e} at byte {}; resuming", self.digest, self.pos);
                    self.retries += 1;
                    self.inner = None;
                    std::thread::sleep(Duration::from_millis(self.client.cfg.retry_backoff_ms));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Splits `Bearer realm="…",service="…"` into the scheme and its parameters.
pub fn parse_challenge(h: &str) -> (String, HashMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let Some((k, after)) = s.split_once('=') else {
            break;
        };
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, &q[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(k, v);
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    (scheme.to_string(), params)
}

fn transport_text(t: &ureq::Transport) -> String {
    use std::error::Error as _;
    let mut detail = format!("{}", t.kind());
    if let Some(m) = t.message() {
        detail.push_str(": ");
        detail.push_str(m);
    }
    let mut src = t.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        src = s.source();
    }
    detail
}

fn path_of(url: &str) -> &str {
    url.find("/v2/").map_or(url, |i| &url[i..])
}

fn fail_text(f: &Fail) -> String {
    match f {
        Fail::Status(c) => format!("status {c}"),
        Fail::Transport(t) => t.clone(),
        Fail::Other(e) => e.message.to_string(),
    }
}

fn to_error(ep: &Endpoint, repo: &Repo, what: &str, f: Fail) -> PluginError {
    let at = if ep.host == repo.host || ep.host == "registry-1.docker.io" {
        String::new()
    } else {
        format!(" (via {})", ep.host)
    };
    match f {
        Fail::Other(e) => e,
        Fail::Status(code) => {
            let msg = format!("{repo}: {what}{at}: registry answered status {code}");
            match code {
                401 | 403 => PluginError::unauthorized(format!(
                    "{msg} (not authorized: log in with docker or podman, or check the credentials)"
                )),
                404 => PluginError::not_found(format!("{msg} (not found)")),
                429 | 500..=599 => PluginError::network(msg),
                _ => PluginError::new(ErrorCode::INTERNAL, msg),
            }
        }
        Fail::Transport(t) => PluginError::network(format!("{repo}: {what}{at}: {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:a/b:pull");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
        let (_, p) = parse_challenge(r#"Bearer realm=x, error="a\"b""#);
        assert_eq!(p["realm"], "x");
        assert_eq!(p["error"], "a\"b");
    }
}
