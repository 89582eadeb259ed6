//! Quorum reads: one replica sends the record, the others only its version.
//!
//! A read still asks all `n` replicas and takes the newest of the first `r` answers, but
//! only one of them, the *data replica* (the first of the key's replicas not known to
//! be down), is asked for the record (`Get`); the others are asked for the version they
//! hold (`GetVersion`), which a node answers from its in-memory version index without
//! touching its disk or sending the value. This is Cassandra's digest read. When the
//! answers agree, which is nearly always, the read costs one storage read instead of
//! `n`. When a version-only answer is newer than the data replica's record, or the data
//! replica fails, the client fetches the record from a replica that holds the newest
//! version: one more round trip, only then. A newest version that is a tombstone or "no
//! record" needs no value at all.
//!
//! Latency follows the data replica: once `r` answers are in, a read still waits for
//! the data replica's record (unless the answers say there is nothing to fetch), but at
//! most [`DATA_GRACE`]; then it fetches the record from a replica that announced the
//! newest version, and the late replica is not asked for records for a while
//! ([`super::health::Health::mark_slow`]). A hung data replica therefore costs a few
//! reads [`DATA_GRACE`], not the timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::fanout::{Answers, HintPolicy, Source};
use super::{unexpected, Inner};
use crate::error::{ClientError, FailureReason};
use crate::options::QuorumPlan;
use crate::transport::EncodedRequest;
use crate::wire::{HeldVersion, Record, Request, Response};

/// How long a read that has its `r` answers waits for a late data replica before it
/// fetches the record from another replica. Far above a healthy answer (p99 ~3 ms at 64
/// reads in flight on the 2-core test machine), far below the request timeout.
pub const DATA_GRACE: Duration = Duration::from_millis(20);

/// What one replica said it holds for a key (`None`: nothing).
pub type HeldBy = (usize, Option<HeldVersion>);

/// A replica's answer to a read: the record itself, or only the version it holds.
#[derive(Debug)]
pub(super) enum Held {
    Record(Option<Record>),
    Version(Option<HeldVersion>),
}

impl Held {
    pub(super) fn version(&self) -> Option<HeldVersion> {
        match self {
            Held::Record(record) => record.as_ref().map(HeldVersion::from),
            Held::Version(held) => *held,
        }
    }
}

/// A read's answer to `Get` or `GetVersion`.
pub(super) fn held_answer(response: Response) -> Result<Held, FailureReason> {
    match response {
        Response::Record(record) => Ok(Held::Record(record)),
        Response::Version(held) => Ok(Held::Version(held)),
        other => Err(unexpected(other)),
    }
}

/// What a quorum read found.
pub struct ReadOutcome {
    /// The newest record among the first `r` answers (a tombstone for a deleted key),
    /// `None` when none of them holds the key.
    pub newest: Option<Record>,
    /// What every replica that answered holds.
    pub held: Vec<HeldBy>,
    /// The answers still on their way (for background read repair).
    pub stragglers: Answers,
}

impl Inner {
    /// Reads `key` from its first `plan.n` replicas and returns the newest of the first
    /// `plan.needed` answers.
    pub(super) async fn quorum_read(
        self: &Arc<Self>,
        key: &Bytes,
        plan: QuorumPlan,
    ) -> Result<ReadOutcome, ClientError> {
        let deadline = Instant::now() + plan.timeout;
        let routing = self.routing.get();
        let targets = super::targets(&routing.read, key, plan.n);
        let up = || targets.iter().copied().filter(|&node| !self.health.is_down(node));
        let data_node = up()
            .find(|&node| !self.health.is_slow(node))
            .or_else(|| up().next())
            .unwrap_or(targets[0]);
        let epoch = routing.epoch;
        let get = Request::Get {
            epoch,
            key: key.clone(),
        };
        let ids = self.nodes.request_ids();
        let get_encoded = EncodedRequest::new(&get, ids).map_err(|e| e.to_string());
        let version_encoded = EncodedRequest::new(
            &Request::GetVersion {
                epoch,
                key: key.clone(),
            },
            ids,
        )
        .map_err(|e| e.to_string());
        let sends = targets
            .iter()
            .map(|&node| match node == data_node {
                true => (node, get_encoded.clone()),
                false => (node, version_encoded.clone()),
            })
            .collect();
        let no_hints = HintPolicy {
            enabled: false,
            sloppy: false,
        };
        let answers = self.fan_out(sends, &[], get, plan.timeout, no_hints, false);
        let (mut answers, mut stragglers) = self.collect(answers, &targets, plan, no_hints, held_answer).await?;

        let newest = answers
            .iter()
            .filter_map(|(_, held)| held.version())
            .max_by_key(|h| h.version);
        let Some(newest) = newest else {
            return Ok(outcome(None, answers, stragglers));
        };
        if let Some(tombstone) = newest.tombstone_record() {
            return Ok(outcome(Some(tombstone), answers, stragglers));
        }
        if let Some(record) = record_at_least(&answers, newest) {
            return Ok(outcome(Some(record), answers, stragglers));
        }
        // The record is not among the answers yet: the data replica has not answered, or
        // failed, or holds an older version.
        if !stragglers.has_answered(data_node) {
            let grace = deadline.min(Instant::now() + DATA_GRACE);
            wait_for(&mut stragglers, data_node, grace, &mut answers).await;
            if let Some(record) = record_at_least(&answers, newest) {
                return Ok(outcome(Some(record), answers, stragglers));
            }
        }
        if !answers.iter().any(|(node, _)| *node == data_node) {
            // Late or refused: the next reads take their records from another replica.
            self.health.mark_slow(data_node);
        }
        let holders: Vec<usize> = answers
            .iter()
            .filter(|(_, held)| matches!(held, Held::Version(Some(h)) if h.version == newest.version))
            .map(|(node, _)| *node)
            .collect();
        let others: Vec<usize> = targets.iter().copied().filter(|n| !holders.contains(n)).collect();
        let (node, record) = self.fetch(key, newest, &holders, &others, deadline).await?;
        answers.retain(|(n, _)| *n != node);
        answers.push((node, Held::Record(Some(record.clone()))));
        Ok(outcome(Some(record), answers, stragglers))
    }

    /// Reads the record of `key` at `wanted`'s version (or newer) from the first replica
    /// that returns it: the `holders` that announced it, then the `others` (which may
    /// hold it by now); replicas known to be down last. Each try gets an equal share of
    /// the time left, so one hung replica cannot use it all up.
    pub(super) async fn fetch(
        &self,
        key: &Bytes,
        wanted: HeldVersion,
        holders: &[usize],
        others: &[usize],
        deadline: Instant,
    ) -> Result<(usize, Record), ClientError> {
        let mut candidates: Vec<usize> = holders.iter().chain(others).copied().collect();
        // Stable: the holders stay ahead of the others within each group.
        candidates.sort_by_key(|&node| self.health.is_down(node));
        let mut failures = Vec::new();
        for (tried, &node) in candidates.iter().enumerate() {
            let request = Request::Get {
                epoch: self.routing.get().epoch,
                key: key.clone(),
            };
            let left = (candidates.len() - tried) as u32;
            let timeout = deadline.saturating_duration_since(Instant::now()) / left;
            let answer = self.call_with_timeout(node, request, timeout).await;
            self.health.observe(node, &answer);
            let reason = match answer.and_then(held_answer) {
                Ok(Held::Record(Some(record))) if record.version >= wanted.version => return Ok((node, record)),
                Ok(held) => FailureReason::Unreachable(format!(
                    "announced version {:?} but sent {:?}",
                    wanted.version,
                    held.version()
                )),
                Err(reason) => reason,
            };
            failures.push(self.failure(node, reason));
        }
        Err(ClientError::Unavailable {
            needed: 1,
            acked: 0,
            contacted: candidates.len(),
            failures,
        })
    }
}

/// A record among `answers` at `wanted`'s version or newer.
fn record_at_least(answers: &[(usize, Held)], wanted: HeldVersion) -> Option<Record> {
    answers.iter().find_map(|(_, held)| match held {
        Held::Record(Some(record)) if record.version >= wanted.version => Some(record.clone()),
        _ => None,
    })
}

/// Takes the stragglers' answers into `answers` until `node` answered (or failed), or
/// `until` passed.
async fn wait_for(stragglers: &mut Answers, node: usize, until: Instant, answers: &mut Vec<(usize, Held)>) {
    while let Ok(Some((source, result))) = tokio::time::timeout_at(until, stragglers.next()).await {
        let Source::Replica(from) = source else {
            continue;
        };
        if let Ok(held) = result.and_then(held_answer) {
            answers.push((from, held));
        }
        if from == node {
            return;
        }
    }
}

fn outcome(newest: Option<Record>, answers: Vec<(usize, Held)>, stragglers: Answers) -> ReadOutcome {
    ReadOutcome {
        newest,
        held: answers.iter().map(|(node, held)| (*node, held.version())).collect(),
        stragglers,
    }
}
