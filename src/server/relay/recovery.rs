//! v1.1 recovery (PROTOCOL.md §5.1-§5.3): SEND with ClientSeq de-duplication, NACK answered
//! from the room's history through a per-member repair bucket, SYNC answers, the 50 ms tail
//! notice, and the server-wide history cap.
//!
//! The tail notice is a per-room deadline in a [`DeadlineQueue`](super::DeadlineQueue) used
//! the lazy way the member deadlines are: each room event only moves the room's `tail_due`,
//! and a room has at most one entry queued, which on popping either sends the notice or
//! re-queues itself at the newer `tail_due`. A busy room thus costs one heap entry per
//! 50 ms, not one per event, and nothing ever scans the rooms.
//!
//! The history cap (`--history-memory`) is kept in amortised batches: when the bytes of all
//! rings pass the cap, one pass sheds down to [`SHED_TARGET`] of it, always from the largest
//! ring (a max-heap of ring sizes, taken down to the next largest in turn). A pass is paid
//! for by the `cap / 16` bytes of events that must arrive before the next, so the cost per
//! event stays O(rooms x event / (cap / 16)), and the scratch heap reuses its memory.

use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::Rng;

use super::{DatagramOutcome, Relay};
use crate::protocol::MAX_DATAGRAM;
use crate::protocol::control::ControlBody;
use crate::protocol::event::{Gone, RawEvent, SyncInfo};
use crate::server::room::history::{seq_add, seq_distance};
use crate::server::transmit::{Addr, Targets, Transmit};

/// Quiet time after a room's last event before its tail notice (§5.3): long enough that a
/// burst's events are not each followed by one, short enough that a lost tail is noticed
/// within about one round trip more.
pub const TAIL_NOTICE_DELAY: Duration = Duration::from_millis(50);

/// Seqs up to this far ahead of a room's latest (serially) are not yet used (§5.2).
const SEQ_AHEAD: u64 = (1 << 31) - 1;

/// A memory-cap pass sheds down to this fraction of `--history-memory` (15/16), so that
/// passes are rare: each is paid for by a sixteenth of the cap in new events.
const SHED_TARGET: (usize, usize) = (15, 16);

/// A member's repair bucket (§5.2): bytes of NACK answers, `--repair-burst` full and
/// refilled at `--repair-rate` per second. Either at 0: no limit.
#[derive(Debug, Clone)]
pub struct RepairBucket {
    bytes: f64,
    last: Instant,
}

impl RepairBucket {
    /// A full bucket.
    pub fn full(burst: u64, now: Instant) -> RepairBucket {
        RepairBucket {
            bytes: burst as f64,
            last: now,
        }
    }

    /// Refills for the time passed since the last refill.
    fn refill(&mut self, rate: u64, burst: u64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.bytes = (self.bytes + elapsed * rate as f64).min(burst as f64);
    }

    /// Takes `cost` bytes if they are there (always, when the limit is off).
    fn pay(&mut self, rate: u64, burst: u64, cost: usize) -> bool {
        if rate == 0 || burst == 0 {
            return true;
        }
        if self.bytes >= cost as f64 {
            self.bytes -= cost as f64;
            true
        } else {
            false
        }
    }

    #[cfg(any(test, feature = "fuzzing"))]
    /// Bytes left (never below 0: the fuzz body checks it).
    pub fn left(&self) -> f64 {
        self.bytes
    }
}

/// What part of a NACK range the ring answers: `gone` (FromSeq, Count) for the GONE, and the
/// held events as (index of the first in the ring, how many).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NackPlan {
    held: (usize, usize),
    gone: Option<(u32, u16)>,
}

/// The used part of the range `from`, `count` when the room's latest Seq is `latest`
/// (docs/protocol.md §13.1): the Seqs at or behind `latest`, as (first Seq, how many). Seqs
/// 1 to 2^31-1 ahead are not yet used; being an arc of at most 512, the used part is one
/// arc: a prefix (from at or behind the latest) or a suffix (a range that runs past the
/// far half of the cycle).
fn used_part(latest: u32, from: u32, count: u16) -> Option<(u32, u64)> {
    let count = u64::from(count);
    let ahead = seq_distance(latest, from);
    if ahead == 0 || ahead > SEQ_AHEAD {
        let n = (seq_distance(from, latest) + 1).min(count);
        return Some((from, n));
    }
    let leaves = SEQ_AHEAD - ahead + 1;
    (leaves < count).then(|| (seq_add(from, leaves), count - leaves))
}

/// Splits the used arc `first`, `n` into what the ring (`len` events from `oldest`) holds
/// and what is gone: everything older than the oldest held, or all of it when the ring is
/// empty.
fn plan(oldest: u32, len: usize, first: u32, n: u64) -> NackPlan {
    let k = seq_distance(oldest, first);
    if len > 0 && k < len as u64 {
        let held = (n.min(len as u64 - k)) as usize;
        return NackPlan {
            held: (k as usize, held),
            gone: None,
        };
    }
    let gone = if len == 0 {
        n
    } else {
        seq_distance(first, oldest).min(n)
    };
    NackPlan {
        held: (0, (n - gone) as usize),
        gone: (gone > 0).then_some((first, gone as u16)),
    }
}

impl<R: Rng> Relay<R> {
    /// Handles an accepted control datagram of member `key` from `from` (its pinned
    /// address). `pinned_now`: this datagram bound it, so its JOINED must leave first.
    pub(super) fn handle_control(
        &mut self,
        now: Instant,
        key: usize,
        from: Addr,
        pinned_now: bool,
        body: ControlBody<'_>,
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        self.members[key].v11 = true;
        // What is queued leaves before an answer: the JOINED of a datagram that bound the
        // member (§5.2), and, for SYNC, the events its LastSeq counts (so that the answer
        // never shows a gap that is only queued; SYNCs come about once a second).
        let flush_first = match body {
            ControlBody::Send { .. } => false,
            ControlBody::Nack { .. } => pinned_now,
            ControlBody::Sync => true,
        };
        if flush_first {
            let room = self.members[key].room;
            self.rooms[room].flush(&mut self.counters, tx);
        }
        match body {
            ControlBody::Send {
                client_seq,
                message,
            } => {
                if client_seq <= self.members[key].client_seq {
                    return DatagramOutcome::Duplicate;
                }
                // (cluster) On a mirror the owner says when it is relayed.
                let via_owner = self.send_via_owner(key, client_seq);
                let outcome = self.relay_message(now, key, from, message, tx);
                self.send_done();
                if outcome == DatagramOutcome::Relayed && !via_owner {
                    self.members[key].client_seq = client_seq;
                }
                outcome
            }
            ControlBody::Nack { from_seq, count } => {
                self.answer_nack(now, key, from_seq, count, from, tx);
                DatagramOutcome::Nack
            }
            ControlBody::Sync => {
                self.answer_sync(key, from, tx);
                DatagramOutcome::Sync
            }
        }
    }

    /// Answers a NACK at once, to `to` alone: the held events of the range in packed
    /// datagrams with their original bytes, as far as the repair bucket pays, then one GONE
    /// for the part older than the oldest held.
    fn answer_nack(
        &mut self,
        now: Instant,
        key: usize,
        from_seq: u32,
        count: u16,
        to: Addr,
        tx: &mut impl Transmit,
    ) {
        let Relay {
            members,
            rooms,
            cfg,
            counters,
            repair_buf: buf,
            ..
        } = self;
        let m = &mut members[key];
        let room = &rooms[m.room];
        let latest = room.seq();
        // A room with no event yet has used no Seq: nothing to answer.
        let Some((first, n)) = (latest != 0)
            .then(|| used_part(latest, from_seq, count))
            .flatten()
        else {
            return;
        };
        let h = room.history();
        let p = plan(h.oldest(), h.len(), first, n);
        m.repair.refill(cfg.repair_rate, cfg.repair_burst, now);
        buf.clear();
        for i in p.held.0..p.held.0 + p.held.1 {
            let (a, b) = h.event(i);
            let len = a.len() + b.len();
            if !m.repair.pay(cfg.repair_rate, cfg.repair_burst, len) {
                counters.repair_dropped += (p.held.0 + p.held.1 - i) as u64;
                break;
            }
            if buf.len() + len > MAX_DATAGRAM {
                send_counted(buf, to, counters, tx);
                buf.clear();
            }
            buf.extend_from_slice(a);
            buf.extend_from_slice(b);
            counters.repair_events += 1;
            counters.repair_bytes += len as u64;
        }
        if !buf.is_empty() {
            send_counted(buf, to, counters, tx);
        }
        if let Some((from_seq, count)) = p.gone {
            let mut body = [0u8; Gone::BODY_LEN];
            let ev = Gone { from_seq, count }.event(&mut body);
            counters.gone += 1;
            self.send_alone_to(&ev, to, tx);
        }
    }

    /// Answers a SYNC: the room's latest Seq and the member's last relayed ClientSeq.
    fn answer_sync(&mut self, key: usize, to: Addr, tx: &mut impl Transmit) {
        let m = &self.members[key];
        let info = SyncInfo {
            last_seq: self.rooms[m.room].seq(),
            last_client_seq: m.client_seq,
        };
        let mut body = [0u8; SyncInfo::BODY_LEN];
        // The name is copied out so the notice buffer can be borrowed.
        let Relay {
            members, notice, ..
        } = self;
        let ev = info.event(&members[key].name, &mut body);
        notice.clear();
        if notice.push_raw(&ev) {
            let sent = tx.send_one(notice.bytes(), to);
            count_sent(&mut self.counters, sent, 1);
        }
    }

    /// Sends one Seq-0 event in a datagram of its own to each of `to`.
    pub(super) fn send_alone(&mut self, ev: &RawEvent<'_>, to: &Targets, tx: &mut impl Transmit) {
        if to.is_empty() {
            return;
        }
        self.notice.clear();
        if self.notice.push_raw(ev) {
            let sent = tx.send_targets(self.notice.bytes(), to);
            count_sent(&mut self.counters, sent, to.len());
        }
    }

    /// Sends one Seq-0 event in a datagram of its own to `to` alone.
    fn send_alone_to(&mut self, ev: &RawEvent<'_>, to: Addr, tx: &mut impl Transmit) {
        self.notice.clear();
        if self.notice.push_raw(ev) {
            let sent = tx.send_one(self.notice.bytes(), to);
            count_sent(&mut self.counters, sent, 1);
        }
    }

    /// Fills `self.dests` with the addresses of room `room`'s bound v1.1 members (the only
    /// receivers of Kinds 7-9), but for `except`.
    pub(super) fn collect_v11_dests(&mut self, room: usize, except: Option<usize>) {
        self.dests.clear();
        let members = &self.members;
        let v11 = self.rooms[room]
            .bound()
            .filter(|&(_, k)| Some(k) != except && members[k].v11);
        for (to, _) in v11 {
            self.dests.push(to);
        }
    }

    /// After each room event (Kinds 1-5): its tail notice is due in 50 ms, and the history
    /// cap may need a pass.
    pub(super) fn after_room_event(&mut self, room: usize, now: Instant) {
        if let Some(r) = self.rooms.get_mut(room) {
            let due = now + TAIL_NOTICE_DELAY;
            r.tail_due = Some(due);
            if !r.tail_scheduled {
                r.tail_scheduled = true;
                self.tails.schedule(due, room, r.id);
            }
        }
        if self.counters.history_bytes > self.cfg.history_memory as u64 {
            self.shed_history();
        }
    }

    /// Sends the tail notices that are due.
    pub(super) fn send_due_tail_notices(&mut self, now: Instant, tx: &mut impl Transmit) {
        while let Some((_, key, id)) = self.tails.pop_due(now) {
            let Some(r) = self.rooms.get_mut(key).filter(|r| r.id == id) else {
                continue;
            };
            match r.tail_due {
                Some(due) if due > now => self.tails.schedule(due, key, id),
                Some(_) => {
                    r.tail_due = None;
                    r.tail_scheduled = false;
                    self.send_tail_notice(key, tx);
                }
                None => r.tail_scheduled = false,
            }
        }
    }

    /// One SYNC with empty UserName and LastClientSeq 0, the same bytes to every bound v1.1
    /// member with an address (if any).
    fn send_tail_notice(&mut self, room: usize, tx: &mut impl Transmit) {
        // Whatever is queued leaves first, so the notice never overtakes the events it names.
        self.rooms[room].flush(&mut self.counters, tx);
        self.collect_v11_dests(room, None);
        if self.dests.is_empty() {
            return;
        }
        let info = SyncInfo {
            last_seq: self.rooms[room].seq(),
            last_client_seq: 0,
        };
        let mut body = [0u8; SyncInfo::BODY_LEN];
        let ev = info.event("", &mut body);
        let dests = std::mem::take(&mut self.dests);
        self.send_alone(&ev, &dests, tx);
        self.dests = dests;
        self.counters.tail_notices += 1;
    }

    /// One pass of the server-wide history cap: sheds the oldest events of the largest
    /// rings until all rings together hold at most [`SHED_TARGET`] of `--history-memory`.
    fn shed_history(&mut self) {
        let target = self.cfg.history_memory / SHED_TARGET.1 * SHED_TARGET.0;
        let mut heap = BinaryHeap::from(std::mem::take(&mut self.shed));
        heap.extend(
            self.rooms
                .iter()
                .map(|(k, r)| (r.history().byte_len(), k))
                .filter(|&(b, _)| b > 0),
        );
        while self.counters.history_bytes > target as u64 {
            let Some((mut bytes, key)) = heap.pop() else {
                break;
            };
            // Down to the next largest ring (at least one event), then that one's turn.
            let next = heap.peek().map_or(0, |&(b, _)| b);
            let room = &mut self.rooms[key];
            loop {
                bytes -= room.shed_oldest(&mut self.counters);
                if bytes <= next || bytes == 0 || self.counters.history_bytes <= target as u64 {
                    break;
                }
            }
            room.trim_history();
            if bytes > 0 {
                heap.push((bytes, key));
            }
        }
        let mut scratch = heap.into_vec();
        scratch.clear();
        self.shed = scratch;
    }
}

/// Sends one repair datagram to `to` and counts it.
fn send_counted(
    buf: &[u8],
    to: Addr,
    counters: &mut crate::server::counters::Counters,
    tx: &mut impl Transmit,
) {
    let sent = tx.send_one(buf, to);
    count_sent(counters, sent, 1);
}

/// Counts `sent` of `tried` sends of one datagram.
fn count_sent(counters: &mut crate::server::counters::Counters, sent: usize, tried: usize) {
    counters.datagrams_out += sent as u64;
    counters.send_drops += tried.saturating_sub(sent) as u64;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_part_follows_the_readings() {
        // §13.1: room at 100, FromSeq 99 Count 5 -> 99 and 100.
        assert_eq!(used_part(100, 99, 5), Some((99, 2)));
        assert_eq!(used_part(100, 101, 5), None);
        assert_eq!(used_part(100, 1, 512), Some((1, 100)));
        // Behind, across the wrap.
        assert_eq!(used_part(3, u32::MAX - 1, 10), Some((u32::MAX - 1, 5)));
        // Ahead by nearly half the cycle, running into the far half.
        let from = seq_add(100, SEQ_AHEAD - 1);
        assert_eq!(used_part(100, from, 4), Some((seq_add(from, 2), 2)));
    }

    #[test]
    fn plan_splits_held_and_gone() {
        // Ring holds 50..=60 (11 events).
        assert_eq!(
            plan(50, 11, 45, 10),
            NackPlan {
                held: (0, 5),
                gone: Some((45, 5))
            }
        );
        assert_eq!(
            plan(50, 11, 52, 3),
            NackPlan {
                held: (2, 3),
                gone: None
            }
        );
        assert_eq!(
            plan(50, 0, 45, 10),
            NackPlan {
                held: (0, 0),
                gone: Some((45, 10))
            }
        );
    }
}
