//! Membership: this node's layout history, kept durably, spread to peers, and moved
//! forward (see [`quorumkv_client::layout`] for the model).
//!
//! [`Membership`] holds the history and what is derived from it ([`NodeLayout`]: the
//! rings in use, the routing epoch, this node's roster index), swapped whole whenever it
//! changes: a change asked for by an operator ([`Membership::change`]), a newer history
//! from a peer's ping ([`Membership::merge`]), or this node's own progress. Every change
//! is written to `layout` in the node's data directory before the node acts on it or
//! tells anyone, so a restarted node resumes a move where it was; cluster.toml only seeds
//! version 1 when that file does not exist.
//!
//! [`mover`] is the task that moves this node's part of a move forward, and [`handoff`]
//! hands off and drops the partitions a node no longer replicates.

pub mod handoff;
pub mod mover;
mod persist;
pub mod report;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use anyhow::Context;
use quorumkv_client::layout::{Change, LayoutError, LayoutHistory, Progress};
use quorumkv_client::ring::Ring;
use quorumkv_client::wire::Member;

use crate::config::ClusterConfig;
use crate::node::Host;

/// The history and what every request and service derives from it.
pub struct NodeLayout {
    /// The layouts in use and every node's progress.
    pub history: LayoutHistory,
    /// What requests routed with this history carry.
    pub epoch: u64,
    /// Fingerprint of `history`, to tell a peer's apart without sending it.
    pub digest: u64,
    /// Ring of the layout reads use.
    pub read: Ring,
    /// Rings of every layout in use, oldest first.
    pub rings: Vec<Ring>,
    /// This node's roster index, if the roster names it.
    pub me: Option<usize>,
}

impl NodeLayout {
    fn new(history: LayoutHistory, id: &str) -> Result<NodeLayout, LayoutError> {
        let (read, rings) = history.rings()?;
        Ok(NodeLayout {
            epoch: history.epoch(),
            digest: history.digest(),
            me: history.index_of(id),
            history,
            read,
            rings,
        })
    }

    /// The newest layout's ring.
    pub fn newest(&self) -> &Ring {
        // `rings` has one ring per layout, and a history has at least one layout.
        &self.rings[self.rings.len() - 1]
    }

    /// Node ids of the roster: every index a peer, hint or status uses.
    pub fn ids(&self) -> Vec<String> {
        self.history.roster_ids()
    }

    /// Id of roster index `node`.
    pub fn id(&self, node: usize) -> &str {
        self.history.roster.get(node).map_or("?", |m| m.id.as_str())
    }

    /// Roster index of `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.history.index_of(id)
    }

    /// Partition of `key` (the partition count never changes).
    pub fn partition_of(&self, key: &[u8]) -> u32 {
        self.read.partition_of(key)
    }

    /// Replicas of `partition` in any layout in use, newest layout's first.
    pub fn replicas(&self, partition: u32) -> Vec<usize> {
        let mut all = Vec::new();
        for ring in self.rings.iter().rev() {
            for &r in ring.replicas(partition) {
                if !all.contains(&r) {
                    all.push(r);
                }
            }
        }
        all
    }

    /// Roster indices replicating something in some layout in use, ascending.
    pub fn active(&self) -> Vec<usize> {
        self.history.in_use()
    }

    /// Whether this node replicates something in some layout in use.
    pub fn is_member(&self) -> bool {
        self.me.is_some_and(|me| self.rings.iter().any(|r| r.is_active(me)))
    }

    /// Partitions this node replicates in some layout in use.
    pub fn my_partitions(&self) -> Vec<u32> {
        let Some(me) = self.me else { return Vec::new() };
        (0..self.read.partitions())
            .filter(|&p| self.rings.iter().any(|r| r.replicas(p).contains(&me)))
            .collect()
    }

    /// Partitions both this node and `peer` replicate in some layout in use.
    pub fn shared_with(&self, peer: usize) -> Vec<u32> {
        let Some(me) = self.me else { return Vec::new() };
        (0..self.read.partitions())
            .filter(|&p| {
                let replicas = self.replicas(p);
                replicas.contains(&me) && replicas.contains(&peer)
            })
            .collect()
    }

    /// This node's published progress.
    pub fn my_progress(&self, id: &str) -> Progress {
        self.history.progress.get(id).copied().unwrap_or_default()
    }
}

/// Pulls this node still owes for the newest layout (see [`LayoutHistory::pulls_for`]).
#[derive(Default)]
struct Pulls {
    /// The layout version they are for (0: none computed).
    version: u64,
    /// Bumped whenever they are computed afresh: a sync begun before does not count.
    generation: u64,
    /// `(partition, source)` pairs not yet pulled in full.
    pending: BTreeSet<(u32, usize)>,
    /// How many pairs there were.
    total: usize,
}

/// This node's layout history.
pub struct Membership {
    /// This node's id.
    id: String,
    /// The history now.
    current: RwLock<Arc<NodeLayout>>,
    /// Its routing epoch, and whether it names this node as a replica of something: all
    /// that every request checks, without taking the lock.
    epoch: AtomicU64,
    /// See `epoch`.
    member: AtomicBool,
    /// Serialises changes, so that each is written before the next is made.
    writing: tokio::sync::Mutex<()>,
    /// Where the history is kept (none in a simulation: it lives as long as the node).
    file: Option<PathBuf>,
    /// Where writing the file runs.
    host: Host,
    /// Woken whenever the history changes.
    changed: tokio::sync::Notify,
    /// What this node still pulls for the newest layout.
    pulls: Mutex<Pulls>,
}

impl Membership {
    /// The history stored in `file`, or version 1 from `config` if there is none yet.
    /// `addr` is where this node listens, for a node cluster.toml does not list.
    pub fn open(config: &ClusterConfig, id: &str, file: Option<PathBuf>, host: Host) -> anyhow::Result<Membership> {
        let stored = match &file {
            Some(path) => persist::load(path)?,
            None => None,
        };
        let history = match stored {
            Some(history) => {
                let ours = (config.partitions, config.replication_factor);
                let theirs = (history.partitions, history.replication_factor);
                if ours != theirs {
                    anyhow::bail!(
                        "cluster.toml says partitions = {}, replication_factor = {}, but this node's stored layout has {} and {}: the shape of a cluster cannot change",
                        ours.0, ours.1, theirs.0, theirs.1
                    );
                }
                history
            }
            None => {
                // Version 1 is stored at once: cluster.toml seeds a cluster only once, and
                // a later edit of its [[nodes]] must not make this node's layout 1 differ
                // from its peers'.
                let seeded = seed(config)?;
                if let Some(path) = &file {
                    persist::store(path, &seeded).context("storing the first layout")?;
                }
                seeded
            }
        };
        let layout = NodeLayout::new(history, id).context("the stored layout history is invalid")?;
        Ok(Membership {
            id: id.to_string(),
            epoch: AtomicU64::new(layout.epoch),
            member: AtomicBool::new(layout.is_member()),
            current: RwLock::new(Arc::new(layout)),
            writing: tokio::sync::Mutex::new(()),
            file,
            host,
            changed: tokio::sync::Notify::new(),
            pulls: Mutex::new(Pulls::default()),
        })
    }

    /// The history now, with what is derived from it.
    pub fn get(&self) -> Arc<NodeLayout> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The routing epoch now, and whether the layouts in use make this node a replica of
    /// something (two atomic loads: what every request checks).
    pub fn epoch_now(&self) -> (u64, bool) {
        (self.epoch.load(Ordering::Acquire), self.member.load(Ordering::Acquire))
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Resolves at the next change of the history.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// Takes in a history a peer sent; true if ours changed (it is stored by then).
    pub async fn merge(&self, theirs: &LayoutHistory) -> Result<bool, LayoutError> {
        theirs.validate()?;
        self.update(|history| history.merge(theirs)).await
    }

    /// Makes `change` (an operator's `quorumkv cluster add|remove|replace`): appends the
    /// next layout, stores it, and returns the new history. Peers learn it at their next
    /// ping.
    pub async fn change(&self, change: &Change) -> Result<LayoutHistory, LayoutError> {
        let mut made = None;
        self.update(|history| {
            let next = history.change(change)?;
            made = Some(next.newest().version);
            *history = next;
            Ok(true)
        })
        .await?;
        let layout = self.get();
        if let Some(version) = made {
            tracing::info!("layout {version} made: {change:?}; the move starts once every member uses it");
        }
        Ok(layout.history.clone())
    }

    /// Publishes this node's progress (at least `progress`).
    pub async fn advance(&self, progress: Progress) -> Result<bool, LayoutError> {
        let id = self.id.clone();
        self.update(move |history| Ok(history.advance(&id, progress))).await
    }

    /// Applies `edit` to a copy of the history; if it changed, installs the copy and
    /// stores it (requests are checked against it from the moment it is installed).
    async fn update(
        &self,
        edit: impl FnOnce(&mut LayoutHistory) -> Result<bool, LayoutError>,
    ) -> Result<bool, LayoutError> {
        let _writing = self.writing.lock().await;
        let mut history = self.get().history.clone();
        if !edit(&mut history)? {
            return Ok(false);
        }
        let layout = Arc::new(NodeLayout::new(history, &self.id)?);
        let before = {
            let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
            self.member.store(layout.is_member(), Ordering::Release);
            self.epoch.store(layout.epoch, Ordering::Release);
            std::mem::replace(&mut *current, layout.clone())
        };
        if before.epoch != layout.epoch {
            tracing::info!(
                "layout epoch {:x} -> {:x}: layouts {:?} in use, reads from {}",
                before.epoch,
                layout.epoch,
                layout.history.layouts.iter().map(|l| l.version).collect::<Vec<_>>(),
                layout.history.read_version()
            );
        }
        if let Some(path) = self.file.clone() {
            let history = layout.history.clone();
            let stored = self.host.run_blocking(move || persist::store(&path, &history)).await;
            match stored {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("storing the layout history failed: {e:#}"),
                Err(e) => tracing::error!("storing the layout history failed: {e}"),
            }
        }
        self.changed.notify_waiters();
        Ok(true)
    }

    fn pulls(&self) -> MutexGuard<'_, Pulls> {
        self.pulls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the pulls owed for layout `version` afresh; returns how many.
    fn start_pulls(&self, version: u64, pending: Vec<(u32, usize)>) -> usize {
        let mut pulls = self.pulls();
        pulls.version = version;
        pulls.generation += 1;
        pulls.total = pending.len();
        pulls.pending = pending.into_iter().collect();
        pulls.total
    }

    /// `(version, left, total)` of the pulls owed, if any were computed.
    pub fn pulls_left(&self) -> Option<(u64, usize, usize)> {
        let pulls = self.pulls();
        (pulls.version > 0).then_some((pulls.version, pulls.pending.len(), pulls.total))
    }

    /// Pending pulls per partition: `(partition, sources left)`.
    pub fn pending_partitions(&self) -> Vec<(u32, Vec<usize>)> {
        let pulls = self.pulls();
        let mut out: Vec<(u32, Vec<usize>)> = Vec::new();
        for &(partition, source) in &pulls.pending {
            match out.last_mut() {
                Some((p, sources)) if *p == partition => sources.push(source),
                _ => out.push((partition, vec![source])),
            }
        }
        out
    }

    /// Stops waiting for pulls from `sources` (nodes a `cluster skip` marked gone);
    /// returns how many pulls are left.
    pub fn forget_sources(&self, sources: &[usize]) -> usize {
        let mut pulls = self.pulls();
        pulls.pending.retain(|(_, source)| !sources.contains(source));
        pulls.pending.len()
    }

    /// The generation a sync starting now belongs to.
    pub fn pull_generation(&self) -> u64 {
        self.pulls().generation
    }

    /// Whether a pull from `peer` is still owed (anti-entropy then syncs with it at the
    /// ping interval rather than the anti-entropy interval).
    pub fn awaits(&self, peer: usize) -> bool {
        self.pulls().pending.iter().any(|&(_, source)| source == peer)
    }

    /// A sync of `partitions` with `peer`, begun in `generation`, completed: everything
    /// the peer held in them when it began is here too.
    pub fn synced(&self, partitions: &[u32], peer: usize, generation: u64) {
        let mut pulls = self.pulls();
        if pulls.generation != generation || pulls.pending.is_empty() {
            return;
        }
        for &partition in partitions {
            pulls.pending.remove(&(partition, peer));
        }
        if pulls.pending.is_empty() {
            self.changed.notify_waiters();
        }
    }
}

/// The address node `id` listens on according to the history stored at `file`, if there
/// is one naming it (a node that joined the cluster restarts without `--addr`).
pub fn stored_address(file: &std::path::Path, id: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    let history = persist::load(file)?;
    Ok(history.and_then(|h| h.roster.into_iter().find(|m| m.id == id).map(|m| m.addr)))
}

/// Version 1 from cluster.toml's `[[nodes]]`.
fn seed(config: &ClusterConfig) -> anyhow::Result<LayoutHistory> {
    let members: Vec<Member> = config.cluster_info().members;
    LayoutHistory::seed(members, config.partitions, config.replication_factor)
        .context("cluster.toml's [[nodes]] do not make a ring")
}
