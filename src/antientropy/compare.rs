//! Which records two replicas must exchange, given their key/version lists of a leaf.
//! Pure: the grace rule for tombstones takes the current time as a parameter.

use std::collections::HashMap;

use bytes::Bytes;

use crate::storage::Entry;

/// What to move between this node and a peer for one leaf.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Keys this node holds newer (or the peer lacks): push our records.
    pub push: Vec<Bytes>,
    /// Keys the peer holds newer (or we lack): pull its records.
    pub pull: Vec<Bytes>,
}

/// Compares the two lists. A tombstone older than `grace_micros` is not sent to a replica
/// that lacks the key: absent and deleted read the same, and the replica may already
/// have purged it (sending it back would resurrect a tombstone forever).
pub fn plan(mine: &[Entry], theirs: &[Entry], now_micros: u64, grace_micros: u64) -> Plan {
    let expired = |e: &Entry| e.tombstone && now_micros.saturating_sub(e.version.micros) > grace_micros;
    let their_versions: HashMap<&Bytes, &Entry> = theirs.iter().map(|e| (&e.key, e)).collect();
    let my_versions: HashMap<&Bytes, &Entry> = mine.iter().map(|e| (&e.key, e)).collect();
    let mut out = Plan::default();
    for entry in mine {
        match their_versions.get(&entry.key) {
            Some(their) if their.version >= entry.version => {}
            None if expired(entry) => {}
            _ => out.push.push(entry.key.clone()),
        }
    }
    for entry in theirs {
        match my_versions.get(&entry.key) {
            Some(my) if my.version >= entry.version => {}
            None if expired(entry) => {}
            _ => out.pull.push(entry.key.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumkv_client::Version;

    fn e(key: &'static str, micros: u64, tombstone: bool) -> Entry {
        Entry {
            key: Bytes::from_static(key.as_bytes()),
            version: Version { micros, writer: 0 },
            tombstone,
        }
    }

    fn keys(list: &[Bytes]) -> Vec<&str> {
        list.iter().map(|k| std::str::from_utf8(k).unwrap()).collect()
    }

    #[test]
    fn newer_side_sends() {
        let mine = [
            e("same", 5, false),
            e("mine-newer", 9, false),
            e("only-mine", 1, false),
            e("theirs-newer", 1, false),
        ];
        let theirs = [
            e("same", 5, false),
            e("mine-newer", 8, false),
            e("theirs-newer", 2, true),
            e("only-theirs", 3, false),
        ];
        let p = plan(&mine, &theirs, 100, 1_000);
        assert_eq!(keys(&p.push), ["mine-newer", "only-mine"]);
        assert_eq!(keys(&p.pull), ["theirs-newer", "only-theirs"]);
    }

    #[test]
    fn expired_tombstones_are_not_resurrected_on_replicas_that_lack_them() {
        let old_tombstone = [e("gone", 10, true)];
        assert_eq!(plan(&old_tombstone, &[], 10_000, 1_000), Plan::default());
        assert_eq!(plan(&[], &old_tombstone, 10_000, 1_000), Plan::default());
        let fresh = plan(&old_tombstone, &[], 500, 1_000);
        assert_eq!(
            keys(&fresh.push),
            ["gone"],
            "within grace a tombstone is spread like any write"
        );
        let over_value = plan(&old_tombstone, &[e("gone", 5, false)], 10_000, 1_000);
        assert_eq!(
            keys(&over_value.push),
            ["gone"],
            "an old tombstone still beats an older value"
        );
    }
}
