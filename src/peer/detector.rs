//! Failure detection: who answers pings.
//!
//! Every node pings every other member each `ping_interval`; a peer that misses
//! `down_after_missed_pings` in a row is marked down, and up again at its next answer.
//! Anti-entropy and hint delivery skip peers that are down. The state machine is pure
//! ([`FailureDetector::record`]); [`ping_loop`] feeds it.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quorumkv_client::wire::PeerStatus;
use tokio_util::sync::CancellationToken;

use super::{PeerPool, PeerRequest, PeerResponse};

/// Shortest wait for a pong: a first ping also dials, which must not be cut short.
const MIN_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// Health of every member, as seen by this node (its own entry stays up).
pub struct FailureDetector {
    ids: Vec<String>,
    state: Mutex<Vec<Health>>,
    down_after: u32,
}

#[derive(Debug, Clone, Copy)]
struct Health {
    up: bool,
    missed: u32,
}

impl FailureDetector {
    /// Every member starts up: the first pings correct that within a few intervals.
    pub fn new(ids: Vec<String>, down_after: u32) -> FailureDetector {
        let state = ids.iter().map(|_| Health { up: true, missed: 0 }).collect();
        FailureDetector {
            ids,
            state: Mutex::new(state),
            down_after: down_after.max(1),
        }
    }

    /// Records the outcome of one ping of `peer`; returns true if it just came back up.
    pub fn record(&self, peer: usize, answered: bool) -> bool {
        let mut state = self.lock();
        let Some(health) = state.get_mut(peer) else {
            return false;
        };
        if answered {
            let came_back = !health.up;
            *health = Health { up: true, missed: 0 };
            if came_back {
                tracing::info!("peer {} is up again", self.ids[peer]);
            }
            return came_back;
        }
        health.missed = health.missed.saturating_add(1);
        if health.up && health.missed >= self.down_after {
            health.up = false;
            tracing::warn!("peer {} missed {} pings: marked down", self.ids[peer], health.missed);
        }
        false
    }

    /// Whether `peer` currently answers.
    pub fn is_up(&self, peer: usize) -> bool {
        self.lock().get(peer).is_some_and(|h| h.up)
    }

    /// Status of every member except `me`.
    pub fn snapshot(&self, me: usize) -> Vec<PeerStatus> {
        let state = self.lock();
        let all = self.ids.iter().zip(state.iter()).enumerate();
        all.filter(|(i, _)| *i != me)
            .map(|(_, (id, h))| PeerStatus {
                id: id.clone(),
                up: h.up,
                missed_pings: h.missed,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Health>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pings every other member each `interval` through the first of `pools` until
/// `shutdown`. While a peer is down, every missed ping drops its connections in all
/// `pools`, so the next ping dials afresh and a peer restarted on the same address is seen
/// up at its first answer (instead of after the dead connection's idle timeout).
pub async fn ping_loop(
    detector: Arc<FailureDetector>,
    pools: Vec<Arc<PeerPool>>,
    me: usize,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let peers: Vec<usize> = (0..detector.ids.len()).filter(|p| *p != me).collect();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(pool) = pools.first() else { return };
        let pings = peers.iter().map(|&peer| {
            let pool = pool.clone();
            async move {
                let answer =
                    tokio::time::timeout(interval.max(MIN_PING_TIMEOUT), pool.call(peer, PeerRequest::Ping)).await;
                (peer, matches!(answer, Ok(Ok(PeerResponse::Pong))))
            }
        });
        for (peer, answered) in futures_util::future::join_all(pings).await {
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
        assert_eq!(d.snapshot(0).len(), 1);
    }
}
