//! The [`Client`]: routes each request to the key's replicas and waits for a quorum.
//!
//! The client learns the members from a seed node, builds the same [`Ring`] the nodes
//! use, and sends every request straight to the first `n` replicas of the key's
//! preference list, in parallel. Writes return once `w` replicas acknowledged durably;
//! the remaining sends finish in the background (bounded by the request timeout). Reads
//! return the newest of the first `r` answers; the stragglers are dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::clock::{system_clock, Clock};
use crate::error::{ClientError, FailureReason, ReplicaFailure};
use crate::net::bind_udp;
use crate::options::{QuorumPlan, ReadOptions, WriteOptions};
use crate::quorum::{QuorumState, QuorumTracker};
use crate::ring::Ring;
use crate::tls::TlsIdentity;
use crate::transport::{MuxConnection, TransportError};
use crate::version::{HybridClock, Version};
use crate::wire::{ClusterInfo, ErrorKind, Record, Request, Response, FRAME_OVERHEAD};

/// How long to wait for a seed node's member list.
const SEED_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest frame accepted before the cluster's limits are known (the member list).
const BOOTSTRAP_MAX_FRAME: usize = 1 << 20;

/// How to reach a cluster.
#[derive(Clone)]
pub struct ClientConfig {
    /// Nodes to ask for the member list, tried in order.
    pub seeds: Vec<SocketAddr>,
    /// The client certificate and the cluster CA.
    pub identity: TlsIdentity,
    /// Writer id in the versions this client issues; random when `None`.
    pub writer_id: Option<u64>,
    /// Wall clock for version timestamps.
    pub clock: Arc<dyn Clock>,
}

impl ClientConfig {
    /// A configuration with a random writer id and the system clock.
    pub fn new(seeds: Vec<SocketAddr>, identity: TlsIdentity) -> ClientConfig {
        ClientConfig {
            seeds,
            identity,
            writer_id: None,
            clock: system_clock(),
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

/// A connection to a quorumkv cluster. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    cluster: ClusterInfo,
    ring: Ring,
    /// Issues versions; advanced past every version read.
    hlc: Mutex<HybridClock>,
    clock: Arc<dyn Clock>,
    /// One cached connection per member, re-dialled when it breaks.
    peers: Vec<tokio::sync::Mutex<Option<Arc<MuxConnection>>>>,
}

/// What one replica said to one request.
type ReplicaAnswer = (usize, Result<Response, FailureReason>);

impl Client {
    /// Connects to the cluster through the first seed that answers.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let tls = config.identity.client_config()?;
        let endpoint = client_endpoint(&config.seeds)?;
        let cluster = fetch_cluster(&endpoint, &tls, &config.seeds).await?;
        let ids: Vec<String> = cluster.members.iter().map(|m| m.id.clone()).collect();
        let ring = Ring::new(&ids, cluster.partitions, cluster.replication_factor)
            .map_err(|e| ClientError::NoSeed(format!("the seed sent an unusable member list: {e}")))?;
        let writer = config
            .writer_id
            .unwrap_or_else(|| random_writer_id(config.clock.as_ref()));
        let peers = cluster.members.iter().map(|_| tokio::sync::Mutex::new(None)).collect();
        let inner = Inner {
            endpoint,
            tls,
            cluster,
            ring,
            hlc: Mutex::new(HybridClock::new(writer)),
            clock: config.clock,
            peers,
        };
        Ok(Client { inner: Arc::new(inner) })
    }

    /// The cluster's members and settings, as the seed reported them.
    pub fn cluster(&self) -> &ClusterInfo {
        &self.inner.cluster
    }

    /// The ring this client routes with.
    pub fn ring(&self) -> &Ring {
        &self.inner.ring
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

    /// Reads `key`: asks n replicas, returns the newest of the first r answers.
    /// `None` when the key was never written or is deleted.
    pub async fn get_with(
        &self,
        key: impl Into<Bytes>,
        options: &ReadOptions,
    ) -> Result<Option<Versioned>, ClientError> {
        let key = key.into();
        let plan = options.plan(&self.inner.cluster.defaults, self.inner.cluster.replication_factor)?;
        self.check_size("key", key.len(), self.inner.cluster.max_key_bytes)?;
        let request = Request::Get {
            epoch: self.inner.ring.epoch(),
            key: key.clone(),
        };
        let answers = self.inner.clone().quorum(&key, request, plan, read_answer).await?;
        let newest = answers.into_iter().flatten().max_by_key(|r| r.version);
        if let Some(record) = &newest {
            self.observe(record.version);
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
        self.check_size("value", value.len(), self.inner.cluster.max_value_bytes)?;
        self.write(key.into(), Some(value), options).await
    }

    /// Deletes `key` by writing a tombstone to n replicas; returns once w acknowledged.
    pub async fn delete_with(&self, key: impl Into<Bytes>, options: &WriteOptions) -> Result<Version, ClientError> {
        self.write(key.into(), None, options).await
    }

    /// Reads one node's own copy of `key`, without a quorum: for inspecting divergence.
    /// Returns the raw record (tombstones included).
    pub async fn get_from(&self, node_id: &str, key: impl Into<Bytes>) -> Result<Option<Record>, ClientError> {
        let node = self.inner.member_index(node_id)?;
        let request = Request::Get {
            epoch: self.inner.ring.epoch(),
            key: key.into(),
        };
        let timeout = Duration::from_millis(self.inner.cluster.defaults.timeout_ms);
        let answer = self
            .inner
            .call_with_timeout(node, request, timeout)
            .await
            .and_then(read_answer);
        answer.map_err(|reason| ClientError::Unavailable {
            needed: 1,
            acked: 0,
            contacted: 1,
            failures: vec![self.inner.failure(node, reason)],
        })
    }

    async fn write(&self, key: Bytes, value: Option<Bytes>, options: &WriteOptions) -> Result<Version, ClientError> {
        let plan = options.plan(&self.inner.cluster.defaults, self.inner.cluster.replication_factor)?;
        self.check_size("key", key.len(), self.inner.cluster.max_key_bytes)?;
        let version = self.next_version();
        let record = Record { version, value };
        let request = Request::Put {
            epoch: self.inner.ring.epoch(),
            key: key.clone(),
            record,
        };
        let result = self
            .inner
            .clone()
            .quorum(&key, request, plan, move |r| write_answer(r, version))
            .await;
        if let Err(ClientError::Unavailable { failures, .. }) = &result {
            for f in failures {
                if let FailureReason::Stale { current } = f.reason {
                    self.observe(current);
                }
            }
        }
        result.map(|_| version)
    }

    fn check_size(&self, what: &'static str, len: usize, max: usize) -> Result<(), ClientError> {
        if len > max {
            return Err(ClientError::TooLarge { what, len, max });
        }
        Ok(())
    }

    fn next_version(&self) -> Version {
        let now = self.inner.clock.now_micros();
        lock(&self.inner.hlc).next(now)
    }

    fn observe(&self, seen: Version) {
        lock(&self.inner.hlc).observe(seen);
    }
}

impl Inner {
    /// Sends `request` to the first `plan.n` replicas of `key` and collects answers until
    /// `plan.needed` succeeded (per `judge`) or that became impossible. The per-replica
    /// sends are spawned, so the ones still running when this returns finish in the
    /// background, each bounded by the timeout.
    async fn quorum<T: Send + 'static>(
        self: Arc<Self>,
        key: &[u8],
        request: Request,
        plan: QuorumPlan,
        judge: impl Fn(Response) -> Result<T, FailureReason>,
    ) -> Result<Vec<T>, ClientError> {
        let partition = self.ring.partition_of(key);
        let targets: Vec<usize> = self.ring.replicas(partition).iter().take(plan.n).copied().collect();
        let (tx, mut rx) = mpsc::channel::<ReplicaAnswer>(targets.len().max(1));
        for &node in &targets {
            let (inner, tx, request) = (self.clone(), tx.clone(), request.clone());
            tokio::spawn(async move {
                let answer = inner.call_with_timeout(node, request, plan.timeout).await;
                let _ = tx.send((node, answer)).await;
            });
        }
        drop(tx);
        let mut tracker = QuorumTracker::new(targets.len(), plan.needed);
        let mut results = Vec::with_capacity(plan.needed);
        let mut answered = vec![false; self.cluster.members.len()];
        let deadline = tokio::time::sleep(plan.timeout);
        tokio::pin!(deadline);
        let mut unanswered = FailureReason::Unanswered;
        while tracker.state() == QuorumState::Pending {
            let (node, answer) = tokio::select! {
                Some(a) = rx.recv() => a,
                _ = &mut deadline => {
                    unanswered = FailureReason::Timeout;
                    break;
                }
            };
            answered[node] = true;
            match answer.and_then(&judge) {
                Ok(value) => {
                    results.push(value);
                    tracker.ack();
                }
                Err(reason) => {
                    tracker.fail(self.failure(node, reason));
                }
            }
        }
        if tracker.state() == QuorumState::Reached {
            return Ok(results);
        }
        for &node in targets.iter().filter(|&&n| !answered[n]) {
            tracker.fail(self.failure(node, unanswered.clone()));
        }
        Err(ClientError::Unavailable {
            needed: tracker.needed(),
            acked: tracker.acked(),
            contacted: tracker.contacted(),
            failures: tracker.into_failures(),
        })
    }

    fn member_index(&self, node_id: &str) -> Result<usize, ClientError> {
        let found = self.cluster.members.iter().position(|m| m.id == node_id);
        found.ok_or_else(|| ClientError::InvalidOptions(format!("no member named {node_id:?}")))
    }

    fn failure(&self, node: usize, reason: FailureReason) -> ReplicaFailure {
        ReplicaFailure {
            node: self.cluster.members[node].id.clone(),
            reason,
        }
    }

    async fn call_with_timeout(
        &self,
        node: usize,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, FailureReason> {
        match tokio::time::timeout(timeout, self.call(node, request)).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(FailureReason::Unreachable(e.to_string())),
            Err(_) => Err(FailureReason::Timeout),
        }
    }

    async fn call(&self, node: usize, request: Request) -> Result<Response, TransportError> {
        let conn = self.connection(node).await?;
        conn.call(request).await
    }

    /// The cached connection to `node`, dialling a new one if there is none or it broke.
    async fn connection(&self, node: usize) -> Result<Arc<MuxConnection>, TransportError> {
        let mut slot = self.peers[node].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let member = &self.cluster.members[node];
        let max_frame = self.cluster.max_key_bytes + self.cluster.max_value_bytes + FRAME_OVERHEAD;
        let conn = dial(&self.endpoint, &self.tls, member.addr, &member.id, max_frame).await?;
        *slot = Some(conn.clone());
        Ok(conn)
    }
}

fn read_answer(response: Response) -> Result<Option<Record>, FailureReason> {
    match response {
        Response::Record(record) => Ok(record),
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

async fn dial(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    max_frame: usize,
) -> Result<Arc<MuxConnection>, TransportError> {
    let lost = |e: &dyn std::fmt::Display| TransportError::Lost(format!("{addr}: {e}"));
    let connecting = endpoint
        .connect_with(tls.clone(), addr, server_name)
        .map_err(|e| lost(&e))?;
    let conn = connecting.await.map_err(|e| lost(&e))?;
    Ok(Arc::new(MuxConnection::open(conn, max_frame).await?))
}

/// Asks each seed in turn for the member list.
async fn fetch_cluster(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seeds: &[SocketAddr],
) -> Result<ClusterInfo, ClientError> {
    let mut reasons = Vec::new();
    for &seed in seeds {
        let attempt = async {
            // Any node's certificate is acceptable for a seed: its id is not known yet.
            let conn = dial_any_node(endpoint, tls, seed).await?;
            let response = conn.call(Request::Members).await;
            conn.connection().close(0u32.into(), b"bootstrap done");
            response
        };
        match tokio::time::timeout(SEED_TIMEOUT, attempt).await {
            Ok(Ok(Response::Members(info))) => return Ok(info),
            Ok(Ok(other)) => reasons.push(format!("{seed}: unexpected answer {other:?}")),
            Ok(Err(e)) => reasons.push(format!("{seed}: {e}")),
            Err(_) => reasons.push(format!("{seed}: no answer within {SEED_TIMEOUT:?}")),
        }
    }
    if seeds.is_empty() {
        reasons.push("no seed addresses given".into());
    }
    Err(ClientError::NoSeed(reasons.join("; ")))
}

/// Dials a seed whose node id is unknown: the server name is the fixed seed name every
/// node certificate also carries.
async fn dial_any_node(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    seed: SocketAddr,
) -> Result<Arc<MuxConnection>, TransportError> {
    dial(endpoint, tls, seed, crate::tls::SEED_SERVER_NAME, BOOTSTRAP_MAX_FRAME).await
}

fn client_endpoint(seeds: &[SocketAddr]) -> Result<quinn::Endpoint, ClientError> {
    let loopback = seeds.first().map(|s| s.ip().is_loopback()).unwrap_or(true);
    let v6 = seeds.first().map(|s| s.is_ipv6()).unwrap_or(false);
    let bind: SocketAddr = match (v6, loopback) {
        (false, true) => "127.0.0.1:0",
        (false, false) => "0.0.0.0:0",
        (true, true) => "[::1]:0",
        (true, false) => "[::]:0",
    }
    .parse()
    .map_err(|_| std::io::Error::other("bad bind address"))?;
    let socket = bind_udp(bind)?;
    let runtime = Arc::new(quinn::TokioRuntime);
    Ok(quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        runtime,
    )?)
}

fn random_writer_id(clock: &dyn Clock) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&clock.now_micros().to_le_bytes());
    hasher.update(&std::process::id().to_le_bytes());
    let local = 0u8;
    hasher.update(&(&local as *const u8 as usize).to_le_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
