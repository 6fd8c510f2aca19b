//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the library's fuzz
//! bodies, so `cargo test` checks every input the fuzzers found interesting without
//! needing libFuzzer; and drives two of the bodies with structured proptest inputs.

use std::fs;
use std::path::Path;

use ocm::fuzzing;
use ocm::protocol::frame::Request;
use proptest::prelude::*;

type Body = fn(&[u8]);

const TARGETS: [(&str, Body); 4] = [
    ("tcrp_stream", fuzzing::tcrp_stream),
    ("datagram", fuzzing::datagram),
    ("events", fuzzing::events),
    ("relay", fuzzing::relay),
];

/// Replays `fuzz/corpus/<target>`, or, when `OCM_FUZZ_CORPUS` names another directory
/// (such as `fuzz/corpus-run`, a fuzzer's working corpus), `<that>/<target>` instead.
fn replay(target: &str, body: Body) -> usize {
    let root = std::env::var_os("OCM_FUZZ_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus"),
        std::path::PathBuf::from,
    );
    let dir = root.join(target);
    let mut n = 0;
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let data = fs::read(&path).unwrap();
        // Name the file that fails, then let its panic through.
        if std::panic::catch_unwind(|| body(&data)).is_err() {
            panic!("{} fails", path.display());
        }
        n += 1;
    }
    n
}

#[test]
fn corpus_tcrp_stream() {
    assert!(replay(TARGETS[0].0, TARGETS[0].1) > 0);
}

#[test]
fn corpus_datagram() {
    assert!(replay(TARGETS[1].0, TARGETS[1].1) > 0);
}

#[test]
fn corpus_events() {
    assert!(replay(TARGETS[2].0, TARGETS[2].1) > 0);
}

#[test]
fn corpus_relay() {
    assert!(replay(TARGETS[3].0, TARGETS[3].1) > 0);
}

#[test]
fn every_corpus_directory_has_a_body() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for e in fs::read_dir(root).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} has no body to replay it"
        );
    }
}

/// Requests worth framing: valid ones of every operation, plus invalid fields.
fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let name = prop::sample::select(vec!["r", "lobby", "部屋", "a\nb", ""]);
    let user = prop::sample::select(vec!["a", "ゆき", "", "\u{9b}"]);
    let pw = prop::collection::vec(any::<u8>(), 0..4);
    let token = prop::collection::vec(any::<u8>(), 0..40);
    (0u8..5, name, user, pw, token, any::<u16>()).prop_map(
        |(op, room, user, password, token, capacity)| {
            let mut out = Vec::new();
            let req = match op {
                0 => Request::Create {
                    room,
                    user,
                    password: &password,
                    capacity,
                    resume_key: None,
                },
                1 => Request::Join {
                    room,
                    user,
                    password: &password,
                    resume_key: None,
                },
                2 => Request::Leave {
                    room,
                    token: &token,
                },
                3 => Request::List,
                // Raw garbage of about a header's length.
                _ => {
                    out.extend(
                        token
                            .iter()
                            .copied()
                            .cycle()
                            .take(usize::from(capacity % 64)),
                    );
                    return out;
                }
            };
            if req.encode(&mut out).is_err() {
                out.clear();
            }
            out
        },
    )
}

/// One relay operation in the byte form `fuzzing::relay` reads (see `fuzzing::RelayOp`, which `fuzzing::relay` decodes each op byte into).
fn relay_op() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // CREATE, JOIN, LEAVE, LIST, and chat datagrams: four bytes each.
        3 => (prop::sample::select(vec![0u8, 2, 4, 5, 6]), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(op, a, b, c)| vec![op, a, b, c]),
        // Chat datagrams with a granted token from its own room, IP and port.
        4 => (0u8..16, 0u8..8, 0u8..4)
            .prop_map(|(msg, tok, port)| vec![6, 4 | (msg << 4), tok << 2, 4 | (port << 4)]),
        // Raw bytes.
        1 => prop::collection::vec(any::<u8>(), 0..12).prop_map(|raw| {
            let mut v = vec![8, raw.len() as u8];
            v.extend(raw);
            v
        }),
        // (v1.1) SEND, NACK, SYNC with a granted token from its own room, IP and port;
        // RESUME with a granted token, from any of the IPs.
        2 => (0u8..4, 0u8..8, 0u8..4, any::<u8>())
            .prop_map(|(msg, tok, port, cs)| vec![240, 4 | (msg << 6), tok << 2, 4 | (port << 4), cs]),
        2 => (0u8..8, 0u8..4, any::<u8>(), any::<u8>())
            .prop_map(|(tok, port, f, c)| vec![241, 4, tok << 2, 4 | (port << 4), f, c]),
        1 => (0u8..8, 0u8..4).prop_map(|(tok, port)| vec![242, 4, tok << 2, 4 | (port << 4)]),
        1 => (0u8..8, any::<u8>(), any::<u8>())
            .prop_map(|(tok, i, k)| vec![243, 4, tok << 2, i, k]),
        // Clock, flush, control.
        2 => (any::<u8>(), any::<u8>()).prop_map(|(step, run)| vec![9, step, run]),
        1 => Just(vec![10]),
        1 => (0u8..8).prop_map(|what| vec![11, what]),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn structured_streams(
        reqs in prop::collection::vec(request_bytes(), 0..8),
        chunks in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let stream: Vec<u8> = reqs.concat();
        fuzzing::tcrp_stream(&fuzzing::tcrp_stream_input(&chunks, &stream));
    }

    #[test]
    fn structured_relay_runs(
        config in prop::array::uniform10(any::<u8>()),
        ops in prop::collection::vec(relay_op(), 0..80),
    ) {
        let mut input = config.to_vec();
        // Start with a room and its host (with a resume key) bound, so the rest has
        // something to work on.
        input.extend_from_slice(&[0, 0x40, 0, 0, 6, 4, 0, 4]);
        input.extend(ops.concat());
        fuzzing::relay(&input);
    }
}
