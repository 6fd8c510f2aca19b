//! The UDP chat session: what a member does after CREATE or JOIN.
//!
//! A [`Session`] owns one UDP socket, bound to an ephemeral port of the same address family
//! as the server's data plane and `connect`ed to it, so the kernel hands it only the
//! server's datagrams (PROTOCOL.md §2.1). It sends the first heartbeat as soon as it opens
//! (the server relays nothing to a member before its first datagram), sends messages, keeps
//! heartbeats going at a quarter of the idle timeout while nothing else is sent, and turns
//! received datagrams into owned [`SessionEvent`]s, adding [`SessionEvent::Missed`] where
//! the room's Seq jumped.
//!
//! The session does no waiting of its own besides the timeout its caller passes to
//! [`Session::recv_events`]: the caller's loop asks [`Session::next_heartbeat`] when to wake
//! up and calls [`Session::poll_heartbeat`], so a terminal UI, a script driver and a
//! benchmark can each run it in their own loop.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::client::control::{self, ControlError, Membership};
use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::event::{EventKind, Events};
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, control_char};

/// Most datagrams one [`Session::recv_events`] call drains after the first, so a flood
/// cannot keep a caller's loop from drawing the screen or sending heartbeats.
pub const MAX_DRAIN: usize = 256;

/// Shortest heartbeat interval, whatever idle timeout the server announces (PROTOCOL.md
/// allows 1 s, whose quarter is 250 ms; this only guards against a zero).
const MIN_HEARTBEAT: Duration = Duration::from_millis(100);

/// One thing that happened in the room, owned so it can outlive the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// A chat message (ours included: the server relays to the sender too).
    Message {
        /// The room's sequence number of this event.
        seq: u32,
        /// Who sent it.
        user: String,
        /// The message.
        text: String,
    },
    /// A member bound its address (sent its first datagram); we get our own JOINED too.
    Joined {
        /// Who joined.
        user: String,
    },
    /// A member left with LEAVE.
    Left {
        /// Who left.
        user: String,
    },
    /// A member was silent for the idle timeout and was dropped (possibly us).
    TimedOut {
        /// Who was dropped.
        user: String,
    },
    /// The room is gone; nothing more will come.
    RoomClosed {
        /// Why, as the server said it (`host left`, `host timed out`,
        /// `server shutting down`).
        reason: String,
    },
    /// The server dropped one of our messages because we sent too fast.
    RateLimited {
        /// The limit, as the server words it (e.g. `20 messages/s, burst 40`).
        limit: String,
    },
    /// The room's Seq jumped: this many events never reached us (lost or dropped).
    Missed(u64),
}

/// Why [`Session::send_message`] refused or failed.
#[derive(Debug)]
pub enum SendError {
    /// An empty message is a heartbeat on the wire, so it is not sent as a message.
    Empty,
    /// Over [`MAX_MESSAGE`] bytes.
    TooLong {
        /// The message's length in bytes.
        len: usize,
    },
    /// A control character (tab, newline, escape…), which the protocol does not carry.
    ControlChar {
        /// The first one found.
        ch: char,
    },
    /// The message cannot be framed (the room name and token leave too little room).
    Encode(DatagramError),
    /// The socket refused it.
    Io(io::Error),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Empty => f.write_str("the message is empty"),
            SendError::TooLong { len } => write!(
                f,
                "the message is {len} bytes, over the limit of {MAX_MESSAGE} bytes"
            ),
            SendError::ControlChar { ch } => write!(
                f,
                "the message contains a control character (U+{:04X}), which cannot be sent",
                u32::from(*ch)
            ),
            SendError::Encode(e) => write!(f, "the message cannot be sent: {e}"),
            SendError::Io(e) => write!(f, "sending failed: {e}"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Checks that `message` can travel as a chat message, without sending it: not empty, at
/// most [`MAX_MESSAGE`] bytes, no control character. Front ends call it to refuse a line
/// with a precise reason before anything touches the network.
pub fn check_message(message: &str) -> Result<(), SendError> {
    if message.is_empty() {
        return Err(SendError::Empty);
    }
    if message.len() > MAX_MESSAGE {
        return Err(SendError::TooLong { len: message.len() });
    }
    // A `&str` is UTF-8 already: the protocol's text rule left to check is this one.
    match control_char(message) {
        Some(ch) => Err(SendError::ControlChar { ch }),
        None => Ok(()),
    }
}

/// What [`SeqTracker::observe`] concluded about one event's Seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// The first sequenced event, or the one expected next.
    InOrder,
    /// This many events between the last one seen and this one never arrived.
    Gap(u64),
    /// Seq 0: outside the room's sequence (RATE_LIMITED).
    Unsequenced,
    /// An event at or before the last one seen: a duplicate or a late, reordered datagram.
    /// It is shown but does not move the tracker back.
    Late,
}

/// Number of distinct room Seq values: 1..=0xFFFF_FFFF (0 is never a room event).
const SEQ_RING: u64 = u32::MAX as u64;

/// Follows a room's Seq to notice missed events. Pure: no clock, no I/O.
///
/// The first sequenced event may have any Seq (events before we bound were not ours to
/// see). After it, the next Seq is expected; after 0xFFFF_FFFF comes 1. A forward jump of
/// less than half the ring is a gap; anything else is treated as a late or repeated
/// datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTracker {
    last: Option<u32>,
}

impl SeqTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        SeqTracker { last: None }
    }

    /// The last in-order Seq seen, if any.
    pub fn last(&self) -> Option<u32> {
        self.last
    }

    /// The Seq that follows `seq` in the room's sequence ([`crate::protocol::next_seq`]).
    pub fn successor(seq: u32) -> u32 {
        crate::protocol::next_seq(seq)
    }

    /// Takes note of one event's Seq and says whether events were missed before it.
    pub fn observe(&mut self, seq: u32) -> SeqCheck {
        if seq == 0 {
            return SeqCheck::Unsequenced;
        }
        let Some(last) = self.last else {
            self.last = Some(seq);
            return SeqCheck::InOrder;
        };
        // Distance from the expected Seq to this one, on the ring 1..=u32::MAX.
        let expected = u64::from(Self::successor(last));
        let ahead = (u64::from(seq) + SEQ_RING - expected) % SEQ_RING;
        if ahead == 0 {
            self.last = Some(seq);
            SeqCheck::InOrder
        } else if ahead < SEQ_RING / 2 {
            self.last = Some(seq);
            SeqCheck::Gap(ahead)
        } else {
            SeqCheck::Late
        }
    }
}

/// A member's UDP chat session with the server.
#[derive(Debug)]
pub struct Session {
    socket: UdpSocket,
    membership: Membership,
    heartbeat_every: Duration,
    last_sent: Instant,
    seq: SeqTracker,
    out: Box<[u8; MAX_DATAGRAM]>,
    inbuf: Box<[u8; MAX_DATAGRAM]>,
}

impl Session {
    /// Opens the session for `membership`: binds a socket of the right address family,
    /// connects it to the data plane and sends the first heartbeat at once, so the server
    /// binds our address and starts relaying to us.
    pub fn open(membership: &Membership) -> io::Result<Session> {
        let local: SocketAddr = match membership.udp_addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)?;
        socket.connect(membership.udp_addr)?;
        let mut session = Session {
            socket,
            membership: membership.clone(),
            heartbeat_every: (membership.idle_timeout / 4).max(MIN_HEARTBEAT),
            last_sent: Instant::now(),
            seq: SeqTracker::new(),
            out: Box::new([0u8; MAX_DATAGRAM]),
            inbuf: Box::new([0u8; MAX_DATAGRAM]),
        };
        session.send_raw("")?;
        Ok(session)
    }

    /// The membership this session runs on (room, our name, host or not, server).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The local address of the socket (useful in logs and tests).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Sends one chat message. Refuses, before touching the socket, an empty message (that
    /// would be a heartbeat), one over [`MAX_MESSAGE`] bytes, and one with a control
    /// character. Sending counts as activity: the next heartbeat moves back.
    pub fn send_message(&mut self, message: &str) -> Result<(), SendError> {
        check_message(message)?;
        self.send_raw(message).map_err(|e| match e.kind() {
            io::ErrorKind::InvalidInput => SendError::Encode(DatagramError::Oversize),
            _ => SendError::Io(e),
        })
    }

    /// Sends a heartbeat now (an empty message: it keeps us in the room, nothing is relayed).
    pub fn send_heartbeat(&mut self) -> io::Result<()> {
        self.send_raw("")
    }

    /// When the next heartbeat is due if nothing else is sent before.
    pub fn next_heartbeat(&self) -> Instant {
        self.last_sent + self.heartbeat_every
    }

    /// The interval between heartbeats: a quarter of the idle timeout, so three in a row
    /// may be lost before the server drops us.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_every
    }

    /// Sends a heartbeat if one is due at `now`; returns whether it did.
    pub fn poll_heartbeat(&mut self, now: Instant) -> io::Result<bool> {
        if now < self.next_heartbeat() {
            return Ok(false);
        }
        self.send_raw("")?;
        Ok(true)
    }

    fn send_raw(&mut self, message: &str) -> io::Result<()> {
        let datagram = ChatDatagram {
            room: self.membership.room.as_bytes(),
            token: &self.membership.token,
            message,
        };
        let n = datagram
            .encode(&mut self.out[..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        loop {
            match self.socket.send(&self.out[..n]) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Waits up to `timeout` for a datagram from the server (`Duration::ZERO`: do not
    /// wait), then also takes whatever else is already queued (at most [`MAX_DRAIN`]
    /// datagrams), and returns their events in order. An empty vector means nothing came.
    ///
    /// Unknown event kinds are skipped; a malformed tail of a datagram is ignored (and
    /// counted). An error is the socket's: `ConnectionRefused` means the server's port is
    /// closed (the server is gone).
    pub fn recv_events(&mut self, timeout: Duration) -> io::Result<Vec<SessionEvent>> {
        let mut events = Vec::new();
        if timeout.is_zero() {
            self.socket.set_nonblocking(true)?;
        } else {
            self.socket.set_nonblocking(false)?;
            self.socket.set_read_timeout(Some(timeout))?;
        }
        let first = self.recv_one(&mut events);
        self.socket.set_nonblocking(true)?;
        match first {
            Ok(()) => {}
            Err(e) if is_no_data(&e) => return Ok(events),
            Err(e) => return Err(e),
        }
        for _ in 0..MAX_DRAIN {
            match self.recv_one(&mut events) {
                Ok(()) => {}
                Err(e) if is_no_data(&e) => break,
                // Report what came before the error; the error will show again next call.
                Err(e) if !events.is_empty() => {
                    log::debug!("recv after {} events: {e}", events.len());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(events)
    }

    fn recv_one(&mut self, events: &mut Vec<SessionEvent>) -> io::Result<()> {
        let n = loop {
            match self.socket.recv(&mut self.inbuf[..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let bytes = &self.inbuf[..n];
        decode_datagram(bytes, &mut self.seq, events);
        Ok(())
    }

    /// Leaves the room with LEAVE over TCP. For the host this closes the room.
    pub fn leave(self) -> Result<(), ControlError> {
        control::leave(&self.membership)
    }
}

fn is_no_data(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Decodes one server datagram into events, noting Seq gaps. Pure, so it is tested (and
/// fuzzed) without sockets. Returns whether a malformed tail was ignored (the events
/// before it are kept, as the protocol says).
pub fn decode_datagram(bytes: &[u8], seq: &mut SeqTracker, out: &mut Vec<SessionEvent>) -> bool {
    for item in Events::new(bytes) {
        let ev = match item {
            Ok(ev) => ev,
            Err(e) => {
                log::debug!("ignoring the rest of a server datagram: {e}");
                return true;
            }
        };
        // Every non-zero Seq is in the room's sequence, whatever the kind, so a kind this
        // version does not know does not look like a gap afterwards.
        if let SeqCheck::Gap(n) = seq.observe(ev.seq) {
            out.push(SessionEvent::Missed(n));
        }
        let user = ev.user.to_string();
        let event = match ev.known_kind() {
            Some(EventKind::Message) => SessionEvent::Message {
                seq: ev.seq,
                user,
                text: ev.body.to_string(),
            },
            Some(EventKind::Joined) => SessionEvent::Joined { user },
            Some(EventKind::Left) => SessionEvent::Left { user },
            Some(EventKind::TimedOut) => SessionEvent::TimedOut { user },
            Some(EventKind::RoomClosed) => SessionEvent::RoomClosed {
                reason: ev.body.to_string(),
            },
            Some(EventKind::RateLimited) => SessionEvent::RateLimited {
                limit: ev.body.to_string(),
            },
            // v1.1 notices: read by client::recovery, not by this v1 decoder.
            Some(EventKind::Gone | EventKind::Sync | EventKind::Resumed) | None => continue,
        };
        out.push(event);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::event::{Event, EventBuf};

    #[test]
    fn first_seq_may_be_anything_then_gaps_are_counted() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(41), SeqCheck::InOrder);
        assert_eq!(t.observe(42), SeqCheck::InOrder);
        assert_eq!(t.observe(45), SeqCheck::Gap(2));
        assert_eq!(t.last(), Some(45));
        assert_eq!(t.observe(46), SeqCheck::InOrder);
    }

    #[test]
    fn seq_zero_is_outside_the_sequence() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(0), SeqCheck::Unsequenced);
        assert_eq!(t.last(), None);
        assert_eq!(t.observe(5), SeqCheck::InOrder);
        assert_eq!(t.observe(0), SeqCheck::Unsequenced);
        assert_eq!(t.observe(6), SeqCheck::InOrder);
    }

    #[test]
    fn seq_wraps_from_max_to_one() {
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(u32::MAX - 1), SeqCheck::InOrder);
        assert_eq!(t.observe(u32::MAX), SeqCheck::InOrder);
        assert_eq!(t.observe(1), SeqCheck::InOrder);
        let mut t = SeqTracker::new();
        t.observe(u32::MAX - 1);
        // Skipped u32::MAX and 1 (0 is not a room Seq).
        assert_eq!(t.observe(2), SeqCheck::Gap(2));
        assert_eq!(SeqTracker::successor(u32::MAX), 1);
    }

    #[test]
    fn late_and_duplicate_events_do_not_rewind() {
        let mut t = SeqTracker::new();
        t.observe(10);
        assert_eq!(t.observe(10), SeqCheck::Late);
        assert_eq!(t.observe(7), SeqCheck::Late);
        assert_eq!(t.last(), Some(10));
        assert_eq!(t.observe(11), SeqCheck::InOrder);
    }

    fn datagram(events: &[Event<'_>]) -> Vec<u8> {
        let mut b = EventBuf::default();
        for e in events {
            assert!(b.push(e));
        }
        b.bytes().to_vec()
    }

    fn ev<'a>(kind: u8, seq: u32, user: &'a str, body: &'a str) -> Event<'a> {
        Event {
            kind,
            seq,
            user,
            body,
        }
    }

    #[test]
    fn decodes_events_and_reports_gaps_and_skips_unknown_kinds() {
        let mut seq = SeqTracker::new();
        let mut out = Vec::new();
        let d = datagram(&[
            ev(2, 7, "bob", ""),
            ev(1, 8, "alice", "hi 👋"),
            ev(99, 9, "x", "future"),
            ev(1, 12, "bob", "yo"),
            ev(6, 0, "alice", "20 messages/s, burst 40"),
        ]);
        let bad = decode_datagram(&d, &mut seq, &mut out);
        assert_eq!(
            out,
            vec![
                SessionEvent::Joined { user: "bob".into() },
                SessionEvent::Message {
                    seq: 8,
                    user: "alice".into(),
                    text: "hi 👋".into()
                },
                SessionEvent::Missed(2),
                SessionEvent::Message {
                    seq: 12,
                    user: "bob".into(),
                    text: "yo".into()
                },
                SessionEvent::RateLimited {
                    limit: "20 messages/s, burst 40".into()
                },
            ]
        );
        assert!(!bad);
        let d = datagram(&[
            ev(3, 13, "bob", ""),
            ev(4, 14, "carol", ""),
            ev(5, 15, "", "host left"),
        ]);
        out.clear();
        assert!(!decode_datagram(&d, &mut seq, &mut out));
        assert_eq!(
            out,
            vec![
                SessionEvent::Left { user: "bob".into() },
                SessionEvent::TimedOut {
                    user: "carol".into()
                },
                SessionEvent::RoomClosed {
                    reason: "host left".into()
                },
            ]
        );
    }

    #[test]
    fn hostile_datagrams_never_panic_and_keep_the_good_prefix() {
        let mut seq = SeqTracker::new();
        let mut out = Vec::new();
        let mut d = datagram(&[ev(1, 1, "a", "ok")]);
        d.extend_from_slice(&[1, 0, 0, 0, 2, 1, 0x1b, 0, 0]); // ESC as a user name
        let bad = decode_datagram(&d, &mut seq, &mut out);
        assert_eq!(out.len(), 1);
        assert!(bad);
        for len in 0..d.len() {
            decode_datagram(&d[..len], &mut seq, &mut out);
        }
    }

    #[test]
    fn check_message_names_the_problem() {
        assert!(matches!(check_message(""), Err(SendError::Empty)));
        assert!(check_message(&"é".repeat(1900)).is_ok());
        assert!(matches!(
            check_message(&"é".repeat(1901)),
            Err(SendError::TooLong { len: 3802 })
        ));
        assert!(matches!(
            check_message("a\tb"),
            Err(SendError::ControlChar { ch: '\t' })
        ));
        assert_eq!(
            check_message("\u{1b}[2J").unwrap_err().to_string(),
            "the message contains a control character (U+001B), which cannot be sent"
        );
    }

    fn membership(udp_addr: SocketAddr) -> Membership {
        Membership {
            room: "lobby".into(),
            user: "alice".into(),
            token: b"tok".to_vec(),
            udp_addr,
            idle_timeout: Duration::from_secs(4),
            host: true,
            server: udp_addr,
        }
    }

    #[test]
    fn session_over_loopback_heartbeats_sends_and_receives() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let m = membership(server.local_addr().unwrap());
        let mut s = Session::open(&m).unwrap();
        assert_eq!(s.heartbeat_interval(), Duration::from_secs(1));
        let mut buf = [0u8; MAX_DATAGRAM];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x05\x03lobbytok", "first heartbeat");
        assert_eq!(from, s.local_addr().unwrap());

        s.send_message("hello").unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x05\x03lobbytokhello");
        assert!(matches!(
            s.send_message(&"x".repeat(MAX_MESSAGE + 1)),
            Err(SendError::TooLong { .. })
        ));

        let now = Instant::now();
        assert!(!s.poll_heartbeat(now).unwrap());
        assert!(s.poll_heartbeat(now + Duration::from_secs(2)).unwrap());
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"\x05\x03lobbytok");

        assert!(s.recv_events(Duration::ZERO).unwrap().is_empty());
        assert!(s.recv_events(Duration::from_millis(10)).unwrap().is_empty());
        let d1 = datagram(&[ev(2, 3, "alice", "")]);
        let d2 = datagram(&[ev(1, 4, "alice", "hello"), ev(1, 6, "bob", "x")]);
        server.send_to(&d1, from).unwrap();
        server.send_to(&d2, from).unwrap();
        let mut got = Vec::new();
        for _ in 0..50 {
            got.extend(s.recv_events(Duration::from_millis(100)).unwrap());
            if got.len() >= 4 {
                break;
            }
        }
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[2], SessionEvent::Missed(1));

        // Datagrams from anyone but the server never reach the session.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        stranger.send_to(&d1, from).unwrap();
        assert!(s.recv_events(Duration::from_millis(50)).unwrap().is_empty());
    }
}
