//! How the relay's datagrams leave: the [`Transmit`] seam between the sans-IO core and the
//! socket.
//!
//! The core hands over one encoded outbox and the list of its receivers; an implementation
//! sends the same bytes to each and says how many the socket took. It must never block or
//! retry: a receiver the socket refuses (buffer full, or any error) is dropped, and the core
//! counts it. That keeps one slow or absent member from costing the others anything.

use std::net::SocketAddr;

use crate::sys::udp::BatchTx;
pub use crate::sys::udp::Dest;

/// A WebSocket session as a destination (PROTOCOL.md §6): the event loop's slab key of its
/// connection and that connection's generation, so that a member bound to a session that
/// has closed (its slot reused) is never sent another's datagrams. Finding it costs one
/// slab index, not a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId {
    /// The connection's slab key.
    pub key: usize,
    /// The connection's generation.
    pub id: u64,
}

/// Where a bound member's datagrams go: a UDP address, or a WebSocket session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    /// Its UDP address (and the server address to send from).
    Udp(Dest),
    /// Its session.
    Session(SessionId),
}

/// Sends one payload to many receivers without blocking.
pub trait Transmit {
    /// Sends `payload` to each of `to`; returns how many sends succeeded.
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize;

    /// Sends the same `payload` to each WebSocket session of `to` (framed there as one
    /// channel-2 message); returns how many took it. Sessions have their own output
    /// buffers, so this never touches the UDP socket. The default reaches no session (a
    /// transmitter over a bare socket, or a test's that has none).
    fn send_sessions(&mut self, payload: &[u8], to: &[SessionId]) -> usize {
        let _ = (payload, to);
        0
    }

    /// Sends `payload` to one receiver, over whichever transport it is bound to.
    fn send_one(&mut self, payload: &[u8], to: Addr) -> usize {
        match to {
            Addr::Udp(d) => self.send(payload, std::slice::from_ref(&d)),
            Addr::Session(s) => self.send_sessions(payload, std::slice::from_ref(&s)),
        }
    }

    /// Sends `payload` to every receiver of `to`, both transports.
    fn send_targets(&mut self, payload: &[u8], to: &Targets) -> usize {
        let mut sent = 0;
        if !to.udp.is_empty() {
            sent += self.send(payload, &to.udp);
        }
        if !to.sessions.is_empty() {
            sent += self.send_sessions(payload, &to.sessions);
        }
        sent
    }
}

/// A reusable list of receivers over both transports (the v1.1 members a tail notice or a
/// RESUMED goes to): UDP destinations for one `sendmmsg`, sessions for their buffers.
#[derive(Debug, Default)]
pub struct Targets {
    udp: Vec<Dest>,
    sessions: Vec<SessionId>,
}

impl Targets {
    /// Empties the list, keeping its memory.
    pub fn clear(&mut self) {
        self.udp.clear();
        self.sessions.clear();
    }

    /// Adds one receiver.
    pub fn push(&mut self, to: Addr) {
        match to {
            Addr::Udp(d) => self.udp.push(d),
            Addr::Session(s) => self.sessions.push(s),
        }
    }

    /// How many receivers.
    pub fn len(&self) -> usize {
        self.udp.len() + self.sessions.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The UDP receivers.
    pub fn udp(&self) -> &[Dest] {
        &self.udp
    }

    /// The WebSocket receivers.
    pub fn sessions(&self) -> &[SessionId] {
        &self.sessions
    }
}

/// The socket path: `sendmmsg` on Linux, one `send_to` per receiver elsewhere (see
/// [`crate::sys::udp`], where the system calls live). A bare socket reaches no session.
impl Transmit for BatchTx<'_> {
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        BatchTx::send(self, payload, to)
    }
}

/// A [`Transmit`] that records what it was asked to send, for tests of the core.
#[derive(Debug, Default)]
pub struct Recorder {
    /// Every datagram handed over, with its receivers.
    pub sent: Vec<(Vec<u8>, Vec<SocketAddr>)>,
    /// Every datagram handed over for WebSocket sessions, with its sessions.
    pub sent_sessions: Vec<(Vec<u8>, Vec<SessionId>)>,
    /// When set, only this many receivers of each call are accepted (the rest fail, as on a
    /// full socket buffer).
    pub accept_at_most: Option<usize>,
}

impl Transmit for Recorder {
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        let n = self.accept_at_most.map_or(to.len(), |m| m.min(to.len()));
        let addrs = to[..n].iter().map(|d| d.addr).collect();
        self.sent.push((payload.to_vec(), addrs));
        n
    }

    fn send_sessions(&mut self, payload: &[u8], to: &[SessionId]) -> usize {
        self.sent_sessions.push((payload.to_vec(), to.to_vec()));
        to.len()
    }
}

impl Recorder {
    /// The datagrams that went to `addr`, in order.
    pub fn to(&self, addr: SocketAddr) -> Vec<&[u8]> {
        self.sent
            .iter()
            .filter(|(_, to)| to.contains(&addr))
            .map(|(p, _)| p.as_slice())
            .collect()
    }
}
