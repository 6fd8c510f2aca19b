//! (cluster) RESUME across nodes (PROTOCOL.md §5.5): a member held by one node moves to
//! another, the one its RESUME came to.
//!
//! The node the RESUME came to does not know the token. It asks every node at once
//! (`HANDOVER` on [`subject::RESUME`], request-reply): the node holding a member with that
//! token in that room checks the resume key and gives the member up (`MEMBER`), or says
//! UNAUTHORIZED; nobody else answers, and no answer in time is UNAUTHORIZED too (counted
//! by the password throttle, like a wrong key).
//!
//! Giving up: on a mirror, the member is removed without a word (it is not leaving); on
//! the owner, it becomes a remote member of the new node. Taking over: the new node enters
//! it with the same token, ClientSeq and key (its next datagram binds silently, as after
//! any RESUME); on the owner, a remote member comes home; elsewhere it enters the mirror
//! and the owner is told (`MOVED`), so that what the new node forwards in its name counts.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use log::info;
use rand::Rng;

use super::super::requests::Origin;
use super::super::resume::ResumeKey;
use super::super::{Entry, Member, Relay};
use super::{Pending, REMOTE_IDLE, status_of};

use crate::protocol::{Operation, Status};
use crate::server::cluster::registry::{RoomRecord, room_key};
use crate::server::cluster::wire::{Msg, WireError};
use crate::server::cluster::{Command, REQUEST_DEADLINE, subject};
use crate::server::limits::Bucket;
use crate::server::relay::recovery::RepairBucket;
use crate::server::token::{self, Token};
use crate::server::transmit::{SessionId, Transmit};

/// What a member brings when it moves here.
struct Moved<'a> {
    token: Token,
    user: &'a str,
    client_seq: u32,
    deadline: Instant,
}

/// A RESUME waiting for the node that holds the member.
#[derive(Debug)]
pub(in crate::server::relay) struct Resume {
    pub conn: SessionId,
    origin: Origin,
    pub room: String,
    token: Vec<u8>,
    key: Vec<u8>,
    record: RoomRecord,
}

impl<R: Rng> Relay<R> {
    /// A RESUME whose token this node does not hold: ask every node who does.
    pub(super) fn defer_resume(
        &mut self,
        now: Instant,
        origin: Origin,
        conn: SessionId,
        room: &str,
        token: &[u8],
        key: &[u8],
    ) -> Option<Status> {
        if self.throttle.is_throttled(origin.0, now) {
            return Some(Status::TooManyRequests);
        }
        let have_room = self.by_name.contains_key(room);
        let c = self.cluster.as_mut()?;
        let Some(reg) = c.registry.get(room) else {
            return Some(Status::RoomNotFound);
        };
        let record = reg.record.clone();
        if record.owner != *c.node && !have_room {
            // Hear the room before the member arrives (as for JOIN).
            c.commands.push(Command::Subscribe {
                room: room.to_owned(),
            });
        }
        let ticket = c.ticket();
        let mut bytes = Vec::new();
        Msg::Handover {
            room,
            node: &c.node,
            token,
            key,
        }
        .encode(&mut bytes);
        c.commands.push(Command::Ask {
            ticket,
            subject: subject::RESUME.to_owned(),
            bytes,
        });
        let r = Resume {
            conn,
            origin,
            room: room.to_owned(),
            token: token.to_vec(),
            key: key.to_vec(),
            record,
        };
        c.pending
            .insert(ticket, (now + REQUEST_DEADLINE, Pending::Resume(r)));
        None
    }

    /// Another node asks who holds the member with `token` in `room`: if this node does,
    /// and `key` is its resume key, it gives the member up to `node`. `None`: not ours
    /// (no answer).
    pub(super) fn hand_over(
        &mut self,
        now: Instant,
        room: &str,
        node: &str,
        token: &[u8],
        key: &[u8],
        tx: &mut impl Transmit,
    ) -> Option<Vec<u8>> {
        let c = self.cluster.as_ref()?;
        if *c.node == *node {
            return None;
        }
        let me: Box<str> = c.node.clone();
        let &m = <&Token>::try_from(token)
            .ok()
            .and_then(|t| self.by_token.get(t))?;
        let room_key = self.members[m].room;
        if *self.rooms[room_key].name != *room {
            return None;
        }
        let mut out = Vec::new();
        let key_ok = self.members[m]
            .resume_key
            .as_ref()
            .is_some_and(|k| k.matches(key));
        if !key_ok {
            Msg::Answer(Status::Unauthorized as u8).encode(&mut out);
            return Some(out);
        }
        let user = self.members[m].name.clone();
        let client_seq = self.members[m].client_seq;
        let owned = c.owned.contains_key(&room_key);
        if owned {
            // It stays in the room, as a remote member of `node`; its token is void here.
            self.unpin(m, tx);
            let fresh = token::generate(&mut self.rng);
            let mm = &mut self.members[m];
            self.by_token.remove(&mm.token);
            self.members_per_ip.remove(mm.ip);
            mm.token = fresh;
            mm.ip = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
            mm.session = None;
            mm.resume_key = None;
            mm.deadline = now + REMOTE_IDLE;
            if let Some(c) = self.cluster.as_mut() {
                c.set_remote(m, &self.members, node);
            }
            self.rooms[room_key].backplane.get_or_insert_with(Vec::new);
        } else {
            // A mirror's member: gone from here without a word (it is not leaving).
            self.remove_member(m, Entry::Pending, tx);
            if let Some(c) = self.cluster.as_mut() {
                c.touched.push(room_key);
            }
        }
        info!("'{user}' of room '{room}' resumes on node '{node}'");
        Msg::Member {
            node: &me,
            user: &user,
            client_seq,
        }
        .encode(&mut out);
        Some(out)
    }

    /// The answer to a RESUME this node deferred.
    pub(super) fn resumed(
        &mut self,
        now: Instant,
        ticket: u64,
        answer: Option<Result<Msg<'_>, WireError>>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((_, Pending::Resume(r))) = c.pending.remove(&ticket) else {
            return;
        };
        let result = match answer {
            Some(Ok(Msg::Member {
                node,
                user,
                client_seq,
            })) => self.take_member(now, &r, node, user, client_seq, tx),
            Some(Ok(Msg::Answer(s))) => Err(status_of(s)),
            _ => Err(Status::Unauthorized),
        };
        if result == Err(Status::Unauthorized) {
            self.record_failure(r.origin.0, now);
        }
        if result.is_err() && !self.by_name.contains_key(r.room.as_str()) {
            if let Some(c) = self.cluster.as_mut() {
                c.commands.push(Command::Unsubscribe {
                    room: r.room.clone(),
                });
            }
        }
        let mut out = Vec::new();
        self.answer(Operation::Resume, r.room.as_bytes(), result, &mut out);
        if let Some(c) = self.cluster.as_mut() {
            c.answers.push((r.conn, out));
        }
    }

    /// Enters a member given up by node `from`, with its token, ClientSeq and key.
    fn take_member(
        &mut self,
        now: Instant,
        r: &Resume,
        from: &str,
        user: &str,
        client_seq: u32,
        tx: &mut impl Transmit,
    ) -> Result<Option<usize>, Status> {
        let token: Token = r
            .token
            .as_slice()
            .try_into()
            .map_err(|_| Status::Unauthorized)?;
        if self.by_token.contains_key(&token) {
            return Err(Status::ServerFull);
        }
        let moved = Moved {
            token,
            user,
            client_seq,
            deadline: now + self.cfg.idle_timeout,
        };
        let home = self.by_name.get(r.room.as_str()).copied().filter(|k| {
            self.cluster
                .as_ref()
                .is_some_and(|c| c.owned.contains_key(k))
        });
        let m = match home {
            Some(room) => self.come_home(r, room, &moved)?,
            None => self.enter_mirror(now, r, from, &moved, tx)?,
        };
        self.by_token.insert(token, m);
        self.members_per_ip.add(r.origin.0);
        info!(
            "'{user}' resumed in room '{}' from {} (from node '{from}')",
            r.room, r.origin.0
        );
        Ok(Some(m))
    }

    /// On the owner: its remote member becomes a member of this node again.
    fn come_home(&mut self, r: &Resume, room: usize, mv: &Moved<'_>) -> Result<usize, Status> {
        let c = self.cluster.as_mut().ok_or(Status::ServerFull)?;
        let members = &self.members;
        let k = self.rooms[room]
            .members()
            .iter()
            .copied()
            .find(|&k| *members[k].name == *mv.user && c.node_of(k, members).is_some())
            .ok_or(Status::Unauthorized)?;
        c.remote.remove(&k);
        let m = &mut self.members[k];
        (m.ip, m.session) = r.origin;
        m.token = mv.token;
        m.addr = None;
        m.joined = true;
        m.client_seq = mv.client_seq;
        m.resume_key = ResumeKey::new(&r.key);
        m.deadline = mv.deadline;
        let id = m.id;
        self.deadlines.schedule(mv.deadline, k, id);
        Ok(k)
    }

    /// Elsewhere: the member enters this node's mirror, and the owner is told it moved.
    fn enter_mirror(
        &mut self,
        now: Instant,
        r: &Resume,
        from: &str,
        mv: &Moved<'_>,
        tx: &mut impl Transmit,
    ) -> Result<usize, Status> {
        let room = self.mirror_for(&r.room, &r.record, tx)?;
        let id = self.next_id;
        self.next_id += 1;
        let (ip, session) = r.origin;
        let k = self.members.insert(Member {
            id,
            room,
            name: mv.user.into(),
            token: mv.token,
            ip,
            session,
            addr: None,
            deadline: mv.deadline,
            bucket: Bucket::full(self.cfg.msg_burst, now),
            last_notice: None,
            // Bound before, elsewhere: binding here is silent, as after any RESUME.
            joined: true,
            v11: false,
            client_seq: mv.client_seq,
            repair: RepairBucket::full(self.cfg.repair_burst, now),
            resume_key: ResumeKey::new(&r.key),
        });
        self.deadlines.schedule(mv.deadline, k, id);
        self.rooms[room].admit(k);
        if let Some(c) = self.cluster.as_mut() {
            let node = c.node.clone();
            c.publish(
                subject::forward(&r.record.owner, &room_key(&r.room)),
                &Msg::Moved {
                    room: &r.room,
                    user: mv.user,
                    from,
                    to: &node,
                },
            );
        }
        Ok(k)
    }

    /// The owner hears that a remote member moved from node `from` to node `to`.
    pub(super) fn on_moved(&mut self, room: &str, user: &str, from: &str, to: &str) {
        let Some(&key) = self.by_name.get(room) else {
            return;
        };
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !c.owned.contains_key(&key) {
            return;
        }
        let members = &self.members;
        let found = self.rooms[key]
            .members()
            .iter()
            .copied()
            .find(|&k| *members[k].name == *user && c.node_of(k, members) == Some(from));
        if let Some(k) = found {
            c.set_remote(k, members, to);
            info!("'{user}' of room '{room}' moved from node '{from}' to '{to}'");
        }
    }
}
