//! A TCP connection as a sans-IO state machine: bytes and `now` in, answers out.
//!
//! [`Conn`] owns everything a connection does that is not a system call: its bounded input
//! buffer, its capped output buffer, the request and idle timers, half-close, and the
//! closing handshake (answer, shut the write side, drain briefly, close). What a request
//! *means* is a [`Service`]: [`tcrp::Tcrp`] hands TCRP requests to the relay and answers
//! INVALID_REQUEST itself; [`http::Scrape`] answers one metrics scrape. The event loop only
//! moves bytes between a socket and a `Conn`:
//!
//! ```text
//!   socket ──read──► read_buf() / on_read(now, n, service) ──► Service::serve ──► output()
//!   socket ◄─write── output() / on_written(n, now) ─► true: shut the write side
//!   clock ──► deadline() / on_timeout(now)            phase(): Closed(why) ⇒ close it
//! ```
//!
//! Phases: [`Phase::Reading`] requests; [`Phase::Closing`] owes its last answer (after a
//! malformed frame, a scrape, a refusal, or the peer's half-close); [`Phase::Draining`]
//! has shut its write side and discards input until end of stream or [`LINGER`], so that
//! the answer is not lost to a reset; [`Phase::Closed`] says why the loop should drop it.

use std::fmt;
use std::time::{Duration, Instant};

pub mod admission;
pub mod http;
pub mod tcrp;
#[cfg(test)]
mod tests;

/// A request must be complete this long after its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a malformed frame, how long the connection is drained before it is closed.
pub const LINGER: Duration = Duration::from_secs(2);
/// Replies a connection may owe before it counts as a peer that does not read. A LIST
/// reply is about 4 KiB, so this is dozens of pipelined requests.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// An output buffer grown past this (a burst of LIST replies) is given back once empty...
const SHRINK_ABOVE: usize = 64 * 1024;
/// ...down to this, which holds any ordinary reply without growing again.
const SHRINK_TO: usize = 4096;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading requests and answering them.
    Reading,
    /// Owes its last answer; the write side is shut once it is out.
    Closing,
    /// Write side shut; input is read and discarded until end of stream or the linger ends.
    Draining,
    /// Done: the loop deregisters and drops it.
    Closed(Closed),
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed (end of stream) and nothing was owed, or what was owed went out.
    PeerClosed,
    /// It owed more than [`MAX_OUTPUT`]: a peer that does not read its replies.
    SlowPeer,
    /// A request stayed incomplete [`REQUEST_TIMEOUT`] after its first byte.
    RequestTimeout,
    /// Nothing arrived for [`IDLE_TIMEOUT`].
    Idle,
    /// The drain after the last answer ran its [`LINGER`].
    LingerOver,
    /// The input buffer filled without a whole request (cannot happen: a frame longer
    /// than the buffer is refused from its header; closed rather than read zero bytes).
    Overfull,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Closed::PeerClosed => f.write_str("peer closed"),
            Closed::SlowPeer => f.write_str("it does not read its replies"),
            Closed::RequestTimeout => write!(
                f,
                "request incomplete after {} s",
                REQUEST_TIMEOUT.as_secs()
            ),
            Closed::Idle => write!(f, "idle for {} s", IDLE_TIMEOUT.as_secs()),
            Closed::LingerOver => f.write_str("linger over"),
            Closed::Overfull => f.write_str("input buffer full"),
        }
    }
}

/// What one [`Service::serve`] call did with the start of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// No whole request yet: wait for more bytes.
    Incomplete,
    /// Answered one request of this many bytes; more may follow.
    Answered(usize),
    /// Answered, and this was the last: the rest of the input is dropped and the
    /// connection closes once the answer is out.
    Last,
    /// Took one request of this many bytes whose answer comes later
    /// ([`Conn::answer_deferred`]); the requests after it wait, so answers stay in order.
    Deferred(usize),
}

/// What answers a connection's requests (TCRP, a metrics scrape).
pub trait Service {
    /// Answers the request at the start of `input` (possibly empty) into `out`, if it is
    /// whole.
    fn serve(&mut self, now: Instant, input: &[u8], out: &mut Vec<u8>) -> Served;
}

/// One connection's buffers, timers and phase. No socket: see the module docs.
#[derive(Debug)]
pub struct Conn {
    /// Received bytes; `input[..filled]` hold the start of the next request(s).
    input: Vec<u8>,
    filled: usize,
    /// The input buffer's size: the largest whole request.
    cap: usize,
    /// Answers owed; `output[..written]` are already out.
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    /// When the first byte of a still-incomplete request arrived.
    request_since: Option<Instant>,
    last_active: Instant,
    linger_until: Option<Instant>,
    /// The peer shut its side: close (without draining) once what is owed is out.
    peer_done: bool,
    /// Silence after which the connection is closed ([`IDLE_TIMEOUT`] unless set).
    idle: Duration,
    /// Said on idle timeout before closing (a WebSocket close frame), if anything.
    farewell: Option<Vec<u8>>,
    /// A request's answer is owed by someone else (a cluster's registry): nothing more is
    /// served until it comes.
    deferred: bool,
}

impl Conn {
    /// A connection admitted at `now`, whose requests are at most `input_cap` bytes.
    pub fn new(now: Instant, input_cap: usize) -> Conn {
        Conn {
            input: Vec::with_capacity(input_cap),
            filled: 0,
            cap: input_cap,
            output: Vec::new(),
            written: 0,
            phase: Phase::Reading,
            request_since: None,
            last_active: now,
            linger_until: None,
            peer_done: false,
            idle: IDLE_TIMEOUT,
            farewell: None,
            deferred: false,
        }
    }

    /// Starts the request clock now, before any byte: a peer that connects and says
    /// nothing is closed after [`REQUEST_TIMEOUT`] rather than [`IDLE_TIMEOUT`] (an HTTP
    /// client owes its request head at once).
    pub fn expect_request(&mut self, now: Instant) {
        self.request_since = Some(now);
    }

    /// The connection's preamble (a TLS handshake) is over: the request clock that
    /// [`Conn::expect_request`] started at accept stops, unless a request is under way, and
    /// the connection is timed as a fresh one from now.
    pub fn preamble_done(&mut self, now: Instant) {
        self.last_active = now;
        if self.filled == 0 {
            self.request_since = None;
        }
    }

    /// Makes the connection a long-lived session: closed after `idle` of silence, saying
    /// `farewell` first (it is written, then the connection drains and closes as after a
    /// last answer).
    pub fn set_session(&mut self, idle: Duration, farewell: Vec<u8>) {
        self.idle = idle;
        self.farewell = Some(farewell);
    }

    /// Appends `len` bytes written by `write` to the output if they fit under
    /// [`MAX_OUTPUT`] and the connection is still reading; says whether they did. For
    /// output that may be dropped (a session's datagrams), unlike answers, which are never
    /// dropped and close a peer that does not read them.
    pub fn offer(&mut self, len: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.phase != Phase::Reading {
            return false;
        }
        if self.output.len() + len > MAX_OUTPUT && self.written > 0 {
            self.output.drain(..self.written);
            self.written = 0;
        }
        if self.output.len() + len > MAX_OUTPUT {
            return false;
        }
        write(&mut self.output);
        true
    }

    /// A connection over a limit: it is told `answer` (SERVER_FULL, 503) and closed.
    pub fn refused(now: Instant, answer: Vec<u8>) -> Conn {
        Conn {
            output: answer,
            phase: Phase::Closing,
            ..Conn::new(now, 0)
        }
    }

    /// Where the connection is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether answers are waiting to be written.
    pub fn wants_write(&self) -> bool {
        self.written < self.output.len()
    }

    /// The answers not yet written.
    pub fn output(&self) -> &[u8] {
        &self.output[self.written..]
    }

    /// Where the next read should go while requests are read; `None` when input is only
    /// drained (read it anywhere, then call [`Conn::on_read`] all the same). Never empty.
    pub fn read_buf(&mut self) -> Option<&mut [u8]> {
        if self.phase != Phase::Reading {
            return None;
        }
        if self.input.len() < self.cap {
            self.input.resize(self.cap, 0);
        }
        Some(&mut self.input[self.filled..])
    }

    /// `n` bytes were read (into [`Conn::read_buf`] while reading); 0 is end of stream.
    /// Whole requests are answered through `service`, in order.
    pub fn on_read(&mut self, now: Instant, n: usize, service: &mut impl Service) {
        if n == 0 {
            if self.wants_write() || self.deferred {
                // A half-close after the last request: the answers are still owed.
                self.peer_done = true;
                self.phase = Phase::Closing;
            } else {
                self.phase = Phase::Closed(Closed::PeerClosed);
            }
            return;
        }
        if self.phase != Phase::Reading {
            return; // drained and discarded
        }
        self.filled = (self.filled + n).min(self.cap);
        self.last_active = now;
        self.request_since.get_or_insert(now);
        self.serve(now, service);
        if self.output.len() > MAX_OUTPUT {
            self.phase = Phase::Closed(Closed::SlowPeer);
        } else if self.phase == Phase::Reading && self.filled >= self.cap {
            self.phase = Phase::Closed(Closed::Overfull);
        }
    }

    /// Answers every whole request in the input, in order, until the output cap.
    fn serve(&mut self, now: Instant, service: &mut impl Service) {
        let mut consumed = 0;
        // Past the output cap, stop answering: the peer does not read, and is closed.
        while self.output.len() <= MAX_OUTPUT && !self.deferred {
            match service.serve(now, &self.input[consumed..self.filled], &mut self.output) {
                Served::Incomplete => break,
                Served::Answered(n) => consumed += n,
                Served::Deferred(n) => {
                    consumed += n;
                    self.deferred = true;
                }
                Served::Last => {
                    consumed = self.filled;
                    self.phase = Phase::Closing;
                    break;
                }
            }
        }
        self.input.copy_within(consumed..self.filled, 0);
        self.filled -= consumed;
        if self.filled == 0 {
            self.request_since = None;
        } else if consumed > 0 {
            // What is left is the start of the next request, which arrived with this read.
            self.request_since = Some(now);
        }
    }

    /// The answer a [`Served::Deferred`] request owed: it joins the output, and the
    /// requests that waited behind it are served now.
    pub fn answer_deferred(&mut self, now: Instant, answer: &[u8], service: &mut impl Service) {
        if !self.deferred {
            return;
        }
        self.deferred = false;
        if matches!(self.phase, Phase::Reading | Phase::Closing) {
            self.output.extend_from_slice(answer);
        }
        if self.phase == Phase::Reading {
            self.serve(now, service);
            if self.output.len() > MAX_OUTPUT {
                self.phase = Phase::Closed(Closed::SlowPeer);
            }
        }
    }

    /// Whether an answer is owed by someone else.
    pub fn is_deferred(&self) -> bool {
        self.deferred
    }

    /// `n` bytes of [`Conn::output`] were written. Returns true when the socket's write
    /// side should be shut now: the last answer is out, and the drain begins.
    pub fn on_written(&mut self, n: usize, now: Instant) -> bool {
        self.written = (self.written + n).min(self.output.len());
        if self.wants_write() {
            return false;
        }
        self.output.clear();
        self.written = 0;
        if self.output.capacity() > SHRINK_ABOVE {
            self.output.shrink_to(SHRINK_TO);
        }
        if self.peer_done {
            self.phase = Phase::Closed(Closed::PeerClosed);
            return false;
        }
        if self.phase != Phase::Closing {
            return false;
        }
        self.phase = Phase::Draining;
        self.linger_until = Some(now + LINGER);
        self.input = Vec::new();
        self.filled = 0;
        true
    }

    /// When [`Conn::on_timeout`] should next be called.
    pub fn deadline(&self) -> Instant {
        if let Some(t) = self.linger_until {
            return t;
        }
        let idle = self.last_active + self.idle;
        match self.request_since {
            Some(t) => idle.min(t + REQUEST_TIMEOUT),
            None => idle,
        }
    }

    /// Closes the connection if its deadline has passed.
    pub fn on_timeout(&mut self, now: Instant) {
        if matches!(self.phase, Phase::Closed(_)) || self.deadline() > now {
            return;
        }
        let why = match (self.linger_until, self.request_since) {
            (Some(_), _) => Closed::LingerOver,
            (None, Some(_)) => Closed::RequestTimeout,
            (None, None) => Closed::Idle,
        };
        if why == Closed::Idle && self.phase == Phase::Reading {
            if let Some(farewell) = self.farewell.take() {
                // Say goodbye, then close as after a last answer; a peer that does not
                // take the goodbye is closed after LINGER all the same.
                self.output.extend_from_slice(&farewell);
                self.phase = Phase::Closing;
                self.linger_until = Some(now + LINGER);
                return;
            }
        }
        self.phase = Phase::Closed(why);
    }
}
