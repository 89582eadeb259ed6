//! What this node reports about a move: the partitions it still pulls and those it will
//! drop ([`MoveStatus`]), and key counts per partition, so that `quorumkv cluster show`
//! can say how much is left.

use quorumkv_client::layout::{MoveStatus, PartitionKeys, PullLeft};

use super::handoff::{lost_partitions, partition_range};
use crate::context::NodeContext;
use crate::storage::StorageError;

/// Bytes of keys listed per page while counting.
const COUNT_PAGE_BYTES: usize = 1 << 20;

/// This node's part of the move under way.
pub async fn move_status(ctx: &NodeContext) -> Result<MoveStatus, StorageError> {
    let layout = ctx.layout();
    let version = layout.history.newest().version;
    let mut pulling = Vec::new();
    if ctx
        .membership
        .pulls_left()
        .is_some_and(|(pulls_for, _, _)| pulls_for == version)
    {
        for (partition, sources) in ctx.membership.pending_partitions() {
            pulling.push(PullLeft {
                partition,
                sources: sources.iter().map(|&s| layout.id(s).to_string()).collect(),
                keys_here: count_keys(ctx, partition).await?,
            });
        }
    }
    let mut dropping = Vec::new();
    for partition in lost_partitions(ctx).await? {
        dropping.push(PartitionKeys {
            partition,
            keys: count_keys(ctx, partition).await?,
        });
    }
    Ok(MoveStatus {
        node: ctx.id.clone(),
        version,
        progress: layout.my_progress(&ctx.id),
        pulling,
        dropping,
    })
}

/// Keys (tombstones included) this node holds in `partition`.
pub async fn count_keys(ctx: &NodeContext, partition: u32) -> Result<u64, StorageError> {
    let (start, end) = partition_range(ctx.storage.forest().shape(), partition);
    let mut from = start;
    let mut keys = 0;
    loop {
        let page = ctx.storage.entries(from, end, COUNT_PAGE_BYTES).await?;
        keys += page.entries.len() as u64;
        if page.through >= end {
            return Ok(keys);
        }
        from = page.through + 1;
    }
}
