//! Fault injection on the wire: a UDP socket that cuts chosen peers off.
//!
//! [`FaultyUdpSocket`] wraps a node's real [`AsyncUdpSocket`] and drops every datagram
//! sent to, or received from, an address its [`Faults`] handle blocks — silently, like a
//! lossy network, so QUIC sees loss and timeouts rather than errors. Tests and the
//! simulation tier build a node with `NodeParts { socket: FaultyUdpSocket::wrap(..), .. }`
//! and flip [`Faults::block`] / [`Faults::heal`] to make and mend partitions; QUIC, TLS and
//! the node's own logic stay real. One `Faults` shared by every node's socket makes
//! `block(addr)` isolate that node from all others; one `Faults` per node gives pairwise
//! cuts. This module is compiled into the library (not under `cfg(test)`) so integration
//! tests in `tests/` can use it; it leaves delay, reordering and corruption to others.

use std::collections::HashSet;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

/// Batches in a row that may consist only of blocked datagrams before `poll_recv` yields
/// to other tasks, so a blocked peer flooding us cannot hold the executor thread.
const MAX_DROPPED_BATCHES: usize = 32;

/// A shared switchboard of blocked remote addresses; clones control the same faults.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    inner: Arc<FaultsInner>,
}

#[derive(Debug, Default)]
struct FaultsInner {
    /// Remote addresses whose datagrams are dropped in both directions.
    blocked: RwLock<HashSet<SocketAddr>>,
    /// When set, every datagram is dropped, whoever it is from or to (a node cut off from
    /// everyone, clients included).
    isolated: std::sync::atomic::AtomicBool,
    /// Datagrams dropped so far (GSO/GRO batches count each datagram), so a test can
    /// check that a partition really cut traffic.
    dropped: AtomicU64,
}

impl Faults {
    /// Drops datagrams to and from `addr` from now on.
    pub fn block(&self, addr: SocketAddr) {
        self.write().insert(addr);
    }

    /// Lets datagrams to and from `addr` through again.
    pub fn unblock(&self, addr: SocketAddr) {
        self.write().remove(&addr);
    }

    /// Unblocks every address.
    pub fn heal(&self) {
        self.write().clear();
        self.inner.isolated.store(false, Ordering::Relaxed);
    }

    /// Drops every datagram in both directions until [`Faults::heal`].
    pub fn isolate(&self) {
        self.inner.isolated.store(true, Ordering::Relaxed);
    }

    /// Whether datagrams to and from `addr` are dropped.
    pub fn is_blocked(&self, addr: SocketAddr) -> bool {
        self.inner.isolated.load(Ordering::Relaxed)
            || self
                .inner
                .blocked
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&addr)
    }

    /// Datagrams dropped so far, in both directions, by every socket using these faults.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    fn count_dropped(&self, datagrams: usize) {
        self.inner.dropped.fetch_add(datagrams as u64, Ordering::Relaxed);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashSet<SocketAddr>> {
        // The set stays consistent even if a holder panicked: every update is one call.
        self.inner.blocked.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An [`AsyncUdpSocket`] that drops the datagrams its [`Faults`] block and passes the
/// rest to the socket it wraps.
#[derive(Debug)]
pub struct FaultyUdpSocket {
    /// The socket that really sends and receives.
    inner: Arc<dyn AsyncUdpSocket>,
    /// Which remote addresses are cut off.
    faults: Faults,
}

impl FaultyUdpSocket {
    /// Wraps any socket (a real one, or a simulated network's).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, faults: Faults) -> FaultyUdpSocket {
        FaultyUdpSocket { inner, faults }
    }

    /// Registers `socket` with tokio and wraps it. Must run inside a tokio runtime.
    pub fn wrap(socket: std::net::UdpSocket, faults: Faults) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = TokioRuntime.wrap_udp_socket(socket)?;
        Ok(Arc::new(FaultyUdpSocket::new(inner, faults)))
    }

    /// Removes datagrams from blocked sources from the first `received` entries and
    /// returns how many are left, packed at the front.
    ///
    /// Kept entries are moved forward by swapping both the `meta` entry and the buffer
    /// slice itself, so `bufs[k]` and `meta[k]` still describe the same datagram, no
    /// bytes are copied, and no buffer has to be large enough for another's contents.
    /// The caller reads results through `bufs`, which is exactly what it hands us (quinn
    /// rebuilds its slices from its receive buffer, so their order carries no meaning).
    /// We compact rather than mark dropped entries with `len = 0`: quinn 0.11's receive
    /// loop would skip an empty entry, but it would still count it as received work, and
    /// any other caller would see a phantom empty datagram from the blocked peer.
    /// One entry holds one source: GRO only coalesces datagrams of the same flow.
    fn filter_received(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta], received: usize) -> usize {
        let mut kept = 0;
        for i in 0..received {
            if self.faults.is_blocked(meta[i].addr) {
                self.faults.count_dropped(datagrams_in(meta[i].len, meta[i].stride));
                continue;
            }
            if kept != i {
                meta.swap(kept, i);
                bufs.swap(kept, i);
            }
            kept += 1;
        }
        kept
    }
}

impl AsyncUdpSocket for FaultyUdpSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    /// A datagram to a blocked address is reported as sent, as a lossy network would.
    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if self.faults.is_blocked(transmit.destination) {
            let segments = transmit.segment_size.unwrap_or(transmit.contents.len());
            self.faults
                .count_dropped(datagrams_in(transmit.contents.len(), segments));
            return Ok(());
        }
        self.inner.try_send(transmit)
    }

    /// Polls the inner socket until it yields a datagram from an unblocked source or
    /// returns `Pending`. Returning `Pending` ourselves after a batch of only blocked
    /// datagrams would lose the wakeup: the inner socket registered no waker then.
    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_DROPPED_BATCHES {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(received)) => received,
                other => return other,
            };
            let kept = self.filter_received(bufs, meta, received);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
        // Still only blocked datagrams: yield, and ask to be polled again at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// Datagrams in a `len`-byte GSO/GRO buffer cut every `stride` bytes (an empty datagram
/// counts as one).
fn datagrams_in(len: usize, stride: usize) -> usize {
    if stride == 0 {
        return 1;
    }
    len.div_ceil(stride).max(1)
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::net::UdpSocket;
    use std::time::Duration;

    use quinn::{Endpoint, EndpointConfig};

    use super::*;
    use crate::pki;

    /// Bound on a step that should succeed; generous for a loaded test machine.
    const EXPECT_SUCCESS: Duration = Duration::from_secs(10);
    /// How long a connection attempt across the partition must stay incomplete.
    const EXPECT_CUT: Duration = Duration::from_secs(1);
    /// Room for a GRO batch in each receive buffer.
    const RECV_BUF: usize = 64 * 1024;

    fn loopback_socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").expect("bind loopback")
    }

    /// Receives one batch through `socket`: (source, contents) of each datagram.
    async fn recv_batch(socket: &dyn AsyncUdpSocket) -> Vec<(SocketAddr, Vec<u8>)> {
        let mut storage = vec![vec![0u8; RECV_BUF]; 4];
        let mut meta = [RecvMeta::default(); 4];
        poll_fn(|cx| {
            let mut bufs: Vec<IoSliceMut> = storage.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            let n = std::task::ready!(socket.poll_recv(cx, &mut bufs, &mut meta)).expect("recv");
            Poll::Ready(
                (0..n)
                    .map(|i| (meta[i].addr, bufs[i][..meta[i].len].to_vec()))
                    .collect(),
            )
        })
        .await
    }

    /// Sends `transmit` through `socket`, waiting for writability as quinn does.
    async fn send(socket: &Arc<dyn AsyncUdpSocket>, transmit: &Transmit<'_>) {
        let mut poller = socket.clone().create_io_poller();
        loop {
            match socket.try_send(transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| poller.as_mut().poll_writable(cx)).await.expect("writable");
                }
                sent => return sent.expect("sent"),
            }
        }
    }

    #[tokio::test]
    async fn datagrams_from_a_blocked_source_never_arrive_and_do_not_lose_wakeups() {
        let faults = Faults::default();
        let receiver = FaultyUdpSocket::wrap(loopback_socket(), faults.clone()).unwrap();
        let to = receiver.local_addr().unwrap();
        let (blocked, open) = (loopback_socket(), loopback_socket());
        faults.block(blocked.local_addr().unwrap());
        for _ in 0..3 {
            blocked.send_to(b"cut off", to).unwrap();
        }

        let next = tokio::spawn(async move { recv_batch(receiver.as_ref()).await });
        // The receiver must have drained the blocked-only batch before the open peer
        // sends, so that its wakeup depends on polling the inner socket to `Pending`.
        let drained = async {
            while faults.dropped() < 3 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(EXPECT_SUCCESS, drained)
            .await
            .expect("blocked datagrams read");
        open.send_to(b"hello", to).unwrap();
        let batch = tokio::time::timeout(EXPECT_SUCCESS, next)
            .await
            .expect("woken for the open peer")
            .unwrap();

        assert_eq!(batch, vec![(open.local_addr().unwrap(), b"hello".to_vec())]);
        assert_eq!(faults.dropped(), 3);
    }

    #[tokio::test]
    async fn datagrams_to_a_blocked_address_are_dropped_as_if_sent() {
        let faults = Faults::default();
        let sender = FaultyUdpSocket::wrap(loopback_socket(), faults.clone()).unwrap();
        let (cut, open) = (loopback_socket(), loopback_socket());
        faults.block(cut.local_addr().unwrap());
        let transmit = |destination| Transmit {
            destination,
            ecn: None,
            contents: b"ping",
            segment_size: None,
            src_ip: None,
        };

        send(&sender, &transmit(cut.local_addr().unwrap())).await;
        send(&sender, &transmit(open.local_addr().unwrap())).await;

        open.set_read_timeout(Some(EXPECT_SUCCESS)).unwrap();
        let mut buf = [0u8; 16];
        let (len, from) = open.recv_from(&mut buf).unwrap();
        assert_eq!((&buf[..len], from), (&b"ping"[..], sender.local_addr().unwrap()));
        assert_eq!(faults.dropped(), 1);
        assert!(faults.is_blocked(cut.local_addr().unwrap()));
        faults.unblock(cut.local_addr().unwrap());
        assert!(!faults.is_blocked(cut.local_addr().unwrap()));
    }

    #[tokio::test]
    async fn quic_connections_fail_across_a_partition_and_succeed_after_heal() {
        let dir = tempfile::tempdir().unwrap();
        let server_identity = pki::identity(dir.path(), "n1", true).unwrap();
        let client_identity = pki::identity(dir.path(), "client", true).unwrap();
        let server =
            Endpoint::server(server_identity.server_config().unwrap(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let server_addr = server.local_addr().unwrap();
        tokio::spawn(accept_all(server.clone()));

        let faults = Faults::default();
        let socket = FaultyUdpSocket::wrap(loopback_socket(), faults.clone()).unwrap();
        let mut client =
            Endpoint::new_with_abstract_socket(EndpointConfig::default(), None, socket, Arc::new(TokioRuntime))
                .unwrap();
        client.set_default_client_config(client_identity.client_config().unwrap());
        let connect = || async { client.connect(server_addr, "n1").unwrap().await };

        let first = tokio::time::timeout(EXPECT_SUCCESS, connect())
            .await
            .expect("no timeout");
        first.expect("connects before the partition");

        faults.block(server_addr);
        let cut = tokio::time::timeout(EXPECT_CUT, connect()).await;
        assert!(cut.is_err(), "connected across a partition: {cut:?}");
        assert!(faults.dropped() > 0);

        faults.heal();
        let healed = tokio::time::timeout(EXPECT_SUCCESS, connect())
            .await
            .expect("no timeout");
        healed.expect("connects after heal");
    }

    /// Completes every incoming handshake and keeps the connection until it closes.
    async fn accept_all(endpoint: Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                if let Ok(connection) = incoming.await {
                    connection.closed().await;
                }
            });
        }
    }
}
