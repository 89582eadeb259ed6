//! The one test harness: real nodes (QUIC, TLS, fjall) on 127.0.0.1 with free ports.
//!
//! `TestCluster::start` binds every node's UDP socket first (port 0), writes a
//! cluster.toml with the addresses it got into a temporary directory, and starts the nodes
//! in-process on those sockets. Verbs: `stop`, `restart`, `client`, `get_from`;
//! `wait_until` polls a condition with a deadline and reports the last state seen.
#![allow(dead_code)]

pub mod converge;
pub mod processes;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use quorumkv::config::ClusterConfig;
use quorumkv::faults::{Faults, FaultyUdpSocket};
use quorumkv::node::{Node, NodeParts};
use quorumkv::pki;
use quorumkv_client::net::bind_udp;
use quorumkv_client::transport::MuxConnection;
use quorumkv_client::wire::{Request, Response};
use quorumkv_client::{Client, ClientConfig, Record, TlsIdentity};

/// Shape of a test cluster.
#[derive(Debug, Clone)]
pub struct Shape {
    pub nodes: usize,
    pub replication_factor: usize,
    pub n: usize,
    pub w: usize,
    pub r: usize,
    pub timeout_ms: u64,
    /// Extra cluster.toml text, e.g. a `[convergence]` section.
    pub extra: String,
    /// Whether every node serves metrics (on a free port: see `Node::metrics_addr`).
    pub metrics: bool,
}

impl Shape {
    /// Three nodes, three replicas, n=3 w=2 r=2, short timeout so failure tests are quick.
    pub fn three() -> Shape {
        Shape {
            nodes: 3,
            replication_factor: 3,
            n: 3,
            w: 2,
            r: 2,
            timeout_ms: 2_000,
            extra: String::new(),
            metrics: false,
        }
    }

    /// One node holding every partition, n=w=r=1.
    pub fn single() -> Shape {
        Shape {
            nodes: 1,
            replication_factor: 1,
            n: 1,
            w: 1,
            r: 1,
            ..Shape::three()
        }
    }

    /// This shape with extra cluster.toml text.
    pub fn with(mut self, extra: &str) -> Shape {
        self.extra.push_str(extra);
        self.extra.push('\n');
        self
    }
}

/// A cluster.toml for `addrs`, in a form tests can also edit.
pub fn config_text(shape: &Shape, addrs: &[SocketAddr]) -> String {
    let mut text = format!(
        "data_dir = \"data\"\npartitions = 256\nreplication_factor = {}\n\n[defaults]\nn = {}\nw = {}\nr = {}\ntimeout_ms = {}\n",
        shape.replication_factor, shape.n, shape.w, shape.r, shape.timeout_ms
    );
    text.push_str(&shape.extra);
    for (i, addr) in addrs.iter().enumerate() {
        text.push_str(&format!("\n[[nodes]]\nid = \"n{}\"\naddr = \"{addr}\"\n", i + 1));
        if shape.metrics {
            text.push_str("metrics_addr = \"127.0.0.1:0\"\n");
        }
    }
    text
}

/// Free loopback UDP addresses (bound together, then released for the nodes).
pub fn free_addrs(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<_> = (0..count)
        .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    sockets.iter().map(|s| s.local_addr().unwrap()).collect()
}

/// Real nodes on loopback, in this process.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub config: ClusterConfig,
    nodes: Vec<Option<Node>>,
    /// Each node's own fault switchboard, kept across restarts.
    faults: Vec<Faults>,
}

impl TestCluster {
    pub async fn start(shape: Shape) -> TestCluster {
        init_tracing();
        let dir = tempfile::tempdir().expect("temp dir");
        let sockets: Vec<std::net::UdpSocket> = (0..shape.nodes)
            .map(|_| bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind"))
            .collect();
        let addrs: Vec<SocketAddr> = sockets.iter().map(|s| s.local_addr().unwrap()).collect();
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, config_text(&shape, &addrs)).unwrap();
        let config = ClusterConfig::load(&config_path).expect("valid test config");
        let faults = (0..shape.nodes).map(|_| Faults::default()).collect();
        let mut cluster = TestCluster {
            dir,
            config_path,
            config,
            nodes: Vec::new(),
            faults,
        };
        for (i, socket) in sockets.into_iter().enumerate() {
            let node = cluster.start_node(i, Some(socket), false).await;
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    pub fn id(&self, i: usize) -> String {
        self.member(i).id.clone()
    }

    /// Node `i`: listed in cluster.toml, or started later by [`TestCluster::start_joining`].
    pub fn member(&self, i: usize) -> &quorumkv::config::NodeConfig {
        let listed = self.config.nodes.len();
        match i < listed {
            true => &self.config.nodes[i],
            false => &self.config.joining[i - listed],
        }
    }

    /// Nodes started so far (running or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts a node cluster.toml does not list (`quorumkv node --id nK --addr ADDR`), on
    /// a free address; returns its index. It serves nothing until a layout names it.
    pub async fn start_joining(&mut self) -> usize {
        let i = self.nodes.len();
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).expect("bind");
        let addr = socket.local_addr().unwrap();
        let id = format!("n{}", i + 1);
        self.config = self.config.clone().with_node_addr(&id, addr).expect("a new node");
        self.faults.push(Faults::default());
        let node = self.start_node(i, Some(socket), false).await;
        self.nodes.push(Some(node));
        i
    }

    async fn start_node(&self, i: usize, socket: Option<std::net::UdpSocket>, refill: bool) -> Node {
        let id = self.id(i);
        let socket = match socket {
            Some(s) => s,
            None => rebind(self.member(i).addr).await,
        };
        let mut parts = NodeParts::real(&self.config, &id, Some(socket)).expect("node parts");
        parts.socket = Arc::new(FaultyUdpSocket::new(parts.socket, self.faults[i].clone()));
        parts.refill = refill;
        Node::start(&self.config, &id, parts).expect("node start")
    }

    /// Cuts node `i` off from everyone (nodes and clients) until [`TestCluster::heal`].
    pub fn isolate(&self, i: usize) {
        self.faults[i].isolate();
    }

    /// Cuts the links between node `i` and each node in `others`.
    pub fn cut(&self, i: usize, others: &[usize]) {
        for &j in others {
            self.faults[i].block(self.member(j).addr);
            self.faults[j].block(self.member(i).addr);
        }
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.faults.iter().for_each(Faults::heal);
    }

    /// Deletes node `i`'s data directory (the node must be stopped).
    pub fn wipe(&self, i: usize) {
        assert!(self.nodes[i].is_none(), "stop node {i} before wiping it");
        std::fs::remove_dir_all(self.config.node_dir(&self.id(i))).expect("wipe data dir");
    }

    /// The running node `i`.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i].as_ref().expect("node is running")
    }

    /// Stops node `i` gracefully (as on SIGTERM).
    pub async fn stop(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("node is running");
        node.shutdown().await.expect("clean shutdown");
    }

    /// Starts node `i` again on its address and data directory.
    pub async fn restart(&mut self, i: usize) {
        self.restart_with(i, false).await;
    }

    /// Starts node `i` again, as `quorumkv node --refill` if `refill`.
    pub async fn restart_with(&mut self, i: usize, refill: bool) {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        let node = self.start_node(i, None, refill).await;
        self.nodes[i] = Some(node);
    }

    /// Sends `request` to node `i` alone over a connection of its own, as a client.
    pub async fn ask(&self, i: usize, request: Request) -> Response {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .unwrap();
        let tls = self.client_identity().client_config().unwrap();
        let conn = endpoint
            .connect_with(tls, self.member(i).addr, &self.id(i))
            .unwrap()
            .await
            .expect("a connection");
        let mux = MuxConnection::<Request, Response>::open(conn, 1 << 20, Default::default(), Default::default())
            .await
            .expect("streams");
        mux.call(request).await.expect("an answer")
    }

    pub fn client_identity(&self) -> TlsIdentity {
        let (tls_dir, generate) = self.config.tls_dir();
        pki::identity(&tls_dir, "client", generate).expect("client identity")
    }

    pub fn client_config(&self) -> ClientConfig {
        let seeds = self.config.nodes.iter().map(|n| n.addr).collect();
        let mut config = ClientConfig::new(seeds, self.client_identity());
        config.max_clock_skew = self.config.max_clock_skew();
        config
    }

    /// A raw QUIC connection to node `i` with the client configuration `tls` (for tests
    /// that speak the protocol frame by frame).
    pub async fn raw_connection(&self, i: usize, tls: quinn::ClientConfig) -> quinn::Connection {
        let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap();
        let node = self.member(i);
        endpoint
            .connect_with(tls, node.addr, &node.id)
            .unwrap()
            .await
            .expect("TLS handshake")
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.client_config()).await.expect("client connects")
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Shuts every running node down.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].is_some() {
                self.stop(i).await;
            }
        }
    }
}

/// Binds `addr` again after its previous owner closed it, retrying briefly while the
/// kernel releases the port.
pub async fn rebind(addr: SocketAddr) -> std::net::UdpSocket {
    wait_until(&format!("rebinding {addr}"), Duration::from_secs(10), || async move {
        bind_udp(addr).map_err(|e| e.to_string())
    })
    .await
}

/// Polls `check` until it returns `Ok`, or panics after `deadline` with the last error.
pub async fn wait_until<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if start.elapsed() > deadline => {
                panic!("{what}: not done after {deadline:?}; last state: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Every replica's own copy of `key`.
/// Waits until `client` gets an answer from node `id` (after a restart, a client may
/// still be backing off from its failed dials for a moment).
pub async fn reachable(client: &Client, id: &str) {
    wait_until(&format!("{id} answers"), Duration::from_secs(30), || async {
        client.status(id).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await
}

/// Every replica's own copy of `key`; an error names the node that did not answer.
pub async fn copies(client: &Client, ids: &[String], key: &str) -> Result<Vec<Option<Record>>, String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            client
                .get_from(id, key.to_string())
                .await
                .map_err(|e| format!("{id}: {e}"))?,
        );
    }
    Ok(out)
}

/// Log lines captured by [`capture_logs`].
pub type CapturedLogs = Arc<std::sync::Mutex<Vec<u8>>>;

/// Installs, for this test binary, a subscriber that also keeps every log line (without
/// colours) in memory; call it before anything logs. Returns the captured lines.
pub fn capture_logs() -> CapturedLogs {
    static CAPTURED: std::sync::OnceLock<CapturedLogs> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = CapturedLogs::default();
            let sink = captured.clone();
            let filter = tracing_subscriber::EnvFilter::new("info,quorumkv=debug");
            let installed = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(move || Tee(sink.clone()))
                .try_init();
            assert!(installed.is_ok(), "capture_logs must run before anything else logs");
            captured
        })
        .clone()
}

/// The captured log lines that contain `needle`.
pub fn logged(captured: &CapturedLogs, needle: &str) -> Vec<String> {
    let bytes = captured.lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Writes log output to the test's output and to the capture buffer.
struct Tee(CapturedLogs);

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(buf);
        eprint!("{}", String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,quorumkv=debug"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
