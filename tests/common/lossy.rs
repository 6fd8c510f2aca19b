//! A seeded lossy UDP path for whole-process tests: it sits between real clients and the
//! real server on loopback and drops, duplicates, reorders and "rebinds" datagrams, so the
//! recovery paths (SEND, NACK, SYNC, RESUME) meet real loss instead of a model of it.
//!
//! ```text
//!  client A ──┐                       ┌── upstream socket A ──┐
//!             ├─▶ proxy.addr() ──────┤                        ├─▶ server
//!  client B ──┘   (127.0.0.1:0)       └── upstream socket B ──┘
//! ```
//!
//! Each client source address gets its own upstream socket, so the server sees one address
//! per client, as behind a NAT. [`LossyProxy::rebind_all`] (or [`Config::rebind_after`])
//! swaps a client's upstream socket for one on a new port mid-session, as a NAT does when
//! its mapping expires: the server then sees the same client from a new source port, and
//! what it sends to the old port is lost.
//!
//! Every decision comes from a seeded RNG, one per direction, so a failing run can be
//! replayed with its seed. The proxy runs on its own thread and stops when dropped; it
//! counts what it did ([`Stats`]) so tests can assert that the path really was lossy.
//!
//! Include it with `#[path = "common/lossy.rs"] mod lossy;`: it is kept out of
//! `common/mod.rs` because it needs `rand`, which `bench-client`'s tests (which share
//! `common/mod.rs`) do not have.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The socket clients send to.
const LISTEN: Token = Token(0);
/// Wakes the thread for a stop or a rebind request.
const WAKE: Token = Token(1);
/// Client `i`'s upstream socket is `Token(FIRST_PATH + i)`.
const FIRST_PATH: usize = 2;
/// More clients than any test uses; datagrams from further ones are dropped and counted.
const MAX_CLIENTS: usize = 1024;
/// How often the thread looks at the stop flag even when nothing wakes it.
const TICK: Duration = Duration::from_millis(20);
/// The largest UDP payload.
const MAX_DATAGRAM: usize = 65_536;
/// How long `rebind_all` waits for the thread to do it before the test fails.
const REBIND_WAIT: Duration = Duration::from_secs(5);
/// Most bytes [`LossyProxy::capture`] records (the tests that capture move kilobytes).
const CAPTURE_LIMIT: usize = 16 << 20;
/// Receive errors (ICMP reports) skipped in one drain before giving up until the next
/// wake-up, so a socket in a strange state cannot spin the thread.
const MAX_ERRORS_PER_DRAIN: u32 = 16;
/// Decorrelates the downstream RNG from the upstream one (same seed, another stream).
const DOWN_SEED_XOR: u64 = 0x9e37_79b9_7f4a_7c15;

/// What one direction does to each datagram, as probabilities in `0.0..=1.0`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Dropped.
    pub drop: f64,
    /// Sent twice (back to back).
    pub duplicate: f64,
    /// Held back until the next datagram of the same client and direction has gone out (or
    /// [`Config::hold`] has passed).
    pub reorder: f64,
}

impl Faults {
    /// A clean direction.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: 0.0,
    };

    /// Drop, duplicate and reorder with these probabilities.
    pub fn new(drop: f64, duplicate: f64, reorder: f64) -> Faults {
        Faults {
            drop,
            duplicate,
            reorder,
        }
    }

    fn check(&self) {
        for (what, p) in [
            ("drop", self.drop),
            ("duplicate", self.duplicate),
            ("reorder", self.reorder),
        ] {
            assert!((0.0..=1.0).contains(&p), "{what} probability {p}");
        }
    }
}

/// How the path behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Seeds both directions' RNGs.
    pub seed: u64,
    /// Client to server.
    pub up: Faults,
    /// Server to client.
    pub down: Faults,
    /// The longest a held (reordered) datagram waits for a later one to overtake it.
    pub hold: Duration,
    /// Each client's upstream socket moves to a new port once, after this many datagrams
    /// from that client have been handled (forwarded or not).
    pub rebind_after: Option<u64>,
}

impl Config {
    /// A clean path with this seed; set the fields (or use the builders) for faults.
    pub fn new(seed: u64) -> Config {
        Config {
            seed,
            up: Faults::NONE,
            down: Faults::NONE,
            hold: Duration::from_millis(5),
            rebind_after: None,
        }
    }

    /// The same faults in both directions.
    pub fn both(mut self, faults: Faults) -> Config {
        self.up = faults;
        self.down = faults;
        self
    }
}

/// What one direction did. `received` = `dropped` + datagrams sent on (once or twice) +
/// the one held at the moment, if any.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Datagrams that came in.
    pub received: u64,
    /// Of those, dropped.
    pub dropped: u64,
    /// Of those, sent twice.
    pub duplicated: u64,
    /// Of those, held back for reordering.
    pub held: u64,
    /// Held datagrams that a later one overtook (the rest went out when `hold` passed).
    pub reordered: u64,
    /// Datagrams handed to the kernel, copies included (counted just before the send).
    pub sent: u64,
    /// Sends the kernel refused (for example an ICMP port unreachable pending).
    pub send_errors: u64,
}

/// What the proxy did, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client to server.
    pub up: DirStats,
    /// Server to client.
    pub down: DirStats,
    /// Client source addresses seen (each got an upstream socket).
    pub clients: u64,
    /// Upstream sockets moved to a new port.
    pub rebinds: u64,
    /// Datagrams from clients beyond [`MAX_CLIENTS`], dropped.
    pub refused_clients: u64,
}

/// State shared between the test and the proxy thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    rebind_requested: AtomicU64,
    rebind_done: AtomicU64,
    stats: Mutex<Stats>,
    /// Every datagram received from either side, when [`LossyProxy::capture`] asked.
    capture: Mutex<Option<Vec<u8>>>,
}

/// A running lossy path; the thread stops (and its sockets close) when this is dropped.
pub struct LossyProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

impl LossyProxy {
    /// Starts a proxy to `server`, listening on a free port of the same loopback family.
    pub fn start(server: SocketAddr, config: Config) -> LossyProxy {
        config.up.check();
        config.down.check();
        let listen = UdpSocket::bind(loopback(server)).expect("bind the proxy");
        let addr = listen.local_addr().expect("proxy address");
        let poll = Poll::new().expect("poll");
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).expect("waker"));
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            poll,
            listen,
            server,
            config,
            paths: Vec::new(),
            by_client: HashMap::new(),
            up_rng: StdRng::seed_from_u64(config.seed),
            down_rng: StdRng::seed_from_u64(config.seed ^ DOWN_SEED_XOR),
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("lossy-proxy".into())
            .spawn(move || worker.run())
            .expect("spawn the proxy thread");
        LossyProxy {
            addr,
            shared,
            waker,
            thread: Some(thread),
        }
    }

    /// Where clients send (in place of the server's address).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, records every datagram received from clients or the server (at most
    /// [`CAPTURE_LIMIT`] bytes), for tests that must show what crossed the network.
    pub fn capture(&self) {
        let mut c = self.shared.capture.lock().expect("capture");
        c.get_or_insert_with(Vec::new);
    }

    /// The datagrams recorded since [`LossyProxy::capture`], concatenated.
    pub fn captured(&self) -> Vec<u8> {
        let c = self.shared.capture.lock().expect("capture");
        c.clone().unwrap_or_default()
    }

    /// What the proxy has done so far.
    pub fn stats(&self) -> Stats {
        *self.shared.stats.lock().expect("stats")
    }

    /// Moves every client's upstream socket to a new port, as a NAT does when its mappings
    /// expire. Returns once done: every datagram sent after this goes out from the new port.
    pub fn rebind_all(&self) {
        let want = self.shared.rebind_requested.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = self.waker.wake();
        let end = Instant::now() + REBIND_WAIT;
        while self.shared.rebind_done.load(Ordering::SeqCst) < want {
            assert!(
                Instant::now() < end,
                "the proxy did not rebind within {REBIND_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `127.0.0.1:0` or `[::1]:0`, matching the server's family.
fn loopback(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() {
        "[::1]:0".parse().expect("address")
    } else {
        "127.0.0.1:0".parse().expect("address")
    }
}

/// A datagram held back to be reordered.
struct Held {
    bytes: Vec<u8>,
    copies: u8,
    until: Instant,
}

/// One client's way through the proxy.
struct Path {
    client: SocketAddr,
    upstream: UdpSocket,
    /// Datagrams from the client so far (for `rebind_after`).
    from_client: u64,
    rebound_after: bool,
    held_up: Option<Held>,
    held_down: Option<Held>,
}

/// Client to server, or back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    Up,
    Down,
}

struct Worker {
    poll: Poll,
    listen: UdpSocket,
    server: SocketAddr,
    config: Config,
    paths: Vec<Path>,
    by_client: HashMap<SocketAddr, usize>,
    up_rng: StdRng,
    down_rng: StdRng,
    shared: Arc<Shared>,
}

impl Worker {
    fn run(mut self) {
        if self
            .poll
            .registry()
            .register(&mut self.listen, LISTEN, Interest::READABLE)
            .is_err()
        {
            return;
        }
        let mut events = Events::with_capacity(64);
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.shared.stop.load(Ordering::SeqCst) {
            let timeout = self.next_release().map_or(TICK, |t| {
                t.saturating_duration_since(Instant::now()).min(TICK)
            });
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            // Rebind before reading: a datagram sent after `rebind_all` returned must leave
            // from the new port.
            let requested = self.shared.rebind_requested.load(Ordering::SeqCst);
            if requested > self.shared.rebind_done.load(Ordering::SeqCst) {
                for i in 0..self.paths.len() {
                    self.rebind(i);
                }
                self.shared.rebind_done.store(requested, Ordering::SeqCst);
            }
            for event in events.iter() {
                match event.token() {
                    LISTEN => self.drain_clients(&mut buf),
                    WAKE => {}
                    Token(t) => self.drain_server(t - FIRST_PATH, &mut buf),
                }
            }
            self.release_expired();
        }
    }

    /// Reads every datagram waiting from clients and passes each up.
    fn drain_clients(&mut self, buf: &mut [u8]) {
        let mut errors = 0;
        loop {
            let (n, from) = match next(self.listen.recv_from(buf), &mut errors) {
                Next::Got(got) => got,
                Next::Skip => continue,
                Next::Stop => return,
            };
            let Some(i) = self.path_for(from) else {
                self.shared.stats.lock().expect("stats").refused_clients += 1;
                continue;
            };
            let path = &mut self.paths[i];
            path.from_client += 1;
            let rebind_now = !path.rebound_after
                && self
                    .config
                    .rebind_after
                    .is_some_and(|n| path.from_client > n);
            if rebind_now {
                self.paths[i].rebound_after = true;
                self.rebind(i);
            }
            self.pass(Dir::Up, i, &buf[..n]);
        }
    }

    /// Reads every datagram the server sent to client `i`'s upstream socket and passes each
    /// down.
    fn drain_server(&mut self, i: usize, buf: &mut [u8]) {
        if i >= self.paths.len() {
            return;
        }
        let mut errors = 0;
        loop {
            let n = match next(self.paths[i].upstream.recv(buf), &mut errors) {
                Next::Got(n) => n,
                Next::Skip => continue,
                Next::Stop => return,
            };
            self.pass(Dir::Down, i, &buf[..n]);
        }
    }

    /// The path of client `from`, made on its first datagram.
    fn path_for(&mut self, from: SocketAddr) -> Option<usize> {
        if let Some(&i) = self.by_client.get(&from) {
            return Some(i);
        }
        if self.paths.len() >= MAX_CLIENTS {
            return None;
        }
        let i = self.paths.len();
        let upstream = self.upstream(i).ok()?;
        self.paths.push(Path {
            client: from,
            upstream,
            from_client: 0,
            rebound_after: false,
            held_up: None,
            held_down: None,
        });
        self.by_client.insert(from, i);
        self.shared.stats.lock().expect("stats").clients += 1;
        Some(i)
    }

    /// A new upstream socket for path `i`: a fresh port, connected to the server (so it
    /// only hears the server, as a NAT mapping does), registered under the path's token.
    fn upstream(&self, i: usize) -> io::Result<UdpSocket> {
        let mut sock = UdpSocket::bind(loopback(self.server))?;
        sock.connect(self.server)?;
        self.poll
            .registry()
            .register(&mut sock, Token(FIRST_PATH + i), Interest::READABLE)?;
        Ok(sock)
    }

    /// Moves path `i` to a new port. The old socket closes: what the server sends to it
    /// from now on is lost, as with a NAT whose mapping changed.
    fn rebind(&mut self, i: usize) {
        let _ = self.poll.registry().deregister(&mut self.paths[i].upstream);
        match self.upstream(i) {
            Ok(sock) => {
                self.paths[i].upstream = sock;
                self.shared.stats.lock().expect("stats").rebinds += 1;
            }
            // Keep the old socket rather than lose the path (cannot happen on loopback
            // short of running out of ports or descriptors).
            Err(_) => {
                let _ = self.poll.registry().register(
                    &mut self.paths[i].upstream,
                    Token(FIRST_PATH + i),
                    Interest::READABLE,
                );
            }
        }
    }

    /// Applies the direction's faults to one datagram of path `i`.
    fn pass(&mut self, dir: Dir, i: usize, bytes: &[u8]) {
        if let Some(c) = self.shared.capture.lock().expect("capture").as_mut() {
            if c.len() + bytes.len() <= CAPTURE_LIMIT {
                c.extend_from_slice(bytes);
            }
        }
        let (faults, rng) = match dir {
            Dir::Up => (self.config.up, &mut self.up_rng),
            Dir::Down => (self.config.down, &mut self.down_rng),
        };
        let drop = rng.random_bool(faults.drop);
        let duplicate = rng.random_bool(faults.duplicate);
        let held_now = match dir {
            Dir::Up => self.paths[i].held_up.is_some(),
            Dir::Down => self.paths[i].held_down.is_some(),
        };
        let hold = !drop && !held_now && rng.random_bool(faults.reorder);
        {
            let mut stats = self.shared.stats.lock().expect("stats");
            let s = dir_stats(&mut stats, dir);
            s.received += 1;
            s.dropped += u64::from(drop);
            s.duplicated += u64::from(!drop && duplicate);
            s.held += u64::from(hold);
        }
        if drop {
            return;
        }
        let copies = if duplicate { 2 } else { 1 };
        if hold {
            let held = Some(Held {
                bytes: bytes.to_vec(),
                copies,
                until: Instant::now() + self.config.hold,
            });
            match dir {
                Dir::Up => self.paths[i].held_up = held,
                Dir::Down => self.paths[i].held_down = held,
            }
            return;
        }
        self.send(dir, i, bytes, copies);
        let overtaken = match dir {
            Dir::Up => self.paths[i].held_up.take(),
            Dir::Down => self.paths[i].held_down.take(),
        };
        if let Some(h) = overtaken {
            dir_stats(&mut self.shared.stats.lock().expect("stats"), dir).reordered += 1;
            self.send(dir, i, &h.bytes, h.copies);
        }
    }

    /// Sends `copies` copies of `bytes` on path `i` in direction `dir`, counting them.
    /// Each is counted before it goes, so a test that has received it sees it counted.
    fn send(&mut self, dir: Dir, i: usize, bytes: &[u8], copies: u8) {
        for _ in 0..copies {
            dir_stats(&mut self.shared.stats.lock().expect("stats"), dir).sent += 1;
            let path = &self.paths[i];
            let result = match dir {
                Dir::Up => path.upstream.send(bytes),
                Dir::Down => self.listen.send_to(bytes, path.client),
            };
            if result.is_err() {
                dir_stats(&mut self.shared.stats.lock().expect("stats"), dir).send_errors += 1;
            }
        }
    }

    /// The earliest time a held datagram is due.
    fn next_release(&self) -> Option<Instant> {
        self.paths
            .iter()
            .flat_map(|p| [&p.held_up, &p.held_down])
            .filter_map(|h| h.as_ref().map(|h| h.until))
            .min()
    }

    /// Sends the held datagrams whose time has come (nothing overtook them).
    fn release_expired(&mut self) {
        let now = Instant::now();
        for i in 0..self.paths.len() {
            for dir in [Dir::Up, Dir::Down] {
                let slot = match dir {
                    Dir::Up => &mut self.paths[i].held_up,
                    Dir::Down => &mut self.paths[i].held_down,
                };
                if slot.as_ref().is_some_and(|h| h.until <= now) {
                    let h = slot.take().expect("checked");
                    self.send(dir, i, &h.bytes, h.copies);
                }
            }
        }
    }
}

/// What a drain loop does with one receive.
enum Next<T> {
    /// A datagram: pass it on.
    Got(T),
    /// An error reported once (ECONNREFUSED from an ICMP message and the like): go on.
    Skip,
    /// Nothing left to read, or too many errors in a row: wait for the next wake-up.
    Stop,
}

fn next<T>(received: io::Result<T>, errors: &mut u32) -> Next<T> {
    match received {
        Ok(got) => Next::Got(got),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Stop,
        Err(_) if *errors < MAX_ERRORS_PER_DRAIN => {
            *errors += 1;
            Next::Skip
        }
        Err(_) => Next::Stop,
    }
}

fn dir_stats(stats: &mut Stats, dir: Dir) -> &mut DirStats {
    match dir {
        Dir::Up => &mut stats.up,
        Dir::Down => &mut stats.down,
    }
}
