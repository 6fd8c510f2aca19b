//! The data plane: each received datagram checked (token, room, source) and relayed as a
//! MESSAGE, or bound as a heartbeat, or dropped and counted; RATE_LIMITED notices.

use std::net::SocketAddr;
use std::time::Instant;

use log::info;
use rand::Rng;

use super::{DatagramOutcome, RATE_NOTICE_INTERVAL, Relay};
use crate::protocol::TOKEN_LEN;
use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::event::{Event, EventKind};
use crate::server::counters::DropReason;
use crate::server::transmit::{Addr, Dest, SessionId, Transmit};

impl<R: Rng> Relay<R> {
    /// Handles one received datagram from `from`. Rejected datagrams are dropped silently
    /// and counted; nothing is ever sent back to their source.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        let from = Dest {
            addr: from,
            local: None,
        };
        self.handle_datagram_to(now, from, bytes, tx)
    }

    /// [`Relay::handle_datagram`] for a server that knows which of its addresses the
    /// datagram was sent to (`from.local`); the member's datagrams will leave from there.
    pub fn handle_datagram_to(
        &mut self,
        now: Instant,
        from: Dest,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        self.count_datagram(now, Addr::Udp(from), bytes, tx)
    }

    /// Handles one datagram that came on WebSocket `session` (a channel-2 message,
    /// PROTOCOL.md §6). Only members whose token was issued on that session take it.
    pub fn handle_session_datagram(
        &mut self,
        now: Instant,
        session: SessionId,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        self.count_datagram(now, Addr::Session(session), bytes, tx)
    }

    fn count_datagram(
        &mut self,
        now: Instant,
        from: Addr,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        self.counters.datagrams_in += 1;
        let outcome = self.accept_datagram(now, from, bytes, tx);
        match outcome {
            DatagramOutcome::Dropped(reason) => self.counters.drop(reason),
            DatagramOutcome::Heartbeat => self.counters.heartbeats += 1,
            DatagramOutcome::Relayed => self.counters.messages += 1,
        }
        outcome
    }

    fn accept_datagram(
        &mut self,
        now: Instant,
        from: Addr,
        bytes: &[u8],
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        use DatagramOutcome::Dropped;
        let d = match ChatDatagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => return Dropped(drop_reason(e)),
        };
        let Some(&key) = <&[u8; TOKEN_LEN]>::try_from(d.token)
            .ok()
            .and_then(|t| self.by_token.get(t))
        else {
            return Dropped(DropReason::UnknownToken);
        };
        let m = &mut self.members[key];
        if self.rooms[m.room].name.as_bytes() != d.room {
            return Dropped(DropReason::WrongRoom);
        }
        match (from, m.session) {
            (Addr::Udp(d), None) => {
                if m.ip != d.addr.ip().to_canonical() {
                    return Dropped(DropReason::WrongIp);
                }
                match m.addr {
                    Some(Addr::Udp(bound)) if bound.addr != d.addr => {
                        return Dropped(DropReason::WrongAddress);
                    }
                    _ => {}
                }
            }
            (Addr::Session(s), Some(owner)) if s == owner => {}
            // Another session, or the other transport: the token's address is not this
            // one (§6: tokens are not accepted across transports).
            _ => return Dropped(DropReason::WrongAddress),
        }
        m.deadline = now + self.cfg.idle_timeout;
        if m.addr.is_none() {
            self.bind(key, from, tx);
        }
        if d.is_heartbeat() {
            return DatagramOutcome::Heartbeat;
        }
        let m = &mut self.members[key];
        if !m.bucket.take(self.cfg.msg_rate, self.cfg.msg_burst, now) {
            let due = m
                .last_notice
                .is_none_or(|t| now.saturating_duration_since(t) >= RATE_NOTICE_INTERVAL);
            if due {
                m.last_notice = Some(now);
                self.send_rate_notice(key, from, tx);
            }
            return Dropped(DropReason::RateLimited);
        }
        self.emit_from(key, EventKind::Message, d.message, tx);
        DatagramOutcome::Relayed
    }

    /// A member's first datagram: its room's datagrams go to `from` from now on, and the
    /// room hears its JOINED.
    fn bind(&mut self, key: usize, from: Addr, tx: &mut impl Transmit) {
        let m = &mut self.members[key];
        m.addr = Some(from);
        let room = &mut self.rooms[m.room];
        room.bind(key, from, &mut self.counters, tx);
        self.counters.members_bound += 1;
        match from {
            Addr::Udp(d) => info!("'{}' bound in room '{}' from {}", m.name, room.name, d.addr),
            Addr::Session(_) => info!(
                "'{}' bound in room '{}' on a WebSocket session from {}",
                m.name, room.name, m.ip
            ),
        }
        self.emit_from(key, EventKind::Joined, "", tx);
    }

    fn send_rate_notice(&mut self, key: usize, to: Addr, tx: &mut impl Transmit) {
        let ev = Event {
            kind: EventKind::RateLimited as u8,
            seq: 0,
            user: &self.members[key].name,
            body: &self.rate_body,
        };
        self.notice.clear();
        if self.notice.push(&ev) {
            let sent = match to {
                Addr::Udp(d) => tx.send(self.notice.bytes(), std::slice::from_ref(&d)),
                Addr::Session(s) => tx.send_sessions(self.notice.bytes(), std::slice::from_ref(&s)),
            };
            self.counters.rate_notices += 1;
            self.counters.datagrams_out += sent as u64;
            self.counters.send_drops += 1 - sent.min(1) as u64;
        }
    }
}

/// The drop counted for a datagram that does not parse.
fn drop_reason(e: DatagramError) -> DropReason {
    match e {
        DatagramError::Oversize => DropReason::Oversize,
        DatagramError::Malformed => DropReason::Malformed,
        DatagramError::MessageTooLong => DropReason::MessageTooLong,
        DatagramError::BadText(_) => DropReason::BadText,
    }
}
