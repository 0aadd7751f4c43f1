//! The first hour with kiln, through the real binary: a printed default config that
//! works wherever it is saved, failed plugins that are reported (exit code, build
//! errors naming them), and read-only commands that create nothing.

use std::fs;
use std::path::Path;

use kiln_tests::{Env, Run};

fn with_config(env: &Env, config: &Path, args: &[&str]) -> Run {
    let mut all = vec!["--config".to_string(), config.display().to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    env.kiln(&all)
}

/// Every path under `dir` (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.display().to_string());
        }
    }
    out.sort();
    out
}

#[test]
fn the_printed_default_config_works_from_any_folder() {
    let env = Env::new();
    let default = env.kiln(["config", "default"]);
    default.success();
    // Saved far from the binary, the way `kiln config default > /etc/kiln/kiln.toml` is.
    let config = env.write("etc/kiln/kiln.toml", &default.stdout);
    let run = with_config(&env, &config, &["plugins", "list", "--json"]);
    run.success();
    let rows = run.json();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:?}");
    for r in rows {
        assert_eq!(r["status"], "loaded", "{r}");
        // Bare file names come from plugin_dir's default: the binary's folder.
        let path = Path::new(r["path"].as_str().unwrap());
        assert_eq!(path.parent().unwrap(), kiln_tests::target_dir(), "{r}");
    }
    // And it is usable: a local source is served from that config.
    env.write("ctx/a.txt", "a\n");
    let run = with_config(
        &env,
        &config,
        &[
            "source",
            "fetch",
            "local://ctx",
            "--local",
            &format!("ctx={}", env.path("ctx").display()),
            "--dest",
            &env.path("out").display().to_string(),
        ],
    );
    run.success();
    assert_eq!(fs::read_to_string(env.path("out/a.txt")).unwrap(), "a\n");
}

#[test]
fn plugin_dir_and_paths_with_a_slash() {
    let env = Env::new();
    let target = kiln_tests::target_dir();
    // plugin_dir given relative to the config file's folder: a symlinked folder of
    // the built plugins, so bare names resolve through it.
    fs::create_dir_all(env.path("conf")).unwrap();
    std::os::unix::fs::symlink(&target, env.path("conf/plugins")).unwrap();
    let config = env.write(
        "conf/kiln.toml",
        "version = 1\nplugin_dir = \"plugins\"\n\
         [plugins.\"io.kiln.source.v1.local\"]\npath = \"libkiln_source_local.so\"\n",
    );
    let run = with_config(&env, &config, &["plugins", "list", "--json"]);
    run.success();
    let rows = run.json();
    assert_eq!(rows[0]["status"], "loaded", "{rows}");
    assert_eq!(
        rows[0]["path"].as_str().unwrap(),
        env.path("conf/plugins/libkiln_source_local.so")
            .display()
            .to_string()
    );
    // A path with a slash is relative to the config file's folder, not plugin_dir.
    let config = env.write(
        "conf/kiln.toml",
        "version = 1\nplugin_dir = \"/nonexistent\"\n\
         [plugins.\"io.kiln.source.v1.local\"]\npath = \"plugins/libkiln_source_local.so\"\n",
    );
    let run = with_config(&env, &config, &["plugins", "list", "--json"]);
    run.success();
    assert_eq!(run.json()[0]["status"], "loaded");
}

#[test]
fn a_missing_plugin_fails_plugins_list_and_is_named_by_the_build() {
    let env = Env::new();
    let default = env.kiln(["config", "default"]).stdout;
    // The default with plugin_dir pointing where the local plugin is not.
    fs::create_dir_all(env.path("lib")).unwrap();
    for name in ["image", "git", "http"] {
        let file = format!("libkiln_source_{name}.so");
        kiln_tests::copy_file(
            &kiln_tests::target_dir().join(&file),
            &env.path("lib").join(&file),
        );
    }
    let text = default.replace(
        "# plugin_dir = ",
        &format!(
            "plugin_dir = {:?}\n# was: ",
            env.path("lib").display().to_string()
        ),
    );
    assert_ne!(text, default, "the default config documents plugin_dir");
    let config = env.write("kiln.toml", &text);

    let run = with_config(&env, &config, &["plugins", "list"]);
    run.expect_code(2);
    assert!(run.stdout.contains("failed"), "{}", run.stdout);
    assert!(
        run.stderr.contains("1 configured plugin failed to load")
            && run.stderr.contains("io.kiln.source.v1.local"),
        "{}",
        run.stderr
    );
    let run = with_config(&env, &config, &["plugins", "list", "--json"]);
    run.expect_code(2);
    let docs = run.json_docs();
    assert_eq!(docs.len(), 2, "the listing, then the error: {}", run.stdout);
    assert_eq!(docs[1]["error"]["code"], "invalid_config");
    assert_eq!(docs[1]["error"]["plugin"], "io.kiln.source.v1.local");
    let failed: Vec<_> = docs[0]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "failed")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(failed, ["io.kiln.source.v1.local"]);

    // The build that needs it names the plugin and why it failed, not just the scheme.
    env.write("ctx/a.txt", "a\n");
    let def = env.write(
        "kiln.build.toml",
        "version = 1\n[steps.ctx]\nsource = \"local://context\"\n[output]\nstep = \"ctx\"\n",
    );
    let run = with_config(
        &env,
        &config,
        &[
            "--progress",
            "plain",
            "build",
            &def.display().to_string(),
            "--local",
            &format!("context={}", env.path("ctx").display()),
        ],
    );
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("unknown scheme \"local\"")
            && run.stderr.contains("io.kiln.source.v1.local")
            && run.stderr.contains("failed to load"),
        "{}",
        run.stderr
    );
    // A disabled plugin is named as disabled.
    let config = env.write(
        "kiln.toml",
        default.replace(
            "disabled_plugins = []",
            "disabled_plugins = [\"io.kiln.source.v1.local\"]",
        ),
    );
    let run = with_config(&env, &config, &["source", "resolve", "local://context"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("io.kiln.source.v1.local") && run.stderr.contains("disabled_plugins"),
        "{}",
        run.stderr
    );
    // Disabled is not a failure: plugins list succeeds.
    with_config(&env, &config, &["plugins", "list"]).success();
}

#[test]
fn cache_du_on_a_missing_root_creates_nothing() {
    let env = Env::new();
    let root = env.root();
    assert!(!root.exists());
    let run = env.kiln(["cache", "du"]);
    run.success();
    assert!(run.stdout.contains("total: 0 B"), "{}", run.stdout);
    assert!(run.stdout.contains(&root.display().to_string()));
    let run = env.kiln(["cache", "du", "--json"]);
    run.success();
    assert_eq!(run.json()["total_bytes"], 0);
    assert_eq!(run.json()["snapshots"]["count"], 0);
    // Other read-only commands leave the root alone too.
    env.kiln(["plugins", "list"]).success();
    env.kiln(["plugins", "show", "io.kiln.source.v1.image"])
        .success();
    env.kiln(["config", "check"]).success();
    assert!(!root.exists(), "created: {:?}", entries(&root));

    // Once a build made the root, du measures it.
    env.write("ctx/a.txt", "hello\n");
    let def = env.write(
        "kiln.build.toml",
        "version = 1\n[steps.ctx]\nsource = \"local://context\"\n[output]\nstep = \"ctx\"\n",
    );
    env.kiln([
        "--progress",
        "quiet",
        "build",
        &def.display().to_string(),
        "--local",
        &format!("context={}", env.path("ctx").display()),
    ])
    .success();
    let run = env.kiln(["cache", "du", "--json"]);
    run.success();
    assert!(
        run.json()["snapshots"]["count"].as_u64().unwrap() >= 1,
        "{}",
        run.stdout
    );
}

#[test]
fn a_bad_output_is_reported_once() {
    let env = Env::new();
    let def = env.write(
        "kiln.build.toml",
        "version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkdir = { path = \"/x\" } }]\n[output]\nstep = \"a\"\n",
    );
    let run = env.kiln([
        "build",
        &def.display().to_string(),
        "--output",
        "type=docker",
    ]);
    run.expect_code(2);
    assert_eq!(
        run.stderr.matches("type=docker").count(),
        1,
        "the flag's value is named once: {}",
        run.stderr
    );
    assert!(run.stderr.contains("invalid --output"), "{}", run.stderr);
}

/// The settings of a TOML text: lines without comments and blanks.
fn settings(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| match l.find(" #") {
            Some(i) if l[..i].matches('"').count() % 2 == 0 => &l[..i],
            _ => l,
        })
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_config_example_is_the_real_default() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let section = &readme[readme
        .find("## Configuration")
        .expect("a Configuration section")..];
    let start = section.find("```toml\n").expect("a toml example") + 8;
    let example = &section[start..start + section[start..].find("```").unwrap()];
    let env = Env::new();
    let default = env.kiln(["config", "default"]);
    default.success();
    assert_eq!(settings(example), settings(&default.stdout));
}
