//! `kiln build` end to end: the real binary, the real local plugin, real directories.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::{Env, Run};

/// The `(step, event)` pairs of `--progress json` output, in order.
fn events(run: &Run) -> Vec<(String, String)> {
    run.stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("event").is_some() && v.get("step").is_some())
        .map(|v| {
            (
                v["step"].as_str().unwrap_or_default().to_string(),
                v["event"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The final state of each step: "cached", "done" or "error".
fn outcome(run: &Run) -> BTreeMap<String, String> {
    events(run)
        .into_iter()
        .filter(|(_, e)| matches!(e.as_str(), "cached" | "done" | "error"))
        .collect()
}

/// Steps that started executing.
fn started(run: &Run) -> Vec<String> {
    events(run)
        .into_iter()
        .filter(|(_, e)| e == "start")
        .map(|(s, _)| s)
        .collect()
}

fn build(env: &Env, def: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "--progress".into(),
        "json".into(),
        "build".into(),
        def.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    env.kiln(&args)
}

/// A context folder and a definition that copies `/src` out of it.
fn project(env: &Env) -> PathBuf {
    env.write("proj/ctx/src/main.rs", "fn main() {}\n");
    env.write("proj/ctx/src/lib/util.rs", "pub fn util() {}\n");
    env.write("proj/ctx/README.md", "not selected by any step\n");
    env.write(
        "proj/kiln.build.toml",
        r#"
version = 1
[steps.ctx]
source = "local://context"
[steps.app]
base = "scratch"
actions = [
  { copy = { from = "ctx", src = "/src", dest = "/app/src" } },
  { mkdir = { path = "/app/bin", mode = "0755", parents = true } },
  { mkfile = { path = "/app/VERSION", data = "1.0\n", mode = "0644" } },
]
[steps.bin]
base = "app"
actions = [{ symlink = { target = "/app/src/main.rs", path = "/app/bin/main" } }]
[steps.etc]
base = "scratch"
actions = [
  { mkdir = { path = "/etc" } },
  { mkfile = { path = "/etc/motd", data = "hello\n" } },
]
[steps.all]
merge = ["bin", "etc"]
[output]
step = "all"
"#,
    )
}

fn ctx_arg(env: &Env) -> String {
    format!("context={}", env.path("proj/ctx").display())
}

/// Every file of a tree with its content (symlinks as `-> target`), for comparisons.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.insert(
                    rel,
                    format!("-> {}", std::fs::read_link(&p).unwrap().display()),
                );
            } else if ft.is_dir() {
                out.insert(rel.clone() + "/", String::new());
                walk(root, &p, out);
            } else {
                out.insert(
                    rel,
                    std::fs::read_to_string(&p).unwrap_or_else(|_| "<binary>".into()),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn a_second_build_executes_nothing() {
    let env = Env::new();
    let def = project(&env);
    let out1 = env.path("out1");
    let local = ctx_arg(&env);
    let dest1 = format!("type=local,dest={}", out1.display());
    let r1 = build(&env, &def, &["--local", &local, "--output", &dest1]);
    r1.success();
    let o1 = outcome(&r1);
    assert_eq!(o1.len(), 5, "{o1:?}\n{}", r1.stderr);
    assert!(o1.values().all(|e| e == "done"), "{o1:?}");
    assert_eq!(
        std::fs::read_to_string(out1.join("app/src/main.rs")).unwrap(),
        "fn main() {}\n"
    );
    assert_eq!(
        std::fs::read_to_string(out1.join("etc/motd")).unwrap(),
        "hello\n"
    );
    assert_eq!(
        std::fs::read_link(out1.join("app/bin/main")).unwrap(),
        PathBuf::from("/app/src/main.rs")
    );
    assert!(!out1.join("README.md").exists());

    let out2 = env.path("out2");
    let dest2 = format!("type=local,dest={}", out2.display());
    let r2 = build(&env, &def, &["--local", &local, "--output", &dest2]);
    r2.success();
    let o2 = outcome(&r2);
    assert_eq!(o2.len(), 5, "{o2:?}");
    assert!(
        o2.values().all(|e| e == "cached"),
        "every step cached: {o2:?}\n{}",
        r2.stderr
    );
    assert!(
        started(&r2).is_empty(),
        "nothing executed: {:?}",
        started(&r2)
    );
    assert_eq!(tree(&out1), tree(&out2));

    // --no-cache runs every step again.
    let r3 = build(&env, &def, &["--local", &local, "--no-cache"]);
    r3.success();
    assert!(
        outcome(&r3).values().all(|e| e == "done"),
        "{:?}",
        outcome(&r3)
    );
}

#[test]
fn only_steps_downstream_of_a_selected_edit_run_again() {
    let env = Env::new();
    let def = project(&env);
    let local = ctx_arg(&env);
    build(&env, &def, &["--local", &local]).success();

    // An edit outside /src: the context is re-read, every step stays cached.
    env.write("proj/ctx/README.md", "edited, still not selected\n");
    env.write("proj/ctx/notes/new.txt", "a new unselected file\n");
    let r = build(&env, &def, &["--local", &local]);
    r.success();
    let o = outcome(&r);
    for step in ["app", "bin", "etc", "all"] {
        assert_eq!(
            o[step], "cached",
            "{step} after an unselected edit: {o:?}\n{}",
            r.stderr
        );
    }
    assert_eq!(o["ctx"], "done", "the context changed: {o:?}");

    // An edit inside /src re-runs exactly the steps downstream of it.
    env.write("proj/ctx/src/lib/util.rs", "pub fn util() { /* v2 */ }\n");
    let out = env.path("out");
    let dest = format!("type=local,dest={}", out.display());
    let r = build(&env, &def, &["--local", &local, "--output", &dest]);
    r.success();
    let o = outcome(&r);
    let mut ran = started(&r);
    ran.sort();
    assert_eq!(ran, ["all", "app", "bin", "ctx"], "{o:?}");
    assert_eq!(o["etc"], "cached");
    assert_eq!(
        std::fs::read_to_string(out.join("app/src/lib/util.rs")).unwrap(),
        "pub fn util() { /* v2 */ }\n"
    );
}

#[test]
fn the_context_defaults_to_the_definition_folder_and_metadata_names_sources() {
    let env = Env::new();
    env.write("site/index.html", "<h1>hi</h1>\n");
    let def = env.write(
        "site/kiln.build.toml",
        r#"
version = 1
[steps.ctx]
source = "local://context"
[steps.page]
base = "scratch"
actions = [{ copy = { from = "ctx", src = "/index.html", dest = "/www/index.html" } }]
[output]
step = "page"
"#,
    );
    let meta = env.path("meta.json");
    let tar = env.path("out.tar");
    let r = build(
        &env,
        &def,
        &[
            "--metadata-file",
            meta.to_str().unwrap(),
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    );
    r.success();
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let sources = m["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{m}");
    assert_eq!(sources[0]["identifier"], "local://context");
    assert!(
        sources[0].get("pin").is_none(),
        "local sources record no pin: {m}"
    );
    let digest = m["exported"][0].as_str().unwrap();
    assert!(digest.starts_with("sha256:"), "{m}");
    assert!(std::fs::metadata(&tar).unwrap().len() > 0);
}

#[test]
fn two_processes_at_once_make_each_snapshot_once() {
    let env = Env::new();
    let def = project(&env);
    let local = ctx_arg(&env);
    let spawn = || {
        env.command()
            .args(["--progress", "json", "build"])
            .arg(&def)
            .args(["--local", &local])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kiln")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b): (Run, Run) = (
        a.wait_with_output().unwrap().into(),
        b.wait_with_output().unwrap().into(),
    );
    a.success();
    b.success();
    // Five distinct vertices: five snapshots, whichever process made each.
    let snaps = std::fs::read_dir(env.root().join("snapshots"))
        .unwrap()
        .count();
    assert_eq!(snaps, 5, "\nA:\n{}\nB:\n{}", a.stderr, b.stderr);
    let made = started(&a).len() + started(&b).len();
    assert!(
        made >= 4,
        "every op step ran in one of the two: A {:?} B {:?}",
        started(&a),
        started(&b)
    );
}

#[test]
fn kill_9_at_random_points_then_rerun_gives_the_same_output() {
    let env = Env::new();
    // A bigger context and more steps, so kills land in every phase.
    for i in 0..80 {
        env.write(
            &format!("big/ctx/src/f{i:03}.txt"),
            format!("{i}\n").repeat(500),
        );
    }
    let mut text = String::from("version = 1\n[steps.ctx]\nsource = \"local://context\"\n");
    for i in 0..12 {
        text += &format!(
            "[steps.s{i}]\nbase = \"{}\"\nactions = [{{ copy = {{ from = \"ctx\", src = \"/src\", dest = \"/d{i}\" }} }}, {{ mkfile = {{ path = \"/m{i}\", data = \"{i}\" }} }}]\n",
            if i == 0 { "scratch".to_string() } else { format!("s{}", i - 1) }
        );
    }
    text += "[output]\nstep = \"s11\"\n";
    let def = env.write("big/kiln.build.toml", &text);
    let local = format!("context={}", env.path("big/ctx").display());

    // The reference: an undisturbed build in a root of its own.
    let reference = Env::new();
    let ref_out = reference.path("out");
    let t0 = Instant::now();
    reference
        .kiln([
            "build",
            def.to_str().unwrap(),
            "--local",
            &local,
            "--output",
            &format!("type=local,dest={}", ref_out.display()),
        ])
        .success();
    let full = t0.elapsed().max(Duration::from_millis(50));
    let want = tree(&ref_out);

    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill -9 seed {seed}");
    for round in 0..6 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_micros(seed % (full.as_micros() as u64));
        let mut child = env
            .command()
            .args(["--progress", "quiet", "build"])
            .arg(&def)
            .args(["--local", &local])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let out = env.path(&format!("out{round}"));
        let r = env.kiln([
            "build",
            def.to_str().unwrap(),
            "--local",
            &local,
            "--output",
            &format!("type=local,dest={}", out.display()),
        ]);
        r.success();
        assert_eq!(tree(&out), want, "round {round}, killed after {delay:?}");
    }
    env.kiln(["cache", "prune"]).success();
    let du = env.kiln(["cache", "du", "--json"]);
    du.success();
    let tmp = env.root().join("tmp");
    let leftovers: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "staging left after prune: {leftovers:?}\n{}",
        du.stdout
    );
    let du = du.json();
    for field in ["staging_orphaned", "snapshots_unrecorded"] {
        assert_eq!(du[field]["count"], 0, "{field} after prune: {du}");
    }
}

#[test]
fn copies_stay_inside_the_tree() {
    let env = Env::new();
    env.write("p/ctx/etc/passwd", "the tree's passwd\n");
    std::os::unix::fs::symlink("/etc", env.path("p/ctx/hostetc")).unwrap();
    let def = env.write(
        "p/kiln.build.toml",
        r#"
version = 1
[steps.ctx]
source = "local://context"
[steps.out]
base = "scratch"
actions = [
  { copy = { from = "ctx", src = "../../etc/passwd", dest = "/p1" } },
  { copy = { from = "ctx", src = "/hostetc/passwd", dest = "/p2", follow_symlinks = true } },
  { copy = { from = "ctx", src = "/hostetc", dest = "/link" } },
  { mkdir = { path = "/tmp" } },
  { mkfile = { path = "/link/../../../../tmp/kiln-escape-probe", data = "x" } },
]
[output]
step = "out"
"#,
    );
    let out = env.path("out");
    let r = build(
        &env,
        &def,
        &[
            "--local",
            &format!("context={}", env.path("p/ctx").display()),
            "--output",
            &format!("type=local,dest={}", out.display()),
        ],
    );
    r.success();
    assert_eq!(
        std::fs::read_to_string(out.join("p1")).unwrap(),
        "the tree's passwd\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("p2")).unwrap(),
        "the tree's passwd\n"
    );
    assert_eq!(
        std::fs::read_link(out.join("link")).unwrap(),
        PathBuf::from("/etc")
    );
    assert!(out.join("tmp/kiln-escape-probe").exists());
    assert!(!Path::new("/tmp/kiln-escape-probe").exists());
}

#[test]
fn every_bad_definition_exits_2_naming_the_step() {
    let env = Env::new();
    let cases: &[(&str, &str)] = &[
        ("[steps.a]\nsource = \"local://x\"\nbogus = 1\n[output]\nstep = \"a\"\n", "step `a`"),
        ("[steps.a]\nbase = \"nope\"\n[output]\nstep = \"a\"\n", "step `a`"),
        ("[steps.a]\nmerge = [\"b\"]\n[steps.b]\nbase = \"a\"\n[output]\nstep = \"a\"\n", "cycle"),
        ("[steps.a]\nsource = \"local://x\"\n", "missing [output]"),
        ("[steps.a]\nbase = \"scratch\"\nactions = [{ copy = { from = \"ghost\", src = \"/\", dest = \"/\" } }]\n[output]\nstep = \"a\"\n", "step `ghost`"),
        ("[steps.a]\nbase = \"scratch\"\nactions = [{ mkdir = { path = \"/x\", mdoe = \"0755\" } }]\n[output]\nstep = \"a\"\n", "step `a`"),
        ("[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"zzz\"\n", "step `zzz`"),
        ("[steps.img]\nsource = \"nosuchscheme://x\"\n[output]\nstep = \"img\"\n", "step `img`"),
        ("[steps.a\n", "line"),
    ];
    for (i, (body, needle)) in cases.iter().enumerate() {
        let def = env.write(&format!("bad{i}.toml"), format!("version = 1\n{body}"));
        let r = env.kiln(["build", def.to_str().unwrap()]);
        r.expect_code(2);
        assert!(
            r.stderr.contains(needle),
            "case {i}: {needle:?} not in:\n{}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
}

/// The OCI archive of a build from a local context is accepted by `skopeo inspect` and
/// unpacked by `umoci unpack` to the same files as `--output type=local`.
#[test]
fn the_oci_archive_matches_the_local_output() {
    kiln_tests::require_program("skopeo", "skopeo");
    kiln_tests::require_program("umoci", "umoci");
    kiln_tests::require_program("tar", "tar");
    let env = Env::new();
    let def = project(&env);
    let out = env.path("out");
    let archive = env.path("image.tar");
    let meta = env.path("meta.json");
    let run = build(
        &env,
        &def,
        &[
            "--local",
            &ctx_arg(&env),
            "--output",
            &format!("type=local,dest={}", out.display()),
            "--output",
            &format!(
                "type=oci,dest={},name=example.com/kiln/app:v1",
                archive.display()
            ),
            "--metadata-file",
            meta.to_str().unwrap(),
        ],
    );
    run.success();

    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "skopeo inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let meta = std::fs::read_to_string(&meta).unwrap();
    let digest = info["Digest"].as_str().unwrap();
    assert!(
        meta.contains(digest),
        "metadata {meta} lacks the manifest digest {digest}"
    );
    assert_eq!(info["Layers"].as_array().map(Vec::len), Some(1), "{info}");

    let layout = env.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(st.success());
    let bundle = env.path("bundle");
    let unpack = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        unpack.status.success(),
        "umoci unpack failed: {}",
        String::from_utf8_lossy(&unpack.stderr)
    );
    assert_eq!(tree(&bundle.join("rootfs")), tree(&out));
    assert!(tree(&out).contains_key("app/bin/main"), "{:?}", tree(&out));
}

/// Two steps that differ only in the credentials of their URL are two vertices: each
/// request carries its own credentials (the canonical identifier redacts them, so the
/// vertex identity must not rest on it alone).
#[test]
fn steps_differing_only_in_url_credentials_stay_apart() {
    use kiln_tests::http_server::{HttpServer, Route};
    let srv = HttpServer::start();
    srv.route("/a.txt", Route::bytes("shared name\n"));
    let url = srv.url("/a.txt");
    let with = |user: &str| url.replacen("http://", &format!("http://{user}@"), 1);
    let env = Env::new();
    let def = env.write(
        "proj/build.toml",
        format!(
            r#"
version = 1
[steps.alice]
source = "{alice}"
[steps.bob]
source = "{bob}"
[steps.all]
base = "scratch"
actions = [
  {{ copy = {{ from = "alice", src = "/a.txt", dest = "/alice.txt" }} }},
  {{ copy = {{ from = "bob", src = "/a.txt", dest = "/bob.txt" }} }},
]
[output]
step = "all"
"#,
            alice = with("alice:pw1"),
            bob = with("bob:pw2"),
        ),
    );
    let run = build(&env, &def, &[]);
    run.success();
    let auths: std::collections::BTreeSet<String> = srv
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .filter_map(|r| r.header("authorization").map(str::to_string))
        .collect();
    assert_eq!(
        auths.len(),
        2,
        "each step sends its own credentials: {auths:?}"
    );
    assert!(
        !run.stderr.contains("pw1") && !run.stderr.contains("pw2"),
        "{}",
        run.stderr
    );
}

/// Writes a definition at `p/kiln.build.toml` whose step `app` runs `actions` on
/// scratch with the local source `ctx`, and returns its path.
fn copy_project(env: &Env, actions: &str) -> PathBuf {
    env.write(
        "p/kiln.build.toml",
        format!(
            r#"
version = 1
[steps.ctx]
source = "local://context"
[steps.app]
base = "scratch"
actions = [{actions}]
[output]
step = "app"
"#
        ),
    )
}

/// Builds `def` with the context `p/ctx` into a fresh local output `name`; returns the
/// run (checked for success) and the output folder.
fn build_to(env: &Env, def: &Path, name: &str) -> (Run, PathBuf) {
    let out = env.path(name);
    let r = build(
        env,
        def,
        &[
            "--local",
            &format!("context={}", env.path("p/ctx").display()),
            "--output",
            &format!("type=local,dest={}", out.display()),
        ],
    );
    r.success();
    (r, out)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn a_wildcard_under_a_symlinked_folder_sees_edits_behind_the_link() {
    let env = Env::new();
    env.write("p/ctx/real/a.rs", "one");
    std::os::unix::fs::symlink("real", env.path("p/ctx/src")).unwrap();
    let def = copy_project(
        &env,
        r#"{ copy = { from = "ctx", src = "/src/*.rs", dest = "/out/" } }"#,
    );
    let (_, out) = build_to(&env, &def, "out1");
    assert_eq!(read(&out.join("out/a.rs")), "one");

    env.write("p/ctx/real/a.rs", "two");
    let (r, out) = build_to(&env, &def, "out2");
    assert_eq!(outcome(&r)["app"], "done", "{}", r.stderr);
    assert_eq!(read(&out.join("out/a.rs")), "two");
}

#[test]
fn followed_wildcard_matches_see_edits_of_their_targets() {
    let env = Env::new();
    env.write("p/ctx/t.txt", "one");
    std::fs::create_dir_all(env.path("p/ctx/src")).unwrap();
    std::os::unix::fs::symlink("../t.txt", env.path("p/ctx/src/a.rs")).unwrap();
    let def = copy_project(
        &env,
        r#"{ copy = { from = "ctx", src = "/src/*.rs", dest = "/out/", follow_symlinks = true } }"#,
    );
    let (_, out) = build_to(&env, &def, "out1");
    assert_eq!(read(&out.join("out/a.rs")), "one");

    env.write("p/ctx/t.txt", "two");
    let (r, out) = build_to(&env, &def, "out2");
    assert_eq!(outcome(&r)["app"], "done", "{}", r.stderr);
    assert_eq!(read(&out.join("out/a.rs")), "two");
}

/// Makes `p/ctx/<name>` a tar holding `f` with `content` (with the `tar` program).
fn make_tar(env: &Env, name: &str, content: &str) {
    kiln_tests::require_program("tar", "tar");
    env.write("tarsrc/f", content);
    std::fs::create_dir_all(env.path("p/ctx")).unwrap();
    let st = Command::new("tar")
        .arg("-cf")
        .arg(env.path(&format!("p/ctx/{name}")))
        .arg("-C")
        .arg(env.path("tarsrc"))
        .arg("f")
        .status()
        .expect("run tar");
    assert!(st.success(), "tar failed: {st}");
}

#[test]
fn unpacking_a_symlinked_archive_sees_a_rebuilt_target() {
    let env = Env::new();
    make_tar(&env, "real.tar", "v1");
    std::os::unix::fs::symlink("real.tar", env.path("p/ctx/app.tar")).unwrap();
    let def = copy_project(
        &env,
        r#"{ copy = { from = "ctx", src = "/app.tar", dest = "/x/", unpack = true } }"#,
    );
    let (_, out) = build_to(&env, &def, "out1");
    assert_eq!(read(&out.join("x/f")), "v1");

    make_tar(&env, "real.tar", "v2");
    let (r, out) = build_to(&env, &def, "out2");
    assert_eq!(outcome(&r)["app"], "done", "{}", r.stderr);
    assert_eq!(read(&out.join("x/f")), "v2");
}

#[test]
fn a_copy_keeping_a_link_is_keyed_by_the_link_even_if_another_follows() {
    let env = Env::new();
    env.write("p/ctx/a.txt", "same");
    env.write("p/ctx/b.txt", "same");
    env.write("p/ctx/other", "other");
    std::os::unix::fs::symlink("a.txt", env.path("p/ctx/lnk")).unwrap();
    let def = copy_project(
        &env,
        r#"
  { copy = { from = "ctx", src = "/lnk", dest = "/out/lnk" } },
  { copy = { from = "ctx", src = "/other", dest = "/out/other", follow_symlinks = true } },
"#,
    );
    let (_, out) = build_to(&env, &def, "out1");
    assert_eq!(
        std::fs::read_link(out.join("out/lnk")).unwrap(),
        Path::new("a.txt")
    );

    std::fs::remove_file(env.path("p/ctx/lnk")).unwrap();
    std::os::unix::fs::symlink("b.txt", env.path("p/ctx/lnk")).unwrap();
    let (r, out) = build_to(&env, &def, "out2");
    assert_eq!(outcome(&r)["app"], "done", "{}", r.stderr);
    assert_eq!(
        std::fs::read_link(out.join("out/lnk")).unwrap(),
        Path::new("b.txt")
    );
}

#[test]
fn a_result_whose_snapshot_folder_vanished_is_built_again() {
    let env = Env::new();
    env.write("p/ctx/f", "content");
    let def = copy_project(
        &env,
        r#"{ copy = { from = "ctx", src = "/f", dest = "/f" } }"#,
    );
    build_to(&env, &def, "out1");
    // As an interrupted prune can leave it: every snapshot folder gone, the records kept.
    let snapshots = env.root().join("snapshots");
    let mut removed = 0;
    for e in std::fs::read_dir(&snapshots).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
        removed += 1;
    }
    assert!(
        removed >= 2,
        "expected snapshots in {}",
        snapshots.display()
    );
    let (r, out) = build_to(&env, &def, "out2");
    let o = outcome(&r);
    assert_eq!(o["app"], "done", "{o:?}\n{}", r.stderr);
    assert_eq!(read(&out.join("f")), "content");
}

#[test]
fn an_edited_extended_attribute_is_a_change() {
    let env = Env::new();
    let f = env.write("p/ctx/f", "content");
    let def = copy_project(
        &env,
        r#"{ copy = { from = "ctx", src = "/f", dest = "/f" } }"#,
    );
    let name = std::ffi::CString::new("user.kiln.test").unwrap();
    kiln::worker::xattr::set(&f, &name, b"v1").unwrap();
    assert!(
        !kiln::worker::xattr::list(&f).unwrap().is_empty(),
        "this test needs a temp folder ($TMPDIR) on a filesystem with user xattrs"
    );
    build_to(&env, &def, "out1");

    kiln::worker::xattr::set(&f, &name, b"v2").unwrap();
    let (r, out) = build_to(&env, &def, "out2");
    let o = outcome(&r);
    assert_eq!(o["app"], "done", "{o:?}\n{}", r.stderr);
    let got = kiln::worker::xattr::list(&out.join("f")).unwrap();
    assert!(
        got.iter()
            .any(|(n, v)| n.as_c_str() == name.as_c_str() && v == b"v2"),
        "{got:?}"
    );
}

#[test]
fn hard_links_in_an_input_are_a_change() {
    use std::os::unix::fs::MetadataExt;
    kiln_tests::require_program("tar", "tar");
    let env = Env::new();
    // `d.tar` holds d/a and d/b with the same bytes: first as two files, then as one
    // file under two names. The step reading `/d` must see the difference.
    let tar = |linked: bool| {
        let src = env.path(if linked { "linked" } else { "apart" });
        env.write(
            &format!("{}/d/a", src.file_name().unwrap().to_str().unwrap()),
            "same",
        );
        let b = src.join("d/b");
        if linked {
            std::fs::hard_link(src.join("d/a"), &b).unwrap();
        } else {
            std::fs::write(&b, "same").unwrap();
        }
        let st = Command::new("tar")
            .arg("-cf")
            .arg(env.path("p/ctx/d.tar"))
            .arg("-C")
            .arg(&src)
            .arg("d")
            .status()
            .expect("run tar");
        assert!(st.success(), "tar failed: {st}");
    };
    std::fs::create_dir_all(env.path("p/ctx")).unwrap();
    tar(false);
    let def = env.write(
        "p/kiln.build.toml",
        r#"
version = 1
[steps.ctx]
source = "local://context"
[steps.ex]
base = "scratch"
actions = [{ copy = { from = "ctx", src = "/d.tar", dest = "/", unpack = true } }]
[steps.app]
base = "scratch"
actions = [{ copy = { from = "ex", src = "/d", dest = "/d" } }]
[output]
step = "app"
"#,
    );
    let (_, out) = build_to(&env, &def, "out1");
    let ino = |out: &Path, p: &str| std::fs::metadata(out.join(p)).unwrap().ino();
    assert_ne!(ino(&out, "d/a"), ino(&out, "d/b"));

    tar(true);
    let (r, out) = build_to(&env, &def, "out2");
    let o = outcome(&r);
    assert_eq!(o["app"], "done", "{o:?}\n{}", r.stderr);
    assert_eq!(ino(&out, "d/a"), ino(&out, "d/b"), "the hard link is kept");
}
