//! A worker thread of a Redis run: it owns a slice of the users (their connections) and
//! does their sending and receiving in one mio loop, as [`crate::worker`] does for OCM:
//! the same schedule, the same stamps, the same order checks and latency measure.
//!
//! Sends are pipelined: each time the worker looks at the schedule it queues every due
//! PUBLISH on its user's connection, then writes each connection that has something
//! queued once (one `write` carries all that connection's due PUBLISHes).

use std::io;
use std::sync::Mutex;
use std::sync::atomic::Ordering::{Relaxed, Release};

use hdrhistogram::Histogram;
use mio::{Interest, Token};

use super::link::{Got, Link};
use super::resp::Frame;
use crate::body::Stamp;
use crate::order::{Arrival, OrderTracker};
use crate::readiness::Readiness;
use crate::schedule::Schedule;
use crate::stats::{self, Counters, Published, ShapeStats, Shared};
use crate::topology::{Clock, Topology};
use crate::web::KindLatency;
use crate::worker::{LoadOutcome, StepPlan};

/// How often the latency of the last moment is handed to the progress printer.
const FLUSH_NS: u64 = 100_000_000;
/// One delivery in this many feeds the progress line's p99 (as in the OCM worker).
const INTERVAL_SAMPLE: u64 = 4;
/// Reads from one connection per readiness before moving on to the others (it is
/// revisited at once, so none is left behind).
const MAX_READS_PER_VISIT: usize = 8;
/// Connections read between two looks at the schedule, so sends are not held up by a
/// long list of readable connections.
const READS_BETWEEN_SENDS: usize = 16;

/// One simulated user: a connection subscribed to its room's channel.
pub struct RedisUser {
    /// Global user id (also the sender id in message stamps).
    pub id: u32,
    /// Room index in the topology.
    pub room: u32,
    /// Its room's channel.
    channel: Vec<u8>,
    link: Link,
    seq: u32,
    /// Order of each sender of its room (by position in the room), from the stamps.
    trackers: Vec<OrderTracker>,
    /// Queued output not yet written this turn (it is in the worker's `dirty` list).
    dirty: bool,
    /// Counted once as dropped when its connection closed.
    counted_closed: bool,
}

impl RedisUser {
    /// User `id` of `room`, subscribed to `channel` over `link`.
    pub fn new(id: u32, room: u32, channel: Vec<u8>, link: Link) -> RedisUser {
        RedisUser {
            id,
            room,
            channel,
            link,
            seq: 0,
            trackers: Vec::new(),
            dirty: false,
            counted_closed: false,
        }
    }
}

/// A worker's users, poll and buffers.
pub struct RedisWorker {
    index: usize,
    users: Vec<RedisUser>,
    readiness: Readiness,
    body: Vec<u8>,
    /// Users with output queued since the last flush.
    dirty: Vec<usize>,
    /// Users left unread last turn (read again at once).
    ready: Vec<usize>,
}

impl RedisWorker {
    /// Worker `index` owning `users`; registers their connections.
    pub fn new(index: usize, mut users: Vec<RedisUser>) -> io::Result<RedisWorker> {
        let readiness = Readiness::new()?;
        for (i, u) in users.iter_mut().enumerate() {
            readiness.registry().register(
                u.link.stream(),
                Token(i),
                Interest::READABLE | Interest::WRITABLE,
            )?;
        }
        Ok(RedisWorker {
            index,
            users,
            readiness,
            body: Vec::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Runs one load step (see [`crate::worker::Worker::load`]): sends this worker's share
    /// of the schedule, reads everything, and returns once every worker has sent its share
    /// and either every expected delivery arrived or the grace period is over.
    pub fn load(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &StepPlan,
    ) -> io::Result<LoadOutcome> {
        let me = &shared.workers[self.index];
        let mut sender = self.start_load(topo, plan);
        let mut sink = Sink::new(topo, plan);
        let mut next_flush = 0u64;
        loop {
            let now = clock.now_ns();
            self.send_due(&mut sender, &mut sink.c, topo, clock);
            if now >= next_flush {
                sink.flush_interval(&shared.interval[self.index]);
                next_flush = now + FLUSH_NS;
            }
            publish(me, &sink, &sender, now);
            if let Some(last_done) = shared.all_done_sending() {
                let expected = shared.sum(|w| w.expected.load(Relaxed));
                let received = shared.sum(|w| w.received.load(Relaxed));
                if received >= expected || now >= last_done + plan.grace_ns {
                    break;
                }
            }
            self.turn(clock, sender.next_due(), &mut sink, &mut sender, topo)?;
        }
        Ok(LoadOutcome {
            counters: sink.c,
            latency: sink.latency,
            send_lag: sender.send_lag,
            last_measured_send_ns: sender.last_measured_send_ns,
            recovery: stats::latency_histogram(),
            by_kind: KindLatency::new(),
            // --shape is refused with a Redis target (cli.rs).
            by_shape: ShapeStats::new(0),
        })
    }

    /// Readies a load step: this worker's schedule, the message body, and fresh sequence
    /// numbers and order trackers for its users.
    fn start_load(&mut self, topo: &Topology, plan: &StepPlan) -> Sender {
        self.body = vec![b'.'; plan.size];
        for u in self.users.iter_mut() {
            u.seq = 0;
            u.trackers =
                vec![OrderTracker::default(); topo.size_of_room_of(u.id as usize) as usize];
        }
        Sender {
            sched: Schedule::for_worker(
                plan.start_ns,
                plan.end_ns,
                plan.rate,
                self.index,
                self.users.len(),
                topo.users(),
            ),
            next: 0,
            plan: *plan,
            last_measured_send_ns: 0,
            send_lag: stats::latency_histogram(),
        }
    }

    /// Queues every message that is due (late ones at once, stamped with their intended
    /// time), then writes each connection that has something queued. Gives up the rest of
    /// the schedule when it is hopelessly behind.
    fn send_due(&mut self, s: &mut Sender, c: &mut Counters, topo: &Topology, clock: &Clock) {
        let n_users = self.users.len() as u64;
        let now = clock.now_ns();
        while s.next < s.sched.len() && n_users > 0 {
            let due = s.sched.due(s.next);
            if due > now {
                break;
            }
            if now > s.plan.end_ns + s.plan.give_up_ns {
                c.unsent += s.sched.len() - s.next;
                s.next = s.sched.len();
                break;
            }
            let i = (s.next % n_users) as usize;
            s.next += 1;
            let user = &mut self.users[i];
            let stamp = Stamp {
                sender: user.id,
                seq: user.seq,
                intended_ns: due,
            };
            let queued = stamp
                .encode(&mut self.body)
                .is_some_and(|body| user.link.publish(&user.channel, body.as_bytes()));
            if !queued {
                // Not queued, so not expected; the seq is reused so receivers see no gap.
                c.send_failed += 1;
                continue;
            }
            user.seq = user.seq.wrapping_add(1);
            c.sent += 1;
            stats::record(&mut s.send_lag, now - due);
            if (s.plan.measure_from_ns..s.plan.end_ns).contains(&due) {
                c.sent_measured += 1;
                c.expected += u64::from(topo.size_of_room_of(user.id as usize));
                s.last_measured_send_ns = now;
            }
            if !user.dirty {
                user.dirty = true;
                self.dirty.push(i);
            }
        }
        if n_users == 0 {
            s.next = s.sched.len();
        }
        for i in self.dirty.drain(..) {
            let user = &mut self.users[i];
            user.dirty = false;
            if !user.link.flush() && !user.counted_closed {
                user.counted_closed = true;
                c.timed_out += 1;
            }
        }
    }

    /// Waits for readiness until `wake_ns` (a precise wake-up with the timer), at most
    /// [`MAX_POLL_WAIT`], not at all if connections are left to read; then writes and reads
    /// every ready connection, looking at the schedule now and then.
    fn turn(
        &mut self,
        clock: &Clock,
        wake_ns: Option<u64>,
        sink: &mut Sink<'_>,
        sender: &mut Sender,
        topo: &Topology,
    ) -> io::Result<()> {
        let mut ready = std::mem::take(&mut self.ready);
        self.readiness
            .wait(clock, wake_ns, self.users.len(), &mut ready)?;
        for (k, &i) in ready.iter().enumerate() {
            if !self.visit(i, clock, sink) {
                self.readiness.defer(i);
            }
            if k % READS_BETWEEN_SENDS == READS_BETWEEN_SENDS - 1 {
                self.send_due(sender, &mut sink.c, topo, clock);
            }
        }
        self.ready = ready;
        Ok(())
    }

    /// Writes what user `i` has queued, then reads its connection until it would block
    /// (true) or for a bounded number of reads (false: visit it again soon).
    fn visit(&mut self, i: usize, clock: &Clock, sink: &mut Sink<'_>) -> bool {
        let Some(user) = self.users.get_mut(i) else {
            return true;
        };
        let RedisUser {
            id: _,
            room,
            channel,
            link,
            trackers,
            counted_closed,
            ..
        } = user;
        if link.has_output() {
            link.flush();
        }
        let mut drained = false;
        for _ in 0..MAX_READS_PER_VISIT {
            let now = clock.now_ns();
            let got = link.read(|f| sink.frame(f, *room, channel, trackers, now));
            if let Got::Bytes { .. } = got {
                sink.note_read(now);
            }
            if let Got::Bytes { drained: true } | Got::Drained | Got::Closed = got {
                drained = true;
                break;
            }
        }
        if link.closed && !*counted_closed {
            *counted_closed = true;
            sink.c.timed_out += 1;
        }
        drained
    }
}

/// Stores what the progress printer and the other workers read.
fn publish(me: &Published, sink: &Sink<'_>, sender: &Sender, now: u64) {
    me.sent.store(sink.c.sent, Relaxed);
    me.expected.store(sink.c.expected, Relaxed);
    me.received.store(sink.c.received, Relaxed);
    me.delivered.store(sink.c.events, Relaxed);
    me.missing.store(sink.missing, Relaxed);
    if sender.next >= sender.sched.len() && !me.done_sending.load(Relaxed) {
        me.done_at_ns.store(now, Relaxed);
        // Release: whoever sees the flag also sees the counters stored above.
        me.done_sending.store(true, Release);
    }
}

/// The sending half of a load step.
struct Sender {
    sched: Schedule,
    next: u64,
    plan: StepPlan,
    last_measured_send_ns: u64,
    send_lag: Histogram<u64>,
}

impl Sender {
    fn next_due(&self) -> Option<u64> {
        (self.next < self.sched.len()).then(|| self.sched.due(self.next))
    }
}

/// Counts and times deliveries during a load step.
struct Sink<'a> {
    topo: &'a Topology,
    plan: StepPlan,
    c: Counters,
    missing: i64,
    latency: Histogram<u64>,
    interval: Histogram<u64>,
}

impl<'a> Sink<'a> {
    fn new(topo: &'a Topology, plan: &StepPlan) -> Sink<'a> {
        Sink {
            topo,
            plan: *plan,
            c: Counters::default(),
            missing: 0,
            latency: stats::latency_histogram(),
            interval: stats::latency_histogram(),
        }
    }

    /// Hands the latency of the last moment to the progress printer, and starts afresh.
    fn flush_interval(&mut self, to: &Mutex<Histogram<u64>>) {
        if let Ok(mut h) = to.lock() {
            let _ = h.add(&self.interval);
        }
        self.interval.reset();
    }

    /// A read that brought bytes: the report's "datagrams" of a Redis run.
    fn note_read(&mut self, now_ns: u64) {
        self.c.datagrams += 1;
        if (self.plan.measure_from_ns..self.plan.end_ns).contains(&now_ns) {
            self.c.window_datagrams += 1;
        }
    }

    /// One frame from Redis on the connection of a member of `room` subscribed to
    /// `channel`: a message push is a delivery; PUBLISH's answers (the number of
    /// subscribers reached) and subscription notices are not counted; an error answer
    /// is a PUBLISH Redis refused.
    fn frame(
        &mut self,
        f: Frame<'_>,
        room: u32,
        channel: &[u8],
        trackers: &mut [OrderTracker],
        now_ns: u64,
    ) {
        match f {
            Frame::Push(p) => {
                let mut it = p.iter();
                match (it.next(), it.next(), it.next(), it.next()) {
                    (
                        Some(Frame::Blob(b"message")),
                        Some(Frame::Blob(ch)),
                        Some(Frame::Blob(body)),
                        None,
                    ) => {
                        self.c.events += 1;
                        if (self.plan.measure_from_ns..self.plan.end_ns).contains(&now_ns) {
                            self.c.window_events += 1;
                        }
                        if ch == channel {
                            self.message(room, trackers, body, now_ns);
                        } else {
                            self.c.foreign += 1;
                        }
                    }
                    (Some(Frame::Blob(b"message")), ..) => self.c.malformed += 1,
                    _ => {}
                }
            }
            Frame::Error(_) => self.c.send_failed += 1,
            _ => {}
        }
    }

    /// A message on the member's channel: its stamp says who sent it, which of theirs it
    /// is and when it was meant to leave (as `LoadSink::message` in the OCM worker).
    fn message(&mut self, room: u32, trackers: &mut [OrderTracker], body: &[u8], now_ns: u64) {
        let Some(st) = Stamp::decode(body) else {
            self.c.foreign += 1;
            return;
        };
        let sender = st.sender as usize;
        if self.topo.room_of.get(sender) != Some(&room) {
            self.c.foreign += 1;
            return;
        }
        if st.intended_ns < self.plan.start_ns {
            self.c.stale += 1;
            return;
        }
        let pos = self.topo.pos_in_room[sender] as usize;
        let Some(tracker) = trackers.get_mut(pos) else {
            self.c.foreign += 1;
            return;
        };
        match tracker.observe(u64::from(st.seq)) {
            Arrival::InOrder => {}
            Arrival::Gap(n) => self.missing += n as i64,
            Arrival::Late | Arrival::TooOld => {
                self.c.out_of_order += 1;
                self.missing -= 1;
            }
            Arrival::Duplicate => {
                self.c.duplicates += 1;
                return;
            }
        }
        let lat = now_ns.saturating_sub(st.intended_ns);
        if self.c.events % INTERVAL_SAMPLE == 0 {
            stats::record(&mut self.interval, lat);
        }
        if (self.plan.measure_from_ns..self.plan.end_ns).contains(&st.intended_ns) {
            self.c.received += 1;
            stats::record(&mut self.latency, lat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::resp;

    const PLAN: StepPlan = StepPlan {
        rate: 100.0,
        start_ns: 1_000,
        measure_from_ns: 2_000,
        end_ns: 10_000,
        grace_ns: 0,
        give_up_ns: 0,
        size: 64,
    };

    /// The push Redis sends a subscriber of `channel` for `body`.
    fn push(channel: &[u8], body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        resp::command(&mut v, &[b"message", channel, body]);
        v[0] = b'>';
        v
    }

    fn stamped(sender: u32, seq: u32, intended_ns: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        Stamp {
            sender,
            seq,
            intended_ns,
        }
        .encode(&mut b)
        .unwrap();
        b
    }

    /// Hands `bytes` (one frame) to the sink as member of room 0 on `b"ch"` at `now`.
    fn feed(sink: &mut Sink<'_>, trackers: &mut [OrderTracker], bytes: &[u8], now: u64) {
        let (f, used) = resp::parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        sink.frame(f, 0, b"ch", trackers, now);
    }

    #[test]
    fn deliveries_are_timed_checked_and_counted_like_the_ocm_workers() {
        // 4 users in 2 rooms: room 0 holds users 0 and 2 (positions 0 and 1).
        let topo = Topology::new(4, 2);
        let mut sink = Sink::new(&topo, &PLAN);
        let mut trackers = vec![OrderTracker::default(); 2];
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(2, 0, 3_000)),
            5_000,
        );
        assert_eq!((sink.c.events, sink.c.received), (1, 1));
        assert_eq!(sink.latency.len(), 1);
        assert!(sink.latency.equivalent(sink.latency.max(), 2_000));
        // The same again: a duplicate; then one after a gap of one, then the late one.
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(2, 0, 3_000)),
            5_000,
        );
        assert_eq!(sink.c.duplicates, 1);
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(2, 2, 4_000)),
            5_000,
        );
        assert_eq!(sink.missing, 1);
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(2, 1, 3_500)),
            5_000,
        );
        assert_eq!((sink.missing, sink.c.out_of_order), (0, 1));
        assert_eq!(sink.c.received, 3);
        // Warmup: counted as an event, not measured.
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(0, 0, 1_500)),
            5_000,
        );
        assert_eq!((sink.c.events, sink.c.received), (5, 3));
        // An earlier step's message is stale.
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(0, 1, 500)),
            5_000,
        );
        assert_eq!(sink.c.stale, 1);
    }

    #[test]
    fn what_is_not_ours_is_counted_not_measured() {
        let topo = Topology::new(4, 2);
        let mut sink = Sink::new(&topo, &PLAN);
        let mut trackers = vec![OrderTracker::default(); 2];
        // Another channel, a sender of another room, a body without a stamp.
        feed(
            &mut sink,
            &mut trackers,
            &push(b"other", &stamped(2, 0, 3_000)),
            5_000,
        );
        feed(
            &mut sink,
            &mut trackers,
            &push(b"ch", &stamped(1, 0, 3_000)),
            5_000,
        );
        feed(&mut sink, &mut trackers, &push(b"ch", b"hello"), 5_000);
        assert_eq!((sink.c.foreign, sink.c.received), (3, 0));
        // A message push of the wrong shape is malformed.
        feed(
            &mut sink,
            &mut trackers,
            b">2\r\n$7\r\nmessage\r\n$2\r\nch\r\n",
            5_000,
        );
        assert_eq!(sink.c.malformed, 1);
        // PUBLISH's answer and a subscription notice are neither; an error is a refused send.
        feed(&mut sink, &mut trackers, b":25\r\n", 5_000);
        feed(
            &mut sink,
            &mut trackers,
            b">3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n",
            5_000,
        );
        assert_eq!(
            (sink.c.events, sink.c.malformed, sink.c.send_failed),
            (3, 1, 0)
        );
        feed(&mut sink, &mut trackers, b"-OOM no\r\n", 5_000);
        assert_eq!(sink.c.send_failed, 1);
        assert!(sink.latency.is_empty());
    }
}
