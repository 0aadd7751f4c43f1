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
    plugin_dir: Option<PathBuf>,
    #[serde(default)]
    required_plugins: Vec<String>,
    #[serde(default)]
    disabled_plugins: Vec<String>,
    #[serde(default)]
    plugins: BTreeMap<String, RawPlugin>,
    #[serde(default)]
    worker: WorkerConfig,
}

/// The `[worker]` table: how run steps are executed.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// The OCI runtime: a name looked up on `PATH` or a path (default: the first of
    /// `runc`, `crun` on `PATH`).
    pub runtime: Option<String>,
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
    /// Where bare plugin file names were looked up, in order (`plugin_dir`, or the
    /// default folders beside the binary).
    pub plugin_dirs: Vec<PathBuf>,
    /// Plugins sorted by id.
    pub plugins: Vec<PluginConfig>,
    /// The text it was parsed from (to point a plugin's config error at its line).
    pub text: String,
    /// The `[worker]` table.
    pub worker: WorkerConfig,
}

impl Config {
    /// Parses `text` from `source` with every relative plugin path looked up in
    /// `dirs` (the first folder holding the file wins); see [`Config::parse_at`].
    pub fn parse(text: &str, source: ConfigSource, dirs: &[PathBuf]) -> Result<Self, ConfigError> {
        let base = dirs.first().cloned().unwrap_or_else(|| PathBuf::from("."));
        Self::parse_at(text, source, &base, dirs)
    }

    /// Parses `text` from `source`. A plugin `path` with a slash is taken from
    /// `base_dir` (the config file's folder); a bare file name from `plugin_dir` when
    /// the text sets one (itself relative to `base_dir`), else from `default_plugin_dirs`
    /// (the first folder holding the file wins; the first folder if none does).
    pub fn parse_at(
        text: &str,
        source: ConfigSource,
        base_dir: &Path,
        default_plugin_dirs: &[PathBuf],
    ) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .map(|s| {
                    let (line, col) = crate::text::line_col(text, s.start);
                    format!(" at line {line}, column {col}")
                })
                .unwrap_or_default();
            let msg = e.message().trim_end().replace('\n', "; ");
            ConfigError::new(format!(
                "{source}{at}: {}",
                crate::text::shorten_words(&msg)
            ))
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
        let plugin_dirs = match &raw.plugin_dir {
            Some(d) if d.as_os_str().is_empty() => {
                return Err(ConfigError::new(format!(
                    "{source}: plugin_dir is empty (leave it out for the default: the folder of the kiln binary)"
                )))
            }
            Some(d) => vec![base_dir.join(d)],
            None => default_plugin_dirs.to_vec(),
        };
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
                path: resolve_plugin_path(&p.path, base_dir, &plugin_dirs),
                id,
                sha256,
                config_toml,
            });
        }
        Ok(Self {
            source,
            root: raw.root,
            plugin_dirs,
            plugins,
            text: text.to_string(),
            worker: raw.worker,
        })
    }

    /// Reads and parses a configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            crate::text::read_capped(path, crate::text::MAX_CONFIG_BYTES, "configuration file")
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
        Self::parse_at(
            &text,
            ConfigSource::File(path.to_path_buf()),
            &base,
            &default_plugin_dirs(),
        )
    }

    /// The built-in default: the four standard plugins from the binary's folder, or
    /// `../lib/kiln/plugins` beside it.
    pub fn built_in() -> Result<Self, ConfigError> {
        let dirs = default_plugin_dirs();
        Self::parse_at(DEFAULT_CONFIG, ConfigSource::BuiltIn, &dirs[0], &dirs)
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

/// The default `plugin_dir`: the folder of the running `kiln` binary (where `cargo
/// build` puts the plugins), then `../lib/kiln/plugins` beside it (an installed layout).
pub fn default_plugin_dirs() -> Vec<PathBuf> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    let installed = exe_dir.join("../lib/kiln/plugins");
    vec![exe_dir, installed]
}

/// DESIGN §3: absolute paths stay; a path with a slash is taken from the config
/// file's folder; a bare file name is looked up in `plugin_dirs`.
fn resolve_plugin_path(path: &Path, base_dir: &Path, plugin_dirs: &[PathBuf]) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    if path.components().count() > 1 || path.as_os_str().as_encoded_bytes().contains(&b'/') {
        return base_dir.join(path);
    }
    plugin_dirs
        .iter()
        .map(|d| d.join(path))
        .find(|p| p.symlink_metadata().is_ok())
        .unwrap_or_else(|| {
            plugin_dirs
                .first()
                .map_or_else(|| path.to_path_buf(), |d| d.join(path))
        })
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
        Config::parse_at(
            text,
            ConfigSource::File("k.toml".into()),
            Path::new("/base"),
            &[PathBuf::from("/bin")],
        )
    }

    #[test]
    fn default_parses_with_four_plugins() {
        let c = Config::parse_at(
            DEFAULT_CONFIG,
            ConfigSource::BuiltIn,
            Path::new("/etc/kiln"),
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
        assert_eq!(c.plugins[0].path, PathBuf::from("/bin/p.so"));
    }

    #[test]
    fn plugin_paths_resolve_by_shape() {
        let c = parse(
            "version = 1\n[plugins.a]\npath = \"a.so\"\n[plugins.b]\npath = \"sub/b.so\"\n\
             [plugins.c]\npath = \"/abs/c.so\"\n[plugins.d]\npath = \"./d.so\"\n",
        )
        .unwrap();
        let paths: Vec<_> = c.plugins.iter().map(|p| p.path.clone()).collect();
        assert_eq!(
            paths,
            [
                PathBuf::from("/bin/a.so"),
                PathBuf::from("/base/sub/b.so"),
                PathBuf::from("/abs/c.so"),
                PathBuf::from("/base/./d.so"),
            ]
        );
        // plugin_dir replaces the default folders; a relative one is from the file.
        let c = parse("version = 1\nplugin_dir = \"plugins\"\n[plugins.a]\npath = \"a.so\"\n[plugins.b]\npath = \"x/b.so\"\n")
            .unwrap();
        assert_eq!(c.plugins[0].path, PathBuf::from("/base/plugins/a.so"));
        assert_eq!(c.plugins[1].path, PathBuf::from("/base/x/b.so"));
        let c = parse("version = 1\nplugin_dir = \"/opt/kiln\"\n[plugins.a]\npath = \"a.so\"\n")
            .unwrap();
        assert_eq!(c.plugins[0].path, PathBuf::from("/opt/kiln/a.so"));
        assert!(parse("version = 1\nplugin_dir = \"\"\n")
            .unwrap_err()
            .to_string()
            .contains("plugin_dir is empty"));
    }
}
