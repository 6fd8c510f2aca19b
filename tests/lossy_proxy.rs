//! Tests of the lossy UDP proxy that later whole-process tests put between clients and the
//! server: a plain `UdpSocket` plays the server here, so what the proxy does is seen
//! datagram by datagram.

#[path = "common/lossy.rs"]
mod lossy;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lossy::{Config, DirStats, Faults, LossyProxy};

/// Long enough for loopback on a loaded 2-core machine; a wait normally ends in µs.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(200);

fn socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1")
}

/// One datagram and its sender, or `None` after `wait`.
fn recv(sock: &UdpSocket, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
    sock.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = vec![0u8; 65_536];
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some((buf, from))
}

fn must_recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    recv(sock, WAIT).expect("a datagram within WAIT")
}

/// Every datagram that arrives until `QUIET` passes with none.
fn drain(sock: &UdpSocket) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some((d, _)) = recv(sock, QUIET) {
        got.push(d);
    }
    got
}

/// Waits until the proxy has taken in `n` datagrams in one direction.
fn wait_received(proxy: &LossyProxy, n: u64, dir: fn(&lossy::Stats) -> DirStats) {
    let end = Instant::now() + WAIT;
    while dir(&proxy.stats()).received < n {
        assert!(Instant::now() < end, "proxy saw {:?}", proxy.stats());
        std::thread::sleep(Duration::from_micros(50));
    }
}

/// Sends `n` numbered datagrams from `from` to `to`, one at a time: each is taken in by the
/// proxy before the next leaves, and `sink` is read as it goes, so no socket buffer
/// overflows and only the proxy decides what is lost. Returns the numbers that arrived.
fn lockstep(
    proxy: &LossyProxy,
    from: &UdpSocket,
    to: SocketAddr,
    sink: &UdpSocket,
    n: u32,
    dir: fn(&lossy::Stats) -> DirStats,
) -> Vec<u32> {
    let before = dir(&proxy.stats()).received;
    sink.set_nonblocking(true).expect("nonblocking");
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut read = |got: &mut Vec<u32>| {
        while let Ok(len) = sink.recv(&mut buf) {
            assert_eq!(len, 4, "only our datagrams");
            got.push(u32::from_be_bytes(buf[..4].try_into().expect("4 bytes")));
        }
    };
    for i in 0..n {
        from.send_to(&i.to_be_bytes(), to).expect("send");
        wait_received(proxy, before + u64::from(i) + 1, dir);
        read(&mut got);
    }
    sink.set_nonblocking(false).expect("blocking");
    while let Some((d, _)) = recv(sink, QUIET) {
        got.push(u32::from_be_bytes(d[..4].try_into().expect("4 bytes")));
    }
    got
}

fn up(s: &lossy::Stats) -> DirStats {
    s.up
}

fn down(s: &lossy::Stats) -> DirStats {
    s.down
}

#[test]
fn a_clean_path_passes_datagrams_both_ways_byte_for_byte() {
    let server = socket();
    let proxy = LossyProxy::start(server.local_addr().unwrap(), Config::new(1));
    let client = socket();
    let sizes = [0usize, 1, 2, 100, 1400, 4096, 60_000];
    let mut seen_from = None;
    for (i, &size) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        client.send_to(&bytes, proxy.addr()).unwrap();
        let (got, from) = must_recv(&server);
        assert_eq!(got, bytes, "upstream, {size} bytes");
        // The server sees the proxy's upstream socket, not the client, and always the same.
        assert_ne!(from, client.local_addr().unwrap());
        assert_eq!(*seen_from.get_or_insert(from), from);
        let reply: Vec<u8> = bytes.iter().rev().copied().collect();
        server.send_to(&reply, from).unwrap();
        let (got, from) = must_recv(&client);
        assert_eq!(got, reply, "downstream, {size} bytes");
        assert_eq!(from, proxy.addr(), "replies come from the proxy");
    }
    let s = proxy.stats();
    let n = sizes.len() as u64;
    let clean = DirStats {
        received: n,
        sent: n,
        ..DirStats::default()
    };
    assert_eq!((s.up, s.down, s.clients, s.rebinds), (clean, clean, 1, 0));
}

#[test]
fn each_client_gets_its_own_upstream_address() {
    let server = socket();
    let proxy = LossyProxy::start(server.local_addr().unwrap(), Config::new(2));
    let (a, b) = (socket(), socket());
    a.send_to(b"a", proxy.addr()).unwrap();
    let (_, from_a) = must_recv(&server);
    b.send_to(b"b", proxy.addr()).unwrap();
    let (_, from_b) = must_recv(&server);
    assert_ne!(from_a, from_b);
    // Each upstream address leads back to its own client only.
    server.send_to(b"to b", from_b).unwrap();
    assert_eq!(must_recv(&b).0, b"to b");
    assert!(recv(&a, QUIET).is_none(), "a hears nothing meant for b");
    assert_eq!(proxy.stats().clients, 2);
}

#[test]
fn a_fifth_dropped_over_a_thousand_datagrams_and_the_counts_match() {
    let run = |seed: u64| {
        let server = socket();
        let mut config = Config::new(seed);
        config.up = Faults::new(0.2, 0.0, 0.0);
        let proxy = LossyProxy::start(server.local_addr().unwrap(), config);
        let client = socket();
        let got = lockstep(&proxy, &client, proxy.addr(), &server, 1000, up);
        (got, proxy.stats())
    };
    let (got, s) = run(42);
    assert!((150..=250).contains(&s.up.dropped), "{s:?}");
    assert_eq!(s.up.received, 1000);
    assert_eq!(got.len() as u64, 1000 - s.up.dropped, "{s:?}");
    assert_eq!(s.up.sent, got.len() as u64);
    assert_eq!((s.up.duplicated, s.up.held, s.up.send_errors), (0, 0, 0));
    // Nothing else is touched: what arrives arrives once, in order.
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once");
    // The same seed drops the same datagrams; another seed, others.
    assert_eq!(run(42).0, got, "a seed replays");
    assert_ne!(run(43).0, got);
}

#[test]
fn the_downstream_direction_drops_on_its_own() {
    let server = socket();
    let mut config = Config::new(5);
    config.down = Faults::new(0.2, 0.0, 0.0);
    let proxy = LossyProxy::start(server.local_addr().unwrap(), config);
    let client = socket();
    client.send_to(b"hello", proxy.addr()).unwrap();
    let (_, upstream) = must_recv(&server);
    let got = lockstep(&proxy, &server, upstream, &client, 1000, down);
    let s = proxy.stats();
    assert_eq!(s.up.dropped, 0);
    assert!((150..=250).contains(&s.down.dropped), "{s:?}");
    assert_eq!(got.len() as u64, 1000 - s.down.dropped);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "in order, once");
}

#[test]
fn duplicates_arrive_twice() {
    let server = socket();
    let proxy = LossyProxy::start(
        server.local_addr().unwrap(),
        Config::new(3).both(Faults::new(0.0, 1.0, 0.0)),
    );
    let client = socket();
    for i in 0..10u8 {
        client.send_to(&[i], proxy.addr()).unwrap();
    }
    let got = drain(&server);
    let want: Vec<Vec<u8>> = (0..10u8).flat_map(|i| [vec![i], vec![i]]).collect();
    assert_eq!(got, want);
    let s = proxy.stats();
    assert_eq!((s.up.received, s.up.duplicated, s.up.sent), (10, 10, 20));
    // And downstream.
    let (_, upstream) = {
        client.send_to(b"x", proxy.addr()).unwrap();
        let first = must_recv(&server);
        let _twin = must_recv(&server);
        first
    };
    server.send_to(b"back", upstream).unwrap();
    assert_eq!(drain(&client), vec![b"back".to_vec(), b"back".to_vec()]);
    assert_eq!(proxy.stats().down.duplicated, 1);
}

#[test]
fn reordering_lets_the_next_datagram_overtake_or_releases_after_the_hold() {
    let server = socket();
    let mut config = Config::new(4);
    config.up = Faults::new(0.0, 0.0, 1.0);
    config.hold = Duration::from_secs(1);
    let proxy = LossyProxy::start(server.local_addr().unwrap(), config);
    let client = socket();
    for d in [b"a", b"b", b"c", b"d"] {
        client.send_to(d, proxy.addr()).unwrap();
    }
    let order: Vec<Vec<u8>> = (0..4).map(|_| must_recv(&server).0).collect();
    assert_eq!(order, [b"b", b"a", b"d", b"c"].map(|d| d.to_vec()));
    // A lone datagram is held, then goes out when the hold passes.
    let sent = Instant::now();
    client.send_to(b"e", proxy.addr()).unwrap();
    assert_eq!(must_recv(&server).0, b"e");
    assert!(sent.elapsed() >= Duration::from_millis(900), "held");
    let s = proxy.stats();
    assert_eq!(
        (s.up.received, s.up.held, s.up.reordered, s.up.sent),
        (5, 3, 2, 5)
    );
}

#[test]
fn rebind_moves_the_source_port_the_server_sees() {
    let server = socket();
    let proxy = LossyProxy::start(server.local_addr().unwrap(), Config::new(6));
    let client = socket();
    client.send_to(b"one", proxy.addr()).unwrap();
    let (_, before) = must_recv(&server);
    proxy.rebind_all();
    client.send_to(b"two", proxy.addr()).unwrap();
    let (got, after) = must_recv(&server);
    assert_eq!(got, b"two");
    assert_eq!(after.ip(), before.ip());
    assert_ne!(after.port(), before.port(), "a new source port");
    // The new port leads back to the client; the old mapping is gone.
    server.send_to(b"old", before).unwrap();
    server.send_to(b"new", after).unwrap();
    assert_eq!(drain(&client), vec![b"new".to_vec()]);
    assert_eq!(proxy.stats().rebinds, 1);
}

#[test]
fn rebind_after_n_datagrams_happens_once_mid_session() {
    let server = socket();
    let mut config = Config::new(7);
    config.rebind_after = Some(3);
    let proxy = LossyProxy::start(server.local_addr().unwrap(), config);
    let client = socket();
    let ports: Vec<u16> = (0..6u8)
        .map(|i| {
            client.send_to(&[i], proxy.addr()).unwrap();
            let (got, from) = must_recv(&server);
            assert_eq!(got, [i]);
            from.port()
        })
        .collect();
    assert!(ports[..3].iter().all(|&p| p == ports[0]), "{ports:?}");
    assert!(ports[3..].iter().all(|&p| p == ports[3]), "{ports:?}");
    assert_ne!(ports[0], ports[3]);
    assert_eq!(proxy.stats().rebinds, 1);
}

#[test]
fn dropping_the_proxy_stops_it_and_frees_its_port() {
    let server = socket();
    let proxy = LossyProxy::start(server.local_addr().unwrap(), Config::new(8));
    let addr = proxy.addr();
    let started = Instant::now();
    drop(proxy);
    assert!(started.elapsed() < Duration::from_secs(1), "stops promptly");
    UdpSocket::bind(addr).expect("the proxy's port is free again");
}
