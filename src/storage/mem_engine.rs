//! [`MemEngine`]: the [`Engine`] in memory, which can be told to crash.
//!
//! One ordered map per [`Space`] holds what reads see. A batch committed with
//! [`Persist::Buffer`] is visible at once but only "unsynced": it lives in the page cache
//! of an imaginary disk until the next synced commit or [`Engine::sync`], which makes it
//! and everything committed before it durable (like fjall's journal, synced in order).
//! [`MemEngine::crash`] gives the state a power cut would leave: the durable maps only.
//! [`MemEngine::fail_from_now`] makes it a dying disk: every commit and sync fails with an
//! I/O error and changes nothing, while reads still see what was committed before.
//!
//! It is deterministic: no clock, no threads, no randomness; every call finishes before
//! it returns, so the store runs its work on it as tasks ([`Work::Tasks`]). A mutex makes
//! it shareable by clones; nothing ever waits on it for long.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

use super::engine::{Engine, EngineBatch, KeyRange, Persist, ReadView, Scan, Slice, Space, Visit, Work};
use super::StorageError;

/// Pairs a live scan copies out per lock (see [`MemEngine`]'s `scan`).
const SCAN_CHUNK: usize = 256;

/// One ordered map per keyspace, in [`Space::ALL`] order.
type Spaces = [BTreeMap<Slice, Slice>; 3];

/// One change of a batch: the value, or `None` for a removal.
type Change = (Space, Slice, Option<Slice>);

/// The maps behind a [`MemEngine`].
#[derive(Default)]
struct State {
    /// What reads see: every committed batch.
    live: Spaces,
    /// What survives a power cut: every batch committed up to the last sync.
    durable: Spaces,
    /// Changes committed since the last sync, in commit order (not yet in `durable`).
    unsynced: Vec<Change>,
    /// Whether the disk is failing: commits and syncs return an error.
    failing: bool,
}

/// Keyspaces in memory; clones share them.
#[derive(Clone, Default)]
pub struct MemEngine {
    state: Arc<Mutex<State>>,
}

impl MemEngine {
    /// An empty engine.
    pub fn new() -> MemEngine {
        MemEngine::default()
    }

    /// What a power cut would leave now: a new engine holding only the synced data.
    /// This engine and its clones are unaffected (a store still running on them is the
    /// node that lost power; drop it). The new engine works even if this one was
    /// failing: the restarted node reads what its disk kept (tell it to fail again to
    /// model a disk that stays broken).
    pub fn crash(&self) -> MemEngine {
        let durable = self.lock().durable.clone();
        let state = State {
            live: durable.clone(),
            durable,
            unsynced: Vec::new(),
            failing: false,
        };
        MemEngine {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// From now on, every commit and sync of this engine and its clones fails with an
    /// I/O error and changes nothing (`true`), as on a dying disk, or works again
    /// (`false`). Reads keep working. A store on it poisons itself at the first failure.
    pub fn fail_from_now(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// Changes committed but not yet synced (a power cut now would lose them).
    pub fn unsynced(&self) -> usize {
        self.lock().unsynced.len()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    /// The error of `what` on a failing disk; `Ok` on a working one.
    fn check_disk(&self, what: &str) -> Result<(), StorageError> {
        if self.failing {
            return Err(StorageError::Fatal(format!(
                "{what} failed: input/output error (the memory engine was told to fail)"
            )));
        }
        Ok(())
    }
}

/// Applies one change to `spaces`.
fn apply(spaces: &mut Spaces, (space, key, value): Change) {
    let map = &mut spaces[space.index()];
    match value {
        Some(value) => map.insert(key, value),
        None => map.remove(&key),
    };
}

/// Visits the pairs of `map` in `range` until the visitor stops.
fn scan_map(map: &BTreeMap<Slice, Slice>, (start, end): KeyRange, mut visit: impl Visit) -> Result<(), StorageError> {
    let range: (Bound<&[u8]>, Bound<&[u8]>) = (start.as_ref().map(Vec::as_slice), end.as_ref().map(Vec::as_slice));
    // BTreeMap panics on an inverted range (or an empty one excluded at both ends);
    // fjall scans nothing, and so does this.
    let inverted = match range {
        (Bound::Excluded(s), Bound::Excluded(e)) => s >= e,
        (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) => s > e,
        _ => false,
    };
    if inverted {
        return Ok(());
    }
    for (key, value) in map.range::<[u8], _>(range) {
        if visit(key, value.clone())? == Scan::Stop {
            break;
        }
    }
    Ok(())
}

/// The changes of a batch, in order.
#[derive(Default)]
pub struct MemBatch {
    changes: Vec<Change>,
}

impl EngineBatch for MemBatch {
    fn insert(&mut self, space: Space, key: impl Into<Slice>, value: impl Into<Slice>) {
        self.changes.push((space, key.into(), Some(value.into())));
    }

    fn remove(&mut self, space: Space, key: impl Into<Slice>) {
        self.changes.push((space, key.into(), None));
    }
}

/// A copy of the maps at one moment.
pub struct MemSnapshot {
    spaces: Spaces,
}

impl ReadView for MemSnapshot {
    fn scan(&self, space: Space, range: KeyRange, visit: impl Visit) -> Result<(), StorageError> {
        scan_map(&self.spaces[space.index()], range, visit)
    }
}

impl ReadView for MemEngine {
    /// Copies the range out a chunk at a time, each under the lock, so the visitor may
    /// take its time and a scan stopped early costs only what it visited. Commits made
    /// between two chunks show in the later ones, as they can in a live fjall range
    /// read; the store never relies on a live scan being one view (it takes a
    /// [`snapshot`](Engine::snapshot) where it must).
    fn scan(&self, space: Space, (start, end): KeyRange, mut visit: impl Visit) -> Result<(), StorageError> {
        let mut from = start;
        loop {
            let mut chunk = Vec::with_capacity(SCAN_CHUNK);
            scan_map(&self.lock().live[space.index()], (from, end.clone()), |key, value| {
                chunk.push((Slice::from(key), value));
                Ok(if chunk.len() == SCAN_CHUNK {
                    Scan::Stop
                } else {
                    Scan::Continue
                })
            })?;
            let complete = chunk.len() < SCAN_CHUNK;
            let mut last = None;
            for (key, value) in chunk {
                if visit(&key, value)? == Scan::Stop {
                    return Ok(());
                }
                last = Some(key);
            }
            match last {
                Some(key) if !complete => from = Bound::Excluded(key.to_vec()),
                _ => return Ok(()),
            }
        }
    }
}

impl Engine for MemEngine {
    type Batch = MemBatch;
    type Snapshot = MemSnapshot;
    /// Nothing here blocks: the store's loops are tasks on the simulation's runtime.
    const WORK: Work = Work::Tasks;

    fn batch(&self) -> MemBatch {
        MemBatch::default()
    }

    fn commit(&self, batch: MemBatch, persist: Persist) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.check_disk("commit")?;
        for change in &batch.changes {
            apply(&mut state.live, change.clone());
        }
        state.unsynced.extend(batch.changes);
        if persist == Persist::Sync {
            sync_state(&mut state);
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>, StorageError> {
        Ok(self.lock().live[space.index()].get(key).cloned())
    }

    fn snapshot(&self) -> MemSnapshot {
        MemSnapshot {
            spaces: self.lock().live.clone(),
        }
    }

    fn sync(&self) -> Result<(), StorageError> {
        let mut state = self.lock();
        state.check_disk("sync")?;
        sync_state(&mut state);
        Ok(())
    }

    fn disk_bytes(&self) -> Option<u64> {
        None
    }
}

/// Makes every unsynced change durable.
fn sync_state(state: &mut State) {
    let State { durable, unsynced, .. } = state;
    for change in unsynced.drain(..) {
        apply(durable, change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(engine: &MemEngine, key: &'static [u8], persist: Persist) {
        let mut batch = engine.batch();
        batch.insert(Space::Records, key, key);
        engine.commit(batch, persist).unwrap();
    }

    fn keys(engine: &MemEngine) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let all = (Bound::Unbounded, Bound::Unbounded);
        ReadView::scan(engine, Space::Records, all, |key, _| {
            keys.push(key.to_vec());
            Ok(Scan::Continue)
        })
        .unwrap();
        keys
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_loses_the_rest() {
        let engine = MemEngine::new();
        put(&engine, b"a", Persist::Buffer);
        put(&engine, b"b", Persist::Sync);
        put(&engine, b"c", Persist::Buffer);
        assert_eq!(keys(&engine), [b"a", b"b", b"c"], "every commit is visible at once");
        assert_eq!(engine.unsynced(), 1);
        let crashed = engine.crash();
        assert_eq!(
            keys(&crashed),
            [b"a", b"b"],
            "a synced commit makes earlier ones durable too"
        );
        engine.sync().unwrap();
        assert_eq!(keys(&engine.crash()), [b"a", b"b", b"c"]);
        assert_eq!(keys(&crashed), [b"a", b"b"], "a crashed engine is independent");
    }

    #[test]
    fn a_failing_engine_refuses_commits_and_syncs_and_changes_nothing() {
        let engine = MemEngine::new();
        put(&engine, b"a", Persist::Buffer);
        engine.clone().fail_from_now(true);
        let mut batch = engine.batch();
        batch.insert(Space::Records, &b"b"[..], &b"b"[..]);
        assert!(matches!(
            engine.commit(batch, Persist::Sync),
            Err(StorageError::Fatal(_))
        ));
        assert!(matches!(engine.sync(), Err(StorageError::Fatal(_))));
        assert_eq!(keys(&engine), [b"a"], "reads still work; the failed batch is not there");
        assert_eq!(engine.unsynced(), 1, "the failed sync made nothing durable");
        assert_eq!(keys(&engine.crash()), Vec::<Vec<u8>>::new());
        engine.fail_from_now(false);
        put(&engine, b"b", Persist::Sync);
        assert_eq!(keys(&engine.crash()), [b"a", b"b"], "a healed disk works again");
    }

    #[test]
    fn removals_are_lost_like_writes_when_unsynced() {
        let engine = MemEngine::new();
        put(&engine, b"a", Persist::Sync);
        let mut batch = engine.batch();
        batch.remove(Space::Records, &b"a"[..]);
        engine.commit(batch, Persist::Buffer).unwrap();
        assert_eq!(engine.get(Space::Records, b"a").unwrap(), None);
        assert!(engine.crash().get(Space::Records, b"a").unwrap().is_some());
    }

    #[test]
    fn a_live_scan_longer_than_a_chunk_visits_every_key_once_in_order() {
        let engine = MemEngine::new();
        let mut batch = engine.batch();
        let all: Vec<Vec<u8>> = (0..SCAN_CHUNK as u32 * 2 + 7)
            .map(|i| i.to_be_bytes().to_vec())
            .collect();
        for key in &all {
            batch.insert(Space::Hints, key.as_slice(), &b"v"[..]);
        }
        engine.commit(batch, Persist::Sync).unwrap();
        let mut seen = Vec::new();
        let range = (Bound::Unbounded, Bound::Unbounded);
        ReadView::scan(&engine, Space::Hints, range, |key, _| {
            seen.push(key.to_vec());
            Ok(Scan::Continue)
        })
        .unwrap();
        assert_eq!(seen, all);
        assert!(keys(&engine).is_empty(), "other keyspaces hold nothing");
    }

    #[test]
    fn snapshots_do_not_see_later_commits_and_ranges_are_bounded() {
        let engine = MemEngine::new();
        put(&engine, b"a", Persist::Sync);
        let snapshot = engine.snapshot();
        put(&engine, b"b", Persist::Sync);
        let mut seen = Vec::new();
        let all = (Bound::Unbounded, Bound::Unbounded);
        snapshot
            .scan(Space::Records, all, |key, _| {
                seen.push(key.to_vec());
                Ok(Scan::Continue)
            })
            .unwrap();
        assert_eq!(seen, [b"a"]);
        let mut from_b = Vec::new();
        let range = (Bound::Excluded(b"a".to_vec()), Bound::Included(b"b".to_vec()));
        ReadView::scan(&engine, Space::Records, range, |key, _| {
            from_b.push(key.to_vec());
            Ok(Scan::Stop)
        })
        .unwrap();
        assert_eq!(from_b, [b"b"]);
    }
}
