//! Multiplexed request/response over QUIC streams.
//!
//! Opening a stream per request measured ~3x slower on our hot path than a few long-lived
//! bidirectional streams carrying id-tagged frames, so each connection keeps a small pool
//! of such streams ("lanes"). Per lane a writer task coalesces queued frames into one
//! write, and a reader task completes pending requests by id. Requests whose frame is
//! larger than [`OWN_STREAM_THRESHOLD`] get a stream of their own so they never hold up
//! small ones. The node uses [`FrameReader`] and [`spawn_frame_writer`] for its side.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use quinn::{Connection, RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::wire::{decode, frame_bytes_sized, split_frame, Frame, FrameError, FrameSizeHint};

/// Issues request ids, unique among the connections that share it (a pool's, or one
/// connection's): a request encoded once can go to several of them under the same id.
/// Not process-wide, so that what one client sends does not depend on what others sent
/// before it (a simulation replays a seed exactly).
#[derive(Debug)]
pub struct RequestIds(AtomicU64);

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds(AtomicU64::new(1))
    }
}

impl RequestIds {
    fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

/// A request encoded as a frame once, to be sent to one or more connections (a quorum
/// request goes to n replicas: encoding it once saved n-1 copies of its value).
pub struct EncodedRequest<Q> {
    id: u64,
    frame: Bytes,
    _request: std::marker::PhantomData<fn(Q)>,
}

impl<Q> Clone for EncodedRequest<Q> {
    fn clone(&self) -> Self {
        EncodedRequest {
            id: self.id,
            frame: self.frame.clone(),
            _request: std::marker::PhantomData,
        }
    }
}

impl<Q: Serialize + FrameSizeHint> EncodedRequest<Q> {
    /// Encodes `request` under a fresh id from `ids`.
    pub fn new(request: &Q, ids: &RequestIds) -> Result<Self, TransportError> {
        let id = ids.next();
        let frame = Frame { id, body: request };
        let frame = frame_bytes_sized(&frame, frame.frame_size_hint())?;
        Ok(EncodedRequest {
            id,
            frame,
            _request: std::marker::PhantomData,
        })
    }
}

/// Long-lived streams per connection.
pub const LANES: usize = 2;
/// Frames larger than this go on a stream of their own (large values, bulk transfers).
pub const OWN_STREAM_THRESHOLD: usize = 64 * 1024;
/// Frames queued per lane before senders wait.
const LANE_QUEUE: usize = 1024;
/// Most frames a writer hands to quinn in one write.
const COALESCE_FRAMES: usize = 256;
/// Read granularity of [`FrameReader`].
const READ_CHUNK: usize = 64 * 1024;

/// Why a request over a connection failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    /// The connection or stream closed before the answer came.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The answer could not be decoded or the request not encoded.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The TLS handshake failed over a certificate: the peer refused this side's, or this
    /// side the peer's. Not worth retrying until the certificates change.
    #[error("TLS handshake refused: {reason}")]
    Tls {
        /// The peer's address.
        addr: std::net::SocketAddr,
        /// Who refused which certificate and why ([`crate::refusal::Refusal::dialled`]).
        reason: String,
    },
}

impl From<FrameError> for TransportError {
    fn from(e: FrameError) -> Self {
        TransportError::Protocol(e.to_string())
    }
}

/// Reads length-prefixed frames from a QUIC receive stream.
pub struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    /// Largest frame body accepted; a longer length prefix is a protocol error.
    max_frame: usize,
}

impl FrameReader {
    /// A reader accepting frames of at most `max_frame` bytes.
    pub fn new(recv: RecvStream, max_frame: usize) -> FrameReader {
        FrameReader {
            recv,
            buf: BytesMut::with_capacity(READ_CHUNK),
            max_frame,
        }
    }

    /// The next frame body, or `None` when the peer finished the stream cleanly.
    pub async fn next_frame(&mut self) -> Result<Option<Bytes>, ReadFrameError> {
        loop {
            if let Some(body) = split_frame(&mut self.buf, self.max_frame)? {
                return Ok(Some(body));
            }
            match self.recv.read_chunk(READ_CHUNK, true).await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }

    /// Tells the peer to stop sending on this stream (after a protocol error).
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }
}

/// A frame that could not be read from a stream.
#[derive(Debug, thiserror::Error)]
pub enum ReadFrameError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream failed.
    #[error("stream failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Spawns a task that writes every frame sent on the returned channel to `send`,
/// handing whatever is queued to quinn in one write. The frames are passed as chunks,
/// which quinn keeps as they are: copying them into one buffer first cost two copies of
/// every value (ours, then quinn's of a borrowed slice). It finishes the stream when the
/// channel closes and stops at the first write error.
pub fn spawn_frame_writer(mut send: SendStream, queue: usize) -> mpsc::Sender<Bytes> {
    let (tx, mut rx) = mpsc::channel::<Bytes>(queue);
    tokio::spawn(async move {
        let mut batch: Vec<Bytes> = Vec::with_capacity(COALESCE_FRAMES);
        while rx.recv_many(&mut batch, COALESCE_FRAMES).await > 0 {
            if send.write_all_chunks(&mut batch).await.is_err() {
                return;
            }
            batch.clear();
        }
        let _ = send.finish();
    });
    tx
}

/// Bytes of frames sent and received over a set of connections.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Frame bytes sent (length prefixes included).
    pub sent: AtomicU64,
    /// Frame bytes received (length prefixes included).
    pub received: AtomicU64,
}

impl Traffic {
    fn count_sent(&self, bytes: usize) {
        self.sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_received(&self, bytes: usize) {
        self.received
            .fetch_add((bytes + crate::wire::LENGTH_PREFIX) as u64, Ordering::Relaxed);
    }
}

type Pending<A> = Arc<Mutex<HashMap<u64, Waiter<A>, BuildHasherDefault<IdHasher>>>>;

/// Who is waiting for the answer to a request sent on a lane.
enum Waiter<A> {
    /// One caller awaiting this one answer ([`MuxConnection::call_encoded`]).
    One(oneshot::Sender<A>),
    /// A request sent to several nodes, whose answers all go to one sink under the tag
    /// the sender chose ([`MuxConnection::send_to_sink`]).
    Sink(Arc<AnswerSink<A>>, usize),
}

impl<A> Waiter<A> {
    fn deliver(self, answer: A) {
        match self {
            Waiter::One(tx) => {
                let _ = tx.send(answer);
            }
            Waiter::Sink(sink, tag) => sink.deliver(tag, Ok(answer)),
        }
    }

    /// Tells the waiter its stream is gone (a [`Waiter::One`] learns it from the
    /// dropped sender).
    fn lost(self) {
        if let Waiter::Sink(sink, tag) = self {
            sink.deliver(tag, Err(TransportError::Lost("stream closed before the answer".into())));
        }
    }
}

/// Collects the answers to one request sent to several nodes, each under its sender's
/// tag, for one consumer. A channel plus a boxed future per node cost a third of the
/// client's allocations per quorum write; the sink is one allocation per request.
pub struct AnswerSink<A> {
    state: Mutex<SinkState<A>>,
}

struct SinkState<A> {
    ready: Vec<(usize, Result<A, TransportError>)>,
    waker: Option<Waker>,
}

impl<A> AnswerSink<A> {
    /// An empty sink.
    pub fn new() -> Arc<AnswerSink<A>> {
        Arc::new(AnswerSink {
            state: Mutex::new(SinkState {
                ready: Vec::new(),
                waker: None,
            }),
        })
    }

    fn deliver(&self, tag: usize, answer: Result<A, TransportError>) {
        let waker = {
            let mut state = lock(&self.state);
            state.ready.push((tag, answer));
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// The next answer that arrived (in no particular order), or `Pending` after
    /// arranging for `cx` to be woken when one does.
    pub fn poll_next(&self, cx: &mut Context<'_>) -> Poll<(usize, Result<A, TransportError>)> {
        let mut state = lock(&self.state);
        match state.ready.pop() {
            Some(answer) => Poll::Ready(answer),
            None => {
                if !state.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    state.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
        }
    }
}

/// A request registered on a lane, for an [`AnswerSink`] or for one caller; dropping it
/// stops waiting (timeout, drop: the answer, if it still comes, is discarded).
pub struct Registration<A> {
    pending: Pending<A>,
    id: u64,
}

impl<A> Drop for Registration<A> {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.id);
    }
}

/// Hashes request ids for the pending maps. The ids are our own sequence numbers, so a
/// multiplicative hash spreads them well enough; SipHash (the default, made to resist
/// chosen keys) was ~2% of the client's instructions.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// One long-lived stream and the requests waiting for answers on it.
struct Lane<A> {
    frames: mpsc::Sender<Bytes>,
    pending: Pending<A>,
    /// Set once the reader stopped; the lane takes no more requests.
    closed: Arc<AtomicBool>,
}

/// A connection to one node with a pool of multiplexed streams, carrying requests of
/// type `Q` answered by responses of type `A`.
pub struct MuxConnection<Q, A> {
    conn: Connection,
    lanes: Vec<Lane<A>>,
    next_lane: AtomicUsize,
    /// Largest response frame accepted.
    max_frame: usize,
    /// Counts the bytes this connection carries.
    traffic: Arc<Traffic>,
    /// Where the ids of requests sent with [`MuxConnection::call`] come from.
    ids: Arc<RequestIds>,
    _requests: std::marker::PhantomData<fn(Q)>,
}

impl<Q, A> MuxConnection<Q, A> {
    /// Whether this connection can no longer carry requests.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some() || self.lanes.iter().any(|l| l.closed.load(Ordering::Relaxed))
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

impl<Q: Serialize + FrameSizeHint, A: DeserializeOwned + Send + 'static> MuxConnection<Q, A> {
    /// Opens the lanes on an established connection.
    pub async fn open(
        conn: Connection,
        max_frame: usize,
        traffic: Arc<Traffic>,
        ids: Arc<RequestIds>,
    ) -> Result<Self, TransportError> {
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (send, recv) = conn.open_bi().await.map_err(|e| TransportError::Lost(e.to_string()))?;
            lanes.push(Lane::start(send, recv, max_frame, traffic.clone()));
        }
        Ok(MuxConnection {
            conn,
            lanes,
            next_lane: AtomicUsize::new(0),
            max_frame,
            traffic,
            ids,
            _requests: std::marker::PhantomData,
        })
    }

    /// Sends `request` and waits for its response (no timeout: callers add their own).
    pub async fn call(&self, request: Q) -> Result<A, TransportError> {
        self.call_encoded(EncodedRequest::new(&request, &self.ids)?).await
    }

    /// Sends an already encoded request and waits for its response (no timeout).
    pub async fn call_encoded(&self, request: EncodedRequest<Q>) -> Result<A, TransportError> {
        let EncodedRequest { id, frame, .. } = request;
        self.traffic.count_sent(frame.len());
        if frame.len() > OWN_STREAM_THRESHOLD {
            return self.call_on_own_stream(frame).await;
        }
        let answer = self.next_lane().call(id, frame).await;
        answer.map_err(|e| self.why_closed().unwrap_or(e))
    }

    /// Why the connection ended, when the other side said so: a refused certificate (the
    /// node checks a client's certificate after the client's handshake is done, so the
    /// refusal arrives as the close of an established connection) or the node's close
    /// reason. Requests that were waiting only see their stream end.
    fn why_closed(&self) -> Option<TransportError> {
        let addr = self.conn.remote_address();
        let words = match self.conn.close_reason()? {
            quinn::ConnectionError::ApplicationClosed(close) if !close.reason.is_empty() => {
                format!(
                    "node {addr} closed the connection: {}",
                    String::from_utf8_lossy(&close.reason)
                )
            }
            error => crate::refusal::Refusal::of(&error)?.dialled(addr),
        };
        Some(TransportError::Lost(words))
    }

    /// Sends an already encoded request without waiting: its answer goes to `sink`
    /// under `tag`, unless the returned registration is dropped first. Never waits:
    /// `None` when the frame is too large for a lane, the lane's queue is full or its
    /// stream is closed; the caller then sends it the awaiting way
    /// ([`Self::call_encoded`] through the pool, which also re-dials a closed stream).
    pub fn send_to_sink(
        &self,
        request: &EncodedRequest<Q>,
        sink: &Arc<AnswerSink<A>>,
        tag: usize,
    ) -> Option<Registration<A>> {
        if request.frame.len() > OWN_STREAM_THRESHOLD {
            return None;
        }
        let registration = self.next_lane().send_to_sink(request, sink, tag)?;
        self.traffic.count_sent(request.frame.len());
        Some(registration)
    }

    /// The lane for the next request (round robin).
    fn next_lane(&self) -> &Lane<A> {
        &self.lanes[self.next_lane.fetch_add(1, Ordering::Relaxed) % self.lanes.len()]
    }

    async fn call_on_own_stream(&self, frame: Bytes) -> Result<A, TransportError> {
        let lost = |e: &dyn std::fmt::Display| TransportError::Lost(e.to_string());
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| lost(&e))?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv, self.max_frame);
        let body = reader.next_frame().await.map_err(|e| lost(&e))?;
        let body = body.ok_or_else(|| TransportError::Lost("stream closed without an answer".into()))?;
        self.traffic.count_received(body.len());
        Ok(decode::<Frame<A>>(&body)?.body)
    }
}

impl<A: DeserializeOwned + Send + 'static> Lane<A> {
    fn start(send: SendStream, recv: RecvStream, max_frame: usize, traffic: Arc<Traffic>) -> Lane<A> {
        let pending: Pending<A> = Arc::default();
        let closed = Arc::new(AtomicBool::new(false));
        let frames = spawn_frame_writer(send, LANE_QUEUE);
        let reader = FrameReader::new(recv, max_frame);
        tokio::spawn(read_responses(reader, pending.clone(), closed.clone(), traffic));
        Lane {
            frames,
            pending,
            closed,
        }
    }

    /// Registers `waiter` for the answer to request `id` until the registration drops.
    fn register(&self, id: u64, waiter: Waiter<A>) -> Registration<A> {
        lock(&self.pending).insert(id, waiter);
        Registration {
            pending: self.pending.clone(),
            id,
        }
    }

    fn send_to_sink<Q>(
        &self,
        request: &EncodedRequest<Q>,
        sink: &Arc<AnswerSink<A>>,
        tag: usize,
    ) -> Option<Registration<A>> {
        // Registered before `closed` is read: a reader that stops afterwards finds the
        // entry when it drains (and reports it lost); one that stopped before is seen here.
        let registration = self.register(request.id, Waiter::Sink(sink.clone(), tag));
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.frames.try_send(request.frame.clone()).ok()?;
        Some(registration)
    }

    async fn call(&self, id: u64, frame: Bytes) -> Result<A, TransportError> {
        let (tx, rx) = oneshot::channel();
        let _registered = self.register(id, Waiter::One(tx));
        if self.closed.load(Ordering::Acquire) || self.frames.send(frame).await.is_err() {
            return Err(TransportError::Lost("stream closed".into()));
        }
        rx.await
            .map_err(|_| TransportError::Lost("stream closed before the answer".into()))
    }
}

/// Completes pending requests by id until the stream ends; then fails the rest.
async fn read_responses<A: DeserializeOwned>(
    mut reader: FrameReader,
    pending: Pending<A>,
    closed: Arc<AtomicBool>,
    traffic: Arc<Traffic>,
) {
    while let Ok(Some(body)) = reader.next_frame().await {
        traffic.count_received(body.len());
        let Ok(frame) = decode::<Frame<A>>(&body) else {
            tracing::warn!("undecodable response frame; dropping the stream");
            break;
        };
        // Taken out of the map first: a sink's waker must not run under the map's lock.
        let waiter = lock(&pending).remove(&frame.id);
        if let Some(waiter) = waiter {
            waiter.deliver(frame.body);
        }
    }
    closed.store(true, Ordering::Release);
    let waiters: Vec<Waiter<A>> = lock(&pending).drain().map(|(_, waiter)| waiter).collect();
    for waiter in waiters {
        waiter.lost();
    }
}

/// Locks a mutex, recovering from poisoning (the map stays consistent across panics).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where one pooled connection goes.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The node's address.
    pub addr: std::net::SocketAddr,
    /// The name its certificate must carry (its node id).
    pub server_name: String,
}

/// Longest wait for a connection handshake (a dead address never answers; QUIC would
/// otherwise wait for its idle timeout).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failed dial, calls to that destination fail at once for this long instead of
/// queueing behind another doomed dial.
pub const DIAL_RETRY: Duration = Duration::from_secs(1);

impl Destination {
    /// Where member `member` listens, under the name its certificate carries.
    pub fn of(member: &crate::wire::Member) -> Destination {
        Destination {
            addr: member.addr,
            server_name: member.id.clone(),
        }
    }
}

/// One destination's connection state.
struct Slot<Q, A> {
    /// Where it is.
    destination: Destination,
    /// The live connection, if any. A std mutex: only ever held to clone or swap.
    conn: Mutex<Option<Arc<MuxConnection<Q, A>>>>,
    /// Serialises dialling, so concurrent callers share one handshake.
    dialing: tokio::sync::Mutex<()>,
    /// When and why the last dial failed.
    failed: Mutex<Option<(Instant, String)>>,
}

/// One cached connection per destination, dialled on first use and re-dialled after it
/// breaks. Shared by the client (client protocol) and the node (peer protocol).
pub struct ConnectionPool<Q, A> {
    endpoint: quinn::Endpoint,
    tls: quinn::ClientConfig,
    /// One per destination, in index order; only ever appended to (a layout change can
    /// add nodes, and indices never change meaning).
    slots: std::sync::RwLock<Vec<Arc<Slot<Q, A>>>>,
    /// Largest response frame accepted.
    max_frame: usize,
    /// Bytes carried by every connection of the pool.
    traffic: Arc<Traffic>,
    /// Ids of every request sent through the pool.
    ids: Arc<RequestIds>,
}

impl<Q: Serialize + FrameSizeHint, A: DeserializeOwned + Send + 'static> ConnectionPool<Q, A> {
    /// A pool dialling `destinations` from `endpoint` with `tls`.
    pub fn new(
        endpoint: quinn::Endpoint,
        tls: quinn::ClientConfig,
        destinations: Vec<Destination>,
        max_frame: usize,
    ) -> Self {
        let slots = destinations.into_iter().map(Slot::new).collect();
        ConnectionPool {
            endpoint,
            tls,
            slots: std::sync::RwLock::new(slots),
            max_frame,
            traffic: Arc::default(),
            ids: Arc::default(),
        }
    }

    /// Appends the destinations of `all` beyond those the pool has (`all` lists every
    /// destination, old ones first).
    pub fn add_destinations(&self, all: impl Iterator<Item = Destination>) {
        let mut slots = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let known = slots.len();
        slots.extend(all.skip(known).map(Slot::new));
    }

    /// Destinations the pool can dial.
    pub fn len(&self) -> usize {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether the pool has no destination.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, index: usize) -> Option<Arc<Slot<Q, A>>> {
        self.slots.read().unwrap_or_else(|p| p.into_inner()).get(index).cloned()
    }

    /// Bytes carried by the pool's connections so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Where ids of requests sent through this pool must come from.
    pub fn request_ids(&self) -> &RequestIds {
        &self.ids
    }

    /// Sends `request` to destination `index` and waits for the answer (no timeout).
    pub async fn call(&self, index: usize, request: Q) -> Result<A, TransportError> {
        self.call_encoded(index, EncodedRequest::new(&request, &self.ids)?)
            .await
    }

    /// Sends an already encoded request to destination `index` (no timeout).
    pub async fn call_encoded(&self, index: usize, request: EncodedRequest<Q>) -> Result<A, TransportError> {
        self.connection(index).await?.call_encoded(request).await
    }

    /// The cached connection to destination `index` if it is up, without dialling.
    pub fn live_connection(&self, index: usize) -> Option<Arc<MuxConnection<Q, A>>> {
        self.slot(index)?.live()
    }

    /// The cached connection to destination `index`, dialling one if needed.
    pub async fn connection(&self, index: usize) -> Result<Arc<MuxConnection<Q, A>>, TransportError> {
        let slot = self
            .slot(index)
            .ok_or_else(|| TransportError::Lost(format!("no destination {index}")))?;
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        slot.check_recent_failure()?;
        let _dialing = slot.dialing.lock().await;
        // Another caller may have dialled (or failed) while we waited.
        if let Some(conn) = slot.live() {
            return Ok(conn);
        }
        slot.check_recent_failure()?;
        let destination = &slot.destination;
        let traffic = self.traffic.clone();
        let dialled = tokio::time::timeout(
            DIAL_TIMEOUT,
            dial(
                &self.endpoint,
                &self.tls,
                destination,
                self.max_frame,
                traffic,
                self.ids.clone(),
            ),
        );
        let result = match dialled.await {
            Ok(result) => result,
            Err(_) => Err(TransportError::Lost(format!(
                "{}: no handshake within {DIAL_TIMEOUT:?}",
                destination.addr
            ))),
        };
        match &result {
            Ok(conn) => *lock(&slot.conn) = Some(conn.clone()),
            Err(e) => *lock(&slot.failed) = Some((Instant::now(), e.to_string())),
        }
        result
    }

    /// Dials `destination`, which need not be one of the pool's, on a connection of its
    /// own, sends `request` and closes the connection once answered: to ask a node the
    /// pool does not know yet. Gives up after `timeout`, dial included.
    pub async fn call_once(
        &self,
        destination: &Destination,
        request: Q,
        timeout: Duration,
    ) -> Result<A, TransportError> {
        let attempt = async {
            let (traffic, ids) = (self.traffic.clone(), self.ids.clone());
            let conn = dial(&self.endpoint, &self.tls, destination, self.max_frame, traffic, ids).await?;
            let answer = conn.call(request).await;
            conn.connection().close(0u32.into(), b"done");
            answer
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::Lost(format!(
                "{}: no answer within {timeout:?}",
                destination.addr
            ))),
        }
    }

    /// Drops the cached connection to destination `index`, if any, so the next call dials
    /// afresh. For a destination that stopped answering: a process restarted on the same
    /// address never answers the old connection, which would otherwise linger until its
    /// idle timeout.
    pub fn forget(&self, index: usize) {
        if let Some(conn) = self.slot(index).and_then(|slot| lock(&slot.conn).take()) {
            conn.connection().close(0u32.into(), b"not answering");
        }
    }

    /// Closes every cached connection.
    pub async fn close_all(&self) {
        let slots = self.slots.read().unwrap_or_else(|p| p.into_inner()).clone();
        for slot in &slots {
            let _dialing = slot.dialing.lock().await;
            if let Some(conn) = lock(&slot.conn).take() {
                conn.connection().close(0u32.into(), b"closing");
            }
        }
    }
}

impl<Q, A> Slot<Q, A> {
    fn new(destination: Destination) -> Arc<Slot<Q, A>> {
        Arc::new(Slot {
            destination,
            conn: Mutex::new(None),
            dialing: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
        })
    }

    fn live(&self) -> Option<Arc<MuxConnection<Q, A>>> {
        lock(&self.conn).as_ref().filter(|c| !c.is_closed()).cloned()
    }

    fn check_recent_failure(&self) -> Result<(), TransportError> {
        match &*lock(&self.failed) {
            Some((at, why)) if at.elapsed() < DIAL_RETRY => Err(TransportError::Lost(format!(
                "{why} ({} ms ago; retrying after {DIAL_RETRY:?})",
                at.elapsed().as_millis()
            ))),
            _ => Ok(()),
        }
    }
}

/// Dials `destination` and opens the lanes.
pub async fn dial<Q: Serialize + FrameSizeHint, A: DeserializeOwned + Send + 'static>(
    endpoint: &quinn::Endpoint,
    tls: &quinn::ClientConfig,
    destination: &Destination,
    max_frame: usize,
    traffic: Arc<Traffic>,
    ids: Arc<RequestIds>,
) -> Result<Arc<MuxConnection<Q, A>>, TransportError> {
    let addr = destination.addr;
    let lost = |e: &dyn std::fmt::Display| TransportError::Lost(format!("{addr}: {e}"));
    let connecting = endpoint
        .connect_with(tls.clone(), addr, &destination.server_name)
        .map_err(|e| lost(&e))?;
    let conn = connecting.await.map_err(|e| match crate::refusal::Refusal::of(&e) {
        Some(refusal) => TransportError::Tls {
            addr,
            reason: refusal.dialled(addr),
        },
        None => lost(&e),
    })?;
    Ok(Arc::new(MuxConnection::open(conn, max_frame, traffic, ids).await?))
}
