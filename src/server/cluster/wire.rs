//! The backplane's messages between nodes, sans-IO: parse `&[u8]` into a typed value or a
//! typed error, encode into a caller's buffer.
//!
//! The events themselves are not re-encoded: the owner publishes each outbox datagram as
//! it is (the very bytes its own members get) on the room's subject, and the other nodes
//! send those bytes on. The messages here are the rest: what a node forwards to a room's
//! owner, and the questions it asks it. Each starts with a tag byte; strings are
//! length-prefixed (one byte, two for a message body); nothing may follow the last field.
//!
//! ```text
//!   1 FORWARD   room, node, kind (1), client seq (4), user,      event of a member elsewhere
//!               body (2-byte size)
//!   2 JOIN      room, node, user                                 may this member join?
//!   3 ANSWER    status (1)                                       the owner's TCRP status
//!   4 HISTORY   room, from (4), count (2)                        resend these Seqs
//!   5 EVENTS    events, back to back                             the held part of them
//!   6 HANDOVER  room, node, token, resume key                    who holds this member?
//!   7 MEMBER    node, user, client seq (4)                       I did; it is yours now
//!   8 MOVED     room, user, from node, to node                   (to the owner) it moved
//!   9 RELAYED   user, client seq (4)                             (owner) that SEND is in
//! ```
//!
//! RELAYED goes on the room's event subject among the datagrams, behind a zero byte (no
//! datagram starts with one: Kind 0 is not a kind).

use crate::protocol::MAX_MESSAGE;
use crate::protocol::event::EventKind;

/// What a node forwards to the owner on behalf of one of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward<'a> {
    /// The room.
    pub room: &'a str,
    /// The node whose member it is.
    pub node: &'a str,
    /// MESSAGE, JOINED, LEFT or TIMED_OUT.
    pub kind: EventKind,
    /// A v1.1 SEND's ClientSeq (0: none, a v1 message or another kind): the owner relays
    /// each at most once, and says RELAYED.
    pub client_seq: u32,
    /// The member's name.
    pub user: &'a str,
    /// The message (empty for the others).
    pub body: &'a str,
}

/// One backplane message (not the event batches, which are raw datagrams).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg<'a> {
    /// An event of a member on another node, for the owner to sequence.
    Forward(Forward<'a>),
    /// A node asks the owner whether `user` may join `room` (name and capacity are the
    /// owner's to check; the password was checked against the registry's hash).
    Join {
        /// The room.
        room: &'a str,
        /// The asking node.
        node: &'a str,
        /// The joining member's name.
        user: &'a str,
    },
    /// The owner's answer to [`Msg::Join`]: a TCRP status code.
    Answer(u8),
    /// A node that saw a gap asks the owner for `count` events from Seq `from`.
    History {
        /// The room.
        room: &'a str,
        /// First missing Seq.
        from: u32,
        /// How many.
        count: u16,
    },
    /// The owner's answer to [`Msg::History`]: the events it still holds, as encoded.
    Events(&'a [u8]),
    /// RESUME on another node (to every node): the node holding the member with this token
    /// gives it up if the resume key is its key.
    Handover {
        /// The room.
        room: &'a str,
        /// The node the member resumes on.
        node: &'a str,
        /// The member's token.
        token: &'a [u8],
        /// The resume key it showed.
        key: &'a [u8],
    },
    /// The answer to [`Msg::Handover`]: the member, given up.
    Member {
        /// The node that held it.
        node: &'a str,
        /// Its name.
        user: &'a str,
        /// The highest ClientSeq relayed for it.
        client_seq: u32,
    },
    /// The owner relayed member `user`'s SENDs up to `client_seq` (what SYNC says).
    Relayed {
        /// The member's name.
        user: &'a str,
        /// Its highest ClientSeq relayed.
        client_seq: u32,
    },
    /// A member of the owner's room moved from one node to another (RESUME).
    Moved {
        /// The room.
        room: &'a str,
        /// The member's name.
        user: &'a str,
        /// The node that held it.
        from: &'a str,
        /// The node that holds it now.
        to: &'a str,
    },
}

/// Why a backplane message did not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Empty, or shorter than its fields say.
    Truncated,
    /// An unknown tag.
    Tag(u8),
    /// A string that is not UTF-8, or empty where a name is needed.
    BadText,
    /// A forwarded kind that is not MESSAGE, JOINED, LEFT or TIMED_OUT.
    Kind(u8),
    /// A body over the message limit.
    TooLong,
    /// Bytes after the last field.
    Trailing,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated"),
            WireError::Tag(t) => write!(f, "unknown tag {t}"),
            WireError::BadText => f.write_str("a name or body is not valid text"),
            WireError::Kind(k) => write!(f, "kind {k} cannot be forwarded"),
            WireError::TooLong => f.write_str("message over the limit"),
            WireError::Trailing => f.write_str("bytes after the last field"),
        }
    }
}

impl std::error::Error for WireError {}

const FORWARD: u8 = 1;
const JOIN: u8 = 2;
const ANSWER: u8 = 3;
const HISTORY: u8 = 4;
const EVENTS: u8 = 5;
const HANDOVER: u8 = 6;
const MEMBER: u8 = 7;
const MOVED: u8 = 8;
const RELAYED: u8 = 9;
/// What RELAYED follows on a room's event subject.
pub const NOT_A_DATAGRAM: u8 = 0;

/// Reads fields off the front of a message.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A one-byte-prefixed, non-empty string.
    fn name(&mut self) -> Result<&'a str, WireError> {
        let n = usize::from(self.u8()?);
        let s = std::str::from_utf8(self.take(n)?).map_err(|_| WireError::BadText)?;
        if s.is_empty() {
            return Err(WireError::BadText);
        }
        Ok(s)
    }

    /// One-byte-prefixed, non-empty bytes.
    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = usize::from(self.u8()?);
        if n == 0 {
            return Err(WireError::Truncated);
        }
        self.take(n)
    }

    fn end(&self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Trailing)
        }
    }
}

impl<'a> Msg<'a> {
    /// Parses one message (hostile bytes: any node, or anything with access to the
    /// subjects, may have sent them).
    pub fn parse(bytes: &'a [u8]) -> Result<Msg<'a>, WireError> {
        let mut r = Reader(bytes);
        let msg = match r.u8()? {
            FORWARD => {
                let room = r.name()?;
                let node = r.name()?;
                let k = r.u8()?;
                let kind = match EventKind::from_u8(k) {
                    Some(
                        kind @ (EventKind::Message
                        | EventKind::Joined
                        | EventKind::Left
                        | EventKind::TimedOut),
                    ) => kind,
                    _ => return Err(WireError::Kind(k)),
                };
                let client_seq = r.u32()?;
                let user = r.name()?;
                let n = usize::from(r.u16()?);
                if n > MAX_MESSAGE {
                    return Err(WireError::TooLong);
                }
                let body = std::str::from_utf8(r.take(n)?).map_err(|_| WireError::BadText)?;
                Msg::Forward(Forward {
                    room,
                    node,
                    kind,
                    client_seq,
                    user,
                    body,
                })
            }
            JOIN => Msg::Join {
                room: r.name()?,
                node: r.name()?,
                user: r.name()?,
            },
            ANSWER => Msg::Answer(r.u8()?),
            HISTORY => Msg::History {
                room: r.name()?,
                from: r.u32()?,
                count: r.u16()?,
            },
            EVENTS => return Ok(Msg::Events(r.0)),
            HANDOVER => Msg::Handover {
                room: r.name()?,
                node: r.name()?,
                token: r.bytes()?,
                key: r.bytes()?,
            },
            MEMBER => Msg::Member {
                node: r.name()?,
                user: r.name()?,
                client_seq: r.u32()?,
            },
            RELAYED => Msg::Relayed {
                user: r.name()?,
                client_seq: r.u32()?,
            },
            MOVED => Msg::Moved {
                room: r.name()?,
                user: r.name()?,
                from: r.name()?,
                to: r.name()?,
            },
            t => return Err(WireError::Tag(t)),
        };
        r.end()?;
        Ok(msg)
    }

    /// Appends the encoded message to `out`. Names longer than 255 bytes or a body longer
    /// than 65535 cannot be sent (the relay never has such: TCRP caps them lower).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Msg::Forward(f) => {
                out.push(FORWARD);
                put_name(out, f.room);
                put_name(out, f.node);
                out.push(f.kind as u8);
                out.extend_from_slice(&f.client_seq.to_be_bytes());
                put_name(out, f.user);
                let n = f.body.len().min(usize::from(u16::MAX));
                out.extend_from_slice(&(n as u16).to_be_bytes());
                out.extend_from_slice(&f.body.as_bytes()[..n]);
            }
            Msg::Join { room, node, user } => {
                out.push(JOIN);
                put_name(out, room);
                put_name(out, node);
                put_name(out, user);
            }
            Msg::Answer(status) => out.extend_from_slice(&[ANSWER, status]),
            Msg::History { room, from, count } => {
                out.push(HISTORY);
                put_name(out, room);
                out.extend_from_slice(&from.to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
            Msg::Events(events) => {
                out.push(EVENTS);
                out.extend_from_slice(events);
            }
            Msg::Handover {
                room,
                node,
                token,
                key,
            } => {
                out.push(HANDOVER);
                put_name(out, room);
                put_name(out, node);
                put_bytes(out, token);
                put_bytes(out, key);
            }
            Msg::Member {
                node,
                user,
                client_seq,
            } => {
                out.push(MEMBER);
                put_name(out, node);
                put_name(out, user);
                out.extend_from_slice(&client_seq.to_be_bytes());
            }
            Msg::Relayed { user, client_seq } => {
                out.push(RELAYED);
                put_name(out, user);
                out.extend_from_slice(&client_seq.to_be_bytes());
            }
            Msg::Moved {
                room,
                user,
                from,
                to,
            } => {
                out.push(MOVED);
                put_name(out, room);
                put_name(out, user);
                put_name(out, from);
                put_name(out, to);
            }
        }
    }
}

/// A one-byte-prefixed string (cut at 255 bytes: callers never pass longer).
fn put_name(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// One-byte-prefixed bytes (cut at 255: tokens and keys are shorter).
fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    let n = b.len().min(255);
    out.push(n as u8);
    out.extend_from_slice(&b[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg<'static>> {
        vec![
            Msg::Forward(Forward {
                room: "lobby",
                node: "n2",
                kind: EventKind::Message,
                client_seq: 9,
                user: "bob",
                body: "hello ✓",
            }),
            Msg::Forward(Forward {
                room: "lobby",
                node: "n2",
                kind: EventKind::Joined,
                client_seq: 0,
                user: "bob",
                body: "",
            }),
            Msg::Join {
                room: "lobby",
                node: "n3",
                user: "carol",
            },
            Msg::Answer(5),
            Msg::History {
                room: "lobby",
                from: 0xFFFF_FFFE,
                count: 512,
            },
            Msg::Events(&[1, 0, 0, 0, 1, 0, 0, 0]),
            Msg::Handover {
                room: "lobby",
                node: "n2",
                token: b"0123456789abcdef0123456789abcdef",
                key: &[0xFF; 16],
            },
            Msg::Member {
                node: "n2",
                user: "bob",
                client_seq: 7,
            },
            Msg::Moved {
                room: "lobby",
                user: "bob",
                from: "n2",
                to: "n3",
            },
            Msg::Relayed {
                user: "bob",
                client_seq: 12,
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all() {
            let mut out = Vec::new();
            m.encode(&mut out);
            assert_eq!(Msg::parse(&out), Ok(m));
        }
    }

    #[test]
    fn every_prefix_and_every_extension_is_refused() {
        for m in all() {
            if matches!(m, Msg::Events(_)) {
                continue; // the rest of the message is its payload
            }
            let mut out = Vec::new();
            m.encode(&mut out);
            for n in 0..out.len() {
                assert!(Msg::parse(&out[..n]).is_err(), "{m:?} cut at {n}");
            }
            out.push(0);
            assert_eq!(Msg::parse(&out), Err(WireError::Trailing));
        }
    }

    #[test]
    fn hostile_fields_are_typed_errors() {
        assert_eq!(Msg::parse(&[99]), Err(WireError::Tag(99)));
        assert_eq!(Msg::parse(&[]), Err(WireError::Truncated));
        // A forwarded ROOM_CLOSED: only the owner closes its rooms.
        let mut out = Vec::new();
        Msg::Forward(Forward {
            room: "r",
            node: "n",
            kind: EventKind::Message,
            client_seq: 0,
            user: "u",
            body: "",
        })
        .encode(&mut out);
        let kind_at = 1 + 2 + 2;
        out[kind_at] = EventKind::RoomClosed as u8;
        assert_eq!(Msg::parse(&out), Err(WireError::Kind(5)));
        // Bad UTF-8 in a name; an empty name.
        assert_eq!(
            Msg::parse(&[JOIN, 1, 0xFF, 1, b'n', 1, b'u']),
            Err(WireError::BadText)
        );
        assert_eq!(
            Msg::parse(&[JOIN, 0, 1, b'n', 1, b'u']),
            Err(WireError::BadText)
        );
        // A body over the message limit is refused before it is read.
        let mut long = vec![FORWARD, 1, b'r', 1, b'n', 1, 0, 0, 0, 0, 1, b'u'];
        long.extend_from_slice(&((MAX_MESSAGE + 1) as u16).to_be_bytes());
        assert_eq!(Msg::parse(&long), Err(WireError::TooLong));
    }
}
