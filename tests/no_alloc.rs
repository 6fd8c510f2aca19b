//! The relay path allocates nothing per datagram in steady state: parse, token lookup,
//! outbox append, the history ring, fan-out, and (v1.1) SEND, NACK answers, SYNC answers and
//! tail notices run on memory the relay already holds. A counting allocator guards it.
//!
//! Each test first runs its loop until the rings and scratch buffers have reached their
//! size (a ring grows while it fills, once), then counts.

mod relay_fixture;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use ocm::protocol::MAX_DATAGRAM;
use ocm::protocol::control::{ControlBody, ControlDatagram};
use ocm::server::{Config, DatagramOutcome};
use relay_fixture::{Fixture, Null};

struct Counting;

thread_local! {
    /// Allocations made by this thread. Only the test's own thread is counted: the test
    /// harness's other threads (output capture, timing) may allocate at any moment, and
    /// counting them made the guard fail at random on a loaded machine. A const-initialised
    /// `Cell` needs no allocation, so the allocator may touch it.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn count() {
    // `try_with`: during thread teardown the slot may be gone; those frees are not ours.
    let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
}

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: forwards to the system allocator, only counting calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Rounds run before counting: enough for a 1024-event ring to fill and wrap.
const WARM_ROUNDS: usize = 2_000;
/// Rounds counted.
const COUNTED_ROUNDS: usize = 5_000;

/// Runs `round(i)` for the warm-up, then returns the allocations of the counted rounds.
fn steady_state_allocations(mut round: impl FnMut(usize)) -> usize {
    for i in 0..WARM_ROUNDS {
        round(i);
    }
    let before = allocations();
    for i in WARM_ROUNDS..WARM_ROUNDS + COUNTED_ROUNDS {
        round(i);
    }
    allocations() - before
}

/// Encodes a control datagram for member `i` of the fixture into `buf`.
fn control<'b>(f: &Fixture, i: usize, body: ControlBody<'_>, buf: &'b mut [u8]) -> &'b [u8] {
    let d = ControlDatagram {
        room: b"room",
        token: &f.tokens[i],
        body,
    };
    let n = d.encode(buf).expect("encodable");
    &buf[..n]
}

fn addr(f: &Fixture, i: usize) -> SocketAddr {
    f.datagrams[i].0
}

#[test]
fn relaying_a_datagram_allocates_nothing() {
    let mut f = relay_fixture::room(4, 64, "hello, a message of a typical length for a chat");
    let mut tx = Null(0);
    let mut now = f.t0;
    let deliveries = f.relay.counters.deliveries;
    let allocations = steady_state_allocations(|round| {
        now += Duration::from_micros(10);
        for (addr, bytes) in &f.datagrams {
            let outcome = f.relay.handle_datagram(now, *addr, bytes, &mut tx);
            assert_eq!(outcome, DatagramOutcome::Relayed);
        }
        if round % 3 == 0 {
            f.relay.flush(&mut tx);
        }
        f.relay.handle_timeout(now, &mut tx);
    });
    f.relay.flush(&mut tx);
    assert_eq!(allocations, 0, "allocations on the relay path");
    let rounds = WARM_ROUNDS + COUNTED_ROUNDS;
    assert_eq!(
        f.relay.counters.deliveries - deliveries,
        (rounds * 4 * 4) as u64
    );
    assert_eq!(f.relay.counters.history_events, 1024, "the ring is full");
    // With four senders per flush, datagrams carry several events each.
    assert!(tx.0 < rounds * 4 * 4);
}

#[test]
fn send_and_tail_notices_allocate_nothing() {
    let mut f = relay_fixture::room(4, 64, "");
    let mut tx = Null(0);
    let mut now = f.t0;
    let mut buf = [0u8; MAX_DATAGRAM];
    let allocations = steady_state_allocations(|round| {
        // Every 50th round the room falls quiet long enough for a tail notice.
        let quiet = if round % 50 == 0 { 60_000 } else { 10 };
        now += Duration::from_micros(quiet);
        f.relay.handle_timeout(now, &mut tx);
        for i in 0..4 {
            let body = ControlBody::Send {
                client_seq: round as u32 + 1,
                message: "hello, a message of a typical length for a chat",
            };
            let d = control(&f, i, body, &mut buf);
            let outcome = f.relay.handle_datagram(now, addr(&f, i), d, &mut tx);
            assert_eq!(outcome, DatagramOutcome::Relayed);
            // The same SEND again: a retransmission, not relayed.
            let d = control(&f, i, body, &mut buf);
            let outcome = f.relay.handle_datagram(now, addr(&f, i), d, &mut tx);
            assert_eq!(outcome, DatagramOutcome::Duplicate);
        }
        f.relay.flush(&mut tx);
    });
    assert_eq!(allocations, 0, "allocations on the SEND path");
    let c = &f.relay.counters;
    assert_eq!(
        c.duplicate_sends,
        ((WARM_ROUNDS + COUNTED_ROUNDS) * 4) as u64
    );
    assert!(c.tail_notices >= ((WARM_ROUNDS + COUNTED_ROUNDS) / 50 - 1) as u64);
}

#[test]
fn nack_and_sync_answers_allocate_nothing() {
    let cfg = Config {
        repair_rate: 0,
        ..Config::default()
    };
    let mut f = relay_fixture::room_with(4, cfg, 64, "hello, a message of a typical length");
    let mut tx = Null(0);
    let mut now = f.t0;
    let mut buf = [0u8; MAX_DATAGRAM];
    let mut seq: u32 = 4; // the four JOINEDs
    let mut repaired = 0;
    let allocations = steady_state_allocations(|round| {
        if round == WARM_ROUNDS {
            repaired = f.relay.counters.repair_events;
        }
        now += Duration::from_micros(10);
        for (addr, bytes) in &f.datagrams {
            f.relay.handle_datagram(now, *addr, bytes, &mut tx);
            seq += 1;
        }
        f.relay.flush(&mut tx);
        // One member asks for the last 100 events (some gone early on), another syncs.
        let i = round % 4;
        let nack = ControlBody::Nack {
            from_seq: seq.saturating_sub(99).max(1),
            count: 100,
        };
        let d = control(&f, i, nack, &mut buf);
        let outcome = f.relay.handle_datagram(now, addr(&f, i), d, &mut tx);
        assert_eq!(outcome, DatagramOutcome::Nack);
        let d = control(&f, (i + 1) % 4, ControlBody::Sync, &mut buf);
        let outcome = f
            .relay
            .handle_datagram(now, addr(&f, (i + 1) % 4), d, &mut tx);
        assert_eq!(outcome, DatagramOutcome::Sync);
    });
    assert_eq!(allocations, 0, "allocations on the NACK and SYNC paths");
    let c = &f.relay.counters;
    assert_eq!(c.repair_events - repaired, (COUNTED_ROUNDS * 100) as u64);
    assert_eq!(c.syncs, (WARM_ROUNDS + COUNTED_ROUNDS) as u64);
}
