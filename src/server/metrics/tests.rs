//! Tests of the metrics text and the minimal HTTP.

use super::*;

#[test]
fn requests_are_read_only_when_whole() {
    assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
    assert_eq!(
        parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
        Some(HttpRequest::Metrics)
    );
    assert_eq!(
        parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
        Some(HttpRequest::Metrics)
    );
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\n\r\n"),
        Some(HttpRequest::NotFound)
    );
    assert_eq!(
        parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
        Some(HttpRequest::MethodNotAllowed)
    );
    assert_eq!(
        parse_request(b"\x16\x03\x01garbage\r\n\r\n"),
        Some(HttpRequest::Bad)
    );
    assert_eq!(
        parse_request(&[b'a'; MAX_HTTP_REQUEST]),
        Some(HttpRequest::Bad)
    );
}

#[test]
fn exposition_names_every_family_with_the_prefix() {
    let mut c = Counters::default();
    c.request(Operation::Create, Status::Ok);
    c.drop(DropReason::UnknownToken);
    c.drop(DropReason::UnknownToken);
    let s = Snapshot {
        counters: &c,
        rooms: 1,
        members: 3,
        bound: 2,
        connections: 4,
        accepted: 5,
        refused: 0,
        slow_peers: 0,
        tls_handshakes: 0,
        tls_errors: 0,
        wakeups: 9,
        busy_seconds: 0.25,
        busy_share: 0.5,
        hold_seconds: 0.0002,
        web: WebStats::default(),
    };
    let mut out = String::new();
    render(&s, &mut out);
    assert!(out.contains("ocm_requests_total{op=\"create\",status=\"ok\"} 1\n"));
    assert!(out.contains("ocm_datagrams_dropped_total{reason=\"unknown_token\"} 2\n"));
    assert!(out.contains("ocm_members{state=\"unbound\"} 1\n"));
    assert!(out.contains("ocm_loop_busy_seconds_total 0.250000\n"));
    assert!(out.contains("ocm_loop_busy_share 0.500\n"));
    assert!(out.contains("ocm_coalesce_hold_seconds 0.000200\n"));
    assert!(out.contains("ocm_resumes_total{status=\"unauthorized\"} 0\n"));
    assert!(out.contains("ocm_history_bytes 0\n"));
    assert!(out.contains("ocm_nacks_total 0\n"));
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("ocm_"), "{line}");
    }
    let mut resp = Vec::new();
    respond(HttpRequest::Metrics, &out, &mut resp);
    let text = String::from_utf8(resp).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(text.contains(&format!("Content-Length: {}\r\n", out.len())));
}
