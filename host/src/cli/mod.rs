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

use clap::Parser;

pub use args::{parse_key_value, parse_secret, SecretSpec};

use crate::app::AppContext;
use crate::config::Config;
use crate::plugins::LoadOptions;
pub use crate::progress::ProgressMode;

/// A command's failure: the message (one readable paragraph) and the exit code.
#[derive(Debug)]
pub struct CliError {
    /// 1: the build or fetch failed; 2: usage or configuration error.
    pub code: u8,
    /// What went wrong, naming the step, source or file.
    pub message: String,
}

impl CliError {
    /// A failure of the work itself (exit code 1).
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: message.into(),
        }
    }
    /// A usage or configuration error (exit code 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: message.into(),
        }
    }
}

impl From<crate::config::ConfigError> for CliError {
    fn from(e: crate::config::ConfigError) -> Self {
        Self::usage(e.to_string())
    }
}

impl From<crate::source_manager::SourceError> for CliError {
    fn from(e: crate::source_manager::SourceError) -> Self {
        if e.is_usage() {
            Self::usage(e.message)
        } else {
            Self::failed(e.message)
        }
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
    let cli = match Cli::try_parse() {
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
            // Errors echo identifiers, paths and server replies: cut and escaped.
            eprintln!("error: {}", crate::text::for_terminal(&e.message));
            ExitCode::from(e.code)
        }
    }
}

/// A multi-threaded tokio runtime for a command.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failed(format!("cannot start the runtime: {e}")))
}
