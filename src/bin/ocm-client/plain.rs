//! Plain mode: lines in, lines out, for scripts and pipes.
//!
//! Every line of standard input is sent as one message. A trailing CR (from a CRLF file)
//! is stripped and each tab becomes four spaces; a line that still cannot travel (another
//! control character, invalid UTF-8, over 3800 bytes) is refused with a message on
//! standard error naming the line and the problem, and nothing is sent for it. Empty lines
//! are skipped. Every event goes to standard output on one line:
//!
//! ```text
//! 12:00:00 * — earlier messages —
//! 12:00:00 carol: said before we came
//! 12:00:00 * — end of earlier messages —
//! 12:00:01 alice: hello
//! 12:00:02 * bob joined
//! 12:00:05 * 3 messages recovered
//! 12:00:09 * room closed: host left
//! ```
//!
//! Each message of the room is printed once, in the room's order, whatever the network
//! lost, duplicated or reordered on the way; what happened to the connection is said on
//! `*` lines ("reconnected", "12 messages recovered", "3 messages could not be recovered
//! (older than the server keeps)"). Our own messages are printed when their echo comes
//! back from the server, in the room's order, not when they are typed.
//!
//! In a private room (`--e2e`, PROTOCOL.md §7) every line is sealed before it is sent (at
//! most 2800 bytes of text), and every message is opened before it is printed. The message
//! line keeps its format, and its text starts with a mark a script can split on:
//!
//! ```text
//! 12:00:01 alice: 🔒 hello                          decrypted: sent by a passphrase holder
//! 12:00:02 carol: (not encrypted) hi                 plain text in a private room
//! 12:00:03 * mallory: could not be decrypted (different passphrase?)
//! ```
//!
//! (`🔒 ` is U+1F512 and a space.) A message failing another check reads "could not be
//! decrypted (…)" with its reason; a replayed envelope is not printed, and the count of
//! replays is said on standard error at the end. "ocm-client: deriving key…" goes to
//! standard error while the room key is derived, before the chat starts.
//!
//! At the end of input the client waits (at most [`ECHO_WAIT`]) until the server has
//! confirmed each of its own messages and everything known to be in the room (the history
//! asked for at join included) is printed, so that nothing is still in flight, then leaves.

use std::io::{self, BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::thread;
use std::time::{Duration, Instant};

use ocm::client::e2e::RoomCrypto;
use ocm::client::session::{Session, SessionEvent};
use ocm::protocol::{MAX_MESSAGE, control_char};

use crate::app::{
    End, Entry, LOCK_MARK, Lock, NOT_ENCRYPTED_MARK, describe, describe_private, history_mark, seal,
};
use crate::clock;

/// How long the end of input waits for the server to confirm our last messages: a
/// message sent again through 20% loss each way is confirmed within a few hundred ms,
/// and a pipe should not hang for long on a server that went away.
pub const ECHO_WAIT: Duration = Duration::from_secs(5);
/// Longest input line read into memory; the rest of a longer one is skipped (it is refused
/// anyway), so a stream without newlines cannot exhaust memory.
const READ_LIMIT: usize = 64 * 1024;
/// Longest the loop sleeps before looking at standard input again.
const TICK: Duration = Duration::from_millis(20);
/// Lines read ahead of sending; the reader thread waits when this many are queued.
const QUEUE: usize = 256;
/// What a tab becomes.
const TAB: &str = "    ";

/// Why an input line was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineProblem {
    /// Not UTF-8 text.
    NotUtf8,
    /// A control character other than a tab or a trailing CR.
    ControlChar(char),
    /// Over [`MAX_MESSAGE`] bytes (after tabs were expanded).
    TooLong(usize),
}

impl std::fmt::Display for LineProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineProblem::NotUtf8 => f.write_str("it is not valid UTF-8"),
            LineProblem::ControlChar(c) => write!(
                f,
                "it contains a control character (U+{:04X}), which a message cannot carry",
                u32::from(*c)
            ),
            LineProblem::TooLong(n) => write!(
                f,
                "it is {n} bytes long; a message is at most {MAX_MESSAGE} bytes"
            ),
        }
    }
}

/// Turns one raw input line (without its `\n`) into the message to send: `Ok(None)` for an
/// empty line, else the cleaned text or the reason it cannot be sent.
pub fn clean_line(raw: &[u8]) -> Result<Option<String>, LineProblem> {
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let s = std::str::from_utf8(raw).map_err(|_| LineProblem::NotUtf8)?;
    let s = s.replace('\t', TAB);
    if let Some(c) = control_char(&s) {
        return Err(LineProblem::ControlChar(c));
    }
    if s.len() > MAX_MESSAGE {
        return Err(LineProblem::TooLong(s.len()));
    }
    Ok((!s.is_empty()).then_some(s))
}

/// One line as read, before cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawLine {
    /// The line's bytes, without the `\n`.
    Line(Vec<u8>),
    /// The line was longer than the read limit; this many bytes were skipped.
    TooLong(usize),
}

/// Reads one line, keeping at most `max` bytes of it in memory. `Ok(None)` at end of input.
pub fn read_line_bounded<R: BufRead>(r: &mut R, max: usize) -> io::Result<Option<RawLine>> {
    let mut line = Vec::new();
    let mut total = 0usize;
    let mut any = false;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        any = true;
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        total += chunk.len();
        if line.len() < max {
            let room = max - line.len();
            line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
        let used = done.unwrap_or(buf.len());
        r.consume(used);
        if done.is_some() {
            break;
        }
    }
    if !any {
        return Ok(None);
    }
    Ok(Some(if total > max {
        RawLine::TooLong(total)
    } else {
        RawLine::Line(line)
    }))
}

/// What the stdin thread hands the main loop.
enum Input {
    /// Line number (from 1) and the cleaned line.
    Line(u64, Result<Option<String>, LineProblem>),
    /// End of input (or a read error, already reported).
    Eof,
}

fn spawn_reader() -> Receiver<Input> {
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let spawned = thread::Builder::new().name("stdin".into()).spawn(move || {
        let stdin = io::stdin();
        let mut r = stdin.lock();
        let mut n = 0u64;
        loop {
            n += 1;
            let item = match read_line_bounded(&mut r, READ_LIMIT) {
                Ok(Some(RawLine::Line(bytes))) => Input::Line(n, clean_line(&bytes)),
                Ok(Some(RawLine::TooLong(len))) => Input::Line(n, Err(LineProblem::TooLong(len))),
                Ok(None) => Input::Eof,
                Err(e) => {
                    eprintln!("ocm-client: reading standard input failed: {e}");
                    Input::Eof
                }
            };
            let eof = matches!(item, Input::Eof);
            if tx.send(item).is_err() || eof {
                return;
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("ocm-client: cannot start the input thread: {e}");
    }
    rx
}

/// Formats one entry as a plain-mode output line (without the newline).
pub fn format_entry(entry: &Entry) -> String {
    match entry {
        Entry::Chat {
            time,
            user,
            text,
            lock,
            ..
        } => match lock {
            Lock::Off => format!("{time} {user}: {text}"),
            Lock::Encrypted => format!("{time} {user}: {LOCK_MARK} {text}"),
            Lock::NotEncrypted => format!("{time} {user}: {NOT_ENCRYPTED_MARK} {text}"),
        },
        Entry::System { time, text, .. } => format!("{time} * {text}"),
    }
}

/// Runs plain mode until the room closes, input ends, or `stop` is set (a signal). With
/// `crypto` the room is private: lines are sealed before they are sent (at most
/// [`ocm::client::e2e::MAX_PLAINTEXT`] bytes each) and messages opened before they are printed.
pub fn run(session: &mut Session, stop: &AtomicBool, mut crypto: Option<RoomCrypto>) -> End {
    let end = run_loop(session, stop, crypto.as_mut());
    if let Some(n) = crypto.as_ref().map(RoomCrypto::replays).filter(|&n| n > 0) {
        eprintln!("ocm-client: {n} replayed encrypted message(s) dropped");
    }
    end
}

fn run_loop(session: &mut Session, stop: &AtomicBool, mut crypto: Option<&mut RoomCrypto>) -> End {
    let me = session.membership().user.clone();
    let input = spawn_reader();
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let (mut sent, mut echoed) = (0u64, 0u64);
    let mut eof_at: Option<Instant> = None;
    let mut in_history = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            return End::Left;
        }
        let now = Instant::now();
        if let Some(t) = eof_at {
            // A version 1 server confirms nothing: count our echoes instead.
            let done = if session.is_v1() {
                echoed >= sent
            } else {
                session.unconfirmed().next().is_none() && session.caught_up()
            };
            if done || now >= t + ECHO_WAIT {
                return End::Left;
            }
        }
        let events = match session.recv_events(TICK) {
            Ok(ev) => ev,
            Err(e) => return End::Lost(lost_reason(&e)),
        };
        for ev in &events {
            if matches!(ev, SessionEvent::Message { user, history: false, .. } if *user == me) {
                echoed += 1;
            }
            let time = clock::now();
            let mark = history_mark(&mut in_history, ev, time);
            let (entry, end) = match crypto.as_deref_mut() {
                Some(c) => describe_private(ev, &me, time, c),
                None => describe(ev, &me, time),
            };
            for entry in mark.iter().chain(entry.as_ref()) {
                if writeln!(out, "{}", format_entry(entry)).is_err() {
                    // Nobody reads our output any more: leave quietly.
                    return End::Left;
                }
            }
            if let Some(end) = end {
                let _ = out.flush();
                return end;
            }
        }
        let _ = out.flush();
        for _ in 0..QUEUE {
            match input.try_recv() {
                Ok(Input::Line(_, Ok(None))) => {}
                Ok(Input::Line(n, Ok(Some(text)))) => {
                    let wire = match crypto.as_deref_mut() {
                        Some(c) => seal(c, &text, &me),
                        None => Ok(text),
                    };
                    match wire.map(|w| session.send_message(&w)) {
                        Ok(Ok(_)) => sent += 1,
                        Ok(Err(e)) => eprintln!("ocm-client: line {n} not sent: {e}"),
                        Err(why) => eprintln!("ocm-client: line {n} not sent: {why}"),
                    }
                }
                Ok(Input::Line(n, Err(problem))) => {
                    eprintln!("ocm-client: line {n} not sent: {problem}")
                }
                Ok(Input::Eof) | Err(TryRecvError::Disconnected) => {
                    eof_at.get_or_insert(Instant::now());
                    break;
                }
                Err(TryRecvError::Empty) => break,
            }
        }
    }
}

/// Words for a socket error that ends the session.
pub fn lost_reason(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "the server stopped answering (its UDP port is closed)".to_string()
    } else {
        format!("the connection to the server failed: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{Clock, SystemKind};

    #[test]
    fn lines_are_cleaned_or_refused_with_a_reason() {
        assert_eq!(clean_line(b"hello"), Ok(Some("hello".into())));
        assert_eq!(clean_line(b"hello\r"), Ok(Some("hello".into())));
        assert_eq!(clean_line(b""), Ok(None));
        assert_eq!(clean_line(b"\r"), Ok(None));
        assert_eq!(clean_line(b"a\tb"), Ok(Some("a    b".into())));
        assert_eq!(clean_line("日本語".as_bytes()), Ok(Some("日本語".into())));
        assert_eq!(
            clean_line(b"bad \x1b[31m"),
            Err(LineProblem::ControlChar('\u{1b}'))
        );
        assert_eq!(clean_line(b"a\rb"), Err(LineProblem::ControlChar('\r')));
        assert_eq!(clean_line(&[0xff, b'a']), Err(LineProblem::NotUtf8));
        assert_eq!(
            clean_line(&[b'x'; MAX_MESSAGE]).map(|s| s.map(|s| s.len())),
            Ok(Some(MAX_MESSAGE))
        );
        assert_eq!(
            clean_line(&[b'x'; MAX_MESSAGE + 1]),
            Err(LineProblem::TooLong(MAX_MESSAGE + 1))
        );
        assert_eq!(
            LineProblem::TooLong(5000).to_string(),
            "it is 5000 bytes long; a message is at most 3800 bytes"
        );
    }

    #[test]
    fn bounded_reader_splits_lines_and_skips_huge_ones() {
        let data = b"one\ntwo\r\n\nxxxxxxxxxx\nlast".to_vec();
        let mut r = io::BufReader::with_capacity(3, &data[..]);
        let mut got = Vec::new();
        for _ in 0..10 {
            match read_line_bounded(&mut r, 5).unwrap() {
                Some(l) => got.push(l),
                None => break,
            }
        }
        assert_eq!(
            got,
            vec![
                RawLine::Line(b"one".to_vec()),
                RawLine::Line(b"two\r".to_vec()),
                RawLine::Line(Vec::new()),
                RawLine::TooLong(10),
                RawLine::Line(b"last".to_vec()),
            ]
        );
    }

    #[test]
    fn entries_format_as_documented() {
        let time = Clock { h: 1, m: 2, s: 3 };
        let chat = Entry::Chat {
            time,
            user: "bob".into(),
            text: "hi".into(),
            own: false,
            lock: Lock::Off,
        };
        assert_eq!(format_entry(&chat), "01:02:03 bob: hi");
        let sys = Entry::System {
            time,
            kind: SystemKind::Joined,
            text: "bob joined".into(),
        };
        assert_eq!(format_entry(&sys), "01:02:03 * bob joined");
    }
}
