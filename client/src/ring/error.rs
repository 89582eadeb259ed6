//! Why a ring or a next slot assignment could not be built, and the checks that say
//! so. Inputs arrive in layouts received over the network, so every check returns a
//! [`RingError`] instead of panicking; [`super::Ring`] and [`super::change`] call them.

use std::collections::HashSet;

use super::MAX_PARTITIONS;

/// Error building a ring or the next slot assignment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// The member list was empty.
    #[error("the member list is empty: a ring needs at least one node")]
    NoMembers,
    /// `partitions` is zero, not a power of two, or above [`MAX_PARTITIONS`].
    #[error("partitions = {partitions} must be a power of two from 1 to {MAX_PARTITIONS}")]
    PartitionsNotPowerOfTwo {
        /// The rejected partition count (saturated at `u32::MAX`).
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
    /// A slot names an owner that is not in the roster.
    #[error("slot {slot} is owned by roster index {owner}, but the roster has {roster} nodes")]
    OwnerOutOfRange {
        /// The slot with the bad owner.
        slot: usize,
        /// The owner index it names.
        owner: u16,
        /// The roster length.
        roster: usize,
    },
    /// A member index given to a change is not in the roster (or cannot own a slot:
    /// slot owners are `u16`).
    #[error("member {member} is not in the roster of {roster} nodes")]
    NotInRoster {
        /// The member index given.
        member: usize,
        /// The roster length.
        roster: usize,
    },
    /// A joining or replacing node already owns slots.
    #[error("member {id:?} already owns slots: only a node owning none can join or replace")]
    AlreadyActive {
        /// Its node id.
        id: String,
    },
    /// A leaving or replaced node owns no slot.
    #[error("member {id:?} owns no slot: only an active node can leave or be replaced")]
    NotActive {
        /// Its node id.
        id: String,
    },
    /// The only active node cannot leave: nobody would hold its partitions.
    #[error("member {id:?} is the only active node: nobody could take its partitions")]
    LastActiveMember {
        /// Its node id.
        id: String,
    },
}

/// Checks a partition count and replication factor, naming the first problem.
pub(super) fn validate_shape(partitions: usize, rf: usize) -> Result<(), RingError> {
    if !partitions.is_power_of_two() || partitions > MAX_PARTITIONS as usize {
        let partitions = u32::try_from(partitions).unwrap_or(u32::MAX);
        return Err(RingError::PartitionsNotPowerOfTwo { partitions });
    }
    if rf == 0 {
        return Err(RingError::ZeroReplicationFactor);
    }
    Ok(())
}

/// Checks that the roster is non-empty and its ids are distinct.
pub(super) fn validate_roster(roster: &[String]) -> Result<(), RingError> {
    if roster.is_empty() {
        return Err(RingError::NoMembers);
    }
    let mut seen = HashSet::with_capacity(roster.len());
    match roster.iter().find(|id| !seen.insert(id.as_str())) {
        Some(id) => Err(RingError::DuplicateMember { id: id.clone() }),
        None => Ok(()),
    }
}

/// Checks that every slot owner is a roster index.
pub(super) fn validate_owners(roster: &[String], owners: &[u16]) -> Result<(), RingError> {
    let roster = roster.len();
    match owners.iter().position(|&o| usize::from(o) >= roster) {
        Some(slot) => Err(RingError::OwnerOutOfRange {
            slot,
            owner: owners[slot],
            roster,
        }),
        None => Ok(()),
    }
}

/// Checks the inputs of [`super::Ring::new`], naming the first problem found.
pub(super) fn validate_new(members: &[String], partitions: u32, rf: usize) -> Result<(), RingError> {
    if members.is_empty() {
        return Err(RingError::NoMembers);
    }
    validate_shape(partitions as usize, rf)?;
    if members.len() > partitions as usize {
        let members = members.len();
        return Err(RingError::TooManyMembers { members, partitions });
    }
    validate_roster(members)
}
