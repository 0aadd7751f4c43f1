//! Diff-layer tests: real trees (the result is a worker copy of the base, then
//! changed), the changeset, and the layer tar read back.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use super::*;

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// A base rootfs with a bit of everything.
fn base_tree(root: &Path) {
    write(root, "etc/keep", "keep\n");
    write(root, "etc/change", "old\n");
    write(root, "etc/mode", "m\n");
    write(root, "etc/gone", "x\n");
    write(root, "wipe/a", "a");
    write(root, "wipe/b", "b");
    write(root, "olddir/sub/f", "f");
    write(root, "hl/a", "linked");
    fs::hard_link(root.join("hl/a"), root.join("hl/b")).unwrap();
    write(root, "hl2/a", "single");
    write(root, "typechg", "file");
    symlink("etc/keep", root.join("link")).unwrap();
    symlink("etc/keep", root.join("link2")).unwrap();
}

/// The result: a copy of the base (as a build step makes it), then changed.
fn changed_tree(base: &Path, tree: &Path) {
    fs::create_dir(tree).unwrap();
    crate::worker::copy_tree(base, tree, None).unwrap();
    // Same size and time as before, other content: found by comparing content.
    let before = fs::metadata(tree.join("etc/change")).unwrap();
    fs::write(tree.join("etc/change"), "new\n").unwrap();
    fs::File::options()
        .write(true)
        .open(tree.join("etc/change"))
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(before.modified().unwrap()))
        .unwrap();
    fs::set_permissions(tree.join("etc/mode"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(tree.join("etc/gone")).unwrap();
    fs::remove_file(tree.join("wipe/a")).unwrap();
    fs::remove_file(tree.join("wipe/b")).unwrap();
    write(tree, "wipe/c", "c");
    fs::remove_dir_all(tree.join("olddir")).unwrap();
    fs::remove_file(tree.join("link2")).unwrap();
    symlink("etc/change", tree.join("link2")).unwrap();
    // hl2/a keeps its content but gains a second name: both go into the layer.
    fs::hard_link(tree.join("hl2/a"), tree.join("hl2/b")).unwrap();
    fs::remove_file(tree.join("typechg")).unwrap();
    write(tree, "typechg/f", "now a dir");
    write(tree, "new/deep/file", "deep");
}

fn paths(set: &Changeset) -> Vec<String> {
    set.changes
        .iter()
        .map(|c| c.tar_path().display().to_string())
        .collect()
}

#[test]
fn changes_cover_add_change_delete_opaque_links_and_modes() {
    let t = tempfile::tempdir().unwrap();
    let (base, tree) = (t.path().join("base"), t.path().join("tree"));
    base_tree(&base);
    changed_tree(&base, &tree);
    let set = changes(&base, &tree, None).unwrap();
    assert_eq!(
        paths(&set),
        [
            ".wh.olddir",
            "etc",
            "etc/.wh.gone",
            "etc/change",
            "etc/mode",
            "hl2",
            "hl2/a",
            "hl2/b",
            "link2",
            "new",
            "new/deep",
            "new/deep/file",
            "typechg",
            "typechg/f",
            "wipe",
            "wipe/.wh..wh..opq",
            "wipe/c",
        ],
        "{set:#?}"
    );

    // The layer tar: entries, types, modes, link targets as the result has them.
    let mut layer = Vec::new();
    write_layer(&tree, &set, &mut layer).unwrap();
    let mut ar = tar::Archive::new(layer.as_slice());
    let mut seen = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let raw = e.path().unwrap().display().to_string();
        let h = e.header().clone();
        // Folders are written `dir/`, as docker and containerd do.
        assert_eq!(
            raw.ends_with('/'),
            h.entry_type() == tar::EntryType::Directory,
            "{raw}"
        );
        let path = raw.trim_end_matches('/').to_string();
        let mut data = String::new();
        e.read_to_string(&mut data).unwrap();
        let link = e.link_name().unwrap().map(|l| l.display().to_string());
        match path.as_str() {
            ".wh.olddir" | "etc/.wh.gone" | "wipe/.wh..wh..opq" => {
                assert_eq!(h.entry_type(), tar::EntryType::Regular, "{path}");
                assert_eq!(h.size().unwrap(), 0, "{path}");
            }
            "etc/change" => assert_eq!(data, "new\n"),
            "etc/mode" => assert_eq!(h.mode().unwrap(), 0o755),
            "hl2/a" => assert_eq!(data, "single"),
            "hl2/b" => {
                assert_eq!(h.entry_type(), tar::EntryType::Link);
                assert_eq!(link.as_deref(), Some("hl2/a"));
            }
            "link2" => {
                assert_eq!(h.entry_type(), tar::EntryType::Symlink);
                assert_eq!(link.as_deref(), Some("etc/change"));
            }
            "typechg" | "new" | "new/deep" | "etc" | "wipe" | "hl2" => {
                assert_eq!(h.entry_type(), tar::EntryType::Directory, "{path}")
            }
            "typechg/f" => assert_eq!(data, "now a dir"),
            "new/deep/file" => assert_eq!(data, "deep"),
            "wipe/c" => assert_eq!(data, "c"),
            other => panic!("unexpected entry {other}"),
        }
        seen.push(path);
    }
    assert_eq!(seen, paths(&set));
}

#[test]
fn an_unchanged_copy_has_no_changes() {
    let t = tempfile::tempdir().unwrap();
    let (base, tree) = (t.path().join("base"), t.path().join("tree"));
    base_tree(&base);
    fs::create_dir(&tree).unwrap();
    crate::worker::copy_tree(&base, &tree, None).unwrap();
    let set = changes(&base, &tree, None).unwrap();
    assert!(set.is_empty(), "{set:#?}");
    // The same tree against itself, too.
    assert!(changes(&base, &base, None).unwrap().is_empty());
}

#[test]
fn one_removed_entry_is_a_whiteout_and_a_new_hard_link_keeps_both_names() {
    let t = tempfile::tempdir().unwrap();
    let (base, tree) = (t.path().join("base"), t.path().join("tree"));
    write(&base, "d/only", "1");
    write(&base, "bin/tool", "tool");
    fs::create_dir(&tree).unwrap();
    crate::worker::copy_tree(&base, &tree, None).unwrap();
    fs::remove_file(tree.join("d/only")).unwrap();
    // A new name for an unchanged file: the old name is written again, as the file.
    fs::hard_link(tree.join("bin/tool"), tree.join("bin/alias")).unwrap();
    let set = changes(&base, &tree, None).unwrap();
    assert_eq!(
        paths(&set),
        ["bin", "bin/alias", "bin/tool", "d", "d/.wh.only"]
    );
    let mut layer = Vec::new();
    write_layer(&tree, &set, &mut layer).unwrap();
    let mut ar = tar::Archive::new(layer.as_slice());
    let kinds: Vec<(String, tar::EntryType)> = ar
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path()
                    .unwrap()
                    .display()
                    .to_string()
                    .trim_end_matches('/')
                    .to_string(),
                e.header().entry_type(),
            )
        })
        .collect();
    assert_eq!(kinds[1], ("bin/alias".into(), tar::EntryType::Regular));
    assert_eq!(kinds[2], ("bin/tool".into(), tar::EntryType::Link));
}

#[test]
fn a_whiteout_name_in_the_result_is_refused_with_its_path() {
    let t = tempfile::tempdir().unwrap();
    let (base, tree) = (t.path().join("base"), t.path().join("tree"));
    write(&base, "a", "1");
    write(&tree, "a", "1");
    write(&tree, "x/.wh.a", "");
    let err = changes(&base, &tree, None).unwrap_err().to_string();
    assert!(err.contains("x/.wh.a") && err.contains("reserved"), "{err}");
}

#[test]
fn cancelled_diffs_stop() {
    let t = tempfile::tempdir().unwrap();
    let (base, tree) = (t.path().join("base"), t.path().join("tree"));
    write(&base, "a", "1");
    write(&tree, "a", "2");
    let cancel = AtomicBool::new(true);
    let err = changes(&base, &tree, Some(&cancel))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cancelled"), "{err}");
}
