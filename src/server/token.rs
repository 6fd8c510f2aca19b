//! Member tokens: unguessable, printable, and cheap to look up on every datagram.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rand::Rng;

use crate::protocol::TOKEN_LEN;

/// A token as issued: [`TOKEN_LEN`] characters of a 64-letter alphabet (6 bits each, so 192
/// bits from the CSPRNG).
pub type Token = [u8; TOKEN_LEN];

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Draws a fresh token. Each random byte is masked to 6 bits; 64 divides 256, so every
/// letter is equally likely.
pub fn generate(rng: &mut impl Rng) -> Token {
    let mut t = [0u8; TOKEN_LEN];
    rng.fill_bytes(&mut t);
    for b in &mut t {
        *b = ALPHABET[usize::from(*b & 63)];
    }
    t
}

/// Compares two byte strings in time that depends only on their lengths, so a password
/// cannot be guessed byte by byte from response times.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Hashes a token by its first eight bytes, mixed by a multiply.
///
/// The table is looked up on every datagram, and SipHash over 32 bytes would be its largest
/// cost. Flooding is no risk here: the keys *stored* are server-drawn random tokens, so an
/// attacker's chosen lookups cannot lengthen any chain.
#[derive(Default)]
pub struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(first))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write_usize(&mut self, _len: usize) {
        // The slice length prefix is always TOKEN_LEN: nothing to mix.
    }

    fn finish(&self) -> u64 {
        // The table picks buckets from the low bits: fold the well-mixed high half down.
        self.0 ^ (self.0 >> 32)
    }
}

/// Token → member key.
pub type TokenMap = HashMap<Token, usize, BuildHasherDefault<TokenHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn tokens_are_printable_and_distinct() {
        let mut rng = StdRng::seed_from_u64(1);
        let a = generate(&mut rng);
        let b = generate(&mut rng);
        assert_ne!(a, b);
        assert!(a.iter().all(|c| (0x21..=0x7e).contains(c)));
    }

    #[test]
    fn constant_time_eq_is_eq() {
        assert!(constant_time_eq(b"pw", b"pw"));
        assert!(!constant_time_eq(b"pw", b"pW"));
        assert!(!constant_time_eq(b"pw", b"pw\0"));
        assert!(!constant_time_eq(b"", b"\0"));
        assert!(constant_time_eq(b"", b""));
    }
}
