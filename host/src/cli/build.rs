//! `kiln build FILE`.

use std::path::PathBuf;

use super::{CliError, Globals};

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
pub fn run(_g: &Globals, _a: BuildArgs) -> Result<(), CliError> {
    Err(CliError::failed("kiln build is not wired yet"))
}
