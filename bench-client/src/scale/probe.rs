//! What `bench-client scale` reads of the server from outside: its resident memory and CPU
//! time from `/proc/PID` (`--server-pid`), and its gauges from the metrics endpoint
//! (`--metrics`, the server's own `--metrics ADDR:PORT`). The parsers are pure functions.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

/// How long a metrics scrape may take (connect, and each read or write).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a metrics page read: ours is a few KiB; a larger answer is not ours.
const MAX_SCRAPE: u64 = 1 << 20;

/// The server's gauges this mode looks at.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// `ocm_history_bytes`: event bytes held in all rooms' histories.
    pub history_bytes: u64,
    /// `ocm_history_events`: events held in all histories.
    pub history_events: u64,
    /// `ocm_rooms`: rooms open.
    pub rooms: u64,
    /// `ocm_members{state="bound"}`: members with an address.
    pub bound: u64,
    /// `ocm_loop_busy_seconds_total`, in ms: wall time the server's loop spent working
    /// (not waiting in poll), on a core or waiting for one.
    pub busy_ms: u64,
}

/// One look at the server: each part `None` where it could not be read.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Resident memory, bytes (VmRSS).
    pub rss_bytes: Option<u64>,
    /// CPU time used so far (user, system), seconds.
    pub cpu_s: Option<(f64, f64)>,
    /// The metrics endpoint's gauges.
    pub gauges: Option<Gauges>,
}

/// Where to look.
#[derive(Debug, Clone, Default)]
pub struct Probe {
    /// The server's process id.
    pub pid: Option<u32>,
    /// The server's metrics endpoint, host:port.
    pub metrics: Option<String>,
}

impl Probe {
    /// Reads everything it can now.
    pub fn sample(&self) -> Sample {
        Sample {
            rss_bytes: self.pid.and_then(rss_bytes),
            cpu_s: self.pid.and_then(cpu_seconds),
            gauges: self.metrics.as_deref().and_then(|a| scrape(a).ok()),
        }
    }
}

/// VmRSS of process `pid`, bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&text)
}

/// The `VmRSS:  1234 kB` line of `/proc/PID/status`, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let n: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") => Some(n * 1024),
        _ => None,
    }
}

/// User and system CPU seconds of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (u, s) = parse_stat_ticks(&text)?;
    let hz = clock_ticks_per_second();
    Some((u as f64 / hz, s as f64 / hz))
}

/// utime and stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock ticks. The
/// command name (field 2) is in parentheses and may hold spaces and parentheses, so the
/// fields are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let u = fields.next()?.parse().ok()?;
    let s = fields.next()?.parse().ok()?;
    Some((u, s))
}

/// `sysconf(_SC_CLK_TCK)`, the unit of `/proc/PID/stat` times (100 where unknown).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a configuration value; it has no memory preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// `RcvbufErrors` of the machine's UDP (`/proc/net/snmp`): datagrams dropped because a
/// socket's receive queue was full, any socket.
pub fn udp_rcvbuf_errors() -> Option<u64> {
    parse_rcvbuf_errors(&std::fs::read_to_string("/proc/net/snmp").ok()?)
}

/// `RcvbufErrors` from `/proc/net/snmp` text: a `Udp:` line of names, then one of values.
pub fn parse_rcvbuf_errors(snmp: &str) -> Option<u64> {
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// GETs `/metrics` from `addr` (host:port) and reads the gauges.
pub fn scrape(addr: &str) -> std::io::Result<Gauges> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .map_err(|_| std::io::Error::other(format!("not host:port: {addr}")))?;
    let mut s = TcpStream::connect_timeout(&sock, SCRAPE_TIMEOUT)?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    s.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ocm\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.take(MAX_SCRAPE).read_to_string(&mut body)?;
    parse_gauges(&body).ok_or_else(|| std::io::Error::other("no ocm_history_bytes in the answer"))
}

/// The gauges in a Prometheus text page; `None` without `ocm_history_bytes`.
pub fn parse_gauges(text: &str) -> Option<Gauges> {
    let mut g = Gauges::default();
    let mut seen = false;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let v = v.max(0.0) as u64;
        match name {
            "ocm_history_bytes" => {
                g.history_bytes = v;
                seen = true;
            }
            "ocm_history_events" => g.history_events = v,
            "ocm_rooms" => g.rooms = v,
            "ocm_members{state=\"bound\"}" => g.bound = v,
            "ocm_loop_busy_seconds_total" => {
                g.busy_ms = (value.trim().parse::<f64>().unwrap_or(0.0) * 1e3) as u64
            }
            _ => {}
        }
    }
    seen.then_some(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tocm-server\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(5120 * 1024));
        assert_eq!(parse_vm_rss("Name: x\n"), None);
        assert_eq!(parse_vm_rss("VmRSS: 12 MB\n"), None);
    }

    #[test]
    fn stat_ticks_after_an_awkward_name() {
        let stat = "4242 (ocm (a) b) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 75 0 0 20 0 1 0";
        assert_eq!(parse_stat_ticks(stat), Some((250, 75)));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        let (u, s) = cpu_seconds(me).unwrap();
        assert!(u >= 0.0 && s >= 0.0);
        assert_eq!(rss_bytes(u32::MAX), None);
    }

    #[test]
    fn rcvbuf_errors_from_snmp() {
        let snmp = "Ip: Forwarding\nIp: 1\nUdp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\nUdp: 10 2 3 11 7 0\nUdpLite: InDatagrams RcvbufErrors\nUdpLite: 0 99\n";
        assert_eq!(parse_rcvbuf_errors(snmp), Some(7));
        assert_eq!(parse_rcvbuf_errors("Udp: InDatagrams\nUdp: 1\n"), None);
        assert!(udp_rcvbuf_errors().is_some());
    }

    #[test]
    fn gauges_from_a_page() {
        let page = "HTTP/1.1 200 OK\r\n\r\n# HELP ocm_rooms Rooms open.\n# TYPE ocm_rooms gauge\nocm_rooms 10000\nocm_members{state=\"bound\"} 99999\nocm_members{state=\"unbound\"} 1\nocm_history_events 4000\nocm_history_bytes 4194000\nocm_loop_busy_seconds_total 1.5\n";
        assert_eq!(
            parse_gauges(page),
            Some(Gauges {
                history_bytes: 4_194_000,
                history_events: 4000,
                rooms: 10_000,
                bound: 99_999,
                busy_ms: 1500,
            })
        );
        assert_eq!(parse_gauges("ocm_rooms 3\n"), None);
    }
}
