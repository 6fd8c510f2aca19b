//! Whole-process tests of `ocm-client --plain` against the real `ocm-server`: what a
//! person typing into one client sees in the others, and the messages and exit codes of
//! everything that can go wrong.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use common::{Captured, ServerProc, spawn_piped, unused_tcp_addr, wait_exit};

/// Generous, for a loaded 2-core machine; each wait normally ends in milliseconds.
const WAIT: Duration = Duration::from_secs(10);
/// After the exit, how long stderr may take to be read to its end.
const PIPE_DRAIN: Duration = Duration::from_secs(2);

/// A running `ocm-client --plain`, killed when dropped.
struct Client {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Captured,
}

impl Client {
    fn spawn(server: &str, args: &[&str]) -> Client {
        let mut all = vec!["--plain", "--server", server];
        all.extend_from_slice(args);
        let mut child = spawn_piped(Path::new(env!("CARGO_BIN_EXE_ocm-client")), &all, true);
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Client {
            stdin: child.stdin.take(),
            stderr: Captured::stderr(&mut child),
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Starts a client that creates or joins `room` as `name`.
    fn start(server: &ServerProc, name: &str, op: &str, room: &str, extra: &[&str]) -> Client {
        let mut args = vec!["--name", name, op, room];
        args.extend_from_slice(extra);
        Client::spawn(&server.addr(), &args)
    }

    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to client");
        stdin.flush().expect("flush");
    }

    fn write_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write to client");
        stdin.flush().expect("flush");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for an output line whose text after the `HH:MM:SS ` stamp is `want`.
    fn expect(&mut self, want: &str) {
        let end = Instant::now() + WAIT;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let text = strip_time(&line);
                    self.seen.push(line.clone());
                    if text == want {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => panic!(
                    "no line {want:?} within {WAIT:?}; stdout so far: {:#?}; stderr: {}",
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// All output lines that arrive within `wait`.
    fn drain(&mut self, wait: Duration) -> Vec<String> {
        let end = Instant::now() + wait;
        let mut got = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            got.push(strip_time(&line).to_string());
        }
        got
    }

    fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits (bounded) for the client to exit.
    fn wait(&mut self) -> ExitStatus {
        if let Some(status) = wait_exit(&mut self.child, WAIT) {
            return status;
        }
        panic!(
            "ocm-client did not exit within {WAIT:?}; stdout: {:#?}; stderr: {}",
            self.seen,
            self.stderr()
        );
    }

    /// Waits for the exit and for stderr to be fully read.
    fn finish(&mut self) -> (Option<i32>, String) {
        let status = self.wait();
        (status.code(), self.stderr.finish(PIPE_DRAIN))
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Checks and removes the `HH:MM:SS ` stamp of a plain-mode line.
fn strip_time(line: &str) -> &str {
    let b = line.as_bytes();
    let stamped = b.len() >= 9
        && b[2] == b':'
        && b[5] == b':'
        && b[8] == b' '
        && [0, 1, 3, 4, 6, 7].iter().all(|&i| b[i].is_ascii_digit());
    assert!(stamped, "line without a time stamp: {line:?}");
    &line[9..]
}

/// Clients in one room: the first creates it, the others join one by one, and each
/// client already in sees every newcomer join (as does the newcomer) before the next comes.
fn group<const N: usize>(server: &ServerProc, room: &str, names: [&str; N]) -> [Client; N] {
    let mut clients: Vec<Client> = Vec::with_capacity(N);
    for (i, name) in names.iter().enumerate() {
        let op = if i == 0 { "--create" } else { "--join" };
        let mut newcomer = Client::start(server, name, op, room, &[]);
        let joined = format!("* {name} joined");
        newcomer.expect(&joined);
        for c in &mut clients {
            c.expect(&joined);
        }
        clients.push(newcomer);
    }
    clients
        .try_into()
        .unwrap_or_else(|_| unreachable!("one client per name"))
}

/// A host and a member in one room, each having seen the member join.
fn pair(server: &ServerProc, room: &str) -> (Client, Client) {
    let [alice, bob] = group(server, room, ["alice", "bob"]);
    (alice, bob)
}

#[test]
fn messages_reach_every_client_with_the_senders_name() {
    let server = ServerProc::start(&[]);
    let [mut alice, mut bob, mut carol] = group(&server, "lobby", ["alice", "bob", "carol"]);

    bob.say("hello alice 👋");
    alice.expect("bob: hello alice 👋");
    carol.expect("bob: hello alice 👋");
    bob.expect("bob: hello alice 👋");

    alice.say("こんにちは、みなさん");
    bob.expect("alice: こんにちは、みなさん");
    carol.expect("alice: こんにちは、みなさん");

    // End of input: carol leaves, and the others see it.
    carol.close_stdin();
    let (code, _) = carol.finish();
    assert_eq!(code, Some(0));
    alice.expect("* carol left");
    bob.expect("* carol left");

    bob.close_stdin();
    assert_eq!(bob.finish().0, Some(0));
    alice.expect("* bob left");
    alice.close_stdin();
    assert_eq!(alice.finish().0, Some(0));
}

#[test]
fn end_of_input_waits_for_the_last_message_then_leaves() {
    let server = ServerProc::start(&[]);
    let (mut alice, mut bob) = pair(&server, "lobby");
    // Written and closed at once: the message must still be delivered before LEAVE.
    bob.say("last words");
    bob.close_stdin();
    let (code, stderr) = bob.finish();
    assert_eq!(code, Some(0), "{stderr}");
    bob.expect("bob: last words");
    alice.expect("bob: last words");
    alice.expect("* bob left");
}

#[test]
fn closing_the_hosts_client_closes_the_room_for_members() {
    let server = ServerProc::start(&[]);
    let (mut alice, mut bob) = pair(&server, "lobby");
    alice.close_stdin();
    assert_eq!(alice.finish().0, Some(0));
    bob.expect("* alice left");
    bob.expect("* room closed: host left");
    let (code, stderr) = bob.finish();
    assert_eq!(code, Some(3), "{stderr}");
    assert!(
        stderr.contains("room 'lobby' closed: host left"),
        "{stderr}"
    );
    // The name is free again.
    let mut again = Client::start(&server, "dave", "--create", "lobby", &[]);
    again.expect("* dave joined");
}

#[test]
fn a_signal_leaves_the_room_cleanly() {
    let server = ServerProc::start(&[]);
    let (mut alice, mut bob) = pair(&server, "lobby");
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(bob.child.id() as i32, libc::SIGTERM);
    }
    assert_eq!(bob.finish().0, Some(0));
    alice.expect("* bob left");
}

#[test]
fn refused_lines_are_reported_and_tabs_become_spaces() {
    let server = ServerProc::start(&[]);
    let (mut alice, mut bob) = pair(&server, "lobby");
    bob.write_raw(b"red \x1b[31malert\n");
    bob.write_raw(&[b'x'; 3801]);
    bob.write_raw(b"\n\xff\xfe\na\tb\r\n\n");
    bob.say(&"y".repeat(3800));
    alice.expect("bob: a    b");
    alice.expect(&format!("bob: {}", "y".repeat(3800)));
    bob.expect(&format!("bob: {}", "y".repeat(3800)));
    let stderr = bob.stderr();
    assert!(
        stderr.contains("line 1 not sent: it contains a control character (U+001B)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 2 not sent: it is 3801 bytes long; a message is at most 3800 bytes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3 not sent: it is not valid UTF-8"),
        "{stderr}"
    );
    // Nothing else arrived: the refused lines were not sent in any form.
    bob.close_stdin();
    let rest = alice.drain(Duration::from_millis(300));
    assert!(rest.iter().all(|l| !l.starts_with("bob: ")), "{rest:?}");
}

#[test]
fn heartbeats_keep_a_quiet_client_in_the_room() {
    let server = ServerProc::start(&["--idle-timeout", "1"]);
    let (mut alice, mut bob) = pair(&server, "lobby");
    // Three idle timeouts of silence from both users.
    let quiet = alice.drain(Duration::from_millis(3000));
    assert!(quiet.is_empty(), "{quiet:?}");
    bob.say("still here");
    alice.expect("bob: still here");
}

#[test]
fn create_and_join_errors_name_the_problem_and_exit_non_zero() {
    let server = ServerProc::start(&[]);
    let mut host = Client::start(
        &server,
        "alice",
        "--create",
        "lobby",
        &["--password", "s3cret"],
    );
    host.expect("* alice joined");

    let cases: [(&str, &[&str], &str); 4] = [
        ("bob", &["--create", "lobby"], "room 'lobby' already exists"),
        (
            "bob",
            &["--join", "nowhere"],
            "room 'nowhere' does not exist",
        ),
        (
            "bob",
            &["--join", "lobby", "--password", "wrong"],
            "wrong password for room 'lobby'",
        ),
        (
            "alice",
            &["--join", "lobby", "--password", "s3cret"],
            "that user name is already taken in room 'lobby'",
        ),
    ];
    for (name, args, want) in cases {
        let mut all = vec!["--name", name];
        all.extend_from_slice(args);
        let mut c = Client::spawn(&server.addr(), &all);
        c.close_stdin();
        let (code, stderr) = c.finish();
        assert_eq!(code, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }

    // The right password works.
    let mut bob = Client::start(&server, "bob", "--join", "lobby", &["--password", "s3cret"]);
    bob.expect("* bob joined");
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_server_is_named() {
    let mut c = Client::spawn("127.0.0.1:9", &["--join", "lobby"]);
    let (code, stderr) = c.finish();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("missing --name"), "{stderr}");

    let mut c = Client::spawn("127.0.0.1:9", &["--name", "bob"]);
    let (code, stderr) = c.finish();
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--create ROOM or --join ROOM"), "{stderr}");

    // A port nobody listens on.
    let addr = unused_tcp_addr();
    let mut c = Client::spawn(&addr, &["--name", "bob", "--join", "lobby"]);
    let (code, stderr) = c.finish();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach an OCM server at {addr}"))
            && stderr.contains("ocm-server"),
        "{stderr}"
    );
}

#[test]
fn list_prints_the_rooms() {
    let server = ServerProc::start(&[]);
    let (_alice, _bob) = pair(&server, "lobby");
    let mut secret = Client::start(
        &server,
        "carol",
        "--create",
        "attic",
        &["--password", "pw", "--capacity", "4"],
    );
    secret.expect("* carol joined");
    let mut c = Client::spawn(&server.addr(), &["--list"]);
    let (code, stderr) = c.finish();
    assert_eq!(code, Some(0), "{stderr}");
    let mut lines = Vec::new();
    while let Ok(line) = c.lines.recv_timeout(WAIT) {
        lines.push(line);
    }
    assert_eq!(lines, ["attic\t1/4\tpassword", "lobby\t2/32\topen"]);
}
