//! The two hashes BuildKit computes over Go `encoding/json` output: the cache key
//! (`formatCacheKey`) and the URL hash that scopes the ETag index (`urlHash`).
//!
//! Go's encoder is reproduced byte for byte: struct fields in declaration order,
//! `omitempty` rules, HTML-safe string escaping (`<`, `>`, `&`, U+2028, U+2029), and
//! `[]byte` written as padded standard base64.

use base64::Engine;
use kiln_plugin_api::gojson::push_string as push_go_string;
use sha2::{Digest, Sha256};

/// One user-defined request header that takes part in the key (BuildKit `HeaderField`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderField {
    /// Canonical header name (`Accept`, `User-Agent`).
    pub name: String,
    /// The value sent.
    pub value: String,
}

fn push_headers(out: &mut String, headers: &[HeaderField]) {
    out.push('[');
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"Name\":");
        push_go_string(out, &h.name);
        out.push_str(",\"Value\":");
        push_go_string(out, &h.value);
        out.push('}');
    }
    out.push(']');
}

/// The attributes of a step that take part in both hashes.
#[derive(Clone, Debug, Default)]
pub struct KeyAttrs<'a> {
    /// `http.perm` as given (0 when unset; the file still gets 0600).
    pub perm: i64,
    /// `http.uid`.
    pub uid: i64,
    /// `http.gid`.
    pub gid: i64,
    /// `http.authheadersecret` (the secret's name, never its value).
    pub auth_header_secret: Option<&'a str>,
    /// Accepted user headers, sorted by name.
    pub headers: &'a [HeaderField],
}

/// The JSON BuildKit hashes into the cache key.
pub fn cache_key_json(
    filename: &str,
    checksum: &str,
    last_modified: Option<&str>,
    a: &KeyAttrs<'_>,
) -> String {
    let mut s = String::with_capacity(160);
    s.push_str("{\"Filename\":");
    push_go_string(&mut s, filename);
    s.push_str(&format!(
        ",\"Perm\":{},\"UID\":{},\"GID\":{},\"Checksum\":",
        a.perm, a.uid, a.gid
    ));
    push_go_string(&mut s, checksum);
    if let Some(lm) = last_modified.filter(|v| !v.is_empty()) {
        s.push_str(",\"LastModTime\":");
        push_go_string(&mut s, lm);
    }
    if let Some(secret) = a.auth_header_secret.filter(|v| !v.is_empty()) {
        s.push_str(",\"AuthHeaderSecret\":");
        push_go_string(&mut s, secret);
    }
    if !a.headers.is_empty() {
        s.push_str(",\"Header\":");
        push_headers(&mut s, a.headers);
    }
    s.push('}');
    s
}

/// The cache key: `sha256:<hex>` of [`cache_key_json`].
pub fn cache_key(
    filename: &str,
    checksum: &str,
    last_modified: Option<&str>,
    a: &KeyAttrs<'_>,
) -> String {
    sha256_digest(cache_key_json(filename, checksum, last_modified, a).as_bytes())
}

/// The JSON BuildKit hashes into its URL hash: the raw URL and the `http.filename`
/// attribute joined by NUL (a Go `[]byte`, so base64), then the other attributes.
pub fn url_hash_json(url: &str, filename_attr: &str, a: &KeyAttrs<'_>) -> String {
    let mut joined = Vec::with_capacity(url.len() + filename_attr.len() + 1);
    joined.extend_from_slice(url.as_bytes());
    joined.push(0);
    joined.extend_from_slice(filename_attr.as_bytes());
    let mut s = String::with_capacity(200);
    s.push_str("{\"Filename\":\"");
    s.push_str(&base64::engine::general_purpose::STANDARD.encode(joined));
    s.push_str(&format!(
        "\",\"Perm\":{},\"UID\":{},\"GID\":{}",
        a.perm, a.uid, a.gid
    ));
    if let Some(secret) = a.auth_header_secret.filter(|v| !v.is_empty()) {
        s.push_str(",\"AuthHeaderSecret\":");
        push_go_string(&mut s, secret);
    }
    s.push_str(",\"Header\":");
    if a.headers.is_empty() {
        s.push_str("null");
    } else {
        push_headers(&mut s, a.headers);
    }
    s.push('}');
    s
}

/// The URL hash as bare hex (used for file names in the plugin's state).
pub fn url_hash(url: &str, filename_attr: &str, a: &KeyAttrs<'_>) -> String {
    hex::encode(Sha256::digest(
        url_hash_json(url, filename_attr, a).as_bytes(),
    ))
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_foo_key() {
        // BuildKit's TestHTTPSource: /foo serving "content1", no Last-Modified.
        let content = sha256_digest(b"content1");
        let json = cache_key_json("foo", &content, None, &KeyAttrs::default());
        assert_eq!(
            json,
            format!("{{\"Filename\":\"foo\",\"Perm\":0,\"UID\":0,\"GID\":0,\"Checksum\":\"{content}\"}}")
        );
        assert_eq!(
            cache_key("foo", &content, None, &KeyAttrs::default()),
            sha256_digest(json.as_bytes())
        );
        assert_eq!(
            content,
            "sha256:d0b425e00e15a0d36b9b361f02bab63563aed6cb4665083905386c55d5b679fa"
        );
    }

    #[test]
    fn optional_fields_follow_omitempty() {
        let headers = vec![
            HeaderField {
                name: "Accept".into(),
                value: "a/b".into(),
            },
            HeaderField {
                name: "User-Agent".into(),
                value: "x<y>&z".into(),
            },
        ];
        let a = KeyAttrs {
            perm: 0o644,
            uid: 1000,
            gid: 1001,
            auth_header_secret: Some("MY_SECRET"),
            headers: &headers,
        };
        let json = cache_key_json(
            "f.txt",
            "sha256:00",
            Some("Mon, 02 Jan 2006 15:04:05 GMT"),
            &a,
        );
        assert_eq!(
            json,
            "{\"Filename\":\"f.txt\",\"Perm\":420,\"UID\":1000,\"GID\":1001,\"Checksum\":\"sha256:00\",\
             \"LastModTime\":\"Mon, 02 Jan 2006 15:04:05 GMT\",\"AuthHeaderSecret\":\"MY_SECRET\",\
             \"Header\":[{\"Name\":\"Accept\",\"Value\":\"a/b\"},{\"Name\":\"User-Agent\",\"Value\":\"x\\u003cy\\u003e\\u0026z\"}]}"
        );
    }

    #[test]
    fn url_hash_json_shape() {
        let json = url_hash_json("http://h/foo", "", &KeyAttrs::default());
        // base64("http://h/foo\0")
        assert_eq!(
            json,
            "{\"Filename\":\"aHR0cDovL2gvZm9vAA==\",\"Perm\":0,\"UID\":0,\"GID\":0,\"Header\":null}"
        );
        let a = url_hash("http://h/foo", "", &KeyAttrs::default());
        let b = url_hash("http://h/bar", "", &KeyAttrs::default());
        let c = url_hash("http://h/foo", "x", &KeyAttrs::default());
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 64);
    }
}
