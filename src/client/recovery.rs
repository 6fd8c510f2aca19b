//! The v1.1 client's recovery state machine (PROTOCOL.md §5.4), sans-IO.
//!
//! No sockets and no clock: every method takes `now`, and the caller moves bytes.
//!
//! ```text
//!   server datagrams ──handle_datagram(now, bytes)──▶ ┌──────────┐ ──poll_output()──▶ UI
//!   user's messages ──────────send(now, text)───────▶ │ Recovery │ ──poll_transmit()─▶ socket
//!   timer ───────────────────handle_timeout(now)────▶ └──────────┘ ◀──next_timeout()── poll
//!   TCRP RESUME / JOIN ──resumed / resume_failed / joined_again(now)──▶
//! ```
//!
//! * **Receive**: events are delivered exactly once, in Seq order. Events that arrive ahead
//!   of a gap wait in a reorder buffer of at most [`Config::max_buffered`] Seqs past
//!   `Delivered`; an event further ahead is not stored (it only tells that the gap exists)
//!   and is fetched again with NACK once the window reaches it, so memory stays bounded
//!   whatever Seq a datagram claims. A gap is NACKed after [`REORDER_WAIT`] or once
//!   [`REORDER_EVENTS`] later events arrived, then again after 50, 100, 200, ... ms (capped)
//!   while it lasts; GONE gives a range up and is reported as [`Output::Missed`].
//! * **Send**: messages go out as SEND with ClientSeq 1, 2, 3, ...; a message is confirmed
//!   by its own MESSAGE event. Without it after 250 ms (doubling), a SYNC asks the server:
//!   LastClientSeq at least the message's ClientSeq means relayed (its event is recovered
//!   like any other), otherwise the same SEND goes again, up to [`SEND_TRIES`] times. A
//!   message whose later sibling came back first was lost or overtaken on the way, and can
//!   never be relayed under its number (the server refuses a ClientSeq not above the
//!   highest it relayed): it goes again under a new one.
//! * **Liveness**: SYNC is the heartbeat. Three SYNCs about a second apart without an answer
//!   mean the address probably changed: [`Output::NeedResume`]. The caller does the TCRP
//!   RESUME and calls [`Recovery::resumed`] or [`Recovery::resume_failed`]; after the latter
//!   (or after its own TIMED_OUT) it may JOIN again and call [`Recovery::joined_again`]: the
//!   machine then recovers what it missed from the room's history, and looks for each
//!   message whose fate was unknown there before sending it again.
//! * **Version 1 servers**: the machine starts with a v1 heartbeat and a SYNC. A server that
//!   relays events but never answers a SYNC (nor sends any v1.1 event) is version 1: the
//!   machine then behaves as [`SeqTracker`] does (gaps are reported, nothing is asked again)
//!   and sends v1 chat datagrams and heartbeats.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::session::{SeqCheck, SeqTracker};
use crate::protocol::control::{ClientDatagramError, ControlBody, ControlDatagram, MAX_NACK_COUNT};
use crate::protocol::datagram::ChatDatagram;
use crate::protocol::event::{Event, EventKind, Gone, RawEvent, RawEvents, SyncInfo};
use crate::protocol::next_seq;

/// How long a gap waits for reordered datagrams before it is NACKed: a few times the
/// reordering seen on real paths, well under what a person notices.
pub const REORDER_WAIT: Duration = Duration::from_millis(10);
/// A gap is NACKed at once when this many later events arrived: it is loss, not reordering.
pub const REORDER_EVENTS: u8 = 3;
/// Interval before a NACK is repeated the first time; it doubles after each repeat.
pub const NACK_RETRY: Duration = Duration::from_millis(50);
/// Longest interval between repeats of a NACK: keeps asking, without flooding.
pub const NACK_RETRY_MAX: Duration = Duration::from_secs(1);
/// Time a sent message waits for its own event before a SYNC asks about it; doubles per try.
pub const SEND_TIMEOUT: Duration = Duration::from_millis(250);
/// Longest wait between SENDs of one message: keeps trying every few seconds on a bad path.
pub const SEND_TIMEOUT_MAX: Duration = Duration::from_secs(2);
/// SENDs of one message before it is reported failed (250 ms doubling, capped at 2 s:
/// about 16 s in all). Ten, not five: through 20% loss five SENDs in a row are lost once in
/// 3 000 messages, ten once in ten million.
pub const SEND_TRIES: u8 = 10;
/// Interval between unanswered SYNCs before roaming is suspected.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Unanswered SYNCs in a row that mean the address changed.
pub const PROBES: u8 = 3;
/// Unanswered SYNCs in a row, while events arrive, that mean the server is version 1. Far
/// more than [`PROBES`]: a v1.1 server on a path losing 20% each way leaves a SYNC
/// unanswered 36% of the time, and ten in a row happen once in 30 000 sessions, while a
/// version 1 server costs only ten seconds of the SYNC's wait.
pub const V1_PROBES: u8 = 10;
/// How long the history asked for at join may hold up delivery while the server has not
/// shown it speaks version 1.1 (a version 1 server never answers the NACK): about three
/// SYNCs; a version 1.1 server answers the first at once.
pub const HISTORY_WAIT: Duration = Duration::from_secs(3);
/// Seqs past `Delivered` the reorder buffer covers: four times the server's default
/// history (1024), so a client that falls behind a busy room still catches up, while the
/// buffer holds at most 4096 events (about 16 MiB of the largest events).
pub const MAX_BUFFERED: usize = 4096;
/// NACKs of one Seq without an answer after which a SYNC checks the path (about 160 ms).
const NACKS_BEFORE_SYNC: u8 = 3;
/// Most NACK datagrams sent in one go; the rest are sent at the next timeout.
const MAX_NACKS_PER_ROUND: usize = 16;
/// Number of distinct room Seq values: 1..=0xFFFF_FFFF.
const SEQ_RING: u64 = u32::MAX as u64;
/// Serial arithmetic: a Seq at most this far ahead is newer; further is older.
const HALF_RING: u32 = 1 << 31;

/// Steps from `from` forward to `to` on the ring of room Seqs 1..=0xFFFF_FFFF. `from` may be
/// 0, which stands for "before 1" (the same place as 0xFFFF_FFFF).
fn distance(from: u32, to: u32) -> u32 {
    let a = (u64::from(from) + SEQ_RING - 1) % SEQ_RING;
    let b = (u64::from(to) + SEQ_RING - 1) % SEQ_RING;
    ((b + SEQ_RING - a) % SEQ_RING) as u32
}

/// How far `to` is ahead of `from`, if it is ahead (serial arithmetic, as after a wrap).
fn ahead(from: u32, to: u32) -> Option<u32> {
    let d = distance(from, to);
    (d != 0 && d < HALF_RING).then_some(d)
}

/// How far ClientSeq `to` is above `from`, if it is (serial arithmetic on all of u32: a
/// ClientSeq wraps from 0xFFFF_FFFF to 1, as [`Recovery::send`] numbers them).
fn ahead_of(to: u32, from: u32) -> Option<u32> {
    let d = to.wrapping_sub(from);
    (d != 0 && d < HALF_RING).then_some(d)
}

/// The Seq `n` steps after `seq`.
fn seq_add(seq: u32, n: u32) -> u32 {
    ((u64::from(seq) + SEQ_RING - 1 + u64::from(n)) % SEQ_RING + 1) as u32
}

/// The Seq `n` steps before `seq` (0 steps before 1 is 0xFFFF_FFFF, "before 1").
fn seq_sub(seq: u32, n: u32) -> u32 {
    let back = SEQ_RING - u64::from(n) % SEQ_RING;
    ((u64::from(seq) + SEQ_RING - 1 + back) % SEQ_RING + 1) as u32
}

/// 50, 100, 200, ... ms after the first, second, third NACK, capped at `cap`.
fn nack_backoff(first: Duration, cap: Duration, tries: u8) -> Duration {
    let doublings = u32::from(tries.saturating_sub(1)).min(16);
    first.saturating_mul(1 << doublings).min(cap)
}

fn chat(
    room: &[u8],
    token: &[u8],
    message: &str,
    out: &mut [u8],
) -> Result<usize, ClientDatagramError> {
    ChatDatagram {
        room,
        token,
        message,
    }
    .encode(out)
    .map_err(ClientDatagramError::Chat)
}

/// What the machine needs to know, and its timings (the constants above by default).
#[derive(Debug, Clone)]
pub struct Config {
    /// The member's own user name: its MESSAGE events confirm its sends, and SYNC answers
    /// carry it.
    pub user: String,
    /// The IdleTimeout from the JOIN or CREATE reply; a SYNC goes out every quarter of it
    /// when nothing else does.
    pub idle_timeout: Duration,
    /// Events from before the member's first one to fetch at join (0: none).
    pub history: u32,
    /// See [`REORDER_WAIT`].
    pub reorder_wait: Duration,
    /// See [`REORDER_EVENTS`].
    pub reorder_events: u8,
    /// See [`NACK_RETRY`].
    pub nack_retry: Duration,
    /// See [`NACK_RETRY_MAX`].
    pub nack_retry_max: Duration,
    /// See [`SEND_TIMEOUT`].
    pub send_timeout: Duration,
    /// See [`SEND_TRIES`].
    pub send_tries: u8,
    /// See [`PROBE_INTERVAL`].
    pub probe_interval: Duration,
    /// See [`PROBES`].
    pub probes: u8,
    /// See [`V1_PROBES`].
    pub v1_probes: u8,
    /// See [`MAX_BUFFERED`].
    pub max_buffered: usize,
}

impl Config {
    /// The default timings for `user` with the server's `idle_timeout`, no history.
    pub fn new(user: impl Into<String>, idle_timeout: Duration) -> Self {
        Config {
            user: user.into(),
            idle_timeout,
            history: 0,
            reorder_wait: REORDER_WAIT,
            reorder_events: REORDER_EVENTS,
            nack_retry: NACK_RETRY,
            nack_retry_max: NACK_RETRY_MAX,
            send_timeout: SEND_TIMEOUT,
            send_tries: SEND_TRIES,
            probe_interval: PROBE_INTERVAL,
            probes: PROBES,
            v1_probes: V1_PROBES,
            max_buffered: MAX_BUFFERED,
        }
    }
}

/// One room event, owned (it may wait in the reorder buffer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    /// The kind byte (kinds this version does not know are passed on; the UI skips them).
    pub kind: u8,
    /// Its Seq; 0 for notices outside the room's sequence (RATE_LIMITED, RESUMED).
    pub seq: u32,
    /// Whom it is about.
    pub user: String,
    /// The body text.
    pub body: String,
    /// Whether it is from the history fetched at join (said before this member came).
    pub history: bool,
}

impl RoomEvent {
    fn from_event(ev: &Event<'_>) -> Self {
        RoomEvent {
            kind: ev.kind,
            seq: ev.seq,
            user: ev.user.to_owned(),
            body: ev.body.to_owned(),
            history: false,
        }
    }

    /// The known kind, if it is one.
    pub fn known_kind(&self) -> Option<EventKind> {
        EventKind::from_u8(self.kind)
    }
}

/// What the caller should send, in order. Encode with [`Transmit::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A SEND control datagram (a retransmission carries the same ClientSeq and text).
    Send {
        /// The message's number.
        client_seq: u32,
        /// The message.
        text: String,
    },
    /// A NACK control datagram.
    Nack {
        /// First Seq asked for.
        from_seq: u32,
        /// How many (1..=512).
        count: u16,
    },
    /// A SYNC control datagram (also the v1.1 heartbeat).
    Sync,
    /// A version 1 chat datagram (against a version 1 server).
    Chat {
        /// The message.
        text: String,
    },
    /// A version 1 heartbeat (an empty chat datagram): it binds the member on any server.
    Heartbeat,
}

impl Transmit {
    /// Writes the datagram for `room` and `token` into `out`; returns its length.
    pub fn encode(
        &self,
        room: &[u8],
        token: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ClientDatagramError> {
        let body = match self {
            Transmit::Send { client_seq, text } => ControlBody::Send {
                client_seq: *client_seq,
                message: text,
            },
            Transmit::Nack { from_seq, count } => ControlBody::Nack {
                from_seq: *from_seq,
                count: *count,
            },
            Transmit::Sync => ControlBody::Sync,
            Transmit::Chat { text } => return chat(room, token, text, out),
            Transmit::Heartbeat => return chat(room, token, "", out),
        };
        ControlDatagram { room, token, body }
            .encode(out)
            .map_err(ClientDatagramError::Control)
    }
}

/// What happened, for the UI, in order. Counts, not words: the UI says "12 messages
/// recovered" or "3 messages could not be recovered (older than the server keeps)".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// The next event of the room (Seq > 0, in order, once), or a notice outside the
    /// sequence (Seq 0: RATE_LIMITED, RESUMED, kinds this version does not know).
    Deliver(RoomEvent),
    /// This many events just before the next delivered one could not be recovered: the
    /// server no longer holds them (GONE), or, against a version 1 server, they were lost.
    Missed {
        /// How many.
        count: u32,
    },
    /// This many events just delivered arrived only after a NACK.
    Recovered {
        /// How many.
        count: u32,
    },
    /// The server relayed this message (its event came back, or a SYNC said so).
    Confirmed {
        /// The message's number, as [`Recovery::send`] returned it.
        client_seq: u32,
    },
    /// This message was sent [`Config::send_tries`] times and never relayed; given up.
    SendFailed {
        /// The message's number.
        client_seq: u32,
    },
    /// Three SYNCs went unanswered: do a TCRP RESUME, then call [`Recovery::resumed`] or
    /// [`Recovery::resume_failed`]. Nothing is sent until then.
    NeedResume,
    /// [`Recovery::resumed`] was called: the session continues from the new address.
    Reconnected,
    /// The server is version 1: no recovery from now on, gaps are reported as missed.
    FellBackToV1,
}

/// What the machine knows about the server's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No SYNC answered yet: behaves as v1.1.
    Unknown,
    /// The server answered a SYNC or sent a v1.1 event.
    V11,
    /// The server relays events but never answered a SYNC.
    V1,
}

/// Whether the member's datagrams can reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Sending and receiving.
    Live,
    /// [`Output::NeedResume`] was given; waiting for [`Recovery::resumed`] or
    /// [`Recovery::resume_failed`].
    Resuming,
    /// RESUME failed; waiting for [`Recovery::joined_again`].
    Rejoining,
}

/// Counters for tests, logs and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Room events delivered.
    pub delivered: u64,
    /// Events that arrived twice (or after they were delivered) and were dropped.
    pub duplicates: u64,
    /// Events that arrived further ahead than the reorder buffer covers (fetched later).
    pub beyond_window: u64,
    /// NACK datagrams sent.
    pub nacks: u64,
    /// Events delivered after a NACK.
    pub recovered: u64,
    /// Events given up (GONE, or v1 gaps).
    pub missed: u64,
    /// SEND datagrams sent again.
    pub resends: u64,
    /// SYNC datagrams sent.
    pub syncs: u64,
}

/// One Seq of the reorder buffer.
#[derive(Debug)]
enum Slot {
    /// Not here yet: NACKed when `due` passes (or after `later` events arrived behind it).
    Missing { due: Instant, tries: u8, later: u8 },
    /// Arrived; `recovered` when it came after a NACK.
    Held { event: RoomEvent, recovered: bool },
    /// GONE said the server no longer holds it.
    Gone,
}

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendState {
    /// Waiting for the link (resume or rejoin) before it is sent.
    Unsent,
    /// Sent; waiting for its event until `deadline`, then a SYNC asks.
    InFlight { deadline: Instant },
    /// A SYNC asked about it; the answer decides.
    Probing,
    /// The server relayed it; its event is recovered with the room's events up to this Seq.
    Relayed { last_seq: u32 },
    /// Sent by a membership that ended: relayed or not is unknown until the room's history
    /// has been recovered and searched for its event.
    Unknown,
    /// A message sent after it came back first: this one was never relayed (the server
    /// relays a member's messages in the order it takes them, and refuses a ClientSeq not
    /// above the highest it relayed, so a SEND lost or overtaken on the way can never be
    /// relayed under its number). It is sent again under a new number.
    Overtaken,
}

#[derive(Debug)]
struct Pending {
    /// The number the caller knows the message by (what [`Recovery::send`] returned).
    client_seq: u32,
    /// The ClientSeq of its last SEND: a new one each time it is overtaken.
    wire_seq: u32,
    text: String,
    timeout: Duration,
    sends: u8,
    state: SendState,
}

/// Unanswered SYNCs in a row.
#[derive(Debug, Clone, Copy)]
struct Probe {
    sent: u8,
    next_at: Instant,
}

/// The recovery state machine of one membership of one room. See the module doc.
#[derive(Debug)]
pub struct Recovery {
    cfg: Config,
    mode: Mode,
    link: Link,
    /// Highest Seq delivered (or given up); `None` until the first room event or SYNC.
    delivered: Option<u32>,
    /// Highest Seq known to exist (meaningful once `delivered` is set).
    highest: u32,
    /// `slots[i]` is Seq `delivered` + 1 + i.
    slots: VecDeque<Slot>,
    /// How many of the first slots are history fetched at join.
    history_left: usize,
    /// The history fetch is decided once, at the first event.
    anchored_once: bool,
    /// Version 1 behaviour once the server proved to be version 1.
    v1: SeqTracker,
    /// Whether any room event arrived (a version 1 server relays without answering SYNC).
    room_events_seen: bool,
    next_client_seq: u32,
    /// The highest ClientSeq this membership sent (0: none yet).
    highest_wire: u32,
    pending: VecDeque<Pending>,
    /// After [`Recovery::joined_again`]: `Some(None)` until a SYNC answer gives the room's
    /// latest Seq, then `Some(Some(seq))` until everything up to it is delivered.
    rejoin: Option<Option<u32>>,
    probe: Option<Probe>,
    /// When a datagram last went out (the v1 heartbeat's clock).
    last_sent: Instant,
    /// When a v1 heartbeat last went out: until the server answered a SYNC, one goes every
    /// IdleTimeout/4 too, since a version 1 server drops SYNCs without counting them as a
    /// sign of life.
    last_heartbeat: Instant,
    /// While the server's version is unknown: when the history asked for at join is given
    /// up, so that a version 1 server (which never answers its NACK) does not hold delivery.
    history_deadline: Option<Instant>,
    /// When a SYNC last went out: one goes at least every IdleTimeout/4 even while NACKs
    /// flow, since only a SYNC's answer shows that the path still works.
    last_sync: Instant,
    transmits: VecDeque<Transmit>,
    outputs: VecDeque<Output>,
    stats: Stats,
}

impl Recovery {
    /// A machine for a membership just granted by CREATE or JOIN. It starts by asking for a
    /// v1 heartbeat (which binds the member on any server) and a SYNC.
    pub fn new(cfg: Config, now: Instant) -> Self {
        let mut r = Recovery {
            cfg,
            mode: Mode::Unknown,
            link: Link::Live,
            delivered: None,
            highest: 0,
            slots: VecDeque::new(),
            history_left: 0,
            anchored_once: false,
            v1: SeqTracker::new(),
            room_events_seen: false,
            next_client_seq: 1,
            highest_wire: 0,
            pending: VecDeque::new(),
            rejoin: None,
            probe: None,
            last_sent: now,
            last_heartbeat: now,
            history_deadline: None,
            last_sync: now,
            transmits: VecDeque::new(),
            outputs: VecDeque::new(),
            stats: Stats::default(),
        };
        r.transmit(now, Transmit::Heartbeat);
        r.transmit(now, Transmit::Sync);
        r
    }

    /// The server's version as far as the machine knows.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether datagrams can go out.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Highest Seq delivered or given up, once there is one.
    pub fn delivered(&self) -> Option<u32> {
        self.delivered
    }

    /// Seqs the reorder buffer covers now (at most [`Config::max_buffered`]).
    pub fn buffered(&self) -> usize {
        self.slots.len()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Messages not confirmed yet, oldest first (the UI marks them).
    pub fn unconfirmed(&self) -> impl Iterator<Item = (u32, &str)> {
        self.pending.iter().map(|p| (p.client_seq, p.text.as_str()))
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing to show.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Queues `text` (a text field of 1..=3800 bytes; the caller checks it) and returns its
    /// ClientSeq.
    pub fn send(&mut self, now: Instant, text: &str) -> u32 {
        let client_seq = self.take_client_seq();
        if self.mode == Mode::V1 {
            self.transmit(
                now,
                Transmit::Chat {
                    text: text.to_owned(),
                },
            );
            return client_seq;
        }
        let mut p = Pending {
            client_seq,
            wire_seq: client_seq,
            text: text.to_owned(),
            timeout: self.cfg.send_timeout,
            sends: 0,
            state: SendState::Unsent,
        };
        if self.link == Link::Live && self.rejoin.is_none() {
            self.send_pending(now, &mut p);
        }
        self.pending.push_back(p);
        client_seq
    }

    /// Reads one server datagram; returns how many malformed events it held (0 or 1: the
    /// rest of a datagram after a malformed event is ignored).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> usize {
        for item in RawEvents::new(bytes) {
            match item {
                Ok(ev) => {
                    if !self.handle_raw(now, &ev) {
                        return 1;
                    }
                }
                Err(_) => return 1,
            }
        }
        0
    }

    /// Takes one event of any kind; false when its body is not what its kind requires.
    pub fn handle_raw(&mut self, now: Instant, ev: &RawEvent<'_>) -> bool {
        match ev.known_kind() {
            Some(EventKind::Gone) => match Gone::parse(ev.body) {
                Ok(g) => self.on_gone(now, g),
                Err(_) => return false,
            },
            Some(EventKind::Sync) => match SyncInfo::parse(ev.body) {
                Ok(s) => self.on_sync(now, ev.user, s),
                Err(_) => return false,
            },
            _ => match ev.text() {
                Ok(e) => self.on_event(now, &e),
                Err(_) => return false,
            },
        }
        true
    }

    /// Takes one event with a text body (kinds 1-6, 9 and unknown kinds).
    pub fn on_event(&mut self, now: Instant, ev: &Event<'_>) {
        if ev.seq == 0 {
            if ev.known_kind() == Some(EventKind::Resumed) {
                self.proves_v11();
            }
            // Room kinds always have a Seq; the others are notices outside the sequence.
            if !matches!(ev.kind, 1..=5) {
                self.outputs
                    .push_back(Output::Deliver(RoomEvent::from_event(ev)));
            }
            return;
        }
        self.room_events_seen = true;
        if self.mode == Mode::V1 {
            self.deliver_v1(RoomEvent::from_event(ev));
            return;
        }
        match self.delivered {
            None => self.anchor(now, ev.seq, Some(RoomEvent::from_event(ev))),
            Some(_) => self.insert(now, ev),
        }
        self.settle(now);
    }

    /// Takes a GONE: the room's events of that range are no longer held.
    pub fn on_gone(&mut self, now: Instant, gone: Gone) {
        self.proves_v11();
        let Some(delivered) = self.delivered else {
            return;
        };
        if self.mode == Mode::V1 {
            return;
        }
        // The part of the range inside the buffer: slots d-1 .. d-1+count.
        let start = distance(delivered, gone.from_seq);
        for i in 0..u32::from(gone.count) {
            let d = start.wrapping_add(i);
            if d == 0 || d >= HALF_RING {
                continue;
            }
            if let Some(slot @ Slot::Missing { .. }) = self.slots.get_mut(d as usize - 1) {
                *slot = Slot::Gone;
            }
        }
        self.settle(now);
    }

    /// Takes a SYNC event: the answer to this member's SYNC (`user` is its own name) or a
    /// tail notice (`user` empty).
    pub fn on_sync(&mut self, now: Instant, user: &str, sync: SyncInfo) {
        self.proves_v11();
        if self.mode == Mode::V1 {
            return;
        }
        let answer = !user.is_empty() && user == self.cfg.user;
        if answer {
            self.probe = None;
        }
        let last = sync.last_seq;
        if last != 0 {
            match self.delivered {
                None => self.anchor(now, last, None),
                Some(_) => {
                    if ahead(self.highest, last).is_some() {
                        self.highest = last;
                        self.extend_slots(now);
                    }
                }
            }
        }
        if answer {
            if self.rejoin == Some(None) {
                self.rejoin = Some(Some(last));
            }
            self.sync_answered(now, sync);
        }
        self.settle(now);
    }

    /// The caller's TCRP RESUME succeeded: the member is reachable again at its new address.
    pub fn resumed(&mut self, now: Instant) {
        self.link = Link::Live;
        self.probe = None;
        self.outputs.push_back(Output::Reconnected);
        // The member kept its ClientSeq: a SYNC answer tells which messages were relayed.
        for p in &mut self.pending {
            if matches!(p.state, SendState::InFlight { .. }) {
                p.state = SendState::Probing;
            }
        }
        self.transmit(now, Transmit::Sync);
        if self.rejoin.is_none() {
            self.send_unsent(now);
        }
        self.ask_again(now);
        self.settle(now);
    }

    /// The path changed: every gap is asked for again at once, not after its backoff.
    fn ask_again(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if let Slot::Missing { due, .. } = slot {
                *due = now;
            }
        }
    }

    /// The caller's TCRP RESUME failed (the membership is gone): nothing is sent until
    /// [`Recovery::joined_again`].
    pub fn resume_failed(&mut self, _now: Instant) {
        self.link = Link::Rejoining;
        self.probe = None;
        self.transmits.clear();
        self.forget_fates();
    }

    /// The caller joined the room again (after a failed RESUME or its own TIMED_OUT), under
    /// a new token. Everything since the last delivered event is recovered from the room's
    /// history; each message whose fate was unknown is looked for there, and sent again only
    /// if it is not found.
    pub fn joined_again(&mut self, now: Instant) {
        self.link = Link::Live;
        self.probe = None;
        self.transmits.clear();
        self.forget_fates();
        self.rejoin = Some(None);
        // A new membership: the server has relayed no ClientSeq of it yet.
        self.highest_wire = 0;
        self.transmit(now, Transmit::Heartbeat);
        self.transmit(now, Transmit::Sync);
        self.ask_again(now);
        self.settle(now);
    }

    /// When [`Recovery::handle_timeout`] should be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        if self.link != Link::Live {
            return None;
        }
        let heartbeat = self.heartbeat_due();
        let mut next = heartbeat;
        let mut consider = |t: Instant| next = next.min(t);
        if let Some(p) = self.probe {
            consider(p.next_at);
        }
        if self.mode == Mode::Unknown {
            consider(self.last_heartbeat + self.cfg.idle_timeout / 4);
        }
        if let Some(d) = self.history_deadline {
            consider(d);
        }
        for p in &self.pending {
            if let SendState::InFlight { deadline } = p.state {
                consider(deadline);
            }
        }
        if self.mode != Mode::V1 {
            for slot in &self.slots {
                if let Slot::Missing { due, .. } = slot {
                    consider(*due);
                }
            }
        }
        Some(next)
    }

    /// Does what is due at `now`: NACKs, SYNCs about unconfirmed messages, heartbeats, and
    /// the roaming check.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.link != Link::Live {
            return;
        }
        if self.mode == Mode::Unknown && now >= self.last_heartbeat + self.cfg.idle_timeout / 4 {
            self.transmit(now, Transmit::Heartbeat);
        }
        if self.history_deadline.is_some_and(|d| now >= d) {
            self.give_up_history();
        }
        let mut need_sync = false;
        for p in &mut self.pending {
            if matches!(p.state, SendState::InFlight { deadline } if deadline <= now) {
                p.state = SendState::Probing;
                need_sync = true;
            }
        }
        if let Some(probe) = self.probe.filter(|p| p.next_at <= now) {
            // Events arrive but no SYNC is answered: maybe version 1, and then only many
            // unanswered SYNCs tell it from a lossy path.
            let maybe_v1 = self.mode == Mode::Unknown && self.room_events_seen;
            let limit = if maybe_v1 {
                self.cfg.v1_probes
            } else {
                self.cfg.probes
            };
            if probe.sent < limit {
                self.probe = Some(Probe {
                    sent: probe.sent.saturating_add(1),
                    next_at: now + self.cfg.probe_interval,
                });
                self.push_sync(now);
                need_sync = false;
            } else if maybe_v1 {
                self.fall_back_to_v1(now);
                return;
            } else {
                self.need_resume();
                return;
            }
        }
        if need_sync || now >= self.heartbeat_due() {
            if self.mode == Mode::V1 {
                self.transmit(now, Transmit::Heartbeat);
            } else {
                self.transmit(now, Transmit::Sync);
            }
        }
        self.settle(now);
    }
}

mod link;
mod receive;
mod send;

#[cfg(test)]
mod tests;
