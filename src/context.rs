//! [`NodeContext`]: the state of one node that its services share.
//!
//! The replica, the peer service, anti-entropy, hint delivery and tombstone purging all
//! work on the same storage, ring, failure detector and agreement record; this bundles
//! them so each service takes one `Arc` instead of six.

use std::sync::Arc;
use std::time::Duration;

use quorumkv_client::clock::Clock;
use quorumkv_client::wire::{AgreementSummary, NodeStatus, NodeSummary, PartitionStatus, ReplicaAgreement};

use crate::admission::RecordLimits;
use crate::antientropy::Agreement;
use crate::config::Convergence;
use crate::membership::{Membership, NodeLayout};
use crate::metrics::ServiceCounters;
use crate::node::Host;
use crate::peer::{FailureDetector, PeerPool};
use crate::refill::Refill;
use crate::storage::Storage;

/// What a node's services share.
pub struct NodeContext {
    /// This node's id.
    pub id: String,
    /// The layout history: the rings in use and this node's place in them.
    pub membership: Arc<Membership>,
    /// The node's records, hints and trees.
    pub storage: Arc<dyn Storage>,
    /// Who answers pings.
    pub detector: Arc<FailureDetector>,
    /// What anti-entropy learned.
    pub agreement: Arc<Agreement>,
    /// Connections for pings and hint delivery.
    pub peers: Arc<PeerPool>,
    /// Connections for anti-entropy only, so bulk repair never delays the others.
    pub anti_entropy_peers: Arc<PeerPool>,
    /// Wall clock.
    pub clock: Arc<dyn Clock>,
    /// What every record this node stores must satisfy, whichever path it came by.
    pub limits: RecordLimits,
    /// Convergence settings from cluster.toml.
    pub convergence: Convergence,
    /// Per-peer counts of anti-entropy syncs and hint deliveries.
    pub counters: ServiceCounters,
    /// The operating system or a simulation: where blocking work runs.
    pub host: Host,
    /// Partitions still refilling after the node started empty.
    pub refill: Refill,
}

/// Names the node only (the metrics collector that holds a context must be `Debug`).
impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl NodeContext {
    /// The layout history now, with the rings derived from it.
    pub fn layout(&self) -> Arc<NodeLayout> {
        self.membership.get()
    }

    /// Roster index of the node with id `id`.
    pub fn member_index(&self, id: &str) -> Option<usize> {
        self.layout().index_of(id)
    }

    /// What the failure detector says of the other nodes of the layouts in use (a removed
    /// node is no longer pinged, so its last state means nothing).
    pub fn peer_statuses(&self, layout: &NodeLayout) -> Vec<quorumkv_client::wire::PeerStatus> {
        let active: Vec<String> = layout.active().into_iter().map(|i| layout.id(i).to_string()).collect();
        let mut peers = self.detector.snapshot(layout.me);
        peers.retain(|p| active.contains(&p.id));
        peers
    }

    /// A number that tells this node apart (for spreading timers), from its id.
    pub fn id_hash(&self) -> u64 {
        let mut first = [0u8; 4];
        first.copy_from_slice(&blake3::hash(self.id.as_bytes()).as_bytes()[..4]);
        u64::from(u32::from_le_bytes(first))
    }

    /// How long a tombstone is kept at least.
    pub fn tombstone_grace(&self) -> Duration {
        Duration::from_millis(self.convergence.tombstone_grace_ms)
    }

    /// This node's view of peers, partitions and repairs.
    pub fn status(&self) -> NodeStatus {
        let traffic = self.anti_entropy_peers.traffic();
        let sent = traffic.sent.load(std::sync::atomic::Ordering::Relaxed);
        let received = traffic.received.load(std::sync::atomic::Ordering::Relaxed);
        let mut hints_held: Vec<(String, u64)> =
            self.storage.hint_counts().into_iter().filter(|(_, c)| *c > 0).collect();
        hints_held.sort();
        let layout = self.layout();
        NodeStatus {
            id: self.id.clone(),
            trees_ready: self.storage.forest().is_ready(),
            peers: self.peer_statuses(&layout),
            partitions: layout
                .my_partitions()
                .into_iter()
                .map(|p| self.partition_status(&layout, p))
                .collect(),
            hints_held,
            hints_refused: self.agreement.hints_refused.load(std::sync::atomic::Ordering::Relaxed),
            anti_entropy: self.agreement.counters(self.counters.rounds(), sent, received),
        }
    }

    /// [`status`](Self::status) in short: partition rows condensed (and sent only if
    /// `partitions`), with the keys and disk bytes of the store.
    pub fn summary(&self, partitions: bool) -> NodeSummary {
        let mut status = self.status();
        let agreement = AgreementSummary::of(&status.partitions);
        if !partitions {
            status.partitions = Vec::new();
        }
        let usage = self.storage.usage();
        NodeSummary {
            status,
            keys: usage.keys,
            disk_bytes: usage.disk_bytes,
            agreement,
        }
    }

    fn partition_status(&self, layout: &NodeLayout, partition: u32) -> PartitionStatus {
        let others = layout.replicas(partition).into_iter().filter(|r| Some(*r) != layout.me);
        let replicas = others
            .map(|peer| {
                let pair = self.agreement.pair(partition, peer);
                // A pair that differed since it last agreed is not in agreement now (a
                // replica wiped after agreeing must not be reported as agreeing).
                let agreed_now = self.agreement.in_agreement(partition, peer);
                ReplicaAgreement {
                    peer: layout.id(peer).to_string(),
                    last_agreed_micros: pair.last_agreed_micros.filter(|_| agreed_now),
                    keys_repaired: pair.keys_repaired,
                }
            })
            .collect();
        PartitionStatus { partition, replicas }
    }
}
