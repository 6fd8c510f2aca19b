//! TCRP, the control plane over TCP: frames, requests and replies.
//!
//! A frame is a 32-byte header (room-name size, operation, state, and a 29-byte big-endian
//! payload size) followed by the room name and the payload. TCP delivers a byte stream, so
//! the splitters here answer `Ok(None)` until a whole frame is in the buffer, and check the
//! header against the limits before any body byte is waited for or stored.

use std::fmt;

use super::reader::Reader;
use super::{MAX_PAYLOAD, MAX_TOKEN, MAX_USER_NAME, Operation, State, Status, TextError, text};

/// Size of the fixed TCRP header.
pub const HEADER_LEN: usize = 32;
/// Largest request frame the server accepts; a connection's input buffer holds one.
pub const MAX_REQUEST_FRAME: usize = HEADER_LEN + super::MAX_ROOM_NAME + MAX_PAYLOAD;
/// Shortest resume key (v1.1, §1.3): 128 bits, so a key cannot be guessed.
pub const MIN_RESUME_KEY: usize = 16;
/// Longest resume key: room for any key derivation's output, small enough to keep a
/// member's state small.
pub const MAX_RESUME_KEY: usize = 64;
/// Largest reply a client accepts (a LIST reply is at most 4096 bytes of payload; this
/// leaves room for servers that grow other replies a little).
pub const MAX_REPLY_PAYLOAD: usize = 64 * 1024;

/// The fixed header of a frame, as it came off the wire (nothing checked yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Length of the room name that follows the header.
    pub room_len: u8,
    /// Operation byte (not necessarily a known one).
    pub op: u8,
    /// State byte (not necessarily a known one).
    pub state: u8,
    /// Announced payload size; `None` when the 29-byte integer does not fit in 64 bits.
    pub payload_len: Option<u64>,
}

impl Header {
    /// Reads a header from the first [`HEADER_LEN`] bytes, or `None` if there are fewer.
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h = buf.get(..HEADER_LEN)?;
        let payload_len = if h[3..24].iter().any(|&b| b != 0) {
            None
        } else {
            let mut be = [0u8; 8];
            be.copy_from_slice(&h[24..32]);
            Some(u64::from_be_bytes(be))
        };
        Some(Header {
            room_len: h[0],
            op: h[1],
            state: h[2],
            payload_len,
        })
    }

    /// The payload size if it is at most `max`.
    fn payload_within(&self, max: usize) -> Option<usize> {
        self.payload_len
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= max)
    }
}

/// Appends a header to `out`.
pub fn encode_header(out: &mut Vec<u8>, room_len: u8, op: u8, state: State, payload_len: usize) {
    out.extend_from_slice(&[room_len, op, state as u8]);
    out.extend_from_slice(&[0u8; 21]);
    out.extend_from_slice(&(payload_len as u64).to_be_bytes());
}

/// One whole frame, borrowed from the receive buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Operation byte as received.
    pub op: u8,
    /// State byte as received.
    pub state: u8,
    /// The room name bytes (not yet checked as text).
    pub room: &'a [u8],
    /// The operation payload.
    pub payload: &'a [u8],
}

/// Why a request header cannot be framed: the server answers INVALID_REQUEST and closes,
/// since it cannot know where the next frame would start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// The operation byte is not 1-5.
    UnknownOperation,
    /// The state byte is not REQUEST (0).
    NotARequest(u8),
    /// The payload size is over [`MAX_PAYLOAD`] (`None`: it does not even fit in 64 bits).
    PayloadTooLarge(Option<u64>),
}

/// A malformed request header, with the operation byte to echo in the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedFrame {
    /// The operation byte as received.
    pub op: u8,
    /// What was wrong.
    pub reason: Malformed,
}

impl fmt::Display for MalformedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reason {
            Malformed::UnknownOperation => write!(f, "unknown operation {}", self.op),
            Malformed::NotARequest(s) => write!(f, "state {s} is not REQUEST"),
            Malformed::PayloadTooLarge(Some(n)) => {
                write!(f, "payload size {n} is over {MAX_PAYLOAD}")
            }
            Malformed::PayloadTooLarge(None) => write!(f, "payload size does not fit in 64 bits"),
        }
    }
}

impl std::error::Error for MalformedFrame {}

/// Splits one request frame off the front of `buf` (server side).
///
/// `Ok(None)`: more bytes are needed. The header is judged as soon as its 32 bytes are
/// here, so a bad one is refused before its body is waited for.
pub fn split_request(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, MalformedFrame> {
    let Some(h) = Header::parse(buf) else {
        return Ok(None);
    };
    let bad = |reason| MalformedFrame { op: h.op, reason };
    if Operation::from_u8(h.op).is_none() {
        return Err(bad(Malformed::UnknownOperation));
    }
    if h.state != State::Request as u8 {
        return Err(bad(Malformed::NotARequest(h.state)));
    }
    let Some(payload_len) = h.payload_within(MAX_PAYLOAD) else {
        return Err(bad(Malformed::PayloadTooLarge(h.payload_len)));
    };
    Ok(split_body(buf, h, payload_len))
}

/// Why a reply could not be framed (client side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyFrameError {
    /// The announced payload is larger than any reply of this protocol.
    PayloadTooLarge(Option<u64>),
}

impl fmt::Display for ReplyFrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyFrameError::PayloadTooLarge(Some(n)) => write!(f, "reply payload of {n} bytes"),
            ReplyFrameError::PayloadTooLarge(None) => f.write_str("reply payload size overflows"),
        }
    }
}

impl std::error::Error for ReplyFrameError {}

/// Splits one reply frame off the front of `buf` (client side). `Ok(None)`: need more bytes.
pub fn split_reply(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ReplyFrameError> {
    let Some(h) = Header::parse(buf) else {
        return Ok(None);
    };
    let Some(payload_len) = h.payload_within(MAX_REPLY_PAYLOAD) else {
        return Err(ReplyFrameError::PayloadTooLarge(h.payload_len));
    };
    Ok(split_body(buf, h, payload_len))
}

fn split_body(buf: &[u8], h: Header, payload_len: usize) -> Option<(Frame<'_>, usize)> {
    let mut r = Reader::new(&buf[HEADER_LEN..]);
    let room = r.take(usize::from(h.room_len))?;
    let payload = r.take(payload_len)?;
    let frame = Frame {
        op: h.op,
        state: h.state,
        room,
        payload,
    };
    Some((frame, HEADER_LEN + room.len() + payload_len))
}

/// Appends a whole frame to `out`.
pub fn encode_frame(out: &mut Vec<u8>, op: u8, state: State, room: &[u8], payload: &[u8]) {
    let room_len = u8::try_from(room.len()).expect("room names are at most 255 bytes");
    encode_header(out, room_len, op, state, payload.len());
    out.extend_from_slice(room);
    out.extend_from_slice(payload);
}

/// A well-formed request, its text fields checked, borrowing from the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Create `room` with `user` as host.
    Create {
        /// Room name.
        room: &'a str,
        /// The host's user name.
        user: &'a str,
        /// Password bytes; empty means none.
        password: &'a [u8],
        /// Requested capacity (host included); 0 asks for the server's default.
        capacity: u16,
        /// (v1.1) The key a later RESUME must show, 16..=64 bytes; `None` when not sent.
        resume_key: Option<&'a [u8]>,
    },
    /// Join `room` as `user`.
    Join {
        /// Room name.
        room: &'a str,
        /// User name.
        user: &'a str,
        /// Password bytes (ignored by a room without one).
        password: &'a [u8],
        /// (v1.1) The key a later RESUME must show, 16..=64 bytes; `None` when not sent.
        resume_key: Option<&'a [u8]>,
    },
    /// Leave `room`; the token proves membership.
    Leave {
        /// Room name.
        room: &'a str,
        /// The member's token.
        token: &'a [u8],
    },
    /// List the rooms.
    List,
    /// (v1.1, §5.5) Move the member holding `token` to the address of this request.
    Resume {
        /// Room name.
        room: &'a str,
        /// The member's token (1..=255 bytes).
        token: &'a [u8],
        /// The resume key given at CREATE or JOIN (16..=64 bytes).
        resume_key: &'a [u8],
    },
}

/// A field of a well-framed request that breaks the protocol's rules: answered
/// INVALID_REQUEST with the room name echoed, and the connection stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidField {
    /// CREATE, JOIN and LEAVE need a room name.
    EmptyRoomName,
    /// The room name is not a text field.
    RoomName(TextError),
    /// The user name is empty.
    EmptyUserName,
    /// The user name is not a text field.
    UserName(TextError),
    /// The payload is shorter or longer than its fields say.
    PayloadLength,
    /// LEAVE carries a token of 1..=255 bytes.
    TokenLength,
    /// LIST has no room name and no payload.
    ListNotEmpty,
    /// A name or password over 255 bytes cannot be sent (found when encoding).
    TooLong,
    /// (v1.1) A resume key is 16..=64 bytes.
    ResumeKeyLength,
}

impl fmt::Display for InvalidField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InvalidField::EmptyRoomName => f.write_str("room name is empty"),
            InvalidField::RoomName(e) => write!(f, "room name {e}"),
            InvalidField::EmptyUserName => f.write_str("user name is empty"),
            InvalidField::UserName(e) => write!(f, "user name {e}"),
            InvalidField::PayloadLength => f.write_str("payload length does not match its fields"),
            InvalidField::TokenLength => f.write_str("token must be 1..=255 bytes"),
            InvalidField::ListNotEmpty => f.write_str("LIST takes no room name and no payload"),
            InvalidField::TooLong => f.write_str("names and passwords are at most 255 bytes"),
            InvalidField::ResumeKeyLength => {
                write!(
                    f,
                    "resume key must be {MIN_RESUME_KEY}..={MAX_RESUME_KEY} bytes"
                )
            }
        }
    }
}

impl std::error::Error for InvalidField {}

impl<'a> Request<'a> {
    /// Checks the fields of a frame that [`split_request`] accepted.
    pub fn parse(frame: &Frame<'a>) -> Result<Request<'a>, InvalidField> {
        let op = Operation::from_u8(frame.op).ok_or(InvalidField::PayloadLength)?;
        if op == Operation::List {
            if !frame.room.is_empty() || !frame.payload.is_empty() {
                return Err(InvalidField::ListNotEmpty);
            }
            return Ok(Request::List);
        }
        if frame.room.is_empty() {
            return Err(InvalidField::EmptyRoomName);
        }
        let room = text(frame.room).map_err(InvalidField::RoomName)?;
        let mut r = Reader::new(frame.payload);
        match op {
            Operation::Create | Operation::Join => {
                let user = r.u8_prefixed().ok_or(InvalidField::PayloadLength)?;
                let password = r.u8_prefixed().ok_or(InvalidField::PayloadLength)?;
                let capacity = if op == Operation::Create {
                    Some(r.u16().ok_or(InvalidField::PayloadLength)?)
                } else {
                    None
                };
                // v1.1: an optional resume key, and then nothing.
                let resume_key = if r.is_empty() {
                    None
                } else {
                    Some(resume_key(&mut r)?)
                };
                if !r.is_empty() {
                    return Err(InvalidField::PayloadLength);
                }
                if user.is_empty() {
                    return Err(InvalidField::EmptyUserName);
                }
                let user = text(user).map_err(InvalidField::UserName)?;
                Ok(match capacity {
                    Some(capacity) => Request::Create {
                        room,
                        user,
                        password,
                        capacity,
                        resume_key,
                    },
                    None => Request::Join {
                        room,
                        user,
                        password,
                        resume_key,
                    },
                })
            }
            Operation::Leave => {
                let token = r.rest();
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err(InvalidField::TokenLength);
                }
                Ok(Request::Leave { room, token })
            }
            Operation::Resume => {
                let token = r.u8_prefixed().ok_or(InvalidField::PayloadLength)?;
                if token.is_empty() {
                    return Err(InvalidField::TokenLength);
                }
                let resume_key = resume_key(&mut r)?;
                if !r.is_empty() {
                    return Err(InvalidField::PayloadLength);
                }
                Ok(Request::Resume {
                    room,
                    token,
                    resume_key,
                })
            }
            Operation::List => unreachable!("handled above"),
        }
    }

    /// The operation of this request.
    pub fn operation(&self) -> Operation {
        match self {
            Request::Create { .. } => Operation::Create,
            Request::Join { .. } => Operation::Join,
            Request::Leave { .. } => Operation::Leave,
            Request::List => Operation::List,
            Request::Resume { .. } => Operation::Resume,
        }
    }

    /// The room name this request is about (empty for LIST).
    pub fn room(&self) -> &'a str {
        match self {
            Request::Create { room, .. } | Request::Join { room, .. } => room,
            Request::Leave { room, .. } | Request::Resume { room, .. } => room,
            Request::List => "",
        }
    }

    /// Appends this request as a REQUEST frame (client side).
    ///
    /// Fails with the field that cannot be carried (a name over 255 bytes, say); nothing is
    /// written then.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), InvalidField> {
        let room = self.room().as_bytes();
        if room.len() > super::MAX_ROOM_NAME {
            return Err(InvalidField::TooLong);
        }
        let mut payload = [0u8; 2 + MAX_USER_NAME + 255 + 2 + 1 + MAX_RESUME_KEY];
        let n = match *self {
            Request::Create {
                user,
                password,
                capacity,
                resume_key,
                ..
            } => {
                let n = put_user_password(&mut payload, user, password)?;
                payload[n..n + 2].copy_from_slice(&capacity.to_be_bytes());
                put_resume_key(&mut payload[n + 2..], resume_key)? + n + 2
            }
            Request::Join {
                user,
                password,
                resume_key,
                ..
            } => {
                let n = put_user_password(&mut payload, user, password)?;
                put_resume_key(&mut payload[n..], resume_key)? + n
            }
            Request::Resume {
                token, resume_key, ..
            } => {
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err(InvalidField::TokenLength);
                }
                payload[0] = token.len() as u8;
                payload[1..1 + token.len()].copy_from_slice(token);
                let n = 1 + token.len();
                put_resume_key(&mut payload[n..], Some(resume_key))? + n
            }
            Request::Leave { token, .. } => {
                if token.is_empty() || token.len() > MAX_TOKEN {
                    return Err(InvalidField::TokenLength);
                }
                payload[..token.len()].copy_from_slice(token);
                token.len()
            }
            Request::List => 0,
        };
        encode_frame(
            out,
            self.operation() as u8,
            State::Request,
            room,
            &payload[..n],
        );
        Ok(())
    }
}

/// Reads `ResumeKeySize` and `ResumeKey` (16..=64 bytes).
fn resume_key<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], InvalidField> {
    let key = r.u8_prefixed().ok_or(InvalidField::PayloadLength)?;
    if !(MIN_RESUME_KEY..=MAX_RESUME_KEY).contains(&key.len()) {
        return Err(InvalidField::ResumeKeyLength);
    }
    Ok(key)
}

/// Writes an optional resume key at the start of `buf`; returns the bytes written.
fn put_resume_key(buf: &mut [u8], key: Option<&[u8]>) -> Result<usize, InvalidField> {
    let Some(key) = key else { return Ok(0) };
    if !(MIN_RESUME_KEY..=MAX_RESUME_KEY).contains(&key.len()) {
        return Err(InvalidField::ResumeKeyLength);
    }
    buf[0] = key.len() as u8;
    buf[1..1 + key.len()].copy_from_slice(key);
    Ok(1 + key.len())
}

fn put_user_password(buf: &mut [u8], user: &str, password: &[u8]) -> Result<usize, InvalidField> {
    let user = user.as_bytes();
    if user.is_empty() {
        return Err(InvalidField::EmptyUserName);
    }
    if user.len() > MAX_USER_NAME || password.len() > 255 {
        return Err(InvalidField::TooLong);
    }
    let mut n = 0;
    for field in [user, password] {
        buf[n] = field.len() as u8;
        buf[n + 1..n + 1 + field.len()].copy_from_slice(field);
        n += 1 + field.len();
    }
    Ok(n)
}

/// Appends a RESPONSE frame carrying `status`.
pub fn encode_response(out: &mut Vec<u8>, op: u8, room: &[u8], status: Status) {
    encode_frame(out, op, State::Response, room, &[status as u8]);
}

/// What CREATE, JOIN and RESUME hand a member in their COMPLETE frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The member's token (1..=255 bytes).
    pub token: &'a [u8],
    /// Port of the data plane, on the address the TCP connection went to.
    pub udp_port: u16,
    /// Seconds of silence after which the server drops the member.
    pub idle_timeout: u16,
}

impl<'a> Grant<'a> {
    /// Appends the COMPLETE frame for a CREATE, JOIN or RESUME.
    pub fn encode(&self, out: &mut Vec<u8>, op: Operation, room: &[u8]) {
        let mut payload = [0u8; 1 + MAX_TOKEN + 4];
        let t = self.token.len().min(MAX_TOKEN);
        payload[0] = t as u8;
        payload[1..1 + t].copy_from_slice(&self.token[..t]);
        payload[1 + t..3 + t].copy_from_slice(&self.udp_port.to_be_bytes());
        payload[3 + t..5 + t].copy_from_slice(&self.idle_timeout.to_be_bytes());
        encode_frame(out, op as u8, State::Complete, room, &payload[..5 + t]);
    }

    /// Reads a COMPLETE payload of CREATE or JOIN.
    pub fn parse(payload: &'a [u8]) -> Option<Grant<'a>> {
        let mut r = Reader::new(payload);
        let token = r.u8_prefixed().filter(|t| !t.is_empty())?;
        let udp_port = r.u16()?;
        let idle_timeout = r.u16()?;
        r.is_empty().then_some(Grant {
            token,
            udp_port,
            idle_timeout,
        })
    }
}

/// One room in a LIST reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomSummary<'a> {
    /// Room name.
    pub name: &'a str,
    /// Members, bound or not yet.
    pub members: u16,
    /// Effective capacity.
    pub capacity: u16,
    /// Whether JOIN needs a password.
    pub password: bool,
}

/// Appends the COMPLETE frame of LIST: as many rooms, in the order given, as fit in
/// [`MAX_PAYLOAD`] bytes. Returns how many were listed.
pub fn encode_list<'a>(out: &mut Vec<u8>, rooms: impl IntoIterator<Item = RoomSummary<'a>>) -> u16 {
    let start = out.len();
    encode_header(out, 0, Operation::List as u8, State::Complete, 0);
    let count_at = out.len();
    out.extend_from_slice(&[0, 0]);
    let mut count: u16 = 0;
    for room in rooms {
        let name = room.name.as_bytes();
        let entry = 1 + name.len() + 5;
        let payload_len = out.len() - count_at;
        if name.len() > super::MAX_ROOM_NAME
            || payload_len + entry > MAX_PAYLOAD
            || count == u16::MAX
        {
            break;
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name);
        out.extend_from_slice(&room.members.to_be_bytes());
        out.extend_from_slice(&room.capacity.to_be_bytes());
        out.push(u8::from(room.password));
        count += 1;
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    let payload_len = (out.len() - count_at) as u64;
    // The payload size, now known, fills the header's last 8 bytes: the low end of its
    // 29-byte size field, as `encode_header` wrote it.
    let size_at = start + HEADER_LEN - size_of::<u64>();
    out[size_at..start + HEADER_LEN].copy_from_slice(&payload_len.to_be_bytes());
    count
}

/// Reads a LIST COMPLETE payload; `None` if it is cut short, has trailing bytes, or holds
/// a name that is not text.
pub fn parse_list(payload: &[u8]) -> Option<Vec<RoomSummary<'_>>> {
    let mut r = Reader::new(payload);
    let count = r.u16()?;
    let mut rooms = Vec::with_capacity(usize::from(count).min(payload.len() / 6));
    for _ in 0..count {
        let name = text(r.u8_prefixed()?).ok()?;
        let members = r.u16()?;
        let capacity = r.u16()?;
        let flags = r.u8()?;
        rooms.push(RoomSummary {
            name,
            members,
            capacity,
            password: flags & 1 != 0,
        });
    }
    r.is_empty().then_some(rooms)
}

/// Reads the status byte of a RESPONSE frame. A frame with operation 0 is the server's
/// connection-limit answer, whatever byte it carries.
pub fn parse_status(frame: &Frame<'_>) -> Option<Status> {
    if frame.state != State::Response as u8 || frame.payload.len() != 1 {
        return None;
    }
    if frame.op == 0 {
        return Some(Status::ServerFull);
    }
    Status::from_u8(frame.payload[0])
}

#[cfg(test)]
mod tests;
