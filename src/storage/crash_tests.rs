//! Power cuts and a dying disk on the memory engine: what a synced commit promised
//! survives, what was only buffered is lost, and the store restarted on what survived
//! rebuilds its version index, Merkle trees and hint counts from it alone; a failed
//! commit poisons the store and leaves nothing of its batch behind.

use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::clock::system_clock;
use quorumkv_client::wire::Record;
use quorumkv_client::Version;

use super::store::test_options;
use super::{test_record as record, MemEngine, Storage, StorageError, Store, StoreOptions};
use crate::config::DurabilityMode;

/// A periodic fsync interval no test lives to see: only `flush` syncs.
const NEVER: Duration = Duration::from_secs(3600);
/// Partitions of the test stores (as in [`test_options`]).
const PARTITIONS: u32 = 256;
/// How long a test waits for the rebuild scan of a few keys (it takes ms).
const REBUILD_DEADLINE: Duration = Duration::from_secs(10);

/// Periodic mode whose timer never fires.
fn buffered_options() -> StoreOptions {
    StoreOptions {
        durability: DurabilityMode::Periodic,
        interval: NEVER,
        ..test_options()
    }
}

fn start(engine: MemEngine, options: StoreOptions) -> Store<MemEngine> {
    Store::start(engine, options, system_clock()).expect("a test store opens")
}

fn key(name: &'static str) -> Bytes {
    Bytes::from_static(name.as_bytes())
}

fn roots(store: &Store<MemEngine>) -> Vec<u64> {
    (0..PARTITIONS).map(|p| store.forest().root(p)).collect()
}

/// Waits until the restarted store's trees and version index are rebuilt.
async fn wait_rebuilt(store: &Store<MemEngine>) {
    let start = tokio::time::Instant::now();
    while !store.forest().is_ready() || !store.index.is_loaded() {
        assert!(start.elapsed() < REBUILD_DEADLINE, "rebuild finishes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn write(store: &Store<MemEngine>, name: &'static str, record: Record) {
    assert!(store.apply(key(name), record).await.unwrap().applied);
}

#[tokio::test]
async fn a_power_cut_keeps_synced_writes_loses_the_rest_and_the_store_rebuilds() {
    let engine = MemEngine::new();
    let store = start(engine.clone(), buffered_options());
    write(&store, "kept", record(10, Some(b"v"))).await;
    write(&store, "deleted", record(11, None)).await;
    let hint = store.store_hint("n2".into(), key("h1"), record(12, Some(b"h"))).await;
    assert_eq!(hint.unwrap(), super::HintStored::Stored);
    store.flush().await.unwrap();
    let synced_roots = roots(&store);

    write(&store, "lost", record(20, Some(b"x"))).await;
    write(&store, "kept", record(21, Some(b"w"))).await;
    let purged = store.purge(key("deleted"), Version { micros: 11, writer: 1 }).await;
    assert!(purged.unwrap());
    store
        .store_hint("n2".into(), key("h2"), record(22, None))
        .await
        .unwrap();
    assert!(engine.unsynced() > 0, "periodic mode buffers until the next sync");
    let survived = engine.crash();
    drop(store);

    let store = start(survived, test_options());
    wait_rebuilt(&store).await;
    assert_eq!(store.get(key("kept")).await.unwrap(), Some(record(10, Some(b"v"))));
    assert_eq!(store.get(key("lost")).await.unwrap(), None);
    assert_eq!(store.get(key("deleted")).await.unwrap(), Some(record(11, None)));
    let tombstones = store.tombstones(None, 10).await.unwrap();
    let names: Vec<&[u8]> = tombstones.iter().map(|t| &t.key[..]).collect();
    assert_eq!(names, [b"deleted"], "the purge was lost with the power");
    let hints = store.hints_for("n2".into(), 10).await.unwrap();
    assert_eq!(hints, vec![(key("h1"), record(12, Some(b"h")))]);
    assert_eq!(store.hint_counts().get("n2"), Some(&1));
    assert_eq!(roots(&store), synced_roots, "the trees describe what survived");
    // The version index holds the surviving versions: 15 beats the synced 10 (the lost
    // 21 is forgotten), 9 does not.
    write(&store, "kept", record(15, Some(b"y"))).await;
    assert!(!store.apply(key("kept"), record(9, Some(b"z"))).await.unwrap().applied);
}

#[tokio::test]
async fn in_sync_mode_every_acknowledged_write_survives_a_power_cut() {
    let engine = MemEngine::new();
    let store = start(engine.clone(), test_options());
    let keys: Vec<Bytes> = (0..100u64).map(|i| Bytes::from(format!("key{i}"))).collect();
    for (i, key) in keys.iter().enumerate() {
        let acked = store.apply(key.clone(), record(i as u64 + 1, Some(b"v"))).await;
        assert!(acked.unwrap().applied);
    }
    assert_eq!(engine.unsynced(), 0, "sync mode syncs before answering");
    let survived = engine.crash();
    drop(store);
    let store = start(survived, test_options());
    for (i, key) in keys.iter().enumerate() {
        let found = store.get(key.clone()).await.unwrap();
        assert_eq!(found, Some(record(i as u64 + 1, Some(b"v"))), "{key:?}");
    }
}

#[tokio::test]
async fn a_failed_commit_poisons_the_store_and_leaves_nothing_of_its_batch() {
    let engine = MemEngine::new();
    let store = start(engine.clone(), test_options());
    write(&store, "kept", record(10, Some(b"v"))).await;
    let before = roots(&store);
    engine.fail_from_now(true);
    // Queued together, so that one commit carries both (and fails for both).
    let (new, newer) = tokio::join!(
        store.apply(key("lost"), record(20, Some(b"x"))),
        store.apply(key("kept"), record(21, Some(b"w")))
    );
    for failed in [new, newer] {
        assert!(matches!(failed, Err(StorageError::Fatal(_))), "{failed:?}");
    }
    assert!(store.is_poisoned());
    let refused = store.get(key("kept")).await;
    assert!(matches!(refused, Err(StorageError::Fatal(_))), "{refused:?}");
    let hint = store.store_hint("n2".into(), key("h"), record(22, None)).await;
    assert!(matches!(hint, Err(StorageError::Fatal(_))), "{hint:?}");
    assert_eq!(roots(&store), before, "the trees did not take the failed batch");
    drop(store);

    engine.fail_from_now(false);
    for disk in [engine.clone(), engine.crash()] {
        let store = start(disk, test_options());
        wait_rebuilt(&store).await;
        assert_eq!(store.get(key("kept")).await.unwrap(), Some(record(10, Some(b"v"))));
        assert_eq!(store.get(key("lost")).await.unwrap(), None);
        assert_eq!(roots(&store), before);
    }
}
