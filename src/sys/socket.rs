//! Socket set-up: the server's listener and data-plane socket, and buffer sizes (forced
//! past the system cap where the process may, that is as root on Linux).
//!
//! This file holds `unsafe`: `setsockopt` for the forced buffer sizes, which socket2 does
//! not offer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Connections the kernel may queue before `accept`: a burst of connecting clients (the
/// bench joins hundreds at once) waits instead of being refused.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Socket buffer sizes asked for on the UDP socket: bursts are absorbed, not dropped.
pub const UDP_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the server's TCP listener and UDP socket, both non-blocking.
///
/// `port` 0 picks a free TCP port; the UDP socket then takes the same number if it is free
/// (or any free port), unless `udp_port` says otherwise. `::` accepts IPv4 as well. The
/// UDP buffers are grown with [`grow_buffers`].
pub fn bind(
    addr: IpAddr,
    port: u16,
    udp_port: Option<u16>,
) -> io::Result<(std::net::TcpListener, std::net::UdpSocket)> {
    let domain = Domain::for_address(SocketAddr::new(addr, 0));
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    if addr.is_ipv6() {
        tcp.set_only_v6(false)?;
    }
    tcp.bind(&SocketAddr::new(addr, port).into())?;
    tcp.listen(LISTEN_BACKLOG)?;
    tcp.set_nonblocking(true)?;
    let tcp: std::net::TcpListener = tcp.into();
    let tcp_port = tcp.local_addr()?.port();

    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        udp.set_only_v6(false)?;
    }
    let wanted = udp_port.unwrap_or(tcp_port);
    match udp.bind(&SocketAddr::new(addr, wanted).into()) {
        Ok(()) => {}
        Err(e) if port == 0 && udp_port.is_none() && e.kind() == io::ErrorKind::AddrInUse => {
            udp.bind(&SocketAddr::new(addr, 0).into())?;
        }
        Err(e) => return Err(e),
    }
    udp.set_nonblocking(true)?;
    grow_buffers(&udp, UDP_BUFFER);
    Ok((tcp, udp.into()))
}

/// Which of a socket's two buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    /// The receive buffer (`SO_RCVBUF`).
    Recv,
    /// The send buffer (`SO_SNDBUF`).
    Send,
}

/// Sets a buffer past the system cap (`SO_RCVBUFFORCE` / `SO_SNDBUFFORCE`, Linux, needs
/// CAP_NET_ADMIN). Returns whether the kernel took it; `false` elsewhere.
pub fn force_buffer(socket: &impl AsFd, which: Buffer, bytes: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let size = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        let opt = match which {
            Buffer::Recv => libc::SO_RCVBUFFORCE,
            Buffer::Send => libc::SO_SNDBUFFORCE,
        };
        // SAFETY: setsockopt reads `size` (a c_int of the given length), which lives for
        // the call, and nothing else.
        let r = unsafe {
            libc::setsockopt(
                socket.as_fd().as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        r == 0
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (socket, which, bytes);
        false
    }
}

/// Asks for both buffers of `socket` at `bytes`: forced past the system cap where we may
/// (root), else as large as the cap allows. Best effort: the sizes are hints.
pub fn grow_buffers(socket: &impl AsFd, bytes: usize) {
    force_buffer(socket, Buffer::Recv, bytes);
    force_buffer(socket, Buffer::Send, bytes);
    let s = SockRef::from(socket);
    if s.recv_buffer_size().unwrap_or(0) < bytes {
        let _ = s.set_recv_buffer_size(bytes);
    }
    if s.send_buffer_size().unwrap_or(0) < bytes {
        let _ = s.set_send_buffer_size(bytes);
    }
}

/// Sets a socket's receive buffer to `bytes`: forced when permitted (root), else
/// `SO_RCVBUF` (capped by `net.core.rmem_max`). Returns the size now in force.
pub fn set_recv_buffer(socket: &impl AsFd, bytes: usize) -> io::Result<usize> {
    if !force_buffer(socket, Buffer::Recv, bytes) {
        SockRef::from(socket).set_recv_buffer_size(bytes)?;
    }
    recv_buffer(socket)
}

/// A socket's receive buffer size as the kernel reports it.
pub fn recv_buffer(socket: &impl AsFd) -> io::Result<usize> {
    SockRef::from(socket).recv_buffer_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_buffer_can_be_grown() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let before = recv_buffer(&s).unwrap();
        let now = set_recv_buffer(&s, before * 2).unwrap();
        assert!(now >= before, "{now} < {before}");
    }

    #[test]
    fn bind_gives_a_listener_and_a_udp_socket_on_the_same_port_when_free() {
        let (tcp, udp) = bind(IpAddr::from([127, 0, 0, 1]), 0, None).unwrap();
        let t = tcp.local_addr().unwrap();
        let u = udp.local_addr().unwrap();
        assert_eq!(t.ip(), u.ip());
        assert_ne!(u.port(), 0);
    }
}
