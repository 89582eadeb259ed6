//! Where responses go: [`Reply`] (one request's answer), a stream's [`Outbox`] and the
//! writer task that hands queued frames to quinn.
//!
//! Every request takes its worst case from its connection's answer budget before it is
//! dispatched (see [`super::serve_stream`]); its [`Reply`] carries that reservation. When
//! the response is encoded, a large surplus (a `Get` reserved a maximum-size value and
//! found a small one) is given back at once; the rest travels with the frame and is
//! given back when the writer has handed the frame to quinn. So the queue of a stream
//! never holds more than the budget, sending never waits, and a client that stops
//! reading stops the node reading its requests instead of growing the queue.

use std::sync::Arc;

use bytes::Bytes;
use quinn::SendStream;
use quorumkv_client::wire::{frame_bytes_sized, Frame, FrameSizeHint};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

use super::budget::{Budget, MemoryGauges};

/// Most frames a writer hands to quinn in one write.
const COALESCE_FRAMES: usize = 256;
/// Least a queued frame is charged: its buffer's allocation and the queue's slot.
const MIN_CHARGE: usize = 256;
/// A reservation's surplus is given back when the response is encoded only from this
/// size up (it is a `Get`'s maximum value against a smaller one); smaller surpluses
/// wait for the write, which saves the hot path a semaphore call.
const GIVE_BACK_EARLY: usize = 64 * 1024;

/// An encoded response on its way to quinn, with the answer budget it holds.
struct Outgoing {
    frame: Bytes,
    /// Budget bytes to give back once the frame is handed to quinn.
    charge: usize,
}

/// One stream's response queue and the connection budget its answers hold.
pub struct Outbox {
    frames: mpsc::UnboundedSender<Outgoing>,
    /// The connection's answer budget.
    budget: Arc<Budget>,
    /// The node's gauges (answer bytes queued).
    gauges: Arc<MemoryGauges>,
}

impl Outbox {
    /// Starts the writer task of `send` and returns the stream's outbox.
    pub fn start(send: SendStream, budget: Arc<Budget>, gauges: Arc<MemoryGauges>) -> Arc<Outbox> {
        let (frames, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_frames(send, rx, budget.clone(), gauges.clone()));
        Arc::new(Outbox { frames, budget, gauges })
    }

    /// The connection's answer budget.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Queues `frame`, which holds `charge` budget bytes until it is written.
    fn queue(&self, frame: Bytes, charge: usize) {
        let len = frame.len();
        self.gauges.answers().add(len);
        if self.frames.send(Outgoing { frame, charge }).is_err() {
            // The writer is gone (the stream failed): nothing will be written.
            self.gauges.answers().sub(len);
            self.budget.give_back(charge);
        }
    }
}

/// Where the response to one request goes: its id, its stream's outbox and the answer
/// budget it reserved. Until it is sent, the request counts as running for the node's
/// shutdown, which waits for it like for a request task.
///
/// A reply may be cloned (a handler keeps one while it tries to hand another to storage)
/// but exactly one clone must be sent: sending gives the reservation back.
#[derive(Clone)]
pub struct Reply {
    id: u64,
    outbox: Arc<Outbox>,
    /// Answer budget bytes reserved for this request.
    reserved: usize,
    _running: TaskTrackerToken,
}

impl Reply {
    /// The reply to request `id`, holding `reserved` bytes of the answer budget.
    pub(super) fn new(id: u64, outbox: &Arc<Outbox>, reserved: usize, tracker: &TaskTracker) -> Reply {
        Reply {
            id,
            outbox: outbox.clone(),
            reserved,
            _running: tracker.token(),
        }
    }

    /// Gives the reservation back without answering (the request could not be run).
    pub(super) fn cancel(self) {
        self.outbox.budget.give_back(self.reserved);
    }

    /// Queues `response` for the stream's writer; never waits.
    pub fn send<T: Serialize + FrameSizeHint>(self, response: T) {
        let frame = Frame {
            id: self.id,
            body: response,
        };
        let encoded = frame_bytes_sized(&frame, frame.frame_size_hint());
        let frame = match encoded {
            Ok(frame) => frame,
            Err(e) => {
                tracing::error!("cannot encode a response: {e}");
                self.outbox.budget.give_back(self.reserved);
                return;
            }
        };
        // A response larger than its reservation (only one the client could not read
        // anyway) is charged what was reserved.
        let needed = frame.len().max(MIN_CHARGE).min(self.reserved);
        let surplus = self.reserved - needed;
        let charge = if surplus >= GIVE_BACK_EARLY {
            self.outbox.budget.give_back(surplus);
            needed
        } else {
            self.reserved
        };
        self.outbox.queue(frame, charge);
    }
}

/// Writes every queued frame to `send`, handing whatever is queued to quinn in one
/// write (as chunks, which quinn keeps without copying), then gives their budget back.
/// Finishes the stream when every [`Reply`] and the reader are gone; at the first write
/// error, stops and gives back the budget of everything still queued.
async fn write_frames(
    mut send: SendStream,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    budget: Arc<Budget>,
    gauges: Arc<MemoryGauges>,
) {
    let mut batch: Vec<Outgoing> = Vec::with_capacity(COALESCE_FRAMES);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(COALESCE_FRAMES);
    while rx.recv_many(&mut batch, COALESCE_FRAMES).await > 0 {
        let (mut charge, mut len) = (0, 0);
        for out in batch.drain(..) {
            charge += out.charge;
            len += out.frame.len();
            chunks.push(out.frame);
        }
        let written = send.write_all_chunks(&mut chunks).await;
        chunks.clear();
        gauges.answers().sub(len);
        budget.give_back(charge);
        if written.is_err() {
            rx.close();
            while let Ok(out) = rx.try_recv() {
                gauges.answers().sub(out.frame.len());
                budget.give_back(out.charge);
            }
            return;
        }
    }
    let _ = send.finish();
}
