//! (cluster) The owner's side of its shared rooms: remote members admitted, their events
//! sequenced, lost nodes' members dropped, history resent to mirrors that missed some.

use super::*;
use crate::server::cluster::wire::NOT_A_DATAGRAM;

impl<R: Rng> Relay<R> {
    /// An owner hears an event of a remote member.
    pub(in crate::server::relay) fn on_forward(
        &mut self,
        now: Instant,
        f: Forward<'_>,
        tx: &mut impl Transmit,
    ) {
        let Some(&room) = self.by_name.get(f.room) else {
            return;
        };
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        if !c.owned.contains_key(&room) {
            return;
        }
        let members = &self.members;
        let Some(key) = self.rooms[room]
            .members()
            .iter()
            .copied()
            .find(|&k| *members[k].name == *f.user && c.node_of(k, members) == Some(f.node))
        else {
            debug!(
                "cluster: forward for '{}' who is not a member of '{}'",
                f.user, f.room
            );
            return;
        };
        self.members[key].deadline = now + REMOTE_IDLE;
        match f.kind {
            EventKind::Message if f.client_seq != 0 => {
                // A SEND: relayed at most once (its node may send it again), and said so.
                if f.client_seq > self.members[key].client_seq {
                    self.members[key].client_seq = f.client_seq;
                    self.emit_from(key, f.kind, f.body, now, tx);
                }
                self.say_relayed(room, key);
            }
            EventKind::Message | EventKind::Joined => self.emit_from(key, f.kind, f.body, now, tx),
            EventKind::Left | EventKind::TimedOut => {
                let was_host = self.rooms[room].host == key;
                self.remove_remote(key, tx);
                self.emit(room, f.kind, f.user, now, tx);
                if was_host {
                    // A host that resumed on another node, and left or timed out there.
                    let why = if f.kind == EventKind::Left {
                        reason::HOST_LEFT
                    } else {
                        reason::HOST_TIMED_OUT
                    };
                    self.close_room(room, why, tx);
                }
            }
            _ => {}
        }
    }

    /// Removes a remote member from its room and the tables.
    pub(in crate::server::relay) fn remove_remote(&mut self, key: usize, tx: &mut impl Transmit) {
        if let Some(c) = self.cluster.as_mut() {
            c.remote.remove(&key);
        }
        self.counters.members_left += 1;
        self.remove_member(key, Entry::Pending, tx);
    }

    /// A node is gone: mirrors of its rooms close (`host unreachable`), its members leave
    /// our rooms (TIMED_OUT), its records leave the registry (the cluster thread deletes
    /// them in NATS).
    pub(in crate::server::relay) fn on_node_down(
        &mut self,
        now: Instant,
        node: &str,
        clean: bool,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.registry.retain(|_, r| r.record.owner != node);
        if clean {
            // Its rooms' ROOM_CLOSED ("server shutting down") is on its way on another
            // subject: wait for it a little (the orphan grace) before closing them here.
            for m in c.mirrors.values_mut().filter(|m| *m.owner == *node) {
                m.orphaned.get_or_insert(now);
                c.orphans = true;
            }
        }
        let mirrors: Vec<usize> = c
            .mirrors
            .iter()
            .filter(|(_, m)| !clean && *m.owner == *node)
            .map(|(&k, _)| k)
            .collect();
        let remote: Vec<usize> = c
            .remote
            .keys()
            .copied()
            .filter(|&k| c.node_of(k, &self.members) == Some(node))
            .collect();
        for key in mirrors {
            info!(
                "cluster: room '{}' lost its owner '{node}'",
                self.rooms[key].name
            );
            self.flush_room(key, tx);
            self.close_room(key, HOST_UNREACHABLE, tx);
        }
        for key in remote {
            if !self.members.contains(key) {
                continue;
            }
            let room = self.members[key].room;
            let name = self.members[key].name.clone();
            self.counters.members_timed_out += 1;
            self.remove_remote(key, tx);
            self.emit(room, EventKind::TimedOut, &name, now, tx);
        }
    }

    /// Another node asks: may a member join (an owned room)? Which events did it miss?
    pub(in crate::server::relay) fn on_asked(
        &mut self,
        now: Instant,
        reply: String,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) {
        let _ = tx;
        let answer = match Msg::parse(bytes) {
            Ok(Msg::Join { room, node, user }) => {
                let status = self.admit_remote(now, room, node, user);
                let mut out = Vec::new();
                Msg::Answer(status as u8).encode(&mut out);
                out
            }
            Ok(Msg::History { room, from, count }) => self.history_answer(room, from, count),
            Ok(Msg::Handover {
                room,
                node,
                token,
                key,
            }) => match self.hand_over(now, room, node, token, key, tx) {
                Some(answer) => answer,
                None => return,
            },
            Ok(_) | Err(_) => return,
        };
        if let Some(c) = self.cluster.as_mut() {
            c.commands.push(Command::Reply {
                subject: reply,
                bytes: answer,
            });
        }
    }

    /// The owner's JOIN checks for a member of node `node` (names, capacity, the member
    /// table); on OK it enters as a remote member.
    pub(in crate::server::relay) fn admit_remote(
        &mut self,
        now: Instant,
        room: &str,
        node: &str,
        user: &str,
    ) -> Status {
        let Some(&key) = self.by_name.get(room) else {
            return Status::RoomNotFound;
        };
        if !self
            .cluster
            .as_ref()
            .is_some_and(|c| c.owned.contains_key(&key))
        {
            return Status::RoomNotFound;
        }
        let r = &self.rooms[key];
        if r.members().iter().any(|&m| *self.members[m].name == *user) {
            return Status::NameTaken;
        }
        if r.members().len() >= usize::from(r.capacity) {
            return Status::RoomFull;
        }
        if self.members.len() >= self.cfg.max_members {
            return Status::ServerFull;
        }
        // No token anyone holds (it is not in the token table) and no address: the member's
        // own node serves it.
        let id = self.next_id;
        self.next_id += 1;
        let deadline = now + REMOTE_IDLE;
        let m = self.members.insert(Member {
            id,
            room: key,
            name: user.into(),
            token: token::generate(&mut self.rng),
            ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            session: None,
            addr: None,
            deadline,
            bucket: Bucket::full(self.cfg.msg_burst, now),
            last_notice: None,
            joined: true,
            v11: false,
            client_seq: 0,
            repair: RepairBucket::full(self.cfg.repair_burst, now),
            resume_key: None,
        });
        self.deadlines.schedule(deadline, m, id);
        self.rooms[key].admit(m);
        // From now on its datagrams are copied for the backplane.
        self.rooms[key].backplane.get_or_insert_with(Vec::new);
        if let Some(c) = self.cluster.as_mut() {
            c.set_remote(m, &self.members, node);
            c.touched.push(key);
        }
        info!("'{user}' joined room '{room}' on node '{node}'");
        Status::Ok
    }

    /// The held part of `count` events from `from` of an owned room, as an EVENTS message.
    pub(in crate::server::relay) fn history_answer(
        &self,
        room: &str,
        from: u32,
        count: u16,
    ) -> Vec<u8> {
        let mut events = Vec::new();
        if let Some(&key) = self.by_name.get(room) {
            let h = self.rooms[key].history();
            let k = crate::server::room::history::seq_distance(h.oldest(), from);
            if (k as usize) < h.len() {
                let n = u64::from(count).min(MAX_REPAIR) as usize;
                for i in k as usize..(k as usize + n).min(h.len()) {
                    let (a, b) = h.event(i);
                    if events.len() + a.len() + b.len() > MAX_REPAIR_BYTES {
                        break;
                    }
                    events.extend_from_slice(a);
                    events.extend_from_slice(b);
                }
            }
        }
        let mut out = Vec::new();
        Msg::Events(&events).encode(&mut out);
        out
    }

    /// Tells the mirrors of owned room `room` how far remote member `key`'s SENDs are
    /// relayed (RELAYED, behind a zero byte, on the room's event subject).
    fn say_relayed(&mut self, room: usize, key: usize) {
        let m = &self.members[key];
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some(o) = c.owned.get(&room) else {
            return;
        };
        let mut bytes = vec![NOT_A_DATAGRAM];
        Msg::Relayed {
            user: &m.name,
            client_seq: m.client_seq,
        }
        .encode(&mut bytes);
        let subject = subject::events(&o.key);
        c.commands.push(Command::Publish { subject, bytes });
    }
}
