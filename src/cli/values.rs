//! Values in and out of the command line, byte for byte.
//!
//! `put` takes its value from the argument, from stdin (`-`) or from a file
//! (`--value-file`), and reads at most one byte more than the cluster's
//! `limits.max_value_bytes`, so an oversized value is refused before anything is sent
//! without reading all of it. `get` writes the value's raw bytes to `--output` or to
//! stdout; on stdout a newline follows only when stdout is a terminal, so that
//! `quorumkv get k > file` and pipes get exactly the stored bytes (what `cat` does for a
//! file), while a person at a terminal still gets their prompt on a line of its own.

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

/// Where `put` takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// The command line argument itself (UTF-8: argv cannot carry other bytes portably).
    Arg(String),
    /// Standard input, up to its end (the argument `-`).
    Stdin,
    /// A file, whole.
    File(PathBuf),
}

/// A value that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ValueError {
    /// Over the cluster's value limit; nothing was sent.
    #[error(
        "the value {from} is larger than the cluster's limit of {max} bytes (limits.max_value_bytes); nothing was sent"
    )]
    TooLarge {
        /// Where it came from, for the message.
        from: String,
        /// The limit.
        max: usize,
    },
    /// Reading it failed.
    #[error("cannot read the value {from}: {source}")]
    Read {
        /// Where it came from, for the message.
        from: String,
        /// Why.
        source: std::io::Error,
    },
}

impl ValueSource {
    /// The source the arguments name: `value` (where `-` means stdin) or `file`; clap
    /// makes sure exactly one is given.
    pub fn new(value: Option<String>, file: Option<PathBuf>) -> ValueSource {
        match (value, file) {
            (_, Some(path)) => ValueSource::File(path),
            (Some(dash), None) if dash == "-" => ValueSource::Stdin,
            (value, None) => ValueSource::Arg(value.unwrap_or_default()),
        }
    }

    /// Reads the value, refusing one over `max` bytes after reading at most `max + 1`.
    pub fn read(self, max: usize) -> Result<Bytes, ValueError> {
        let from = self.describe();
        let read = match self {
            ValueSource::Arg(value) => Ok(Bytes::from(value)),
            ValueSource::Stdin => read_at_most(std::io::stdin().lock(), max),
            ValueSource::File(path) => File::open(path).and_then(|file| read_at_most(file, max)),
        };
        let value = read.map_err(|source| ValueError::Read {
            from: from.clone(),
            source,
        })?;
        if value.len() > max {
            return Err(ValueError::TooLarge { from, max });
        }
        Ok(value)
    }

    /// Where the value comes from, for messages.
    fn describe(&self) -> String {
        match self {
            ValueSource::Arg(_) => "argument".into(),
            ValueSource::Stdin => "from stdin".into(),
            ValueSource::File(path) => format!("file {}", path.display()),
        }
    }
}

/// Everything `input` holds, but no more than `max + 1` bytes.
fn read_at_most(input: impl Read, max: usize) -> std::io::Result<Bytes> {
    let mut value = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    input.take(limit).read_to_end(&mut value)?;
    Ok(Bytes::from(value))
}

/// Writes `value` to `output`, or to stdout (with a newline after it when stdout is a
/// terminal).
pub fn write_value(value: &[u8], output: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    match output {
        Some(path) => std::fs::write(path, value).with_context(|| format!("cannot write {}", path.display())),
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(value).context("cannot write to stdout")?;
            if stdout.is_terminal() {
                stdout.write_all(b"\n").context("cannot write to stdout")?;
            }
            stdout.flush().context("cannot write to stdout")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ValueError, ValueSource};

    #[test]
    fn a_dash_reads_stdin_and_a_file_wins_over_nothing() {
        assert_eq!(ValueSource::new(Some("-".into()), None), ValueSource::Stdin);
        assert_eq!(ValueSource::new(Some("v".into()), None), ValueSource::Arg("v".into()));
        assert_eq!(ValueSource::new(None, Some("f".into())), ValueSource::File("f".into()));
    }

    #[test]
    fn a_file_at_the_limit_is_read_and_one_byte_more_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        let bytes: Vec<u8> = (0..=255u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(ValueSource::File(path.clone()).read(256).unwrap(), bytes);
        let refused = ValueSource::File(path).read(255);
        assert!(
            matches!(refused, Err(ValueError::TooLarge { max: 255, .. })),
            "{refused:?}"
        );
    }
}
