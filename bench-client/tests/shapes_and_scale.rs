//! Runs `bench-client --shape` and `bench-client scale` against a real `ocm-server` on
//! loopback and checks that their figures add up (issue 14). The server is started by the
//! `ocm` package's test helper, as in `bench.rs`.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{ServerProc, run_to_end};

/// The whole test may take this long before it is declared hung.
const TIMEOUT: Duration = Duration::from_secs(90);

/// Runs bench-client with `args`; returns success, stdout and stderr.
fn bench(args: &[&str]) -> (bool, String, String) {
    run_to_end(Path::new(env!("CARGO_BIN_EXE_bench-client")), args, TIMEOUT)
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("bench-client-{name}-{}.json", std::process::id()))
}

fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the --json file");
    let _ = std::fs::remove_file(path);
    serde_json::from_str(&text).expect("the JSON parses")
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

/// Three shapes in one run: each is reported apart, with the deliveries its size implies,
/// and the shapes add up to the total.
#[test]
fn a_mix_of_shapes_is_measured_shape_by_shape() {
    let server = ServerProc::start(&["--msg-rate", "0", "--max-rooms-per-ip", "0"]);
    let addr = server.addr();
    let path = json_path("shapes");
    let (ok, stdout, stderr) = bench(&[
        "--server",
        &addr,
        "--shape",
        "2x5,5x2,12x1",
        "--rate",
        "300",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--json",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "bench-client failed\n{stdout}\n{stderr}");
    let v = read_json(&path);
    assert_eq!((u(&v, "users"), u(&v, "rooms")), (10 + 10 + 12, 8));
    assert_eq!((u(&v, "room_size_min"), u(&v, "room_size_max")), (2, 12));
    let shapes = v["shapes"].as_array().expect("a shapes array");
    assert_eq!(shapes.len(), 3, "{v}");
    let (mut sent, mut expected, mut received) = (0, 0, 0);
    for (s, (size, rooms)) in shapes.iter().zip([(2, 5), (5, 2), (12, 1)]) {
        assert_eq!((u(s, "room_size"), u(s, "rooms")), (size, rooms), "{s}");
        // Each message of a member of this shape goes to every member of its room.
        assert_eq!(u(s, "expected"), u(s, "sent_measured") * size, "{s}");
        // Every member sends alike: the shape's share of the messages is its share of the
        // users (10, 10 and 12 of 32), within rounding of the schedule.
        let share = u(s, "sent_measured") as f64 / u(&v, "sent") as f64;
        let want = u(s, "users") as f64 / 32.0;
        assert!(
            (share - want).abs() < 0.03,
            "share {share} want {want}: {s}"
        );
        assert_eq!(
            u(s, "received"),
            u(s, "expected"),
            "nothing lost on loopback: {s}"
        );
        let p: Vec<f64> = [
            "latency_p50_us",
            "latency_p99_us",
            "latency_p999_us",
            "latency_max_us",
        ]
        .iter()
        .map(|k| f(s, k))
        .collect();
        assert!(p[0] > 0.0 && p.windows(2).all(|w| w[0] <= w[1]), "{s}");
        sent += u(s, "sent_measured");
        expected += u(s, "expected");
        received += u(s, "received");
    }
    assert_eq!(sent, u(&v, "sent"));
    assert_eq!(expected, u(&v, "expected"));
    assert_eq!(received, u(&v, "received"));
    assert_eq!(u(&v, "latency_samples"), received);
    for needle in ["By shape", "5 of 2", "2 of 5", "1 of 12", "all"] {
        assert!(stdout.contains(needle), "no {needle:?} in\n{stdout}");
    }
}

/// A bad mix is refused before anything is sent, with a message that says why.
#[test]
fn a_bad_mix_is_refused_with_its_reason() {
    let (ok, stdout, stderr) = bench(&["--server", "127.0.0.1:9", "--shape", "2x5,2x3"]);
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("rooms of 2 twice"), "{stderr}");
}

/// A small scale run over several member processes: every member created or joined from
/// its own loopback IP, bound,
/// heartbeats and traffic measured, the server's memory and CPU read, the history gauge
/// held at the budget the server was given.
#[test]
fn a_small_scale_run_reports_memory_cpu_and_history() {
    let budget = "8192";
    let server = ServerProc::start(&[
        "--msg-rate",
        "0",
        "--max-rooms-per-ip",
        "0",
        "--max-members-per-ip",
        "0",
        "--history-memory",
        budget,
        "--idle-timeout",
        "4",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let addr = server.addr();
    let metrics = server.metrics.expect("metrics").to_string();
    let pid = server.pid().to_string();
    let path = json_path("scale");
    let (ok, stdout, stderr) = bench(&[
        "scale",
        "--server",
        &addr,
        "--members",
        "300",
        "--rooms",
        "30",
        "--per-address",
        "120",
        "--per-process",
        "110",
        "--server-pid",
        &pid,
        "--metrics",
        &metrics,
        "--history-memory",
        budget,
        "--idle-seconds",
        "1",
        "--traffic-seconds",
        "2",
        "--room-rate",
        "5",
        "--json",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(ok, "bench-client scale failed\n{stdout}\n{stderr}");
    let v = read_json(&path);
    assert_eq!((u(&v, "members"), u(&v, "rooms")), (300, 30));
    assert_eq!(u(&v, "source_addresses"), 3);
    // 300 members at most 110 a process: three processes, whose members share rooms (a
    // message sent in one is received and timed in the others).
    assert_eq!(u(&v, "processes"), 3);
    assert_eq!(u(&v, "bound"), 300);
    assert!(
        f(&v, "creates_per_s") > 0.0 && f(&v, "joins_per_s") > 0.0,
        "{v}"
    );
    // The server's memory was read at every step, and grew with the members.
    for k in [
        "before",
        "after_create",
        "after_join",
        "after_bind",
        "after_idle",
        "after_traffic",
    ] {
        assert!(u(&v, &format!("rss_{k}")) > 0, "{k}: {v}");
    }
    assert!(u(&v, "rss_after_join") >= u(&v, "rss_before"), "{v}");
    // A heartbeat period is a quarter of the idle timeout: 1 s; in 1 s of idle phase each
    // of the 300 members sends about one SYNC.
    assert_eq!(f(&v, "heartbeat_s"), 1.0);
    let hb = u(&v, "idle_heartbeats");
    assert!((250..=320).contains(&hb), "idle heartbeats {hb}: {v}");
    assert_eq!(u(&v, "idle_messages"), 0);
    assert!(f(&v, "idle_server_cpu_pct") >= 0.0, "{v}");
    // 5 messages/s in each of 30 rooms for 2 s, to rooms of 10.
    let messages = u(&v, "traffic_messages");
    assert!((290..=310).contains(&messages), "{messages}: {v}");
    assert_eq!(u(&v, "traffic_expected"), messages * 10);
    assert_eq!(u(&v, "traffic_received"), u(&v, "traffic_expected"), "{v}");
    assert!(f(&v, "latency_p50_us") > 0.0);
    // The server's side of the phases: its loop's busy time (metrics), and the machine's
    // UDP receive-queue drops (other tests may add to those: only their presence).
    for k in ["idle", "traffic"] {
        assert!(f(&v, &format!("{k}_server_busy_s")) >= 0.0, "{v}");
        assert!(f(&v, &format!("{k}_udp_drops")) >= 0.0, "{v}");
    }
    // 300 messages of about 100 bytes each overflow an 8 KiB budget: the server sheds
    // history to stay within it.
    let held = u(&v, "history_bytes");
    assert!(held > 0 && held <= 8192, "history bytes {held}: {v}");
    assert!(stdout.contains(": held"), "{stdout}");
    // The run closed its rooms.
    assert_eq!(server.metric("ocm_rooms"), 0.0, "{stdout}");
}
