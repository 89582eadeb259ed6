//! [`RequestMetrics`]: client requests served by this node, by operation and outcome,
//! with their latency.
//!
//! Counted on the replica side, where the node answers: from the moment the request was
//! decoded until its answer is handed to the stream's writer (for a write, after its
//! group commit). A node does not see quorums: the coordinator is the client library,
//! so a "quorum failure" shows here as the requests this node answered with an error or
//! not at all, and a "stale write" as `outcome="stale"` (a put older than the stored
//! version, answered with the newer one). Read repairs arrive as ordinary puts and are
//! counted with them. The cells are a fixed table of histograms indexed by operation and
//! outcome, so a request costs two clock reads and two atomic adds, no lock or
//! allocation.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;
use quorumkv_client::wire::{ErrorKind, Request, Response};

use super::histogram::AtomicHistogram;

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A read of a record.
    Get,
    /// A read of a version only (the digest reads of a quorum read).
    GetVersion,
    /// A write of a value.
    Put,
    /// A write of a tombstone.
    Delete,
    /// A record held for an unreachable replica.
    Hint,
    /// The member list.
    Members,
    /// A node's status.
    Status,
}

impl Op {
    const ALL: [Op; 7] = [
        Op::Get,
        Op::GetVersion,
        Op::Put,
        Op::Delete,
        Op::Hint,
        Op::Members,
        Op::Status,
    ];

    /// The operation of `request`.
    pub fn of(request: &Request) -> Op {
        match request {
            Request::Get { .. } | Request::GetOwn { .. } => Op::Get,
            Request::GetVersion { .. } => Op::GetVersion,
            Request::Put { record, .. } if record.is_tombstone() => Op::Delete,
            Request::Put { .. } => Op::Put,
            Request::PutHint { .. } => Op::Hint,
            Request::Members => Op::Members,
            Request::Status | Request::StatusSummary { .. } | Request::MoveStatus | Request::PartitionKeys { .. } => {
                Op::Status
            }
            Request::Layout | Request::ChangeLayout(_) => Op::Members,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::GetVersion => "get_version",
            Op::Put => "put",
            Op::Delete => "delete",
            Op::Hint => "hint",
            Op::Members => "members",
            Op::Status => "status",
        }
    }
}

/// How a request ended, as the node answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served: a record or version returned, a write or hint stored.
    Ok,
    /// A read of a key this node holds nothing or a tombstone for.
    NotFound,
    /// A write older than the stored version: not applied, answered with the newer one.
    Stale,
    /// Refused before storage: too large, clock skew, wrong ring epoch, unknown node,
    /// hint store full, malformed.
    Refused,
    /// Storage failed or the node is shutting down.
    Error,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ok,
        Outcome::NotFound,
        Outcome::Stale,
        Outcome::Refused,
        Outcome::Error,
    ];

    /// The outcome that `response` reports.
    pub fn of(response: &Response) -> Outcome {
        match response {
            Response::Record(Some(record)) if !record.is_tombstone() => Outcome::Ok,
            Response::Record(_) => Outcome::NotFound,
            Response::Version(Some(held)) if !held.tombstone => Outcome::Ok,
            Response::Version(_) => Outcome::NotFound,
            Response::Put { applied: false, .. } => Outcome::Stale,
            Response::Put { .. }
            | Response::Members(_)
            | Response::Status(_)
            | Response::StatusSummary(_)
            | Response::Layout(_)
            | Response::MoveStatus(_)
            | Response::PartitionKeys(_) => Outcome::Ok,
            Response::StaleLayout(_) => Outcome::Refused,
            Response::Error(e) => match e.kind {
                ErrorKind::Storage | ErrorKind::ShuttingDown => Outcome::Error,
                _ => Outcome::Refused,
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Stale => "stale",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
        }
    }
}

/// Latency histograms of client requests, one per (operation, outcome).
#[derive(Debug)]
pub struct RequestMetrics {
    /// Indexed by `op as usize * OUTCOMES + outcome as usize`.
    cells: Box<[AtomicHistogram]>,
}

/// Number of outcomes (the row length of [`RequestMetrics::cells`]).
const OUTCOMES: usize = Outcome::ALL.len();

impl Default for RequestMetrics {
    fn default() -> Self {
        let cells = (0..Op::ALL.len() * OUTCOMES)
            .map(|_| AtomicHistogram::latency())
            .collect();
        RequestMetrics { cells }
    }
}

impl RequestMetrics {
    /// Counts one request of `op` begun at `begun` and answered with `response`.
    pub fn observe(&self, op: Op, response: &Response, begun: Instant) {
        let nanos = u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.cell(op, Outcome::of(response)).observe(nanos);
    }

    fn cell(&self, op: Op, outcome: Outcome) -> &AtomicHistogram {
        &self.cells[op as usize * OUTCOMES + outcome as usize]
    }

    /// Every (operation, outcome) that has happened, with its histogram.
    fn seen(&self) -> impl Iterator<Item = ([(&'static str, &'static str); 2], &AtomicHistogram)> {
        let pairs = Op::ALL.into_iter().flat_map(|op| Outcome::ALL.map(|o| (op, o)));
        pairs
            .map(|(op, outcome)| {
                (
                    [("op", op.label()), ("outcome", outcome.label())],
                    self.cell(op, outcome),
                )
            })
            .filter(|(_, cell)| cell.count() > 0)
    }
}

impl Collector for RequestMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let help = "Client requests this node answered, by operation and outcome";
        let mut counter = encoder.encode_descriptor("requests", help, None, MetricType::Counter)?;
        for (labels, cell) in self.seen() {
            ConstCounter::new(cell.count()).encode(counter.encode_family(&labels)?)?;
        }
        let help = "Seconds from a request's arrival to its answer (writes: after their commit)";
        let mut histogram = encoder.encode_descriptor("request_duration_seconds", help, None, MetricType::Histogram)?;
        for (labels, cell) in self.seen() {
            cell.encode(histogram.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
