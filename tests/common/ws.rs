//! A small raw WebSocket client for the web listener's tests (PROTOCOL.md §6), and a
//! server spawner that knows the web address: the handshake by hand, masked client frames,
//! server frames read whole. Blocking sockets with timeouts; every wait is bounded.
//! Included by a test crate beside `mod common;` as `#[path = "common/ws.rs"] mod ws;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ocm::protocol::frame::{Grant, Request, split_reply};
use ocm::protocol::{Operation, Status};

use crate::common::server_binary;

/// How long any single wait may last.
pub const WAIT: Duration = Duration::from_secs(5);

/// A running `ocm-server` with its web listener, killed when dropped.
pub struct WebServer {
    child: Child,
    /// Control plane.
    pub tcp: SocketAddr,
    /// Data plane.
    pub udp: SocketAddr,
    /// The web listener.
    pub web: SocketAddr,
    /// The metrics endpoint.
    pub metrics: SocketAddr,
}

impl WebServer {
    /// Starts the server on free ports (web and metrics included) with extra flags.
    pub fn start(extra: &[&str]) -> WebServer {
        let mut cmd = Command::new(server_binary());
        cmd.args(["--port", "0", "--metrics", "127.0.0.1:0"])
            .args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var_os("OCM_TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn ocm-server");
        let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        reader.read_line(&mut line).expect("listening line");
        let field = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .expect("address")
        };
        let (tcp, udp, web) = (field("tcp="), field("udp="), field("web="));
        let mut m = String::new();
        reader.read_line(&mut m).expect("metrics line");
        let metrics = m
            .trim()
            .strip_prefix("metrics http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("metrics line: {m:?}"))
            .parse()
            .expect("metrics address");
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        WebServer {
            child,
            tcp,
            udp,
            web,
            metrics,
        }
    }

    /// `host:port` of the web listener, as a browser's `Host` header says it.
    pub fn host(&self) -> String {
        self.web.to_string()
    }

    /// The page's own origin.
    pub fn origin(&self) -> String {
        format!("http://{}", self.web)
    }

    /// A value of the metrics endpoint (`name` with its labels), 0 when absent.
    pub fn metric(&self, sample: &str) -> f64 {
        let mut s = TcpStream::connect(self.metrics).expect("metrics");
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        text.lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("number"))
    }

    /// Whether the process is still up.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` (a raw HTTP head, maybe more) and reads the answer until the server
/// closes or `WAIT` passes; returns it as text (lossy).
pub fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

/// A `GET /ws` upgrade head, with extra header lines (each ending in `\r\n`).
pub fn upgrade_head(host: &str, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

/// What a server message was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// A binary message.
    Binary(Vec<u8>),
    /// A text message (the server never sends one).
    Text(Vec<u8>),
    /// A close frame with its code (0: none given).
    Close(u16),
    /// A pong and its payload.
    Pong(Vec<u8>),
    /// The connection ended without a close frame.
    Eof,
}

/// One WebSocket session.
pub struct Ws {
    stream: TcpStream,
    buf: Vec<u8>,
    mask_seed: u32,
}

impl Ws {
    /// Opens a session on `srv` with the page's own Origin.
    pub fn open(srv: &WebServer) -> Ws {
        Ws::open_with(srv.web, &format!("Origin: {}\r\n", srv.origin()))
            .expect("upgrade answered 101")
    }

    /// Opens a session with extra header lines; `Err` holds the answer's head otherwise.
    pub fn open_with(addr: SocketAddr, extra: &str) -> Result<Ws, String> {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
            mask_seed: 0x9e37_79b9,
        };
        ws.stream
            .write_all(upgrade_head(&addr.to_string(), extra).as_bytes())
            .unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&ws.buf[..end + 4]).into_owned();
                ws.buf.drain(..end + 4);
                if head.starts_with("HTTP/1.1 101 ") {
                    assert!(
                        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
                    );
                    return Ok(ws);
                }
                return Err(head);
            }
            assert!(Instant::now() < deadline, "no answer to the upgrade");
            if ws.fill() == 0 {
                return Err(String::from_utf8_lossy(&ws.buf).into_owned());
            }
        }
    }

    /// The underlying socket (to shrink its buffer, or leave it unread).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift: masks vary per frame, as a browser's do.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_be_bytes()
    }

    /// The bytes of one masked client frame.
    pub fn frame_bytes(&mut self, fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = self.next_mask();
        let mut out = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
        out
    }

    /// Writes raw bytes.
    pub fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let f = self.frame_bytes(fin, opcode, payload);
        self.write_raw(&f);
    }

    /// Sends one binary message: `channel`, then `unit`.
    pub fn send_unit(&mut self, channel: u8, unit: &[u8]) {
        let mut m = vec![channel];
        m.extend_from_slice(unit);
        self.send_frame(true, 2, &m);
    }

    /// The next server message, waiting at most `wait`; `None` when none came.
    pub fn recv_within(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some((msg, n)) = parse_server_frame(&self.buf) {
                self.buf.drain(..n);
                return Some(msg);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Some(Msg::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(_) => return Some(Msg::Eof),
            }
        }
    }

    /// The next server message (panics if none within [`WAIT`]).
    pub fn recv(&mut self) -> Msg {
        self.recv_within(WAIT).expect("a message from the server")
    }

    /// The next channel-2 unit (a server datagram), skipping nothing else: panics on any
    /// other message.
    pub fn recv_datagram_within(&mut self, wait: Duration) -> Option<Vec<u8>> {
        match self.recv_within(wait)? {
            Msg::Binary(m) if m.first() == Some(&2) => Some(m[1..].to_vec()),
            other => panic!("expected a datagram, got {other:?}"),
        }
    }

    /// Sends a TCRP request on channel 1 and reads its RESPONSE (and COMPLETE on OK for
    /// CREATE, JOIN, LIST): the status and the COMPLETE payload.
    pub fn request(&mut self, req: &Request<'_>) -> (Status, Vec<u8>) {
        let mut bytes = Vec::new();
        req.encode(&mut bytes).expect("encodable");
        self.send_unit(1, &bytes);
        let resp = self.recv_tcrp();
        let (frame, n) = split_reply(&resp).unwrap().unwrap();
        assert_eq!(n, resp.len(), "one frame per message");
        let status = Status::from_u8(frame.payload[0]).expect("a status");
        let op = req.operation();
        if status != Status::Ok || op == Operation::Leave {
            return (status, Vec::new());
        }
        let complete = self.recv_tcrp();
        let (frame, n) = split_reply(&complete).unwrap().unwrap();
        assert_eq!(n, complete.len(), "one frame per message");
        (status, frame.payload.to_vec())
    }

    /// The next channel-1 unit.
    pub fn recv_tcrp(&mut self) -> Vec<u8> {
        match self.recv() {
            Msg::Binary(m) if m.first() == Some(&1) => m[1..].to_vec(),
            other => panic!("expected a TCRP frame, got {other:?}"),
        }
    }

    /// Creates `room` as `user` over channel 1; returns the token.
    pub fn create(&mut self, room: &str, user: &str) -> Vec<u8> {
        let (status, payload) = self.request(&Request::Create {
            room,
            user,
            password: b"",
            capacity: 0,
            resume_key: None,
        });
        assert_eq!(status, Status::Ok, "create {room}");
        Grant::parse(&payload).expect("grant").token.to_vec()
    }

    /// Joins `room` as `user` over channel 1; returns the token.
    pub fn join(&mut self, room: &str, user: &str) -> Vec<u8> {
        let (status, payload) = self.request(&Request::Join {
            room,
            user,
            password: b"",
            resume_key: None,
        });
        assert_eq!(status, Status::Ok, "join {room}");
        Grant::parse(&payload).expect("grant").token.to_vec()
    }

    /// Reads until a close frame or the end; returns the close code (None: none came).
    pub fn close_code(&mut self) -> Option<u16> {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            match self.recv_within(WAIT)? {
                Msg::Close(code) => return Some(code),
                Msg::Eof => return None,
                _ => {}
            }
        }
        None
    }
}

/// Parses one server frame (unmasked, FIN) from the start of `buf`.
fn parse_server_frame(buf: &[u8]) -> Option<(Msg, usize)> {
    let [b0, b1, ..] = *buf else { return None };
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    assert_eq!(b0 & 0x70, 0, "no reserved bits");
    assert_ne!(b0 & 0x80, 0, "the server sends whole messages");
    let (len, at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes([*buf.get(2)?, *buf.get(3)?])),
            4,
        ),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(buf.get(2..10)?);
            (usize::try_from(u64::from_be_bytes(be)).unwrap(), 10)
        }
        n => (usize::from(n), 2),
    };
    let payload = buf.get(at..at + len)?.to_vec();
    let msg = match b0 & 0x0f {
        1 => Msg::Text(payload),
        2 => Msg::Binary(payload),
        8 => Msg::Close(match payload[..] {
            [a, b, ..] => u16::from_be_bytes([a, b]),
            _ => 0,
        }),
        10 => Msg::Pong(payload),
        op => panic!("unexpected opcode {op}"),
    };
    Some((msg, at + len))
}
