//! The rooms whose outbox holds events, and when each is to be sent.
//!
//! Two lists: rooms due at the end of this wake-up (the common case, and the only one when
//! nothing is held), and rooms holding their outbox until a deadline (adaptive coalescing,
//! `server/coalesce.rs`). Held rooms are kept in the order they started holding. The hold
//! changes slowly, so their deadlines are nearly in order; one that is earlier than the
//! one before it waits for that one, which is never later than its own start plus the
//! largest hold: the bound on added latency stays `--max-hold-us`. That keeps each push and
//! pop O(1) with no heap.

use std::collections::VecDeque;
use std::time::Instant;

/// One room's place in the queue: its key and its generation, so that the entry of a room
/// closed meanwhile is skipped rather than flushing a newcomer in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::server) struct Entry {
    pub key: usize,
    pub id: u64,
}

/// Rooms to flush, now or at a deadline.
#[derive(Debug, Default)]
pub(in crate::server) struct FlushQueue {
    now: Vec<Entry>,
    held: VecDeque<(Instant, Entry)>,
}

impl FlushQueue {
    /// Queues a room for the end of this wake-up.
    pub fn push_now(&mut self, e: Entry) {
        self.now.push(e);
    }

    /// Queues a room to be flushed at `due`.
    pub fn push_held(&mut self, due: Instant, e: Entry) {
        self.held.push_back((due, e));
    }

    /// The earliest deadline of a held room, if any (the first in line).
    pub fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|&(t, _)| t)
    }

    /// Takes the rooms due at `now` (every room queued for this wake-up, then the held ones
    /// whose deadline has come) into `out`.
    pub fn take_due(&mut self, now: Instant, out: &mut Vec<Entry>) {
        out.append(&mut self.now);
        while let Some(&(due, e)) = self.held.front() {
            if due > now {
                break;
            }
            self.held.pop_front();
            out.push(e);
        }
    }

    /// Takes every queued room, held or not, into `out`.
    pub fn take_all(&mut self, out: &mut Vec<Entry>) {
        out.append(&mut self.now);
        out.extend(self.held.drain(..).map(|(_, e)| e));
    }

    /// How many entries are queued (some may be stale).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.now.len() + self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn e(key: usize) -> Entry {
        Entry {
            key,
            id: key as u64,
        }
    }

    #[test]
    fn rooms_due_now_leave_first_and_held_ones_at_their_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis(1);
        let mut q = FlushQueue::default();
        q.push_held(t0 + ms, e(1));
        q.push_now(e(2));
        q.push_held(t0 + 2 * ms, e(3));
        assert_eq!(q.next_due(), Some(t0 + ms));
        let mut out = Vec::new();
        q.take_due(t0, &mut out);
        assert_eq!(out, vec![e(2)]);
        out.clear();
        q.take_due(t0 + ms, &mut out);
        assert_eq!(out, vec![e(1)]);
        assert_eq!(q.next_due(), Some(t0 + 2 * ms));
        out.clear();
        q.push_now(e(4));
        q.take_all(&mut out);
        assert_eq!(out, vec![e(4), e(3)]);
        assert_eq!(q.len(), 0);
        assert_eq!(q.next_due(), None);
    }
}
