//! Log output of the `quorumkv` binary: which lines (`RUST_LOG`), how they look, and which
//! node wrote them.
//!
//! Every line goes to stderr. `RUST_LOG` chooses the lines with tracing-subscriber's
//! `EnvFilter` syntax (`info` when unset or invalid). The `log` records of fjall and its
//! LSM tree are bridged into the same output (tracing-log, installed by `init`). Colour
//! only when stderr is a terminal and `NO_COLOR` is unset, so a piped or redirected log
//! holds no escape codes.
//!
//! A node process puts its id in front of every line it writes, from whichever thread:
//! its runtime, its storage threads, the blocking pool and fjall's own worker threads,
//! which are spawned by fjall and cannot be reached by a span. That is why `quorumkv up`
//! runs one `quorumkv node` process per member ([`crate::local`]): the id is then a
//! property of the process, and no line can escape it.

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

/// Filter used when `RUST_LOG` is unset or cannot be parsed.
pub const DEFAULT_FILTER: &str = "info";

/// Separates the tag from the rest of a line (as in `docker compose` output).
pub const TAG_SEPARATOR: &str = " | ";

/// Installs the process's log output; `tag` (a node id, or `up`) starts every line.
pub fn init(tag: Option<&str>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let tagged = Tagged {
        prefix: tag.map(prefix).unwrap_or_default(),
        inner: format::Format::default().with_ansi(colour),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .event_format(tagged)
        .init();
}

/// What goes in front of a line written by the process tagged `tag`.
pub fn prefix(tag: &str) -> String {
    format!("{tag}{TAG_SEPARATOR}")
}

/// The default line format with a fixed prefix on every line, including the further
/// lines of a multi-line message (fjall logs some structures with `{:#?}`).
struct Tagged<F> {
    /// Written before every line; empty for untagged processes (client commands).
    prefix: String,
    /// The event's lines; carries its own colour setting, since the writer it gets here
    /// does not.
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Tagged<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            return self.inner.format_event(ctx, writer, event);
        }
        let mut lines = PrefixLines {
            out: &mut writer,
            prefix: &self.prefix,
            line_start: true,
        };
        self.inner.format_event(ctx, Writer::new(&mut lines), event)
    }
}

/// Writes text through to `out` with `prefix` at the start of every line.
struct PrefixLines<'a, 'w> {
    /// Where the text goes.
    out: &'a mut Writer<'w>,
    /// What starts each line.
    prefix: &'a str,
    /// Whether the next character starts a line.
    line_start: bool,
}

impl fmt::Write for PrefixLines<'_, '_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        for piece in text.split_inclusive('\n') {
            if self.line_start {
                self.out.write_str(self.prefix)?;
            }
            self.out.write_str(piece)?;
            self.line_start = piece.ends_with('\n');
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_a_message_gets_the_prefix() {
        let mut out = String::new();
        let mut writer = Writer::new(&mut out);
        let mut lines = PrefixLines {
            out: &mut writer,
            prefix: "n2 | ",
            line_start: true,
        };
        for piece in ["INFO map: Map(\n    {", "},\n", ")\n"] {
            fmt::Write::write_str(&mut lines, piece).unwrap();
        }
        assert_eq!(out, "n2 | INFO map: Map(\nn2 |     {},\nn2 | )\n");
    }
}
