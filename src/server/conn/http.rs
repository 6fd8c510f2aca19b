//! The metrics endpoint's connection: one HTTP request, one answer, then close. It runs on
//! the same [`Conn`](super::Conn) as TCRP (same timers, caps and closing), so only the
//! answering is here; the text itself comes from [`crate::server::metrics`].

use std::time::Instant;

use super::{Served, Service};
use crate::server::metrics::{self, HttpRequest, MAX_HTTP_REQUEST, Snapshot};

/// A metrics connection's input buffer: one request head at most.
pub const INPUT_CAP: usize = MAX_HTTP_REQUEST;

/// The answer to a scrape over the metrics connection limit.
pub fn refusal() -> Vec<u8> {
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
}

/// Answers a scrape with `snapshot` once its request head is whole.
pub struct Scrape<'a> {
    /// What the scrape reports.
    pub snapshot: Snapshot<'a>,
}

impl Service for Scrape<'_> {
    fn serve(&mut self, _now: Instant, input: &[u8], out: &mut Vec<u8>) -> Served {
        let Some(req) = metrics::parse_request(input) else {
            return Served::Incomplete;
        };
        let mut body = String::new();
        if req == HttpRequest::Metrics {
            metrics::render(&self.snapshot, &mut body);
        }
        metrics::respond(req, &body, out);
        Served::Last
    }
}
