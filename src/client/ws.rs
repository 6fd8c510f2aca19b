//! The client side of the WebSocket transport (PROTOCOL.md §6, RFC 6455), sans-IO: the
//! upgrade request and the check of its answer, masked client frames written into the
//! caller's buffer, and server frames parsed from the caller's bytes. Any Rust client of
//! the web listener (bench-client's web users, the tests, a future client) shares it.
//!
//! It reuses the server's codec where the two sides agree ([`frame::write_header`],
//! [`Opcode`], [`CloseCode`], [`frame::MAX_MESSAGE`], [`http::accept_key`]); what differs
//! is the direction: a client masks what it sends and refuses masked frames from the
//! server (RFC 6455 §5.1).
//!
//! ```text
//!   request() ──► server ──► parse_answer() ──► Ok(head length)
//!   write_unit(channel, unit, mask) ──► server frames ──► parse() ──► Reader::feed() ──► Msg
//! ```

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rand::Rng as _;

use crate::server::web::frame;
use crate::server::web::http;

pub use crate::server::web::frame::{CloseCode, Opcode};
pub use crate::server::web::{CHANNEL_DATAGRAM, CHANNEL_TCRP};

/// Largest server message a client accepts, channel byte included. The server sends one
/// TCRP frame or one datagram per message (at most a few KiB); this leaves room for a
/// larger LIST answer while keeping a hostile server from making the client buffer much.
pub const MAX_SERVER_MESSAGE: usize = 64 * 1024;
/// Largest upgrade answer head (the server's is about 130 bytes).
pub const MAX_ANSWER_HEAD: usize = 4096;
/// Headers read from the upgrade answer.
const MAX_ANSWER_HEADERS: usize = 16;

/// Why a session cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsError {
    /// The upgrade was answered with another status than 101 (403, 426, 503...).
    Refused(u16),
    /// The upgrade answer is not a valid 101 (bad HTTP, a missing or wrong
    /// `Sec-WebSocket-Accept`, no `Upgrade: websocket`).
    BadAnswer(&'static str),
    /// A server frame breaks RFC 6455 (masked, reserved bits, unknown opcode, a control
    /// frame fragmented or too long, fragments out of order).
    Protocol(&'static str),
    /// A server message over [`MAX_SERVER_MESSAGE`].
    TooBig,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WsError::Refused(code) => write!(f, "the upgrade was refused with {code}"),
            WsError::BadAnswer(why) => write!(f, "bad upgrade answer: {why}"),
            WsError::Protocol(why) => write!(f, "WebSocket protocol error: {why}"),
            WsError::TooBig => write!(f, "server message over {MAX_SERVER_MESSAGE} bytes"),
        }
    }
}

impl std::error::Error for WsError {}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64 (RFC 6455 §4.1).
pub fn new_key() -> String {
    let mut k = [0u8; 16];
    rand::rng().fill_bytes(&mut k);
    BASE64.encode(k)
}

/// Appends the upgrade request for `GET /ws` on `host` (as `host:port`) with `key`;
/// `origin` adds an `Origin` header (a browser always sends one; other clients need not).
/// Returns the `Sec-WebSocket-Accept` the answer must carry.
pub fn request(out: &mut Vec<u8>, host: &str, key: &str, origin: Option<&str>) -> String {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(http::WS_PATH.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(o) = origin {
        out.extend_from_slice(b"Origin: ");
        out.extend_from_slice(o.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    http::accept_key(key)
}

/// Checks the upgrade answer at the start of `input`: `Ok(None)` until its head is whole,
/// then the head's length (server frames may follow it in `input`).
pub fn parse_answer(input: &[u8], accept: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() < MAX_ANSWER_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(WsError::BadAnswer("head too long")),
        Err(_) => return Err(WsError::BadAnswer("not HTTP")),
    };
    match resp.code {
        Some(101) => {}
        Some(code) => return Err(WsError::Refused(code)),
        None => return Err(WsError::BadAnswer("no status")),
    }
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    if !header("Upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(WsError::BadAnswer("no Upgrade: websocket"));
    }
    if header("Sec-WebSocket-Accept") != Some(accept) {
        return Err(WsError::BadAnswer("wrong Sec-WebSocket-Accept"));
    }
    Ok(Some(len))
}

/// Appends one masked client frame (FIN set) with `payload`, masked with `mask`.
pub fn write_frame(out: &mut Vec<u8>, opcode: Opcode, payload: &[u8], mask: [u8; 4]) {
    let start = out.len();
    frame::write_header(out, opcode, payload.len());
    out[start + 1] |= 0x80; // the MASK bit: every client frame is masked
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

/// Appends one binary message, masked: `channel`, then `unit` (§6).
pub fn write_unit(out: &mut Vec<u8>, channel: u8, unit: &[u8], mask: [u8; 4]) {
    let start = out.len();
    frame::write_header(out, Opcode::Binary, 1 + unit.len());
    out[start + 1] |= 0x80;
    out.extend_from_slice(&mask);
    out.push(channel ^ mask[0]);
    // The unit's byte i is byte i + 1 of the payload: its mask byte is (i + 1) % 4.
    out.extend(
        unit.iter()
            .zip(mask.iter().cycle().skip(1))
            .map(|(b, m)| b ^ m),
    );
}

/// Appends a close frame with `code`, masked.
pub fn write_close(out: &mut Vec<u8>, code: CloseCode, mask: [u8; 4]) {
    write_frame(out, Opcode::Close, &(code as u16).to_be_bytes(), mask);
}

/// Masking keys for one client: a xorshift stream seeded from the system's CSPRNG, so keys
/// vary per frame as RFC 6455 §5.3 asks without a CSPRNG draw on every send.
#[derive(Debug, Clone)]
pub struct Masks(u32);

impl Masks {
    /// A stream seeded at random.
    pub fn new() -> Masks {
        Masks(rand::rng().next_u32() | 1)
    }

    /// The next key.
    pub fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x.to_be_bytes()
    }
}

impl Default for Masks {
    fn default() -> Self {
        Masks::new()
    }
}

/// One server frame; its payload lies in the caller's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerFrame<'a> {
    /// The final fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The payload (server frames are not masked).
    pub payload: &'a [u8],
}

/// Parses the server frame at the start of `input`: `Ok(None)` until it is whole, then the
/// frame and its length. A frame longer than [`MAX_SERVER_MESSAGE`] is refused from its
/// header, before its body is read.
pub fn parse(input: &[u8]) -> Result<Option<(ServerFrame<'_>, usize)>, WsError> {
    let [b0, b1, ..] = *input else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    if b1 & 0x80 != 0 {
        return Err(WsError::Protocol("a server frame must not be masked"));
    }
    let fin = b0 & 0x80 != 0;
    let opcode = match b0 & 0x0f {
        0 => Opcode::Continuation,
        1 => Opcode::Text,
        2 => Opcode::Binary,
        8 => Opcode::Close,
        9 => Opcode::Ping,
        10 => Opcode::Pong,
        _ => return Err(WsError::Protocol("unknown opcode")),
    };
    let (len, at) = match b1 & 0x7f {
        126 => match input.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                (u64::from_be_bytes(be), 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let control = matches!(opcode, Opcode::Close | Opcode::Ping | Opcode::Pong);
    if control && (!fin || len > frame::MAX_CONTROL as u64) {
        return Err(WsError::Protocol("bad control frame"));
    }
    if len > MAX_SERVER_MESSAGE as u64 {
        return Err(WsError::TooBig);
    }
    let len = len as usize; // at most MAX_SERVER_MESSAGE
    let Some(payload) = input.get(at..at + len) else {
        return Ok(None);
    };
    Ok(Some((
        ServerFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    )))
}

/// A whole server message, once fed to a [`Reader`].
#[derive(Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    /// A binary message (§6: a channel byte, then a unit).
    Binary(&'a [u8]),
    /// A text message (the OCM server never sends one).
    Text(&'a [u8]),
    /// A ping: answer with a pong of this payload.
    Ping(&'a [u8]),
    /// A pong.
    Pong,
    /// The server closes, with this code (1005, "none given", when the frame has none).
    Close(u16),
}

/// The code RFC 6455 §7.1.5 says a close frame without one has.
pub const NO_CODE: u16 = 1005;

/// Puts fragmented server messages together (bounded by [`MAX_SERVER_MESSAGE`]); a whole
/// unfragmented message is handed out without a copy.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
    /// Whether a fragmented message is being put together, and if it is text.
    partial: Option<Opcode>,
}

impl Reader {
    /// Feeds one parsed frame: `Ok(None)` for a fragment that does not end its message.
    pub fn feed<'s>(&'s mut self, f: &ServerFrame<'s>) -> Result<Option<Msg<'s>>, WsError> {
        match f.opcode {
            Opcode::Binary | Opcode::Text => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("a new message inside a message"));
                }
                if f.fin {
                    return Ok(Some(data(f.opcode, f.payload)));
                }
                self.buf.clear();
                self.buf.extend_from_slice(f.payload);
                self.partial = Some(f.opcode);
                Ok(None)
            }
            Opcode::Continuation => {
                let Some(op) = self.partial else {
                    return Err(WsError::Protocol("nothing to continue"));
                };
                if self.buf.len() + f.payload.len() > MAX_SERVER_MESSAGE {
                    return Err(WsError::TooBig);
                }
                self.buf.extend_from_slice(f.payload);
                if !f.fin {
                    return Ok(None);
                }
                self.partial = None;
                Ok(Some(data(op, &self.buf)))
            }
            Opcode::Ping => Ok(Some(Msg::Ping(f.payload))),
            Opcode::Pong => Ok(Some(Msg::Pong)),
            Opcode::Close => Ok(Some(Msg::Close(match *f.payload {
                [a, b, ..] => u16::from_be_bytes([a, b]),
                _ => NO_CODE,
            }))),
        }
    }
}

fn data(op: Opcode, payload: &[u8]) -> Msg<'_> {
    if op == Opcode::Text {
        Msg::Text(payload)
    } else {
        Msg::Binary(payload)
    }
}

#[cfg(test)]
mod tests;
