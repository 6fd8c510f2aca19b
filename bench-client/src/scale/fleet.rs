//! The members of one `bench-client scale` process on the data plane: one UDP socket
//! each, bound to its member's source IP, all in one mio loop on one thread (the load is
//! light: the point is how many, not how fast). A process holds a contiguous range of the
//! members; the processes share one clock ([`MonoClock`]) so that a message stamped in
//! one is timed in another.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Duration;

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use ocm::protocol::MAX_DATAGRAM;
use ocm::protocol::control::{ControlBody, ControlDatagram};
use ocm::protocol::event::{EventKind, RawEvents};

use super::Plan;
use crate::body::Stamp;
use crate::schedule::Schedule;
use crate::stats;
use crate::sys::{MAX_POLL_WAIT, Timer};
use ocm::sys::udp::{RECV_BATCH, Receiver};

const TIMER: Token = Token(usize::MAX - 1);
/// First SYNCs sent per second while binding, over all processes: each binds a member and
/// makes its room's JOINED, and the server's socket buffer absorbs bursts, not 100 000
/// datagrams at once (the lost ones are retried, but each retry is a second).
pub const BIND_RATE: f64 = 20_000.0;
/// After the bind, how long the last JOINED events may take to be read at most: they are
/// many (a member's JOINED goes to every member of its room), and the next phase must
/// count its own datagrams only.
const BIND_DRAIN_NS: u64 = 20_000_000_000;
/// A member not bound yet sends its SYNC again this often.
const BIND_RETRY_NS: u64 = 1_000_000_000;
/// Sockets read in one turn of the loop: the sends due are looked at between turns, and a
/// turn over thousands of ready sockets would make them late (lateness counted as latency).
const MAX_SOCKETS_PER_TURN: usize = 64;
/// In the idle and traffic phases, the loop wakes this often at most: sends leave up to a
/// tick late (counted as latency), and sockets are read a tick's worth at a time.
const TICK_NS: u64 = 1_000_000;
/// Most sockets read in one tick (more wait for the next).
const MAX_SOCKETS_PER_TICK: usize = 4096;
/// `recvmmsg` batches read from one socket per readiness before moving on (it is
/// revisited).
const MAX_BATCHES_PER_VISIT: usize = 4;
/// After the traffic phase's last send, how long deliveries still in flight are awaited.
const DRAIN_NS: u64 = 1_000_000_000;
/// The drain ends early once no datagram arrived for this long.
const DRAIN_QUIET_NS: u64 = 200_000_000;
/// Progress lines this often.
const PROGRESS_NS: u64 = 5_000_000_000;

/// What one phase did; the CPU times are filled by the caller.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PhaseFigures {
    /// Wall-clock seconds of the phase (the traffic phase's drain not included).
    pub seconds: f64,
    /// Heartbeats (SYNC) sent.
    pub heartbeats: u64,
    /// Messages (SEND) sent.
    pub messages: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// Deliveries the messages should make (room size each, echo included).
    pub expected: u64,
    /// Deliveries of them received.
    pub received: u64,
    /// The server's CPU over the phase (user, system seconds), where known.
    pub server_cpu_s: Option<(f64, f64)>,
    /// The bench's own CPU over the phase, seconds.
    pub bench_cpu_s: f64,
    /// Wall-clock seconds from the phase's start to its last figures (drain included):
    /// the span of the server's CPU figures.
    pub window_s: f64,
    /// Seconds the server's loop was busy over the window (metrics), on a core or not:
    /// busy well above its CPU time means it waited for a core.
    pub server_busy_s: Option<f64>,
    /// Datagrams the kernel dropped over the window because a socket's receive queue was
    /// full: any socket of the machine (`RcvbufErrors` of `/proc/net/snmp`; the per-socket
    /// `/proc/net/udp` takes seconds to read with 100 000 sockets, and stalls the stack).
    pub udp_drops: Option<u64>,
}

impl PhaseFigures {
    /// Deliveries lost, percent of expected.
    pub fn loss_pct(&self) -> f64 {
        if self.expected == 0 {
            return 0.0;
        }
        self.expected.saturating_sub(self.received) as f64 * 100.0 / self.expected as f64
    }
}

/// The system's monotonic clock less a base instant that every process of a run is given,
/// in ns: stamps and receive times of different processes compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MonoClock {
    base_ns: u64,
}

impl MonoClock {
    /// A clock whose zero is `base_ns` of [`MonoClock::raw_ns`].
    pub fn with_base(base_ns: u64) -> MonoClock {
        MonoClock { base_ns }
    }

    /// CLOCK_MONOTONIC now, ns: the same clock in every process of the machine.
    pub fn raw_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the struct we pass, which lives for the call;
        // CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }

    /// ns since the base.
    pub fn now_ns(&self) -> u64 {
        Self::raw_ns().saturating_sub(self.base_ns)
    }
}

/// Where a process's members are and what they need to speak.
#[derive(Debug, Clone)]
pub struct FleetSpec {
    /// The whole run's plan.
    pub plan: Plan,
    /// The first member of this process; it holds `tokens.len()` from there.
    pub first: usize,
    /// The token of each of its members, in order.
    pub tokens: Vec<Vec<u8>>,
    /// The room names, by room index (every room's, for the traffic schedule's sake).
    pub names: Vec<String>,
    /// The server's data plane.
    pub udp: SocketAddr,
    /// How often a member heartbeats, ns.
    pub heartbeat_ns: u64,
    /// The run's clock.
    pub clock: MonoClock,
}

/// One member on the data plane.
struct Member {
    sock: UdpSocket,
    room: u32,
    token: Vec<u8>,
    last_send_ns: u64,
    bound: bool,
    client_seq: u32,
    seq: u32,
}

/// Every member's socket, and the loop around them.
pub struct Fleet {
    plan: Plan,
    /// The first member of this process (global index).
    first: usize,
    members: Vec<Member>,
    /// Room names, by room index.
    names: Vec<String>,
    poll: Poll,
    events: Events,
    timer: Option<Timer>,
    clock: MonoClock,
    heartbeat_ns: u64,
    /// Heartbeats sent so far over every phase: the next goes to member `cursor % n`.
    cursor: u64,
    bound: usize,
    pending: Vec<usize>,
    out: Vec<u8>,
    /// Where `recvmmsg` puts a batch.
    batch: Receiver,
    body: Vec<u8>,
}

/// What the reading half counts in a phase.
#[derive(Default)]
struct Reading {
    datagrams: u64,
    received: u64,
    /// Messages stamped before this were not sent in the phase: not counted.
    from_ns: u64,
}

impl Fleet {
    /// Opens and registers a socket per member of `spec`, bound to its source IP and
    /// connected to the server's data plane.
    pub fn open(spec: FleetSpec) -> Result<Fleet, String> {
        let poll = Poll::new().map_err(|e| format!("poll: {e}"))?;
        let plan = &spec.plan;
        let mut out = Vec::with_capacity(spec.tokens.len());
        for (i, token) in spec.tokens.into_iter().enumerate() {
            let m = spec.first + i;
            let from = SocketAddr::V4(SocketAddrV4::new(plan.address_of(m), 0));
            let open = || -> io::Result<UdpSocket> {
                let s = std::net::UdpSocket::bind(from)?;
                s.connect(spec.udp)?;
                s.set_nonblocking(true)?;
                Ok(UdpSocket::from_std(s))
            };
            let mut sock = open()
                .map_err(|e| format!("cannot open member {m}'s UDP socket on {from}: {e}"))?;
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE)
                .map_err(|e| format!("cannot register member {m}'s socket: {e}"))?;
            out.push(Member {
                sock,
                room: plan.room_of(m) as u32,
                token,
                last_send_ns: 0,
                bound: false,
                client_seq: 1,
                seq: 0,
            });
        }
        let timer = Timer::new().ok();
        if let Some(t) = &timer {
            poll.registry()
                .register(
                    &mut mio::unix::SourceFd(&t.raw_fd()),
                    TIMER,
                    Interest::READABLE,
                )
                .map_err(|e| format!("cannot register the timer: {e}"))?;
        }
        Ok(Fleet {
            plan: spec.plan.clone(),
            first: spec.first,
            members: out,
            names: spec.names,
            poll,
            events: Events::with_capacity(1024),
            timer,
            clock: spec.clock,
            heartbeat_ns: spec.heartbeat_ns.max(1),
            cursor: 0,
            bound: 0,
            pending: Vec::new(),
            out: vec![0; MAX_DATAGRAM],
            batch: Receiver::new(false),
            body: Vec::new(),
        })
    }

    /// Members of this process.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Sends a control datagram for member `m`; false when it could not leave.
    fn send(&mut self, m: usize, body: ControlBody<'_>, now: u64) -> bool {
        let Some(mem) = self.members.get_mut(m) else {
            return false;
        };
        let room = self.names[mem.room as usize].as_bytes();
        let d = ControlDatagram {
            room,
            token: &mem.token,
            body,
        };
        let Ok(n) = d.encode(&mut self.out) else {
            return false;
        };
        let ok = mem.sock.send(&self.out[..n]).is_ok();
        if ok {
            mem.last_send_ns = now;
        }
        ok
    }

    /// Every member sends SYNC (paced at `rate` a second, again each second until it is
    /// answered): a member is bound once its socket receives anything. Returns how many
    /// are bound at the end, all of them or at `timeout`.
    pub fn bind(&mut self, timeout: Duration, rate: f64, quiet: bool) -> usize {
        let start = self.clock.now_ns();
        let deadline = start + timeout.as_nanos() as u64;
        let n = self.members.len();
        let mut first_pass = 0usize;
        let mut retry_at = u64::MAX;
        let mut reading = Reading::default();
        let mut next_progress = start + PROGRESS_NS;
        loop {
            let now = self.clock.now_ns();
            let allowed = ((now - start) as f64 / 1e9 * rate.max(1.0)) as usize + 1;
            while first_pass < n.min(allowed) {
                self.send(first_pass, ControlBody::Sync, now);
                first_pass += 1;
            }
            if first_pass == n && retry_at == u64::MAX {
                retry_at = now + BIND_RETRY_NS;
            }
            if now >= retry_at {
                // The unbound try again; the bound heartbeat if a long bind made them due,
                // so that none times out before the run is under way.
                for m in 0..n {
                    let mem = &self.members[m];
                    let due = now.saturating_sub(mem.last_send_ns) >= self.heartbeat_ns;
                    if !mem.bound || due {
                        self.send(m, ControlBody::Sync, now);
                    }
                }
                retry_at = now + BIND_RETRY_NS;
            }
            if !quiet && now >= next_progress {
                eprintln!("bench-client scale: bind: {} of {n} bound", self.bound);
                next_progress += PROGRESS_NS;
            }
            if self.bound >= n || now >= deadline {
                // The JOINED events of the last members are still arriving: read them
                // now, so that the next phase counts its own datagrams only.
                self.drain(&mut reading, BIND_DRAIN_NS);
                return self.bound;
            }
            let wake = if first_pass < n {
                now + 1_000_000
            } else {
                retry_at.min(deadline)
            };
            self.turn(wake, &mut reading, None);
        }
    }

    /// Reads until no datagram arrived for [`DRAIN_QUIET_NS`], `most` ns at most.
    fn drain(&mut self, reading: &mut Reading, most: u64) {
        let end = self.clock.now_ns() + most;
        let mut last = (reading.datagrams, self.clock.now_ns());
        loop {
            let now = self.clock.now_ns();
            if reading.datagrams != last.0 {
                last = (reading.datagrams, now);
            }
            if now >= end || now >= last.1 + DRAIN_QUIET_NS {
                return;
            }
            self.turn(end.min(last.1 + DRAIN_QUIET_NS), reading, None);
        }
    }

    /// Heartbeats only, for `length`: one SYNC per member per heartbeat period, spread
    /// evenly (heartbeat `j` from this process's member `j % members`).
    pub fn idle(&mut self, start: u64, length: Duration, quiet: bool) -> PhaseFigures {
        self.phase(start, length, None, quiet)
    }

    /// `room_rate` messages per second in every room for `length` (message `k` from room
    /// `k % rooms`, each member of a room in turn; this process sends those of its own
    /// members), heartbeats from the members that sent nothing for a period; then a
    /// drain. Latency goes to `latency`.
    pub fn traffic(
        &mut self,
        start: u64,
        length: Duration,
        room_rate: f64,
        size: usize,
        latency: &mut Histogram<u64>,
        quiet: bool,
    ) -> PhaseFigures {
        self.body = vec![b'.'; size];
        self.phase(start, length, Some((room_rate, latency)), quiet)
    }

    /// A phase from `start` (ns on the run's clock, the same in every process, so that
    /// they all count the same messages) for `length`.
    fn phase(
        &mut self,
        start: u64,
        length: Duration,
        mut traffic: Option<(f64, &mut Histogram<u64>)>,
        quiet: bool,
    ) -> PhaseFigures {
        let n = self.members.len().max(1) as u64;
        let end = start + length.as_nanos() as u64;
        let hb_rate = n as f64 * 1e9 / self.heartbeat_ns as f64;
        let hb = Schedule::new(start, hb_rate, end);
        let msg_rate = traffic
            .as_ref()
            .map_or(0.0, |t| t.0 * self.plan.rooms as f64);
        let msgs = Schedule::new(start, msg_rate, end);
        let (mut next_hb, mut next_msg) = (0u64, 0u64);
        let mut f = PhaseFigures::default();
        let mut reading = Reading {
            from_ns: start,
            ..Reading::default()
        };
        let mut next_progress = start + PROGRESS_NS;
        loop {
            let now = self.clock.now_ns();
            while next_hb < hb.len() && hb.due(next_hb) <= now {
                let m = (self.cursor % n) as usize;
                self.cursor += 1;
                next_hb += 1;
                // A member that sent a message within the period needs no heartbeat.
                let quiet_for = now.saturating_sub(self.members[m].last_send_ns);
                if traffic.is_some() && quiet_for < self.heartbeat_ns {
                    continue;
                }
                if self.send(m, ControlBody::Sync, now) {
                    f.heartbeats += 1;
                }
            }
            while next_msg < msgs.len() && msgs.due(next_msg) <= now {
                let due = msgs.due(next_msg);
                if let Some(size) = self.send_message(next_msg, due, now) {
                    f.messages += 1;
                    f.expected += size;
                }
                next_msg += 1;
            }
            if !quiet && now >= next_progress {
                eprintln!(
                    "bench-client scale: {}: {:.0} s, {} heartbeats, {} messages, {} of {} deliveries",
                    if traffic.is_some() { "traffic" } else { "idle" },
                    now.saturating_sub(start) as f64 / 1e9,
                    f.heartbeats,
                    f.messages,
                    reading.received,
                    f.expected
                );
                next_progress += PROGRESS_NS;
            }
            if now >= end {
                break;
            }
            // Read what is there, then sleep to the next tick: many processes woken by
            // every datagram would spend the core switching between them.
            let mut budget = MAX_SOCKETS_PER_TICK;
            loop {
                self.turn(0, &mut reading, traffic.as_mut().map(|t| &mut *t.1));
                budget = budget.saturating_sub(MAX_SOCKETS_PER_TURN);
                if self.pending.is_empty() || budget == 0 {
                    break;
                }
            }
            let wake = [hb.due(next_hb), msgs.due(next_msg), end]
                .into_iter()
                .min()
                .unwrap_or(end)
                .max(now + TICK_NS);
            let now = self.clock.now_ns();
            if wake > now && self.pending.is_empty() {
                std::thread::sleep(Duration::from_nanos(wake - now));
            }
        }
        f.seconds = self.clock.now_ns().saturating_sub(start) as f64 / 1e9;
        // Deliveries still in flight, to this process's members from every process's
        // messages: read until the sockets have been quiet a while, or DRAIN_NS at most.
        if let Some((_, latency)) = traffic {
            let end = self.clock.now_ns() + DRAIN_NS;
            let mut last = (reading.datagrams, self.clock.now_ns());
            loop {
                let now = self.clock.now_ns();
                if reading.datagrams != last.0 {
                    last = (reading.datagrams, now);
                }
                if now >= end || now >= last.1 + DRAIN_QUIET_NS {
                    break;
                }
                self.turn(
                    end.min(last.1 + DRAIN_QUIET_NS),
                    &mut reading,
                    Some(&mut *latency),
                );
            }
        }
        f.datagrams = reading.datagrams;
        f.received = reading.received;
        f
    }

    /// Sends message `k` of the traffic schedule, stamped with its intended time `due`;
    /// returns the deliveries it should make.
    fn send_message(&mut self, k: u64, due: u64, now: u64) -> Option<u64> {
        let rooms = self.plan.rooms as u64;
        let room = (k % rooms) as usize;
        let size = self.plan.room_size(room);
        let pos = ((k / rooms) % size.max(1) as u64) as usize;
        // Another process's member sends this one.
        let m = self.plan.member_at(room, pos)?.checked_sub(self.first)?;
        let (seq, client_seq) = self.members.get(m).map(|x| (x.seq, x.client_seq))?;
        let stamp = Stamp {
            sender: (self.first + m) as u32,
            seq,
            intended_ns: due,
        };
        let mut body = std::mem::take(&mut self.body);
        let sent = stamp.encode(&mut body).is_some_and(|message| {
            let ok = self.send(
                m,
                ControlBody::Send {
                    client_seq,
                    message,
                },
                now,
            );
            if ok {
                let mem = &mut self.members[m];
                mem.client_seq = mem.client_seq.wrapping_add(1).max(1);
                mem.seq = mem.seq.wrapping_add(1);
            }
            ok
        });
        self.body = body;
        sent.then_some(size as u64)
    }

    /// Waits for readiness until `wake_ns` at most (not at all if sockets are left to
    /// read), then reads every ready socket.
    fn turn(&mut self, wake_ns: u64, r: &mut Reading, mut latency: Option<&mut Histogram<u64>>) {
        let now = self.clock.now_ns();
        let left = Duration::from_nanos(wake_ns.saturating_sub(now));
        let mut wait = left.min(MAX_POLL_WAIT);
        if let Some(t) = &self.timer
            && !left.is_zero()
            && left < MAX_POLL_WAIT
            && t.arm(left).is_ok()
        {
            wait = MAX_POLL_WAIT;
        }
        if !self.pending.is_empty() {
            wait = Duration::ZERO;
        }
        if self.poll.poll(&mut self.events, Some(wait)).is_err() {
            return;
        }
        let mut ready = std::mem::take(&mut self.pending);
        for ev in self.events.iter() {
            match ev.token() {
                TIMER => {
                    if let Some(t) = &self.timer {
                        t.ack();
                    }
                }
                Token(i) if i < self.members.len() => ready.push(i),
                _ => {}
            }
        }
        ready.sort_unstable();
        ready.dedup();
        for (k, &i) in ready.iter().enumerate() {
            // The rest wait for the next turn, after the sends that fell due meanwhile.
            if k >= MAX_SOCKETS_PER_TURN || !self.read(i, r, latency.as_deref_mut()) {
                self.pending.push(i);
            }
        }
    }

    /// Reads member `i`'s socket until it is empty (true) or for a bounded number of
    /// batches (false: read it again soon). One `recvmmsg` a batch: a batch shorter than
    /// [`RECV_BATCH`] means the queue is empty, with no call spent to hear `WouldBlock`.
    fn read(
        &mut self,
        i: usize,
        r: &mut Reading,
        mut latency: Option<&mut Histogram<u64>>,
    ) -> bool {
        for _ in 0..MAX_BATCHES_PER_VISIT {
            let Some(mem) = self.members.get_mut(i) else {
                return true;
            };
            let n = match self.batch.recv(&mem.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // WouldBlock, or an error such as the server's port closed: done here.
                Err(_) => return true,
            };
            if n > 0 && !mem.bound {
                mem.bound = true;
                self.bound += 1;
            }
            let now = self.clock.now_ns();
            for k in 0..n {
                if let Some((_, _, data)) = self.batch.get(k) {
                    r.datagrams += 1;
                    count_messages(data, now, r, latency.as_deref_mut());
                }
            }
            if n < RECV_BATCH {
                return true;
            }
        }
        false
    }
}

/// Counts (and times) the messages of one received datagram that the phase sent.
fn count_messages(
    data: &[u8],
    now: u64,
    r: &mut Reading,
    mut latency: Option<&mut Histogram<u64>>,
) {
    for ev in RawEvents::new(&data[..data.len().min(MAX_DATAGRAM)]) {
        let Ok(ev) = ev else { break };
        if ev.known_kind() != Some(EventKind::Message) {
            continue;
        }
        let Some(st) = Stamp::decode(ev.body) else {
            continue;
        };
        if st.intended_ns >= r.from_ns {
            r.received += 1;
            if let Some(h) = latency.as_deref_mut() {
                stats::record(h, now.saturating_sub(st.intended_ns));
            }
        }
    }
}
