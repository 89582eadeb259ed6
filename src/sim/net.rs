//! The simulator's network: an in-memory, seeded datagram network whose sockets quinn
//! uses in place of UDP ([`SimSocket`] implements quinn's `AsyncUdpSocket`).
//!
//! It owns every datagram between send and delivery: per-link latency with seeded jitter
//! (which reorders), loss, duplication, and one-way cuts; delivery runs on tokio's timer,
//! so under a paused clock (`start_paused`) simulated time jumps from one delivery to the
//! next. Decisions are drawn from one [`SimRng`] in send order and deliveries leave in
//! (time, send order), so the same seed and the same sends give the same deliveries in
//! the same order. Every event goes into a trace (its tail kept, all of it hashed).
//! Sockets bind 127.0.0.0/8 addresses only, like the tests' real sockets.
//!
//! It leaves to the caller what runs on top (quinn endpoints: `sim::quic`) and when the
//! faults change. A cut drops what is sent while it stands; datagrams already in flight
//! still arrive, as they would have left the wire before a real partition. A host can be
//! unplugged (its socket goes dead, as at a crash, and the address is free for the next
//! incarnation) or frozen (it sends nothing and reads nothing; what arrives waits in its
//! inbox, as for a stopped process, until it thaws).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::rng::SimRng;
use super::trace::{Trace, TraceEvent, TraceKind};

/// Datagrams a socket holds unread before it drops new ones, like a UDP receive buffer
/// (about 5 MB of 1200-byte QUIC datagrams).
const INBOX_CAPACITY: usize = 4096;
/// One-way latency of a link nobody configured: a LAN's.
const DEFAULT_LATENCY: Duration = Duration::from_micros(500);

/// How one direction of a link treats datagrams.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// Base one-way delay.
    pub latency: Duration,
    /// Up to this much extra delay, drawn per datagram: datagrams overtake each other.
    pub jitter: Duration,
    /// Probability that a datagram is lost.
    pub loss: f64,
    /// Probability that a datagram arrives twice (each copy with its own jitter).
    pub duplicate: f64,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            latency: DEFAULT_LATENCY,
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
        }
    }
}

/// A socket address the network refused.
#[derive(Debug, thiserror::Error)]
pub enum SimNetError {
    /// Only loopback IPv4 addresses exist on the simulated network.
    #[error("{addr}: the simulated network has only 127.0.0.0/8 addresses")]
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// Another socket holds the address.
    #[error("{addr}: address in use on the simulated network")]
    InUse {
        /// The address asked for.
        addr: SocketAddr,
    },
}

/// A datagram on the wire.
#[derive(Debug)]
struct Datagram {
    /// Sender.
    from: SocketAddr,
    /// Receiver.
    to: SocketAddr,
    /// Contents.
    payload: Bytes,
}

/// What a bound socket has received and not yet read.
#[derive(Debug, Default)]
struct Inbox {
    /// Delivered datagrams, oldest first.
    queue: VecDeque<Datagram>,
    /// The task waiting in `poll_recv`, woken by the next delivery.
    waker: Option<Waker>,
    /// Which socket bound the address: a socket of an earlier binding is dead.
    generation: u64,
    /// The host is stopped: it neither reads nor sends until thawed.
    frozen: bool,
}

/// Everything the network decides with, behind one lock.
#[derive(Debug)]
struct State {
    /// The network's random source: every loss, duplication and jitter draw.
    rng: SimRng,
    /// Links nobody configured behave like this.
    default_link: LinkConfig,
    /// Configured links, by (from, to).
    links: HashMap<(SocketAddr, SocketAddr), LinkConfig>,
    /// One-way cuts: datagrams from the first to the second are dropped.
    cuts: HashSet<(SocketAddr, SocketAddr)>,
    /// Bound sockets.
    inboxes: HashMap<SocketAddr, Inbox>,
    /// Datagrams in flight by (arrival time, send order): the delivery order.
    in_flight: BTreeMap<(Instant, u64), Datagram>,
    /// Datagrams ever put in flight: the tie-break between equal arrival times.
    sent: u64,
    /// Sockets ever bound: each binding's generation.
    bindings: u64,
    /// What happened, hashed.
    trace: Trace,
}

/// The shared part of a network: its state and the delivery task's wake-up.
#[derive(Debug)]
struct Shared {
    /// The state.
    state: Mutex<State>,
    /// Wakes the delivery task when a datagram is queued or the network goes away.
    wake: Arc<Notify>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.wake.notify_one();
    }
}

/// An in-memory datagram network; clones share it.
#[derive(Debug, Clone)]
pub struct SimNetwork {
    /// The network.
    shared: Arc<Shared>,
}

impl SimNetwork {
    /// A network whose every decision follows `seed`. Must be called inside a tokio
    /// runtime: it spawns the delivery task, which ends when the network and all its
    /// sockets are dropped.
    pub fn new(seed: u64) -> SimNetwork {
        let wake = Arc::new(Notify::new());
        let state = State {
            rng: SimRng::new(seed),
            default_link: LinkConfig::default(),
            links: HashMap::new(),
            cuts: HashSet::new(),
            inboxes: HashMap::new(),
            in_flight: BTreeMap::new(),
            sent: 0,
            bindings: 0,
            trace: Trace::new(Instant::now()),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: wake.clone(),
        });
        tokio::spawn(deliver_forever(Arc::downgrade(&shared), wake));
        SimNetwork { shared }
    }

    /// A socket bound to `addr` (a 127.x.y.z address, port free on this network).
    pub fn bind(&self, addr: SocketAddr) -> Result<Arc<SimSocket>, SimNetError> {
        let IpAddr::V4(ip) = addr.ip() else {
            return Err(SimNetError::NotLoopback { addr });
        };
        if !ip.is_loopback() {
            return Err(SimNetError::NotLoopback { addr });
        }
        let mut state = self.shared.lock();
        if state.inboxes.contains_key(&addr) {
            return Err(SimNetError::InUse { addr });
        }
        state.bindings += 1;
        let generation = state.bindings;
        let inbox = Inbox {
            generation,
            ..Inbox::default()
        };
        state.inboxes.insert(addr, inbox);
        Ok(Arc::new(SimSocket {
            shared: self.shared.clone(),
            addr,
            generation,
        }))
    }

    /// Pulls the plug on the host at `addr`: its socket sends and receives nothing more
    /// (quinn on it sees a closed socket), what waited in its inbox is gone, and the
    /// address can be bound again.
    pub fn unplug(&self, addr: SocketAddr) {
        let removed = self.shared.lock().inboxes.remove(&addr);
        if let Some(waker) = removed.and_then(|inbox| inbox.waker) {
            waker.wake();
        }
    }

    /// Stops the host at `addr` (see [`thaw`](Self::thaw)): it sends nothing, and what
    /// arrives waits in its inbox (dropped once the inbox is full).
    pub fn freeze(&self, addr: SocketAddr) {
        if let Some(inbox) = self.shared.lock().inboxes.get_mut(&addr) {
            inbox.frozen = true;
        }
    }

    /// Lets a frozen host at `addr` run again: it reads what waited for it.
    pub fn thaw(&self, addr: SocketAddr) {
        let mut state = self.shared.lock();
        let Some(inbox) = state.inboxes.get_mut(&addr) else {
            return;
        };
        inbox.frozen = false;
        if let Some(waker) = inbox.waker.take() {
            waker.wake();
        }
    }

    /// Sets how links nobody configured behave.
    pub fn set_default_link(&self, link: LinkConfig) {
        self.shared.lock().default_link = link;
    }

    /// Sets how datagrams from `from` to `to` are treated (one direction only).
    pub fn set_link(&self, from: SocketAddr, to: SocketAddr, link: LinkConfig) {
        self.shared.lock().links.insert((from, to), link);
    }

    /// Drops every datagram sent from `from` to `to` until [`heal`](Self::heal).
    pub fn cut(&self, from: SocketAddr, to: SocketAddr) {
        self.shared.lock().cuts.insert((from, to));
    }

    /// Lifts the cut from `from` to `to`.
    pub fn heal(&self, from: SocketAddr, to: SocketAddr) {
        self.shared.lock().cuts.remove(&(from, to));
    }

    /// The hash of every event so far: equal for runs that did the same.
    pub fn trace_hash(&self) -> blake3::Hash {
        self.shared.lock().trace.hash()
    }

    /// The most recent events, oldest first.
    pub fn trace_tail(&self) -> Vec<TraceEvent> {
        self.shared.lock().trace.tail()
    }

    /// How many events of `kind` happened.
    pub fn count(&self, kind: TraceKind) -> u64 {
        self.shared.lock().trace.count(kind)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Puts one datagram from socket `generation` on the wire, or drops it (sender not
    /// running, cut, loss), maybe twice (duplication).
    fn send(&self, generation: u64, from: SocketAddr, to: SocketAddr, payload: &[u8]) {
        let now = Instant::now();
        let mut state = self.lock();
        let len = payload.len();
        let running = state
            .inboxes
            .get(&from)
            .is_some_and(|inbox| inbox.generation == generation && !inbox.frozen);
        if !running {
            state.trace.record(now, TraceKind::Silenced, from, to, len);
            return;
        }
        state.trace.record(now, TraceKind::Send, from, to, len);
        if state.cuts.contains(&(from, to)) {
            state.trace.record(now, TraceKind::Cut, from, to, len);
            return;
        }
        let link = state.links.get(&(from, to)).copied().unwrap_or(state.default_link);
        if state.rng.chance(link.loss) {
            state.trace.record(now, TraceKind::Lost, from, to, len);
            return;
        }
        let copies = if state.rng.chance(link.duplicate) {
            state.trace.record(now, TraceKind::Duplicated, from, to, len);
            2
        } else {
            1
        };
        let payload = Bytes::copy_from_slice(payload);
        for _ in 0..copies {
            let jitter = state.rng.up_to(duration_nanos(link.jitter));
            let arrival = now + link.latency + Duration::from_nanos(jitter);
            state.sent += 1;
            let order = state.sent;
            let datagram = Datagram {
                from,
                to,
                payload: payload.clone(),
            };
            state.in_flight.insert((arrival, order), datagram);
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Delivers every datagram due by now; returns when the next one is due.
    fn deliver_due(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        while let Some(entry) = state.in_flight.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            let datagram = entry.remove();
            state.deliver(now, datagram);
        }
        None
    }
}

impl State {
    /// Hands `datagram` to its receiver's inbox (or drops it: unbound, inbox full).
    fn deliver(&mut self, now: Instant, datagram: Datagram) {
        let (from, to, len) = (datagram.from, datagram.to, datagram.payload.len());
        let kind = match self.inboxes.get_mut(&to) {
            None => TraceKind::Unbound,
            Some(inbox) if inbox.queue.len() >= INBOX_CAPACITY => TraceKind::Overflow,
            Some(inbox) => {
                inbox.queue.push_back(datagram);
                if let Some(waker) = inbox.waker.take() {
                    waker.wake();
                }
                TraceKind::Deliver
            }
        };
        self.trace.record(now, kind, from, to, len);
    }
}

/// The delivery task: sleeps until the next datagram is due (or one is queued), delivers.
async fn deliver_forever(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let next = match shared.upgrade() {
            Some(shared) => shared.deliver_due(),
            None => return,
        };
        let queued = wake.notified();
        match next {
            Some(at) => {
                tokio::select! {
                    biased;
                    _ = tokio::time::sleep_until(at) => {}
                    _ = queued => {}
                }
            }
            None => queued.await,
        }
    }
}

/// Nanoseconds of `d`, saturated (jitter beyond 584 years is not a use case).
fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A host's socket on a [`SimNetwork`]; quinn's `AsyncUdpSocket`.
#[derive(Debug)]
pub struct SimSocket {
    /// The network.
    shared: Arc<Shared>,
    /// Where this socket is bound.
    addr: SocketAddr,
    /// Which binding of the address this socket is.
    generation: u64,
}

impl Drop for SimSocket {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state
            .inboxes
            .get(&self.addr)
            .is_some_and(|inbox| inbox.generation == self.generation)
        {
            state.inboxes.remove(&self.addr);
        }
    }
}

/// The simulated network never pushes back on a sender: always writable.
#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let segment = transmit.segment_size.unwrap_or(transmit.contents.len()).max(1);
        for datagram in transmit.contents.chunks(segment) {
            self.shared
                .send(self.generation, self.addr, transmit.destination, datagram);
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut state = self.shared.lock();
        let inbox = match state.inboxes.get_mut(&self.addr) {
            Some(inbox) if inbox.generation == self.generation => inbox,
            _ => return Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
        };
        if inbox.frozen {
            inbox.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let mut read = 0;
        for (buf, meta) in bufs.iter_mut().zip(meta.iter_mut()) {
            let Some(datagram) = inbox.queue.pop_front() else { break };
            // A datagram longer than the buffer is truncated, as recvmsg does.
            let len = datagram.payload.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram.payload[..len]);
            *meta = RecvMeta::default();
            meta.addr = datagram.from;
            meta.len = len;
            meta.stride = len;
            meta.dst_ip = Some(self.addr.ip());
            read += 1;
        }
        if read > 0 {
            return Poll::Ready(Ok(read));
        }
        inbox.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
