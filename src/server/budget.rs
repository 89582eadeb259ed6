//! What one connection may make the node hold, and gauges of what it holds.
//!
//! A [`Budget`] is a byte semaphore owned by one connection and shared by its streams.
//! Each connection has two: one for request frames being received (only frames larger
//! than [`super::frames::SMALL_FRAME`] take from it) and one for answers (a request takes
//! its worst case before it is dispatched and gives it back once its response frame is
//! handed to quinn). A stream that cannot get budget stops reading, so QUIC flow control
//! pushes back on its client. [`MemoryGauges`] count, node-wide, the bytes actually held
//! in those two places, with their peaks, so tests and operators can check the bound.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Bytes one connection may hold in one place; waits are first come, first served.
#[derive(Debug)]
pub struct Budget {
    /// Free bytes, as permits.
    permits: Semaphore,
    /// Total bytes; every request is clamped to it, so one always fits once the rest is
    /// given back.
    capacity: usize,
}

impl Budget {
    /// A budget of `capacity` bytes (clamped to what a semaphore can count in one go).
    pub fn new(capacity: usize) -> Budget {
        let capacity = capacity.min(u32::MAX as usize);
        Budget {
            permits: Semaphore::new(capacity),
            capacity,
        }
    }

    /// Total bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes currently taken.
    pub fn held(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Takes `bytes` (at most the capacity) if they are free now; returns what was taken.
    pub fn try_take(&self, bytes: usize) -> Option<usize> {
        let bytes = self.clamp(bytes);
        let permit = self.permits.try_acquire_many(bytes as u32).ok()?;
        permit.forget();
        Some(bytes)
    }

    /// Takes `bytes` (at most the capacity), waiting until they are free; returns what
    /// was taken.
    pub async fn take(&self, bytes: usize) -> usize {
        if let Some(taken) = self.try_take(bytes) {
            return taken;
        }
        let bytes = self.clamp(bytes);
        // The semaphore is never closed, so the wait only ends with the permits.
        if let Ok(permit) = self.permits.acquire_many(bytes as u32).await {
            permit.forget();
        }
        bytes
    }

    /// Gives back `bytes` taken earlier.
    pub fn give_back(&self, bytes: usize) {
        if bytes > 0 {
            self.permits.add_permits(bytes);
        }
    }

    fn clamp(&self, bytes: usize) -> usize {
        bytes.min(self.capacity)
    }
}

/// Node-wide counts of the bytes held for connections, each with its peak since start.
#[derive(Debug, Default)]
pub struct MemoryGauges {
    /// Encoded response frames queued for a stream's writer, not yet handed to quinn.
    answers: Gauge,
    /// Bytes of request frames received in part (a frame's first bytes, waiting for
    /// the rest).
    partial_frames: Gauge,
}

/// What [`MemoryGauges`] read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// Bytes of response frames waiting to be handed to quinn, now.
    pub answer_bytes: usize,
    /// The most `answer_bytes` has been.
    pub answer_bytes_peak: usize,
    /// Bytes of request frames received in part, now.
    pub partial_frame_bytes: usize,
    /// The most `partial_frame_bytes` has been.
    pub partial_frame_bytes_peak: usize,
}

impl MemoryGauges {
    /// The gauges now.
    pub fn read(&self) -> MemoryUse {
        MemoryUse {
            answer_bytes: self.answers.now.load(Ordering::Relaxed),
            answer_bytes_peak: self.answers.peak.load(Ordering::Relaxed),
            partial_frame_bytes: self.partial_frames.now.load(Ordering::Relaxed),
            partial_frame_bytes_peak: self.partial_frames.peak.load(Ordering::Relaxed),
        }
    }

    pub(super) fn answers(&self) -> &Gauge {
        &self.answers
    }

    pub(super) fn partial_frames(&self) -> &Gauge {
        &self.partial_frames
    }
}

/// A byte count with its peak.
#[derive(Debug, Default)]
pub(super) struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Gauge {
    pub(super) fn add(&self, bytes: usize) {
        if bytes > 0 {
            let now = self.now.fetch_add(bytes, Ordering::Relaxed) + bytes;
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    pub(super) fn sub(&self, bytes: usize) {
        if bytes > 0 {
            self.now.fetch_sub(bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_larger_than_the_budget_takes_all_of_it() {
        let budget = Budget::new(100);
        assert_eq!(budget.try_take(250), Some(100));
        assert_eq!(budget.held(), 100);
        assert_eq!(budget.try_take(1), None);
        budget.give_back(100);
        assert_eq!((budget.held(), budget.try_take(40)), (0, Some(40)));
    }

    #[tokio::test]
    async fn a_waiting_take_gets_its_bytes_once_they_are_given_back() {
        let budget = std::sync::Arc::new(Budget::new(10));
        assert_eq!(budget.try_take(8), Some(8));
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(5).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "5 bytes do not fit in the 2 left");
        budget.give_back(8);
        assert_eq!(waiter.await.unwrap(), 5);
        assert_eq!(budget.held(), 5);
    }

    #[test]
    fn gauges_keep_their_peak() {
        let gauges = MemoryGauges::default();
        gauges.answers().add(300);
        gauges.answers().add(200);
        gauges.answers().sub(400);
        let read = gauges.read();
        assert_eq!((read.answer_bytes, read.answer_bytes_peak), (100, 500));
    }
}
