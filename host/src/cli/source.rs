//! `kiln source resolve` and `kiln source fetch`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::args::{parse_attrs, parse_locals, parse_oci_layouts, parse_ssh, read_secrets};
use super::{runtime, CliError, Globals};
use crate::app::AppContext;
use crate::job::Job;
use crate::plugins::LoadOptions;
use crate::progress::{Progress, StepEvent};
use crate::source_cache::snapshot_source;
use crate::source_manager::{CacheMap, SourceOp};

/// The flags `resolve` and `fetch` share.
#[derive(clap::Args, Debug)]
pub struct SourceArgs {
    /// The source identifier, e.g. `local://context` or `https://host/file`.
    pub identifier: String,
    /// An attribute, `KEY=VALUE` (repeatable).
    #[arg(long = "attr", value_name = "K=V")]
    pub attrs: Vec<String>,
    /// The platform, `os/arch[/variant]` (image sources).
    #[arg(long)]
    pub platform: Option<String>,
    /// Maps a local name to a directory, `NAME=DIR` (repeatable).
    #[arg(long = "local", value_name = "NAME=DIR")]
    pub locals: Vec<String>,
    /// Maps an OCI image layout name to its directory, `NAME=DIR` (repeatable), for
    /// `oci-layout://NAME:TAG` and `oci-layout://NAME@sha256:…`.
    #[arg(long = "oci-layout", value_name = "NAME=DIR")]
    pub oci_layouts: Vec<String>,
    /// A secret, `id=ID,src=FILE` or `id=ID,env=VAR` (repeatable).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Forwards an ssh-agent socket as ID, `ID[=SOCKET]` (default: $SSH_AUTH_SOCK; repeatable).
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Source commands.
#[derive(clap::Subcommand, Debug)]
pub enum SourceCommand {
    /// Print a source's canonical identifier, cache keys and pin.
    Resolve(SourceArgs),
    /// Write a source's content into a directory.
    Fetch {
        #[command(flatten)]
        args: SourceArgs,
        /// The destination directory (created if missing; must be empty).
        #[arg(long)]
        dest: PathBuf,
    },
}

/// Runs a source command.
pub fn run(g: &Globals, cmd: SourceCommand) -> Result<(), CliError> {
    let (args, dest) = match cmd {
        SourceCommand::Resolve(a) => (a, None),
        SourceCommand::Fetch { args, dest } => (args, Some(dest)),
    };
    let attrs = parse_attrs(&args.attrs)?;
    let locals = parse_locals(&args.locals)?;
    let oci_layouts = parse_oci_layouts(&args.oci_layouts)?;
    let ssh = parse_ssh(&args.ssh, std::env::var_os("SSH_AUTH_SOCK").as_deref())?;
    let secrets = read_secrets(&args.secrets)?;
    if let Some(d) = &dest {
        check_dest(d)?;
    }
    let app = g.app(LoadOptions::default())?;
    let progress = Arc::new(Progress::stderr(g.progress));
    let job = Arc::new(
        Job::new(secrets, locals)
            .with_oci_layouts(oci_layouts)
            .with_ssh(ssh)
            .with_progress(progress.clone()),
    );
    let rt = runtime()?;
    let result = rt.block_on(async {
        let id = app
            .sources
            .identifier(&args.identifier, &attrs, args.platform.as_deref())
            .await?;
        let op = app.sources.resolve(&id).await?;
        let step = id.canonical.clone();
        let maps = op.all_cache_maps(&job, &step).await?;
        let mut out = resolve_json(&op, &maps);
        match dest {
            None => {
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
                } else {
                    print_human(&op, &maps);
                }
            }
            Some(dest) => {
                progress.step(&step, StepEvent::Start);
                let cached = fetch(&app, &op, &maps, &job, &step, &dest)
                    .await
                    .inspect_err(|e| progress.step(&step, StepEvent::Error(e.message.clone())))?;
                progress.step(
                    &step,
                    if cached {
                        StepEvent::Cached
                    } else {
                        StepEvent::Done
                    },
                );
                if args.json {
                    out["cached"] = serde_json::Value::Bool(cached);
                    println!("{}", serde_json::to_string_pretty(&out).expect("JSON"));
                } else {
                    println!(
                        "{} -> {}{}",
                        op.identifier().canonical,
                        dest.display(),
                        if cached { " (cached)" } else { "" }
                    );
                }
            }
        }
        Ok(())
    });
    progress.finish();
    result
}

fn resolve_json(op: &SourceOp, maps: &[CacheMap]) -> serde_json::Value {
    serde_json::json!({
        "identifier": op.identifier().canonical,
        "scheme": op.identifier().scheme,
        "pin": op.pin().unwrap_or_default(),
        "keys": maps.iter().map(|m| serde_json::json!({
            "index": m.index,
            "key": m.key,
            "digest": m.digest,
            "done": m.done,
        })).collect::<Vec<_>>(),
    })
}

fn print_human(op: &SourceOp, maps: &[CacheMap]) {
    use crate::text::escape;
    println!("identifier: {}", escape(&op.identifier().canonical));
    println!("pin:        {}", escape(&op.pin().unwrap_or_default()));
    for m in maps {
        println!("key[{}]:     {}", m.index, escape(&m.key));
        println!("digest[{}]:  {}", m.index, m.digest);
    }
}

/// DEST must be missing or an empty directory.
fn check_dest(dest: &Path) -> Result<(), CliError> {
    match std::fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(CliError::usage(format!(
                    "--dest {}: the directory is not empty",
                    dest.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CliError::usage(format!("--dest {}: {e}", dest.display()))),
    }
}

/// Writes the source's content into `dest`; returns whether it came from the cache.
async fn fetch(
    app: &AppContext,
    op: &SourceOp,
    maps: &[CacheMap],
    job: &Arc<Job>,
    step: &str,
    dest: &Path,
) -> Result<bool, CliError> {
    let cacheable: Vec<&str> = maps
        .iter()
        .filter(|m| m.digest.starts_with("sha256:"))
        .map(|m| m.digest.as_str())
        .collect();
    if cacheable.is_empty() {
        // Session-scoped (random:) keys are never reused: write straight into DEST.
        std::fs::create_dir_all(dest)
            .map_err(|e| CliError::failed(format!("cannot create {}: {e}", dest.display())))?;
        if let Err(e) = op.snapshot(dest, job, step).await {
            remove_partial(dest);
            return Err(e.into());
        }
        return Ok(false);
    }
    let store = app.store().map_err(CliError::failed)?;
    let snap = snapshot_source(&store, op, maps, job, step).await?;
    let src = store
        .snapshot_path(&snap.id)
        .map_err(|e| CliError::failed(format!("store: {e}")))?
        .ok_or_else(|| CliError::failed(format!("snapshot {} vanished", snap.id.as_str())))?;
    let dest = dest.to_path_buf();
    let cancel = job.cancel.clone();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        crate::worker::materialize(Some(&src), &dest, Some(&cancel)).map_err(|e| {
            remove_partial(&dest);
            format!("cannot write {}: {e}", dest.display())
        })
    })
    .await
    .map_err(|e| CliError::failed(e.to_string()))?
    .map_err(CliError::failed)?;
    Ok(snap.cached)
}

/// Clears what a failed snapshot left in DEST (which was empty before).
fn remove_partial(dest: &Path) {
    if let Ok(entries) = std::fs::read_dir(dest) {
        for e in entries.flatten() {
            let p = e.path();
            let _ = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}
