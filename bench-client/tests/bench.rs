//! Runs `bench-client` against a real `ocm-server` on loopback and checks that its figures
//! are self-consistent.
//!
//! The server binary belongs to another package, so Cargo gives this test no
//! `CARGO_BIN_EXE_ocm-server`. It is found, in order: `$OCM_SERVER_BIN`; next to this
//! test's own profile directory (`cargo test --workspace` builds it there, for the `ocm`
//! package's tests); else it is built with `cargo build -p ocm --bin ocm-server` into a
//! target directory of its own (so as not to wait on the lock of the running build).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The whole test may take this long before it is declared hung.
const TIMEOUT: Duration = Duration::from_secs(60);

fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("OCM_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe_name = format!("ocm-server{}", std::env::consts::EXE_SUFFIX);
    // .../target/<profile>/deps/bench-<hash>: the server is in .../target/<profile>/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        let candidate = profile_dir.join(&exe_name);
        if candidate.is_file() {
            return candidate;
        }
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let target = std::env::current_exe()
        .ok()
        .and_then(|e| {
            Some(
                e.parent()?
                    .parent()?
                    .parent()?
                    .join("bench-client-test-server"),
            )
        })
        .unwrap_or_else(|| std::env::temp_dir().join("bench-client-test-server"));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "ocm",
            "--bin",
            "ocm-server",
            "--manifest-path",
        ])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .status()
        .expect("run cargo to build ocm-server");
    assert!(status.success(), "building ocm-server failed");
    target.join("debug").join(exe_name)
}

/// A running server, killed on drop.
struct Server {
    child: Child,
    tcp: String,
}

impl Server {
    fn start() -> Server {
        let bin = server_binary();
        let mut child = Command::new(&bin)
            .args(["--port", "0", "--msg-rate", "0", "--max-rooms-per-ip", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut reader = BufReader::new(child.stdout.take().expect("server stdout"));
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .expect("read the listening line");
        let tcp = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tcp="))
            .unwrap_or_else(|| panic!("no tcp= in the server's first line {line:?}"))
            .to_string();
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
        });
        Server { child, tcp }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs bench-client with `args`, killing it if it outlives [`TIMEOUT`].
fn bench(args: &[&str]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench-client");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for bench-client") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("bench-client did not finish within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out_t.join().unwrap_or_default();
    let stderr = err_t.join().unwrap_or_default();
    (status.success(), stdout, stderr)
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

#[test]
fn small_bench_is_self_consistent() {
    let server = Server::start();
    let dir = std::env::temp_dir().join(format!("bench-client-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("out.json");
    let json_arg = json_path.to_str().expect("utf-8 temp path");
    let (ok, stdout, stderr) = bench(&[
        "--server",
        &server.tcp,
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
    ]);
    assert!(
        ok,
        "bench-client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

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

    let text = std::fs::read_to_string(&json_path).expect("the --json file");
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&text).expect("the JSON parses");

    let sent = u(&v, "sent");
    let room = u(&v, "room_size_max");
    assert_eq!(u(&v, "users"), 20);
    assert_eq!(u(&v, "rooms"), 4);
    assert_eq!(room, 5);
    assert_eq!(u(&v, "room_size_min"), 5);
    // 200 msg/s for 2 s.
    assert!((395..=405).contains(&sent), "sent {sent}");
    assert!(u(&v, "sent_with_warmup") > sent);
    assert_eq!(
        u(&v, "expected"),
        sent * room,
        "expected = messages × room size"
    );
    // Nothing is lost, duplicated or reordered on an idle loopback.
    assert_eq!(u(&v, "received"), u(&v, "expected"), "{text}");
    assert_eq!(u(&v, "lost"), 0);
    assert_eq!(f(&v, "loss_pct"), 0.0);
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
    ] {
        assert_eq!(u(&v, zero), 0, "{zero} in {text}");
    }
    assert_eq!(u(&v, "latency_samples"), u(&v, "received"));
    // Percentiles are ordered and plausible.
    let keys = [
        "latency_p50_us",
        "latency_p90_us",
        "latency_p99_us",
        "latency_p999_us",
        "latency_p9999_us",
        "latency_max_us",
    ];
    let p: Vec<f64> = keys.iter().map(|k| f(&v, k)).collect();
    assert!(p[0] > 0.0, "{p:?}");
    assert!(
        p.windows(2).all(|w| w[0] <= w[1]),
        "percentiles out of order: {p:?}"
    );
    assert!(p[5] < 10e6, "max latency {} µs on an idle loopback", p[5]);
    // Rates and ratios agree with the counts.
    let rate = f(&v, "rate_achieved");
    assert!((190.0..=210.0).contains(&rate), "achieved {rate}");
    let dps = f(&v, "deliveries_per_s");
    assert!((dps - u(&v, "received") as f64 / f(&v, "duration_s")).abs() < 1e-6);
    let epd = f(&v, "events_per_datagram");
    assert!(epd >= 1.0, "events per datagram {epd}");
    assert!(u(&v, "datagrams") <= u(&v, "events"));
    assert!(f(&v, "cpu_user_s") >= 0.0 && f(&v, "cpu_sys_s") >= 0.0);
    assert!(f(&v, "wall_s") >= 3.0);
}

#[test]
fn unreachable_server_fails_clearly_and_quickly() {
    // A port nothing listens on: bind one, note it, drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
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
