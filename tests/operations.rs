//! Whole-process tests of what an operator relies on: coalesced fan-out, flood control,
//! per-IP caps, slow peers, wildcard binds and metrics.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use ocm::client::ControlClient;
use ocm::protocol::Status;
use ocm::protocol::event::EventKind;
use ocm::protocol::frame::Request;

const SHORT: Duration = Duration::from_millis(300);

/// Members a, b, c in room "burst"; the server is stopped while each sends `per_sender`
/// messages, then resumed. Returns what each member received, datagram by datagram.
fn burst_while_stopped(extra: &[&str], per_sender: usize) -> Vec<Vec<Vec<Ev>>> {
    let mut args = vec!["--msg-rate", "0"];
    args.extend_from_slice(extra);
    let srv = ServerProc::start(&args);
    let [a, b, c] = srv.room("burst", ["a", "b", "c"]);
    srv.signal(libc::SIGSTOP);
    for i in 0..per_sender {
        for m in [&a, &b, &c] {
            m.send(&format!("{} {i}", m.m.user));
        }
    }
    srv.signal(libc::SIGCONT);
    let want = 3 * per_sender;
    [&a, &b, &c]
        .iter()
        .map(|m| {
            let mut datagrams = Vec::new();
            let mut got = 0;
            let end = Instant::now() + Duration::from_secs(10);
            while got < want && Instant::now() < end {
                if let Some(events) = m.recv_datagram(Duration::from_secs(2)) {
                    got += events.len();
                    datagrams.push(events);
                }
            }
            datagrams
        })
        .collect()
}

#[test]
fn a_burst_arrives_coalesced_complete_and_in_seq_order() {
    let per_sender = 40;
    let received = burst_while_stopped(&[], per_sender);
    let first = &received[0];
    for datagrams in &received {
        let events: Vec<&Ev> = datagrams.iter().flatten().collect();
        assert_eq!(
            events.len(),
            3 * per_sender,
            "every message reaches every member"
        );
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "consecutive Seq");
        }
        assert!(events.iter().all(|e| e.kind == EventKind::Message as u8));
        assert!(
            datagrams.len() < events.len() / 4,
            "{} datagrams for {} events: not coalesced",
            datagrams.len(),
            events.len()
        );
        // Every member got the same events (same Seq, same bytes).
        assert_eq!(
            events,
            first.iter().flatten().collect::<Vec<_>>(),
            "same events for all"
        );
    }
    // Per sender, the order is the order sent.
    let a_msgs: Vec<&str> = received[1]
        .iter()
        .flatten()
        .filter(|e| e.user == "a")
        .map(|e| e.body.as_str())
        .collect();
    let expect: Vec<String> = (0..per_sender).map(|i| format!("a {i}")).collect();
    assert_eq!(a_msgs, expect);
}

#[test]
fn batch_max_one_sends_one_event_per_datagram() {
    let received = burst_while_stopped(&["--batch-max", "1"], 10);
    for datagrams in &received {
        assert_eq!(datagrams.len(), 30);
        assert!(datagrams.iter().all(|d| d.len() == 1));
    }
}

#[test]
fn a_member_that_never_reads_costs_the_others_nothing() {
    let srv = ServerProc::start(&["--msg-rate", "0"]);
    let [a, deaf, b] = srv.room("r", ["a", "deaf", "b"]);
    // Shrink the deaf member's receive buffer so it overflows at once.
    socket2::SockRef::from(&deaf.sock)
        .set_recv_buffer_size(1024)
        .unwrap();
    let n = 2000;
    let mut got = 0;
    for i in 0..n {
        a.send(&format!("m{i}"));
        if i % 50 == 49 {
            // Read as we go, as a live client would.
            got += b.recv_for(Duration::from_millis(5)).len();
        }
    }
    let end = Instant::now() + Duration::from_secs(5);
    while got < n && Instant::now() < end {
        got += b.recv_for(Duration::from_millis(100)).len();
    }
    assert_eq!(got, n, "b received every message although deaf never read");
    a.send("after");
    assert_eq!(b.wait_for(|e| e.kind == 1).body, "after");
}

#[test]
fn a_flooding_member_is_rate_limited_while_others_flow() {
    let srv = ServerProc::start(&[
        "--msg-rate",
        "5",
        "--msg-burst",
        "5",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let [calm, flood] = srv.room("r", ["calm", "flood"]);
    // Ten times the rate for one second: 50 messages.
    let start = Instant::now();
    for i in 0..50 {
        flood.send(&format!("f{i}"));
        if i == 25 {
            calm.send("calm says hi");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = calm.recv_for(Duration::from_millis(500));
    let relayed = events
        .iter()
        .filter(|e| e.kind == 1 && e.user == "flood")
        .count();
    assert!(
        events
            .iter()
            .any(|e| e.kind == 1 && e.body == "calm says hi")
    );
    // The burst (5) plus 5/s over the flood's duration (with slack for scheduling).
    let allowed = 5.0 + 5.0 * (elapsed + 0.3);
    assert!(
        (relayed as f64) <= allowed + 1.0 && relayed >= 5,
        "{relayed} relayed, {allowed:.1} allowed"
    );
    assert!(
        events
            .iter()
            .all(|e| e.kind != EventKind::RateLimited as u8),
        "calm is not told"
    );
    let notices: Vec<Ev> = flood
        .recv_for(SHORT)
        .into_iter()
        .filter(|e| e.kind == EventKind::RateLimited as u8)
        .collect();
    // At most one notice a second.
    let most = elapsed.ceil() as usize + 1;
    assert!(!notices.is_empty() && notices.len() <= most, "{notices:?}");
    assert_eq!(notices[0].seq, 0);
    assert_eq!(notices[0].user, "flood");
    assert_eq!(notices[0].body, "5 messages/s, burst 5");
    let limited = srv.metric("ocm_rate_limited_total") as usize;
    assert_eq!(limited, 50 - relayed);
}

#[test]
fn the_per_ip_connection_cap_answers_server_full() {
    let srv = ServerProc::start(&["--max-connections-per-ip", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(srv.tcp).unwrap())
        .collect();
    // Let the server accept them before the fourth arrives.
    std::thread::sleep(Duration::from_millis(100));
    let err = ocm::client::control::list(&srv.addr()).unwrap_err();
    assert_eq!(err.status(), Some(Status::ServerFull));
    // Another IP is not affected.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    sock.connect(&srv.tcp.into()).unwrap();
    let mut c = ControlClient::from_stream(sock.into(), Duration::from_secs(5)).unwrap();
    assert!(c.list().is_ok());
    drop(held);
}

#[test]
fn a_tcp_peer_that_never_reads_is_closed_while_others_are_served() {
    let srv = ServerProc::start(&["--metrics", "127.0.0.1:0"]);
    // Rooms with long names make each LIST reply about 4 KiB.
    let mut c = srv.control();
    for i in 0..16 {
        c.create(&format!("{i:02}{}", "x".repeat(240)), "h", b"", 0)
            .unwrap();
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&srv.tcp.into()).unwrap();
    let mut greedy: TcpStream = sock.into();
    greedy
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let list = request(&Request::List);
    let batch: Vec<u8> = list
        .iter()
        .copied()
        .cycle()
        .take(list.len() * 100)
        .collect();
    let end = Instant::now() + Duration::from_secs(20);
    let mut closed = false;
    let mut sent = 0;
    while Instant::now() < end && sent < 100_000 {
        if greedy.write_all(&batch).is_err() {
            closed = true;
            break;
        }
        sent += 100;
        // Others are served meanwhile.
        if sent % 2000 == 0 {
            assert!(c.list().is_ok());
        }
    }
    assert!(
        closed,
        "the server should close a peer that never reads ({sent} requests sent)"
    );
    assert!(c.list().is_ok());
    assert_eq!(srv.metric("ocm_tcp_slow_peers_closed_total"), 1.0);
}

#[test]
fn wildcard_binds_answer_from_the_address_each_member_sent_to() {
    let srv = ServerProc::start(&["--bind", "0.0.0.0"]);
    // alice talks to 127.0.0.1, bob to 127.0.0.2; each UDP socket is connected, so it
    // only accepts datagrams from the address it sent to.
    let alice = srv
        .control_via(Ipv4Addr::new(127, 0, 0, 1).into())
        .unwrap()
        .create("multi", "alice", b"", 0)
        .unwrap();
    let bob = srv
        .control_via(Ipv4Addr::new(127, 0, 0, 2).into())
        .unwrap()
        .join("multi", "bob", b"")
        .unwrap();
    assert_eq!(bob.udp_addr.ip(), std::net::IpAddr::from([127, 0, 0, 2]));
    let alice = Member::bind(alice);
    let bob = Member::bind(bob);
    alice.wait_for(|e| e.is(EventKind::Joined, "bob"));
    alice.send("to both");
    assert_eq!(bob.wait_for(|e| e.kind == 1).body, "to both");
    assert_eq!(alice.wait_for(|e| e.kind == 1).body, "to both");
}

#[test]
fn ipv6_wildcard_serves_ipv4_and_ipv6_clients() {
    let srv = ServerProc::start(&["--bind", "::"]);
    let v4 = srv
        .control_via(Ipv4Addr::LOCALHOST.into())
        .unwrap()
        .create("dual", "four", b"", 0)
        .unwrap();
    let four = Member::bind(v4);
    let Ok(mut c6) = srv.control_via(Ipv6Addr::LOCALHOST.into()) else {
        eprintln!("no IPv6 loopback here; IPv4 half checked");
        return;
    };
    let v6 = c6.join("dual", "six", b"").unwrap();
    let sock = UdpSocket::bind("[::1]:0").unwrap();
    sock.connect(v6.udp_addr).unwrap();
    let six = Member::with_socket(v6, sock);
    six.heartbeat();
    six.wait_for(|e| e.is(EventKind::Joined, "six"));
    four.wait_for(|e| e.is(EventKind::Joined, "six"));
    six.send("over v6");
    assert_eq!(four.wait_for(|e| e.kind == 1).body, "over v6");
}

#[test]
fn metrics_scrapes_do_not_take_chat_connection_slots() {
    let srv = ServerProc::start(&["--max-connections", "1", "--metrics", "127.0.0.1:0"]);
    let mut held = srv.control();
    // The one chat slot is taken, yet scrapes work...
    assert_eq!(srv.metric("ocm_tcp_connections"), 1.0);
    // ...and the chat connection still works after them.
    assert!(held.list().is_ok());
}

#[test]
fn metrics_count_what_happened() {
    let srv = ServerProc::start(&["--metrics", "127.0.0.1:0"]);
    let mut c = srv.control();
    for r in ["m1", "m2", "m3"] {
        c.create(r, "host", b"", 0).unwrap();
    }
    assert_eq!(status_of(c.create("m1", "x", b"", 0)), Status::RoomExists);
    let a = srv.member("m1", "a");
    let wrong = raw_datagram(b"m1", &[b'z'; 32], b"hi");
    a.sock.send(&wrong).unwrap();
    a.sock.send(&wrong).unwrap();
    a.send("counted");
    a.wait_for(|e| e.kind == 1);
    let body = srv.scrape();
    for line in [
        "ocm_rooms 3",
        "ocm_rooms_created_total 3",
        "ocm_requests_total{op=\"create\",status=\"ok\"} 3",
        "ocm_requests_total{op=\"create\",status=\"room_exists\"} 1",
        "ocm_requests_total{op=\"join\",status=\"ok\"} 1",
        "ocm_datagrams_dropped_total{reason=\"unknown_token\"} 2",
        "ocm_messages_total 1",
        "ocm_members{state=\"bound\"} 1",
        "ocm_members{state=\"unbound\"} 3",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in:\n{body}"
        );
    }
    assert!(body.contains("# TYPE ocm_deliveries_total counter"));
    // Hostile scrapes: a huge head, garbage, a wrong path.
    let addr = srv.metrics.unwrap();
    let (got, closed) = raw_exchange(addr, &[b'A'; 5000], Duration::from_secs(5));
    assert!(closed && got.starts_with(b"HTTP/1.1 400"));
    let (got, _) = raw_exchange(addr, b"GET /nope HTTP/1.1\r\n\r\n", Duration::from_secs(5));
    assert!(got.starts_with(b"HTTP/1.1 404"));
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n").unwrap();
    // Half a request does not block the loop: chat still flows.
    a.send("still");
    assert_eq!(a.wait_for(|e| e.kind == 1).body, "still");
}
