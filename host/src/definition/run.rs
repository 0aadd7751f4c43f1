//! The `run` step: a command executed in its base's filesystem (BuildKit's exec op).
//!
//! ```toml
//! [steps.test]
//! base = "app"
//! run = ["sh", "-c", "make test"]    # or a string, run by /bin/sh -c
//! env = { CI = "1" }
//! workdir = "/app"
//! user = "1000:1000"
//! network = "none"                   # "host" (default) | "none"
//! mounts = [{ type = "bind", from = "ctx", source = "/", target = "/src", readonly = true }]
//! actions = [ … ]                    # file actions applied after the command
//! ```

use std::collections::BTreeMap;

use serde::Serialize;
use toml::{Table, Value};

use super::{Action, DefinitionError};

type Res<T> = Result<T, DefinitionError>;

/// The keys a run step may have.
pub const RUN_KEYS: &[&str] = &[
    "base", "run", "env", "workdir", "user", "network", "mounts", "actions",
];

/// A run step.
#[derive(Clone, Debug, PartialEq)]
pub struct RunStep {
    /// The root file system: a step, or `None` for `scratch`.
    pub base: Option<String>,
    /// The command's argv (a string `run` becomes `/bin/sh -c STRING`).
    pub args: Vec<String>,
    /// Added to (and overriding) the base image's `Env`.
    pub env: BTreeMap<String, String>,
    /// Default: the base image's `WorkingDir`, else `/`.
    pub workdir: Option<String>,
    /// Default: the base image's `User`, else root.
    pub user: Option<String>,
    /// `host` or `none`.
    pub network: NetworkMode,
    /// Mounts, in order.
    pub mounts: Vec<RunMount>,
    /// File actions applied to the result after the command.
    pub actions: Vec<Action>,
}

/// The network a run step sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// The host's network (buildkitd's host mode, the default).
    Host,
    /// Only loopback.
    None,
}

/// One mount of a run step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunMount {
    /// Another step's tree (or a part of it).
    Bind {
        /// The step mounted.
        from: String,
        /// The path inside that step's tree (default `/`).
        source: String,
        /// Where it appears.
        target: String,
        /// Read-only (default true, as BuildKit's default for `RUN --mount=type=bind`).
        readonly: bool,
    },
    /// A persistent cache directory.
    Cache {
        /// The cache's id (default: the target).
        id: String,
        /// Where it appears.
        target: String,
        /// `shared` (default), `private` or `locked`.
        sharing: String,
    },
    /// A `--secret` as a file.
    Secret {
        /// The secret's id.
        id: String,
        /// Where the file appears (default `/run/secrets/<id>`).
        target: String,
        /// Fail when the secret was not given (default true).
        required: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Where it appears.
        target: String,
    },
    /// An `--ssh` agent socket.
    Ssh {
        /// The `--ssh` id (default `default`).
        id: String,
        /// Where the socket appears (default `/run/buildkit/ssh_agent.0`).
        target: String,
    },
}

impl RunMount {
    /// Where the mount appears inside.
    pub fn target(&self) -> &str {
        match self {
            RunMount::Bind { target, .. }
            | RunMount::Cache { target, .. }
            | RunMount::Secret { target, .. }
            | RunMount::Tmpfs { target }
            | RunMount::Ssh { target, .. } => target,
        }
    }
}

fn err(step: &str, msg: impl Into<String>) -> DefinitionError {
    DefinitionError::step(step, msg)
}

fn text(step: &str, key: &str, v: &Value) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(err(
            step,
            format!("`{key}` must be a string, not {}", other.type_str()),
        )),
    }
}

fn abs_path(step: &str, key: &str, v: &Value) -> Res<String> {
    let p = text(step, key, v)?;
    if !p.starts_with('/') || p.contains('\0') {
        return Err(err(
            step,
            format!("`{key}` must be an absolute path without NUL, not {p:?}"),
        ));
    }
    Ok(p)
}

/// Parses the run-specific keys of step `name` (the caller parsed `base` and `actions`).
pub(super) fn parse_run(
    name: &str,
    t: &Table,
    base: Option<String>,
    actions: Vec<Action>,
) -> Res<RunStep> {
    let args = match t.get("run") {
        Some(Value::String(s)) if !s.trim().is_empty() => {
            vec!["/bin/sh".to_string(), "-c".to_string(), s.clone()]
        }
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|i| text(name, "run", i))
            .collect::<Res<_>>()?,
        Some(Value::String(_)) | Some(Value::Array(_)) => return Err(err(name, "`run` is empty")),
        Some(other) => {
            return Err(err(
                name,
                format!(
                    "`run` must be a string or an array of strings, not {}",
                    other.type_str()
                ),
            ))
        }
        None => unreachable!("called for steps with `run`"),
    };
    if args.iter().any(|a| a.contains('\0')) {
        return Err(err(name, "`run` must not contain NUL bytes"));
    }
    let env = match t.get("env") {
        None => BTreeMap::new(),
        Some(Value::Table(e)) => e
            .iter()
            .map(|(k, v)| {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(err(name, format!("env name {k:?} is not valid")));
                }
                Ok((k.clone(), text(name, &format!("env.{k}"), v)?))
            })
            .collect::<Res<_>>()?,
        Some(other) => {
            return Err(err(
                name,
                format!("`env` must be a table, not {}", other.type_str()),
            ))
        }
    };
    let workdir = t
        .get("workdir")
        .map(|v| abs_path(name, "workdir", v))
        .transpose()?;
    let user = t.get("user").map(|v| text(name, "user", v)).transpose()?;
    let network = match t
        .get("network")
        .map(|v| text(name, "network", v))
        .transpose()?
    {
        None => NetworkMode::Host,
        Some(n) if n == "host" => NetworkMode::Host,
        Some(n) if n == "none" => NetworkMode::None,
        Some(n) => {
            return Err(err(
                name,
                format!("network {n:?} is not one of \"host\", \"none\""),
            ))
        }
    };
    let mounts = match t.get("mounts") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| parse_mount(name, i + 1, m))
            .collect::<Res<_>>()?,
        Some(other) => {
            return Err(err(
                name,
                format!("`mounts` must be an array, not {}", other.type_str()),
            ))
        }
    };
    let mut targets: Vec<&str> = mounts.iter().map(RunMount::target).collect();
    targets.sort_unstable();
    if let Some(w) = targets.windows(2).find(|w| w[0] == w[1]) {
        return Err(err(name, format!("two mounts target {}", w[0])));
    }
    let mut ids: Vec<&str> = mounts
        .iter()
        .filter_map(|m| match m {
            RunMount::Cache { id, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(err(name, format!("two cache mounts use the id {:?}", w[0])));
    }
    if targets.contains(&"/") {
        return Err(err(name, "a mount cannot target / (that is the base)"));
    }
    Ok(RunStep {
        base,
        args,
        env,
        workdir,
        user,
        network,
        mounts,
        actions,
    })
}

fn parse_mount(step: &str, n: usize, v: &Value) -> Res<RunMount> {
    let Value::Table(t) = v else {
        return Err(err(
            step,
            format!("mount {n} must be a table, not {}", v.type_str()),
        ));
    };
    let kind = match t.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(err(
                step,
                format!("mount {n} needs `type` (bind, cache, secret, tmpfs or ssh)"),
            ))
        }
    };
    let allowed: &[&str] = match kind {
        "bind" => &["type", "from", "source", "target", "readonly"],
        "cache" => &["type", "id", "target", "sharing"],
        "secret" => &["type", "id", "target", "required"],
        "tmpfs" => &["type", "target"],
        "ssh" => &["type", "id", "target"],
        other => {
            return Err(err(
                step,
                format!(
                "mount {n}: unknown type {other:?} (expected bind, cache, secret, tmpfs or ssh)"
            ),
            ))
        }
    };
    for k in t.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(err(
                step,
                format!(
                    "mount {n} ({kind}): unknown key `{k}` (expected {})",
                    allowed[1..].join(", ")
                ),
            ));
        }
    }
    let what = format!("mount {n} ({kind})");
    let get_text = |k: &str| {
        t.get(k)
            .map(|v| text(step, &format!("{what}: {k}"), v))
            .transpose()
    };
    let get_bool = |k: &str, default: bool| match t.get(k) {
        None => Ok(default),
        Some(Value::Boolean(b)) => Ok(*b),
        Some(o) => Err(err(
            step,
            format!("{what}: `{k}` must be true or false, not {}", o.type_str()),
        )),
    };
    let target = match t.get("target") {
        Some(v) => Some(abs_path(step, &format!("{what}: target"), v)?),
        None => None,
    };
    let need_target = || {
        target
            .clone()
            .ok_or_else(|| err(step, format!("{what} needs `target`")))
    };
    Ok(match kind {
        "bind" => RunMount::Bind {
            from: get_text("from")?
                .ok_or_else(|| err(step, format!("{what} needs `from` (a step)")))?,
            source: get_text("source")?.unwrap_or_else(|| "/".into()),
            target: need_target()?,
            readonly: get_bool("readonly", true)?,
        },
        "cache" => {
            let target = need_target()?;
            let sharing = get_text("sharing")?.unwrap_or_else(|| "shared".into());
            if !matches!(sharing.as_str(), "shared" | "private" | "locked") {
                return Err(err(
                    step,
                    format!("{what}: sharing {sharing:?} is not shared, private or locked"),
                ));
            }
            RunMount::Cache {
                id: get_text("id")?.unwrap_or_else(|| target.clone()),
                target,
                sharing,
            }
        }
        "secret" => {
            let id = get_text("id")?.ok_or_else(|| err(step, format!("{what} needs `id`")))?;
            RunMount::Secret {
                target: target
                    .clone()
                    .unwrap_or_else(|| format!("/run/secrets/{id}")),
                id,
                required: get_bool("required", true)?,
            }
        }
        "tmpfs" => RunMount::Tmpfs {
            target: need_target()?,
        },
        _ => RunMount::Ssh {
            id: get_text("id")?.unwrap_or_else(|| "default".into()),
            target: target
                .clone()
                .unwrap_or_else(|| "/run/buildkit/ssh_agent.0".into()),
        },
    })
}
