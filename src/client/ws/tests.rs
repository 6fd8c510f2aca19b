use super::*;
use crate::server::web::frame::{Assembler, Step};
use crate::server::web::http::{self as server_http, Head, Site};

/// A server frame header written by hand (FIN as given, unmasked).
fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame::write_header(&mut out, Opcode::Binary, payload.len());
    out[0] = (u8::from(fin) << 7) | opcode;
    out.extend_from_slice(payload);
    out
}

#[test]
fn masked_units_round_trip_through_the_servers_parser() {
    let mut masks = Masks::new();
    // Lengths on both sides of the 7-bit and 16-bit length forms, up to the server's limit.
    for len in [0usize, 1, 3, 124, 125, 126, 1000, frame::MAX_MESSAGE - 1] {
        let unit: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        let mut out = Vec::new();
        let mask = masks.next_mask();
        write_unit(&mut out, CHANNEL_DATAGRAM, &unit, mask);
        let (f, n) = frame::parse(&out).unwrap().expect("whole");
        assert_eq!(n, out.len(), "len {len}");
        assert_eq!((f.fin, f.opcode, f.mask), (true, Opcode::Binary, mask));
        let mut asm = Assembler::default();
        let Step::Message(m) = asm.feed(&f).unwrap() else {
            panic!("not a message")
        };
        assert_eq!(m[0], CHANNEL_DATAGRAM);
        assert_eq!(&m[1..], &unit[..], "len {len}");
        // The same bytes as a plain write_frame of the whole message.
        let mut whole = vec![CHANNEL_DATAGRAM];
        whole.extend_from_slice(&unit);
        let mut again = Vec::new();
        write_frame(&mut again, Opcode::Binary, &whole, mask);
        assert_eq!(again, out);
        // Cut anywhere, the server waits for the rest.
        assert_eq!(frame::parse(&out[..n - 1]).unwrap(), None);
    }
    // Over the server's limit: refused from the header.
    let mut out = Vec::new();
    write_unit(
        &mut out,
        CHANNEL_TCRP,
        &[0; frame::MAX_MESSAGE],
        masks.next_mask(),
    );
    assert_eq!(frame::parse(&out), Err(CloseCode::TooBig));
    // A close frame the server understands.
    let mut out = Vec::new();
    write_close(&mut out, CloseCode::Normal, [1, 2, 3, 4]);
    let (f, _) = frame::parse(&out).unwrap().unwrap();
    assert_eq!(
        Assembler::default().feed(&f).unwrap(),
        Step::Closed(CloseCode::Normal)
    );
}

#[test]
fn masks_vary() {
    let mut m = Masks::new();
    let a = m.next_mask();
    let b = m.next_mask();
    assert_ne!(a, b);
}

#[test]
fn the_handshake_is_checked() {
    let key = new_key();
    assert_eq!(BASE64.decode(&key).unwrap().len(), 16);
    let mut req = Vec::new();
    let accept = request(
        &mut req,
        "127.0.0.1:9080",
        &key,
        Some("http://127.0.0.1:9080"),
    );
    let mut answer = Vec::new();
    assert_eq!(
        server_http::serve(&req, &Site::default(), &mut answer),
        Head::Upgraded(req.len())
    );
    // Cut, then whole, then with a frame behind it.
    assert_eq!(parse_answer(&answer[..answer.len() - 1], &accept), Ok(None));
    assert_eq!(parse_answer(&answer, &accept), Ok(Some(answer.len())));
    let mut more = answer.clone();
    more.extend_from_slice(&server_frame(true, 2, b"\x01hi"));
    assert_eq!(parse_answer(&more, &accept), Ok(Some(answer.len())));
    // Another key's accept value is refused.
    let other = server_http::accept_key(&new_key());
    assert_eq!(
        parse_answer(&answer, &other),
        Err(WsError::BadAnswer("wrong Sec-WebSocket-Accept"))
    );
    // RFC 6455 §1.3's worked example.
    assert_eq!(
        request(&mut Vec::new(), "h", "dGhlIHNhbXBsZSBub25jZQ==", None),
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    );
    // A foreign origin: 403, reported as refused.
    let mut req = Vec::new();
    let accept = request(
        &mut req,
        "127.0.0.1:9080",
        &key,
        Some("http://evil.example"),
    );
    let mut answer = Vec::new();
    assert_eq!(
        server_http::serve(&req, &Site::default(), &mut answer),
        Head::Answered(403)
    );
    assert_eq!(parse_answer(&answer, &accept), Err(WsError::Refused(403)));
    assert!(matches!(
        parse_answer(b"garbage\r\n\r\n", &accept),
        Err(WsError::BadAnswer(_))
    ));
    assert!(matches!(
        parse_answer(&[b'a'; MAX_ANSWER_HEAD + 1], &accept),
        Err(WsError::BadAnswer(_))
    ));
}

#[test]
fn server_frames_whole_and_fragmented() {
    let mut r = Reader::default();
    let mut wire = Vec::new();
    frame::write_unit(&mut wire, CHANNEL_DATAGRAM, b"abc");
    let (f, n) = parse(&wire).unwrap().unwrap();
    assert_eq!(n, wire.len());
    assert_eq!(r.feed(&f).unwrap(), Some(Msg::Binary(b"\x02abc")));
    assert_eq!(parse(&wire[..n - 1]).unwrap(), None);

    // Three fragments with a ping between them.
    let mut wire = server_frame(false, 2, b"\x01one ");
    wire.extend(server_frame(false, 0, b"two "));
    wire.extend(server_frame(true, 9, b"p"));
    wire.extend(server_frame(true, 0, b"three"));
    let mut got = Vec::new();
    let mut at = 0;
    while let Some((f, n)) = parse(&wire[at..]).unwrap() {
        at += n;
        if let Some(m) = r.feed(&f).unwrap() {
            got.push(format!("{m:?}"));
        }
    }
    assert_eq!(at, wire.len());
    assert_eq!(
        got,
        [
            format!("{:?}", Msg::Ping(b"p")),
            format!("{:?}", Msg::Binary(b"\x01one two three")),
        ]
    );
    // Close with and without a code.
    let close = server_frame(true, 8, &1009u16.to_be_bytes());
    let (f, _) = parse(&close).unwrap().unwrap();
    assert_eq!(r.feed(&f).unwrap(), Some(Msg::Close(1009)));
    let bare = server_frame(true, 8, b"");
    let (f, _) = parse(&bare).unwrap().unwrap();
    assert_eq!(r.feed(&f).unwrap(), Some(Msg::Close(NO_CODE)));
}

#[test]
fn hostile_server_frames_are_refused() {
    // Too long, from the header alone (64-bit length, nothing behind it).
    let mut head = vec![0x82, 127];
    head.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    assert_eq!(parse(&head), Err(WsError::TooBig));
    let mut head = vec![0x82, 127];
    head.extend_from_slice(&(MAX_SERVER_MESSAGE as u64 + 1).to_be_bytes());
    assert_eq!(parse(&head), Err(WsError::TooBig));
    // Fragments adding up to too much.
    let mut r = Reader::default();
    let chunk = vec![0u8; MAX_SERVER_MESSAGE / 2 + 1];
    let first = server_frame(false, 2, &chunk);
    let (f, _) = parse(&first).unwrap().unwrap();
    assert_eq!(r.feed(&f).unwrap(), None);
    let second = server_frame(true, 0, &chunk);
    let (f, _) = parse(&second).unwrap().unwrap();
    assert_eq!(r.feed(&f), Err(WsError::TooBig));
    // Masked, reserved bits, unknown opcode, fragmented or long control frames.
    let mut masked = Vec::new();
    write_unit(&mut masked, 2, b"x", [1, 2, 3, 4]);
    assert!(matches!(parse(&masked), Err(WsError::Protocol(_))));
    assert!(matches!(parse(&[0xc2, 0]), Err(WsError::Protocol(_))));
    assert!(matches!(parse(&[0x83, 0]), Err(WsError::Protocol(_))));
    assert!(matches!(parse(&[0x09, 0]), Err(WsError::Protocol(_))));
    assert!(matches!(
        parse(&server_frame(true, 9, &[0; 126])),
        Err(WsError::Protocol(_))
    ));
    // A continuation with nothing to continue; a new message inside a message.
    let mut r = Reader::default();
    let (f, _) = parse(&[0x80, 0]).unwrap().unwrap();
    assert!(matches!(r.feed(&f), Err(WsError::Protocol(_))));
    let (f, _) = parse(&[0x02, 0]).unwrap().unwrap();
    assert_eq!(r.feed(&f).unwrap(), None);
    let (f, _) = parse(&[0x82, 0]).unwrap().unwrap();
    assert!(matches!(r.feed(&f), Err(WsError::Protocol(_))));
}
