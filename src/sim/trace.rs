//! The network's trace: every send, delivery and drop with its simulated time, hashed as
//! it happens (the run's fingerprint) with its most recent events kept for reading.
//!
//! The hash covers time, event, addresses and length, not payload bytes: TLS key
//! exchange draws from the OS inside ring (see `sim::quic`), so payloads differ between
//! runs whose every length and timing is the same.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

/// Events kept for reading (the hash covers all of them): a minute of a simulated
/// cluster under load, ~10 MB.
pub const TRACE_KEPT: usize = 150_000;

/// What happened to a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TraceKind {
    /// A socket sent it.
    Send,
    /// It reached a bound socket.
    Deliver,
    /// The link lost it.
    Lost,
    /// A one-way cut dropped it.
    Cut,
    /// The link will deliver it twice.
    Duplicated,
    /// Nobody was bound at the destination.
    Unbound,
    /// The receiver's inbox was full.
    Overflow,
    /// The sending host was not running (crashed or frozen).
    Silenced,
}

/// Every kind, in the order of `Trace::counts`.
const KINDS: [TraceKind; 8] = [
    TraceKind::Send,
    TraceKind::Deliver,
    TraceKind::Lost,
    TraceKind::Cut,
    TraceKind::Duplicated,
    TraceKind::Unbound,
    TraceKind::Overflow,
    TraceKind::Silenced,
];

/// One event of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceEvent {
    /// Simulated time since the network was made.
    pub at: Duration,
    /// What happened.
    pub kind: TraceKind,
    /// The datagram's sender.
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// Its length in bytes.
    pub len: usize,
}

/// The trace of one network.
#[derive(Debug)]
pub(crate) struct Trace {
    /// Simulated time zero: when the network was made.
    start: Instant,
    /// The hash of every event so far.
    hasher: blake3::Hasher,
    /// The most recent events.
    tail: VecDeque<TraceEvent>,
    /// Events so far, by kind (indexed like [`KINDS`]).
    counts: [u64; KINDS.len()],
}

impl Trace {
    pub(crate) fn new(start: Instant) -> Trace {
        Trace {
            start,
            hasher: blake3::Hasher::new(),
            tail: VecDeque::new(),
            counts: [0; KINDS.len()],
        }
    }

    pub(crate) fn record(&mut self, now: Instant, kind: TraceKind, from: SocketAddr, to: SocketAddr, len: usize) {
        let at = now.duration_since(self.start);
        let index = kind_index(kind);
        self.counts[index] += 1;
        self.hasher.update(&at.as_nanos().to_le_bytes());
        self.hasher.update(&[index as u8]);
        hash_addr(&mut self.hasher, from);
        hash_addr(&mut self.hasher, to);
        self.hasher.update(&(len as u64).to_le_bytes());
        if self.tail.len() == TRACE_KEPT {
            self.tail.pop_front();
        }
        self.tail.push_back(TraceEvent {
            at,
            kind,
            from,
            to,
            len,
        });
    }

    pub(crate) fn hash(&self) -> blake3::Hash {
        self.hasher.finalize()
    }

    pub(crate) fn tail(&self) -> Vec<TraceEvent> {
        self.tail.iter().cloned().collect()
    }

    pub(crate) fn count(&self, kind: TraceKind) -> u64 {
        self.counts[kind_index(kind)]
    }
}

fn kind_index(kind: TraceKind) -> usize {
    KINDS.iter().position(|k| *k == kind).unwrap_or_default()
}

fn hash_addr(hasher: &mut blake3::Hasher, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => hasher.update(&ip.octets()),
        IpAddr::V6(ip) => hasher.update(&ip.octets()),
    };
    hasher.update(&addr.port().to_le_bytes());
}
