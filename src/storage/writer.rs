//! The single storage writer: compare-and-write, group commit and tree upkeep.
//!
//! Every change to the records, hints and tombstones goes through this loop (a thread on
//! fjall, a task on the memory engine: see [`super::drive`]). It drains
//! whatever operations are queued, decides each one against the stored state (and the
//! earlier operations of the same batch), writes the outcome as one [`Engine`] batch and, in
//! `sync` mode, makes that batch durable with one fdatasync before anyone is answered
//! (one fsync per write measured ~6.5k writes/s here; batches of 64 ~114k/s). Stored
//! versions come from the in-memory [`VersionIndex`], with the earlier operations of the
//! batch on top. After the commit the batch's outcomes are published to the index and
//! its Merkle deltas folded into the [`Forest`]. A failed commit poisons the store: it
//! then refuses everything and the node must stop. Each commit's size (operations
//! answered) and duration (fdatasync included) go to [`CommitMetrics`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use quorumkv_client::clock::Clock;
use quorumkv_client::wire::Record;
use quorumkv_client::Version;
use tokio::sync::{mpsc, oneshot};

use super::codec::{decode_header, encode_record, encode_tombstone, hashed_record_key, hint_key};
use super::drive::Driver;
use super::engine::{Engine, EngineBatch, Persist, Space};
use super::relay::{Deliver, Relay};
use super::version_index::{DigestBuild, KeyId, Lookup, RecordState, VersionIndex};
use super::{Applied, Completion, Forest, HintStored, StorageError};
use crate::merkle::{entry_hash, Hash};
use crate::metrics::CommitMetrics;

/// Most operations committed as one batch (bounds the latency of one commit).
const MAX_BATCH: usize = 512;

/// One change waiting for the writer thread.
pub enum WriteOp {
    /// Compare-and-write a record.
    Apply {
        key: Bytes,
        record: Record,
        done: Completion<Applied>,
    },
    /// Hold a record for another node.
    StoreHint {
        owner: String,
        key: Bytes,
        record: Record,
        done: oneshot::Sender<Result<HintStored, StorageError>>,
    },
    /// Forget a delivered hint if it still holds `version`.
    RemoveHint {
        owner: String,
        key: Bytes,
        version: Version,
        done: oneshot::Sender<Result<(), StorageError>>,
    },
    /// Remove a tombstone (or with `any`, a value too) if the key still holds exactly it.
    Purge {
        key: Bytes,
        version: Version,
        any: bool,
        done: oneshot::Sender<Result<bool, StorageError>>,
    },
    /// Record states from the snapshot scan at open, for the version index.
    LoadIndex(Vec<(KeyId, RecordState)>),
    /// The snapshot scan is complete.
    IndexLoaded,
}

impl WriteOp {
    /// The record key the operation touches (none for index loading).
    fn key(&self) -> Option<&[u8]> {
        match self {
            WriteOp::Apply { key, .. }
            | WriteOp::StoreHint { key, .. }
            | WriteOp::RemoveHint { key, .. }
            | WriteOp::Purge { key, .. } => Some(key),
            WriteOp::LoadIndex(_) | WriteOp::IndexLoaded => None,
        }
    }
}

/// The keyspaces and shared state the writer works on.
pub struct Writer<E: Engine> {
    /// Where the records, hints and tombstones are kept.
    pub engine: E,
    /// Whether a commit waits for the disk (sync mode) or not (periodic mode).
    pub persist: Persist,
    /// Set at the first failed commit: the store refuses everything after it.
    pub poisoned: Arc<AtomicBool>,
    /// The Merkle trees, folded each batch's deltas after its commit.
    pub forest: Arc<Forest>,
    /// Stamps the arrival time of tombstones.
    pub clock: Arc<dyn Clock>,
    /// Hints held per owner (kept in step with the hints keyspace).
    pub hint_counts: Arc<Mutex<HashMap<String, u64>>>,
    /// Most hints held per owner.
    pub max_hints_per_node: u64,
    /// Committed version and tombstone flag of every record.
    pub index: Arc<VersionIndex>,
    /// Carries each batch's answers back to the runtime.
    pub relay: Relay<Answer>,
    /// Sizes and times of the commits.
    pub commits: Arc<CommitMetrics>,
}

/// State of one batch being built.
struct Batch<B> {
    /// The engine's batch.
    batch: B,
    /// Hint versions written earlier in this batch: hint key → version, `None` when removed.
    hints: HashMap<Vec<u8>, Option<Version>>,
    /// Record states decided in this batch, published to the index after the commit.
    states: HashMap<KeyId, Option<RecordState>, DigestBuild>,
    /// Merkle changes to fold in after the commit.
    deltas: Vec<(u64, Hash)>,
    /// Hint count changes to apply after the commit.
    hint_count_changes: Vec<(String, i64)>,
}

/// An operation's answer, sent once the batch is committed.
pub enum Answer {
    Apply(Completion<Applied>, Result<Applied, StorageError>),
    Hint(
        oneshot::Sender<Result<HintStored, StorageError>>,
        Result<HintStored, StorageError>,
    ),
    Unit(oneshot::Sender<Result<(), StorageError>>, Result<(), StorageError>),
    Purge(oneshot::Sender<Result<bool, StorageError>>, Result<bool, StorageError>),
}

impl<E: Engine> Writer<E> {
    /// Starts the writer loop on `queue`; it runs until every sender is gone.
    pub fn start(mut self, driver: &Driver, queue: mpsc::Receiver<WriteOp>) -> Result<(), StorageError> {
        driver.serve("storage-writer", queue, MAX_BATCH, move |ops| self.commit(ops))
    }

    fn commit(&mut self, ops: Vec<WriteOp>) {
        // In key order the memtable inserts of a batch share the upper levels of the
        // skiplist, still in the CPU cache. The sort is stable: two operations on one key
        // keep their order. The key ids are computed once, here.
        let mut ops: Vec<(Option<KeyId>, WriteOp)> = ops.into_iter().map(|op| (op.key().map(KeyId::of), op)).collect();
        ops.sort_by_key(|(id, _)| id.map_or(0, |id| id.hash));
        let mut batch = Batch {
            batch: self.engine.batch(),
            hints: HashMap::new(),
            states: HashMap::with_capacity_and_hasher(ops.len(), DigestBuild::default()),
            deltas: Vec::with_capacity(ops.len()),
            hint_count_changes: Vec::new(),
        };
        let answers: Vec<Answer> = ops
            .into_iter()
            .filter_map(|(id, op)| self.decide(op, id, &mut batch))
            .collect();
        if answers.is_empty() {
            // Only index loading: the batch holds no change, and the disk is not touched.
            return;
        }
        let Batch {
            batch: engine_batch,
            states,
            deltas,
            hint_count_changes,
            ..
        } = batch;
        let begun = Instant::now();
        let committed = self.engine.commit(engine_batch, self.persist);
        let nanos = u64::try_from(begun.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.commits.duration.observe(nanos);
        self.commits.records.observe(answers.len() as u64);
        match committed {
            Ok(()) => {
                for (id, state) in states {
                    self.index.set(id, state);
                }
                self.forest.toggle_all(deltas);
                self.apply_hint_counts(hint_count_changes);
                self.relay.send(answers);
            }
            Err(e) => {
                self.poisoned.store(true, Ordering::Relaxed);
                tracing::error!("storage commit failed; the node must stop: {e}");
                let err = e;
                self.relay
                    .send(answers.into_iter().map(|a| a.fail(err.clone())).collect());
            }
        }
    }

    /// Decides one operation into `batch`; `None` for those nobody waits on.
    /// `id` is the id of the op's key, when it has one.
    fn decide(&mut self, op: WriteOp, id: Option<KeyId>, batch: &mut Batch<E::Batch>) -> Option<Answer> {
        let answer = match op {
            WriteOp::Apply { key, record, done } => {
                let id = id.unwrap_or_else(|| KeyId::of(&key));
                Answer::Apply(done, self.apply(id, &key, &record, batch))
            }
            WriteOp::StoreHint {
                owner,
                key,
                record,
                done,
            } => Answer::Hint(done, self.store_hint(&owner, &key, &record, batch)),
            WriteOp::RemoveHint {
                owner,
                key,
                version,
                done,
            } => Answer::Unit(done, self.remove_hint(&owner, &key, version, batch)),
            WriteOp::Purge {
                key,
                version,
                any,
                done,
            } => {
                let id = id.unwrap_or_else(|| KeyId::of(&key));
                Answer::Purge(done, self.purge(id, &key, version, any, batch))
            }
            WriteOp::LoadIndex(chunk) => {
                self.index.load(chunk);
                return None;
            }
            WriteOp::IndexLoaded => {
                self.index.loaded();
                tracing::info!("version index loaded: {} records", self.index.len());
                return None;
            }
        };
        Some(answer)
    }

    fn apply(
        &mut self,
        id: KeyId,
        key: &[u8],
        record: &Record,
        batch: &mut Batch<E::Batch>,
    ) -> Result<Applied, StorageError> {
        let stored_key = hashed_record_key(id.hash, key);
        let old = self.record_state(id, &stored_key, batch)?;
        if let Some((current, _)) = old.filter(|(v, _)| *v >= record.version) {
            return Ok(Applied {
                applied: false,
                current,
            });
        }
        let tombstone = record.is_tombstone();
        batch
            .batch
            .insert(Space::Records, stored_key.clone(), encode_record(record));
        if tombstone {
            let arrived = self.clock.now_micros();
            batch
                .batch
                .insert(Space::Tombstones, stored_key, encode_tombstone(record.version, arrived));
        } else if old.is_some_and(|(_, was_tombstone)| was_tombstone) {
            batch.batch.remove(Space::Tombstones, stored_key);
        }
        let mut delta = entry_hash(key, record.version, tombstone);
        if let Some((old_version, old_tombstone)) = old {
            delta ^= entry_hash(key, old_version, old_tombstone);
        }
        batch.deltas.push((id.hash, delta));
        batch.states.insert(id, Some((record.version, tombstone)));
        Ok(Applied {
            applied: true,
            current: record.version,
        })
    }

    fn purge(
        &mut self,
        id: KeyId,
        key: &[u8],
        version: Version,
        any: bool,
        batch: &mut Batch<E::Batch>,
    ) -> Result<bool, StorageError> {
        let stored_key = hashed_record_key(id.hash, key);
        let Some((held, tombstone)) = self.record_state(id, &stored_key, batch)? else {
            return Ok(false);
        };
        if held != version || !(tombstone || any) {
            return Ok(false);
        }
        batch.batch.remove(Space::Records, stored_key.clone());
        if tombstone {
            batch.batch.remove(Space::Tombstones, stored_key);
        }
        batch.deltas.push((id.hash, entry_hash(key, version, tombstone)));
        batch.states.insert(id, None);
        Ok(true)
    }

    fn store_hint(
        &self,
        owner: &str,
        key: &[u8],
        record: &Record,
        batch: &mut Batch<E::Batch>,
    ) -> Result<HintStored, StorageError> {
        let stored_key = hint_key(owner, key);
        let old = self.hint_version(&stored_key, batch)?;
        if old.is_some_and(|v| v >= record.version) {
            return Ok(HintStored::Stored);
        }
        if old.is_none() {
            let pending: i64 = batch
                .hint_count_changes
                .iter()
                .filter(|(o, _)| o == owner)
                .map(|(_, c)| c)
                .sum();
            if self.hint_count(owner) as i64 + pending >= self.max_hints_per_node as i64 {
                return Ok(HintStored::Full);
            }
            batch.hint_count_changes.push((owner.to_string(), 1));
        }
        batch
            .batch
            .insert(Space::Hints, stored_key.as_slice(), encode_record(record));
        batch.hints.insert(stored_key, Some(record.version));
        Ok(HintStored::Stored)
    }

    fn remove_hint(
        &self,
        owner: &str,
        key: &[u8],
        version: Version,
        batch: &mut Batch<E::Batch>,
    ) -> Result<(), StorageError> {
        let stored_key = hint_key(owner, key);
        if self.hint_version(&stored_key, batch)? == Some(version) {
            batch.batch.remove(Space::Hints, stored_key.as_slice());
            batch.hints.insert(stored_key, None);
            batch.hint_count_changes.push((owner.to_string(), -1));
        }
        Ok(())
    }

    /// The stored state of a record, including earlier operations of this batch: from
    /// the index, or (while it is still loading) from the record itself.
    fn record_state(
        &self,
        id: KeyId,
        stored_key: &[u8],
        batch: &Batch<E::Batch>,
    ) -> Result<Option<RecordState>, StorageError> {
        if let Some(state) = batch.states.get(&id) {
            return Ok(*state);
        }
        if let Lookup::Known(state) = self.index.lookup(&id) {
            return Ok(state);
        }
        let state = match self.engine.get(Space::Records, stored_key)? {
            Some(bytes) => Some(decode_header(&bytes)?),
            None => None,
        };
        self.index.set(id, state);
        Ok(state)
    }

    fn hint_version(&self, stored_key: &[u8], batch: &Batch<E::Batch>) -> Result<Option<Version>, StorageError> {
        if let Some(state) = batch.hints.get(stored_key) {
            return Ok(*state);
        }
        match self.engine.get(Space::Hints, stored_key)? {
            Some(bytes) => Ok(Some(decode_header(&bytes)?.0)),
            None => Ok(None),
        }
    }

    fn hint_count(&self, owner: &str) -> u64 {
        let counts = self.hint_counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(owner).copied().unwrap_or(0)
    }

    fn apply_hint_counts(&self, changes: Vec<(String, i64)>) {
        let mut counts = self.hint_counts.lock().unwrap_or_else(|p| p.into_inner());
        for (owner, change) in changes {
            let count = counts.entry(owner).or_insert(0);
            *count = count.saturating_add_signed(change);
        }
    }
}

impl Deliver for Answer {
    fn deliver(self) {
        match self {
            Answer::Apply(done, r) => done.complete(r),
            Answer::Hint(tx, r) => drop(tx.send(r)),
            Answer::Unit(tx, r) => drop(tx.send(r)),
            Answer::Purge(tx, r) => drop(tx.send(r)),
        }
    }
}

impl Answer {
    /// The same answer, turned into `err`.
    fn fail(self, err: StorageError) -> Answer {
        match self {
            Answer::Apply(done, _) => Answer::Apply(done, Err(err)),
            Answer::Hint(tx, _) => Answer::Hint(tx, Err(err)),
            Answer::Unit(tx, _) => Answer::Unit(tx, Err(err)),
            Answer::Purge(tx, _) => Answer::Purge(tx, Err(err)),
        }
    }
}
