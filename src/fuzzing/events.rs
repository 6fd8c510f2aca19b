//! The fuzz body of what a client decodes: events, and TCRP replies.

use crate::protocol::event::{
    EVENT_OVERHEAD, EventBuf, EventError, EventKind, Events, Gone, RawEvents, SyncInfo,
};
use crate::protocol::frame::{
    Frame, Grant, HEADER_LEN, Header, MAX_REPLY_PAYLOAD, encode_list, encode_response, parse_list,
    parse_status, split_reply,
};
use crate::protocol::{MAX_DATAGRAM, MAX_PAYLOAD, Operation, State, Status, text};

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
