//! The plugin's `config` table in `kiln.toml` (modelled on `buildkitd.toml`'s registry
//! section):
//!
//! ```toml
//! [plugins."io.kiln.source.v1.image".config]
//! max_concurrent_downloads = 3
//! retries = 4
//! [plugins."io.kiln.source.v1.image".config.registry."docker.io"]
//! mirrors = ["mirror.example.com:5000"]
//! [plugins."io.kiln.source.v1.image".config.registry."10.0.0.5:5000"]
//! http = true          # plain HTTP
//! insecure = true      # HTTPS without certificate verification
//! ca = ["/etc/kiln/registry-ca.pem"]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

/// The whole table; unknown keys are refused.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Layers downloaded at once per pull.
    #[serde(default = "default_concurrency")]
    pub max_concurrent_downloads: usize,
    /// Retries of a request after a connection error, a timeout, 429 or a 5xx.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// The first retry's delay; it doubles per retry.
    #[serde(default = "default_backoff")]
    pub retry_backoff_ms: u64,
    /// Connect timeout in seconds.
    #[serde(default = "default_connect")]
    pub connect_timeout_secs: u64,
    /// Read timeout (between bytes) in seconds.
    #[serde(default = "default_read")]
    pub read_timeout_secs: u64,
    /// Per-registry settings by host (`host[:port]`, `docker.io` for Docker Hub).
    #[serde(default)]
    pub registry: BTreeMap<String, RegistryConfig>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            max_concurrent_downloads: default_concurrency(),
            retries: default_retries(),
            retry_backoff_ms: default_backoff(),
            connect_timeout_secs: default_connect(),
            read_timeout_secs: default_read(),
            registry: BTreeMap::new(),
        }
    }
}

fn default_concurrency() -> usize {
    3
}
fn default_retries() -> u32 {
    4
}
fn default_backoff() -> u64 {
    200
}
fn default_connect() -> u64 {
    30
}
fn default_read() -> u64 {
    60
}

/// One registry's settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Hosts tried before this registry, in order.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// Plain HTTP (default for loopback hosts).
    pub http: Option<bool>,
    /// HTTPS without verifying the certificate.
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificate files (PEM) trusted for this host.
    #[serde(default)]
    pub ca: Vec<String>,
}

impl ImageConfig {
    /// The settings of `host` (defaults when none are configured).
    pub fn registry(&self, host: &str) -> RegistryConfig {
        self.registry.get(host).cloned().unwrap_or_default()
    }

    /// Whether `host` is spoken to in plain HTTP: `http = true`, or a loopback host
    /// without an explicit `http = false`.
    pub fn plain_http(&self, host: &str) -> bool {
        self.registry(host)
            .http
            .unwrap_or_else(|| is_loopback(host))
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_concurrent_downloads == 0 {
            return Err("max_concurrent_downloads must be at least 1".into());
        }
        for (host, r) in &self.registry {
            if r.http == Some(true) && (r.insecure || !r.ca.is_empty()) {
                return Err(format!(
                    "registry.{host:?}: http = true cannot be combined with insecure or ca (those are TLS settings)"
                ));
            }
        }
        Ok(())
    }
}

/// `localhost`, `127.0.0.0/8` or `::1`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.9.9.9",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:443",
            "[::2]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn table() {
        let c: ImageConfig = kiln_plugin_api::parse_config(
            "max_concurrent_downloads = 2\n[registry.\"r:5000\"]\nmirrors = [\"m:1\"]\ninsecure = true\n[registry.\"127.0.0.1:5000\"]\nhttp = false\n",
        )
        .unwrap();
        assert_eq!(c.max_concurrent_downloads, 2);
        assert_eq!(c.registry("r:5000").mirrors, vec!["m:1".to_string()]);
        assert!(!c.plain_http("r:5000"));
        assert!(!c.plain_http("127.0.0.1:5000"));
        assert!(c.plain_http("localhost:1"));
        assert!(kiln_plugin_api::parse_config::<ImageConfig>("mirrors = 1").is_err());
        let bad: ImageConfig =
            kiln_plugin_api::parse_config("[registry.x]\nhttp = true\ninsecure = true\n").unwrap();
        assert!(bad.validate().is_err());
    }
}
