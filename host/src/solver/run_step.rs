//! Executing a `run` step: the image defaults, the mounts, the container
//! ([`crate::exec`]), and the result tree (base + the run's changes + actions).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::definition::{NetworkMode, RunMount, RunStep};
use crate::exec::{
    self, CacheMount, Changes, ExecContext, ExecSpec, Mount, Network, Runtime, Sharing,
};
use crate::job::Job;
use crate::worker::Root;

/// `PATH` when neither the image nor the step sets one (BuildKit's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a run step needs besides its definition.
pub(crate) struct RunInputs<'a> {
    /// `[worker] runtime`, if configured.
    pub runtime: Option<&'a str>,
    /// The base tree (`None`: scratch).
    pub base: Option<&'a Path>,
    /// The input step trees by step name (bind mounts, copies).
    pub trees: &'a dyn Fn(&str) -> Option<PathBuf>,
    /// The base image's config (OCI image config JSON), when the base chain starts at
    /// an image.
    pub image_config: Option<&'a Value>,
    /// The kiln root.
    pub root: &'a Path,
    /// The build's job (secrets, ssh sockets, cancellation).
    pub job: &'a Job,
}

/// The runtime (`configured`, else the first known one on PATH), looked up once per
/// process and setting.
fn runtime(configured: Option<&str>) -> Result<Runtime, String> {
    type Found = Mutex<HashMap<Option<String>, Result<Runtime, String>>>;
    static FOUND: OnceLock<Found> = OnceLock::new();
    let mut found = FOUND
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    found
        .entry(configured.map(str::to_string))
        .or_insert_with(|| Runtime::find(configured).map_err(|e| e.to_string()))
        .clone()
}

/// Deletes what a killed kiln left of its runs under `root` (containers, mounts,
/// bundles). Cheap when there is nothing.
pub fn reap(root: &Path, configured: Option<&str>) {
    let dir = root.join("exec");
    if dir.exists() {
        exec::reap_stale(&dir, runtime(configured).ok().as_ref());
    }
}

/// The runtime config of an image config JSON (`config` of an OCI image config).
fn image_runtime_config(cfg: Option<&Value>) -> Option<&serde_json::Map<String, Value>> {
    cfg?.get("config")?.as_object()
}

/// The command's environment: the image's `Env`, then the step's `env` (which wins),
/// with a default `PATH` when neither has one.
pub(crate) fn environment(step: &RunStep, image: Option<&Value>) -> Vec<String> {
    let mut env: Vec<(String, String)> = Vec::new();
    if let Some(list) = image_runtime_config(image)
        .and_then(|c| c.get("Env"))
        .and_then(Value::as_array)
    {
        for e in list.iter().filter_map(Value::as_str) {
            let (k, v) = e.split_once('=').unwrap_or((e, ""));
            set(&mut env, k, v);
        }
    }
    for (k, v) in &step.env {
        set(&mut env, k, v);
    }
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

fn set(env: &mut Vec<(String, String)>, k: &str, v: &str) {
    match env.iter_mut().find(|(key, _)| key == k) {
        Some(e) => e.1 = v.to_string(),
        None => env.push((k.to_string(), v.to_string())),
    }
}

fn image_string(image: Option<&Value>, key: &str) -> Option<String> {
    image_runtime_config(image)?
        .get(key)?
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Runs `step` and writes its result tree into `target` (an empty staging folder).
pub(crate) fn execute(
    step: &RunStep,
    inputs: &RunInputs<'_>,
    target: &Path,
    cancel: &AtomicBool,
    out: &dyn exec::OutputSink,
) -> Result<(), String> {
    let ctx = ExecContext {
        runtime: runtime(inputs.runtime)?,
        dir: inputs.root.join("exec"),
    };
    let workdir = step
        .workdir
        .clone()
        .or_else(|| image_string(inputs.image_config, "WorkingDir"))
        .unwrap_or_else(|| "/".into());
    let user_spec = step
        .user
        .clone()
        .or_else(|| image_string(inputs.image_config, "User"))
        .unwrap_or_default();
    let user = exec::resolve_user(&user_spec, inputs.base)?;

    // Cache mounts are held (and locked as their sharing says) for the whole run,
    // taken in the order of their ids so two steps never wait on each other;
    // read-write binds get a private copy inside the run's bundle, so no input
    // snapshot ever changes.
    let bundle = exec::Bundle::create(&ctx.dir).map_err(|e| e.to_string())?;
    let mut order: Vec<(&str, &str, &str)> = step
        .mounts
        .iter()
        .filter_map(|m| match m {
            RunMount::Cache {
                id,
                target,
                sharing,
            } => Some((id.as_str(), target.as_str(), sharing.as_str())),
            _ => None,
        })
        .collect();
    order.sort();
    let mut caches: HashMap<&str, CacheMount> = HashMap::new();
    for (id, target, sharing) in order {
        let sharing = Sharing::parse(sharing).unwrap_or(Sharing::Shared);
        let c = CacheMount::acquire(&inputs.root.join("cache-mounts"), id, sharing, cancel)
            .map_err(|e| e.to_string())?;
        caches.insert(target, c);
    }
    let mut mounts = Vec::new();
    for (n, m) in step.mounts.iter().enumerate() {
        mounts.push(match m {
            RunMount::Bind {
                from,
                source,
                target,
                readonly,
            } => {
                let tree = (inputs.trees)(from)
                    .ok_or_else(|| format!("bind mount {target}: step `{from}` has no result"))?;
                let host = Root::new(&tree)
                    .resolve(source, true)
                    .map_err(|e| format!("bind mount {target}: {e}"))?;
                if std::fs::symlink_metadata(&host).is_err() {
                    return Err(format!(
                        "bind mount {target}: {source:?} does not exist in step `{from}`"
                    ));
                }
                let source = if *readonly {
                    host
                } else {
                    let dir = bundle
                        .scratch(&format!("rw-{n}"))
                        .map_err(|e| format!("bind mount {target}: {e}"))?;
                    let copy = dir.join("m");
                    if host.is_dir() {
                        crate::worker::copy_tree(&host, &copy, Some(cancel))
                    } else {
                        crate::worker::Copier::new(Default::default()).copy(&host, &copy)
                    }
                    .map_err(|e| format!("bind mount {target}: {e}"))?;
                    copy
                };
                Mount::Bind {
                    source,
                    target: target.clone(),
                    readonly: *readonly,
                }
            }
            RunMount::Cache { target, .. } => Mount::Cache {
                dir: caches[target.as_str()].dir.clone(),
                target: target.clone(),
            },
            RunMount::Secret {
                id,
                target,
                required,
            } => match inputs.job.secrets.get(id) {
                Some(data) => Mount::Secret {
                    data: data.clone(),
                    target: target.clone(),
                },
                None if *required => {
                    return Err(format!(
                    "secret mount {target}: no secret `{id}` was given (--secret id={id},src=FILE)"
                ))
                }
                None => continue,
            },
            RunMount::Tmpfs { target } => Mount::Tmpfs {
                target: target.clone(),
            },
            RunMount::Ssh { id, target } => {
                let key = format!("{}{id}", kiln_plugin_api::SSH_PREFIX);
                let socket = inputs.job.locals.get(&key).cloned().ok_or_else(|| {
                    format!(
                        "ssh mount {target}: no ssh agent `{id}` was given (--ssh {id}[=SOCKET])"
                    )
                })?;
                Mount::Ssh {
                    socket,
                    target: target.clone(),
                }
            }
        });
    }
    let spec = ExecSpec {
        args: step.args.clone(),
        env: environment(step, inputs.image_config),
        cwd: workdir,
        user,
        network: match step.network {
            NetworkMode::Host => Network::Host,
            NetworkMode::None => Network::None,
        },
        mounts,
    };
    let changes =
        exec::run_in(&bundle, &ctx, inputs.base, &spec, cancel, out).map_err(|e| match e {
            exec::ExecError::Cancelled => "cancelled".to_string(),
            e => format!("run {e}"),
        })?;
    drop(caches);
    match changes {
        Changes::Upper(upper) => {
            crate::worker::materialize(inputs.base, target, Some(cancel))
                .map_err(|e| e.to_string())?;
            exec::apply_upper(&upper, target, Some(cancel)).map_err(|e| e.to_string())?;
        }
        Changes::Full(tree) => {
            crate::worker::copy_tree(&tree, target, Some(cancel)).map_err(|e| e.to_string())?;
        }
    }
    drop(bundle);
    Ok(())
}
