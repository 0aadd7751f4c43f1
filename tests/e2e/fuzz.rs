//! Fuzzing of every parser that takes untrusted text (issue 9): the four standard
//! plugins' identifier parsers (through the real `.so` files, loaded by the host's
//! plugin loader and called through the SourceManager), the build definition,
//! `kiln.toml`, and the `--output` and `--secret` specs. None may panic (a plugin's
//! caught panic, reported as `panicked`, counts as one).
//!
//! proptest with a fixed seed and a bounded number of cases, so the suite is
//! repeatable. For a longer run: `KILN_FUZZ_SECS=600` runs each target for that many
//! seconds (new seeds after the first round), `KILN_FUZZ_SEED` picks the seed, and
//! `KILN_FUZZ_TARGET` runs one target only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_plugin_api::ErrorCode;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Cases per round in the suite.
const CASES: u32 = 384;

fn seed() -> u64 {
    std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6b69_6c6e_2d39)
}

/// Runs `test` on values of `strategy`: one round of [`CASES`] cases with the fixed
/// seed, or rounds with successive seeds for `KILN_FUZZ_SECS` seconds.
fn fuzz<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: std::fmt::Debug,
{
    if let Ok(only) = std::env::var("KILN_FUZZ_TARGET") {
        if only != name {
            return;
        }
    }
    let secs: u64 = std::env::var("KILN_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(secs);
    let (mut rounds, mut cases) = (0u64, 0u64);
    loop {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&seed().wrapping_add(rounds).to_le_bytes());
        bytes[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
        let mut runner = TestRunner::new_with_rng(
            Config {
                cases: CASES,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
        );
        if let Err(e) = runner.run(&strategy, &test) {
            panic!("{name}: {e}");
        }
        rounds += 1;
        cases += u64::from(CASES);
        if Instant::now() >= until {
            break;
        }
    }
    eprintln!("fuzz {name}: {cases} cases in {rounds} round(s), no panic");
}

/// Text that looks like the target's input: fragments of the real grammar mixed with
/// arbitrary characters (controls, NUL, non-ASCII, very long runs).
fn texty(fragments: &'static [&'static str]) -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => proptest::sample::select(fragments).prop_map(str::to_string),
        2 => "[a-zA-Z0-9._/:@%?#=&,+~-]{0,12}",
        1 => any::<String>().prop_map(|s| s.chars().take(8).collect()),
        1 => proptest::sample::select(&["\0", "\n", "\u{1b}[2J", "\u{202e}", "..", "//", "%00", "é", "\\"][..]).prop_map(str::to_string),
        1 => (1usize..3000).prop_map(|n| "a".repeat(n)),
        1 => (0u64..u64::MAX).prop_map(|n| n.to_string()),
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

// ---------------------------------------------------------------------------------------
// The plugins' identifiers, through the real loaded plugins.

const ID_FRAGMENTS: &[&str] = &[
    "docker-image://",
    "oci-layout://",
    "local://",
    "git://",
    "http://",
    "https://",
    "ssh://",
    "git@",
    "github.com",
    "127.0.0.1",
    "[::1]",
    ":5000",
    ":0",
    ":99999",
    "/",
    "busybox",
    "library/",
    ":latest",
    "@sha256:",
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "#main",
    "#v1:sub/dir",
    "?ref=x",
    ".git",
    "user:pass@",
    "%2F",
    "?",
    "#",
    "=",
    "*",
    "localhost",
    "UPPER",
    "a..b",
    "-",
    "_",
    "@",
    ":",
];

const ATTR_KEYS: &[&str] = &[
    "http.checksum",
    "http.filename",
    "http.perm",
    "http.uid",
    "http.gid",
    "http.authheadersecret",
    "http.header.user-agent",
    "http.header.accept",
    "http.maxsize",
    "git.keepgitdir",
    "git.fullurl",
    "git.authtokensecret",
    "git.authheadersecret",
    "git.mountsshsock",
    "git.knownsshhosts",
    "git.subdir",
    "git.checksum",
    "git.skipsubmodules",
    "image.recordtype",
    "image.layerlimit",
    "image.resolvemode",
    "oci.store",
    "oci.sessionid",
    "local.includepattern",
    "local.excludepatterns",
    "local.followpaths",
    "local.sharedkeyhint",
    "local.differ",
    "local.session",
    "local.unique",
    "other",
];

const ATTR_VALUES: &[&str] = &[
    "",
    "0",
    "1",
    "-1",
    "true",
    "false",
    "0644",
    "0x10",
    "0o7",
    "99999999999999999999",
    "[\"a\",\"b\"]",
    "[",
    "sha256:",
    "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "*.log",
    "**",
    "!x",
    "../..",
    "/abs",
    "none",
    "metadata",
    "default",
    "pull",
    "local",
];

fn identifiers() -> impl Strategy<Value = (String, BTreeMap<String, String>, Option<String>)> {
    let attrs = proptest::collection::btree_map(
        proptest::sample::select(ATTR_KEYS).prop_map(str::to_string),
        prop_oneof![
            3 => proptest::sample::select(ATTR_VALUES).prop_map(str::to_string),
            1 => texty(ATTR_VALUES),
        ],
        0..4,
    );
    let platform = proptest::option::of(prop_oneof![
        proptest::sample::select(
            &[
                "linux/amd64",
                "linux/arm64/v8",
                "windows/amd64",
                "linux",
                "/",
                "linux//"
            ][..]
        )
        .prop_map(str::to_string),
        texty(&["linux", "/", "amd64", "arm", "v7"]),
    ]);
    (texty(ID_FRAGMENTS), attrs, platform)
}

#[test]
fn plugin_identifiers_never_panic() {
    let env = kiln_tests::Env::new();
    let mut text = String::from("version = 1\nrequired_plugins = [\"io.kiln.source.v1.image\", \"io.kiln.source.v1.local\", \"io.kiln.source.v1.git\", \"io.kiln.source.v1.http\"]\n");
    for (id, lib) in [
        ("image", "kiln_source_image"),
        ("local", "kiln_source_local"),
        ("git", "kiln_source_git"),
        ("http", "kiln_source_http"),
    ] {
        text.push_str(&format!(
            "[plugins.\"io.kiln.source.v1.{id}\"]\npath = {:?}\n",
            kiln_tests::plugin_file(lib).display().to_string()
        ));
    }
    let config = kiln::config::Config::parse(&text, kiln::config::ConfigSource::BuiltIn, &[])
        .expect("config");
    let app = kiln::app::AppContext::new(config, env.root(), 0, Default::default())
        .expect("the four plugins load");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let sources = app.sources.clone();
    let sources = Arc::new(sources);
    // Inputs that made a plugin panic once (found by this harness), checked first.
    for ident in ["git://🂿http://x", "git://a🂿http://", "git://x@é://"] {
        let r = rt.block_on(sources.identifier(ident, &BTreeMap::new(), None));
        if let Err(e) = r {
            assert!(e.code != ErrorCode::PANICKED, "{ident:?}: {}", e.message);
        }
    }
    // A plugin that panicked is poisoned and refuses later calls, so shrinking cannot
    // find a smaller input: the first input that made it panic is the one reported.
    let first_panic = std::sync::Mutex::new(None::<String>);
    fuzz("identifiers", identifiers(), |(ident, attrs, platform)| {
        let r = rt.block_on(sources.identifier(&ident, &attrs, platform.as_deref()));
        if let Err(e) = r {
            if e.code == ErrorCode::PANICKED {
                let mut first = first_panic.lock().unwrap();
                let first = first.get_or_insert_with(|| {
                    format!("{ident:?} {attrs:?} {platform:?}: {}", e.message)
                });
                prop_assert!(false, "a plugin panicked, first on {first}");
            }
            prop_assert!(!e.message.is_empty());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// The build definition.

const DEF_FRAGMENTS: &[&str] = &[
    "version = 1\n",
    "version = 2\n",
    "version = \"1\"\n",
    "[steps.a]\n",
    "[steps.b]\n",
    "[steps.\"x y\"]\n",
    "[output]\nstep = \"a\"\n",
    "step = \"b\"\n",
    "source = \"local://ctx\"\n",
    "source = \"nope\"\n",
    "base = \"scratch\"\n",
    "base = \"a\"\n",
    "base = \"b\"\n",
    "merge = [\"a\", \"b\"]\n",
    "merge = []\n",
    "actions = [",
    "]\n",
    "{ copy = { from = \"a\", src = \"/\", dest = \"/x\" } },",
    "{ mkdir = { path = \"/d\", mode = \"0755\", parents = true } },",
    "{ mkfile = { path = \"/f\", data = \"x\", mode = 1.5 } },",
    "{ mkfile = { path = \"\", data = \"\" } },",
    "{ rm = { path = \"/*\", allow_wildcard = true } },",
    "{ symlink = { target = \"../..\", path = \"/l\" } },",
    "{ copy = { from = \"a\", src = \"/\", dest = \"/\", owner = \"1:x\", mode = \"0o9\" } },",
    "attrs = { \"local.excludepatterns\" = [\"*\"] }\n",
    "platform = \"linux/amd64\"\n",
    "platform = \"//\"\n",
    "[[steps]]\n",
    "x = [[[[[[[[[[[[1]]]]]]]]]]]]\n",
    "= \n",
    "\"\"\"",
    "'",
    "#",
    "\n",
    "{",
    "}",
    "[",
    "]",
    ",",
];

#[test]
fn build_definitions_never_panic() {
    let dir = std::env::temp_dir();
    fuzz("definition", texty(DEF_FRAGMENTS), |text| {
        let r = kiln::build::Definition::parse(&text, dir.clone());
        if let Err(e) = r {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// kiln.toml.

const CONFIG_FRAGMENTS: &[&str] = &[
    "version = 1\n",
    "version = 0\n",
    "version = -1\n",
    "root = \"/tmp/x\"\n",
    "root = 1\n",
    "required_plugins = [\"a\"]\n",
    "disabled_plugins = [\"a\"]\n",
    "required_plugins = [1]\n",
    "[plugins.a]\n",
    "[plugins.\"io.kiln.source.v1.x\"]\n",
    "[plugins.\".bad\"]\n",
    "path = \"lib.so\"\n",
    "path = \"/nonexistent/lib.so\"\n",
    "sha256 = \"abc\"\n",
    "sha256 = \"sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\"\n",
    "[plugins.a.config]\n",
    "x = 1\n",
    "plugin_dir = \"/\"\n",
    "unknown = 1\n",
    "[worker]\n",
    "runtime = \"runc\"\n",
    "x = [[[[[[[[[[[[1]]]]]]]]]]]]\n",
    "\"\"\"",
    "=",
    "[",
    "]",
    "\n",
    "#",
];

#[test]
fn configs_never_panic() {
    fuzz("config", texty(CONFIG_FRAGMENTS), |text| {
        let r = kiln::config::Config::parse(&text, kiln::config::ConfigSource::BuiltIn, &[]);
        if let Err(e) = r {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// `--output` and `--secret`.

const OUTPUT_FRAGMENTS: &[&str] = &[
    "type=",
    "local",
    "tar",
    "oci",
    "docker",
    ",",
    "dest=",
    "-",
    "/tmp/out",
    "name=",
    "reg.io/a/b:tag",
    "a@sha256:0123",
    "\"",
    "=",
    ",,",
    "type=oci,dest=x,name=",
    "UPPER/Case",
    ":",
    "@",
];

#[test]
fn output_specs_never_panic() {
    fuzz("output", texty(OUTPUT_FRAGMENTS), |text| {
        if let Err(e) = text.parse::<kiln::export::OutputSpec>() {
            prop_assert!(!e.to_string().is_empty());
        }
        Ok(())
    });
}

const SECRET_FRAGMENTS: &[&str] = &[
    "id=",
    "src=",
    "env=",
    "type=",
    "file",
    "env",
    "required=",
    "true",
    ",",
    "=",
    "mysecret",
    "/dev/null",
    "/nonexistent",
    "HOME",
    "",
];

#[test]
fn secret_specs_never_panic() {
    fuzz("secret", texty(SECRET_FRAGMENTS), |text| {
        if let Err(e) = kiln::cli::parse_secret(&text) {
            prop_assert!(!e.message.is_empty());
        }
        Ok(())
    });
}
