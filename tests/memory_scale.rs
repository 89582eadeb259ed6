//! Scale checks outside the default run: a real `quorumkv node` process with the default
//! 4 MiB value limit under a misbehaving client connection, its peak RSS read from /proc.
//! Run with `cargo test --release --test memory_scale -- --ignored --nocapture --test-threads 1`
//! (each prints what it measured and fails if the node's peak RSS exceeds its idle RSS
//! plus the connection bound, `ConnectionLimits::memory_bound`).

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::wait_until;
use quorumkv::config::ClusterConfig;
use quorumkv_client::wire::{encode_frame, Request, RequestFrame, ALPN, LENGTH_PREFIX};
use quorumkv_client::{Client, ClientConfig, TlsIdentity};

/// The default value limit, which these checks are about.
const BIG: usize = 4 << 20;
/// How long each check keeps the misbehaving connection open while sampling.
const SAMPLES: usize = 20;
const SAMPLE_EVERY: Duration = Duration::from_millis(500);

/// A one-node cluster (n = w = r = 1) run as a `quorumkv node` process of this build.
struct NodeProcess {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    config: ClusterConfig,
    identity: TlsIdentity,
    _dir: tempfile::TempDir,
}

impl NodeProcess {
    fn start() -> NodeProcess {
        common::init_tracing();
        let dir = tempfile::tempdir().unwrap();
        let addr = common::free_addrs(1)[0];
        let text = format!(
            "data_dir = \"data\"\nreplication_factor = 1\n[defaults]\nn = 1\nw = 1\nr = 1\n\n[[nodes]]\nid = \"n1\"\naddr = \"{addr}\"\n"
        );
        let config_path = dir.path().join("cluster.toml");
        std::fs::write(&config_path, text).unwrap();
        let config = ClusterConfig::load(&config_path).unwrap();
        let (tls_dir, _) = config.tls_dir();
        quorumkv::pki::identity(&tls_dir, "n1", true).unwrap();
        let identity = quorumkv::pki::identity(&tls_dir, "client", true).unwrap();
        let child = spawn_node(&config_path);
        NodeProcess {
            child,
            addr,
            config,
            identity,
            _dir: dir,
        }
    }

    async fn client(&self) -> Client {
        wait_until("the node answers", Duration::from_secs(30), || {
            let config = ClientConfig::new(vec![self.addr], self.identity.clone());
            async move { Client::connect(config).await.map_err(|e| e.to_string()) }
        })
        .await
    }

    async fn raw_connection(&self) -> quinn::Connection {
        let tls = self.identity.client_config_for(ALPN).unwrap();
        let socket = quorumkv_client::net::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let runtime = std::sync::Arc::new(quinn::TokioRuntime);
        let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap();
        endpoint.connect_with(tls, self.addr, "n1").unwrap().await.unwrap()
    }

    /// Peak (VmHWM) and current (VmRSS) resident memory, in KiB.
    fn rss_kib(&self) -> (usize, usize) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("/proc/PID/status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        };
        (field("VmHWM:"), field("VmRSS:"))
    }

    /// Samples the node while `client` reads the large value; returns the reads served.
    async fn serve_others_meanwhile(&self, client: &Client) -> usize {
        let mut served = 0;
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        for _ in 0..SAMPLES {
            every.tick().await;
            let got = tokio::time::timeout(Duration::from_secs(5), client.get("big")).await;
            served += usize::from(matches!(got, Ok(Ok(Some(_)))));
        }
        served
    }

    /// Prints what was measured and checks it against the bound.
    fn report(&self, idle_kib: usize, what: &str, served: usize) {
        let (peak, now) = self.rss_kib();
        let bound = quorumkv::node::connection_limits(&self.config).0.memory_bound() / 1024;
        println!(
            "{what}: node RSS idle {} MiB, peak {} MiB, now {} MiB (bound: idle + {} MiB); \
             {served}/{SAMPLES} reads of the 4 MiB value by another client served meanwhile",
            idle_kib / 1024,
            peak / 1024,
            now / 1024,
            bound / 1024
        );
        assert_eq!(served, SAMPLES, "another client was served throughout");
        assert!(
            peak <= idle_kib + bound,
            "peak RSS {peak} KiB over idle {idle_kib} KiB + {bound} KiB"
        );
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_node(config_path: &Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_quorumkv"))
        .args(["node", "--id", "n1", "--config", config_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start quorumkv node")
}

/// Before the fix the issue measured 5.2 GB for 1,300 such reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale check: run by hand with --release"]
async fn a_client_that_never_reads_4_mib_answers() {
    const GETS: u64 = 3000;
    let node = NodeProcess::start();
    let client = node.client().await;
    client.put("big", Bytes::from(vec![9u8; BIG])).await.unwrap();
    let epoch = client.epoch();
    let (_, idle) = node.rss_kib();

    let conn = node.raw_connection().await;
    let (mut send, _unread) = conn.open_bi().await.unwrap();
    let mut requests = BytesMut::new();
    for id in 1..=GETS {
        let body = Request::Get {
            epoch,
            key: Bytes::from_static(b"big"),
        };
        encode_frame(&RequestFrame { id, body }, &mut requests).unwrap();
    }
    send.write_all(&requests).await.unwrap();
    let served = node.serve_others_meanwhile(&client).await;
    node.report(idle, &format!("{GETS} unread reads of a 4 MiB value"), served);
}

/// Before the fix the issue measured 427 MiB pinned by 100 such streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale check: run by hand with --release"]
async fn a_hundred_streams_stalled_in_4_mib_frames() {
    const STREAMS: usize = 100;
    let node = NodeProcess::start();
    let client = node.client().await;
    client.put("big", Bytes::from(vec![9u8; BIG])).await.unwrap();
    let (_, idle) = node.rss_kib();

    let conn = node.raw_connection().await;
    let max_frame = quorumkv::node::connection_limits(&node.config).0.max_frame;
    let mut writers = Vec::new();
    for _ in 0..STREAMS {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut bytes = (max_frame as u32).to_le_bytes().to_vec();
        bytes.resize(LENGTH_PREFIX + max_frame - 64 * 1024, 0x90);
        // Most of these writes block: the node reads two frames at a time.
        writers.push(tokio::spawn(async move {
            let _ = send.write_all(&bytes).await;
            (send, recv)
        }));
    }
    let served = node.serve_others_meanwhile(&client).await;
    node.report(
        idle,
        &format!("{STREAMS} streams stalled 64 KiB before the end of a 4 MiB frame"),
        served,
    );
    writers.iter().for_each(|w| w.abort());
}
