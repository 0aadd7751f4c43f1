//! `kiln build FILE`.

use std::path::PathBuf;

use super::args::{parse_locals, read_secrets};
use super::{runtime, CliError, Globals};
use crate::export::OutputSpec;
use crate::plugins::LoadOptions;
use crate::solver::{run_build, BuildOptions};

/// Flags of `kiln build`.
#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// The build definition (TOML).
    pub file: PathBuf,
    /// Maps a local name to a directory, `NAME=DIR` (repeatable).
    #[arg(long = "local", value_name = "NAME=DIR")]
    pub locals: Vec<String>,
    /// A secret, `id=ID,src=FILE` or `id=ID,env=VAR` (repeatable).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// An output: `type=local,dest=DIR`, `type=tar,dest=FILE|-`, `type=oci,dest=FILE,name=REF`.
    #[arg(long = "output", short = 'o', value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Ignore the cache: run every step.
    #[arg(long)]
    pub no_cache: bool,
    /// Write the sources' identifiers and pins and the exported digest as JSON.
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// The default platform of image sources, `os/arch[/variant]`.
    #[arg(long)]
    pub platform: Option<String>,
}

/// Runs a build.
pub fn run(g: &Globals, a: BuildArgs) -> Result<(), CliError> {
    let outputs = a
        .outputs
        .iter()
        .map(|o| {
            o.parse::<OutputSpec>()
                .map_err(|e| CliError::usage(format!("--output {o:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = BuildOptions {
        file: a.file,
        locals: parse_locals(&a.locals)?,
        secrets: read_secrets(&a.secrets)?,
        outputs,
        no_cache: a.no_cache,
        metadata_file: a.metadata_file,
        platform: a.platform,
        progress: g.progress,
    };
    let app = g.app(LoadOptions::default())?;
    runtime()?
        .block_on(run_build(&app, opts))
        .map(|_| ())
        .map_err(CliError::from)
}
