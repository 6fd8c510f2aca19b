//! The client side of TCRP: create, join, leave and list over a blocking TCP connection,
//! plain or TLS (PROTOCOL.md §6: a server with `--tls-cert` speaks TLS only).
//!
//! Every connect, read and write has a timeout, and every failure is a [`ControlError`]
//! that says what a person can do about it. TLS ([`Tls`]) is a blocking
//! `rustls::StreamOwned` over the same `TcpStream`; a certificate that does not verify is
//! an error naming why, never a fall-back to plain text. Only the control plane is
//! encrypted: the data plane stays UDP, in clear.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rand::Rng;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::protocol::frame::{
    Frame, Grant, InvalidField, Request, parse_list, parse_status, split_reply,
};
use crate::protocol::{Operation, State, Status};

mod tls;
use tls::{PROCESS_TLS, Stream, handshake};
pub use tls::{Tls, TlsSetupError, host_of, use_tls};

/// How long connect and each reply may take unless the caller says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Length of the resume key CREATE and JOIN send (PROTOCOL.md §1.3 allows 16..=64): 256
/// bits from the OS's CSPRNG, so only this client can move its membership with RESUME.
pub const RESUME_KEY_LEN: usize = 32;

/// A fresh resume key, drawn from `rand::rng()` (a CSPRNG seeded by the OS).
pub fn new_resume_key() -> Vec<u8> {
    let mut key = vec![0u8; RESUME_KEY_LEN];
    rand::rng().fill_bytes(&mut key);
    key
}

/// What CREATE or JOIN gave us: everything a chat session needs, including what it takes
/// to come back (RESUME with the key, or JOIN again with the password).
///
/// `Debug` leaves the secrets out (token, password, resume key), so a log line never
/// carries them.
#[derive(Clone, PartialEq, Eq)]
pub struct Membership {
    /// The room joined.
    pub room: String,
    /// Our user name in it.
    pub user: String,
    /// The token that proves membership (bound to our IP address).
    pub token: Vec<u8>,
    /// Where to send datagrams: the TCP peer's address with the data-plane port.
    pub udp_addr: SocketAddr,
    /// Silence after which the server drops us.
    pub idle_timeout: Duration,
    /// Whether we created the room (our LEAVE closes it).
    pub host: bool,
    /// The control-plane address used.
    pub server: SocketAddr,
    /// The password the room was entered with (a JOIN again needs it).
    pub password: Vec<u8>,
    /// The resume key sent with CREATE or JOIN (empty when none was sent); RESUME shows it.
    pub resume_key: Vec<u8>,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("room", &self.room)
            .field("user", &self.user)
            .field("token", &format_args!("<{} bytes>", self.token.len()))
            .field("udp_addr", &self.udp_addr)
            .field("idle_timeout", &self.idle_timeout)
            .field("host", &self.host)
            .field("server", &self.server)
            .field("password", &format_args!("<{} bytes>", self.password.len()))
            .field(
                "resume_key",
                &format_args!("<{} bytes>", self.resume_key.len()),
            )
            .finish()
    }
}

/// One room as LIST reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomInfo {
    /// Room name.
    pub name: String,
    /// Members, bound or not.
    pub members: u16,
    /// Effective capacity.
    pub capacity: u16,
    /// Whether a password is needed.
    pub password: bool,
}

/// Why a control-plane call failed.
#[derive(Debug)]
pub enum ControlError {
    /// No server answered at that address.
    Connect {
        /// The address tried.
        addr: String,
        /// What the OS said.
        source: io::Error,
    },
    /// The server name did not resolve.
    Resolve(String),
    /// Reading or writing failed.
    Io(io::Error),
    /// The server did not answer in time.
    Timeout,
    /// The server closed the connection before its reply was complete.
    Closed,
    /// The reply broke the protocol.
    Malformed(&'static str),
    /// The server refused the request.
    Refused {
        /// The status it answered.
        status: Status,
        /// The operation refused.
        op: Operation,
        /// The room it was about.
        room: String,
    },
    /// The request cannot be sent as asked (a name too long, say).
    Invalid(InvalidField),
    /// TLS: the server's certificate did not verify.
    Untrusted {
        /// The name it was checked against.
        name: String,
        /// What was wrong with it.
        why: CertificateError,
    },
    /// TLS failed otherwise (the server does not speak TLS, say).
    Tls(rustls::Error),
    /// A plain connection got a TLS record back: the server speaks TLS only.
    TlsRequired,
}

impl ControlError {
    /// The status the server answered, if it refused.
    pub fn status(&self) -> Option<Status> {
        match self {
            ControlError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::Connect { addr, source } => write!(
                f,
                "cannot reach an OCM server at {addr} ({source}); is `ocm-server` running there?"
            ),
            ControlError::Resolve(addr) => write!(f, "cannot resolve server address '{addr}'"),
            ControlError::Io(e) => write!(f, "connection to the server failed: {e}"),
            ControlError::Timeout => f.write_str("the server did not answer in time"),
            ControlError::Closed => f.write_str("the server closed the connection mid-reply"),
            ControlError::Malformed(what) => write!(f, "malformed reply from the server: {what}"),
            ControlError::Invalid(e) => write!(f, "cannot send that request: {e}"),
            ControlError::Untrusted { name, why } => untrusted(f, name, why),
            ControlError::TlsRequired => f.write_str(
                "the server speaks TLS only; connect with --tls (and --ca FILE for a private CA)",
            ),
            ControlError::Tls(e) => write!(
                f,
                "TLS with the server failed ({e}); does it speak TLS (ocm-server --tls-cert)?"
            ),
            ControlError::Refused { status, op, room } => match status {
                Status::RoomExists => write!(f, "room '{room}' already exists"),
                Status::RoomNotFound => write!(f, "room '{room}' does not exist"),
                Status::RoomFull => write!(f, "room '{room}' is full"),
                Status::BadPassword => write!(f, "wrong password for room '{room}'"),
                Status::NameTaken => write!(f, "that user name is already taken in room '{room}'"),
                Status::InvalidRequest => write!(
                    f,
                    "the server refused the {} request as invalid (names must be 1-255 bytes of text)",
                    op.name()
                ),
                Status::ServerFull => f.write_str(
                    "the server is full (a room, member or connection limit); try later",
                ),
                Status::Unauthorized => write!(f, "not a member of room '{room}' (token refused)"),
                Status::TooManyRequests => f.write_str(
                    "too many failed attempts from this address; wait a minute and try again",
                ),
                Status::Ok => f.write_str("ok"),
            },
        }
    }
}

/// Says why a certificate was refused, with what to do about it.
fn untrusted(f: &mut fmt::Formatter<'_>, name: &str, why: &CertificateError) -> fmt::Result {
    let hint = match why {
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "; pass --ca FILE for a private CA"
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "; name the server in --server as its certificate does"
        }
        _ => "",
    };
    // The variant's name says it best ("UnknownIssuer"); its details follow in Display.
    let debug = format!("{why:?}");
    let short = debug.split([' ', '{', '(']).next().unwrap_or("");
    let detail = why.to_string();
    write!(
        f,
        "the server's certificate is not trusted for {name}: {short}"
    )?;
    if detail != short {
        write!(f, " ({detail})")?;
    }
    f.write_str(hint)
}

impl std::error::Error for ControlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ControlError::Connect { source, .. } => Some(source),
            ControlError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ControlError {
    fn from(e: io::Error) -> Self {
        // rustls reports through io::Error (InvalidData) in a blocking stream.
        if let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            return ControlError::Tls(tls.clone());
        }
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => ControlError::Timeout,
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe => ControlError::Closed,
            _ => ControlError::Io(e),
        }
    }
}

/// Sets a connected stream's timeouts and options; returns the server's address.
fn prepare(stream: &TcpStream, timeout: Duration) -> Result<SocketAddr, ControlError> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream.peer_addr()?)
}

/// A TCRP connection to one server. Requests on it are answered in order.
#[derive(Debug)]
pub struct ControlClient {
    stream: Stream,
    server: SocketAddr,
    timeout: Duration,
    buf: Vec<u8>,
}

impl ControlClient {
    /// Connects to `addr` (host:port), trying each resolved address within `timeout`;
    /// over TLS if this process chose it ([`use_tls`]).
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self, ControlError> {
        Self::connect_with(addr, timeout, PROCESS_TLS.get())
    }

    /// Connects to `addr` over TLS with `tls`, or plain TCP with `None`.
    pub fn connect_with(
        addr: &str,
        timeout: Duration,
        tls: Option<&Tls>,
    ) -> Result<Self, ControlError> {
        let tcp = Self::dial(addr, timeout)?;
        let server = prepare(&tcp, timeout)?;
        let stream = match tls {
            Some(tls) => Stream::Tls(Box::new(handshake(tcp, tls, addr)?)),
            None => Stream::Plain(tcp),
        };
        Ok(Self::over(stream, server, timeout))
    }

    fn dial(addr: &str, timeout: Duration) -> Result<TcpStream, ControlError> {
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|_| ControlError::Resolve(addr.to_string()))?
            .collect();
        let mut last = None;
        for a in &addrs {
            match TcpStream::connect_timeout(a, timeout) {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(ControlError::Connect {
            addr: addr.to_string(),
            source: last.unwrap_or_else(|| io::Error::other("no address")),
        })
    }

    /// Wraps an already connected stream.
    pub fn from_stream(stream: TcpStream, timeout: Duration) -> Result<Self, ControlError> {
        let server = prepare(&stream, timeout)?;
        Ok(Self::over(Stream::Plain(stream), server, timeout))
    }

    fn over(stream: Stream, server: SocketAddr, timeout: Duration) -> Self {
        ControlClient {
            stream,
            server,
            timeout,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Whether the connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    /// The server's control-plane address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// Creates `room` with us as host. `capacity` 0 asks for the server's default. Sends a
    /// fresh resume key (kept in the [`Membership`]) so that the session can RESUME.
    pub fn create(
        &mut self,
        room: &str,
        user: &str,
        password: &[u8],
        capacity: u16,
    ) -> Result<Membership, ControlError> {
        let key = new_resume_key();
        let req = Request::Create {
            room,
            user,
            password,
            capacity,
            resume_key: Some(&key),
        };
        self.grant(&req, user, true, password, &key)
    }

    /// Joins `room` as `user`, with a fresh resume key (kept in the [`Membership`]).
    pub fn join(
        &mut self,
        room: &str,
        user: &str,
        password: &[u8],
    ) -> Result<Membership, ControlError> {
        let key = new_resume_key();
        let req = Request::Join {
            room,
            user,
            password,
            resume_key: Some(&key),
        };
        self.grant(&req, user, false, password, &key)
    }

    /// (v1.1, PROTOCOL.md §5.5) Moves `membership` to the address of this connection: the
    /// server unpins its data-plane address, and the next datagram from this IP pins the new
    /// one. Returns the membership as the COMPLETE frame gives it (same token; the UDP port
    /// and idle timeout as the server says now). Needs the resume key sent at CREATE or
    /// JOIN: without one this is [`ControlError::Refused`] with UNAUTHORIZED, as the server
    /// would say.
    pub fn resume(&mut self, membership: &Membership) -> Result<Membership, ControlError> {
        if membership.resume_key.is_empty() {
            return Err(ControlError::Refused {
                status: Status::Unauthorized,
                op: Operation::Resume,
                room: membership.room.clone(),
            });
        }
        let req = Request::Resume {
            room: &membership.room,
            token: &membership.token,
            resume_key: &membership.resume_key,
        };
        let m = self.grant(
            &req,
            &membership.user,
            membership.host,
            &membership.password,
            &membership.resume_key,
        )?;
        if m.token != membership.token {
            return Err(ControlError::Malformed("RESUME granted another token"));
        }
        Ok(m)
    }

    /// Leaves `room`; must come from the IP address the token was issued to.
    pub fn leave(&mut self, room: &str, token: &[u8]) -> Result<(), ControlError> {
        self.send(&Request::Leave { room, token })?;
        self.expect_ok(Operation::Leave, room)?;
        Ok(())
    }

    /// Lists the rooms, in byte order of name (as many as fit in one reply).
    pub fn list(&mut self) -> Result<Vec<RoomInfo>, ControlError> {
        self.send(&Request::List)?;
        self.expect_ok(Operation::List, "")?;
        let frame = self.read_frame()?;
        check_complete(&frame, Operation::List)?;
        let rooms = parse_list(&frame.payload).ok_or(ControlError::Malformed("LIST payload"))?;
        Ok(rooms
            .into_iter()
            .map(|r| RoomInfo {
                name: r.name.to_string(),
                members: r.members,
                capacity: r.capacity,
                password: r.password,
            })
            .collect())
    }

    fn grant(
        &mut self,
        req: &Request,
        user: &str,
        host: bool,
        password: &[u8],
        resume_key: &[u8],
    ) -> Result<Membership, ControlError> {
        let op = req.operation();
        let room = req.room();
        self.send(req)?;
        self.expect_ok(op, room)?;
        let frame = self.read_frame()?;
        check_complete(&frame, op)?;
        let grant =
            Grant::parse(&frame.payload).ok_or(ControlError::Malformed("COMPLETE payload"))?;
        let mut udp_addr = self.server;
        udp_addr.set_port(grant.udp_port);
        Ok(Membership {
            room: room.to_string(),
            user: user.to_string(),
            token: grant.token.to_vec(),
            udp_addr,
            idle_timeout: Duration::from_secs(u64::from(grant.idle_timeout.max(1))),
            host,
            server: self.server,
            password: password.to_vec(),
            resume_key: resume_key.to_vec(),
        })
    }

    fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let mut out = Vec::with_capacity(64);
        req.encode(&mut out).map_err(ControlError::Invalid)?;
        self.stream.write_all(&out)?;
        self.stream.flush()?;
        Ok(())
    }

    fn expect_ok(&mut self, op: Operation, room: &str) -> Result<(), ControlError> {
        let frame = self.read_frame()?;
        let status =
            parse_status(&frame.as_frame()).ok_or(ControlError::Malformed("RESPONSE frame"))?;
        if frame.op != 0 && frame.op != op as u8 {
            return Err(ControlError::Malformed("RESPONSE for another operation"));
        }
        match status {
            Status::Ok => Ok(()),
            status => Err(ControlError::Refused {
                status,
                op,
                room: room.to_string(),
            }),
        }
    }

    /// Reads one reply frame; the returned frame is an owned copy of it.
    fn read_frame(&mut self) -> Result<OwnedFrame, ControlError> {
        let deadline = Instant::now() + self.timeout;
        loop {
            match split_reply(&self.buf) {
                Ok(Some((frame, n))) => {
                    let owned = OwnedFrame::from(&frame);
                    self.buf.drain(..n);
                    return Ok(owned);
                }
                Ok(None) => {}
                Err(_) => return Err(ControlError::Malformed("reply payload too large")),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ControlError::Timeout);
            }
            self.stream.tcp().set_read_timeout(Some(left))?;
            let mut chunk = [0u8; 4096];
            let n = match self.stream.read(&mut chunk) {
                Ok(0) if self.looks_like_tls() => return Err(ControlError::TlsRequired),
                Ok(0) => return Err(ControlError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl ControlClient {
    /// Whether a plain connection got the start of a TLS record (an alert or a
    /// handshake, content type 21 or 22, version 3.x) instead of a reply.
    fn looks_like_tls(&self) -> bool {
        matches!(self.stream, Stream::Plain(_)) && matches!(self.buf[..], [21 | 22, 3, ..])
    }
}

/// A reply frame copied out of the receive buffer (replies are small and rare).
#[derive(Debug)]
struct OwnedFrame {
    op: u8,
    state: u8,
    room: Vec<u8>,
    payload: Vec<u8>,
}

impl OwnedFrame {
    fn as_frame(&self) -> Frame<'_> {
        Frame {
            op: self.op,
            state: self.state,
            room: &self.room,
            payload: &self.payload,
        }
    }
}

impl From<&Frame<'_>> for OwnedFrame {
    fn from(f: &Frame<'_>) -> Self {
        OwnedFrame {
            op: f.op,
            state: f.state,
            room: f.room.to_vec(),
            payload: f.payload.to_vec(),
        }
    }
}

fn check_complete(frame: &OwnedFrame, op: Operation) -> Result<(), ControlError> {
    let f = frame.as_frame();
    if f.state != State::Complete as u8 || f.op != op as u8 {
        return Err(ControlError::Malformed("expected a COMPLETE frame"));
    }
    Ok(())
}

/// Connects, creates `room`, and closes the connection (membership does not need it).
pub fn create(
    server: &str,
    room: &str,
    user: &str,
    password: &[u8],
    capacity: u16,
) -> Result<Membership, ControlError> {
    ControlClient::connect(server, DEFAULT_TIMEOUT)?.create(room, user, password, capacity)
}

/// Connects, joins `room`, and closes the connection.
pub fn join(
    server: &str,
    room: &str,
    user: &str,
    password: &[u8],
) -> Result<Membership, ControlError> {
    ControlClient::connect(server, DEFAULT_TIMEOUT)?.join(room, user, password)
}

/// Connects and leaves the room of `membership`.
pub fn leave(membership: &Membership) -> Result<(), ControlError> {
    let mut c = ControlClient::connect(&membership.server.to_string(), DEFAULT_TIMEOUT)?;
    c.leave(&membership.room, &membership.token)
}

/// Connects to the server of `membership` (at most `timeout` for the connect and each
/// reply) and RESUMEs it from this host's current address (PROTOCOL.md §5.5).
pub fn resume(membership: &Membership, timeout: Duration) -> Result<Membership, ControlError> {
    ControlClient::connect(&membership.server.to_string(), timeout)?.resume(membership)
}

/// Connects to the server of `membership` and JOINs its room again under the same name
/// and password, with a fresh resume key: after the server dropped the member (TIMED_OUT)
/// or refused its RESUME.
pub fn join_again(membership: &Membership, timeout: Duration) -> Result<Membership, ControlError> {
    ControlClient::connect(&membership.server.to_string(), timeout)?.join(
        &membership.room,
        &membership.user,
        &membership.password,
    )
}

/// Connects and lists the rooms.
pub fn list(server: &str) -> Result<Vec<RoomInfo>, ControlError> {
    ControlClient::connect(server, DEFAULT_TIMEOUT)?.list()
}

#[cfg(test)]
mod tests;
