//! The short form of a node's status: [`NodeSummary`], the answer to
//! `Request::StatusSummary`, and [`AgreementSummary`], the partition rows condensed.
//!
//! `Request::Status` (protocol version 1) answers every partition row, ~40 KB per node
//! with 256 partitions; the summary carries the same picture in a few hundred bytes and
//! adds what a node holds (keys, bytes on disk). It is a separate request and response
//! so that clients and nodes of either age keep decoding what they already knew (struct
//! fields are encoded as arrays, which cannot grow without breaking older decoders).

use serde::{Deserialize, Serialize};

use crate::wire::{NodeStatus, PartitionStatus};

/// A node's status with its partition rows condensed (answer to `StatusSummary`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSummary {
    /// Peers, hints, anti-entropy totals; `partitions` is empty unless they were asked for.
    pub status: NodeStatus,
    /// Keys stored, tombstones not yet purged included.
    pub keys: u64,
    /// Bytes the store's files have allocated on disk (journal and tables, as `du`
    /// counts them); `None` if it could not tell.
    pub disk_bytes: Option<u64>,
    /// Agreement of all the partitions this node replicates.
    pub agreement: AgreementSummary,
}

/// Agreement of a node's partitions with their other replicas, condensed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementSummary {
    /// Partitions the node replicates.
    pub replicated: u64,
    /// Of those, partitions in agreement with every other replica now.
    pub agreed: u64,
    /// The oldest of the agreed partitions' last agreement (µs since the epoch): how far
    /// behind the slowest partition's confirmation is.
    pub oldest_agreed_micros: Option<u64>,
    /// Keys repaired by anti-entropy with any replica, since start.
    pub keys_repaired: u64,
}

impl AgreementSummary {
    /// Condenses `partitions`: a partition is agreed when every other replica's last
    /// comparison found it equal; its agreement time is its least recent replica's.
    pub fn of(partitions: &[PartitionStatus]) -> AgreementSummary {
        let agreed_times: Vec<u64> = partitions
            .iter()
            .filter_map(|p| p.replicas.iter().map(|r| r.last_agreed_micros).min().flatten())
            .collect();
        AgreementSummary {
            replicated: partitions.len() as u64,
            agreed: agreed_times.len() as u64,
            oldest_agreed_micros: agreed_times.iter().min().copied(),
            keys_repaired: partitions
                .iter()
                .flat_map(|p| &p.replicas)
                .map(|r| r.keys_repaired)
                .sum(),
        }
    }

    /// Partitions not in agreement with every other replica.
    pub fn not_agreed(&self) -> u64 {
        self.replicated.saturating_sub(self.agreed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ReplicaAgreement;

    fn partition(agreed: &[Option<u64>]) -> PartitionStatus {
        let replicas = agreed
            .iter()
            .map(|t| ReplicaAgreement {
                peer: "n2".into(),
                last_agreed_micros: *t,
                keys_repaired: 1,
            })
            .collect();
        PartitionStatus { partition: 0, replicas }
    }

    #[test]
    fn a_partition_is_agreed_only_when_every_replica_is() {
        let rows = [
            partition(&[Some(10), Some(20)]),
            partition(&[Some(5), None]),
            partition(&[Some(30), Some(40)]),
        ];
        let summary = AgreementSummary::of(&rows);
        assert_eq!(summary.replicated, 3);
        assert_eq!(summary.agreed, 2);
        assert_eq!(summary.not_agreed(), 1);
        assert_eq!(
            summary.oldest_agreed_micros,
            Some(10),
            "the least recent replica of the oldest partition"
        );
        assert_eq!(summary.keys_repaired, 6);
    }
}
