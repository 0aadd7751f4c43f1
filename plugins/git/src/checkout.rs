//! Writing a fetched commit into the snapshot directory.
//!
//! - Without `.git`: a throw-away git directory borrows the shared repository's
//!   objects (`objects/info/alternates`) and checks the commit out into the destination
//!   (or a hidden temporary directory inside it when a subdir is asked for); submodules
//!   are cloned into that throw-away directory and their `.git` files removed.
//! - With `git.keepgitdir` (and no subdir): a fresh repository in the destination that
//!   fetches the commit from the shared repository over `file://` (no hard links into
//!   the shared repository), checks it out, and gets the *redacted* remote as `origin`.
//! - A subdir must be a real directory at every component (symlinks and files refused).
//! - `git.mtime=commit` sets every path's mtime to the committer time.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use kiln_plugin_api::{Job, PluginError, Result};

use crate::attrs::MtimePolicy;
use crate::cli::{GitCli, ProgressFn};
use crate::identifier::GitIdentifier;
use crate::repo::Repo;
use crate::resolve::Resolved;

/// Everything the checkout needs.
pub struct Checkout<'a> {
    /// The hardened git (with the job's auth config).
    pub cli: &'a GitCli,
    /// The shared repository, locked.
    pub repo: &'a Repo,
    /// The step.
    pub id: &'a GitIdentifier,
    /// The resolution chosen at key time.
    pub resolved: &'a Resolved,
    /// The local ref in `repo` that points at it.
    pub local_ref: &'a str,
    /// Where throw-away git directories go (same filesystem as the state dir).
    pub tmp: &'a Path,
    /// The job.
    pub job: &'a Job<'a>,
}

impl Checkout<'_> {
    /// Writes the tree into `dest` (an empty directory).
    pub fn run(&self, dest: &Path, progress: ProgressFn<'_>) -> Result<()> {
        let keep = self.id.keep_git_dir && self.id.subdir.is_empty();
        let work = if self.id.subdir.is_empty() {
            dest.to_path_buf()
        } else {
            let w = dest.join(format!(".kiln-git-checkout-{}", random_suffix()));
            std::fs::create_dir(&w).map_err(|e| io_err("creating", &w, e))?;
            w
        };
        if keep {
            self.keep_git_dir(&work, progress)?;
        } else {
            self.plain(&work, progress)?;
        }
        if !self.id.subdir.is_empty() {
            move_subdir(&work, &self.id.subdir, dest)?;
        }
        if self.id.mtime == MtimePolicy::Commit {
            let t = self.commit_time()?;
            set_mtimes(dest, t)?;
        }
        Ok(())
    }

    fn plain(&self, work: &Path, progress: ProgressFn<'_>) -> Result<()> {
        let gitdir = self.tmp.join(format!("checkout-{}.git", random_suffix()));
        std::fs::create_dir_all(self.tmp).map_err(|e| io_err("creating", self.tmp, e))?;
        let result = (|| {
            let gd = gitdir.to_string_lossy().into_owned();
            let mut init = vec!["init", "--bare", "--quiet", "--template="];
            if self.resolved.commit.len() == 64 {
                init.push("--object-format=sha256");
            }
            init.extend(["--", &gd]);
            self.cli.run(None, None, &init, "preparing the checkout")?;
            let objects = self.repo.dir.join("objects");
            std::fs::write(
                gitdir.join("objects/info/alternates"),
                format!("{}\n", objects.display()),
            )
            .map_err(|e| io_err("writing alternates in", &gitdir, e))?;
            if let Ok(shallow) = std::fs::read(self.repo.dir.join("shallow")) {
                let _ = std::fs::write(gitdir.join("shallow"), shallow);
            }
            let cli = self.work_cli(&gitdir, work);
            cli.run(
                Some(self.job),
                None,
                &["update-ref", "--no-deref", "HEAD", &self.resolved.commit],
                "preparing the checkout",
            )?;
            cli.run_with_progress(
                Some(self.job),
                Some(work),
                &[
                    "-c",
                    "checkout.workers=0",
                    "checkout",
                    "--progress",
                    "--force",
                    "--no-overlay",
                    &self.resolved.commit,
                    "--",
                    ".",
                ],
                &format!(
                    "checking out {} of {}",
                    self.resolved.commit, self.id.remote
                ),
                Some(progress),
            )?;
            self.lfs(&cli, work)?;
            if !self.id.skip_submodules {
                self.submodules(&cli, work, progress)?;
                remove_dot_git(work)?;
            }
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&gitdir);
        result
    }

    fn keep_git_dir(&self, work: &Path, progress: ProgressFn<'_>) -> Result<()> {
        let r = self.resolved;
        let w = work.to_string_lossy().into_owned();
        let mut init = vec!["init", "--quiet", "--template="];
        if r.commit.len() == 64 {
            init.push("--object-format=sha256");
        }
        init.extend(["--", &w]);
        self.cli
            .run(None, None, &init, "creating the checkout's repository")?;
        let target = if r.fullref.starts_with("refs/") {
            r.fullref.clone()
        } else {
            "refs/kiln-checkout".to_string()
        };
        let source = format!("file://{}", self.repo.dir.display());
        let spec = format!("+{}:{}", self.local_ref, target);
        self.cli.run_with_progress(
            Some(self.job),
            Some(work),
            &[
                "fetch",
                "-u",
                "--depth=1",
                "--no-tags",
                "--progress",
                "--",
                &source,
                &spec,
            ],
            &format!("copying {} into the checkout", r.fullref),
            Some(progress),
        )?;
        let what = format!("checking out {} of {}", r.commit, self.id.remote);
        if r.fullref.starts_with("refs/heads/") {
            self.cli.run(
                None,
                Some(work),
                &["symbolic-ref", "HEAD", &r.fullref],
                &what,
            )?;
            self.cli.run_with_progress(
                Some(self.job),
                Some(work),
                &[
                    "-c",
                    "checkout.workers=0",
                    "checkout",
                    "--progress",
                    "--force",
                    "--no-overlay",
                    "HEAD",
                    "--",
                    ".",
                ],
                &what,
                Some(progress),
            )?;
        } else {
            self.cli.run_with_progress(
                Some(self.job),
                Some(work),
                &[
                    "-c",
                    "checkout.workers=0",
                    "checkout",
                    "--progress",
                    "--force",
                    "--detach",
                    &r.commit,
                ],
                &what,
                Some(progress),
            )?;
        }
        if target == "refs/kiln-checkout" {
            self.cli
                .run(None, Some(work), &["update-ref", "-d", &target], &what)?;
        }
        let redacted = self.id.remote.to_string();
        self.cli.run(
            None,
            Some(work),
            &["remote", "add", "--", "origin", &redacted],
            &what,
        )?;
        let mut cli = self.cli.clone();
        cli.config
            .push(("remote.origin.url".into(), self.id.remote.command_arg()));
        self.lfs(&cli, work)?;
        if !self.id.skip_submodules {
            self.submodules(&cli, work, progress)?;
        }
        self.cli.run(
            None,
            Some(work),
            &["reflog", "expire", "--expire=now", "--all"],
            &what,
        )?;
        let _ = std::fs::remove_file(work.join(".git/FETCH_HEAD"));
        redact_configs(&work.join(".git"))?;
        Ok(())
    }

    /// A git for the throw-away directory: its git dir and work tree in the
    /// environment, and `origin` = the real remote (for relative submodule URLs),
    /// never written to disk.
    fn work_cli(&self, gitdir: &Path, work: &Path) -> GitCli {
        let mut cli = self.cli.clone();
        cli.extra_env.push(("GIT_DIR".into(), gitdir.into()));
        cli.extra_env.push(("GIT_WORK_TREE".into(), work.into()));
        cli.config.push(("core.bare".into(), "false".into()));
        cli.config
            .push(("remote.origin.url".into(), self.id.remote.command_arg()));
        cli
    }

    fn submodules(&self, cli: &GitCli, work: &Path, progress: ProgressFn<'_>) -> Result<()> {
        if !work.join(".gitmodules").exists() {
            return Ok(());
        }
        cli.run_with_progress(
            Some(self.job),
            Some(work),
            &[
                "submodule",
                "update",
                "--init",
                "--recursive",
                "--depth=1",
                "--progress",
            ],
            &format!("updating the submodules of {}", self.id.remote),
            Some(progress),
        )
        .map(|_| ())
    }

    /// Git LFS: when `.gitattributes` uses the `lfs` filter, smudge the pointer files
    /// with `git-lfs` if it is installed; otherwise say clearly that they stay pointers.
    fn lfs(&self, cli: &GitCli, work: &Path) -> Result<()> {
        let uses_lfs = std::fs::read_to_string(work.join(".gitattributes"))
            .is_ok_and(|t| t.contains("filter=lfs"));
        if !uses_lfs {
            return Ok(());
        }
        if crate::find_program("git-lfs").is_none() {
            tracing::warn!(
                remote = %self.id.remote,
                "the repository uses Git LFS but git-lfs is not installed: LFS files are left as pointer files (install git-lfs, e.g. `apt-get install git-lfs`)"
            );
            return Ok(());
        }
        cli.run(
            Some(self.job),
            Some(work),
            &[
                "-c",
                "filter.lfs.process=git-lfs filter-process",
                "-c",
                "filter.lfs.required=true",
                "-c",
                "filter.lfs.clean=git-lfs clean -- %f",
                "-c",
                "filter.lfs.smudge=git-lfs smudge -- %f",
                "lfs",
                "pull",
            ],
            &format!("fetching the Git LFS files of {}", self.id.remote),
        )
        .map(|_| ())
    }

    fn commit_time(&self) -> Result<i64> {
        let out = self.cli.run(
            None,
            Some(&self.repo.dir),
            &["show", "-s", "--format=%ct", &self.resolved.commit, "--"],
            "reading the commit time",
        )?;
        out.stdout
            .trim()
            .parse()
            .map_err(|_| PluginError::internal(format!("bad commit time {:?}", out.stdout.trim())))
    }
}

/// Moves the entries of `work/<subdir>` into `dest` and removes `work`. Every
/// component of `subdir` must be a real directory.
fn move_subdir(work: &Path, subdir: &str, dest: &Path) -> Result<()> {
    let mut p = work.to_path_buf();
    for c in Path::new(subdir).components() {
        let Component::Normal(name) = c else {
            return Err(PluginError::invalid_identifier(format!(
                "invalid subdir {subdir:?}"
            )));
        };
        p.push(name);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let _ = std::fs::remove_dir_all(work);
                let what = if m.file_type().is_symlink() {
                    "a symlink"
                } else {
                    "not a directory"
                };
                return Err(PluginError::invalid_identifier(format!(
                    "subdir {subdir:?}: {:?} is {what}; every component of a git subdir must be a real directory",
                    p.strip_prefix(work).unwrap_or(&p)
                )));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(work);
                return Err(PluginError::not_found(format!(
                    "subdir {subdir:?} does not exist in the checkout"
                )));
            }
        }
    }
    let rd = std::fs::read_dir(&p).map_err(|e| io_err("reading", &p, e))?;
    for e in rd {
        let e = e.map_err(|e| io_err("reading", &p, e))?;
        let to = dest.join(e.file_name());
        std::fs::rename(e.path(), &to).map_err(|err| io_err("moving", &e.path(), err))?;
    }
    std::fs::remove_dir_all(work).map_err(|e| io_err("removing", work, e))
}

/// Removes the `.git` files submodules leave in the work tree (they point into the
/// throw-away git directory).
fn remove_dot_git(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("reading", dir, e))?;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if e.file_name() == ".git" {
            if t.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .map_err(|err| io_err("removing", &p, err))?;
        } else if t.is_dir() {
            remove_dot_git(&p)?;
        }
    }
    Ok(())
}

/// Redacts URL credentials in every `config` file of a kept `.git` (submodule URLs
/// resolved against the real remote included).
fn redact_configs(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_err("reading", dir, e))?;
    for e in rd.flatten() {
        let p = e.path();
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            redact_configs(&p)?;
        } else if t.is_file() && e.file_name() == "config" {
            let text = std::fs::read_to_string(&p).map_err(|err| io_err("reading", &p, err))?;
            let red = crate::url::redact(&text);
            if red != text {
                std::fs::write(&p, red).map_err(|err| io_err("writing", &p, err))?;
            }
        }
    }
    Ok(())
}

/// Sets the mtime of every path under `root` (and `root`) to `t`, without following
/// symlinks, directories after their contents.
pub fn set_mtimes(root: &Path, t: i64) -> Result<()> {
    fn walk(p: &Path, t: i64) -> Result<()> {
        let m = std::fs::symlink_metadata(p).map_err(|e| io_err("reading", p, e))?;
        if m.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| io_err("reading", p, e))?;
            for e in rd {
                let e = e.map_err(|e| io_err("reading", p, e))?;
                walk(&e.path(), t)?;
            }
        }
        set_mtime(p, t)
    }
    walk(root, t)
}

fn set_mtime(p: &Path, t: i64) -> Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| PluginError::internal(format!("path with NUL: {}", p.display())))?;
    let ts = libc::timespec {
        tv_sec: t as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: a valid C string and two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io_err(
            "setting the mtime of",
            p,
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

fn io_err(doing: &str, p: &Path, e: std::io::Error) -> PluginError {
    PluginError::internal(format!("git checkout: {doing} {}: {e}", p.display()))
}

/// Removes entries of `tmp` older than a day: throw-away git directories and
/// known_hosts files of processes that were killed.
pub fn clean_stale(tmp: &Path) {
    let day = std::time::Duration::from_secs(24 * 3600);
    for e in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > day);
        if old {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

/// A temporary directory path (not created).
pub fn tmp_name(base: &Path, prefix: &str) -> PathBuf {
    base.join(format!("{prefix}-{}", random_suffix()))
}
