//! (cluster) The relay's side of a cluster of nodes (docs/cluster.md): still sans-IO.
//!
//! The relay talks to the cluster thread only through [`Command`]s it queues and
//! [`Notice`]s it is handed; the event loop moves them. What it keeps:
//!
//! * the registry: every room of the cluster (for LIST, and for JOIN and CREATE checks);
//! * the rooms it owns that the registry holds (their record revision, the member count
//!   last written), whose datagrams it publishes on the room's subject;
//! * *remote members* of its rooms: members on other nodes, entries in its member table
//!   with no token anyone holds and no address (they count toward capacity and names; the
//!   node that serves them forwards their events);
//! * *mirrors* of rooms owned elsewhere that have members here ([`Room::take_batch`]);
//! * deferred CREATE and JOIN requests, answered when the cluster has, or SERVER_FULL at
//!   their deadline (the contract has no "try later" status for these; SERVER_FULL is the
//!   nearest: this server cannot take the request now).
//!
//! Here: the state, the end-of-wake-up turn, the notices' dispatch, the registry and LIST.
//! `deferred.rs`: CREATE, JOIN and RESUME that wait. `owner.rs`: the owner's side of its
//! shared rooms. `mirror.rs`: this node's side of rooms owned elsewhere. `roam.rs`: RESUME
//! from one node to another. `tests.rs`: nodes over an in-memory backplane.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rand::Rng;
use slab::Slab;

use super::recovery::RepairBucket;
use super::requests::Origin;
use super::{Entry, Member, Relay};
use crate::protocol::event::{EventKind, reason};
use crate::protocol::frame::{Request, RoomSummary, encode_list};
use crate::protocol::{Operation, Status};
use crate::server::cluster::registry::{RoomRecord, SALT_LEN, room_key};
use crate::server::cluster::wire::{Forward, Msg};
use crate::server::cluster::{Command, CreateFailure, Notice, REQUEST_DEADLINE, subject};
use crate::server::limits::Bucket;
use crate::server::room::mirror::{MAX_REPAIR, Take};
use crate::server::room::{Room, Slot};
use crate::server::token;
use crate::server::transmit::{Addr, SessionId, Transmit};

mod deferred;
mod mirror;
mod owner;
mod roam;

/// ROOM_CLOSED's reason when the node serving the host was lost (PROTOCOL.md §2.2).
pub const HOST_UNREACHABLE: &str = "host unreachable";
/// A remote member's entry lives this long without a word from its node (each forwarded
/// event renews it): its node times it out, and says so; this only bounds a lost word.
const REMOTE_IDLE: Duration = Duration::from_secs(24 * 3600);
/// A mirror whose record went without its ROOM_CLOSED reaching us closes after this.
const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// How long a member timed out on a mirror waits for the owner's TIMED_OUT to pass on.
const FAREWELL_WAIT: Duration = Duration::from_secs(2);
/// Most history bytes one repair answer carries (well under NATS's 1 MiB payload).
const MAX_REPAIR_BYTES: usize = 256 * 1024;

/// A registry entry.
#[derive(Debug, Clone)]
struct Registered {
    record: RoomRecord,
}

/// A room of this node in the registry.
#[derive(Debug)]
struct Owned {
    key: String,
    revision: u64,
    /// The member count the record says.
    members: u16,
    record: RoomRecord,
}

/// A mirror of a room owned elsewhere.
#[derive(Debug)]
struct Mirror {
    owner: Box<str>,
    key: String,
    /// A repair is under way (its ticket).
    repairing: Option<u64>,
    /// The room's record went; the mirror closes if its ROOM_CLOSED does not come.
    orphaned: Option<Instant>,
}

/// A member a mirror timed out, owed the owner's TIMED_OUT (PROTOCOL.md §2.3: it goes to
/// that member too) at its last address.
#[derive(Debug)]
struct Farewell {
    room: usize,
    room_id: u64,
    name: Box<str>,
    to: Addr,
    since: Instant,
}

/// A remote member of an owned room: which node serves it.
#[derive(Debug)]
struct Remote {
    /// The member's generation: an entry left behind for a reused slab slot is not its.
    id: u64,
    node: Box<str>,
}

/// A deferred CREATE, waiting for the registry.
#[derive(Debug)]
struct NewRoom {
    conn: SessionId,
    origin: Origin,
    room: String,
    user: String,
    password: Vec<u8>,
    capacity: u16,
    resume_key: Option<Vec<u8>>,
    record: RoomRecord,
}

/// A deferred JOIN, waiting for the owner.
#[derive(Debug)]
struct Entering {
    conn: SessionId,
    origin: Origin,
    room: String,
    user: String,
    resume_key: Option<Vec<u8>>,
    record: RoomRecord,
}

/// A deferred JOIN of a room the registry does not show (yet): its record is read first.
#[derive(Debug)]
struct Lookup {
    conn: SessionId,
    origin: Origin,
    room: String,
    user: String,
    password: Vec<u8>,
    resume_key: Option<Vec<u8>>,
}

/// A request waiting for the cluster.
#[derive(Debug)]
enum Pending {
    Create(NewRoom),
    Lookup(Lookup),
    Join(Entering),
    Repair {
        room: usize,
        id: u64,
    },
    /// RESUME of a member another node holds (`roam.rs`).
    Resume(roam::Resume),
}

/// The relay's cluster state (see the module docs).
#[derive(Debug)]
pub struct ClusterSide {
    node: Box<str>,
    registry: BTreeMap<Box<str>, Registered>,
    owned: HashMap<usize, Owned>,
    mirrors: HashMap<usize, Mirror>,
    /// Remote members of owned rooms, by member key.
    remote: HashMap<usize, Remote>,
    pending: HashMap<u64, (Instant, Pending)>,
    next_ticket: u64,
    commands: Vec<Command>,
    answers: Vec<(SessionId, Vec<u8>)>,
    /// Rooms (owned or mirrors) whose events, output or members changed since the last
    /// turn: the turn looks at these, not at every room.
    touched: Vec<usize>,
    /// Whether some mirror is orphaned (its record gone, its ROOM_CLOSED not yet here).
    orphans: bool,
    /// Members timed out on a mirror, waiting for the owner's TIMED_OUT.
    farewells: Vec<Farewell>,
    /// The ClientSeq of the SEND being forwarded now (0: none).
    send_seq: u32,
}

impl ClusterSide {
    /// The node serving member `k`, if it is a remote member.
    fn node_of<'a>(&'a self, k: usize, members: &Slab<Member>) -> Option<&'a str> {
        let r = self.remote.get(&k)?;
        members
            .get(k)
            .is_some_and(|m| m.id == r.id)
            .then_some(&*r.node)
    }

    /// Notes member `k` as a remote member served by `node`.
    fn set_remote(&mut self, k: usize, members: &Slab<Member>, node: &str) {
        if let Some(m) = members.get(k) {
            self.remote.insert(
                k,
                Remote {
                    id: m.id,
                    node: node.into(),
                },
            );
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }

    fn publish(&mut self, subject: String, msg: &Msg<'_>) {
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.commands.push(Command::Publish { subject, bytes });
    }
}

impl<R: Rng> Relay<R> {
    /// Makes this relay node `node` of a cluster: CREATE and JOIN go through the registry.
    pub fn enable_cluster(&mut self, node: &str) {
        self.cluster = Some(Box::new(ClusterSide {
            node: node.into(),
            registry: BTreeMap::new(),
            owned: HashMap::new(),
            mirrors: HashMap::new(),
            remote: HashMap::new(),
            pending: HashMap::new(),
            next_ticket: 0,
            commands: Vec::new(),
            answers: Vec::new(),
            touched: Vec::new(),
            orphans: false,
            farewells: Vec::new(),
            send_seq: 0,
        }));
    }

    /// Whether this relay is a node of a cluster.
    pub fn cluster_on(&self) -> bool {
        self.cluster.is_some()
    }

    /// The commands queued for the cluster thread.
    pub fn take_cluster_commands(&mut self) -> Vec<Command> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.commands))
            .unwrap_or_default()
    }

    /// Deferred answers ready for their connections.
    pub fn take_cluster_answers(&mut self) -> Vec<(SessionId, Vec<u8>)> {
        self.cluster
            .as_mut()
            .map(|c| std::mem::take(&mut c.answers))
            .unwrap_or_default()
    }

    /// When a deferred request next expires.
    pub fn cluster_deadline(&self) -> Option<Instant> {
        let c = self.cluster.as_ref()?;
        let pending = c.pending.values().map(|(t, _)| *t).min();
        let orphan = c
            .mirrors
            .values()
            .filter_map(|m| m.orphaned)
            .min()
            .map(|t| t + ORPHAN_GRACE);
        let farewell = c.farewells.iter().map(|f| f.since + FAREWELL_WAIT).min();
        [pending, orphan, farewell].into_iter().flatten().min()
    }

    /// Answers the deferred requests whose deadline passed (SERVER_FULL), closes orphaned
    /// mirrors, and queues what the wake-up produced for the backplane: the datagrams of
    /// shared rooms, changed member counts, mirrors with no member left. The loop calls
    /// this at the end of each wake-up, after the flush.
    pub fn cluster_turn(&mut self, now: Instant, tx: &mut impl Transmit) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let due: Vec<u64> = c
            .pending
            .iter()
            .filter(|(_, (t, _))| *t <= now)
            .map(|(&k, _)| k)
            .collect();
        for ticket in due {
            self.settle(now, ticket, Err(Status::ServerFull), tx);
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !c.farewells.is_empty() {
            // Not heard in time: the mirror stops keeping the room for them.
            let touched = &mut c.touched;
            c.farewells.retain(|f| {
                let keep = f.since + FAREWELL_WAIT > now;
                if !keep {
                    touched.push(f.room);
                }
                keep
            });
        }
        if c.orphans {
            let orphans: Vec<usize> = c
                .mirrors
                .iter()
                .filter(|(_, m)| m.orphaned.is_some_and(|t| t + ORPHAN_GRACE <= now))
                .map(|(&k, _)| k)
                .collect();
            c.orphans = c.mirrors.values().any(|m| m.orphaned.is_some());
            for key in orphans {
                self.flush_room(key, tx);
                self.close_room(key, HOST_UNREACHABLE, tx);
            }
        }
        self.publish_touched();
    }

    /// For each room touched since the last turn: a mirror with no member left is dropped;
    /// an owned room's datagrams go out on its subject, and its record is rewritten if its
    /// member count changed. A room still holding events stays on the list.
    fn publish_touched(&mut self) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut touched = std::mem::take(&mut c.touched);
        touched.sort_unstable();
        touched.dedup();
        let empty: Vec<usize> = touched
            .iter()
            .copied()
            .filter(|k| c.mirrors.contains_key(k))
            .filter(|&k| self.rooms.get(k).is_some_and(|r| r.members().is_empty()))
            .filter(|&k| !c.farewells.iter().any(|f| f.room == k))
            .collect();
        for key in empty {
            self.drop_mirror(key);
        }
        let Relay {
            cluster,
            rooms,
            members,
            ..
        } = self;
        let Some(c) = cluster.as_mut() else {
            return;
        };
        for &key in &touched {
            // Only a room with members elsewhere has anyone to publish to.
            let shared = rooms
                .get(key)
                .is_some_and(|r| r.members().iter().any(|&k| c.node_of(k, members).is_some()));
            let (Some(o), Some(room)) = (c.owned.get_mut(&key), rooms.get_mut(key)) else {
                continue;
            };
            if let Some(b) = room.backplane.as_mut() {
                for bytes in b.drain(..) {
                    c.commands.push(Command::Publish {
                        subject: subject::events(&o.key),
                        bytes,
                    });
                }
            }
            if room.holds_events() {
                c.touched.push(key);
            } else if !shared {
                // No copies while nobody elsewhere needs them.
                room.backplane = None;
            }
            let members = u16::try_from(room.members().len()).unwrap_or(u16::MAX);
            if members != o.members {
                o.members = members;
                o.record.members = members;
                let mut record = Vec::new();
                o.record.encode(&mut record);
                c.commands.push(Command::Update {
                    key: o.key.clone(),
                    record,
                });
            }
        }
        // Keep the list's memory for the next turn.
        touched.clear();
        if c.touched.is_empty() {
            c.touched = touched;
        }
    }

    /// Sends a room's queued events now (before it closes under them).
    fn flush_room(&mut self, key: usize, tx: &mut impl Transmit) {
        if let Some(r) = self.rooms.get_mut(key) {
            r.flush(&mut self.counters, tx);
        }
    }

    /// Handles one notice of the cluster thread.
    pub fn on_cluster_notice(&mut self, now: Instant, notice: Notice, tx: &mut impl Transmit) {
        if self.cluster.is_none() {
            return;
        }
        match notice {
            Notice::Registry {
                room,
                record,
                revision,
            } => self.on_registry(now, room, record, revision, tx),
            Notice::Created {
                ticket,
                key,
                result,
            } => {
                let result = match result {
                    Ok(rev) => Ok(rev),
                    Err(CreateFailure::Exists) => Err(Status::RoomExists),
                    Err(CreateFailure::Unavailable) => Err(Status::ServerFull),
                };
                self.on_created(now, ticket, key, result, tx);
            }
            Notice::Looked { ticket, record } => self.looked(now, ticket, record),
            Notice::NodeDown { node, clean } => self.on_node_down(now, &node, clean, tx),
            Notice::Batch { room, bytes } => self.on_batch(now, &room, &bytes, Take::Live, tx),
            Notice::Forwarded { bytes } => match Msg::parse(&bytes) {
                Ok(Msg::Forward(f)) => self.on_forward(now, f, tx),
                Ok(Msg::Moved {
                    room,
                    user,
                    from,
                    to,
                }) => self.on_moved(room, user, from, to),
                Ok(_) => debug!("cluster: not a forward on the forward subject"),
                Err(e) => debug!("cluster: bad forward: {e}"),
            },
            Notice::Asked { reply, bytes } => self.on_asked(now, reply, &bytes, tx),
            Notice::Answer { ticket, bytes } => self.on_answer(now, ticket, bytes, tx),
        }
    }

    fn on_registry(
        &mut self,
        now: Instant,
        room: String,
        record: Option<RoomRecord>,
        revision: u64,
        tx: &mut impl Transmit,
    ) {
        let local = self.by_name.get(room.as_str()).copied();
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        match record {
            Some(record) => {
                if let Some(k) = local.filter(|k| c.mirrors.contains_key(k)) {
                    if let Some(m) = c.mirrors.get_mut(&k) {
                        m.orphaned = None;
                    }
                }
                c.registry.insert(room.into(), Registered { record });
            }
            None => {
                c.registry.remove(room.as_str());
                let Some(key) = local else {
                    return;
                };
                if let Some(m) = c.mirrors.get_mut(&key) {
                    m.orphaned.get_or_insert(now);
                    c.orphans = true;
                } else if c.owned.get(&key).is_some_and(|o| o.revision < revision) {
                    // Our record was deleted by others: they judged this node dead (it was
                    // cut off, or stopped). The room is over everywhere else; so here too.
                    warn!("cluster: room '{room}' was taken from this node; closing it");
                    c.owned.remove(&key);
                    self.flush_room(key, tx);
                    self.close_room(key, HOST_UNREACHABLE, tx);
                }
            }
        }
    }

    /// The hook of `close_room`: a shared room's last datagrams (its ROOM_CLOSED) go out on
    /// its subject and its record is deleted; a mirror stops hearing its room; remote
    /// members are forgotten.
    pub(super) fn cluster_room_closed(&mut self, key: usize, room: &mut Room) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        for m in room.members() {
            c.remote.remove(m);
        }
        if let Some(o) = c.owned.remove(&key) {
            for bytes in room.backplane.take().unwrap_or_default() {
                c.commands.push(Command::Publish {
                    subject: subject::events(&o.key),
                    bytes,
                });
            }
            c.commands.push(Command::Delete { key: o.key });
        }
        if c.mirrors.remove(&key).is_some() {
            c.commands.push(Command::Unsubscribe {
                room: room.name.to_string(),
            });
        }
    }

    fn on_answer(
        &mut self,
        now: Instant,
        ticket: u64,
        bytes: Option<Vec<u8>>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((_, pending)) = c.pending.get(&ticket) else {
            return;
        };
        match pending {
            Pending::Join(_) => {
                let status = match bytes.as_deref().map(Msg::parse) {
                    Some(Ok(Msg::Answer(s))) => status_of(s),
                    _ => Status::ServerFull,
                };
                let result = if status == Status::Ok {
                    Ok(0)
                } else {
                    Err(status)
                };
                self.settle(now, ticket, result, tx);
            }
            &Pending::Repair { room, id } => {
                c.pending.remove(&ticket);
                if let Some(m) = c.mirrors.get_mut(&room) {
                    m.repairing = None;
                }
                let Some(r) = self.rooms.get(room).filter(|r| r.id == id) else {
                    return;
                };
                let name = r.name.to_string();
                match bytes.as_deref().map(Msg::parse) {
                    Some(Ok(Msg::Events(ev))) if !ev.is_empty() => {
                        self.on_batch(now, &name, ev, Take::Jump, tx);
                    }
                    _ => {
                        // Nothing held (or no answer): take the next batch as it comes.
                        if let Some(r) = self.rooms.get_mut(room) {
                            r.forget_seq();
                        }
                    }
                }
            }
            Pending::Resume(_) => {
                let answer = bytes.as_deref().map(Msg::parse);
                self.resumed(now, ticket, answer, tx);
            }
            Pending::Create(_) | Pending::Lookup(_) => {}
        }
    }

    /// LIST in a cluster: every room of the registry, with this node's own rooms' counts
    /// as they are now.
    pub(super) fn encode_cluster_list(&self, out: &mut Vec<u8>) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        encode_list(
            out,
            c.registry.iter().map(|(name, reg)| {
                let live = self
                    .by_name
                    .get(name)
                    .filter(|k| c.owned.contains_key(k))
                    .map(|&k| u16::try_from(self.rooms[k].members().len()).unwrap_or(u16::MAX));
                RoomSummary {
                    name,
                    members: live.unwrap_or(reg.record.members),
                    capacity: reg.record.capacity,
                    password: reg.record.has_password,
                }
            }),
        );
    }
}

/// The status a byte names (an unknown one is the owner's refusal: SERVER_FULL).
fn status_of(b: u8) -> Status {
    Status::ALL
        .into_iter()
        .find(|s| *s as u8 == b)
        .unwrap_or(Status::ServerFull)
}

#[cfg(test)]
mod tests;
