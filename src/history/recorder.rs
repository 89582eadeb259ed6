//! Recording a history around real client calls.
//!
//! A [`Recorder`] is shared (in an `Arc`) by concurrent tokio tasks; each call runs one
//! [`Client`] operation, timing it on the recorder's clock and classifying how it ended,
//! and appends it to the history. Puts write a value unique in the history
//! (`c<client>-<sequence>`), so a read names exactly which write it returned.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::time::Instant;

use quorumkv_client::wire::ErrorKind;
use quorumkv_client::{Client, ClientError, FailureReason, ReadOptions, RepairMode, WriteOptions};

use super::{Action, Micros, Op, Outcome, Quorum};

/// A history being recorded by concurrent clients. Its clock is tokio's, so in a
/// simulation (paused clock) histories are in simulated time.
#[derive(Debug)]
pub struct Recorder {
    /// Time zero of the history.
    start: Instant,
    /// The operations so far, in completion order.
    ops: Mutex<Vec<Op>>,
    /// Makes every put's value unique.
    sequence: AtomicU64,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
            sequence: AtomicU64::new(0),
        }
    }
}

impl Recorder {
    /// Microseconds since the recorder was made.
    pub fn now(&self) -> Micros {
        self.start.elapsed().as_micros() as Micros
    }

    /// Puts a fresh unique value under `key` as `client`; returns the operation.
    pub async fn put(&self, client: &Client, who: usize, key: &str, options: &WriteOptions) -> Op {
        let value = format!("c{who}-{}", self.sequence.fetch_add(1, Ordering::Relaxed));
        let action = Action::Put { value: value.clone() };
        let quorum = write_quorum(client, options);
        let invoke = self.now();
        let result = client.put_with(key.to_string(), value, options).await;
        self.record_write(who, key, action, quorum, invoke, result)
    }

    /// Deletes `key` as `client`; returns the operation.
    pub async fn delete(&self, client: &Client, who: usize, key: &str, options: &WriteOptions) -> Op {
        let quorum = write_quorum(client, options);
        let invoke = self.now();
        let result = client.delete_with(key.to_string(), options).await;
        self.record_write(who, key, Action::Delete, quorum, invoke, result)
    }

    /// Reads `key` as `client`; returns the operation.
    pub async fn get(&self, client: &Client, who: usize, key: &str, options: &ReadOptions) -> Op {
        let plan = options.plan(&client.cluster().defaults, client.cluster().replication_factor);
        let quorum = plan.map_or(Quorum { n: 0, needed: 0 }, |p| Quorum {
            n: p.n,
            needed: p.needed,
        });
        let invoke = self.now();
        let result = client.get_with(key.to_string(), options).await;
        let outcome = match result {
            Ok(found) => Outcome::Read(found.map(|v| (String::from_utf8_lossy(&v.value).into_owned(), v.version))),
            // A failed read changes nothing (its repair writes only versions it read).
            Err(e) => Outcome::Failed(e.to_string()),
        };
        let action = Action::Get {
            blocking_repair: options.repair == RepairMode::Blocking,
        };
        self.push(who, key, action, quorum, invoke, outcome)
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the history so far.
    pub fn history(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn record_write(
        &self,
        who: usize,
        key: &str,
        action: Action,
        quorum: Quorum,
        invoke: Micros,
        result: Result<quorumkv_client::Version, ClientError>,
    ) -> Op {
        let outcome = match result {
            Ok(version) => Outcome::Written(version),
            Err(e) => classify_write_error(&e),
        };
        self.push(who, key, action, quorum, invoke, outcome)
    }

    fn push(&self, client: usize, key: &str, action: Action, quorum: Quorum, invoke: Micros, outcome: Outcome) -> Op {
        let op = Op {
            client,
            key: key.to_string(),
            action,
            quorum,
            invoke,
            complete: self.now(),
            outcome,
        };
        self.ops.lock().unwrap_or_else(PoisonError::into_inner).push(op.clone());
        op
    }
}

/// The quorum a write with `options` uses (n = 0 when the options are invalid: such a
/// write fails before sending and takes part in no quorum rule). A sloppy write may be
/// acknowledged by hints on fallback nodes, which a quorum read does not ask, so it
/// counts as needing no replica: P2 does not apply to it (as the README says), P1 does.
fn write_quorum(client: &Client, options: &WriteOptions) -> Quorum {
    let plan = options.plan(&client.cluster().defaults, client.cluster().replication_factor);
    plan.map_or(Quorum { n: 0, needed: 0 }, |p| Quorum {
        n: p.n,
        needed: if options.sloppy { 0 } else { p.needed },
    })
}

/// How a write that returned `error` ended: certainly not stored when nothing was sent,
/// or when every contacted replica answered and refused it before storing anything (see
/// `stored_nothing`); otherwise it may be stored somewhere.
pub fn classify_write_error(error: &ClientError) -> Outcome {
    let why = error.to_string();
    match error {
        ClientError::Unavailable {
            acked: 0,
            contacted,
            failures,
            ..
        } if failures.len() == *contacted && failures.iter().all(|f| stored_nothing(&f.reason)) => Outcome::Failed(why),
        ClientError::Unavailable { .. } => Outcome::Indeterminate(why),
        _ => Outcome::Failed(why),
    }
}

/// Whether a replica's failure means it stored nothing: a stale answer or a refusal of
/// the request itself (neither sends a hint). A storage error or a shutdown may come
/// after part of the work, so they count as unknown.
fn stored_nothing(reason: &FailureReason) -> bool {
    match reason {
        FailureReason::Stale { .. } => true,
        FailureReason::Refused(reply) => !matches!(reply.kind, ErrorKind::Storage | ErrorKind::ShuttingDown),
        FailureReason::Timeout | FailureReason::Unreachable(_) => false,
    }
}
