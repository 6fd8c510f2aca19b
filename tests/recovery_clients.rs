//! Whole-process tests of "no message lost" (PROTOCOL.md §5.4): real `ocm-client --plain`
//! processes and the real `ocm-server`, with the seeded lossy proxy of `common/lossy.rs` on
//! the data plane between them. What is checked is what a person reads: each client's
//! standard output.
//!
//! ```text
//!  ocm-client ──TCP──▶ forwarder ──TCP──▶ ocm-server      (COMPLETE's UdpPort rewritten
//!      │                                      ▲            to the proxy's port)
//!      └──────UDP──▶ lossy proxy ──UDP────────┘
//! ```
//!
//! The client sends its datagrams to the address its TCP connection went to, with the
//! UdpPort of the COMPLETE frame (§1.3). So a small TCP forwarder (`common/forward.rs`)
//! passes TCRP through and rewrites that port to the proxy's: the client then speaks UDP
//! through the proxy without knowing it, exactly as it would through a NAT or a bad Wi-Fi.

mod common;
#[path = "common/forward.rs"]
mod forward;
#[path = "common/lossy.rs"]
mod lossy;
#[path = "common/plain.rs"]
mod plain;

use std::thread;
use std::time::{Duration, Instant};

use common::ServerProc;
use forward::forwarder;
use lossy::{Config, Faults, LossyProxy};
use plain::{Client, check_streams, exchange_whole, room, send_all, tail, wait_all};

/// Members of the lossy rooms.
const MEMBERS: usize = 5;
/// Messages each member sends in the lossy runs: 2 000 in all.
const PER_MEMBER: usize = 400;
/// How long after a NAT rebinding the session must be carrying messages again.
const ROAM_LIMIT: Duration = Duration::from_secs(5);

/// 5 members, 2 000 messages, `loss` dropped each way plus duplicates and reordering.
fn lossy_room(seed: u64, loss: f64) {
    // No rate limit (this is about loss, not flood control); a ring larger than the run,
    // so that a client starved of CPU on a loaded machine still recovers everything.
    let server = ServerProc::start(&["--msg-rate", "0", "--history", "4096"]);
    let faults = Faults::new(loss, 0.02, 0.05);
    let proxy = LossyProxy::start(server.udp, Config::new(seed).both(faults));
    let fwd = forwarder(server.tcp, proxy.addr().port()).to_string();
    let started = Instant::now();
    let mut clients = room(&fwd, MEMBERS, &["--history", "0"]);
    let sent = exchange_whole(&mut clients, PER_MEMBER, Duration::from_millis(2));
    assert_eq!(sent.len(), 2000);
    let stats = proxy.stats();
    assert!(
        stats.up.dropped > 0 && stats.down.dropped > 0 && stats.down.duplicated > 0,
        "the path was not lossy: {stats:?}"
    );
    assert!(
        clients
            .iter()
            .any(|c| c.lines().iter().any(|l| l.ends_with("recovered"))),
        "no client said it recovered anything"
    );
    // Members leave (exit 0 once their messages are confirmed), then the host.
    for c in clients.iter_mut().skip(1) {
        assert_eq!(c.finish(), Some(0), "{}: {}", c.name, c.stderr.text());
    }
    assert_eq!(clients[0].finish(), Some(0), "{}", clients[0].stderr.text());
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn five_members_two_thousand_messages_through_5_percent_loss() {
    lossy_room(0x5eed_0005, 0.05);
}

#[test]
fn five_members_two_thousand_messages_through_20_percent_loss() {
    lossy_room(0x5eed_0020, 0.20);
}

#[test]
fn a_nat_rebinding_mid_stream_loses_nothing() {
    // A short idle timeout: SYNC every second, so even a member with nothing to send
    // notices the dead path within a few seconds.
    let server = ServerProc::start(&["--msg-rate", "0", "--idle-timeout", "4"]);
    let proxy = LossyProxy::start(server.udp, Config::new(0x7a7));
    let fwd = forwarder(server.tcp, proxy.addr().port()).to_string();
    let mut clients = room(&fwd, 3, &["--history", "0"]);
    let mut sent = send_all(&mut clients, 0, 50, Duration::from_millis(5));
    wait_all(&clients, sent.len());

    // Every client's NAT mapping changes: the server now sees each from a new port and
    // drops it, and what it sends to the old ports is lost.
    proxy.rebind_all();
    let rebound = Instant::now();
    sent.extend(send_all(&mut clients, 50, 50, Duration::from_millis(20)));
    wait_all(&clients, sent.len());
    check_streams(&clients, &sent);
    for c in &clients {
        let lines = c.lines();
        assert!(
            lines.iter().any(|l| l == "* reconnected"),
            "{}: {:?}",
            c.name,
            tail(&lines, 20)
        );
        // The first message sent after the rebinding, and the last, reached this member
        // within the limit.
        for probe in ["u0: m0-0050", "u2: m2-0099"] {
            let at = c.printed_at(probe).expect("printed");
            assert!(
                at.duration_since(rebound) < ROAM_LIMIT + Duration::from_secs(1),
                "{}: {probe} came {:?} after the rebinding",
                c.name,
                at.duration_since(rebound)
            );
        }
        let first = c.printed_at("u0: m0-0050").expect("printed");
        assert!(
            first.duration_since(rebound) < ROAM_LIMIT,
            "{}: the session took {:?} to continue",
            c.name,
            first.duration_since(rebound)
        );
    }
    assert!(proxy.stats().rebinds >= 3);
    for c in clients.iter_mut().skip(1) {
        assert_eq!(c.finish(), Some(0), "{}: {}", c.name, c.stderr.text());
    }
}

#[test]
fn a_late_joiner_sees_the_last_50_events() {
    let server = ServerProc::start(&["--msg-rate", "0"]);
    let mut host = Client::start(&server.addr(), "h", "--create", "lobby", &[]);
    host.expect("* h joined");
    for k in 0..80 {
        host.say(&format!("old-{k}"));
    }
    host.flush();
    host.expect("h: old-79");
    let late = Client::start(
        &server.addr(),
        "late",
        "--join",
        "lobby",
        &["--history", "50"],
    );
    late.expect("* late joined");
    // The room's events were: h joined (Seq 1), old-0..old-79 (Seq 2-81), late joined (82):
    // the 50 before late's JOINED are old-30..old-79.
    let mut want = vec!["* — earlier messages —".to_string()];
    want.extend((30..80).map(|k| format!("h: old-{k}")));
    want.push("* — end of earlier messages —".into());
    want.push("* late joined".into());
    assert_eq!(late.lines(), want);
    host.say("new");
    host.flush();
    late.expect("h: new");
}

#[test]
fn a_member_paused_past_the_history_reports_exactly_what_is_gone_then_goes_on() {
    // 16 events of history: a member that misses more cannot get the older ones back.
    let server = ServerProc::start(&["--msg-rate", "0", "--history", "16"]);
    let host = server.host("lobby", "h");
    let sleepy = Client::start(
        &server.addr(),
        "sleepy",
        "--join",
        "lobby",
        &["--history", "0"],
    );
    sleepy.expect("* sleepy joined");
    let body = "x".repeat(1000);
    let line = |k: usize| format!("b-{k:04}-{body}");
    for k in 0..5 {
        host.send(&line(k));
    }
    sleepy.expect(&format!("h: {}", line(4)));

    // SIGSTOP: sleepy's socket buffer (about 200 KB) fills and the kernel drops the rest,
    // as a sleeping laptop or a stalled phone would lose them.
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(sleepy.child.id() as i32, libc::SIGSTOP);
    }
    const PAUSED: usize = 1000;
    for k in 5..5 + PAUSED {
        host.send(&line(k));
        if k % 4 == 0 {
            thread::sleep(Duration::from_micros(300));
        }
    }
    thread::sleep(Duration::from_millis(200));
    // SAFETY: as above.
    unsafe {
        libc::kill(sleepy.child.id() as i32, libc::SIGCONT);
    }
    // Something new shows sleepy the gap.
    for k in 5 + PAUSED..10 + PAUSED {
        host.send(&line(k));
    }
    let last = 10 + PAUSED;
    sleepy.expect(&format!("h: {}", line(last - 1)));

    let lines = sleepy.lines();
    // Walk the output: messages in order, each once; every run of missing messages is
    // announced, just before the message after it, by notices adding up to exactly its
    // length; and only events older than the server's 16 can be missing.
    let mut next = 0;
    let mut announced = 0usize;
    let mut total_missing = 0;
    for l in &lines {
        if let Some(n) = l
            .strip_prefix("* ")
            .and_then(|l| l.strip_suffix(" could not be recovered (older than the server keeps)"))
        {
            let n = n.split(' ').next().and_then(|n| n.parse::<usize>().ok());
            announced += n.expect("a count");
            continue;
        }
        let Some(k) = l
            .strip_prefix("h: b-")
            .and_then(|l| l.get(..4))
            .and_then(|k| k.parse::<usize>().ok())
        else {
            continue;
        };
        assert!(k >= next, "b-{k} after b-{next}: out of order or twice");
        assert_eq!(
            k - next,
            announced,
            "before b-{k}: {} missing, {announced} announced",
            k - next
        );
        total_missing += k - next;
        announced = 0;
        next = k + 1;
    }
    assert_eq!(next, last, "the last message was not printed");
    assert!(
        total_missing > 0,
        "nothing was lost: {:?}",
        tail(&lines, 30)
    );
    assert!(
        total_missing <= last - 16,
        "more missing ({total_missing}) than the server could have shed"
    );
}
