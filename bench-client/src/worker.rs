//! A worker thread: it owns a slice of the users (their sockets and state) and does both
//! their sending and their receiving in one mio loop, so no data moves between threads
//! while the load runs. Two phases: [`Worker::bind`] (heartbeats until JOINED is seen)
//! and [`Worker::load`] (the open-loop schedule).

use std::collections::HashSet;
use std::io;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use ocm::client::Membership;
use ocm::protocol::MAX_DATAGRAM;
use ocm::protocol::datagram::ChatDatagram;
use ocm::protocol::event::{self, Event, EventKind};

use crate::body::Stamp;
use crate::order::{Arrival, OrderTracker};
use crate::schedule::Schedule;
use crate::stats::{self, Counters, Published, Shared};
use crate::sys::{MAX_POLL_WAIT, Timer};
use crate::topology::{Clock, Topology};
use ocm::sys::socket;
use ocm::sys::udp::{RECV_BATCH, Receiver};

const TIMER: Token = Token(usize::MAX - 1);
/// How often heartbeats are checked for (each user sends one only when due).
const HEARTBEAT_CHECK_NS: u64 = 100_000_000;
/// How often the latency of the last moment is handed to the progress printer.
const FLUSH_NS: u64 = 100_000_000;
/// One delivery in this many feeds the progress line's p99 (it needs no more, and every
/// histogram record costs on the hot path).
const INTERVAL_SAMPLE: u64 = 4;
/// How often a user that has not seen its own JOINED sends another heartbeat.
const BIND_RETRY_NS: u64 = 500_000_000;
/// Datagram batches read from one socket per readiness before moving on to the others
/// (the socket is revisited at once, so none is left behind).
const MAX_BATCHES_PER_VISIT: usize = 8;

/// One simulated user: a member of one room with its own UDP socket.
pub struct User {
    /// Global user id (also the sender id in message stamps).
    pub id: u32,
    /// Room index in the topology.
    pub room: u32,
    /// What CREATE or JOIN gave us.
    pub membership: Membership,
    /// The socket, connected to the data-plane address.
    sock: UdpSocket,
    /// Its local port (for the kernel's drop counters).
    pub local_port: u16,
    last_send_ns: u64,
    seq: u32,
    joined: bool,
    seen: HashSet<String>,
    trackers: Vec<OrderTracker>,
}

impl User {
    /// A user with a fresh socket connected to `membership.udp_addr`.
    pub fn new(id: u32, room: u32, membership: Membership, rcvbuf: usize) -> io::Result<User> {
        let any: std::net::SocketAddr = if membership.udp_addr.is_ipv4() {
            "0.0.0.0:0".parse().map_err(io::Error::other)?
        } else {
            "[::]:0".parse().map_err(io::Error::other)?
        };
        let std_sock = std::net::UdpSocket::bind(any)?;
        std_sock.connect(membership.udp_addr)?;
        std_sock.set_nonblocking(true)?;
        if rcvbuf > 0 {
            // Best effort: the size in force is reported, and drops are counted anyway.
            let _ = socket::set_recv_buffer(&std_sock, rcvbuf);
        }
        let local_port = std_sock.local_addr()?.port();
        Ok(User {
            id,
            room,
            membership,
            sock: UdpSocket::from_std(std_sock),
            local_port,
            last_send_ns: 0,
            seq: 0,
            joined: false,
            seen: HashSet::new(),
            trackers: Vec::new(),
        })
    }

    /// The socket's receive buffer size as the kernel reports it.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        socket::recv_buffer(&self.sock)
    }

    fn send(&mut self, out: &mut [u8], message: &str, now_ns: u64) -> io::Result<()> {
        let d = ChatDatagram {
            room: self.membership.room.as_bytes(),
            token: &self.membership.token,
            message,
        };
        let n = d
            .encode(out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.sock.send(&out[..n])?;
        self.last_send_ns = now_ns;
        Ok(())
    }
}

/// Which users bind in a bind stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindStage {
    /// The hosts first, so that each sees the JOINED of every member after it.
    Hosts,
    /// Everyone else.
    Members,
}

/// One load step, the same for every worker.
#[derive(Debug, Clone, Copy)]
pub struct StepPlan {
    /// Aggregate rate, messages/s.
    pub rate: f64,
    /// First intended send time of the step (ns on the run clock).
    pub start_ns: u64,
    /// Messages intended from here on are measured...
    pub measure_from_ns: u64,
    /// ...up to here, where the schedule ends.
    pub end_ns: u64,
    /// How long to wait for deliveries in flight after the last send.
    pub grace_ns: u64,
    /// Sends still due this long after `end_ns` are given up (counted as unsent).
    pub give_up_ns: u64,
    /// Message size in bytes.
    pub size: usize,
}

/// What a worker measured in one load step.
pub struct LoadOutcome {
    /// Its counters.
    pub counters: Counters,
    /// Latency of measured deliveries, ns from intended send time to receipt.
    pub latency: Histogram<u64>,
    /// How late sends left, ns after their intended time (the bench's own lag).
    pub send_lag: Histogram<u64>,
    /// When its last measured message actually left (ns on the run clock).
    pub last_measured_send_ns: u64,
}

/// Receives what a user's socket delivers.
trait Sink {
    fn datagram(&mut self, user: &mut User, data: &[u8], cut: bool, now_ns: u64);
    fn recv_error(&mut self);
}

/// A worker's users, poll and buffers.
pub struct Worker {
    /// Index of this worker.
    pub index: usize,
    /// The users it owns.
    pub users: Vec<User>,
    poll: Poll,
    events: Events,
    timer: Option<Timer>,
    batch: Receiver,
    out: Vec<u8>,
    body: Vec<u8>,
    pending: Vec<usize>,
    ready: Vec<usize>,
}

impl Worker {
    /// A worker owning `users`; registers their sockets.
    pub fn new(index: usize, mut users: Vec<User>) -> io::Result<Worker> {
        let poll = Poll::new()?;
        for (i, u) in users.iter_mut().enumerate() {
            poll.registry()
                .register(&mut u.sock, Token(i), Interest::READABLE)?;
        }
        let timer = Timer::new().ok();
        #[cfg(target_os = "linux")]
        if let Some(t) = &timer {
            poll.registry().register(
                &mut mio::unix::SourceFd(&t.raw_fd()),
                TIMER,
                Interest::READABLE,
            )?;
        }
        Ok(Worker {
            index,
            users,
            poll,
            events: Events::with_capacity(1024),
            timer,
            batch: Receiver::new(false),
            out: vec![0; MAX_DATAGRAM],
            body: Vec::new(),
            pending: Vec::new(),
            ready: Vec::new(),
        })
    }

    /// Waits for readiness until `wake_ns` (a precise wake-up with the timer), at most
    /// [`MAX_POLL_WAIT`], not at all if sockets are left to read; then reads every ready
    /// socket into `sink`, calling `between` now and then so sends are not held up.
    fn turn<S: Sink>(
        &mut self,
        clock: &Clock,
        wake_ns: Option<u64>,
        sink: &mut S,
        mut between: impl FnMut(&mut Self, &mut S),
    ) -> io::Result<()> {
        let now = clock.now_ns();
        let mut wait = MAX_POLL_WAIT;
        if let Some(w) = wake_ns {
            let left = Duration::from_nanos(w.saturating_sub(now));
            if left < wait {
                match &self.timer {
                    Some(t) if !left.is_zero() => t.arm(left)?,
                    _ => wait = left,
                }
            }
        }
        if !self.pending.is_empty() {
            wait = Duration::ZERO;
        }
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        // Sockets left unread last time come first; `ready` keeps its allocation.
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        ready.append(&mut self.pending);
        for ev in self.events.iter() {
            match ev.token() {
                TIMER => {
                    if let Some(t) = &self.timer {
                        t.ack();
                    }
                }
                Token(i) if i < self.users.len() => ready.push(i),
                _ => {}
            }
        }
        ready.sort_unstable();
        ready.dedup();
        for (k, &i) in ready.iter().enumerate() {
            if !self.read_socket(i, clock, sink) {
                self.pending.push(i);
            }
            if k % 16 == 15 {
                between(self, sink);
            }
        }
        self.ready = ready;
        Ok(())
    }

    /// Reads socket `i` until it would block (true) or for a bounded number of batches
    /// (false: read it again soon).
    fn read_socket<S: Sink>(&mut self, i: usize, clock: &Clock, sink: &mut S) -> bool {
        let Some(user) = self.users.get_mut(i) else {
            return true;
        };
        for _ in 0..MAX_BATCHES_PER_VISIT {
            match self.batch.recv(&user.sock) {
                Ok(n) => {
                    let now = clock.now_ns();
                    for k in 0..n {
                        if let Some((_, _, data)) = self.batch.get(k) {
                            // A datagram longer than any OCM server sends reads one byte
                            // over the limit: report it cut, at the limit.
                            let cut = data.len() > MAX_DATAGRAM;
                            sink.datagram(user, &data[..data.len().min(MAX_DATAGRAM)], cut, now);
                        }
                    }
                    if n < RECV_BATCH {
                        // recvmmsg stopped because the queue was empty; a datagram that
                        // arrives later raises a new readiness event.
                        return true;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    sink.recv_error();
                    return true;
                }
            }
        }
        false
    }

    /// Binds the users of `stage`: each sends a heartbeat (again every 500 ms until it sees
    /// its own JOINED); hosts count the JOINED of their members. Returns when every worker's
    /// counts reach the targets (see [`bind_done`]) or at `deadline_ns`.
    pub fn bind(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        stage: BindStage,
        deadline_ns: u64,
    ) -> io::Result<()> {
        let me = &shared.workers[self.index];
        let mut sink = BindSink {
            own_joined: me.own_joined.load(Relaxed),
            host_seen: me.host_seen.load(Relaxed),
        };
        let mut next_retry = 0u64;
        loop {
            let now = clock.now_ns();
            if now >= next_retry {
                for u in self.users.iter_mut() {
                    let in_stage = topo.is_host(u.id as usize) == (stage == BindStage::Hosts);
                    if in_stage && !u.joined {
                        // A lost heartbeat is retried; an error here is retried too.
                        let _ = u.send(&mut self.out, "", now);
                    }
                }
                next_retry = now + BIND_RETRY_NS;
            }
            me.own_joined.store(sink.own_joined, Relaxed);
            me.host_seen.store(sink.host_seen, Relaxed);
            if bind_done(shared, topo, stage) || now >= deadline_ns {
                return Ok(());
            }
            self.turn(
                clock,
                Some(next_retry.min(deadline_ns)),
                &mut sink,
                |_, _| {},
            )?;
        }
    }

    /// Runs one load step: sends this worker's share of the schedule, reads everything,
    /// and returns once every worker has sent its share and either every expected delivery
    /// arrived or the grace period after the last send is over.
    pub fn load(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &StepPlan,
        heartbeat_ns: u64,
    ) -> io::Result<LoadOutcome> {
        let me = &shared.workers[self.index];
        let sched = Schedule::for_worker(
            plan.start_ns,
            plan.end_ns,
            plan.rate,
            self.index,
            self.users.len(),
            topo.users(),
        );
        self.body = vec![b'.'; plan.size];
        for u in self.users.iter_mut() {
            u.seq = 0;
            u.trackers =
                vec![OrderTracker::default(); topo.size_of_room_of(u.id as usize) as usize];
        }
        let mut sink = LoadSink::new(topo, plan);
        let mut sender = Sender {
            sched,
            next: 0,
            plan: *plan,
            last_measured_send_ns: 0,
            send_lag: stats::latency_histogram(),
        };
        let mut next_hb = 0u64;
        let mut next_flush = 0u64;
        loop {
            let now = clock.now_ns();
            sender.send_due(self, &mut sink.c, topo, clock);
            if now >= next_hb {
                for u in self.users.iter_mut() {
                    if now.saturating_sub(u.last_send_ns) >= heartbeat_ns
                        && u.send(&mut self.out, "", now).is_ok()
                    {
                        sink.c.heartbeats += 1;
                    }
                }
                next_hb = now + HEARTBEAT_CHECK_NS;
            }
            if now >= next_flush {
                if let Ok(mut h) = shared.interval[self.index].lock() {
                    let _ = h.add(&sink.interval);
                }
                sink.interval.reset();
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
            let wake = sender.next_due();
            self.turn(clock, wake, &mut sink, |w, s| {
                sender.send_due(w, &mut s.c, topo, clock)
            })?;
        }
        Ok(LoadOutcome {
            counters: sink.c,
            latency: sink.latency,
            send_lag: sender.send_lag,
            last_measured_send_ns: sender.last_measured_send_ns,
        })
    }
}

/// Whether the bind targets of `stage` are reached: every host saw its own JOINED; for
/// members, every user saw its own JOINED and the hosts saw the JOINED of every member.
pub fn bind_done(shared: &Shared, topo: &Topology, stage: BindStage) -> bool {
    let own = shared.sum(|w| w.own_joined.load(Relaxed));
    let seen = shared.sum(|w| w.host_seen.load(Relaxed));
    match stage {
        BindStage::Hosts => own >= topo.rooms() as u64,
        BindStage::Members => own >= topo.users() as u64 && seen >= topo.users() as u64,
    }
}

fn publish(me: &Published, sink: &LoadSink, sender: &Sender, now: u64) {
    me.sent.store(sink.c.sent, Relaxed);
    me.expected.store(sink.c.expected, Relaxed);
    me.received.store(sink.c.received, Relaxed);
    me.delivered.store(sink.c.events, Relaxed);
    me.missing.store(sink.missing, Relaxed);
    if sender.next >= sender.sched.len() && !me.done_sending.load(Relaxed) {
        me.done_at_ns.store(now, Relaxed);
        // Release: whoever sees the flag also sees the counters stored above.
        me.done_sending
            .store(true, std::sync::atomic::Ordering::Release);
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

    /// Sends every message that is due (late ones at once, stamped with their intended
    /// time). Gives up the rest of the schedule when it is hopelessly behind.
    fn send_due(&mut self, w: &mut Worker, c: &mut Counters, topo: &Topology, clock: &Clock) {
        let n_users = w.users.len() as u64;
        if n_users == 0 {
            self.next = self.sched.len();
            return;
        }
        while self.next < self.sched.len() {
            let due = self.sched.due(self.next);
            let now = clock.now_ns();
            if due > now {
                return;
            }
            if now > self.plan.end_ns + self.plan.give_up_ns {
                c.unsent += self.sched.len() - self.next;
                self.next = self.sched.len();
                return;
            }
            let user = &mut w.users[(self.next % n_users) as usize];
            self.next += 1;
            let stamp = Stamp {
                sender: user.id,
                seq: user.seq,
                intended_ns: due,
            };
            let Some(body) = stamp.encode(&mut w.body) else {
                c.send_failed += 1;
                continue;
            };
            match user.send(&mut w.out, body, now) {
                Ok(()) => {
                    user.seq = user.seq.wrapping_add(1);
                    c.sent += 1;
                    stats::record(&mut self.send_lag, now - due);
                    if (self.plan.measure_from_ns..self.plan.end_ns).contains(&due) {
                        c.sent_measured += 1;
                        c.expected += u64::from(topo.size_of_room_of(user.id as usize));
                        self.last_measured_send_ns = now;
                    }
                }
                // Not sent, so not expected; the seq is reused so receivers see no gap.
                Err(_) => c.send_failed += 1,
            }
        }
    }
}

/// Counts JOINED events during the bind phase.
struct BindSink {
    own_joined: u64,
    host_seen: u64,
}

impl Sink for BindSink {
    fn datagram(&mut self, user: &mut User, data: &[u8], _cut: bool, _now_ns: u64) {
        for ev in event::Events::new(data) {
            let Ok(ev) = ev else { break };
            if ev.known_kind() != Some(EventKind::Joined) {
                continue;
            }
            if ev.user == user.membership.user && !user.joined {
                user.joined = true;
                self.own_joined += 1;
            }
            if user.membership.host && user.seen.insert(ev.user.to_string()) {
                self.host_seen += 1;
            }
        }
    }

    fn recv_error(&mut self) {}
}

/// Counts and times deliveries during a load step.
struct LoadSink<'a> {
    topo: &'a Topology,
    plan: StepPlan,
    c: Counters,
    missing: i64,
    latency: Histogram<u64>,
    interval: Histogram<u64>,
}

impl<'a> LoadSink<'a> {
    fn new(topo: &'a Topology, plan: &StepPlan) -> Self {
        LoadSink {
            topo,
            plan: *plan,
            c: Counters::default(),
            missing: 0,
            latency: stats::latency_histogram(),
            interval: stats::latency_histogram(),
        }
    }

    fn message(&mut self, user: &mut User, ev: &Event<'_>, now_ns: u64) {
        let Some(st) = Stamp::decode(ev.body.as_bytes()) else {
            self.c.foreign += 1;
            return;
        };
        let sender = st.sender as usize;
        if self.topo.room_of.get(sender) != Some(&user.room) {
            self.c.foreign += 1;
            return;
        }
        if st.intended_ns < self.plan.start_ns {
            self.c.stale += 1;
            return;
        }
        let pos = self.topo.pos_in_room[sender] as usize;
        let Some(tracker) = user.trackers.get_mut(pos) else {
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

impl Sink for LoadSink<'_> {
    fn datagram(&mut self, user: &mut User, data: &[u8], cut: bool, now_ns: u64) {
        self.c.datagrams += 1;
        let in_window = (self.plan.measure_from_ns..self.plan.end_ns).contains(&now_ns);
        if in_window {
            self.c.window_datagrams += 1;
        }
        if cut {
            self.c.malformed += 1;
        }
        for ev in event::Events::new(data) {
            let Ok(ev) = ev else {
                self.c.malformed += 1;
                break;
            };
            match ev.known_kind() {
                Some(EventKind::Message) => {
                    self.c.events += 1;
                    if in_window {
                        self.c.window_events += 1;
                    }
                    self.message(user, &ev, now_ns);
                }
                Some(EventKind::Joined) => self.c.joined += 1,
                Some(EventKind::Left) => self.c.left += 1,
                Some(EventKind::TimedOut) => self.c.timed_out += 1,
                Some(EventKind::RoomClosed) => self.c.room_closed += 1,
                Some(EventKind::RateLimited) => self.c.rate_limited += 1,
                // v1.1 notices: this worker speaks v1 for now.
                Some(EventKind::Gone | EventKind::Sync | EventKind::Resumed) | None => {}
            }
        }
    }

    fn recv_error(&mut self) {
        self.c.recv_errors += 1;
    }
}
