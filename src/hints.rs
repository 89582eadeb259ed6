//! Hinted handoff, the node's side: hold writes for replicas that were unreachable and
//! deliver them once the failure detector sees the owner up again.
//!
//! Clients send a write meant for an unreachable replica to a fallback node as a hint
//! (see the client's write path). The fallback stores it durably in its own keyspace,
//! bounded per owner (`max_hints_per_node`; beyond it the node says so in its log and
//! status and leaves the repair to anti-entropy), and every `hint_delivery_interval`
//! pushes the hints of owners that are up, deleting each once the owner answered. The
//! owner checks each record as it checks a client write ([`crate::admission`]); one it
//! refuses (a version too far ahead of its clock) is deleted too, and the owner logs why.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::context::NodeContext;
use crate::peer::{chunk_by_bytes, KeyedRecord, PeerRequest, PeerResponse, EXCHANGE_BYTES};

/// Hints read from storage per delivery step.
const HINTS_PER_STEP: usize = 512;
/// Longest wait for an owner to take one batch of hints.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Delivers held hints until `shutdown`.
pub async fn delivery_loop(ctx: Arc<NodeContext>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(ctx.convergence.hint_delivery_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // In owner order, not the map's (which differs per process): a seed replays.
        let mut held: Vec<(String, u64)> = ctx.storage.hint_counts().into_iter().collect();
        held.sort();
        let layout = ctx.layout();
        let active = layout.active();
        for (owner, count) in held {
            let Some(index) = layout.index_of(&owner) else {
                continue;
            };
            // A node the layouts in use no longer name is not pinged: its detector state
            // is stale, and a delivery to it would only wait out its timeout. What it
            // missed reached its partitions' new owners by the move.
            if count == 0 || !active.contains(&index) || !ctx.detector.is_up(index) {
                continue;
            }
            match deliver(&ctx, &owner, index).await {
                Ok(delivered) if delivered > 0 => tracing::info!("delivered {delivered} hints to {owner}"),
                Ok(_) => {}
                Err(e) => tracing::debug!("hint delivery to {owner} stopped: {e}"),
            }
        }
    }
}

/// Delivers every hint held for `owner`; returns how many were delivered.
async fn deliver(ctx: &NodeContext, owner: &str, index: usize) -> Result<u64, String> {
    let mut delivered = 0;
    loop {
        let hints = ctx
            .storage
            .hints_for(owner.to_string(), HINTS_PER_STEP)
            .await
            .map_err(|e| e.to_string())?;
        if hints.is_empty() {
            return Ok(delivered);
        }
        let records: Vec<KeyedRecord> = hints
            .into_iter()
            .map(|(key, record)| KeyedRecord { key, record })
            .collect();
        for batch in chunk_by_bytes(records, EXCHANGE_BYTES) {
            let done: Vec<_> = batch.iter().map(|r| (r.key.clone(), r.record.version)).collect();
            let request = PeerRequest::Exchange {
                push: batch,
                pull: Vec::new(),
            };
            match tokio::time::timeout(DELIVERY_TIMEOUT, ctx.peers.call(index, request)).await {
                Ok(Ok(PeerResponse::Exchanged { .. })) => {}
                Ok(Ok(other)) => return Err(format!("unexpected answer {other:?}")),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("no answer within {DELIVERY_TIMEOUT:?}")),
            }
            delivered += done.len() as u64;
            ctx.counters.delivered(index, done.len() as u64);
            ctx.storage
                .remove_hints(owner.to_string(), done)
                .await
                .map_err(|e| e.to_string())?;
        }
    }
}
