//! Per-sender arrival order at one receiver: in order, after a gap, late (out of order) or
//! duplicate. A sliding window of the last [`WINDOW`] sequence numbers (as in IPsec or DTLS
//! replay protection) tells a late arrival from a duplicate without a set per sender.

/// How many sequence numbers below the highest seen are remembered.
pub const WINDOW: u64 = 64;

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next one expected.
    InOrder,
    /// Newer than expected: this many were skipped (lost, or still to come late).
    Gap(u64),
    /// Older than the highest seen and not seen before: out of order. It fills a gap.
    Late,
    /// Seen before.
    Duplicate,
    /// Older than the window: out of order, or a duplicate; cannot tell which.
    TooOld,
}

/// The order state of one sender as seen by one receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OrderTracker {
    /// One past the highest sequence number seen.
    next: u64,
    /// Bit `i` set: `next - 1 - i` was seen.
    window: u64,
}

impl OrderTracker {
    /// Records the arrival of `seq` and says what it was.
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq >= self.next {
            let skipped = seq - self.next;
            let shift = skipped + 1;
            self.window = if shift >= WINDOW {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.next = seq + 1;
            return if skipped == 0 {
                Arrival::InOrder
            } else {
                Arrival::Gap(skipped)
            };
        }
        let back = self.next - 1 - seq;
        if back >= WINDOW {
            return Arrival::TooOld;
        }
        let bit = 1u64 << back;
        if self.window & bit != 0 {
            Arrival::Duplicate
        } else {
            self.window |= bit;
            Arrival::Late
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream() {
        let mut t = OrderTracker::default();
        for s in 0..200 {
            assert_eq!(t.observe(s), Arrival::InOrder);
        }
    }

    #[test]
    fn gap_then_late_fill_then_duplicates() {
        let mut t = OrderTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        assert_eq!(t.observe(3), Arrival::Gap(2));
        assert_eq!(t.observe(1), Arrival::Late);
        assert_eq!(t.observe(1), Arrival::Duplicate);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::Late);
        assert_eq!(t.observe(4), Arrival::InOrder);
        assert_eq!(t.observe(0), Arrival::Duplicate);
    }

    #[test]
    fn first_arrival_may_skip() {
        let mut t = OrderTracker::default();
        assert_eq!(t.observe(5), Arrival::Gap(5));
    }

    #[test]
    fn window_edges() {
        let mut t = OrderTracker::default();
        assert_eq!(t.observe(100), Arrival::Gap(100));
        // 100 - 63 = 37 is the oldest remembered; 36 is beyond.
        assert_eq!(t.observe(37), Arrival::Late);
        assert_eq!(t.observe(37), Arrival::Duplicate);
        assert_eq!(t.observe(36), Arrival::TooOld);
        // A jump past the whole window forgets everything before it.
        assert_eq!(t.observe(300), Arrival::Gap(199));
        assert_eq!(t.observe(300), Arrival::Duplicate);
        assert_eq!(t.observe(299), Arrival::Late);
        assert_eq!(t.observe(236), Arrival::TooOld);
    }
}
