//! v1.1 control datagrams, client to server (PROTOCOL.md §5.2):
//!
//! ```text
//! Zero(1)=0x00 Op(1) RoomNameSize(1) TokenSize(1) RoomName Token Body(the rest, per Op)
//!   SEND (1): ClientSeq(4) Message(1..=3800 bytes, text)
//!   NACK (2): FromSeq(4, not 0) Count(2, 1..=512)
//!   SYNC (3): empty
//! ```
//! The leading zero is a RoomNameSize that version 1 refuses, so one byte tells the two
//! apart: [`ClientDatagram::parse`] is the server's single entry point for both. Parsing
//! borrows from the receive buffer and never allocates.

use std::fmt;

use super::datagram::{ChatDatagram, DatagramError};
use super::reader::Reader;
use super::{MAX_DATAGRAM, MAX_MESSAGE, MAX_ROOM_NAME, MAX_TOKEN, TextError, text};

/// The first byte of every control datagram (a RoomNameSize v1 refuses).
pub const CONTROL_MARK: u8 = 0x00;
/// Most events one NACK may ask for: what one repair burst can answer without letting a
/// single datagram make the server walk its whole history.
pub const MAX_NACK_COUNT: u16 = 512;
/// Bytes before RoomName: Zero, Op, RoomNameSize, TokenSize.
pub const CONTROL_HEADER_LEN: usize = 4;

/// Control operations (byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ControlOp {
    /// A chat message with the member's ClientSeq.
    Send = 1,
    /// Ask again for a range of the room's events.
    Nack = 2,
    /// Ask for the room's latest Seq and the member's last relayed ClientSeq; a heartbeat.
    Sync = 3,
}

impl ControlOp {
    /// The op for a byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(ControlOp::Send),
            2 => Some(ControlOp::Nack),
            3 => Some(ControlOp::Sync),
            _ => None,
        }
    }

    /// Lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ControlOp::Send => "send",
            ControlOp::Nack => "nack",
            ControlOp::Sync => "sync",
        }
    }
}

/// The Op-specific part of a control datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlBody<'a> {
    /// SEND: a message numbered by the member (1, 2, 3, ...; retransmissions reuse it).
    Send {
        /// The member's number for this message.
        client_seq: u32,
        /// The message, 1..=3800 bytes of text.
        message: &'a str,
    },
    /// NACK: the events `from_seq`, `from_seq`+1, ... (`count` of them, Seq wrapping).
    Nack {
        /// First Seq asked for; never 0.
        from_seq: u32,
        /// How many, 1..=[`MAX_NACK_COUNT`].
        count: u16,
    },
    /// SYNC: no body.
    Sync,
}

impl ControlBody<'_> {
    /// The op of this body.
    pub fn op(&self) -> ControlOp {
        match self {
            ControlBody::Send { .. } => ControlOp::Send,
            ControlBody::Nack { .. } => ControlOp::Nack,
            ControlBody::Sync => ControlOp::Sync,
        }
    }

    /// Encoded length of the body.
    fn len(&self) -> usize {
        match self {
            ControlBody::Send { message, .. } => 4 + message.len(),
            ControlBody::Nack { .. } => 6,
            ControlBody::Sync => 0,
        }
    }
}

/// A control datagram, borrowed from the receive buffer (or about to be encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlDatagram<'a> {
    /// Room name bytes (compared byte for byte with the member's room, as in v1).
    pub room: &'a [u8],
    /// The member's token.
    pub token: &'a [u8],
    /// What is asked.
    pub body: ControlBody<'a>,
}

/// Why a control datagram was dropped, naming the field. The server counts each reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlError {
    /// Longer than [`MAX_DATAGRAM`] bytes (or, encoding, than the buffer given).
    Oversize,
    /// The first byte is not 0x00: not a control datagram.
    NotControl,
    /// Shorter than the four header bytes.
    Truncated,
    /// The Op byte is not 1-3.
    UnknownOp(u8),
    /// RoomNameSize is 0 (or, encoding, the room is over 255 bytes).
    RoomNameSize,
    /// TokenSize is 0 (or, encoding, the token is over 255 bytes).
    TokenSize,
    /// The datagram ends inside RoomName or Token.
    ShortName,
    /// The body's length is wrong for its Op (SEND shorter than 5 bytes, NACK not 6, SYNC
    /// not empty).
    BodyLength(ControlOp),
    /// A SEND message over [`MAX_MESSAGE`] bytes.
    MessageTooLong,
    /// A SEND message that is not a text field.
    MessageText(TextError),
    /// NACK FromSeq 0 (Seq 0 is never a room event).
    FromSeqZero,
    /// NACK Count 0 or over [`MAX_NACK_COUNT`].
    Count(u16),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Oversize => write!(f, "control datagram over {MAX_DATAGRAM} bytes"),
            ControlError::NotControl => f.write_str("first byte is not 0x00"),
            ControlError::Truncated => f.write_str("control datagram shorter than its header"),
            ControlError::UnknownOp(op) => write!(f, "unknown control op {op}"),
            ControlError::RoomNameSize => f.write_str("room name size must be 1..=255"),
            ControlError::TokenSize => f.write_str("token size must be 1..=255"),
            ControlError::ShortName => f.write_str("datagram ends inside room name or token"),
            ControlError::BodyLength(op) => write!(f, "wrong body length for {}", op.name()),
            ControlError::MessageTooLong => write!(f, "message over {MAX_MESSAGE} bytes"),
            ControlError::MessageText(e) => write!(f, "message {e}"),
            ControlError::FromSeqZero => f.write_str("NACK FromSeq 0"),
            ControlError::Count(n) => write!(f, "NACK Count {n} is not 1..={MAX_NACK_COUNT}"),
        }
    }
}

impl std::error::Error for ControlError {}

impl<'a> ControlDatagram<'a> {
    /// Parses one received control datagram.
    pub fn parse(buf: &'a [u8]) -> Result<ControlDatagram<'a>, ControlError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(ControlError::Oversize);
        }
        let mut r = Reader::new(buf);
        let head = r.take(CONTROL_HEADER_LEN).ok_or(ControlError::Truncated)?;
        if head[0] != CONTROL_MARK {
            return Err(ControlError::NotControl);
        }
        let op = ControlOp::from_u8(head[1]).ok_or(ControlError::UnknownOp(head[1]))?;
        if head[2] == 0 {
            return Err(ControlError::RoomNameSize);
        }
        if head[3] == 0 {
            return Err(ControlError::TokenSize);
        }
        let room = r
            .take(usize::from(head[2]))
            .ok_or(ControlError::ShortName)?;
        let token = r
            .take(usize::from(head[3]))
            .ok_or(ControlError::ShortName)?;
        let body = parse_body(op, r.rest())?;
        Ok(ControlDatagram { room, token, body })
    }

    /// Writes the datagram into `out` and returns its length, or the field that cannot be
    /// carried. Nothing is promised about `out` on error.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, ControlError> {
        check_body(&self.body)?;
        let (rl, tl) = (self.room.len(), self.token.len());
        if !(1..=MAX_ROOM_NAME).contains(&rl) {
            return Err(ControlError::RoomNameSize);
        }
        if !(1..=MAX_TOKEN).contains(&tl) {
            return Err(ControlError::TokenSize);
        }
        let n = CONTROL_HEADER_LEN + rl + tl + self.body.len();
        if n > MAX_DATAGRAM {
            return Err(ControlError::Oversize);
        }
        let out = out.get_mut(..n).ok_or(ControlError::Oversize)?;
        out[0] = CONTROL_MARK;
        out[1] = self.body.op() as u8;
        out[2] = rl as u8;
        out[3] = tl as u8;
        let (names, body) = out[CONTROL_HEADER_LEN..].split_at_mut(rl + tl);
        names[..rl].copy_from_slice(self.room);
        names[rl..].copy_from_slice(self.token);
        match self.body {
            ControlBody::Send {
                client_seq,
                message,
            } => {
                body[..4].copy_from_slice(&client_seq.to_be_bytes());
                body[4..].copy_from_slice(message.as_bytes());
            }
            ControlBody::Nack { from_seq, count } => {
                body[..4].copy_from_slice(&from_seq.to_be_bytes());
                body[4..].copy_from_slice(&count.to_be_bytes());
            }
            ControlBody::Sync => {}
        }
        Ok(n)
    }
}

fn parse_body(op: ControlOp, bytes: &[u8]) -> Result<ControlBody<'_>, ControlError> {
    let mut r = Reader::new(bytes);
    let body = match op {
        ControlOp::Send => {
            let client_seq = r.u32().ok_or(ControlError::BodyLength(op))?;
            let message = r.rest();
            if message.is_empty() {
                return Err(ControlError::BodyLength(op));
            }
            if message.len() > MAX_MESSAGE {
                return Err(ControlError::MessageTooLong);
            }
            let message = text(message).map_err(ControlError::MessageText)?;
            ControlBody::Send {
                client_seq,
                message,
            }
        }
        ControlOp::Nack => {
            if bytes.len() != 6 {
                return Err(ControlError::BodyLength(op));
            }
            let (Some(from_seq), Some(count)) = (r.u32(), r.u16()) else {
                return Err(ControlError::BodyLength(op));
            };
            ControlBody::Nack { from_seq, count }
        }
        ControlOp::Sync => {
            if !bytes.is_empty() {
                return Err(ControlError::BodyLength(op));
            }
            ControlBody::Sync
        }
    };
    check_body(&body)?;
    Ok(body)
}

/// The rules of each body's fields, shared by parse and encode.
fn check_body(body: &ControlBody<'_>) -> Result<(), ControlError> {
    match *body {
        ControlBody::Send { message, .. } => {
            if message.is_empty() {
                return Err(ControlError::BodyLength(ControlOp::Send));
            }
            if message.len() > MAX_MESSAGE {
                return Err(ControlError::MessageTooLong);
            }
            text(message.as_bytes()).map_err(ControlError::MessageText)?;
        }
        ControlBody::Nack { from_seq, count } => {
            if from_seq == 0 {
                return Err(ControlError::FromSeqZero);
            }
            if count == 0 || count > MAX_NACK_COUNT {
                return Err(ControlError::Count(count));
            }
        }
        ControlBody::Sync => {}
    }
    Ok(())
}

/// Whether a client datagram is a v1.1 control datagram (its first byte is 0x00) rather
/// than a v1 chat datagram.
pub fn is_control(buf: &[u8]) -> bool {
    buf.first() == Some(&CONTROL_MARK)
}

/// Any client-to-server datagram: the server's one parse for the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDatagram<'a> {
    /// A v1 chat datagram (a message or a heartbeat).
    Chat(ChatDatagram<'a>),
    /// A v1.1 control datagram.
    Control(ControlDatagram<'a>),
}

/// Why a client datagram was dropped, by which parser refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientDatagramError {
    /// A v1 chat datagram that breaks §2.1.
    Chat(DatagramError),
    /// A control datagram that breaks §5.2.
    Control(ControlError),
}

impl fmt::Display for ClientDatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientDatagramError::Chat(e) => e.fmt(f),
            ClientDatagramError::Control(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClientDatagramError {}

impl<'a> ClientDatagram<'a> {
    /// Parses one received client datagram, chat or control by its first byte.
    pub fn parse(buf: &'a [u8]) -> Result<ClientDatagram<'a>, ClientDatagramError> {
        if is_control(buf) {
            ControlDatagram::parse(buf)
                .map(ClientDatagram::Control)
                .map_err(ClientDatagramError::Control)
        } else {
            ChatDatagram::parse(buf)
                .map(ClientDatagram::Chat)
                .map_err(ClientDatagramError::Chat)
        }
    }

    /// The room name bytes, whichever kind.
    pub fn room(&self) -> &'a [u8] {
        match self {
            ClientDatagram::Chat(d) => d.room,
            ClientDatagram::Control(d) => d.room,
        }
    }

    /// The token, whichever kind.
    pub fn token(&self) -> &'a [u8] {
        match self {
            ClientDatagram::Chat(d) => d.token,
            ClientDatagram::Control(d) => d.token,
        }
    }
}

#[cfg(test)]
mod tests;
