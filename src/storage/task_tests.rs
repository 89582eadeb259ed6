//! The store on the memory engine runs entirely on the runtime that started it, as the
//! simulation needs: on a current-thread runtime with a paused clock, every engine call
//! (writer, reader, scans, rebuild, periodic fsync) happens on the test's own thread, in
//! the same order on every run, periodic fsyncs happen at simulated times, and its tasks
//! end when it is dropped.

use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::clock::system_clock;

use super::engine::{KeyRange, Persist, ReadView, Slice, Space, Visit, Work};
use super::mem_engine::{MemBatch, MemSnapshot};
use super::store::test_options;
use super::{test_record as record, Engine, HintStored, MemEngine, Storage, StorageError, Store, StoreOptions};
use crate::config::DurabilityMode;

/// The periodic fsync interval of these tests (simulated time).
const INTERVAL: Duration = Duration::from_secs(1);
/// Keys written before the crash: more than one rebuild chunk, so the rebuild yields.
const KEYS: u64 = 5000;
/// Simulated time a test waits for a rebuild (on a paused clock it costs nothing).
const REBUILD_DEADLINE: Duration = Duration::from_secs(60);
/// The step of a test's polling loop, in simulated time.
const POLL: Duration = Duration::from_millis(1);

/// The engine calls seen, in order, and whether each was made on the test's thread.
struct Trace {
    /// The thread the test runs on (the runtime's only thread).
    home: ThreadId,
    /// `(call, on the test's thread)`, in the order made.
    calls: Mutex<Vec<(&'static str, bool)>>,
}

/// The memory engine (or a snapshot of it), noting each call in a [`Trace`].
#[derive(Clone)]
struct Traced<T> {
    inner: T,
    trace: Arc<Trace>,
}

impl<T> Traced<T> {
    fn note(&self, call: &'static str) {
        let home = std::thread::current().id() == self.trace.home;
        self.trace.calls.lock().unwrap().push((call, home));
    }
}

impl<T: ReadView> ReadView for Traced<T> {
    fn scan(&self, space: Space, range: KeyRange, visit: impl Visit) -> Result<(), StorageError> {
        self.note(std::any::type_name::<T>());
        self.inner.scan(space, range, visit)
    }
}

impl Engine for Traced<MemEngine> {
    type Batch = MemBatch;
    type Snapshot = Traced<MemSnapshot>;
    const WORK: Work = MemEngine::WORK;

    fn batch(&self) -> MemBatch {
        self.inner.batch()
    }
    fn commit(&self, batch: MemBatch, persist: Persist) -> Result<(), StorageError> {
        self.note("commit");
        self.inner.commit(batch, persist)
    }
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>, StorageError> {
        self.note("get");
        self.inner.get(space, key)
    }
    fn snapshot(&self) -> Traced<MemSnapshot> {
        self.note("snapshot");
        Traced {
            inner: self.inner.snapshot(),
            trace: self.trace.clone(),
        }
    }
    fn sync(&self) -> Result<(), StorageError> {
        self.note("sync");
        self.inner.sync()
    }
    fn disk_bytes(&self) -> Option<u64> {
        self.inner.disk_bytes()
    }
}

/// Periodic mode, one fsync per [`INTERVAL`].
fn periodic() -> StoreOptions {
    StoreOptions {
        durability: DurabilityMode::Periodic,
        interval: INTERVAL,
        ..test_options()
    }
}

fn key(i: u64) -> Bytes {
    Bytes::from(format!("key{i}"))
}

fn roots<E: Engine>(store: &Store<E>) -> Vec<u64> {
    (0..256).map(|p| store.forest().root(p)).collect()
}

/// Writes, reads and scans, a periodic fsync at its simulated time, a power cut and the
/// rebuild after it, all on `engine`; returns the engine calls made.
async fn a_node_life(engine: MemEngine) -> Vec<(&'static str, bool)> {
    let trace = Arc::new(Trace {
        home: std::thread::current().id(),
        calls: Mutex::new(Vec::new()),
    });
    let traced = |inner| Traced {
        inner,
        trace: trace.clone(),
    };
    let store = Store::start(traced(engine.clone()), periodic(), system_clock()).unwrap();
    let writes = (0..KEYS).map(|i| store.apply(key(i), record(i + 1, Some(b"v"))));
    assert!(join_all(writes).await.into_iter().all(|w| w.unwrap().applied));
    assert!(store.apply(key(0), record(KEYS + 1, None)).await.unwrap().applied);
    let hint = store.store_hint("n2".into(), key(1), record(7, None)).await;
    assert_eq!(hint.unwrap(), HintStored::Stored);
    assert_eq!(store.get(key(2)).await.unwrap(), Some(record(3, Some(b"v"))));
    let all = store.entries(0, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(all.entries.len() as u64, KEYS);
    assert_eq!(store.tombstones(None, 10).await.unwrap().len(), 1);
    assert_eq!(store.hints_for("n2".into(), 10).await.unwrap().len(), 1);

    // The fsync is due one simulated interval after the start: not a moment before.
    tokio::time::sleep(INTERVAL - POLL).await;
    assert!(engine.unsynced() > 0, "no fsync before the interval elapsed");
    tokio::time::sleep(POLL * 2).await;
    assert_eq!(engine.unsynced(), 0, "the periodic fsync ran at its simulated time");
    let live = roots(&store);
    let survived = engine.crash();
    drop(store);

    let store = Store::start(traced(survived), periodic(), system_clock()).unwrap();
    let older = store.apply(key(KEYS - 1), record(1, Some(b"old"))).await.unwrap();
    assert!(!older.applied, "the synced version wins while the index still loads");
    let start = tokio::time::Instant::now();
    while !store.forest().is_ready() || !store.index.is_loaded() {
        assert!(start.elapsed() < REBUILD_DEADLINE, "the rebuild finishes");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(roots(&store), live, "the rebuilt trees describe what was synced");
    assert_eq!(store.get(key(0)).await.unwrap(), Some(record(KEYS + 1, None)));
    drop(store);
    let runtime = tokio::runtime::Handle::current().metrics();
    let start = tokio::time::Instant::now();
    while runtime.num_alive_tasks() > 0 {
        assert!(start.elapsed() < INTERVAL * 10, "the store's tasks end with it");
        tokio::time::sleep(POLL).await;
    }
    let calls = trace.calls.lock().unwrap().clone();
    calls
}

/// `life` on a new current-thread runtime with a paused clock, as a simulation runs.
fn simulated<T>(life: impl std::future::Future<Output = T>) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime");
    runtime.block_on(life)
}

#[test]
fn a_memory_store_runs_on_a_paused_current_thread_runtime_in_the_same_order_every_time() {
    let first = simulated(a_node_life(MemEngine::new()));
    let elsewhere: Vec<&str> = first.iter().filter(|(_, home)| !home).map(|(call, _)| *call).collect();
    assert!(
        elsewhere.is_empty(),
        "engine calls made off the runtime's thread: {elsewhere:?}"
    );
    for call in ["commit", "get", "sync", "snapshot", std::any::type_name::<MemEngine>()] {
        assert!(first.iter().any(|(c, _)| *c == call), "no {call} call seen");
    }
    let snapshot_scans = first.iter().filter(|(c, _)| *c == std::any::type_name::<MemSnapshot>());
    assert!(snapshot_scans.count() > 2, "the rebuild scans in chunks");
    let second = simulated(a_node_life(MemEngine::new()));
    assert!(first == second, "a second run made different engine calls");
}

#[tokio::test(start_paused = true)]
async fn a_failed_periodic_fsync_poisons_the_store() {
    let engine = MemEngine::new();
    let store = Store::start(engine.clone(), periodic(), system_clock()).unwrap();
    assert!(store.apply(key(1), record(1, Some(b"v"))).await.unwrap().applied);
    engine.fail_from_now(true);
    tokio::time::sleep(INTERVAL / 2).await;
    assert!(!store.is_poisoned(), "nothing failed yet");
    tokio::time::sleep(INTERVAL).await;
    assert!(store.is_poisoned(), "the fsync at the interval failed");
    let refused = store.get(key(1)).await;
    assert!(matches!(refused, Err(StorageError::Fatal(_))), "{refused:?}");
    drop(store);
    let restarted = Store::start(engine.crash(), periodic(), system_clock()).unwrap();
    assert_eq!(restarted.get(key(1)).await.unwrap(), None, "the write was never synced");
}
