//! Read repair: write the newest record back to replicas that answered a read with an
//! older version or nothing.
//!
//! In the background by default: after the read returned, the stragglers' answers are
//! still collected (up to the request's timeout) and every stale replica gets the newest
//! record. Blocking mode repairs the stale replicas among the answers before the read
//! returns. At most [`MAX_CONCURRENT_REPAIRS`] repairs run at once per client; a
//! background repair that finds no free slot is skipped (anti-entropy will do it), so a
//! hot key cannot start a storm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::fanout::{Answers, Source};
use super::Inner;
use crate::wire::{Record, Request, Response};
use bytes::Bytes;

/// Repairs in flight per client.
pub const MAX_CONCURRENT_REPAIRS: usize = 64;

/// What one replica answered to a read.
pub type ReadAnswer = (usize, Option<Record>);

impl Inner {
    /// Repairs every replica in `answers` that holds something older than `newest`;
    /// waits for the repairs. Returns how many replicas were repaired.
    pub(super) async fn repair(&self, key: &Bytes, newest: &Record, answers: &[ReadAnswer], timeout: Duration) -> u64 {
        let stale = answers
            .iter()
            .filter(|(_, held)| held.as_ref().is_none_or(|r| r.version < newest.version));
        let repairs = stale.map(|(node, _)| {
            let request = Request::Put {
                epoch: self.ring.epoch(),
                key: key.clone(),
                record: newest.clone(),
            };
            async move { self.call_with_timeout(*node, request, timeout).await }
        });
        let results = futures_util::future::join_all(repairs).await;
        let repaired = results.iter().filter(|r| matches!(r, Ok(Response::Put { .. }))).count() as u64;
        self.stats.read_repairs.fetch_add(repaired, Ordering::Relaxed);
        repaired
    }

    /// Keeps collecting the stragglers' answers, then repairs every stale replica.
    pub(super) fn repair_in_background(
        self: &Arc<Self>,
        key: Bytes,
        mut answers: Vec<ReadAnswer>,
        mut stragglers: Answers,
        timeout: Duration,
    ) {
        let Ok(permit) = self.repair_slots.clone().try_acquire_owned() else {
            self.stats.read_repairs_skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let inner = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(timeout, async {
                while let Some((source, answer)) = stragglers.next().await {
                    if let (Source::Replica(node), Ok(Response::Record(held))) = (source, answer) {
                        answers.push((node, held));
                    }
                }
            })
            .await;
            let newest = answers
                .iter()
                .filter_map(|(_, r)| r.as_ref())
                .max_by_key(|r| r.version)
                .cloned();
            if let Some(newest) = newest {
                inner.repair(&key, &newest, &answers, timeout).await;
            }
        });
    }
}
