//! What anti-entropy has learned: when each partition last agreed with each other
//! replica, how many keys were repaired, and traffic totals.
//!
//! Written by both sides of a sync (the node that starts it and the node that answers
//! the roots), read by `status` and by tombstone purging, which may drop a tombstone only
//! once every other replica agreed with this node after the tombstone arrived.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use quorumkv_client::wire::AntiEntropyCounters;

/// Agreement state of one (partition, peer) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairState {
    /// When the two trees last had equal roots (µs, node clock).
    pub last_agreed_micros: Option<u64>,
    /// Keys repaired between the two, either direction.
    pub keys_repaired: u64,
}

/// Anti-entropy knowledge of one node.
#[derive(Default)]
pub struct Agreement {
    pairs: Mutex<HashMap<(u32, usize), PairState>>,
    rounds: AtomicU64,
    records_pulled: AtomicU64,
    /// Hints refused because the owner's hint store was full.
    pub hints_refused: AtomicU64,
}

impl Agreement {
    /// Partition `partition` was equal on this node and `peer` at `now`.
    pub fn agreed(&self, partition: u32, peer: usize, now: u64) {
        let mut pairs = self.lock();
        let state = pairs.entry((partition, peer)).or_default();
        state.last_agreed_micros = Some(state.last_agreed_micros.map_or(now, |t| t.max(now)));
    }

    /// `keys` keys of `partition` were repaired between this node and `peer`.
    pub fn repaired(&self, partition: u32, peer: usize, keys: u64) {
        self.lock().entry((partition, peer)).or_default().keys_repaired += keys;
    }

    /// The state of one pair.
    pub fn pair(&self, partition: u32, peer: usize) -> PairState {
        self.lock().get(&(partition, peer)).copied().unwrap_or_default()
    }

    /// Counts one sync round started by this node.
    pub fn round(&self) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts records this node's syncs pulled and applied.
    pub fn pulled(&self, records: u64) {
        self.records_pulled.fetch_add(records, Ordering::Relaxed);
    }

    /// Totals, with the byte counts of the anti-entropy connections.
    pub fn counters(&self, bytes_sent: u64, bytes_received: u64) -> AntiEntropyCounters {
        AntiEntropyCounters {
            rounds: self.rounds.load(Ordering::Relaxed),
            records_pulled: self.records_pulled.load(Ordering::Relaxed),
            bytes_sent,
            bytes_received,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, usize), PairState>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
