//! TLS on the TCRP and web listeners (PROTOCOL.md §6, last bullet), over real sockets on
//! 127.0.0.1: a chat whose control plane is TLS, certificates that do not verify, plain
//! text and garbage sent to a TLS port, a thousand stalled handshakes, HTTPS and WSS, and
//! the start-up errors. Certificates are made here with `rcgen`, as `examples/dev-cert.rs`
//! makes them.

mod common;
#[path = "common/ws.rs"]
mod ws;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Member, ServerProc, create_request, raw_exchange, spawn_piped, wait_exit};
use ocm::client::ControlError;
use ocm::client::control::{ControlClient, Tls};
use ocm::protocol::Status;
use ocm::protocol::event::EventKind;
use ocm::protocol::frame::{Request, parse_status, split_reply};
use rand::RngExt;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use ws::WebServer;

/// How long any single wait may last.
const WAIT: Duration = Duration::from_secs(5);

/// A private CA and a certificate for localhost and 127.0.0.1 signed by it, in a fresh
/// directory (removed on drop), plus a key that matches nothing.
struct Certs {
    dir: PathBuf,
    ca_pem: String,
}

impl Certs {
    fn new() -> Certs {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ocm-tls-test-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // A name of its own: another test CA is a stranger, not a namesake.
        ca.distinguished_name
            .push(DnType::CommonName, format!("OCM test CA {n}"));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let leaf = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.join("cert.pem"), leaf_cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
        let other = KeyPair::generate().unwrap();
        std::fs::write(dir.join("other-key.pem"), other.serialize_pem()).unwrap();
        Certs {
            dir,
            ca_pem: ca_cert.pem(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// The server flags for this certificate.
    fn flags(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.path("cert.pem"),
            "--tls-key".into(),
            self.path("key.pem"),
        ]
    }

    /// Client settings that trust this CA only.
    fn tls(&self) -> Tls {
        Tls::from_ca_pem(self.ca_pem.as_bytes()).expect("CA")
    }

    /// A raw rustls client configuration trusting this CA (for HTTPS and WSS).
    fn client_config(&self) -> Arc<ClientConfig> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TLS server on free ports, with metrics.
fn tls_server(certs: &Certs, extra: &[&str]) -> ServerProc {
    let flags = certs.flags();
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.extend(["--metrics", "127.0.0.1:0", "--web", "off"]);
    args.extend(extra);
    ServerProc::start(&args)
}

fn tls_control(srv: &ServerProc, certs: &Certs) -> ControlClient {
    ControlClient::connect_with(&srv.addr(), WAIT, Some(&certs.tls())).expect("TLS connect")
}

/// A TLS client can still create a room and be answered: the server is serving.
fn still_serves(srv: &ServerProc, certs: &Certs, room: &str) {
    let start = Instant::now();
    let m = tls_control(srv, certs)
        .create(room, "probe", b"", 0)
        .expect("create over TLS");
    assert_eq!(m.room, room);
    assert!(start.elapsed() < WAIT, "answered in {:?}", start.elapsed());
}

#[test]
fn a_chat_with_its_control_plane_over_tls() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &[]);
    // CREATE and JOIN over TLS, by name and by IP address (an IP SAN).
    let mut c = tls_control(&srv, &certs);
    assert!(c.is_tls());
    let host = Member::bind(c.create("den", "alice", b"pw", 4).expect("create"));
    let by_name = format!("localhost:{}", srv.tcp.port());
    let mut c2 = ControlClient::connect_with(&by_name, WAIT, Some(&certs.tls())).expect("by name");
    let guest = Member::bind(c2.join("den", "bob", b"pw").expect("join"));
    host.wait_for(|e| e.is(EventKind::Joined, "bob"));
    // Chat over UDP, as ever.
    guest.send("hello over udp");
    let got = host.wait_for(|e| e.is(EventKind::Message, "bob"));
    assert_eq!(got.body, "hello over udp");
    // LIST and a wrong password over the same TLS connection.
    let rooms = c2.list().expect("list");
    assert!(
        rooms
            .iter()
            .any(|r| r.name == "den" && r.members == 2 && r.password)
    );
    let refused = c2.join("den", "eve", b"wrong").expect_err("bad password");
    assert_eq!(refused.status(), Some(Status::BadPassword));
    // The terminal client with --ca joins and speaks; it leaves (LEAVE over TLS) at EOF.
    let mut child = spawn_piped(
        Path::new(env!("CARGO_BIN_EXE_ocm-client")),
        &[
            "--plain",
            "--ca",
            &certs.path("ca.pem"),
            "--server",
            &by_name,
            "--join",
            "den",
            "--password",
            "pw",
            "--name",
            "carol",
        ],
        true,
    );
    let mut stdin = child.stdin.take().unwrap();
    host.wait_for(|e| e.is(EventKind::Joined, "carol"));
    stdin.write_all(b"typed over udp\n").unwrap();
    let got = host.wait_for(|e| e.is(EventKind::Message, "carol"));
    assert_eq!(got.body, "typed over udp");
    drop(stdin);
    host.wait_for(|e| e.is(EventKind::Left, "carol"));
    assert_eq!(wait_exit(&mut child, WAIT).and_then(|s| s.code()), Some(0));
    // The host's LEAVE over TLS closes the room.
    c.leave("den", &host.m.token).expect("leave over TLS");
    guest.wait_for(|e| e.kind == EventKind::RoomClosed as u8);
    assert!(srv.metric("ocm_tls_handshakes_total") >= 4.0);
    assert_eq!(srv.metric("ocm_tls_errors_total"), 0.0);
}

#[test]
fn a_certificate_that_does_not_verify_is_refused_with_the_reason() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &[]);
    // Another CA: the server's issuer is unknown.
    let stranger = Certs::new();
    let err = ControlClient::connect_with(&srv.addr(), WAIT, Some(&stranger.tls()))
        .expect_err("must not trust it");
    assert!(
        matches!(err, ControlError::Untrusted { .. }),
        "an untrusted certificate, not {err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("not trusted") && msg.contains("UnknownIssuer") && msg.contains("--ca"),
        "{msg}"
    );
    // The right CA but a name the certificate does not carry.
    let tls = certs.tls().for_host("chat.example").unwrap();
    let err = ControlClient::connect_with(&srv.addr(), WAIT, Some(&tls)).expect_err("wrong name");
    assert!(err.to_string().contains("NotValidForName"), "{err}");
    // ocm-client --tls with only the system's roots: exit 1, the reason on stderr, and no
    // plain-text fall-back (the server saw no request, so no room).
    let mut child = spawn_piped(
        Path::new(env!("CARGO_BIN_EXE_ocm-client")),
        &["--tls", "--server", &srv.addr(), "--list"],
        false,
    );
    assert_eq!(wait_exit(&mut child, WAIT).and_then(|s| s.code()), Some(1));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("certificate is not trusted") && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    // A plain client is told the server speaks TLS only.
    let err = ControlClient::connect(&srv.addr(), WAIT)
        .and_then(|mut c| c.list())
        .expect_err("plain on a TLS port");
    assert!(matches!(err, ControlError::TlsRequired), "{err:?}");
    assert!(srv.metric("ocm_tls_errors_total") >= 2.0);
    still_serves(&srv, &certs, "after");
}

#[test]
fn plain_tcrp_on_the_tls_port_is_closed_and_the_server_goes_on() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &[]);
    for i in 0..20 {
        let (got, closed) = raw_exchange(srv.tcp, &create_request(&format!("r{i}"), "u"), WAIT);
        assert!(closed, "closed, not left hanging");
        // At most a TLS alert record (content type 21), never a TCRP answer.
        assert!(got.is_empty() || got[0] == 21, "{got:?}");
    }
    assert!(srv.metric("ocm_tls_errors_total") >= 20.0);
    assert_eq!(srv.metric("ocm_rooms"), 0.0, "no request was served");
    still_serves(&srv, &certs, "after-plain");
}

#[test]
fn a_connection_over_the_limit_is_refused_inside_tls() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &["--max-connections", "1"]);
    let mut first = tls_control(&srv, &certs);
    let refused = tls_control(&srv, &certs).create("full", "u", b"", 0);
    assert_eq!(common::status_of(refused), Status::ServerFull);
    assert!(first.list().is_ok(), "the admitted one is served");
}

#[test]
fn a_tls_peer_that_never_reads_is_closed_at_the_output_cap() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &["--max-rooms-per-ip", "0"]);
    let mut c = tls_control(&srv, &certs);
    for i in 0..40 {
        c.create(&format!("a-room-with-a-long-name-{i:03}"), "u", b"", 0)
            .expect("create");
    }
    let mut s = tls_stream(&certs, srv.tcp);
    let mut list = Vec::new();
    Request::List.encode(&mut list).unwrap();
    let burst: Vec<u8> = list.repeat(1000);
    // Each LIST reply is about 1.5 KiB: a few hundred unread ones pass the 256 KiB cap.
    let mut closed = false;
    for _ in 0..200 {
        if s.write_all(&burst).is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "the server closed the connection");
    assert!(srv.metric("ocm_tcp_slow_peers_closed_total") >= 1.0);
    still_serves(&srv, &certs, "after-slow");
}

#[test]
fn a_thousand_stalled_handshakes_do_not_stop_a_new_client() {
    ocm::sys::rlimit::raise_nofile_limit().expect("raise the open-file limit");
    let certs = Certs::new();
    let srv = tls_server(&certs, &["--max-connections-per-ip", "0"]);
    // Half say nothing; half send the start of a ClientHello (a record header announcing
    // 512 bytes, and a few of them).
    let half_hello = [22u8, 3, 1, 2, 0, 1, 0, 1, 252, 3, 3];
    let mut stalled = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut s = TcpStream::connect(srv.tcp).expect("connect");
        if i % 2 == 1 {
            s.write_all(&half_hello).expect("write");
        }
        stalled.push(s);
    }
    still_serves(&srv, &certs, "despite-stalls");
    // They are still open (the request timeout is 10 s), and counted.
    assert!(srv.metric("ocm_tcp_connections") >= 1000.0);
    drop(stalled);
}

#[test]
fn a_stalled_handshake_is_closed_after_the_request_timeout() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &[]);
    let start = Instant::now();
    let mut half = TcpStream::connect(srv.tcp).unwrap();
    half.write_all(&[22u8, 3, 1, 2, 0, 1]).unwrap();
    let mut silent = TcpStream::connect(srv.tcp).unwrap();
    // A finished handshake with no request yet is not timed like a stalled one.
    let idle = tls_control(&srv, &certs);
    for s in [&mut half, &mut silent] {
        let (got, closed) = common::read_until_close(s, Duration::from_secs(15));
        assert!(closed && got.is_empty(), "closed without an answer");
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(14),
        "{took:?}"
    );
    // Past its own request deadline, had the handshake not stopped that clock.
    std::thread::sleep(Duration::from_secs(1));
    let mut idle = idle;
    assert!(idle.list().is_ok(), "the idle TLS client is still served");
}

#[test]
fn random_bytes_on_the_tls_port_do_not_hurt_the_server() {
    let certs = Certs::new();
    let srv = tls_server(&certs, &["--max-connections-per-ip", "0"]);
    let mut rng = rand::rng();
    let end = Instant::now() + Duration::from_secs(2);
    let mut rounds = 0;
    while Instant::now() < end && rounds < 2000 {
        rounds += 1;
        let Ok(mut s) = TcpStream::connect(srv.tcp) else {
            continue;
        };
        let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
        let len = rng.random_range(1..4096);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if rounds % 3 == 0 {
            // A plausible handshake record header, then garbage.
            bytes.splice(0..0, [22u8, 3, 3, (len >> 8) as u8, len as u8]);
        }
        let _ = s.write_all(&bytes);
    }
    assert!(rounds > 10, "the soak ran ({rounds} rounds)");
    still_serves(&srv, &certs, "after-soak");
    assert!(srv.metric("ocm_tls_errors_total") >= 1.0);
}

/// A TLS connection to `addr` checked against `certs`' CA for 127.0.0.1.
fn tls_stream(certs: &Certs, addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp.set_write_timeout(Some(WAIT)).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let conn = ClientConnection::new(certs.client_config(), name).expect("client");
    StreamOwned::new(conn, tcp)
}

#[test]
fn the_web_listener_serves_https_and_wss_only() {
    let certs = Certs::new();
    let flags = certs.flags();
    let args: Vec<&str> = flags.iter().map(String::as_str).collect();
    let srv = WebServer::start(&args);
    let host = srv.host();
    // HTTPS: the page.
    let mut s = tls_stream(&certs, srv.web);
    write!(s, "GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    let mut page = Vec::new();
    let _ = s.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(page.starts_with("HTTP/1.1 200 OK\r\n"), "{page:.80}");
    assert!(page.contains("<html"));
    // WSS: the upgrade from the page's own https origin, then a CREATE on channel 1.
    let mut s = tls_stream(&certs, srv.web);
    let head = ws::upgrade_head(&host, &format!("Origin: https://{host}\r\n"));
    s.write_all(head.as_bytes()).unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") && got.len() < 4096 {
        s.read_exact(&mut byte).expect("upgrade answer");
        got.push(byte[0]);
    }
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.starts_with("HTTP/1.1 101 "), "{answer}");
    let mut unit = vec![1u8];
    Request::Create {
        room: "web-room",
        user: "w",
        password: b"",
        capacity: 0,
        resume_key: None,
    }
    .encode(&mut unit)
    .unwrap();
    s.write_all(&masked_binary(&unit)).unwrap();
    let reply = read_server_frame(&mut s);
    assert_eq!(reply[0], 1, "channel 1");
    let (frame, _) = split_reply(&reply[1..]).unwrap().expect("a TCRP frame");
    assert_eq!(parse_status(&frame), Some(Status::Ok));
    assert!(srv.metric("ocm_tls_handshakes_total") >= 2.0);
    // Plain HTTP gets no page from it.
    let plain = ws::http(
        srv.web,
        format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    );
    assert!(!plain.contains("HTTP/1.1"), "{plain:.80}");
}

/// One masked binary client frame (payload under 126 bytes).
fn masked_binary(payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mask = [7u8, 1, 2, 3];
    let mut f = vec![0x82, 0x80 | payload.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads one unmasked binary server frame; returns its payload.
fn read_server_frame(s: &mut impl Read) -> Vec<u8> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).expect("frame header");
    assert_eq!(h[0], 0x82, "a final binary frame");
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l).unwrap();
            usize::from(u16::from_be_bytes(l))
        }
        127 => panic!("no such large reply"),
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).expect("frame payload");
    payload
}

/// Runs `ocm-server --port 0` with `args`; returns (exit code, stdout, stderr) if it
/// exited within WAIT, else kills it and returns its first stdout line with `None`.
fn start_server(args: &[&str]) -> (Option<i32>, String, String) {
    let mut all = vec!["--port", "0"];
    all.extend(args);
    let mut child = spawn_piped(&common::server_binary(), &all, false);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // EOF (exit) or the listening line.
    let _ = stdout.read_line(&mut line);
    let code = wait_exit(
        &mut child,
        Duration::from_millis(if line.is_empty() {
            WAIT.as_millis() as u64
        } else {
            0
        }),
    )
    .and_then(|s| s.code());
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    (code, line, stderr)
}

#[test]
fn start_up_errors_exit_2_and_start_nothing() {
    let certs = Certs::new();
    let (cert, key) = (certs.path("cert.pem"), certs.path("key.pem"));
    let missing = certs.path("missing.pem");
    let other = certs.path("other-key.pem");
    for (args, needle) in [
        (vec!["--tls-cert", cert.as_str()], "--tls-key is missing"),
        (vec!["--tls-key", key.as_str()], "--tls-cert is missing"),
        (
            vec!["--tls-cert", missing.as_str(), "--tls-key", key.as_str()],
            "--tls-cert",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", missing.as_str()],
            "--tls-key",
        ),
        (
            vec!["--tls-cert", key.as_str(), "--tls-key", key.as_str()],
            "no CERTIFICATE",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", cert.as_str()],
            "no usable private key",
        ),
        (
            vec!["--tls-cert", cert.as_str(), "--tls-key", other.as_str()],
            "does not match",
        ),
    ] {
        let (code, line, stderr) = start_server(&args);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(line.is_empty(), "{args:?} started: {line}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    // And with both files right, the listening line says tls=on.
    let (code, line, _) = start_server(&[
        "--tls-cert",
        cert.as_str(),
        "--tls-key",
        key.as_str(),
        "--web",
        "off",
    ]);
    assert_eq!(code, None, "still running");
    assert!(
        line.starts_with("listening tcp=") && line.trim_end().ends_with(" tls=on"),
        "{line}"
    );
}
