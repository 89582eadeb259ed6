//! The store's threads besides the writer: point reads, the rebuild scan at open and the
//! periodic fsync, all on any [`Engine`].

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quorumkv_client::wire::Record;
use tokio::sync::mpsc;

use super::codec::{decode_header, decode_record, hint_owner, record_key, split_record_key};
use super::engine::{Engine, ReadView, Scan, Slice, Space};
use super::relay::{Deliver, Relay};
use super::version_index::KeyId;
use super::writer::WriteOp;
use super::{next_batch, Completion, Forest, StorageError};
use crate::merkle::entry_hash;

/// Point reads queued for the reader thread before callers wait.
const READ_QUEUE: usize = 4096;
/// Most point reads answered as one batch (bounds the wait of the first).
const MAX_READ_BATCH: usize = 64;
/// Records folded into the trees per lock during the rebuild scan.
const REBUILD_CHUNK: usize = 4096;

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

/// Starts the thread that serves point reads. One long-lived thread instead of
/// `spawn_blocking` per read: under load the blocking pool grew to dozens of threads per
/// node, all waking and switching on two cores; a page-cached read takes a few µs, so one
/// thread serves well over 100k reads/s.
/// Reads queued at once are all answered in one batch (see [`super::relay`]).
pub fn spawn_reader<E: Engine>(engine: E, relay: Relay<ReadAnswer>) -> Result<mpsc::Sender<ReadOp>, StorageError> {
    let (tx, mut rx) = mpsc::channel::<ReadOp>(READ_QUEUE);
    spawn_thread("storage-reader", move || {
        let read = |(stored_key, op): (Slice, ReadOp)| {
            let stored = engine.get(Space::Records, &stored_key);
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

/// Counts the hints held per owner (once, at open).
pub fn count_hints(engine: &impl Engine) -> Result<HashMap<String, u64>, StorageError> {
    let mut counts = HashMap::new();
    engine.scan(Space::Hints, (Bound::Unbounded, Bound::Unbounded), |key, _| {
        *counts.entry(hint_owner(key)?.to_string()).or_insert(0) += 1;
        Ok(Scan::Continue)
    })?;
    Ok(counts)
}

/// Scans `snapshot`'s records in the background: rebuilds the Merkle trees and loads the
/// writer's version index (through its queue, so the writer owns the index).
pub fn spawn_rebuild(
    snapshot: impl ReadView,
    forest: Arc<Forest>,
    writer: mpsc::Sender<WriteOp>,
) -> Result<(), StorageError> {
    spawn_thread("merkle-rebuild", move || {
        let mut deltas = Vec::with_capacity(REBUILD_CHUNK);
        let mut states = Vec::with_capacity(REBUILD_CHUNK);
        let all = (Bound::Unbounded, Bound::Unbounded);
        let scanned = snapshot.scan(Space::Records, all, |stored_key, value| {
            let read = split_record_key(stored_key).and_then(|(_, key)| {
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
                    return Err(StorageError::Closed);
                }
            }
            Ok(Scan::Continue)
        });
        match scanned {
            Ok(()) => {}
            Err(StorageError::Closed) => return,
            // As before the seam: an unreadable stretch ends the scan, what was read counts.
            Err(e) => tracing::error!("the Merkle rebuild scan stopped early: {e}"),
        }
        forest.toggle_all(deltas);
        forest.set_ready();
        tracing::info!("Merkle trees rebuilt");
        let _ = writer.blocking_send(WriteOp::LoadIndex(states));
        let _ = writer.blocking_send(WriteOp::IndexLoaded);
    })
}

/// Starts the thread that makes every write durable each `interval` (periodic mode).
pub fn spawn_periodic_sync<E: Engine>(
    engine: E,
    interval: Duration,
    poisoned: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(), StorageError> {
    spawn_thread("storage-fsync", move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            if let Err(e) = engine.sync() {
                poisoned.store(true, Ordering::Relaxed);
                tracing::error!("periodic fsync failed; the node must stop: {e}");
                return;
            }
        }
    })
}

/// Starts a named thread running `run`.
pub fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(|_| ())
        .map_err(|e| StorageError::Fatal(format!("cannot start the {name} thread: {e}")))
}
