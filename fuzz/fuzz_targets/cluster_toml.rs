//! cluster.toml loading and validation ([`ClusterConfig::parse`], from a string).
//!
//! Properties: a config that validates has every setting within its documented range,
//! including the ranges the node's own arithmetic and storage need (durations it keeps
//! in µs, sizes it keeps in bytes, keys fjall can store, frame limits a `u32` length
//! prefix can carry), and builds a ring; a config that does not validate says why, each
//! problem naming its field.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use quorumkv::config::{ClusterConfig, ConfigError, DurabilityMode};
use quorumkv::peer::peer_max_frame;
use quorumkv_client::ring::{Ring, MAX_PARTITIONS};
use quorumkv_client::wire::FRAME_OVERHEAD;

/// Longest key fjall stores (lsm-tree asserts it on every insert).
const FJALL_MAX_KEY: usize = u16::MAX as usize;
/// Longest node id: a hint key is `owner id, separator, 8-byte hash, key`.
const MAX_NODE_ID: usize = 63;
/// Largest configurable value size, as `validate` documents it.
const MAX_VALUE_LIMIT: usize = 64 << 20;
/// Where every problem `validate` reports starts: the field it names.
const FIELDS: [&str; 8] = [
    "partitions",
    "replication_factor",
    "defaults.",
    "limits.",
    "durability.",
    "convergence.",
    "storage.",
    "nodes",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClusterConfig::parse(text, PathBuf::from("/etc/quorumkv")) {
        Ok(config) => check_valid(&config),
        Err(ConfigError::Invalid { problems, .. }) => {
            assert!(!problems.is_empty(), "invalid without a reason");
            for problem in problems {
                assert!(
                    FIELDS.iter().any(|f| problem.starts_with(f)),
                    "names no field: {problem}"
                );
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});

fn check_valid(c: &ClusterConfig) {
    let p = c.partitions;
    assert!(p.is_power_of_two() && p <= MAX_PARTITIONS, "partitions = {p}");
    let (rf, nodes) = (c.replication_factor, c.nodes.len());
    assert!(
        (1..=nodes).contains(&rf),
        "replication_factor = {rf} with {nodes} nodes"
    );
    let d = c.defaults;
    assert!((1..=rf).contains(&d.n) && (1..=d.n).contains(&d.w) && (1..=d.n).contains(&d.r));
    assert!(d.timeout_ms > 0);
    check_limits(c);
    let positive = [
        c.convergence.anti_entropy_interval_ms,
        c.convergence.anti_entropy_keys_per_sec,
        c.convergence.anti_entropy_bytes_per_sec,
        c.convergence.hint_delivery_interval_ms,
        c.convergence.ping_interval_ms,
        u64::from(c.convergence.down_after_missed_pings),
        c.storage.block_cache_mb,
        c.storage.memtable_mb,
    ];
    assert!(positive.iter().all(|v| *v > 0), "{positive:?}");
    if c.durability.mode == DurabilityMode::Periodic {
        assert!(c.durability.interval_ms > 0);
    }
    check_nodes(c);
}

/// Limits the node turns into other units or hands to fjall must survive the conversion.
fn check_limits(c: &ClusterConfig) {
    let l = c.limits;
    let key_room = FJALL_MAX_KEY - MAX_NODE_ID - 1 - 8;
    assert!(
        (1..=key_room).contains(&l.max_key_bytes),
        "max_key_bytes = {}",
        l.max_key_bytes
    );
    assert!(l.max_value_bytes <= MAX_VALUE_LIMIT);
    let client_frame = l.max_key_bytes + l.max_value_bytes + FRAME_OVERHEAD;
    for frame in [client_frame, peer_max_frame(c)] {
        assert!(
            u32::try_from(frame).is_ok(),
            "frame limit {frame} exceeds the u32 prefix"
        );
    }
    for (name, ms) in [
        ("max_clock_skew_ms", l.max_clock_skew_ms),
        ("tombstone_grace_ms", c.convergence.tombstone_grace_ms),
    ] {
        assert!(ms.checked_mul(1000).is_some(), "{name} = {ms} wraps in µs");
        let micros = std::time::Duration::from_millis(ms).as_micros();
        assert_eq!(micros as u64 as u128, micros, "{name} = {ms} wraps in µs");
    }
    for (name, mb) in [
        ("block_cache_mb", c.storage.block_cache_mb),
        ("memtable_mb", c.storage.memtable_mb),
    ] {
        assert_eq!((mb << 20) >> 20, mb, "storage.{name} = {mb} wraps in bytes");
    }
}

/// Node ids are TLS names and hint-key prefixes; the members must make a ring.
fn check_nodes(c: &ClusterConfig) {
    for node in &c.nodes {
        let id = &node.id;
        assert!(
            id.len() <= MAX_NODE_ID && id.starts_with(|ch: char| ch.is_ascii_lowercase()),
            "{id:?}"
        );
        assert!(id
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-'));
        assert_ne!(node.addr.port(), 0);
    }
    let ring = Ring::new(&c.node_ids(), c.partitions, c.replication_factor);
    let ring = ring.unwrap_or_else(|e| panic!("a valid config makes no ring: {e}"));
    let replicas = c.replication_factor.min(c.nodes.len());
    assert_eq!(ring.replicas(c.partitions - 1).len(), replicas);
    let info = c.cluster_info();
    assert_eq!(info.members.len(), c.nodes.len());
}
