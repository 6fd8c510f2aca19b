//! Metrics in the Prometheus text format, and the smallest HTTP that serves them.
//!
//! Sans-IO like the rest of the core: [`render`] writes the exposition text from a
//! [`Snapshot`], [`parse_request`] reads an HTTP request head from bytes, and [`respond`]
//! writes a whole response. The connection around them is [`super::conn::http`]: the same
//! [`Conn`](super::conn::Conn) as TCRP (request-size cap, timeouts, close after the reply),
//! with the event loop owning the socket.
//!
//! The format is written by hand: it is a few lines of stable text per metric, and our
//! counters are plain integers owned by the loop, so a registry crate would only add
//! indirection.

use std::fmt::Write;

use super::counters::{Counters, DropReason};
use super::web::WebStats;
use crate::protocol::{Operation, Status};

/// Largest HTTP request head accepted; longer ones get 431 and a close.
pub const MAX_HTTP_REQUEST: usize = 2048;

/// Everything a scrape reports, borrowed from the loop at scrape time.
#[derive(Debug, Clone)]
pub struct Snapshot<'a> {
    /// The relay's counters.
    pub counters: &'a Counters,
    /// Rooms open.
    pub rooms: usize,
    /// Members, bound or not.
    pub members: usize,
    /// Members that have bound an address.
    pub bound: usize,
    /// Open TCRP connections (those that count against the connection limits).
    pub connections: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections refused with SERVER_FULL (or closed unanswered) since start.
    pub refused: u64,
    /// TCP peers closed for not reading their replies.
    pub slow_peers: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS connections closed for breaking TLS.
    pub tls_errors: u64,
    /// Event-loop wake-ups.
    pub wakeups: u64,
    /// Seconds the loop spent working (not waiting in poll).
    pub busy_seconds: f64,
    /// The loop's recent busy share, 0 to 1 (what sets the hold).
    pub busy_share: f64,
    /// How long a busy room may hold its outbox now, in seconds (adaptive coalescing).
    pub hold_seconds: f64,
    /// The web listener's counts.
    pub web: WebStats,
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP ocm_{name} {help}");
    let _ = writeln!(out, "# TYPE ocm_{name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "ocm_{name} {value}");
    } else {
        let _ = writeln!(out, "ocm_{name}{{{labels}}} {value}");
    }
}

fn one(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    family(out, name, kind, help);
    sample(out, name, "", value);
}

/// Appends the exposition text for `s` to `out`.
pub fn render(s: &Snapshot<'_>, out: &mut String) {
    render_connections(s, out);
    render_requests(s.counters, out);
    render_data_plane(s.counters, out);
    render_recovery(s.counters, out);
    render_lifecycle(s, out);
    render_web(&s.web, out);
    render_tls(s, out);
}

/// The TLS listeners (PROTOCOL.md §6); zero when TLS is off.
fn render_tls(s: &Snapshot<'_>, out: &mut String) {
    one(
        out,
        "tls_handshakes_total",
        "counter",
        "TLS handshakes completed on the TCRP and web listeners.",
        s.tls_handshakes,
    );
    one(
        out,
        "tls_errors_total",
        "counter",
        "TLS connections closed for breaking TLS (not a ClientHello, a bad record, a failed handshake).",
        s.tls_errors,
    );
}

/// WebSocket sessions and their traffic (PROTOCOL.md §6).
fn render_web(w: &WebStats, out: &mut String) {
    one(
        out,
        "web_sessions",
        "gauge",
        "Open WebSocket sessions.",
        w.sessions_open(),
    );
    one(
        out,
        "web_sessions_opened_total",
        "counter",
        "WebSocket sessions opened (upgrades answered 101).",
        w.sessions_opened,
    );
    family(
        out,
        "web_messages_total",
        "counter",
        "WebSocket messages (units), by direction.",
    );
    sample(out, "web_messages_total", "direction=\"in\"", w.messages_in);
    sample(
        out,
        "web_messages_total",
        "direction=\"out\"",
        w.messages_out,
    );
    one(
        out,
        "web_datagrams_dropped_total",
        "counter",
        "Datagrams for a WebSocket session that its full output buffer (256 KiB) could not take.",
        w.datagrams_dropped,
    );
}

/// (v1.1) NACK answers, SYNC, tail notices, SEND retransmissions, RESUME and history.
fn render_recovery(c: &Counters, out: &mut String) {
    let counters: [(&str, &str, u64); 8] = [
        ("nacks_total", "NACKs accepted.", c.nacks),
        (
            "repair_events_total",
            "Events resent in NACK answers.",
            c.repair_events,
        ),
        (
            "repair_bytes_total",
            "Bytes of events resent in NACK answers.",
            c.repair_bytes,
        ),
        (
            "repair_dropped_total",
            "Held events of NACK ranges not resent: the repair bucket was empty.",
            c.repair_dropped,
        ),
        ("gone_total", "GONE events sent.", c.gone),
        ("syncs_total", "SYNCs accepted and answered.", c.syncs),
        ("tail_notices_total", "Tail notices sent.", c.tail_notices),
        (
            "duplicate_sends_total",
            "SENDs of an already relayed ClientSeq (accepted, not relayed).",
            c.duplicate_sends,
        ),
    ];
    for (name, help, value) in counters {
        one(out, name, "counter", help, value);
    }
    family(
        out,
        "resumes_total",
        "counter",
        "RESUME requests answered, by status.",
    );
    for st in [
        Status::Ok,
        Status::InvalidRequest,
        Status::TooManyRequests,
        Status::RoomNotFound,
        Status::Unauthorized,
        Status::ServerFull,
    ] {
        let n = c.requests[Operation::Resume as usize - 1][st as usize];
        sample(
            out,
            "resumes_total",
            &format!("status=\"{}\"", st.name()),
            n,
        );
    }
    one(
        out,
        "history_events",
        "gauge",
        "Events held in all rooms' histories.",
        c.history_events,
    );
    one(
        out,
        "history_bytes",
        "gauge",
        "Event bytes held in all rooms' histories.",
        c.history_bytes,
    );
}

/// Rooms, members and TCP connections.
fn render_connections(s: &Snapshot<'_>, out: &mut String) {
    one(out, "rooms", "gauge", "Rooms open.", s.rooms);
    family(
        out,
        "members",
        "gauge",
        "Members, by whether they have bound an address.",
    );
    sample(out, "members", "state=\"bound\"", s.bound);
    sample(
        out,
        "members",
        "state=\"unbound\"",
        s.members - s.bound.min(s.members),
    );
    one(
        out,
        "tcp_connections",
        "gauge",
        "Open TCRP connections.",
        s.connections,
    );
    one(
        out,
        "tcp_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        s.accepted,
    );
    one(
        out,
        "tcp_connections_refused_total",
        "counter",
        "TCP connections refused over a limit.",
        s.refused,
    );
    one(
        out,
        "tcp_slow_peers_closed_total",
        "counter",
        "TCP peers closed for not reading their replies.",
        s.slow_peers,
    );
}

/// TCRP requests by operation and status, and malformed frames.
fn render_requests(c: &Counters, out: &mut String) {
    family(
        out,
        "requests_total",
        "counter",
        "TCRP requests answered, by operation and status.",
    );
    for op in Operation::ALL {
        for st in Status::ALL {
            let n = c.requests[op as usize - 1][st as usize];
            if n > 0 {
                let labels = format!("op=\"{}\",status=\"{}\"", op.name(), st.name());
                sample(out, "requests_total", &labels, n);
            }
        }
    }
    one(
        out,
        "malformed_frames_total",
        "counter",
        "Malformed TCRP frames (answered, then closed).",
        c.malformed_frames,
    );
}

/// Datagrams in and out, drops, messages and events.
fn render_data_plane(c: &Counters, out: &mut String) {
    one(
        out,
        "datagrams_received_total",
        "counter",
        "Datagrams received on the data plane.",
        c.datagrams_in,
    );
    family(
        out,
        "datagrams_dropped_total",
        "counter",
        "Received datagrams dropped, by reason.",
    );
    for r in DropReason::ALL {
        sample(
            out,
            "datagrams_dropped_total",
            &format!("reason=\"{}\"", r.name()),
            c.drops_for(r),
        );
    }
    one(
        out,
        "heartbeats_total",
        "counter",
        "Heartbeats accepted.",
        c.heartbeats,
    );
    one(
        out,
        "messages_total",
        "counter",
        "Chat messages accepted and relayed.",
        c.messages,
    );
    one(
        out,
        "rate_limited_total",
        "counter",
        "Chat messages dropped by the rate limit.",
        c.drops_for(DropReason::RateLimited),
    );
    one(
        out,
        "rate_limit_notices_total",
        "counter",
        "RATE_LIMITED notices sent.",
        c.rate_notices,
    );
    one(
        out,
        "events_total",
        "counter",
        "Events appended to room outboxes.",
        c.events,
    );
    one(
        out,
        "datagrams_sent_total",
        "counter",
        "Server datagrams the socket accepted.",
        c.datagrams_out,
    );
    one(
        out,
        "deliveries_total",
        "counter",
        "Events delivered (events times receivers).",
        c.deliveries,
    );
    one(
        out,
        "send_drops_total",
        "counter",
        "Server datagrams dropped because the socket refused them.",
        c.send_drops,
    );
}

/// Rooms and members over time, and the loop's own work.
fn render_lifecycle(s: &Snapshot<'_>, out: &mut String) {
    let c = s.counters;
    one(
        out,
        "rooms_created_total",
        "counter",
        "Rooms created.",
        c.rooms_created,
    );
    one(
        out,
        "rooms_closed_total",
        "counter",
        "Rooms closed.",
        c.rooms_closed,
    );
    one(
        out,
        "members_bound_total",
        "counter",
        "Members that bound an address.",
        c.members_bound,
    );
    one(
        out,
        "members_left_total",
        "counter",
        "Members that left with LEAVE.",
        c.members_left,
    );
    one(
        out,
        "members_timed_out_total",
        "counter",
        "Members dropped for silence.",
        c.members_timed_out,
    );
    one(
        out,
        "loop_wakeups_total",
        "counter",
        "Event-loop wake-ups.",
        s.wakeups,
    );
    one(
        out,
        "loop_busy_seconds_total",
        "counter",
        "Seconds the event loop spent working.",
        format!("{:.6}", s.busy_seconds),
    );
    one(
        out,
        "loop_busy_share",
        "gauge",
        "The event loop's recent busy share (0 to 1), which sets the coalescing hold.",
        format!("{:.3}", s.busy_share),
    );
    one(
        out,
        "coalesce_hold_seconds",
        "gauge",
        "How long a busy room may now hold its outbox (adaptive coalescing).",
        format!("{:.6}", s.hold_seconds),
    );
}

/// What an HTTP request asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRequest {
    /// `GET /metrics`.
    Metrics,
    /// A GET of another path.
    NotFound,
    /// Another method.
    MethodNotAllowed,
    /// Not an HTTP/1 request line, or a head over [`MAX_HTTP_REQUEST`].
    Bad,
}

/// Reads a request head. `None`: the head is not complete yet (and not over the cap).
pub fn parse_request(buf: &[u8]) -> Option<HttpRequest> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (buf.len() >= MAX_HTTP_REQUEST).then_some(HttpRequest::Bad);
    };
    if end > MAX_HTTP_REQUEST {
        return Some(HttpRequest::Bad);
    }
    let line_end = buf.iter().position(|&b| b == b'\r').unwrap_or(end);
    let mut parts = buf[..line_end].split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(HttpRequest::Bad);
    };
    if !version.starts_with(b"HTTP/1.") {
        return Some(HttpRequest::Bad);
    }
    if method != b"GET" && method != b"HEAD" {
        return Some(HttpRequest::MethodNotAllowed);
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    Some(if path == b"/metrics" {
        HttpRequest::Metrics
    } else {
        HttpRequest::NotFound
    })
}

/// Appends the whole response to `req` to `out`; `body` is the exposition text.
pub fn respond(req: HttpRequest, body: &str, out: &mut Vec<u8>) {
    let (status, ctype, body) = match req {
        HttpRequest::Metrics => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", body),
        HttpRequest::NotFound => ("404 Not Found", "text/plain", "try /metrics\n"),
        HttpRequest::MethodNotAllowed => ("405 Method Not Allowed", "text/plain", "GET only\n"),
        HttpRequest::Bad => ("400 Bad Request", "text/plain", "bad request\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(body.as_bytes());
}

#[cfg(test)]
mod tests;
