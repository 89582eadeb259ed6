//! How far one node is with a move: what `quorumkv cluster show` and `status` report.

use serde::{Deserialize, Serialize};

use super::Progress;

/// One node's part of the move under way (answer to `MoveStatus`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveStatus {
    /// The node.
    pub node: String,
    /// Newest layout version it knows.
    pub version: u64,
    /// What it has published for it.
    pub progress: Progress,
    /// Partitions it gains and still pulls.
    pub pulling: Vec<PullLeft>,
    /// Partitions it holds keys of but no longer replicates: to hand off and drop once
    /// the old layout retired.
    pub dropping: Vec<PartitionKeys>,
}

/// A partition a node still pulls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullLeft {
    /// The partition.
    pub partition: u32,
    /// Old owners it has not completed a pull from yet.
    pub sources: Vec<String>,
    /// Keys the node holds in it so far.
    pub keys_here: u64,
}

/// Keys a node holds in one partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionKeys {
    /// The partition.
    pub partition: u32,
    /// Keys (tombstones included).
    pub keys: u64,
}
