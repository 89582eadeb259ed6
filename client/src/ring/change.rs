//! The next slot assignment after a membership change: join, leave or replace one
//! node. Each function is pure and deterministic (every node computing it gets the same
//! answer) and checks its inputs, which name roster indices of a layout received over
//! the network. The algorithms live in `claim.rs` (join) and `leave.rs`; storing and
//! spreading the new layout is left to the node.

use super::claim::claim_join;
use super::leave::claim_leave;
use super::{Ring, RingError};

/// Slot owners after roster member `joiner` (owning no slot) joins: it takes
/// floor(partitions / (active + 1)) slots from members above that floor, refusing any
/// slot that would bring a replica other than itself into a partition. So each
/// partition's replica set gains at most the joiner, and about the joiner's share of
/// replica sets change.
pub fn owners_after_join(ring: &Ring, joiner: usize) -> Result<Vec<u16>, RingError> {
    let node = inactive(ring, joiner)?;
    let members = ring.active().len() + 1;
    if members > ring.owners().len() {
        let partitions = ring.partitions();
        return Err(RingError::TooManyMembers { members, partitions });
    }
    Ok(claim_join(ring, node))
}

/// Slot owners after active member `leaver` leaves: only its slots move, to the
/// remaining active members, each kept within floor/ceil of partitions / (active - 1).
/// Partitions whose replicas did not include the leaver keep them exactly; the others
/// lose the leaver and gain one other member (see `leave.rs` for the rare exception).
pub fn owners_after_leave(ring: &Ring, leaver: usize) -> Result<Vec<u16>, RingError> {
    let node = active(ring, leaver)?;
    if ring.active().len() == 1 {
        let id = ring.members()[leaver].clone();
        return Err(RingError::LastActiveMember { id });
    }
    Ok(claim_leave(ring, node))
}

/// Slot owners after roster member `new` (owning no slot) takes exactly the slots of
/// active member `old`: every partition with `old` gets `new` in its place, in the
/// same position of its preference list, and nothing else changes.
pub fn owners_after_replace(ring: &Ring, old: usize, new: usize) -> Result<Vec<u16>, RingError> {
    let old = active(ring, old)?;
    let new = inactive(ring, new)?;
    let swap = |owner: u16| if owner == old { new } else { owner };
    Ok(ring.owners().iter().map(|&owner| swap(owner)).collect())
}

/// `member` as a slot owner, if it is in the roster and owns a slot.
fn active(ring: &Ring, member: usize) -> Result<u16, RingError> {
    let node = in_roster(ring, member)?;
    match ring.is_active(member) {
        true => Ok(node),
        false => Err(RingError::NotActive {
            id: ring.members()[member].clone(),
        }),
    }
}

/// `member` as a slot owner, if it is in the roster and owns no slot.
fn inactive(ring: &Ring, member: usize) -> Result<u16, RingError> {
    let node = in_roster(ring, member)?;
    match ring.is_active(member) {
        true => Err(RingError::AlreadyActive {
            id: ring.members()[member].clone(),
        }),
        false => Ok(node),
    }
}

/// `member` as a slot owner, if the roster has it and a `u16` can name it.
fn in_roster(ring: &Ring, member: usize) -> Result<u16, RingError> {
    let roster = ring.members().len();
    match u16::try_from(member) {
        Ok(node) if member < roster => Ok(node),
        _ => Err(RingError::NotInRoster { member, roster }),
    }
}
