//! Reads, writes and deletes through the real path: client crate → QUIC/TLS → nodes → fjall.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::converge::in_agreement;
use common::{copies, reachable, wait_until, Shape, TestCluster};
use quorumkv_client::clock::Clock;
use quorumkv_client::{Client, ClientError, FailureReason, ReadOptions, RepairMode, WriteOptions};

const DEADLINE: Duration = Duration::from_secs(20);

fn w(n: usize, w: usize) -> WriteOptions {
    WriteOptions {
        n: Some(n),
        w: Some(w),
        ..Default::default()
    }
}

fn r(n: usize, r: usize) -> ReadOptions {
    ReadOptions {
        n: Some(n),
        r: Some(r),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_round_trip() {
    let cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    assert_eq!(
        client.get("greeting").await.unwrap(),
        None,
        "unknown key reads as not found"
    );
    let v1 = client.put("greeting", "hello").await.unwrap();
    let found = client.get("greeting").await.unwrap().expect("written key is found");
    assert_eq!((found.value, found.version), (Bytes::from("hello"), v1));
    let v2 = client.put("greeting", "hello again").await.unwrap();
    assert!(v2 > v1, "a later write gets a newer version");
    assert_eq!(client.get("greeting").await.unwrap().unwrap().value, "hello again");
    let v3 = client.delete("greeting").await.unwrap();
    assert!(v3 > v2);
    assert_eq!(
        client.get("greeting").await.unwrap(),
        None,
        "deleted key reads as not found"
    );
    let big = Bytes::from(vec![7u8; 1 << 20]);
    client.put("big", big.clone()).await.unwrap();
    assert_eq!(
        client.get("big").await.unwrap().unwrap().value,
        big,
        "1 MiB value on its own stream"
    );
    cluster.shutdown().await;
}

/// A sloppy write counts each node once: with n3 cut off, the hint for n3 can only go to
/// n1 or n2, which hold their own copy already, so w = 3 is two copies and must fail,
/// while w = 2 succeeds and n3 gets its copy through the hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sloppy_write_counts_each_node_once() {
    let cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    cluster.isolate(2);
    let sloppy = |w| WriteOptions {
        sloppy: true,
        timeout: Some(Duration::from_secs(1)),
        ..self::w(3, w)
    };
    // A read that waits for n3 in vain marks it down, so that the write below hands n3's
    // copy to a fallback at once (not only at its deadline, too late to count).
    let all = ReadOptions {
        timeout: Some(Duration::from_secs(1)),
        ..r(3, 3)
    };
    client.get_with("k", &all).await.unwrap_err();
    let err = client.put_with("k", "three", &sloppy(3)).await.unwrap_err();
    assert!(
        matches!(err, ClientError::Unavailable { acked: 2, .. }),
        "two nodes are two copies, whatever hints they hold: {err:?}"
    );
    let written = client.put_with("k", "two", &sloppy(2)).await.unwrap();
    cluster.heal();
    wait_until("n3 gets its copy through the hint", Duration::from_secs(30), || async {
        match client.get_from("n3", "k").await {
            Ok(Some(record)) if record.version >= written => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_quorums_of_two_still_work() {
    let mut cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    client.put_with("k", "before", &w(3, 3)).await.unwrap();
    cluster.stop(2).await;
    client
        .put_with("k", "after", &w(3, 2))
        .await
        .expect("w=2 with one node down");
    assert_eq!(client.get_with("k", &r(3, 2)).await.unwrap().unwrap().value, "after");

    let err = client.put_with("k", "all", &w(3, 3)).await.unwrap_err();
    let ClientError::Unavailable {
        needed,
        acked,
        failures,
        ..
    } = &err
    else {
        panic!("unexpected error {err}")
    };
    assert_eq!((*needed, *acked), (3, 2), "{err}");
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].node, "n3", "{err}");
    let message = err.to_string();
    assert!(
        message.contains("needed 3") && message.contains("2 acked") && message.contains("n3"),
        "{message}"
    );

    let err = client.get_with("k", &r(3, 3)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Unavailable {
                needed: 3,
                acked: 2,
                ..
            }
        ),
        "{err}"
    );
    cluster.shutdown().await;
}

/// A key whose first replica, the one a read asks for the record (the others are asked
/// only for its version), is member `first`.
fn key_read_from(client: &Client, first: usize, prefix: &str) -> String {
    let ring = client.ring();
    let led = |key: &String| ring.replicas(ring.partition_of(key.as_bytes())).first() == Some(&first);
    (0..).map(|i| format!("{prefix}{i}")).find(led).unwrap()
}

/// Runs `change` with n1 stopped, so that n1 keeps what it held before.
async fn while_n1_is_down<F: std::future::Future>(cluster: &mut TestCluster, client: &Client, change: F) -> F::Output {
    cluster.stop(0).await;
    let out = change.await;
    // The sends to n1 must have failed before n1 is back, or they would deliver.
    assert!(client.finish_background(DEADLINE).await);
    cluster.restart(0).await;
    reachable(client, "n1").await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_returns_the_newest_of_its_answers() {
    let mut cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    let no_repair = ReadOptions {
        repair: RepairMode::Off,
        ..r(3, 2)
    };
    // n1 is asked for the record and holds an older one than the version-only answers
    // of n2 and n3 announce: the read fetches the newest from one of them.
    let key = key_read_from(&client, 0, "k");
    let old = client.put_with(key.clone(), "old", &w(3, 3)).await.unwrap();
    let new = while_n1_is_down(&mut cluster, &client, client.put_with(key.clone(), "new", &w(3, 2))).await;
    let new = new.unwrap();
    let held = copies(&client, &ids, &key).await.unwrap();
    assert_eq!(
        held[0].as_ref().map(|r| r.version),
        Some(old),
        "n1 missed the second write"
    );
    for _ in 0..10 {
        let found = client.get_with(key.clone(), &no_repair).await.unwrap().unwrap();
        assert_eq!((found.value, found.version), (Bytes::from("new"), new));
    }
    // A newest version that is a delete needs no record: the key reads as absent.
    while_n1_is_down(&mut cluster, &client, client.delete_with(key.clone(), &w(3, 2)))
        .await
        .unwrap();
    assert_eq!(client.get_with(key.clone(), &no_repair).await.unwrap(), None);
    assert_eq!(
        copies(&client, &ids, &key).await.unwrap()[0]
            .as_ref()
            .map(|r| r.version),
        Some(old)
    );

    // A data replica that stops answering costs a read a short wait, not its timeout.
    let key = key_read_from(&client, 0, "hung");
    let written = client.put_with(key.clone(), "value", &w(3, 3)).await.unwrap();
    cluster.isolate(0);
    let patient = ReadOptions {
        timeout: Some(Duration::from_secs(30)),
        ..r(3, 2)
    };
    let started = std::time::Instant::now();
    let found = client.get_with(key.clone(), &patient).await.unwrap().unwrap();
    assert_eq!((found.value, found.version), (Bytes::from("value"), written));
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the read waited out the timeout"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_stops_answering_times_out_at_the_requests_deadline() {
    let cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    // Connections to every replica are up, so the write below goes out on them at once.
    client.put_with("k", "before", &w(3, 3)).await.unwrap();
    cluster.isolate(2);
    let short = WriteOptions {
        timeout: Some(Duration::from_millis(300)),
        ..w(3, 3)
    };
    let err = client.put_with("k", "after", &short).await.unwrap_err();
    let ClientError::Unavailable { acked, failures, .. } = &err else {
        panic!("unexpected error {err}")
    };
    assert_eq!(*acked, 2, "{err}");
    assert_eq!(failures.len(), 1, "{err}");
    assert_eq!(
        (failures[0].node.as_str(), &failures[0].reason),
        ("n3", &FailureReason::Timeout),
        "{err}"
    );
    // The send to n3 went on in the background after the write returned; it ends at the
    // same deadline (and its hint goes to a fallback), so nothing is left running.
    assert!(
        client.finish_background(DEADLINE).await,
        "the silent replica's send never ended"
    );
    assert_eq!(client.stats().sends_in_flight(), 0);
    cluster.heal();
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_every_replica_on_one_version() {
    let cluster = TestCluster::start(Shape::three()).await;
    let ids: Vec<String> = (0..3).map(|i| cluster.id(i)).collect();
    let mut writers = Vec::new();
    for writer in 0..4 {
        let client = cluster.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..25 {
                // A write that loses to a concurrent newer one may fail as stale; that is fine.
                let _ = client.put("contended", format!("writer {writer} write {i}")).await;
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let client = cluster.client().await;
    let agreed = wait_until("replicas agree", DEADLINE, || async {
        let held = copies(&client, &ids, "contended").await?;
        let versions: Vec<_> = held.iter().map(|r| r.as_ref().map(|r| r.version)).collect();
        match versions.iter().all(|v| v.is_some() && *v == versions[0]) {
            true => Ok(held[0].clone()),
            false => Err(format!("{versions:?}")),
        }
    })
    .await;
    let read = client.get("contended").await.unwrap().unwrap();
    assert_eq!(
        Some(read.version),
        agreed.map(|r| r.version),
        "a quorum read returns the agreed version"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_three_replicas_serve_every_n() {
    let shape = Shape {
        nodes: 5,
        ..Shape::three()
    };
    let cluster = TestCluster::start(shape).await;
    let client = cluster.client().await;
    let ids: Vec<String> = (0..5).map(|i| cluster.id(i)).collect();
    for n in 1..=3 {
        for i in 0..20 {
            let key = format!("n{n}-key{i}");
            client
                .put_with(key.clone(), format!("value {i}"), &w(n, n))
                .await
                .unwrap();
            let found = client.get_with(key.clone(), &r(n, n)).await.unwrap();
            assert_eq!(found.unwrap().value, format!("value {i}"), "n={n} {key}");
            let holders = copies(&client, &ids, &key)
                .await
                .unwrap()
                .iter()
                .filter(|c| c.is_some())
                .count();
            assert_eq!(holders, n, "with w = n, exactly the first n replicas of {key} hold it");
        }
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_invalid_requests_are_refused_before_sending() {
    let cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    let long_key = vec![b'k'; 1025];
    let err = client.put(long_key.clone(), "v").await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::TooLarge {
                what: "key",
                len: 1025,
                max: 1024
            }
        ),
        "{err}"
    );
    let err = client.get(long_key).await.unwrap_err();
    assert!(matches!(err, ClientError::TooLarge { what: "key", .. }), "{err}");
    let huge = vec![0u8; (4 << 20) + 1];
    let err = client.put("k", huge).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("value of 4194305 bytes exceeds the cluster limit"),
        "{err}"
    );
    for (options, expected) in [
        (w(3, 4), "w = 4 exceeds n = 3"),
        (w(4, 2), "n = 4 exceeds"),
        (w(0, 1), "n must be"),
    ] {
        let err = client.put_with("k", "v", &options).await.unwrap_err();
        assert!(err.to_string().contains(expected), "{err}");
    }
    let err = client.get_with("k", &r(2, 3)).await.unwrap_err();
    assert!(err.to_string().contains("r = 3 exceeds n = 2"), "{err}");
    assert_eq!(
        client.get("k").await.unwrap(),
        None,
        "nothing was written by refused requests"
    );
    cluster.shutdown().await;
}

/// A clock running ahead of the nodes' clocks.
struct AheadClock(u64);

impl Clock for AheadClock {
    fn now_micros(&self) -> u64 {
        quorumkv_client::clock::SystemClock.now_micros() + self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_too_far_in_the_future_are_refused() {
    let cluster = TestCluster::start(Shape::three()).await;
    let mut config = cluster.client_config();
    config.clock = Arc::new(AheadClock(60_000_000));
    let client = Client::connect(config).await.unwrap();
    let err = client.put("k", "from the future").await.unwrap_err();
    let ClientError::Unavailable { failures, acked: 0, .. } = &err else {
        panic!("{err}")
    };
    let skew_refusals = failures
        .iter()
        .filter(|f| matches!(&f.reason, FailureReason::Refused(reply) if reply.message.contains("ahead of this node's clock")))
        .count();
    assert!(
        skew_refusals >= 2,
        "the replicas that answered refused the version: {err}"
    );
    assert_eq!(cluster.client().await.get("k").await.unwrap(), None);
    cluster.shutdown().await;
}

/// A node's status grows with the partitions, not with the largest value: with keys and
/// values limited to 8 bytes, the status of 256 partitions in agreement (~8 KB) used to
/// exceed the client's frame limit (derived from those limits: ~4 KB) and fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_readable_whatever_the_key_and_value_limits() {
    let small = "[limits]\nmax_key_bytes = 8\nmax_value_bytes = 8\n[convergence]\nanti_entropy_interval_ms = 300";
    let cluster = TestCluster::start(Shape::three().with(small)).await;
    let client = cluster.client().await;
    wait_until("n1 reports every partition in agreement", DEADLINE, || {
        in_agreement(&client, &["n1"])
    })
    .await;
    cluster.shutdown().await;
}
