//! Tests of `resp.rs`: every type, every cut, the limits, and the bytes Redis really sends.

use super::*;

/// Parses one whole frame that must take all of `bytes`.
fn whole(bytes: &[u8]) -> Frame<'_> {
    match parse(bytes) {
        Ok(Some((f, used))) => {
            assert_eq!(used, bytes.len(), "{:?}", String::from_utf8_lossy(bytes));
            f
        }
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    }
}

fn items<'a>(f: &Frame<'a>) -> Vec<Frame<'a>> {
    match f {
        Frame::Array(a) | Frame::Set(a) | Frame::Map(a) | Frame::Push(a) | Frame::Attribute(a) => {
            a.iter().collect()
        }
        other => panic!("not an aggregate: {other:?}"),
    }
}

#[test]
fn simple_types() {
    assert_eq!(whole(b"+OK\r\n"), Frame::Simple(b"OK"));
    assert_eq!(whole(b"-ERR no\r\n"), Frame::Error(b"ERR no"));
    assert_eq!(whole(b":25\r\n"), Frame::Integer(25));
    assert_eq!(whole(b":-7\r\n"), Frame::Integer(-7));
    assert_eq!(whole(b":+7\r\n"), Frame::Integer(7));
    assert_eq!(whole(b":9223372036854775807\r\n"), Frame::Integer(i64::MAX));
    assert_eq!(
        whole(b":-9223372036854775808\r\n"),
        Frame::Integer(i64::MIN)
    );
    assert_eq!(whole(b"_\r\n"), Frame::Null);
    assert_eq!(whole(b"#t\r\n"), Frame::Boolean(true));
    assert_eq!(whole(b"#f\r\n"), Frame::Boolean(false));
    assert_eq!(whole(b",3.25\r\n"), Frame::Double(b"3.25"));
    assert_eq!(
        whole(b"(12345678901234567890123\r\n"),
        Frame::BigNumber(b"12345678901234567890123")
    );
    assert_eq!(whole(b"+\r\n"), Frame::Simple(b""));
}

#[test]
fn strings_hold_any_bytes() {
    assert_eq!(whole(b"$5\r\nhe\r\no\r\n"), Frame::Blob(b"he\r\no"));
    assert_eq!(whole(b"$0\r\n\r\n"), Frame::Blob(b""));
    assert_eq!(whole(b"$-1\r\n"), Frame::Null);
    assert_eq!(whole(b"*-1\r\n"), Frame::Null);
    assert_eq!(whole(b"=8\r\ntxt:some\r\n"), Frame::Verbatim(b"txt:some"));
    assert_eq!(whole(b"!9\r\nERR there\r\n"), Frame::Error(b"ERR there"));
}

#[test]
fn aggregates_nest_and_are_walked_in_order() {
    let f = whole(b"*3\r\n:1\r\n*2\r\n+a\r\n$1\r\nb\r\n_\r\n");
    let top = items(&f);
    assert_eq!(top.len(), 3);
    assert_eq!(top[0], Frame::Integer(1));
    assert_eq!(items(&top[1]), vec![Frame::Simple(b"a"), Frame::Blob(b"b")]);
    assert_eq!(top[2], Frame::Null);
    let empty = whole(b"*0\r\n");
    assert!(matches!(empty, Frame::Array(a) if a.is_empty() && a.iter().next().is_none()));
    let set = whole(b"~2\r\n:1\r\n:2\r\n");
    assert!(matches!(set, Frame::Set(a) if a.len() == 2));
}

#[test]
fn a_map_counts_keys_and_values() {
    let f = whole(b"%2\r\n+server\r\n+redis\r\n+proto\r\n:3\r\n");
    let Frame::Map(m) = f else { panic!("{f:?}") };
    assert_eq!(m.len(), 4);
    let kv: Vec<_> = m.iter().collect();
    assert_eq!(kv[2], Frame::Simple(b"proto"));
    assert_eq!(kv[3], Frame::Integer(3));
    let attr = whole(b"|1\r\n+ttl\r\n:3600\r\n");
    assert!(matches!(attr, Frame::Attribute(a) if a.len() == 2));
}

/// What Redis 7 sends a subscriber: the push of a message on its channel.
#[test]
fn a_pubsub_message_push() {
    let bytes = b">3\r\n$7\r\nmessage\r\n$9\r\nbench-1-0\r\n$11\r\nhello world\r\n";
    let f = whole(bytes);
    let Frame::Push(p) = f else { panic!("{f:?}") };
    let v: Vec<_> = p.iter().collect();
    assert_eq!(
        v,
        vec![
            Frame::Blob(b"message"),
            Frame::Blob(b"bench-1-0"),
            Frame::Blob(b"hello world")
        ]
    );
}

#[test]
fn frames_follow_each_other() {
    let bytes = b":3\r\n>3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n+OK\r\n";
    let mut at = 0;
    let mut kinds = Vec::new();
    while let Some((f, used)) = parse(&bytes[at..]).unwrap() {
        kinds.push(std::mem::discriminant(&f));
        at += used;
    }
    assert_eq!(at, bytes.len());
    assert_eq!(kinds.len(), 3);
}

/// A frame cut anywhere is incomplete, never an error nor a different frame.
#[test]
fn every_cut_is_incomplete() {
    let frames: [&[u8]; 7] = [
        b"+OK\r\n",
        b":-12\r\n",
        b"$5\r\nhello\r\n",
        b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n",
        b"%1\r\n+a\r\n*2\r\n#t\r\n_\r\n",
        b"$-1\r\n",
        b"=8\r\ntxt:some\r\n",
    ];
    for f in frames {
        for cut in 0..f.len() {
            assert_eq!(
                parse(&f[..cut]),
                Ok(None),
                "{:?} cut at {cut}",
                String::from_utf8_lossy(f)
            );
        }
        assert!(parse(f).unwrap().is_some());
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let cases: [(&[u8], ParseError); 16] = [
        (b"?what\r\n", ParseError::UnknownType(b'?')),
        (b"x", ParseError::UnknownType(b'x')),
        (b":12a\r\n", ParseError::BadNumber),
        (b":\r\n", ParseError::BadNumber),
        (b":9223372036854775808\r\n", ParseError::BadNumber),
        (b"$-2\r\n", ParseError::BadNumber),
        (b"$ 3\r\nabc\r\n", ParseError::BadNumber),
        (b"$3\r\nabc\rX", ParseError::BadTerminator),
        (b"+a\rb\r\n", ParseError::BadTerminator),
        (b"+a\nb\r\n", ParseError::BadTerminator),
        (b"$3\r\nabcXY", ParseError::BadTerminator),
        (b"#x\r\n", ParseError::BadValue),
        (b"_x\r\n", ParseError::BadValue),
        (b"$?\r\n", ParseError::Streamed),
        (b"*?\r\n", ParseError::Streamed),
        (b"%-1\r\n", ParseError::BadNumber),
    ];
    for (bytes, want) in cases {
        assert_eq!(
            parse(bytes),
            Err(want),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    // An error deep inside an aggregate is the aggregate's error.
    assert_eq!(parse(b"*2\r\n:1\r\n:x\r\n"), Err(ParseError::BadNumber));
}

#[test]
fn limits_are_checked_before_waiting_for_the_bytes() {
    // A bulk string longer than a frame may be is refused from its header alone.
    let head = format!("${}\r\n", MAX_FRAME);
    assert_eq!(parse(head.as_bytes()), Err(ParseError::TooLarge));
    assert_eq!(
        parse(b"$18446744073709551615\r\n"),
        Err(ParseError::TooLarge)
    );
    assert_eq!(
        parse(b"$999999999999999999999\r\n"),
        Err(ParseError::BadNumber)
    );
    // So is an aggregate with more elements than could fit.
    let head = format!("*{}\r\n", MAX_FRAME);
    assert_eq!(parse(head.as_bytes()), Err(ParseError::TooLarge));
    assert_eq!(
        parse(b"%9223372036854775807\r\n"),
        Err(ParseError::TooLarge)
    );
    // A line with no end is refused once it is longer than a frame, not waited for.
    let mut long = vec![b'+'; 1];
    long.resize(MAX_FRAME, b'a');
    assert_eq!(parse(&long), Ok(None));
    long.push(b'a');
    assert_eq!(parse(&long), Err(ParseError::TooLarge));
    // The largest bulk string that fits is taken.
    let len = MAX_FRAME - 2 - format!("${}\r\n", MAX_FRAME).len();
    let mut big = format!("${len}\r\n").into_bytes();
    big.resize(big.len() + len, b'x');
    big.extend_from_slice(b"\r\n");
    assert!(big.len() <= MAX_FRAME);
    assert!(matches!(whole(&big), Frame::Blob(b) if b.len() == len));
    // Nothing at all is incomplete, not an error.
    assert_eq!(parse(b""), Ok(None));
}

#[test]
fn nesting_is_bounded() {
    let deep = |n: usize| {
        let mut v = b"*1\r\n".repeat(n);
        v.extend_from_slice(b":1\r\n");
        v
    };
    assert!(parse(&deep(MAX_DEPTH)).unwrap().is_some());
    assert_eq!(parse(&deep(MAX_DEPTH + 1)), Err(ParseError::TooDeep));
    // Deep but cut: the limit is found before the end is waited for.
    let v = deep(MAX_DEPTH + 1);
    assert_eq!(parse(&v[..v.len() - 2]), Err(ParseError::TooDeep));
}

#[test]
fn commands_are_arrays_of_bulk_strings() {
    let mut out = Vec::new();
    command(&mut out, &[b"HELLO", b"3"]);
    assert_eq!(out, b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n");
    out.clear();
    publish(&mut out, b"bench-7-0", &[b'.'; 64]);
    let mut want = b"*3\r\n$7\r\nPUBLISH\r\n$9\r\nbench-7-0\r\n$64\r\n".to_vec();
    want.extend_from_slice(&[b'.'; 64]);
    want.extend_from_slice(b"\r\n");
    assert_eq!(out, want);
    out.clear();
    command(&mut out, &[]);
    assert_eq!(out, b"*0\r\n");
}

/// What the encoder writes, the parser reads back element for element.
#[test]
fn encode_then_parse() {
    let args: [&[u8]; 4] = [b"SUBSCRIBE", b"", b"a\r\nb", &[0u8, 255, 13, 10]];
    let mut out = Vec::new();
    command(&mut out, &args);
    let f = whole(&out);
    let got: Vec<_> = items(&f);
    let want: Vec<_> = args.iter().map(|a| Frame::Blob(a)).collect();
    assert_eq!(got, want);
}

/// Arbitrary bytes never panic, and what parses took no more than it was given.
#[test]
fn any_bytes_parse_without_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let alphabet = b"+-:$*%~>|_#,(=!\r\n0123456789?-tfabc";
    for _ in 0..20_000 {
        let mut v = Vec::new();
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = (state % 40) as usize;
        for i in 0..len {
            let r = state.rotate_left(i as u32 * 7);
            v.push(alphabet[(r % alphabet.len() as u64) as usize]);
        }
        if let Ok(Some((f, used))) = parse(&v) {
            assert!(used <= v.len());
            if let Frame::Array(a) | Frame::Map(a) | Frame::Push(a) | Frame::Set(a) = f {
                assert_eq!(a.iter().count(), a.len());
            }
        }
    }
}
