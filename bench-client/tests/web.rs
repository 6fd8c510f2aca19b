//! `bench-client --web N` against a real `ocm-server` on loopback: some users over
//! WebSocket, the rest over UDP, in the same rooms; both kinds get every delivery.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/common/ws.rs"]
mod ws;

use std::path::Path;
use std::time::Duration;

use common::run_to_end;
use ws::WebServer;

/// The whole run may take this long before it is declared hung.
const TIMEOUT: Duration = Duration::from_secs(60);

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

/// 6 users in 2 rooms, 2 of them web users (one per room): every expected delivery
/// arrives, for both kinds, and the table shows them side by side.
#[test]
fn web_and_udp_users_in_the_same_rooms_lose_nothing() {
    let srv = WebServer::start(&["--msg-rate", "0", "--max-rooms-per-ip", "0"]);
    let dir = std::env::temp_dir().join(format!("bench-client-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let json_path = dir.join("out.json");
    let (tcp, web) = (srv.tcp.to_string(), srv.web.to_string());
    let args = [
        "--server",
        &tcp,
        "--web-server",
        &web,
        "--web",
        "2",
        "--users",
        "6",
        "--rooms",
        "2",
        "--rate",
        "150",
        "--duration",
        "2",
        "--warmup",
        "1",
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

    assert!(
        stdout.contains("By transport  4 UDP users, 2 web users"),
        "{stdout}"
    );
    assert_eq!(u(&v, "web_users"), 2);
    let sent = u(&v, "sent");
    assert!((290..=310).contains(&sent), "sent {sent}");
    // Rooms of 3, one web member each: a third of the deliveries go to web members.
    assert_eq!(u(&v, "expected"), sent * 3, "{text}");
    assert_eq!(u(&v, "web_expected"), sent, "{text}");
    assert_eq!(u(&v, "udp_expected"), sent * 2, "{text}");
    for kind in ["udp", "web"] {
        let (e, r) = (
            u(&v, &format!("{kind}_expected")),
            u(&v, &format!("{kind}_received")),
        );
        assert_eq!(r, e, "{kind}: received = expected in {text}");
        assert_eq!(u(&v, &format!("{kind}_latency_samples")), r);
        let p50 = f(&v, &format!("{kind}_latency_p50_us"));
        let max = f(&v, &format!("{kind}_latency_max_us"));
        assert!(p50 > 0.0 && p50 <= max && max < 10e6, "{kind}: {p50} {max}");
    }
    assert_eq!(u(&v, "received"), u(&v, "expected"));
    for zero in [
        "lost",
        "duplicates",
        "send_failed",
        "unsent",
        "foreign",
        "malformed",
        "recv_errors",
        "timed_out",
        "room_closed",
        "unrecovered",
        "still_missing",
    ] {
        if !v[zero].is_null() {
            assert_eq!(u(&v, zero), 0, "{zero} in {text}");
        }
    }
    // The web users really went over WebSocket: the server opened their two sessions.
    assert_eq!(srv.metric("ocm_web_sessions_opened_total"), 2.0);
}
