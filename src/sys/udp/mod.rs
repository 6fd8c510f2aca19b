//! Batched UDP: read many datagrams per system call, send one payload to many receivers.
//!
//! The same interface on every system: [`Receiver`] (`recv` a batch, `get` each datagram
//! with its source and, with packet-info, the local address it arrived on), [`Sender`]
//! (reusable scratch) and [`BatchTx`] (one payload, many [`Dest`]s, never blocking).
//! On Linux they are `recvmmsg`/`sendmmsg` (`linux.rs`); elsewhere one `recv_from` /
//! `send_to` per datagram (`portable.rs`, also compiled in tests on Linux so that it is
//! exercised). Used by the server's loop and by bench-client.

use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::protocol::MAX_DATAGRAM;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(any(not(target_os = "linux"), test))]
mod portable;

#[cfg(target_os = "linux")]
pub use linux::{BatchTx, Receiver, Sender, enable_pktinfo};
#[cfg(not(target_os = "linux"))]
pub use portable::{BatchTx, Receiver, Sender};

/// Payload bytes staged for one cross-room `sendmmsg` at most ([`BatchTx::stage`]): 16
/// full datagrams, far more small ones; enough for a wake-up's worth of small rooms.
pub const STAGE_BYTES: usize = 64 * 1024;
/// Datagrams read per [`Receiver::recv`] at most; fewer means the queue was empty.
pub const RECV_BATCH: usize = 32;
/// One byte more than the largest valid datagram, so an oversize one is seen as such: a
/// datagram of `SLOT` bytes was longer than [`MAX_DATAGRAM`] (and cut).
pub const SLOT: usize = MAX_DATAGRAM + 1;

/// Where one receiver's datagrams go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dest {
    /// The member's bound address (as the socket reported it).
    pub addr: SocketAddr,
    /// The server address the member sends to, when the server is bound to a wildcard
    /// address and must send from that same address; `None` lets the kernel choose.
    pub local: Option<IpAddr>,
}

/// Whether packet-info (each datagram's local address) is available here: where it is
/// not, a wildcard-bound server answers from whatever address the kernel picks.
pub const PKTINFO: bool = cfg!(target_os = "linux");

/// Sends messages `0..total` through `call(start, len)`, which sends some prefix of
/// `start..start + len` and says how many. A full buffer (`WouldBlock`) drops the rest; an
/// error on one message (say, an unreachable address) skips that message. Never retries
/// in a loop, never blocks. Returns how many were sent.
pub fn drive(total: usize, mut call: impl FnMut(usize, usize) -> io::Result<usize>) -> usize {
    let (mut next, mut sent) = (0, 0);
    while next < total {
        match call(next, total - next) {
            Ok(0) => break,
            Ok(k) => {
                sent += k;
                next += k;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => next += 1,
        }
    }
    sent
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn drive_drops_the_rest_on_would_block_and_skips_failed_messages() {
        // 10 messages: the socket takes 4, then fails one, then takes 3, then is full.
        let mut script = vec![
            Ok(4),
            Err(io::Error::from(io::ErrorKind::Interrupted)),
            Err(io::Error::from_raw_os_error(libc::ENETUNREACH)),
            Ok(3),
            Err(io::Error::from(io::ErrorKind::WouldBlock)),
        ]
        .into_iter();
        let mut calls = Vec::new();
        let sent = drive(10, |start, len| {
            calls.push((start, len));
            script.next().unwrap()
        });
        assert_eq!(sent, 7);
        assert_eq!(calls, vec![(0, 10), (4, 6), (4, 6), (5, 5), (8, 2)]);
    }

    /// Both receivers read a connected socket's queue in one batch (bench-client's use).
    #[test]
    fn both_receivers_read_a_connected_socket_in_batches() {
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut linux = Receiver::new(false);
        let mut portable = portable::Receiver::new(false);
        assert_eq!(
            linux.recv(&b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            portable.recv(&b).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        for (round, rx) in [0u8, 1].into_iter().zip([true, false]) {
            for i in 0..5u8 {
                a.send(&[round * 10 + i; 3]).unwrap();
            }
            a.send(&[9u8; SLOT + 10]).unwrap();
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(2);
            while got.len() < 6 && Instant::now() < deadline {
                let n = if rx {
                    linux.recv(&b)
                } else {
                    portable.recv(&b)
                };
                for i in 0..n.unwrap_or(0) {
                    let (from, _, d) = if rx { linux.get(i) } else { portable.get(i) }.unwrap();
                    assert_eq!(from, a.local_addr().unwrap());
                    got.push(d.to_vec());
                }
            }
            let mut want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![round * 10 + i; 3]).collect();
            want.push(vec![9u8; SLOT]);
            assert_eq!(got, want, "an oversize datagram reads as SLOT bytes");
        }
    }

    #[test]
    fn the_portable_sender_reaches_every_receiver() {
        let server = mio::net::UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let receivers: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let to: Vec<Dest> = receivers
            .iter()
            .map(|r| Dest {
                addr: r.local_addr().unwrap(),
                local: None,
            })
            .collect();
        let mut scratch = portable::Sender;
        let sent = portable::BatchTx::new(&server, &mut scratch).send(b"same", &to[..2]);
        let until = Instant::now();
        let more =
            portable::BatchTx::draining(&server, &mut scratch, until).send(b"same", &to[2..]);
        assert_eq!((sent, more), (2, 1));
        // Staging is sending at once here: nothing is left for send_staged.
        let mut tx = portable::BatchTx::new(&server, &mut scratch);
        assert_eq!(tx.stage(b"next", &to[..1], 0), 1);
        assert_eq!(tx.send_staged(|_, _| panic!("nothing staged")), 0);
        for (i, r) in receivers.iter().enumerate() {
            r.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut buf = [0u8; 16];
            let n = r.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"same");
            if i == 0 {
                let n = r.recv(&mut buf).unwrap();
                assert_eq!(&buf[..n], b"next");
            }
        }
    }
}
