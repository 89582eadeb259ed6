//! Joins: how a node that owns nothing claims its fair share of ring slots (see the
//! parent module for the scheme and why). Pure code, used by [`super::Ring::new`] to
//! replay the joins of a member list and by [`super::owners_after_join`] for one join
//! onto a stored layout. Leaving is in `leave.rs`.

use std::cmp::Reverse;

use super::{token, walk, Ring};

/// Owner of every slot after replaying the joins of `members` in order. The caller
/// has checked 1 <= members <= partitions.
pub(super) fn claim_slots(members: &[String], partitions: u32, rf: usize) -> Vec<u16> {
    let mut counts = vec![0; members.len()];
    counts[0] = partitions;
    let mut claims = Claims {
        owners: vec![0; partitions as usize],
        counts,
        active: 1,
        rf,
    };
    for (index, id) in members.iter().enumerate().skip(1) {
        Join::start(&mut claims, index as u16, id).run();
    }
    claims.owners
}

/// The slot owners after roster member `node` (owning nothing, with the caller having
/// checked active + 1 <= partitions) joins `ring`.
pub(super) fn claim_join(ring: &Ring, node: u16) -> Vec<u16> {
    let mut counts = vec![0; ring.members().len()];
    for &owner in ring.owners() {
        counts[usize::from(owner)] += 1;
    }
    let mut claims = Claims {
        owners: ring.owners().to_vec(),
        counts,
        active: ring.active().len(),
        rf: ring.replication_factor(),
    };
    Join::start(&mut claims, node, &ring.members()[usize::from(node)]).run();
    claims.owners
}

/// How many slots within `rf - 1` of `slot` (either side) `member` owns.
pub(super) fn owned_near(owners: &[u16], slot: usize, member: u16, rf: usize) -> usize {
    let q = owners.len();
    let mut count = 0;
    for d in 1..rf.min(q) {
        count += usize::from(owners[(slot + d) % q] == member);
        count += usize::from(owners[(slot + q - d) % q] == member);
    }
    count
}

/// Whether every partition whose replica window covers `slot` has only replicas from
/// `old` (its replica set before the join, stride `rf`) or `joiner`. Other partitions
/// cannot have changed; the covering ones sit just before the slot, and windows only
/// end earlier walking backwards, so the scan stops at the first that misses it.
fn replicas_within(owners: &[u16], slot: usize, old: &[u16], rf: usize, joiner: u16) -> bool {
    let q = owners.len();
    let mut set = Vec::with_capacity(rf);
    for back in 0..q {
        let start = (slot + q - back) % q;
        if walk(owners, start, rf, &mut set) <= back {
            return true;
        }
        let allowed = &old[start * rf..(start + 1) * rf];
        if set.iter().any(|m| *m != joiner && !allowed.contains(m)) {
            return false;
        }
    }
    true
}

/// Slot ownership while joins are replayed.
struct Claims {
    /// Owner (member index) of each slot.
    owners: Vec<u16>,
    /// Slots held per roster member, for balancing; inactive members hold 0.
    counts: Vec<u32>,
    /// Members owning at least one slot: fair shares divide by this, not the roster.
    active: usize,
    /// Replication factor: the window in which a node should not repeat.
    rf: usize,
}

impl Claims {
    /// Replica set of every partition, flat with stride `rf`.
    fn replica_sets(&self) -> Vec<u16> {
        let mut flat = Vec::with_capacity(self.owners.len() * self.rf);
        let mut set = Vec::with_capacity(self.rf);
        for start in 0..self.owners.len() {
            walk(&self.owners, start, self.rf, &mut set);
            flat.extend_from_slice(&set);
        }
        flat
    }

    /// How many slots within `rf - 1` of `slot` (either side) `member` owns.
    fn owned_near(&self, slot: usize, member: u16) -> usize {
        owned_near(&self.owners, slot, member, self.rf)
    }
}

/// Preference among candidate slots, smaller is better: fewest own slots nearby,
/// then most donor slots nearby (taking one thins a crowded window), then the
/// richest donor. Ties go to the candidate nearest the aimed slot.
type Score = (usize, Reverse<usize>, Reverse<u32>);

/// One member's join in progress.
struct Join<'a> {
    /// The ring being claimed from.
    claims: &'a mut Claims,
    /// Index of the joining member.
    node: u16,
    /// floor(partitions / active members after the join): the joiner's final count and
    /// every member's floor.
    target: u32,
    /// Slots still to take.
    left: u32,
    /// Slots held above `target + 1` across old members; must be gone by the end.
    excess: u32,
    /// Replica sets before the join (stride rf), or None when every old member was a
    /// replica of everything, so no partition can gain an old member.
    old_replicas: Option<Vec<u16>>,
    /// Where the joiner aims its first slot.
    offset: usize,
}

impl<'a> Join<'a> {
    /// Starts the join of roster member `node` (id `id`, owning no slot) to `claims`.
    fn start(claims: &'a mut Claims, node: u16, id: &str) -> Join<'a> {
        let q = claims.owners.len();
        let target = (q / (claims.active + 1)) as u32;
        let excess = claims.counts.iter().map(|&c| c.saturating_sub(target + 1)).sum();
        let old_replicas = (claims.active > claims.rf).then(|| claims.replica_sets());
        claims.active += 1;
        let offset = token(id, q);
        Join {
            claims,
            node,
            target,
            left: target,
            excess,
            old_replicas,
            offset,
        }
    }

    /// Takes `target` slots, aiming at evenly spaced positions round the ring.
    fn run(mut self) {
        let q = self.claims.owners.len();
        if self.target == 0 {
            return; // more members than slots: the caller refuses this join
        }
        let spacing = q / self.target as usize;
        for i in 0..self.target as usize {
            let aim = (self.offset + i * q / self.target as usize) % q;
            let slot = self.choose(aim, spacing.div_ceil(2));
            self.take(slot);
        }
    }

    /// Best acceptable slot near `aim`; widens to the whole ring, and as a last resort
    /// gives up minimal movement rather than balance.
    fn choose(&mut self, aim: usize, radius: usize) -> usize {
        let whole = self.claims.owners.len() / 2;
        self.best_near(aim, radius, true)
            .or_else(|| self.best_near(aim, whole, true))
            .or_else(|| self.best_near(aim, whole, false))
            .unwrap_or(aim) // unreachable: an eligible donor always exists
    }

    /// Best-scoring eligible slot within `radius` of `aim`.
    fn best_near(&mut self, aim: usize, radius: usize, keep_replicas: bool) -> Option<usize> {
        let q = self.claims.owners.len();
        let mut best: Option<(Score, usize)> = None;
        for d in 0..=radius {
            for slot in [(aim + d) % q, (aim + q - d) % q] {
                if !self.eligible(slot) {
                    continue;
                }
                let score = self.score(slot);
                let better = best.is_none_or(|(b, _)| score < b);
                if better && (!keep_replicas || self.keeps_replicas(slot)) {
                    best = Some((score, slot));
                }
            }
        }
        best.map(|(_, slot)| slot)
    }

    /// How much the joiner wants `slot`; see [`Score`].
    fn score(&self, slot: usize) -> Score {
        let owner = self.claims.owners[slot];
        (
            self.claims.owned_near(slot, self.node),
            Reverse(self.claims.owned_near(slot, owner)),
            Reverse(self.claims.counts[usize::from(owner)]),
        )
    }

    /// Whether the slot's owner may give it up and still end within floor/ceil: never
    /// below `target`, and down to `target` only while the slots left can still absorb
    /// every member's excess over `target + 1`.
    fn eligible(&self, slot: usize) -> bool {
        let owner = self.claims.owners[slot];
        let count = self.claims.counts[usize::from(owner)];
        owner != self.node && (count > self.target + 1 || (count == self.target + 1 && self.left > self.excess))
    }

    /// Whether taking `slot` keeps every partition's replicas within its old replicas
    /// plus the joiner (tried by handing the slot over and back).
    fn keeps_replicas(&mut self, slot: usize) -> bool {
        let Some(old) = &self.old_replicas else {
            return true;
        };
        let owners = &mut self.claims.owners;
        let previous = std::mem::replace(&mut owners[slot], self.node);
        let ok = replicas_within(owners, slot, old, self.claims.rf, self.node);
        owners[slot] = previous;
        ok
    }

    /// Moves `slot` to the joiner.
    fn take(&mut self, slot: usize) {
        let owner = usize::from(self.claims.owners[slot]);
        if self.claims.counts[owner] > self.target + 1 {
            self.excess -= 1;
        }
        self.claims.counts[owner] -= 1;
        self.claims.counts[usize::from(self.node)] += 1;
        self.claims.owners[slot] = self.node;
        self.left -= 1;
    }
}
