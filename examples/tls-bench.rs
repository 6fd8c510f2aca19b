//! What TLS costs the control plane: run by `scripts/tls-bench.sh`, which starts a plain
//! and a TLS `ocm-server` side by side and passes their addresses and process ids.
//!
//! ```text
//! tls-bench PLAIN_ADDR PLAIN_PID TLS_ADDR TLS_PID CA_FILE [CONNECTIONS [REQUESTS]]
//! ```
//!
//! For each server, in the same run: CONNECTIONS fresh connections, each doing one LIST
//! (connect, handshake for TLS, one request; the client's time per connection and the
//! server's CPU time per connection, from `/proc/PID/stat`), then REQUESTS LISTs one after
//! another on one connection (requests per second, one at a time: latency-bound, as
//! `ocm-client` uses it). The difference between the two servers is what TLS costs.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ocm::client::control::{ControlClient, Tls};

const TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 5 {
        eprintln!(
            "usage: tls-bench PLAIN_ADDR PLAIN_PID TLS_ADDR TLS_PID CA_FILE [CONNECTIONS [REQUESTS]]"
        );
        return ExitCode::from(2);
    }
    let n = |i: usize, default: u32| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
    let (connections, requests) = (n(5, 2000), n(6, 20000));
    let tls = match Tls::new(Some(Path::new(&args[4]))) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tls-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "{connections} connections (each: connect, [handshake,] one LIST), then {requests} LISTs on one connection"
    );
    println!(
        "server   µs/connection (client)   server CPU µs/connection   LIST/s (one connection)"
    );
    for (label, addr, pid, tls) in [
        ("plain", &args[0], &args[1], None),
        ("tls", &args[2], &args[3], Some(&tls)),
    ] {
        match measure(addr, pid, tls, connections, requests) {
            Ok((per_conn, cpu_per_conn, rps)) => {
                println!("{label:<8} {per_conn:>22.1} {cpu_per_conn:>26.1} {rps:>25.0}")
            }
            Err(e) => {
                eprintln!("tls-bench: {label} {addr}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// (client µs per connection, server CPU µs per connection, LISTs per second).
fn measure(
    addr: &str,
    pid: &str,
    tls: Option<&Tls>,
    connections: u32,
    requests: u32,
) -> Result<(f64, f64, f64), String> {
    let cpu0 = cpu_seconds(pid)?;
    let start = Instant::now();
    for _ in 0..connections {
        let mut c = ControlClient::connect_with(addr, TIMEOUT, tls).map_err(|e| e.to_string())?;
        c.list().map_err(|e| e.to_string())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu0;
    let per_conn = elapsed * 1e6 / f64::from(connections);
    let cpu_per_conn = cpu * 1e6 / f64::from(connections);
    let mut c = ControlClient::connect_with(addr, TIMEOUT, tls).map_err(|e| e.to_string())?;
    let start = Instant::now();
    for _ in 0..requests {
        c.list().map_err(|e| e.to_string())?;
    }
    let rps = f64::from(requests) / start.elapsed().as_secs_f64();
    Ok((per_conn, cpu_per_conn, rps))
}

/// User plus system CPU time of process `pid`, from `/proc/PID/stat` (clock ticks of
/// 10 ms on Linux: enough over a few hundred milliseconds of work).
fn cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces, so split after its ')').
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or("odd stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    let ticks = |i: usize| -> Result<f64, String> {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| "odd stat".to_string())
    };
    const TICKS_PER_SECOND: f64 = 100.0;
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}
