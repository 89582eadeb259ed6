//! Partition placement: which nodes hold which partition, as a pure function of a slot
//! assignment (which roster member owns each ring slot) and the replication factor. No
//! I/O, clocks or randomness live here; the node and the client both build the same
//! [`Ring`] from a layout and look preference lists up in O(1). Storing, versioning and
//! spreading layouts is left to the node.
//!
//! The 64-bit key-hash space is cut into `partitions` equal ranges. The ring has one
//! slot per partition and every slot is owned by exactly one node (the slots are the
//! nodes' vnode tokens). The *roster* lists every node id ever in the cluster; indices
//! into it are stable forever, so a removed node stays in the roster owning nothing.
//! Members owning at least one slot are *active*. A partition's preference list is the
//! owners of slots p, p+1, p+2, ... (wrapping), keeping the first occurrence of each
//! node, so it is a permutation of the active members: the first `replication_factor`
//! are the replicas, the rest are hinted-handoff fallbacks in order. Inactive roster
//! members appear in no list.
//!
//! A first layout comes from [`Ring::new`], which replays the joins of an ordered
//! member list (see `claim.rs`): member 0 owns every slot; each joining member takes
//! floor(partitions / active) slots from members above that floor, never leaving
//! anyone outside floor or ceil, aiming at evenly spaced slots and preferring slots
//! that keep its own slots `replication_factor` apart (Riak's target_n_val). When no
//! window of `replication_factor` slots holds a node twice, every slot is a replica of
//! exactly `replication_factor` partitions, so slot balance is replica balance.
//! Measured over random member sets of 3..24 nodes (256 partitions with rf 1..5, 1024
//! with rf 3), no node was more than 12% off its fair share of replicas. (Purely hashed
//! tokens leave ~10% of such member sets with a node more than 25% off.)
//!
//! Later layouts come from the change functions, each moving no more than it must:
//! - [`owners_after_join`]: the joiner takes its fair share the way a replayed join
//!   does, refusing any slot that would bring a replica other than itself into a
//!   partition, so each partition's replica set gains at most the joiner and only about
//!   its share of partitions change.
//! - [`owners_after_leave`]: only the leaver's slots move, to the remaining members
//!   (each kept within floor/ceil of partitions / active). Partitions without the
//!   leaver keep their replica set exactly; one with it loses the leaver and gains one
//!   other member (checked per slot; in the rare case no balanced choice passes the
//!   check, balance wins and a partition may gain two).
//! - [`owners_after_replace`]: the new node takes exactly the old node's slots.

/// Largest supported partition count; member indices then fit a `u16` per slot.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Domain separation for the hash that places a joiner's first aimed slot.
const TOKEN_CONTEXT: &[u8] = b"quorumkv ring token v1\0";

/// Domain separation for the epoch; v2 hashes the slot assignment itself, so rings
/// built from different layouts see different epochs.
const EPOCH_CONTEXT: &[u8] = b"quorumkv ring epoch v2\0";

/// 64-bit key hash: first 8 bytes of blake3(key), big-endian.
pub fn key_hash(key: &[u8]) -> u64 {
    first_u64(blake3::hash(key))
}

/// The first 8 bytes of a blake3 digest as a big-endian integer.
fn first_u64(hash: blake3::Hash) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// Placement of every partition on the members, precomputed.
#[derive(Debug, Clone)]
pub struct Ring {
    /// Every node id ever in the cluster; preference lists hold indices into this.
    members: Vec<String>,
    /// log2(partitions), so `partition_of` is one shift.
    partition_bits: u32,
    /// How many nodes of each preference list are replicas.
    replication_factor: usize,
    /// Owner (roster index) of each slot; a slot starts each partition.
    owners: Vec<u16>,
    /// Roster indices owning at least one slot, ascending.
    active: Vec<usize>,
    /// Preference lists, flat: partition p is `[p * n, (p + 1) * n)`, n = active count.
    preference: Vec<usize>,
    /// Fingerprint of the inputs, to detect peers with a stale layout.
    epoch: u64,
}

impl Ring {
    /// `members`: node ids in join order (the order of `[[nodes]]` in cluster.toml).
    /// `partitions`: power of two >= 1 (max 65536). Replays the joins (see `claim.rs`).
    pub fn new(members: &[String], partitions: u32, replication_factor: usize) -> Result<Ring, RingError> {
        validate_new(members, partitions, replication_factor)?;
        Ring::from_owners(
            members,
            claim_slots(members, partitions, replication_factor),
            replication_factor,
        )
    }

    /// The ring of a stored slot assignment: `owners[slot]` is an index into `roster`
    /// and `owners.len()` is the partition count (a power of two up to
    /// [`MAX_PARTITIONS`]). Roster members owning no slot are inactive.
    pub fn from_owners(roster: &[String], owners: Vec<u16>, replication_factor: usize) -> Result<Ring, RingError> {
        validate_roster(roster)?;
        validate_shape(owners.len(), replication_factor)?;
        validate_owners(roster, &owners)?;
        let mut owns = vec![false; roster.len()];
        for &owner in &owners {
            owns[usize::from(owner)] = true;
        }
        let active: Vec<usize> = (0..roster.len()).filter(|&m| owns[m]).collect();
        Ok(Ring {
            members: roster.to_vec(),
            partition_bits: owners.len().trailing_zeros(),
            replication_factor,
            preference: preference_lists(&owners, active.len()),
            epoch: epoch(roster, &owners, replication_factor),
            owners,
            active,
        })
    }

    /// Number of partitions (a power of two).
    pub fn partitions(&self) -> u32 {
        1 << self.partition_bits
    }

    /// Replicas per partition (the ring may have fewer active members than this).
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// The whole roster: every node id ever in the cluster, active or not.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Owner (roster index) of every slot, as stored in a layout.
    pub fn owners(&self) -> &[u16] {
        &self.owners
    }

    /// Roster indices owning at least one slot, ascending.
    pub fn active(&self) -> &[usize] {
        &self.active
    }

    /// Whether roster index `member` owns at least one slot.
    pub fn is_active(&self, member: usize) -> bool {
        self.active.binary_search(&member).is_ok()
    }

    /// Partition of a key: the top log2(partitions) bits of its [`key_hash`].
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of_hash(key_hash(key), self.partition_bits)
    }

    /// Every active member once, in preference order for `partition` (indices into
    /// [`members`](Self::members)): replicas first, then hinted-handoff fallbacks.
    /// Panics if `partition >= partitions()`.
    pub fn preference_list(&self, partition: u32) -> &[usize] {
        let n = self.active.len();
        let start = partition as usize * n;
        &self.preference[start..start + n]
    }

    /// The first min(replication_factor, active members) entries of the preference list.
    pub fn replicas(&self, partition: u32) -> &[usize] {
        let count = self.replication_factor.min(self.active.len());
        &self.preference_list(partition)[..count]
    }

    /// Member index owning the slot that starts `partition` (its first replica).
    pub fn slot_owner(&self, partition: u32) -> usize {
        usize::from(self.owners[partition as usize])
    }

    /// Fingerprint of (roster, owners, replication_factor).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
}

/// Partition of a hash given log2(partitions); a shift by 64 would overflow.
fn partition_of_hash(hash: u64, bits: u32) -> u32 {
    match bits {
        0 => 0,
        _ => (hash >> (64 - bits)) as u32,
    }
}

/// blake3 over every input, each length-prefixed so no two inputs collide.
fn epoch(roster: &[String], owners: &[u16], rf: usize) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(EPOCH_CONTEXT);
    hasher.update(&(rf as u64).to_le_bytes());
    hasher.update(&(roster.len() as u64).to_le_bytes());
    for id in roster {
        hasher.update(&(id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
    }
    hasher.update(&(owners.len() as u64).to_le_bytes());
    for owner in owners {
        hasher.update(&owner.to_le_bytes());
    }
    first_u64(hasher.finalize())
}

/// Where a joining node aims its first slot: a hash of its id.
fn token(id: &str, partitions: usize) -> usize {
    let mut hasher = blake3::Hasher::new();
    hasher.update(TOKEN_CONTEXT);
    hasher.update(id.as_bytes());
    (first_u64(hasher.finalize()) % partitions as u64) as usize
}

/// Walks the ring from `start` collecting the first `want` distinct owners into `out`;
/// returns how many slots it walked (the window length).
fn walk(owners: &[u16], start: usize, want: usize, out: &mut Vec<u16>) -> usize {
    out.clear();
    let q = owners.len();
    for offset in 0..q {
        let owner = owners[(start + offset) % q];
        if !out.contains(&owner) {
            out.push(owner);
            if out.len() == want {
                return offset + 1;
            }
        }
    }
    q
}

/// Preference lists of every slot, flat with stride `active` (the number of distinct
/// owners). The list of slot p is its owner followed by the list of p + 1 without that
/// owner, so one walk backwards round the ring builds them all in O(partitions x active).
fn preference_lists(owners: &[u16], active: usize) -> Vec<usize> {
    let q = owners.len();
    let mut first = Vec::with_capacity(active);
    walk(owners, 0, active, &mut first);
    let mut next: Vec<usize> = first.iter().map(|&m| usize::from(m)).collect();
    let mut flat = vec![0; q * active];
    flat[..active].copy_from_slice(&next);
    let mut list = Vec::with_capacity(active);
    for slot in (1..q).rev() {
        let owner = usize::from(owners[slot]);
        list.clear();
        list.push(owner);
        list.extend(next.iter().filter(|&&m| m != owner));
        flat[slot * active..(slot + 1) * active].copy_from_slice(&list);
        std::mem::swap(&mut list, &mut next);
    }
    flat
}

mod change;
mod claim;
mod error;
mod leave;

use claim::claim_slots;
use error::{validate_new, validate_owners, validate_roster, validate_shape};

pub use change::{owners_after_join, owners_after_leave, owners_after_replace};
pub use error::RingError;

#[cfg(test)]
mod change_tests;
#[cfg(test)]
mod tests;
