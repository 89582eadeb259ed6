//! The client↔node protocol: messages and their framing.
//!
//! A frame is a little-endian `u32` length followed by that many bytes of rmp-serde
//! (structs as arrays) encoding a [`RequestFrame`] or [`ResponseFrame`]. Frames carry a
//! request id so that many requests share one long-lived QUIC stream (see
//! [`crate::transport`]). The protocol version is the ALPN ([`ALPN`]); a change to these
//! types that old peers cannot read needs a new ALPN.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::layout::{Change, LayoutHistory, MoveStatus, PartitionKeys};
pub use crate::summary::{AgreementSummary, NodeSummary};
use crate::version::Version;

mod members;

pub use members::{ClusterInfo, Member, QuorumDefaults};

/// ALPN of the client protocol, version 2 (version 1 plus `GetVersion`).
pub const ALPN: &[u8] = b"quorumkv/2";
/// ALPN of the client protocol's version 1, which nodes still serve (its messages are a
/// subset of version 2's, with the same encoding).
pub const ALPN_V1: &[u8] = b"quorumkv/1";
/// ALPN of the node-to-node protocol, version 2 (messages defined by the node; version 2
/// pages anti-entropy's leaf answers). Nodes speak only this version to each other, so
/// during a rolling upgrade from a node version with `quorumkv-peer/1` the upgraded and
/// the old nodes neither sync nor ping each other until all are upgraded.
pub const PEER_ALPN: &[u8] = b"quorumkv-peer/2";

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Extra room in a frame beyond the key and value limits, for the version, ids and tags.
pub const FRAME_OVERHEAD: usize = 4096;

/// A stored or transferred copy of a key: its version and its value, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Which write this is; the newest version wins.
    pub version: Version,
    /// The value, or `None` for a tombstone (the key was deleted).
    pub value: Option<Bytes>,
}

impl Record {
    /// Whether this record says the key is deleted.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// What a node holds for a key, without the value: the answer to a version-only read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldVersion {
    /// The stored record's version.
    pub version: Version,
    /// Whether that record is a tombstone.
    pub tombstone: bool,
}

impl HeldVersion {
    /// The whole record this stands for when it is a tombstone (a delete carries no
    /// value, so its version is all there is to it); `None` for a value.
    pub fn tombstone_record(&self) -> Option<Record> {
        self.tombstone.then_some(Record {
            version: self.version,
            value: None,
        })
    }
}

impl From<&Record> for HeldVersion {
    fn from(record: &Record) -> HeldVersion {
        HeldVersion {
            version: record.version,
            tombstone: record.is_tombstone(),
        }
    }
}

/// A request from a client to one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// The key's record for a quorum read: the node's own copy, or while the node refills
    /// after starting empty, the newest copy among the key's replicas (see
    /// [`ErrorKind::Refilling`]).
    Get {
        /// Ring epoch the client routed with; the node refuses a different one.
        epoch: u64,
        /// The key.
        key: Bytes,
    },
    /// Store `record` under `key` if it is newer than the node's copy (delete = tombstone).
    Put {
        /// Ring epoch the client routed with; the node refuses a different one.
        epoch: u64,
        /// The key.
        key: Bytes,
        /// The record to store.
        record: Record,
    },
    /// Hold `record` for `owner`, a replica that could not be reached, and deliver it when
    /// the owner is back (hinted handoff).
    PutHint {
        /// Ring epoch the client routed with; the node refuses a different one.
        epoch: u64,
        /// Node id of the replica the write was meant for.
        owner: String,
        /// The key.
        key: Bytes,
        /// The record to hold.
        record: Record,
    },
    /// The cluster's members and settings, from which a client builds the ring.
    Members,
    /// This node's view of its peers, partitions and repairs, every partition row
    /// included (~40 KB with 256 partitions).
    Status,
    /// The version of the node's copy of a key, without the value (the digest requests
    /// of a quorum read). New in protocol version 2.
    GetVersion {
        /// Ring epoch the client routed with; the node refuses a different one.
        epoch: u64,
        /// The key.
        key: Bytes,
    },
    /// This node's status in short ([`NodeSummary`]); the partition rows only if
    /// `partitions`. A node older than this variant answers it as malformed.
    StatusSummary {
        /// Whether to include every partition row.
        partitions: bool,
    },
    /// The node's own copy of a key, always (for inspecting a replica: `get --from`).
    /// A node older than this variant answers it as malformed.
    GetOwn {
        /// Ring epoch the client routed with; the node refuses a different one.
        epoch: u64,
        /// The key.
        key: Bytes,
    },
    /// The node's layout history: the layouts in use and every node's progress.
    Layout,
    /// Make a membership change: the node appends the next layout to its history and
    /// spreads it. Answered with the new history, or refused (a move under way, a removal
    /// below the replication factor, ...).
    ChangeLayout(Change),
    /// How far the node is with the move under way ([`MoveStatus`]).
    MoveStatus,
    /// Keys the node holds in each of `partitions` (at most [`MAX_COUNTED_PARTITIONS`]).
    PartitionKeys {
        /// The partitions to count.
        partitions: Vec<u32>,
    },
}

/// Most partitions one `PartitionKeys` request may ask about.
pub const MAX_COUNTED_PARTITIONS: usize = 1024;

/// How large a message's frame will be, roughly: the buffer to encode it into.
pub trait FrameSizeHint {
    /// Bytes to reserve for the encoded frame.
    fn frame_size_hint(&self) -> usize {
        FRAME_START_CAPACITY
    }
}

impl<T: FrameSizeHint> FrameSizeHint for &T {
    fn frame_size_hint(&self) -> usize {
        (**self).frame_size_hint()
    }
}

impl<T: FrameSizeHint> FrameSizeHint for Frame<T> {
    fn frame_size_hint(&self) -> usize {
        self.body.frame_size_hint()
    }
}

impl FrameSizeHint for Request {
    fn frame_size_hint(&self) -> usize {
        match self {
            Request::Put { key, record, .. } | Request::PutHint { key, record, .. } => {
                FRAME_START_CAPACITY + key.len() + record.value.as_ref().map_or(0, |v| v.len())
            }
            _ => FRAME_START_CAPACITY,
        }
    }
}

impl FrameSizeHint for Response {
    fn frame_size_hint(&self) -> usize {
        match self {
            Response::Record(Some(record)) => FRAME_START_CAPACITY + record.value.as_ref().map_or(0, |v| v.len()),
            _ => FRAME_START_CAPACITY,
        }
    }
}

/// A node's answer to one [`Request`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to `Get`: the node's record, or `None` if it has never seen the key.
    Record(Option<Record>),
    /// Answer to `Put`: whether it was applied, and the version the node now holds
    /// (a stale put is not applied and reports the newer version that won).
    Put {
        /// The record was newer and is now durably stored.
        applied: bool,
        /// The version the node holds after the request.
        current: Version,
    },
    /// Answer to `Members`.
    Members(ClusterInfo),
    /// Answer to `Status`.
    Status(NodeStatus),
    /// The request was refused or failed.
    Error(ErrorReply),
    /// Answer to `GetVersion`: what the node holds, or `None` if it has never seen the key.
    Version(Option<HeldVersion>),
    /// Answer to `StatusSummary`.
    StatusSummary(NodeSummary),
    /// Answer to `Layout` and `ChangeLayout`.
    Layout(Box<LayoutHistory>),
    /// The request was routed with an older layout than the node's (its `epoch` is
    /// older): here is the node's history; route again with it.
    StaleLayout(Box<LayoutHistory>),
    /// Answer to `MoveStatus`.
    MoveStatus(MoveStatus),
    /// Answer to `PartitionKeys`.
    PartitionKeys(Vec<PartitionKeys>),
}

/// Why a node refused or failed a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ErrorReply {
    /// What went wrong, for code to act on.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

/// Kinds of [`ErrorReply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Key or value over the cluster's limits.
    TooLarge,
    /// The version is further in the future than the node's clock allows.
    ClockSkew,
    /// The client routed with an older layout than the node's (the node answers
    /// [`Response::StaleLayout`] with its history; this kind is what the client reports).
    StaleEpoch,
    /// The request could not be decoded.
    Malformed,
    /// The node's storage failed.
    Storage,
    /// The node is shutting down.
    ShuttingDown,
    /// The node holds as many hints for that owner as it may.
    HintsFull,
    /// The request names something that is not a member (or the node itself).
    UnknownNode,
    /// The node started with an empty store (new or wiped) and, until it has synced the
    /// key's partition with every other replica, answers reads through them; one of them
    /// did not answer. Count it as a failed replica. (Added after the first release:
    /// older clients cannot decode it and count the replica as failed all the same.)
    Refilling,
    /// A membership change was refused (a move under way, a removal that would leave
    /// fewer nodes than replicas, an unknown node, ...); the message says why.
    LayoutRefused,
}

/// A node's view of the cluster and of its repairs (answer to `Status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The node's id.
    pub id: String,
    /// Whether its Merkle trees are built (anti-entropy waits for them after a start).
    pub trees_ready: bool,
    /// What the failure detector says of every other member.
    pub peers: Vec<PeerStatus>,
    /// Per partition this node replicates: agreement with each other replica.
    pub partitions: Vec<PartitionStatus>,
    /// Hints held for other nodes: `(owner, count)`.
    pub hints_held: Vec<(String, u64)>,
    /// Hints refused because the owner's hint store was full (anti-entropy repairs those).
    pub hints_refused: u64,
    /// Anti-entropy totals since start.
    pub anti_entropy: AntiEntropyCounters,
}

/// The failure detector's view of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node id.
    pub id: String,
    /// Answering pings.
    pub up: bool,
    /// Pings missed in a row.
    pub missed_pings: u32,
}

/// Agreement of one partition with its other replicas.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// One entry per other replica.
    pub replicas: Vec<ReplicaAgreement>,
}

/// When this node and one other replica last agreed on a partition.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaAgreement {
    /// The other replica's node id.
    pub peer: String,
    /// When the two trees last had equal roots (µs since the epoch), if their last
    /// comparison found them equal; `None` if they have never agreed or differ now.
    pub last_agreed_micros: Option<u64>,
    /// Keys repaired between the two by anti-entropy, in either direction.
    pub keys_repaired: u64,
}

/// Anti-entropy totals of one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AntiEntropyCounters {
    /// Syncs this node started (one per peer per `anti_entropy_interval`).
    pub rounds: u64,
    /// Records this node pulled from peers and applied (syncs only pull).
    pub records_pulled: u64,
    /// Bytes of anti-entropy frames this node sent.
    pub bytes_sent: u64,
    /// Bytes of anti-entropy frames this node received.
    pub bytes_received: u64,
}

/// A message tagged with a request id: requests carry an id chosen by the sender, unique
/// among its requests in flight on the stream; responses carry the id of their request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame<T> {
    /// The request id.
    pub id: u64,
    /// The message.
    pub body: T,
}

/// A client request frame.
pub type RequestFrame = Frame<Request>;
/// A node's response frame.
pub type ResponseFrame = Frame<Response>;

/// A frame that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the stream allows.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLong {
        /// Announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid message.
    #[error("malformed frame: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The message could not be encoded.
    #[error("cannot encode frame: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// First allocation of a frame buffer: small messages fit without growing.
const FRAME_START_CAPACITY: usize = 256;

/// Appends `message` as one length-prefixed frame to `out`.
pub fn encode_frame<T: Serialize>(message: &T, out: &mut BytesMut) -> Result<(), FrameError> {
    out.extend_from_slice(&frame_bytes(message)?);
    Ok(())
}

/// Encodes `message` as one frame. Structs are MessagePack arrays (fields in declaration
/// order; decoding a 1 KiB put measured 21% faster than with field names), and every
/// decoder also reads the map form. rmp-serde writes many small pieces; a `Vec` takes
/// them ~3x faster than `BytesMut::writer` (measured in benches/hot_paths.rs), and
/// becomes `Bytes` without a copy.
pub fn frame_bytes<T: Serialize>(message: &T) -> Result<Bytes, FrameError> {
    frame_bytes_sized(message, FRAME_START_CAPACITY)
}

/// [`frame_bytes`] into a buffer of `capacity` bytes: a message carrying a value would
/// otherwise grow (and copy) its buffer on the way.
pub fn frame_bytes_sized<T: Serialize>(message: &T, capacity: usize) -> Result<Bytes, FrameError> {
    let mut out = Vec::with_capacity(capacity);
    out.extend_from_slice(&[0; LENGTH_PREFIX]);
    rmp_serde::encode::write(&mut out, message)?;
    let len = (out.len() - LENGTH_PREFIX) as u32;
    out[..LENGTH_PREFIX].copy_from_slice(&len.to_le_bytes());
    Ok(Bytes::from(out))
}

/// Splits the next complete frame body off the front of `buf`, if there is one.
pub fn split_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < LENGTH_PREFIX {
        return Ok(None);
    }
    let mut prefix = [0u8; LENGTH_PREFIX];
    prefix.copy_from_slice(&buf[..LENGTH_PREFIX]);
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    if buf.len() < LENGTH_PREFIX + len {
        buf.reserve(LENGTH_PREFIX + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_PREFIX);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Decodes one frame body.
pub fn decode<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, FrameError> {
    Ok(rmp_serde::from_slice(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn put_frame(value_len: usize) -> RequestFrame {
        RequestFrame {
            id: 42,
            body: Request::Put {
                epoch: 7,
                key: Bytes::from_static(b"k"),
                record: Record {
                    version: Version { micros: 1, writer: 2 },
                    value: Some(Bytes::from(vec![0xab; value_len])),
                },
            },
        }
    }

    #[test]
    fn frames_round_trip_one_byte_at_a_time() {
        let frames = [
            put_frame(0),
            put_frame(1024),
            RequestFrame {
                id: 1,
                body: Request::Members,
            },
        ];
        let mut wire = BytesMut::new();
        for f in &frames {
            encode_frame(f, &mut wire).unwrap();
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(body) = split_frame(&mut buf, 1 << 20).unwrap() {
                got.push(decode::<RequestFrame>(&body).unwrap());
            }
        }
        assert_eq!(got, frames);
    }

    #[test]
    fn byte_fields_are_compact() {
        let body = frame_bytes(&put_frame(1024)).unwrap();
        assert!(
            body.len() < 1024 + 128,
            "1 KiB value encodes as bytes, not an array: {}",
            body.len()
        );
    }

    /// Found by the client_response fuzz target: a member list whose max_key_bytes is
    /// u64::MAX overflowed the client's frame limit (a panic in debug builds, a tiny
    /// limit in release ones).
    #[test]
    fn a_member_list_with_overflowing_limits_has_no_frame_limit() {
        let members = "92cd012c81a74d656d62657273979392a26e3181a2563492947f000001cd1b5992a26e3281a2563492947f\
                       000001cd1b5a92a26e3381a2563492947f000001cd1b5bcd01000394030202cd1388cfffffffffffffffff\
                       ce00400000c3";
        let bytes: Vec<u8> = (0..members.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&members[i..i + 2], 16).unwrap())
            .collect();
        let Response::Members(mut info) = decode::<ResponseFrame>(&bytes).unwrap().body else {
            panic!("the input is a member list");
        };
        assert_eq!(info.max_frame(), None);
        info.max_key_bytes = 1024;
        assert_eq!(info.max_frame(), Some(1024 + (4 << 20) + FRAME_OVERHEAD));
    }

    #[test]
    fn oversized_and_garbage_frames_are_errors() {
        let mut buf = BytesMut::from(&(1u32 << 30).to_le_bytes()[..]);
        assert!(matches!(
            split_frame(&mut buf, 1 << 20),
            Err(FrameError::TooLong { .. })
        ));
        let garbage = [0xc1u8, 0xff, 0x00];
        assert!(decode::<RequestFrame>(&garbage).is_err());
    }
}
