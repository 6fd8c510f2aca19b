//! Whole-process tests of v1.1 recovery (PROTOCOL.md §5): the real `ocm-server`, raw
//! sockets on loopback, bytes compared with §5.6 where the bytes are the point.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use ocm::protocol::control::{ControlBody, ControlDatagram};
use ocm::protocol::datagram::ChatDatagram;
use ocm::protocol::event::{EventKind, RawEvents};
use ocm::protocol::frame::{Grant, Request, encode_frame};
use ocm::protocol::{MAX_DATAGRAM, State, Status};

const KEY: &[u8] = b"a resume key of 32 bytes, secret";
const SHORT: Duration = Duration::from_millis(300);

/// (kind, seq, user, body) of one received event.
type RawEv = (u8, u32, String, Vec<u8>);

fn localhost(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to the server from 127.0.0.`last`.
fn tcp_from(srv: &ServerProc, last: u8) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::new(localhost(last), 0).into())
        .unwrap();
    sock.connect(&srv.tcp.into()).unwrap();
    sock.into()
}

/// Sends one request; returns its status and the token of its COMPLETE, if any.
fn exchange(s: &mut TcpStream, bytes: &[u8]) -> (Status, Option<Vec<u8>>) {
    use std::io::Write;
    s.write_all(bytes).unwrap();
    let (_, state, _, payload) = read_frame(s);
    assert_eq!(state, State::Response as u8);
    let status = Status::from_u8(payload[0]).expect("a status");
    if status != Status::Ok || bytes[1] == 3 {
        return (status, None);
    }
    let (_, state, _, payload) = read_frame(s);
    assert_eq!(state, State::Complete as u8);
    let grant = Grant::parse(&payload).expect("a grant");
    (status, Some(grant.token.to_vec()))
}

fn resume(s: &mut TcpStream, room: &str, token: &[u8], key: &[u8]) -> (Status, Option<Vec<u8>>) {
    let req = Request::Resume {
        room,
        token,
        resume_key: key,
    };
    exchange(s, &request(&req))
}

/// A data-plane client speaking raw bytes, v1 or v1.1.
struct Raw {
    sock: UdpSocket,
    room: String,
    token: Vec<u8>,
}

impl Raw {
    /// Joins (or creates) `room` as `user` over `tcp`, with the resume key, and opens a
    /// UDP socket on 127.0.0.`last` (not yet bound in the room).
    fn enter(
        tcp: &mut TcpStream,
        srv: &ServerProc,
        room: &str,
        user: &str,
        create: bool,
        last: u8,
    ) -> Raw {
        let req = if create {
            Request::Create {
                room,
                user,
                password: b"",
                capacity: 0,
                resume_key: Some(KEY),
            }
        } else {
            Request::Join {
                room,
                user,
                password: b"",
                resume_key: Some(KEY),
            }
        };
        let (status, token) = exchange(tcp, &request(&req));
        assert_eq!(status, Status::Ok, "{user} enters {room}");
        Raw::at(srv, room, token.unwrap(), last)
    }

    fn at(srv: &ServerProc, room: &str, token: Vec<u8>, last: u8) -> Raw {
        let sock = UdpSocket::bind(SocketAddr::new(localhost(last), 0)).unwrap();
        sock.connect(srv.udp).unwrap();
        Raw {
            sock,
            room: room.into(),
            token,
        }
    }

    fn control_bytes(&self, body: ControlBody<'_>) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let d = ControlDatagram {
            room: self.room.as_bytes(),
            token: &self.token,
            body,
        };
        let n = d.encode(&mut buf).unwrap();
        buf[..n].to_vec()
    }

    fn control(&self, body: ControlBody<'_>) {
        self.sock.send(&self.control_bytes(body)).unwrap();
    }

    fn sync(&self) {
        self.control(ControlBody::Sync);
    }

    fn nack(&self, from_seq: u32, count: u16) {
        self.control(ControlBody::Nack { from_seq, count });
    }

    /// A v1 chat datagram (a heartbeat when empty).
    fn chat(&self, msg: &str) {
        let mut buf = [0u8; MAX_DATAGRAM];
        let d = ChatDatagram {
            room: self.room.as_bytes(),
            token: &self.token,
            message: msg,
        };
        let n = d.encode(&mut buf).unwrap();
        self.sock.send(&buf[..n]).unwrap();
    }

    /// One datagram's bytes, if one arrives within `wait`.
    fn recv(&self, wait: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 65536];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(buf[..n].to_vec())
    }

    /// Datagrams until one holds an event matching `pred` (5 s at most): all of them.
    fn until(&self, pred: impl Fn(&RawEv) -> bool) -> Vec<Vec<u8>> {
        let end = Instant::now() + Duration::from_secs(5);
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            let Some(d) = self.recv(left) else { break };
            let hit = events(&d).iter().any(&pred);
            got.push(d);
            if hit {
                return got;
            }
        }
        panic!(
            "expected event not seen; got {:?}",
            got.iter().map(|d| events(d)).collect::<Vec<_>>()
        );
    }

    /// Every datagram arriving within `wait`.
    fn drain(&self, wait: Duration) -> Vec<Vec<u8>> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv(left.max(Duration::from_millis(1))) {
                Some(d) => got.push(d),
                None => break,
            }
        }
        got
    }
}

fn events(datagram: &[u8]) -> Vec<RawEv> {
    RawEvents::new(datagram)
        .map(|e| {
            let e = e.expect("well-formed event");
            (e.kind, e.seq, e.user.to_string(), e.body.to_vec())
        })
        .collect()
}

fn is(kind: EventKind, user: &str) -> impl Fn(&RawEv) -> bool {
    move |e| e.0 == kind as u8 && e.2 == user
}

#[test]
fn control_datagrams_and_answers_match_the_worked_examples() {
    let srv = ServerProc::start(&["--history", "5"]);
    let mut tcp = tcp_from(&srv, 1);
    let alice = Raw::enter(&mut tcp, &srv, "lobby", "alice", true, 1);
    // §5.6: SEND ClientSeq 1 "hi", NACK 5-7, SYNC, byte for byte.
    let head = |op: u8| [&[0, op, 5, 0x20][..], b"lobby", &alice.token].concat();
    let send = ControlBody::Send {
        client_seq: 1,
        message: "hi",
    };
    assert_eq!(
        alice.control_bytes(send),
        [head(1), vec![0, 0, 0, 1, 0x68, 0x69]].concat()
    );
    let nack = ControlBody::Nack {
        from_seq: 5,
        count: 3,
    };
    assert_eq!(
        alice.control_bytes(nack),
        [head(2), vec![0, 0, 0, 5, 0, 3]].concat()
    );
    assert_eq!(alice.control_bytes(ControlBody::Sync), head(3));
    // The SEND binds alice (JOINED, Seq 1) and is relayed (Seq 2); seven more reach Seq 9.
    alice.control(send);
    alice.until(is(EventKind::Message, "alice"));
    for i in 0..7 {
        alice.chat(&format!("line {i}"));
    }
    // 50 ms after Seq 9, the tail notice.
    let tail = [0x08, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 9, 0, 0, 0, 0];
    // (On a slow machine a notice may come between the lines too: wait for Seq 9's.)
    let got = alice.until(|e| e.0 == EventKind::Sync as u8 && e.3[..4] == [0, 0, 0, 9]);
    assert_eq!(got.last().unwrap(), &tail);
    // The SYNC answer.
    alice.sync();
    let answer = [
        0x08, 0, 0, 0, 0, 0x05, 0x61, 0x6c, 0x69, 0x63, 0x65, 0, 0x08, 0, 0, 0, 9, 0, 0, 0, 1,
    ];
    assert_eq!(alice.recv(Duration::from_secs(5)).unwrap(), answer);
    // With 5 events held (5-9), Seqs 1-4 are gone.
    alice.nack(1, 4);
    let gone = [0x07, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, 1, 0, 4];
    assert_eq!(alice.recv(Duration::from_secs(5)).unwrap(), gone);
    // A resent SEND is not relayed again: only the SYNC answer comes back.
    alice.control(send);
    alice.sync();
    assert_eq!(alice.recv(Duration::from_secs(5)).unwrap(), answer);
    assert!(alice.drain(Duration::from_millis(120)).is_empty());
}

#[test]
fn a_late_joiner_fetches_the_history_with_nack() {
    let srv = ServerProc::start(&[]);
    let mut tcp = tcp_from(&srv, 1);
    let alice = Raw::enter(&mut tcp, &srv, "r", "alice", true, 1);
    alice.chat("");
    alice.until(is(EventKind::Joined, "alice"));
    for i in 0..10 {
        alice.chat(&format!("said before bob came {i}"));
    }
    let mut sent = Vec::new();
    while sent
        .iter()
        .map(|d: &Vec<u8>| events(d).len())
        .sum::<usize>()
        < 10
    {
        sent.push(alice.recv(Duration::from_secs(5)).expect("alice's echoes"));
    }
    let bob = Raw::enter(&mut tcp, &srv, "r", "bob", false, 1);
    bob.sync();
    let got = bob.until(is(EventKind::Joined, "bob"));
    let joined = events(&got[0])[0].1;
    assert_eq!(joined, 12);
    bob.nack(joined - 10, 10);
    // The answer is the bytes alice received, packed (here: one datagram).
    let mut answer = Vec::new();
    while answer.len() < sent.concat().len() {
        let d = bob.recv(Duration::from_secs(5)).expect("NACK answer");
        if events(&d)[0].0 == EventKind::Message as u8 {
            answer.extend(d);
        }
    }
    assert_eq!(answer, sent.concat(), "the original bytes");
}

#[test]
fn resume_moves_a_member_to_a_new_address() {
    let srv = ServerProc::start(&[]);
    let mut tcp = tcp_from(&srv, 1);
    let alice = Raw::enter(&mut tcp, &srv, "r", "alice", true, 1);
    alice.sync();
    alice.until(is(EventKind::Joined, "alice"));
    let bob = Raw::enter(&mut tcp, &srv, "r", "bob", false, 1);
    bob.sync();
    bob.until(is(EventKind::Joined, "bob"));
    // carol is a version 1 member.
    let (_, token) = exchange(
        &mut tcp,
        &request(&Request::Join {
            room: "r",
            user: "carol",
            password: b"",
            resume_key: None,
        }),
    );
    let carol = Raw::at(&srv, "r", token.unwrap(), 1);
    carol.chat("");
    carol.until(is(EventKind::Joined, "carol"));
    alice.until(is(EventKind::Joined, "carol"));
    bob.until(is(EventKind::Joined, "carol"));

    // bob moves to 127.0.0.2.
    let mut tcp2 = tcp_from(&srv, 2);
    let (status, token) = resume(&mut tcp2, "r", &bob.token, KEY);
    assert_eq!(
        (status, token.as_deref()),
        (Status::Ok, Some(&bob.token[..]))
    );
    let got = alice.until(|e| e.0 == EventKind::Resumed as u8);
    assert_eq!(
        events(got.last().unwrap()),
        [(9, 0, "bob".to_string(), vec![])]
    );
    // The old address is no longer served; its datagrams are dropped.
    alice.chat("while bob moves");
    bob.sync();
    // The new address pins with its first datagram, silently for the others.
    let moved = Raw::at(&srv, "r", bob.token.clone(), 2);
    moved.sync();
    let answer = events(&moved.recv(Duration::from_secs(5)).expect("SYNC answer"));
    assert_eq!(answer[0].0, EventKind::Sync as u8);
    assert_eq!(
        &answer[0].3[..4],
        &[0, 0, 0, 4],
        "LastSeq 4: carol's JOINED, alice's line"
    );
    alice.chat("after");
    let got = moved.until(is(EventKind::Message, "alice"));
    assert_eq!(events(got.last().unwrap())[0].3, b"after");
    assert!(bob.drain(SHORT).is_empty(), "the old address hears nothing");
    // carol (v1) never receives Kinds 7-9, and nobody saw LEFT or a second JOINED.
    let all: Vec<RawEv> = carol.drain(SHORT).iter().flat_map(|d| events(d)).collect();
    assert!(all.iter().all(|e| e.0 <= 6), "{all:?}");
    assert!(
        !all.iter()
            .any(|e| e.0 == EventKind::Left as u8 || e.0 == EventKind::Joined as u8)
    );
    let all: Vec<RawEv> = alice.drain(SHORT).iter().flat_map(|d| events(d)).collect();
    assert!(
        !all.iter().any(|e| e.0 == EventKind::Joined as u8),
        "{all:?}"
    );
}

#[test]
fn wrong_keys_get_8_then_the_ip_is_throttled() {
    let srv = ServerProc::start(&[]);
    let mut tcp = tcp_from(&srv, 1);
    let alice = Raw::enter(&mut tcp, &srv, "r", "alice", true, 1);
    let mut guesser = tcp_from(&srv, 3);
    assert_eq!(
        resume(&mut guesser, "nope", &alice.token, KEY).0,
        Status::RoomNotFound
    );
    for i in 0..5 {
        let key = format!("a wrong guess, number {i:04}");
        assert_eq!(
            resume(&mut guesser, "r", &alice.token, key.as_bytes()).0,
            Status::Unauthorized
        );
    }
    assert_eq!(
        resume(&mut guesser, "r", &alice.token, KEY).0,
        Status::TooManyRequests
    );
    assert_eq!(
        resume(&mut guesser, "nope", &alice.token, KEY).0,
        Status::TooManyRequests,
        "9 before 2"
    );
    // Another IP is unaffected.
    let mut other = tcp_from(&srv, 4);
    assert_eq!(resume(&mut other, "r", &alice.token, KEY).0, Status::Ok);
}

#[test]
fn resume_keys_of_wrong_sizes_are_invalid_fields() {
    let srv = ServerProc::start(&[]);
    let mut tcp = tcp_from(&srv, 1);
    let alice = Raw::enter(&mut tcp, &srv, "r", "alice", true, 1);
    // JOIN with a 15-byte and a 65-byte key; RESUME with a 65-byte key: status 6, and the
    // connection stays open.
    for size in [15usize, 65] {
        let mut payload = vec![3, b'b', b'o', b'b', 0, size as u8];
        payload.extend(std::iter::repeat_n(b'k', size));
        let mut frame = Vec::new();
        encode_frame(&mut frame, 2, State::Request, b"r", &payload);
        assert_eq!(exchange(&mut tcp, &frame).0, Status::InvalidRequest);
        let mut payload = vec![alice.token.len() as u8];
        payload.extend(&alice.token);
        payload.push(size as u8);
        payload.extend(std::iter::repeat_n(b'k', size));
        let mut frame = Vec::new();
        encode_frame(&mut frame, 5, State::Request, b"r", &payload);
        assert_eq!(exchange(&mut tcp, &frame).0, Status::InvalidRequest);
    }
    assert_eq!(resume(&mut tcp, "r", &alice.token, KEY).0, Status::Ok);
}
