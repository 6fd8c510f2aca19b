//! The connection's timers, caps, half-close and pipelining, in virtual time: no sockets,
//! the relay behind it is real (seeded), and "writing" is taking bytes from `output()`.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::tcrp::{self, Tcrp};
use super::{Closed, Conn, LINGER, MAX_OUTPUT, Phase};
use super::{IDLE_TIMEOUT, REQUEST_TIMEOUT};
use crate::protocol::frame::{Request, encode_frame, parse_status, split_reply};
use crate::protocol::{Operation, State, Status};
use crate::server::transmit::Recorder;
use crate::server::{Config, Relay};

/// A relay and a recorder for the events it sends.
struct Peer {
    relay: Relay<StdRng>,
    tx: Recorder,
}

impl Peer {
    fn new() -> Peer {
        Peer {
            relay: Relay::new(Config::default(), StdRng::seed_from_u64(7)),
            tx: Recorder::default(),
        }
    }

    /// Delivers `bytes` as the socket would: as much as the read buffer takes per read.
    fn feed(&mut self, conn: &mut Conn, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() && !matches!(conn.phase(), Phase::Closed(_)) {
            let n = match conn.read_buf() {
                Some(buf) => {
                    let n = buf.len().min(bytes.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    n
                }
                None => bytes.len(), // drained: read and thrown away
            };
            bytes = &bytes[n..];
            self.read(conn, now, n);
        }
    }

    fn read(&mut self, conn: &mut Conn, now: Instant, n: usize) {
        let mut service = Tcrp {
            relay: &mut self.relay,
            tx: &mut self.tx,
            peer: [127, 0, 0, 1].into(),
            conn: crate::server::transmit::SessionId { key: 0, id: 0 },
        };
        conn.on_read(now, n, &mut service);
    }
}

/// Writes out everything owed; returns it and whether the write side was to be shut.
fn drain(conn: &mut Conn, now: Instant) -> (Vec<u8>, bool) {
    let out = conn.output().to_vec();
    let shut = !out.is_empty() && conn.on_written(out.len(), now);
    (out, shut)
}

/// The (operation, state, status of a RESPONSE) of each reply frame in `bytes`.
fn replies(mut bytes: &[u8]) -> Vec<(u8, u8, Option<Status>)> {
    let mut v = Vec::new();
    while let Ok(Some((f, n))) = split_reply(bytes) {
        v.push((f.op, f.state, parse_status(&f)));
        bytes = &bytes[n..];
    }
    assert!(bytes.is_empty(), "trailing reply bytes");
    v
}

fn request(req: Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(&mut out).unwrap();
    out
}

fn list() -> Vec<u8> {
    request(Request::List)
}

fn create(room: &str) -> Vec<u8> {
    request(Request::Create {
        room,
        user: "alice",
        password: b"",
        capacity: 0,
        resume_key: None,
    })
}

const RESPONSE: u8 = State::Response as u8;
const COMPLETE: u8 = State::Complete as u8;
const MS: Duration = Duration::from_millis(1);

#[test]
fn a_request_must_be_whole_10_s_after_its_first_byte() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let first = t0 + Duration::from_secs(30);
    p.feed(&mut c, first, &list()[..5]);
    assert_eq!(c.deadline(), first + REQUEST_TIMEOUT);
    // More bytes of the same request do not move the request deadline.
    p.feed(&mut c, first + Duration::from_secs(5), &list()[5..9]);
    c.on_timeout(first + REQUEST_TIMEOUT - MS);
    assert_eq!(c.phase(), Phase::Reading);
    c.on_timeout(first + REQUEST_TIMEOUT);
    assert_eq!(c.phase(), Phase::Closed(Closed::RequestTimeout));
    assert_eq!(
        Closed::RequestTimeout.to_string(),
        "request incomplete after 10 s"
    );
}

#[test]
fn a_tls_handshake_is_timed_from_accept_then_the_connection_idles_like_a_plain_one() {
    let t0 = Instant::now();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    c.expect_request(t0);
    assert_eq!(c.deadline(), t0 + REQUEST_TIMEOUT, "a stalled handshake");
    // The handshake ends at t1: from then on, only the idle timer runs.
    let t1 = t0 + Duration::from_secs(2);
    c.preamble_done(t1);
    assert_eq!(c.deadline(), t1 + IDLE_TIMEOUT);
    c.on_timeout(t0 + REQUEST_TIMEOUT);
    assert_eq!(c.phase(), Phase::Reading);
    // Without preamble_done, the handshake's deadline closes it.
    let mut stalled = Conn::new(t0, tcrp::INPUT_CAP);
    stalled.expect_request(t0);
    stalled.on_timeout(t0 + REQUEST_TIMEOUT);
    assert_eq!(stalled.phase(), Phase::Closed(Closed::RequestTimeout));
}

#[test]
fn a_connection_idle_for_60_s_is_closed() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    assert_eq!(c.deadline(), t0 + IDLE_TIMEOUT);
    // A whole request restarts the idle clock and leaves no request timer behind.
    let t1 = t0 + Duration::from_secs(30);
    p.feed(&mut c, t1, &list());
    drain(&mut c, t1);
    assert_eq!(c.deadline(), t1 + IDLE_TIMEOUT);
    c.on_timeout(t1 + IDLE_TIMEOUT - MS);
    assert_eq!(c.phase(), Phase::Reading);
    c.on_timeout(t1 + IDLE_TIMEOUT);
    assert_eq!(c.phase(), Phase::Closed(Closed::Idle));
    assert_eq!(Closed::Idle.to_string(), "idle for 60 s");
}

#[test]
fn a_malformed_frame_is_answered_then_the_connection_lingers_and_closes() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let mut bad = list();
    bad[1] = 9; // unknown operation: framing is lost
    bad.extend_from_slice(&list()); // never answered
    p.feed(&mut c, t0, &bad);
    assert_eq!(c.phase(), Phase::Closing);
    assert_eq!(p.relay.counters.malformed_frames, 1);
    let (out, shut) = drain(&mut c, t0);
    assert_eq!(replies(&out), [(9, RESPONSE, Some(Status::InvalidRequest))]);
    assert!(shut, "the write side is shut once the answer is out");
    assert_eq!(c.phase(), Phase::Draining);
    assert_eq!(c.deadline(), t0 + LINGER);
    // Input while draining is read and thrown away; it answers nothing.
    assert!(c.read_buf().is_none());
    p.feed(&mut c, t0 + MS, &list());
    assert!(!c.wants_write());
    c.on_timeout(t0 + LINGER - MS);
    assert_eq!(c.phase(), Phase::Draining);
    c.on_timeout(t0 + LINGER);
    assert_eq!(c.phase(), Phase::Closed(Closed::LingerOver));

    // End of stream during the drain closes at once.
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    p.feed(&mut c, t0, &bad);
    drain(&mut c, t0);
    p.read(&mut c, t0, 0);
    assert_eq!(c.phase(), Phase::Closed(Closed::PeerClosed));
}

#[test]
fn an_invalid_field_is_answered_and_counted_and_the_connection_stays() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let mut bad = Vec::new();
    encode_frame(&mut bad, Operation::Create as u8, State::Request, b"", b"");
    p.feed(&mut c, t0, &bad);
    assert_eq!(c.phase(), Phase::Reading);
    let (out, shut) = drain(&mut c, t0);
    assert!(!shut);
    assert_eq!(replies(&out), [(1, RESPONSE, Some(Status::InvalidRequest))]);
    let create = Operation::Create as usize - 1;
    assert_eq!(
        p.relay.counters.requests[create][Status::InvalidRequest as usize],
        1
    );
    assert_eq!(p.relay.counters.malformed_frames, 0);
}

#[test]
fn a_half_close_gets_the_replies_owed_then_closes() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    p.feed(&mut c, t0, &[list(), list()].concat());
    p.read(&mut c, t0, 0); // end of stream, replies not yet written
    assert_eq!(c.phase(), Phase::Closing);
    assert!(c.wants_write());
    let owed = c.output().to_vec();
    assert!(!c.on_written(3, t0));
    assert_eq!(c.phase(), Phase::Closing);
    assert!(
        !c.on_written(owed.len() - 3, t0),
        "no drain: the peer is gone"
    );
    assert_eq!(c.phase(), Phase::Closed(Closed::PeerClosed));
    let ops: Vec<_> = replies(&owed).iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(
        ops,
        [(4, RESPONSE), (4, COMPLETE), (4, RESPONSE), (4, COMPLETE)]
    );

    // With nothing owed, end of stream closes at once.
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    p.read(&mut c, t0, 0);
    assert_eq!(c.phase(), Phase::Closed(Closed::PeerClosed));
}

#[test]
fn a_peer_that_does_not_read_is_closed_at_the_output_cap() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let lists = list().repeat(100);
    let mut sent = 0;
    while sent < 100_000 && !matches!(c.phase(), Phase::Closed(_)) {
        p.feed(&mut c, t0, &lists);
        sent += 100;
    }
    assert_eq!(c.phase(), Phase::Closed(Closed::SlowPeer));
    let owed = c.output().len();
    assert!(owed > MAX_OUTPUT, "{owed}");
    assert!(
        owed < MAX_OUTPUT + 1024,
        "answering stops at the cap: {owed}"
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let join = request(Request::Join {
        room: "a",
        user: "bob",
        password: b"",
        resume_key: None,
    });
    let all = [create("a"), create("a"), join, list()].concat();
    p.feed(&mut c, t0, &all);
    let (out, _) = drain(&mut c, t0);
    assert_eq!(
        replies(&out),
        [
            (1, RESPONSE, Some(Status::Ok)),
            (1, COMPLETE, None),
            (1, RESPONSE, Some(Status::RoomExists)),
            (2, RESPONSE, Some(Status::Ok)),
            (2, COMPLETE, None),
            (4, RESPONSE, Some(Status::Ok)),
            (4, COMPLETE, None),
        ]
    );
    assert_eq!(c.phase(), Phase::Reading);
}

#[test]
fn a_request_arriving_one_byte_at_a_time_is_answered_once_whole() {
    let t0 = Instant::now();
    let mut p = Peer::new();
    let mut c = Conn::new(t0, tcrp::INPUT_CAP);
    let req = create("slow");
    for (i, b) in req.iter().enumerate() {
        assert!(!c.wants_write(), "answered early, at byte {i}");
        p.feed(&mut c, t0 + MS * i as u32, &[*b]);
        if i + 1 < req.len() {
            assert_eq!(
                c.deadline(),
                t0 + REQUEST_TIMEOUT,
                "timed from the first byte"
            );
        }
    }
    let (out, _) = drain(&mut c, t0);
    assert_eq!(replies(&out)[0], (1, RESPONSE, Some(Status::Ok)));
    assert_eq!(p.relay.room_count(), 1);
}

#[test]
fn a_refused_connection_is_told_server_full_then_drains() {
    let t0 = Instant::now();
    let mut c = Conn::refused(t0, tcrp::refusal());
    assert_eq!(c.phase(), Phase::Closing);
    let (out, shut) = drain(&mut c, t0);
    assert_eq!(replies(&out), [(0, RESPONSE, Some(Status::ServerFull))]);
    assert!(shut);
    assert_eq!(c.phase(), Phase::Draining);
}

#[test]
fn a_scrape_is_answered_once_its_head_is_whole_then_drains() {
    use super::http::{self, Scrape};
    use crate::server::counters::Counters;
    use crate::server::metrics::Snapshot;
    let t0 = Instant::now();
    let counters = Counters::default();
    let mut scrape = Scrape {
        snapshot: Snapshot {
            counters: &counters,
            rooms: 2,
            members: 0,
            bound: 0,
            connections: 1,
            accepted: 1,
            refused: 0,
            slow_peers: 0,
            tls_handshakes: 0,
            tls_errors: 0,
            wakeups: 1,
            busy_seconds: 0.0,
            busy_share: 0.0,
            hold_seconds: 0.0,
            web: Default::default(),
        },
    };
    let mut c = Conn::new(t0, http::INPUT_CAP);
    let req = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    for (i, b) in req.iter().enumerate() {
        assert!(!c.wants_write(), "answered early, at byte {i}");
        let buf = c.read_buf().unwrap();
        buf[0] = *b;
        c.on_read(t0, 1, &mut scrape);
    }
    assert_eq!(c.phase(), Phase::Closing);
    let (out, shut) = drain(&mut c, t0);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("\nocm_rooms 2\n"), "{text}");
    assert!(shut);
    assert_eq!(c.phase(), Phase::Draining);
}

/// Answers each one-byte request with that byte; defers those that are `D`.
struct Echo;

impl super::Service for Echo {
    fn serve(&mut self, _now: Instant, input: &[u8], out: &mut Vec<u8>) -> super::Served {
        match input.first() {
            None => super::Served::Incomplete,
            Some(b'D') => super::Served::Deferred(1),
            Some(&b) => {
                out.push(b);
                super::Served::Answered(1)
            }
        }
    }
}

#[test]
fn a_deferred_answer_keeps_the_answers_in_order() {
    let now = Instant::now();
    let mut conn = Conn::new(now, 16);
    let buf = conn.read_buf().unwrap();
    buf[..4].copy_from_slice(b"aDbc");
    conn.on_read(now, 4, &mut Echo);
    // `a` is answered; `b` and `c` wait behind the deferred one.
    assert_eq!(conn.output(), b"a");
    assert!(conn.is_deferred());
    conn.answer_deferred(now, b"D!", &mut Echo);
    assert_eq!(conn.output(), b"aD!bc");
    assert!(!conn.is_deferred());
    assert_eq!(conn.phase(), Phase::Reading);
    // An answer nobody waits for is ignored.
    conn.answer_deferred(now, b"x", &mut Echo);
    assert_eq!(conn.output(), b"aD!bc");
}

#[test]
fn a_peer_that_half_closes_while_deferred_still_gets_its_answer() {
    let now = Instant::now();
    let mut conn = Conn::new(now, 16);
    conn.read_buf().unwrap()[0] = b'D';
    conn.on_read(now, 1, &mut Echo);
    conn.on_read(now, 0, &mut Echo);
    assert_eq!(conn.phase(), Phase::Closing);
    conn.answer_deferred(now, b"late", &mut Echo);
    assert_eq!(conn.output(), b"late");
    conn.on_written(4, now);
    assert_eq!(conn.phase(), Phase::Closed(Closed::PeerClosed));
}
