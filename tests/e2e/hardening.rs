//! Hardening (issue 9): hostile inputs, full disks, signals and special files, each
//! driven through the real `kiln` binary.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use kiln_tests::{Env, Run};

/// A definition whose output is a small tree made by file actions alone.
fn small_def(env: &Env) -> PathBuf {
    env.write(
        "proj/kiln.build.toml",
        r#"
version = 1
[steps.etc]
base = "scratch"
actions = [
  { mkdir = { path = "/kiln-harden-probe" } },
  { mkfile = { path = "/kiln-harden-probe/motd", data = "hello from kiln\n" } },
]
[output]
step = "etc"
"#,
    )
}

fn build(env: &Env, def: &Path, extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec![
        "--progress".into(),
        "plain".into(),
        "build".into(),
        def.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    env.kiln(&args)
}

/// The first JSON value on stdout (a failing command with `--json` prints its report,
/// then an `{"error": …}` object).
fn first_json(run: &Run) -> serde_json::Value {
    serde_json::Deserializer::from_str(&run.stdout)
        .into_iter::<serde_json::Value>()
        .next()
        .unwrap_or_else(|| panic!("no JSON on stdout:\n{}\n{}", run.stdout, run.stderr))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", run.stdout))
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// A character device node like `/dev/null` (1,3) or `/dev/full` (1,7), made by the test
/// in its own folder so a broken exporter can only damage the test's copy.
fn char_device(path: &Path, major: u32, minor: u32) {
    let rc = unsafe {
        libc::mknod(
            cpath(path).as_ptr(),
            libc::S_IFCHR | 0o666,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(
        rc,
        0,
        "mknod {}: {} (this test runs as root, with CAP_MKNOD, like the suite)",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn fifo(path: &Path) {
    let rc = unsafe { libc::mkfifo(cpath(path).as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// Reads a FIFO to its end on a thread (the writer blocks until a reader opens it).
fn drain(path: &Path) -> std::thread::JoinHandle<Vec<u8>> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::fs::File::open(&path)
            .expect("open fifo")
            .read_to_end(&mut buf)
            .expect("read fifo");
        buf
    })
}

fn is_char_device(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// 1. File outputs never destroy what they are pointed at.

#[test]
fn tar_and_metadata_to_a_null_device_keep_the_device() {
    let env = Env::new();
    let def = small_def(&env);
    let null = env.path("null");
    char_device(&null, 1, 3);
    let spec = format!("type=tar,dest={}", null.display());
    let oci = format!("type=oci,dest={}", null.display());
    let meta = null.display().to_string();
    build(
        &env,
        &def,
        &[
            "--output",
            &spec,
            "--output",
            &oci,
            "--metadata-file",
            &meta,
        ],
    )
    .success();
    assert!(is_char_device(&null), "the device node was replaced");
}

#[test]
fn tar_to_a_fifo_streams_the_archive() {
    let env = Env::new();
    let def = small_def(&env);
    let pipe = env.path("out.fifo");
    fifo(&pipe);
    let reader = drain(&pipe);
    let spec = format!("type=tar,dest={}", pipe.display());
    build(&env, &def, &["--output", &spec]).success();
    let bytes = reader.join().expect("reader");
    assert!(
        std::fs::symlink_metadata(&pipe)
            .unwrap()
            .file_type()
            .is_fifo(),
        "the FIFO was replaced"
    );
    let mut ar = tar::Archive::new(&bytes[..]);
    let names: Vec<String> = ar
        .entries()
        .expect("a tar")
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(
        names.iter().any(|n| n == "kiln-harden-probe/motd"),
        "{names:?}"
    );

    // The metadata file goes through the same writer.
    let reader = drain(&pipe);
    build(
        &env,
        &def,
        &["--metadata-file", &pipe.display().to_string()],
    )
    .success();
    let meta: serde_json::Value =
        serde_json::from_slice(&reader.join().unwrap()).expect("metadata JSON");
    assert_eq!(meta["output"]["step"], "etc");
}

#[test]
fn a_full_device_fails_the_build() {
    let env = Env::new();
    let def = small_def(&env);
    let full = env.path("full");
    char_device(&full, 1, 7);
    for spec in [
        format!("type=tar,dest={}", full.display()),
        format!("type=oci,dest={}", full.display()),
    ] {
        let run = build(&env, &def, &["--output", &spec]);
        run.expect_code(1);
        assert!(
            run.stderr.contains("No space left on device") && run.stderr.contains("full"),
            "{spec}: {}",
            run.stderr
        );
        assert!(is_char_device(&full));
    }
    let run = build(
        &env,
        &def,
        &["--metadata-file", &full.display().to_string()],
    );
    run.expect_code(1);
    assert!(
        run.stderr.contains("No space left on device"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_regular_file_is_still_replaced_and_a_link_keeps_pointing_at_it() {
    let env = Env::new();
    let def = small_def(&env);
    let real = env.write("out/real.tar", "old");
    let link = env.path("out/link.tar");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let spec = format!("type=tar,dest={}", link.display());
    build(&env, &def, &["--output", &spec]).success();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(std::fs::metadata(&real).unwrap().len() > 512);
}

#[test]
fn local_output_into_root_or_store_is_refused() {
    let env = Env::new();
    let def = small_def(&env);
    let root = env.root();
    let inside = root.join("snapshots/x");
    for dest in [
        PathBuf::from("/"),
        PathBuf::from("/tmp/.."),
        root.clone(),
        inside.clone(),
        env.dir.path().to_path_buf(),
    ] {
        let spec = format!("type=local,dest={}", dest.display());
        let run = build(&env, &def, &["--output", &spec]);
        run.expect_code(1);
        assert!(run.stderr.contains("refused"), "{spec}: {}", run.stderr);
    }
    assert!(!inside.exists());
    assert!(!Path::new("/kiln-harden-probe").exists());
    let ok = env.path("exported");
    let spec = format!("type=local,dest={}", ok.display());
    build(&env, &def, &["--output", &spec]).success();
    assert_eq!(
        std::fs::read_to_string(ok.join("kiln-harden-probe/motd")).unwrap(),
        "hello from kiln\n"
    );
}

// ---------------------------------------------------------------------------------------
// 2. A cut plugin file is refused with one line, never a SIGBUS.

fn sha256_hex(bytes: &[u8]) -> String {
    let out = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bytes)?;
            c.wait_with_output()
        })
        .expect("sha256sum (coreutils)");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn cut_plugin_files_are_refused_by_name_at_every_length() {
    let env = Env::new();
    let whole = std::fs::read(kiln_tests::plugin_file("kiln_source_local")).unwrap();
    let http = kiln_tests::plugin_file("kiln_source_http");
    let n = whole.len();
    for cut in [16, 64, 100, 1000, 4096, 65536, n / 2, n - 4096, n - 1] {
        let lib = env.write(&format!("libcut{cut}.so"), &whole[..cut]);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
        for pin in [None, Some(sha256_hex(&whole[..cut]))] {
            let pin_line = pin
                .map(|p| format!("sha256 = \"{p}\"\n"))
                .unwrap_or_default();
            let config = env.write(
                "kiln.toml",
                format!(
                    "version = 1\n[plugins.\"io.kiln.source.v1.local\"]\npath = {:?}\n{pin_line}\
                     [plugins.\"io.kiln.source.v1.http\"]\npath = {:?}\n",
                    lib.display().to_string(),
                    http.display().to_string()
                ),
            );
            let config = config.display().to_string();
            for args in [
                vec!["--config", &config, "plugins", "list"],
                vec!["--config", &config, "config", "check"],
                vec!["--config", &config, "plugins", "list", "--json"],
            ] {
                let run = env.kiln(&args);
                assert!(
                    run.code == 0 || run.code == 2,
                    "cut at {cut}: {args:?} died (code {}): {}",
                    run.code,
                    run.stderr
                );
                let all = format!("{}{}", run.stdout, run.stderr);
                assert!(
                    all.contains(&format!("libcut{cut}.so")),
                    "cut at {cut}: the file is not named: {all}"
                );
                assert!(!all.contains("Bus error"), "{all}");
            }
            let run = env.kiln(["--config", &config, "plugins", "list", "--json"]);
            let list = first_json(&run);
            let local = list
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == "io.kiln.source.v1.local")
                .unwrap()
                .clone();
            assert_eq!(local["status"], "failed", "cut at {cut}: {local}");
            let http = list
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["id"] == "io.kiln.source.v1.http")
                .unwrap()
                .clone();
            assert_eq!(http["status"], "loaded", "{http}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Hostile servers of the tests: raw TCP on loopback, so each can break HTTP its own way.

/// Starts a server on a free loopback port that reads each request's head and hands
/// the connection and the head (request line and header fields) to `answer`; returns
/// `http://127.0.0.1:PORT`.
fn raw_server<F>(answer: F) -> String
where
    F: Fn(std::net::TcpStream, String) + Send + Sync + 'static,
{
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().unwrap();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
                // The request line and the header fields, as received.
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => head.push_str(&line),
                    }
                }
                answer(conn, head);
            });
        }
    });
    format!("http://{addr}")
}

fn send(mut conn: &std::net::TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    conn.write_all(bytes)?;
    conn.flush()
}

/// Runs `kiln ARGS` with stderr on a pseudo-terminal (so `--progress tty` draws) and
/// returns what the terminal received.
fn kiln_on_pty(env: &Env, args: &[&str]) -> (i32, Vec<u8>) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    let mut master = unsafe { std::fs::File::from_raw_fd(master) };
    let slave = unsafe { std::os::fd::OwnedFd::from_raw_fd(slave) };
    let mut child = {
        let mut c = env.command();
        c.args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(slave));
        c.spawn().expect("spawn kiln")
    };
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the last writer (kiln) closed the terminal.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    });
    let status = child.wait().expect("wait");
    (status.code().unwrap_or(-1), reader.join().unwrap())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------
// 5. Reads have bounds.

#[test]
fn endless_definition_and_config_are_refused() {
    let env = Env::new();
    let run = env.kiln(["build", "/dev/zero"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("/dev/zero") && run.stderr.contains("larger than 8 MiB"),
        "{}",
        run.stderr
    );
    let run = env.kiln(["--config", "/dev/zero", "plugins", "list"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("/dev/zero") && run.stderr.contains("larger than 4 MiB"),
        "{}",
        run.stderr
    );
    // A secret file is read with a cap too.
    let def = small_def(&env);
    let run = build(&env, &def, &["--secret", "id=x,src=/dev/zero"]);
    run.expect_code(2);
    assert!(run.stderr.contains("larger than 512 KiB"), "{}", run.stderr);
    // An inline mkfile over its cap is refused with the step and action named.
    let big = "x".repeat(2 << 20);
    let def = env.write(
        "big/kiln.build.toml",
        format!(
            "version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{{ mkfile = {{ path = \"/f\", data = \"{big}\" }} }}]\n[output]\nstep = \"a\"\n"
        ),
    );
    let run = build(&env, &def, &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("step `a`") && run.stderr.contains("limit of 1024 KiB"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.len() < 2000, "{}", run.stderr.len());
}

// ---------------------------------------------------------------------------------------
// 6. Escape sequences from input or the network never reach the terminal raw.

const EVIL: &str = "\x1b[2J\x1b[31mFAKE";

/// A server whose 404 answers carry an escape sequence in the reason phrase and in
/// the body.
fn evil_server() -> String {
    raw_server(|conn, _| {
        let body = format!("no such file{EVIL}\n");
        let _ = send(
            &conn,
            format!(
                "HTTP/1.1 404 Not{EVIL}Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    })
}

fn assert_escaped(out: &[u8], what: &str) {
    assert!(
        !contains(out, b"\x1b[2J") && !contains(out, b"\x1b[31m"),
        "{what}: a raw escape sequence reached the terminal:\n{}",
        String::from_utf8_lossy(out)
    );
    assert!(
        contains(out, b"\\e[2J"),
        "{what}: the escaped form is missing:\n{}",
        String::from_utf8_lossy(out)
    );
}

#[test]
fn escape_sequences_are_shown_escaped_in_every_mode() {
    let env = Env::new();
    let url = format!("{}/ok{EVIL}", evil_server());
    // `source resolve`: its error and its progress, plain.
    let run = env.kiln(["--progress", "plain", "source", "resolve", &url]);
    assert_ne!(run.code, 0);
    assert_escaped(
        format!("{}{}", run.stdout, run.stderr).as_bytes(),
        "resolve",
    );

    // A build whose source identifier and step come from the definition.
    let def = env.write(
        "evil/kiln.build.toml",
        format!(
            "version = 1\n[steps.get]\nsource = {:?}\n[output]\nstep = \"get\"\n",
            url
        )
        .replace("\\u{1b}", "\\u001b"),
    );
    let def = def.display().to_string();
    for mode in ["plain", "tty"] {
        let (code, out) = kiln_on_pty(&env, &["--progress", mode, "build", &def]);
        assert_eq!(code, 1, "{}", String::from_utf8_lossy(&out));
        assert_escaped(&out, mode);
    }
    // Logs at debug level go through the same escaping.
    let run = env.kiln(["--log-level", "debug", "--progress", "plain", "build", &def]);
    assert_escaped(run.stderr.as_bytes(), "debug log");
}

// ---------------------------------------------------------------------------------------
// 9. Errors stay short and say what was expected.

#[test]
fn errors_echo_input_shortened_and_say_what_was_expected() {
    let env = Env::new();
    let base = evil_server();
    let url = format!("{base}/{}", "a".repeat(100_000));
    let run = env.kiln(["--progress", "plain", "source", "resolve", &url]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.len() < 8_000,
        "{} bytes:\n{}",
        run.stderr.len(),
        &run.stderr[..2000]
    );
    assert!(run.stderr.contains("bytes)…"), "{}", run.stderr);

    // Deeply nested TOML: line and column, no echo of the line.
    let nested = format!(
        "version = 1\nx = {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let def = env.write("nested/kiln.build.toml", &nested);
    let run = build(&env, &def, &[]);
    run.expect_code(2);
    assert!(run.stderr.len() < 1_000, "{} bytes", run.stderr.len());
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);
    let cfg = env.write("nested.toml", &nested);
    let run = env.kiln(["--config", &cfg.display().to_string(), "plugins", "list"]);
    run.expect_code(2);
    assert!(run.stderr.len() < 1_000, "{} bytes", run.stderr.len());
    assert!(run.stderr.contains("line 2"), "{}", run.stderr);

    // A float mode says what a mode looks like.
    let def = env.write(
        "float/kiln.build.toml",
        "version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkfile = { path = \"/a\", mode = 1.5 } }]\n[output]\nstep = \"a\"\n",
    );
    let run = build(&env, &def, &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("step `a`")
            && run
                .stderr
                .contains("expected an octal string like \"0755\"")
            && !run.stderr.contains("untagged"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------
// 7. Files under the root never follow a planted symlink.

#[test]
fn a_planted_lock_symlink_is_refused_and_pruned() {
    let env = Env::new();
    let def = small_def(&env);
    build(&env, &def, &[]).success();
    let outside = env.path("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let locks = env.root().join("locks");
    let mut planted = 0;
    for e in std::fs::read_dir(&locks).unwrap() {
        let e = e.unwrap();
        let name = e.file_name();
        if name.to_string_lossy().starts_with("key-") {
            std::fs::remove_file(e.path()).unwrap();
            std::os::unix::fs::symlink(outside.join(&name), e.path()).unwrap();
            planted += 1;
        }
    }
    assert!(planted > 0, "the build left no key lock to plant a link at");
    let run = build(&env, &def, &["--no-cache"]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("symlink under the kiln root"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "kiln created a file through the link"
    );

    // The whole locks folder as a link: refused as well.
    env.kiln(["cache", "prune"]).success();
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    build(&env, &def, &["--no-cache"]).success();
    std::fs::rename(&locks, env.path("old-locks")).unwrap();
    std::os::unix::fs::symlink(&outside, &locks).unwrap();
    let run = build(&env, &def, &["--no-cache"]);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("symlink"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        0,
        "kiln created a file through the link"
    );
}

// ---------------------------------------------------------------------------------------
// 4. HTTP bodies have bounds, and broken framing fails at once.

/// A config loading the built http plugin with `config` as its configuration table.
fn http_config(env: &Env, config: &str) -> String {
    let so = kiln_tests::plugin_file("kiln_source_http");
    env.write(
        "http.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.source.v1.http\"]\npath = {:?}\n\
             [plugins.\"io.kiln.source.v1.http\".config]\n{config}\n",
            so.display().to_string()
        ),
    )
    .display()
    .to_string()
}

fn http_fetch(env: &Env, config: &str, url: &str, extra: &[&str]) -> Run {
    let dest = env.path(&format!("out-{}", kiln_tests_rand()));
    let mut args = vec![
        "--config".to_string(),
        config.to_string(),
        "--progress".into(),
        "plain".into(),
        "source".into(),
        "fetch".into(),
        url.into(),
        "--dest".into(),
        dest.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    env.kiln(args)
}

fn kiln_tests_rand() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Counts connections to a raw server.
fn counted<F>(answer: F) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>)
where
    F: Fn(std::net::TcpStream, String) + Send + Sync + 'static,
{
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let url = raw_server(move |c, l| {
        n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        answer(c, l)
    });
    (url, n)
}

#[test]
fn a_body_without_length_stops_at_the_size_limit() {
    let env = Env::new();
    let config = http_config(
        &env,
        "max_body_bytes = 1048576\nretries = 2\nretry_backoff_ms = 10",
    );
    let (url, hits) = counted(|conn, _| {
        let _ = send(&conn, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![b'x'; 64 << 10];
        // 3 MiB, then the connection closes: no length was announced.
        for _ in 0..48 {
            if send(&conn, &chunk).is_err() {
                return;
            }
        }
    });
    let run = http_fetch(&env, &config, &format!("{url}/big"), &[]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("larger than the limit of 1048576 bytes")
            && run.stderr.contains("max_body_bytes"),
        "{}",
        run.stderr
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a size refusal is not retried"
    );
    // Nothing of it stays in the store.
    let du = env.kiln(["--config", &config, "cache", "du", "--json"]);
    du.success();
    assert_eq!(
        du.json()["ingests"]["bytes"].as_u64().unwrap_or(0),
        0,
        "{}",
        du.stdout
    );

    // The per-source attribute raises the limit for this one source.
    let run = http_fetch(
        &env,
        &config,
        &format!("{url}/big"),
        &["--attr", "http.maxsize=4194304"],
    );
    run.success();
    // An announced length over the limit fails before the body is read.
    let (url2, _) = counted(|conn, _| {
        let _ = send(
            &conn,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5000000000\r\n\r\nxx",
        );
    });
    let run = http_fetch(&env, &config, &format!("{url2}/huge"), &[]);
    run.expect_code(1);
    assert!(run.stderr.contains("5000000000"), "{}", run.stderr);
}

#[test]
fn a_gzip_bomb_is_refused() {
    use std::io::Write;
    let env = Env::new();
    let config = http_config(&env, "retries = 0");
    // 256 MiB of zeros gzip to about 250 KiB: a 1000:1 inflation.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    let bomb = std::sync::Arc::new(gz.finish().unwrap());
    let (url, _) = counted(move |conn, _| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\r\n",
            bomb.len()
        );
        let _ = send(&conn, head.as_bytes()).and_then(|_| send(&conn, &bomb));
    });
    let run = http_fetch(&env, &config, &format!("{url}/bomb.txt"), &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("decompression bomb") && run.stderr.contains("max_decompression_ratio"),
        "{}",
        run.stderr
    );
    let du = env.kiln(["--config", &config, "cache", "du", "--json"]);
    assert_eq!(
        du.json()["ingests"]["bytes"].as_u64().unwrap_or(0),
        0,
        "{}",
        du.stdout
    );
}

#[test]
fn a_dribbling_body_meets_the_low_speed_rule_and_the_deadline() {
    let env = Env::new();
    let dribble = |conn: std::net::TcpStream, _| {
        let _ = send(&conn, b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
        for _ in 0..100_000 {
            if send(&conn, b"x").is_err() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    let (url, _) = counted(dribble);
    let config = http_config(
        &env,
        "retries = 0\nlow_speed_limit_bytes = 100\nlow_speed_time_secs = 2",
    );
    let started = std::time::Instant::now();
    let run = http_fetch(&env, &config, &format!("{url}/slow"), &[]);
    run.expect_code(1);
    assert!(
        run.stderr.contains("slower than 100 bytes/s for 2 s"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed().as_secs() < 60);

    // With the low-speed rule off, the overall deadline still ends it, retries included.
    let config = http_config(
        &env,
        "retries = 10\nretry_backoff_ms = 10\nlow_speed_limit_bytes = 0\ndeadline_secs = 3\nread_timeout_secs = 1",
    );
    let run = http_fetch(&env, &config, &format!("{url}/slow"), &[]);
    run.expect_code(1);
    assert!(run.stderr.contains("deadline_secs = 3"), "{}", run.stderr);
}

#[test]
fn bad_lengths_and_non_http_answers_fail_without_retries() {
    let env = Env::new();
    let config = http_config(&env, "retries = 3\nretry_backoff_ms = 10");
    let heads: Vec<(&str, String)> = vec![
        ("negative", "Content-Length: -1\r\n".into()),
        ("not a number", "Content-Length: 12abc\r\n".into()),
        (
            "overflow",
            "Content-Length: 99999999999999999999999\r\n".into(),
        ),
        (
            "conflicting",
            "Content-Length: 5\r\nContent-Length: 6\r\n".into(),
        ),
        ("conflicting list", "Content-Length: 5, 6\r\n".into()),
        (
            "with chunked",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n".into(),
        ),
        (
            "too many headers",
            (0..150)
                .map(|i| format!("X-H{i}: v\r\n"))
                .collect::<String>()
                + "Content-Length: 5\r\n",
        ),
    ];
    for (what, head) in heads {
        let head = head.clone();
        let (url, hits) = counted(move |conn, _| {
            let _ = send(
                &conn,
                format!("HTTP/1.1 200 OK\r\n{head}\r\nhello").as_bytes(),
            );
        });
        let run = http_fetch(&env, &config, &format!("{url}/f"), &[]);
        run.expect_code(1);
        assert_eq!(
            hits.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "{what}: retried\n{}",
            run.stderr
        );
    }
    // An answer that is not HTTP at all.
    let (url, hits) = counted(|conn, _| {
        let _ = send(&conn, b"SSH-2.0-OpenSSH_9.6\r\n\r\n");
    });
    let run = http_fetch(&env, &config, &format!("{url}/f"), &[]);
    run.expect_code(1);
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not retried"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------
// 10. A tampered snapshot or blob is caught by `cache verify` and dropped by `--repair`.

fn only_entry(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().unwrap()
}

#[test]
fn a_tampered_snapshot_and_blob_are_caught_by_cache_verify() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let def = small_def(&env);
    build(&env, &def, &[]).success();
    // A blob too: an http download lands in the content store.
    let body = b"blob content\n".repeat(100);
    let len = body.len();
    let (url, _) = counted(move |conn, _| {
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        let _ = send(&conn, head.as_bytes()).and_then(|_| send(&conn, &body));
    });
    let config = http_config(&env, "retries = 0");
    http_fetch(&env, &config, &format!("{url}/blob.txt"), &[]).success();

    let run = env.kiln(["cache", "verify"]);
    run.success();
    assert!(run.stdout.contains("0 failed"), "{}", run.stdout);

    // Tamper with one file of the build's snapshot and with the blob.
    let snaps = env.root().join("snapshots");
    let tampered_snap = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("kiln-harden-probe/motd").exists())
        .expect("the build's snapshot");
    let motd = tampered_snap.join("kiln-harden-probe/motd");
    std::fs::write(&motd, "tampered\n").unwrap();
    let blob = only_entry(&env.root().join("content/blobs/sha256"));
    std::fs::set_permissions(&blob, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&blob, "evil").unwrap();

    let run = env.kiln(["cache", "verify", "--json"]);
    run.expect_code(1);
    let v = first_json(&run);
    let snap_id = tampered_snap
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    // The tampered build snapshot fails; so may the http snapshot, whose file is a hard
    // link to the tampered blob.
    let failed: Vec<&str> = v["snapshots_failed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f["item"].as_str())
        .collect();
    assert!(failed.contains(&snap_id.as_str()), "{v}");
    assert_eq!(
        v["blobs_failed"][0]["item"],
        format!("sha256:{}", blob.file_name().unwrap().to_string_lossy()).as_str(),
        "{v}"
    );
    assert!(run.stderr.contains("--repair"), "{}", run.stderr);

    let run = env.kiln(["cache", "verify", "--repair"]);
    run.success();
    assert!(run.stdout.contains("(removed)"), "{}", run.stdout);
    assert!(!tampered_snap.exists() && !blob.exists());
    env.kiln(["cache", "verify"]).success();

    // The next build makes the step again instead of serving the tampered tree.
    let out = env.path("exported");
    let spec = format!("type=local,dest={}", out.display());
    let run = build(&env, &def, &["--output", &spec]);
    run.success();
    assert!(!run.stderr.contains("CACHED"), "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(out.join("kiln-harden-probe/motd")).unwrap(),
        "hello from kiln\n"
    );
}

// ---------------------------------------------------------------------------------------
// 8. SIGINT and SIGTERM cancel cleanly: exit 130/143, no staging left, downloads resumable.

fn signal(child: &std::process::Child, sig: i32) {
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed().as_secs() < 120,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn ingest_bytes(root: &Path) -> u64 {
    let dir = root.join("content/ingest");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| std::fs::metadata(e.ok()?.path().join("data")).ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Staging and trash left under the root (`cache du` in JSON).
fn staging_left(env: &Env) -> (u64, u64) {
    let du = env.kiln(["cache", "du", "--json"]);
    du.success();
    let v = du.json();
    (
        v["staging_in_use"]["count"].as_u64().unwrap(),
        v["staging_orphaned"]["count"].as_u64().unwrap(),
    )
}

#[test]
fn sigint_during_a_download_cancels_and_the_download_resumes() {
    cancel_a_download(libc::SIGINT, 130, "SIGINT");
}

#[test]
fn sigterm_during_a_download_cancels_and_the_download_resumes() {
    cancel_a_download(libc::SIGTERM, 143, "SIGTERM");
}

fn cancel_a_download(sig: i32, code: i32, name: &str) {
    let env = Env::new();
    let body: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
    let body = std::sync::Arc::new(body);
    let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (b, r) = (body.clone(), ranges.clone());
    let url = raw_server(move |conn, head| {
        let range = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("Range: bytes=")
                    .or_else(|| l.strip_prefix("range: bytes="))
            })
            .map(|v| v.trim().trim_end_matches('-').parse::<usize>().unwrap());
        r.lock().unwrap().push(format!("{range:?}"));
        match range {
            None => {
                // The first MiB, then silence: the download hangs until kiln is stopped.
                let h = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\n\r\n",
                    b.len()
                );
                let _ = send(&conn, h.as_bytes()).and_then(|_| send(&conn, &b[..1 << 20]));
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
            Some(from) => {
                let h = format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nETag: \"v1\"\r\n\r\n",
                    b.len() - from,
                    b.len() - 1,
                    b.len()
                );
                let _ = send(&conn, h.as_bytes()).and_then(|_| send(&conn, &b[from..]));
            }
        }
    });
    let def = env.write(
        "dl/kiln.build.toml",
        format!("version = 1\n[steps.get]\nsource = \"{url}/big.bin\"\n[output]\nstep = \"get\"\n"),
    );
    let child = env
        .command()
        .args(["--progress", "plain", "build", &def.display().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let root = env.root();
    wait_for("the first MiB in the store", || {
        ingest_bytes(&root) >= 1 << 20
    });
    signal(&child, sig);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("cancelled by {name}")), "{stderr}");
    assert_eq!(staging_left(&env), (0, 0));
    assert!(
        ingest_bytes(&root) >= 1 << 20,
        "the partial download was not kept"
    );

    // The next run resumes from where the first stopped.
    let out = env.path("out");
    let spec = format!("type=local,dest={}", out.display());
    build(&env, &def, &["--output", &spec]).success();
    assert_eq!(ranges.lock().unwrap().as_slice(), ["None", "Some(1048576)"]);
    assert_eq!(std::fs::read(out.join("big.bin")).unwrap(), *body);
}

#[test]
fn sigterm_during_a_copy_heavy_step_cancels_and_removes_staging() {
    cancel_a_copy(libc::SIGTERM, 143, "SIGTERM");
}

#[test]
fn sigint_during_a_copy_heavy_step_cancels_and_removes_staging() {
    cancel_a_copy(libc::SIGINT, 130, "SIGINT");
}

fn cancel_a_copy(sig: i32, code: i32, name: &str) {
    use std::io::BufRead;
    let env = Env::new();
    let blob = vec![7u8; 16 << 10];
    for i in 0..2000 {
        env.write(&format!("heavy/ctx/d{:02}/f{i:05}", i % 50), &blob);
    }
    let def = env.write(
        "heavy/kiln.build.toml",
        "version = 1\n[steps.ctx]\nsource = \"local://context\"\n[steps.app]\nbase = \"scratch\"\n\
         actions = [{ copy = { from = \"ctx\", src = \"/\", dest = \"/app\" } }]\n[output]\nstep = \"app\"\n",
    );
    let ctx = format!("context={}", env.path("heavy/ctx").display());
    // The signal goes once the copy step has started and made its staging folder.
    let mut child = env
        .command()
        .args([
            "--progress",
            "plain",
            "build",
            &def.display().to_string(),
            "--local",
            &ctx,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line == "=> app" {
            break;
        }
    }
    assert!(seen.contains("=> app"), "{seen}");
    // Let the copy get going.
    let tmp = env.root().join("tmp");
    wait_for("the copy's staging folder", || {
        std::fs::read_dir(&tmp)
            .map(|rd| rd.count() > 0)
            .unwrap_or(false)
    });
    signal(&child, sig);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    let stderr = format!("{seen}{}", rest.join("\n"));
    assert_eq!(status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(&format!("cancelled by {name}")), "{stderr}");
    assert_eq!(staging_left(&env), (0, 0));
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // The root is consistent: the same build completes, reusing the cached source.
    let run = build(&env, &def, &["--local", &ctx]);
    run.success();
    assert!(run.stderr.contains("=> ctx CACHED"), "{}", run.stderr);
}

// ---------------------------------------------------------------------------------------
// 3. A full disk never wedges the store: kiln alone frees its space.

/// A tmpfs of `size` mounted at `dir` for the test's life (this suite runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let src = CString::new("tmpfs").unwrap();
        let data = CString::new(format!("size={size},mode=0755")).unwrap();
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                cpath(dir).as_ptr(),
                src.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount tmpfs on {}: {} (this test runs as root, like the suite)",
            dir.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unsafe { libc::umount2(cpath(&self.0).as_ptr(), libc::MNT_DETACH) };
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(cpath(dir).as_ptr(), &mut st) }, 0);
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Writes zeros into `path` until the file system is full.
fn fill(path: &Path) {
    use std::io::Write;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[test]
fn a_full_disk_is_freed_by_kiln_alone() {
    use kiln_tests::http_server::{HttpServer, Route};
    let env = Env::new();
    let mnt = env.path("mnt");
    let _tmpfs = Tmpfs::mount(&mnt, "8m");
    let root = mnt.join("root");
    let kiln = |args: &[&str]| -> Run {
        let mut c = std::process::Command::new(kiln_tests::kiln_bin());
        c.arg("--root")
            .arg(&root)
            .args(args)
            .env_remove("KILN_CONFIG")
            .env_remove("KILN_ROOT")
            .env("XDG_CONFIG_HOME", env.path("xdg-config"))
            .stdin(std::process::Stdio::null());
        c.output().unwrap().into()
    };
    // Any command that opens the store (`cache du` of a fresh root creates nothing).
    kiln(&["cache", "prune"]).success();
    assert!(root.join("reserve").is_file(), "no space reserve was made");

    // A download bigger than the disk: it fails saying why, and keeps nothing.
    let server = HttpServer::start();
    let big: Vec<u8> = (0..(20u32 << 20)).map(|i| (i % 253) as u8).collect();
    server.route("/big.bin", Route::bytes(big));
    let dest = env.path("out-big");
    let run = kiln(&[
        "--progress",
        "plain",
        "source",
        "fetch",
        &server.url("/big.bin"),
        "--dest",
        &dest.display().to_string(),
    ]);
    run.expect_code(1);
    assert!(
        run.stderr
            .to_lowercase()
            .contains("no space left on device"),
        "{}",
        run.stderr
    );
    assert_eq!(
        ingest_bytes(&root),
        0,
        "the failed download kept its partial data"
    );

    // Now the disk is 100 % full (a dead build's staging, as a kill -9 leaves it): every
    // command still opens the store, and prune frees the space.
    fill(&root.join("tmp/0123456789abcdef01234567.stage.0/fill"));
    assert!(free_bytes(&mnt) < 64 << 10);
    for args in [&["cache", "du"][..], &["cache", "prune"][..]] {
        let run = kiln(args);
        run.success();
    }
    assert!(free_bytes(&mnt) > 5 << 20, "prune did not free the space");
    assert!(
        root.join("reserve").is_file(),
        "the reserve was not made again"
    );

    // Every form of prune frees a full disk: of a dead build's staging, or of the
    // partial download a killed run left.
    let partial = root.join(format!("content/ingest/{}/data", "ab".repeat(32)));
    for (prune, filler) in [
        (
            &["cache", "prune"][..],
            root.join("tmp/0123456789abcdef01234567.stage.1/fill"),
        ),
        (&["cache", "prune", "--all"][..], partial.clone()),
        (
            &["cache", "prune", "--keep-duration", "0s"][..],
            partial.clone(),
        ),
    ] {
        fill(&filler);
        // Written an hour ago, as a killed run's partial download would be.
        for p in [&filler, filler.parent().unwrap()] {
            let t = libc::timespec {
                tv_sec: unsafe { libc::time(std::ptr::null_mut()) } - 3600,
                tv_nsec: 0,
            };
            let rc =
                unsafe { libc::utimensat(libc::AT_FDCWD, cpath(p).as_ptr(), [t, t].as_ptr(), 0) };
            assert_eq!(rc, 0);
        }
        let run = kiln(prune);
        run.success();
        assert!(
            free_bytes(&mnt) > 5 << 20,
            "{prune:?} did not free the space"
        );
    }
    // And a small download works afterwards.
    server.route("/small.txt", Route::bytes(b"small\n".to_vec()));
    let dest = env.path("out-small");
    kiln(&[
        "source",
        "fetch",
        &server.url("/small.txt"),
        "--dest",
        &dest.display().to_string(),
    ])
    .success();
    assert_eq!(std::fs::read(dest.join("small.txt")).unwrap(), b"small\n");
}
