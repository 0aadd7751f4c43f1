//! The plugin's `config` table in `kiln.toml`:
//!
//! ```toml
//! [plugins."io.kiln.source.v1.http".config]
//! connect_timeout_secs = 30        # TCP + TLS connect
//! read_timeout_secs = 60           # no byte for this long: the attempt fails (and is retried)
//! retries = 5                      # further attempts after a reset, timeout or 5xx
//! retry_backoff_ms = 250           # first pause; doubles each attempt, capped at 10 s
//! proxy = "http://proxy:3128"      # optional: every request goes through it
//! ca_certs = ["/etc/ssl/extra.pem"]  # extra PEM CA certificates, besides the built-in roots
//! max_concurrent_downloads = 4     # bodies streamed at once in this process
//! user_agent = "kiln/0.1"          # default User-Agent (http.header.user-agent overrides)
//! max_body_bytes = 68719476736     # 64 GiB; a longer body fails (attr http.maxsize overrides)
//! max_decompression_ratio = 100    # a gzip body may inflate at most this much (past 16 MiB)
//! low_speed_limit_bytes = 1024     # slower than this many bytes per second…
//! low_speed_time_secs = 60         # …for this long: the attempt fails (curl's --speed-*)
//! deadline_secs = 21600            # a whole download, retries included, ends after 6 h
//! ```
//!
//! Without `proxy`, the environment chooses per request as Go's
//! `http.ProxyFromEnvironment` does (see [`crate::proxy`]): `HTTPS_PROXY` for https
//! URLs, `HTTP_PROXY` for http URLs, `NO_PROXY` exceptions, never for `localhost` or
//! loopback addresses.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_plugin_api::{parse_config, PluginError, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::proxy::{Agents, ProxyEnv};

/// The parsed configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Connect timeout in seconds.
    pub connect_timeout_secs: u64,
    /// Read timeout in seconds.
    pub read_timeout_secs: u64,
    /// Retries after a retryable failure.
    pub retries: u32,
    /// First backoff in milliseconds.
    pub retry_backoff_ms: u64,
    /// Proxy URL.
    pub proxy: Option<String>,
    /// Extra CA certificate files (PEM).
    pub ca_certs: Vec<PathBuf>,
    /// Concurrent body downloads per process.
    pub max_concurrent_downloads: usize,
    /// The default User-Agent.
    pub user_agent: Option<String>,
    /// The longest body accepted (decoded bytes); `http.maxsize` overrides it per source.
    pub max_body_bytes: u64,
    /// How many times its encoded size a compressed body may inflate to (checked once
    /// it passed [`RATIO_FLOOR`] decoded bytes).
    pub max_decompression_ratio: u64,
    /// The low-speed rule: an attempt that moves fewer than this many bytes per second
    /// over `low_speed_time_secs` fails (0 turns the rule off).
    pub low_speed_limit_bytes: u64,
    /// The window of the low-speed rule, in seconds.
    pub low_speed_time_secs: u64,
    /// The most one download may take, all attempts together, in seconds.
    pub deadline_secs: u64,
}

/// Decoded bytes a compressed body may reach before the ratio guard applies (small,
/// very compressible files are common and harmless).
pub const RATIO_FLOOR: u64 = 16 << 20;

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 30,
            read_timeout_secs: 60,
            retries: 5,
            retry_backoff_ms: 250,
            proxy: None,
            ca_certs: Vec::new(),
            max_concurrent_downloads: 4,
            user_agent: None,
            max_body_bytes: 64 << 30,
            max_decompression_ratio: 100,
            low_speed_limit_bytes: 1024,
            low_speed_time_secs: 60,
            deadline_secs: 6 * 3600,
        }
    }
}

impl Config {
    /// Parses and validates the TOML text handed to the plugin.
    pub fn parse(text: &str) -> Result<Self> {
        let cfg: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            parse_config(text)?
        };
        if cfg.max_concurrent_downloads == 0 {
            return Err(PluginError::invalid_config(
                "max_concurrent_downloads must be at least 1",
            ));
        }
        if cfg.connect_timeout_secs == 0 || cfg.read_timeout_secs == 0 {
            return Err(PluginError::invalid_config(
                "timeouts must be at least 1 second",
            ));
        }
        if cfg.max_body_bytes == 0 {
            return Err(PluginError::invalid_config(
                "max_body_bytes must be at least 1",
            ));
        }
        if cfg.max_decompression_ratio == 0 {
            return Err(PluginError::invalid_config(
                "max_decompression_ratio must be at least 1",
            ));
        }
        if cfg.low_speed_limit_bytes > 0 && cfg.low_speed_time_secs == 0 {
            return Err(PluginError::invalid_config(
                "low_speed_time_secs must be at least 1 when low_speed_limit_bytes is set",
            ));
        }
        if cfg.deadline_secs == 0 {
            return Err(PluginError::invalid_config(
                "deadline_secs must be at least 1",
            ));
        }
        Ok(cfg)
    }

    /// The backoff before attempt `n` (1-based).
    pub fn backoff(&self, n: u32) -> Duration {
        let ms = self
            .retry_backoff_ms
            .saturating_mul(1u64 << n.saturating_sub(1).min(16));
        Duration::from_millis(ms.min(10_000))
    }

    /// Builds the HTTP agents: timeouts, no automatic redirects (the plugin follows
    /// them itself), CA roots, and the configured proxy or, without one, the
    /// environment's proxies.
    pub fn agents(&self) -> Result<Agents> {
        let tls = if self.ca_certs.is_empty() {
            None
        } else {
            Some(self.tls_config()?)
        };
        // A stalled body moves 0 bytes per second: the low-speed window bounds a
        // silent read as well.
        let read_timeout = if self.low_speed_limit_bytes > 0 {
            self.read_timeout_secs.min(self.low_speed_time_secs)
        } else {
            self.read_timeout_secs
        };
        let builder = || {
            let b = ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(self.connect_timeout_secs))
                .timeout_read(Duration::from_secs(read_timeout))
                .timeout_write(Duration::from_secs(self.read_timeout_secs))
                .redirects(0)
                .max_idle_connections_per_host(4)
                // The environment is read here, not by ureq (whose rules differ).
                .try_proxy_from_env(false)
                .user_agent(
                    self.user_agent
                        .as_deref()
                        .unwrap_or(concat!("kiln/", env!("CARGO_PKG_VERSION"))),
                );
            match &tls {
                Some(t) => b.tls_config(t.clone()),
                None => b,
            }
        };
        match &self.proxy {
            Some(p) => {
                let proxy = ureq::Proxy::new(p).map_err(|e| {
                    PluginError::invalid_config(format!(
                        "proxy {}: {e}",
                        crate::ident::redact_str(p)
                    ))
                })?;
                Ok(Agents::single(builder().proxy(proxy).build()))
            }
            None => Ok(Agents::from_env(builder, ProxyEnv::from_env())),
        }
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for path in &self.ca_certs {
            let mut n = 0;
            let iter = CertificateDer::pem_file_iter(path).map_err(|e| {
                PluginError::invalid_config(format!("ca_certs: {}: {e}", path.display()))
            })?;
            for cert in iter {
                let cert = cert.map_err(|e| {
                    PluginError::invalid_config(format!("ca_certs: {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    PluginError::invalid_config(format!("ca_certs: {}: {e}", path.display()))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(PluginError::invalid_config(format!(
                    "ca_certs: {}: no PEM certificate in the file",
                    path.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PluginError::internal(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.retries, 5);
        let c = Config::parse("retries = 2\nread_timeout_secs = 5\n").unwrap();
        assert_eq!((c.retries, c.read_timeout_secs), (2, 5));
        let e = Config::parse("retrys = 2").unwrap_err();
        assert!(e.message.contains("retrys"), "{e}");
        for bad in [
            "max_body_bytes = 0",
            "max_decompression_ratio = 0",
            "deadline_secs = 0",
            "low_speed_time_secs = 0",
            "max_body_bytes = -1",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Config::parse("").unwrap().max_body_bytes, 64 << 30);
        let e = Config::parse("max_concurrent_downloads = 0").unwrap_err();
        assert!(e.message.contains("max_concurrent_downloads"), "{e}");
        let e = Config::parse("ca_certs = [\"/nonexistent/ca.pem\"]")
            .unwrap()
            .agents()
            .unwrap_err();
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
        assert!(Config::parse("proxy = \"http://127.0.0.1:3128\"")
            .unwrap()
            .agents()
            .is_ok());
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c = Config::default();
        assert_eq!(c.backoff(1), Duration::from_millis(250));
        assert_eq!(c.backoff(2), Duration::from_millis(500));
        assert_eq!(c.backoff(30), Duration::from_secs(10));
    }
}
