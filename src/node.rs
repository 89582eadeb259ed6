//! A node: wires config, TLS, storage, the replica and the QUIC endpoint together, and
//! shuts them down in order.
//!
//! [`Node::start`] takes its clock, UDP socket and storage as parameters ([`NodeParts`])
//! so that a simulation can run nodes over an in-memory network and disk;
//! [`NodeParts::real`] builds the real ones (bound socket, fjall, development CA if none
//! is configured). Shutdown: stop accepting, let in-flight requests finish (bounded by
//! [`DRAIN_TIMEOUT`]), close connections, fsync, wait for the endpoint to go idle.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use quinn::{AsyncUdpSocket, Endpoint, EndpointConfig, Runtime, TokioRuntime};
use quorumkv_client::clock::{system_clock, Clock};
use quorumkv_client::net::bind_udp;
use quorumkv_client::ring::Ring;
use quorumkv_client::tls::TlsIdentity;
use quorumkv_client::wire::FRAME_OVERHEAD;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::ClusterConfig;
use crate::pki;
use crate::replica::Replica;
use crate::server::{accept_loop, ServerContext};
use crate::storage::{FjallStorage, Storage};

/// Longest wait for in-flight requests at shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for peers to acknowledge the connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// This node's certificate and the cluster CA.
    pub identity: TlsIdentity,
}

impl NodeParts {
    /// The real parts for node `id`: a socket bound to its address (or `socket`, if
    /// given, already bound), fjall in its data directory, and its TLS identity.
    /// Must run inside a tokio runtime.
    pub fn real(config: &ClusterConfig, id: &str, socket: Option<std::net::UdpSocket>) -> anyhow::Result<NodeParts> {
        let node = config
            .node(id)
            .ok_or_else(|| anyhow!("node {id:?} is not listed in [[nodes]]"))?;
        let (tls_dir, generate) = config.tls_dir();
        let identity = pki::identity(&tls_dir, id, generate).context("loading the node's TLS identity")?;
        let dir = config.node_dir(id);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let interval = Duration::from_millis(config.durability.interval_ms);
        let storage = FjallStorage::open(&dir, config.durability.mode, interval)
            .with_context(|| format!("opening storage in {}", dir.display()))?;
        let socket = match socket {
            Some(s) => s,
            None => bind_udp(node.addr).with_context(|| format!("binding {}", node.addr))?,
        };
        let socket = TokioRuntime
            .wrap_udp_socket(socket)
            .context("registering the socket with tokio")?;
        Ok(NodeParts {
            clock: system_clock(),
            socket,
            storage: Arc::new(storage),
            identity,
        })
    }
}

/// A running node.
pub struct Node {
    id: String,
    endpoint: Endpoint,
    storage: Arc<dyn Storage>,
    /// Cancelled to begin shutdown (also by a fatal storage error).
    shutdown: CancellationToken,
    /// Every connection and request task.
    tracker: TaskTracker,
}

impl Node {
    /// Starts node `id` of `config` on `parts`. Must run inside a tokio runtime.
    pub fn start(config: &ClusterConfig, id: &str, parts: NodeParts) -> anyhow::Result<Node> {
        let ring = Ring::new(&config.node_ids(), config.partitions, config.replication_factor)?;
        let server_config = parts.identity.server_config()?;
        let endpoint = Endpoint::new_with_abstract_socket(
            EndpointConfig::default(),
            Some(server_config),
            parts.socket,
            Arc::new(TokioRuntime),
        )
        .context("creating the QUIC endpoint")?;
        let replica = Arc::new(Replica::new(config, &ring, parts.storage.clone(), parts.clock));
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let max_frame = config.limits.max_key_bytes + config.limits.max_value_bytes + FRAME_OVERHEAD;
        let ctx = ServerContext::new(replica, shutdown.clone(), tracker.clone(), max_frame);
        tracker.spawn(accept_loop(endpoint.clone(), ctx));
        tracker.spawn(watch_storage(parts.storage.clone(), shutdown.clone()));
        tracing::info!(
            "node {id} serving on {}",
            endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        Ok(Node {
            id: id.to_string(),
            endpoint,
            storage: parts.storage,
            shutdown,
            tracker,
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

    /// Resolves when shutdown has begun (asked for, or storage failed).
    pub async fn stopping(&self) {
        self.shutdown.cancelled().await
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
                "node {}: requests still running after {DRAIN_TIMEOUT:?}; closing anyway",
                self.id
            );
        }
        self.endpoint.close(0u32.into(), b"node shutting down");
        let flushed = self.storage.flush().await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.endpoint.wait_idle()).await;
        tracing::info!("node {} stopped", self.id);
        flushed.map_err(|e| anyhow!("final fsync failed: {e}"))
    }
}

/// Begins shutdown if storage fails fatally: a poisoned fjall must not keep serving.
async fn watch_storage(storage: Arc<dyn Storage>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(POISON_CHECK);
    loop {
        tokio::select! {
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
