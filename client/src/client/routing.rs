//! The layout a client routes with, and catching up with a newer one.
//!
//! Reads go to the replicas of the read layout; writes must reach a write quorum in each
//! layout in use (two while the cluster moves from one layout to the next, see
//! [`crate::layout`]). Every request carries the routing epoch; a node with a newer
//! layout refuses it and sends its history, which the client merges in before it retries
//! once, so a layout change costs a client one round trip, never an error.

use std::sync::{Arc, RwLock};

use crate::layout::{LayoutError, LayoutHistory};
use crate::ring::Ring;

/// Everything a request needs to know about placement, built once per layout change.
pub struct Routing {
    /// The layouts in use and every node's progress.
    pub history: LayoutHistory,
    /// Ring of the layout reads use.
    pub read: Ring,
    /// Rings of the layouts writes must reach a quorum in, oldest first.
    pub writes: Vec<Ring>,
    /// What requests carry: [`LayoutHistory::epoch`].
    pub epoch: u64,
}

impl Routing {
    /// The routing of a checked `history`.
    pub fn new(history: LayoutHistory) -> Result<Routing, LayoutError> {
        let (read, writes) = history.rings()?;
        Ok(Routing {
            epoch: history.epoch(),
            history,
            read,
            writes,
        })
    }

    /// Node id of roster index `node`.
    pub fn id(&self, node: usize) -> String {
        self.history
            .roster
            .get(node)
            .map_or_else(|| format!("#{node}"), |m| m.id.clone())
    }
}

/// The current routing, swapped whole when a newer layout arrives.
pub struct RoutingCell {
    current: RwLock<Arc<Routing>>,
}

impl RoutingCell {
    /// A cell holding `routing`.
    pub fn new(routing: Routing) -> RoutingCell {
        RoutingCell {
            current: RwLock::new(Arc::new(routing)),
        }
    }

    /// The routing now.
    pub fn get(&self) -> Arc<Routing> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Merges `history` into the current one; returns the new routing if it changed.
    /// A history that does not merge (another cluster's, a broken one) is ignored and
    /// logged: routing stays as it was.
    pub fn adopt(&self, history: &LayoutHistory) -> Option<Arc<Routing>> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut merged = current.history.clone();
        let changed = match merged.merge(history) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("ignoring a layout a node sent: {e}");
                return None;
            }
        };
        if !changed || merged.epoch() == current.epoch && merged.roster == current.history.roster {
            return None;
        }
        match Routing::new(merged) {
            Ok(routing) => {
                *current = Arc::new(routing);
                Some(current.clone())
            }
            Err(e) => {
                tracing::warn!("ignoring a layout a node sent: {e}");
                None
            }
        }
    }
}
