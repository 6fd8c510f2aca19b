//! The send side of [`Recovery`](super::Recovery): SENDs and their resends, what a SYNC
//! answer says of them, and the fate of messages across a new JOIN.

use super::*;

impl Recovery {
    pub(super) fn send_pending(&mut self, now: Instant, p: &mut Pending) {
        if p.sends > 0 {
            self.stats.resends += 1;
        }
        p.sends += 1;
        if ahead_of(p.wire_seq, self.highest_wire).is_some() {
            self.highest_wire = p.wire_seq;
        }
        p.state = SendState::InFlight {
            deadline: now + p.timeout,
        };
        self.transmit(
            now,
            Transmit::Send {
                client_seq: p.wire_seq,
                text: p.text.clone(),
            },
        );
    }

    /// Sends what waited for the link, in the order typed, each under a ClientSeq above the
    /// previous one.
    pub(super) fn send_unsent(&mut self, now: Instant) {
        let mut floor = self.highest_wire;
        let mut pending = std::mem::take(&mut self.pending);
        for p in &mut pending {
            if matches!(
                p.state,
                SendState::Unsent | SendState::Unknown | SendState::Overtaken
            ) {
                // Kept when still above every number this membership sent (the server
                // relays only a ClientSeq above the highest it relayed); else a new one.
                if p.state == SendState::Overtaken || ahead_of(p.wire_seq, floor).is_none() {
                    p.wire_seq = self.take_client_seq();
                }
                floor = p.wire_seq;
                self.send_pending(now, p);
            }
        }
        self.pending = pending;
    }

    pub(super) fn sync_answered(&mut self, now: Instant, sync: SyncInfo) {
        let mut pending = std::mem::take(&mut self.pending);
        let mut failed = Vec::new();
        for p in &mut pending {
            match p.state {
                SendState::InFlight { .. } | SendState::Probing
                    if p.wire_seq <= sync.last_client_seq =>
                {
                    p.state = SendState::Relayed {
                        last_seq: sync.last_seq,
                    };
                }
                SendState::Probing if p.sends >= self.cfg.send_tries => failed.push(p.client_seq),
                SendState::Probing => {
                    p.timeout = p.timeout.saturating_mul(2).min(SEND_TIMEOUT_MAX);
                    self.send_pending(now, p);
                }
                _ => {}
            }
        }
        pending.retain(|p| !failed.contains(&p.client_seq));
        self.pending = pending;
        for client_seq in failed {
            self.outputs.push_back(Output::SendFailed { client_seq });
        }
    }

    /// A relayed message whose event did not come back by the time everything up to the
    /// SYNC's LastSeq was delivered or given up: its event was GONE, but it was relayed.
    pub(super) fn resolve_relayed(&mut self) {
        let Some(delivered) = self.delivered else {
            return;
        };
        let outputs = &mut self.outputs;
        self.pending.retain(|p| match p.state {
            SendState::Relayed { last_seq } if ahead(delivered, last_seq).is_none() => {
                outputs.push_back(Output::Confirmed {
                    client_seq: p.client_seq,
                });
                false
            }
            _ => true,
        });
    }

    /// After a JOIN again: once everything up to the room's Seq at rejoin is delivered (and
    /// searched for the member's own messages), what was not found is sent again.
    pub(super) fn finish_rejoin(&mut self, now: Instant) {
        let Some(Some(target)) = self.rejoin else {
            return;
        };
        let caught_up = self
            .delivered
            .is_none_or(|d| ahead(d, target).is_none() && self.history_left == 0);
        if caught_up && self.link == Link::Live {
            self.rejoin = None;
            self.send_unsent(now);
        }
    }

    /// A membership ended: what was sent and not known relayed may or may not have been,
    /// and the new membership's LastClientSeq says nothing about it.
    pub(super) fn forget_fates(&mut self) {
        for p in &mut self.pending {
            if matches!(p.state, SendState::InFlight { .. } | SendState::Probing) {
                p.state = SendState::Unknown;
            }
        }
    }
}
