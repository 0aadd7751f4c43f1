//! Git remote URLs, parsed by BuildKit's rules without any I/O.
//!
//! Accepted forms:
//! - `http://`, `https://`, `ssh://` and `git://` URLs (scheme case-insensitive);
//! - `file:///abs/path` (or `file://localhost/abs/path`): a repository on this machine.
//!   BuildKit refuses it; kiln parses it here and the plugin allows it only when its
//!   `allow_file_remotes` config switch is on;
//! - scp-style `[user@]host:path` (ssh);
//! - anything else that is not a transport, such as `github.com/x/y.git`, is read as
//!   `https://` plus the text (see [`parse_remote`]).
//!
//! Any other `xxx://` scheme is refused. Credentials (`user:password@`) are kept only
//! for the git command line ([`GitUrl::command_arg`]); every `Display` and error
//! redacts them as `xxxxx:xxxxx@` (see [`redact`]).
//!
//! One deliberate difference from BuildKit: `host:1234/path` without a user is read as
//! host and port over implicit https, not as scp-style ssh with the path `1234/path`.
//! This is how kiln's own canonical identifiers (`git://host:port/path`) read back.

#![warn(missing_docs)]

use std::fmt;

/// The transport protocols BuildKit's git source accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `http://`
    Http,
    /// `https://` (also the implicit protocol of a bare `host/path`)
    Https,
    /// `ssh://` or scp-style `user@host:path`
    Ssh,
    /// `git://` (the git daemon protocol)
    Git,
    /// `file://` (a repository on the local file system; see the module docs)
    File,
}

impl Protocol {
    /// The protocol for a URL scheme (case-insensitive), if it is one git accepts here.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Self::Http),
            "https" => Some(Self::Https),
            "ssh" => Some(Self::Ssh),
            "git" => Some(Self::Git),
            "file" => Some(Self::File),
            _ => None,
        }
    }

    /// The lowercase scheme name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
            Self::Ssh => "ssh",
            Self::Git => "git",
            Self::File => "file",
        }
    }

    /// The port used when a URL names none (empty for `file`, which has no port).
    pub fn default_port(self) -> &'static str {
        match self {
            Self::Http => "80",
            Self::Https => "443",
            Self::Ssh => "22",
            Self::Git => "9418",
            Self::File => "",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a remote URL was refused. Messages never contain credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// A `scheme://` other than http, https, ssh, git or file.
    #[error("unsupported git protocol \"{0}\" (expected http, https, ssh, git or file)")]
    UnsupportedProtocol(String),
    /// A `file://` URL that is not `file:///ABSOLUTE/PATH` (or `file://localhost/…`).
    #[error("invalid file URL: {0} (expected file:///ABSOLUTE/PATH)")]
    InvalidFileUrl(&'static str),
    /// The text is neither a URL with a scheme nor scp-style (callers then try https).
    #[error("not a git transport URL")]
    NotTransport,
    /// No host after `scheme://`.
    #[error("the URL has no host")]
    MissingHost,
    /// The host part is malformed.
    #[error("invalid host \"{0}\"")]
    InvalidHost(String),
    /// The port is not a number.
    #[error("invalid port \"{0}\"")]
    InvalidPort(String),
    /// A `%` not followed by two hex digits, or an escape that is not UTF-8.
    #[error("invalid percent-escape in the {0}")]
    InvalidEscape(&'static str),
    /// ASCII control characters are never valid in a URL.
    #[error("the URL contains a control character")]
    ControlCharacter,
}

/// A parsed git remote.
#[derive(Clone, PartialEq, Eq)]
pub struct GitUrl {
    protocol: Protocol,
    scp: bool,
    userinfo: Option<String>,
    host: String,
    path: String,
    query: Option<String>,
    fragment: Option<String>,
}

impl GitUrl {
    /// The transport protocol (ssh for scp-style URLs).
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether the URL was written scp-style (`user@host:path`).
    pub fn is_scp(&self) -> bool {
        self.scp
    }

    /// The host as written, with its port if one was given (`example.com:2222`,
    /// `[::1]:9418`); `localhost` for a `file:///` URL.
    pub fn host(&self) -> &str {
        if self.protocol == Protocol::File && self.host.is_empty() {
            "localhost"
        } else {
            &self.host
        }
    }

    /// The host without its port, lowercased.
    pub fn hostname(&self) -> String {
        split_port(self.host()).0.to_ascii_lowercase()
    }

    /// The port, if one was written.
    pub fn port(&self) -> Option<&str> {
        split_port(self.host()).1
    }

    /// The port, if one was written and it is not the protocol's default.
    pub fn explicit_port(&self) -> Option<&str> {
        split_port(&self.host)
            .1
            .filter(|p| *p != self.protocol.default_port())
    }

    /// The user name (without any password), if the URL has one.
    pub fn user(&self) -> Option<&str> {
        self.userinfo
            .as_deref()
            .map(|u| u.split_once(':').map_or(u, |(user, _)| user))
    }

    /// Whether the URL carries a password or an http(s) token in its user part.
    pub fn has_credentials(&self) -> bool {
        match &self.userinfo {
            None => false,
            Some(u) => u.contains(':') || matches!(self.protocol, Protocol::Http | Protocol::Https),
        }
    }

    /// The path as written (URL form: empty or starting with `/`; scp-style: as given).
    pub fn raw_path(&self) -> &str {
        &self.path
    }

    /// The percent-decoded path.
    pub fn decoded_path(&self) -> String {
        if self.scp {
            self.path.clone()
        } else {
            // Validated at parse time.
            percent_decode(&self.path, "path").unwrap_or_else(|_| self.path.clone())
        }
    }

    /// The path joined onto `/` and cleaned, as BuildKit's `llb.Git` forms identifiers:
    /// `moby/buildkit.git` → `/moby/buildkit.git`, `/a/../b/` → `/b`, `` → `/`.
    pub fn canonical_path(&self) -> String {
        clean_path(&format!("/{}", self.decoded_path()))
    }

    /// The fragment after `#` (percent-decoded for URLs, raw for scp-style), if any.
    pub fn fragment(&self) -> Option<&str> {
        self.fragment.as_deref()
    }

    /// The query after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// A copy without fragment and query.
    pub fn without_fragment_and_query(&self) -> Self {
        Self {
            query: None,
            fragment: None,
            ..self.clone()
        }
    }

    /// A copy without the fragment.
    pub fn without_fragment(&self) -> Self {
        Self {
            fragment: None,
            ..self.clone()
        }
    }

    /// A copy with another (raw) path.
    pub fn with_path(&self, path: String) -> Self {
        Self {
            path,
            ..self.clone()
        }
    }

    /// The URL to hand to the git program, **with** credentials. Never log it.
    pub fn command_arg(&self) -> String {
        self.render(false)
    }

    fn render(&self, redacted: bool) -> String {
        let mut s = String::new();
        if !self.scp {
            s.push_str(self.protocol.as_str());
            s.push_str("://");
        }
        if let Some(u) = &self.userinfo {
            if redacted && self.has_credentials() {
                s.push_str(if u.contains(':') {
                    "xxxxx:xxxxx"
                } else {
                    "xxxxx"
                });
            } else {
                s.push_str(u);
            }
            s.push('@');
        }
        s.push_str(&self.host);
        if self.scp {
            s.push(':');
        }
        s.push_str(&self.path);
        if let Some(q) = &self.query {
            s.push('?');
            s.push_str(q);
        }
        if let Some(f) = &self.fragment {
            s.push('#');
            s.push_str(f);
        }
        s
    }
}

/// Redacted: `https://xxxxx:xxxxx@host/path`.
impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(true))
    }
}

/// Redacted, like `Display`.
impl fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GitUrl({})", self.render(true))
    }
}

/// Parses a remote the way BuildKit's git identifier does: a transport URL or
/// scp-style as is, anything else with `https://` put in front.
pub fn parse_remote(s: &str) -> Result<GitUrl, UrlError> {
    match parse_transport(s) {
        Err(UrlError::NotTransport) => parse_transport(&format!("https://{s}")),
        other => other,
    }
}

/// Parses `scheme://…` (http, https, ssh, git, file) or scp-style `[user@]host:path`.
/// Anything else is [`UrlError::NotTransport`].
pub fn parse_transport(s: &str) -> Result<GitUrl, UrlError> {
    if s.chars().any(|c| c.is_ascii_control()) {
        return Err(UrlError::ControlCharacter);
    }
    if let Some((scheme, rest)) = split_scheme(s) {
        let protocol = Protocol::from_scheme(scheme)
            .ok_or_else(|| UrlError::UnsupportedProtocol(scheme.to_ascii_lowercase()))?;
        if protocol == Protocol::File {
            return parse_file_url(rest);
        }
        return parse_url_form(protocol, rest);
    }
    parse_scp(s).ok_or(UrlError::NotTransport)
}

/// `file://[localhost]/ABSOLUTE/PATH[#fragment]`: no user, port or query, and a path
/// that names a directory by itself (no `.` or `..` components), so what git opens is
/// exactly what the URL says.
fn parse_file_url(rest: &str) -> Result<GitUrl, UrlError> {
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, f)) => (b, Some(percent_decode(f, "fragment")?)),
        None => (rest, None),
    };
    if before_fragment.contains('?') {
        return Err(UrlError::InvalidFileUrl("a file URL has no query"));
    }
    let slash = before_fragment
        .find('/')
        .ok_or(UrlError::InvalidFileUrl("the path must be absolute"))?;
    let (host, path) = before_fragment.split_at(slash);
    if host.contains('@') {
        return Err(UrlError::InvalidFileUrl("a file URL has no user"));
    }
    if !(host.is_empty() || host.eq_ignore_ascii_case("localhost")) {
        return Err(UrlError::InvalidFileUrl(
            "the host must be empty or localhost",
        ));
    }
    let decoded = percent_decode(path, "path")?;
    if decoded.chars().any(|c| c.is_ascii_control()) {
        return Err(UrlError::ControlCharacter);
    }
    if decoded.trim_end_matches('/').is_empty() {
        return Err(UrlError::InvalidFileUrl("the path names no repository"));
    }
    if decoded.split('/').any(|c| c == "." || c == "..") {
        return Err(UrlError::InvalidFileUrl(
            "the path must not contain . or .. components",
        ));
    }
    Ok(GitUrl {
        protocol: Protocol::File,
        scp: false,
        userinfo: None,
        host: host.to_string(),
        path: path.to_string(),
        query: None,
        fragment,
    })
}

/// Whether `s` is already a transport (BuildKit's `IsGitTransport`).
pub fn is_transport(s: &str) -> bool {
    !matches!(parse_transport(s), Err(UrlError::NotTransport))
}

/// `scheme` and the text after `://`, when `s` starts with `[A-Za-z0-9+.-]+://`.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once("://")?;
    let ok = !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'.' | b'-'));
    ok.then_some((scheme, rest))
}

fn parse_url_form(protocol: Protocol, rest: &str) -> Result<GitUrl, UrlError> {
    let (before_fragment, fragment) = match rest.split_once('#') {
        Some((b, f)) => (b, Some(percent_decode(f, "fragment")?)),
        None => (rest, None),
    };
    let authority_end = before_fragment
        .find(['/', '?'])
        .unwrap_or(before_fragment.len());
    let authority = &before_fragment[..authority_end];
    let after = &before_fragment[authority_end..];
    let (path, query) = match after.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (after, None),
    };
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    if let Some(u) = &userinfo {
        percent_decode(u, "user name").map_err(|_| UrlError::InvalidEscape("user name"))?;
    }
    validate_host(host)?;
    percent_decode(path, "path")?;
    Ok(GitUrl {
        protocol,
        scp: false,
        userinfo,
        host: host.to_string(),
        path: path.to_string(),
        query,
        fragment,
    })
}

/// scp-style: `^(?:([A-Za-z0-9_-]+)@)?([A-Za-z0-9.-]+):(.*?)(?:#(.*))?$`.
fn parse_scp(s: &str) -> Option<GitUrl> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r))
            if !u.is_empty()
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            (Some(u), r)
        }
        _ => (None, s),
    };
    let (host, after) = rest.split_once(':')?;
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return None;
    }
    let (path, fragment) = match after.split_once('#') {
        Some((p, f)) => (p, Some(f.to_string())),
        None => (after, None),
    };
    // `name::address` is git's remote-helper syntax (`ext::sh -c …`), never scp; a
    // leading `-` in the host or user would reach ssh as an option.
    if path.starts_with(':') || host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
        return None;
    }
    if user.is_none() {
        // `host:1234/path` is host and port (kiln's canonical form), not scp.
        let digits = path.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && matches!(path.as_bytes().get(digits), None | Some(b'/')) {
            return None;
        }
    }
    Some(GitUrl {
        protocol: Protocol::Ssh,
        scp: true,
        userinfo: user.map(str::to_string),
        host: host.to_string(),
        path: path.to_string(),
        query: None,
        fragment,
    })
}

/// Splits `host:port` (or `[v6]:port`) into host and port.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if let Some(stripped) = host.strip_prefix('[') {
        if let Some(end) = stripped.find(']') {
            let h = &host[..end + 2];
            let rest = &host[end + 2..];
            return (h, rest.strip_prefix(':'));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    }
}

fn validate_host(host: &str) -> Result<(), UrlError> {
    if host.is_empty() {
        return Err(UrlError::MissingHost);
    }
    let (name, port) = split_port(host);
    if let Some(v6) = name.strip_prefix('[') {
        let inner = v6.strip_suffix(']').unwrap_or("");
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(UrlError::InvalidHost(name.to_string()));
        }
    } else if name.is_empty()
        || name.starts_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
    {
        return Err(UrlError::InvalidHost(name.to_string()));
    }
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
            return Err(UrlError::InvalidPort(p.to_string()));
        }
    }
    Ok(())
}

/// Decodes `%XX` escapes; the result must be UTF-8.
pub fn percent_decode(s: &str, what: &'static str) -> Result<String, UrlError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(UrlError::InvalidEscape(what))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| UrlError::InvalidEscape(what))
}

/// Lexical path cleaning with Go's `path.Clean` rules: `//` and `.` removed, `..`
/// resolved (never above `/` for rooted paths), no trailing `/`; empty gives `.`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for comp in p.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Best-effort redaction of credentials in any text that may hold a URL: the user
/// part of every `scheme://user:pass@host` becomes `xxxxx:xxxxx` (`xxxxx` for a bare
/// http(s) user, which is usually a token). Use it on input echoed in errors.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // After the last character that cannot be in a scheme (which may be wider
        // than one byte).
        let scheme_start = head[..pos]
            .char_indices()
            .rfind(|&(_, c)| !(c.is_ascii_alphanumeric() || "+.-".contains(c)))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let scheme = head[scheme_start..pos].to_ascii_lowercase();
        let end = tail.find(['/', '?', '#', ' ']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let user = &authority[..at];
                if user.contains(':') {
                    out.push_str("xxxxx:xxxxx");
                } else if scheme.ends_with("http") || scheme.ends_with("https") {
                    out.push_str("xxxxx");
                } else {
                    out.push_str(user);
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Row {
        url: &'static str,
        protocol: Protocol,
        user: Option<&'static str>,
        host: &'static str,
        path: &'static str,
        fragment: Option<&'static str>,
    }

    fn row(
        url: &'static str,
        protocol: Protocol,
        user: Option<&'static str>,
        host: &'static str,
        path: &'static str,
        fragment: Option<&'static str>,
    ) -> Row {
        Row {
            url,
            protocol,
            user,
            host,
            path,
            fragment,
        }
    }

    /// Ported from BuildKit's `TestParseURL` (util/gitutil), single-hash fragments.
    #[test]
    fn parse_url_table() {
        use Protocol::*;
        let rows = [
            row(
                "http://github.com/moby/buildkit",
                Http,
                None,
                "github.com",
                "/moby/buildkit",
                None,
            ),
            row(
                "https://github.com/moby/buildkit",
                Https,
                None,
                "github.com",
                "/moby/buildkit",
                None,
            ),
            row(
                "http://github.com/moby/buildkit#v1.0.0",
                Http,
                None,
                "github.com",
                "/moby/buildkit",
                Some("v1.0.0"),
            ),
            row(
                "http://github.com/moby/buildkit#v1.0.0:subdir",
                Http,
                None,
                "github.com",
                "/moby/buildkit",
                Some("v1.0.0:subdir"),
            ),
            row(
                "http://foo:bar@github.com/moby/buildkit#v1.0.0",
                Http,
                Some("foo"),
                "github.com",
                "/moby/buildkit",
                Some("v1.0.0"),
            ),
            row(
                "ssh://git@github.com/moby/buildkit.git",
                Ssh,
                Some("git"),
                "github.com",
                "/moby/buildkit.git",
                None,
            ),
            row(
                "ssh://git@github.com:22/moby/buildkit.git",
                Ssh,
                Some("git"),
                "github.com:22",
                "/moby/buildkit.git",
                None,
            ),
            row(
                "git@github.com:moby/buildkit.git",
                Ssh,
                Some("git"),
                "github.com",
                "moby/buildkit.git",
                None,
            ),
            row(
                "git@github.com:moby/buildkit.git#v1.0.0",
                Ssh,
                Some("git"),
                "github.com",
                "moby/buildkit.git",
                Some("v1.0.0"),
            ),
            row(
                "git@github.com:moby/buildkit.git#v1.0.0:hack",
                Ssh,
                Some("git"),
                "github.com",
                "moby/buildkit.git",
                Some("v1.0.0:hack"),
            ),
            row(
                "nonstandarduser@example.com:/srv/repos/weird/project.git",
                Ssh,
                Some("nonstandarduser"),
                "example.com",
                "/srv/repos/weird/project.git",
                None,
            ),
            row(
                "ssh://root@subdomain.example.hostname:2222/root/my/really/weird/path/foo.git",
                Ssh,
                Some("root"),
                "subdomain.example.hostname:2222",
                "/root/my/really/weird/path/foo.git",
                None,
            ),
            row(
                "git://host.xz:1234/path/to/repo.git",
                Git,
                None,
                "host.xz:1234",
                "/path/to/repo.git",
                None,
            ),
            row(
                "ssh://someuser@192.168.0.123:456/~/repo-in-my-home-dir.git",
                Ssh,
                Some("someuser"),
                "192.168.0.123:456",
                "/~/repo-in-my-home-dir.git",
                None,
            ),
            row(
                "HTTP://github.com/moby/buildkit",
                Http,
                None,
                "github.com",
                "/moby/buildkit",
                None,
            ),
            row(
                "github.com:moby/buildkit.git",
                Ssh,
                None,
                "github.com",
                "moby/buildkit.git",
                None,
            ),
            row(
                "other_Funky-username52@example.com:/to/really:odd:repo.git/",
                Ssh,
                Some("other_Funky-username52"),
                "example.com",
                "/to/really:odd:repo.git/",
                None,
            ),
            row(
                "teddy@4houses-down.com:/~/catnip.git/",
                Ssh,
                Some("teddy"),
                "4houses-down.com",
                "/~/catnip.git/",
                None,
            ),
            row(
                "git://[::1]:9418/repo.git",
                Git,
                None,
                "[::1]:9418",
                "/repo.git",
                None,
            ),
        ];
        for r in rows {
            let u = parse_transport(r.url).unwrap_or_else(|e| panic!("{}: {e}", r.url));
            assert_eq!(u.protocol(), r.protocol, "{}", r.url);
            assert_eq!(u.user(), r.user, "{}", r.url);
            assert_eq!(u.host(), r.host, "{}", r.url);
            assert_eq!(u.raw_path(), r.path, "{}", r.url);
            assert_eq!(u.fragment(), r.fragment, "{}", r.url);
        }
    }

    #[test]
    fn unsupported_protocols_are_refused() {
        for url in [
            "httpx://github.com/moby/buildkit",
            "svn://h/x",
            "git+ssh://h/x",
        ] {
            assert!(
                matches!(parse_remote(url), Err(UrlError::UnsupportedProtocol(_))),
                "{url} must be refused"
            );
        }
        // Remote-helper syntax and option-like hosts are not scp-style; read as https
        // they are bad hosts.
        for url in [
            "ext::sh -c touch% /tmp/pwned",
            "-oProxyCommand=x:y",
            "-host:repo",
            "https://-oProxy/x",
        ] {
            assert!(parse_remote(url).is_err(), "{url} must be refused");
        }
        assert_eq!(
            parse_transport("httpx://github.com/x")
                .unwrap_err()
                .to_string(),
            "unsupported git protocol \"httpx\" (expected http, https, ssh, git or file)"
        );
    }

    /// `file://` remotes parse (the plugin decides whether to use them): the host is
    /// empty or localhost, the path absolute and literal; the git argument is the URL
    /// as written.
    #[test]
    fn file_urls() {
        let u = parse_remote("file:///srv/git/my%20repo.git#v1:docs").unwrap();
        assert_eq!(u.protocol(), Protocol::File);
        assert!(!u.is_scp());
        assert_eq!(u.host(), "localhost");
        assert_eq!(u.hostname(), "localhost");
        assert_eq!(u.port(), None);
        assert_eq!(u.user(), None);
        assert!(!u.has_credentials());
        assert_eq!(u.raw_path(), "/srv/git/my%20repo.git");
        assert_eq!(u.canonical_path(), "/srv/git/my repo.git");
        assert_eq!(u.fragment(), Some("v1:docs"));
        assert_eq!(
            u.without_fragment().command_arg(),
            "file:///srv/git/my%20repo.git"
        );
        assert_eq!(u.to_string(), "file:///srv/git/my%20repo.git#v1:docs");
        assert!(is_transport("file:///srv/x.git"));

        let u = parse_transport("FILE://LocalHost/srv/x.git").unwrap();
        assert_eq!(u.protocol(), Protocol::File);
        assert_eq!(u.hostname(), "localhost");
        assert_eq!(u.command_arg(), "file://LocalHost/srv/x.git");

        for (url, why) in [
            (
                "file://otherhost/srv/x.git",
                "the host must be empty or localhost",
            ),
            ("file://user:pw@/srv/x.git", "a file URL has no user"),
            (
                "file://localhost:22/srv/x.git",
                "the host must be empty or localhost",
            ),
            (
                "file://relative/../x",
                "the host must be empty or localhost",
            ),
            ("file://", "the path must be absolute"),
            ("file:///", "the path names no repository"),
            (
                "file:///srv/../etc/x.git",
                "the path must not contain . or .. components",
            ),
            (
                "file:///srv/%2e%2e/x.git",
                "the path must not contain . or .. components",
            ),
            (
                "file:///srv/x.git?upload-pack=sh",
                "a file URL has no query",
            ),
        ] {
            assert_eq!(
                parse_remote(url).unwrap_err(),
                UrlError::InvalidFileUrl(why),
                "{url}"
            );
        }
        assert_eq!(
            parse_remote("file:///srv/x%0a.git").unwrap_err(),
            UrlError::ControlCharacter
        );
        let e = parse_remote("file://user:pw@/x").unwrap_err().to_string();
        assert!(!e.contains("pw"), "{e}");
    }

    /// BuildKit's `TestIsImplicitSSHTransport`, plus kiln's host:port rule.
    #[test]
    fn transport_detection() {
        for s in [
            "github.com:moby/buildkit.git",
            "git@github.com:moby/buildkit.git",
            "nonstandarduser@example.com:/srv/repos/weird/project.git",
            "other_Funky-username52@example.com:path/to/repo.git/",
            "teddy@4houses-down.com:/~/catnip.git/",
            "weird:user@helloworld.net:foo/bar.git",
            "http://github.com/moby/buildkit",
            "ssh://root@subdomain.example.hostname:2222/root/foo.git",
            "git@localhost:2222/repo.git",
        ] {
            assert!(is_transport(s), "{s} is a transport");
        }
        for s in [
            "github.com/moby/buildkit",
            "helloworld.net",
            "git@helloworld.net",
            "git@helloworld.net/foo/bar.git",
            "",
            "localhost:5000/repo.git",
            "127.0.0.1:9418/x",
            "example.com:8080",
        ] {
            assert!(!is_transport(s), "{s} is not a transport");
        }
        let u = parse_remote("127.0.0.1:9418/test/repo.git").unwrap();
        assert_eq!(u.protocol(), Protocol::Https);
        assert_eq!(u.host(), "127.0.0.1:9418");
        assert_eq!(u.raw_path(), "/test/repo.git");
        assert_eq!(u.command_arg(), "https://127.0.0.1:9418/test/repo.git");
    }

    #[test]
    fn implicit_https() {
        let u = parse_remote("github.com/moby/buildkit.git#main").unwrap();
        assert_eq!(u.protocol(), Protocol::Https);
        assert_eq!(
            u.without_fragment().command_arg(),
            "https://github.com/moby/buildkit.git"
        );
        assert_eq!(u.fragment(), Some("main"));
    }

    #[test]
    fn bad_hosts_and_ports() {
        assert_eq!(
            parse_transport("https:///x").unwrap_err(),
            UrlError::MissingHost
        );
        assert_eq!(
            parse_transport("https://h:port/x").unwrap_err(),
            UrlError::InvalidPort("port".into())
        );
        assert!(matches!(
            parse_transport("https://user:password@[/repo.git"),
            Err(UrlError::InvalidHost(_))
        ));
        assert!(matches!(
            parse_transport("https://a b/x"),
            Err(UrlError::InvalidHost(_))
        ));
        assert_eq!(
            parse_transport("https://h/x\ny").unwrap_err(),
            UrlError::ControlCharacter
        );
        assert_eq!(
            parse_transport("https://h/x%zz").unwrap_err(),
            UrlError::InvalidEscape("path")
        );
    }

    #[test]
    fn credentials_are_redacted() {
        let u = parse_remote("https://user:s3cret@example.com/r.git#main").unwrap();
        assert!(u.has_credentials());
        assert_eq!(u.to_string(), "https://xxxxx:xxxxx@example.com/r.git#main");
        assert!(!format!("{u:?}").contains("s3cret"));
        assert_eq!(
            u.without_fragment().command_arg(),
            "https://user:s3cret@example.com/r.git"
        );

        let token = parse_remote("https://ghp_token@example.com/r.git").unwrap();
        assert_eq!(token.to_string(), "https://xxxxx@example.com/r.git");

        let ssh = parse_remote("ssh://git@example.com/r.git").unwrap();
        assert!(!ssh.has_credentials());
        assert_eq!(ssh.to_string(), "ssh://git@example.com/r.git");
        let scp = parse_remote("git@example.com:r.git").unwrap();
        assert_eq!(scp.to_string(), "git@example.com:r.git");

        assert_eq!(
            redact("failed https://u:p@h/x and http://tok@h2/y, ssh://git@h3/z"),
            "failed https://xxxxx:xxxxx@h/x and http://xxxxx@h2/y, ssh://git@h3/z"
        );
        assert_eq!(
            redact("https://user:password@[/repo.git"),
            "https://xxxxx:xxxxx@[/repo.git"
        );
        assert_eq!(redact("no url here"), "no url here");
    }

    #[test]
    fn percent_escapes() {
        let u = parse_remote("ssh://foo%40barcorp.com@github.com/user/re%20po.git").unwrap();
        assert_eq!(u.user(), Some("foo%40barcorp.com"));
        assert_eq!(u.decoded_path(), "/user/re po.git");
        assert_eq!(
            u.command_arg(),
            "ssh://foo%40barcorp.com@github.com/user/re%20po.git"
        );
    }

    #[test]
    fn go_path_clean() {
        for (input, want) in [
            ("", "."),
            ("/", "/"),
            ("/../../escape", "/escape"),
            ("/dir/../../escape", "/escape"),
            ("/absolute/path", "/absolute/path"),
            ("/../", "/"),
            ("a/b/../c/", "a/c"),
            ("../a", "../a"),
            ("//a//b/./c/", "/a/b/c"),
        ] {
            assert_eq!(clean_path(input), want, "{input:?}");
        }
    }

    #[test]
    fn ports_and_hostnames() {
        let u = parse_remote("ssh://git@EXAMPLE.com:22/x").unwrap();
        assert_eq!(u.hostname(), "example.com");
        assert_eq!(u.explicit_port(), None);
        let u = parse_remote("ssh://git@example.com:2222/x").unwrap();
        assert_eq!(u.explicit_port(), Some("2222"));
    }
}
