//! Exit codes of the command line, and which errors map to which (see the list in
//! [`super`]'s documentation, which `--help` repeats from [`EXIT_CODES`]).

use std::process::ExitCode;

use quorumkv_client::ClientError;

use super::values::ValueError;

/// Exit code of `get` when the key does not exist.
pub const EXIT_NOT_FOUND: u8 = 2;
/// Exit code of `cluster add|remove|replace|plan` when the cluster refuses the change
/// (nothing changed; the message says why, e.g. below the replication factor).
pub const EXIT_REFUSED: u8 = 3;
/// Exit code of a command line that is wrong (EX_USAGE of sysexits.h): nothing was sent.
pub const EXIT_USAGE: u8 = 64;

/// The exit codes, as `--help` lists them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0   success
  1   failure (no quorum, no node answered, a file error, ...): the message says why
  2   get: the key does not exist
  3   cluster add/remove/replace/plan: the change is refused (the message says why:
      below the replication factor, a move under way, ...); nothing changed
  64  usage error: bad arguments, options that cannot work, a key or value over the
      cluster's limits; nothing was sent";

/// A membership change the cluster refuses, with the reason (exits [`EXIT_REFUSED`]).
#[derive(Debug, thiserror::Error)]
#[error("refused: {0}")]
pub struct ChangeRefused(pub String);

/// A command line that is wrong, found after parsing (exits [`EXIT_USAGE`]).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints a command line clap could not parse (or `--help`, `--version`) and returns
/// the exit code: [`EXIT_USAGE`] for an error, success for help and version.
pub fn parse_error(error: clap::Error) -> ExitCode {
    let _ = error.print();
    match error.use_stderr() {
        true => ExitCode::from(EXIT_USAGE),
        false => ExitCode::SUCCESS,
    }
}

/// The exit code of a command that failed with `error`: [`EXIT_USAGE`] when the command
/// line is what is wrong (nothing was sent), [`EXIT_REFUSED`] for a refused membership
/// change, 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let usage = error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<ClientError>(),
            Some(ClientError::InvalidOptions(_) | ClientError::TooLarge { .. })
        ) || matches!(cause.downcast_ref::<ValueError>(), Some(ValueError::TooLarge { .. }))
            || cause.is::<UsageError>()
    });
    if usage {
        return ExitCode::from(EXIT_USAGE);
    }
    match error.chain().any(|cause| cause.is::<ChangeRefused>()) {
        true => ExitCode::from(EXIT_REFUSED),
        false => ExitCode::FAILURE,
    }
}
