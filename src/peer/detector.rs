//! Failure detection: who answers pings.
//!
//! Every node pings every other member each `ping_interval`; a peer that misses
//! `down_after_missed_pings` in a row is marked down, and up again at its next answer.
//! Anti-entropy and hint delivery skip peers that are down. The state machine is pure
//! ([`FailureDetector::record`]); [`ping_loop`] feeds it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorumkv_client::transport::Destination;
use quorumkv_client::wire::PeerStatus;
use tokio_util::sync::CancellationToken;

use super::{PeerPool, PeerRequest, PeerResponse};
use crate::membership::Membership;

/// Shortest wait for a pong: a first ping also dials, which must not be cut short.
const MIN_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Health of every node of the roster, as seen by this node (its own entry stays up).
pub struct FailureDetector {
    state: Mutex<Vec<Health>>,
    down_after: u32,
}

#[derive(Debug, Clone)]
struct Health {
    id: String,
    up: bool,
    missed: u32,
}

impl FailureDetector {
    /// Every member starts up: the first pings correct that within a few intervals.
    pub fn new(ids: Vec<String>, down_after: u32) -> FailureDetector {
        let detector = FailureDetector {
            state: Mutex::new(Vec::new()),
            down_after: down_after.max(1),
        };
        detector.grow(&ids);
        detector
    }

    /// Tracks the nodes of `ids` beyond those tracked already (a layout change added
    /// them; they start up, like every node at start).
    pub fn grow(&self, ids: &[String]) {
        let mut state = self.lock();
        let known = state.len();
        state.extend(ids.iter().skip(known).map(|id| Health {
            id: id.clone(),
            up: true,
            missed: 0,
        }));
    }

    /// Records the outcome of one ping of `peer`; returns true if it just came back up.
    pub fn record(&self, peer: usize, answered: bool) -> bool {
        let mut state = self.lock();
        let down_after = self.down_after;
        let Some(health) = state.get_mut(peer) else {
            return false;
        };
        if answered {
            let came_back = !health.up;
            health.up = true;
            health.missed = 0;
            if came_back {
                tracing::info!("peer {} is up again", health.id);
            }
            return came_back;
        }
        health.missed = health.missed.saturating_add(1);
        if health.up && health.missed >= down_after {
            health.up = false;
            tracing::warn!("peer {} missed {} pings: marked down", health.id, health.missed);
        }
        false
    }

    /// Whether `peer` currently answers.
    pub fn is_up(&self, peer: usize) -> bool {
        self.lock().get(peer).is_some_and(|h| h.up)
    }

    /// Status of every node except `me`.
    pub fn snapshot(&self, me: Option<usize>) -> Vec<PeerStatus> {
        let state = self.lock();
        state
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != me)
            .map(|(_, h)| PeerStatus {
                id: h.id.clone(),
                up: h.up,
                missed_pings: h.missed,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pings every other node of the layouts in use each `interval` through the first of `pools`
/// until `shutdown`, and gossips the layout history on the way: a ping carries this
/// node's history unless the peer last answered with the same digest, and a pong carries
/// the peer's when it differs; each side merges what it receives. Nodes a layout change
/// adds are pinged (and dialled through every pool) from the next round. While a peer is
/// down, every missed ping drops its connections in all `pools`, so the next ping dials
/// afresh and a peer restarted on the same address is seen up at its first answer
/// (instead of after the dead connection's idle timeout).
pub async fn ping_loop(
    detector: Arc<FailureDetector>,
    pools: Vec<Arc<PeerPool>>,
    membership: Arc<Membership>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The digest each peer last answered with.
    let mut heard: Vec<u64> = Vec::new();
    loop {
        // Shutdown first: a round that waited out unanswered pings finds the next tick
        // ready at once, every time.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(pool) = pools.first() else { return };
        let layout = membership.get();
        let roster = &layout.history.roster;
        detector.grow(&layout.ids());
        for pool in &pools {
            pool.add_destinations(roster.iter().map(Destination::of));
        }
        heard.resize(roster.len(), 0);
        // A node no layout names yet pings nobody (the members would refuse it, and log
        // that at every ping): it learns that it joined from their pings.
        if layout.me.is_none() {
            continue;
        }
        let peers = layout.active().into_iter().filter(|&p| Some(p) != layout.me);
        let pings = peers.map(|peer| {
            let pool = pool.clone();
            let request = PeerRequest::Ping {
                digest: layout.digest,
                layout: (heard[peer] != layout.digest).then(|| Box::new(layout.history.clone())),
            };
            async move {
                let answer = tokio::time::timeout(interval.max(MIN_PING_TIMEOUT), pool.call(peer, request)).await;
                (peer, answer)
            }
        });
        for (peer, answer) in futures_util::future::join_all(pings).await {
            let answered = match answer {
                Ok(Ok(PeerResponse::Pong { digest, layout })) => {
                    heard[peer] = digest;
                    if let Some(theirs) = layout {
                        if let Err(e) = membership.merge(&theirs).await {
                            tracing::warn!("ignoring the layout {} sent: {e}", membership.get().id(peer));
                        }
                    }
                    true
                }
                _ => false,
            };
            detector.record(peer, answered);
            if !detector.is_up(peer) {
                pools.iter().for_each(|pool| pool.forget(peer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FailureDetector;

    #[test]
    fn down_after_missed_pings_and_up_at_the_next_answer() {
        let d = FailureDetector::new(vec!["n1".into(), "n2".into()], 3);
        assert!(d.is_up(1));
        d.record(1, false);
        d.record(1, false);
        assert!(d.is_up(1), "two misses are not enough");
        d.record(1, false);
        assert!(!d.is_up(1));
        assert!(d.record(1, true), "coming back is reported");
        assert!(d.is_up(1));
        assert_eq!(d.snapshot(Some(0)).len(), 1);
    }
}
