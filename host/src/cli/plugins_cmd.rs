//! `kiln plugins list [--json]` and `kiln plugins show ID [--json]`.

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
    /// Show one plugin: its description, capabilities and the attributes it accepts.
    Show {
        /// The plugin's id, as configured (`io.kiln.source.v1.http`).
        id: String,
        /// Print a JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Loaded => "loaded",
        Status::Skipped => "skipped",
        Status::Disabled => "disabled",
        Status::Failed => "failed",
    }
}

/// One plugin as JSON (the `plugins list --json` row; `plugins show --json`).
fn to_json(s: &PluginStatus) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "path": s.path,
        "sha256": s.sha256,
        "version": s.version,
        "api_version": s.api_version,
        "schemes": s.schemes,
        "status": s.status,
        "reason": s.reason,
        "capabilities": s.capabilities,
        "max_concurrency": (s.max_concurrency != 0).then_some(s.max_concurrency),
        "attributes": s.attributes,
    })
}

/// Runs a plugins command.
pub fn run(g: &Globals, cmd: PluginsCommand) -> Result<(), CliError> {
    match cmd {
        PluginsCommand::List { json } => list(g, json),
        PluginsCommand::Show { id, json } => show(g, &id, json),
    }
}

fn list(g: &Globals, json: bool) -> Result<(), CliError> {
    // Only the JSON listing shows each file's sha256, so only it pays for hashing.
    let app = g.app(LoadOptions {
        hash_all: json,
        read_only: true,
    })?;
    if json {
        let rows: Vec<serde_json::Value> = app.plugin_statuses.iter().map(to_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
        return failures(&app.plugin_statuses);
    }
    println!(
        "{:<28} {:<9} {:<9} {:<22} PATH",
        "ID", "STATUS", "VERSION", "SCHEMES"
    );
    for s in &app.plugin_statuses {
        println!(
            "{:<28} {:<9} {:<9} {:<22} {}",
            s.id,
            status_name(s.status),
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

/// A configuration error (exit code 2, code `invalid_config`) naming every configured,
/// enabled plugin that failed to load (their reasons are in the listing printed before
/// it; with `--json` the error object follows the listing), so that scripts and
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
    let e = CliError::usage(format!(
        "{} configured plugin{} failed to load (see the listing for why): {}",
        failed.len(),
        if failed.len() == 1 { "" } else { "s" },
        failed.join(", ")
    ))
    .with_code("invalid_config");
    Err(match failed.as_slice() {
        [one] => e.with_plugin(*one),
        _ => e,
    })
}

fn show(g: &Globals, id: &str, json: bool) -> Result<(), CliError> {
    let app = g.app(LoadOptions {
        hash_all: true,
        read_only: true,
    })?;
    let Some(s) = app.plugin_statuses.iter().find(|s| s.id == id) else {
        let known: Vec<&str> = app.plugin_statuses.iter().map(|s| s.id.as_str()).collect();
        return Err(CliError::usage(format!(
            "no plugin {id:?} is configured (configured: {})",
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        ))
        .with_code("not_found")
        .with_plugin(id));
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(s)).expect("JSON")
        );
        return Ok(());
    }
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_string();
    println!("id:           {}", s.id);
    println!("status:       {}", status_name(s.status));
    if let Some(r) = &s.reason {
        println!("reason:       {r}");
    }
    println!("path:         {}", s.path.display());
    println!("sha256:       {}", or_dash(s.sha256.as_deref()));
    println!("version:      {}", or_dash(s.version.as_deref()));
    println!("api version:  {}", or_dash(s.api_version.as_deref()));
    println!("schemes:      {}", s.schemes.join(", "));
    println!("capabilities: {}", s.capabilities.join(", "));
    if s.max_concurrency != 0 {
        println!("concurrency:  {}", s.max_concurrency);
    }
    match &s.attributes.0 {
        None => println!("attributes:   not declared (the plugin checks its own)"),
        Some(specs) => {
            println!("attributes:");
            let width = specs.iter().map(|a| a.name.len()).max().unwrap_or(0);
            for a in specs {
                println!(
                    "  {:<width$}  {:<6}  {}",
                    a.name,
                    a.ty.name(),
                    a.description
                );
            }
        }
    }
    Ok(())
}
