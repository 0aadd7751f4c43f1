//! Content hashes of snapshot trees, BuildKit's `contenthash` in spirit: a checksum per
//! selected path, so a step's content-based ("slow") cache key changes only when what it
//! reads changes.
//!
//! A tree is walked once ([`TreeHash::compute`]): every entry gets a digest made of its
//! header — kind, permission bits, uid, gid, extended attributes (sorted), size, link
//! target; never the mtime — and its content: a file's bytes, a directory's children
//! (name and digest, sorted by name) and the hard links among the files below it (for
//! each file sharing an inode with an earlier one in walk order, both walk indexes).
//! A [`Selector`] names what one copy reads, resolved exactly as the worker resolves it
//! inside the tree (symlinks in the path are followed but never leave the tree; a final
//! link as the copy says; wildcards expanded against the tree like the worker does).
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

use serde_json::json;
use sha2::{Digest, Sha256};

use crate::worker::pattern::{glob_component, has_wildcards};

/// A failure to hash a tree: names the path.
#[derive(Debug, thiserror::Error)]
#[error("content hash of {}: {source}", path.display())]
pub struct ContentHashError {
    /// The path that could not be read.
    pub path: PathBuf,
    /// Why.
    pub source: io::Error,
}

/// What one copy reads from an input tree, resolved exactly as the worker resolves it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// The source path, absolute and lexically clean (`..` clamped at the root); a
    /// wildcard pattern when `wildcard`.
    pub path: String,
    /// Whether `path` is a pattern expanded against the tree (the worker's
    /// `resolve_wildcards`: the part before the first wildcard is resolved following
    /// links, then each later component is matched one folder level at a time).
    pub wildcard: bool,
    /// Whether a symlink named by the path (or by a match) is followed.
    pub follow: bool,
    /// Whether the copy unpacks archives: the worker then also reads through a final
    /// symlink, whatever `follow` says.
    pub unpack: bool,
}

impl Selector {
    /// The selector as a JSON value (for keys and memo names).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "path": self.path,
            "wildcard": self.wildcard,
            "follow": self.follow,
            "unpack": self.unpack,
        })
    }
}

#[derive(Clone, Debug)]
struct Entry {
    digest: [u8; 32],
    link: Option<PathBuf>,
    /// A folder's entry names, sorted by bytes.
    children: Option<Vec<OsString>>,
}

/// The digests of every entry of one tree, by path relative to the tree's root (the
/// root itself is the empty path).
#[derive(Debug)]
pub struct TreeHash {
    entries: HashMap<PathBuf, Entry>,
}

const MAX_LINK_HOPS: usize = 40;

fn missing() -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(b"kiln.contenthash.missing"))
    )
}

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

    /// Resolves `selector` inside the tree like the worker's `Root::resolve_rel`: `..`
    /// stops at the root, symlinks in the path are followed inside the tree (absolute
    /// targets from the tree's root), the final component only when `follow_final`.
    /// `None` when nothing is there.
    fn resolve(&self, selector: &Path, follow_final: bool) -> Option<PathBuf> {
        let mut queue: VecDeque<OsString> = components(selector).collect();
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
        self.checksum_of(Path::new(selector), follow_final)
    }

    fn checksum_of(&self, path: &Path, follow_final: bool) -> String {
        match self
            .resolve(path, follow_final)
            .and_then(|p| self.entries.get(&p))
        {
            Some(e) => format!("sha256:{}", hex::encode(e.digest)),
            None => missing(),
        }
    }

    /// The checksum of one path a copy reads: the entry the worker copies and, for an
    /// unpacking copy that keeps links, also the entry behind a final link (the worker
    /// unpacks that one when it is an archive, and copies the link otherwise).
    fn path_checksum(&self, path: &Path, follow: bool, unpack: bool) -> String {
        let own = self.checksum_of(path, follow);
        if follow || !unpack {
            return own;
        }
        let followed = self.checksum_of(path, true);
        let mut h = Sha256::new();
        h.update(b"kiln.contenthash.unpack\n");
        h.update(own.as_bytes());
        h.update(b"\n");
        h.update(followed.as_bytes());
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// The paths (relative to the root) a wildcard pattern matches, named as the
    /// worker's `resolve_wildcards` names them: under the resolved folder, sorted per
    /// level.
    pub fn wildcard_matches(&self, pattern: &str) -> Vec<PathBuf> {
        let comps = clean_components(Path::new(pattern));
        let first = comps
            .iter()
            .position(|c| has_wildcards(&c.to_string_lossy()))
            .unwrap_or(comps.len());
        let base: PathBuf = comps[..first].iter().collect();
        let Some(base) = self.resolve(&base, true) else {
            return Vec::new();
        };
        let mut found = vec![base];
        for comp in &comps[first..] {
            let mut next = Vec::new();
            for dir in &found {
                let Some(dir) = self.resolve(dir, true) else {
                    continue;
                };
                let Some(children) = self.entries.get(&dir).and_then(|e| e.children.as_ref())
                else {
                    continue;
                };
                // Children are sorted by bytes, as the worker sorts its matches.
                next.extend(
                    children
                        .iter()
                        .filter(|n| glob_component(comp.as_bytes(), n.as_bytes()))
                        .map(|n| dir.join(n)),
                );
            }
            found = next;
        }
        found
    }

    /// The checksum of what one selector reads: for a wildcard, every match (its path
    /// and the checksum of what the worker copies for it); otherwise the one path.
    pub fn selector_checksum(&self, s: &Selector) -> String {
        if !s.wildcard {
            return self.path_checksum(Path::new(&s.path), s.follow, s.unpack);
        }
        let mut h = Sha256::new();
        h.update(b"kiln.contenthash.wildcard\n");
        for m in self.wildcard_matches(&s.path) {
            h.update(m.as_os_str().as_bytes());
            h.update(b"\0");
            h.update(self.path_checksum(&m, s.follow, s.unpack).as_bytes());
            h.update(b"\n");
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }

    /// The combined checksum of several selectors: the content key of one input.
    pub fn selection_checksum(&self, selectors: &[Selector]) -> String {
        let mut sorted: Vec<&Selector> = selectors.iter().collect();
        sorted.sort();
        sorted.dedup();
        let mut h = Sha256::new();
        h.update(b"kiln.contenthash.v2\n");
        for s in sorted {
            h.update(serde_json::to_vec(&s.to_json()).expect("JSON encodes"));
            h.update(b"\0");
            h.update(self.selector_checksum(s).as_bytes());
            h.update(b"\n");
        }
        format!("sha256:{}", hex::encode(h.finalize()))
    }
}

/// The components of `p` cleaned lexically (`.` dropped, `..` clamped at the root), as
/// the worker's `clean_rel` does.
fn clean_components(p: &Path) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_os_string()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

/// The normal components of `p` (`.` and root dropped, `..` kept).
fn components(p: &Path) -> impl Iterator<Item = OsString> + '_ {
    p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        _ => None,
    })
}

/// The parts of an entry's header every kind shares: kind, permission bits, owner and
/// extended attributes (sorted by name).
fn header(
    h: &mut Sha256,
    kind: u8,
    meta: &fs::Metadata,
    path: &Path,
) -> Result<(), ContentHashError> {
    h.update([kind]);
    if kind != b'l' {
        h.update((meta.mode() & 0o7777).to_le_bytes());
    }
    h.update(meta.uid().to_le_bytes());
    h.update(meta.gid().to_le_bytes());
    let mut xattrs = crate::worker::xattr::list(path).map_err(|source| ContentHashError {
        path: path.to_path_buf(),
        source,
    })?;
    xattrs.sort();
    h.update((xattrs.len() as u64).to_le_bytes());
    for (name, value) in xattrs {
        let name = name.as_bytes();
        h.update((name.len() as u64).to_le_bytes());
        h.update(name);
        h.update((value.len() as u64).to_le_bytes());
        h.update(&value);
    }
    Ok(())
}

/// What a walked entry hands its parent: its digest, how many entries its subtree
/// holds (itself included), and its regular files with more than one link, by walk
/// index within the subtree (pre-order, children by name) and inode.
struct Walked {
    digest: [u8; 32],
    count: u64,
    linked: Vec<(u64, (u64, u64))>,
}

fn hash_entry(
    path: &Path,
    rel: PathBuf,
    meta: &fs::Metadata,
    out: &mut HashMap<PathBuf, Entry>,
    buf: &mut [u8],
) -> Result<Walked, ContentHashError> {
    let err = |source| ContentHashError {
        path: path.to_path_buf(),
        source,
    };
    let ft = meta.file_type();
    let mut h = Sha256::new();
    let mut link = None;
    let mut names = None;
    let mut count = 1u64;
    let mut linked = Vec::new();
    if ft.is_symlink() {
        let target = fs::read_link(path).map_err(err)?;
        header(&mut h, b'l', meta, path)?;
        h.update(target.as_os_str().as_bytes());
        link = Some(target);
    } else if ft.is_dir() {
        header(&mut h, b'd', meta, path)?;
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
        let mut sorted = Vec::with_capacity(children.len());
        for (name, m) in children {
            let w = hash_entry(&path.join(&name), rel.join(&name), &m, out, buf)?;
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(w.digest);
            linked.extend(w.linked.into_iter().map(|(i, ino)| (i + count, ino)));
            count += w.count;
            sorted.push(name);
        }
        // Hard links inside this subtree: for each file sharing an inode with an
        // earlier one, its walk index and the index of the first path of that inode
        // (BuildKit records the same structure as each file's link target).
        let mut first: HashMap<(u64, u64), u64> = HashMap::new();
        for (i, ino) in &linked {
            match first.get(ino) {
                Some(f) => {
                    h.update(b"hardlink\0");
                    h.update(i.to_le_bytes());
                    h.update(f.to_le_bytes());
                }
                None => {
                    first.insert(*ino, *i);
                }
            }
        }
        names = Some(sorted);
    } else if ft.is_file() {
        header(&mut h, b'f', meta, path)?;
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
        if meta.nlink() > 1 {
            linked.push((0, (meta.dev(), meta.ino())));
        }
    } else {
        header(&mut h, b'o', meta, path)?;
        h.update(meta.rdev().to_le_bytes());
    }
    let digest: [u8; 32] = h.finalize().into();
    out.insert(
        rel,
        Entry {
            digest,
            link,
            children: names,
        },
    );
    Ok(Walked {
        digest,
        count,
        linked,
    })
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
        let a = t.selection_checksum(&[plain("/src", false), plain("/README", false)]);
        let b = t.selection_checksum(&[plain("/README", false), plain("/src", false)]);
        assert_eq!(a, b);
        fs::write(d.path().join("README"), "changed").unwrap();
        // Same snapshot id: the memo answers (snapshots are immutable).
        assert!(Arc::ptr_eq(&t, &h.tree("snap1", d.path()).unwrap()));
        assert_eq!(h.cached(), 1);
    }

    fn plain(path: &str, follow: bool) -> Selector {
        Selector {
            path: path.into(),
            wildcard: false,
            follow,
            unpack: false,
        }
    }

    fn glob(path: &str, follow: bool) -> Selector {
        Selector {
            wildcard: true,
            ..plain(path, follow)
        }
    }

    fn sum(d: &Path, s: &Selector) -> String {
        TreeHash::compute(d).unwrap().selector_checksum(s)
    }

    #[test]
    fn a_wildcard_prefix_is_resolved_through_a_symlink() {
        // `src -> real`: the worker expands `/src/*.rs` inside `real`.
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("real")).unwrap();
        fs::write(d.path().join("real/a.rs"), "one").unwrap();
        fs::write(d.path().join("real/notes.txt"), "x").unwrap();
        symlink("real", d.path().join("src")).unwrap();
        let t = TreeHash::compute(d.path()).unwrap();
        assert_eq!(
            t.wildcard_matches("/src/*.rs"),
            vec![PathBuf::from("real/a.rs")]
        );
        let before = t.selector_checksum(&glob("/src/*.rs", false));
        fs::write(d.path().join("real/notes.txt"), "unmatched edit").unwrap();
        assert_eq!(before, sum(d.path(), &glob("/src/*.rs", false)));
        fs::write(d.path().join("real/a.rs"), "two").unwrap();
        assert_ne!(before, sum(d.path(), &glob("/src/*.rs", false)));
        // A new match changes the selection too.
        let before = sum(d.path(), &glob("/src/*.rs", false));
        fs::write(d.path().join("real/b.rs"), "b").unwrap();
        assert_ne!(before, sum(d.path(), &glob("/src/*.rs", false)));
    }

    #[test]
    fn followed_wildcard_matches_hash_their_targets() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("src")).unwrap();
        fs::write(d.path().join("target.txt"), "one").unwrap();
        symlink("/target.txt", d.path().join("src/a.rs")).unwrap();
        let (kept, followed) = (glob("/src/*.rs", false), glob("/src/*.rs", true));
        let (k1, f1) = (sum(d.path(), &kept), sum(d.path(), &followed));
        fs::write(d.path().join("target.txt"), "two").unwrap();
        // A copy keeping the link reads only the link; one following it, the target.
        assert_eq!(k1, sum(d.path(), &kept));
        assert_ne!(f1, sum(d.path(), &followed));
    }

    #[test]
    fn unpacking_reads_through_a_symlinked_archive() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("real.tar"), "archive v1").unwrap();
        symlink("real.tar", d.path().join("app.tar")).unwrap();
        let mut s = plain("/app.tar", false);
        s.unpack = true;
        let before = sum(d.path(), &s);
        fs::write(d.path().join("real.tar"), "archive v2").unwrap();
        assert_ne!(before, sum(d.path(), &s));
        // Without unpacking, a kept link is only its text.
        let kept = plain("/app.tar", false);
        let k = sum(d.path(), &kept);
        fs::write(d.path().join("real.tar"), "archive v3").unwrap();
        assert_eq!(k, sum(d.path(), &kept));
    }

    #[test]
    fn hard_link_structure_counts() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("s")).unwrap();
        fs::write(d.path().join("s/a"), "same").unwrap();
        fs::write(d.path().join("s/b"), "same").unwrap();
        let apart = sum(d.path(), &plain("/s", false));
        fs::remove_file(d.path().join("s/b")).unwrap();
        fs::hard_link(d.path().join("s/a"), d.path().join("s/b")).unwrap();
        let linked = sum(d.path(), &plain("/s", false));
        assert_ne!(apart, linked, "two copies vs one inode under two names");
        // A link to a path outside the selection is not structure inside it.
        fs::remove_file(d.path().join("s/b")).unwrap();
        fs::write(d.path().join("s/b"), "same").unwrap();
        fs::hard_link(d.path().join("s/a"), d.path().join("outside")).unwrap();
        assert_eq!(apart, sum(d.path(), &plain("/s", false)));
    }

    #[test]
    fn extended_attributes_count() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        fs::write(&f, "x").unwrap();
        let before = sum(d.path(), &plain("/f", false));
        let name = std::ffi::CString::new("user.kiln.test").unwrap();
        crate::worker::xattr::set(&f, &name, b"v1").unwrap();
        let listed = crate::worker::xattr::list(&f).unwrap();
        assert!(
            !listed.is_empty(),
            "this test needs a temp folder ($TMPDIR) on a filesystem with user xattrs"
        );
        let v1 = sum(d.path(), &plain("/f", false));
        assert_ne!(before, v1);
        crate::worker::xattr::set(&f, &name, b"v2").unwrap();
        assert_ne!(v1, sum(d.path(), &plain("/f", false)));
    }
}
