//! Node-to-node protocol: pings, anti-entropy and hint delivery.
//!
//! Spoken over the same endpoint as the client protocol, on connections that negotiate
//! the peer ALPN ([`quorumkv_client::wire::PEER_ALPN`]). Messages are one enum per
//! direction; [`PeerService`] answers them, once [`auth`] has found which member's node
//! certificate the connection presented. Anti-entropy uses its own connections, so
//! bulk repair traffic never queues behind (or in front of) pings and hints. Records that
//! arrive through this protocol pass [`admit`], the checks client writes pass.

pub mod auth;
pub mod detector;
mod service;

use bytes::Bytes;
use quorumkv_client::layout::LayoutHistory;
use quorumkv_client::transport::{ConnectionPool, Destination};
use quorumkv_client::wire::{FrameSizeHint, Member, Record, FRAME_OVERHEAD};
use serde::{Deserialize, Serialize};

use crate::admission::{RecordLimits, Refusal};
use crate::config::ClusterConfig;
use crate::merkle::Hash;
use crate::storage::Entry;

pub use detector::FailureDetector;
pub use service::{PeerService, PeerSession};

/// Most record bytes in one anti-entropy or hint-delivery exchange (larger values go alone).
pub const EXCHANGE_BYTES: usize = 4 << 20;
/// Most key/version entry bytes in one [`PeerResponse::Entries`]: a leaf with more is sent
/// in pages, so the answer stays bounded whatever the data size and key length.
pub const ENTRIES_BYTES: usize = 1 << 20;
/// Most partitions in one [`PeerRequest::Roots`]: its answer carries up to [`INNER`]
/// hashes per partition (~300 bytes), so 1,024 keep both under ~400 KiB for any
/// partition count.
///
/// [`INNER`]: crate::merkle::INNER
pub const ROOTS_PER_REQUEST: usize = 1024;
/// Most leaves in one [`PeerRequest::Leaves`] (~24 bytes each encoded).
pub const LEAVES_PER_REQUEST: usize = 4096;

/// A key with its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyedRecord {
    /// The key.
    pub key: Bytes,
    /// Its record.
    pub record: Record,
}

/// One leaf to compare: its hash on the sender's side, and where in its key-hash range to
/// start (the leaf's first hash, or where the previous page of it stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafProbe {
    /// The partition.
    pub partition: u32,
    /// The leaf within the partition.
    pub leaf: u32,
    /// The sender's hash of the whole leaf.
    pub hash: Hash,
    /// First key hash wanted.
    pub from: u64,
}

/// One page of a leaf's entries: every key with a hash in `[from, through]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeafEntries {
    /// The partition.
    pub partition: u32,
    /// The leaf within the partition.
    pub leaf: u32,
    /// First key hash covered.
    pub from: u64,
    /// Last key hash covered (the leaf's last hash unless the leaf continues in a later
    /// page).
    pub through: u64,
    /// The keys in that range, with versions, in hash order.
    pub entries: Vec<Entry>,
}

/// A request from one node to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Are you there? Carries the sender's layout history digest, and the history itself
    /// unless the receiver last answered with the same digest (gossip: the receiver merges
    /// it, and answers with its own if the digests differ).
    Ping {
        /// [`LayoutHistory::digest`] of the sender's history.
        digest: u64,
        /// The sender's history, if the receiver may not have it.
        layout: Option<Box<LayoutHistory>>,
    },
    /// Anti-entropy step 1: the sender's root hash of each partition; the receiver answers
    /// with its inner-node hashes of the partitions whose roots differ.
    Roots {
        /// Node id of the sender (to record agreement on both sides).
        from: String,
        /// `(partition, root hash)`.
        roots: Vec<(u32, Hash)>,
    },
    /// Anti-entropy step 2: the sender's leaf hashes under inner nodes that differ; the
    /// receiver answers with its key/version lists of the leaves that differ, in pages of
    /// at most [`ENTRIES_BYTES`].
    Leaves {
        /// The leaves to compare, in order.
        leaves: Vec<LeafProbe>,
    },
    /// Anti-entropy step 3 and hint delivery: apply `push` (each only if newer), and send
    /// back the records of the keys in `pull`.
    Exchange {
        /// Records for the receiver.
        push: Vec<KeyedRecord>,
        /// Keys whose records the sender wants.
        pull: Vec<Bytes>,
    },
}

/// Peer requests are encoded into a default-sized buffer (they are not on the hot path).
impl FrameSizeHint for PeerRequest {}

/// A node's answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerResponse {
    /// Answer to `Ping`: the receiver's digest, and its history if it differs from the
    /// sender's.
    Pong {
        /// [`LayoutHistory::digest`] of the receiver's history (after merging the sender's).
        digest: u64,
        /// The receiver's history, if the sender's digest was another.
        layout: Option<Box<LayoutHistory>>,
    },
    /// Answer to `Roots`: inner hashes of the partitions whose roots differ.
    Inner {
        /// `(partition, inner-node hashes)`.
        partitions: Vec<(u32, Vec<Hash>)>,
    },
    /// Answer to `Leaves`: the entries of the leaves that differ, as far as
    /// [`ENTRIES_BYTES`] allowed; probes it did not reach come back in `unserved`.
    Entries {
        /// Pages of the differing leaves, in the order they were asked for.
        leaves: Vec<LeafEntries>,
        /// Probes not answered yet (the first may be the rest of a leaf cut short): ask
        /// again. Probes absent from both lists were equal.
        unserved: Vec<LeafProbe>,
    },
    /// Answer to `Exchange`.
    Exchanged {
        /// Per pushed record, in order: whether it was newer and applied.
        applied: Vec<bool>,
        /// The pulled records (keys the receiver does not hold are left out).
        records: Vec<KeyedRecord>,
        /// Pulled keys not served because the answer reached [`EXCHANGE_BYTES`]: ask again.
        unserved: Vec<Bytes>,
    },
    /// The receiver's Merkle trees are still being rebuilt; try later.
    NotReady,
    /// The request failed.
    Error(String),
}

/// Peer responses are encoded into a default-sized buffer (they are not on the hot path).
impl FrameSizeHint for PeerResponse {}

/// Connections to the other members, speaking the peer protocol.
pub type PeerPool = ConnectionPool<PeerRequest, PeerResponse>;

/// A pool dialling every member of `config` (indices match the member list) from
/// `endpoint` with this node's identity.
pub fn peer_pool(
    config: &ClusterConfig,
    roster: &[Member],
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
) -> PeerPool {
    let destinations = roster.iter().map(Destination::of).collect();
    ConnectionPool::new(endpoint, tls, destinations, peer_max_frame(config))
}

/// Largest peer frame: a full exchange plus one maximum-size record.
pub fn peer_max_frame(config: &ClusterConfig) -> usize {
    EXCHANGE_BYTES + config.limits.max_key_bytes + config.limits.max_value_bytes + 2 * FRAME_OVERHEAD
}

impl KeyedRecord {
    /// Approximate encoded size.
    pub fn size(&self) -> usize {
        self.key.len() + self.record.value.as_ref().map_or(0, Bytes::len) + 32
    }
}

/// Splits records into batches of at most `max_bytes` (a larger record goes alone).
pub fn chunk_by_bytes(records: Vec<KeyedRecord>, max_bytes: usize) -> Vec<Vec<KeyedRecord>> {
    let mut batches = Vec::new();
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for record in records {
        let size = record.size();
        if !batch.is_empty() && bytes + size > max_bytes {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(record);
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// Checks each of `records` with `limits` at `now_micros`: the admitted records in their
/// places (`None` where one was refused) and the reasons for the refused ones.
pub fn admit(
    records: Vec<KeyedRecord>,
    limits: &RecordLimits,
    now_micros: u64,
) -> (Vec<Option<KeyedRecord>>, Vec<Refusal>) {
    let mut refused = Vec::new();
    let admitted = records
        .into_iter()
        .map(|r| match limits.check(&r.key, &r.record, now_micros) {
            Ok(()) => Some(r),
            Err(why) => {
                refused.push(why);
                None
            }
        })
        .collect();
    (admitted, refused)
}

/// Logs refused records at WARN, one line per batch: how many, from where, the first reason.
pub fn log_refusals(refused: &[Refusal], of: usize, from: &str) {
    if let Some(first) = refused.first() {
        tracing::warn!(
            "refused {} of {of} records {from}, not applied; first: {first}",
            refused.len()
        );
    }
}
