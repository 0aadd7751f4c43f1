//! The user a command runs as: `UID[:GID]` or names looked up in the base tree's
//! `/etc/passwd` and `/etc/group`, as BuildKit does for `USER`.

use std::path::Path;

use crate::worker::Root;

/// A resolved user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group`, when the user has a name there).
    pub additional_gids: Vec<u32>,
}

impl User {
    /// root, with no supplementary groups.
    pub fn root() -> Self {
        User {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
        }
    }
}

/// Resolves `spec` (`""`: root; `NAME|UID[:GROUP|GID]`) against the tree `rootfs`
/// (`None`: an empty root, where only numbers work). Files are read inside the tree:
/// a link planted in the base cannot make kiln read a host file.
pub fn resolve_user(spec: &str, rootfs: Option<&Path>) -> Result<User, String> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Ok(User::root());
    }
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user_part.is_empty() {
        return Err(format!("user {spec:?}: the user part is empty"));
    }
    let passwd = read_in_root(rootfs, "/etc/passwd");
    let group = read_in_root(rootfs, "/etc/group");
    let entry = passwd.as_deref().and_then(|p| find_passwd(p, user_part));
    let (uid, name, default_gid) = match (user_part.parse::<u32>(), entry) {
        (Ok(uid), e) => (uid, e.as_ref().map(|e| e.0.clone()), e.map(|e| e.2)),
        (Err(_), Some((name, uid, gid))) => (uid, Some(name), Some(gid)),
        (Err(_), None) => {
            return Err(format!(
                "user {user_part:?} is not in the base's /etc/passwd (use a numeric UID)"
            ))
        }
    };
    let gid = match group_part {
        None => default_gid.unwrap_or(0),
        Some("") => return Err(format!("user {spec:?}: the group part is empty")),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .as_deref()
                .and_then(|text| find_group_gid(text, g))
                .ok_or_else(|| {
                    format!("group {g:?} is not in the base's /etc/group (use a numeric GID)")
                })?,
        },
    };
    // Supplementary groups only when no group was named, as Docker does.
    let additional_gids = match (group_part, name, group.as_deref()) {
        (None, Some(name), Some(text)) => member_gids(text, &name, gid),
        _ => Vec::new(),
    };
    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

fn read_in_root(rootfs: Option<&Path>, path: &str) -> Option<String> {
    let root = Root::new(rootfs?);
    let host = root.resolve(path, true).ok()?;
    let meta = std::fs::symlink_metadata(&host).ok()?;
    // A passwd file is small; anything else is not one.
    if !meta.is_file() || meta.len() > 4 << 20 {
        return None;
    }
    std::fs::read_to_string(host).ok()
}

/// `(name, uid, gid)` of the passwd line whose name or uid is `who`.
fn find_passwd(text: &str, who: &str) -> Option<(String, u32, u32)> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 {
            return None;
        }
        let (uid, gid) = (f[2].parse().ok()?, f[3].parse().ok()?);
        (f[0] == who || f[2] == who).then(|| (f[0].to_string(), uid, gid))
    })
}

fn find_group_gid(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

fn member_gids(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut gids: Vec<u32> = text
        .lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || !f[3].split(',').any(|m| m == user) {
                return None;
            }
            f[2].parse().ok()
        })
        .filter(|g| *g != primary)
        .collect();
    gids.sort_unstable();
    gids.dedup();
    gids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        std::fs::write(
            t.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            t.path().join("etc/group"),
            "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\n",
        )
        .unwrap();
        t
    }

    #[test]
    fn names_and_numbers() {
        let t = tree();
        let r = Some(t.path());
        assert_eq!(resolve_user("", r).unwrap(), User::root());
        let a = resolve_user("alice", r).unwrap();
        assert_eq!((a.uid, a.gid, a.additional_gids), (1000, 1000, vec![10]));
        let a = resolve_user("alice:wheel", r).unwrap();
        assert_eq!((a.uid, a.gid, a.additional_gids.len()), (1000, 10, 0));
        let n = resolve_user("1234:55", None).unwrap();
        assert_eq!((n.uid, n.gid), (1234, 55));
        assert_eq!(resolve_user("1000", r).unwrap().gid, 1000);
        assert!(resolve_user("mallory", r).unwrap_err().contains("mallory"));
        assert!(resolve_user("alice:nogroup", r)
            .unwrap_err()
            .contains("nogroup"));
    }

    #[test]
    fn passwd_through_a_link_stays_in_the_tree() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("etc")).unwrap();
        // A link to the host's passwd resolves inside the tree, where there is none.
        std::os::unix::fs::symlink("/etc/passwd", t.path().join("etc/passwd")).unwrap();
        assert!(resolve_user("root", Some(t.path())).is_err());
    }
}
