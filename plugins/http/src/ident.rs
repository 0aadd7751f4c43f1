//! Parsing and validating an `http(s)://` identifier and its attributes (no I/O),
//! and redacting URL credentials for everything shown.

use std::fmt;

use kiln_plugin_api::{AttrSpec, AttrType, PluginError, Request, Result};
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

/// Every attribute this source accepts (its schema: checked by the host before the
/// plugin is called, listed by `kiln plugins show io.kiln.source.v1.http`).
pub fn attributes() -> Vec<AttrSpec> {
    use AttrType::{Octal, String, U64};
    vec![
        AttrSpec::new(
            attr::CHECKSUM,
            String,
            "expected content digest, sha256:<hex>",
        ),
        AttrSpec::new(attr::FILENAME, String, "name of the downloaded file"),
        AttrSpec::new(attr::PERM, Octal, "file mode (default 0600)"),
        AttrSpec::new(attr::UID, U64, "owner uid"),
        AttrSpec::new(attr::GID, U64, "owner gid"),
        AttrSpec::new(
            attr::AUTH_HEADER_SECRET,
            String,
            "secret whose value is the Authorization header",
        ),
        AttrSpec::new(
            "http.header.*",
            String,
            "request header (Accept and User-Agent are sent)",
        ),
        AttrSpec::new(attr::SIG_PUBKEY, String, "PGP public key (not supported)"),
        AttrSpec::new(attr::SIG_SIGNATURE, String, "PGP signature (not supported)"),
        AttrSpec::new(
            attr::MAX_SIZE,
            U64,
            "the longest body accepted, in bytes (overrides max_body_bytes)",
        ),
    ]
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
        // Every attribute of our own prefix must be one the schema declares.
        let known = attributes();
        let names: Vec<&str> = known.iter().map(|a| a.name.as_str()).collect();
        req.deny_unknown("http.", &names)?;
        if let Some(p) = req.attr_octal(attr::PERM)? {
            id.perm = i64::from(p);
        }
        for key in [attr::UID, attr::GID] {
            let Some(n) = req.attr_u64(key)? else {
                continue;
            };
            if n > u64::from(u32::MAX - 1) {
                return Err(bad(key, format!("id {n} is out of range")));
            }
            if key == attr::UID {
                id.uid = n as i64;
            } else {
                id.gid = n as i64;
            }
        }
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
                attr::PERM | attr::UID | attr::GID => {}
                attr::MAX_SIZE => {
                    let n = req.attr_u64(k)?.filter(|n| *n > 0).ok_or_else(|| {
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

/// Go's `strconv.ParseInt(v, 0, 64)` (now shared through the plugin-api).
pub use kiln_plugin_api::attrs::parse_go_int;

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
/// needing the string to parse as a URL (shared with the image plugin).
pub use kiln_source_net::redact_str;

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

    #[test]
    fn unknown_http_attributes_are_refused() {
        let e = HttpIdentifier::parse(&req("http://h/f", &[("http.prem", "0644")])).unwrap_err();
        assert!(e.message.contains("unknown attribute http.prem"), "{e}");
        assert!(HttpIdentifier::parse(&req("http://h/f", &[("other.x", "1")])).is_ok());
        // Every declared attribute is accepted.
        for a in attributes().iter().filter(|a| !a.name.ends_with('*')) {
            let value = if a.name.ends_with("sig.pubkey") || a.name.ends_with("sig.signature") {
                continue;
            } else if a.name == attr::CHECKSUM {
                format!("sha256:{}", "0".repeat(64))
            } else {
                "1".to_string()
            };
            let r = HttpIdentifier::parse(&req("http://h/f", &[(a.name.as_str(), value.as_str())]));
            assert!(r.is_ok(), "{}: {:?}", a.name, r.err());
        }
    }

    /// The whole plugin through the SDK's test doubles, against a one-shot HTTP
    /// server on loopback: the key, the pin, the blob in the content store, the file,
    /// the progress, and the secret header.
    mod with_doubles {
        use std::io::{BufRead, BufReader, Write};
        use std::net::TcpListener;
        use std::sync::mpsc;

        use kiln_plugin_api::testing::{FakeHost, FakeJob};
        use kiln_plugin_api::{ErrorCode, Plugin, Request, Source};

        use crate::HttpSource;

        /// Serves `body` to each of `n` connections; sends each request's headers back.
        fn serve(body: &'static str, n: usize) -> (String, mpsc::Receiver<Vec<String>>) {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/file.txt", l.local_addr().unwrap());
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for conn in l.incoming().take(n) {
                    let mut conn = conn.unwrap();
                    let mut r = BufReader::new(conn.try_clone().unwrap());
                    let mut headers = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                            break;
                        }
                        headers.push(line.trim_end().to_string());
                    }
                    let _ = tx.send(headers);
                    write!(
                        conn,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                    .unwrap();
                }
            });
            (url, rx)
        }

        #[test]
        fn key_snapshot_blob_progress_and_secret() {
            let (url, headers) = serve("hello", 2);
            let host = FakeHost::new();
            let source = HttpSource::new("", host.host()).unwrap();
            let req = Request::new(&url)
                .with_attr("http.filename", "out.txt")
                .with_attr("http.perm", "0640")
                .with_attr("http.authheadersecret", "auth");
            let step = source.resolve(source.identifier(&req).unwrap()).unwrap();
            let fake = FakeJob::new().with_secret("auth", b"Bearer t0ken");
            let key = step.cache_key(0, &fake.job()).unwrap();
            // sha256("hello")
            let digest = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
            assert_eq!(key.pin, digest);
            assert!(!key.key.contains("t0ken"), "{key:?}");
            assert!(
                host.blob(digest).is_some(),
                "the download is a blob in the store"
            );
            let dest = host.staging_dir();
            step.snapshot(&dest, &fake.job()).unwrap();
            assert_eq!(
                std::fs::read_to_string(dest.join("out.txt")).unwrap(),
                "hello"
            );
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dest.join("out.txt"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o640);
            let first = headers.recv().unwrap();
            assert!(
                first
                    .iter()
                    .any(|h| h.eq_ignore_ascii_case("authorization: Bearer t0ken")),
                "{first:?}"
            );
            let p = fake.progress();
            assert!(
                p.iter().any(|e| e.kind == "finish" && e.current == 5),
                "{p:?}"
            );
        }

        #[test]
        fn checksum_mismatch_and_cancellation() {
            let (url, _headers) = serve("hello", 2);
            let host = FakeHost::new();
            let source = HttpSource::new("", host.host()).unwrap();
            let wrong = format!("sha256:{}", "0".repeat(64));
            let req = Request::new(&url).with_attr("http.checksum", wrong.as_str());
            let step = source.resolve(source.identifier(&req).unwrap()).unwrap();
            // With a checksum, the key needs no download; the content is checked when
            // it arrives, and nothing is stored.
            let key = step.cache_key(0, &FakeJob::new().job()).unwrap();
            assert_eq!(key.pin, wrong);
            let e = step
                .snapshot(&host.staging_dir(), &FakeJob::new().job())
                .unwrap_err();
            assert_eq!(e.code, ErrorCode::CHECKSUM_MISMATCH, "{e}");
            assert!(host.blob(&wrong).is_none());
            let fake = FakeJob::new();
            fake.cancel();
            let step = source
                .resolve(source.identifier(&Request::new(&url)).unwrap())
                .unwrap();
            let e = step.cache_key(0, &fake.job()).unwrap_err();
            assert_eq!(e.code, ErrorCode::CANCELLED, "{e}");
        }
    }
}
