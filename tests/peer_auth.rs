//! Who may speak the node-to-node protocol, and what a node accepts through it: only a
//! member's node certificate is served on the peer ALPN, a request cannot claim another
//! member, and records arriving by peers (pushed, or pulled by anti-entropy) get the
//! checks a client write gets. Also: a client does not follow a far-future version it
//! reads, and failed handshakes are logged at WARN with the remote address.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{copies, wait_until, Shape, TestCluster};
use quorumkv::peer::{KeyedRecord, PeerRequest, PeerResponse};
use quorumkv::pki::{self, Role};
use quorumkv_client::clock::{Clock, SystemClock};
use quorumkv_client::net::bind_udp;
use quorumkv_client::tls::layout;
use quorumkv_client::transport::FrameReader;
use quorumkv_client::wire::{decode, encode_frame, Frame, Record, ALPN, PEER_ALPN};
use quorumkv_client::{TlsIdentity, Version, WriteOptions};

/// Ten years, in microseconds: the lead of the record in the report that found the hole.
const TEN_YEARS_MICROS: u64 = 10 * 365 * 24 * 3600 * 1_000_000;
/// Longest wait for one raw peer answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Anti-entropy off: only the requests a test sends record agreement.
const ANTI_ENTROPY_OFF: &str = "[convergence]\nanti_entropy_interval_ms = 3600000";
/// Anti-entropy every 200 ms.
const ANTI_ENTROPY_FAST: &str = "[convergence]\nanti_entropy_interval_ms = 200";

/// A raw QUIC connection to node `i` with `identity`, speaking `alpn`.
async fn dial(cluster: &TestCluster, i: usize, identity: &TlsIdentity, alpn: &[u8]) -> quinn::Connection {
    let tls = identity.client_config_for(alpn).unwrap();
    dial_with(cluster, i, tls).await.expect("TLS handshake")
}

async fn dial_with(
    cluster: &TestCluster,
    i: usize,
    tls: quinn::ClientConfig,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let runtime = Arc::new(quinn::TokioRuntime);
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap();
    let node = &cluster.config.nodes[i];
    endpoint.connect_with(tls, node.addr, &node.id).unwrap().await
}

/// Sends one peer request on a new stream and reads its answer; an error says why none came.
async fn call(conn: &quinn::Connection, request: PeerRequest) -> Result<PeerResponse, String> {
    let attempt = async {
        let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        let mut frame = BytesMut::new();
        encode_frame(&Frame { id: 1, body: request }, &mut frame).unwrap();
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, 64 << 20);
        match reader.next_frame().await {
            Ok(Some(body)) => Ok(decode::<Frame<PeerResponse>>(&body).unwrap().body),
            Ok(None) => Err("stream ended without an answer".to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    tokio::time::timeout(ANSWER_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| Err("no answer".to_string()))
}

/// The reason the node gave for closing `conn`.
async fn close_reason(conn: &quinn::Connection) -> String {
    match tokio::time::timeout(ANSWER_TIMEOUT, conn.closed()).await {
        Ok(quinn::ConnectionError::ApplicationClosed(close)) => String::from_utf8_lossy(&close.reason).into_owned(),
        Ok(other) => panic!("closed otherwise than by the node: {other}"),
        Err(_) => panic!("the node kept the connection open"),
    }
}

fn record(micros: u64, value: &'static str) -> Record {
    Record {
        version: Version { micros, writer: 42 },
        value: Some(Bytes::from_static(value.as_bytes())),
    }
}

fn push(key: &'static str, record: Record) -> KeyedRecord {
    KeyedRecord {
        key: Bytes::from_static(key.as_bytes()),
        record,
    }
}

fn now() -> u64 {
    SystemClock.now_micros()
}

fn tls_dir(cluster: &TestCluster) -> std::path::PathBuf {
    cluster.config.tls_dir().0
}

/// Writes `value` under `key` to all three replicas; returns the version.
async fn put_everywhere(cluster: &TestCluster, key: &str, value: &str) -> Version {
    let options = WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let client = cluster.client().await;
    client
        .put_with(key.to_string(), value.to_string(), &options)
        .await
        .unwrap()
}

async fn values(cluster: &TestCluster, key: &str) -> Vec<Option<Bytes>> {
    let client = cluster.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    let copies = copies(&client, &ids, key).await.unwrap();
    copies.into_iter().map(|c| c.and_then(|r| r.value)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_certificate_cannot_push_records_through_the_peer_protocol() {
    let cluster = TestCluster::start(Shape::three()).await;
    put_everywhere(&cluster, "k", "legit").await;

    let conn = dial(&cluster, 0, &cluster.client_identity(), PEER_ALPN).await;
    let forged = PeerRequest::Exchange {
        push: vec![push("k", record(now() + TEN_YEARS_MICROS, "forged"))],
        pull: Vec::new(),
    };
    let answer = call(&conn, forged).await;
    assert!(answer.is_err(), "the push is not served: {answer:?}");
    let reason = close_reason(&conn).await;
    assert!(reason.contains("not a node certificate"), "{reason}");

    let legit = Some(Bytes::from_static(b"legit"));
    assert_eq!(values(&cluster, "k").await, vec![legit.clone(), legit.clone(), legit]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_that_do_not_name_a_member_node_are_refused() {
    let cluster = TestCluster::start(Shape::three()).await;
    let dir = tls_dir(&cluster);
    // A node certificate from the cluster CA, for a name that is not a member.
    let intruder = pki::identity(&dir, "intruder", true).unwrap();
    // A client certificate from the cluster CA whose name is a member's id.
    let lookalike_dir = tempfile::tempdir().unwrap();
    for file in [layout::CA_CERT, layout::CA_KEY] {
        std::fs::copy(dir.join(file), lookalike_dir.path().join(file)).unwrap();
    }
    let lookalike = pki::identity_as(lookalike_dir.path(), "n2", Role::Client, true).unwrap();

    let cases = [(intruder, "names no member"), (lookalike, "not a node certificate")];
    for (identity, expected) in cases {
        let conn = dial(&cluster, 0, &identity, PEER_ALPN).await;
        let answer = call(&conn, ping()).await;
        assert!(answer.is_err(), "not served: {answer:?}");
        let reason = close_reason(&conn).await;
        assert!(reason.contains(expected), "expected {expected:?} in {reason:?}");
    }
    // The same CA's node certificates still speak it.
    let n2 = pki::identity(&dir, "n2", false).unwrap();
    let conn = dial(&cluster, 0, &n2, PEER_ALPN).await;
    let answer = call(&conn, ping()).await;
    assert!(matches!(answer, Ok(PeerResponse::Pong { .. })), "{answer:?}");
    cluster.shutdown().await;
}

/// The partitions n3 shares with n1 and n2 (all of them: three nodes, three replicas),
/// with n3's root hashes, once its trees are built.
async fn roots_of_n3(cluster: &TestCluster) -> Vec<(u32, u64)> {
    let ctx = cluster.node(2).context().clone();
    wait_until("n3's trees are built", Duration::from_secs(30), || {
        let ready = ctx.storage.forest().is_ready();
        async move { ready.then_some(()).ok_or_else(|| "not ready".to_string()) }
    })
    .await;
    let forest = ctx.storage.forest();
    ctx.layout()
        .my_partitions()
        .into_iter()
        .map(|p| (p, forest.root(p)))
        .collect()
}

/// A ping that carries no layout history.
fn ping() -> PeerRequest {
    PeerRequest::Ping {
        digest: 0,
        layout: None,
    }
}

/// Partitions of n3 that record an agreement with `peer`.
async fn agreed_with(cluster: &TestCluster, peer: &str) -> usize {
    let client = cluster.client().await;
    let status = client.status("n3").await.unwrap();
    let pairs = status.partitions.iter().flat_map(|p| &p.replicas);
    pairs
        .filter(|r| r.peer == peer && r.last_agreed_micros.is_some())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_claim_agreement_for_another_member() {
    let cluster = TestCluster::start(Shape::three().with(ANTI_ENTROPY_OFF)).await;
    let roots = roots_of_n3(&cluster).await;
    let partitions = roots.len();
    let n1 = pki::identity(&tls_dir(&cluster), "n1", false).unwrap();
    let conn = dial(&cluster, 2, &n1, PEER_ALPN).await;

    let spoofed = PeerRequest::Roots {
        from: "n2".into(),
        roots: roots.clone(),
    };
    let answer = call(&conn, spoofed).await;
    assert!(
        matches!(&answer, Ok(PeerResponse::Error(e)) if e.contains("n1")),
        "{answer:?}"
    );
    assert_eq!(agreed_with(&cluster, "n2").await, 0, "no agreement recorded for n2");

    // Its own roots are answered, and recorded for n1 (the check is not a blanket refusal).
    let own = PeerRequest::Roots {
        from: "n1".into(),
        roots,
    };
    let answer = call(&conn, own).await;
    assert_eq!(answer, Ok(PeerResponse::Inner { partitions: Vec::new() }));
    assert_eq!(agreed_with(&cluster, "n1").await, partitions);
    assert_eq!(agreed_with(&cluster, "n2").await, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_pushing_a_far_future_record_is_refused() {
    let cluster = TestCluster::start(Shape::three()).await;
    put_everywhere(&cluster, "k", "legit").await;
    let n2 = pki::identity(&tls_dir(&cluster), "n2", false).unwrap();
    let conn = dial(&cluster, 0, &n2, PEER_ALPN).await;

    let request = PeerRequest::Exchange {
        push: vec![
            push("k", record(now() + TEN_YEARS_MICROS, "forged")),
            push("fresh", record(now(), "handed-off")),
        ],
        pull: Vec::new(),
    };
    let answer = call(&conn, request).await.unwrap();
    let PeerResponse::Exchanged { applied, .. } = answer else {
        panic!("unexpected answer {answer:?}");
    };
    assert_eq!(
        applied,
        vec![false, true],
        "the far-future record is refused, the other applied"
    );

    let legit = Some(Bytes::from_static(b"legit"));
    assert_eq!(values(&cluster, "k").await, vec![legit.clone(), legit.clone(), legit]);
    let client = cluster.client().await;
    client.put("k", "later").await.expect("the key stays writable");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anti_entropy_does_not_spread_a_far_future_record() {
    let cluster = TestCluster::start(Shape::three().with(ANTI_ENTROPY_FAST)).await;
    // Planted straight into n2's storage, as a node with a broken clock might hold it,
    // next to a record anti-entropy should spread.
    let storage = cluster.node(1).context().storage.clone();
    let far = record(now() + TEN_YEARS_MICROS, "far");
    storage.apply(Bytes::from_static(b"far"), far).await.unwrap();
    storage
        .apply(Bytes::from_static(b"near"), record(now(), "near"))
        .await
        .unwrap();

    // Both keys are pulled in the same sync, so once "near" arrived, "far" was tried.
    wait_until("anti-entropy spreads \"near\"", Duration::from_secs(30), || async {
        let near = values(&cluster, "near").await;
        near.iter()
            .all(Option::is_some)
            .then_some(())
            .ok_or(format!("{near:?}"))
    })
    .await;
    let far = values(&cluster, "far").await;
    assert_eq!(far, vec![None, Some(Bytes::from_static(b"far")), None]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_a_far_future_version_still_writes() {
    let cluster = TestCluster::start(Shape::three()).await;
    for i in 0..3 {
        let storage = cluster.node(i).context().storage.clone();
        let far = record(now() + TEN_YEARS_MICROS, "far");
        storage.apply(Bytes::from_static(b"poisoned"), far).await.unwrap();
    }
    let client = cluster.client().await;
    let read = client.get("poisoned").await.unwrap();
    assert_eq!(read.map(|v| v.value), Some(Bytes::from_static(b"far")));

    let version = client.put("other", "v").await.expect("the next write is not refused");
    assert!(version.micros < now() + TEN_YEARS_MICROS / 2, "{version}");
    cluster.shutdown().await;
}

/// Log lines at WARN and above, captured for one test thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A TLS client that trusts the cluster CA but presents no certificate.
fn anonymous_tls(identity: &TlsIdentity) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(identity.ca.clone()).unwrap();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    quinn::ClientConfig::new(Arc::new(quic))
}

// A current-thread runtime: the nodes run on this test's thread, whose log this captures.
#[tokio::test]
async fn failed_handshakes_and_refused_peers_are_logged_at_warn_with_the_address() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let cluster = TestCluster::start(Shape::three()).await;

    // Kept open until the lines are seen: the node, not this side, ends the handshake.
    let _anonymous = dial_with(&cluster, 0, anonymous_tls(&cluster.client_identity())).await;
    let refused = dial(&cluster, 0, &cluster.client_identity(), PEER_ALPN).await;
    close_reason(&refused).await;

    let lines = wait_until("both WARN lines", Duration::from_secs(10), || {
        let text = captured.text();
        let handshake = text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("TLS handshake with 127.0.0.1:"));
        let peer = text
            .lines()
            .any(|l| l.contains("WARN") && l.contains("refused a peer connection from 127.0.0.1:"));
        async move { (handshake && peer).then_some(text.clone()).ok_or(text) }
    })
    .await;
    assert!(lines.contains("not a node certificate"), "{lines}");
    cluster.shutdown().await;
}
