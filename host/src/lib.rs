//! The kiln host: CLI, configuration, plugin loader, SourceManager, solver, worker,
//! store and exporters. The `kiln` binary is a thin wrapper around [`cli::main`].

pub mod app;
pub mod build;
pub mod cli;
pub mod config;
pub mod contenthash;
pub mod exec;
pub mod export;
pub mod job;
pub mod plugins;
pub mod progress;
pub mod signals;
pub mod solver;
pub mod source_cache;
pub mod source_manager;
pub mod store;
#[cfg(test)]
mod testutil;
pub mod text;
pub mod worker;
