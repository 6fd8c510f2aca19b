//! Fuzz bodies: each takes arbitrary bytes and **asserts** a property of the wire codecs or
//! of the relay (it panics on a violation, which is what a fuzzer reports).
//!
//! They live in the library, not in `fuzz/`, so that `cargo test` can replay the committed
//! corpus through the very same code (`tests/fuzz_corpus.rs`) and CI needs no fuzzer. The
//! cargo-fuzz targets in `fuzz/fuzz_targets/` are three-line wrappers around them. Built
//! for the crate's own tests and with the `fuzzing` feature only (which the tests, the
//! benchmarks and `fuzz/` turn on): release builds do not ship them.
//!
//! * [`tcrp_stream()`]: the server's TCRP framing fed one byte stream in arbitrary chunks.
//! * [`datagram()`]: the client-to-server datagram decoder and encoder.
//! * [`events()`]: the client's event decoder, and its reply decoders (status, grant, LIST).
//! * [`relay()`]: the whole sans-IO relay driven by a sequence of requests, datagrams and
//!   clock steps ([`RelayOp`]), its invariants checked after every step.
//!
//! Every body is deterministic (a seeded RNG, virtual time) and takes well under a
//! millisecond on a typical input.

mod datagram;
mod events;
mod relay;
mod tcrp_stream;

pub use datagram::datagram;
pub use events::events;
pub use relay::{RELAY_CONFIG_LEN, RelayOp, relay};
pub use tcrp_stream::{tcrp_stream, tcrp_stream_input};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_accept_empty_and_tiny_inputs() {
        for data in [&b""[..], &[0], &[1, 2, 3], &[0xff; 40]] {
            tcrp_stream(data);
            datagram(data);
            events(data);
            relay(data);
        }
    }

    #[test]
    fn every_op_byte_names_an_operation_in_a_cycle() {
        for b in 0..=u8::MAX {
            let op = RelayOp::from_byte(b);
            if b < RelayOp::V11_FROM {
                assert_eq!(op, RelayOp::from_byte(b % RelayOp::CYCLE));
            } else {
                assert_eq!(op, RelayOp::from_byte(RelayOp::V11_FROM + b % 4));
            }
            // Each named value decodes to itself.
            assert_eq!(RelayOp::from_byte(op as u8), op);
        }
    }
}
