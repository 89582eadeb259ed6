//! The node's QUIC endpoint: accepts connections and streams, decodes request frames,
//! hands them to the right [`Handler`] concurrently and writes the responses back.
//!
//! A connection speaks the client protocol or the peer protocol, chosen by its ALPN.
//! Every stream is read frame by frame; each request runs as its own tracked task (so a
//! slow write does not hold up a read behind it), except those the handler can start
//! without one: answered on the spot (a version from memory) or handed with their
//! [`Reply`] to whoever finishes them (a read to the storage reader, a write to the
//! storage writer, which answers it after its group commit). Every response goes through
//! the stream's coalescing writer. A malformed or oversized frame gets an error frame
//! with id 0 and ends that stream only: the connection and everyone else carry on.
//! Request tasks are bounded by a semaphore, requests handed to storage by its queues;
//! shutdown waits for both.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Endpoint, Incoming, SendStream};
use quorumkv_client::transport::{spawn_frame_writer, FrameReader, ReadFrameError};
use quorumkv_client::wire::{decode, frame_bytes_sized, Frame, FrameSizeHint, PEER_ALPN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use crate::peer::PeerService;
use crate::replica::Replica;

/// Request tasks a node runs at once; more wait for a permit (backpressure on readers).
const MAX_IN_FLIGHT: usize = 4096;
/// Responses queued per stream before request tasks wait.
const RESPONSE_QUEUE: usize = 1024;
/// QUIC application error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;
/// Id of a response that answers no particular request (the frame was unreadable).
const NO_REQUEST: u64 = 0;

/// Answers the requests of one protocol.
pub trait Handler: Send + Sync + 'static {
    /// The protocol's requests.
    type Request: DeserializeOwned + Send + 'static;
    /// The protocol's responses.
    type Response: Serialize + FrameSizeHint + Send + 'static;
    /// Answers one request.
    fn handle(self: Arc<Self>, request: Self::Request) -> impl Future<Output = Self::Response> + Send;
    /// Starts a request without a task of its own, if it needs none: answers it through
    /// `reply` at once, or hands `reply` to whoever will. Gives any other request back
    /// (it then runs as a task, through [`handle`](Self::handle)).
    fn start(&self, request: Self::Request, _reply: &Reply) -> Option<Self::Request> {
        Some(request)
    }
    /// The response to a frame that could not be read.
    fn malformed(&self, why: String) -> Self::Response;
}

/// Where the response to one request goes: its id and its stream's response queue.
/// Until it is sent, the request counts as running for the node's shutdown, which waits
/// for it like for a request task.
#[derive(Clone)]
pub struct Reply {
    id: u64,
    responses: mpsc::Sender<Bytes>,
    _running: TaskTrackerToken,
}

impl Reply {
    fn new(id: u64, responses: &mpsc::Sender<Bytes>, tracker: &TaskTracker) -> Reply {
        Reply {
            id,
            responses: responses.clone(),
            _running: tracker.token(),
        }
    }

    /// Queues `response` without waiting: when the stream's queue is full (its client is
    /// not reading), a task waits for room instead of the caller.
    pub fn send<T: Serialize + FrameSizeHint>(self, response: T) {
        let Some(frame) = encode_response(self.id, response) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(frame)) = self.responses.try_send(frame) {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                // The whole reply moves along, so the request counts as running until then.
                let reply = self;
                runtime.spawn(async move {
                    let _ = reply.responses.send(frame).await;
                    drop(reply);
                });
            }
        }
    }

    /// Queues `response`, waiting while the stream's queue is full.
    async fn send_waiting<T: Serialize + FrameSizeHint>(self, response: T) {
        if let Some(frame) = encode_response(self.id, response) {
            let _ = self.responses.send(frame).await;
        }
    }
}

/// Everything a connection handler needs, shared by all of them.
#[derive(Clone)]
pub struct ServerContext {
    /// Answers client requests.
    pub replica: Arc<Replica>,
    /// Answers node-to-node requests.
    pub peers: Arc<PeerService>,
    /// Cancelled when the node shuts down: stop accepting and reading.
    pub shutdown: CancellationToken,
    /// Tracks every connection and request task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Bounds requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// Largest client request frame accepted.
    pub max_frame: usize,
    /// Largest peer request frame accepted.
    pub max_peer_frame: usize,
}

impl ServerContext {
    /// A context with the default in-flight bound.
    pub fn new(
        replica: Arc<Replica>,
        peers: Arc<PeerService>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        (max_frame, max_peer_frame): (usize, usize),
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        ServerContext {
            replica,
            peers,
            shutdown,
            tracker,
            in_flight,
            max_frame,
            max_peer_frame,
        }
    }
}

/// Accepts connections until shutdown.
pub async fn accept_loop(endpoint: Endpoint, ctx: ServerContext) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = ctx.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        ctx.tracker.spawn(serve_connection(incoming, ctx.clone()));
    }
}

async fn serve_connection(incoming: Incoming, ctx: ServerContext) {
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            tracing::debug!("handshake failed: {e}");
            return;
        }
    };
    if alpn(&conn).as_deref() == Some(PEER_ALPN) {
        let (handler, max_frame) = (ctx.peers.clone(), ctx.max_peer_frame);
        accept_streams(conn, handler, max_frame, ctx).await;
    } else {
        let (handler, max_frame) = (ctx.replica.clone(), ctx.max_frame);
        accept_streams(conn, handler, max_frame, ctx).await;
    }
}

fn alpn(conn: &Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    data.protocol
}

async fn accept_streams<H: Handler>(conn: Connection, handler: Arc<H>, max_frame: usize, ctx: ServerContext) {
    loop {
        let stream = tokio::select! {
            stream = conn.accept_bi() => stream,
            _ = ctx.shutdown.cancelled() => return,
        };
        match stream {
            Ok((send, recv)) => {
                let reader = FrameReader::new(recv, max_frame);
                ctx.tracker
                    .spawn(serve_stream(send, reader, handler.clone(), ctx.clone()));
            }
            Err(e) => {
                tracing::debug!("connection from {} ended: {e}", conn.remote_address());
                return;
            }
        }
    }
}

/// Reads request frames until the stream ends, a bad frame arrives or shutdown begins.
async fn serve_stream<H: Handler>(send: SendStream, mut reader: FrameReader, handler: Arc<H>, ctx: ServerContext) {
    let responses = spawn_frame_writer(send, RESPONSE_QUEUE);
    loop {
        let next = tokio::select! {
            next = reader.next_frame() => next,
            _ = ctx.shutdown.cancelled() => return,
        };
        let why = match next {
            Ok(Some(body)) => match decode::<Frame<H::Request>>(&body) {
                Ok(frame) => {
                    dispatch(frame, handler.clone(), &ctx, &responses).await;
                    continue;
                }
                Err(e) => e.to_string(),
            },
            Ok(None) => return,
            Err(ReadFrameError::Read(e)) => {
                tracing::debug!("stream ended: {e}");
                return;
            }
            Err(e) => e.to_string(),
        };
        let reply = Reply::new(NO_REQUEST, &responses, &ctx.tracker);
        return reject_stream(&mut reader, reply, handler.malformed(why)).await;
    }
}

/// Starts one request without a task if the handler can, else runs it as a tracked
/// task once a permit is free.
async fn dispatch<H: Handler>(
    frame: Frame<H::Request>,
    handler: Arc<H>,
    ctx: &ServerContext,
    responses: &mpsc::Sender<Bytes>,
) {
    let Frame { id, body } = frame;
    let reply = Reply::new(id, responses, &ctx.tracker);
    let Some(request) = handler.start(body, &reply) else {
        return;
    };
    let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else {
        return;
    };
    ctx.tracker.spawn(async move {
        let response = handler.handle(request).await;
        reply.send_waiting(response).await;
        drop(permit);
    });
}

fn encode_response<T: Serialize + FrameSizeHint>(id: u64, response: T) -> Option<Bytes> {
    let frame = Frame { id, body: response };
    frame_bytes_sized(&frame, frame.frame_size_hint())
        .inspect_err(|e| tracing::error!("cannot encode a response: {e}"))
        .ok()
}

async fn reject_stream<T: Serialize + FrameSizeHint>(reader: &mut FrameReader, reply: Reply, refusal: T) {
    tracing::warn!("closing a stream after a bad frame");
    reply.send_waiting(refusal).await;
    reader.stop(BAD_FRAME);
}
