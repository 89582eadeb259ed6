//! Prometheus metrics of one node, served at `GET /metrics` on its `metrics_addr`.
//!
//! Every node has its own [`prometheus_client::registry::Registry`], so nodes that share a
//! process (`quorumkv up`, the tests) never mix their numbers. What the hot paths count
//! is kept in atomics by their owners ([`RequestMetrics`] by the replica,
//! [`CommitMetrics`] by the storage writer, [`ServiceCounters`] by anti-entropy and hint
//! delivery); what the node already tracks for `status` (failure detector, agreement,
//! traffic, hints held, keys, disk) is read when scraped (`node::NodeCollector`).
//! Labels are bounded: operations, outcomes and member ids, never keys.

pub mod histogram;
pub mod http;
mod node;
pub mod requests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::registry::Registry;

use crate::context::NodeContext;
use histogram::{AtomicHistogram, COMMIT_SIZE_BOUNDS};
pub use requests::{Op, RequestMetrics};

/// Prefix of every metric name.
const PREFIX: &str = "quorumkv";

/// Group commits of the storage writer.
#[derive(Debug)]
pub struct CommitMetrics {
    /// Operations (writes, hints, purges) per commit.
    pub records: AtomicHistogram,
    /// Nanoseconds per commit: the fjall batch write plus, in `sync` mode, its fdatasync.
    pub duration: AtomicHistogram,
}

impl Default for CommitMetrics {
    fn default() -> Self {
        CommitMetrics {
            records: AtomicHistogram::new(&COMMIT_SIZE_BOUNDS, 1.0),
            duration: AtomicHistogram::latency(),
        }
    }
}

/// Roster indices with per-peer service counters (indices only grow as nodes join).
pub const COUNTED_PEERS: usize = 1024;

/// Per-peer counters of the background services, indexed by roster index.
#[derive(Debug)]
pub struct ServiceCounters {
    /// Anti-entropy syncs with each peer that completed.
    rounds_ok: Box<[AtomicU64]>,
    /// Anti-entropy syncs with each peer that failed (unreachable, bad answer).
    rounds_failed: Box<[AtomicU64]>,
    /// Hints delivered to each owner.
    hints_delivered: Box<[AtomicU64]>,
}

impl Default for ServiceCounters {
    fn default() -> Self {
        ServiceCounters::new()
    }
}

impl ServiceCounters {
    /// Counters for the first [`COUNTED_PEERS`] nodes of a roster (nodes beyond, which
    /// only a cluster that grew past that many ever has, are not counted).
    pub fn new() -> ServiceCounters {
        let zeros = || (0..COUNTED_PEERS).map(|_| AtomicU64::new(0)).collect();
        ServiceCounters {
            rounds_ok: zeros(),
            rounds_failed: zeros(),
            hints_delivered: zeros(),
        }
    }

    /// Counts one anti-entropy sync with `peer` that ended `ok` or not.
    pub fn round(&self, peer: usize, ok: bool) {
        let table = if ok { &self.rounds_ok } else { &self.rounds_failed };
        if let Some(counter) = table.get(peer) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `hints` hints delivered to `owner`.
    pub fn delivered(&self, owner: usize, hints: u64) {
        if let Some(counter) = self.hints_delivered.get(owner) {
            counter.fetch_add(hints, Ordering::Relaxed);
        }
    }

    /// Anti-entropy syncs started by this node with any peer, either outcome.
    pub fn rounds(&self) -> u64 {
        let sum = |t: &[AtomicU64]| t.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
        sum(&self.rounds_ok) + sum(&self.rounds_failed)
    }

    fn load(table: &[AtomicU64], peer: usize) -> u64 {
        table.get(peer).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The registry of one node: its request metrics and everything else read at scrape.
pub fn registry(ctx: Arc<NodeContext>, requests: Arc<RequestMetrics>) -> Registry {
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_collector(Box::new(requests));
    registry.register_collector(Box::new(node::NodeCollector::new(ctx)));
    registry
}
