//! The client side of OCM, shared by `ocm-client`, `bench-client` and the tests.
//!
//! * [`control`]: create, join, leave and list over TCRP (blocking, with timeouts).
//! * [`e2e`]: end-to-end encrypted rooms (PROTOCOL.md §7): room key, envelopes, replay window.
//! * [`session`]: the UDP chat session: the v1.1 client (recovery, roaming, history) over
//!   a socket, with TCRP RESUME and JOIN again when needed.
//! * [`recovery`]: the v1.1 recovery state machine (ordered, exactly-once delivery, SEND
//!   retransmission, roaming), sans-IO.
//! * [`ws`]: the WebSocket transport's client side (PROTOCOL.md §6), sans-IO: the upgrade,
//!   masked frames, server frames.

pub mod control;
pub mod e2e;
pub mod recovery;
pub mod session;
pub mod ws;

pub use control::{ControlClient, ControlError, Membership, RoomInfo};
pub use session::{Options, SendError, SeqCheck, SeqTracker, Session, SessionEvent, check_message};
