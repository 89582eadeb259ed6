//! What the simulator checks directly in the nodes after a run converged, beyond the
//! history's promises: Merkle trees that match the data, hint stores drained, and no
//! tombstone gone before its grace.

use std::collections::BTreeMap;
use std::time::Duration;

use quorumkv_client::ring::key_hash;
use quorumkv_client::wire::Record;

use super::cluster::SimCluster;
use crate::history::{Micros, Op};
use crate::merkle::entry_hash;
use crate::storage::Forest;

/// Bytes of entries per page when scanning a node's records.
const PAGE_BYTES: usize = 1 << 20;

/// Every running node's Merkle trees equal trees built afresh from its records (the
/// trees are kept incrementally by every write, purge and rebuild; a missed delta would
/// make anti-entropy chase differences forever or miss them).
pub async fn trees_match_data(cluster: &SimCluster) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..cluster.len() {
        let Some(node) = cluster.node(i) else { continue };
        let storage = &node.context().storage;
        let partitions = node.context().layout().read.partitions();
        let fresh = Forest::new(partitions);
        let mut start = 0u64;
        loop {
            let page = match storage.entries(start, u64::MAX, PAGE_BYTES).await {
                Ok(page) => page,
                Err(e) => {
                    out.push(format!("{}: scanning records failed: {e}", cluster.id(i)));
                    break;
                }
            };
            let deltas = page
                .entries
                .iter()
                .map(|e| (key_hash(&e.key), entry_hash(&e.key, e.version, e.tombstone)));
            fresh.toggle_all(deltas);
            // A page ends at the last hash it covers; the next starts after it.
            let Some(next) = page.through.checked_add(1) else { break };
            start = next;
        }
        let kept = storage.forest();
        let differing: Vec<u32> = (0..partitions).filter(|&p| kept.root(p) != fresh.root(p)).collect();
        if !differing.is_empty() {
            out.push(format!(
                "{}: Merkle trees differ from its data in partitions {differing:?}",
                cluster.id(i)
            ));
        }
    }
    out
}

/// No running node holds a hint after convergence.
pub fn hints_drained(cluster: &SimCluster) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..cluster.len() {
        let Some(node) = cluster.node(i) else { continue };
        let mut held: Vec<(String, u64)> = node
            .context()
            .storage
            .hint_counts()
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .collect();
        held.sort();
        if !held.is_empty() {
            out.push(format!(
                "{} still holds hints after convergence: {held:?}",
                cluster.id(i)
            ));
        }
    }
    out
}

/// A key whose newest acknowledged write is a delete issued less than `grace` before
/// `now` must still be a tombstone on its replicas, not absent: every replica stored the
/// tombstone after the delete was issued, so none may purge it yet.
pub fn young_tombstones_kept(
    history: &[Op],
    finals: &BTreeMap<String, Option<Record>>,
    now: Micros,
    grace: Duration,
) -> Vec<String> {
    let mut newest: BTreeMap<&str, &Op> = BTreeMap::new();
    for op in history {
        let Some(version) = op.acked_version() else { continue };
        let slot = newest.entry(op.key.as_str()).or_insert(op);
        if slot.acked_version().is_some_and(|held| held < version) {
            *slot = op;
        }
    }
    let grace = grace.as_micros() as Micros;
    newest
        .into_iter()
        .filter(|(_, op)| op.put_value().is_none() && op.invoke.saturating_add(grace) > now)
        .filter(|(key, _)| matches!(finals.get(*key), Some(None) | None))
        .map(|(key, op)| {
            format!(
                "tombstone of {key:?} (delete issued at {} µs, acknowledged at {:?}) is gone at {now} µs, within its grace",
                op.invoke,
                op.acked_version()
            )
        })
        .collect()
}
