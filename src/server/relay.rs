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
//! the list of rooms to flush at the end of a wake-up. What happens inside one room (Seq,
//! outbox, who receives it) is [`Room`]'s.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::info;
use rand::Rng;
use slab::Slab;

use super::counters::{Counters, DropReason};
use super::deadlines::DeadlineQueue;
use super::limits::{Bucket, FAILURE_WINDOW, PasswordThrottle};
use super::per_ip::PerIp;
use super::room::{Outflow, Room};
use super::token::{self, Token, TokenMap, constant_time_eq};
use super::transmit::{Dest, Transmit};
use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::event::{Event, EventBuf, EventKind, reason};
use crate::protocol::frame::{Grant, Request, RoomSummary, encode_list, encode_response};
use crate::protocol::{Operation, Status, TOKEN_LEN};

mod config;
#[cfg(any(test, feature = "fuzzing"))]
mod invariants;
#[cfg(any(test, feature = "fuzzing"))]
pub mod testing;

pub use config::Config;

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
    ip: IpAddr,
    addr: Option<Dest>,
    deadline: Instant,
    bucket: Bucket,
    last_notice: Option<Instant>,
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
    /// Rooms whose outbox holds events, to be sent at the end of this wake-up.
    queued: Vec<usize>,
    /// Rooms open per creator IP.
    rooms_per_ip: PerIp,
    /// Members per IP their token was issued to.
    members_per_ip: PerIp,
    throttle: PasswordThrottle,
    next_prune: Option<Instant>,
    rate_body: String,
    notice: EventBuf,
    /// Everything counted so far.
    pub counters: Counters,
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
            queued: Vec::new(),
            rooms_per_ip: PerIp::default(),
            members_per_ip: PerIp::default(),
            throttle: PasswordThrottle::default(),
            next_prune: None,
            rate_body,
            notice: EventBuf::default(),
            counters: Counters::default(),
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

    /// Answers one TCRP request from `peer` into `out` (a RESPONSE, and a COMPLETE on
    /// success for CREATE, JOIN and LIST). LEAVE may emit events through `tx`.
    pub fn handle_request(
        &mut self,
        now: Instant,
        peer: IpAddr,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> Status {
        let peer = peer.to_canonical();
        let op = req.operation();
        let room_bytes = req.room().as_bytes();
        let result = match *req {
            Request::Create {
                room,
                user,
                password,
                capacity,
            } => self.create(now, peer, room, user, password, capacity),
            Request::Join {
                room,
                user,
                password,
            } => self.join(now, peer, room, user, password),
            Request::Leave { room, token } => self.leave(peer, room, token, tx),
            Request::List => Ok(None),
        };
        let status = match result {
            Ok(_) => Status::Ok,
            Err(s) => s,
        };
        self.counters.request(op, status);
        encode_response(out, op as u8, room_bytes, status);
        match result {
            Ok(Some(member)) => {
                let grant = Grant {
                    token: &self.members[member].token,
                    udp_port: self.cfg.udp_port,
                    // The field is two bytes; the flag allows no more than 65535 s.
                    idle_timeout: u16::try_from(self.cfg.idle_timeout.as_secs())
                        .unwrap_or(u16::MAX),
                };
                grant.encode(out, op, room_bytes);
            }
            Ok(None) if op == Operation::List => self.encode_list(out),
            _ => {}
        }
        status
    }

    fn create(
        &mut self,
        now: Instant,
        peer: IpAddr,
        room: &str,
        user: &str,
        password: &[u8],
        capacity: u16,
    ) -> Result<Option<usize>, Status> {
        if self.by_name.contains_key(room) {
            return Err(Status::RoomExists);
        }
        if self.rooms.len() >= self.cfg.max_rooms
            || self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
            || self.rooms_per_ip.at_cap(peer, self.cfg.max_rooms_per_ip)
        {
            return Err(Status::ServerFull);
        }
        let capacity = match capacity {
            0 => self.cfg.default_capacity,
            c => c.min(self.cfg.max_capacity),
        };
        let key = self.rooms.vacant_key();
        self.rooms_per_ip.add(peer);
        let host = self.add_member(now, key, peer, user);
        let inserted = self
            .rooms
            .insert(Room::new(key, room, password, capacity, (host, peer)));
        debug_assert_eq!(inserted, key);
        self.by_name.insert(room.into(), key);
        self.counters.rooms_created += 1;
        info!("room '{room}' created by '{user}' from {peer} (capacity {capacity})");
        Ok(Some(host))
    }

    fn join(
        &mut self,
        now: Instant,
        peer: IpAddr,
        room: &str,
        user: &str,
        password: &[u8],
    ) -> Result<Option<usize>, Status> {
        if self.throttle.is_throttled(peer, now) {
            return Err(Status::TooManyRequests);
        }
        let &key = self.by_name.get(room).ok_or(Status::RoomNotFound)?;
        let r = &self.rooms[key];
        if let Some(expected) = &r.password {
            if !constant_time_eq(expected, password) {
                self.throttle.record_failure(peer, now);
                if self.next_prune.is_none() {
                    self.next_prune = Some(now + FAILURE_WINDOW);
                }
                return Err(Status::BadPassword);
            }
        }
        if r.members().iter().any(|&m| *self.members[m].name == *user) {
            return Err(Status::NameTaken);
        }
        if r.members().len() >= usize::from(r.capacity) {
            return Err(Status::RoomFull);
        }
        if self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
        {
            return Err(Status::ServerFull);
        }
        let m = self.add_member(now, key, peer, user);
        self.rooms[key].admit(m);
        info!("'{user}' joined room '{room}' from {peer}");
        Ok(Some(m))
    }

    /// Enters a member of `room` into the member table, with a fresh token and deadline;
    /// the room itself is the caller's to tell.
    fn add_member(&mut self, now: Instant, room: usize, ip: IpAddr, name: &str) -> usize {
        self.members_per_ip.add(ip);
        let token = loop {
            let t = token::generate(&mut self.rng);
            if !self.by_token.contains_key(&t) {
                break t;
            }
        };
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + self.cfg.idle_timeout;
        let key = self.members.insert(Member {
            id,
            room,
            name: name.into(),
            token,
            ip,
            addr: None,
            deadline,
            bucket: Bucket::full(self.cfg.msg_burst, now),
            last_notice: None,
        });
        self.by_token.insert(token, key);
        self.deadlines.schedule(deadline, key, id);
        key
    }

    fn leave(
        &mut self,
        peer: IpAddr,
        room: &str,
        token: &[u8],
        tx: &mut impl Transmit,
    ) -> Result<Option<usize>, Status> {
        let &key = self.by_name.get(room).ok_or(Status::RoomNotFound)?;
        let member = <&Token>::try_from(token)
            .ok()
            .and_then(|t| self.by_token.get(t).copied())
            .filter(|&m| self.members[m].room == key && self.members[m].ip == peer)
            .ok_or(Status::Unauthorized)?;
        self.counters.members_left += 1;
        let m = self.remove_member(member, Entry::Pending, tx);
        info!("'{}' left room '{room}'", m.name);
        self.emit(key, EventKind::Left, &m.name, tx);
        if self.rooms[key].host == member {
            self.close_room(key, reason::HOST_LEFT, tx);
        }
        Ok(None)
    }

    fn encode_list(&self, out: &mut Vec<u8>) {
        // `str` orders by bytes, as LIST wants.
        encode_list(
            out,
            self.by_name.iter().map(|(name, &key)| {
                let r = &self.rooms[key];
                RoomSummary {
                    name,
                    members: u16::try_from(r.members().len()).unwrap_or(u16::MAX),
                    capacity: r.capacity,
                    password: r.password.is_some(),
                }
            }),
        );
    }

    /// Handles one received datagram from `from`. Rejected datagrams are dropped silently
    /// and counted; nothing is ever sent back to their source.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        let from = Dest {
            addr: from,
            local: None,
        };
        self.handle_datagram_to(now, from, bytes, tx)
    }

    /// [`Relay::handle_datagram`] for a server that knows which of its addresses the
    /// datagram was sent to (`from.local`); the member's datagrams will leave from there.
    pub fn handle_datagram_to(
        &mut self,
        now: Instant,
        from: Dest,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        self.counters.datagrams_in += 1;
        let outcome = self.accept_datagram(now, from, bytes, tx);
        match outcome {
            DatagramOutcome::Dropped(reason) => self.counters.drop(reason),
            DatagramOutcome::Heartbeat => self.counters.heartbeats += 1,
            DatagramOutcome::Relayed => self.counters.messages += 1,
        }
        outcome
    }

    fn accept_datagram(
        &mut self,
        now: Instant,
        from: Dest,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        use DatagramOutcome::Dropped;
        let d = match ChatDatagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => return Dropped(drop_reason(e)),
        };
        let Some(&key) = <&[u8; TOKEN_LEN]>::try_from(d.token)
            .ok()
            .and_then(|t| self.by_token.get(t))
        else {
            return Dropped(DropReason::UnknownToken);
        };
        let m = &mut self.members[key];
        if self.rooms[m.room].name.as_bytes() != d.room {
            return Dropped(DropReason::WrongRoom);
        }
        if m.ip != from.addr.ip().to_canonical() {
            return Dropped(DropReason::WrongIp);
        }
        match m.addr {
            Some(bound) if bound.addr != from.addr => return Dropped(DropReason::WrongAddress),
            _ => {}
        }
        m.deadline = now + self.cfg.idle_timeout;
        if m.addr.is_none() {
            self.bind(key, from, tx);
        }
        if d.is_heartbeat() {
            return DatagramOutcome::Heartbeat;
        }
        let m = &mut self.members[key];
        if !m.bucket.take(self.cfg.msg_rate, self.cfg.msg_burst, now) {
            let due = m
                .last_notice
                .is_none_or(|t| now.saturating_duration_since(t) >= RATE_NOTICE_INTERVAL);
            if due {
                m.last_notice = Some(now);
                self.send_rate_notice(key, from, tx);
            }
            return Dropped(DropReason::RateLimited);
        }
        self.emit_from(key, EventKind::Message, d.message, tx);
        DatagramOutcome::Relayed
    }

    /// A member's first datagram: its room's datagrams go to `from` from now on, and the
    /// room hears its JOINED.
    fn bind(&mut self, key: usize, from: Dest, tx: &mut impl Transmit) {
        let m = &mut self.members[key];
        m.addr = Some(from);
        let room = &mut self.rooms[m.room];
        room.bind(key, from, &mut self.counters, tx);
        self.counters.members_bound += 1;
        info!(
            "'{}' bound in room '{}' from {}",
            m.name, room.name, from.addr
        );
        self.emit_from(key, EventKind::Joined, "", tx);
    }

    fn send_rate_notice(&mut self, key: usize, to: Dest, tx: &mut impl Transmit) {
        let ev = Event {
            kind: EventKind::RateLimited as u8,
            seq: 0,
            user: &self.members[key].name,
            body: &self.rate_body,
        };
        self.notice.clear();
        if self.notice.push(&ev) {
            let sent = tx.send(self.notice.bytes(), std::slice::from_ref(&to));
            self.counters.rate_notices += 1;
            self.counters.datagrams_out += sent as u64;
            self.counters.send_drops += 1 - sent.min(1) as u64;
        }
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
            self.time_out(key, tx);
        }
        if self.next_prune.is_some_and(|t| t <= now) {
            self.throttle.prune(now);
            self.next_prune = (!self.throttle.is_empty()).then(|| now + FAILURE_WINDOW);
        }
    }

    /// Drops a member whose deadline entry was just popped.
    fn time_out(&mut self, key: usize, tx: &mut impl Transmit) {
        let room_key = self.members[key].room;
        let room = &self.rooms[room_key];
        let is_host = room.host == key;
        info!(
            "'{}' timed out in room '{}'",
            self.members[key].name, room.name
        );
        self.counters.members_timed_out += 1;
        // TIMED_OUT goes to the member too: emit it while it is still bound.
        self.emit_from(key, EventKind::TimedOut, "", tx);
        self.remove_member(key, Entry::Popped, tx);
        if is_host {
            self.close_room(room_key, reason::HOST_TIMED_OUT, tx);
        }
    }

    /// When the relay next needs [`Relay::handle_timeout`]: the poll timeout.
    pub fn next_timeout(&self) -> Option<Instant> {
        match (self.deadlines.next(), self.next_prune) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Sends every outbox that holds events. The loop calls this at the end of each
    /// wake-up.
    pub fn flush(&mut self, tx: &mut impl Transmit) {
        let mut queued = std::mem::take(&mut self.queued);
        for &key in &queued {
            if let Some(room) = self.rooms.get_mut(key) {
                room.flush_queued(&mut self.counters, tx);
            }
        }
        queued.clear();
        // Keep the allocation for the next wake-up.
        if self.queued.is_empty() {
            self.queued = queued;
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
    fn emit(&mut self, room: usize, kind: EventKind, user: &str, tx: &mut impl Transmit) {
        let mut out = Outflow {
            counters: &mut self.counters,
            batch_max: self.cfg.batch_max,
            queue: &mut self.queued,
        };
        self.rooms[room].emit(kind, user, "", &mut out, tx);
    }

    /// Emits an event in the name of member `key` to its room.
    fn emit_from(&mut self, key: usize, kind: EventKind, body: &str, tx: &mut impl Transmit) {
        // Split borrows: the member's name is read while the room's outbox is written.
        let Relay {
            members,
            rooms,
            queued,
            counters,
            cfg,
            ..
        } = self;
        let m = &members[key];
        let mut out = Outflow {
            counters,
            batch_max: cfg.batch_max,
            queue: queued,
        };
        rooms[m.room].emit(kind, &m.name, body, &mut out, tx);
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
        room.close(why, &mut self.counters, tx);
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

/// The drop counted for a datagram that does not parse.
fn drop_reason(e: DatagramError) -> DropReason {
    match e {
        DatagramError::Oversize => DropReason::Oversize,
        DatagramError::Malformed => DropReason::Malformed,
        DatagramError::MessageTooLong => DropReason::MessageTooLong,
        DatagramError::BadText(_) => DropReason::BadText,
    }
}

#[cfg(test)]
mod tests;
