//! The readiness loop: the only part of the server that touches sockets.
//!
//! One thread, one `mio::Poll` over one TCP listener, the TCP connections (in a `Slab`,
//! token = key + [`CONN_BASE`]), one UDP socket and the shutdown signals. The loop moves
//! bytes and calls into the sans-IO [`Relay`]; the relay's earliest deadline is the poll
//! timeout, so there is no fixed tick.
//!
//! Nothing here blocks or lets one peer hurt another:
//! * each connection has one bounded input buffer (a whole request frame at most) and a
//!   capped output buffer; a peer that will not read its replies is closed;
//! * a request must arrive whole within [`REQUEST_TIMEOUT`] of its first byte, and a
//!   connection idle for [`IDLE_TIMEOUT`] is closed;
//! * a malformed frame is answered, then the connection is shut for writing and drained
//!   briefly before close, so that the answer is not lost to a reset;
//! * connections over the cap are told SERVER_FULL and closed; `accept` running out of
//!   file descriptors backs off instead of spinning;
//! * UDP is read in bounded batches, so TCP is served during a flood, and UDP sends that
//!   the socket refuses are dropped and counted, never retried.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::ThreadRng;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use super::counters::Counters;
use super::deadlines::DeadlineQueue;
use super::metrics::{self, MAX_HTTP_REQUEST, Snapshot};
use super::transmit::Dest;
#[cfg(target_os = "linux")]
use super::udp::{BatchTx as Tx, Receiver, Sender};
use super::{Config, Relay};
use crate::protocol::frame::{MAX_REQUEST_FRAME, Request, encode_response, split_request};
use crate::protocol::{Operation, Status};
#[cfg(not(target_os = "linux"))]
use fallback::{Receiver, Sender, Tx};

/// A request must be complete this long after its first byte.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// After a malformed frame, how long the connection is drained before it is closed.
const LINGER: Duration = Duration::from_secs(2);
/// Replies a connection may owe before it counts as a peer that does not read. A LIST
/// reply is about 4 KiB, so this is dozens of pipelined requests.
pub const MAX_OUTPUT: usize = 256 * 1024;
/// Refused connections held at once while their SERVER_FULL answer drains; past this they
/// are closed unanswered, so refusing costs bounded memory.
const MAX_REFUSED: usize = 1024;
/// Datagrams read per wake-up before the loop looks at TCP and timers again.
const UDP_BATCH: usize = 1024;
/// Reads from one connection per turn; a peer with more to say waits for the next turn,
/// so one busy connection cannot keep the loop from the others.
const READS_PER_TURN: usize = 16;
/// Connections accepted per turn, for the same reason.
const ACCEPTS_PER_TURN: usize = 128;
/// Metrics connections open at once; they do not count against the chat limits, so a
/// scrape never costs a chat client its slot.
const MAX_METRICS_CONNECTIONS: usize = 16;
/// How long `accept` rests after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Socket buffer sizes asked for on the UDP socket: bursts are absorbed, not dropped.
const UDP_BUFFER: usize = 8 * 1024 * 1024;
/// How long shutdown may wait for the last datagrams to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const SIGNALS: Token = Token(2);
const METRICS: Token = Token(3);
/// Connection tokens are slab keys plus this.
pub const CONN_BASE: usize = 16;

/// Connection limits enforced by the loop.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Open connections over all peers.
    pub max_connections: usize,
    /// Open connections from one IP (0: no limit).
    pub max_connections_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 4096,
            max_connections_per_ip: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// Owes its last reply; shut for writing once it is out.
    Closing,
    /// Shut for writing; input is read and discarded until EOF or the linger ends.
    Draining,
}

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// TCRP, on the main listener.
    Tcrp,
    /// One HTTP request for metrics, on the metrics listener.
    Http,
}

impl Kind {
    fn input_cap(self) -> usize {
        match self {
            Kind::Tcrp => MAX_REQUEST_FRAME,
            Kind::Http => MAX_HTTP_REQUEST,
        }
    }
}

/// Loop-level counts, for metrics.
#[derive(Debug, Default)]
struct LoopStats {
    wakeups: u64,
    busy: Duration,
    accepted: u64,
    refused: u64,
    slow_peers: u64,
}

#[derive(Debug)]
struct Conn {
    kind: Kind,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    phase: Phase,
    /// Admitted (refused ones count only against the refusal cap).
    counted: bool,
    /// When the first byte of a still-incomplete request arrived.
    request_since: Option<Instant>,
    last_active: Instant,
    linger_until: Option<Instant>,
    /// The earliest entry this connection has in the deadline queue.
    scheduled: Instant,
    wants_write: bool,
    /// The peer shut its side (read gave end of stream): close once the replies owed
    /// have been written.
    peer_done: bool,
}

impl Conn {
    fn deadline(&self) -> Instant {
        if let Some(t) = self.linger_until {
            return t;
        }
        let idle = self.last_active + IDLE_TIMEOUT;
        match self.request_since {
            Some(t) => idle.min(t + REQUEST_TIMEOUT),
            None => idle,
        }
    }
}

/// The server: sockets, connections and the relay.
pub struct Server {
    poll: Poll,
    listener: TcpListener,
    metrics: Option<TcpListener>,
    stats: LoopStats,
    udp: UdpSocket,
    relay: Relay<ThreadRng>,
    limits: Limits,
    conns: Slab<Conn>,
    conn_deadlines: DeadlineQueue,
    next_conn_id: u64,
    counted: usize,
    /// Refused connections still draining their SERVER_FULL answer.
    refused_open: usize,
    /// Open metrics connections.
    metrics_open: usize,
    per_ip: HashMap<IpAddr, u32>,
    accept_paused_until: Option<Instant>,
    udp_pending: bool,
    /// Sources that still had input when their turn's budget ran out: served first next
    /// turn, and the poll does not wait while any is here.
    backlog: Vec<Token>,
    receiver: Receiver,
    sender: Sender,
}

/// Binds the TCP listener and the UDP socket.
///
/// `port` 0 picks a free TCP port; the UDP socket then takes the same number if it is free
/// (or any free port), unless `udp_port` says otherwise. `::` accepts IPv4 as well.
pub fn bind(
    addr: IpAddr,
    port: u16,
    udp_port: Option<u16>,
) -> io::Result<(std::net::TcpListener, std::net::UdpSocket)> {
    let domain = Domain::for_address(SocketAddr::new(addr, 0));
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    if addr.is_ipv6() {
        tcp.set_only_v6(false)?;
    }
    tcp.bind(&SocketAddr::new(addr, port).into())?;
    tcp.listen(1024)?;
    tcp.set_nonblocking(true)?;
    let tcp: std::net::TcpListener = tcp.into();
    let tcp_port = tcp.local_addr()?.port();

    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        udp.set_only_v6(false)?;
    }
    let wanted = udp_port.unwrap_or(tcp_port);
    match udp.bind(&SocketAddr::new(addr, wanted).into()) {
        Ok(()) => {}
        Err(e) if port == 0 && udp_port.is_none() && e.kind() == io::ErrorKind::AddrInUse => {
            udp.bind(&SocketAddr::new(addr, 0).into())?;
        }
        Err(e) => return Err(e),
    }
    udp.set_nonblocking(true)?;
    grow_buffers(&udp);
    Ok((tcp, udp.into()))
}

/// Asks for large UDP buffers: forced past the system cap where we may (root), else as
/// large as the cap allows.
fn grow_buffers(s: &Socket) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let size = UDP_BUFFER as libc::c_int;
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            // SAFETY: setsockopt reads `size` (a c_int of the given length) and nothing else.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
        }
    }
    if s.recv_buffer_size().unwrap_or(0) < UDP_BUFFER {
        let _ = s.set_recv_buffer_size(UDP_BUFFER);
    }
    if s.send_buffer_size().unwrap_or(0) < UDP_BUFFER {
        let _ = s.set_send_buffer_size(UDP_BUFFER);
    }
}

impl Server {
    /// A server over already-bound, non-blocking sockets, with an optional listener for
    /// the metrics endpoint.
    pub fn new(
        listener: std::net::TcpListener,
        udp: std::net::UdpSocket,
        metrics: Option<std::net::TcpListener>,
        mut config: Config,
        limits: Limits,
    ) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        udp.set_nonblocking(true)?;
        config.udp_port = udp.local_addr()?.port();
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        // Bound to a wildcard address, the server must answer each member from the address
        // it sent to: ask the kernel for each datagram's local address.
        let local = udp.local_addr()?;
        let pktinfo = cfg!(target_os = "linux") && local.ip().is_unspecified();
        #[cfg(target_os = "linux")]
        if pktinfo {
            super::udp::enable_pktinfo(&udp, local.is_ipv6())?;
        }
        let mut udp = UdpSocket::from_std(udp);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        poll.registry()
            .register(&mut udp, UDP, Interest::READABLE)?;
        let metrics = match metrics {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                poll.registry()
                    .register(&mut l, METRICS, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        Ok(Server {
            poll,
            listener,
            metrics,
            stats: LoopStats::default(),
            udp,
            relay: Relay::new(config, rand::rng()),
            limits,
            conns: Slab::new(),
            conn_deadlines: DeadlineQueue::default(),
            next_conn_id: 0,
            counted: 0,
            refused_open: 0,
            metrics_open: 0,
            per_ip: HashMap::new(),
            accept_paused_until: None,
            udp_pending: true,
            backlog: Vec::new(),
            receiver: Receiver::new(pktinfo),
            sender: Sender::default(),
        })
    }

    /// The TCP and UDP addresses actually bound.
    pub fn local_addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        Ok((self.listener.local_addr()?, self.udp.local_addr()?))
    }

    /// The metrics endpoint's address, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Runs until one of `signals` arrives, then closes every room ("server shutting
    /// down"), lets those datagrams leave (bounded wait) and returns the final counters.
    pub fn run(mut self, mut signals: Signals) -> io::Result<Counters> {
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.stats.wakeups += 1;
            let mut stop = false;
            for token in std::mem::take(&mut self.backlog) {
                match token {
                    LISTENER => self.accept(now, Kind::Tcrp),
                    METRICS => self.accept(now, Kind::Http),
                    Token(t) if t >= CONN_BASE => self.on_readable(t - CONN_BASE, now),
                    Token(_) => {}
                }
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now, Kind::Tcrp),
                    METRICS => self.accept(now, Kind::Http),
                    UDP => self.udp_pending = true,
                    SIGNALS => {
                        for sig in signals.pending() {
                            info!("signal {sig}: shutting down");
                            stop = true;
                        }
                    }
                    Token(t) if t >= CONN_BASE => {
                        let key = t - CONN_BASE;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key, now);
                        }
                        if event.is_writable() {
                            self.on_writable(key, now);
                        }
                    }
                    Token(_) => {}
                }
            }
            if self.udp_pending {
                self.read_datagrams(now);
            }
            self.on_timers(now);
            self.relay.flush(&mut Tx::new(&self.udp, &mut self.sender));
            self.stats.busy += now.elapsed();
            if stop {
                break;
            }
        }
        Ok(self.shutdown())
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.udp_pending || !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        let next = [
            self.relay.next_timeout(),
            self.conn_deadlines.next(),
            self.accept_paused_until,
        ]
        .into_iter()
        .flatten()
        .min()?;
        // Round up so that we never wake a hair early and spin.
        Some(next.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    fn shutdown(mut self) -> Counters {
        // Blocking sends with a timeout: the last datagrams leave, but exit is bounded.
        let sock = SockRef::from(&self.udp);
        let _ = sock.set_nonblocking(false);
        let _ = sock.set_write_timeout(Some(Duration::from_millis(100)));
        let until = Instant::now() + DRAIN_TIMEOUT;
        let mut tx = Tx::draining(&self.udp, &mut self.sender, until);
        self.relay.shutdown(&mut tx);
        self.relay.flush(&mut tx);
        let c = self.relay.counters.clone();
        info!("final counters: {c}");
        c
    }

    fn read_datagrams(&mut self, now: Instant) {
        let mut tx = Tx::new(&self.udp, &mut self.sender);
        let mut read = 0;
        while read < UDP_BATCH {
            match self.receiver.recv(&self.udp) {
                Ok(n) => {
                    read += n;
                    for i in 0..n {
                        if let Some((addr, local, bytes)) = self.receiver.get(i) {
                            let from = Dest { addr, local };
                            self.relay.handle_datagram_to(now, from, bytes, &mut tx);
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.udp_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("udp receive: {e}");
                    read += 1;
                }
            }
        }
        // Budget spent: poll again at once (timeout zero), serving TCP in between.
    }

    fn accept(&mut self, now: Instant, kind: Kind) {
        if self.accept_paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.accept_paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = match kind {
                Kind::Tcrp => &self.listener,
                Kind::Http => match &self.metrics {
                    Some(l) => l,
                    None => return,
                },
            };
            match listener.accept() {
                Ok((stream, peer)) => self.admit(stream, peer, now, kind),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_resource_error(&e) => {
                    warn!("accept: {e}; pausing accepts for {ACCEPT_BACKOFF:?}");
                    self.accept_paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                // A connection reset before we took it, and the like: not ours to worry.
                Err(e) => debug!("accept: {e}"),
            }
        }
        self.backlog.push(match kind {
            Kind::Tcrp => LISTENER,
            Kind::Http => METRICS,
        });
    }

    fn admit(&mut self, stream: TcpStream, peer: SocketAddr, now: Instant, kind: Kind) {
        let ip = peer.ip().to_canonical();
        let from_ip = self.per_ip.get(&ip).copied().unwrap_or(0);
        let per_ip_cap = self.limits.max_connections_per_ip;
        let full = match kind {
            Kind::Tcrp => {
                self.counted >= self.limits.max_connections
                    || (per_ip_cap != 0 && from_ip >= per_ip_cap)
            }
            Kind::Http => self.metrics_open >= MAX_METRICS_CONNECTIONS,
        };
        if full {
            self.stats.refused += 1;
        } else {
            self.stats.accepted += 1;
        }
        if full && self.refused_open >= MAX_REFUSED {
            debug!("refusing {peer} unanswered: too many refusals pending");
            return;
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let mut conn = Conn {
            kind,
            stream,
            peer,
            id,
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            phase: Phase::Open,
            counted: !full,
            request_since: None,
            last_active: now,
            linger_until: None,
            scheduled: now,
            wants_write: false,
            peer_done: false,
        };
        if full {
            debug!("connection from {peer} refused: server full");
            match kind {
                Kind::Tcrp => encode_response(&mut conn.output, 0, b"", Status::ServerFull),
                Kind::Http => conn.output.extend_from_slice(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            }
            conn.phase = Phase::Closing;
            self.refused_open += 1;
        } else {
            conn.input.reserve_exact(kind.input_cap());
            match kind {
                Kind::Tcrp => {
                    self.counted += 1;
                    *self.per_ip.entry(ip).or_default() += 1;
                }
                Kind::Http => self.metrics_open += 1,
            }
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let conn = entry.insert(conn);
        if let Err(e) = self.poll.registry().register(
            &mut conn.stream,
            Token(key + CONN_BASE),
            Interest::READABLE,
        ) {
            warn!("register connection from {peer}: {e}");
            self.close(key);
            return;
        }
        conn.scheduled = conn.deadline();
        self.conn_deadlines.schedule(conn.scheduled, key, id);
        if full {
            self.on_writable(key, now);
        }
    }

    fn on_readable(&mut self, key: usize, now: Instant) {
        let mut scratch = [0u8; 512];
        for reads in 0.. {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if reads == READS_PER_TURN {
                self.backlog.push(Token(key + CONN_BASE));
                break;
            }
            let result = if conn.phase == Phase::Open {
                let start = conn.input.len();
                let cap = conn.kind.input_cap();
                if start >= cap {
                    // Cannot happen: a frame this long is refused from its header. Close
                    // rather than read zero bytes and mistake it for end of stream.
                    self.close(key);
                    return;
                }
                conn.input.resize(cap, 0);
                let r = conn.stream.read(&mut conn.input[start..]);
                conn.input.truncate(start + r.as_ref().map_or(0, |n| *n));
                r
            } else {
                conn.stream.read(&mut scratch)
            };
            match result {
                Ok(0) if conn.written < conn.output.len() => {
                    // A half-close after the last request: the replies are still owed.
                    conn.peer_done = true;
                    conn.phase = Phase::Closing;
                    break;
                }
                Ok(0) => {
                    self.close(key);
                    return;
                }
                Ok(_) if conn.phase != Phase::Open => {}
                Ok(_) => {
                    conn.last_active = now;
                    conn.request_since.get_or_insert(now);
                    match conn.kind {
                        Kind::Tcrp => self.process_requests(key, now),
                        Kind::Http => self.process_http(key),
                    }
                    if self.conns[key].output.len() > MAX_OUTPUT {
                        warn!(
                            "closing {}: it does not read its replies",
                            self.conns[key].peer
                        );
                        self.stats.slow_peers += 1;
                        self.close(key);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("read from {}: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
        }
        self.on_writable(key, now);
        self.reschedule(key);
    }

    /// Answers every whole request in the connection's input buffer, in order.
    fn process_requests(&mut self, key: usize, now: Instant) {
        let Server {
            conns,
            relay,
            udp,
            sender,
            ..
        } = self;
        let conn = &mut conns[key];
        let peer = conn.peer.ip();
        let mut tx = Tx::new(&*udp, sender);
        let mut consumed = 0;
        // Past the output cap, stop answering: the caller closes a peer that does not read.
        while conn.output.len() <= MAX_OUTPUT {
            match split_request(&conn.input[consumed..]) {
                Ok(None) => break,
                Ok(Some((frame, n))) => {
                    consumed += n;
                    match Request::parse(&frame) {
                        Ok(req) => {
                            relay.handle_request(now, peer, &req, &mut conn.output, &mut tx);
                        }
                        Err(field) => {
                            debug!("invalid request from {peer}: {field}");
                            encode_response(
                                &mut conn.output,
                                frame.op,
                                frame.room,
                                Status::InvalidRequest,
                            );
                            if let Some(op) = Operation::from_u8(frame.op) {
                                relay.counters.request(op, Status::InvalidRequest);
                            }
                        }
                    }
                }
                Err(bad) => {
                    debug!("malformed frame from {peer}: {bad}; closing");
                    encode_response(&mut conn.output, bad.op, b"", Status::InvalidRequest);
                    relay.counters.malformed_frames += 1;
                    conn.phase = Phase::Closing;
                    consumed = conn.input.len();
                    break;
                }
            }
        }
        conn.input.drain(..consumed);
        if conn.input.is_empty() {
            conn.request_since = None;
        } else if consumed > 0 {
            // What is left is the start of the next request, which arrived with this read.
            conn.request_since = Some(now);
        }
    }

    /// Answers a metrics scrape once its request head is whole, then closes.
    fn process_http(&mut self, key: usize) {
        let Some(req) = metrics::parse_request(&self.conns[key].input) else {
            return;
        };
        let mut body = String::new();
        if req == metrics::HttpRequest::Metrics {
            metrics::render(&self.snapshot(), &mut body);
        }
        let conn = &mut self.conns[key];
        metrics::respond(req, &body, &mut conn.output);
        conn.input.clear();
        conn.request_since = None;
        conn.phase = Phase::Closing;
    }

    fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            counters: &self.relay.counters,
            rooms: self.relay.room_count(),
            members: self.relay.member_count(),
            bound: self.relay.bound_count(),
            connections: self.counted,
            accepted: self.stats.accepted,
            refused: self.stats.refused,
            slow_peers: self.stats.slow_peers,
            wakeups: self.stats.wakeups,
            busy_seconds: self.stats.busy.as_secs_f64(),
        }
    }

    fn on_writable(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.written < conn.output.len() {
            match conn.stream.write(&conn.output[conn.written..]) {
                Ok(0) => {
                    self.close(key);
                    return;
                }
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write to {}: {e}", conn.peer);
                    self.close(key);
                    return;
                }
            }
        }
        if conn.written == conn.output.len() {
            conn.output.clear();
            conn.written = 0;
            if conn.output.capacity() > 64 * 1024 {
                conn.output.shrink_to(4096);
            }
            if conn.peer_done {
                self.close(key);
                return;
            }
            if conn.phase == Phase::Closing {
                let _ = conn.stream.shutdown(Shutdown::Write);
                conn.phase = Phase::Draining;
                conn.linger_until = Some(now + LINGER);
                conn.input = Vec::new();
            }
        }
        let wants_write = !conn.output.is_empty();
        if wants_write != conn.wants_write {
            conn.wants_write = wants_write;
            let interest = if wants_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let token = Token(key + CONN_BASE);
            if let Err(e) = self
                .poll
                .registry()
                .reregister(&mut conn.stream, token, interest)
            {
                debug!("reregister {}: {e}", conn.peer);
                self.close(key);
                return;
            }
        }
        self.reschedule(key);
    }

    /// Makes sure the deadline queue wakes us by the connection's current deadline. A later
    /// deadline needs nothing: the pending entry fires early and is moved then.
    fn reschedule(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            let d = conn.deadline();
            if d < conn.scheduled {
                conn.scheduled = d;
                self.conn_deadlines.schedule(d, key, conn.id);
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        self.relay
            .handle_timeout(now, &mut Tx::new(&self.udp, &mut self.sender));
        while let Some((at, key, id)) = self.conn_deadlines.pop_due(now) {
            let Some(conn) = self.conns.get_mut(key).filter(|c| c.id == id) else {
                self.conn_deadlines.popped_stale();
                continue;
            };
            if at != conn.scheduled {
                continue; // a stale entry: a newer, earlier one was scheduled
            }
            let d = conn.deadline();
            if d <= now {
                let why = match (conn.linger_until, conn.request_since) {
                    (Some(_), _) => "linger over",
                    (None, Some(_)) => "request incomplete after 10 s",
                    (None, None) => "idle for 60 s",
                };
                debug!("closing {}: {why}", conn.peer);
                self.close(key);
            } else {
                conn.scheduled = d;
                self.conn_deadlines.schedule(d, key, id);
            }
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.accept(now, Kind::Tcrp);
            self.accept(now, Kind::Http);
        }
    }

    fn close(&mut self, key: usize) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        match (conn.counted, conn.kind) {
            (false, _) => self.refused_open -= 1,
            (true, Kind::Http) => self.metrics_open -= 1,
            (true, Kind::Tcrp) => {
                self.counted -= 1;
                let ip = conn.peer.ip().to_canonical();
                if let Some(n) = self.per_ip.get_mut(&ip) {
                    *n -= 1;
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
        }
        // Its deadline entry is garbage now; drop garbage once it dominates.
        self.conn_deadlines.forget();
        let conns = &self.conns;
        self.conn_deadlines
            .compact_if_needed(|key, id| conns.get(key).is_some_and(|c| c.id == id));
    }
}

fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The portable path where `recvmmsg`/`sendmmsg` do not exist: one datagram per call.
#[cfg(not(target_os = "linux"))]
mod fallback {
    use std::io;
    use std::net::{IpAddr, SocketAddr};

    use mio::net::UdpSocket;

    use crate::protocol::MAX_DATAGRAM;
    use crate::server::transmit::SendTo;

    /// One datagram at a time.
    pub struct Receiver {
        buf: Box<[u8; MAX_DATAGRAM + 1]>,
        last: Option<(SocketAddr, usize)>,
    }

    impl Receiver {
        pub fn new(_pktinfo: bool) -> Self {
            Receiver {
                buf: Box::new([0u8; MAX_DATAGRAM + 1]),
                last: None,
            }
        }

        pub fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            let (n, from) = socket.recv_from(&mut self.buf[..])?;
            self.last = Some((from, n));
            Ok(1)
        }

        pub fn get(&self, i: usize) -> Option<(SocketAddr, Option<IpAddr>, &[u8])> {
            let (from, n) = self.last.filter(|_| i == 0)?;
            Some((from, None, &self.buf[..n]))
        }
    }

    /// No scratch is needed.
    #[derive(Default)]
    pub struct Sender;

    /// `send_to` per receiver.
    pub struct Tx;

    impl Tx {
        #[allow(clippy::new_ret_no_self)]
        pub fn new<'a>(socket: &'a UdpSocket, _: &mut Sender) -> SendTo<'a> {
            SendTo::new(socket)
        }

        pub fn draining<'a>(
            socket: &'a UdpSocket,
            _: &mut Sender,
            _until: std::time::Instant,
        ) -> SendTo<'a> {
            SendTo::new(socket)
        }
    }
}
