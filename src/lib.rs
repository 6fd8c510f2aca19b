//! # OCM: Online Chat Messenger
//!
//! A small group-chat relay. Rooms are managed over TCP (the Chat Room Protocol, TCRP);
//! chat travels over UDP, where the server checks each datagram's token and relays the
//! message to every member of the room.
//!
//! ## Layout
//!
//! * [`protocol`]: the wire formats only. Pure functions from bytes to borrowed frames and
//!   back ([`protocol::frame`] TCRP, [`protocol::datagram`] and [`protocol::control`] what
//!   clients send over UDP, [`protocol::event`] what the server sends); no sockets, no
//!   clocks.
//! * [`server`]: the relay. Its sans-IO core takes `now` as an argument and writes into
//!   buffers it is lent: [`server::relay`] (members, tokens, limits, deadlines), its rooms
//!   (Seq and the outbox, encoded once), and [`server::conn`] (a TCP connection's timers,
//!   caps and closing). [`server::event_loop`] is the mio loop that moves bytes between
//!   sockets and those types.
//! * [`sys`]: the operating system: socket set-up, buffer sizes, the open-file limit and
//!   batched UDP system calls, used by the server and bench-client alike. Every `unsafe`
//!   block of the library lives here.
//! * [`client`]: the client side, used by `ocm-client`, `bench-client` and the tests:
//!   [`client::control`] speaks TCRP, [`client::session`] the UDP chat session, and
//!   [`client::recovery`] the v1.1 recovery machine (reorder, NACK, SEND, roaming).
//!
//! The binaries only parse flags and call in here: `src/bin/ocm-server.rs`,
//! `src/bin/ocm-client/` (pure app state and view, plus full-screen and plain front ends),
//! and `bench-client/`. `docs/architecture.md` walks one datagram and one CREATE through
//! these files.
//!
//! ## Data flow
//!
//! ```text
//!   TCP bytes ──► server::conn ──► protocol::frame ──► Relay::handle_request ──► reply ──► TCP
//!   UDP datagrams (recvmmsg, sys::udp) ──► protocol::datagram ──► Relay::handle_datagram_to
//!                                                                   │ encode each event once
//!                                                                   ▼
//!                      every bound member ◄── same bytes (sendmmsg) ◄── room outbox
//!   clock ──► Relay::handle_timeout ──► TIMED_OUT / ROOM_CLOSED events
//! ```

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod client;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod protocol;
pub mod server;
pub mod sys;
