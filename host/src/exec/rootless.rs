//! Rootless runs: when `kiln` is not root, a run goes through an unprivileged user
//! namespace in which container uid/gid 0 map to the caller (one id each).
//!
//! Whether the kernel allows that is probed once per process, by a forked child that
//! calls `unshare(CLONE_NEWUSER)`; when it does not, the error names the switch that is
//! off (`user.max_user_namespaces`, `kernel.unprivileged_userns_clone`, AppArmor's
//! `kernel.apparmor_restrict_unprivileged_userns`).

use std::sync::OnceLock;

use super::{ExecError, User};

/// The ids of the unprivileged caller that container root maps to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rootless {
    /// The caller's effective uid.
    pub uid: u32,
    /// The caller's effective gid.
    pub gid: u32,
}

impl Rootless {
    /// `None` when kiln runs as root (no user namespace is needed); else the caller's
    /// ids, once the kernel was seen to allow unprivileged user namespaces.
    pub fn detect() -> Result<Option<Rootless>, ExecError> {
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if uid == 0 {
            return Ok(None);
        }
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        PROBE
            .get_or_init(probe_user_namespace)
            .clone()
            .map_err(ExecError::Setup)?;
        Ok(Some(Rootless { uid, gid }))
    }

    /// Checks that `user` can run: only container root maps to the caller.
    pub fn check_user(&self, user: &User) -> Result<(), ExecError> {
        if user.uid == 0 && user.gid == 0 {
            return Ok(());
        }
        Err(ExecError::Setup(format!(
            "user {}:{}: kiln is not root, so run steps are rootless and only user 0:0 exists \
             inside the container (it maps to uid {} / gid {}, the user running kiln); remove \
             `user` from the step (and the base image's User) or run kiln as root",
            user.uid, user.gid, self.uid, self.gid
        )))
    }
}

/// Forks a child that tries `unshare(CLONE_NEWUSER)`; on failure, explains why.
fn probe_user_namespace() -> Result<(), String> {
    // SAFETY: the child only makes the async-signal-safe calls unshare, __errno_location
    // and _exit before it ends.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!(
            "check for user namespaces: fork: {}",
            std::io::Error::last_os_error()
        ));
    }
    if pid == 0 {
        // SAFETY: see above; the child never returns into Rust code.
        unsafe {
            let code = if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                0
            } else {
                *libc::__errno_location()
            };
            libc::_exit(code.clamp(0, 255));
        }
    }
    let mut status = 0;
    // SAFETY: `pid` is our child and `status` a valid out-pointer.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(format!("check for user namespaces: waitpid: {err}"));
        }
    }
    let errno = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        libc::EPERM
    };
    if errno == 0 {
        return Ok(());
    }
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
    };
    Err(diagnose(
        errno,
        read("/proc/sys/user/max_user_namespaces").as_deref(),
        read("/proc/sys/kernel/unprivileged_userns_clone").as_deref(),
        read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns").as_deref(),
    ))
}

/// The error for a failed probe (`errno` from `unshare`), naming the switch that is off.
pub(crate) fn diagnose(
    errno: i32,
    max_user_namespaces: Option<&str>,
    unprivileged_userns_clone: Option<&str>,
    apparmor_restrict: Option<&str>,
) -> String {
    // Callers prefix "run ".
    let head = "needs root or an unprivileged user namespace, and the kernel refuses kiln's \
                user one";
    let cause = std::io::Error::from_raw_os_error(errno);
    let fix = if max_user_namespaces == Some("0") {
        "the sysctl user.max_user_namespaces is 0: set it above 0 \
         (sysctl -w user.max_user_namespaces=15000)"
    } else if unprivileged_userns_clone == Some("0") {
        "the sysctl kernel.unprivileged_userns_clone is 0: set it to 1 \
         (sysctl -w kernel.unprivileged_userns_clone=1)"
    } else if apparmor_restrict == Some("1") {
        "AppArmor restricts unprivileged user namespaces \
         (kernel.apparmor_restrict_unprivileged_userns = 1): set it to 0 or give kiln an \
         AppArmor profile that allows userns"
    } else if errno == libc::ENOSPC {
        "the limit user.max_user_namespaces is reached for this user"
    } else if errno == libc::EINVAL {
        "the kernel is built without user namespaces (CONFIG_USER_NS)"
    } else {
        "a security policy (seccomp, SELinux, a container runtime) forbids unshare(CLONE_NEWUSER)"
    };
    format!("{head} (unshare(CLONE_NEWUSER): {cause}): {fix}; or run kiln as root")
}
