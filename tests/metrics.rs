//! Each node's Prometheus endpoint as a scraper sees it: plain HTTP GETs of `/metrics`
//! on the node's `metrics_addr`, whose values move with the traffic the node serves,
//! its store and its failure detector; bad requests get an HTTP error and the endpoint
//! keeps serving.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::{config_text, free_addrs, wait_until, Shape, TestCluster};
use quorumkv::config::ClusterConfig;
use quorumkv::node::{Node, NodeParts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for a value to move (pings, background writes of the third replica).
const DEADLINE: Duration = Duration::from_secs(20);

/// Sends `request` to `addr` and returns the whole response (the node closes it).
async fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect to the metrics endpoint");
    stream.write_all(request).await.expect("send the request");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read the response");
    String::from_utf8(response).expect("a UTF-8 response")
}

/// One scrape: every sample, keyed by its series as printed (`name{labels}`).
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n").await;
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("`series value`");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

fn requests(op: &str, outcome: &str) -> String {
    format!("quorumkv_requests_total{{op=\"{op}\",outcome=\"{outcome}\"}}")
}

fn metrics_addr(cluster: &TestCluster, i: usize) -> SocketAddr {
    cluster.node(i).metrics_addr().expect("metrics_addr is set")
}

/// Sums `series` over the scrapes of every running node in `nodes`.
async fn total(cluster: &TestCluster, nodes: &[usize], series: &[String]) -> f64 {
    let mut sum = 0.0;
    for &i in nodes {
        let samples = scrape(metrics_addr(cluster, i)).await;
        sum += series.iter().map(|s| value(&samples, s)).sum::<f64>();
    }
    sum
}

/// Three nodes serving metrics, with fast pings and `convergence` (more settings of
/// the `[convergence]` section).
async fn three_with_metrics(convergence: &str) -> TestCluster {
    let extra = format!("[convergence]\nping_interval_ms = 100\n{convergence}");
    TestCluster::start(Shape {
        metrics: true,
        ..Shape::three().with(&extra)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_requests_storage_and_peers() {
    let mut cluster = three_with_metrics("anti_entropy_interval_ms = 200").await;
    let n1 = metrics_addr(&cluster, 0);
    let before = scrape(n1).await;
    assert_eq!(value(&before, &requests("put", "ok")), 0.0);

    let client = cluster.client().await;
    for i in 0..10 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    assert!(client.get("k1").await.unwrap().is_some());
    assert!(client.get("missing").await.unwrap().is_none());
    client.delete("k2").await.unwrap();

    // Every write reaches all three replicas (the third in the background).
    let samples = wait_until("n1 counts every write", DEADLINE, || async {
        let samples = scrape(n1).await;
        let (puts, deletes) = (
            value(&samples, &requests("put", "ok")),
            value(&samples, &requests("delete", "ok")),
        );
        match (puts, deletes) {
            (10.0, 1.0) => Ok(samples),
            other => Err(format!("puts and deletes: {other:?}")),
        }
    })
    .await;
    let latency = "quorumkv_request_duration_seconds_count{op=\"put\",outcome=\"ok\"}";
    assert_eq!(value(&samples, latency), 10.0, "one latency observation per put");
    let under_timeout = "quorumkv_request_duration_seconds_bucket{op=\"put\",outcome=\"ok\",le=\"6.5536\"}";
    assert_eq!(
        value(&samples, under_timeout),
        10.0,
        "every put answered within the bucket bounds"
    );
    assert_eq!(
        value(&samples, "quorumkv_keys"),
        10.0,
        "ten keys, the deleted one as a tombstone"
    );
    assert!(value(&samples, "quorumkv_storage_disk_bytes") > 0.0);
    let commits = value(&samples, "quorumkv_storage_commit_records_count");
    assert!(commits >= 1.0, "the writes were group-committed");
    assert!(
        value(&samples, "quorumkv_storage_commit_records_sum") >= 11.0,
        "11 writes in those commits"
    );
    assert_eq!(
        value(&samples, "quorumkv_storage_commit_duration_seconds_count"),
        commits
    );

    // Reads go to two replicas (one of them may answer a version only).
    let all = [0, 1, 2];
    let reads = |outcome: &str| [requests("get", outcome), requests("get_version", outcome)];
    assert!(
        total(&cluster, &all, &reads("ok")).await >= 2.0,
        "k1 read from two replicas"
    );
    assert!(
        total(&cluster, &all, &reads("not_found")).await >= 2.0,
        "missing read from two replicas"
    );

    for peer in ["n2", "n3"] {
        let up = format!("quorumkv_peer_up{{peer=\"{peer}\"}}");
        wait_until(&format!("n1 sees {peer} up"), DEADLINE, || async {
            match value(&scrape(n1).await, &up) {
                1.0 => Ok(()),
                other => Err(format!("{up} = {other}")),
            }
        })
        .await;
    }
    wait_until("n1 agreed with n2 through anti-entropy", DEADLINE, || async {
        let samples = scrape(n1).await;
        let rounds = value(
            &samples,
            "quorumkv_anti_entropy_rounds_total{peer=\"n2\",outcome=\"ok\"}",
        );
        let agreed = value(&samples, "quorumkv_anti_entropy_last_agreement_seconds{peer=\"n2\"}");
        match rounds >= 1.0 && agreed > 1.7e9 {
            true => Ok(()),
            false => Err(format!("rounds {rounds}, last agreement {agreed}")),
        }
    })
    .await;

    cluster.stop(2).await;
    wait_until("n1 sees n3 down", DEADLINE, || async {
        let samples = scrape(n1).await;
        let (n2, n3) = (
            value(&samples, "quorumkv_peer_up{peer=\"n2\"}"),
            value(&samples, "quorumkv_peer_up{peer=\"n3\"}"),
        );
        match (n2, n3) {
            (1.0, 0.0) => Ok(()),
            other => Err(format!("n2, n3 up: {other:?}")),
        }
    })
    .await;

    // A write n3 misses reaches it through anti-entropy once it is back.
    client.put("late", "v").await.unwrap();
    cluster.restart(2).await;
    let n3 = metrics_addr(&cluster, 2);
    let received = "quorumkv_anti_entropy_records_total{direction=\"received\"}";
    wait_until("n3 pulls the write it missed", DEADLINE, || async {
        match value(&scrape(n3).await, received) {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("{received} = {n}")),
        }
    })
    .await;
    let sent = "quorumkv_anti_entropy_records_total{direction=\"sent\"}".to_string();
    assert!(total(&cluster, &[0, 1], &[sent]).await >= 1.0, "n1 or n2 served it");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_are_counted_while_held_and_once_delivered() {
    let mut cluster = three_with_metrics("hint_delivery_interval_ms = 100").await;
    let client = cluster.client().await;
    cluster.stop(2).await;
    client.put("for-n3", "v").await.unwrap();
    let held = ["quorumkv_hints_held{owner=\"n3\"}".to_string()];
    wait_until("n1 or n2 holds a hint for n3", DEADLINE, || async {
        match total(&cluster, &[0, 1], &held).await {
            n if n >= 1.0 => Ok(()),
            n => Err(format!("hints held for n3: {n}")),
        }
    })
    .await;

    cluster.restart(2).await;
    let delivered = ["quorumkv_hints_delivered_total{owner=\"n3\"}".to_string()];
    wait_until("the hint is delivered", DEADLINE, || async {
        let delivered = total(&cluster, &[0, 1], &delivered).await;
        let held = total(&cluster, &[0, 1], &held).await;
        match (delivered, held) {
            (d, 0.0) if d >= 1.0 => Ok(()),
            other => Err(format!("delivered, still held: {other:?}")),
        }
    })
    .await;
    let received = value(
        &scrape(metrics_addr(&cluster, 2)).await,
        "quorumkv_hints_received_total",
    );
    assert!(received >= 1.0, "n3 applied the delivered hint: {received}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_http_errors_and_the_endpoint_keeps_serving() {
    let shape = Shape {
        metrics: true,
        ..Shape::single()
    };
    let cluster = TestCluster::start(shape).await;
    let addr = metrics_addr(&cluster, 0);
    let cases: [(&[u8], &str); 5] = [
        (b"\x00\xff garbage\r\n\r\n", "HTTP/1.1 400"),
        (b"GET /metrics\r\n\r\n", "HTTP/1.1 400"),
        (b"GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 404"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", "HTTP/1.1 405"),
        (&[b'x'; 20_000], "HTTP/1.1 400"),
    ];
    for (request, expected) in cases {
        let response = http(addr, request).await;
        assert!(
            response.starts_with(expected),
            "{expected} for {:?}: {response}",
            &request[..request.len().min(20)]
        );
    }
    // A client that sends half a request and goes away costs nothing.
    let mut half = TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /met").await.unwrap();
    drop(half);
    let samples = scrape(addr).await;
    assert!(samples.contains_key("quorumkv_keys"), "still serving");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_addr_in_use_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&Shape::single(), &free_addrs(1)).replace(
        "id = \"n1\"\n",
        &format!("id = \"n1\"\nmetrics_addr = \"{taken_addr}\"\n"),
    );
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    let config = ClusterConfig::load(&path).unwrap();
    let parts = NodeParts::real(&config, "n1", None).unwrap();
    let err = Node::start(&config, "n1", parts).err().expect("the port is taken");
    let message = format!("{err:#}");
    assert!(
        message.contains(&format!("binding metrics_addr {taken_addr}")),
        "{message}"
    );
}
