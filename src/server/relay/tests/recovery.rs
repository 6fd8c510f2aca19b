//! v1.1 in virtual time: SEND, NACK, SYNC, tail notices, history caps and RESUME, with
//! hostile input.

use super::*;
use crate::protocol::control::ControlBody;
use crate::protocol::event::{Gone, RawEvents, SyncInfo};
use crate::server::relay::recovery::TAIL_NOTICE_DELAY;
use crate::server::relay::testing::control_datagram;
use crate::server::room::history::ROOM_HISTORY_BYTES;

/// (kind, seq, user, body bytes) of one event as received.
type RawEv = (u8, u32, String, Vec<u8>);

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

impl World {
    fn control(
        &mut self,
        ms: u64,
        from: SocketAddr,
        room: &str,
        token: &[u8],
        body: ControlBody<'_>,
    ) -> DatagramOutcome {
        let bytes = control_datagram(room, token, body);
        let now = self.at(ms);
        self.relay.handle_datagram(now, from, &bytes, &mut self.tx)
    }

    fn send(
        &mut self,
        ms: u64,
        from: SocketAddr,
        token: &[u8],
        cs: u32,
        msg: &str,
    ) -> DatagramOutcome {
        let body = ControlBody::Send {
            client_seq: cs,
            message: msg,
        };
        self.control(ms, from, "r", token, body)
    }

    fn nack(&mut self, ms: u64, from: SocketAddr, token: &[u8], from_seq: u32, count: u16) {
        let body = ControlBody::Nack { from_seq, count };
        let outcome = self.control(ms, from, "r", token, body);
        assert_eq!(outcome, DatagramOutcome::Nack);
    }

    fn sync(&mut self, ms: u64, from: SocketAddr, token: &[u8]) -> DatagramOutcome {
        self.control(ms, from, "r", token, ControlBody::Sync)
    }

    /// Every event that went to `to`, datagram by datagram, bodies as bytes.
    fn raw(&self, to: SocketAddr) -> Vec<Vec<RawEv>> {
        self.tx
            .to(to)
            .into_iter()
            .map(|d| {
                RawEvents::new(d)
                    .map(|e| {
                        let e = e.unwrap();
                        (e.kind, e.seq, e.user.to_string(), e.body.to_vec())
                    })
                    .collect()
            })
            .collect()
    }

    fn timeout(&mut self, ms: u64) {
        let at = self.at(ms);
        self.relay.handle_timeout(at, &mut self.tx);
        self.flush();
    }
}

fn sync_ev(user: &str, last_seq: u32, last_client_seq: u32) -> RawEv {
    let body = SyncInfo {
        last_seq,
        last_client_seq,
    }
    .body();
    (EventKind::Sync as u8, 0, user.into(), body.to_vec())
}

fn gone_ev(from_seq: u32, count: u16) -> RawEv {
    let body = Gone { from_seq, count }.body();
    (EventKind::Gone as u8, 0, String::new(), body.to_vec())
}

/// Room "r": "a" (host, v1.1 through a SYNC) at port 1, "b" (v1) at port 2. Events: JOINED
/// a (1), JOINED b (2). Nothing recorded yet.
fn mixed_room(cfg: Config) -> (World, Vec<u8>, Vec<u8>) {
    let (mut w, ta, tb) = two_members(cfg);
    assert_eq!(w.sync(0, addr(1), &ta), DatagramOutcome::Sync);
    w.flush();
    w.tx.sent.clear();
    (w, ta, tb)
}

#[test]
fn send_relays_each_client_seq_once() {
    let (mut w, ta, _) = mixed_room(Config {
        msg_burst: 2,
        msg_rate: 1,
        ..Config::default()
    });
    assert_eq!(w.send(1, addr(1), &ta, 1, "one"), DatagramOutcome::Relayed);
    assert_eq!(
        w.send(1, addr(1), &ta, 1, "one"),
        DatagramOutcome::Duplicate
    );
    assert_eq!(
        w.send(1, addr(1), &ta, 0, "zero"),
        DatagramOutcome::Duplicate
    );
    assert_eq!(
        w.send(1, addr(1), &ta, 3, "three"),
        DatagramOutcome::Relayed
    );
    // The bucket is empty: a new ClientSeq is rate-limited and does not count as relayed...
    assert_eq!(
        w.send(2, addr(1), &ta, 4, "four"),
        DatagramOutcome::Dropped(DropReason::RateLimited)
    );
    // ...while retransmissions are never charged.
    for _ in 0..10 {
        assert_eq!(
            w.send(2, addr(1), &ta, 3, "three"),
            DatagramOutcome::Duplicate
        );
    }
    // A second later the same ClientSeq goes through.
    assert_eq!(
        w.send(1002, addr(1), &ta, 4, "four"),
        DatagramOutcome::Relayed
    );
    w.flush();
    let bodies: Vec<String> = w
        .received(addr(2))
        .concat()
        .into_iter()
        .map(|e| e.3)
        .collect();
    assert_eq!(bodies, ["one", "three", "four"]);
    assert_eq!(w.relay.counters.duplicate_sends, 12);
    assert_eq!(w.relay.counters.messages, 3);
    // SYNC reports the highest relayed ClientSeq.
    w.tx.sent.clear();
    w.sync(1003, addr(1), &ta);
    assert_eq!(w.raw(addr(1)), vec![vec![sync_ev("a", 5, 4)]]);
}

#[test]
fn a_control_datagram_that_binds_is_answered_after_joined() {
    let (mut w, _, _) = mixed_room(Config::default());
    let tc = w.join("r", "c");
    assert_eq!(w.sync(1, addr(3), &tc), DatagramOutcome::Sync);
    // JOINED went out before the SYNC answer, which knows of it.
    let to_c = w.raw(addr(3));
    assert_eq!(to_c.len(), 2);
    assert_eq!((to_c[0][0].0, to_c[0][0].1), (EventKind::Joined as u8, 3));
    assert_eq!(to_c[1], vec![sync_ev("c", 3, 0)]);
    // A SEND that binds: JOINED n, then its message n+1.
    let td = w.join("r", "d");
    assert_eq!(w.send(2, addr(4), &td, 1, "hi"), DatagramOutcome::Relayed);
    w.flush();
    let seqs: Vec<(u8, u32)> = w.raw(addr(4)).concat().iter().map(|e| (e.0, e.1)).collect();
    assert_eq!(
        seqs,
        [(EventKind::Joined as u8, 4), (EventKind::Message as u8, 5)]
    );
}

#[test]
fn sync_answer_has_the_bytes_of_the_worked_example() {
    let mut w = World::new(Config::default());
    let now = w.at(0);
    let t = bound_room(
        &mut w.relay,
        now,
        "lobby",
        0,
        &[("alice", addr(1))],
        &mut w.tx,
    );
    // JOINED is Seq 1; seven messages reach Seq 8, the SEND with ClientSeq 1 Seq 9.
    for i in 0..7 {
        w.datagram(0, addr(1), "lobby", &t[0], &format!("m{i}"));
    }
    let body = ControlBody::Send {
        client_seq: 1,
        message: "hi",
    };
    w.control(0, addr(1), "lobby", &t[0], body);
    w.flush();
    w.tx.sent.clear();
    w.control(1, addr(1), "lobby", &t[0], ControlBody::Sync);
    let want = [
        0x08, 0, 0, 0, 0, 0x05, b'a', b'l', b'i', b'c', b'e', 0, 0x08, 0, 0, 0, 9, 0, 0, 0, 1,
    ];
    assert_eq!(w.tx.to(addr(1)), vec![&want[..]]);
    // The tail notice, 50 ms after Seq 9.
    w.tx.sent.clear();
    w.timeout(50);
    let tail = [0x08, 0, 0, 0, 0, 0, 0, 0x08, 0, 0, 0, 9, 0, 0, 0, 0];
    assert_eq!(w.tx.to(addr(1)), vec![&tail[..]]);
    assert_eq!(w.relay.counters.tail_notices, 1);
}

#[test]
fn nack_resends_the_original_bytes_packed_then_gone() {
    let (mut w, ta, tb) = mixed_room(Config {
        history: 8,
        msg_rate: 0,
        ..Config::default()
    });
    // Seqs 3..=22; b (v1) records the bytes as first sent, one datagram per event.
    let mut original: Vec<Vec<u8>> = Vec::new();
    for i in 0..20 {
        w.datagram(1, addr(1), "r", &ta, &format!("message {i}"));
        w.flush();
        original.push(w.tx.to(addr(2)).last().unwrap().to_vec());
    }
    w.tx.sent.clear();
    // 10..=25: 10-14 gone, 15-22 held, 23-25 not yet used.
    w.nack(2, addr(1), &ta, 10, 16);
    let sent = w.tx.to(addr(1));
    assert_eq!(sent.len(), 2, "one packed datagram, then GONE: {sent:?}");
    assert_eq!(sent[0], original[12..20].concat(), "the original bytes");
    assert_eq!(w.raw(addr(1))[1], vec![gone_ev(10, 5)]);
    assert!(w.tx.to(addr(2)).is_empty(), "answers go to the asker alone");
    let c = &w.relay.counters;
    assert_eq!((c.nacks, c.repair_events, c.gone), (1, 8, 1));
    assert_eq!(c.repair_bytes, original[12..20].concat().len() as u64);
    // Wholly ahead: no answer at all. Straddling the latest (§13.1): up to it.
    w.tx.sent.clear();
    w.nack(3, addr(1), &ta, 23, 5);
    w.nack(3, addr(1), &ta, 23 + (1 << 30), 512);
    assert!(w.tx.sent.is_empty());
    w.nack(3, addr(1), &ta, 21, 5);
    assert_eq!(w.tx.to(addr(1)), vec![original[18..20].concat()]);
    // Far behind, across the wrap: gone.
    w.tx.sent.clear();
    w.nack(3, addr(1), &ta, u32::MAX - 1, 4);
    assert_eq!(w.raw(addr(1)), vec![vec![gone_ev(u32::MAX - 1, 4)]]);
    // b never sent a control datagram: still a v1 member, and it was sent nothing.
    assert!(!w.relay.members[w.relay.by_token[&tb[..]]].v11);
    assert!(w.tx.to(addr(2)).is_empty());
}

#[test]
fn nack_packs_full_datagrams_with_consecutive_seqs() {
    let (mut w, ta, _) = mixed_room(Config {
        msg_rate: 0,
        ..Config::default()
    });
    let line = "y".repeat(1000);
    for _ in 0..10 {
        w.datagram(1, addr(1), "r", &ta, &line);
    }
    w.flush();
    w.tx.sent.clear();
    w.nack(2, addr(1), &ta, 1, 12);
    let got = w.raw(addr(1));
    assert!(w.tx.sent.iter().all(|(d, _)| d.len() <= MAX_DATAGRAM));
    let seqs: Vec<u32> = got.concat().iter().map(|e| e.1).collect();
    assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
    for d in &got {
        assert!(d.windows(2).all(|p| p[1].1 == p[0].1 + 1));
    }
    // 9-byte JOINEDs and 1009-byte messages: 2 + 4, 4, 2 events.
    assert_eq!(got.iter().map(Vec::len).collect::<Vec<_>>(), [6, 4, 2]);
}

#[test]
fn history_zero_answers_every_nack_with_gone() {
    let (mut w, ta, _) = mixed_room(Config {
        history: 0,
        ..Config::default()
    });
    w.nack(1, addr(1), &ta, 1, 100);
    assert_eq!(w.raw(addr(1)), vec![vec![gone_ev(1, 2)]]);
    assert_eq!(w.relay.counters.history_bytes, 0);
}

#[test]
fn hostile_nacks_are_dropped_and_counted() {
    let (mut w, ta, _) = mixed_room(Config::default());
    let mut bad = control_datagram(
        "r",
        &ta,
        ControlBody::Nack {
            from_seq: 1,
            count: 1,
        },
    );
    let n = bad.len();
    for (count, reason) in [(0u16, DropReason::NackCount), (513, DropReason::NackCount)] {
        bad[n - 2..].copy_from_slice(&count.to_be_bytes());
        let now = w.at(1);
        let outcome = w.relay.handle_datagram(now, addr(1), &bad, &mut w.tx);
        assert_eq!(outcome, DatagramOutcome::Dropped(reason));
    }
    bad[n - 2..].copy_from_slice(&1u16.to_be_bytes());
    bad[n - 6..n - 2].copy_from_slice(&0u32.to_be_bytes());
    let now = w.at(1);
    let outcome = w.relay.handle_datagram(now, addr(1), &bad, &mut w.tx);
    assert_eq!(
        outcome,
        DatagramOutcome::Dropped(DropReason::NackFromSeqZero)
    );
    // A body one byte long, an unknown op.
    let mut short = bad.clone();
    short.pop();
    let mut op = bad.clone();
    op[1] = 9;
    let now = w.at(1);
    for (d, reason) in [(short, DropReason::BadBody), (op, DropReason::UnknownOp)] {
        let outcome = w.relay.handle_datagram(now, addr(1), &d, &mut w.tx);
        assert_eq!(outcome, DatagramOutcome::Dropped(reason));
    }
    assert!(w.tx.sent.is_empty(), "never answered");
    w.relay.check_invariants().unwrap();
}

#[test]
fn the_repair_bucket_holds_against_a_nack_flood() {
    let (mut w, ta, tb) = mixed_room(Config {
        msg_rate: 0,
        repair_rate: 1000,
        repair_burst: 3000,
        ..Config::default()
    });
    let line = "z".repeat(990); // 1000-byte events
    for _ in 0..20 {
        w.datagram(1, addr(1), "r", &ta, &line);
    }
    w.flush();
    w.tx.sent.clear();
    // 1000 NACKs in one second: the burst plus one second of refill, and no more.
    for i in 0..1000 {
        w.nack(2 + i, addr(1), &ta, 3, 20);
    }
    let bytes: usize = w.tx.to(addr(1)).iter().map(|d| d.len()).sum();
    assert!(bytes <= 3000 + 1000, "{bytes} bytes resent");
    assert_eq!(w.relay.counters.repair_bytes as usize, bytes);
    assert!(w.relay.counters.repair_dropped >= 999 * 16);
    // The other member's bucket is its own: b gets its whole answer at once.
    w.tx.sent.clear();
    w.nack(1002, addr(2), &tb, 3, 3);
    let bytes: usize = w.tx.to(addr(2)).iter().map(|d| d.len()).sum();
    assert_eq!(bytes, 3 * 999);
    // A dry bucket sends nothing more; what it could not pay for is counted.
    w.tx.sent.clear();
    let dropped = w.relay.counters.repair_dropped;
    w.nack(1003, addr(2), &tb, 1, 5);
    assert!(w.tx.sent.is_empty());
    assert_eq!(w.relay.counters.repair_dropped, dropped + 5);
    w.relay.check_invariants().unwrap();
}

#[test]
fn a_partial_answer_starts_at_from_seq_and_gone_is_free() {
    let (mut w, ta, _) = mixed_room(Config {
        history: 4,
        msg_rate: 0,
        repair_rate: 1,
        repair_burst: 2500,
        ..Config::default()
    });
    let line = "z".repeat(990); // 1000-byte events, Seqs 3..=12; 9..=12 held
    for _ in 0..10 {
        w.datagram(1, addr(1), "r", &ta, &line);
    }
    w.flush();
    w.tx.sent.clear();
    w.nack(2, addr(1), &ta, 1, 12);
    let got = w.raw(addr(1));
    let seqs: Vec<u32> = got[0].iter().map(|e| e.1).collect();
    assert_eq!(
        seqs,
        [9, 10],
        "from the start of what is held, as far as paid"
    );
    assert_eq!(got[1], vec![gone_ev(1, 8)]);
    assert_eq!(w.relay.counters.repair_dropped, 2);
}

#[test]
fn sync_floods_are_answered_and_keep_the_member_alive() {
    let (mut w, ta, _) = mixed_room(Config {
        idle_timeout: Duration::from_secs(10),
        ..Config::default()
    });
    for i in 0..5000 {
        assert_eq!(w.sync(i * 5, addr(1), &ta), DatagramOutcome::Sync);
    }
    assert_eq!(w.tx.to(addr(1)).len(), 5000);
    assert_eq!(w.relay.counters.syncs, 5001);
    // b (v1, silent) timed out at 10 s; a, alive by SYNC alone, did not.
    w.timeout(25_000);
    assert_eq!(w.relay.member_count(), 1);
}

#[test]
fn tail_notice_goes_once_to_v11_members_after_a_quiet_50_ms() {
    let (mut w, ta, tb) = mixed_room(Config::default());
    let ms = TAIL_NOTICE_DELAY.as_millis() as u64;
    // A busy room: an event every 30 ms, no notice.
    for i in 0..5 {
        w.datagram(100 + i * 30, addr(2), "r", &tb, "busy");
        w.timeout(100 + i * 30 + 29);
    }
    assert!(
        w.raw(addr(1))
            .iter()
            .all(|d| d[0].0 == EventKind::Message as u8)
    );
    let last = 100 + 4 * 30;
    assert_eq!(w.relay.next_timeout(), Some(w.at(last + ms)));
    w.timeout(last + ms - 1);
    assert_eq!(w.relay.counters.tail_notices, 0);
    w.tx.sent.clear();
    w.timeout(last + ms);
    assert_eq!(w.raw(addr(1)), vec![vec![sync_ev("", 7, 0)]]);
    assert!(
        w.raw(addr(2)).is_empty(),
        "a v1 member never gets Kinds 7-9"
    );
    // Only one per latest event.
    w.timeout(last + 10 * ms);
    assert_eq!(w.relay.counters.tail_notices, 1);
    // A room without v1.1 members sends none.
    let _ = ta;
}

#[test]
fn history_caps_per_room_events_and_bytes() {
    let (mut w, ta, _) = mixed_room(Config {
        history: 5,
        msg_rate: 0,
        ..Config::default()
    });
    for _ in 0..10 {
        w.datagram(1, addr(1), "r", &ta, "x");
    }
    let key = w.relay.by_name["r"];
    let h = w.relay.rooms[key].history();
    assert_eq!((h.len(), h.oldest(), h.newest()), (5, 8, 12));
    // Maximal messages: the 1 MiB cap binds before the event count.
    let (mut w, ta, _) = mixed_room(Config {
        msg_rate: 0,
        ..Config::default()
    });
    let big = "m".repeat(3800);
    for _ in 0..400 {
        w.datagram(1, addr(1), "r", &ta, &big);
        w.flush();
    }
    let h = w.relay.rooms[w.relay.by_name["r"]].history();
    assert!(h.byte_len() <= ROOM_HISTORY_BYTES);
    assert_eq!(h.len(), ROOM_HISTORY_BYTES / 3810);
    assert_eq!(w.relay.counters.history_bytes, h.byte_len() as u64);
}

#[test]
fn the_memory_cap_sheds_the_largest_rings_first() {
    let mut w = World::new(Config {
        history_memory: 100_000,
        msg_rate: 0,
        ..Config::default()
    });
    let now = w.at(0);
    let big = bound_room(&mut w.relay, now, "big", 0, &[("a", addr(1))], &mut w.tx);
    let small = bound_room(&mut w.relay, now, "small", 0, &[("b", addr(2))], &mut w.tx);
    for _ in 0..10 {
        w.datagram(0, addr(2), "small", &small[0], "a short line");
    }
    let small_bytes = w.relay.rooms[w.relay.by_name["small"]].history().byte_len();
    let line = "b".repeat(1000);
    for _ in 0..300 {
        w.datagram(0, addr(1), "big", &big[0], &line);
        w.flush();
        assert!(w.relay.counters.history_bytes <= 100_000);
    }
    let hs = w.relay.rooms[w.relay.by_name["small"]].history();
    assert_eq!(
        hs.byte_len(),
        small_bytes,
        "the quiet room keeps its history"
    );
    let hb = w.relay.rooms[w.relay.by_name["big"]].history();
    assert!(hb.len() < 100 && hb.len() > 80, "{}", hb.len());
    // Closing a room ends its history.
    let (s, _) = w.request(
        1,
        ip(1),
        Request::Leave {
            room: "big",
            token: &big[0],
        },
    );
    assert_eq!(s, Status::Ok);
    assert_eq!(w.relay.counters.history_bytes, small_bytes as u64);
    w.flush();
}

/// Room "r" with host "a" (v1.1, key) at port 1, "b" (v1.1, key) at port 2 and "c" (v1)
/// at port 3, all from 127.0.0.1.
fn resumable_room(cfg: Config) -> (World, [Vec<u8>; 3]) {
    let mut w = World::new(cfg);
    let mut tokens = Vec::new();
    for (i, user) in ["a", "b", "c"].into_iter().enumerate() {
        let req = if i == 0 {
            Request::Create {
                room: "r",
                user,
                password: b"",
                capacity: 0,
                resume_key: Some(KEY),
            }
        } else {
            Request::Join {
                room: "r",
                user,
                password: b"",
                resume_key: (i == 1).then_some(KEY),
            }
        };
        let (s, t) = w.request(0, ip(1), req);
        assert_eq!(s, Status::Ok);
        tokens.push(t);
    }
    w.sync(0, addr(1), &tokens[0]);
    w.sync(0, addr(2), &tokens[1]);
    w.datagram(0, addr(3), "r", &tokens[2], "");
    w.flush();
    w.tx.sent.clear();
    (w, tokens.try_into().unwrap())
}

fn resume(
    w: &mut World,
    ms: u64,
    from: IpAddr,
    room: &str,
    token: &[u8],
    key: &[u8],
) -> (Status, Vec<u8>) {
    w.request(
        ms,
        from,
        Request::Resume {
            room,
            token,
            resume_key: key,
        },
    )
}

#[test]
fn resume_moves_a_member_to_a_new_ip() {
    let (mut w, [ta, tb, tc]) = resumable_room(Config::default());
    let new = SocketAddr::new(ip(2), 9);
    let (s, t) = resume(&mut w, 10, ip(2), "r", &tb, KEY);
    assert_eq!((s, t.as_slice()), (Status::Ok, tb.as_slice()));
    w.flush();
    // RESUMED to the other v1.1 member only; no LEFT, no JOINED.
    let resumed = (EventKind::Resumed as u8, 0, "b".to_string(), vec![]);
    assert_eq!(w.raw(addr(1)), vec![vec![resumed]]);
    assert!(w.raw(addr(2)).is_empty() && w.raw(addr(3)).is_empty());
    // The old address is no longer served (and its IP no longer accepted).
    w.datagram(11, addr(1), "r", &ta, "while b is away");
    w.flush();
    assert!(w.raw(addr(2)).is_empty());
    assert_eq!(
        w.sync(12, addr(2), &tb),
        DatagramOutcome::Dropped(DropReason::WrongIp)
    );
    // The first datagram from the new IP pins it, silently, and is answered.
    w.tx.sent.clear();
    assert_eq!(w.sync(13, new, &tb), DatagramOutcome::Sync);
    w.flush();
    assert_eq!(w.raw(new), vec![vec![sync_ev("b", 4, 0)]]);
    assert!(w.raw(addr(1)).is_empty(), "nobody hears a JOINED");
    let other = SocketAddr::new(ip(2), 10);
    assert_eq!(
        w.sync(14, other, &tb),
        DatagramOutcome::Dropped(DropReason::WrongAddress)
    );
    assert_eq!(w.relay.members_per_ip.get(ip(2)), 1);
    // The host moves its room count too; a RESUME from the current IP just unpins.
    let (s, _) = resume(&mut w, 15, ip(3), "r", &ta, KEY);
    assert_eq!(s, Status::Ok);
    assert_eq!(w.relay.rooms_per_ip.get(ip(3)), 1);
    let (s, _) = resume(&mut w, 16, ip(2), "r", &tb, KEY);
    assert_eq!(s, Status::Ok);
    // c gave no key: it can never resume.
    let (s, _) = resume(&mut w, 17, ip(1), "r", &tc, KEY);
    assert_eq!(s, Status::Unauthorized);
    w.flush();
}

#[test]
fn resume_statuses_and_their_order() {
    let (mut w, [ta, tb, _]) = resumable_room(Config {
        max_members_per_ip: 3,
        max_rooms_per_ip: 1,
        ..Config::default()
    });
    assert_eq!(
        resume(&mut w, 1, ip(1), "nope", &ta, KEY).0,
        Status::RoomNotFound
    );
    assert_eq!(
        resume(&mut w, 1, ip(1), "r", b"junk", KEY).0,
        Status::Unauthorized
    );
    let wrong = b"0123456789abcdef0123456789abcdeX";
    assert_eq!(
        resume(&mut w, 1, ip(1), "r", &ta, wrong).0,
        Status::Unauthorized
    );
    assert_eq!(
        resume(&mut w, 1, ip(1), "r", &ta, &KEY[..16]).0,
        Status::Unauthorized
    );
    // 127.0.0.5 holds three members: at the per-IP cap, 7 (after 8 would apply).
    for user in ["e", "f", "g"] {
        let join = Request::Join {
            room: "r",
            user,
            password: b"",
            resume_key: None,
        };
        assert_eq!(w.request(1, ip(5), join).0, Status::Ok);
    }
    assert_eq!(
        resume(&mut w, 1, ip(5), "r", &tb, KEY).0,
        Status::ServerFull
    );
    assert_eq!(
        resume(&mut w, 1, ip(5), "r", &tb, b"not the key, wrong").0,
        Status::Unauthorized
    );
    // 127.0.0.6 has a room: the host may not bring a second one there; b may come.
    let create = Request::Create {
        room: "s",
        user: "h",
        password: b"",
        capacity: 0,
        resume_key: None,
    };
    assert_eq!(w.request(1, ip(6), create).0, Status::Ok);
    assert_eq!(
        resume(&mut w, 1, ip(6), "r", &ta, KEY).0,
        Status::ServerFull
    );
    assert_eq!(resume(&mut w, 1, ip(6), "r", &tb, KEY).0, Status::Ok);
    assert_eq!(resume(&mut w, 1, ip(1), "r", &tb, KEY).0, Status::Ok);
    // From its current IP, never 7, though 127.0.0.1 is at its cap.
    assert_eq!(resume(&mut w, 1, ip(1), "r", &tb, KEY).0, Status::Ok);
    assert_eq!(resume(&mut w, 1, ip(1), "r", &ta, KEY).0, Status::Ok);
    w.flush();
}

#[test]
fn resume_guessing_is_throttled_like_passwords() {
    let (mut w, [ta, _, _]) = resumable_room(Config::default());
    for i in 0..5 {
        let key = format!("guess number {i:04}");
        assert_eq!(
            resume(&mut w, i, ip(7), "r", &ta, key.as_bytes()).0,
            Status::Unauthorized
        );
    }
    // Now even the right key is answered 9, and so is a JOIN; other IPs are unaffected.
    assert_eq!(
        resume(&mut w, 10, ip(7), "r", &ta, KEY).0,
        Status::TooManyRequests
    );
    let join = Request::Join {
        room: "r",
        user: "z",
        password: b"",
        resume_key: None,
    };
    assert_eq!(w.request(10, ip(7), join).0, Status::TooManyRequests);
    assert_eq!(resume(&mut w, 10, ip(8), "r", &ta, KEY).0, Status::Ok);
    // A minute after the first failure, it is over.
    assert_eq!(resume(&mut w, 60_000, ip(7), "r", &ta, KEY).0, Status::Ok);
    w.flush();
}

#[test]
fn a_sync_answer_never_overtakes_the_events_it_counts() {
    let (mut w, ta, tb) = mixed_room(Config::default());
    w.datagram(1, addr(2), "r", &tb, "queued");
    assert!(w.tx.sent.is_empty(), "still in the outbox");
    w.sync(1, addr(1), &ta);
    let got = w.raw(addr(1));
    assert_eq!(got.len(), 2);
    assert_eq!((got[0][0].0, got[0][0].1), (EventKind::Message as u8, 3));
    assert_eq!(got[1], vec![sync_ev("a", 3, 0)]);
    w.flush();
}
