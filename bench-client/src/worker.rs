//! A worker thread: it owns a slice of the users (their sockets and state) and does both
//! their sending and their receiving in one mio loop, so no data moves between threads
//! while the load runs. Two phases: [`Worker::bind`] (heartbeats until JOINED is seen)
//! and [`Worker::load`] (the open-loop schedule).

use std::collections::HashSet;
use std::io;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;

use hdrhistogram::Histogram;
use mio::Token;
use mio::net::UdpSocket;
use ocm::client::Membership;
use ocm::protocol::MAX_DATAGRAM;
use ocm::protocol::control::{CONTROL_HEADER_LEN, ControlBody, ControlDatagram};
use ocm::protocol::datagram::ChatDatagram;
use ocm::protocol::event::{EventKind, Gone, RawEvent, RawEvents, SyncInfo};

use crate::body::Stamp;
use crate::gaps::{GapCounts, GapTracker, Seen};
use crate::loss::LossFilter;
use crate::order::{Arrival, OrderTracker};
use crate::readiness::Readiness;
use crate::schedule::Schedule;
use crate::stats::{self, Counters, Published, ShapeCounts, ShapeStats, Shared};
use crate::topology::{Clock, Topology};
use crate::web::{self, KindLatency, Link, WebLink};
use ocm::sys::socket;
use ocm::sys::udp::{RECV_BATCH, Receiver};

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
/// After every worker has sent its share, how long before users start asking SYNC: past
/// the server's 50 ms tail notice, which finds most lost tails by itself.
const DRAIN_SYNC_AFTER_NS: u64 = 100_000_000;
/// While a step drains, each user asks SYNC this often: a tail whose last datagram and
/// tail notice were both lost is otherwise found only at the next heartbeat (seconds away,
/// past the grace period). A person's client waits for that heartbeat; the bench cannot.
const DRAIN_SYNC_EVERY_NS: u64 = 100_000_000;
/// Largest NACK datagram: header, the longest room name and token, FromSeq and Count.
const NACK_BUF: usize = CONTROL_HEADER_LEN + 255 + 255 + 6;

/// Which protocol path the bench speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Version 1: plain chat datagrams, empty heartbeats, gaps only counted.
    V1,
    /// Version 1.1: SEND with ClientSeq, SYNC heartbeats, gaps recovered with NACK.
    V11,
}

impl Path {
    /// `v1` or `v1.1`.
    pub fn name(self) -> &'static str {
        match self {
            Path::V1 => "v1",
            Path::V11 => "v1.1",
        }
    }
}

/// One simulated user: a member of one room with its own UDP socket.
pub struct User {
    /// Global user id (also the sender id in message stamps).
    pub id: u32,
    /// Room index in the topology.
    pub room: u32,
    /// What CREATE or JOIN gave us.
    pub membership: Membership,
    /// Its socket connected to the data-plane address, or its WebSocket session.
    link: Link,
    /// Its local port (for the kernel's drop counters).
    pub local_port: u16,
    last_send_ns: u64,
    seq: u32,
    /// The ClientSeq of its next SEND (v1.1), from 1; never reused once relayed.
    client_seq: u32,
    joined: bool,
    /// Whether a SYNC of its was answered (v1.1 bind).
    synced: bool,
    seen: HashSet<String>,
    trackers: Vec<OrderTracker>,
    /// Its room's Seqs it has not received (v1.1), for the whole run.
    gaps: GapTracker,
}

impl User {
    /// A user with a fresh socket connected to `membership.udp_addr`, repeating unanswered
    /// NACKs first after `nack_retry_ns`.
    pub fn new(
        id: u32,
        room: u32,
        membership: Membership,
        rcvbuf: usize,
        nack_retry_ns: u64,
    ) -> io::Result<User> {
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
            link: Link::Udp(UdpSocket::from_std(std_sock)),
            local_port,
            last_send_ns: 0,
            seq: 0,
            client_seq: 1,
            joined: false,
            synced: false,
            seen: HashSet::new(),
            trackers: Vec::new(),
            gaps: GapTracker::with_retry(nack_retry_ns),
        })
    }

    /// A web user on its session `link` (see [`crate::web`]); no UDP socket.
    pub fn web(
        id: u32,
        room: u32,
        membership: Membership,
        link: WebLink,
        nack_retry_ns: u64,
    ) -> User {
        User {
            id,
            room,
            membership,
            link: Link::Web(Box::new(link)),
            local_port: 0,
            last_send_ns: 0,
            seq: 0,
            client_seq: 1,
            joined: false,
            synced: false,
            seen: HashSet::new(),
            trackers: Vec::new(),
            gaps: GapTracker::with_retry(nack_retry_ns),
        }
    }

    /// Whether it speaks over WebSocket.
    pub fn is_web(&self) -> bool {
        self.link.is_web()
    }

    /// The socket's receive buffer size as the kernel reports it.
    pub fn rcvbuf(&self) -> io::Result<usize> {
        match &self.link {
            Link::Udp(s) => socket::recv_buffer(s),
            Link::Web(_) => Err(io::ErrorKind::Unsupported.into()),
        }
    }

    /// A version 1 chat datagram (empty: a heartbeat).
    fn send_chat(&mut self, out: &mut [u8], message: &str, now_ns: u64) -> io::Result<()> {
        let d = ChatDatagram {
            room: self.membership.room.as_bytes(),
            token: &self.membership.token,
            message,
        };
        let n = d
            .encode(out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.link.send(&out[..n])?;
        self.last_send_ns = now_ns;
        Ok(())
    }

    /// A v1.1 control datagram.
    fn send_control(
        &mut self,
        out: &mut [u8],
        body: ControlBody<'_>,
        now_ns: u64,
    ) -> io::Result<()> {
        let n = encode_control(&self.membership, body, out)?;
        self.link.send(&out[..n])?;
        self.last_send_ns = now_ns;
        Ok(())
    }

    /// A chat message on `path`: a chat datagram, or a SEND with the next ClientSeq.
    fn send_message(
        &mut self,
        out: &mut [u8],
        message: &str,
        now_ns: u64,
        path: Path,
    ) -> io::Result<()> {
        match path {
            Path::V1 => self.send_chat(out, message, now_ns),
            Path::V11 => {
                let body = ControlBody::Send {
                    client_seq: self.client_seq,
                    message,
                };
                self.send_control(out, body, now_ns)?;
                // A SEND that did not leave was not relayed: its number may be used again.
                self.client_seq = self.client_seq.wrapping_add(1).max(1);
                Ok(())
            }
        }
    }

    /// A heartbeat on `path`: an empty chat datagram, or a SYNC.
    fn heartbeat(&mut self, out: &mut [u8], now_ns: u64, path: Path) -> io::Result<()> {
        match path {
            Path::V1 => self.send_chat(out, "", now_ns),
            Path::V11 => self.send_control(out, ControlBody::Sync, now_ns),
        }
    }

    /// Sends the NACKs its gap tracker says are due; returns how many left.
    fn send_nacks(&mut self, out: &mut [u8], now_ns: u64) -> u64 {
        let (membership, link, mut sent) = (&self.membership, &mut self.link, 0u64);
        self.gaps.poll_nacks(now_ns, |from_seq, count| {
            let body = ControlBody::Nack { from_seq, count };
            // A NACK that cannot leave now is repeated at the gap's next round.
            if let Ok(n) = encode_control(membership, body, out)
                && link.send(&out[..n]).is_ok()
            {
                sent += 1;
            }
        });
        if sent > 0 {
            self.last_send_ns = now_ns;
        }
        sent
    }
}

fn encode_control(m: &Membership, body: ControlBody<'_>, out: &mut [u8]) -> io::Result<usize> {
    ControlDatagram {
        room: m.room.as_bytes(),
        token: &m.token,
        body,
    }
    .encode(out)
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
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
    /// Recovery latency, ns from the moment a gap was seen to the arrival of an event that
    /// filled it after a NACK (any kind, warmup and drain included).
    pub recovery: Histogram<u64>,
    /// `--web`: latency of measured deliveries by the receiver's transport.
    pub by_kind: KindLatency,
    /// `--shape`: sends, deliveries and latency by the room's shape (empty without).
    pub by_shape: ShapeStats,
}

/// Receives what a user's socket delivers.
trait Sink {
    fn datagram(&mut self, user: &mut User, data: &[u8], cut: bool, now_ns: u64);
    fn recv_error(&mut self);
    /// The `--loss` filter dropped a datagram of `len` bytes.
    fn lost(&mut self, _len: usize) {}
}

/// A worker's users, poll and buffers.
pub struct Worker {
    /// Index of this worker.
    pub index: usize,
    /// The users it owns.
    pub users: Vec<User>,
    readiness: Readiness,
    batch: Receiver,
    out: Vec<u8>,
    body: Vec<u8>,
    ready: Vec<usize>,
    /// The protocol path of the run.
    path: Path,
    /// `--loss`, applied while a load step runs (binding loses nothing).
    loss: LossFilter,
    loss_on: bool,
    /// `--web`: one datagram read from a session.
    scratch: Vec<u8>,
    /// `--web`: web members of each room (empty: none), for the per-kind expected counts.
    pub web_in_room: Vec<u32>,
}

impl Worker {
    /// A worker owning `users` on `path`, dropping received datagrams with `loss` during
    /// load steps; registers their sockets.
    pub fn new(
        index: usize,
        mut users: Vec<User>,
        path: Path,
        loss: LossFilter,
    ) -> io::Result<Worker> {
        let readiness = Readiness::new()?;
        for (i, u) in users.iter_mut().enumerate() {
            u.link.register(readiness.registry(), Token(i))?;
        }
        Ok(Worker {
            index,
            users,
            readiness,
            batch: Receiver::new(false),
            out: vec![0; MAX_DATAGRAM],
            body: Vec::new(),
            ready: Vec::new(),
            path,
            loss,
            loss_on: false,
            scratch: Vec::new(),
            web_in_room: Vec::new(),
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
        let mut ready = std::mem::take(&mut self.ready);
        self.readiness
            .wait(clock, wake_ns, self.users.len(), &mut ready)?;
        for (k, &i) in ready.iter().enumerate() {
            if !self.read_socket(i, clock, sink) {
                self.readiness.defer(i);
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
        if user.is_web() {
            return self.read_web(i, clock, sink);
        }
        for _ in 0..MAX_BATCHES_PER_VISIT {
            let Link::Udp(sock) = &user.link else {
                return true;
            };
            match self.batch.recv(sock) {
                Ok(n) => {
                    let now = clock.now_ns();
                    for k in 0..n {
                        if let Some((_, _, data)) = self.batch.get(k) {
                            if self.loss_on && self.loss.drop_next() {
                                sink.lost(data.len());
                                continue;
                            }
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

    /// Reads web user `i`'s session (see [`web::read`]): the same sink, the same
    /// `--loss` filter, as a UDP user's datagrams.
    fn read_web<S: Sink>(&mut self, i: usize, clock: &Clock, sink: &mut S) -> bool {
        let Some(user) = self.users.get_mut(i) else {
            return true;
        };
        let (loss_on, loss) = (self.loss_on, &mut self.loss);
        let got = web::read(user, web_link, &mut self.scratch, |user, data| {
            if loss_on && loss.drop_next() {
                sink.lost(data.len());
                return;
            }
            sink.datagram(user, data, false, clock.now_ns());
        });
        got.unwrap_or_else(|_| {
            sink.recv_error();
            true
        })
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
            synced: me.synced.load(Relaxed),
            counts: GapCounts::default(),
        };
        self.loss_on = false;
        let mut next_retry = 0u64;
        loop {
            let now = clock.now_ns();
            if now >= next_retry {
                for u in self.users.iter_mut() {
                    let in_stage = topo.is_host(u.id as usize) == (stage == BindStage::Hosts);
                    if in_stage && !u.joined {
                        // A lost heartbeat is retried; an error here is retried too. On
                        // v1.1 a SYNC follows: it makes the member a v1.1 member, and its
                        // answer shows the server speaks v1.1 (an empty heartbeat first,
                        // so a version 1 server binds the member and the run can say why
                        // nothing else works).
                        let _ = u.send_chat(&mut self.out, "", now);
                        if self.path == Path::V11 {
                            let _ = u.send_control(&mut self.out, ControlBody::Sync, now);
                        }
                    }
                }
                next_retry = now + BIND_RETRY_NS;
            }
            me.own_joined.store(sink.own_joined, Relaxed);
            me.host_seen.store(sink.host_seen, Relaxed);
            me.synced.store(sink.synced, Relaxed);
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
    /// arrived or the grace period after the last send is over. On the v1.1 path it also
    /// NACKs the gaps it sees, and asks SYNC while the step drains.
    pub fn load(
        &mut self,
        clock: &Clock,
        topo: &Topology,
        shared: &Shared,
        plan: &StepPlan,
        heartbeat_ns: u64,
    ) -> io::Result<LoadOutcome> {
        let me = &shared.workers[self.index];
        let mut sender = self.start_load(topo, plan);
        let path = self.path;
        let mut sink = LoadSink::new(topo, plan, path);
        let mut next_hb = 0u64;
        let mut next_flush = 0u64;
        let mut next_drain_sync = 0u64;
        self.loss_on = self.loss.active();
        loop {
            let now = clock.now_ns();
            sender.send_due(self, &mut sink.c, topo, clock);
            if now >= next_hb {
                self.heartbeats_due(&mut sink, now, heartbeat_ns);
                next_hb = now + HEARTBEAT_CHECK_NS;
            }
            if path == Path::V11 && now >= sink.next_nack_ns {
                self.nack_scan(&mut sink, now);
            }
            if now >= next_flush {
                sink.flush_interval(&shared.interval[self.index]);
                next_flush = now + FLUSH_NS;
            }
            publish(me, &sink, &sender, now);
            if let Some(last_done) = shared.all_done_sending() {
                if drained(shared, now, last_done + plan.grace_ns) {
                    break;
                }
                if path == Path::V11
                    && now >= last_done + DRAIN_SYNC_AFTER_NS
                    && now >= next_drain_sync
                {
                    self.drain_syncs(&mut sink, now);
                    next_drain_sync = now + DRAIN_SYNC_EVERY_NS;
                }
            }
            let mut wake = sender.next_due();
            if path == Path::V11 && sink.next_nack_ns != u64::MAX {
                wake = Some(wake.map_or(sink.next_nack_ns, |w| w.min(sink.next_nack_ns)));
            }
            self.turn(clock, wake, &mut sink, |w, s| {
                sender.send_due(w, &mut s.c, topo, clock)
            })?;
        }
        self.loss_on = false;
        Ok(self.load_outcome(sink, sender))
    }

    /// Readies a load step: this worker's schedule, the message body, and fresh sequence
    /// numbers and order trackers for its users.
    fn start_load(&mut self, topo: &Topology, plan: &StepPlan) -> Sender {
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
        Sender {
            sched,
            next: 0,
            plan: *plan,
            last_measured_send_ns: 0,
            send_lag: stats::latency_histogram(),
            by_shape: vec![ShapeCounts::default(); topo.shapes.len()],
        }
    }

    /// Heartbeats every user that has sent nothing for `heartbeat_ns`.
    #[inline]
    fn heartbeats_due(&mut self, sink: &mut LoadSink<'_>, now: u64, heartbeat_ns: u64) {
        for u in self.users.iter_mut() {
            if now.saturating_sub(u.last_send_ns) >= heartbeat_ns
                && u.heartbeat(&mut self.out, now, self.path).is_ok()
            {
                sink.c.heartbeats += 1;
            }
        }
    }

    /// v1.1: NACKs every gap that is due, and notes when the next one will be.
    #[inline]
    fn nack_scan(&mut self, sink: &mut LoadSink<'_>, now: u64) {
        sink.next_nack_ns = u64::MAX;
        for u in self.users.iter_mut() {
            if u.gaps.open_gaps() == 0 {
                continue;
            }
            sink.c.nacks += u.send_nacks(&mut sink.nack_buf, now);
            if let Some(due) = u.gaps.next_due() {
                sink.next_nack_ns = sink.next_nack_ns.min(due);
            }
        }
    }

    /// v1.1: while the step drains, every user asks SYNC (by heartbeat), so that a lost
    /// tail shows up as a gap to NACK.
    #[inline]
    fn drain_syncs(&mut self, sink: &mut LoadSink<'_>, now: u64) {
        for u in self.users.iter_mut() {
            if u.heartbeat(&mut self.out, now, self.path).is_ok() {
                sink.c.drain_syncs += 1;
            }
        }
    }

    /// What the load step measured, with the gap tracker's totals.
    fn load_outcome(&self, mut sink: LoadSink<'_>, sender: Sender) -> LoadOutcome {
        sink.c.gaps = sink.counts.opened;
        sink.c.gone = sink.counts.gone;
        sink.c.abandoned = sink.counts.abandoned;
        sink.c.still_missing = self.users.iter().map(|u| u.gaps.missing()).sum();
        sink.by_shape.merge_latency_into(&mut sink.latency);
        for (a, b) in sink.by_shape.counts.iter_mut().zip(&sender.by_shape) {
            a.sent += b.sent;
            a.expected += b.expected;
        }
        LoadOutcome {
            counters: sink.c,
            latency: sink.latency,
            send_lag: sender.send_lag,
            last_measured_send_ns: sender.last_measured_send_ns,
            recovery: sink.recovery,
            by_kind: sink.by_kind,
            by_shape: sink.by_shape,
        }
    }
}

/// A web user's session.
fn web_link(user: &mut User) -> Option<&mut WebLink> {
    match &mut user.link {
        Link::Web(w) => Some(w),
        Link::Udp(_) => None,
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

/// Whether the load step is over: every expected delivery arrived (over all workers), or
/// `grace_end_ns` passed.
#[inline]
fn drained(shared: &Shared, now: u64, grace_end_ns: u64) -> bool {
    let expected = shared.sum(|w| w.expected.load(Relaxed));
    let received = shared.sum(|w| w.received.load(Relaxed));
    received >= expected || now >= grace_end_ns
}

fn publish(me: &Published, sink: &LoadSink, sender: &Sender, now: u64) {
    me.sent.store(sink.c.sent, Relaxed);
    me.expected.store(sink.c.expected, Relaxed);
    me.received.store(sink.c.received, Relaxed);
    me.delivered.store(sink.c.events, Relaxed);
    me.missing.store(sink.missing, Relaxed);
    me.recovered.store(sink.c.recovered, Relaxed);
    me.unrecovered
        .store(sink.counts.gone + sink.counts.abandoned, Relaxed);
    me.lost_datagrams.store(sink.c.lost_datagrams, Relaxed);
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
    /// `--shape`: measured sends by the sender's shape.
    by_shape: Vec<ShapeCounts>,
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
            match user.send_message(&mut w.out, body, now, w.path) {
                Ok(()) => {
                    user.seq = user.seq.wrapping_add(1);
                    c.sent += 1;
                    stats::record(&mut self.send_lag, now - due);
                    if (self.plan.measure_from_ns..self.plan.end_ns).contains(&due) {
                        c.sent_measured += 1;
                        c.expected += u64::from(topo.size_of_room_of(user.id as usize));
                        c.expected_web += w
                            .web_in_room
                            .get(user.room as usize)
                            .map_or(0, |&n| u64::from(n));
                        self.last_measured_send_ns = now;
                        if let Some(c) = topo
                            .shape_of(user.room)
                            .and_then(|i| self.by_shape.get_mut(i))
                        {
                            c.sent += 1;
                            c.expected += u64::from(topo.size_of_room_of(user.id as usize));
                        }
                    }
                }
                // Not sent, so not expected; the seq is reused so receivers see no gap.
                Err(_) => c.send_failed += 1,
            }
        }
    }
}

/// Counts JOINED events during the bind phase (and, on v1.1, SYNC answers); starts each
/// user's gap tracker at its first event, so that nothing from then on goes unseen.
struct BindSink {
    own_joined: u64,
    host_seen: u64,
    synced: u64,
    /// Gaps while binding are rare (nothing is dropped on purpose); they are NACKed in the
    /// first load step. Their counts are not a step's.
    counts: GapCounts,
}

impl Sink for BindSink {
    fn datagram(&mut self, user: &mut User, data: &[u8], _cut: bool, now_ns: u64) {
        for ev in RawEvents::new(data) {
            let Ok(ev) = ev else { break };
            match ev.known_kind() {
                Some(EventKind::Sync) => {
                    if let Ok(info) = SyncInfo::parse(ev.body) {
                        user.gaps.sync(info.last_seq, now_ns, &mut self.counts);
                    }
                    if ev.user == user.membership.user && !user.synced {
                        user.synced = true;
                        self.synced += 1;
                    }
                    continue;
                }
                Some(EventKind::Gone) => continue,
                _ => {}
            }
            if is_room_event(&ev) {
                user.gaps.event(ev.seq, now_ns, &mut self.counts);
            }
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

/// Whether `ev` is one of the room's sequence (Kinds 1-5, Seq > 0).
fn is_room_event(ev: &RawEvent<'_>) -> bool {
    matches!(ev.kind, 1..=5) && ev.seq != 0
}

/// Counts and times deliveries during a load step; on v1.1, tracks gaps and sends the
/// NACKs that are due at once.
struct LoadSink<'a> {
    topo: &'a Topology,
    plan: StepPlan,
    path: Path,
    c: Counters,
    missing: i64,
    latency: Histogram<u64>,
    interval: Histogram<u64>,
    /// Gap-from-seen-to-filled times of recovered events.
    recovery: Histogram<u64>,
    /// `--web`: `latency` by the receiver's transport.
    by_kind: KindLatency,
    /// `--shape`: deliveries and latency by shape; with shapes, a delivery's latency is
    /// recorded there only, and added into `latency` at the end.
    by_shape: ShapeStats,
    counts: GapCounts,
    /// When the next NACK of any user of this worker may be due (u64::MAX: none known).
    /// Early is harmless (a scan finds nothing due); it is never late.
    next_nack_ns: u64,
    nack_buf: Vec<u8>,
}

impl<'a> LoadSink<'a> {
    fn new(topo: &'a Topology, plan: &StepPlan, path: Path) -> Self {
        LoadSink {
            topo,
            plan: *plan,
            path,
            c: Counters::default(),
            missing: 0,
            latency: stats::latency_histogram(),
            interval: stats::latency_histogram(),
            recovery: stats::latency_histogram(),
            by_kind: KindLatency::new(),
            by_shape: ShapeStats::new(topo.shapes.len()),
            counts: GapCounts::default(),
            // Gaps left from binding or an earlier step are looked at once at the start.
            next_nack_ns: 0,
            nack_buf: vec![0; NACK_BUF],
        }
    }

    /// Hands the latency of the last moment to the progress printer, and starts afresh.
    #[inline]
    fn flush_interval(&mut self, to: &Mutex<Histogram<u64>>) {
        if let Ok(mut h) = to.lock() {
            let _ = h.add(&self.interval);
        }
        self.interval.reset();
    }

    /// v1.1: a GONE notice: the events it names will never come.
    #[inline]
    fn gone(&mut self, user: &mut User, body: &[u8]) {
        self.c.gone_events += 1;
        match Gone::parse(body) {
            Ok(g) => {
                user.gaps.gone(g.from_seq, g.count, &mut self.counts);
            }
            Err(_) => self.c.malformed += 1,
        }
    }

    /// v1.1: a SYNC answer: the room's latest Seq, which may reveal a lost tail.
    #[inline]
    fn sync(&mut self, user: &mut User, body: &[u8], now_ns: u64) {
        self.c.sync_events += 1;
        match SyncInfo::parse(body) {
            Ok(info) => user.gaps.sync(info.last_seq, now_ns, &mut self.counts),
            Err(_) => self.c.malformed += 1,
        }
    }

    /// Counts a delivered event by its kind (and measures it, if it is a message).
    #[inline]
    fn deliver(&mut self, user: &mut User, kind: Option<EventKind>, body: &[u8], now_ns: u64) {
        match kind {
            Some(EventKind::Message) => self.message(user, body, now_ns),
            Some(EventKind::Joined) => self.c.joined += 1,
            Some(EventKind::Left) => self.c.left += 1,
            Some(EventKind::TimedOut) => self.c.timed_out += 1,
            Some(EventKind::RoomClosed) => self.c.room_closed += 1,
            Some(EventKind::RateLimited) => self.c.rate_limited += 1,
            // v1.1 notices on the v1 path, RESUMED, and kinds this version does not
            // know: ignored, as a receiver must.
            Some(EventKind::Gone | EventKind::Sync | EventKind::Resumed) | None => {}
        }
    }

    /// v1.1: after a datagram, NACKs at once what is already due, and notes the next due.
    #[inline]
    fn nack_if_due(&mut self, user: &mut User, now_ns: u64) {
        if let Some(mut due) = user.gaps.next_due() {
            if due <= now_ns {
                // Three later events arrived (or the wait passed): NACK now, not at the
                // next scan.
                self.c.nacks += user.send_nacks(&mut self.nack_buf, now_ns);
                due = user.gaps.next_due().unwrap_or(u64::MAX);
            }
            self.next_nack_ns = self.next_nack_ns.min(due);
        }
    }

    fn message(&mut self, user: &mut User, body: &[u8], now_ns: u64) {
        let Some(st) = Stamp::decode(body) else {
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
            match self.topo.shape_of(user.room) {
                Some(shape) => self.by_shape.received(shape, lat),
                None => stats::record(&mut self.latency, lat),
            }
            self.c.received_web += u64::from(user.is_web());
            self.by_kind.record(user.is_web(), lat);
        }
    }

    /// v1.1: takes a room event to the gap tracker. False when it is a duplicate, to be
    /// dropped (a v1.1 receiver delivers each Seq once).
    fn track(&mut self, user: &mut User, ev: &RawEvent<'_>, now_ns: u64) -> bool {
        match user.gaps.event(ev.seq, now_ns, &mut self.counts) {
            Seen::New => true,
            Seen::Filled {
                nacked: true,
                waited_ns,
            } => {
                self.c.recovered += 1;
                stats::record(&mut self.recovery, waited_ns);
                true
            }
            Seen::Filled { nacked: false, .. } => {
                self.c.reordered += 1;
                true
            }
            Seen::Duplicate => {
                self.c.room_duplicates += 1;
                if ev.known_kind() == Some(EventKind::Message) {
                    self.c.duplicates += 1;
                }
                false
            }
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
        let v11 = self.path == Path::V11;
        // A datagram answers a NACK when its first room event is behind the highest Seq
        // this user has seen (live datagrams only move forward: the loopback and the
        // --loss filter never reorder), or when it holds a GONE.
        let mut first_room_event = true;
        let mut repair = false;
        for ev in RawEvents::new(data) {
            let Ok(ev) = ev else {
                self.c.malformed += 1;
                break;
            };
            let kind = ev.known_kind();
            if kind == Some(EventKind::Message) {
                self.c.events += 1;
                if in_window {
                    self.c.window_events += 1;
                }
            }
            if v11 {
                match kind {
                    Some(EventKind::Gone) => {
                        repair = true;
                        self.gone(user, ev.body);
                        continue;
                    }
                    Some(EventKind::Sync) => {
                        self.sync(user, ev.body, now_ns);
                        continue;
                    }
                    _ => {}
                }
                if is_room_event(&ev) {
                    if first_room_event {
                        first_room_event = false;
                        repair = user.gaps.is_behind(ev.seq);
                    }
                    if !self.track(user, &ev, now_ns) {
                        continue;
                    }
                }
            }
            self.deliver(user, kind, ev.body, now_ns);
        }
        if repair {
            self.c.repair_datagrams += 1;
            self.c.repair_bytes += data.len() as u64;
        }
        if v11 {
            self.nack_if_due(user, now_ns);
        }
    }

    fn recv_error(&mut self) {
        self.c.recv_errors += 1;
    }

    fn lost(&mut self, len: usize) {
        self.c.lost_datagrams += 1;
        self.c.lost_bytes += len as u64;
    }
}

#[cfg(test)]
mod tests;
