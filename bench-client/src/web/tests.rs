//! Tests of `web.rs`.

use super::*;

use std::net::TcpListener;

use ocm::server::web::frame;

/// A session's link to a fake server on loopback (no handshake: the link starts after it).
fn link_and_server() -> (WebLink, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    client.set_nonblocking(true).unwrap();
    let (server, _) = l.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let link = WebLink::new(mio::net::TcpStream::from_std(client), Vec::new());
    (link, server)
}

/// Reads until `n` datagrams came (each wait bounded).
fn datagrams(link: &mut WebLink, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.len() < n && Instant::now() < deadline {
        let mut scratch = Vec::new();
        let _ = read(link, |l| Some(l), &mut scratch, |_, d| got.push(d.to_vec()));
        std::thread::sleep(Duration::from_millis(5));
    }
    got
}

#[test]
fn a_link_reads_fragments_answers_pings_and_sends_masked_units() {
    let (mut link, mut server) = link_and_server();
    // A datagram in two fragments with a ping between them, a channel-1 message
    // (skipped), then a whole datagram.
    let mut wire = vec![0x02, 3, CHANNEL_DATAGRAM, b'a', b'b'];
    wire.extend_from_slice(&[0x89, 1, b'p']);
    wire.extend_from_slice(&[0x80, 2, b'c', b'd']);
    frame::write_unit(&mut wire, CHANNEL_TCRP, b"ignored");
    frame::write_unit(&mut wire, CHANNEL_DATAGRAM, b"xyz");
    server.write_all(&wire).unwrap();
    assert_eq!(datagrams(&mut link, 2), [b"abcd".to_vec(), b"xyz".to_vec()]);
    // The pong, then a sent datagram, as the server's parser reads them.
    link.send(b"hello").unwrap();
    let mut input = Vec::new();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let mut chunk = [0u8; 256];
        let n = server.read(&mut chunk).unwrap();
        assert!(n > 0, "the link closed");
        input.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = frame::parse(&input).unwrap() {
            let mut payload = Vec::new();
            f.unmask_into(&mut payload);
            seen.push((f.opcode, payload));
            input.drain(..used);
        }
    }
    assert_eq!(
        seen,
        [
            (ws::Opcode::Pong, b"p".to_vec()),
            (ws::Opcode::Binary, b"\x02hello".to_vec()),
        ]
    );
    // A close from the server (1001) ends the link.
    server.write_all(&[0x88, 2, 0x03, 0xe9]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut scratch = Vec::new();
    while !link.closed && Instant::now() < deadline {
        let _ = read(&mut link, |l| Some(l), &mut scratch, |_, _| {});
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(link.closed);
    assert!(link.send(b"late").is_err());
}

#[test]
fn web_users_are_spread_over_the_rooms() {
    let topo = Topology::new(500, 20);
    let plan = WebPlan::new(&topo, 100);
    assert_eq!(plan.count(), 100);
    let per = plan.per_room(&topo);
    assert_eq!(per.iter().sum::<u32>(), 100);
    assert!(per.iter().all(|&n| n == 5), "{per:?}");
    let topo = Topology::new(6, 2);
    let plan = WebPlan::new(&topo, 2);
    assert_eq!(plan.count(), 2);
    assert_eq!(plan.per_room(&topo), [1, 1]);
    assert_eq!(WebPlan::new(&topo, 0).count(), 0);
    assert_eq!(WebPlan::new(&topo, 9).count(), 6);
}
