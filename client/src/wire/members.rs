//! The answer to `Members`: the cluster's members, its settings, and which members the
//! answering node sees down.
//!
//! [`ClusterInfo`] is the one message that gained a field after its protocol version was
//! fixed (`down`). Frames encode structs as MessagePack arrays, and a decoder that
//! predates a field refuses an array longer than it expects; so this message is always
//! written as a map (field names as keys), which every decoder reads and whose unknown
//! keys an older client skips. Reading an older node's answer (an array without `down`)
//! gives an empty `down`. Members are asked for once per client, so the names cost
//! nothing that matters.

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::FRAME_OVERHEAD;

/// Everything a client needs to route requests: members and the cluster's settings.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClusterInfo {
    /// Members in join order: `(node id, address)`.
    pub members: Vec<Member>,
    /// Number of partitions of the hash space.
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// Default n/w/r of requests that do not choose their own.
    pub defaults: QuorumDefaults,
    /// Largest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Whether writes for unreachable replicas go to a fallback node as hints.
    pub hinted_handoff: bool,
    /// Node ids of the members the answering node's failure detector held as down when
    /// it answered, so that a new client sends their writes to fallbacks at once instead
    /// of waiting for a dial that cannot succeed. Empty from nodes that predate it.
    #[serde(default)]
    pub down: Vec<String>,
    /// The answering node's layout history: the client routes with it (`members` is its
    /// roster). `None` from nodes that predate layouts: the client seeds version 1 from
    /// `members`, as those nodes did.
    #[serde(default)]
    pub layout: Option<crate::layout::LayoutHistory>,
}

/// Fields of [`ClusterInfo`] on the wire.
const CLUSTER_INFO_FIELDS: usize = 9;

/// Always a map, whatever the serializer's struct form (see the module doc). Every field
/// of [`ClusterInfo`] must be listed here; the round-trip test in this module fails for
/// one that is not.
impl Serialize for ClusterInfo {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(CLUSTER_INFO_FIELDS))?;
        map.serialize_entry("members", &self.members)?;
        map.serialize_entry("partitions", &self.partitions)?;
        map.serialize_entry("replication_factor", &self.replication_factor)?;
        map.serialize_entry("defaults", &self.defaults)?;
        map.serialize_entry("max_key_bytes", &self.max_key_bytes)?;
        map.serialize_entry("max_value_bytes", &self.max_value_bytes)?;
        map.serialize_entry("hinted_handoff", &self.hinted_handoff)?;
        map.serialize_entry("down", &self.down)?;
        map.serialize_entry("layout", &self.layout)?;
        map.end()
    }
}

impl ClusterInfo {
    /// Largest frame a client accepts from the cluster's nodes: a largest key and value
    /// plus [`FRAME_OVERHEAD`]; `None` when the limits a seed sent do not add up in a
    /// `usize` (no node sends those: the client refuses the member list).
    pub fn max_frame(&self) -> Option<usize> {
        self.max_key_bytes
            .checked_add(self.max_value_bytes)?
            .checked_add(FRAME_OVERHEAD)
    }
}

/// One cluster member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Node id, unique in the cluster; also the name in its TLS certificate.
    pub id: String,
    /// Address its QUIC endpoint listens on.
    pub addr: std::net::SocketAddr,
}

/// Default quorum sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumDefaults {
    /// Replicas contacted per request.
    pub n: usize,
    /// Acknowledgements a write waits for.
    pub w: usize,
    /// Answers a read waits for.
    pub r: usize,
    /// Request timeout in milliseconds.
    pub timeout_ms: u64,
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::{ClusterInfo, Member, QuorumDefaults};
    use crate::wire::{decode, frame_bytes, Frame, Response, ResponseFrame};

    /// `ClusterInfo` as clients before `down` knew it (derived: arrays on the wire).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OldClusterInfo {
        members: Vec<Member>,
        partitions: u32,
        replication_factor: usize,
        defaults: QuorumDefaults,
        max_key_bytes: usize,
        max_value_bytes: usize,
        hinted_handoff: bool,
    }

    /// The one variant of `Response` this test needs, as older code has it.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum OldResponse {
        Members(OldClusterInfo),
    }

    fn info(down: &[&str]) -> ClusterInfo {
        ClusterInfo {
            members: vec![Member {
                id: "n1".into(),
                addr: ([127, 0, 0, 1], 7001).into(),
            }],
            partitions: 64,
            replication_factor: 1,
            defaults: QuorumDefaults {
                n: 1,
                w: 1,
                r: 1,
                timeout_ms: 1_000,
            },
            max_key_bytes: 1024,
            max_value_bytes: 4096,
            hinted_handoff: true,
            down: down.iter().map(|s| s.to_string()).collect(),
            layout: None,
        }
    }

    #[test]
    fn every_field_round_trips() {
        let mut sent = info(&["n2", "n3"]);
        let layout = crate::layout::LayoutHistory::seed(sent.members.clone(), 64, 1).unwrap();
        sent.layout = Some(layout);
        let frame = frame_bytes(&Frame {
            id: 1,
            body: Response::Members(sent.clone()),
        })
        .unwrap();
        let got: ResponseFrame = decode(&frame[4..]).unwrap();
        assert_eq!(got.body, Response::Members(sent));
    }

    #[test]
    fn a_client_that_predates_down_reads_the_answer() {
        let frame = frame_bytes(&Frame {
            id: 1,
            body: Response::Members(info(&["n2"])),
        })
        .unwrap();
        let old: Frame<OldResponse> = decode(&frame[4..]).expect("an old client decodes the new answer");
        let OldResponse::Members(old) = old.body;
        assert_eq!((old.partitions, old.max_value_bytes), (64, 4096));
    }

    #[test]
    fn an_answer_from_a_node_that_predates_down_reads_as_nobody_down() {
        let new = info(&[]);
        let old = OldClusterInfo {
            members: new.members.clone(),
            partitions: new.partitions,
            replication_factor: new.replication_factor,
            defaults: new.defaults,
            max_key_bytes: new.max_key_bytes,
            max_value_bytes: new.max_value_bytes,
            hinted_handoff: new.hinted_handoff,
        };
        let frame = frame_bytes(&Frame {
            id: 1,
            body: OldResponse::Members(old),
        })
        .unwrap();
        let got: ResponseFrame = decode(&frame[4..]).expect("a new client decodes the old answer");
        assert_eq!(got.body, Response::Members(new));
    }
}
