use std::collections::BTreeSet;
use std::time::Instant;

use proptest::prelude::*;

use super::*;

/// The vectors `web/test/e2e.test.js` checks too.
const VECTORS: &str = include_str!("../../../web/test/vectors/e2e.json");

/// One vector of `e2e.json`. The file holds only ASCII strings without escapes in the fields
/// read here (text is hex), so a small scan reads it without a JSON library.
struct Vector {
    passphrase: String,
    room: String,
    user: String,
    sender_id: SenderId,
    counter: u64,
    plaintext: String,
    room_key: [u8; 32],
    sender_key: [u8; 32],
    commitment: [u8; 8],
    envelope: String,
}

fn field<'a>(object: &'a str, name: &str) -> &'a str {
    let key = format!("\"{name}\": \"");
    let start = object.find(&key).unwrap_or_else(|| panic!("no {name}")) + key.len();
    let len = object[start..].find('"').expect("closing quote");
    &object[start..start + len]
}

fn hex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex_text(s: &str) -> String {
    String::from_utf8(hex(s)).expect("UTF-8")
}

fn vectors() -> Vec<Vector> {
    let list = &VECTORS[VECTORS.find("\"vectors\"").expect("vectors")..];
    list.split('{')
        .skip(1)
        .map(|object| Vector {
            passphrase: hex_text(field(object, "passphrase_hex")),
            room: hex_text(field(object, "room_hex")),
            user: hex_text(field(object, "user_hex")),
            sender_id: hex(field(object, "sender_id_hex")).try_into().unwrap(),
            counter: field(object, "counter").parse().unwrap(),
            plaintext: hex_text(field(object, "plaintext_hex")),
            room_key: hex(field(object, "room_key_hex")).try_into().unwrap(),
            sender_key: hex(field(object, "sender_key_hex")).try_into().unwrap(),
            commitment: hex(field(object, "commitment_hex")).try_into().unwrap(),
            envelope: field(object, "envelope").to_owned(),
        })
        .collect()
}

/// The key of docs/protocol.md's example (room `lobby`, passphrase `correct horse`), without
/// spending 600 000 rounds on it in every test.
fn lobby_key() -> RoomKey {
    RoomKey::from_bytes(vectors()[0].room_key)
}

fn other_key() -> RoomKey {
    RoomKey::from_bytes([7; 32])
}

const ID: SenderId = [1, 2, 3, 4, 5, 6, 7, 8];

fn binary(envelope: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD
        .decode(envelope.strip_prefix(PREFIX).unwrap())
        .unwrap()
}

fn envelope_of(binary: &[u8]) -> String {
    format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(binary))
}

#[test]
fn the_shared_vectors_seal_and_open_exactly() {
    let vectors = vectors();
    assert_eq!(vectors.len(), 3);
    let mut keys: Vec<(String, String, RoomKey)> = Vec::new();
    for v in &vectors {
        // Derive each distinct key once: it is slow by design.
        let key = match keys
            .iter()
            .find(|(p, r, _)| *p == v.passphrase && *r == v.room)
        {
            Some((_, _, key)) => key.clone(),
            None => {
                let key = RoomKey::derive(&v.passphrase, &v.room);
                keys.push((v.passphrase.clone(), v.room.clone(), key.clone()));
                key
            }
        };
        assert_eq!(key.as_bytes(), &v.room_key, "room key of {}", v.envelope);
        assert_eq!(key.sender_key(&v.sender_id), v.sender_key);
        assert_eq!(commitment(&v.sender_key), v.commitment);
        let mut sender = Sender::with_id(&key, v.sender_id, v.counter);
        let envelope = sender.seal(&v.plaintext, &v.room, &v.user).unwrap();
        assert_eq!(envelope, v.envelope);
        assert_eq!(sender.next_counter(), v.counter + 1);
        let opened = Receiver::new(&key)
            .open(&envelope, &v.room, &v.user)
            .unwrap();
        assert_eq!(
            opened,
            Plaintext {
                text: v.plaintext.clone(),
                sender_id: v.sender_id,
                counter: v.counter,
            }
        );
    }
}

#[test]
fn nfc_makes_composed_and_decomposed_passphrases_one_key() {
    // The vector's passphrase is decomposed (e + U+0301); its key is that of the composed é.
    let v = &vectors()[1];
    assert_eq!(v.passphrase, "cafe\u{301}");
    let composed = RoomKey::derive("caf\u{e9}", &v.room);
    assert_eq!(composed.as_bytes(), &v.room_key);
}

#[test]
fn derive_in_background_gives_the_key_without_blocking_the_caller() {
    let v = &vectors()[0];
    let mut deriving = RoomKey::derive_in_background(v.passphrase.clone(), v.room.clone()).unwrap();
    // 600 000 rounds take far longer than this call: the caller got control back at once.
    assert_eq!(deriving.try_take(), None);
    let started = Instant::now();
    let key = loop {
        if let Some(key) = deriving.try_take() {
            break key;
        }
        assert!(
            started.elapsed().as_secs() < 300,
            "derivation never finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(key.as_bytes(), &v.room_key);
    // Taken once: then nothing more.
    assert_eq!(deriving.try_take(), None);
    assert_eq!(deriving.wait(), None);
}

#[test]
fn room_key_debug_hides_the_key() {
    assert_eq!(format!("{:?}", lobby_key()), "RoomKey(..)");
}

#[test]
fn senders_draw_random_ids_and_count_from_one() {
    let key = lobby_key();
    let a = Sender::new(&key);
    let b = Sender::new(&key);
    assert_ne!(a.id(), b.id());
    assert_eq!(a.next_counter(), 1);
}

#[test]
fn a_room_of_two_reads_each_other_and_every_message_is_a_new_counter() {
    let key = lobby_key();
    let mut alice = RoomCrypto::new(&key, "lobby");
    let mut bob = RoomCrypto::new(&key, "lobby");
    let first = alice.seal("hello bob", "alice").unwrap();
    let again = alice.seal("hello bob", "alice").unwrap();
    // The same text sealed twice is two messages (two counters), never the same bytes.
    assert_ne!(first, again);
    assert!(is_envelope(&first));
    assert_eq!(
        bob.open(&first, "alice"),
        Shown::Encrypted("hello bob".into())
    );
    assert_eq!(
        bob.open(&again, "alice"),
        Shown::Encrypted("hello bob".into())
    );
    // Alice reads her own messages as the server echoes them.
    assert_eq!(
        alice.open(&first, "alice"),
        Shown::Encrypted("hello bob".into())
    );
    let reply = bob.seal("hi alice", "bob").unwrap();
    assert_eq!(
        alice.open(&reply, "bob"),
        Shown::Encrypted("hi alice".into())
    );
    assert_eq!(alice.room(), "lobby");
}

#[test]
fn a_retransmitted_envelope_is_shown_once_and_the_replay_counted() {
    let key = lobby_key();
    let mut alice = RoomCrypto::new(&key, "lobby");
    let mut bob = RoomCrypto::new(&key, "lobby");
    let envelope = alice.seal("once", "alice").unwrap();
    assert_eq!(
        bob.open(&envelope, "alice"),
        Shown::Encrypted("once".into())
    );
    assert_eq!(bob.open(&envelope, "alice"), Shown::Replay);
    assert_eq!(bob.open(&envelope, "alice"), Shown::Replay);
    assert_eq!((bob.replays(), bob.undecryptable()), (2, 0));
    assert_eq!(E2eError::Replayed.to_string(), "replayed");
}

#[test]
fn a_wrong_passphrase_is_caught_by_the_commitment() {
    let envelope = Sender::with_id(&other_key(), ID, 1)
        .seal("secret", "lobby", "alice")
        .unwrap();
    let mut room = RoomCrypto::new(&lobby_key(), "lobby");
    let shown = room.open(&envelope, "alice");
    assert_eq!(shown, Shown::Undecryptable(E2eError::WrongKey));
    assert_eq!(
        E2eError::WrongKey.to_string(),
        "could not be decrypted (different passphrase?)"
    );
    assert_eq!(room.undecryptable(), 1);
    // The same passphrase in another room is another key too.
    let elsewhere = RoomKey::from_bytes(lobby_key().0.map(|b| b ^ 1));
    assert_eq!(
        Receiver::new(&elsewhere).open(&envelope, "lobby", "alice"),
        Err(E2eError::WrongKey)
    );
}

#[test]
fn every_flipped_byte_is_refused_and_never_moves_the_window() {
    let key = lobby_key();
    let envelope = Sender::with_id(&key, ID, 5)
        .seal("tamper with me", "lobby", "alice")
        .unwrap();
    let good = binary(&envelope);
    let mut receiver = Receiver::new(&key);
    for i in 0..good.len() {
        for bit in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= bit;
            let got = receiver.open(&envelope_of(&bad), "lobby", "alice");
            let want = match i {
                // Another SenderId is another sender key; another commitment is wrong.
                0..8 | 16..24 => E2eError::WrongKey,
                // Another Counter is another nonce: the tag fails, as for the ciphertext.
                _ => E2eError::Forged,
            };
            assert_eq!(got, Err(want), "byte {i} ^ {bit:#x}");
            assert!(want.is_undecryptable());
            assert!(want.to_string().starts_with("could not be decrypted"));
        }
    }
    assert_eq!(receiver.senders(), 0, "no forgery created sender state");
    // The untouched envelope still opens: nothing above moved a window.
    assert_eq!(
        receiver.open(&envelope, "lobby", "alice").unwrap().text,
        "tamper with me"
    );
}

#[test]
fn an_envelope_relabelled_to_another_user_or_room_fails_its_tag() {
    let key = lobby_key();
    let envelope = Sender::with_id(&key, ID, 1)
        .seal("from alice", "lobby", "alice")
        .unwrap();
    let mut receiver = Receiver::new(&key);
    assert_eq!(
        receiver.open(&envelope, "lobby", "mallory"),
        Err(E2eError::Forged)
    );
    assert_eq!(
        receiver.open(&envelope, "lobby2", "alice"),
        Err(E2eError::Forged)
    );
    // The 00 separator: ("lobby", "alice") is not ("lobby\0alice" split elsewhere).
    assert_eq!(
        receiver.open(&envelope, "lobb", "y\0alice"),
        Err(E2eError::Forged)
    );
    assert!(receiver.open(&envelope, "lobby", "alice").is_ok());
}

fn sealed_at(key: &RoomKey, counter: u64) -> String {
    Sender::with_id(key, ID, counter)
        .seal(&format!("message {counter}"), "lobby", "alice")
        .unwrap()
}

#[test]
fn the_replay_window_is_docs_example() {
    // docs/protocol.md §12.4: with highest = 2000, 976 or below is a replay, 977 is accepted
    // once, 2000 again is a replay, 2001 moves the window up.
    let key = lobby_key();
    let mut receiver = Receiver::new(&key);
    let open = |r: &mut Receiver, counter| r.open(&sealed_at(&key, counter), "lobby", "alice");
    assert_eq!(open(&mut receiver, 2000).unwrap().counter, 2000);
    assert_eq!(open(&mut receiver, 976), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 1), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 977).unwrap().counter, 977);
    assert_eq!(open(&mut receiver, 977), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 1999).unwrap().counter, 1999);
    assert_eq!(open(&mut receiver, 2000), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 2001).unwrap().counter, 2001);
    // 977 is now highest - 1024: too old even had it not been seen.
    assert_eq!(open(&mut receiver, 977), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 978).unwrap().counter, 978);
    // A jump far ahead forgets everything below the new window.
    assert_eq!(open(&mut receiver, 1_000_000).unwrap().counter, 1_000_000);
    assert_eq!(open(&mut receiver, 2001), Err(E2eError::Replayed));
    assert_eq!(open(&mut receiver, 998_977).unwrap().counter, 998_977);
    assert_eq!(open(&mut receiver, 998_976), Err(E2eError::Replayed));
}

#[test]
fn a_failed_check_never_moves_the_window() {
    let key = lobby_key();
    let mut receiver = Receiver::new(&key);
    assert!(receiver.open(&sealed_at(&key, 1), "lobby", "alice").is_ok());
    // A forgery at a counter far ahead, with the right commitment but a bad tag: refused,
    // and counter 2 (which it would have pushed out of the window) still opens.
    let mut forged = binary(&sealed_at(&key, 1_000_000));
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert_eq!(
        receiver.open(&envelope_of(&forged), "lobby", "alice"),
        Err(E2eError::Forged)
    );
    assert!(receiver.open(&sealed_at(&key, 2), "lobby", "alice").is_ok());
    // The genuine envelope of 1 000 000 was never seen: it opens.
    assert!(
        receiver
            .open(&sealed_at(&key, 1_000_000), "lobby", "alice")
            .is_ok()
    );
}

#[test]
fn size_limits_on_both_sides() {
    let key = lobby_key();
    let mut sender = Sender::with_id(&key, ID, 1);
    let mut receiver = Receiver::new(&key);
    // 2800 bytes of plaintext make a 3798-byte envelope (docs/protocol.md §12.3).
    let largest = "é".repeat(MAX_PLAINTEXT / 2);
    let envelope = sender.seal(&largest, "lobby", "alice").unwrap();
    assert_eq!(envelope.len(), 3798);
    assert_eq!(
        receiver.open(&envelope, "lobby", "alice").unwrap().text,
        largest
    );
    assert_eq!(
        sender.seal(&"a".repeat(MAX_PLAINTEXT + 1), "lobby", "alice"),
        Err(E2eError::PlaintextTooLong)
    );
    // A receiver accepts any envelope within the 3800-byte message limit, not only those a
    // 2800-byte plaintext makes: 2801 bytes give 3799.
    let bigger = sender
        .seal_bytes("b".repeat(2801).as_bytes(), "lobby", "alice")
        .unwrap();
    assert_eq!(bigger.len(), 3799);
    assert_eq!(
        receiver.open(&bigger, "lobby", "alice").unwrap().text.len(),
        2801
    );
    // 2802 bytes would make 3801: refused before decoding.
    let over = sender
        .seal_bytes("d".repeat(2802).as_bytes(), "lobby", "alice")
        .unwrap();
    assert_eq!(over.len(), MAX_ENVELOPE + 1);
    assert_eq!(
        receiver.open(&over, "lobby", "alice"),
        Err(E2eError::TooLong)
    );
    // Exactly 3800 bytes is within the limit, but 3789 base64 characters are 4n + 1, never
    // a whole number of bytes: so the longest envelope that can open is 3799 bytes.
    let limit = format!("{PREFIX}{}", "A".repeat(MAX_ENVELOPE - PREFIX.len()));
    assert_eq!(
        receiver.open(&limit, "lobby", "alice"),
        Err(E2eError::NotBase64)
    );
    // Far longer input is refused before anything is decoded.
    let huge = format!("{PREFIX}{}", "A".repeat(1 << 20));
    assert_eq!(
        receiver.open(&huge, "lobby", "alice"),
        Err(E2eError::TooLong)
    );
}

#[test]
fn base64_errors_and_short_envelopes() {
    let key = lobby_key();
    let mut receiver = Receiver::new(&key);
    // 42 bytes: 56 characters, a multiple of 4, so one more character is never a boundary.
    let good = Sender::with_id(&key, ID, 1)
        .seal("hi", "lobby", "alice")
        .unwrap();
    let body = &good[PREFIX.len()..];
    assert_eq!(body.len() % 4, 0);
    let cases = [
        format!("{good}="),                 // padding
        format!("{good}=="),                // padding
        format!("{PREFIX}{}+", &body[1..]), // the standard alphabet's 62
        format!("{PREFIX}{}/", &body[1..]), // the standard alphabet's 63
        format!("{PREFIX}{} ", &body[1..]), // a space
        format!("{PREFIX}{}é", &body[2..]), // not ASCII
        format!("{good}A"),                 // 4n + 1 characters: no byte boundary
        format!("{PREFIX}!!!!"),            // not base64 at all
        format!("{PREFIX}AB"),              // non-canonical: trailing bits set
    ];
    for bad in &cases {
        assert_eq!(
            receiver.open(bad, "lobby", "alice"),
            Err(E2eError::NotBase64),
            "{bad}"
        );
    }
    // Canonical base64url of 0, 39 bytes: too short; of 40 random bytes: a wrong commitment.
    assert_eq!(
        receiver.open(PREFIX, "lobby", "alice"),
        Err(E2eError::TooShort)
    );
    let short = envelope_of(&binary(&good)[..MIN_BINARY_LEN - 1]);
    assert_eq!(
        receiver.open(&short, "lobby", "alice"),
        Err(E2eError::TooShort)
    );
    let noise = envelope_of(&[0x5a; MIN_BINARY_LEN]);
    assert_eq!(
        receiver.open(&noise, "lobby", "alice"),
        Err(E2eError::WrongKey)
    );
    // None of it stopped the genuine envelope.
    assert!(receiver.open(&good, "lobby", "alice").is_ok());
}

#[test]
fn a_plaintext_that_is_not_a_text_field_is_refused_both_ways() {
    let key = lobby_key();
    let mut sender = Sender::with_id(&key, ID, 1);
    for bad in ["clear\x1b[2J", "two\nlines", "nul\0", "c1\u{9b}31m"] {
        assert_eq!(
            sender.seal(bad, "lobby", "alice"),
            Err(E2eError::PlaintextNotText)
        );
    }
    // A member who seals control characters anyway: receivers show a notice, not the text.
    let mut room = RoomCrypto::new(&key, "lobby");
    for bad in [&b"clear\x1b[2J"[..], b"two\nlines", b"\xff\xfe not UTF-8"] {
        let envelope = sender.seal_bytes(bad, "lobby", "alice").unwrap();
        assert_eq!(
            room.open(&envelope, "alice"),
            Shown::Undecryptable(E2eError::NotText)
        );
    }
    assert_eq!(
        E2eError::NotText.to_string(),
        "could not be decrypted (not a text field)"
    );
    assert_eq!(room.undecryptable(), 3);
    assert_eq!(
        sender.next_counter(),
        4,
        "refused plaintexts use no counter"
    );
}

#[test]
fn a_plain_message_in_an_encrypted_room_is_shown_marked_not_encrypted() {
    let mut room = RoomCrypto::new(&lobby_key(), "lobby");
    assert!(!is_envelope("hello"));
    assert!(!is_envelope("ocm-e2e-v1"));
    assert!(!is_envelope("OCM-E2E-V1:AAAA"));
    assert_eq!(
        room.open("hello", "alice"),
        Shown::NotEncrypted("hello".into())
    );
    assert_eq!(
        Receiver::new(&lobby_key()).open("hello", "lobby", "alice"),
        Err(E2eError::NotEnvelope)
    );
    assert_eq!((room.replays(), room.undecryptable()), (0, 0));
}

#[test]
fn the_last_counter_is_used_once_then_the_sender_refuses() {
    let key = lobby_key();
    let mut sender = Sender::with_id(&key, ID, u64::MAX);
    let last = sender.seal("last", "lobby", "alice").unwrap();
    assert_eq!(
        Receiver::new(&key)
            .open(&last, "lobby", "alice")
            .unwrap()
            .counter,
        u64::MAX
    );
    assert_eq!(
        sender.seal("one more", "lobby", "alice"),
        Err(E2eError::CounterExhausted)
    );
}

#[test]
fn sender_state_is_bounded_and_the_oldest_sender_is_forgotten() {
    let key = lobby_key();
    let mut receiver = Receiver::new(&key);
    let first = Sender::with_id(&key, [0xee; 8], 1)
        .seal("first", "lobby", "alice")
        .unwrap();
    assert!(receiver.open(&first, "lobby", "alice").is_ok());
    for n in 0..MAX_SENDERS as u64 {
        let mut id = [0u8; 8];
        id.copy_from_slice(&n.to_be_bytes());
        let envelope = Sender::with_id(&key, id, 1)
            .seal("hi", "lobby", "bob")
            .unwrap();
        assert!(receiver.open(&envelope, "lobby", "bob").is_ok());
        assert!(receiver.senders() <= MAX_SENDERS);
    }
    assert_eq!(receiver.senders(), MAX_SENDERS);
    // The first sender was verified longest ago: its window is gone, so its old envelope
    // opens again (the limit docs/security.md describes).
    assert!(receiver.open(&first, "lobby", "alice").is_ok());
    // Forgeries under random SenderIds never add state.
    let mut noise = binary(&first);
    for n in 0..100u8 {
        noise[0] = n;
        noise[1] = 0x42;
        let _ = receiver.open(&envelope_of(&noise), "lobby", "alice");
    }
    assert_eq!(receiver.senders(), MAX_SENDERS);
}

#[test]
fn constant_time_eq_compares() {
    assert!(constant_time_eq(b"12345678", b"12345678"));
    assert!(!constant_time_eq(b"12345678", b"12345679"));
    assert!(!constant_time_eq(b"1234567", b"12345678"));
}

/// The window against a model: a set of every counter accepted.
fn check_window_against_model(counters: &[u64]) {
    let mut window: Option<ReplayWindow> = None;
    let mut seen = BTreeSet::new();
    for &c in counters {
        let highest = seen.last().copied();
        let model_fresh =
            !seen.contains(&c) && highest.is_none_or(|h: u64| c > h || h - c < REPLAY_WINDOW);
        let fresh = window.as_ref().is_none_or(|w| w.is_fresh(c));
        assert_eq!(fresh, model_fresh, "counter {c} after {seen:?}");
        if fresh {
            match window.as_mut() {
                Some(w) => w.mark(c),
                None => window = Some(ReplayWindow::new(c)),
            }
            seen.insert(c);
        }
    }
}

proptest! {
    #[test]
    fn the_replay_window_matches_its_model(
        base in prop_oneof![Just(0u64), Just(u64::MAX - 5000), any::<u64>()],
        steps in proptest::collection::vec(0u64..3000, 1..300),
    ) {
        let counters: Vec<u64> = steps.iter().map(|s| base.saturating_add(*s)).collect();
        check_window_against_model(&counters);
    }

    #[test]
    fn random_bytes_after_the_prefix_never_panic(
        tail in proptest::collection::vec(any::<u8>(), 0..4000),
        user in "[a-z]{1,8}",
    ) {
        let key = lobby_key();
        let mut receiver = Receiver::new(&key);
        let as_text = format!("{PREFIX}{}", String::from_utf8_lossy(&tail));
        let as_base64 = envelope_of(&tail);
        for envelope in [as_text, as_base64] {
            let got = receiver.open(&envelope, "lobby", &user);
            // Nothing opens without the key's commitment and a verified tag.
            prop_assert!(got.is_err());
            prop_assert!(got.unwrap_err() != E2eError::NotEnvelope);
        }
        prop_assert_eq!(receiver.senders(), 0);
    }

    #[test]
    fn a_mutated_envelope_never_opens(
        text in "[ -~]{0,64}",
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
    ) {
        let key = lobby_key();
        let envelope = Sender::new(&key).seal(&text, "lobby", "alice").unwrap();
        let mut bad = binary(&envelope);
        let i = at.index(bad.len());
        bad[i] ^= xor;
        let got = Receiver::new(&key).open(&envelope_of(&bad), "lobby", "alice");
        prop_assert!(got.as_ref().is_err_and(|e| e.is_undecryptable()), "{:?}", got);
    }
}

/// Time per message and size overhead, for the README:
/// `cargo test --release --lib e2e::tests::measure -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check: run it in release"]
fn measure() {
    let started = Instant::now();
    let key = RoomKey::derive("correct horse", "lobby");
    println!("derive room key (600 000 rounds): {:?}", started.elapsed());
    for len in [16usize, 100, 1000, MAX_PLAINTEXT] {
        let text = "x".repeat(len);
        const N: u32 = 20_000;
        let mut sender = Sender::new(&key);
        let mut receiver = Receiver::new(&key);
        let mut envelopes = Vec::with_capacity(N as usize);
        let started = Instant::now();
        for _ in 0..N {
            envelopes.push(sender.seal(&text, "lobby", "alice").unwrap());
        }
        let seal = started.elapsed() / N;
        let started = Instant::now();
        for envelope in &envelopes {
            std::hint::black_box(receiver.open(envelope, "lobby", "alice").unwrap());
        }
        let open = started.elapsed() / N;
        let size = envelopes[0].len();
        println!(
            "{len:>5}-byte text: seal {seal:?}, open {open:?}, envelope {size} bytes (+{} bytes, {:.0}%)",
            size - len,
            100.0 * (size - len) as f64 / len as f64
        );
    }
}
