//! Raw protocol abuse against a real node: malformed frames, oversized frames, requests
//! a well-behaved client would never send. The node answers with an error or closes that
//! stream, and keeps serving the same connection and everyone else.

mod common;

use bytes::{Bytes, BytesMut};
use common::{Shape, TestCluster};
use quorumkv_client::net::bind_udp;
use quorumkv_client::transport::{AnswerSink, EncodedRequest, FrameReader, MuxConnection, RequestIds};
use quorumkv_client::wire::{
    decode, encode_frame, ErrorKind, HeldVersion, Record, Request, RequestFrame, Response, ResponseFrame, ALPN,
    ALPN_V1, FRAME_OVERHEAD,
};
use quorumkv_client::Version;

/// A raw connection to node n1 with the cluster's client certificate.
async fn raw_connection(cluster: &TestCluster) -> quinn::Connection {
    raw_connection_speaking(cluster, ALPN).await
}

/// A raw connection to node n1 speaking the client protocol version named by `alpn`.
async fn raw_connection_speaking(cluster: &TestCluster, alpn: &[u8]) -> quinn::Connection {
    let tls = cluster.client_identity().client_config_for(alpn).unwrap();
    raw_connection_with(cluster, tls).await
}

/// A raw connection to node n1 with the client configuration `tls`.
async fn raw_connection_with(cluster: &TestCluster, tls: quinn::ClientConfig) -> quinn::Connection {
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let runtime = std::sync::Arc::new(quinn::TokioRuntime);
    let endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).unwrap();
    let addr = cluster.config.nodes[0].addr;
    endpoint
        .connect_with(tls, addr, "n1")
        .unwrap()
        .await
        .expect("TLS handshake with n1")
}

/// Sends `bytes` on a new stream (then finishes it) and returns every response frame.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Vec<ResponseFrame> {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    let _ = send.finish();
    let mut reader = FrameReader::new(recv, 1 << 20);
    let mut frames = Vec::new();
    while let Ok(Some(body)) = reader.next_frame().await {
        frames.push(decode::<ResponseFrame>(&body).expect("node sends valid frames"));
    }
    frames
}

/// Writes `value` under key `k` to every replica through a client; returns the ring
/// epoch and the version written.
async fn put_everywhere(cluster: &TestCluster, value: Bytes) -> (u64, Version) {
    let client = cluster.client().await;
    let options = quorumkv_client::WriteOptions {
        w: Some(3),
        ..Default::default()
    };
    let version = client.put_with("k", value, &options).await.unwrap();
    (client.epoch(), version)
}

fn frame(request: Request) -> BytesMut {
    let mut out = BytesMut::new();
    encode_frame(&RequestFrame { id: 9, body: request }, &mut out).unwrap();
    out
}

fn assert_error(frames: &[ResponseFrame], kind: ErrorKind) {
    let found = frames
        .iter()
        .any(|f| matches!(&f.body, Response::Error(e) if e.kind == kind));
    assert!(found, "expected a {kind:?} error, got {frames:?}");
}

fn assert_stale_layout(frames: &[ResponseFrame], epoch: u64) {
    let found = frames
        .iter()
        .any(|f| matches!(&f.body, Response::StaleLayout(history) if history.epoch() == epoch));
    assert!(found, "expected the node's layout (epoch {epoch:x}), got {frames:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_stream() {
    let cluster = TestCluster::start(Shape::three()).await;
    let conn = raw_connection(&cluster).await;

    let garbage = [5u8, 0, 0, 0, 0xc1, 0xff, 0xfe, 0x00, 0x13];
    assert_error(&exchange(&conn, &garbage).await, ErrorKind::Malformed);

    let oversized = (1u32 << 30).to_le_bytes();
    assert_error(&exchange(&conn, &oversized).await, ErrorKind::Malformed);

    let mut truncated = frame(Request::Members);
    truncated.truncate(truncated.len() - 3);
    assert_error(&exchange(&conn, &truncated).await, ErrorKind::Malformed);

    let mut wrong_type = BytesMut::new();
    encode_frame(
        &ResponseFrame {
            id: 1,
            body: Response::Record(None),
        },
        &mut wrong_type,
    )
    .unwrap();
    assert_error(&exchange(&conn, &wrong_type).await, ErrorKind::Malformed);

    // The same connection still serves a valid request on a new stream.
    let members = exchange(&conn, &frame(Request::Members)).await;
    assert!(
        matches!(
            &members[..],
            [ResponseFrame {
                id: 9,
                body: Response::Members(_)
            }]
        ),
        "{members:?}"
    );

    // And other clients are unaffected.
    let client = cluster.client().await;
    client.put("still", "serving").await.unwrap();
    assert_eq!(client.get("still").await.unwrap().unwrap().value, "serving");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_a_client_would_refuse_are_refused_by_the_node_too() {
    let cluster = TestCluster::start(Shape::three()).await;
    let client = cluster.client().await;
    let epoch = client.epoch();
    let conn = raw_connection(&cluster).await;
    let record = |len: usize| Record {
        version: Version { micros: 1, writer: 1 },
        value: Some(Bytes::from(vec![1u8; len])),
    };

    let long_key = Request::Put {
        epoch,
        key: Bytes::from(vec![b'k'; 2000]),
        record: record(1),
    };
    assert_error(&exchange(&conn, &frame(long_key)).await, ErrorKind::TooLarge);

    let max_value = cluster.config.limits.max_value_bytes;
    assert!(
        max_value + 1 + 64 < max_value + FRAME_OVERHEAD,
        "fits in a frame, but not in the limit"
    );
    let long_value = Request::Put {
        epoch,
        key: Bytes::from_static(b"k"),
        record: record(max_value + 1),
    };
    assert_error(&exchange(&conn, &frame(long_value)).await, ErrorKind::TooLarge);

    // Routed with an older layout: refused with the node's layout history attached.
    let stale_epoch = Request::Get {
        epoch: epoch - 1,
        key: Bytes::from_static(b"k"),
    };
    assert_stale_layout(&exchange(&conn, &frame(stale_epoch)).await, epoch);
    let stale_epoch = Request::GetVersion {
        epoch: epoch - 1,
        key: Bytes::from_static(b"k"),
    };
    assert_stale_layout(&exchange(&conn, &frame(stale_epoch)).await, epoch);
    let long_key = Request::GetVersion {
        epoch,
        key: Bytes::from(vec![b'k'; 2000]),
    };
    assert_error(&exchange(&conn, &frame(long_key)).await, ErrorKind::TooLarge);

    assert_eq!(client.get("k").await.unwrap(), None, "nothing refused was stored");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_reads_and_protocol_1_clients_are_served() {
    let cluster = TestCluster::start(Shape::three()).await;
    let (epoch, version) = put_everywhere(&cluster, Bytes::from_static(b"v")).await;
    let key = || Bytes::from_static(b"k");

    let conn = raw_connection(&cluster).await;
    let held = exchange(&conn, &frame(Request::GetVersion { epoch, key: key() })).await;
    let expected = Response::Version(Some(HeldVersion {
        version,
        tombstone: false,
    }));
    assert_eq!(held.iter().map(|f| &f.body).collect::<Vec<_>>(), [&expected]);
    let missing = Request::GetVersion {
        epoch,
        key: Bytes::from_static(b"never written"),
    };
    let held = exchange(&conn, &frame(missing)).await;
    assert_eq!(
        held.iter().map(|f| &f.body).collect::<Vec<_>>(),
        [&Response::Version(None)]
    );

    let v1 = raw_connection_speaking(&cluster, ALPN_V1).await;
    let record = exchange(&v1, &frame(Request::Get { epoch, key: key() })).await;
    let expected = Response::Record(Some(Record {
        version,
        value: Some(Bytes::from_static(b"v")),
    }));
    assert_eq!(record.iter().map(|f| &f.body).collect::<Vec<_>>(), [&expected]);
    cluster.shutdown().await;
}

/// A client that sends many reads on one stream and only then starts reading gets every
/// answer: with a small receive window the node's responses back up until the
/// connection's answer budget is used up, the node stops reading requests, and it
/// resumes as the client reads; no answer is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_late_gets_every_response() {
    const READS: u64 = 3000;
    let cluster = TestCluster::start(Shape::three()).await;
    let value = Bytes::from(vec![7u8; 1024]);
    let (epoch, version) = put_everywhere(&cluster, value.clone()).await;

    let mut tls = cluster.client_identity().client_config_for(ALPN).unwrap();
    let mut transport = quinn::TransportConfig::default();
    transport.stream_receive_window(quinn::VarInt::from_u32(64 * 1024));
    tls.transport_config(std::sync::Arc::new(transport));
    let conn = raw_connection_with(&cluster, tls).await;
    let mut requests = BytesMut::new();
    for id in 1..=READS {
        let body = Request::Get {
            epoch,
            key: Bytes::from_static(b"k"),
        };
        encode_frame(&RequestFrame { id, body }, &mut requests).unwrap();
    }
    let frames = exchange(&conn, &requests).await;

    let expected = Response::Record(Some(Record {
        version,
        value: Some(value),
    }));
    let mut ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=READS).collect::<Vec<_>>(), "every read answered exactly once");
    assert!(frames.iter().all(|f| f.body == expected), "every answer is the record");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_writes_larger_than_the_storage_queue_is_answered_in_full() {
    // The node queues writes for its storage thread (4,096 deep); one stream sending
    // 40,000 at once outruns the writer, and the writes that find the queue full take
    // the waiting path (~4,600 of them on the development machine, counted once by hand).
    const WRITES: u64 = 40_000;
    let cluster = TestCluster::start(Shape::three()).await;
    let (epoch, version) = put_everywhere(&cluster, Bytes::from_static(b"v")).await;
    let value = Bytes::from(vec![3u8; 1024]);
    let key = |i: u64| Bytes::from(format!("burst-{i}"));
    let mut requests = BytesMut::new();
    for id in 1..=WRITES {
        let record = Record {
            version,
            value: Some(value.clone()),
        };
        let body = Request::Put {
            epoch,
            key: key(id),
            record,
        };
        encode_frame(&RequestFrame { id, body }, &mut requests).unwrap();
    }
    let conn = raw_connection(&cluster).await;
    let frames = exchange(&conn, &requests).await;

    let mut ids: Vec<u64> = frames.iter().map(|f| f.id).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (1..=WRITES).collect::<Vec<_>>(),
        "every write answered exactly once"
    );
    let applied = Response::Put {
        applied: true,
        current: version,
    };
    assert!(frames.iter().all(|f| f.body == applied), "every write applied");
    let client = cluster.client().await;
    for id in [1, WRITES / 2, WRITES] {
        let stored = client.get_from("n1", key(id)).await.unwrap();
        assert_eq!(
            stored.and_then(|r| r.value),
            Some(value.clone()),
            "key {id} is stored on n1"
        );
    }
    cluster.shutdown().await;
}

/// The next answer in `sink`, waiting at most ten seconds.
async fn next_answer(
    sink: &AnswerSink<Response>,
) -> (usize, Result<Response, quorumkv_client::transport::TransportError>) {
    let next = std::future::poll_fn(|cx| sink.poll_next(cx));
    tokio::time::timeout(std::time::Duration::from_secs(10), next)
        .await
        .expect("an answer within 10 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_gets_each_answer_once_and_hears_when_its_connection_closes() {
    let cluster = TestCluster::start(Shape::three()).await;
    let (epoch, version) = put_everywhere(&cluster, Bytes::from_static(b"v")).await;
    let conn = raw_connection(&cluster).await;
    let mux = MuxConnection::<Request, Response>::open(conn, 1 << 20, Default::default(), Default::default())
        .await
        .unwrap();
    let ids = RequestIds::default();
    let get = || {
        let key = Bytes::from_static(b"k");
        EncodedRequest::new(&Request::Get { epoch, key }, &ids).unwrap()
    };
    let sink = AnswerSink::new();
    let send = |tag| {
        mux.send_to_sink(&get(), &sink, tag)
            .unwrap_or_else(|| panic!("an idle connection takes request {tag}"))
    };
    // A request whose registration is dropped before the answer comes: its answer is discarded.
    drop(send(1));
    let _answered = (send(2), send(3));
    let expected = Response::Record(Some(Record {
        version,
        value: Some(Bytes::from_static(b"v")),
    }));
    let mut tags = Vec::new();
    for _ in 0..2 {
        let (tag, answer) = next_answer(&sink).await;
        assert_eq!(answer.expect("answered"), expected);
        tags.push(tag);
    }
    tags.sort_unstable();
    assert_eq!(tags, [2, 3]);

    // Requests still waiting when the connection closes are reported lost, one per lane.
    let _lost = (send(5), send(6));
    mux.connection().close(0u32.into(), b"test closes");
    let mut tags = Vec::new();
    for _ in 0..2 {
        let (tag, answer) = next_answer(&sink).await;
        assert!(
            answer.is_err(),
            "request {tag} cannot be answered on a closed connection"
        );
        tags.push(tag);
    }
    tags.sort_unstable();
    assert_eq!(tags, [5, 6]);
    // Both lanes have stopped: nothing else can arrive, and request 1 never did.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        sink.poll_next(&mut cx).is_pending(),
        "the dropped request's answer was discarded"
    );
    cluster.shutdown().await;
}
