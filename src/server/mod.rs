//! The relay server: a sans-IO core, and the event loop that moves bytes for it.
//!
//! * [`rooms`]: rooms, members, tokens, Seq and outboxes; takes `now` as an argument.
//! * [`deadlines`]: idle expiry in O(expired).
//! * [`per_ip`]: counts per client IP, for the per-IP limits.
//! * [`limits`]: message buckets and password-failure throttling.
//! * [`token`]: token generation, constant-time compare, the token table's hasher.
//! * [`counters`]: what the server counts (drops by reason, traffic, requests).
//! * [`metrics`]: those counts in the Prometheus text format, over minimal HTTP.
//! * [`conn`]: a TCP connection as a sans-IO state machine (timers, caps, half-close,
//!   INVALID_REQUEST), its TCRP and metrics services, and connection admission.
//! * [`transmit`]: the seam through which outboxes reach the socket and the sessions.
//! * [`web`]: the web listener: the page, and WebSocket sessions carrying both planes.
//! * [`event_loop`]: the mio readiness loop. It and [`crate::sys`] (socket set-up, batched
//!   UDP system calls, where every `unsafe` lives) are the only code that does I/O.

pub mod conn;
pub mod counters;
pub mod deadlines;
pub mod event_loop;
pub mod limits;
pub mod metrics;
pub mod per_ip;
pub mod rooms;
pub mod token;
pub mod transmit;
pub mod web;

pub use event_loop::{Limits, Server};
pub use rooms::{Config, DatagramOutcome, Relay};
