//! `kiln config check [FILE]` and `kiln config default`.

use std::path::PathBuf;

use super::{CliError, Globals};
use crate::config::{Config, DEFAULT_CONFIG};
use crate::plugins::{LoadOptions, Status};

/// Configuration commands.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Parse and validate a configuration, then load its plugins.
    Check {
        /// The file to check (default: the one kiln would use).
        file: Option<PathBuf>,
    },
    /// Print the built-in default configuration.
    Default,
}

/// Runs a config command.
pub fn run(g: &Globals, cmd: ConfigCommand) -> Result<(), CliError> {
    match cmd {
        ConfigCommand::Default => {
            print!("{DEFAULT_CONFIG}");
            Ok(())
        }
        ConfigCommand::Check { file } => {
            let globals = Globals {
                config: file.or_else(|| g.config.clone()),
                root: g.root.clone(),
                max_level: g.max_level,
                progress: g.progress,
            };
            // Parse first, so that a bad file is reported before any plugin runs.
            let config = Config::load(globals.config.as_deref())?;
            let app = globals.app(LoadOptions {
                read_only: true,
                ..Default::default()
            })?;
            let count = |st: Status| {
                app.plugin_statuses
                    .iter()
                    .filter(|s| s.status == st)
                    .count()
            };
            println!(
                "{}: {} plugins: {} loaded, {} skipped, {} disabled, {} failed",
                config.source,
                app.plugin_statuses.len(),
                count(Status::Loaded),
                count(Status::Skipped),
                count(Status::Disabled),
                count(Status::Failed)
            );
            let failed: Vec<String> = app
                .plugin_statuses
                .iter()
                .filter(|s| s.status == Status::Failed)
                .map(|s| {
                    format!(
                        "{} ({}): {}",
                        s.id,
                        s.path.display(),
                        s.reason.as_deref().unwrap_or("")
                    )
                })
                .collect();
            if failed.is_empty() {
                return Ok(());
            }
            Err(CliError::usage(format!(
                "{}: {} plugin(s) failed to load: {}",
                config.source,
                failed.len(),
                failed.join("; ")
            )))
        }
    }
}
