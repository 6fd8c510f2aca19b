//! Helpers for whole-process tests: start the real `ocm-server` on free ports, speak to it
//! over real sockets on 127.0.0.1, and stop it; run other binaries with bounded waits.
//!
//! Shared by the `ocm` package's tests (`mod common;`) and by `bench-client`'s
//! (`#[path = "../../tests/common/mod.rs"] mod common;`): one file, compiled into each test
//! crate, so there is one server spawner and one way to wait for a process. Nothing here
//! may need a crate that `bench-client` does not depend on (so the lossy proxy, which needs
//! `rand`, is `lossy.rs`, included on its own).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ocm::client::ControlError;
use ocm::client::control::{ControlClient, Membership};
use ocm::protocol::datagram::ChatDatagram;
use ocm::protocol::event::{EventKind, Events};
use ocm::protocol::frame::{Request, split_reply};
use ocm::protocol::{MAX_DATAGRAM, Status};

/// A running `ocm-server`, killed when dropped.
pub struct ServerProc {
    child: Child,
    /// Control-plane address.
    pub tcp: SocketAddr,
    /// Data-plane address.
    pub udp: SocketAddr,
    /// Metrics endpoint, when started with `--metrics`.
    pub metrics: Option<SocketAddr>,
}

impl ServerProc {
    /// Starts the server on free ports with extra flags.
    pub fn start(extra: &[&str]) -> ServerProc {
        let mut cmd = Command::new(server_binary());
        cmd.args(["--port", "0"]).args(extra);
        cmd.stdin(Stdio::null()).stdout(Stdio::piped());
        if std::env::var_os("OCM_TEST_LOG").is_some() {
            cmd.stderr(Stdio::inherit());
        } else {
            cmd.stderr(Stdio::null());
        }
        let mut child = cmd.spawn().expect("spawn ocm-server");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        let mut reader = BufReader::new(stdout);
        reader.read_line(&mut line).expect("read listening line");
        let parse = |key: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or_else(|| panic!("no {key} in {line:?}"))
                .parse()
                .expect("address")
        };
        assert!(line.starts_with("listening "), "first line: {line:?}");
        let (tcp, udp) = (parse("tcp="), parse("udp="));
        let metrics = extra.contains(&"--metrics").then(|| {
            let mut l = String::new();
            reader.read_line(&mut l).expect("read metrics line");
            l.trim()
                .strip_prefix("metrics http://")
                .and_then(|a| a.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("second line: {l:?}"))
                .parse()
                .expect("metrics address")
        });
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
        ServerProc {
            child,
            tcp,
            udp,
            metrics,
        }
    }

    /// The control-plane address as `host:port`.
    pub fn addr(&self) -> String {
        self.tcp.to_string()
    }

    /// A control-plane connection.
    pub fn control(&self) -> ControlClient {
        self.control_via(self.tcp.ip()).expect("connect")
    }

    /// A control-plane connection to the server's port at `ip` (another loopback address
    /// of a wildcard bind, say).
    pub fn control_via(&self, ip: IpAddr) -> Result<ControlClient, ControlError> {
        let addr = SocketAddr::new(ip, self.tcp.port());
        ControlClient::connect(&addr.to_string(), Duration::from_secs(5))
    }

    /// Creates a room and binds its host's data-plane socket (JOINED seen).
    pub fn host(&self, room: &str, user: &str) -> Member {
        let m = self.control().create(room, user, b"", 0).expect("create");
        Member::bind(m)
    }

    /// Joins a room and binds (own JOINED seen).
    pub fn member(&self, room: &str, user: &str) -> Member {
        let m = self.control().join(room, user, b"").expect("join");
        Member::bind(m)
    }

    /// A room of `users`: the first creates it, the others join one by one, and every
    /// member already in sees each newcomer's JOINED before the next one joins. So when it
    /// returns, everyone is bound and no JOINED is left pending.
    pub fn room<const N: usize>(&self, room: &str, users: [&str; N]) -> [Member; N] {
        let mut members: Vec<Member> = Vec::with_capacity(N);
        for (i, user) in users.iter().enumerate() {
            let m = if i == 0 {
                self.host(room, user)
            } else {
                self.member(room, user)
            };
            for earlier in &members {
                earlier.wait_for(|e| e.is(EventKind::Joined, user));
            }
            members.push(m);
        }
        members
            .try_into()
            .unwrap_or_else(|_| unreachable!("one member per name"))
    }

    /// Scrapes `/metrics` over a raw socket; returns the body.
    pub fn scrape(&self) -> String {
        let addr = self.metrics.expect("started with --metrics");
        let (got, closed) = raw_exchange(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n",
            Duration::from_secs(5),
        );
        assert!(closed, "the server closes after the reply");
        let text = String::from_utf8(got).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        body.to_string()
    }

    /// The value of one sample (`name` with its labels, as written) in a scrape.
    pub fn metric(&self, sample: &str) -> f64 {
        let body = self.scrape();
        body.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {sample} in:\n{body}"))
            .parse()
            .expect("a number")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the server.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (bounded) for the server to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An event copied out of a datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub kind: u8,
    pub seq: u32,
    pub user: String,
    pub body: String,
}

impl Ev {
    pub fn is(&self, kind: EventKind, user: &str) -> bool {
        self.kind == kind as u8 && self.user == user
    }
}

/// A member's data-plane socket, connected to the server.
pub struct Member {
    pub m: Membership,
    pub sock: UdpSocket,
    /// Events received but not yet looked at (a datagram may hold several).
    pub pending: std::cell::RefCell<std::collections::VecDeque<Ev>>,
}

impl Member {
    /// Opens a socket, sends the first heartbeat and waits for our own JOINED.
    pub fn bind(m: Membership) -> Member {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        sock.connect(m.udp_addr).expect("connect udp");
        let me = Member::with_socket(m, sock);
        me.heartbeat();
        let user = me.m.user.clone();
        me.wait_for(|e| e.is(EventKind::Joined, &user));
        me
    }

    /// Wraps an existing socket (already connected, or not).
    pub fn with_socket(m: Membership, sock: UdpSocket) -> Member {
        Member {
            m,
            sock,
            pending: Default::default(),
        }
    }

    pub fn datagram(&self, msg: &str) -> Vec<u8> {
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = ChatDatagram {
            room: self.m.room.as_bytes(),
            token: &self.m.token,
            message: msg,
        }
        .encode(&mut buf)
        .expect("encode");
        buf[..n].to_vec()
    }

    pub fn heartbeat(&self) {
        self.send("");
    }

    pub fn send(&self, msg: &str) {
        self.sock.send(&self.datagram(msg)).expect("send");
    }

    /// Every event of every datagram that arrives within `wait`.
    pub fn recv_for(&self, wait: Duration) -> Vec<Ev> {
        let end = Instant::now() + wait;
        let mut out: Vec<Ev> = self.pending.borrow_mut().drain(..).collect();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.recv_datagram(left) {
                Some(events) => out.extend(events),
                None => break,
            }
        }
        out
    }

    /// One datagram's events, or `None` if nothing arrives within `wait`.
    pub fn recv_datagram(&self, wait: Duration) -> Option<Vec<Ev>> {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 65536];
        let n = self.sock.recv(&mut buf).ok()?;
        Some(
            Events::new(&buf[..n])
                .map(|e| {
                    let e = e.expect("well-formed event");
                    Ev {
                        kind: e.kind,
                        seq: e.seq,
                        user: e.user.to_string(),
                        body: e.body.to_string(),
                    }
                })
                .collect(),
        )
    }

    /// Reads events until one matches (5 s at most); returns it.
    pub fn wait_for(&self, pred: impl Fn(&Ev) -> bool) -> Ev {
        let end = Instant::now() + Duration::from_secs(5);
        let mut seen = Vec::new();
        loop {
            while let Some(e) = self.pending.borrow_mut().pop_front() {
                if pred(&e) {
                    return e;
                }
                seen.push(e);
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                break;
            };
            if let Some(events) = self.recv_datagram(left) {
                self.pending.borrow_mut().extend(events);
            }
        }
        panic!("{}: expected event not seen; saw {seen:?}", self.m.user);
    }

    /// Asserts that nothing arrives within `wait`.
    pub fn expect_silence(&self, wait: Duration) {
        let pending = self.pending.borrow();
        assert!(
            pending.is_empty(),
            "{}: expected silence, had {pending:?}",
            self.m.user
        );
        if let Some(events) = self.recv_datagram(wait) {
            panic!("{}: expected silence, got {events:?}", self.m.user);
        }
    }
}

/// A datagram with any bytes as its message (for invalid ones).
pub fn raw_datagram(room: &[u8], token: &[u8], message: &[u8]) -> Vec<u8> {
    let mut d = vec![room.len() as u8, token.len() as u8];
    d.extend_from_slice(room);
    d.extend_from_slice(token);
    d.extend_from_slice(message);
    d
}

/// A fresh connection to `addr` with `bytes` written on it.
pub fn connect_and_write(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(bytes).expect("write");
    s
}

/// Sends raw bytes on a fresh connection and reads what comes back until the server
/// closes or `wait` passes.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> (Vec<u8>, bool) {
    read_until_close(&mut connect_and_write(addr, bytes), wait)
}

/// The request bytes of a CREATE without password or capacity.
pub fn create_request(room: &str, user: &str) -> Vec<u8> {
    request(&Request::Create {
        room,
        user,
        password: b"",
        capacity: 0,
        resume_key: None,
    })
}

/// Reads until EOF (returns true) or until `wait` passes (false).
pub fn read_until_close(s: &mut TcpStream, wait: Duration) -> (Vec<u8>, bool) {
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (got, true),
            Err(_) => break,
        }
    }
    (got, false)
}

/// Reads exactly one reply frame from `s` (5 s at most); returns (op, state, room, payload).
pub fn read_frame(s: &mut TcpStream) -> (u8, u8, Vec<u8>, Vec<u8>) {
    let end = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    loop {
        if let Some((f, n)) = split_reply(&got).expect("frame") {
            let out = (f.op, f.state, f.room.to_vec(), f.payload.to_vec());
            assert_eq!(n, got.len(), "one frame at a time in this helper");
            return out;
        }
        let left = end
            .checked_duration_since(Instant::now())
            .expect("reply in time");
        s.set_read_timeout(Some(left)).unwrap();
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => got.push(b[0]),
            other => panic!("reading a frame: {other:?} after {got:?}"),
        }
    }
}

/// Encodes a request.
pub fn request(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(&mut out).expect("encode");
    out
}

/// The status a refused control call got.
pub fn status_of<T: std::fmt::Debug>(r: Result<T, ocm::client::ControlError>) -> Status {
    r.expect_err("expected a refusal")
        .status()
        .expect("a status answer")
}

/// `127.0.0.1:port` with a port nothing listens on (bound, noted, freed), for "cannot
/// reach the server" tests.
pub fn unused_tcp_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("127.0.0.1:{port}")
}

/// Where the `ocm-server` binary is. In the `ocm` package's own tests Cargo says
/// (`CARGO_BIN_EXE_ocm-server`). Another package's tests (bench-client's) get no such
/// variable, so it is, in order: `$OCM_SERVER_BIN`; next to the running test's profile
/// directory (`cargo test --workspace` builds it there, for the `ocm` package's tests);
/// else built with `cargo build -p ocm --bin ocm-server` into a target directory of its own
/// (so as not to wait on the lock of the running build).
pub fn server_binary() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ocm-server") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("OCM_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe_name = format!("ocm-server{}", std::env::consts::EXE_SUFFIX);
    // .../target/<profile>/deps/<test>-<hash>: the server is in .../target/<profile>/.
    let profile_dir = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.to_path_buf()));
    if let Some(candidate) = profile_dir.as_ref().map(|d| d.join(&exe_name))
        && candidate.is_file()
    {
        return candidate;
    }
    let target = profile_dir
        .as_deref()
        .and_then(Path::parent)
        .map(|t| t.join("test-server"))
        .unwrap_or_else(|| std::env::temp_dir().join("ocm-test-server"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // Any directory of the workspace will do for cargo to find it.
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "ocm", "--bin", "ocm-server"])
        .arg("--target-dir")
        .arg(&target)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo to build ocm-server");
    assert!(status.success(), "building ocm-server failed");
    target.join("debug").join(exe_name)
}

/// Starts `bin` with `args`, stdout and stderr piped; stdin piped too when `stdin` (to
/// type into it), else empty.
pub fn spawn_piped(bin: &Path, args: &[&str], stdin: bool) -> Child {
    Command::new(bin)
        .args(args)
        .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// How long a finished process's output pipes may take to be read to their end.
pub const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// Runs `bin` with `args` to its end, killing it and failing the test if it outlives
/// `limit`; returns whether it succeeded, its stdout and its stderr.
pub fn run_to_end(bin: &Path, args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = spawn_piped(bin, args, false);
    let mut out = Captured::stdout(&mut child);
    let mut err = Captured::stderr(&mut child);
    let Some(status) = wait_exit(&mut child, limit) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} did not finish within {limit:?}", bin.display());
    };
    (
        status.success(),
        out.finish(PIPE_DRAIN),
        err.finish(PIPE_DRAIN),
    )
}

/// Waits (bounded) for `child` to exit; `None` if it is still running after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child's output pipe, read to its end on a thread of its own (so the child never
/// blocks on a full pipe) into text that can be looked at while it grows.
pub struct Captured {
    text: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Captured {
    /// Starts reading `pipe`.
    pub fn spawn(mut pipe: impl Read + Send + 'static) -> Captured {
        let text = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&text);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    return;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Captured {
            text,
            reader: Some(reader),
        }
    }

    /// A child's stdout.
    pub fn stdout(child: &mut Child) -> Captured {
        let pipe: ChildStdout = child.stdout.take().expect("stdout piped");
        Captured::spawn(pipe)
    }

    /// A child's stderr.
    pub fn stderr(child: &mut Child) -> Captured {
        let pipe: ChildStderr = child.stderr.take().expect("stderr piped");
        Captured::spawn(pipe)
    }

    /// What has been read so far.
    pub fn text(&self) -> String {
        self.text.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits (up to `limit`) for the pipe to close, then returns all that was read.
    pub fn finish(&mut self, limit: Duration) -> String {
        let end = Instant::now() + limit;
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        if self.reader.as_ref().is_some_and(JoinHandle::is_finished) {
            let _ = self.reader.take().map(JoinHandle::join);
        }
        self.text()
    }
}
