//! The `quorumkv` binary: see [`quorumkv::cli`]; its log output: [`quorumkv::logging`].

use std::process::ExitCode;

use clap::Parser;
use quorumkv::cli::{exit_code, parse_error, run, Cli};
use quorumkv::logging;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_error(e),
    };
    let prefix = cli.log_tag().map(logging::prefix).unwrap_or_default();
    logging::init(cli.log_tag());
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{prefix}error: {e:#}");
            exit_code(&e)
        }
    }
}
