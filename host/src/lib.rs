//! The kiln host: CLI, configuration, plugin loader, SourceManager, solver, worker,
//! store and exporters. The `kiln` binary is a thin wrapper around [`cli::main`].

pub mod build;
pub mod contenthash;
pub mod export;
pub mod progress;
pub mod solver;
pub mod store;
pub mod worker;
