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
    /// The TIMED_OUT events among them, by name and where their bytes are in the batch
    /// (a member timed out on the mirror's node gets its own, §2.3).
    pub timed_out: Vec<(Box<str>, std::ops::Range<usize>)>,
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
            // Seq 0 is never a room event; no event is longer than a datagram.
            if ev.seq == 0 || ev.len() > MAX_DATAGRAM {
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
                Some(EventKind::Left) => taken.gone.push(ev.user.into()),
                Some(EventKind::TimedOut) => {
                    taken.gone.push(ev.user.into());
                    taken.timed_out.push((ev.user.into(), start..end));
                }
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
        self.outbox.as_ref().is_some_and(|b| !b.is_empty())
    }

    /// Forgets the mirror's Seq: the next batch is taken wherever it starts (a repair that
    /// failed).
    pub fn forget_seq(&mut self) {
        self.seq = 0;
    }

    /// Ends a room without a word to anyone (a mirror whose ROOM_CLOSED already went out,
    /// or that has no members left): its history's bytes are given back.
    pub fn discard(&mut self, counters: &mut Counters) {
        // Its buffer, if any, is dropped with it rather than pooled (a rare path).
        self.outbox = None;
        self.history.clear(counters);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, SocketAddr};

    use super::*;
    use crate::protocol::event::Events;
    use crate::server::room::{FlushQueue, Outflow, Slot, Spares};
    use crate::server::transmit::{Addr, Dest, Recorder};
    use std::time::{Duration, Instant};

    fn dest(port: u16) -> Dest {
        Dest {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            local: None,
        }
    }

    fn room(history: usize) -> Room {
        Room::new(
            Slot {
                key: 0,
                id: 0,
                history,
            },
            "r",
            b"",
            8,
            (0, IpAddr::from([127, 0, 0, 1])),
        )
    }

    /// An owner room sharing its datagrams, and a mirror with one member bound at port 9.
    struct Pair {
        owner: Room,
        mirror: Room,
        counters: Counters,
        spares: Spares,
        tx: Recorder,
    }

    impl Pair {
        fn new() -> Pair {
            let mut p = Pair {
                owner: room(64),
                mirror: room(64),
                counters: Counters::default(),
                spares: Spares::default(),
                tx: Recorder::default(),
            };
            p.owner.backplane = Some(Vec::new());
            p.mirror.remove(0, &mut p.counters, &mut p.tx);
            p.mirror.admit(5);
            p.mirror
                .bind(5, Addr::Udp(dest(9)), &mut p.counters, &mut p.tx);
            p
        }

        /// The owner emits `bodies` as one datagram; returns the backplane copy.
        fn batch(&mut self, bodies: &[&str]) -> Vec<u8> {
            let mut queue = FlushQueue::default();
            for b in bodies {
                let mut out = Outflow {
                    counters: &mut self.counters,
                    batch_max: 64,
                    queue: &mut queue,
                    now: Instant::now(),
                    hold: Duration::ZERO,
                    spares: &mut self.spares,
                };
                self.owner
                    .emit(EventKind::Message, "ann", b, &mut out, &mut self.tx);
            }
            self.owner
                .flush_queued(&mut self.counters, &mut self.spares, &mut self.tx);
            let mut b = self.owner.backplane.as_mut().unwrap().drain(..);
            let one = b.next().unwrap();
            assert!(b.next().is_none());
            one
        }

        fn take(&mut self, bytes: &[u8], how: Take) -> Taken {
            self.mirror
                .take_batch(bytes, how, &mut self.counters, &mut self.tx)
        }

        /// (Seq, body) of everything the mirror's member got, in order.
        fn got(&self) -> Vec<(u32, String)> {
            self.tx
                .to(dest(9).addr)
                .iter()
                .flat_map(|d| Events::new(d).flatten())
                .map(|e| (e.seq, e.body.to_string()))
                .collect()
        }
    }

    #[test]
    fn a_mirror_sends_the_owners_very_bytes_and_keeps_them_for_nack() {
        let mut p = Pair::new();
        let b = p.batch(&["one", "two"]);
        let t = p.take(&b, Take::Live);
        assert_eq!((t.events, t.gap, t.closed), (2, None, false));
        assert_eq!(p.tx.to(dest(9).addr), [b.as_slice()], "the same datagram");
        assert_eq!(p.mirror.seq(), 2);
        let h = p.mirror.history();
        assert_eq!((h.oldest(), h.len()), (1, 2));
        let (a, rest) = h.event(1);
        assert_eq!([a, rest].concat(), p.owner.history().event(1).0.to_vec());
    }

    #[test]
    fn a_repeated_batch_is_not_delivered_twice() {
        let mut p = Pair::new();
        let b = p.batch(&["one"]);
        p.take(&b, Take::Live);
        let again = p.take(&b, Take::Live);
        assert_eq!(again.events, 0);
        assert_eq!(p.got(), [(1, "one".to_string())]);
    }

    #[test]
    fn a_gap_is_reported_not_taken_and_the_repair_fills_it_in_order() {
        let mut p = Pair::new();
        let first = p.batch(&["one"]);
        p.take(&first, Take::Live);
        let lost = p.batch(&["two", "three"]);
        let next = p.batch(&["four"]);
        let t = p.take(&next, Take::Live);
        assert_eq!(t.gap, Some((2, 3)), "Seqs 2..=4 are asked for");
        assert_eq!(t.events, 0);
        // The owner's answer: its history from Seq 2 (what `HISTORY` sends).
        let h = p.owner.history();
        let repair: Vec<u8> = (1..4)
            .flat_map(|i| {
                let (a, b) = h.event(i);
                [a, b].concat()
            })
            .collect();
        let t = p.take(&repair, Take::Jump);
        assert_eq!(t.events, 3);
        let want: Vec<(u32, String)> = [(1, "one"), (2, "two"), (3, "three"), (4, "four")]
            .iter()
            .map(|&(s, b)| (s, b.to_string()))
            .collect();
        assert_eq!(p.got(), want);
        // The lost batch arriving late changes nothing.
        assert_eq!(p.take(&lost, Take::Live).events, 0);
        assert_eq!(p.got().len(), 4);
        assert_eq!(p.mirror.history().len(), 4);
    }

    #[test]
    fn a_jump_past_what_the_owner_still_holds_restarts_the_history() {
        let mut p = Pair::new();
        let first = p.batch(&["one"]);
        p.take(&first, Take::Live);
        p.batch(&["two"]);
        let later = p.batch(&["three"]);
        // No repair was possible: the next batch is taken where it starts.
        p.mirror.forget_seq();
        let t = p.take(&later, Take::Live);
        assert_eq!((t.events, t.gap), (1, None));
        assert_eq!(p.mirror.seq(), 3);
        let h = p.mirror.history();
        assert_eq!(
            (h.oldest(), h.len()),
            (3, 1),
            "the ring holds consecutive Seqs only"
        );
    }

    #[test]
    fn closing_and_departures_are_reported() {
        let mut p = Pair::new();
        let mut queue = FlushQueue::default();
        let mut out = Outflow {
            counters: &mut p.counters,
            batch_max: 64,
            queue: &mut queue,
            now: Instant::now(),
            hold: Duration::ZERO,
            spares: &mut p.spares,
        };
        p.owner
            .emit(EventKind::TimedOut, "bob", "", &mut out, &mut p.tx);
        p.owner
            .close("host left", &mut p.counters, &mut p.spares, &mut p.tx);
        let b: Vec<u8> = p.owner.backplane.take().unwrap().concat();
        let t = p.take(&b, Take::Live);
        assert!(t.closed);
        assert_eq!(t.gone, [Box::<str>::from("bob")]);
    }

    #[test]
    fn hostile_batches_are_dropped_whole() {
        let mut p = Pair::new();
        let mut b = p.batch(&["one"]);
        b.push(1); // a truncated second event
        let t = p.take(&b, Take::Live);
        assert!(t.malformed);
        assert_eq!(t.events, 0);
        // Seq 0 is never a room event.
        let mut zero = p.batch(&["two"]);
        zero[1..5].copy_from_slice(&[0; 4]);
        assert!(p.take(&zero, Take::Live).malformed);
        // An event longer than a datagram is not passed on.
        let mut long = vec![EventKind::Message as u8, 0, 0, 0, 9, 1, b'a'];
        long.extend_from_slice(&5000u16.to_be_bytes());
        long.extend(std::iter::repeat_n(b'x', 5000));
        assert!(p.take(&long, Take::Jump).malformed);
        assert!(p.got().is_empty());
        assert_eq!(p.take(&[], Take::Live), Taken::default());
    }
}
