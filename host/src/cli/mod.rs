//! The `kiln` command line (DESIGN §4): flags, dispatch, exit codes.
//!
//! Exit codes: 0 success; 1 the build or fetch failed; 2 usage or configuration error;
//! 130/143 cancelled by SIGINT/SIGTERM.

mod args;
mod build;
mod cache;
mod config_cmd;
mod plugins_cmd;
mod source;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

pub use args::{parse_key_value, parse_secret, SecretSpec};

use crate::app::AppContext;
use crate::config::Config;
use crate::plugins::LoadOptions;
pub use crate::progress::ProgressMode;

/// A command's failure: the message (one readable paragraph), the exit code, and for
/// scripts (`--json`) a code naming the kind of failure, and the plugin and step
/// concerned when there is one.
///
/// # Error codes and exit codes
///
/// With `--json` (or `--progress json`), a failing command prints
/// `{"error": {"code": CODE, "message": …, "plugin"?: ID, "step"?: NAME}}` on stdout
/// (and the same message as always on stderr); the exit code is the same as without it.
///
/// | `code` | exit code | meaning |
/// |---|---|---|
/// | `usage` | 2 | a flag or argument is wrong |
/// | `invalid_config` | 2 | `kiln.toml` (or a plugin's `config` table in it) is wrong |
/// | `invalid_definition` | 2 | the build definition is wrong (`step` names the step) |
/// | `invalid_identifier` | 2 | a source identifier or one of its attributes is wrong |
/// | `not_found` | 1 (2 for `plugins show` of an unknown id) | the thing named does not exist |
/// | `unauthorized` | 1 | credentials were refused or missing |
/// | `network` | 1 | a connection failed or timed out |
/// | `checksum_mismatch` | 1 | content did not match its expected digest |
/// | `cancelled` | 1 | the plugin call was cancelled |
/// | `unsupported` | 1 | the plugin does not support what was asked |
/// | `panicked` | 1 | the plugin panicked (it is poisoned for the rest of the run) |
/// | `internal` | 1 | a bug or an unexpected I/O failure |
/// | `failed` | 1 | a build step or the export failed (`step` names the step) |
#[derive(Debug)]
pub struct CliError {
    /// 1: the build or fetch failed; 2: usage or configuration error.
    pub code: u8,
    /// What went wrong, naming the step, source or file.
    pub message: String,
    /// The machine-readable kind (see the table above).
    pub kind: &'static str,
    /// The plugin concerned, if any.
    pub plugin: Option<String>,
    /// The build step concerned, if any.
    pub step: Option<String>,
}

impl CliError {
    /// A failure of the work itself (exit code 1, code `failed`).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
            kind: "failed",
            plugin: None,
            step: None,
        }
    }
    /// A usage error (exit code 2, code `usage`).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
            kind: "usage",
            plugin: None,
            step: None,
        }
    }
    /// Sets the machine-readable code.
    pub fn with_code(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }
    /// Names the plugin concerned.
    pub fn with_plugin(mut self, plugin: impl Into<String>) -> Self {
        self.plugin = Some(plugin.into());
        self
    }
    /// Names the step concerned.
    pub fn with_step(mut self, step: impl Into<String>) -> Self {
        self.step = Some(step.into());
        self
    }

    /// The `{"error": {…}}` object printed with `--json`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut e = serde_json::json!({ "code": self.kind, "message": self.message });
        if let Some(p) = &self.plugin {
            e["plugin"] = p.as_str().into();
        }
        if let Some(s) = &self.step {
            e["step"] = s.as_str().into();
        }
        serde_json::json!({ "error": e })
    }
}

/// The `code` of a plugin error code: `not found` → `not_found`.
fn plugin_code(code: kiln_plugin_api::ErrorCode) -> &'static str {
    use kiln_plugin_api::ErrorCode as C;
    match code.known() {
        C::INVALID_CONFIG => "invalid_config",
        C::INVALID_IDENTIFIER => "invalid_identifier",
        C::NOT_FOUND => "not_found",
        C::UNAUTHORIZED => "unauthorized",
        C::NETWORK => "network",
        C::CHECKSUM_MISMATCH => "checksum_mismatch",
        C::CANCELLED => "cancelled",
        C::UNSUPPORTED => "unsupported",
        C::SKIP => "skip",
        C::PANICKED => "panicked",
        _ => "internal",
    }
}

/// The plugin id in a host message of the form `… plugin ID: …` (how the
/// SourceManager prefixes every plugin error), for errors that arrive as text.
fn plugin_in(message: &str) -> Option<String> {
    message.match_indices("plugin ").find_map(|(i, m)| {
        let rest = &message[i + m.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))?;
        let id = &rest[..end];
        (rest[end..].starts_with(':') && id.contains('.')).then(|| id.to_string())
    })
}

/// The step of a solver message of the form "step `NAME`: …".
fn step_in(message: &str) -> Option<String> {
    let rest = message.strip_prefix("step `")?;
    rest.split_once("`: ").map(|(step, _)| step.to_string())
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::usage(e.to_string()).with_code("invalid_config")
    }
}

impl From<crate::source_manager::SourceError> for CliError {
    fn from(e: crate::source_manager::SourceError) -> Self {
        let base = if e.is_usage() {
            Self::usage(e.message)
        } else {
            Self::failed(e.message)
        };
        let base = base.with_code(plugin_code(e.code));
        match e.plugin {
            Some(p) => base.with_plugin(p),
            None => base,
        }
    }
}

impl From<crate::solver::BuildError> for CliError {
    fn from(e: crate::solver::BuildError) -> Self {
        use crate::solver::BuildError;
        let message = e.to_string();
        let mut out = match &e {
            BuildError::Definition(d) => {
                let c = Self::usage(message).with_code("invalid_definition");
                match d.step_name() {
                    Some(s) => c.with_step(s),
                    None => c,
                }
            }
            // The solver reports a step's source identifier errors as usage errors
            // that start with "step `NAME`: ".
            BuildError::Usage(m) => match step_in(m) {
                Some(step) => Self::usage(message)
                    .with_code("invalid_identifier")
                    .with_step(step),
                None => Self::usage(message),
            },
            BuildError::Step { step, .. } => Self::failed(message).with_step(step.as_str()),
            BuildError::Failed(m) => match step_in(m) {
                Some(step) => Self::failed(message).with_step(step),
                None => Self::failed(message),
            },
        };
        out.code = e.exit_code();
        out.plugin = plugin_in(&out.message);
        out
    }
}

/// kiln: a BuildKit-style build engine whose sources are plugins.
#[derive(Parser, Debug)]
#[command(name = "kiln", version, about, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: $KILN_CONFIG, $XDG_CONFIG_HOME/kiln/kiln.toml,
    /// /etc/kiln/kiln.toml, then the built-in default).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The kiln root (default: $KILN_ROOT, the config's root, /var/lib/kiln as root,
    /// else $XDG_DATA_HOME/kiln).
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Log level: error, warn, info, debug or trace (default: $KILN_LOG, else warn).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Progress output: auto, tty, plain, json or quiet.
    #[arg(long, global = true, default_value = "auto", value_name = "MODE")]
    pub progress: ProgressMode,
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Build a definition (a TOML DAG of steps).
    Build(build::BuildArgs),
    /// Resolve or fetch one source.
    #[command(subcommand)]
    Source(source::SourceCommand),
    /// Inspect the configured plugins.
    #[command(subcommand)]
    Plugins(plugins_cmd::PluginsCommand),
    /// Inspect or prune the cache.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
    /// Check or print the configuration.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
}

/// Global settings after parsing.
pub struct Globals {
    /// `--config`.
    pub config: Option<PathBuf>,
    /// `--root`.
    pub root: Option<PathBuf>,
    /// Max level forwarded from plugins (1 = error … 5 = trace).
    pub max_level: u8,
    /// `--progress`, with `auto` resolved.
    pub progress: ProgressMode,
}

impl Globals {
    /// Loads the configuration and the plugins.
    pub fn app(&self, opts: LoadOptions) -> Result<AppContext, CliError> {
        let config = Config::load(self.config.as_deref())?;
        let root = self.root_for(&config);
        Ok(AppContext::new(config, root, self.max_level, opts)?)
    }

    /// The root: `--root`, `$KILN_ROOT`, the config's `root`, then the default.
    pub fn root_for(&self, config: &Config) -> PathBuf {
        let root = self
            .root
            .clone()
            .or_else(|| {
                std::env::var_os("KILN_ROOT")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .or_else(|| config.root.clone())
            .unwrap_or_else(crate::config::default_root);
        std::path::absolute(&root).unwrap_or(root)
    }
}

fn level_number(level: &str) -> Option<u8> {
    Some(match level.to_ascii_lowercase().as_str() {
        "off" => 0,
        "error" => 1,
        "warn" | "warning" => 2,
        "info" => 3,
        "debug" => 4,
        "trace" => 5,
        _ => return None,
    })
}

fn init_logging(level: u8) {
    let filter = match level {
        0 => "off",
        1 => "error",
        2 => "warn",
        3 => "info",
        4 => "debug",
        _ => "trace",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true)
        .try_init();
}

/// Runs the command line; returns the process exit code.
pub fn main() -> ExitCode {
    // Before any thread starts: SIGINT/SIGTERM cancel the job (crate::signals).
    crate::signals::install();
    let parsed = Cli::command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m).map(|c| (c, m)));
    let (cli, matches) = match parsed {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let level_text = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("KILN_LOG").ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "warn".to_string());
    let Some(max_level) = level_number(&level_text) else {
        eprintln!("error: invalid log level {level_text:?} (expected error, warn, info, debug, trace or off)");
        return ExitCode::from(2);
    };
    init_logging(max_level);
    let progress = match cli.progress {
        ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Tty,
        ProgressMode::Auto => ProgressMode::Plain,
        m => m,
    };
    let globals = Globals {
        config: cli.config,
        root: cli.root,
        max_level,
        progress,
    };
    let json = wants_json(&matches) || progress == ProgressMode::Json;
    let result = match cli.command {
        Command::Build(a) => build::run(&globals, a),
        Command::Source(c) => source::run(&globals, c),
        Command::Plugins(c) => plugins_cmd::run(&globals, c),
        Command::Cache(c) => cache::run(&globals, c),
        Command::Config(c) => config_cmd::run(&globals, c),
    };
    if let Some(sig) = crate::signals::received() {
        // Whatever the command made of the cancellation, say what happened.
        eprintln!("error: cancelled by {}", crate::signals::name(sig));
        return ExitCode::from(crate::signals::exit_code(sig));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Scripts read the object on stdout; people (and logs) keep the line on
            // stderr. Errors echo identifiers, paths and server replies: cut and escaped.
            if json {
                println!("{}", e.to_json());
            }
            eprintln!("error: {}", crate::text::for_terminal(&e.message));
            ExitCode::from(e.code)
        }
    }
}

/// Whether the command given has `--json` set (found in the parsed arguments, so that
/// each subcommand keeps its own flag).
fn wants_json(m: &clap::ArgMatches) -> bool {
    match m.subcommand() {
        Some((_, sub)) => wants_json(sub),
        None => matches!(m.try_get_one::<bool>("json"), Ok(Some(true))),
    }
}

/// A multi-threaded tokio runtime for a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_errors_carry_code_plugin_and_step() {
        let e = CliError::failed("boom")
            .with_step("app")
            .with_plugin("io.x.y");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": {"code": "failed", "message": "boom", "plugin": "io.x.y", "step": "app"}})
        );
        let e: CliError = crate::solver::BuildError::Usage(
            "step `ctx`: source a://b: plugin io.kiln.source.v1.a: bad".into(),
        )
        .into();
        assert_eq!((e.code, e.kind), (2, "invalid_identifier"));
        assert_eq!(e.step.as_deref(), Some("ctx"));
        assert_eq!(e.plugin.as_deref(), Some("io.kiln.source.v1.a"));
        let e: CliError = crate::solver::BuildError::Usage("--local x=/nope: gone".into()).into();
        assert_eq!((e.code, e.kind, e.step), (2, "usage", None));
        assert_eq!(plugin_in("the plugin said: no"), None);
    }
}
