//! Tests of `scale.rs`: arguments, who is where, and the report.

use super::*;
use crate::scale::probe::Gauges;

fn parse(args: &[&str]) -> Result<ScaleArgs, String> {
    ScaleArgs::from_args(&["bench-client scale"], args).map_err(|e| e.output)
}

#[test]
fn defaults_are_the_issue_s_run() {
    let a = parse(&[]).unwrap();
    assert_eq!(
        (a.members, a.rooms, a.per_address),
        (100_000, 10_000, 20_000)
    );
    assert_eq!(a.first_address, Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!((a.room_rate, a.idle_seconds), (1.0, None));
    assert_eq!(a.check(), Ok(()));
    let p = Plan::of(&a);
    assert_eq!(p.addresses(), 5);
    assert_eq!(p.address_of(99_999), Ipv4Addr::new(127, 0, 0, 6));
}

#[test]
fn bad_values_are_explained() {
    let check = |args: &[&str]| parse(args).unwrap().check().unwrap_err();
    assert!(check(&["--rooms", "0"]).contains("--rooms"));
    assert!(check(&["--members", "5", "--rooms", "6"]).contains("host"));
    assert!(check(&["--per-address", "30000"]).contains("--per-address"));
    assert!(check(&["--per-address", "100"]).contains("past .254"));
    assert!(check(&["--first-address", "10.0.0.1"]).contains("loopback"));
    assert!(check(&["--room-rate", "0"]).contains("--room-rate"));
    assert!(check(&["--room-rate", "1000"]).contains("at most"));
    assert!(check(&["--traffic-seconds", "0"]).contains("--traffic-seconds"));
    assert!(check(&["--idle-seconds", "-1"]).contains("--idle-seconds"));
    assert!(check(&["--connections", "0"]).contains("--connections"));
    assert!(check(&["--size", "3"]).contains("--size"));
    assert!(check(&["--members", "70000", "--rooms", "1"]).contains("16 bits"));
}

#[test]
fn every_member_has_one_room_and_one_address() {
    let p = Plan {
        members: 23,
        rooms: 5,
        per_address: 10,
        first: Ipv4Addr::new(127, 0, 0, 2),
    };
    assert_eq!(
        (0..5).map(|r| p.room_size(r)).collect::<Vec<_>>(),
        vec![5, 5, 5, 4, 4]
    );
    for r in 0..5 {
        let members: Vec<usize> = (0..p.room_size(r))
            .map(|pos| p.member_at(r, pos).unwrap())
            .collect();
        assert!(members.iter().all(|&m| p.room_of(m) == r), "room {r}");
        assert_eq!(members[0], r, "member r hosts room r");
        assert_eq!(p.member_at(r, p.room_size(r)), None);
    }
    assert_eq!(p.member_at(5, 0), None);
    assert_eq!(p.addresses(), 3);
    assert_eq!(p.address_of(9), Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(p.address_of(10), Ipv4Addr::new(127, 0, 0, 3));
    assert_eq!(p.address_of(22), Ipv4Addr::new(127, 0, 0, 4));
}

fn sample_report() -> ScaleReport {
    let mib = 1024 * 1024;
    let at = |rss: u64| Sample {
        rss_bytes: Some(rss),
        cpu_s: None,
        gauges: None,
    };
    let mut r = ScaleReport {
        members: 1000,
        rooms: 100,
        addresses: 1,
        connections: 2,
        before: at(4 * mib),
        after_create: at(4 * mib + 100 * 2048),
        after_join: at(4 * mib + 100 * 2048 + 900 * 512),
        after_bind: at(4 * mib + 100 * 2048 + 900 * 512 + 1000 * 100),
        after_idle: at(5 * mib),
        after_traffic: at(6 * mib),
        create_s: 0.5,
        join_s: 1.5,
        bound: 1000,
        bind_s: 0.2,
        heartbeat_s: 15.0,
        history_memory: Some(4096),
        ..ScaleReport::default()
    };
    r.idle = PhaseFigures {
        seconds: 10.0,
        window_s: 10.0,
        server_busy_s: Some(0.5),
        udp_drops: Some(7),
        heartbeats: 667,
        server_cpu_s: Some((0.1, 0.2)),
        ..PhaseFigures::default()
    };
    r.traffic = PhaseFigures {
        seconds: 10.0,
        window_s: 10.5,
        messages: 1000,
        expected: 10_000,
        received: 9_990,
        ..PhaseFigures::default()
    };
    r.after_traffic.gauges = Some(Gauges {
        history_bytes: 4000,
        history_events: 40,
        rooms: 100,
        bound: 1000,
        busy_ms: 0,
    });
    r
}

#[test]
fn memory_per_room_and_member() {
    let r = sample_report();
    assert_eq!(r.bytes_per_room(), Some(2048.0));
    assert_eq!(r.bytes_per_member(), Some(512.0));
    assert_eq!(r.bind_bytes_per_member(), Some(100.0));
    assert_eq!(r.idle_bytes_per_member(), Some(1024.0 * 1024.0 / 1000.0));
    let mut unknown = r.clone();
    unknown.before.rss_bytes = None;
    assert_eq!(unknown.bytes_per_room(), None);
}

#[test]
fn table_and_json_carry_the_figures() {
    let r = sample_report();
    let t = table(&r);
    for needle in [
        "1000 members in 100 rooms (10-10 per room)",
        "CREATE 100 in 0.50 s = 200/s; JOIN 900 in 1.50 s = 600/s",
        "2048 B per room",
        "512 B per joined member",
        "server CPU 3.00% of one core",
        "server CPU - (give --server-pid)",
        "server loop busy 0.50 s (on a core or waiting for one); 7 UDP datagrams dropped",
        "server loop busy - (on a core or waiting for one); - UDP datagrams dropped",
        "expected 10000, received 9990, lost 10 (0.100%)",
        "4000 bytes in 40 events after the traffic of --history-memory 4096: held",
    ] {
        assert!(t.contains(needle), "no {needle:?} in\n{t}");
    }
    let mut over = r.clone();
    over.history_memory = Some(100);
    assert!(table(&over).contains("OVER"));
    let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
    assert_eq!(v["members"], 1000);
    assert_eq!(v["creates_per_s"], 200.0);
    assert_eq!(v["bytes_per_room"], 2048.0);
    assert!((v["idle_server_cpu_pct"].as_f64().unwrap() - 3.0).abs() < 1e-9);
    assert!(v["traffic_server_cpu_pct"].is_null());
    assert_eq!(v["history_bytes"], 4000);
    assert_eq!(v["traffic_received"], 9990);
    assert_eq!(v["idle_udp_drops"], 7.0);
    assert!(v["traffic_server_busy_s"].is_null());
}
