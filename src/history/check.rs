//! The checker: issue 14's promises P1-P4 over a recorded history, per key.
//!
//! - P1 no acknowledged write lost: after heal and convergence, a key's final record is
//!   at least as new as its newest acknowledged write, and every value read (or found
//!   at the end) was written by some put that did not fail, at the version that put got.
//! - P2 a read that starts after a write was acknowledged returns it or newer, when the
//!   two quorums intersect (same n, w + r > n).
//! - P3 replicas converge after heal: every replica's own copy of every key is equal,
//!   within a stated bound.
//! - P4 monotonic quorum reads: a read that starts after a read with blocking repair
//!   returned version v returns v or newer, when the two read quorums intersect.
//!
//! Pure synchronous code: times are in the history, final states are passed in.
//! "Not found" carries no version, so a read that returns it after a put was
//! acknowledged is accepted only when some delete of the key could be newer: an
//! acknowledged delete at a newer version, or a delete whose outcome is unknown that was
//! invoked before the read returned. That keeps the checker free of false alarms at the
//! price of missing a lost put hidden behind an indeterminate delete.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use quorumkv_client::{Record, Version};

use super::{Action, Op, OpId, Outcome};

/// Which promise a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// P1: a key's final record is older than an acknowledged write.
    P1LostWrite,
    /// P1: a value no successful write produced was read (or found at the end).
    P1ValueFromNowhere,
    /// P2: a read missed a write acknowledged before it started.
    P2StaleRead,
    /// P3: replicas still differ after heal, or took longer than the bound.
    P3NotConverged,
    /// P4: a read returned older than a blocking-repair read that finished before it.
    P4NonMonotonic,
    /// The history cannot be checked exactly: two writes of a key used the same value.
    DuplicateValue,
}

/// One broken promise, naming the key, the operations and the versions involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The promise.
    pub rule: Rule,
    /// The key (empty for a cluster-wide P3 timing violation).
    pub key: String,
    /// The operations involved, by index in the history.
    pub ops: Vec<OpId>,
    /// What happened, with each operation described.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} on key {:?}: {}", self.rule, self.key, self.detail)
    }
}

/// Checks P1 (values from nowhere), P2 and P4 over `history`.
pub fn check_history(history: &[Op]) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, ids) in by_key(history) {
        let keyed = Keyed::new(history, key, ids, &mut out);
        for &id in &keyed.ids {
            if let Outcome::Read(answer) = &history[id].outcome {
                keyed.check_read(id, answer.as_ref(), &mut out);
            }
        }
    }
    out
}

/// Checks P1 (no acknowledged write lost, no final value from nowhere) against each
/// key's final record after heal and convergence (`None`: absent). Pass every key of the
/// history: a missing key counts as absent.
pub fn check_final(history: &[Op], finals: &BTreeMap<String, Option<Record>>) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, ids) in by_key(history) {
        let keyed = Keyed::new(history, key, ids, &mut out);
        let newest_acked = keyed
            .ids
            .iter()
            .filter_map(|&id| Some((history[id].acked_version()?, id)))
            .max();
        let last = finals.get(key).cloned().flatten();
        if let Some(record) = &last {
            if let Some(value) = &record.value {
                let value = String::from_utf8_lossy(value);
                keyed.check_value(None, &value, record.version, Micros::MAX, &mut out);
            }
        }
        let Some((acked, write)) = newest_acked else { continue };
        let lost = match &last {
            Some(record) => record.version < acked,
            // Absent is right after a delete (its tombstone may be purged); after a put,
            // only a delete of unknown version could explain it.
            None => history[write].put_value().is_some() && !keyed.unknown_delete(),
        };
        if lost {
            let found = last.map_or("absent".to_string(), |r| format!("version {}", r.version));
            out.push(keyed.violation(
                Rule::P1LostWrite,
                vec![write],
                format!("final record is {found}, older than the write acknowledged at {acked}"),
            ));
        }
    }
    out
}

/// Checks P3: every replica's copy of each key (node id, copy) is the same, and they
/// converged within `bound` (`took`: from heal to the moment `copies` were all read).
pub fn check_convergence(
    copies: &BTreeMap<String, Vec<(String, Option<Record>)>>,
    took: Duration,
    bound: Duration,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, replicas) in copies {
        let first = replicas.first().map(|(_, copy)| copy);
        if replicas.iter().all(|(_, copy)| Some(copy) == first) {
            continue;
        }
        let held: Vec<String> = replicas
            .iter()
            .map(|(node, copy)| match copy {
                Some(r) if r.value.is_none() => format!("{node}: tombstone {}", r.version),
                Some(r) => format!("{node}: {}", r.version),
                None => format!("{node}: absent"),
            })
            .collect();
        out.push(Violation {
            rule: Rule::P3NotConverged,
            key: key.clone(),
            ops: Vec::new(),
            detail: format!("replicas differ {took:?} after heal: {}", held.join(", ")),
        });
    }
    if took > bound {
        out.push(Violation {
            rule: Rule::P3NotConverged,
            key: String::new(),
            ops: Vec::new(),
            detail: format!("replicas took {took:?} to converge after heal, over the bound of {bound:?}"),
        });
    }
    out
}

/// Same unit as [`super::Micros`]; `Micros::MAX` stands for "after the history ended".
type Micros = super::Micros;

/// Operation ids of each key, in history order.
fn by_key(history: &[Op]) -> BTreeMap<&str, Vec<OpId>> {
    let mut keys: BTreeMap<&str, Vec<OpId>> = BTreeMap::new();
    for (id, op) in history.iter().enumerate() {
        keys.entry(op.key.as_str()).or_default().push(id);
    }
    keys
}

/// The operations of one key, with its puts indexed by value.
struct Keyed<'a> {
    history: &'a [Op],
    key: &'a str,
    ids: Vec<OpId>,
    /// The put of each value.
    puts: HashMap<&'a str, OpId>,
}

impl<'a> Keyed<'a> {
    /// Indexes `ids`; reports values written twice.
    fn new(history: &'a [Op], key: &'a str, ids: Vec<OpId>, out: &mut Vec<Violation>) -> Keyed<'a> {
        let mut keyed = Keyed {
            history,
            key,
            ids,
            puts: HashMap::new(),
        };
        for &id in &keyed.ids {
            let Some(value) = history[id].put_value() else { continue };
            if let Some(first) = keyed.puts.insert(value, id) {
                let detail = format!("value {value:?} written twice, reads of it are ambiguous");
                out.push(keyed.violation(Rule::DuplicateValue, vec![first, id], detail));
            }
        }
        keyed
    }

    fn check_read(&self, read: OpId, answer: Option<&(String, Version)>, out: &mut Vec<Violation>) {
        let op = &self.history[read];
        if let Some((value, version)) = answer {
            self.check_value(Some(read), value, *version, op.complete, out);
        }
        let got = answer.map(|(_, v)| *v);
        let acked_before = self.newest_before(op, |earlier| {
            earlier.is_write() && earlier.quorum.n == op.quorum.n && earlier.acked_version().is_some()
        });
        if let Some((need, write)) = acked_before {
            let deleted = self.history[write].put_value().is_none();
            if !self.answer_covers(read, got, need, deleted) {
                let detail = format!("returned {} after a write acknowledged at {need}", shown(got));
                out.push(self.violation(Rule::P2StaleRead, vec![write, read], detail));
            }
        }
        let read_before = self.newest_before(op, |earlier| {
            matches!(earlier.action, Action::Get { blocking_repair: true })
                && earlier.quorum.n == op.quorum.n
                && matches!(earlier.outcome, Outcome::Read(Some(_)))
        });
        if let Some((need, earlier)) = read_before {
            if !self.answer_covers(read, got, need, false) {
                let detail = format!("returned {} after a blocking-repair read returned {need}", shown(got));
                out.push(self.violation(Rule::P4NonMonotonic, vec![earlier, read], detail));
            }
        }
    }

    /// The newest version among operations of this key that completed before `op` was
    /// invoked, whose quorum intersects `op`'s and that `relevant` selects.
    fn newest_before(&self, op: &Op, relevant: impl Fn(&Op) -> bool) -> Option<(Version, OpId)> {
        self.ids
            .iter()
            .map(|&id| (id, &self.history[id]))
            .filter(|(_, earlier)| earlier.complete < op.invoke)
            .filter(|(_, earlier)| earlier.quorum.needed + op.quorum.needed > op.quorum.n)
            .filter(|(_, earlier)| relevant(earlier))
            .filter_map(|(id, earlier)| Some((seen_version(earlier)?, id)))
            .max()
    }

    /// Whether a read's answer `got` is at least `need`: a version, or "not found" that
    /// a delete newer than `need` (or of unknown version) explains.
    fn answer_covers(&self, read: OpId, got: Option<Version>, need: Version, need_is_delete: bool) -> bool {
        match got {
            Some(version) => version >= need,
            None => need_is_delete || self.delete_may_explain(read, need),
        }
    }

    /// Whether some delete invoked before `read` returned may be newer than `need`.
    fn delete_may_explain(&self, read: OpId, need: Version) -> bool {
        let read = &self.history[read];
        self.deletes().any(|d| {
            d.invoke < read.complete
                && match d.outcome {
                    Outcome::Written(version) => version > need,
                    Outcome::Indeterminate(_) => true,
                    _ => false,
                }
        })
    }

    /// Whether a delete of this key has an unknown outcome (and so an unknown version).
    fn unknown_delete(&self) -> bool {
        self.deletes().any(|d| matches!(d.outcome, Outcome::Indeterminate(_)))
    }

    fn deletes(&self) -> impl Iterator<Item = &'a Op> + '_ {
        self.ids
            .iter()
            .map(|&id| &self.history[id])
            .filter(|op| op.action == Action::Delete)
    }

    /// P1: `value` at `version`, seen by `read` (or at the end) which returned at `seen_at`,
    /// must come from a put of this key that was invoked by then, did not fail, and (if
    /// acknowledged) got exactly `version`.
    fn check_value(
        &self,
        read: Option<OpId>,
        value: &str,
        version: Version,
        seen_at: Micros,
        out: &mut Vec<Violation>,
    ) {
        let where_ = if read.is_some() { "read" } else { "final record" };
        let Some(&put) = self.puts.get(value) else {
            let detail = format!("{where_} holds {value:?} at {version}, which no put of this key wrote");
            out.push(self.violation(Rule::P1ValueFromNowhere, read.into_iter().collect(), detail));
            return;
        };
        let op = &self.history[put];
        let problem = match op.outcome {
            _ if op.invoke > seen_at => Some("whose put started only after the read returned".to_string()),
            Outcome::Failed(_) => Some("whose put failed".to_string()),
            Outcome::Written(acked) if acked != version => Some(format!("whose put was acknowledged at {acked}")),
            _ => self
                .other_version_of(value, version, read)
                .map(|(other, at)| format!("which read #{other} returned at {at}: one write has one version")),
        };
        if let Some(problem) = problem {
            let detail = format!("{where_} holds {value:?} at {version}, {problem}");
            out.push(self.violation(
                Rule::P1ValueFromNowhere,
                [Some(put), read].into_iter().flatten().collect(),
                detail,
            ));
        }
    }

    /// An earlier read (before `read`, or any read for the final record) that returned
    /// `value` at a version other than `version`.
    fn other_version_of(&self, value: &str, version: Version, read: Option<OpId>) -> Option<(OpId, Version)> {
        self.ids
            .iter()
            .take_while(|&&id| read.is_none_or(|read| id < read))
            .find_map(|&id| match &self.history[id].outcome {
                Outcome::Read(Some((other, at))) if other == value && *at != version => Some((id, *at)),
                _ => None,
            })
    }

    fn violation(&self, rule: Rule, ops: Vec<OpId>, detail: String) -> Violation {
        let described: Vec<String> = ops.iter().map(|&id| format!("#{id} {}", self.history[id])).collect();
        Violation {
            rule,
            key: self.key.to_string(),
            detail: format!("{detail}; {}", described.join("; ")),
            ops,
        }
    }
}

/// The version an operation wrote (acknowledged) or read (found).
fn seen_version(op: &Op) -> Option<Version> {
    match &op.outcome {
        Outcome::Written(version) => Some(*version),
        Outcome::Read(Some((_, version))) => Some(*version),
        _ => None,
    }
}

fn shown(got: Option<Version>) -> String {
    got.map_or("not found".to_string(), |v| format!("version {v}"))
}
