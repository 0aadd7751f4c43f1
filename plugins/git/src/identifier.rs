//! The git identifier: `git://<url>[#ref[:subdir]]` plus the step's attributes,
//! parsed and validated by BuildKit's rules (`source/git/identifier.go`,
//! `client/llb/source.go`), without I/O.
//!
//! The canonical form is the one `llb.Git` builds: `git://<host>/<clean path>` with the
//! fragment, no scheme, no credentials. So https and ssh remotes of one repository
//! share an identifier; the transport actually used is [`GitIdentifier::remote`]
//! (from the identifier, or from `git.fullurl`, which must name the same repository).

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;

use crate::attrs::{self, AttrError, BundleLocator, MtimePolicy};
use crate::url::{self, clean_path, GitUrl, UrlError};

/// Why an identifier was refused. Messages never contain URL credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentifierError {
    /// The identifier is empty.
    #[error("empty git identifier (expected git://HOST/PATH[#REF[:SUBDIR]])")]
    Empty,
    /// The URL in the identifier is malformed.
    #[error("invalid git URL {input:?}: {source}")]
    Url {
        /// The input, credentials redacted.
        input: String,
        /// The cause.
        source: UrlError,
    },
    /// `git.fullurl` is malformed.
    #[error("failed to parse git.fullurl {input:?}: {source}")]
    FullUrl {
        /// The value, credentials redacted.
        input: String,
        /// The cause.
        source: UrlError,
    },
    /// `git.fullurl` names another repository than the identifier.
    #[error("git.fullurl does not match source identifier: {full_url} is not {identifier}")]
    FullUrlMismatch {
        /// The redacted `git.fullurl`.
        full_url: String,
        /// The identifier's `host/path`.
        identifier: String,
    },
    /// The ref could be read as a git option or is not a valid ref name.
    #[error("invalid git ref {reference:?}: {reason}")]
    InvalidRef {
        /// The ref.
        reference: String,
        /// Why.
        reason: &'static str,
    },
    /// An attribute value is malformed.
    #[error(transparent)]
    Attr(#[from] AttrError),
    /// An attribute this source does not know.
    #[error("unknown attribute {0:?} for a git source (known: {known})", known = attrs::ALL.join(", "))]
    UnknownAttr(String),
    /// Attributes that cannot be used together, or a missing companion attribute.
    #[error("{0}")]
    Conflict(String),
}

/// Signature verification options (`git.sig.*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignatureVerify {
    /// The armored PGP or SSH public key(s).
    pub pubkey: String,
    /// Refuse signatures made with expired keys.
    pub reject_expired: bool,
    /// Only a signed tag satisfies verification.
    pub require_signed_tag: bool,
    /// Verify the commit even if the tag is signed.
    pub ignore_signed_tag: bool,
}

/// A parsed, validated git identifier.
#[derive(Clone, PartialEq, Eq)]
pub struct GitIdentifier {
    /// The remote to fetch from, credentials included (its `Display` redacts them).
    pub remote: GitUrl,
    /// The identifier's host as written (with port), for the canonical form.
    pub host: String,
    /// The identifier's path joined onto `/` and cleaned.
    pub path: String,
    /// The ref from the fragment; empty means the remote's default branch.
    pub reference: String,
    /// The subdirectory from the fragment, normalised (no leading `/`, no `..`).
    pub subdir: String,
    /// `git.keepgitdir`.
    pub keep_git_dir: bool,
    /// `git.authheadersecret` (default `GIT_AUTH_HEADER`; empty: none).
    pub auth_header_secret: String,
    /// `git.authtokensecret` (default `GIT_AUTH_TOKEN`; empty: none).
    pub auth_token_secret: String,
    /// `git.knownsshhosts` (empty: none).
    pub known_ssh_hosts: String,
    /// `git.mountsshsock` (empty: none).
    pub mount_ssh_sock: String,
    /// `git.checksum`, lowercase hex (empty: none).
    pub checksum: String,
    /// `git.skipsubmodules`.
    pub skip_submodules: bool,
    /// `git.mtime`.
    pub mtime: MtimePolicy,
    /// `git.fetchbycommit`.
    pub fetch_by_commit: bool,
    /// `git.bundle`.
    pub bundle: Option<BundleLocator>,
    /// `git.checkoutbundle`.
    pub checkout_bundle: bool,
    /// `git.advice`.
    pub advice: bool,
    /// `git.sig.*`.
    pub signature: Option<SignatureVerify>,
    /// `oci.session` (for a bundle in an OCI store).
    pub oci_session: String,
    /// `oci.store` (for a bundle in an OCI store).
    pub oci_store: String,
    /// The identifier's lowercase host name and written port, to check `git.fullurl`.
    ident_host: (String, Option<String>),
}

/// The canonical identifier, `git://<host><path>[#ref[:subdir]]`.
impl fmt::Display for GitIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "git://{}{}", self.host, self.path)?;
        if !self.reference.is_empty() || !self.subdir.is_empty() {
            write!(f, "#{}", self.reference)?;
            if !self.subdir.is_empty() {
                write!(f, ":{}", self.subdir)?;
            }
        }
        Ok(())
    }
}

/// Shows the canonical form and the redacted remote, never secrets.
impl fmt::Debug for GitIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitIdentifier({self}, remote {})", self.remote)
    }
}

impl GitIdentifier {
    /// Parses the text after `git://` (a URL, scp-style or bare `host/path`, with an
    /// optional `#ref[:subdir]`) without attributes. See [`GitIdentifier::parse`].
    pub fn from_url(reference: &str) -> Result<Self, IdentifierError> {
        if reference.is_empty() {
            return Err(IdentifierError::Empty);
        }
        let parsed = url::parse_remote(reference).map_err(|source| IdentifierError::Url {
            input: url::redact(reference),
            source,
        })?;
        let (reference, subdir) = split_fragment(parsed.fragment().unwrap_or(""));
        Ok(Self {
            ident_host: (parsed.hostname(), parsed.port().map(str::to_string)),
            host: parsed.host().to_string(),
            path: parsed.canonical_path(),
            remote: parsed.without_fragment(),
            reference,
            subdir,
            keep_git_dir: false,
            auth_header_secret: attrs::DEFAULT_AUTH_HEADER_SECRET.to_string(),
            auth_token_secret: attrs::DEFAULT_AUTH_TOKEN_SECRET.to_string(),
            known_ssh_hosts: String::new(),
            mount_ssh_sock: String::new(),
            checksum: String::new(),
            skip_submodules: false,
            mtime: MtimePolicy::Checkout,
            fetch_by_commit: false,
            bundle: None,
            checkout_bundle: false,
            advice: false,
            signature: None,
            oci_session: String::new(),
            oci_store: String::new(),
        })
    }

    /// Parses the identifier and applies and cross-checks every attribute.
    pub fn parse(
        reference: &str,
        attributes: &BTreeMap<String, String>,
    ) -> Result<Self, IdentifierError> {
        let mut id = Self::from_url(reference)?;
        let mut sig = SignatureVerify::default();
        let mut sig_set: Vec<&'static str> = Vec::new();
        for (key, v) in attributes {
            match key.as_str() {
                attrs::KEEP_GIT_DIR => id.keep_git_dir = attrs::parse_bool(attrs::KEEP_GIT_DIR, v)?,
                attrs::FULL_URL => id.remote = id.full_url_remote(v)?,
                attrs::AUTH_HEADER_SECRET => {
                    id.auth_header_secret = attrs::parse_name(attrs::AUTH_HEADER_SECRET, v)?
                }
                attrs::AUTH_TOKEN_SECRET => {
                    id.auth_token_secret = attrs::parse_name(attrs::AUTH_TOKEN_SECRET, v)?
                }
                attrs::KNOWN_SSH_HOSTS => id.known_ssh_hosts = attrs::parse_known_hosts(v)?,
                attrs::MOUNT_SSH_SOCK => {
                    id.mount_ssh_sock = attrs::parse_name(attrs::MOUNT_SSH_SOCK, v)?
                }
                attrs::CHECKSUM => id.checksum = attrs::parse_checksum(v)?,
                attrs::SKIP_SUBMODULES => {
                    id.skip_submodules = attrs::parse_bool(attrs::SKIP_SUBMODULES, v)?
                }
                attrs::MTIME => id.mtime = attrs::parse_mtime(v)?,
                attrs::FETCH_BY_COMMIT => {
                    id.fetch_by_commit = attrs::parse_bool(attrs::FETCH_BY_COMMIT, v)?
                }
                attrs::BUNDLE => id.bundle = Some(attrs::parse_bundle(v)?),
                attrs::CHECKOUT_BUNDLE => {
                    id.checkout_bundle = attrs::parse_bool(attrs::CHECKOUT_BUNDLE, v)?
                }
                attrs::ADVICE => id.advice = attrs::parse_bool(attrs::ADVICE, v)?,
                attrs::SIG_PUBKEY => {
                    sig.pubkey = parse_pubkey(v)?;
                    sig_set.push(attrs::SIG_PUBKEY);
                }
                attrs::SIG_REJECT_EXPIRED => {
                    sig.reject_expired = attrs::parse_bool(attrs::SIG_REJECT_EXPIRED, v)?;
                    sig_set.push(attrs::SIG_REJECT_EXPIRED);
                }
                attrs::SIG_REQUIRE_SIGNED_TAG => {
                    sig.require_signed_tag = attrs::parse_bool(attrs::SIG_REQUIRE_SIGNED_TAG, v)?;
                    sig_set.push(attrs::SIG_REQUIRE_SIGNED_TAG);
                }
                attrs::SIG_IGNORE_SIGNED_TAG => {
                    sig.ignore_signed_tag = attrs::parse_bool(attrs::SIG_IGNORE_SIGNED_TAG, v)?;
                    sig_set.push(attrs::SIG_IGNORE_SIGNED_TAG);
                }
                attrs::OCI_SESSION => id.oci_session = attrs::parse_name(attrs::OCI_SESSION, v)?,
                attrs::OCI_STORE => id.oci_store = attrs::parse_name(attrs::OCI_STORE, v)?,
                other => return Err(IdentifierError::UnknownAttr(other.to_string())),
            }
        }
        if !sig_set.is_empty() {
            if sig.pubkey.is_empty() {
                return Err(IdentifierError::Conflict(format!(
                    "{} requires {} to be set",
                    sig_set[0],
                    attrs::SIG_PUBKEY
                )));
            }
            if sig.require_signed_tag && sig.ignore_signed_tag {
                return Err(IdentifierError::Conflict(format!(
                    "{} and {} exclude each other",
                    attrs::SIG_REQUIRE_SIGNED_TAG,
                    attrs::SIG_IGNORE_SIGNED_TAG
                )));
            }
            id.signature = Some(sig);
        }
        id.validate()?;
        Ok(id)
    }

    /// Whether the ref is a full commit sha (no network needed to resolve it).
    pub fn ref_is_commit(&self) -> bool {
        attrs::is_commit_sha(&self.reference)
    }

    fn validate(&self) -> Result<(), IdentifierError> {
        validate_ref(&self.reference)?;
        if !self.checksum.is_empty()
            && self.ref_is_commit()
            && !self.reference.starts_with(&self.checksum)
        {
            return Err(IdentifierError::Conflict(format!(
                "expected checksum to match {}, got {}",
                self.checksum, self.reference
            )));
        }
        if self.fetch_by_commit && !attrs::is_commit_sha(&self.checksum) {
            return Err(IdentifierError::Conflict(format!(
                "{} requires {} to be a full commit sha (40 or 64 lowercase hex digits)",
                attrs::FETCH_BY_COMMIT,
                attrs::CHECKSUM
            )));
        }
        if self.bundle.is_some() && self.checksum.is_empty() {
            return Err(IdentifierError::Conflict(format!(
                "{} requires {} to be set",
                attrs::BUNDLE,
                attrs::CHECKSUM
            )));
        }
        if self.checkout_bundle && self.keep_git_dir {
            return Err(IdentifierError::Conflict(format!(
                "{} is incompatible with {}",
                attrs::CHECKOUT_BUNDLE,
                attrs::KEEP_GIT_DIR
            )));
        }
        if self.checkout_bundle && !self.subdir.is_empty() {
            return Err(IdentifierError::Conflict(format!(
                "{} is incompatible with git.subdir (the :SUBDIR of the fragment)",
                attrs::CHECKOUT_BUNDLE
            )));
        }
        Ok(())
    }

    /// `git.fullurl`: it overrides the remote but must name the same repository as the
    /// identifier: same host and port (case-insensitive, default ports ignored) and the
    /// same cleaned path up to a trailing `/` or `.git`. Query and fragment are dropped;
    /// the `.git` suffix follows the identifier.
    fn full_url_remote(&self, value: &str) -> Result<GitUrl, IdentifierError> {
        let full = url::parse_remote(value).map_err(|source| IdentifierError::FullUrl {
            input: url::redact(value),
            source,
        })?;
        let full = full.without_fragment_and_query();
        // The identifier has no protocol: a port equal to the default port of the
        // fullurl's protocol is the same as no port.
        let default = full.protocol().default_port();
        let norm = |p: Option<&str>| p.filter(|p| *p != default).map(str::to_string);
        let same_host = full.hostname() == self.ident_host.0
            && norm(full.port()) == norm(self.ident_host.1.as_deref());
        let same_path = strip_git_suffix(&full.canonical_path()) == strip_git_suffix(&self.path);
        if !(same_host && same_path) {
            return Err(IdentifierError::FullUrlMismatch {
                full_url: full.to_string(),
                identifier: format!("{}{}", self.host, self.path),
            });
        }
        let mut path = full.raw_path().trim_end_matches('/').to_string();
        match (self.path.ends_with(".git"), path.ends_with(".git")) {
            (true, false) => path.push_str(".git"),
            (false, true) => path.truncate(path.len() - ".git".len()),
            _ => {}
        }
        Ok(full.with_path(path))
    }
}

/// `ref[:subdir]`: split at the first `:`; the subdir is joined onto `/`, cleaned and
/// stripped of the leading `/`, so it can never climb out of the checkout.
fn split_fragment(fragment: &str) -> (String, String) {
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let subdir = clean_path(&format!("/{subdir}"))
        .trim_start_matches('/')
        .to_string();
    (reference.to_string(), subdir)
}

fn strip_git_suffix(path: &str) -> &str {
    path.strip_suffix(".git").unwrap_or(path)
}

/// Refuses refs git could read as an option (CVE-2019-13139) and names git itself
/// never accepts as a ref (`git check-ref-format`).
fn validate_ref(reference: &str) -> Result<(), IdentifierError> {
    let bad = |reason| IdentifierError::InvalidRef {
        reference: reference.to_string(),
        reason,
    };
    if reference.starts_with('-') {
        return Err(bad("a ref must not start with \"-\""));
    }
    if reference
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || "~^?*[\\".contains(c))
    {
        return Err(bad(
            "a ref must not contain spaces, control characters or any of ~ ^ ? * [ \\",
        ));
    }
    if reference.contains("..") || reference.contains("@{") || reference.contains("//") {
        return Err(bad("a ref must not contain \"..\", \"@{\" or \"//\""));
    }
    if reference.ends_with('/') || reference.ends_with(".lock") || reference.ends_with('.') {
        return Err(bad("a ref must not end with \"/\", \".\" or \".lock\""));
    }
    Ok(())
}

fn parse_pubkey(v: &str) -> Result<String, AttrError> {
    let pgp = v.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----");
    let ssh = v.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("ssh-") || l.starts_with("ecdsa-") || l.starts_with("sk-")
    });
    if pgp || ssh {
        Ok(v.to_string())
    } else {
        Err(AttrError::new(
            attrs::SIG_PUBKEY,
            "expected an armored PGP public key block or an SSH public key",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(url: &str) -> GitIdentifier {
        GitIdentifier::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn parse_err(url: &str, a: &[(&str, &str)]) -> String {
        match GitIdentifier::parse(url, &attrs(a)) {
            Ok(id) => panic!("{url} {a:?} must fail, got {id}"),
            Err(e) => e.to_string(),
        }
    }

    /// BuildKit's `TestNewGitIdentifier` table: (url, remote, ref, subdir, canonical).
    #[test]
    fn new_git_identifier_table() {
        let table: &[(&str, &str, &str, &str, &str)] = &[
            (
                "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
                "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
                "",
                "",
                "git://subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
            ),
            (
                "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git#main",
                "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
                "main",
                "",
                "git://subdomain.example.hostname:2222/root/my/really/weird/path/foo.git#main",
            ),
            (
                "git@github.com:moby/buildkit.git",
                "git@github.com:moby/buildkit.git",
                "",
                "",
                "git://github.com/moby/buildkit.git",
            ),
            (
                "github.com/moby/buildkit.git#main",
                "https://github.com/moby/buildkit.git",
                "main",
                "",
                "git://github.com/moby/buildkit.git#main",
            ),
            (
                "git://github.com/user/repo.git",
                "git://github.com/user/repo.git",
                "",
                "",
                "git://github.com/user/repo.git",
            ),
            (
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir/",
                "git://github.com/user/repo.git",
                "mybranch",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir",
            ),
            (
                "git://github.com/user/repo.git#:mydir/mysubdir/",
                "git://github.com/user/repo.git",
                "",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#:mydir/mysubdir",
            ),
            (
                "https://github.com/user/repo.git",
                "https://github.com/user/repo.git",
                "",
                "",
                "git://github.com/user/repo.git",
            ),
            (
                "https://github.com/user/repo.git#mybranch:mydir/mysubdir/",
                "https://github.com/user/repo.git",
                "mybranch",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir",
            ),
            (
                "git@github.com:user/repo.git",
                "git@github.com:user/repo.git",
                "",
                "",
                "git://github.com/user/repo.git",
            ),
            (
                "git@github.com:user/repo.git#mybranch:mydir/mysubdir/",
                "git@github.com:user/repo.git",
                "mybranch",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir",
            ),
            (
                "ssh://github.com/user/repo.git",
                "ssh://github.com/user/repo.git",
                "",
                "",
                "git://github.com/user/repo.git",
            ),
            (
                "ssh://github.com/user/repo.git#mybranch:mydir/mysubdir/",
                "ssh://github.com/user/repo.git",
                "mybranch",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir",
            ),
            (
                "ssh://foo%40barcorp.com@github.com/user/repo.git#mybranch:mydir/mysubdir/",
                "ssh://foo%40barcorp.com@github.com/user/repo.git",
                "mybranch",
                "mydir/mysubdir",
                "git://github.com/user/repo.git#mybranch:mydir/mysubdir",
            ),
            (
                "https://github.com/user/repo.git#main:../../escape",
                "https://github.com/user/repo.git",
                "main",
                "escape",
                "git://github.com/user/repo.git#main:escape",
            ),
            (
                "https://github.com/user/repo.git#main:dir/../../escape",
                "https://github.com/user/repo.git",
                "main",
                "escape",
                "git://github.com/user/repo.git#main:escape",
            ),
            (
                "https://github.com/user/repo.git#main:/absolute/path",
                "https://github.com/user/repo.git",
                "main",
                "absolute/path",
                "git://github.com/user/repo.git#main:absolute/path",
            ),
            (
                "https://github.com/user/repo.git#main:../",
                "https://github.com/user/repo.git",
                "main",
                "",
                "git://github.com/user/repo.git#main",
            ),
            (
                "ssh://github.com/user/repo.git#main:../../escape",
                "ssh://github.com/user/repo.git",
                "main",
                "escape",
                "git://github.com/user/repo.git#main:escape",
            ),
            (
                "ssh://github.com/user/repo.git#main:/absolute/path",
                "ssh://github.com/user/repo.git",
                "main",
                "absolute/path",
                "git://github.com/user/repo.git#main:absolute/path",
            ),
            (
                "git@github.com:user/repo.git#main:../../escape",
                "git@github.com:user/repo.git",
                "main",
                "escape",
                "git://github.com/user/repo.git#main:escape",
            ),
            (
                "git@github.com:user/repo.git#main:/absolute/path",
                "git@github.com:user/repo.git",
                "main",
                "absolute/path",
                "git://github.com/user/repo.git#main:absolute/path",
            ),
            // kiln: the canonical form reads back as itself.
            (
                "127.0.0.1:9418/test/repo.git#v1",
                "https://127.0.0.1:9418/test/repo.git",
                "v1",
                "",
                "git://127.0.0.1:9418/test/repo.git#v1",
            ),
            (
                "https://github.com/a//b/./c.git/#x:",
                "https://github.com/a//b/./c.git/",
                "x",
                "",
                "git://github.com/a/b/c.git#x",
            ),
            (
                "https://github.com",
                "https://github.com",
                "",
                "",
                "git://github.com/",
            ),
        ];
        for (url, remote, reference, subdir, canonical) in table {
            let id = parse(url);
            assert_eq!(id.remote.command_arg(), *remote, "remote of {url}");
            assert_eq!(id.reference, *reference, "ref of {url}");
            assert_eq!(id.subdir, *subdir, "subdir of {url}");
            assert_eq!(id.to_string(), *canonical, "canonical form of {url}");
            // The canonical form parses back to itself.
            let again = parse(canonical.strip_prefix("git://").unwrap());
            assert_eq!(again.to_string(), *canonical, "round trip of {url}");
        }
    }

    #[test]
    fn defaults() {
        let id = GitIdentifier::parse("github.com/moby/buildkit.git", &BTreeMap::new()).unwrap();
        assert!(!id.keep_git_dir && !id.skip_submodules && !id.fetch_by_commit);
        assert_eq!(id.auth_header_secret, "GIT_AUTH_HEADER");
        assert_eq!(id.auth_token_secret, "GIT_AUTH_TOKEN");
        assert_eq!(id.mtime, MtimePolicy::Checkout);
        assert!(id.checksum.is_empty() && id.bundle.is_none() && id.signature.is_none());
    }

    #[test]
    fn every_attribute_parses() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let a = attrs(&[
            ("git.keepgitdir", "true"),
            ("git.fullurl", "ssh://git@github.com/moby/buildkit.git"),
            ("git.authheadersecret", "MY_HEADER"),
            ("git.authtokensecret", ""),
            ("git.knownsshhosts", "github.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"),
            ("git.mountsshsock", "default"),
            ("git.checksum", sha),
            ("git.skipsubmodules", "true"),
            ("git.mtime", "commit"),
            ("git.fetchbycommit", "true"),
            ("git.advice", "false"),
            ("git.sig.pubkey", "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nxsBN\n-----END PGP PUBLIC KEY BLOCK-----\n"),
            ("git.sig.rejectexpired", "true"),
            ("git.sig.requiresignedtag", "true"),
        ]);
        let id = GitIdentifier::parse("github.com/moby/buildkit.git#v1.0:docs", &a).unwrap();
        assert!(id.keep_git_dir && id.skip_submodules && id.fetch_by_commit && !id.advice);
        assert_eq!(
            id.remote.command_arg(),
            "ssh://git@github.com/moby/buildkit.git"
        );
        assert_eq!(id.auth_header_secret, "MY_HEADER");
        assert_eq!(id.auth_token_secret, "");
        assert_eq!(id.mount_ssh_sock, "default");
        assert_eq!(id.checksum, sha);
        assert_eq!(id.mtime, MtimePolicy::Commit);
        let sig = id.signature.as_ref().unwrap();
        assert!(sig.reject_expired && sig.require_signed_tag && !sig.ignore_signed_tag);
        assert_eq!(
            id.to_string(),
            "git://github.com/moby/buildkit.git#v1.0:docs"
        );
    }

    #[test]
    fn every_attribute_error() {
        let u = "github.com/x/y.git";
        let cases: &[(&str, &str, &str)] = &[
            (
                "git.keepgitdir",
                "yes",
                "attribute git.keepgitdir: expected \"true\" or \"false\"",
            ),
            ("git.skipsubmodules", "1", "attribute git.skipsubmodules"),
            ("git.fetchbycommit", "on", "attribute git.fetchbycommit"),
            ("git.checkoutbundle", "True", "attribute git.checkoutbundle"),
            ("git.advice", "no", "attribute git.advice"),
            (
                "git.sig.rejectexpired",
                "y",
                "attribute git.sig.rejectexpired",
            ),
            (
                "git.sig.requiresignedtag",
                "y",
                "attribute git.sig.requiresignedtag",
            ),
            (
                "git.sig.ignoresignedtag",
                "y",
                "attribute git.sig.ignoresignedtag",
            ),
            (
                "git.mtime",
                "now",
                "attribute git.mtime: invalid value \"now\"",
            ),
            ("git.checksum", "v1.2.3", "expected a hex commit hash"),
            ("git.checksum", "", "expected a hex commit hash"),
            (
                "git.authheadersecret",
                "a b",
                "attribute git.authheadersecret",
            ),
            (
                "git.authtokensecret",
                "a\tb",
                "attribute git.authtokensecret",
            ),
            ("git.mountsshsock", "my sock", "attribute git.mountsshsock"),
            (
                "git.knownsshhosts",
                "just-a-host",
                "attribute git.knownsshhosts: line 1",
            ),
            (
                "git.bundle",
                "https://example.com/b",
                "locator scheme \"https\" is not supported",
            ),
            ("git.sig.pubkey", "not a key", "attribute git.sig.pubkey"),
            (
                "git.fullurl",
                "httpx://github.com/x/y.git",
                "failed to parse git.fullurl",
            ),
            ("git.fullurl", "", "failed to parse git.fullurl"),
            ("oci.session", "a b", "attribute oci.session"),
            ("oci.store", "a\nb", "attribute oci.store"),
            (
                "git.keepgitdirr",
                "true",
                "unknown attribute \"git.keepgitdirr\"",
            ),
            (
                "http.checksum",
                "sha256:00",
                "unknown attribute \"http.checksum\"",
            ),
        ];
        for (k, v, want) in cases {
            let e = parse_err(u, &[(k, v)]);
            assert!(e.contains(want), "{k}={v:?}: {e}");
        }
    }

    #[test]
    fn dash_refs_are_refused() {
        for url in [
            "github.com/x/y.git#-b",
            "github.com/x/y.git#--upload-pack=touch /tmp/pwned",
            "git@github.com:x/y.git#-oProxyCommand=x:sub",
            "https://github.com/x/y.git#-u:dir",
        ] {
            let e = parse_err(url, &[]);
            assert!(e.starts_with("invalid git ref"), "{url}: {e}");
        }
        for (url, why) in [
            ("github.com/x/y.git#a..b", ".."),
            ("github.com/x/y.git#a%20b", "spaces"),
            ("github.com/x/y.git#HEAD~1", "~"),
            ("github.com/x/y.git#refs/heads/", "end with"),
            ("github.com/x/y.git#main.lock", "end with"),
        ] {
            let e = parse_err(url, &[]);
            assert!(
                e.starts_with("invalid git ref") && e.contains(why),
                "{url}: {e}"
            );
        }
        // Slashes and dashes inside are fine.
        for ok in [
            "refs/heads/feature-x",
            "v1.2.3",
            "refs/pull/12/head",
            "release/2024",
        ] {
            GitIdentifier::parse(&format!("github.com/x/y.git#{ok}"), &BTreeMap::new()).unwrap();
        }
    }

    #[test]
    fn bad_urls() {
        assert_eq!(
            parse_err("", &[]),
            "empty git identifier (expected git://HOST/PATH[#REF[:SUBDIR]])"
        );
        let e = parse_err("httpx://github.com/x", &[]);
        assert!(e.contains("unsupported git protocol \"httpx\""), "{e}");
        let e = parse_err("svn://h/x", &[]);
        assert!(e.contains("unsupported git protocol \"svn\""), "{e}");
        let e = parse_err("file://elsewhere/x.git", &[]);
        assert!(e.contains("the host must be empty or localhost"), "{e}");
        let e = parse_err("https://u:hunter2@[/repo.git", &[]);
        assert!(
            e.contains("invalid git URL") && !e.contains("hunter2"),
            "{e}"
        );
        assert!(e.contains("xxxxx:xxxxx@"), "{e}");
    }

    /// BuildKit's `TestIdentifierFullRemoteURLValidation`.
    #[test]
    fn full_url_validation() {
        let ok: &[(&str, &str, &str)] = &[
            (
                "example.com/user/repo.git#main",
                "https://example.com/user/repo.git",
                "https://example.com/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "git://example.com/user/repo.git",
                "git://example.com/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "https://user:password@example.com/user/repo.git",
                "https://user:password@example.com/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "git@example.com:user/repo.git",
                "git@example.com:user/repo.git",
            ),
            (
                "example.com/user/repo.git#main:subdir",
                "ssh://git@example.com/user/repo.git",
                "ssh://git@example.com/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "https://EXAMPLE.COM/user/repo.git",
                "https://EXAMPLE.COM/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "https://example.com/user/repo.git/",
                "https://example.com/user/repo.git",
            ),
            (
                "example.com/user/repo",
                "https://example.com/user/repo.git",
                "https://example.com/user/repo",
            ),
            (
                "example.com/user/repo.git",
                "https://example.com/user/repo",
                "https://example.com/user/repo.git",
            ),
            (
                "example.com/user/repo",
                "git@example.com:user/repo.git",
                "git@example.com:user/repo",
            ),
            (
                "example.com/user/repo.git",
                "https://example.com/user/repo.git?variant=other#main",
                "https://example.com/user/repo.git",
            ),
            // kiln: default ports are the same host; a bare host/path fullurl gets https.
            (
                "example.com/user/repo.git",
                "ssh://git@example.com:22/user/repo.git",
                "ssh://git@example.com:22/user/repo.git",
            ),
            (
                "example.com/user/repo.git",
                "example.com/user/repo.git",
                "https://example.com/user/repo.git",
            ),
            (
                "127.0.0.1:9418/repo.git",
                "git://127.0.0.1:9418/repo.git",
                "git://127.0.0.1:9418/repo.git",
            ),
        ];
        for (ident, full, want) in ok {
            let id = GitIdentifier::parse(ident, &attrs(&[("git.fullurl", full)]))
                .unwrap_or_else(|e| panic!("{ident} with {full}: {e}"));
            assert_eq!(id.remote.command_arg(), *want, "{ident} with {full}");
        }
        let bad: &[(&str, &str, &str)] = &[
            (
                "example.com/user/repo.git",
                "https://mirror.example.com/user/repo.git",
                "git.fullurl does not match source identifier",
            ),
            (
                "example.com/user/repo.git",
                "ssh://git@example.com:2222/user/repo.git",
                "git.fullurl does not match source identifier",
            ),
            (
                "example.com/user/repo.git",
                "https://example.com/user/other.git",
                "git.fullurl does not match source identifier",
            ),
            (
                "example.com/user/repo.git",
                "https://example.com/user/repo.git.backup",
                "git.fullurl does not match source identifier",
            ),
            (
                "example.com/user/repo.git",
                "https://user:password@[/repo.git",
                "failed to parse git.fullurl",
            ),
            (
                "example.com/source.git#main",
                "https://user:password@mirror.example.com/source.git",
                "git.fullurl does not match",
            ),
        ];
        for (ident, full, want) in bad {
            let e = parse_err(ident, &[("git.fullurl", full)]);
            assert!(e.contains(want), "{ident} with {full}: {e}");
            assert!(!e.contains("password"), "credentials leaked: {e}");
        }
    }

    #[test]
    fn credentials_never_leak() {
        let id = GitIdentifier::parse(
            "https://user:s3cret@example.com/r.git#main",
            &attrs(&[("git.fullurl", "https://bob:t0ken@example.com/r.git")]),
        )
        .unwrap();
        assert_eq!(id.to_string(), "git://example.com/r.git#main");
        assert_eq!(
            id.remote.command_arg(),
            "https://bob:t0ken@example.com/r.git"
        );
        let shown = format!("{id} {id:?} {}", id.remote);
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
        assert!(shown.contains("xxxxx:xxxxx@example.com"), "{shown}");
    }

    /// BuildKit's `TestIdentifierBundleValidation` and the fetch-by-commit rule.
    #[test]
    fn bundle_and_checkout_rules() {
        let bundle = format!(
            "docker-image+blob://example.com/repo/bundles@sha256:{}",
            "a".repeat(64)
        );
        let checksum = "1111111111111111111111111111111111111111";
        let u = "https://example.com/repo.git";

        let id = GitIdentifier::parse(
            u,
            &attrs(&[("git.bundle", &bundle), ("git.checksum", checksum)]),
        )
        .unwrap();
        assert_eq!(id.bundle.as_ref().unwrap().to_string(), bundle);
        assert!(!id.checkout_bundle);

        let e = parse_err(u, &[("git.bundle", &bundle)]);
        assert!(
            e.contains("git.bundle requires git.checksum to be set"),
            "{e}"
        );
        let e = parse_err(
            u,
            &[("git.checkoutbundle", "true"), ("git.keepgitdir", "true")],
        );
        assert!(
            e.contains("git.checkoutbundle is incompatible with git.keepgitdir"),
            "{e}"
        );
        let e = parse_err(
            "https://example.com/repo.git#main:sub",
            &[("git.checkoutbundle", "true")],
        );
        assert!(
            e.contains("git.checkoutbundle is incompatible with git.subdir"),
            "{e}"
        );
        let id = GitIdentifier::parse(u, &attrs(&[("git.checkoutbundle", "true")])).unwrap();
        assert!(id.checkout_bundle && id.bundle.is_none());

        let other = "2222222222222222222222222222222222222222";
        let e = parse_err(
            &format!("{u}#{other}"),
            &[("git.bundle", &bundle), ("git.checksum", checksum)],
        );
        assert!(
            e.contains(&format!("expected checksum to match {checksum}")),
            "{e}"
        );
        let id = GitIdentifier::parse(
            &format!("{u}#{checksum}"),
            &attrs(&[("git.checksum", "1111")]),
        )
        .unwrap();
        assert!(id.ref_is_commit());
        assert_eq!(id.checksum, "1111");

        let e = parse_err(u, &[("git.fetchbycommit", "true")]);
        assert!(e.contains("git.fetchbycommit requires git.checksum"), "{e}");
        let e = parse_err(
            u,
            &[("git.fetchbycommit", "true"), ("git.checksum", "1111")],
        );
        assert!(e.contains("full commit sha"), "{e}");
        GitIdentifier::parse(
            u,
            &attrs(&[("git.fetchbycommit", "true"), ("git.checksum", checksum)]),
        )
        .unwrap();
    }

    #[test]
    fn signature_rules() {
        let key = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nabc\n-----END PGP PUBLIC KEY BLOCK-----";
        let e = parse_err("example.com/r.git", &[("git.sig.rejectexpired", "true")]);
        assert!(
            e.contains("git.sig.rejectexpired requires git.sig.pubkey"),
            "{e}"
        );
        let e = parse_err(
            "example.com/r.git",
            &[
                ("git.sig.pubkey", key),
                ("git.sig.requiresignedtag", "true"),
                ("git.sig.ignoresignedtag", "true"),
            ],
        );
        assert!(e.contains("exclude each other"), "{e}");
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE user@host";
        let id =
            GitIdentifier::parse("example.com/r.git", &attrs(&[("git.sig.pubkey", ssh)])).unwrap();
        assert_eq!(id.signature.unwrap().pubkey, ssh);
    }

    /// kiln's `file://` remotes: the canonical identifier is `git://localhost/<path>`
    /// (host and cleaned path, as for every transport), which `git.fullurl` must match.
    #[test]
    fn file_remote_identifiers() {
        let id = GitIdentifier::parse("file:///srv/git/repo.git#v1:docs", &attrs(&[])).unwrap();
        assert_eq!(id.to_string(), "git://localhost/srv/git/repo.git#v1:docs");
        assert_eq!(id.remote.protocol(), crate::url::Protocol::File);
        assert_eq!(id.remote.command_arg(), "file:///srv/git/repo.git");
        assert_eq!((id.reference.as_str(), id.subdir.as_str()), ("v1", "docs"));

        let id = GitIdentifier::parse(
            "localhost/srv/git/repo.git#main",
            &attrs(&[("git.fullurl", "file:///srv/git/repo.git")]),
        )
        .unwrap();
        assert_eq!(id.to_string(), "git://localhost/srv/git/repo.git#main");
        assert_eq!(id.remote.command_arg(), "file:///srv/git/repo.git");

        let e = parse_err(
            "localhost/srv/git/repo.git",
            &[("git.fullurl", "file:///srv/git/other.git")],
        );
        assert!(
            e.contains("git.fullurl does not match source identifier"),
            "{e}"
        );
        let e = parse_err(
            "example.com/srv/git/repo.git",
            &[("git.fullurl", "file:///srv/git/repo.git")],
        );
        assert!(
            e.contains("git.fullurl does not match source identifier"),
            "{e}"
        );
    }
}
