//! The browser's way in (PROTOCOL.md §6): the web listener's HTTP, the WebSocket framing,
//! and the session that carries TCRP frames (channel 1) and datagrams (channel 2) over it.
//!
//! Sans-IO like the TCRP connection: a web connection is the same
//! [`Conn`](super::conn::Conn) (bounded input, capped output, timers, closing handshake),
//! with [`session::Web`] as its [`Service`](super::conn::Service):
//!
//! * [`http`]: one request head (`httparse`): the page's files, 400/403/404/405/426, and the
//!   upgrade of `/ws` (Origin check, `Sec-WebSocket-Accept`).
//! * [`frame`]: RFC 6455 frames, server side (masking, fragments, control frames, limits).
//! * [`session`]: a session's messages: channel 1 to [`Relay::handle_request`], channel 2 to
//!   the relay as a datagram that came on this session.
//!
//! A room's datagram reaches its WebSocket members through [`SessionOutbox`]: the relay's
//! [`Transmit`](super::transmit::Transmit) records the payload once and the sessions it is
//! for; the loop then frames those same bytes into each session's output buffer, dropping
//! (and counting) what a full buffer cannot take.
//!
//! [`Relay::handle_request`]: super::Relay::handle_request

use super::transmit::SessionId;

pub mod frame;
pub mod http;
pub mod session;

/// The WebSocket channel of a TCRP frame.
pub const CHANNEL_TCRP: u8 = 1;
/// The WebSocket channel of a datagram.
pub const CHANNEL_DATAGRAM: u8 = 2;
/// The port of the web listener when `--web` is not given.
pub const DEFAULT_PORT: u16 = 9080;
/// A web connection's input buffer: a whole request head, or one whole client frame.
pub const INPUT_CAP: usize = if http::MAX_HEAD > frame::MAX_HEADER + frame::MAX_MESSAGE {
    http::MAX_HEAD
} else {
    frame::MAX_HEADER + frame::MAX_MESSAGE
};

/// What the web side counts, for metrics.
#[derive(Debug, Default, Clone)]
pub struct WebStats {
    /// Sessions opened (upgrades) since start.
    pub sessions_opened: u64,
    /// Sessions closed since start.
    pub sessions_closed: u64,
    /// Whole messages received on sessions.
    pub messages_in: u64,
    /// Units sent to sessions (TCRP answers and datagrams).
    pub messages_out: u64,
    /// Datagrams for a session that its full output buffer could not take.
    pub datagrams_dropped: u64,
}

impl WebStats {
    /// Sessions open now.
    pub fn sessions_open(&self) -> u64 {
        self.sessions_opened - self.sessions_closed
    }
}

/// Datagrams on their way to sessions: each payload stored once, with the sessions it is
/// for. Filled by the relay's transmitter, emptied by the loop after each relay call. The
/// buffers keep their capacity, so a steady flow allocates nothing.
#[derive(Debug, Default)]
pub struct SessionOutbox {
    bytes: Vec<u8>,
    /// (start, end) of a payload in `bytes`, and one session it goes to.
    sends: Vec<(usize, usize, SessionId)>,
}

impl SessionOutbox {
    /// Queues `payload` for each of `to`.
    pub fn push(&mut self, payload: &[u8], to: &[SessionId]) {
        if to.is_empty() {
            return;
        }
        let start = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        let end = self.bytes.len();
        self.sends.extend(to.iter().map(|&s| (start, end, s)));
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Hands every queued (session, payload) to `deliver`, in order, and empties the queue.
    pub fn drain(&mut self, mut deliver: impl FnMut(SessionId, &[u8])) {
        for &(start, end, to) in &self.sends {
            deliver(to, &self.bytes[start..end]);
        }
        self.sends.clear();
        self.bytes.clear();
    }
}
