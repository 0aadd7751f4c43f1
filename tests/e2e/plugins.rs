//! The plugin host against the real `.so` files: loading, refusing, statuses, panics,
//! logging and configuration errors.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use kiln_tests::{copy_file, plugin_file, Env};

const TESTSRC: &str = "kiln_test_plugin_testsrc";

/// A config loading `testsrc` from `path`, plus any extra TOML.
fn testsrc_config(env: &Env, path: &Path, extra: &str) -> std::path::PathBuf {
    env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.test.v1.testsrc\"]\npath = {:?}\n{extra}",
            path.display().to_string()
        ),
    )
}

fn list(env: &Env, config: &Path) -> Vec<serde_json::Value> {
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "plugins".as_ref(),
        "list".as_ref(),
        "--json".as_ref(),
    ]);
    let docs = run.json_docs();
    let rows = docs[0].as_array().expect("array").clone();
    // `plugins list` exits 2 exactly when a configured, enabled plugin failed, and
    // then follows the listing with the error object.
    let failed = rows.iter().any(|r| r["status"] == "failed");
    if failed {
        run.expect_code(2);
        assert_eq!(docs.len(), 2, "{}", run.stdout);
        assert_eq!(docs[1]["error"]["code"], "invalid_config", "{}", run.stdout);
    } else {
        run.expect_code(0);
        assert_eq!(docs.len(), 1, "{}", run.stdout);
    }
    rows
}

#[test]
fn the_four_standard_plugins_load_from_the_built_in_default() {
    let env = Env::new();
    let run = env.kiln(["plugins", "list", "--json"]);
    run.success();
    let rows = run.json();
    let rows = rows.as_array().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "io.kiln.source.v1.git",
            "io.kiln.source.v1.http",
            "io.kiln.source.v1.image",
            "io.kiln.source.v1.local"
        ]
    );
    for r in rows {
        assert_eq!(r["status"], "loaded", "{r}");
        assert_eq!(r["api_version"], "1.1.0", "{r}");
        assert_eq!(r["sha256"].as_str().unwrap().len(), 64, "{r}");
        assert!(r["reason"].is_null(), "{r}");
        let path = Path::new(r["path"].as_str().unwrap());
        assert_eq!(path.parent().unwrap(), kiln_tests::target_dir(), "{r}");
    }
    let schemes: Vec<String> = rows
        .iter()
        .flat_map(|r| {
            r["schemes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
        })
        .collect();
    for s in [
        "git",
        "http",
        "https",
        "docker-image",
        "oci-layout",
        "local",
    ] {
        assert!(
            schemes.iter().any(|x| x == s),
            "scheme {s} missing from {schemes:?}"
        );
    }
    // The human listing works too.
    let run = env.kiln(["plugins", "list"]);
    run.success();
    assert!(run.stdout.contains("io.kiln.source.v1.local") && run.stdout.contains("loaded"));
}

#[test]
fn a_pinned_plugin_loads_only_with_the_right_sha256() {
    let env = Env::new();
    let so = plugin_file(TESTSRC);
    let good = kiln_tests_sha256(&so);
    let config = testsrc_config(&env, &so, &format!("sha256 = \"{good}\"\n"));
    let rows = list(&env, &config);
    assert_eq!(rows[0]["status"], "loaded", "{rows:?}");
    assert_eq!(rows[0]["sha256"], good.as_str());

    let wrong = "0".repeat(64);
    let config = testsrc_config(&env, &so, &format!("sha256 = \"{wrong}\"\n"));
    let rows = list(&env, &config);
    assert_eq!(rows[0]["status"], "failed");
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("sha256 mismatch") && reason.contains(&wrong) && reason.contains(&good),
        "{reason}"
    );
    // A refused plugin serves nothing.
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "source".as_ref(),
        "resolve".as_ref(),
        "testsrc://ok/a".as_ref(),
    ]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("unknown scheme \"testsrc\""),
        "{}",
        run.stderr
    );
}

fn kiln_tests_sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn symlinked_and_writable_plugin_files_are_refused() {
    let env = Env::new();
    let link = env.path("plugins/libkiln_test_plugin_testsrc.so");
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink(plugin_file(TESTSRC), &link).unwrap();
    let rows = list(&env, &testsrc_config(&env, &link, ""));
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["reason"], "refusing a symlinked plugin file");

    let copy = env.path("plugins/writable.so");
    copy_file(&plugin_file(TESTSRC), &copy);
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o666)).unwrap();
    let rows = list(&env, &testsrc_config(&env, &copy, ""));
    assert_eq!(rows[0]["status"], "failed");
    assert!(
        rows[0]["reason"]
            .as_str()
            .unwrap()
            .contains("writable by group or others"),
        "{rows:?}"
    );
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rows = list(&env, &testsrc_config(&env, &copy, ""));
    assert_eq!(rows[0]["status"], "loaded", "{rows:?}");

    // A file owned by another user (neither root nor the user running kiln) is refused.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&copy, Some(65534), Some(65534)).unwrap();
        let rows = list(&env, &testsrc_config(&env, &copy, ""));
        assert_eq!(rows[0]["status"], "failed");
        let reason = rows[0]["reason"].as_str().unwrap();
        assert!(reason.contains("owned by uid 65534"), "{reason}");
    }
}

#[test]
fn a_file_that_is_not_a_kiln_plugin_gives_one_short_line() {
    let env = Env::new();
    let text = env.write("plugins/not-elf.so", "just text\n");
    let rows = list(&env, &testsrc_config(&env, &text, ""));
    let reason = rows[0]["reason"].as_str().unwrap();
    assert_eq!(rows[0]["status"], "failed");
    assert!(reason.starts_with("not a kiln plugin"), "{reason}");
    assert!(!reason.contains('\n') && reason.len() < 300, "{reason}");

    // A real shared library that is not a kiln plugin.
    let libz = [
        "/lib/x86_64-linux-gnu/libz.so.1",
        "/usr/lib/x86_64-linux-gnu/libz.so.1",
    ]
    .into_iter()
    .map(Path::new)
    .find(|p| p.exists())
    .expect("libz.so.1 (package zlib1g) is needed by this test");
    let copy = env.path("plugins/libz.so");
    copy_file(libz, &copy);
    let rows = list(&env, &testsrc_config(&env, &copy, ""));
    let reason = rows[0]["reason"].as_str().unwrap();
    assert_eq!(
        reason, "not a kiln plugin: it exports no `kiln_plugin_declaration` symbol",
        "{reason}"
    );
}

#[test]
fn a_plugin_built_for_another_plugin_api_is_refused_naming_both_versions() {
    let env = Env::new();
    let so = plugin_file("kiln_test_plugin_oldapi");
    let config = env.write(
        "kiln.toml",
        format!(
            "version = 1\n[plugins.\"io.kiln.test.v1.oldapi\"]\npath = {:?}\n",
            so.display().to_string()
        ),
    );
    let rows = list(&env, &config);
    assert_eq!(rows[0]["status"], "failed");
    assert_eq!(rows[0]["api_version"], "0.9.0");
    let reason = rows[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("plugin-api 0.9.0") && reason.contains("plugin-api 1.1.0"),
        "{reason}"
    );
    assert!(!reason.contains('\n'));
    // Required, it stops kiln with exit code 2 and one line naming plugin, path and versions.
    let config = env.write(
        "kiln.toml",
        format!(
            "version = 1\nrequired_plugins = [\"io.kiln.test.v1.oldapi\"]\n[plugins.\"io.kiln.test.v1.oldapi\"]\npath = {:?}\n",
            so.display().to_string()
        ),
    );
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "plugins".as_ref(),
        "list".as_ref(),
    ]);
    run.expect_code(2);
    let line = run.stderr.trim();
    assert!(!line.contains('\n'), "{line}");
    for want in [
        "io.kiln.test.v1.oldapi",
        so.to_str().unwrap(),
        "0.9.0",
        "1.1.0",
    ] {
        assert!(line.contains(want), "{want} missing from {line}");
    }
}

#[test]
fn a_panic_in_cache_key_is_exit_code_1_with_a_clear_error() {
    let env = Env::new();
    let config = testsrc_config(&env, &plugin_file(TESTSRC), "");
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "source".as_ref(),
        "resolve".as_ref(),
        "testsrc://panic".as_ref(),
    ]);
    run.expect_code(1);
    assert!(
        run.stderr
            .contains("plugin panicked in cache_key: the testsrc plugin was asked to panic"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("RUST_BACKTRACE") && !run.stderr.contains("panicked at"),
        "{}",
        run.stderr
    );
}

#[test]
fn after_a_panic_the_host_keeps_serving_other_sources() {
    let env = Env::new();
    let so = plugin_file(TESTSRC);
    let local = plugin_file("kiln_source_local");
    let text = format!(
        "version = 1\n[plugins.\"io.kiln.test.v1.testsrc\"]\npath = {:?}\n[plugins.\"io.kiln.source.v1.local\"]\npath = {:?}\n",
        so.display().to_string(),
        local.display().to_string()
    );
    let config =
        kiln::config::Config::parse(&text, kiln::config::ConfigSource::BuiltIn, &[]).unwrap();
    let app = kiln::app::AppContext::new(config, env.root(), 2, Default::default()).unwrap();
    let ctx_dir = env.path("ctx");
    std::fs::create_dir_all(&ctx_dir).unwrap();
    let job = Arc::new(kiln::job::Job::new(
        Default::default(),
        [("ctx".to_string(), ctx_dir)].into_iter().collect(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attrs = BTreeMap::new();
        let resolve = |id: &'static str| {
            let app = &app;
            let attrs = &attrs;
            async move {
                let id = app.sources.identifier(id, attrs, None).await?;
                app.sources.resolve(&id).await
            }
        };
        let ok = resolve("testsrc://ok/a").await.unwrap();
        assert_eq!(ok.cache_map(0, &job, "s").await.unwrap().key, "testsrc:a");

        let panicky = resolve("testsrc://panic").await.unwrap();
        let e = panicky.cache_map(0, &job, "s").await.unwrap_err();
        assert_eq!(e.code, kiln_plugin_api::ErrorCode::PANICKED);

        // The panicking plugin is poisoned; the rest of the host goes on.
        let e = ok.cache_map(0, &job, "s").await.unwrap_err();
        assert!(e.message.contains("poisoned"), "{e}");
        let l = resolve("local://ctx").await.unwrap();
        let m = l.cache_map(0, &job, "s").await.unwrap();
        assert!(m.key.starts_with("session:ctx:"), "{m:?}");
        assert!(m.digest.starts_with("random:"), "{m:?}");
    });
}

#[test]
fn plugin_log_lines_reach_the_host_log_with_its_level_filter() {
    let env = Env::new();
    let config = testsrc_config(&env, &plugin_file(TESTSRC), "");
    let args = |level: &'static str| {
        vec![
            "--config".to_string(),
            config.display().to_string(),
            "--log-level".to_string(),
            level.to_string(),
            "source".to_string(),
            "resolve".to_string(),
            "testsrc://log/hello-from-the-plugin".to_string(),
        ]
    };
    let run = env.kiln(args("info"));
    run.success();
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("testsrc says hello-from-the-plugin"))
        .unwrap_or_else(|| panic!("no plugin log line in:\n{}", run.stderr));
    assert!(
        line.contains("INFO")
            && line.contains("io.kiln.test.v1.testsrc")
            && line.contains("answer=42"),
        "{line}"
    );
    let run = env.kiln(args("warn"));
    run.success();
    assert!(!run.stderr.contains("testsrc says"), "{}", run.stderr);
}

#[test]
fn configuration_errors_name_the_file_line_and_column() {
    let env = Env::new();
    let bad = env.write(
        "bad.toml",
        "version = 1\n[plugins.\"a\"]\npath = \"x.so\"\nsha = 3\n",
    );
    let run = env.kiln([
        "--config".as_ref(),
        bad.as_os_str(),
        "plugins".as_ref(),
        "list".as_ref(),
    ]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains(&format!("{} at line 4, column 1", bad.display())),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("unknown field `sha`"), "{}", run.stderr);

    let broken = env.write("broken.toml", "version = 1\nrequired_plugins = [\n");
    let run = env.kiln(["config".as_ref(), "check".as_ref(), broken.as_os_str()]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("at line 3, column 1: invalid array; expected `]`"),
        "{}",
        run.stderr
    );

    let good = testsrc_config(&env, &plugin_file(TESTSRC), "");
    let run = env.kiln(["config".as_ref(), "check".as_ref(), good.as_os_str()]);
    run.success();
    assert!(run.stdout.contains("1 loaded"), "{}", run.stdout);

    let run = env.kiln(["config", "default"]);
    run.success();
    assert_eq!(
        run.stdout,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/kiln.toml"))
            .unwrap()
    );
}

#[test]
fn two_plugins_claiming_one_scheme_or_id_are_a_configuration_error() {
    let env = Env::new();
    let so = plugin_file(TESTSRC);
    // testsrc plus `other` (configured as `id`) must be refused, naming both files.
    let refused = |id: &str, other: &Path, why: &str| {
        let config = testsrc_config(
            &env,
            &so,
            &format!(
                "[plugins.\"{id}\"]\npath = {:?}\n",
                other.display().to_string()
            ),
        );
        let run = env.kiln([
            "--config".as_ref(),
            config.as_os_str(),
            "plugins".as_ref(),
            "list".as_ref(),
        ]);
        run.expect_code(2);
        for want in [so.to_str().unwrap(), other.to_str().unwrap(), why] {
            assert!(
                run.stderr.contains(want),
                "{want} missing from {}",
                run.stderr
            );
        }
    };
    let clash = plugin_file("kiln_test_plugin_clash");
    refused(
        "io.kiln.test.v1.clash",
        &clash,
        "both claim the scheme \"testsrc\"",
    );
    let copy = env.path("other/libcopy.so");
    copy_file(&so, &copy);
    refused(
        "io.kiln.test.v1.copy",
        &copy,
        "both declare the plugin id \"io.kiln.test.v1.testsrc\"",
    );
}

#[test]
fn identifiers_without_or_with_an_unknown_scheme_are_usage_errors() {
    let env = Env::new();
    let run = env.kiln(["source", "resolve", "no-scheme-here"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("has no scheme") && run.stderr.contains("local"),
        "{}",
        run.stderr
    );
    let run = env.kiln(["source", "resolve", "ftp://user:hunter2@host/x"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("unknown scheme \"ftp\""),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("docker-image, git, http, https, local, oci-layout"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("hunter2"), "{}", run.stderr);
}

#[test]
fn the_config_is_found_by_the_lookup_order() {
    let env = Env::new();
    let so = plugin_file(TESTSRC);
    let text = format!(
        "version = 1\n[plugins.\"io.kiln.test.v1.testsrc\"]\npath = {:?}\n",
        so.display().to_string()
    );
    let ids = |run: kiln_tests::Run| -> Vec<String> {
        run.success();
        run.json()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    // $XDG_CONFIG_HOME/kiln/kiln.toml beats the built-in default.
    env.write("xdg-config/kiln/kiln.toml", &text);
    let got = ids(env.kiln(["plugins", "list", "--json"]));
    assert_eq!(got, ["io.kiln.test.v1.testsrc"]);
    // $KILN_CONFIG beats XDG.
    let other = env.write("other.toml", "version = 1\n");
    let run: kiln_tests::Run = env
        .command()
        .env("KILN_CONFIG", &other)
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap()
        .into();
    assert!(ids(run).is_empty());
    // --config beats $KILN_CONFIG.
    let run: kiln_tests::Run = env
        .command()
        .env("KILN_CONFIG", &other)
        .arg("--config")
        .arg(env.path("xdg-config/kiln/kiln.toml"))
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap()
        .into();
    assert_eq!(ids(run), ["io.kiln.test.v1.testsrc"]);
}

#[test]
fn disabled_plugins_are_listed_but_not_loaded() {
    let env = Env::new();
    let config = testsrc_config(&env, &plugin_file(TESTSRC), "");
    let text = std::fs::read_to_string(&config).unwrap();
    let config = env.write(
        "kiln.toml",
        text.replace(
            "version = 1\n",
            "version = 1\ndisabled_plugins = [\"io.kiln.test.v1.testsrc\"]\n",
        ),
    );
    let rows = list(&env, &config);
    assert_eq!(rows[0]["status"], "disabled", "{rows:?}");
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "source".as_ref(),
        "resolve".as_ref(),
        "testsrc://ok/a".as_ref(),
    ]);
    run.expect_code(2);
}

#[test]
fn a_plugin_that_cannot_run_here_is_skipped_and_fatal_only_when_required() {
    // The git plugin needs the `git` program: without it on PATH it asks to be skipped.
    let env = Env::new();
    let run: kiln_tests::Run = env
        .command()
        .env("PATH", "/nonexistent")
        .args(["plugins", "list", "--json"])
        .output()
        .unwrap()
        .into();
    run.success();
    let rows = run.json();
    let git = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "io.kiln.source.v1.git")
        .unwrap()
        .clone();
    assert_eq!(git["status"], "skipped", "{git}");
    assert!(git["reason"].as_str().unwrap().contains("git"), "{git}");

    let default = env.kiln(["config", "default"]).stdout;
    let config = env.write(
        "kiln.toml",
        default
            .replace(
                "required_plugins = []",
                "required_plugins = [\"io.kiln.source.v1.git\"]",
            )
            .replace(
                "path = \"libkiln_source_",
                &format!(
                    "path = \"{}/libkiln_source_",
                    kiln_tests::target_dir().display()
                ),
            ),
    );
    let run: kiln_tests::Run = env
        .command()
        .env("PATH", "/nonexistent")
        .arg("--config")
        .arg(&config)
        .args(["plugins", "list"])
        .output()
        .unwrap()
        .into();
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("required plugin \"io.kiln.source.v1.git\""),
        "{}",
        run.stderr
    );
}

#[test]
fn panics_in_describe_new_source_and_drop_never_take_the_host_down() {
    let env = Env::new();
    let config = testsrc_config(&env, &plugin_file(TESTSRC), "");
    for (at, reason) in [
        ("describe", "its describe() failed: plugin panicked in describe: the testsrc plugin was asked to panic in describe"),
        ("new", "panicked: plugin panicked in new_source: the testsrc plugin was asked to panic in new_source"),
    ] {
        let run: kiln_tests::Run = env
            .command()
            .env("KILN_TESTSRC_PANIC", at)
            .arg("--config")
            .arg(&config)
            .args(["plugins", "list", "--json"])
            .output()
            .unwrap()
            .into();
        run.expect_code(2);
        let rows = run.json_docs()[0].clone();
        assert_eq!(rows[0]["status"], "failed", "{rows}");
        assert_eq!(rows[0]["reason"], reason, "{rows}");
    }
    // A panic in an instance's destructor is caught inside the plugin too.
    let run = env.kiln([
        "--config".as_ref(),
        config.as_os_str(),
        "source".as_ref(),
        "resolve".as_ref(),
        "testsrc://dropper/x".as_ref(),
        "--json".as_ref(),
    ]);
    run.success();
    assert_eq!(run.json()["keys"][0]["key"], "testsrc:x");
}

#[test]
fn calls_into_a_plugin_respect_its_concurrency_limit() {
    // testsrc declares max_concurrency = 2; eight concurrent slow calls never overlap
    // more than that, while they all run on the blocking pool.
    let env = Env::new();
    let so = plugin_file(TESTSRC);
    let text = format!(
        "version = 1\n[plugins.\"io.kiln.test.v1.testsrc\"]\npath = {:?}\n",
        so.display().to_string()
    );
    let config =
        kiln::config::Config::parse(&text, kiln::config::ConfigSource::BuiltIn, &[]).unwrap();
    let app = kiln::app::AppContext::new(config, env.root(), 2, Default::default()).unwrap();
    let job = Arc::new(kiln::job::Job::new(Default::default(), Default::default()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attrs = BTreeMap::new();
        let mut ops = Vec::new();
        for i in 0..8 {
            let id = app
                .sources
                .identifier(&format!("testsrc://busy/{i}"), &attrs, None)
                .await
                .unwrap();
            ops.push(Arc::new(app.sources.resolve(&id).await.unwrap()));
        }
        let started = std::time::Instant::now();
        let mut calls = tokio::task::JoinSet::new();
        for op in ops {
            let job = job.clone();
            calls.spawn(async move { op.cache_map(0, &job, "s").await.map(|_| ()) });
        }
        while let Some(r) = calls.join_next().await {
            r.unwrap().unwrap();
        }
        // 8 calls of 100 ms, 2 at a time: about 400 ms, never 100 ms.
        assert!(started.elapsed() >= std::time::Duration::from_millis(380));
        let id = app
            .sources
            .identifier("testsrc://maxbusy/x", &attrs, None)
            .await
            .unwrap();
        let op = app.sources.resolve(&id).await.unwrap();
        assert_eq!(
            op.cache_map(0, &job, "s").await.unwrap().key,
            "testsrc:maxbusy=2"
        );
    });
}
