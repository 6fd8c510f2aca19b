//! The relay path allocates nothing per datagram: parse, token lookup, outbox append and
//! fan-out run on memory the relay already holds. A counting allocator guards it.

mod relay_fixture;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use ocm::server::DatagramOutcome;
use relay_fixture::Null;

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

#[test]
fn relaying_a_datagram_allocates_nothing() {
    let mut f = relay_fixture::room(4, 64, "hello, a message of a typical length for a chat");
    let mut tx = Null(0);
    let deliveries_before = f.relay.counters.deliveries;
    let datagrams_before = f.relay.counters.datagrams_out;
    let before = allocations();
    let mut now = f.t0;
    for round in 0..5_000 {
        now += Duration::from_micros(10);
        for (addr, bytes) in &f.datagrams {
            let outcome = f.relay.handle_datagram(now, *addr, bytes, &mut tx);
            assert_eq!(outcome, DatagramOutcome::Relayed);
        }
        if round % 3 == 0 {
            f.relay.flush(&mut tx);
        }
        f.relay.handle_timeout(now, &mut tx);
    }
    f.relay.flush(&mut tx);
    let allocations = allocations() - before;
    assert_eq!(allocations, 0, "allocations on the relay path");
    assert_eq!(
        f.relay.counters.deliveries - deliveries_before,
        5_000 * 4 * 4
    );
    // With four senders per flush, datagrams carry several events each.
    assert_eq!(
        tx.0 as u64,
        f.relay.counters.datagrams_out - datagrams_before
    );
    assert!(tx.0 < 5_000 * 4 * 4);
}
