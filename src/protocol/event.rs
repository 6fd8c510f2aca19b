//! Server-to-client events of the data plane. One datagram holds one or more events of one
//! room, back to back, in Seq order:
//!
//! ```text
//! Kind(1) Seq(4) UserNameSize(1) UserName BodySize(2) Body
//! ```
//! The server encodes an event once into a room's outbox and sends the same bytes to every
//! member; a receiver walks a datagram with [`Events`] (text bodies, v1) or [`RawEvents`]
//! (any body, v1.1: GONE and SYNC carry binary bodies, read with [`Gone`] and [`SyncInfo`]).

use std::fmt;

use super::reader::Reader;
use super::{MAX_DATAGRAM, text};

/// Bytes an event takes besides its user name and body.
pub const EVENT_OVERHEAD: usize = 1 + 4 + 1 + 2;

/// Event kinds. Receivers ignore kinds they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EventKind {
    /// A chat message; the body is the message.
    Message = 1,
    /// A member bound (sent its first datagram).
    Joined = 2,
    /// A member left with LEAVE.
    Left = 3,
    /// A member was silent for the idle timeout and was dropped.
    TimedOut = 4,
    /// The room is gone; the body says why.
    RoomClosed = 5,
    /// The sender's message was dropped by the rate limit (Seq 0, to that member only).
    RateLimited = 6,
    /// (v1.1) These events of the room are no longer held (Seq 0; binary body, [`Gone`]).
    Gone = 7,
    /// (v1.1) Answer to SYNC, or a tail notice (Seq 0; binary body, [`SyncInfo`]).
    Sync = 8,
    /// (v1.1) A member's address changed through RESUME (Seq 0, empty body).
    Resumed = 9,
}

impl EventKind {
    /// The kind for a byte, if this version knows it.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(EventKind::Message),
            2 => Some(EventKind::Joined),
            3 => Some(EventKind::Left),
            4 => Some(EventKind::TimedOut),
            5 => Some(EventKind::RoomClosed),
            6 => Some(EventKind::RateLimited),
            7 => Some(EventKind::Gone),
            8 => Some(EventKind::Sync),
            9 => Some(EventKind::Resumed),
            _ => None,
        }
    }

    /// Whether this kind's body is binary rather than text (GONE and SYNC).
    pub fn has_binary_body(self) -> bool {
        matches!(self, EventKind::Gone | EventKind::Sync)
    }
}

/// Whether the kind byte `kind` carries a binary body (so [`Events`] skips it).
fn binary_kind(kind: u8) -> bool {
    EventKind::from_u8(kind).is_some_and(EventKind::has_binary_body)
}

/// ROOM_CLOSED bodies.
pub mod reason {
    /// The host sent LEAVE.
    pub const HOST_LEFT: &str = "host left";
    /// The host was silent for the idle timeout.
    pub const HOST_TIMED_OUT: &str = "host timed out";
    /// The server is stopping.
    pub const SHUTTING_DOWN: &str = "server shutting down";
}

/// One event, borrowed from a received datagram (or about to be encoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    /// The kind byte (unknown kinds are kept so a receiver can skip them).
    pub kind: u8,
    /// Per-room sequence number; 0 only for RATE_LIMITED.
    pub seq: u32,
    /// Whom the event is about (empty for ROOM_CLOSED).
    pub user: &'a str,
    /// The body text.
    pub body: &'a str,
}

impl Event<'_> {
    /// The encoded size of this event.
    pub fn len(&self) -> usize {
        EVENT_OVERHEAD + self.user.len() + self.body.len()
    }

    /// Never true: an event has at least its fixed fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The known kind, if it is one.
    pub fn known_kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }

    /// Writes the event at the start of `out`; returns its length, or `None` when it does not
    /// fit (or its user name is over 255 bytes or its body over 65535).
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        self.raw().encode(out)
    }

    /// The same event with its body as bytes.
    pub fn raw(&self) -> RawEvent<'_> {
        RawEvent {
            kind: self.kind,
            seq: self.seq,
            user: self.user,
            body: self.body.as_bytes(),
        }
    }
}

/// One event whose body is bytes, text or not: what v1.1 receivers read (GONE and SYNC have
/// binary bodies), and how the server encodes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawEvent<'a> {
    /// The kind byte (unknown kinds are kept so a receiver can skip them).
    pub kind: u8,
    /// Per-room sequence number; 0 for notices outside the sequence (kinds 6-9).
    pub seq: u32,
    /// Whom the event is about (empty for ROOM_CLOSED, GONE and tail notices).
    pub user: &'a str,
    /// The body bytes.
    pub body: &'a [u8],
}

impl<'a> RawEvent<'a> {
    /// The encoded size of this event.
    pub fn len(&self) -> usize {
        EVENT_OVERHEAD + self.user.len() + self.body.len()
    }

    /// Never true: an event has at least its fixed fields.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The known kind, if it is one.
    pub fn known_kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }

    /// Writes the event at the start of `out`; returns its length, or `None` when it does not
    /// fit (or its user name is over 255 bytes or its body over 65535).
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let (u, b) = (self.user.as_bytes(), self.body);
        let ulen = u8::try_from(u.len()).ok()?;
        let blen = u16::try_from(b.len()).ok()?;
        let n = self.len();
        let out = out.get_mut(..n)?;
        out[0] = self.kind;
        out[1..5].copy_from_slice(&self.seq.to_be_bytes());
        out[5] = ulen;
        out[6..6 + u.len()].copy_from_slice(u);
        out[6 + u.len()..8 + u.len()].copy_from_slice(&blen.to_be_bytes());
        out[8 + u.len()..].copy_from_slice(b);
        Some(n)
    }

    /// The event with a text body, as v1 reads it; [`EventError::BadText`] if the body is
    /// not a text field.
    pub fn text(&self) -> Result<Event<'a>, EventError> {
        Ok(Event {
            kind: self.kind,
            seq: self.seq,
            user: self.user,
            body: text(self.body).map_err(|_| EventError::BadText)?,
        })
    }
}

/// The body of a GONE event (Kind 7): the room's events `from_seq` .. (`count` of them, Seq
/// wrapping) are no longer held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    /// First Seq of the range; never 0.
    pub from_seq: u32,
    /// How many; at least 1.
    pub count: u16,
}

impl Gone {
    /// Length of a GONE body.
    pub const BODY_LEN: usize = 6;

    /// The body bytes.
    pub fn body(&self) -> [u8; Self::BODY_LEN] {
        let mut b = [0u8; Self::BODY_LEN];
        b[..4].copy_from_slice(&self.from_seq.to_be_bytes());
        b[4..].copy_from_slice(&self.count.to_be_bytes());
        b
    }

    /// Reads a GONE body: exactly 6 bytes, FromSeq not 0, Count not 0.
    pub fn parse(body: &[u8]) -> Result<Gone, EventError> {
        let bad = EventError::BadBody(EventKind::Gone);
        let b: &[u8; Self::BODY_LEN] = body.try_into().map_err(|_| bad)?;
        let from_seq = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let count = u16::from_be_bytes([b[4], b[5]]);
        if from_seq == 0 || count == 0 {
            return Err(bad);
        }
        Ok(Gone { from_seq, count })
    }

    /// The whole GONE event (Seq 0, empty UserName), ready to [`RawEvent::encode`]; `body`
    /// holds the bytes it borrows.
    pub fn event<'b>(&self, body: &'b mut [u8; Self::BODY_LEN]) -> RawEvent<'b> {
        *body = self.body();
        RawEvent {
            kind: EventKind::Gone as u8,
            seq: 0,
            user: "",
            body,
        }
    }
}

/// The body of a SYNC event (Kind 8): the answer to a SYNC, or a tail notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncInfo {
    /// The room's latest Seq (0 if none yet).
    pub last_seq: u32,
    /// The highest ClientSeq relayed for the asking member (0 in a tail notice or if none).
    pub last_client_seq: u32,
}

impl SyncInfo {
    /// Length of a SYNC body.
    pub const BODY_LEN: usize = 8;

    /// The body bytes.
    pub fn body(&self) -> [u8; Self::BODY_LEN] {
        let mut b = [0u8; Self::BODY_LEN];
        b[..4].copy_from_slice(&self.last_seq.to_be_bytes());
        b[4..].copy_from_slice(&self.last_client_seq.to_be_bytes());
        b
    }

    /// Reads a SYNC body: exactly 8 bytes.
    pub fn parse(body: &[u8]) -> Result<SyncInfo, EventError> {
        let b: &[u8; Self::BODY_LEN] = body
            .try_into()
            .map_err(|_| EventError::BadBody(EventKind::Sync))?;
        Ok(SyncInfo {
            last_seq: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            last_client_seq: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        })
    }

    /// The whole SYNC event (Seq 0) for `user` (empty in a tail notice), ready to
    /// [`RawEvent::encode`]; `body` holds the bytes it borrows.
    pub fn event<'b>(&self, user: &'b str, body: &'b mut [u8; Self::BODY_LEN]) -> RawEvent<'b> {
        *body = self.body();
        RawEvent {
            kind: EventKind::Sync as u8,
            seq: 0,
            user,
            body,
        }
    }
}

/// Why the rest of a server datagram could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// The last event is cut short.
    Truncated,
    /// A user name or body is not a text field.
    BadText,
    /// A binary body of the wrong length or with a zero field (GONE, SYNC).
    BadBody(EventKind),
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventError::Truncated => "event cut short",
            EventError::BadText => "event text is not valid",
            EventError::BadBody(EventKind::Gone) => "GONE body is not FromSeq, Count",
            EventError::BadBody(EventKind::Sync) => "SYNC body is not LastSeq, LastClientSeq",
            EventError::BadBody(_) => "event body is not valid",
        })
    }
}

impl std::error::Error for EventError {}

/// Walks the events of one server datagram with text bodies, as v1 reads them. Events
/// whose kind has a binary body (GONE, SYNC) are skipped: a v1 receiver ignores kinds it
/// does not know, and a v1.1 receiver reads them with [`RawEvents`]. After an error it
/// yields nothing more: the rest of that datagram is ignored, as the protocol says.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    raw: RawEvents<'a>,
}

impl<'a> Events<'a> {
    /// Starts at the first event of `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Events {
            raw: RawEvents::new(datagram),
        }
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let item = match self.raw.next()? {
                Ok(raw) if binary_kind(raw.kind) => continue,
                Ok(raw) => raw.text(),
                Err(e) => Err(e),
            };
            self.raw.failed |= item.is_err();
            return Some(item);
        }
    }
}

/// Walks the events of one server datagram, bodies as bytes (user names are still checked
/// as text). After an error it yields nothing more.
#[derive(Debug, Clone)]
pub struct RawEvents<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> RawEvents<'a> {
    /// Starts at the first event of `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        RawEvents {
            r: Reader::new(datagram),
            failed: false,
        }
    }

    fn next_event(&mut self) -> Result<RawEvent<'a>, EventError> {
        let kind = self.r.u8().ok_or(EventError::Truncated)?;
        let seq = self.r.u32().ok_or(EventError::Truncated)?;
        let user = self.r.u8_prefixed().ok_or(EventError::Truncated)?;
        let blen = self.r.u16().ok_or(EventError::Truncated)?;
        let body = self
            .r
            .take(usize::from(blen))
            .ok_or(EventError::Truncated)?;
        Ok(RawEvent {
            kind,
            seq,
            user: text(user).map_err(|_| EventError::BadText)?,
            body,
        })
    }
}

impl<'a> Iterator for RawEvents<'a> {
    type Item = Result<RawEvent<'a>, EventError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.r.is_empty() {
            return None;
        }
        let item = self.next_event();
        self.failed = item.is_err();
        Some(item)
    }
}

/// A datagram-sized buffer that events are appended to: the unit the server fans out.
#[derive(Debug)]
pub struct EventBuf {
    buf: Box<[u8; MAX_DATAGRAM]>,
    len: usize,
    events: usize,
}

impl Default for EventBuf {
    fn default() -> Self {
        EventBuf {
            buf: Box::new([0u8; MAX_DATAGRAM]),
            len: 0,
            events: 0,
        }
    }
}

impl EventBuf {
    /// Appends `event` if it fits; returns whether it did.
    pub fn push(&mut self, event: &Event<'_>) -> bool {
        self.push_raw(&event.raw())
    }

    /// Appends an event with any body if it fits; returns whether it did.
    pub fn push_raw(&mut self, event: &RawEvent<'_>) -> bool {
        match event.encode(&mut self.buf[self.len..]) {
            Some(n) => {
                self.len += n;
                self.events += 1;
                true
            }
            None => false,
        }
    }

    /// Whether `event` would fit after what is already here.
    pub fn fits(&self, event: &Event<'_>) -> bool {
        self.fits_len(event.len())
    }

    /// Whether an event of `len` encoded bytes would fit after what is already here.
    pub fn fits_len(&self, len: usize) -> bool {
        self.len + len <= MAX_DATAGRAM
    }

    /// The encoded events so far.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// How many events are held.
    pub fn events(&self) -> usize {
        self.events
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Empties the buffer (keeps its memory).
    pub fn clear(&mut self) {
        self.len = 0;
        self.events = 0;
    }
}

#[cfg(test)]
mod tests;
