//! Parsing and validation of the TOML definition.

use std::collections::BTreeMap;
use std::path::PathBuf;

use toml::{Table, Value};

use super::{
    Action, Definition, DefinitionError, FileStep, MergeStep, SourceStep, Step, DEFINITION_VERSION,
    SCRATCH,
};

type Res<T> = Result<T, DefinitionError>;

/// The most an inline `mkfile` data string may hold (1 MiB): larger files belong in a
/// local source, not in the definition (which is hashed and kept in memory whole).
pub(crate) const MAX_MKFILE_DATA: usize = 1 << 20;

const STEP_KEYS: &str =
    "source, attrs, platform, base, actions, merge, run, env, workdir, user, network or mounts";

pub(super) fn parse(text: &str, dir: PathBuf) -> Res<Definition> {
    let top: Table = toml::from_str(text)
        .map_err(|e| DefinitionError::syntax(crate::text::toml_error(text, &e)))?;

    for key in top.keys() {
        if !matches!(key.as_str(), "version" | "steps" | "output") {
            return Err(DefinitionError::syntax(format!(
                "unknown top-level key `{key}` (expected version, steps or output)"
            )));
        }
    }
    match top.get("version") {
        Some(Value::Integer(DEFINITION_VERSION)) => {}
        Some(Value::Integer(v)) => {
            return Err(DefinitionError::syntax(format!(
                "unsupported version {v} (this kiln reads version {DEFINITION_VERSION})"
            )))
        }
        Some(other) => {
            return Err(DefinitionError::syntax(format!(
                "`version` must be the integer {DEFINITION_VERSION}, not {}",
                other.type_str()
            )))
        }
        None => {
            return Err(DefinitionError::syntax(format!(
                "missing `version = {DEFINITION_VERSION}`"
            )))
        }
    }

    let raw_steps = match top.get("steps") {
        Some(Value::Table(t)) if !t.is_empty() => t,
        Some(Value::Table(_)) | None => {
            return Err(DefinitionError::syntax(
                "no steps: add at least one `[steps.NAME]` table",
            ))
        }
        Some(other) => {
            return Err(DefinitionError::syntax(format!(
                "`steps` must be a table of steps, not {}",
                other.type_str()
            )))
        }
    };

    let mut steps = BTreeMap::new();
    for (name, value) in raw_steps {
        check_name(name)?;
        let table = match value {
            Value::Table(t) => t,
            other => {
                return Err(DefinitionError::step(
                    name,
                    format!("must be a table, not {}", other.type_str()),
                ))
            }
        };
        steps.insert(name.clone(), parse_step(name, table)?);
    }

    let output = parse_output(top.get("output"))?;
    let def = Definition { steps, output, dir };
    validate(&def)?;
    Ok(def)
}

fn one_line(s: &str) -> String {
    s.trim_end()
        .lines()
        .map(str::trim_end)
        .collect::<Vec<_>>()
        .join(" | ")
}

fn check_name(name: &str) -> Res<()> {
    if name == SCRATCH {
        return Err(DefinitionError::step(
            name,
            "`scratch` is reserved for the empty tree; pick another step name",
        ));
    }
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        return Err(DefinitionError::step(
            name,
            "a step name must start with a letter or digit and hold only letters, digits, `_`, `-` and `.`",
        ));
    }
    Ok(())
}

fn parse_step(name: &str, t: &Table) -> Res<Step> {
    for key in t.keys() {
        if !matches!(
            key.as_str(),
            "source"
                | "attrs"
                | "platform"
                | "base"
                | "actions"
                | "merge"
                | "run"
                | "env"
                | "workdir"
                | "user"
                | "network"
                | "mounts"
        ) {
            return Err(DefinitionError::step(
                name,
                format!("unknown key `{key}` (expected {STEP_KEYS})"),
            ));
        }
    }
    let only = |allowed: &[&str], kind: &str| -> Res<()> {
        for key in t.keys() {
            if !allowed.contains(&key.as_str()) {
                return Err(DefinitionError::step(
                    name,
                    format!("`{key}` cannot be used in a {kind} step"),
                ));
            }
        }
        Ok(())
    };
    if let Some(src) = t.get("source") {
        only(&["source", "attrs", "platform"], "source")?;
        let identifier = string(name, "source", src)?;
        if !identifier.contains("://") {
            return Err(DefinitionError::step(
                name,
                format!(
                    "source {:?} has no scheme (expected SCHEME://…)",
                    crate::text::shorten(&identifier)
                ),
            ));
        }
        let attrs = match t.get("attrs") {
            None => BTreeMap::new(),
            Some(Value::Table(a)) => a
                .iter()
                .map(|(k, v)| Ok((k.clone(), attr_value(name, k, v)?)))
                .collect::<Res<_>>()?,
            Some(other) => {
                return Err(DefinitionError::step(
                    name,
                    format!("`attrs` must be a table, not {}", other.type_str()),
                ))
            }
        };
        let platform = t
            .get("platform")
            .map(|p| string(name, "platform", p))
            .transpose()?;
        if let Some(p) = &platform {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                return Err(DefinitionError::step(
                    name,
                    format!(
                        "platform {:?} is not OS/ARCH[/VARIANT]",
                        crate::text::shorten(p)
                    ),
                ));
            }
        }
        return Ok(Step::Source(SourceStep {
            identifier,
            attrs,
            platform,
        }));
    }
    if let Some(m) = t.get("merge") {
        only(&["merge"], "merge")?;
        let inputs = string_list(name, "merge", m)?;
        if inputs.is_empty() {
            return Err(DefinitionError::step(name, "`merge` lists no steps"));
        }
        return Ok(Step::Merge(MergeStep { inputs }));
    }
    if t.contains_key("run") || t.contains_key("base") || t.contains_key("actions") {
        if !t.contains_key("run") {
            only(&["base", "actions"], "file")?;
        } else {
            only(super::run::RUN_KEYS, "run")?;
        }
        let base = match t.get("base") {
            None => None,
            Some(b) => {
                let b = string(name, "base", b)?;
                (b != SCRATCH).then_some(b)
            }
        };
        let actions = match t.get("actions") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_action(name, i + 1, v))
                .collect::<Res<_>>()?,
            Some(other) => {
                return Err(DefinitionError::step(
                    name,
                    format!("`actions` must be an array, not {}", other.type_str()),
                ))
            }
        };
        if t.contains_key("run") {
            return Ok(Step::Run(super::run::parse_run(name, t, base, actions)?));
        }
        return Ok(Step::File(FileStep { base, actions }));
    }
    Err(DefinitionError::step(
        name,
        "says nothing to do: give it `source`, `base` and `actions`, `base` and `run`, or `merge`",
    ))
}

fn parse_action(step: &str, n: usize, v: &Value) -> Res<Action> {
    let kind = match v {
        Value::Table(t) if t.len() == 1 => t.keys().next().cloned().unwrap_or_default(),
        Value::Table(t) => {
            return Err(DefinitionError::step(
                step,
                format!(
                "action {n} must have exactly one of copy, mkdir, mkfile, rm or symlink (found {})",
                if t.is_empty() {
                    "none".to_string()
                } else {
                    t.keys().cloned().collect::<Vec<_>>().join(", ")
                }
            ),
            ))
        }
        other => {
            return Err(DefinitionError::step(
                step,
                format!("action {n} must be a table, not {}", other.type_str()),
            ))
        }
    };
    if let Some(Value::String(data)) = v
        .get("mkfile")
        .and_then(|m| m.as_table())
        .and_then(|m| m.get("data"))
    {
        if data.len() > MAX_MKFILE_DATA {
            return Err(DefinitionError::step(
                step,
                format!(
                    "action {n} (mkfile): `data` holds {} bytes, more than the limit of {} KiB; copy a larger file from a local source instead",
                    data.len(),
                    MAX_MKFILE_DATA >> 10
                ),
            ));
        }
    }
    let action: Action = v.clone().try_into().map_err(|e: toml::de::Error| {
        DefinitionError::step(
            step,
            format!("action {n} ({kind}): {}", one_line(e.message())),
        )
    })?;
    let paths: Vec<(&str, &str)> = match &action {
        Action::Copy(c) => vec![("src", &c.src), ("dest", &c.dest)],
        Action::Mkdir(m) => vec![("path", &m.path)],
        Action::Mkfile(m) => vec![("path", &m.path)],
        Action::Rm(r) => vec![("path", &r.path)],
        Action::Symlink(s) => vec![("path", &s.path), ("target", &s.target)],
    };
    for (field, p) in paths {
        if p.is_empty() || p.contains('\0') {
            return Err(DefinitionError::step(
                step,
                format!("action {n} ({kind}): `{field}` must be a non-empty path without NUL"),
            ));
        }
    }
    Ok(action)
}

fn string(step: &str, key: &str, v: &Value) -> Res<String> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.clone()),
        Value::String(_) => Err(DefinitionError::step(step, format!("`{key}` is empty"))),
        other => Err(DefinitionError::step(
            step,
            format!("`{key}` must be a string, not {}", other.type_str()),
        )),
    }
}

fn string_list(step: &str, key: &str, v: &Value) -> Res<Vec<String>> {
    match v {
        Value::Array(items) => items.iter().map(|i| string(step, key, i)).collect(),
        other => Err(DefinitionError::step(
            step,
            format!(
                "`{key}` must be an array of strings, not {}",
                other.type_str()
            ),
        )),
    }
}

/// TOML attribute values: strings verbatim, arrays as the JSON list BuildKit expects,
/// booleans and integers as their text.
fn attr_value(step: &str, key: &str, v: &Value) -> Res<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Boolean(b) => Ok(b.to_string()),
        Value::Integer(i) => Ok(i.to_string()),
        Value::Array(_) => {
            let list = string_list(step, &format!("attrs.{key}"), v)?;
            Ok(serde_json::to_string(&list).expect("a list of strings encodes"))
        }
        other => Err(DefinitionError::step(
            step,
            format!(
                "attribute `{key}` must be a string, boolean, integer or array of strings, not {}",
                other.type_str()
            ),
        )),
    }
}

fn parse_output(v: Option<&Value>) -> Res<String> {
    let t =
        match v {
            Some(Value::Table(t)) => t,
            Some(other) => {
                return Err(DefinitionError::syntax(format!(
                    "`output` must be a table, not {}",
                    other.type_str()
                )))
            }
            None => return Err(DefinitionError::syntax(
                "missing [output]: add `[output]` with `step = \"NAME\"` naming the step to export",
            )),
        };
    for key in t.keys() {
        if key != "step" {
            return Err(DefinitionError::syntax(format!(
                "[output]: unknown key `{key}` (expected step)"
            )));
        }
    }
    match t.get("step") {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(DefinitionError::syntax(
            "[output] needs `step = \"NAME\"` naming the step to export",
        )),
    }
}

fn validate(def: &Definition) -> Res<()> {
    for (name, step) in &def.steps {
        let refs: Vec<(&str, &str)> = match step {
            Step::Source(_) => vec![],
            Step::File(f) => {
                let mut r: Vec<(&str, &str)> =
                    f.base.iter().map(|b| ("base", b.as_str())).collect();
                for a in &f.actions {
                    if let Action::Copy(c) = a {
                        r.push(("copy from", c.from.as_str()));
                    }
                }
                r
            }
            Step::Merge(m) => m.inputs.iter().map(|s| ("merge", s.as_str())).collect(),
            Step::Run(r) => {
                let mut refs: Vec<(&str, &str)> =
                    r.base.iter().map(|b| ("base", b.as_str())).collect();
                for m in &r.mounts {
                    if let super::RunMount::Bind { from, .. } = m {
                        refs.push(("bind mount from", from.as_str()));
                    }
                }
                for a in &r.actions {
                    if let Action::Copy(c) = a {
                        refs.push(("copy from", c.from.as_str()));
                    }
                }
                refs
            }
        };
        for (what, target) in refs {
            if !def.steps.contains_key(target) {
                let hint = if target == SCRATCH {
                    " (`scratch` is only valid as a base)".to_string()
                } else {
                    String::new()
                };
                return Err(DefinitionError::step(
                    name,
                    format!("{what} refers to step `{target}`, which does not exist{hint}"),
                ));
            }
        }
    }
    if !def.steps.contains_key(&def.output) {
        return Err(DefinitionError::step(
            &def.output,
            "named by [output] but there is no such step",
        ));
    }
    find_cycle(def)
}

fn find_cycle(def: &Definition) -> Res<()> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> =
        def.steps.keys().map(|k| (k.as_str(), Mark::New)).collect();
    for start in def.steps.keys() {
        if marks[start.as_str()] != Mark::New {
            continue;
        }
        // Iterative DFS: (step, index of the next input to visit); `path` mirrors the stack.
        let mut stack: Vec<(&str, usize)> = vec![(start.as_str(), 0)];
        marks.insert(start.as_str(), Mark::Active);
        while let Some((node, i)) = stack.last().copied() {
            let inputs = def.steps[node].inputs();
            if i < inputs.len() {
                stack.last_mut().expect("non-empty").1 += 1;
                let next = inputs[i];
                match marks[next] {
                    Mark::New => {
                        marks.insert(next, Mark::Active);
                        stack.push((next, 0));
                    }
                    Mark::Active => {
                        let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                        let mut cycle: Vec<&str> = stack[pos..].iter().map(|(n, _)| *n).collect();
                        cycle.push(next);
                        return Err(DefinitionError::step(
                            next,
                            format!("is part of a cycle: {}", cycle.join(" -> ")),
                        ));
                    }
                    Mark::Done => {}
                }
            } else {
                marks.insert(node, Mark::Done);
                stack.pop();
            }
        }
    }
    Ok(())
}
