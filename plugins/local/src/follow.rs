//! `local.followpaths`: the named paths plus, for every symlink met on the way to
//! them, the path the link points to, re-rooted inside the local directory.

use std::collections::BTreeSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use kiln_plugin_api::patterns::{clean_path, Pattern};

/// Symlink hops followed from one follow path before giving up (a loop).
const MAX_HOPS: usize = 40;

/// An I/O failure while resolving a follow path, naming the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot resolve follow path {path}: {source}")]
pub struct FollowError {
    /// The file that could not be read.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

struct Resolver<'a> {
    root: &'a Path,
    resolved: BTreeSet<String>,
}

/// Makes `p` relative to the root: `..` cannot climb above it, `/x` is `x`.
fn rooted(p: &str) -> String {
    clean_path(&format!("/{p}"))
        .trim_start_matches('/')
        .to_string()
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn join(a: &str, b: &str) -> String {
    match (a.is_empty(), b.is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{a}/{b}"),
    }
}

impl Resolver<'_> {
    fn add(&mut self, path: &str, hops: usize) -> Result<(), FollowError> {
        let path = rooted(path);
        if path.is_empty() {
            self.resolved.insert(".".to_string());
            return Ok(());
        }
        let comps: Vec<&str> = path.split('/').collect();
        let mut current = String::new();
        for (i, comp) in comps.iter().enumerate() {
            current = join(&current, comp);
            let rest = comps[i + 1..].join("/");
            let targets = self.links(&current)?;
            if targets.is_empty() {
                if rest.is_empty() {
                    self.resolved.insert(current);
                    return Ok(());
                }
                continue;
            }
            for (link, target) in targets {
                if !self.resolved.insert(link) || hops >= MAX_HOPS {
                    continue;
                }
                self.add(&join(&target, &rest), hops + 1)?;
            }
            if !has_wildcard(comp) {
                return Ok(());
            }
            // A wildcard also selects what it matches that is not a link.
            if rest.is_empty() {
                self.resolved.insert(current);
                return Ok(());
            }
        }
        Ok(())
    }

    /// The symlinks `rel` names (several when its last component has a wildcard),
    /// each with the root-relative path it points to.
    fn links(&self, rel: &str) -> Result<Vec<(String, String)>, FollowError> {
        let (dir, base) = rel.rsplit_once('/').unwrap_or(("", rel));
        if has_wildcard(base) {
            let Ok(Some(glob)) = Pattern::new(base) else {
                return Ok(vec![]);
            };
            let dir_path = self.root.join(dir);
            let entries = match std::fs::read_dir(&dir_path) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
                Err(source) => {
                    return Err(FollowError {
                        path: dir_path,
                        source,
                    })
                }
            };
            let mut out = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|source| FollowError {
                    path: dir_path.clone(),
                    source,
                })?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if glob.matches_exactly(&name) {
                    out.extend(self.links(&join(dir, &name))?);
                }
            }
            out.sort();
            return Ok(out);
        }
        let full = self.root.join(rel);
        let meta = match std::fs::symlink_metadata(&full) {
            Ok(m) => m,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(vec![])
            }
            Err(source) => return Err(FollowError { path: full, source }),
        };
        if !meta.file_type().is_symlink() {
            return Ok(vec![]);
        }
        let target = std::fs::read_link(&full).map_err(|source| FollowError {
            path: full.clone(),
            source,
        })?;
        let target = String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned();
        let resolved = if target.starts_with('/') {
            rooted(&target)
        } else {
            rooted(&join(dir, &target))
        };
        Ok(vec![(rel.to_string(), resolved)])
    }
}

/// Resolves `paths` against the directory `root`: every path itself, and for each
/// symlink on the way to it (or matched by a wildcard in its last component) the
/// link and the root-relative path it points to. Targets never leave the root
/// (`/etc/x` means `<root>/etc/x`). The result is sorted and deduplicated, ready to
/// be used as include patterns.
pub fn resolve(root: &Path, paths: &[String]) -> Result<Vec<String>, FollowError> {
    let mut r = Resolver {
        root,
        resolved: BTreeSet::new(),
    };
    for p in paths {
        r.add(p, 0)?;
    }
    Ok(r.resolved.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn plain_paths_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/sub")).unwrap();
        std::fs::write(root.join("real/sub/f"), "x").unwrap();
        std::fs::write(root.join("plain"), "x").unwrap();
        symlink("real", root.join("link")).unwrap();
        symlink("/real/sub/f", root.join("abs")).unwrap();
        symlink("../../../outside", root.join("up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();

        let got = resolve(root, &["plain".into(), "./missing/../plain".into()]).unwrap();
        assert_eq!(got, ["plain"]);
        let got = resolve(root, &["link/sub/f".into()]).unwrap();
        assert_eq!(got, ["link", "real/sub/f"]);
        let got = resolve(root, &["abs".into()]).unwrap();
        assert_eq!(got, ["abs", "real/sub/f"]);
        let got = resolve(root, &["up".into()]).unwrap();
        assert_eq!(got, ["outside", "up"]);
        let got = resolve(root, &["loop1".into()]).unwrap();
        assert_eq!(got, ["loop1", "loop2"]);
        let got = resolve(root, &["/".into()]).unwrap();
        assert_eq!(got, ["."]);
    }

    #[test]
    fn wildcards_follow_matching_links_and_keep_the_pattern() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(root.join("foo1"), "x").unwrap();
        std::fs::write(root.join("target"), "x").unwrap();
        symlink("target", root.join("foo2")).unwrap();
        std::fs::write(root.join("bar"), "x").unwrap();
        let got = resolve(root, &["foo*".into()]).unwrap();
        assert_eq!(got, ["foo*", "foo2", "target"]);
        let got = resolve(root, &["nothing*".into()]).unwrap();
        assert_eq!(got, ["nothing*"]);
    }
}
