//! Image references by the distribution reference grammar, and Docker's
//! normalisation (`busybox` → `docker.io/library/busybox:latest`).
//!
//! Grammar (written out by hand, no regex engine):
//!
//! ```text
//! reference       := name [ ":" tag ] [ "@" digest ]
//! name            := [ domain "/" ] path-component ( "/" path-component )*   (≤ 255 chars)
//! domain          := ( domain-name | "[" ipv6 "]" ) [ ":" port ]
//! domain-name     := domain-component ( "." domain-component )*
//! domain-component:= [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
//! path-component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
//! tag             := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest          := algorithm ":" hex   (validated by [`crate::digest`])
//! ```

#![warn(missing_docs)]

use std::fmt;

use crate::digest::{Digest, DigestError};

/// Docker Hub's canonical domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
const NAME_TOTAL_LENGTH_MAX: usize = 255;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing to parse.
    #[error("repository name must have at least one component")]
    NameEmpty,
    /// The text does not follow the grammar.
    #[error("invalid reference format")]
    InvalidFormat,
    /// The repository part has uppercase letters.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    /// The name is longer than 255 characters.
    #[error("repository name must not be more than 255 characters")]
    NameTooLong,
    /// A bare 64-hex-digit name, which Docker reserves for image ids.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    /// The digest is malformed.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: Option<String>,
    path: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl Reference {
    /// Parses `s` by the grammar, without normalisation (what `oci-layout://` uses).
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        match parse_exact(s) {
            Err(ReferenceError::InvalidFormat) if s.is_empty() => Err(ReferenceError::NameEmpty),
            Err(ReferenceError::InvalidFormat) => {
                let lower = s.to_ascii_lowercase();
                if lower != s && parse_exact(&lower).is_ok() {
                    let name = s.split(['@']).next().unwrap_or(s);
                    Err(ReferenceError::Uppercase(strip_tag(name).to_string()))
                } else {
                    Err(ReferenceError::InvalidFormat)
                }
            }
            other => other,
        }
    }

    /// Parses and normalises as Docker's `ParseNormalizedNamed`: a missing domain
    /// becomes `docker.io`, a one-component Docker Hub name gets `library/`,
    /// `index.docker.io` becomes `docker.io`. No tag is added (see
    /// [`Reference::tag_name_only`]).
    pub fn parse_normalized_named(s: &str) -> Result<Self, ReferenceError> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::HexName(s.to_string()));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote = remainder.split(':').next().unwrap_or(&remainder);
        if remote.to_ascii_lowercase() != remote {
            let remote = remote.split('@').next().unwrap_or(remote);
            return Err(ReferenceError::Uppercase(remote.to_string()));
        }
        let mut r = Self::parse(&format!("{domain}/{remainder}"))?;
        if r.domain.is_none() {
            // Only when the whole name was one path component; cannot happen after a
            // domain was put in front, but keep the invariant explicit.
            r.domain = Some(domain);
        }
        Ok(r)
    }

    /// Adds the tag `latest` when the reference has neither tag nor digest
    /// (Docker's `TagNameOnly`).
    pub fn tag_name_only(mut self) -> Self {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".to_string());
        }
        self
    }

    /// The domain (`docker.io`, `localhost:5000`), if the name has one.
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The repository path inside the domain (`library/busybox`).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full repository name: `[domain/]path`.
    pub fn name(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.path),
            None => self.path.clone(),
        }
    }

    /// The tag, if any.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if any.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }
}

/// `[domain/]path[:tag][@digest]`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The name part of `name[:tag]` (the tag is after the last `:` that follows the
/// last `/`).
fn strip_tag(name_tag: &str) -> &str {
    split_tag(name_tag).0
}

fn split_tag(name_tag: &str) -> (&str, Option<&str>) {
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    }
}

fn parse_exact(s: &str) -> Result<Reference, ReferenceError> {
    let (name_tag, digest) = match s.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (s, None),
    };
    let (name, tag) = split_tag(name_tag);
    if let Some(t) = tag {
        if !is_tag(t) {
            return Err(ReferenceError::InvalidFormat);
        }
    }
    if let Some(d) = digest {
        if !digest_grammar(d) {
            // Say what is wrong with the digest when go-digest's rules can tell.
            return Err(Digest::parse(d)
                .err()
                .map_or(ReferenceError::InvalidFormat, Into::into));
        }
    }
    let components: Vec<&str> = name.split('/').collect();
    let (domain, path_parts) = if components.len() > 1 && is_domain(components[0]) {
        (Some(components[0]), &components[1..])
    } else {
        (None, &components[..])
    };
    if !path_parts.iter().all(|c| is_path_component(c)) {
        return Err(ReferenceError::InvalidFormat);
    }
    if name.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::NameTooLong);
    }
    let digest = digest.map(Digest::parse).transpose()?;
    Ok(Reference {
        domain: domain.map(str::to_string),
        path: path_parts.join("/"),
        tag: tag.map(str::to_string),
        digest,
    })
}

fn split_docker_domain(name: &str) -> (String, String) {
    let (domain, remote) = match name.split_once('/') {
        None => (DEFAULT_DOMAIN, name.to_string()),
        Some((d, r)) if d == "localhost" => (d, r.to_string()),
        Some((d, r)) if d == LEGACY_DEFAULT_DOMAIN => (DEFAULT_DOMAIN, r.to_string()),
        Some((d, r)) if d.contains(['.', ':']) => (d, r.to_string()),
        Some((d, r)) if d.to_ascii_lowercase() != d => (d, r.to_string()),
        Some(_) => (DEFAULT_DOMAIN, name.to_string()),
    };
    let remote = if domain == DEFAULT_DOMAIN && !remote.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remote}")
    } else {
        remote
    };
    (domain.to_string(), remote)
}

fn is_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `algorithm ":" hex{32,}` with algorithm components `[A-Za-z][A-Za-z0-9]*` joined by
/// `+ . _ -`.
fn digest_grammar(d: &str) -> bool {
    let Some((alg, hex)) = d.split_once(':') else {
        return false;
    };
    let alg_ok = alg.split(['+', '.', '_', '-']).all(|c| {
        c.chars().next().is_some_and(|f| f.is_ascii_alphabetic())
            && c.chars().all(|ch| ch.is_ascii_alphanumeric())
    });
    alg_ok && hex.len() >= 32 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some(end) = rest.find(']') else {
            return false;
        };
        let v6 = &rest[..end];
        if v6.is_empty() || !v6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        let after = &rest[end + 1..];
        if after.is_empty() {
            return true;
        }
        match after.strip_prefix(':') {
            Some(p) => ("", Some(p)),
            None => return false,
        }
    } else {
        match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    if d.starts_with('[') {
        return true;
    }
    !host.is_empty()
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
}

fn is_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: &u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(&b[0]) || !alnum(&b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(&b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(&b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (input, name, domain, tag, digest)
    type OkRow = (
        String,
        &'static str,
        Option<&'static str>,
        Option<&'static str>,
        Option<String>,
    );
    type BadRow = (String, fn(&ReferenceError) -> bool);

    const FF: &str = "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// distribution/reference `TestReferenceParse`: (input, name, domain, tag, digest)
    /// or the expected error.
    #[test]
    fn reference_parse_table() {
        let ok: Vec<OkRow> = vec![
            ("test_com".into(), "test_com", None, None, None),
            ("test.com:tag".into(), "test.com", None, Some("tag"), None),
            ("test.com:5000".into(), "test.com", None, Some("5000"), None),
            (
                "test.com/repo:tag".into(),
                "test.com/repo",
                Some("test.com"),
                Some("tag"),
                None,
            ),
            (
                "test:5000/repo".into(),
                "test:5000/repo",
                Some("test:5000"),
                None,
                None,
            ),
            (
                "test:5000/repo:tag".into(),
                "test:5000/repo",
                Some("test:5000"),
                Some("tag"),
                None,
            ),
            (
                format!("test:5000/repo@sha256:{FF}"),
                "test:5000/repo",
                Some("test:5000"),
                None,
                Some(format!("sha256:{FF}")),
            ),
            (
                format!("test:5000/repo:tag@sha256:{FF}"),
                "test:5000/repo",
                Some("test:5000"),
                Some("tag"),
                Some(format!("sha256:{FF}")),
            ),
            (
                "lowercase:Uppercase".into(),
                "lowercase",
                None,
                Some("Uppercase"),
                None,
            ),
            (
                format!("{}a:tag-puts-this-over-max", "a/".repeat(127)),
                "",
                Some("a"),
                Some("tag-puts-this-over-max"),
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                "sub-dom1.foo.com/bar/baz/quux",
                Some("sub-dom1.foo.com"),
                None,
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux:some-long-tag".into(),
                "sub-dom1.foo.com/bar/baz/quux",
                Some("sub-dom1.foo.com"),
                Some("some-long-tag"),
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                "b.gcr.io/test.example.com/my-app",
                Some("b.gcr.io"),
                Some("test.example.com"),
                None,
            ),
            (
                "xn--n3h.com/myimage:xn--n3h.com".into(),
                "xn--n3h.com/myimage",
                Some("xn--n3h.com"),
                Some("xn--n3h.com"),
                None,
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@sha512:{FF}{FF}"),
                "xn--7o8h.com/myimage",
                Some("xn--7o8h.com"),
                Some("xn--7o8h.com"),
                Some(format!("sha512:{FF}{FF}")),
            ),
            (
                "foo_bar.com:8080".into(),
                "foo_bar.com",
                None,
                Some("8080"),
                None,
            ),
            (
                "foo/foo_bar.com:8080".into(),
                "foo/foo_bar.com",
                Some("foo"),
                Some("8080"),
                None,
            ),
            ("192.168.1.1".into(), "192.168.1.1", None, None, None),
            (
                "192.168.1.1:tag".into(),
                "192.168.1.1",
                None,
                Some("tag"),
                None,
            ),
            (
                "192.168.1.1:5000".into(),
                "192.168.1.1",
                None,
                Some("5000"),
                None,
            ),
            (
                "192.168.1.1/repo".into(),
                "192.168.1.1/repo",
                Some("192.168.1.1"),
                None,
                None,
            ),
            (
                "192.168.1.1:5000/repo".into(),
                "192.168.1.1:5000/repo",
                Some("192.168.1.1:5000"),
                None,
                None,
            ),
            (
                "192.168.1.1:5000/repo:5050".into(),
                "192.168.1.1:5000/repo",
                Some("192.168.1.1:5000"),
                Some("5050"),
                None,
            ),
            (
                "[2001:db8::1]/repo".into(),
                "[2001:db8::1]/repo",
                Some("[2001:db8::1]"),
                None,
                None,
            ),
            (
                "[2001:db8:1:2:3:4:5:6]/repo:tag".into(),
                "[2001:db8:1:2:3:4:5:6]/repo",
                Some("[2001:db8:1:2:3:4:5:6]"),
                Some("tag"),
                None,
            ),
            (
                "[2001:db8::1]:5000/repo".into(),
                "[2001:db8::1]:5000/repo",
                Some("[2001:db8::1]:5000"),
                None,
                None,
            ),
            (
                "[2001:db8::1]:5000/repo:tag".into(),
                "[2001:db8::1]:5000/repo",
                Some("[2001:db8::1]:5000"),
                Some("tag"),
                None,
            ),
            (
                format!("[2001:db8::1]:5000/repo@sha256:{FF}"),
                "[2001:db8::1]:5000/repo",
                Some("[2001:db8::1]:5000"),
                None,
                Some(format!("sha256:{FF}")),
            ),
            (
                "[2001:db8::]:5000/repo".into(),
                "[2001:db8::]:5000/repo",
                Some("[2001:db8::]:5000"),
                None,
                None,
            ),
            (
                "[::1]:5000/repo".into(),
                "[::1]:5000/repo",
                Some("[::1]:5000"),
                None,
                None,
            ),
        ];
        for (input, name, domain, tag, digest) in ok {
            let r = Reference::parse(&input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), input, "round trip");
            if !name.is_empty() {
                assert_eq!(r.name(), name, "{input}");
            }
            assert_eq!(r.domain(), domain, "{input}");
            assert_eq!(r.tag(), tag, "{input}");
            assert_eq!(r.digest().map(|d| d.to_string()), digest, "{input}");
        }

        use ReferenceError as E;
        let bad: Vec<BadRow> = vec![
            ("".into(), |e| *e == E::NameEmpty),
            (":justtag".into(), |e| *e == E::InvalidFormat),
            (format!("@sha256:{FF}"), |e| *e == E::InvalidFormat),
            (
                "repo@sha256:ffffffffffffffffffffffffffffffffff".into(),
                |e| matches!(e, E::Digest(DigestError::Encoded { .. })),
            ),
            (format!("validname@invaliddigest:{FF}"), |e| {
                matches!(e, E::Digest(DigestError::Algorithm(_)))
            }),
            ("Uppercase:tag".into(), |e| matches!(e, E::Uppercase(_))),
            ("test:5000/Uppercase/lowercase:tag".into(), |e| {
                matches!(e, E::Uppercase(_))
            }),
            (format!("{}a:tag", "a/".repeat(128)), |e| {
                *e == E::NameTooLong
            }),
            ("aa/asdf$$^/aa".into(), |e| *e == E::InvalidFormat),
            ("[2001:db8::1]".into(), |e| *e == E::InvalidFormat),
            ("[2001:db8::1]:5000".into(), |e| *e == E::InvalidFormat),
            ("[2001:db8::1]:tag".into(), |e| *e == E::InvalidFormat),
            ("[fe80::1%eth0]:5000/repo".into(), |e| {
                *e == E::InvalidFormat
            }),
            ("[fe80::1%@invalidzone]:5000/repo".into(), |e| {
                *e == E::InvalidFormat
            }),
        ];
        for (input, check) in bad {
            let e = Reference::parse(&input).expect_err(&input);
            assert!(check(&e), "{input}: unexpected error {e:?}");
        }
    }

    fn normalized(s: &str) -> Result<String, ReferenceError> {
        Reference::parse_normalized_named(s).map(|r| r.tag_name_only().to_string())
    }

    /// distribution/reference `TestValidateReferenceName` and `TestValidateRemoteName`.
    #[test]
    fn normalized_name_validation() {
        for ok in [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
        ] {
            normalized(ok).unwrap_or_else(|e| panic!("{ok} must be valid: {e}"));
        }
        for bad in [
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            &format!(
                "{}/docker",
                "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_".repeat(4)
            ),
        ] {
            assert!(normalized(bad).is_err(), "{bad} must be invalid");
        }
    }

    /// `llb.Image` normalisation: `ParseNormalizedNamed` + `TagNameOnly`.
    #[test]
    fn normalization_table() {
        let d = "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa";
        let rows: Vec<(String, String)> = vec![
            ("busybox".into(), "docker.io/library/busybox:latest".into()),
            (
                "busybox:1.36".into(),
                "docker.io/library/busybox:1.36".into(),
            ),
            ("user/x".into(), "docker.io/user/x:latest".into()),
            (
                "docker.io/busybox".into(),
                "docker.io/library/busybox:latest".into(),
            ),
            (
                "index.docker.io/user/x:v1".into(),
                "docker.io/user/x:v1".into(),
            ),
            (
                "docker.io/library/foo/bar".into(),
                "docker.io/library/foo/bar:latest".into(),
            ),
            ("localhost/x".into(), "localhost/x:latest".into()),
            ("localhost:5000/x".into(), "localhost:5000/x:latest".into()),
            (
                "127.0.0.1:5000/test/busybox:1".into(),
                "127.0.0.1:5000/test/busybox:1".into(),
            ),
            (
                "example.com/private/moonbase".into(),
                "example.com/private/moonbase:latest".into(),
            ),
            (
                "example.com:8000/privatebase".into(),
                "example.com:8000/privatebase:latest".into(),
            ),
            (
                "test_com/foo".into(),
                "docker.io/test_com/foo:latest".into(),
            ),
            ("Foo/bar".into(), "Foo/bar:latest".into()),
            ("[::1]:5000/repo".into(), "[::1]:5000/repo:latest".into()),
            (
                format!("busybox@{d}"),
                format!("docker.io/library/busybox@{d}"),
            ),
            (
                format!("busybox:latest@{d}"),
                format!("docker.io/library/busybox:latest@{d}"),
            ),
            (
                format!("127.0.0.1:5000/test/busybox@{d}"),
                format!("127.0.0.1:5000/test/busybox@{d}"),
            ),
            ("dbcc1".into(), "docker.io/library/dbcc1:latest".into()),
        ];
        for (input, want) in rows {
            assert_eq!(
                normalized(&input).unwrap_or_else(|e| panic!("{input}: {e}")),
                want,
                "{input}"
            );
        }
        let r = Reference::parse_normalized_named("localhost:5000/x").unwrap();
        assert_eq!(r.domain(), Some("localhost:5000"));
        assert_eq!(r.path(), "x");
        let r = Reference::parse_normalized_named("busybox").unwrap();
        assert_eq!(
            (r.domain(), r.path(), r.tag()),
            (Some("docker.io"), "library/busybox", None)
        );
    }

    #[test]
    fn normalization_errors() {
        assert_eq!(
            normalized("Busybox").unwrap_err().to_string(),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert!(matches!(
            normalized("localhost:5000/Foo"),
            Err(ReferenceError::Uppercase(_))
        ));
        assert!(matches!(
            normalized(&"a".repeat(64)),
            Err(ReferenceError::HexName(_))
        ));
        assert_eq!(normalized("").unwrap_err(), ReferenceError::InvalidFormat);
        assert!(matches!(
            normalized("busybox@sha256:abc"),
            Err(ReferenceError::Digest(_))
        ));
        assert!(matches!(
            normalized("busybox:-bad"),
            Err(ReferenceError::InvalidFormat)
        ));
        assert!(matches!(
            normalized(&format!("busybox:{}", "t".repeat(129))),
            Err(ReferenceError::InvalidFormat)
        ));
    }
}
