//! Micro-benchmarks of [`FjallStorage`], the node's storage seam: compare-and-write of
//! 1 KiB records and point reads, through the same async API the replica code calls
//! (writer thread, group commit, Merkle upkeep, the reader thread), on a
//! current-thread tokio runtime like the node's.
//!
//! - `periodic/apply`: one write at a time, `periodic` durability (no fsync on the path),
//!   so it measures our code plus fjall's insert and the hop to the writer thread and back.
//! - `periodic/apply_x64`, `sync/apply_x64`: 64 concurrent writes per iteration (the
//!   node's load at 64 requests in flight); in `sync` mode they share fdatasyncs through
//!   the writer's group commit. Throughput is per write.
//! - `sync/apply`: one write at a time with an fdatasync each (what a lone client sees).
//! - `read/get`: a point read of an existing key (10,000 keys stored); `read/get_x64`: 64
//!   concurrent reads per iteration (batched by the reader thread), throughput per read.
//!
//! Every write is a new key, so each one is applied. The store lives in a temporary
//! directory under `TMPDIR` (`/tmp` by default; its disk decides the fsync cost). Compare
//! with the ceilings in `../shared/limits/RESULTS.md` (fjall insert ≈ 7 µs, point read
//! ≈ 6 µs, group commit of 64 with SyncData ≈ 113k inserts/s).
//!
//! Run with `cargo bench --bench storage` (add a filter such as `-- sync/` to run one
//! group). Runs are kept short (1 s warm-up, 3 s measured, 30 samples).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::future::join_all;
use quorumkv::config::DurabilityMode;
use quorumkv::storage::{FjallStorage, Storage, StoreOptions};
use quorumkv_client::clock::system_clock;
use quorumkv_client::wire::Record;
use quorumkv_client::Version;
use tempfile::TempDir;
use tokio::runtime::Runtime;

/// Value size the targets use.
const VALUE_LEN: usize = 1024;
/// Writes in flight per iteration of the concurrent benches (the targets' 64 in flight).
const CONCURRENT: usize = 64;
/// Keys stored before the read bench.
const READ_KEYS: u64 = 10_000;
/// Periodic mode's fsync interval (the cluster default).
const FSYNC_INTERVAL: Duration = Duration::from_millis(100);

/// A store in its own temporary directory, removed on drop (after the store closes).
struct Bench {
    store: FjallStorage,
    _dir: TempDir,
    /// Next key number: every write goes to a fresh key.
    next: AtomicU64,
    value: Bytes,
}

impl Bench {
    fn open(durability: DurabilityMode) -> Bench {
        let dir = tempfile::tempdir().expect("temporary directory");
        let options = StoreOptions {
            durability,
            interval: FSYNC_INTERVAL,
            partitions: 256,
            max_hints_per_node: 1024,
            cache_bytes: 256 << 20,
            memtable_bytes: 64 << 20,
        };
        let store = FjallStorage::open(dir.path(), options, system_clock()).expect("open store");
        Bench {
            store,
            _dir: dir,
            next: AtomicU64::new(0),
            value: Bytes::from(vec![0xab; VALUE_LEN]),
        }
    }

    /// A 16-byte key for key number `i`.
    fn key(i: u64) -> Bytes {
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(b"user:key");
        key[8..].copy_from_slice(&i.to_be_bytes());
        Bytes::copy_from_slice(&key)
    }

    /// Writes the next fresh key.
    async fn apply_next(&self) {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        let record = Record {
            version: Version {
                micros: 1_795_385_947_000_000 + i,
                writer: 1,
            },
            value: Some(self.value.clone()),
        };
        let applied = self.store.apply(Bench::key(i), record).await.expect("apply");
        assert!(applied.applied, "fresh keys are always applied");
    }

    /// Reads key number `i`, which must be stored.
    async fn get(&self, i: u64) {
        let found = self.store.get(Bench::key(i)).await.expect("get");
        assert!(found.is_some(), "key {i} is stored");
    }

    async fn apply_concurrent(&self) {
        join_all((0..CONCURRENT).map(|_| self.apply_next())).await;
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn writes(c: &mut Criterion, durability: DurabilityMode, name: &str) {
    let rt = runtime();
    // The store answers through a task on the runtime it was opened in.
    let _inside = rt.enter();
    let bench = Bench::open(durability);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply", |b| b.to_async(&rt).iter(|| bench.apply_next()));
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.bench_function(format!("apply_x{CONCURRENT}"), |b| {
        b.to_async(&rt).iter(|| bench.apply_concurrent())
    });
    group.finish();
}

fn periodic(c: &mut Criterion) {
    writes(c, DurabilityMode::Periodic, "periodic");
}

fn sync(c: &mut Criterion) {
    writes(c, DurabilityMode::Sync, "sync");
}

fn get(c: &mut Criterion) {
    let rt = runtime();
    let _inside = rt.enter();
    let bench = Bench::open(DurabilityMode::Periodic);
    rt.block_on(async {
        for _ in 0..READ_KEYS / CONCURRENT as u64 + 1 {
            bench.apply_concurrent().await;
        }
    });
    let stored = bench.next.load(Ordering::Relaxed);
    let mut group = c.benchmark_group("read");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("get", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 7919) % stored;
            bench.get(black_box(i))
        })
    });
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group.bench_function(format!("get_x{CONCURRENT}"), |b| {
        b.to_async(&rt).iter(|| {
            let reads = (0..CONCURRENT).map(|_| {
                i = (i + 7919) % stored;
                bench.get(i)
            });
            join_all(reads.collect::<Vec<_>>())
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30)
}

criterion_group! {
    name = storage;
    config = config();
    targets = periodic, sync, get
}
criterion_main!(storage);
