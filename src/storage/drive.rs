//! [`Driver`]: how the store's loops run, as its engine says ([`Work`]).
//!
//! The loop bodies are written once, elsewhere: a batch of writes ([`super::writer`]), a
//! batch of point reads, one chunk of the rebuild scan, one periodic fsync
//! ([`super::workers`]). This module only waits between them: on an OS thread with a
//! blocking receive, `blocking_send` and `thread::sleep` when the engine blocks (fjall),
//! or as a task on the store's runtime with their `.await` forms when it never does (the
//! memory engine under the simulation). A task never calls the blocking forms: on a
//! current-thread runtime they panic or deadlock. A task yields between rebuild chunks
//! so that one node's rebuild does not starve the others sharing the runtime. Every loop
//! ends when the store is gone: queues close when their senders drop, and the periodic
//! loop stops when its [`oneshot`] sender (held by the store) drops.

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};

use super::engine::{ReadView, Work};
use super::workers::Rebuild;
use super::writer::WriteOp;
use super::StorageError;

/// Starts the store's loops the way its engine needs.
pub struct Driver {
    /// Threads or tasks.
    work: Work,
    /// The runtime tasks run on (the one current when the store started).
    runtime: Handle,
}

impl Driver {
    /// A driver starting `work` loops; tasks go to `runtime`.
    pub fn new(work: Work, runtime: Handle) -> Driver {
        Driver { work, runtime }
    }

    /// Runs `body` on each batch of queued items (the first one waited for, then up to
    /// `max` in all of what is already queued) until every sender of `queue` is gone.
    /// `name` names the thread.
    pub fn serve<T: Send + 'static>(
        &self,
        name: &str,
        mut queue: mpsc::Receiver<T>,
        max: usize,
        mut body: impl FnMut(Vec<T>) + Send + 'static,
    ) -> Result<(), StorageError> {
        match self.work {
            Work::Threads => spawn_thread(name, move || {
                while let Some(first) = queue.blocking_recv() {
                    body(fill(&mut queue, first, max));
                }
            }),
            Work::Tasks => {
                self.runtime.spawn(async move {
                    while let Some(first) = queue.recv().await {
                        body(fill(&mut queue, first, max));
                    }
                });
                Ok(())
            }
        }
    }

    /// Runs the rebuild scan to its end, handing each chunk's record states to the
    /// writer (which owns the version index), then tells it the index is complete.
    /// Stops early if the writer is gone.
    pub fn rebuild<S: ReadView>(
        &self,
        mut rebuild: Rebuild<S>,
        writer: mpsc::Sender<WriteOp>,
    ) -> Result<(), StorageError> {
        match self.work {
            Work::Threads => spawn_thread("merkle-rebuild", move || {
                while let Some(chunk) = rebuild.next_chunk() {
                    if writer.blocking_send(WriteOp::LoadIndex(chunk)).is_err() {
                        return;
                    }
                }
                rebuild.finish();
                let _ = writer.blocking_send(WriteOp::IndexLoaded);
            }),
            Work::Tasks => {
                self.runtime.spawn(async move {
                    while let Some(chunk) = rebuild.next_chunk() {
                        if writer.send(WriteOp::LoadIndex(chunk)).await.is_err() {
                            return;
                        }
                        tokio::task::yield_now().await;
                    }
                    rebuild.finish();
                    let _ = writer.send(WriteOp::IndexLoaded).await;
                });
                Ok(())
            }
        }
    }

    /// Runs `tick` every `interval` until it returns false or the sender of `stop` is
    /// dropped (checked after each wait: a closed store is not ticked again).
    /// `name` names the thread.
    pub fn every(
        &self,
        name: &str,
        interval: Duration,
        mut stop: oneshot::Receiver<()>,
        mut tick: impl FnMut() -> bool + Send + 'static,
    ) -> Result<(), StorageError> {
        match self.work {
            Work::Threads => spawn_thread(name, move || loop {
                std::thread::sleep(interval);
                if stop.try_recv() != Err(oneshot::error::TryRecvError::Empty) || !tick() {
                    return;
                }
            }),
            Work::Tasks => {
                self.runtime.spawn(async move {
                    loop {
                        // Biased: an unbiased select draws a random branch order, which
                        // a simulation replaying a seed cannot allow.
                        tokio::select! {
                            biased;
                            _ = &mut stop => return,
                            () = tokio::time::sleep(interval) => {}
                        }
                        if !tick() {
                            return;
                        }
                    }
                });
                Ok(())
            }
        }
    }
}

/// A batch starting with `first`, topped up with what `queue` holds now, up to `max`.
fn fill<T>(queue: &mut mpsc::Receiver<T>, first: T, max: usize) -> Vec<T> {
    // Sized for what is queued now: growing it one push at a time reallocated ~6 times
    // per batch, ~2% of the writer thread.
    let mut batch = Vec::with_capacity((queue.len() + 1).min(max));
    batch.push(first);
    while batch.len() < max {
        match queue.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    batch
}

/// Starts a named thread running `run`.
fn spawn_thread(name: &str, run: impl FnOnce() + Send + 'static) -> Result<(), StorageError> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(run)
        .map(|_| ())
        .map_err(|e| StorageError::Fatal(format!("cannot start the {name} thread: {e}")))
}
