//! One bare repository per remote under the plugin's state directory, locked across
//! processes, fetched at depth 1 into local refs (`refs/kiln/…`) so that later fetches
//! of that remote send the server what is already here and move only new objects.
//!
//! Layout: `<state>/repos/<h>.git` (the repository), `<state>/repos/<h>.lock` (its
//! `flock`), where `<h>` is a hash of the redacted remote. The remote URL is never
//! written into the repository: it travels on each fetch's command line.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_plugin_api::{ErrorCode, Job, PluginError, Result};
use sha2::{Digest, Sha256};

use crate::cli::GitCli;
use crate::identifier::GitIdentifier;
use crate::resolve::Resolved;

/// A bare repository held under its lock.
pub struct Repo {
    /// The repository directory.
    pub dir: PathBuf,
    _lock: File,
}

/// Where the repository of `id`'s remote lives, and its lock file.
pub fn paths(state: &Path, id: &GitIdentifier) -> (PathBuf, PathBuf) {
    let h = hex::encode(&Sha256::digest(id.remote.to_string().as_bytes())[..16]);
    let dir = state.join("repos");
    (dir.join(format!("{h}.git")), dir.join(format!("{h}.lock")))
}

/// Locks (waiting for other processes, polling for cancellation) and opens, creating
/// it if needed, the repository of `id`'s remote.
pub fn open(
    cli: &GitCli,
    state: &Path,
    id: &GitIdentifier,
    sha256: bool,
    job: &Job<'_>,
) -> Result<Repo> {
    let (dir, lock_path) = paths(state, id);
    let parent = dir.parent().expect("repos dir");
    std::fs::create_dir_all(parent).map_err(|e| io_err("creating", parent, e))?;
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_err("opening", &lock_path, e))?;
    let mut waited = false;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(io_err("locking", &lock_path, e));
        }
        if !waited {
            tracing::debug!(remote = %id.remote, "waiting for another process fetching this remote");
            waited = true;
        }
        job.check_cancelled()?;
        std::thread::sleep(Duration::from_millis(50));
    }
    let repo = Repo { dir, _lock: lock };
    if repo.dir.join("kiln-ready").is_file() {
        repo.clear_stale_locks();
    } else {
        repo.create(cli, sha256)?;
    }
    Ok(repo)
}

impl Repo {
    /// (Re)creates the repository: `git init --bare` in a temporary directory, renamed
    /// into place, so a crash never leaves a half-made repository behind.
    pub fn create(&self, cli: &GitCli, sha256: bool) -> Result<()> {
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| io_err("removing", &self.dir, e))?;
        }
        let tmp = self
            .dir
            .with_extension(format!("tmp{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut args = vec!["init", "--bare", "--quiet", "--template="];
        if sha256 {
            args.push("--object-format=sha256");
        }
        let tmp_s = tmp.to_string_lossy().into_owned();
        args.push("--");
        args.push(&tmp_s);
        cli.run(None, None, &args, "creating the shared repository")?;
        std::fs::write(tmp.join("kiln-ready"), b"").map_err(|e| io_err("writing", &tmp, e))?;
        std::fs::rename(&tmp, &self.dir).map_err(|e| io_err("renaming", &tmp, e))?;
        Ok(())
    }

    /// Removes `*.lock` files a killed git left behind (we hold the repository lock, so
    /// no git of ours is running in it).
    fn clear_stale_locks(&self) {
        for name in [
            "shallow.lock",
            "packed-refs.lock",
            "HEAD.lock",
            "config.lock",
            "index.lock",
        ] {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        fn walk(d: &Path) {
            let Ok(rd) = std::fs::read_dir(d) else { return };
            for e in rd.flatten() {
                let p = e.path();
                match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&p),
                    Ok(t) if t.is_file() && p.extension().is_some_and(|x| x == "lock") => {
                        let _ = std::fs::remove_file(&p);
                    }
                    _ => {}
                }
            }
        }
        walk(&self.dir.join("refs"));
    }

    /// `rev-parse --verify` of `name`.
    pub fn rev_parse(&self, cli: &GitCli, name: &str) -> Option<String> {
        cli.run(
            None,
            Some(&self.dir),
            &["rev-parse", "--verify", "--quiet", "--end-of-options", name],
            "rev-parse",
        )
        .ok()
        .map(|o| o.stdout.trim().to_string())
        .filter(|s| !s.is_empty())
    }

    /// The objects the `refs/kiln/…` refs point at, and their peeled commits.
    pub fn ref_targets(&self, cli: &GitCli) -> Result<Vec<String>> {
        let out = cli.run(
            None,
            Some(&self.dir),
            &[
                "for-each-ref",
                "--format=%(objectname) %(*objectname)",
                "refs/kiln/",
            ],
            "listing local refs",
        )?;
        Ok(out.stdout.split_whitespace().map(str::to_string).collect())
    }

    /// Whether `object` and everything its commit's tree needs are present.
    pub fn complete(&self, cli: &GitCli, object: &str) -> bool {
        cli.run(
            None,
            Some(&self.dir),
            &[
                "rev-list",
                "--objects",
                "--missing=print",
                "-n",
                "1",
                object,
                "--",
            ],
            "checking objects",
        )
        .is_ok_and(|o| !o.stdout.lines().any(|l| l.starts_with('?')))
    }

    /// Deletes every `refs/kiln/…` ref (the objects stay).
    pub fn drop_local_refs(&self, cli: &GitCli) -> Result<()> {
        let out = cli.run(
            None,
            Some(&self.dir),
            &["for-each-ref", "--format=%(refname)", "refs/kiln/"],
            "listing local refs",
        )?;
        for name in out.stdout.lines().filter(|l| !l.is_empty()) {
            cli.run(
                None,
                Some(&self.dir),
                &["update-ref", "-d", name],
                "deleting a local ref",
            )?;
        }
        Ok(())
    }

    fn set_ref(&self, cli: &GitCli, name: &str, object: &str) -> Result<()> {
        cli.run(
            None,
            Some(&self.dir),
            &["update-ref", "--no-deref", name, object],
            "update-ref",
        )
        .map(|_| ())
    }
}

/// The local ref a resolution is kept under.
pub fn local_ref(r: &Resolved) -> String {
    match r.fullref.strip_prefix("refs/") {
        Some(rest) => format!("refs/kiln/{rest}"),
        None => format!("refs/kiln/commits/{}", r.commit),
    }
}

/// Makes `r`'s objects present in `repo` (fetching only when they are not) and points
/// the local ref at the object chosen at key time (BuildKit's race check: a ref that
/// moved upstream meanwhile still gives the commit of the key). Returns the local ref.
pub fn ensure(
    cli: &GitCli,
    repo: &Repo,
    id: &GitIdentifier,
    r: &Resolved,
    job: &Job<'_>,
    progress: crate::cli::ProgressFn<'_>,
) -> Result<String> {
    let local = local_ref(r);
    let wanted = &r.checksum;
    // Present only if a finished fetch left a ref on it: loose objects of a killed
    // fetch may hold the commit without its files.
    if repo.ref_targets(cli)?.iter().any(|t| t == wanted) {
        repo.set_ref(cli, &local, wanted)?;
        return Ok(local);
    }
    let url = id.remote.command_arg();
    let by_sha = id.ref_is_commit() || !r.fullref.starts_with("refs/") && r.fullref != "HEAD";
    let source = if by_sha || id.fetch_by_commit {
        wanted.clone()
    } else {
        r.fullref.clone()
    };
    let what = format!("fetching {} {} from {}", r.fullref, &r.commit, id.remote);
    let mut first = fetch(cli, repo, &url, &source, &local, job, &what, progress);
    if first.as_ref().is_err_and(is_ref_conflict) {
        // e.g. branch `feature` became `feature/new`: drop our local refs and retry.
        repo.drop_local_refs(cli)?;
        first = fetch(cli, repo, &url, &source, &local, job, &what, progress);
    }
    match first {
        Ok(()) => {}
        Err(e) if by_sha && e.code != ErrorCode::CANCELLED => {
            // The server refuses unadvertised shas: fetch everything it has.
            tracing::debug!(error = %e.message, "fetch by sha refused; fetching all refs");
            fetch_all(cli, repo, &url, job, &what, progress)?;
        }
        Err(e) => return Err(e),
    }
    let got = repo.rev_parse(cli, &local);
    if got.as_deref() != Some(wanted.as_str()) {
        // The ref moved (or vanished) since the key was computed.
        if !repo.complete(cli, wanted)
            && (fetch(cli, repo, &url, wanted, &local, job, &what, progress).is_err()
                || !repo.complete(cli, wanted))
        {
            return Err(PluginError::not_found(format!(
                "fetched ref {} does not match expected commit {} and commit can not be found (remote {})",
                r.fullref, r.commit, id.remote
            )));
        }
        repo.set_ref(cli, &local, wanted)?;
    }
    Ok(local)
}

/// `fetch --depth=1` of one refspec (retried without `--depth` when the server cannot
/// do shallow fetches).
#[allow(clippy::too_many_arguments)]
fn fetch(
    cli: &GitCli,
    repo: &Repo,
    url: &str,
    source: &str,
    local: &str,
    job: &Job<'_>,
    what: &str,
    progress: crate::cli::ProgressFn<'_>,
) -> Result<()> {
    let spec = format!("+{source}:{local}");
    let run = |depth: bool| {
        let mut args = vec![
            "fetch",
            "--no-tags",
            "--force",
            "--progress",
            "--no-write-fetch-head",
        ];
        if depth {
            args.push("--depth=1");
        }
        args.extend(["--", url, &spec]);
        cli.run_with_progress(Some(job), Some(&repo.dir), &args, what, Some(progress))
    };
    match run(true) {
        Ok(_) => Ok(()),
        Err(e) if e.message.contains("shallow") || e.message.contains("--depth") => {
            run(false).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

fn fetch_all(
    cli: &GitCli,
    repo: &Repo,
    url: &str,
    job: &Job<'_>,
    what: &str,
    progress: crate::cli::ProgressFn<'_>,
) -> Result<()> {
    let args = [
        "-c",
        "fetch.unpackLimit=1",
        "fetch",
        "--no-tags",
        "--force",
        "--progress",
        "--no-write-fetch-head",
        "--",
        url,
        "+refs/*:refs/kiln/all/*",
    ];
    cli.run_with_progress(Some(job), Some(&repo.dir), &args, what, Some(progress))
        .map(|_| ())
}

fn is_ref_conflict(e: &PluginError) -> bool {
    let m = e.message.as_str();
    m.contains("cannot lock ref")
        || m.contains("unable to update local ref")
        || m.contains("refname conflict")
        || m.contains("would clobber")
}

fn io_err(doing: &str, p: &Path, e: std::io::Error) -> PluginError {
    PluginError::internal(format!("git: {doing} {}: {e}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_refs() {
        let r = |f: &str| Resolved {
            fullref: f.into(),
            checksum: "a".repeat(40),
            commit: "a".repeat(40),
        };
        assert_eq!(local_ref(&r("refs/heads/main")), "refs/kiln/heads/main");
        assert_eq!(local_ref(&r("refs/tags/v1")), "refs/kiln/tags/v1");
        assert_eq!(
            local_ref(&r(&"a".repeat(40))),
            format!("refs/kiln/commits/{}", "a".repeat(40))
        );
    }
}
