//! `kiln plugins list [--json]`.

use super::{CliError, Globals};
use crate::plugins::{LoadOptions, PluginStatus, Status};

/// Plugin commands.
#[derive(clap::Subcommand, Debug)]
pub enum PluginsCommand {
    /// List the configured plugins and whether each loaded.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a plugins command.
pub fn run(g: &Globals, cmd: PluginsCommand) -> Result<(), CliError> {
    let PluginsCommand::List { json } = cmd;
    // Only the JSON listing shows each file's sha256, so only it pays for hashing.
    let app = g.app(LoadOptions { hash_all: json })?;
    if json {
        let rows: Vec<serde_json::Value> = app
            .plugin_statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id,
                    "path": s.path,
                    "sha256": s.sha256,
                    "version": s.version,
                    "api_version": s.api_version,
                    "schemes": s.schemes,
                    "status": s.status,
                    "reason": s.reason,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return failures(&app.plugin_statuses);
    }
    println!(
        "{:<28} {:<9} {:<9} {:<22} PATH",
        "ID", "STATUS", "VERSION", "SCHEMES"
    );
    for s in &app.plugin_statuses {
        let status = match s.status {
            Status::Loaded => "loaded",
            Status::Skipped => "skipped",
            Status::Disabled => "disabled",
            Status::Failed => "failed",
        };
        println!(
            "{:<28} {:<9} {:<9} {:<22} {}",
            s.id,
            status,
            s.version.as_deref().unwrap_or("-"),
            if s.schemes.is_empty() {
                "-".to_string()
            } else {
                s.schemes.join(",")
            },
            crate::text::escape(&s.path.display().to_string())
        );
        if let Some(r) = &s.reason {
            println!("    {}", crate::text::one_line(r));
        }
    }
    failures(&app.plugin_statuses)
}

/// A configuration error (exit code 2) naming every configured, enabled plugin that
/// failed to load (their reasons are in the listing above it), so that scripts and
/// service checks notice; `Ok` when none did. Skipped plugins (which asked to be left
/// out) and disabled ones are not failures.
fn failures(statuses: &[PluginStatus]) -> Result<(), CliError> {
    let failed: Vec<&str> = statuses
        .iter()
        .filter(|s| s.status == Status::Failed)
        .map(|s| s.id.as_str())
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(CliError::usage(format!(
        "{} configured plugin{} failed to load (see the listing for why): {}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        failed.join(", ")
    )))
}
