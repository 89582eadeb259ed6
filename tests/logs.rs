//! What the node logs about misbehaving clients: one line per event, saying who and why.
//! (A test binary of its own: it captures the process's log output.)

mod common;

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
