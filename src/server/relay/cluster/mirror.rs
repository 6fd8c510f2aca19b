//! (cluster) This node's side of rooms owned elsewhere: mirrors made and dropped, member
//! events forwarded to the owner, the owner's batches taken (gaps repaired from it).

use super::*;
use crate::server::cluster::wire::NOT_A_DATAGRAM;

impl<R: Rng> Relay<R> {
    /// The owner said yes: the member enters this node's mirror of the room (made now if
    /// it is the first here).
    pub(in crate::server::relay) fn join_mirror(
        &mut self,
        now: Instant,
        origin: Origin,
        room: &str,
        user: &str,
        record: &RoomRecord,
        tx: &mut impl Transmit,
    ) -> Result<Option<usize>, Status> {
        let key = self.mirror_for(room, record, tx)?;
        let m = self.add_member(now, key, origin, user);
        self.rooms[key].admit(m);
        info!(
            "'{user}' joined room '{room}' from {} (owner elsewhere)",
            origin.0
        );
        Ok(Some(m))
    }

    /// This node's room `room`: its mirror, made now if there is none.
    pub(in crate::server::relay) fn mirror_for(
        &mut self,
        room: &str,
        record: &RoomRecord,
        tx: &mut impl Transmit,
    ) -> Result<usize, Status> {
        let key = match self.by_name.get(room) {
            Some(&k) => k,
            None => {
                if self.rooms.len() >= self.cfg.max_rooms {
                    return Err(Status::ServerFull);
                }
                let key = self.rooms.vacant_key();
                let slot = Slot {
                    key,
                    id: self.next_id,
                    history: self.cfg.history,
                };
                self.next_id += 1;
                // A mirror has no host here: it is made around a placeholder that leaves at
                // once, so no member of this node can close it by leaving.
                let mut r = Room::new(
                    slot,
                    room,
                    b"",
                    record.capacity,
                    (usize::MAX, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
                );
                r.remove(usize::MAX, &mut self.counters, tx);
                self.rooms.insert(r);
                self.by_name.insert(room.into(), key);
                if let Some(c) = self.cluster.as_mut() {
                    c.mirrors.insert(
                        key,
                        Mirror {
                            owner: record.owner.as_str().into(),
                            key: room_key(room),
                            repairing: None,
                            orphaned: None,
                        },
                    );
                }
                info!(
                    "cluster: mirror of room '{room}' (owner '{}')",
                    record.owner
                );
                key
            }
        };
        Ok(key)
    }

    /// Drops a mirror quietly (no member left, or its ROOM_CLOSED already went out).
    pub(in crate::server::relay) fn drop_mirror(&mut self, key: usize) {
        let Some(mut room) = self.rooms.try_remove(key) else {
            return;
        };
        room.discard(&mut self.counters);
        for &m in room.members() {
            if self.members.contains(m) {
                let m = self.members.remove(m);
                self.forget_member(&m, Entry::Pending);
            }
        }
        self.by_name.remove(&room.name);
        if let Some(c) = self.cluster.as_mut() {
            c.mirrors.remove(&key);
            c.commands.push(Command::Unsubscribe {
                room: room.name.to_string(),
            });
        }
        debug!("cluster: mirror of room '{}' dropped", room.name);
    }

    /// The hook of `emit`: in a mirror, an event is the owner's to sequence: forwarded
    /// (true), not emitted here.
    pub(in crate::server::relay) fn forward_to_owner(
        &mut self,
        room: usize,
        kind: EventKind,
        user: &str,
        body: &str,
    ) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        c.touched.push(room);
        let Some(m) = c.mirrors.get(&room) else {
            return false;
        };
        let Some(r) = self.rooms.get(room) else {
            return false;
        };
        let subject = subject::forward(&m.owner, &m.key);
        let node = c.node.clone();
        let client_seq = if kind == EventKind::Message {
            std::mem::take(&mut c.send_seq)
        } else {
            0
        };
        c.publish(
            subject,
            &Msg::Forward(Forward {
                room: &r.name,
                node: &node,
                kind,
                client_seq,
                user,
                body,
            }),
        );
        true
    }

    /// The hook of SEND (`recovery.rs`): a SEND of member `key` on a mirror carries its
    /// ClientSeq to the owner, who relays each at most once; it counts as relayed here only
    /// when the owner says so (RELAYED), so that a SEND lost on the way is sent again by
    /// its client (§5.4) rather than taken for a duplicate. Returns whether that is the
    /// case (the caller then leaves the member's ClientSeq alone).
    pub(in crate::server::relay) fn send_via_owner(&mut self, key: usize, client_seq: u32) -> bool {
        let Some(c) = self.cluster.as_mut() else {
            return false;
        };
        let via_owner = c.mirrors.contains_key(&self.members[key].room);
        c.send_seq = if via_owner { client_seq } else { 0 };
        via_owner
    }

    /// After a SEND: what [`Relay::send_via_owner`] noted is spent (or dropped, if the rate
    /// limit took the message).
    pub(in crate::server::relay) fn send_done(&mut self) {
        if let Some(c) = self.cluster.as_mut() {
            c.send_seq = 0;
        }
    }

    /// [`Relay::forward_to_owner`] in the name of member `key`.
    /// A member timing out on a mirror is owed the owner's TIMED_OUT: its address is kept
    /// for it.
    pub(in crate::server::relay) fn forward_from(
        &mut self,
        key: usize,
        kind: EventKind,
        body: &str,
        now: Instant,
    ) -> bool {
        let m = &self.members[key];
        let (room, name, addr) = (m.room, m.name.clone(), m.addr);
        let forwarded = self.forward_to_owner(room, kind, &name, body);
        if let (true, EventKind::TimedOut, Some(to), Some(c)) =
            (forwarded, kind, addr, self.cluster.as_mut())
        {
            c.farewells.push(Farewell {
                room,
                room_id: self.rooms[room].id,
                name,
                to,
                since: now,
            });
        }
        forwarded
    }

    /// A mirror takes a batch of its owner's (live, or a repair).
    pub(in crate::server::relay) fn on_batch(
        &mut self,
        now: Instant,
        room: &str,
        bytes: &[u8],
        how: Take,
        tx: &mut impl Transmit,
    ) {
        let Some(&key) = self.by_name.get(room) else {
            return;
        };
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        let Some(m) = c.mirrors.get(&key) else {
            return;
        };
        if bytes.first() == Some(&NOT_A_DATAGRAM) {
            if let Ok(Msg::Relayed { user, client_seq }) = Msg::parse(&bytes[1..]) {
                self.relayed_here(key, user, client_seq);
            }
            return;
        }
        if how == Take::Live && m.repairing.is_some() {
            return; // the repair's answer covers it
        }
        let taken = self.rooms[key].take_batch(bytes, how, &mut self.counters, tx);
        if taken.malformed {
            self.counters
                .drop(crate::server::counters::DropReason::Malformed);
            return;
        }
        if let Some((from, count)) = taken.gap {
            self.ask_repair(now, key, from, count);
            return;
        }
        if taken.closed {
            self.drop_mirror(key);
            return;
        }
        for (name, at) in &taken.timed_out {
            let Some(c) = self.cluster.as_mut() else {
                break;
            };
            let id = self.rooms[key].id;
            let Some(i) = c
                .farewells
                .iter()
                .position(|f| f.room == key && f.room_id == id && f.name == *name)
            else {
                continue;
            };
            let f = c.farewells.swap_remove(i);
            c.touched.push(key);
            let sent = tx.send_one(&bytes[at.clone()], f.to);
            self.counters.datagrams_out += sent as u64;
            self.counters.send_drops += 1 - sent.min(1) as u64;
        }
        for name in &taken.gone {
            // One of ours that the owner timed out or saw leave (its node was judged dead
            // meanwhile): it is gone here too.
            let mine = self.rooms[key]
                .members()
                .iter()
                .copied()
                .find(|&k| *self.members[k].name == **name);
            if let Some(k) = mine {
                self.remove_member(k, Entry::Pending, tx);
                if let Some(c) = self.cluster.as_mut() {
                    c.touched.push(key);
                }
            }
        }
        if taken.events > 0 {
            self.after_room_event(key, now);
        }
    }

    pub(in crate::server::relay) fn ask_repair(
        &mut self,
        now: Instant,
        key: usize,
        from: u32,
        count: u16,
    ) {
        let id = self.rooms[key].id;
        let name = self.rooms[key].name.clone();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let ticket = c.ticket();
        let Some(m) = c.mirrors.get_mut(&key) else {
            return;
        };
        m.repairing = Some(ticket);
        let subject = subject::ask(&m.owner);
        let mut bytes = Vec::new();
        Msg::History {
            room: &name,
            from,
            count,
        }
        .encode(&mut bytes);
        c.commands.push(Command::Ask {
            ticket,
            subject,
            bytes,
        });
        c.pending.insert(
            ticket,
            (now + REQUEST_DEADLINE, Pending::Repair { room: key, id }),
        );
        debug!("cluster: room '{name}' missed {count} events from {from}; asking the owner");
    }

    /// The owner relayed SENDs of member `user` up to `client_seq`: SYNC says so from now.
    fn relayed_here(&mut self, room: usize, user: &str, client_seq: u32) {
        let members = &self.members;
        let mine = self.rooms[room]
            .members()
            .iter()
            .copied()
            .find(|&k| *members[k].name == *user);
        if let Some(k) = mine {
            let m = &mut self.members[k];
            m.client_seq = m.client_seq.max(client_seq);
        }
    }
}
