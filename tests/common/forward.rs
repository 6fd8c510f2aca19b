//! A TCP forwarder to the server's control plane that rewrites the UdpPort of every
//! COMPLETE frame of CREATE, JOIN and RESUME, so that a real client's datagrams go to a
//! proxy (`lossy.rs`) instead of the server, without the client knowing:
//!
//! ```text
//!  ocm-client ──TCP──▶ forwarder ──TCP──▶ ocm-server      (COMPLETE's UdpPort rewritten
//!      │                                      ▲            to the proxy's port)
//!      └──────UDP──▶ lossy proxy ──UDP────────┘
//! ```
//!
//! The client sends its datagrams to the address its TCP connection went to, with the
//! UdpPort of the COMPLETE frame (§1.3). Optionally every byte the server received or sent
//! on these connections is also recorded ([`Tap`]), for tests that must show what the
//! server saw. Included with `#[path = "common/forward.rs"] mod forward;`.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

use ocm::protocol::State;
use ocm::protocol::frame::{encode_frame, split_reply};

/// Most bytes a [`Tap`] keeps (the tests that use one move a few kilobytes); beyond it the
/// rest is not recorded, and [`Tap::overflowed`] says so.
const TAP_LIMIT: usize = 16 << 20;

/// Every byte that went through, both directions, in arrival order per connection.
#[derive(Clone, Default)]
pub struct Tap(Arc<Mutex<(Vec<u8>, bool)>>);

impl Tap {
    /// Records `bytes`.
    pub fn record(&self, bytes: &[u8]) {
        let mut t = self.0.lock().expect("tap");
        if t.0.len() + bytes.len() > TAP_LIMIT {
            t.1 = true;
        } else {
            t.0.extend_from_slice(bytes);
        }
    }

    /// What was recorded so far.
    pub fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("tap").0.clone()
    }

    /// Whether some bytes were not recorded (over the limit).
    pub fn overflowed(&self) -> bool {
        self.0.lock().expect("tap").1
    }
}

/// Starts a forwarder to `server` that rewrites UdpPort to `udp_port`. Runs until the test
/// process ends (its threads block on sockets only).
pub fn forwarder(server: SocketAddr, udp_port: u16) -> SocketAddr {
    start(server, udp_port, None)
}

/// [`forwarder`], recording every byte the server received and sent (before the rewrite)
/// into `tap`.
pub fn recording_forwarder(server: SocketAddr, udp_port: u16, tap: Tap) -> SocketAddr {
    start(server, udp_port, Some(tap))
}

fn start(server: SocketAddr, udp_port: u16, tap: Option<Tap>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind the forwarder");
    let addr = listener.local_addr().expect("forwarder address");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            let Ok(upstream) = TcpStream::connect(server) else {
                continue;
            };
            let (Ok(c_read), Ok(u_write)) = (client.try_clone(), upstream.try_clone()) else {
                continue;
            };
            // Requests pass as they are.
            let up_tap = tap.clone();
            thread::spawn(move || copy_requests(c_read, u_write, up_tap));
            let down_tap = tap.clone();
            thread::spawn(move || rewrite_replies(upstream, client, udp_port, down_tap));
        }
    });
    addr
}

fn copy_requests(mut from: TcpStream, mut to: TcpStream, tap: Option<Tap>) {
    let mut chunk = [0u8; 4096];
    loop {
        match from.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(t) = &tap {
                    t.record(&chunk[..n]);
                }
                if to.write_all(&chunk[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Copies reply frames from `upstream` to `client`, with UdpPort set to `udp_port` in the
/// COMPLETE frames that carry one.
fn rewrite_replies(
    mut upstream: TcpStream,
    mut client: TcpStream,
    udp_port: u16,
    tap: Option<Tap>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        loop {
            let (out, used) = match split_reply(&buf) {
                Ok(Some((frame, used))) => {
                    let grant = frame.state == State::Complete as u8
                        && matches!(frame.op, 1 | 2 | 5)
                        && frame.payload.len() >= 4;
                    let mut out = Vec::new();
                    if grant {
                        // TokenSize, Token, UdpPort (2), IdleTimeout (2).
                        let mut payload = frame.payload.to_vec();
                        let at = payload.len() - 4;
                        payload[at..at + 2].copy_from_slice(&udp_port.to_be_bytes());
                        encode_frame(&mut out, frame.op, State::Complete, frame.room, &payload);
                    } else {
                        out.extend_from_slice(&buf[..used]);
                    }
                    (out, used)
                }
                Ok(None) => break,
                Err(_) => return,
            };
            buf.drain(..used);
            if client.write_all(&out).is_err() {
                return;
            }
        }
        match upstream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                let _ = client.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if let Some(t) = &tap {
                    t.record(&chunk[..n]);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}
