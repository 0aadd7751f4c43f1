//! Parsers for repeated flag values: `K=V`, `NAME=DIR`, `--secret id=ID,src=FILE|env=VAR`,
//! `--oci-layout NAME=DIR` and `--ssh ID[=SOCKET]`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use super::CliError;

/// Splits `K=V` (the value may contain `=`).
pub fn parse_key_value(flag: &str, s: &str) -> Result<(String, String), CliError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CliError::usage(format!("{flag} {s:?}: expected KEY=VALUE"))),
    }
}

/// `--attr K=V`... as a map; a key given twice is an error.
pub fn parse_attrs(values: &[String]) -> Result<BTreeMap<String, String>, CliError> {
    let mut attrs = BTreeMap::new();
    for v in values {
        let (k, val) = parse_key_value("--attr", v)?;
        if attrs.insert(k.clone(), val).is_some() {
            return Err(CliError::usage(format!("--attr {k} is given twice")));
        }
    }
    Ok(attrs)
}

/// `--local NAME=DIR`... as a map of absolute paths.
pub fn parse_locals(values: &[String]) -> Result<HashMap<String, PathBuf>, CliError> {
    let mut locals = HashMap::new();
    for v in values {
        let (name, dir) = parse_key_value("--local", v)?;
        let dir = PathBuf::from(dir);
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        if locals.insert(name.clone(), dir).is_some() {
            return Err(CliError::usage(format!("--local {name} is given twice")));
        }
    }
    Ok(locals)
}

/// `--oci-layout NAME=DIR`... as a map of absolute paths. NAME is what an
/// `oci-layout://NAME:TAG` or `oci-layout://NAME@sha256:…` identifier names; DIR must be
/// an existing directory. A name given twice is a usage error.
pub fn parse_oci_layouts(values: &[String]) -> Result<HashMap<String, PathBuf>, CliError> {
    let mut layouts = HashMap::new();
    for v in values {
        let Some((name, dir)) = v.split_once('=') else {
            return Err(CliError::usage(format!(
                "--oci-layout {v:?}: expected NAME=DIR"
            )));
        };
        check_name("--oci-layout", name, true)?;
        if dir.is_empty() {
            return Err(CliError::usage(format!(
                "--oci-layout {name}=: the directory is empty"
            )));
        }
        let abs = std::fs::canonicalize(dir)
            .map_err(|e| CliError::usage(format!("--oci-layout {name}={dir}: {e}")))?;
        if !abs.is_dir() {
            return Err(CliError::usage(format!(
                "--oci-layout {name}={dir}: not a directory"
            )));
        }
        if layouts.insert(name.to_string(), abs).is_some() {
            return Err(CliError::usage(format!(
                "--oci-layout {name} is given twice"
            )));
        }
    }
    Ok(layouts)
}

/// `--ssh ID[=SOCKET]`... as a map of ssh-agent socket paths. Without `=SOCKET` the
/// socket is `$SSH_AUTH_SOCK` (`ssh_auth_sock`); with neither, and for a path that is
/// not a socket, the flag is a usage error. An id given twice is a usage error.
pub fn parse_ssh(
    values: &[String],
    ssh_auth_sock: Option<&std::ffi::OsStr>,
) -> Result<HashMap<String, PathBuf>, CliError> {
    use std::os::unix::fs::FileTypeExt;
    let mut sockets = HashMap::new();
    for v in values {
        let (id, socket) = match v.split_once('=') {
            Some((id, s)) => (id, Some(s)),
            None => (v.as_str(), None),
        };
        check_name("--ssh", id, false)?;
        let socket = match socket {
            Some("") => {
                return Err(CliError::usage(format!(
                    "--ssh {id}=: the socket path is empty"
                )))
            }
            Some(s) => PathBuf::from(s),
            None => match ssh_auth_sock.filter(|s| !s.is_empty()) {
                Some(s) => PathBuf::from(s),
                None => {
                    return Err(CliError::usage(format!(
                        "--ssh {id}: no socket given and SSH_AUTH_SOCK is not set (use --ssh {id}=SOCKET)"
                    )))
                }
            },
        };
        let socket = std::path::absolute(&socket).unwrap_or(socket);
        match std::fs::metadata(&socket) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => {
                return Err(CliError::usage(format!(
                    "--ssh {id}={}: not a socket (kiln forwards an ssh-agent socket; key files are not supported)",
                    socket.display()
                )))
            }
            Err(e) => {
                return Err(CliError::usage(format!(
                    "--ssh {id}={}: {e}",
                    socket.display()
                )))
            }
        }
        if sockets.insert(id.to_string(), socket).is_some() {
            return Err(CliError::usage(format!("--ssh {id} is given twice")));
        }
    }
    Ok(sockets)
}

/// Checks a `--oci-layout` NAME or an `--ssh` ID: 1 to 128 characters from
/// `[A-Za-z0-9._-]` (and `/` inside a layout name), starting with a letter or digit.
fn check_name(flag: &str, name: &str, slashes: bool) -> Result<(), CliError> {
    let what = if slashes { "NAME" } else { "ID" };
    let ok_char = |c: char| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') || (slashes && c == '/')
    };
    let valid = !name.is_empty()
        && name.len() <= 128
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && !name.ends_with('/')
        && !name.contains("//")
        && name.chars().all(ok_char);
    if valid {
        Ok(())
    } else {
        Err(CliError::usage(format!(
            "{flag} {name:?}: invalid {what}: use 1 to 128 letters, digits, '.', '_' or '-'{}, starting with a letter or digit",
            if slashes { " (and '/' between parts)" } else { "" }
        )))
    }
}

/// One `--secret` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretSpec {
    /// The secret's id.
    pub id: String,
    /// Where its value comes from.
    pub source: SecretSource,
}

/// Where a secret's value is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// A file.
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

/// Parses `id=ID,src=FILE` or `id=ID,env=VAR` (BuildKit's `--secret` form; `source=` is
/// accepted for `src=`; with only `id=ID`, the environment variable ID is read).
pub fn parse_secret(s: &str) -> Result<SecretSpec, CliError> {
    let mut id = None;
    let mut source = None;
    for part in s.split(',') {
        let (k, v) = parse_key_value("--secret", part)?;
        match k.as_str() {
            "id" => id = Some(v),
            "src" | "source" => source = Some(SecretSource::File(PathBuf::from(v))),
            "env" => source = Some(SecretSource::Env(v)),
            "type" if v == "file" || v == "env" => {}
            _ => {
                return Err(CliError::usage(format!(
                    "--secret: unknown field {k:?} (expected id=ID,src=FILE or id=ID,env=VAR)"
                )))
            }
        }
    }
    let id = id.ok_or_else(|| CliError::usage("--secret: missing id=ID"))?;
    let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
    Ok(SecretSpec { id, source })
}

/// Reads the values of `--secret` flags. Error messages name the secret id and its
/// file or variable, never the value.
pub fn read_secrets(values: &[String]) -> Result<HashMap<String, Vec<u8>>, CliError> {
    let mut secrets = HashMap::new();
    for v in values {
        let spec = parse_secret(v)?;
        let value = match &spec.source {
            SecretSource::File(p) => {
                crate::text::read_capped_bytes(p, crate::text::MAX_SECRET_BYTES, "secret").map_err(
                    |e| {
                        CliError::usage(format!(
                            "--secret {}: cannot read {}: {e}",
                            spec.id,
                            p.display()
                        ))
                    },
                )?
            }
            SecretSource::Env(var) => std::env::var_os(var)
                .ok_or_else(|| {
                    CliError::usage(format!(
                        "--secret {}: environment variable {var} is not set",
                        spec.id
                    ))
                })?
                .into_encoded_bytes(),
        };
        secrets.insert(spec.id, value);
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse() {
        assert_eq!(
            parse_secret("id=a,src=/f").unwrap(),
            SecretSpec {
                id: "a".into(),
                source: SecretSource::File("/f".into())
            }
        );
        assert_eq!(
            parse_secret("id=a,env=V").unwrap(),
            SecretSpec {
                id: "a".into(),
                source: SecretSource::Env("V".into())
            }
        );
        assert_eq!(
            parse_secret("id=T").unwrap().source,
            SecretSource::Env("T".into())
        );
        assert!(parse_secret("src=/f").is_err());
        assert!(parse_secret("id=a,bogus=1").is_err());
    }

    #[test]
    fn oci_layouts_parse() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display().to_string();
        let m = parse_oci_layouts(&[format!("base={dir}"), format!("team/app={dir}")]).unwrap();
        assert_eq!(m["base"], d.path().canonicalize().unwrap());
        assert!(m.contains_key("team/app"));
        for (bad, says) in [
            (
                format!("base={dir}|base={dir}"),
                "--oci-layout base is given twice",
            ),
            ("base".to_string(), "expected NAME=DIR"),
            (format!("={dir}"), "invalid NAME"),
            (format!("a:b={dir}"), "invalid NAME"),
            (format!("a@b={dir}"), "invalid NAME"),
            (format!("/a={dir}"), "invalid NAME"),
            ("base=".to_string(), "the directory is empty"),
            (format!("base={dir}/missing"), "--oci-layout base="),
        ] {
            let values: Vec<String> = bad.split('|').map(str::to_string).collect();
            let e = parse_oci_layouts(&values).unwrap_err();
            assert_eq!(e.code, 2, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
        std::fs::write(d.path().join("f"), "").unwrap();
        let e = parse_oci_layouts(&[format!("f={dir}/f")]).unwrap_err();
        assert!(e.message.contains("not a directory"), "{}", e.message);
    }

    #[test]
    fn ssh_sockets_parse() {
        let d = tempfile::tempdir().unwrap();
        let sock = d.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = d.path().join("id_rsa");
        std::fs::write(&file, "key").unwrap();
        let s = sock.display().to_string();
        let m = parse_ssh(
            &["default".into(), format!("git={s}")],
            Some(sock.as_os_str()),
        )
        .unwrap();
        assert_eq!(m["default"], sock);
        assert_eq!(m["git"], sock);
        let e = parse_ssh(&["default".into()], None).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(
            e.message.contains("SSH_AUTH_SOCK is not set"),
            "{}",
            e.message
        );
        let e = parse_ssh(
            &["default".into(), format!("default={s}")],
            Some(sock.as_os_str()),
        )
        .unwrap_err();
        assert!(
            e.message.contains("--ssh default is given twice"),
            "{}",
            e.message
        );
        let e = parse_ssh(&[format!("k={}", file.display())], None).unwrap_err();
        assert!(e.message.contains("not a socket"), "{}", e.message);
        let e = parse_ssh(&[format!("k={s}/nope")], None).unwrap_err();
        assert!(e.message.starts_with("--ssh k="), "{}", e.message);
        for bad in ["", "a b", "a/b", "-x", "a:b"] {
            let e = parse_ssh(&[format!("{bad}={s}")], None).unwrap_err();
            assert!(e.message.contains("invalid ID"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn attrs_parse() {
        let a = parse_attrs(&["a=b=c".into(), "x=".into()]).unwrap();
        assert_eq!(a["a"], "b=c");
        assert_eq!(a["x"], "");
        assert!(parse_attrs(&["=v".into()]).is_err());
        assert!(parse_attrs(&["a=1".into(), "a=2".into()]).is_err());
    }
}
