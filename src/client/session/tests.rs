//! Tests of `session.rs`.

use super::*;
use crate::protocol::event::{Event, EventBuf, Gone, RawEvent, SyncInfo};
use crate::protocol::frame::{Grant, Request, encode_response, split_request};
use crate::protocol::{Operation, Status};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

#[test]
fn first_seq_may_be_anything_then_gaps_are_counted() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(41), SeqCheck::InOrder);
    assert_eq!(t.observe(42), SeqCheck::InOrder);
    assert_eq!(t.observe(45), SeqCheck::Gap(2));
    assert_eq!(t.last(), Some(45));
    assert_eq!(t.observe(46), SeqCheck::InOrder);
}

#[test]
fn seq_zero_is_outside_the_sequence() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(0), SeqCheck::Unsequenced);
    assert_eq!(t.last(), None);
    assert_eq!(t.observe(5), SeqCheck::InOrder);
    assert_eq!(t.observe(0), SeqCheck::Unsequenced);
    assert_eq!(t.observe(6), SeqCheck::InOrder);
}

#[test]
fn seq_wraps_from_max_to_one() {
    let mut t = SeqTracker::new();
    assert_eq!(t.observe(u32::MAX - 1), SeqCheck::InOrder);
    assert_eq!(t.observe(u32::MAX), SeqCheck::InOrder);
    assert_eq!(t.observe(1), SeqCheck::InOrder);
    let mut t = SeqTracker::new();
    t.observe(u32::MAX - 1);
    // Skipped u32::MAX and 1 (0 is not a room Seq).
    assert_eq!(t.observe(2), SeqCheck::Gap(2));
    assert_eq!(SeqTracker::successor(u32::MAX), 1);
}

#[test]
fn late_and_duplicate_events_do_not_rewind() {
    let mut t = SeqTracker::new();
    t.observe(10);
    assert_eq!(t.observe(10), SeqCheck::Late);
    assert_eq!(t.observe(7), SeqCheck::Late);
    assert_eq!(t.last(), Some(10));
    assert_eq!(t.observe(11), SeqCheck::InOrder);
}

#[test]
fn check_message_names_the_problem() {
    assert!(matches!(check_message(""), Err(SendError::Empty)));
    assert!(check_message(&"é".repeat(1900)).is_ok());
    assert!(matches!(
        check_message(&"é".repeat(1901)),
        Err(SendError::TooLong { len: 3802 })
    ));
    assert!(matches!(
        check_message("a\tb"),
        Err(SendError::ControlChar { ch: '\t' })
    ));
    assert_eq!(
        check_message("\u{1b}[2J").unwrap_err().to_string(),
        "the message contains a control character (U+001B), which cannot be sent"
    );
}

/// Generous for a loaded machine; each wait normally ends in microseconds.
const WAIT: Duration = Duration::from_secs(10);

fn datagram(events: &[Event<'_>]) -> Vec<u8> {
    let mut b = EventBuf::default();
    for e in events {
        assert!(b.push(e));
    }
    b.bytes().to_vec()
}

fn ev<'a>(kind: EventKind, seq: u32, user: &'a str, body: &'a str) -> Event<'a> {
    Event {
        kind: kind as u8,
        seq,
        user,
        body,
    }
}

fn raw(e: &RawEvent<'_>) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let n = e.encode(&mut buf).expect("fits");
    buf[..n].to_vec()
}

fn sync_answer(user: &str, last_seq: u32, last_client_seq: u32) -> Vec<u8> {
    let mut body = [0u8; SyncInfo::BODY_LEN];
    raw(&SyncInfo {
        last_seq,
        last_client_seq,
    }
    .event(user, &mut body))
}

fn gone(from_seq: u32, count: u16) -> Vec<u8> {
    let mut body = [0u8; Gone::BODY_LEN];
    raw(&Gone { from_seq, count }.event(&mut body))
}

fn membership(udp_addr: SocketAddr, server: SocketAddr, idle: u64) -> Membership {
    Membership {
        room: "lobby".into(),
        user: "alice".into(),
        token: b"tok".to_vec(),
        udp_addr,
        idle_timeout: Duration::from_secs(idle),
        host: false,
        server,
        password: b"pw".to_vec(),
        resume_key: vec![7; 32],
    }
}

/// A UDP socket playing the server's data plane.
fn fake_udp() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s
}

/// The control datagram `op` (1 SEND, 2 NACK, 3 SYNC) with token `token` and `body`.
fn control(op: u8, token: &[u8], body: &[u8]) -> Vec<u8> {
    let mut d = vec![0, op, 5, token.len() as u8];
    d.extend_from_slice(b"lobby");
    d.extend_from_slice(token);
    d.extend_from_slice(body);
    d
}

/// A session and the fake data plane it talks to, driven in one thread.
struct Harness {
    s: Session,
    server: UdpSocket,
    /// Events the session produced while the harness waited for a datagram.
    stash: VecDeque<SessionEvent>,
}

impl Harness {
    fn open(server: UdpSocket, m: &Membership) -> Harness {
        server
            .set_read_timeout(Some(Duration::from_millis(5)))
            .unwrap();
        Harness {
            s: Session::open(m, Options::default()).unwrap(),
            server,
            stash: VecDeque::new(),
        }
    }

    /// Runs the session until the server got a datagram equal to `want` (others on the
    /// way, SYNC heartbeats say, are skipped); returns its sender.
    fn expect_on(&mut self, server: Option<&UdpSocket>, want: &[u8]) -> SocketAddr {
        let mut buf = [0u8; MAX_DATAGRAM];
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            let sock = server.unwrap_or(&self.server);
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if &buf[..n] == want {
                    return from;
                }
                continue;
            }
            self.stash
                .extend(self.s.recv_events(Duration::from_millis(5)).unwrap());
        }
        panic!("no datagram {want:?}");
    }

    fn expect(&mut self, want: &[u8]) -> SocketAddr {
        self.expect_on(None, want)
    }

    /// Runs the session until `want` events came (or WAIT passed).
    fn events(&mut self, want: usize) -> Vec<SessionEvent> {
        let mut got: Vec<SessionEvent> = self.stash.drain(..).collect();
        let end = Instant::now() + WAIT;
        while got.len() < want && Instant::now() < end {
            got.extend(self.s.recv_events(Duration::from_millis(20)).unwrap());
        }
        got
    }
}

fn msg(seq: u32, user: &str, text: &str) -> SessionEvent {
    SessionEvent::Message {
        seq,
        user: user.into(),
        text: text.into(),
        history: false,
    }
}

#[test]
fn session_recovers_losses_and_confirms_sends_over_loopback() {
    let server = fake_udp();
    let m = membership(
        server.local_addr().unwrap(),
        "127.0.0.1:9".parse().unwrap(),
        60,
    );
    let mut h = Harness::open(server, &m);
    // A v1 heartbeat (binds on any server), then a SYNC.
    let from = h.expect(b"\x05\x03lobbytok");
    assert_eq!(from, h.s.local_addr().unwrap());
    h.expect(&control(3, b"tok", &[]));
    let mut d = datagram(&[ev(EventKind::Joined, 3, "alice", "")]);
    h.server.send_to(&d, from).unwrap();
    d = sync_answer("alice", 3, 0);
    h.server.send_to(&d, from).unwrap();
    assert_eq!(
        h.events(1),
        [SessionEvent::Joined {
            user: "alice".into(),
            history: false
        }]
    );

    // A message goes as SEND with ClientSeq 1, pending until its echo comes back.
    assert_eq!(h.s.send_message("hello").unwrap(), 1);
    h.expect(&control(1, b"tok", b"\0\0\0\x01hello"));
    assert_eq!(h.s.unconfirmed().collect::<Vec<_>>(), [(1, "hello")]);
    let echo = datagram(&[ev(EventKind::Message, 4, "alice", "hello")]);
    h.server.send_to(&echo, from).unwrap();
    assert_eq!(
        h.events(2),
        [
            SessionEvent::Confirmed { client_seq: 1 },
            msg(4, "alice", "hello")
        ]
    );
    assert_eq!(h.s.unconfirmed().count(), 0);

    // Seq 5 lost: 6 (twice) waits, 5 is NACKed, and both come out in order once 5
    // arrives.
    let six = datagram(&[ev(EventKind::Message, 6, "bob", "six")]);
    h.server.send_to(&six, from).unwrap();
    h.server.send_to(&six, from).unwrap();
    h.expect(&control(2, b"tok", &[0, 0, 0, 5, 0, 1]));
    assert!(h.stash.is_empty(), "{:?}", h.stash);
    let five = datagram(&[ev(EventKind::Message, 5, "bob", "five")]);
    h.server.send_to(&five, from).unwrap();
    assert_eq!(
        h.events(3),
        [
            msg(5, "bob", "five"),
            msg(6, "bob", "six"),
            SessionEvent::Recovered { count: 1 }
        ]
    );

    // Seqs 7-8 lost and no longer held: GONE, reported, then delivery goes on.
    let nine = datagram(&[ev(EventKind::Message, 9, "bob", "nine")]);
    h.server.send_to(&nine, from).unwrap();
    h.expect(&control(2, b"tok", &[0, 0, 0, 7, 0, 2]));
    h.server.send_to(&gone(7, 2), from).unwrap();
    assert_eq!(
        h.events(2),
        [
            SessionEvent::Unrecoverable { count: 2 },
            msg(9, "bob", "nine")
        ]
    );

    // Datagrams from anyone but the server never reach the session.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    let eve = datagram(&[ev(EventKind::Message, 10, "eve", "x")]);
    stranger.send_to(&eve, from).unwrap();
    assert!(
        h.s.recv_events(Duration::from_millis(50))
            .unwrap()
            .is_empty()
    );
    assert!(h.s.stats().nacks >= 2);
    assert!(!h.s.is_v1());
    assert!(matches!(
        h.s.send_message(&"x".repeat(MAX_MESSAGE + 1)),
        Err(SendError::TooLong { .. })
    ));
}

/// A request the fake TCRP server saw: operation, token (RESUME) or user (JOIN), key.
type SeenRequest = (Operation, Vec<u8>, Vec<u8>);

/// A TCRP server that answers each connection's one request with `answer(request)`:
/// a status, and for OK a grant of `token` and `udp_port`. Returns its address and a
/// channel of the requests it saw (operation, token or user, resume key).
fn fake_tcrp(
    answers: Vec<(Status, &'static [u8], u16)>,
) -> (SocketAddr, std::sync::mpsc::Receiver<SeenRequest>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for (status, token, udp_port) in answers {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            conn.set_read_timeout(Some(WAIT)).unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            let (op, room, seen) = loop {
                if let Ok(Some((frame, _))) = split_request(&buf) {
                    let req = Request::parse(&frame).expect("a valid request");
                    let seen = match req {
                        Request::Resume {
                            token, resume_key, ..
                        } => (token.to_vec(), resume_key.to_vec()),
                        Request::Join {
                            user, resume_key, ..
                        } => (user.as_bytes().to_vec(), resume_key.unwrap_or(&[]).to_vec()),
                        other => panic!("unexpected {other:?}"),
                    };
                    break (req.operation(), req.room().as_bytes().to_vec(), seen);
                }
                let n = conn.read(&mut chunk).expect("read");
                assert!(n > 0, "closed mid-request");
                buf.extend_from_slice(&chunk[..n]);
            };
            let mut out = Vec::new();
            encode_response(&mut out, op as u8, &room, status);
            if status == Status::Ok {
                Grant {
                    token,
                    udp_port,
                    idle_timeout: 4,
                }
                .encode(&mut out, op, &room);
            }
            conn.write_all(&out).unwrap();
            let _ = tx.send((op, seen.0, seen.1));
            // Let the client read before the connection closes.
            let mut rest = [0u8; 64];
            let _ = conn.read(&mut rest);
            drop::<TcpStream>(conn);
        }
    });
    (addr, rx)
}

#[test]
fn unanswered_syncs_lead_to_resume_on_a_new_socket() {
    let old = fake_udp();
    let new = fake_udp();
    let new_port = new.local_addr().unwrap().port();
    let (tcrp, requests) = fake_tcrp(vec![(Status::Ok, b"tok", new_port)]);
    let m = membership(old.local_addr().unwrap(), tcrp, 4);
    let mut h = Harness::open(old, &m);
    let first_local = h.s.local_addr().unwrap();
    // Nothing is ever answered on the old path: three SYNCs a second apart, then RESUME.
    let got = h.events(2);
    assert_eq!(
        got,
        [SessionEvent::Reconnecting, SessionEvent::Reconnected],
        "{got:?}"
    );
    let (op, token, key) = requests.recv_timeout(WAIT).unwrap();
    assert_eq!(
        (op, token.as_slice(), key.as_slice()),
        (Operation::Resume, &b"tok"[..], &[7u8; 32][..])
    );
    // The session now speaks from a new port, to the port RESUME named.
    let from = h.expect_on(Some(&new), &control(3, b"tok", &[]));
    assert_ne!(from, first_local);
    assert_eq!(from, h.s.local_addr().unwrap());
    assert_eq!(h.s.membership().udp_addr, new.local_addr().unwrap());
    // A message typed now goes out on the new path.
    assert_eq!(h.s.send_message("back").unwrap(), 1);
    h.expect_on(Some(&new), &control(1, b"tok", b"\0\0\0\x01back"));
}

#[test]
fn refused_resume_joins_again_under_the_same_name() {
    let old = fake_udp();
    let new = fake_udp();
    let new_port = new.local_addr().unwrap().port();
    let (tcrp, requests) = fake_tcrp(vec![
        (Status::Unauthorized, b"", 0),
        (Status::Ok, b"tok2", new_port),
    ]);
    let m = membership(old.local_addr().unwrap(), tcrp, 4);
    let mut h = Harness::open(old, &m);
    let got = h.events(2);
    assert_eq!(
        got,
        [SessionEvent::Reconnecting, SessionEvent::Rejoined],
        "{got:?}"
    );
    assert_eq!(requests.recv_timeout(WAIT).unwrap().0, Operation::Resume);
    let (op, user, key) = requests.recv_timeout(WAIT).unwrap();
    assert_eq!((op, user.as_slice()), (Operation::Join, &b"alice"[..]));
    assert_eq!(key.len(), control::RESUME_KEY_LEN);
    assert_ne!(key, [7u8; 32], "a fresh resume key");
    // The new membership binds with a heartbeat, then asks with SYNC.
    h.expect_on(Some(&new), b"\x05\x04lobbytok2");
    h.expect_on(Some(&new), &control(3, b"tok2", &[]));
    assert_eq!(h.s.membership().token, b"tok2");
    assert_eq!(h.s.membership().resume_key, key);
}

#[test]
fn own_timeout_joins_again_and_a_closed_room_ends_the_session() {
    let server = fake_udp();
    // The JOIN again finds the room gone.
    let (tcrp, requests) = fake_tcrp(vec![(Status::RoomNotFound, b"", 0)]);
    let m = membership(server.local_addr().unwrap(), tcrp, 60);
    let mut h = Harness::open(server, &m);
    let from = h.expect(&control(3, b"tok", &[]));
    let d = datagram(&[
        ev(EventKind::Joined, 1, "alice", ""),
        ev(EventKind::TimedOut, 2, "alice", ""),
    ]);
    h.server.send_to(&d, from).unwrap();
    let got = h.events(3);
    assert_eq!(
        got[1..],
        [
            SessionEvent::TimedOut {
                user: "alice".into(),
                history: false
            },
            SessionEvent::RoomClosed {
                reason: "the room no longer exists".into()
            }
        ],
        "{got:?}"
    );
    assert_eq!(requests.recv_timeout(WAIT).unwrap().0, Operation::Join);
    assert!(h.s.ended());
    assert!(matches!(h.s.send_message("x"), Err(SendError::NotInRoom)));
}
