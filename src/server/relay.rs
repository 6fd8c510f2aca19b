//! The relay's state machine: the coordinator of rooms and members.
//!
//! Sans-IO: [`Relay`] never touches a socket or reads a clock. The event loop hands it
//! parsed requests ([`Relay::handle_request`]), received datagrams
//! ([`Relay::handle_datagram_to`]) and the time ([`Relay::handle_timeout`]); it answers
//! TCRP requests into a caller's buffer and emits chat events into each room's outbox, which
//! reach the socket through a [`Transmit`] the caller lends it.
//!
//! The relay keeps what spans rooms: the member table and the tokens that find its
//! entries, the per-IP counts, the password throttle, the idle deadlines, the counters and
//! the queue of rooms to flush (at the end of a wake-up, or when a busy room's hold is
//! over). What happens inside one room (Seq,
//! outbox, who receives it) is `Room`'s (`server/room.rs`).
//!
//! * `relay.rs`: the tables, timeouts, the end-of-wake-up flush, and the removal of members
//!   and rooms (each removal does all its bookkeeping in one call).
//! * `requests.rs`: the control plane (CREATE, JOIN, LEAVE, LIST).
//! * `datagrams.rs`: the data plane (checking, binding, relaying, rate-limit notices).
//! * `recovery.rs`: v1.1 control datagrams (SEND, NACK, SYNC), tail notices and the
//!   server-wide history cap. `resume.rs`: resume keys and RESUME.
//! * `config.rs`: the settings. `invariants.rs` and `testing.rs`: for tests and fuzzing.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use log::info;
use rand::Rng;
use slab::Slab;

use super::counters::{Counters, DropReason};
use super::deadlines::DeadlineQueue;
use super::limits::{Bucket, FAILURE_WINDOW, PasswordThrottle};
use super::per_ip::PerIp;
use super::room::queue::{Entry as Queued, FlushQueue};
use super::room::{Outflow, Room, Spares};
use super::token::{Token, TokenMap};
use super::transmit::{Addr, SessionId, Targets, Transmit};
use crate::protocol::event::{EventBuf, EventKind, reason};
use recovery::RepairBucket;
use resume::ResumeKey;

mod cluster;
mod config;
mod datagrams;
#[cfg(any(test, feature = "fuzzing"))]
mod invariants;
mod recovery;
mod requests;
mod resume;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;

pub use config::{Config, DEFAULT_MAX_HOLD, MAX_HOLD_LIMIT};

/// At most one RATE_LIMITED notice per member this often: a flooding client learns why
/// its messages vanish without the notices becoming a flood of their own (PROTOCOL.md).
pub const RATE_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Member {
    /// Generation, so that stale deadline entries for a reused slab slot are recognised.
    id: u64,
    room: usize,
    name: Box<str>,
    token: Token,
    /// The IP its token was issued to (over TCP, or a session's peer): LEAVE must come
    /// from it, and the per-IP member count is on it.
    ip: IpAddr,
    /// The WebSocket session its token was issued on (PROTOCOL.md §6), or `None` for a
    /// token issued over TCP. A session-bound member's datagrams count only when they come
    /// on that session; a TCP-issued one's only over UDP. This is the seam for RESUME
    /// (§5.5): moving a member sets this to the session it resumed on (or `None`), and
    /// unbinds `addr` so that its next datagram there binds it.
    session: Option<SessionId>,
    /// Where its datagrams go once it has sent one (bound).
    addr: Option<Addr>,
    deadline: Instant,
    bucket: Bucket,
    last_notice: Option<Instant>,
    /// Whether it has ever bound (its JOINED went out): binding again after RESUME is
    /// silent.
    joined: bool,
    /// (v1.1) Whether a control datagram of it was accepted: only such members receive
    /// Kinds 7-9.
    v11: bool,
    /// (v1.1) The highest ClientSeq relayed for it (0: none).
    client_seq: u32,
    /// (v1.1) What NACK answers may still send it.
    repair: RepairBucket,
    /// (v1.1) The key RESUME must show; `None`: it cannot resume.
    resume_key: Option<ResumeKey>,
}

/// Whether a member being removed still has an entry in the deadline queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Its entry is pending: it becomes garbage.
    Pending,
    /// Its entry was just popped (it timed out): nothing is left behind.
    Popped,
}

/// What happened to a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramOutcome {
    /// A heartbeat bound or refreshed its member.
    Heartbeat,
    /// A message was relayed.
    Relayed,
    /// (v1.1) A SEND whose ClientSeq was already relayed: accepted, not relayed.
    Duplicate,
    /// (v1.1) A NACK was answered (with whatever the range held).
    Nack,
    /// (v1.1) A SYNC was answered.
    Sync,
    /// Dropped silently, for this reason.
    Dropped(DropReason),
}

/// Rooms, members and tokens, driven by the event loop.
pub struct Relay<R> {
    cfg: Config,
    rng: R,
    rooms: Slab<Room>,
    /// Rooms by name, in byte order of name: LIST walks it in order and stops when the
    /// reply is full, so a LIST costs O(rooms listed), not a sort of every room.
    by_name: BTreeMap<Box<str>, usize>,
    members: Slab<Member>,
    by_token: TokenMap,
    deadlines: DeadlineQueue,
    next_id: u64,
    /// Rooms whose outbox holds events: to be sent at the end of this wake-up, or held.
    queued: FlushQueue,
    /// Scratch: the rooms a flush takes from `queued`.
    flushing: Vec<Queued>,
    /// Outbox buffers of rooms with nothing to send.
    spares: Spares,
    /// How long a busy room may hold its outbox now (set by the loop from its busy share;
    /// zero: never).
    hold: Duration,
    /// Rooms open per creator IP.
    rooms_per_ip: PerIp,
    /// Members per IP their token was issued to.
    members_per_ip: PerIp,
    throttle: PasswordThrottle,
    next_prune: Option<Instant>,
    rate_body: String,
    notice: EventBuf,
    /// (v1.1) Rooms' tail-notice deadlines (key: room, id: its generation).
    tails: DeadlineQueue,
    /// (v1.1) Scratch: the receivers of a tail notice or RESUMED.
    dests: Targets,
    /// (v1.1) Scratch: one datagram of a NACK answer.
    repair_buf: Vec<u8>,
    /// (v1.1) Scratch: (history bytes, room key) of the rings a memory-cap pass sheds.
    shed: Vec<(usize, usize)>,
    /// Everything counted so far.
    pub counters: Counters,
    /// (cluster) This node's part of a cluster; `None` without `--cluster`.
    cluster: Option<Box<cluster::ClusterSide>>,
}

impl<R: Rng> Relay<R> {
    /// A relay with no rooms. `rng` draws tokens: give it a CSPRNG (`rand::rng()`) in
    /// production and a seeded one in tests.
    pub fn new(cfg: Config, rng: R) -> Self {
        let cfg = cfg.normalised();
        let rate_body = format!("{} messages/s, burst {}", cfg.msg_rate, cfg.msg_burst);
        Relay {
            cfg,
            rng,
            rooms: Slab::new(),
            by_name: BTreeMap::new(),
            members: Slab::new(),
            by_token: TokenMap::default(),
            deadlines: DeadlineQueue::default(),
            next_id: 0,
            queued: FlushQueue::default(),
            flushing: Vec::new(),
            spares: Spares::default(),
            hold: Duration::ZERO,
            rooms_per_ip: PerIp::default(),
            members_per_ip: PerIp::default(),
            throttle: PasswordThrottle::default(),
            next_prune: None,
            rate_body,
            notice: EventBuf::default(),
            tails: DeadlineQueue::default(),
            dests: Targets::default(),
            repair_buf: Vec::with_capacity(crate::protocol::MAX_DATAGRAM),
            shed: Vec::new(),
            counters: Counters::default(),
            cluster: None,
        }
    }

    /// Rooms open now.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    /// Members now, bound or not.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// Members that have bound an address.
    pub fn bound_count(&self) -> usize {
        self.rooms.iter().map(|(_, r)| r.bound_len()).sum()
    }

    /// Drops every member whose deadline has passed (TIMED_OUT to the room and to the
    /// member; a silent host closes the room). Costs O(expired), not O(members).
    pub fn handle_timeout(&mut self, now: Instant, tx: &mut impl Transmit) {
        while let Some((_, key, id)) = self.deadlines.pop_due(now) {
            let Some(m) = self.members.get(key).filter(|m| m.id == id) else {
                self.deadlines.popped_stale();
                continue;
            };
            if m.deadline > now {
                self.deadlines.schedule(m.deadline, key, id);
                continue;
            }
            self.time_out(key, now, tx);
        }
        self.send_due_tail_notices(now, tx);
        if self.next_prune.is_some_and(|t| t <= now) {
            self.throttle.prune(now);
            self.next_prune = (!self.throttle.is_empty()).then(|| now + FAILURE_WINDOW);
        }
    }

    /// Drops a member whose deadline entry was just popped.
    fn time_out(&mut self, key: usize, now: Instant, tx: &mut impl Transmit) {
        let room_key = self.members[key].room;
        let room = &self.rooms[room_key];
        let is_host = room.host == key;
        info!(
            "'{}' timed out in room '{}'",
            self.members[key].name, room.name
        );
        self.counters.members_timed_out += 1;
        // TIMED_OUT goes to the member too: emit it while it is still bound.
        self.emit_from(key, EventKind::TimedOut, "", now, tx);
        self.remove_member(key, Entry::Popped, tx);
        if is_host {
            self.close_room(room_key, reason::HOST_TIMED_OUT, tx);
        }
    }

    /// When the relay next needs [`Relay::handle_timeout`]: the poll timeout.
    pub fn next_timeout(&self) -> Option<Instant> {
        [self.deadlines.next(), self.tails.next(), self.next_prune]
            .into_iter()
            .flatten()
            .min()
    }

    /// Sets how long a busy room may hold its outbox from now on (the loop's
    /// [`Coalescer`](super::coalesce::Coalescer) decides; never more than `--max-hold-us`).
    pub fn set_hold(&mut self, hold: Duration) {
        self.hold = hold.min(self.cfg.max_hold);
    }

    /// When the first held outbox is due: the loop wakes then (finer than the poll
    /// timeout, see `sys::timer`).
    pub fn next_flush(&self) -> Option<Instant> {
        self.queued.next_due()
    }

    /// Sends the outboxes due at `now`: every room queued in this wake-up, and the held
    /// ones whose hold is over. The loop calls this at the end of each wake-up.
    pub fn flush_due(&mut self, now: Instant, tx: &mut impl Transmit) {
        let mut flushing = std::mem::take(&mut self.flushing);
        self.queued.take_due(now, &mut flushing);
        self.flush_rooms(&mut flushing, tx);
        self.flushing = flushing;
    }

    /// Corrects the counts for datagrams a transmitter took and the socket later refused
    /// (a staged send, see `sys::udp::BatchTx::stage`): `deliveries` is the events they
    /// held, one per datagram's receiver.
    pub fn count_refused(&mut self, datagrams: u64, deliveries: u64) {
        let c = &mut self.counters;
        c.datagrams_out = c.datagrams_out.saturating_sub(datagrams);
        c.deliveries = c.deliveries.saturating_sub(deliveries);
        c.send_drops += datagrams;
    }

    /// Sends every outbox that holds events, held or not (shutdown, and tests).
    pub fn flush(&mut self, tx: &mut impl Transmit) {
        let mut flushing = std::mem::take(&mut self.flushing);
        self.queued.take_all(&mut flushing);
        self.flush_rooms(&mut flushing, tx);
        self.flushing = flushing;
    }

    fn flush_rooms(&mut self, rooms: &mut Vec<Queued>, tx: &mut impl Transmit) {
        for q in rooms.drain(..) {
            if let Some(room) = self.rooms.get_mut(q.key).filter(|r| r.id == q.id) {
                room.flush_queued(&mut self.counters, &mut self.spares, tx);
            }
        }
    }

    /// Closes every room with ROOM_CLOSED "server shutting down".
    pub fn shutdown(&mut self, tx: &mut impl Transmit) {
        let keys: Vec<usize> = self.rooms.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close_room(key, reason::SHUTTING_DOWN, tx);
        }
    }

    /// Emits a room event with no body in the name of `user` (or none: "").
    fn emit(
        &mut self,
        room: usize,
        kind: EventKind,
        user: &str,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        if self.cluster.is_some() && self.forward_to_owner(room, kind, user, "") {
            return;
        }
        let mut out = Outflow {
            counters: &mut self.counters,
            batch_max: self.cfg.batch_max,
            queue: &mut self.queued,
            now,
            hold: self.hold,
            spares: &mut self.spares,
        };
        self.rooms[room].emit(kind, user, "", &mut out, tx);
        self.after_room_event(room, now);
    }

    /// Emits an event in the name of member `key` to its room.
    fn emit_from(
        &mut self,
        key: usize,
        kind: EventKind,
        body: &str,
        now: Instant,
        tx: &mut impl Transmit,
    ) {
        if self.cluster.is_some() && self.forward_from(key, kind, body, now) {
            return;
        }
        // Split borrows: the member's name is read while the room's outbox is written.
        let Relay {
            members,
            rooms,
            queued,
            counters,
            cfg,
            hold,
            spares,
            ..
        } = self;
        let m = &members[key];
        let mut out = Outflow {
            counters,
            batch_max: cfg.batch_max,
            queue: queued,
            now,
            hold: *hold,
            spares,
        };
        rooms[m.room].emit(kind, &m.name, body, &mut out, tx);
        let room = m.room;
        self.after_room_event(room, now);
    }

    /// Removes a member from its room and the tables: its token is void from now on, its
    /// IP's count drops, and a pending deadline entry is noted as garbage.
    fn remove_member(&mut self, key: usize, entry: Entry, tx: &mut impl Transmit) -> Member {
        let m = self.members.remove(key);
        self.forget_member(&m, entry);
        self.rooms[m.room].remove(key, &mut self.counters, tx);
        m
    }

    /// Voids a removed member's token and its count against its IP, and notes its
    /// deadline entry as garbage (compacting the queue when garbage dominates).
    fn forget_member(&mut self, m: &Member, entry: Entry) {
        self.by_token.remove(&m.token);
        self.members_per_ip.remove(m.ip);
        if entry == Entry::Pending {
            self.deadlines.forget();
            let members = &self.members;
            self.deadlines
                .compact_if_needed(|key, id| members.get(key).is_some_and(|m| m.id == id));
        }
    }

    /// Closes a room: ROOM_CLOSED (`why`) to its bound members after what is queued, every
    /// token void, the name free.
    fn close_room(&mut self, key: usize, why: &str, tx: &mut impl Transmit) {
        let mut room = self.rooms.remove(key);
        room.close(why, &mut self.counters, &mut self.spares, tx);
        if self.cluster.is_some() {
            self.cluster_room_closed(key, &mut room);
        }
        for &m in room.members() {
            if self.members.contains(m) {
                let m = self.members.remove(m);
                self.forget_member(&m, Entry::Pending);
            }
        }
        self.by_name.remove(&room.name);
        self.rooms_per_ip.remove(room.creator_ip);
        self.counters.rooms_closed += 1;
        info!("room '{}' closed: {why}", room.name);
    }
}

#[cfg(test)]
mod tests;
