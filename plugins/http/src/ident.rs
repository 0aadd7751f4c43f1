//! Parsing and validating an `http(s)://` identifier and its attributes (no I/O),
//! and redacting URL credentials for everything shown.

use std::fmt;

use kiln_plugin_api::{PluginError, Request, Result};
use url::Url;

use crate::gojson::{HeaderField, KeyAttrs};

/// The attribute keys this source reads.
pub mod attr {
    /// Expected content digest (`sha256:<hex>`).
    pub const CHECKSUM: &str = "http.checksum";
    /// Output file name.
    pub const FILENAME: &str = "http.filename";
    /// File mode, base prefix rules of Go's `ParseInt(v, 0, 64)` (`0644` is octal).
    pub const PERM: &str = "http.perm";
    /// Owner uid.
    pub const UID: &str = "http.uid";
    /// Owner gid.
    pub const GID: &str = "http.gid";
    /// Secret whose value is the verbatim `Authorization` header.
    pub const AUTH_HEADER_SECRET: &str = "http.authheadersecret";
    /// Prefix of user headers (`Accept` and `User-Agent` are honoured).
    pub const HEADER_PREFIX: &str = "http.header.";
    /// PGP signature verification (not supported).
    pub const SIG_PUBKEY: &str = "http.sig.pubkey";
    /// PGP signature verification (not supported).
    pub const SIG_SIGNATURE: &str = "http.sig.signature";
    /// kiln's own: the longest body accepted for this source, in bytes (overrides the
    /// plugin's `max_body_bytes`; not part of the cache key).
    pub const MAX_SIZE: &str = "http.maxsize";
}

/// A parsed `http(s)://` identifier.
#[derive(Clone)]
pub struct HttpIdentifier {
    /// The URL as written (`scheme://rest`), credentials included: for requests and
    /// the URL hash only, never shown.
    pub raw: String,
    /// The parsed URL used for requests.
    pub url: Url,
    /// `raw` with credentials redacted: the canonical form shown everywhere.
    pub shown: String,
    /// `http.checksum`.
    pub checksum: Option<String>,
    /// `http.filename` as given.
    pub filename: Option<String>,
    /// `http.perm` (0 when unset).
    pub perm: i64,
    /// `http.uid`.
    pub uid: i64,
    /// `http.gid`.
    pub gid: i64,
    /// `http.authheadersecret`.
    pub auth_header_secret: Option<String>,
    /// Accepted user headers, sorted by name.
    pub headers: Vec<HeaderField>,
    /// `http.maxsize`: this source's body limit, if set.
    pub max_size: Option<u64>,
}

impl fmt::Display for HttpIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for HttpIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpIdentifier")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

impl HttpIdentifier {
    /// The attributes that enter the key and the URL hash.
    pub fn key_attrs(&self) -> KeyAttrs<'_> {
        KeyAttrs {
            perm: self.perm,
            uid: self.uid,
            gid: self.gid,
            auth_header_secret: self.auth_header_secret.as_deref(),
            headers: &self.headers,
        }
    }

    /// The URL hash scoping this identifier's ETag index and memo entries.
    pub fn url_hash(&self) -> String {
        crate::gojson::url_hash(
            &self.raw,
            self.filename.as_deref().unwrap_or(""),
            &self.key_attrs(),
        )
    }

    /// The mode given to the file (default 0600).
    pub fn file_mode(&self) -> u32 {
        if self.perm == 0 {
            0o600
        } else {
            self.perm as u32
        }
    }

    /// Parses `req` (scheme `http` or `https`).
    pub fn parse(req: &Request) -> Result<Self> {
        let scheme = req.scheme.as_str();
        if scheme != "http" && scheme != "https" {
            return Err(PluginError::invalid_identifier(format!(
                "the http source does not serve scheme {scheme:?}"
            )));
        }
        let raw = format!("{scheme}://{}", req.reference);
        let shown = redact_str(&raw);
        let url = Url::parse(&raw).map_err(|e| {
            PluginError::invalid_identifier(format!("{shown}: not a valid URL: {e}"))
        })?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(PluginError::invalid_identifier(format!(
                "{shown}: the URL has no host"
            )));
        }
        if url.cannot_be_a_base() {
            return Err(PluginError::invalid_identifier(format!(
                "{shown}: not a valid URL"
            )));
        }
        let mut id = HttpIdentifier {
            raw,
            url,
            shown,
            checksum: None,
            filename: None,
            perm: 0,
            uid: 0,
            gid: 0,
            auth_header_secret: None,
            headers: Vec::new(),
            max_size: None,
        };
        let bad = |key: &str, why: String| {
            PluginError::invalid_identifier(format!(
                "{}: attribute {key}: {why}",
                id_shown(&req.scheme, &req.reference)
            ))
        };
        for (k, v) in &req.attrs {
            match k.as_str() {
                attr::CHECKSUM => {
                    if !is_sha256_digest(v) {
                        return Err(bad(
                            k,
                            format!("expected sha256:<64 lowercase hex digits>, got {v:?}"),
                        ));
                    }
                    id.checksum = Some(v.clone());
                }
                attr::FILENAME => id.filename = Some(v.clone()),
                attr::PERM => {
                    let p = parse_go_int(v).map_err(|e| bad(k, e))?;
                    if !(0..=0o7777).contains(&p) {
                        return Err(bad(k, format!("mode {v:?} is outside 0..07777")));
                    }
                    id.perm = p;
                }
                attr::UID | attr::GID => {
                    let n = parse_go_int(v).map_err(|e| bad(k, e))?;
                    if !(0..=i64::from(u32::MAX - 1)).contains(&n) {
                        return Err(bad(k, format!("id {v:?} is out of range")));
                    }
                    if k == attr::UID {
                        id.uid = n;
                    } else {
                        id.gid = n;
                    }
                }
                attr::MAX_SIZE => {
                    let n = v
                        .trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            bad(k, format!("expected a positive number of bytes, got {v:?}"))
                        })?;
                    id.max_size = Some(n);
                }
                attr::AUTH_HEADER_SECRET => {
                    if !v.is_empty() {
                        id.auth_header_secret = Some(v.clone());
                    }
                }
                attr::SIG_PUBKEY | attr::SIG_SIGNATURE => {
                    return Err(PluginError::unsupported(format!(
                        "{}: attribute {k}: PGP signature verification is not supported by this plugin",
                        id.shown
                    )));
                }
                _ => {
                    if let Some(name) = k.strip_prefix(attr::HEADER_PREFIX) {
                        let name = canonical_header_key(name);
                        if name == "Accept" || name == "User-Agent" {
                            if v.contains(['\r', '\n', '\0']) {
                                return Err(bad(
                                    k,
                                    "header values may not contain CR, LF or NUL".into(),
                                ));
                            }
                            id.headers.push(HeaderField {
                                name,
                                value: v.clone(),
                            });
                        }
                    }
                }
            }
        }
        id.headers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(id)
    }
}

fn id_shown(scheme: &str, reference: &str) -> String {
    redact_str(&format!("{scheme}://{reference}"))
}

/// Whether `v` is `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(v: &str) -> bool {
    v.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Go's `strconv.ParseInt(v, 0, 64)`: sign, then `0x`, `0o`, `0b` or a leading `0`
/// (octal) select the base; underscores are allowed only with a prefix.
pub fn parse_go_int(v: &str) -> std::result::Result<i64, String> {
    let err = || format!("{v:?} is not an integer");
    let (neg, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    if body.is_empty() {
        return Err(err());
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower.clone(), true)
    } else {
        (10, lower.clone(), false)
    };
    if digits.contains('_')
        && (!prefixed || digits.starts_with('_') || digits.ends_with('_') || digits.contains("__"))
    {
        return Err(err());
    }
    let digits = digits.replace('_', "");
    if digits.is_empty() || digits.starts_with(['+', '-']) {
        return Err(err());
    }
    let n = i64::from_str_radix(&digits, radix).map_err(|_| err())?;
    Ok(if neg { -n } else { n })
}

/// Go's `http.CanonicalHeaderKey`: `user-agent` → `User-Agent`.
pub fn canonical_header_key(name: &str) -> String {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return name.to_string();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Replaces the user and password of a URL-looking string with `xxxxx`, without
/// needing the string to parse as a URL.
pub fn redact_str(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let auth_start = scheme_end + 3;
    let rest = &s[auth_start..];
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..auth_end];
    let Some(at) = authority.rfind('@') else {
        return s.to_string();
    };
    let userinfo = &authority[..at];
    let redacted = if userinfo.contains(':') {
        "xxxxx:xxxxx"
    } else {
        "xxxxx"
    };
    format!("{}{}{}", &s[..auth_start], redacted, &s[auth_start + at..])
}

/// Redacts a parsed URL.
pub fn redact_url(u: &Url) -> String {
    redact_str(u.as_str())
}

/// Removes any occurrence of the URL's password (and user) from a message that
/// might quote it, e.g. from an underlying library.
pub fn scrub(message: &str, u: &Url) -> String {
    let mut out = message.replace(u.as_str(), &redact_url(u));
    for secret in [u.password().unwrap_or(""), u.username()] {
        if secret.len() >= 3 {
            out = out.replace(secret, "xxxxx");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn req(url: &str, attrs: &[(&str, &str)]) -> Request {
        let (scheme, rest) = url.split_once("://").unwrap();
        Request {
            scheme: scheme.into(),
            reference: rest.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            platform: None,
        }
    }

    #[test]
    fn parses_attrs() {
        let id = HttpIdentifier::parse(&req(
            "https://example.com/a/b.tgz?x=1",
            &[
                ("http.perm", "0644"),
                ("http.uid", "1000"),
                ("http.gid", "0x10"),
                ("http.filename", "out.tgz"),
                ("http.header.user-agent", "ua/1"),
                ("http.header.accept", "application/json"),
                ("http.header.x-other", "dropped"),
                ("unrelated.attr", "ignored"),
            ],
        ))
        .unwrap();
        assert_eq!(id.perm, 0o644);
        assert_eq!(id.uid, 1000);
        assert_eq!(id.gid, 16);
        assert_eq!(id.file_mode(), 0o644);
        assert_eq!(id.filename.as_deref(), Some("out.tgz"));
        let names: Vec<_> = id.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["Accept", "User-Agent"]);
        assert_eq!(id.to_string(), "https://example.com/a/b.tgz?x=1");
    }

    #[test]
    fn default_mode_is_0600() {
        let id = HttpIdentifier::parse(&req("http://h/f", &[])).unwrap();
        assert_eq!((id.perm, id.file_mode()), (0, 0o600));
    }

    #[test]
    fn rejects_bad_input_with_the_attribute_named() {
        for (attrs, needle) in [
            (vec![("http.perm", "rw")], "http.perm"),
            (vec![("http.perm", "010000")], "http.perm"),
            (vec![("http.uid", "-1")], "http.uid"),
            (vec![("http.checksum", "md5:abc")], "http.checksum"),
            (vec![("http.checksum", "sha256:ABC")], "http.checksum"),
            (
                vec![("http.header.accept", "a\r\nX: y")],
                "http.header.accept",
            ),
            (vec![("http.sig.pubkey", "k")], "http.sig.pubkey"),
        ] {
            let e = HttpIdentifier::parse(&req("http://u:hunter22@h/f", &attrs)).unwrap_err();
            assert!(e.message.contains(needle), "{e}");
            assert!(!e.message.contains("hunter22"), "{e}");
        }
        let e = HttpIdentifier::parse(&req("http://user:hunter22@/x", &[])).unwrap_err();
        assert!(!e.message.contains("hunter22"), "{e}");
        assert!(HttpIdentifier::parse(&req("http://", &[])).is_err());
    }

    #[test]
    fn go_int_parsing() {
        assert_eq!(parse_go_int("0644"), Ok(420));
        assert_eq!(parse_go_int("420"), Ok(420));
        assert_eq!(parse_go_int("0o644"), Ok(420));
        assert_eq!(parse_go_int("0x1A4"), Ok(420));
        assert_eq!(parse_go_int("0b1"), Ok(1));
        assert_eq!(parse_go_int("0"), Ok(0));
        assert_eq!(parse_go_int("-5"), Ok(-5));
        assert_eq!(parse_go_int("0_644"), Ok(420));
        assert!(parse_go_int("1_0").is_err());
        assert!(parse_go_int("089").is_err());
        assert!(parse_go_int("").is_err());
        assert!(parse_go_int("0x").is_err());
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_str("https://u:p@h/x"), "https://xxxxx:xxxxx@h/x");
        assert_eq!(redact_str("https://tok@h:8/x@y"), "https://xxxxx@h:8/x@y");
        assert_eq!(redact_str("https://h/x?a=b@c"), "https://h/x?a=b@c");
        assert_eq!(redact_str("no url here"), "no url here");
        let id = HttpIdentifier::parse(&req("https://alice:s3cret@h/f", &[])).unwrap();
        assert_eq!(id.to_string(), "https://xxxxx:xxxxx@h/f");
        assert!(!format!("{id:?}").contains("s3cret"));
        assert_eq!(
            scrub("GET https://alice:s3cret@h/f failed (s3cret)", &id.url),
            "GET https://xxxxx:xxxxx@h/f failed (xxxxx)"
        );
    }

    #[test]
    fn header_canonicalisation() {
        assert_eq!(canonical_header_key("user-agent"), "User-Agent");
        assert_eq!(canonical_header_key("ACCEPT"), "Accept");
        assert_eq!(canonical_header_key("bad key"), "bad key");
    }
}
