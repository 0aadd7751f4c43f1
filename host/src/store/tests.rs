//! Tests of the store against real directories, a real SQLite database, real threads and
//! real child processes (the test binary re-run in a child mode, killed with SIGKILL
//! where a test needs a crash).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use rusqlite::params;
use sha2::{Digest, Sha256};

use super::*;

/// A scratch directory removed at the end of the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("kiln-store-test-{}", fsutil::random_hex(8)));
        fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fsutil::remove_tree(&self.0);
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Runs this test binary as a child in `mode` (see [`child_entry`]) on `root`.
fn child(mode: &str, root: &Path, arg: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        "store::tests::child_entry",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("KILN_STORE_CHILD", mode)
    .env("KILN_STORE_ROOT", root)
    .env("KILN_STORE_ARG", arg)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    c
}

/// Lines the child printed with the `CHILD:` prefix.
fn child_lines(out: &std::process::Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.find("CHILD:").map(|i| l[i + 6..].to_string()))
        .collect()
}

/// Reads the child's stdout until it prints `CHILD:<what>`.
fn wait_for_line(c: &mut std::process::Child, what: &str) {
    let mut out = c.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut byte = [0u8; 1];
    let want = format!("CHILD:{what}\n");
    while !String::from_utf8_lossy(&seen).contains(&want) {
        if out.read(&mut byte).unwrap() == 0 {
            let mut err = String::new();
            c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            panic!(
                "child exited before printing {want:?}: {}{err}",
                String::from_utf8_lossy(&seen)
            );
        }
        seen.push(byte[0]);
    }
}

fn kill_self() -> ! {
    std::io::stdout().flush().unwrap();
    // SAFETY: sending SIGKILL to ourselves; nothing runs after it.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    unreachable!("SIGKILL returned")
}

/// Not a test of its own: the entry point of child processes spawned by other tests.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("KILN_STORE_CHILD") else {
        return;
    };
    let root = PathBuf::from(std::env::var("KILN_STORE_ROOT").unwrap());
    let arg = std::env::var("KILN_STORE_ARG").unwrap_or_default();
    let store = Store::open(&root).unwrap();
    match mode.as_str() {
        // Write the first `arg` bytes of the pattern into an ingest, then die.
        "ingest-half-then-kill" => {
            let n: usize = arg.parse().unwrap();
            let mut ing = store.ingest("http://example.test/file").unwrap();
            ing.set_validator("\"etag-1\"").unwrap();
            ing.write_all(&pattern(1 << 22)[..n]).unwrap();
            ing.flush().unwrap();
            kill_self();
        }
        // Build key `arg` once: lock, look up, else stage + commit + save.
        "build-once" => {
            let _lock = store.lock_key(&arg).unwrap();
            if let Some(r) = store.load_result(&arg).unwrap() {
                println!("CHILD:cached {}", r.snapshot);
                return;
            }
            let st = store.stage().unwrap();
            fs::write(st.path().join("out.txt"), format!("built for {arg}\n")).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let id = store.commit(st, SnapshotMeta::default()).unwrap();
            store.save_result(&arg, &id).unwrap();
            println!("CHILD:built {id}");
        }
        // Hold key lock `arg` and say so, then wait to be killed.
        "hold-lock" => {
            let _lock = store.lock_key(&arg).unwrap();
            println!("CHILD:locked");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        // Commit a snapshot (leased by this dead-to-be owner), leave a staging dir with
        // data and an unrecorded snapshot dir, then die.
        "commit-then-kill" => {
            let st = store.stage().unwrap();
            fs::write(st.path().join("a"), b"committed").unwrap();
            let id = store.commit(st, SnapshotMeta::default()).unwrap();
            if arg == "save" {
                store.save_result("sha256:key-of-dead-build", &id).unwrap();
            }
            let st = store.stage().unwrap();
            fs::write(st.path().join("partial"), vec![1u8; 4096]).unwrap();
            std::mem::forget(st);
            println!("CHILD:{id}");
            kill_self();
        }
        // Lease snapshot `arg`, report, then wait to be killed.
        "lease-and-wait" => {
            let id = SnapshotId::parse(&arg).unwrap();
            assert!(store.lease_snapshot(&id).unwrap());
            println!("CHILD:leased");
            std::io::stdout().flush().unwrap();
            std::thread::sleep(Duration::from_secs(60));
        }
        other => panic!("unknown child mode {other}"),
    }
}

// ---------- layout, schema ----------

#[test]
fn open_creates_layout_and_reopens() {
    let t = TempDir::new();
    let root = t.path().join("root");
    {
        let s = Store::open(&root).unwrap();
        for d in [
            "content/blobs/sha256",
            "content/ingest",
            "snapshots",
            "tmp",
            "locks/owners",
            "plugins",
            "git",
        ] {
            assert!(root.join(d).is_dir(), "{d} missing");
        }
        assert!(root.join("kiln.db").is_file());
        assert_eq!(
            entries(&root.join("locks/owners")),
            vec![s.owner().to_string()]
        );
        let mode: String = s
            .inner
            .conn()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        s.meta_set("pins", "docker-image://x", "sha256:aa").unwrap();
    }
    // The owner lock file goes with the store.
    assert!(entries(&root.join("locks/owners")).is_empty());
    let s = Store::open(&root).unwrap();
    assert_eq!(
        s.meta_get("pins", "docker-image://x").unwrap().as_deref(),
        Some("sha256:aa")
    );
    let v: i64 = s
        .inner
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, db::SCHEMA_VERSION);
}

#[test]
fn newer_schema_is_refused_with_a_clear_error() {
    let t = TempDir::new();
    drop(Store::open(t.path()).unwrap());
    let c = rusqlite::Connection::open(t.path().join("kiln.db")).unwrap();
    c.execute_batch("PRAGMA user_version = 99").unwrap();
    drop(c);
    let err = Store::open(t.path()).unwrap_err().to_string();
    assert!(
        err.contains("schema version 99") && err.contains("kiln.db"),
        "{err}"
    );
}

#[test]
fn many_threads_open_a_fresh_root_at_once() {
    let t = TempDir::new();
    let root = t.path().join("fresh");
    let barrier = Arc::new(Barrier::new(6));
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let (root, barrier) = (root.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let s = Store::open(&root).unwrap();
                s.meta_set("t", &i.to_string(), "x").unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(Store::open(&root).unwrap().meta_list("t").unwrap().len(), 6);
}

#[test]
fn plugin_state_dir_is_created_and_names_are_checked() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let d = s.plugin_state_dir("io.kiln.source.v1.http").unwrap();
    assert!(d.is_dir() && d.starts_with(s.root().join("plugins")));
    for bad in ["", "..", "../x", "a/b", ".hidden", "a b"] {
        let err = s.plugin_state_dir(bad).unwrap_err().to_string();
        assert!(err.contains("invalid plugin id"), "{bad}: {err}");
    }
}

// ---------- content store ----------

#[test]
fn ingest_commit_stores_a_verified_blob() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let data = pattern(3 << 20);
    let mut ing = s.ingest("https://user:secret@example.test/big").unwrap();
    assert_eq!(ing.offset(), 0);
    ing.copy_from(&mut &data[..]).unwrap();
    assert_eq!(ing.offset(), data.len() as u64);
    let blob = ing.commit(Some(&sha(&data))).unwrap();
    assert_eq!(blob.digest, sha(&data));
    assert_eq!(blob.size, data.len() as u64);
    assert_eq!(fs::read(&blob.path).unwrap(), data);
    assert_eq!(s.blob_path(&blob.digest), Some(blob.path.clone()));
    assert!(fs::metadata(&blob.path).unwrap().permissions().readonly());
    assert!(
        entries(&t.path().join("content/ingest")).is_empty(),
        "ingest left behind"
    );
    let rec = s
        .ingest_record("https://user:secret@example.test/big")
        .unwrap()
        .unwrap();
    assert_eq!(
        (rec.digest.as_str(), rec.size),
        (blob.digest.as_str(), blob.size)
    );
    // The ref (with its credentials) never reaches a path.
    let all = format!("{:?}", walk(t.path()));
    assert!(!all.contains("secret") && !all.contains("example"), "{all}");
    assert_eq!(s.blob_path("sha256:00"), None);
    assert_eq!(s.blob_path(&sha(b"other")), None);
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    if p.is_dir() && !p.is_symlink() {
        for e in fs::read_dir(p).unwrap() {
            out.extend(walk(&e.unwrap().path()));
        }
    }
    out
}

#[test]
fn checksum_mismatch_names_both_digests_and_stores_nothing() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mut ing = s.ingest("r").unwrap();
    ing.write_all(b"actual content").unwrap();
    let expected = sha(b"expected content");
    let err = ing.commit(Some(&expected)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&expected) && msg.contains(&sha(b"actual content")),
        "{msg}"
    );
    assert!(matches!(err, StoreError::ChecksumMismatch { .. }));
    assert!(entries(&t.path().join("content/blobs/sha256")).is_empty());
    assert!(entries(&t.path().join("content/ingest")).is_empty());
    assert_eq!(s.ingest("r").unwrap().offset(), 0);
    let err = s
        .ingest("r")
        .unwrap()
        .commit(Some("md5:abc"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("md5:abc"), "{err}");
}

#[test]
fn dropped_ingest_resumes_with_a_correct_digest() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let data = pattern(5 << 20);
    let half = data.len() / 2 + 12345;
    {
        let mut ing = s.ingest("ref").unwrap();
        ing.set_validator("W/\"v1\"").unwrap();
        ing.write_all(&data[..half]).unwrap();
        // dropped without commit
    }
    let mut ing = s.ingest("ref").unwrap();
    assert_eq!(ing.offset(), half as u64);
    assert_eq!(ing.validator().unwrap().as_deref(), Some("W/\"v1\""));
    ing.write_all(&data[half..]).unwrap();
    let blob = ing.commit(Some(&sha(&data))).unwrap();
    assert_eq!(blob.size, data.len() as u64);
}

#[test]
fn ingest_killed_with_sigkill_resumes_on_next_run() {
    let t = TempDir::new();
    let data = pattern(1 << 22);
    let half = 1_500_000;
    let out = child("ingest-half-then-kill", t.path(), &half.to_string())
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "child did not die by SIGKILL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = Store::open(t.path()).unwrap();
    let mut ing = s.ingest("http://example.test/file").unwrap();
    assert_eq!(ing.offset(), half as u64);
    assert_eq!(ing.validator().unwrap().as_deref(), Some("\"etag-1\""));
    ing.write_all(&data[half..]).unwrap();
    let blob = ing.commit(Some(&sha(&data))).unwrap();
    assert_eq!(fs::read(blob.path).unwrap(), data);
}

#[test]
fn a_resumed_ingest_can_be_reset_and_written_again() {
    // Resumed at 3 MiB, then reset (the server answered 200 to the range request):
    // the next write must not underflow the writeback mark.
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let data = pattern(3 << 20);
    {
        let mut ing = s.ingest("resumed").unwrap();
        ing.write_all(&data).unwrap();
    }
    let mut ing = s.ingest("resumed").unwrap();
    assert_eq!(ing.offset(), data.len() as u64);
    ing.reset().unwrap();
    ing.write_all(&data[..(2 << 20)]).unwrap();
    let blob = ing.commit(Some(&sha(&data[..(2 << 20)]))).unwrap();
    assert_eq!(blob.size, 2 << 20);
}

#[test]
fn ingest_reset_and_writes_through_the_data_path() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mut ing = s.ingest("x").unwrap();
    ing.write_all(b"stale bytes from an old version").unwrap();
    ing.set_validator("old").unwrap();
    ing.reset().unwrap();
    assert_eq!(ing.offset(), 0);
    assert_eq!(ing.validator().unwrap(), None);
    // A writer that only takes a path writes the file directly; commit rehashes.
    fs::write(ing.data_path(), b"written through the path").unwrap();
    let blob = ing.commit(Some(&sha(b"written through the path"))).unwrap();
    assert_eq!(blob.size, 24);
}

#[test]
fn second_ingest_of_a_ref_waits_for_the_first() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mut first = s.ingest("same-url").unwrap();
    first.write_all(b"hello").unwrap();
    let s2 = Store::open(t.path()).unwrap();
    let got = Arc::new(AtomicBool::new(false));
    let h = {
        let got = got.clone();
        std::thread::spawn(move || {
            let ing = s2.ingest("same-url").unwrap();
            got.store(true, Ordering::SeqCst);
            // The first one finished: its record tells the digest, no new download needed.
            let rec = s2.ingest_record("same-url").unwrap().unwrap();
            (ing.offset(), rec.digest)
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(!got.load(Ordering::SeqCst), "second ingest did not wait");
    let blob = first.commit(None).unwrap();
    let (offset, digest) = h.join().unwrap();
    assert_eq!(offset, 0);
    assert_eq!(digest, blob.digest);
}

#[test]
fn committing_existing_content_keeps_one_blob() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mut a = s.ingest("a").unwrap();
    a.write_all(b"same").unwrap();
    let a = a.commit(None).unwrap();
    let mut b = s.ingest("b").unwrap();
    b.write_all(b"same").unwrap();
    let b = b.commit(None).unwrap();
    assert_eq!(a, b);
    assert_eq!(entries(&t.path().join("content/blobs/sha256")).len(), 1);
}

// ---------- snapshots ----------

#[test]
fn stage_and_commit_a_snapshot() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let st = s.stage().unwrap();
    assert!(st
        .path()
        .starts_with(t.path().canonicalize().unwrap().join("tmp")));
    fs::create_dir(st.path().join("dir")).unwrap();
    fs::write(st.path().join("dir/f"), b"12345").unwrap();
    std::os::unix::fs::symlink("dir/f", st.path().join("link")).unwrap();
    let mut meta = SnapshotMeta {
        description: "test".into(),
        ..Default::default()
    };
    meta.metadata.insert("image.config".into(), "{}".into());
    let id = s.commit(st, meta).unwrap();
    let path = s.snapshot_path(&id).unwrap().unwrap();
    assert_eq!(fs::read(path.join("dir/f")).unwrap(), b"12345");
    assert_eq!(
        fs::read_link(path.join("link")).unwrap(),
        PathBuf::from("dir/f")
    );
    let info = s.snapshot_info(&id).unwrap().unwrap();
    assert_eq!(
        (info.size, info.entries, info.description.as_str()),
        (5 + 5, 4, "test")
    );
    assert_eq!(
        s.snapshot_metadata(&id)
            .unwrap()
            .get("image.config")
            .map(String::as_str),
        Some("{}")
    );
    s.set_snapshot_metadata(&id, "source.pin", "sha256:1")
        .unwrap();
    assert_eq!(s.snapshot_metadata(&id).unwrap().len(), 2);
    // The content hash recorded at commit is the tree's contenthash.
    assert_eq!(
        s.snapshot_content_hash(&id).unwrap(),
        Some(
            crate::contenthash::TreeHash::compute(&path)
                .unwrap()
                .root_digest()
        )
    );
    assert!(entries(&t.path().join("tmp")).is_empty());
    assert_eq!(s.list_snapshots().unwrap().len(), 1);
    let unknown = SnapshotId::parse(&"0".repeat(32)).unwrap();
    assert!(s.snapshot_path(&unknown).unwrap().is_none());
    assert!(matches!(
        s.set_snapshot_metadata(&unknown, "k", "v"),
        Err(StoreError::SnapshotNotFound { .. })
    ));
    assert!(SnapshotId::parse("../etc").is_err());
}

#[test]
fn dropped_staging_is_removed() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let st = s.stage().unwrap();
    fs::write(st.path().join("f"), b"x").unwrap();
    let p = st.path().to_path_buf();
    drop(st);
    assert!(!p.exists());
}

// ---------- cache index ----------

#[test]
fn root_key_matches_buildkit() {
    // printf 'sha256:abc@0' | sha256sum
    assert_eq!(
        root_key("sha256:abc", 0),
        "sha256:8be328ecf47c1aeefb47d90d42e2cdd8f76d78a1d33213804a6b68b192cb70e7"
    );
    // printf 'random:ff@1' | sha256sum
    assert_eq!(
        root_key("random:ff", 1),
        "random:a6759a33a79bd880abc54f0fde1801157bc041473838a33e2076c6b6f9eec1a9"
    );
}

#[test]
fn links_results_and_release() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let snap = |s: &Store, c: &str| {
        let st = s.stage().unwrap();
        fs::write(st.path().join("f"), c).unwrap();
        s.commit(st, SnapshotMeta::default()).unwrap()
    };
    let root = root_key("sha256:src", 0);
    assert_eq!(s.query_root("sha256:src", 0).unwrap(), None);
    let a = snap(&s, "a");
    s.save_result(&root, &a).unwrap();
    s.save_result(&root, &a).unwrap(); // idempotent
    assert_eq!(
        s.query_root("sha256:src", 0).unwrap().as_deref(),
        Some(root.as_str())
    );

    let link = CacheLink {
        input: 0,
        output: 0,
        digest: "sha256:op".into(),
        selector: "sha256:sel".into(),
    };
    s.add_link(&root, &link, "child-key").unwrap();
    s.add_link(&root, &link, "child-key").unwrap();
    assert!(s.has_link(&root, &link, "child-key").unwrap());
    assert_eq!(
        s.walk_links(&root, &link).unwrap(),
        vec!["child-key".to_string()]
    );
    let other = CacheLink {
        selector: String::new(),
        ..link.clone()
    };
    assert!(s.walk_links(&root, &other).unwrap().is_empty());
    assert_eq!(
        s.walk_backlinks("child-key").unwrap(),
        vec![(root.clone(), link.clone())]
    );
    let b = snap(&s, "b");
    s.save_result("child-key", &b).unwrap();
    assert_eq!(s.results("child-key").unwrap()[0].snapshot, b);
    assert_eq!(s.load_result("child-key").unwrap().unwrap().snapshot, b);
    assert_eq!(
        s.keys_for_result(&b).unwrap(),
        vec!["child-key".to_string()]
    );
    assert!(matches!(
        s.save_result("k", &SnapshotId::parse(&"1".repeat(32)).unwrap()),
        Err(StoreError::SnapshotNotFound { .. })
    ));

    // Releasing the child's only result empties it: its incoming link goes, but the
    // root keeps its own result.
    s.release(&b).unwrap();
    assert!(s.results("child-key").unwrap().is_empty());
    assert!(s.walk_backlinks("child-key").unwrap().is_empty());
    assert!(s.key_exists(&root).unwrap());
    // Releasing the root's result empties the root too.
    s.release(&a).unwrap();
    assert_eq!(s.query_root("sha256:src", 0).unwrap(), None);
}

// ---------- locks ----------

#[test]
fn key_lock_excludes_threads_and_can_be_cancelled() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let held = s.lock_key("k").unwrap();
    assert!(s.try_lock_key("k").unwrap().is_none());
    assert!(s.try_lock_key("other").unwrap().is_some());
    let cancel = AtomicBool::new(false);
    let start = Instant::now();
    std::thread::scope(|sc| {
        sc.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            cancel.store(true, Ordering::SeqCst);
        });
        let err = s.lock_key_cancellable("k", &cancel).unwrap_err();
        assert!(matches!(err, StoreError::Cancelled { .. }), "{err}");
    });
    assert!(start.elapsed() >= Duration::from_millis(100));
    drop(held);
    assert!(s.try_lock_key("k").unwrap().is_some());
}

#[test]
fn key_lock_excludes_another_process_and_dies_with_it() {
    let t = TempDir::new();
    let mut c = child("hold-lock", t.path(), "the-key").spawn().unwrap();
    wait_for_line(&mut c, "locked");
    let s = Store::open(t.path()).unwrap();
    assert!(
        s.try_lock_key("the-key").unwrap().is_none(),
        "lock held by the child was taken"
    );
    c.kill().unwrap(); // SIGKILL
    c.wait().unwrap();
    let start = Instant::now();
    let _l = s.lock_key("the-key").unwrap();
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[test]
fn two_processes_build_the_same_key_once() {
    let t = TempDir::new();
    drop(Store::open(t.path()).unwrap());
    let procs: Vec<_> = (0..2)
        .map(|_| {
            child("build-once", t.path(), "sha256:shared")
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lines: Vec<String> = procs
        .into_iter()
        .flat_map(|p| {
            let out = p.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "child failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            child_lines(&out)
        })
        .collect();
    lines.sort();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let built = lines
        .iter()
        .find(|l| l.starts_with("built "))
        .expect("one built");
    let cached = lines
        .iter()
        .find(|l| l.starts_with("cached "))
        .expect("one cached");
    assert_eq!(built[6..], cached[7..], "both use the same snapshot");
    let s = Store::open(t.path()).unwrap();
    assert_eq!(s.list_snapshots().unwrap().len(), 1);
}

// ---------- leases, du, prune ----------

#[test]
fn prune_never_removes_what_a_live_owner_leases() {
    let t = TempDir::new();
    let builder = Store::open(t.path()).unwrap();
    let st = builder.stage().unwrap();
    fs::write(st.path().join("f"), b"in use").unwrap();
    let id = builder.commit(st, SnapshotMeta::default()).unwrap();
    let in_progress = builder.stage().unwrap();
    fs::write(in_progress.path().join("g"), b"being written").unwrap();

    let pruner = Store::open(t.path()).unwrap();
    let du = pruner.du().unwrap();
    assert_eq!(du.snapshots_in_use.count, 1);
    assert_eq!(du.staging_in_use.count, 1);
    let r = pruner
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!(r.snapshots.count, 0);
    assert_eq!(r.staging.count, 0);
    assert!(builder
        .snapshot_path(&id)
        .unwrap()
        .unwrap()
        .join("f")
        .is_file());
    assert!(in_progress.path().join("g").is_file());

    drop(in_progress);
    drop(builder); // leases released
    let r = pruner
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!(r.snapshots.count, 1);
    assert!(pruner.snapshot_path(&id).unwrap().is_none());
    assert!(entries(&t.path().join("snapshots")).is_empty());
}

#[test]
fn prune_keeps_a_snapshot_leased_by_another_live_process() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let st = s.stage().unwrap();
    fs::write(st.path().join("f"), b"x").unwrap();
    let id = s.commit(st, SnapshotMeta::default()).unwrap();
    s.save_result("sha256:k", &id).unwrap();
    s.release_leases().unwrap();
    let mut c = child("lease-and-wait", t.path(), id.as_str())
        .spawn()
        .unwrap();
    wait_for_line(&mut c, "leased");
    let r = s
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!(
        r.snapshots.count, 0,
        "removed a snapshot a live process leases"
    );
    c.kill().unwrap();
    c.wait().unwrap();
    let r = s
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!((r.snapshots.count, r.dead_leases), (1, 1));
    assert!(s.load_result("sha256:k").unwrap().is_none());
}

#[test]
fn prune_after_sigkill_leaves_no_orphans_and_keeps_cached_results() {
    let t = TempDir::new();
    // One crashed build whose snapshot was saved as a cache result, one whose was not.
    let out = child("commit-then-kill", t.path(), "save")
        .output()
        .unwrap();
    let kept = SnapshotId::parse(&child_lines(&out)[0]).unwrap();
    let out = child("commit-then-kill", t.path(), "").output().unwrap();
    let dropped = SnapshotId::parse(&child_lines(&out)[0]).unwrap();
    // And a crash between rename and record: an unrecorded snapshot directory.
    let unrecorded = t.path().join("snapshots").join("f".repeat(32));
    fs::create_dir_all(unrecorded.join("sub")).unwrap();
    fs::write(unrecorded.join("sub/x"), vec![0u8; 1000]).unwrap();

    let s = Store::open(t.path()).unwrap();
    let du = s.du().unwrap();
    assert_eq!(du.staging_orphaned.count, 2, "{du:?}");
    assert_eq!(
        du.snapshots_unrecorded,
        Usage {
            count: 1,
            bytes: 1000
        }
    );
    assert!(du.reclaimable_bytes >= 2 * 4096 + 1000);
    assert_eq!(
        s.load_result("sha256:key-of-dead-build")
            .unwrap()
            .unwrap()
            .snapshot,
        kept
    );

    let r = s.prune(PruneOptions::default()).unwrap();
    assert_eq!(r.staging.count, 2);
    assert_eq!(r.unrecorded.count, 1);
    assert_eq!(r.snapshots.count, 1, "the unreferenced snapshot goes");
    assert!(s.snapshot_path(&dropped).unwrap().is_none());
    assert!(s.snapshot_path(&kept).unwrap().is_some());
    let du = s.du().unwrap();
    assert_eq!(du.staging_orphaned, Usage::default());
    assert_eq!(du.snapshots_unrecorded, Usage::default());
    assert_eq!(entries(&t.path().join("tmp")), Vec::<String>::new());
    // Only our own owner lock is left.
    assert_eq!(
        entries(&t.path().join("locks/owners")),
        vec![s.owner().to_string()]
    );
}

#[test]
fn prune_keep_duration_removes_only_old_unleased_items() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mk = |c: &str, blob: &str| {
        let st = s.stage().unwrap();
        fs::write(st.path().join("f"), c).unwrap();
        let id = s
            .commit(
                st,
                SnapshotMeta {
                    blobs: vec![blob.to_string()],
                    ..Default::default()
                },
            )
            .unwrap();
        s.save_result(&format!("sha256:{c}"), &id).unwrap();
        id
    };
    let mut ing = s.ingest("old-blob").unwrap();
    ing.write_all(b"old blob").unwrap();
    let old_blob = ing.commit(None).unwrap();
    let mut ing = s.ingest("loose").unwrap();
    ing.write_all(b"loose blob").unwrap();
    let loose = ing.commit(None).unwrap();
    let old = mk("old", &old_blob.digest);
    let new = mk("new", &sha(b"whatever"));
    s.release_leases().unwrap();
    let week_ago = fsutil::now_secs() - 7 * 24 * 3600;
    s.inner
        .conn()
        .execute(
            "UPDATE snapshots SET last_used = ?1 WHERE id = ?2",
            params![week_ago, old.as_str()],
        )
        .unwrap();
    let f = fs::File::open(&loose.path).unwrap();
    let week_ago_t = std::time::SystemTime::now() - Duration::from_secs(7 * 24 * 3600);
    f.set_times(
        fs::FileTimes::new()
            .set_accessed(week_ago_t)
            .set_modified(week_ago_t),
    )
    .unwrap();

    let r = s
        .prune(PruneOptions {
            all: false,
            keep_duration: Some(Duration::from_secs(24 * 3600)),
        })
        .unwrap();
    assert_eq!(r.snapshots.count, 1);
    assert_eq!(r.blobs.count, 1, "only the loose old blob goes");
    assert!(s.snapshot_path(&old).unwrap().is_none());
    assert!(s.snapshot_path(&new).unwrap().is_some());
    assert!(s.blob_path(&loose.digest).is_none());
    // The old snapshot's blob was referenced until this prune; now unreferenced but recent.
    assert!(s.blob_path(&old_blob.digest).is_some());
    assert!(s.load_result("sha256:old").unwrap().is_none());
    assert!(s.load_result("sha256:new").unwrap().is_some());
}

#[test]
fn prune_removes_stale_ingests_but_not_open_ones() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let mut open = s.ingest("open").unwrap();
    open.write_all(b"partial").unwrap();
    open.flush().unwrap();
    {
        let mut left = s.ingest("left").unwrap();
        left.write_all(b"left behind").unwrap();
    }
    let r = s.prune(PruneOptions::default()).unwrap();
    assert_eq!(
        r.ingests.count, 0,
        "fresh partial downloads are kept for resuming"
    );
    let r = s
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!(r.ingests.count, 1);
    assert_eq!(open.offset(), 7);
    let blob = open.commit(Some(&sha(b"partial"))).unwrap();
    assert!(blob.path.is_file());
}

#[test]
fn blob_leases_protect_blobs_from_prune_all() {
    let t = TempDir::new();
    let a = Store::open(t.path()).unwrap();
    let mut ing = a.ingest("x").unwrap();
    ing.write_all(b"blob").unwrap();
    let blob = ing.commit(None).unwrap();
    let b = Store::open(t.path()).unwrap();
    assert_eq!(
        b.prune(PruneOptions {
            all: true,
            keep_duration: None
        })
        .unwrap()
        .blobs
        .count,
        0
    );
    a.release_leases().unwrap();
    assert!(b.lease_blob(&blob.digest).unwrap());
    assert_eq!(
        a.prune(PruneOptions {
            all: true,
            keep_duration: None
        })
        .unwrap()
        .blobs
        .count,
        0
    );
    drop(b);
    assert_eq!(
        a.prune(PruneOptions {
            all: true,
            keep_duration: None
        })
        .unwrap()
        .blobs
        .count,
        1
    );
    assert!(!a.lease_blob(&blob.digest).unwrap());
    assert!(a.ingest_record("x").unwrap().is_none());
}

#[test]
fn du_counts_everything_and_serializes() {
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let st = s.stage().unwrap();
    fs::write(st.path().join("f"), vec![0u8; 2000]).unwrap();
    s.commit(st, SnapshotMeta::default()).unwrap();
    let mut ing = s.ingest("b").unwrap();
    ing.write_all(&[1u8; 300]).unwrap();
    ing.commit(None).unwrap();
    let du = s.du().unwrap();
    assert_eq!(
        du.snapshots,
        Usage {
            count: 1,
            bytes: 2000
        }
    );
    assert_eq!(
        du.blobs,
        Usage {
            count: 1,
            bytes: 300
        }
    );
    assert!(du.database_bytes > 0);
    assert_eq!(du.total_bytes, 2000 + 300 + du.database_bytes);
    let json: serde_json::Value = serde_json::to_value(&du).unwrap();
    assert_eq!(json["snapshots"]["bytes"], 2000);
    let text = du.to_string();
    assert!(
        text.contains("snapshots") && text.contains("reclaimable"),
        "{text}"
    );
}

#[test]
fn concurrent_builds_and_prunes_never_lose_a_leased_snapshot() {
    let t = TempDir::new();
    let pruner = Store::open(t.path()).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let prune_thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                pruner
                    .prune(PruneOptions {
                        all: true,
                        keep_duration: None,
                    })
                    .unwrap();
                n += 1;
            }
            n
        })
    };
    let builders: Vec<_> = (0..3)
        .map(|b| {
            let root = t.path().to_path_buf();
            std::thread::spawn(move || {
                for i in 0..15 {
                    // Each round is a fresh "process": a new owner with no leases.
                    let s = Store::open(&root).unwrap();
                    s.set_sync_snapshots(i % 2 == 0);
                    let key = format!("sha256:k{}", i % 4);
                    let _lock = s.lock_key(&key).unwrap();
                    let content = format!("content of {key}");
                    let path = match s.load_result(&key).unwrap() {
                        Some(r) => s
                            .snapshot_path(&r.snapshot)
                            .unwrap()
                            .expect("leased result vanished"),
                        None => {
                            let st = s.stage().unwrap();
                            fs::write(st.path().join("f"), &content).unwrap();
                            let id = s.commit(st, SnapshotMeta::default()).unwrap();
                            s.save_result(&key, &id).unwrap();
                            s.snapshot_path(&id)
                                .unwrap()
                                .expect("committed snapshot vanished")
                        }
                    };
                    std::thread::sleep(Duration::from_millis(5));
                    assert_eq!(
                        fs::read_to_string(path.join("f")).unwrap(),
                        content,
                        "builder {b} round {i}"
                    );
                }
            })
        })
        .collect();
    for b in builders {
        b.join().unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    assert!(prune_thread.join().unwrap() > 0);
}

#[test]
fn prune_failing_to_move_a_directory_keeps_every_record_with_its_directory() {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new();
    let s = Store::open(t.path()).unwrap();
    let keys = ["sha256:first", "sha256:second"];
    let mut ids: Vec<SnapshotId> = keys
        .iter()
        .map(|k| {
            let st = s.stage().unwrap();
            fs::write(st.path().join("f"), k).unwrap();
            let id = s.commit(st, SnapshotMeta::default()).unwrap();
            s.save_result(k, &id).unwrap();
            id
        })
        .collect();
    s.release_leases().unwrap();
    // Prune walks snapshots in id order: the second one cannot be moved (moving a
    // directory to another parent needs write permission on it), after the first was.
    ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    let stuck = s.snapshot_dir(&ids[1]);
    fs::set_permissions(&stuck, fs::Permissions::from_mode(0o555)).unwrap();
    let result = crate::testutil::without_dac_override(|| {
        s.prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
    });
    fs::set_permissions(&stuck, fs::Permissions::from_mode(0o755)).unwrap();
    // Whatever is still recorded has its directory, and every cache result resolves.
    for info in s.list_snapshots().unwrap() {
        assert!(
            info.path.join("f").is_file(),
            "{} lost its directory",
            info.id
        );
    }
    for k in keys {
        if let Some(r) = s.load_result(k).unwrap() {
            let path = s.snapshot_path(&r.snapshot).unwrap().unwrap();
            assert_eq!(fs::read_to_string(path.join("f")).unwrap(), k);
        }
    }

    let err = result
        .expect_err("prune could not move a directory")
        .to_string();
    assert!(err.contains(ids[1].as_str()), "{err}");

    // The directory left behind is unrecorded now, and the next prune takes it.
    let r = s
        .prune(PruneOptions {
            all: true,
            keep_duration: None,
        })
        .unwrap();
    assert_eq!(r.unrecorded.count, 1, "{r:?}");
    assert!(entries(&t.path().join("snapshots")).is_empty());
    assert!(entries(&t.path().join("tmp")).is_empty());
}
