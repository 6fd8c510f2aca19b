//! The relay fuzz body: the whole sans-IO relay driven by a byte string of operations,
//! checked after every step against a model of what PROTOCOL.md allows.
//!
//! This file reads the input (configuration, then [`RelayOp`]s) and applies each operation;
//! [`model`] keeps what the harness was granted and saw, and [`check`] holds what every
//! step's replies and datagrams are checked against.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::protocol::control::ClientDatagram;
use crate::protocol::frame::Request;
use crate::server::Config;

mod check;
mod model;
mod v11;

use model::{Harness, StepCtx};

const ROOMS: [&str; 4] = ["r", "s", "t", "部屋"];
const USERS: [&str; 4] = ["a", "b", "c", "ゆき"];
const PASSWORDS: [&[u8]; 3] = [b"", b"pw", b"x"];
const CAPACITIES: [u16; 6] = [0, 1, 2, 3, 5, 300];
/// Ports of addresses that hold issued tokens start here; each room instance has four.
const PORT_BASE: u16 = 1000;
/// Raw datagrams come from ports above this one.
const RAW_PORT_BASE: u16 = 40_000;
/// Bytes of configuration at the start of a [`relay`] input.
pub const RELAY_CONFIG_LEN: usize = 10;
/// A [`RelayOp::Clock`] step byte of this much moves the clock one idle timeout (so a
/// byte moves it 0 to 3 timeouts).
const CLOCK_STEPS_PER_TIMEOUT: u32 = 85;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 1 + i % 3])
}

/// Operations of a [`relay`] input, by the value of their first byte modulo 12 (the
/// values between those named here repeat the operation before them: 1 creates, 3 joins,
/// 7 sends a datagram, so that the common operations come up more often).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayOp {
    /// `[op, room|user<<2|password<<4|key<<6, capacity, ip]` (key: bit 6 gives the
    /// resume key)
    Create = 0,
    /// `[op, room|user<<2|password<<4|key<<6, _, ip]`
    Join = 2,
    /// `[op, room (bit 2: the token's own), token choice, ip (bit 2: the token's own)]`
    Leave = 4,
    /// `[op, _, _, ip]`
    List = 5,
    /// `[op, room (bits 2-3 nonzero: the token's own) | message<<4, token choice,
    /// ip | own-ip<<2 | port<<4]`
    Datagram = 6,
    /// `[op, len, len bytes...]`: raw bytes as a datagram from 127.0.0.1, a fresh port.
    RawDatagram = 8,
    /// `[op, step, run]`: the clock moves `step`/85 idle timeouts (0-3); if `run` is odd,
    /// `handle_timeout` runs.
    Clock = 9,
    /// `[op]`: the end of a wake-up.
    Flush = 10,
    /// `[op, what]`: 0 shutdown; 1-3 the socket takes all / no / one receiver per send.
    Control = 11,
    /// (v1.1) `[op, a, t, i, client_seq]`: a SEND aimed like [`RelayOp::Datagram`] (the
    /// message by `a >> 4`, never empty), ClientSeq `client_seq % 8`.
    Send = 240,
    /// (v1.1) `[op, a, t, i, from, count]`: a NACK aimed like a datagram; FromSeq 0, 1-48
    /// or just below 2^32; Count 0, 513, or 1-40.
    Nack = 241,
    /// (v1.1) `[op, a, t, i]`: a SYNC aimed like a datagram.
    Sync = 242,
    /// (v1.1) `[op, a (bit 2: the token's own room), t, i (bit 2: the token's own IP),
    /// key]`: RESUME with the resume key (`key % 4` 0 or 3), a wrong one, or a short one.
    Resume = 243,
}

impl RelayOp {
    /// Op byte values below [`RelayOp::V11_FROM`] name one operation each by their value
    /// modulo this.
    pub const CYCLE: u8 = 12;
    /// Op byte values from this one on name the v1.1 operations (by value modulo 4), so
    /// that the corpus of version 1 keeps its meaning.
    pub const V11_FROM: u8 = 240;

    /// The operation an op byte names.
    pub fn from_byte(b: u8) -> RelayOp {
        if b >= Self::V11_FROM {
            return match b % 4 {
                0 => RelayOp::Send,
                1 => RelayOp::Nack,
                2 => RelayOp::Sync,
                _ => RelayOp::Resume,
            };
        }
        match b % Self::CYCLE {
            0 | 1 => RelayOp::Create,
            2 | 3 => RelayOp::Join,
            4 => RelayOp::Leave,
            5 => RelayOp::List,
            6 | 7 => RelayOp::Datagram,
            8 => RelayOp::RawDatagram,
            9 => RelayOp::Clock,
            10 => RelayOp::Flush,
            _ => RelayOp::Control,
        }
    }
}

/// Reads bytes off the front of the input; past the end every byte is 0.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// Fuzz body: the whole sans-IO relay.
///
/// Input: [`RELAY_CONFIG_LEN`] bytes of configuration (RNG seed, batch size 1..=8, idle
/// timeout 2..=5 s, small capacities and limits, message rate 0..=3, burst 1..=3), then
/// operations ([`RelayOp`]) until the input ends. Names come from small alphabets; tokens are
/// chosen among those issued (as granted, corrupted, or one from another room) or junk; the
/// source IPs are 127.0.0.1-3; each room instance's members send from their own ports, so a
/// receiver address tells which room a datagram belongs to.
///
/// After every step: [`Relay::check_invariants`](crate::server::Relay::check_invariants);
/// every reply well formed and consistent with its status; and, for every datagram sent: at
/// most 4096 bytes, decoding fully, all receivers in one room; the room's Seq rising by one
/// within the datagram and strictly across datagrams; each receiver seeing every room event
/// from its own JOINED on, with no gap, until it leaves, times out or its room closes, and
/// nothing after; RATE_LIMITED with Seq 0 to the limited sender alone, at most once a
/// second; member counts within capacity and limits; counters matching what the harness
/// saw. (v1.1, `v11.rs`) A ClientSeq relays once; a NACK answer holds exactly the held
/// events of its range with their original bytes, after one GONE for the part no longer
/// held, as far as the repair bucket pays, and the bucket is never overdrawn; SYNC answers
/// say the room's latest Seq and the member's ClientSeq; tail notices and RESUMED go alone,
/// Seq 0, to exactly the room's bound v1.1 members; RESUME's statuses follow §5.5, and a
/// resumed member hears nothing until it pins a new address.
pub fn relay(data: &[u8]) {
    let mut b = Bytes(data);
    let mut c = [0u8; RELAY_CONFIG_LEN];
    for x in &mut c {
        *x = b.byte();
    }
    let mut h = Harness::new(config(&c), u64::from(c[0]), Instant::now());
    h.check(&mut StepCtx::default());
    while !b.0.is_empty() {
        let mut ctx = StepCtx::default();
        step(&mut h, RelayOp::from_byte(b.byte()), &mut b, &mut ctx);
        h.check(&mut ctx);
    }
    // The end of the last wake-up.
    h.relay.flush(&mut h.tx);
    h.check(&mut StepCtx::default());
}

/// The relay's settings from the configuration bytes (`c[0]` is the RNG seed).
fn config(c: &[u8; RELAY_CONFIG_LEN]) -> Config {
    Config {
        udp_port: 9001,
        idle_timeout: Duration::from_secs(2 + u64::from(c[2] % 4)),
        default_capacity: 1 + u16::from(c[4] % 4),
        max_capacity: 1 + u16::from(c[3] % 4),
        max_rooms: 1 + usize::from(c[5] % 4),
        max_members: 1 + usize::from(c[6] % 8),
        // 0 (no limit) most of the time, else 1-3 members per IP.
        max_members_per_ip: u32::from(c[6] / 8 % 8).saturating_sub(4),
        max_rooms_per_ip: u32::from(c[7] % 3),
        msg_rate: u32::from(c[8] % 4),
        msg_burst: 1 + u32::from(c[9] % 3),
        batch_max: 1 + usize::from(c[1] % 8),
        // Adaptive coalescing: none, or a hold of 1-3 ms (the harness holds the maximum).
        max_hold: Duration::from_millis(u64::from(c[2] / 4 % 4)),
        // (v1.1) Small rings, so that NACKs meet GONE; tight memory and repair buckets.
        history: usize::from(c[9] / 4 % 8),
        history_memory: 64 + 64 * usize::from(c[7] / 4 % 16),
        repair_rate: 64 * u64::from(c[8] / 4 % 4),
        repair_burst: 128 * u64::from(c[8] / 16 % 4),
    }
}

/// Applies one operation, reading its argument bytes.
fn step(h: &mut Harness, op: RelayOp, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    match op {
        RelayOp::Create => create(h, b, ctx),
        RelayOp::Join => join(h, b, ctx),
        RelayOp::Leave => {
            let (a, t, i) = (b.byte(), b.byte(), b.byte());
            h.leave(a, t, i, ctx);
        }
        RelayOp::List => {
            let (_, _, i) = (b.byte(), b.byte(), b.byte());
            h.request(ip(i), &Request::List, ctx);
        }
        RelayOp::Datagram => {
            let (a, t, i) = (b.byte(), b.byte(), b.byte());
            h.chat_datagram(a, t, i, ctx);
        }
        RelayOp::RawDatagram => raw_datagram(h, b, ctx),
        RelayOp::Clock => clock(h, b, ctx),
        RelayOp::Flush => flush_twice(h),
        RelayOp::Control => h.control(b.byte(), ctx),
        RelayOp::Send => {
            let (a, t, i, cs) = (b.byte(), b.byte(), b.byte(), b.byte());
            h.send(a, t, i, u32::from(cs % 8), ctx);
        }
        RelayOp::Nack => nack(h, b, ctx),
        RelayOp::Sync => {
            let (a, t, i) = (b.byte(), b.byte(), b.byte());
            h.sync(a, t, i, ctx);
        }
        RelayOp::Resume => {
            let (a, t, i, k) = (b.byte(), b.byte(), b.byte(), b.byte());
            h.resume(a, t, i, k, ctx);
        }
    }
}

/// CREATE: room, user, password and resume key from one byte, capacity from the next.
fn create(h: &mut Harness, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    let (a, cap, i) = (b.byte(), b.byte(), b.byte());
    let req = Request::Create {
        room: ROOMS[usize::from(a % 4)],
        user: USERS[usize::from(a >> 2) % 4],
        password: PASSWORDS[usize::from(a >> 4) % 3],
        capacity: CAPACITIES[usize::from(cap) % CAPACITIES.len()],
        resume_key: (a & 0x40 != 0).then_some(v11::KEY),
    };
    h.request(ip(i), &req, ctx);
}

/// JOIN: room, user, password and resume key from one byte (the second is unused).
fn join(h: &mut Harness, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    let (a, _, i) = (b.byte(), b.byte(), b.byte());
    let req = Request::Join {
        room: ROOMS[usize::from(a % 4)],
        user: USERS[usize::from(a >> 2) % 4],
        password: PASSWORDS[usize::from(a >> 4) % 3],
        resume_key: (a & 0x40 != 0).then_some(v11::KEY),
    };
    h.request(ip(i), &req, ctx);
}

/// Arbitrary bytes as a datagram, from a fresh address.
fn raw_datagram(h: &mut Harness, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    let n = usize::from(b.byte());
    let raw = b.take(n).to_vec();
    // A fresh port each time: should the bytes hold a real token, the address
    // it binds belongs to that token's room alone.
    let port = RAW_PORT_BASE + (h.datagrams % 20_000) as u16;
    let from = SocketAddr::new(ip(0), port);
    let which = ClientDatagram::parse(&raw)
        .ok()
        .and_then(|d| h.issued.iter().position(|i| i.token == d.token()));
    h.datagram(from, &raw, which, ctx);
}

/// Moves the clock by a fraction of the idle timeout, and maybe runs the timers.
fn clock(h: &mut Harness, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    let (step, run) = (b.byte(), b.byte());
    let idle = h.cfg.idle_timeout;
    h.now += idle * u32::from(step) / CLOCK_STEPS_PER_TIMEOUT;
    if run & 1 == 1 {
        ctx.timeout_ran = true;
        h.relay.handle_timeout(h.now, &mut h.tx);
        if let Some(t) = h.relay.next_timeout() {
            assert!(t > h.now, "next_timeout is not in the future");
        }
    }
}

/// Ends a wake-up (sending what is due, held outboxes whose hold is over), then checks
/// that a second flush at the same time has nothing left to send, and that what is still
/// held is due later.
fn flush_twice(h: &mut Harness) {
    h.relay.flush_due(h.now, &mut h.tx);
    let before = h.tx.asked.len();
    h.relay.flush_due(h.now, &mut h.tx);
    assert_eq!(h.tx.asked.len(), before, "a second flush sent again");
    if let Some(t) = h.relay.next_flush() {
        assert!(t > h.now, "a held outbox is overdue after a flush");
    }
}

/// NACK: a range that is empty, over the 512 limit, near `u32::MAX`, or ordinary.
fn nack(h: &mut Harness, b: &mut Bytes<'_>, ctx: &mut StepCtx) {
    let (a, t, i) = (b.byte(), b.byte(), b.byte());
    let (f, c) = (b.byte(), b.byte());
    let from_seq = match f {
        0 => 0,
        250.. => u32::MAX - u32::from(f - 250),
        _ => 1 + u32::from(f) % 48,
    };
    let count = match c % 8 {
        0 => 0,
        1 => 513,
        _ => 1 + u16::from(c / 8) % 40,
    };
    h.nack(a, t, i, from_seq, count, ctx);
}
