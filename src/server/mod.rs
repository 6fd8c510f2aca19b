//! The relay server: a sans-IO core, and the event loop that moves bytes for it.
//!
//! The core (no sockets, no clocks; it takes `now` as an argument):
//!
//! * [`relay`]: the coordinator: members, tokens, per-IP counts, password throttle, idle
//!   deadlines and counters; answers requests and datagrams, and times members out.
//! * `room`: one room: its members, bound addresses, Seq and outbox, and the rule that
//!   the outbox is flushed before the bound set changes.
//! * [`coalesce`]: adaptive coalescing: the loop's busy share, and how long a busy room
//!   may hold its outbox.
//! * [`deadlines`]: idle expiry in O(expired).
//! * [`per_ip`]: counts per client IP, for the per-IP limits.
//! * [`limits`]: message buckets and password-failure throttling.
//! * [`token`]: token generation, constant-time compare, the token table's hasher.
//! * [`counters`]: what the server counts (drops by reason, traffic, requests).
//! * [`metrics`]: those counts in the Prometheus text format, over minimal HTTP.
//! * [`conn`]: a TCP connection as a sans-IO state machine (timers, caps, half-close,
//!   INVALID_REQUEST), its TCRP and metrics services, and connection admission.
//!
//! Where bytes meet the operating system:
//!
//! * [`transmit`]: the seam through which outboxes reach the socket and the WebSocket
//!   sessions (the core calls a [`transmit::Transmit`] it is lent; the implementations
//!   send).
//! * [`web`]: the web listener (sans-IO): the page, and WebSocket sessions carrying both
//!   planes (PROTOCOL.md §6).
//! * [`event_loop`]: the mio readiness loop: sockets, connections and timers. It and
//!   [`crate::sys`] (socket set-up, batched UDP system calls, where every `unsafe` lives)
//!   are the only code that does I/O.

pub mod cluster;
pub mod coalesce;
pub mod conn;
pub mod counters;
pub mod deadlines;
pub mod event_loop;
pub mod limits;
pub mod metrics;
pub mod per_ip;
pub mod relay;
mod room;
pub mod tls;
pub mod token;
pub mod transmit;
pub mod web;

pub use event_loop::{Limits, Server};
pub use relay::{Config, DatagramOutcome, Relay};
