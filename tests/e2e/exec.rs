//! `run` steps end to end: the real binary runs commands through the machine's OCI
//! runtime (runc or crun) over a static busybox tree.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kiln_tests::{require_program, Env, Run};

/// Requires what these tests run: root, a runtime and busybox.
fn prerequisites() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run steps need root: run the test suite as root"
    );
    require_program("runc", "runc");
    require_program("busybox", "busybox-static");
}

/// A static busybox tree (the base of these tests) in `dir`.
fn busybox_tree(dir: &Path) {
    let busybox = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .expect("sh");
    let busybox = String::from_utf8_lossy(&busybox.stdout).trim().to_string();
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(&busybox, dir.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "id", "echo", "cat", "ls", "rm", "mkdir", "touch", "sleep", "pwd", "wc", "grep",
        "test", "env",
    ] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/group"), "root:x:0:\nbuilder:x:1000:\n").unwrap();
    std::fs::write(dir.join("etc/doomed"), "delete me\n").unwrap();
}

/// An environment with the busybox base under `base/` and `def.toml` holding
/// `[steps.base]` plus `steps`.
fn project(steps: &str, output: &str) -> Env {
    prerequisites();
    let env = Env::new();
    busybox_tree(&env.path("base"));
    env.write("ctx/hello.txt", "hello from the context\n");
    env.write(
        "def.toml",
        format!(
            "version = 1\n[steps.base]\nsource = \"local://base\"\n[steps.ctx]\nsource = \"local://ctx\"\n{steps}\n[output]\nstep = \"{output}\"\n"
        ),
    );
    env
}

/// `kiln --progress plain build def.toml` with the base and context folders, and `extra`.
fn build_args(env: &Env, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--progress".into(),
        "plain".into(),
        "build".into(),
        env.path("def.toml").display().to_string(),
        "--local".into(),
        format!("base={}", env.path("base").display()),
        "--local".into(),
        format!("ctx={}", env.path("ctx").display()),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn build(env: &Env, extra: &[&str]) -> Run {
    env.kiln(build_args(env, extra))
}

/// The containers runc lists in the state folder `state` (kiln's `<root>/exec/state`).
fn runc_list(state: &Path) -> String {
    let o = Command::new("runc")
        .arg("--root")
        .arg(state)
        .args(["list", "-q"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The build of [`build`], started in the background.
fn spawn_build(env: &Env, extra: &[&str], stderr: Stdio) -> std::process::Child {
    env.command()
        .args(build_args(env, extra))
        .stderr(stderr)
        .spawn()
        .unwrap()
}

fn out_dir(env: &Env, name: &str) -> (String, PathBuf) {
    let p = env.path(name);
    (format!("type=local,dest={}", p.display()), p)
}

#[test]
fn run_writes_files_with_env_workdir_user_and_is_cached() {
    let env = project(
        r#"
[steps.app]
base = "base"
run = "echo \"$GREETING $(pwd) $(id -u):$(id -g)\" > /tmp/info; cat /tmp/info"
env = { GREETING = "hi" }
workdir = "/work"
user = "builder"
mounts = [{ type = "bind", from = "ctx", target = "/ctx" }]
[steps.check]
base = "app"
run = ["/bin/sh", "-c", "cat /ctx/hello.txt > /seen; rm /etc/doomed"]
mounts = [{ type = "bind", from = "ctx", target = "/ctx" }]
"#,
        "check",
    );
    // /tmp must be writable by the builder user.
    std::fs::create_dir_all(env.path("base/tmp")).unwrap();
    std::process::Command::new("chmod")
        .args(["1777"])
        .arg(env.path("base/tmp"))
        .status()
        .unwrap();
    let (spec, out) = out_dir(&env, "out");
    let r = build(&env, &["--output", &spec]);
    r.success();
    assert!(
        r.stderr.contains("app | hi /work 1000:1000"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tmp/info")).unwrap(),
        "hi /work 1000:1000\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "hello from the context\n"
    );
    assert!(!out.join("etc/doomed").exists());
    assert!(out.join("work").is_dir(), "the workdir is created");
    // Mount points the base lacked are not in the result.
    for stub in ["ctx", "proc", "sys", "dev", "etc/hosts", "etc/resolv.conf"] {
        assert!(!out.join(stub).exists(), "{stub} left in the result");
    }
    // Unchanged: every step cached, nothing runs.
    let r = build(&env, &[]);
    r.success();
    assert!(
        r.stderr.contains("=> app CACHED") && r.stderr.contains("=> check CACHED"),
        "{}",
        r.stderr
    );
    // --no-cache runs it again.
    let r = build(&env, &["--no-cache"]);
    r.success();
    assert!(r.stderr.contains("app | hi /work"), "{}", r.stderr);
}

#[test]
fn a_failing_command_names_step_command_code_and_output() {
    let env = project(
        "[steps.bad]\nbase = \"base\"\nrun = \"echo some output; echo the reason >&2; exit 7\"\n",
        "bad",
    );
    let r = build(&env, &[]);
    r.expect_code(1);
    let err = &r.stderr;
    assert!(err.contains("bad"), "{err}");
    assert!(
        err.contains("exit 7") && err.contains("exited with code 7"),
        "{err}"
    );
    assert!(
        err.contains("the reason") && err.contains("some output"),
        "{err}"
    );
}

#[test]
fn network_none_has_only_loopback() {
    let env = project(
        "[steps.net]\nbase = \"base\"\nrun = \"cat /proc/net/dev > /ifaces\"\nnetwork = \"none\"\n",
        "net",
    );
    let (spec, out) = out_dir(&env, "out");
    build(&env, &["--output", &spec]).success();
    let text = std::fs::read_to_string(out.join("ifaces")).unwrap();
    let names: Vec<&str> = text
        .lines()
        .skip(2)
        .map(|l| l.trim().split(':').next().unwrap())
        .collect();
    assert_eq!(names, vec!["lo"]);
}

#[test]
fn cache_mounts_persist_and_secrets_stay_out() {
    let env = project(
        r#"
[steps.work]
base = "base"
run = "cat /run/secrets/token > /dev/null && echo run >> /cache/log; wc -l < /cache/log; echo secret-was-$(cat /run/secrets/token | wc -c)"
mounts = [
  { type = "cache", id = "c1", target = "/cache", sharing = "locked" },
  { type = "secret", id = "token" },
]
"#,
        "work",
    );
    let secret = env.write("token", "TOPSECRETVALUE");
    let secret_arg = format!("id=token,src={}", secret.display());
    let (spec, out) = out_dir(&env, "out1");
    let r = build(&env, &["--secret", &secret_arg, "--output", &spec]);
    r.success();
    assert!(r.stderr.contains("work | 1"), "{}", r.stderr);
    assert!(!r.stderr.contains("TOPSECRETVALUE"));
    assert!(!out.join("cache").exists() && !out.join("run").exists());
    let tar = env.path("out.tar");
    let r = build(
        &env,
        &[
            "--no-cache",
            "--secret",
            &secret_arg,
            "--output",
            &format!("type=tar,dest={}", tar.display()),
        ],
    );
    r.success();
    // The cache mount kept its file across builds.
    assert!(r.stderr.contains("work | 2"), "{}", r.stderr);
    let bytes = std::fs::read(&tar).unwrap();
    assert!(!bytes.windows(14).any(|w| w == b"TOPSECRETVALUE"));
    // A required secret that was not given fails the step and says how to give it.
    let r = build(&env, &["--no-cache"]);
    r.expect_code(1);
    assert!(r.stderr.contains("--secret id=token"), "{}", r.stderr);
}

#[test]
fn sigint_during_a_run_leaves_no_container_mount_or_staging() {
    let env = project(
        "[steps.long]\nbase = \"base\"\nrun = \"echo started; sleep 120\"\n",
        "long",
    );
    let mut child = spawn_build(&env, &[], Stdio::piped());
    let state = env.root().join("exec/state");
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the container runs.
    while runc_list(&state).is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = child.wait().unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!status.success());
    assert!(runc_list(&state).is_empty(), "a container is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.root().to_str().unwrap()),
        "a mount is left under the root"
    );
    let bundles = env.root().join("exec/bundles");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "bundles left: {left:?}");
    let tmp: Vec<_> = std::fs::read_dir(env.root().join("tmp"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "staging left: {tmp:?}");
}

#[test]
fn two_processes_build_on_one_root() {
    let env = project(
        "[steps.one]\nbase = \"base\"\nrun = \"echo once >> /marker; sleep 1\"\n",
        "one",
    );
    let spawn = |out: &str| {
        let (spec, _) = out_dir(&env, out);
        spawn_build(&env, &["--output", &spec], Stdio::piped())
    };
    let (a, b) = (spawn("a"), spawn("b"));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let ran = [&a, &b]
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("=> one DONE"))
        .count();
    assert_eq!(ran, 1, "the step ran once across both processes");
    for out in ["a", "b"] {
        assert_eq!(
            std::fs::read_to_string(env.path(out).join("marker")).unwrap(),
            "once\n"
        );
    }
}

#[test]
fn a_killed_kiln_leaves_nothing_the_next_run_does_not_reap() {
    let env = project(
        "[steps.long]\nbase = \"base\"\nrun = \"echo started; sleep 120\"\n",
        "long",
    );
    let mut child = spawn_build(&env, &[], Stdio::null());
    let state = env.root().join("exec/state");
    let list = || runc_list(&state);
    let deadline = Instant::now() + Duration::from_secs(60);
    while list().is_empty() {
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The next build with a run step reaps the container, its mounts and its bundle.
    env.write(
        "def.toml",
        "version = 1\n[steps.base]\nsource = \"local://base\"\n[steps.quick]\nbase = \"base\"\nrun = \"true\"\n[output]\nstep = \"quick\"\n",
    );
    std::os::unix::fs::symlink("busybox", env.path("base/bin/true")).unwrap();
    build(&env, &[]).success();
    assert!(list().is_empty(), "the killed run's container is left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(env.root().to_str().unwrap()),
        "a mount is left under the root"
    );
    let left: Vec<_> = std::fs::read_dir(env.root().join("exec/bundles"))
        .unwrap()
        .flatten()
        .collect();
    assert!(left.is_empty(), "bundles left: {left:?}");
}

#[test]
fn the_runtime_comes_from_the_worker_table_of_the_config() {
    let env = project("[steps.r]\nbase = \"base\"\nrun = \"true\"\n", "r");
    let default = env.kiln(["config", "default"]);
    default.success();
    let config = env.write(
        "kiln.toml",
        format!(
            "{}\n[worker]\nruntime = \"kiln-no-such-runtime\"\n",
            default.stdout
        ),
    );
    let mut args: Vec<String> = vec!["--config".into(), config.display().to_string()];
    args.extend(
        [
            "--progress",
            "plain",
            "build",
            env.path("def.toml").to_str().unwrap(),
            "--local",
        ]
        .map(String::from),
    );
    args.push(format!("base={}", env.path("base").display()));
    let r = env.kiln(&args);
    r.expect_code(1);
    assert!(
        r.stderr
            .contains("no OCI runtime found (looked for kiln-no-such-runtime)"),
        "{}",
        r.stderr
    );
    // An unknown key of the table is a configuration error.
    env.write(
        "bad.toml",
        format!("{}\n[worker]\nruntim = \"runc\"\n", default.stdout),
    );
    let r = env.kiln([
        "--config",
        env.path("bad.toml").to_str().unwrap(),
        "config",
        "check",
    ]);
    r.expect_code(2);
    assert!(r.stderr.contains("runtim"), "{}", r.stderr);
}

#[test]
fn mount_stubs_are_never_removed_through_a_planted_link() {
    // The command moves the folder holding two mount points away and plants a link
    // to a host folder in its place (BuildKit's CVE-2024-23652).
    let env = project(
        r#"
[steps.evil]
base = "base"
run = "mv /a /moved && ln -s HOSTDIR /a"
mounts = [{ type = "tmpfs", target = "/a/victim" }, { type = "tmpfs", target = "/a/victimdir" }]
"#,
        "evil",
    );
    let host = env.path("host-canary");
    std::fs::create_dir_all(host.join("victimdir")).unwrap();
    std::fs::write(host.join("victim"), "").unwrap();
    let def = std::fs::read_to_string(env.path("def.toml")).unwrap();
    env.write("def.toml", def.replace("HOSTDIR", host.to_str().unwrap()));
    build(&env, &[]).success();
    assert!(host.join("victim").exists(), "a host file was removed");
    assert!(host.join("victimdir").is_dir(), "a host folder was removed");
}

#[test]
fn secrets_under_other_mounts_long_lines_and_workdir_modes() {
    let env = project(
        r#"
[steps.s]
base = "base"
workdir = "/work/sub"
user = "builder"
run = "cat /run/secrets/tok; echo; ls -ld /work | cut -c1-10; head -c 200000 /dev/zero | tr '\\0' a; echo; echo end"
mounts = [{ type = "tmpfs", target = "/run" }, { type = "secret", id = "tok", target = "/run/secrets/tok" }]
"#,
        "s",
    );
    let secret = env.write("tok", "from-the-secret");
    let mut cmd = env.command();
    cmd.args(build_args(
        &env,
        &["--secret", &format!("id=tok,src={}", secret.display())],
    ));
    use std::os::unix::process::CommandExt;
    // SAFETY: umask is async-signal-safe and touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        })
    };
    let r = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    // The secret is mounted after the tmpfs that holds its folder.
    assert!(stderr.contains("s | from-the-secret"), "{stderr}");
    // Folders kiln makes for the workdir are 0755 whatever its umask.
    assert!(stderr.contains("s | drwxr-xr-x"), "{stderr}");
    // A 200,000-byte line arrives in pieces of at most 64 KiB.
    let longest = stderr
        .lines()
        .filter(|l| l.contains("s | aaaa"))
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest > 0 && longest < 70_000, "longest line {longest}");
    assert!(stderr.contains("s | end"), "{stderr}");
}

#[test]
fn snapshots_are_private_to_kiln_and_cache_ids_are_used_once_per_step() {
    let env = project(
        "[steps.s]\nbase = \"base\"\nrun = \"true\"\nmounts = [{ type = \"cache\", id = \"c\", target = \"/x\" }, { type = \"cache\", id = \"c\", target = \"/y\" }]\n",
        "s",
    );
    let r = build(&env, &[]);
    r.expect_code(2);
    assert!(
        r.stderr.contains("two cache mounts use the id \"c\""),
        "{}",
        r.stderr
    );
    env.write(
        "def.toml",
        "version = 1\n[steps.base]\nsource = \"local://base\"\n[output]\nstep = \"base\"\n",
    );
    build(&env, &[]).success();
    use std::os::unix::fs::PermissionsExt;
    for dir in ["snapshots", "tmp"] {
        let mode = std::fs::metadata(env.root().join(dir))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{dir}");
    }
}

/// `kiln build` of [`build_args`] as `nobody` (65534:65534) through `setpriv`, with
/// HOME and the XDG folders inside the environment.
fn nobody_command(env: &Env, extra: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(kiln_tests::kiln_bin())
        .arg("--root")
        .arg(env.root())
        .args(build_args(env, extra))
        .env_remove("KILN_CONFIG")
        .env_remove("KILN_ROOT")
        .env_remove("KILN_LOG")
        .env_remove("XDG_RUNTIME_DIR")
        .env("HOME", env.path("home"))
        .env("XDG_CONFIG_HOME", env.path("xdg-config"))
        .env("XDG_DATA_HOME", env.path("xdg-data"))
        .stdin(Stdio::null());
    c
}

fn build_as_nobody(env: &Env, extra: &[&str]) -> Run {
    nobody_command(env, extra)
        .output()
        .expect("run setpriv")
        .into()
}

/// Makes the environment's folders belong to `nobody`.
fn give_env_to_nobody(env: &Env) {
    for d in ["home", "xdg-config", "xdg-data", "root"] {
        std::fs::create_dir_all(env.path(d)).unwrap();
    }
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.dir.path())
        .status()
        .unwrap();
    assert!(st.success());
}

/// Whether `nobody` may create a user namespace here (util-linux's `unshare`).
fn nobody_has_user_namespaces() -> bool {
    Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["unshare", "--user", "true"])
        .stderr(Stdio::null())
        .status()
        .expect("run setpriv")
        .success()
}

#[test]
fn rootless_run_through_a_user_namespace() {
    require_program("setpriv", "util-linux");
    require_program("unshare", "util-linux");
    let env = project(
        r#"
[steps.app]
base = "base"
run = "echo \"$(id -u):$(id -g) $(cat /run/secrets/token | wc -c)\" > /made; cat /ctx/hello.txt > /seen; rm /etc/doomed; echo x >> /cache/log; wc -l < /cache/log > /cached; touch /scratch/t; cat /proc/net/dev | wc -l > /ifaces"
network = "none"
mounts = [
  { type = "bind", from = "ctx", target = "/ctx" },
  { type = "secret", id = "token", target = "/run/secrets/token" },
  { type = "cache", id = "c", target = "/cache" },
  { type = "tmpfs", target = "/scratch" },
]
"#,
        "app",
    );
    let secret = env.write("token", "ROOTLESSSECRET");
    give_env_to_nobody(&env);
    let secret_arg = format!("id=token,src={}", secret.display());
    let (spec, out) = out_dir(&env, "out");
    let r = build_as_nobody(&env, &["--secret", &secret_arg, "--output", &spec]);
    if !nobody_has_user_namespaces() {
        // The kernel refuses: the error says what is missing.
        r.expect_code(1);
        assert!(
            r.stderr.contains("unshare(CLONE_NEWUSER)") && r.stderr.contains("run kiln as root"),
            "{}",
            r.stderr
        );
        return;
    }
    r.success();
    // Container root is the caller: the run saw uid 0 and the secret.
    assert_eq!(
        std::fs::read_to_string(out.join("made")).unwrap(),
        "0:0 14\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("seen")).unwrap(),
        "hello from the context\n"
    );
    assert!(!out.join("etc/doomed").exists());
    assert!(
        out.join("bin/busybox").is_file(),
        "the base is in the result"
    );
    for stub in [
        "ctx",
        "proc",
        "sys",
        "dev",
        "run/secrets",
        "etc/hosts",
        "cache",
        "scratch",
    ] {
        assert!(!out.join(stub).exists(), "{stub} left in the result");
    }
    assert!(!r.stderr.contains("ROOTLESSSECRET"), "{}", r.stderr);
    // network = "none": the header lines and loopback only.
    assert_eq!(std::fs::read_to_string(out.join("ifaces")).unwrap(), "3\n");
    assert_eq!(std::fs::read_to_string(out.join("cached")).unwrap(), "1\n");
    // Cached the second time; --no-cache runs it again and the cache mount kept its file.
    let r2 = build_as_nobody(&env, &["--secret", &secret_arg]);
    r2.success();
    assert!(r2.stderr.contains("=> app CACHED"), "{}", r2.stderr);
    let (spec, out) = out_dir(&env, "out2");
    build_as_nobody(
        &env,
        &["--secret", &secret_arg, "--no-cache", "--output", &spec],
    )
    .success();
    assert_eq!(std::fs::read_to_string(out.join("cached")).unwrap(), "2\n");
    // Nothing is left in the bundles folder.
    let bundles = env.root().join("exec/bundles");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", bundles.display());

    // Another user than root cannot be mapped: one clear error, nothing built.
    env.write(
        "def.toml",
        "version = 1\n[steps.base]\nsource = \"local://base\"\n[steps.ctx]\nsource = \"local://ctx\"\n\
         [steps.other]\nbase = \"base\"\nrun = \"id -u\"\nuser = \"1000:1000\"\n[output]\nstep = \"other\"\n",
    );
    let r = build_as_nobody(&env, &[]);
    r.expect_code(1);
    assert!(
        r.stderr.contains("user 1000:1000") && r.stderr.contains("kiln is not root"),
        "{}",
        r.stderr
    );
}

#[test]
fn a_killed_rootless_kiln_leaves_nothing_the_next_run_does_not_reap() {
    require_program("setpriv", "util-linux");
    require_program("unshare", "util-linux");
    let env = project(
        "[steps.long]\nbase = \"base\"\nrun = \"echo started; sleep 120\"\n",
        "long",
    );
    give_env_to_nobody(&env);
    if !nobody_has_user_namespaces() {
        // Covered by rootless_run_through_a_user_namespace: the build fails at once.
        build_as_nobody(&env, &[]).expect_code(1);
        return;
    }
    let mut child = nobody_command(&env, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let state = env.root().join("exec/state");
    let deadline = Instant::now() + Duration::from_secs(60);
    // (Listing as root before kiln made the state folder would create it owned by root.)
    let started = || std::fs::read_dir(&state).is_ok_and(|mut d| d.next().is_some());
    while !started() || runc_list(&state).is_empty() {
        if let Ok(Some(_)) = child.try_wait() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            panic!("kiln ended before its container started:\n{err}");
        }
        assert!(Instant::now() < deadline, "the container never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    // setpriv execs kiln: the child is kiln itself.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    assert!(!runc_list(&state).is_empty(), "the container outlived kiln");
    // The next rootless build (of another step) reaps the container and its bundle.
    env.write(
        "def.toml",
        "version = 1\n[steps.base]\nsource = \"local://base\"\n[steps.ctx]\nsource = \"local://ctx\"\n\
         [steps.quick]\nbase = \"base\"\nrun = \"true\"\n[output]\nstep = \"quick\"\n",
    );
    build_as_nobody(&env, &[]).success();
    assert!(runc_list(&state).is_empty(), "a container is left");
    let bundles = env.root().join("exec/bundles");
    let left: Vec<_> = std::fs::read_dir(&bundles)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", bundles.display());
}

#[test]
fn a_kernel_refusing_user_namespaces_gets_an_error_naming_the_sysctl() {
    require_program("setpriv", "util-linux");
    require_program("unshare", "util-linux");
    let env = project(
        "[steps.app]\nbase = \"base\"\nrun = \"echo never > /ran\"\n",
        "app",
    );
    give_env_to_nobody(&env);
    let (spec, out) = out_dir(&env, "out");
    // kiln runs as nobody inside a user namespace (ids 0-65535 mapped to themselves)
    // whose user.max_user_namespaces is 0: there, the kernel refuses it a namespace.
    let inner = nobody_command(&env, &["--output", &spec]);
    let go = env.path("go");
    let script = r#"while [ ! -e "$KILN_TEST_GO" ]; do sleep 0.05; done
exec sh -c 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"' sh "$@""#;
    let mut c = Command::new("unshare");
    c.args(["--user", "sh", "-c", script, "sh"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("KILN_TEST_GO", &go)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let child = c.spawn().unwrap();
    let pid = child.id();
    let ours = std::fs::read_link("/proc/self/ns/user").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read_link(format!("/proc/{pid}/ns/user")).unwrap() == ours {
        assert!(
            Instant::now() < deadline,
            "unshare --user never entered its namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(format!("/proc/{pid}/uid_map"), "0 0 65536\n").unwrap();
    std::fs::write(format!("/proc/{pid}/gid_map"), "0 0 65536\n").unwrap();
    std::fs::write(&go, "").unwrap();
    let r: Run = child.wait_with_output().unwrap().into();
    r.expect_code(1);
    assert!(
        r.stderr.contains("app")
            && r.stderr.contains("unshare(CLONE_NEWUSER)")
            && r.stderr.contains("user.max_user_namespaces is 0")
            && r.stderr.contains("run kiln as root"),
        "{}",
        r.stderr
    );
    assert!(!out.exists(), "an output was written");
}
