//! What a misbehaving client connection can make a node hold: a client that never reads
//! its answers, streams that stall in the middle of large frames. Each test drives a real
//! node over QUIC with raw frames and reads the node's own gauges of the bytes it holds
//! for connections (process RSS is too noisy in-process; the ignored scale checks in
//! `memory_scale.rs` measure a real `quorumkv node` process).

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::{wait_until, Shape, TestCluster};
use quinn::{RecvStream, SendStream};
use quorumkv::server::frames::SMALL_FRAME;
use quorumkv::server::CLIENT_ANSWER_FRAMES;
use quorumkv_client::transport::FrameReader;
use quorumkv_client::wire::{
    decode, encode_frame, ErrorKind, Record, Request, RequestFrame, Response, ResponseFrame, ALPN, FRAME_OVERHEAD,
    LENGTH_PREFIX,
};
use quorumkv_client::{Version, WriteOptions};

/// Value size of these tests (the cluster's limit): small enough to move quickly, large
/// enough that a few hundred answers would be far over the bound.
const VALUE: usize = 256 * 1024;

fn shape(extra: &str) -> Shape {
    Shape::three().with(&format!("[limits]\nmax_value_bytes = {VALUE}\n{extra}"))
}

fn all_replicas() -> WriteOptions {
    WriteOptions {
        w: Some(3),
        ..Default::default()
    }
}

async fn raw_connection(cluster: &TestCluster) -> quinn::Connection {
    let tls = cluster.client_identity().client_config_for(ALPN).unwrap();
    cluster.raw_connection(0, tls).await
}

/// Every response frame on `recv` until the node finishes the stream.
async fn read_all(recv: RecvStream, expected: usize) -> Vec<ResponseFrame> {
    let mut reader = FrameReader::new(recv, 2 * VALUE);
    let mut frames = Vec::with_capacity(expected);
    while let Ok(Some(body)) = reader.next_frame().await {
        frames.push(decode::<ResponseFrame>(&body).expect("node sends valid frames"));
    }
    frames
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_at_most_its_answer_budget() {
    const GETS: u64 = 400;
    let cluster = TestCluster::start(shape("")).await;
    let client = cluster.client().await;
    let value = Bytes::from(vec![5u8; VALUE]);
    let version = client.put_with("big", value.clone(), &all_replicas()).await.unwrap();
    let epoch = client.epoch();
    let limits = cluster.node(0).client_limits();
    assert_eq!(
        limits.answer_budget,
        CLIENT_ANSWER_FRAMES * (1024 + VALUE + FRAME_OVERHEAD),
        "the bound the README states"
    );

    // Four hundred reads of the large value on one stream, and no reading.
    let conn = raw_connection(&cluster).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut requests = BytesMut::new();
    for id in 1..=GETS {
        let key = Bytes::from_static(b"big");
        encode_frame(
            &RequestFrame {
                id,
                body: Request::Get { epoch, key },
            },
            &mut requests,
        )
        .unwrap();
    }
    send.write_all(&requests).await.unwrap();
    let node = cluster.node(0);
    wait_until(
        "the node holds answers it cannot send",
        Duration::from_secs(20),
        || async {
            let held = node.memory().answer_bytes;
            (held >= limits.answer_budget / 2)
                .then_some(())
                .ok_or(format!("{held} bytes"))
        },
    )
    .await;

    // Meanwhile the node serves everyone else.
    client.put_with("other", "still served", &all_replicas()).await.unwrap();
    let other = client.get_from("n1", "other").await.unwrap().and_then(|r| r.value);
    assert_eq!(other.as_deref(), Some(&b"still served"[..]));
    let peak = node.memory().answer_bytes_peak;
    assert!(
        peak <= limits.answer_budget,
        "answers held peaked at {peak} bytes, over the connection's budget of {}",
        limits.answer_budget
    );

    // The client reads at last and gets every answer.
    send.finish().unwrap();
    let frames = read_all(recv, GETS as usize).await;
    let mut ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=GETS).collect::<Vec<_>>(), "every read answered exactly once");
    let expected = Response::Record(Some(Record {
        version,
        value: Some(value),
    }));
    assert!(frames.iter().all(|f| f.body == expected), "every answer is the record");
    wait_until("the answers are gone", Duration::from_secs(10), || async {
        let held = node.memory().answer_bytes;
        (held == 0).then_some(()).ok_or(format!("{held} bytes"))
    })
    .await;
    cluster.shutdown().await;
}

/// Opens a stream and sends the first three quarters of a maximum-size frame.
async fn stall_in_a_frame(conn: &quinn::Connection, max_frame: usize) -> (SendStream, RecvStream) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let mut bytes = (max_frame as u32).to_le_bytes().to_vec();
    bytes.resize(LENGTH_PREFIX + max_frame * 3 / 4, 0x90);
    send.write_all(&bytes).await.unwrap();
    (send, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stalled_in_large_frames_stay_within_the_frame_budget_and_are_closed() {
    const STREAMS: usize = 8;
    let cluster = TestCluster::start(shape("frame_timeout_ms = 1000")).await;
    let limits = cluster.node(0).client_limits();
    let conn = raw_connection(&cluster).await;
    let mut stalled = Vec::new();
    for _ in 0..STREAMS {
        stalled.push(stall_in_a_frame(&conn, limits.max_frame).await);
    }

    // Each stream is closed, with the reason, once its frame is overdue (two at a time:
    // the others wait for the frame budget, unread, and their clock starts when they
    // get it).
    let mut sends = Vec::new();
    for (send, recv) in stalled {
        let frames = tokio::time::timeout(Duration::from_secs(30), read_all(recv, 1))
            .await
            .expect("the stalled stream is closed");
        let refused = frames.iter().any(|f| {
            matches!(&f.body, Response::Error(e)
                if e.kind == ErrorKind::Malformed && e.message.contains("not complete 1000 ms after its first byte"))
        });
        assert!(refused, "the node says why it closed the stream: {frames:?}");
        sends.push(send);
    }
    let node = cluster.node(0);
    let peak = node.memory().partial_frame_bytes_peak;
    let bound = limits.frame_budget + STREAMS * (SMALL_FRAME + LENGTH_PREFIX);
    assert!(
        peak <= bound,
        "partial frames peaked at {peak} bytes, over the bound of {bound} bytes"
    );
    wait_until("the partial frames are gone", Duration::from_secs(10), || async {
        let held = node.memory().partial_frame_bytes;
        (held == 0).then_some(()).ok_or(format!("{held} bytes"))
    })
    .await;

    // The budget is free again: a maximum-size write on the same connection goes through.
    let epoch = cluster.client().await.epoch();
    let record = Record {
        version: Version { micros: 1, writer: 1 },
        value: Some(Bytes::from(vec![1u8; VALUE])),
    };
    let put = Request::Put {
        epoch,
        key: Bytes::from_static(b"after"),
        record: record.clone(),
    };
    let mut frame = BytesMut::new();
    encode_frame(&RequestFrame { id: 7, body: put }, &mut frame).unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), read_all(recv, 1))
        .await
        .expect("an answer");
    let applied = Response::Put {
        applied: true,
        current: record.version,
    };
    assert_eq!(answer.iter().map(|f| &f.body).collect::<Vec<_>>(), [&applied]);
    drop(sends);
    cluster.shutdown().await;
}
