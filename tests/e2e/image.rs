//! End-to-end tests of the image source: the real `kiln` binary and the real
//! `libkiln_source_image.so` against Debian's `docker-registry` started by each test on
//! a free loopback port (plain, behind a token server, or with basic auth behind TLS),
//! with images the tests build in Rust (`kiln_tests::registry::image`).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_tests::http_server::{HttpServer, Route};
use kiln_tests::registry::image::{self, digest, layer, Compression, Entry, Image};
use kiln_tests::registry::{Auth, Registry, SlowProxy, Tls, TokenServer};
use kiln_tests::{Env, Run};

fn resolve(env: &Env, id: &str, extra: &[&str]) -> Run {
    let mut args = vec!["source", "resolve", id, "--json"];
    args.extend_from_slice(extra);
    env.kiln(args)
}

fn fetch(env: &Env, id: &str, dest: &str, extra: &[&str]) -> Run {
    let dest = env.path(dest);
    let mut args = vec![
        "source".to_string(),
        "fetch".into(),
        id.into(),
        "--json".into(),
        "--dest".into(),
        dest.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    env.kiln(args)
}

/// BuildKit's manifest key, computed here from the JSON Go writes.
fn manifest_key(
    top: &str,
    os: &str,
    arch: &str,
    variant: Option<&str>,
    limit: Option<u32>,
) -> String {
    let mut j = format!(r#"{{"Digest":"{top}","OS":"{os}","Arch":"{arch}""#);
    if let Some(v) = variant {
        j.push_str(&format!(r#","Variant":"{v}""#));
    }
    if let Some(l) = limit {
        j.push_str(&format!(r#","Limit":{l}"#));
    }
    j.push('}');
    digest(j.as_bytes())
}

/// containerd's chain ID.
fn chain_id(diff_ids: &[&str]) -> String {
    let mut c = diff_ids[0].to_string();
    for d in &diff_ids[1..] {
        c = digest(format!("{c} {d}").as_bytes());
    }
    c
}

/// The source op digest kiln and BuildKit show for a key.
fn op_digest(key: &str) -> String {
    digest(format!("buildkit.source.v0:{key}").as_bytes())
}

/// Keys and pin of a successful `resolve --json`.
fn keys(run: &Run) -> (Vec<String>, String) {
    run.success();
    let v = run.json();
    let ks = v["keys"].as_array().expect("keys");
    assert_eq!(ks.len(), 2, "{v}");
    assert_eq!(
        (ks[0]["done"].as_bool(), ks[1]["done"].as_bool()),
        (Some(false), Some(true)),
        "{v}"
    );
    for k in ks {
        assert_eq!(
            k["digest"].as_str().unwrap(),
            op_digest(k["key"].as_str().unwrap())
        );
    }
    (
        ks.iter()
            .map(|k| k["key"].as_str().unwrap().to_string())
            .collect(),
        v["pin"].as_str().expect("pin").to_string(),
    )
}

/// Deterministic incompressible data.
fn noise(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn file(path: &str, data: &str) -> Entry {
    Entry::File(path.into(), data.as_bytes().to_vec(), 0o644)
}

/// A two-layer image: `/etc/os-release`, `/bin/tool`, then `/app/hello`.
fn two_layer(platform: &str, tag: &str) -> Image {
    let l1 = layer(
        &[
            Entry::Dir("etc".into()),
            file(
                "etc/os-release",
                &format!("ID=kiln-test\nPLATFORM={platform}\n"),
            ),
            Entry::Dir("bin".into()),
            Entry::File("bin/tool".into(), b"#!/bin/sh\necho tool\n".to_vec(), 0o755),
        ],
        Compression::Gzip,
    );
    let l2 = layer(
        &[
            Entry::Dir("app".into()),
            file("app/hello", &format!("hello {tag}\n")),
        ],
        Compression::None,
    );
    image::image(
        vec![l1, l2],
        platform,
        &["PATH=/bin", &format!("TAG={tag}")],
    )
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn keys_and_pin_of_a_tag_a_digest_and_a_multi_arch_index() {
    let reg = Registry::start();
    let img = two_layer("linux/amd64", "v1");
    reg.push_image("test/app", "v1", &img);
    let amd = two_layer("linux/amd64", "multi");
    let arm = two_layer("linux/arm64/v8", "multi");
    let index_digest = reg.push_index("test/multi", "1", &[&amd, &arm]);
    let env = Env::new();
    let h = &reg.host;
    let diff = |i: &Image| {
        i.layers
            .iter()
            .map(|l| l.diff_id.clone())
            .collect::<Vec<_>>()
    };
    let chain = |i: &Image| chain_id(&diff(i).iter().map(String::as_str).collect::<Vec<_>>());

    let by_tag = format!("docker-image://{h}/test/app:v1");
    let (k, pin) = keys(&resolve(&env, &by_tag, &["--platform", "linux/amd64"]));
    assert_eq!(pin, img.manifest_digest);
    assert_eq!(
        k[0],
        manifest_key(&img.manifest_digest, "linux", "amd64", None, None)
    );
    assert_eq!(k[1], chain(&img));

    let by_digest = format!("docker-image://{h}/test/app@{}", img.manifest_digest);
    let (k2, pin2) = keys(&resolve(&env, &by_digest, &["--platform", "linux/amd64"]));
    assert_eq!((k2, pin2), (k.clone(), pin.clone()));
    // Tag and digest together: the digest wins.
    let both = format!(
        "docker-image://{h}/test/app:nonexistent@{}",
        img.manifest_digest
    );
    let (k3, _) = keys(&resolve(&env, &both, &["--platform", "linux/amd64"]));
    assert_eq!(k3, k);

    let multi = format!("docker-image://{h}/test/multi:1");
    let (ka, pa) = keys(&resolve(&env, &multi, &["--platform", "linux/amd64"]));
    assert_eq!(pa, index_digest);
    assert_eq!(
        ka[0],
        manifest_key(&index_digest, "linux", "amd64", None, None)
    );
    assert_eq!(ka[1], chain(&amd));
    for spelling in ["linux/arm64", "linux/arm64/v8", "linux/aarch64"] {
        let (kb, pb) = keys(&resolve(&env, &multi, &["--platform", spelling]));
        assert_eq!(pb, index_digest, "{spelling}");
        assert_eq!(
            kb[0],
            manifest_key(&index_digest, "linux", "arm64", None, None),
            "{spelling}"
        );
        assert_eq!(kb[1], chain(&arm), "{spelling}");
    }
    let r = resolve(&env, &multi, &["--platform", "linux/s390x"]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("no manifest for platform linux/s390x")
            && r.stderr.contains("linux/arm64/v8"),
        "{}",
        r.stderr
    );

    let f = fetch(&env, &multi, "arm", &["--platform", "linux/arm64"]);
    f.success();
    assert_eq!(
        read(&env.path("arm/etc/os-release")),
        "ID=kiln-test\nPLATFORM=linux/arm64/v8\n"
    );
    assert_eq!(read(&env.path("arm/app/hello")), "hello multi\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.path("arm/bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);

    // The manifest, config and layers are in the content store under their digests.
    for d in [
        &index_digest,
        &arm.manifest_digest,
        &arm.config_digest,
        &arm.layers[0].digest,
        &arm.layers[1].digest,
    ] {
        let p = env
            .root()
            .join("content/blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert!(p.is_file(), "{d} is not in the content store");
    }
}

#[test]
fn checksum_and_layer_limit() {
    let reg = Registry::start();
    let img = two_layer("linux/amd64", "v1");
    reg.push_image("test/app", "v1", &img);
    let env = Env::new();
    let id = format!("docker-image://{}/test/app:v1", reg.host);
    let p = ["--platform", "linux/amd64"];

    let ok = format!("image.checksum={}", img.manifest_digest);
    let (_, pin) = keys(&resolve(&env, &id, &[&p[..], &["--attr", &ok]].concat()));
    assert_eq!(pin, img.manifest_digest);
    let wrong = format!("sha256:{}", "0".repeat(64));
    let r = resolve(
        &env,
        &id,
        &[&p[..], &["--attr", &format!("image.checksum={wrong}")]].concat(),
    );
    r.expect_code(1);
    assert!(
        r.stderr
            .contains(&format!("image digest {} for", img.manifest_digest))
            && r.stderr
                .contains(&format!("does not match expected checksum {wrong}")),
        "{}",
        r.stderr
    );

    let (k, _) = keys(&resolve(
        &env,
        &id,
        &[&p[..], &["--attr", "image.layerlimit=1"]].concat(),
    ));
    assert_eq!(
        k[0],
        manifest_key(&img.manifest_digest, "linux", "amd64", None, Some(1))
    );
    assert_eq!(k[1], img.layers[0].diff_id);
    let f = fetch(
        &env,
        &id,
        "one",
        &[&p[..], &["--attr", "image.layerlimit=1"]].concat(),
    );
    f.success();
    assert!(env.path("one/etc/os-release").is_file());
    assert!(
        !env.path("one/app").exists(),
        "layer 2 must not be applied with layerlimit=1"
    );

    let r = resolve(
        &env,
        &id,
        &[&p[..], &["--attr", "image.layerlimit=3"]].concat(),
    );
    r.expect_code(1);
    assert!(
        r.stderr.contains("invalid layer limit 3") && r.stderr.contains("only 2 layers"),
        "{}",
        r.stderr
    );
    let r = resolve(
        &env,
        &id,
        &[&p[..], &["--attr", "image.layerlimit=0"]].concat(),
    );
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("invalid layer limit"), "{}", r.stderr);
}

#[test]
fn whiteouts_and_opaque_dirs_end_to_end() {
    let reg = Registry::start();
    let l1 = layer(
        &[
            Entry::Dir("a".into()),
            file("a/gone", "x"),
            file("a/kept", "y"),
            Entry::Dir("b".into()),
            file("b/old1", "1"),
            Entry::Dir("b/sub".into()),
            file("b/sub/old2", "2"),
            file("c", "c"),
        ],
        Compression::Gzip,
    );
    let l2 = layer(
        &[
            Entry::Whiteout("a/gone".into()),
            Entry::Dir("b".into()),
            Entry::Opaque("b".into()),
            file("b/new", "n"),
            Entry::Whiteout("c".into()),
        ],
        Compression::Gzip,
    );
    let img = image::image(vec![l1, l2], "linux/amd64", &[]);
    reg.push_image("test/wh", "1", &img);
    let env = Env::new();
    fetch(
        &env,
        &format!("docker-image://{}/test/wh:1", reg.host),
        "out",
        &["--platform", "linux/amd64"],
    )
    .success();
    let out = env.path("out");
    assert!(!out.join("a/gone").exists());
    assert_eq!(read(&out.join("a/kept")), "y");
    assert!(!out.join("c").exists());
    let mut b: Vec<String> = std::fs::read_dir(out.join("b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    b.sort();
    assert_eq!(
        b,
        vec!["new".to_string()],
        "the opaque dir keeps only the upper layer's entries"
    );
    let all = String::from_utf8(
        std::process::Command::new("find")
            .arg(&out)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !all.contains(".wh."),
        "whiteout files left in the tree:\n{all}"
    );
}

#[test]
fn hostile_layers_are_refused_naming_the_entry() {
    let reg = Registry::start();
    let env = Env::new();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let cases: Vec<(&str, Vec<Entry>, &str)> = vec![
        (
            "dotdot",
            vec![Entry::RawName(
                b"../../../../escaped-file".to_vec(),
                b"pwned".to_vec(),
            )],
            "escaped-file",
        ),
        (
            "symlink",
            vec![
                Entry::Symlink("link".into(), outside.display().to_string()),
                file("link/planted", "pwned"),
            ],
            "link/planted",
        ),
    ];
    for (name, entries, entry_name) in cases {
        let bad = layer(&entries, Compression::Gzip);
        let img = image::image(vec![bad.clone()], "linux/amd64", &[]);
        reg.push_image(&format!("test/{name}"), "1", &img);
        let r = fetch(
            &env,
            &format!("docker-image://{}/test/{name}:1", reg.host),
            &format!("out-{name}"),
            &["--platform", "linux/amd64"],
        );
        let planted: Vec<_> = std::fs::read_dir(&outside).unwrap().collect();
        assert!(
            planted.is_empty(),
            "{name}: something was written outside the rootfs"
        );
        assert!(
            !env.dir.path().join("escaped-file").exists() && !Path::new("/escaped-file").exists()
        );
        r.expect_code(1);
        assert!(
            r.stderr.contains(&bad.digest)
                && r.stderr.contains(entry_name)
                && r.stderr.contains("refused"),
            "{name}: {}",
            r.stderr
        );
        assert!(
            !env.path(&format!("out-{name}")).join("link").exists(),
            "{name}: half-written output"
        );
    }
}

#[test]
fn a_corrupted_blob_is_refused_with_both_digests() {
    let reg = Registry::start();
    let img = two_layer("linux/amd64", "v1");
    reg.push_image("test/app", "v1", &img);
    let blob = reg.blob_file(&img.layers[0].digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    let actual = digest(&bytes);
    let env = Env::new();
    let id = format!("docker-image://{}/test/app:v1", reg.host);
    for attempt in 0..2 {
        let r = fetch(
            &env,
            &id,
            &format!("out{attempt}"),
            &["--platform", "linux/amd64"],
        );
        r.expect_code(1);
        assert!(
            r.stderr.contains(&img.layers[0].digest) && r.stderr.contains(&actual),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("checksum mismatch"), "{}", r.stderr);
        let stored = env
            .root()
            .join("content/blobs/sha256")
            .join(actual.trim_start_matches("sha256:"));
        assert!(!stored.exists(), "the corrupt blob was stored");
    }
}

/// A kiln config whose image plugin has `settings` for registry `host`.
fn registry_config(env: &Env, host: &str, settings: &str) -> String {
    let so = kiln_tests::plugin_file("kiln_source_image");
    env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.source.v1.image\"]\npath = {:?}\n[plugins.\"io.kiln.source.v1.image\".config.registry.\"{host}\"]\n{settings}\n",
            so.display().to_string()
        ),
    )
    .display()
    .to_string()
}

fn fetch_with_env(env: &Env, id: &str, dest: &str, vars: &[(&str, String)], extra: &[&str]) -> Run {
    let mut c = env.command();
    c.args([
        "source",
        "fetch",
        id,
        "--json",
        "--platform",
        "linux/amd64",
        "--dest",
    ])
    .arg(env.path(dest))
    .args(extra);
    c.env_remove("DOCKER_CONFIG")
        .env_remove("REGISTRY_AUTH_FILE")
        .env("HOME", env.path("home"))
        .env_remove("XDG_RUNTIME_DIR");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.output().expect("kiln").into()
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let out = std::process::Command::new("grep")
        .arg("-rlaF")
        .arg(std::ffi::OsStr::new(std::str::from_utf8(needle).unwrap()))
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn credentials_from_config_json_and_a_credential_helper_with_a_token_server() {
    let (user, pass) = ("kiln-user", "s3cret-Pa55word");
    // Push to an open registry, then serve the same storage behind token auth.
    let open = Registry::start();
    let img = two_layer("linux/amd64", "auth");
    open.push_image("test/private", "1", &img);
    let storage = open.storage.clone();
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("data");
    kiln_tests::registry::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&storage)
            .arg(&copy),
    );
    open.stop();
    let tokens = TokenServer::start(Some((user, pass)));
    let reg = Registry::start_with(
        Some(&copy),
        None,
        Auth::Token {
            realm: tokens.realm.clone(),
            cert: tokens.cert.clone(),
        },
    );
    let env = Env::new();
    let id = format!("docker-image://{}/test/private:1", reg.host);

    let r = fetch_with_env(&env, &id, "none", &[], &[]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("401") || r.stderr.to_lowercase().contains("unauthorized"),
        "{}",
        r.stderr
    );

    let docker = env.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = kiln_tests::registry::base64(format!("{user}:{pass}").as_bytes());
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
    )
    .unwrap();
    let before = tokens.issued.load(std::sync::atomic::Ordering::SeqCst);
    let r = fetch_with_env(
        &env,
        &id,
        "cfg",
        &[("DOCKER_CONFIG", docker.display().to_string())],
        &["--progress", "json"],
    );
    r.success();
    assert_eq!(read(&env.path("cfg/app/hello")), "hello auth\n");
    let used = tokens.issued.load(std::sync::atomic::Ordering::SeqCst) - before;
    assert_eq!(
        used, 1,
        "one token serves the whole pull (manifest, config, layers)"
    );
    for text in [&r.stdout, &r.stderr] {
        assert!(!text.contains(pass) && !text.contains(&auth));
    }
    // Per-layer progress reached the host.
    assert!(
        r.stderr
            .contains(&img.layers[0].digest["sha256:".len().."sha256:".len() + 12]),
        "{}",
        r.stderr
    );

    // A credential helper (credHelpers) answering for this registry.
    let bin = env.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        format!("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\n[ \"$server\" = \"{}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{pass}\"}}' \"$server\"\n", reg.host),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let helper_cfg = env.path("docker-helper");
    std::fs::create_dir_all(&helper_cfg).unwrap();
    std::fs::write(
        helper_cfg.join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"kilntest"}}}}"#, reg.host),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env2 = Env::new();
    let r = fetch_with_env(
        &env2,
        &id,
        "helper",
        &[
            ("DOCKER_CONFIG", helper_cfg.display().to_string()),
            ("PATH", path.clone()),
        ],
        &[],
    );
    r.success();
    assert_eq!(read(&env2.path("helper/app/hello")), "hello auth\n");

    // containers' auth.json (podman, skopeo), through $REGISTRY_AUTH_FILE.
    let auth_json = env.write(
        "containers/auth.json",
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
    );
    let env4 = Env::new();
    let r = fetch_with_env(
        &env4,
        &id,
        "podman",
        &[("REGISTRY_AUTH_FILE", auth_json.display().to_string())],
        &[],
    );
    r.success();
    assert_eq!(read(&env4.path("podman/app/hello")), "hello auth\n");

    // A wrong password: refused, and the error shows no secret.
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host,
            kiln_tests::registry::base64(b"kiln-user:wrong-pw-123")
        ),
    )
    .unwrap();
    let env3 = Env::new();
    let r = fetch_with_env(
        &env3,
        &id,
        "wrong",
        &[("DOCKER_CONFIG", docker.display().to_string())],
        &[],
    );
    r.expect_code(1);
    assert!(
        r.stderr.contains("unauthorized") || r.stderr.contains("401"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-pw-123"));

    for root in [env.root(), env2.root()] {
        let hits = files_containing(&root, pass.as_bytes());
        assert!(hits.is_empty(), "the password is stored in {hits:?}");
    }
}

#[test]
fn basic_auth_behind_tls_with_a_test_ca() {
    let (user, pass) = ("basic-user", "basic-Pa55");
    let open = Registry::start();
    let img = two_layer("linux/amd64", "tls");
    open.push_image("test/tls", "1", &img);
    let keep = tempfile::tempdir().unwrap();
    let copy = keep.path().join("data");
    kiln_tests::registry::run(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&open.storage)
            .arg(&copy),
    );
    open.stop();
    let tls = Tls::make(&keep.path().join("tls"));
    let reg = Registry::start_with(
        Some(&copy),
        Some(&tls),
        Auth::Basic(user.into(), pass.into()),
    );
    let env = Env::new();
    let id = format!("docker-image://{}/test/tls:1", reg.host);
    let docker = env.path("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let auth = kiln_tests::registry::base64(format!("{user}:{pass}").as_bytes());
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths":{{"https://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host
        ),
    )
    .unwrap();
    let vars = [("DOCKER_CONFIG", docker.display().to_string())];

    // Without the CA, the certificate is refused.
    let no_ca = registry_config(&env, &reg.host, "http = false");
    let r = fetch_with_env(&env, &id, "noca", &vars, &["--config", &no_ca]);
    r.expect_code(1);
    assert!(
        r.stderr.to_lowercase().contains("certificate"),
        "{}",
        r.stderr
    );

    let with_ca = registry_config(
        &env,
        &reg.host,
        &format!("http = false\nca = [{:?}]", tls.ca.display().to_string()),
    );
    let r = fetch_with_env(&env, &id, "ok", &vars, &["--config", &with_ca]);
    r.success();
    assert_eq!(read(&env.path("ok/app/hello")), "hello tls\n");
    assert!(!r.stderr.contains(pass) && !r.stderr.contains(&auth));

    // insecure = true skips verification.
    let env2 = Env::new();
    let insecure = registry_config(&env2, &reg.host, "http = false\ninsecure = true");
    fetch_with_env(&env2, &id, "ins", &vars, &["--config", &insecure]).success();
}

fn ingest_bytes(root: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(root.join("content/ingest")) else {
        return 0;
    };
    rd.flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn kill_9_mid_pull_then_the_rerun_fetches_only_the_remainder() {
    let reg = Registry::start();
    let big = layer(
        &[Entry::File("big.bin".into(), noise(6 << 20, 7), 0o644)],
        Compression::Gzip,
    );
    let small = layer(&[file("small", "s")], Compression::Gzip);
    let img = image::image(vec![big.clone(), small], "linux/amd64", &[]);
    reg.push_image("test/big", "1", &img);
    let size = big.blob.len() as u64;
    let env = Env::new();
    {
        let proxy = SlowProxy::start(&reg.host, 2 << 20);
        let mut child = env
            .command()
            .args([
                "source",
                "fetch",
                &format!("docker-image://{}/test/big:1", proxy.host),
                "--platform",
                "linux/amd64",
                "--dest",
            ])
            .arg(env.path("first"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while ingest_bytes(&env.root()) < (2 << 20) {
            assert!(Instant::now() < deadline, "the download never started");
            assert!(
                child.try_wait().unwrap().is_none(),
                "the pull ended before it was killed"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let partial = ingest_bytes(&env.root());
    assert!(
        partial >= (1 << 20) && partial < size,
        "partial {partial} of {size}"
    );
    let before = reg.blob_requests(&big.digest).len();
    let r = fetch(
        &env,
        &format!("docker-image://{}/test/big:1", reg.host),
        "second",
        &["--platform", "linux/amd64"],
    );
    r.success();
    let rerun: Vec<_> = reg
        .blob_requests(&big.digest)
        .into_iter()
        .skip(before)
        .collect();
    assert_eq!(rerun.len(), 1, "{rerun:?}");
    assert_eq!(rerun[0].status, 206, "a Range request: {rerun:?}");
    let served: u64 = rerun.iter().map(|s| s.written).sum();
    assert!(
        served <= size - partial + 1,
        "served {served} bytes of {size}, {partial} were on disk"
    );
    assert_eq!(
        std::fs::read(env.path("second/big.bin")).unwrap(),
        noise(6 << 20, 7)
    );
}

#[test]
fn two_processes_pull_each_blob_once_and_shared_base_layers_are_not_downloaded_again() {
    let reg = Registry::start();
    let base = layer(
        &[Entry::File("base.bin".into(), noise(2 << 20, 1), 0o644)],
        Compression::Gzip,
    );
    let mid = layer(
        &[Entry::File("mid.bin".into(), noise(1 << 20, 2), 0o644)],
        Compression::Gzip,
    );
    let top = layer(&[file("top", "a")], Compression::Gzip);
    let a = image::image(
        vec![base.clone(), mid.clone(), top.clone()],
        "linux/amd64",
        &[],
    );
    reg.push_image("test/a", "1", &a);
    let other = layer(&[file("other", "b")], Compression::Gzip);
    let b = image::image(vec![base.clone(), other.clone()], "linux/amd64", &[]);
    reg.push_image("test/b", "1", &b);
    let env = Env::new();
    let id = format!("docker-image://{}/test/a:1", reg.host);
    let spawn = |dest: &str| {
        env.command()
            .args([
                "source",
                "fetch",
                &id,
                "--platform",
                "linux/amd64",
                "--dest",
            ])
            .arg(env.path(dest))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (c1, c2) = (spawn("p1"), spawn("p2"));
    for c in [c1, c2] {
        let out: Run = c.wait_with_output().unwrap().into();
        out.success();
    }
    for d in ["p1", "p2"] {
        assert_eq!(
            std::fs::read(env.path(d).join("base.bin")).unwrap(),
            noise(2 << 20, 1)
        );
    }
    for l in [&base, &mid, &top] {
        let gets: Vec<_> = reg
            .blob_requests(&l.digest)
            .into_iter()
            .filter(|s| s.method == "GET")
            .collect();
        assert_eq!(
            gets.len(),
            1,
            "layer {} fetched {} times",
            l.digest,
            gets.len()
        );
    }
    fetch(
        &env,
        &format!("docker-image://{}/test/b:1", reg.host),
        "b",
        &["--platform", "linux/amd64"],
    )
    .success();
    assert_eq!(
        reg.blob_requests(&base.digest).len(),
        1,
        "the shared base layer was downloaded again"
    );
    assert_eq!(reg.blob_requests(&other.digest).len(), 1);
    assert!(env.path("b/other").is_file() && env.path("b/base.bin").is_file());
}

#[test]
fn offline_refetch_by_digest_and_with_resolvemode_local() {
    let reg = Registry::start();
    let img = two_layer("linux/amd64", "off");
    reg.push_image("test/off", "1", &img);
    let env = Env::new();
    let host = reg.host.clone();
    let by_tag = format!("docker-image://{host}/test/off:1");
    let by_digest = format!("docker-image://{host}/test/off@{}", img.manifest_digest);
    let p = ["--platform", "linux/amd64"];
    let (k, _) = keys(&resolve(&env, &by_tag, &p));
    fetch(&env, &by_tag, "online", &p).success();

    // Cached by digest: no request at all.
    let n = reg.served().len();
    let r = fetch(&env, &by_digest, "bydigest", &p);
    r.success();
    assert_eq!(r.json()["cached"], true);
    assert_eq!(reg.served().len(), n, "{:?}", &reg.served()[n..]);

    reg.stop();
    let (k2, _) = keys(&resolve(&env, &by_digest, &p));
    assert_eq!(k2, k);
    let r = fetch(&env, &by_digest, "offline-digest", &p);
    r.success();
    assert_eq!(read(&env.path("offline-digest/app/hello")), "hello off\n");
    let local = [
        "--platform",
        "linux/amd64",
        "--attr",
        "image.resolvemode=local",
    ];
    let (k3, pin) = keys(&resolve(&env, &by_tag, &local));
    assert_eq!((k3, pin), (k.clone(), img.manifest_digest.clone()));
    fetch(&env, &by_tag, "offline-local", &local).success();
    assert_eq!(read(&env.path("offline-local/app/hello")), "hello off\n");
    // resolvemode=pull needs the registry.
    let r = resolve(
        &env,
        &by_tag,
        &[
            "--platform",
            "linux/amd64",
            "--attr",
            "image.resolvemode=pull",
        ],
    );
    r.expect_code(1);
    assert!(r.stderr.contains(&host), "{}", r.stderr);
    // A digest kiln never pulled from this repository is not taken from the store.
    let r = resolve(
        &env,
        &format!("docker-image://{host}/test/other@{}", img.manifest_digest),
        &p,
    );
    r.expect_code(1);
}

#[test]
fn oci_layout_by_tag_and_digest() {
    let img = two_layer("linux/amd64", "layout");
    let env = Env::new();
    let dir = env.path("layout");
    image::write_layout(&dir, &img, "v1");
    let arg = format!("app={}", dir.display());
    let p = ["--platform", "linux/amd64", "--oci-layout", &arg];
    let (k, pin) = keys(&resolve(&env, "oci-layout://app:v1", &p));
    assert_eq!(pin, img.manifest_digest);
    assert_eq!(
        k[0],
        manifest_key(&img.manifest_digest, "linux", "amd64", None, None)
    );
    let (k2, pin2) = keys(&resolve(
        &env,
        &format!("oci-layout://app@{}", img.manifest_digest),
        &p,
    ));
    assert_eq!((k2, pin2), (k, pin));
    fetch(&env, "oci-layout://app:v1", "out", &p).success();
    assert_eq!(read(&env.path("out/app/hello")), "hello layout\n");
    let r = resolve(&env, "oci-layout://app:v2", &p);
    r.expect_code(1);
    assert!(r.stderr.contains("v2"), "{}", r.stderr);
    let r = resolve(
        &env,
        "oci-layout://nolayout:v1",
        &["--platform", "linux/amd64"],
    );
    r.expect_code(1);
    assert!(
        r.stderr.contains("--oci-layout nolayout=DIR"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_configured_mirror_serves_the_pull_when_the_registry_is_down() {
    let mirror = Registry::start();
    let img = two_layer("linux/amd64", "mirrored");
    mirror.push_image("test/m", "1", &img);
    // The registry named in the reference: nothing listens there.
    let origin = format!("127.0.0.1:{}", kiln_tests::registry::free_port());
    let env = Env::new();
    let config = registry_config(&env, &origin, &format!("mirrors = [{:?}]", mirror.host));
    let id = format!("docker-image://{origin}/test/m:1");
    let r = fetch(
        &env,
        &id,
        "out",
        &["--platform", "linux/amd64", "--config", &config],
    );
    r.success();
    assert_eq!(r.json()["pin"], img.manifest_digest.as_str());
    assert_eq!(read(&env.path("out/app/hello")), "hello mirrored\n");
    assert_eq!(mirror.blob_requests(&img.layers[0].digest).len(), 1);
    // Without the mirror the same pull fails, naming the registry.
    let env2 = Env::new();
    let r = fetch(&env2, &id, "out", &["--platform", "linux/amd64"]);
    r.expect_code(1);
    assert!(r.stderr.contains(&origin), "{}", r.stderr);
}

/// A registry (here the tests' HTTP server) that redirects blob requests to storage on
/// another host, as registries with presigned URLs do: the layers come from there, and a
/// connection cut in the middle of a layer is resumed with a `Range` request in the same
/// pull.
#[test]
fn blob_redirects_to_another_host_are_followed_and_cut_layers_resume() {
    let img = two_layer("linux/amd64", "redirect");
    let front = HttpServer::start();
    let storage = HttpServer::start();
    front.route("/v2/test/r/manifests/1", Route::bytes(img.manifest.clone()));
    front.route(
        &format!("/v2/test/r/blobs/{}", img.config_digest),
        Route::bytes(img.config.clone()),
    );
    for (i, l) in img.layers.iter().enumerate() {
        let path = format!("/blob{i}");
        let mut r = Route::bytes(l.blob.clone());
        r.cut_after = Some(l.blob.len() as u64 / 2);
        r.cuts = 1;
        storage.route(&path, r);
        let mut redirect = Route::bytes(Vec::new());
        redirect.redirect = Some(storage.url_with_host("localhost", &path));
        front.route(&format!("/v2/test/r/blobs/{}", l.digest), redirect);
    }
    let env = Env::new();
    let host = format!("127.0.0.1:{}", front.port());
    let r = fetch(
        &env,
        &format!("docker-image://{host}/test/r:1"),
        "out",
        &["--platform", "linux/amd64"],
    );
    r.success();
    assert_eq!(read(&env.path("out/app/hello")), "hello redirect\n");
    let seen = storage.requests();
    for i in 0..img.layers.len() {
        let path = format!("/blob{i}");
        let reqs: Vec<_> = seen.iter().filter(|s| s.path == path).collect();
        assert_eq!(reqs.len(), 2, "{reqs:?}");
        let half = img.layers[i].blob.len() / 2;
        assert_eq!(
            reqs[1].header("range"),
            Some(format!("bytes={half}-").as_str()),
            "{reqs:?}"
        );
    }
}
