//! Read repair: write the newest record back to replicas that answered a read with an
//! older version or nothing.
//!
//! In the background by default: after the read returned, the stragglers' answers are
//! still collected (up to the request's timeout) and every stale replica gets the newest
//! record (fetched first when a straggler holds a newer version than the read saw).
//! Blocking mode repairs the stale replicas among the answers before the read returns.
//! At most [`MAX_CONCURRENT_REPAIRS`] repairs run at once per client; a
//! background repair that finds no free slot is skipped (anti-entropy will do it), so a
//! hot key cannot start a storm.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::fanout::{Answers, Source};
use super::read::{held_answer, HeldBy};
use super::Inner;
use crate::wire::{Record, Request, Response};
use bytes::Bytes;
use tokio::time::Instant;

/// Repairs in flight per client.
pub const MAX_CONCURRENT_REPAIRS: usize = 64;

impl Inner {
    /// Repairs every replica in `answers` that holds something older than `newest`;
    /// waits for the repairs. Returns the replicas repaired.
    pub(super) async fn repair(
        &self,
        key: &Bytes,
        newest: &Record,
        answers: &[HeldBy],
        timeout: Duration,
    ) -> Vec<usize> {
        let stale = answers
            .iter()
            .filter(|(_, held)| held.is_none_or(|h| h.version < newest.version));
        let repairs = stale.map(|&(node, _)| {
            let request = Request::Put {
                epoch: self.routing.get().epoch,
                key: key.clone(),
                record: newest.clone(),
            };
            async move { (node, self.call_with_timeout(node, request, timeout).await) }
        });
        let results = futures_util::future::join_all(repairs).await;
        let repaired: Vec<usize> = results
            .into_iter()
            .filter(|(_, result)| matches!(result, Ok(Response::Put { .. })))
            .map(|(node, _)| node)
            .collect();
        self.stats
            .read_repairs
            .fetch_add(repaired.len() as u64, Ordering::Relaxed);
        repaired
    }

    /// Keeps collecting the stragglers' answers, then repairs every stale replica with
    /// the newest record: `newest` (what the read returned), or one fetched from a
    /// straggler that holds a newer version.
    pub(super) fn repair_in_background(
        self: &Arc<Self>,
        key: Bytes,
        newest: Option<Record>,
        mut answers: Vec<HeldBy>,
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
            let deadline = Instant::now() + timeout;
            let _ = tokio::time::timeout_at(deadline, async {
                while let Some((source, answer)) = stragglers.next().await {
                    if let (Source::Replica(node), Ok(held)) = (source, answer.and_then(held_answer)) {
                        answers.push((node, held.version()));
                    }
                }
            })
            .await;
            let Some(seen) = answers.iter().filter_map(|(_, held)| *held).max_by_key(|h| h.version) else {
                return;
            };
            let newest = match (newest, seen.tombstone_record()) {
                (Some(record), _) if record.version >= seen.version => record,
                // A straggler holds a newer version than the read saw: fetch it first.
                (_, Some(tombstone)) => tombstone,
                _ => {
                    let holders: Vec<usize> = answers
                        .iter()
                        .filter(|(_, held)| *held == Some(seen))
                        .map(|(node, _)| *node)
                        .collect();
                    match inner.fetch(&key, seen, &holders, &[], deadline).await {
                        Ok((_, record)) => record,
                        Err(_) => return, // anti-entropy will converge it
                    }
                }
            };
            inner.repair(&key, &newest, &answers, timeout).await;
        });
    }
}
