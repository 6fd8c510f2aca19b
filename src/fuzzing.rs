//! Fuzz bodies: each takes arbitrary bytes and **asserts** a property of the wire codecs or
//! of the relay (it panics on a violation, which is what a fuzzer reports).
//!
//! They live in the library, not in `fuzz/`, so that `cargo test` can replay the committed
//! corpus through the very same code (`tests/fuzz_corpus.rs`) and CI needs no fuzzer. The
//! cargo-fuzz targets in `fuzz/fuzz_targets/` are three-line wrappers around them.
//!
//! * [`tcrp_stream`]: the server's TCRP framing fed one byte stream in arbitrary chunks.
//! * [`datagram`]: the client-to-server datagram decoder and encoder.
//! * [`events`]: the client's event decoder, and its reply decoders (status, grant, LIST).
//! * [`relay`]: the whole sans-IO relay driven by a sequence of requests, datagrams and
//!   clock steps, its invariants checked after every step.
//!
//! Every body is deterministic (a seeded RNG, virtual time) and takes well under a
//! millisecond on a typical input.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::event::{
    EVENT_OVERHEAD, Event, EventBuf, EventError, EventKind, Events, Gone, RawEvents, SyncInfo,
};
use crate::protocol::frame::{
    Frame, Grant, HEADER_LEN, Header, MAX_REPLY_PAYLOAD, MAX_REQUEST_FRAME, MalformedFrame,
    Request, encode_frame, encode_list, encode_response, parse_list, parse_status, split_reply,
    split_request,
};
use crate::protocol::{
    MAX_DATAGRAM, MAX_MESSAGE, MAX_PAYLOAD, Operation, State, Status, TOKEN_LEN, next_seq, text,
};
use crate::server::counters::DropReason;
use crate::server::transmit::{Dest, Recorder, Transmit};
use crate::server::{Config, DatagramOutcome, Relay};

// ---------------------------------------------------------------------------------------
// 1. TCRP stream
// ---------------------------------------------------------------------------------------

/// Most chunk sizes a [`tcrp_stream`] input names (they are used in a cycle).
const MAX_CHUNK_SIZES: usize = 8;

/// Builds a [`tcrp_stream`] input from chunk sizes (each 1..=256 bytes, used in a cycle; at
/// most 8 are kept) and the byte stream. For structured generators such as proptest.
pub fn tcrp_stream_input(chunks: &[u8], stream: &[u8]) -> Vec<u8> {
    let chunks = &chunks[..chunks.len().min(MAX_CHUNK_SIZES)];
    let mut out = Vec::with_capacity(1 + chunks.len() + stream.len());
    // The first byte says how many chunk sizes follow (0 means one chunk: the whole stream).
    out.push(chunks.len() as u8);
    out.extend_from_slice(chunks);
    out.extend_from_slice(stream);
    out
}

/// How one framing pass over a stream ended.
#[derive(Debug, PartialEq, Eq)]
enum StreamEnd {
    /// Waiting for more bytes; this many are buffered.
    Incomplete(usize),
    /// A malformed header: the server answers INVALID_REQUEST and closes.
    Malformed(MalformedFrame),
}

/// A frame as split off, owned, with the bytes it took.
#[derive(Debug, PartialEq, Eq)]
struct Split {
    op: u8,
    state: u8,
    room: Vec<u8>,
    payload: Vec<u8>,
    bytes: Vec<u8>,
}

/// Splits every whole frame off the front of `buf` as the server does, checking each one;
/// returns how many bytes were consumed and why it stopped.
fn split_all(buf: &[u8], frames: &mut Vec<Split>) -> (usize, Option<MalformedFrame>) {
    let mut consumed = 0;
    loop {
        let rest = &buf[consumed..];
        match split_request(rest) {
            Ok(None) => {
                check_incomplete(rest);
                return (consumed, None);
            }
            Ok(Some((frame, n))) => {
                assert!(n <= rest.len(), "consumed {n} of {} bytes", rest.len());
                check_request_frame(&frame, &rest[..n]);
                frames.push(Split {
                    op: frame.op,
                    state: frame.state,
                    room: frame.room.to_vec(),
                    payload: frame.payload.to_vec(),
                    bytes: rest[..n].to_vec(),
                });
                consumed += n;
            }
            Err(bad) => {
                check_malformed(rest, bad);
                return (consumed, Some(bad));
            }
        }
    }
}

/// `Ok(None)` from `split_request`: the frame it waits for must fit in the server's input
/// buffer, and must really be longer than what is here.
fn check_incomplete(rest: &[u8]) {
    assert!(
        rest.len() < MAX_REQUEST_FRAME,
        "split_request waits with {} bytes buffered (limit {MAX_REQUEST_FRAME})",
        rest.len()
    );
    if let Some(h) = Header::parse(rest) {
        let payload = h.payload_len.expect("an oversized header was not refused");
        let want = HEADER_LEN as u64 + u64::from(h.room_len) + payload;
        assert!(
            want <= MAX_REQUEST_FRAME as u64,
            "waits for a {want}-byte frame"
        );
        assert!(
            want > rest.len() as u64,
            "a whole {want}-byte frame is buffered"
        );
    }
}

/// A split frame is exactly its header, room name and payload; re-encoding it gives the
/// bytes it was read from, and a request that parses re-encodes to the same bytes too.
fn check_request_frame(frame: &Frame<'_>, bytes: &[u8]) {
    assert_eq!(frame.state, State::Request as u8, "a non-request was split");
    assert!(Operation::from_u8(frame.op).is_some(), "unknown op split");
    assert!(frame.payload.len() <= MAX_PAYLOAD);
    assert_eq!(
        bytes.len(),
        HEADER_LEN + frame.room.len() + frame.payload.len()
    );
    let mut again = Vec::with_capacity(bytes.len());
    encode_frame(
        &mut again,
        frame.op,
        State::Request,
        frame.room,
        frame.payload,
    );
    assert_eq!(again, bytes, "framing is not lossless");
    if let Ok(req) = Request::parse(frame) {
        assert_eq!(req.operation() as u8, frame.op);
        assert_eq!(req.room().as_bytes(), frame.room);
        let mut enc = Vec::with_capacity(bytes.len());
        req.encode(&mut enc)
            .expect("a parsed request must re-encode");
        assert_eq!(enc, bytes, "request {req:?} re-encodes differently");
    }
}

/// A malformed verdict names the first broken rule of the header, in the server's order.
fn check_malformed(rest: &[u8], bad: MalformedFrame) {
    use crate::protocol::frame::Malformed;
    let h = Header::parse(rest).expect("judged malformed before a whole header");
    assert_eq!(bad.op, h.op, "the op to echo");
    let want = if Operation::from_u8(h.op).is_none() {
        Malformed::UnknownOperation
    } else if h.state != State::Request as u8 {
        Malformed::NotARequest(h.state)
    } else {
        assert!(
            h.payload_len.is_none_or(|n| n > MAX_PAYLOAD as u64),
            "a good header was refused: {h:?}"
        );
        Malformed::PayloadTooLarge(h.payload_len)
    };
    assert_eq!(bad.reason, want);
}

/// Fuzz body: TCRP framing of one stream delivered in arbitrary chunks.
///
/// Input: a count byte `k` (mod 9), then `k` chunk sizes (byte + 1, used in a cycle; none
/// means the stream arrives whole), then the stream. The chunks go through a buffer bounded
/// at [`MAX_REQUEST_FRAME`], split as `ocm-server` does (whole frames off the front, stop at
/// the first malformed header). Asserts that the frames, the final verdict and the bytes left
/// over equal those of splitting the whole stream at once; that nothing is consumed beyond
/// the input; that every split frame re-encodes to exactly the bytes it took (and every
/// parsed request too); and that no frame longer than the buffer is ever waited for.
pub fn tcrp_stream(data: &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let k = usize::from(k) % (MAX_CHUNK_SIZES + 1);
    let (sizes, stream) = rest.split_at(k.min(rest.len()));
    let sizes: Vec<usize> = sizes.iter().map(|&b| usize::from(b) + 1).collect();

    // All at once.
    let mut whole_frames = Vec::new();
    let (whole_consumed, whole_bad) = split_all(stream, &mut whole_frames);
    assert!(whole_consumed <= stream.len());
    let whole_end = match whole_bad {
        Some(bad) => StreamEnd::Malformed(bad),
        None => StreamEnd::Incomplete(stream.len() - whole_consumed),
    };

    // In chunks, through a bounded buffer, as the server reads.
    let mut input: Vec<u8> = Vec::with_capacity(MAX_REQUEST_FRAME);
    let mut frames = Vec::new();
    let mut fed = 0;
    let mut total_consumed = 0;
    let mut end = None;
    let mut chunk = 0;
    'feed: while fed < stream.len() {
        let size = sizes.get(chunk % sizes.len().max(1)).copied();
        chunk += 1;
        let mut left = size.unwrap_or(stream.len()).min(stream.len() - fed);
        while left > 0 {
            // A read never gets more than the buffer's free space.
            let space = MAX_REQUEST_FRAME - input.len();
            assert!(space > 0, "the input buffer is full and no frame was split");
            let n = left.min(space);
            input.extend_from_slice(&stream[fed..fed + n]);
            fed += n;
            left -= n;
            let (consumed, bad) = split_all(&input, &mut frames);
            total_consumed += consumed;
            if let Some(bad) = bad {
                end = Some(StreamEnd::Malformed(bad));
                break 'feed;
            }
            input.drain(..consumed);
        }
    }
    let end = end.unwrap_or(StreamEnd::Incomplete(input.len()));
    assert!(total_consumed <= fed && fed <= stream.len());
    assert_eq!(frames, whole_frames, "chunking changed the frames");
    assert_eq!(end, whole_end, "chunking changed how the stream ends");
    assert_eq!(total_consumed, whole_consumed);
}

// ---------------------------------------------------------------------------------------
// 2. Datagram
// ---------------------------------------------------------------------------------------

/// Fuzz body: the client-to-server datagram.
///
/// Asserts that `parse` refuses exactly what the protocol refuses, for the reason it
/// names (oversize iff over 4096 bytes; malformed iff the sizes do not fit; message too long
/// iff over 3800; bad text iff not a text field), and that an accepted datagram encodes back
/// to the same bytes. Then builds a datagram from the input's pieces and checks the other
/// direction: what `encode` accepts, `parse` reads back unchanged.
pub fn datagram(data: &[u8]) {
    check_client_datagram(data);
    let parsed = ChatDatagram::parse(data);
    match expected_datagram_verdict(data) {
        Ok(()) => {
            let d = parsed.unwrap_or_else(|e| panic!("refused a good datagram: {e:?}"));
            assert_eq!(d.is_heartbeat(), d.message.is_empty());
            let mut out = [0u8; MAX_DATAGRAM];
            let n = d.encode(&mut out).expect("a parsed datagram re-encodes");
            assert_eq!(&out[..n], data, "re-encoding differs");
        }
        Err(want) => assert_eq!(parsed, Err(want), "wrong verdict"),
    }

    // The other way: pieces of the input as room, token and message.
    if data.len() < 2 {
        return;
    }
    let (rl, tl) = (usize::from(data[0]), usize::from(data[1]) * 2);
    let body = &data[2..];
    let room = &body[..rl.min(body.len())];
    let token = &body[room.len()..(room.len() + tl).min(body.len())];
    let msg_bytes = &body[room.len() + token.len()..];
    let msg = String::from_utf8_lossy(msg_bytes);
    let d = ChatDatagram {
        room,
        token,
        message: &msg,
    };
    let mut out = vec![0u8; MAX_DATAGRAM + 512];
    let want_len = 2 + room.len() + token.len() + msg.len();
    let sizes_ok = (1..=255).contains(&room.len()) && (1..=255).contains(&token.len());
    let text_ok = msg.len() <= MAX_MESSAGE && text(msg.as_bytes()).is_ok();
    match d.encode(&mut out) {
        Ok(n) => {
            assert!(sizes_ok && text_ok && want_len <= MAX_DATAGRAM);
            assert_eq!(n, want_len);
            assert_eq!(ChatDatagram::parse(&out[..n]), Ok(d), "encode/parse differ");
        }
        Err(DatagramError::Oversize) => assert!(sizes_ok && text_ok && want_len > MAX_DATAGRAM),
        Err(DatagramError::MessageTooLong) => assert!(msg.len() > MAX_MESSAGE),
        Err(DatagramError::BadText(e)) => {
            assert!(msg.len() <= MAX_MESSAGE);
            assert_eq!(text(msg.as_bytes()), Err(e));
        }
        Err(DatagramError::Malformed) => assert!(text_ok && !sizes_ok),
    }
}

/// What PROTOCOL.md §2.1 says about these bytes, written independently of the decoder.
fn expected_datagram_verdict(data: &[u8]) -> Result<(), DatagramError> {
    if data.len() > MAX_DATAGRAM {
        return Err(DatagramError::Oversize);
    }
    if data.len() < 2 || data[0] == 0 || data[1] == 0 {
        return Err(DatagramError::Malformed);
    }
    let head = 2 + usize::from(data[0]) + usize::from(data[1]);
    if data.len() < head {
        return Err(DatagramError::Malformed);
    }
    let msg = &data[head..];
    if msg.len() > MAX_MESSAGE {
        return Err(DatagramError::MessageTooLong);
    }
    text(msg).map(|_| ()).map_err(DatagramError::BadText)
}

// ---------------------------------------------------------------------------------------
// 3. Events and replies (the client's decoders)
// ---------------------------------------------------------------------------------------

/// Fuzz body: what a client decodes.
///
/// Events: every event [`Events`] yields re-encodes to the bytes it was read from; the
/// first error ends the walk for good, and is `Truncated` exactly when the bytes run out
/// inside the event; without an error every byte is consumed. The events also go through an
/// [`EventBuf`], which must hold the same bytes.
///
/// Replies: the same bytes as a TCRP reply stream, split with `split_reply`; each frame
/// re-encodes to its bytes, and its status, grant or LIST payload decodes only when well
/// formed and re-encodes to the same payload.
pub fn events(data: &[u8]) {
    check_events(data);
    check_replies(data);
}

fn check_events(data: &[u8]) {
    let mut it = Events::new(data);
    let mut at = 0;
    let mut buf = EventBuf::default();
    let mut buffered = 0;
    let mut full = false;
    let mut scratch = [0u8; EVENT_OVERHEAD + 255 + 65535];
    check_raw_events(data, &mut scratch);
    loop {
        // The text view skips GONE and SYNC events (binary bodies); the buffer, a copy of
        // the input's prefix, stops before the first.
        let skipped = skipped_binary(&data[at..]);
        at += skipped;
        full |= skipped > 0;
        match it.next() {
            None => {
                assert_eq!(at, data.len(), "stopped early without an error");
                break;
            }
            Some(Ok(ev)) => {
                let n = ev.encode(&mut scratch).expect("a read event re-encodes");
                assert_eq!(n, ev.len());
                assert!(at + n <= data.len(), "consumed more than the input");
                assert_eq!(
                    &scratch[..n],
                    &data[at..at + n],
                    "event {ev:?} re-encodes differently"
                );
                assert_eq!(ev.known_kind().map(|k| k as u8), known(ev.kind));
                // Push until the first event that does not fit; after it, a smaller event
                // could fit again, but the buffer would then no longer be a prefix.
                if !full && buf.fits(&ev) {
                    assert!(buf.push(&ev));
                    buffered = at + n;
                } else if !full {
                    assert!(!buf.push(&ev));
                    full = true;
                }
                at += n;
            }
            Some(Err(e)) => {
                assert_eq!(e, expected_event_error(&data[at..]), "at offset {at}");
                for _ in 0..3 {
                    assert!(it.next().is_none(), "an event after an error");
                }
                break;
            }
        }
    }
    // Events pushed until the first that did not fit: the same bytes as the input prefix.
    assert_eq!(buf.bytes(), &data[..buffered]);
    assert!(buf.bytes().len() <= MAX_DATAGRAM);
}

/// v1.1: the one dispatching parse agrees with the parser the first byte picks, and a
/// control datagram that parses re-encodes to its bytes.
fn check_client_datagram(data: &[u8]) {
    use crate::protocol::control::{ClientDatagram, ClientDatagramError, ControlDatagram};
    match (ClientDatagram::parse(data), data.first()) {
        (Ok(ClientDatagram::Control(d)), Some(0)) => {
            assert_eq!(ControlDatagram::parse(data), Ok(d));
            let mut out = [0u8; MAX_DATAGRAM];
            let n = d
                .encode(&mut out)
                .expect("a parsed control datagram re-encodes");
            assert_eq!(&out[..n], data, "control re-encoding differs");
        }
        (Err(ClientDatagramError::Control(e)), Some(0)) => {
            assert_eq!(ControlDatagram::parse(data), Err(e));
        }
        (Ok(ClientDatagram::Chat(d)), first) => {
            assert_ne!(first, Some(&0));
            assert_eq!(ChatDatagram::parse(data), Ok(d));
        }
        (Err(ClientDatagramError::Chat(e)), first) => {
            assert_ne!(first, Some(&0));
            assert_eq!(ChatDatagram::parse(data), Err(e));
        }
        (other, first) => panic!("{other:?} for a datagram starting {first:?}"),
    }
}

fn known(kind: u8) -> Option<u8> {
    (1..=9).contains(&kind).then_some(kind)
}

/// Bytes of the GONE and SYNC events at the start of `rest`, which [`Events`] skips.
fn skipped_binary(rest: &[u8]) -> usize {
    let mut n = 0;
    for ev in RawEvents::new(rest) {
        match ev {
            Ok(ev) if matches!(ev.kind, 7 | 8) => n += ev.len(),
            _ => break,
        }
    }
    n
}

/// The raw view: every event re-encodes to its bytes; GONE and SYNC bodies decode only
/// when well formed and re-encode to the same body.
fn check_raw_events(data: &[u8], scratch: &mut [u8]) {
    let mut at = 0;
    for ev in RawEvents::new(data) {
        let Ok(ev) = ev else { break };
        let n = ev.encode(scratch).expect("a read event re-encodes");
        assert_eq!(&scratch[..n], &data[at..at + n]);
        at += n;
        match ev.known_kind() {
            Some(EventKind::Gone) => {
                if let Ok(g) = Gone::parse(ev.body) {
                    assert_eq!(&g.body()[..], ev.body);
                } else {
                    let b = ev.body;
                    let well_formed = b.len() == 6 && b[..4] != [0; 4] && b[4..] != [0; 2];
                    assert!(!well_formed, "a good GONE body was refused");
                }
            }
            Some(EventKind::Sync) => match SyncInfo::parse(ev.body) {
                Ok(s) => assert_eq!(&s.body()[..], ev.body),
                Err(_) => assert_ne!(ev.body.len(), SyncInfo::BODY_LEN),
            },
            _ => {}
        }
    }
}

/// Why the event at the start of `rest` cannot be read, by PROTOCOL.md §2.2.
fn expected_event_error(rest: &[u8]) -> EventError {
    let ulen = match rest.get(5) {
        Some(&u) => usize::from(u),
        None => return EventError::Truncated,
    };
    let Some(b) = rest.get(6 + ulen..8 + ulen) else {
        return EventError::Truncated;
    };
    let blen = usize::from(u16::from_be_bytes([b[0], b[1]]));
    if rest.len() < 8 + ulen + blen {
        return EventError::Truncated;
    }
    let user = &rest[6..6 + ulen];
    let body = &rest[8 + ulen..8 + ulen + blen];
    let binary = matches!(rest[0], 7 | 8);
    assert!(
        text(user).is_err() || (!binary && text(body).is_err()),
        "a well-formed event was refused"
    );
    EventError::BadText
}

fn check_replies(data: &[u8]) {
    let mut at = 0;
    loop {
        let rest = &data[at..];
        match split_reply(rest) {
            Ok(None) => {
                if let Some(h) = Header::parse(rest) {
                    let want = HEADER_LEN as u64 + u64::from(h.room_len) + h.payload_len.unwrap();
                    assert!(want > rest.len() as u64, "a whole reply is buffered");
                }
                break;
            }
            Ok(Some((frame, n))) => {
                assert!(n <= rest.len());
                assert_eq!(n, HEADER_LEN + frame.room.len() + frame.payload.len());
                assert!(frame.payload.len() <= MAX_REPLY_PAYLOAD);
                let bytes = &rest[..n];
                // The header re-encodes byte for byte (whatever its state byte).
                let mut h = vec![frame.room.len() as u8, frame.op, frame.state];
                h.extend_from_slice(&[0; 21]);
                h.extend_from_slice(&(frame.payload.len() as u64).to_be_bytes());
                assert_eq!(&h[..], &bytes[..HEADER_LEN]);
                check_reply_payloads(&frame, bytes);
                at += n;
            }
            Err(e) => {
                let h = Header::parse(rest).expect("refused before a whole header");
                assert!(h.payload_len.is_none_or(|n| n > MAX_REPLY_PAYLOAD as u64));
                assert_eq!(
                    e,
                    crate::protocol::frame::ReplyFrameError::PayloadTooLarge(h.payload_len)
                );
                break;
            }
        }
    }
}

fn check_reply_payloads(frame: &Frame<'_>, bytes: &[u8]) {
    // Status.
    let status = parse_status(frame);
    let is_response = frame.state == State::Response as u8 && frame.payload.len() == 1;
    if !is_response {
        assert_eq!(status, None);
    } else if frame.op == 0 {
        assert_eq!(status, Some(Status::ServerFull));
    } else {
        assert_eq!(status, Status::from_u8(frame.payload[0]));
        if let Some(s) = status {
            let mut again = Vec::new();
            encode_response(&mut again, frame.op, frame.room, s);
            assert_eq!(again, bytes, "RESPONSE re-encodes differently");
        }
    }
    // Grant (CREATE or JOIN COMPLETE).
    if let Some(g) = Grant::parse(frame.payload) {
        assert!(!g.token.is_empty());
        assert_eq!(frame.payload.len(), 1 + g.token.len() + 4);
        let mut again = Vec::new();
        g.encode(&mut again, Operation::Join, frame.room);
        assert_eq!(&again[HEADER_LEN + frame.room.len()..], frame.payload);
    } else {
        let p = frame.payload;
        let well_formed = !p.is_empty() && p[0] != 0 && p.len() == 1 + usize::from(p[0]) + 4;
        assert!(!well_formed, "a good grant was refused");
    }
    // LIST COMPLETE.
    if let Some(rooms) = parse_list(frame.payload) {
        let mut again = Vec::new();
        let count = encode_list(&mut again, rooms.iter().copied());
        let (f, n) = split_reply(&again)
            .unwrap()
            .expect("encode_list makes a whole frame");
        assert_eq!(n, again.len());
        assert!(f.payload.len() <= MAX_PAYLOAD);
        let relisted = parse_list(f.payload).expect("encode_list output parses");
        assert_eq!(usize::from(count), relisted.len());
        assert_eq!(&rooms[..relisted.len()], &relisted[..], "LIST round trip");
        // The input had only flag bits 0/1 and fits: then the bytes are the same too.
        let flags_plain = flags_are_plain(frame.payload);
        if frame.payload.len() <= MAX_PAYLOAD && flags_plain {
            assert_eq!(f.payload, frame.payload, "LIST re-encodes differently");
        }
    }
}

/// Whether every Flags byte of a (well-formed) LIST payload is 0 or 1.
fn flags_are_plain(p: &[u8]) -> bool {
    let mut i = 2;
    while i < p.len() {
        let flags = i + 1 + usize::from(p[i]) + 4;
        if p[flags] > 1 {
            return false;
        }
        i = flags + 1;
    }
    true
}

// ---------------------------------------------------------------------------------------
// 4. The relay
// ---------------------------------------------------------------------------------------

const ROOMS: [&str; 4] = ["r", "s", "t", "部屋"];
const USERS: [&str; 4] = ["a", "b", "c", "ゆき"];
const PASSWORDS: [&[u8]; 3] = [b"", b"pw", b"x"];
const CAPACITIES: [u16; 6] = [0, 1, 2, 3, 5, 300];
/// Ports of addresses that hold issued tokens start here; each room instance has four.
const PORT_BASE: u16 = 1000;
/// Raw datagrams come from ports above this one.
const RAW_PORT_BASE: u16 = 40_000;
/// Bytes of configuration at the start of a [`relay`] input.
pub const RELAY_CONFIG_LEN: usize = 10;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 1 + i % 3])
}

/// Operations of a [`relay`] input, by the value of their first byte modulo 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RelayOp {
    /// `[op, room|user<<2|password<<4, capacity, ip]`
    Create = 0,
    /// `[op, room|user<<2|password<<4, _, ip]`
    Join = 2,
    /// `[op, room (bit 2: the token's own), token choice, ip (bit 2: the token's own)]`
    Leave = 4,
    /// `[op, _, _, ip]`
    List = 5,
    /// `[op, room (bits 2-3 nonzero: the token's own) | message<<4, token choice,
    /// ip | own-ip<<2 | port<<4]`
    Datagram = 6,
    /// `[op, len, len bytes...]`: raw bytes as a datagram from 127.0.0.1, a fresh port.
    RawDatagram = 8,
    /// `[op, step, run]`: the clock moves `step`/85 idle timeouts (0-3); if `run` is odd,
    /// `handle_timeout` runs.
    Clock = 9,
    /// `[op]`: the end of a wake-up.
    Flush = 10,
    /// `[op, what]`: 0 shutdown; 1-3 the socket takes all / no / one receiver per send.
    Control = 11,
}

/// A [`Transmit`] that keeps, besides what a [`Recorder`] keeps, every receiver asked for
/// (a refused send is still one the relay meant to make).
#[derive(Default)]
struct Tap {
    rec: Recorder,
    asked: Vec<Vec<SocketAddr>>,
    accepted: Vec<usize>,
}

impl Transmit for Tap {
    fn send(&mut self, payload: &[u8], to: &[Dest]) -> usize {
        let n = self.rec.send(payload, to);
        self.asked.push(to.iter().map(|d| d.addr).collect());
        self.accepted.push(n);
        n
    }
}

/// A token the harness was granted, and what it has seen happen to it.
#[derive(Debug)]
struct Issued {
    token: Vec<u8>,
    room: &'static str,
    /// Which room instance (a name is reused after the room closes).
    rid: u32,
    user: &'static str,
    ip: IpAddr,
    host: bool,
    /// The address it bound to.
    addr: Option<SocketAddr>,
    /// Bound and not yet seen to leave, time out or lose its room.
    live_bound: bool,
    /// Seen gone (so the relay must treat it as unknown).
    dead: bool,
    last_notice: Option<Instant>,
    /// When it was granted or last had a datagram accepted: its idle deadline's start.
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct AddrState {
    /// Issued tokens bound to this address and still members.
    live: u32,
    /// The Seq of the next room event this address must receive (`None`: a fresh binding,
    /// whose first event is its own JOINED).
    expect: Option<u32>,
    /// The member whose binding started the current run.
    fresh_user: Option<&'static str>,
    /// The room instance of every token bound here.
    rid: Option<u32>,
}

struct Harness {
    relay: Relay<StdRng>,
    tx: Tap,
    cfg: Config,
    rate_body: String,
    now: Instant,
    issued: Vec<Issued>,
    current_rid: HashMap<&'static str, u32>,
    next_rid: u32,
    closed_rids: Vec<u32>,
    addrs: HashMap<SocketAddr, AddrState>,
    /// Last room-event Seq sent, per room instance.
    room_seq: HashMap<u32, u32>,
    checked: usize,
    requests: u64,
    datagrams: u64,
    creates_ok: u64,
    datagrams_out: u64,
    send_drops: u64,
    deliveries: u64,
    notices: u64,
    /// Per IP, the times of its last five BAD_PASSWORD answers.
    failures: HashMap<IpAddr, VecDeque<Instant>>,
}

/// A step's effect on what the harness expects of the sends it made.
#[derive(Default)]
struct StepCtx {
    /// A LEAVE of this issued token succeeded: it is gone from the LEFT event on.
    leaving: Option<usize>,
    /// The datagram of this step, from this token and address, was rate limited.
    rate_limited: Option<(usize, SocketAddr)>,
    /// Whether a rate-limit notice is due.
    notice_due: bool,
    notices: usize,
    shutdown: bool,
    /// `handle_timeout` ran at the harness's `now`.
    timeout_ran: bool,
    /// Room instances whose host was seen to time out: closed once the step ends.
    closing: Vec<u32>,
}

/// Reads bytes off the front of the input; past the end every byte is 0.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }
}

/// Fuzz body: the whole sans-IO relay.
///
/// Input: [`RELAY_CONFIG_LEN`] bytes of configuration (RNG seed, batch size 1..=8, idle
/// timeout 2..=5 s, small capacities and limits, message rate 0..=3, burst 1..=3), then
/// operations ([`RelayOp`]) until the input ends. Names come from small alphabets; tokens are
/// chosen among those issued (as granted, corrupted, or one from another room) or junk; the
/// source IPs are 127.0.0.1-3; each room instance's members send from their own ports, so a
/// receiver address tells which room a datagram belongs to.
///
/// After every step: [`Relay::check_invariants`]; every reply well formed and consistent
/// with its status; and, for every datagram sent: at most 4096 bytes, decoding fully, all
/// receivers in one room; the room's Seq rising by one within the datagram and strictly
/// across datagrams; each receiver seeing every room event from its own JOINED on, with no
/// gap, until it leaves, times out or its room closes, and nothing after; RATE_LIMITED with
/// Seq 0 to the limited sender alone, at most once a second; member counts within capacity
/// and limits; counters matching what the harness saw.
pub fn relay(data: &[u8]) {
    let mut b = Bytes(data);
    let mut c = [0u8; RELAY_CONFIG_LEN];
    for x in &mut c {
        *x = b.byte();
    }
    let cfg = Config {
        udp_port: 9001,
        idle_timeout: Duration::from_secs(2 + u64::from(c[2] % 4)),
        default_capacity: 1 + u16::from(c[4] % 4),
        max_capacity: 1 + u16::from(c[3] % 4),
        max_rooms: 1 + usize::from(c[5] % 4),
        max_members: 1 + usize::from(c[6] % 8),
        // 0 (no limit) most of the time, else 1-3 members per IP.
        max_members_per_ip: u32::from(c[6] / 8 % 8).saturating_sub(4),
        max_rooms_per_ip: u32::from(c[7] % 3),
        msg_rate: u32::from(c[8] % 4),
        msg_burst: 1 + u32::from(c[9] % 3),
        batch_max: 1 + usize::from(c[1] % 8),
    };
    let t0 = Instant::now();
    let relay = Relay::new(cfg.clone(), StdRng::seed_from_u64(u64::from(c[0])));
    let mut h = Harness {
        rate_body: format!("{} messages/s, burst {}", cfg.msg_rate, cfg.msg_burst),
        relay,
        tx: Tap::default(),
        cfg,
        now: t0,
        issued: Vec::new(),
        current_rid: HashMap::new(),
        next_rid: 0,
        closed_rids: Vec::new(),
        addrs: HashMap::new(),
        room_seq: HashMap::new(),
        checked: 0,
        requests: 0,
        datagrams: 0,
        creates_ok: 0,
        datagrams_out: 0,
        send_drops: 0,
        deliveries: 0,
        notices: 0,
        failures: HashMap::new(),
    };
    h.check(&mut StepCtx::default());
    while !b.0.is_empty() {
        let op = b.byte() % 12;
        let mut ctx = StepCtx::default();
        match op {
            0 | 1 => {
                let (a, cap, i) = (b.byte(), b.byte(), b.byte());
                let req = Request::Create {
                    room: ROOMS[usize::from(a % 4)],
                    user: USERS[usize::from(a >> 2) % 4],
                    password: PASSWORDS[usize::from(a >> 4) % 3],
                    capacity: CAPACITIES[usize::from(cap) % CAPACITIES.len()],
                    resume_key: None,
                };
                h.request(ip(i), &req, &mut ctx);
            }
            2 | 3 => {
                let (a, _, i) = (b.byte(), b.byte(), b.byte());
                let req = Request::Join {
                    room: ROOMS[usize::from(a % 4)],
                    user: USERS[usize::from(a >> 2) % 4],
                    password: PASSWORDS[usize::from(a >> 4) % 3],
                    resume_key: None,
                };
                h.request(ip(i), &req, &mut ctx);
            }
            4 => {
                let (a, t, i) = (b.byte(), b.byte(), b.byte());
                let mut room = ROOMS[usize::from(a % 4)];
                let (token, which) = h.choose_token(t, room);
                let mut from = ip(i);
                if let Some(w) = which {
                    if a & 4 != 0 {
                        room = h.issued[w].room;
                    }
                    if i & 4 != 0 {
                        from = h.issued[w].ip;
                    }
                }
                let req = Request::Leave {
                    room,
                    token: &token,
                };
                h.request(from, &req, &mut ctx);
            }
            5 => {
                let (_, _, i) = (b.byte(), b.byte(), b.byte());
                h.request(ip(i), &Request::List, &mut ctx);
            }
            6 | 7 => {
                let (a, t, i) = (b.byte(), b.byte(), b.byte());
                h.chat_datagram(a, t, i, &mut ctx);
            }
            8 => {
                let n = usize::from(b.byte());
                let raw = b.take(n).to_vec();
                // A fresh port each time: should the bytes hold a real token, the address
                // it binds belongs to that token's room alone.
                let port = RAW_PORT_BASE + (h.datagrams % 20_000) as u16;
                let from = SocketAddr::new(ip(0), port);
                let which = ChatDatagram::parse(&raw)
                    .ok()
                    .and_then(|d| h.issued.iter().position(|i| i.token == d.token));
                h.datagram(from, &raw, which, &mut ctx);
            }
            9 => {
                let (step, run) = (b.byte(), b.byte());
                let idle = h.cfg.idle_timeout;
                h.now += idle * u32::from(step) / 85;
                if run & 1 == 1 {
                    ctx.timeout_ran = true;
                    h.relay.handle_timeout(h.now, &mut h.tx);
                    if let Some(t) = h.relay.next_timeout() {
                        assert!(t > h.now, "next_timeout is not in the future");
                    }
                }
            }
            10 => {
                h.relay.flush(&mut h.tx);
                let before = h.tx.asked.len();
                h.relay.flush(&mut h.tx);
                assert_eq!(h.tx.asked.len(), before, "a second flush sent again");
            }
            _ => match b.byte() % 8 {
                0 => {
                    ctx.shutdown = true;
                    h.relay.shutdown(&mut h.tx);
                    assert_eq!(h.relay.room_count(), 0);
                    assert_eq!(h.relay.member_count(), 0);
                }
                1 => h.tx.rec.accept_at_most = None,
                2 => h.tx.rec.accept_at_most = Some(0),
                3 => h.tx.rec.accept_at_most = Some(1),
                _ => h.relay.flush(&mut h.tx),
            },
        }
        h.check(&mut ctx);
    }
    // The end of the last wake-up.
    h.relay.flush(&mut h.tx);
    h.check(&mut StepCtx::default());
}

impl Harness {
    /// A token to use: one issued (as granted, corrupted, or from a room other than
    /// `room`), or junk. Also says which issued token it is, if it is one.
    fn choose_token(&self, t: u8, room: &str) -> (Vec<u8>, Option<usize>) {
        let n = self.issued.len();
        let pick = usize::from(t >> 2);
        match t % 4 {
            0 if n > 0 => {
                let w = pick % n;
                (self.issued[w].token.clone(), Some(w))
            }
            1 if n > 0 => {
                let mut tok = self.issued[pick % n].token.clone();
                // '!' is not in the token alphabet: this is no member's token.
                tok[pick % TOKEN_LEN] = b'!';
                (tok, None)
            }
            2 if n > 0 => {
                let others: Vec<usize> = (0..n).filter(|&w| self.issued[w].room != room).collect();
                match others.get(pick % others.len().max(1)) {
                    Some(&w) => (self.issued[w].token.clone(), Some(w)),
                    None => (vec![b'x'; TOKEN_LEN], None),
                }
            }
            _ => (vec![b'x'; 1 + pick % 40], None),
        }
    }

    fn request(&mut self, peer: IpAddr, req: &Request<'_>, ctx: &mut StepCtx) {
        let (rooms, members) = (self.relay.room_count(), self.relay.member_count());
        let throttled = req.operation() == Operation::Join && self.throttled(peer);
        let mut out = Vec::new();
        let status = self
            .relay
            .handle_request(self.now, peer, req, &mut out, &mut self.tx);
        self.requests += 1;
        let op = req.operation();
        let room = req.room();

        // The RESPONSE, then a COMPLETE only after OK for CREATE, JOIN and LIST.
        let (resp, n) = split_reply(&out).unwrap().expect("a whole RESPONSE");
        assert_eq!((resp.op, resp.state), (op as u8, State::Response as u8));
        assert_eq!(resp.room, room.as_bytes(), "room name echoed");
        assert_eq!(parse_status(&resp), Some(status));
        let rest = &out[n..];
        let complete = (status == Status::Ok && op != Operation::Leave).then(|| {
            let (f, m) = split_reply(rest).unwrap().expect("a whole COMPLETE");
            assert_eq!(m, rest.len(), "bytes after the COMPLETE");
            assert_eq!((f.op, f.state), (op as u8, State::Complete as u8));
            f
        });
        if complete.is_none() {
            assert!(
                rest.is_empty(),
                "{op:?} answered {status:?} with more frames"
            );
        }
        assert_eq!(
            status == Status::TooManyRequests,
            throttled,
            "password throttle for {peer}"
        );
        if status == Status::BadPassword {
            let f = self.failures.entry(peer).or_default();
            f.push_back(self.now);
            if f.len() > 5 {
                f.pop_front();
            }
        }
        let grown = (
            self.relay.room_count() as isize - rooms as isize,
            self.relay.member_count() as isize - members as isize,
        );
        match (req, status, complete) {
            (Request::Create { room, user, .. }, Status::Ok, Some(f)) => {
                assert!(
                    !self.issued.iter().any(|i| i.room == *room && i.live_bound),
                    "CREATE OK of a room name in use"
                );
                assert_eq!(grown, (1, 1));
                self.creates_ok += 1;
                let rid = self.next_rid;
                self.next_rid += 1;
                let room = ROOMS.iter().find(|r| **r == *room).unwrap();
                self.current_rid.insert(room, rid);
                self.grant(&f, room, rid, user, peer, true);
            }
            (Request::Join { room, user, .. }, Status::Ok, Some(f)) => {
                assert!(
                    !self
                        .issued
                        .iter()
                        .any(|i| i.room == *room && i.user == *user && i.live_bound),
                    "JOIN OK with a name taken in the room"
                );
                assert_eq!(grown, (0, 1));
                let room = ROOMS.iter().find(|r| **r == *room).unwrap();
                let rid = *self
                    .current_rid
                    .get(room)
                    .expect("JOIN OK of a room never created");
                assert!(!self.closed_rids.contains(&rid), "JOIN OK of a closed room");
                self.grant(&f, room, rid, user, peer, false);
            }
            (Request::Leave { token, .. }, Status::Ok, None) => {
                let w = self.issued.iter().position(|i| i.token == *token);
                let w = w.expect("LEAVE OK with a token never issued");
                let i = &self.issued[w];
                assert!(!i.dead, "LEAVE OK with a void token");
                assert_eq!(i.ip, peer, "LEAVE OK from another IP");
                assert_eq!(i.room, room, "LEAVE OK for another room");
                ctx.leaving = Some(w);
            }
            (Request::List, Status::Ok, Some(f)) => self.check_list(f.payload),
            (_, Status::Ok, _) => unreachable!(),
            _ => {
                if op != Operation::Leave {
                    assert_eq!(
                        grown,
                        (0, 0),
                        "{op:?} refused {status:?} yet changed counts"
                    );
                }
            }
        }
    }

    fn throttled(&self, ip: IpAddr) -> bool {
        self.failures.get(&ip).is_some_and(|f| {
            f.len() >= 5 && self.now.saturating_duration_since(f[0]) < Duration::from_secs(60)
        })
    }

    fn grant(
        &mut self,
        f: &Frame<'_>,
        room: &'static str,
        rid: u32,
        user: &str,
        peer: IpAddr,
        host: bool,
    ) {
        let g = Grant::parse(f.payload).expect("a well-formed grant");
        assert_eq!(g.token.len(), TOKEN_LEN);
        assert!(
            g.token
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_".contains(c))
        );
        assert_eq!(g.udp_port, self.cfg.udp_port);
        assert_eq!(u64::from(g.idle_timeout), self.cfg.idle_timeout.as_secs());
        assert!(
            self.issued.iter().all(|i| i.token != g.token),
            "a token was issued twice"
        );
        self.issued.push(Issued {
            token: g.token.to_vec(),
            room,
            rid,
            user: USERS.iter().find(|u| **u == user).unwrap(),
            ip: peer,
            host,
            addr: None,
            live_bound: false,
            dead: false,
            last_notice: None,
            last_seen: self.now,
        });
    }

    fn check_list(&self, payload: &[u8]) {
        let rooms = parse_list(payload).expect("a well-formed LIST");
        assert_eq!(rooms.len(), self.relay.room_count(), "every room listed");
        let members: usize = rooms.iter().map(|r| usize::from(r.members)).sum();
        assert_eq!(members, self.relay.member_count());
        for w in rooms.windows(2) {
            assert!(w[0].name.as_bytes() < w[1].name.as_bytes(), "LIST order");
        }
        for r in &rooms {
            assert!(r.members >= 1, "a room without its host");
            assert!(r.members <= r.capacity && r.capacity <= self.cfg.max_capacity);
        }
    }

    /// A chat datagram with a chosen token, room, address and message.
    fn chat_datagram(&mut self, a: u8, t: u8, i: u8, ctx: &mut StepCtx) {
        let mut room = ROOMS[usize::from(a % 4)];
        let (token, which) = self.choose_token(t, room);
        let mut from_ip = ip(i);
        let mut port = 1 + u16::from(i >> 4) % 4;
        if let Some(w) = which {
            let own = &self.issued[w];
            if (a >> 2) & 3 != 0 {
                room = own.room;
            }
            if (i >> 2) & 3 != 0 {
                from_ip = own.ip;
            }
            port = PORT_BASE + (own.rid % 8000) as u16 * 4 + u16::from(i >> 4) % 4;
        }
        let long_a = "x".repeat(1500);
        let long_b = "m".repeat(MAX_MESSAGE);
        let message: &str = match a >> 4 {
            0..=5 => "",
            6..=10 => "hi",
            11 => "こんにちは 👋",
            12 => &long_a,
            13 => &long_b,
            _ => "\x1b[2J",
        };
        let mut buf = [0u8; MAX_DATAGRAM];
        let n = if message.starts_with('\x1b') {
            // Not a text field: encode would refuse it, so build it by hand.
            let d = ChatDatagram {
                room: room.as_bytes(),
                token: &token,
                message: "",
            };
            let n = d.encode(&mut buf).unwrap();
            buf[n..n + 4].copy_from_slice(message.as_bytes());
            n + 4
        } else {
            let d = ChatDatagram {
                room: room.as_bytes(),
                token: &token,
                message,
            };
            d.encode(&mut buf)
                .expect("the harness builds valid datagrams")
        };
        self.datagram(SocketAddr::new(from_ip, port), &buf[..n], which, ctx);
    }

    fn datagram(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        which: Option<usize>,
        ctx: &mut StepCtx,
    ) {
        let outcome = self
            .relay
            .handle_datagram(self.now, from, bytes, &mut self.tx);
        self.datagrams += 1;
        if let Err(e) = ChatDatagram::parse(bytes) {
            let want = match e {
                DatagramError::Oversize => DropReason::Oversize,
                DatagramError::Malformed => DropReason::Malformed,
                DatagramError::MessageTooLong => DropReason::MessageTooLong,
                DatagramError::BadText(_) => DropReason::BadText,
            };
            assert_eq!(outcome, DatagramOutcome::Dropped(want));
            return;
        }
        let accepted = matches!(
            outcome,
            DatagramOutcome::Heartbeat
                | DatagramOutcome::Relayed
                | DatagramOutcome::Dropped(DropReason::RateLimited)
        );
        let Some(w) = which else {
            // Junk or corrupted tokens are never a member's.
            assert_eq!(outcome, DatagramOutcome::Dropped(DropReason::UnknownToken));
            return;
        };
        let i = &self.issued[w];
        if i.dead {
            assert_eq!(
                outcome,
                DatagramOutcome::Dropped(DropReason::UnknownToken),
                "a void token was accepted"
            );
            return;
        }
        if accepted {
            let d = ChatDatagram::parse(bytes).unwrap();
            assert_eq!(d.room, i.room.as_bytes(), "accepted for the wrong room");
            assert_eq!(from.ip(), i.ip, "accepted from the wrong IP");
            assert_eq!(
                d.is_heartbeat(),
                outcome == DatagramOutcome::Heartbeat,
                "{outcome:?}"
            );
            self.issued[w].last_seen = self.now;
            let i = &self.issued[w];
            match i.addr {
                Some(a) => assert_eq!(a, from, "accepted from another address"),
                None => self.bind(w, from),
            }
            if outcome == DatagramOutcome::Dropped(DropReason::RateLimited) {
                assert!(self.cfg.msg_rate > 0, "rate limited with no limit");
                let i = &mut self.issued[w];
                ctx.rate_limited = Some((w, from));
                ctx.notice_due = i.last_notice.is_none_or(|t| {
                    self.now.saturating_duration_since(t) >= Duration::from_secs(1)
                });
                if ctx.notice_due {
                    i.last_notice = Some(self.now);
                }
            }
        } else if let Some(a) = i.addr.filter(|_| i.live_bound) {
            // A live bound member's token: only a wrong room, IP or address drops it.
            let d = ChatDatagram::parse(bytes).unwrap();
            let want = if d.room != i.room.as_bytes() {
                DropReason::WrongRoom
            } else if from.ip() != i.ip {
                DropReason::WrongIp
            } else {
                assert_ne!(a, from, "dropped from its own address");
                DropReason::WrongAddress
            };
            assert_eq!(outcome, DatagramOutcome::Dropped(want));
        }
    }

    fn bind(&mut self, w: usize, from: SocketAddr) {
        let i = &mut self.issued[w];
        i.addr = Some(from);
        i.live_bound = true;
        let st = self.addrs.entry(from).or_default();
        if st.live == 0 {
            st.expect = None;
            st.fresh_user = Some(i.user);
        } else {
            assert_eq!(st.rid, Some(i.rid), "one address, two rooms (harness bug)");
        }
        st.rid = Some(i.rid);
        st.live += 1;
    }

    fn unbind(&mut self, w: usize) {
        let i = &mut self.issued[w];
        i.dead = true;
        if i.live_bound {
            i.live_bound = false;
            let st = self.addrs.get_mut(&i.addr.unwrap()).unwrap();
            st.live -= 1;
        }
    }

    fn close_rid(&mut self, rid: u32) {
        if !self.closed_rids.contains(&rid) {
            self.closed_rids.push(rid);
        }
        for w in 0..self.issued.len() {
            if self.issued[w].rid == rid {
                self.unbind(w);
            }
        }
    }

    /// Everything checked after a step.
    fn check(&mut self, ctx: &mut StepCtx) {
        if let Err(e) = self.relay.check_invariants() {
            panic!("invariant broken: {e}");
        }
        assert!(self.relay.room_count() <= self.cfg.max_rooms);
        assert!(self.relay.member_count() <= self.cfg.max_members);
        assert!(self.relay.bound_count() <= self.relay.member_count());
        let live_before: Vec<SocketAddr> = if ctx.shutdown {
            self.addrs
                .iter()
                .filter(|(_, s)| s.live > 0)
                .map(|(a, _)| *a)
                .collect()
        } else {
            Vec::new()
        };
        let mut closed_to = Vec::new();
        while self.checked < self.tx.asked.len() {
            let k = self.checked;
            self.checked += 1;
            self.check_send(k, ctx, &mut closed_to);
        }
        if let Some(w) = ctx.leaving {
            let (rid, host) = (self.issued[w].rid, self.issued[w].host);
            self.unbind(w);
            if host {
                self.close_rid(rid);
            }
        }
        for rid in std::mem::take(&mut ctx.closing) {
            self.close_rid(rid);
        }
        if ctx.timeout_ran {
            // Every member past its deadline is gone now; a bound one was told.
            for w in 0..self.issued.len() {
                let i = &self.issued[w];
                if !i.dead && i.last_seen + self.cfg.idle_timeout <= self.now {
                    assert!(!i.live_bound, "{} outlived its deadline", i.user);
                    let (rid, host) = (i.rid, i.host);
                    self.unbind(w);
                    if host {
                        // Its room closed: any bound member heard ROOM_CLOSED already.
                        assert!(
                            !self.issued.iter().any(|i| i.rid == rid && i.live_bound),
                            "a host timed out and its room's members were not told"
                        );
                        self.close_rid(rid);
                    }
                }
            }
        }
        if ctx.shutdown {
            for a in live_before {
                assert!(closed_to.contains(&a), "{a} missed the shutdown notice");
            }
            for rid in 0..self.next_rid {
                self.close_rid(rid);
            }
        }
        if ctx.rate_limited.is_some() {
            assert_eq!(ctx.notices, usize::from(ctx.notice_due), "rate notices");
        } else {
            assert_eq!(ctx.notices, 0);
        }
        let c = &self.relay.counters;
        assert_eq!(c.datagrams_in, self.datagrams);
        let answered: u64 = c.requests.iter().flatten().sum();
        assert_eq!(answered, self.requests);
        assert_eq!(c.rooms_created, self.creates_ok);
        assert_eq!(c.datagrams_out, self.datagrams_out);
        assert_eq!(c.send_drops, self.send_drops);
        assert_eq!(c.deliveries, self.deliveries);
        assert_eq!(c.rate_notices, self.notices, "rate notices counted");
    }

    fn check_send(&mut self, k: usize, ctx: &mut StepCtx, closed_to: &mut Vec<SocketAddr>) {
        let payload = self.tx.rec.sent[k].0.clone();
        let asked = self.tx.asked[k].clone();
        let accepted = self.tx.accepted[k];
        assert_eq!(self.tx.rec.sent[k].1[..], asked[..accepted]);
        assert!(
            !payload.is_empty() && payload.len() <= MAX_DATAGRAM,
            "datagram size"
        );
        let evs: Vec<Event<'_>> = Events::new(&payload)
            .map(|e| e.expect("the server sent a malformed event"))
            .collect();
        assert!(!evs.is_empty());
        self.datagrams_out += accepted as u64;
        self.send_drops += (asked.len() - accepted) as u64;

        if evs[0].kind == EventKind::RateLimited as u8 {
            assert_eq!(evs.len(), 1, "RATE_LIMITED shares a datagram");
            let ev = evs[0];
            assert_eq!(ev.seq, 0);
            let (w, from) = ctx
                .rate_limited
                .expect("a notice with no rate-limited message");
            assert_eq!(
                asked,
                vec![from],
                "RATE_LIMITED to one receiver: the sender"
            );
            assert_eq!(ev.user, self.issued[w].user);
            assert_eq!(ev.body, self.rate_body);
            ctx.notices += 1;
            self.notices += 1;
            return;
        }
        self.deliveries += (accepted * evs.len()) as u64;

        // A room's datagram: its events, in Seq order, to receivers of that room.
        assert!(!asked.is_empty(), "a room datagram to nobody");
        for (j, ev) in evs.iter().enumerate() {
            let kind = EventKind::from_u8(ev.kind).expect("unknown kind sent");
            assert_ne!(
                kind,
                EventKind::RateLimited,
                "RATE_LIMITED among room events"
            );
            assert_ne!(ev.seq, 0, "Seq 0 on a room event");
            if j > 0 {
                assert_eq!(
                    ev.seq,
                    next_seq(evs[j - 1].seq),
                    "Seq gap inside a datagram"
                );
            }
            match kind {
                EventKind::Message => {
                    assert!(!ev.body.is_empty() && ev.body.len() <= MAX_MESSAGE);
                    assert!(!ev.user.is_empty());
                }
                EventKind::RoomClosed => {
                    assert!(ev.user.is_empty());
                    assert!(
                        ["host left", "host timed out", "server shutting down"].contains(&ev.body)
                    );
                    assert_eq!(j, evs.len() - 1, "events after ROOM_CLOSED");
                }
                _ => assert!(ev.body.is_empty() && !ev.user.is_empty()),
            }
        }
        // The leaving member is gone from its LEFT on.
        if let Some(w) = ctx.leaving {
            let i = &self.issued[w];
            let left = evs
                .iter()
                .any(|e| e.kind == EventKind::Left as u8 && e.user == i.user);
            if left && i.live_bound && !i.dead {
                self.unbind(w);
            }
        }
        let rid = self.addrs.get(&asked[0]).and_then(|s| s.rid);
        let rid = rid.expect("a datagram to an address that never bound");
        assert!(
            !self.closed_rids.contains(&rid),
            "a datagram from a closed room"
        );
        let first = evs[0].seq;
        let last = evs[evs.len() - 1].seq;
        if let Some(&prev) = self.room_seq.get(&rid) {
            assert!(first > prev, "room Seq went from {prev} to {first}");
        }
        self.room_seq.insert(rid, last);
        let mut unique = asked.clone();
        unique.sort_unstable();
        unique.dedup();
        for a in &unique {
            let st = self.addrs.get_mut(a).expect("an address that never bound");
            assert_eq!(st.rid, Some(rid), "one datagram, two rooms");
            assert!(st.live > 0, "{a} gets events after it left or timed out");
            match st.expect {
                Some(s) => assert_eq!(first, s, "{a} missed events"),
                None => {
                    assert_eq!(evs[0].kind, EventKind::Joined as u8, "{a}'s first event");
                    assert_eq!(Some(evs[0].user), st.fresh_user, "{a}'s first event");
                }
            }
            st.expect = Some(next_seq(last));
            if evs[evs.len() - 1].kind == EventKind::RoomClosed as u8 {
                closed_to.push(*a);
            }
        }
        // Removals this datagram shows: a bound member's TIMED_OUT reaches it, and ends
        // its datagram; ROOM_CLOSED ends the room.
        for (j, ev) in evs.iter().enumerate() {
            if ev.kind == EventKind::TimedOut as u8 {
                // The latest member of that name: names are unique among live members.
                let w = self
                    .issued
                    .iter()
                    .rposition(|i| i.rid == rid && i.user == ev.user && !i.dead);
                if let Some(w) = w {
                    let i = &self.issued[w];
                    assert!(
                        i.last_seen + self.cfg.idle_timeout <= self.now,
                        "{} timed out before its deadline",
                        i.user
                    );
                    if self.issued[w].live_bound {
                        assert_eq!(j, evs.len() - 1, "events after a bound member's TIMED_OUT");
                        assert!(
                            asked.contains(&self.issued[w].addr.unwrap()),
                            "TIMED_OUT not sent to the member"
                        );
                    }
                    let host = self.issued[w].host;
                    self.unbind(w);
                    if host {
                        // Its room closes now; bound members hear ROOM_CLOSED next.
                        ctx.closing.push(rid);
                    }
                }
            }
            if ev.kind == EventKind::RoomClosed as u8 {
                self.close_rid(rid);
            }
        }
    }
}

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
}
