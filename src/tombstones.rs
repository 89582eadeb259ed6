//! Tombstone purging: forget a delete once it can no longer be undone.
//!
//! The rule. A tombstone for key `k` with version `v` that arrived on this node at `a` is
//! purged here once (a) `tombstone_grace` has passed since `a`, and (b) every other
//! replica of `k`'s partition was confirmed, by an anti-entropy comparison that started
//! after `a`, to hold for `k` either `v`, a newer version, or nothing at all. A comparison
//! confirms this through equal partition roots, equal Merkle leaves, or the peer's
//! key/version list of `k`'s leaf ([`crate::antientropy::compare::confirms_tombstones`]).
//!
//! Why "nothing" counts: a replica without the key either purged the tombstone (it made
//! the same checks) or never had the key, and an older value can only come back from a
//! replica that holds one, which (b) rules out. Why it must count: without it a replica
//! that purged first, or one wiped and refilled after the grace, would keep every other
//! replica's tombstone, and their partition out of agreement, for good.
//!
//! The other half, in anti-entropy: a tombstone whose version is older than the grace
//! is not pulled by a replica that lacks its key (absent and deleted read the same), so
//! purged tombstones do not come back. "Agreed" in `status` means equal roots: replicas
//! that differ only in expired tombstones agree again once each holder has purged them,
//! about one anti-entropy interval plus one purge pass after the grace.
//!
//! Every pass interval (a quarter of the grace, 0.2-60 s) a walk looks at every stored
//! tombstone, `PER_PASS` at a time, each batch continuing after the last key of the one
//! before, so steady deletes at the front of the hash order cannot starve the rest, and
//! however many tombstones pile up each is looked at once per walk.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::ring::key_hash;
use tokio_util::sync::CancellationToken;

use crate::context::NodeContext;
use crate::storage::{Storage, StorageError, Tombstone};

/// Tombstones read and examined per step of a walk.
const PER_PASS: usize = 10_000;
/// Purges handed to storage at once (they share group commits).
const PURGE_CONCURRENCY: usize = 256;
/// Fastest and slowest purge pass interval (a quarter of the grace period in between).
const MIN_PASS: Duration = Duration::from_millis(200);
const MAX_PASS: Duration = Duration::from_secs(60);

/// Purges eligible tombstones until `shutdown`: every `pass` interval, one walk over all
/// of them, `PER_PASS` at a time.
pub async fn purge_loop(ctx: Arc<NodeContext>, shutdown: CancellationToken) {
    let pass = (ctx.tombstone_grace() / 4).clamp(MIN_PASS, MAX_PASS);
    loop {
        tokio::select! {
            biased;
            _ = tokio::time::sleep(pass) => {}
            _ = shutdown.cancelled() => return,
        }
        let walk = purge_walk(&ctx);
        let outcome = tokio::select! {
            biased;
            outcome = walk => outcome,
            _ = shutdown.cancelled() => return,
        };
        match outcome {
            Ok(0) => {}
            Ok(purged) => tracing::info!("purged {purged} tombstones"),
            Err(e) => tracing::warn!("tombstone purge failed: {e}"),
        }
    }
}

/// One walk over every stored tombstone; returns how many it purged.
async fn purge_walk(ctx: &NodeContext) -> Result<u64, StorageError> {
    let (mut cursor, mut purged) = (None, 0);
    loop {
        let now = ctx.clock.now_micros();
        let eligible = |t: &Tombstone| purgeable(ctx, t, now);
        let (done, next) = purge_pass(ctx.storage.as_ref(), cursor.take(), PER_PASS, eligible).await?;
        purged += done;
        match next {
            Some(key) => cursor = Some(key),
            None => return Ok(purged),
        }
    }
}

/// Examines up to `per_pass` tombstones after key `after` and purges those `eligible`
/// accepts. Returns how many it purged and where the next pass starts (`None`: from the
/// first).
pub async fn purge_pass(
    storage: &dyn Storage,
    after: Option<Bytes>,
    per_pass: usize,
    eligible: impl Fn(&Tombstone) -> bool,
) -> Result<(u64, Option<Bytes>), StorageError> {
    let tombstones = storage.tombstones(after, per_pass).await?;
    let next = match tombstones.len() {
        n if n == per_pass => tombstones.last().map(|t| t.key.clone()),
        _ => None,
    };
    let chosen: Vec<&Tombstone> = tombstones.iter().filter(|t| eligible(t)).collect();
    let mut purged = 0;
    for chunk in chosen.chunks(PURGE_CONCURRENCY) {
        let purges = chunk.iter().map(|t| storage.purge(t.key.clone(), t.version));
        for outcome in join_all(purges).await {
            purged += outcome? as u64;
        }
    }
    Ok((purged, next))
}

fn purgeable(ctx: &NodeContext, tombstone: &Tombstone, now: u64) -> bool {
    let grace = ctx.tombstone_grace().as_micros() as u64;
    if now.saturating_sub(tombstone.arrived_micros) <= grace {
        return false;
    }
    let hash = key_hash(&tombstone.key);
    let shape = ctx.storage.forest().shape();
    let (partition, leaf) = (shape.partition(hash), shape.leaf(hash) as u32);
    let layout = ctx.layout();
    let mut others = layout.replicas(partition).into_iter().filter(|r| Some(*r) != layout.me);
    others.all(|peer| {
        let confirmed = ctx.agreement.confirmed(partition, peer, leaf);
        confirmed.is_some_and(|t| t > tombstone.arrived_micros)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::storage::{test_record, test_store};

    /// Steady deletes keep adding tombstones that are not eligible yet; they must not hide
    /// the eligible ones behind them in hash order from every pass.
    #[tokio::test]
    async fn passes_walk_every_tombstone_even_when_the_first_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        for i in 0..50u64 {
            store
                .apply(Bytes::from(format!("k{i}")), test_record(10, None))
                .await
                .unwrap();
        }
        let all = store.tombstones(None, 100).await.unwrap();
        assert_eq!(all.len(), 50);
        // The first 10 in hash order never become eligible (fresh deletes); the rest are.
        let fresh: HashSet<Bytes> = all[..10].iter().map(|t| t.key.clone()).collect();
        let eligible = |t: &Tombstone| !fresh.contains(&t.key);

        let mut cursor = None;
        for _ in 0..6 {
            let (_, next) = purge_pass(&store, cursor.take(), 10, eligible).await.unwrap();
            cursor = next;
        }
        let left: HashSet<Bytes> = store
            .tombstones(None, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.key)
            .collect();
        assert_eq!(left, fresh, "every eligible tombstone purged, the fresh ones kept");
    }

    #[tokio::test]
    async fn a_pass_wraps_round_after_the_last_tombstone() {
        let dir = tempfile::tempdir().unwrap();
        let store = test_store(dir.path());
        for i in 0..15u64 {
            store
                .apply(Bytes::from(format!("k{i}")), test_record(10, None))
                .await
                .unwrap();
        }
        let (_, next) = purge_pass(&store, None, 10, |_| false).await.unwrap();
        assert!(next.is_some(), "a full pass continues where it stopped");
        let (_, next) = purge_pass(&store, next, 10, |_| false).await.unwrap();
        assert_eq!(next, None, "a short pass starts the next one from the first");
    }
}
