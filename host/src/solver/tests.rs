//! Solver tests on a real store and the real worker (file and merge ops; the source
//! plugins are exercised by the end-to-end tests in `tests/e2e/build.rs`).

use std::path::Path;

use super::*;
use crate::source_manager::SourceManager;
use crate::store::Store;

struct Env {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Store>,
    sources: Arc<crate::source_manager::SourceManager>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let store = Arc::new(Store::open(&root).unwrap());
    Env {
        _dir: dir,
        root,
        store,
        sources: Arc::new(SourceManager::new(&[])),
    }
}

async fn build(e: &Env, text: &str, no_cache: bool) -> Result<BuildSummary, BuildError> {
    let def = Definition::parse(text, e.root.clone())?;
    let opts = BuildOptions {
        no_cache,
        progress: ProgressMode::Quiet,
        ..Default::default()
    };
    build_with(def, e.store.clone(), e.sources.clone(), &e.root, opts).await
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

const CHAIN: &str = r#"
version = 1
[steps.a]
base = "scratch"
actions = [
  { mkdir = { path = "/sel", parents = true } },
  { mkfile = { path = "/sel/x", data = "selected" } },
  { mkfile = { path = "/other", data = "OTHER" } },
]
[steps.b]
base = "scratch"
actions = [{ copy = { from = "a", src = "/sel", dest = "/out" } }]
[steps.c]
base = "b"
actions = [{ mkfile = { path = "/c", data = "c" } }]
[steps.d]
base = "scratch"
actions = [{ mkfile = { path = "/d", data = "d" } }]
[steps.all]
merge = ["c", "d"]
[output]
step = "all"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_build_is_fully_cached_and_no_cache_reruns() {
    let e = env();
    let s1 = build(&e, CHAIN, false).await.unwrap();
    assert_eq!((s1.steps, s1.executed, s1.cached), (5, 5, 0));
    assert_eq!(read(&s1.path.join("out/x")), "selected");
    assert_eq!(read(&s1.path.join("c")), "c");
    assert_eq!(read(&s1.path.join("d")), "d");
    assert!(!s1.path.join("other").exists());

    let s2 = build(&e, CHAIN, false).await.unwrap();
    assert_eq!((s2.executed, s2.cached), (0, 5));
    assert_eq!(s2.snapshot, s1.snapshot);

    let s3 = build(&e, CHAIN, true).await.unwrap();
    assert_eq!((s3.executed, s3.cached), (5, 0));
    assert_eq!(read(&s3.path.join("out/x")), "selected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unselected_change_keeps_dependents_cached() {
    let e = env();
    build(&e, CHAIN, false).await.unwrap();
    // `a` changes outside `/sel`: only `a` runs again; `b` hits its content key, and
    // everything after `b` hits its definition key.
    let s = build(&e, &CHAIN.replace("OTHER", "OTHER v2"), false)
        .await
        .unwrap();
    assert_eq!((s.executed, s.cached), (1, 4), "{s:?}");
    // A selected change re-runs exactly the steps downstream of it: a, b, c, all.
    let s = build(&e, &CHAIN.replace("\"selected\"", "\"selected v2\""), false)
        .await
        .unwrap();
    assert_eq!((s.executed, s.cached), (4, 1), "{s:?}");
    assert_eq!(read(&s.path.join("out/x")), "selected v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_builds_in_one_process_run_each_vertex_once() {
    let e = env();
    let (r1, r2, r3) = tokio::join!(
        build(&e, CHAIN, false),
        build(&e, CHAIN, false),
        build(&e, CHAIN, false)
    );
    let (r1, r2, r3) = (r1.unwrap(), r2.unwrap(), r3.unwrap());
    assert_eq!(r1.executed + r2.executed + r3.executed, 5);
    assert_eq!(r1.snapshot, r2.snapshot);
    assert_eq!(r2.snapshot, r3.snapshot);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_steps_in_one_build_are_one_vertex() {
    let e = env();
    let text = r#"
version = 1
[steps.x1]
base = "scratch"
actions = [{ mkfile = { path = "/f", data = "same" } }]
[steps.x2]
base = "scratch"
actions = [{ mkfile = { path = "/f", data = "same" } }]
[steps.m]
merge = ["x1", "x2"]
[output]
step = "m"
"#;
    let s = build(&e, text, false).await.unwrap();
    assert_eq!((s.steps, s.executed), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_is_named_and_exits_1() {
    let e = env();
    let text = r#"
version = 1
[steps.a]
base = "scratch"
actions = [{ mkfile = { path = "/f", data = "x" } }]
[steps.bad]
base = "scratch"
actions = [{ copy = { from = "a", src = "/missing", dest = "/x" } }]
[output]
step = "bad"
"#;
    let err = build(&e, text, false).await.unwrap_err();
    assert_eq!(err.exit_code(), 1);
    let msg = err.to_string();
    assert!(msg.contains("step `bad`"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_stay_inside_the_tree() {
    let e = env();
    let text = r#"
version = 1
[steps.a]
base = "scratch"
actions = [
  { symlink = { target = "/etc", path = "/etc-link" } },
  { mkdir = { path = "/etc" } },
  { mkfile = { path = "/etc/passwd", data = "tree passwd" } },
]
[steps.b]
base = "scratch"
actions = [
  { copy = { from = "a", src = "../../etc/passwd", dest = "/p1" } },
  { copy = { from = "a", src = "/etc-link/passwd", dest = "/p2", follow_symlinks = true } },
  { mkfile = { path = "/etc-link/../../../escape", data = "x" } },
]
[output]
step = "b"
"#;
    let s = build(&e, text, false).await.unwrap();
    assert_eq!(read(&s.path.join("p1")), "tree passwd");
    assert_eq!(read(&s.path.join("p2")), "tree passwd");
    assert!(s.path.join("escape").exists());
    assert!(!e.root.parent().unwrap().join("escape").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_whose_snapshot_folder_vanished_is_a_miss() {
    let e = env();
    let s1 = build(&e, CHAIN, false).await.unwrap();
    // As an interrupted prune can leave it: the folders gone, the records kept.
    for entry in std::fs::read_dir(e.root.join("snapshots")).unwrap() {
        std::fs::remove_dir_all(entry.unwrap().path()).unwrap();
    }
    let s2 = build(&e, CHAIN, false).await.unwrap();
    assert_eq!((s2.executed, s2.cached), (5, 0), "{s2:?}");
    assert_ne!(s2.snapshot, s1.snapshot);
    assert_eq!(read(&s2.path.join("out/x")), "selected");
    // The vanished results were released: the next build finds the new ones.
    let s3 = build(&e, CHAIN, false).await.unwrap();
    assert_eq!((s3.executed, s3.snapshot), (0, s2.snapshot));
}
