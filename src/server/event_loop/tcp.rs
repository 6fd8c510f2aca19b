//! The TCP side of the loop: accepting, admission, and moving bytes between each socket and
//! its [`Conn`]. Every decision about those bytes is the `Conn`'s (see [`crate::server::conn`]);
//! this file only does the system calls and the bookkeeping of registrations and deadlines.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use log::{debug, warn};
use mio::net::TcpStream;
use mio::{Interest, Token};

use super::{ACCEPT_BACKOFF, ACCEPTS_PER_TURN, CONN_BASE, LISTENER, LoopStats, METRICS, WEB};
use super::{DISCARD_BUF, LoopTx, READS_PER_TURN, Server, WebSide};
use crate::server::Relay;
use crate::server::conn::admission::{Admit, Kind};
use crate::server::conn::{Closed, Conn, Phase, http, tcrp};
use crate::server::metrics::Snapshot;
use crate::server::tls::TlsLayer;
use crate::server::transmit::SessionId;
use crate::server::web::frame::{self, CloseCode};
use crate::server::web::session::{Web, WebState};
use crate::server::web::{self as webmod};

/// One TCP connection: its socket, and the [`Conn`] that decides what to do with it.
#[derive(Debug)]
pub(super) struct Client {
    pub(super) stream: TcpStream,
    pub(super) peer: SocketAddr,
    pub(super) kind: Kind,
    admit: Admit,
    /// Generation, to recognise stale deadline entries of a reused slab slot.
    pub(super) id: u64,
    pub(super) conn: Conn,
    /// The earliest entry this connection has in the deadline queue.
    scheduled: Instant,
    /// Whether WRITABLE interest is registered.
    writing: bool,
    /// A web connection's state (HTTP head, then WebSocket session); unused otherwise.
    pub(super) web: WebState,
    /// Its session's idle timer and goodbye are set on the `Conn`.
    session_set: bool,
    /// Given output by [`Server::deliver_to_sessions`] since its last write.
    pub(super) touched: bool,
    /// On a TLS listener: the layer between the socket and the `Conn` (`tls.rs` beside
    /// this file); `None` for plain connections, which never see it.
    pub(super) tls: Option<TlsLayer>,
}

impl Client {
    /// Whether there is something to write: answers owed, or TLS records.
    fn wants_write(&self) -> bool {
        match &self.tls {
            None => self.conn.wants_write(),
            Some(tls) => tls.wants_write() || tls.handed < self.conn.output().len(),
        }
    }
}

impl Server {
    pub(super) fn accept(&mut self, now: Instant, kind: Kind) {
        if self.listeners.paused_until.is_some_and(|t| now < t) {
            return;
        }
        self.listeners.paused_until = None;
        for _ in 0..ACCEPTS_PER_TURN {
            let listener = match kind {
                Kind::Tcrp => &self.listeners.tcrp,
                Kind::Http => match &self.listeners.metrics {
                    Some(l) => l,
                    None => return,
                },
                Kind::Web => match &self.listeners.web {
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
                    self.listeners.paused_until = Some(now + ACCEPT_BACKOFF);
                    return;
                }
                // A connection reset before we took it, and the like: not ours to worry.
                Err(e) => debug!("accept: {e}"),
            }
        }
        self.backlog.push(match kind {
            Kind::Tcrp => LISTENER,
            Kind::Http => METRICS,
            Kind::Web => WEB,
        });
    }

    fn admit(&mut self, mut stream: TcpStream, peer: SocketAddr, now: Instant, kind: Kind) {
        let admit = self.clients.admission.admit(kind, peer.ip());
        let mut conn = match (admit, kind) {
            (Admit::Dropped, _) => {
                self.stats.refused += 1;
                debug!("refusing {peer} unanswered: too many refusals pending");
                return;
            }
            (Admit::Refused, _) => {
                self.stats.refused += 1;
                debug!("connection from {peer} refused: server full");
                let answer = match kind {
                    Kind::Tcrp => tcrp::refusal(),
                    Kind::Http => http::refusal(),
                    Kind::Web => webmod::http::refusal(),
                };
                Conn::refused(now, answer)
            }
            (Admit::Counted, Kind::Tcrp) => Conn::new(now, tcrp::INPUT_CAP),
            (Admit::Counted, Kind::Http) => Conn::new(now, http::INPUT_CAP),
            (Admit::Counted, Kind::Web) => {
                // The handshake must be whole within REQUEST_TIMEOUT of the accept.
                let mut conn = Conn::new(now, webmod::INPUT_CAP);
                conn.expect_request(now);
                conn
            }
        };
        let tls = match (&self.tls, kind) {
            (Some(config), Kind::Tcrp | Kind::Web) => match TlsLayer::new(config) {
                Ok(layer) => Some(layer),
                Err(e) => {
                    warn!("TLS for {peer}: {e}");
                    self.clients.admission.release(kind, admit, peer.ip());
                    return;
                }
            },
            _ => None,
        };
        if tls.is_some() {
            // The handshake must be done within REQUEST_TIMEOUT of the accept (a refusal
            // too: it is said inside TLS, and lingers only once said).
            conn.expect_request(now);
        }
        if admit == Admit::Counted {
            self.stats.accepted += 1;
        }
        let _ = stream.set_nodelay(true);
        let entry = self.clients.slab.vacant_entry();
        let key = entry.key();
        let token = Token(key + CONN_BASE);
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, token, Interest::READABLE)
        {
            warn!("register connection from {peer}: {e}");
            self.clients.admission.release(kind, admit, peer.ip());
            return;
        }
        let id = self.clients.next_id;
        self.clients.next_id += 1;
        let scheduled = conn.deadline();
        entry.insert(Client {
            stream,
            peer,
            kind,
            admit,
            id,
            conn,
            scheduled,
            writing: false,
            web: WebState::default(),
            session_set: false,
            touched: false,
            tls,
        });
        self.clients.deadlines.schedule(scheduled, key, id);
        if admit == Admit::Refused {
            self.on_writable(key, now);
        }
    }

    pub(super) fn on_readable(&mut self, key: usize, now: Instant) {
        if self.clients.slab.get(key).is_some_and(|c| c.tls.is_some()) {
            self.on_readable_tls(key, now);
            return;
        }
        let mut discard = [0u8; DISCARD_BUF];
        for reads in 0.. {
            let Some(client) = self.clients.slab.get_mut(key) else {
                return;
            };
            if reads == READS_PER_TURN {
                self.backlog.push(Token(key + CONN_BASE));
                break;
            }
            let buf = client.conn.read_buf().unwrap_or(&mut discard);
            match client.stream.read(buf) {
                Ok(n) => {
                    self.serve(key, now, n);
                    if n == 0 {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("read from {}: {e}", client.peer);
                    self.close(key);
                    return;
                }
            }
            if self.close_if_done(key) {
                return;
            }
        }
        self.on_writable(key, now);
    }

    /// Hands `n` bytes just read on connection `key` to its [`Conn`], with the service its
    /// kind speaks.
    pub(super) fn serve(&mut self, key: usize, now: Instant, n: usize) {
        let Server {
            relay,
            udp,
            clients,
            web,
            stats,
            ..
        } = self;
        let client = &mut clients.slab[key];
        match client.kind {
            Kind::Tcrp => {
                let mut tx = LoopTx::new(udp, &mut web.outbox);
                let peer = client.peer.ip();
                let mut service = tcrp::Tcrp {
                    relay,
                    tx: &mut tx,
                    peer,
                    conn: SessionId { key, id: client.id },
                };
                client.conn.on_read(now, n, &mut service);
            }
            Kind::Http => {
                let snapshot = snapshot(relay, stats, web, clients.admission.connections());
                let mut service = http::Scrape { snapshot };
                client.conn.on_read(now, n, &mut service);
            }
            Kind::Web => {
                let WebSide {
                    site,
                    outbox,
                    scratch,
                    stats,
                    session_idle,
                    ..
                } = web;
                let mut tx = LoopTx::new(udp, outbox);
                let mut service = Web {
                    relay,
                    tx: &mut tx,
                    peer: client.peer.ip(),
                    session: SessionId { key, id: client.id },
                    state: &mut client.web,
                    site,
                    scratch,
                    stats,
                };
                client.conn.on_read(now, n, &mut service);
                if client.web.is_session() && !client.session_set {
                    // PROTOCOL.md §6: a session with no message for max(60 s,
                    // IdleTimeout) is closed with 1001.
                    client.session_set = true;
                    let mut goodbye = Vec::new();
                    frame::write_close(&mut goodbye, CloseCode::GoingAway);
                    client.conn.set_session(*session_idle, goodbye);
                }
                self.deliver_to_sessions();
            }
        }
    }

    pub(super) fn on_writable(&mut self, key: usize, now: Instant) {
        let Some(client) = self.clients.slab.get_mut(key) else {
            return;
        };
        if client.tls.is_some() {
            self.on_writable_tls(key, now);
            return;
        }
        while client.conn.wants_write() {
            match client.stream.write(client.conn.output()) {
                Ok(0) => {
                    self.close(key);
                    return;
                }
                Ok(n) => {
                    if client.conn.on_written(n, now) {
                        let _ = client.stream.shutdown(Shutdown::Write);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!("write to {}: {e}", client.peer);
                    self.close(key);
                    return;
                }
            }
        }
        if self.close_if_done(key) || !self.update_interest(key) {
            return;
        }
        self.reschedule(key);
    }

    /// Asks for WRITABLE only while output is queued. False if the connection was closed.
    pub(super) fn update_interest(&mut self, key: usize) -> bool {
        let client = &mut self.clients.slab[key];
        let wants = client.wants_write();
        if wants == client.writing {
            return true;
        }
        client.writing = wants;
        let interest = if wants {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let token = Token(key + CONN_BASE);
        if let Err(e) = self
            .poll
            .registry()
            .reregister(&mut client.stream, token, interest)
        {
            debug!("reregister {}: {e}", client.peer);
            self.close(key);
            return false;
        }
        true
    }

    /// Closes connection `key` if its [`Conn`] is done; says whether it did.
    pub(super) fn close_if_done(&mut self, key: usize) -> bool {
        let Some(client) = self.clients.slab.get(key) else {
            return true;
        };
        let Phase::Closed(why) = client.conn.phase() else {
            return false;
        };
        match why {
            Closed::PeerClosed | Closed::Overfull => {}
            Closed::SlowPeer => {
                warn!("closing {}: {why}", client.peer);
                self.stats.slow_peers += 1;
            }
            Closed::RequestTimeout | Closed::Idle | Closed::LingerOver => {
                debug!("closing {}: {why}", client.peer);
            }
        }
        self.close(key);
        true
    }

    /// Closes the connections whose deadline has passed; moves the others' entries.
    pub(super) fn on_conn_timers(&mut self, now: Instant) {
        while let Some((at, key, id)) = self.clients.deadlines.pop_due(now) {
            let clients = &mut self.clients;
            let Some(client) = clients.slab.get_mut(key).filter(|c| c.id == id) else {
                clients.deadlines.popped_stale();
                continue;
            };
            if at != client.scheduled {
                continue; // a stale entry: a newer, earlier one was scheduled
            }
            client.conn.on_timeout(now);
            if !self.close_if_done(key) {
                let client = &mut self.clients.slab[key];
                client.scheduled = client.conn.deadline();
                self.clients.deadlines.schedule(client.scheduled, key, id);
            }
        }
    }

    /// Makes sure the deadline queue wakes us by the connection's current deadline. A later
    /// deadline needs nothing: the pending entry fires early and is moved then.
    pub(super) fn reschedule(&mut self, key: usize) {
        if let Some(client) = self.clients.slab.get_mut(key) {
            let d = client.conn.deadline();
            if d < client.scheduled {
                client.scheduled = d;
                self.clients.deadlines.schedule(d, key, client.id);
            }
        }
    }

    pub(super) fn close(&mut self, key: usize) {
        let clients = &mut self.clients;
        let Some(mut client) = clients.slab.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut client.stream);
        clients
            .admission
            .release(client.kind, client.admit, client.peer.ip());
        if client.web.is_session() {
            // Its members stay until LEAVE or IdleTimeout; their datagrams find no session
            // of this generation and are not sent.
            self.web.stats.sessions_closed += 1;
        }
        // Its deadline entry is garbage now; drop garbage once it dominates.
        clients.deadlines.forget();
        let slab = &clients.slab;
        clients
            .deadlines
            .compact_if_needed(|key, id| slab.get(key).is_some_and(|c| c.id == id));
    }
}

/// What a scrape reports, borrowed at scrape time.
fn snapshot<'a, R: rand::Rng>(
    relay: &'a Relay<R>,
    stats: &LoopStats,
    web: &WebSide,
    connections: usize,
) -> Snapshot<'a> {
    Snapshot {
        web: web.stats.clone(),
        counters: &relay.counters,
        rooms: relay.room_count(),
        members: relay.member_count(),
        bound: relay.bound_count(),
        connections,
        accepted: stats.accepted,
        refused: stats.refused,
        slow_peers: stats.slow_peers,
        tls_handshakes: stats.tls_handshakes,
        tls_errors: stats.tls_errors,
        wakeups: stats.wakeups,
        busy_seconds: stats.busy.as_secs_f64(),
        busy_share: stats.busy_share,
        hold_seconds: stats.hold.as_secs_f64(),
    }
}

/// Running out of descriptors or memory: back off rather than spin on `accept`.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
