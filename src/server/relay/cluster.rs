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

/// A request waiting for the cluster.
#[derive(Debug)]
enum Pending {
    Create {
        conn: SessionId,
        origin: Origin,
        room: String,
        user: String,
        password: Vec<u8>,
        capacity: u16,
        resume_key: Option<Vec<u8>>,
        record: RoomRecord,
    },
    Join {
        conn: SessionId,
        origin: Origin,
        room: String,
        user: String,
        resume_key: Option<Vec<u8>>,
        record: RoomRecord,
    },
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

    /// Answers a TCRP request from connection `conn`, or defers it (CREATE, JOIN and
    /// RESUME that need the cluster); returns whether it was answered now.
    pub fn handle_request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        conn: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        self.request_deferrable(now, peer, None, conn, req, out, tx)
    }

    /// [`Relay::handle_request_deferrable`] for a request on WebSocket session `session`
    /// (PROTOCOL.md §6): the tokens it issues are bound to the session.
    pub fn handle_session_request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        self.request_deferrable(now, peer, Some(session), session, req, out, tx)
    }

    #[allow(clippy::too_many_arguments)]
    fn request_deferrable(
        &mut self,
        now: Instant,
        peer: IpAddr,
        session: Option<SessionId>,
        conn: SessionId,
        req: &Request<'_>,
        out: &mut Vec<u8>,
        tx: &mut impl Transmit,
    ) -> bool {
        if self.cluster.is_none() {
            self.handle_request_on(now, peer, session, req, out, tx);
            return true;
        }
        let origin = (peer.to_canonical(), session);
        let early = match *req {
            Request::Create {
                room,
                user,
                password,
                capacity,
                resume_key,
            } => self.defer_create(
                now, origin, conn, room, user, password, capacity, resume_key,
            ),
            Request::Join {
                room,
                user,
                password,
                resume_key,
            } => {
                let local = self.by_name.get(room).copied().filter(|k| {
                    !self
                        .cluster
                        .as_ref()
                        .is_some_and(|c| c.mirrors.contains_key(k))
                });
                if let Some(key) = local {
                    self.handle_request_on(now, peer, session, req, out, tx);
                    // Its member count may have changed: the record says it.
                    if let Some(c) = self.cluster.as_mut() {
                        c.touched.push(key);
                    }
                    return true;
                }
                self.defer_join(now, origin, conn, room, user, password, resume_key)
            }
            Request::Resume {
                room,
                token,
                resume_key,
            } => {
                let here = <&crate::server::token::Token>::try_from(token)
                    .is_ok_and(|t| self.by_token.contains_key(t));
                if here {
                    self.handle_request_on(now, peer, session, req, out, tx);
                    return true;
                }
                self.defer_resume(now, origin, conn, room, token, resume_key)
            }
            _ => {
                self.handle_request_on(now, peer, session, req, out, tx);
                return true;
            }
        };
        match early {
            Some(status) => {
                self.answer(req.operation(), req.room().as_bytes(), Err(status), out);
                true
            }
            None => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn defer_create(
        &mut self,
        now: Instant,
        origin: Origin,
        conn: SessionId,
        room: &str,
        user: &str,
        password: &[u8],
        capacity: u16,
        resume_key: Option<&[u8]>,
    ) -> Option<Status> {
        let peer = origin.0;
        let c = self.cluster.as_ref()?;
        if self.by_name.contains_key(room) || c.registry.contains_key(room) {
            return Some(Status::RoomExists);
        }
        if self.rooms.len() >= self.cfg.max_rooms
            || self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
            || self.rooms_per_ip.at_cap(peer, self.cfg.max_rooms_per_ip)
        {
            return Some(Status::ServerFull);
        }
        let capacity = match capacity {
            0 => self.cfg.default_capacity,
            c => c.min(self.cfg.max_capacity),
        };
        let mut salt = [0u8; SALT_LEN];
        self.rng.fill_bytes(&mut salt);
        let c = self.cluster.as_mut()?;
        let record = RoomRecord::new(&c.node, capacity, password, salt);
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        let ticket = c.ticket();
        c.commands.push(Command::Create {
            ticket,
            key: room_key(room),
            record: bytes,
        });
        c.pending.insert(
            ticket,
            (
                now + REQUEST_DEADLINE,
                Pending::Create {
                    conn,
                    origin,
                    room: room.to_owned(),
                    user: user.to_owned(),
                    password: password.to_vec(),
                    capacity,
                    resume_key: resume_key.map(<[u8]>::to_vec),
                    record,
                },
            ),
        );
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn defer_join(
        &mut self,
        now: Instant,
        origin: Origin,
        conn: SessionId,
        room: &str,
        user: &str,
        password: &[u8],
        resume_key: Option<&[u8]>,
    ) -> Option<Status> {
        let peer = origin.0;
        if self.throttle.is_throttled(peer, now) {
            return Some(Status::TooManyRequests);
        }
        let c = self.cluster.as_ref()?;
        let Some(reg) = c.registry.get(room) else {
            return Some(Status::RoomNotFound);
        };
        let record = reg.record.clone();
        if !record.password_ok(password) {
            self.record_failure(peer, now);
            return Some(Status::BadPassword);
        }
        if self.members.len() >= self.cfg.max_members
            || self
                .members_per_ip
                .at_cap(peer, self.cfg.max_members_per_ip)
        {
            return Some(Status::ServerFull);
        }
        let c = self.cluster.as_mut()?;
        // Hear the room before asking: what the owner publishes after its answer is not
        // missed (the subscription reaches NATS before the question).
        c.commands.push(Command::Subscribe {
            room: room.to_owned(),
        });
        let ticket = c.ticket();
        let mut bytes = Vec::new();
        Msg::Join {
            room,
            node: &c.node,
            user,
        }
        .encode(&mut bytes);
        c.commands.push(Command::Ask {
            ticket,
            subject: subject::ask(&record.owner),
            bytes,
        });
        c.pending.insert(
            ticket,
            (
                now + REQUEST_DEADLINE,
                Pending::Join {
                    conn,
                    origin,
                    room: room.to_owned(),
                    user: user.to_owned(),
                    resume_key: resume_key.map(<[u8]>::to_vec),
                    record,
                },
            ),
        );
        None
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
        let Relay { cluster, rooms, .. } = self;
        let Some(c) = cluster.as_mut() else {
            return;
        };
        for &key in &touched {
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
            Notice::NodeDown { node } => self.on_node_down(now, &node, tx),
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

    fn on_created(
        &mut self,
        now: Instant,
        ticket: u64,
        key: String,
        result: Result<u64, Status>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if !matches!(c.pending.get(&ticket), Some((_, Pending::Create { .. }))) {
            // Too late: it was answered SERVER_FULL at its deadline. A record made after
            // all names this node and holds no room: delete it.
            if result.is_ok() {
                debug!("cluster: a late CREATE's record {key} is deleted");
                c.commands.push(Command::Delete { key });
            }
            return;
        }
        self.settle(now, ticket, result, tx);
    }

    /// Ends a deferred request: `Ok` carries the record revision (CREATE) or nothing
    /// (JOIN); `Err` its status.
    fn settle(
        &mut self,
        now: Instant,
        ticket: u64,
        result: Result<u64, Status>,
        tx: &mut impl Transmit,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let Some((_, pending)) = c.pending.remove(&ticket) else {
            return;
        };
        match pending {
            Pending::Create {
                conn,
                origin,
                room,
                user,
                password,
                capacity,
                resume_key,
                record,
            } => {
                let key = room_key(&room);
                let made = match result {
                    Ok(rev) => {
                        let made = self.create(now, origin, &room, &user, &password, capacity);
                        match made {
                            Ok(Some(host)) => {
                                self.set_resume_key(Some(host), resume_key.as_deref());
                                let rk = self.members[host].room;
                                self.rooms[rk].backplane = Some(Vec::new());
                                if let Some(c) = self.cluster.as_mut() {
                                    c.owned.insert(
                                        rk,
                                        Owned {
                                            key,
                                            revision: rev,
                                            members: 1,
                                            record,
                                        },
                                    );
                                }
                            }
                            _ => {
                                if let Some(c) = self.cluster.as_mut() {
                                    c.commands.push(Command::Delete { key });
                                }
                            }
                        }
                        made
                    }
                    Err(s) => Err(s),
                };
                let mut out = Vec::new();
                self.answer(Operation::Create, room.as_bytes(), made, &mut out);
                if let Some(c) = self.cluster.as_mut() {
                    c.answers.push((conn, out));
                }
            }
            Pending::Join {
                conn,
                origin,
                room,
                user,
                resume_key,
                record,
            } => {
                let joined = match result {
                    Ok(_) => self.join_mirror(now, origin, &room, &user, &record, tx),
                    Err(s) => Err(s),
                };
                if let Ok(Some(m)) = joined {
                    self.set_resume_key(Some(m), resume_key.as_deref());
                }
                if joined.is_err() && !self.by_name.contains_key(room.as_str()) {
                    if let Some(c) = self.cluster.as_mut() {
                        c.commands.push(Command::Unsubscribe { room: room.clone() });
                    }
                }
                let mut out = Vec::new();
                self.answer(Operation::Join, room.as_bytes(), joined, &mut out);
                if let Some(c) = self.cluster.as_mut() {
                    c.answers.push((conn, out));
                }
            }
            Pending::Resume(r) => {
                let result = match result {
                    Ok(_) => Err(Status::ServerFull),
                    Err(s) => Err(s),
                };
                let mut out = Vec::new();
                self.answer(Operation::Resume, r.room.as_bytes(), result, &mut out);
                if let Some(c) = self.cluster.as_mut() {
                    c.answers.push((r.conn, out));
                }
            }
            Pending::Repair { room, id } => {
                // Timed out: take the next batch wherever it starts.
                if let Some(r) = self.rooms.get_mut(room).filter(|r| r.id == id) {
                    r.forget_seq();
                }
                if let Some(m) = self.cluster.as_mut().and_then(|c| c.mirrors.get_mut(&room)) {
                    m.repairing = None;
                }
            }
        }
    }

    /// The owner said yes: the member enters this node's mirror of the room (made now if
    /// it is the first here).
    fn join_mirror(
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
    fn mirror_for(
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
    fn drop_mirror(&mut self, key: usize) {
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

    /// The hook of `emit`: in a mirror, an event is the owner's to sequence: forwarded
    /// (true), not emitted here.
    pub(super) fn forward_to_owner(
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
        c.publish(
            subject,
            &Msg::Forward(Forward {
                room: &r.name,
                node: &node,
                kind,
                user,
                body,
            }),
        );
        true
    }

    /// [`Relay::forward_to_owner`] in the name of member `key`.
    /// A member timing out on a mirror is owed the owner's TIMED_OUT: its address is kept
    /// for it.
    pub(super) fn forward_from(
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

    /// An owner hears an event of a remote member.
    fn on_forward(&mut self, now: Instant, f: Forward<'_>, tx: &mut impl Transmit) {
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
    fn remove_remote(&mut self, key: usize, tx: &mut impl Transmit) {
        if let Some(c) = self.cluster.as_mut() {
            c.remote.remove(&key);
        }
        self.counters.members_left += 1;
        self.remove_member(key, Entry::Pending, tx);
    }

    /// A node is gone: mirrors of its rooms close (`host unreachable`), its members leave
    /// our rooms (TIMED_OUT), its records leave the registry (the cluster thread deletes
    /// them in NATS).
    fn on_node_down(&mut self, now: Instant, node: &str, tx: &mut impl Transmit) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.registry.retain(|_, r| r.record.owner != node);
        let mirrors: Vec<usize> = c
            .mirrors
            .iter()
            .filter(|(_, m)| *m.owner == *node)
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

    /// A mirror takes a batch of its owner's (live, or a repair).
    fn on_batch(
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

    fn ask_repair(&mut self, now: Instant, key: usize, from: u32, count: u16) {
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

    /// Another node asks: may a member join (an owned room)? Which events did it miss?
    fn on_asked(&mut self, now: Instant, reply: String, bytes: &[u8], tx: &mut impl Transmit) {
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
    fn admit_remote(&mut self, now: Instant, room: &str, node: &str, user: &str) -> Status {
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
        if let Some(c) = self.cluster.as_mut() {
            c.set_remote(m, &self.members, node);
            c.touched.push(key);
        }
        info!("'{user}' joined room '{room}' on node '{node}'");
        Status::Ok
    }

    /// The held part of `count` events from `from` of an owned room, as an EVENTS message.
    fn history_answer(&self, room: &str, from: u32, count: u16) -> Vec<u8> {
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
            Pending::Join { .. } => {
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
            Pending::Create { .. } => {}
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
