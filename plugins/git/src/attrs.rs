//! The git source's attributes (BuildKit's `solver/pb/attr.go` names) and their
//! parse rules. Each parser names the attribute in its error.
//!
//! kiln is stricter than BuildKit where BuildKit silently misreads input: a boolean
//! must be `true` or `false` (BuildKit reads anything but `true` as false), and an
//! unknown `git.*` attribute is an error instead of being ignored.

#![warn(missing_docs)]

/// `git.keepgitdir`: keep the `.git` directory in the checkout.
pub const KEEP_GIT_DIR: &str = "git.keepgitdir";
/// `git.fullurl`: the real remote URL; overrides the remote of the identifier.
pub const FULL_URL: &str = "git.fullurl";
/// `git.authheadersecret`: name of the secret holding a verbatim `Authorization` value.
pub const AUTH_HEADER_SECRET: &str = "git.authheadersecret";
/// `git.authtokensecret`: name of the secret holding a token (sent as basic auth).
pub const AUTH_TOKEN_SECRET: &str = "git.authtokensecret";
/// `git.knownsshhosts`: known_hosts content for ssh remotes.
pub const KNOWN_SSH_HOSTS: &str = "git.knownsshhosts";
/// `git.mountsshsock`: the id of the ssh agent socket to forward.
pub const MOUNT_SSH_SOCK: &str = "git.mountsshsock";
/// `git.checksum`: expected commit (or tag object) sha, a hex prefix.
pub const CHECKSUM: &str = "git.checksum";
/// `git.skipsubmodules`: do not check out submodules.
pub const SKIP_SUBMODULES: &str = "git.skipsubmodules";
/// `git.mtime`: `checkout` (default) or `commit`.
pub const MTIME: &str = "git.mtime";
/// `git.fetchbycommit`: fetch the commit named by `git.checksum` without `ls-remote`.
pub const FETCH_BY_COMMIT: &str = "git.fetchbycommit";
/// `git.bundle`: fetch commits from a bundle blob (`*+blob://name@sha256:…`).
pub const BUNDLE: &str = "git.bundle";
/// `git.checkoutbundle`: output a single bundle file instead of a checkout.
pub const CHECKOUT_BUNDLE: &str = "git.checkoutbundle";
/// `git.advice`: let git print its advice messages.
pub const ADVICE: &str = "git.advice";
/// `git.sig.pubkey`: the public key(s) that must have signed the commit or tag.
pub const SIG_PUBKEY: &str = "git.sig.pubkey";
/// `git.sig.rejectexpired`: refuse signatures made with expired keys.
pub const SIG_REJECT_EXPIRED: &str = "git.sig.rejectexpired";
/// `git.sig.requiresignedtag`: only a signed tag satisfies verification.
pub const SIG_REQUIRE_SIGNED_TAG: &str = "git.sig.requiresignedtag";
/// `git.sig.ignoresignedtag`: verify the commit even when the tag is signed.
pub const SIG_IGNORE_SIGNED_TAG: &str = "git.sig.ignoresignedtag";
/// `oci.session`: the session that holds the bundle's OCI store.
pub const OCI_SESSION: &str = "oci.session";
/// `oci.store`: the name of the OCI store that holds the bundle.
pub const OCI_STORE: &str = "oci.store";

/// Every attribute the git source accepts.
pub const ALL: &[&str] = &[
    KEEP_GIT_DIR,
    FULL_URL,
    AUTH_HEADER_SECRET,
    AUTH_TOKEN_SECRET,
    KNOWN_SSH_HOSTS,
    MOUNT_SSH_SOCK,
    CHECKSUM,
    SKIP_SUBMODULES,
    MTIME,
    FETCH_BY_COMMIT,
    BUNDLE,
    CHECKOUT_BUNDLE,
    ADVICE,
    SIG_PUBKEY,
    SIG_REJECT_EXPIRED,
    SIG_REQUIRE_SIGNED_TAG,
    SIG_IGNORE_SIGNED_TAG,
    OCI_SESSION,
    OCI_STORE,
];

/// The secret names BuildKit's `llb.Git` sets when the client names none.
pub const DEFAULT_AUTH_HEADER_SECRET: &str = "GIT_AUTH_HEADER";
/// See [`DEFAULT_AUTH_HEADER_SECRET`].
pub const DEFAULT_AUTH_TOKEN_SECRET: &str = "GIT_AUTH_TOKEN";

/// An attribute with a bad value; the message names the attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("attribute {key}: {message}")]
pub struct AttrError {
    /// The attribute.
    pub key: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl AttrError {
    /// An error about attribute `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }
}

/// What `git.mtime` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MtimePolicy {
    /// Files get the time of the checkout (default).
    #[default]
    Checkout,
    /// Every file gets the commit time.
    Commit,
}

impl MtimePolicy {
    /// The attribute value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Checkout => "checkout",
            Self::Commit => "commit",
        }
    }
}

/// Parses a boolean attribute: `true`, `false`, or empty (false).
pub fn parse_bool(key: &'static str, v: &str) -> Result<bool, AttrError> {
    match v {
        "true" => Ok(true),
        "false" | "" => Ok(false),
        _ => Err(AttrError::new(
            key,
            format!("expected \"true\" or \"false\", got {v:?}"),
        )),
    }
}

/// Parses `git.mtime`.
pub fn parse_mtime(v: &str) -> Result<MtimePolicy, AttrError> {
    match v {
        "" | "checkout" => Ok(MtimePolicy::Checkout),
        "commit" => Ok(MtimePolicy::Commit),
        _ => Err(AttrError::new(
            MTIME,
            format!("invalid value {v:?} (expected \"checkout\" or \"commit\")"),
        )),
    }
}

/// Parses `git.checksum`: hex only (a prefix is allowed), at most 64 digits; returned
/// lowercase, as git prints shas.
pub fn parse_checksum(v: &str) -> Result<String, AttrError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(AttrError::new(
            CHECKSUM,
            format!("invalid checksum {v:?}, expected a hex commit hash"),
        ));
    }
    if v.len() > 64 {
        return Err(AttrError::new(
            CHECKSUM,
            format!(
                "checksum is {} hex digits long; a git object id has at most 64",
                v.len()
            ),
        ));
    }
    Ok(v.to_ascii_lowercase())
}

/// Whether `s` is a full commit sha: 40 (sha1) or 64 (sha256) lowercase hex digits.
pub fn is_commit_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Parses a secret or ssh-agent id: printable, no whitespace.
pub fn parse_name(key: &'static str, v: &str) -> Result<String, AttrError> {
    if v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(AttrError::new(
            key,
            format!("{v:?} is not a valid name (no spaces or control characters)"),
        ));
    }
    Ok(v.to_string())
}

/// Checks `git.knownsshhosts`: known_hosts lines `[@marker] hosts keytype key`; blank
/// lines and `#` comments are allowed.
pub fn parse_known_hosts(v: &str) -> Result<String, AttrError> {
    for (n, line) in v.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = line.split_whitespace().count();
        let need = if line.starts_with('@') { 4 } else { 3 };
        if fields < need {
            return Err(AttrError::new(
                KNOWN_SSH_HOSTS,
                format!(
                    "line {}: expected \"[@marker] <hosts> <key type> <base64 key>\"",
                    n + 1
                ),
            ));
        }
    }
    Ok(v.to_string())
}

/// Where a `git.bundle` comes from: an image or OCI-layout blob pinned by sha256.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleLocator {
    /// `docker-image+blob` or `oci-layout+blob`.
    pub scheme: String,
    /// The repository or store-local name.
    pub name: String,
    /// `sha256:<64 hex>`.
    pub digest: String,
}

impl std::fmt::Display for BundleLocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}@{}", self.scheme, self.name, self.digest)
    }
}

/// Parses `git.bundle`: `docker-image+blob://NAME@sha256:<hex>` or
/// `oci-layout+blob://NAME@sha256:<hex>`.
pub fn parse_bundle(v: &str) -> Result<BundleLocator, AttrError> {
    let err = |m: String| AttrError::new(BUNDLE, m);
    let (scheme, rest) = v
        .split_once("://")
        .ok_or_else(|| err(format!("{v:?} is not a blob locator (expected docker-image+blob://NAME@sha256:HEX or oci-layout+blob://NAME@sha256:HEX)")))?;
    if scheme != "docker-image+blob" && scheme != "oci-layout+blob" {
        return Err(err(format!(
            "git.bundle locator scheme {scheme:?} is not supported (expected docker-image+blob or oci-layout+blob)"
        )));
    }
    let (name, digest) = rest
        .rsplit_once('@')
        .ok_or_else(|| err("the bundle locator needs a digest (NAME@sha256:HEX)".into()))?;
    let valid_name = !name.is_empty()
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'.' | b'_' | b'-' | b':')
                })
        });
    if !valid_name {
        return Err(err(format!("invalid bundle repository name {name:?}")));
    }
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| err(format!("invalid digest {digest:?}")))?;
    if alg != "sha256" {
        return Err(err(format!(
            "digest algorithm {alg:?} not supported (only sha256)"
        )));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err(format!(
            "invalid sha256 digest {digest:?}: expected 64 lowercase hex digits"
        )));
    }
    Ok(BundleLocator {
        scheme: scheme.to_string(),
        name: name.to_string(),
        digest: digest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        assert_eq!(parse_bool(KEEP_GIT_DIR, "true"), Ok(true));
        assert_eq!(parse_bool(KEEP_GIT_DIR, "false"), Ok(false));
        assert_eq!(parse_bool(KEEP_GIT_DIR, ""), Ok(false));
        let e = parse_bool(KEEP_GIT_DIR, "yes").unwrap_err();
        assert_eq!(
            e.to_string(),
            "attribute git.keepgitdir: expected \"true\" or \"false\", got \"yes\""
        );
        assert!(parse_bool(SKIP_SUBMODULES, "1").is_err());
        assert!(parse_bool(FETCH_BY_COMMIT, "TRUE").is_err());
    }

    #[test]
    fn mtime() {
        assert_eq!(parse_mtime(""), Ok(MtimePolicy::Checkout));
        assert_eq!(parse_mtime("checkout"), Ok(MtimePolicy::Checkout));
        assert_eq!(parse_mtime("commit"), Ok(MtimePolicy::Commit));
        let e = parse_mtime("now").unwrap_err().to_string();
        assert!(e.contains("git.mtime") && e.contains("\"now\""), "{e}");
    }

    #[test]
    fn checksums() {
        assert_eq!(parse_checksum("deadBEEF").unwrap(), "deadbeef");
        assert_eq!(parse_checksum(&"a".repeat(64)).unwrap(), "a".repeat(64));
        for bad in ["", "xyz", "dead beef", "v1.0", &"a".repeat(65)] {
            let e = parse_checksum(bad).unwrap_err();
            assert_eq!(e.key, CHECKSUM, "{bad}");
        }
        assert!(parse_checksum("main")
            .unwrap_err()
            .to_string()
            .contains("expected a hex commit hash"));
    }

    #[test]
    fn commit_shas() {
        assert!(is_commit_sha(&"0123456789abcdef".repeat(4)[..40]));
        assert!(is_commit_sha(&"ab".repeat(32)));
        assert!(!is_commit_sha(&"AB".repeat(20)));
        assert!(!is_commit_sha("deadbeef"));
        assert!(!is_commit_sha(&"a".repeat(41)));
    }

    #[test]
    fn names() {
        assert_eq!(parse_name(MOUNT_SSH_SOCK, "default").unwrap(), "default");
        assert!(parse_name(AUTH_TOKEN_SECRET, "GIT TOKEN").is_err());
        assert!(parse_name(AUTH_HEADER_SECRET, "a\nb").is_err());
    }

    #[test]
    fn known_hosts() {
        let ok = "# comment\n\ngithub.com ssh-ed25519 AAAAC3Nza\n@cert-authority *.example.com ssh-rsa AAAAB3\n";
        assert_eq!(parse_known_hosts(ok).unwrap(), ok);
        let e = parse_known_hosts("github.com ssh-ed25519 AAAA\ngarbage\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse_known_hosts("@revoked host ssh-rsa").is_err());
    }

    /// The locator rules of BuildKit's `TestIdentifierBundleValidation`.
    #[test]
    fn bundles() {
        let hex = "a".repeat(64);
        let b = parse_bundle(&format!(
            "docker-image+blob://example.com/repo/bundles@sha256:{hex}"
        ))
        .unwrap();
        assert_eq!(b.scheme, "docker-image+blob");
        assert_eq!(b.name, "example.com/repo/bundles");
        assert_eq!(
            b.to_string(),
            format!("docker-image+blob://example.com/repo/bundles@sha256:{hex}")
        );
        assert!(parse_bundle(&format!("oci-layout+blob://local/bundle@sha256:{hex}")).is_ok());

        let e = parse_bundle("https://example.com/bundle")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("git.bundle locator scheme \"https\" is not supported"),
            "{e}"
        );
        let e = parse_bundle(&format!(
            "docker-image+blob://example.com/repo@sha512:{}",
            "c".repeat(128)
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("digest algorithm \"sha512\" not supported"),
            "{e}"
        );
        assert!(parse_bundle("docker-image+blob://example.com/repo:tag").is_err());
        assert!(parse_bundle("docker-image+blob://example.com/repo@sha256:abc").is_err());
        assert!(parse_bundle(&format!("docker-image+blob://Upper/repo@sha256:{hex}")).is_err());
    }
}
