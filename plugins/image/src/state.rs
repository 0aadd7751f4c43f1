//! What the plugin remembers between runs, in its state directory (`Host::state_dir`):
//! the digest each `name:tag` last resolved to (for `image.resolvemode=local`), and
//! which repositories each top-level digest was pulled from (so a cached manifest is
//! reused for `name@digest` only under a repository that served it, as BuildKit's
//! distribution-source labels do). One small file per fact, written temp + rename.

use std::path::PathBuf;

use sha2::{Digest as _, Sha256};

/// The plugin's records.
#[derive(Clone, Debug)]
pub struct State {
    dir: PathBuf,
}

fn name_hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

impl State {
    /// Records under `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn write(&self, sub: &str, key: &str, value: &str) -> std::io::Result<()> {
        let dir = self.dir.join(sub);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name_hash(key));
        let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), name_hash(key)));
        std::fs::write(&tmp, format!("{key}\n{value}\n"))?;
        std::fs::rename(&tmp, &path)
    }

    fn read(&self, sub: &str, key: &str) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(sub).join(name_hash(key))).ok()?;
        let (k, v) = text.split_once('\n')?;
        (k == key).then(|| v.trim_end().to_string())
    }

    /// Remembers that `name:tag` (e.g. `docker.io/library/busybox:1`) resolved to `digest`.
    pub fn set_tag(&self, name_tag: &str, digest: &str) {
        if let Err(e) = self.write("tags", name_tag, digest) {
            tracing::warn!("cannot record the digest of {name_tag}: {e}");
        }
    }

    /// The digest `name:tag` last resolved to.
    pub fn tag(&self, name_tag: &str) -> Option<String> {
        self.read("tags", name_tag)
    }

    /// Remembers that `repo` (a canonical name without tag) served `digest`.
    pub fn set_source(&self, repo: &str, digest: &str) {
        if let Err(e) = self.write("sources", &format!("{repo}@{digest}"), "") {
            tracing::warn!("cannot record {repo}@{digest}: {e}");
        }
    }

    /// Whether `repo` served `digest` before.
    pub fn has_source(&self, repo: &str, digest: &str) -> bool {
        self.read("sources", &format!("{repo}@{digest}")).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records() {
        let d = tempfile::tempdir().unwrap();
        let s = State::new(d.path().join("state"));
        assert_eq!(s.tag("r/a:1"), None);
        s.set_tag("r/a:1", "sha256:aa");
        s.set_tag("r/a:1", "sha256:bb");
        assert_eq!(s.tag("r/a:1").as_deref(), Some("sha256:bb"));
        assert!(!s.has_source("r/a", "sha256:bb"));
        s.set_source("r/a", "sha256:bb");
        assert!(s.has_source("r/a", "sha256:bb"));
        assert!(!s.has_source("r/b", "sha256:bb"));
    }
}
