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
mod tests {
    use super::*;
    use crate::protocol::event::{Event, EventBuf, Gone, RawEvent, SyncInfo};
    use crate::protocol::frame::{Grant, Request, encode_response, split_request};
    use crate::protocol::{Operation, Status};
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

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

    /// Generous for a loaded machine; each wait normally ends in microseconds.
    const WAIT: Duration = Duration::from_secs(10);

    fn datagram(events: &[Event<'_>]) -> Vec<u8> {
        let mut b = EventBuf::default();
        for e in events {
            assert!(b.push(e));
        }
        b.bytes().to_vec()
    }

    fn ev<'a>(kind: EventKind, seq: u32, user: &'a str, body: &'a str) -> Event<'a> {
        Event {
            kind: kind as u8,
            seq,
            user,
            body,
        }
    }

    fn raw(e: &RawEvent<'_>) -> Vec<u8> {
        let mut buf = [0u8; 512];
        let n = e.encode(&mut buf).expect("fits");
        buf[..n].to_vec()
    }

    fn sync_answer(user: &str, last_seq: u32, last_client_seq: u32) -> Vec<u8> {
        let mut body = [0u8; SyncInfo::BODY_LEN];
        raw(&SyncInfo {
            last_seq,
            last_client_seq,
        }
        .event(user, &mut body))
    }

    fn gone(from_seq: u32, count: u16) -> Vec<u8> {
        let mut body = [0u8; Gone::BODY_LEN];
        raw(&Gone { from_seq, count }.event(&mut body))
    }

    fn membership(udp_addr: SocketAddr, server: SocketAddr, idle: u64) -> Membership {
        Membership {
            room: "lobby".into(),
            user: "alice".into(),
            token: b"tok".to_vec(),
            udp_addr,
            idle_timeout: Duration::from_secs(idle),
            host: false,
            server,
            password: b"pw".to_vec(),
            resume_key: vec![7; 32],
        }
    }

    /// A UDP socket playing the server's data plane.
    fn fake_udp() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s
    }

    /// The control datagram `op` (1 SEND, 2 NACK, 3 SYNC) with token `token` and `body`.
    fn control(op: u8, token: &[u8], body: &[u8]) -> Vec<u8> {
        let mut d = vec![0, op, 5, token.len() as u8];
        d.extend_from_slice(b"lobby");
        d.extend_from_slice(token);
        d.extend_from_slice(body);
        d
    }

    /// A session and the fake data plane it talks to, driven in one thread.
    struct Harness {
        s: Session,
        server: UdpSocket,
        /// Events the session produced while the harness waited for a datagram.
        stash: VecDeque<SessionEvent>,
    }

    impl Harness {
        fn open(server: UdpSocket, m: &Membership) -> Harness {
            server
                .set_read_timeout(Some(Duration::from_millis(5)))
                .unwrap();
            Harness {
                s: Session::open(m, Options::default()).unwrap(),
                server,
                stash: VecDeque::new(),
            }
        }

        /// Runs the session until the server got a datagram equal to `want` (others on the
        /// way, SYNC heartbeats say, are skipped); returns its sender.
        fn expect_on(&mut self, server: Option<&UdpSocket>, want: &[u8]) -> SocketAddr {
            let mut buf = [0u8; MAX_DATAGRAM];
            let end = Instant::now() + WAIT;
            while Instant::now() < end {
                let sock = server.unwrap_or(&self.server);
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    if &buf[..n] == want {
                        return from;
                    }
                    continue;
                }
                self.stash
                    .extend(self.s.recv_events(Duration::from_millis(5)).unwrap());
            }
            panic!("no datagram {want:?}");
        }

        fn expect(&mut self, want: &[u8]) -> SocketAddr {
            self.expect_on(None, want)
        }

        /// Runs the session until `want` events came (or WAIT passed).
        fn events(&mut self, want: usize) -> Vec<SessionEvent> {
            let mut got: Vec<SessionEvent> = self.stash.drain(..).collect();
            let end = Instant::now() + WAIT;
            while got.len() < want && Instant::now() < end {
                got.extend(self.s.recv_events(Duration::from_millis(20)).unwrap());
            }
            got
        }
    }

    fn msg(seq: u32, user: &str, text: &str) -> SessionEvent {
        SessionEvent::Message {
            seq,
            user: user.into(),
            text: text.into(),
            history: false,
        }
    }

    #[test]
    fn session_recovers_losses_and_confirms_sends_over_loopback() {
        let server = fake_udp();
        let m = membership(
            server.local_addr().unwrap(),
            "127.0.0.1:9".parse().unwrap(),
            60,
        );
        let mut h = Harness::open(server, &m);
        // A v1 heartbeat (binds on any server), then a SYNC.
        let from = h.expect(b"\x05\x03lobbytok");
        assert_eq!(from, h.s.local_addr().unwrap());
        h.expect(&control(3, b"tok", &[]));
        let mut d = datagram(&[ev(EventKind::Joined, 3, "alice", "")]);
        h.server.send_to(&d, from).unwrap();
        d = sync_answer("alice", 3, 0);
        h.server.send_to(&d, from).unwrap();
        assert_eq!(
            h.events(1),
            [SessionEvent::Joined {
                user: "alice".into(),
                history: false
            }]
        );

        // A message goes as SEND with ClientSeq 1, pending until its echo comes back.
        assert_eq!(h.s.send_message("hello").unwrap(), 1);
        h.expect(&control(1, b"tok", b"\0\0\0\x01hello"));
        assert_eq!(h.s.unconfirmed().collect::<Vec<_>>(), [(1, "hello")]);
        let echo = datagram(&[ev(EventKind::Message, 4, "alice", "hello")]);
        h.server.send_to(&echo, from).unwrap();
        assert_eq!(
            h.events(2),
            [
                SessionEvent::Confirmed { client_seq: 1 },
                msg(4, "alice", "hello")
            ]
        );
        assert_eq!(h.s.unconfirmed().count(), 0);

        // Seq 5 lost: 6 (twice) waits, 5 is NACKed, and both come out in order once 5
        // arrives.
        let six = datagram(&[ev(EventKind::Message, 6, "bob", "six")]);
        h.server.send_to(&six, from).unwrap();
        h.server.send_to(&six, from).unwrap();
        h.expect(&control(2, b"tok", &[0, 0, 0, 5, 0, 1]));
        assert!(h.stash.is_empty(), "{:?}", h.stash);
        let five = datagram(&[ev(EventKind::Message, 5, "bob", "five")]);
        h.server.send_to(&five, from).unwrap();
        assert_eq!(
            h.events(3),
            [
                msg(5, "bob", "five"),
                msg(6, "bob", "six"),
                SessionEvent::Recovered { count: 1 }
            ]
        );

        // Seqs 7-8 lost and no longer held: GONE, reported, then delivery goes on.
        let nine = datagram(&[ev(EventKind::Message, 9, "bob", "nine")]);
        h.server.send_to(&nine, from).unwrap();
        h.expect(&control(2, b"tok", &[0, 0, 0, 7, 0, 2]));
        h.server.send_to(&gone(7, 2), from).unwrap();
        assert_eq!(
            h.events(2),
            [
                SessionEvent::Unrecoverable { count: 2 },
                msg(9, "bob", "nine")
            ]
        );

        // Datagrams from anyone but the server never reach the session.
        let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
        let eve = datagram(&[ev(EventKind::Message, 10, "eve", "x")]);
        stranger.send_to(&eve, from).unwrap();
        assert!(
            h.s.recv_events(Duration::from_millis(50))
                .unwrap()
                .is_empty()
        );
        assert!(h.s.stats().nacks >= 2);
        assert!(!h.s.is_v1());
        assert!(matches!(
            h.s.send_message(&"x".repeat(MAX_MESSAGE + 1)),
            Err(SendError::TooLong { .. })
        ));
    }

    /// A request the fake TCRP server saw: operation, token (RESUME) or user (JOIN), key.
    type SeenRequest = (Operation, Vec<u8>, Vec<u8>);

    /// A TCRP server that answers each connection's one request with `answer(request)`:
    /// a status, and for OK a grant of `token` and `udp_port`. Returns its address and a
    /// channel of the requests it saw (operation, token or user, resume key).
    fn fake_tcrp(
        answers: Vec<(Status, &'static [u8], u16)>,
    ) -> (SocketAddr, std::sync::mpsc::Receiver<SeenRequest>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for (status, token, udp_port) in answers {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                conn.set_read_timeout(Some(WAIT)).unwrap();
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                let (op, room, seen) = loop {
                    if let Ok(Some((frame, _))) = split_request(&buf) {
                        let req = Request::parse(&frame).expect("a valid request");
                        let seen = match req {
                            Request::Resume {
                                token, resume_key, ..
                            } => (token.to_vec(), resume_key.to_vec()),
                            Request::Join {
                                user, resume_key, ..
                            } => (user.as_bytes().to_vec(), resume_key.unwrap_or(&[]).to_vec()),
                            other => panic!("unexpected {other:?}"),
                        };
                        break (req.operation(), req.room().as_bytes().to_vec(), seen);
                    }
                    let n = conn.read(&mut chunk).expect("read");
                    assert!(n > 0, "closed mid-request");
                    buf.extend_from_slice(&chunk[..n]);
                };
                let mut out = Vec::new();
                encode_response(&mut out, op as u8, &room, status);
                if status == Status::Ok {
                    Grant {
                        token,
                        udp_port,
                        idle_timeout: 4,
                    }
                    .encode(&mut out, op, &room);
                }
                conn.write_all(&out).unwrap();
                let _ = tx.send((op, seen.0, seen.1));
                // Let the client read before the connection closes.
                let mut rest = [0u8; 64];
                let _ = conn.read(&mut rest);
                drop::<TcpStream>(conn);
            }
        });
        (addr, rx)
    }

    #[test]
    fn unanswered_syncs_lead_to_resume_on_a_new_socket() {
        let old = fake_udp();
        let new = fake_udp();
        let new_port = new.local_addr().unwrap().port();
        let (tcrp, requests) = fake_tcrp(vec![(Status::Ok, b"tok", new_port)]);
        let m = membership(old.local_addr().unwrap(), tcrp, 4);
        let mut h = Harness::open(old, &m);
        let first_local = h.s.local_addr().unwrap();
        // Nothing is ever answered on the old path: three SYNCs a second apart, then RESUME.
        let got = h.events(2);
        assert_eq!(
            got,
            [SessionEvent::Reconnecting, SessionEvent::Reconnected],
            "{got:?}"
        );
        let (op, token, key) = requests.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (op, token.as_slice(), key.as_slice()),
            (Operation::Resume, &b"tok"[..], &[7u8; 32][..])
        );
        // The session now speaks from a new port, to the port RESUME named.
        let from = h.expect_on(Some(&new), &control(3, b"tok", &[]));
        assert_ne!(from, first_local);
        assert_eq!(from, h.s.local_addr().unwrap());
        assert_eq!(h.s.membership().udp_addr, new.local_addr().unwrap());
        // A message typed now goes out on the new path.
        assert_eq!(h.s.send_message("back").unwrap(), 1);
        h.expect_on(Some(&new), &control(1, b"tok", b"\0\0\0\x01back"));
    }

    #[test]
    fn refused_resume_joins_again_under_the_same_name() {
        let old = fake_udp();
        let new = fake_udp();
        let new_port = new.local_addr().unwrap().port();
        let (tcrp, requests) = fake_tcrp(vec![
            (Status::Unauthorized, b"", 0),
            (Status::Ok, b"tok2", new_port),
        ]);
        let m = membership(old.local_addr().unwrap(), tcrp, 4);
        let mut h = Harness::open(old, &m);
        let got = h.events(2);
        assert_eq!(
            got,
            [SessionEvent::Reconnecting, SessionEvent::Rejoined],
            "{got:?}"
        );
        assert_eq!(requests.recv_timeout(WAIT).unwrap().0, Operation::Resume);
        let (op, user, key) = requests.recv_timeout(WAIT).unwrap();
        assert_eq!((op, user.as_slice()), (Operation::Join, &b"alice"[..]));
        assert_eq!(key.len(), control::RESUME_KEY_LEN);
        assert_ne!(key, [7u8; 32], "a fresh resume key");
        // The new membership binds with a heartbeat, then asks with SYNC.
        h.expect_on(Some(&new), b"\x05\x04lobbytok2");
        h.expect_on(Some(&new), &control(3, b"tok2", &[]));
        assert_eq!(h.s.membership().token, b"tok2");
        assert_eq!(h.s.membership().resume_key, key);
    }

    #[test]
    fn own_timeout_joins_again_and_a_closed_room_ends_the_session() {
        let server = fake_udp();
        // The JOIN again finds the room gone.
        let (tcrp, requests) = fake_tcrp(vec![(Status::RoomNotFound, b"", 0)]);
        let m = membership(server.local_addr().unwrap(), tcrp, 60);
        let mut h = Harness::open(server, &m);
        let from = h.expect(&control(3, b"tok", &[]));
        let d = datagram(&[
            ev(EventKind::Joined, 1, "alice", ""),
            ev(EventKind::TimedOut, 2, "alice", ""),
        ]);
        h.server.send_to(&d, from).unwrap();
        let got = h.events(3);
        assert_eq!(
            got[1..],
            [
                SessionEvent::TimedOut {
                    user: "alice".into(),
                    history: false
                },
                SessionEvent::RoomClosed {
                    reason: "the room no longer exists".into()
                }
            ],
            "{got:?}"
        );
        assert_eq!(requests.recv_timeout(WAIT).unwrap().0, Operation::Join);
        assert!(h.s.ended());
        assert!(matches!(h.s.send_message("x"), Err(SendError::NotInRoom)));
    }
}
