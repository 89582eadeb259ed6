//! Refilling a node that lost its disk, and the reads it serves meanwhile.
//!
//! A node whose disk was wiped or replaced comes back empty but still a replica of its
//! partitions. Answering reads from that empty store breaks quorum intersection: a write
//! acknowledged by `w` replicas, this one among them, is then held by `w - 1`, so a read
//! whose `r` answers include this node's "not found" can miss it (the simulator found
//! this: seed 35, a wipe, then a read with r = 1 returned "not found" for a write
//! acknowledged by all three replicas).
//!
//! An empty store alone cannot tell a lost disk from a new cluster, and a node cut off
//! from its peers cannot ask them, so the operator says so, as Cassandra's
//! `replace_address` and Riak's `force-replace` have them do: `quorumkv node --refill`,
//! on every start until the log says `refilled` (a node restarted half refilled holds
//! some data but still lacks the rest: the simulator found that too, seed 611). A node
//! started so serves reads of a partition through the other replicas until
//! anti-entropy has completed one sync of that partition with every other replica of it
//! (a sync pulls everything the peer held when it began); it runs those syncs at the
//! ping interval rather than the anti-entropy interval. Such a read
//! answers with the newest of its own copy and the copy of every other replica that its
//! failure detector holds up; if one of those does not answer in time, or none is up, it
//! refuses ([`ErrorKind::Refilling`](quorumkv_client::wire::ErrorKind::Refilling)) and
//! the client counts it as a failed replica. Replicas the detector holds down are
//! skipped rather than waited for, so a replica that died for good costs no
//! availability; the price is that a replica cut off from this node alone, while
//! clients still reach it, is not asked. Writes are taken as usual throughout.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::ring::Ring;
use quorumkv_client::wire::Record;

use crate::context::NodeContext;
use crate::peer::{PeerRequest, PeerResponse};

/// Longest wait for the other replicas' copies in a read served through them.
pub const READ_THROUGH_TIMEOUT: Duration = Duration::from_secs(1);

/// Which partitions of this node still refill.
pub struct Refill {
    /// Whether any pair is pending: the only thing a read checks once refilled.
    active: AtomicBool,
    /// (partition, peer) pairs still waiting for their first complete sync.
    pending: Mutex<BTreeSet<(u32, usize)>>,
}

impl Refill {
    /// For node `me` of `ring`: every pair of its partitions and their other replicas
    /// pending if it `refills`, none otherwise.
    pub fn new(refills: bool, ring: &Ring, me: Option<usize>) -> Refill {
        let mut pending = BTreeSet::new();
        if let (true, Some(me)) = (refills, me) {
            for partition in 0..ring.partitions() {
                let replicas = ring.replicas(partition);
                if replicas.contains(&me) {
                    pending.extend(replicas.iter().filter(|&&r| r != me).map(|&peer| (partition, peer)));
                }
            }
        }
        Refill {
            active: AtomicBool::new(!pending.is_empty()),
            pending: Mutex::new(pending),
        }
    }

    /// Whether some partition still refills (one atomic load).
    pub fn any(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether reads of `partition` must go through the other replicas.
    pub fn is_refilling(&self, partition: u32) -> bool {
        self.any()
            && self
                .lock()
                .range((partition, 0)..=(partition, usize::MAX))
                .next()
                .is_some()
    }

    /// Whether a sync with `peer` is still awaited for some partition.
    pub fn awaits(&self, peer: usize) -> bool {
        self.active.load(Ordering::Acquire) && self.lock().iter().any(|(_, p)| *p == peer)
    }

    /// A sync of `partitions` with `peer` completed: this node now holds everything the
    /// peer held in them when the sync began.
    pub fn synced(&self, partitions: &[u32], peer: usize) {
        self.settle(|pending| {
            for &partition in partitions {
                pending.remove(&(partition, peer));
            }
        });
    }

    /// Forgets the pairs whose peer no longer shares the partition with this node (the
    /// layout changed; a node that lost its layout file with its disk starts from
    /// cluster.toml's and learns the cluster's from its peers): no sync with them will
    /// come, and what this node gains by the change it pulls as a move's new owner.
    pub fn keep_shared(&self, shares: impl Fn(u32, usize) -> bool) {
        self.settle(|pending| pending.retain(|&(partition, peer)| shares(partition, peer)));
    }

    /// Applies `done` to the pending pairs while refilling; says so once none is left.
    fn settle(&self, done: impl FnOnce(&mut BTreeSet<(u32, usize)>)) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let mut pending = self.lock();
        done(&mut pending);
        if pending.is_empty() {
            self.active.store(false, Ordering::Release);
            tracing::info!("refilled: every partition synced with every other replica; reads are served locally");
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u32, usize)>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a read through the other replicas could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadThroughError {
    /// This node's own store failed.
    #[error("reading the local copy failed: {0}")]
    Local(String),
    /// No other replica of the key is up.
    #[error("refilling after starting empty, and no other replica of the key is up")]
    Alone,
    /// A replica's copy did not come.
    #[error("refilling after starting empty, and replica {peer} did not answer: {why}")]
    Replica {
        /// The replica's id.
        peer: String,
        /// What happened.
        why: String,
    },
}

/// The newest of this node's copy of `key` and the copy of every other replica of its
/// partition (`None`: no replica holds it).
pub async fn read_through(ctx: &NodeContext, key: Bytes) -> Result<Option<Record>, ReadThroughError> {
    let layout = ctx.layout();
    let partition = layout.partition_of(&key);
    let others: Vec<usize> = layout
        .replicas(partition)
        .into_iter()
        .filter(|&r| Some(r) != layout.me && ctx.detector.is_up(r))
        .collect();
    if others.is_empty() {
        return Err(ReadThroughError::Alone);
    }
    let asks = others.iter().map(|&peer| {
        let request = PeerRequest::Exchange {
            push: Vec::new(),
            pull: vec![key.clone()],
        };
        tokio::time::timeout(READ_THROUGH_TIMEOUT, ctx.peers.call(peer, request))
    });
    let (local, answers) = tokio::join!(ctx.storage.get(key.clone()), join_all(asks));
    let mut newest = local.map_err(|e| ReadThroughError::Local(e.to_string()))?;
    for (&peer, answer) in others.iter().zip(answers) {
        let failed = |why: String| ReadThroughError::Replica {
            peer: layout.id(peer).to_string(),
            why,
        };
        let records = match answer {
            Ok(Ok(PeerResponse::Exchanged { records, unserved, .. })) if unserved.is_empty() => records,
            Ok(Ok(PeerResponse::Exchanged { .. })) => return Err(failed("it left the key unserved".into())),
            Ok(Ok(other)) => return Err(failed(format!("unexpected answer {other:?}"))),
            Ok(Err(e)) => return Err(failed(e.to_string())),
            Err(_) => return Err(failed(format!("no answer within {READ_THROUGH_TIMEOUT:?}"))),
        };
        for copy in records.into_iter().filter(|r| r.key == key) {
            if newest.as_ref().is_none_or(|held| held.version < copy.record.version) {
                newest = Some(copy.record);
            }
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> Ring {
        let members: Vec<String> = ["n1", "n2", "n3", "n4"].iter().map(|s| s.to_string()).collect();
        Ring::new(&members, 16, 3).expect("a ring")
    }

    #[test]
    fn a_refilling_node_refills_each_partition_once_synced_with_every_other_replica() {
        let ring = ring();
        let refill = Refill::new(true, &ring, Some(0));
        let mine: Vec<u32> = (0..16).filter(|p| ring.replicas(*p).contains(&0)).collect();
        let first = mine[0];
        let others: Vec<usize> = ring.replicas(first).iter().copied().filter(|&r| r != 0).collect();
        assert!(refill.is_refilling(first));
        refill.synced(&[first], others[0]);
        assert!(refill.is_refilling(first), "one replica of two synced is not enough");
        refill.synced(&[first], others[1]);
        assert!(!refill.is_refilling(first));
        assert!(refill.is_refilling(mine[1]), "other partitions still refill");
        for &p in &mine {
            for &peer in ring.replicas(p) {
                refill.synced(&[p], peer);
            }
        }
        assert!(!refill.awaits(others[0]));
        assert!(mine.iter().all(|&p| !refill.is_refilling(p)));
    }

    #[test]
    fn a_node_not_told_to_refill_serves_at_once() {
        let refill = Refill::new(false, &ring(), Some(0));
        assert!((0..16).all(|p| !refill.is_refilling(p)));
        assert!(!refill.awaits(1));
    }

    #[test]
    fn pairs_a_new_layout_no_longer_shares_stop_holding_the_refill() {
        let ring = ring();
        let refill = Refill::new(true, &ring, Some(0));
        refill.keep_shared(|_, peer| peer != 1);
        assert!(!refill.awaits(1), "nothing is awaited from n2 any more");
        assert!(refill.any(), "the other pairs still refill");
        refill.keep_shared(|_, _| false);
        assert!(!refill.any());
    }
}
