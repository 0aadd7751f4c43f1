//! `kiln build FILE`.

use std::path::PathBuf;

use super::args::{parse_locals, parse_oci_layouts, parse_ssh, read_secrets};
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
    /// Maps an OCI image layout name to its directory, `NAME=DIR` (repeatable), for
    /// `oci-layout://NAME:TAG` and `oci-layout://NAME@sha256:…` sources.
    #[arg(long = "oci-layout", value_name = "NAME=DIR")]
    pub oci_layouts: Vec<String>,
    /// A secret, `id=ID,src=FILE` or `id=ID,env=VAR` (repeatable).
    #[arg(long = "secret", value_name = "SPEC")]
    pub secrets: Vec<String>,
    /// Forwards an ssh-agent socket as ID, `ID[=SOCKET]` (default: $SSH_AUTH_SOCK; repeatable).
    #[arg(long = "ssh", value_name = "ID[=SOCKET]")]
    pub ssh: Vec<String>,
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
            // The parse error already names the flag and its value.
            o.parse::<OutputSpec>()
                .map_err(|e| CliError::usage(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let opts = BuildOptions {
        file: a.file,
        locals: parse_locals(&a.locals)?,
        oci_layouts: parse_oci_layouts(&a.oci_layouts)?,
        ssh: parse_ssh(&a.ssh, std::env::var_os("SSH_AUTH_SOCK").as_deref())?,
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
