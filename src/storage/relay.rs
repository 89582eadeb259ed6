//! Hands answers from the storage threads back to the node's runtime, a batch at a time.
//!
//! Waking a task of tokio's current-thread runtime from another thread costs a syscall
//! (an eventfd write to unpark the runtime) and, when the runtime was idle, a context
//! switch. Completing each write of a group commit on its own oneshot measured ~27
//! eventfd writes per batch, and the runtime woke for the first answer and sent its
//! response alone: one UDP datagram per request. The storage threads instead pass a whole
//! batch of answers to one task on the runtime, which completes them all in one go, so
//! the wake-up is paid once per batch and the responses leave the node together.
//! On the memory engine the writer and reader are themselves tasks on that runtime: the
//! relay then costs one task hop per batch and keeps a single path for both.

use tokio::runtime::Handle;
use tokio::sync::mpsc;

/// An answer that can be handed to whoever waits for it.
pub trait Deliver: Send + 'static {
    /// Completes the waiting request.
    fn deliver(self);
}

/// The storage threads' side of the relay.
pub struct Relay<T> {
    batches: mpsc::UnboundedSender<Vec<T>>,
}

impl<T: Deliver> Relay<T> {
    /// Starts the delivering task on `runtime`.
    pub fn spawn(runtime: &Handle) -> Relay<T> {
        let (batches, mut rx) = mpsc::unbounded_channel::<Vec<T>>();
        runtime.spawn(async move {
            while let Some(batch) = rx.recv().await {
                batch.into_iter().for_each(Deliver::deliver);
            }
        });
        Relay { batches }
    }

    /// Delivers `batch` on the runtime, or right here if the runtime is gone.
    pub fn send(&self, batch: Vec<T>) {
        if batch.is_empty() {
            return;
        }
        if let Err(mpsc::error::SendError(batch)) = self.batches.send(batch) {
            batch.into_iter().for_each(Deliver::deliver);
        }
    }
}
