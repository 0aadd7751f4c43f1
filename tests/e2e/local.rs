//! End-to-end tests of the `local://NAME` source through the real `kiln` binary and
//! the real `libkiln_source_local.so`: `kiln source resolve` and `kiln source fetch`
//! with `--local NAME=DIR` (BuildKit's tests 48–51 of the local source).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use kiln_tests::Env;

/// sha256 of `data` in hex, computed by coreutils' `sha256sum` (independent of kiln).
fn sha256_hex(data: &str) -> String {
    kiln_tests::require_program("sha256sum", "coreutils");
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(data.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

fn local_arg(name: &str, dir: &Path) -> String {
    format!("{name}={}", dir.display())
}

/// Every entry under `root`: relative path → (kind, mode, mtime, content or target).
fn listing(root: &Path) -> BTreeMap<String, (char, u32, (i64, i64), String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let (kind, body) = if m.file_type().is_symlink() {
                (
                    'l',
                    fs::read_link(&p).unwrap().to_string_lossy().into_owned(),
                )
            } else if m.is_dir() {
                stack.push(p.clone());
                ('d', String::new())
            } else {
                ('f', fs::read_to_string(&p).unwrap())
            };
            out.insert(
                rel,
                (kind, m.mode() & 0o7777, (m.mtime(), m.mtime_nsec()), body),
            );
        }
    }
    out
}

fn write(path: &Path, data: &str, mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn resolve_gives_a_session_key_and_random_digest() {
    let env = Env::new();
    let ctx = env.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["source", "resolve", "local://ctx", "--json", "--local"];
        let l = local_arg("ctx", &ctx);
        args.push(&l);
        args.extend_from_slice(extra);
        env.kiln(&args).success().json()
    };
    let v = run(&[]);
    assert_eq!(v["identifier"], "local://ctx");
    assert_eq!(v["scheme"], "local");
    let keys = v["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key = keys[0]["key"].as_str().unwrap();
    let pin = v["pin"].as_str().unwrap();
    assert!(pin.starts_with("sha256:") && pin.len() == 71, "{pin}");
    assert_eq!(key, format!("session:ctx:{pin}"));
    assert_eq!(keys[0]["done"], true);
    let digest = keys[0]["digest"].as_str().unwrap();
    assert_eq!(
        digest,
        format!(
            "random:{}",
            sha256_hex(&format!("buildkit.source.v0:{key}"))
        )
    );

    // Each run is its own session: a new key every time.
    let again = run(&[]);
    assert_ne!(again["keys"][0]["key"], v["keys"][0]["key"]);

    // With a fixed session the key is BuildKit's, byte for byte.
    let fixed = run(&[
        "--attr",
        "local.session=s1",
        "--attr",
        r#"local.excludepatterns=["*.log","<x>"]"#,
    ]);
    let json = r#"{"SessionID":"s1","IncludePatterns":null,"ExcludePatterns":["*.log","\u003cx\u003e"],"FollowPaths":null}"#;
    let d = format!("sha256:{}", sha256_hex(json));
    assert_eq!(fixed["pin"], d.as_str());
    assert_eq!(fixed["keys"][0]["key"], format!("session:ctx:{d}").as_str());
    // The patterns are part of the key; the differ and the unique id are not.
    let other = run(&[
        "--attr",
        "local.session=s1",
        "--attr",
        r#"local.excludepatterns=["*.log"]"#,
    ]);
    assert_ne!(other["pin"], fixed["pin"]);
    let same = run(&[
        "--attr",
        "local.session=s1",
        "--attr",
        r#"local.excludepatterns=["*.log","<x>"]"#,
        "--attr",
        "local.differ=none",
        "--attr",
        "local.unique=abc",
    ]);
    assert_eq!(same["pin"], fixed["pin"]);
}

#[test]
fn fetch_copies_the_tree_with_metadata_links_and_hardlinks() {
    let env = Env::new();
    let ctx = env.path("ctx");
    write(&ctx.join("a.txt"), "hello", 0o644);
    write(&ctx.join("bin/tool"), "#!/bin/sh\n", 0o755);
    write(&ctx.join("private"), "p", 0o600);
    write(&ctx.join("target/debug/app"), "binary", 0o755);
    write(&ctx.join("target/keep.txt"), "keep", 0o644);
    write(&ctx.join("x.log"), "log", 0o644);
    fs::hard_link(ctx.join("a.txt"), ctx.join("bin/a-again")).unwrap();
    // BuildKit's testLocalSymlinkEscape: links arrive as links, targets stay behind.
    symlink("/etc/passwd", ctx.join("passwd")).unwrap();
    symlink("../../../etc/group", ctx.join("bin/group")).unwrap();

    let out = env.path("out");
    let v = env
        .kiln([
            "source",
            "fetch",
            "local://ctx",
            "--local",
            &local_arg("ctx", &ctx),
            "--attr",
            r#"local.excludepatterns=["target","!target/keep.txt","*.log"]"#,
            "--dest",
            out.to_str().unwrap(),
            "--json",
        ])
        .success()
        .json();
    assert_eq!(v["cached"], false);
    assert!(v["keys"][0]["digest"]
        .as_str()
        .unwrap()
        .starts_with("random:"));

    let mut want = listing(&ctx);
    want.remove("target/debug");
    want.remove("target/debug/app");
    want.remove("x.log");
    let got = listing(&out);
    assert_eq!(got, want);
    assert_eq!(got["passwd"].3, "/etc/passwd");
    assert_eq!(got["bin/group"].3, "../../../etc/group");
    assert!(!out.join("etc").exists());
    let ino = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("a.txt"), ino("bin/a-again"));
}

#[test]
fn followpaths_keep_hardlinks_and_leave_the_rest() {
    // BuildKit's testLocalSourceWithHardlinksFilter.
    let env = Env::new();
    let ctx = env.path("ctx");
    write(&ctx.join("foo1"), "foo", 0o644);
    fs::hard_link(ctx.join("foo1"), ctx.join("foo2")).unwrap();
    write(&ctx.join("bar"), "bar", 0o644);
    write(&ctx.join("data/real"), "real", 0o644);
    symlink("data/real", ctx.join("foolink")).unwrap();
    let out = env.path("out");
    env.kiln([
        "source",
        "fetch",
        "local://ctx",
        "--local",
        &local_arg("ctx", &ctx),
        "--attr",
        r#"local.followpaths=["foo*"]"#,
        "--dest",
        out.to_str().unwrap(),
    ])
    .success();
    let got: Vec<String> = listing(&out).into_keys().collect();
    assert_eq!(got, ["data", "data/real", "foo1", "foo2", "foolink"]);
    let ino = |p: &str| fs::metadata(out.join(p)).unwrap().ino();
    assert_eq!(ino("foo1"), ino("foo2"));
}

#[test]
fn parallel_fetches_with_one_name_get_their_own_directories() {
    // BuildKit's testParallelLocalBuilds: same root, same name, different dirs.
    let env = Env::new();
    let procs: Vec<_> = (0..3)
        .map(|i| {
            let ctx = env.path(&format!("ctx{i}"));
            for j in 0..200 {
                write(
                    &ctx.join(format!("d{}/f{j}", j % 5)),
                    &format!("{i}-{j}"),
                    0o644,
                );
            }
            let out = env.path(&format!("out{i}"));
            let child = env
                .command()
                .args(["source", "fetch", "local://context", "--local"])
                .arg(local_arg("context", &ctx))
                .arg("--dest")
                .arg(&out)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn kiln");
            (ctx, out, child)
        })
        .collect();
    for (ctx, out, child) in procs {
        let run: kiln_tests::Run = child.wait_with_output().unwrap().into();
        run.success();
        assert_eq!(listing(&out), listing(&ctx));
        let marker = ctx.file_name().unwrap().to_string_lossy()[3..].to_string();
        assert_eq!(
            fs::read_to_string(out.join("d3/f8")).unwrap(),
            format!("{marker}-8")
        );
    }
}

#[test]
fn errors_name_what_is_wrong() {
    let env = Env::new();
    let ctx = env.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    let out = env.path("out");
    let dest = out.to_str().unwrap();

    // No --local for the name.
    let r = env.kiln(["source", "fetch", "local://ctx", "--dest", dest]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("ctx") && r.stderr.contains("--local ctx="),
        "{}",
        r.stderr
    );

    // The mapped directory does not exist.
    let missing = env.path("nope");
    let r = env.kiln([
        "source",
        "fetch",
        "local://ctx",
        "--local",
        &local_arg("ctx", &missing),
        "--dest",
        dest,
    ]);
    r.expect_code(1);
    assert!(
        r.stderr.contains(&missing.display().to_string()),
        "{}",
        r.stderr
    );

    // Bad attributes are refused before anything runs, naming the attribute.
    for (attr, needle) in [
        ("local.excludepatterns=target", "local.excludepatterns"),
        (r#"local.includepattern=["[oops"]"#, "[oops"),
        ("local.differ=sometimes", "local.differ"),
        (r#"local.followpaths={"a":1}"#, "local.followpaths"),
    ] {
        let r = env.kiln([
            "source",
            "resolve",
            "local://ctx",
            "--local",
            &local_arg("ctx", &ctx),
            "--attr",
            attr,
        ]);
        assert_ne!(r.code, 0, "{attr} was accepted");
        assert!(r.stderr.contains(needle), "{attr}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    let r = env.kiln(["source", "resolve", "local://"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("needs a name"), "{}", r.stderr);
}

/// Every entry under `root` with what a snapshot must keep: kind, mode, mtime, content
/// or target, and for regular files the first path of their inode within the tree (so
/// that hard links are compared too).
type FullListing = BTreeMap<String, (char, u32, (i64, i64), Vec<u8>, String)>;

fn full_listing(root: &Path) -> FullListing {
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
    let mut first: BTreeMap<u64, String> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (p, m) in all {
        let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ft = m.file_type();
        let (kind, body, group) = if ft.is_symlink() {
            let t = fs::read_link(&p).unwrap();
            ('l', t.to_string_lossy().as_bytes().to_vec(), String::new())
        } else if ft.is_dir() {
            ('d', Vec::new(), String::new())
        } else {
            let g = first.entry(m.ino()).or_insert(rel.clone()).clone();
            ('f', fs::read(&p).unwrap(), g)
        };
        out.insert(
            rel,
            (
                kind,
                m.mode() & 0o7777,
                (m.mtime(), m.mtime_nsec()),
                body,
                group,
            ),
        );
    }
    out
}

/// Builds `def` with `--local context=CTX` into a fresh `--output type=local` folder.
fn build_to(env: &Env, def: &Path, ctx: &Path, out: &Path) {
    env.kiln([
        "--progress".as_ref(),
        "quiet".as_ref(),
        "build".as_ref(),
        def.as_os_str(),
        "--local".as_ref(),
        local_arg("context", ctx).as_ref(),
        "--output".as_ref(),
        format!("type=local,dest={}", out.display()).as_ref(),
    ])
    .success();
}

/// A fresh full copy of CTX made by `kiln source fetch` (never incremental).
fn fetch_fresh(env: &Env, ctx: &Path, out: &Path, attrs: &[&str]) {
    let mut args = vec![
        "source".to_string(),
        "fetch".into(),
        "local://context".into(),
        "--local".into(),
        local_arg("context", ctx),
        "--dest".into(),
        out.display().to_string(),
    ];
    for a in attrs {
        args.push("--attr".into());
        args.push(a.to_string());
    }
    env.kiln(&args).success();
}

/// Waits until a file created now gets a later ctime than every change made so far,
/// so that the next snapshot does not treat those changes as racy (a condition on
/// the file-time clock, not a delay).
fn settle(env: &Env) {
    let probe = env.path("settle-probe");
    fs::write(&probe, "").unwrap();
    let m = fs::metadata(&probe).unwrap();
    let t0 = (m.ctime(), m.ctime_nsec());
    loop {
        fs::remove_file(&probe).unwrap();
        fs::write(&probe, "").unwrap();
        let m = fs::metadata(&probe).unwrap();
        if (m.ctime(), m.ctime_nsec()) > t0 {
            break;
        }
        std::thread::yield_now();
    }
    fs::remove_file(&probe).unwrap();
}

/// The link counts of `rel` in every committed snapshot that holds it, sorted.
fn snapshot_nlinks(env: &Env, rel: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for e in fs::read_dir(env.root().join("snapshots")).unwrap() {
        if let Ok(m) = fs::symlink_metadata(e.unwrap().path().join(rel)) {
            out.push(m.nlink());
        }
    }
    out.sort();
    out
}

/// The inodes `rel` has across every committed snapshot that holds it.
fn snapshot_inodes(env: &Env, rel: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for e in fs::read_dir(env.root().join("snapshots")).unwrap() {
        let p = e.unwrap().path().join(rel);
        if let Ok(m) = fs::symlink_metadata(&p) {
            out.push(m.ino());
        }
    }
    out
}

#[test]
fn incremental_snapshots_equal_a_fresh_copy_after_every_change() {
    let env = Env::new();
    let ctx = env.path("ctx");
    write(&ctx.join("keep.txt"), "never changes", 0o644);
    write(&ctx.join("src/main.rs"), "fn main() {}\n", 0o644);
    write(&ctx.join("bin/run"), "#!/bin/sh\n", 0o755);
    write(&ctx.join("edit.txt"), "v1", 0o600);
    write(&ctx.join("becomes-dir"), "a file", 0o644);
    write(&ctx.join("old-name"), "moves", 0o644);
    fs::hard_link(ctx.join("src/main.rs"), ctx.join("main-link.rs")).unwrap();
    fs::create_dir_all(ctx.join("empty/nested")).unwrap();
    symlink("keep.txt", ctx.join("link")).unwrap();
    let def = env.write(
        "def.toml",
        "version = 1\n[steps.ctx]\nsource = \"local://context\"\n[output]\nstep = \"ctx\"\n",
    );

    type Change = Box<dyn Fn(&Path)>;
    let changes: Vec<Change> = vec![
        Box::new(|_| {}),
        Box::new(|c| {
            fs::write(c.join("edit.txt"), "v2, longer").unwrap();
            write(&c.join("added/new.txt"), "new", 0o640);
            fs::rename(c.join("old-name"), c.join("new-name")).unwrap();
            fs::remove_file(c.join("becomes-dir")).unwrap();
            write(&c.join("becomes-dir/inside"), "now a dir", 0o644);
            fs::set_permissions(c.join("bin/run"), fs::Permissions::from_mode(0o700)).unwrap();
        }),
        Box::new(|c| {
            fs::remove_dir_all(c.join("added")).unwrap();
            fs::remove_file(c.join("main-link.rs")).unwrap();
            fs::hard_link(c.join("edit.txt"), c.join("edit-link.txt")).unwrap();
            fs::remove_file(c.join("link")).unwrap();
            symlink("src/main.rs", c.join("link")).unwrap();
            fs::remove_dir(c.join("empty/nested")).unwrap();
        }),
    ];
    for (round, change) in changes.iter().enumerate() {
        change(&ctx);
        settle(&env);
        let out = env.path(&format!("out{round}"));
        let fresh = env.path(&format!("fresh{round}"));
        build_to(&env, &def, &ctx, &out);
        fetch_fresh(&env, &ctx, &fresh, &[]);
        assert_eq!(
            full_listing(&out),
            full_listing(&fresh),
            "round {round}: the built snapshot differs from a fresh copy"
        );
    }
    // Two changed rounds made two more snapshots; the unchanged file is one inode in
    // all of them (taken from the kept copy), the edited one is not.
    let keep = snapshot_inodes(&env, "keep.txt");
    assert!(keep.len() >= 3, "{keep:?}");
    assert!(keep.windows(2).all(|w| w[0] == w[1]), "{keep:?}");
    let mut edit = snapshot_inodes(&env, "edit.txt");
    edit.dedup();
    assert!(edit.len() >= 2, "{edit:?}");
    // A fetch into a user's folder never shares inodes with kiln's state.
    let fresh = env.path("fresh0");
    assert_eq!(fs::metadata(fresh.join("keep.txt")).unwrap().nlink(), 1);
}

#[test]
fn differ_none_copies_every_file() {
    let env = Env::new();
    let ctx = env.path("ctx");
    write(&ctx.join("a.txt"), "a", 0o644);
    write(&ctx.join("b.txt"), "b", 0o644);
    let def = |differ: &str| {
        env.write(
            "def.toml",
            format!(
                "version = 1\n[steps.ctx]\nsource = \"local://context\"\n\
                 attrs = {{ \"local.differ\" = \"{differ}\" }}\n[output]\nstep = \"ctx\"\n"
            ),
        )
    };
    let d = def("none");
    build_to(&env, &d, &ctx, &env.path("o1"));
    settle(&env);
    fs::write(ctx.join("b.txt"), "b2").unwrap();
    build_to(&env, &d, &ctx, &env.path("o2"));
    let a = snapshot_inodes(&env, "a.txt");
    assert_eq!(a.len(), 2);
    assert_ne!(a[0], a[1], "differ=none must copy unchanged files too");
    // Nothing was kept: each snapshot's file has one name.
    assert_eq!(snapshot_nlinks(&env, "a.txt"), [1, 1]);
    // The default (metadata) differ keeps a copy, then takes a.txt from it.
    let d = def("metadata");
    fs::write(ctx.join("b.txt"), "b3").unwrap();
    build_to(&env, &d, &ctx, &env.path("o3"));
    settle(&env);
    fs::write(ctx.join("b.txt"), "b4").unwrap();
    build_to(&env, &d, &ctx, &env.path("o4"));
    let a = snapshot_inodes(&env, "a.txt");
    assert_eq!(a.len(), 4);
    let mut distinct = a.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        3,
        "the last two snapshots share a.txt: {a:?}"
    );
    assert_eq!(full_listing(&env.path("o4")).len(), 2);
    assert_eq!(fs::read(env.path("o4/b.txt")).unwrap(), b"b4");
}

#[test]
fn an_ignore_file_with_exceptions() {
    let env = Env::new();
    let ctx = env.path("ctx");
    write(&ctx.join("src/lib.rs"), "lib", 0o644);
    write(&ctx.join("target/debug/app"), "binary", 0o755);
    write(&ctx.join("target/keep.txt"), "kept", 0o644);
    write(&ctx.join(".git/HEAD"), "ref", 0o644);
    write(&ctx.join("notes.log"), "log", 0o644);
    write(&ctx.join("important.log"), "log", 0o644);
    write(
        &ctx.join(".dockerignore"),
        "# build output\ntarget\n!target/keep.txt\n.git\n*.log\n!important.log\n",
        0o644,
    );
    let names = |dir: &Path| full_listing(dir).into_keys().collect::<Vec<_>>();
    let want = [
        ".dockerignore",
        "important.log",
        "src",
        "src/lib.rs",
        "target",
        "target/keep.txt",
    ];
    // By default .dockerignore at the root applies, to builds and fetches alike.
    let def = env.write(
        "def.toml",
        "version = 1\n[steps.ctx]\nsource = \"local://context\"\n[output]\nstep = \"ctx\"\n",
    );
    build_to(&env, &def, &ctx, &env.path("built"));
    assert_eq!(names(&env.path("built")), want);
    fetch_fresh(&env, &ctx, &env.path("fetched"), &[]);
    assert_eq!(names(&env.path("fetched")), want);
    // local.ignorefile names another file; "" turns ignore files off.
    write(&ctx.join("ci/ignore"), "*\n!src\n", 0o644);
    fetch_fresh(&env, &ctx, &env.path("ci"), &["local.ignorefile=ci/ignore"]);
    assert_eq!(names(&env.path("ci")), ["src", "src/lib.rs"]);
    fetch_fresh(&env, &ctx, &env.path("all"), &["local.ignorefile="]);
    assert!(names(&env.path("all")).contains(&".git/HEAD".to_string()));
    // A named file that is missing, or a bad pattern, is an error naming the file.
    let run = env.kiln([
        "source",
        "fetch",
        "local://context",
        "--local",
        &local_arg("context", &ctx),
        "--attr",
        "local.ignorefile=missing.ignore",
        "--dest",
        &env.path("x").display().to_string(),
    ]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("missing.ignore"), "{}", run.stderr);
    write(&ctx.join(".dockerignore"), "ok\n[broken\n", 0o644);
    let run = env.kiln([
        "source",
        "fetch",
        "local://context",
        "--local",
        &local_arg("context", &ctx),
        "--dest",
        &env.path("y").display().to_string(),
    ]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains(".dockerignore") && run.stderr.contains("[broken"),
        "{}",
        run.stderr
    );
    assert!(!env.path("y").exists() || fs::read_dir(env.path("y")).unwrap().next().is_none());
}
