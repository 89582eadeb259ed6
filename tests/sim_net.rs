//! The simulator's in-memory network (issue 16 item 2): datagrams and real quinn/rustls
//! connections over it on a paused tokio clock, with loss, duplication, jitter and
//! one-way cuts, deterministic per seed.

use std::future::poll_fn;
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::udp::RecvMeta;
use quinn::{AsyncUdpSocket, ConnectionError, Endpoint};
use quorumkv::sim::identity::SimIdentities;
use quorumkv::sim::net::{LinkConfig, SimNetwork, SimSocket};
use quorumkv::sim::quic;
use quorumkv::sim::trace::TraceKind;
use tokio::time::Instant;

/// The node's address on the simulated network.
const SERVER: &str = "127.0.0.1:4433";
/// The client's.
const CLIENT: &str = "127.0.0.2:4433";
/// The node id the client dials (a name on the node certificate).
const NODE: &str = "n1";
/// Largest message either side reads.
const MAX_MESSAGE: usize = 1024;
/// The idle timeout both sides configure (client/src/tls.rs).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long (simulated) a raw socket waits for a datagram before the test fails: far
/// beyond the links' latency and jitter.
const RECV_DEADLINE: Duration = Duration::from_secs(1);

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// A bad network: 10% loss, 10% duplication, 2 ms latency with up to 5 ms jitter.
fn lossy() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(2),
        jitter: Duration::from_millis(5),
        loss: 0.1,
        duplicate: 0.1,
    }
}

fn identities() -> SimIdentities {
    SimIdentities::generate(&[NODE, "client"]).expect("certificates")
}

/// A paused current-thread runtime, as the simulator runs on.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// A node endpoint on `net` that answers every stream with `echo:` and what it read.
fn echo_server(net: &SimNetwork, ids: &SimIdentities, seed: u64) -> Endpoint {
    let endpoint = quic::endpoint(net, addr(SERVER), seed, ids.get(NODE).expect("node"), true).expect("server");
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let Ok(request) = recv.read_to_end(MAX_MESSAGE).await else {
                        continue;
                    };
                    let _ = send.write_all(&[b"echo:".as_slice(), &request].concat()).await;
                    let _ = send.finish();
                }
            });
        }
    });
    endpoint
}

fn client(net: &SimNetwork, ids: &SimIdentities, seed: u64) -> Endpoint {
    quic::endpoint(net, addr(CLIENT), seed, ids.get("client").expect("client"), false).expect("client")
}

/// Dials the node and completes the handshake.
async fn connect(client: &Endpoint) -> quinn::Connection {
    let connecting = client.connect(addr(SERVER), NODE).expect("connect");
    connecting.await.expect("handshake")
}

async fn request(conn: &quinn::Connection, message: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    send.write_all(message).await.expect("write");
    send.finish().expect("finish");
    recv.read_to_end(MAX_MESSAGE).await.expect("read answer")
}

/// Connects and exchanges `count` messages, one every `every`; returns the answers.
async fn exchange(net: &SimNetwork, ids: &SimIdentities, seed: u64, count: u32, every: Duration) -> Vec<String> {
    let _server = echo_server(net, ids, seed);
    let client = client(net, ids, seed.wrapping_add(1));
    let conn = connect(&client).await;
    let start = Instant::now();
    let mut answers = Vec::new();
    for i in 0..count {
        tokio::time::sleep_until(start + every * i).await;
        let answer = request(&conn, format!("message {i}").as_bytes()).await;
        answers.push(String::from_utf8_lossy(&answer).into_owned());
    }
    answers
}

fn expected(count: u32) -> Vec<String> {
    (0..count).map(|i| format!("echo:message {i}")).collect()
}

#[tokio::test(start_paused = true)]
async fn quic_over_a_lossy_duplicating_jittery_network_delivers_every_message() {
    let net = SimNetwork::new(1);
    net.set_default_link(lossy());
    let ids = identities();
    let answers = exchange(&net, &ids, 1, 100, Duration::ZERO).await;
    assert_eq!(answers, expected(100));
    assert!(net.count(TraceKind::Lost) > 0, "no datagram was lost");
    assert!(net.count(TraceKind::Duplicated) > 0, "no datagram was duplicated");
}

/// Runs the lossy exchange on a fresh paused runtime; returns the trace hash.
fn lossy_run(ids: &SimIdentities, seed: u64) -> blake3::Hash {
    paused_runtime().block_on(async {
        let net = SimNetwork::new(seed);
        net.set_default_link(lossy());
        assert_eq!(
            exchange(&net, ids, seed, 30, Duration::from_millis(50)).await,
            expected(30)
        );
        net.trace_hash()
    })
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let ids = identities();
    let first = lossy_run(&ids, 7);
    assert_eq!(first, lossy_run(&ids, 7), "same seed, different trace");
    assert_ne!(first, lossy_run(&ids, 8), "different seeds, same trace");
}

#[tokio::test(start_paused = true)]
async fn a_one_way_cut_times_the_connection_out_in_simulated_time_and_healing_reconnects() {
    let net = SimNetwork::new(3);
    let ids = identities();
    let _server = echo_server(&net, &ids, 3);
    let client = client(&net, &ids, 4);
    let conn = connect(&client).await;
    assert_eq!(request(&conn, b"before").await, b"echo:before");

    net.cut(addr(SERVER), addr(CLIENT));
    let (sim_start, wall_start) = (Instant::now(), std::time::Instant::now());
    // A deadline in simulated time: on a paused clock a connection that never times out
    // would otherwise keep the test spinning through keep-alives forever.
    let closed = tokio::time::timeout(2 * IDLE_TIMEOUT, conn.closed())
        .await
        .expect("the connection outlived twice its idle timeout behind a one-way cut");
    let (simulated, wall) = (sim_start.elapsed(), wall_start.elapsed());
    assert!(matches!(closed, ConnectionError::TimedOut), "closed by {closed:?}");
    assert!(
        simulated >= IDLE_TIMEOUT,
        "timed out after {simulated:?} of simulated time"
    );
    assert!(wall < IDLE_TIMEOUT, "the simulated timeout took {wall:?} of wall time");
    assert!(net.count(TraceKind::Cut) > 0, "the cut dropped nothing");

    net.heal(addr(SERVER), addr(CLIENT));
    let conn = connect(&client).await;
    assert_eq!(request(&conn, b"after").await, b"echo:after");
}

#[tokio::test(start_paused = true)]
async fn twenty_simulated_seconds_of_lossy_traffic_take_little_wall_time() {
    let net = SimNetwork::new(5);
    net.set_default_link(lossy());
    let ids = identities();
    let (sim_start, wall_start) = (Instant::now(), std::time::Instant::now());
    let answers = exchange(&net, &ids, 5, 200, Duration::from_millis(100)).await;
    let (simulated, wall) = (sim_start.elapsed(), wall_start.elapsed());
    assert_eq!(answers, expected(200));
    assert!(simulated >= Duration::from_secs(19), "only {simulated:?} simulated");
    let rate = simulated.as_secs_f64() / wall.as_secs_f64();
    println!(
        "{simulated:?} simulated in {wall:?} of wall time: {rate:.0} simulated s per wall s, \
         {:.1} wall s per simulated hour ({} datagrams sent)",
        3600.0 / rate,
        net.count(TraceKind::Send)
    );
}

/// Receives one datagram on a simulated socket, failing after a second of simulated time
/// (a paused clock with nothing left to deliver would otherwise wait forever).
async fn recv(socket: &SimSocket) -> (SocketAddr, Vec<u8>) {
    let datagram = poll_fn(|cx| {
        let mut buf = [0u8; MAX_MESSAGE];
        let mut meta = [RecvMeta::default()];
        socket
            .poll_recv(cx, &mut [IoSliceMut::new(&mut buf)], &mut meta)
            .map(|read| {
                assert_eq!(read.expect("recv"), 1);
                (meta[0].addr, buf[..meta[0].len].to_vec())
            })
    });
    tokio::time::timeout(RECV_DEADLINE, datagram)
        .await
        .expect("no datagram arrived")
}

/// Sends 0..100 from a to b over a jittery link; returns what b received, in order.
async fn datagrams_in_arrival_order(seed: u64) -> Vec<u8> {
    let net = SimNetwork::new(seed);
    net.set_default_link(LinkConfig {
        jitter: Duration::from_millis(5),
        ..LinkConfig::default()
    });
    let (a, b) = (net.bind(addr(CLIENT)).expect("a"), net.bind(addr(SERVER)).expect("b"));
    for i in 0..100u8 {
        send(&a, addr(SERVER), &[i]);
    }
    let mut received = Vec::new();
    for _ in 0..100 {
        let (from, payload) = recv(&b).await;
        assert_eq!(from, addr(CLIENT));
        received.extend(payload);
    }
    received
}

fn send(socket: &Arc<SimSocket>, to: SocketAddr, payload: &[u8]) {
    let transmit = quinn::udp::Transmit {
        destination: to,
        ecn: None,
        contents: payload,
        segment_size: None,
        src_ip: None,
    };
    socket.try_send(&transmit).expect("send");
}

#[tokio::test(start_paused = true)]
async fn jitter_reorders_datagrams_the_same_way_for_the_same_seed() {
    let first = datagrams_in_arrival_order(11).await;
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        (0..100).collect::<Vec<u8>>(),
        "lost or duplicated on a clean link"
    );
    assert_ne!(first, sorted, "5 ms of jitter reordered nothing");
    assert_eq!(first, datagrams_in_arrival_order(11).await);
    assert_ne!(first, datagrams_in_arrival_order(12).await);
}

#[tokio::test(start_paused = true)]
async fn a_cut_is_one_way_and_heals() {
    let net = SimNetwork::new(1);
    let (a, b) = (net.bind(addr(CLIENT)).expect("a"), net.bind(addr(SERVER)).expect("b"));
    net.cut(addr(CLIENT), addr(SERVER));
    send(&a, addr(SERVER), b"dropped");
    send(&b, addr(CLIENT), b"reverse");
    assert_eq!(recv(&a).await.1, b"reverse");
    net.heal(addr(CLIENT), addr(SERVER));
    send(&a, addr(SERVER), b"healed");
    assert_eq!(recv(&b).await.1, b"healed", "the datagram sent during the cut arrived");
    assert_eq!(net.count(TraceKind::Cut), 1);
    assert!(net.bind(addr(CLIENT)).is_err(), "two sockets on one address");
    assert!(net.bind(addr("10.0.0.1:1")).is_err(), "a non-loopback address");
}
