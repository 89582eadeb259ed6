//! [`FjallEngine`]: the [`Engine`] on fjall, and [`FjallStorage`], the store on it.
//!
//! One fjall keyspace per [`Space`], named as before the seam existed, so existing data
//! directories read as they did. Opening also drops the `versions` keyspace of stores
//! created before the in-memory version index, and fsyncs fjall's keyspaces folder (the
//! power-loss fix, see [`sync_keyspaces_folder`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjall::{Database, Keyspace, KeyspaceCreateOptions, OwnedWriteBatch, PersistMode, Readable};
use quorumkv_client::clock::Clock;

use super::disk::allocated_bytes;
use super::engine::{Engine, EngineBatch, KeyRange, Persist, ReadView, Scan, Slice, Space, Visit, Work};
use super::store::{Store, StoreOptions};
use super::StorageError;

/// fjall's background threads (memtable flushes and compactions). One: with more, fjall
/// 3.1's first worker hands every compaction request back to the queue for the others
/// and takes it straight back out, a busy loop that burned a whole core per node for as
/// long as another worker compacted (a fifth of this machine during `bench w`).
const FJALL_WORKERS: usize = 1;
/// fjall's folder of keyspace folders, inside the store's directory.
const KEYSPACES_FOLDER: &str = "keyspaces";

/// The store on fjall, as the node runs it.
pub type FjallStorage = Store<FjallEngine>;

impl Store<FjallEngine> {
    /// Opens (or creates) the store in `dir`, starts its writer thread and the tree
    /// rebuild. Must run inside the tokio runtime that will wait for its answers.
    pub fn open(dir: &Path, options: StoreOptions, clock: Arc<dyn Clock>) -> Result<FjallStorage, StorageError> {
        let engine = FjallEngine::open(dir, &options)?;
        Store::start(engine, options, clock)
    }
}

/// An error of fjall: the disk failed, the store must stop.
fn fatal(e: impl std::fmt::Display) -> StorageError {
    StorageError::Fatal(e.to_string())
}

/// fjall keyspaces behind the [`Engine`] seam.
#[derive(Clone)]
pub struct FjallEngine {
    db: Database,
    /// One keyspace per [`Space`], in [`Space::ALL`] order.
    spaces: [Keyspace; 3],
    /// The store's directory (its disk use is measured there).
    dir: PathBuf,
}

impl FjallEngine {
    /// Opens (or creates) the keyspaces in `dir`.
    pub fn open(dir: &Path, options: &StoreOptions) -> Result<FjallEngine, StorageError> {
        let db = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .worker_threads(FJALL_WORKERS)
            .open()
            .map_err(fatal)?;
        let records = db
            .keyspace(Space::Records.name(), || {
                KeyspaceCreateOptions::default().max_memtable_size(options.memtable_bytes)
            })
            .map_err(fatal)?;
        drop_versions_keyspace(&db)?;
        let open = |space: Space| db.keyspace(space.name(), KeyspaceCreateOptions::default).map_err(fatal);
        let spaces = [records, open(Space::Hints)?, open(Space::Tombstones)?];
        sync_keyspaces_folder(dir)?;
        Ok(FjallEngine {
            db,
            spaces,
            dir: dir.to_path_buf(),
        })
    }

    fn keyspace(&self, space: Space) -> &Keyspace {
        &self.spaces[space.index()]
    }
}

/// A fjall write batch with the keyspaces it writes to.
pub struct FjallBatch {
    batch: OwnedWriteBatch,
    spaces: [Keyspace; 3],
}

impl EngineBatch for FjallBatch {
    fn insert(&mut self, space: Space, key: impl Into<Slice>, value: impl Into<Slice>) {
        self.batch.insert(&self.spaces[space.index()], key, value);
    }

    fn remove(&mut self, space: Space, key: impl Into<Slice>) {
        self.batch.remove(&self.spaces[space.index()], key);
    }
}

/// A fjall snapshot with the keyspaces it reads.
pub struct FjallSnapshot {
    snapshot: fjall::Snapshot,
    spaces: [Keyspace; 3],
}

/// Visits the pairs of a fjall iterator until the visitor stops.
fn visit_all(iter: impl Iterator<Item = fjall::Guard>, mut visit: impl Visit) -> Result<(), StorageError> {
    for guard in iter {
        let (key, value) = guard.into_inner().map_err(fatal)?;
        if visit(&key, value)? == Scan::Stop {
            break;
        }
    }
    Ok(())
}

impl ReadView for FjallSnapshot {
    fn scan(&self, space: Space, range: KeyRange, visit: impl Visit) -> Result<(), StorageError> {
        let keyspace = &self.spaces[space.index()];
        visit_all(self.snapshot.range::<Vec<u8>, _>(keyspace, range), visit)
    }
}

impl ReadView for FjallEngine {
    fn scan(&self, space: Space, range: KeyRange, visit: impl Visit) -> Result<(), StorageError> {
        visit_all(self.keyspace(space).range::<Vec<u8>, _>(range), visit)
    }
}

impl Engine for FjallEngine {
    type Batch = FjallBatch;
    type Snapshot = FjallSnapshot;
    /// fjall's calls read and fsync files: they block.
    const WORK: Work = Work::Threads;

    fn batch(&self) -> FjallBatch {
        FjallBatch {
            batch: self.db.batch(),
            spaces: self.spaces.clone(),
        }
    }

    fn commit(&self, batch: FjallBatch, persist: Persist) -> Result<(), StorageError> {
        let mode = match persist {
            Persist::Sync => PersistMode::SyncData,
            Persist::Buffer => PersistMode::Buffer,
        };
        batch.batch.durability(Some(mode)).commit().map_err(fatal)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>, StorageError> {
        self.keyspace(space).get(key).map_err(fatal)
    }

    fn snapshot(&self) -> FjallSnapshot {
        FjallSnapshot {
            snapshot: self.db.snapshot(),
            spaces: self.spaces.clone(),
        }
    }

    /// fdatasync of the journal, as the periodic timer always did (the shutdown flush
    /// did a full fsync; fjall still does one when the database closes).
    fn sync(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncData).map_err(fatal)
    }

    fn disk_bytes(&self) -> Option<u64> {
        allocated_bytes(&self.dir)
            .inspect_err(|e| tracing::debug!("cannot measure the store's disk space: {e}"))
            .ok()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::codec::{encode_record, record_key};
    use crate::storage::store::test_options;
    use crate::storage::{test_record, test_store, Storage};

    /// Data directories written before the seam hold these keyspaces and bytes: a store
    /// must keep writing exactly them.
    #[tokio::test]
    async fn records_land_in_the_keyspaces_and_layout_of_existing_data_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let (key, record) = (bytes::Bytes::from_static(b"k"), test_record(7, Some(b"v")));
        {
            let store = test_store(dir.path());
            store.apply(key.clone(), record.clone()).await.unwrap();
            store
                .store_hint("n2".into(), key.clone(), record.clone())
                .await
                .unwrap();
            store.apply(key.clone(), test_record(8, None)).await.unwrap();
            store.flush().await.unwrap();
        }
        let db = Database::builder(dir.path()).open().unwrap();
        let open = |name: &str| {
            assert!(db.keyspace_exists(name), "keyspace {name}");
            db.keyspace(name, KeyspaceCreateOptions::default).unwrap()
        };
        let stored = open("records").get(record_key(&key)).unwrap();
        assert_eq!(stored.as_deref(), Some(&encode_record(&test_record(8, None))[..]));
        assert_eq!(open("hints").len().unwrap(), 1);
        assert!(open("tombstones").get(record_key(&key)).unwrap().is_some());
    }

    #[test]
    fn a_versions_keyspace_of_an_older_store_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::builder(dir.path()).open().unwrap();
            let versions = db.keyspace("versions", KeyspaceCreateOptions::default).unwrap();
            versions.insert(b"k", b"v").unwrap();
            db.persist(PersistMode::SyncAll).unwrap();
        }
        let engine = FjallEngine::open(dir.path(), &test_options()).unwrap();
        assert!(!engine.db.keyspace_exists("versions"));
    }
}
