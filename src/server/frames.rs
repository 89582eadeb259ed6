//! [`RequestReader`]: reads a node's incoming request frames under a deadline and its
//! connection's budget for partly received frames.
//!
//! A frame must arrive whole within the frame timeout, counted from its first byte
//! (time spent waiting for budget is not counted: that wait is the node's doing). A
//! stream that stalls inside a frame for longer is closed with a reason. A frame larger
//! than [`SMALL_FRAME`] takes its length from the connection's budget before its body is
//! read; when the budget is used up it waits, its stream not being read, so the client
//! is held back by QUIC flow control (the bytes it already sent stay in quinn's receive
//! window, itself bounded). Waiting rather than refusing: a legitimate large write then
//! only slows down. Smaller frames are not counted one by one: a stream never buffers
//! more than [`SMALL_FRAME`] of them plus a frame prefix.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use quinn::RecvStream;
use quorumkv_client::transport::ReadFrameError;
use quorumkv_client::wire::{FrameError, LENGTH_PREFIX};
use tokio::time::Instant;

use super::budget::{Budget, MemoryGauges};

/// Frames up to this size are read without taking budget; also the most a read asks
/// quinn for while no large frame is under way, so a stream's buffer of small frames
/// stays below twice this.
pub const SMALL_FRAME: usize = 16 * 1024;

/// Why no request frame could be read: what any frame reader meets
/// ([`ReadFrameError`], shared with the client's reader), or a frame that stalled.
#[derive(Debug, thiserror::Error)]
pub enum ReadRequestError {
    /// Not a valid frame, a failed stream, or a stream that ended inside a frame.
    #[error(transparent)]
    Stream(#[from] ReadFrameError),
    /// The rest of a frame did not arrive in time.
    #[error(
        "frame not complete {} ms after its first byte: {received} of {} bytes received",
        timeout.as_millis(),
        expected.map_or("an unknown number of".to_string(), |e| e.to_string())
    )]
    Stalled {
        /// Bytes of the frame received (length prefix included).
        received: usize,
        /// Bytes the frame announced (length prefix included), if its prefix arrived.
        expected: Option<usize>,
        /// The frame timeout.
        timeout: Duration,
    },
}

/// A frame body with the connection budget its bytes hold until it is dropped.
pub struct RequestBody {
    /// The frame body.
    pub bytes: Bytes,
    /// Budget taken for it (none for a small frame); given back on drop.
    grant: Option<Grant>,
}

/// Budget bytes taken from a connection's frame budget, given back on drop.
struct Grant {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

impl RequestBody {
    /// Gives the frame's budget back now (its bytes are decoded and dropped).
    pub fn release(self) {
        drop(self.grant);
    }
}

/// Reads length-prefixed request frames from one stream.
pub struct RequestReader {
    recv: RecvStream,
    /// Received bytes not yet split into frames.
    buf: BytesMut,
    /// Largest frame body accepted.
    max_frame: usize,
    /// Longest time from a frame's first byte to its last.
    timeout: Duration,
    /// When the frame under way must be complete.
    deadline: Option<Instant>,
    /// The connection's budget for frames received in part.
    budget: Arc<Budget>,
    /// Budget held by the frame under way.
    granted: usize,
    /// The node's gauges.
    gauges: Arc<MemoryGauges>,
    /// What this reader counts in the partial-frames gauge now.
    counted: usize,
}

impl RequestReader {
    /// A reader of frames up to `max_frame` bytes, each due within `timeout`.
    pub fn new(
        recv: RecvStream,
        max_frame: usize,
        timeout: Duration,
        budget: Arc<Budget>,
        gauges: Arc<MemoryGauges>,
    ) -> RequestReader {
        RequestReader {
            recv,
            buf: BytesMut::new(),
            max_frame,
            timeout,
            deadline: None,
            budget,
            granted: 0,
            gauges,
            counted: 0,
        }
    }

    /// The next frame body, or `None` when the client finished the stream cleanly.
    pub async fn next_frame(&mut self) -> Result<Option<RequestBody>, ReadRequestError> {
        loop {
            if let Some(body) = self.split().map_err(ReadFrameError::from)? {
                return Ok(Some(body));
            }
            let want = self.want().await;
            self.count();
            let chunk = if self.buf.is_empty() {
                self.recv.read_chunk(want, true).await.map_err(ReadFrameError::from)?
            } else {
                self.read_before_deadline(want).await?
            };
            match chunk {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadFrameError::Truncated.into()),
            }
        }
    }

    /// Tells the client to stop sending on this stream.
    pub fn stop(&mut self, code: u32) {
        let _ = self.recv.stop(quinn::VarInt::from_u32(code));
    }

    /// Splits a complete frame off the buffer, if there is one.
    fn split(&mut self) -> Result<Option<RequestBody>, FrameError> {
        let Some(len) = self.announced()? else {
            return Ok(None);
        };
        if self.buf.len() < LENGTH_PREFIX + len {
            return Ok(None);
        }
        self.buf.advance(LENGTH_PREFIX);
        let bytes = self.buf.split_to(len).freeze();
        self.deadline = None;
        let granted = std::mem::take(&mut self.granted);
        let grant = (granted > 0).then(|| {
            // The buffer still points into the large frame's allocation and would keep
            // it once the frame is gone: keep only the bytes after the frame.
            self.buf = BytesMut::from(&self.buf[..]);
            Grant {
                budget: self.budget.clone(),
                bytes: granted,
            }
        });
        Ok(Some(RequestBody { bytes, grant }))
    }

    /// The length of the frame under way, once its prefix is in.
    fn announced(&self) -> Result<Option<usize>, FrameError> {
        if self.buf.len() < LENGTH_PREFIX {
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&self.buf[..LENGTH_PREFIX]);
        let len = u32::from_le_bytes(prefix) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLong {
                len,
                max: self.max_frame,
            });
        }
        Ok(Some(len))
    }

    /// How many bytes to ask quinn for next: up to the end of the frame under way (a
    /// large one first takes its budget), else a small read.
    async fn want(&mut self) -> usize {
        let Ok(Some(len)) = self.announced() else {
            return SMALL_FRAME;
        };
        if len > SMALL_FRAME && self.granted == 0 {
            let asked = Instant::now();
            self.granted = self.budget.take(len).await;
            if let Some(deadline) = self.deadline.as_mut() {
                *deadline += asked.elapsed();
            }
            self.buf.reserve(LENGTH_PREFIX + len - self.buf.len());
        }
        LENGTH_PREFIX + len - self.buf.len()
    }

    /// Reads the rest of the frame under way, failing once its deadline (set here, at
    /// the first read that finds part of it in the buffer) has passed.
    async fn read_before_deadline(&mut self, want: usize) -> Result<Option<quinn::Chunk>, ReadRequestError> {
        let deadline = *self.deadline.get_or_insert_with(|| Instant::now() + self.timeout);
        match tokio::time::timeout_at(deadline, self.recv.read_chunk(want, true)).await {
            Ok(chunk) => Ok(chunk.map_err(ReadFrameError::from)?),
            Err(_) => Err(ReadRequestError::Stalled {
                received: self.buf.len(),
                expected: self.announced().ok().flatten().map(|len| len + LENGTH_PREFIX),
                timeout: self.timeout,
            }),
        }
    }

    /// Brings the partial-frames gauge up to date with the buffer (before each read:
    /// what waits there is a frame received in part).
    fn count(&mut self) {
        let now = self.buf.len();
        if now > self.counted {
            self.gauges.partial_frames().add(now - self.counted);
        } else {
            self.gauges.partial_frames().sub(self.counted - now);
        }
        self.counted = now;
    }
}

impl Drop for RequestReader {
    fn drop(&mut self) {
        self.budget.give_back(self.granted);
        self.gauges.partial_frames().sub(self.counted);
    }
}
