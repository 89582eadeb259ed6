//! The node's QUIC endpoint: accepts connections and streams, decodes request frames,
//! hands them to the [`Replica`] concurrently and writes the responses back.
//!
//! Every stream is read frame by frame; each request runs as its own tracked task (so a
//! slow write does not hold up a read behind it) and its response goes through the
//! stream's coalescing writer. A malformed or oversized frame gets an error frame with
//! id 0 and ends that stream only: the connection and everyone else carry on. In-flight
//! requests are bounded by a semaphore.

use std::sync::Arc;

use bytes::Bytes;
use quinn::{Connection, Endpoint, Incoming, RecvStream, SendStream};
use quorumkv_client::transport::{spawn_frame_writer, FrameReader, ReadFrameError};
use quorumkv_client::wire::{decode, frame_bytes, ErrorKind, ErrorReply, RequestFrame, Response, ResponseFrame};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::replica::Replica;

/// Requests a node works on at once; more wait for a permit (backpressure on readers).
const MAX_IN_FLIGHT: usize = 4096;
/// Responses queued per stream before request tasks wait.
const RESPONSE_QUEUE: usize = 1024;
/// QUIC application error code for a stream closed because of a bad frame.
const BAD_FRAME: u32 = 1;
/// Id of a response that answers no particular request (the frame was unreadable).
const NO_REQUEST: u64 = 0;

/// Everything a connection handler needs, shared by all of them.
#[derive(Clone)]
pub struct ServerContext {
    /// Answers requests.
    pub replica: Arc<Replica>,
    /// Cancelled when the node shuts down: stop accepting and reading.
    pub shutdown: CancellationToken,
    /// Tracks every connection and request task, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Bounds requests in flight.
    pub in_flight: Arc<Semaphore>,
    /// Largest request frame accepted.
    pub max_frame: usize,
}

impl ServerContext {
    /// A context with the default in-flight bound.
    pub fn new(replica: Arc<Replica>, shutdown: CancellationToken, tracker: TaskTracker, max_frame: usize) -> Self {
        ServerContext {
            replica,
            shutdown,
            tracker,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            max_frame,
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
    accept_streams(conn, ctx).await;
}

async fn accept_streams(conn: Connection, ctx: ServerContext) {
    loop {
        let stream = tokio::select! {
            stream = conn.accept_bi() => stream,
            _ = ctx.shutdown.cancelled() => return,
        };
        match stream {
            Ok((send, recv)) => {
                ctx.tracker.spawn(serve_stream(send, recv, ctx.clone()));
            }
            Err(e) => {
                tracing::debug!("connection from {} ended: {e}", conn.remote_address());
                return;
            }
        }
    }
}

/// Reads request frames until the stream ends, a bad frame arrives or shutdown begins.
async fn serve_stream(send: SendStream, recv: RecvStream, ctx: ServerContext) {
    let responses = spawn_frame_writer(send, RESPONSE_QUEUE);
    let mut reader = FrameReader::new(recv, ctx.max_frame);
    loop {
        let next = tokio::select! {
            next = reader.next_frame() => next,
            _ = ctx.shutdown.cancelled() => return,
        };
        let body = match next {
            Ok(Some(body)) => body,
            Ok(None) => return,
            Err(ReadFrameError::Read(e)) => {
                tracing::debug!("stream ended: {e}");
                return;
            }
            Err(e) => return reject_stream(&mut reader, &responses, e.to_string()).await,
        };
        match decode::<RequestFrame>(&body) {
            Ok(frame) => dispatch(frame, &ctx, &responses).await,
            Err(e) => return reject_stream(&mut reader, &responses, e.to_string()).await,
        }
    }
}

/// Runs one request as a tracked task once a permit is free.
async fn dispatch(frame: RequestFrame, ctx: &ServerContext, responses: &mpsc::Sender<Bytes>) {
    let Ok(permit) = ctx.in_flight.clone().acquire_owned().await else {
        return;
    };
    let (replica, responses) = (ctx.replica.clone(), responses.clone());
    ctx.tracker.spawn(async move {
        let response = replica.handle(frame.request).await;
        send_response(&responses, frame.id, response).await;
        drop(permit);
    });
}

async fn send_response(responses: &mpsc::Sender<Bytes>, id: u64, response: Response) {
    match frame_bytes(&ResponseFrame { id, response }) {
        Ok(bytes) => {
            let _ = responses.send(bytes).await;
        }
        Err(e) => tracing::error!("cannot encode a response: {e}"),
    }
}

async fn reject_stream(reader: &mut FrameReader, responses: &mpsc::Sender<Bytes>, why: String) {
    tracing::warn!("closing a stream after a bad frame: {why}");
    let reply = ErrorReply {
        kind: ErrorKind::Malformed,
        message: why,
    };
    send_response(responses, NO_REQUEST, Response::Error(reply)).await;
    reader.stop(BAD_FRAME);
}
