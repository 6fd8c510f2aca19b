//! `recvmmsg`/`sendmmsg`, packet-info and staging on real loopback sockets.

use super::*;
use std::net::UdpSocket;

#[test]
fn sockaddrs_round_trip() {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    for a in ["127.0.0.1:9001", "[::1]:80", "[::ffff:127.0.0.2]:5"] {
        let a: SocketAddr = a.parse().unwrap();
        write_sockaddr(&a, &mut s);
        assert_eq!(read_sockaddr(&s), Some(a));
    }
}

/// A non-blocking sending socket, `n` receivers and their destinations, on loopback.
fn sockets(n: usize) -> (UdpSocket, Vec<UdpSocket>, Vec<Dest>) {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let receivers: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let to = receivers
        .iter()
        .map(|r| Dest {
            addr: r.local_addr().unwrap(),
            local: None,
        })
        .collect();
    (server, receivers, to)
}

#[test]
fn one_sendmmsg_reaches_every_receiver_with_the_same_bytes() {
    let (server, receivers, to) = sockets(5);
    let mut scratch = Sender::default();
    let sent = BatchTx::new(&server, &mut scratch).send(b"same bytes", &to);
    assert_eq!(sent, 5);
    for r in &receivers {
        let mut buf = [0u8; 64];
        r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let (n, from) = r.recv_from(&mut buf).unwrap();
        assert_eq!(
            (&buf[..n], from),
            (&b"same bytes"[..], server.local_addr().unwrap())
        );
    }
}

/// Reads what `r` has within 2 s, up to `n` datagrams.
fn read_n(r: &UdpSocket, n: usize) -> Vec<Vec<u8>> {
    r.set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < n {
        let Ok(k) = r.recv(&mut buf) else { break };
        got.push(buf[..k].to_vec());
    }
    got
}

#[test]
fn staged_datagrams_of_several_fan_outs_leave_together_and_in_order() {
    let (server, r, d) = sockets(3);
    let mut scratch = Sender::default();
    let mut tx = BatchTx::new(&server, &mut scratch);
    assert_eq!(tx.stage(b"A", &d[0..2], 0), 2);
    assert_eq!(tx.stage(b"B", &d[1..3], 0), 2);
    // A direct send lets what is staged leave first.
    assert_eq!(tx.send(b"C", &d[0..1]), 1);
    assert_eq!(tx.send_staged(|_, _| panic!("nothing is staged")), 0);
    assert_eq!(tx.stage(b"D", &d[2..3], 0), 1);
    assert_eq!(tx.send_staged(|p, _| panic!("refused {p:?}")), 1);
    let bytes = |v: &[&[u8]]| v.iter().map(|b| b.to_vec()).collect::<Vec<_>>();
    assert_eq!(read_n(&r[0], 2), bytes(&[b"A", b"C"]));
    assert_eq!(read_n(&r[1], 2), bytes(&[b"A", b"B"]));
    assert_eq!(read_n(&r[2], 2), bytes(&[b"B", b"D"]));
}

#[test]
fn a_staged_datagram_the_socket_refuses_is_reported_with_its_payload() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let ok = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = [
        Dest {
            addr: ok.local_addr().unwrap(),
            local: None,
        },
        // An IPv6 address on an IPv4 socket: refused by the kernel, message by message.
        Dest {
            addr: "[::1]:9".parse().unwrap(),
            local: None,
        },
    ];
    let mut scratch = Sender::default();
    let mut tx = BatchTx::new(&server, &mut scratch);
    tx.stage(b"first", &to, 7);
    tx.stage(b"second", &to[..1], 8);
    let mut refused = Vec::new();
    let sent = tx.send_staged(|p, tag| refused.push((p.to_vec(), tag)));
    assert_eq!((sent, refused), (2, vec![(b"first".to_vec(), 7)]));
    assert_eq!(read_n(&ok, 2), vec![b"first".to_vec(), b"second".to_vec()]);
}

#[test]
fn recvmmsg_reads_a_batch_with_sources_and_local_addresses() {
    let server = UdpSocket::bind("0.0.0.0:0").unwrap();
    enable_pktinfo(&server, false).unwrap();
    let port = server.local_addr().unwrap().port();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client.send_to(b"one", ("127.0.0.1", port)).unwrap();
    client.send_to(&[7u8; 5000], ("127.0.0.2", port)).unwrap();
    let mut rx = Receiver::new(true);
    std::thread::sleep(std::time::Duration::from_millis(50));
    let n = rx.recv(&server).unwrap();
    assert_eq!(n, 2);
    let (from, local, bytes) = rx.get(0).unwrap();
    assert_eq!(
        (from, local, bytes),
        (
            client.local_addr().unwrap(),
            Some(IpAddr::from([127, 0, 0, 1])),
            &b"one"[..]
        )
    );
    let (_, local, bytes) = rx.get(1).unwrap();
    assert_eq!(local, Some(IpAddr::from([127, 0, 0, 2])));
    assert_eq!(
        bytes.len(),
        SLOT,
        "an oversize datagram shows as one byte over the limit"
    );
    assert!(rx.get(2).is_none());
    assert_eq!(
        rx.recv(&server).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
}
