//! Cache-key composition (DESIGN §6).
//!
//! - A source result is saved under `store::root_key(digest, 0)` = sha256(`<digest>@0`) for every
//!   index digest the source produced (BuildKit's root key); `random:` digests keep
//!   their prefix and are never looked up.
//! - A session source (a `random:` key, e.g. `local://`) is keyed by its content
//!   instead: [`content_key`] of the whole tree's checksum.
//! - An op with inputs has a *definition* key ([`op_key`] over each input's key and its
//!   selector digest) and, when it reads inputs by path, a *content* key ([`op_key`]
//!   over the checksums of the selected paths in place of those inputs' keys). Its
//!   result is saved under both; the content key is the one its dependents build on,
//!   so an edit outside the selected paths changes nothing downstream.

use serde_json::json;

use crate::contenthash::Selector;
use crate::definition::op::{canonical_bytes, sha256_digest};

/// Whether a key is session-scoped (never looked up, never reused across builds).
pub fn is_random(key: &str) -> bool {
    key.starts_with("random:")
}

/// The key of a session source's result, from the checksum of its whole tree.
pub fn content_key(tree_checksum: &str) -> String {
    sha256_digest(format!("kiln.content.v0:{tree_checksum}").as_bytes())
}

/// The digest of an op's canonical definition (its cache map digest).
pub fn op_digest(canonical: &serde_json::Value) -> String {
    sha256_digest(&canonical_bytes(canonical))
}

/// The digest of what an op selects from one input (`""`: the whole input): each
/// selector's path with how it is read (wildcard, symlink handling, unpacking).
pub fn selector_digest(selectors: Option<&[Selector]>) -> String {
    match selectors {
        None => String::new(),
        Some(s) => {
            let v: Vec<serde_json::Value> = s.iter().map(Selector::to_json).collect();
            sha256_digest(&canonical_bytes(&json!(v)))
        }
    }
}

/// One input's part of an op key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// The input result's key, or the checksum of what the op selects from it.
    pub key: String,
    /// The selector digest (empty for a content checksum or a whole input).
    pub selector: String,
}

/// The key of an op with inputs: its digest, output 0, and per input a key and selector.
pub fn op_key(op_digest: &str, deps: &[Dep]) -> String {
    let deps: Vec<serde_json::Value> = deps
        .iter()
        .map(|d| json!({ "key": d.key, "selector": d.selector }))
        .collect();
    let v = json!({ "digest": op_digest, "output": 0, "deps": deps });
    sha256_digest(&canonical_bytes(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn root_keys_are_buildkits() {
        let d = "sha256:abcd";
        let want = hex::encode(Sha256::digest(b"sha256:abcd@0"));
        assert_eq!(crate::store::root_key(d, 0), format!("sha256:{want}"));
        assert!(is_random(&crate::store::root_key("random:abcd", 0)));
    }

    #[test]
    fn op_keys_depend_on_every_part() {
        let dep = |k: &str, s: &str| Dep {
            key: k.into(),
            selector: s.into(),
        };
        let base = op_key("sha256:op", &[dep("k1", ""), dep("k2", "s")]);
        assert_ne!(base, op_key("sha256:op2", &[dep("k1", ""), dep("k2", "s")]));
        assert_ne!(base, op_key("sha256:op", &[dep("k1", ""), dep("k2", "t")]));
        assert_ne!(base, op_key("sha256:op", &[dep("k2", "s"), dep("k1", "")]));
        assert_eq!(base, op_key("sha256:op", &[dep("k1", ""), dep("k2", "s")]));
        let sel = |follow| Selector {
            path: "/a".into(),
            wildcard: false,
            follow,
            unpack: false,
        };
        assert_ne!(selector_digest(Some(&[sel(false)])), selector_digest(None));
        assert_ne!(
            selector_digest(Some(&[sel(false)])),
            selector_digest(Some(&[sel(true)]))
        );
    }
}
