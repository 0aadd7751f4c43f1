//! Content hashes of snapshot trees, BuildKit's `contenthash` in spirit: a checksum per
//! selected path, so a step's content-based ("slow") cache key changes only when what it
//! reads changes.
//!
//! A tree is walked once ([`TreeHash::compute`]): every entry gets a digest made of its
//! header — kind, permission bits, uid, gid, size, link target; never the mtime — and
//! its content: a file's bytes, a directory's children (name and digest, sorted by
//! name). The checksum of a selected path is the digest of the entry it names, resolved
//! inside the tree (symlinks in the path are followed but never leave the tree).
//! [`ContentHasher`] memoises trees per snapshot id, so concurrent callers in one
//! process hash a snapshot once.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

/// A failure to hash a tree: names the path.
#[derive(Debug, thiserror::Error)]
#[error("content hash of {}: {source}", path.display())]
pub struct ContentHashError {
    /// The path that could not be read.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

#[derive(Clone, Debug)]
struct Entry {
    digest: [u8; 32],
    link: Option<PathBuf>,
}

/// The digests of every entry of one tree, by path relative to the tree's root (the
/// root itself is the empty path).
#[derive(Debug)]
pub struct TreeHash {
    entries: HashMap<PathBuf, Entry>,
}

const MAX_LINK_HOPS: usize = 40;

impl TreeHash {
    /// Walks `root` (not following symlinks) and hashes every entry.
    pub fn compute(root: &Path) -> Result<Self, ContentHashError> {
        let mut entries = HashMap::new();
        let meta = fs::symlink_metadata(root).map_err(|source| ContentHashError {
            path: root.to_path_buf(),
            source,
        })?;
        let mut buf = vec![0u8; 64 * 1024];
        hash_entry(root, PathBuf::new(), &meta, &mut entries, &mut buf)?;
        Ok(Self { entries })
    }

    /// The number of entries hashed (the root included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the tree is empty (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The digest of the whole tree.
    pub fn root_digest(&self) -> String {
        self.checksum("/", false)
    }

    /// Resolves `selector` inside the tree: `..` stops at the root, symlinks in the
    /// path are followed inside the tree (absolute targets from the tree's root), the
    /// final component only when `follow_final`. `None` when nothing is there.
    fn resolve(&self, selector: &str, follow_final: bool) -> Option<PathBuf> {
        let mut queue: VecDeque<OsString> = components(Path::new(selector)).collect();
        let mut cur = PathBuf::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            if c == ".." {
                cur.pop();
                continue;
            }
            cur.push(&c);
            let e = self.entries.get(&cur)?;
            if let Some(target) = &e.link {
                if queue.is_empty() && !follow_final {
                    break;
                }
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    return None;
                }
                cur.pop();
                if target.is_absolute() {
                    cur = PathBuf::new();
                }
                let mut rest: VecDeque<OsString> = components(target).collect();
                rest.extend(queue.drain(..));
                queue = rest;
            }
        }
        Some(cur)
    }

    /// The checksum (`sha256:<hex>`) of what `selector` names; a missing path has a
    /// checksum of its own, so it still keys consistently.
    pub fn checksum(&self, selector: &str, follow_final: bool) -> String {
        match self
            .resolve(selector, follow_final)
            .and_then(|p| self.entries.get(&p))
        {
            Some(e) => format!("sha256:{}", hex::encode(e.digest)),
            None => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(b"kiln.contenthash.missing"))
            ),
        }
    }

    /// The combined checksum of several selected paths: the slow key of one input.
    pub fn selection_checksum(&self, selectors: &[String], follow_final: bool) -> String {
        let mut sorted: Vec<&String> = selectors.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut h = Sha256::new();
        h.update(b"kiln.contenthash.v1\n");
        for s in sorted {
            h.update(s.as_bytes());
            h.update(b"\0");
            h.update(self.checksum(s, follow_final).as_bytes());
            h.update(b"\n");
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The normal components of `p` (`.` and root dropped, `..` kept).
fn components(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

fn header(h: &mut Sha256, kind: u8, meta: &fs::Metadata) {
    h.update([kind]);
    h.update((meta.mode() & 0o7777).to_le_bytes());
    h.update(meta.uid().to_le_bytes());
    h.update(meta.gid().to_le_bytes());
}

fn hash_entry(
    path: &Path,
    rel: PathBuf,
    meta: &fs::Metadata,
    out: &mut HashMap<PathBuf, Entry>,
    buf: &mut [u8],
) -> Result<[u8; 32], ContentHashError> {
    let err = |source| ContentHashError {
        path: path.to_path_buf(),
        source,
    };
    let ft = meta.file_type();
    let mut h = Sha256::new();
    let mut link = None;
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(err)?;
        h.update(b"l");
        h.update(meta.uid().to_le_bytes());
        h.update(meta.gid().to_le_bytes());
        h.update(target.as_os_str().as_bytes());
        link = Some(target);
    } else if ft.is_dir() {
        header(&mut h, b'd', meta);
        let mut children: Vec<(OsString, fs::Metadata)> = Vec::new();
        for e in fs::read_dir(path).map_err(err)? {
            let e = e.map_err(err)?;
            let m = fs::symlink_metadata(e.path()).map_err(|source| ContentHashError {
                path: e.path(),
                source,
            })?;
            children.push((e.file_name(), m));
        }
        children.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        for (name, m) in children {
            let d = hash_entry(&path.join(&name), rel.join(&name), &m, out, buf)?;
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(d);
        }
    } else if ft.is_file() {
        header(&mut h, b'f', meta);
        h.update(meta.len().to_le_bytes());
        let mut content = Sha256::new();
        let mut f = fs::File::open(path).map_err(err)?;
        loop {
            let n = f.read(buf).map_err(err)?;
            if n == 0 {
                break;
            }
            content.update(&buf[..n]);
        }
        h.update(content.finalize());
    } else {
        header(&mut h, b'o', meta);
        h.update(meta.rdev().to_le_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    out.insert(rel, Entry { digest, link });
    Ok(digest)
}

type Slot = Arc<Mutex<Option<Arc<TreeHash>>>>;

/// Memoises [`TreeHash`]es per snapshot id: concurrent callers for one snapshot wait for
/// one walk. Snapshots are immutable, so an entry never goes stale.
#[derive(Default)]
pub struct ContentHasher {
    trees: Mutex<HashMap<String, Slot>>,
}

impl ContentHasher {
    /// An empty memo.
    pub fn new() -> Self {
        Self::default()
    }

    /// The memo slot of snapshot `id` (created empty on first use).
    fn slot(&self, id: &str) -> Arc<Mutex<Option<Arc<TreeHash>>>> {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    /// The tree hash of snapshot `id` whose tree is at `root` (blocking: call it from
    /// a blocking thread).
    pub fn tree(&self, id: &str, root: &Path) -> Result<Arc<TreeHash>, ContentHashError> {
        let slot = self.slot(id);
        // Holding the slot's lock while hashing makes other callers for the same
        // snapshot wait for this walk; errors are not memoised.
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = &*guard {
            return Ok(t.clone());
        }
        let t = Arc::new(TreeHash::compute(root)?);
        *guard = Some(t.clone());
        Ok(t)
    }

    /// Records the tree hash of snapshot `id`, computed before it was committed (or of
    /// an identical tree).
    pub fn insert(&self, id: &str, tree: Arc<TreeHash>) {
        let slot = self.slot(id);
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        guard.get_or_insert(tree);
    }

    /// How many trees are memoised.
    pub fn cached(&self) -> usize {
        self.trees
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.lock().map(|g| g.is_some()).unwrap_or(false))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        fs::create_dir_all(p.join("src/sub")).unwrap();
        fs::write(p.join("src/a.rs"), "fn a() {}").unwrap();
        fs::write(p.join("src/sub/b.rs"), "fn b() {}").unwrap();
        fs::write(p.join("README"), "hi").unwrap();
        symlink("/src", p.join("abs")).unwrap();
        symlink("../../../etc", p.join("esc")).unwrap();
        d
    }

    #[test]
    fn unselected_edits_do_not_change_a_selection() {
        let d = tree();
        let t1 = TreeHash::compute(d.path()).unwrap();
        fs::write(d.path().join("README"), "changed").unwrap();
        let t2 = TreeHash::compute(d.path()).unwrap();
        assert_eq!(t1.checksum("/src", false), t2.checksum("/src", false));
        assert_ne!(t1.checksum("/README", false), t2.checksum("/README", false));
        assert_ne!(t1.root_digest(), t2.root_digest());
        fs::write(d.path().join("src/sub/b.rs"), "fn b2() {}").unwrap();
        let t3 = TreeHash::compute(d.path()).unwrap();
        assert_ne!(t2.checksum("/src", false), t3.checksum("/src", false));
        assert_eq!(
            t2.checksum("/src/a.rs", false),
            t3.checksum("/src/a.rs", false)
        );
    }

    #[test]
    fn mode_counts_and_mtime_does_not() {
        let d = tree();
        let f = d.path().join("src/a.rs");
        let t1 = TreeHash::compute(d.path()).unwrap();
        let now = std::time::SystemTime::now() + std::time::Duration::from_secs(100);
        fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(now)
            .unwrap();
        assert_eq!(
            t1.checksum("/src", false),
            TreeHash::compute(d.path()).unwrap().checksum("/src", false)
        );
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(
            t1.checksum("/src", false),
            TreeHash::compute(d.path()).unwrap().checksum("/src", false)
        );
    }

    #[test]
    fn symlinks_resolve_inside_the_tree() {
        let d = tree();
        let t = TreeHash::compute(d.path()).unwrap();
        // `abs` -> /src: followed inside the tree, not on the host.
        assert_eq!(
            t.checksum("/abs/a.rs", false),
            t.checksum("/src/a.rs", false)
        );
        assert_eq!(t.checksum("/abs", true), t.checksum("/src", false));
        assert_ne!(t.checksum("/abs", false), t.checksum("/src", false));
        // `esc` -> ../../../etc stays at the root: /etc does not exist in the tree.
        assert_eq!(t.checksum("/esc/passwd", false), t.checksum("/nope", false));
        assert_eq!(t.checksum("../../src", false), t.checksum("/src", false));
    }

    #[test]
    fn selection_is_order_independent_and_memoised() {
        let d = tree();
        let h = ContentHasher::new();
        let t = h.tree("snap1", d.path()).unwrap();
        let a = t.selection_checksum(&["/src".into(), "/README".into()], false);
        let b = t.selection_checksum(&["/README".into(), "/src".into()], false);
        assert_eq!(a, b);
        fs::write(d.path().join("README"), "changed").unwrap();
        // Same snapshot id: the memo answers (snapshots are immutable).
        assert!(Arc::ptr_eq(&t, &h.tree("snap1", d.path()).unwrap()));
        assert_eq!(h.cached(), 1);
    }
}
