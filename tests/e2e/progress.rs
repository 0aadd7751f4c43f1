//! The progress display through the real binary: the live display on a pseudo
//! terminal (numbered steps, byte units with rates, an export step, a summary), plain
//! lines in a stable order, the warning of a build without `--output`, and JSON events
//! with their kind, unit and real final counts.
//!
//! The builds read a file from a loopback HTTP server (a byte transfer) and a local
//! context (an entry count), so both kinds of task show up.

use std::io::Read;
use std::path::{Path, PathBuf};

use kiln_tests::http_server::{HttpServer, Route};
use kiln_tests::{Env, Run};

/// The served file's size: large enough to be shown in MiB.
const BODY: usize = 3 << 20;

/// A definition with a download, a local context, a step copying both, and a merge.
fn project(env: &Env, srv: &HttpServer) -> PathBuf {
    let body: Vec<u8> = (0..BODY).map(|i| (i % 251) as u8).collect();
    srv.route("/data.bin", Route::bytes(body));
    for i in 0..20 {
        env.write(&format!("proj/ctx/src/f{i:02}.txt"), format!("file {i}\n"));
    }
    env.write(
        "proj/kiln.build.toml",
        format!(
            r#"version = 1
[steps.get]
source = "{}"
[steps.ctx]
source = "local://context"
[steps.app]
base = "scratch"
actions = [
  {{ copy = {{ from = "ctx", src = "/src", dest = "/app/src" }} }},
  {{ copy = {{ from = "get", src = "/data.bin", dest = "/app/data.bin" }} }},
]
[steps.meta]
base = "scratch"
actions = [{{ mkfile = {{ path = "/VERSION", data = "1\n" }} }}]
[steps.all]
merge = ["app", "meta"]
[output]
step = "all"
"#,
            srv.url("/data.bin")
        ),
    )
}

const STEPS: [&str; 5] = ["get", "ctx", "app", "meta", "all"];

fn build(env: &Env, def: &Path, mode: &str, extra: &[String]) -> Run {
    let mut args = vec![
        "--progress".to_string(),
        mode.to_string(),
        "build".to_string(),
        def.display().to_string(),
        "--local".to_string(),
        format!("context={}", env.path("proj/ctx").display()),
    ];
    args.extend(extra.iter().cloned());
    env.kiln(&args)
}

fn output_to(env: &Env, dir: &str) -> Vec<String> {
    vec![
        "--output".to_string(),
        format!("type=local,dest={}", env.path(dir).display()),
    ]
}

/// Runs kiln with stderr on a pseudo terminal (120 columns); returns the exit code and
/// everything written to the terminal.
fn kiln_on_pty(env: &Env, args: &[String]) -> (i32, String) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    let size = libc::winsize {
        ws_row: 40,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two descriptors, which are owned below.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and nothing else owns them.
    let mut master = unsafe { std::fs::File::from_raw_fd(master) };
    let slave = unsafe { std::os::fd::OwnedFd::from_raw_fd(slave) };
    let mut child = env
        .command()
        .args(args)
        .env("TERM", "xterm")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(slave))
        .spawn()
        .expect("spawn kiln");
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
    let out = reader.join().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out).into_owned(),
    )
}

/// The lines a terminal keeps: what the last redraw of each line left, without the
/// escape sequences (cursor moves and styles) of the live display.
fn screen_lines(raw: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ params final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for f in chars.by_ref() {
                    if ('@'..='~').contains(&f) {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
        .split('\n')
        .map(|l| {
            // A carriage return starts the line over: keep what was written last.
            let l = l.trim_end_matches('\r');
            l.rsplit('\r').next().unwrap_or(l).trim_end().to_string()
        })
        .collect()
}

#[test]
fn tty_shows_numbered_steps_byte_units_an_export_and_a_summary() {
    let env = Env::new();
    let srv = HttpServer::start();
    let def = project(&env, &srv);
    let mut args = vec![
        "--progress".to_string(),
        "tty".to_string(),
        "build".to_string(),
        def.display().to_string(),
        "--local".to_string(),
        format!("context={}", env.path("proj/ctx").display()),
    ];
    args.extend(output_to(&env, "out"));
    let (code, raw) = kiln_on_pty(&env, &args);
    assert_eq!(code, 0, "{raw}");
    // The live display drew (cursor moves), it did not fall back to plain lines.
    assert!(raw.contains("\x1b["), "no live display:\n{raw}");
    assert!(!raw.contains("note: --progress tty"), "{raw}");
    assert!(
        !raw.contains("=> app DONE"),
        "plain lines on a terminal:\n{raw}"
    );
    let lines = screen_lines(&raw);
    let text = lines.join("\n");

    // Every step is numbered once, #1..#5, with its name and description, and done.
    let mut numbers = Vec::new();
    for step in STEPS {
        let line = lines
            .iter()
            .find(|l| {
                l.starts_with('#') && l.contains(&format!("[{step}]")) && l.contains(" DONE ")
            })
            .unwrap_or_else(|| panic!("no finished line for step {step}:\n{text}"));
        let n: usize = line[1..line.find(' ').unwrap()].parse().unwrap();
        numbers.push(n);
        let time = line.rsplit(' ').next().unwrap();
        assert!(
            time.ends_with('s') && time[..time.len() - 1].parse::<f64>().is_ok(),
            "{line}"
        );
    }
    numbers.sort();
    assert_eq!(numbers, [1, 2, 3, 4, 5], "{text}");
    assert!(text.contains("[get] http://127.0.0.1:"), "{text}");
    assert!(text.contains("[ctx] local://context"), "{text}");
    assert!(text.contains("[all] merge app + meta"), "{text}");

    // The download in bytes with a rate; the context's entries as a count, no unit.
    let get = lines
        .iter()
        .find(|l| l.contains("=> GET ") && l.contains(" done "))
        .unwrap_or_else(|| panic!("no finished download line:\n{text}"));
    assert!(get.contains("3.0MiB ("), "{get}");
    assert!(get.contains("/s) done "), "{get}");
    let ctx = lines
        .iter()
        .find(|l| l.contains("=> transferring context: "))
        .unwrap_or_else(|| panic!("no context transfer line:\n{text}"));
    assert!(!ctx.contains("iB") && !ctx.contains("/s"), "{ctx}");

    // The export is step #6, then the closing summary with the total time.
    let export = lines
        .iter()
        .find(|l| l.starts_with("#6 exporting to local directory "))
        .unwrap_or_else(|| panic!("no export step:\n{text}"));
    assert!(export.contains(" DONE "), "{export}");
    let last = lines.iter().rev().find(|l| !l.is_empty()).unwrap();
    assert!(
        last.starts_with("[+] Building ")
            && last.contains("s (6/6) FINISHED: 5 steps (0 cached), 1 export"),
        "{text}"
    );
    assert!(!text.contains("WARNING"), "{text}");

    // Again: every step CACHED, still numbered.
    let (code, raw) = kiln_on_pty(&env, &args);
    assert_eq!(code, 0, "{raw}");
    let lines = screen_lines(&raw);
    let text = lines.join("\n");
    for step in STEPS {
        assert!(
            lines.iter().any(|l| l.starts_with('#')
                && l.contains(&format!("[{step}]"))
                && l.ends_with(" CACHED")),
            "{step} not cached:\n{text}"
        );
    }
    assert!(
        text.contains("FINISHED: 5 steps (5 cached), 1 export"),
        "{text}"
    );
}

#[test]
fn tty_without_a_terminal_falls_back_to_plain_with_a_note() {
    let env = Env::new();
    let srv = HttpServer::start();
    let def = project(&env, &srv);
    let run = build(&env, &def, "tty", &output_to(&env, "out"));
    run.success();
    assert!(
        run.stderr
            .contains("note: --progress tty: stderr is not a terminal, showing plain progress"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("=> all DONE "), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{}", run.stderr);
    // auto picks plain without a note.
    let run = build(&env, &def, "auto", &output_to(&env, "out2"));
    run.success();
    assert!(!run.stderr.contains("note:"), "{}", run.stderr);
    assert!(run.stderr.contains("=> all CACHED"), "{}", run.stderr);
}

/// Checks that every line about a step comes after that step's header (`=> step`, or
/// a single `=> step CACHED`), and that each step ends exactly once.
fn assert_ordered(stderr: &str) {
    let mut opened: Vec<&str> = Vec::new();
    let mut ended: Vec<&str> = Vec::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("=> ") {
            if rest.starts_with("exporting to ") {
                continue;
            }
            let mut words = rest.split(' ');
            let step = words.next().unwrap();
            match words.next() {
                None => {
                    assert!(!opened.contains(&step), "{step}: two headers\n{stderr}");
                    opened.push(step);
                }
                Some("CACHED") | Some("DONE") | Some("ERROR") => {
                    assert!(!ended.contains(&step), "{step}: ended twice\n{stderr}");
                    ended.push(step);
                }
                Some(other) => panic!("unexpected word {other:?} in {line:?}"),
            }
        } else if let Some(rest) = line.strip_prefix("   ") {
            let step = rest.split([':', ' ']).next().unwrap();
            assert!(
                opened.contains(&step) && !ended.contains(&step),
                "a detail line of {step} outside its header and end: {line:?}\n{stderr}"
            );
        }
    }
    let mut ended = ended.clone();
    ended.sort();
    let mut want = STEPS.to_vec();
    want.sort();
    assert_eq!(ended, want, "{stderr}");
}

#[test]
fn plain_progress_is_ordered_and_closes_with_a_summary() {
    let env = Env::new();
    let srv = HttpServer::start();
    let def = project(&env, &srv);
    let run = build(&env, &def, "plain", &output_to(&env, "out"));
    run.success();
    assert_ordered(&run.stderr);
    // The download and the transfer: a start line, then a finished line.
    assert!(
        run.stderr.contains("   get: GET http://127.0.0.1:"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(": 3.0MiB ("), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("   ctx: transferring context: 20 done "),
        "{}",
        run.stderr
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    let export = lines
        .iter()
        .position(|l| l.starts_with("=> exporting to local directory ") && l.contains(" DONE "))
        .unwrap_or_else(|| panic!("no export line:\n{}", run.stderr));
    assert!(
        lines[export + 1].starts_with("[+] Building ")
            && lines[export + 1].ends_with("(6/6) FINISHED: 5 steps (0 cached), 1 export"),
        "{}",
        run.stderr
    );

    // A rebuild re-reads the context (its transfer lines) before saying CACHED.
    let run = build(&env, &def, "plain", &output_to(&env, "out2"));
    run.success();
    assert_ordered(&run.stderr);
    let header = run.stderr.find("=> ctx\n").expect("the context's header");
    let transfer = run.stderr.find("   ctx: transferring").expect("transfer");
    let cached = run.stderr.find("=> ctx CACHED").expect("cached");
    assert!(header < transfer && transfer < cached, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("FINISHED: 5 steps (5 cached), 1 export"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_build_without_output_warns_that_the_result_stays_in_the_cache() {
    let env = Env::new();
    let srv = HttpServer::start();
    let def = project(&env, &srv);
    let run = build(&env, &def, "plain", &[]);
    run.success();
    let last = run.stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "WARNING: no --output given: the result of step `all` stays only in the build cache \
         (add --output type=local,dest=DIR to get it)",
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("(5/5) FINISHED: 5 steps (0 cached), 0 exports"),
        "{}",
        run.stderr
    );
    // JSON says it as an event.
    let run = build(&env, &def, "json", &[]);
    run.success();
    let warnings: Vec<serde_json::Value> = json_lines(&run)
        .into_iter()
        .filter(|v| v["event"] == "warning")
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.stderr);
    assert!(
        warnings[0]["message"]
            .as_str()
            .unwrap()
            .contains("stays only in the build cache"),
        "{}",
        run.stderr
    );
    // With an output: no warning.
    let run = build(&env, &def, "plain", &output_to(&env, "out"));
    run.success();
    assert!(!run.stderr.contains("WARNING"), "{}", run.stderr);
}

fn json_lines(run: &Run) -> Vec<serde_json::Value> {
    run.stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}\n{}", run.stderr))
        })
        .collect()
}

#[test]
fn json_events_carry_their_kind_unit_and_the_real_final_counts() {
    let env = Env::new();
    let srv = HttpServer::start();
    let def = project(&env, &srv);
    let run = build(&env, &def, "json", &output_to(&env, "out"));
    run.success();
    let events = json_lines(&run);
    let tasks = |step: &str| -> Vec<&serde_json::Value> {
        events
            .iter()
            .filter(|v| v["step"] == step && v["event"] == "progress")
            .collect()
    };
    // The download: bytes, start .. finish, the finish counting the whole body.
    let get = tasks("get");
    assert_eq!(get.first().unwrap()["kind"], "start", "{get:?}");
    let fin = get.last().unwrap();
    assert_eq!(fin["kind"], "finish", "{get:?}");
    assert_eq!(fin["unit"], "bytes", "{fin}");
    assert_eq!(fin["current"], BODY as u64, "{fin}");
    assert!(get.iter().all(|v| v["unit"] == "bytes"), "{get:?}");
    // The context: a count of its entries, never bytes.
    let ctx = tasks("ctx");
    let fin = ctx.last().unwrap();
    assert_eq!(
        (&fin["kind"], &fin["unit"]),
        (&"finish".into(), &"count".into()),
        "{fin}"
    );
    assert_eq!(fin["current"], 20, "{fin}");
    // The export, under its own key, and the summary with the real counts.
    let export: Vec<&str> = events
        .iter()
        .filter(|v| v.get("export").is_some())
        .map(|v| v["event"].as_str().unwrap())
        .collect();
    assert_eq!(export, ["start", "done"], "{}", run.stderr);
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "summary", "{}", run.stderr);
    assert_eq!(summary["status"], "finished");
    assert_eq!(summary["steps"], 5);
    assert_eq!(summary["cached"], 0);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["exports"], 1);
    assert!(summary["elapsed_ms"].is_u64(), "{summary}");

    // The rebuild's summary counts what the step events say: all five cached.
    let run = build(&env, &def, "json", &output_to(&env, "out2"));
    run.success();
    let events = json_lines(&run);
    let cached = events.iter().filter(|v| v["event"] == "cached").count();
    let summary = events.last().unwrap();
    assert_eq!(
        (cached, &summary["cached"]),
        (5, &5.into()),
        "{}",
        run.stderr
    );

    // A failing export (its folder would be under a file): the summary says failed.
    let blocker = env.write("blocker", "a file");
    let run = build(
        &env,
        &def,
        "json",
        &[
            "--output".to_string(),
            format!("type=local,dest={}/out", blocker.display()),
        ],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    let events: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = events
        .iter()
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary:\n{}", run.stderr));
    assert_eq!(summary["status"], "failed", "{}", run.stderr);
}

/// A static busybox tree in `dir`: the base of a run step.
fn busybox_tree(dir: &Path) {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run steps need root: run the test suite as root"
    );
    kiln_tests::require_program("runc", "runc");
    kiln_tests::require_program("busybox", "busybox-static");
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .expect("sh");
    let busybox = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "seq", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
}

#[test]
fn tty_keeps_the_last_lines_of_a_run_step_under_it() {
    let env = Env::new();
    busybox_tree(&env.path("base"));
    let def = env.write(
        "def.toml",
        "version = 1\n[steps.base]\nsource = \"local://base\"\n[steps.test]\nbase = \"base\"\n\
         run = \"for i in $(seq 1 12); do echo line $i; sleep 0.1; done; exit 3\"\n[output]\nstep = \"test\"\n",
    );
    let args: Vec<String> = [
        "--progress",
        "tty",
        "build",
        &def.display().to_string(),
        "--local",
        &format!("base={}", env.path("base").display()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, raw) = kiln_on_pty(&env, &args);
    assert_eq!(code, 1, "{raw}");
    let lines = screen_lines(&raw);
    let text = lines.join("\n");
    // The failed step stays on screen with the last six lines of its output.
    let at = lines
        .iter()
        .position(|l| l.starts_with("#2 [test] RUN /bin/sh -c") && l.contains(" ERROR "))
        .unwrap_or_else(|| panic!("no failed step line:\n{text}"));
    let want: Vec<String> = (7..=12).map(|i| format!("   | line {i}")).collect();
    assert_eq!(lines[at + 1..at + 7], want[..], "{text}");
    assert!(
        lines[at + 7].starts_with("[+] Building ") && lines[at + 7].contains("(2/2) FAILED"),
        "{text}"
    );
    // Earlier lines were shown under it while it ran (the output comes slowly, so the
    // display, drawn at most 20 times a second, shows some of them).
    assert!(
        lines[..at]
            .iter()
            .any(|l| (1..=6).any(|i| l.ends_with(&format!("| line {i}")))),
        "{text}"
    );
}
