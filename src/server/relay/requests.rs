//! The control plane: CREATE, JOIN, LEAVE and LIST, answered into the caller's buffer
//! (RESUME is `resume.rs`'s).

use std::net::IpAddr;
use std::time::Instant;

use log::info;
use rand::Rng;

use super::recovery::RepairBucket;
use super::{Entry, Member, Relay};
use crate::protocol::event::{EventKind, reason};
use crate::protocol::frame::{Grant, Request, RoomSummary, encode_list, encode_response};
use crate::protocol::{Operation, Status};
use crate::server::limits::{Bucket, FAILURE_WINDOW};
use crate::server::room::{Room, Slot};
use crate::server::token::{self, Token, constant_time_eq};
use crate::server::transmit::{SessionId, Transmit};

/// Where a request came from: the peer's IP, and the WebSocket session if it came on one.
pub(super) type Origin = (IpAddr, Option<SessionId>);

impl<R: Rng> Relay<R> {
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
        self.handle_request_on(now, peer, None, req, out, tx)
    }

    /// [`Relay::handle_request`] for a request that came on WebSocket `session` from
    /// `peer` (PROTOCOL.md §6): the tokens it issues are bound to that session.
    pub fn handle_session_request(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> Status {
        self.handle_request_on(now, peer, Some(session), req, out, tx)
    }

    pub(super) fn handle_request_on(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: Option<SessionId>,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> Status {
        let peer = peer.to_canonical();
        let origin = (peer, session);
        let op = req.operation();
        let room_bytes = req.room().as_bytes();
        let result = match *req {
            Request::Create {
                room,
                user,
                password,
                capacity,
                resume_key,
            } => self
                .create(now, origin, room, user, password, capacity)
                .inspect(|&m| self.set_resume_key(m, resume_key)),
            Request::Join {
                room,
                user,
                password,
                resume_key,
            } => self
                .join(now, origin, room, user, password)
                .inspect(|&m| self.set_resume_key(m, resume_key)),
            Request::Leave { room, token } => self.leave(now, peer, room, token, tx),
            Request::List => Ok(None),
            Request::Resume {
                room,
                token,
                resume_key,
            } => self.resume(now, origin, room, token, resume_key, tx),
        };
        self.answer(op, room_bytes, result, out)
    }

    /// Counts and encodes the answer to a request: the RESPONSE, and the COMPLETE of a
    /// success (a grant for `Some(member)`, the room list for LIST).
    pub(super) fn answer(
        &mut self,
        op: Operation,
        room_bytes: &[u8],
        result: Result<Option<usize>, Status>,
        out: &mut Vec<u8>,
    ) -> Status {
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

    /// Whether a CREATE from `peer` would pass a server or per-IP limit (rooms, members):
    /// then it is told SERVER_FULL.
    pub(super) fn room_limit_reached(&self, peer: IpAddr) -> bool {
        self.rooms.len() >= self.cfg.max_rooms
            || self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
            || self.rooms_per_ip.at_cap(peer, self.cfg.max_rooms_per_ip)
    }

    /// The capacity a room asked with `asked` gets: the default for 0, else at most the
    /// server's largest.
    pub(super) fn room_capacity(&self, asked: u16) -> u16 {
        match asked {
            0 => self.cfg.default_capacity,
            c => c.min(self.cfg.max_capacity),
        }
    }

    pub(super) fn create(
        &mut self,
        now: Instant,
        origin: Origin,
        room: &str,
        user: &str,
        password: &[u8],
        capacity: u16,
    ) -> Result<Option<usize>, Status> {
        let peer = origin.0;
        if self.by_name.contains_key(room) {
            return Err(Status::RoomExists);
        }
        if self.room_limit_reached(peer) {
            return Err(Status::ServerFull);
        }
        let capacity = self.room_capacity(capacity);
        let key = self.rooms.vacant_key();
        self.rooms_per_ip.add(peer);
        let host = self.add_member(now, key, origin, user);
        let slot = Slot {
            key,
            id: self.next_id,
            history: self.cfg.history,
        };
        self.next_id += 1;
        let inserted = self
            .rooms
            .insert(Room::new(slot, room, password, capacity, (host, peer)));
        debug_assert_eq!(inserted, key);
        self.by_name.insert(room.into(), key);
        self.counters.rooms_created += 1;
        info!("room '{room}' created by '{user}' from {peer} (capacity {capacity})");
        Ok(Some(host))
    }

    fn join(
        &mut self,
        now: Instant,
        origin: Origin,
        room: &str,
        user: &str,
        password: &[u8],
    ) -> Result<Option<usize>, Status> {
        let peer = origin.0;
        if self.throttle.is_throttled(peer, now) {
            return Err(Status::TooManyRequests);
        }
        let &key = self.by_name.get(room).ok_or(Status::RoomNotFound)?;
        let r = &self.rooms[key];
        if let Some(expected) = &r.password {
            if !constant_time_eq(expected, password) {
                self.record_failure(peer, now);
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
        let m = self.add_member(now, key, origin, user);
        self.rooms[key].admit(m);
        info!("'{user}' joined room '{room}' from {peer}");
        Ok(Some(m))
    }

    /// Counts a failed attempt from `peer` toward the password throttle.
    pub(super) fn record_failure(&mut self, peer: IpAddr, now: Instant) {
        self.throttle.record_failure(peer, now);
        if self.next_prune.is_none() {
            self.next_prune = Some(now + FAILURE_WINDOW);
        }
    }

    /// Enters a member of `room` into the member table, with a fresh token and deadline;
    /// the room itself is the caller's to tell.
    pub(super) fn add_member(
        &mut self,
        now: Instant,
        room: usize,
        origin: Origin,
        name: &str,
    ) -> usize {
        let (ip, session) = origin;
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
            session,
            addr: None,
            deadline,
            bucket: Bucket::full(self.cfg.msg_burst, now),
            last_notice: None,
            joined: false,
            v11: false,
            client_seq: 0,
            repair: RepairBucket::full(self.cfg.repair_burst, now),
            resume_key: None,
        });
        self.by_token.insert(token, key);
        self.deadlines.schedule(deadline, key, id);
        key
    }

    fn leave(
        &mut self,
        now: Instant,
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
        self.emit(key, EventKind::Left, &m.name, now, tx);
        if self.rooms[key].host == member {
            self.close_room(key, reason::HOST_LEFT, tx);
        }
        Ok(None)
    }

    fn encode_list(&self, out: &mut Vec<u8>) {
        if self.cluster.is_some() {
            // Every room of the cluster, from the registry.
            self.encode_cluster_list(out);
            return;
        }
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
}
