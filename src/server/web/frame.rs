//! The WebSocket framing of RFC 6455, server side, sans-IO: bytes in, frames and close codes
//! out. Written here rather than taken from `tungstenite` because our connections are
//! already sans-IO ([`Conn`](crate::server::conn::Conn) owns the buffers, timers and
//! closing): what is left is a header parser and a header writer, and a crate built around
//! `Read + Write` streams would bring its own buffers and its own idea of blocking.
//!
//! What the server enforces on client frames (§5 of the RFC): every frame is masked; no
//! reserved bit is set; the opcode is known; a control frame is whole (FIN) and at most 125
//! bytes; a data frame's length is refused from its header when it is over
//! [`MAX_MESSAGE`], so such a body is never read or buffered. Fragmented messages are put
//! together by [`Assembler`], bounded by the same limit.

use std::fmt;

/// Largest message accepted from a client, channel byte included (PROTOCOL.md §6).
pub const MAX_MESSAGE: usize = 8192;
/// Longest client frame header: 2 bytes, an 8-byte length, a 4-byte mask.
pub const MAX_HEADER: usize = 14;
/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL: usize = 125;

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The rest of a fragmented message.
    Continuation = 0,
    /// A UTF-8 message (refused here: §6 is binary only).
    Text = 1,
    /// A binary message.
    Binary = 2,
    /// The closing handshake.
    Close = 8,
    /// Keep-alive probe; answered with a pong.
    Ping = 9,
    /// Answer to a ping (or unsolicited); ignored.
    Pong = 10,
}

impl Opcode {
    fn from_u8(b: u8) -> Option<Opcode> {
        Some(match b {
            0 => Opcode::Continuation,
            1 => Opcode::Text,
            2 => Opcode::Binary,
            8 => Opcode::Close,
            9 => Opcode::Ping,
            10 => Opcode::Pong,
            _ => return None,
        })
    }

    fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Close status codes the server sends (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseCode {
    /// Normal closure (the answer to a client's close).
    Normal = 1000,
    /// Going away: the session was idle too long (or the server stops).
    GoingAway = 1001,
    /// Protocol error: a bad frame, an empty message, an unknown channel.
    Protocol = 1002,
    /// Unsupported data: a text message.
    Unsupported = 1003,
    /// A close frame's reason that is not UTF-8.
    InvalidData = 1007,
    /// A message over [`MAX_MESSAGE`].
    TooBig = 1009,
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({self:?})", *self as u16)
    }
}

/// One client frame, its payload still masked (it lies in the connection's input, which
/// the parser only borrows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The final fragment of its message.
    pub fin: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key.
    pub mask: [u8; 4],
    /// The masked payload.
    pub masked: &'a [u8],
}

impl Frame<'_> {
    /// Appends the unmasked payload to `out`.
    pub fn unmask_into(&self, out: &mut Vec<u8>) {
        out.extend(
            self.masked
                .iter()
                .zip(self.mask.iter().cycle())
                .map(|(b, m)| b ^ m),
        );
    }
}

/// Parses the client frame at the start of `input`: `Ok(None)` until it is whole, then the
/// frame and its length in bytes. An error is the code to close with; the stream cannot be
/// read further.
pub fn parse(input: &[u8]) -> Result<Option<(Frame<'_>, usize)>, CloseCode> {
    let [b0, b1, ..] = *input else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(CloseCode::Protocol); // reserved bits: no extension was negotiated
    }
    let fin = b0 & 0x80 != 0;
    let opcode = Opcode::from_u8(b0 & 0x0f).ok_or(CloseCode::Protocol)?;
    if b1 & 0x80 == 0 {
        return Err(CloseCode::Protocol); // a client frame must be masked
    }
    let (len, mut at) = match b1 & 0x7f {
        126 => match input.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match input.get(2..10) {
            Some(b) => {
                let mut be = [0u8; 8];
                be.copy_from_slice(b);
                let len = u64::from_be_bytes(be);
                if len >> 63 != 0 {
                    return Err(CloseCode::Protocol); // the top bit must be 0
                }
                (len, 10)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL as u64) {
        return Err(CloseCode::Protocol);
    }
    if len > MAX_MESSAGE as u64 {
        return Err(CloseCode::TooBig);
    }
    let len = len as usize; // at most MAX_MESSAGE
    let Some(m) = input.get(at..at + 4) else {
        return Ok(None);
    };
    let mask = [m[0], m[1], m[2], m[3]];
    at += 4;
    let Some(masked) = input.get(at..at + len) else {
        return Ok(None);
    };
    let frame = Frame {
        fin,
        opcode,
        mask,
        masked,
    };
    Ok(Some((frame, at + len)))
}

/// Appends a server frame header (FIN set, unmasked) for a `len`-byte payload.
pub fn write_header(out: &mut Vec<u8>, opcode: Opcode, len: usize) {
    out.push(0x80 | opcode as u8);
    if len < 126 {
        out.push(len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// The header length [`write_header`] uses for a `len`-byte payload.
pub fn header_len(len: usize) -> usize {
    match len {
        0..126 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Appends one binary message: `channel`, then `unit`.
pub fn write_unit(out: &mut Vec<u8>, channel: u8, unit: &[u8]) {
    write_header(out, Opcode::Binary, 1 + unit.len());
    out.push(channel);
    out.extend_from_slice(unit);
}

/// Appends a close frame with `code`.
pub fn write_close(out: &mut Vec<u8>, code: CloseCode) {
    write_header(out, Opcode::Close, 2);
    out.extend_from_slice(&(code as u16).to_be_bytes());
}

/// What a frame meant, once fed to an [`Assembler`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Nothing to do yet (a fragment, a pong).
    Nothing,
    /// A whole binary message.
    Message(&'a [u8]),
    /// Answer a ping with this payload.
    Pong(&'a [u8]),
    /// The client closes; answer with this code and close.
    Closed(CloseCode),
}

/// Puts fragmented messages together, and checks the order of fragments. Its buffer is
/// allocated at the first message and reused; it never holds more than [`MAX_MESSAGE`].
#[derive(Debug, Default)]
pub struct Assembler {
    buf: Vec<u8>,
    /// A fragmented binary message is being put together.
    partial: bool,
    /// A ping's payload (at most [`MAX_CONTROL`] bytes).
    control: Vec<u8>,
}

impl Assembler {
    /// Feeds one parsed frame. An error is the code to close with.
    pub fn feed<'s>(&'s mut self, frame: &Frame<'_>) -> Result<Step<'s>, CloseCode> {
        match frame.opcode {
            Opcode::Text => Err(if self.partial {
                CloseCode::Protocol
            } else {
                CloseCode::Unsupported
            }),
            Opcode::Binary => {
                if self.partial {
                    return Err(CloseCode::Protocol); // a new message inside a message
                }
                self.buf.clear();
                frame.unmask_into(&mut self.buf);
                self.partial = !frame.fin;
                Ok(if frame.fin {
                    Step::Message(&self.buf)
                } else {
                    Step::Nothing
                })
            }
            Opcode::Continuation => {
                if !self.partial {
                    return Err(CloseCode::Protocol); // nothing to continue
                }
                if self.buf.len() + frame.masked.len() > MAX_MESSAGE {
                    return Err(CloseCode::TooBig);
                }
                frame.unmask_into(&mut self.buf);
                if !frame.fin {
                    return Ok(Step::Nothing);
                }
                self.partial = false;
                Ok(Step::Message(&self.buf))
            }
            Opcode::Ping => {
                // A control frame may come between fragments: its own buffer keeps theirs.
                self.control.clear();
                frame.unmask_into(&mut self.control);
                Ok(Step::Pong(&self.control))
            }
            Opcode::Pong => Ok(Step::Nothing),
            Opcode::Close => {
                self.control.clear();
                frame.unmask_into(&mut self.control);
                Ok(Step::Closed(close_answer(&self.control)))
            }
        }
    }
}

/// The code to answer a client's close frame with (RFC 6455 §5.5.1, §7.4).
fn close_answer(body: &[u8]) -> CloseCode {
    match body {
        [] => CloseCode::Normal,
        [_] => CloseCode::Protocol,
        [a, b, reason @ ..] => {
            let code = u16::from_be_bytes([*a, *b]);
            let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !valid {
                CloseCode::Protocol
            } else if std::str::from_utf8(reason).is_err() {
                CloseCode::InvalidData
            } else {
                CloseCode::Normal
            }
        }
    }
}

#[cfg(test)]
mod tests;
