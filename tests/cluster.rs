//! Whole-process tests of `--cluster` (docs/cluster.md): a real `nats-server -js` on a free
//! loopback port, real `ocm-server` nodes joined through it, real clients on loopback.
//!
//! Without `nats-server` these tests print a skip line and pass, except under `CI=true`,
//! where `scripts/test.sh` installs it and its absence is a failure.

mod common;
#[path = "common/ws.rs"]
mod ws;

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ocm::protocol::MAX_DATAGRAM;
use ocm::protocol::Status;
use ocm::protocol::control::{ControlBody, ControlDatagram};
use ocm::protocol::event::{EventKind, RawEvents, SyncInfo};

/// Where Debian puts it; else whatever `PATH` finds.
const NATS_PATHS: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];
/// How long a death may take to reach the other nodes' members (the promise).
const DEATH_NOTICE: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(300);

/// The `nats-server` binary, or `None` (skip) outside CI.
fn nats_binary() -> Option<PathBuf> {
    let found = NATS_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|path| {
                std::env::split_paths(&path)
                    .map(|d| d.join("nats-server"))
                    .find(|p| p.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nats-server is required under CI=true (scripts/test.sh installs it)"
        );
        eprintln!(
            "SKIP: nats-server not found; the cluster tests need it (apt-get install nats-server)"
        );
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A `nats-server -js` on loopback, with its store in a directory of its own.
struct Nats {
    bin: PathBuf,
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    /// More flags (a NATS cluster's routes).
    extra: Vec<String>,
}

impl Nats {
    fn start() -> Option<Nats> {
        let bin = nats_binary()?;
        let mut n = Nats::new(bin, free_port(), Vec::new());
        n.run();
        Some(n)
    }

    fn new(bin: PathBuf, port: u16, extra: Vec<String>) -> Nats {
        let store = std::env::temp_dir().join(format!("ocm-nats-{}-{port}", std::process::id()));
        Nats {
            bin,
            child: None,
            port,
            store,
            extra,
        }
    }

    /// Three servers routed to each other on loopback, JetStream clustered.
    fn three() -> Option<Vec<Nats>> {
        let bin = nats_binary()?;
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let all = routes
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<Nats> = (0..3)
            .map(|i| {
                let extra = vec![
                    "--server_name".into(),
                    format!("s{i}"),
                    "--cluster_name".into(),
                    "ocm".into(),
                    "--cluster".into(),
                    format!("nats://127.0.0.1:{}", routes[i]),
                    "--routes".into(),
                    all.clone(),
                ];
                Nats::new(bin.clone(), free_port(), extra)
            })
            .collect();
        for s in &mut servers {
            s.run();
        }
        Some(servers)
    }

    fn run(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.store)
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < end, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// `n` nodes on one NATS, each seeing the others' rooms (a probe room made on the first
/// is listed by all, then gone from all).
fn cluster(nats: &Nats, n: usize, extra: &[&str]) -> Vec<ServerProc> {
    let urls = vec![nats.url(); n];
    cluster_on(&urls, extra)
}

/// One node per entry of `urls` (its `--cluster` value), settled as for [`cluster`].
fn cluster_on(urls: &[String], extra: &[&str]) -> Vec<ServerProc> {
    let nodes: Vec<ServerProc> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let name = format!("n{}", i + 1);
            let mut flags = vec!["--cluster", url, "--node", &name];
            flags.extend_from_slice(extra);
            ServerProc::start(&flags)
        })
        .collect();
    let end = Instant::now() + Duration::from_secs(20);
    let probe = loop {
        match nodes[0].control().create("probe", "p", b"", 0) {
            Ok(m) => break m,
            Err(_) => {
                assert!(Instant::now() < end, "the first node never took a CREATE");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    for node in &nodes {
        wait_listed(node, "probe", true);
    }
    node_control(&nodes[0])
        .leave("probe", &probe.token)
        .unwrap();
    for node in &nodes {
        wait_listed(node, "probe", false);
    }
    nodes
}

fn node_control(node: &ServerProc) -> ocm::client::control::ControlClient {
    node.control()
}

/// Waits (20 s at most: nodes start slowly on a loaded machine) until `node`'s LIST does
/// (or does not) show `room`.
fn wait_listed(node: &ServerProc, room: &str, shown: bool) {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let list = node.control().list().expect("list");
        if list.iter().any(|r| r.name == room) == shown {
            return;
        }
        assert!(
            Instant::now() < end,
            "{room} {} in the list of {}: {list:?}",
            if shown { "never" } else { "still" },
            node.addr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Joins `room` on `node` and binds (own JOINED seen).
fn member_on(node: &ServerProc, room: &str, user: &str) -> Member {
    node.member(room, user)
}

/// Every event a member receives within `wait`, as (kind, seq, user, body).
fn events(m: &Member, wait: Duration) -> Vec<(u8, u32, String, String)> {
    m.recv_for(wait)
        .into_iter()
        .map(|e| (e.kind, e.seq, e.user, e.body))
        .collect()
}

#[test]
fn three_nodes_chat_in_one_room_with_one_seq() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 3, &[]);
    let host = nodes[0].host("lobby", "ann");
    let bob = member_on(&nodes[1], "lobby", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let cat = member_on(&nodes[2], "lobby", "cat");
    host.wait_for(|e| e.is(EventKind::Joined, "cat"));
    bob.wait_for(|e| e.is(EventKind::Joined, "cat"));
    // Both ways: from the owner's node and from the others; each waits for its message
    // to come back before the next is sent, so the order is known.
    let all = [&host, &bob, &cat];
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); 3];
    for (i, from) in all.iter().enumerate() {
        let body = format!("from {}", from.m.user);
        from.send(&body);
        for (j, m) in all.iter().enumerate() {
            let e = m.wait_for(|e| e.body == body);
            assert_eq!(e.user, from.m.user);
            seqs[j].push(e.seq);
        }
        assert!(seqs.iter().all(|s| s[i] == seqs[0][i]), "one Seq: {seqs:?}");
    }
    assert_eq!(
        seqs[0],
        [seqs[0][0], seqs[0][0] + 1, seqs[0][0] + 2],
        "the owner sequenced them one after the other"
    );
    // Nothing twice, nothing more.
    for m in all {
        let more = events(m, SHORT);
        assert!(more.is_empty(), "{}: more than once: {more:?}", m.m.user);
    }
}

#[test]
fn one_namespace_room_exists_across_nodes_and_a_race_has_one_winner() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 3, &[]);
    let _host = nodes[0].control().create("taken", "a", b"", 0).unwrap();
    wait_listed(&nodes[1], "taken", true);
    let got = nodes[1].control().create("taken", "b", b"", 0);
    assert_eq!(status_of(got), Status::RoomExists);
    // Three nodes race for one name, several times: exactly one wins each time.
    for round in 0..5 {
        let room = format!("race{round}");
        let results: Vec<Status> = std::thread::scope(|s| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let room = room.clone();
                    s.spawn(
                        move || match n.control().create(&room, &format!("u{i}"), b"", 0) {
                            Ok(_) => Status::Ok,
                            Err(e) => e.status().expect("a status"),
                        },
                    )
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wins = results.iter().filter(|&&s| s == Status::Ok).count();
        assert_eq!(wins, 1, "round {round}: {results:?}");
        assert!(
            results
                .iter()
                .all(|&s| s == Status::Ok || s == Status::RoomExists),
            "{results:?}"
        );
    }
}

#[test]
fn capacity_password_names_and_list_hold_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 3, &[]);
    let _host = nodes[0].control().create("club", "ann", b"pw", 3).unwrap();
    wait_listed(&nodes[2], "club", true);
    let wrong = nodes[1].control().join("club", "bob", b"nope");
    assert_eq!(status_of(wrong), Status::BadPassword);
    let bob = nodes[1].control().join("club", "bob", b"pw").unwrap();
    let twice = nodes[2].control().join("club", "bob", b"pw");
    assert_eq!(
        status_of(twice),
        Status::NameTaken,
        "names are one per room, any node"
    );
    let host_name = nodes[2].control().join("club", "ann", b"pw");
    assert_eq!(status_of(host_name), Status::NameTaken);
    let cat = nodes[2].control().join("club", "cat", b"pw").unwrap();
    let full = nodes[1].control().join("club", "dan", b"pw");
    assert_eq!(
        status_of(full),
        Status::RoomFull,
        "one capacity over the nodes"
    );
    let full_on_owner = nodes[0].control().join("club", "dan", b"pw");
    assert_eq!(status_of(full_on_owner), Status::RoomFull);
    let missing = nodes[1].control().join("nowhere", "dan", b"");
    assert_eq!(status_of(missing), Status::RoomNotFound);
    // LIST on every node: every room of the cluster, with the owner's counts.
    let _other = nodes[1].control().create("annex", "eve", b"", 5).unwrap();
    for node in &nodes {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let list = node.control().list().unwrap();
            let club = list.iter().find(|r| r.name == "club");
            let annex = list.iter().find(|r| r.name == "annex");
            let ok = club.is_some_and(|c| (c.members, c.capacity, c.password) == (3, 3, true))
                && annex.is_some_and(|a| (a.members, a.capacity, a.password) == (1, 5, false));
            if ok {
                let names: Vec<&str> = list.iter().map(|r| r.name.as_str()).collect();
                assert_eq!(names, ["annex", "club"], "in byte order");
                break;
            }
            assert!(Instant::now() < end, "{}: {list:?}", node.addr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    // Counts follow the members in and out, several changes in a row included.
    nodes[1].control().leave("club", &bob.token).unwrap();
    nodes[2].control().leave("club", &cat.token).unwrap();
    let dan = nodes[1].control().join("club", "dan", b"pw").unwrap();
    nodes[1].control().leave("club", &dan.token).unwrap();
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let list = nodes[2].control().list().unwrap();
        if list.iter().any(|r| r.name == "club" && r.members == 1) {
            break;
        }
        assert!(Instant::now() < end, "{list:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A member's control datagram (v1.1).
fn control(m: &Member, body: ControlBody<'_>) {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = ControlDatagram {
        room: m.m.room.as_bytes(),
        token: &m.m.token,
        body,
    }
    .encode(&mut buf)
    .unwrap();
    m.sock.send(&buf[..n]).unwrap();
}

/// Room events (Seq > 0) of the datagrams that arrive within `wait`, as raw bytes (v1.1
/// notices have binary bodies, so they are read raw and skipped).
fn raw_room_events(m: &Member, wait: Duration) -> Vec<(u8, u32, String, Vec<u8>)> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        m.sock
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = m.sock.recv(&mut buf) else { break };
        for e in RawEvents::new(&buf[..n]) {
            let e = e.expect("well-formed");
            if e.seq != 0 {
                out.push((e.kind, e.seq, e.user.to_string(), e.body.to_vec()));
            }
        }
    }
    out
}

#[test]
fn a_member_on_another_node_recovers_through_nack_there() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 2, &[]);
    let host = nodes[0].host("hist", "ann");
    let bob = member_on(&nodes[1], "hist", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let mut first = 0;
    for i in 0..5 {
        host.send(&format!("m{i}"));
        let e = bob.wait_for(|e| e.body == format!("m{i}"));
        if i == 0 {
            first = e.seq;
        }
    }
    // Bob says it missed all five: its own node answers from its copy of the history.
    control(
        &bob,
        ControlBody::Nack {
            from_seq: first,
            count: 5,
        },
    );
    let got = raw_room_events(&bob, Duration::from_millis(700));
    let want: Vec<(u8, u32, String, Vec<u8>)> = (0..5)
        .map(|i| {
            (
                EventKind::Message as u8,
                first + i,
                "ann".to_string(),
                format!("m{i}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(got, want);
    // SYNC on the mirror says the room's latest Seq.
    control(&bob, ControlBody::Sync);
    let end = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 4096];
    let last = loop {
        assert!(Instant::now() < end, "no SYNC answer");
        bob.sock.set_read_timeout(Some(SHORT)).unwrap();
        let Ok(n) = bob.sock.recv(&mut buf) else {
            continue;
        };
        let sync = RawEvents::new(&buf[..n])
            .flatten()
            .find(|e| e.kind == EventKind::Sync as u8 && e.user == "bob")
            .map(|e| SyncInfo::parse(e.body).unwrap());
        if let Some(s) = sync {
            break s.last_seq;
        }
    };
    assert_eq!(last, first + 4);
}

#[test]
fn sigkill_of_the_owner_closes_its_rooms_elsewhere_within_five_seconds() {
    let Some(nats) = Nats::start() else { return };
    let mut nodes = cluster(&nats, 3, &[]);
    let host = nodes[0].host("doomed", "ann");
    let bob = member_on(&nodes[1], "doomed", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let cat = member_on(&nodes[2], "doomed", "cat");
    bob.wait_for(|e| e.is(EventKind::Joined, "cat"));
    // A room owned by a survivor is not touched.
    let dan = nodes[1].host("safe", "dan");
    let eve = member_on(&nodes[2], "safe", "eve");
    dan.wait_for(|e| e.is(EventKind::Joined, "eve"));
    let killed = Instant::now();
    nodes[0].signal(libc::SIGKILL);
    for m in [&bob, &cat] {
        let e = m.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
        assert_eq!(e.body, "host unreachable");
        assert!(killed.elapsed() <= DEATH_NOTICE, "{:?}", killed.elapsed());
    }
    // The name is free again, on any node.
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        match nodes[2].control().create("doomed", "fay", b"", 0) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(Status::RoomExists));
                assert!(Instant::now() < end, "the name stayed taken");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    eve.send("still here");
    dan.wait_for(|e| e.body == "still here");
    let _ = nodes.remove(0);
}

#[test]
fn sigterm_closes_the_nodes_rooms_everywhere_with_shutting_down() {
    let Some(nats) = Nats::start() else { return };
    let mut nodes = cluster(&nats, 2, &[]);
    let _host = nodes[0].host("bye", "ann");
    let bob = member_on(&nodes[1], "bye", "bob");
    nodes[0].signal(libc::SIGTERM);
    let e = bob.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
    assert_eq!(e.body, "server shutting down");
    assert!(
        nodes[0].wait(Duration::from_secs(5)).is_some(),
        "node 1 exits"
    );
    // Its record went with it: the name is free at once.
    wait_listed(&nodes[1], "bye", false);
    nodes[1].control().create("bye", "bob2", b"", 0).unwrap();
}

#[test]
fn nats_restarting_mid_chat_rooms_carry_on_and_remote_members_recover() {
    let Some(mut nats) = Nats::start() else {
        return;
    };
    let nodes = cluster(&nats, 2, &[]);
    let host = nodes[0].host("storm", "ann");
    let dan = member_on(&nodes[0], "storm", "dan");
    host.wait_for(|e| e.is(EventKind::Joined, "dan"));
    let bob = member_on(&nodes[1], "storm", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    host.send("before");
    let before = bob.wait_for(|e| e.body == "before").seq;
    nats.kill();
    // The room carries on where its host is.
    host.send("during");
    let during = dan.wait_for(|e| e.body == "during");
    assert_eq!(during.seq, before + 1);
    nats.run();
    // Once the nodes are back on NATS, the next event shows bob's node the gap, which it
    // repairs from the owner: bob gets what it missed, in order, nothing twice.
    let end = Instant::now() + Duration::from_secs(20);
    let mut got: Vec<(u32, String)> = Vec::new();
    let mut i = 0;
    while !got.iter().any(|(_, b)| b.starts_with("after")) {
        assert!(Instant::now() < end, "bob never heard again: {got:?}");
        host.send(&format!("after{i}"));
        i += 1;
        for e in bob.recv_for(Duration::from_millis(500)) {
            if e.kind == EventKind::Message as u8 {
                got.push((e.seq, e.body));
            }
        }
    }
    assert_eq!(got[0], (during.seq, "during".to_string()), "{got:?}");
    for w in got.windows(2) {
        assert_eq!(
            w[1].0,
            w[0].0 + 1,
            "in order, no gap, nothing twice: {got:?}"
        );
    }
    // And bob talks to the room again.
    bob.send("bob is back");
    host.wait_for(|e| e.body == "bob is back");
}

#[test]
fn a_node_stopped_briefly_catches_up_when_it_continues() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 2, &[]);
    let host = nodes[0].host("nap", "ann");
    let dan = member_on(&nodes[0], "nap", "dan");
    host.wait_for(|e| e.is(EventKind::Joined, "dan"));
    let bob = member_on(&nodes[1], "nap", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    dan.wait_for(|e| e.is(EventKind::Joined, "bob"));
    nodes[1].signal(libc::SIGSTOP);
    // A node that reads nothing does not slow the owner's own members.
    let stopped = Instant::now();
    for i in 0..3 {
        host.send(&format!("while stopped {i}"));
        dan.wait_for(|e| e.body == format!("while stopped {i}"));
    }
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
    std::thread::sleep(Duration::from_secs(1));
    nodes[1].signal(libc::SIGCONT);
    for i in 0..3 {
        bob.wait_for(|e| e.body == format!("while stopped {i}"));
    }
    bob.send("awake");
    host.wait_for(|e| e.body == "awake");
}

#[test]
fn an_owner_stopped_past_the_liveness_limit_loses_its_rooms_on_both_sides() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 2, &[]);
    let host = nodes[0].host("frozen", "ann");
    let bob = member_on(&nodes[1], "frozen", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let stopped = Instant::now();
    nodes[0].signal(libc::SIGSTOP);
    let e = bob.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
    assert_eq!(e.body, "host unreachable");
    assert!(stopped.elapsed() <= DEATH_NOTICE);
    nodes[0].signal(libc::SIGCONT);
    // The stopped node learns that its room was taken from it, and closes it too.
    let e = host.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
    assert_eq!(e.body, "host unreachable");
}

/// Moves `m` to `node` with RESUME, on a fresh socket bound there (its first datagram
/// binds silently).
fn resume_on(node: &ServerProc, m: Member) -> Member {
    let moved = node.control().resume(&m.m).expect("resume");
    assert_eq!(moved.udp_addr.port(), node.udp.port());
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(moved.udp_addr).unwrap();
    let m = Member::with_socket(moved, sock);
    m.heartbeat();
    m
}

#[test]
fn resume_moves_a_member_from_one_node_to_another() {
    let Some(nats) = Nats::start() else { return };
    let nodes = cluster(&nats, 3, &[]);
    let host = nodes[0].host("roam", "ann");
    let bob = member_on(&nodes[1], "roam", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let dan = member_on(&nodes[0], "roam", "dan");
    bob.wait_for(|e| e.is(EventKind::Joined, "dan"));
    // A wrong key is refused by the node that holds the member.
    let mut forged = bob.m.clone();
    forged.resume_key = vec![b'x'; 32];
    let refused = nodes[2].control().resume(&forged);
    assert_eq!(status_of(refused), Status::Unauthorized);
    // bob: from a mirror (n2) to another mirror (n3).
    let old = bob.sock.try_clone().unwrap();
    let bob = resume_on(&nodes[2], bob);
    host.send("to bob on n3");
    let e = bob.wait_for(|e| e.body == "to bob on n3");
    bob.send("bob from n3");
    let back = host.wait_for(|e| e.body == "bob from n3");
    assert_eq!(back.seq, e.seq + 1, "one Seq still");
    // Nothing more at the old address.
    old.set_read_timeout(Some(SHORT)).unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n) = old.recv(&mut buf) {
        let evs: Vec<_> = ocm::protocol::event::Events::new(&buf[..n])
            .flatten()
            .collect();
        assert!(
            !evs.iter()
                .any(|e| e.body == "bob from n3" || e.body == "after move"),
            "the old node still sends to bob: {evs:?}"
        );
    }
    // dan: from the owner (n1) to a mirror (n2).
    let dan = resume_on(&nodes[1], dan);
    dan.send("dan from n2");
    host.wait_for(|e| e.body == "dan from n2");
    bob.wait_for(|e| e.body == "dan from n2");
    // bob again: home to the owner (n1).
    let bob = resume_on(&nodes[0], bob);
    bob.send("bob home");
    dan.wait_for(|e| e.body == "bob home");
    host.send("after move");
    bob.wait_for(|e| e.body == "after move");
    // Names still count once: a JOIN as bob anywhere is NAME_TAKEN.
    let again = nodes[2].control().join("roam", "bob", b"");
    assert_eq!(status_of(again), Status::NameTaken);
}

#[test]
fn a_three_server_nats_cluster_loses_one_server_and_the_rooms_carry_on() {
    let Some(mut servers) = Nats::three() else {
        return;
    };
    // Each node prefers its own NATS server and knows the others.
    let urls: Vec<String> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| servers[(i + j) % 3].url())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let nodes = cluster_on(&urls, &["--cluster-replicas", "3"]);
    let host = nodes[0].host("sturdy", "ann");
    let bob = member_on(&nodes[1], "sturdy", "bob");
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    let cat = member_on(&nodes[2], "sturdy", "cat");
    bob.wait_for(|e| e.is(EventKind::Joined, "cat"));
    servers[0].kill();
    // The owner's node moves to another NATS server; its members elsewhere hear it again
    // (what went missing in between is repaired from the owner).
    let end = Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    loop {
        assert!(Instant::now() < end, "bob and cat never heard ann again");
        let body = format!("after loss {i}");
        host.send(&body);
        i += 1;
        let b = bob.recv_for(Duration::from_millis(300));
        let c = cat.recv_for(Duration::from_millis(300));
        for e in b.iter().chain(&c) {
            assert_ne!(
                e.kind,
                EventKind::RoomClosed as u8,
                "nobody was judged dead: {e:?}"
            );
        }
        if b.iter().any(|e| e.body == body) && c.iter().any(|e| e.body == body) {
            break;
        }
    }
    cat.send("cat still here");
    host.wait_for(|e| e.body == "cat still here");
    // The registry (three copies, two left) still takes new rooms, and refuses taken names.
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        match nodes[1].control().create("fresh", "dan", b"", 0) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(Status::ServerFull), "{e}");
                assert!(Instant::now() < end, "no CREATE after losing a NATS server");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let taken = nodes[2].control().create("sturdy", "eve", b"", 0);
    assert_eq!(status_of(taken), Status::RoomExists);
}

/// A chat datagram (v1) for a WebSocket member.
fn web_datagram(room: &str, token: &[u8], message: &str) -> Vec<u8> {
    let mut buf = [0u8; MAX_DATAGRAM];
    let n = ocm::protocol::datagram::ChatDatagram {
        room: room.as_bytes(),
        token,
        message,
    }
    .encode(&mut buf)
    .unwrap();
    buf[..n].to_vec()
}

/// The events of the datagrams a session receives within `wait`.
fn web_events(web: &mut ws::Ws, wait: Duration) -> Vec<(u8, u32, String, String)> {
    let end = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let Some(d) = web.recv_datagram_within(left) else {
            break;
        };
        for e in ocm::protocol::event::Events::new(&d).flatten() {
            out.push((e.kind, e.seq, e.user.to_string(), e.body.to_string()));
        }
    }
    out
}

#[test]
fn a_websocket_session_creates_and_joins_across_nodes() {
    let Some(nats) = Nats::start() else { return };
    let url = nats.url();
    let nodes = cluster(&nats, 1, &[]);
    let n2 = ws::WebServer::start(&["--cluster", &url, "--node", "n2"]);
    let control2 = || {
        ocm::client::control::ControlClient::connect(&n2.tcp.to_string(), Duration::from_secs(5))
            .unwrap()
    };
    let host = nodes[0].host("mixed", "ann");
    let end = Instant::now() + Duration::from_secs(10);
    while !control2().list().unwrap().iter().any(|r| r.name == "mixed") {
        assert!(Instant::now() < end, "n2 never saw the room");
        std::thread::sleep(Duration::from_millis(50));
    }
    // JOIN over a session on n2, of a room owned by n1: deferred, then answered.
    let mut web = ws::Ws::open(&n2);
    let token = web.join("mixed", "web");
    web.send_unit(2, &web_datagram("mixed", &token, ""));
    host.wait_for(|e| e.is(EventKind::Joined, "web"));
    host.send("hello web");
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        let got = web_events(&mut web, Duration::from_millis(200));
        if got.iter().any(|e| e.3 == "hello web") {
            break;
        }
        assert!(Instant::now() < end, "the session never heard ann");
    }
    web.send_unit(2, &web_datagram("mixed", &token, "hello ann"));
    host.wait_for(|e| e.body == "hello ann");
    // CREATE over a session: in the one namespace.
    let mut web2 = ws::Ws::open(&n2);
    let _t = web2.create("webroom", "w2");
    wait_listed(&nodes[0], "webroom", true);
    let taken = nodes[0].control().create("webroom", "x", b"", 0);
    assert_eq!(status_of(taken), Status::RoomExists);
}
