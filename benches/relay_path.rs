//! Micro-benchmark of the sans-IO relay path: parse a datagram, check its token and
//! address, append the event to the room's outbox, and hand full outboxes to a transmit
//! that does nothing (so the kernel's cost is left out).
//!
//! `cargo bench --bench relay_path` prints nanoseconds per message (noisy on shared
//! machines). `scripts/callgrind-relay.sh` runs it under callgrind and prints instructions
//! per message, which are repeatable.
//!
//! Arguments: `[messages] [members] [batch_max] [history]` (defaults 2000000, 25, 64,
//! 1024: the server's `--history`, so the cost of the v1.1 ring is in the figure; 0 leaves
//! it out).

#[path = "../tests/relay_fixture/mod.rs"]
mod relay_fixture;

use std::time::{Duration, Instant};

use relay_fixture::Null;

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let nums: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let messages = nums.first().copied().unwrap_or(2_000_000);
    let members = nums.get(1).copied().unwrap_or(25).max(1);
    let batch_max = nums.get(2).copied().unwrap_or(64).max(1);
    let history = nums.get(3).copied().unwrap_or(1024);
    let cfg = ocm::server::Config {
        history,
        ..ocm::server::Config::default()
    };
    let mut f = relay_fixture::room_with(members, cfg, batch_max, &"x".repeat(64));
    let mut tx = Null(0);
    let mut now = f.t0;
    let start = Instant::now();
    let mut sent = 0;
    'outer: loop {
        // One "wake-up": a batch of datagrams, then a flush.
        for _ in 0..32 {
            for (addr, bytes) in &f.datagrams {
                f.relay.handle_datagram(now, *addr, bytes, &mut tx);
                sent += 1;
                if sent == messages {
                    break 'outer;
                }
            }
        }
        f.relay.flush(&mut tx);
        now += Duration::from_micros(100);
    }
    f.relay.flush(&mut tx);
    let elapsed = start.elapsed();
    let c = &f.relay.counters;
    println!(
        "relay path: {messages} messages, {members} members, batch-max {batch_max}, \
         history {history}: \
         {:.1} ns/message, {:.2} ns/delivery, {:.1} events/datagram",
        elapsed.as_nanos() as f64 / messages as f64,
        elapsed.as_nanos() as f64 / c.deliveries as f64,
        c.deliveries as f64 / c.datagrams_out.max(1) as f64,
    );
}
