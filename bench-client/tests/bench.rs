//! Runs `bench-client` against a real `ocm-server` on loopback and checks that its figures
//! are self-consistent.
//!
//! The server is started by the same helper as the `ocm` package's tests
//! (`tests/common/mod.rs`, included by path: a test crate of one package cannot depend on
//! another package's test files, and one source file compiled into both keeps one spawner).
//! The server binary belongs to the other package, so Cargo gives this test no
//! `CARGO_BIN_EXE_ocm-server`; [`common::server_binary`] says where it is found instead.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{ServerProc, run_to_end, unused_tcp_addr};

/// The whole test may take this long before it is declared hung.
const TIMEOUT: Duration = Duration::from_secs(60);

/// Runs bench-client with `args`, killing it if it outlives [`TIMEOUT`].
fn bench(args: &[&str]) -> (bool, String, String) {
    run_to_end(Path::new(env!("CARGO_BIN_EXE_bench-client")), args, TIMEOUT)
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// Runs a small bench (20 users in 4 rooms, 200 msg/s, 2 s after 1 s of warmup) with
/// `extra` flags against a fresh server; returns its table, progress lines and JSON.
fn small_bench(extra: &[&str]) -> (String, String, serde_json::Value, String) {
    let server = ServerProc::start(&["--msg-rate", "0", "--max-rooms-per-ip", "0"]);
    let server_addr = server.addr();
    let dir = std::env::temp_dir().join(format!(
        "bench-client-test-{}-{}",
        std::process::id(),
        extra.join("_").replace(['-', '.'], "")
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("out.json");
    let json_arg = json_path.to_str().expect("utf-8 temp path");
    let mut args = vec![
        "--server",
        &server_addr,
        "--users",
        "20",
        "--rooms",
        "4",
        "--rate",
        "200",
        "--duration",
        "2",
        "--warmup",
        "1",
        "--json",
        json_arg,
    ];
    args.extend_from_slice(extra);
    let (ok, stdout, stderr) = bench(&args);
    assert!(
        ok,
        "bench-client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let text = std::fs::read_to_string(&json_path).expect("the --json file");
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&text).expect("the JSON parses");
    (stdout, stderr, v, text)
}

/// What every clean small run shows, whatever the path: the table, the progress lines,
/// and figures that agree with each other.
fn check_clean_small_run(stdout: &str, stderr: &str, v: &serde_json::Value, text: &str) {
    // The table is there, with every percentile line.
    for needle in [
        "Deliveries",
        "Throughput",
        "50.000%",
        "99.990%",
        "100.000%",
        "Bench CPU",
    ] {
        assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
    }
    // One progress line a second.
    assert!(stderr.contains("] sent "), "no progress lines in\n{stderr}");

    let sent = u(v, "sent");
    let room = u(v, "room_size_max");
    assert_eq!(u(v, "users"), 20);
    assert_eq!(u(v, "rooms"), 4);
    assert_eq!(room, 5);
    assert_eq!(u(v, "room_size_min"), 5);
    // 200 msg/s for 2 s.
    assert!((395..=405).contains(&sent), "sent {sent}");
    assert!(u(v, "sent_with_warmup") > sent);
    assert_eq!(
        u(v, "expected"),
        sent * room,
        "expected = messages × room size"
    );
    // Nothing is lost, duplicated or reordered on an idle loopback.
    assert_eq!(u(v, "received"), u(v, "expected"), "{text}");
    assert_eq!(u(v, "lost"), 0);
    assert_eq!(f(v, "loss_pct"), 0.0);
    assert_eq!(f(v, "delivered_pct"), 100.0);
    for zero in [
        "duplicates",
        "out_of_order",
        "send_failed",
        "unsent",
        "foreign",
        "malformed",
        "timed_out",
        "room_closed",
        "rate_limited",
        "lost_datagrams",
        "lost_bytes",
        "recovered",
        "unrecovered",
        "still_missing",
        "nacks",
        "repair_datagrams",
        "repair_bytes",
    ] {
        assert_eq!(u(v, zero), 0, "{zero} in {text}");
    }
    assert!(v["repair_to_lost_bytes"].is_null(), "{text}");
    assert_eq!(u(v, "latency_samples"), u(v, "received"));
    // Percentiles are ordered and plausible.
    let keys = [
        "latency_p50_us",
        "latency_p90_us",
        "latency_p99_us",
        "latency_p999_us",
        "latency_p9999_us",
        "latency_max_us",
    ];
    let p: Vec<f64> = keys.iter().map(|k| f(v, k)).collect();
    assert!(p[0] > 0.0, "{p:?}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {p:?}"
    );
    assert!(p[5] < 10e6, "max latency {} µs on an idle loopback", p[5]);
    // Rates and ratios agree with the counts.
    let rate = f(v, "rate_achieved");
    assert!((190.0..=210.0).contains(&rate), "achieved {rate}");
    let dps = f(v, "deliveries_per_s");
    assert!((dps - u(v, "received") as f64 / f(v, "duration_s")).abs() < 1e-6);
    let epd = f(v, "events_per_datagram");
    assert!(epd >= 1.0, "events per datagram {epd}");
    // Each datagram holds at least one event: a MESSAGE, or (v1.1) a SYNC or GONE notice
    // in a datagram of its own.
    assert!(
        u(v, "datagrams") <= u(v, "events") + u(v, "sync_events") + u(v, "gone_events"),
        "{text}"
    );
    assert!(f(v, "cpu_user_s") >= 0.0 && f(v, "cpu_sys_s") >= 0.0);
    assert!(f(v, "wall_s") >= 3.0);
}

/// The version 1 path (`--v1`) as before v1.1: plain chat datagrams, empty heartbeats.
#[test]
fn small_v1_bench_is_self_consistent() {
    let (stdout, stderr, v, text) = small_bench(&["--v1"]);
    check_clean_small_run(&stdout, &stderr, &v, &text);
    assert_eq!(v["protocol"], "v1");
    assert!(
        stdout.contains("Protocol      v1: chat datagrams"),
        "{stdout}"
    );
    assert!(!stdout.contains("Recovery"), "{stdout}");
    assert_eq!(u(&v, "sync_events"), 0, "{text}");
}

/// The default path (v1.1) on a clean loopback: the same figures, and nothing to recover.
#[test]
fn small_v11_bench_is_self_consistent() {
    let (stdout, stderr, v, text) = small_bench(&[]);
    check_clean_small_run(&stdout, &stderr, &v, &text);
    assert_eq!(v["protocol"], "v1.1");
    assert!(stdout.contains("Protocol      v1.1"), "{stdout}");
    assert!(
        stdout.contains("delivered 100.000% of expected"),
        "{stdout}"
    );
    assert!(stderr.contains("recovered 0  unrecovered 0"), "{stderr}");
}

/// At 5% loss on receive, v1.1 recovers everything with NACK: every expected delivery
/// arrives, nothing is given up, and the repair traffic is of the size of the loss.
#[test]
fn five_percent_loss_is_recovered_on_v11() {
    let (stdout, stderr, v, text) =
        small_bench(&["--loss", "0.05", "--seed", "11", "--grace", "5"]);
    assert_eq!(v["protocol"], "v1.1");
    assert_eq!(f(&v, "loss"), 0.05);
    let lost = u(&v, "lost_datagrams");
    let datagrams = u(&v, "datagrams");
    // The filter dropped about 5% of what arrived (what was read, plus what it dropped).
    let share = lost as f64 / (lost + datagrams) as f64;
    assert!(
        (0.02..0.09).contains(&share),
        "dropped {lost} of {} ({share})\n{text}",
        lost + datagrams
    );
    assert!(u(&v, "lost_bytes") > lost, "{text}");
    // Everything delivered, nothing given up.
    assert!(u(&v, "expected") > 0);
    assert_eq!(u(&v, "received"), u(&v, "expected"), "{stdout}\n{stderr}");
    assert_eq!(f(&v, "delivered_pct"), 100.0);
    assert_eq!(u(&v, "unrecovered"), 0, "{text}");
    assert_eq!(u(&v, "gone"), 0, "{text}");
    assert_eq!(u(&v, "still_missing"), 0, "{text}");
    // ...because it was recovered by NACK, and the answers were counted as repair.
    assert!(u(&v, "recovered") > 0, "{text}");
    assert!(u(&v, "nacks") > 0, "{text}");
    assert!(u(&v, "repair_datagrams") > 0, "{text}");
    assert!(u(&v, "repair_bytes") > 0, "{text}");
    let ratio = f(&v, "repair_to_lost_bytes");
    assert!(ratio > 0.0, "{text}");
    assert_eq!(u(&v, "recovery_samples"), u(&v, "recovered"));
    let (p50, p99, max) = (
        f(&v, "recovery_p50_us"),
        f(&v, "recovery_p99_us"),
        f(&v, "recovery_max_us"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{text}");
    assert!(stdout.contains("Loss filter   5.00%"), "{stdout}");
    assert!(stdout.contains("events recovered by NACK"), "{stdout}");
    assert!(stderr.contains("  dropped "), "{stderr}");
}

/// `--v1` with loss: nothing is asked again, so the loss shows as lost deliveries.
#[test]
fn loss_on_v1_is_lost() {
    let (_, _, v, text) = small_bench(&["--v1", "--loss", "0.05", "--grace", "0.3"]);
    assert!(u(&v, "lost_datagrams") > 0, "{text}");
    assert!(u(&v, "received") < u(&v, "expected"), "{text}");
    for zero in ["nacks", "recovered", "repair_datagrams"] {
        assert_eq!(u(&v, zero), 0, "{zero} in {text}");
    }
}

#[test]
fn unreachable_server_fails_clearly_and_quickly() {
    // A port nothing listens on.
    let addr = unused_tcp_addr();
    let started = Instant::now();
    let (ok, _, stderr) = bench(&["--server", &addr, "--users", "2", "--rooms", "1"]);
    assert!(!ok);
    assert!(stderr.contains("cannot reach an OCM server"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[test]
fn bad_arguments_are_refused() {
    let (ok, _, stderr) = bench(&["--users", "3", "--rooms", "4"]);
    assert!(!ok);
    assert!(stderr.contains("every room needs a host"), "{stderr}");
}
