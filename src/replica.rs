//! The replica: what one node does with one client request.
//!
//! One exhaustive `match` hands each request to a short function: reads return the
//! node's own record (or only its version, from the in-memory index), writes go through
//! storage's compare-and-write (a stale write is answered with the newer version it lost
//! to), hints are held for their owner, `Members` describes the cluster and `Status`
//! this node's view of it. Requests are checked against the ring epoch first, and every
//! record (a write, a hint, a read repair) gets the checks any stored record gets
//! ([`crate::admission`]). The hot requests (reads, writes, versions) start without a
//! task of their own ([`Handler::start`]): the storage thread that serves them sends the
//! reply.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use quorumkv_client::wire::{ClusterInfo, ErrorKind, ErrorReply, HeldVersion, Record, Request, Response};

use crate::admission::Refusal;
use crate::config::ClusterConfig;
use crate::context::NodeContext;
use crate::metrics::{Op, RequestMetrics};
use crate::refill::{read_through, ReadThroughError};
use crate::server::{AnswerSize, Handler, Reply};
use crate::storage::{Applied, HintStored, StorageError};

/// Answers client requests from this node's storage.
pub struct Replica {
    ctx: Arc<NodeContext>,
    /// The answer to `Members` but for its `down` list, computed once.
    info: ClusterInfo,
    /// Epoch of this node's ring; requests routed with another are refused.
    epoch: u64,
    /// Requests answered, by operation and outcome, with their latency.
    metrics: Arc<RequestMetrics>,
}

impl Replica {
    /// A replica for `config` on the node of `ctx`.
    pub fn new(config: &ClusterConfig, ctx: Arc<NodeContext>) -> Replica {
        Replica {
            info: config.cluster_info(),
            epoch: ctx.ring.epoch(),
            ctx,
            metrics: Arc::default(),
        }
    }

    /// The requests this replica answered (for the node's metrics).
    pub fn metrics(&self) -> Arc<RequestMetrics> {
        self.metrics.clone()
    }

    /// Answers one request, and counts it.
    pub async fn answer(&self, request: Request) -> Response {
        let (op, begun) = (Op::of(&request), Instant::now());
        let response = self.respond(request).await;
        self.metrics.observe(op, &response, begun);
        response
    }

    async fn respond(&self, request: Request) -> Response {
        let result = match request {
            Request::Get { epoch, key } => self.get(epoch, key).await,
            Request::GetOwn { epoch, key } => self.get_own(epoch, key).await,
            Request::GetVersion { epoch, key } => self.get_version(epoch, key).await,
            Request::Put { epoch, key, record } => self.put(epoch, key, record).await,
            Request::PutHint {
                epoch,
                owner,
                key,
                record,
            } => self.put_hint(epoch, owner, key, record).await,
            Request::Members => Ok(self.members()),
            Request::Status => Ok(Response::Status(self.ctx.status())),
            Request::StatusSummary { partitions } => self.summary(partitions).await,
        };
        result.unwrap_or_else(Response::Error)
    }

    /// This node's summary, built off the runtime: it reads the store's files (disk bytes).
    async fn summary(&self, partitions: bool) -> Result<Response, ErrorReply> {
        let ctx = self.ctx.clone();
        match self.ctx.host.run_blocking(move || ctx.summary(partitions)).await {
            Ok(summary) => Ok(Response::StatusSummary(summary)),
            Err(e) if e.is_cancelled() => Err(reply(ErrorKind::ShuttingDown, "the node is shutting down".into())),
            // Only a panic while reading the store's usage gets here.
            Err(e) => Err(reply(
                ErrorKind::Storage,
                format!("reading the store's usage failed: {e}"),
            )),
        }
    }

    /// The cluster's description with the members this node's failure detector holds as
    /// down, so that a client bootstrapping from it does not wait on them.
    fn members(&self) -> Response {
        let down = self.ctx.detector.snapshot(self.ctx.me).into_iter();
        Response::Members(ClusterInfo {
            down: down.filter(|peer| !peer.up).map(|peer| peer.id).collect(),
            ..self.info.clone()
        })
    }

    async fn get(&self, epoch: u64, key: Bytes) -> Result<Response, ErrorReply> {
        self.check_read(epoch, &key)?;
        if self.refilling(&key) {
            return self.read_through(key).await.map(Response::Record);
        }
        Ok(get_response(self.ctx.storage.get(key).await))
    }

    async fn get_own(&self, epoch: u64, key: Bytes) -> Result<Response, ErrorReply> {
        self.check_read(epoch, &key)?;
        Ok(get_response(self.ctx.storage.get(key).await))
    }

    async fn get_version(&self, epoch: u64, key: Bytes) -> Result<Response, ErrorReply> {
        self.check_read(epoch, &key)?;
        if self.refilling(&key) {
            let newest = self.read_through(key).await?;
            return Ok(Response::Version(newest.map(|r| HeldVersion {
                version: r.version,
                tombstone: r.is_tombstone(),
            })));
        }
        Ok(version_response(self.ctx.storage.version(key).await))
    }

    /// Whether reads of `key` go through the other replicas (see [`crate::refill`]).
    fn refilling(&self, key: &[u8]) -> bool {
        // The key's hash only while some partition refills: the usual read pays one load.
        self.ctx.refill.any() && self.ctx.refill.is_refilling(self.ctx.ring.partition_of(key))
    }

    /// The newest copy among every replica of `key`, or a refusal naming who failed.
    async fn read_through(&self, key: Bytes) -> Result<Option<Record>, ErrorReply> {
        read_through(&self.ctx, key).await.map_err(|e| match e {
            ReadThroughError::Local(why) => reply(ErrorKind::Storage, why),
            other => reply(ErrorKind::Refilling, other.to_string()),
        })
    }

    async fn put(&self, epoch: u64, key: Bytes, record: Record) -> Result<Response, ErrorReply> {
        self.check_write(epoch, &key, &record)?;
        Ok(put_response(self.ctx.storage.apply(key, record).await))
    }

    async fn put_hint(&self, epoch: u64, owner: String, key: Bytes, record: Record) -> Result<Response, ErrorReply> {
        self.check_write(epoch, &key, &record)?;
        if self.ctx.member_index(&owner).is_none_or(|i| i == self.ctx.me) {
            let message = format!("cannot hold a hint for {owner:?}: not another member");
            return Err(reply(ErrorKind::UnknownNode, message));
        }
        let version = record.version;
        match self
            .ctx
            .storage
            .store_hint(owner.clone(), key, record)
            .await
            .map_err(storage_error)?
        {
            HintStored::Stored => Ok(Response::Put {
                applied: true,
                current: version,
            }),
            HintStored::Full => {
                self.ctx.agreement.hints_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("hint store for {owner} is full; anti-entropy will repair it instead");
                let message = format!("this node already holds the most hints allowed for {owner}");
                Err(reply(ErrorKind::HintsFull, message))
            }
        }
    }

    fn check_read(&self, epoch: u64, key: &Bytes) -> Result<(), ErrorReply> {
        self.check_epoch(epoch)?;
        self.ctx.limits.check_key(key).map_err(refused)
    }

    /// The epoch, then the checks every stored record gets
    /// ([`crate::admission::RecordLimits::check`]).
    fn check_write(&self, epoch: u64, key: &Bytes, record: &Record) -> Result<(), ErrorReply> {
        self.check_epoch(epoch)?;
        let now = self.ctx.clock.now_micros();
        self.ctx.limits.check(key, record, now).map_err(refused)
    }

    fn check_epoch(&self, epoch: u64) -> Result<(), ErrorReply> {
        if epoch != self.epoch {
            let message = format!(
                "request routed with ring epoch {epoch:016x}, this node has {:016x}: refresh the member list",
                self.epoch
            );
            return Err(reply(ErrorKind::StaleEpoch, message));
        }
        Ok(())
    }
}

impl Handler for Replica {
    type Request = Request;
    type Response = Response;

    async fn handle(self: Arc<Self>, request: Request) -> Response {
        self.answer(request).await
    }

    /// Reads and writes go to the storage threads with their reply (answered from there,
    /// no task waits); versions the index knows and `Members` are answered at once. Each
    /// answer is counted where it is sent (`Counted`); a request given back is counted
    /// by [`answer`](Replica::answer).
    fn start(&self, request: Request, reply: &Reply) -> Option<Request> {
        if let Request::Get { key, .. } | Request::GetVersion { key, .. } = &request {
            if self.refilling(key) {
                return Some(request);
            }
        }
        let checked = match &request {
            Request::Get { epoch, key } | Request::GetVersion { epoch, key } => self.check_read(*epoch, key),
            Request::Put { epoch, key, record } => self.check_write(*epoch, key, record),
            Request::Members => Ok(()),
            _ => return Some(request),
        };
        let reply = Counted::new(&request, reply, &self.metrics);
        if let Err(refusal) = checked {
            reply.send(Response::Error(refusal));
            return None;
        }
        let storage = &self.ctx.storage;
        match request {
            Request::GetVersion { epoch, key } => match storage.version_now(&key) {
                Some(held) => reply.send(version_response(held)),
                None => return Some(Request::GetVersion { epoch, key }),
            },
            Request::Get { epoch, key } => {
                let done = Box::new(move |outcome| reply.send(get_response(outcome)));
                let full = storage.get_then(key, done).err();
                return full.map(|key| Request::Get { epoch, key });
            }
            Request::Put { epoch, key, record } => {
                let done = Box::new(move |outcome| reply.send(put_response(outcome)));
                let full = storage.apply_then(key, record, done).err();
                return full.map(|(key, record)| Request::Put { epoch, key, record });
            }
            Request::Members => reply.send(self.members()),
            other => return Some(other),
        }
        None
    }

    /// Only a record (or the cluster's description, or a status) can be large; an
    /// acknowledgement, a version or a refusal is small.
    fn answer_size(&self, request: &Request) -> AnswerSize {
        match request {
            Request::Get { .. }
            | Request::GetOwn { .. }
            | Request::Members
            | Request::Status
            | Request::StatusSummary { .. } => AnswerSize::Large,
            Request::Put { .. } | Request::PutHint { .. } | Request::GetVersion { .. } => AnswerSize::Small,
        }
    }

    fn malformed(&self, why: String) -> Response {
        Response::Error(reply(ErrorKind::Malformed, why))
    }
}

/// A reply that counts its request in the node's metrics when it is sent.
struct Counted {
    reply: Reply,
    op: Op,
    /// When the request was decoded.
    begun: Instant,
    metrics: Arc<RequestMetrics>,
}

impl Counted {
    fn new(request: &Request, reply: &Reply, metrics: &Arc<RequestMetrics>) -> Counted {
        Counted {
            reply: reply.clone(),
            op: Op::of(request),
            begun: Instant::now(),
            metrics: metrics.clone(),
        }
    }

    fn send(self, response: Response) {
        self.metrics.observe(self.op, &response, self.begun);
        self.reply.send(response);
    }
}

/// The answer to a `Get` whose read ended with `outcome`.
fn get_response(outcome: Result<Option<Record>, StorageError>) -> Response {
    outcome.map_or_else(|e| Response::Error(storage_error(e)), Response::Record)
}

/// The answer to a `GetVersion` whose lookup ended with `outcome`.
fn version_response(outcome: Result<Option<HeldVersion>, StorageError>) -> Response {
    outcome.map_or_else(|e| Response::Error(storage_error(e)), Response::Version)
}

/// The answer to a `Put` whose compare-and-write ended with `outcome`.
fn put_response(outcome: Result<Applied, StorageError>) -> Response {
    match outcome {
        Ok(applied) => Response::Put {
            applied: applied.applied,
            current: applied.current,
        },
        Err(e) => Response::Error(storage_error(e)),
    }
}

fn refused(refusal: Refusal) -> ErrorReply {
    reply(refusal.kind(), refusal.to_string())
}

fn storage_error(e: StorageError) -> ErrorReply {
    reply(ErrorKind::Storage, e.to_string())
}

fn reply(kind: ErrorKind, message: String) -> ErrorReply {
    ErrorReply { kind, message }
}
