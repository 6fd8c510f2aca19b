//! The web listener over real sockets (PROTOCOL.md §6): the page, the upgrade and its
//! refusals, close codes, WebSocket members chatting with UDP members, the 256 KiB output
//! cap, many sessions, hostile bytes, and the handshake timeout.

mod common;
#[path = "common/ws.rs"]
mod ws;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{Member, raw_datagram};
use ocm::client::control::ControlClient;
use ocm::protocol::event::{EventKind, Events};
use ocm::protocol::frame::Request;
use ocm::protocol::{State, Status};
use ws::{Msg, WAIT, WebServer, Ws, http, upgrade_head};

fn control(srv: &WebServer) -> ControlClient {
    ControlClient::connect(&srv.tcp.to_string(), WAIT).expect("connect")
}

/// A UDP member of `room` (joined over TCP), bound.
fn udp_member(srv: &WebServer, room: &str, user: &str) -> Member {
    let m = control(srv).join(room, user, b"").expect("join");
    Member::bind(m)
}

/// A datagram of `token` in `room` with `message`.
fn datagram(room: &str, token: &[u8], message: &str) -> Vec<u8> {
    raw_datagram(room.as_bytes(), token, message.as_bytes())
}

/// The events of one server datagram: (kind, seq, user, body).
fn events(bytes: &[u8]) -> Vec<(u8, u32, String, String)> {
    Events::new(bytes)
        .map(|e| {
            let e = e.expect("well-formed event");
            (e.kind, e.seq, e.user.to_string(), e.body.to_string())
        })
        .collect()
}

#[test]
fn the_page_is_served_with_the_right_content_types() {
    let srv = WebServer::start(&[]);
    for (path, ty, needle) in [
        ("/", "text/html; charset=utf-8", "<html"),
        ("/style.css", "text/css; charset=utf-8", "{"),
        ("/app.js", "text/javascript; charset=utf-8", "import"),
        ("/protocol.js", "text/javascript; charset=utf-8", "export"),
        ("/session.js", "text/javascript; charset=utf-8", "export"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", srv.host());
        let got = http(srv.web, req.as_bytes());
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {got:.80}");
        assert!(got.contains(&format!("Content-Type: {ty}\r\n")), "{path}");
        let (_, body) = got.split_once("\r\n\r\n").unwrap();
        assert!(got.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(body.contains(needle), "{path}");
    }
    let head = http(srv.web, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.ends_with("\r\n\r\n"));
}

#[test]
fn errors_are_400_404_405_426_and_origins_403() {
    let srv = WebServer::start(&["--web-origin", "HTTPS://Friend.Example"]);
    let host = srv.host();
    let status = |req: String| {
        let got = http(srv.web, req.as_bytes());
        got.split(' ').nth(1).unwrap_or("none").to_string()
    };
    assert_eq!(
        status(format!("GET /nope HTTP/1.1\r\nHost: {host}\r\n\r\n")),
        "404"
    );
    assert_eq!(
        status(format!("POST / HTTP/1.1\r\nHost: {host}\r\n\r\n")),
        "405"
    );
    assert_eq!(
        status(format!("GET /ws HTTP/1.1\r\nHost: {host}\r\n\r\n")),
        "400"
    );
    let v8 = upgrade_head(&host, "").replace("Version: 13", "Version: 8");
    let got = http(srv.web, v8.as_bytes());
    assert!(got.starts_with("HTTP/1.1 426 "), "{got}");
    assert!(got.contains("Sec-WebSocket-Version: 13\r\n"));
    // Origins: a foreign one is refused, a listed one (any case) and the page's own work.
    let refused = Ws::open_with(srv.web, "Origin: http://evil.example\r\n").err();
    assert!(refused.is_some_and(|h| h.starts_with("HTTP/1.1 403 ")));
    let other_port = format!("Origin: http://127.0.0.1:{}\r\n", srv.web.port() + 1);
    assert!(Ws::open_with(srv.web, &other_port).is_err());
    assert!(Ws::open_with(srv.web, "Origin: null\r\n").is_err());
    assert!(Ws::open_with(srv.web, "Origin: https://friend.example\r\n").is_ok());
    assert!(Ws::open_with(srv.web, &format!("Origin: {}\r\n", srv.origin())).is_ok());
    assert!(
        Ws::open_with(srv.web, "").is_ok(),
        "no Origin: not a browser"
    );
}

#[test]
fn bad_messages_close_with_the_right_codes() {
    let srv = WebServer::start(&[]);
    type Send = Box<dyn Fn(&mut Ws)>;
    let cases: Vec<(&str, Send, u16)> = vec![
        ("text", Box::new(|w| w.send_frame(true, 1, b"\x01hi")), 1003),
        (
            "8193 bytes",
            Box::new(|w| w.send_frame(true, 2, &[2u8; 8193])),
            1009,
        ),
        ("empty", Box::new(|w| w.send_frame(true, 2, b"")), 1002),
        ("channel 3", Box::new(|w| w.send_unit(3, b"x")), 1002),
        (
            "unmasked",
            Box::new(|w| w.write_raw(&[0x82, 0x01, 0x02])),
            1002,
        ),
        (
            "ping of 126",
            Box::new(|w| w.send_frame(true, 9, &[0u8; 126])),
            1002,
        ),
        (
            "close",
            Box::new(|w| w.send_frame(true, 8, &1000u16.to_be_bytes())),
            1000,
        ),
    ];
    for (what, send, code) in cases {
        let mut w = Ws::open(&srv);
        send(&mut w);
        assert_eq!(w.close_code(), Some(code), "{what}");
    }
    // Exactly 8192 bytes (channel byte included) is a message, not a close: a datagram of
    // no member, dropped silently; a ping after it is answered.
    let mut w = Ws::open(&srv);
    w.send_frame(true, 2, &[2u8; 8192]);
    w.send_frame(true, 9, b"still there?");
    assert_eq!(w.recv(), Msg::Pong(b"still there?".to_vec()));
    // A channel-1 message that is not one whole frame: status 6, then 1002.
    let mut w = Ws::open(&srv);
    w.send_unit(1, &[0, 4, 0]);
    let answer = w.recv_tcrp();
    assert_eq!(answer.len(), 33);
    assert_eq!(&answer[..3], &[0, 4, State::Response as u8]);
    assert_eq!(answer[32], Status::InvalidRequest as u8);
    assert_eq!(w.close_code(), Some(1002));
    // An invalid field in a whole frame: status 6, the session stays.
    let mut w = Ws::open(&srv);
    let (status, _) = w.request(&Request::Join {
        room: "bad\u{7}room",
        user: "x",
        password: b"",
        resume_key: None,
    });
    assert_eq!(status, Status::InvalidRequest);
    let (status, _) = w.request(&Request::List);
    assert_eq!(status, Status::Ok);
}

#[test]
fn a_web_member_and_a_udp_member_chat_with_the_same_bytes() {
    let srv = WebServer::start(&[]);
    let mut web = Ws::open(&srv);
    let token = web.create("mixed", "ウェブ");
    web.send_unit(2, &datagram("mixed", &token, ""));
    let joined = events(&web.recv_datagram_within(WAIT).unwrap());
    assert_eq!(joined[0].0, EventKind::Joined as u8);
    assert_eq!(joined[0].2, "ウェブ");

    let udp = udp_member(&srv, "mixed", "bob");
    let j = events(&web.recv_datagram_within(WAIT).unwrap());
    assert_eq!((j[0].0, j[0].2.as_str()), (EventKind::Joined as u8, "bob"));

    // Web → both, then UDP → both: every receiver gets the same bytes, the same Seq.
    web.send_unit(2, &datagram("mixed", &token, "こんにちは 👋"));
    let to_web = web.recv_datagram_within(WAIT).unwrap();
    let mut buf = [0u8; 4096];
    udp.sock.set_read_timeout(Some(WAIT)).unwrap();
    let n = udp.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &to_web[..], "encoded once: the same bytes");
    let ev = events(&to_web);
    assert_eq!(
        (ev[0].2.as_str(), ev[0].3.as_str()),
        ("ウェブ", "こんにちは 👋")
    );
    assert_eq!(ev[0].1, j[0].1 + 1);

    udp.send("hi from udp");
    let to_web = web.recv_datagram_within(WAIT).unwrap();
    let n = udp.sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &to_web[..]);
    assert_eq!(events(&to_web)[0].3, "hi from udp");
    assert_eq!(events(&to_web)[0].1, ev[0].1 + 1);

    // The host leaves over channel 1: bob sees LEFT and ROOM_CLOSED.
    let (status, _) = web.request(&Request::Leave {
        room: "mixed",
        token: &token,
    });
    assert_eq!(status, Status::Ok);
    udp.wait_for(|e| e.is(EventKind::Left, "ウェブ"));
    udp.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
    assert!(srv.metric("ocm_web_messages_total{direction=\"in\"}") >= 4.0);
    assert!(srv.metric("ocm_web_messages_total{direction=\"out\"}") >= 6.0);
    assert_eq!(srv.metric("ocm_web_sessions"), 1.0);
}

#[test]
fn tokens_are_not_accepted_across_transports() {
    let srv = WebServer::start(&[]);
    let mut web = Ws::open(&srv);
    let web_token = web.create("split", "web");
    let udp = udp_member(&srv, "split", "bob");
    // The session's token over UDP, and the UDP token on the session: both dropped.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.send_to(&datagram("split", &web_token, ""), srv.udp)
        .unwrap();
    sock.send_to(&datagram("split", &web_token, "sneaky"), srv.udp)
        .unwrap();
    web.send_unit(2, &datagram("split", &udp.m.token, "stolen"));
    // Another session cannot use the first one's token either.
    let mut other = Ws::open(&srv);
    other.send_unit(2, &datagram("split", &web_token, "other session"));
    udp.expect_silence(Duration::from_millis(300));
    assert_eq!(
        srv.metric("ocm_datagrams_dropped_total{reason=\"wrong_address\"}"),
        4.0
    );
    // Its own session binds it; then bob hears it.
    web.send_unit(2, &datagram("split", &web_token, ""));
    udp.wait_for(|e| e.is(EventKind::Joined, "web"));
    // LEAVE of the session's token over TCP from the same IP works.
    let mut c = control(&srv);
    c.leave("split", &web_token)
        .expect("leave from the session's peer IP");
    udp.wait_for(|e| e.is(EventKind::Left, "web"));
}

#[test]
fn a_session_that_never_reads_has_datagrams_dropped_at_the_cap() {
    let srv = WebServer::start(&["--msg-rate", "0"]);
    let mut web = Ws::open(&srv);
    let token = {
        let host = control(&srv).create("flood", "udp-host", b"", 0).unwrap();
        let host = Member::bind(host);
        let t = web.join("flood", "reader");
        web.send_unit(2, &datagram("flood", &t, ""));
        host.wait_for(|e| e.is(EventKind::Joined, "reader"));
        (host, t)
    };
    let (host, _) = token;
    // 3000 × ~3.5 KB: far more than 256 KiB plus what the kernel buffers hold.
    let text = "x".repeat(3500);
    let start = Instant::now();
    let mut seen = 0;
    let mut count = |evs: Vec<common::Ev>| {
        seen += evs
            .iter()
            .filter(|e| e.kind == EventKind::Message as u8)
            .count();
    };
    for i in 0..3000 {
        host.send(&format!("{i:04}{text}"));
        if i % 20 == 19 {
            // The UDP member keeps up: it reads its own copies as it goes.
            while let Some(evs) = host.recv_datagram(Duration::from_millis(1)) {
                count(evs);
            }
        }
    }
    host.send("done");
    let deadline = Instant::now() + WAIT;
    loop {
        let evs = host
            .recv_datagram(deadline.saturating_duration_since(Instant::now()))
            .expect("the UDP member gets every message through");
        let done = evs.iter().any(|e| e.body == "done");
        count(evs);
        if done {
            break;
        }
    }
    assert!(seen > 2500, "the UDP member got its messages: {seen}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "UDP was not slowed: {:?}",
        start.elapsed()
    );
    let dropped = srv.metric("ocm_web_datagrams_dropped_total");
    // What the kernel's buffers took on both sides (a few MB on loopback) plus the 256 KiB
    // of the session's own buffer got through; the rest was dropped and counted.
    assert!(dropped > 1000.0, "dropped at the cap: {dropped}");
    // The session is still open and, once it reads, gets what its buffer held.
    let (mut got, mut last_seq) = (0, 0);
    while let Some(Msg::Binary(m)) = web.recv_within(Duration::from_millis(500)) {
        for e in events(&m[1..]) {
            assert!(e.1 > last_seq, "in order, gaps where dropped");
            last_seq = e.1;
        }
        got += 1;
    }
    assert!(got > 50, "the buffered datagrams arrive: {got}");
    assert!(
        got as f64 + dropped >= 3000.0,
        "{got} + {dropped}: each one sent or counted"
    );
    assert_eq!(srv.metric("ocm_web_sessions"), 1.0);
}

#[test]
fn a_thousand_idle_sessions_then_one_chats() {
    ocm::sys::rlimit::raise_nofile_limit().expect("raise the open-file limit");
    let srv = WebServer::start(&["--max-connections-per-ip", "0"]);
    let mut idle: Vec<Ws> = (0..1000).map(|_| Ws::open(&srv)).collect();
    assert_eq!(srv.metric("ocm_web_sessions"), 1000.0);
    let mut web = Ws::open(&srv);
    let token = web.create("busy", "late");
    web.send_unit(2, &datagram("busy", &token, ""));
    web.send_unit(2, &datagram("busy", &token, "made it"));
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let d = web.recv_datagram_within(WAIT).expect("events");
        bodies.extend(events(&d).into_iter().map(|e| e.3));
    }
    assert_eq!(bodies[1], "made it");
    // The idle ones are still there and answer a ping.
    let last = idle.last_mut().unwrap();
    last.send_frame(true, 9, b"p");
    assert_eq!(last.recv(), Msg::Pong(b"p".to_vec()));
    drop(idle);
}

#[test]
fn a_connection_beyond_the_limit_gets_503() {
    let srv = WebServer::start(&["--max-connections", "2"]);
    let _a = Ws::open(&srv);
    let _b = TcpStream::connect(srv.tcp).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let got = http(srv.web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 503 "), "{got}");
}

#[test]
fn random_bytes_on_the_web_port_do_not_hurt_the_server() {
    let mut srv = WebServer::start(&[]);
    let mut seed = 0x1234_5678_u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let end = Instant::now() + Duration::from_secs(2);
    let mut rounds = 0;
    while Instant::now() < end && rounds < 5000 {
        rounds += 1;
        let Ok(mut s) = TcpStream::connect(srv.web) else {
            continue;
        };
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let len = (rand() % 3000) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
        if rounds % 2 == 0 {
            // Half of them upgrade first, then send garbage as frames.
            let mut head = upgrade_head(&srv.host(), "").into_bytes();
            head.append(&mut bytes);
            bytes = head;
        }
        let _ = s.write_all(&bytes);
        let mut sink = [0u8; 4096];
        let _ = s.read(&mut sink);
    }
    assert!(srv.is_running());
    let mut w = Ws::open(&srv);
    w.create("after", "soak");
    let got = http(srv.web, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200 "));
}

#[test]
fn a_half_finished_handshake_times_out() {
    let srv = WebServer::start(&[]);
    let start = Instant::now();
    let mut half = TcpStream::connect(srv.web).unwrap();
    half.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgr")
        .unwrap();
    let mut silent = TcpStream::connect(srv.web).unwrap();
    for s in [&mut half, &mut silent] {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "{took:?}"
    );
}

#[test]
fn a_closed_session_leaves_its_member_until_the_idle_timeout() {
    let srv = WebServer::start(&["--idle-timeout", "1"]);
    let host = {
        let m = control(&srv).create("stay", "host", b"", 0).unwrap();
        Member::bind(m)
    };
    let mut web = Ws::open(&srv);
    let token = web.join("stay", "tab");
    web.send_unit(2, &datagram("stay", &token, ""));
    host.wait_for(|e| e.is(EventKind::Joined, "tab"));
    drop(web); // the tab is closed: no LEAVE
    // Events for the gone session are simply not sent; the member times out as any other.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        host.heartbeat();
        if let Some(evs) = host.recv_datagram(Duration::from_millis(200)) {
            if evs.iter().any(|e| e.is(EventKind::TimedOut, "tab")) {
                assert!(start.elapsed() >= Duration::from_millis(500));
                return;
            }
        }
    }
    panic!("no TIMED_OUT for the closed session's member");
}

/// Spawns the server with `args` and returns its first line (or its error output).
fn first_line(args: &[&str]) -> (String, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let mut child = Command::new(common::server_binary())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _ = out.read_line(&mut line);
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (line, format!("{status}: {err}"))
}

#[test]
fn the_listening_line_names_the_web_listener_and_a_taken_port_is_an_error() {
    let (line, _) = first_line(&["--port", "0", "--web", "off"]);
    assert!(
        line.starts_with("listening tcp=") && !line.contains("web="),
        "{line}"
    );
    let (line, _) = first_line(&["--port", "0", "--bind", "::1"]);
    let web = line.split_whitespace().find_map(|w| w.strip_prefix("web="));
    assert!(web.is_some_and(|w| w.starts_with("[::1]:")), "{line}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let (line, err) = first_line(&["--port", "0", "--web", &at]);
    assert!(line.is_empty(), "no listening line: {line}");
    assert!(err.contains("cannot serve the web page on"), "{err}");
}
