//! The solver: runs a build definition against the store, the SourceManager and the
//! worker, BuildKit-style (buildkit-sources.md §4).
//!
//! - Every step becomes a vertex whose digest comes from its canonical op definition
//!   and its inputs' digests ([`crate::definition::op`]). Identical vertices in one build,
//!   and in concurrent builds of one process, are one node: its cache keys, snapshot,
//!   content hashes and execution happen once (BuildKit's `sharedOp`).
//! - Cache keys follow [`keys`]: sources use their plugin's multi-index keys (a later
//!   index only on a miss, the result saved under every index's key); ops use a
//!   definition key and, when they read inputs by path, a content key over the
//!   checksums of the selected paths ([`crate::contenthash`]).
//! - Independent steps run concurrently (one tokio task per vertex).
//! - `--no-cache` looks nothing up and runs every step, saving the results.
//!
//! The entry point is [`run_build`].

pub mod base;
mod exec;
mod graph;
pub mod keys;
mod run_step;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::app::AppContext;
use crate::contenthash::ContentHasher;
use crate::definition::{Definition, DefinitionError, Step};
use crate::export::{ExportOptions, OutputSpec};
use crate::job::Job;
use crate::progress::{Outcome, Progress, ProgressMode, StepEvent};

/// What `kiln build` asks for (DESIGN §4).
#[derive(Debug, Default)]
pub struct BuildOptions {
    /// The definition file.
    pub file: PathBuf,
    /// `--local NAME=DIR`; a `local://NAME` without one uses the definition's folder.
    pub locals: HashMap<String, PathBuf>,
    /// `--oci-layout NAME=DIR` (absolute, checked directories).
    pub oci_layouts: HashMap<String, PathBuf>,
    /// `--ssh ID=SOCKET` (ssh-agent sockets).
    pub ssh: HashMap<String, PathBuf>,
    /// `--secret` values by id. Never logged.
    pub secrets: HashMap<String, Vec<u8>>,
    /// `--output` specs, parsed.
    pub outputs: Vec<OutputSpec>,
    /// `--no-cache`.
    pub no_cache: bool,
    /// `--metadata-file`.
    pub metadata_file: Option<PathBuf>,
    /// `--platform`: the default platform of sources that take one.
    pub platform: Option<String>,
    /// `--progress`.
    pub progress: ProgressMode,
    /// `[worker] runtime` of `kiln.toml`: the OCI runtime of run steps.
    pub runtime: Option<String>,
}

/// One source of the build, as `--metadata-file` records it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceRecord {
    /// The step name.
    pub step: String,
    /// The canonical identifier (credentials redacted by the plugin).
    pub identifier: String,
    /// The pin; absent for session sources such as `local://`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// For image sources: the image reference (without credentials), as the plugin
    /// reported it in `image.ref`; for git sources: the full ref (`git.ref`).
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// For git sources: the remote, credentials redacted (`git.remote`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// For git sources: the commit checked out (`git.commit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// What a successful build did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BuildSummary {
    /// The exported step.
    pub output_step: String,
    /// The snapshot id of its result.
    pub snapshot: String,
    /// The result's directory in the store.
    pub path: PathBuf,
    /// Steps the output needed.
    pub steps: usize,
    /// Steps whose result came from the cache.
    pub cached: usize,
    /// Vertices this build executed.
    pub executed: usize,
    /// Every source's identifier and pin.
    pub sources: Vec<SourceRecord>,
    /// The digest of each `--output` (`None` for `type=local`), in order.
    pub exported: Vec<Option<String>>,
}

/// Why a build did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The definition is wrong (exit code 2).
    #[error(transparent)]
    Definition(#[from] DefinitionError),
    /// A step's source identifier or attributes are wrong, or a flag is (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// A step failed (exit code 1).
    #[error("step `{step}` failed: {message}")]
    Step {
        /// The step.
        step: String,
        /// The cause.
        message: String,
    },
    /// Something outside the steps failed: the store, an export (exit code 1).
    #[error("{0}")]
    Failed(String),
}

impl BuildError {
    /// The process exit code (DESIGN §4): 2 for usage and definition errors, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            BuildError::Definition(_) | BuildError::Usage(_) => 2,
            BuildError::Step { .. } | BuildError::Failed(_) => 1,
        }
    }
}

/// Runs the build `opts` describes: parse, solve, export, write metadata.
pub async fn run_build(ctx: &AppContext, opts: BuildOptions) -> Result<BuildSummary, BuildError> {
    let def = Definition::load(&opts.file)?;
    let store = ctx.store().map_err(BuildError::Failed)?;
    let mut opts = opts;
    if opts.runtime.is_none() {
        opts.runtime = ctx.config.worker.runtime.clone();
    }
    build_with(def, store, ctx.sources.clone(), &ctx.root, opts).await
}

/// [`run_build`] with its parts given: a loaded definition, the store, the sources.
pub(crate) async fn build_with(
    def: Definition,
    store: Arc<crate::store::Store>,
    sources: Arc<crate::source_manager::SourceManager>,
    root: &std::path::Path,
    mut opts: BuildOptions,
) -> Result<BuildSummary, BuildError> {
    // Checked before anything runs: a bad flag is a usage error, whatever the outputs.
    if let Some(p) = &opts.platform {
        opts.platform =
            Some(normalize_platform(p).map_err(|e| BuildError::Usage(format!("--platform: {e}")))?);
    }
    let locals = resolve_locals(&def, &opts.locals)?;
    let progress = Arc::new(Progress::stderr(opts.progress));
    let job = Job::new(opts.secrets.clone(), locals)
        .with_oci_layouts(opts.oci_layouts.clone())
        .with_ssh(opts.ssh.clone())
        .with_progress(progress.clone());
    {
        // Containers, mounts and bundles a killed kiln left behind go first (a no-op
        // on a root that never ran a run step).
        let root = root.to_path_buf();
        let runtime = opts.runtime.clone();
        let _ =
            tokio::task::spawn_blocking(move || run_step::reap(&root, runtime.as_deref())).await;
    }
    // Every named lookup separates shared vertices: an `oci-layout://NAME:TAG` resolves
    // differently in another layout directory.
    let scope = sharing_scope(root, &job.locals, opts.no_cache);
    let job = Arc::new(job);
    let graph = graph::build_graph(&def, &sources, opts.platform.as_deref(), &scope)
        .await
        .map_err(|e| {
            let msg = format!("step `{}`: {}", e.step, e.error.message);
            if e.error.is_usage() {
                BuildError::Usage(msg)
            } else {
                BuildError::Failed(msg)
            }
        })?;

    progress.plan(graph.steps.len() + opts.outputs.len());
    for (name, _) in &graph.steps {
        if let Some(step) = def.steps.get(name) {
            progress.describe(name, &crate::progress::describe_step(step));
        }
    }

    let ectx = Arc::new(exec::Ctx {
        store: store.clone(),
        sources: sources.clone(),
        job: job.clone(),
        progress: progress.clone(),
        hasher: hasher_for(root),
        no_cache: opts.no_cache,
        runtime: opts.runtime.clone(),
        executed: AtomicUsize::new(0),
    });

    // One task per step; shared nodes make each vertex run once. The first failure
    // cancels the rest and is the one reported.
    let first_failure: Arc<std::sync::Mutex<Option<Arc<graph::Failure>>>> = Default::default();
    let tasks: Vec<_> = graph
        .steps
        .iter()
        .map(|(name, node)| {
            let (name, node, ectx, progress) =
                (name.clone(), node.clone(), ectx.clone(), progress.clone());
            let first_failure = first_failure.clone();
            tokio::spawn(async move {
                let out = exec::solve(node, ectx.clone()).await;
                match &out {
                    Ok(r) if r.cached => progress.step(&name, StepEvent::Cached),
                    Ok(_) => progress.step(&name, StepEvent::Done),
                    Err(f) => {
                        first_failure
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert_with(|| f.clone());
                        ectx.job.cancel.store(true, Ordering::Relaxed);
                    }
                }
                (name, out)
            })
        })
        .collect();
    let mut results = BTreeMap::new();
    let mut failure: Option<BuildError> = None;
    for t in tasks {
        match t.await {
            Ok((name, Ok(r))) => {
                results.insert(name, r);
            }
            Ok((_, Err(_))) => {}
            Err(e) => {
                job.cancel.store(true, Ordering::Relaxed);
                failure.get_or_insert(BuildError::Failed(format!(
                    "internal error: a step task failed: {e}"
                )));
            }
        }
    }
    if let Some(f) = first_failure
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take()
    {
        failure = Some(BuildError::Step {
            step: f.step.clone(),
            message: f.message.clone(),
        });
    }
    if let Some(f) = failure {
        progress.summary(Outcome::Failed);
        progress.finish();
        return Err(f);
    }

    let out = results.get(&def.output).cloned().ok_or_else(|| {
        BuildError::Failed(format!(
            "internal error: no result for step `{}`",
            def.output
        ))
    })?;

    let sources: Vec<SourceRecord> = results
        .iter()
        .filter_map(|(step, r)| {
            r.source.as_ref().map(|(identifier, pin)| SourceRecord {
                step: step.clone(),
                identifier: identifier.clone(),
                pin: pin.clone(),
                reference: r
                    .opts
                    .get(base::OPT_REF)
                    .or_else(|| r.opts.get("git.ref"))
                    .cloned(),
                remote: r.opts.get("git.remote").cloned(),
                commit: r.opts.get("git.commit").cloned(),
            })
        })
        .collect();

    let exported = match export_all(&opts, &def, &results, &store, &job, &progress).await {
        Ok(e) => e,
        Err(e) => {
            progress.summary(Outcome::Failed);
            progress.finish();
            return Err(e);
        }
    };
    progress.summary(Outcome::Finished);
    if opts.outputs.is_empty() {
        // buildx says the same when a build has nowhere to go.
        progress.warn(&format!(
            "no --output given: the result of step `{}` stays only in the build cache \
             (add --output type=local,dest=DIR to get it)",
            def.output
        ));
    }
    progress.finish();

    let summary = BuildSummary {
        output_step: def.output.clone(),
        snapshot: out.snapshot.to_string(),
        path: out.path.clone(),
        steps: results.len(),
        cached: results.values().filter(|r| r.cached).count(),
        executed: ectx.executed.load(Ordering::Relaxed),
        sources,
        exported,
    };
    if let Some(path) = &opts.metadata_file {
        write_metadata(path, &summary)?;
    }
    Ok(summary)
}

/// Checks `os/arch[/variant]` and writes it the way image indexes do, with the same
/// rules as the image plugin and the OCI exporter ([`kiln_plugin_api::platform`]).
fn normalize_platform(text: &str) -> Result<String, String> {
    kiln_plugin_api::platform::Platform::parse(text)
        .map(|p| p.to_string())
        .map_err(|e| e.to_string())
}

/// `local://NAME` sources without a `--local` mapping read the definition's folder
/// (DESIGN §5). An explicit mapping must name an existing directory.
fn resolve_locals(
    def: &Definition,
    given: &HashMap<String, PathBuf>,
) -> Result<HashMap<String, PathBuf>, BuildError> {
    let mut locals = HashMap::new();
    for (name, dir) in given {
        let abs = std::fs::canonicalize(dir)
            .map_err(|e| BuildError::Usage(format!("--local {name}={}: {e}", dir.display())))?;
        if !abs.is_dir() {
            return Err(BuildError::Usage(format!(
                "--local {name}={}: not a directory",
                dir.display()
            )));
        }
        locals.insert(name.clone(), abs);
    }
    for step in def.steps.values() {
        if let Step::Source(s) = step {
            if let Some(rest) = s.identifier.strip_prefix("local://") {
                let name = rest.split(['?', '#']).next().unwrap_or(rest);
                locals
                    .entry(name.to_string())
                    .or_insert_with(|| def.dir.clone());
            }
        }
    }
    Ok(locals)
}

/// What separates vertices that must not be shared between concurrent builds of this
/// process: the root, the local directories and `--no-cache`.
fn sharing_scope(
    root: &std::path::Path,
    locals: &HashMap<String, PathBuf>,
    no_cache: bool,
) -> String {
    let mut h = Sha256::new();
    h.update(root.as_os_str().as_encoded_bytes());
    let sorted: BTreeMap<&String, &PathBuf> = locals.iter().collect();
    for (k, v) in sorted {
        h.update(b"\0");
        h.update(k.as_bytes());
        h.update(b"=");
        h.update(v.as_os_str().as_encoded_bytes());
    }
    h.update([u8::from(no_cache)]);
    hex::encode(h.finalize())
}

/// One content-hash memo per root, for the life of the process.
fn hasher_for(root: &std::path::Path) -> Arc<ContentHasher> {
    use std::sync::{Mutex, OnceLock};
    static H: OnceLock<Mutex<HashMap<PathBuf, Arc<ContentHasher>>>> = OnceLock::new();
    H.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(root.to_path_buf())
        .or_default()
        .clone()
}

async fn export_all(
    opts: &BuildOptions,
    def: &Definition,
    results: &BTreeMap<String, Arc<graph::NodeResult>>,
    store: &Arc<crate::store::Store>,
    job: &Arc<Job>,
    progress: &Arc<Progress>,
) -> Result<Vec<Option<String>>, BuildError> {
    if opts.outputs.is_empty() {
        return Ok(vec![]);
    }
    let out = results[&def.output].clone();
    let specs = opts.outputs.clone();
    let platform = opts.platform.clone();
    let cancel = job.cancel.clone();
    let (store, def, results) = (store.clone(), def.clone(), results.clone());
    let progress = progress.clone();
    tokio::task::spawn_blocking(move || {
        // The image the output derives from: its config and layers carry over.
        let base = base::base_image(&store, &def, &results, &def.output)
            .map_err(|e| BuildError::Failed(format!("export: {e}")))?;
        let eo = ExportOptions {
            platform: platform.as_deref(),
            base: base.as_ref(),
            cancel: Some(&cancel),
        };
        specs
            .iter()
            .map(|s| {
                // Each output is a step of the display: `exporting to …`.
                let what = crate::progress::export_label(s);
                progress.export(&what, StepEvent::Start);
                let r = crate::export::export(&out.path, s, &eo);
                progress.export(
                    &what,
                    match &r {
                        Ok(_) => StepEvent::Done,
                        Err(e) => StepEvent::Error(e.to_string()),
                    },
                );
                r.map(|e| e.digest)
                    .map_err(|e| BuildError::Failed(e.to_string()))
            })
            .collect()
    })
    .await
    .map_err(|e| BuildError::Failed(e.to_string()))?
}

fn write_metadata(path: &std::path::Path, s: &BuildSummary) -> Result<(), BuildError> {
    let digest = s.exported.iter().flatten().next().cloned();
    let v = serde_json::json!({
        "sources": s.sources,
        "output": { "step": s.output_step, "snapshot": s.snapshot },
        "exported": s.exported,
        "containerimage.digest": digest,
    });
    let text = serde_json::to_string_pretty(&v).expect("JSON encodes");
    crate::export::write_output_file(path, (text + "\n").as_bytes())
        .map_err(|e| BuildError::Failed(format!("cannot write --metadata-file: {e}")))
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod platform_tests {
    use super::*;
    use crate::source_manager::SourceManager;
    use crate::store::Store;

    #[test]
    fn platforms_are_checked_and_normalised() {
        for (given, want) in [
            ("linux/amd64", "linux/amd64"),
            ("Linux/X86_64", "linux/amd64"),
            (" linux/amd64/v1 ", "linux/amd64"),
            ("linux/amd64/v3", "linux/amd64/v3"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("macos/arm64", "darwin/arm64"),
            ("windows/386", "windows/386"),
        ] {
            assert_eq!(normalize_platform(given).as_deref(), Ok(want), "{given}");
        }
        for (bad, says) in [
            ("bogus", "expected OS/ARCH[/VARIANT]"),
            ("linux/", "expected OS/ARCH[/VARIANT]"),
            ("linux/amd64/v2/x", "expected OS/ARCH[/VARIANT]"),
            ("linux/am d64", "expected OS/ARCH[/VARIANT]"),
            ("bogus/amd64", "unknown operating system \"bogus\""),
            ("linux/bogus", "unknown architecture \"bogus\""),
        ] {
            let err = normalize_platform(bad).unwrap_err();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }

    const DEF: &str = r#"
version = 1
[steps.a]
base = "scratch"
actions = [{ mkfile = { path = "/f", data = "f" } }]
[output]
step = "a"
"#;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_platform_is_a_usage_error_before_any_step_runs() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let store = Arc::new(Store::open(&root).unwrap());
        let sources = Arc::new(SourceManager::new(&[]));
        let build = |platform: &str, outputs: Vec<OutputSpec>| {
            let def = Definition::parse(DEF, root.clone()).unwrap();
            let opts = BuildOptions {
                platform: Some(platform.to_string()),
                outputs,
                progress: ProgressMode::Quiet,
                ..Default::default()
            };
            build_with(def, store.clone(), sources.clone(), &root, opts)
        };
        let oci = || {
            vec![
                format!("type=oci,dest={}", dir.path().join("img.tar").display())
                    .parse::<OutputSpec>()
                    .unwrap(),
            ]
        };
        for outputs in [vec![], oci()] {
            let err = build("bogus", outputs).await.unwrap_err();
            assert_eq!(err.exit_code(), 2, "{err}");
            assert!(err.to_string().contains("--platform"), "{err}");
            assert!(err.to_string().contains("\"bogus\""), "{err}");
        }
        assert!(
            store.list_snapshots().unwrap().is_empty(),
            "a step ran before the flag was checked"
        );
        assert!(!dir.path().join("img.tar").exists());
        // Another spelling of a real platform builds and exports.
        let s = build("Linux/x86_64", oci()).await.unwrap();
        assert_eq!(s.exported.len(), 1);
        assert!(dir.path().join("img.tar").is_file());
    }
}
