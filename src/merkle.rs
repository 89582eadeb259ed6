//! Merkle trees over partitions, for anti-entropy: pure math, no I/O.
//!
//! Every partition has a three-level tree: a root, [`INNER`] inner nodes and
//! `leaves_per_partition` leaves. A key lands in the leaf picked by the bits of its hash
//! just below the partition bits, so a leaf is a contiguous range of the hash space (and,
//! because storage keys start with the hash, of storage). A leaf's hash is the XOR of
//! [`entry_hash`] over its keys; inner nodes and the root are XORs of their children.
//! XOR makes every write an O(1) update of leaf, inner node and root (remove the old
//! entry's hash, add the new one) in any order, so concurrent writes, a rebuild scan and
//! live updates can all fold into the same tree. Trees exist only for partitions that
//! hold data.

use quorumkv_client::Version;

/// Inner nodes per partition tree (the root's fan-out).
pub const INNER: usize = 32;
/// Leaves across all partitions a node aims for: 256 partitions get 1024 leaves each.
const LEAF_BUDGET: u32 = 1 << 18;
/// Fewest and most leaves per partition.
const MIN_LEAVES: u32 = INNER as u32;
const MAX_LEAVES: u32 = 1024;

/// A tree node's hash.
pub type Hash = u64;

/// Hash of one key's state: what two replicas compare.
pub fn entry_hash(key: &[u8], version: Version, tombstone: bool) -> Hash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&(key.len() as u32).to_le_bytes());
    hasher.update(key);
    hasher.update(&version.to_bytes());
    hasher.update(&[tombstone as u8]);
    let mut first = [0u8; 8];
    first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    u64::from_le_bytes(first)
}

/// How the hash space maps to partitions and leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeShape {
    /// log2 of the partition count.
    partition_bits: u32,
    /// log2 of the leaves per partition.
    leaf_bits: u32,
}

impl TreeShape {
    /// The shape for `partitions` (a power of two).
    pub fn new(partitions: u32) -> TreeShape {
        let leaves = (LEAF_BUDGET / partitions.max(1)).clamp(MIN_LEAVES, MAX_LEAVES);
        TreeShape {
            partition_bits: partitions.max(1).trailing_zeros(),
            leaf_bits: leaves.trailing_zeros(),
        }
    }

    /// Leaves per partition.
    pub fn leaves(&self) -> usize {
        1 << self.leaf_bits
    }

    /// Leaves under one inner node.
    pub fn leaves_per_inner(&self) -> usize {
        self.leaves() / INNER
    }

    /// Partition of a key hash.
    pub fn partition(&self, key_hash: u64) -> u32 {
        if self.partition_bits == 0 {
            return 0;
        }
        (key_hash >> (64 - self.partition_bits)) as u32
    }

    /// Leaf (within its partition) of a key hash.
    pub fn leaf(&self, key_hash: u64) -> usize {
        let below_partition = key_hash.checked_shl(self.partition_bits).unwrap_or(0);
        (below_partition >> (64 - self.leaf_bits)) as usize
    }

    /// The hash range `[start, end]` (inclusive) of a leaf.
    pub fn leaf_range(&self, partition: u32, leaf: usize) -> (u64, u64) {
        let width_bits = 64 - self.partition_bits - self.leaf_bits;
        let partition_start = (partition as u64).checked_shl(64 - self.partition_bits).unwrap_or(0);
        let start = partition_start | ((leaf as u64) << width_bits);
        let end = start | ((1u64 << width_bits) - 1);
        (start, end)
    }
}

/// The tree of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTree {
    root: Hash,
    inner: [Hash; INNER],
    leaves: Vec<Hash>,
}

impl PartitionTree {
    /// An empty tree (no keys: every hash is 0).
    pub fn new(shape: TreeShape) -> PartitionTree {
        PartitionTree {
            root: 0,
            inner: [0; INNER],
            leaves: vec![0; shape.leaves()],
        }
    }

    /// Folds `delta` (old entry hash XOR new entry hash) into `leaf`.
    pub fn toggle(&mut self, leaf: usize, delta: Hash) {
        let per_inner = self.leaves.len() / INNER;
        self.leaves[leaf] ^= delta;
        self.inner[leaf / per_inner] ^= delta;
        self.root ^= delta;
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.root
    }

    /// The inner node hashes.
    pub fn inner(&self) -> &[Hash; INNER] {
        &self.inner
    }

    /// The leaf hashes under inner node `index`, as `(leaf, hash)`.
    pub fn leaves_under(&self, index: usize) -> Vec<(u32, Hash)> {
        let per_inner = self.leaves.len() / INNER;
        let first = index * per_inner;
        (first..first + per_inner)
            .map(|leaf| (leaf as u32, self.leaves[leaf]))
            .collect()
    }

    /// The hash of `leaf`.
    pub fn leaf(&self, leaf: usize) -> Hash {
        self.leaves[leaf]
    }
}

/// Indices where two equally long hash lists differ.
pub fn differing(mine: &[Hash], theirs: &[Hash]) -> Vec<usize> {
    mine.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(micros: u64) -> Version {
        Version { micros, writer: 1 }
    }

    #[test]
    fn shapes_cover_the_hash_space() {
        for partitions in [1u32, 2, 256, 4096, 65536] {
            let shape = TreeShape::new(partitions);
            assert!(shape.leaves() >= INNER && shape.leaves().is_multiple_of(INNER));
            let last = partitions - 1;
            let last_leaf = shape.leaves() - 1;
            assert_eq!(shape.leaf_range(0, 0).0, 0);
            assert_eq!(shape.leaf_range(last, last_leaf).1, u64::MAX, "{partitions}");
            for h in [0u64, 1 << 40, u64::MAX / 3, u64::MAX] {
                let (p, leaf) = (shape.partition(h), shape.leaf(h));
                let (start, end) = shape.leaf_range(p, leaf);
                assert!(
                    start <= h && h <= end,
                    "{partitions} partitions: {h:x} in [{start:x}, {end:x}]"
                );
            }
        }
    }

    #[test]
    fn toggling_is_order_independent_and_reversible() {
        let shape = TreeShape::new(256);
        let entries = [
            (3usize, entry_hash(b"a", v(1), false)),
            (700, entry_hash(b"b", v(2), true)),
        ];
        let mut forward = PartitionTree::new(shape);
        let mut backward = PartitionTree::new(shape);
        for (leaf, h) in entries {
            forward.toggle(leaf, h);
        }
        for (leaf, h) in entries.iter().rev() {
            backward.toggle(*leaf, *h);
        }
        assert_eq!(forward, backward);
        assert_ne!(forward.root(), 0);
        assert_eq!(differing(forward.inner(), &[0; INNER]), vec![0, 700 / 32]);
        for (leaf, h) in entries {
            forward.toggle(leaf, h);
        }
        assert_eq!(
            forward,
            PartitionTree::new(shape),
            "removing every entry empties the tree"
        );
    }

    #[test]
    fn entry_hash_sees_every_field() {
        let base = entry_hash(b"k", v(1), false);
        assert_ne!(base, entry_hash(b"j", v(1), false));
        assert_ne!(base, entry_hash(b"k", v(2), false));
        assert_ne!(base, entry_hash(b"k", v(1), true));
    }
}
