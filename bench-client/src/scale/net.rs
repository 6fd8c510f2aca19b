//! Source addresses for `bench-client scale`: a server binds each token to the IP of the
//! TCP connection that asked for it, and a member's address to its first datagram's
//! (IP, port). One loopback IP has about 28 000 ephemeral ports, so many members need many
//! IPs, and each member's CREATE or JOIN must come over a connection from its own IP.
//!
//! This file holds `unsafe`: `socket`/`bind`/`connect`, since std cannot bind a TCP
//! stream before it connects.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd};

/// The `k`-th source address from `first` on (127.0.0.2, 127.0.0.3...); `None` past the
/// end of `first`'s /24, so that every address stays in loopback's 127.0.0.0/8 as given.
pub fn source_ip(first: Ipv4Addr, k: usize) -> Option<Ipv4Addr> {
    let o = first.octets();
    let last = usize::from(o[3]).checked_add(k)?;
    (last <= 254).then(|| Ipv4Addr::new(o[0], o[1], o[2], last as u8))
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// A blocking TCP connection to `to` from the local IP `from` (any free port).
pub fn tcp_connect_from(from: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "source addresses are IPv4 loopback: give an IPv4 server address",
        ));
    };
    // SAFETY: socket() has no memory preconditions; a negative result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns; OwnedFd closes it on
    // every path from here.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let local = sockaddr(SocketAddrV4::new(from, 0));
    // SAFETY: `local` is a valid sockaddr_in that lives for the call, and `len` its size.
    if unsafe { libc::bind(fd, (&raw const local).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let remote = sockaddr(to);
    // SAFETY: as above, for `remote`.
    if unsafe { libc::connect(fd, (&raw const remote).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpStream::from(owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_ips_stay_in_the_24() {
        let first = Ipv4Addr::new(127, 0, 0, 2);
        assert_eq!(source_ip(first, 0), Some(first));
        assert_eq!(source_ip(first, 3), Some(Ipv4Addr::new(127, 0, 0, 5)));
        assert_eq!(source_ip(first, 252), Some(Ipv4Addr::new(127, 0, 0, 254)));
        assert_eq!(source_ip(first, 253), None);
        assert_eq!(source_ip(first, usize::MAX), None);
    }

    #[test]
    fn a_connection_comes_from_the_asked_ip() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap();
        let from = Ipv4Addr::new(127, 0, 0, 3);
        let c = tcp_connect_from(from, to).unwrap();
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer.ip(), std::net::IpAddr::V4(from));
        assert_eq!(c.local_addr().unwrap().ip(), std::net::IpAddr::V4(from));
        let v6: SocketAddr = "[::1]:9".parse().unwrap();
        assert_eq!(
            tcp_connect_from(from, v6).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }
}
