//! The relay's [`Transmit`] inside the loop: UDP members through `sendmmsg` (small
//! fan-outs staged into one call), WebSocket members through the [`SessionOutbox`].

use super::Udp;
use crate::protocol::event::RawEvents;
use crate::server::transmit::{Addr, SessionId, Targets, Transmit};
use crate::server::web::SessionOutbox;
use crate::sys::udp::{BatchTx as Tx, Dest};

/// Sends to at most this many UDP receivers are staged and leave together in one
/// `sendmmsg` (small rooms' outboxes, and the one-receiver answers: SYNC, NACK repairs,
/// notices): for such small fan-outs a system call each costs more than copying the
/// payload once.
const STAGE_FANOUT: usize = 16;
/// Tag of a staged room outbox: its events count as deliveries, so a refusal takes them
/// back. Answers and notices are not deliveries (tag 0).
const ROOM_OUTBOX: u8 = 1;

/// The relay's [`Transmit`] in the loop: UDP members through `sendmmsg`, WebSocket members
/// through the [`SessionOutbox`] (framed into their buffers after the relay call).
pub(super) struct LoopTx<'a> {
    pub(super) udp: Tx<'a>,
    pub(super) sessions: &'a mut SessionOutbox,
    /// Whether small fan-outs are staged (a batch of datagrams read, the timers, the
    /// end-of-wake-up flush); then [`LoopTx::send_staged`] must follow.
    pub(super) stage: bool,
}

impl Transmit for LoopTx<'_> {
    /// A room's outbox (the relay sends nothing else through `send`).
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        self.send_udp(payload, to, ROOM_OUTBOX)
    }

    fn send_one(&mut self, payload: &[u8], to: Addr) -> usize {
        match to {
            Addr::Udp(d) => self.send_udp(payload, std::slice::from_ref(&d), 0),
            Addr::Session(s) => self.send_sessions(payload, std::slice::from_ref(&s)),
        }
    }

    fn send_targets(&mut self, payload: &[u8], to: &Targets) -> usize {
        let mut sent = self.send_udp(payload, to.udp(), 0);
        if !to.sessions().is_empty() {
            sent += self.send_sessions(payload, to.sessions());
        }
        sent
    }

    fn send_sessions(&mut self, payload: &[u8], to: &[SessionId]) -> usize {
        self.sessions.push(payload, to);
        to.len()
    }
}

impl<'a> LoopTx<'a> {
    pub(super) fn new(udp: &'a mut Udp, sessions: &'a mut SessionOutbox) -> LoopTx<'a> {
        LoopTx {
            udp: Tx::new(&udp.socket, &mut udp.sender),
            sessions,
            stage: false,
        }
    }

    fn send_udp(&mut self, payload: &[u8], to: &[Dest], tag: u8) -> usize {
        if to.is_empty() {
            0
        } else if self.stage && to.len() <= STAGE_FANOUT {
            self.udp.stage(payload, to, tag)
        } else {
            self.udp.send(payload, to)
        }
    }

    /// Sends what was staged; returns the datagrams and deliveries the socket refused (a
    /// staged send was counted as sent when staged).
    pub(super) fn send_staged(&mut self) -> (u64, u64) {
        let (mut datagrams, mut deliveries) = (0, 0);
        self.udp.send_staged(|payload, tag| {
            datagrams += 1;
            if tag == ROOM_OUTBOX {
                deliveries += RawEvents::new(payload).count() as u64;
            }
        });
        (datagrams, deliveries)
    }
}
