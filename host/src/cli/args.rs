//! Parsers for repeated flag values: `K=V`, `NAME=DIR`, `--secret id=ID,src=FILE|env=VAR`.

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
    fn attrs_parse() {
        let a = parse_attrs(&["a=b=c".into(), "x=".into()]).unwrap();
        assert_eq!(a["a"], "b=c");
        assert_eq!(a["x"], "");
        assert!(parse_attrs(&["=v".into()]).is_err());
        assert!(parse_attrs(&["a=1".into(), "a=2".into()]).is_err());
    }
}
