//! One room: its members, the addresses its datagrams go to, its Seq and its outbox.
//!
//! An outbox is one datagram's worth of encoded events. Events are encoded once; the whole
//! outbox is handed to a [`Transmit`] with the room's bound members as destinations, so
//! every member gets the same bytes. An outbox is sent when it is full (another event of
//! the same size would not fit), when it holds `batch_max` events, when the room's bound
//! members change, or when the relay flushes the rooms it queued: at the end of the
//! wake-up, or, for a busy room on a busy server, when its hold is over (adaptive
//! coalescing, `server/coalesce.rs`). At low load a datagram thus carries one event and
//! leaves at once; under load datagrams fill up.
//!
//! The room owns the rule that makes this correct: **its outbox is flushed before its bound
//! set changes** ([`Room::bind`], [`Room::remove`], [`Room::close`] all do it first), so each
//! datagram holds only events that all its receivers are to see, and no caller can forget.
//!
//! A room knows member keys, not members: names live in the relay's member table and are
//! lent to [`Room::emit`] as `&str`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::counters::Counters;
use super::transmit::{Addr, Dest, SessionId, Transmit};
use crate::protocol::event::{Event, EventBuf, EventKind};
use crate::protocol::{MAX_DATAGRAM, next_seq};

pub mod history;
pub mod mirror;
pub mod queue;

use history::History;
use queue::{Entry, FlushQueue};

/// Outbox buffers of rooms that hold no events, for the next room that needs one. A room
/// holds a buffer (one datagram's worth, 4 KiB) only while it has events to send, so that
/// 10 000 quiet rooms do not keep 40 MB of empty buffers; taking and giving one back is a
/// `Vec` pop and push, no allocation once the pool has grown.
#[derive(Debug, Default)]
pub(super) struct Spares(Vec<EventBuf>);

/// Most spare buffers kept (1 MiB): past a burst that queued more rooms than this at once,
/// the extra buffers are freed rather than held for ever.
const MAX_SPARES: usize = 256;

impl Spares {
    fn take(&mut self) -> EventBuf {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, mut buf: EventBuf) {
        if self.0.len() < MAX_SPARES {
            buf.clear();
            self.0.push(buf);
        }
    }
}

/// What an emitted event may need besides the room: where sends are counted, how many
/// events a datagram may carry, the rooms to flush, how long a busy room may hold, and the
/// spare outbox buffers.
pub(super) struct Outflow<'a> {
    /// Counts events, datagrams, deliveries and refused sends.
    pub counters: &'a mut Counters,
    /// Most events in one datagram.
    pub batch_max: usize,
    /// The rooms whose outbox holds events, and when each is due.
    pub queue: &'a mut FlushQueue,
    /// The time of the event.
    pub now: Instant,
    /// How long a busy room may hold its outbox now (zero: flush at the end of the
    /// wake-up).
    pub hold: Duration,
    /// Where an outbox buffer comes from and goes back to.
    pub spares: &'a mut Spares,
}

/// A room. Its name, password, capacity, host and creator never change once created.
#[derive(Debug)]
pub(super) struct Room {
    /// Its key in the relay's room table (so that it can queue itself for a flush).
    key: usize,
    /// Generation, so that stale tail-notice entries for a reused slot are recognised.
    pub id: u64,
    pub name: Box<str>,
    pub password: Option<Box<[u8]>>,
    pub capacity: u16,
    /// The member whose departure closes the room.
    pub host: usize,
    /// Whose per-IP room count the room is on.
    pub creator_ip: IpAddr,
    /// Every member key, bound or not.
    members: Vec<usize>,
    /// Destinations of the room's datagrams: the bound members' addresses...
    bound: Vec<Dest>,
    /// ...and, at the same index, whose address each one is.
    bound_keys: Vec<usize>,
    /// The WebSocket sessions of the bound members that came over the web (PROTOCOL.md
    /// §6)...
    sessions: Vec<SessionId>,
    /// ...and, at the same index, whose session each one is.
    session_keys: Vec<usize>,
    /// Seq of the last event (0: none yet).
    seq: u32,
    /// Its pending events; a buffer only while it holds some (see [`Spares`]).
    outbox: Option<EventBuf>,
    /// Whether the room is on the relay's list of outboxes to flush.
    queued: bool,
    /// When its last event was emitted: a room with another event within the hold is busy,
    /// and may hold its outbox.
    last_event: Option<Instant>,
    /// (v1.1) The latest events' bytes, for NACK.
    history: History,
    /// (v1.1) When the tail notice for the latest event is due; `None` once it went out
    /// (or before any event).
    pub tail_due: Option<Instant>,
    /// (v1.1) Whether the relay's tail queue holds an entry for this room.
    pub tail_scheduled: bool,
    /// (cluster) A room of this node shared with others: each datagram sent, for the
    /// backplane (`None` without `--cluster`: nothing is copied).
    pub backplane: Option<Vec<Vec<u8>>>,
}

/// Where a new room is and what it keeps.
pub(super) struct Slot {
    /// Its key in the relay's room table.
    pub key: usize,
    /// Its generation.
    pub id: u64,
    /// Most events its history keeps (`--history`).
    pub history: usize,
}

impl Room {
    /// A room at `key` of the relay's table, with `host` as its only member, not bound.
    pub fn new(
        slot: Slot,
        name: &str,
        password: &[u8],
        capacity: u16,
        host: (usize, IpAddr),
    ) -> Room {
        Room {
            key: slot.key,
            id: slot.id,
            name: name.into(),
            password: (!password.is_empty()).then(|| password.into()),
            capacity,
            host: host.0,
            creator_ip: host.1,
            members: vec![host.0],
            bound: Vec::new(),
            bound_keys: Vec::new(),
            sessions: Vec::new(),
            session_keys: Vec::new(),
            seq: 0,
            outbox: None,
            queued: false,
            last_event: None,
            history: History::new(slot.history),
            tail_due: None,
            tail_scheduled: false,
            backplane: None,
        }
    }

    /// Seq of the last event (0: none yet).
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// The events the room still holds.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Sheds the oldest held event (the server-wide history cap); returns its length.
    pub fn shed_oldest(&mut self, counters: &mut Counters) -> usize {
        self.history.shed_oldest(counters)
    }

    /// Gives back memory a shed ring no longer needs.
    pub fn trim_history(&mut self) {
        self.history.trim();
    }

    /// Every member key, bound or not, in order of joining (but for removals).
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The bound members: each one's destination and key.
    pub fn bound(&self) -> impl Iterator<Item = (Addr, usize)> {
        let udp = self.bound.iter().map(|&d| Addr::Udp(d));
        let web = self.sessions.iter().map(|&s| Addr::Session(s));
        udp.zip(self.bound_keys.iter().copied())
            .chain(web.zip(self.session_keys.iter().copied()))
    }

    /// How many members have bound an address (UDP or a session).
    pub fn bound_len(&self) -> usize {
        self.bound.len() + self.sessions.len()
    }

    /// Adds a member (not bound yet: it hears nothing until [`Room::bind`]).
    pub fn admit(&mut self, member: usize) {
        self.members.push(member);
    }

    /// Appends one event to the outbox, with the next Seq: flushes first if it would not
    /// fit, and after if the batch is full or another event of its size would not fit;
    /// otherwise queues the room: held for `out.hold` if the room is busy (its previous
    /// event came within the hold), else for the end of the wake-up.
    pub fn emit(
        &mut self,
        kind: EventKind,
        user: &str,
        body: &str,
        out: &mut Outflow<'_>,
        tx: &mut impl Transmit,
    ) {
        let len = self.append(kind, user, body, out.counters, out.spares, tx);
        let full = self
            .outbox
            .as_ref()
            .is_some_and(|b| b.events() >= out.batch_max || !b.fits_len(len));
        if full {
            self.flush(out.counters, tx);
            if !self.queued {
                self.release(out.spares);
            }
        } else if !self.queued {
            self.queued = true;
            let entry = Entry {
                key: self.key,
                id: self.id,
            };
            // Busy: the previous event came within the hold (no clock arithmetic while
            // nothing is held, the common case).
            let busy = !out.hold.is_zero()
                && self
                    .last_event
                    .is_some_and(|t| out.now.saturating_duration_since(t) < out.hold);
            if busy {
                out.queue.push_held(out.now + out.hold, entry);
            } else {
                out.queue.push_now(entry);
            }
        }
        self.last_event = Some(out.now);
    }

    /// Encodes one event into the outbox with the next Seq, flushing first if it would not
    /// fit; returns its encoded length.
    fn append(
        &mut self,
        kind: EventKind,
        user: &str,
        body: &str,
        counters: &mut Counters,
        spares: &mut Spares,
        tx: &mut impl Transmit,
    ) -> usize {
        self.seq = next_seq(self.seq);
        let ev = Event {
            kind: kind as u8,
            seq: self.seq,
            user,
            body,
        };
        debug_assert!(ev.len() <= MAX_DATAGRAM, "every event fits in one datagram");
        if self.outbox.as_ref().is_some_and(|b| !b.fits(&ev)) {
            self.flush(counters, tx);
        }
        let outbox = self.outbox.get_or_insert_with(|| spares.take());
        outbox.push(&ev);
        counters.events += 1;
        // Encoded once: the ring keeps the bytes just written to the outbox.
        let bytes = outbox.bytes();
        self.history
            .push(self.seq, &bytes[bytes.len() - ev.len()..], counters);
        ev.len()
    }

    /// Sends the outbox, if it holds events, to every bound member (counting datagrams,
    /// deliveries and refused sends), and empties it: the same bytes to the UDP members and
    /// to the WebSocket members.
    pub fn flush(&mut self, counters: &mut Counters, tx: &mut impl Transmit) {
        let Some(outbox) = self.outbox.as_mut().filter(|b| !b.is_empty()) else {
            return;
        };
        if !self.bound.is_empty() {
            let sent = tx.send(outbox.bytes(), &self.bound);
            counters.datagrams_out += sent as u64;
            counters.deliveries += (sent * outbox.events()) as u64;
            counters.send_drops += (self.bound.len() - sent) as u64;
        }
        if !self.sessions.is_empty() {
            let sent = tx.send_sessions(outbox.bytes(), &self.sessions);
            counters.datagrams_out += sent as u64;
            counters.deliveries += (sent * outbox.events()) as u64;
            counters.send_drops += (self.sessions.len() - sent) as u64;
        }
        if let Some(b) = &mut self.backplane {
            b.push(outbox.bytes().to_vec());
        }
        outbox.clear();
    }

    /// The end-of-wake-up flush: takes the room off the queue, then [`Room::flush`], and
    /// gives its outbox buffer back.
    pub fn flush_queued(
        &mut self,
        counters: &mut Counters,
        spares: &mut Spares,
        tx: &mut impl Transmit,
    ) {
        self.queued = false;
        self.flush(counters, tx);
        self.release(spares);
    }

    /// Gives the outbox buffer back to `spares` (it is empty: called after a flush).
    fn release(&mut self, spares: &mut Spares) {
        if let Some(buf) = self.outbox.take() {
            debug_assert!(buf.is_empty(), "only a flushed outbox is given back");
            spares.give(buf);
        }
    }

    /// Binds a member to `dest`: the room's datagrams go there from now on. What is queued
    /// goes to the old set first.
    pub fn bind(
        &mut self,
        member: usize,
        addr: Addr,
        counters: &mut Counters,
        tx: &mut impl Transmit,
    ) {
        self.flush(counters, tx);
        match addr {
            Addr::Udp(dest) => {
                self.bound.push(dest);
                self.bound_keys.push(member);
            }
            Addr::Session(session) => {
                self.sessions.push(session);
                self.session_keys.push(member);
            }
        }
    }

    /// Removes a member, bound or not (it hears nothing more). What is queued goes first, to
    /// the old membership: so a TIMED_OUT for this member leaves before a newcomer can take
    /// its name.
    pub fn remove(&mut self, member: usize, counters: &mut Counters, tx: &mut impl Transmit) {
        self.unbind(member, counters, tx);
        self.members.retain(|&k| k != member);
    }

    /// Unbinds a member that stays in the room (RESUME): it hears nothing until it binds
    /// again. What is queued goes first, to the old set, this member included.
    pub fn unbind(&mut self, member: usize, counters: &mut Counters, tx: &mut impl Transmit) {
        self.flush(counters, tx);
        if let Some(i) = self.bound_keys.iter().position(|&k| k == member) {
            self.bound_keys.swap_remove(i);
            self.bound.swap_remove(i);
        } else if let Some(i) = self.session_keys.iter().position(|&k| k == member) {
            self.session_keys.swap_remove(i);
            self.sessions.swap_remove(i);
        }
    }

    /// Sends ROOM_CLOSED with `why` after whatever is queued, to every bound member, and
    /// ends the history. The caller then voids the members' tokens and drops the room.
    pub fn close(
        &mut self,
        why: &str,
        counters: &mut Counters,
        spares: &mut Spares,
        tx: &mut impl Transmit,
    ) {
        self.append(EventKind::RoomClosed, "", why, counters, spares, tx);
        self.flush(counters, tx);
        self.release(spares);
        self.history.clear(counters);
    }

    /// Checks the room's own rules (`key` is where the relay holds it); `Err` names the
    /// first one broken.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn check(&self, key: usize, batch_max: usize, max_capacity: u16) -> Result<(), String> {
        let name = &self.name;
        if self.key != key {
            return Err(format!("room '{name}' thinks it is at {}", self.key));
        }
        if self.members.iter().filter(|&&k| k == self.host).count() != 1 {
            return Err(format!("room '{name}' has no host"));
        }
        if self.members.len() > usize::from(self.capacity) || self.capacity > max_capacity {
            return Err(format!("room '{name}' over capacity"));
        }
        if self.bound.len() != self.bound_keys.len()
            || self.sessions.len() != self.session_keys.len()
        {
            return Err(format!("room '{name}' bound lists differ"));
        }
        let held = self.outbox.as_ref().map_or(0, EventBuf::events);
        if held >= batch_max {
            return Err(format!("room '{name}' holds a full batch"));
        }
        if held > 0 && !self.queued {
            return Err(format!("room '{name}' holds events but is not queued"));
        }
        if self.outbox.is_some() && !self.queued {
            return Err(format!("room '{name}' keeps a buffer while not queued"));
        }
        self.history.check()?;
        if !self.history.is_empty() && self.history.newest() != self.seq {
            return Err(format!("room '{name}' history does not end at its Seq"));
        }
        Ok(())
    }

    /// Sets the Seq of the last event, to test the wrap past zero.
    #[cfg(test)]
    pub fn set_seq(&mut self, seq: u32) {
        self.seq = seq;
    }
}

#[cfg(test)]
mod tests;
