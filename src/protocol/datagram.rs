//! The client-to-server datagram of the data plane: room, token, message.
//!
//! ```text
//! RoomNameSize(1) TokenSize(1) RoomName Token Message(the rest, 0..=3800 bytes, text)
//! ```
//! An empty message is a heartbeat. Parsing borrows from the receive buffer and never
//! allocates: it runs once per received datagram.

use std::fmt;

use super::reader::Reader;
use super::{MAX_DATAGRAM, MAX_MESSAGE, TextError, text};

/// A chat datagram, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChatDatagram<'a> {
    /// Room name bytes (compared byte for byte with the member's room; not checked as text
    /// here, since an unknown room is dropped anyway).
    pub room: &'a [u8],
    /// The member's token.
    pub token: &'a [u8],
    /// The message; empty for a heartbeat.
    pub message: &'a str,
}

/// Why a datagram was dropped. The server counts each reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatagramError {
    /// Longer than [`MAX_DATAGRAM`].
    Oversize,
    /// Shorter than its size bytes say, or a zero room or token size.
    Malformed,
    /// Message over [`MAX_MESSAGE`] bytes.
    MessageTooLong,
    /// The message is not a text field.
    BadText(TextError),
}

impl fmt::Display for DatagramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatagramError::Oversize => write!(f, "datagram over {MAX_DATAGRAM} bytes"),
            DatagramError::Malformed => f.write_str("malformed datagram"),
            DatagramError::MessageTooLong => write!(f, "message over {MAX_MESSAGE} bytes"),
            DatagramError::BadText(e) => write!(f, "message {e}"),
        }
    }
}

impl std::error::Error for DatagramError {}

impl<'a> ChatDatagram<'a> {
    /// Parses one received datagram.
    pub fn parse(buf: &'a [u8]) -> Result<ChatDatagram<'a>, DatagramError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(DatagramError::Oversize);
        }
        let mut r = Reader::new(buf);
        let (room_len, token_len) = match (r.u8(), r.u8()) {
            (Some(a), Some(b)) if a > 0 && b > 0 => (usize::from(a), usize::from(b)),
            _ => return Err(DatagramError::Malformed),
        };
        let room = r.take(room_len).ok_or(DatagramError::Malformed)?;
        let token = r.take(token_len).ok_or(DatagramError::Malformed)?;
        let message = r.rest();
        if message.len() > MAX_MESSAGE {
            return Err(DatagramError::MessageTooLong);
        }
        let message = text(message).map_err(DatagramError::BadText)?;
        Ok(ChatDatagram {
            room,
            token,
            message,
        })
    }

    /// Whether this is a heartbeat (empty message).
    pub fn is_heartbeat(&self) -> bool {
        self.message.is_empty()
    }

    /// Writes the datagram into `out` and returns its length, or the reason it cannot be
    /// sent (a message over the limit or not text, an empty or over-long room or token).
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, DatagramError> {
        if self.message.len() > MAX_MESSAGE {
            return Err(DatagramError::MessageTooLong);
        }
        text(self.message.as_bytes()).map_err(DatagramError::BadText)?;
        let (rl, tl) = (self.room.len(), self.token.len());
        if !(1..=255).contains(&rl) || !(1..=255).contains(&tl) {
            return Err(DatagramError::Malformed);
        }
        let n = 2 + rl + tl + self.message.len();
        if n > MAX_DATAGRAM {
            return Err(DatagramError::Oversize);
        }
        let out = out.get_mut(..n).ok_or(DatagramError::Oversize)?;
        out[0] = rl as u8;
        out[1] = tl as u8;
        out[2..2 + rl].copy_from_slice(self.room);
        out[2 + rl..2 + rl + tl].copy_from_slice(self.token);
        out[2 + rl + tl..].copy_from_slice(self.message.as_bytes());
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_matches_protocol_md() {
        let token = b"Q7fK2mZp9xLwR4tYb8nVc3hJd6gSa1eU";
        let d = ChatDatagram {
            room: b"lobby",
            token,
            message: "hi 👋",
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = d.encode(&mut buf).unwrap();
        let mut expect = vec![5, 32];
        expect.extend_from_slice(b"lobby");
        expect.extend_from_slice(token);
        expect.extend_from_slice(&[0x68, 0x69, 0x20, 0xf0, 0x9f, 0x91, 0x8b]);
        assert_eq!(&buf[..n], &expect[..]);
        assert_eq!(ChatDatagram::parse(&expect), Ok(d));
    }

    #[test]
    fn limits() {
        let mut buf = vec![1u8, 1, b'r', b't'];
        assert!(ChatDatagram::parse(&buf).unwrap().is_heartbeat());
        buf.extend(std::iter::repeat_n(b'a', MAX_MESSAGE));
        assert_eq!(
            ChatDatagram::parse(&buf).unwrap().message.len(),
            MAX_MESSAGE
        );
        buf.push(b'a');
        assert_eq!(
            ChatDatagram::parse(&buf),
            Err(DatagramError::MessageTooLong)
        );
        let huge = vec![1u8; MAX_DATAGRAM + 1];
        assert_eq!(ChatDatagram::parse(&huge), Err(DatagramError::Oversize));
        // A 255-byte room and token with a 3800-byte message is 4312 bytes: the datagram
        // limit applies whatever the message length.
        let d = ChatDatagram {
            room: &[b'r'; 255],
            token: &[b't'; 255],
            message: &"m".repeat(MAX_MESSAGE),
        };
        assert_eq!(d.encode(&mut [0u8; 8192]), Err(DatagramError::Oversize));
    }

    #[test]
    fn malformed_inputs() {
        for bad in [
            &b""[..],
            &[1],
            &[0, 1, b't'],
            &[1, 0, b'r'],
            &[3, 1, b'r'],
            &[1, 2, b'r', b't'],
        ] {
            assert_eq!(
                ChatDatagram::parse(bad),
                Err(DatagramError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            ChatDatagram::parse(&[1, 1, b'r', b't', 0xff]),
            Err(DatagramError::BadText(TextError::NotUtf8))
        );
        assert_eq!(
            ChatDatagram::parse(&[1, 1, b'r', b't', b'\n']),
            Err(DatagramError::BadText(TextError::ControlChar))
        );
    }
}
