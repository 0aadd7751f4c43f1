//! Tests of the tree copy on real directories.

use super::*;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::fs::{symlink, PermissionsExt};

fn never() -> bool {
    false
}
fn no_progress(_: u64, _: u64) {}

fn opts(include: &[&str], exclude: &[&str]) -> CopyOptions<'static> {
    CopyOptions {
        filter: PathFilter::new(include, exclude).unwrap(),
        threads: 2,
        cancelled: &never,
        progress: &no_progress,
    }
}

fn copy(src: &Path, o: &CopyOptions<'_>) -> (tempfile::TempDir, CopyStats) {
    let out = tempfile::tempdir().unwrap();
    let stats = copy_tree(src, out.path(), o).unwrap();
    (out, stats)
}

/// Sets the mtime of `path` (not following symlinks).
fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = cstr(path).unwrap();
    let t = libc::timespec {
        tv_sec: sec as _,
        tv_nsec: nsec as _,
    };
    let times = [t, t];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

fn write(path: &Path, data: &str, mode: u32) {
    if let Some(p) = path.parent() {
        fs::create_dir_all(p).unwrap();
    }
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Every entry under `root` by relative path: `(kind, mode, mtime, content or target)`.
fn listing(root: &Path) -> BTreeMap<String, (char, u32, (i64, i64), String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let ft = m.file_type();
            let (kind, body) = if ft.is_symlink() {
                (
                    'l',
                    fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
                )
            } else if ft.is_dir() {
                stack.push(p.clone());
                ('d', String::new())
            } else if ft.is_file() {
                (
                    'f',
                    fs::read_to_string(&p).unwrap_or_else(|_| "<binary>".into()),
                )
            } else {
                ('p', String::new())
            };
            out.insert(
                rel,
                (kind, m.mode() & 0o7777, (m.mtime(), m.mtime_nsec()), body),
            );
        }
    }
    out
}

fn paths(root: &Path) -> Vec<String> {
    listing(root).into_keys().collect()
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

#[test]
fn copies_contents_modes_and_times() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("a.txt"), "hello", 0o644);
    write(&s.join("bin/tool"), "#!/bin/sh\n", 0o755);
    write(&s.join("secret"), "s", 0o600);
    write(&s.join("suid"), "x", 0o4755);
    write(&s.join("deep/er/still/f"), "deep", 0o640);
    fs::write(s.join("empty"), "").unwrap();
    let big: String = "0123456789abcdef".repeat(64 * 1024);
    fs::write(s.join("big"), &big).unwrap();
    // A read-only directory with content.
    write(&s.join("ro/inside"), "in", 0o444);
    fs::set_permissions(s.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::create_dir(s.join("emptydir")).unwrap();
    fs::set_permissions(s.join("emptydir"), fs::Permissions::from_mode(0o710)).unwrap();
    symlink("a.txt", s.join("link")).unwrap();
    for (i, p) in [
        "a.txt",
        "bin/tool",
        "deep/er/still/f",
        "ro/inside",
        "link",
        "bin",
        "deep/er",
        "ro",
        "emptydir",
        "big",
    ]
    .iter()
    .enumerate()
    {
        set_mtime(&s.join(p), 1_000_000_000 + i as i64 * 1000, 123_456_789);
    }

    let (out, stats) = copy(s, &opts(&[], &[]));
    let (want, got) = (listing(s), listing(out.path()));
    assert_eq!(want, got);
    assert_eq!(got["ro"].1, 0o555);
    assert_eq!(got["suid"].1, 0o4755);
    assert_eq!(got["big"].3.len(), big.len());
    assert_eq!(got["bin"].2, (1_000_005_000, 123_456_789));
    assert_eq!(stats.files, 8);
    assert_eq!(stats.symlinks, 1);
    assert_eq!(stats.dirs, 6);
    assert_eq!(stats.bytes, (5 + 10 + 1 + 1 + 4 + big.len() + 2) as u64);
}

#[test]
fn single_thread_gives_the_same_tree() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..200 {
        write(
            &src.path().join(format!("d{}/f{i}", i % 7)),
            &i.to_string(),
            0o644,
        );
    }
    let mut o = opts(&[], &[]);
    let (two, _) = copy(src.path(), &o);
    o.threads = 1;
    let (one, _) = copy(src.path(), &o);
    assert_eq!(listing(two.path()), listing(one.path()));
    assert_eq!(listing(two.path()).len(), 207);
}

#[test]
fn symlinks_are_never_followed() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path().join("ctx");
    fs::create_dir(&s).unwrap();
    write(&src.path().join("outside.txt"), "outside", 0o644);
    symlink("/etc/passwd", s.join("passwd")).unwrap();
    symlink("../../../etc/group", s.join("group")).unwrap();
    symlink("../outside.txt", s.join("out")).unwrap();
    symlink("/", s.join("rootdir")).unwrap();
    symlink("missing", s.join("dangling")).unwrap();
    let (out, stats) = copy(&s, &opts(&[], &[]));
    let got = listing(out.path());
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got["passwd"], listing(&s)["passwd"]);
    assert_eq!(got["passwd"].3, "/etc/passwd");
    assert_eq!(got["group"].3, "../../../etc/group");
    assert_eq!(got["out"].3, "../outside.txt");
    assert_eq!(got["rootdir"].0, 'l');
    assert_eq!(stats.symlinks, 5);
    assert_eq!(stats.files, 0);
}

#[test]
fn hardlinks_stay_hardlinks() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("a"), "shared", 0o640);
    fs::create_dir(s.join("sub")).unwrap();
    fs::hard_link(s.join("a"), s.join("b")).unwrap();
    fs::hard_link(s.join("a"), s.join("sub/c")).unwrap();
    write(&s.join("x"), "other", 0o644);
    fs::hard_link(s.join("x"), s.join("y")).unwrap();
    let (out, stats) = copy(s, &opts(&[], &["y"]));
    let o = out.path();
    assert_eq!(ino(&o.join("a")), ino(&o.join("b")));
    assert_eq!(ino(&o.join("a")), ino(&o.join("sub/c")));
    assert_ne!(ino(&o.join("a")), ino(&s.join("a")));
    assert_eq!(fs::metadata(o.join("a")).unwrap().nlink(), 3);
    assert_eq!(fs::read_to_string(o.join("sub/c")).unwrap(), "shared");
    // The excluded name of a linked file is absent; the other is a plain file.
    assert!(!o.join("y").exists());
    assert_eq!(fs::metadata(o.join("x")).unwrap().nlink(), 1);
    assert_eq!(stats.files, 2);
    assert_eq!(stats.hardlinks, 2);
    assert_eq!(listing(s).remove("a"), listing(o).remove("a"));
}

fn pattern_tree() -> tempfile::TempDir {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    for f in [
        "Cargo.toml",
        "README.md",
        "NOTES.md",
        "src/lib.rs",
        "src/gen/out.rs",
        "target/debug/app",
        "target/keep.txt",
        "logs/a.log",
        "x.log",
        "web/node_modules/pkg/index.js",
        "web/app.js",
    ] {
        write(&s.join(f), f, 0o644);
    }
    src
}

#[test]
fn exclude_patterns_with_exceptions() {
    let src = pattern_tree();
    let (out, _) = copy(
        src.path(),
        &opts(
            &[],
            &[
                "target",
                "!target/keep.txt",
                "**/*.log",
                "*.md",
                "!README.md",
                "**/node_modules",
            ],
        ),
    );
    assert_eq!(
        paths(out.path()),
        [
            "Cargo.toml",
            "README.md",
            "logs",
            "src",
            "src/gen",
            "src/gen/out.rs",
            "src/lib.rs",
            "target",
            "target/keep.txt",
            "web",
            "web/app.js"
        ]
    );
    // `target` was created as the parent of what the exception kept, with its metadata.
    let want = fs::metadata(src.path().join("target")).unwrap();
    let got = fs::metadata(out.path().join("target")).unwrap();
    assert_eq!(
        (want.mode(), want.mtime(), want.mtime_nsec()),
        (got.mode(), got.mtime(), got.mtime_nsec())
    );
}

#[test]
fn include_patterns() {
    let src = pattern_tree();
    let (out, _) = copy(src.path(), &opts(&["src/gen", "*.toml", "web/*/pkg"], &[]));
    assert_eq!(
        paths(out.path()),
        [
            "Cargo.toml",
            "src",
            "src/gen",
            "src/gen/out.rs",
            "web",
            "web/node_modules",
            "web/node_modules/pkg",
            "web/node_modules/pkg/index.js"
        ]
    );
    let (out, _) = copy(
        src.path(),
        &opts(&["src", "target"], &["src/gen", "target/debug"]),
    );
    assert_eq!(
        paths(out.path()),
        ["src", "src/lib.rs", "target", "target/keep.txt"]
    );
    let (out, _) = copy(src.path(), &opts(&["nothing"], &[]));
    assert!(paths(out.path()).is_empty());
}

#[test]
fn follow_paths_take_link_targets_and_keep_hardlinks() {
    // BuildKit's testLocalSourceWithHardlinksFilter and testLocalSymlinkEscape.
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("foo1"), "foo", 0o644);
    fs::hard_link(s.join("foo1"), s.join("foo2")).unwrap();
    write(&s.join("bar"), "bar", 0o644);
    write(&s.join("data/real.txt"), "real", 0o644);
    symlink("data/real.txt", s.join("foolink")).unwrap();
    symlink("/etc/passwd", s.join("foo-escape")).unwrap();
    let follow = crate::follow::resolve(s, &["foo*".to_string()]).unwrap();
    let include: Vec<&str> = follow.iter().map(String::as_str).collect();
    let (out, _) = copy(s, &opts(&include, &[]));
    let o = out.path();
    assert_eq!(
        paths(o),
        [
            "data",
            "data/real.txt",
            "foo-escape",
            "foo1",
            "foo2",
            "foolink"
        ]
    );
    assert!(!o.join("bar").exists());
    assert_eq!(ino(&o.join("foo1")), ino(&o.join("foo2")));
    assert_eq!(
        fs::read_link(o.join("foo-escape")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(fs::read_to_string(o.join("data/real.txt")).unwrap(), "real");
}

#[test]
fn fifos_are_recreated_and_sockets_skipped() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let fifo = cstr(&s.join("pipe")).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(s.join("sock")).unwrap();
    write(&s.join("f"), "f", 0o644);
    let (out, stats) = copy(s, &opts(&[], &[]));
    let got = listing(out.path());
    assert_eq!(got.keys().collect::<Vec<_>>(), ["f", "pipe"]);
    assert_eq!(got["pipe"].0, 'p');
    assert_eq!(got["pipe"].1, 0o640);
    assert_eq!(stats.skipped, 1);
    assert_eq!(stats.fifos, 1);
}

#[test]
fn odd_names_and_xattrs() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let odd = OsStr::from_bytes(b"caf\xe9 [1] *");
    fs::write(s.join(odd), "bytes").unwrap();
    write(&s.join("attr"), "a", 0o644);
    let c = cstr(&s.join("attr")).unwrap();
    let (name, value) = (c"user.kiln.test", b"value");
    let rc = unsafe {
        libc::setxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc, 0,
        "this test needs a filesystem with user xattrs (ext4, xfs, btrfs, tmpfs)"
    );
    let (out, _) = copy(s, &opts(&[], &[]));
    assert_eq!(fs::read(out.path().join(odd)).unwrap(), b"bytes");
    let d = cstr(&out.path().join("attr")).unwrap();
    let mut buf = [0u8; 16];
    let n = unsafe {
        libc::getxattr(
            d.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(&buf[..n.max(0) as usize], value);
}

#[test]
fn cancellation_stops_the_copy() {
    let src = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        fs::write(src.path().join(format!("f{i}")), "x").unwrap();
    }
    let yes = || true;
    let o = CopyOptions {
        cancelled: &yes,
        ..opts(&[], &[])
    };
    let out = tempfile::tempdir().unwrap();
    assert!(matches!(
        copy_tree(src.path(), out.path(), &o),
        Err(CopyError::Cancelled)
    ));
}

/// Clears CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread's effective
/// set, so that even root is refused by file modes (capabilities are per thread and
/// inherited by threads it starts).
fn drop_dac_override() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut h = Header {
        version: 0x2008_0522,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) },
        0
    );
    d[0].effective &= !((1 << 1) | (1 << 2));
    assert_eq!(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) },
        0
    );
}

/// Runs `f` on a thread that file modes apply to, even as root.
fn unprivileged<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            drop_dac_override();
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn unreadable_file_is_an_error_naming_it() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    for i in 0..100 {
        write(&s.join(format!("ok{i}")), "fine", 0o644);
    }
    write(&s.join("sub/locked"), "no", 0o000);
    let out = tempfile::tempdir().unwrap();
    let err = unprivileged(|| copy_tree(s, out.path(), &opts(&[], &[]))).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&s.join("sub/locked").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("cannot read"), "{msg}");
    // Excluding it makes the copy work.
    let out = tempfile::tempdir().unwrap();
    unprivileged(|| copy_tree(s, out.path(), &opts(&[], &["sub/locked"]))).unwrap();
}

#[test]
fn unreadable_directory_is_an_error_naming_it() {
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("closed/f"), "x", 0o644);
    fs::set_permissions(s.join("closed"), fs::Permissions::from_mode(0o000)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let err = unprivileged(|| copy_tree(s, out.path(), &opts(&[], &[]))).unwrap_err();
    let msg = err.to_string();
    fs::set_permissions(s.join("closed"), fs::Permissions::from_mode(0o755)).unwrap();
    assert!(msg.contains("cannot list directory"), "{msg}");
    assert!(
        msg.contains(&s.join("closed").display().to_string()),
        "{msg}"
    );
}

#[test]
fn owners_are_kept_as_root() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: owners cannot be set, nothing to check");
        return;
    }
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    write(&s.join("d/f"), "x", 0o644);
    symlink("f", s.join("d/l")).unwrap();
    for p in ["d", "d/f", "d/l"] {
        let c = cstr(&s.join(p)).unwrap();
        assert_eq!(unsafe { libc::lchown(c.as_ptr(), 1234, 5678) }, 0);
    }
    let (out, _) = copy(s, &opts(&[], &[]));
    for p in ["d", "d/f", "d/l"] {
        let m = fs::symlink_metadata(out.path().join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (1234, 5678), "{p}");
    }
}

/// Times the copy against `cp -a` on 20,000 small files:
/// `cargo test --release -p kiln-source-local -- --ignored --nocapture compare_with_cp`.
#[test]
#[ignore]
fn compare_with_cp() {
    let base = if Path::new("/dev/shm").is_dir() {
        Path::new("/dev/shm")
    } else {
        Path::new("/tmp")
    };
    let src = tempfile::tempdir_in(base).unwrap();
    for i in 0..20_000 {
        write(
            &src.path().join(format!("d{}/e{}/f{i}", i % 20, i % 7)),
            &"x".repeat(i % 3000),
            0o644,
        );
    }
    let mut ours = Vec::new();
    let mut cp = Vec::new();
    for _ in 0..5 {
        let out = tempfile::tempdir_in(base).unwrap();
        let t = std::time::Instant::now();
        copy_tree(src.path(), out.path(), &opts(&[], &[])).unwrap();
        ours.push(t.elapsed().as_secs_f64());
        let out = tempfile::tempdir_in(base).unwrap();
        let t = std::time::Instant::now();
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.path().display()))
            .arg(out.path())
            .status()
            .unwrap()
            .success();
        cp.push(t.elapsed().as_secs_f64());
        assert!(ok);
    }
    ours.sort_by(f64::total_cmp);
    cp.sort_by(f64::total_cmp);
    eprintln!(
        "kiln copy median {:.3}s, cp -a median {:.3}s, ratio {:.2}",
        ours[2],
        cp[2],
        ours[2] / cp[2]
    );
}

#[test]
fn read_write_fallback_copies_the_same_bytes() {
    let src = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(src.path().join("f"), &data).unwrap();
    let meta = fs::metadata(src.path().join("f")).unwrap();
    let env = Env::detect();
    let shared = Shared::default();
    let mut w = Worker {
        env: &env,
        kept: None,
        shared: &shared,
        buf: Vec::new(),
        range_ok: false,
    };
    let item = Item {
        kind: Kind::File,
        src: src.path().join("f"),
        dest: out.path().join("f"),
        meta: Meta::of(&meta),
        size: meta.len(),
        obj: None,
    };
    assert!(matches!(w.run(&item).unwrap(), Done::Wrote(n) if n == data.len() as u64));
    assert_eq!(fs::read(out.path().join("f")).unwrap(), data);
    assert_eq!(listing(src.path()), listing(out.path()));
}
