//! Real `ocm-client --plain` processes driven from a test: start them, type into them,
//! collect what they print, and check that a room's streams are whole. Shared by the
//! whole-process loss tests (`recovery_clients.rs` through the userspace lossy proxy,
//! `kernel_loss.rs` through the kernel's packet filter), so both assert the same thing.
//!
//! Include it with `#[path = "common/plain.rs"] mod plain;` next to `mod common;`: it is kept
//! out of `common/mod.rs` because it names the `ocm-client` binary of the `ocm` package,
//! which `bench-client`'s tests (which share `common/mod.rs`) do not have.
#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Captured, spawn_piped, wait_exit};

/// Generous, for a loaded 2-core machine; each wait normally ends in milliseconds.
pub const WAIT: Duration = Duration::from_secs(20);
/// The longest a whole-room exchange may take before the test fails (the runs take a few
/// seconds; this keeps a broken build from hanging the suite).
pub const RUN_LIMIT: Duration = Duration::from_secs(45);

/// A running `ocm-client --plain`, killed when dropped. Its stdout lines (time stamp
/// removed) are collected with the moment each was read.
pub struct Client {
    pub name: String,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub stderr: Captured,
}

impl Client {
    pub fn start(server: &str, name: &str, op: &str, room: &str, extra: &[&str]) -> Client {
        let mut args = vec!["--plain", "--server", server, "--name", name, op, room];
        args.extend_from_slice(extra);
        let mut child = spawn_piped(Path::new(env!("CARGO_BIN_EXE_ocm-client")), &args, true);
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let text = line.get(9..).unwrap_or_default().to_string();
                sink.lock().expect("lines").push((Instant::now(), text));
            }
        });
        Client {
            name: name.to_string(),
            stdin: child.stdin.take(),
            stderr: Captured::stderr(&mut child),
            child,
            lines,
        }
    }

    pub fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to client");
    }

    pub fn flush(&mut self) {
        self.stdin
            .as_mut()
            .expect("stdin open")
            .flush()
            .expect("flush");
    }

    pub fn lines(&self) -> Vec<String> {
        let lines = self.lines.lock().expect("lines");
        lines.iter().map(|(_, l)| l.clone()).collect()
    }

    /// The chat lines (`user: text`), in the order printed.
    pub fn messages(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| !l.starts_with("* "))
            .collect()
    }

    /// When the first line equal to `want` was printed.
    pub fn printed_at(&self, want: &str) -> Option<Instant> {
        let lines = self.lines.lock().expect("lines");
        lines.iter().find(|(_, l)| l == want).map(|(t, _)| *t)
    }

    /// Waits until `done(self)` holds; panics with the output after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, done: impl Fn(&Client) -> bool) {
        let end = Instant::now() + limit;
        while !done(self) {
            assert!(
                Instant::now() < end,
                "{}: no {what} within {limit:?}; last lines: {:#?}; stderr: {}",
                self.name,
                tail(&self.lines(), 20),
                self.stderr.text()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn expect(&self, want: &str) {
        self.wait_until(WAIT, &format!("line {want:?}"), |c| {
            c.printed_at(want).is_some()
        });
    }

    /// Closes stdin and waits for the exit code (the client leaves once its own messages
    /// are confirmed).
    pub fn finish(&mut self) -> Option<i32> {
        self.stdin = None;
        let status = wait_exit(&mut self.child, WAIT);
        status.and_then(|s| s.code())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tail(lines: &[String], n: usize) -> &[String] {
    &lines[lines.len().saturating_sub(n)..]
}

/// A room of `n` members `u0`..: `u0` creates it, the others join one by one, each seen
/// joining by itself before the next comes.
pub fn room(server: &str, n: usize, extra: &[&str]) -> Vec<Client> {
    (0..n)
        .map(|i| {
            let name = format!("u{i}");
            let op = if i == 0 { "--create" } else { "--join" };
            let c = Client::start(server, &name, op, "lobby", extra);
            c.expect(&format!("* {name} joined"));
            c
        })
        .collect()
}

/// Each member sends `per` numbered messages (`m<i>-<k>`), interleaved, in small paced
/// rounds; returns every line sent, as the room shows it (`u<i>: m<i>-<k>`).
pub fn send_all(clients: &mut [Client], first: usize, per: usize, pause: Duration) -> Vec<String> {
    let mut sent = Vec::new();
    for k in first..first + per {
        for (i, c) in clients.iter_mut().enumerate() {
            let text = format!("m{i}-{k:04}");
            c.say(&text);
            sent.push(format!("u{i}: {text}"));
        }
        if k % 10 == 9 {
            for c in clients.iter_mut() {
                c.flush();
            }
            thread::sleep(pause);
        }
    }
    for c in clients.iter_mut() {
        c.flush();
    }
    sent
}

/// Every client's chat lines are the room's sequence: the same order everywhere, each
/// sent message exactly once. (A member's own messages may stand in another order than
/// typed: one lost on the way is sent again after those that got through.)
pub fn check_streams(clients: &[Client], sent: &[String]) {
    let reference = clients[0].messages();
    let want: HashSet<&String> = sent.iter().collect();
    let got: HashSet<&String> = reference.iter().collect();
    assert_eq!(got.len(), reference.len(), "a message printed twice");
    assert_eq!(got, want, "the room's messages are not what was sent");
    for c in clients {
        assert_eq!(
            c.messages(),
            reference,
            "{} printed another sequence than {}",
            c.name,
            clients[0].name
        );
    }
}

pub fn wait_all(clients: &[Client], count: usize) {
    let end = Instant::now() + RUN_LIMIT;
    while clients.iter().any(|c| c.messages().len() < count) {
        if Instant::now() > end {
            let report: Vec<String> = clients
                .iter()
                .map(|c| {
                    let lines = c.lines();
                    let notices: Vec<&String> =
                        lines.iter().filter(|l| l.starts_with("* ")).collect();
                    format!(
                        "{}: {} of {count} messages; notices {notices:?}; stderr {}",
                        c.name,
                        c.messages().len(),
                        c.stderr.text()
                    )
                })
                .collect();
            panic!("not every message everywhere within {RUN_LIMIT:?}: {report:#?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every client sends `per` lines, `pause` apart; then every client's stream must be the
/// room's whole sequence, each message once and in order, with nothing after it and no
/// "could not be recovered" notice (the runs that expect no loss at all). Returns what was
/// sent, in sending order.
pub fn exchange_whole(clients: &mut [Client], per: usize, pause: Duration) -> Vec<String> {
    let sent = send_all(clients, 0, per, pause);
    wait_all(clients, sent.len());
    // Nothing more comes after the full sequence (no late duplicate).
    thread::sleep(Duration::from_millis(300));
    check_streams(clients, &sent);
    for c in clients.iter() {
        let lines = c.lines();
        assert!(
            !lines.iter().any(|l| l.contains("could not be recovered")),
            "{}: {:?}",
            c.name,
            lines
                .iter()
                .filter(|l| l.starts_with("* "))
                .collect::<Vec<_>>()
        );
    }
    sent
}
