//! The build definition (DESIGN §5): a TOML DAG of named steps, kiln's LLB.
//!
//! [`Definition::load`] reads a file, [`Definition::parse`] parses text; both validate
//! the whole graph (unknown keys, unknown step names, cycles, a missing `[output]`)
//! and return a [`DefinitionError`] that names the offending step.
//!
//! [`op`] turns a parsed step into its canonical op definition, the bytes its vertex
//! digest and cache keys are computed from.

mod action;
mod error;
pub mod op;
mod parse;
pub mod run;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use action::{Action, Copy, Mkdir, Mkfile, Owner, Rm, Symlink};
pub use error::DefinitionError;
pub use run::{NetworkMode, RunMount, RunStep};

/// The only definition schema version this build of kiln reads.
pub const DEFINITION_VERSION: i64 = 1;

/// The reserved base name for an empty tree.
pub const SCRATCH: &str = "scratch";

/// A parsed and validated build definition.
#[derive(Clone, Debug, PartialEq)]
pub struct Definition {
    /// The steps, by name.
    pub steps: BTreeMap<String, Step>,
    /// The step whose result the build exports.
    pub output: String,
    /// The folder of the definition file: the default directory of `local://NAME`.
    pub dir: PathBuf,
}

/// One named step.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A source (`source = "scheme://…"`).
    Source(SourceStep),
    /// File actions on a base tree (`base` + `actions`).
    File(FileStep),
    /// Layers stacked in order, later ones win (`merge = [...]`).
    Merge(MergeStep),
    /// A command run in its base's filesystem (`base` + `run`).
    Run(RunStep),
}

/// A source step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceStep {
    /// The identifier as written (`docker-image://…`, `local://context`, …).
    pub identifier: String,
    /// Attributes, with TOML arrays encoded as JSON lists (BuildKit's form).
    pub attrs: BTreeMap<String, String>,
    /// `os/arch[/variant]`, for image sources.
    pub platform: Option<String>,
}

/// A file-op step: actions applied in order on a copy of `base`.
#[derive(Clone, Debug, PartialEq)]
pub struct FileStep {
    /// The step the tree starts from, or `None` for `scratch`.
    pub base: Option<String>,
    /// The actions, in order.
    pub actions: Vec<Action>,
}

/// A merge step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeStep {
    /// The layers, bottom first.
    pub inputs: Vec<String>,
}

impl Step {
    /// The names of the steps this one reads, in input order, without repeats.
    pub fn inputs(&self) -> Vec<&str> {
        let all: Vec<&str> = match self {
            Step::Source(_) => Vec::new(),
            Step::File(f) => f
                .base
                .iter()
                .map(String::as_str)
                .chain(f.actions.iter().filter_map(|a| match a {
                    Action::Copy(c) => Some(c.from.as_str()),
                    _ => None,
                }))
                .collect(),
            Step::Merge(m) => m.inputs.iter().map(String::as_str).collect(),
            Step::Run(r) => r
                .base
                .iter()
                .map(String::as_str)
                .chain(r.mounts.iter().filter_map(|m| match m {
                    RunMount::Bind { from, .. } => Some(from.as_str()),
                    _ => None,
                }))
                .chain(r.actions.iter().filter_map(|a| match a {
                    Action::Copy(c) => Some(c.from.as_str()),
                    _ => None,
                }))
                .collect(),
        };
        let mut out: Vec<&str> = Vec::with_capacity(all.len());
        for s in all {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        out
    }

    /// A short word for progress output: `source`, `file`, `merge` or `run`.
    pub fn kind(&self) -> &'static str {
        match self {
            Step::Source(_) => "source",
            Step::File(_) => "file",
            Step::Merge(_) => "merge",
            Step::Run(_) => "run",
        }
    }
}

impl Definition {
    /// Reads and validates the definition at `path`.
    pub fn load(path: &Path) -> Result<Self, DefinitionError> {
        let text =
            crate::text::read_capped(path, crate::text::MAX_DEFINITION_BYTES, "build definition")
                .map_err(|source| DefinitionError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
        parse::parse(&text, dir).map_err(|e| e.in_file(path))
    }

    /// Parses and validates definition text; `dir` is the default local context.
    pub fn parse(text: &str, dir: PathBuf) -> Result<Self, DefinitionError> {
        parse::parse(text, dir)
    }

    /// Step names in an order where every step comes after its inputs, limited to the
    /// steps the output needs.
    pub fn needed_order(&self) -> Vec<&str> {
        let mut order = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Iterative post-order DFS; the graph is known to be acyclic.
        let mut stack: Vec<(&str, bool)> = vec![(self.output.as_str(), false)];
        while let Some((name, expanded)) = stack.pop() {
            if expanded {
                order.push(name);
                continue;
            }
            if !seen.insert(name) {
                continue;
            }
            stack.push((name, true));
            if let Some(step) = self.steps.get(name) {
                for dep in step.inputs().into_iter().rev() {
                    if !seen.contains(dep) {
                        stack.push((dep, false));
                    }
                }
            }
        }
        order
    }
}

#[cfg(test)]
mod tests;
