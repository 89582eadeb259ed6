//! The store's conformance suite: one body per promise, run on every [`Engine`].
//!
//! Each test is a generic function over a [`Disk`] (where the engine keeps its data and
//! how a restarted node finds it again); [`per_engine!`] instantiates it once on fjall,
//! in a temporary directory, and once in memory (its power cuts: [`super::crash_tests`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use quorumkv_client::clock::system_clock;
use quorumkv_client::ring::key_hash;
use quorumkv_client::wire::HeldVersion;
use quorumkv_client::Version;
use tempfile::TempDir;

use super::store::test_options;
use super::workers::REBUILD_CHUNK;
use super::{test_record as record, Applied, Engine, Entry, FjallEngine, HintStored, MemEngine, Storage, Store};

/// Where a test's store keeps its data.
trait Disk {
    /// The engine on it.
    type Engine: Engine;
    /// An empty disk.
    fn new() -> Self;
    /// The engine over this disk, as a node (re)starting now opens it.
    fn engine(&self) -> Self::Engine;
}

/// fjall in a temporary directory.
struct OnFjall(TempDir);

impl Disk for OnFjall {
    type Engine = FjallEngine;

    fn new() -> OnFjall {
        OnFjall(tempfile::tempdir().expect("a temporary directory"))
    }

    fn engine(&self) -> FjallEngine {
        FjallEngine::open(self.0.path(), &test_options()).expect("the engine opens")
    }
}

/// The memory engine; a restart (of the process, not a power cut) keeps all of it.
struct InMemory(MemEngine);

impl Disk for InMemory {
    type Engine = MemEngine;

    fn new() -> InMemory {
        InMemory(MemEngine::new())
    }

    fn engine(&self) -> MemEngine {
        self.0.clone()
    }
}

/// A store with the test options on `disk`.
fn open<D: Disk>(disk: &D) -> Store<D::Engine> {
    Store::start(disk.engine(), test_options(), system_clock()).expect("a test store opens")
}

/// How long a test waits for the rebuild scan of a few thousand keys (it takes ms).
const REBUILD_DEADLINE: Duration = Duration::from_secs(10);

/// Waits until the store's Merkle trees are rebuilt.
async fn wait_ready<E: Engine>(store: &Store<E>) {
    let start = tokio::time::Instant::now();
    while !store.forest().is_ready() {
        assert!(start.elapsed() < REBUILD_DEADLINE, "rebuild finishes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn only_newer_versions_are_applied<D: Disk>() {
    let disk = D::new();
    let store = open(&disk);
    let key = Bytes::from_static(b"k");
    assert!(store.apply(key.clone(), record(10, Some(b"a"))).await.unwrap().applied);
    let stale = store.apply(key.clone(), record(5, Some(b"old"))).await.unwrap();
    assert_eq!(
        stale,
        Applied {
            applied: false,
            current: Version { micros: 10, writer: 1 }
        }
    );
    assert!(store.apply(key.clone(), record(11, None)).await.unwrap().applied);
    assert_eq!(store.get(key.clone()).await.unwrap(), Some(record(11, None)));
    assert_eq!(store.get(Bytes::from_static(b"none")).await.unwrap(), None);
    let tombstones = store.tombstones(None, 10).await.unwrap();
    assert_eq!(tombstones.len(), 1);
    assert!(store
        .purge(key.clone(), Version { micros: 11, writer: 1 })
        .await
        .unwrap());
    assert_eq!(store.get(key).await.unwrap(), None);
    assert!(store.tombstones(None, 10).await.unwrap().is_empty());
}

/// The limit `config` puts on keys fits fjall's: the longest key is stored, and held
/// as a hint for the longest owner id (one byte more stops the storage writer).
async fn the_longest_key_a_config_allows_is_stored_and_hinted<D: Disk>() {
    use crate::config::{MAX_KEY_LIMIT, MAX_NODE_ID_LEN};
    let disk = D::new();
    let store = open(&disk);
    let key = Bytes::from(vec![b'k'; MAX_KEY_LIMIT]);
    assert!(store.apply(key.clone(), record(1, Some(b"v"))).await.unwrap().applied);
    let owner = "o".repeat(MAX_NODE_ID_LEN);
    let stored = store.store_hint(owner.clone(), key.clone(), record(2, None)).await;
    assert_eq!(stored.unwrap(), HintStored::Stored);
    assert_eq!(
        store.hints_for(owner, 10).await.unwrap(),
        vec![(key.clone(), record(2, None))]
    );
    assert_eq!(store.get(key).await.unwrap(), Some(record(1, Some(b"v"))));
}

/// What `version` says must be what `get` returns, without the value.
async fn assert_versions_match_records<E: Engine>(store: &Store<E>, keys: &[&'static [u8]]) {
    for key in keys {
        let key = Bytes::from_static(key);
        let record = store.get(key.clone()).await.unwrap();
        let held = store.version(key).await.unwrap();
        assert_eq!(held, record.as_ref().map(HeldVersion::from));
    }
}

async fn version_reads_agree_with_record_reads_across_a_reopen<D: Disk>() {
    let disk = D::new();
    let keys: [&'static [u8]; 4] = [b"value", b"deleted", b"purged", b"never"];
    {
        let store = open(&disk);
        for (i, key) in keys[..3].iter().enumerate() {
            store
                .apply(Bytes::from_static(key), record(10 + i as u64, Some(b"v")))
                .await
                .unwrap();
        }
        store
            .apply(Bytes::from_static(b"deleted"), record(20, None))
            .await
            .unwrap();
        store
            .apply(Bytes::from_static(b"purged"), record(21, None))
            .await
            .unwrap();
        assert!(store
            .purge(Bytes::from_static(b"purged"), Version { micros: 21, writer: 1 })
            .await
            .unwrap());
        assert_eq!(
            store.version(Bytes::from_static(b"deleted")).await.unwrap(),
            Some(HeldVersion {
                version: Version { micros: 20, writer: 1 },
                tombstone: true
            })
        );
        assert_versions_match_records(&store, &keys).await;
        store.flush().await.unwrap();
    }
    // Reopened, the index loads in the background: right away and after, it agrees.
    let store = open(&disk);
    assert_versions_match_records(&store, &keys).await;
    store
        .apply(Bytes::from_static(b"value"), record(30, Some(b"w")))
        .await
        .unwrap();
    assert_versions_match_records(&store, &keys).await;
    tokio::time::timeout(Duration::from_secs(10), async {
        while !store.index.is_loaded() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the index loads");
    assert_versions_match_records(&store, &keys).await;
    for key in keys {
        assert!(
            store.version_now(key).is_some(),
            "a loaded index knows every key, even absent ones"
        );
    }
}

async fn concurrent_writes_to_one_key_keep_the_newest<D: Disk>() {
    let disk = D::new();
    let store = Arc::new(open(&disk));
    let writes = (1..=200u64).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.apply(Bytes::from_static(b"k"), record(i, Some(b"x"))).await })
    });
    for w in writes.collect::<Vec<_>>() {
        w.await.unwrap().unwrap();
    }
    let got = store.get(Bytes::from_static(b"k")).await.unwrap().unwrap();
    assert_eq!(got.version.micros, 200);
}

/// Writes and reads queued without a waiter report their outcome through their
/// callback; a write is readable once reported, a stale one is refused with the
/// version it lost to.
async fn operations_queued_with_a_callback_report_their_outcome<D: Disk>() {
    let disk = D::new();
    let store = open(&disk);
    let key = Bytes::from_static(b"k");
    for (micros, applied, current) in [(100, true, 100), (50, false, 100), (101, true, 101)] {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let done = Box::new(move |outcome| drop(tx.send(outcome)));
        let queued = store.apply_then(key.clone(), record(micros, Some(b"v")), done);
        assert!(queued.is_ok(), "an idle writer has room");
        let outcome = rx.await.expect("the callback runs").unwrap();
        assert_eq!(
            outcome,
            Applied {
                applied,
                current: Version {
                    micros: current,
                    writer: 1
                }
            }
        );
        let (tx, rx) = tokio::sync::oneshot::channel();
        let read = store.get_then(key.clone(), Box::new(move |outcome| drop(tx.send(outcome))));
        assert!(read.is_ok(), "an idle reader has room");
        let stored = rx.await.expect("the callback runs").unwrap().unwrap();
        assert_eq!(stored.version.micros, current);
    }
}

async fn trees_after_restart_match_trees_kept_live<D: Disk>() {
    let disk = D::new();
    let live_roots: Vec<u64>;
    {
        let store = open(&disk);
        // More keys than one chunk of the rebuild scan: it must resume where it stopped.
        let writes = (0..REBUILD_CHUNK as u64 + 500).flat_map(|i| {
            let key = Bytes::from(format!("key{i}"));
            let delete = (i % 7 == 0).then(|| (key.clone(), record(i + 10_000, None)));
            [(key, record(i + 1, Some(b"v")))].into_iter().chain(delete)
        });
        for write in join_all(writes.map(|(key, r)| store.apply(key, r))).await {
            write.unwrap();
        }
        live_roots = (0..256).map(|p| store.forest().root(p)).collect();
        store.flush().await.unwrap();
    }
    let store = open(&disk);
    wait_ready(&store).await;
    let rebuilt: Vec<u64> = (0..256).map(|p| store.forest().root(p)).collect();
    assert_eq!(rebuilt, live_roots);
    assert!(live_roots.iter().any(|r| *r != 0));
}

async fn versions_written_before_a_restart_still_refuse_older_writes<D: Disk>() {
    let disk = D::new();
    let keys: Vec<Bytes> = (0..2000u64).map(|i| Bytes::from(format!("key{i}"))).collect();
    {
        let store = open(&disk);
        for key in &keys {
            store.apply(key.clone(), record(100, Some(b"v"))).await.unwrap();
        }
        store.flush().await.unwrap();
    }
    // Right after open (index still loading) and long after, the stored versions win.
    let store = open(&disk);
    for (i, key) in keys.iter().enumerate() {
        let older = store.apply(key.clone(), record(50, Some(b"old"))).await.unwrap();
        assert!(!older.applied, "key {i}: an older write after a restart was applied");
        if i == 0 {
            wait_ready(&store).await;
        }
    }
    assert!(store.apply(keys[7].clone(), record(200, None)).await.unwrap().applied);
    assert!(store
        .purge(keys[7].clone(), Version { micros: 200, writer: 1 })
        .await
        .unwrap());
    assert!(
        store
            .apply(keys[7].clone(), record(60, Some(b"new")))
            .await
            .unwrap()
            .applied
    );
    assert_eq!(
        store.get(keys[7].clone()).await.unwrap(),
        Some(record(60, Some(b"new")))
    );
}

async fn leaf_scans_return_exactly_their_keys<D: Disk>() {
    let disk = D::new();
    let store = open(&disk);
    for i in 0..300u64 {
        store
            .apply(Bytes::from(format!("key{i}")), record(1, Some(b"v")))
            .await
            .unwrap();
    }
    let shape = store.forest().shape();
    let mut seen = 0;
    for p in 0..256 {
        let (start, _) = shape.leaf_range(p, 0);
        let (_, end) = shape.leaf_range(p, shape.leaves() - 1);
        for entry in store.entries(start, end, usize::MAX).await.unwrap().entries {
            assert_eq!(shape.partition(key_hash(&entry.key)), p);
            seen += 1;
        }
    }
    assert_eq!(seen, 300);
}

async fn entries_come_in_bounded_pages_that_together_cover_the_range<D: Disk>() {
    let disk = D::new();
    let store = open(&disk);
    for i in 0..300u64 {
        let key = Bytes::from(format!("key{i}-{}", "x".repeat(i as usize % 40)));
        store.apply(key, record(1, Some(b"v"))).await.unwrap();
    }
    let whole = store.entries(0, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!((whole.entries.len(), whole.through), (300, u64::MAX));

    let max_bytes = 200;
    let (mut from, mut paged, mut pages) = (0u64, Vec::new(), 0);
    loop {
        let page = store.entries(from, u64::MAX, max_bytes).await.unwrap();
        pages += 1;
        let bytes: usize = page.entries.iter().map(Entry::size).sum();
        let last = page.entries.last().map(Entry::size).unwrap_or(0);
        assert!(
            bytes < max_bytes + last,
            "a page stops at the first entry past its budget"
        );
        for entry in &page.entries {
            let hash = key_hash(&entry.key);
            assert!((from..=page.through).contains(&hash), "entries lie in the page's range");
        }
        paged.extend(page.entries);
        if page.through == u64::MAX {
            break;
        }
        from = page.through + 1;
    }
    assert!(pages > 10, "{pages} pages");
    assert_eq!(paged, whole.entries, "the pages add up to the whole range, in order");
}

async fn hints_are_bounded_per_owner_and_removed_once_delivered<D: Disk>() {
    let disk = D::new();
    let store = open(&disk);
    for i in 0..3u64 {
        let stored = store
            .store_hint("n3".into(), Bytes::from(format!("k{i}")), record(1, Some(b"v")))
            .await;
        assert_eq!(stored.unwrap(), HintStored::Stored);
    }
    let full = store
        .store_hint("n3".into(), Bytes::from_static(b"k9"), record(1, Some(b"v")))
        .await;
    assert_eq!(full.unwrap(), HintStored::Full);
    assert_eq!(store.hint_counts().get("n3"), Some(&3));
    let held = store.hints_for("n3".into(), 10).await.unwrap();
    assert_eq!(held.len(), 3);
    let delivered = held.into_iter().map(|(k, r)| (k, r.version)).collect();
    store.remove_hints("n3".into(), delivered).await.unwrap();
    assert!(store.hints_for("n3".into(), 10).await.unwrap().is_empty());
    assert_eq!(store.hint_counts().get("n3"), Some(&0));
}

/// Instantiates each generic test body once per engine, with its tokio test attribute.
macro_rules! per_engine {
    ($($(#[$attr:meta])* $name:ident;)*) => {
        /// The suite on fjall.
        mod fjall {
            use super::OnFjall;
            $($(#[$attr])* async fn $name() { super::$name::<OnFjall>().await })*
        }
        /// The suite in memory.
        mod memory {
            use super::InMemory;
            $($(#[$attr])* async fn $name() { super::$name::<InMemory>().await })*
        }
    };
}

per_engine! {
    #[tokio::test] only_newer_versions_are_applied;
    #[tokio::test] the_longest_key_a_config_allows_is_stored_and_hinted;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] version_reads_agree_with_record_reads_across_a_reopen;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] concurrent_writes_to_one_key_keep_the_newest;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] operations_queued_with_a_callback_report_their_outcome;
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)] trees_after_restart_match_trees_kept_live;
    #[tokio::test] versions_written_before_a_restart_still_refuse_older_writes;
    #[tokio::test] leaf_scans_return_exactly_their_keys;
    #[tokio::test] entries_come_in_bounded_pages_that_together_cover_the_range;
    #[tokio::test] hints_are_bounded_per_owner_and_removed_once_delivered;
}
