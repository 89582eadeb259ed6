//! [`Store`]: the [`Storage`] seam, written once over any [`Engine`].
//!
//! Three keyspaces ([`Space`]): `records` (the data, each value behind a header with its
//! version and tombstone flag), `hints` (records held for other nodes) and `tombstones`
//! (an index of deletes with their arrival time, so purging never scans the data).
//! The engine only keeps bytes; every decision is made here and in
//! [`super::writer`]. Compare-and-write
//! takes versions from the in-memory [`VersionIndex`], so a write is one fjall
//! insert (a separate `versions` keyspace, written with every record so that scans could
//! skip values, cost ~20% of the nodes' CPU per write; stores that still have it drop it
//! at open). Writes go through the writer ([`super::writer`]), point reads through one
//! reader, version-only reads are answered from the index on the caller's thread (the
//! reader only while the index still loads), and scans (anti-entropy, hints,
//! tombstones) run on blocking threads. At open a snapshot is taken before the writer
//! starts, and a scan of it rebuilds the Merkle trees and the version index while the
//! node already serves: live writes fold their deltas into the same trees, which is
//! exact because XOR updates commute. In `periodic` mode a timer fsyncs every interval.
//! On the memory engine ([`Work::Tasks`]) the writer, reader, rebuild and timer are
//! tasks instead of threads and scans run on the caller's task (see [`super::drive`]).

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use quorumkv_client::clock::Clock;
use quorumkv_client::wire::{HeldVersion, Record};
use quorumkv_client::Version;
use tokio::sync::{mpsc, oneshot};

use super::codec::{decode_header, decode_record, decode_tombstone, hint_prefix, record_key, split_record_key};
use super::drive::Driver;
use super::engine::{Engine, Persist, Scan, Space, Work};
use super::relay::Relay;
use super::version_index::{KeyId, Lookup, VersionIndex};
use super::workers::{count_hints, start_periodic_sync, start_reader, ReadOp, Rebuild};
use super::writer::{WriteOp, Writer};
use super::{
    Applied, Callback, Completion, Entry, EntryPage, Forest, HintStored, Storage, StorageError, StorageUsage, Tombstone,
};
use crate::config::DurabilityMode;
use crate::metrics::CommitMetrics;

/// Writes queued for the writer thread before callers wait.
const WRITE_QUEUE: usize = 4096;

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

/// The store: [`Storage`] on engine `E`.
pub struct Store<E: Engine> {
    /// The keyspaces (scanned by anti-entropy, hint delivery and the tombstone purge).
    engine: E,
    /// Queue of the writer.
    writes: mpsc::Sender<WriteOp>,
    /// Queue of the reader (point reads).
    reads: mpsc::Sender<ReadOp>,
    /// Committed versions of the records (written by the writer).
    pub(crate) index: Arc<VersionIndex>,
    /// Set at the first fatal error.
    poisoned: Arc<AtomicBool>,
    /// Dropped with the store, which tells the periodic fsync to stop.
    _stop_periodic: oneshot::Sender<()>,
    /// The Merkle trees of the records, kept by the writer.
    forest: Arc<Forest>,
    /// Hints held per owner, kept by the writer.
    hint_counts: Arc<Mutex<HashMap<String, u64>>>,
    /// Group commit sizes and times, kept by the writer.
    commits: Arc<CommitMetrics>,
}

impl<E: Engine> Store<E> {
    /// Starts the store on `engine`: its writer and reader, the tree rebuild and, in
    /// periodic mode, the fsync timer (threads or tasks, as [`Engine::WORK`] says). Must
    /// run inside the tokio runtime that will wait for its answers (and, for tasks, run
    /// them).
    pub fn start(engine: E, options: StoreOptions, clock: Arc<dyn Clock>) -> Result<Store<E>, StorageError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| StorageError::Fatal("the store must be opened inside a tokio runtime".into()))?;
        let driver = Driver::new(E::WORK, runtime.clone());
        let forest = Arc::new(Forest::new(options.partitions));
        let hint_counts = Arc::new(Mutex::new(count_hints(&engine)?));
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        // Taken before the writer starts: every later write is a delta on top of it.
        driver.rebuild(Rebuild::new(engine.snapshot(), forest.clone()), tx.clone())?;
        let poisoned = Arc::new(AtomicBool::new(false));
        let index = Arc::new(VersionIndex::loading());
        let commits = Arc::new(CommitMetrics::default());
        let writer = Writer {
            engine: engine.clone(),
            persist: match options.durability {
                DurabilityMode::Sync => Persist::Sync,
                DurabilityMode::Periodic => Persist::Buffer,
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
        let reads = start_reader(&driver, engine.clone(), Relay::spawn(&runtime))?;
        writer.start(&driver, rx)?;
        let (stop_periodic, stop) = oneshot::channel();
        if options.durability == DurabilityMode::Periodic {
            let engine = engine.clone();
            start_periodic_sync(&driver, engine, options.interval, poisoned.clone(), stop)?;
        }
        Ok(Store {
            engine,
            writes: tx,
            reads,
            index,
            poisoned,
            _stop_periodic: stop_periodic,
            forest,
            hint_counts,
            commits,
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

    /// Queues a change for the writer and waits for its outcome.
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

    /// Runs `work` (a scan or an fsync) where the engine allows: on tokio's blocking
    /// pool for an engine that blocks, on the caller's task for one that never does
    /// (the choice is a constant, resolved at compile time).
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        self.check()?;
        match E::WORK {
            Work::Threads => tokio::task::spawn_blocking(work)
                .await
                .map_err(|e| StorageError::Fatal(e.to_string()))?,
            Work::Tasks => work(),
        }
    }
}

impl<E: Engine> Storage for Store<E> {
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
        let engine = self.engine.clone();
        Box::pin(self.blocking(move || {
            let upper = match end.checked_add(1) {
                Some(next) => Bound::Excluded(next.to_be_bytes().to_vec()),
                None => Bound::Unbounded,
            };
            let range = (Bound::Included(start.to_be_bytes().to_vec()), upper);
            let mut page = EntryPage::new(end);
            engine.scan(Space::Records, range, |stored_key, value| {
                let (hash, key) = split_record_key(stored_key)?;
                let (version, tombstone) = decode_header(&value)?;
                let entry = Entry {
                    key: Bytes::copy_from_slice(key),
                    version,
                    tombstone,
                };
                Ok(if page.push(hash, entry, max_bytes) {
                    Scan::Continue
                } else {
                    Scan::Stop
                })
            })?;
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
        let engine = self.engine.clone();
        Box::pin(self.blocking(move || {
            let prefix = hint_prefix(&owner);
            let mut out = Vec::new();
            let range = (Bound::Included(prefix.clone()), Bound::Unbounded);
            engine.scan(Space::Hints, range, |stored_key, value| {
                if out.len() >= limit || !stored_key.starts_with(&prefix) {
                    return Ok(Scan::Stop);
                }
                let (_, key) = split_record_key(&stored_key[prefix.len()..])?;
                out.push((Bytes::copy_from_slice(key), decode_record(value)?));
                Ok(Scan::Continue)
            })?;
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
        let engine = self.engine.clone();
        Box::pin(self.blocking(move || {
            let start = match &after {
                Some(key) => Bound::Excluded(record_key(key).to_vec()),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            engine.scan(Space::Tombstones, (start, Bound::Unbounded), |stored_key, value| {
                if out.len() >= limit {
                    return Ok(Scan::Stop);
                }
                let (_, key) = split_record_key(stored_key)?;
                let (version, arrived_micros) = decode_tombstone(&value)?;
                out.push(Tombstone {
                    key: Bytes::copy_from_slice(key),
                    version,
                    arrived_micros,
                });
                Ok(Scan::Continue)
            })?;
            Ok(out)
        }))
    }

    fn purge(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<bool, StorageError>> {
        Box::pin(self.write(move |done| WriteOp::Purge {
            key,
            version,
            any: false,
            done,
        }))
    }

    fn discard(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<bool, StorageError>> {
        Box::pin(self.write(move |done| WriteOp::Purge {
            key,
            version,
            any: true,
            done,
        }))
    }

    fn forest(&self) -> &Forest {
        &self.forest
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        let engine = self.engine.clone();
        Box::pin(self.blocking(move || engine.sync()))
    }

    fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    fn usage(&self) -> StorageUsage {
        StorageUsage {
            keys: self.index.len() as u64,
            disk_bytes: self.engine.disk_bytes(),
        }
    }

    fn commits(&self) -> &CommitMetrics {
        &self.commits
    }
}

/// Options of unit-test stores: sync durability, 256 partitions, 3 hints per owner.
#[cfg(test)]
pub(crate) fn test_options() -> StoreOptions {
    StoreOptions {
        durability: DurabilityMode::Sync,
        interval: Duration::from_millis(100),
        partitions: 256,
        max_hints_per_node: 3,
        cache_bytes: 32 << 20,
        memtable_bytes: 64 << 20,
    }
}

/// A store in `dir` for unit tests, with [`test_options`].
#[cfg(test)]
pub(crate) fn test_store(dir: &std::path::Path) -> super::FjallStorage {
    let clock = quorumkv_client::clock::system_clock();
    super::FjallStorage::open(dir, test_options(), clock).expect("a test store opens")
}
