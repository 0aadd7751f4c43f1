//! Image-based builds end to end: the real binary and the real image plugin read an
//! OCI layout the test makes with umoci (`oci-layout://NAME:TAG` with
//! `--oci-layout NAME=DIR`), build on it, and export `type=oci`; skopeo and umoci read
//! the result back. Also the `--oci-layout` and `--ssh` flag checks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_tests::{require_program, Env, Run};

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An OCI layout made by umoci: image `base:1` with two layers and a runtime config.
struct Layout {
    dir: PathBuf,
    /// The manifest digest `base:1` points at.
    manifest: String,
    /// Its layer digests, bottom first.
    layers: Vec<String>,
}

fn make_layout(env: &Env) -> Layout {
    require_program("umoci", "umoci");
    require_program("skopeo", "skopeo");
    let dir = env.path("layout");
    let image = format!("{}:1", dir.display());
    run(Command::new("umoci").arg("init").arg("--layout").arg(&dir));
    run(Command::new("umoci").args(["new", "--image"]).arg(&image));
    // Two layers made the way a user makes them by hand: unpack, change, repack.
    let layers: [&[(&str, &str)]; 2] = [
        &[
            ("bin/sh", "#!/bin/sh\n"),
            ("etc/motd", "base\n"),
            ("etc/old", "old\n"),
        ],
        &[("usr/share/doc/a", "a\n"), ("usr/share/doc/b", "b\n")],
    ];
    for (i, files) in layers.iter().enumerate() {
        let bundle = env.path(&format!("bundle{i}"));
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(&image)
            .arg(&bundle));
        for (path, data) in *files {
            env.write(&format!("bundle{i}/rootfs/{path}"), data);
        }
        run(Command::new("umoci")
            .args(["repack", "--image"])
            .arg(&image)
            .arg(&bundle));
    }
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(&image)
        .args([
            "--config.env=GREETING=hello",
            "--config.cmd=/bin/sh",
            "--config.workingdir=/srv",
            "--config.user=1000:1000",
            "--config.label=org.example.team=base",
        ]));
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{image}"))));
    Layout {
        manifest: v["Digest"].as_str().unwrap().to_string(),
        layers: v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect(),
        dir,
    }
}

/// Every entry of a tree with its content (symlinks as `-> target`, folders as `/`).
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.insert(rel, format!("-> {}", t.display()));
            } else if ft.is_dir() {
                out.insert(rel.clone() + "/", String::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The rootfs umoci unpacks from an `type=oci` archive's image `tag`.
fn unpack_archive(env: &Env, archive: &Path, tag: &str, label: &str) -> PathBuf {
    let layout = env.path(&format!("unpacked-{label}/layout"));
    std::fs::create_dir_all(&layout).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&layout));
    let bundle = env.path(&format!("unpacked-{label}/bundle"));
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:{tag}", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

const DEF: &str = r#"
version = 1
[steps.base]
source = "oci-layout://base:1"
[steps.app]
base = "base"
actions = [
  { mkdir = { path = "/app", mode = "0755" } },
  { mkfile = { path = "/app/VERSION", data = "1.0\n", mode = "0644" } },
  { symlink = { target = "/app/VERSION", path = "/app/current" } },
  { mkfile = { path = "/etc/motd", data = "built\n" } },
  { rm = { path = "/etc/old" } },
  { rm = { path = "/usr/share/doc/a" } },
  { rm = { path = "/usr/share/doc/b" } },
  { mkfile = { path = "/usr/share/doc/c", data = "c\n" } },
]
[output]
step = "app"
"#;

fn build(env: &Env, def: &Path, layout: &Layout, extra: &[String]) -> Run {
    let mut args: Vec<String> = vec![
        "--progress".into(),
        "json".into(),
        "build".into(),
        def.display().to_string(),
        "--oci-layout".into(),
        format!("base={}", layout.dir.display()),
    ];
    args.extend(extra.iter().cloned());
    env.kiln(&args)
}

/// Needs the image plugin (`oci-layout://`).
#[test]
fn an_image_based_build_exports_the_base_layers_and_config_plus_one_layer() {
    let env = Env::new();
    let layout = make_layout(&env);
    let def = env.write("proj/kiln.build.toml", DEF);
    let archive = env.path("out/app.tar");
    let meta = env.path("out/meta.json");
    let out = vec![
        "--output".to_string(),
        format!("type=oci,dest={},name=example.com/app:1", archive.display()),
        "--metadata-file".to_string(),
        meta.display().to_string(),
    ];
    build(&env, &def, &layout, &out).success();

    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    let layers: Vec<String> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers.len(), 3, "{v}");
    assert_eq!(
        layers[..2],
        layout.layers[..],
        "the base layers are the same blobs"
    );
    let c = json(&run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(c["config"]["Env"], serde_json::json!(["GREETING=hello"]));
    assert_eq!(c["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(c["config"]["WorkingDir"], "/srv");
    assert_eq!(c["config"]["User"], "1000:1000");
    assert_eq!(c["config"]["Labels"]["org.example.team"], "base");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    let history = c["history"].as_array().unwrap();
    assert_eq!(history.len(), 4, "{c}");
    assert_eq!(history[3]["created_by"], "kiln build");

    let rootfs = unpack_archive(&env, &archive, "1", "app");
    let want: BTreeMap<String, String> = [
        ("app/", ""),
        ("app/VERSION", "1.0\n"),
        ("app/current", "-> /app/VERSION"),
        ("bin/", ""),
        ("bin/sh", "#!/bin/sh\n"),
        ("etc/", ""),
        ("etc/motd", "built\n"),
        ("usr/", ""),
        ("usr/share/", ""),
        ("usr/share/doc/", ""),
        ("usr/share/doc/c", "c\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tree(&rootfs), want);

    // --metadata-file: the image source's ref and pin (the manifest digest).
    let m = json(&std::fs::read_to_string(&meta).unwrap());
    let sources = m["sources"].as_array().unwrap();
    let base = sources.iter().find(|s| s["step"] == "base").unwrap();
    assert_eq!(base["pin"], layout.manifest.as_str(), "{m}");
    assert!(
        base["ref"].as_str().is_some_and(|r| r.contains("base")),
        "{m}"
    );
    let digest = m["containerimage.digest"].as_str().unwrap().to_string();

    // Again, from the cache: the source step is a hit and the export is the same.
    let again = build(&env, &def, &layout, &out);
    again.success();
    assert!(
        again.stderr.contains(r#""step":"base","event":"cached""#),
        "{}",
        again.stderr
    );
    let m2 = json(&std::fs::read_to_string(&meta).unwrap());
    assert_eq!(m2["containerimage.digest"], digest.as_str());
}

/// Needs the image plugin (`oci-layout://`).
#[test]
fn an_unchanged_image_exports_exactly_its_own_layers() {
    let env = Env::new();
    let layout = make_layout(&env);
    let def = env.write(
        "proj/kiln.build.toml",
        "version = 1\n[steps.base]\nsource = \"oci-layout://base:1\"\n[output]\nstep = \"base\"\n",
    );
    let archive = env.path("same.tar");
    build(
        &env,
        &def,
        &layout,
        &[
            "--output".into(),
            format!("type=oci,dest={},name=same:2", archive.display()),
        ],
    )
    .success();
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(v["Layers"], serde_json::json!(layout.layers));
    let rootfs = unpack_archive(&env, &archive, "2", "same");
    assert_eq!(
        tree(&rootfs).keys().cloned().collect::<Vec<_>>(),
        [
            "bin/",
            "bin/sh",
            "etc/",
            "etc/motd",
            "etc/old",
            "usr/",
            "usr/share/",
            "usr/share/doc/",
            "usr/share/doc/a",
            "usr/share/doc/b"
        ]
    );
}

/// Needs the image plugin (`oci-layout://`).
#[test]
fn source_resolve_reads_the_named_layout_and_says_which_flag_is_missing() {
    let env = Env::new();
    let layout = make_layout(&env);
    let r = env.kiln([
        "source".to_string(),
        "resolve".into(),
        "oci-layout://base:1".into(),
        "--oci-layout".into(),
        format!("base={}", layout.dir.display()),
        "--json".into(),
    ]);
    r.success();
    assert_eq!(r.json()["pin"], layout.manifest.as_str());
    let r = env.kiln(["source", "resolve", "oci-layout://base:1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("--oci-layout base="), "{}", r.stderr);
}

/// The flags alone: no image plugin needed.
#[test]
fn oci_layout_and_ssh_flags_are_checked_before_anything_runs() {
    let env = Env::new();
    let def = env.write(
        "proj/kiln.build.toml",
        "version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkfile = { path = \"/f\", data = \"f\" } }]\n[output]\nstep = \"a\"\n",
    );
    let layout = env.path("layout");
    std::fs::create_dir_all(&layout).unwrap();
    let file = env.write("not-a-socket", "key");
    let sock = env.path("agent.sock");
    let _agent = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let l = format!("base={}", layout.display());
    let missing = format!("base={}", env.path("nope").display());
    let f = format!("k={}", file.display());
    let s = format!("default={}", sock.display());
    let d = def.display().to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--oci-layout", &missing], "--oci-layout base="),
        (
            vec!["--oci-layout", &l, "--oci-layout", &l],
            "--oci-layout base is given twice",
        ),
        (vec!["--oci-layout", "base"], "expected NAME=DIR"),
        (vec!["--oci-layout", "a:b=/"], "invalid NAME"),
        (vec!["--ssh", "default"], "SSH_AUTH_SOCK is not set"),
        (vec!["--ssh", &f], "not a socket"),
        (
            vec!["--ssh", &s, "--ssh", &s],
            "--ssh default is given twice",
        ),
        (vec!["--ssh", "a b"], "invalid ID"),
    ];
    for (flags, says) in &cases {
        for cmd in [
            vec!["build", d.as_str()],
            vec!["source", "resolve", "local://x"],
        ] {
            let out = env
                .command()
                .env_remove("SSH_AUTH_SOCK")
                .args(&cmd)
                .args(flags)
                .output()
                .unwrap();
            let r = Run::from(out);
            assert_eq!(r.code, 2, "{cmd:?} {flags:?}: {r:?}");
            assert!(r.stderr.contains(says), "{cmd:?} {flags:?}: {}", r.stderr);
        }
    }
    assert!(
        !env.root().join("snapshots").exists() || {
            std::fs::read_dir(env.root().join("snapshots"))
                .unwrap()
                .count()
                == 0
        }
    );
    // Good flags are accepted, and $SSH_AUTH_SOCK is the default socket.
    let out = env
        .command()
        .env("SSH_AUTH_SOCK", &sock)
        .args([
            "build",
            &d,
            "--oci-layout",
            &l,
            "--ssh",
            "default",
            "--ssh",
            &format!("git={}", sock.display()),
        ])
        .output()
        .unwrap();
    Run::from(out).success();
}

/// Needs the image plugin (`oci-layout://`).
#[test]
fn a_layer_limited_base_keeps_only_the_layers_it_used() {
    let env = Env::new();
    let layout = make_layout(&env);
    let def = env.write(
        "proj/kiln.build.toml",
        r#"
version = 1
[steps.base]
source = "oci-layout://base:1"
attrs = { "oci.layerlimit" = "1" }
[steps.app]
base = "base"
actions = [{ mkfile = { path = "/added", data = "added\n" } }]
[output]
step = "app"
"#,
    );
    let archive = env.path("limited.tar");
    build(
        &env,
        &def,
        &layout,
        &[
            "--output".into(),
            format!("type=oci,dest={},name=limited:1", archive.display()),
        ],
    )
    .success();
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    let layers = v["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{v}");
    assert_eq!(layers[0], layout.layers[0].as_str());
    let c = json(&run(Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 2, "{c}");
    let rootfs = unpack_archive(&env, &archive, "1", "limited");
    assert_eq!(
        tree(&rootfs).keys().cloned().collect::<Vec<_>>(),
        ["added", "bin/", "bin/sh", "etc/", "etc/motd", "etc/old"]
    );
}

/// Needs the image plugin (`oci-layout://`), root, runc and busybox-static: a run step
/// on an image base takes the image's Env and WorkingDir, and its changes (a new file,
/// a deletion) become the one new layer of the OCI export.
#[test]
fn a_run_step_on_an_image_exports_its_changes_as_one_layer() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run steps need root: run the test suite as root"
    );
    require_program("runc", "runc");
    require_program("busybox", "busybox-static");
    require_program("umoci", "umoci");
    require_program("skopeo", "skopeo");
    let env = Env::new();
    let dir = env.path("layout");
    let image = format!("{}:1", dir.display());
    run(Command::new("umoci").arg("init").arg("--layout").arg(&dir));
    run(Command::new("umoci").args(["new", "--image"]).arg(&image));
    let bundle = env.path("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(&image)
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    let busybox = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("srv")).unwrap();
    std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "rm", "pwd"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    env.write("bundle/rootfs/etc/doomed", "delete me\n");
    env.write("bundle/rootfs/etc/kept", "kept\n");
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(&image)
        .arg(&bundle));
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(&image)
        .args([
            "--config.env=GREETING=hello",
            "--config.env=PATH=/bin",
            "--config.workingdir=/srv",
        ]));
    let base_layers = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{image}"))))["Layers"]
        .clone();

    let def = env.write(
        "proj/kiln.build.toml",
        r#"
version = 1
[steps.base]
source = "oci-layout://base:1"
[steps.run]
base = "base"
run = 'echo "$GREETING from $(pwd)" > /srv/out.txt && rm /etc/doomed'
[output]
step = "run"
"#,
    );
    let archive = env.path("run.tar");
    let layout = Layout {
        dir,
        manifest: String::new(),
        layers: vec![],
    };
    build(
        &env,
        &def,
        &layout,
        &[
            "--output".into(),
            format!("type=oci,dest={},name=run:1", archive.display()),
        ],
    )
    .success();
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    let layers = v["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{v}");
    assert_eq!(layers[0], base_layers[0]);
    assert_eq!(v["Env"], serde_json::json!(["GREETING=hello", "PATH=/bin"]));
    let out = unpack_archive(&env, &archive, "1", "run");
    assert_eq!(
        std::fs::read_to_string(out.join("srv/out.txt")).unwrap(),
        "hello from /srv\n"
    );
    assert!(!out.join("etc/doomed").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("etc/kept")).unwrap(),
        "kept\n"
    );
    // The new layer holds the changes and their folders, nothing of the unchanged base.
    let new_layer = env.path(&format!(
        "unpacked-run/layout/blobs/sha256/{}",
        layers[1].as_str().unwrap().trim_start_matches("sha256:")
    ));
    let listing = run(Command::new("tar").arg("-tzf").arg(&new_layer));
    let mut entries: Vec<&str> = listing.lines().collect();
    entries.sort();
    assert_eq!(entries, ["etc/", "etc/.wh.doomed", "srv/", "srv/out.txt"]);
}

/// Needs the image plugin and `docker-registry`: a build on an image pulled from a
/// real registry on loopback exports its layers (one gzip, one uncompressed) as the
/// same blobs plus one layer, and the metadata file records the ref and pin.
#[test]
fn a_build_on_a_registry_image_exports_as_oci_and_records_ref_and_pin() {
    use kiln_tests::registry::image::{image, layer, Compression, Entry};
    use kiln_tests::registry::Registry;
    require_program("umoci", "umoci");
    require_program("skopeo", "skopeo");
    let reg = Registry::start();
    let l1 = layer(
        &[
            Entry::Dir("etc".into()),
            Entry::File("etc/os-release".into(), b"ID=kiln-test\n".to_vec(), 0o644),
            Entry::Dir("bin".into()),
            Entry::File("bin/tool".into(), b"#!/bin/sh\n".to_vec(), 0o755),
        ],
        Compression::Gzip,
    );
    let l2 = layer(
        &[
            Entry::Dir("app".into()),
            Entry::File("app/hello".into(), b"hello\n".to_vec(), 0o644),
        ],
        Compression::None,
    );
    let img = image(vec![l1, l2], "linux/amd64", &["PATH=/bin", "TAG=v1"]);
    reg.push_image("test/app", "v1", &img);

    let env = Env::new();
    let def = env.write(
        "proj/kiln.build.toml",
        format!(
            r#"
version = 1
[steps.base]
source = "docker-image://{}/test/app:v1"
platform = "linux/amd64"
[steps.app]
base = "base"
actions = [
  {{ rm = {{ path = "/app/hello" }} }},
  {{ mkfile = {{ path = "/app/built", data = "built\n" }} }},
]
[output]
step = "app"
"#,
            reg.host
        ),
    );
    let archive = env.path("out.tar");
    let meta = env.path("meta.json");
    env.kiln([
        "build".to_string(),
        def.display().to_string(),
        "--output".into(),
        format!("type=oci,dest={},name=example.com/app:2", archive.display()),
        "--metadata-file".into(),
        meta.display().to_string(),
    ])
    .success();

    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    let layers = v["Layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{v}");
    assert_eq!(layers[0], img.layers[0].digest.as_str());
    assert_eq!(layers[1], img.layers[1].digest.as_str());
    assert_eq!(v["Env"], serde_json::json!(["PATH=/bin", "TAG=v1"]));
    let raw = json(&run(Command::new("skopeo")
        .args(["inspect", "--raw"])
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(
        raw["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let rootfs = unpack_archive(&env, &archive, "2", "registry");
    assert_eq!(
        tree(&rootfs).into_iter().collect::<Vec<_>>(),
        [
            ("app/", ""),
            ("app/built", "built\n"),
            ("bin/", ""),
            ("bin/tool", "#!/bin/sh\n"),
            ("etc/", ""),
            ("etc/os-release", "ID=kiln-test\n"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );

    let m = json(&std::fs::read_to_string(&meta).unwrap());
    let base = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "base")
        .unwrap()
        .clone();
    assert_eq!(base["pin"], img.manifest_digest.as_str(), "{m}");
    assert_eq!(base["ref"], format!("{}/test/app:v1", reg.host), "{m}");
    reg.stop();
}

/// Needs the image plugin (`oci-layout://`): a base layer gone from the content store
/// (as after a prune) squashes the export into one layer, with a warning naming it.
#[test]
fn a_pruned_base_layer_squashes_the_export_with_a_warning() {
    let env = Env::new();
    let layout = make_layout(&env);
    let def = env.write("proj/kiln.build.toml", DEF);
    let archive = env.path("out.tar");
    let out = vec![
        "--output".to_string(),
        format!("type=oci,dest={},name=app:1", archive.display()),
    ];
    build(&env, &def, &layout, &out).success();
    let blob = env.root().join(format!(
        "content/blobs/sha256/{}",
        layout.layers[1].trim_start_matches("sha256:")
    ));
    std::fs::remove_file(&blob).unwrap();
    let r = build(&env, &def, &layout, &out);
    r.success();
    assert!(
        r.stderr.contains("squashed") && r.stderr.contains(&layout.layers[1]),
        "{}",
        r.stderr
    );
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(v["Layers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["Env"], serde_json::json!(["GREETING=hello"]));
    let rootfs = unpack_archive(&env, &archive, "1", "squashed");
    assert!(rootfs.join("app/VERSION").is_file());
    assert!(!rootfs.join("etc/old").exists());
}

/// Needs the image plugin, `docker-registry`, `htpasswd` and `openssl`: a build on a
/// private image (basic auth behind TLS, credentials from a docker `config.json`)
/// exports and writes its metadata without the credentials anywhere: not in the
/// metadata file, the archive, the output or the store.
#[test]
fn credentials_never_reach_the_metadata_the_archive_or_the_store() {
    use kiln_tests::registry::image::{image, layer, Compression, Entry};
    use kiln_tests::registry::{base64, Auth, Registry, Tls};
    let (user, pass) = ("meta-user", "meta-Pa55word");
    let open = Registry::start();
    let img = image(
        vec![layer(
            &[
                Entry::Dir("etc".into()),
                Entry::File("etc/motd".into(), b"private\n".to_vec(), 0o644),
            ],
            Compression::Gzip,
        )],
        "linux/amd64",
        &["PATH=/bin"],
    );
    open.push_image("test/private", "1", &img);
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().join("data");
    run(Command::new("cp").arg("-a").arg(&open.storage).arg(&data));
    open.stop();
    let tls = Tls::make(&keep.path().join("tls"));
    let reg = Registry::start_with(
        Some(&data),
        Some(&tls),
        Auth::Basic(user.into(), pass.into()),
    );

    let env = Env::new();
    let auth = base64(format!("{user}:{pass}").as_bytes());
    env.write(
        "docker/config.json",
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host
        ),
    );
    let config = env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.source.v1.image\"]\npath = {:?}\n\
             [plugins.\"io.kiln.source.v1.image\".config.registry.\"{}\"]\nhttp = false\nca = [{:?}]\n\
             [plugins.\"io.kiln.source.v1.local\"]\npath = {:?}\n",
            kiln_tests::plugin_file("kiln_source_image")
                .display()
                .to_string(),
            reg.host,
            tls.ca.display().to_string(),
            kiln_tests::plugin_file("kiln_source_local")
                .display()
                .to_string(),
        ),
    );
    let def = env.write(
        "proj/kiln.build.toml",
        format!(
            "version = 1\n[steps.base]\nsource = \"docker-image://{}/test/private:1\"\n\
             platform = \"linux/amd64\"\n[steps.app]\nbase = \"base\"\n\
             actions = [{{ mkfile = {{ path = \"/etc/built\", data = \"yes\" }} }}]\n\
             [output]\nstep = \"app\"\n",
            reg.host
        ),
    );
    let archive = env.path("out/private.tar");
    let meta = env.path("out/meta.json");
    let out = env
        .command()
        .env("DOCKER_CONFIG", env.path("docker"))
        .env("HOME", env.path("home"))
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .arg("--config")
        .arg(&config)
        .args(["--progress", "json", "build"])
        .arg(&def)
        .arg("--output")
        .arg(format!(
            "type=oci,dest={},name=private:1",
            archive.display()
        ))
        .arg("--metadata-file")
        .arg(&meta)
        .output()
        .unwrap();
    let r = Run::from(out);
    r.success();
    let m = json(&std::fs::read_to_string(&meta).unwrap());
    let base = m["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "base")
        .unwrap()
        .clone();
    assert_eq!(base["ref"], format!("{}/test/private:1", reg.host), "{m}");
    assert_eq!(base["pin"], img.manifest_digest.as_str(), "{m}");
    let v = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))));
    assert_eq!(v["Layers"][0], img.layers[0].digest.as_str(), "{v}");
    for secret in [pass, auth.as_str()] {
        assert!(!r.stderr.contains(secret) && !r.stdout.contains(secret));
        let found = Command::new("grep")
            .arg("-rlaF")
            .arg(secret)
            .arg(env.path("out"))
            .arg(env.root())
            .output()
            .unwrap();
        assert!(
            found.stdout.is_empty(),
            "{secret:?} found in {}",
            String::from_utf8_lossy(&found.stdout)
        );
    }
    reg.stop();
}
