//! `kiln cache du [--json]`, `kiln cache prune [--all] [--keep-duration DUR]` and
//! `kiln cache verify [--repair] [--json]`.

use std::time::Duration;

use super::{CliError, Globals};
use crate::store::{DuReport, PruneOptions, Store};

/// Cache commands.
#[derive(clap::Subcommand, Debug)]
pub enum CacheCommand {
    /// Show disk usage of the cache.
    Du {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove unused cache data: always what dead builds left behind (staging
    /// directories, unrecorded snapshots, stale partial downloads); with `--all` every
    /// snapshot and blob no running build uses; with `--keep-duration` those unused
    /// for longer than DUR.
    Prune {
        /// Remove every snapshot and blob not used by a running build.
        #[arg(long)]
        all: bool,
        /// Remove data not used within this duration (e.g. `90s`, `30m`, `24h`, `7d`).
        #[arg(long, value_name = "DUR", value_parser = parse_duration)]
        keep_duration: Option<Duration>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check every blob against its digest and every snapshot against the content hash
    /// recorded when it was made. Exits 1 if anything failed (with `--repair`: if
    /// anything failed and could not be removed).
    Verify {
        /// Remove what failed, so that the next build fetches or builds it again.
        #[arg(long)]
        repair: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Parses `<number><unit>` with units s, m, h, d (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (expected e.g. 90s, 30m, 24h, 7d)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => {
            return Err(format!(
                "invalid duration unit {unit:?} in {s:?} (use s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(secs))
}

/// Runs a cache command.
pub fn run(g: &Globals, cmd: CacheCommand) -> Result<(), CliError> {
    // The cache commands need the root, not the plugins.
    let config = crate::config::Config::load(g.config.as_deref())?;
    let root = g.root_for(&config);
    // A root that was never set up (no database) holds nothing: `du` reports it empty
    // and creates nothing (opening the store would create the root and its database).
    if let CacheCommand::Du { json } = cmd {
        if !root.join("kiln.db").exists() {
            let r = DuReport {
                root: root.clone(),
                ..Default::default()
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
            } else {
                print!("{r}");
            }
            return Ok(());
        }
    }
    let store = Store::open(&root).map_err(|e| {
        CliError::failed(format!("cannot open the kiln root {}: {e}", root.display()))
    })?;
    let store_err =
        |e: crate::store::StoreError| CliError::failed(format!("store {}: {e}", root.display()));
    match cmd {
        CacheCommand::Du { json } => {
            let r = store.du().map_err(store_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
            } else {
                print!("{r}");
            }
        }
        CacheCommand::Prune {
            all,
            keep_duration,
            json,
        } => {
            let r = store
                .prune(PruneOptions { all, keep_duration })
                .map_err(store_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
            } else {
                print!("{r}");
            }
        }
        CacheCommand::Verify { repair, json } => {
            let r = store.verify(repair).map_err(store_err)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r).expect("JSON"));
            } else {
                print!("{}", crate::text::escape_lines(&r.to_string()));
            }
            let left = r
                .blobs_failed
                .iter()
                .chain(&r.snapshots_failed)
                .filter(|f| !f.removed)
                .count();
            if left > 0 {
                return Err(CliError::failed(format!(
                    "cache verify: {left} item(s) failed verification{}",
                    if repair {
                        " and could not be removed"
                    } else {
                        " (run `kiln cache verify --repair` to drop them)"
                    }
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("h").is_err());
    }
}
