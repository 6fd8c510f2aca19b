//! TCRP over a [`Conn`](super::Conn): whole frames go to the relay; frames the relay never
//! sees are answered INVALID_REQUEST here, and counted in the relay's counters.

use std::net::IpAddr;
use std::time::Instant;

use log::debug;
use rand::Rng;

use super::{Served, Service};
use crate::protocol::frame::{MAX_REQUEST_FRAME, Request, encode_response, split_request};
use crate::protocol::{Operation, Status};
use crate::server::Relay;
use crate::server::transmit::{SessionId, Transmit};

/// A TCRP connection's input buffer: one whole request frame at most.
pub const INPUT_CAP: usize = MAX_REQUEST_FRAME;

/// The answer to a connection over the limits: SERVER_FULL, then close.
pub fn refusal() -> Vec<u8> {
    let mut out = Vec::new();
    encode_response(&mut out, 0, b"", Status::ServerFull);
    out
}

/// Serves one connection's TCRP requests from `peer` through `relay`; events that a
/// request causes (a LEAVE's LEFT) go out through `tx`.
pub struct Tcrp<'a, R, T> {
    /// The relay that answers well-formed requests.
    pub relay: &'a mut Relay<R>,
    /// Where events caused by a request are sent.
    pub tx: &'a mut T,
    /// The peer's address, for the per-IP limits.
    pub peer: IpAddr,
    /// This connection (its slab key and generation), to find it again with an answer
    /// that comes later (a cluster's CREATE and JOIN).
    pub conn: SessionId,
}

impl<R: Rng, T: Transmit> Service for Tcrp<'_, R, T> {
    fn serve(&mut self, now: Instant, input: &[u8], out: &mut Vec<u8>) -> Served {
        let peer = self.peer;
        match split_request(input) {
            Ok(None) => Served::Incomplete,
            Ok(Some((frame, n))) => {
                match Request::parse(&frame) {
                    Ok(req) => {
                        let answered = self
                            .relay
                            .handle_request_deferrable(now, peer, self.conn, &req, out, self.tx);
                        if !answered {
                            return Served::Deferred(n);
                        }
                    }
                    Err(field) => {
                        debug!("invalid request from {peer}: {field}");
                        encode_response(out, frame.op, frame.room, Status::InvalidRequest);
                        if let Some(op) = Operation::from_u8(frame.op) {
                            self.relay.counters.request(op, Status::InvalidRequest);
                        }
                    }
                }
                Served::Answered(n)
            }
            Err(bad) => {
                debug!("malformed frame from {peer}: {bad}; closing");
                encode_response(out, bad.op, b"", Status::InvalidRequest);
                self.relay.counters.malformed_frames += 1;
                Served::Last
            }
        }
    }
}
