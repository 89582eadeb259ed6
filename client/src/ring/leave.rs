//! Leaves: how a departing node's slots are handed to the remaining active members.
//! Pure code, used by [`super::owners_after_leave`], which has checked that the leaver
//! is active and not alone.
//!
//! Only the leaver's slots move, so a partition whose replica window holds none of them
//! keeps its replica set exactly. The slots are handed out one at a time, last slot
//! first (a window reaches forward, so the slots after the one being placed already
//! have their final owners). Each goes to a member that stays within floor/ceil of
//! partitions / (active - 1) and keeps every partition covering the slot at its old
//! replica set minus the leaver plus at most one other member; among those, the member
//! owning fewest slots within `replication_factor - 1` of it (so windows keep their
//! shape), then the one owning fewest slots. While placing, the leaver's slots not yet
//! handed out count as absent. If no balanced member passes the replica check (seen
//! only when the leaver's slots crowd each other, never in the tests' rings), balance
//! wins and a partition may gain two members.

use super::claim::owned_near;
use super::Ring;

/// Slot owners after `leaver` (active, not the only active member) leaves `ring`.
pub(super) fn claim_leave(ring: &Ring, leaver: u16) -> Vec<u16> {
    let mut leave = Leave::start(ring, leaver);
    let slots: Vec<usize> = (0..leave.owners.len()).filter(|&s| leave.owners[s] == leaver).collect();
    for &slot in slots.iter().rev() {
        match leave.choose(slot) {
            Some(member) => leave.give(slot, member),
            None => break, // unreachable: the caller checked there is an heir
        }
    }
    leave.owners
}

/// Preference among candidate members for a slot, smaller is better: fewest own slots
/// within `rf - 1` of it, then fewest slots, then the lowest roster index.
type Score = (usize, u32, u16);

/// One member's leave in progress.
struct Leave {
    /// Owner of each slot; the leaver's slots are handed out one by one.
    owners: Vec<u16>,
    /// Slots held per roster member.
    counts: Vec<u32>,
    /// The leaving member.
    leaver: u16,
    /// Active members other than the leaver: the only possible new owners.
    heirs: Vec<u16>,
    /// Replication factor: the window in which a node should not repeat.
    rf: usize,
    /// floor(partitions / heirs): every heir should end with at least this many.
    floor: u32,
    /// ceil(partitions / heirs): and at most this many.
    ceil: u32,
    /// Slots below `floor` summed over the heirs; the slots left must cover it.
    deficit: u32,
    /// The leaver's slots not yet handed out.
    left: u32,
    /// Replica sets before the leave, flat with stride `width`.
    old: Vec<u16>,
    /// Replicas per partition before the leave: min(rf, active).
    width: usize,
}

impl Leave {
    /// Counts the slots and records every partition's replica set before the leave.
    fn start(ring: &Ring, leaver: u16) -> Leave {
        let owners = ring.owners().to_vec();
        let q = owners.len();
        let mut counts = vec![0u32; ring.members().len()];
        for &owner in &owners {
            counts[usize::from(owner)] += 1;
        }
        let heirs: Vec<u16> = ring
            .active()
            .iter()
            .filter_map(|&m| u16::try_from(m).ok())
            .filter(|&m| m != leaver)
            .collect();
        let rf = ring.replication_factor();
        let width = rf.min(ring.active().len());
        let old = (0..ring.partitions())
            .flat_map(|p| ring.replicas(p).iter().map(|&m| m as u16))
            .collect();
        let shares = heirs.len().max(1);
        let (floor, ceil) = ((q / shares) as u32, q.div_ceil(shares) as u32);
        let deficit = heirs
            .iter()
            .map(|&m| floor.saturating_sub(counts[usize::from(m)]))
            .sum();
        let left = counts[usize::from(leaver)];
        Leave {
            owners,
            counts,
            leaver,
            heirs,
            rf,
            floor,
            ceil,
            deficit,
            left,
            old,
            width,
        }
    }

    /// The heir to receive `slot`: the best balanced one passing the replica check,
    /// else the best balanced one, else (unbalanced input) the one with fewest slots.
    fn choose(&mut self, slot: usize) -> Option<u16> {
        let mut ranked: Vec<(Score, u16)> = self
            .heirs
            .iter()
            .filter(|&&m| self.balanced(m))
            .map(|&m| (self.score(slot, m), m))
            .collect();
        ranked.sort_unstable();
        let passing = ranked.iter().map(|&(_, m)| m).find(|&m| self.keeps_replicas(slot, m));
        let fewest = self
            .heirs
            .iter()
            .copied()
            .min_by_key(|&m| (self.counts[usize::from(m)], m));
        passing.or(ranked.first().map(|&(_, m)| m)).or(fewest)
    }

    /// How much `member` suits `slot`; see [`Score`].
    fn score(&self, slot: usize, member: u16) -> Score {
        let near = owned_near(&self.owners, slot, member, self.rf);
        (near, self.counts[usize::from(member)], member)
    }

    /// Whether `member` may take one more slot and everyone still end within
    /// floor/ceil: below `ceil`, and at or above `floor` only while the slots left
    /// exceed what the members below `floor` still need.
    fn balanced(&self, member: u16) -> bool {
        let count = self.counts[usize::from(member)];
        count < self.floor || (count < self.ceil && self.left > self.deficit)
    }

    /// Whether handing `slot` to `member` keeps every partition whose window covers
    /// it at its old replicas minus the leaver plus at most one other member (tried by
    /// handing the slot over and back). Windows starting earlier end no later, so the
    /// scan backwards stops at the first that misses the slot.
    fn keeps_replicas(&mut self, slot: usize, member: u16) -> bool {
        if self.heirs.len() <= self.rf {
            return true; // every heir becomes a replica of everything: the check always holds
        }
        let q = self.owners.len();
        self.owners[slot] = member;
        let mut set = Vec::with_capacity(self.rf);
        let mut ok = true;
        for back in 0..q {
            let start = (slot + q - back) % q;
            if self.walk(start, &mut set) <= back {
                break;
            }
            // A partition starting at a slot still to be handed out is checked then.
            if self.owners[start] != self.leaver && !self.within(start, &set) {
                ok = false;
                break;
            }
        }
        self.owners[slot] = self.leaver;
        ok
    }

    /// Whether `set` is the old replica set of `partition` without the leaver, plus
    /// at most one other member if the leaver was among them.
    fn within(&self, partition: usize, set: &[u16]) -> bool {
        let old = &self.old[partition * self.width..(partition + 1) * self.width];
        let allowed = usize::from(old.contains(&self.leaver));
        set.iter().filter(|m| !old.contains(m)).count() <= allowed
    }

    /// Like the ring's walk, collecting `rf` distinct owners from `start`, but the
    /// leaver's slots not yet handed out count as absent. Returns the slots walked.
    fn walk(&self, start: usize, out: &mut Vec<u16>) -> usize {
        out.clear();
        let q = self.owners.len();
        for offset in 0..q {
            let owner = self.owners[(start + offset) % q];
            if owner != self.leaver && !out.contains(&owner) {
                out.push(owner);
                if out.len() == self.rf {
                    return offset + 1;
                }
            }
        }
        q
    }

    /// Moves `slot` from the leaver to `member`.
    fn give(&mut self, slot: usize, member: u16) {
        if self.counts[usize::from(member)] < self.floor {
            self.deficit = self.deficit.saturating_sub(1);
        }
        self.counts[usize::from(member)] += 1;
        self.counts[usize::from(self.leaver)] -= 1;
        self.owners[slot] = member;
        self.left -= 1;
    }
}
