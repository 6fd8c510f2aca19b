//! The client side of OCM, shared by `ocm-client`, `bench-client` and the tests.
//!
//! * [`control`]: create, join, leave and list over TCRP (blocking, with timeouts).

pub mod control;

pub use control::{ControlClient, ControlError, Membership, RoomInfo};
