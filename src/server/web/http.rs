//! The web listener's HTTP/1.1, sans-IO: one request head in, one answer out. The page's
//! files (embedded at build time), the WebSocket upgrade of `/ws` with its checks
//! (PROTOCOL.md §6), and the error answers. The head is parsed by `httparse`; every answer
//! but the upgrade ends the connection (`Connection: close`), which keeps this to one
//! request per connection and costs the page five short connections at load.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Largest request head; a longer one is answered 431 and the connection closed.
pub const MAX_HEAD: usize = 8192;
/// Headers read from one request; more is answered 431 (a browser sends about 15).
const MAX_HEADERS: usize = 48;
/// The GUID of RFC 6455 §1.3, appended to the key for `Sec-WebSocket-Accept`.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// The port a `Host` without one means: the listener speaks plain HTTP.
const HTTP_PORT: u16 = 80;
/// What the page may load and connect to: itself only (the favicon is a `data:` URL).
const CSP: &str = "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; \
                   base-uri 'none'; frame-ancestors 'none'";

/// One file of the page.
#[derive(Debug)]
pub struct Asset {
    /// Where the page asks for it.
    pub path: &'static str,
    /// Its `Content-Type` (module scripts need a JavaScript type or browsers refuse them).
    pub content_type: &'static str,
    /// The file, embedded at build time.
    pub body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $type:literal) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
        }
    };
}

/// The page's files, as web/README.md lists them.
pub static ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/index.html", "index.html", "text/html; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!(
        "/protocol.js",
        "protocol.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "/session.js",
        "session.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("/e2e.js", "e2e.js", "text/javascript; charset=utf-8"),
];

/// The path of the WebSocket.
pub const WS_PATH: &str = "/ws";

/// The web listener's settings that answering needs.
#[derive(Debug, Clone, Default)]
pub struct Site {
    /// Origins allowed besides the page's own (`--web-origin`), in lower case.
    pub origins: Vec<String>,
}

impl Site {
    /// A site that also allows `origins` (compared without regard to case).
    pub fn new(origins: impl IntoIterator<Item = String>) -> Site {
        Site {
            origins: origins
                .into_iter()
                .map(|o| o.to_ascii_lowercase())
                .collect(),
        }
    }
}

/// What one request head came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// The head is not whole yet.
    Incomplete,
    /// Upgraded to a WebSocket session; the head was this many bytes (frames may follow).
    Upgraded(usize),
    /// Answered with this status; the connection closes once the answer is out.
    Answered(u16),
}

/// Answers the request head at the start of `input` into `out`.
pub fn serve(input: &[u8], site: &Site, out: &mut Vec<u8>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(input) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if input.len() < MAX_HEAD => return Head::Incomplete,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            return error(out, 431, "Request Header Fields Too Large", &[]);
        }
        Err(_) => return error(out, 400, "Bad Request", &[]),
    };
    if len > MAX_HEAD {
        return error(out, 431, "Request Header Fields Too Large", &[]);
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return error(out, 400, "Bad Request", &[]);
    };
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return error(out, 405, "Method Not Allowed", &[("Allow", "GET, HEAD")]),
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    if path == WS_PATH {
        if head_only {
            return error(out, 400, "Bad Request", &[]);
        }
        return upgrade(&req, site, out).map_or_else(
            |(code, reason, extra)| error(out, code, reason, extra),
            |()| Head::Upgraded(len),
        );
    }
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => {
            respond(
                out,
                200,
                "OK",
                asset.content_type,
                asset.body,
                head_only,
                &[],
            );
            Head::Answered(200)
        }
        None => error(out, 404, "Not Found", &[]),
    }
}

/// An error answer: status, reason phrase, extra headers.
type Refusal = (u16, &'static str, &'static [(&'static str, &'static str)]);

/// Checks a `GET /ws` and writes the 101 answer.
fn upgrade(req: &httparse::Request<'_, '_>, site: &Site, out: &mut Vec<u8>) -> Result<(), Refusal> {
    const BAD: Refusal = (400, "Bad Request", &[]);
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if req.version != Some(1) || !has_token("Upgrade", "websocket") {
        return Err(BAD);
    }
    if !has_token("Connection", "upgrade") {
        return Err(BAD);
    }
    match header("Sec-WebSocket-Version") {
        None => return Err(BAD),
        Some(v) if v.trim() != "13" => {
            return Err((426, "Upgrade Required", &[("Sec-WebSocket-Version", "13")]));
        }
        Some(_) => {}
    }
    let key = header("Sec-WebSocket-Key").map(str::trim).ok_or(BAD)?;
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(BAD);
    }
    let host = header("Host").ok_or(BAD)?;
    if let Some(origin) = header("Origin") {
        if !origin_allowed(origin.trim(), host.trim(), site) {
            return Err((403, "Forbidden", &[]));
        }
    }
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept_key(key).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    Ok(())
}

/// `Sec-WebSocket-Accept` for `key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.finalize())
}

/// Whether a page from `origin` may open a session on the server it reached as `host`:
/// the same host and port (a missing port is the scheme's default), or a listed origin.
/// `null` (a sandboxed or `file:` page) matches no host.
pub fn origin_allowed(origin: &str, host: &str, site: &Site) -> bool {
    if site.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let default = if scheme.eq_ignore_ascii_case("http") {
        80
    } else if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        return false;
    };
    match (
        authority_parts(authority, default),
        authority_parts(host, HTTP_PORT),
    ) {
        (Some((oh, op)), Some((hh, hp))) => oh.eq_ignore_ascii_case(hh) && op == hp,
        _ => false,
    }
}

/// Splits `host[:port]` (IPv6 in brackets) into host and port, `default` when there is no
/// port. `None` when it is not of that form.
fn authority_parts(s: &str, default: u16) -> Option<(&str, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        match after {
            "" => (host, None),
            p => (host, Some(p.strip_prefix(':')?)),
        }
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        return None;
    }
    let port = match port {
        None => default,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p.parse().ok()?,
        Some(_) => return None,
    };
    Some((host, port))
}

fn error(out: &mut Vec<u8>, code: u16, reason: &str, extra: &[(&str, &str)]) -> Head {
    let body = format!("{code} {reason}\n");
    respond(
        out,
        code,
        reason,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        false,
        extra,
    );
    Head::Answered(code)
}

/// Writes a whole answer that ends the connection.
fn respond(
    out: &mut Vec<u8>,
    code: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
    extra: &[(&str, &str)],
) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: {CSP}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

/// The answer to a connection over a limit.
pub fn refusal() -> Vec<u8> {
    let mut out = Vec::new();
    error(&mut out, 503, "Service Unavailable", &[]);
    out
}

#[cfg(test)]
mod tests;
