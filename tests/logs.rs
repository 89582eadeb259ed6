//! What the node logs about misbehaving clients: one line per event, saying who and why.
//! (A test binary of its own: it captures the process's log output.) And what the binary
//! writes under `quorumkv up`: every line names its node, with no colour codes in a file.

mod common;

use common::processes::Up;
use common::{capture_logs, logged, Shape, TestCluster};
use quorumkv_client::wire::ALPN;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_frame_is_logged_once_with_the_reason_and_the_client_address() {
    let logs = capture_logs();
    let cluster = TestCluster::start(Shape::three()).await;
    let tls = cluster.client_identity().client_config_for(ALPN).unwrap();
    let conn = cluster.raw_connection(0, tls).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[5, 0, 0, 0, 0xc1, 0xff, 0xfe, 0x00, 0x13])
        .await
        .unwrap();
    send.finish().unwrap();
    // The node answers with an error frame and ends the stream once it has logged.
    let _ = recv.read_to_end(1 << 20).await.unwrap();

    let warnings = logged(&logs, "closing a stream");
    assert_eq!(warnings.len(), 1, "one line for one bad frame: {warnings:?}");
    let line = &warnings[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("127.0.0.1:"), "names the client's address: {line}");
    assert!(line.contains("malformed frame"), "says why: {line}");
    cluster.shutdown().await;
}

/// fjall logs through the `log` crate, partly from worker threads it spawns itself; with
/// its trace lines on, those are in the log too and must carry the node id like the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_under_up_names_its_node_and_a_piped_log_has_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Up::start(dir.path(), &[("RUST_LOG", "info,fjall=trace,lsm_tree=trace")]);
    let client = up.client().await;
    for i in 0..100 {
        client.put(format!("k{i}"), "v").await.unwrap();
    }
    client.get("k1").await.unwrap().unwrap();
    up.signal("TERM");
    let status = up.exited().await;
    let log = up.log_text();
    assert!(status.success(), "exit status {status}; log:\n{log}");

    assert!(
        !log.contains('\x1b'),
        "escape codes in a log that is not a terminal:\n{log}"
    );
    let tags = ["n1", "n2", "n3", "up"].map(quorumkv::logging::prefix);
    for line in log.lines() {
        assert!(
            tags.iter().any(|t| line.starts_with(t)),
            "a line without its node: {line:?}"
        );
    }
    for id in ["n1", "n2", "n3"] {
        let tag = quorumkv::logging::prefix(id);
        let of_node = |what: &str| log.lines().any(|l| l.starts_with(&tag) && l.contains(what));
        assert!(
            of_node("fjall::") && of_node("lsm_tree::"),
            "fjall's lines of {id}:\n{log}"
        );
        assert!(of_node(&format!("node {id} serving")), "{id}'s own lines:\n{log}");
    }
}

/// A move that takes a while says how far it is in the new owner's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_hand_over_logs_its_progress() {
    let logs = capture_logs();
    // Pulls at 10 keys/s: n4 fills for longer than the 10 s between progress lines.
    let slow = "[convergence]\nping_interval_ms = 100\nanti_entropy_interval_ms = 500\nanti_entropy_keys_per_sec = 10";
    let mut cluster = TestCluster::start(Shape::three().with(slow)).await;
    let client = cluster.client().await;
    let all = quorumkv_client::WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    for i in 0..200 {
        client.put_with(format!("k{i}"), "v", &all).await.unwrap();
    }
    let n4 = cluster.start_joining().await;
    let added = quorumkv_client::layout::Change::Add {
        id: cluster.id(n4),
        addr: cluster.member(n4).addr,
    };
    client.change_layout("n1", added).await.expect("n4 is added");
    let line = common::wait_until("a progress line", std::time::Duration::from_secs(40), || async {
        let lines = logged(&logs, "partition pulls left");
        lines.into_iter().next().ok_or_else(|| "none yet".to_string())
    })
    .await;
    assert!(line.contains("layout 2:") && line.contains(" of "), "{line}");
    cluster.shutdown().await;
}
