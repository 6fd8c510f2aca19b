//! (cluster) A mirror: this node's copy of a room owned by another node.
//!
//! A mirror holds its local members and their addresses like any room, but no Seq
//! authority: its events are the owner's datagrams, taken whole from the backplane and
//! sent on as they are (the same bytes every member everywhere gets), and kept in the
//! mirror's history so that NACKs are answered here. The mirror's Seq is the last Seq it
//! took: a batch that does not follow it is a gap, repaired from the owner.

use crate::protocol::MAX_DATAGRAM;
use crate::protocol::event::{EventKind, RawEvents};
use crate::server::counters::Counters;
use crate::server::room::Room;
use crate::server::room::history::seq_distance;
use crate::server::transmit::Transmit;

/// Seqs further ahead than this (serially) are behind, not ahead.
const HALF_CYCLE: u64 = 1 << 31;
/// Most events one repair asks for (a NACK's most).
pub const MAX_REPAIR: u64 = 512;

/// How a batch is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// From the room's subject: it must follow the mirror's Seq.
    Live,
    /// The owner's answer to a repair, or the first batch after a failed one: taken from
    /// wherever it starts (what it skips is gone at the owner too).
    Jump,
}

/// What came of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Taken {
    /// Events sent on to the members.
    pub events: usize,
    /// A ROOM_CLOSED was among them: the room is over.
    pub closed: bool,
    /// Members that left or timed out (by name): the mirror drops those that are its own.
    pub gone: Vec<Box<str>>,
    /// A gap before the batch (the batch was not taken): (first missing Seq, how many).
    pub gap: Option<(u32, u16)>,
    /// The batch did not parse (dropped).
    pub malformed: bool,
}

impl Room {
    /// Takes one datagram (or a repair's run of events) of the owner's: sends the events
    /// this mirror has not yet had to its bound members, keeps them in its history and
    /// moves its Seq.
    pub fn take_batch(
        &mut self,
        bytes: &[u8],
        how: Take,
        counters: &mut Counters,
        tx: &mut impl Transmit,
    ) -> Taken {
        let mut taken = Taken::default();
        // Check all of it before taking any of it.
        let mut first = None;
        let mut last = 0;
        for ev in RawEvents::new(bytes) {
            let Ok(ev) = ev else {
                taken.malformed = true;
                return taken;
            };
            if ev.seq == 0 {
                taken.malformed = true;
                return taken;
            }
            first.get_or_insert(ev.seq);
            last = ev.seq;
        }
        let Some(first) = first else {
            return taken;
        };
        if how == Take::Live && self.seq != 0 {
            let ahead = seq_distance(self.seq, first);
            if ahead > 1 && ahead < HALF_CYCLE {
                let missing = seq_distance(self.seq, last).min(MAX_REPAIR);
                taken.gap = Some((crate::protocol::next_seq(self.seq), missing as u16));
                return taken;
            }
        }
        let mut at = 0;
        let mut run: Option<(usize, usize)> = None;
        for ev in RawEvents::new(bytes).flatten() {
            let len = ev.len();
            let (start, end) = (at, at + len);
            at = end;
            let ahead = seq_distance(self.seq, ev.seq);
            if self.seq != 0 && (ahead == 0 || ahead >= HALF_CYCLE) {
                continue; // had it already
            }
            self.seq = ev.seq;
            self.history.push(ev.seq, &bytes[start..end], counters);
            taken.events += 1;
            match ev.known_kind() {
                Some(EventKind::RoomClosed) => taken.closed = true,
                Some(EventKind::Left | EventKind::TimedOut) => taken.gone.push(ev.user.into()),
                _ => {}
            }
            // Runs of new events go out as datagrams of at most MAX_DATAGRAM bytes.
            run = match run {
                Some((s, e)) if e == start && end - s <= MAX_DATAGRAM => Some((s, end)),
                Some((s, e)) => {
                    self.send_on(&bytes[s..e], counters, tx);
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = run {
            self.send_on(&bytes[s..e], counters, tx);
        }
        taken
    }

    /// Sends a run of the owner's events to the bound members, counted like a flush.
    fn send_on(&mut self, bytes: &[u8], counters: &mut Counters, tx: &mut impl Transmit) {
        let events = RawEvents::new(bytes).count();
        if !self.bound.is_empty() {
            let sent = tx.send(bytes, &self.bound);
            counters.datagrams_out += sent as u64;
            counters.deliveries += (sent * events) as u64;
            counters.send_drops += (self.bound.len() - sent) as u64;
        }
        if !self.sessions.is_empty() {
            let sent = tx.send_sessions(bytes, &self.sessions);
            counters.datagrams_out += sent as u64;
            counters.deliveries += (sent * events) as u64;
            counters.send_drops += (self.sessions.len() - sent) as u64;
        }
    }

    /// Whether the outbox holds events not yet sent (and so not yet on the backplane).
    pub fn holds_events(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Forgets the mirror's Seq: the next batch is taken wherever it starts (a repair that
    /// failed).
    pub fn forget_seq(&mut self) {
        self.seq = 0;
    }

    /// Ends a room without a word to anyone (a mirror whose ROOM_CLOSED already went out,
    /// or that has no members left): its history's bytes are given back.
    pub fn discard(&mut self, counters: &mut Counters) {
        self.outbox.clear();
        self.history.clear(counters);
    }
}
