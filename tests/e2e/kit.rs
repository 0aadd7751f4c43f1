//! The plugin author's kit through the real binary and real `.so` files: keys that
//! cannot collide across plugins, the attribute schema check, `plugins show`, plugin
//! config errors that point into `kiln.toml`, `--json` failures, and the progress
//! counts a plugin sends.
//!
//! The `twin` test plugin answers the same key strings as `testsrc` with different
//! content, declares a schema (`twin.count`: u64, `twin.flag`: bool, `twin.tags`:
//! list), reports a task that finishes at 7 of 10, and reads a strict config table.

use std::path::{Path, PathBuf};

use kiln_tests::{plugin_file, Env, Run};

const TESTSRC_ID: &str = "io.kiln.test.v1.testsrc";
const TWIN_ID: &str = "io.kiln.test.v1.twin";

/// A config loading testsrc and twin; `twin_config` is the body of twin's `config`
/// table (empty: no table).
fn config(env: &Env, twin_config: &str) -> PathBuf {
    let mut text = format!(
        "version = 1\n[plugins.\"{TESTSRC_ID}\"]\npath = {:?}\n\n[plugins.\"{TWIN_ID}\"]\npath = {:?}\n",
        plugin_file("kiln_test_plugin_testsrc").display().to_string(),
        plugin_file("kiln_test_plugin_twin").display().to_string(),
    );
    if !twin_config.is_empty() {
        text.push_str(&format!("[plugins.\"{TWIN_ID}\".config]\n{twin_config}"));
    }
    env.write("kiln.toml", text)
}

fn kiln(env: &Env, config: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--config".to_string(), config.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    env.kiln(all)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(data))
}

#[test]
fn two_plugins_answering_the_same_key_get_separate_cache_entries() {
    let env = Env::new();
    let cfg = config(&env, "");
    let a = kiln(
        &env,
        &cfg,
        &["source", "resolve", "testsrc://ok/same", "--json"],
    );
    let b = kiln(
        &env,
        &cfg,
        &["source", "resolve", "twinsrc://same", "--json"],
    );
    let (a, b) = (a.success().json(), b.success().json());
    assert_eq!(a["keys"][0]["key"], "testsrc:same");
    assert_eq!(b["keys"][0]["key"], "testsrc:same");
    // The digest shown stays BuildKit's, byte for byte, for both.
    let want = format!("sha256:{}", sha256_hex(b"buildkit.source.v0:testsrc:same"));
    assert_eq!(a["keys"][0]["digest"], want.as_str());
    assert_eq!(b["keys"][0]["digest"], want.as_str());

    let fetch = |id: &str, dest: &str| {
        let run = kiln(
            &env,
            &cfg,
            &[
                "source",
                "fetch",
                id,
                "--dest",
                env.path(dest).to_str().unwrap(),
                "--json",
            ],
        );
        run.success();
        let cached = run.json()["cached"].as_bool().expect("cached");
        let text = std::fs::read_to_string(env.path(dest).join("same.txt")).expect("same.txt");
        (cached, text)
    };
    assert_eq!(
        fetch("testsrc://ok/same", "t1"),
        (false, "same".to_string())
    );
    // Same key string, same BuildKit digest, other plugin: not the testsrc entry.
    assert_eq!(
        fetch("twinsrc://same", "w1"),
        (false, "twin:same".to_string())
    );
    // Each is then found under its own entry.
    assert_eq!(
        fetch("twinsrc://same", "w2"),
        (true, "twin:same".to_string())
    );
    assert_eq!(fetch("testsrc://ok/same", "t2"), (true, "same".to_string()));
}

#[test]
fn the_schema_is_checked_before_the_plugin_is_called() {
    let env = Env::new();
    let cfg = config(&env, "");
    let ok = kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "twinsrc://a",
            "--attr",
            "twin.count=0x10",
            "--attr",
            "twin.flag=TRUE",
            "--attr",
            "twin.tags=[\"x\",\"y\"]",
        ],
    );
    ok.success();

    let wrong_type = kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "twinsrc://a",
            "--attr",
            "twin.count=many",
        ],
    );
    wrong_type.expect_code(2);
    let msg = &wrong_type.stderr;
    assert!(
        msg.contains("attribute twin.count") && msg.contains("\"many\""),
        "{msg}"
    );
    assert!(
        msg.contains("schema of plugin io.kiln.test.v1.twin"),
        "the host refused it: {msg}"
    );

    let unknown = kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "twinsrc://a",
            "--attr",
            "twin.colour=red",
        ],
    );
    unknown.expect_code(2);
    let msg = &unknown.stderr;
    assert!(msg.contains("unknown attribute twin.colour"), "{msg}");
    assert!(msg.contains("twin.count, twin.flag, twin.tags"), "{msg}");

    // Outside the plugin's own prefix too.
    let foreign = kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "twinsrc://a",
            "--attr",
            "git.keepgitdir=true",
        ],
    );
    foreign.expect_code(2);
    assert!(
        foreign.stderr.contains("unknown attribute git.keepgitdir"),
        "{}",
        foreign.stderr
    );

    let list = kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "twinsrc://a",
            "--attr",
            "twin.tags=x,y",
            "--json",
        ],
    );
    list.expect_code(2);
    let e = &list.json()["error"];
    assert_eq!(e["code"], "invalid_identifier");
    assert_eq!(e["plugin"], TWIN_ID);
    assert!(e["message"].as_str().unwrap().contains("JSON list"), "{e}");

    // A plugin without a schema is not checked by the host.
    kiln(
        &env,
        &cfg,
        &[
            "source",
            "resolve",
            "testsrc://ok/a",
            "--attr",
            "any.thing=1",
        ],
    )
    .success();
}

#[test]
fn plugins_show_and_list_print_the_schema() {
    let env = Env::new();
    let cfg = config(&env, "");
    let show = kiln(&env, &cfg, &["plugins", "show", TWIN_ID, "--json"]);
    let v = show.success().json();
    assert_eq!(v["id"], TWIN_ID);
    assert_eq!(v["status"], "loaded");
    assert_eq!(v["schemes"], serde_json::json!(["twinsrc"]));
    let attrs = v["attributes"].as_array().expect("attributes");
    let pairs: Vec<(&str, &str)> = attrs
        .iter()
        .map(|a| (a["name"].as_str().unwrap(), a["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("twin.count", "u64"),
            ("twin.flag", "bool"),
            ("twin.tags", "list")
        ]
    );
    assert!(attrs[0]["description"].as_str().unwrap().contains("number"));
    assert_eq!(v["sha256"].as_str().map(str::len), Some(64));

    let text = kiln(&env, &cfg, &["plugins", "show", TWIN_ID]);
    text.success();
    assert!(
        text.stdout.contains("twin.flag") && text.stdout.contains("bool"),
        "{}",
        text.stdout
    );

    let rows = kiln(&env, &cfg, &["plugins", "list", "--json"])
        .success()
        .json();
    let row = |id: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == id)
            .cloned()
            .expect("row")
    };
    assert_eq!(row(TWIN_ID)["attributes"].as_array().map(Vec::len), Some(3));
    assert!(row(TESTSRC_ID)["attributes"].is_null());

    let missing = kiln(
        &env,
        &cfg,
        &["plugins", "show", "io.example.nope", "--json"],
    );
    missing.expect_code(2);
    let e = &missing.json()["error"];
    assert_eq!(e["code"], "not_found");
    assert!(e["message"].as_str().unwrap().contains(TWIN_ID), "{e}");

    // The standard plugins declare theirs.
    let http = env.kiln(["plugins", "show", "io.kiln.source.v1.http", "--json"]);
    let http = http.success().json();
    let perm = http["attributes"]
        .as_array()
        .expect("http declares a schema")
        .iter()
        .find(|a| a["name"] == "http.perm")
        .cloned()
        .expect("http.perm");
    assert_eq!(perm["type"], "octal");
    let local = env.kiln(["plugins", "show", "io.kiln.source.v1.local", "--json"]);
    assert!(local.success().json()["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "local.excludepatterns" && a["type"] == "list"));
}

/// 1-based line and column of the first `needle` in `text`.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let at = text.find(needle).expect("needle");
    let line = text[..at].matches('\n').count() + 1;
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

#[test]
fn plugin_config_errors_point_into_kiln_toml() {
    let env = Env::new();
    let cfg = config(&env, "greeting = \"hi\"\nretries = \"three\"\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let run = kiln(&env, &cfg, &["config", "check"]);
    run.expect_code(2);
    let (line, col) = position(&text, "retries");
    let want = format!("{} at line {line}, column {col}", cfg.display());
    assert!(
        run.stderr.contains(&want),
        "want {want:?} in {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("config key `retries`"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(TWIN_ID), "{}", run.stderr);

    let cfg = config(&env, "greeting = \"hi\"\ncolour = 1\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let run = kiln(&env, &cfg, &["config", "check"]);
    run.expect_code(2);
    let (line, col) = position(&text, "colour");
    let want = format!("at line {line}, column {col}");
    assert!(
        run.stderr.contains(&want),
        "want {want:?} in {}",
        run.stderr
    );
    assert!(run.stderr.contains("colour"), "{}", run.stderr);

    // A good config table is handed over and used.
    let cfg = config(&env, "greeting = \"hello\"\n");
    kiln(&env, &cfg, &["config", "check"]).success();
    let dest = env.path("g");
    kiln(
        &env,
        &cfg,
        &[
            "source",
            "fetch",
            "twinsrc://g",
            "--dest",
            dest.to_str().unwrap(),
        ],
    )
    .success();
    assert_eq!(
        std::fs::read_to_string(dest.join("g.txt")).unwrap(),
        "hello:g"
    );
}

#[test]
fn json_failures_are_one_object_on_stdout_with_the_exit_code_kept() {
    let env = Env::new();
    let cfg = config(&env, "");

    let run = kiln(&env, &cfg, &["source", "resolve", "nosuch://x", "--json"]);
    run.expect_code(2);
    assert_eq!(run.json()["error"]["code"], "invalid_identifier");
    // The plain line stays on stderr for people and logs.
    assert!(run.stderr.contains("error: "), "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "one object: {}", run.stdout);

    let dest = env.path("p");
    let run = kiln(
        &env,
        &cfg,
        &[
            "source",
            "fetch",
            "testsrc://panic",
            "--dest",
            dest.to_str().unwrap(),
            "--json",
        ],
    );
    run.expect_code(1);
    let e = &run.json()["error"];
    assert_eq!(e["code"], "panicked");
    assert_eq!(e["plugin"], TESTSRC_ID);

    let bad = env.write("bad.toml", "version = 1\nfrobnicate = true\n");
    let run = env.kiln([
        "--config",
        bad.to_str().unwrap(),
        "plugins",
        "list",
        "--json",
    ]);
    run.expect_code(2);
    let e = &run.json()["error"];
    assert_eq!(e["code"], "invalid_config");
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");

    // A build has no --json flag; --progress json asks for the same.
    let def = env.write(
        "fail.toml",
        "version = 1\n[steps.boom]\nsource = \"testsrc://panic\"\n[output]\nstep = \"boom\"\n",
    );
    let run = kiln(
        &env,
        &cfg,
        &["--progress", "json", "build", def.to_str().unwrap()],
    );
    run.expect_code(1);
    let e = &run.json()["error"];
    assert_eq!(e["code"], "failed");
    assert_eq!(e["step"], "boom");
    assert_eq!(e["plugin"], TESTSRC_ID);

    // Without --json, the plain message on stderr.
    let run = kiln(&env, &cfg, &["source", "resolve", "nosuch://x"]);
    run.expect_code(2);
    assert!(
        run.stdout.is_empty() && run.stderr.starts_with("error: "),
        "{run:?}"
    );
}

#[test]
fn progress_events_carry_the_kind_and_the_counts_the_plugin_sent() {
    let env = Env::new();
    let cfg = config(&env, "");
    let def = env.write(
        "twin.toml",
        "version = 1\n[steps.t]\nsource = \"twinsrc://counted\"\n[output]\nstep = \"t\"\n",
    );
    let run = kiln(
        &env,
        &cfg,
        &["--progress", "json", "build", def.to_str().unwrap()],
    );
    run.success();
    let events: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let task: Vec<(String, u64, u64)> = events
        .iter()
        .filter(|e| e["event"] == "progress" && e["task"] == "twin counted")
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["current"].as_u64().unwrap(),
                e["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        task,
        [
            ("start".to_string(), 0, 10),
            ("update".to_string(), 5, 10),
            ("finish".to_string(), 7, 10)
        ],
        "{}",
        run.stderr
    );
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["step"] == "t")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"start"), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"done"), "{kinds:?}");
}
