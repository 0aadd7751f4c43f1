//! Parser and validator tests: the DESIGN example and a table of bad definitions.

use super::*;

fn parse(text: &str) -> Result<Definition, DefinitionError> {
    Definition::parse(text, PathBuf::from("/defs"))
}

const GOOD: &str = r#"
version = 1
[steps.base]
source = "docker-image://127.0.0.1:5000/test/busybox:1"
platform = "linux/amd64"
[steps.ctx]
source = "local://context"
attrs = { "local.excludepatterns" = ["target", "*.log"], "http.perm" = 420, "git.keepgitdir" = true }
[steps.app]
base = "base"
actions = [
  { copy = { from = "ctx", src = "/src", dest = "/app/src" } },
  { mkdir = { path = "/app/bin", mode = "0755", parents = true } },
  { mkfile = { path = "/app/VERSION", data = "1.0\n", mode = "0644" } },
  { rm = { path = "/app/tmp", allow_not_found = true } },
  { symlink = { target = "/app/bin/tool", path = "/usr/bin/tool" } },
]
[steps.all]
merge = ["app", "ctx"]
[output]
step = "all"
"#;

#[test]
fn parses_the_design_example() {
    let d = parse(GOOD).unwrap();
    assert_eq!(d.output, "all");
    assert_eq!(d.steps.len(), 4);
    let Step::Source(ctx) = &d.steps["ctx"] else {
        panic!("ctx is a source")
    };
    assert_eq!(ctx.attrs["local.excludepatterns"], r#"["target","*.log"]"#);
    assert_eq!(ctx.attrs["http.perm"], "420");
    assert_eq!(ctx.attrs["git.keepgitdir"], "true");
    let Step::File(app) = &d.steps["app"] else {
        panic!("app is a file step")
    };
    assert_eq!(app.base.as_deref(), Some("base"));
    assert_eq!(app.actions.len(), 5);
    let Action::Copy(c) = &app.actions[0] else {
        panic!("copy first")
    };
    assert!(c.create_dest_path && c.allow_wildcard && !c.follow_symlinks);
    let Action::Mkdir(m) = &app.actions[1] else {
        panic!("mkdir second")
    };
    assert_eq!((m.mode, m.parents), (0o755, true));
    assert_eq!(d.steps["app"].inputs(), vec!["base", "ctx"]);
    assert_eq!(d.needed_order(), vec!["base", "ctx", "app", "all"]);
}

#[test]
fn scratch_base_and_integer_modes() {
    let d = parse(
        r#"
version = 1
[steps.a]
base = "scratch"
actions = [{ mkfile = { path = "f", data = "x", mode = 0o600 } }]
[steps.unused]
source = "local://x"
[output]
step = "a"
"#,
    )
    .unwrap();
    let Step::File(a) = &d.steps["a"] else {
        panic!()
    };
    assert_eq!(a.base, None);
    let Action::Mkfile(f) = &a.actions[0] else {
        panic!()
    };
    assert_eq!(f.mode, 0o600);
    assert_eq!(d.needed_order(), vec!["a"]);
}

/// Each bad definition, the step its error must name (or "" when none), and a piece of
/// the message.
const BAD: &[(&str, &str, &str)] = &[
    ("version = 1\n[steps.a]\nsource = \"local://x\"\n", "", "missing [output]"),
    ("[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"a\"\n", "", "missing `version"),
    ("version = 2\n[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"a\"\n", "", "unsupported version 2"),
    ("version = 1\n[output]\nstep = \"a\"\n", "", "no steps"),
    ("version = 1\nextra = 3\n[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"a\"\n", "", "unknown top-level key `extra`"),
    ("version = 1\n[steps.a\nsource = 1\n", "", "line 2"),
    ("version = 1\n[steps.a]\nsource = \"local://x\"\nbogus = 1\n[output]\nstep = \"a\"\n", "a", "unknown key `bogus`"),
    ("version = 1\n[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"b\"\n", "b", "no such step"),
    ("version = 1\n[steps.a]\nsource = \"local://x\"\n[output]\nstep = \"a\"\nfoo = 1\n", "", "unknown key `foo`"),
    ("version = 1\n[steps.a]\nbase = \"nope\"\nactions = []\n[output]\nstep = \"a\"\n", "a", "step `nope`, which does not exist"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ copy = { from = \"ghost\", src = \"/\", dest = \"/\" } }]\n[output]\nstep = \"a\"\n", "a", "copy from refers to step `ghost`"),
    ("version = 1\n[steps.a]\nmerge = [\"b\", \"zzz\"]\n[steps.b]\nsource = \"local://x\"\n[output]\nstep = \"a\"\n", "a", "step `zzz`"),
    ("version = 1\n[steps.a]\nmerge = [\"b\"]\n[steps.b]\nbase = \"a\"\n[output]\nstep = \"a\"\n", "a", "cycle: a -> b -> a"),
    ("version = 1\n[steps.a]\nbase = \"a\"\n[output]\nstep = \"a\"\n", "a", "cycle: a -> a"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ copy = { from = \"a\", src = \"/\", dest = \"/\" } }]\n[output]\nstep = \"a\"\n", "a", "cycle"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkdir = { path = \"/x\", mdoe = \"0755\" } }]\n[output]\nstep = \"a\"\n", "a", "action 1 (mkdir): unknown field `mdoe`"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ chmod = { path = \"/x\" } }]\n[output]\nstep = \"a\"\n", "a", "action 1 (chmod)"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkdir = { path = \"/x\" }, rm = { path = \"/y\" } }]\n[output]\nstep = \"a\"\n", "a", "exactly one"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkdir = { path = \"/x\", mode = \"9z\" } }]\n[output]\nstep = \"a\"\n", "a", "not an octal number"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ mkfile = { path = \"/x\", owner = \"root\" } }]\n[output]\nstep = \"a\"\n", "a", "UID:GID"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ rm = { path = \"\" } }]\n[output]\nstep = \"a\"\n", "a", "non-empty path"),
    ("version = 1\n[steps.a]\nbase = \"scratch\"\nactions = [{ copy = { from = \"a\", dest = \"/\" } }]\n[output]\nstep = \"a\"\n", "a", "missing field `src`"),
    ("version = 1\n[steps.a]\nsource = \"local://x\"\nmerge = [\"a\"]\n[output]\nstep = \"a\"\n", "a", "`merge` cannot be used in a source step"),
    ("version = 1\n[steps.a]\nsource = \"noscheme\"\n[output]\nstep = \"a\"\n", "a", "has no scheme"),
    ("version = 1\n[steps.a]\nsource = \"docker-image://x:1\"\nplatform = \"linux\"\n[output]\nstep = \"a\"\n", "a", "OS/ARCH"),
    ("version = 1\n[steps.a]\nsource = \"local://x\"\nattrs = { \"x\" = { y = 1 } }\n[output]\nstep = \"a\"\n", "a", "attribute `x`"),
    ("version = 1\n[steps.a]\nmerge = []\n[output]\nstep = \"a\"\n", "a", "lists no steps"),
    ("version = 1\n[steps.a]\n[output]\nstep = \"a\"\n", "a", "nothing to do"),
    ("version = 1\n[steps.scratch]\nsource = \"local://x\"\n[output]\nstep = \"scratch\"\n", "scratch", "reserved"),
    ("version = 1\n[steps.\"a b\"]\nsource = \"local://x\"\n[output]\nstep = \"a b\"\n", "a b", "step name"),
    ("version = 1\nsteps = 3\n[output]\nstep = \"a\"\n", "", "table of steps"),
];

#[test]
fn every_bad_definition_gets_one_clear_error() {
    for (text, step, needle) in BAD {
        let err = match parse(text) {
            Ok(_) => panic!("accepted a bad definition:\n{text}"),
            Err(e) => e,
        };
        let msg = err.to_string();
        assert!(
            msg.contains(needle),
            "{msg:?} should contain {needle:?}\n{text}"
        );
        assert!(!msg.contains('\n'), "one line: {msg:?}");
        if step.is_empty() {
            assert_eq!(err.step_name(), None, "{msg}");
        } else {
            assert_eq!(err.step_name(), Some(*step), "{msg}");
            assert!(msg.contains(&format!("step `{step}`")), "{msg}");
        }
    }
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("kiln.build.toml");
    std::fs::write(
        &f,
        "version = 1\n[steps.a]\nbase = \"nope\"\n[output]\nstep = \"a\"\n",
    )
    .unwrap();
    let msg = Definition::load(&f).unwrap_err().to_string();
    assert!(
        msg.contains(&f.display().to_string()) && msg.contains("step `a`"),
        "{msg}"
    );
    let missing = Definition::load(&dir.path().join("none.toml"))
        .unwrap_err()
        .to_string();
    assert!(missing.contains("none.toml"), "{missing}");
    std::fs::write(
        &f,
        "version = 1\n[steps.a]\nsource = \"local://c\"\n[output]\nstep = \"a\"\n",
    )
    .unwrap();
    let d = Definition::load(&f).unwrap();
    assert_eq!(d.dir, std::fs::canonicalize(dir.path()).unwrap());
}
