//! A web connection in virtual time: a [`Conn`] with the [`Web`] service, a real (seeded)
//! relay, and "the socket" being the test feeding `read_buf` and taking `output`.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::*;
use crate::protocol::frame::{Grant, split_reply};
use crate::server::Config;
use crate::server::conn::{Closed, Conn, IDLE_TIMEOUT, MAX_OUTPUT, Phase, REQUEST_TIMEOUT};
use crate::server::transmit::Recorder;
use crate::server::web::{INPUT_CAP, frame::write_unit};

struct Side {
    relay: Relay<StdRng>,
    tx: Recorder,
    state: WebState,
    site: Site,
    scratch: Vec<u8>,
    stats: WebStats,
}

const SESSION: SessionId = SessionId { key: 1, id: 1 };

impl Side {
    fn new() -> Side {
        Side {
            relay: Relay::new(Config::default(), StdRng::seed_from_u64(3)),
            tx: Recorder::default(),
            state: WebState::default(),
            site: Site::default(),
            scratch: Vec::new(),
            stats: WebStats::default(),
        }
    }

    fn feed(&mut self, conn: &mut Conn, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() && !matches!(conn.phase(), Phase::Closed(_)) {
            let n = match conn.read_buf() {
                Some(buf) => {
                    let n = buf.len().min(bytes.len());
                    buf[..n].copy_from_slice(&bytes[..n]);
                    n
                }
                None => bytes.len(),
            };
            bytes = &bytes[n..];
            let mut web = Web {
                relay: &mut self.relay,
                tx: &mut self.tx,
                peer: [127, 0, 0, 1].into(),
                session: SESSION,
                state: &mut self.state,
                site: &self.site,
                scratch: &mut self.scratch,
                stats: &mut self.stats,
            };
            conn.on_read(now, n, &mut web);
        }
    }
}

fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [1, 2, 3, 4];
    let mut out = vec![0x80 | opcode];
    if payload.len() < 126 {
        out.push(0x80 | payload.len() as u8);
    } else {
        out.push(0x80 | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

fn take(conn: &mut Conn, now: Instant) -> Vec<u8> {
    let out = conn.output().to_vec();
    if !out.is_empty() {
        conn.on_written(out.len(), now);
    }
    out
}

/// Splits server frames: (opcode, payload).
fn frames(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 2 {
        let (len, at) = match bytes[1] {
            126 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            n => (usize::from(n), 2),
        };
        out.push((bytes[0] & 0x0f, bytes[at..at + len].to_vec()));
        bytes = &bytes[at + len..];
    }
    out
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: h:1\r\nUpgrade: websocket\r\n\
    Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
    Sec-WebSocket-Version: 13\r\n\r\n";

fn session(side: &mut Side, t0: Instant) -> Conn {
    let mut conn = Conn::new(t0, INPUT_CAP);
    conn.expect_request(t0);
    side.feed(&mut conn, t0, UPGRADE);
    let head = take(&mut conn, t0);
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    assert!(side.state.is_session());
    conn
}

#[test]
fn a_silent_or_half_finished_handshake_is_closed_after_the_request_timeout() {
    let t0 = Instant::now();
    let mut side = Side::new();
    let mut silent = Conn::new(t0, INPUT_CAP);
    silent.expect_request(t0);
    assert_eq!(silent.deadline(), t0 + REQUEST_TIMEOUT);
    let mut half = Conn::new(t0, INPUT_CAP);
    half.expect_request(t0);
    side.feed(&mut half, t0 + Duration::from_secs(5), &UPGRADE[..40]);
    assert_eq!(half.deadline(), t0 + REQUEST_TIMEOUT, "from the accept");
    for c in [&mut silent, &mut half] {
        c.on_timeout(t0 + REQUEST_TIMEOUT);
        assert_eq!(c.phase(), Phase::Closed(Closed::RequestTimeout));
        assert!(!c.wants_write(), "closed without an answer");
    }
}

#[test]
fn a_create_on_channel_1_is_answered_in_two_messages_and_binds_on_channel_2() {
    let t0 = Instant::now();
    let mut side = Side::new();
    let mut conn = session(&mut side, t0);
    let mut req = Vec::new();
    Request::Create {
        room: "r",
        user: "u",
        password: b"",
        capacity: 0,
        resume_key: None,
    }
    .encode(&mut req)
    .unwrap();
    let mut unit = vec![CHANNEL_TCRP];
    unit.extend_from_slice(&req);
    // Fragmented, with a ping in between.
    let mut bytes = vec![0x02, 0x80 | 10, 0, 0, 0, 0];
    bytes.extend_from_slice(&unit[..10]);
    bytes.extend(masked(9, b"hi"));
    let mut tail = masked(0, &unit[10..]);
    tail[0] = 0x80;
    bytes.extend(tail);
    side.feed(&mut conn, t0, &bytes);
    let out = frames(&take(&mut conn, t0));
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[0], (10, b"hi".to_vec()), "the pong first");
    let (resp, n) = split_reply(&out[1].1[1..]).unwrap().unwrap();
    assert_eq!((out[1].1[0], n + 1), (CHANNEL_TCRP, out[1].1.len()));
    assert_eq!(resp.payload, [Status::Ok as u8]);
    let (complete, n) = split_reply(&out[2].1[1..]).unwrap().unwrap();
    assert_eq!(n + 1, out[2].1.len());
    let token = Grant::parse(complete.payload).unwrap().token.to_vec();
    // A heartbeat on channel 2 binds the member to this session.
    let d = crate::server::relay::testing::chat_datagram("r", &token, "");
    let mut unit = vec![CHANNEL_DATAGRAM];
    unit.extend_from_slice(&d);
    side.feed(&mut conn, t0, &masked(2, &unit));
    side.relay.flush(&mut side.tx);
    assert_eq!(side.tx.sent_sessions.len(), 1);
    assert_eq!(side.tx.sent_sessions[0].1, vec![SESSION]);
    assert_eq!(side.stats.messages_in, 2);
    assert_eq!(side.stats.messages_out, 2);
}

#[test]
fn an_idle_session_says_1001_after_max_of_60_s_and_idle_timeout() {
    let t0 = Instant::now();
    let mut side = Side::new();
    let mut conn = session(&mut side, t0);
    let idle = IDLE_TIMEOUT.max(Duration::from_secs(90));
    let mut bye = Vec::new();
    frame::write_close(&mut bye, CloseCode::GoingAway);
    conn.set_session(idle, bye.clone());
    assert_eq!(conn.deadline(), t0 + idle);
    // Activity moves it.
    let t1 = t0 + Duration::from_secs(30);
    side.feed(&mut conn, t1, &masked(9, b""));
    take(&mut conn, t1);
    assert_eq!(conn.deadline(), t1 + idle);
    conn.on_timeout(t1 + idle);
    assert_eq!(conn.phase(), Phase::Closing);
    assert_eq!(conn.output(), &bye[..], "close 1001");
    assert!(
        conn.on_written(bye.len(), t1 + idle),
        "then the write side is shut"
    );
    assert_eq!(conn.phase(), Phase::Draining);
}

#[test]
fn datagrams_are_dropped_past_the_cap_but_answers_never() {
    let t0 = Instant::now();
    let mut side = Side::new();
    let mut conn = session(&mut side, t0);
    let payload = [7u8; 4000];
    let len = frame::header_len(payload.len() + 1) + 1 + payload.len();
    let mut took = 0;
    while conn.offer(len, |out| write_unit(out, CHANNEL_DATAGRAM, &payload)) {
        took += 1;
    }
    assert_eq!(took, MAX_OUTPUT / len, "up to 256 KiB, then dropped");
    assert_eq!(conn.phase(), Phase::Reading);
    // Half of it written: room again.
    conn.on_written(len * 10, t0);
    assert!(conn.offer(len, |out| write_unit(out, CHANNEL_DATAGRAM, &payload)));
    // An answer over the cap closes it like a peer that does not read.
    let mut req = Vec::new();
    Request::List.encode(&mut req).unwrap();
    let mut unit = vec![CHANNEL_TCRP];
    unit.extend_from_slice(&req);
    let mut bytes = Vec::new();
    for _ in 0..2000 {
        bytes.extend(masked(2, &unit));
    }
    side.feed(&mut conn, t0, &bytes);
    assert_eq!(conn.phase(), Phase::Closed(Closed::SlowPeer));
}
