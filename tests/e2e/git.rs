//! End-to-end tests of the git source: the real `kiln` binary and the real
//! `libkiln_source_git.so` against `git daemon` and smart HTTP (`git http-backend`
//! behind the small server of `kiln_tests::git_server`), both started on loopback.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::git_server::{git, GitDaemon, GitHttp, Repo};
use kiln_tests::{Env, Run};

/// A scratch kiln environment with a served directory and a work directory.
struct Fx {
    env: Env,
    served: PathBuf,
    work: PathBuf,
}

impl Fx {
    fn new() -> Self {
        let env = Env::new();
        let served = env.path("served");
        let work = env.path("work");
        std::fs::create_dir_all(&served).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        Self { env, served, work }
    }

    fn repo(&self, name: &str) -> Repo {
        Repo::new(&self.served, &self.work, name)
    }

    /// `kiln source resolve|fetch` of `url#fragment` (the remote given as
    /// `git.fullurl`, as BuildKit's `llb.Git` does).
    fn source(
        &self,
        cmd: &str,
        url: &str,
        fragment: &str,
        attrs: &[(&str, &str)],
        extra: &[&str],
    ) -> Run {
        let ident = identifier(url, fragment);
        let mut args: Vec<String> = vec![
            "--progress".into(),
            "plain".into(),
            "source".into(),
            cmd.into(),
            ident,
            "--json".into(),
            "--attr".into(),
            format!("git.fullurl={url}"),
        ];
        for (k, v) in attrs {
            args.push("--attr".into());
            args.push(format!("{k}={v}"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        self.env.kiln(&args)
    }

    fn resolve(&self, url: &str, fragment: &str, attrs: &[(&str, &str)]) -> Run {
        self.source("resolve", url, fragment, attrs, &[])
    }

    fn fetch(&self, url: &str, fragment: &str, attrs: &[(&str, &str)], dest: &str) -> Run {
        let d = self.env.path(dest).display().to_string();
        self.source("fetch", url, fragment, attrs, &["--dest", &d])
    }
}

/// `git://<host>/<path>[#fragment]` without scheme or credentials.
fn identifier(url: &str, fragment: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    if fragment.is_empty() {
        format!("git://{rest}")
    } else {
        format!("git://{rest}#{fragment}")
    }
}

/// Both output streams (errors are printed on stderr).
fn out(run: &Run) -> String {
    format!("{}{}", run.stdout, run.stderr)
}

#[track_caller]
fn key_pin(run: &Run) -> (String, String) {
    run.success();
    let v = run.json();
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["keys"][0]["done"], true, "{v}");
    (
        v["keys"][0]["key"].as_str().unwrap().to_string(),
        v["pin"].as_str().unwrap().to_string(),
    )
}

/// Sorted relative paths of every entry under `dir`.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                if let Ok(b) = std::fs::read(&p) {
                    if b.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                        hits.push(p);
                    }
                }
            }
        }
    }
    hits
}

/// The shared bare repositories the plugin keeps under the root.
fn shared_repos(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if p.file_name().is_some_and(|n| n == "repos") {
                    for r in std::fs::read_dir(&p).unwrap().flatten() {
                        if r.path().extension().is_some_and(|x| x == "git") {
                            found.push(r.path());
                        }
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    found
}

/// main: `a`; branch `feature`: + `f`; tags `lt` (lightweight, main) and `v1`
/// (annotated, feature); branch `same` (main) and tag `same` (feature).
struct Refs {
    main: String,
    feature: String,
    v1_tag: String,
}

fn standard_repo(fx: &Fx) -> Refs {
    let r = fx.repo("repo.git");
    r.write("a", "a\n");
    let main = r.commit("one");
    r.git(&["tag", "lt"]);
    r.git(&["branch", "same"]);
    r.git(&["checkout", "-q", "-b", "feature"]);
    r.write("f", "f\n");
    let feature = r.commit("two");
    r.git(&["tag", "-a", "v1", "-m", "release v1"]);
    r.git(&["tag", "same"]);
    r.git(&["checkout", "-q", "main"]);
    r.push();
    let v1_tag = git(&r.bare, &["rev-parse", "refs/tags/v1"]);
    assert_ne!(v1_tag, feature);
    Refs {
        main,
        feature,
        v1_tag,
    }
}

#[test]
fn daemon_refs_keys_and_pins() {
    let fx = Fx::new();
    let refs = standard_repo(&fx);
    let d = GitDaemon::start(&fx.served);
    let url = d.url("repo.git");

    // Default branch and the same branch by name: same key and pin = the commit.
    let def = key_pin(&fx.resolve(&url, "", &[]));
    assert_eq!(def, (refs.main.clone(), refs.main.clone()));
    assert_eq!(key_pin(&fx.resolve(&url, "main", &[])), def);
    let run = fx.fetch(&url, "", &[], "default");
    run.success();
    assert_eq!(run.json()["cached"], false);
    assert_eq!(tree(&fx.env.path("default")), ["a"]);

    // A branch.
    let f = key_pin(&fx.resolve(&url, "feature", &[]));
    assert_eq!(f, (refs.feature.clone(), refs.feature.clone()));
    fx.fetch(&url, "feature", &[], "feature").success();
    assert_eq!(tree(&fx.env.path("feature")), ["a", "f"]);

    // A lightweight tag: key = pin = commit.
    assert_eq!(
        key_pin(&fx.resolve(&url, "lt", &[])),
        (refs.main.clone(), refs.main.clone())
    );
    // An annotated tag: key = the commit, pin = the tag object.
    assert_eq!(
        key_pin(&fx.resolve(&url, "v1", &[])),
        (refs.feature.clone(), refs.v1_tag.clone())
    );
    fx.fetch(&url, "v1", &[], "v1").success();
    assert_eq!(tree(&fx.env.path("v1")), ["a", "f"]);
    // With .git: key = tag object + the full ref.
    assert_eq!(
        key_pin(&fx.resolve(&url, "v1", &[("git.keepgitdir", "true")])),
        (
            format!("{}.git#refs/tags/v1", refs.v1_tag),
            refs.v1_tag.clone()
        )
    );

    // A branch and a tag of one name: the branch wins; the tag by its full ref.
    assert_eq!(key_pin(&fx.resolve(&url, "same", &[])).0, refs.main);
    assert_eq!(
        key_pin(&fx.resolve(&url, "refs/tags/same", &[])).0,
        refs.feature
    );

    // Checksums: prefixes of the tag object or of the commit match.
    for sum in [&refs.v1_tag[..8], &refs.feature[..10], refs.v1_tag.as_str()] {
        let (k, p) = key_pin(&fx.resolve(&url, "v1", &[("git.checksum", sum)]));
        assert_eq!((k, p), (refs.feature.clone(), refs.v1_tag.clone()));
    }
    let bad = fx.resolve(&url, "v1", &[("git.checksum", "deadbeef")]);
    bad.expect_code(1);
    assert!(
        out(&bad).contains("expected checksum to match deadbeef"),
        "{}",
        out(&bad)
    );
    let bad = fx.fetch(&url, "main", &[("git.checksum", "0123abcd")], "bad");
    bad.expect_code(1);
    assert!(!fx.env.path("bad").join("a").exists());

    // A ref the remote does not have.
    let missing = fx.resolve(&url, "nope", &[]);
    missing.expect_code(1);
    assert!(
        out(&missing).contains("does not contain ref nope"),
        "{}",
        out(&missing)
    );
}

#[test]
fn full_sha_needs_no_network() {
    let fx = Fx::new();
    let refs = standard_repo(&fx);
    let mut d = GitDaemon::start(&fx.served);
    let url = d.url("repo.git");
    fx.fetch(&url, "feature", &[], "first").success();
    d.stop();

    // The daemon is gone: a branch cannot be resolved any more...
    fx.resolve(&url, "feature", &[]).expect_code(1);
    // ...but a full sha resolves without the network, and its objects are already in
    // the shared repository, so it is fetched without the network too.
    assert_eq!(
        key_pin(&fx.resolve(&url, &refs.feature, &[])),
        (refs.feature.clone(), refs.feature.clone())
    );
    let run = fx.fetch(&url, &refs.feature, &[("git.mtime", "commit")], "by-sha");
    run.success();
    assert_eq!(tree(&fx.env.path("by-sha")), ["a", "f"]);
    assert_eq!(
        run.json()["keys"][0]["key"],
        format!("{}(mtime=commit)", refs.feature)
    );
}

#[test]
fn keepgitdir_over_http_with_redacted_origin() {
    let fx = Fx::new();
    let refs = standard_repo(&fx);
    let h = GitHttp::start(&fx.served);
    let url = h
        .url("repo.git")
        .replace("http://", "http://alice:pw-s3cret@");

    let run = fx.fetch(&url, "main", &[("git.keepgitdir", "true")], "kept");
    let (key, pin) = key_pin(&run);
    assert_eq!(key, format!("{}.git#refs/heads/main", refs.main));
    assert_eq!(pin, refs.main);
    let kept = fx.env.path("kept");
    assert!(kept.join(".git").is_dir());
    assert_eq!(git(&kept, &["rev-parse", "HEAD"]), refs.main);
    assert_eq!(git(&kept, &["symbolic-ref", "HEAD"]), "refs/heads/main");
    assert_eq!(git(&kept, &["status", "--porcelain"]), "");
    let origin = git(&kept, &["remote", "get-url", "origin"]);
    assert_eq!(
        origin,
        format!("http://xxxxx:xxxxx@127.0.0.1:{}/repo.git", h.port())
    );

    // An annotated tag keeps its tag object.
    fx.fetch(&url, "v1", &[("git.keepgitdir", "true")], "kept-tag")
        .success();
    let kt = fx.env.path("kept-tag");
    assert_eq!(git(&kt, &["rev-parse", "refs/tags/v1"]), refs.v1_tag);
    assert_eq!(git(&kt, &["rev-parse", "HEAD"]), refs.feature);

    // The password is nowhere: not in the output, the checkout or the store.
    assert!(!out(&run).contains("pw-s3cret") && !run.stderr.contains("pw-s3cret"));
    assert_eq!(files_containing(&kept, "pw-s3cret"), Vec::<PathBuf>::new());
    assert_eq!(
        files_containing(&fx.env.root(), "pw-s3cret"),
        Vec::<PathBuf>::new()
    );
}

#[test]
fn subdir_and_symlinked_subdir() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("sub/x", "x\n")
        .write("sub/deeper/y", "y\n")
        .write("top", "t\n");
    std::os::unix::fs::symlink("sub", r.work.join("link")).unwrap();
    let c = r.commit("one");
    r.push();
    let d = GitDaemon::start(&fx.served);
    let url = d.url("repo.git");

    let run = fx.fetch(&url, "main:sub", &[], "sub");
    let (key, _) = key_pin(&run);
    assert_eq!(key, format!("{c}:sub"));
    assert_eq!(key.len(), 44);
    assert_eq!(tree(&fx.env.path("sub")), ["deeper", "deeper/y", "x"]);

    for (subdir, why) in [
        ("link", "symlink"),
        ("link/deeper", "symlink"),
        ("top", "not a directory"),
    ] {
        let dest = format!("bad-{}", subdir.replace('/', "-"));
        let run = fx.fetch(&url, &format!("main:{subdir}"), &[], &dest);
        assert_ne!(run.code, 0, "{subdir}: {run:?}");
        let msg = format!("{}{}", run.stdout, run.stderr);
        assert!(msg.contains(why), "{subdir}: {msg}");
        let p = fx.env.path(&dest);
        assert!(
            !p.exists() || tree(&p).is_empty(),
            "{subdir}: {:?}",
            tree(&p)
        );
    }
    let run = fx.fetch(&url, "main:nothere", &[], "nothere");
    assert_ne!(run.code, 0);
}

#[test]
fn submodules_and_file_submodules_refused() {
    let fx = Fx::new();
    let lib = fx.repo("lib.git");
    lib.write("libfile", "lib\n");
    lib.commit("lib");
    lib.push();
    let app = fx.repo("app.git");
    app.write("app", "app\n");
    let lib_bare = lib.bare.display().to_string();
    app.git(&["submodule", "add", "-q", &lib_bare, "vendor/lib"]);
    // A relative URL, resolved against the remote the app came from.
    app.git(&[
        "config",
        "-f",
        ".gitmodules",
        "submodule.vendor/lib.url",
        "../lib.git",
    ]);
    let c = app.commit("with submodule");
    app.push();
    let d = GitDaemon::start(&fx.served);
    let url = d.url("app.git");

    fx.fetch(&url, "main", &[], "with").success();
    let with = fx.env.path("with");
    assert_eq!(
        tree(&with),
        [
            ".gitmodules",
            "app",
            "vendor",
            "vendor/lib",
            "vendor/lib/libfile"
        ]
    );

    let run = fx.fetch(&url, "main", &[("git.skipsubmodules", "true")], "without");
    assert_eq!(key_pin(&run).0, format!("{c}(skip-submodules)"));
    assert_eq!(
        tree(&fx.env.path("without")),
        [".gitmodules", "app", "vendor", "vendor/lib"]
    );

    // A submodule on the local file system must never be read (CVE-2022-39253 class).
    let evil = fx.repo("evil.git");
    evil.write("e", "e\n");
    evil.git(&["submodule", "add", "-q", &lib_bare, "stolen"]);
    evil.git(&[
        "config",
        "-f",
        ".gitmodules",
        "submodule.stolen.url",
        &format!("file://{lib_bare}"),
    ]);
    evil.commit("file submodule");
    evil.push();
    let run = fx.fetch(&d.url("evil.git"), "main", &[], "evil");
    run.expect_code(1);
    assert!(out(&run).contains("'file' not allowed"), "{}", out(&run));
    assert!(!fx.env.path("evil/stolen/libfile").exists());

    // Nor may a submodule run a command through the ext:: transport.
    let marker = fx.env.path("ext-ran");
    let ext = fx.repo("ext.git");
    ext.write("e", "e\n");
    ext.git(&["submodule", "add", "-q", &lib_bare, "cmd"]);
    let cmd_url = format!("ext::sh -c touch% {}", marker.display());
    ext.git(&["config", "-f", ".gitmodules", "submodule.cmd.url", &cmd_url]);
    ext.commit("ext submodule");
    ext.push();
    let run = fx.fetch(&d.url("ext.git"), "main", &[], "ext");
    run.expect_code(1);
    assert!(out(&run).contains("'ext' not allowed"), "{}", out(&run));
    assert!(!marker.exists());
}

#[test]
fn mtime_commit_sets_every_path() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("d/e/f", "f\n").write("g", "g\n");
    std::os::unix::fs::symlink("g", r.work.join("l")).unwrap();
    r.commit("one");
    r.push();
    let t: i64 = r.git(&["log", "-1", "--format=%ct"]).parse().unwrap();
    let d = GitDaemon::start(&fx.served);
    fx.fetch(&d.url("repo.git"), "", &[("git.mtime", "commit")], "m")
        .success();
    let m = fx.env.path("m");
    let paths = tree(&m);
    assert_eq!(paths, ["d", "d/e", "d/e/f", "g", "l"]);
    for p in paths {
        let md = std::fs::symlink_metadata(m.join(&p)).unwrap();
        assert_eq!(md.mtime(), t, "{p}");
    }
    // Without the attribute, files keep the checkout time (made a second later than
    // the commit, so the two cannot match by chance).
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    while now() <= t {
        std::thread::sleep(Duration::from_millis(50));
    }
    fx.fetch(&d.url("repo.git"), "", &[], "n").success();
    assert_ne!(std::fs::metadata(fx.env.path("n/g")).unwrap().mtime(), t);
}

#[test]
fn ref_moving_between_key_and_snapshot_keeps_the_key_commit() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("old", "old\n");
    let old = r.commit("old");
    r.push();
    let h = GitHttp::start(&fx.served);
    let bare = r.bare.clone();
    let work = r.work.clone();
    let lists = std::sync::atomic::AtomicUsize::new(0);
    // The first ref listing is the key's ls-remote; before the fetch lists refs,
    // main moves to a new commit.
    h.on_request(move |seen| {
        if seen.method == "GET" && seen.target.contains("info/refs") {
            let n = lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if n == 1 {
                std::fs::write(work.join("new"), "new\n").unwrap();
                git(&work, &["add", "-A"]);
                git(&work, &["commit", "-q", "-m", "new"]);
                let b = bare.display().to_string();
                git(&work, &["push", "-q", "--force", &b, "main"]);
            }
        }
    });
    let run = fx.fetch(&h.url("repo.git"), "main", &[], "out");
    let (key, pin) = key_pin(&run);
    assert_eq!((key.as_str(), pin.as_str()), (old.as_str(), old.as_str()));
    assert_eq!(tree(&fx.env.path("out")), ["old"]);
    // It really moved.
    assert_ne!(git(&r.bare, &["rev-parse", "main"]), old);
    // A later job sees the new commit.
    fx.fetch(&h.url("repo.git"), "main", &[], "later").success();
    assert_eq!(tree(&fx.env.path("later")), ["new", "old"]);
}

fn b64(s: &str) -> String {
    kiln_tests::require_program("base64", "coreutils");
    let mut c = Command::new("base64")
        .arg("-w0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    String::from_utf8(c.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn token_reaches_the_server_and_never_the_output() {
    let fx = Fx::new();
    std::fs::create_dir_all(fx.served.join("private")).unwrap();
    let r = Repo::new(&fx.served.join("private"), &fx.work, "repo.git");
    r.write("secret-file", "s\n");
    let c = r.commit("one");
    r.push();
    let h = GitHttp::start(&fx.served);
    let token = "tok-9f8e7d6c5b4a";
    let header = format!("basic {}", b64(&format!("x-access-token:{token}")));
    h.protect("/private/", &header);
    let url = h.url("private/repo.git");

    // Without the secret: refused, and said so.
    let run = fx.fetch(&url, "main", &[], "none");
    run.expect_code(1);
    assert!(
        out(&run).contains("the remote wants credentials"),
        "{}",
        out(&run)
    );

    // The host-scoped secret name.
    let secret = format!(
        "id=GIT_AUTH_TOKEN.127.0.0.1:{},env=KILN_TEST_GIT_TOKEN",
        h.port()
    );
    let d = fx.env.path("with").display().to_string();
    let run: Run = fx
        .env
        .command()
        .env("KILN_TEST_GIT_TOKEN", token)
        .args([
            "--progress",
            "plain",
            "--log-level",
            "debug",
            "source",
            "fetch",
        ])
        .arg(identifier(&url, "main"))
        .args([
            "--attr",
            &format!("git.fullurl={url}"),
            "--json",
            "--secret",
            &secret,
            "--dest",
            &d,
        ])
        .output()
        .unwrap()
        .into();
    assert_eq!(key_pin(&run).1, c);
    assert_eq!(tree(&fx.env.path("with")), ["secret-file"]);
    assert!(h
        .requests()
        .iter()
        .any(|s| s.authorization.as_deref() == Some(header.as_str())));
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains(token), "{text}");
        assert!(!text.contains(&header), "{text}");
    }
    assert_eq!(
        files_containing(&fx.env.root(), token),
        Vec::<PathBuf>::new()
    );
    assert_eq!(
        files_containing(&fx.env.root(), &header),
        Vec::<PathBuf>::new()
    );

    // The plain secret name works too.
    let run: Run = fx
        .env
        .command()
        .env("KILN_TEST_GIT_TOKEN", token)
        .args(["source", "resolve"])
        .arg(identifier(&url, "main"))
        .args([
            "--attr",
            &format!("git.fullurl={url}"),
            "--json",
            "--secret",
            "id=GIT_AUTH_TOKEN,env=KILN_TEST_GIT_TOKEN",
        ])
        .output()
        .unwrap()
        .into();
    assert_eq!(key_pin(&run).0, c);
}

#[test]
fn dash_refs_are_refused() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("a", "a\n");
    let c = r.commit("one");
    r.push();
    let marker = fx.env.path("pwned");
    let evil_prog = fx.env.write(
        "evil.sh",
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&evil_prog, std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = GitDaemon::start(&fx.served);
    let url = d.url("repo.git");

    let inject = format!("--upload-pack={}", evil_prog.display());
    let run = fx.resolve(&url, &inject, &[]);
    run.expect_code(2);
    assert!(out(&run).contains("invalid git ref"), "{}", out(&run));

    // The remote's HEAD names a branch that reads as an option (git itself refuses to
    // create it, so the files are written directly).
    let evil = format!("refs/heads/--upload-pack={}", evil_prog.display());
    let ref_file = r.bare.join(&evil);
    std::fs::create_dir_all(ref_file.parent().unwrap()).unwrap();
    std::fs::write(&ref_file, format!("{c}\n")).unwrap();
    std::fs::write(r.bare.join("HEAD"), format!("ref: {evil}\n")).unwrap();
    let ls = git(&r.bare, &["ls-remote", "--symref", &url, "HEAD"]);
    assert!(ls.contains("--upload-pack="), "{ls}");
    let run = fx.fetch(&url, "", &[], "out");
    run.expect_code(1);
    assert!(out(&run).contains("invalid git ref"), "{}", out(&run));
    assert!(!fx.env.path("out/a").exists());
    assert!(!marker.exists());
}

#[test]
fn hooks_never_run() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("a", "a\n");
    r.commit("one");
    r.push();
    let d = GitDaemon::start(&fx.served);
    let url = d.url("repo.git");

    // A user configuration whose hooks would record that they ran.
    let marker = fx.env.path("hook-ran");
    let hooks = fx.env.path("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    for name in [
        "post-checkout",
        "reference-transaction",
        "post-merge",
        "fsmonitor-watchman",
    ] {
        let p = hooks.join(name);
        std::fs::write(
            &p,
            format!("#!/bin/sh\necho {name} >> '{}'\n", marker.display()),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let cfg = fx.env.write(
        "gitconfig",
        format!(
            "[core]\n\thooksPath = {0}\n[init]\n\ttemplateDir = {1}\n",
            hooks.display(),
            fx.env.path("tmpl").display()
        ),
    );
    std::fs::create_dir_all(fx.env.path("tmpl")).unwrap();
    std::os::unix::fs::symlink(&hooks, fx.env.path("tmpl/hooks")).unwrap();
    let home = fx.env.path("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::copy(&cfg, home.join(".gitconfig")).unwrap();

    // The hooks are real: a plain clone with this configuration runs them.
    let st = Command::new("git")
        .args(["clone", "-q", &url])
        .arg(fx.env.path("plain-clone"))
        .env("HOME", &home)
        .env("GIT_CONFIG_GLOBAL", &cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        marker.exists(),
        "the test's hooks did not run under plain git"
    );
    std::fs::remove_file(&marker).unwrap();

    for (dest, attrs) in [("plain", vec![]), ("kept", vec!["git.keepgitdir=true"])] {
        let mut c = fx.env.command();
        c.env("HOME", &home)
            .env("GIT_CONFIG_GLOBAL", &cfg)
            .env("GIT_TEMPLATE_DIR", fx.env.path("tmpl"))
            .args(["source", "fetch"])
            .arg(identifier(&url, "main"))
            .args(["--attr", &format!("git.fullurl={url}"), "--dest"])
            .arg(fx.env.path(dest));
        for a in attrs {
            c.args(["--attr", a]);
        }
        let run: Run = c.output().unwrap().into();
        run.success();
        assert!(fx.env.path(dest).join("a").is_file());
    }
    assert!(
        !marker.exists(),
        "a hook ran: {}",
        std::fs::read_to_string(&marker).unwrap_or_default()
    );
}

/// A repository with one big incompressible file, for slow fetches.
fn big_repo(fx: &Fx, mib: usize) -> String {
    let r = fx.repo("big.git");
    let mut x: u32 = 12345;
    let data: Vec<u8> = (0..mib * 1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    r.write("blob.bin", &data);
    r.write("small", "s\n");
    let c = r.commit("big");
    r.push();
    c
}

/// Pids of processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).contains(needle) {
                pids.push(pid);
            }
        }
    }
    pids
}

#[test]
fn kill_9_mid_fetch_then_clean_rerun() {
    let fx = Fx::new();
    let c = big_repo(&fx, 6);
    let h = GitHttp::start(&fx.served);
    h.throttle(20_000);
    let url = h.url("big.git");
    let mut child = fx
        .env
        .command()
        .args(["--progress", "quiet", "source", "fetch"])
        .arg(identifier(&url, "main"))
        .args(["--attr", &format!("git.fullurl={url}"), "--dest"])
        .arg(fx.env.path("first"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.sent() < 512 * 1024 {
        assert!(Instant::now() < deadline, "the fetch never started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "kiln ended before the kill"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // No git of the killed kiln keeps running.
    let root = fx.env.root().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "git processes outlived kiln: {:?}",
            processes_mentioning(&root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    h.throttle(0);
    let run = fx.fetch(&url, "main", &[], "second");
    assert_eq!(key_pin(&run).0, c);
    assert_eq!(tree(&fx.env.path("second")), ["blob.bin", "small"]);
    assert_eq!(
        std::fs::metadata(fx.env.path("second/blob.bin"))
            .unwrap()
            .len(),
        6 * 1024 * 1024
    );
    assert_eq!(shared_repos(&fx.env.root()).len(), 1);
}

#[test]
fn two_processes_fetch_one_remote_at_once() {
    let fx = Fx::new();
    let c = big_repo(&fx, 2);
    let h = GitHttp::start(&fx.served);
    h.throttle(2_000);
    let url = h.url("big.git");
    let spawn = |dest: &str| {
        fx.env
            .command()
            .args(["--progress", "quiet", "source", "fetch"])
            .arg(identifier(&url, "main"))
            .args(["--attr", &format!("git.fullurl={url}"), "--json", "--dest"])
            .arg(fx.env.path(dest))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("a");
    let b = spawn("b");
    for child in [a, b] {
        let run: Run = child.wait_with_output().unwrap().into();
        assert_eq!(key_pin(&run).0, c);
    }
    for dest in ["a", "b"] {
        assert_eq!(tree(&fx.env.path(dest)), ["blob.bin", "small"]);
    }
    assert_eq!(shared_repos(&fx.env.root()).len(), 1);
    // The pack crossed the wire once: the second process found the objects present.
    let fetches = h.requests().iter().filter(|s| s.is_fetch()).count();
    assert_eq!(
        fetches,
        1,
        "{:#?}",
        h.requests().iter().map(|s| &s.target).collect::<Vec<_>>()
    );
}

#[test]
fn build_with_a_git_step_is_cached_on_rebuild() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("src/main.c", "int main(void) { return 0; }\n");
    let c = r.commit("one");
    r.push();
    let h = GitHttp::start(&fx.served);
    let url = h.url("repo.git");
    let def = fx.env.write(
        "proj/kiln.build.toml",
        format!(
            r#"version = 1
[steps.src]
source = "{}"
attrs = {{ "git.fullurl" = "{url}" }}
[steps.out]
base = "scratch"
actions = [{{ copy = {{ from = "src", src = "/src", dest = "/code" }} }}]
[output]
step = "out"
"#,
            identifier(&url, "main")
        ),
    );
    let build = |dest: &str| -> Run {
        let out = format!("type=local,dest={}", fx.env.path(dest).display());
        let meta = fx.env.path(&format!("{dest}.json"));
        fx.env.kiln([
            "--progress".to_string(),
            "json".into(),
            "build".into(),
            def.display().to_string(),
            "--output".into(),
            out,
            "--metadata-file".into(),
            meta.display().to_string(),
        ])
    };
    let first = build("out1");
    first.success();
    // The fetch and the checkout report progress with counts.
    let progress: Vec<serde_json::Value> = first
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["step"] == "src" && v["event"] == "progress")
        .collect();
    assert!(
        progress
            .iter()
            .any(|v| v["total"].as_u64().unwrap_or(0) > 0),
        "{}",
        first.stderr
    );
    assert_eq!(
        std::fs::read_to_string(fx.env.path("out1/code/main.c")).unwrap(),
        "int main(void) { return 0; }\n"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.env.path("out1.json")).unwrap()).unwrap();
    let src = &meta["sources"][0];
    assert_eq!(src["pin"], c.as_str(), "{meta}");
    assert_eq!(src["commit"], c.as_str(), "{meta}");
    assert_eq!(src["ref"], "refs/heads/main", "{meta}");
    assert_eq!(src["remote"], url.as_str(), "{meta}");
    assert!(h.requests().iter().any(|s| s.is_fetch()));

    h.reset();
    let run = build("out2");
    run.success();
    let cached = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|v| v["step"] == "src" && v["event"] == "cached");
    assert!(cached, "{}", run.stderr);
    let reqs = h.requests();
    assert!(
        !reqs.is_empty(),
        "the rebuild must ask the remote where main is"
    );
    assert!(
        !reqs.iter().any(|s| s.is_fetch()),
        "the rebuild fetched: {:#?}",
        reqs.iter().map(|s| &s.target).collect::<Vec<_>>()
    );
    assert!(fx.env.path("out2/code/main.c").is_file());
    // A cached build records the same remote, ref and commit.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.env.path("out2.json")).unwrap()).unwrap();
    assert_eq!(meta["sources"][0]["commit"], c.as_str(), "{meta}");
    assert_eq!(meta["sources"][0]["ref"], "refs/heads/main", "{meta}");
}

/// Spawns `kiln source fetch` of `url#main` into `dest` with extra global args.
fn spawn_fetch(fx: &Fx, url: &str, dest: &str, global: &[&str]) -> std::process::Child {
    fx.env
        .command()
        .args(global)
        .args(["--progress", "plain", "source", "fetch"])
        .arg(identifier(url, "main"))
        .args(["--attr", &format!("git.fullurl={url}"), "--dest"])
        .arg(fx.env.path(dest))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until no process mentions the root (the git children are gone).
#[track_caller]
fn no_git_left(fx: &Fx) {
    let root = fx.env.root().display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_mentioning(&root).is_empty() {
        assert!(
            Instant::now() < deadline,
            "processes outlived kiln: {:?}",
            processes_mentioning(&root)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigint_mid_fetch_cancels_and_kills_git() {
    let fx = Fx::new();
    big_repo(&fx, 4);
    let h = GitHttp::start(&fx.served);
    h.throttle(20_000);
    let url = h.url("big.git");
    let child = spawn_fetch(&fx, &url, "out", &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while h.sent() < 256 * 1024 {
        assert!(Instant::now() < deadline, "the fetch never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signals the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let output = child.wait_with_output().unwrap();
    // 130 once the host turns SIGINT into a cancel; today it may still die of it.
    use std::os::unix::process::ExitStatusExt;
    assert!(
        output.status.code() == Some(130) || output.status.signal() == Some(libc::SIGINT),
        "{:?}",
        output.status
    );
    no_git_left(&fx);
    assert!(!fx.env.path("out/blob.bin").exists());
}

#[test]
fn the_timeout_from_the_config_kills_a_slow_fetch() {
    let fx = Fx::new();
    big_repo(&fx, 4);
    let h = GitHttp::start(&fx.served);
    h.throttle(50_000);
    let url = h.url("big.git");
    let so = kiln_tests::plugin_file("kiln_source_git");
    let cfg = fx.env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.source.v1.git\"]\npath = {:?}\n\
             [plugins.\"io.kiln.source.v1.git\".config]\ntimeout_secs = 2\n",
            so.display().to_string()
        ),
    );
    let cfg = cfg.display().to_string();
    let run: Run = spawn_fetch(&fx, &url, "out", &["--config", &cfg])
        .wait_with_output()
        .unwrap()
        .into();
    run.expect_code(1);
    assert!(out(&run).contains("timed out after 2 s"), "{}", out(&run));
    no_git_left(&fx);

    // A bad configuration is refused by name.
    std::fs::write(
        &cfg,
        format!(
            "version = 1\nrequired_plugins = [\"io.kiln.source.v1.git\"]\n\
             [plugins.\"io.kiln.source.v1.git\"]\npath = {:?}\n\
             [plugins.\"io.kiln.source.v1.git\".config]\ndepth = 3\n",
            so.display().to_string()
        ),
    )
    .unwrap();
    let run = fx.env.kiln(["--config", &cfg, "plugins", "list", "--json"]);
    assert!(out(&run).contains("depth"), "{}", out(&run));
}

#[test]
fn credentials_in_a_failing_url_are_redacted() {
    let fx = Fx::new();
    let port = kiln_tests::free_port();
    let url = format!("https://user:keepthissecret@127.0.0.1:{port}/x.git");
    let run = fx.resolve(&url, "main", &[]);
    run.expect_code(1);
    assert!(!out(&run).contains("keepthissecret"), "{}", out(&run));
    assert!(out(&run).contains("xxxxx:xxxxx@127.0.0.1"), "{}", out(&run));
}

fn sha256_hex(data: &[u8]) -> String {
    kiln_tests::require_program("sha256sum", "coreutils");
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(data).unwrap();
    let out = c.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn lfs_files_are_smudged_or_reported() {
    kiln_tests::require_program("git-lfs", "git-lfs");
    let fx = Fx::new();
    let content = b"large binary content\n".repeat(1000);
    let oid = sha256_hex(&content);
    let pointer = format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {}\n",
        content.len()
    );
    let r = fx.repo("repo.git");
    r.write(
        ".gitattributes",
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .write("data/big.bin", &pointer)
    .write("plain.txt", "plain\n");
    r.commit("lfs");
    r.push();
    let h = GitHttp::start(&fx.served);
    h.add_lfs_object(&oid, content.clone());
    let url = h.url("repo.git");

    for (dest, attrs) in [
        ("plain", vec![]),
        ("kept", vec![("git.keepgitdir", "true")]),
    ] {
        fx.fetch(&url, "main", &attrs, dest).success();
        let got = std::fs::read(fx.env.path(dest).join("data/big.bin")).unwrap();
        assert!(
            got == content,
            "{dest}: {:?}",
            String::from_utf8_lossy(&got[..80.min(got.len())])
        );
    }
    assert!(fx.env.path("kept/.git/lfs/objects").is_dir());

    // Without git-lfs on PATH (and a fresh root, so nothing is cached): the pointer
    // stays, and the log says why.
    let fresh = Env::new();
    let bin = fx.env.path("bin-without-lfs");
    std::fs::create_dir_all(&bin).unwrap();
    let git_path = kiln_tests::require_program("git", "git");
    std::os::unix::fs::symlink(git_path, bin.join("git")).unwrap();
    let d = fx.env.path("nolfs").display().to_string();
    let run: Run = fresh
        .command()
        .env("PATH", &bin)
        .args(["source", "fetch"])
        .arg(identifier(&url, "main"))
        .args(["--attr", &format!("git.fullurl={url}"), "--dest", &d])
        .output()
        .unwrap()
        .into();
    run.success();
    let got = std::fs::read_to_string(fx.env.path("nolfs/data/big.bin")).unwrap();
    assert!(got == pointer, "{} bytes instead of the pointer", got.len());
    assert!(
        out(&run).contains("git-lfs is not installed"),
        "{}",
        out(&run)
    );
}

#[test]
fn without_git_the_plugin_is_skipped_with_the_reason() {
    let env = Env::new();
    let empty = env.path("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let run: Run = env
        .command()
        .env("PATH", &empty)
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap()
        .into();
    run.success();
    let list = run.json();
    let git = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "io.kiln.source.v1.git")
        .unwrap_or_else(|| panic!("{list}"))
        .clone();
    assert_eq!(git["status"], "skipped", "{git}");
    assert!(
        git["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("apt-get install git"),
        "{git}"
    );
}

#[test]
fn one_build_resolves_a_ref_once_even_if_it_moves() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("a/x", "old-a\n").write("b/y", "old-b\n");
    let old = r.commit("old");
    r.push();
    let h = GitHttp::start(&fx.served);
    let url = h.url("repo.git");
    let (bare, work) = (r.bare.clone(), r.work.clone());
    let lists = std::sync::atomic::AtomicUsize::new(0);
    // main moves right after the first ref listing of the build.
    h.on_request(move |seen| {
        if seen.method == "GET"
            && seen.target.contains("info/refs")
            && lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 1
        {
            std::fs::write(work.join("a/x"), "new-a\n").unwrap();
            std::fs::write(work.join("b/y"), "new-b\n").unwrap();
            git(&work, &["commit", "-qam", "new"]);
            let b = bare.display().to_string();
            git(&work, &["push", "-q", "--force", &b, "main"]);
        }
    });
    let def = fx.env.write(
        "proj/kiln.build.toml",
        format!(
            r#"version = 1
[steps.a]
source = "{}"
attrs = {{ "git.fullurl" = "{url}" }}
[steps.b]
source = "{}"
attrs = {{ "git.fullurl" = "{url}" }}
[steps.all]
merge = ["a", "b"]
[output]
step = "all"
"#,
            identifier(&url, "main:a"),
            identifier(&url, "main:b")
        ),
    );
    let meta = fx.env.path("meta.json");
    let run = fx.env.kiln([
        "build".to_string(),
        def.display().to_string(),
        "--output".into(),
        format!("type=local,dest={}", fx.env.path("out").display()),
        "--metadata-file".into(),
        meta.display().to_string(),
    ]);
    run.success();
    assert_eq!(
        std::fs::read_to_string(fx.env.path("out/x")).unwrap(),
        "old-a\n"
    );
    assert_eq!(
        std::fs::read_to_string(fx.env.path("out/y")).unwrap(),
        "old-b\n"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(meta).unwrap()).unwrap();
    for s in meta["sources"].as_array().unwrap() {
        assert_eq!(s["pin"], old.as_str(), "{meta}");
    }
    assert_ne!(
        git(&r.bare, &["rev-parse", "main"]),
        old,
        "main moved during the build"
    );
}

#[test]
fn ssh_through_the_forwarded_agent_with_known_hosts() {
    let fx = Fx::new();
    let r = fx.repo("repo.git");
    r.write("over-ssh", "s\n");
    let c = r.commit("one");
    r.push();
    let ssh = kiln_tests::git_server::SshServer::start(&fx.env.path("ssh"));
    let url = ssh.url(&r.bare);
    let known = ssh.known_host.clone();
    let sock = format!("default={}", ssh.agent_socket.display());
    let fetch = |dest: &str, extra: &[&str]| -> Run {
        let d = fx.env.path(dest).display().to_string();
        let mut args = vec!["--dest", d.as_str()];
        args.extend_from_slice(extra);
        fx.source("fetch", &url, "main", &[], &args)
    };

    // With the agent and the server's host key.
    let hosts = format!("git.knownsshhosts={known}");
    let run = fetch("ok", &["--ssh", &sock, "--attr", &hosts]);
    assert_eq!(key_pin(&run), (c.clone(), c.clone()));
    assert_eq!(tree(&fx.env.path("ok")), ["over-ssh"]);

    // A wrong host key is refused.
    let wrong = known.rsplit_once(' ').unwrap().0.to_string()
        + " AAAAC3NzaC1lZDI1NTE5AAAAIHd1cm9uZ2tleXdyb25na2V5d3JvbmdrZXl3cm9uZ2s=";
    let bad_hosts = format!("git.knownsshhosts={wrong}");
    let run = fx.source(
        "resolve",
        &url,
        "main",
        &[],
        &["--ssh", &sock, "--attr", &bad_hosts],
    );
    run.expect_code(1);
    assert!(
        out(&run).to_lowercase().contains("host key"),
        "{}",
        out(&run)
    );

    // Without the agent, the server refuses the login.
    let run = fx.source("resolve", &url, "main", &[], &["--attr", &hosts]);
    run.expect_code(1);
    assert!(out(&run).contains("Permission denied"), "{}", out(&run));
}

/// A kiln.toml loading the git plugin with `allow_file_remotes` set as given (or left
/// out), and the `--config` arguments naming it.
fn file_remote_config(fx: &Fx, allow: Option<bool>) -> [String; 2] {
    let so = kiln_tests::plugin_file("kiln_source_git");
    let mut toml = format!(
        "version = 1\nrequired_plugins = [\"io.kiln.source.v1.git\"]\n\
         [plugins.\"io.kiln.source.v1.git\"]\npath = {:?}\n",
        so.display().to_string()
    );
    if let Some(allow) = allow {
        toml.push_str(&format!(
            "[plugins.\"io.kiln.source.v1.git\".config]\nallow_file_remotes = {allow}\n"
        ));
    }
    let name = format!("kiln-file-{allow:?}.toml");
    let cfg = fx.env.write(&name, toml);
    ["--config".into(), cfg.display().to_string()]
}

/// `kiln source CMD` of the local repository `bare` through `git.fullurl=file://…`,
/// with the canonical identifier `git://localhost<path>`.
fn file_source(
    fx: &Fx,
    cfg: &[String],
    cmd: &str,
    bare: &Path,
    fragment: &str,
    attrs: &[(&str, &str)],
    dest: Option<&str>,
) -> Run {
    let mut args: Vec<String> = cfg.to_vec();
    args.extend(["--progress", "plain", "source", cmd].map(String::from));
    args.push(format!("git://localhost{}#{fragment}", bare.display()));
    args.extend(["--json".into(), "--attr".into()]);
    args.push(format!("git.fullurl=file://{}", bare.display()));
    for (k, v) in attrs {
        args.push("--attr".into());
        args.push(format!("{k}={v}"));
    }
    if let Some(d) = dest {
        args.push("--dest".into());
        args.push(fx.env.path(d).display().to_string());
    }
    fx.env.kiln(&args)
}

#[test]
fn file_remotes_are_refused_unless_the_config_allows_them() {
    let fx = Fx::new();
    standard_repo(&fx);
    let bare = fx.served.join("repo.git");
    let file_url = format!("file://{}", bare.display());
    let want = format!(
        "git://localhost{}#main: file:// remotes ({file_url}) are disabled; set \
         allow_file_remotes = true in [plugins.\"io.kiln.source.v1.git\".config] of \
         kiln.toml to allow them",
        bare.display()
    );
    // Without a config table, and with the switch written off.
    for cfg in [
        file_remote_config(&fx, None),
        file_remote_config(&fx, Some(false)),
    ] {
        let run = file_source(&fx, &cfg, "fetch", &bare, "main", &[], Some("out"));
        run.expect_code(1);
        assert!(out(&run).contains(&want), "{}", out(&run));
        assert!(!fx.env.path("out").exists());
        assert_eq!(shared_repos(&fx.env.root()), Vec::<PathBuf>::new());
    }
    // The URL given as the identifier itself is refused the same way.
    let cfg = file_remote_config(&fx, None);
    let mut args = cfg.to_vec();
    args.extend(["source", "resolve", &format!("git://{file_url}#main")].map(String::from));
    let run = fx.env.kiln(&args);
    run.expect_code(1);
    assert!(
        out(&run).contains("allow_file_remotes = true"),
        "{}",
        out(&run)
    );
    // Other non-network spellings never reach git either.
    let run = fx.env.kiln([
        cfg[0].as_str(),
        cfg[1].as_str(),
        "source",
        "resolve",
        "git://localhost/x.git",
        "--attr",
        "git.fullurl=file://elsewhere/x.git",
    ]);
    run.expect_code(2);
    assert!(
        out(&run).contains("the host must be empty or localhost"),
        "{}",
        out(&run)
    );
}

#[test]
fn allowed_file_remotes_fetch_with_the_keys_of_any_transport() {
    let fx = Fx::new();
    let refs = standard_repo(&fx);
    let bare = fx.served.join("repo.git");
    let cfg = file_remote_config(&fx, Some(true));
    let d = GitDaemon::start(&fx.served);
    let daemon = d.url("repo.git");

    // Keys and pins are those of the same repository over git daemon: the remote (and
    // so the local path) is never in them.
    for (fragment, attrs, key, pin) in [
        ("main", &[][..], refs.main.clone(), refs.main.clone()),
        ("", &[][..], refs.main.clone(), refs.main.clone()),
        ("v1", &[][..], refs.feature.clone(), refs.v1_tag.clone()),
        (
            "feature:",
            &[("git.keepgitdir", "true")][..],
            format!("{}.git#refs/heads/feature", refs.feature),
            refs.feature.clone(),
        ),
    ] {
        let run = file_source(&fx, &cfg, "resolve", &bare, fragment, attrs, None);
        assert_eq!(key_pin(&run), (key.clone(), pin.clone()), "{fragment}");
        let over_daemon = fx.resolve(&daemon, fragment, attrs);
        assert_eq!(
            key_pin(&over_daemon),
            (key, pin),
            "{fragment} over git daemon"
        );
    }

    let run = file_source(&fx, &cfg, "fetch", &bare, "feature", &[], Some("out"));
    assert_eq!(key_pin(&run).0, refs.feature);
    assert_eq!(tree(&fx.env.path("out")), ["a", "f"]);
    // One shared repository, for the file remote (resolving fetched nothing).
    assert_eq!(shared_repos(&fx.env.root()).len(), 1);

    // keepgitdir: origin is the file remote.
    let run = file_source(
        &fx,
        &cfg,
        "fetch",
        &bare,
        "main",
        &[("git.keepgitdir", "true")],
        Some("kept"),
    );
    run.success();
    let kept = fx.env.path("kept");
    assert_eq!(git(&kept, &["rev-parse", "HEAD"]), refs.main);
    assert_eq!(
        git(&kept, &["remote", "get-url", "origin"]),
        format!("file://{}", bare.display())
    );

    // A new commit on the local remote is seen by the next resolve and fetch.
    let r = Repo::new(&fx.served, &fx.work, "repo.git");
    r.write("b", "b\n");
    let next = r.commit("three");
    r.push();
    let run = file_source(&fx, &cfg, "fetch", &bare, "main", &[], Some("next"));
    assert_eq!(key_pin(&run).0, next);
    assert_eq!(tree(&fx.env.path("next")), ["a", "b"]);
}

#[test]
fn file_submodules_are_read_only_below_an_allowed_file_remote() {
    let fx = Fx::new();
    let lib = fx.repo("lib.git");
    lib.write("libfile", "lib\n");
    lib.commit("lib");
    lib.push();
    let lib_url = format!("file://{}", lib.bare.display());
    let app = fx.repo("app.git");
    app.write("app", "app\n");
    app.git(&[
        "submodule",
        "add",
        "-q",
        &lib.bare.display().to_string(),
        "vendor/lib",
    ]);
    app.git(&[
        "config",
        "-f",
        ".gitmodules",
        "submodule.vendor/lib.url",
        &lib_url,
    ]);
    app.commit("file submodule");
    app.push();
    let cfg = file_remote_config(&fx, Some(true));

    // Served over the network, the repository must not make kiln read the local file
    // system, whatever the switch says. (Run first: once the local fetch below has
    // cached the commit, the same key would be a cache hit.)
    let d = GitDaemon::start(&fx.served);
    let url = d.url("app.git");
    let ident = identifier(&url, "main");
    let dest = fx.env.path("remote").display().to_string();
    let run = fx.env.kiln(
        [
            cfg[0].as_str(),
            &cfg[1],
            "source",
            "fetch",
            &ident,
            "--attr",
            &format!("git.fullurl={url}"),
            "--dest",
            &dest,
        ]
        .as_slice(),
    );
    run.expect_code(1);
    assert!(out(&run).contains("'file' not allowed"), "{}", out(&run));
    assert!(!fx.env.path("remote/vendor/lib/libfile").exists());

    // Below a local remote the operator allowed, its local submodule is read.
    let run = file_source(&fx, &cfg, "fetch", &app.bare, "main", &[], Some("local"));
    run.success();
    assert_eq!(
        tree(&fx.env.path("local")),
        [
            ".gitmodules",
            "app",
            "vendor",
            "vendor/lib",
            "vendor/lib/libfile"
        ]
    );
}
