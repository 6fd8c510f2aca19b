//! Counters and histograms of one load step, per worker and merged.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

/// Highest latency a histogram holds, in ns (60 s); larger values are clamped to it.
pub const HIST_MAX_NS: u64 = 60_000_000_000;

/// A latency histogram in nanoseconds, 1 ns to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    match Histogram::new_with_bounds(1, HIST_MAX_NS, 3) {
        Ok(h) => h,
        // The bounds are constants that hdrhistogram accepts; this cannot happen.
        Err(e) => panic!("histogram bounds rejected: {e:?}"),
    }
}

/// Records `ns` (at least 1) into `h`, clamping at the histogram's top.
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.clamp(1, HIST_MAX_NS));
}

/// What one worker counted in one load step. Sums over workers with [`Counters::add`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Messages sent, warmup included.
    pub sent: u64,
    /// Messages sent whose intended time is in the measured window.
    pub sent_measured: u64,
    /// Deliveries those measured messages should make: Σ room size (echo included).
    pub expected: u64,
    /// Messages whose send failed (not counted as sent or expected).
    pub send_failed: u64,
    /// Messages never sent because the bench fell too far behind its schedule.
    pub unsent: u64,
    /// Deliveries of measured messages received (first copy only).
    pub received: u64,
    /// `--web`: of `expected`, the deliveries to web members.
    pub expected_web: u64,
    /// `--web`: of `received`, those web members received.
    pub received_web: u64,
    /// MESSAGE events received, any message (warmup included, duplicates included).
    pub events: u64,
    /// Datagrams received.
    pub datagrams: u64,
    /// MESSAGE events received during the measured window (by receive time).
    pub window_events: u64,
    /// Datagrams received during the measured window (by receive time).
    pub window_datagrams: u64,
    /// Copies of a message a receiver had already seen.
    pub duplicates: u64,
    /// Messages that arrived after a later message of the same sender.
    pub out_of_order: u64,
    /// Messages of an earlier step (sweep) that arrived in this one.
    pub stale: u64,
    /// MESSAGE events that are not ours (bad stamp, or a sender not in that room).
    pub foreign: u64,
    /// Datagrams cut short or with a malformed event.
    pub malformed: u64,
    /// Socket receive errors (e.g. the server's port closed).
    pub recv_errors: u64,
    /// JOINED events (members binding late).
    pub joined: u64,
    /// LEFT events.
    pub left: u64,
    /// TIMED_OUT events: a bench user was dropped by the server.
    pub timed_out: u64,
    /// ROOM_CLOSED events.
    pub room_closed: u64,
    /// RATE_LIMITED events: the server's flood control dropped our messages.
    pub rate_limited: u64,
    /// Heartbeats sent (empty datagrams on the v1 path, SYNC on v1.1).
    pub heartbeats: u64,
    /// Datagrams the `--loss` filter dropped.
    pub lost_datagrams: u64,
    /// Bytes of those datagrams.
    pub lost_bytes: u64,
    /// Room events (any kind) that filled a gap after it was NACKed.
    pub recovered: u64,
    /// Room events that filled a gap before its NACK went out (reordering).
    pub reordered: u64,
    /// Room events seen before (any kind; MESSAGE ones also count in `duplicates`).
    pub room_duplicates: u64,
    /// Missing Seqs given up because GONE said the server no longer holds them.
    pub gone: u64,
    /// Missing Seqs given up by the bench's tracker (too many gaps, or too large a jump).
    pub abandoned: u64,
    /// Seqs still missing when the step ended (summed over users).
    pub still_missing: u64,
    /// Gaps opened.
    pub gaps: u64,
    /// NACK datagrams sent.
    pub nacks: u64,
    /// SYNC datagrams sent at the end of a step to find a lost tail.
    pub drain_syncs: u64,
    /// Datagrams that answered a NACK: their first room event was behind the highest Seq
    /// the user had seen, or they held a GONE.
    pub repair_datagrams: u64,
    /// Bytes of those datagrams.
    pub repair_bytes: u64,
    /// GONE events received.
    pub gone_events: u64,
    /// SYNC events received (answers and tail notices).
    pub sync_events: u64,
}

impl Counters {
    /// Adds `o` into `self`, field by field.
    pub fn add(&mut self, o: &Counters) {
        self.sent += o.sent;
        self.sent_measured += o.sent_measured;
        self.expected += o.expected;
        self.send_failed += o.send_failed;
        self.unsent += o.unsent;
        self.received += o.received;
        self.expected_web += o.expected_web;
        self.received_web += o.received_web;
        self.events += o.events;
        self.datagrams += o.datagrams;
        self.window_events += o.window_events;
        self.window_datagrams += o.window_datagrams;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.stale += o.stale;
        self.foreign += o.foreign;
        self.malformed += o.malformed;
        self.recv_errors += o.recv_errors;
        self.joined += o.joined;
        self.left += o.left;
        self.timed_out += o.timed_out;
        self.room_closed += o.room_closed;
        self.rate_limited += o.rate_limited;
        self.heartbeats += o.heartbeats;
        self.lost_datagrams += o.lost_datagrams;
        self.lost_bytes += o.lost_bytes;
        self.recovered += o.recovered;
        self.reordered += o.reordered;
        self.room_duplicates += o.room_duplicates;
        self.gone += o.gone;
        self.abandoned += o.abandoned;
        self.still_missing += o.still_missing;
        self.gaps += o.gaps;
        self.nacks += o.nacks;
        self.drain_syncs += o.drain_syncs;
        self.repair_datagrams += o.repair_datagrams;
        self.repair_bytes += o.repair_bytes;
        self.gone_events += o.gone_events;
        self.sync_events += o.sync_events;
    }
}

/// `--shape`: what one shape's members sent and received in one step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShapeCounts {
    /// Measured messages its members sent.
    pub sent: u64,
    /// Deliveries those should make (Σ room size, echo included).
    pub expected: u64,
    /// Deliveries of measured messages its members received (first copy only).
    pub received: u64,
}

impl ShapeCounts {
    /// Adds `o` into `self`.
    pub fn add(&mut self, o: &ShapeCounts) {
        self.sent += o.sent;
        self.expected += o.expected;
        self.received += o.received;
    }
}

/// `--shape`: counts and latency of each shape, one entry per shape (empty without
/// shapes). A delivery's latency goes to its shape's histogram only; the step's total is
/// their sum ([`ShapeStats::merge_latency_into`]), so shapes cost no second record.
#[derive(Debug, Clone, Default)]
pub struct ShapeStats {
    /// Per shape.
    pub counts: Vec<ShapeCounts>,
    /// Latency of measured deliveries, per shape, ns.
    pub latency: Vec<Histogram<u64>>,
}

impl ShapeStats {
    /// Empty figures for `shapes` shapes.
    pub fn new(shapes: usize) -> ShapeStats {
        ShapeStats {
            counts: vec![ShapeCounts::default(); shapes],
            latency: (0..shapes).map(|_| latency_histogram()).collect(),
        }
    }

    /// A measured message of a member of `shape` left, for `deliveries` deliveries.
    #[inline]
    pub fn sent(&mut self, shape: usize, deliveries: u64) {
        if let Some(c) = self.counts.get_mut(shape) {
            c.sent += 1;
            c.expected += deliveries;
        }
    }

    /// A member of `shape` received a measured delivery `ns` after its intended time.
    #[inline]
    pub fn received(&mut self, shape: usize, ns: u64) {
        if let (Some(c), Some(h)) = (self.counts.get_mut(shape), self.latency.get_mut(shape)) {
            c.received += 1;
            record(h, ns);
        }
    }

    /// Adds `o` into `self`, shape by shape (growing to `o`'s shapes if need be).
    pub fn add(&mut self, o: &ShapeStats) {
        if self.counts.len() < o.counts.len() {
            self.counts.resize(o.counts.len(), ShapeCounts::default());
        }
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            a.add(b);
        }
        while self.latency.len() < o.latency.len() {
            self.latency.push(latency_histogram());
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            // Same bounds everywhere, so adding cannot fail.
            let _ = a.add(b);
        }
    }

    /// Adds every shape's latency into `total`.
    pub fn merge_latency_into(&self, total: &mut Histogram<u64>) {
        for h in &self.latency {
            let _ = total.add(h);
        }
    }
}

/// What a worker shows the other threads while it runs: its own cache lines, written with
/// relaxed stores by that worker only, read now and then by the others.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Published {
    /// Messages sent so far this step.
    pub sent: AtomicU64,
    /// Deliveries expected so far (measured messages).
    pub expected: AtomicU64,
    /// Deliveries of measured messages received so far.
    pub received: AtomicU64,
    /// MESSAGE events received so far, warmup included.
    pub delivered: AtomicU64,
    /// Messages skipped in per-sender order and not yet arrived late: lost so far, or in
    /// flight out of order.
    pub missing: AtomicI64,
    /// The worker has sent its whole schedule.
    pub done_sending: AtomicBool,
    /// When it finished sending, ns on the run clock.
    pub done_at_ns: AtomicU64,
    /// Events recovered so far this step (filled after a NACK).
    pub recovered: AtomicU64,
    /// Seqs given up so far this step (GONE, or the tracker's bounds).
    pub unrecovered: AtomicU64,
    /// Datagrams the `--loss` filter dropped so far this step.
    pub lost_datagrams: AtomicU64,
    /// Users of this worker that saw their own JOINED (bind phase).
    pub own_joined: AtomicU64,
    /// JOINED events of distinct members seen by the hosts of this worker (bind phase).
    pub host_seen: AtomicU64,
    /// Users of this worker whose SYNC was answered (bind phase, v1.1 path).
    pub synced: AtomicU64,
}

/// State shared by the workers of a run and the thread that prints progress.
#[derive(Debug)]
pub struct Shared {
    /// One per worker.
    pub workers: Vec<Published>,
    /// Latency (warmup included) of the last progress interval, one per worker, merged and reset by the
    /// progress printer.
    pub interval: Vec<Mutex<Histogram<u64>>>,
}

impl Shared {
    /// State for `n` workers.
    pub fn new(n: usize) -> Shared {
        Shared {
            workers: (0..n).map(|_| Published::default()).collect(),
            interval: (0..n).map(|_| Mutex::new(latency_histogram())).collect(),
        }
    }

    /// Clears what a new step counts (bind counters stay).
    pub fn reset_step(&self) {
        for w in &self.workers {
            w.sent.store(0, Relaxed);
            w.expected.store(0, Relaxed);
            w.received.store(0, Relaxed);
            w.delivered.store(0, Relaxed);
            w.missing.store(0, Relaxed);
            w.recovered.store(0, Relaxed);
            w.unrecovered.store(0, Relaxed);
            w.lost_datagrams.store(0, Relaxed);
            w.done_sending.store(false, Relaxed);
            w.done_at_ns.store(0, Relaxed);
        }
        for h in &self.interval {
            if let Ok(mut h) = h.lock() {
                h.reset();
            }
        }
    }

    /// Σ over workers of one published counter.
    pub fn sum(&self, f: impl Fn(&Published) -> u64) -> u64 {
        self.workers.iter().map(f).sum()
    }

    /// Whether every worker has sent its whole schedule; if so, when the last one did.
    pub fn all_done_sending(&self) -> Option<u64> {
        let mut last = 0;
        for w in &self.workers {
            if !w.done_sending.load(std::sync::atomic::Ordering::Acquire) {
                return None;
            }
            last = last.max(w.done_at_ns.load(Relaxed));
        }
        Some(last)
    }

    /// Merges and clears the interval histograms; returns the merged one.
    pub fn take_interval(&self) -> Histogram<u64> {
        let mut all = latency_histogram();
        for h in &self.interval {
            if let Ok(mut h) = h.lock() {
                // Same bounds everywhere, so adding cannot fail.
                let _ = all.add(&*h);
                h.reset();
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_covers_ns_to_a_minute_with_3_digits() {
        let mut h = latency_histogram();
        record(&mut h, 0);
        record(&mut h, 12_345);
        record(&mut h, 10_000_000_000);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 4);
        assert_eq!(h.min(), 1);
        assert!(h.equivalent(h.value_at_quantile(0.5), 12_345));
        assert!(h.max() >= HIST_MAX_NS);
        // 3 significant digits: 12 345 ns is held within 0.1 %.
        let v = h.value_at_quantile(0.5) as f64;
        assert!((v - 12_345.0).abs() / 12_345.0 < 0.001);
    }

    #[test]
    fn shared_sums_and_completion() {
        let s = Shared::new(2);
        s.workers[0].sent.store(3, Relaxed);
        s.workers[1].sent.store(4, Relaxed);
        assert_eq!(s.sum(|w| w.sent.load(Relaxed)), 7);
        assert_eq!(s.all_done_sending(), None);
        s.workers[0].done_sending.store(true, Relaxed);
        s.workers[0].done_at_ns.store(10, Relaxed);
        s.workers[1].done_sending.store(true, Relaxed);
        s.workers[1].done_at_ns.store(20, Relaxed);
        assert_eq!(s.all_done_sending(), Some(20));
        s.reset_step();
        assert_eq!(s.all_done_sending(), None);
        assert_eq!(s.sum(|w| w.sent.load(Relaxed)), 0);
    }

    #[test]
    fn shape_stats_count_apart_and_sum_up() {
        let mut a = ShapeStats::new(2);
        a.sent(0, 2);
        a.sent(1, 10);
        a.sent(1, 10);
        a.received(0, 1_000);
        a.received(1, 5_000);
        a.received(1, 7_000);
        // Out of range: ignored, never a panic.
        a.sent(2, 3);
        a.received(9, 1);
        assert_eq!(
            a.counts,
            vec![
                ShapeCounts {
                    sent: 1,
                    expected: 2,
                    received: 1
                },
                ShapeCounts {
                    sent: 2,
                    expected: 20,
                    received: 2
                }
            ]
        );
        let mut sum = ShapeStats::default();
        sum.add(&a);
        sum.add(&a);
        assert_eq!(
            sum.counts[1],
            ShapeCounts {
                sent: 4,
                expected: 40,
                received: 4
            }
        );
        assert_eq!((sum.latency[0].len(), sum.latency[1].len()), (2, 4));
        let mut total = latency_histogram();
        sum.merge_latency_into(&mut total);
        assert_eq!(total.len(), 6);
        assert!(total.equivalent(total.max(), 7_000));
    }

    #[test]
    fn counters_add_every_field() {
        let one = Counters {
            sent: 1,
            sent_measured: 1,
            expected: 1,
            send_failed: 1,
            unsent: 1,
            received: 1,
            expected_web: 1,
            received_web: 1,
            events: 1,
            datagrams: 1,
            window_events: 1,
            window_datagrams: 1,
            duplicates: 1,
            out_of_order: 1,
            stale: 1,
            foreign: 1,
            malformed: 1,
            recv_errors: 1,
            joined: 1,
            left: 1,
            timed_out: 1,
            room_closed: 1,
            rate_limited: 1,
            heartbeats: 1,
            lost_datagrams: 1,
            lost_bytes: 1,
            recovered: 1,
            reordered: 1,
            room_duplicates: 1,
            gone: 1,
            abandoned: 1,
            still_missing: 1,
            gaps: 1,
            nacks: 1,
            drain_syncs: 1,
            repair_datagrams: 1,
            repair_bytes: 1,
            gone_events: 1,
            sync_events: 1,
        };
        let mut sum = one;
        sum.add(&one);
        let text = format!("{sum:?}");
        assert!(!text.contains(": 1,") && !text.contains(": 1 }"), "{text}");
    }
}
