//! Sending one request: user headers, authorization from secrets, redirects followed
//! by hand (at most 10, `Authorization` dropped when the host changes), and failures
//! mapped to plugin errors that never show credentials.

use kiln_plugin_api::{ErrorCode, Job, PluginError, Result};
use url::Url;

use crate::ident::{redact_url, scrub, HttpIdentifier};
use crate::proxy::Agents;

/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 10;

/// Secret name prefixes (BuildKit's).
pub const AUTH_HEADER_PREFIX: &str = "HTTP_AUTH_HEADER_";
/// `Bearer` token secret prefix.
pub const AUTH_TOKEN_PREFIX: &str = "HTTP_AUTH_TOKEN_";

/// The `Authorization` header value for `id`, from the job's secrets.
///
/// With `http.authheadersecret`, that secret is required and used verbatim. Otherwise
/// `HTTP_AUTH_HEADER_<host>` (verbatim), then `HTTP_AUTH_TOKEN_<host>` (`Bearer`),
/// the later one winning; both are optional.
pub fn authorization(id: &HttpIdentifier, job: &Job<'_>) -> Result<Option<String>> {
    let as_header = |name: &str, raw: Vec<u8>, bearer: bool| -> Result<String> {
        let text = String::from_utf8(raw).map_err(|_| {
            PluginError::invalid_identifier(format!("{id}: secret {name} is not UTF-8 text"))
        })?;
        let text = text.trim_end_matches(['\r', '\n']);
        if text.contains(['\r', '\n', '\0']) {
            return Err(PluginError::invalid_identifier(format!(
                "{id}: secret {name} is not a valid header value (it contains a line break)"
            )));
        }
        Ok(if bearer {
            format!("Bearer {text}")
        } else {
            text.to_string()
        })
    };
    if let Some(name) = &id.auth_header_secret {
        let raw = job.secret(name).ok_or_else(|| {
            PluginError::unauthorized(format!(
                "{id}: the secret {name} named by http.authheadersecret was not given (use --secret id={name},src=FILE)"
            ))
        })?;
        return as_header(name, raw, false).map(Some);
    }
    let host = id
        .url
        .host_str()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    let mut value = None;
    for (prefix, bearer) in [(AUTH_HEADER_PREFIX, false), (AUTH_TOKEN_PREFIX, true)] {
        let name = format!("{prefix}{host}");
        if let Some(raw) = job.secret(&name) {
            value = Some(as_header(&name, raw, bearer)?);
        }
    }
    Ok(value)
}

/// A response with the URL it finally came from.
pub struct Response {
    /// The ureq response (any status below 400, or 304).
    pub inner: ureq::Response,
    /// The URL after redirects.
    pub url: Url,
}

impl Response {
    /// HTTP status.
    pub fn status(&self) -> u16 {
        self.inner.status()
    }
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<String> {
        self.inner.header(name).map(str::to_string)
    }
}

/// Sends `method` to `id`'s URL with `extra` headers, following redirects; each hop
/// goes through the proxy (or none) its URL calls for.
pub fn send(
    agents: &Agents,
    id: &HttpIdentifier,
    auth: Option<&str>,
    method: &str,
    extra: &[(&str, &str)],
) -> Result<Response> {
    let mut url = id.url.clone();
    let origin = (
        id.url.scheme().to_string(),
        id.url.host_str().map(str::to_string),
        id.url.port_or_known_default(),
    );
    let mut method = method.to_string();
    for hop in 0..=MAX_REDIRECTS {
        let mut req = agents.for_url(&url).request_url(&method, &url);
        for h in &id.headers {
            req = req.set(&h.name, &h.value);
        }
        let same_origin = (
            url.scheme().to_string(),
            url.host_str().map(str::to_string),
            url.port_or_known_default(),
        ) == origin;
        if let Some(a) = auth.filter(|_| same_origin) {
            req = req.set("Authorization", a);
        }
        for (k, v) in extra {
            req = req.set(k, v);
        }
        // The plugin decodes gzip itself (see `fetch`), so it asks for it itself.
        if req.header("Accept-Encoding").is_none() {
            req = req.set("Accept-Encoding", "gzip");
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                drop(r);
                return Err(status_error(id, &url, code));
            }
            Err(ureq::Error::Transport(t)) => return Err(transport_error(&url, &t)),
        };
        let code = resp.status();
        if matches!(code, 301 | 302 | 303 | 307 | 308) {
            let Some(loc) = resp.header("Location").map(str::to_string) else {
                return Err(PluginError::new(
                    ErrorCode::INTERNAL,
                    format!(
                        "{}: redirect status {code} without a Location header",
                        redact_url(&url)
                    ),
                ));
            };
            let next = url.join(&loc).map_err(|e| {
                PluginError::new(
                    ErrorCode::INTERNAL,
                    format!(
                        "{}: invalid redirect target {}: {e}",
                        redact_url(&url),
                        crate::ident::redact_str(&loc)
                    ),
                )
            })?;
            if next.scheme() != "http" && next.scheme() != "https" {
                return Err(PluginError::new(
                    ErrorCode::INTERNAL,
                    format!(
                        "{}: redirect to unsupported scheme {}",
                        redact_url(&url),
                        next.scheme()
                    ),
                ));
            }
            if hop == MAX_REDIRECTS {
                break;
            }
            tracing::debug!(
                "{} redirects ({code}) to {}",
                redact_url(&url),
                redact_url(&next)
            );
            if code == 303 && method != "HEAD" {
                method = "GET".into();
            }
            url = next;
            continue;
        }
        check_framing(&resp).map_err(|why| {
            PluginError::new(
                ErrorCode::NETWORK,
                format!("{}: invalid response: {why}", redact_url(&url)),
            )
        })?;
        return Ok(Response { inner: resp, url });
    }
    Err(PluginError::new(
        ErrorCode::INTERNAL,
        format!("{id}: stopped after {MAX_REDIRECTS} redirects"),
    ))
}

/// The error for an HTTP status of 400 or more.
pub fn status_error(id: &HttpIdentifier, url: &Url, code: u16) -> PluginError {
    let via = if url.as_str() == id.url.as_str() {
        String::new()
    } else {
        format!(" (redirected to {})", redact_url(url))
    };
    let msg = format!("{id}: invalid response status {code}{via}");
    match code {
        401 | 403 => PluginError::unauthorized(msg),
        404 | 410 => PluginError::not_found(msg),
        408 | 429 => PluginError::network(msg),
        500..=599 if code != 501 => PluginError::network(msg),
        _ => PluginError::new(ErrorCode::INTERNAL, msg),
    }
}

fn transport_error(url: &Url, t: &ureq::Transport) -> PluginError {
    use std::error::Error as _;
    let mut detail = t.message().map(str::to_string).unwrap_or_default();
    let mut src = t.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !detail.contains(&text) {
            if !detail.is_empty() {
                detail.push_str(": ");
            }
            detail.push_str(&text);
        }
        src = s.source();
    }
    let msg = scrub(&format!("{}: {}: {detail}", redact_url(url), t.kind()), url);
    match t.kind() {
        ureq::ErrorKind::InvalidUrl
        | ureq::ErrorKind::UnknownScheme
        | ureq::ErrorKind::InvalidProxyUrl => PluginError::new(ErrorCode::INTERNAL, msg),
        // Not HTTP, a malformed status line, too many or too long header fields: the
        // server will answer the same way next time, so this is not retried.
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => {
            PluginError::new(ErrorCode::NETWORK, format!("{msg} (not retried)"))
        }
        _ => PluginError::network(msg),
    }
}

/// Checks how the response says its body ends (RFC 9112 §6.3): every `Content-Length`
/// must be a plain decimal number that fits in 64 bits, several must agree, and a
/// `Transfer-Encoding` must not come with one (a sign of response splitting).
/// Returns the length, if given.
pub fn check_framing(resp: &ureq::Response) -> std::result::Result<Option<u64>, String> {
    let shown = |v: &str| -> String {
        let s: String = v.chars().take(40).collect();
        format!("{s:?}")
    };
    let mut length: Option<u64> = None;
    for value in resp.all("Content-Length") {
        // A list (`5, 5`) is allowed when its members agree.
        for part in value.split(',') {
            let part = part.trim_matches([' ', '\t']);
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("Content-Length {} is not a number", shown(value)));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| format!("Content-Length {} is too large", shown(value)))?;
            match length {
                Some(l) if l != n => {
                    return Err(format!("conflicting Content-Length values {l} and {n}"))
                }
                _ => length = Some(n),
            }
        }
    }
    if length.is_some() && resp.has("Transfer-Encoding") {
        return Err("both Transfer-Encoding and Content-Length".into());
    }
    Ok(length)
}

/// `W/` removed, for comparing ETags the way BuildKit does.
pub fn etag_value(v: &str) -> String {
    v.strip_prefix("W/").unwrap_or(v).to_string()
}
