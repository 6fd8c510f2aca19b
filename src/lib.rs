//! # OCM: Online Chat Messenger
//!
//! A small group-chat relay. Rooms are managed over TCP (the Chat Room Protocol, TCRP);
//! chat travels over UDP, where the server checks each datagram's token and relays the
//! message to every member of the room.
//!
//! ## Layout
//!
//! * [`protocol`]: the wire formats only. Pure functions from bytes to borrowed frames and
//!   back; no sockets, no clocks.
//! * [`server`]: the relay. [`server::relay`] holds rooms, members and tokens and takes
//!   `now` as an argument; [`server::event_loop`] is the only place that touches mio.
//! * [`client`]: the client side, used by `ocm-client`, `bench-client` and the tests:
//!   [`client::control`] speaks TCRP, [`client::session`] the UDP chat session.
//!
//! The binaries only parse flags and call in here: `src/bin/ocm-server.rs`,
//! `src/bin/ocm-client/` (pure app state and view, plus full-screen and plain front ends),
//! and `bench-client/`.
//!
//! ## Data flow
//!
//! ```text
//!   TCP bytes ──► protocol::frame ──► Relay::handle_request ──► reply bytes ──► TCP
//!   UDP datagram ──► protocol::datagram ──► Relay::handle_datagram
//!                                              │ encode each event once
//!                                              ▼
//!                                        room outbox ──► same bytes ──► every bound member
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
