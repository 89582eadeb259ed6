//! Partition placement: which nodes hold which partition, as a pure function of the
//! ordered member list, the partition count and the replication factor. No I/O, clocks
//! or randomness live here; the node and the client both build the same [`Ring`] from
//! the member list and look preference lists up in O(1).
//!
//! The 64-bit key-hash space is cut into `partitions` equal ranges. The ring has one
//! slot per partition and every slot is claimed by exactly one node (the slots are the
//! nodes' vnode tokens). A partition's preference list is the owners of slots p, p+1,
//! p+2, ... (wrapping), keeping the first occurrence of each node, so it is a
//! permutation of all members: the first `replication_factor` are the replicas, the
//! rest are hinted-handoff fallbacks in order.
//!
//! Claims are not hashed independently. With purely hashed tokens (token = hash(node
//! id, i)), 256 partitions and rf 3, about 10% of random 3..20-node member sets leave
//! some node more than 25% off its fair share of replicas whatever the vnode count,
//! because each partition lands independently. Instead the joins are replayed in member
//! order, Riak-style: member 0 owns every slot; each joining member takes
//! floor(partitions / members) slots from members above that floor, never leaving
//! anyone outside floor or ceil. A joiner aims at evenly spaced slots (offset by a hash
//! of its id), and near each aim prefers a slot that keeps its own slots
//! `replication_factor` apart (Riak's target_n_val), then one that thins a window where
//! its donor appears twice, then the donor holding the most slots. When no window of
//! `replication_factor` slots holds a node twice, every slot is a replica of exactly
//! `replication_factor` partitions, so slot balance is replica balance. Measured over
//! random member sets of 3..24 nodes (256 partitions with rf 1..5, 1024 with rf 3), no
//! node was more than 12% off its fair share of replicas.
//!
//! A join never moves more than it must: before taking a slot, the joiner checks every
//! partition whose replica window covers it and refuses a slot that would bring in a
//! replica other than itself. So when a node is appended to the member list, each
//! partition's new replica set differs from the old one only by the new node, and only
//! partitions near its claimed slots change (about its fair share of replica slots).

/// Largest supported partition count; member indices then fit a `u16` per slot.
pub const MAX_PARTITIONS: u32 = 1 << 16;

/// Domain separation for the hash that places a joiner's first aimed slot.
const TOKEN_CONTEXT: &[u8] = b"quorumkv ring token v1\0";

/// Domain separation for the epoch; bump the version if placement ever changes, so
/// nodes and clients running different algorithms see different epochs.
const EPOCH_CONTEXT: &[u8] = b"quorumkv ring epoch v1\0";

/// Error building a ring.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The member list was empty.
    #[error("the member list is empty: a ring needs at least one node")]
    NoMembers,
    /// `partitions` is zero, not a power of two, or above [`MAX_PARTITIONS`].
    #[error("partitions = {partitions} must be a power of two from 1 to {MAX_PARTITIONS}")]
    PartitionsNotPowerOfTwo {
        /// The rejected partition count.
        partitions: u32,
    },
    /// The same node id appears twice in the member list.
    #[error("node id {id:?} appears more than once in the member list")]
    DuplicateMember {
        /// The repeated node id.
        id: String,
    },
    /// `replication_factor` was zero.
    #[error("replication_factor must be at least 1")]
    ZeroReplicationFactor,
    /// More members than partitions: some node would own no partition.
    #[error("{members} members exceed partitions = {partitions}: raise partitions")]
    TooManyMembers {
        /// Number of members given.
        members: usize,
        /// The partition count.
        partitions: u32,
    },
}

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
    /// Node ids in join order; preference lists hold indices into this.
    members: Vec<String>,
    /// log2(partitions), so `partition_of` is one shift.
    partition_bits: u32,
    /// How many nodes of each preference list are replicas.
    replication_factor: usize,
    /// Owner (member index) of each slot; a slot starts each partition.
    owners: Vec<u16>,
    /// Preference lists, flat: partition p is `[p * n, (p + 1) * n)`, n = members.
    preference: Vec<usize>,
    /// Fingerprint of the inputs, to detect peers with a stale member list.
    epoch: u64,
}

impl Ring {
    /// `members`: node ids in join order (the order of `[[nodes]]` in cluster.toml).
    /// `partitions`: power of two >= 1 (max 65536).
    pub fn new(members: &[String], partitions: u32, replication_factor: usize) -> Result<Ring, RingError> {
        validate(members, partitions, replication_factor)?;
        let owners = claim_slots(members, partitions, replication_factor);
        Ok(Ring {
            members: members.to_vec(),
            partition_bits: partitions.trailing_zeros(),
            replication_factor,
            preference: preference_lists(&owners, members.len()),
            owners,
            epoch: epoch(members, partitions, replication_factor),
        })
    }

    /// Number of partitions (a power of two).
    pub fn partitions(&self) -> u32 {
        1 << self.partition_bits
    }

    /// Replicas per partition (the ring may have fewer members than this).
    pub fn replication_factor(&self) -> usize {
        self.replication_factor
    }

    /// Node ids in join order.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// Partition of a key: the top log2(partitions) bits of its [`key_hash`].
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        partition_of_hash(key_hash(key), self.partition_bits)
    }

    /// Every member once, in preference order for `partition` (indices into
    /// [`members`](Self::members)): replicas first, then hinted-handoff fallbacks.
    /// Panics if `partition >= partitions()`.
    pub fn preference_list(&self, partition: u32) -> &[usize] {
        let n = self.members.len();
        let start = partition as usize * n;
        &self.preference[start..start + n]
    }

    /// The first min(replication_factor, members) entries of the preference list.
    pub fn replicas(&self, partition: u32) -> &[usize] {
        let count = self.replication_factor.min(self.members.len());
        &self.preference_list(partition)[..count]
    }

    /// Member index owning the slot that starts `partition` (its first replica).
    pub fn slot_owner(&self, partition: u32) -> usize {
        usize::from(self.owners[partition as usize])
    }

    /// Fingerprint of (members, partitions, replication_factor).
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

/// Checks the inputs of [`Ring::new`], naming the first problem found.
fn validate(members: &[String], partitions: u32, rf: usize) -> Result<(), RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS {
        return Err(RingError::PartitionsNotPowerOfTwo { partitions });
    }
    if rf == 0 {
        return Err(RingError::ZeroReplicationFactor);
    }
    if members.len() > partitions as usize {
        let members = members.len();
        return Err(RingError::TooManyMembers { members, partitions });
    }
    let mut seen = std::collections::HashSet::with_capacity(members.len());
    match members.iter().find(|id| !seen.insert(id.as_str())) {
        Some(id) => Err(RingError::DuplicateMember { id: id.clone() }),
        None => Ok(()),
    }
}

/// blake3 over every input, each length-prefixed so no two inputs collide.
fn epoch(members: &[String], partitions: u32, rf: usize) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(EPOCH_CONTEXT);
    hasher.update(&partitions.to_le_bytes());
    hasher.update(&(rf as u64).to_le_bytes());
    hasher.update(&(members.len() as u64).to_le_bytes());
    for id in members {
        hasher.update(&(id.len() as u64).to_le_bytes());
        hasher.update(id.as_bytes());
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

/// Preference lists of every slot, flat with stride `members`. The list of slot p is
/// its owner followed by the list of p + 1 without that owner, so one walk backwards
/// round the ring builds them all in O(partitions x members).
fn preference_lists(owners: &[u16], members: usize) -> Vec<usize> {
    let q = owners.len();
    let mut first = Vec::with_capacity(members);
    walk(owners, 0, members, &mut first);
    let mut next: Vec<usize> = first.iter().map(|&m| usize::from(m)).collect();
    // Members owning no slot cannot happen (members <= partitions); keep lists total.
    let slotless: Vec<usize> = (0..members).filter(|m| !next.contains(m)).collect();
    next.extend(slotless);
    let mut flat = vec![0; q * members];
    flat[..members].copy_from_slice(&next);
    let mut list = Vec::with_capacity(members);
    for slot in (1..q).rev() {
        let owner = usize::from(owners[slot]);
        list.clear();
        list.push(owner);
        list.extend(next.iter().filter(|&&m| m != owner));
        flat[slot * members..(slot + 1) * members].copy_from_slice(&list);
        std::mem::swap(&mut list, &mut next);
    }
    flat
}

mod claim;

use claim::claim_slots;

#[cfg(test)]
mod tests {
    use super::{key_hash, partition_of_hash, Ring, RingError};

    fn names(count: usize, scheme: fn(usize) -> String) -> Vec<String> {
        (1..=count).map(scheme).collect()
    }

    fn short(i: usize) -> String {
        format!("n{i}")
    }

    fn host(i: usize) -> String {
        format!("db-host-{i}.example")
    }

    fn ring(members: &[String], partitions: u32, rf: usize) -> Ring {
        Ring::new(members, partitions, rf).unwrap()
    }

    /// Partitions for which each member is a replica.
    fn replica_counts(ring: &Ring) -> Vec<usize> {
        let mut counts = vec![0; ring.members().len()];
        for p in 0..ring.partitions() {
            for &m in ring.replicas(p) {
                counts[m] += 1;
            }
        }
        counts
    }

    /// Worst relative deviation of any member's replica count from the fair share.
    fn worst_deviation(ring: &Ring) -> f64 {
        let n = ring.members().len();
        let fair = f64::from(ring.partitions()) * ring.replication_factor().min(n) as f64 / n as f64;
        replica_counts(ring)
            .iter()
            .map(|&c| (c as f64 - fair).abs() / fair)
            .fold(0.0, f64::max)
    }

    #[test]
    fn deterministic_and_epoch_tracks_members() {
        let members = names(7, host);
        let (a, b) = (ring(&members, 256, 3), ring(&members, 256, 3));
        assert_eq!(a.epoch(), b.epoch());
        for p in 0..256 {
            assert_eq!(a.preference_list(p), b.preference_list(p));
        }
        assert_ne!(a.epoch(), ring(&names(8, host), 256, 3).epoch());
        assert_ne!(a.epoch(), ring(&names(7, short), 256, 3).epoch());
        assert_ne!(a.epoch(), ring(&members, 512, 3).epoch());
        assert_ne!(a.epoch(), ring(&members, 256, 2).epoch());
    }

    #[test]
    fn preference_lists_are_permutations() {
        for n in 1..=12 {
            let r = ring(&names(n, short), 64, 3);
            for p in 0..64 {
                let mut list = r.preference_list(p).to_vec();
                assert_eq!(list[0], r.slot_owner(p));
                list.sort_unstable();
                assert_eq!(list, (0..n).collect::<Vec<_>>(), "n={n} p={p}");
                let replicas = r.replicas(p);
                assert_eq!(replicas.len(), n.min(3));
                assert_eq!(replicas, &r.preference_list(p)[..n.min(3)]);
            }
        }
    }

    #[test]
    fn replicas_are_balanced() {
        let mut worst = 0.0f64;
        for (partitions, rf) in [(256, 3), (1024, 3), (256, 1), (256, 2), (1024, 1), (1024, 2)] {
            for scheme in [short as fn(usize) -> String, host] {
                for n in 3..=20 {
                    let deviation = worst_deviation(&ring(&names(n, scheme), partitions, rf));
                    assert!(deviation <= 0.25, "q={partitions} rf={rf} n={n}: {deviation}");
                    worst = worst.max(deviation);
                }
            }
        }
        println!("worst replica-count deviation: {:.1}%", worst * 100.0);
    }

    #[test]
    fn adding_a_node_moves_only_its_share() {
        let (mut worst, mut most) = (0.0f64, 0);
        for scheme in [short as fn(usize) -> String, host] {
            for n in 3..20 {
                let members = names(n + 1, scheme);
                let (old, new) = (ring(&members[..n], 256, 3), ring(&members, 256, 3));
                let mut moved = 0;
                for p in 0..256 {
                    let (before, after) = (old.replicas(p), new.replicas(p));
                    let gained: Vec<_> = after.iter().filter(|m| !before.contains(m)).collect();
                    assert!(gained.iter().all(|&&m| m == n), "n={n} p={p}: {before:?} -> {after:?}");
                    moved += usize::from(!gained.is_empty());
                }
                let share = 256.0 * 3.0 / (n + 1) as f64;
                assert!(moved as f64 <= 1.5 * share, "n={n}: {moved} moved, share {share}");
                worst = worst.max(moved as f64 / share);
                most = most.max(moved);
            }
        }
        println!("moved partitions: at most {most}, worst {worst:.2} x the new node's share");
    }

    #[test]
    fn partitions_are_equal_hash_ranges() {
        assert_eq!(partition_of_hash(0, 8), 0);
        assert_eq!(partition_of_hash(u64::MAX, 8), 255);
        assert_eq!(partition_of_hash(u64::MAX, 0), 0);
        assert_eq!(partition_of_hash(u64::MAX, 16), 65535);
        let r = ring(&names(3, short), 256, 3);
        for i in 0..100u32 {
            let key = i.to_be_bytes();
            assert_eq!(r.partition_of(&key), (key_hash(&key) >> 56) as u32);
        }
        assert_eq!(ring(&names(1, short), 1, 3).partition_of(b"any"), 0);
    }

    #[test]
    fn key_hash_is_blake3_prefix() {
        let digest = blake3::hash(b"hello");
        let expected = u64::from_be_bytes(digest.as_bytes()[..8].try_into().unwrap());
        assert_eq!(key_hash(b"hello"), expected);
    }

    #[test]
    fn bad_inputs_are_named() {
        let three = names(3, short);
        assert_eq!(Ring::new(&[], 256, 3).unwrap_err(), RingError::NoMembers);
        for partitions in [0, 3, 100, 1 << 17] {
            let err = Ring::new(&three, partitions, 3).unwrap_err();
            assert_eq!(err, RingError::PartitionsNotPowerOfTwo { partitions });
        }
        let dup = vec!["a".to_string(), "b".to_string(), "a".to_string()];
        let err = Ring::new(&dup, 256, 3).unwrap_err();
        assert_eq!(err, RingError::DuplicateMember { id: "a".into() });
        assert_eq!(Ring::new(&three, 256, 0).unwrap_err(), RingError::ZeroReplicationFactor);
        let err = Ring::new(&three, 2, 1).unwrap_err();
        assert_eq!(
            err,
            RingError::TooManyMembers {
                members: 3,
                partitions: 2
            }
        );
    }

    #[test]
    fn tiny_clusters_replicate_on_everyone() {
        for n in 1..=2 {
            let r = ring(&names(n, short), 256, 3);
            for p in 0..256 {
                assert_eq!(r.replicas(p).len(), n);
            }
        }
        let r = ring(&names(1, short), 1, 3);
        assert_eq!(r.preference_list(0), &[0]);
    }
}
