//! Which records a node pulls from a peer, given both key/version lists of a leaf, and
//! whether those lists confirm this node's tombstones there (for purging).
//! Pure: the grace rule for tombstones takes the current time as a parameter.

use std::collections::HashMap;

use bytes::Bytes;

use crate::storage::Entry;

/// Keys the peer holds newer than we do, or that we lack. A tombstone older than
/// `grace_micros` is not pulled when we lack the key: absent and deleted read the same,
/// and we may already have purged it (pulling it back would resurrect a tombstone
/// forever).
pub fn pulls(mine: &[Entry], theirs: &[Entry], now_micros: u64, grace_micros: u64) -> Vec<Bytes> {
    let expired = |e: &Entry| e.tombstone && now_micros.saturating_sub(e.version.micros) > grace_micros;
    let my_versions: HashMap<&Bytes, &Entry> = mine.iter().map(|e| (&e.key, e)).collect();
    let mut out = Vec::new();
    for entry in theirs {
        match my_versions.get(&entry.key) {
            Some(my) if my.version >= entry.version => {}
            None if expired(entry) => {}
            _ => out.push(entry.key.clone()),
        }
    }
    out
}

/// Whether, for every tombstone in `mine`, `theirs` holds that version, a newer one, or
/// nothing for the key. Nothing counts: the peer purged it or never had the key, and in
/// either case it cannot hand an older value back (see [`crate::tombstones`]).
pub fn confirms_tombstones(mine: &[Entry], theirs: &[Entry]) -> bool {
    let their_versions: HashMap<&Bytes, &Entry> = theirs.iter().map(|e| (&e.key, e)).collect();
    mine.iter().filter(|e| e.tombstone).all(|mine| {
        their_versions
            .get(&mine.key)
            .is_none_or(|theirs| theirs.version >= mine.version)
    })
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
    fn newer_or_missing_keys_are_pulled() {
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
        assert_eq!(
            keys(&pulls(&mine, &theirs, 100, 1_000)),
            ["theirs-newer", "only-theirs"]
        );
    }

    #[test]
    fn expired_tombstones_are_not_resurrected_on_replicas_that_lack_them() {
        let old_tombstone = [e("gone", 10, true)];
        assert!(pulls(&[], &old_tombstone, 10_000, 1_000).is_empty());
        assert_eq!(
            keys(&pulls(&[], &old_tombstone, 500, 1_000)),
            ["gone"],
            "within grace it spreads like any write"
        );
        let over_value = pulls(&[e("gone", 5, false)], &old_tombstone, 10_000, 1_000);
        assert_eq!(
            keys(&over_value),
            ["gone"],
            "an old tombstone still beats an older value"
        );
    }

    #[test]
    fn tombstones_are_confirmed_by_the_same_a_newer_or_no_entry_only() {
        let mine = [e("gone", 10, true), e("live", 3, false)];
        assert!(confirms_tombstones(&mine, &[e("gone", 10, true)]));
        assert!(confirms_tombstones(&mine, &[e("gone", 11, false)]), "newer");
        assert!(confirms_tombstones(&mine, &[]), "purged or never had it");
        assert!(
            confirms_tombstones(&mine, &[e("gone", 10, true), e("live", 1, false)]),
            "values are not this check's business"
        );
        assert!(
            !confirms_tombstones(&mine, &[e("gone", 9, false)]),
            "an older value could come back"
        );
        assert!(!confirms_tombstones(&mine, &[e("gone", 9, true)]));
    }
}
