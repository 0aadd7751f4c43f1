//! Credentials for a git call, by BuildKit's rules:
//!
//! - http(s): the first secret found among `<header>.<host>`, `<token>.<host>`,
//!   `<header>`, `<token>` (default names `GIT_AUTH_HEADER` and `GIT_AUTH_TOKEN`,
//!   `<host>` with its port as written). A token becomes
//!   `basic base64("x-access-token:<token>")`; a header is sent verbatim. The value
//!   goes to git as `http.<remote>.extraheader=Authorization: <v>` through the
//!   environment, never argv; for github.com the scope is `https://github.com/` so
//!   submodules there get it too. Missing secrets are ignored.
//! - ssh: the agent socket forwarded with `--ssh ID` (`git.mountsshsock`, else
//!   `default` when forwarded) as `SSH_AUTH_SOCK`; `git.knownsshhosts` written to a
//!   temporary known_hosts file and checked strictly.

use std::path::{Path, PathBuf};

use base64::Engine;
use kiln_plugin_api::{Job, PluginError, Result};

use crate::cli::GitCli;
use crate::identifier::GitIdentifier;
use crate::url::Protocol;

/// Removes the temporary known_hosts file when dropped.
#[derive(Default)]
pub struct Cleanup(Option<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Adds the job's credentials for `id`'s remote to `cli`.
pub fn apply(cli: &mut GitCli, id: &GitIdentifier, job: &Job<'_>, tmp: &Path) -> Result<Cleanup> {
    let mut cleanup = Cleanup::default();
    match id.remote.protocol() {
        Protocol::Http | Protocol::Https => {
            if let Some(v) = header_value(id, |name| job.secret(name)) {
                cli.config
                    .push((format!("http.{}.extraheader", scope(id)), v));
            }
        }
        Protocol::Ssh => {
            let name = if id.mount_ssh_sock.is_empty() {
                "default"
            } else {
                &id.mount_ssh_sock
            };
            match job.ssh_socket(name) {
                Some(sock) => cli.ssh_auth_sock = Some(sock),
                None if !id.mount_ssh_sock.is_empty() => {
                    return Err(PluginError::unauthorized(format!(
                        "{id}: no ssh agent socket {name:?} was forwarded (pass --ssh {name}[=SOCKET])"
                    )))
                }
                None => {}
            }
            if !id.known_ssh_hosts.is_empty() {
                std::fs::create_dir_all(tmp).map_err(|e| {
                    PluginError::internal(format!("creating {}: {e}", tmp.display()))
                })?;
                let p = crate::checkout::tmp_name(tmp, "known_hosts");
                std::fs::write(&p, format!("{}\n", id.known_ssh_hosts.trim_end()))
                    .map_err(|e| PluginError::internal(format!("writing {}: {e}", p.display())))?;
                cli.known_hosts = Some(p.clone());
                cleanup.0 = Some(p);
            }
        }
        // No credentials travel over git:// or to a local repository.
        Protocol::Git | Protocol::File => {}
    }
    Ok(cleanup)
}

/// The `Authorization` header from the first secret found, if any.
pub fn header_value(
    id: &GitIdentifier,
    secret: impl Fn(&str) -> Option<Vec<u8>>,
) -> Option<String> {
    let host = id.remote.host();
    let names = [
        (format!("{}.{host}", id.auth_header_secret), true),
        (format!("{}.{host}", id.auth_token_secret), false),
        (id.auth_header_secret.clone(), true),
        (id.auth_token_secret.clone(), false),
    ];
    for (name, is_header) in names {
        if name.starts_with('.') || name.is_empty() {
            continue;
        }
        if let Some(v) = secret(&name) {
            let v = String::from_utf8_lossy(&v).trim().to_string();
            return Some(if is_header {
                format!("Authorization: {v}")
            } else {
                let b =
                    base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{v}"));
                format!("Authorization: basic {b}")
            });
        }
    }
    None
}

/// The URL prefix the header is scoped to: the remote without credentials, or
/// `https://github.com/` for GitHub.
pub fn scope(id: &GitIdentifier) -> String {
    let host = id.remote.hostname();
    if host == "github.com" || host == "www.github.com" {
        return format!("https://{host}/");
    }
    format!(
        "{}://{}{}",
        id.remote.protocol(),
        id.remote.host(),
        id.remote.raw_path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn id(url: &str) -> GitIdentifier {
        GitIdentifier::parse(url, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn secret_precedence() {
        let i = id("https://u:pw@git.example:8443/r.git");
        let all = |n: &str| match n {
            "GIT_AUTH_HEADER.git.example:8443" => Some(b"Bearer host-header".to_vec()),
            "GIT_AUTH_TOKEN.git.example:8443" => Some(b"host-token".to_vec()),
            "GIT_AUTH_HEADER" => Some(b"Bearer plain".to_vec()),
            "GIT_AUTH_TOKEN" => Some(b"plain-token\n".to_vec()),
            _ => None,
        };
        assert_eq!(
            header_value(&i, all).unwrap(),
            "Authorization: Bearer host-header"
        );
        let no_host_header = |n: &str| {
            if n == "GIT_AUTH_HEADER.git.example:8443" {
                None
            } else {
                all(n)
            }
        };
        assert_eq!(
            header_value(&i, no_host_header).unwrap(),
            format!(
                "Authorization: basic {}",
                base64::engine::general_purpose::STANDARD.encode("x-access-token:host-token")
            )
        );
        let plain_token = |n: &str| if n == "GIT_AUTH_TOKEN" { all(n) } else { None };
        assert_eq!(
            header_value(&i, plain_token).unwrap(),
            "Authorization: basic eC1hY2Nlc3MtdG9rZW46cGxhaW4tdG9rZW4="
        );
        assert_eq!(header_value(&i, |_| None), None);
        assert_eq!(scope(&i), "https://git.example:8443/r.git");
        assert_eq!(
            scope(&id("https://github.com/moby/buildkit.git")),
            "https://github.com/"
        );
    }
}
