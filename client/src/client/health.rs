//! Which members this client should not wait on: those that failed recently (or that the
//! seed's failure detector named down), and those late with a read's record.
//!
//! Both marks expire after [`DOWN_BACKOFF`]; the next request then tries the member again,
//! so one that came back is used again without any probe of its own.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::FailureReason;
use crate::wire::Response;

/// How long a replica that failed is skipped by writes (they go to a fallback instead).
pub const DOWN_BACKOFF: Duration = Duration::from_secs(2);

/// Replicas this client saw fail recently, and replicas that were late with a read's
/// record.
#[derive(Default)]
pub struct Health {
    /// Until when a member is not sent requests (it failed, or the seed named it down);
    /// writes for it go to a fallback as hints.
    down_until: Mutex<Vec<Option<Instant>>>,
    /// Until when a replica is not asked for reads' records (it was late or refused);
    /// it still gets writes and version-only reads.
    slow_until: Mutex<Vec<Option<Instant>>>,
}

impl Health {
    /// A tracker for `members` nodes.
    pub fn new(members: usize) -> Health {
        Health {
            down_until: Mutex::new(vec![None; members]),
            slow_until: Mutex::new(vec![None; members]),
        }
    }

    /// Tracks `members` nodes from now on (a layout change added some).
    pub fn grow(&self, members: usize) {
        for marks in [&self.down_until, &self.slow_until] {
            let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
            if marks.len() < members {
                marks.resize(members, None);
            }
        }
    }

    /// Whether `node` failed within the last [`DOWN_BACKOFF`].
    pub fn is_down(&self, node: usize) -> bool {
        in_backoff(&self.down_until, node, Instant::now())
    }

    /// Whether `node` was late with (or refused) a read's record within the last
    /// [`DOWN_BACKOFF`].
    pub fn is_slow(&self, node: usize) -> bool {
        in_backoff(&self.slow_until, node, Instant::now())
    }

    /// Remembers that `node` was late with (or refused) a read's record.
    pub fn mark_slow(&self, node: usize) {
        start_backoff(&self.slow_until, node, Instant::now());
    }

    /// Remembers `node` as down for [`DOWN_BACKOFF`], as if it had just failed: the seed's
    /// failure detector says so. After that the next request tries it again, so a node
    /// that came back is used again.
    pub fn mark_down(&self, node: usize) {
        start_backoff(&self.down_until, node, Instant::now());
    }

    pub(super) fn observe(&self, node: usize, result: &Result<Response, FailureReason>) {
        let failed = matches!(result, Err(FailureReason::Timeout | FailureReason::Unreachable(_)));
        let mut down = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = down.get_mut(node) {
            *slot = failed.then(|| Instant::now() + DOWN_BACKOFF);
        }
    }
}

/// Sets `node`'s entry in `until` to [`DOWN_BACKOFF`] after `now`.
fn start_backoff(until: &Mutex<Vec<Option<Instant>>>, node: usize, now: Instant) {
    let mut until = until.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = until.get_mut(node) {
        *slot = Some(now + DOWN_BACKOFF);
    }
}

/// Whether `node`'s entry in `until` is still ahead of `now`.
fn in_backoff(until: &Mutex<Vec<Option<Instant>>>, node: usize, now: Instant) -> bool {
    let until = until.lock().unwrap_or_else(|p| p.into_inner());
    until.get(node).copied().flatten().is_some_and(|until| now < until)
}

#[cfg(test)]
mod tests {
    use super::{in_backoff, start_backoff, Health, DOWN_BACKOFF};
    use tokio::time::Instant;

    #[test]
    fn a_member_named_down_is_skipped_until_the_backoff_ends() {
        let health = Health::new(3);
        let t0 = Instant::now();
        start_backoff(&health.down_until, 2, t0);
        assert!(in_backoff(&health.down_until, 2, t0 + DOWN_BACKOFF / 2));
        assert!(!in_backoff(&health.down_until, 1, t0), "only the member named");
        assert!(
            !in_backoff(&health.down_until, 2, t0 + DOWN_BACKOFF),
            "tried again once the backoff ends"
        );
        health.mark_down(1);
        assert!(health.is_down(1) && !health.is_slow(1), "marked down, not slow");
    }
}
