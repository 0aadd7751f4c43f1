//! Resolution of a git identifier to an object, by BuildKit's rules
//! (`source/git/source.go`, `resolveMetadata`):
//!
//! - a full commit sha (40 or 64 hex) needs no network;
//! - `git.fetchbycommit` uses the checksum, no `ls-remote`;
//! - otherwise `ls-remote -- URL REF REF^{}`, preferring an exact `refs/…` match, then
//!   `refs/<ref>`, a branch, then a tag (peeled `^{}` for annotated tags); the default
//!   branch comes from `ls-remote --symref -- URL HEAD`;
//! - refs from the remote are validated like user refs (no leading `-`);
//! - `git.checksum` must prefix the resolved object or its peeled commit.
//!
//! [`Memo`] keeps every answer per job, so one build resolves a ref once even if the
//! remote moves meanwhile.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kiln_plugin_api::{Job, PluginError, Result};

use crate::attrs::is_commit_sha;
use crate::cli::GitCli;
use crate::identifier::GitIdentifier;

/// What a ref resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The full ref used (`refs/tags/v1.2.3`); for a sha ref, the sha itself.
    pub fullref: String,
    /// The object the ref names (the tag object for annotated tags): the pin.
    pub checksum: String,
    /// The commit (the peeled tag for annotated tags).
    pub commit: String,
}

impl Resolved {
    /// Whether `fullref` is an annotated tag: the object it names is not the commit.
    pub fn is_annotated(&self) -> bool {
        self.checksum != self.commit
    }
}

/// Resolves `id` against its remote (no network for a full sha or fetch-by-commit).
pub fn resolve(cli: &GitCli, id: &GitIdentifier, job: &Job<'_>) -> Result<Resolved> {
    let r = if id.ref_is_commit() {
        Resolved {
            fullref: id.reference.clone(),
            checksum: id.reference.clone(),
            commit: id.reference.clone(),
        }
    } else if id.fetch_by_commit {
        let fullref = if id.reference.is_empty() {
            id.checksum.clone()
        } else if id.reference.starts_with("refs/") {
            id.reference.clone()
        } else {
            format!("refs/heads/{}", id.reference)
        };
        Resolved {
            fullref,
            checksum: id.checksum.clone(),
            commit: id.checksum.clone(),
        }
    } else {
        let url = id.remote.command_arg();
        if id.reference.is_empty() {
            let out = cli.run(
                Some(job),
                None,
                &["ls-remote", "--symref", "--", &url, "HEAD"],
                &format!("resolving the default branch of {}", id.remote),
            )?;
            default_branch(&out.stdout)
                .map_err(|e| e.context(format!("resolving the default branch of {}", id.remote)))?
        } else {
            let peeled = format!("{}^{{}}", id.reference);
            let out = cli.run(
                Some(job),
                None,
                &["ls-remote", "--", &url, &id.reference, &peeled],
                &format!("resolving ref {:?} of {}", id.reference, id.remote),
            )?;
            pick(&parse_ls_remote(&out.stdout), &id.reference)
                .map_err(|e| e.context(format!("{}", id.remote)))?
        }
    };
    check_checksum(&id.checksum, &r)?;
    Ok(r)
}

/// `git.checksum` must prefix the resolved object or its peeled commit.
pub fn check_checksum(checksum: &str, r: &Resolved) -> Result<()> {
    if checksum.is_empty() || r.checksum.starts_with(checksum) || r.commit.starts_with(checksum) {
        return Ok(());
    }
    Err(PluginError::checksum_mismatch(format!(
        "expected checksum to match {checksum}, got {}",
        r.checksum
    )))
}

/// `<sha>\t<ref>` lines.
pub fn parse_ls_remote(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (sha, name) = l.split_once('\t')?;
            Some((sha.trim().to_string(), name.trim().to_string()))
        })
        .collect()
}

/// Picks the ref by BuildKit's precedence among `ls-remote` lines.
pub fn pick(lines: &[(String, String)], reference: &str) -> Result<Resolved> {
    let mut candidates = Vec::new();
    if reference.starts_with("refs/") {
        candidates.push(reference.to_string());
    }
    candidates.push(format!("refs/{reference}"));
    candidates.push(format!("refs/heads/{reference}"));
    candidates.push(format!("refs/tags/{reference}"));
    let find = |name: &str| {
        lines
            .iter()
            .find(|(_, n)| n == name)
            .map(|(s, _)| s.clone())
    };
    for name in candidates {
        if let Some(sha) = find(&name) {
            validate_remote_ref(&name)?;
            let sha = valid_sha(&sha)?;
            let peeled = find(&format!("{name}^{{}}"));
            let commit = match peeled {
                Some(p) => valid_sha(&p)?,
                None => sha.clone(),
            };
            return Ok(Resolved {
                fullref: name,
                checksum: sha,
                commit,
            });
        }
    }
    Err(PluginError::not_found(format!(
        "repository does not contain ref {reference}"
    )))
}

/// The default branch from `ls-remote --symref -- URL HEAD`:
/// `ref: refs/heads/main\tHEAD` then `<sha>\tHEAD`.
pub fn default_branch(out: &str) -> Result<Resolved> {
    let mut target = None;
    let mut sha = None;
    for line in out.lines() {
        if let Some(rest) = line.strip_prefix("ref:") {
            if let Some((t, name)) = rest.trim().split_once('\t') {
                if name.trim() == "HEAD" {
                    target = Some(t.trim().to_string());
                }
            }
        } else if let Some((s, name)) = line.split_once('\t') {
            if name.trim() == "HEAD" {
                sha = Some(s.trim().to_string());
            }
        }
    }
    let sha =
        sha.ok_or_else(|| PluginError::not_found("the remote has no HEAD (an empty repository?)"))?;
    let sha = valid_sha(&sha)?;
    let fullref = match target {
        Some(t) => {
            validate_remote_ref(&t)?;
            t
        }
        None => "HEAD".to_string(),
    };
    Ok(Resolved {
        fullref,
        checksum: sha.clone(),
        commit: sha,
    })
}

/// A ref that came from the remote must not be readable as an option anywhere it is
/// used later (GHSA-hw3h-2gp9-cxpv): no component starting with `-`, no whitespace or
/// control characters, no `..`.
pub fn validate_remote_ref(name: &str) -> Result<()> {
    let bad = name.split('/').any(|c| c.starts_with('-') || c.is_empty())
        || name.contains("..")
        || name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        return Err(PluginError::not_found(format!(
            "refusing the remote's ref: invalid git ref {name:?}"
        )));
    }
    Ok(())
}

fn valid_sha(s: &str) -> Result<String> {
    if is_commit_sha(s) {
        Ok(s.to_string())
    } else {
        Err(PluginError::internal(format!("invalid commit sha {s:?}")))
    }
}

/// One answer slot: filled once; concurrent askers wait on its lock.
type Slot = Arc<Mutex<Option<Resolved>>>;

/// Answer slots by job id, then by `remote#ref…`.
type JobAnswers = HashMap<String, HashMap<String, Slot>>;

/// How many jobs' answers are kept.
const JOBS_KEPT: usize = 64;

/// Answers per job id and `remote#ref` (plus checksum and fetch mode), so a ref is
/// resolved once per build: concurrent steps asking for the same ref wait for the one
/// `ls-remote` in flight and share its answer.
#[derive(Default)]
pub struct Memo {
    inner: Mutex<(VecDeque<String>, JobAnswers)>,
}

impl Memo {
    /// The answer for `key` in `job`, computing it with `f` at most once per job (a
    /// failure is not kept: the next asker tries again).
    pub fn get_or(
        &self,
        job: &str,
        key: &str,
        f: impl FnOnce() -> Result<Resolved>,
    ) -> Result<Resolved> {
        let slot = {
            let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            let (order, map) = &mut *g;
            if !map.contains_key(job) {
                order.push_back(job.to_string());
                if order.len() > JOBS_KEPT {
                    if let Some(old) = order.pop_front() {
                        map.remove(&old);
                    }
                }
            }
            map.entry(job.to_string())
                .or_default()
                .entry(key.to_string())
                .or_default()
                .clone()
        };
        let mut answer = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = answer.as_ref() {
            return Ok(r.clone());
        }
        let r = f()?;
        *answer = Some(r.clone());
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    fn lines(text: &str) -> Vec<(String, String)> {
        parse_ls_remote(text)
    }

    #[test]
    fn branch_wins_over_tag() {
        let l = lines(&format!("{A}\trefs/heads/v1\n{B}\trefs/tags/v1\n"));
        let r = pick(&l, "v1").unwrap();
        assert_eq!(
            (r.fullref.as_str(), r.checksum.as_str()),
            ("refs/heads/v1", A)
        );
        let r = pick(&l, "refs/tags/v1").unwrap();
        assert_eq!(
            (r.fullref.as_str(), r.checksum.as_str()),
            ("refs/tags/v1", B)
        );
        let r = pick(&l, "tags/v1").unwrap();
        assert_eq!(r.fullref, "refs/tags/v1");
    }

    #[test]
    fn annotated_tags_peel() {
        let l = lines(&format!("{B}\trefs/tags/v2\n{C}\trefs/tags/v2^{{}}\n"));
        let r = pick(&l, "v2").unwrap();
        assert_eq!(r.checksum, B);
        assert_eq!(r.commit, C);
        assert!(r.is_annotated());
        check_checksum(&B[..8], &r).unwrap();
        check_checksum(&C[..8], &r).unwrap();
        let e = check_checksum("abcdef", &r).unwrap_err();
        assert_eq!(
            e.message,
            format!("expected checksum to match abcdef, got {B}")
        );
    }

    #[test]
    fn missing_ref() {
        let e = pick(&lines(&format!("{A}\trefs/heads/main\n")), "nope").unwrap_err();
        assert!(e.message.contains("repository does not contain ref nope"));
    }

    #[test]
    fn default_branch_from_symref() {
        let r = default_branch(&format!("ref: refs/heads/trunk\tHEAD\n{A}\tHEAD\n")).unwrap();
        assert_eq!(r.fullref, "refs/heads/trunk");
        assert_eq!(r.checksum, A);
        let e = default_branch(&format!(
            "ref: refs/heads/--upload-pack=touch /tmp/x\tHEAD\n{A}\tHEAD\n"
        ))
        .unwrap_err();
        assert!(e.message.contains("invalid git ref"), "{}", e.message);
    }

    #[test]
    fn memo_keeps_the_first_answer() {
        let m = Memo::default();
        let r = |c: &str| Resolved {
            fullref: "refs/heads/x".into(),
            checksum: c.into(),
            commit: c.into(),
        };
        assert_eq!(m.get_or("j1", "k", || Ok(r(A))).unwrap().checksum, A);
        assert_eq!(m.get_or("j1", "k", || Ok(r(B))).unwrap().checksum, A);
        assert_eq!(m.get_or("j2", "k", || Ok(r(B))).unwrap().checksum, B);
    }
}
