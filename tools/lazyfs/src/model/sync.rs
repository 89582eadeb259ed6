//! Syncs and the power cut: what becomes durable, and what the backing directory must do
//! to match.
//!
//! A sync returns the [`Persist`] steps that make the backing directory match the durable
//! tree; applying them is the backing module's job. A file whose durable name does not
//! exist yet (created, fsynced, directory not yet fsynced) keeps its durable bytes in the
//! model and reaches the backing directory when some directory fsync links it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{Data, FsError, Ino, Model, ROOT};

/// One step that brings the backing directory to the durable tree; paths are relative to
/// the backing root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Persist {
    /// The file at `path` (created if absent) gets `bytes` at `offset` and is cut or
    /// zero-extended to `len`.
    File {
        path: PathBuf,
        offset: usize,
        bytes: Vec<u8>,
        len: usize,
    },
    /// A new, empty directory at `path`.
    Dir { path: PathBuf },
    /// Whatever is at `path` (file or directory tree) goes.
    Remove { path: PathBuf },
}

/// What a power cut dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unsynced {
    /// Files whose live bytes differed from their durable bytes.
    pub files: u64,
    /// Bytes of those files written since their last fsync (the span from the lowest to
    /// the highest changed offset, per file).
    pub bytes: u64,
    /// Directories whose live entries differed from their durable entries.
    pub dirs: u64,
    /// Where those files and directories were (live paths; none for an unlinked file).
    pub paths: Vec<PathBuf>,
}

impl Model {
    /// Stops serving: every later operation fails with [`FsError::PoweredOff`]. Returns
    /// how many files and directories had unsynced changes, and the unsynced bytes.
    pub fn cut_power(&mut self) -> Unsynced {
        self.powered = false;
        let mut lost = Unsynced::default();
        for (&ino, node) in self.nodes.iter().filter(|(_, n)| n.unsynced()) {
            match (&node.live, &node.changed) {
                (Data::File(_), Some(changed)) => {
                    lost.files += 1;
                    lost.bytes += changed.len() as u64;
                }
                _ => lost.dirs += 1,
            }
            lost.paths
                .extend(self.paths(ino, false).into_iter().map(|p| Path::new("/").join(p)));
        }
        lost
    }

    /// `fsync`/`fdatasync` of file `ino`: its live bytes (and size) become durable.
    pub fn sync_file(&mut self, ino: Ino) -> Result<Vec<Persist>, FsError> {
        let node = self.node_mut(ino)?;
        let Some(changed) = node.changed.take() else {
            return Ok(Vec::new());
        };
        // Only the changed range and the length differ from the durable bytes: copy those
        // alone (a journal fsynced after each append costs its new records, not its size).
        let (Data::File(live), Data::File(durable)) = (&node.live, &mut node.durable) else {
            return Err(FsError::IsDir);
        };
        let range = changed.start.min(live.len())..changed.end.min(live.len());
        durable.resize(live.len(), 0);
        durable[range.clone()].copy_from_slice(&live[range.clone()]);
        let (len, bytes) = (live.len(), live[range.clone()].to_vec());
        let steps = self.durable_paths(ino).into_iter().map(|path| Persist::File {
            path,
            offset: range.start,
            bytes: bytes.clone(),
            len,
        });
        Ok(steps.collect())
    }

    /// `fsync` of directory `ino`: its live entries become durable (names created, renamed
    /// into or out of it, or unlinked from it). Its own name in its parent does not.
    pub fn sync_dir(&mut self, ino: Ino) -> Result<Vec<Persist>, FsError> {
        let live = self.entries_of(ino)?.clone();
        let node = self.node_mut(ino)?;
        let Data::Dir(old) = std::mem::replace(&mut node.durable, Data::Dir(live.clone())) else {
            return Err(FsError::NotDir);
        };
        let gone: Vec<(&OsString, Ino)> = old
            .iter()
            .filter(|(n, i)| live.get(*n) != Some(i))
            .map(|(n, &i)| (n, i))
            .collect();
        let added: Vec<(&OsString, Ino)> = live
            .iter()
            .filter(|(n, i)| old.get(*n) != Some(i))
            .map(|(n, &i)| (n, i))
            .collect();
        let mut steps = Vec::new();
        for path in self.durable_paths(ino) {
            steps.extend(gone.iter().map(|(name, _)| Persist::Remove { path: path.join(name) }));
            for &(name, child) in &added {
                self.materialize(child, path.join(name), &mut HashSet::new(), &mut steps);
            }
        }
        for &(_, child) in &added {
            self.node_mut(child)?.durable_links += 1;
        }
        for (_, child) in gone {
            if let Some(node) = self.nodes.get_mut(&child) {
                node.durable_links = node.durable_links.saturating_sub(1);
            }
            self.free_if_unused(child);
        }
        Ok(steps)
    }

    /// The steps writing `ino`'s durable state at `path`.
    fn materialize(&self, ino: Ino, path: PathBuf, seen: &mut HashSet<Ino>, steps: &mut Vec<Persist>) {
        if !seen.insert(ino) {
            return;
        }
        match &self.nodes[&ino].durable {
            Data::File(bytes) => {
                steps.push(Persist::Remove { path: path.clone() });
                steps.push(Persist::File {
                    path,
                    offset: 0,
                    bytes: bytes.clone(),
                    len: bytes.len(),
                });
            }
            Data::Dir(entries) => {
                steps.push(Persist::Dir { path: path.clone() });
                for (name, &child) in entries {
                    self.materialize(child, path.join(name), seen, steps);
                }
            }
        }
    }

    /// Every path at which `ino` is reachable from the root through durable entries.
    fn durable_paths(&self, ino: Ino) -> Vec<PathBuf> {
        self.paths(ino, true)
    }

    /// Every path at which `ino` is reachable from the root through durable (or live)
    /// entries.
    fn paths(&self, ino: Ino, durable: bool) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![(ROOT, PathBuf::new())];
        let mut seen = HashSet::new();
        while let Some((at, path)) = stack.pop() {
            if at == ino {
                found.push(path.clone());
            }
            if let Some(Data::Dir(entries)) = self.nodes.get(&at).map(|n| if durable { &n.durable } else { &n.live }) {
                if seen.insert(at) {
                    stack.extend(entries.iter().map(|(name, &child)| (child, path.join(name))));
                }
            }
        }
        found
    }
}
