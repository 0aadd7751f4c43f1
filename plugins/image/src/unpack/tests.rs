//! Tests of the layer unpacker with real tar streams (built with the `tar` crate, compressed
//! with flate2 and zstd) applied to real directories.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ::tar::{EntryType, Header};
use sha2::{Digest, Sha256};

use super::*;

const MTIME: u64 = 1_600_000_000;

/// Builds a layer tar stream entry by entry. Names are written as given (no validation), so
/// hostile layers can be made too; long names use GNU `L` records.
struct Layer {
    out: Vec<u8>,
}

impl Layer {
    fn new() -> Self {
        Layer { out: Vec::new() }
    }

    fn header(name: &[u8], kind: EntryType, size: u64, mode: u32, link: &[u8]) -> Header {
        let mut h = Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            let n = name.len().min(100);
            g.name[..n].copy_from_slice(&name[..n]);
            g.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(MTIME);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        h
    }

    fn push(&mut self, h: &Header, data: &[u8]) {
        self.out.extend_from_slice(h.as_bytes());
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0u8, pad));
    }

    /// One raw entry; a GNU long name record first when `name` does not fit.
    fn entry(&mut self, name: &[u8], kind: EntryType, mode: u32, link: &[u8], data: &[u8]) {
        self.entry_with(name, kind, mode, link, data, |_| {})
    }

    fn entry_with(
        &mut self,
        name: &[u8],
        kind: EntryType,
        mode: u32,
        link: &[u8],
        data: &[u8],
        edit: impl FnOnce(&mut Header),
    ) {
        if name.len() > 100 {
            let mut long = name.to_vec();
            long.push(0);
            let h = Self::header(
                b"././@LongLink",
                EntryType::GNULongName,
                long.len() as u64,
                0,
                b"",
            );
            self.push(&h, &long);
        }
        let mut h = Self::header(name, kind, data.len() as u64, mode, link);
        edit(&mut h);
        h.set_cksum();
        self.push(&h, data);
    }

    fn pax(&mut self, records: &[(&str, &[u8])]) {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = 1 + k.len() + 1 + v.len() + 1;
            let mut len = body_len + 1;
            while len.to_string().len() + body_len != len {
                len = len.to_string().len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        let h = Self::header(
            b"PaxHeader",
            EntryType::XHeader,
            data.len() as u64,
            0o644,
            b"",
        );
        self.push(&h, &data);
    }

    fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        self.entry(name.as_bytes(), EntryType::Directory, mode, b"", b"");
        self
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Regular,
            0o644,
            b"",
            data.as_bytes(),
        );
        self
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Symlink,
            0o777,
            target.as_bytes(),
            b"",
        );
        self
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.entry(
            name.as_bytes(),
            EntryType::Link,
            0o644,
            target.as_bytes(),
            b"",
        );
        self
    }

    /// The tar stream with its end-of-archive (two zero blocks).
    fn tar(&self) -> Vec<u8> {
        let mut t = self.out.clone();
        t.extend(std::iter::repeat_n(0u8, 1024));
        t
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// A scratch area: `root` to unpack into, `outside` a sentinel directory next to it.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "secret").unwrap();
        fs::create_dir(outside.join("sub")).unwrap();
        fs::write(outside.join("sub/file"), "data").unwrap();
        Scratch {
            _dir: dir,
            root,
            outside,
        }
    }

    fn apply(&self, tar: &[u8]) -> Result<LayerStats, UnpackError> {
        apply_layer(&self.root, tar, Compression::None, &opts())
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Everything about the area outside the root (and the area's own directory entries).
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        let mut m = BTreeMap::new();
        let parent = self.root.parent().unwrap();
        walk(parent, &mut |p| {
            if p.starts_with(&self.root) {
                return; // the root's own entry changes with its contents
            }
            let md = fs::symlink_metadata(p).unwrap();
            let content = if md.is_file() {
                fs::read_to_string(p).unwrap()
            } else {
                String::new()
            };
            m.insert(
                p.to_path_buf(),
                format!(
                    "{:o} {} {} {} {} {content}",
                    md.mode(),
                    md.uid(),
                    md.nlink(),
                    md.mtime(),
                    md.mtime_nsec()
                ),
            );
        });
        m
    }

    fn names(&self) -> Vec<String> {
        let mut v = Vec::new();
        walk(&self.root, &mut |p| {
            if p != self.root {
                v.push(p.strip_prefix(&self.root).unwrap().display().to_string());
            }
        });
        v.sort();
        v
    }
}

fn walk(p: &Path, f: &mut dyn FnMut(&Path)) {
    f(p);
    let md = fs::symlink_metadata(p).unwrap();
    if md.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            walk(&e.unwrap().path(), f);
        }
    }
}

fn opts() -> UnpackOptions {
    UnpackOptions::for_current_user()
}

/// Applies a hostile layer and checks that it is refused naming `entry` (when given), and
/// that nothing outside the root changed.
fn hostile(s: &Scratch, tar: &[u8], entry: &str) -> UnpackError {
    let before = s.outside_state();
    let err = s.apply(tar).expect_err("hostile layer must be refused");
    assert_eq!(
        s.outside_state(),
        before,
        "something outside the root changed"
    );
    assert_eq!(err.entry(), entry, "error: {err}");
    assert_eq!(err.kind(), UnpackErrorKind::Refused, "{err}");
    assert!(err.to_string().starts_with(&format!("{entry}: ")), "{err}");
    err
}

/// A reader that counts what is read through it.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn sample_layer() -> Layer {
    let mut l = Layer::new();
    l.dir("./", 0o755)
        .dir("./etc/", 0o755)
        .file("./etc/passwd", "root:x:0:0::/root:/bin/sh\n")
        .dir("./usr/", 0o755)
        .dir("./usr/bin/", 0o755)
        .file("./usr/bin/tool", "#!/bin/sh\necho hi\n")
        .hardlink("./usr/bin/tool2", "./usr/bin/tool")
        .symlink("./bin", "usr/bin")
        .symlink("./abs", "/usr/bin/tool");
    l
}

#[test]
fn plain_entries_and_diff_id_for_each_compression() {
    let tar = {
        let mut t = sample_layer().tar();
        // Trailing zero records, as GNU tar writes them, belong to the diff ID too.
        t.extend(std::iter::repeat_n(0u8, 8192));
        t
    };
    let expected = sha256(&tar);
    for (compression, blob) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        let s = Scratch::new();
        let mut reader = Counting {
            inner: blob.as_slice(),
            n: 0,
        };
        let stats = apply_layer(&s.root, &mut reader, compression, &opts()).unwrap();
        assert_eq!(stats.diff_id, expected, "{compression:?}");
        assert_eq!(stats.uncompressed_bytes, tar.len() as u64);
        assert_eq!(stats.entries, 9);
        assert_eq!(
            reader.n,
            blob.len() as u64,
            "{compression:?}: reader not drained"
        );

        assert_eq!(
            fs::read_to_string(s.p("etc/passwd")).unwrap(),
            "root:x:0:0::/root:/bin/sh\n"
        );
        let tool = fs::metadata(s.p("usr/bin/tool")).unwrap();
        let tool2 = fs::metadata(s.p("usr/bin/tool2")).unwrap();
        assert_eq!(tool.ino(), tool2.ino());
        assert_eq!(tool.nlink(), 2);
        assert_eq!(fs::read_link(s.p("bin")).unwrap(), Path::new("usr/bin"));
        // An absolute target is stored as the layer has it.
        assert_eq!(
            fs::read_link(s.p("abs")).unwrap(),
            Path::new("/usr/bin/tool")
        );
        assert_eq!(s.names().len(), 8);
    }
}

#[test]
fn reader_drained_past_the_compressed_stream_end() {
    // Two gzip members (as pigz or concatenation writes them) and two zstd frames.
    let tar = sample_layer().tar();
    let (a, b) = tar.split_at(700);
    let mut two_gz = gzip(a);
    two_gz.extend(gzip(b));
    let mut two_zst = zstd(a);
    two_zst.extend(zstd(b));
    for (compression, blob) in [(Compression::Gzip, two_gz), (Compression::Zstd, two_zst)] {
        let s = Scratch::new();
        let mut reader = Counting {
            inner: blob.as_slice(),
            n: 0,
        };
        let stats = apply_layer(&s.root, &mut reader, compression, &opts()).unwrap();
        assert_eq!(stats.diff_id, sha256(&tar));
        assert_eq!(reader.n, blob.len() as u64);
        assert!(s.p("usr/bin/tool2").exists());
    }
}

#[test]
fn modes_and_mtimes() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.entry(b"d/", EntryType::Directory, 0o1777, b"", b"");
    l.entry(b"d/suid", EntryType::Regular, 0o4755, b"", b"x");
    l.entry(b"d/sgid", EntryType::Regular, 0o2711, b"", b"x");
    l.entry(b"d/ro", EntryType::Regular, 0o444, b"", b"x");
    l.entry(b"d/fifo", EntryType::Fifo, 0o640, b"", b"");
    l.entry(b"ro/", EntryType::Directory, 0o555, b"", b"");
    l.entry(b"ro/inner", EntryType::Regular, 0o600, b"", b"y");
    l.entry_with(b"d/late", EntryType::Regular, 0o644, b"", b"z", |h| {
        h.set_mtime(MTIME + 100)
    });
    l.pax(&[("mtime", b"1600000200.5")]);
    l.entry(b"d/nanos", EntryType::Regular, 0o644, b"", b"n");
    s.apply(&l.tar()).unwrap();

    let mode = |p: &str| fs::symlink_metadata(s.p(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("d"), 0o1777);
    assert_eq!(mode("d/suid"), 0o4755);
    assert_eq!(mode("d/sgid"), 0o2711);
    assert_eq!(mode("d/ro"), 0o444);
    assert_eq!(mode("d/fifo"), 0o640);
    assert!(fs::symlink_metadata(s.p("d/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(fs::read_to_string(s.p("ro/inner")).unwrap(), "y");
    let mtime = |p: &str| {
        let m = fs::symlink_metadata(s.p(p)).unwrap();
        (m.mtime(), m.mtime_nsec())
    };
    // Directory mtimes are set after their children were written.
    assert_eq!(mtime("d"), (MTIME as i64, 0));
    assert_eq!(mtime("ro"), (MTIME as i64, 0));
    assert_eq!(mtime("d/suid"), (MTIME as i64, 0));
    assert_eq!(mtime("d/late"), (MTIME as i64 + 100, 0));
    assert_eq!(mtime("d/nanos"), (1_600_000_200, 500_000_000));
    assert_eq!(mtime("d/fifo"), (MTIME as i64, 0));
}

#[test]
fn symlink_mtime_is_its_own() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.entry_with(b"f", EntryType::Regular, 0o644, b"", b"x", |h| {
        h.set_mtime(5)
    });
    l.entry_with(b"l", EntryType::Symlink, 0o777, b"f", b"", |h| {
        h.set_mtime(7)
    });
    s.apply(&l.tar()).unwrap();
    assert_eq!(fs::symlink_metadata(s.p("l")).unwrap().mtime(), 7);
    assert_eq!(fs::metadata(s.p("l")).unwrap().mtime(), 5);
}

#[test]
fn xattrs_from_pax_records() {
    let s = Scratch::new();
    let mut l = Layer::new();
    // security.capability: cap_net_bind_service+ep (VFS_CAP_REVISION_2).
    let cap: &[u8] = &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    l.pax(&[
        ("SCHILY.xattr.user.note", b"hello\0binary"),
        ("SCHILY.xattr.security.capability", cap),
    ]);
    l.file("ping", "elf");
    l.pax(&[("SCHILY.xattr.user.dir", b"d")]);
    l.dir("d/", 0o755);
    s.apply(&l.tar()).unwrap();
    let get = |p: &str, name: &str| {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(s.p(p), name, &mut buf[..]).unwrap();
        buf.truncate(n);
        buf
    };
    assert_eq!(get("ping", "user.note"), b"hello\0binary");
    assert_eq!(get("d", "user.dir"), b"d");
    if rustix::process::geteuid().is_root() {
        assert_eq!(get("ping", "security.capability"), cap);
    }
}

#[test]
fn ownership_and_devices_as_root() {
    let s = Scratch::new();
    let mut l = Layer::new();
    let owned = |h: &mut Header| {
        h.set_uid(1234);
        h.set_gid(5678)
    };
    l.entry_with(b"dir/", EntryType::Directory, 0o750, b"", b"", owned);
    l.entry_with(b"dir/file", EntryType::Regular, 0o4750, b"", b"x", owned);
    l.entry_with(b"dir/link", EntryType::Symlink, 0o777, b"file", b"", owned);
    l.entry_with(b"null", EntryType::Char, 0o666, b"", b"", |h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    });
    l.entry_with(b"loop0", EntryType::Block, 0o660, b"", b"", |h| {
        h.set_device_major(7).unwrap();
        h.set_device_minor(0).unwrap();
    });
    let tar = l.tar();

    if rustix::process::geteuid().is_root() {
        s.apply(&tar).unwrap();
        for p in ["dir", "dir/file", "dir/link"] {
            let md = fs::symlink_metadata(s.p(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (1234, 5678), "{p}");
        }
        // setuid survives the chown (mode is set after the owner).
        assert_eq!(
            fs::metadata(s.p("dir/file")).unwrap().permissions().mode() & 0o7777,
            0o4750
        );
        let null = fs::symlink_metadata(s.p("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.permissions().mode() & 0o7777, 0o666);
        assert!(fs::symlink_metadata(s.p("loop0"))
            .unwrap()
            .file_type()
            .is_block_device());
    }

    // Without same_owner: no devices, the unpacking user owns everything.
    let s2 = Scratch::new();
    apply_layer(
        &s2.root,
        tar.as_slice(),
        Compression::None,
        &UnpackOptions { same_owner: false },
    )
    .unwrap();
    assert!(!s2.p("null").exists() && !s2.p("loop0").exists());
    let me = rustix::process::geteuid().as_raw();
    assert_eq!(fs::metadata(s2.p("dir/file")).unwrap().uid(), me);
    assert_eq!(fs::read_to_string(s2.p("dir/file")).unwrap(), "x");
}

fn lower(s: &Scratch) {
    let mut l = Layer::new();
    l.dir("a/", 0o755)
        .file("a/b", "b")
        .file("a/c", "c")
        .dir("d/", 0o755)
        .dir("d/e/", 0o755)
        .file("d/e/f", "f")
        .dir("o/", 0o755)
        .file("o/old", "old")
        .dir("o/sub/", 0o755)
        .file("o/sub/old2", "old2")
        .file("o/sub/keep-name", "lower");
    s.apply(&l.tar()).unwrap();
}

#[test]
fn whiteouts_remove_lower_entries_and_leave_no_marker() {
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    l.file("a/.wh.b", "")
        .file(".wh.d", "")
        .file("a/.wh.missing", "");
    // A whiteout under a directory that does not exist creates nothing.
    l.file("nodir/.wh.x", "");
    s.apply(&l.tar()).unwrap();
    assert_eq!(
        s.names(),
        [
            "a",
            "a/c",
            "o",
            "o/old",
            "o/sub",
            "o/sub/keep-name",
            "o/sub/old2"
        ]
    );
}

#[test]
fn whiteout_applies_to_lower_layers_only() {
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    // Before the entry: the lower a/b goes, the new one comes.
    l.file("a/.wh.b", "").file("a/b", "new b");
    // After an entry of the same layer: that entry stays.
    l.file("a/x", "x").file("a/.wh.x", "");
    s.apply(&l.tar()).unwrap();
    assert_eq!(fs::read_to_string(s.p("a/b")).unwrap(), "new b");
    assert_eq!(fs::read_to_string(s.p("a/x")).unwrap(), "x");
    assert!(!s.p("a/.wh.x").exists() && !s.p("a/.wh.b").exists());
}

#[test]
fn opaque_marker_before_same_layer_entries() {
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    l.dir("o/", 0o755)
        .file("o/.wh..wh..opq", "")
        .file("o/new", "new")
        .dir("o/sub/", 0o755)
        .file("o/sub/keep-name", "upper");
    s.apply(&l.tar()).unwrap();
    assert_eq!(
        s.names(),
        [
            "a",
            "a/b",
            "a/c",
            "d",
            "d/e",
            "d/e/f",
            "o",
            "o/new",
            "o/sub",
            "o/sub/keep-name"
        ]
    );
    assert_eq!(fs::read_to_string(s.p("o/sub/keep-name")).unwrap(), "upper");
}

#[test]
fn opaque_marker_after_same_layer_entries() {
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    l.dir("o/", 0o755)
        .file("o/new", "new")
        .dir("o/sub/", 0o755)
        .file("o/sub/keep-name", "upper")
        .file("o/sub/.wh..wh..opq", "")
        .file("o/.wh..wh..opq", "")
        .file("o/after", "after");
    s.apply(&l.tar()).unwrap();
    assert_eq!(
        s.names(),
        [
            "a",
            "a/b",
            "a/c",
            "d",
            "d/e",
            "d/e/f",
            "o",
            "o/after",
            "o/new",
            "o/sub",
            "o/sub/keep-name"
        ]
    );
    assert_eq!(fs::read_to_string(s.p("o/sub/keep-name")).unwrap(), "upper");
}

#[test]
fn opaque_directory_implied_by_its_marker() {
    // A layer may carry the marker without an entry for its directory (and files below
    // it without their directory entries): lower contents go, the layer's stay.
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    l.file("o/sub/fresh", "fresh").file("o/.wh..wh..opq", "");
    s.apply(&l.tar()).unwrap();
    let names: Vec<_> = s
        .names()
        .into_iter()
        .filter(|n| n.starts_with('o'))
        .collect();
    assert_eq!(names, ["o", "o/sub", "o/sub/fresh"]);
}

#[test]
fn replacing_entries_of_another_type() {
    let s = Scratch::new();
    lower(&s);
    let mut l = Layer::new();
    l.symlink("lnk", "a");
    l.file("plain", "p");
    s.apply(&l.tar()).unwrap();

    let mut l = Layer::new();
    l.file("d", "file over dir") // the whole lower tree d/ goes
        .dir("a/b/", 0o700) // dir over file
        .file("a/b/in", "in")
        .dir("o/", 0o711) // dir over dir merges
        .file("o/added", "added")
        .file("lnk", "file over symlink")
        .symlink("plain", "a/c"); // symlink over file
    s.apply(&l.tar()).unwrap();
    assert_eq!(fs::read_to_string(s.p("d")).unwrap(), "file over dir");
    assert!(fs::metadata(s.p("a/b")).unwrap().is_dir());
    assert_eq!(fs::read_to_string(s.p("a/b/in")).unwrap(), "in");
    assert_eq!(fs::read_to_string(s.p("o/old")).unwrap(), "old");
    assert_eq!(fs::read_to_string(s.p("o/added")).unwrap(), "added");
    assert_eq!(
        fs::metadata(s.p("o")).unwrap().permissions().mode() & 0o7777,
        0o711
    );
    // The symlink was replaced, not written through: a/ is untouched.
    assert!(fs::symlink_metadata(s.p("lnk")).unwrap().is_file());
    assert_eq!(fs::read_to_string(s.p("a/c")).unwrap(), "c");
    assert_eq!(fs::read_link(s.p("plain")).unwrap(), Path::new("a/c"));
}

#[test]
fn dangling_symlinks_on_the_way_get_their_targets_made() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.symlink("lib", "usr/lib")
        .file("lib/foo", "merged usr")
        .symlink("opt", "/srv/opt")
        .file("opt/tool/bin", "abs")
        .symlink("a", "b")
        .symlink("b", "c/d")
        .file("a/e", "chain")
        .dir("x/", 0o755)
        .symlink("x/up", "../../../y")
        .file("x/up/z", "clamped");
    s.apply(&l.tar()).unwrap();
    assert_eq!(
        fs::read_to_string(s.p("usr/lib/foo")).unwrap(),
        "merged usr"
    );
    assert_eq!(fs::read_to_string(s.p("srv/opt/tool/bin")).unwrap(), "abs");
    assert_eq!(fs::read_to_string(s.p("c/d/e")).unwrap(), "chain");
    assert_eq!(fs::read_to_string(s.p("y/z")).unwrap(), "clamped");
}

#[test]
fn missing_parents_are_created() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.file("x/y/z/file", "deep");
    s.apply(&l.tar()).unwrap();
    assert_eq!(fs::read_to_string(s.p("x/y/z/file")).unwrap(), "deep");
    assert_eq!(
        fs::metadata(s.p("x/y")).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn long_names_and_pax_paths() {
    let s = Scratch::new();
    let long = format!("{}/{}", "d".repeat(150), "f".repeat(200));
    let mut l = Layer::new();
    l.entry(long.as_bytes(), EntryType::Regular, 0o644, b"", b"long");
    l.pax(&[("path", "pax/name with spaces".as_bytes())]);
    l.entry(b"ignored", EntryType::Regular, 0o644, b"", b"pax");
    s.apply(&l.tar()).unwrap();
    assert_eq!(fs::read_to_string(s.p(&long)).unwrap(), "long");
    assert_eq!(
        fs::read_to_string(s.p("pax/name with spaces")).unwrap(),
        "pax"
    );
    assert!(!s.p("ignored").exists());
}

#[test]
fn dotdot_inside_the_root_is_cleaned() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.file("a/../b", "b").file("./c/./d", "d");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.names(), ["b", "c", "c/d"]);
}

#[test]
fn a_root_entry_written_slash_is_the_root() {
    // `umoci insert SRC /` names the root entry `/`; it is the root, left as it is.
    let s = Scratch::new();
    let mut l = Layer::new();
    l.dir("/", 0o755).dir("etc", 0o755).file("etc/motd", "hi\n");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.names(), ["etc", "etc/motd"]);
}

// ---- hostile layers ----

#[test]
fn hostile_dotdot_name() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.file("../outside/pwned", "x");
    let err = hostile(&s, &l.tar(), "../outside/pwned");
    assert!(err.reason().contains(".."), "{err}");
    let mut l = Layer::new();
    l.file("a/../../outside/secret", "x");
    hostile(&s, &l.tar(), "a/../../outside/secret");
}

#[test]
fn hostile_absolute_name_lands_inside_the_root() {
    // As docker and containerd read it: `/abs/path` is `abs/path` under the root.
    let s = Scratch::new();
    let before = s.outside_state();
    let target = format!("{}/pwned", s.outside.display());
    let mut l = Layer::new();
    l.file(&target, "x");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    assert_eq!(fs::read_to_string(s.p(&target[1..])).unwrap(), "x");
}

#[test]
fn hostile_write_through_symlink_planted_in_the_same_layer() {
    let s = Scratch::new();
    let abs = s.outside.display().to_string();
    // Absolute link to the real outside directory: inside the root it means <root><abs>,
    // which is made there (as for any dangling link a later entry writes through).
    let before = s.outside_state();
    let mut l = Layer::new();
    l.symlink("evil", &abs).file("evil/pwned", "x");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    assert!(!s.outside.join("pwned").exists());
    let inside = s.root.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read_to_string(inside.join("pwned")).unwrap(), "x");

    // Relative link climbing out: `..` stops at the root, so this lands inside it.
    let s = Scratch::new();
    let before = s.outside_state();
    let mut l = Layer::new();
    l.dir("outside/", 0o755)
        .symlink("up", "../../../outside")
        .file("up/pwned", "x")
        .symlink("sub/deeper", "../../../../outside/")
        .file("sub/deeper/also", "y");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    assert_eq!(fs::read_to_string(s.p("outside/pwned")).unwrap(), "x");
    assert_eq!(fs::read_to_string(s.p("outside/also")).unwrap(), "y");
}

#[test]
fn hostile_write_through_symlink_planted_by_a_lower_layer() {
    let s = Scratch::new();
    let abs = s.outside.display().to_string();
    let mut l = Layer::new();
    l.symlink("evil", &abs)
        .symlink("evilfile", &format!("{abs}/secret"))
        .symlink("evildir", &format!("{abs}/sub"));
    s.apply(&l.tar()).unwrap();

    // Writes through the link land below <root><abs>, never in <abs>.
    let before = s.outside_state();
    let mut l = Layer::new();
    l.file("evil/secret", "overwritten")
        .file("evil/sub/new/deep", "x");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    let inside = s.root.join(abs.trim_start_matches('/'));
    assert_eq!(
        fs::read_to_string(inside.join("secret")).unwrap(),
        "overwritten"
    );
    assert_eq!(
        fs::read_to_string(inside.join("sub/new/deep")).unwrap(),
        "x"
    );

    // Entries at the link's own name replace the link and never follow it.
    let before = s.outside_state();
    let mut l = Layer::new();
    l.file("evilfile", "mine").dir("evildir/", 0o700);
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    assert_eq!(fs::read_to_string(s.p("evilfile")).unwrap(), "mine");
    assert!(fs::symlink_metadata(s.p("evildir")).unwrap().is_dir());

    // Whiteouts and opaque markers through the link remove nothing outside.
    let mut l = Layer::new();
    l.file("evil/.wh.secret", "")
        .file("evil/sub/.wh..wh..opq", "")
        .file("evil/.wh.sub", "");
    let before = s.outside_state();
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
}

#[test]
fn hostile_hard_links() {
    let s = Scratch::new();
    let abs = format!("{}/secret", s.outside.display());
    // An absolute target is taken inside the root, where there is nothing to link.
    let mut l = Layer::new();
    l.hardlink("hl", &abs);
    let err = hostile(&s, &l.tar(), "hl");
    assert!(err.reason().contains("does not exist"), "{err}");

    let mut l = Layer::new();
    l.hardlink("hl", "../outside/secret");
    hostile(&s, &l.tar(), "hl");

    // Through a symlink in the target's parents: resolved inside the root, where there is
    // nothing to link.
    let mut l = Layer::new();
    l.symlink("up", &s.outside.display().to_string())
        .hardlink("hl", "up/secret");
    let err = hostile(&s, &l.tar(), "hl");
    assert!(err.reason().contains("does not exist"), "{err}");

    let mut l = Layer::new();
    l.file("x", "x").hardlink("x", "./x");
    let err = hostile(&s, &l.tar(), "x");
    assert!(err.reason().contains("itself"), "{err}");

    // To a symlink pointing outside: the link itself is linked, not its target.
    let s = Scratch::new();
    let before = s.outside_state();
    let mut l = Layer::new();
    l.symlink("sl", &abs).hardlink("hl2", "sl");
    s.apply(&l.tar()).unwrap();
    assert_eq!(s.outside_state(), before);
    assert!(fs::symlink_metadata(s.p("hl2"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::metadata(s.outside.join("secret")).unwrap().nlink(), 1);
}

#[test]
fn hostile_symlink_loop() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.symlink("loop1", "loop2")
        .symlink("loop2", "loop1")
        .file("loop1/x", "x");
    let err = hostile(&s, &l.tar(), "loop1/x");
    assert!(err.reason().contains("symbolic links"), "{err}");
    let mut l = Layer::new();
    l.symlink("self", "./self/").file("self/x", "x");
    hostile(&s, &l.tar(), "self/x");
}

#[test]
fn hostile_huge_headers() {
    let s = Scratch::new();
    // A GNU long name of 2 MiB.
    let mut l = Layer::new();
    let huge = vec![b'a'; 2 << 20];
    let h = Layer::header(
        b"././@LongLink",
        EntryType::GNULongName,
        huge.len() as u64,
        0,
        b"",
    );
    l.push(&h, &huge);
    l.file("after", "x");
    let err = s.apply(&l.tar()).unwrap_err();
    assert!(err.reason().contains("larger than the limit"), "{err}");
    assert_eq!(err.kind(), UnpackErrorKind::Refused);

    // A PAX header claiming 64 GiB (the data is not there): refused before reading.
    let mut l = Layer::new();
    let h = Layer::header(b"PaxHeader", EntryType::XHeader, 64 << 30, 0, b"");
    l.push(&h, b"");
    let err = s.apply(&l.tar()).unwrap_err();
    assert!(err.reason().contains("larger than the limit"), "{err}");
    assert_eq!(err.kind(), UnpackErrorKind::Refused);

    // A name over PATH_MAX.
    let mut l = Layer::new();
    let name = "n/".repeat(3000);
    l.pax(&[("path", name.as_bytes())]);
    l.entry(b"x", EntryType::Regular, 0o644, b"", b"x");
    let err = s.apply(&l.tar()).unwrap_err();
    assert!(err.reason().contains("longer than the limit"), "{err}");
    assert!(s.names().is_empty(), "{:?}", s.names());
}

#[test]
fn error_names_the_entry_on_one_line() {
    let s = Scratch::new();
    let mut l = Layer::new();
    l.file("../evil\nname", "x");
    let err = s.apply(&l.tar()).unwrap_err();
    assert_eq!(err.entry(), "../evil\\nname");
    assert!(!err.to_string().contains('\n'));
}

#[test]
fn corrupt_streams_are_refused() {
    let s = Scratch::new();
    let mut garbage = vec![7u8; 4096];
    let err = s.apply(&garbage).unwrap_err();
    assert!(err.reason().contains("checksum"), "{err}");
    assert_eq!(err.kind(), UnpackErrorKind::Stream);

    // Truncated inside a file's data.
    let mut l = Layer::new();
    l.file("f", &"x".repeat(5000));
    let mut tar = l.tar();
    tar.truncate(2048);
    let err = s.apply(&tar).unwrap_err();
    assert_eq!(err.entry(), "f");

    // A corrupt gzip stream.
    let mut gz = gzip(&sample_layer().tar());
    let mid = gz.len() / 2;
    gz[mid..mid + 8].copy_from_slice(&[0xff; 8]);
    garbage.clear();
    let s = Scratch::new();
    assert!(apply_layer(&s.root, gz.as_slice(), Compression::Gzip, &opts()).is_err());
}

#[test]
fn media_types() {
    use Compression as C;
    for (mt, c) in [
        ("application/vnd.oci.image.layer.v1.tar", Some(C::None)),
        ("application/vnd.oci.image.layer.v1.tar+gzip", Some(C::Gzip)),
        ("application/vnd.oci.image.layer.v1.tar+zstd", Some(C::Zstd)),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Some(C::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Some(C::Gzip),
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Some(C::Gzip),
        ),
        (
            "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
            None,
        ),
        ("application/vnd.oci.image.config.v1+json", None),
    ] {
        assert_eq!(Compression::from_media_type(mt), c, "{mt}");
    }
}

/// Runs `f` on a thread whose effective uid and gid are nobody's (65534), as an
/// unprivileged user would unpack. Credentials are per thread with the raw syscalls, and
/// leaving uid 0 clears the thread's effective capabilities. Not root: runs as is.
fn as_unprivileged<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|sc| {
        sc.spawn(|| {
            if rustix::process::geteuid().is_root() {
                let nobody_g = Gid::from_raw(65534);
                rustix::thread::set_thread_groups(&[nobody_g]).unwrap();
                rustix::thread::set_thread_res_gid(None, nobody_g, None).unwrap();
                rustix::thread::set_thread_res_uid(None, Uid::from_raw(65534), None).unwrap();
            }
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn unprivileged_unpack_skips_owners_devices_and_privileged_xattrs() {
    let s = Scratch::new();
    let user = if rustix::process::geteuid().is_root() {
        // Let nobody reach and own the root.
        let area = s.root.parent().unwrap();
        fs::set_permissions(area, fs::Permissions::from_mode(0o755)).unwrap();
        rustix::fs::chown(
            &s.root,
            Some(Uid::from_raw(65534)),
            Some(Gid::from_raw(65534)),
        )
        .unwrap();
        65534
    } else {
        rustix::process::geteuid().as_raw()
    };
    let mut l = Layer::new();
    let owned = |h: &mut Header| {
        h.set_uid(1234);
        h.set_gid(1234)
    };
    l.entry(b"ro/", EntryType::Directory, 0o555, b"", b"");
    l.entry(
        b"ro/f",
        EntryType::Regular,
        0o444,
        b"",
        b"in a read-only dir",
    );
    l.entry(b"locked/", EntryType::Directory, 0o000, b"", b"");
    l.entry(b"locked/inner/", EntryType::Directory, 0o700, b"", b"");
    l.entry(b"locked/inner/f", EntryType::Regular, 0o600, b"", b"deep");
    l.entry_with(b"owned", EntryType::Regular, 0o4755, b"", b"x", owned);
    l.entry_with(b"null", EntryType::Char, 0o666, b"", b"", |h| {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    });
    l.entry(b"fifo", EntryType::Fifo, 0o600, b"", b"");
    l.pax(&[
        (
            "SCHILY.xattr.security.capability",
            &[0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        ),
        ("SCHILY.xattr.user.kept", b"yes"),
    ]);
    l.entry(b"capped", EntryType::Regular, 0o755, b"", b"elf");
    let tar = l.tar();

    let opts = UnpackOptions::default();
    as_unprivileged(|| apply_layer(&s.root, tar.as_slice(), Compression::None, &opts)).unwrap();

    let md = |p: &str| fs::symlink_metadata(s.p(p)).unwrap();
    assert_eq!(md("ro").permissions().mode() & 0o7777, 0o555);
    assert_eq!(md("locked").permissions().mode() & 0o7777, 0o000);
    assert_eq!(md("locked/inner").permissions().mode() & 0o7777, 0o700);
    assert_eq!(fs::read_to_string(s.p("locked/inner/f")).unwrap(), "deep");
    assert_eq!(
        fs::read_to_string(s.p("ro/f")).unwrap(),
        "in a read-only dir"
    );
    assert_eq!(md("owned").uid(), user);
    assert_eq!(md("owned").permissions().mode() & 0o7777, 0o4755);
    assert!(!s.p("null").exists());
    assert!(md("fifo").file_type().is_fifo());
    let mut buf = [0u8; 64];
    let n = rustix::fs::lgetxattr(s.p("capped"), "user.kept", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"yes");
    assert!(rustix::fs::lgetxattr(s.p("capped"), "security.capability", &mut buf[..]).is_err());
    fs::set_permissions(s.p("locked"), fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn unprivileged_unpack_writes_into_read_only_lower_directories() {
    let s = Scratch::new();
    if rustix::process::geteuid().is_root() {
        let area = s.root.parent().unwrap();
        fs::set_permissions(area, fs::Permissions::from_mode(0o755)).unwrap();
        rustix::fs::chown(
            &s.root,
            Some(Uid::from_raw(65534)),
            Some(Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let apply = |tar: Vec<u8>| {
        let opts = UnpackOptions::default();
        as_unprivileged(|| apply_layer(&s.root, tar.as_slice(), Compression::None, &opts))
    };
    let mut l = Layer::new();
    l.entry(b"ro/", EntryType::Directory, 0o555, b"", b"");
    l.entry(b"ro/old", EntryType::Regular, 0o444, b"", b"old");
    l.entry(b"ro/gone/", EntryType::Directory, 0o555, b"", b"");
    l.entry(b"ro/gone/f", EntryType::Regular, 0o444, b"", b"f");
    l.entry(b"ro/closed/", EntryType::Directory, 0o000, b"", b"");
    apply(l.tar()).unwrap();

    let mut l = Layer::new();
    l.file("ro/new", "new")
        .file("ro/.wh.gone", "")
        .file("ro/.wh.closed", "")
        .file("ro/old", "replaced");
    apply(l.tar()).unwrap();
    assert_eq!(s.names(), ["ro", "ro/new", "ro/old"]);
    assert_eq!(fs::read_to_string(s.p("ro/old")).unwrap(), "replaced");
    let ro = fs::metadata(s.p("ro")).unwrap();
    assert_eq!(ro.permissions().mode() & 0o7777, 0o555);
    assert_eq!(ro.uid(), fs::metadata(&s.root).unwrap().uid());
}

#[test]
fn early_refusal_with_much_left_to_read_stops_cleanly() {
    // The entry is refused while the producer still has many chunks to hand over: neither
    // side may wait for the other forever, and the refusal is the error reported.
    let mut l = Layer::new();
    l.file("../escape", "x");
    let mut x = 1u32;
    let big: String = (0..(8 * stream::CHUNK))
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            char::from(b'a' + (x >> 24) as u8 % 26)
        })
        .collect();
    l.file("big", &big);
    let tar = l.tar();
    for (c, blob) in [
        (Compression::None, tar.clone()),
        (Compression::Gzip, gzip(&tar)),
        (Compression::Zstd, zstd(&tar)),
    ] {
        let s = Scratch::new();
        let err = apply_layer(&s.root, blob.as_slice(), c, &opts()).unwrap_err();
        assert_eq!(err.entry(), "../escape", "{c:?}: {err}");
    }
}

#[test]
fn corrupt_data_inside_a_file_names_the_file() {
    let mut l = Layer::new();
    l.file("small", "s");
    l.file("big", &"0123456789".repeat(300_000));
    let tar = l.tar();
    let mut zst = zstd(&tar);
    // Cut the stream in the middle of big's data.
    zst.truncate(zst.len() / 2);
    let s = Scratch::new();
    let err = apply_layer(&s.root, zst.as_slice(), Compression::Zstd, &opts()).unwrap_err();
    assert_eq!(err.entry(), "big", "{err}");
    assert!(err.reason().starts_with("reading the layer: "), "{err}");
    assert_eq!(err.kind(), UnpackErrorKind::Stream);
}

/// Everything a layer carries about each entry below `root`: type, mode, mtime, content or
/// link target, `user.*` xattrs, and which entries share an inode.
fn tree_state(root: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut paths = Vec::new();
    walk(root, &mut |p| paths.push(p.to_path_buf()));
    paths.sort();
    for p in paths {
        if p == root {
            continue;
        }
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let what = if ft.is_symlink() {
            format!("link {}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            let first = inodes
                .entry(md.ino())
                .or_insert_with(|| rel.clone())
                .clone();
            format!("file {} same-as {first}", sha256(&fs::read(&p).unwrap()))
        } else if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_fifo() {
            "fifo".to_string()
        } else {
            format!("other {:?}", ft)
        };
        let mut xattrs = Vec::new();
        if !ft.is_symlink() {
            let mut names = vec![0u8; 4096];
            let n = rustix::fs::llistxattr(&p, &mut names[..]).unwrap();
            for name in names[..n]
                .split(|&b| b == 0)
                .filter(|n| n.starts_with(b"user."))
            {
                let mut v = vec![0u8; 4096];
                let k = rustix::fs::lgetxattr(&p, name, &mut v[..]).unwrap();
                xattrs.push(format!(
                    "{}={}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&v[..k])
                ));
            }
        }
        let mode = if ft.is_symlink() {
            0
        } else {
            md.mode() & 0o7777
        };
        m.insert(
            rel,
            format!(
                "{what} mode {mode:o} mtime {}.{:09} {xattrs:?}",
                md.mtime(),
                md.mtime_nsec()
            ),
        );
    }
    m
}

#[test]
fn gnu_tar_posix_layer_round_trips() {
    assert!(
        std::process::Command::new("tar")
            .arg("--version")
            .output()
            .is_ok(),
        "this test needs GNU tar: apt-get install tar"
    );
    let src = tempfile::tempdir().unwrap();
    let s = src.path();
    let long_dir = format!("{}/{}", "long-directory-name-".repeat(6), "x".repeat(120));
    fs::create_dir_all(s.join(&long_dir)).unwrap();
    fs::write(s.join(&long_dir).join("f"), "in a long path").unwrap();
    fs::create_dir_all(s.join("a/b")).unwrap();
    for (name, len) in [
        ("empty", 0),
        ("one", 1),
        ("511", 511),
        ("512", 512),
        ("513", 513),
    ] {
        fs::write(s.join("a").join(name), "z".repeat(len)).unwrap();
    }
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(s.join("a/b/big"), &big).unwrap();
    fs::write(s.join("a/ünïcode name"), "utf-8").unwrap();
    fs::write(s.join("a/suid"), "s").unwrap();
    fs::set_permissions(s.join("a/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(s.join("a/b"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::hard_link(s.join("a/b/big"), s.join("a/big-link")).unwrap();
    std::os::unix::fs::symlink("b/big", s.join("a/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", s.join("a/abs")).unwrap();
    std::os::unix::fs::symlink(&long_dir, s.join("long-target")).unwrap();
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        s.join("a/fifo"),
        Mode::from_raw_mode(0o640),
    )
    .unwrap();
    rustix::fs::setxattr(
        s.join("a/one"),
        "user.kiln",
        b"xattr value",
        XattrFlags::empty(),
    )
    .unwrap();
    // mtimes with nanoseconds, directories last.
    let mut paths = Vec::new();
    walk(s, &mut |p| paths.push(p.to_path_buf()));
    paths.reverse();
    for (i, p) in paths.iter().enumerate() {
        let t = Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 1_500_000_000 + i as i64,
                tv_nsec: 123_456_789,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 1_500_000_000 + i as i64,
                tv_nsec: 123_456_789,
            },
        };
        utimensat(rustix::fs::CWD, p, &t, AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    let out = std::process::Command::new("tar")
        .args([
            "--format=posix",
            "--xattrs",
            "--xattrs-include=user.*",
            "--numeric-owner",
        ])
        .arg("-C")
        .arg(s)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = Scratch::new();
    let stats = d.apply(&out.stdout).unwrap();
    assert_eq!(stats.diff_id, sha256(&out.stdout));
    assert_eq!(tree_state(&d.root), tree_state(s));
}

#[test]
fn a_missing_unpack_directory_is_a_filesystem_error() {
    let s = Scratch::new();
    let missing = s.root.join("nope");
    let err = apply_layer(
        &missing,
        &sample_layer().tar()[..],
        Compression::None,
        &opts(),
    )
    .unwrap_err();
    assert_eq!(err.kind(), UnpackErrorKind::Filesystem);
    assert_eq!(err.entry(), missing.display().to_string());
}
