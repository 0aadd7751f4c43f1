//! Runs real containers with the machine's runc (or crun) over a busybox tree.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;

/// A tree with a static busybox and its applets, like the tests' base image.
pub(crate) fn busybox_tree(dir: &Path) {
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install the Debian package busybox-static");
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::copy(busybox, dir.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "id", "echo", "cat", "ls", "rm", "mkdir", "touch", "sleep", "pwd", "env", "wc",
        "grep", "test",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nuser:x:1000:\n").unwrap();
    std::fs::write(dir.join("data/keep"), "keep\n").unwrap();
    std::fs::write(dir.join("data/gone"), "gone\n").unwrap();
}

fn ctx(dir: &Path) -> ExecContext {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the exec tests run containers and need root"
    );
    ExecContext {
        runtime: Runtime::find(None).expect("install runc (Debian package runc)"),
        dir: dir.join("exec"),
    }
}

#[derive(Default)]
struct Lines(Mutex<Vec<String>>);
impl OutputSink for Lines {
    fn line(&self, line: &str) {
        self.0.lock().unwrap().push(line.to_string());
    }
}

fn spec(script: &str) -> ExecSpec {
    ExecSpec {
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        cwd: "/".into(),
        user: User::root(),
        network: Network::Host,
        mounts: vec![],
    }
}

fn setup() -> (tempfile::TempDir, PathBuf, ExecContext) {
    let t = tempfile::tempdir().unwrap();
    let base = t.path().join("base");
    busybox_tree(&base);
    let c = ctx(t.path());
    (t, base, c)
}

#[test]
fn changes_land_in_the_upper_layer_and_apply_to_a_copy() {
    let (t, base, c) = setup();
    let out = Lines::default();
    let no = AtomicBool::new(false);
    let s = spec("echo made > /data/new; rm /data/gone; mkdir -p /w/x; echo hello; id -u");
    let (bundle, changes) = run(&c, Some(&base), &s, &no, &out).unwrap();
    assert_eq!(*out.0.lock().unwrap(), vec!["hello", "0"]);
    let Changes::Upper(upper) = changes else {
        panic!("overlay is available here")
    };
    assert_eq!(
        std::fs::read_to_string(upper.join("data/new")).unwrap(),
        "made\n"
    );
    let wh = std::fs::symlink_metadata(upper.join("data/gone")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "a whiteout"
    );
    // Mount points the base lacked are not part of the changes.
    for stub in ["proc", "dev", "sys", "etc/hosts", "etc/resolv.conf"] {
        assert!(!upper.join(stub).exists(), "{stub} left in the layer");
    }
    // The base is untouched.
    assert!(base.join("data/gone").exists() && !base.join("data/new").exists());

    let result = t.path().join("result");
    crate::worker::copy_tree(&base, &result, None).unwrap();
    apply_upper(&upper, &result, None).unwrap();
    assert_eq!(
        std::fs::read_to_string(result.join("data/new")).unwrap(),
        "made\n"
    );
    assert!(!result.join("data/gone").exists());
    assert!(result.join("data/keep").exists() && result.join("w/x").is_dir());
    drop(bundle);
    assert_eq!(std::fs::read_dir(c.dir.join("bundles")).unwrap().count(), 0);
}

#[test]
fn env_workdir_user_and_failures() {
    let (_t, base, c) = setup();
    let out = Lines::default();
    let no = AtomicBool::new(false);
    let mut s = spec("echo $GREETING; pwd; id -u; id -g");
    s.env.push("GREETING=hi there".into());
    s.cwd = "/work/dir".into();
    s.user = resolve_user("user", Some(&base)).unwrap();
    run(&c, Some(&base), &s, &no, &out).unwrap();
    assert_eq!(
        *out.0.lock().unwrap(),
        vec!["hi there", "/work/dir", "1000", "1000"]
    );

    let out = Lines::default();
    let err = run(
        &c,
        Some(&base),
        &spec("echo before; echo oops >&2; exit 3"),
        &no,
        &out,
    )
    .unwrap_err();
    match &err {
        ExecError::Failed { code, tail, .. } => {
            assert_eq!(*code, 3);
            // stdout and stderr reach kiln through separate copies in the runtime, so
            // their relative order is not fixed.
            let mut tail = tail.clone();
            tail.sort();
            assert_eq!(tail, vec!["before".to_string(), "oops".to_string()]);
        }
        other => panic!("{other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("exited with code 3") && msg.contains("oops"),
        "{msg}"
    );
}

#[test]
fn no_network_has_only_loopback() {
    let (_t, base, c) = setup();
    let no = AtomicBool::new(false);
    let mut s = spec("cat /proc/net/dev");
    s.network = Network::None;
    let out = Lines::default();
    run(&c, Some(&base), &s, &no, &out).unwrap();
    let ifaces: Vec<String> = out
        .0
        .lock()
        .unwrap()
        .iter()
        .skip(2)
        .map(|l| l.trim().split(':').next().unwrap().to_string())
        .collect();
    assert_eq!(ifaces, vec!["lo"]);
}

#[test]
fn secrets_tmpfs_and_cache_mounts() {
    let (t, base, c) = setup();
    let no = AtomicBool::new(false);
    let cache = CacheMount::acquire(
        &t.path().join("cache-mounts"),
        "ccache",
        Sharing::Locked,
        &no,
    )
    .unwrap();
    let mut s = spec(
        "cat /run/secrets/token; echo; ls -ln /run/secrets/token; echo cached > /cache/f; touch /tmp/t; ls /tmp",
    );
    s.user = resolve_user("1000:1000", Some(&base)).unwrap();
    s.mounts = vec![
        Mount::Secret {
            data: b"s3cr3t".to_vec(),
            target: "/run/secrets/token".into(),
        },
        Mount::Cache {
            dir: cache.dir.clone(),
            target: "/cache".into(),
        },
        Mount::Tmpfs {
            target: "/tmp".into(),
        },
    ];
    // The cache directory is root's; let the user write into it for this test.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cache.dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = Lines::default();
    let (_bundle, changes) = run(&c, Some(&base), &s, &no, &out).unwrap();
    let lines = out.0.lock().unwrap().clone();
    assert_eq!(lines[0], "s3cr3t");
    assert!(
        lines[1].starts_with("-r--------") && lines[1].contains(" 1000 "),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "t");
    assert_eq!(
        std::fs::read_to_string(cache.dir.join("f")).unwrap(),
        "cached\n"
    );
    let Changes::Upper(upper) = changes else {
        panic!()
    };
    // Nothing of the mounts stays in the layer.
    assert!(
        !upper.join("run").exists() && !upper.join("cache").exists() && !upper.join("tmp").exists()
    );
}

#[test]
fn cancel_kills_the_container_and_cleans_up() {
    let (_t, base, c) = setup();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = cancel.clone();
    let killer = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(500));
        c2.store(true, Ordering::Relaxed);
    });
    let out = Lines::default();
    let started = std::time::Instant::now();
    let err = run(&c, Some(&base), &spec("sleep 60"), &cancel, &out).unwrap_err();
    killer.join().unwrap();
    assert!(matches!(err, ExecError::Cancelled), "{err}");
    assert!(started.elapsed().as_secs() < 30);
    let list = std::process::Command::new(&c.runtime.path)
        .arg("--root")
        .arg(c.dir.join("state"))
        .args(["list", "-q"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).trim().is_empty());
    assert_eq!(std::fs::read_dir(c.dir.join("bundles")).unwrap().count(), 0);
    assert!(overlay::mounts_under(&c.dir).is_empty());
}

#[test]
fn rootless_spec_maps_root_to_the_caller_without_cgroups() {
    let mut s = spec("true");
    s.user.additional_gids = vec![10];
    let r = rootless::Rootless {
        uid: 1234,
        gid: 5678,
    };
    let c = super::spec::config(&s, "kiln", &[], Some(r));
    let linux = &c["linux"];
    assert!(linux["namespaces"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!({"type": "user"})));
    assert_eq!(
        linux["uidMappings"],
        serde_json::json!([{"containerID": 0, "hostID": 1234, "size": 1}])
    );
    assert_eq!(
        linux["gidMappings"],
        serde_json::json!([{"containerID": 0, "hostID": 5678, "size": 1}])
    );
    assert!(linux.get("resources").is_none());
    assert_eq!(
        c["process"]["user"]["additionalGids"],
        serde_json::json!([])
    );
    let mounts = c["mounts"].as_array().unwrap();
    let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
    assert_eq!(sys["type"], "bind");
    assert!(sys["options"].as_array().unwrap().contains(&"ro".into()));
    let pts = mounts
        .iter()
        .find(|m| m["destination"] == "/dev/pts")
        .unwrap();
    assert!(!pts["options"].as_array().unwrap().contains(&"gid=5".into()));

    // As root: no user namespace, the device cgroup denies all, sysfs is mounted.
    let c = super::spec::config(&s, "kiln", &[], None);
    assert!(c["linux"].get("uidMappings").is_none());
    assert!(c["linux"]["resources"]["devices"].is_array());
    assert_eq!(
        c["process"]["user"]["additionalGids"],
        serde_json::json!([10])
    );

    // Only container root exists rootless.
    assert!(r.check_user(&User::root()).is_ok());
    let other = User {
        uid: 1000,
        gid: 1000,
        additional_gids: Vec::new(),
    };
    let e = r.check_user(&other).unwrap_err().to_string();
    assert!(
        e.contains("user 1000:1000") && e.contains("uid 1234"),
        "{e}"
    );
}

#[test]
fn a_refused_user_namespace_names_the_switch() {
    let d = |max, clone, aa| rootless::diagnose(libc::EPERM, max, clone, aa);
    assert!(d(Some("0"), None, None).contains("user.max_user_namespaces is 0"));
    let e = d(Some("15000"), Some("0"), None);
    assert!(e.contains("kernel.unprivileged_userns_clone"), "{e}");
    let e = d(Some("15000"), Some("1"), Some("1"));
    assert!(e.contains("apparmor_restrict_unprivileged_userns"), "{e}");
    let e = d(Some("15000"), None, Some("0"));
    assert!(
        e.contains("seccomp") && e.contains("run kiln as root"),
        "{e}"
    );
    let e = rootless::diagnose(libc::ENOSPC, Some("3"), None, None);
    assert!(e.contains("limit user.max_user_namespaces"), "{e}");
}
