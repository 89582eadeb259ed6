//! The Merkle trees of one node's records, one per partition that holds data.
//!
//! Updated by the storage writer after every committed batch and by the rebuild scan at
//! start; read by anti-entropy. XOR updates commute (see [`crate::merkle`]), so the scan
//! and live writes fold into the same trees; anti-entropy waits for [`Forest::is_ready`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::merkle::{Hash, PartitionTree, TreeShape, INNER};

/// Per-partition Merkle trees.
pub struct Forest {
    shape: TreeShape,
    trees: Mutex<Vec<Option<PartitionTree>>>,
    /// Set once the start-up scan has folded every stored record in.
    ready: AtomicBool,
}

impl Forest {
    /// Empty trees for `partitions` partitions.
    pub fn new(partitions: u32) -> Forest {
        let trees = (0..partitions).map(|_| None).collect();
        Forest {
            shape: TreeShape::new(partitions),
            trees: Mutex::new(trees),
            ready: AtomicBool::new(false),
        }
    }

    /// How keys map to partitions and leaves.
    pub fn shape(&self) -> TreeShape {
        self.shape
    }

    /// Folds entry-hash changes `(key hash, delta)` into the trees.
    pub fn toggle_all(&self, deltas: impl IntoIterator<Item = (u64, Hash)>) {
        let mut trees = self.lock();
        for (key_hash, delta) in deltas {
            let partition = self.shape.partition(key_hash) as usize;
            if let Some(slot) = trees.get_mut(partition) {
                let tree = slot.get_or_insert_with(|| PartitionTree::new(self.shape));
                tree.toggle(self.shape.leaf(key_hash), delta);
            }
        }
    }

    /// Root hash of a partition (0 when it holds nothing).
    pub fn root(&self, partition: u32) -> Hash {
        self.with_tree(partition, |t| t.root()).unwrap_or(0)
    }

    /// Inner node hashes of a partition.
    pub fn inner(&self, partition: u32) -> [Hash; INNER] {
        self.with_tree(partition, |t| *t.inner()).unwrap_or([0; INNER])
    }

    /// `(leaf, hash)` of every leaf under the given inner nodes of a partition.
    pub fn leaves_under(&self, partition: u32, inner: &[usize]) -> Vec<(u32, Hash)> {
        let per_inner = self.shape.leaves_per_inner();
        let valid = inner.iter().filter(|i| **i < INNER);
        match self.with_tree(partition, |t| valid.clone().flat_map(|i| t.leaves_under(*i)).collect()) {
            Some(leaves) => leaves,
            None => valid
                .flat_map(|i| (i * per_inner..(i + 1) * per_inner).map(|l| (l as u32, 0)))
                .collect(),
        }
    }

    /// The hash of one leaf.
    pub fn leaf(&self, partition: u32, leaf: usize) -> Hash {
        let in_range = leaf < self.shape.leaves();
        self.with_tree(partition, |t| if in_range { t.leaf(leaf) } else { 0 })
            .unwrap_or(0)
    }

    /// Whether the start-up rebuild has finished.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the start-up rebuild as finished.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    fn with_tree<T>(&self, partition: u32, f: impl FnOnce(&PartitionTree) -> T) -> Option<T> {
        self.lock().get(partition as usize).and_then(|t| t.as_ref()).map(f)
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Option<PartitionTree>>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }
}
