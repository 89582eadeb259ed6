//! Dropping the partitions a node no longer replicates, once the old layout retired.
//!
//! A partition is dropped only when one layout is in use and it does not make this node a
//! replica of it. First it is handed off: compared with each of its replicas (but those
//! marked gone) and every
//! record this node holds newer pushed to them (a write this node took just before it
//! learned the new layout is not lost that way). Then its keys are removed locally, a page
//! at a time and paced by the anti-entropy budget, each only if it still holds the version
//! handed off. Which partitions to drop is read from the store itself (any key in a
//! partition this node does not replicate), so a node restarted halfway carries on.

use std::sync::Arc;

use crate::antientropy::{AntiEntropy, SyncError};
use crate::context::NodeContext;
use crate::storage::StorageError;

/// Bytes of keys listed per page while dropping.
const DROP_PAGE_BYTES: usize = 256 << 10;

/// Why a drop stopped (it is tried again later).
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    /// A replica of the partition did not take the hand-off.
    #[error("handing partition {partition} off to {peer} failed: {why}")]
    HandOff {
        /// The partition.
        partition: u32,
        /// The replica.
        peer: String,
        /// What happened.
        why: SyncError,
    },
    /// A replica of the partition is down: the partition waits for it.
    #[error("partition {partition} waits for its replica {peer}, which is down")]
    ReplicaDown {
        /// The partition.
        partition: u32,
        /// The replica.
        peer: String,
    },
    /// Local storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The partitions this node holds keys of but replicates in no layout in use; empty
/// while a move is under way.
pub async fn lost_partitions(ctx: &NodeContext) -> Result<Vec<u32>, StorageError> {
    let layout = ctx.layout();
    if layout.history.moving() {
        return Ok(Vec::new());
    }
    let mine = layout.my_partitions();
    let shape = ctx.storage.forest().shape();
    let mut lost = Vec::new();
    for partition in (0..layout.read.partitions()).filter(|p| !mine.contains(p)) {
        let (start, end) = partition_range(shape, partition);
        if !ctx.storage.entries(start, end, 1).await?.entries.is_empty() {
            lost.push(partition);
        }
    }
    Ok(lost)
}

/// Hands `partition` off to each of its replicas, then removes it here; returns the keys
/// removed.
pub async fn drop_partition(ctx: &Arc<NodeContext>, pusher: &AntiEntropy, partition: u32) -> Result<u64, DropError> {
    let layout = ctx.layout();
    // Replicas marked gone (a `cluster skip`) are presumed lost: not waited for.
    let gone = &layout.history.newest().gone;
    let replicas: Vec<usize> = layout
        .newest()
        .replicas(partition)
        .iter()
        .copied()
        .filter(|&r| !gone.iter().any(|g| g == layout.id(r)))
        .collect();
    if let Some(&down) = replicas.iter().find(|&&r| !ctx.detector.is_up(r)) {
        return Err(DropError::ReplicaDown {
            partition,
            peer: layout.id(down).to_string(),
        });
    }
    for &peer in &replicas {
        pusher
            .hand_off(peer, partition)
            .await
            .map_err(|why| DropError::HandOff {
                partition,
                peer: layout.id(peer).to_string(),
                why,
            })?;
    }
    let (start, end) = partition_range(ctx.storage.forest().shape(), partition);
    let mut removed = 0;
    let mut from = start;
    loop {
        let page = ctx.storage.entries(from, end, DROP_PAGE_BYTES).await?;
        let keys = page.entries.len();
        pusher.pace(keys, page.entries.iter().map(|e| e.size()).sum()).await;
        let discards = page.entries.into_iter().map(|e| ctx.storage.discard(e.key, e.version));
        for outcome in futures_util::future::join_all(discards).await {
            removed += u64::from(outcome?);
        }
        if page.through >= end {
            return Ok(removed);
        }
        from = page.through + 1;
    }
}

/// First and last key hash of `partition`.
pub(super) fn partition_range(shape: crate::merkle::TreeShape, partition: u32) -> (u64, u64) {
    let (start, _) = shape.leaf_range(partition, 0);
    let (_, end) = shape.leaf_range(partition, shape.leaves() - 1);
    (start, end)
}
