//! The relay's state machine: rooms, members, tokens, Seq and idle deadlines.
//!
//! Sans-IO: [`Relay`] never touches a socket or reads a clock. The event loop hands it
//! parsed requests ([`Relay::handle_request`]), received datagrams
//! ([`Relay::handle_datagram`]) and the time ([`Relay::handle_timeout`]); it answers TCRP
//! requests into a caller's buffer and emits chat events into each room's outbox.
//!
//! An outbox is one datagram's worth of encoded events. Events are encoded once; the whole
//! outbox is handed to a [`Transmit`] with the room's bound members as destinations, so
//! every member gets the same bytes. An outbox is sent when it is full, when it holds
//! `batch_max` events, when the room's bound members change (so that each datagram holds
//! only events all its receivers are to see), or when the loop calls [`Relay::flush`] at
//! the end of a wake-up. At low load a datagram thus carries one event and leaves at once;
//! under load datagrams fill up by themselves.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use log::info;
use rand::Rng;
use slab::Slab;

use super::counters::{Counters, DropReason};
use super::deadlines::DeadlineQueue;
use super::limits::{Bucket, PasswordThrottle};
use super::token::{self, Token, TokenMap, constant_time_eq};
use super::transmit::{Dest, Transmit};
use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::event::{Event, EventBuf, EventKind, reason};
use crate::protocol::frame::{Grant, Request, RoomSummary, encode_list, encode_response};
use crate::protocol::{MAX_DATAGRAM, Operation, Status, TOKEN_LEN, next_seq};

/// The relay's limits and settings (the server's command line, minus the sockets).
#[derive(Debug, Clone)]
pub struct Config {
    /// Port of the data plane, told to members in the COMPLETE frame.
    pub udp_port: u16,
    /// Silence after which a member is dropped (1..=65535 s).
    pub idle_timeout: Duration,
    /// Capacity of a room created with capacity 0.
    pub default_capacity: u16,
    /// Largest room; larger requests are lowered to it.
    pub max_capacity: u16,
    /// Rooms over the whole server.
    pub max_rooms: usize,
    /// Members over all rooms.
    pub max_members: usize,
    /// Members whose tokens were issued to one IP (0: no limit): one address cannot fill
    /// every room and the whole server.
    pub max_members_per_ip: u32,
    /// Rooms that one IP may have created at once (0: no limit).
    pub max_rooms_per_ip: u32,
    /// Chat messages per second per member (0: no limit).
    pub msg_rate: u32,
    /// Burst of chat messages per member.
    pub msg_burst: u32,
    /// Most events in one server datagram (1: no coalescing).
    pub batch_max: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            udp_port: 9001,
            idle_timeout: Duration::from_secs(60),
            default_capacity: 32,
            max_capacity: 256,
            max_rooms: 10_000,
            max_members: 100_000,
            max_members_per_ip: 1024,
            max_rooms_per_ip: 16,
            msg_rate: 20,
            msg_burst: 40,
            batch_max: 64,
        }
    }
}

#[derive(Debug)]
struct Room {
    name: Box<str>,
    password: Option<Box<[u8]>>,
    capacity: u16,
    host: usize,
    creator_ip: IpAddr,
    /// Every member key, bound or not.
    members: Vec<usize>,
    /// Destinations of the room's datagrams: the bound members' addresses...
    bound: Vec<Dest>,
    /// ...and, at the same index, whose address each one is.
    bound_keys: Vec<usize>,
    /// Seq of the last event (0: none yet).
    seq: u32,
    outbox: EventBuf,
    /// Whether the room is on the relay's list of outboxes to flush.
    queued: bool,
}

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
    rooms_per_ip: HashMap<IpAddr, u32>,
    members_per_ip: HashMap<IpAddr, u32>,
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
    pub fn new(mut cfg: Config, rng: R) -> Self {
        cfg.max_capacity = cfg.max_capacity.max(1);
        cfg.default_capacity = cfg.default_capacity.clamp(1, cfg.max_capacity);
        cfg.batch_max = cfg.batch_max.max(1);
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
            rooms_per_ip: HashMap::new(),
            members_per_ip: HashMap::new(),
            throttle: PasswordThrottle::default(),
            next_prune: None,
            rate_body,
            notice: EventBuf::default(),
            counters: Counters::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &Config {
        &self.cfg
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
        self.rooms.iter().map(|(_, r)| r.bound.len()).sum()
    }

    /// Checks that the relay's tables agree with each other; `Err` names the first broken
    /// rule. Fuzzing and tests call it after every step; it walks everything, so the event
    /// loop never does.
    pub fn check_invariants(&self) -> Result<(), String> {
        if self.by_token.len() != self.members.len() {
            return Err(format!(
                "{} tokens for {} members",
                self.by_token.len(),
                self.members.len()
            ));
        }
        for (key, m) in &self.members {
            if self.by_token.get(&m.token) != Some(&key) {
                return Err(format!("member {key}'s token maps elsewhere"));
            }
            let room = self
                .rooms
                .get(m.room)
                .ok_or_else(|| format!("member {key} in no room"))?;
            if room.members.iter().filter(|&&k| k == key).count() != 1 {
                return Err(format!("member {key} not listed once in its room"));
            }
        }
        let mut per_ip = 0;
        for (key, r) in &self.rooms {
            if self.by_name.get(&r.name) != Some(&key) {
                return Err(format!("room '{}' not found by name", r.name));
            }
            if !r.members.contains(&r.host)
                || self.members.get(r.host).is_none_or(|m| m.room != key)
            {
                return Err(format!("room '{}' has no host", r.name));
            }
            if r.members.len() > usize::from(r.capacity) || r.capacity > self.cfg.max_capacity {
                return Err(format!("room '{}' over capacity", r.name));
            }
            if r.bound.len() != r.bound_keys.len() {
                return Err(format!("room '{}' bound lists differ", r.name));
            }
            for (addr, &k) in r.bound.iter().zip(&r.bound_keys) {
                if self
                    .members
                    .get(k)
                    .is_none_or(|m| m.room != key || m.addr != Some(*addr))
                {
                    return Err(format!("room '{}' sends to a stranger", r.name));
                }
            }
            if r.outbox.events() >= self.cfg.batch_max {
                return Err(format!("room '{}' holds a full batch", r.name));
            }
            per_ip += 1;
        }
        if self.by_name.len() != self.rooms.len() {
            return Err("room names and rooms differ".into());
        }
        let total =
            |per_ip: &HashMap<IpAddr, u32>| per_ip.values().map(|&n| n as usize).sum::<usize>();
        if total(&self.rooms_per_ip) != per_ip {
            return Err("per-IP room counts are off".into());
        }
        if total(&self.members_per_ip) != self.members.len() {
            return Err("per-IP member counts are off".into());
        }
        let c = &self.counters;
        if c.rooms_created - c.rooms_closed != self.rooms.len() as u64 {
            return Err("rooms created - closed != rooms open".into());
        }
        let handled = c.heartbeats + c.messages + c.drops.iter().sum::<u64>();
        if handled != c.datagrams_in {
            return Err("datagram outcomes do not add up to datagrams in".into());
        }
        Ok(())
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
                ..
            } => self.create(now, peer, room, user, password, capacity),
            Request::Join {
                room,
                user,
                password,
                ..
            } => self.join(now, peer, room, user, password),
            Request::Leave { room, token } => self.leave(peer, room, token, tx),
            Request::List => Ok(None),
            // Answered by the server's v1.1 work.
            Request::Resume { .. } => Err(Status::InvalidRequest),
        };
        let status = match result {
            Ok(_) => Status::Ok,
            Err(s) => s,
        };
        self.counters.request(op, status);
        encode_response(out, op as u8, room_bytes, status);
        match result {
            Ok(Some(member)) => {
                let m = &self.members[member];
                let grant = Grant {
                    token: &m.token,
                    udp_port: self.cfg.udp_port,
                    idle_timeout: self.cfg.idle_timeout.as_secs().min(65535) as u16,
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
        let per_ip = self.rooms_per_ip.get(&peer).copied().unwrap_or(0);
        if self.rooms.len() >= self.cfg.max_rooms
            || self.members.len() >= self.cfg.max_members
            || self.ip_has_max_members(peer)
            || (self.cfg.max_rooms_per_ip != 0 && per_ip >= self.cfg.max_rooms_per_ip)
        {
            return Err(Status::ServerFull);
        }
        let capacity = match capacity {
            0 => self.cfg.default_capacity,
            c => c.min(self.cfg.max_capacity),
        };
        let key = self.rooms.insert(Room {
            name: room.into(),
            password: (!password.is_empty()).then(|| password.into()),
            capacity,
            host: usize::MAX,
            creator_ip: peer,
            members: Vec::new(),
            bound: Vec::new(),
            bound_keys: Vec::new(),
            seq: 0,
            outbox: EventBuf::default(),
            queued: false,
        });
        self.by_name.insert(room.into(), key);
        *self.rooms_per_ip.entry(peer).or_default() += 1;
        let host = self.add_member(now, key, peer, user);
        self.rooms[key].host = host;
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
                    self.next_prune = Some(now + super::limits::FAILURE_WINDOW);
                }
                return Err(Status::BadPassword);
            }
        }
        if r.members.iter().any(|&m| &*self.members[m].name == user) {
            return Err(Status::NameTaken);
        }
        if r.members.len() >= usize::from(r.capacity) {
            return Err(Status::RoomFull);
        }
        if self.members.len() >= self.cfg.max_members || self.ip_has_max_members(peer) {
            return Err(Status::ServerFull);
        }
        let m = self.add_member(now, key, peer, user);
        info!("'{user}' joined room '{room}' from {peer}");
        Ok(Some(m))
    }

    fn ip_has_max_members(&self, ip: IpAddr) -> bool {
        let cap = self.cfg.max_members_per_ip;
        cap != 0 && self.members_per_ip.get(&ip).copied().unwrap_or(0) >= cap
    }

    fn add_member(&mut self, now: Instant, room: usize, ip: IpAddr, name: &str) -> usize {
        *self.members_per_ip.entry(ip).or_default() += 1;
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
        self.rooms[room].members.push(key);
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
        let name = self.members[member].name.clone();
        info!("'{name}' left room '{room}'");
        self.counters.members_left += 1;
        self.remove_member(member, tx);
        self.forget_deadline();
        self.emit(key, EventKind::Left, &name, "", tx);
        if self.rooms[key].host == member {
            self.emit(key, EventKind::RoomClosed, "", reason::HOST_LEFT, tx);
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
                    members: u16::try_from(r.members.len()).unwrap_or(u16::MAX),
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
            Err(e) => {
                return Dropped(match e {
                    DatagramError::Oversize => DropReason::Oversize,
                    DatagramError::Malformed => DropReason::Malformed,
                    DatagramError::MessageTooLong => DropReason::MessageTooLong,
                    DatagramError::BadText(_) => DropReason::BadText,
                });
            }
        };
        let Some(&key) = <&[u8; TOKEN_LEN]>::try_from(d.token)
            .ok()
            .and_then(|t| self.by_token.get(t))
        else {
            return Dropped(DropReason::UnknownToken);
        };
        let m = &mut self.members[key];
        let room_key = m.room;
        if self.rooms[room_key].name.as_bytes() != d.room {
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
            m.addr = Some(from);
            let name = m.name.clone();
            // The bound set changes: what is queued goes to the old set first.
            self.flush_room(room_key, tx);
            let room = &mut self.rooms[room_key];
            room.bound.push(from);
            room.bound_keys.push(key);
            self.counters.members_bound += 1;
            info!("'{name}' bound in room '{}' from {}", room.name, from.addr);
            self.emit(room_key, EventKind::Joined, &name, "", tx);
        }
        if d.is_heartbeat() {
            return DatagramOutcome::Heartbeat;
        }
        let m = &mut self.members[key];
        if !m.bucket.take(self.cfg.msg_rate, self.cfg.msg_burst, now) {
            let due = m
                .last_notice
                .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
            if due {
                m.last_notice = Some(now);
                self.send_rate_notice(key, from, tx);
            }
            return Dropped(DropReason::RateLimited);
        }
        // Split borrows: the member's name is read while the room's outbox is written.
        let Relay {
            members,
            rooms,
            queued,
            counters,
            cfg,
            ..
        } = self;
        let name = &members[key].name;
        emit_into(
            rooms,
            queued,
            counters,
            cfg.batch_max,
            room_key,
            EventKind::Message,
            name,
            d.message,
            tx,
        );
        DatagramOutcome::Relayed
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
            self.next_prune =
                (!self.throttle.is_empty()).then(|| now + super::limits::FAILURE_WINDOW);
        }
    }

    fn time_out(&mut self, key: usize, tx: &mut impl Transmit) {
        let m = &self.members[key];
        let (room_key, name) = (m.room, m.name.clone());
        let room = &self.rooms[room_key];
        let is_host = room.host == key;
        info!("'{name}' timed out in room '{}'", room.name);
        self.counters.members_timed_out += 1;
        // TIMED_OUT goes to the member too: emit it while it is still bound.
        self.emit(room_key, EventKind::TimedOut, &name, "", tx);
        self.remove_member(key, tx);
        if is_host {
            self.emit(
                room_key,
                EventKind::RoomClosed,
                "",
                reason::HOST_TIMED_OUT,
                tx,
            );
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
                room.queued = false;
            }
            self.flush_room(key, tx);
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
            self.emit(key, EventKind::RoomClosed, "", reason::SHUTTING_DOWN, tx);
            self.close_room(key, reason::SHUTTING_DOWN, tx);
        }
    }

    fn emit(
        &mut self,
        room: usize,
        kind: EventKind,
        user: &str,
        body: &str,
        tx: &mut impl Transmit,
    ) {
        emit_into(
            &mut self.rooms,
            &mut self.queued,
            &mut self.counters,
            self.cfg.batch_max,
            room,
            kind,
            user,
            body,
            tx,
        );
    }

    fn flush_room(&mut self, key: usize, tx: &mut impl Transmit) {
        if let Some(room) = self.rooms.get_mut(key) {
            send_outbox(room, &mut self.counters, tx);
        }
    }

    /// Removes a member (its token is void from now on). Flushes the room first, since
    /// its bound set changes.
    fn remove_member(&mut self, key: usize, tx: &mut impl Transmit) {
        let m = self.members.remove(key);
        let room_key = m.room;
        self.forget_member(m);
        // Send what is queued first: the events so far were for the old membership (and a
        // TIMED_OUT for this member leaves before a newcomer can take its name).
        let room = &mut self.rooms[room_key];
        send_outbox(room, &mut self.counters, tx);
        room.members.retain(|&k| k != key);
        if let Some(i) = room.bound_keys.iter().position(|&k| k == key) {
            room.bound_keys.swap_remove(i);
            room.bound.swap_remove(i);
        }
    }

    /// Voids a removed member's token and its count against its IP.
    fn forget_member(&mut self, m: Member) {
        self.by_token.remove(&m.token);
        if let Some(n) = self.members_per_ip.get_mut(&m.ip) {
            *n -= 1;
            if *n == 0 {
                self.members_per_ip.remove(&m.ip);
            }
        }
    }

    /// Notes that a removed member's deadline entry is garbage, and compacts the queue
    /// when garbage dominates.
    fn forget_deadline(&mut self) {
        self.deadlines.forget();
        let members = &self.members;
        self.deadlines
            .compact_if_needed(|key, id| members.get(key).is_some_and(|m| m.id == id));
    }

    /// Sends what the room still holds, voids every token and frees the name.
    fn close_room(&mut self, key: usize, why: &str, tx: &mut impl Transmit) {
        let mut room = self.rooms.remove(key);
        send_outbox(&mut room, &mut self.counters, tx);
        for m in room.members {
            if self.members.contains(m) {
                let m = self.members.remove(m);
                self.forget_member(m);
                self.forget_deadline();
            }
        }
        self.by_name.remove(&room.name);
        if let Some(n) = self.rooms_per_ip.get_mut(&room.creator_ip) {
            *n -= 1;
            if *n == 0 {
                self.rooms_per_ip.remove(&room.creator_ip);
            }
        }
        self.counters.rooms_closed += 1;
        info!("room '{}' closed: {why}", room.name);
    }
}

/// Appends one event to a room's outbox, flushing first if it would not fit and after if
/// the batch is full. A free function so that callers can lend a member's name from
/// another field of the relay.
#[allow(clippy::too_many_arguments)]
fn emit_into(
    rooms: &mut Slab<Room>,
    queued: &mut Vec<usize>,
    counters: &mut Counters,
    batch_max: usize,
    key: usize,
    kind: EventKind,
    user: &str,
    body: &str,
    tx: &mut impl Transmit,
) {
    let room = &mut rooms[key];
    room.seq = next_seq(room.seq);
    let ev = Event {
        kind: kind as u8,
        seq: room.seq,
        user,
        body,
    };
    debug_assert!(ev.len() <= MAX_DATAGRAM, "every event fits in one datagram");
    if !room.outbox.fits(&ev) {
        send_outbox(room, counters, tx);
    }
    room.outbox.push(&ev);
    counters.events += 1;
    if room.outbox.events() >= batch_max {
        send_outbox(room, counters, tx);
    } else if !room.queued {
        room.queued = true;
        queued.push(key);
    }
}

fn send_outbox(room: &mut Room, counters: &mut Counters, tx: &mut impl Transmit) {
    if room.outbox.is_empty() {
        return;
    }
    if !room.bound.is_empty() {
        let sent = tx.send(room.outbox.bytes(), &room.bound);
        counters.datagrams_out += sent as u64;
        counters.deliveries += (sent * room.outbox.events()) as u64;
        counters.send_drops += (room.bound.len() - sent) as u64;
    }
    room.outbox.clear();
}

#[cfg(test)]
mod tests;
