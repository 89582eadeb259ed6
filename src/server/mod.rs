//! The node's QUIC endpoint: accepts connections and streams, decodes request frames,
//! hands them to the right [`Handler`] concurrently and writes the responses back.
//!
//! A connection speaks the client protocol or the peer protocol, chosen by its ALPN. A
//! peer connection must present a member's node certificate ([`crate::peer::auth`]), else
//! it is closed with the reason and logged at WARN, as is every failed TLS handshake (a
//! refused certificate in words: another CA, expired, wrong role) except one the dialler
//! abandoned on purpose (DEBUG).
//! Every stream is read frame by frame ([`frames`]); each request runs as its own
//! tracked task (so a slow write does not hold up a read behind it), except those the
//! handler can start without one: answered on the spot (a version from memory) or handed
//! with their [`Reply`] to whoever finishes them (a read to the storage reader, a write
//! to the storage writer, which answers it after its group commit). Every response goes
//! through the stream's coalescing writer (`reply`). A malformed, oversized or stalled
//! frame gets an error frame with id 0 and ends that stream only: the connection and
//! everyone else carry on.
//!
//! What one connection can make the node hold is bounded ([`budget`]): a request takes
//! its worst-case answer from the connection's answer budget before it is dispatched and
//! gives it back once its response is handed to quinn, and frames larger than
//! [`frames::SMALL_FRAME`] take their length from the connection's frame budget while
//! they arrive. A stream that cannot get budget is not read, so QUIC flow control holds
//! its client back. [`ConnectionLimits::memory_bound`] states the bound. Request tasks are bounded by a
//! semaphore, requests handed to storage by its queues; shutdown waits for both.

pub mod budget;
pub mod frames;
mod reply;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use quorumkv_client::tls::{CONNECTION_WINDOW, MAX_BIDI_STREAMS, SEND_WINDOW};
use quorumkv_client::transport::ReadFrameError;
use quorumkv_client::wire::{decode, Frame, FrameSizeHint, FRAME_OVERHEAD, LENGTH_PREFIX, PEER_ALPN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::peer::PeerService;
use crate::replica::Replica;
use budget::{Budget, MemoryGauges};
use frames::{ReadRequestError, RequestReader};
use reply::Outbox;
pub use reply::Reply;

/// Request tasks a node runs at once; more wait for a permit (backpressure on readers).
const MAX_IN_FLIGHT: usize = 4096;
/// Answer budget of a client connection, in maximum-size frames: a `Get` reserves one
/// until its response is encoded, so this many can be read from storage at once per
/// connection (the benchmark keeps ~20 reads in flight per node over one connection).
pub const CLIENT_ANSWER_FRAMES: usize = 16;
/// Answer budget of a peer connection, in maximum-size peer frames: anti-entropy and
/// hint delivery send one exchange at a time per connection.
pub const PEER_ANSWER_FRAMES: usize = 4;
/// Frame budget of a connection, in maximum-size frames: how many large frames may
/// arrive at once; the others wait, their streams not read.
pub const PARTIAL_FRAMES: usize = 2;
/// What a request whose answer is small (an acknowledgement, a version, an error)
/// reserves for it.
pub const SMALL_ANSWER: usize = FRAME_OVERHEAD;
/// QUIC application error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;
/// QUIC application error code for a stream closed because a frame stalled.
const FRAME_TIMEOUT: u32 = 2;
/// QUIC application error code for a peer connection whose certificate is not a member's
/// node certificate.
const NOT_A_PEER: u32 = 3;
/// Id of a response that answers no particular request (the frame was unreadable).
const NO_REQUEST: u64 = 0;

/// How large a request's answer can be, which decides what it reserves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerSize {
    /// At most [`SMALL_ANSWER`] bytes.
    Small,
    /// Up to the protocol's largest frame.
    Large,
}

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
    /// (it then runs as a task, through [`handle`](Self::handle), and `reply` is sent
    /// with its response: exactly one clone of a reply is ever sent).
    fn start(&self, request: Self::Request, _reply: &Reply) -> Option<Self::Request> {
        Some(request)
    }
    /// How large the answer to `request` can be (what it reserves of the answer budget).
    fn answer_size(&self, _request: &Self::Request) -> AnswerSize {
        AnswerSize::Large
    }
    /// The response to a frame that could not be read.
    fn malformed(&self, why: String) -> Self::Response;
}

/// What one connection of a protocol may make the node hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Largest request (and response) frame body.
    pub max_frame: usize,
    /// Bytes of requests in progress plus responses not yet handed to quinn.
    pub answer_budget: usize,
    /// Bytes of large request frames received in part.
    pub frame_budget: usize,
    /// Longest time from a frame's first byte to its last.
    pub frame_timeout: Duration,
}

impl ConnectionLimits {
    /// Limits for frames of up to `max_frame` bytes with `answer_frames` maximum-size
    /// answers in the answer budget.
    pub fn new(max_frame: usize, answer_frames: usize, frame_timeout: Duration) -> Self {
        ConnectionLimits {
            max_frame,
            answer_budget: answer_frames * max_frame,
            frame_budget: PARTIAL_FRAMES * max_frame,
            frame_timeout,
        }
    }
}

impl ConnectionLimits {
    /// The most memory, in bytes, one connection of this protocol can make the node
    /// hold (allocator overhead comes on top):
    /// - data quinn received and the node has not read: the connection's flow-control
    ///   window, whatever the number of streams ([`CONNECTION_WINDOW`]);
    /// - data written to quinn and not yet acknowledged ([`SEND_WINDOW`]), plus one frame
    ///   whose allocation a partly acknowledged write keeps;
    /// - large frames being received, and their decoded copies while they wait for the
    ///   answer budget: twice the frame budget;
    /// - small frames buffered per stream, and their decoded copies:
    ///   [`MAX_BIDI_STREAMS`] × 2 × ([`frames::SMALL_FRAME`] + a length prefix);
    /// - requests in progress and answers not yet handed to quinn: the answer budget.
    pub fn memory_bound(&self) -> usize {
        let quic = CONNECTION_WINDOW as usize + SEND_WINDOW as usize + self.max_frame;
        let small_frames = MAX_BIDI_STREAMS as usize * 2 * (frames::SMALL_FRAME + LENGTH_PREFIX);
        quic + 2 * self.frame_budget + small_frames + self.answer_budget
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
    /// Limits of a client connection.
    pub client_limits: ConnectionLimits,
    /// Limits of a peer connection.
    pub peer_limits: ConnectionLimits,
    /// Bytes held for connections, node-wide.
    pub gauges: Arc<MemoryGauges>,
}

impl ServerContext {
    /// A context with the default in-flight bound.
    pub fn new(
        replica: Arc<Replica>,
        peers: Arc<PeerService>,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        (client_limits, peer_limits): (ConnectionLimits, ConnectionLimits),
    ) -> Self {
        ServerContext {
            replica,
            peers,
            shutdown,
            tracker,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            client_limits,
            peer_limits,
            gauges: Arc::default(),
        }
    }
}

/// Accepts connections until shutdown.
pub async fn accept_loop(endpoint: Endpoint, ctx: ServerContext) {
    loop {
        let incoming = tokio::select! {
            biased;
            incoming = endpoint.accept() => incoming,
            _ = ctx.shutdown.cancelled() => return,
        };
        let Some(incoming) = incoming else { return };
        ctx.tracker.spawn(serve_connection(incoming, ctx.clone()));
    }
}

/// Whether a handshake ended because the dialler closed it on purpose (a peer's ping
/// timing out while this node was still starting, a client that stopped waiting): not a
/// refusal, so not worth a warning. Certificate refusals arrive as TLS alerts instead.
fn dialler_gave_up(e: &quinn::ConnectionError) -> bool {
    match e {
        quinn::ConnectionError::ConnectionClosed(close) => {
            close.error_code == quinn::TransportErrorCode::APPLICATION_ERROR
        }
        quinn::ConnectionError::ApplicationClosed(_) => true,
        _ => false,
    }
}

async fn serve_connection(incoming: Incoming, ctx: ServerContext) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(conn) => conn,
        Err(e) => {
            match quorumkv_client::refusal::Refusal::of(&e) {
                Some(refusal) => tracing::warn!("TLS handshake with {remote} failed: {}", refusal.accepted(remote)),
                None if dialler_gave_up(&e) => tracing::debug!("TLS handshake with {remote} abandoned: {e}"),
                None => tracing::warn!("TLS handshake with {remote} failed: {e}"),
            }
            return;
        }
    };
    if alpn(&conn).as_deref() == Some(PEER_ALPN) {
        let session = match ctx.peers.authenticate(&conn) {
            Ok(session) => Arc::new(session),
            Err(why) => {
                tracing::warn!("refused a peer connection from {remote}: {why}");
                conn.close(NOT_A_PEER.into(), why.to_string().as_bytes());
                return;
            }
        };
        let limits = ctx.peer_limits;
        accept_streams(conn, session, limits, ctx).await;
    } else {
        let (handler, limits) = (ctx.replica.clone(), ctx.client_limits);
        accept_streams(conn, handler, limits, ctx).await;
    }
}

fn alpn(conn: &Connection) -> Option<Vec<u8>> {
    let data = conn.handshake_data()?;
    let data = data.downcast::<quinn::crypto::rustls::HandshakeData>().ok()?;
    data.protocol
}

/// One connection's budgets and identity, shared by its streams.
struct ConnectionState {
    /// Where the connection comes from (for logs).
    remote: SocketAddr,
    /// Its protocol's limits.
    limits: ConnectionLimits,
    /// Bytes of large frames received in part.
    frames: Arc<Budget>,
    /// Bytes of requests in progress and of responses not yet handed to quinn.
    answers: Arc<Budget>,
}

async fn accept_streams<H: Handler>(conn: Connection, handler: Arc<H>, limits: ConnectionLimits, ctx: ServerContext) {
    let state = Arc::new(ConnectionState {
        remote: conn.remote_address(),
        limits,
        frames: Arc::new(Budget::new(limits.frame_budget)),
        answers: Arc::new(Budget::new(limits.answer_budget)),
    });
    loop {
        let stream = tokio::select! {
            biased;
            stream = conn.accept_bi() => stream,
            _ = ctx.shutdown.cancelled() => return,
        };
        match stream {
            Ok((send, recv)) => {
                let stream = serve_stream(send, recv, handler.clone(), state.clone(), ctx.clone());
                ctx.tracker.spawn(stream);
            }
            Err(e) => {
                tracing::debug!("connection from {} ended: {e}", state.remote);
                return;
            }
        }
    }
}

/// Reads request frames until the stream ends, a bad frame arrives or shutdown begins.
/// Before dispatching a request it reserves the request's size plus its worst-case
/// answer from the connection's answer budget, waiting (not reading) while it is used up.
async fn serve_stream<H: Handler>(
    send: SendStream,
    recv: RecvStream,
    handler: Arc<H>,
    conn: Arc<ConnectionState>,
    ctx: ServerContext,
) {
    let outbox = Outbox::start(send, conn.answers.clone(), ctx.gauges.clone());
    let limits = conn.limits;
    let (frames, gauges) = (conn.frames.clone(), ctx.gauges.clone());
    let mut reader = RequestReader::new(recv, limits.max_frame, limits.frame_timeout, frames, gauges);
    loop {
        let next = tokio::select! {
            biased;
            next = reader.next_frame() => next,
            _ = ctx.shutdown.cancelled() => return,
        };
        let (why, code) = match next {
            Ok(Some(body)) => match decode::<Frame<H::Request>>(&body.bytes) {
                Ok(frame) => {
                    let answer = match handler.answer_size(&frame.body) {
                        AnswerSize::Small => SMALL_ANSWER,
                        AnswerSize::Large => limits.max_frame,
                    };
                    let Some(reserved) = reserve(&outbox, body.bytes.len() + answer, &ctx.shutdown).await else {
                        return;
                    };
                    body.release();
                    let reply = Reply::new(frame.id, &outbox, reserved, &ctx.tracker);
                    dispatch(frame.body, reply, handler.clone(), &ctx).await;
                    continue;
                }
                Err(e) => (e.to_string(), BAD_FRAME),
            },
            Ok(None) => return,
            Err(ReadRequestError::Stream(ReadFrameError::Read(e))) => {
                tracing::debug!("stream from {} ended: {e}", conn.remote);
                return;
            }
            Err(e @ ReadRequestError::Stalled { .. }) => (e.to_string(), FRAME_TIMEOUT),
            Err(e) => (e.to_string(), BAD_FRAME),
        };
        tracing::warn!("closing a stream from {}: {why}", conn.remote);
        Reply::new(NO_REQUEST, &outbox, 0, &ctx.tracker).send(handler.malformed(why));
        reader.stop(code);
        return;
    }
}

/// Takes `bytes` of the answer budget, waiting while it is used up; `None` at shutdown.
async fn reserve(outbox: &Outbox, bytes: usize, shutdown: &CancellationToken) -> Option<usize> {
    if let Some(taken) = outbox.budget().try_take(bytes) {
        return Some(taken);
    }
    tokio::select! {
        biased;
        taken = outbox.budget().take(bytes) => Some(taken),
        _ = shutdown.cancelled() => None,
    }
}

/// Starts one request without a task if the handler can, else runs it as a tracked
/// task once a permit is free.
async fn dispatch<H: Handler>(request: H::Request, reply: Reply, handler: Arc<H>, ctx: &ServerContext) {
    let Some(request) = handler.start(request, &reply) else {
        return;
    };
    let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else {
        reply.cancel();
        return;
    };
    ctx.tracker.spawn(async move {
        let response = handler.handle(request).await;
        reply.send(response);
        drop(permit);
    });
}
