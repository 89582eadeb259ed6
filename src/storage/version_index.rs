//! The in-memory index of every record's committed version.
//!
//! Compare-and-write needs the stored version of the key before every write. Reading it
//! from fjall searched two memtable skiplists and the segments' filters on each write,
//! about a sixth of the writer's time; this index answers from one hash-table probe. It
//! holds, per key, the first 16 bytes of the key's blake3 digest (the first 8 are the
//! ring hash, so the same digest serves placement, the Merkle leaf and this index), the
//! version and the tombstone flag: ~41 bytes per key in the table, ~86 MiB for a million
//! keys. Two different keys sharing 128 digest bits is not a practical concern.
//!
//! The writer thread is its only writer and publishes a batch's outcomes once the batch
//! is committed, so the index never shows a version a read of the store could not
//! return. Version-only reads (the digests of a quorum read) are answered from it on the
//! node's runtime, without the storage reader; it is split into shards behind their own
//! locks so that they rarely wait for the writer.
//!
//! At open the index is empty and the tree-rebuild scan of the store's snapshot loads it
//! in chunks through the writer's queue. Until the scan is done a key the index does not
//! know is read from fjall (and remembered). Keys the writer decides on meanwhile are
//! newer than the snapshot, so the scan's view of them is ignored; this matters for a
//! key purged during the scan, which the snapshot still holds.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use quorumkv_client::Version;

/// Version and tombstone flag of a stored record.
pub type RecordState = (Version, bool);

/// A key's identity in the index: the first 16 bytes of its blake3 digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId {
    /// The first 8 digest bytes (big-endian): the key's ring hash.
    pub hash: u64,
    /// The next 8 digest bytes.
    rest: u64,
}

impl KeyId {
    /// The id of user key `key`.
    pub fn of(key: &[u8]) -> KeyId {
        let digest = blake3::hash(key);
        let bytes = digest.as_bytes();
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(w)
        };
        KeyId {
            hash: word(0),
            rest: word(8),
        }
    }
}

impl Hash for KeyId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: one word is all the table needs.
        state.write_u64(self.rest);
    }
}

/// Passes a [`KeyId`]'s word through unchanged.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

pub type DigestBuild = BuildHasherDefault<DigestHasher>;

/// What the index says about a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The key's state (`None`: no record).
    Known(Option<RecordState>),
    /// The index is still loading and has not seen the key: read it from storage.
    Unknown,
}

/// Lock shards of the index (a power of two).
const SHARDS: usize = 64;

/// One shard: the states of the keys whose ring hash falls into it.
#[derive(Default)]
struct Shard {
    states: HashMap<KeyId, RecordState, DigestBuild>,
    /// While the snapshot scan still loads: keys the writer has decided on since open.
    /// `None` once loading is complete.
    touched: Option<HashSet<KeyId, DigestBuild>>,
}

/// Committed versions of every stored record, shared by the writer and version reads.
pub struct VersionIndex {
    shards: Box<[Mutex<Shard>]>,
}

impl VersionIndex {
    /// An empty index waiting for [`load`](Self::load) chunks and [`loaded`](Self::loaded).
    pub fn loading() -> VersionIndex {
        let shard = || {
            Mutex::new(Shard {
                states: HashMap::default(),
                touched: Some(HashSet::default()),
            })
        };
        VersionIndex {
            shards: (0..SHARDS).map(|_| shard()).collect(),
        }
    }

    fn shard(&self, id: &KeyId) -> MutexGuard<'_, Shard> {
        // The table hashes the other digest word, so the two choices are independent.
        let shard = &self.shards[(id.hash as usize) & (SHARDS - 1)];
        shard.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state of `id`, as far as the index knows.
    pub fn lookup(&self, id: &KeyId) -> Lookup {
        let shard = self.shard(id);
        if let Some(state) = shard.states.get(id) {
            return Lookup::Known(Some(*state));
        }
        match &shard.touched {
            Some(touched) if !touched.contains(id) => Lookup::Unknown,
            _ => Lookup::Known(None),
        }
    }

    /// Records the committed state of `id` (decided by the writer or read from storage).
    pub fn set(&self, id: KeyId, state: Option<RecordState>) {
        let mut shard = self.shard(&id);
        if let Some(touched) = &mut shard.touched {
            touched.insert(id);
        }
        match state {
            Some(state) => shard.states.insert(id, state),
            None => shard.states.remove(&id),
        };
    }

    /// Adds states read from the snapshot taken at open, except for keys decided since.
    pub fn load(&self, chunk: impl IntoIterator<Item = (KeyId, RecordState)>) {
        for (id, state) in chunk {
            let mut shard = self.shard(&id);
            let Shard { states, touched } = &mut *shard;
            if touched.as_ref().is_some_and(|touched| !touched.contains(&id)) {
                states.insert(id, state);
            }
        }
    }

    /// The snapshot scan is complete: a key the index does not hold has no record.
    pub fn loaded(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|p| p.into_inner()).touched = None;
        }
    }

    /// Whether the snapshot scan's states are all in.
    #[cfg(test)]
    pub fn is_loaded(&self) -> bool {
        let loaded = |shard: &Mutex<Shard>| shard.lock().unwrap_or_else(|p| p.into_inner()).touched.is_none();
        self.shards.iter().all(loaded)
    }

    /// Keys with a record (or tombstone).
    pub fn len(&self) -> usize {
        let len = |shard: &Mutex<Shard>| shard.lock().unwrap_or_else(|p| p.into_inner()).states.len();
        self.shards.iter().map(len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(micros: u64) -> Version {
        Version { micros, writer: 7 }
    }

    #[test]
    fn unknown_keys_are_read_from_storage_until_loading_ends() {
        let index = VersionIndex::loading();
        let a = KeyId::of(b"a");
        assert_eq!(index.lookup(&a), Lookup::Unknown);
        index.loaded();
        assert_eq!(index.lookup(&a), Lookup::Known(None));
    }

    #[test]
    fn the_snapshot_never_overrides_what_the_writer_decided() {
        let index = VersionIndex::loading();
        let (written, purged, untouched) = (KeyId::of(b"w"), KeyId::of(b"p"), KeyId::of(b"u"));
        index.set(written, Some((v(20), false)));
        index.set(purged, None);
        index.load([
            (written, (v(10), false)),
            (purged, (v(5), true)),
            (untouched, (v(3), false)),
        ]);
        index.loaded();
        assert_eq!(index.lookup(&written), Lookup::Known(Some((v(20), false))));
        assert_eq!(index.lookup(&purged), Lookup::Known(None));
        assert_eq!(index.lookup(&untouched), Lookup::Known(Some((v(3), false))));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn ids_carry_the_ring_hash() {
        assert_eq!(
            KeyId::of(b"some key").hash,
            quorumkv_client::ring::key_hash(b"some key")
        );
        assert_ne!(KeyId::of(b"a"), KeyId::of(b"b"));
    }
}
