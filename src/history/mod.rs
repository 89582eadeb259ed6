//! Histories of client operations, for checking what a cluster promised under faults.
//!
//! A history is the list of [`Op`]s that concurrent clients performed against a real
//! cluster: who did what to which key, when it started and ended (microseconds on one
//! clock, passed in by whoever records), and how it ended. Every write carries a value
//! unique in the history, so "which write did this read return" is exact. [`check`]
//! holds the pure checker of issue 14's promises P1-P4; [`recorder`] logs operations
//! around real [`quorumkv_client::Client`] calls. Test support, compiled into the library
//! (like [`crate::faults`]) so every test binary and a future simulation tier can use it.

pub mod check;
pub mod recorder;

use std::fmt;

use quorumkv_client::Version;

pub use check::{check_convergence, check_final, check_history, Rule, Violation};
pub use recorder::Recorder;

/// Microseconds since the start of a history, on the recorder's clock.
pub type Micros = u64;

/// An operation's index in its history.
pub type OpId = usize;

/// What an operation asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A put of a value unique in the history.
    Put {
        /// The value written.
        value: String,
    },
    /// A delete (a tombstone write).
    Delete,
    /// A quorum read.
    Get {
        /// Whether the read repaired stale replicas before returning
        /// ([`quorumkv_client::RepairMode::Blocking`]): only such reads promise P4.
        blocking_repair: bool,
    },
}

/// How many replicas a request contacted and how many answers it needed (w or r).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    /// Replicas contacted.
    pub n: usize,
    /// Acknowledgements (writes) or answers (reads) waited for.
    pub needed: usize,
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A write acknowledged by its quorum, at this version.
    Written(Version),
    /// A read's answer: the value and its version, or `None` for "not found" (never
    /// written, deleted, or its tombstone purged).
    Read(Option<(String, Version)>),
    /// The operation certainly took no effect (rejected before sending, or explicitly
    /// refused by every replica), with the reason.
    Failed(String),
    /// A write that timed out or missed its quorum: it may or may not be stored, and its
    /// version is unknown unless a read returns its value.
    Indeterminate(String),
}

/// One client operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// Which client (task) performed it.
    pub client: usize,
    /// The key.
    pub key: String,
    /// What it asked for.
    pub action: Action,
    /// Its quorum, so P2 and P4 apply only where quorums intersect.
    pub quorum: Quorum,
    /// When it was invoked.
    pub invoke: Micros,
    /// When it returned.
    pub complete: Micros,
    /// How it ended.
    pub outcome: Outcome,
}

impl Op {
    /// Whether this is a put or a delete.
    pub fn is_write(&self) -> bool {
        !matches!(self.action, Action::Get { .. })
    }

    /// The version of an acknowledged write.
    pub fn acked_version(&self) -> Option<Version> {
        match self.outcome {
            Outcome::Written(version) => Some(version),
            _ => None,
        }
    }

    /// The value a put wrote.
    pub fn put_value(&self) -> Option<&str> {
        match &self.action {
            Action::Put { value } => Some(value),
            _ => None,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match &self.action {
            Action::Put { value } => format!("put {value:?}"),
            Action::Delete => "delete".to_string(),
            Action::Get { blocking_repair: true } => "get (blocking repair)".to_string(),
            Action::Get { .. } => "get".to_string(),
        };
        let outcome = match &self.outcome {
            Outcome::Written(v) => format!("ok at {v}"),
            Outcome::Read(Some((value, v))) => format!("returned {value:?} at {v}"),
            Outcome::Read(None) => "returned not found".to_string(),
            Outcome::Failed(why) => format!("failed ({why})"),
            Outcome::Indeterminate(why) => format!("indeterminate ({why})"),
        };
        write!(
            f,
            "client {} {action} of {:?} (n={} needed={}) from {:.3} s to {:.3} s: {outcome}",
            self.client,
            self.key,
            self.quorum.n,
            self.quorum.needed,
            secs(self.invoke),
            secs(self.complete)
        )
    }
}

/// Microseconds as seconds, for reports.
fn secs(micros: Micros) -> f64 {
    micros as f64 / 1e6
}

/// Counts of a history, for a scenario's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Operations recorded.
    pub ops: usize,
    /// Acknowledged writes.
    pub acked_writes: usize,
    /// Writes that may or may not be stored.
    pub indeterminate: usize,
    /// Reads that returned an answer.
    pub reads: usize,
    /// Operations that certainly failed.
    pub failed: usize,
    /// Distinct keys.
    pub keys: usize,
}

impl Summary {
    /// Counts `history`.
    pub fn of(history: &[Op]) -> Summary {
        let mut keys: Vec<&str> = history.iter().map(|op| op.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        let count = |f: fn(&Outcome) -> bool| history.iter().filter(|op| f(&op.outcome)).count();
        Summary {
            ops: history.len(),
            acked_writes: count(|o| matches!(o, Outcome::Written(_))),
            indeterminate: count(|o| matches!(o, Outcome::Indeterminate(_))),
            reads: count(|o| matches!(o, Outcome::Read(_))),
            failed: count(|o| matches!(o, Outcome::Failed(_))),
            keys: keys.len(),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops on {} keys: {} acknowledged writes, {} indeterminate, {} reads, {} failed",
            self.ops, self.keys, self.acked_writes, self.indeterminate, self.reads, self.failed
        )
    }
}

#[cfg(test)]
mod tests;
