//! UDP sockets for QUIC endpoints.
//!
//! With the OS default buffers (208 KiB) the kernel drops datagrams on loopback at 16+
//! requests in flight, which quinn then treats as loss; every endpoint socket therefore
//! asks for [`SOCKET_BUFFER`] in each direction.

use std::net::SocketAddr;

/// SO_RCVBUF / SO_SNDBUF requested for every endpoint socket.
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket on `addr` with large kernel buffers.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Larger buffers are an optimisation: a kernel that caps them still works.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
