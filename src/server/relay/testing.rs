//! Driving a [`Relay`] without sockets, for tests, benchmarks and fuzzing: send a request
//! and read the token back, encode a chat datagram, set up a room of bound members.
//!
//! Built for `cargo test` and with the `fuzzing` feature only; release builds leave it out.

use std::net::SocketAddr;
use std::time::Instant;

use rand::Rng;

use super::{DatagramOutcome, Relay};
use crate::protocol::control::{ControlBody, ControlDatagram};
use crate::protocol::datagram::ChatDatagram;
use crate::protocol::frame::{Grant, Request, split_reply};
use crate::protocol::{MAX_DATAGRAM, Operation, Status};
use crate::server::transmit::Transmit;

/// Sends one request from `from`'s IP; returns the status and the token granted (empty
/// when none was: an error, a LEAVE or a LIST).
pub fn request<R: Rng>(
    relay: &mut Relay<R>,
    now: Instant,
    from: std::net::IpAddr,
    req: &Request<'_>,
    tx: &mut impl Transmit,
) -> (Status, Vec<u8>) {
    let mut out = Vec::new();
    let status = relay.handle_request(now, from, req, &mut out, tx);
    let (_, n) = split_reply(&out)
        .expect("a well-formed RESPONSE")
        .expect("a whole RESPONSE");
    let token = match split_reply(&out[n..]).expect("a well-formed COMPLETE") {
        Some((f, _)) if req.operation() != Operation::List => Grant::parse(f.payload)
            .expect("a well-formed grant")
            .token
            .to_vec(),
        _ => Vec::new(),
    };
    (status, token)
}

/// The bytes of a chat datagram (a heartbeat when `message` is empty).
pub fn chat_datagram(room: &str, token: &[u8], message: &str) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let d = ChatDatagram {
        room: room.as_bytes(),
        token,
        message,
    };
    let n = d.encode(&mut buf).expect("an encodable datagram");
    buf[..n].to_vec()
}

/// The bytes of a v1.1 control datagram.
pub fn control_datagram(room: &str, token: &[u8], body: ControlBody<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let d = ControlDatagram {
        room: room.as_bytes(),
        token,
        body,
    };
    let n = d.encode(&mut buf).expect("an encodable control datagram");
    buf[..n].to_vec()
}

/// Creates room `room` (capacity as asked; no password) with one member per entry of
/// `members`: the first creates it, the others join, each from its address's IP and bound
/// by a heartbeat from that address right after. Returns their tokens, in order. Panics
/// unless every step succeeds. Nothing is flushed: the caller ends the wake-up.
pub fn bound_room<R: Rng>(
    relay: &mut Relay<R>,
    now: Instant,
    room: &str,
    capacity: u16,
    members: &[(&str, SocketAddr)],
    tx: &mut impl Transmit,
) -> Vec<Vec<u8>> {
    let mut tokens = Vec::with_capacity(members.len());
    for (i, &(user, addr)) in members.iter().enumerate() {
        let req = if i == 0 {
            Request::Create {
                room,
                user,
                password: b"",
                capacity,
                resume_key: None,
            }
        } else {
            Request::Join {
                room,
                user,
                password: b"",
                resume_key: None,
            }
        };
        let (status, token) = request(relay, now, addr.ip(), &req, tx);
        assert_eq!(status, Status::Ok, "{user} into {room}");
        let heartbeat = chat_datagram(room, &token, "");
        let outcome = relay.handle_datagram(now, addr, &heartbeat, tx);
        assert_eq!(outcome, DatagramOutcome::Heartbeat, "{user} binds");
        tokens.push(token);
    }
    tokens
}

/// The Seq of room `room`'s latest event (0 when it has had none, or does not exist): what
/// a SYNC answer says, for checks of NACK and SYNC answers.
pub fn latest_seq<R: Rng>(relay: &Relay<R>, room: &str) -> u32 {
    relay
        .by_name
        .get(room)
        .map_or(0, |&key| relay.rooms[key].seq())
}
