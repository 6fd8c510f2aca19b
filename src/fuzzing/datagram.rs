//! The client-to-server datagram fuzz body.

use crate::protocol::datagram::{ChatDatagram, DatagramError};
use crate::protocol::{MAX_DATAGRAM, MAX_MESSAGE, text};

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
