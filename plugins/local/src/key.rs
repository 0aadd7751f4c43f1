//! The cache key of a local source, byte for byte as BuildKit computes it.

use kiln_plugin_api::gojson::{push_string as go_json_string, push_string_list as go_json_list};
use sha2::{Digest, Sha256};

use crate::identifier::LocalId;

/// The JSON BuildKit hashes for a local source's key.
pub fn key_json(session: &str, id: &LocalId) -> String {
    let mut out = String::from("{\"SessionID\":");
    go_json_string(&mut out, session);
    out.push_str(",\"IncludePatterns\":");
    go_json_list(&mut out, id.include.as_deref());
    out.push_str(",\"ExcludePatterns\":");
    go_json_list(&mut out, id.exclude.as_deref());
    out.push_str(",\"FollowPaths\":");
    go_json_list(&mut out, id.follow.as_deref());
    out.push('}');
    out
}

/// `(key, pin)`: key `session:<name>:<d>` and pin `d`, where `d` is the
/// `sha256:<hex>` of [`key_json`]. `session` is `local.session`, else the job id.
pub fn cache_key(session: &str, id: &LocalId) -> (String, String) {
    let d = format!(
        "sha256:{}",
        hex::encode(Sha256::digest(key_json(session, id).as_bytes()))
    );
    (format!("session:{}:{d}", id.key_name), d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::Differ;

    fn id(include: Option<&[&str]>, exclude: Option<&[&str]>, follow: Option<&[&str]>) -> LocalId {
        let v = |l: Option<&[&str]>| l.map(|l| l.iter().map(|s| s.to_string()).collect());
        LocalId {
            name: "context".into(),
            key_name: "context".into(),
            session: None,
            include: v(include),
            exclude: v(exclude),
            follow: v(follow),
            shared_key_hint: None,
            differ: Differ::Metadata,
            ignore_file: None,
            ignore_file_explicit: false,
        }
    }

    #[test]
    fn json_is_go_shaped() {
        assert_eq!(
            key_json("s1", &id(None, None, None)),
            r#"{"SessionID":"s1","IncludePatterns":null,"ExcludePatterns":null,"FollowPaths":null}"#
        );
        assert_eq!(
            key_json("s1", &id(Some(&["a", "b/*"]), Some(&[]), Some(&["x"]))),
            r#"{"SessionID":"s1","IncludePatterns":["a","b/*"],"ExcludePatterns":[],"FollowPaths":["x"]}"#
        );
    }

    #[test]
    fn key_and_pin() {
        let (key, pin) = cache_key("s1", &id(None, None, None));
        // sha256 of the JSON above, computed independently with sha256sum.
        let want = "sha256:ef2f51baf279a921df0799bb085582e12e05bdd626adf83f2e79794528894965";
        assert_eq!(pin, want);
        assert_eq!(key, format!("session:context:{want}"));
        // Every list is part of the key; the session too.
        let keys = [
            cache_key("s1", &id(None, None, None)).0,
            cache_key("s2", &id(None, None, None)).0,
            cache_key("s1", &id(Some(&[]), None, None)).0,
            cache_key("s1", &id(None, Some(&["x"]), None)).0,
            cache_key("s1", &id(None, None, Some(&["x"]))).0,
        ];
        let unique: std::collections::HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
    }
}
