//! The relay driven without sockets: virtual time, a seeded RNG and a recording transmit.

use std::net::SocketAddr;

use super::testing::{bound_room, chat_datagram};
use super::*;
use crate::protocol::event::Events;
use crate::protocol::frame::Request;
use crate::protocol::{MAX_DATAGRAM, Status};
use crate::server::transmit::Recorder;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct World {
    relay: Relay<StdRng>,
    tx: Recorder,
    t0: Instant,
}

fn ip(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(ip(1), port)
}

impl World {
    fn new(cfg: Config) -> World {
        World {
            relay: Relay::new(cfg, StdRng::seed_from_u64(7)),
            tx: Recorder::default(),
            t0: Instant::now(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Sends a request; returns the status and the token, if one was granted.
    fn request(&mut self, ms: u64, from: IpAddr, req: Request<'_>) -> (Status, Vec<u8>) {
        let now = self.at(ms);
        testing::request(&mut self.relay, now, from, &req, &mut self.tx)
    }

    fn create(&mut self, room: &str, user: &str) -> Vec<u8> {
        let req = Request::Create {
            room,
            user,
            password: b"",
            capacity: 0,
            resume_key: None,
        };
        let (s, t) = self.request(0, ip(1), req);
        assert_eq!(s, Status::Ok);
        t
    }

    fn join(&mut self, room: &str, user: &str) -> Vec<u8> {
        let req = Request::Join {
            room,
            user,
            password: b"",
            resume_key: None,
        };
        let (s, t) = self.request(0, ip(1), req);
        assert_eq!(s, Status::Ok);
        t
    }

    fn datagram(
        &mut self,
        ms: u64,
        from: SocketAddr,
        room: &str,
        token: &[u8],
        msg: &str,
    ) -> DatagramOutcome {
        let bytes = chat_datagram(room, token, msg);
        let now = self.at(ms);
        self.relay.handle_datagram(now, from, &bytes, &mut self.tx)
    }

    fn flush(&mut self) {
        self.relay.flush(&mut self.tx);
        self.relay.check_invariants().unwrap();
    }

    /// (kind, seq, user, body) of every event that went to `to`, datagram by datagram.
    fn received(&self, to: SocketAddr) -> Vec<Vec<(u8, u32, String, String)>> {
        self.tx
            .to(to)
            .into_iter()
            .map(|d| {
                Events::new(d)
                    .map(|e| {
                        let e = e.unwrap();
                        (e.kind, e.seq, e.user.to_string(), e.body.to_string())
                    })
                    .collect()
            })
            .collect()
    }
}

fn ev(kind: EventKind, seq: u32, user: &str, body: &str) -> (u8, u32, String, String) {
    (kind as u8, seq, user.to_string(), body.to_string())
}

/// A room "r" with host "a" bound at port 1 and "b" bound at port 2.
fn two_members(cfg: Config) -> (World, Vec<u8>, Vec<u8>) {
    let mut w = World::new(cfg);
    let now = w.at(0);
    let members = [("a", addr(1)), ("b", addr(2))];
    let mut tokens = bound_room(&mut w.relay, now, "r", 0, &members, &mut w.tx);
    w.flush();
    w.tx.sent.clear();
    let c = &mut w.relay.counters;
    (c.deliveries, c.datagrams_out, c.send_drops) = (0, 0, 0);
    let tb = tokens.pop().unwrap();
    (w, tokens.pop().unwrap(), tb)
}

#[test]
fn events_of_one_wake_up_share_a_datagram_and_bytes() {
    let (mut w, ta, tb) = two_members(Config::default());
    w.datagram(1, addr(1), "r", &ta, "one");
    w.datagram(1, addr(2), "r", &tb, "two");
    assert!(
        w.tx.sent.is_empty(),
        "nothing leaves before the wake-up ends"
    );
    w.flush();
    assert_eq!(w.tx.sent.len(), 1, "one outbox, sent once to both");
    assert_eq!(w.tx.sent[0].1, vec![addr(1), addr(2)]);
    let expect = vec![vec![
        ev(EventKind::Message, 3, "a", "one"),
        ev(EventKind::Message, 4, "b", "two"),
    ]];
    assert_eq!(w.received(addr(1)), expect);
    assert_eq!(w.received(addr(2)), expect);
    assert_eq!(w.relay.counters.deliveries, 4);
    assert_eq!(w.relay.counters.datagrams_out, 2);
}

#[test]
fn batch_max_one_sends_each_event_alone_and_at_once() {
    let cfg = Config {
        batch_max: 1,
        ..Config::default()
    };
    let (mut w, ta, _) = two_members(cfg);
    w.datagram(1, addr(1), "r", &ta, "x");
    assert_eq!(w.tx.sent.len(), 1, "sent without waiting for the flush");
    w.datagram(1, addr(1), "r", &ta, "y");
    w.flush();
    assert_eq!(w.received(addr(2)).len(), 2);
}

#[test]
fn a_full_outbox_is_sent_before_the_next_event() {
    let (mut w, ta, _) = two_members(Config {
        msg_rate: 0,
        ..Config::default()
    });
    let big = "x".repeat(1500);
    for _ in 0..3 {
        w.datagram(1, addr(1), "r", &ta, &big);
    }
    w.flush();
    let got = w.received(addr(2));
    // Two 1510-byte events fit in 4096, the third goes in a second datagram.
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    assert!(w.tx.sent.iter().all(|(d, _)| d.len() <= MAX_DATAGRAM));
}

#[test]
fn a_new_member_sees_only_what_follows_its_join() {
    let (mut w, ta, _) = two_members(Config::default());
    let tc = w.join("r", "c");
    w.datagram(1, addr(1), "r", &ta, "before");
    // c binds in the same wake-up: "before" must not reach it.
    w.datagram(1, addr(3), "r", &tc, "");
    w.datagram(1, addr(1), "r", &ta, "after");
    w.flush();
    assert_eq!(
        w.received(addr(3)),
        vec![vec![
            ev(EventKind::Joined, 4, "c", ""),
            ev(EventKind::Message, 5, "a", "after")
        ]]
    );
    assert_eq!(
        w.received(addr(2)).len(),
        2,
        "b got the old outbox, then the new one"
    );
}

#[test]
fn seq_wraps_past_zero() {
    let (mut w, ta, _) = two_members(Config::default());
    let key = w.relay.by_name["r"];
    w.relay.rooms[key].set_seq(u32::MAX - 1);
    for m in ["a", "b", "c"] {
        w.datagram(1, addr(1), "r", &ta, m);
    }
    w.flush();
    let seqs: Vec<u32> = w.received(addr(2))[0].iter().map(|e| e.1).collect();
    assert_eq!(seqs, vec![u32::MAX, 1, 2]);
}

#[test]
fn silence_times_out_members_and_hosts_in_virtual_time() {
    let cfg = Config {
        idle_timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let (mut w, ta, _) = two_members(cfg);
    // a keeps alive; b goes silent.
    for s in 1..=9 {
        w.datagram(s * 1000, addr(1), "r", &ta, "");
    }
    let at = w.at(9_999);
    w.relay.handle_timeout(at, &mut w.tx);
    assert!(w.tx.sent.is_empty());
    let at = w.at(10_000);
    w.relay.handle_timeout(at, &mut w.tx);
    w.flush();
    assert_eq!(
        w.received(addr(2)),
        vec![vec![ev(EventKind::TimedOut, 3, "b", "")]]
    );
    assert_eq!(
        w.received(addr(1)),
        vec![vec![ev(EventKind::TimedOut, 3, "b", "")]]
    );
    assert_eq!(w.relay.member_count(), 1);
    // The TIMED_OUT's tail notice is due first (and goes to nobody: no v1.1 member).
    assert_eq!(w.relay.next_timeout(), Some(w.at(10_050)));
    let at = w.at(10_050);
    w.relay.handle_timeout(at, &mut w.tx);
    assert_eq!(w.relay.counters.tail_notices, 0);
    assert_eq!(
        w.relay.next_timeout(),
        Some(w.at(19_000)),
        "a's refreshed deadline"
    );

    // The host goes silent: TIMED_OUT to the host, and the room is gone.
    w.tx.sent.clear();
    let at = w.at(19_000);
    w.relay.handle_timeout(at, &mut w.tx);
    w.flush();
    assert_eq!(
        w.received(addr(1)),
        vec![vec![ev(EventKind::TimedOut, 4, "a", "")]]
    );
    assert_eq!(w.relay.room_count(), 0);
    assert_eq!(w.relay.counters.members_timed_out, 2);
    assert_eq!(
        w.datagram(19_001, addr(1), "r", &ta, "x"),
        DatagramOutcome::Dropped(DropReason::UnknownToken)
    );
}

#[test]
fn host_leave_closes_the_room_for_the_rest() {
    let (mut w, ta, tb) = two_members(Config::default());
    let (s, _) = w.request(
        1,
        ip(1),
        Request::Leave {
            room: "r",
            token: &ta,
        },
    );
    assert_eq!(s, Status::Ok);
    w.flush();
    assert!(
        w.received(addr(1)).is_empty(),
        "a host that left hears nothing more"
    );
    assert_eq!(
        w.received(addr(2)).concat(),
        vec![
            ev(EventKind::Left, 3, "a", ""),
            ev(EventKind::RoomClosed, 4, "", "host left")
        ]
    );
    assert_eq!(
        w.datagram(2, addr(2), "r", &tb, "x"),
        DatagramOutcome::Dropped(DropReason::UnknownToken)
    );
    assert_eq!(w.relay.member_count(), 0);
    w.create("r", "z");
}

#[test]
fn the_rate_limit_drops_and_tells_the_sender_once_a_second() {
    let cfg = Config {
        msg_rate: 1,
        msg_burst: 2,
        ..Config::default()
    };
    let (mut w, ta, _) = two_members(cfg);
    let outcomes: Vec<_> = (0..4)
        .map(|_| w.datagram(0, addr(1), "r", &ta, "spam"))
        .collect();
    assert_eq!(
        outcomes[..2],
        [DatagramOutcome::Relayed, DatagramOutcome::Relayed]
    );
    assert_eq!(
        outcomes[2..],
        [DatagramOutcome::Dropped(DropReason::RateLimited); 2]
    );
    w.flush();
    let notices: Vec<_> = w
        .received(addr(1))
        .concat()
        .into_iter()
        .filter(|e| e.0 == EventKind::RateLimited as u8)
        .collect();
    assert_eq!(
        notices,
        vec![ev(EventKind::RateLimited, 0, "a", "1 messages/s, burst 2")]
    );
    assert!(
        w.received(addr(2)).concat().iter().all(|e| e.0 == 1),
        "b sees no notice"
    );
    assert_eq!(w.relay.counters.drops_for(DropReason::RateLimited), 2);
    // A second later: a token again, and a new notice may go.
    assert_eq!(
        w.datagram(1000, addr(1), "r", &ta, "ok"),
        DatagramOutcome::Relayed
    );
    // Heartbeats are never limited.
    assert_eq!(
        w.datagram(1000, addr(1), "r", &ta, ""),
        DatagramOutcome::Heartbeat
    );
}

#[test]
fn refused_sends_are_counted_not_retried() {
    let (mut w, ta, _) = two_members(Config::default());
    w.tx.accept_at_most = Some(1);
    w.datagram(1, addr(1), "r", &ta, "x");
    w.flush();
    assert_eq!(w.tx.sent.len(), 1);
    assert_eq!(w.relay.counters.send_drops, 1);
    assert_eq!(w.relay.counters.deliveries, 1);
}

#[test]
fn datagrams_are_checked_against_token_room_ip_and_address() {
    let (mut w, ta, _) = two_members(Config::default());
    w.create("other", "o");
    let d = |w: &mut World, from, room, token: &[u8]| w.datagram(1, from, room, token, "x");
    assert_eq!(
        d(&mut w, addr(1), "other", &ta),
        DatagramOutcome::Dropped(DropReason::WrongRoom)
    );
    assert_eq!(
        d(&mut w, SocketAddr::new(ip(2), 1), "r", &ta),
        DatagramOutcome::Dropped(DropReason::WrongIp)
    );
    assert_eq!(
        d(&mut w, addr(9), "r", &ta),
        DatagramOutcome::Dropped(DropReason::WrongAddress)
    );
    assert_eq!(
        d(&mut w, addr(1), "r", &[b'x'; 32]),
        DatagramOutcome::Dropped(DropReason::UnknownToken)
    );
    assert_eq!(
        d(&mut w, addr(1), "r", b"short"),
        DatagramOutcome::Dropped(DropReason::UnknownToken)
    );
    assert_eq!(d(&mut w, addr(1), "r", &ta), DatagramOutcome::Relayed);
}

#[test]
fn capacity_limits_and_status_order() {
    let cfg = Config {
        max_capacity: 3,
        max_members: 4,
        max_rooms_per_ip: 2,
        ..Config::default()
    };
    let mut w = World::new(cfg);
    let create = |room, cap| Request::Create {
        room,
        user: "h",
        password: b"pw",
        capacity: cap,
        resume_key: None,
    };
    assert_eq!(w.request(0, ip(1), create("a", 100)).0, Status::Ok);
    let join = |user| Request::Join {
        room: "a",
        user,
        password: b"pw",
        resume_key: None,
    };
    assert_eq!(w.request(0, ip(1), join("x")).0, Status::Ok);
    assert_eq!(w.request(0, ip(1), join("y")).0, Status::Ok);
    // Full: capacity 100 was lowered to 3. A taken name is answered first (5 before 3),
    // and a wrong password before both (4).
    assert_eq!(w.request(0, ip(1), join("z")).0, Status::RoomFull);
    assert_eq!(w.request(0, ip(1), join("x")).0, Status::NameTaken);
    let wrong = Request::Join {
        room: "a",
        user: "x",
        password: b"no",
        resume_key: None,
    };
    assert_eq!(w.request(0, ip(1), wrong).0, Status::BadPassword);
    assert_eq!(w.request(0, ip(1), create("b", 0)).0, Status::Ok);
    // Two rooms from this IP already; from another IP the member cap (4) is what bites.
    assert_eq!(w.request(0, ip(1), create("c", 0)).0, Status::ServerFull);
    assert_eq!(w.request(0, ip(2), create("a", 0)).0, Status::RoomExists);
    assert_eq!(w.request(0, ip(2), create("c", 0)).0, Status::ServerFull);
}

#[test]
fn one_ip_cannot_hold_more_than_its_share_of_members() {
    let cfg = Config {
        max_members_per_ip: 2,
        ..Config::default()
    };
    let mut w = World::new(cfg);
    w.create("r", "a");
    w.join("r", "b");
    let join = |user| Request::Join {
        room: "r",
        user,
        password: b"",
        resume_key: None,
    };
    assert_eq!(w.request(0, ip(1), join("c")).0, Status::ServerFull);
    assert_eq!(w.request(0, ip(2), join("c")).0, Status::Ok);
    // A member leaving frees a slot for its IP.
    let tb = w.relay.by_token.keys().copied().find(|t| {
        let k = w.relay.by_token[t];
        &*w.relay.members[k].name == "b"
    });
    let (s, _) = w.request(
        0,
        ip(1),
        Request::Leave {
            room: "r",
            token: &tb.unwrap(),
        },
    );
    assert_eq!(s, Status::Ok);
    assert_eq!(w.request(0, ip(1), join("d")).0, Status::Ok);
    w.relay.check_invariants().unwrap();
}

/// PROTOCOL.md §6: a token issued on a WebSocket session is bound to that session; the
/// same bytes reach UDP and session members; tokens do not cross transports; LEAVE goes by
/// the session's peer IP.
#[test]
fn session_members_share_the_room_and_keep_to_their_transport() {
    use crate::server::transmit::SessionId;
    let mut w = World::new(Config::default());
    let s1 = SessionId { key: 3, id: 30 };
    let s2 = SessionId { key: 4, id: 40 };
    let now = w.at(0);
    let udp_token = w.create("mix", "alice");
    let join = Request::Join {
        room: "mix",
        user: "web",
        password: b"",
        resume_key: None,
    };
    let mut out = Vec::new();
    let status = w
        .relay
        .handle_session_request(now, ip(1), s1, &join, &mut out, &mut w.tx);
    assert_eq!(status, Status::Ok);
    let (_, n) = crate::protocol::frame::split_reply(&out).unwrap().unwrap();
    let (complete, _) = crate::protocol::frame::split_reply(&out[n..])
        .unwrap()
        .unwrap();
    let web_token = crate::protocol::frame::Grant::parse(complete.payload)
        .unwrap()
        .token
        .to_vec();

    let d = DatagramOutcome::Dropped(crate::server::counters::DropReason::WrongAddress);
    // Across transports, and on another session: dropped.
    let hb = chat_datagram("mix", &web_token, "");
    assert_eq!(w.relay.handle_datagram(now, addr(5000), &hb, &mut w.tx), d);
    assert_eq!(w.relay.handle_session_datagram(now, s2, &hb, &mut w.tx), d);
    let udp_hb = chat_datagram("mix", &udp_token, "");
    assert_eq!(
        w.relay.handle_session_datagram(now, s1, &udp_hb, &mut w.tx),
        d
    );
    // Both bind on their own transport.
    assert_eq!(
        w.relay.handle_datagram(now, addr(5000), &udp_hb, &mut w.tx),
        DatagramOutcome::Heartbeat
    );
    assert_eq!(
        w.relay.handle_session_datagram(now, s1, &hb, &mut w.tx),
        DatagramOutcome::Heartbeat
    );
    assert_eq!(w.relay.bound_count(), 2);
    let msg = chat_datagram("mix", &web_token, "hi from the web");
    assert_eq!(
        w.relay.handle_session_datagram(now, s1, &msg, &mut w.tx),
        DatagramOutcome::Relayed
    );
    w.relay.flush(&mut w.tx);
    w.relay.check_invariants().unwrap();
    // The same bytes went to the UDP member and to the session.
    let udp_last = w.tx.to(addr(5000)).last().unwrap().to_vec();
    let (web_last, to) = w.tx.sent_sessions.last().unwrap().clone();
    assert_eq!(udp_last, web_last);
    assert_eq!(to, vec![s1]);
    let evs: Vec<_> = Events::new(&udp_last).map(|e| e.unwrap()).collect();
    assert_eq!(evs.last().unwrap().body, "hi from the web");
    // LEAVE of the session's token from another IP: refused; from its IP over TCP: fine.
    let leave = Request::Leave {
        room: "mix",
        token: &web_token,
    };
    assert_eq!(w.request(1, ip(9), leave).0, Status::Unauthorized);
    assert_eq!(w.request(1, ip(1), leave).0, Status::Ok);
    w.relay.flush(&mut w.tx);
    w.relay.check_invariants().unwrap();
    assert_eq!(w.relay.bound_count(), 1);
}

mod recovery;
