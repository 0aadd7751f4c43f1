//! The `kiln` binary.

fn main() -> std::process::ExitCode {
    kiln::cli::main()
}
