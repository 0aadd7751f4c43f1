//! `kiln cache du [--json]` and `kiln cache prune [--all] [--keep-duration DUR]`.

use super::{CliError, Globals};

/// Cache commands.
#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Show disk usage of the cache.
    Du {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove unused cache data.
    Prune {
        /// Remove every snapshot and blob not used by a running build.
        #[arg(long)]
        all: bool,
        /// Keep data used within this duration (e.g. `24h`, `30m`, `7d`).
        #[arg(long, value_name = "DUR")]
        keep_duration: Option<String>,
    },
}

/// Runs a cache command.
pub fn run(_g: &Globals, _cmd: CacheCommand) -> Result<(), CliError> {
    Err(CliError::failed("cache commands are not wired yet"))
}
