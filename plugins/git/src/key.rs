//! Cache keys and pins, byte for byte as BuildKit's git source forms them
//! (`source/git/source.go`, `CacheKey`).
//!
//! Key = base sha, then `.git#<fullref>` (keepgitdir), `:<subdir>`,
//! `(skip-submodules)`, `(mtime=<v>)` (when not `checkout`) and `(bundle)`. The base
//! sha is the peeled commit for an annotated tag without `.git`, else the resolved
//! object. The pin is always the resolved object (the tag object for annotated tags).
//! The remote URL and secrets are never part of either.

use crate::attrs::MtimePolicy;
use crate::identifier::GitIdentifier;
use crate::resolve::Resolved;

/// The key of `id` resolved as `r`.
pub fn cache_key(id: &GitIdentifier, r: &Resolved) -> String {
    let base = if !id.keep_git_dir && r.is_annotated() {
        &r.commit
    } else {
        &r.checksum
    };
    let mut key = base.clone();
    if id.keep_git_dir {
        key.push_str(".git#");
        key.push_str(&r.fullref);
    }
    if !id.subdir.is_empty() {
        key.push(':');
        key.push_str(&id.subdir);
    }
    if id.skip_submodules {
        key.push_str("(skip-submodules)");
    }
    if id.mtime != MtimePolicy::Checkout {
        key.push_str(&format!("(mtime={})", id.mtime.as_str()));
    }
    if id.checkout_bundle {
        key.push_str("(bundle)");
    }
    key
}

/// The pin of a resolution: the object the ref named.
pub fn pin(r: &Resolved) -> String {
    r.checksum.clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    const COMMIT: &str = "8d6c2a1d1f4b5e9d0c3b2a19f8e7d6c5b4a39281";
    const TAG: &str = "1f2e3d4c5b6a79881726354453627180a9b8c7d6";

    fn id(url: &str, attrs: &[(&str, &str)]) -> GitIdentifier {
        let a: BTreeMap<String, String> = attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GitIdentifier::parse(url, &a).unwrap()
    }

    fn branch() -> Resolved {
        Resolved {
            fullref: "refs/heads/master".into(),
            checksum: COMMIT.into(),
            commit: COMMIT.into(),
        }
    }

    fn annotated() -> Resolved {
        Resolved {
            fullref: "refs/tags/v1.2.3".into(),
            checksum: TAG.into(),
            commit: COMMIT.into(),
        }
    }

    #[test]
    fn branch_key_is_the_commit() {
        let i = id("https://u:secret@example.com/r.git", &[]);
        assert_eq!(cache_key(&i, &branch()), COMMIT);
        assert_eq!(pin(&branch()), COMMIT);
        assert!(!cache_key(&i, &branch()).contains("example"));
    }

    #[test]
    fn keepgitdir_adds_the_ref() {
        let i = id("example.com/r.git", &[("git.keepgitdir", "true")]);
        assert_eq!(
            cache_key(&i, &branch()),
            format!("{COMMIT}.git#refs/heads/master")
        );
    }

    #[test]
    fn annotated_tag_key_is_the_commit_and_pin_the_tag() {
        let i = id("example.com/r.git#v1.2.3", &[]);
        assert_eq!(cache_key(&i, &annotated()), COMMIT);
        assert_eq!(pin(&annotated()), TAG);
        let k = id("example.com/r.git#v1.2.3", &[("git.keepgitdir", "true")]);
        assert_eq!(
            cache_key(&k, &annotated()),
            format!("{TAG}.git#refs/tags/v1.2.3")
        );
    }

    #[test]
    fn subdir_is_44_chars() {
        let i = id("example.com/r.git#master:sub", &[]);
        let key = cache_key(&i, &branch());
        assert_eq!(key, format!("{COMMIT}:sub"));
        assert_eq!(key.len(), 44);
    }

    #[test]
    fn all_suffixes_in_buildkit_order() {
        let i = id(
            "example.com/r.git#master:a/b",
            &[
                ("git.keepgitdir", "true"),
                ("git.skipsubmodules", "true"),
                ("git.mtime", "commit"),
            ],
        );
        assert_eq!(
            cache_key(&i, &branch()),
            format!("{COMMIT}.git#refs/heads/master:a/b(skip-submodules)(mtime=commit)")
        );
    }

    #[test]
    fn sha_ref_with_keepgitdir() {
        let i = id(
            &format!("example.com/r.git#{COMMIT}"),
            &[("git.keepgitdir", "true")],
        );
        let r = Resolved {
            fullref: COMMIT.into(),
            checksum: COMMIT.into(),
            commit: COMMIT.into(),
        };
        assert_eq!(cache_key(&i, &r), format!("{COMMIT}.git#{COMMIT}"));
    }
}
