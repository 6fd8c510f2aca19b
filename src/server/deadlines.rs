//! A deadline queue with lazy invalidation: idle expiry in O(expired), not a scan per tick.
//!
//! Owners keep each item's *current* deadline themselves and schedule an entry only when
//! none is pending for it. Refreshing an item (a heartbeat, say) just moves the owner's
//! deadline later, at no cost here; when the old entry surfaces, the owner sees the item is
//! not yet due and schedules it again at its new deadline. Each item thus has at most one
//! entry, and an entry is touched at most once per idle period.
//!
//! Entries carry the item's generation (`id`), so an entry left behind by an item that is
//! gone, or whose slab slot was reused, is recognised and skipped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A min-heap of `(deadline, key, id)`.
#[derive(Debug, Default)]
pub struct DeadlineQueue {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Entries whose item is gone (about; recounted exactly at each compaction).
    stale: usize,
}

/// Below this many stale entries, compaction is not worth a pass.
const COMPACT_MIN: usize = 1024;

impl DeadlineQueue {
    /// Schedules `key` (generation `id`) at `at`.
    pub fn schedule(&mut self, at: Instant, key: usize, id: u64) {
        self.heap.push(Reverse((at, key, id)));
    }

    /// The earliest pending entry's time: the event loop's poll timeout.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Notes that an item with a pending entry is gone, so that entry is garbage now.
    pub fn forget(&mut self) {
        self.stale += 1;
    }

    /// Notes that a popped entry was garbage.
    pub fn popped_stale(&mut self) {
        self.stale = self.stale.saturating_sub(1);
    }

    /// Drops garbage entries once they outnumber live ones, so that items created and
    /// removed faster than their deadlines pass (a CREATE/LEAVE loop, connection churn)
    /// cannot grow the heap without bound. `live(key, id)` says which entries to keep.
    /// Each pass is paid for by as many `forget`s: amortised O(log n) per item.
    pub fn compact_if_needed(&mut self, live: impl Fn(usize, u64) -> bool) {
        if self.stale > COMPACT_MIN && self.stale * 2 > self.heap.len() {
            self.heap.retain(|Reverse((_, key, id))| live(*key, *id));
            self.stale = 0;
        }
    }

    /// Entries pending (stale ones included).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        q.schedule(t0 + Duration::from_secs(3), 3, 0);
        q.schedule(t0 + Duration::from_secs(1), 1, 0);
        q.schedule(t0 + Duration::from_secs(2), 2, 7);
        assert_eq!(q.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(q.pop_due(t0), None);
        let due = t0 + Duration::from_secs(2);
        assert_eq!(q.pop_due(due).map(|e| e.1), Some(1));
        assert_eq!(q.pop_due(due).map(|e| (e.1, e.2)), Some((2, 7)));
        assert_eq!(q.pop_due(due), None);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn garbage_is_compacted_once_it_dominates() {
        let t0 = Instant::now();
        let mut q = DeadlineQueue::default();
        for key in 0..3000 {
            q.schedule(t0 + Duration::from_secs(60), key, 0);
        }
        // Items 0..2000 go away; below the threshold nothing happens yet.
        for _ in 0..1000 {
            q.forget();
        }
        q.compact_if_needed(|key, _| key >= 2000);
        assert_eq!(q.len(), 3000);
        for _ in 0..1000 {
            q.forget();
        }
        q.compact_if_needed(|key, _| key >= 2000);
        assert_eq!(q.len(), 1000);
        assert_eq!(q.next(), Some(t0 + Duration::from_secs(60)));
    }
}
