//! A room's history (PROTOCOL.md §5.1): the exact bytes of its latest events of Kinds 1-5,
//! with their Seq, for NACK to resend.
//!
//! Encoded once: the room copies each event's bytes from its outbox, just after encoding it
//! there, into [`History::push`]; a NACK answer resends those bytes. The bytes live back to
//! back in one `VecDeque<u8>` (an event may straddle its wrap point), and a second deque
//! holds where each event starts. Both only ever take from the front and add at the back,
//! so once a ring has reached its size it reuses its memory: no allocation per event.
//!
//! Events in the ring have consecutive Seqs (every room event enters it, and only the
//! oldest ever leave), so the event with Seq `s` is at index `distance(oldest, s)`.

use std::collections::VecDeque;

use crate::protocol::next_seq;
use crate::server::counters::Counters;

/// Most event bytes one room keeps (§5.1): about 258 maximal events, or the whole
/// `--history` of short chat lines, without one room holding more than its share.
pub const ROOM_HISTORY_BYTES: usize = 1 << 20;

/// Spare capacity a trimmed ring keeps (bytes), so that trimming is not undone at once.
const TRIM_SLACK: usize = 16 << 10;

/// Where one held event's bytes are.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Position of its first byte, counted from the first byte ever pushed (so entries need
    /// no update when older bytes leave).
    start: u64,
    /// Its encoded length.
    len: u32,
}

/// The ring of one room.
#[derive(Debug)]
pub struct History {
    /// Most events kept (`--history`; 0 keeps none).
    max_events: usize,
    bytes: VecDeque<u8>,
    entries: VecDeque<Entry>,
    /// Position (as in [`Entry::start`]) of `bytes[0]`.
    base: u64,
    /// Seq of `entries[0]`; meaningless while empty.
    oldest: u32,
    /// Seq of the last entry; meaningless while empty.
    newest: u32,
}

impl History {
    /// An empty ring that keeps up to `max_events` events.
    pub fn new(max_events: usize) -> History {
        History {
            max_events,
            bytes: VecDeque::new(),
            entries: VecDeque::new(),
            base: 0,
            oldest: 0,
            newest: 0,
        }
    }

    /// Keeps the event `seq` whose encoded bytes are `event`, shedding the oldest events
    /// first as the caps require. Counts both in `counters`' history gauges.
    pub fn push(&mut self, seq: u32, event: &[u8], counters: &mut Counters) {
        if self.max_events == 0 || event.len() > ROOM_HISTORY_BYTES {
            return;
        }
        while self.entries.len() >= self.max_events
            || self.bytes.len() + event.len() > ROOM_HISTORY_BYTES
        {
            self.shed_oldest(counters);
        }
        if !self.entries.is_empty() && seq != next_seq(self.newest) {
            // Room events are consecutive; only a test that sets a room's Seq gets here.
            self.clear(counters);
        }
        if self.entries.is_empty() {
            self.oldest = seq;
        }
        self.entries.push_back(Entry {
            start: self.base + self.bytes.len() as u64,
            len: event.len() as u32,
        });
        self.bytes.extend(event);
        self.newest = seq;
        counters.history_events += 1;
        counters.history_bytes += event.len() as u64;
    }

    /// Drops the oldest event; returns its length (0 when the ring was empty).
    pub fn shed_oldest(&mut self, counters: &mut Counters) -> usize {
        let Some(e) = self.entries.pop_front() else {
            return 0;
        };
        debug_assert_eq!(e.start, self.base);
        let len = e.len as usize;
        self.bytes.drain(..len);
        self.base += u64::from(e.len);
        self.oldest = next_seq(self.oldest);
        counters.history_events -= 1;
        counters.history_bytes -= len as u64;
        len
    }

    /// Gives memory back after the server-wide cap shed much of the ring: a ring keeps its
    /// capacity otherwise (so that a full ring allocates nothing per event), and the cap is
    /// meant to bound memory, not just the bytes counted.
    pub fn trim(&mut self) {
        if self.bytes.capacity() > 2 * self.bytes.len() + TRIM_SLACK {
            self.bytes.shrink_to(self.bytes.len() + TRIM_SLACK);
            self.entries.shrink_to(self.entries.len() + TRIM_SLACK / 64);
        }
    }

    /// Drops everything (the room ends), taking it off the gauges.
    pub fn clear(&mut self, counters: &mut Counters) {
        counters.history_events -= self.entries.len() as u64;
        counters.history_bytes -= self.bytes.len() as u64;
        self.base += self.bytes.len() as u64;
        self.entries.clear();
        self.bytes.clear();
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Whether no event is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Event bytes held.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// Seq of the oldest event held (meaningless while empty).
    pub fn oldest(&self) -> u32 {
        self.oldest
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Seq of the newest event held (meaningless while empty).
    pub fn newest(&self) -> u32 {
        self.newest
    }

    /// The bytes of the event at `index` (0: the oldest), in one or two pieces (an event may
    /// straddle the ring's wrap point).
    pub fn event(&self, index: usize) -> (&[u8], &[u8]) {
        let e = self.entries[index];
        let (off, len) = ((e.start - self.base) as usize, e.len as usize);
        let (a, b) = self.bytes.as_slices();
        if off >= a.len() {
            (&b[off - a.len()..off - a.len() + len], &[])
        } else if off + len <= a.len() {
            (&a[off..off + len], &[])
        } else {
            (&a[off..], &b[..off + len - a.len()])
        }
    }

    /// Checks the ring's own rules; `Err` names the first one broken.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn check(&self) -> Result<(), String> {
        if self.entries.len() > self.max_events || self.bytes.len() > ROOM_HISTORY_BYTES {
            return Err("history over its caps".into());
        }
        if !self.is_empty() && seq_add(self.oldest, self.len() as u64 - 1) != self.newest {
            return Err("history Seqs are not consecutive".into());
        }
        let sum: u64 = self.entries.iter().map(|e| u64::from(e.len)).sum();
        if sum != self.bytes.len() as u64 {
            return Err("history entries do not cover its bytes".into());
        }
        Ok(())
    }
}

/// Room Seqs form a cycle of this many values: 1..=0xFFFFFFFF (0 is never a room Seq).
const SEQ_CYCLE: u64 = u32::MAX as u64;

/// Steps from Seq `from` to Seq `to` going forward along the cycle 1..=0xFFFFFFFF.
pub fn seq_distance(from: u32, to: u32) -> u64 {
    (u64::from(to) + SEQ_CYCLE - u64::from(from)) % SEQ_CYCLE
}

/// The Seq `steps` after `seq` along the cycle (skipping 0).
pub fn seq_add(seq: u32, steps: u64) -> u32 {
    ((u64::from(seq).max(1) - 1 + steps % SEQ_CYCLE) % SEQ_CYCLE + 1) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u32, len: usize) -> Vec<u8> {
        let mut v = vec![seq as u8; len];
        v[0] = 1;
        v
    }

    #[test]
    fn seq_arithmetic_skips_zero() {
        assert_eq!(seq_add(u32::MAX, 1), 1);
        assert_eq!(seq_add(5, 3), 8);
        assert_eq!(seq_distance(u32::MAX, 1), 1);
        assert_eq!(seq_distance(1, u32::MAX), SEQ_CYCLE - 1);
        assert_eq!(seq_distance(7, 7), 0);
        assert_eq!(seq_add(u32::MAX - 1, 3), 2);
    }

    #[test]
    fn keeps_the_newest_n_with_their_bytes() {
        let mut c = Counters::default();
        let mut h = History::new(3);
        for s in 1..=5 {
            h.push(s, &event(s, 10 + s as usize), &mut c);
        }
        assert_eq!((h.len(), h.oldest(), h.newest()), (3, 3, 5));
        assert_eq!(c.history_events, 3);
        assert_eq!(c.history_bytes, 13 + 14 + 15);
        for i in 0..3 {
            let (a, b) = h.event(i);
            assert!(b.is_empty() || !a.is_empty());
            assert_eq!([a, b].concat(), event(3 + i as u32, 13 + i));
        }
        h.check().unwrap();
        assert_eq!(seq_add(h.oldest(), h.len() as u64 - 1), h.newest());
        h.clear(&mut c);
        assert_eq!((c.history_events, c.history_bytes), (0, 0));
    }

    #[test]
    fn zero_keeps_nothing() {
        let mut c = Counters::default();
        let mut h = History::new(0);
        h.push(1, &event(1, 20), &mut c);
        assert!(h.is_empty());
        assert_eq!(c.history_bytes, 0);
    }

    #[test]
    fn a_mebibyte_at_most_and_events_straddle_the_wrap() {
        let mut c = Counters::default();
        let mut h = History::new(100_000);
        let mut seq = u32::MAX - 400;
        for _ in 0..1000 {
            seq = next_seq(seq);
            h.push(seq, &event(seq, 4063), &mut c);
            h.check().unwrap();
        }
        assert_eq!(h.len(), ROOM_HISTORY_BYTES / 4063);
        assert!(h.byte_len() <= ROOM_HISTORY_BYTES);
        assert_eq!(h.newest(), seq);
        for i in 0..h.len() {
            let (a, b) = h.event(i);
            let want = event(seq_add(h.oldest(), i as u64), 4063);
            assert_eq!([a, b].concat(), want, "event {i}");
        }
    }
}
