//! The [`Client`]: routes each request to the key's replicas and waits for a quorum.
//!
//! The client learns the members from a seed node, builds the same [`Ring`] the nodes
//! use, and sends every request straight to the first `n` replicas of the key's
//! preference list, in parallel (`fanout`). Writes return once `w` replicas
//! acknowledged durably; the remaining sends finish in the background (bounded by the
//! request timeout), and a replica that cannot be reached gets its write through a
//! fallback node as a hint. Reads return the newest of the first `r` answers, taking the
//! record from one replica and only the versions from the others (`read`), and repair
//! stale replicas (`repair`).

mod bootstrap;
mod fanout;
mod health;
mod read;
mod repair;
mod routing;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::clock::{system_clock, Clock};
use crate::error::{ClientError, FailureReason};
use crate::layout::{Change, LayoutHistory, MoveStatus, PartitionKeys};
use crate::options::{QuorumPlan, ReadOptions, RepairMode, WriteOptions};
use crate::ring::Ring;
use crate::tls::TlsIdentity;
use crate::transport::{ConnectionPool, Destination, EncodedRequest};
use crate::version::{ClockExhausted, HybridClock, Version, DEFAULT_MAX_CLOCK_SKEW};
use crate::wire::{ClusterInfo, ErrorKind, NodeStatus, NodeSummary, Record, Request, Response};
use bootstrap::{client_endpoint, fetch_cluster, random_writer_id};
use fanout::{same_to_all, Background, HintPolicy};
use health::Health;
use repair::MAX_CONCURRENT_REPAIRS;
use routing::{Routing, RoutingCell};

pub use bootstrap::DEFAULT_CONNECT_TIMEOUT;
pub use health::DOWN_BACKOFF;

/// How to reach a cluster.
#[derive(Clone)]
pub struct ClientConfig {
    /// Nodes to ask for the member list, all at once (the first answer wins).
    pub seeds: Vec<SocketAddr>,
    /// The client certificate and the cluster CA.
    pub identity: TlsIdentity,
    /// Writer id in the versions this client issues; random when `None`.
    pub writer_id: Option<u64>,
    /// Wall clock for version timestamps.
    pub clock: Arc<dyn Clock>,
    /// The cluster's clock-skew limit (cluster.toml `limits.max_clock_skew_ms`): a version
    /// read that leads this client's clock by more is not followed by its clock (see
    /// [`HybridClock::observe`]). The member list a seed sends does not carry it (that
    /// message's layout is fixed by the client protocol's version), so it is configured
    /// here; the CLI takes it from cluster.toml, and [`DEFAULT_MAX_CLOCK_SKEW`] matches
    /// the cluster's default.
    pub max_clock_skew: Duration,
    /// How long [`Client::connect`] waits for a seed's member list before it gives up
    /// with [`ClientError::NoSeed`] ([`DEFAULT_CONNECT_TIMEOUT`] by default; the CLI uses
    /// the command's request timeout).
    pub connect_timeout: Duration,
    /// The QUIC endpoint and TLS configuration to use; `None` (the default): a UDP
    /// socket on the seeds' loopback or wildcard address and `identity`'s configuration.
    /// A simulation passes an endpoint on its in-memory network with seeded randomness.
    pub transport: Option<ClientTransport>,
}

/// A ready QUIC endpoint and the TLS configuration to dial nodes with.
#[derive(Clone)]
pub struct ClientTransport {
    /// The endpoint every connection of the client is made from.
    pub endpoint: quinn::Endpoint,
    /// Verifies nodes and presents the client's certificate (the client protocol).
    pub tls: quinn::ClientConfig,
}

impl ClientConfig {
    /// A configuration with a random writer id, the system clock, the default clock-skew
    /// limit and the default connect timeout.
    pub fn new(seeds: Vec<SocketAddr>, identity: TlsIdentity) -> ClientConfig {
        ClientConfig {
            seeds,
            identity,
            writer_id: None,
            clock: system_clock(),
            max_clock_skew: DEFAULT_MAX_CLOCK_SKEW,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            transport: None,
        }
    }
}

/// A value read from the cluster with the version that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: Bytes,
    /// The version of the write that stored it.
    pub version: Version,
}

/// What this client did beyond answering requests.
#[derive(Debug, Default)]
pub struct ClientStats {
    /// Replicas repaired by read repair.
    pub read_repairs: AtomicU64,
    /// Background read repairs skipped because too many were running.
    pub read_repairs_skipped: AtomicU64,
    /// Hints handed to fallback nodes.
    pub hints_sent: AtomicU64,
    /// Sends to replicas (and their hints) still running, including those a request
    /// returned without waiting for.
    pub background: Arc<Background>,
}

/// A connection to a quorumkv cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: ClusterInfo,
    /// The layouts requests are routed with.
    routing: RoutingCell,
    /// Issues versions; advanced past every version read.
    hlc: Mutex<HybridClock>,
    clock: Arc<dyn Clock>,
    /// Versions read further than this ahead of `clock` (µs) do not move `hlc`.
    max_skew_micros: u64,
    /// One cached connection per member, re-dialled when it breaks.
    nodes: ConnectionPool<Request, Response>,
    /// Members that failed recently.
    health: Health,
    /// Bounds read repairs in flight.
    repair_slots: Arc<Semaphore>,
    stats: ClientStats,
}

impl Client {
    /// Connects to the cluster through the first seed that answers, within
    /// `config.connect_timeout`. The members that seed sees down are skipped at first, as
    /// if this client had just seen them fail (see [`DOWN_BACKOFF`]).
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let ClientTransport { endpoint, tls } = match config.transport {
            Some(transport) => transport,
            None => ClientTransport {
                endpoint: client_endpoint(&config.seeds)?,
                tls: config.identity.client_config()?,
            },
        };
        let cluster = fetch_cluster(&endpoint, &tls, &config.seeds, config.connect_timeout).await?;
        let history = match &cluster.layout {
            Some(history) => history.clone(),
            None => LayoutHistory::seed(cluster.members.clone(), cluster.partitions, cluster.replication_factor)
                .map_err(|e| ClientError::BadMemberList(e.to_string()))?,
        };
        let routing = Routing::new(history).map_err(|e| ClientError::BadMemberList(e.to_string()))?;
        let ids = routing.history.roster_ids();
        let writer = match config.writer_id {
            Some(writer) => writer,
            None => random_writer_id()?,
        };
        let destinations = routing.history.roster.iter().map(Destination::of).collect();
        let max_frame = max_response_frame(&cluster).ok_or_else(|| {
            ClientError::BadMemberList(format!(
                "unusable limits: max_key_bytes = {}, max_value_bytes = {}",
                cluster.max_key_bytes, cluster.max_value_bytes
            ))
        })?;
        let health = Health::new(ids.len());
        for down in &cluster.down {
            if let Some(node) = ids.iter().position(|id| id == down) {
                health.mark_down(node);
            }
        }
        let inner = Inner {
            nodes: ConnectionPool::new(endpoint, tls, destinations, max_frame),
            health,
            cluster,
            routing: RoutingCell::new(routing),
            hlc: Mutex::new(HybridClock::new(writer)),
            clock: config.clock,
            max_skew_micros: config.max_clock_skew.as_micros().try_into().unwrap_or(u64::MAX),
            repair_slots: Arc::new(Semaphore::new(MAX_CONCURRENT_REPAIRS)),
            stats: ClientStats::default(),
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The cluster's members and settings, as the seed reported them.
    pub fn cluster(&self) -> &ClusterInfo {
        &self.inner.cluster
    }

    /// The ring this client routes reads with (the read layout's).
    pub fn ring(&self) -> Ring {
        self.inner.routing.get().read.clone()
    }

    /// The routing epoch requests carry now (see [`LayoutHistory::epoch`]).
    pub fn epoch(&self) -> u64 {
        self.inner.routing.get().epoch
    }

    /// The layout history this client routes with: as a seed sent it, updated whenever a
    /// node refused a request routed with an older one.
    pub fn layout(&self) -> LayoutHistory {
        self.inner.routing.get().history.clone()
    }

    /// Asks `node_id` for its layout history, and routes with it from now on if it is newer.
    pub async fn fetch_layout(&self, node_id: &str) -> Result<LayoutHistory, ClientError> {
        let history = self.ask_one(node_id, Request::Layout, layout_answer).await?;
        self.inner.adopt(&history);
        Ok(history)
    }

    /// How far `node_id` is with the move under way.
    pub async fn move_status(&self, node_id: &str) -> Result<MoveStatus, ClientError> {
        self.ask_one(node_id, Request::MoveStatus, |response| match response {
            Response::MoveStatus(status) => Ok(status),
            other => Err(unexpected(other)),
        })
        .await
    }

    /// Keys `node_id` holds in each of `partitions`.
    pub async fn partition_keys(&self, node_id: &str, partitions: Vec<u32>) -> Result<Vec<PartitionKeys>, ClientError> {
        self.ask_one(
            node_id,
            Request::PartitionKeys { partitions },
            |response| match response {
                Response::PartitionKeys(counts) => Ok(counts),
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    /// Asks `node_id` to make a membership change (`quorumkv cluster add|remove|replace`);
    /// returns the history with the new layout, or the node's refusal.
    pub async fn change_layout(&self, node_id: &str, change: Change) -> Result<LayoutHistory, ClientError> {
        let history = self
            .ask_one(node_id, Request::ChangeLayout(change), layout_answer)
            .await?;
        self.inner.adopt(&history);
        Ok(history)
    }

    /// Read repairs and hints this client performed.
    pub fn stats(&self) -> &ClientStats {
        &self.inner.stats
    }

    /// Reads `key` with the cluster's default n and r.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Versioned>, ClientError> {
        self.get_with(key, &ReadOptions::default()).await
    }

    /// Stores `value` under `key` with the cluster's default n and w; returns its version.
    pub async fn put(&self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Result<Version, ClientError> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Deletes `key` (writes a tombstone) with the cluster's default n and w.
    pub async fn delete(&self, key: impl Into<Bytes>) -> Result<Version, ClientError> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Reads `key`: asks n replicas, returns the newest of the first r answers and
    /// repairs stale replicas as `options.repair` says. `None` when the key was never
    /// written or is deleted.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        options: &ReadOptions,
    ) -> Result<Option<Versioned>, ClientError> {
        let key = key.into();
        let plan = options.plan(&self.inner.cluster.defaults, self.inner.cluster.replication_factor)?;
        check_size("key", key.len(), self.inner.cluster.max_key_bytes)?;
        let mut epoch = self.inner.routing.get().epoch;
        let mut read = self.inner.quorum_read(&key, plan).await;
        for _ in 0..MAX_REROUTES {
            let newer = self.inner.routing.get().epoch;
            if !routed_stale(&read) || newer <= epoch {
                break;
            }
            epoch = newer;
            read = self.inner.quorum_read(&key, plan).await;
        }
        let mut read = read?;
        let newest = read.newest.clone();
        if let Some(record) = &newest {
            self.observe(record.version);
            if options.repair == RepairMode::Blocking {
                let repaired = self.inner.repair(&key, record, &read.held, plan.timeout).await;
                // The background pass below then repairs only what this one could not.
                for (node, held) in &mut read.held {
                    if repaired.contains(node) {
                        *held = Some(record.into());
                    }
                }
            }
        }
        if options.repair != RepairMode::Off {
            self.inner
                .repair_in_background(key, read.newest, read.held, read.stragglers, plan.timeout);
        }
        Ok(newest.and_then(|r| {
            r.value.map(|value| Versioned {
                value,
                version: r.version,
            })
        }))
    }

    /// Stores `value` under `key`: sends to n replicas, returns once w acknowledged durably.
    pub async fn put_with(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<Version, ClientError> {
        let value = value.into();
        check_size("value", value.len(), self.inner.cluster.max_value_bytes)?;
        self.write(key.into(), Some(value), options).await
    }

    /// Deletes `key` by writing a tombstone to n replicas; returns once w acknowledged.
    pub async fn delete_with(&self, key: impl Into<Bytes>, options: &WriteOptions) -> Result<Version, ClientError> {
        self.write(key.into(), None, options).await
    }

    /// Reads one node's own copy of `key`, without a quorum: for inspecting divergence.
    /// Returns the raw record (tombstones included), also from a node still refilling.
    pub async fn get_from(&self, node_id: &str, key: impl Into<Bytes>) -> Result<Option<Record>, ClientError> {
        let request = Request::GetOwn {
            epoch: self.inner.routing.get().epoch,
            key: key.into(),
        };
        self.ask_one(node_id, request, read_answer).await
    }

    /// Waits until the sends a request returned without (writes beyond `w`, hints for
    /// failed replicas) have finished, at most `limit`. Call it before exiting a short-lived
    /// process so that every replica gets its copy; returns whether all finished.
    pub async fn finish_background(&self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.inner.stats.background.idle())
            .await
            .is_ok()
    }

    /// One node's view of its peers, partitions and repairs.
    pub async fn status(&self, node_id: &str) -> Result<NodeStatus, ClientError> {
        self.ask_one(node_id, Request::Status, |response| match response {
            Response::Status(status) => Ok(status),
            other => Err(unexpected(other)),
        })
        .await
    }

    /// One node's status in short: peers, hints, keys, disk bytes and its partitions'
    /// agreement condensed; every partition row too if `partitions`.
    pub async fn status_summary(&self, node_id: &str, partitions: bool) -> Result<NodeSummary, ClientError> {
        self.ask_one(
            node_id,
            Request::StatusSummary { partitions },
            |response| match response {
                Response::StatusSummary(summary) => Ok(summary),
                other => Err(unexpected(other)),
            },
        )
        .await
    }

    async fn ask_one<T>(
        &self,
        node_id: &str,
        request: Request,
        judge: impl Fn(Response) -> Result<T, FailureReason>,
    ) -> Result<T, ClientError> {
        let node = self.inner.member_index(node_id)?;
        let timeout = Duration::from_millis(self.inner.cluster.defaults.timeout_ms);
        let answer = self.inner.call_with_timeout(node, request, timeout).await;
        // A direct ask is a real attempt: it tells whether the node is up again.
        self.inner.health.observe(node, &answer);
        answer.and_then(judge).map_err(|reason| ClientError::Unavailable {
            needed: 1,
            acked: 0,
            contacted: 1,
            failures: vec![self.inner.failure(node, reason)],
        })
    }

    /// Writes a new version of `key` with a write quorum in every layout in use; routed
    /// again once if a node had a newer layout.
    async fn write(&self, key: Bytes, value: Option<Bytes>, options: &WriteOptions) -> Result<Version, ClientError> {
        let plan = options.plan(&self.inner.cluster.defaults, self.inner.cluster.replication_factor)?;
        check_size("key", key.len(), self.inner.cluster.max_key_bytes)?;
        let version = self.next_version()?;
        let record = Record { version, value };
        let mut routing = self.inner.routing.get();
        let mut result = self.write_routed(&routing, &key, &record, options, plan).await;
        for _ in 0..MAX_REROUTES {
            let newer = self.inner.routing.get();
            if !routed_stale(&result) || newer.epoch <= routing.epoch {
                break;
            }
            routing = newer;
            result = self.write_routed(&routing, &key, &record, options, plan).await;
        }
        if let Err(ClientError::Unavailable { failures, .. }) = &result {
            for f in failures {
                if let FailureReason::Stale { current } = f.reason {
                    self.observe(current);
                }
            }
        }
        result.map(|_| version)
    }

    /// One write of `record` reaching a write quorum in every layout of `routing`: sent
    /// once to each replica of any of them (a node in several counts in each), with the
    /// newest layout's fallbacks for hints.
    async fn write_routed(
        &self,
        routing: &Routing,
        key: &Bytes,
        record: &Record,
        options: &WriteOptions,
        plan: QuorumPlan,
    ) -> Result<(), ClientError> {
        let request = Request::Put {
            epoch: routing.epoch,
            key: key.clone(),
            record: record.clone(),
        };
        let sets: Vec<Vec<usize>> = routing
            .writes
            .iter()
            .rev()
            .map(|ring| targets(ring, key, plan.n))
            .collect();
        let mut all: Vec<usize> = Vec::with_capacity(plan.n * sets.len());
        for &node in sets.iter().flatten() {
            if !all.contains(&node) {
                all.push(node);
            }
        }
        let newest = routing.writes.last().unwrap_or(&routing.read);
        let fallbacks = fallbacks(newest, key, plan.n);
        let hints = HintPolicy {
            enabled: self.inner.cluster.hinted_handoff,
            sloppy: options.sloppy,
        };
        // Every replica gets its copy, so the sends beyond `w` finish after we return.
        let sends = same_to_all(&all, &request, self.inner.nodes.request_ids());
        let answers = self
            .inner
            .fan_out(sends, &fallbacks, request, plan.timeout, hints, true);
        let version = record.version;
        let judge = move |r| write_answer(r, version);
        let sets: Vec<&[usize]> = sets.iter().map(Vec::as_slice).collect();
        self.inner
            .collect_sets(answers, &sets, plan, hints, judge)
            .await
            .map(|_| ())
    }

    fn next_version(&self) -> Result<Version, ClockExhausted> {
        let now = self.inner.clock.now_micros();
        lock(&self.inner.hlc).next(now)
    }

    /// Moves the clock past `seen`, unless it is beyond the clock-skew limit (logged).
    fn observe(&self, seen: Version) {
        let now = self.inner.clock.now_micros();
        if !lock(&self.inner.hlc).observe(seen, now, self.inner.max_skew_micros) {
            tracing::warn!(
                "not following version {seen}: it is {} ms ahead of this client's clock (limit {} ms)",
                seen.micros.saturating_sub(now) / 1000,
                self.inner.max_skew_micros / 1000
            );
        }
    }
}

/// The first `n` replicas of `key` in `ring`.
fn targets(ring: &Ring, key: &[u8], n: usize) -> Vec<usize> {
    let partition = ring.partition_of(key);
    ring.replicas(partition).iter().take(n).copied().collect()
}

/// Nodes that may hold hints for the targets of `key`: the rest of the preference list
/// (fallbacks proper first, then the other targets: with as many nodes as replicas,
/// a hint waits on another replica).
fn fallbacks(ring: &Ring, key: &[u8], n: usize) -> Vec<usize> {
    let list = ring.preference_list(ring.partition_of(key));
    list.iter().skip(n).chain(list.iter().take(n)).copied().collect()
}

/// How many times one request is routed again after nodes answered with newer layouts:
/// a move changes the routing epoch three times (new layout, reads switched, old
/// retired), and a request may straddle each; it is routed again only when the client
/// did learn a newer layout, so this bounds nothing but a cluster changing faster.
const MAX_REROUTES: usize = 4;

/// Whether a request failed because some node had a newer layout (the client has
/// adopted it by then: route again).
fn routed_stale<T>(result: &Result<T, ClientError>) -> bool {
    let Err(ClientError::Unavailable { failures, .. }) = result else {
        return false;
    };
    failures
        .iter()
        .any(|f| matches!(&f.reason, FailureReason::Refused(reply) if reply.kind == ErrorKind::StaleEpoch))
}

impl Inner {
    fn member_index(&self, node_id: &str) -> Result<usize, ClientError> {
        let found = self.routing.get().history.index_of(node_id);
        found.ok_or_else(|| ClientError::InvalidOptions(format!("no member named {node_id:?}")))
    }

    /// Node id of roster index `node`.
    fn member_id(&self, node: usize) -> String {
        self.routing.get().id(node)
    }

    /// Nodes in the roster (every index a request may use is below it).
    fn roster_len(&self) -> usize {
        self.routing.get().history.roster.len()
    }

    /// `node`'s answer, except that a refusal for routing with an older layout becomes a
    /// failure (kind [`ErrorKind::StaleEpoch`]) once the node's layout is adopted: the
    /// request is then routed again.
    fn screen(&self, node: usize, answer: Result<Response, FailureReason>) -> Result<Response, FailureReason> {
        match answer {
            Ok(Response::StaleLayout(history)) => {
                self.adopt(&history);
                Err(FailureReason::Refused(crate::wire::ErrorReply {
                    kind: ErrorKind::StaleEpoch,
                    message: format!("{} has a newer layout", self.member_id(node)),
                }))
            }
            other => other,
        }
    }

    /// Routes with `history` from now on if it is newer; new nodes get a connection slot.
    fn adopt(&self, history: &LayoutHistory) {
        if let Some(routing) = self.routing.adopt(history) {
            self.nodes
                .add_destinations(routing.history.roster.iter().map(Destination::of));
            self.health.grow(routing.history.roster.len());
            tracing::debug!("routing with layout epoch {:x}", routing.epoch);
        }
    }

    async fn call_with_timeout(
        &self,
        node: usize,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, FailureReason> {
        match EncodedRequest::new(&request, self.nodes.request_ids()) {
            Ok(encoded) => self.send_with_timeout(node, encoded, timeout).await,
            Err(e) => Err(FailureReason::Unreachable(e.to_string())),
        }
    }

    /// Sends a request encoded beforehand (once for all the replicas it goes to).
    async fn send_with_timeout(
        &self,
        node: usize,
        request: EncodedRequest<Request>,
        timeout: Duration,
    ) -> Result<Response, FailureReason> {
        match tokio::time::timeout(timeout, self.nodes.call_encoded(node, request)).await {
            Ok(Ok(response)) => self.screen(node, Ok(response)),
            Ok(Err(e)) => Err(FailureReason::Unreachable(e.to_string())),
            Err(_) => Err(FailureReason::Timeout),
        }
    }
}

fn check_size(what: &'static str, len: usize, max: usize) -> Result<(), ClientError> {
    if len > max {
        return Err(ClientError::TooLarge { what, len, max });
    }
    Ok(())
}

fn read_answer(response: Response) -> Result<Option<Record>, FailureReason> {
    match response {
        Response::Record(record) => Ok(record),
        other => Err(unexpected(other)),
    }
}

fn layout_answer(response: Response) -> Result<LayoutHistory, FailureReason> {
    match response {
        Response::Layout(history) => Ok(*history),
        other => Err(unexpected(other)),
    }
}

fn write_answer(response: Response, version: Version) -> Result<(), FailureReason> {
    match response {
        Response::Put { applied: true, .. } => Ok(()),
        // The replica already had exactly this write (a retransmission): still durable.
        Response::Put { current, .. } if current == version => Ok(()),
        Response::Put { current, .. } => Err(FailureReason::Stale { current }),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> FailureReason {
    match response {
        Response::Error(reply) => FailureReason::Refused(reply),
        other => FailureReason::Refused(crate::wire::ErrorReply {
            kind: ErrorKind::Malformed,
            message: format!("unexpected answer {other:?}"),
        }),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// Counters are read by callers with relaxed loads.
impl ClientStats {
    /// Replicas repaired by read repair so far.
    pub fn read_repairs(&self) -> u64 {
        self.read_repairs.load(Ordering::Relaxed)
    }

    /// Hints handed to fallback nodes so far.
    pub fn hints_sent(&self) -> u64 {
        self.hints_sent.load(Ordering::Relaxed)
    }

    /// Requests with sends still running (one each, hints included), counting the
    /// background completions of writes that already returned.
    pub fn sends_in_flight(&self) -> u64 {
        self.background.count.load(Ordering::Relaxed)
    }
}

/// Bytes a node's status spends per partition and other replica, at most (a node id of
/// up to 64 bytes, a time and a count).
const STATUS_BYTES_PER_REPLICA: usize = 96;
/// Room in a status answer for everything but its partition rows.
const STATUS_BASE_BYTES: usize = 1 << 20;

/// The largest response the client accepts: a maximum-size record, or a node's status
/// (whose size grows with the partitions, not with `max_value_bytes`), whichever is larger;
/// `None` when the limits a seed sent do not add up in a `usize`.
pub fn max_response_frame(cluster: &ClusterInfo) -> Option<usize> {
    let record = cluster.max_frame()?;
    let rows = (cluster.partitions as usize).saturating_mul(cluster.replication_factor.saturating_sub(1));
    let status = rows
        .saturating_mul(STATUS_BYTES_PER_REPLICA)
        .saturating_add(STATUS_BASE_BYTES);
    Some(record.max(status))
}
