//! The `quorumkv` binary: see [`quorumkv::cli`]; its log output: [`quorumkv::logging`].

use std::process::ExitCode;

use clap::Parser;
use quorumkv::cli::{run, Cli};
use quorumkv::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let prefix = cli.log_tag().map(logging::prefix).unwrap_or_default();
    logging::init(cli.log_tag());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{prefix}error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
