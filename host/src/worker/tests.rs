//! Worker tests on real temporary trees, including hostile ones.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::*;
use crate::definition::Action;

#[derive(serde::Deserialize)]
struct Actions {
    actions: Vec<Action>,
}

fn actions(toml_text: &str) -> Vec<Action> {
    toml::from_str::<Actions>(&format!("actions = [{toml_text}]"))
        .expect("test actions parse")
        .actions
}

struct Env {
    _t: tempfile::TempDir,
    target: PathBuf,
    inputs: HashMap<String, PathBuf>,
    /// A folder standing for "the host" next to the trees: nothing may reach it.
    host: PathBuf,
}

fn env() -> Env {
    let t = tempfile::tempdir().unwrap();
    let target = t.path().join("target");
    let ctx = t.path().join("ctx");
    let host = t.path().join("host");
    fs::create_dir_all(&target).unwrap();
    fs::create_dir_all(ctx.join("src/sub")).unwrap();
    fs::create_dir_all(&host).unwrap();
    fs::write(host.join("passwd"), "host secret").unwrap();
    fs::write(ctx.join("src/a.txt"), "A").unwrap();
    fs::write(ctx.join("src/b.log"), "B").unwrap();
    fs::write(ctx.join("src/sub/c.txt"), "C").unwrap();
    fs::write(ctx.join("top.txt"), "T").unwrap();
    let mut inputs = HashMap::new();
    inputs.insert("ctx".to_string(), ctx);
    Env {
        _t: t,
        target,
        inputs,
        host,
    }
}

impl Env {
    fn run(&self, a: &str) -> Result<()> {
        let inputs = self.inputs.clone();
        apply(
            &actions(a),
            &self.target,
            &move |n| inputs.get(n).cloned(),
            None,
        )
    }
    fn ctx(&self) -> &Path {
        &self.inputs["ctx"]
    }
    fn read(&self, p: &str) -> String {
        fs::read_to_string(self.target.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
}

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    walk(root, root, &mut out);
    out
}

#[test]
fn copy_file_dir_and_contents() {
    let e = env();
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/app/src" } }"#)
        .unwrap();
    assert_eq!(
        listing(&e.target.join("app")),
        [
            "src/",
            "src/a.txt",
            "src/b.log",
            "src/sub/",
            "src/sub/c.txt"
        ]
    );
    // Into an existing folder: the source folder goes inside.
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/app" } }"#)
        .unwrap();
    assert!(e.target.join("app/src/sub/c.txt").is_file());
    // dir_contents copies what is inside.
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/flat", dir_contents = true } }"#)
        .unwrap();
    assert_eq!(
        listing(&e.target.join("flat")),
        ["a.txt", "b.log", "sub/", "sub/c.txt"]
    );
    // A file to a path ending in '/' lands inside that new folder.
    e.run(r#"{ copy = { from = "ctx", src = "top.txt", dest = "/new/dir/" } }"#)
        .unwrap();
    assert_eq!(e.read("new/dir/top.txt"), "T");
    // A file to a new name.
    e.run(r#"{ copy = { from = "ctx", src = "top.txt", dest = "/renamed" } }"#)
        .unwrap();
    assert_eq!(e.read("renamed"), "T");
}

#[test]
fn copy_wildcards_include_exclude_mode_owner() {
    let e = env();
    e.run(r#"{ copy = { from = "ctx", src = "/src/*.txt", dest = "/w/" } }"#)
        .unwrap();
    assert_eq!(listing(&e.target.join("w")), ["a.txt"]);
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/f", dir_contents = true, include = ["**/*.txt"], exclude = ["sub/c.txt"] } }"#)
        .unwrap();
    assert_eq!(listing(&e.target.join("f")), ["a.txt"]);
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/g", dir_contents = true, exclude = ["*.log"] } }"#)
        .unwrap();
    assert_eq!(listing(&e.target.join("g")), ["a.txt", "sub/", "sub/c.txt"]);
    e.run(r#"{ copy = { from = "ctx", src = "/src", dest = "/m", mode = "0600", owner = "1234:5678" } }"#).unwrap();
    let m = fs::metadata(e.target.join("m/sub/c.txt")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!((m.uid(), m.gid()), (1234, 5678));
    }
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "/nope/*.c", dest = "/x" } }"#)
        .unwrap_err();
    assert!(
        err.to_string().contains("no source matches /nope/*.c"),
        "{err}"
    );
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "/missing", dest = "/x" } }"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "action 1 (copy ctx:/missing to /x): copy: source /missing: not found"
    );
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "/top.txt", dest = "/no/such/x", create_dest_path = false } }"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("destination folder /no/such: not found"),
        "{err}"
    );
}

#[test]
fn copy_with_dotdot_stays_inside_both_trees() {
    let e = env();
    // The source escape attempt: ../../ climbs to the source tree's root, not the host.
    let hostile = format!(
        "{{ copy = {{ from = \"ctx\", src = \"../../../../../../../..{}\", dest = \"/x\" }} }}",
        e.host.join("passwd").display()
    );
    let err = e.run(&hostile).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // Destination escape attempt lands inside the target tree.
    e.run(r#"{ copy = { from = "ctx", src = "top.txt", dest = "../../etc/passwd" } }"#)
        .unwrap();
    assert_eq!(e.read("etc/passwd"), "T");
    assert_eq!(
        fs::read_to_string(e.host.join("passwd")).unwrap(),
        "host secret"
    );
}

#[test]
fn symlinks_to_the_host_resolve_inside_the_tree() {
    let e = env();
    // Links planted in the target and in the source point at the "host" folder and /etc.
    fs::create_dir(e.target.join("etc")).unwrap();
    symlink(&e.host, e.target.join("hostlink")).unwrap();
    symlink("/etc", e.target.join("etclink")).unwrap();
    symlink("../../../../../../../../../etc", e.target.join("rel-etc")).unwrap();
    symlink(e.host.join("passwd"), e.ctx().join("evil")).unwrap();
    symlink("/etc", e.ctx().join("etcdir")).unwrap();
    // The link's target does not exist inside the tree: writing under it fails...
    let err = e
        .run(r#"{ mkfile = { path = "/hostlink/passwd", data = "pwned" } }"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("parent folder of /hostlink/passwd: not found"),
        "{err}"
    );
    // ...until it is created, inside the tree.
    e.run(r#"{ mkdir = { path = "/hostlink", parents = true } }, { mkfile = { path = "/hostlink/passwd", data = "pwned" } }"#)
        .unwrap();
    e.run(r#"{ mkfile = { path = "/etclink/passwd", data = "pwned" } }"#)
        .unwrap();
    e.run(r#"{ mkfile = { path = "/rel-etc/shadow", data = "pwned" } }"#)
        .unwrap();
    e.run(r#"{ copy = { from = "ctx", src = "top.txt", dest = "/etclink/hosts" } }"#)
        .unwrap();
    e.run(r#"{ mkdir = { path = "/etclink/evil.d/x", parents = true } }"#)
        .unwrap();
    assert_eq!(
        fs::read_to_string(e.host.join("passwd")).unwrap(),
        "host secret"
    );
    assert!(!Path::new("/etc/evil.d").exists());
    // They landed inside the tree, where the links re-root.
    let real = e
        .target
        .join(e.host.strip_prefix("/").unwrap())
        .join("passwd");
    assert_eq!(fs::read_to_string(real).unwrap(), "pwned");
    assert_eq!(e.read("etc/passwd"), "pwned");
    assert_eq!(e.read("etc/shadow"), "pwned");
    assert_eq!(e.read("etc/hosts"), "T");
    assert!(e.target.join("etc/evil.d/x").is_dir());
    assert!(fs::symlink_metadata(e.target.join("etclink"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Following a source link to the host reads inside the source tree (where nothing is).
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "evil", dest = "/got", follow_symlinks = true } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // Without following, the link itself is copied verbatim.
    e.run(r#"{ copy = { from = "ctx", src = "evil", dest = "/got" } }"#)
        .unwrap();
    assert!(fs::symlink_metadata(e.target.join("got"))
        .unwrap()
        .file_type()
        .is_symlink());
    // Copying from a link to /etc copies the source tree's /etc (missing), never the host's.
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "etcdir/passwd", dest = "/p" } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // Wildcards through a link match and remove inside the tree.
    fs::write(e.host.join("victim.txt"), "keep").unwrap();
    e.run(r#"{ mkfile = { path = "/hostlink/victim.txt", data = "in tree" } }"#)
        .unwrap();
    // The wildcard matches the link itself, then a name below it: still inside.
    e.run(r#"{ rm = { path = "/host*/victim.txt", allow_wildcard = true } }"#)
        .unwrap();
    assert_eq!(
        fs::read_to_string(e.host.join("victim.txt")).unwrap(),
        "keep"
    );
    e.run(r#"{ mkfile = { path = "/hostlink/victim.txt", data = "in tree" } }"#)
        .unwrap();
    e.run(r#"{ rm = { path = "/hostlink/*.txt", allow_wildcard = true } }"#)
        .unwrap();
    assert!(e
        .target
        .join(e.host.strip_prefix("/").unwrap())
        .join("passwd")
        .exists());
    assert_eq!(
        fs::read_to_string(e.host.join("victim.txt")).unwrap(),
        "keep"
    );
    let err = e
        .run(r#"{ rm = { path = "/hostlink/*.txt", allow_wildcard = true } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    symlink(&e.host, e.ctx().join("hostdir")).unwrap();
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "/hostdir/*.txt", dest = "/stolen/" } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("no source matches"), "{err}");
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "/host*/victim.txt", dest = "/stolen/" } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("no source matches"), "{err}");
    // rm through a link removes inside the tree.
    e.run(r#"{ rm = { path = "/hostlink/passwd" } }"#).unwrap();
    assert_eq!(
        fs::read_to_string(e.host.join("passwd")).unwrap(),
        "host secret"
    );
}

#[test]
fn symlink_loop_is_an_error() {
    let e = env();
    symlink("b", e.target.join("a")).unwrap();
    symlink("a", e.target.join("b")).unwrap();
    let err = e
        .run(r#"{ mkfile = { path = "/a/x", data = "" } }"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("too many levels of symbolic links"),
        "{err}"
    );
    // `etc -> /etc` at the root points at itself inside the tree.
    symlink("/etc", e.target.join("etc")).unwrap();
    let err = e
        .run(r#"{ mkfile = { path = "/etc/passwd", data = "" } }"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "action 1 (mkfile /etc/passwd): resolving /etc/passwd: too many levels of symbolic links"
    );
}

#[test]
fn mkdir_mkfile_rm_symlink() {
    let e = env();
    e.run(
        r#"{ mkdir = { path = "/app/bin", mode = "0750", parents = true } },
           { mkfile = { path = "/app/VERSION", data = "1.0\n", mode = "0600" } },
           { symlink = { target = "/app/bin/tool", path = "/app/tool" } },
           { mkdir = { path = "/app/tmp" } },
           { rm = { path = "/app/tmp" } },
           { rm = { path = "/app/none", allow_not_found = true } }"#,
    )
    .unwrap();
    assert_eq!(
        fs::metadata(e.target.join("app/bin")).unwrap().mode() & 0o7777,
        0o750
    );
    assert_eq!(
        fs::metadata(e.target.join("app")).unwrap().mode() & 0o7777,
        0o755
    );
    assert_eq!(e.read("app/VERSION"), "1.0\n");
    assert_eq!(
        fs::metadata(e.target.join("app/VERSION")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::read_link(e.target.join("app/tool")).unwrap(),
        Path::new("/app/bin/tool")
    );
    assert!(!e.target.join("app/tmp").exists());
    let err = e.run(r#"{ rm = { path = "/app/none" } }"#).unwrap_err();
    assert_eq!(
        err.to_string(),
        "action 1 (rm /app/none): rm /app/none: not found"
    );
    let err = e.run(r#"{ mkdir = { path = "/x/y" } }"#).unwrap_err();
    assert!(err.to_string().contains("parent folder of /x/y"), "{err}");
    e.run(r#"{ mkfile = { path = "/app/1.o", data = "" } }, { mkfile = { path = "/app/2.o", data = "" } }, { rm = { path = "/app/*.o", allow_wildcard = true } }"#)
        .unwrap();
    assert_eq!(listing(&e.target.join("app")), ["VERSION", "bin/", "tool"]);
    // rm / empties the tree but keeps the tree itself.
    e.run(r#"{ rm = { path = "/" } }"#).unwrap();
    assert!(e.target.is_dir());
    assert!(listing(&e.target).is_empty());
}

fn make_tar(path: &Path, entries: &[(&str, tar::EntryType, &str)], compress: &str) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(*kind);
        h.set_mode(if *kind == tar::EntryType::Directory {
            0o755
        } else {
            0o640
        });
        h.set_mtime(1_600_000_000);
        match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                h.set_size(0);
                // Raw names, to write hostile ones the builder's checks would refuse.
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                gnu.linkname[..data.len()].copy_from_slice(data.as_bytes());
                h.set_cksum();
                b.append(&h, std::io::empty()).unwrap();
            }
            _ => {
                h.set_size(data.len() as u64);
                let gnu = h.as_gnu_mut().unwrap();
                gnu.name[..name.len()].copy_from_slice(name.as_bytes());
                h.set_cksum();
                b.append(&h, data.as_bytes()).unwrap();
            }
        }
    }
    let raw = b.into_inner().unwrap();
    let bytes = match compress {
        "gz" => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap()
        }
        "zst" => zstd::encode_all(&raw[..], 1).unwrap(),
        "xz" => {
            let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap()
        }
        _ => raw,
    };
    fs::write(path, bytes).unwrap();
}

#[test]
fn unpack_every_compression() {
    use tar::EntryType as T;
    for comp in ["tar", "gz", "zst", "xz"] {
        let e = env();
        make_tar(
            &e.ctx().join("a.bin"),
            &[
                ("d/", T::Directory, ""),
                ("d/f", T::Regular, "data"),
                ("d/l", T::Symlink, "f"),
                ("d/h", T::Link, "d/f"),
            ],
            comp,
        );
        e.run(r#"{ copy = { from = "ctx", src = "a.bin", dest = "/out", unpack = true } }"#)
            .unwrap();
        assert_eq!(e.read("out/d/f"), "data", "{comp}");
        assert_eq!(e.read("out/d/h"), "data", "{comp}");
        assert_eq!(
            fs::read_link(e.target.join("out/d/l")).unwrap(),
            Path::new("f")
        );
        let m = fs::metadata(e.target.join("out/d/f")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o640);
        assert_eq!(m.mtime(), 1_600_000_000);
        assert_eq!(
            m.ino(),
            fs::metadata(e.target.join("out/d/h")).unwrap().ino()
        );
    }
    // An archive named through a symlink is unpacked too.
    let e = env();
    make_tar(
        &e.ctx().join("a.tgz"),
        &[("f", tar::EntryType::Regular, "via link")],
        "gz",
    );
    symlink("a.tgz", e.ctx().join("latest.tgz")).unwrap();
    e.run(r#"{ copy = { from = "ctx", src = "latest.tgz", dest = "/out", unpack = true } }"#)
        .unwrap();
    assert_eq!(e.read("out/f"), "via link");
    // Not an archive: copied as it is, even with unpack.
    let e = env();
    e.run(r#"{ copy = { from = "ctx", src = "top.txt", dest = "/out/", unpack = true } }"#)
        .unwrap();
    assert_eq!(e.read("out/top.txt"), "T");
}

#[test]
fn unpack_hostile_archives_stay_inside() {
    use tar::EntryType as T;
    let e = env();
    let host = e.host.display().to_string();
    // A symlink to the host, then a file written through it.
    make_tar(
        &e.ctx().join("evil.tar"),
        &[
            ("link", T::Symlink, &host),
            ("link/passwd", T::Regular, "pwned"),
            ("abs", T::Symlink, "/etc"),
            ("abs/shadow", T::Regular, "x"),
        ],
        "tar",
    );
    e.run(r#"{ copy = { from = "ctx", src = "evil.tar", dest = "/out", unpack = true } }"#)
        .unwrap();
    assert_eq!(
        fs::read_to_string(e.host.join("passwd")).unwrap(),
        "host secret"
    );
    assert_eq!(e.read(&format!("out{host}/passwd")), "pwned");
    assert_eq!(e.read("out/etc/shadow"), "x");
    // `..` entries are refused.
    make_tar(
        &e.ctx().join("dotdot.tar"),
        &[("../../escape", T::Regular, "x")],
        "tar",
    );
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "dotdot.tar", dest = "/out2", unpack = true } }"#)
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("entry ../../escape escapes the destination"),
        "{err}"
    );
    // A hard link to a host file is refused.
    let hl = format!("../../../../../../../..{host}/passwd");
    make_tar(&e.ctx().join("hl.tar"), &[("h", T::Link, &hl)], "tar");
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "hl.tar", dest = "/out3", unpack = true } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("escapes the destination"), "{err}");
    make_tar(
        &e.ctx().join("hl2.tar"),
        &[("h", T::Link, &format!("{host}/passwd"))],
        "tar",
    );
    let err = e
        .run(r#"{ copy = { from = "ctx", src = "hl2.tar", dest = "/out4", unpack = true } }"#)
        .unwrap_err();
    assert!(err.to_string().contains("not an earlier file"), "{err}");
}

#[test]
fn materialize_and_merge() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a");
    let b = t.path().join("b");
    fs::create_dir_all(a.join("both")).unwrap();
    fs::write(a.join("both/from_a"), "a").unwrap();
    fs::write(a.join("same"), "a").unwrap();
    fs::create_dir_all(a.join("becomes_file")).unwrap();
    fs::write(a.join("becomes_dir"), "a").unwrap();
    fs::create_dir_all(b.join("both")).unwrap();
    fs::write(b.join("both/from_b"), "b").unwrap();
    fs::write(b.join("same"), "b").unwrap();
    fs::write(b.join("becomes_file"), "b").unwrap();
    fs::create_dir_all(b.join("becomes_dir")).unwrap();
    fs::set_permissions(b.join("same"), fs::Permissions::from_mode(0o700)).unwrap();
    let staging = t.path().join("s");
    fs::create_dir(&staging).unwrap();
    merge(&[&a, &b], &staging, None).unwrap();
    assert_eq!(
        listing(&staging),
        [
            "becomes_dir/",
            "becomes_file",
            "both/",
            "both/from_a",
            "both/from_b",
            "same"
        ]
    );
    assert_eq!(fs::read_to_string(staging.join("same")).unwrap(), "b");
    assert_eq!(
        fs::metadata(staging.join("same")).unwrap().mode() & 0o7777,
        0o700
    );
    let m = t.path().join("m");
    fs::create_dir(&m).unwrap();
    materialize(Some(&a), &m, None).unwrap();
    assert_eq!(listing(&m), listing(&a));
    // The source stays untouched by writes to the copy.
    fs::write(m.join("same"), "changed").unwrap();
    assert_eq!(fs::read_to_string(a.join("same")).unwrap(), "a");
}

/// Times a tree copy of many small files against `cp -a` (run with `--ignored`).
#[test]
#[ignore = "timing; run by hand"]
fn copy_tree_speed_against_cp() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    for d in 0..100 {
        let dir = src.join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(dir.join(format!("f{f}")), vec![b'x'; 4096]).unwrap();
        }
    }
    let dst = t.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let start = std::time::Instant::now();
    copy_tree(&src, &dst, None).unwrap();
    let ours = start.elapsed();
    let start = std::time::Instant::now();
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(t.path().join("cp"))
        .status()
        .unwrap();
    assert!(st.success());
    let cp = start.elapsed();
    eprintln!(
        "5000 files: copy_tree {ours:?}, cp -a {cp:?}, ratio {:.2}",
        ours.as_secs_f64() / cp.as_secs_f64()
    );
}

#[test]
fn read_only_directories_copy_for_a_user_without_dac_override() {
    let e = env();
    // ro/ and ro/inner/ are 0555 with a file each; two layers share them.
    let layer = |root: &Path, name: &str| {
        fs::create_dir_all(root.join("ro/inner")).unwrap();
        fs::write(root.join("ro").join(name), name).unwrap();
        fs::write(root.join("ro/inner").join(name), name).unwrap();
        for d in ["ro/inner", "ro"] {
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o555)).unwrap();
        }
    };
    let t = e._t.path();
    let (a, b) = (t.join("a"), t.join("b"));
    layer(&a, "from_a");
    layer(&b, "from_b");
    layer(e.ctx(), "from_ctx");
    let (m, s) = (t.join("m"), t.join("s"));
    fs::create_dir(&m).unwrap();
    fs::create_dir(&s).unwrap();
    let results = crate::testutil::without_dac_override(|| {
        [
            ("materialize", materialize(Some(&a), &m, None)),
            ("merge", merge(&[&a, &b], &s, None)),
            // Into a tree whose copies of those directories are read-only already.
            (
                "copy over",
                Copier::new(CopyOptions::default()).copy_contents(&b, &m),
            ),
            (
                "copy action",
                e.run(r#"{ copy = { from = "ctx", src = "/ro", dest = "/out" } }"#),
            ),
        ]
        .map(|(what, r)| (what, r.map_err(|err| err.to_string())))
    });
    for (what, r) in results {
        assert_eq!(r, Ok(()), "{what}");
    }
    let check = |dir: &Path, files: &[&str]| {
        for d in ["", "inner"] {
            let p = dir.join(d);
            assert_eq!(
                fs::metadata(&p).unwrap().mode() & 0o7777,
                0o555,
                "{}",
                p.display()
            );
            for f in files {
                assert_eq!(fs::read_to_string(p.join(f)).unwrap(), *f);
            }
        }
    };
    check(&m.join("ro"), &["from_a", "from_b"]);
    check(&s.join("ro"), &["from_a", "from_b"]);
    check(&e.target.join("out"), &["from_ctx"]);
}
