//! A relay with one room of bound members and a ready datagram per member: the fixture of
//! the allocation guard (`tests/no_alloc.rs`) and the relay micro-benchmark
//! (`benches/relay_path.rs`). The room is set up by the relay's own test driver
//! (`ocm::server::relay::testing`, built for tests and benchmarks by the `fuzzing` feature).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Instant;

use ocm::server::relay::testing::{bound_room, chat_datagram};
use ocm::server::transmit::{Dest, Transmit};
use ocm::server::{Config, Relay};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Counts deliveries and allocates nothing.
pub struct Null(pub usize);

impl Transmit for Null {
    fn send(&mut self, _payload: &[u8], to: &[Dest]) -> usize {
        self.0 += to.len();
        to.len()
    }
}

/// A relay, the time it was set up at, one encoded `message` per member, and the members'
/// tokens.
pub struct Fixture {
    pub relay: Relay<StdRng>,
    pub t0: Instant,
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    pub tokens: Vec<Vec<u8>>,
}

/// Room "room" with `members` bound members (rate limit off, `batch_max` as given), all
/// from 127.0.0.1, at ports 5000 and up.
pub fn room(members: usize, batch_max: usize, message: &str) -> Fixture {
    room_with(members, Config::default(), batch_max, message)
}

/// [`room`] with the rest of the settings from `cfg` (v1.1: `history`, repair limits).
pub fn room_with(members: usize, cfg: Config, batch_max: usize, message: &str) -> Fixture {
    let cfg = Config {
        msg_rate: 0,
        batch_max,
        max_capacity: u16::MAX,
        ..cfg
    };
    let mut relay = Relay::new(cfg, StdRng::seed_from_u64(1));
    let t0 = Instant::now();
    let mut tx = Null(0);
    let names: Vec<String> = (0..members).map(|i| format!("user{i}")).collect();
    let who: Vec<(&str, SocketAddr)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                n.as_str(),
                SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)),
            )
        })
        .collect();
    let tokens = bound_room(&mut relay, t0, "room", u16::MAX, &who, &mut tx);
    relay.flush(&mut tx);
    let datagrams = who
        .iter()
        .zip(&tokens)
        .map(|(&(_, addr), token)| (addr, chat_datagram("room", token, message)))
        .collect();
    Fixture {
        relay,
        t0,
        datagrams,
        tokens,
    }
}
