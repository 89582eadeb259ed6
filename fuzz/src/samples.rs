//! One sample of every message variant of both protocols, framed as a receiver sees them
//! (`Frame { id, body }`). They seed the corpus: random bytes rarely form a valid
//! MessagePack enum, so the fuzzer starts from real messages and mutates them.

use bytes::Bytes;
use quorumkv::peer::{KeyedRecord, LeafEntries, LeafProbe, PeerRequest, PeerResponse};
use quorumkv::storage::Entry;
use quorumkv_client::layout::{Change, LayoutHistory, MoveStatus, PartitionKeys, Progress, PullLeft};
use quorumkv_client::wire::{
    AgreementSummary, AntiEntropyCounters, ClusterInfo, ErrorKind, ErrorReply, Frame, HeldVersion, Member, NodeStatus,
    NodeSummary, PartitionStatus, PeerStatus, QuorumDefaults, Record, ReplicaAgreement, Request, Response,
    FRAME_OVERHEAD,
};
use quorumkv_client::Version;

/// A version that looks like a real one (a 2026 timestamp and a random writer).
const VERSION: Version = Version {
    micros: 1_780_000_000_000_000,
    writer: 0x5eed_f00d_dead_beef,
};

fn record(value: Option<&'static [u8]>) -> Record {
    Record {
        version: VERSION,
        value: value.map(Bytes::from_static),
    }
}

fn key() -> Bytes {
    Bytes::from_static(b"user:42")
}

/// Client requests; every variant but `GetVersion`, `StatusSummary` and `GetOwn` is also
/// protocol version 1.
pub fn client_requests() -> Vec<(&'static str, Frame<Request>)> {
    let epoch = 0x1234_5678_9abc_def0;
    let bodies = [
        ("get", Request::Get { epoch, key: key() }),
        (
            "put",
            Request::Put {
                epoch,
                key: key(),
                record: record(Some(b"hello")),
            },
        ),
        (
            "delete",
            Request::Put {
                epoch,
                key: key(),
                record: record(None),
            },
        ),
        (
            "put_hint",
            Request::PutHint {
                epoch,
                owner: "n3".into(),
                key: key(),
                record: record(Some(b"v")),
            },
        ),
        ("members", Request::Members),
        ("status", Request::Status),
        ("v2_get_version", Request::GetVersion { epoch, key: key() }),
        ("v2_status_summary", Request::StatusSummary { partitions: true }),
        ("v2_get_own", Request::GetOwn { epoch, key: key() }),
        ("v2_layout", Request::Layout),
        (
            "v2_change_layout",
            Request::ChangeLayout(Change::Add {
                id: "n4".into(),
                addr: ([127, 0, 0, 1], 7004).into(),
            }),
        ),
        (
            "v2_remove",
            Request::ChangeLayout(Change::Remove {
                id: "n2".into(),
                gone: true,
            }),
        ),
        ("v2_skip", Request::ChangeLayout(Change::Skip { id: "n3".into() })),
        ("v2_move_status", Request::MoveStatus),
        (
            "v2_partition_keys",
            Request::PartitionKeys {
                partitions: vec![0, 7, 255],
            },
        ),
    ];
    framed(bodies)
}

/// Node answers to client requests; every variant but `Version`, `StatusSummary` and the
/// `Refilling` error is also version 1.
pub fn client_responses() -> Vec<(&'static str, Frame<Response>)> {
    let bodies = [
        ("record", Response::Record(Some(record(Some(b"hello"))))),
        ("no_record", Response::Record(None)),
        (
            "put",
            Response::Put {
                applied: true,
                current: VERSION,
            },
        ),
        ("members", Response::Members(cluster_info())),
        (
            "v2_members_with_layout",
            Response::Members(ClusterInfo {
                layout: Some(moving_layout()),
                ..cluster_info()
            }),
        ),
        // Limits whose frame size is exactly usize::MAX: one mutation past it overflows.
        ("members_at_limits", Response::Members(cluster_info_at_limits())),
        ("status", Response::Status(node_status())),
        (
            "error",
            Response::Error(ErrorReply {
                kind: ErrorKind::StaleEpoch,
                message: "routed with epoch 1".into(),
            }),
        ),
        (
            "v2_version",
            Response::Version(Some(HeldVersion {
                version: VERSION,
                tombstone: true,
            })),
        ),
        ("v2_status_summary", Response::StatusSummary(node_summary())),
        (
            "v2_refilling",
            Response::Error(ErrorReply {
                kind: ErrorKind::Refilling,
                message: "refilling after starting empty, and replica n3 did not answer".into(),
            }),
        ),
        ("v2_layout", Response::Layout(Box::new(moving_layout()))),
        ("v2_stale_layout", Response::StaleLayout(Box::new(moving_layout()))),
        (
            "v2_move_status",
            Response::MoveStatus(MoveStatus {
                node: "n4".into(),
                version: 2,
                progress: Progress::done(1),
                pulling: vec![PullLeft {
                    partition: 9,
                    sources: vec!["n1".into(), "n2".into()],
                    keys_here: 120,
                }],
                dropping: vec![PartitionKeys { partition: 3, keys: 40 }],
            }),
        ),
        (
            "v2_partition_keys",
            Response::PartitionKeys(vec![PartitionKeys {
                partition: 0,
                keys: 3906,
            }]),
        ),
    ];
    framed(bodies)
}

/// Node-to-node requests.
pub fn peer_requests() -> Vec<(&'static str, Frame<PeerRequest>)> {
    let bodies = [
        (
            "ping",
            PeerRequest::Ping {
                digest: 7,
                layout: Some(Box::new(moving_layout())),
            },
        ),
        (
            "ping_without_layout",
            PeerRequest::Ping {
                digest: 7,
                layout: None,
            },
        ),
        (
            "roots",
            PeerRequest::Roots {
                from: "n2".into(),
                roots: vec![(0, 1), (255, u64::MAX)],
            },
        ),
        (
            "leaves",
            PeerRequest::Leaves {
                leaves: vec![
                    LeafProbe {
                        partition: 7,
                        leaf: 3,
                        hash: 0xabcdef,
                        from: 0x0700_0000_0000_0000,
                    },
                    LeafProbe {
                        partition: 8,
                        leaf: 31,
                        hash: 1,
                        from: u64::MAX,
                    },
                ],
            },
        ),
        (
            "exchange",
            PeerRequest::Exchange {
                push: keyed_records(),
                pull: vec![key(), Bytes::new()],
            },
        ),
    ];
    framed(bodies)
}

/// Node-to-node answers.
pub fn peer_responses() -> Vec<(&'static str, Frame<PeerResponse>)> {
    let entry = Entry {
        key: key(),
        version: VERSION,
        tombstone: false,
    };
    let bodies = [
        (
            "pong",
            PeerResponse::Pong {
                digest: 7,
                layout: Some(Box::new(moving_layout())),
            },
        ),
        (
            "inner",
            PeerResponse::Inner {
                partitions: vec![(3, vec![1, 2, 3, u64::MAX])],
            },
        ),
        (
            "entries",
            PeerResponse::Entries {
                leaves: vec![LeafEntries {
                    partition: 3,
                    leaf: 9,
                    from: 0x0324_0000_0000_0000,
                    through: 0x0327_ffff_ffff_ffff,
                    entries: vec![entry],
                }],
                unserved: vec![LeafProbe {
                    partition: 3,
                    leaf: 10,
                    hash: 2,
                    from: 0x0328_0000_0000_0000,
                }],
            },
        ),
        (
            "exchanged",
            PeerResponse::Exchanged {
                applied: vec![true, false],
                records: keyed_records(),
                unserved: vec![key()],
            },
        ),
        ("not_ready", PeerResponse::NotReady),
        ("error", PeerResponse::Error("storage failed".into())),
    ];
    framed(bodies)
}

fn framed<T, const N: usize>(bodies: [(&'static str, T); N]) -> Vec<(&'static str, Frame<T>)> {
    let ids = [1, 0, u64::MAX, 300];
    bodies
        .into_iter()
        .zip(ids.into_iter().cycle())
        .map(|((name, body), id)| (name, Frame { id, body }))
        .collect()
}

fn keyed_records() -> Vec<KeyedRecord> {
    vec![
        KeyedRecord {
            key: key(),
            record: record(Some(b"hello")),
        },
        KeyedRecord {
            key: Bytes::from_static(b"gone"),
            record: record(None),
        },
    ]
}

fn cluster_info() -> ClusterInfo {
    let member = |id: &str, port| Member {
        id: id.into(),
        addr: ([127, 0, 0, 1], port).into(),
    };
    ClusterInfo {
        members: vec![member("n1", 7001), member("n2", 7002), member("n3", 7003)],
        partitions: 256,
        replication_factor: 3,
        defaults: QuorumDefaults {
            n: 3,
            w: 2,
            r: 2,
            timeout_ms: 5_000,
        },
        max_key_bytes: 1024,
        max_value_bytes: 4 << 20,
        hinted_handoff: true,
        down: vec!["n3".into()],
        layout: None,
    }
}

/// A history in the middle of growing from three nodes to four.
fn moving_layout() -> LayoutHistory {
    let info = cluster_info();
    let three =
        LayoutHistory::seed(info.members, info.partitions, info.replication_factor).expect("three nodes make a ring");
    let four = Change::Add {
        id: "n4".into(),
        addr: ([127, 0, 0, 1], 7004).into(),
    };
    three.change(&four).expect("n4 can join")
}

fn cluster_info_at_limits() -> ClusterInfo {
    let max_value_bytes = 4 << 20;
    ClusterInfo {
        max_key_bytes: usize::MAX - max_value_bytes - FRAME_OVERHEAD,
        max_value_bytes,
        ..cluster_info()
    }
}

fn node_summary() -> NodeSummary {
    let status = node_status();
    NodeSummary {
        agreement: AgreementSummary::of(&status.partitions),
        status,
        keys: 12,
        disk_bytes: Some(4096),
    }
}

fn node_status() -> NodeStatus {
    NodeStatus {
        id: "n1".into(),
        trees_ready: true,
        peers: vec![PeerStatus {
            id: "n2".into(),
            up: true,
            missed_pings: 0,
        }],
        partitions: vec![PartitionStatus {
            partition: 5,
            replicas: vec![ReplicaAgreement {
                peer: "n2".into(),
                last_agreed_micros: Some(1),
                keys_repaired: 2,
            }],
        }],
        hints_held: vec![("n3".into(), 12)],
        hints_refused: 1,
        anti_entropy: AntiEntropyCounters {
            rounds: 3,
            records_pulled: 4,
            bytes_sent: 5,
            bytes_received: 6,
        },
    }
}
