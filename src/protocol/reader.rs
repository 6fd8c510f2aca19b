//! A cursor over a byte slice whose reads cannot panic.
//!
//! Every decoder in [`crate::protocol`] walks its input with a [`Reader`]: each `take` returns
//! `None` on short input instead of indexing past the end, so hostile bytes can produce an
//! error but never a panic.

/// A forward-only cursor over borrowed bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    /// Takes the next `n` bytes, or `None` when fewer remain (nothing is consumed then).
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, tail) = self.rest.split_at_checked(n)?;
        self.rest = tail;
        Some(head)
    }

    /// Takes one byte.
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    /// Takes a big-endian `u16`.
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// Takes a big-endian `u32`.
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Takes a one-byte length prefix and then that many bytes.
    pub fn u8_prefixed(&mut self) -> Option<&'a [u8]> {
        let save = self.rest;
        let n = self.u8()?;
        let bytes = self.take(usize::from(n));
        if bytes.is_none() {
            self.rest = save;
        }
        bytes
    }

    /// Takes everything that is left.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// How many bytes are left.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// True when every byte has been consumed.
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_gives_none_and_consumes_nothing() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u32(), None);
        assert_eq!(r.remaining(), 3);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert!(r.is_empty());
        assert_eq!(r.u8(), None);
    }

    #[test]
    fn prefixed_restores_on_short_body() {
        let mut r = Reader::new(&[5, b'a', b'b']);
        assert_eq!(r.u8_prefixed(), None);
        assert_eq!(r.remaining(), 3);
        let mut r = Reader::new(&[2, b'a', b'b', 9]);
        assert_eq!(r.u8_prefixed(), Some(&b"ab"[..]));
        assert_eq!(r.rest(), &[9]);
    }
}
