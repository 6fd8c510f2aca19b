//! Tests of `event.rs`.

use super::*;

#[test]
fn worked_example_two_events_match_protocol_md() {
    let joined = Event {
        kind: EventKind::Joined as u8,
        seq: 7,
        user: "bob",
        body: "",
    };
    let msg = Event {
        kind: EventKind::Message as u8,
        seq: 8,
        user: "alice",
        body: "hi 👋",
    };
    let mut b = EventBuf::default();
    assert!(b.push(&joined) && b.push(&msg));
    let expect: &[u8] = &[
        0x02, 0, 0, 0, 7, 3, b'b', b'o', b'b', 0, 0, 0x01, 0, 0, 0, 8, 5, b'a', b'l', b'i', b'c',
        b'e', 0, 7, 0x68, 0x69, 0x20, 0xf0, 0x9f, 0x91, 0x8b,
    ];
    assert_eq!(b.bytes(), expect);
    let got: Vec<_> = Events::new(expect).collect();
    assert_eq!(got, vec![Ok(joined), Ok(msg)]);
}

#[test]
fn v11_worked_examples_match_protocol_md() {
    let encode = |ev: RawEvent<'_>| {
        let mut b = EventBuf::default();
        assert!(b.push_raw(&ev));
        b.bytes().to_vec()
    };
    // §5.6: the SYNC answer (room at Seq 9, alice's last ClientSeq 1).
    let answer = SyncInfo {
        last_seq: 9,
        last_client_seq: 1,
    };
    let mut body = [0u8; SyncInfo::BODY_LEN];
    let expect: &[u8] = &[
        0x08, 0, 0, 0, 0, 5, b'a', b'l', b'i', b'c', b'e', 0, 8, 0, 0, 0, 9, 0, 0, 0, 1,
    ];
    assert_eq!(encode(answer.event("alice", &mut body)), expect);
    let got: Vec<_> = RawEvents::new(expect).collect();
    assert_eq!(got.len(), 1);
    let ev = got[0].unwrap();
    assert_eq!(
        (ev.known_kind(), ev.seq, ev.user),
        (Some(EventKind::Sync), 0, "alice")
    );
    assert_eq!(SyncInfo::parse(ev.body), Ok(answer));
    // A tail notice.
    let tail = SyncInfo {
        last_seq: 9,
        last_client_seq: 0,
    };
    let expect: &[u8] = &[0x08, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 9, 0, 0, 0, 0];
    assert_eq!(encode(tail.event("", &mut body)), expect);
    let ev = RawEvents::new(expect).next().unwrap().unwrap();
    assert_eq!(ev.user, "");
    assert_eq!(SyncInfo::parse(ev.body), Ok(tail));
    // GONE for Seq 1-4.
    let gone = Gone {
        from_seq: 1,
        count: 4,
    };
    let mut gbody = [0u8; Gone::BODY_LEN];
    let expect: &[u8] = &[0x07, 0, 0, 0, 0, 0, 0, 6, 0, 0, 0, 1, 0, 4];
    assert_eq!(encode(gone.event(&mut gbody)), expect);
    let ev = RawEvents::new(expect).next().unwrap().unwrap();
    assert_eq!(ev.known_kind(), Some(EventKind::Gone));
    assert_eq!(Gone::parse(ev.body), Ok(gone));
    // RESUMED: empty text body, read by both views.
    let resumed = Event {
        kind: EventKind::Resumed as u8,
        seq: 0,
        user: "bob",
        body: "",
    };
    let bytes = encode(resumed.raw());
    assert_eq!(bytes, [0x09, 0, 0, 0, 0, 3, b'b', b'o', b'b', 0, 0]);
    assert_eq!(Events::new(&bytes).collect::<Vec<_>>(), vec![Ok(resumed)]);
}

#[test]
fn binary_bodies_are_checked_and_skipped_by_the_text_view() {
    assert_eq!(
        Gone::parse(&[0, 0, 0, 1, 0]),
        Err(EventError::BadBody(EventKind::Gone))
    );
    assert_eq!(
        Gone::parse(&[0, 0, 0, 1, 0, 4, 0]),
        Err(EventError::BadBody(EventKind::Gone))
    );
    assert_eq!(
        Gone::parse(&[0, 0, 0, 0, 0, 4]),
        Err(EventError::BadBody(EventKind::Gone))
    );
    assert_eq!(
        Gone::parse(&[0, 0, 0, 1, 0, 0]),
        Err(EventError::BadBody(EventKind::Gone))
    );
    assert_eq!(
        SyncInfo::parse(&[0; 7]),
        Err(EventError::BadBody(EventKind::Sync))
    );
    assert_eq!(
        SyncInfo::parse(&[0; 9]),
        Err(EventError::BadBody(EventKind::Sync))
    );
    // A GONE between two text events: the text view skips it, the raw view keeps it.
    let msg = Event {
        kind: 1,
        seq: 3,
        user: "a",
        body: "x",
    };
    let mut b = EventBuf::default();
    let mut gbody = [0u8; Gone::BODY_LEN];
    assert!(b.push(&msg));
    assert!(
        b.push_raw(
            &Gone {
                from_seq: 1,
                count: 2
            }
            .event(&mut gbody)
        )
    );
    assert!(b.push(&msg));
    assert_eq!(
        Events::new(b.bytes()).collect::<Vec<_>>(),
        vec![Ok(msg), Ok(msg)]
    );
    let raw: Vec<_> = RawEvents::new(b.bytes()).map(|e| e.unwrap().kind).collect();
    assert_eq!(raw, vec![1, 7, 1]);
    // A binary body on a text kind is still refused by the text view.
    let bad = RawEvent {
        kind: 1,
        seq: 4,
        user: "a",
        body: &[0],
    };
    b.clear();
    assert!(b.push_raw(&bad));
    assert_eq!(
        Events::new(b.bytes()).collect::<Vec<_>>(),
        vec![Err(EventError::BadText)]
    );
    assert_eq!(bad.text(), Err(EventError::BadText));
}

#[test]
fn truncated_tail_is_reported_once() {
    let mut b = EventBuf::default();
    let e = Event {
        kind: 1,
        seq: 1,
        user: "u",
        body: "hello",
    };
    b.push(&e);
    b.push(&e);
    let bytes = b.bytes();
    let cut = &bytes[..bytes.len() - 1];
    let got: Vec<_> = Events::new(cut).collect();
    assert_eq!(got, vec![Ok(e), Err(EventError::Truncated)]);
}

#[test]
fn buffer_refuses_what_does_not_fit() {
    let body = "x".repeat(3800);
    let e = Event {
        kind: 1,
        seq: 1,
        user: &"u".repeat(255),
        body: &body,
    };
    let mut b = EventBuf::default();
    assert!(b.fits(&e) && b.push(&e));
    assert!(!b.fits(&e));
    assert!(!b.push(&e));
    assert_eq!(b.events(), 1);
    b.clear();
    assert!(b.is_empty());
}
