//! [`Engine`]: the narrow seam between the store's logic and the bytes it keeps.
//!
//! Everything the store decides (newer version wins, the tombstone index, hint caps,
//! Merkle deltas, group commit) lives above this trait, written once ([`super::Store`]);
//! an engine only keeps ordered key/value pairs in a few named keyspaces. Two engines
//! implement it: [`super::FjallEngine`] on disk and [`super::MemEngine`] in memory, which
//! can be told to crash. The trait is synchronous; the engine says how the store runs
//! its work ([`Engine::WORK`]): fjall's calls block, so the store's own threads and tokio's
//! blocking pool call it; the memory engine's never do, so the store runs as tasks on the
//! runtime that started it (the simulation's). The store is generic over it (no `dyn`),
//! so the seam, and that choice, cost the fjall path nothing.
//!
//! Keys and values are fjall's [`Slice`] (a reference-counted byte view): the codec builds
//! them once and handing them to fjall copies nothing; the memory engine keeps them as
//! they are.

use std::ops::Bound;

pub use fjall::Slice;

use super::StorageError;

/// The keyspaces a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Space {
    /// The data: record key → stored record.
    Records,
    /// Records held for other nodes: hint key → stored record.
    Hints,
    /// The index of deletes: record key → tombstone version and arrival time.
    Tombstones,
}

impl Space {
    /// Every keyspace, in a fixed order.
    pub const ALL: [Space; 3] = [Space::Records, Space::Hints, Space::Tombstones];

    /// The keyspace's name on disk.
    pub fn name(self) -> &'static str {
        match self {
            Space::Records => "records",
            Space::Hints => "hints",
            Space::Tombstones => "tombstones",
        }
    }

    /// Position in [`Space::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// When a committed batch must be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persist {
    /// Durable before `commit` returns (one fdatasync): survives a power cut.
    Sync,
    /// Buffered: survives a crash of the process only; a power cut loses it unless a
    /// later synced commit or [`Engine::sync`] made it durable.
    Buffer,
}

/// A range of keys of one keyspace.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// What a scan's visitor says after each pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Go on to the next key.
    Continue,
    /// Stop here.
    Stop,
}

/// What a scan calls with each key and value it finds, in key order.
pub trait Visit: FnMut(&[u8], Slice) -> Result<Scan, StorageError> {}

impl<F: FnMut(&[u8], Slice) -> Result<Scan, StorageError>> Visit for F {}

/// Changes to several keyspaces, applied atomically by [`Engine::commit`].
pub trait EngineBatch: Send {
    /// Sets `key` of `space` to `value`.
    fn insert(&mut self, space: Space, key: impl Into<Slice>, value: impl Into<Slice>);
    /// Removes `key` of `space` (nothing if it is absent).
    fn remove(&mut self, space: Space, key: impl Into<Slice>);
}

/// Ordered reads of a consistent state.
pub trait ReadView: Send + 'static {
    /// Visits the pairs of `space` whose key lies in `range`, in key order, until the
    /// visitor says [`Scan::Stop`] or returns an error (which the scan returns). On a
    /// snapshot the pairs are one view; on a live engine, commits made while the scan
    /// runs may show in it.
    fn scan(&self, space: Space, range: KeyRange, visit: impl Visit) -> Result<(), StorageError>;
}

/// How a store runs its work on an engine: its loops (writer, reader, rebuild, periodic
/// fsync) and its scans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// The engine's calls block on a disk: each loop gets an OS thread, scans run on
    /// tokio's blocking pool, so the runtime's thread never waits for the disk.
    Threads,
    /// The engine's calls never block: each loop is a task on the runtime current when
    /// the store starts and scans run on the caller's task, so a current-thread runtime
    /// with a paused clock (the simulation) sees, orders and times all of it.
    Tasks,
}

/// Ordered keyspaces with atomic batches. A handle: clones share the same data.
pub trait Engine: ReadView + Clone + Sync {
    /// How the store runs its work on this engine (a constant: the store's choice is
    /// made at compile time).
    const WORK: Work;
    /// A batch being built.
    type Batch: EngineBatch;
    /// A frozen view of everything committed when it was taken.
    type Snapshot: ReadView;

    /// An empty batch.
    fn batch(&self) -> Self::Batch;
    /// Applies `batch` atomically: after a crash, all of it or none of it is there.
    fn commit(&self, batch: Self::Batch, persist: Persist) -> Result<(), StorageError>;
    /// The value of `key` in `space`.
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>, StorageError>;
    /// A consistent view of what is committed now; later commits do not show in it.
    fn snapshot(&self) -> Self::Snapshot;
    /// Makes every committed batch durable.
    fn sync(&self) -> Result<(), StorageError>;
    /// Bytes the engine holds on disk, if it can tell.
    fn disk_bytes(&self) -> Option<u64>;
}
