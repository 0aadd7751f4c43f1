//! Incremental snapshots on real directories: after every change to the context, the
//! snapshot made with the kept state equals a fresh full copy, unchanged files are
//! taken from the last snapshot (same inode), and old snapshots never change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use kiln_plugin_api::patterns::PathFilter;

use super::*;
use crate::copy::{copy_tree, copy_tree_kept, CopyOptions, CopyStats};

fn never() -> bool {
    false
}
fn no_progress(_: u64, _: u64) {}

fn opts(exclude: &[&str]) -> CopyOptions<'static> {
    CopyOptions {
        filter: PathFilter::new::<&str>(&[], exclude).unwrap(),
        threads: 2,
        cancelled: &never,
        progress: &no_progress,
    }
}

/// Waits until the kernel's file-time clock has moved past every change made so far,
/// so that those changes are not "racy" for the next walk (a condition, not a delay).
fn settle() {
    let probe = tempfile::NamedTempFile::new().unwrap();
    let m = probe.as_file().metadata().unwrap();
    let stamp = (m.ctime(), m.ctime_nsec());
    while coarse_now() <= stamp {
        std::thread::yield_now();
    }
}

/// A snapshot of `src` with the kept state in `state` (key "ctx").
fn snap(src: &Path, state: &Path, o: &CopyOptions<'_>) -> (tempfile::TempDir, CopyStats) {
    let out = tempfile::tempdir().unwrap();
    let kept = Kept::open(state, "ctx", src).unwrap().expect("not locked");
    let stats = copy_tree_kept(src, out.path(), o, kept).unwrap();
    (out, stats)
}

fn fresh(src: &Path, o: &CopyOptions<'_>) -> tempfile::TempDir {
    let out = tempfile::tempdir().unwrap();
    copy_tree(src, out.path(), o).unwrap();
    out
}

/// Everything that makes two trees equal: per path its kind, mode, owner, mtime,
/// content or link target, and which other path it is hard-linked to (the first
/// path of its inode within the tree).
type Listing = BTreeMap<String, (char, u32, (u32, u32), (i64, i64), Vec<u8>, String)>;

fn listing(root: &Path) -> Listing {
    let mut out = BTreeMap::new();
    let mut first_of_inode: BTreeMap<u64, String> = BTreeMap::new();
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p.clone());
            }
            all.push((p, m));
        }
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    for (p, m) in all {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let (kind, body) = if ft.is_symlink() {
            ('l', fs::read_link(&p).unwrap().into_os_string().into_vec())
        } else if ft.is_dir() {
            ('d', Vec::new())
        } else if ft.is_file() {
            ('f', fs::read(&p).unwrap())
        } else {
            ('p', Vec::new())
        };
        let group = if ft.is_file() {
            first_of_inode.entry(m.ino()).or_insert(rel.clone()).clone()
        } else {
            String::new()
        };
        out.insert(
            rel,
            (
                kind,
                m.mode() & 0o7777,
                (m.uid(), m.gid()),
                (m.mtime(), m.mtime_nsec()),
                body,
                group,
            ),
        );
    }
    out
}

use std::os::unix::ffi::OsStringExt;

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

fn write(path: &Path, data: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Asserts the snapshot equals a fresh copy of `src`.
#[track_caller]
fn assert_same(src: &Path, snapshot: &Path, o: &CopyOptions<'_>) {
    let want = fresh(src, o);
    let (want, got) = (listing(want.path()), listing(snapshot));
    if want != got {
        let keys: std::collections::BTreeSet<_> = want.keys().chain(got.keys()).collect();
        for k in keys {
            if want.get(k) != got.get(k) {
                panic!(
                    "snapshot differs from a fresh copy at {k}:\n fresh:    {:?}\n snapshot: {:?}",
                    want.get(k),
                    got.get(k)
                );
            }
        }
    }
}

fn context() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("a.txt"), "alpha", 0o644);
    write(&s.join("bin/tool"), "#!/bin/sh\n", 0o755);
    write(&s.join("secret"), "s", 0o600);
    write(&s.join("deep/er/f"), "deep", 0o640);
    write(&s.join("same-size"), "1111", 0o644);
    write(&s.join("will-be-dir"), "file first", 0o644);
    write(&s.join("will-be-file/inner"), "inside", 0o644);
    write(&s.join("renamed-from"), "moving", 0o644);
    write(&s.join("gone"), "bye", 0o644);
    write(&s.join("chmod-me"), "mode", 0o644);
    write(&s.join("linked"), "one inode", 0o644);
    fs::hard_link(s.join("linked"), s.join("linked-too")).unwrap();
    write(&s.join("split"), "two names", 0o644);
    fs::hard_link(s.join("split"), s.join("split-too")).unwrap();
    fs::create_dir_all(s.join("empty/dir")).unwrap();
    symlink("a.txt", s.join("link")).unwrap();
    symlink("nowhere", s.join("dangling")).unwrap();
    src
}

#[test]
fn every_snapshot_equals_a_fresh_copy_and_unchanged_files_are_reused() {
    let src = context();
    let s = src.path();
    let state = tempfile::tempdir().unwrap();
    let o = opts(&[]);

    settle();
    let (snap1, st) = snap(s, state.path(), &o);
    assert_same(s, snap1.path(), &o);
    assert_eq!(st.reused, 0);
    let files1 = st.files;

    // Unchanged: every regular file comes from the kept copy.
    settle();
    let (snap2, st) = snap(s, state.path(), &o);
    assert_same(s, snap2.path(), &o);
    assert_eq!((st.reused, st.bytes), (files1, 0), "{st:?}");
    for f in ["a.txt", "bin/tool", "deep/er/f", "linked", "linked-too"] {
        assert_eq!(
            ino(&snap1.path().join(f)),
            ino(&snap2.path().join(f)),
            "{f}"
        );
    }

    // Edit, add, remove, rename, chmod, replace a file by a directory and back,
    // retarget a symlink, split a hard link, add one.
    fs::write(s.join("a.txt"), "ALPHA, longer").unwrap();
    let before = fs::metadata(s.join("same-size")).unwrap();
    fs::write(s.join("same-size"), "2222").unwrap();
    // Same size and the old mtime: only the ctime tells.
    let t = libc::timespec {
        tv_sec: before.mtime() as _,
        tv_nsec: before.mtime_nsec() as _,
    };
    let c = std::ffi::CString::new(s.join("same-size").into_os_string().into_vec()).unwrap();
    assert_eq!(
        unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), [t, t].as_ptr(), 0) },
        0
    );
    write(&s.join("new/file"), "new", 0o600);
    fs::remove_file(s.join("gone")).unwrap();
    fs::rename(s.join("renamed-from"), s.join("renamed-to")).unwrap();
    fs::set_permissions(s.join("chmod-me"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_file(s.join("will-be-dir")).unwrap();
    write(&s.join("will-be-dir/now"), "a dir now", 0o644);
    fs::remove_dir_all(s.join("will-be-file")).unwrap();
    write(&s.join("will-be-file"), "a file now", 0o644);
    fs::remove_file(s.join("link")).unwrap();
    symlink("bin/tool", s.join("link")).unwrap();
    fs::remove_file(s.join("split-too")).unwrap();
    write(&s.join("split-too"), "two names", 0o644);
    fs::hard_link(s.join("deep/er/f"), s.join("deep-link")).unwrap();
    fs::remove_dir(s.join("empty/dir")).unwrap();
    fs::create_dir(s.join("empty/other")).unwrap();

    settle();
    let (snap3, st) = snap(s, state.path(), &o);
    assert_same(s, snap3.path(), &o);
    assert!(st.reused > 0 && st.reused < st.files, "{st:?}");
    // Untouched files are shared with the last snapshot, changed ones are new copies.
    for f in ["bin/tool", "secret", "linked", "linked-too"] {
        assert_eq!(
            ino(&snap2.path().join(f)),
            ino(&snap3.path().join(f)),
            "{f}"
        );
    }
    for f in ["a.txt", "same-size", "chmod-me", "split", "deep/er/f"] {
        assert_ne!(
            ino(&snap2.path().join(f)),
            ino(&snap3.path().join(f)),
            "{f}"
        );
    }
    // Earlier snapshots kept their content and modes.
    assert_eq!(fs::read(snap1.path().join("a.txt")).unwrap(), b"alpha");
    assert_eq!(fs::read(snap2.path().join("same-size")).unwrap(), b"1111");
    let mode = fs::metadata(snap2.path().join("chmod-me")).unwrap().mode();
    assert_eq!(mode & 0o777, 0o644);

    // An in-place edit of a file that was kept (same inode in the context).
    settle();
    let (snap4, _) = snap(s, state.path(), &o);
    assert_same(s, snap4.path(), &o);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(s.join("bin/tool"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"#!/bin/bash").unwrap();
    drop(f);
    settle();
    let (snap5, _) = snap(s, state.path(), &o);
    assert_same(s, snap5.path(), &o);
    assert_eq!(
        fs::read(snap4.path().join("bin/tool")).unwrap(),
        b"#!/bin/sh\n"
    );

    // Objects of removed files are gone from the kept state: one per kept inode.
    let objects = count_files(&state.path().join("contexts/ctx/objects"));
    let inodes: std::collections::HashSet<u64> = listing_inodes(snap5.path());
    assert_eq!(objects, inodes.len());
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            n += count_files(&p);
        } else {
            n += 1;
        }
    }
    n
}

fn listing_inodes(root: &Path) -> std::collections::HashSet<u64> {
    let mut out = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() {
                out.insert(m.ino());
            }
        }
    }
    out
}

#[test]
fn a_racy_file_is_copied_again() {
    let src = tempfile::tempdir().unwrap();
    write(&src.path().join("f"), "x", 0o644);
    let state = tempfile::tempdir().unwrap();
    let o = opts(&[]);
    // Changed in the same clock tick as the walk (simulated: the walk's start is
    // recorded as not later than the file's times), so it cannot be trusted.
    let (_s1, _) = snap(src.path(), state.path(), &o);
    let mut kept = Kept::open(state.path(), "ctx", src.path())
        .unwrap()
        .unwrap();
    let rec = *kept.prev.values().next().unwrap();
    kept.prev_started = rec.stat.ctime.max(rec.stat.mtime);
    assert_eq!(kept.reusable(b"f", &rec.stat), None);
    kept.prev_started = (kept.prev_started.0 + 1, 0);
    assert_eq!(kept.reusable(b"f", &rec.stat), Some(rec));
}

#[test]
fn exclude_patterns_and_a_changed_filter() {
    let src = context();
    let s = src.path();
    let state = tempfile::tempdir().unwrap();
    settle();
    let narrow = opts(&["deep", "bin", "*.txt", "!a.txt"]);
    let (snap1, _) = snap(s, state.path(), &narrow);
    assert_same(s, snap1.path(), &narrow);
    assert!(!snap1.path().join("deep").exists() && snap1.path().join("a.txt").exists());
    // The next snapshot selects more: what was kept is reused, the rest copied.
    settle();
    let wide = opts(&[]);
    let (snap2, st) = snap(s, state.path(), &wide);
    assert_same(s, snap2.path(), &wide);
    assert!(st.reused > 0 && st.reused < st.files, "{st:?}");
}

#[test]
fn a_half_done_snapshot_leaves_no_state_to_trust() {
    let src = context();
    let state = tempfile::tempdir().unwrap();
    let o = opts(&[]);
    settle();
    snap(src.path(), state.path(), &o);
    // Opened (manifest consumed) but never finished: as if killed mid-way.
    drop(
        Kept::open(state.path(), "ctx", src.path())
            .unwrap()
            .unwrap(),
    );
    let (out, st) = snap(src.path(), state.path(), &o);
    assert_eq!(st.reused, 0);
    assert_same(src.path(), out.path(), &o);
    // A manifest for another directory is not used either.
    let other = context();
    let (_, st) = snap(other.path(), state.path(), &o);
    assert_eq!(st.reused, 0);
}

#[test]
fn one_snapshot_of_a_context_at_a_time() {
    let src = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let first = Kept::open(state.path(), "ctx", src.path()).unwrap();
    assert!(first.is_some());
    assert!(Kept::open(state.path(), "ctx", src.path())
        .unwrap()
        .is_none());
    drop(first);
    assert!(Kept::open(state.path(), "ctx", src.path())
        .unwrap()
        .is_some());
}

#[test]
fn a_missing_object_is_copied_again() {
    let src = context();
    let state = tempfile::tempdir().unwrap();
    let o = opts(&[]);
    settle();
    snap(src.path(), state.path(), &o);
    let objects = state.path().join("contexts/ctx/objects");
    for d in fs::read_dir(&objects).unwrap() {
        fs::remove_file(d.unwrap().path()).unwrap();
    }
    let (out, st) = snap(src.path(), state.path(), &o);
    assert_same(src.path(), out.path(), &o);
    assert!(st.files > 0);
    // Next time the copies made now are reused.
    settle();
    let (out, st2) = snap(src.path(), state.path(), &o);
    assert_same(src.path(), out.path(), &o);
    assert_eq!(st2.reused, st.files);
}

#[test]
fn a_file_deleted_during_the_walk_is_skipped() {
    let src = context();
    let s = src.path().to_path_buf();
    let state = tempfile::tempdir().unwrap();
    // One thread: the walk lists and stats everything first, then the copy starts by
    // polling for cancellation, which here deletes two listed entries.
    let victim = s.clone();
    let once = std::sync::Once::new();
    let delete = move || {
        once.call_once(|| {
            fs::remove_file(victim.join("secret")).unwrap();
            fs::remove_dir_all(victim.join("deep")).unwrap();
        });
        false
    };
    let o = CopyOptions {
        filter: PathFilter::new::<&str>(&[], &[]).unwrap(),
        threads: 1,
        cancelled: &delete,
        progress: &no_progress,
    };
    settle();
    let (out, st) = snap(&s, state.path(), &o);
    assert!(st.vanished >= 2, "{st:?}");
    assert!(!out.path().join("secret").exists());
    assert!(!out.path().join("deep/er/f").exists());
    assert_eq!(fs::read(out.path().join("a.txt")).unwrap(), b"alpha");
    // The vanished files are not recorded: recreated, they are copied.
    write(&s.join("secret"), "back", 0o600);
    settle();
    let all = opts(&[]);
    let (out, _) = snap(&s, state.path(), &all);
    assert_same(&s, out.path(), &all);
}

#[test]
fn unused_contexts_are_swept() {
    let state = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    write(&a.path().join("f"), "x", 0o644);
    let o = opts(&[]);
    for key in ["old", "busy", "current"] {
        let kept = Kept::open(state.path(), key, a.path()).unwrap().unwrap();
        copy_tree_kept(a.path(), tempfile::tempdir().unwrap().path(), &o, kept).unwrap();
    }
    // Nothing is old enough yet.
    assert_eq!(
        sweep(state.path(), "current", UNUSED_CONTEXT_AGE).unwrap(),
        0
    );
    let busy = Kept::open(state.path(), "busy", a.path()).unwrap().unwrap();
    // With no age limit, all but the current and the busy one go.
    assert_eq!(
        sweep(state.path(), "current", std::time::Duration::ZERO).unwrap(),
        1
    );
    let left: std::collections::BTreeSet<String> = fs::read_dir(state.path().join("contexts"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["busy", "current"].map(String::from).into());
    drop(busy);
}
