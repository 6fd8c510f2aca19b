use super::*;
use proptest::prelude::*;

/// A client frame as a browser writes it: masked with `mask`.
fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n @ 0..126 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Feeds whole frames of `bytes` to an assembler; what came out, or the close code.
fn run(bytes: &[u8]) -> Result<Vec<String>, CloseCode> {
    let mut asm = Assembler::default();
    let mut got = Vec::new();
    let mut at = 0;
    while let Some((f, n)) = parse(&bytes[at..])? {
        at += n;
        match asm.feed(&f)? {
            Step::Nothing => {}
            Step::Message(m) => got.push(format!("msg {m:?}")),
            Step::Pong(p) => got.push(format!("pong {p:?}")),
            Step::Closed(code) => got.push(format!("close {}", code as u16)),
        }
    }
    Ok(got)
}

#[test]
fn the_rfc_example_unmasks_to_hello() {
    // RFC 6455 §5.7: a single-frame masked text message "Hello" (a text frame; the codec
    // parses it, the assembler refuses it).
    let bytes = [
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (f, n) = parse(&bytes).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    assert_eq!((f.fin, f.opcode), (true, Opcode::Text));
    let mut out = Vec::new();
    f.unmask_into(&mut out);
    assert_eq!(out, b"Hello");
    assert_eq!(run(&bytes), Err(CloseCode::Unsupported));
}

#[test]
fn every_prefix_of_a_frame_is_incomplete() {
    for len in [0usize, 5, 125, 126, 300, 65535, 65536, MAX_MESSAGE] {
        let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let bytes = client_frame(true, 2, &payload, MASK);
        for cut in [0, 1, 2, 3, 4, 5, 9, 10, 13, bytes.len() - 1] {
            if cut < bytes.len() && len <= MAX_MESSAGE {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "len {len} cut {cut}");
            }
        }
        if len <= MAX_MESSAGE {
            let (f, n) = parse(&bytes).unwrap().unwrap();
            assert_eq!(n, bytes.len());
            let mut out = Vec::new();
            f.unmask_into(&mut out);
            assert_eq!(out, payload, "7/16/64-bit lengths");
        }
    }
    // A 64-bit length under the limit is accepted (not minimal, but unambiguous).
    let mut bytes = vec![0x82, 0x80 | 127];
    bytes.extend_from_slice(&3u64.to_be_bytes());
    bytes.extend_from_slice(&MASK);
    bytes.extend_from_slice(&[1 ^ MASK[0], 2 ^ MASK[1], 3 ^ MASK[2]]);
    assert_eq!(run(&bytes), Ok(vec!["msg [1, 2, 3]".to_string()]));
}

#[test]
fn oversize_is_refused_from_the_header_before_the_body() {
    // Only the header is here: the body is never waited for.
    let head = &client_frame(true, 2, &vec![0; MAX_MESSAGE + 1], MASK)[..8];
    assert_eq!(parse(head), Err(CloseCode::TooBig));
    let mut huge = vec![0x82, 0x80 | 127];
    huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    assert_eq!(parse(&huge), Err(CloseCode::TooBig));
    let mut top = vec![0x82, 0x80 | 127];
    top.extend_from_slice(&u64::MAX.to_be_bytes());
    assert_eq!(parse(&top), Err(CloseCode::Protocol), "top bit set");
    // Fragments that add up past the limit.
    let mut frags = client_frame(false, 2, &[1; 5000], MASK);
    frags.extend(client_frame(true, 0, &[2; 5000], MASK));
    assert_eq!(run(&frags), Err(CloseCode::TooBig));
    // Exactly the limit in fragments is fine.
    let mut frags = client_frame(false, 2, &[1; 4096], MASK);
    frags.extend(client_frame(true, 0, &[2; 4096], MASK));
    assert_eq!(run(&frags).unwrap().len(), 1);
}

#[test]
fn protocol_errors_close_with_1002() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked", vec![0x82, 0x01, 0x02]),
        ("rsv1", {
            let mut f = client_frame(true, 2, b"x", MASK);
            f[0] |= 0x40;
            f
        }),
        ("rsv3", {
            let mut f = client_frame(true, 2, b"x", MASK);
            f[0] |= 0x10;
            f
        }),
        ("opcode 3", client_frame(true, 3, b"x", MASK)),
        ("opcode 11", client_frame(true, 11, b"", MASK)),
        ("ping of 126", client_frame(true, 9, &[0; 126], MASK)),
        ("fragmented ping", client_frame(false, 9, b"x", MASK)),
        ("continuation first", client_frame(true, 0, b"x", MASK)),
        ("new message mid-message", {
            let mut f = client_frame(false, 2, b"a", MASK);
            f.extend(client_frame(true, 2, b"b", MASK));
            f
        }),
        ("text mid-message", {
            let mut f = client_frame(false, 2, b"a", MASK);
            f.extend(client_frame(true, 1, b"b", MASK));
            f
        }),
    ];
    for (what, bytes) in cases {
        assert_eq!(run(&bytes), Err(CloseCode::Protocol), "{what}");
    }
}

#[test]
fn fragments_with_control_frames_between_them() {
    let mut bytes = client_frame(false, 2, b"\x02he", MASK);
    bytes.extend(client_frame(true, 9, b"are you there", [1, 2, 3, 4]));
    bytes.extend(client_frame(false, 0, b"ll", [9, 9, 9, 9]));
    bytes.extend(client_frame(true, 10, b"unsolicited pong", MASK));
    bytes.extend(client_frame(true, 0, b"o", [0, 0, 0, 0]));
    bytes.extend(client_frame(true, 2, b"\x01next", MASK));
    let got = run(&bytes).unwrap();
    assert_eq!(
        got,
        vec![
            format!("pong {:?}", b"are you there"),
            format!("msg {:?}", b"\x02hello"),
            format!("msg {:?}", b"\x01next"),
        ]
    );
}

#[test]
fn close_frames_are_answered_with_a_fitting_code() {
    let close = |body: &[u8]| run(&client_frame(true, 8, body, MASK));
    assert_eq!(close(b""), Ok(vec!["close 1000".into()]));
    assert_eq!(close(&1000u16.to_be_bytes()), Ok(vec!["close 1000".into()]));
    assert_eq!(
        close(&[0x03, 0xe9, b'b', b'y', b'e']),
        Ok(vec!["close 1000".into()])
    );
    assert_eq!(close(&[0x03]), Ok(vec!["close 1002".into()]), "one byte");
    assert_eq!(close(&1005u16.to_be_bytes()), Ok(vec!["close 1002".into()]));
    assert_eq!(close(&999u16.to_be_bytes()), Ok(vec!["close 1002".into()]));
    assert_eq!(close(&4000u16.to_be_bytes()), Ok(vec!["close 1000".into()]));
    assert_eq!(
        close(&[0x03, 0xe8, 0xff, 0xfe]),
        Ok(vec!["close 1007".into()]),
        "reason not UTF-8"
    );
}

#[test]
fn server_frames_use_the_shortest_length_and_no_mask() {
    for (len, head) in [
        (0usize, 2usize),
        (125, 2),
        (126, 4),
        (4097, 4),
        (65535, 4),
        (65536, 10),
    ] {
        let mut out = Vec::new();
        write_header(&mut out, Opcode::Binary, len);
        assert_eq!(out.len(), head, "len {len}");
        assert_eq!(header_len(len), head);
        assert_eq!(out[0], 0x82);
        assert_eq!(out[1] & 0x80, 0, "unmasked");
    }
    let mut out = Vec::new();
    write_unit(&mut out, 2, b"abc");
    assert_eq!(out, [0x82, 4, 2, b'a', b'b', b'c']);
    let mut out = Vec::new();
    write_close(&mut out, CloseCode::TooBig);
    assert_eq!(out, [0x88, 2, 0x03, 0xf1]);
}

proptest! {
    /// Random bytes never panic, never claim more than they have, and never yield a message
    /// over the limit.
    #[test]
    fn random_bytes_are_handled(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut asm = Assembler::default();
        let mut at = 0;
        while let Ok(Some((f, n))) = parse(&bytes[at..]) {
            prop_assert!(n >= 2 && at + n <= bytes.len());
            at += n;
            match asm.feed(&f) {
                Ok(Step::Message(m)) => prop_assert!(m.len() <= MAX_MESSAGE),
                Ok(Step::Pong(p)) => prop_assert!(p.len() <= MAX_CONTROL),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }

    /// Any binary message split into any fragments comes back whole.
    #[test]
    fn fragments_reassemble(
        message in proptest::collection::vec(any::<u8>(), 1..3000),
        cuts in proptest::collection::vec(0usize..3000, 0..6),
        mask in any::<[u8; 4]>(),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % message.len()).collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut bounds = vec![0];
        bounds.extend(cuts.into_iter().filter(|&c| c > 0));
        bounds.push(message.len());
        let mut bytes = Vec::new();
        let pieces = bounds.len() - 1;
        for i in 0..pieces {
            let op = if i == 0 { 2 } else { 0 };
            bytes.extend(client_frame(i + 1 == pieces, op, &message[bounds[i]..bounds[i + 1]], mask));
        }
        prop_assert_eq!(run(&bytes), Ok(vec![format!("msg {message:?}")]));
    }
}
