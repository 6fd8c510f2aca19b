//! `bench-client --target redis://…` against a real `redis-server` on loopback: every
//! message reaches every member of its room (the publisher's own copy included), in order.
//!
//! Without `redis-server` on PATH the test says so and passes, except under `CI=true`,
//! where `scripts/test.sh` installs it and its absence fails the test.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Captured, PIPE_DRAIN, run_to_end, spawn_piped, wait_exit};

/// The whole run may take this long before it is declared hung.
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long redis-server may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` on a free loopback port, killed when dropped.
struct RedisProc {
    child: Child,
    port: u16,
}

impl RedisProc {
    /// Starts one without persistence; None when `redis-server` is not installed.
    fn start() -> Option<RedisProc> {
        // A free port: the kernel picks one, which is released for Redis to take.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        let mut redis = RedisProc { child, port };
        let started = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited before listening on {port}: {status}");
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "redis-server did not listen on {port} within {START_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(redis)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn u(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not an unsigned integer in {v}"))
}

/// 20 users in 2 rooms of 10, 200 messages/s for 1 s: deliveries = messages × members,
/// none lost, none out of order, none foreign.
#[test]
fn redis_pubsub_delivers_every_message_to_every_member() {
    let Some(redis) = RedisProc::start() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "redis-server is not on PATH: under CI=true it must be (scripts/test.sh installs it)"
        );
        eprintln!(
            "SKIPPED: redis-server is not on PATH, so bench-client --target redis:// was not tested (apt-get install redis-server)"
        );
        return;
    };
    let dir = std::env::temp_dir().join(format!("bench-client-redis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("out.json");
    let target = format!("redis://127.0.0.1:{}", redis.port);
    let args = [
        "--target",
        &target,
        "--users",
        "20",
        "--rooms",
        "2",
        "--rate",
        "200",
        "--duration",
        "1",
        "--warmup",
        "0.5",
        "--threads",
        "2",
        "--json",
        json_path.to_str().expect("utf-8 temp path"),
    ];
    let bin = Path::new(env!("CARGO_BIN_EXE_bench-client"));
    let (ok, stdout, stderr) = run_to_end(bin, &args, TIMEOUT);
    assert!(ok, "stdout:\n{stdout}\nstderr:\n{stderr}");
    let text = std::fs::read_to_string(&json_path).expect("the --json file");
    let _ = std::fs::remove_dir_all(&dir);
    let v: serde_json::Value = serde_json::from_str(&text).expect("the JSON parses");

    assert!(stdout.contains("Redis pub/sub at 127.0.0.1:"), "{stdout}");
    assert_eq!(v["protocol"], "redis-resp3", "{text}");
    assert_eq!(v["target"].as_str(), Some(target.as_str()), "{text}");
    let sent = u(&v, "sent");
    assert!((190..=210).contains(&sent), "sent {sent}");
    // Rooms of 10: every message reaches its 10 members, its sender's own copy included.
    assert_eq!(u(&v, "expected"), sent * 10, "{text}");
    assert_eq!(u(&v, "received"), u(&v, "expected"), "{text}");
    assert_eq!(u(&v, "latency_samples"), u(&v, "received"), "{text}");
    // Warmup included: every message sent was delivered to its whole room once.
    assert_eq!(u(&v, "events"), u(&v, "sent_with_warmup") * 10, "{text}");
    for zero in [
        "lost",
        "duplicates",
        "out_of_order",
        "send_failed",
        "unsent",
        "foreign",
        "malformed",
        "stale",
        "timed_out",
    ] {
        assert_eq!(u(&v, zero), 0, "{zero} in {text}");
    }
    let p50 = v["latency_p50_us"].as_f64().expect("p50");
    let max = v["latency_max_us"].as_f64().expect("max");
    assert!(p50 > 0.0 && p50 <= max && max < 10e6, "{p50} {max}");
}

/// A server that does not speak RESP3 (Redis 5 answers `HELLO` with an error) is refused
/// with a reason a person can act on, not a hang.
#[test]
fn a_server_without_resp3_is_refused_with_a_reason() {
    let l = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = l.local_addr().expect("addr").port();
    let old_redis = std::thread::spawn(move || {
        // The one connection of a 1-user run: read its HELLO, answer as Redis 5 does, and
        // hold the connection until the bench closes it.
        let Ok((mut s, _)) = l.accept() else { return };
        let _ = s.set_read_timeout(Some(TIMEOUT));
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"-ERR unknown command `HELLO`, with args beginning with: `3`, \r\n");
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    });
    let target = format!("redis://127.0.0.1:{port}");
    let args = ["--target", &target, "--users", "1", "--rooms", "1"];
    let bin = Path::new(env!("CARGO_BIN_EXE_bench-client"));
    let mut child = spawn_piped(bin, &args, false);
    let mut err = Captured::stderr(&mut child);
    let status = wait_exit(&mut child, TIMEOUT).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("bench-client did not give up within {TIMEOUT:?}");
    });
    let stderr = err.finish(PIPE_DRAIN);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("HELLO 3 refused") && stderr.contains("Redis 6 or later"),
        "{stderr}"
    );
    let _ = old_redis.join();
}
