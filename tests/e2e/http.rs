//! End-to-end tests of the http source: the real `kiln` binary and the real
//! `libkiln_source_http.so` against the loopback server of `kiln_tests::http_server`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kiln_tests::http_server::{HttpServer, Route};
use kiln_tests::{Env, Run};

/// BuildKit's TestHTTPSource value: `/foo` serving `content1`, no Last-Modified.
const FOO_KEY: &str = "sha256:0b1a154faa3003c1fbe7fda9c8a42d55fde2df2a2c405c32038f8ac7ed6b044a";
const CONTENT1_DIGEST: &str =
    "sha256:d0b425e00e15a0d36b9b361f02bab63563aed6cb4665083905386c55d5b679fa";

fn resolve(env: &Env, url: &str, extra: &[&str]) -> Run {
    let mut args = vec!["source", "resolve", url, "--json"];
    args.extend_from_slice(extra);
    env.kiln(args)
}

fn fetch(env: &Env, url: &str, dest: &str, extra: &[&str]) -> Run {
    let dest = env.path(dest);
    let mut args = vec![
        "source".to_string(),
        "fetch".into(),
        url.into(),
        "--json".into(),
        "--dest".into(),
        dest.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    env.kiln(args)
}

fn key_and_pin(run: &Run) -> (String, String) {
    run.success();
    let v = run.json();
    let key = v["keys"][0]["key"]
        .as_str()
        .expect("keys[0].key")
        .to_string();
    assert_eq!(v["keys"][0]["done"], true, "{v}");
    assert_eq!(v["keys"].as_array().map(Vec::len), Some(1), "{v}");
    (key, v["pin"].as_str().expect("pin").to_string())
}

/// Deterministic, incompressible-enough test data.
fn data(len: usize, seed: u32) -> Vec<u8> {
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

fn sha256_of(bytes: &[u8]) -> String {
    // Independent of the plugin: the `sha256sum` program.
    kiln_tests::require_program("sha256sum", "coreutils");
    let mut child = std::process::Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

#[test]
fn key_for_foo_is_buildkits_and_repeat_is_one_head() {
    let srv = HttpServer::start();
    srv.route("/foo", Route::bytes("content1").etag("\"e1\""));
    let env = Env::new();
    let (key, pin) = key_and_pin(&resolve(&env, &srv.url("/foo"), &[]));
    assert_eq!(key, FOO_KEY);
    assert_eq!(pin, CONTENT1_DIGEST);
    assert_eq!(srv.count("GET", "/foo"), 1);
    assert_eq!(srv.body_bytes(), 8);

    srv.reset_counters();
    let (key2, pin2) = key_and_pin(&resolve(&env, &srv.url("/foo"), &[]));
    assert_eq!((key2.as_str(), pin2.as_str()), (FOO_KEY, CONTENT1_DIGEST));
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].method, "HEAD");
    assert_eq!(reqs[0].header("if-none-match"), Some("\"e1\""));
    assert_eq!(reqs[0].header("accept-encoding"), Some("gzip"));
    assert_eq!(srv.body_bytes(), 0);

    // The ETag changes: a new key and the new content.
    srv.route("/foo", Route::bytes("content2").etag("\"e2\""));
    srv.reset_counters();
    let (key3, pin3) = key_and_pin(&resolve(&env, &srv.url("/foo"), &[]));
    assert_ne!(key3, FOO_KEY);
    assert_eq!(pin3, sha256_of(b"content2"));
    assert_eq!(
        (srv.count("HEAD", "/foo"), srv.count("GET", "/foo")),
        (1, 1)
    );
    let f = fetch(&env, &srv.url("/foo"), "out", &[]);
    f.success();
    assert_eq!(std::fs::read(env.path("out/foo")).unwrap(), b"content2");
}

#[test]
fn checksum_attr_makes_no_request_at_key_time() {
    let srv = HttpServer::start();
    srv.route("/foo", Route::bytes("content1"));
    let env = Env::new();
    let attr = format!("http.checksum={CONTENT1_DIGEST}");
    let (key, pin) = key_and_pin(&resolve(&env, &srv.url("/foo"), &["--attr", &attr]));
    assert_eq!((key.as_str(), pin.as_str()), (FOO_KEY, CONTENT1_DIGEST));
    assert_eq!(srv.requests().len(), 0);
    fetch(&env, &srv.url("/foo"), "out", &["--attr", &attr]).success();
    assert_eq!(std::fs::read(env.path("out/foo")).unwrap(), b"content1");
    assert_eq!(srv.count("GET", "/foo"), 1);
    // Cached: no request at all the second time.
    srv.reset_counters();
    fetch(&env, &srv.url("/foo"), "out2", &["--attr", &attr]).success();
    assert_eq!(srv.requests().len(), 0);
}

#[test]
fn wrong_checksum_fails_and_stores_nothing() {
    let srv = HttpServer::start();
    srv.route("/foo", Route::bytes("content1"));
    let env = Env::new();
    let wrong = sha256_of(b"something else");
    let run = fetch(
        &env,
        &srv.url("/foo"),
        "out",
        &["--attr", &format!("http.checksum={wrong}")],
    );
    run.expect_code(1);
    assert!(run.stderr.contains(&wrong), "{}", run.stderr);
    assert!(run.stderr.contains(CONTENT1_DIGEST), "{}", run.stderr);
    let blob = env
        .root()
        .join("content/blobs/sha256")
        .join(&CONTENT1_DIGEST["sha256:".len()..]);
    assert!(!blob.exists(), "{} was stored", blob.display());
}

#[test]
fn urls_sharing_an_etag_never_cross() {
    let srv = HttpServer::start();
    srv.route("/a", Route::bytes("aaa").etag("\"same\""));
    srv.route("/b", Route::bytes("bbb").etag("\"same\""));
    let env = Env::new();
    let (_, pa) = key_and_pin(&resolve(&env, &srv.url("/a"), &[]));
    let (_, pb) = key_and_pin(&resolve(&env, &srv.url("/b"), &[]));
    assert_eq!(pa, sha256_of(b"aaa"));
    assert_eq!(pb, sha256_of(b"bbb"));
    assert_eq!((srv.count("GET", "/a"), srv.count("GET", "/b")), (1, 1));
    assert_eq!(
        srv.count("HEAD", "/b"),
        0,
        "/b must not be revalidated with /a's ETag"
    );
}

#[test]
fn not_found_names_the_status_and_credentials_stay_hidden() {
    let srv = HttpServer::start();
    let env = Env::new();
    let url = srv
        .url("/missing")
        .replace("http://", "http://alice:pa55word@");
    let run = resolve(&env, &url, &["--log-level", "debug"]);
    run.expect_code(1);
    assert!(run.stderr.contains("404"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("pa55word") && !run.stdout.contains("pa55word"),
        "{}",
        run.stderr
    );
}

#[test]
fn connection_cut_halfway_is_resumed() {
    let srv = HttpServer::start();
    let body = data(8 << 20, 1);
    let mut route = Route::bytes(body.clone()).etag("\"big\"");
    route.cut_after = Some(3 << 20);
    route.cuts = 1;
    srv.route("/big", route);
    let env = Env::new();
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/big"), &[]));
    assert_eq!(pin, sha256_of(&body));
    let gets: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 2, "{gets:?}");
    let range = gets[1]
        .header("range")
        .expect("the second GET asks for a range");
    assert!(
        range.starts_with("bytes=") && range != "bytes=0-",
        "{range}"
    );
    assert_eq!(gets[1].header("if-range"), Some("\"big\""));
    assert_eq!(
        srv.body_bytes(),
        body.len() as u64,
        "bytes served: only the remainder was sent again"
    );
}

/// A resumed request answered with a 206 that stops short of the end (here bytes
/// 5000-5999 of 12032) is refused: the body is fetched whole, and what is stored,
/// recorded for the ETag and written out is the full body.
#[test]
fn short_206_on_resume_is_refused_and_the_whole_body_fetched() {
    let srv = HttpServer::start();
    let body = data(12_032, 4);
    let mut route = Route::bytes(body.clone()).etag("\"short\"");
    route.cut_after = Some(5_000);
    route.cuts = 1;
    route.short_ranges = Some(1_000);
    srv.route("/short", route);
    let env = Env::new();
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/short"), &[]));
    assert_eq!(pin, sha256_of(&body));
    let gets: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 3, "{gets:?}");
    assert_eq!(gets[0].body_bytes, 5_000, "{gets:?}");
    assert_eq!(gets[1].header("range"), Some("bytes=5000-"));
    assert_eq!(gets[1].status, 206);
    assert_eq!(
        (gets[2].header("range"), gets[2].status),
        (None, 200),
        "{gets:?}"
    );

    // The ETag now names the full body: a rerun revalidates and writes it whole.
    srv.reset_counters();
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/short"), &[]));
    assert_eq!(pin, sha256_of(&body));
    assert_eq!(srv.count("GET", "/short"), 0);
    fetch(&env, &srv.url("/short"), "out", &[]).success();
    assert_eq!(std::fs::read(env.path("out/short")).unwrap(), body);
}

/// A config loading the built http plugin with `config` as its configuration table.
fn http_config(env: &Env, config: &str) -> String {
    let so = kiln_tests::plugin_file("kiln_source_http");
    env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.source.v1.http\"]\npath = {:?}\n\
             [plugins.\"io.kiln.source.v1.http\".config]\n{config}\n",
            so.display().to_string()
        ),
    )
    .display()
    .to_string()
}

/// A server answering a plain GET with 206: a range holding the whole body is the
/// body; a short one is a failed attempt, and the retry limit ends it with an error
/// naming the answer (no endless loop of requests).
#[test]
fn a_206_to_a_plain_get_is_used_when_whole_and_bounded_when_short() {
    let srv = HttpServer::start();
    let body = data(12_032, 5);
    let mut whole = Route::bytes(body.clone()).etag("\"whole\"");
    whole.always_partial = true;
    srv.route("/whole", whole);
    let mut part = Route::bytes(body.clone()).etag("\"part\"");
    part.always_partial = true;
    part.short_ranges = Some(100);
    srv.route("/part", part);
    let env = Env::new();
    let config = http_config(&env, "retries = 2\nretry_backoff_ms = 10");

    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/whole"), &["--config", &config]));
    assert_eq!(pin, sha256_of(&body));
    let gets: Vec<_> = srv
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(gets.len(), 1, "{gets:?}");
    assert_eq!(gets[0].status, 206);

    let started = Instant::now();
    let run = resolve(&env, &srv.url("/part"), &["--config", &config]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("206")
            && run.stderr.contains("bytes 0-99/12032")
            && run.stderr.contains("2 retries"),
        "{}",
        run.stderr
    );
    assert_eq!(srv.count("GET", "/part"), 3, "{:?}", srv.requests());
    assert!(started.elapsed() < Duration::from_secs(30));
    // Nothing of it was stored.
    let blob = env
        .root()
        .join("content/blobs/sha256")
        .join(&sha256_of(&body[..100])["sha256:".len()..]);
    assert!(!blob.exists(), "{} was stored", blob.display());
}

#[test]
fn kill_9_mid_download_then_rerun_fetches_only_the_remainder() {
    let srv = HttpServer::start();
    let body = data(24 << 20, 2);
    let mut slow = Route::bytes(body.clone()).etag("\"k9\"");
    slow.rate = Some(4 << 20);
    srv.route("/k9", slow);
    let env = Env::new();
    let mut child = env
        .command()
        .args(["source", "resolve", &srv.url("/k9"), "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn kiln");
    let started = Instant::now();
    while srv.body_bytes() < (10 << 20) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the download never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("kill -9"); // SIGKILL
    child.wait().unwrap();
    // The server records the cut request when its handler notices the closed
    // connection; wait for that record, or it would land among the rerun's.
    let started = Instant::now();
    while !srv.requests().iter().any(|r| r.path == "/k9") {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the cut request was never recorded"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = srv.body_bytes();
    srv.route("/k9", Route::bytes(body.clone()).etag("\"k9\""));
    srv.reset_counters();
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/k9"), &[]));
    assert_eq!(pin, sha256_of(&body));
    let second = srv.body_bytes();
    let len = body.len() as u64;
    assert!(
        second < len - (4 << 20),
        "the rerun downloaded {second} of {len} bytes (first run sent {first})"
    );
    let get = srv
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("a GET");
    assert!(get.header("range").is_some(), "{get:?}");
}

#[test]
fn token_secret_reaches_the_server_and_never_the_output() {
    let srv = HttpServer::start();
    let mut r = Route::bytes("private");
    r.require_authorization = Some("Bearer s3cr3t-t0ken".into());
    srv.route("/private", r);
    let env = Env::new();
    let unauth = resolve(&env, &srv.url("/private"), &[]);
    unauth.expect_code(1);
    assert!(unauth.stderr.contains("401"), "{}", unauth.stderr);

    let secret = env.write("token", "s3cr3t-t0ken\n");
    let spec = format!("id=HTTP_AUTH_TOKEN_127.0.0.1,src={}", secret.display());
    let run = resolve(
        &env,
        &srv.url("/private"),
        &["--secret", &spec, "--log-level", "trace"],
    );
    let (_, pin) = key_and_pin(&run);
    assert_eq!(pin, sha256_of(b"private"));
    assert!(!run.stdout.contains("s3cr3t") && !run.stderr.contains("s3cr3t"));
    let last = srv.requests().pop().unwrap();
    assert_eq!(last.header("authorization"), Some("Bearer s3cr3t-t0ken"));
}

#[test]
fn redirect_to_another_host_carries_no_authorization() {
    let srv = HttpServer::start();
    let r = Route {
        redirect: Some(srv.url_with_host("localhost", "/target")),
        ..Route::default()
    };
    srv.route("/start", r);
    srv.route("/target", Route::bytes("moved"));
    let env = Env::new();
    let secret = env.write("hdr", "Basic dXNlcjpwYXNz");
    let spec = format!("id=HTTP_AUTH_HEADER_127.0.0.1,src={}", secret.display());
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/start"), &["--secret", &spec]));
    assert_eq!(pin, sha256_of(b"moved"));
    let reqs = srv.requests();
    let start = reqs.iter().find(|r| r.path == "/start").unwrap();
    let target = reqs.iter().find(|r| r.path == "/target").unwrap();
    assert_eq!(start.header("authorization"), Some("Basic dXNlcjpwYXNz"));
    assert_eq!(target.header("authorization"), None, "{target:?}");
    assert_eq!(
        target.header("host").map(|h| h.starts_with("localhost:")),
        Some(true)
    );
}

#[test]
fn gzip_encoded_body_is_decoded() {
    let srv = HttpServer::start();
    let mut r = Route::bytes("zipped content").etag("\"gz\"");
    r.gzip = true;
    srv.route("/gz", r);
    let env = Env::new();
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/gz"), &[]));
    assert_eq!(pin, sha256_of(b"zipped content"));
    let get = srv
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .unwrap();
    assert!(get
        .header("accept-encoding")
        .is_some_and(|v| v.contains("gzip")));
}

#[test]
fn odd_304_answers_fall_back_to_a_full_get() {
    let srv = HttpServer::start();
    srv.route("/odd", Route::bytes("v1").etag("\"o1\""));
    let env = Env::new();
    key_and_pin(&resolve(&env, &srv.url("/odd"), &[]));
    // Now the server answers conditional requests with an ETag it never sent.
    let mut odd = Route::bytes("v2").etag("\"o2\"");
    odd.odd_not_modified_etag = Some("\"never-seen\"".into());
    srv.route("/odd", odd);
    let (_, pin) = key_and_pin(&resolve(&env, &srv.url("/odd"), &[]));
    assert_eq!(pin, sha256_of(b"v2"));
}

#[test]
fn file_name_mode_and_mtime_rules() {
    let srv = HttpServer::start();
    let mut r = Route::bytes("cd body");
    r.content_disposition = Some("attachment; filename=\"../../evil.txt\"".into());
    r.last_modified = Some("Sun, 06 Nov 1994 08:49:37 GMT".into());
    srv.route("/dl/x", r);
    srv.route("/", Route::bytes("root"));
    let env = Env::new();
    fetch(&env, &srv.url("/dl/x"), "a", &["--attr", "http.perm=0644"]).success();
    let md =
        std::fs::metadata(env.path("a/evil.txt")).expect("file named from Content-Disposition");
    assert_eq!(md.permissions().mode() & 0o7777, 0o644);
    assert_eq!(md.mtime(), 784_111_777);
    fetch(&env, &srv.url("/"), "b", &[]).success();
    let md = std::fs::metadata(env.path("b/download")).expect("default name");
    assert_eq!(md.permissions().mode() & 0o7777, 0o600);
    assert_eq!(md.mtime(), 0);
}

#[test]
fn two_processes_fetching_one_url_download_it_once() {
    let srv = HttpServer::start();
    let body = data(6 << 20, 3);
    let mut r = Route::bytes(body.clone()).etag("\"two\"");
    r.rate = Some(8 << 20);
    srv.route("/two", r);
    let env = Env::new();
    let spawn = || {
        env.command()
            .args(["source", "resolve", &srv.url("/two"), "--json"])
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
    assert_eq!(key_and_pin(&a), key_and_pin(&b));
    assert_eq!(srv.count("GET", "/two"), 1, "{:?}", srv.requests());
    assert_eq!(srv.body_bytes(), body.len() as u64);
}

/// `kiln build` uses an http step like any source: its file is copied by a later step,
/// its pin is recorded in the metadata file, and an unchanged rebuild revalidates with
/// one HEAD and downloads nothing.
#[test]
fn a_build_with_an_http_step_uses_it_like_any_source() {
    let srv = HttpServer::start();
    srv.route(
        "/tool.sh",
        Route::bytes("#!/bin/sh\necho tool\n").etag("\"t1\""),
    );
    let env = Env::new();
    let def = env.write(
        "proj/build.toml",
        format!(
            r#"
version = 1
[steps.tool]
source = "{url}"
attrs = {{ "http.perm" = "0755", "http.filename" = "tool" }}
[steps.app]
base = "scratch"
actions = [
  {{ copy = {{ from = "tool", src = "/tool", dest = "/usr/bin/tool" }} }},
  {{ mkfile = {{ path = "/motd", data = "hi\n" }} }},
]
[output]
step = "app"
"#,
            url = srv.url("/tool.sh")
        ),
    );
    let out = env.path("out");
    let meta = env.path("meta.json");
    let run = env.kiln([
        "--progress".as_ref(),
        "json".as_ref(),
        "build".as_ref(),
        def.as_os_str(),
        "--output".as_ref(),
        format!("type=local,dest={}", out.display()).as_ref(),
        "--metadata-file".as_ref(),
        meta.as_os_str(),
    ]);
    run.success();
    let tool = out.join("usr/bin/tool");
    assert_eq!(
        std::fs::read_to_string(&tool).unwrap(),
        "#!/bin/sh\necho tool\n"
    );
    assert_eq!(std::fs::metadata(&tool).unwrap().mode() & 0o777, 0o755);
    assert_eq!(srv.count("GET", "/tool.sh"), 1);
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let text = meta.to_string();
    let digest = format!("sha256:{}", sha256_hex(b"#!/bin/sh\necho tool\n"));
    assert!(
        text.contains(&srv.url("/tool.sh")) && text.contains(&digest),
        "{text}"
    );

    // Unchanged: one HEAD, no body, every step cached.
    srv.reset_counters();
    let run = env.kiln([
        "--progress".as_ref(),
        "json".as_ref(),
        "build".as_ref(),
        def.as_os_str(),
    ]);
    run.success();
    assert_eq!(srv.count("GET", "/tool.sh"), 0);
    assert_eq!(srv.count("HEAD", "/tool.sh"), 1);
    assert_eq!(srv.body_bytes(), 0);
    let cached = run
        .stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"cached\""))
        .count();
    assert_eq!(cached, 2, "{}", run.stderr);
}

fn sha256_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d");
    std::fs::write(&p, data).unwrap();
    let out = std::process::Command::new("sha256sum")
        .arg(&p)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// The proxy variables, cleared so that a test sees only what it sets.
const PROXY_VARS: [&str; 6] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// `kiln source resolve URL --json ARGS` with these proxy variables (and no others).
fn resolve_with_env(env: &Env, url: &str, vars: &[(&str, String)], args: &[&str]) -> Run {
    let mut cmd = env.command();
    cmd.args(["source", "resolve", url, "--json"]).args(args);
    for v in PROXY_VARS {
        cmd.env_remove(v);
    }
    cmd.envs(vars.iter().map(|(k, v)| (k, v)));
    cmd.output().expect("run kiln").into()
}

/// As Go's client does, a loopback host never goes through the environment's proxy
/// (here one that nothing listens on).
#[test]
fn loopback_ignores_an_unreachable_http_proxy() {
    let srv = HttpServer::start();
    srv.route("/foo", Route::bytes("content1").etag("\"e1\""));
    let env = Env::new();
    let dead = "http://127.0.0.1:9".to_string();
    let vars = [("HTTP_PROXY", dead.clone()), ("HTTPS_PROXY", dead)];
    let (key, pin) = key_and_pin(&resolve_with_env(&env, &srv.url("/foo"), &vars, &[]));
    assert_eq!((key.as_str(), pin.as_str()), (FOO_KEY, CONTENT1_DIGEST));
    let (_, pin) = key_and_pin(&resolve_with_env(
        &env,
        &srv.url_with_host("localhost", "/foo"),
        &vars,
        &[],
    ));
    assert_eq!(pin, CONTENT1_DIGEST);
    assert!(srv.requests().iter().all(|r| r.proxied_to.is_none()));
}

/// Other hosts go through `HTTP_PROXY` (the test server acting as the proxy of a
/// name that never resolves), chosen per redirect hop; `NO_PROXY` sends them direct.
#[test]
fn http_proxy_from_the_environment_is_used_per_hop_and_no_proxy_bypasses_it() {
    let srv = HttpServer::start();
    let far = format!("http://kiln-proxy-test.invalid:{}", srv.port());
    srv.route("/px", Route::bytes("via proxy").etag("\"px\""));
    srv.route(
        "/hop",
        Route {
            redirect: Some(format!("{far}/px")),
            ..Route::default()
        },
    );
    let env = Env::new();
    let proxy = vec![("http_proxy", srv.url(""))];
    let (_, pin) = key_and_pin(&resolve_with_env(&env, &format!("{far}/px"), &proxy, &[]));
    assert_eq!(pin, sha256_of(b"via proxy"));
    let get = srv
        .requests()
        .into_iter()
        .find(|r| r.method == "GET")
        .expect("a GET through the proxy");
    assert_eq!(get.proxied_to.as_deref(), Some(far.as_str()), "{get:?}");
    assert_eq!(get.path, "/px");

    // The first hop is loopback (direct), the second goes through the proxy.
    srv.reset_counters();
    let (_, pin) = key_and_pin(&resolve_with_env(&env, &srv.url("/hop"), &proxy, &[]));
    assert_eq!(pin, sha256_of(b"via proxy"));
    let reqs = srv.requests();
    let hop = reqs.iter().find(|r| r.path == "/hop").expect("/hop");
    assert_eq!(hop.proxied_to, None, "{hop:?}");
    assert!(
        reqs.iter()
            .any(|r| r.path == "/px" && r.proxied_to.as_deref() == Some(far.as_str())),
        "{reqs:?}"
    );

    // Excepted by NO_PROXY: direct, so the name must resolve, and it never does.
    srv.reset_counters();
    let mut vars = proxy.clone();
    vars.push(("NO_PROXY", "example.com, .invalid".into()));
    let config = http_config(&env, "retries = 0");
    let run = resolve_with_env(&env, &format!("{far}/px?2"), &vars, &["--config", &config]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("kiln-proxy-test.invalid"),
        "{}",
        run.stderr
    );
    assert_eq!(srv.requests().len(), 0, "{:?}", srv.requests());
}
