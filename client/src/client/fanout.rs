//! Sending one request to several replicas and counting their answers.
//!
//! The sends to the replicas run inside the request itself ([`Answers`]): spawning a
//! task per replica cost a fifth of the client's CPU, and a future with its own channel
//! and timer per replica another eighth of its instructions, so replicas with a live
//! connection answer into one [`AnswerSink`] under one deadline. Write sends still
//! running when the caller has its quorum finish in one background task, bounded by the
//! request timeout. A write whose replica fails (or is known to be down) is handed to a
//! fallback node as a hint when the cluster has hinted handoff on; hint acknowledgements
//! count toward `w` only for sloppy writes. Replicas that time out or cannot be reached
//! are remembered as down for [`DOWN_BACKOFF`], during which requests skip them (writes
//! go straight to a fallback).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::time::Sleep;

use super::health::DOWN_BACKOFF;
use super::Inner;
use crate::error::{ClientError, FailureReason, ReplicaFailure};
use crate::options::QuorumPlan;
use crate::quorum::{QuorumState, QuorumTracker};
use crate::transport::{AnswerSink, EncodedRequest, Registration, RequestIds};
use crate::wire::{Request, Response};

/// Counts one send (and its hint) as in flight until dropped.
struct InFlight(Arc<Background>);

impl InFlight {
    fn start(background: &Arc<Background>) -> InFlight {
        background.count.fetch_add(1, Ordering::Relaxed);
        InFlight(background.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Sends still running, and a signal for when none are.
#[derive(Debug, Default)]
pub struct Background {
    /// Sends (with their hints) not finished yet.
    pub count: AtomicU64,
    /// Notified whenever `count` drops to zero.
    idle: tokio::sync::Notify,
}

impl Background {
    /// Resolves once no send is running.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Who an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The replica itself.
    Replica(usize),
    /// A fallback `holder` that took a hint for `owner`.
    Hint { holder: usize, owner: usize },
}

/// One answer of a fanned-out request.
pub type Answer = (Source, Result<Response, FailureReason>);

/// How a write uses fallbacks.
#[derive(Debug, Clone, Copy)]
pub struct HintPolicy {
    /// Send writes for failed replicas to a fallback.
    pub enabled: bool,
    /// Count hint acknowledgements toward the quorum.
    pub sloppy: bool,
}

/// The answers of one fanned-out request, as they arrive.
///
/// Replicas with a live connection are sent the request without waiting, their answers
/// delivered to one [`AnswerSink`] and bounded by one deadline; the others (a
/// connection to dial, a full queue, a replica known down) and the hints of failed
/// writes run as futures inside whoever polls [`Answers::next`] (no task per replica).
/// What is still running once the caller is done goes on in one background task when
/// the answers are dropped, if they were made to finish (writes: every replica must get
/// its copy); reads just stop waiting.
pub struct Answers {
    inner: Arc<Inner>,
    /// Where the replicas sent without waiting deliver their answers.
    sink: Arc<AnswerSink<Response>>,
    /// Those replicas not answered yet, with their registrations.
    waiting: Vec<(usize, Registration<Response>)>,
    /// When the replicas still in `waiting` count as timed out.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The sends that wait their turn, and hints (`None` while there are none).
    pending: Option<FuturesUnordered<BoxFuture<'static, Answer>>>,
    /// Replicas whose answer (or failure) [`Answers::next`] has handed out.
    answered: Vec<usize>,
    /// The request, kept to hand it to a fallback as a hint.
    request: Request,
    /// The targets and the nodes that may hold their hints (kept only with hints on).
    targets: Vec<usize>,
    fallbacks: Vec<usize>,
    timeout: Duration,
    hints: HintPolicy,
    /// Finish the remaining sends in the background when dropped.
    finish: bool,
    /// Counts these sends as running in the background until they are all done.
    _in_flight: InFlight,
}

impl Answers {
    /// The next answer (of a replica or of a hint), `None` once every send has answered.
    pub async fn next(&mut self) -> Option<Answer> {
        let (source, result) = std::future::poll_fn(|cx| self.poll_answer(cx)).await?;
        if let Source::Replica(node) = source {
            self.answered.push(node);
            let failed = matches!(result, Err(FailureReason::Timeout | FailureReason::Unreachable(_)));
            if self.hints.enabled && failed {
                self.send_hint(node);
            }
        }
        Some((source, result))
    }

    fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer>> {
        while !self.waiting.is_empty() {
            if let Poll::Ready((node, result)) = self.sink.poll_next(cx) {
                let Some(at) = self.waiting.iter().position(|(n, _)| *n == node) else {
                    // Timed out already, or its send fell back to the awaiting way just
                    // as the stream closed (the drain's "lost" for it is not its answer).
                    continue;
                };
                self.waiting.swap_remove(at);
                let result = result.map_err(|e| FailureReason::Unreachable(e.to_string()));
                self.inner.health.observe(node, &result);
                return Poll::Ready(Some((Source::Replica(node), result)));
            }
            let expired = self.deadline.as_mut().is_none_or(|d| d.as_mut().poll(cx).is_ready());
            if !expired {
                break;
            }
            if let Some((node, _forgotten)) = self.waiting.pop() {
                let result = Err(FailureReason::Timeout);
                self.inner.health.observe(node, &result);
                return Poll::Ready(Some((Source::Replica(node), result)));
            }
        }
        match self.pending.as_mut().filter(|p| !p.is_empty()) {
            Some(pending) => pending.poll_next_unpin(cx),
            None if self.waiting.is_empty() => Poll::Ready(None),
            None => Poll::Pending,
        }
    }

    /// Whether `node` has answered (or failed) already.
    pub fn has_answered(&self, node: usize) -> bool {
        self.answered.contains(&node)
    }

    fn send_hint(&mut self, owner: usize) {
        // Nodes that are not targets first, each failed target starting at its own offset
        // (spreading hints); then the other targets, whose hint adds no copy of its own
        // but still reaches the owner later.
        let offset = self.targets.iter().position(|&t| t == owner).unwrap_or(0);
        let proper: Vec<usize> = self
            .fallbacks
            .iter()
            .copied()
            .filter(|f| !self.targets.contains(f))
            .collect();
        let others = self.targets.iter().copied().filter(|&t| t != owner);
        let candidates: Vec<usize> = proper
            .iter()
            .cycle()
            .skip(offset)
            .take(proper.len())
            .copied()
            .chain(others)
            .collect();
        let (inner, request, timeout) = (self.inner.clone(), self.request.clone(), self.timeout);
        self.pending
            .get_or_insert_with(FuturesUnordered::new)
            .push(Box::pin(async move {
                inner.send_hint(owner, &candidates, request, timeout).await
            }));
    }

    /// Whether no send is left running.
    fn is_done(&self) -> bool {
        self.waiting.is_empty() && self.pending.as_ref().is_none_or(|p| p.is_empty())
    }
}

impl Drop for Answers {
    fn drop(&mut self) {
        if !self.finish || self.is_done() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let rest = Answers {
            inner: self.inner.clone(),
            sink: self.sink.clone(),
            waiting: std::mem::take(&mut self.waiting),
            deadline: self.deadline.take(),
            pending: self.pending.take(),
            answered: std::mem::take(&mut self.answered),
            request: self.request.clone(),
            targets: std::mem::take(&mut self.targets),
            fallbacks: std::mem::take(&mut self.fallbacks),
            timeout: self.timeout,
            hints: self.hints,
            finish: false,
            _in_flight: InFlight::start(&self.inner.stats.background),
        };
        runtime.spawn(async move {
            let mut rest = rest;
            while rest.next().await.is_some() {}
        });
    }
}

/// One target's encoded request (or why it could not be encoded).
pub(super) type ReplicaSend = (usize, Result<EncodedRequest<Request>, String>);

/// `request` encoded once, for every one of `targets`.
pub(super) fn same_to_all(targets: &[usize], request: &Request, ids: &RequestIds) -> Vec<ReplicaSend> {
    let encoded = EncodedRequest::new(request, ids).map_err(|e| e.to_string());
    targets.iter().map(|&node| (node, encoded.clone())).collect()
}

impl Inner {
    /// Starts sending each target its encoded request (a write sends every target the
    /// same one, see [`same_to_all`]; a read asks one replica for the record and the
    /// others for its version); `request` is what a failed target's hint carries, and
    /// `finish` keeps the sends (and hints) going after the caller stops listening.
    pub(super) fn fan_out(
        self: &Arc<Self>,
        sends: Vec<ReplicaSend>,
        fallbacks: &[usize],
        request: Request,
        timeout: Duration,
        hints: HintPolicy,
        finish: bool,
    ) -> Answers {
        let sink = AnswerSink::new();
        let mut waiting = Vec::with_capacity(sends.len());
        let mut pending = None;
        let mut targets = Vec::new();
        for send in sends {
            let node = send.0;
            if hints.enabled {
                targets.push(node);
            }
            match self.send_to_sink(send, &sink) {
                Ok(registration) => waiting.push((node, registration)),
                Err(send) => {
                    let sending = self.clone().send_awaiting(send, timeout);
                    pending.get_or_insert_with(FuturesUnordered::new).push(sending);
                }
            }
        }
        let deadline = (!waiting.is_empty()).then(|| Box::pin(tokio::time::sleep(timeout)));
        let fallbacks = match hints.enabled {
            true => fallbacks.to_vec(),
            false => Vec::new(),
        };
        Answers {
            inner: self.clone(),
            sink,
            waiting,
            deadline,
            pending,
            answered: Vec::new(),
            request,
            targets,
            fallbacks,
            timeout,
            hints,
            finish,
            _in_flight: InFlight::start(&self.stats.background),
        }
    }

    /// Sends to a replica over its live connection without waiting, when it has one
    /// and is not known down; otherwise hands the send back.
    fn send_to_sink(
        &self,
        send: ReplicaSend,
        sink: &Arc<AnswerSink<Response>>,
    ) -> Result<Registration<Response>, ReplicaSend> {
        let (node, encoded) = &send;
        let (Ok(request), false) = (encoded, self.health.is_down(*node)) else {
            return Err(send);
        };
        let Some(connection) = self.nodes.live_connection(*node) else {
            return Err(send);
        };
        // Not sent (too large, full queue, closed stream): the awaiting send takes it.
        connection.send_to_sink(request, sink, *node).ok_or(send)
    }

    /// Sends to a replica and waits for its answer, dialling if needed.
    fn send_awaiting(self: Arc<Self>, (node, encoded): ReplicaSend, timeout: Duration) -> BoxFuture<'static, Answer> {
        Box::pin(async move {
            // A replica that just failed is skipped for a while instead of waiting out
            // another timeout (its write goes to a fallback when hints are on).
            if self.health.is_down(node) {
                let reason = FailureReason::Unreachable(format!("failed in the last {DOWN_BACKOFF:?}"));
                return (Source::Replica(node), Err(reason));
            }
            let result = match encoded {
                Ok(encoded) => self.send_with_timeout(node, encoded, timeout).await,
                Err(e) => Err(FailureReason::Unreachable(e)),
            };
            // Only a real attempt says anything new about the replica's health.
            self.health.observe(node, &result);
            (Source::Replica(node), result)
        })
    }

    /// Hands `request` (a put) for `owner` to the first fallback that is not known down.
    async fn send_hint(&self, owner: usize, candidates: &[usize], request: Request, timeout: Duration) -> Answer {
        let Request::Put { epoch, key, record } = request else {
            let reason = FailureReason::Unreachable("only writes are handed off".into());
            return (Source::Hint { holder: owner, owner }, Err(reason));
        };
        let owner_id = self.member_id(owner);
        let usable = candidates
            .iter()
            .copied()
            .filter(|c| *c != owner && !self.health.is_down(*c));
        let Some(holder) = usable.into_iter().next() else {
            let reason = FailureReason::Unreachable("no fallback node is up to hold a hint".into());
            return (Source::Hint { holder: owner, owner }, Err(reason));
        };
        let hint = Request::PutHint {
            epoch,
            owner: owner_id,
            key,
            record,
        };
        let result = self.call_with_timeout(holder, hint, timeout).await;
        self.health.observe(holder, &result);
        if result.is_ok() {
            self.stats.hints_sent.fetch_add(1, Ordering::Relaxed);
        }
        (Source::Hint { holder, owner }, result)
    }

    /// Collects answers until `plan.needed` succeeded (per `judge`), every contacted
    /// replica answered, or the timeout passed. Returns the successes with their source and
    /// what is left of the channel (the stragglers).
    pub(super) async fn collect<T>(
        &self,
        answers: Answers,
        targets: &[usize],
        plan: QuorumPlan,
        hints: HintPolicy,
        judge: impl Fn(Response) -> Result<T, FailureReason>,
    ) -> Result<(Vec<(usize, T)>, Answers), ClientError> {
        self.collect_sets(answers, &[targets], plan, hints, judge).await
    }

    /// [`collect`](Self::collect) for a request sent once to the union of several target
    /// sets (a write during a move: the replicas in each layout in use), which needs
    /// `plan.needed` successes within every set; a node in several sets counts in each.
    pub(super) async fn collect_sets<T>(
        &self,
        mut answers: Answers,
        sets: &[&[usize]],
        plan: QuorumPlan,
        hints: HintPolicy,
        judge: impl Fn(Response) -> Result<T, FailureReason>,
    ) -> Result<(Vec<(usize, T)>, Answers), ClientError> {
        let mut trackers: Vec<QuorumTracker> = sets.iter().map(|s| QuorumTracker::new(s.len(), plan.needed)).collect();
        let mut results = Vec::with_capacity(plan.needed);
        let mut heard = vec![false; self.roster_len()];
        // Nodes whose acknowledgement counted, per set: a sloppy write's hint held by a
        // node that also stored its own copy is the same copy, and must not count twice
        // (the simulator found w = 2 writes held by one node, lost with its disk).
        let mut counted = vec![vec![false; heard.len()]; sets.len()];
        let deadline = tokio::time::sleep(plan.timeout);
        tokio::pin!(deadline);
        let reached = |trackers: &[QuorumTracker]| trackers.iter().all(|t| t.state() == QuorumState::Reached);
        // Stop as soon as every quorum is reached; when one cannot be, still hear the
        // others out (up to the deadline) so the error says how many did acknowledge.
        while !reached(&trackers) && trackers.iter().any(|t| t.outstanding() > 0) {
            let (source, answer) = tokio::select! {
                biased;
                Some(a) = answers.next() => a,
                _ = &mut deadline => break,
            };
            let (node, owner, counts) = match source {
                Source::Replica(node) => (node, node, true),
                Source::Hint { holder, owner } => (holder, owner, hints.sloppy),
            };
            let answer = self.screen(node, answer);
            let in_sets = || (0..sets.len()).filter(move |&i| sets[i].contains(&owner));
            if let Source::Replica(node) = source {
                heard[node] = true;
                let failed = matches!(answer, Err(FailureReason::Timeout | FailureReason::Unreachable(_)));
                if hints.enabled && hints.sloppy && failed {
                    in_sets().for_each(|i| trackers[i].expect_one_more());
                }
            }
            if !counts {
                continue;
            }
            match answer.and_then(&judge) {
                Ok(value) => {
                    let mut new_copy = false;
                    for i in in_sets() {
                        if std::mem::replace(&mut counted[i][node], true) {
                            trackers[i].same_node_again();
                        } else {
                            trackers[i].ack();
                            new_copy = true;
                        }
                    }
                    if new_copy {
                        results.push((node, value));
                    }
                }
                Err(reason) => {
                    let failure = self.failure(node, reason);
                    for i in in_sets() {
                        trackers[i].fail(failure.clone());
                    }
                }
            }
        }
        let Some(short) = (0..sets.len()).find(|&i| trackers[i].state() != QuorumState::Reached) else {
            return Ok((results, answers));
        };
        let mut tracker = trackers.swap_remove(short);
        for &node in sets[short].iter().filter(|&&n| !heard[n]) {
            tracker.fail(self.failure(node, FailureReason::Timeout));
        }
        Err(ClientError::Unavailable {
            needed: tracker.needed(),
            acked: tracker.acked(),
            contacted: sets[short].len(),
            failures: tracker.into_failures(),
        })
    }

    pub(super) fn failure(&self, node: usize, reason: FailureReason) -> ReplicaFailure {
        ReplicaFailure {
            node: self.member_id(node),
            reason,
        }
    }
}
