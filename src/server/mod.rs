//! The relay server: a sans-IO core and the one place that touches sockets.
//!
//! * [`rooms`]: rooms, members, tokens, Seq and outboxes; takes `now` as an argument.
//! * [`deadlines`]: idle expiry in O(expired).
//! * [`per_ip`]: counts per client IP, for the per-IP limits.
//! * [`limits`]: message buckets and password-failure throttling.
//! * [`token`]: token generation, constant-time compare, the token table's hasher.
//! * [`counters`]: what the server counts (drops by reason, traffic, requests).
//! * [`metrics`]: those counts in the Prometheus text format, over minimal HTTP.
//! * [`transmit`]: the seam through which outboxes reach the socket.
//! * `udp`: `recvmmsg`/`sendmmsg` and packet-info, the batched system calls (Linux).
//! * [`event_loop`]: the mio readiness loop; the only file that does I/O.

pub mod counters;
pub mod deadlines;
pub mod event_loop;
pub mod limits;
pub mod metrics;
pub mod per_ip;
pub mod rooms;
pub mod token;
pub mod transmit;
#[cfg(target_os = "linux")]
pub mod udp;

pub use event_loop::{Limits, Server};
pub use rooms::{Config, DatagramOutcome, Relay};
