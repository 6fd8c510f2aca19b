//! # bench-client: how fast an OCM relay is, measured honestly
//!
//! An open-loop load generator for `ocm-server`. It creates rooms over TCRP, binds one UDP
//! socket per simulated user, then sends chat messages on a fixed schedule whatever the
//! server does, and times every delivery from the moment the message was *meant* to leave
//! (so a stalled server cannot hide its stall by slowing the sender: no coordinated
//! omission, as in wrk2).
//!
//! It speaks protocol v1.1 by default (PROTOCOL.md §5): messages go as SEND with a
//! ClientSeq, heartbeats are SYNC, and each user NACKs the gaps it sees in its room's Seq,
//! so the headline figures include the cost of the server's history ring. `--loss P` drops
//! received datagrams on purpose to measure that recovery; `--v1` keeps the version 1 path
//! (chat datagrams, empty heartbeats, gaps only counted).
//!
//! ```text
//!   schedule ──► stamp (sender, seq, intended time) ──► datagram ──► server
//!                                                                      │ fan-out
//!   histogram ◄── latency = now - intended ◄── order check ◄── events ◄┘ (every member)
//! ```
//!
//! ## Layout
//!
//! * [`cli`]: the arguments and their checks.
//! * [`run`]: the whole run: rooms, sockets, binding, load steps or a sweep, leaving.
//! * [`worker`]: one thread's users and its mio loop, sending and receiving.
//! * [`schedule`]: when each message is due.
//! * [`body`]: the stamp a message carries.
//! * [`order`]: per-sender order at a receiver (gaps, late, duplicates).
//! * [`gaps`]: v1.1: the Seqs a user is missing, and when to NACK them.
//! * [`loss`]: `--loss`, the seeded filter that drops received datagrams.
//! * [`stats`]: counters and histograms, per worker and shared.
//! * [`report`]: the derived figures, the table and the JSON.
//! * [`sweep`]: which rate to try next.
//! * [`topology`]: who is in which room, and the run's clock.
//! * [`shape`]: `--shape`/`--room-size`: rooms of several sizes, figures per size.
//! * [`scale`]: `bench-client scale`: many members on one server, its memory and CPU.
//! * [`web`]: `--web N`: users over WebSocket instead of UDP (their link, setup, figures).
//! * [`redis`]: `--target redis://HOST:PORT`: the same workload over Redis pub/sub, to
//!   compare with (its RESP3 codec, connections and worker).
//! * [`sys`]: the system calls std lacks (timerfd, rusage, drops); the ones the server
//!   shares (rlimit, buffers, `recvmmsg`) come from `ocm::sys`.
//!
//! The protocol itself comes from the `ocm` library: this crate has no copy of it.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod body;
pub mod cli;
pub mod gaps;
pub mod loss;
pub mod order;
pub mod readiness;
pub mod redis;
pub mod report;
pub mod run;
pub mod scale;
pub mod schedule;
pub mod shape;
pub mod stats;
pub mod sweep;
pub mod sys;
pub mod topology;
pub mod web;
pub mod worker;
