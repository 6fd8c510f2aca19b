//! `--web N`: users that reach the server over WebSocket (PROTOCOL.md §6) instead of UDP.
//!
//! A web user is an ordinary user of its worker: the same v1.1 path (SEND with ClientSeq,
//! SYNC, NACK), the same stamps, the same gap and order trackers. Only its [`Link`] differs:
//! a non-blocking TCP stream in the worker's mio loop, each datagram one binary message
//! behind channel byte 2. It creates or joins its room over its own session (channel 1),
//! because a token issued over a session is bound to that session.
//!
//! The framing is the library's [`ocm::client::ws`]: the bench has no WebSocket code of
//! its own.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Interest, Registry, Token};
use ocm::client::Membership;
use ocm::client::ws::{self, CHANNEL_DATAGRAM, CHANNEL_TCRP, Masks, Msg, Reader};
use ocm::protocol::Status;
use ocm::protocol::frame::{Grant, Request, split_reply};

use hdrhistogram::Histogram;

use crate::report::{Json, Percentiles, fmt_us};
use crate::stats::{self, Counters};
use crate::topology::Topology;

/// Bytes a web user may have queued for the server; a send beyond it fails as a UDP send
/// to a full socket buffer would (the same cap the server keeps per session, §6).
const OUT_CAP: usize = 256 * 1024;
/// Bytes read from a session per read call.
const READ_CHUNK: usize = 16 * 1024;
/// Reads from one session per readiness before moving on to the others (the session is
/// revisited at once, so none is left behind).
const MAX_READS_PER_VISIT: usize = 8;
/// Longest wait for the upgrade or a TCRP answer while setting up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Which users are web users: `n` of them, spread evenly over the rooms (taken in room
/// order, members in order within each room), so that every room mixes both kinds.
#[derive(Debug, Clone, Default)]
pub struct WebPlan {
    web: Vec<bool>,
}

impl WebPlan {
    /// `n` web users of the topology's (at most all of them).
    pub fn new(topo: &Topology, n: usize) -> WebPlan {
        let users = topo.users();
        let n = n.min(users);
        let mut first_of_room = Vec::with_capacity(topo.rooms());
        let mut at = 0usize;
        for &size in &topo.room_size {
            first_of_room.push(at);
            at += size as usize;
        }
        // User u's place when users are listed room by room; it is web when the running
        // share n·k/users steps up at its place k.
        let web = (0..users)
            .map(|u| {
                let k = first_of_room[topo.room_of[u] as usize] + topo.pos_in_room[u] as usize;
                n > 0 && (k * n) / users != ((k + 1) * n) / users
            })
            .collect();
        WebPlan { web }
    }

    /// Whether user `u` is a web user.
    pub fn is_web(&self, u: usize) -> bool {
        self.web.get(u).copied().unwrap_or(false)
    }

    /// How many web users.
    pub fn count(&self) -> usize {
        self.web.iter().filter(|&&w| w).count()
    }

    /// Web members of each room.
    pub fn per_room(&self, topo: &Topology) -> Vec<u32> {
        let mut per = vec![0u32; topo.rooms()];
        for (u, _) in self.web.iter().enumerate().filter(|(_, w)| **w) {
            if let Some(n) = topo.room_of.get(u).and_then(|&r| per.get_mut(r as usize)) {
                *n += 1;
            }
        }
        per
    }
}

/// How a user's datagrams travel.
pub enum Link {
    /// Its own UDP socket, connected to the data plane.
    Udp(UdpSocket),
    /// A WebSocket session.
    Web(Box<WebLink>),
}

impl Link {
    /// Sends one datagram: whole, or an error (nothing of it queued).
    pub fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        match self {
            Link::Udp(s) => s.send(datagram).map(|_| ()),
            Link::Web(w) => w.send(datagram),
        }
    }

    /// Registers it with the worker's poll.
    pub fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Link::Udp(s) => registry.register(s, token, Interest::READABLE),
            Link::Web(w) => registry.register(
                &mut w.stream,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ),
        }
    }

    /// Whether it is a WebSocket session.
    pub fn is_web(&self) -> bool {
        matches!(self, Link::Web(_))
    }
}

/// One WebSocket session, non-blocking: what is to be written, what was read.
pub struct WebLink {
    stream: mio::net::TcpStream,
    out: Vec<u8>,
    /// Bytes of `out` already written.
    written: usize,
    input: Vec<u8>,
    /// One read's bytes, before they join `input` (allocated once, never zeroed again).
    chunk: Box<[u8]>,
    /// Bytes of `input` already parsed.
    parsed: usize,
    reader: Reader,
    masks: Masks,
    /// The session ended (closed by the server, or an error).
    closed: bool,
}

impl WebLink {
    fn new(stream: mio::net::TcpStream, input: Vec<u8>) -> WebLink {
        WebLink {
            stream,
            out: Vec::new(),
            written: 0,
            input,
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            parsed: 0,
            reader: Reader::default(),
            masks: Masks::new(),
            closed: false,
        }
    }

    /// Queues one datagram as a channel-2 message and writes what the socket takes.
    pub fn send(&mut self, datagram: &[u8]) -> io::Result<()> {
        if self.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if self.out.len() - self.written > OUT_CAP {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        ws::write_unit(
            &mut self.out,
            CHANNEL_DATAGRAM,
            datagram,
            self.masks.next_mask(),
        );
        // Queued: sent as far as the caller is concerned; the rest leaves on writability.
        let _ = self.flush();
        Ok(())
    }

    /// Writes queued bytes until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.written < self.out.len() {
            match self.stream.write(&self.out[self.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    return Err(e);
                }
            }
        }
        self.out.clear();
        self.written = 0;
        Ok(())
    }

    /// Reads what the socket has, a bounded amount: true when it would block (all read).
    fn fill(&mut self) -> io::Result<bool> {
        if self.parsed > 0 {
            self.input.drain(..self.parsed);
            self.parsed = 0;
        }
        for _ in 0..MAX_READS_PER_VISIT {
            match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    self.closed = true;
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => {
                    self.input.extend_from_slice(&self.chunk[..n]);
                    // Whole frames are parsed before the next read; a frame is at most
                    // MAX_SERVER_MESSAGE, so what is buffered stays bounded.
                    if self.input.len() > ws::MAX_SERVER_MESSAGE {
                        return Ok(false);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    return Err(e);
                }
            }
        }
        Ok(false)
    }

    /// The next whole server message of channel 2, copied into `into`; `Ok(false)` when
    /// none is buffered. Pings are answered; channel-1 messages (none is asked for while
    /// the load runs) are skipped.
    fn next_datagram(&mut self, into: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let parsed = ws::parse(&self.input[self.parsed..]).map_err(io::Error::other)?;
            let Some((frame, n)) = parsed else {
                return Ok(false);
            };
            self.parsed += n;
            let mut pong = None;
            match self.reader.feed(&frame).map_err(io::Error::other)? {
                None | Some(Msg::Pong) => {}
                Some(Msg::Binary(m)) => match m.split_first() {
                    Some((&CHANNEL_DATAGRAM, d)) => {
                        into.clear();
                        into.extend_from_slice(d);
                        return Ok(true);
                    }
                    Some((&CHANNEL_TCRP, _)) => {}
                    _ => return Err(io::Error::other("a message on no known channel")),
                },
                Some(Msg::Text(_)) => return Err(io::Error::other("a text message")),
                Some(Msg::Ping(p)) => pong = Some(p.to_vec()),
                Some(Msg::Close(code)) => {
                    self.closed = true;
                    return Err(io::Error::other(format!("session closed with {code}")));
                }
            }
            if let Some(p) = pong {
                let mask = self.masks.next_mask();
                ws::write_frame(&mut self.out, ws::Opcode::Pong, &p, mask);
                let _ = self.flush();
            }
        }
    }
}

/// Reads a web user's session: writes what is queued, then hands each datagram to `each`
/// (with the user, so its trackers see it). True when the session is read to the end for
/// now; false when there may be more (read it again soon).
pub fn read<U>(
    user: &mut U,
    link: impl Fn(&mut U) -> Option<&mut WebLink>,
    scratch: &mut Vec<u8>,
    mut each: impl FnMut(&mut U, &[u8]),
) -> io::Result<bool> {
    let Some(l) = link(user) else {
        return Ok(true);
    };
    let _ = l.flush();
    let drained = l.fill()?;
    while let Some(l) = link(user) {
        if !l.next_datagram(scratch)? {
            break;
        }
        each(user, scratch);
    }
    Ok(drained)
}

/// The web listener's address for `--web N` (None when N is 0): `--web-server`, else the
/// host of `--server` with the web listener's default port.
pub fn listener(args: &crate::cli::Args) -> Result<Option<SocketAddr>, String> {
    use std::net::ToSocketAddrs as _;
    if args.web == 0 {
        return Ok(None);
    }
    if args.tls || args.ca.is_some() {
        return Err("--web with --tls is not supported: web users speak plain ws://".into());
    }
    let text = match &args.web_server {
        Some(a) => a.clone(),
        None => {
            let host = ocm::client::control::host_of(&args.server);
            let port = ocm::server::web::DEFAULT_PORT;
            if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            }
        }
    };
    text.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .map(Some)
        .ok_or_else(|| format!("cannot resolve the web listener '{text}' (--web-server)"))
}

/// Opens a session on `web` and creates (`capacity` given) or joins `room` as `user` over
/// it; blocking, each wait bounded. The membership's `udp_addr` is the data plane's, as
/// over TCP, though this user never uses it.
pub fn open_member(
    web: SocketAddr,
    room: &str,
    user: &str,
    capacity: Option<u16>,
) -> Result<(Membership, WebLink), String> {
    let fail =
        |what: &str, e: &dyn std::fmt::Display| format!("web user '{user}' on {web}: {what}: {e}");
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let (mut s, mut input) = upgrade(web, deadline).map_err(|e| fail("upgrade", &e))?;
    let req = match capacity {
        Some(capacity) => Request::Create {
            room,
            user,
            password: b"",
            capacity,
            resume_key: None,
        },
        None => Request::Join {
            room,
            user,
            password: b"",
            resume_key: None,
        },
    };
    let mut masks = Masks::new();
    let grant = request_grant(&mut s, &mut input, &req, &mut masks, deadline)
        .map_err(|e| fail(if capacity.is_some() { "create" } else { "join" }, &e))?;
    let (token, udp_port, idle) = grant;
    let mut udp_addr = web;
    udp_addr.set_port(udp_port);
    let membership = Membership {
        room: room.to_string(),
        user: user.to_string(),
        token,
        udp_addr,
        idle_timeout: Duration::from_secs(u64::from(idle.max(1))),
        host: capacity.is_some(),
        server: web,
        password: Vec::new(),
        // None was sent: the bench never RESUMEs.
        resume_key: Vec::new(),
    };
    s.set_nonblocking(true)
        .map_err(|e| fail("nonblocking", &e))?;
    let mut link = WebLink::new(mio::net::TcpStream::from_std(s), input);
    link.masks = masks;
    Ok((membership, link))
}

/// Connects to `web` and upgrades to a session; returns it with the bytes read past the
/// answer's head.
fn upgrade(web: SocketAddr, deadline: Instant) -> Result<(TcpStream, Vec<u8>), String> {
    let mut s = TcpStream::connect_timeout(&web, SETUP_TIMEOUT).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let key = ws::new_key();
    let mut head = Vec::new();
    let accept = ws::request(&mut head, &web.to_string(), &key, None);
    s.write_all(&head).map_err(|e| e.to_string())?;
    let mut input = Vec::new();
    loop {
        let answer = ws::parse_answer(&input, &accept).map_err(|e| {
            let hint = match e {
                ws::WsError::Refused(503) => {
                    " (a connection limit: start the server with --max-connections-per-ip 0)"
                }
                _ => "",
            };
            format!("{e}{hint}")
        })?;
        if let Some(n) = answer {
            input.drain(..n);
            return Ok((s, input));
        }
        read_some(&mut s, &mut input, deadline).map_err(|e| e.to_string())?;
    }
}

/// Sends `req` on channel 1 and reads its RESPONSE and COMPLETE (other messages before
/// them are skipped); returns the grant's token, data-plane port and idle timeout.
fn request_grant(
    s: &mut TcpStream,
    input: &mut Vec<u8>,
    req: &Request<'_>,
    masks: &mut Masks,
    deadline: Instant,
) -> Result<(Vec<u8>, u16, u16), String> {
    let mut frame = Vec::new();
    req.encode(&mut frame).map_err(|e| e.to_string())?;
    let mut msg = Vec::new();
    ws::write_unit(&mut msg, CHANNEL_TCRP, &frame, masks.next_mask());
    s.write_all(&msg).map_err(|e| e.to_string())?;
    let mut reader = Reader::default();
    let mut replies: Vec<Vec<u8>> = Vec::new();
    while replies.len() < 2 {
        let Some((f, n)) = ws::parse(input).map_err(|e| e.to_string())? else {
            read_some(s, input, deadline).map_err(|e| e.to_string())?;
            continue;
        };
        let unit = match reader.feed(&f).map_err(|e| e.to_string())? {
            Some(Msg::Binary([CHANNEL_TCRP, unit @ ..])) => Some(unit.to_vec()),
            Some(Msg::Close(code)) => return Err(format!("session closed ({code})")),
            _ => None,
        };
        input.drain(..n);
        let Some(unit) = unit else { continue };
        let Ok(Some((reply, _))) = split_reply(&unit) else {
            return Err("not one TCRP frame".into());
        };
        let status = reply.payload.first().copied().and_then(Status::from_u8);
        if replies.is_empty() && status != Some(Status::Ok) {
            return Err(format!("answered {status:?}"));
        }
        replies.push(unit);
    }
    let Ok(Some((complete, _))) = split_reply(&replies[1]) else {
        return Err("no COMPLETE".into());
    };
    let grant = Grant::parse(complete.payload).ok_or("a bad grant")?;
    Ok((grant.token.to_vec(), grant.udp_port, grant.idle_timeout))
}

fn read_some(s: &mut TcpStream, into: &mut Vec<u8>, deadline: Instant) -> io::Result<()> {
    if Instant::now() >= deadline || into.len() > ws::MAX_SERVER_MESSAGE * 2 {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let mut chunk = [0u8; 4096];
    match s.read(&mut chunk)? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        n => {
            into.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// Latency of measured deliveries by the receiver's transport (recorded as well as the
/// run's overall latency).
pub struct KindLatency {
    udp: Histogram<u64>,
    web: Histogram<u64>,
}

impl KindLatency {
    /// Empty histograms.
    pub fn new() -> KindLatency {
        KindLatency {
            udp: stats::latency_histogram(),
            web: stats::latency_histogram(),
        }
    }

    /// One delivery of latency `ns` to a web member or a UDP member.
    pub fn record(&mut self, web: bool, ns: u64) {
        stats::record(if web { &mut self.web } else { &mut self.udp }, ns);
    }

    /// Adds another worker's.
    pub fn add(&mut self, o: &KindLatency) {
        // Same bounds everywhere, so adding cannot fail.
        let _ = self.udp.add(&o.udp);
        let _ = self.web.add(&o.web);
    }

    /// The step's figures, with `web_users` of `users` and its counters (None without web
    /// users).
    pub fn figures(&self, web_users: usize, users: usize, c: &Counters) -> Option<KindFigures> {
        (web_users > 0).then(|| KindFigures {
            web_users,
            users,
            udp: Percentiles::of(&self.udp),
            web: Percentiles::of(&self.web),
            expected_udp: c.expected.saturating_sub(c.expected_web),
            expected_web: c.expected_web,
            received_udp: c.received.saturating_sub(c.received_web),
            received_web: c.received_web,
        })
    }
}

impl Default for KindLatency {
    fn default() -> Self {
        KindLatency::new()
    }
}

/// The two kinds side by side: latency and deliveries of UDP members and of web members.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindFigures {
    /// Web users of the run.
    pub web_users: usize,
    /// All users of the run.
    pub users: usize,
    /// Latency of measured deliveries to UDP members.
    pub udp: Percentiles,
    /// Latency of measured deliveries to web members.
    pub web: Percentiles,
    /// Deliveries measured messages should make to UDP members, and to web members.
    pub expected_udp: u64,
    /// See `expected_udp`.
    pub expected_web: u64,
    /// Deliveries received by UDP members, and by web members.
    pub received_udp: u64,
    /// See `received_udp`.
    pub received_web: u64,
}

impl KindFigures {
    /// The table's lines for the two kinds.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "  By transport  {} UDP users, {} web users (WebSocket)",
            self.users - self.web_users,
            self.web_users
        );
        let _ = writeln!(
            t,
            "    {:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "kind", "expected", "received", "p50", "p90", "p99", "p99.9", "max"
        );
        for (name, p, e, r) in [
            ("udp", &self.udp, self.expected_udp, self.received_udp),
            ("web", &self.web, self.expected_web, self.received_web),
        ] {
            let _ = writeln!(
                t,
                "    {:>5} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
                name,
                e,
                r,
                fmt_us(p.at[0]),
                fmt_us(p.at[1]),
                fmt_us(p.at[2]),
                fmt_us(p.at[3]),
                fmt_us(p.max)
            );
        }
        t
    }

    /// Adds the per-kind figures to a report's JSON.
    pub fn json(&self, j: &mut Json) {
        j.int("web_users", self.web_users as u64);
        for (name, p, e, r) in [
            ("udp", &self.udp, self.expected_udp, self.received_udp),
            ("web", &self.web, self.expected_web, self.received_web),
        ] {
            j.int(&format!("{name}_expected"), e);
            j.int(&format!("{name}_received"), r);
            j.int(&format!("{name}_latency_samples"), p.count);
            for (q, v) in ["p50", "p90", "p99", "p999", "p9999"].iter().zip(p.at) {
                j.num(&format!("{name}_latency_{q}_us"), v);
            }
            j.num(&format!("{name}_latency_max_us"), p.max);
        }
    }
}

#[cfg(test)]
mod tests;
