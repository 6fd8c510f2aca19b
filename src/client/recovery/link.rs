//! Liveness of [`Recovery`](super::Recovery): the transmit queue, SYNC heartbeats and
//! probes, the move to RESUME, and the fallback to version 1.

use super::*;

impl Recovery {
    pub(super) fn transmit(&mut self, now: Instant, t: Transmit) {
        if t == Transmit::Sync {
            if self.transmits.back() == Some(&Transmit::Sync) {
                return;
            }
            self.stats.syncs += 1;
            self.last_sync = now;
            if self.probe.is_none() {
                self.probe = Some(Probe {
                    sent: 1,
                    next_at: now + self.cfg.probe_interval,
                });
            }
        }
        self.last_sent = now;
        if t == Transmit::Heartbeat {
            self.last_heartbeat = now;
        }
        self.transmits.push_back(t);
    }

    /// When the next heartbeat is due: a SYNC every IdleTimeout/4, or (against a version 1
    /// server) a v1 heartbeat when nothing else went out for that long.
    pub(super) fn heartbeat_due(&self) -> Instant {
        let quarter = self.cfg.idle_timeout / 4;
        if self.mode == Mode::V1 {
            self.last_sent + quarter
        } else {
            self.last_sync + quarter
        }
    }

    /// A probe's SYNC: counted by the probe itself, not re-armed.
    pub(super) fn push_sync(&mut self, now: Instant) {
        self.stats.syncs += 1;
        self.last_sent = now;
        self.last_sync = now;
        if self.transmits.back() != Some(&Transmit::Sync) {
            self.transmits.push_back(Transmit::Sync);
        }
    }

    pub(super) fn proves_v11(&mut self) {
        if self.mode == Mode::Unknown {
            self.mode = Mode::V11;
        }
        self.history_deadline = None;
    }

    /// The server did not show it speaks version 1.1 in time: the history not yet here is
    /// skipped (silently: it was said before this member came), so delivery goes on.
    pub(super) fn give_up_history(&mut self) {
        self.history_deadline = None;
        for slot in self.slots.iter_mut().take(self.history_left) {
            if matches!(slot, Slot::Missing { .. }) {
                *slot = Slot::Gone;
            }
        }
    }

    pub(super) fn need_resume(&mut self) {
        self.link = Link::Resuming;
        self.probe = None;
        self.transmits.clear();
        self.outputs.push_back(Output::NeedResume);
    }

    /// The server relays but never answers: version 1. What waits in the buffer is
    /// delivered with its gaps reported, and unconfirmed messages go out as v1 datagrams
    /// (a version 1 server dropped their SENDs).
    pub(super) fn fall_back_to_v1(&mut self, now: Instant) {
        self.mode = Mode::V1;
        self.probe = None;
        self.history_deadline = None;
        self.outputs.push_back(Output::FellBackToV1);
        if let Some(d) = self.delivered {
            self.v1.observe(d);
        }
        self.transmits
            .retain(|t| !matches!(t, Transmit::Nack { .. } | Transmit::Sync));
        let slots = std::mem::take(&mut self.slots);
        self.history_left = 0;
        for slot in slots {
            if let Slot::Held { event, .. } = slot {
                self.deliver_v1(event);
            }
        }
        for p in std::mem::take(&mut self.pending) {
            self.transmit(now, Transmit::Chat { text: p.text });
        }
        self.transmit(now, Transmit::Heartbeat);
    }
}
