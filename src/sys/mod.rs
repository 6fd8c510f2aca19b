//! The operating system, in one place: socket set-up, buffer sizes, the open-file limit and
//! batched UDP. Used by the server's event loop, its binary and bench-client alike.
//!
//! * [`socket`]: binding the listener and the data-plane socket; buffer sizes, forced
//!   where the process may.
//! * [`rlimit`]: raising the open-file limit.
//! * [`timer`]: a timerfd, for deadlines finer than mio's millisecond poll timeout.
//! * [`udp`]: `recvmmsg`/`sendmmsg` with packet-info on Linux, one datagram per call
//!   elsewhere, behind one interface.
//!
//! Every `unsafe` block of the library lives under this module (the files that hold one say
//! so at the top), each with a `SAFETY:` comment. Everything above it is safe code.

pub mod rlimit;
pub mod socket;
pub mod timer;
pub mod udp;
