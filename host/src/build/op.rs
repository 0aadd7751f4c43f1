//! Canonical op definitions: what a vertex digest and an op's cache digest are made of.
//!
//! Step names never enter a digest: inputs are referred to by position, so renaming a
//! step keeps its cache. The encoding is JSON with sorted keys and no spaces.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{Action, FileStep, MergeStep, RunMount, RunStep};
use crate::contenthash::Selector;
use crate::worker::{clean_rel, pattern::has_wildcards};

/// The canonical definition of a file or merge op, with its inputs by position.
#[derive(Clone, Debug, PartialEq)]
pub struct OpDef {
    /// The input step names, in position order.
    pub inputs: Vec<String>,
    /// Per input: what each copy reads from it, sorted and without repeats (`None`:
    /// the whole tree is used). Each copy keeps its own symlink handling.
    pub selectors: Vec<Option<Vec<Selector>>>,
    /// The op without its inputs' identities.
    pub canonical: Value,
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The canonical bytes of a JSON value (sorted keys, no spaces).
pub fn canonical_bytes(v: &Value) -> Vec<u8> {
    // serde_json's default map is ordered by key; sort explicitly anyway so the bytes do
    // not depend on whether some crate enabled `preserve_order`.
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let sorted: BTreeMap<&String, Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                let mut out = serde_json::Map::new();
                for (k, v) in sorted {
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sort(v)).expect("JSON values encode")
}

/// The canonical definition of a source op. `identifier` is the source's canonical
/// form; the platform is kept only when given (image sources).
///
/// `identifier` is the plugin's canonical form, which redacts URL credentials; when
/// the text the step wrote differs from it (`written`), a hash of that text joins the
/// definition, so that two steps differing only in credentials stay two vertices
/// (and one user's content never reaches another's step).
pub fn source_op(
    identifier: &str,
    written: &str,
    attrs: &BTreeMap<String, String>,
    platform: Option<&str>,
) -> Value {
    let written = (written != identifier).then(|| {
        use sha2::{Digest, Sha256};
        format!("sha256:{}", hex::encode(Sha256::digest(written.as_bytes())))
    });
    json!({
        "op": "source",
        "identifier": identifier,
        "written": written,
        "attrs": attrs,
        "platform": platform,
    })
}

/// Input positions by step name, in first-use order.
#[derive(Default)]
struct Inputs {
    names: Vec<String>,
    selected: BTreeMap<usize, Vec<Selector>>,
}

impl Inputs {
    fn index(&mut self, name: &str) -> usize {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        }
    }

    /// The actions in canonical form; each copy's source becomes a selector of its input.
    fn actions(&mut self, actions: &[Action]) -> Vec<Value> {
        let mut out = Vec::with_capacity(actions.len());
        for a in actions {
            let mut v = serde_json::to_value(a).expect("actions encode");
            if let Action::Copy(c) = a {
                let i = self.index(&c.from);
                v["copy"]["from"] = json!(i);
                self.selected.entry(i).or_default().push(Selector {
                    path: selector_path(&c.src),
                    wildcard: c.allow_wildcard && has_wildcards(&c.src),
                    follow: c.follow_symlinks,
                    unpack: c.unpack,
                });
            }
            out.push(v);
        }
        out
    }

    /// Per input: the sorted selectors, or `None` where the whole tree is read
    /// (the inputs in `whole`, and any input nothing selected from).
    fn finish(self, whole: &[Option<usize>]) -> (Vec<String>, Vec<Option<Vec<Selector>>>) {
        let selectors = (0..self.names.len())
            .map(|i| {
                if whole.contains(&Some(i)) {
                    return None;
                }
                self.selected.get(&i).map(|paths| {
                    let mut p = paths.clone();
                    p.sort();
                    p.dedup();
                    p
                })
            })
            .collect();
        (self.names, selectors)
    }
}

/// The canonical definition of a file op.
pub fn file_op(step: &FileStep) -> OpDef {
    let mut inputs = Inputs::default();
    let base = step.base.as_deref().map(|b| inputs.index(b));
    let actions = inputs.actions(&step.actions);
    let (inputs, selectors) = inputs.finish(&[base]);
    OpDef {
        canonical: json!({ "op": "file", "base": base, "actions": actions }),
        inputs,
        selectors,
    }
}

/// The canonical definition of an exec op (a `run` step): argv, env, workdir, user,
/// network and the mount specs, with inputs by position. Secret values and cache
/// contents never enter it; a bind mount reads its source path of its input.
pub fn run_op(step: &RunStep) -> OpDef {
    let mut inputs = Inputs::default();
    let base = step.base.as_deref().map(|b| inputs.index(b));
    let mut mounts = Vec::with_capacity(step.mounts.len());
    let mut whole = vec![base];
    for m in &step.mounts {
        mounts.push(match m {
            RunMount::Bind {
                from,
                source,
                target,
                readonly,
            } => {
                let i = inputs.index(from);
                let path = selector_path(source);
                if path == "/" {
                    whole.push(Some(i));
                } else {
                    inputs.selected.entry(i).or_default().push(Selector {
                        path: path.clone(),
                        wildcard: false,
                        follow: true,
                        unpack: false,
                    });
                }
                json!({"type": "bind", "input": i, "source": path, "target": target, "readonly": readonly})
            }
            RunMount::Cache { id, target, sharing } => {
                json!({"type": "cache", "id": id, "target": target, "sharing": sharing})
            }
            RunMount::Secret { id, target, required } => {
                json!({"type": "secret", "id": id, "target": target, "required": required})
            }
            RunMount::Tmpfs { target } => json!({"type": "tmpfs", "target": target}),
            RunMount::Ssh { id, target } => json!({"type": "ssh", "id": id, "target": target}),
        });
    }
    let actions = inputs.actions(&step.actions);
    let (inputs, selectors) = inputs.finish(&whole);
    OpDef {
        canonical: json!({
            "op": "exec",
            "base": base,
            "args": step.args,
            "env": step.env,
            "workdir": step.workdir,
            "user": step.user,
            "network": step.network,
            "mounts": mounts,
            "actions": actions,
        }),
        inputs,
        selectors,
    }
}

/// The canonical definition of a merge op.
pub fn merge_op(step: &MergeStep) -> OpDef {
    // Inputs keep their order (later layers win); a repeated input is a repeated layer.
    let mut inputs: Vec<String> = Vec::new();
    let mut layers = Vec::new();
    for s in &step.inputs {
        let i = match inputs.iter().position(|n| n == s) {
            Some(i) => i,
            None => {
                inputs.push(s.clone());
                inputs.len() - 1
            }
        };
        layers.push(i);
    }
    OpDef {
        selectors: vec![None; inputs.len()],
        canonical: json!({ "op": "merge", "layers": layers }),
        inputs,
    }
}

/// The content-hash path of a copy source: made absolute and clean the way the worker
/// cleans it (`..` clamped at the root). A wildcard pattern is kept whole: it is
/// expanded against the tree when checksummed, as the worker expands it.
pub fn selector_path(src: &str) -> String {
    format!("/{}", clean_rel(src).display())
}

/// The vertex digest: the canonical op plus the vertex digests of its inputs, in order.
pub fn vertex_digest(canonical: &Value, input_digests: &[String]) -> String {
    let v = json!({ "op": canonical, "inputs": input_digests });
    sha256_digest(&canonical_bytes(&v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::{Copy, Mkdir};

    fn copy(from: &str, src: &str) -> Action {
        Action::Copy(Copy {
            from: from.into(),
            src: src.into(),
            dest: "/d".into(),
            mode: None,
            owner: None,
            follow_symlinks: false,
            dir_contents: false,
            create_dest_path: true,
            allow_wildcard: true,
            include: vec![],
            exclude: vec![],
            unpack: false,
        })
    }

    #[test]
    fn selector_paths_are_clean_and_keep_wildcards() {
        assert_eq!(selector_path("src/./a"), "/src/a");
        assert_eq!(selector_path("../../etc/passwd"), "/etc/passwd");
        assert_eq!(selector_path("/src/*.rs"), "/src/*.rs");
        assert_eq!(selector_path("/"), "/");
    }

    fn sel(path: &str, wildcard: bool, follow: bool) -> Selector {
        Selector {
            path: path.into(),
            wildcard,
            follow,
            unpack: false,
        }
    }

    #[test]
    fn each_copy_keeps_its_own_symlink_handling() {
        let mut keep = copy("ctx", "/lnk");
        let mut follow = copy("ctx", "/other");
        let mut glob = copy("ctx", "/src/*.rs");
        if let (Action::Copy(k), Action::Copy(f), Action::Copy(g)) =
            (&mut keep, &mut follow, &mut glob)
        {
            k.follow_symlinks = false;
            f.follow_symlinks = true;
            g.unpack = true;
        }
        let s = FileStep {
            base: None,
            actions: vec![keep, follow, glob],
        };
        let mut unpack = sel("/src/*.rs", true, false);
        unpack.unpack = true;
        assert_eq!(
            file_op(&s).selectors,
            vec![Some(vec![
                sel("/lnk", false, false),
                sel("/other", false, true),
                unpack
            ])]
        );
    }

    #[test]
    fn file_op_inputs_by_position_and_names_do_not_matter() {
        let a = FileStep {
            base: Some("base".into()),
            actions: vec![copy("ctx", "/b"), copy("ctx", "/a"), copy("other", "/x")],
        };
        let b = FileStep {
            base: Some("renamed".into()),
            actions: vec![copy("ctx2", "/b"), copy("ctx2", "/a"), copy("o", "/x")],
        };
        let (da, db) = (file_op(&a), file_op(&b));
        assert_eq!(da.inputs, vec!["base", "ctx", "other"]);
        assert_eq!(da.canonical, db.canonical);
        assert_eq!(
            da.selectors,
            vec![
                None,
                Some(vec![sel("/a", false, false), sel("/b", false, false)]),
                Some(vec![sel("/x", false, false)])
            ]
        );
    }

    #[test]
    fn digests_change_with_op_and_inputs() {
        let s = FileStep {
            base: None,
            actions: vec![Action::Mkdir(Mkdir {
                path: "/a".into(),
                mode: 0o755,
                parents: false,
                owner: None,
            })],
        };
        let d = file_op(&s);
        let v1 = vertex_digest(&d.canonical, &[]);
        assert!(v1.starts_with("sha256:") && v1.len() == 71);
        assert_ne!(v1, vertex_digest(&d.canonical, &["sha256:00".into()]));
        let mut s2 = s.clone();
        if let Action::Mkdir(m) = &mut s2.actions[0] {
            m.mode = 0o700;
        }
        assert_ne!(v1, vertex_digest(&file_op(&s2).canonical, &[]));
    }

    #[test]
    fn copy_from_the_base_uses_the_whole_base() {
        let s = FileStep {
            base: Some("b".into()),
            actions: vec![copy("b", "/x")],
        };
        assert_eq!(file_op(&s).selectors, vec![None]);
    }
}
