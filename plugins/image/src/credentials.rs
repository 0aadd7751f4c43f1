//! Registry credentials as a docker or podman user already has them: docker's
//! `config.json` (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`: `auths`
//! entries with `auth` or `identitytoken`, `credHelpers`, `credsStore` through the
//! `docker-credential-<name> get` protocol), then containers' `auth.json`
//! (`$REGISTRY_AUTH_FILE`, else `$XDG_RUNTIME_DIR/containers/auth.json`).
//!
//! A [`Credential`]'s `Debug` never shows the secret; nothing here logs one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or personal token): HTTP basic, or a token request.
    Basic {
        /// The user name.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Self::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// Where a credential came from (for log lines; never the secret).
#[derive(Clone, Debug)]
pub struct Found {
    /// The credential.
    pub credential: Credential,
    /// e.g. `/home/u/.docker/config.json` or `docker-credential-pass`.
    pub origin: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// The keys under which `host` may be stored: the host itself, URL forms, and for
/// Docker Hub its legacy index address.
fn candidates(host: &str) -> Vec<String> {
    let mut v = vec![host.to_string()];
    if matches!(
        host,
        "docker.io" | "index.docker.io" | "registry-1.docker.io"
    ) {
        v = vec![
            "https://index.docker.io/v1/".to_string(),
            "index.docker.io".to_string(),
            "docker.io".to_string(),
            "registry-1.docker.io".to_string(),
        ];
    }
    v
}

/// Whether `key` (an `auths` key, possibly a URL) names `host`.
fn key_matches(key: &str, host: &str) -> bool {
    let bare = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let bare = bare.split('/').next().unwrap_or(bare);
    candidates(host).iter().any(|c| c == key || c == bare)
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(Path::new(&d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker/config.json"))
}

fn auth_json_paths() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|d| !d.is_empty()) {
        v.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(Path::new(&d).join("containers/auth.json"));
    }
    v
}

fn read_config(path: &Path) -> Result<Option<DockerConfig>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: not a valid credentials file: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn from_entry(e: &AuthEntry, path: &Path, key: &str) -> Result<Option<Credential>, String> {
    if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(t.to_string())));
    }
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || {
            format!(
                "{}: the auth value of {key:?} is not base64 of user:password",
                path.display()
            )
        };
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credential::Basic {
            username: u.to_string(),
            password: p.trim_end_matches('\0').to_string(),
        }));
    }
    if let (Some(u), Some(p)) = (&e.username, &e.password) {
        return Ok(Some(Credential::Basic {
            username: u.clone(),
            password: p.clone(),
        }));
    }
    Ok(None)
}

/// Runs `docker-credential-<helper> get` for `host`.
fn run_helper(helper: &str, host: &str) -> Result<Option<Credential>, String> {
    if helper.is_empty() || helper.contains('/') {
        return Err(format!("invalid credential helper name {helper:?}"));
    }
    let program = format!("docker-credential-{helper}");
    let server = if candidates(host)[0].starts_with("https://") {
        candidates(host)[0].clone()
    } else {
        host.to_string()
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{program}: cannot run it: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program}: {e}"))?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if text.contains("credentials not found") {
            return Ok(None);
        }
        // The helper's own words may quote what it was given; keep only its first line.
        let first = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(format!("{program} get failed ({}): {first}", out.status));
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{program} get printed something other than the credential JSON"))?;
    if a.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(if a.username == "<token>" {
        Credential::IdentityToken(a.secret)
    } else {
        Credential::Basic {
            username: a.username,
            password: a.secret,
        }
    }))
}

/// The credential for `host` (`host[:port]`, `docker.io` for Docker Hub), if the user
/// has one. Errors name the file or helper at fault, never a secret.
pub fn lookup(host: &str) -> Result<Option<Found>, String> {
    if let Some(path) = docker_config_path() {
        if let Some(cfg) = read_config(&path)? {
            for c in candidates(host) {
                if let Some(helper) = cfg.cred_helpers.get(&c) {
                    return Ok(run_helper(helper, host)?.map(|credential| Found {
                        credential,
                        origin: format!("docker-credential-{helper}"),
                    }));
                }
            }
            for (key, entry) in &cfg.auths {
                if key_matches(key, host) {
                    if let Some(credential) = from_entry(entry, &path, key)? {
                        return Ok(Some(Found {
                            credential,
                            origin: path.display().to_string(),
                        }));
                    }
                }
            }
            if let Some(store) = cfg.creds_store.as_deref().filter(|s| !s.is_empty()) {
                if let Some(credential) = run_helper(store, host)? {
                    return Ok(Some(Found {
                        credential,
                        origin: format!("docker-credential-{store}"),
                    }));
                }
            }
        }
    }
    for path in auth_json_paths() {
        if let Some(cfg) = read_config(&path)? {
            for (key, entry) in &cfg.auths {
                if key_matches(key, host) {
                    if let Some(credential) = from_entry(entry, &path, key)? {
                        return Ok(Some(Found {
                            credential,
                            origin: path.display().to_string(),
                        }));
                    }
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_entries() {
        assert!(key_matches("https://index.docker.io/v1/", "docker.io"));
        assert!(key_matches("r.example:5000", "r.example:5000"));
        assert!(key_matches("https://r.example:5000/v2/", "r.example:5000"));
        assert!(!key_matches("r.example", "r.example:5000"));
        let p = Path::new("/x/config.json");
        let e = AuthEntry {
            auth: Some("dXNlcjpwYTpzcw==".into()),
            ..Default::default()
        };
        assert_eq!(
            from_entry(&e, p, "k").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "pa:ss".into()
            })
        );
        let e = AuthEntry {
            auth: Some("!!".into()),
            ..Default::default()
        };
        let err = from_entry(&e, p, "k").unwrap_err();
        assert!(
            err.contains("/x/config.json") && !err.contains("!!"),
            "{err}"
        );
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
