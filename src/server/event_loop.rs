//! The readiness loop: moves bytes between sockets and the sans-IO types.
//!
//! One thread, one `mio::Poll` over the TCP listener (and the metrics and web listeners),
//! the TCP connections (in a `Slab`, token = key + [`CONN_BASE`]), one UDP socket and the
//! shutdown signals. Datagrams go to the [`Relay`]; TCP bytes go to each connection's
//! [`Conn`], which hands whole requests to the relay (or answers a scrape, or serves the
//! web page and WebSocket sessions). The earliest deadline of the relay and of the
//! connections is the poll timeout, so there is no fixed tick.
//!
//! WebSocket members (PROTOCOL.md §6): the relay sends a room's outbox once through
//! `LoopTx` (`tx.rs` beside this file), which hands UDP destinations to `sendmmsg` and queues the same bytes once
//! for the room's sessions ([`SessionOutbox`]); after each relay call the loop frames them
//! into each session's output buffer (found by slab key and generation, no scan; dropped
//! and counted past 256 KiB), and writes the sessions it touched once at the end of the
//! turn (`web.rs` beside this file).
//!
//! TLS (`--tls-cert`, PROTOCOL.md §6): a connection on the TCRP or web listener then has a
//! [`TlsLayer`] between its socket and its [`Conn`]; `tls.rs` beside this file moves records
//! between the socket and the layer and plaintext between the layer and the `Conn`, in the
//! same turn and with the same budgets, timers and caps as a plain connection.
//!
//! Where I/O happens: this file reads and writes the TCP sockets, accepts, and drives the
//! UDP socket through [`crate::sys::udp`] (`recvmmsg`/`sendmmsg`), which is also where the
//! relay's [`Transmit`] sends; `tcp.rs` beside this file does the
//! TCP side. Socket set-up is [`crate::sys::socket`]. No `unsafe` here: all of it is under
//! [`crate::sys`].
//!
//! Nothing here blocks or lets one peer hurt another:
//! * a connection's buffers, timers and closing are [`Conn`]'s (bounded input, capped
//!   output, request and idle timeouts, drain after a malformed frame);
//! * connections over the limits are told SERVER_FULL and closed ([`Admission`]); `accept`
//!   running out of file descriptors backs off instead of spinning;
//! * reads and accepts are budgeted per turn, and UDP is read in bounded batches, so TCP is
//!   served during a flood; UDP sends that the socket refuses are dropped and counted.
//!
//! [`Conn`]: super::conn::Conn
//! [`TlsLayer`]: super::tls::TlsLayer

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info};
use mio::net::{TcpListener, UdpSocket};
use mio::{Events, Interest, Poll, Token};
use rand::rngs::ThreadRng;
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use socket2::SockRef;

use super::coalesce::Coalescer;
use super::conn::admission::{Admission, Kind};
use super::counters::Counters;
use super::deadlines::DeadlineQueue;
use super::web::http::Site;
use super::web::{SessionOutbox, WebStats};
use super::{Config, Relay};
use crate::sys::timer::Timer;
use crate::sys::udp::{self, BatchTx as Tx, Dest, Receiver, Sender};
use tcp::Client;

mod cluster;
mod tcp;
mod tls;
mod tx;
mod web;

use tx::LoopTx;

pub use super::conn::admission::Limits;

/// Datagrams read per wake-up before the loop looks at TCP and timers again.
const UDP_BATCH: usize = 1024;
/// Whether a batch read shorter than [`udp::RECV_BATCH`] means the socket's queue was
/// empty, so the loop need not ask again to hear `WouldBlock`: on Linux, `recvmmsg` stops
/// only at an empty queue, and epoll (even edge-triggered) reports every datagram that
/// arrives afterwards. At a few thousand datagrams a second (heartbeats) that saves one
/// system call in four. Elsewhere the loop reads until `WouldBlock`, as mio asks.
const SHORT_READ_IS_EMPTY: bool = cfg!(target_os = "linux");
/// Reads from one connection per turn; a peer with more to say waits for the next turn,
/// so one busy connection cannot keep the loop from the others.
const READS_PER_TURN: usize = 16;
/// Connections accepted per turn, for the same reason.
const ACCEPTS_PER_TURN: usize = 128;
/// How long `accept` rests after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long shutdown may wait for the last datagrams to leave.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one blocking send may wait during that drain.
const DRAIN_SEND_TIMEOUT: Duration = Duration::from_millis(100);
/// Readiness events taken per poll; more simply wait for the next turn.
const EVENTS_PER_POLL: usize = 1024;
/// Discard buffer for input read while a connection drains (the bytes are thrown away;
/// small, as a draining peer has nothing to say).
const DISCARD_BUF: usize = 512;
/// Added to the poll timeout so that we never wake a hair early and spin.
const TIMEOUT_ROUNDING: Duration = Duration::from_millis(1);

const LISTENER: Token = Token(0);
const UDP: Token = Token(1);
const SIGNALS: Token = Token(2);
const METRICS: Token = Token(3);
const WEB: Token = Token(4);
const FLUSH_TIMER: Token = Token(5);
/// The cluster thread's waker (`--cluster`).
const CLUSTER: Token = Token(6);
/// Connection tokens are slab keys plus this.
pub const CONN_BASE: usize = 16;

/// Loop-level counts, for metrics.
#[derive(Debug, Default)]
struct LoopStats {
    wakeups: u64,
    busy: Duration,
    accepted: u64,
    refused: u64,
    slow_peers: u64,
    /// TLS handshakes completed.
    tls_handshakes: u64,
    /// TLS connections closed for breaking TLS (not a ClientHello, a bad record, a failed
    /// handshake).
    tls_errors: u64,
    /// The loop's average busy share, 0 to 1, as the coalescer last computed it.
    busy_share: f64,
    /// How long a busy room may hold its outbox now.
    hold: Duration,
}

/// The listeners, and the accept back-off shared by them.
struct Listeners {
    tcrp: TcpListener,
    metrics: Option<TcpListener>,
    web: Option<TcpListener>,
    paused_until: Option<Instant>,
}

/// The web side's state beyond its connections: settings, the datagrams on their way to
/// sessions, counts.
#[derive(Default)]
struct WebSide {
    site: Site,
    outbox: SessionOutbox,
    /// The relay's answers to a channel-1 request, before they are framed (reused).
    scratch: Vec<u8>,
    stats: WebStats,
    /// Sessions given output since their last write: written once at the end of the turn.
    touched: Vec<usize>,
    /// A session with no message for this long is closed with 1001: max(60 s,
    /// IdleTimeout) (PROTOCOL.md §6).
    session_idle: Duration,
}

/// The data-plane socket and its batch buffers.
struct Udp {
    socket: UdpSocket,
    receiver: Receiver,
    sender: Sender,
    /// Datagrams may be waiting (readable, and not yet read to `WouldBlock`).
    pending: bool,
}

/// The TCP connections, their deadlines and the admission counts.
struct Clients {
    slab: Slab<Client>,
    deadlines: DeadlineQueue,
    next_id: u64,
    admission: Admission,
}

/// Adaptive coalescing (`--max-hold-us`): the busy share that sets the hold, and the
/// timer that wakes the loop when a held outbox is due (mio's poll timeout has only
/// millisecond resolution; the holds are hundreds of microseconds).
struct Holding {
    coalescer: Coalescer,
    /// `None` where timerfd does not exist: the poll timeout then covers held outboxes.
    timer: Option<Timer>,
    /// The deadline the timer is armed for, so that it is re-armed only when it changes.
    armed: Option<Instant>,
}

/// The server: sockets, connections and the relay.
pub struct Server {
    poll: Poll,
    listeners: Listeners,
    udp: Udp,
    relay: Relay<ThreadRng>,
    clients: Clients,
    web: WebSide,
    stats: LoopStats,
    /// With `--tls-cert` and `--tls-key`: the TCRP and web listeners speak TLS only.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Sources that still had input when their turn's budget ran out: served first next
    /// turn, and the poll does not wait while any is here.
    backlog: Vec<Token>,
    holding: Holding,
    /// With `--cluster`: the NATS thread's end (`event_loop/cluster.rs`).
    cluster: Option<super::cluster::Cluster>,
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
        let config_idle = config.idle_timeout;
        let max_hold = config.max_hold;
        let poll = Poll::new()?;
        let mut tcrp = TcpListener::from_std(listener);
        // Bound to a wildcard address, the server must answer each member from the address
        // it sent to: ask the kernel for each datagram's local address.
        let local = udp.local_addr()?;
        let pktinfo = udp::PKTINFO && local.ip().is_unspecified();
        #[cfg(target_os = "linux")]
        if pktinfo {
            udp::enable_pktinfo(&udp, local.is_ipv6())?;
        }
        let mut socket = UdpSocket::from_std(udp);
        let registry = poll.registry();
        registry.register(&mut tcrp, LISTENER, Interest::READABLE)?;
        registry.register(&mut socket, UDP, Interest::READABLE)?;
        let timer = if max_hold.is_zero() {
            None
        } else {
            Timer::new().ok()
        };
        #[cfg(target_os = "linux")]
        if let Some(t) = &timer {
            registry.register(
                &mut mio::unix::SourceFd(&t.raw_fd()),
                FLUSH_TIMER,
                Interest::READABLE,
            )?;
        }
        let metrics = match metrics {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = TcpListener::from_std(l);
                registry.register(&mut l, METRICS, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        Ok(Server {
            poll,
            listeners: Listeners {
                tcrp,
                metrics,
                web: None,
                paused_until: None,
            },
            udp: Udp {
                socket,
                receiver: Receiver::new(pktinfo),
                sender: Sender::default(),
                pending: true,
            },
            relay: Relay::new(config, rand::rng()),
            clients: Clients {
                slab: Slab::new(),
                deadlines: DeadlineQueue::default(),
                next_id: 0,
                admission: Admission::new(limits),
            },
            web: WebSide {
                session_idle: super::conn::IDLE_TIMEOUT.max(config_idle),
                ..WebSide::default()
            },
            stats: LoopStats::default(),
            tls: None,
            backlog: Vec::new(),
            holding: Holding {
                coalescer: Coalescer::new(max_hold),
                timer,
                armed: None,
            },
            cluster: None,
        })
    }

    /// Adds the web listener (PROTOCOL.md §6): the page, and WebSocket sessions, with
    /// `site`'s allowed origins.
    pub fn with_web(mut self, listener: std::net::TcpListener, site: Site) -> io::Result<Server> {
        listener.set_nonblocking(true)?;
        let mut l = TcpListener::from_std(listener);
        self.poll
            .registry()
            .register(&mut l, WEB, Interest::READABLE)?;
        self.listeners.web = Some(l);
        self.web.site = site;
        Ok(self)
    }

    /// Makes the TCRP and web listeners speak TLS only (PROTOCOL.md §6), with `config`
    /// (see [`crate::server::tls::load`]).
    pub fn with_tls(mut self, config: Arc<rustls::ServerConfig>) -> Server {
        self.tls = Some(config);
        self
    }

    /// Whether the TCRP and web listeners speak TLS.
    pub fn tls_on(&self) -> bool {
        self.tls.is_some()
    }

    /// The web listener's address, if there is one.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        let l = self.listeners.web.as_ref()?;
        l.local_addr().ok()
    }

    /// The TCP and UDP addresses actually bound.
    pub fn local_addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        Ok((
            self.listeners.tcrp.local_addr()?,
            self.udp.socket.local_addr()?,
        ))
    }

    /// The metrics endpoint's address, if there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let l = self.listeners.metrics.as_ref()?;
        l.local_addr().ok()
    }

    /// Runs until one of `signals` arrives, then closes every room ("server shutting
    /// down"), lets those datagrams leave (bounded wait) and returns the final counters.
    pub fn run(mut self, mut signals: Signals) -> io::Result<Counters> {
        self.poll
            .registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let now = Instant::now();
            self.begin_turn(now);
            let mut stop = false;
            for token in std::mem::take(&mut self.backlog) {
                self.on_ready(token, now, true, false);
            }
            for event in events.iter() {
                match event.token() {
                    UDP => self.udp.pending = true,
                    FLUSH_TIMER => {
                        if let Some(t) = &self.holding.timer {
                            t.ack();
                        }
                        self.holding.armed = None;
                    }
                    SIGNALS => {
                        for sig in signals.pending() {
                            info!("signal {sig}: shutting down");
                            stop = true;
                        }
                    }
                    token => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        self.on_ready(token, now, readable, event.is_writable());
                    }
                }
            }
            if self.udp.pending {
                self.read_datagrams(now);
            }
            self.on_timers(now);
            self.end_turn(now);
            if stop {
                break;
            }
        }
        Ok(self.shutdown())
    }

    /// A wake-up begins at `now`: the coalescer sees the time since the last one and sets
    /// the hold for this turn.
    fn begin_turn(&mut self, now: Instant) {
        self.stats.wakeups += 1;
        let coalescer = &mut self.holding.coalescer;
        coalescer.on_wake(now);
        self.relay.set_hold(coalescer.hold());
        self.stats.busy_share = coalescer.busy_share();
        self.stats.hold = coalescer.hold();
    }

    /// The end of a wake-up that began at `now`: the outboxes due leave (small fan-outs
    /// staged into one `sendmmsg`), the flush timer is armed for the first held one, the
    /// cluster publishes, sessions get their frames, and the turn's busy time is counted.
    fn end_turn(&mut self, now: Instant) {
        let flushed_at = Instant::now();
        let mut tx = LoopTx::new(&mut self.udp, &mut self.web.outbox);
        tx.stage = true;
        self.relay.flush_due(flushed_at, &mut tx);
        let (datagrams, deliveries) = tx.send_staged();
        self.relay.count_refused(datagrams, deliveries);
        self.arm_flush_timer(flushed_at);
        self.cluster_turn(now);
        self.deliver_to_sessions();
        self.write_touched(now);
        let busy = now.elapsed();
        self.stats.busy += busy;
        self.holding.coalescer.on_busy(busy);
    }

    /// A listener or a connection is ready (or was left in the backlog).
    fn on_ready(&mut self, token: Token, now: Instant, readable: bool, writable: bool) {
        match token {
            LISTENER => self.accept(now, Kind::Tcrp),
            METRICS => self.accept(now, Kind::Http),
            WEB => self.accept(now, Kind::Web),
            Token(t) if t >= CONN_BASE => {
                if readable {
                    self.on_readable(t - CONN_BASE, now);
                }
                if writable {
                    self.on_writable(t - CONN_BASE, now);
                }
            }
            Token(_) => {}
        }
    }

    /// Arms the flush timer for the first held outbox, if that deadline changed.
    fn arm_flush_timer(&mut self, now: Instant) {
        let Some(timer) = &self.holding.timer else {
            return;
        };
        let next = self.relay.next_flush();
        if next == self.holding.armed {
            return;
        }
        self.holding.armed = next;
        if let Some(t) = next {
            // A timer that cannot be armed: the poll timeout covers it (below).
            if timer.arm(t.saturating_duration_since(now)).is_err() {
                self.holding.armed = None;
                self.holding.timer = None;
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.udp.pending || !self.backlog.is_empty() {
            return Some(Duration::ZERO);
        }
        // Without the timer, the poll timeout wakes the loop for held outboxes too.
        let held = match self.holding.timer {
            Some(_) => None,
            None => self.relay.next_flush(),
        };
        let next = [
            self.relay.next_timeout(),
            self.relay.cluster_deadline(),
            self.clients.deadlines.next(),
            self.listeners.paused_until,
            held,
        ]
        .into_iter()
        .flatten()
        .min()?;
        Some(next.saturating_duration_since(Instant::now()) + TIMEOUT_ROUNDING)
    }

    fn shutdown(mut self) -> Counters {
        // Blocking sends with a timeout: the last datagrams leave, but exit is bounded.
        let sock = SockRef::from(&self.udp.socket);
        let _ = sock.set_nonblocking(false);
        let _ = sock.set_write_timeout(Some(DRAIN_SEND_TIMEOUT));
        let until = Instant::now() + DRAIN_TIMEOUT;
        let mut tx = LoopTx {
            udp: Tx::draining(&self.udp.socket, &mut self.udp.sender, until),
            sessions: &mut self.web.outbox,
            stage: false,
        };
        self.relay.shutdown(&mut tx);
        self.relay.flush(&mut tx);
        self.cluster_stop();
        // Sessions get theirs too, with one non-blocking write each.
        self.deliver_to_sessions();
        self.write_touched(Instant::now());
        let c = self.relay.counters.clone();
        info!("final counters: {c}");
        c
    }

    fn read_datagrams(&mut self, now: Instant) {
        let Udp {
            socket,
            receiver,
            sender,
            pending,
        } = &mut self.udp;
        let mut tx = LoopTx {
            udp: Tx::new(&*socket, sender),
            sessions: &mut self.web.outbox,
            stage: true,
        };
        let mut read = 0;
        while read < UDP_BATCH {
            match receiver.recv(&*socket) {
                Ok(n) => {
                    read += n;
                    for i in 0..n {
                        if let Some((addr, local, bytes)) = receiver.get(i) {
                            let from = Dest { addr, local };
                            self.relay.handle_datagram_to(now, from, bytes, &mut tx);
                        }
                    }
                    // What this batch caused (SYNC answers, repairs, full small outboxes)
                    // leaves in one call.
                    let (datagrams, deliveries) = tx.send_staged();
                    self.relay.count_refused(datagrams, deliveries);
                    if SHORT_READ_IS_EMPTY && n < udp::RECV_BATCH {
                        *pending = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *pending = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("udp receive: {e}");
                    read += 1;
                }
            }
        }
        // Budget spent (or the queue empty): sessions get what the datagrams caused; with
        // the budget spent the loop polls again at once, serving TCP in between.
        self.deliver_to_sessions();
    }

    fn on_timers(&mut self, now: Instant) {
        let mut tx = LoopTx::new(&mut self.udp, &mut self.web.outbox);
        tx.stage = true;
        self.relay.handle_timeout(now, &mut tx);
        let (datagrams, deliveries) = tx.send_staged();
        self.relay.count_refused(datagrams, deliveries);
        self.deliver_to_sessions();
        self.on_conn_timers(now);
        if self.listeners.paused_until.is_some_and(|t| t <= now) {
            self.accept(now, Kind::Tcrp);
            self.accept(now, Kind::Http);
            self.accept(now, Kind::Web);
        }
    }
}
