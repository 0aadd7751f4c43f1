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
