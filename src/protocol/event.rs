//! Server-to-client events of the data plane. One datagram holds one or more events of one
//! room, back to back, in Seq order:
//!
//! ```text
//! Kind(1) Seq(4) UserNameSize(1) UserName BodySize(2) Body
//! ```
//! The server encodes an event once into a room's outbox and sends the same bytes to every
//! member; a receiver walks a datagram with [`Events`].

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
            _ => None,
        }
    }
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
        let (u, b) = (self.user.as_bytes(), self.body.as_bytes());
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
}

/// Why the rest of a server datagram could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventError {
    /// The last event is cut short.
    Truncated,
    /// A user name or body is not a text field.
    BadText,
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventError::Truncated => "event cut short",
            EventError::BadText => "event text is not valid",
        })
    }
}

impl std::error::Error for EventError {}

/// Walks the events of one server datagram. After an error it yields nothing more: the
/// rest of that datagram is ignored, as the protocol says.
#[derive(Debug, Clone)]
pub struct Events<'a> {
    r: Reader<'a>,
    failed: bool,
}

impl<'a> Events<'a> {
    /// Starts at the first event of `datagram`.
    pub fn new(datagram: &'a [u8]) -> Self {
        Events {
            r: Reader::new(datagram),
            failed: false,
        }
    }

    fn next_event(&mut self) -> Result<Event<'a>, EventError> {
        let kind = self.r.u8().ok_or(EventError::Truncated)?;
        let seq = self.r.u32().ok_or(EventError::Truncated)?;
        let user = self.r.u8_prefixed().ok_or(EventError::Truncated)?;
        let blen = self.r.u16().ok_or(EventError::Truncated)?;
        let body = self
            .r
            .take(usize::from(blen))
            .ok_or(EventError::Truncated)?;
        Ok(Event {
            kind,
            seq,
            user: text(user).map_err(|_| EventError::BadText)?,
            body: text(body).map_err(|_| EventError::BadText)?,
        })
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = Result<Event<'a>, EventError>;

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
        self.len + event.len() <= MAX_DATAGRAM
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
mod tests {
    use super::*;

    #[test]
    fn worked_example_two_events_match_protocol_md() {
        let joined = Event {
            kind: EventKind::Joined as u8,
            seq: 7,
            user: "bob",
            body: "",
        };
        let msg = Event {
            kind: EventKind::Message as u8,
            seq: 8,
            user: "alice",
            body: "hi 👋",
        };
        let mut b = EventBuf::default();
        assert!(b.push(&joined) && b.push(&msg));
        let expect: &[u8] = &[
            0x02, 0, 0, 0, 7, 3, b'b', b'o', b'b', 0, 0, 0x01, 0, 0, 0, 8, 5, b'a', b'l', b'i',
            b'c', b'e', 0, 7, 0x68, 0x69, 0x20, 0xf0, 0x9f, 0x91, 0x8b,
        ];
        assert_eq!(b.bytes(), expect);
        let got: Vec<_> = Events::new(expect).collect();
        assert_eq!(got, vec![Ok(joined), Ok(msg)]);
    }

    #[test]
    fn truncated_tail_is_reported_once() {
        let mut b = EventBuf::default();
        let e = Event {
            kind: 1,
            seq: 1,
            user: "u",
            body: "hello",
        };
        b.push(&e);
        b.push(&e);
        let bytes = b.bytes();
        let cut = &bytes[..bytes.len() - 1];
        let got: Vec<_> = Events::new(cut).collect();
        assert_eq!(got, vec![Ok(e), Err(EventError::Truncated)]);
    }

    #[test]
    fn buffer_refuses_what_does_not_fit() {
        let body = "x".repeat(3800);
        let e = Event {
            kind: 1,
            seq: 1,
            user: &"u".repeat(255),
            body: &body,
        };
        let mut b = EventBuf::default();
        assert!(b.fits(&e) && b.push(&e));
        assert!(!b.fits(&e));
        assert!(!b.push(&e));
        assert_eq!(b.events(), 1);
        b.clear();
        assert!(b.is_empty());
    }
}
