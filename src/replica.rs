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
use quorumkv_client::layout::{Change, PartitionKeys};
use quorumkv_client::transport::Destination;
use quorumkv_client::wire::{
    ClusterInfo, ErrorKind, ErrorReply, HeldVersion, Record, Request, Response, MAX_COUNTED_PARTITIONS,
};

use crate::admission::Refusal;
use crate::config::ClusterConfig;
use crate::context::NodeContext;
use crate::membership::{report, NodeLayout};
use crate::metrics::{Op, RequestMetrics};
use crate::peer::{PeerRequest, PeerResponse};
use crate::refill::{read_through, ReadThroughError};
use crate::server::{AnswerSize, Handler, Reply};
use crate::storage::{Applied, HintStored, StorageError};

/// Longest wait for a joining node's answer before a change that adds it is made.
const NEWCOMER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers client requests from this node's storage.
pub struct Replica {
    ctx: Arc<NodeContext>,
    /// The answer to `Members` but for its `down` list and layout, computed once.
    info: ClusterInfo,
    /// Requests answered, by operation and outcome, with their latency.
    metrics: Arc<RequestMetrics>,
}

impl Replica {
    /// A replica for `config` on the node of `ctx`.
    pub fn new(config: &ClusterConfig, ctx: Arc<NodeContext>) -> Replica {
        Replica {
            info: config.cluster_info(),
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
            Request::Layout => Ok(Response::Layout(Box::new(self.ctx.layout().history.clone()))),
            Request::ChangeLayout(change) => self.change_layout(change).await,
            Request::MoveStatus => report::move_status(&self.ctx)
                .await
                .map(Response::MoveStatus)
                .map_err(storage_error),
            Request::PartitionKeys { partitions } => self.partition_keys(partitions).await,
        };
        result.unwrap_or_else(|refusal| refusal)
    }

    /// Makes a membership change, after checking it and, for a node that joins, that it
    /// answers: a move waits for every member of the new layout, so a mistyped address
    /// would stall it.
    async fn change_layout(&self, change: Change) -> Result<Response, Response> {
        let refused = |why: String| reply(ErrorKind::LayoutRefused, why);
        self.ctx
            .layout()
            .history
            .change(&change)
            .map_err(|e| refused(e.to_string()))?;
        if let Change::Add { id, addr } | Change::Replace { new: id, addr, .. } = &change {
            let destination = Destination {
                addr: *addr,
                server_name: id.clone(),
            };
            let ping = PeerRequest::Ping {
                digest: 0,
                layout: None,
            };
            match self.ctx.peers.call_once(&destination, ping, NEWCOMER_TIMEOUT).await {
                Ok(PeerResponse::Pong { .. }) => {}
                Ok(other) => return Err(refused(format!("{id} at {addr} answered {other:?} to a ping"))),
                Err(e) => {
                    return Err(refused(format!(
                    "{id} at {addr} does not answer ({e}): start it first with `quorumkv node --id {id} --addr {addr}`"
                )))
                }
            }
        }
        match self.ctx.membership.change(&change).await {
            Ok(history) => Ok(Response::Layout(Box::new(history))),
            Err(e) => Err(refused(e.to_string())),
        }
    }

    /// Keys held in each of `partitions`.
    async fn partition_keys(&self, partitions: Vec<u32>) -> Result<Response, Response> {
        let count = self.ctx.layout().read.partitions();
        if partitions.len() > MAX_COUNTED_PARTITIONS || partitions.iter().any(|&p| p >= count) {
            let message = format!("at most {MAX_COUNTED_PARTITIONS} partitions, each below {count}");
            return Err(reply(ErrorKind::Malformed, message));
        }
        let mut counts = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let keys = report::count_keys(&self.ctx, partition).await.map_err(storage_error)?;
            counts.push(PartitionKeys { partition, keys });
        }
        Ok(Response::PartitionKeys(counts))
    }

    /// This node's summary, built off the runtime: it reads the store's files (disk bytes).
    async fn summary(&self, partitions: bool) -> Result<Response, Response> {
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
        let layout = self.ctx.layout();
        let down = self.ctx.peer_statuses(&layout).into_iter();
        Response::Members(ClusterInfo {
            down: down.filter(|peer| !peer.up).map(|peer| peer.id).collect(),
            members: layout.history.roster.clone(),
            layout: Some(layout.history.clone()),
            ..self.info.clone()
        })
    }

    async fn get(&self, epoch: u64, key: Bytes) -> Result<Response, Response> {
        self.check_read(epoch, &key).map_err(|r| *r)?;
        if self.refilling(&key) {
            return self.read_through(key).await.map(Response::Record);
        }
        Ok(get_response(self.ctx.storage.get(key).await))
    }

    /// This node's own copy, whether or not it replicates the key (for inspection: a node
    /// removed from the cluster shows what it still holds).
    async fn get_own(&self, epoch: u64, key: Bytes) -> Result<Response, Response> {
        self.check_routing(epoch).map_err(|r| *r)?;
        self.ctx.limits.check_key(&key).map_err(refused)?;
        Ok(get_response(self.ctx.storage.get(key).await))
    }

    async fn get_version(&self, epoch: u64, key: Bytes) -> Result<Response, Response> {
        self.check_read(epoch, &key).map_err(|r| *r)?;
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
        self.ctx.refill.any() && self.ctx.refill.is_refilling(self.ctx.layout().partition_of(key))
    }

    /// The newest copy among every replica of `key`, or a refusal naming who failed.
    async fn read_through(&self, key: Bytes) -> Result<Option<Record>, Response> {
        read_through(&self.ctx, key).await.map_err(|e| match e {
            ReadThroughError::Local(why) => reply(ErrorKind::Storage, why),
            other => reply(ErrorKind::Refilling, other.to_string()),
        })
    }

    async fn put(&self, epoch: u64, key: Bytes, record: Record) -> Result<Response, Response> {
        self.check_write(epoch, &key, &record).map_err(|r| *r)?;
        Ok(put_response(self.ctx.storage.apply(key, record).await))
    }

    async fn put_hint(&self, epoch: u64, owner: String, key: Bytes, record: Record) -> Result<Response, Response> {
        self.check_write(epoch, &key, &record).map_err(|r| *r)?;
        let layout = self.ctx.layout();
        if layout.index_of(&owner).is_none_or(|i| Some(i) == layout.me) {
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

    fn check_read(&self, epoch: u64, key: &Bytes) -> Result<(), Box<Response>> {
        self.check_epoch(epoch)?;
        self.ctx.limits.check_key(key).map_err(|r| Box::new(refused(r)))
    }

    /// The epoch, then the checks every stored record gets
    /// ([`crate::admission::RecordLimits::check`]).
    fn check_write(&self, epoch: u64, key: &Bytes, record: &Record) -> Result<(), Box<Response>> {
        self.check_epoch(epoch)?;
        let now = self.ctx.clock.now_micros();
        self.ctx
            .limits
            .check(key, record, now)
            .map_err(|r| Box::new(refused(r)))
    }

    /// Refuses a request routed with an older layout than this node's (answered with
    /// this node's history, [`Response::StaleLayout`]); one routed with a newer layout is
    /// served, since its sender knows more. A node that no layout it knows names serves
    /// nothing routed with that layout.
    fn check_epoch(&self, epoch: u64) -> Result<(), Box<Response>> {
        let (current, member) = self.ctx.membership.epoch_now();
        if epoch > current || (epoch == current && member) {
            return Ok(());
        }
        let layout = self.check_routing(epoch)?;
        // A sender with a newer layout knows better (this node may be about to learn that
        // it joined); with the same one, a node no layout names serves nothing.
        if epoch == layout.epoch && !layout.is_member() {
            let message = match layout.me {
                None => format!(
                    "{} is not a member of the cluster yet: `quorumkv cluster add {} ADDR` makes it one",
                    self.ctx.id, self.ctx.id
                ),
                Some(_) => format!(
                    "{} replicates nothing in the layouts in use (it was removed)",
                    self.ctx.id
                ),
            };
            return Err(Box::new(reply(ErrorKind::UnknownNode, message)));
        }
        Ok(())
    }

    /// Refuses a request routed with an older layout than this node's, answering with
    /// this node's history; returns the layout otherwise.
    fn check_routing(&self, epoch: u64) -> Result<Arc<NodeLayout>, Box<Response>> {
        let layout = self.ctx.layout();
        if epoch < layout.epoch {
            return Err(Box::new(Response::StaleLayout(Box::new(layout.history.clone()))));
        }
        Ok(layout)
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
            reply.send(*refusal);
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
            | Request::StatusSummary { .. }
            | Request::Layout
            | Request::ChangeLayout(_)
            | Request::MoveStatus
            | Request::PartitionKeys { .. } => AnswerSize::Large,
            Request::Put { .. } | Request::PutHint { .. } | Request::GetVersion { .. } => AnswerSize::Small,
        }
    }

    fn malformed(&self, why: String) -> Response {
        reply(ErrorKind::Malformed, why)
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
    outcome.map_or_else(storage_error, Response::Record)
}

/// The answer to a `GetVersion` whose lookup ended with `outcome`.
fn version_response(outcome: Result<Option<HeldVersion>, StorageError>) -> Response {
    outcome.map_or_else(storage_error, Response::Version)
}

/// The answer to a `Put` whose compare-and-write ended with `outcome`.
fn put_response(outcome: Result<Applied, StorageError>) -> Response {
    match outcome {
        Ok(applied) => Response::Put {
            applied: applied.applied,
            current: applied.current,
        },
        Err(e) => storage_error(e),
    }
}

fn refused(refusal: Refusal) -> Response {
    reply(refusal.kind(), refusal.to_string())
}

fn storage_error(e: StorageError) -> Response {
    reply(ErrorKind::Storage, e.to_string())
}

/// A refusal of `kind`.
fn reply(kind: ErrorKind, message: String) -> Response {
    Response::Error(ErrorReply { kind, message })
}
