//! A node: wires config, TLS, storage, the replica and the QUIC endpoint together, and
//! shuts them down in order.
//!
//! [`Node::start`] takes everything that moves time, chance or packets as parameters
//! ([`NodeParts`]): the clock, the UDP socket, the QUIC and TLS settings with their
//! random sources, the storage, and whether it runs on the operating system or in a
//! simulation ([`Host`]). Timers are tokio's, so a paused runtime drives them. Node code
//! reads none of these any other way, so that a simulation can run whole clusters over
//! an in-memory network and disk, replayable from a seed; [`NodeParts::real`] builds the
//! real ones (bound socket, fjall, development CA if none is configured). Shutdown: stop
//! accepting, let in-flight requests finish (bounded by [`DRAIN_TIMEOUT`]), close
//! connections, fsync, wait for the endpoint to go idle. [`Node::crash`] is the
//! simulation's power cut: everything stops at once, nothing is flushed.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use quinn::{AsyncUdpSocket, Endpoint, Runtime, TokioRuntime};
use quorumkv_client::clock::{system_clock, Clock};
use quorumkv_client::net::bind_udp;
use quorumkv_client::wire::FRAME_OVERHEAD;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::RecordLimits;
use crate::antientropy::{Agreement, AntiEntropy};
use crate::config::ClusterConfig;
use crate::context::NodeContext;
use crate::endpoint_config::QuicParts;
use crate::membership::{self, Membership};
use crate::metrics::ServiceCounters;
use crate::peer::detector::ping_loop;
use crate::peer::{peer_max_frame, peer_pool, FailureDetector, PeerService};
use crate::refill::Refill;
use crate::replica::Replica;
use crate::server::budget::{MemoryGauges, MemoryUse};
use crate::server::{accept_loop, ConnectionLimits, ServerContext, CLIENT_ANSWER_FRAMES, PEER_ANSWER_FRAMES};
use crate::storage::{FjallStorage, Storage, StoreOptions};
use crate::{hints, metrics, pki, tombstones};
use prometheus_client::registry::Registry;

/// The layout history's file in a node's data directory.
pub const LAYOUT_FILE: &str = "layout";

/// Longest wait for in-flight requests at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for peers to acknowledge the connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often the node checks whether storage failed fatally.
const POISON_CHECK: Duration = Duration::from_millis(500);

/// The parts a node runs on, passed in so tests and simulations can substitute them.
pub struct NodeParts {
    /// Wall clock for the clock-skew check.
    pub clock: Arc<dyn Clock>,
    /// The UDP socket of the QUIC endpoint.
    pub socket: Arc<dyn AsyncUdpSocket>,
    /// Where records are kept.
    pub storage: Arc<dyn Storage>,
    /// The QUIC endpoint's settings and the TLS configurations, with their randomness.
    pub quic: QuicParts,
    /// The operating system, or a simulation.
    pub host: Host,
    /// The operator says this node lost its disk (`quorumkv node --refill`, on every
    /// start until the log says `refilled`): it serves reads through the other replicas
    /// until each of its partitions is synced with all of them (see [`crate::refill`]).
    pub refill: bool,
    /// Where the node keeps its layout history (`None`: in memory only, a simulation).
    pub layout_file: Option<PathBuf>,
}

/// Where a node runs, for the few things that differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// A process on the operating system: work that blocks (walking the store's files)
    /// goes to tokio's blocking pool, and at shutdown the UDP address is freed at once.
    Os,
    /// A deterministic simulation on one runtime: such work runs in place (the memory
    /// engine never blocks, and a blocking pool would run it on other threads, in an
    /// order no seed fixes), and the network frees addresses itself.
    Simulated,
}

impl Host {
    /// Runs `work`, which may block, where this host runs such work.
    pub async fn run_blocking<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, tokio::task::JoinError> {
        match self {
            Host::Os => tokio::task::spawn_blocking(work).await,
            Host::Simulated => Ok(work()),
        }
    }
}

impl NodeParts {
    /// The real parts for node `id`: a socket bound to its address (or `socket`, if
    /// given, already bound), fjall in its data directory, and its TLS identity.
    /// Must run inside a tokio runtime.
    /// A node `[[nodes]]` does not list must be given its address (`quorumkv node --addr`,
    /// [`ClusterConfig::with_node_addr`]) unless it joined before and stored its layout.
    pub fn real(config: &ClusterConfig, id: &str, socket: Option<std::net::UdpSocket>) -> anyhow::Result<NodeParts> {
        let layout_file = config.node_dir(id).join(LAYOUT_FILE);
        let addr = match config.node(id) {
            Some(node) => node.addr,
            None => membership::stored_address(&layout_file, id)?.ok_or_else(|| {
                anyhow!(
                    "node {id:?} is not listed in [[nodes]] and has not joined before: give its address with --addr"
                )
            })?,
        };
        let (tls_dir, generate) = config.tls_dir();
        let identity = pki::identity(&tls_dir, id, generate).context("loading the node's TLS identity")?;
        let dir = config.node_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let clock = system_clock();
        let storage = FjallStorage::open(&dir, store_options(config), clock.clone())
            .with_context(|| format!("opening storage in {}", dir.display()))?;
        let socket = match socket {
            Some(s) => s,
            None => bind_udp(addr).with_context(|| format!("binding {addr}"))?,
        };
        let socket = TokioRuntime
            .wrap_udp_socket(socket)
            .context("registering the socket with tokio")?;
        Ok(NodeParts {
            clock: system_clock(),
            socket,
            storage: Arc::new(storage),
            quic: QuicParts::real(&identity)?,
            host: Host::Os,
            refill: false,
            layout_file: Some(layout_file),
        })
    }
}

/// A running node.
pub struct Node {
    id: String,
    endpoint: Endpoint,
    storage: Arc<dyn Storage>,
    /// State shared by the node's services.
    ctx: Arc<NodeContext>,
    /// Cancelled to begin shutdown (also by a fatal storage error).
    shutdown: CancellationToken,
    /// Every connection and request task.
    tracker: TaskTracker,
    /// Bytes held for connections (answers queued, frames received in part).
    gauges: Arc<MemoryGauges>,
    /// What one client connection may make this node hold.
    client_limits: ConnectionLimits,
    /// Where the metrics endpoint listens, if the node has one.
    metrics_addr: Option<SocketAddr>,
}

impl Node {
    /// Starts node `id` of `config` on `parts`. Must run inside a tokio runtime.
    pub fn start(config: &ClusterConfig, id: &str, parts: NodeParts) -> anyhow::Result<Node> {
        let membership = Arc::new(Membership::open(config, id, parts.layout_file.clone(), parts.host)?);
        let layout = membership.get();
        if !layout.is_member() {
            tracing::info!(
                "node {id}: no layout names it yet; it serves nothing until `quorumkv cluster add {id} ADDR`"
            );
        }
        let roster = layout.history.roster.clone();
        let QuicParts {
            endpoint: endpoint_config,
            server,
            peer: peer_tls,
        } = parts.quic;
        let endpoint =
            Endpoint::new_with_abstract_socket(endpoint_config, Some(server), parts.socket, Arc::new(TokioRuntime))
                .context("creating the QUIC endpoint")?;
        let ctx = Arc::new(NodeContext {
            id: id.to_string(),
            detector: Arc::new(FailureDetector::new(
                layout.ids(),
                config.convergence.down_after_missed_pings,
            )),
            agreement: Arc::new(Agreement::default()),
            peers: Arc::new(peer_pool(config, &roster, endpoint.clone(), peer_tls.clone())),
            anti_entropy_peers: Arc::new(peer_pool(config, &roster, endpoint.clone(), peer_tls)),
            storage: parts.storage.clone(),
            clock: parts.clock.clone(),
            limits: RecordLimits::of(config),
            convergence: config.convergence,
            counters: ServiceCounters::new(),
            refill: Refill::new(parts.refill, &layout.read, layout.me),
            membership: membership.clone(),
            host: parts.host,
        });
        if parts.refill {
            tracing::info!("node {id}: refilling; reads go through the other replicas until each partition is synced");
        }
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let replica = Arc::new(Replica::new(config, ctx.clone()));
        let peers = Arc::new(PeerService::new(
            parts.storage.clone(),
            ctx.agreement.clone(),
            parts.clock,
            membership,
            ctx.limits,
        ));
        let limits = connection_limits(config);
        let metrics = metrics::registry(ctx.clone(), replica.metrics());
        let metrics_addr = match config.node(id).and_then(|n| n.metrics_addr) {
            Some(addr) => Some(serve_metrics(addr, metrics, &shutdown, &tracker)?),
            None => None,
        };
        let server = ServerContext::new(replica, peers, shutdown.clone(), tracker.clone(), limits);
        let gauges = server.gauges.clone();
        tracker.spawn(accept_loop(endpoint.clone(), server));
        spawn_background(&ctx, &shutdown, &tracker);
        tracing::info!(
            "node {id} serving on {}",
            endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        Ok(Node {
            id: id.to_string(),
            endpoint,
            storage: parts.storage,
            ctx,
            shutdown,
            tracker,
            gauges,
            client_limits: limits.0,
            metrics_addr,
        })
    }

    /// The node id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The address the endpoint is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The address the metrics endpoint is bound to, if `metrics_addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Resolves when shutdown has begun (asked for, or storage failed).
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await
    }

    /// State shared by the node's services (status, anti-entropy, ...).
    pub fn context(&self) -> &Arc<NodeContext> {
        &self.ctx
    }

    /// Bytes this node holds for its connections now, and their peaks.
    pub fn memory(&self) -> MemoryUse {
        self.gauges.read()
    }

    /// What one client connection may make this node hold.
    pub fn client_limits(&self) -> ConnectionLimits {
        self.client_limits
    }

    /// Whether storage failed fatally (the process should exit non-zero).
    pub fn storage_failed(&self) -> bool {
        self.storage.is_poisoned()
    }

    /// Stops accepting, finishes in-flight requests, closes connections and fsyncs.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.endpoint.set_server_config(None);
        self.tracker.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait()).await.is_err() {
            tracing::warn!(
                "node {}: {} tasks still running after {DRAIN_TIMEOUT:?}; closing anyway",
                self.id,
                self.tracker.len()
            );
        }
        self.ctx.peers.close_all().await;
        self.ctx.anti_entropy_peers.close_all().await;
        self.endpoint.close(0u32.into(), b"node shutting down");
        let flushed = self.storage.flush().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.endpoint.wait_idle()).await;
        if self.ctx.host == Host::Os {
            self.release_address();
        }
        tracing::info!("node {} stopped", self.id);
        flushed.map_err(|e| anyhow!("final fsync failed: {e}"))
    }

    /// Stops everything at once, as a power cut would: no draining, no goodbye to peers,
    /// no fsync (what the storage did not sync is the simulation's to lose). The
    /// simulation unplugs the node's socket first, so that nothing more leaves it.
    pub fn crash(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.endpoint.close(0u32.into(), b"crashed");
        tracing::info!("node {} crashed", self.id);
    }
}

impl Node {
    /// Moves the endpoint to a throwaway socket so the node's address is free at once:
    /// closed connections may linger (draining, or half-open handshakes from peers that
    /// dialled while we were down) until their timeouts, and a node restarted in the same
    /// process must be able to bind its address again.
    fn release_address(&self) {
        let Ok(addr) = self.endpoint.local_addr() else { return };
        // quinn keeps the previous socket after a rebind until traffic arrives on the new
        // one; a second rebind replaces that previous socket, which closes ours.
        for _ in 0..2 {
            let throwaway = std::net::UdpSocket::bind(SocketAddr::new(addr.ip(), 0));
            if let Err(e) = throwaway.and_then(|socket| self.endpoint.rebind(socket)) {
                tracing::debug!("could not release {addr} early: {e}");
                return;
            }
        }
    }
}

/// How `config` says a node's store is opened.
pub fn store_options(config: &ClusterConfig) -> StoreOptions {
    StoreOptions {
        durability: config.durability.mode,
        interval: Duration::from_millis(config.durability.interval_ms),
        partitions: config.partitions,
        max_hints_per_node: config.convergence.max_hints_per_node,
        cache_bytes: config.storage.block_cache_mb << 20,
        memtable_bytes: config.storage.memtable_mb << 20,
    }
}

/// The limits of a client connection and of a peer connection under `config`.
pub fn connection_limits(config: &ClusterConfig) -> (ConnectionLimits, ConnectionLimits) {
    let timeout = Duration::from_millis(config.limits.frame_timeout_ms);
    let client_frame = config.limits.max_key_bytes + config.limits.max_value_bytes + FRAME_OVERHEAD;
    (
        ConnectionLimits::new(client_frame, CLIENT_ANSWER_FRAMES, timeout),
        ConnectionLimits::new(peer_max_frame(config), PEER_ANSWER_FRAMES, timeout),
    )
}

/// Starts the background services: pings, anti-entropy, hint delivery, tombstone purge
/// and the storage watch. Each stops at `shutdown`.
fn spawn_background(ctx: &Arc<NodeContext>, shutdown: &CancellationToken, tracker: &TaskTracker) {
    let ping_interval = Duration::from_millis(ctx.convergence.ping_interval_ms);
    let pings = ping_loop(
        ctx.detector.clone(),
        vec![ctx.peers.clone(), ctx.anti_entropy_peers.clone()],
        ctx.membership.clone(),
        ping_interval,
        shutdown.clone(),
    );
    tracker.spawn(pings);
    tracker.spawn(membership::mover::run(ctx.clone(), shutdown.clone()));
    tracker.spawn(AntiEntropy::new(ctx.clone()).run(shutdown.clone()));
    tracker.spawn(hints::delivery_loop(ctx.clone(), shutdown.clone()));
    tracker.spawn(tombstones::purge_loop(ctx.clone(), shutdown.clone()));
    tracker.spawn(watch_storage(ctx.storage.clone(), shutdown.clone()));
}

/// Binds `addr` and serves `registry` there until `shutdown`; returns the bound address.
fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<SocketAddr> {
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    };
    let listener = bind().with_context(|| format!("binding metrics_addr {addr} (is another process using it?)"))?;
    let bound = listener.local_addr().context("reading the metrics address")?;
    let serve = metrics::http::serve(listener, Arc::new(registry), shutdown.clone(), tracker.clone());
    tracker.spawn(serve);
    tracing::info!("metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Begins shutdown if storage fails fatally: a poisoned fjall must not keep serving.
async fn watch_storage(storage: Arc<dyn Storage>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(POISON_CHECK);
    loop {
        tokio::select! {
            biased;
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if storage.is_poisoned() {
            tracing::error!("storage failed fatally; shutting the node down");
            shutdown.cancel();
            return;
        }
    }
}
