//! Tests of `frame.rs`.

use super::*;

fn request_bytes(req: &Request) -> Vec<u8> {
    let mut out = Vec::new();
    req.encode(&mut out).unwrap();
    out
}

fn parse_one(buf: &[u8]) -> Result<Request<'_>, InvalidField> {
    let (frame, n) = split_request(buf).unwrap().unwrap();
    assert_eq!(n, buf.len());
    Request::parse(&frame)
}

fn raw(room: &[u8], op: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(&mut out, op, State::Request, room, payload);
    out
}

#[test]
fn worked_example_create_matches_protocol_md() {
    let req = Request::Create {
        room: "lobby",
        user: "alice",
        password: b"pw",
        capacity: 10,
        resume_key: None,
    };
    let bytes = request_bytes(&req);
    let mut expect = vec![0x05, 0x01, 0x00];
    expect.extend_from_slice(&[0; 28]);
    expect.push(0x0b);
    expect.extend_from_slice(b"lobby");
    expect.extend_from_slice(&[5, b'a', b'l', b'i', b'c', b'e', 2, b'p', b'w', 0, 10]);
    assert_eq!(bytes, expect);
    assert_eq!(parse_one(&bytes), Ok(req));
}

#[test]
fn worked_example_replies_match_protocol_md() {
    let mut out = Vec::new();
    encode_response(&mut out, 1, b"lobby", Status::Ok);
    let mut expect = vec![0x05, 0x01, 0x01];
    expect.extend_from_slice(&[0; 28]);
    expect.push(0x01);
    expect.extend_from_slice(b"lobby");
    expect.push(0);
    assert_eq!(out, expect);

    out.clear();
    let token = b"Q7fK2mZp9xLwR4tYb8nVc3hJd6gSa1eU";
    let grant = Grant {
        token,
        udp_port: 9001,
        idle_timeout: 60,
    };
    grant.encode(&mut out, Operation::Create, b"lobby");
    assert_eq!(&out[..3], &[5, 1, 2]);
    assert_eq!(out[31], 0x25);
    assert_eq!(&out[32..37], b"lobby");
    assert_eq!(out[37], 0x20);
    assert_eq!(&out[38..70], token);
    assert_eq!(&out[70..], &[0x23, 0x29, 0x00, 0x3c]);
    let (frame, n) = split_reply(&out).unwrap().unwrap();
    assert_eq!(n, out.len());
    assert_eq!(Grant::parse(frame.payload), Some(grant));
}

#[test]
fn every_prefix_is_incomplete() {
    let bytes = request_bytes(&Request::Join {
        room: "r",
        user: "bob",
        password: b"",
        resume_key: None,
    });
    for cut in 0..bytes.len() {
        assert_eq!(split_request(&bytes[..cut]), Ok(None), "cut at {cut}");
    }
    // Two frames back to back split one at a time.
    let mut two = bytes.clone();
    two.extend_from_slice(&request_bytes(&Request::List));
    let (_, n) = split_request(&two).unwrap().unwrap();
    assert_eq!(n, bytes.len());
    let (f, _) = split_request(&two[n..]).unwrap().unwrap();
    assert_eq!(Request::parse(&f), Ok(Request::List));
}

#[test]
fn malformed_headers_are_judged_before_the_body() {
    let mut h = raw(b"r", 9, b"");
    assert_eq!(
        split_request(&h[..HEADER_LEN]),
        Err(MalformedFrame {
            op: 9,
            reason: Malformed::UnknownOperation
        })
    );
    h = raw(b"r", 1, b"");
    h[2] = 1;
    assert_eq!(
        split_request(&h).unwrap_err().reason,
        Malformed::NotARequest(1)
    );
    // Payload size 4097: refused from the header alone.
    let mut big = vec![0u8; HEADER_LEN];
    big[1] = 2;
    big[30] = 0x10;
    big[31] = 0x01;
    assert_eq!(
        split_request(&big).unwrap_err().reason,
        Malformed::PayloadTooLarge(Some(4097))
    );
    // A size that does not fit in 64 bits.
    big[3] = 1;
    assert_eq!(
        split_request(&big).unwrap_err(),
        MalformedFrame {
            op: 2,
            reason: Malformed::PayloadTooLarge(None)
        }
    );
    // Exactly 4096 is fine (just incomplete).
    let mut ok = vec![0u8; HEADER_LEN];
    ok[0] = 1;
    ok[1] = 2;
    ok[30] = 0x10;
    assert_eq!(split_request(&ok), Ok(None));
}

#[test]
fn invalid_fields_are_named() {
    let cases: Vec<(Vec<u8>, InvalidField)> = vec![
        (
            raw(b"", 1, &[1, b'a', 0, 0, 0]),
            InvalidField::EmptyRoomName,
        ),
        (
            raw(b"a\nb", 2, &[1, b'a', 0]),
            InvalidField::RoomName(TextError::ControlChar),
        ),
        (
            raw(&[0xff], 2, &[1, b'a', 0]),
            InvalidField::RoomName(TextError::NotUtf8),
        ),
        (raw(b"r", 2, &[0, 0]), InvalidField::EmptyUserName),
        (
            raw(b"r", 2, &[1, 0x1b, 0]),
            InvalidField::UserName(TextError::ControlChar),
        ),
        // v1.1: a byte after the password is a ResumeKeySize, here 0.
        (
            raw(b"r", 2, &[1, b'a', 0, 0]),
            InvalidField::ResumeKeyLength,
        ),
        (
            raw(b"r", 2, &[1, b'a', 0, 1, 1]),
            InvalidField::ResumeKeyLength,
        ),
        (
            raw(b"r", 2, &[1, b'a', 0, 16, 1]),
            InvalidField::PayloadLength,
        ),
        (raw(b"r", 2, &[1, b'a']), InvalidField::PayloadLength),
        (raw(b"r", 1, &[1, b'a', 0, 0]), InvalidField::PayloadLength),
        (
            raw(b"r", 1, &[1, b'a', 0, 0, 0, 0]),
            InvalidField::ResumeKeyLength,
        ),
        (raw(b"r", 3, b""), InvalidField::TokenLength),
        (raw(b"r", 3, &[b'x'; 256]), InvalidField::TokenLength),
        (raw(b"r", 4, b""), InvalidField::ListNotEmpty),
        (raw(b"", 4, b"x"), InvalidField::ListNotEmpty),
    ];
    for (bytes, want) in cases {
        assert_eq!(parse_one(&bytes), Err(want), "{bytes:?}");
    }
}

#[test]
fn valid_requests_round_trip() {
    let reqs = [
        Request::Create {
            room: "部屋",
            user: "ゆき",
            password: &[0, 255, 10],
            capacity: 0,
            resume_key: None,
        },
        Request::Join {
            room: "r",
            user: "b",
            password: b"",
            resume_key: None,
        },
        Request::Leave {
            room: "r",
            token: &[b'x'; 255],
        },
        Request::List,
        Request::Create {
            room: "r",
            user: "h",
            password: b"",
            capacity: 5,
            resume_key: Some(&[7; MIN_RESUME_KEY]),
        },
        Request::Join {
            room: "r",
            user: "b",
            password: b"pw",
            resume_key: Some(&[0; MAX_RESUME_KEY]),
        },
        Request::Resume {
            room: "r",
            token: &[b'x'; 255],
            resume_key: &[1; MAX_RESUME_KEY],
        },
        Request::Resume {
            room: "r",
            token: b"t",
            resume_key: &[1; MIN_RESUME_KEY],
        },
    ];
    for req in reqs {
        assert_eq!(parse_one(&request_bytes(&req)), Ok(req));
    }
}

#[test]
fn resume_key_bytes_and_limits() {
    // JOIN of the worked example's shape with a 16-byte key: payload = user, password,
    // then 0x10 and the key.
    let key = *b"0123456789abcdef";
    let bytes = request_bytes(&Request::Join {
        room: "lobby",
        user: "bob",
        password: b"",
        resume_key: Some(&key),
    });
    let mut expect = vec![0x05, 0x02, 0x00];
    expect.extend_from_slice(&[0; 28]);
    expect.push(5 + 17);
    expect.extend_from_slice(b"lobby");
    expect.extend_from_slice(&[3, b'b', b'o', b'b', 0, 0x10]);
    expect.extend_from_slice(&key);
    assert_eq!(bytes, expect);

    // Key sizes 15 and 65 are invalid fields, on CREATE, JOIN and RESUME alike.
    let with_key = |op: u8, size: u8| {
        let mut p = match op {
            1 => vec![1, b'h', 0, 0, 0],
            2 => vec![1, b'b', 0],
            _ => vec![1, b't'],
        };
        p.push(size);
        p.extend(std::iter::repeat_n(9, usize::from(size)));
        raw(b"r", op, &p)
    };
    for op in [1, 2, 5] {
        for size in [0, 15, 65, 255] {
            assert_eq!(
                parse_one(&with_key(op, size)),
                Err(InvalidField::ResumeKeyLength),
                "op {op} key size {size}"
            );
        }
        for size in [16, 64] {
            let bytes = with_key(op, size);
            assert_eq!(parse_one(&bytes).unwrap().operation() as u8, op);
        }
        // Trailing bytes after the key, or a key cut short.
        let mut b = with_key(op, 16);
        b.push(0);
        b[31] += 1;
        assert_eq!(parse_one(&b), Err(InvalidField::PayloadLength), "op {op}");
        let mut b = with_key(op, 16);
        b.pop();
        b[31] -= 1;
        assert_eq!(parse_one(&b), Err(InvalidField::PayloadLength), "op {op}");
    }
    // RESUME: token 1..=255, and the key is not optional.
    assert_eq!(
        parse_one(&raw(b"r", 5, &[1, b't'])),
        Err(InvalidField::PayloadLength)
    );
    let mut p = vec![0];
    p.push(16);
    p.extend_from_slice(&[1; 16]);
    assert_eq!(parse_one(&raw(b"r", 5, &p)), Err(InvalidField::TokenLength));
    assert_eq!(
        parse_one(&raw(b"", 5, &p)),
        Err(InvalidField::EmptyRoomName)
    );
    // Encoders refuse what they cannot carry.
    let mut out = Vec::new();
    let short = Request::Resume {
        room: "r",
        token: b"t",
        resume_key: &[1; 15],
    };
    assert_eq!(short.encode(&mut out), Err(InvalidField::ResumeKeyLength));
    let long = Request::Create {
        room: "r",
        user: "h",
        password: b"",
        capacity: 0,
        resume_key: Some(&[1; 65]),
    };
    assert_eq!(long.encode(&mut out), Err(InvalidField::ResumeKeyLength));
    let no_token = Request::Resume {
        room: "r",
        token: b"",
        resume_key: &[1; 16],
    };
    assert_eq!(no_token.encode(&mut out), Err(InvalidField::TokenLength));
    assert!(out.is_empty());
    // RESUME's COMPLETE is JOIN's.
    let grant = Grant {
        token: b"tok",
        udp_port: 9001,
        idle_timeout: 60,
    };
    grant.encode(&mut out, Operation::Resume, b"r");
    let (f, _) = split_reply(&out).unwrap().unwrap();
    assert_eq!((f.op, f.state), (5, State::Complete as u8));
    assert_eq!(Grant::parse(f.payload), Some(grant));
}

#[test]
fn list_fits_in_4096_bytes_and_round_trips() {
    let names: Vec<String> = (0..40)
        .map(|i| format!("{i:03}{}", "x".repeat(200)))
        .collect();
    let rooms = names.iter().map(|n| RoomSummary {
        name: n,
        members: 3,
        capacity: 10,
        password: true,
    });
    let mut out = Vec::new();
    let count = encode_list(&mut out, rooms);
    let (frame, n) = split_reply(&out).unwrap().unwrap();
    assert_eq!(n, out.len());
    assert!(frame.payload.len() <= MAX_PAYLOAD);
    // Each entry is 1 + 203 + 5 = 209 bytes: (4096 - 2) / 209 = 19.
    assert_eq!(count, 19);
    let parsed = parse_list(frame.payload).unwrap();
    assert_eq!(parsed.len(), 19);
    assert_eq!(parsed[0].name, names[0]);
    assert!(parsed[18].password);
    assert_eq!(parse_list(&frame.payload[..frame.payload.len() - 1]), None);
}

#[test]
fn server_full_frame_reads_as_server_full() {
    let mut out = Vec::new();
    encode_response(&mut out, 0, b"", Status::ServerFull);
    let (frame, _) = split_reply(&out).unwrap().unwrap();
    assert_eq!(parse_status(&frame), Some(Status::ServerFull));
}
