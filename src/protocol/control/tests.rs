//! Tests of `control.rs`.

use super::*;

const TOKEN: &[u8; 32] = b"Q7fK2mZp9xLwR4tYb8nVc3hJd6gSa1eU";

fn head(op: u8) -> Vec<u8> {
    let mut v = vec![0x00, op, 0x05, 0x20];
    v.extend_from_slice(b"lobby");
    v.extend_from_slice(TOKEN);
    v
}

fn round_trip(d: ControlDatagram<'_>, expect: &[u8]) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = d.encode(&mut buf).unwrap();
    assert_eq!(&buf[..n], expect);
    assert_eq!(ControlDatagram::parse(expect), Ok(d));
    assert_eq!(
        ClientDatagram::parse(expect),
        Ok(ClientDatagram::Control(d))
    );
}

#[test]
fn worked_examples_match_protocol_md() {
    // §5.6: SEND ClientSeq 1 "hi", NACK 5-7, SYNC.
    let mut send = head(1);
    send.extend_from_slice(&[0x00, 0x00, 0x00, 0x01, 0x68, 0x69]);
    round_trip(
        ControlDatagram {
            room: b"lobby",
            token: TOKEN,
            body: ControlBody::Send {
                client_seq: 1,
                message: "hi",
            },
        },
        &send,
    );
    let mut nack = head(2);
    nack.extend_from_slice(&[0x00, 0x00, 0x00, 0x05, 0x00, 0x03]);
    round_trip(
        ControlDatagram {
            room: b"lobby",
            token: TOKEN,
            body: ControlBody::Nack {
                from_seq: 5,
                count: 3,
            },
        },
        &nack,
    );
    round_trip(
        ControlDatagram {
            room: b"lobby",
            token: TOKEN,
            body: ControlBody::Sync,
        },
        &head(3),
    );
}

#[test]
fn dispatch_tells_v1_from_control() {
    let v1 = [1u8, 1, b'r', b't', b'h', b'i'];
    assert!(!is_control(&v1));
    assert!(matches!(
        ClientDatagram::parse(&v1),
        Ok(ClientDatagram::Chat(d)) if d.message == "hi"
    ));
    assert!(!is_control(&[]));
    assert_eq!(
        ClientDatagram::parse(&[]),
        Err(ClientDatagramError::Chat(DatagramError::Malformed))
    );
    assert_eq!(
        ClientDatagram::parse(&[0]),
        Err(ClientDatagramError::Control(ControlError::Truncated))
    );
    let sync = head(3);
    let d = ClientDatagram::parse(&sync).unwrap();
    assert_eq!((d.room(), d.token()), (&b"lobby"[..], &TOKEN[..]));
    assert_eq!(ControlDatagram::parse(&v1), Err(ControlError::NotControl));
}

#[test]
fn nack_limits() {
    let nack = |from: u32, count: u16| {
        let mut v = head(2);
        v.extend_from_slice(&from.to_be_bytes());
        v.extend_from_slice(&count.to_be_bytes());
        v
    };
    assert_eq!(
        ControlDatagram::parse(&nack(5, 0)),
        Err(ControlError::Count(0))
    );
    assert_eq!(
        ControlDatagram::parse(&nack(5, 513)),
        Err(ControlError::Count(513))
    );
    assert_eq!(
        ControlDatagram::parse(&nack(0, 3)),
        Err(ControlError::FromSeqZero)
    );
    for (from, count) in [(1, 1), (u32::MAX, 512), (0xffff_fffe, 7)] {
        let bytes = nack(from, count);
        let d = ControlDatagram::parse(&bytes).unwrap();
        assert_eq!(
            d.body,
            ControlBody::Nack {
                from_seq: from,
                count
            }
        );
    }
    let mut long = nack(5, 3);
    long.push(0);
    assert_eq!(
        ControlDatagram::parse(&long),
        Err(ControlError::BodyLength(ControlOp::Nack))
    );
    long.truncate(long.len() - 2);
    assert_eq!(
        ControlDatagram::parse(&long),
        Err(ControlError::BodyLength(ControlOp::Nack))
    );
    let bad = ControlDatagram {
        room: b"r",
        token: b"t",
        body: ControlBody::Nack {
            from_seq: 1,
            count: 513,
        },
    };
    assert_eq!(bad.encode(&mut [0u8; 64]), Err(ControlError::Count(513)));
}

#[test]
fn send_and_sync_limits() {
    // SEND: ClientSeq and at least one message byte.
    for short in [&[][..], &[0, 0, 0], &[0, 0, 0, 1]] {
        let mut v = head(1);
        v.extend_from_slice(short);
        assert_eq!(
            ControlDatagram::parse(&v),
            Err(ControlError::BodyLength(ControlOp::Send)),
            "{short:?}"
        );
    }
    let mut v = vec![0, 1, 1, 1, b'r', b't', 0, 0, 0, 9];
    v.extend(std::iter::repeat_n(b'a', MAX_MESSAGE));
    assert!(matches!(
        ControlDatagram::parse(&v).unwrap().body,
        ControlBody::Send { client_seq: 9, message } if message.len() == MAX_MESSAGE
    ));
    v.push(b'a');
    assert_eq!(
        ControlDatagram::parse(&v),
        Err(ControlError::MessageTooLong)
    );
    let mut v = vec![0, 1, 1, 1, b'r', b't', 0, 0, 0, 9, b'\n'];
    assert_eq!(
        ControlDatagram::parse(&v),
        Err(ControlError::MessageText(TextError::ControlChar))
    );
    v[10] = 0xff;
    assert_eq!(
        ControlDatagram::parse(&v),
        Err(ControlError::MessageText(TextError::NotUtf8))
    );
    // SYNC: nothing after the token.
    let mut s = head(3);
    s.push(0);
    assert_eq!(
        ControlDatagram::parse(&s),
        Err(ControlError::BodyLength(ControlOp::Sync))
    );
}

#[test]
fn header_limits() {
    assert_eq!(
        ControlDatagram::parse(&[0, 3, 1]),
        Err(ControlError::Truncated)
    );
    assert_eq!(
        ControlDatagram::parse(&[0, 4, 1, 1, b'r', b't']),
        Err(ControlError::UnknownOp(4))
    );
    assert_eq!(
        ControlDatagram::parse(&[0, 0, 1, 1, b'r', b't']),
        Err(ControlError::UnknownOp(0))
    );
    assert_eq!(
        ControlDatagram::parse(&[0, 3, 0, 1, b't']),
        Err(ControlError::RoomNameSize)
    );
    assert_eq!(
        ControlDatagram::parse(&[0, 3, 1, 0, b'r']),
        Err(ControlError::TokenSize)
    );
    assert_eq!(
        ControlDatagram::parse(&[0, 3, 2, 1, b'r', b't']),
        Err(ControlError::ShortName)
    );
    // 255-byte room and token parse; 4097 bytes is over the datagram limit whatever it
    // holds.
    let mut v = vec![0, 3, 255, 255];
    v.extend(std::iter::repeat_n(b'x', 510));
    let d = ControlDatagram::parse(&v).unwrap();
    assert_eq!((d.room.len(), d.token.len()), (255, 255));
    let mut big = vec![0u8, 1, 1, 1, b'r', b't', 0, 0, 0, 1];
    big.resize(MAX_DATAGRAM + 1, b'a');
    assert_eq!(ControlDatagram::parse(&big), Err(ControlError::Oversize));
    big.truncate(MAX_DATAGRAM);
    assert_eq!(
        ControlDatagram::parse(&big),
        Err(ControlError::MessageTooLong)
    );
    // 4 + 255 + 255 + 4 + 3800 bytes cannot be encoded.
    let msg = "m".repeat(MAX_MESSAGE);
    let d = ControlDatagram {
        room: &[b'r'; 255],
        token: &[b't'; 255],
        body: ControlBody::Send {
            client_seq: 1,
            message: &msg,
        },
    };
    assert_eq!(d.encode(&mut [0u8; 8192]), Err(ControlError::Oversize));
    let d = ControlDatagram {
        room: &[b'r'; 256],
        token: b"t",
        body: ControlBody::Sync,
    };
    assert_eq!(d.encode(&mut [0u8; 8192]), Err(ControlError::RoomNameSize));
    let d = ControlDatagram {
        room: b"r",
        token: b"",
        body: ControlBody::Sync,
    };
    assert_eq!(d.encode(&mut [0u8; 8192]), Err(ControlError::TokenSize));
    // A buffer too small for the datagram.
    let d = ControlDatagram {
        room: b"r",
        token: b"t",
        body: ControlBody::Sync,
    };
    assert_eq!(d.encode(&mut [0u8; 5]), Err(ControlError::Oversize));
    assert_eq!(d.encode(&mut [0u8; 6]), Ok(6));
}
