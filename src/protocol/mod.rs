//! The OCM wire formats, and nothing else: no sockets, no clocks.
//!
//! Every decoder is a pure function from `&[u8]` to a value that borrows from the input, or
//! a typed error naming what was wrong; every encoder writes into a buffer the caller owns.
//! `docs/protocol.md` describes the bytes; this module is that description in code.
//!
//! * [`frame`]: TCRP, the TCP control plane (32-byte header, requests and replies).
//! * [`datagram`]: what a client sends over UDP (room, token, message).
//! * [`event`]: what the server sends over UDP (one or more events per datagram).
//! * [`control`]: v1.1 control datagrams (SEND, NACK, SYNC), and the dispatch between them
//!   and v1 chat datagrams.

pub mod control;
pub mod datagram;
pub mod event;
pub mod frame;
pub mod reader;

use std::fmt;

/// Largest TCRP payload the server accepts; a header announcing more is malformed.
pub const MAX_PAYLOAD: usize = 4096;
/// Room names are 1..=255 bytes (they travel behind a one-byte length).
pub const MAX_ROOM_NAME: usize = 255;
/// User names are 1..=255 bytes.
pub const MAX_USER_NAME: usize = 255;
/// Tokens are 1..=255 bytes on the wire; this server issues [`TOKEN_LEN`].
pub const MAX_TOKEN: usize = 255;
/// Length of the tokens this server issues: 32 characters of a 64-letter alphabet (192 bits).
pub const TOKEN_LEN: usize = 32;
/// Largest UDP datagram either side sends or accepts.
pub const MAX_DATAGRAM: usize = 4096;
/// Largest chat message; chosen so that any single event fits in one datagram.
pub const MAX_MESSAGE: usize = 3800;

/// The Seq that follows `seq` in a room's sequence: +1, and after 0xFFFFFFFF comes 1, since
/// Seq 0 is never a room event (it marks notices outside the sequence).
pub const fn next_seq(seq: u32) -> u32 {
    match seq.wrapping_add(1) {
        0 => 1,
        s => s,
    }
}

/// TCRP operations (header byte 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Operation {
    /// Create a room and become its host.
    Create = 1,
    /// Join an existing room.
    Join = 2,
    /// Leave a room (the host's leave closes it).
    Leave = 3,
    /// List the rooms.
    List = 4,
    /// (v1.1) Move a member to the address this request comes from (PROTOCOL.md §5.5).
    Resume = 5,
}

impl Operation {
    /// Every operation, in wire order.
    pub const ALL: [Operation; 5] = [
        Operation::Create,
        Operation::Join,
        Operation::Leave,
        Operation::List,
        Operation::Resume,
    ];

    /// The operation for a header byte, if it is one.
    pub fn from_u8(b: u8) -> Option<Self> {
        match b {
            1 => Some(Operation::Create),
            2 => Some(Operation::Join),
            3 => Some(Operation::Leave),
            4 => Some(Operation::List),
            5 => Some(Operation::Resume),
            _ => None,
        }
    }

    /// Lower-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Join => "join",
            Operation::Leave => "leave",
            Operation::List => "list",
            Operation::Resume => "resume",
        }
    }
}

/// TCRP frame states (header byte 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Client to server.
    Request = 0,
    /// The server's immediate answer: one status byte.
    Response = 1,
    /// The server's second answer, after OK, with the operation's result.
    Complete = 2,
}

/// Status codes carried by a RESPONSE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Accepted.
    Ok = 0,
    /// CREATE of a room name that is in use.
    RoomExists = 1,
    /// JOIN or LEAVE of a room that does not exist.
    RoomNotFound = 2,
    /// JOIN of a full room.
    RoomFull = 3,
    /// JOIN with a wrong password.
    BadPassword = 4,
    /// JOIN with a user name already used in that room.
    NameTaken = 5,
    /// Malformed frame or invalid field.
    InvalidRequest = 6,
    /// A server-wide or per-IP limit was reached.
    ServerFull = 7,
    /// LEAVE with a token that is not a member's of that room (or from another IP).
    Unauthorized = 8,
    /// Too many failed attempts from this IP; try later.
    TooManyRequests = 9,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: [Status; 10] = [
        Status::Ok,
        Status::RoomExists,
        Status::RoomNotFound,
        Status::RoomFull,
        Status::BadPassword,
        Status::NameTaken,
        Status::InvalidRequest,
        Status::ServerFull,
        Status::Unauthorized,
        Status::TooManyRequests,
    ];

    /// The status for a code, if it is one.
    pub fn from_u8(b: u8) -> Option<Self> {
        Status::ALL.get(usize::from(b)).copied()
    }

    /// Snake-case name, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::RoomExists => "room_exists",
            Status::RoomNotFound => "room_not_found",
            Status::RoomFull => "room_full",
            Status::BadPassword => "bad_password",
            Status::NameTaken => "name_taken",
            Status::InvalidRequest => "invalid_request",
            Status::ServerFull => "server_full",
            Status::Unauthorized => "unauthorized",
            Status::TooManyRequests => "too_many_requests",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Status::Ok => "ok",
            Status::RoomExists => "the room already exists",
            Status::RoomNotFound => "no such room",
            Status::RoomFull => "the room is full",
            Status::BadPassword => "wrong password",
            Status::NameTaken => "that user name is taken in this room",
            Status::InvalidRequest => "invalid request",
            Status::ServerFull => "the server is full",
            Status::Unauthorized => "not a member of that room",
            Status::TooManyRequests => "too many failed attempts; try again later",
        };
        f.write_str(text)
    }
}

/// Why a text field (room name, user name, message) was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextError {
    /// The bytes are not UTF-8.
    NotUtf8,
    /// The text holds a control character (U+0000-U+001F or U+007F-U+009F).
    ControlChar,
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TextError::NotUtf8 => "not valid UTF-8",
            TextError::ControlChar => "contains a control character",
        })
    }
}

/// Checks a text field: UTF-8 with no control characters (so one line, and no escape
/// sequences reach another member's terminal). Borrows, never copies.
pub fn text(bytes: &[u8]) -> Result<&str, TextError> {
    let s = std::str::from_utf8(bytes).map_err(|_| TextError::NotUtf8)?;
    if control_char(s).is_some() {
        return Err(TextError::ControlChar);
    }
    Ok(s)
}

/// The first character of `s` that [`text`] refuses (a control character, U+0000-U+001F
/// or U+007F-U+009F), if any. The one definition of the rule: [`text`] is built on it, and
/// front ends call it to check text before sending and to name the character.
pub fn control_char(s: &str) -> Option<char> {
    if s.is_ascii() {
        // The common case, byte by byte: the ASCII controls are exactly these.
        s.bytes().find(|&b| b < 0x20 || b == 0x7f).map(char::from)
    } else {
        s.chars().find(|c| c.is_control())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_accepts_printable_and_unicode() {
        assert_eq!(text(b"hello"), Ok("hello"));
        assert_eq!(text("こんにちは 👋".as_bytes()), Ok("こんにちは 👋"));
        assert_eq!(text(b""), Ok(""));
    }

    #[test]
    fn text_rejects_controls_and_bad_utf8() {
        for bad in [&b"a\nb"[..], b"\x00", b"\x1b[2J", b"\x7f", b"tab\t"] {
            assert_eq!(text(bad), Err(TextError::ControlChar), "{bad:?}");
        }
        // U+0085 (NEL) and U+009B (CSI) are C1 controls.
        assert_eq!(text("a\u{85}".as_bytes()), Err(TextError::ControlChar));
        assert_eq!(text("\u{9b}31m".as_bytes()), Err(TextError::ControlChar));
        assert_eq!(text(&[0xff, 0x41]), Err(TextError::NotUtf8));
        assert_eq!(text(&[0xe3, 0x81]), Err(TextError::NotUtf8));
    }

    #[test]
    fn control_char_names_what_text_refuses() {
        for (s, want) in [
            ("hello", None),
            ("こんにちは 👋", None),
            ("", None),
            ("a\tb\nc", Some('\t')),
            ("red \x1b[31m", Some('\x1b')),
            ("del\x7f", Some('\x7f')),
            ("アリス\u{85}", Some('\u{85}')),
            ("\u{9b}31m", Some('\u{9b}')),
        ] {
            assert_eq!(control_char(s), want, "{s:?}");
            let refused = text(s.as_bytes()) == Err(TextError::ControlChar);
            assert_eq!(refused, want.is_some(), "{s:?}");
        }
    }

    #[test]
    fn status_codes_round_trip() {
        for (i, s) in Status::ALL.iter().enumerate() {
            assert_eq!(*s as u8 as usize, i);
            assert_eq!(Status::from_u8(i as u8), Some(*s));
        }
        assert_eq!(Status::from_u8(10), None);
        for op in Operation::ALL {
            assert_eq!(Operation::from_u8(op as u8), Some(op));
        }
        assert_eq!(Operation::from_u8(0), None);
        assert_eq!(Operation::from_u8(6), None);
    }
}
