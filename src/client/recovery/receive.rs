//! The receive side of [`Recovery`](super::Recovery): where delivery starts, the reorder
//! buffer, delivery in Seq order, own echoes confirming messages, and the NACKs for gaps.

use super::*;

impl Recovery {
    /// The first room event (or SYNC) fixes where delivery starts; at join, the history asked
    /// for becomes a gap before it, fetched at once.
    ///
    /// A SYNC that comes first (its answer may overtake the member's own JOINED: the server
    /// may answer a SYNC at once and relay the JOINED of the same batch after it) cannot
    /// say where the member came in, only that it came in at its LastSeq or before: the
    /// member was bound when the SYNC was answered (a SYNC binds it, and is answered after
    /// its JOINED). So delivery starts at LastSeq itself, which is fetched like any gap if
    /// it does not arrive within the reordering wait.
    pub(super) fn anchor(&mut self, now: Instant, seq: u32, event: Option<RoomEvent>) {
        // History is asked for once, and never across a wrap of the room's Seq (a Seq just
        // below the wrap looks "ahead" to the server, which would ignore the NACK).
        // It is bounded by the buffer, like any gap.
        let history = if self.anchored_once {
            0
        } else {
            let window = self.cfg.max_buffered.saturating_sub(1);
            let window = u32::try_from(window).unwrap_or(u32::MAX);
            self.cfg.history.min(seq - 1).min(window)
        };
        self.anchored_once = true;
        if history > 0 && self.mode == Mode::Unknown {
            self.history_deadline = Some(now + HISTORY_WAIT);
        }
        self.delivered = Some(seq_sub(seq, history.saturating_add(1)));
        self.highest = seq;
        self.slots.clear();
        self.history_left = history as usize;
        for _ in 0..history {
            self.slots.push_back(Slot::Missing {
                due: now,
                tries: 0,
                later: 0,
            });
        }
        match event {
            Some(event) => self.slots.push_back(Slot::Held {
                event,
                recovered: false,
            }),
            None => self.slots.push_back(Slot::Missing {
                due: now + self.cfg.reorder_wait,
                tries: 0,
                later: 0,
            }),
        }
        self.extend_slots(now);
    }

    pub(super) fn insert(&mut self, now: Instant, ev: &Event<'_>) {
        let Some(delivered) = self.delivered else {
            return;
        };
        let Some(d) = ahead(delivered, ev.seq) else {
            self.stats.duplicates += 1;
            return;
        };
        if ahead(self.highest, ev.seq).is_some() {
            self.highest = ev.seq;
        }
        if d as usize > self.cfg.max_buffered {
            self.stats.beyond_window += 1;
            self.extend_slots(now);
            return;
        }
        self.extend_slots(now);
        let idx = d as usize - 1;
        let history = idx < self.history_left;
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        match slot {
            Slot::Held { .. } => {
                self.stats.duplicates += 1;
                return;
            }
            Slot::Missing { tries, .. } => {
                let recovered = *tries > 0 && !history;
                let mut event = RoomEvent::from_event(ev);
                event.history = history;
                *slot = Slot::Held { event, recovered };
            }
            Slot::Gone => {
                let mut event = RoomEvent::from_event(ev);
                event.history = history;
                *slot = Slot::Held {
                    event,
                    recovered: !history,
                };
            }
        }
        // Events behind a gap: after a few, the gap is loss, not reordering.
        let threshold = self.cfg.reorder_events;
        for slot in self.slots.range_mut(..idx) {
            if let Slot::Missing {
                due,
                tries: 0,
                later,
            } = slot
            {
                *later = later.saturating_add(1);
                if *later >= threshold {
                    *due = (*due).min(now);
                }
            }
        }
    }

    /// Grows the buffer to cover every Seq known to exist, within the window.
    pub(super) fn extend_slots(&mut self, now: Instant) {
        let Some(delivered) = self.delivered else {
            return;
        };
        let known = ahead(delivered, self.highest).unwrap_or(0) as usize;
        let target = known.min(self.cfg.max_buffered);
        while self.slots.len() < target {
            self.slots.push_back(Slot::Missing {
                due: now + self.cfg.reorder_wait,
                tries: 0,
                later: 0,
            });
        }
    }

    /// Delivers what is ready, then resolves sends and schedules NACKs.
    pub(super) fn settle(&mut self, now: Instant) {
        self.deliver_ready(now);
        self.resend_overtaken(now);
        self.resolve_relayed();
        self.finish_rejoin(now);
        if self.mode != Mode::V1 && self.link == Link::Live {
            self.schedule_nacks(now);
        }
    }

    pub(super) fn deliver_ready(&mut self, now: Instant) {
        let Some(mut delivered) = self.delivered else {
            return;
        };
        let (mut missed, mut recovered) = (0u32, 0u32);
        loop {
            match self.slots.front() {
                Some(Slot::Missing { .. }) | None => break,
                Some(Slot::Gone) => {
                    // A history event the server no longer holds is not "missed": it was
                    // said before this member came.
                    if self.history_left == 0 {
                        missed += 1;
                    }
                }
                Some(Slot::Held { .. }) => {}
            }
            let slot = self.slots.pop_front();
            self.history_left = self.history_left.saturating_sub(1);
            delivered = next_seq(delivered);
            self.delivered = Some(delivered);
            if let Some(Slot::Held {
                event,
                recovered: r,
            }) = slot
            {
                if missed > 0 {
                    self.missed(missed);
                    missed = 0;
                }
                recovered += u32::from(r);
                self.deliver(event);
            }
        }
        if missed > 0 {
            self.missed(missed);
        }
        if recovered > 0 {
            self.stats.recovered += u64::from(recovered);
            self.outputs
                .push_back(Output::Recovered { count: recovered });
        }
        self.extend_slots(now);
    }

    pub(super) fn missed(&mut self, count: u32) {
        self.stats.missed += u64::from(count);
        self.outputs.push_back(Output::Missed { count });
    }

    pub(super) fn deliver(&mut self, event: RoomEvent) {
        self.stats.delivered += 1;
        if event.kind == EventKind::Message as u8 && event.user == self.cfg.user && !event.history {
            self.confirm_echo(&event.body);
        }
        self.outputs.push_back(Output::Deliver(event));
    }

    /// Own MESSAGE events come back in the order the server took them: the oldest sent
    /// message with that text is the one confirmed, and the ones sent before it (under a
    /// lower ClientSeq) that are still pending were overtaken (see [`SendState::Overtaken`]).
    pub(super) fn confirm_echo(&mut self, text: &str) {
        let found = self.pending.iter().position(|p| {
            !matches!(p.state, SendState::Unsent | SendState::Overtaken) && p.text == text
        });
        let Some(i) = found else {
            return;
        };
        // Sent before it (a lower ClientSeq of this membership) and not back: overtaken.
        let wire = self.pending[i].wire_seq;
        for p in &mut self.pending {
            let sent_before = ahead_of(wire, p.wire_seq).is_some();
            if sent_before
                && matches!(
                    p.state,
                    SendState::InFlight { .. } | SendState::Probing | SendState::Relayed { .. }
                )
            {
                p.state = SendState::Overtaken;
            }
        }
        if let Some(p) = self.pending.remove(i) {
            self.outputs.push_back(Output::Confirmed {
                client_seq: p.client_seq,
            });
        }
    }

    /// The next ClientSeq (numbers may be skipped, never reused while they could clash).
    pub(super) fn take_client_seq(&mut self) -> u32 {
        let n = self.next_client_seq;
        self.next_client_seq = self.next_client_seq.checked_add(1).unwrap_or(1);
        n
    }

    /// Sends the overtaken messages again, each under a new ClientSeq, oldest first.
    pub(super) fn resend_overtaken(&mut self, now: Instant) {
        if self.link != Link::Live || self.rejoin.is_some() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending);
        for p in &mut pending {
            if p.state == SendState::Overtaken {
                p.wire_seq = self.take_client_seq();
                p.timeout = self.cfg.send_timeout;
                self.send_pending(now, p);
            }
        }
        self.pending = pending;
    }

    /// NACKs every due gap, in ranges of at most 512, and sets its next try.
    pub(super) fn schedule_nacks(&mut self, now: Instant) {
        let Some(delivered) = self.delivered else {
            return;
        };
        let mut sent = 0;
        let mut unanswered = false;
        let mut i = 0;
        while i < self.slots.len() && sent < MAX_NACKS_PER_ROUND {
            let due_here = |s: &Slot| matches!(s, Slot::Missing { due, .. } if *due <= now);
            if !due_here(&self.slots[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.slots.len()
                && i - start < usize::from(MAX_NACK_COUNT)
                && due_here(&self.slots[i])
            {
                let (retry, cap) = (self.cfg.nack_retry, self.cfg.nack_retry_max);
                if let Slot::Missing { due, tries, .. } = &mut self.slots[i] {
                    *tries = tries.saturating_add(1);
                    *due = now + nack_backoff(retry, cap, *tries);
                    unanswered |= *tries == NACKS_BEFORE_SYNC;
                }
                i += 1;
            }
            self.transmit(
                now,
                Transmit::Nack {
                    from_seq: seq_add(delivered, start as u32 + 1),
                    count: (i - start) as u16,
                },
            );
            self.stats.nacks += 1;
            sent += 1;
        }
        // A gap NACKed again and again without any answer: is the path still there? The
        // SYNC arms the roaming check.
        if unanswered {
            self.transmit(now, Transmit::Sync);
        }
    }

    pub(super) fn deliver_v1(&mut self, event: RoomEvent) {
        // As the v1 session does: gaps are reported, late events are shown anyway.
        if let SeqCheck::Gap(n) = self.v1.observe(event.seq) {
            self.missed(u32::try_from(n).unwrap_or(u32::MAX));
        }
        self.deliver(event);
    }
}
