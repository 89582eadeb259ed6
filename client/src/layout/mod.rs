//! Layouts: which nodes hold which partitions, with a version, and the history a cluster
//! keeps while it moves from one layout to the next.
//!
//! A [`Layout`] is one slot assignment (the owner of each ring slot, as indices into the
//! cluster's roster: every node ever named by a layout, in the order it was first named,
//! so an index never changes meaning). cluster.toml only seeds version 1; every later
//! version is made by a membership change ([`LayoutHistory::change`]) and spread between
//! nodes, which store it durably.
//!
//! While a move is under way the history holds two layouts, the old and the new (one
//! change at a time: a change is refused until the previous one has finished). The model
//! is Garage's layout history: every node publishes three counters ([`Progress`]), and a
//! counter's minimum over the newest layout's members decides what the cluster does:
//!
//! - `ack`: the node uses the newest layout (it refuses requests routed without it, and
//!   every write it accepted before is in its store). Once every member acked, no write
//!   can reach only the old owners any more, so a sync that starts then misses nothing.
//! - `sync`: the node has pulled every partition it gained from every old owner of that
//!   partition (one complete anti-entropy pass each, started after every member acked).
//!   Once every member synced, reads go to the new layout ([`LayoutHistory::read_version`]).
//! - `sync_ack`: the node has seen that everyone synced, so it refuses reads routed to the
//!   old owners. Once every member has, the old layout retires: writes go to the new
//!   owners only, and a node that lost a partition hands it off and drops it.
//!
//! Until then writes go to a write quorum in each layout in use. Counters merge by
//! maximum, layouts by version, so nodes that exchange histories in any order agree
//! ([`LayoutHistory::merge`]). A request carries the routing [`epoch`](LayoutHistory::epoch)
//! it was sent with; a node refuses an older one and sends its history back, so a client
//! catches up in one retry.

mod change;
mod status;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ring::{Ring, RingError};
use crate::wire::Member;

pub use change::{moves_between, Change, LayoutError, NodeMoves};
pub use status::{MoveStatus, PartitionKeys, PullLeft};

/// Bits per field of the routing epoch (newest, read and oldest version).
const EPOCH_FIELD_BITS: u32 = 21;
/// Largest layout version an epoch can tell apart.
pub const MAX_VERSION: u64 = (1 << EPOCH_FIELD_BITS) - 1;

/// One slot assignment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// 1 for the layout cluster.toml seeded, one more for each change.
    pub version: u64,
    /// Owner of each ring slot, as an index into the roster.
    pub owners: Vec<u16>,
    /// Nodes of the previous layout whose data is gone (a replaced node, a node removed
    /// as dead): the new owners do not wait to sync from them.
    pub gone: Vec<String>,
}

/// What one node has done for the newest layouts (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Newest layout version the node uses for everything it accepts.
    pub ack: u64,
    /// Newest layout version whose gained partitions the node has pulled in full.
    pub sync: u64,
    /// Newest layout version the node knows everyone synced (it reads only with it).
    pub sync_ack: u64,
}

impl Progress {
    /// Each counter at its largest of the two.
    fn max(self, other: Progress) -> Progress {
        Progress {
            ack: self.ack.max(other.ack),
            sync: self.sync.max(other.sync),
            sync_ack: self.sync_ack.max(other.sync_ack),
        }
    }

    /// A node with nothing left to do for `version`.
    pub fn done(version: u64) -> Progress {
        Progress {
            ack: version,
            sync: version,
            sync_ack: version,
        }
    }
}

/// The layouts a cluster uses now (one, or two during a move), the roster they index, and
/// every node's progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayoutHistory {
    /// Partitions of the hash space (fixed for the life of the cluster).
    pub partitions: u32,
    /// Replicas per partition.
    pub replication_factor: usize,
    /// Every node any layout named, in the order first named: `owners` index this.
    pub roster: Vec<Member>,
    /// The layouts in use, oldest first; never empty.
    pub layouts: Vec<Layout>,
    /// Each node's counters, by node id.
    pub progress: BTreeMap<String, Progress>,
}

impl LayoutHistory {
    /// Version 1, from cluster.toml's member list, with nothing to move.
    pub fn seed(members: Vec<Member>, partitions: u32, replication_factor: usize) -> Result<LayoutHistory, RingError> {
        let ids: Vec<String> = members.iter().map(|m| m.id.clone()).collect();
        let ring = Ring::new(&ids, partitions, replication_factor)?;
        Ok(LayoutHistory {
            partitions,
            replication_factor,
            progress: ids.iter().map(|id| (id.clone(), Progress::done(1))).collect(),
            roster: members,
            layouts: vec![Layout {
                version: 1,
                owners: ring.owners().to_vec(),
                gone: Vec::new(),
            }],
        })
    }

    /// Node ids of the roster, in roster order.
    pub fn roster_ids(&self) -> Vec<String> {
        self.roster.iter().map(|m| m.id.clone()).collect()
    }

    /// Roster index of `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.roster.iter().position(|m| m.id == id)
    }

    /// The newest layout.
    pub fn newest(&self) -> &Layout {
        // `layouts` is never empty: every constructor and merge keeps one.
        &self.layouts[self.layouts.len() - 1]
    }

    /// Whether a move is under way (two layouts in use).
    pub fn moving(&self) -> bool {
        self.layouts.len() > 1
    }

    /// The ring of `layout`.
    pub fn ring_of(&self, layout: &Layout) -> Result<Ring, RingError> {
        Ring::from_owners(&self.roster_ids(), layout.owners.clone(), self.replication_factor)
    }

    /// Checks the history ([`validate`](Self::validate)) and builds its rings: the read
    /// layout's, and every layout's in use, oldest first.
    pub fn rings(&self) -> Result<(Ring, Vec<Ring>), LayoutError> {
        self.validate()?;
        let read = self.ring_of(self.read_layout())?;
        let all = self
            .layouts
            .iter()
            .map(|layout| self.ring_of(layout))
            .collect::<Result<Vec<Ring>, _>>()?;
        Ok((read, all))
    }

    /// Roster indices owning a slot in the newest layout: whose progress counts.
    pub fn members(&self) -> Vec<usize> {
        owners_of(std::slice::from_ref(self.newest()))
    }

    /// Roster indices owning a slot in some layout in use, ascending: every node a move
    /// involves.
    pub fn in_use(&self) -> Vec<usize> {
        owners_of(&self.layouts)
    }

    /// Smallest value of a counter over the newest layout's members (0 for a member that
    /// published none yet).
    fn min_progress(&self, counter: fn(&Progress) -> u64) -> u64 {
        self.members()
            .into_iter()
            .filter_map(|i| self.roster.get(i))
            .map(|m| self.progress.get(&m.id).map_or(0, counter))
            .min()
            .unwrap_or(0)
    }

    /// Whether every member uses the newest layout (syncs may start).
    pub fn all_acked(&self) -> bool {
        self.min_progress(|p| p.ack) >= self.newest().version
    }

    /// Whether every member has pulled what it gained in the newest layout.
    pub fn all_synced(&self) -> bool {
        self.min_progress(|p| p.sync) >= self.newest().version
    }

    /// Version of the layout reads use: the newest every member has synced, else the
    /// oldest in use.
    pub fn read_version(&self) -> u64 {
        let synced = self.min_progress(|p| p.sync);
        let oldest = self.layouts[0].version;
        self.layouts
            .iter()
            .rev()
            .map(|l| l.version)
            .find(|&v| v <= synced)
            .unwrap_or(oldest)
    }

    /// The layout reads use.
    pub fn read_layout(&self) -> &Layout {
        let version = self.read_version();
        self.layouts
            .iter()
            .find(|l| l.version == version)
            .unwrap_or(&self.layouts[0])
    }

    /// The routing epoch: newest, read and oldest layout version in use, packed so that
    /// a later routing state is a larger number. Requests carry it; a node refuses one
    /// older than its own.
    pub fn epoch(&self) -> u64 {
        let field = |v: u64| v.min(MAX_VERSION);
        field(self.newest().version) << (2 * EPOCH_FIELD_BITS)
            | field(self.read_version()) << EPOCH_FIELD_BITS
            | field(self.layouts[0].version)
    }

    /// A fingerprint of everything in the history (progress included), to tell whether
    /// two nodes hold the same one without sending it.
    pub fn digest(&self) -> u64 {
        fingerprint(self)
    }

    /// Sets `id`'s counters to at least `progress`; true if that changed anything.
    pub fn advance(&mut self, id: &str, progress: Progress) -> bool {
        let entry = self.progress.entry(id.to_string()).or_default();
        let merged = entry.max(progress);
        let changed = merged != *entry;
        *entry = merged;
        if changed {
            self.prune();
        }
        changed
    }

    /// Takes in what `other` knows: the newer layouts (ties between two different layouts
    /// of one version, which only two changes made at once can produce, go to the larger
    /// digest, the same choice on every node), the larger of each counter, then retires
    /// what every member has left behind. True if this history changed.
    pub fn merge(&mut self, other: &LayoutHistory) -> Result<bool, LayoutError> {
        if (other.partitions, other.replication_factor) != (self.partitions, self.replication_factor) {
            return Err(LayoutError::DifferentCluster {
                ours: (self.partitions, self.replication_factor),
                theirs: (other.partitions, other.replication_factor),
            });
        }
        let before = self.digest();
        let (mine, theirs) = (self.newest(), other.newest());
        let take_theirs = match theirs.version.cmp(&mine.version) {
            std::cmp::Ordering::Greater => true,
            std::cmp::Ordering::Less => false,
            // The same layout, but one side marked more nodes gone (`cluster skip`):
            // both marks hold.
            std::cmp::Ordering::Equal if other.roster == self.roster && theirs.owners == mine.owners => {
                let mut gone = mine.gone.clone();
                gone.extend(theirs.gone.iter().filter(|g| !mine.gone.contains(g)).cloned());
                gone.sort();
                if let Some(newest) = self.layouts.last_mut() {
                    newest.gone = gone;
                }
                false
            }
            std::cmp::Ordering::Equal => other.layout_digest() > self.layout_digest(),
        };
        if take_theirs {
            // One change at a time: a newer layout is only made once every older one but
            // its predecessor retired, and the progress merged below retires those here.
            self.layouts = other.layouts.clone();
            self.roster = other.roster.clone();
        }
        for (id, progress) in &other.progress {
            let entry = self.progress.entry(id.clone()).or_default();
            *entry = entry.max(*progress);
        }
        self.prune();
        Ok(self.digest() != before)
    }

    /// Fingerprint of the roster and the newest layout alone.
    fn layout_digest(&self) -> u64 {
        fingerprint(&(&self.roster, self.newest()))
    }

    /// Drops the layouts every member has left behind (older than the smallest `sync_ack`).
    fn prune(&mut self) {
        let retired_below = self.min_progress(|p| p.sync_ack).min(self.newest().version);
        self.layouts.retain(|l| l.version >= retired_below);
    }

    /// Checks what a history received from elsewhere must satisfy before it is used:
    /// layouts in version order, each a valid ring over the roster.
    pub fn validate(&self) -> Result<(), LayoutError> {
        if self.layouts.is_empty() {
            return Err(LayoutError::Invalid("no layout".into()));
        }
        if self.layouts.windows(2).any(|w| w[0].version >= w[1].version) {
            return Err(LayoutError::Invalid("layouts out of version order".into()));
        }
        if self.newest().version > MAX_VERSION {
            return Err(LayoutError::Invalid(format!("version above {MAX_VERSION}")));
        }
        for layout in &self.layouts {
            self.ring_of(layout)?;
        }
        Ok(())
    }

    /// `(partition, source)` pairs node `me` (a roster index) must pull in full before it
    /// may say it synced the newest layout: each partition it replicates in the newest
    /// layout but not in the one before, from each replica of the one before except
    /// itself and the nodes whose data is gone. Empty when no move is under way.
    pub fn pulls_for(&self, me: usize) -> Result<Vec<(u32, usize)>, LayoutError> {
        let [.., previous, newest] = &self.layouts[..] else {
            return Ok(Vec::new());
        };
        let (old, new) = (self.ring_of(previous)?, self.ring_of(newest)?);
        let gone: Vec<usize> = newest.gone.iter().filter_map(|id| self.index_of(id)).collect();
        let mut pulls = Vec::new();
        for partition in 0..self.partitions {
            if !new.replicas(partition).contains(&me) || old.replicas(partition).contains(&me) {
                continue;
            }
            let sources = old.replicas(partition).iter().filter(|s| !gone.contains(s));
            pulls.extend(sources.map(|&s| (partition, s)));
        }
        Ok(pulls)
    }
}

/// Roster indices owning a slot in any of `layouts`, ascending.
fn owners_of(layouts: &[Layout]) -> Vec<usize> {
    let mut owners: Vec<usize> = layouts
        .iter()
        .flat_map(|l| l.owners.iter().map(|&o| usize::from(o)))
        .collect();
    owners.sort_unstable();
    owners.dedup();
    owners
}

/// The first 8 bytes of blake3 over `value`'s encoding (histories are plain data, so
/// encoding them cannot fail).
fn fingerprint(value: &impl Serialize) -> u64 {
    let bytes = rmp_serde::to_vec(value).unwrap_or_default();
    let mut first = [0u8; 8];
    first.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..8]);
    u64::from_le_bytes(first)
}

#[cfg(test)]
mod tests;
