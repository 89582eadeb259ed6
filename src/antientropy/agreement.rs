//! What anti-entropy has learned: when each partition last agreed with each other
//! replica, how many keys were repaired, and traffic totals.
//!
//! Written by both sides of a sync (the node that starts it and the node that answers
//! the roots), read by `status` and by tombstone purging, which may drop a tombstone only
//! once every other replica was confirmed to hold it, something newer, or nothing for its
//! key, by a comparison that started after the tombstone arrived (see
//! [`crate::tombstones`]). Besides whole partitions (equal roots), that confirmation is
//! kept per Merkle leaf, so a busy partition whose roots rarely match still lets its
//! tombstones go.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use quorumkv_client::wire::AntiEntropyCounters;

/// Agreement state of one (partition, peer) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PairState {
    /// When the two trees last had equal roots (µs, node clock).
    pub last_agreed_micros: Option<u64>,
    /// When a comparison last found the roots different (µs, node clock): the pair is
    /// in agreement now only if it agreed after that.
    pub last_differed_micros: Option<u64>,
    /// Keys repaired between the two, either direction.
    pub keys_repaired: u64,
}

/// Records moved between this node and its peers, since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordsMoved {
    /// Pulled by this node's syncs and applied.
    pub pulled: u64,
    /// Sent to peers in answer to their syncs' pulls.
    pub served: u64,
    /// Pushed here by peers (hint deliveries) and applied.
    pub pushed_in: u64,
}

/// Anti-entropy knowledge of one node.
#[derive(Default)]
pub struct Agreement {
    pairs: Mutex<HashMap<(u32, usize), PairState>>,
    /// Per (partition, peer): for each leaf, when a comparison that started then found
    /// that the peer holds, for every tombstone of this node in the leaf, that tombstone,
    /// something newer or nothing (µs, node clock; 0: never). Grown on demand.
    leaves: Mutex<HashMap<(u32, usize), Vec<u64>>>,
    records_pulled: AtomicU64,
    /// Records this node sent in answer to peers' pulls (their syncs).
    records_served: AtomicU64,
    /// Records peers pushed here and this node applied (hint deliveries: syncs only pull).
    records_pushed_in: AtomicU64,
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

    /// Partition `partition` was found different on this node and `peer` at `now`.
    pub fn differed(&self, partition: u32, peer: usize, now: u64) {
        let mut pairs = self.lock();
        let state = pairs.entry((partition, peer)).or_default();
        state.last_differed_micros = Some(state.last_differed_micros.map_or(now, |t| t.max(now)));
    }

    /// A comparison of `leaves` of `partition` with `peer`, started at `at`, confirmed
    /// every tombstone this node holds there (see the module doc).
    pub fn leaves_confirmed(&self, partition: u32, peer: usize, leaves: impl IntoIterator<Item = u32>, at: u64) {
        let mut all = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        let times = all.entry((partition, peer)).or_default();
        for leaf in leaves {
            let leaf = leaf as usize;
            if times.len() <= leaf {
                times.resize(leaf + 1, 0);
            }
            times[leaf] = times[leaf].max(at);
        }
    }

    /// The latest time at which `peer` was confirmed to hold, for every tombstone of
    /// this node in `leaf` of `partition`, that tombstone, something newer or nothing:
    /// through equal roots or through a comparison of that leaf.
    pub fn confirmed(&self, partition: u32, peer: usize, leaf: u32) -> Option<u64> {
        let by_root = self.pair(partition, peer).last_agreed_micros;
        let all = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        let by_leaf = all
            .get(&(partition, peer))
            .and_then(|times| times.get(leaf as usize))
            .copied()
            .filter(|t| *t > 0);
        by_root.max(by_leaf)
    }

    /// Whether the pair's last comparison found equal roots.
    pub fn in_agreement(&self, partition: u32, peer: usize) -> bool {
        let pair = self.pair(partition, peer);
        pair.last_agreed_micros > pair.last_differed_micros
    }

    /// `keys` keys of `partition` were repaired between this node and `peer`.
    pub fn repaired(&self, partition: u32, peer: usize, keys: u64) {
        self.lock().entry((partition, peer)).or_default().keys_repaired += keys;
    }

    /// The state of one pair.
    pub fn pair(&self, partition: u32, peer: usize) -> PairState {
        self.lock().get(&(partition, peer)).copied().unwrap_or_default()
    }

    /// Counts records this node's syncs pulled and applied.
    pub fn pulled(&self, records: u64) {
        self.records_pulled.fetch_add(records, Ordering::Relaxed);
    }

    /// Counts an exchange answered for a peer: `served` records sent for its pulls,
    /// `applied` of its pushed records stored.
    pub fn exchanged(&self, served: u64, applied: u64) {
        self.records_served.fetch_add(served, Ordering::Relaxed);
        self.records_pushed_in.fetch_add(applied, Ordering::Relaxed);
    }

    /// Since start: records this node's syncs pulled and applied, records it served to
    /// peers' pulls, and records peers pushed here (hints delivered) that it applied.
    pub fn records_moved(&self) -> RecordsMoved {
        RecordsMoved {
            pulled: self.records_pulled.load(Ordering::Relaxed),
            served: self.records_served.load(Ordering::Relaxed),
            pushed_in: self.records_pushed_in.load(Ordering::Relaxed),
        }
    }

    /// Totals, with the syncs started (counted per peer by
    /// [`crate::metrics::ServiceCounters`]) and the byte counts of the anti-entropy
    /// connections.
    pub fn counters(&self, rounds: u64, bytes_sent: u64, bytes_received: u64) -> AntiEntropyCounters {
        AntiEntropyCounters {
            rounds,
            records_pulled: self.records_pulled.load(Ordering::Relaxed),
            bytes_sent,
            bytes_received,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u32, usize), PairState>> {
        self.pairs.lock().unwrap_or_else(|p| p.into_inner())
    }
}
