//! Storage: the one async seam in front of the disk.
//!
//! [`Storage`] is what the node needs from its disk: records with compare-and-write
//! (atomic per key), scans of a hash range for anti-entropy, hints held for other nodes,
//! tombstones and their purge. [`Store`] implements it once, over a narrow [`Engine`]
//! (ordered keyspaces with atomic batches): [`FjallEngine`] on disk, as the node runs
//! ([`FjallStorage`]), or [`MemEngine`] in memory, which can be told to crash. The Merkle
//! trees of the data ([`Forest`]) are kept up to date by the same code that writes the
//! records, so they never disagree.

mod codec;
#[cfg(test)]
mod conformance;
#[cfg(test)]
mod crash_tests;
mod disk;
mod drive;
mod engine;
mod fjall_engine;
mod forest;
mod mem_engine;
mod relay;
mod store;
#[cfg(test)]
mod task_tests;
mod version_index;
mod workers;
mod writer;

use std::collections::HashMap;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use quorumkv_client::wire::{HeldVersion, Record};
use quorumkv_client::Version;

use crate::metrics::CommitMetrics;

pub use codec::{decode_record, encode_record};
pub use engine::{Engine, EngineBatch, KeyRange, Persist, ReadView, Scan, Slice, Space, Visit, Work};
pub use fjall_engine::{FjallEngine, FjallStorage};
pub use forest::Forest;
pub use mem_engine::MemEngine;
#[cfg(test)]
pub(crate) use store::test_store;
pub use store::{Store, StoreOptions};

/// The result of a compare-and-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The record was newer and is now stored (durably, in sync mode).
    pub applied: bool,
    /// The version stored after the call.
    pub current: Version,
}

/// Where the outcome of a queued storage operation goes once the storage thread is done
/// with it (for a write: once its batch is committed).
pub enum Completion<T> {
    /// A future waiting for it.
    Waiter(tokio::sync::oneshot::Sender<Result<T, StorageError>>),
    /// A callback, run on the node's runtime: no task waits for the operation.
    Callback(Callback<T>),
}

/// What a queued operation without a waiter runs with its outcome.
pub type Callback<T> = Box<dyn FnOnce(Result<T, StorageError>) + Send>;

impl<T> Completion<T> {
    /// Hands `outcome` to whoever waits for it.
    pub fn complete(self, outcome: Result<T, StorageError>) {
        match self {
            Completion::Waiter(tx) => drop(tx.send(outcome)),
            Completion::Callback(callback) => callback(outcome),
        }
    }
}

/// One key's state, as anti-entropy compares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The key.
    pub key: Bytes,
    /// Its stored version.
    pub version: Version,
    /// Whether that version is a tombstone.
    pub tombstone: bool,
}

impl Entry {
    /// Approximate encoded size: the key plus a version and a flag.
    pub fn size(&self) -> usize {
        self.key.len() + ENTRY_OVERHEAD
    }
}

/// Bytes an entry adds to a message besides its key (version, flag, framing).
const ENTRY_OVERHEAD: usize = 24;

/// The entries of a hash range, possibly cut short so that a message carrying them stays
/// bounded whatever the data size and key length.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EntryPage {
    /// Entries in hash order.
    pub entries: Vec<Entry>,
    /// The last key hash the page covers completely: the range's end unless the page was
    /// cut, in which case the rest starts at `through + 1`. A page is only ever cut
    /// between two different key hashes, so no key is skipped.
    pub through: u64,
    /// Bytes of the entries so far.
    bytes: usize,
    /// Hash of the last entry pushed.
    last_hash: Option<u64>,
}

impl EntryPage {
    /// An empty page of a range ending at `end`.
    pub fn new(end: u64) -> EntryPage {
        EntryPage {
            through: end,
            ..EntryPage::default()
        }
    }

    /// Adds the entry of key hash `hash` (hashes must come in order) unless the page is
    /// full: once `max_bytes` is reached, only entries sharing the last hash still go in.
    /// Returns false when the entry was refused; the page is then cut before `hash`.
    pub fn push(&mut self, hash: u64, entry: Entry, max_bytes: usize) -> bool {
        if let Some(last) = self.last_hash.filter(|last| self.bytes >= max_bytes && *last != hash) {
            self.through = last;
            return false;
        }
        self.bytes += entry.size();
        self.last_hash = Some(hash);
        self.entries.push(entry);
        true
    }
}

/// A stored tombstone and when it arrived here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// The deleted key.
    pub key: Bytes,
    /// The tombstone's version.
    pub version: Version,
    /// When this node stored it (µs since the epoch, node clock).
    pub arrived_micros: u64,
}

/// What happened to a hint handed to storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HintStored {
    /// Stored durably (or an equal or newer hint for the key was already there).
    Stored,
    /// The owner already has `max_hints_per_node` hints here; anti-entropy must do it.
    Full,
}

/// Why storage failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The disk failed; the store refuses all further work and the node must stop.
    #[error("storage failed fatally: {0}")]
    Fatal(String),
    /// A stored value cannot be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store is closed.
    #[error("storage is closed")]
    Closed,
}

/// A record for tests: `value` or a tombstone, written by writer 1 at `micros`.
#[cfg(test)]
pub(crate) fn test_record(micros: u64, value: Option<&'static [u8]>) -> Record {
    Record {
        version: Version { micros, writer: 1 },
        value: value.map(Bytes::from_static),
    }
}

/// What the node needs from its storage.
pub trait Storage: Send + Sync + 'static {
    /// The stored record of `key`, if any.
    fn get(&self, key: Bytes) -> BoxFuture<'_, Result<Option<Record>, StorageError>>;
    /// Queues the same read without anyone waiting: `done` runs on the node's runtime
    /// with its outcome. Gives the key back when the queue is full (the caller then
    /// waits for room with [`get`](Self::get)).
    fn get_then(&self, key: Bytes, done: Callback<Option<Record>>) -> Result<(), Bytes>;
    /// The version of the stored record of `key`, if any, when it is known without
    /// reading the store (`None`: it is not; ask [`version`](Self::version)).
    fn version_now(&self, key: &[u8]) -> Option<Result<Option<HeldVersion>, StorageError>>;
    /// The version of the stored record of `key`, if any: what [`get`](Self::get) would
    /// return, without the value.
    fn version(&self, key: Bytes) -> BoxFuture<'_, Result<Option<HeldVersion>, StorageError>> {
        Box::pin(async move {
            match self.version_now(&key) {
                Some(known) => known,
                None => Ok(self.get(key).await?.as_ref().map(HeldVersion::from)),
            }
        })
    }
    /// Stores `record` if it is newer than the stored one; atomic per key.
    fn apply(&self, key: Bytes, record: Record) -> BoxFuture<'_, Result<Applied, StorageError>>;
    /// Queues the same compare-and-write without anyone waiting: `done` runs on the
    /// node's runtime with its outcome. Gives the write back untouched when the queue is
    /// full (the caller then waits for room with [`apply`](Self::apply)).
    fn apply_then(&self, key: Bytes, record: Record, done: Callback<Applied>) -> Result<(), (Bytes, Record)>;
    /// The keys whose hash lies in `[start, end]`, with their versions, in hash order,
    /// until their [`Entry::size`] adds up to `max_bytes` (see [`EntryPage`]).
    fn entries(&self, start: u64, end: u64, max_bytes: usize) -> BoxFuture<'_, Result<EntryPage, StorageError>>;
    /// Holds `record` for `owner` until it can be delivered (newer hint per key wins).
    fn store_hint(&self, owner: String, key: Bytes, record: Record) -> BoxFuture<'_, Result<HintStored, StorageError>>;
    /// Up to `limit` hints held for `owner`.
    fn hints_for(&self, owner: String, limit: usize) -> BoxFuture<'_, Result<Vec<(Bytes, Record)>, StorageError>>;
    /// Forgets delivered hints (each only if it still holds the delivered version).
    fn remove_hints(&self, owner: String, delivered: Vec<(Bytes, Version)>) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Hints held, per owner.
    fn hint_counts(&self) -> HashMap<String, u64>;
    /// Up to `limit` stored tombstones in key-hash order, starting after key `after`
    /// (from the first when `None`): a caller walks them all by passing the last key seen.
    fn tombstones(&self, after: Option<Bytes>, limit: usize) -> BoxFuture<'_, Result<Vec<Tombstone>, StorageError>>;
    /// Removes a tombstone if `key` still holds exactly it; returns whether it did.
    fn purge(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<bool, StorageError>>;
    /// Removes `key`'s record, value or tombstone, if it still holds exactly `version`;
    /// returns whether it did. For a partition this node no longer replicates (after it
    /// handed it off): the key is gone here, not deleted in the cluster.
    fn discard(&self, key: Bytes, version: Version) -> BoxFuture<'_, Result<bool, StorageError>>;
    /// The Merkle trees of the stored records.
    fn forest(&self) -> &Forest;
    /// Makes every applied write durable (used at shutdown).
    fn flush(&self) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Whether a fatal error happened: the node must stop.
    fn is_poisoned(&self) -> bool;
    /// Keys stored and bytes on disk, now.
    fn usage(&self) -> StorageUsage;
    /// Sizes and times of the writer's group commits.
    fn commits(&self) -> &CommitMetrics;
}

/// How much a store holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageUsage {
    /// Keys with a record, tombstones not yet purged included (from the version index:
    /// right after a start, only the keys it has loaded so far).
    pub keys: u64,
    /// Bytes its files have allocated on disk (journal and tables, as `du` counts
    /// them); `None` if the store could not tell.
    pub disk_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &'static str) -> Entry {
        Entry {
            key: Bytes::from_static(key.as_bytes()),
            version: Version { micros: 1, writer: 1 },
            tombstone: false,
        }
    }

    #[test]
    fn a_page_is_cut_only_between_different_hashes_and_never_empty() {
        let mut page = EntryPage::new(100);
        assert!(page.push(5, entry("a"), 0), "the first entry always goes in");
        assert!(page.push(5, entry("b"), 0), "so does every entry sharing its hash");
        assert!(!page.push(6, entry("c"), 0));
        assert_eq!((page.entries.len(), page.through), (2, 5));

        let mut roomy = EntryPage::new(100);
        assert!(roomy.push(5, entry("a"), 1 << 20));
        assert!(roomy.push(6, entry("b"), 1 << 20));
        assert_eq!(roomy.through, 100, "an uncut page covers its whole range");
    }
}
