//! Tombstone purging: forget a delete once it can no longer be undone.
//!
//! A tombstone is dropped only when (a) it has been stored here longer than
//! `tombstone_grace` and (b) every other replica of its partition agreed with this node
//! (equal Merkle roots, learned through anti-entropy) after it arrived here, so every
//! replica holds it or something newer. Anti-entropy never sends a tombstone older than
//! the grace period to a replica that lacks the key, so a purged tombstone does not come
//! back, and neither does the deleted value.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::NodeContext;
use crate::storage::Tombstone;

/// Tombstones examined per pass.
const PER_PASS: usize = 10_000;
/// Fastest and slowest purge pass interval (a quarter of the grace period in between).
const MIN_PASS: Duration = Duration::from_millis(200);
const MAX_PASS: Duration = Duration::from_secs(60);

/// Purges eligible tombstones until `shutdown`.
pub async fn purge_loop(ctx: Arc<NodeContext>, shutdown: CancellationToken) {
    let pass = (ctx.tombstone_grace() / 4).clamp(MIN_PASS, MAX_PASS);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(pass) => {}
            _ = shutdown.cancelled() => return,
        }
        match purge_pass(&ctx).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!("purged {purged} tombstones"),
            Err(e) => tracing::warn!("tombstone purge failed: {e}"),
        }
    }
}

async fn purge_pass(ctx: &NodeContext) -> Result<u64, crate::storage::StorageError> {
    let now = ctx.clock.now_micros();
    let mut purged = 0;
    for tombstone in ctx.storage.tombstones(PER_PASS).await? {
        if purgeable(ctx, &tombstone, now) && ctx.storage.purge(tombstone.key, tombstone.version).await? {
            purged += 1;
        }
    }
    Ok(purged)
}

fn purgeable(ctx: &NodeContext, tombstone: &Tombstone, now: u64) -> bool {
    let grace = ctx.tombstone_grace().as_micros() as u64;
    if now.saturating_sub(tombstone.arrived_micros) <= grace {
        return false;
    }
    let partition = ctx.ring.partition_of(&tombstone.key);
    let mut others = ctx.ring.replicas(partition).iter().filter(|r| **r != ctx.me);
    others.all(|&peer| {
        let agreed = ctx.agreement.pair(partition, peer).last_agreed_micros;
        agreed.is_some_and(|t| t > tombstone.arrived_micros)
    })
}
