//! Solving one vertex: the cache protocol and, on a miss, the execution.
//!
//! Every vertex runs at most once per process at a time ([`solve`] memoises its outcome
//! in the node, and concurrent callers wait for it). Across processes, a per-key file
//! lock makes the first one build and the others find its result.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::contenthash::{ContentHasher, Selector, TreeHash};
use crate::definition::op::OpDef;
use crate::definition::{Action, RunStep};
use crate::job::Job;
use crate::progress::{Progress, StepEvent};
use crate::source_manager::{SourceManager, SourceOp};
use crate::store::{root_key, KeyLock, SnapshotId, SnapshotMeta, Staging, Store};

use super::graph::{Failure, Node, NodeKind, NodeResult, Outcome};
use super::keys::{content_key, is_random, op_digest, op_key, selector_digest, Dep};

/// The kv namespace mapping a lookup key to the key dependents build on.
const KEY_NS: &str = "solver.effective-key";
/// Snapshot metadata key prefix for memoised selection checksums.
const HASH_META: &str = "kiln.contenthash.v2";

/// What solving needs; one per build (a shared vertex uses its first caller's).
pub(crate) struct Ctx {
    pub store: Arc<Store>,
    pub sources: Arc<SourceManager>,
    pub job: Arc<Job>,
    pub progress: Arc<Progress>,
    pub hasher: Arc<ContentHasher>,
    pub no_cache: bool,
    /// `[worker] runtime`: the OCI runtime of run steps (default: runc, else crun).
    pub runtime: Option<String>,
    /// Vertices executed (not loaded from the cache) by this build.
    pub executed: AtomicUsize,
}

type Res<T> = Result<T, String>;

/// Solves `node` (and, concurrently, its inputs) once.
pub(crate) fn solve(
    node: Arc<Node>,
    ctx: Arc<Ctx>,
) -> Pin<Box<dyn Future<Output = Outcome> + Send>> {
    Box::pin(async move {
        node.outcome
            .get_or_init(|| async {
                let handles: Vec<_> = node
                    .inputs
                    .iter()
                    .map(|i| tokio::spawn(solve(i.clone(), ctx.clone())))
                    .collect();
                let mut inputs = Vec::with_capacity(handles.len());
                for h in handles {
                    match h.await {
                        Ok(Ok(r)) => inputs.push(r),
                        Ok(Err(f)) => return Err(f),
                        Err(e) => {
                            return Err(Arc::new(Failure {
                                step: node.name.clone(),
                                message: format!("an input did not finish: {e}"),
                            }))
                        }
                    }
                }
                if ctx.job.is_cancelled() {
                    return Err(Arc::new(Failure {
                        step: node.name.clone(),
                        message: "cancelled".into(),
                    }));
                }
                match run(&node, &ctx, &inputs).await {
                    Ok(r) => Ok(Arc::new(r)),
                    Err(message) => {
                        ctx.progress
                            .step(&node.name, StepEvent::Error(message.clone()));
                        Err(Arc::new(Failure {
                            step: node.name.clone(),
                            message,
                        }))
                    }
                }
            })
            .await
            .clone()
    })
}

async fn run(node: &Node, ctx: &Arc<Ctx>, inputs: &[Arc<NodeResult>]) -> Res<NodeResult> {
    match &node.kind {
        NodeKind::Source { id } => {
            let op = ctx.sources.resolve(id).await.map_err(|e| e.message)?;
            source(node, ctx, op).await
        }
        NodeKind::File { def, step } => {
            operation(
                node,
                ctx,
                def,
                inputs,
                Exec::File(&step.actions, step.base.is_some()),
            )
            .await
        }
        NodeKind::Merge { def } => operation(node, ctx, def, inputs, Exec::Merge).await,
        NodeKind::Run { def, step } => operation(node, ctx, def, inputs, Exec::Run(step)).await,
    }
}

/// Runs a blocking closure on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Res<T> + Send + 'static) -> Res<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: a blocking task did not finish: {e}"))?
}

struct Hit {
    snapshot: SnapshotId,
    path: PathBuf,
    effective: String,
}

/// Looks `key` up (leasing the result, so no prune removes it while this build runs).
/// With `mapped`, also reads the key dependents use when it differs from `key` (ops
/// with a content key, multi-index sources).
///
/// A result whose snapshot folder is gone (a prune interrupted between removing the
/// folder and its records) is a miss: it is released from every key, so the step
/// builds again and saves a fresh result.
async fn lookup(store: &Arc<Store>, key: &str, mapped: bool) -> Res<Option<Hit>> {
    let (store, key) = (store.clone(), key.to_string());
    // The index is one SQLite connection: more threads waiting on it only add churn.
    let _permit = index_permit().await;
    blocking(move || {
        let r = loop {
            let Some(r) = store.load_result(&key).map_err(|e| e.to_string())? else {
                return Ok(None);
            };
            // A loaded result is recorded and leased; its folder should be there.
            let path = store.snapshot_dir(&r.snapshot);
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                break (r, path);
            }
            store.release(&r.snapshot).map_err(|e| e.to_string())?;
        };
        let (r, path) = r;
        let effective = if mapped {
            store
                .meta_get(KEY_NS, &key)
                .map_err(|e| e.to_string())?
                .unwrap_or(key)
        } else {
            key
        };
        Ok(Some(Hit {
            snapshot: r.snapshot,
            path,
            effective,
        }))
    })
    .await
}

/// A permit to call the cache index from the blocking pool.
async fn index_permit() -> tokio::sync::SemaphorePermit<'static> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
    PERMITS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

/// Saves `snapshot` under every key in `keys` and records `effective` for each.
async fn save(
    store: &Arc<Store>,
    keys: Vec<String>,
    snapshot: &SnapshotId,
    effective: &str,
) -> Res<()> {
    let (store, snapshot, effective) = (store.clone(), snapshot.clone(), effective.to_string());
    blocking(move || {
        for k in &keys {
            // The mapping first: a result is never findable without it, even after a
            // kill between the two writes.
            if *k != effective {
                store
                    .meta_set(KEY_NS, k, &effective)
                    .map_err(|e| e.to_string())?;
            }
            store.save_result(k, &snapshot).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await
}

async fn lock(ctx: &Ctx, key: &str) -> Res<KeyLock> {
    let (store, key, cancel) = (ctx.store.clone(), key.to_string(), ctx.job.cancel.clone());
    blocking(move || {
        store
            .lock_key_cancellable(&key, &cancel)
            .map_err(|e| e.to_string())
    })
    .await
}

async fn stage(store: &Arc<Store>) -> Res<Staging> {
    let store = store.clone();
    blocking(move || store.stage().map_err(|e| e.to_string())).await
}

/// Commits `staging`; the tree's content hash (`tree` when already computed) is
/// recorded with it and kept in the process's hasher for later selection checksums,
/// so no tree is read twice.
async fn commit(
    ctx: &Ctx,
    staging: Staging,
    meta: SnapshotMeta,
    tree: Option<Arc<TreeHash>>,
) -> Res<(SnapshotId, PathBuf)> {
    let (store, hasher) = (ctx.store.clone(), ctx.hasher.clone());
    blocking(move || {
        let (id, tree) = store
            .commit_hashed(staging, meta, tree)
            .map_err(|e| e.to_string())?;
        hasher.insert(id.as_str(), tree);
        let path = store
            .snapshot_path(&id)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("snapshot {id} vanished right after its commit"))?;
        Ok((id, path))
    })
    .await
}

fn cached(
    hit: Hit,
    source: Option<(String, Option<String>)>,
    opts: BTreeMap<String, String>,
) -> NodeResult {
    NodeResult {
        key: hit.effective,
        snapshot: hit.snapshot,
        path: hit.path,
        cached: true,
        source,
        opts,
    }
}

/// A source vertex: the multi-index protocol, then the snapshot.
async fn source(node: &Node, ctx: &Arc<Ctx>, op: SourceOp) -> Res<NodeResult> {
    let step = node.name.as_str();
    let identifier = op.identifier().canonical.clone();
    let mut keys: Vec<String> = Vec::new();
    let mut session = false;
    // The plugin's opts of every index asked (index 0 is always asked, hit or miss).
    let mut opts: BTreeMap<String, String> = BTreeMap::new();
    for index in 0..16u32 {
        let cm = op
            .cache_map(index, &ctx.job, step)
            .await
            .map_err(|e| e.message)?;
        opts.extend(cm.opts.iter().cloned());
        if is_random(&cm.digest) {
            session = true;
        } else {
            let key = root_key(&cm.index_digest, 0);
            // BuildKit's rule: a later index is computed only on a miss of this one.
            if !ctx.no_cache {
                if let Some(hit) = lookup(&ctx.store, &key, true).await? {
                    if !keys.is_empty() {
                        let mut all = keys.clone();
                        all.push(key);
                        save(&ctx.store, all, &hit.snapshot, &hit.effective).await?;
                    }
                    return Ok(cached(hit, Some((identifier, op.pin())), opts));
                }
            }
            keys.push(key);
        }
        if cm.done {
            break;
        }
        if index == 15 {
            return Err("the source plugin never answered done=true".into());
        }
    }

    if session || keys.is_empty() {
        return session_source(node, ctx, &op, identifier, opts).await;
    }

    // The strongest key is the lock and the key dependents build on.
    let strongest = keys.last().cloned().expect("non-empty");
    let _lock = lock(ctx, &strongest).await?;
    if !ctx.no_cache {
        if let Some(hit) = lookup(&ctx.store, &strongest, false).await? {
            save(&ctx.store, keys, &hit.snapshot, &hit.effective).await?;
            return Ok(cached(hit, Some((identifier, op.pin())), opts));
        }
    }
    ctx.progress.step(step, StepEvent::Start);
    let staging = stage(&ctx.store).await?;
    let metadata = op
        .snapshot(staging.path(), &ctx.job, step)
        .await
        .map_err(|e| e.message)?;
    let pin = op.pin();
    let mut meta = SnapshotMeta {
        description: identifier.clone(),
        ..Default::default()
    };
    meta.metadata.extend(metadata);
    if let Some(p) = &pin {
        meta.metadata.insert("kiln.source.pin".into(), p.clone());
    }
    let (id, path) = commit(ctx, staging, meta, None).await?;
    save(&ctx.store, keys, &id, &strongest).await?;
    ctx.executed.fetch_add(1, Ordering::Relaxed);
    Ok(NodeResult {
        key: strongest,
        snapshot: id,
        path,
        cached: false,
        source: Some((identifier, pin)),
        opts,
    })
}

/// A session-scoped source (e.g. `local://`): its key is random, so it is snapshotted
/// every build and keyed by the checksum of its content; an unchanged tree reuses the
/// snapshot already stored and counts as cached.
async fn session_source(
    node: &Node,
    ctx: &Arc<Ctx>,
    op: &SourceOp,
    identifier: String,
    opts: BTreeMap<String, String>,
) -> Res<NodeResult> {
    let step = node.name.as_str();
    let staging = stage(&ctx.store).await?;
    op.snapshot(staging.path(), &ctx.job, step)
        .await
        .map_err(|e| e.message)?;
    let staged = staging.path().to_path_buf();
    let tree = blocking(move || TreeHash::compute(&staged).map_err(|e| e.to_string())).await?;
    let tree = Arc::new(tree);
    let key = content_key(&tree.root_digest());
    let _lock = lock(ctx, &key).await?;
    // Local sources record only their name in metadata, never a pin.
    let source = Some((identifier.clone(), None));
    if !ctx.no_cache {
        if let Some(hit) = lookup(&ctx.store, &key, false).await? {
            ctx.hasher.insert(hit.snapshot.as_str(), tree);
            drop(staging);
            return Ok(cached(hit, source, opts));
        }
    }
    ctx.progress.step(step, StepEvent::Start);
    let meta = SnapshotMeta {
        description: identifier,
        ..Default::default()
    };
    let (id, path) = commit(ctx, staging, meta, Some(tree)).await?;
    save(&ctx.store, vec![key.clone()], &id, &key).await?;
    ctx.executed.fetch_add(1, Ordering::Relaxed);
    Ok(NodeResult {
        key,
        snapshot: id,
        path,
        cached: false,
        source,
        opts,
    })
}

enum Exec<'a> {
    /// Actions, and whether input 0 is the base.
    File(&'a [Action], bool),
    Merge,
    /// A command, then its actions.
    Run(&'a RunStep),
}

/// The checksum of what `selectors` name in an input, memoised in the snapshot's
/// metadata (snapshots are immutable) and in the process's hasher.
async fn selection_checksum(
    ctx: &Arc<Ctx>,
    input: &NodeResult,
    selectors: &[Selector],
) -> Res<String> {
    let (store, hasher) = (ctx.store.clone(), ctx.hasher.clone());
    let (id, path, selectors) = (
        input.snapshot.clone(),
        input.path.clone(),
        selectors.to_vec(),
    );
    blocking(move || {
        let listed: Vec<serde_json::Value> = selectors.iter().map(Selector::to_json).collect();
        let meta_key = format!(
            "{HASH_META}:{}",
            serde_json::to_string(&listed).expect("JSON encodes")
        );
        let meta = store.snapshot_metadata(&id).map_err(|e| e.to_string())?;
        if let Some(v) = meta.get(&meta_key) {
            return Ok(v.clone());
        }
        let tree = hasher.tree(id.as_str(), &path).map_err(|e| e.to_string())?;
        let sum = tree.selection_checksum(&selectors);
        store
            .set_snapshot_metadata(&id, &meta_key, &sum)
            .map_err(|e| e.to_string())?;
        Ok(sum)
    })
    .await
}

/// A file or merge vertex: definition key, then content key, then execution.
async fn operation(
    node: &Node,
    ctx: &Arc<Ctx>,
    def: &OpDef,
    inputs: &[Arc<NodeResult>],
    exec: Exec<'_>,
) -> Res<NodeResult> {
    let step = node.name.as_str();
    let digest = op_digest(&def.canonical);
    let fast_deps: Vec<Dep> = inputs
        .iter()
        .zip(&def.selectors)
        .map(|(r, sel)| Dep {
            key: r.key.clone(),
            selector: selector_digest(sel.as_deref()),
        })
        .collect();
    let fast = op_key(&digest, &fast_deps);
    let reads_by_path = def.selectors.iter().any(Option::is_some);
    if !ctx.no_cache {
        if let Some(hit) = lookup(&ctx.store, &fast, reads_by_path).await? {
            return Ok(cached(hit, None, BTreeMap::new()));
        }
    }

    // The content key: checksums of the selected paths replace those inputs' keys.
    let slow = if reads_by_path {
        let mut deps = Vec::with_capacity(inputs.len());
        for (i, r) in inputs.iter().enumerate() {
            deps.push(match &def.selectors[i] {
                Some(sel) => Dep {
                    key: selection_checksum(ctx, r, sel).await?,
                    selector: String::new(),
                },
                None => fast_deps[i].clone(),
            });
        }
        Some(op_key(&digest, &deps))
    } else {
        None
    };
    let effective = slow.clone().unwrap_or_else(|| fast.clone());
    if let (Some(slow), false) = (&slow, ctx.no_cache) {
        if let Some(hit) = lookup(&ctx.store, slow, false).await? {
            save(&ctx.store, vec![fast], &hit.snapshot, &hit.effective).await?;
            return Ok(cached(hit, None, BTreeMap::new()));
        }
    }

    let _lock = lock(ctx, &effective).await?;
    if !ctx.no_cache {
        if let Some(hit) = lookup(&ctx.store, &effective, false).await? {
            save(&ctx.store, vec![fast], &hit.snapshot, &hit.effective).await?;
            return Ok(cached(hit, None, BTreeMap::new()));
        }
    }

    ctx.progress.step(step, StepEvent::Start);
    let staging = stage(&ctx.store).await?;
    let target = staging.path().to_path_buf();
    let cancel: Arc<AtomicBool> = ctx.job.cancel.clone();
    let paths: Vec<PathBuf> = inputs.iter().map(|r| r.path.clone()).collect();
    match exec {
        Exec::File(actions, has_base) => {
            let actions = actions.to_vec();
            let names = def.inputs.clone();
            blocking(move || {
                let base = has_base.then(|| paths[0].as_path());
                crate::worker::materialize(base, &target, Some(&cancel))
                    .map_err(|e| e.to_string())?;
                let lookup = |name: &str| {
                    names
                        .iter()
                        .position(|n| n == name)
                        .map(|i| paths[i].clone())
                };
                crate::worker::apply(&actions, &target, &lookup, Some(&cancel))
                    .map_err(|e| e.to_string())
            })
            .await?
        }
        Exec::Merge => {
            let layers: Vec<usize> = def.canonical["layers"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_u64())
                        .map(|v| v as usize)
                        .collect()
                })
                .unwrap_or_default();
            blocking(move || {
                let dirs: Vec<&std::path::Path> =
                    layers.iter().map(|&i| paths[i].as_path()).collect();
                crate::worker::merge(&dirs, &target, Some(&cancel)).map_err(|e| e.to_string())
            })
            .await?
        }
        Exec::Run(run) => {
            let run = run.clone();
            let names = def.inputs.clone();
            let (job, root) = (ctx.job.clone(), ctx.store.root().to_path_buf());
            let (progress, name) = (ctx.progress.clone(), step.to_string());
            let runtime = ctx.runtime.clone();
            let image_config = base_image_config(node, &ctx.store).await?;
            blocking(move || {
                let has_base = run.base.is_some();
                let lookup = |n: &str| names.iter().position(|x| x == n).map(|i| paths[i].clone());
                let inputs = super::run_step::RunInputs {
                    runtime: runtime.as_deref(),
                    base: has_base.then(|| paths[0].as_path()),
                    trees: &lookup,
                    image_config: image_config.as_ref(),
                    root: &root,
                    job: &job,
                };
                let out = StepLog {
                    progress,
                    step: name,
                };
                super::run_step::execute(&run, &inputs, &target, &cancel, &out)?;
                crate::worker::apply(&run.actions, &target, &lookup, Some(&cancel))
                    .map_err(|e| e.to_string())
            })
            .await?
        }
    }
    let meta = SnapshotMeta {
        description: format!("step {step}"),
        ..Default::default()
    };
    let (id, path) = commit(ctx, staging, meta, None).await?;
    let mut keys = vec![fast];
    keys.extend(slow);
    save(&ctx.store, keys, &id, &effective).await?;
    ctx.executed.fetch_add(1, Ordering::Relaxed);
    Ok(NodeResult {
        key: effective,
        snapshot: id,
        path,
        cached: false,
        source: None,
        opts: BTreeMap::new(),
    })
}

/// Sends a run's output lines to the progress display as the step's log.
struct StepLog {
    progress: Arc<Progress>,
    step: String,
}

impl crate::exec::OutputSink for StepLog {
    fn line(&self, line: &str) {
        self.progress
            .step(&self.step, StepEvent::Log(line.to_string()));
    }
}

/// The config of the image `node`'s base chain starts at (through the base of file and
/// run steps and the bottom layer of merges), read from the content store; `None` when
/// the chain starts at `scratch` or at a source that is no image.
async fn base_image_config(node: &Node, store: &Arc<Store>) -> Res<Option<serde_json::Value>> {
    let mut at: &Node = node;
    for _ in 0..4096 {
        let next = match &at.kind {
            NodeKind::Source { .. } => break,
            NodeKind::File { step, .. } if step.base.is_some() => at.inputs.first(),
            NodeKind::Run { step, .. } if step.base.is_some() => at.inputs.first(),
            NodeKind::Merge { def } => def.canonical["layers"]
                .get(0)
                .and_then(serde_json::Value::as_u64)
                .and_then(|i| at.inputs.get(i as usize)),
            _ => None,
        };
        match next {
            Some(n) => at = n,
            None => return Ok(None),
        }
    }
    let Some(Ok(result)) = at.outcome.get() else {
        return Ok(None);
    };
    let (store, name, result) = (store.clone(), at.name.clone(), result.clone());
    let image = blocking(move || super::base::image_of(&store, &name, &result)).await?;
    match image {
        None => Ok(None),
        Some(img) => serde_json::from_slice(&img.config)
            .map(Some)
            .map_err(|e| format!("base image {}: its config is not JSON: {e}", img.reference)),
    }
}
