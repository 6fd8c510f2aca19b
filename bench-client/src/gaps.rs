//! A lean v1.1 gap tracker for one bench user: which of its room's Seqs it has not received,
//! when to NACK them (PROTOCOL.md §5.4), and whether an arrival fills a gap or repeats an
//! event.
//!
//! Why not `ocm::client::recovery::Recovery`: that machine is built for a person's client.
//! It owns every event it delivers (`RoomEvent` copies the user name and body: two
//! allocations per event), queues outputs and transmits in `VecDeque`s, and walks its
//! per-Seq reorder buffer behind each arrival, which at a busy room's 1 000 events/s per user
//! and 500 users is millions of allocations a second on the bench's hot path. The bench
//! counts rather than delivers, so it needs much less: the highest Seq seen, and the missing
//! ranges. Those are few (each lost datagram opens one, and it closes a round trip after
//! its NACK), so they live in a small vector allocated once per user; an arrival costs a
//! compare when there is no gap and a short scan when there is.
//!
//! ```text
//!   Seq:   … 40 41 42 [43 44] 45 46 [47] 48 | next = 49
//!   gaps:            {43..45, seen at t0, NACK due t0+10 ms}  {47..48, …}
//! ```
//!
//! Seqs are compared as plain integers: no bench room reaches 2^32 events (an hour at a
//! million events per second is 3.6e9), and a Seq that claims otherwise is hostile input,
//! bounded like any other (see [`MAX_GAP`]).

use ocm::protocol::control::MAX_NACK_COUNT;

/// How long a new gap waits for reordered datagrams before it is NACKed (§5.4: about
/// 10 ms, a few times the reordering seen on real paths).
pub const REORDER_WAIT_NS: u64 = 10_000_000;
/// A gap is NACKed at once when this many events at or past it arrived: loss, not
/// reordering (§5.4: 3).
pub const REORDER_EVENTS: u8 = 3;
/// Interval before a NACK is repeated the first time; doubles after each repeat (§5.4: 50,
/// 100, 200 ms, ...). `--nack-retry-ms` changes it, to see what it costs the p99.
pub const NACK_RETRY_NS: u64 = 50_000_000;
/// Longest interval between repeats: keeps asking while the gap lasts, without flooding.
pub const NACK_RETRY_MAX_NS: u64 = 1_000_000_000;
/// Most open gaps per user. Each lost datagram opens one and its NACK answer closes it a
/// round trip later, so even 20% loss at 1 000 events/s keeps a handful open; past this
/// the oldest is given up (counted as abandoned) rather than the vector grown.
pub const MAX_GAPS: usize = 64;
/// Largest gap tracked, in Seqs. A jump further than this (a hostile Seq, or a receiver
/// that stalled for a long time) keeps only its newest `MAX_GAP` Seqs; the older ones are
/// abandoned. Far more than any server's ring holds for bench-sized events (1 MiB per room).
pub const MAX_GAP: u32 = 1 << 16;
/// Most NACK datagrams one user sends in one round; the rest go at its next round, so one
/// call stays bounded whatever the gaps.
pub const MAX_NACKS_PER_ROUND: usize = 16;

/// Seqs one NACK may ask for.
const NACK_COUNT: u32 = MAX_NACK_COUNT as u32;

/// A range of consecutive Seqs not received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gap {
    /// First missing Seq.
    from: u32,
    /// One past the last missing Seq.
    end: u32,
    /// When it was seen (ns on the run clock): recovery latency counts from here.
    detected_ns: u64,
    /// When to NACK it next.
    due_ns: u64,
    /// NACKs sent for it so far.
    tries: u8,
    /// Events at or past it that arrived before its first NACK.
    later: u8,
}

impl Gap {
    fn len(&self) -> u32 {
        self.end - self.from
    }

    fn contains(&self, seq: u32) -> bool {
        (self.from..self.end).contains(&seq)
    }
}

/// What one arrival of a room event (Seq > 0) was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// At or past the highest Seq seen: new (it may have opened a gap behind it).
    New,
    /// It filled a gap: new, and late. `nacked` when its gap had been NACKed (a repair),
    /// `waited_ns` since the gap was seen.
    Filled {
        /// Whether a NACK had gone out for it.
        nacked: bool,
        /// Time from the gap's detection to now.
        waited_ns: u64,
    },
    /// Seen before (or given up before): a duplicate.
    Duplicate,
}

/// Counts a tracker adds to (the caller keeps them per step).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GapCounts {
    /// Gaps opened.
    pub opened: u64,
    /// Seqs given up because GONE said the server no longer holds them.
    pub gone: u64,
    /// Seqs given up by the tracker itself ([`MAX_GAPS`], [`MAX_GAP`]).
    pub abandoned: u64,
}

/// The gaps of one user's room sequence.
#[derive(Debug, Clone)]
pub struct GapTracker {
    /// One past the highest Seq seen; 0 before the first event.
    next: u32,
    /// Open gaps, in Seq order (gaps open at the top and close anywhere).
    gaps: Vec<Gap>,
    /// Wait before the first repeat of a NACK (then doubling, capped).
    retry_ns: u64,
}

impl Default for GapTracker {
    fn default() -> Self {
        GapTracker::new()
    }
}

impl GapTracker {
    /// A tracker that has seen nothing, with the default NACK timing; its only allocation.
    pub fn new() -> GapTracker {
        GapTracker::with_retry(NACK_RETRY_NS)
    }

    /// The same, repeating an unanswered NACK first after `retry_ns` (at least 1 ms), then
    /// doubling up to [`NACK_RETRY_MAX_NS`].
    pub fn with_retry(retry_ns: u64) -> GapTracker {
        GapTracker {
            next: 0,
            gaps: Vec::with_capacity(MAX_GAPS),
            retry_ns: retry_ns.clamp(1_000_000, NACK_RETRY_MAX_NS),
        }
    }

    /// One past the highest Seq seen (0: none yet).
    pub fn next(&self) -> u32 {
        self.next
    }

    /// Whether `seq` is behind the highest Seq seen: an event that arrives there is late
    /// (a repair, on a path that does not reorder) or a duplicate.
    pub fn is_behind(&self, seq: u32) -> bool {
        self.next != 0 && seq < self.next
    }

    /// Seqs missing now.
    pub fn missing(&self) -> u64 {
        self.gaps.iter().map(|g| u64::from(g.len())).sum()
    }

    /// Open gaps now.
    pub fn open_gaps(&self) -> usize {
        self.gaps.len()
    }

    /// When the next NACK is due, if any gap is open.
    pub fn next_due(&self) -> Option<u64> {
        self.gaps.iter().map(|g| g.due_ns).min()
    }

    /// A room event with Seq `seq` (> 0) arrived at `now`.
    pub fn event(&mut self, seq: u32, now: u64, counts: &mut GapCounts) -> Seen {
        if seq == 0 {
            return Seen::Duplicate;
        }
        if self.next == 0 {
            // The first event may have any Seq (§2.2): nothing before it is ours to miss.
            self.next = seq.saturating_add(1);
            return Seen::New;
        }
        if seq >= self.next {
            self.open(self.next, seq, now, counts);
            self.next = seq.saturating_add(1);
            for g in self.gaps.iter_mut().filter(|g| g.tries == 0) {
                g.later = g.later.saturating_add(1);
                if g.later >= REORDER_EVENTS {
                    g.due_ns = g.due_ns.min(now);
                }
            }
            return Seen::New;
        }
        let Some(i) = self.gaps.iter().position(|g| g.contains(seq)) else {
            return Seen::Duplicate;
        };
        let g = self.gaps[i];
        let seen = Seen::Filled {
            nacked: g.tries > 0,
            waited_ns: now.saturating_sub(g.detected_ns),
        };
        self.remove_range(i, seq, seq + 1, counts);
        seen
    }

    /// A SYNC event (answer or tail notice) says the room's latest Seq is `last_seq`: any
    /// Seq past the highest seen is missing.
    pub fn sync(&mut self, last_seq: u32, now: u64, counts: &mut GapCounts) {
        if last_seq == 0 {
            return;
        }
        if self.next == 0 {
            // Everything up to LastSeq was before this member came.
            self.next = last_seq.saturating_add(1);
            return;
        }
        if last_seq >= self.next {
            let end = last_seq.saturating_add(1);
            self.open(self.next, end, now, counts);
            self.next = end;
        }
    }

    /// A GONE event: the server no longer holds `count` Seqs from `from`. Returns how many
    /// missing Seqs that gave up (also added to `counts.gone`).
    pub fn gone(&mut self, from: u32, count: u16, counts: &mut GapCounts) -> u64 {
        let end = from.saturating_add(u32::from(count));
        let before = self.missing();
        let mut i = 0;
        // Each pass removes or shrinks gap i, or splits it (the second piece is then past
        // the range): at most MAX_GAPS + 1 passes.
        while i < self.gaps.len() {
            let g = self.gaps[i];
            let (lo, hi) = (g.from.max(from), g.end.min(end));
            if lo < hi {
                let len_before = self.gaps.len();
                self.remove_range(i, lo, hi, counts);
                if self.gaps.len() < len_before {
                    continue;
                }
            }
            i += 1;
        }
        let given_up = before.saturating_sub(self.missing());
        counts.gone += given_up;
        given_up
    }

    /// Calls `nack(from, count)` for every NACK due at `now` (at most
    /// [`MAX_NACKS_PER_ROUND`]) and schedules each gap's repeat with backoff. Returns how
    /// many NACKs it asked for.
    pub fn poll_nacks(&mut self, now: u64, mut nack: impl FnMut(u32, u16)) -> usize {
        let mut sent = 0;
        for g in self.gaps.iter_mut() {
            if g.due_ns > now {
                continue;
            }
            if sent == MAX_NACKS_PER_ROUND {
                break;
            }
            let mut from = g.from;
            while from < g.end && sent < MAX_NACKS_PER_ROUND {
                let count = (g.end - from).min(NACK_COUNT);
                nack(from, count as u16);
                from += count;
                sent += 1;
            }
            g.tries = g.tries.saturating_add(1);
            g.due_ns = now.saturating_add(backoff(self.retry_ns, g.tries));
        }
        sent
    }

    /// Opens the gap `from..end` seen at `now`, within the bounds.
    fn open(&mut self, from: u32, end: u32, now: u64, counts: &mut GapCounts) {
        if from >= end {
            return;
        }
        let from = if end - from > MAX_GAP {
            counts.abandoned += u64::from(end - MAX_GAP - from);
            end - MAX_GAP
        } else {
            from
        };
        if self.gaps.len() == MAX_GAPS {
            let oldest = self.gaps.remove(0);
            counts.abandoned += u64::from(oldest.len());
        }
        counts.opened += 1;
        self.gaps.push(Gap {
            from,
            end,
            detected_ns: now,
            due_ns: now.saturating_add(REORDER_WAIT_NS),
            tries: 0,
            // The event that revealed it is counted by the caller's loop.
            later: 0,
        });
    }

    /// Takes `lo..hi` (inside gap `i`) out of it: shrinks it, removes it, or splits it in
    /// two (giving up the oldest gap if the vector is full).
    fn remove_range(&mut self, i: usize, lo: u32, hi: u32, counts: &mut GapCounts) {
        let g = self.gaps[i];
        match (lo == g.from, hi == g.end) {
            (true, true) => {
                self.gaps.remove(i);
            }
            (true, false) => self.gaps[i].from = hi,
            (false, true) => self.gaps[i].end = lo,
            (false, false) => {
                self.gaps[i].end = lo;
                let right = Gap { from: hi, ..g };
                if self.gaps.len() == MAX_GAPS {
                    let oldest = self.gaps.remove(0);
                    counts.abandoned += u64::from(oldest.len());
                    if i == 0 {
                        // The left piece was the oldest; the right one takes its place.
                        self.gaps.insert(0, right);
                        return;
                    }
                    self.gaps.insert(i, right);
                } else {
                    self.gaps.insert(i + 1, right);
                }
            }
        }
    }
}

/// Wait before the next NACK of a gap already NACKed `tries` times: `first`, twice that,
/// four times, ... (50, 100, 200 ms by default), capped at one second.
pub fn backoff(first: u64, tries: u8) -> u64 {
    let doublings = u32::from(tries.saturating_sub(1)).min(16);
    first.saturating_mul(1 << doublings).min(NACK_RETRY_MAX_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn nacks(t: &mut GapTracker, now: u64) -> Vec<(u32, u16)> {
        let mut v = Vec::new();
        t.poll_nacks(now, |f, c| v.push((f, c)));
        v
    }

    #[test]
    fn in_order_stream_has_no_gaps() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        for s in 7..1_000 {
            assert_eq!(t.event(s, s as u64, &mut c), Seen::New);
        }
        assert_eq!((t.next(), t.missing(), t.next_due()), (1_000, 0, None));
        assert_eq!(c, GapCounts::default());
        assert_eq!(t.event(500, 0, &mut c), Seen::Duplicate);
        assert!(t.is_behind(999) && !t.is_behind(1_000));
    }

    #[test]
    fn gap_waits_for_reordering_then_nacks_with_backoff() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        assert_eq!(t.event(4, 100 * MS, &mut c), Seen::New);
        assert_eq!((t.missing(), c.opened), (2, 1));
        // Not before 10 ms.
        assert!(nacks(&mut t, 105 * MS).is_empty());
        assert_eq!(nacks(&mut t, 110 * MS), vec![(2, 2)]);
        // Repeats at 50, 100, 200 ms after each NACK while the gap lasts.
        assert!(nacks(&mut t, 159 * MS).is_empty());
        assert_eq!(nacks(&mut t, 160 * MS), vec![(2, 2)]);
        assert!(nacks(&mut t, 259 * MS).is_empty());
        assert_eq!(nacks(&mut t, 260 * MS), vec![(2, 2)]);
        assert_eq!(t.next_due(), Some(460 * MS));
        // The repair arrives: filled, NACKed, waited since detection.
        assert_eq!(
            t.event(3, 300 * MS, &mut c),
            Seen::Filled {
                nacked: true,
                waited_ns: 200 * MS
            }
        );
        assert_eq!(t.event(3, 300 * MS, &mut c), Seen::Duplicate);
        assert_eq!(
            t.event(2, 301 * MS, &mut c),
            Seen::Filled {
                nacked: true,
                waited_ns: 201 * MS
            }
        );
        assert_eq!((t.missing(), t.open_gaps(), t.next_due()), (0, 0, None));
    }

    #[test]
    fn three_later_events_nack_at_once() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(3, 0, &mut c); // opens {2}, later = 1
        t.event(4, 0, &mut c);
        assert!(nacks(&mut t, 1).is_empty());
        t.event(5, 0, &mut c); // later = 3
        assert_eq!(nacks(&mut t, 1), vec![(2, 1)]);
    }

    #[test]
    fn fill_before_nack_is_reordering() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(3, 0, &mut c);
        assert_eq!(
            t.event(2, MS, &mut c),
            Seen::Filled {
                nacked: false,
                waited_ns: MS
            }
        );
    }

    #[test]
    fn middle_fill_splits_and_nacks_cover_only_the_missing() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(10, 0, &mut c); // 2..10 missing
        assert!(matches!(t.event(5, 0, &mut c), Seen::Filled { .. }));
        assert_eq!(t.open_gaps(), 2);
        assert_eq!(t.missing(), 7);
        assert_eq!(nacks(&mut t, REORDER_WAIT_NS), vec![(2, 3), (6, 4)]);
    }

    #[test]
    fn large_gaps_are_nacked_in_chunks_of_512() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(1_202, 0, &mut c); // 2..1202: 1200 missing
        assert_eq!(
            nacks(&mut t, REORDER_WAIT_NS),
            vec![(2, 512), (514, 512), (1_026, 176)]
        );
    }

    #[test]
    fn sync_reveals_the_tail_and_gone_gives_up() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.sync(41, 0, &mut c);
        assert_eq!(
            (t.next(), t.missing()),
            (42, 0),
            "SYNC before any event anchors"
        );
        t.event(42, 0, &mut c);
        t.sync(42, 0, &mut c);
        assert_eq!(t.missing(), 0, "up to date");
        t.sync(50, MS, &mut c);
        assert_eq!((t.next(), t.missing()), (51, 8));
        // GONE for 40..46: 43, 44, 45 were missing (the rest was not).
        assert_eq!(t.gone(40, 6, &mut c), 3);
        assert_eq!((t.missing(), c.gone), (5, 3));
        // A GONE in the middle splits.
        assert_eq!(t.gone(47, 2, &mut c), 2);
        assert_eq!(t.open_gaps(), 2);
        assert_eq!(nacks(&mut t, MS + REORDER_WAIT_NS), vec![(46, 1), (49, 2)]);
        assert_eq!(t.gone(1, 100, &mut c), 3);
        assert_eq!((t.missing(), t.open_gaps(), c.gone), (0, 0, 8));
        assert_eq!(t.gone(1, 100, &mut c), 0);
    }

    #[test]
    fn hostile_seqs_stay_bounded() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(u32::MAX, 0, &mut c);
        assert_eq!(t.missing(), u64::from(MAX_GAP));
        assert_eq!(c.abandoned, u64::from(u32::MAX - 2 - MAX_GAP));
        assert_eq!(t.event(0, 0, &mut c), Seen::Duplicate);
        // Sixteen NACKs a round at most, 512 each.
        let n = nacks(&mut t, REORDER_WAIT_NS);
        assert_eq!(n.len(), MAX_NACKS_PER_ROUND);
        assert!(n.iter().all(|&(_, count)| count == 512));
        // u32::MAX is the top: nothing past it wraps to a small Seq.
        t.event(u32::MAX, 0, &mut c);
        assert_eq!(t.next(), u32::MAX);
        t.sync(u32::MAX, 0, &mut c);
        assert_eq!(t.gone(u32::MAX - 10, u16::MAX, &mut c), 10);
    }

    #[test]
    fn at_most_max_gaps_the_oldest_given_up() {
        let mut t = GapTracker::new();
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        // Every other Seq lost: one gap each.
        for k in 0..(MAX_GAPS as u32 + 10) {
            t.event(3 + 2 * k, 0, &mut c);
        }
        assert_eq!(t.open_gaps(), MAX_GAPS);
        assert_eq!(c.abandoned, 10);
        // The oldest kept is Seq 22 (gaps 2, 4, ..., 20 given up).
        assert_eq!(t.event(20, 0, &mut c), Seen::Duplicate);
        assert!(matches!(t.event(22, 0, &mut c), Seen::Filled { .. }));
        // A split when full gives up the oldest too, and keeps the order.
        let mut t = GapTracker::new();
        t.event(1, 0, &mut c);
        t.event(100, 0, &mut c); // 2..100
        for k in 0..(MAX_GAPS as u32 - 1) {
            t.event(102 + 2 * k, 0, &mut c);
        }
        assert_eq!(t.open_gaps(), MAX_GAPS);
        let before = c.abandoned;
        // 2..100 splits into 2..50 and 51..100; the left piece is the oldest gap now.
        assert!(matches!(t.event(50, 0, &mut c), Seen::Filled { .. }));
        assert_eq!(t.open_gaps(), MAX_GAPS);
        assert_eq!(c.abandoned, before + 48);
        assert_eq!(t.missing(), 49 + (MAX_GAPS as u64 - 1));
        assert_eq!(t.event(2, 0, &mut c), Seen::Duplicate);
        let froms: Vec<u32> = nacks(&mut t, REORDER_WAIT_NS).iter().map(|n| n.0).collect();
        assert!(froms.windows(2).all(|w| w[0] < w[1]), "{froms:?}");
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        let b = |t| backoff(NACK_RETRY_NS, t);
        assert_eq!(b(1), 50 * MS);
        assert_eq!(b(2), 100 * MS);
        assert_eq!(b(3), 200 * MS);
        assert_eq!(b(5), 800 * MS);
        assert_eq!(b(6), 1_000 * MS);
        assert_eq!(b(255), 1_000 * MS);
        assert_eq!(backoff(20 * MS, 2), 40 * MS);
    }

    #[test]
    fn a_shorter_first_retry() {
        let mut t = GapTracker::with_retry(20 * MS);
        let mut c = GapCounts::default();
        t.event(1, 0, &mut c);
        t.event(3, 0, &mut c);
        assert_eq!(nacks(&mut t, 10 * MS), vec![(2, 1)]);
        assert_eq!(t.next_due(), Some(30 * MS));
        assert_eq!(nacks(&mut t, 30 * MS), vec![(2, 1)]);
        assert_eq!(t.next_due(), Some(70 * MS));
        assert_eq!(GapTracker::with_retry(0).retry_ns, MS, "at least 1 ms");
    }
}
