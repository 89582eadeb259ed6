//! Merkle-tree anti-entropy: replicas find and repair their differences in the background.
//!
//! Every `anti_entropy_interval` (plus up to a quarter of jitter) a node compares, with
//! every peer that is up, the partitions both replicate. One sync with one peer:
//! 1. send the roots of all shared partitions; the peer answers with its inner-node
//!    hashes of the partitions whose roots differ (one round trip when in agreement);
//! 2. send our leaf hashes under the inner nodes that differ; the peer answers with its
//!    key/version lists of the leaves that differ;
//! 3. compare the lists ([`compare::plan`]) and, in batches of at most
//!    [`crate::peer::EXCHANGE_BYTES`], push our newer records and pull theirs.
//!
//! Record traffic is paced by a keys/s and bytes/s budget from cluster.toml, and uses
//! connections of its own, so repairs never sit in front of foreground requests.

mod agreement;
pub mod compare;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use agreement::Agreement;

use crate::context::NodeContext;
use crate::merkle::differing;
use crate::peer::{chunk_by_bytes, KeyedRecord, PeerRequest, PeerResponse, EXCHANGE_BYTES};
use crate::storage::StorageError;

/// Longest wait for one anti-entropy request.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why one sync stopped early (it is retried next round).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The peer did not answer in time or the connection broke.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer answered something unexpected or an error.
    #[error("peer answered {0}")]
    Unexpected(String),
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Paces record transfers: keys/s and bytes/s.
pub struct Budget {
    keys_per_sec: f64,
    bytes_per_sec: f64,
    /// When the next transfer may start.
    next_free: Mutex<Option<Instant>>,
}

impl Budget {
    /// A budget of `keys_per_sec` and `bytes_per_sec`.
    pub fn new(keys_per_sec: u64, bytes_per_sec: u64) -> Budget {
        Budget {
            keys_per_sec: keys_per_sec as f64,
            bytes_per_sec: bytes_per_sec as f64,
            next_free: Mutex::new(None),
        }
    }

    /// Waits until `keys` records of `bytes` bytes may be sent.
    pub async fn take(&self, keys: usize, bytes: usize) {
        let cost = (keys as f64 / self.keys_per_sec).max(bytes as f64 / self.bytes_per_sec);
        let start = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let start = next.map_or(now, |n| n.max(now));
            *next = Some(start + Duration::from_secs_f64(cost));
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// The anti-entropy task of one node.
pub struct AntiEntropy {
    ctx: Arc<NodeContext>,
    budget: Budget,
}

/// Keys to move in one sync, by partition.
#[derive(Default)]
struct Moves {
    push: Vec<(u32, Bytes)>,
    pull: Vec<(u32, Bytes)>,
}

impl AntiEntropy {
    /// Anti-entropy for the node of `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> AntiEntropy {
        let c = ctx.convergence;
        AntiEntropy {
            budget: Budget::new(c.anti_entropy_keys_per_sec, c.anti_entropy_bytes_per_sec),
            ctx,
        }
    }

    /// Runs rounds until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.ctx.convergence.anti_entropy_interval_ms);
        loop {
            let wait = interval + jitter(interval / 4, self.ctx.clock.now_micros() ^ self.ctx.me as u64);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            tokio::select! {
                _ = self.round() => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One round: a sync with every peer that is up.
    pub async fn round(&self) {
        if !self.ctx.storage.forest().is_ready() {
            return;
        }
        self.ctx.agreement.round();
        let mine = self.ctx.my_partitions();
        for peer in (0..self.ctx.ring.members().len()).filter(|p| *p != self.ctx.me) {
            if !self.ctx.detector.is_up(peer) {
                continue;
            }
            let shared: Vec<u32> = mine
                .iter()
                .copied()
                .filter(|p| self.ctx.ring.replicas(*p).contains(&peer))
                .collect();
            if let Err(e) = self.sync(peer, &shared).await {
                tracing::debug!("anti-entropy with {}: {e}", self.ctx.ring.members()[peer]);
            }
        }
    }

    async fn sync(&self, peer: usize, partitions: &[u32]) -> Result<(), SyncError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let forest = self.ctx.storage.forest();
        let roots = partitions.iter().map(|p| (*p, forest.root(*p))).collect();
        let request = PeerRequest::Roots {
            from: self.ctx.id.clone(),
            roots,
        };
        let differ = match self.call(peer, request).await? {
            PeerResponse::Inner { partitions } => partitions,
            PeerResponse::NotReady => return Ok(()),
            other => return Err(SyncError::Unexpected(format!("{other:?}"))),
        };
        let now = self.ctx.clock.now_micros();
        for p in partitions.iter().filter(|p| !differ.iter().any(|(d, _)| d == *p)) {
            self.ctx.agreement.agreed(*p, peer, now);
        }
        let mut leaves = Vec::new();
        for (partition, theirs) in differ {
            let inner = differing(&forest.inner(partition), &theirs);
            let under = forest.leaves_under(partition, &inner);
            leaves.extend(under.into_iter().map(|(leaf, hash)| (partition, leaf, hash)));
        }
        if leaves.is_empty() {
            return Ok(());
        }
        let moves = self.plan_moves(peer, leaves).await?;
        self.transfer(peer, moves).await
    }

    /// Compares our entries of every differing leaf with the peer's.
    async fn plan_moves(&self, peer: usize, leaves: Vec<(u32, u32, u64)>) -> Result<Moves, SyncError> {
        let theirs = match self.call(peer, PeerRequest::Leaves { leaves }).await? {
            PeerResponse::Entries { leaves } => leaves,
            other => return Err(SyncError::Unexpected(format!("{other:?}"))),
        };
        let shape = self.ctx.storage.forest().shape();
        let now = self.ctx.clock.now_micros();
        let grace = self.ctx.tombstone_grace().as_micros() as u64;
        let mut moves = Moves::default();
        for (partition, leaf, their_entries) in theirs {
            let (start, end) = shape.leaf_range(partition, leaf as usize);
            let mine = self.ctx.storage.entries(start, end).await?;
            let plan = compare::plan(&mine, &their_entries, now, grace);
            moves.push.extend(plan.push.into_iter().map(|k| (partition, k)));
            moves.pull.extend(plan.pull.into_iter().map(|k| (partition, k)));
        }
        Ok(moves)
    }

    /// Pushes our newer records and pulls the peer's, in budgeted batches.
    async fn transfer(&self, peer: usize, moves: Moves) -> Result<(), SyncError> {
        let mut repaired: HashMap<u32, u64> = HashMap::new();
        let partition_of: HashMap<Bytes, u32> = moves
            .push
            .iter()
            .chain(&moves.pull)
            .map(|(p, k)| (k.clone(), *p))
            .collect();
        let mut records = Vec::new();
        for (_, key) in &moves.push {
            if let Some(record) = self.ctx.storage.get(key.clone()).await? {
                records.push(KeyedRecord {
                    key: key.clone(),
                    record,
                });
            }
        }
        let pushed = records.len() as u64;
        for batch in chunk_by_bytes(records, EXCHANGE_BYTES) {
            let bytes = batch.iter().map(KeyedRecord::size).sum();
            self.budget.take(batch.len(), bytes).await;
            let keys: Vec<Bytes> = batch.iter().map(|r| r.key.clone()).collect();
            let (applied, _) = self.exchange(peer, batch, Vec::new()).await?;
            for (key, _) in keys.iter().zip(applied).filter(|(_, applied)| *applied) {
                *repaired.entry(partition_of.get(key).copied().unwrap_or(0)).or_default() += 1;
            }
        }
        let mut pulled = 0;
        for keys in moves.pull.chunks(PULL_BATCH) {
            let keys: Vec<Bytes> = keys.iter().map(|(_, k)| k.clone()).collect();
            let (_, records) = self.exchange(peer, Vec::new(), keys).await?;
            self.budget
                .take(records.len(), records.iter().map(KeyedRecord::size).sum())
                .await;
            for r in records {
                if self.ctx.storage.apply(r.key.clone(), r.record).await?.applied {
                    pulled += 1;
                    *repaired
                        .entry(partition_of.get(&r.key).copied().unwrap_or(0))
                        .or_default() += 1;
                }
            }
        }
        for (partition, keys) in repaired {
            self.ctx.agreement.repaired(partition, peer, keys);
        }
        self.ctx.agreement.moved(pushed, pulled);
        Ok(())
    }

    async fn exchange(
        &self,
        peer: usize,
        push: Vec<KeyedRecord>,
        pull: Vec<Bytes>,
    ) -> Result<(Vec<bool>, Vec<KeyedRecord>), SyncError> {
        match self.call(peer, PeerRequest::Exchange { push, pull }).await? {
            PeerResponse::Exchanged { applied, records } => Ok((applied, records)),
            other => Err(SyncError::Unexpected(format!("{other:?}"))),
        }
    }

    async fn call(&self, peer: usize, request: PeerRequest) -> Result<PeerResponse, SyncError> {
        match tokio::time::timeout(CALL_TIMEOUT, self.ctx.anti_entropy_peers.call(peer, request)).await {
            Ok(Ok(PeerResponse::Error(e))) => Err(SyncError::Unexpected(e)),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(SyncError::Unreachable(e.to_string())),
            Err(_) => Err(SyncError::Unreachable(format!("no answer within {CALL_TIMEOUT:?}"))),
        }
    }
}

/// Keys pulled per request (their records come back in one frame; values may be large,
/// so keep it modest).
const PULL_BATCH: usize = 64;

/// A pseudo-random duration in `[0, max)` from `seed` (no randomness source needed).
pub fn jitter(max: Duration, seed: u64) -> Duration {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(z % nanos)
}
