use super::*;

fn answer(req: &str, site: &Site) -> (Head, String) {
    let mut out = Vec::new();
    let head = serve(req.as_bytes(), site, &mut out);
    (head, String::from_utf8_lossy(&out).into_owned())
}

fn upgrade_req(extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:9080\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[test]
fn the_page_files_are_served_with_their_types() {
    let site = Site::default();
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/index.html", "text/html; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/protocol.js", "text/javascript; charset=utf-8"),
        ("/session.js", "text/javascript; charset=utf-8"),
        ("/e2e.js", "text/javascript; charset=utf-8"),
        ("/?room=lobby", "text/html; charset=utf-8"),
    ] {
        let (head, text) = answer(&format!("GET {path} HTTP/1.1\r\nHost: h\r\n\r\n"), &site);
        assert_eq!(head, Head::Answered(200), "{path}");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{path}");
        assert!(text.contains(&format!("Content-Type: {ty}\r\n")), "{path}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(!body.is_empty());
        // HEAD: the same head, no body.
        let (head, text) = answer(&format!("HEAD {path} HTTP/1.1\r\nHost: h\r\n\r\n"), &site);
        assert_eq!(head, Head::Answered(200));
        assert!(text.ends_with("\r\n\r\n"));
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
    let (_, index) = answer("GET / HTTP/1.1\r\n\r\n", &site);
    assert!(index.contains("<script type=\"module\" src=\"app.js\">"));
}

#[test]
fn errors_404_405_400_431() {
    let site = Site::default();
    let cases = [
        ("GET /nope HTTP/1.1\r\n\r\n", 404),
        ("GET /ws/ HTTP/1.1\r\n\r\n", 404),
        ("POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        ("DELETE /ws HTTP/1.1\r\n\r\n", 405),
        ("GET /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        ("HEAD /ws HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        ("\x16\x03\x01\x02\x00\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    ];
    for (req, code) in cases {
        let (head, text) = answer(req, &site);
        assert_eq!(head, Head::Answered(code), "{req:?}");
        assert!(text.starts_with(&format!("HTTP/1.1 {code} ")), "{text}");
        assert!(text.contains("Connection: close\r\n"));
    }
    let (_, text) = answer("PUT / HTTP/1.1\r\n\r\n", &site);
    assert!(text.contains("Allow: GET, HEAD\r\n"));
    // A head that never ends within MAX_HEAD.
    let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
    assert_eq!(answer(&long, &site).0, Head::Answered(431));
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X{i}: y\r\n"))
        .collect();
    assert_eq!(
        answer(&format!("GET / HTTP/1.1\r\n{many}\r\n"), &site).0,
        Head::Answered(431)
    );
    // Every strict prefix of a request is incomplete.
    let req = upgrade_req("");
    for cut in 0..req.len() {
        assert_eq!(answer(&req[..cut], &site).0, Head::Incomplete, "cut {cut}");
    }
}

#[test]
fn a_valid_upgrade_is_switched_with_the_rfc_accept_key() {
    let site = Site::default();
    let req = upgrade_req("");
    let (head, text) = answer(&req, &site);
    assert_eq!(head, Head::Upgraded(req.len()));
    assert_eq!(
        text,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
    );
    // Frames right behind the head are left for the session.
    let mut out = Vec::new();
    let pipelined = format!("{req}\u{82}");
    assert_eq!(
        serve(pipelined.as_bytes(), &site, &mut out),
        Head::Upgraded(req.len())
    );
}

#[test]
fn bad_upgrades_get_400_or_426() {
    let site = Site::default();
    let base = upgrade_req("");
    let cases = [
        (
            base.replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
            426,
        ),
        (base.replace("Sec-WebSocket-Version: 13\r\n", ""), 400),
        (base.replace("Upgrade: websocket", "Upgrade: h2c"), 400),
        (base.replace("keep-alive, Upgrade", "keep-alive"), 400),
        (base.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
        (base.replace("dGhlIHNhbXBsZSBub25jZQ==", "AAAA"), 400),
        (base.replace("Host: 127.0.0.1:9080\r\n", ""), 400),
        (base.replace("HTTP/1.1", "HTTP/1.0"), 400),
    ];
    for (req, code) in cases {
        let (head, text) = answer(&req, &site);
        assert_eq!(head, Head::Answered(code), "{req:?}");
        if code == 426 {
            assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        }
    }
}

#[test]
fn origins_must_match_the_host_or_be_listed() {
    let none = Site::default();
    let listed = Site::new(["HTTPS://Chat.Example".to_string(), "null".to_string()]);
    let cases: &[(&str, &str, bool, bool)] = &[
        // origin, host, allowed by default, allowed with the list
        ("http://127.0.0.1:9080", "127.0.0.1:9080", true, true),
        ("http://LOCALHOST:9080", "localhost:9080", true, true),
        ("http://localhost", "localhost:80", true, true),
        ("http://localhost:80", "localhost", true, true),
        ("https://localhost", "localhost:443", true, true),
        ("http://[::1]:9080", "[::1]:9080", true, true),
        ("http://[::1]:9081", "[::1]:9080", false, false),
        ("http://127.0.0.1:9081", "127.0.0.1:9080", false, false),
        ("http://evil.example", "127.0.0.1:9080", false, false),
        ("https://127.0.0.1:9080", "127.0.0.1:9080", true, true),
        ("null", "127.0.0.1:9080", false, true),
        ("https://chat.example", "127.0.0.1:9080", false, true),
        ("https://chat.example:8443", "127.0.0.1:9080", false, false),
        ("file://", "127.0.0.1:9080", false, false),
        ("http://127.0.0.1:9080/path", "127.0.0.1:9080", false, false),
        ("http://user@127.0.0.1:9080", "127.0.0.1:9080", false, false),
        ("http://127.0.0.1:x", "127.0.0.1:9080", false, false),
    ];
    for &(origin, host, plain, with_list) in cases {
        assert_eq!(
            origin_allowed(origin, host, &none),
            plain,
            "{origin} at {host}"
        );
        assert_eq!(
            origin_allowed(origin, host, &listed),
            with_list,
            "{origin} at {host}, listed"
        );
    }
    let (head, text) = answer(&upgrade_req("Origin: http://evil.example\r\n"), &none);
    assert_eq!(head, Head::Answered(403));
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"));
    let (head, _) = answer(&upgrade_req("Origin: http://127.0.0.1:9080\r\n"), &none);
    assert!(matches!(head, Head::Upgraded(_)));
}

#[test]
fn the_refusal_is_a_503() {
    let text = String::from_utf8(refusal()).unwrap();
    assert!(text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
}
