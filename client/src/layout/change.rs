//! Membership changes: the layout that follows an add, a remove or a replace, what it
//! would move, and why a change is refused.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Layout, LayoutHistory, MAX_VERSION};
use crate::ring::{owners_after_join, owners_after_leave, owners_after_replace, Ring, RingError};
use crate::wire::Member;

/// One membership change, as `quorumkv cluster add|remove|replace` asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A new node joins and takes its share of the partitions.
    Add {
        /// Its node id (the name in its certificate).
        id: String,
        /// Where it listens.
        addr: SocketAddr,
    },
    /// A node leaves; its partitions go to the others.
    Remove {
        /// The node leaving.
        id: String,
        /// Its data is lost (the node is dead): the others do not wait to pull from it.
        gone: bool,
    },
    /// A new node takes exactly the partitions of an old one, whose data is presumed
    /// lost: the new node pulls them from the other replicas.
    Replace {
        /// The node replaced.
        old: String,
        /// The node taking its place.
        new: String,
        /// Where the new node listens.
        addr: SocketAddr,
    },
    /// The move under way stops waiting for a node that died in it: the node's data is
    /// presumed lost (nobody pulls from it) and its progress is taken as done. Replace or
    /// remove it once the move is over.
    Skip {
        /// The dead node.
        id: String,
    },
}

/// Why a layout change or a received history was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The slot assignment is not a valid ring.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// `cluster skip` with no move under way.
    #[error("no move is under way: nothing waits for {0:?}")]
    NothingToSkip(String),
    /// The previous change is still moving data.
    #[error("a move from layout {from} to {to} is under way: wait until `quorumkv cluster show` says it is done")]
    MoveUnderWay {
        /// The layout being left.
        from: u64,
        /// The layout being moved to.
        to: u64,
    },
    /// The node is a member already.
    #[error("{0:?} is already a member")]
    AlreadyMember(String),
    /// The id belonged to a node removed earlier; its old data may still be on disk.
    #[error("{0:?} was a member and was removed: give the new node a new id")]
    WasRemoved(String),
    /// No member has that id.
    #[error("{0:?} is not a member")]
    NotAMember(String),
    /// Another member listens there.
    #[error("{addr} is the address of member {id:?}")]
    AddressInUse {
        /// The address asked for.
        addr: SocketAddr,
        /// The member using it.
        id: String,
    },
    /// The change would leave fewer nodes than copies of each partition.
    #[error("removing it would leave {left} nodes, fewer than replication_factor = {replication_factor}")]
    BelowReplication {
        /// Nodes left after the change.
        left: usize,
        /// Copies each partition needs.
        replication_factor: usize,
    },
    /// A history from a cluster of another shape.
    #[error("a layout for {theirs:?} (partitions, replication factor), this cluster has {ours:?}")]
    DifferentCluster {
        /// This node's partitions and replication factor.
        ours: (u32, usize),
        /// The other's.
        theirs: (u32, usize),
    },
    /// A history that breaks its own rules.
    #[error("invalid layout history: {0}")]
    Invalid(String),
}

/// What one node gains and loses between two layouts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMoves {
    /// The node.
    pub id: String,
    /// Partitions it replicates in the new layout but not in the old.
    pub gains: Vec<u32>,
    /// Partitions it replicates in the old layout but not in the new.
    pub loses: Vec<u32>,
    /// Partitions it replicates in both.
    pub keeps: usize,
}

impl LayoutHistory {
    /// The history with the layout `change` makes appended (the move from the current
    /// layout to it then starts). Refused while a move is under way, for a node that
    /// is (or is not) a member as the change needs, and for a removal that would leave
    /// fewer nodes than `replication_factor`.
    pub fn change(&self, change: &Change) -> Result<LayoutHistory, LayoutError> {
        if let Change::Skip { id } = change {
            return self.skip(id);
        }
        if self.moving() {
            return Err(LayoutError::MoveUnderWay {
                from: self.layouts[0].version,
                to: self.newest().version,
            });
        }
        let current = self.newest();
        if current.version >= MAX_VERSION {
            return Err(LayoutError::Invalid(format!("no version after {MAX_VERSION}")));
        }
        let ring = self.ring_of(current)?;
        let mut roster = self.roster.clone();
        let (owners, gone) = match change {
            Change::Skip { id } => return self.skip(id),
            Change::Add { id, addr } => {
                let joiner = self.newcomer(&mut roster, &ring, id, *addr)?;
                let widened = Ring::from_owners(&ids(&roster), current.owners.clone(), self.replication_factor)?;
                (owners_after_join(&widened, joiner)?, Vec::new())
            }
            Change::Remove { id, gone } => {
                let leaver = self.active_member(&ring, id)?;
                let left = ring.active().len() - 1;
                if left < self.replication_factor || left == 0 {
                    return Err(LayoutError::BelowReplication {
                        left,
                        replication_factor: self.replication_factor,
                    });
                }
                let gone = if *gone { vec![id.clone()] } else { Vec::new() };
                (owners_after_leave(&ring, leaver)?, gone)
            }
            Change::Replace { old, new, addr } => {
                let leaver = self.active_member(&ring, old)?;
                let joiner = self.newcomer(&mut roster, &ring, new, *addr)?;
                let widened = Ring::from_owners(&ids(&roster), current.owners.clone(), self.replication_factor)?;
                (owners_after_replace(&widened, leaver, joiner)?, vec![old.clone()])
            }
        };
        let mut next = LayoutHistory { roster, ..self.clone() };
        next.layouts.push(Layout {
            version: current.version + 1,
            owners,
            gone,
        });
        next.validate()?;
        Ok(next)
    }

    /// The history with `id` marked gone in the newest layout and its progress done: the
    /// move under way stops waiting for it.
    fn skip(&self, id: &str) -> Result<LayoutHistory, LayoutError> {
        if !self.moving() {
            return Err(LayoutError::NothingToSkip(id.into()));
        }
        let index = self.index_of(id).ok_or_else(|| LayoutError::NotAMember(id.into()))?;
        let in_use = self.layouts.iter().any(|l| l.owners.contains(&(index as u16)));
        if !in_use {
            return Err(LayoutError::NotAMember(id.into()));
        }
        let mut next = self.clone();
        let version = next.newest().version;
        if let Some(newest) = next.layouts.last_mut() {
            if !newest.gone.iter().any(|g| g == id) {
                newest.gone.push(id.into());
                newest.gone.sort();
            }
        }
        next.advance(id, super::Progress::done(version));
        Ok(next)
    }

    /// Appends `id` at `addr` to `roster` and returns its index, if it may join.
    fn newcomer(
        &self,
        roster: &mut Vec<Member>,
        ring: &Ring,
        id: &str,
        addr: SocketAddr,
    ) -> Result<usize, LayoutError> {
        if id.is_empty() {
            return Err(LayoutError::Invalid("an empty node id".into()));
        }
        if let Some(index) = self.index_of(id) {
            return Err(match ring.is_active(index) {
                true => LayoutError::AlreadyMember(id.into()),
                false => LayoutError::WasRemoved(id.into()),
            });
        }
        let active = ring.active();
        if let Some(user) = active.iter().map(|&i| &self.roster[i]).find(|m| m.addr == addr) {
            return Err(LayoutError::AddressInUse {
                addr,
                id: user.id.clone(),
            });
        }
        roster.push(Member { id: id.into(), addr });
        Ok(roster.len() - 1)
    }

    /// Roster index of `id` if it owns slots in `ring`.
    fn active_member(&self, ring: &Ring, id: &str) -> Result<usize, LayoutError> {
        self.index_of(id)
            .filter(|&i| ring.is_active(i))
            .ok_or_else(|| LayoutError::NotAMember(id.into()))
    }

    /// What each node gains and loses from the oldest layout in use to the newest
    /// (nothing when no move is under way).
    pub fn moves(&self) -> Result<Vec<NodeMoves>, LayoutError> {
        let (old, new) = (self.ring_of(&self.layouts[0])?, self.ring_of(self.newest())?);
        Ok(moves_between(&old, &new))
    }
}

/// What each roster member gains and loses from `old` to `new` (same roster, or `new`'s
/// a longer one), members with neither left out.
pub fn moves_between(old: &Ring, new: &Ring) -> Vec<NodeMoves> {
    let mut moves: Vec<NodeMoves> = new
        .members()
        .iter()
        .map(|id| NodeMoves {
            id: id.clone(),
            gains: Vec::new(),
            loses: Vec::new(),
            keeps: 0,
        })
        .collect();
    for partition in 0..new.partitions() {
        let (before, after) = (old.replicas(partition), new.replicas(partition));
        for (member, moved) in moves.iter_mut().enumerate() {
            match (before.contains(&member), after.contains(&member)) {
                (false, true) => moved.gains.push(partition),
                (true, false) => moved.loses.push(partition),
                (true, true) => moved.keeps += 1,
                (false, false) => {}
            }
        }
    }
    moves.retain(|m| m.keeps + m.gains.len() + m.loses.len() > 0);
    moves
}

fn ids(roster: &[Member]) -> Vec<String> {
    roster.iter().map(|m| m.id.clone()).collect()
}
