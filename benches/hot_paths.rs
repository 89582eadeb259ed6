//! Micro-benchmarks of the pure code on every request: frame encode/decode, preference-list
//! lookup, version ordering and the Merkle leaf update. No I/O, no runtime: these are the
//! per-operation CPU costs that add up to the request path (compare them with the ceilings
//! in `../shared/limits/RESULTS.md`, e.g. rmp-serde encode+decode ≈ 0.20 µs, blake3 of
//! 32 B ≈ 100 ns, Merkle incremental update ≈ 2.2 µs).
//!
//! Run with `cargo bench --bench hot_paths` (add a filter such as `-- wire/` to run one
//! group). Runs are kept short (1 s warm-up, 2 s measured, 30 samples) so the whole suite
//! finishes in a few minutes on 2 cores; pass `--measurement-time 10` for steadier numbers.

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quorumkv::merkle::{entry_hash, PartitionTree, TreeShape};
use quorumkv::storage::Forest;
use quorumkv_client::ring::{key_hash, Ring};
use quorumkv_client::version::HybridClock;
use quorumkv_client::wire::{
    decode, encode_frame, frame_bytes_sized, split_frame, Frame, FrameSizeHint, Record, Request, RequestFrame,
    Response, ResponseFrame,
};
use quorumkv_client::Version;

/// Value size of the request path we size for (the targets use 1 KiB values).
const VALUE_LEN: usize = 1024;
/// Key size: a typical short application key.
const KEY_LEN: usize = 16;
/// The cluster default partition count.
const PARTITIONS: u32 = 256;
/// The cluster default replication factor.
const REPLICATION_FACTOR: usize = 3;
/// Distinct keys the lookups and hashes cycle through, so no result is a constant.
const KEYS: usize = 1024;
/// Deltas per `Forest::toggle_all` call: about one group commit's worth of writes.
const TOGGLE_BATCH: usize = 64;
/// Largest frame `split_frame` accepts here (the node's limit is of the same order).
const MAX_FRAME: usize = 1 << 20;

/// `KEYS` distinct keys of `KEY_LEN` bytes.
fn keys() -> Vec<[u8; KEY_LEN]> {
    (0..KEYS as u64)
        .map(|i| {
            let mut key = [0u8; KEY_LEN];
            key[..8].copy_from_slice(b"user:key");
            key[8..].copy_from_slice(&i.to_be_bytes());
            key
        })
        .collect()
}

fn record() -> Record {
    Record {
        version: Version {
            micros: 1_795_385_947_819_893,
            writer: 0x50bd_0c32_4302_8f8a,
        },
        value: Some(Bytes::from(vec![0xab; VALUE_LEN])),
    }
}

fn put_frame() -> RequestFrame {
    Frame {
        id: 1_000_003,
        body: Request::Put {
            epoch: 0x1234_5678_9abc_def0,
            key: Bytes::copy_from_slice(&keys()[7]),
            record: record(),
        },
    }
}

fn record_frame() -> ResponseFrame {
    Frame {
        id: 1_000_003,
        body: Response::Record(Some(record())),
    }
}

/// Encoding into a reused buffer, and splitting + decoding out of a read buffer, as the
/// transport does. The decode side copies the frame into the buffer first (what a socket
/// read does), so it includes one 1 KiB memcpy.
fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    bench_frame(&mut group, "put_request_1k", &put_frame());
    bench_frame(&mut group, "record_response_1k", &record_frame());
    group.finish();
}

fn bench_frame<T>(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>, name: &str, frame: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug + FrameSizeHint,
{
    let mut wire = BytesMut::new();
    encode_frame(frame, &mut wire).unwrap();
    let encoded = wire.freeze();
    group.throughput(Throughput::Bytes(encoded.len() as u64));

    // As the data path encodes: into a buffer sized for the message's value.
    group.bench_function(BenchmarkId::new("encode", name), |b| {
        b.iter(|| frame_bytes_sized(black_box(frame), frame.frame_size_hint()).unwrap())
    });

    let mut buf = BytesMut::with_capacity(2 * encoded.len());
    group.bench_function(BenchmarkId::new("split_decode", name), |b| {
        b.iter(|| {
            buf.extend_from_slice(black_box(&encoded));
            let body = split_frame(&mut buf, MAX_FRAME).unwrap().unwrap();
            decode::<T>(&body).unwrap()
        })
    });
    let mut check = BytesMut::from(&encoded[..]);
    let body = split_frame(&mut check, MAX_FRAME).unwrap().unwrap();
    assert_eq!(&decode::<T>(&body).unwrap(), frame, "{name} round-trips");
}

fn member_ids(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("n{i}")).collect()
}

/// `partition_of` (a blake3 of the key) + `replicas`, per key; and building a ring.
fn ring(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("ring");
    group.throughput(Throughput::Elements(1));
    for members in [3, 20] {
        let ring = Ring::new(&member_ids(members), PARTITIONS, REPLICATION_FACTOR).unwrap();
        let mut i = 0;
        group.bench_function(BenchmarkId::new("lookup", members), |b| {
            b.iter(|| {
                i = (i + 1) % KEYS;
                let partition = ring.partition_of(black_box(&keys[i]));
                ring.replicas(partition).len()
            })
        });
    }
    let ids = member_ids(20);
    group.bench_function(BenchmarkId::new("new", 20), |b| {
        b.iter(|| Ring::new(black_box(&ids), PARTITIONS, REPLICATION_FACTOR).unwrap())
    });
    group.finish();
}

/// `Version` ordering (what every compare-and-write and read resolution does) and the
/// writer's clock tick.
fn version(c: &mut Criterion) {
    // Pairs that differ in the timestamp, in the writer only, or not at all.
    let versions: Vec<Version> = (0..KEYS as u64)
        .map(|i| Version {
            micros: 1_795_385_947_000_000 + i / 3,
            writer: i % 5,
        })
        .collect();
    let mut group = c.benchmark_group("version");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("compare", |b| {
        b.iter(|| {
            i = (i + 1) % (KEYS - 1);
            black_box(versions[i]).cmp(&black_box(versions[i + 1]))
        })
    });
    let mut clock = HybridClock::new(0x50bd_0c32_4302_8f8a);
    let mut wall = 1_795_385_947_000_000u64;
    group.bench_function("hlc_next", |b| {
        b.iter(|| {
            wall += 1;
            clock.next(black_box(wall))
        })
    });
    group.finish();
}

/// The Merkle work of one write: hash the old and new entry, fold the delta into a leaf;
/// and the forest update after a group commit of `TOGGLE_BATCH` writes.
fn merkle(c: &mut Criterion) {
    let keys = keys();
    let shape = TreeShape::new(PARTITIONS);
    let old = Version {
        micros: 1_795_385_947_000_000,
        writer: 1,
    };
    let new = Version {
        micros: old.micros + 1,
        writer: 2,
    };
    let mut group = c.benchmark_group("merkle");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("entry_hash", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            entry_hash(black_box(&keys[i]), new, false)
        })
    });
    let mut tree = PartitionTree::new(shape);
    group.bench_function("toggle", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            tree.toggle(black_box(i % shape.leaves()), black_box(i as u64));
        })
    });
    group.bench_function("leaf_update", |b| {
        b.iter(|| {
            i = (i + 1) % KEYS;
            let key = black_box(&keys[i]);
            let delta = entry_hash(key, old, false) ^ entry_hash(key, new, false);
            tree.toggle(shape.leaf(key_hash(key)), delta);
        })
    });
    black_box(tree.root());

    let forest = Forest::new(PARTITIONS);
    let deltas: Vec<(u64, u64)> = keys
        .iter()
        .map(|key| (key_hash(key), entry_hash(key, new, false)))
        .collect();
    group.throughput(Throughput::Elements(TOGGLE_BATCH as u64));
    let mut start = 0;
    group.bench_function(BenchmarkId::new("forest_toggle_all", TOGGLE_BATCH), |b| {
        b.iter(|| {
            start = (start + TOGGLE_BATCH) % KEYS;
            forest.toggle_all(black_box(&deltas[start..start + TOGGLE_BATCH]).iter().copied());
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = hot_paths;
    config = config();
    targets = wire, ring, version, merkle
}
criterion_main!(hot_paths);
