//! Private rooms end to end (PROTOCOL.md §7): real `ocm-client --plain --e2e` processes and
//! the real `ocm-server`, every client's control connection through the recording forwarder
//! of `common/forward.rs` and its datagrams through the proxy of `common/lossy.rs` (no loss),
//! so that every byte the server received or sent is on record. What a person reads is each
//! client's standard output (format in `src/bin/ocm-client/plain.rs`).

mod common;
#[path = "common/forward.rs"]
mod forward;
#[path = "common/lossy.rs"]
mod lossy;
#[path = "common/plain.rs"]
mod plain;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Captured, ServerProc, spawn_piped, wait_exit};
use forward::{Tap, recording_forwarder};
use lossy::{Config, LossyProxy};
use plain::Client;

/// Generous, for a loaded 2-core machine (600 000 PBKDF2 rounds included); each wait
/// normally ends well within a second.
const WAIT: Duration = Duration::from_secs(30);
/// The room's passphrase, shared by alice and bob.
const PASSPHRASE: &str = "correct horse battery staple";
/// What mallory believes it is.
const WRONG: &str = "correct horse battery stable";
/// The notice for a message under another passphrase.
const UNDECRYPTABLE: &str = "could not be decrypted (different passphrase?)";

/// A passphrase file for this test process, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("ocm-e2e-rooms-{}-{tag}.txt", std::process::id()));
        std::fs::write(&path, contents).expect("write the passphrase file");
        TempFile(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn private_room_members_read_each_other_and_the_server_sees_no_plaintext() {
    let server = ServerProc::start(&[]);
    let proxy = LossyProxy::start(server.udp, Config::new(13));
    proxy.capture();
    let tap = Tap::default();
    let fwd = recording_forwarder(server.tcp, proxy.addr().port(), tap.clone()).to_string();
    let good = TempFile::new("good", &format!("{PASSPHRASE}\n"));
    // CRLF and no further lines: the first line, its ending stripped.
    let wrong = TempFile::new("wrong", &format!("{WRONG}\r\nignored\n"));
    let e2e = ["--e2e", "--e2e-passphrase-file", good.arg()];

    let mut alice = Client::start(&fwd, "alice", "--create", "den", &e2e[1..]);
    alice.expect("* alice joined");
    let mut bob = Client::start(&fwd, "bob", "--join", "den", &e2e);
    bob.expect("* bob joined");
    let mut mallory = Client::start(
        &fwd,
        "mallory",
        "--join",
        "den",
        &["--e2e-passphrase-file", wrong.arg()],
    );
    mallory.expect("* mallory joined");
    let mut carol = Client::start(&fwd, "carol", "--join", "den", &[]);
    carol.expect("* carol joined");

    let secrets = [
        ("alice", "meet at the old mill at noon"),
        ("bob", "bring the maps, not the keys ✓"),
    ];
    // Over 2800 bytes of text cannot be sealed within a message: refused, with the reason.
    alice.say(&"x".repeat(2801));
    alice.say(secrets[0].1);
    alice.expect(&format!("alice: 🔒 {}", secrets[0].1));
    bob.say(secrets[1].1);
    bob.expect(&format!("bob: 🔒 {}", secrets[1].1));
    mallory.say("let me in");
    mallory.expect("mallory: 🔒 let me in");
    carol.say("hello in clear");
    carol.expect("carol: hello in clear");

    for c in [&alice, &bob] {
        for (who, text) in secrets {
            c.expect(&format!("{who}: 🔒 {text}"));
        }
        c.expect(&format!("* mallory: {UNDECRYPTABLE}"));
        c.expect("carol: (not encrypted) hello in clear");
    }
    for (who, _) in secrets {
        mallory.expect(&format!("* {who}: {UNDECRYPTABLE}"));
    }
    mallory.expect("carol: (not encrypted) hello in clear");
    // The members without the passphrase never read the text: mallory sees notices, carol
    // the envelopes as they travel.
    for (who, text) in secrets {
        for c in [&mallory, &carol] {
            let lines = c.lines();
            assert!(
                lines.iter().all(|l| !l.contains(text)),
                "{} read {who}'s secret: {lines:#?}",
                c.name
            );
        }
        assert!(
            carol
                .lines()
                .iter()
                .any(|l| l.starts_with(&format!("{who}: ocm-e2e-v1:"))),
            "carol should see {who}'s envelope: {:#?}",
            carol.lines()
        );
    }

    for c in [&mut bob, &mut mallory, &mut carol, &mut alice] {
        assert_eq!(c.finish(), Some(0), "{}: {}", c.name, c.stderr.text());
    }
    let stderr = alice.stderr.text();
    assert!(
        stderr.contains(
            "line 1 not sent: it is 2801 bytes long; an encrypted message is at most 2800 bytes"
        ),
        "{stderr}"
    );
    assert!(alice.lines().iter().all(|l| !l.contains("xxxx")));
    let stderr = bob.stderr.text();
    assert!(stderr.contains("deriving key…"), "{stderr}");
    assert!(stderr.contains("joined private room 'den'"), "{stderr}");

    // What crossed the network to and from the server.
    let udp = proxy.captured();
    let tcp = tap.bytes();
    assert!(!tap.overflowed());
    // The record is real: it holds the envelopes and carol's clear text.
    assert!(contains(&udp, "ocm-e2e-v1:"), "no envelope captured");
    assert!(
        contains(&udp, "hello in clear"),
        "carol's message not captured"
    );
    assert!(contains(&tcp, "den"), "no control traffic captured");
    for (name, bytes) in [("UDP", &udp), ("TCP", &tcp)] {
        for (who, text) in secrets {
            assert!(
                !contains(bytes, text),
                "{who}'s plaintext in the {name} record"
            );
        }
        assert!(
            !contains(bytes, "let me in"),
            "mallory's plaintext in {name}"
        );
        assert!(
            !contains(bytes, PASSPHRASE),
            "the passphrase in the {name} record"
        );
        assert!(
            !contains(bytes, WRONG),
            "the wrong passphrase in the {name} record"
        );
    }
}

#[test]
fn e2e_without_a_passphrase_source_is_a_usage_error() {
    let bin = Path::new(env!("CARGO_BIN_EXE_ocm-client"));
    // Standard input is a pipe, not a terminal: nothing to ask on.
    let mut c = spawn_piped(
        bin,
        &[
            "--plain",
            "--name",
            "a",
            "--join",
            "r",
            "--e2e",
            "--server",
            "127.0.0.1:1",
        ],
        true,
    );
    let mut err = Captured::stderr(&mut c);
    assert_eq!(wait_exit(&mut c, WAIT).and_then(|s| s.code()), Some(2));
    assert!(err.finish(WAIT).contains("--e2e-passphrase-file"));
    let missing = std::env::temp_dir().join(format!("ocm-e2e-none-{}", std::process::id()));
    let mut c = spawn_piped(
        bin,
        &[
            "--plain",
            "--name",
            "a",
            "--join",
            "r",
            "--e2e-passphrase-file",
            missing.to_str().expect("UTF-8"),
        ],
        true,
    );
    let mut err = Captured::stderr(&mut c);
    assert_eq!(wait_exit(&mut c, WAIT).and_then(|s| s.code()), Some(2));
    assert!(err.finish(WAIT).contains("cannot read the passphrase file"));
    let empty = TempFile::new("empty", "\n");
    let mut c = spawn_piped(
        bin,
        &[
            "--plain",
            "--name",
            "a",
            "--join",
            "r",
            "--e2e-passphrase-file",
            empty.arg(),
        ],
        true,
    );
    let mut err = Captured::stderr(&mut c);
    assert_eq!(wait_exit(&mut c, WAIT).and_then(|s| s.code()), Some(2));
    assert!(err.finish(WAIT).contains("the passphrase is empty"));
}
