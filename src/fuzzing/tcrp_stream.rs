//! The TCRP framing fuzz body: one byte stream fed in arbitrary chunks, split as the server
//! splits it.

use crate::protocol::frame::{
    Frame, HEADER_LEN, Header, MAX_REQUEST_FRAME, MalformedFrame, Request, encode_frame,
    split_request,
};
use crate::protocol::{MAX_PAYLOAD, Operation, State};

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
