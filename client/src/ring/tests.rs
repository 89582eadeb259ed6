//! Tests of ring placement built by [`super::Ring::new`] (determinism, balance and the
//! movement of a join replayed from the member list) and by [`super::Ring::from_owners`]
//! (round trip, inactive members, bad layouts). The change functions are tested in
//! `change_tests.rs`.

use super::{key_hash, partition_of_hash, Ring, RingError};

pub(super) fn names(count: usize, scheme: fn(usize) -> String) -> Vec<String> {
    (1..=count).map(scheme).collect()
}

pub(super) fn short(i: usize) -> String {
    format!("n{i}")
}

pub(super) fn host(i: usize) -> String {
    format!("db-host-{i}.example")
}

pub(super) fn ring(members: &[String], partitions: u32, rf: usize) -> Ring {
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

fn sorted(list: &[usize]) -> Vec<usize> {
    let mut list = list.to_vec();
    list.sort_unstable();
    list
}

#[test]
fn from_owners_round_trips_ring_new() {
    for (partitions, rf) in [(256, 3), (1024, 3), (256, 2), (256, 1)] {
        for n in 1..=12 {
            let a = ring(&names(n, host), partitions, rf);
            let b = Ring::from_owners(a.members(), a.owners().to_vec(), rf).unwrap();
            assert_eq!(
                (a.epoch(), a.partitions(), a.active()),
                (b.epoch(), b.partitions(), b.active())
            );
            assert_eq!(a.active(), (0..n).collect::<Vec<_>>());
            for p in 0..partitions {
                assert_eq!(a.preference_list(p), b.preference_list(p));
            }
        }
    }
}

#[test]
fn epoch_tracks_owners_and_roster() {
    let r = ring(&names(4, short), 64, 3);
    let mut owners = r.owners().to_vec();
    owners.swap(0, 1);
    assert_ne!(r.epoch(), Ring::from_owners(r.members(), owners, 3).unwrap().epoch());
    let longer = names(5, short);
    assert_ne!(
        r.epoch(),
        Ring::from_owners(&longer, r.owners().to_vec(), 3).unwrap().epoch()
    );
    assert_ne!(
        r.epoch(),
        Ring::from_owners(r.members(), r.owners().to_vec(), 2).unwrap().epoch()
    );
}

#[test]
fn preference_lists_hold_only_active_members() {
    let roster = names(6, short);
    let owners: Vec<u16> = (0..64).map(|s| [0, 2, 5][s % 3]).collect();
    for rf in 1..=4 {
        let r = Ring::from_owners(&roster, owners.clone(), rf).unwrap();
        assert_eq!((r.members().len(), r.active()), (6, &[0, 2, 5][..]));
        assert!(r.is_active(2) && !r.is_active(1) && !r.is_active(6));
        for p in 0..64 {
            assert_eq!(sorted(r.preference_list(p)), vec![0, 2, 5], "rf={rf} p={p}");
            assert_eq!(r.replicas(p), &r.preference_list(p)[..rf.min(3)]);
            assert_eq!(r.preference_list(p)[0], r.slot_owner(p));
        }
    }
}

#[test]
fn bad_owners_are_errors() {
    let three = names(3, short);
    let err = Ring::from_owners(&three, vec![0, 1, 3, 2], 3).unwrap_err();
    assert_eq!(
        err,
        RingError::OwnerOutOfRange {
            slot: 2,
            owner: 3,
            roster: 3
        }
    );
    for len in [0, 3, 100] {
        let err = Ring::from_owners(&three, vec![0; len], 3).unwrap_err();
        assert_eq!(err, RingError::PartitionsNotPowerOfTwo { partitions: len as u32 });
    }
    assert_eq!(Ring::from_owners(&[], vec![0; 4], 3).unwrap_err(), RingError::NoMembers);
    assert_eq!(
        Ring::from_owners(&three, vec![0; 4], 0).unwrap_err(),
        RingError::ZeroReplicationFactor
    );
    let dup = vec!["a".to_string(), "a".to_string()];
    let err = Ring::from_owners(&dup, vec![0; 4], 3).unwrap_err();
    assert_eq!(err, RingError::DuplicateMember { id: "a".into() });
}
