//! `kiln.toml`: finding it, parsing it, and validating it before anything runs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The built-in default configuration (the same text as `config/kiln.toml`).
pub const DEFAULT_CONFIG: &str = include_str!("../../config/kiln.toml");

/// The schema version this kiln understands.
pub const SCHEMA_VERSION: u32 = 1;

/// A configuration error: always names the file, and the line and column when known.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// An error with a ready message (which names the file).
    pub fn from_message(message: String) -> Self {
        Self { message }
    }
}

/// Where a configuration came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file on disk.
    File(PathBuf),
    /// The built-in default.
    BuiltIn,
}

impl std::fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::BuiltIn => f.write_str("the built-in default configuration"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    version: u32,
    root: Option<PathBuf>,
    #[serde(default)]
    required_plugins: Vec<String>,
    #[serde(default)]
    disabled_plugins: Vec<String>,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlugin {
    path: PathBuf,
    sha256: Option<String>,
    config: Option<toml::Table>,
}

/// One configured plugin.
#[derive(Clone, Debug)]
pub struct PluginConfig {
    /// The id it is configured under (`io.kiln.source.v1.git`).
    pub id: String,
    /// The file to load, made absolute.
    pub path: PathBuf,
    /// The pinned sha256 of the file (lowercase hex), if any.
    pub sha256: Option<String>,
    /// The plugin's own `config` table, re-serialised as TOML text ("" when absent).
    pub config_toml: String,
    /// Listed in `required_plugins`.
    pub required: bool,
    /// Listed in `disabled_plugins`.
    pub disabled: bool,
}

/// A parsed, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from.
    pub source: ConfigSource,
    /// `root`, if the file sets one.
    pub root: Option<PathBuf>,
    /// Plugins sorted by id.
    pub plugins: Vec<PluginConfig>,
    /// The text it was parsed from (to point a plugin's config error at its line).
    pub text: String,
}

impl Config {
    /// Parses `text` from `source`; relative plugin paths are taken from `base_dirs`
    /// (the first folder holding the file wins; the first folder if none does).
    pub fn parse(
        text: &str,
        source: ConfigSource,
        base_dirs: &[PathBuf],
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(text, s.start);
                    format!(" at line {line}, column {col}")
                })
                .unwrap_or_default();
            let msg = e.message().trim_end().replace('\n', "; ");
            ConfigError::new(format!("{source}{at}: {msg}"))
        })?;
        if raw.version != SCHEMA_VERSION {
            return Err(ConfigError::new(format!(
                "{source}: unknown configuration version {} (this kiln understands version {SCHEMA_VERSION})",
                raw.version
            )));
        }
        let required: BTreeSet<&str> = raw.required_plugins.iter().map(String::as_str).collect();
        let disabled: BTreeSet<&str> = raw.disabled_plugins.iter().map(String::as_str).collect();
        for id in required.iter().chain(disabled.iter()) {
            if !raw.plugins.contains_key(*id) {
                let list = if required.contains(id) {
                    "required_plugins"
                } else {
                    "disabled_plugins"
                };
                return Err(ConfigError::new(format!(
                    "{source}: {list} names plugin {id:?}, which has no [plugins.\"{id}\"] section"
                )));
            }
        }
        if let Some(id) = required.intersection(&disabled).next() {
            return Err(ConfigError::new(format!(
                "{source}: plugin {id:?} is both required and disabled"
            )));
        }
        let mut plugins = Vec::new();
        for (id, p) in raw.plugins {
            let plain = !id.is_empty()
                && !id.starts_with('.')
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !plain {
                return Err(ConfigError::new(format!(
                    "{source}: invalid plugin id {id:?} (use letters, digits, '.', '-' and '_', e.g. io.example.source.v1.name)"
                )));
            }
            let sha256 = match p.sha256 {
                Some(s) => {
                    let s = s.trim().to_ascii_lowercase();
                    let s = s.strip_prefix("sha256:").unwrap_or(&s).to_string();
                    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(ConfigError::new(format!(
                            "{source}: plugin {id:?}: sha256 must be 64 hex digits, got {s:?}"
                        )));
                    }
                    Some(s)
                }
                None => None,
            };
            let config_toml = match p.config {
                Some(t) => toml::to_string(&t).map_err(|e| {
                    ConfigError::new(format!("{source}: plugin {id:?}: config: {e}"))
                })?,
                None => String::new(),
            };
            plugins.push(PluginConfig {
                required: required.contains(id.as_str()),
                disabled: disabled.contains(id.as_str()),
                path: resolve_plugin_path(&p.path, base_dirs),
                id,
                sha256,
                config_toml,
            });
        }
        Ok(Self {
            source,
            root: raw.root,
            plugins,
            text: text.to_string(),
        })
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(format!("cannot read {}: {e}", path.display())))?;
        let base = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."));
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_path_buf());
        Self::parse(&text, ConfigSource::File(path.to_path_buf()), &[base])
    }

    /// The built-in default: the four standard plugins from the binary's folder, or
    /// `../lib/kiln/plugins` beside it.
    pub fn built_in() -> Result<Self, ConfigError> {
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let installed = exe_dir.join("../lib/kiln/plugins");
        Self::parse(DEFAULT_CONFIG, ConfigSource::BuiltIn, &[exe_dir, installed])
    }

    /// Finds the configuration by DESIGN §3's lookup order: `--config FILE`,
    /// `$KILN_CONFIG`, `$XDG_CONFIG_HOME/kiln/kiln.toml` (or `~/.config/…`),
    /// `/etc/kiln/kiln.toml`, then the built-in default.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        if let Some(p) = explicit {
            return Self::from_file(p);
        }
        if let Some(p) = std::env::var_os("KILN_CONFIG").filter(|v| !v.is_empty()) {
            return Self::from_file(Path::new(&p));
        }
        let xdg = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        let mut candidates: Vec<PathBuf> =
            xdg.into_iter().map(|d| d.join("kiln/kiln.toml")).collect();
        candidates.push(PathBuf::from("/etc/kiln/kiln.toml"));
        for c in candidates {
            if c.is_file() {
                return Self::from_file(&c);
            }
        }
        Self::built_in()
    }
}

fn resolve_plugin_path(path: &Path, base_dirs: &[PathBuf]) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    base_dirs
        .iter()
        .map(|d| d.join(path))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| {
            base_dirs
                .first()
                .map_or_else(|| path.to_path_buf(), |d| d.join(path))
        })
}

/// 1-based line and column of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The default root: `/var/lib/kiln` as root, else `$XDG_DATA_HOME/kiln`
/// (`~/.local/share/kiln`).
pub fn default_root() -> PathBuf {
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/kiln");
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("kiln")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            ConfigSource::File("k.toml".into()),
            &[PathBuf::from("/base")],
        )
    }

    #[test]
    fn default_parses_with_four_plugins() {
        let c = Config::parse(
            DEFAULT_CONFIG,
            ConfigSource::BuiltIn,
            &[PathBuf::from("/bin")],
        )
        .unwrap();
        let ids: Vec<_> = c.plugins.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "io.kiln.source.v1.git",
                "io.kiln.source.v1.http",
                "io.kiln.source.v1.image",
                "io.kiln.source.v1.local"
            ]
        );
        assert_eq!(
            c.plugins[0].path,
            PathBuf::from("/bin/libkiln_source_git.so")
        );
    }

    #[test]
    fn bad_toml_names_line_and_column() {
        let e = parse("version = 1\n[plugins.\"a\"]\npath = \n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("k.toml at line 3, column"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse("version = 1\nfrobnicate = true\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("frobnicate"), "{e}");
        let e = parse("version = 1\n[plugins.\"a\"]\npath = \"x\"\nshaa = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 4") && e.contains("shaa"), "{e}");
    }

    #[test]
    fn version_and_lists_are_checked() {
        assert!(parse("version = 2\n")
            .unwrap_err()
            .to_string()
            .contains("unknown configuration version 2"));
        let e = parse("version = 1\nrequired_plugins = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("required_plugins names plugin \"x\""), "{e}");
        let e = parse("version = 1\nrequired_plugins=[\"a\"]\ndisabled_plugins=[\"a\"]\n[plugins.a]\npath=\"p\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("both required and disabled"), "{e}");
        let e = parse("version = 1\n[plugins.a]\npath=\"p\"\nsha256=\"abc\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("64 hex digits"), "{e}");
    }

    #[test]
    fn plugin_ids_are_plain_names() {
        for bad in ["../x", ".hidden", "a/b", "a b", ""] {
            let e = parse(&format!("version = 1\n[plugins.{bad:?}]\npath = \"p\"\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid plugin id"), "{bad}: {e}");
        }
    }

    #[test]
    fn plugin_config_is_passed_as_toml() {
        let c = parse("version = 1\n[plugins.a]\npath=\"p.so\"\n[plugins.a.config]\ntimeout = 5\n")
            .unwrap();
        assert_eq!(c.plugins[0].config_toml.trim(), "timeout = 5");
        assert_eq!(c.plugins[0].path, PathBuf::from("/base/p.so"));
    }
}
