//! The UDP chat session: what a member does after CREATE or JOIN.
//!
//! A [`Session`] owns one UDP socket, bound to an ephemeral port of the same address family
//! as the server's data plane and `connect`ed to it, so the kernel hands it only the
//! server's datagrams (PROTOCOL.md §2.1), and runs the version 1.1 client of PROTOCOL.md
//! §5.4 through the sans-IO [`Recovery`] machine:
//!
//! ```text
//!   socket ──datagrams──▶ Recovery::handle_datagram ──poll_output──▶ SessionEvent ──▶ caller
//!   caller ──send_message──▶ Recovery::send ──poll_transmit──▶ Transmit::encode ──▶ socket
//!   Recovery::next_timeout ──▶ the caller's wake-ups ──▶ Recovery::handle_timeout
//! ```
//!
//! * Every room event is delivered once, in Seq order; what was lost is fetched again with
//!   NACK ([`SessionEvent::Recovered`]); what the server no longer holds is reported
//!   ([`SessionEvent::Unrecoverable`]). Messages go out as SEND with a ClientSeq and are
//!   sent again until their own event comes back ([`SessionEvent::Confirmed`]).
//! * **Roaming**: when the machine asks for it (three unanswered SYNCs), the session does
//!   the TCRP RESUME itself with the resume key drawn at CREATE or JOIN, and opens a new
//!   socket on a new ephemeral port (after a NAT rebinding the old port is dead for the
//!   server anyway; after a network switch the old socket may be bound to a gone address).
//!   After a failed RESUME, or when the server dropped us (our own TIMED_OUT), it JOINs
//!   again under the same name and recovers what it missed from the room's history.
//! * Against a version 1 server (no SYNC answered) the machine falls back to version 1
//!   ([`SessionEvent::FellBackToV1`]): gaps are reported as [`SessionEvent::Missed`].
//!
//! The session waits only inside [`Session::recv_events`], never longer than the timeout
//! its caller passes, and returns early when a timer of the machine is due; the caller's
//! loop asks [`Session::next_timeout`] when to wake up. The one exception is the TCRP call
//! of a RESUME or JOIN again, bounded by [`CONTROL_TIMEOUT`] for connect and reply. So a
//! terminal UI, a script driver and a test can each run it in their own loop.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::client::control::{self, ControlError, Membership};
use crate::client::recovery::{self, Config, Mode, Output, Recovery, RoomEvent};
use crate::protocol::control::ClientDatagramError;
use crate::protocol::event::EventKind;
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, Status, control_char};

/// Most datagrams one [`Session::recv_events`] call drains after the first, so a flood
/// cannot keep a caller's loop from drawing the screen or sending heartbeats.
pub const MAX_DRAIN: usize = 256;

/// How long the TCRP connect and each reply of a RESUME or a JOIN again may take: long
/// enough for a slow path, short enough that a terminal is not frozen for long while the
/// network is down.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

/// Wait before a RESUME or JOIN again that could not reach the server is tried again
/// (the network may be coming back).
pub const RECONNECT_RETRY: Duration = Duration::from_secs(1);

/// What the session is asked to do besides the membership itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Events from before our JOINED to fetch from the room's history (0: none).
    pub history: u32,
}

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
        /// From the history fetched at join: said before we came.
        history: bool,
    },
    /// A member bound its address (sent its first datagram); we get our own JOINED too.
    Joined {
        /// Who joined.
        user: String,
        /// From the history fetched at join.
        history: bool,
    },
    /// A member left with LEAVE.
    Left {
        /// Who left.
        user: String,
        /// From the history fetched at join.
        history: bool,
    },
    /// A member was silent for the idle timeout and was dropped. When it is us, the session
    /// joins again by itself ([`SessionEvent::Rejoined`]) or ends ([`SessionEvent::Dropped`]).
    TimedOut {
        /// Who was dropped.
        user: String,
        /// From the history fetched at join.
        history: bool,
    },
    /// The room is gone; nothing more will come.
    RoomClosed {
        /// Why, as the server said it (`host left`, `host timed out`,
        /// `server shutting down`), or `the room no longer exists` when a JOIN again
        /// found it gone.
        reason: String,
    },
    /// The server dropped one of our messages because we sent too fast.
    RateLimited {
        /// The limit, as the server words it (e.g. `20 messages/s, burst 40`).
        limit: String,
    },
    /// (Version 1 server) the room's Seq jumped: this many events never reached us.
    Missed(u64),
    /// This many events could not be recovered: the server no longer holds them (they are
    /// older than its history keeps). Delivery goes on after them, in order.
    Unrecoverable {
        /// How many.
        count: u32,
    },
    /// This many events just delivered had been lost on the way and were fetched again.
    Recovered {
        /// How many.
        count: u32,
    },
    /// The server relayed our message with this number (as [`Session::send_message`]
    /// returned it): it is no longer pending.
    Confirmed {
        /// The message's number.
        client_seq: u32,
    },
    /// Our message with this number was sent several times and never relayed: given up.
    SendFailed {
        /// The message's number.
        client_seq: u32,
    },
    /// The server stopped answering: the session is moving to wherever we now are (RESUME).
    Reconnecting,
    /// RESUME worked: the session goes on from our new address; what was missed meanwhile
    /// is being recovered.
    Reconnected,
    /// The server had dropped us (or refused RESUME): we joined the room again under the
    /// same name, and what was said meanwhile is being recovered from its history.
    Rejoined,
    /// The server is version 1: no recovery from now on (gaps are [`SessionEvent::Missed`]).
    FellBackToV1,
    /// Another member's address changed (RESUME); nobody left.
    Resumed {
        /// Who.
        user: String,
    },
    /// The server dropped us for silence and we cannot join again (we were the host, or the
    /// server is version 1); nothing more will come.
    Dropped,
    /// The session cannot go on (a JOIN again was refused); the reason in words.
    Lost {
        /// Why.
        reason: String,
    },
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
    Encode(ClientDatagramError),
    /// The socket refused it.
    Io(io::Error),
    /// The session has ended (the room closed, or the server dropped us for good).
    NotInRoom,
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
            SendError::NotInRoom => f.write_str("the session has ended; nothing more can be sent"),
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

/// Where the session stands with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    /// Sending and receiving through the machine.
    Live,
    /// The machine asked for RESUME; the next try is at this time.
    Resuming(Instant),
    /// RESUME failed or we were dropped; the next JOIN again is at this time.
    Rejoining(Instant),
    /// The room closed or the session is lost: nothing more is sent.
    Ended,
}

/// A member's UDP chat session with the server.
#[derive(Debug)]
pub struct Session {
    socket: UdpSocket,
    membership: Membership,
    recovery: Recovery,
    link: Link,
    /// Our own JOINED of the current membership has not been delivered yet: an own
    /// TIMED_OUT before it is about an earlier membership (seen again in recovered history).
    awaiting_own_join: bool,
    events: VecDeque<SessionEvent>,
    out: Box<[u8; MAX_DATAGRAM]>,
    inbuf: Box<[u8; MAX_DATAGRAM]>,
}

/// A socket of the data plane's family on a fresh ephemeral port, connected to it.
fn open_socket(udp_addr: SocketAddr) -> io::Result<UdpSocket> {
    let local: SocketAddr = match udp_addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(udp_addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Whether a failed RESUME or JOIN again may work later as it is (the network or the
/// server's limits), rather than never.
fn worth_retrying(e: &ControlError) -> bool {
    match e {
        ControlError::Refused { status, .. } => {
            matches!(status, Status::ServerFull | Status::TooManyRequests)
        }
        ControlError::Invalid(_) => false,
        _ => true,
    }
}

impl Session {
    /// Opens the session for `membership`: binds a socket of the right address family,
    /// connects it to the data plane and sends the first datagrams at once (a heartbeat,
    /// which binds us on any server, and a SYNC), so the server starts relaying to us.
    pub fn open(membership: &Membership, options: Options) -> io::Result<Session> {
        let socket = open_socket(membership.udp_addr)?;
        let mut cfg = Config::new(membership.user.clone(), membership.idle_timeout);
        cfg.history = options.history;
        let mut session = Session {
            socket,
            membership: membership.clone(),
            recovery: Recovery::new(cfg, Instant::now()),
            link: Link::Live,
            awaiting_own_join: true,
            events: VecDeque::new(),
            out: Box::new([0u8; MAX_DATAGRAM]),
            inbuf: Box::new([0u8; MAX_DATAGRAM]),
        };
        session.flush()?;
        Ok(session)
    }

    /// The membership this session runs on now (room, our name, host or not, server); the
    /// token changes when the session joins again.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The local address of the socket (a new one after a RESUME or a JOIN again).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The recovery machine's counters (delivered, recovered, NACKs, resends...).
    pub fn stats(&self) -> recovery::Stats {
        self.recovery.stats()
    }

    /// Whether the server proved to be version 1 (no recovery).
    pub fn is_v1(&self) -> bool {
        self.recovery.mode() == Mode::V1
    }

    /// Our messages not confirmed yet, oldest first, with the number
    /// [`Session::send_message`] gave each: the UI marks them as still being sent.
    pub fn unconfirmed(&self) -> impl Iterator<Item = (u32, &str)> {
        self.recovery.unconfirmed()
    }

    /// Whether everything the room is known to hold up to now has been delivered (the
    /// history asked for at join included), with nothing waiting for a NACK's answer.
    pub fn caught_up(&self) -> bool {
        self.link == Link::Live
            && self.recovery.delivered().is_some()
            && self.recovery.buffered() == 0
    }

    /// Whether the session has ended (room closed, dropped, or lost).
    pub fn ended(&self) -> bool {
        self.link == Link::Ended
    }

    /// Sends one chat message and returns its number (ClientSeq), which
    /// [`SessionEvent::Confirmed`] names once the server relayed it. Refuses, before
    /// touching the socket, an empty message (that would be a heartbeat), one over
    /// [`MAX_MESSAGE`] bytes, one with a control character, and one that cannot be framed
    /// with this room name and token. While the session is reconnecting the message waits
    /// and goes out afterwards.
    pub fn send_message(&mut self, message: &str) -> Result<u32, SendError> {
        check_message(message)?;
        if self.link == Link::Ended {
            return Err(SendError::NotInRoom);
        }
        // The longest form it may take on the wire: a SEND (a v1 chat datagram is shorter).
        let probe = recovery::Transmit::Send {
            client_seq: 0,
            text: message.to_owned(),
        };
        probe
            .encode(
                self.membership.room.as_bytes(),
                &self.membership.token,
                &mut self.out[..],
            )
            .map_err(SendError::Encode)?;
        let client_seq = self.recovery.send(Instant::now(), message);
        self.flush().map_err(SendError::Io)?;
        Ok(client_seq)
    }

    /// When the session next needs [`Session::recv_events`] (or [`Session::poll`]) to be
    /// called even if nothing arrives: a NACK, a SYNC, a retransmission, a reconnect try.
    pub fn next_timeout(&self) -> Option<Instant> {
        match self.link {
            Link::Live => self.recovery.next_timeout(),
            Link::Resuming(at) | Link::Rejoining(at) => Some(at),
            Link::Ended => None,
        }
    }

    /// Does what is due at `now` without waiting for the network, and returns the events it
    /// produced (a reconnect, say).
    pub fn poll(&mut self, now: Instant) -> io::Result<Vec<SessionEvent>> {
        self.drive(now)?;
        Ok(self.events.drain(..).collect())
    }

    /// Waits up to `timeout` for a datagram from the server (`Duration::ZERO`: do not
    /// wait; the wait ends earlier when a timer of the session is due), then also takes
    /// whatever else is already queued (at most [`MAX_DRAIN`] datagrams), runs the timers
    /// that are due, and returns the events in order. An empty vector means nothing
    /// happened.
    ///
    /// An error is the socket's: `ConnectionRefused` means the server's port is closed (the
    /// server is gone).
    pub fn recv_events(&mut self, timeout: Duration) -> io::Result<Vec<SessionEvent>> {
        let now = Instant::now();
        self.drive(now)?;
        if self.events.is_empty() && self.link != Link::Ended {
            let until_timer = self
                .next_timeout()
                .map_or(timeout, |t| t.saturating_duration_since(now));
            let wait = timeout.min(until_timer);
            self.receive(wait)?;
            self.drive(Instant::now())?;
        }
        Ok(self.events.drain(..).collect())
    }

    /// Reads datagrams into the machine: the first within `wait`, then what is queued.
    fn receive(&mut self, wait: Duration) -> io::Result<()> {
        if !wait.is_zero() {
            self.socket.set_nonblocking(false)?;
            self.socket.set_read_timeout(Some(wait))?;
        }
        let first = self.recv_one();
        if !wait.is_zero() {
            self.socket.set_nonblocking(true)?;
        }
        match first {
            Ok(()) => {}
            Err(e) if is_no_data(&e) => return Ok(()),
            Err(e) => return Err(e),
        }
        for _ in 0..MAX_DRAIN {
            match self.recv_one() {
                Ok(()) => {}
                Err(e) if is_no_data(&e) => break,
                // What came before the error is handled; it will show again next call.
                Err(e) => {
                    log::debug!("recv: {e}");
                    break;
                }
            }
        }
        Ok(())
    }

    fn recv_one(&mut self) -> io::Result<()> {
        let n = loop {
            match self.socket.recv(&mut self.inbuf[..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if self.link != Link::Live {
            // The old address's last datagrams, while RESUME or JOIN is under way.
            return Ok(());
        }
        let bad = self
            .recovery
            .handle_datagram(Instant::now(), &self.inbuf[..n]);
        if bad > 0 {
            log::debug!("ignored the malformed rest of a server datagram");
        }
        self.take_outputs(Instant::now());
        Ok(())
    }

    /// Runs what is due: the machine's timers, a reconnect, the datagrams to send, and the
    /// machine's outputs.
    fn drive(&mut self, now: Instant) -> io::Result<()> {
        if self.link == Link::Live && self.recovery.next_timeout().is_some_and(|t| t <= now) {
            self.recovery.handle_timeout(now);
        }
        self.take_outputs(now);
        // A reconnect may lead to another (a refused RESUME, then JOIN again): a few
        // rounds, each bounded by the TCRP timeouts.
        for _ in 0..3 {
            match self.link {
                Link::Resuming(at) if at <= now => self.try_resume(now),
                Link::Rejoining(at) if at <= now => self.try_rejoin(now),
                _ => break,
            }
            self.take_outputs(now);
        }
        self.flush()
    }

    /// Encodes and sends what the machine wants sent. A datagram the kernel refuses for a
    /// passing reason (no route during a network switch, a full buffer) is dropped like a
    /// lost one: the machine asks again. A closed server port ends the session.
    fn flush(&mut self) -> io::Result<()> {
        while let Some(t) = self.recovery.poll_transmit() {
            let n = match t.encode(
                self.membership.room.as_bytes(),
                &self.membership.token,
                &mut self.out[..],
            ) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("cannot encode a datagram: {e}");
                    continue;
                }
            };
            loop {
                match self.socket.send(&self.out[..n]) {
                    Ok(_) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(e),
                    Err(e) => {
                        log::debug!("send failed ({e}); the datagram counts as lost");
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Turns the machine's outputs into session events (and reconnects it asks for).
    fn take_outputs(&mut self, now: Instant) {
        while let Some(o) = self.recovery.poll_output() {
            match o {
                Output::Deliver(ev) => self.deliver(now, ev),
                Output::Missed { count } if self.recovery.mode() == Mode::V1 => {
                    self.events
                        .push_back(SessionEvent::Missed(u64::from(count)));
                }
                // A long gap is answered in several parts (a NACK covers 512 Seqs); parts
                // that come together are told as one.
                Output::Missed { count } => match self.events.back_mut() {
                    Some(SessionEvent::Unrecoverable { count: c }) => *c = c.saturating_add(count),
                    _ => self.events.push_back(SessionEvent::Unrecoverable { count }),
                },
                Output::Recovered { count } => match self.events.back_mut() {
                    Some(SessionEvent::Recovered { count: c }) => *c = c.saturating_add(count),
                    _ => self.events.push_back(SessionEvent::Recovered { count }),
                },
                Output::Confirmed { client_seq } => {
                    self.events
                        .push_back(SessionEvent::Confirmed { client_seq });
                }
                Output::SendFailed { client_seq } => {
                    self.events
                        .push_back(SessionEvent::SendFailed { client_seq });
                }
                Output::NeedResume => {
                    if self.link == Link::Live {
                        self.link = Link::Resuming(now);
                        self.events.push_back(SessionEvent::Reconnecting);
                    }
                }
                Output::Reconnected => self.events.push_back(SessionEvent::Reconnected),
                Output::FellBackToV1 => self.events.push_back(SessionEvent::FellBackToV1),
            }
        }
    }

    fn deliver(&mut self, now: Instant, ev: RoomEvent) {
        let RoomEvent {
            kind,
            user,
            body,
            history,
            seq,
        } = ev;
        let me = user == self.membership.user;
        let event = match EventKind::from_u8(kind) {
            Some(EventKind::Message) => SessionEvent::Message {
                seq,
                user,
                text: body,
                history,
            },
            Some(EventKind::Joined) => {
                if me && !history {
                    self.awaiting_own_join = false;
                }
                SessionEvent::Joined { user, history }
            }
            Some(EventKind::Left) => SessionEvent::Left { user, history },
            Some(EventKind::TimedOut) => {
                let current = me && !history && !self.awaiting_own_join;
                self.events
                    .push_back(SessionEvent::TimedOut { user, history });
                if current {
                    self.dropped(now);
                }
                return;
            }
            Some(EventKind::RoomClosed) => {
                self.link = Link::Ended;
                SessionEvent::RoomClosed { reason: body }
            }
            Some(EventKind::RateLimited) => SessionEvent::RateLimited { limit: body },
            Some(EventKind::Resumed) if !me => SessionEvent::Resumed { user },
            Some(EventKind::Resumed | EventKind::Gone | EventKind::Sync) | None => return,
        };
        self.events.push_back(event);
    }

    /// The server dropped our current membership: JOIN again (a version 1.1 member that is
    /// not the host), or end.
    fn dropped(&mut self, now: Instant) {
        if self.membership.host || self.recovery.mode() == Mode::V1 {
            // A host's timeout closed the room; a version 1 server has no history to
            // recover from.
            self.link = Link::Ended;
            self.events.push_back(SessionEvent::Dropped);
            return;
        }
        self.recovery.resume_failed(now);
        self.link = Link::Rejoining(now);
    }

    /// One RESUME try (the machine asked for it).
    fn try_resume(&mut self, now: Instant) {
        match control::resume(&self.membership, CONTROL_TIMEOUT) {
            Ok(m) => match open_socket(m.udp_addr) {
                Ok(socket) => {
                    log::info!("resumed; new local address {:?}", socket.local_addr());
                    self.socket = socket;
                    self.membership = m;
                    self.link = Link::Live;
                    self.recovery.resumed(Instant::now());
                }
                Err(e) => {
                    log::warn!("resumed, but cannot open a socket: {e}");
                    self.link = Link::Resuming(now + RECONNECT_RETRY);
                }
            },
            Err(e) if worth_retrying(&e) => {
                log::info!("RESUME failed ({e}); trying again");
                self.link = Link::Resuming(Instant::now() + RECONNECT_RETRY);
            }
            Err(e) => {
                log::info!("RESUME refused ({e}); joining again");
                self.recovery.resume_failed(now);
                self.link = Link::Rejoining(now);
            }
        }
    }

    /// One JOIN again try, under the same name and password.
    fn try_rejoin(&mut self, now: Instant) {
        match control::join_again(&self.membership, CONTROL_TIMEOUT) {
            Ok(m) => match open_socket(m.udp_addr) {
                Ok(socket) => {
                    self.socket = socket;
                    self.membership = m;
                    self.link = Link::Live;
                    self.awaiting_own_join = true;
                    self.recovery.joined_again(Instant::now());
                    self.events.push_back(SessionEvent::Rejoined);
                }
                Err(e) => {
                    // The membership exists but we cannot use it: leave it, try later.
                    log::warn!("joined again, but cannot open a socket: {e}");
                    let _ = control::leave(&m);
                    self.link = Link::Rejoining(now + RECONNECT_RETRY);
                }
            },
            Err(e) if e.status() == Some(Status::RoomNotFound) => {
                self.link = Link::Ended;
                self.events.push_back(SessionEvent::RoomClosed {
                    reason: "the room no longer exists".into(),
                });
            }
            Err(e) if worth_retrying(&e) => {
                log::info!("JOIN again failed ({e}); trying again");
                self.link = Link::Rejoining(Instant::now() + RECONNECT_RETRY);
            }
            Err(e) => {
                self.link = Link::Ended;
                self.events.push_back(SessionEvent::Lost {
                    reason: format!("could not join the room again: {e}"),
                });
            }
        }
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

#[cfg(test)]
mod tests;
