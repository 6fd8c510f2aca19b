//! A web connection's [`Service`]: first one HTTP request head ([`super::http`]); after an
//! upgrade, WebSocket messages ([`super::frame`]), each one unit of PROTOCOL.md §6.
//!
//! * Channel 1: exactly one TCRP REQUEST frame, answered by the relay as over TCP (from the
//!   session's peer IP); each RESPONSE and COMPLETE goes out as a message of its own. A
//!   message that is not exactly one well-framed request is answered INVALID_REQUEST (as
//!   §1.1's malformed frame: RoomName empty, Operation echoed) and the session closed 1002.
//! * Channel 2: one datagram, handed to the relay as having come on this session.
//! * A text message closes with 1003, a message over 8192 bytes with 1009, an empty one or
//!   an unknown channel with 1002; pings are answered; a client's close is answered.

use std::net::IpAddr;
use std::time::Instant;

use log::debug;
use rand::Rng;

use super::frame::{self, Assembler, CloseCode, Opcode, Step};
use super::http::{self, Head, Site};
use super::{CHANNEL_DATAGRAM, CHANNEL_TCRP, WebStats};
use crate::protocol::frame::{HEADER_LEN, Header, Request, encode_response, split_request};
use crate::protocol::{Operation, Status};
use crate::server::Relay;
use crate::server::conn::{Served, Service};
use crate::server::transmit::{SessionId, Transmit};

/// What a web connection remembers between reads.
#[derive(Debug, Default)]
pub struct WebState {
    /// The upgrade was answered: the input is WebSocket frames now.
    upgraded: bool,
    /// Puts fragmented messages together.
    assembler: Assembler,
}

impl WebState {
    /// Whether the connection is a WebSocket session.
    pub fn is_session(&self) -> bool {
        self.upgraded
    }
}

/// Serves one web connection's input through `relay`.
pub struct Web<'a, R, T> {
    /// The relay that answers requests and takes datagrams.
    pub relay: &'a mut Relay<R>,
    /// Where events caused by a request or a datagram are sent.
    pub tx: &'a mut T,
    /// The peer's IP, for the per-IP limits and LEAVE.
    pub peer: IpAddr,
    /// This connection, as a destination of datagrams.
    pub session: SessionId,
    /// The connection's state.
    pub state: &'a mut WebState,
    /// The listener's settings.
    pub site: &'a Site,
    /// Scratch for the relay's answers before they are framed (reused).
    pub scratch: &'a mut Vec<u8>,
    /// What the web side counts.
    pub stats: &'a mut WebStats,
}

impl<R: Rng, T: Transmit> Service for Web<'_, R, T> {
    fn serve(&mut self, now: Instant, input: &[u8], out: &mut Vec<u8>) -> Served {
        if !self.state.upgraded {
            return match http::serve(input, self.site, out) {
                Head::Incomplete => Served::Incomplete,
                Head::Upgraded(n) => {
                    self.state.upgraded = true;
                    self.stats.sessions_opened += 1;
                    debug!("web session from {}", self.peer);
                    Served::Answered(n)
                }
                Head::Answered(code) => {
                    debug!("web request from {} answered {code}", self.peer);
                    Served::Last
                }
            };
        }
        let (f, n) = match frame::parse(input) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Served::Incomplete,
            Err(code) => return self.close(out, code),
        };
        let Web {
            relay,
            tx,
            peer,
            session,
            state,
            scratch,
            stats,
            ..
        } = self;
        let result = match state.assembler.feed(&f) {
            Err(code) => Err(code),
            Ok(Step::Nothing) => Ok(true),
            Ok(Step::Pong(payload)) => {
                frame::write_header(out, Opcode::Pong, payload.len());
                out.extend_from_slice(payload);
                Ok(true)
            }
            Ok(Step::Closed(code)) => {
                debug!("web session from {peer} closed by the client; answering {code}");
                frame::write_close(out, code);
                return Served::Last;
            }
            Ok(Step::Message(message)) => {
                stats.messages_in += 1;
                let mut unit = Unit {
                    relay,
                    tx,
                    peer: *peer,
                    session: *session,
                    scratch,
                    stats,
                };
                unit.handle(now, message, out)
            }
        };
        match result {
            Ok(true) => Served::Answered(n),
            // A cluster's CREATE, JOIN or RESUME: framed and written when it is answered.
            Ok(false) => Served::Deferred(n),
            Err(code) => self.close(out, code),
        }
    }
}

impl<R, T> Web<'_, R, T> {
    fn close(&mut self, out: &mut Vec<u8>, code: CloseCode) -> Served {
        debug!("closing web session from {}: {code}", self.peer);
        frame::write_close(out, code);
        Served::Last
    }
}

/// One whole message's handling, with the fields it needs borrowed apart from the
/// assembler that holds the message.
struct Unit<'s, 'a, R, T> {
    relay: &'s mut &'a mut Relay<R>,
    tx: &'s mut &'a mut T,
    peer: IpAddr,
    session: SessionId,
    scratch: &'s mut &'a mut Vec<u8>,
    stats: &'s mut &'a mut WebStats,
}

impl<R: Rng, T: Transmit> Unit<'_, '_, R, T> {
    /// Handles one message; `Ok(false)`: a request whose answer comes later.
    fn handle(
        &mut self,
        now: Instant,
        message: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, CloseCode> {
        match message {
            [] => Err(CloseCode::Protocol),
            [CHANNEL_TCRP, frame @ ..] => self.request(now, frame, out),
            [CHANNEL_DATAGRAM, datagram @ ..] => {
                self.datagram(now, datagram);
                Ok(true)
            }
            [_, ..] => Err(CloseCode::Protocol),
        }
    }

    /// A channel-1 unit: exactly one REQUEST frame.
    fn request(&mut self, now: Instant, unit: &[u8], out: &mut Vec<u8>) -> Result<bool, CloseCode> {
        let peer = self.peer;
        let scratch = &mut **self.scratch;
        scratch.clear();
        let whole = match split_request(unit) {
            Ok(Some((frame, n))) if n == unit.len() => {
                match Request::parse(&frame) {
                    Ok(req) => {
                        let session = self.session;
                        let tx = &mut **self.tx;
                        let answered = self.relay.handle_session_request_deferrable(
                            now, peer, session, &req, scratch, tx,
                        );
                        if !answered {
                            return Ok(false);
                        }
                    }
                    Err(field) => {
                        debug!("invalid request from web session {peer}: {field}");
                        encode_response(scratch, frame.op, frame.room, Status::InvalidRequest);
                        if let Some(op) = Operation::from_u8(frame.op) {
                            self.relay.counters.request(op, Status::InvalidRequest);
                        }
                    }
                }
                true
            }
            Ok(_) => {
                debug!("web session {peer}: a channel-1 message that is not one whole frame");
                let op = unit.get(1).copied().unwrap_or(0);
                encode_response(scratch, op, b"", Status::InvalidRequest);
                false
            }
            Err(bad) => {
                debug!("malformed frame from web session {peer}: {bad}");
                encode_response(scratch, bad.op, b"", Status::InvalidRequest);
                false
            }
        };
        if !whole {
            self.relay.counters.malformed_frames += 1;
        }
        frame_replies(out, scratch, self.stats);
        if whole {
            Ok(true)
        } else {
            Err(CloseCode::Protocol)
        }
    }

    /// A channel-2 unit: one datagram from this session (dropped and counted by the relay
    /// like any datagram when it is not a valid one of a member of this session).
    fn datagram(&mut self, now: Instant, datagram: &[u8]) {
        let tx = &mut **self.tx;
        self.relay
            .handle_session_datagram(now, self.session, datagram, tx);
    }
}

/// Writes the relay's reply frames `replies` to `out` as channel-1 messages, each RESPONSE
/// and COMPLETE in a message of its own (also for an answer that came later: a cluster's).
pub fn frame_replies(out: &mut Vec<u8>, replies: &[u8], stats: &mut WebStats) {
    let mut rest = replies;
    while let Some(len) = reply_len(rest) {
        let (reply, tail) = rest.split_at(len);
        frame::write_unit(out, CHANNEL_TCRP, reply);
        stats.messages_out += 1;
        rest = tail;
    }
}

/// The length of the whole reply frame at the start of `buf` (which the relay wrote, so
/// it is whole and well formed), or `None` at its end.
fn reply_len(buf: &[u8]) -> Option<usize> {
    let h = Header::parse(buf)?;
    let len = HEADER_LEN + usize::from(h.room_len) + usize::try_from(h.payload_len?).ok()?;
    (len <= buf.len()).then_some(len)
}

#[cfg(test)]
mod tests;
