//! The data plane: each received datagram checked (token, room, source) and relayed as a
//! MESSAGE, or bound as a heartbeat, or handed to `recovery.rs` (a v1.1 control datagram),
//! or dropped and counted; RATE_LIMITED notices; pinning and unpinning addresses.

use std::net::SocketAddr;
use std::time::Instant;

use log::info;
use rand::Rng;

use super::{DatagramOutcome, RATE_NOTICE_INTERVAL, Relay};
use crate::protocol::TOKEN_LEN;
use crate::protocol::control::{ClientDatagram, ClientDatagramError, ControlError};
use crate::protocol::datagram::DatagramError;
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
            DatagramOutcome::Duplicate => self.counters.duplicate_sends += 1,
            DatagramOutcome::Nack => self.counters.nacks += 1,
            DatagramOutcome::Sync => self.counters.syncs += 1,
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
        let d = match ClientDatagram::parse(bytes) {
            Ok(d) => d,
            Err(e) => return DatagramOutcome::Dropped(drop_reason(e)),
        };
        let key = match self.check_sender(d.room(), d.token(), from) {
            Ok(key) => key,
            Err(reason) => return DatagramOutcome::Dropped(reason),
        };
        self.members[key].deadline = now + self.cfg.idle_timeout;
        let pinned_now = self.members[key].addr.is_none();
        if pinned_now {
            self.pin(key, from, now, tx);
        }
        match d {
            ClientDatagram::Chat(d) if d.is_heartbeat() => DatagramOutcome::Heartbeat,
            ClientDatagram::Chat(d) => self.relay_message(now, key, from, d.message, tx),
            ClientDatagram::Control(d) => {
                self.handle_control(now, key, from, pinned_now, d.body, tx)
            }
        }
    }

    /// The §2.1 checks: the token is a member's of that room, the datagram comes from the
    /// IP the token was issued to, and from the pinned address if there is one. A token
    /// issued on a WebSocket session counts only on that session, and one issued over TCP
    /// only over UDP (§6: tokens are not accepted across transports).
    fn check_sender(&self, room: &[u8], token: &[u8], from: Addr) -> Result<usize, DropReason> {
        let &key = <&[u8; TOKEN_LEN]>::try_from(token)
            .ok()
            .and_then(|t| self.by_token.get(t))
            .ok_or(DropReason::UnknownToken)?;
        let m = &self.members[key];
        if self.rooms[m.room].name.as_bytes() != room {
            return Err(DropReason::WrongRoom);
        }
        match (from, m.session) {
            (Addr::Udp(d), None) => {
                if m.ip != d.addr.ip().to_canonical() {
                    return Err(DropReason::WrongIp);
                }
                match m.addr {
                    Some(Addr::Udp(pinned)) if pinned.addr != d.addr => {
                        Err(DropReason::WrongAddress)
                    }
                    _ => Ok(key),
                }
            }
            (Addr::Session(s), Some(owner)) if s == owner => Ok(key),
            // Another session, or the other transport.
            _ => Err(DropReason::WrongAddress),
        }
    }

    /// Relays a chat message of member `key` (v1, or a new SEND) unless its rate limit
    /// drops it.
    pub(super) fn relay_message(
        &mut self,
        now: Instant,
        key: usize,
        from: Addr,
        message: &str,
        tx: &mut impl Transmit,
    ) -> DatagramOutcome {
        let m = &mut self.members[key];
        if !m.bucket.take(self.cfg.msg_rate, self.cfg.msg_burst, now) {
            let due = m
                .last_notice
                .is_none_or(|t| now.saturating_duration_since(t) >= RATE_NOTICE_INTERVAL);
            if due {
                m.last_notice = Some(now);
                self.send_rate_notice(key, from, tx);
            }
            return DatagramOutcome::Dropped(DropReason::RateLimited);
        }
        self.emit_from(key, EventKind::Message, message, now, tx);
        DatagramOutcome::Relayed
    }

    /// Pins a member's address: its room's datagrams go to `from` from now on. The first
    /// time, the room hears its JOINED; after RESUME, nobody hears anything. (The one place
    /// a member gets an address: [`Relay::unpin`] is the one place it loses it.)
    fn pin(&mut self, key: usize, from: Addr, now: Instant, tx: &mut impl Transmit) {
        let m = &mut self.members[key];
        m.addr = Some(from);
        let first = !m.joined;
        m.joined = true;
        let room = &mut self.rooms[m.room];
        room.bind(key, from, &mut self.counters, tx);
        match from {
            Addr::Udp(d) => info!("'{}' bound in room '{}' from {}", m.name, room.name, d.addr),
            Addr::Session(_) => info!(
                "'{}' bound in room '{}' on a WebSocket session from {}",
                m.name, room.name, m.ip
            ),
        }
        if first {
            self.counters.members_bound += 1;
            self.emit_from(key, EventKind::Joined, "", now, tx);
        }
    }

    /// Takes a member's address away (RESUME): it is sent nothing until its next accepted
    /// datagram pins one again.
    pub(super) fn unpin(&mut self, key: usize, tx: &mut impl Transmit) {
        let m = &mut self.members[key];
        if m.addr.take().is_some() {
            self.rooms[m.room].unbind(key, &mut self.counters, tx);
        }
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
            let sent = tx.send_one(self.notice.bytes(), to);
            self.counters.rate_notices += 1;
            self.counters.datagrams_out += sent as u64;
            self.counters.send_drops += 1 - sent.min(1) as u64;
        }
    }
}

/// The drop counted for a datagram that does not parse.
pub fn drop_reason(e: ClientDatagramError) -> DropReason {
    match e {
        ClientDatagramError::Chat(e) => match e {
            DatagramError::Oversize => DropReason::Oversize,
            DatagramError::Malformed => DropReason::Malformed,
            DatagramError::MessageTooLong => DropReason::MessageTooLong,
            DatagramError::BadText(_) => DropReason::BadText,
        },
        ClientDatagramError::Control(e) => match e {
            ControlError::Oversize => DropReason::Oversize,
            ControlError::NotControl
            | ControlError::Truncated
            | ControlError::RoomNameSize
            | ControlError::TokenSize
            | ControlError::ShortName => DropReason::Malformed,
            ControlError::UnknownOp(_) => DropReason::UnknownOp,
            ControlError::BodyLength(_) => DropReason::BadBody,
            ControlError::MessageTooLong => DropReason::MessageTooLong,
            ControlError::MessageText(_) => DropReason::BadText,
            ControlError::FromSeqZero => DropReason::NackFromSeqZero,
            ControlError::Count(_) => DropReason::NackCount,
        },
    }
}
