//! A relay with one room of bound members and a ready datagram per member: the fixture of
//! the allocation guard (`tests/no_alloc.rs`) and the relay micro-benchmark
//! (`benches/relay_path.rs`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Instant;

use ocm::protocol::datagram::ChatDatagram;
use ocm::protocol::frame::{Grant, Request, split_reply};
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

/// A relay, the time it was set up at, and one encoded `message` per member.
pub struct Fixture {
    pub relay: Relay<StdRng>,
    pub t0: Instant,
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
}

fn encode(token: &[u8], message: &str) -> Vec<u8> {
    let mut buf = [0u8; 4096];
    let d = ChatDatagram {
        room: b"room",
        token,
        message,
    };
    let n = d.encode(&mut buf).expect("encodable");
    buf[..n].to_vec()
}

/// Room "room" with `members` bound members (rate limit off, `batch_max` as given).
pub fn room(members: usize, batch_max: usize, message: &str) -> Fixture {
    let cfg = Config {
        msg_rate: 0,
        batch_max,
        max_capacity: u16::MAX,
        ..Config::default()
    };
    let mut relay = Relay::new(cfg, StdRng::seed_from_u64(1));
    let t0 = Instant::now();
    let mut tx = Null(0);
    let mut datagrams = Vec::new();
    for i in 0..members {
        let user = format!("user{i}");
        let req = if i == 0 {
            Request::Create {
                room: "room",
                user: &user,
                password: b"",
                capacity: u16::MAX,
                resume_key: None,
            }
        } else {
            Request::Join {
                room: "room",
                user: &user,
                password: b"",
                resume_key: None,
            }
        };
        let mut out = Vec::new();
        relay.handle_request(t0, [127, 0, 0, 1].into(), &req, &mut out, &mut tx);
        let (_, n) = split_reply(&out).unwrap().unwrap();
        let (complete, _) = split_reply(&out[n..]).unwrap().unwrap();
        let token = Grant::parse(complete.payload).unwrap().token.to_vec();
        let addr = SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16));
        relay.handle_datagram(t0, addr, &encode(&token, ""), &mut tx);
        datagrams.push((addr, encode(&token, message)));
    }
    relay.flush(&mut tx);
    Fixture {
        relay,
        t0,
        datagrams,
    }
}
