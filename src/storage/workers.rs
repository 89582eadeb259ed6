//! The bodies of the store's loops besides the writer: point reads, the rebuild scan at
//! open (a chunk at a time) and the periodic fsync, all on any [`Engine`]. How they wait
//! between two rounds (threads or tasks) is [`super::drive`]'s business.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::wire::Record;
use tokio::sync::{mpsc, oneshot};

use super::codec::{decode_header, decode_record, hint_owner, record_key, split_record_key};
use super::drive::Driver;
use super::engine::{Engine, ReadView, Scan, Slice, Space};
use super::relay::{Deliver, Relay};
use super::version_index::{KeyId, RecordState};
use super::{Completion, Forest, StorageError};
use crate::merkle::{entry_hash, Hash};

/// Point reads queued for the reader thread before callers wait.
const READ_QUEUE: usize = 4096;
/// Most point reads answered as one batch (bounds the wait of the first).
const MAX_READ_BATCH: usize = 64;
/// Records folded into the trees per lock during the rebuild scan.
pub(super) const REBUILD_CHUNK: usize = 4096;

/// One point read waiting for the reader thread.
pub struct ReadOp {
    /// The user key.
    pub key: Bytes,
    /// Where the record goes.
    pub done: Completion<Option<Record>>,
}

/// A point read's result on its way back.
pub struct ReadAnswer(ReadOp, Result<Option<Record>, StorageError>);

impl Deliver for ReadAnswer {
    fn deliver(self) {
        self.0.done.complete(self.1);
    }
}

/// Starts the loop that serves point reads. On fjall, one long-lived thread instead of
/// `spawn_blocking` per read: under load the blocking pool grew to dozens of threads per
/// node, all waking and switching on two cores; a page-cached read takes a few µs, so one
/// thread serves well over 100k reads/s.
/// Reads queued at once are all answered in one batch (see [`super::relay`]).
pub fn start_reader<E: Engine>(
    driver: &Driver,
    engine: E,
    relay: Relay<ReadAnswer>,
) -> Result<mpsc::Sender<ReadOp>, StorageError> {
    let (tx, rx) = mpsc::channel::<ReadOp>(READ_QUEUE);
    let read = move |(stored_key, op): (Slice, ReadOp)| {
        let stored = engine.get(Space::Records, &stored_key);
        let found = stored.and_then(|found| found.map(decode_record).transpose());
        ReadAnswer(op, found)
    };
    driver.serve("storage-reader", rx, MAX_READ_BATCH, move |batch| {
        // In key order, consecutive lookups share the upper levels of the memtable
        // skiplist and the same index blocks, which are then still in the CPU cache.
        let mut keyed: Vec<(Slice, ReadOp)> = batch.into_iter().map(|op| (record_key(&op.key), op)).collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        relay.send(keyed.into_iter().map(&read).collect());
    })?;
    Ok(tx)
}

/// Counts the hints held per owner (once, at open).
pub fn count_hints(engine: &impl Engine) -> Result<HashMap<String, u64>, StorageError> {
    let mut counts = HashMap::new();
    engine.scan(Space::Hints, (Bound::Unbounded, Bound::Unbounded), |key, _| {
        *counts.entry(hint_owner(key)?.to_string()).or_insert(0) += 1;
        Ok(Scan::Continue)
    })?;
    Ok(counts)
}

/// A record's change to the Merkle trees: its key hash and entry hash.
type Delta = (u64, Hash);
/// A record's entry in the version index.
type IndexEntry = (KeyId, RecordState);

/// The scan of a snapshot's records at open, a chunk at a time: each chunk's Merkle
/// deltas go into the trees, its record states to the caller (for the writer's version
/// index). Live writes fold into the same trees meanwhile, which is exact because XOR
/// updates commute.
pub struct Rebuild<S> {
    /// The records as they were when the store opened.
    snapshot: S,
    /// The trees being rebuilt.
    forest: Arc<Forest>,
    /// Where the next chunk starts; `None` once the scan is over.
    from: Option<Bound<Vec<u8>>>,
}

impl<S: ReadView> Rebuild<S> {
    /// A rebuild of `forest` from `snapshot`, from its first record.
    pub fn new(snapshot: S, forest: Arc<Forest>) -> Rebuild<S> {
        Rebuild {
            snapshot,
            forest,
            from: Some(Bound::Unbounded),
        }
    }

    /// Scans up to [`REBUILD_CHUNK`] more records, folds their deltas into the trees and
    /// returns their states; `None` once the scan is over. An unreadable record is
    /// skipped; a failing scan ends the rebuild there (what was read counts).
    pub fn next_chunk(&mut self) -> Option<Vec<IndexEntry>> {
        let from = self.from.take()?;
        let mut deltas: Vec<Delta> = Vec::with_capacity(REBUILD_CHUNK);
        let mut states = Vec::with_capacity(REBUILD_CHUNK);
        let (mut visited, mut last) = (0, None);
        let scanned = self
            .snapshot
            .scan(Space::Records, (from, Bound::Unbounded), |stored_key, value| {
                match read_state(stored_key, &value) {
                    Ok((delta, state)) => {
                        deltas.push(delta);
                        states.push(state);
                    }
                    Err(e) => tracing::error!("skipping an unreadable record while rebuilding Merkle trees: {e}"),
                }
                visited += 1;
                if visited < REBUILD_CHUNK {
                    return Ok(Scan::Continue);
                }
                last = Some(stored_key.to_vec());
                Ok(Scan::Stop)
            });
        match scanned {
            Ok(()) => self.from = last.map(Bound::Excluded),
            Err(e) => tracing::error!("the Merkle rebuild scan stopped early: {e}"),
        }
        self.forest.toggle_all(deltas);
        Some(states)
    }

    /// Marks the trees complete (after the last chunk).
    pub fn finish(self) {
        self.forest.set_ready();
        tracing::info!("Merkle trees rebuilt");
    }
}

/// The Merkle delta and index entry of one stored record.
fn read_state(stored_key: &[u8], value: &[u8]) -> Result<(Delta, IndexEntry), StorageError> {
    let (_, key) = split_record_key(stored_key)?;
    let (version, tombstone) = decode_header(value)?;
    let id = KeyId::of(key);
    Ok((
        (id.hash, entry_hash(key, version, tombstone)),
        (id, (version, tombstone)),
    ))
}

/// Starts the loop that makes every write durable each `interval` (periodic mode), until
/// the sender of `stop` is dropped or an fsync fails (which poisons the store).
pub fn start_periodic_sync<E: Engine>(
    driver: &Driver,
    engine: E,
    interval: Duration,
    poisoned: Arc<AtomicBool>,
    stop: oneshot::Receiver<()>,
) -> Result<(), StorageError> {
    driver.every("storage-fsync", interval, stop, move || match engine.sync() {
        Ok(()) => true,
        Err(e) => {
            poisoned.store(true, Ordering::Relaxed);
            tracing::error!("periodic fsync failed; the node must stop: {e}");
            false
        }
    })
}
