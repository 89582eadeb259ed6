//! Merkle-tree anti-entropy: replicas find and repair their differences in the background.
//!
//! Every `anti_entropy_interval` (plus up to a quarter of jitter) a node compares, with
//! each peer that is up, the partitions both replicate; each peer has its own schedule,
//! so a peer that stops answering delays no other. One sync with one peer:
//! 1. send the roots of all shared partitions; the peer answers with its inner-node
//!    hashes of the partitions whose roots differ (one round trip when in agreement);
//! 2. send our leaf hashes under the inner nodes that differ; the peer answers with its
//!    key/version lists of the leaves that differ, in pages of at most
//!    [`crate::peer::ENTRIES_BYTES`] (a leaf too large for one answer is continued in the
//!    next), so no message grows with the data size or key length;
//! 3. after each answer, compare the lists ([`compare::pulls`]) and pull the peer's newer
//!    records in batches of at most [`crate::peer::EXCHANGE_BYTES`], each applied as one
//!    group commit (a record that fails the checks client writes get is logged and
//!    not applied); then ask for the next leaves.
//!
//! Roots go [`ROOTS_PER_REQUEST`] partitions at a time for the same reason. Each
//! comparison also records, per leaf, whether the peer confirmed this node's tombstones
//! there ([`compare::confirms_tombstones`]), which tombstone purging relies on. A sync
//! that fails is logged at WARN with the peer and the reason, and retried next time.
//!
//! A sync only pulls: the peer's own syncs pull what it lacks from us. (Pushing as well
//! made a node that missed writes receive every record once from each other replica.)
//!
//! Record traffic is paced by a keys/s and bytes/s budget from cluster.toml, and uses
//! connections of its own, so repairs never sit in front of foreground requests.

mod agreement;
pub mod compare;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use agreement::Agreement;

use crate::context::NodeContext;
use crate::merkle::{differing, INNER};
use crate::peer::{
    admit, chunk_by_bytes, log_refusals, KeyedRecord, LeafProbe, PeerRequest, PeerResponse, EXCHANGE_BYTES,
    LEAVES_PER_REQUEST, ROOTS_PER_REQUEST,
};
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

impl AntiEntropy {
    /// Anti-entropy for the node of `ctx`.
    pub fn new(ctx: Arc<NodeContext>) -> AntiEntropy {
        let c = ctx.convergence;
        AntiEntropy {
            budget: Budget::new(c.anti_entropy_keys_per_sec, c.anti_entropy_bytes_per_sec),
            ctx,
        }
    }

    /// Syncs with every peer until `shutdown`, each peer on its own schedule: a peer that
    /// stopped answering (and is not marked down yet) holds up only its own syncs, never
    /// those with the others. A node a layout change adds gets its schedule then.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut loops = futures_util::stream::FuturesUnordered::new();
        let mut started = 0;
        loop {
            let roster = self.ctx.layout().history.roster.len();
            for peer in started..roster {
                loops.push(self.peer_loop(peer, &shutdown));
            }
            started = started.max(roster);
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                _ = self.ctx.membership.changed() => {}
                _ = futures_util::StreamExt::next(&mut loops), if !loops.is_empty() => {}
            }
        }
    }

    /// Every `anti_entropy_interval` (plus jitter), a sync with `peer` if it is up, of
    /// the partitions both replicate in some layout in use.
    async fn peer_loop(&self, peer: usize, shutdown: &CancellationToken) {
        let interval = Duration::from_millis(self.ctx.convergence.anti_entropy_interval_ms);
        let seed = (self.ctx.id_hash() << 32) | peer as u64;
        loop {
            // A node refilling after it started empty, or pulling what a new layout gives
            // it, syncs as soon as the peer answers pings rather than after a whole
            // interval (see `crate::refill` and `crate::membership`).
            let wait = if self.ctx.refill.awaits(peer) || self.ctx.membership.awaits(peer) {
                Duration::from_millis(self.ctx.convergence.ping_interval_ms)
            } else {
                interval + jitter(interval / 4, self.ctx.clock.now_micros() ^ seed)
            };
            tokio::select! {
                biased;
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => return,
            }
            let layout = self.ctx.layout();
            if layout.me == Some(peer) || !self.ctx.storage.forest().is_ready() || !self.ctx.detector.is_up(peer) {
                continue;
            }
            let mut shared = layout.shared_with(peer);
            // Each peer's syncs start at a different place, so a node refilling from several
            // peers at once pulls different partitions from each instead of every key twice.
            let members = layout.history.roster.len().max(1);
            let start = shared.len() * peer / members;
            shared.rotate_left(start);
            if shared.is_empty() {
                continue;
            }
            tokio::select! {
                biased;
                synced = self.sync(peer, &shared) => {
                    self.ctx.counters.round(peer, synced.is_ok());
                    if let Err(e) = synced {
                        tracing::warn!("anti-entropy with {} failed: {e}", layout.id(peer));
                    }
                },
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// Compares `partitions` with `peer`, [`ROOTS_PER_REQUEST`] at a time, and pulls
    /// what the peer holds newer.
    async fn sync(&self, peer: usize, partitions: &[u32]) -> Result<(), SyncError> {
        let generation = self.ctx.membership.pull_generation();
        for chunk in partitions.chunks(ROOTS_PER_REQUEST) {
            let compared = self.sync_partitions(peer, chunk, Direction::Pull).await?;
            // Everything the peer held in them when the sync began is now here too.
            self.ctx.refill.synced(&compared, peer);
            self.ctx.membership.synced(&compared, peer, generation);
        }
        Ok(())
    }

    /// Waits until `keys` records of `bytes` bytes fit the anti-entropy budget (for
    /// other bulk work on records, such as dropping a partition).
    pub async fn pace(&self, keys: usize, bytes: usize) {
        self.budget.take(keys, bytes).await
    }

    /// Hands `partition`, which this node no longer replicates, off to `peer`, one of its
    /// replicas: compares it as a sync does and pushes every record this node holds
    /// newer. Afterwards the peer holds everything this node held when it began.
    pub async fn hand_off(&self, peer: usize, partition: u32) -> Result<(), SyncError> {
        self.sync_partitions(peer, &[partition], Direction::Push)
            .await
            .map(|_| ())
    }

    /// One comparison of `partitions` with `peer`, moving the newer records `direction`;
    /// returns the partitions compared in full.
    async fn sync_partitions(
        &self,
        peer: usize,
        partitions: &[u32],
        direction: Direction,
    ) -> Result<Vec<u32>, SyncError> {
        let forest = self.ctx.storage.forest();
        let roots = partitions.iter().map(|p| (*p, forest.root(*p))).collect();
        let request = PeerRequest::Roots {
            from: self.ctx.id.clone(),
            roots,
        };
        let asked = self.ctx.clock.now_micros();
        let differ = match self.call(peer, request).await? {
            PeerResponse::Inner { partitions } => partitions,
            PeerResponse::NotReady => return Ok(Vec::new()),
            other => return Err(SyncError::Unexpected(format!("{other:?}"))),
        };
        let equal: Vec<u32> = partitions
            .iter()
            .copied()
            .filter(|p| !differ.iter().any(|(d, _)| d == p))
            .collect();
        for &p in &equal {
            self.ctx.agreement.agreed(p, peer, asked);
        }
        let compared: Vec<u32> = differ
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| partitions.contains(p))
            .collect();
        let shape = forest.shape();
        let mut probes = Vec::new();
        for (partition, theirs) in differ.into_iter().filter(|(p, _)| partitions.contains(p)) {
            self.ctx.agreement.differed(partition, peer, asked);
            let inner = differing(&forest.inner(partition), &theirs);
            let equal_inner = (0..INNER).filter(|i| !inner.contains(i));
            let equal_leaves =
                equal_inner.flat_map(|i| i * shape.leaves_per_inner()..(i + 1) * shape.leaves_per_inner());
            self.ctx
                .agreement
                .leaves_confirmed(partition, peer, equal_leaves.map(|l| l as u32), asked);
            for (leaf, hash) in forest.leaves_under(partition, &inner) {
                let (from, _) = shape.leaf_range(partition, leaf as usize);
                probes.push(LeafProbe {
                    partition,
                    leaf,
                    hash,
                    from,
                });
            }
        }
        self.compare_leaves(peer, probes, direction).await?;
        Ok(equal.into_iter().chain(compared).collect())
    }

    /// Asks the peer for its entries of the probed leaves, [`LEAVES_PER_REQUEST`] at a
    /// time and in pages it bounds, and pulls what it holds newer after each answer, so
    /// neither a message nor this node's memory grows with the data.
    async fn compare_leaves(&self, peer: usize, probes: Vec<LeafProbe>, direction: Direction) -> Result<(), SyncError> {
        let shape = self.ctx.storage.forest().shape();
        let grace = self.ctx.tombstone_grace().as_micros() as u64;
        let mut queue: VecDeque<LeafProbe> = probes.into();
        while !queue.is_empty() {
            let batch: Vec<LeafProbe> = queue.drain(..queue.len().min(LEAVES_PER_REQUEST)).collect();
            let asked = self.ctx.clock.now_micros();
            let (pages, unserved) = match self.call(peer, PeerRequest::Leaves { leaves: batch.clone() }).await? {
                PeerResponse::Entries { leaves, unserved } => (leaves, unserved),
                other => return Err(SyncError::Unexpected(format!("{other:?}"))),
            };
            // Leaves the answer mentions, and the probes it answers (hashed: a batch and
            // its answer hold thousands of each).
            let answered: HashSet<(u32, u32)> = pages
                .iter()
                .map(|p| (p.partition, p.leaf))
                .chain(unserved.iter().map(|u| (u.partition, u.leaf)))
                .collect();
            let probed: HashSet<(u32, u32, u64)> = batch.iter().map(|b| (b.partition, b.leaf, b.from)).collect();
            if pages.is_empty() && unserved.len() >= batch.len() {
                return Err(SyncError::Unexpected(
                    "an answer to leaf probes that served none".into(),
                ));
            }
            // Probes neither served nor left for later were equal on the peer.
            let equal = batch
                .iter()
                .filter(|probe| !answered.contains(&(probe.partition, probe.leaf)));
            for probe in equal.filter(|probe| probe.from == shape.leaf_range(probe.partition, probe.leaf as usize).0) {
                self.ctx
                    .agreement
                    .leaves_confirmed(probe.partition, peer, [probe.leaf], asked);
            }
            for probe in unserved.into_iter().rev() {
                queue.push_front(probe);
            }
            let now = self.ctx.clock.now_micros();
            let mut pulls = Vec::new();
            for page in pages {
                let asked_for = probed.contains(&(page.partition, page.leaf, page.from));
                let (start, end) = shape.leaf_range(page.partition, page.leaf as usize);
                if !asked_for || page.through < page.from || page.through > end {
                    return Err(SyncError::Unexpected(format!(
                        "a page of leaf {} of partition {} that was not asked for",
                        page.leaf, page.partition
                    )));
                }
                let mine = self
                    .ctx
                    .storage
                    .entries(page.from, page.through, usize::MAX)
                    .await?
                    .entries;
                // Only a leaf compared in one page confirms tombstones: the pages of a
                // larger leaf are answered at different times.
                if (page.from, page.through) == (start, end) && compare::confirms_tombstones(&mine, &page.entries) {
                    self.ctx
                        .agreement
                        .leaves_confirmed(page.partition, peer, [page.leaf], asked);
                }
                let wanted = match direction {
                    Direction::Pull => compare::pulls(&mine, &page.entries, now, grace),
                    Direction::Push => compare::pulls(&page.entries, &mine, now, grace),
                };
                pulls.extend(wanted.into_iter().map(|k| (page.partition, k)));
            }
            match direction {
                Direction::Pull => self.transfer(peer, pulls).await?,
                Direction::Push => self.push(peer, pulls).await?,
            }
        }
        Ok(())
    }

    /// Pulls the peer's newer records in budgeted batches and applies each batch at once
    /// (one group commit per batch).
    async fn transfer(&self, peer: usize, pulls: Vec<(u32, Bytes)>) -> Result<(), SyncError> {
        let partition_of: HashMap<Bytes, u32> = pulls.iter().map(|(p, k)| (k.clone(), *p)).collect();
        let mut repaired: HashMap<u32, u64> = HashMap::new();
        let mut queue: Vec<Bytes> = pulls.into_iter().map(|(_, k)| k).collect();
        let mut pulled = 0;
        while !queue.is_empty() {
            let keys: Vec<Bytes> = queue.drain(..pull_batch_len(&queue)).collect();
            let (records, unserved) = self.pull(peer, keys).await?;
            if records.is_empty() && !unserved.is_empty() {
                return Err(SyncError::Unexpected("the peer served none of the pulled keys".into()));
            }
            queue.extend(unserved);
            self.budget
                .take(records.len(), records.iter().map(KeyedRecord::size).sum())
                .await;
            let records = self.admit(peer, records);
            let keys: Vec<Bytes> = records.iter().map(|r| r.key.clone()).collect();
            let applies = records.into_iter().map(|r| self.ctx.storage.apply(r.key, r.record));
            for (key, outcome) in keys.iter().zip(futures_util::future::join_all(applies).await) {
                if outcome?.applied {
                    pulled += 1;
                    *repaired.entry(partition_of.get(key).copied().unwrap_or(0)).or_default() += 1;
                }
            }
        }
        for (partition, keys) in repaired {
            self.ctx.agreement.repaired(partition, peer, keys);
        }
        self.ctx.agreement.pulled(pulled);
        Ok(())
    }

    /// Sends this node's records of `keys` to the peer in budgeted batches (it applies
    /// each only if newer).
    async fn push(&self, peer: usize, keys: Vec<(u32, Bytes)>) -> Result<(), SyncError> {
        let mut records = Vec::with_capacity(keys.len());
        for (_, key) in keys {
            if let Some(record) = self.ctx.storage.get(key.clone()).await? {
                records.push(KeyedRecord { key, record });
            }
        }
        for batch in chunk_by_bytes(records, EXCHANGE_BYTES) {
            self.budget
                .take(batch.len(), batch.iter().map(KeyedRecord::size).sum())
                .await;
            let request = PeerRequest::Exchange {
                push: batch,
                pull: Vec::new(),
            };
            match self.call(peer, request).await? {
                PeerResponse::Exchanged { .. } => {}
                other => return Err(SyncError::Unexpected(format!("{other:?}"))),
            }
        }
        Ok(())
    }

    /// The pulled records that pass the checks a client write passes; the others are
    /// logged at WARN and left out (a far-future version must not spread by repair).
    fn admit(&self, peer: usize, records: Vec<KeyedRecord>) -> Vec<KeyedRecord> {
        let pulled = records.len();
        let (admitted, refused) = admit(records, &self.ctx.limits, self.ctx.clock.now_micros());
        let from = format!("pulled from {} by anti-entropy", self.ctx.layout().id(peer));
        log_refusals(&refused, pulled, &from);
        admitted.into_iter().flatten().collect()
    }

    /// The records of `keys` the peer holds, and the keys it left for a later request.
    async fn pull(&self, peer: usize, keys: Vec<Bytes>) -> Result<(Vec<KeyedRecord>, Vec<Bytes>), SyncError> {
        match self
            .call(
                peer,
                PeerRequest::Exchange {
                    push: Vec::new(),
                    pull: keys,
                },
            )
            .await?
        {
            PeerResponse::Exchanged { records, unserved, .. } => Ok((records, unserved)),
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

/// Which way a comparison moves records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Fetch what the peer holds newer (a sync).
    Pull,
    /// Send what this node holds newer (a hand-off before a partition is dropped).
    Push,
}

/// Most keys pulled per request; the peer answers with at most
/// [`crate::peer::EXCHANGE_BYTES`] of records and says which keys it left for later.
const PULL_BATCH: usize = 1024;
/// Most key bytes in one pull request (however long keys are allowed to be).
const PULL_KEY_BYTES: usize = 1 << 20;

/// How many keys from the front of `queue` go into the next pull request: up to
/// [`PULL_BATCH`] keys and [`PULL_KEY_BYTES`] of keys, and always at least one.
fn pull_batch_len(queue: &[Bytes]) -> usize {
    let mut bytes = 0;
    let fits = queue.iter().take(PULL_BATCH).take_while(|key| {
        bytes += key.len();
        bytes <= PULL_KEY_BYTES
    });
    fits.count().max(1).min(queue.len())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_requests_are_bounded_by_keys_and_bytes_and_never_empty() {
        let short: Vec<Bytes> = (0..3000).map(|i| Bytes::from(format!("k{i}"))).collect();
        assert_eq!(pull_batch_len(&short), PULL_BATCH);
        let long: Vec<Bytes> = (0..10).map(|_| Bytes::from(vec![b'k'; 300 << 10])).collect();
        assert_eq!(pull_batch_len(&long), 3, "3 keys of 300 KiB fit in 1 MiB");
        let huge = vec![Bytes::from(vec![b'k'; 2 << 20])];
        assert_eq!(pull_batch_len(&huge), 1, "a key larger than the budget goes alone");
        assert_eq!(pull_batch_len(&[]), 0);
    }
}
