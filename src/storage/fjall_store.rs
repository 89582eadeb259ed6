//! [`FjallStorage`]: the [`Storage`] seam on fjall.
//!
//! Three keyspaces: `records` (the data, each value behind a header with its version and
//! tombstone flag), `hints` (records held for other nodes) and `tombstones` (an index of
//! deletes with their arrival time, so purging never scans the data). Compare-and-write
//! takes versions from the in-memory [`VersionIndex`], so a write is one fjall
//! insert (a separate `versions` keyspace, written with every record so that scans could
//! skip values, cost ~20% of the nodes' CPU per write; stores that still have it drop it
//! at open). Writes go through the writer thread ([`super::writer`]), point reads through
//! one reader thread, version-only reads are answered from the index on the caller's
//! thread (the reader only while the index still loads), and scans (anti-entropy,
//! hints, tombstones) run on blocking threads. At open a snapshot is taken before the
//! writer starts, and a scan of it rebuilds the Merkle trees and the version index while
//! the node already serves: live writes fold their deltas into the same trees, which is
//! exact because XOR updates commute. In `periodic` mode a timer thread fsyncs every
//! interval.

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable, Slice};
use futures_util::future::BoxFuture;
use quorumkv_client::clock::Clock;
use quorumkv_client::wire::{HeldVersion, Record};
use quorumkv_client::Version;
use tokio::sync::{mpsc, oneshot};

use super::codec::{
    decode_header, decode_record, decode_tombstone, hint_owner, hint_prefix, record_key, split_record_key, HASH_PREFIX,
};
use super::disk::allocated_bytes;
use super::relay::{Deliver, Relay};
use super::version_index::{KeyId, Lookup, VersionIndex};
use super::writer::{fatal, WriteOp, Writer};
use super::{
    next_batch, Applied, Callback, Completion, Entry, EntryPage, Forest, HintStored, Storage, StorageError,
    StorageUsage, Tombstone,
};
use crate::config::DurabilityMode;
use crate::merkle::entry_hash;
use crate::metrics::CommitMetrics;

/// Writes queued for the writer thread before callers wait.
const WRITE_QUEUE: usize = 4096;
/// Point reads queued for the reader thread before callers wait.
const READ_QUEUE: usize = 4096;
/// Most point reads answered as one batch (bounds the wait of the first).
const MAX_READ_BATCH: usize = 64;
/// Records folded into the trees per lock during the rebuild scan.
const REBUILD_CHUNK: usize = 4096;
/// fjall's background threads (memtable flushes and compactions). One: with more, fjall
/// 3.1's first worker hands every compaction request back to the queue for the others
/// and takes it straight back out, a busy loop that burned a whole core per node for as
/// long as another worker compacted (a fifth of this machine during `bench w`).
const FJALL_WORKERS: usize = 1;

/// How a store is opened.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// When writes reach the disk.
    pub durability: DurabilityMode,
    /// fsync interval of periodic mode.
    pub interval: Duration,
    /// Partitions of the ring (shapes the Merkle trees).
    pub partitions: u32,
    /// Most hints held per owner.
    pub max_hints_per_node: u64,
    /// fjall's block cache, in bytes.
    pub cache_bytes: u64,
    /// Memtable size of the records keyspace, in bytes (at creation only).
    pub memtable_bytes: u64,
}

/// fjall-backed [`Storage`].
pub struct FjallStorage {
    db: Database,
    /// The records (scanned by anti-entropy).
    records: Keyspace,
    hints: Keyspace,
    tombstones: Keyspace,
    /// Queue of the writer thread.
    writes: mpsc::Sender<WriteOp>,
    /// Queue of the reader thread (point reads).
    reads: mpsc::Sender<ReadOp>,
    /// Committed versions of the records (written by the writer thread).
    index: Arc<VersionIndex>,
    /// Set at the first fatal error.
    poisoned: Arc<AtomicBool>,
    /// Tells the periodic fsync thread to stop.
    stop_periodic: Arc<AtomicBool>,
    forest: Arc<Forest>,
    hint_counts: Arc<Mutex<HashMap<String, u64>>>,
    /// Group commit sizes and times, kept by the writer.
    commits: Arc<CommitMetrics>,
    /// The store's directory (its disk use is measured there).
    dir: PathBuf,
}

impl FjallStorage {
    /// Opens (or creates) the store in `dir`, starts its writer thread and the tree rebuild.
    /// Must run inside the tokio runtime that will wait for its answers.
    pub fn open(dir: &Path, options: StoreOptions, clock: Arc<dyn Clock>) -> Result<FjallStorage, StorageError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StorageError::Fatal("the store must be opened inside a tokio runtime".into()))?;
        let db = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .worker_threads(FJALL_WORKERS)
            .open()
            .map_err(fatal)?;
        let records = db
            .keyspace("records", || {
                KeyspaceCreateOptions::default().max_memtable_size(options.memtable_bytes)
            })
            .map_err(fatal)?;
        drop_versions_keyspace(&db)?;
        let hints = db.keyspace("hints", KeyspaceCreateOptions::default).map_err(fatal)?;
        let tombstones = db
            .keyspace("tombstones", KeyspaceCreateOptions::default)
            .map_err(fatal)?;
        sync_keyspaces_folder(dir)?;
        let forest = Arc::new(Forest::new(options.partitions));
        let hint_counts = Arc::new(Mutex::new(count_hints(&hints)?));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        // Taken before the writer starts: every later write is a delta on top of it.
        spawn_rebuild(db.clone(), records.clone(), forest.clone(), tx.clone())?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let index = Arc::new(VersionIndex::loading());
        let commits = Arc::new(CommitMetrics::default());
        let writer = Writer {
            db: db.clone(),
            records: records.clone(),
            hints: hints.clone(),
            tombstones: tombstones.clone(),
            persist: match options.durability {
                DurabilityMode::Sync => PersistMode::SyncData,
                DurabilityMode::Periodic => PersistMode::Buffer,
            },
            poisoned: poisoned.clone(),
            forest: forest.clone(),
            clock,
            hint_counts: hint_counts.clone(),
            max_hints_per_node: options.max_hints_per_node,
            index: index.clone(),
            commits: commits.clone(),
            relay: Relay::spawn(&runtime),
        };
        let reads = spawn_reader(records.clone(), Relay::spawn(&runtime))?;
        spawn_thread("storage-writer", move || writer.run(rx))?;
        let stop_periodic = Arc::new(AtomicBool::new(false));
        if options.durability == DurabilityMode::Periodic {
            spawn_periodic_fsync(db.clone(), options.interval, poisoned.clone(), stop_periodic.clone())?;
        }
        Ok(FjallStorage {
            db,
            records,
            hints,
            tombstones,
            writes: tx,
            reads,
            index,
            poisoned,
            stop_periodic,
            forest,
            hint_counts,
            commits,
            dir: dir.to_path_buf(),
        })
    }

    fn check(&self) -> Result<(), StorageError> {
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(StorageError::Fatal("an earlier write or fsync failed".into()));
        }
        Ok(())
    }

    /// Queues the operation `op` makes of a reply channel on `queue`, waiting for room,
    /// and waits for its outcome.
    async fn queue_waiting<Op, T>(
        &self,
        queue: &mpsc::Sender<Op>,
        op: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> Op,
    ) -> Result<T, StorageError> {
        self.check()?;
        let (done, result) = oneshot::channel();
        queue.send(op(done)).await.map_err(|_| StorageError::Closed)?;
        result.await.map_err(|_| StorageError::Closed)?
    }

    /// Queues a change for the writer thread and waits for its outcome.
    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<T, StorageError>>) -> WriteOp,
    ) -> Result<T, StorageError> {
        self.queue_waiting(&self.writes, op).await
    }

    /// Queues the operation `op` makes of `parts` with `done` as its completion, if
    /// `queue` has room; gives `parts` back when it has none. A poisoned or closed store
    /// answers `done` at once.
    fn queue_then<Op, T, P>(
        &self,
        queue: &mpsc::Sender<Op>,
        parts: P,
        done: Callback<T>,
        op: impl FnOnce(P, Completion<T>) -> Op,
    ) -> Result<(), P> {
        if let Err(e) = self.check() {
            done(Err(e));
            return Ok(());
        }
        match queue.try_reserve() {
            Ok(slot) => {
                slot.send(op(parts, Completion::Callback(done)));
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(parts),
            Err(mpsc::error::TrySendError::Closed(())) => {
                done(Err(StorageError::Closed));
                Ok(())
            }
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.check()?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| StorageError::Fatal(e.to_string()))?
    }
}

impl Drop for FjallStorage {
    fn drop(&mut self) {
        self.stop_periodic.store(true, Ordering::Relaxed);
    }
}

impl Storage for FjallStorage {
    fn get(&self, key: Bytes) -> BoxFuture<'_, Result<Option<Record>, StorageError>> {
        Box::pin(self.queue_waiting(&self.reads, |done| ReadOp {
            key,
            done: Completion::Waiter(done),
        }))
    }

    fn get_then(&self, key: Bytes, done: Callback<Option<Record>>) -> Result<(), Bytes> {
        self.queue_then(&self.reads, key, done, |key, done| ReadOp { key, done })
    }

    fn version_now(&self, key: &[u8]) -> Option<Result<Option<HeldVersion>, StorageError>> {
        if let Err(e) = self.check() {
            return Some(Err(e));
        }
        match self.index.lookup(&KeyId::of(key)) {
            Lookup::Known(state) => Some(Ok(state.map(|(version, tombstone)| HeldVersion { version, tombstone }))),
            // The index is still loading and has not seen the key.
            Lookup::Unknown => None,
        }
    }

    fn apply(&self, key: Bytes, record: Record) -> BoxFuture<'_, Result<Applied, StorageError>> {
        Box::pin(self.write(|done| WriteOp::Apply {
            key,
            record,
            done: Completion::Waiter(done),
        }))
    }

    fn apply_then(&self, key: Bytes, record: Record, done: Callback<Applied>) -> Result<(), (Bytes, Record)> {
        self.queue_then(&self.writes, (key, record), done, |(key, record), done| {
            WriteOp::Apply { key, record, done }
        })
    }

    fn entries(&self, start: u64, end: u64, max_bytes: usize) -> BoxFuture<'_, Result<EntryPage, StorageError>> {
        let records = self.records.clone();
        Box::pin(self.blocking(move || {
            let upper = match end.checked_add(1) {
                Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            let range = (Bound::Included(start.to_be_bytes().to_vec()), upper);
            let mut page = EntryPage::new(end);
            for guard in records.range::<Vec<u8>, _>(range) {
                let (stored_key, value) = guard.into_inner().map_err(fatal)?;
                let (hash, key) = split_record_key(&stored_key)?;
                let (version, tombstone) = decode_header(&value)?;
                let entry = Entry {
                    key: Bytes::copy_from_slice(key),
                    version,
                    tombstone,
                };
                if !page.push(hash, entry, max_bytes) {
                    break;
                }
            }
            Ok(page)
        }))
    }

    fn store_hint(&self, owner: String, key: Bytes, record: Record) -> BoxFuture<'_, Result<HintStored, StorageError>> {
        Box::pin(self.write(|done| WriteOp::StoreHint {
            owner,
            key,
            record,
            done,
        }))
    }

    fn hints_for(&self, owner: String, limit: usize) -> BoxFuture<'_, Result<Vec<(Bytes, Record)>, StorageError>> {
        let hints = self.hints.clone();
        Box::pin(self.blocking(move || {
            let prefix = hint_prefix(&owner);
            let mut out = Vec::new();
            for guard in hints.prefix(&prefix).take(limit) {
                let (stored_key, value) = guard.into_inner().map_err(fatal)?;
                let (_, key) = split_record_key(&stored_key[prefix.len()..])?;
                out.push((Bytes::copy_from_slice(key), decode_record(value)?));
            }
            Ok(out)
        }))
    }

    fn remove_hints(&self, owner: String, delivered: Vec<(Bytes, Version)>) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            let removals = delivered.into_iter().map(|(key, version)| {
                let owner = owner.clone();
                self.write(move |done| WriteOp::RemoveHint {
                    owner,
                    key,
                    version,
                    done,
                })
            });
            futures_util::future::try_join_all(removals).await.map(|_| ())
        })
    }

    fn hint_counts(&self) -> HashMap<String, u64> {
        self.hint_counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn tombstones(&self, after: Option<Bytes>, limit: usize) -> BoxFuture<'_, Result<Vec<Tombstone>, StorageError>> {
        let tombstones = self.tombstones.clone();
        Box::pin(self.blocking(move || {
            let start = match &after {
                Some(key) => Bound::Excluded(record_key(key).to_vec()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for guard in tombstones.range::<Vec<u8>, _>((start, Bound::Unbounded)).take(limit) {
                let (stored_key, value) = guard.into_inner().map_err(fatal)?;
                let (_, key) = split_record_key(&stored_key)?;
                let (version, arrived_micros) = decode_tombstone(&value)?;
                out.push(Tombstone {
                    key: Bytes::copy_from_slice(key),
                    version,
                    arrived_micros,
                });
            }
            Ok(out)
        }))
    }

    fn purge(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<bool, StorageError>> {
        Box::pin(self.write(move |done| WriteOp::Purge { key, version, done }))
    }

    fn forest(&self) -> &Forest {
        &self.forest
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        let db = self.db.clone();
        Box::pin(self.blocking(move || db.persist(PersistMode::SyncAll).map_err(fatal)))
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn usage(&self) -> StorageUsage {
        let disk_bytes = allocated_bytes(&self.dir);
        if let Err(e) = &disk_bytes {
            tracing::debug!("cannot measure the store's disk space: {e}");
        }
        StorageUsage {
            keys: self.index.len() as u64,
            disk_bytes: disk_bytes.ok(),
        }
    }

    fn commits(&self) -> &CommitMetrics {
        &self.commits
    }
}

/// One point read waiting for the reader thread.
struct ReadOp {
    key: Bytes,
    done: Completion<Option<Record>>,
}

/// A point read's result on its way back.
struct ReadAnswer(ReadOp, Result<Option<Record>, StorageError>);

impl Deliver for ReadAnswer {
    fn deliver(self) {
        self.0.done.complete(self.1);
    }
}

/// Starts the thread that serves point reads. One long-lived thread instead of
/// `spawn_blocking` per read: under load the blocking pool grew to dozens of threads per
/// node, all waking and switching on two cores; a page-cached read takes a few µs, so one
/// thread serves well over 100k reads/s.
/// Reads queued at once are all answered in one batch (see [`super::relay`]).
fn spawn_reader(records: Keyspace, relay: Relay<ReadAnswer>) -> Result<mpsc::Sender<ReadOp>, StorageError> {
    let (tx, mut rx) = mpsc::channel::<ReadOp>(READ_QUEUE);
    spawn_thread("storage-reader", move || {
        let read = |(stored_key, op): (Slice, ReadOp)| {
            let stored = records.get(stored_key).map_err(fatal);
            let found = stored.and_then(|found| found.map(decode_record).transpose());
            ReadAnswer(op, found)
        };
        while let Some(batch) = next_batch(&mut rx, MAX_READ_BATCH) {
            // In key order, consecutive lookups share the upper levels of the memtable
            // skiplist and the same index blocks, which are then still in the CPU cache.
            let mut keyed: Vec<(Slice, ReadOp)> = batch.into_iter().map(|op| (record_key(&op.key), op)).collect();
            keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            relay.send(keyed.into_iter().map(read).collect());
        }
    })?;
    Ok(tx)
}

/// fjall's folder of keyspace folders, inside the store's directory.
const KEYSPACES_FOLDER: &str = "keyspaces";

/// fsyncs the folder holding the keyspace folders, so keyspaces created at this open
/// survive a power cut. fjall 3.1 creates a keyspace's folder without fsyncing its parent:
/// after a power cut the folder can be gone while the journal's fsynced writes to it
/// remain, and they are then lost (tests/power_loss.rs: 0 of 405 acknowledged writes
/// found without this). Cheap: one fsync per open.
fn sync_keyspaces_folder(dir: &Path) -> Result<(), StorageError> {
    let folder = dir.join(KEYSPACES_FOLDER);
    std::fs::File::open(&folder)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::Fatal(format!("fsync of {}: {e}", folder.display())))
}

/// Removes the `versions` keyspace of stores created before the version index.
fn drop_versions_keyspace(db: &Database) -> Result<(), StorageError> {
    if !db.keyspace_exists("versions") {
        return Ok(());
    }
    let versions = db.keyspace("versions", KeyspaceCreateOptions::default).map_err(fatal)?;
    db.delete_keyspace(versions).map_err(fatal)?;
    tracing::info!("dropped the versions keyspace (versions are now indexed in memory)");
    Ok(())
}

/// Counts the hints held per owner (once, at open).
fn count_hints(hints: &Keyspace) -> Result<HashMap<String, u64>, StorageError> {
    let mut counts = HashMap::new();
    for guard in hints.iter() {
        let key = guard.key().map_err(fatal)?;
        *counts.entry(hint_owner(&key)?.to_string()).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Scans a snapshot of the records in the background: rebuilds the Merkle trees and
/// loads the writer's version index (through its queue, so the writer owns the index).
fn spawn_rebuild(
    db: Database,
    records: Keyspace,
    forest: Arc<Forest>,
    writer: mpsc::Sender<WriteOp>,
) -> Result<(), StorageError> {
    let snapshot = db.snapshot();
    spawn_thread("merkle-rebuild", move || {
        let mut deltas = Vec::with_capacity(REBUILD_CHUNK);
        let mut states = Vec::with_capacity(REBUILD_CHUNK);
        for guard in snapshot.iter(&records) {
            let read = guard.into_inner().map_err(fatal).and_then(|(stored_key, value)| {
                let (_, key) = split_record_key(&stored_key)?;
                let (version, tombstone) = decode_header(&value)?;
                let id = KeyId::of(key);
                Ok((
                    (id.hash, entry_hash(key, version, tombstone)),
                    (id, (version, tombstone)),
                ))
            });
            match read {
                Ok((delta, state)) => {
                    deltas.push(delta);
                    states.push(state);
                }
                Err(e) => tracing::error!("skipping an unreadable record while rebuilding Merkle trees: {e}"),
            }
            if deltas.len() == REBUILD_CHUNK {
                forest.toggle_all(deltas.drain(..));
                let chunk = std::mem::replace(&mut states, Vec::with_capacity(REBUILD_CHUNK));
                if writer.blocking_send(WriteOp::LoadIndex(chunk)).is_err() {
                    return; // the store closed
                }
            }
        }
        forest.toggle_all(deltas);
        forest.set_ready();
        tracing::info!("Merkle trees rebuilt");
        let _ = writer.blocking_send(WriteOp::LoadIndex(states));
        let _ = writer.blocking_send(WriteOp::IndexLoaded);
    })
}

fn spawn_periodic_fsync(
    db: Database,
    interval: Duration,
    poisoned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(), StorageError> {
    spawn_thread("storage-fsync", move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            if let Err(e) = db.persist(PersistMode::SyncData) {
                poisoned.store(true, Ordering::Relaxed);
                tracing::error!("periodic fsync failed; the node must stop: {e}");
                return;
            }
        }
    })
}

fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(|_| ())
        .map_err(|e| StorageError::Fatal(format!("cannot start the {name} thread: {e}")))
}

// Storage keys start with the 8-byte hash; keep the codec and the range scan in step.
const _: () = assert!(HASH_PREFIX == 8);

/// A store in `dir` for unit tests: sync durability, 256 partitions, 3 hints per owner.
#[cfg(test)]
pub(crate) fn test_store(dir: &Path) -> FjallStorage {
    let options = StoreOptions {
        durability: DurabilityMode::Sync,
        interval: Duration::from_millis(100),
        partitions: 256,
        max_hints_per_node: 3,
        cache_bytes: 32 << 20,
        memtable_bytes: 64 << 20,
    };
    let clock = quorumkv_client::clock::system_clock();
    FjallStorage::open(dir, options, clock).expect("a test store opens")
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_client::ring::key_hash;

    use crate::storage::test_record as record;

    fn open(dir: &Path) -> FjallStorage {
        test_store(dir)
    }

    #[tokio::test]
    async fn only_newer_versions_are_applied() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
    #[tokio::test]
    async fn the_longest_key_a_config_allows_is_stored_and_hinted() {
        use crate::config::{MAX_KEY_LIMIT, MAX_NODE_ID_LEN};
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
    async fn assert_versions_match_records(store: &FjallStorage, keys: &[&'static [u8]]) {
        for key in keys {
            let key = Bytes::from_static(key);
            let record = store.get(key.clone()).await.unwrap();
            let held = store.version(key).await.unwrap();
            assert_eq!(held, record.as_ref().map(HeldVersion::from));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn version_reads_agree_with_record_reads_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let keys: [&'static [u8]; 4] = [b"value", b"deleted", b"purged", b"never"];
        {
            let store = open(dir.path());
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
        let store = open(dir.path());
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_to_one_key_keep_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(open(dir.path()));
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
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_queued_with_a_callback_report_their_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn trees_after_restart_match_trees_kept_live() {
        let dir = tempfile::tempdir().unwrap();
        let live_roots: Vec<u64>;
        {
            let store = open(dir.path());
            for i in 0..500u64 {
                let key = Bytes::from(format!("key{i}"));
                store.apply(key.clone(), record(i + 1, Some(b"v"))).await.unwrap();
                if i % 7 == 0 {
                    store.apply(key, record(i + 1000, None)).await.unwrap();
                }
            }
            live_roots = (0..256).map(|p| store.forest().root(p)).collect();
            store.flush().await.unwrap();
        }
        let store = open(dir.path());
        let start = tokio::time::Instant::now();
        while !store.forest().is_ready() {
            assert!(start.elapsed() < Duration::from_secs(10), "rebuild finishes");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let rebuilt: Vec<u64> = (0..256).map(|p| store.forest().root(p)).collect();
        assert_eq!(rebuilt, live_roots);
        assert!(live_roots.iter().any(|r| *r != 0));
    }

    #[tokio::test]
    async fn versions_written_before_a_restart_still_refuse_older_writes() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<Bytes> = (0..2000u64).map(|i| Bytes::from(format!("key{i}"))).collect();
        {
            let store = open(dir.path());
            for key in &keys {
                store.apply(key.clone(), record(100, Some(b"v"))).await.unwrap();
            }
            store.flush().await.unwrap();
        }
        // Right after open (index still loading) and long after, the stored versions win.
        let store = open(dir.path());
        for (i, key) in keys.iter().enumerate() {
            let older = store.apply(key.clone(), record(50, Some(b"old"))).await.unwrap();
            assert!(!older.applied, "key {i}: an older write after a restart was applied");
            if i == 0 {
                let start = tokio::time::Instant::now();
                while !store.forest().is_ready() {
                    assert!(start.elapsed() < Duration::from_secs(10), "rebuild finishes");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
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

    #[tokio::test]
    async fn a_versions_keyspace_of_an_older_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let versions = db.keyspace("versions", KeyspaceCreateOptions::default).unwrap();
            versions.insert(b"k", b"v").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let store = open(dir.path());
        assert!(!store.db.keyspace_exists("versions"));
    }

    #[tokio::test]
    async fn leaf_scans_return_exactly_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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

    #[tokio::test]
    async fn entries_come_in_bounded_pages_that_together_cover_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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

    #[tokio::test]
    async fn hints_are_bounded_per_owner_and_removed_once_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
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
}
