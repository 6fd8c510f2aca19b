//! The body of a bench message: who sent it, its per-sender sequence number and the time it
//! was *meant* to leave, in fixed-width lower-case hex, padded with dots to the asked size.
//!
//! ```text
//! SSSSSS-QQQQQQQQ-TTTTTTTTTTTT.......
//! sender  seq      intended send time (ns since the run's base instant)
//! ```
//!
//! Printable ASCII only, so it is a valid text field (PROTOCOL.md: no control characters).

/// Bytes the fixed part of a body takes; `--size` must be at least this.
pub const MIN_BODY: usize = 6 + 1 + 8 + 1 + 12;

/// Largest sender id that fits the body (6 hex digits).
pub const MAX_SENDER: u32 = 0xff_ffff;

/// Largest intended time that fits the body (12 hex digits of ns: about 78 hours).
pub const MAX_TIME_NS: u64 = 0xffff_ffff_ffff;

/// What a bench message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The sending user's id.
    pub sender: u32,
    /// The sender's sequence number in this step, from 0.
    pub seq: u32,
    /// When the message was scheduled to leave, ns since the run's base instant.
    pub intended_ns: u64,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

/// Value of each byte as a lower-case hex digit, or 0xff: one load per digit, since every
/// delivery is decoded on the bench's hot path.
const UNHEX: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

fn get_hex(digits: &[u8]) -> Option<u64> {
    let mut acc = 0u64;
    let mut bad = 0u8;
    for &d in digits {
        let v = UNHEX[usize::from(d)];
        bad |= v;
        acc = acc << 4 | u64::from(v & 0xf);
    }
    // Only 0xff has bit 7 set among the table's values.
    (bad & 0x80 == 0).then_some(acc)
}

impl Stamp {
    /// Writes the body into `out` (its whole length, at least [`MIN_BODY`]) and returns it
    /// as text. `None` when `out` is too short or a field does not fit its digits.
    pub fn encode<'a>(&self, out: &'a mut [u8]) -> Option<&'a str> {
        if out.len() < MIN_BODY || self.sender > MAX_SENDER || self.intended_ns > MAX_TIME_NS {
            return None;
        }
        put_hex(&mut out[0..6], u64::from(self.sender));
        out[6] = b'-';
        put_hex(&mut out[7..15], u64::from(self.seq));
        out[15] = b'-';
        put_hex(&mut out[16..28], self.intended_ns);
        out[MIN_BODY..].fill(b'.');
        std::str::from_utf8(out).ok()
    }

    /// Reads a body written by [`Stamp::encode`]; `None` for anything else.
    pub fn decode(body: &[u8]) -> Option<Stamp> {
        let head = body.get(..MIN_BODY)?;
        if head[6] != b'-' || head[15] != b'-' {
            return None;
        }
        Some(Stamp {
            sender: u32::try_from(get_hex(&head[0..6])?).ok()?,
            seq: u32::try_from(get_hex(&head[7..15])?).ok()?,
            intended_ns: get_hex(&head[16..28])?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let s = Stamp {
            sender: 499,
            seq: 0xdead_beef,
            intended_ns: 12_345_678_901,
        };
        let mut buf = [0u8; 64];
        let text = s.encode(&mut buf).unwrap();
        assert_eq!(text.len(), 64);
        assert!(text.starts_with("0001f3-deadbeef-"));
        assert!(text.ends_with("...."));
        assert!(ocm::protocol::text(text.as_bytes()).is_ok());
        assert_eq!(Stamp::decode(text.as_bytes()), Some(s));
    }

    #[test]
    fn exact_minimum_size() {
        let s = Stamp {
            sender: MAX_SENDER,
            seq: u32::MAX,
            intended_ns: MAX_TIME_NS,
        };
        let mut buf = [0u8; MIN_BODY];
        let text = s.encode(&mut buf).unwrap();
        assert_eq!(text, "ffffff-ffffffff-ffffffffffff");
        assert_eq!(Stamp::decode(text.as_bytes()), Some(s));
        assert_eq!(s.encode(&mut [0u8; MIN_BODY - 1]), None);
    }

    #[test]
    fn out_of_range_fields_are_refused() {
        let mut buf = [0u8; 64];
        let big_sender = Stamp {
            sender: MAX_SENDER + 1,
            seq: 0,
            intended_ns: 0,
        };
        assert_eq!(big_sender.encode(&mut buf), None);
        let late = Stamp {
            sender: 0,
            seq: 0,
            intended_ns: MAX_TIME_NS + 1,
        };
        assert_eq!(late.encode(&mut buf), None);
    }

    #[test]
    fn foreign_bodies_are_not_stamps() {
        for bad in [
            &b""[..],
            b"hello",
            b"0001f3-deadbeef-0002dfdc1c3",         // one digit short
            b"0001f3+deadbeef-0002dfdc1c35",        // wrong separator
            b"0001F3-deadbeef-0002dfdc1c35",        // upper case
            b"0001g3-deadbeef-0002dfdc1c35 and on", // not hex
        ] {
            assert_eq!(
                Stamp::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
