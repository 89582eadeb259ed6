//! Quorum counting: has a request heard enough, or can it no longer?
//!
//! Pure bookkeeping fed by the client's fan-out loop, which stops as soon as the answer
//! is not [`QuorumState::Pending`].

use crate::error::ReplicaFailure;

/// Where a quorum request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumState {
    /// Not enough answers yet, but still possible.
    Pending,
    /// Enough replicas acknowledged.
    Reached,
    /// Too many replicas failed for the quorum to be reached.
    Impossible,
}

/// Counts acknowledgements and failures of one request sent to `contacted` replicas.
#[derive(Debug, Clone)]
pub struct QuorumTracker {
    needed: usize,
    contacted: usize,
    acked: usize,
    failures: Vec<ReplicaFailure>,
}

impl QuorumTracker {
    /// A request that needs `needed` of `contacted` replicas.
    pub fn new(contacted: usize, needed: usize) -> QuorumTracker {
        QuorumTracker {
            needed,
            contacted,
            acked: 0,
            failures: Vec::new(),
        }
    }

    /// Records an acknowledgement.
    pub fn ack(&mut self) -> QuorumState {
        self.acked += 1;
        self.state()
    }

    /// One more answer will come (a fallback's, for a sloppy write).
    pub fn expect_one_more(&mut self) {
        self.contacted += 1;
    }

    /// An acknowledgement from a node that already acknowledged (its own copy, then a
    /// hint it holds for another replica): one node is one copy, so it counts neither as
    /// an acknowledgement nor as a failure, and one answer fewer is awaited.
    pub fn same_node_again(&mut self) {
        self.contacted = self.contacted.saturating_sub(1);
    }

    /// Records a failure.
    pub fn fail(&mut self, failure: ReplicaFailure) -> QuorumState {
        self.failures.push(failure);
        self.state()
    }

    /// The current answer.
    pub fn state(&self) -> QuorumState {
        if self.acked >= self.needed {
            QuorumState::Reached
        } else if self.contacted - self.failures.len() < self.needed {
            QuorumState::Impossible
        } else {
            QuorumState::Pending
        }
    }

    /// Answers still expected.
    pub fn outstanding(&self) -> usize {
        self.contacted.saturating_sub(self.acked + self.failures.len())
    }

    /// Replicas that acknowledged.
    pub fn acked(&self) -> usize {
        self.acked
    }

    /// Replicas needed.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// Replicas contacted.
    pub fn contacted(&self) -> usize {
        self.contacted
    }

    /// Failures so far; consumes the tracker.
    pub fn into_failures(self) -> Vec<ReplicaFailure> {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::{QuorumState, QuorumTracker};

    #[test]
    fn a_node_acknowledging_twice_counts_once() {
        let mut tracker = QuorumTracker::new(3, 3);
        tracker.expect_one_more();
        tracker.ack();
        tracker.ack();
        tracker.same_node_again();
        assert_eq!(tracker.state(), QuorumState::Pending);
        assert_eq!(
            tracker.outstanding(),
            1,
            "only the third replica's answer can still count"
        );
    }
    use crate::error::{FailureReason, ReplicaFailure};

    fn failure() -> ReplicaFailure {
        ReplicaFailure {
            node: "n1".into(),
            reason: FailureReason::Timeout,
        }
    }

    #[test]
    fn answers_follow_the_counts() {
        // (contacted, needed, events: true = ack, false = failure, expected final state)
        let cases: [(usize, usize, &[bool], QuorumState); 6] = [
            (3, 2, &[true], QuorumState::Pending),
            (3, 2, &[true, true], QuorumState::Reached),
            (3, 2, &[false, true], QuorumState::Pending),
            (3, 2, &[false, false], QuorumState::Impossible),
            (3, 3, &[true, true, false], QuorumState::Impossible),
            (1, 1, &[true], QuorumState::Reached),
        ];
        for (contacted, needed, events, expected) in cases {
            let mut t = QuorumTracker::new(contacted, needed);
            for &ok in events {
                if ok {
                    t.ack();
                } else {
                    t.fail(failure());
                }
            }
            assert_eq!(t.state(), expected, "n={contacted} needed={needed} events={events:?}");
        }
    }
}
