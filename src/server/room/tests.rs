//! A room on its own: its methods driven directly, with a recording transmit.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::protocol::event::Events;
use crate::server::transmit::Recorder;

/// One datagram as sent: (Seq, body) of its events, and the ports it went to.
type Sent = (Vec<(u32, String)>, Vec<u16>);

fn dest(port: u16) -> Dest {
    Dest {
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        local: None,
    }
}

/// A room at key 3 whose host (member 0) is bound at port 1, and what it needs to emit.
struct Bench {
    room: Room,
    counters: Counters,
    queue: FlushQueue,
    spares: Spares,
    tx: Recorder,
    /// The time of the next event.
    now: Instant,
    /// The hold events are emitted with.
    hold: Duration,
}

impl Bench {
    fn new() -> Bench {
        let mut b = Bench {
            room: Room::new(
                Slot {
                    key: 3,
                    id: 0,
                    history: 1024,
                },
                "r",
                b"",
                8,
                (0, IpAddr::from([127, 0, 0, 1])),
            ),
            counters: Counters::default(),
            queue: FlushQueue::default(),
            spares: Spares::default(),
            tx: Recorder::default(),
            now: Instant::now(),
            hold: Duration::ZERO,
        };
        b.room
            .bind(0, Addr::Udp(dest(1)), &mut b.counters, &mut b.tx);
        b
    }

    fn emit(&mut self, body: &str, batch_max: usize) {
        let mut out = Outflow {
            counters: &mut self.counters,
            batch_max,
            queue: &mut self.queue,
            now: self.now,
            hold: self.hold,
            spares: &mut self.spares,
        };
        self.room
            .emit(EventKind::Message, "a", body, &mut out, &mut self.tx);
    }

    /// The keys of the rooms the queue holds due at `at` (taken off it).
    fn due(&mut self, at: Instant) -> Vec<usize> {
        let mut out = Vec::new();
        self.queue.take_due(at, &mut out);
        out.iter().map(|e| e.key).collect()
    }

    /// Every datagram sent so far.
    fn sent(&self) -> Vec<Sent> {
        self.tx
            .sent
            .iter()
            .map(|(bytes, to)| {
                let evs = Events::new(bytes)
                    .map(|e| e.unwrap())
                    .map(|e| (e.seq, e.body.to_string()))
                    .collect();
                (evs, to.iter().map(SocketAddr::port).collect())
            })
            .collect()
    }
}

fn evs(list: &[(u32, &str)]) -> Vec<(u32, String)> {
    list.iter().map(|&(s, b)| (s, b.to_string())).collect()
}

#[test]
fn emit_queues_the_room_once_and_flush_sends_one_datagram() {
    let mut b = Bench::new();
    b.emit("one", 64);
    b.emit("two", 64);
    assert_eq!(b.due(b.now), vec![3], "queued once, under its own key");
    assert!(b.tx.sent.is_empty());
    b.room
        .flush_queued(&mut b.counters, &mut b.spares, &mut b.tx);
    assert_eq!(b.sent(), vec![(evs(&[(1, "one"), (2, "two")]), vec![1])]);
    assert_eq!((b.counters.events, b.counters.deliveries), (2, 2));
    assert_eq!(b.counters.datagrams_out, 1);
    // Queued again by the next event, now that the flush took it off.
    b.emit("three", 64);
    assert_eq!(b.due(b.now), vec![3]);
    b.room.check(3, 64, 8).unwrap();
}

#[test]
fn a_room_keeps_an_outbox_buffer_only_while_it_has_events_to_send() {
    let mut b = Bench::new();
    assert!(b.room.outbox.is_none(), "a new room has no buffer");
    b.emit("one", 64);
    assert!(b.room.outbox.is_some());
    b.room
        .flush_queued(&mut b.counters, &mut b.spares, &mut b.tx);
    assert!(b.room.outbox.is_none(), "given back once sent");
    assert_eq!(b.spares.0.len(), 1);
    // The next event takes that same buffer: no new one.
    b.emit("two", 64);
    assert_eq!(b.spares.0.len(), 0);
    // A batch that fills while the room is not queued gives it back at once.
    b.room
        .flush_queued(&mut b.counters, &mut b.spares, &mut b.tx);
    b.emit("three", 1);
    assert!(b.room.outbox.is_none());
    assert_eq!(b.sent().len(), 3);
    b.room.check(3, 1, 8).unwrap();
}

#[test]
fn a_busy_room_holds_its_outbox_and_a_quiet_one_does_not() {
    let mut b = Bench::new();
    let us = Duration::from_micros(1);
    b.hold = 300 * us;
    // The first event of a quiet room is due at the end of this wake-up, hold or not.
    b.emit("lone", 64);
    assert_eq!(b.due(b.now), vec![3]);
    b.room
        .flush_queued(&mut b.counters, &mut b.spares, &mut b.tx);
    // The next one 100 µs later: the room is busy, so it holds for 300 µs.
    b.now += 100 * us;
    b.emit("busy 1", 64);
    b.now += 50 * us;
    b.emit("busy 2", 64);
    assert_eq!(b.due(b.now), Vec::<usize>::new(), "held, not due yet");
    assert_eq!(b.queue.next_due(), Some(b.now - 50 * us + 300 * us));
    assert_eq!(b.due(b.now + 250 * us), vec![3]);
    b.room
        .flush_queued(&mut b.counters, &mut b.spares, &mut b.tx);
    let sent = b.sent();
    assert_eq!(sent[1], (evs(&[(2, "busy 1"), (3, "busy 2")]), vec![1]));
    // After a silence longer than the hold, the room is quiet again.
    b.now += 10 * 300 * us;
    b.emit("after a pause", 64);
    assert_eq!(b.due(b.now), vec![3]);
    b.room.check(3, 64, 8).unwrap();
}

#[test]
fn a_full_batch_leaves_at_once() {
    let mut b = Bench::new();
    b.emit("one", 2);
    assert!(b.tx.sent.is_empty());
    b.emit("two", 2);
    assert_eq!(b.sent(), vec![(evs(&[(1, "one"), (2, "two")]), vec![1])]);
    b.emit("three", 2);
    assert_eq!(b.tx.sent.len(), 1, "the third waits for the next flush");
    b.room.check(3, 2, 8).unwrap();
}

#[test]
fn an_event_that_does_not_fit_flushes_first() {
    let mut b = Bench::new();
    let mid = "x".repeat(1000);
    b.emit(&mid, 64);
    b.emit(&mid, 64);
    assert!(
        b.tx.sent.is_empty(),
        "two 1010-byte events fit in 4096, and a third"
    );
    b.emit(&"y".repeat(2500), 64);
    let sent = b.sent();
    assert_eq!(sent.len(), 2, "the first two, then the big one on its own");
    assert_eq!(
        sent[0].0.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(sent[1].0[0].0, 3);
}

#[test]
fn a_full_datagram_leaves_at_once_even_when_held() {
    let mut b = Bench::new();
    b.hold = Duration::from_millis(5);
    let big = "x".repeat(2000);
    b.emit(&big, 64);
    b.now += Duration::from_micros(10);
    // Another 2010-byte event would not fit after these two: no point in holding.
    b.emit(&big, 64);
    let sent = b.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        sent[0].0.iter().map(|e| e.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

#[test]
fn binding_flushes_what_the_old_set_was_to_see() {
    let mut b = Bench::new();
    b.emit("before", 64);
    b.room.admit(1);
    b.room
        .bind(1, Addr::Udp(dest(2)), &mut b.counters, &mut b.tx);
    b.emit("after", 64);
    b.room.flush(&mut b.counters, &mut b.tx);
    assert_eq!(
        b.sent(),
        vec![
            (evs(&[(1, "before")]), vec![1]),
            (evs(&[(2, "after")]), vec![1, 2]),
        ]
    );
    assert_eq!(b.room.bound_len(), 2);
}

#[test]
fn removing_flushes_first_bound_or_not() {
    let mut b = Bench::new();
    b.room.admit(1);
    b.room.admit(2);
    b.room
        .bind(2, Addr::Udp(dest(3)), &mut b.counters, &mut b.tx);
    b.emit("for 0 and 2", 64);
    // Member 1 never bound: its removal still sends what is queued first.
    b.room.remove(1, &mut b.counters, &mut b.tx);
    assert_eq!(b.sent(), vec![(evs(&[(1, "for 0 and 2")]), vec![1, 3])]);
    b.emit("for 0", 64);
    b.room.remove(2, &mut b.counters, &mut b.tx);
    b.emit("still for 0", 64);
    b.room.flush(&mut b.counters, &mut b.tx);
    let sent = b.sent();
    assert_eq!(sent[1], (evs(&[(2, "for 0")]), vec![1, 3]));
    assert_eq!(sent[2], (evs(&[(3, "still for 0")]), vec![1]));
    assert_eq!(b.room.members(), &[0]);
}

#[test]
fn seq_wraps_past_zero_to_one() {
    let mut b = Bench::new();
    b.room.set_seq(u32::MAX - 1);
    for m in ["a", "b", "c"] {
        b.emit(m, 64);
    }
    b.room.flush(&mut b.counters, &mut b.tx);
    let seqs: Vec<u32> = b.sent()[0].0.iter().map(|e| e.0).collect();
    assert_eq!(seqs, vec![u32::MAX, 1, 2]);
}

#[test]
fn close_sends_room_closed_after_what_is_queued() {
    let mut b = Bench::new();
    b.emit("last words", 64);
    b.room
        .close("host left", &mut b.counters, &mut b.spares, &mut b.tx);
    assert_eq!(
        b.sent(),
        vec![(evs(&[(1, "last words"), (2, "host left")]), vec![1])]
    );
    let kinds: Vec<u8> = Events::new(&b.tx.sent[0].0)
        .map(|e| e.unwrap().kind)
        .collect();
    assert_eq!(
        kinds,
        [EventKind::Message as u8, EventKind::RoomClosed as u8]
    );
}

#[test]
fn refused_sends_are_counted() {
    let mut b = Bench::new();
    b.room.admit(1);
    b.room
        .bind(1, Addr::Udp(dest(2)), &mut b.counters, &mut b.tx);
    b.tx.accept_at_most = Some(1);
    b.emit("x", 64);
    b.room.flush(&mut b.counters, &mut b.tx);
    assert_eq!(b.counters.datagrams_out, 1);
    assert_eq!(b.counters.deliveries, 1);
    assert_eq!(b.counters.send_drops, 1);
}
