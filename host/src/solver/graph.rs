//! The vertex graph of a build: one [`Node`] per distinct vertex digest, shared by
//! every step (and every concurrent build of this process) that has that digest.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::OnceCell;

use crate::build::op::{self, OpDef};
use crate::build::{Definition, FileStep, RunStep, Step};
use crate::source_manager::{SourceError, SourceIdentifier, SourceManager};
use crate::store::SnapshotId;

/// A solved vertex.
#[derive(Debug)]
pub(crate) struct NodeResult {
    /// The key dependents build their keys on (content-based where there is one).
    pub key: String,
    /// The snapshot holding the tree.
    pub snapshot: SnapshotId,
    /// Its directory.
    pub path: PathBuf,
    /// Whether it came from the cache.
    pub cached: bool,
    /// For sources: the canonical identifier and the pin.
    pub source: Option<(String, Option<String>)>,
    /// For sources: the `opts` of the plugin's cache-key answers (every index asked,
    /// a later index's value winning), kept on cache hits too. An image source's
    /// `image.ref`, `image.config` and `image.layers` describe the image
    /// ([`super::base`]).
    pub opts: BTreeMap<String, String>,
}

/// A failed vertex: the step that failed and why.
#[derive(Debug)]
pub(crate) struct Failure {
    pub step: String,
    pub message: String,
}

pub(crate) type Outcome = Result<Arc<NodeResult>, Arc<Failure>>;

/// What a vertex does.
pub(crate) enum NodeKind {
    Source { id: SourceIdentifier },
    File { def: OpDef, step: FileStep },
    Merge { def: OpDef },
    Run { def: OpDef, step: RunStep },
}

/// One vertex: BuildKit's shared state plus `sharedOp`. Its outcome is computed once.
pub(crate) struct Node {
    /// The step name of the build that created it (for progress and errors).
    pub name: String,
    /// The vertex digest (with the process-wide sharing scope).
    pub digest: String,
    pub kind: NodeKind,
    pub inputs: Vec<Arc<Node>>,
    pub outcome: OnceCell<Outcome>,
}

/// Vertices alive in this process, by sharing key: concurrent builds of one process
/// share them; once every build holding one is gone it is dropped and a later build
/// runs it again (BuildKit's `actives`).
fn registry() -> &'static Mutex<HashMap<String, Weak<Node>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Node>>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

fn shared(key: String, make: impl FnOnce() -> Node) -> Arc<Node> {
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = reg.get(&key).and_then(Weak::upgrade) {
        return n;
    }
    if reg.len() > 4096 {
        reg.retain(|_, w| w.strong_count() > 0);
    }
    let n = Arc::new(make());
    reg.insert(key, Arc::downgrade(&n));
    n
}

/// A source identifier the SourceManager refused: the step and the cause.
pub(crate) struct IdentifierError {
    pub step: String,
    pub error: SourceError,
}

/// The graph of one build: a node per step the output needs.
pub(crate) struct Graph {
    /// Step name → node, in dependency order.
    pub steps: Vec<(String, Arc<Node>)>,
}

/// Builds the graph: parses every source identifier (no I/O) and computes vertex
/// digests. `scope` separates vertices that must not be shared across builds even
/// with equal definitions (root, local directories, `--no-cache`).
pub(crate) async fn build_graph(
    def: &Definition,
    sources: &SourceManager,
    default_platform: Option<&str>,
    scope: &str,
) -> Result<Graph, IdentifierError> {
    let mut by_name: HashMap<&str, Arc<Node>> = HashMap::new();
    let mut steps = Vec::new();
    for name in def.needed_order() {
        let step = &def.steps[name];
        let node = match step {
            Step::Source(s) => {
                let platform = s.platform.as_deref().or(default_platform);
                let id = sources
                    .identifier(&s.identifier, &s.attrs, platform)
                    .await
                    .map_err(|error| IdentifierError {
                        step: name.to_string(),
                        error,
                    })?;
                let attrs: BTreeMap<String, String> = s.attrs.clone();
                let canonical = op::source_op(&id.canonical, &s.identifier, &attrs, platform);
                let digest = op::vertex_digest(&canonical, &[]);
                shared(format!("{scope}|{digest}"), || Node {
                    name: name.to_string(),
                    digest: digest.clone(),
                    kind: NodeKind::Source { id },
                    inputs: vec![],
                    outcome: OnceCell::new(),
                })
            }
            Step::File(f) => {
                let def = op::file_op(f);
                op_node(name, &by_name, scope, def, |def| NodeKind::File {
                    def,
                    step: f.clone(),
                })
            }
            Step::Merge(m) => {
                let def = op::merge_op(m);
                op_node(name, &by_name, scope, def, |def| NodeKind::Merge { def })
            }
            Step::Run(r) => {
                let def = op::run_op(r);
                op_node(name, &by_name, scope, def, |def| NodeKind::Run {
                    def,
                    step: r.clone(),
                })
            }
        };
        by_name.insert(name, node.clone());
        steps.push((name.to_string(), node));
    }
    Ok(Graph { steps })
}

fn op_node(
    name: &str,
    by_name: &HashMap<&str, Arc<Node>>,
    scope: &str,
    def: OpDef,
    kind: impl FnOnce(OpDef) -> NodeKind,
) -> Arc<Node> {
    let inputs: Vec<Arc<Node>> = def
        .inputs
        .iter()
        .map(|i| by_name[i.as_str()].clone())
        .collect();
    let input_digests: Vec<String> = inputs.iter().map(|n| n.digest.clone()).collect();
    let digest = op::vertex_digest(&def.canonical, &input_digests);
    shared(format!("{scope}|{digest}"), || Node {
        name: name.to_string(),
        digest: digest.clone(),
        kind: kind(def),
        inputs,
        outcome: OnceCell::new(),
    })
}
