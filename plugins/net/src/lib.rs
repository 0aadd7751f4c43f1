//! Network helpers shared by kiln's http and image source plugins (linked into each
//! plugin; not a plugin itself).
//!
//! - [`proxy`]: the proxy of each request from `HTTP_PROXY`, `HTTPS_PROXY` and
//!   `NO_PROXY`, as Go's `http.ProxyFromEnvironment` chooses, and one ureq agent per
//!   proxy.

pub mod proxy;

/// `scheme://user:password@host/…` with the user information replaced by `xxxxx`
/// (`xxxxx:xxxxx` when a password was present); other text unchanged.
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
    let redacted = if authority[..at].contains(':') {
        "xxxxx:xxxxx"
    } else {
        "xxxxx"
    };
    format!("{}{}{}", &s[..auth_start], redacted, &s[auth_start + at..])
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_user_information() {
        assert_eq!(
            super::redact_str("http://u:p@proxy:3128/x"),
            "http://xxxxx:xxxxx@proxy:3128/x"
        );
        assert_eq!(super::redact_str("http://u@proxy"), "http://xxxxx@proxy");
        assert_eq!(super::redact_str("proxy:3128"), "proxy:3128");
    }
}
